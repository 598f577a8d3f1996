//! Tests of the view storage: every read agrees with a plain sorted map, through flushes,
//! merges and reopens; damaged files make the view rebuild instead of answering wrongly.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn meta(checkpoint: u64) -> Meta {
    Meta {
        version: 1,
        checkpoint,
        rebuilding: false,
    }
}

/// Every entry of `db` within the bounds, through `scan`, forwards or backwards.
fn scanned(db: &ViewDb, from: &[u8], to: Option<&[u8]>, rev: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    db.scan(from, to, rev, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    out
}

fn expected(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    from: &[u8],
    to: Option<&[u8]>,
    rev: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<_> = model
        .iter()
        .filter(|(k, _)| k.as_slice() >= from && to.is_none_or(|to| k.as_slice() < to))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if rev {
        out.reverse();
    }
    out
}

fn check_all(db: &ViewDb, model: &BTreeMap<Vec<u8>, Vec<u8>>, probes: &[Vec<u8>]) {
    for k in probes {
        assert_eq!(db.get(k).unwrap(), model.get(k).cloned(), "get {k:?}");
    }
    for rev in [false, true] {
        assert_eq!(scanned(db, b"", None, rev), expected(model, b"", None, rev));
        for w in probes.windows(2) {
            let (from, to) = (&w[0][..], &w[1][..]);
            assert_eq!(
                scanned(db, from, Some(to), rev),
                expected(model, from, Some(to), rev),
                "scan {from:?}..{to:?} rev {rev}"
            );
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    Commit,
    Flush,
    /// Closed cleanly: what is in memory is written.
    Reopen,
    /// Gone without a word (as after `kill -9`): only what was flushed is there.
    Crash,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // Few distinct short keys (overwrites and removals of stored keys are common), sometimes a
    // long one.
    prop_oneof![
        4 => prop::collection::vec(0u8..4, 1..4),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (key(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(k, v)| Op::Put(k, v)),
        3 => key().prop_map(Op::Remove),
        3 => Just(Op::Commit),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Reads agree with a sorted map after any sequence of commits, flushes (tiny memory
    /// table: many runs, merges, removals kept and dropped) and reopens (which keep what the
    /// last flush wrote).
    #[test]
    fn reads_agree_with_a_sorted_map(ops in prop::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let limit = 600;
        let mut db = ViewDb::open_with(dir.path(), limit).unwrap();
        let mut model = BTreeMap::new();
        let mut staged = Changes::new();
        let mut durable = BTreeMap::new();
        let mut durable_checkpoint = None;
        let mut checkpoint = 0;
        let mut probes: Vec<Vec<u8>> = vec![vec![], vec![1], vec![2, 0], vec![3, 3, 3], vec![255; 3]];
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    probes.push(k.clone());
                    staged.insert(k, Some(v));
                }
                Op::Remove(k) => {
                    staged.insert(k, None);
                }
                Op::Commit => {
                    checkpoint += 1;
                    for (k, v) in &staged {
                        match v {
                            Some(v) => model.insert(k.clone(), v.clone()),
                            None => model.remove(k),
                        };
                    }
                    db.commit(std::mem::take(&mut staged), meta(checkpoint)).unwrap();
                    if db.read().durable == Some(meta(checkpoint)) {
                        durable = model.clone();
                        durable_checkpoint = Some(checkpoint);
                    }
                }
                Op::Flush => {
                    if checkpoint > 0 {
                        db.flush().unwrap();
                        durable = model.clone();
                        durable_checkpoint = Some(checkpoint);
                    }
                }
                Op::Reopen => {
                    staged.clear();
                    drop(db);
                    db = ViewDb::open_with(dir.path(), limit).unwrap();
                    if checkpoint > 0 {
                        durable = model.clone();
                        durable_checkpoint = Some(checkpoint);
                    }
                    prop_assert_eq!(db.meta().map(|m| m.checkpoint), durable_checkpoint);
                }
                Op::Crash => {
                    staged.clear();
                    db.crash();
                    db = ViewDb::open_with(dir.path(), limit).unwrap();
                    model = durable.clone();
                    checkpoint = durable_checkpoint.unwrap_or(0);
                    prop_assert_eq!(db.meta().map(|m| m.checkpoint), durable_checkpoint);
                }
            }
        }
        probes.sort();
        probes.dedup();
        check_all(&db, &model, &probes);
        db.settle();
        check_all(&db, &model, &probes);
        prop_assert!(db.runs() <= 12, "runs are merged: {}", db.runs());
    }
}

#[test]
fn a_fresh_view_has_no_meta_and_a_flushed_one_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = ViewDb::open(dir.path()).unwrap();
    assert_eq!(db.meta(), None);
    assert_eq!(db.get(b"a").unwrap(), None);
    db.set_meta(meta(0)).unwrap();
    let mut c = Changes::new();
    c.insert(b"a".to_vec(), Some(b"1".to_vec()));
    db.commit(c, meta(7)).unwrap();
    assert_eq!(db.meta(), Some(meta(7)));
    db.crash();
    // Not flushed (a crash): the reopened view is back at the meta last written.
    let db = ViewDb::open(dir.path()).unwrap();
    assert_eq!(db.meta(), Some(meta(0)));
    assert_eq!(db.get(b"a").unwrap(), None);
    let mut c = Changes::new();
    c.insert(b"a".to_vec(), Some(b"1".to_vec()));
    db.commit(c, meta(8)).unwrap();
    db.flush().unwrap();
    db.crash();
    let db = ViewDb::open(dir.path()).unwrap();
    assert_eq!(db.meta(), Some(meta(8)));
    assert_eq!(db.get(b"a").unwrap(), Some(b"1".to_vec()));
    let mut c = Changes::new();
    c.insert(b"b".to_vec(), Some(b"2".to_vec()));
    db.commit(c, meta(9)).unwrap();
    drop(db);
    // Closed cleanly: written at the close.
    let db = ViewDb::open(dir.path()).unwrap();
    assert_eq!(db.meta(), Some(meta(9)));
    assert_eq!(db.get(b"b").unwrap(), Some(b"2".to_vec()));
}

/// Many keys over many blocks and runs: point reads and bounded scans, then a flipped byte in
/// a block is an error naming the file, and a damaged manifest empties the view at open.
/// A run file of the view in `dir`.
fn a_run(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "view"))
        .expect("a run file")
}

/// Reopens the view in `dir` after flipping a bit of a run's first block.
fn with_first_block_damaged(dir: &Path) -> ViewDb {
    let run = a_run(dir);
    let mut bytes = std::fs::read(&run).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&run, &bytes).unwrap();
    ViewDb::open(dir).unwrap()
}

#[test]
fn many_blocks_read_back_and_damage_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let db = ViewDb::open_with(dir.path(), 64 << 10).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..20u32 {
        let mut c = Changes::new();
        for i in 0..500u32 {
            let k = format!("k{:06}", (i * 7919 + round * 13) % 5000).into_bytes();
            let v = format!("{round}-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes();
            model.insert(k.clone(), v.clone());
            c.insert(k, Some(v));
        }
        db.commit(c, meta(u64::from(round) + 1)).unwrap();
    }
    db.flush().unwrap();
    assert!(db.runs() >= 1);
    let probes: Vec<Vec<u8>> = (0..5000)
        .step_by(97)
        .map(|i| format!("k{i:06}").into_bytes())
        .collect();
    check_all(&db, &model, &probes);
    drop(db);

    let db = with_first_block_damaged(dir.path());
    let err = scanned_result(&db).unwrap_err().to_string();
    assert!(
        err.contains("fails its CRC") && err.contains(".view"),
        "{err}"
    );
    drop(db);

    let manifest = dir.path().join(MANIFEST);
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[9] ^= 1;
    std::fs::write(&manifest, &bytes).unwrap();
    let db = ViewDb::open(dir.path()).unwrap();
    assert_eq!(db.meta(), None, "a damaged manifest means a rebuild");
    assert!(scanned(&db, b"", None, false).is_empty());
}

fn scanned_result(db: &ViewDb) -> Result<usize, StoreError> {
    let mut n = 0;
    db.scan(b"", None, false, &mut |_, _| {
        n += 1;
        true
    })?;
    Ok(n)
}

/// A view whose changes stay small is still written once it has folded enough events, so a
/// crash never makes the projector fold the whole log again.
#[test]
fn a_view_far_past_its_manifest_is_written_however_small_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = ViewDb::open(dir.path()).unwrap();
    db.set_meta(meta(0)).unwrap();
    for checkpoint in [1, FLUSH_EVERY_EVENTS - 1, FLUSH_EVERY_EVENTS + 5] {
        let mut c = Changes::new();
        c.insert(b"same".to_vec(), Some(checkpoint.to_be_bytes().to_vec()));
        db.commit(c, meta(checkpoint)).unwrap();
    }
    db.crash();
    let db = ViewDb::open(dir.path()).unwrap();
    assert_eq!(db.meta(), Some(meta(FLUSH_EVERY_EVENTS + 5)));
    assert_eq!(
        db.get(b"same").unwrap(),
        Some((FLUSH_EVERY_EVENTS + 5).to_be_bytes().to_vec())
    );
}

/// A manifest that names a run whose file is gone is damage: the view starts empty, to be
/// rebuilt from the log, rather than refusing to open.
#[test]
fn a_missing_run_means_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    for run in one_run_left_by_a_crash(dir.path()) {
        std::fs::remove_file(run).unwrap();
    }
    assert_starts_empty(dir.path());
}

/// Writes `k` = `v` at checkpoint 3 into a view in `dir`, flushes it as a run and crashes;
/// the run files.
fn one_run_left_by_a_crash(dir: &Path) -> Vec<PathBuf> {
    let db = ViewDb::open(dir).unwrap();
    let mut c = Changes::new();
    c.insert(b"k".to_vec(), Some(b"v".to_vec()));
    db.commit(c, meta(3)).unwrap();
    db.flush().unwrap();
    db.crash();
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "view"))
        .collect()
}

/// The view in `dir` opens with no meta and without the key written before: to be rebuilt.
fn assert_starts_empty(dir: &Path) {
    let db = ViewDb::open(dir).unwrap();
    assert_eq!(db.meta(), None);
    assert_eq!(db.get(b"k").unwrap(), None);
}

/// A run of the format before (version 1, another filter layout) is not read, even with a
/// footer that checks: the view starts empty, to be rebuilt from the log.
#[test]
fn a_run_of_the_previous_format_means_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let run = one_run_left_by_a_crash(dir.path()).remove(0);
    let mut bytes = std::fs::read(&run).unwrap();
    let footer_at = bytes.len() - FOOTER_LEN as usize;
    let index_at = u64::from_le_bytes(bytes[footer_at + 24..footer_at + 32].try_into().unwrap());
    bytes[footer_at..footer_at + 8].copy_from_slice(&(RUN_MAGIC - 1).to_le_bytes());
    let check = table_check(
        &bytes[index_at as usize..footer_at],
        &bytes[footer_at..footer_at + 56],
    );
    bytes[footer_at + 56..].copy_from_slice(&check.to_le_bytes());
    std::fs::write(&run, &bytes).unwrap();
    assert_starts_empty(dir.path());
}

/// Keys that share a prefix of some length and tie often in the 8 bytes after it.
fn fence_key() -> impl Strategy<Value = Vec<u8>> {
    (0usize..3, prop::collection::vec(0u8..3, 0..14)).prop_map(|(prefix, tail)| {
        let mut k = b"tenant\0subject-"[..prefix * 7].to_vec();
        k.extend(tail);
        k
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The search of a run's fences through their heads finds what a plain search of the
    /// whole fences finds.
    #[test]
    fn the_fence_search_agrees_with_a_plain_one(
        fences in prop::collection::btree_set(fence_key(), 1..40),
        probes in prop::collection::vec(fence_key(), 1..40),
    ) {
        let mut layout = Layout::empty(1);
        for f in &fences {
            layout.fences.extend_from_slice(f);
            layout.fence_ends.push(layout.fences.len());
            layout.blocks.push((0, 0, 0));
        }
        layout.index_fences();
        let fences: Vec<_> = fences.into_iter().collect();
        for key in probes.iter().chain(&fences) {
            for inclusive in [false, true] {
                let plain = fences
                    .iter()
                    .filter(|f| f.as_slice() < key.as_slice() || (inclusive && *f == key))
                    .count();
                prop_assert_eq!(layout.blocks_starting_before(key, inclusive), plain);
            }
        }
    }
}

#[test]
fn lookups_reuse_their_block_buffer_safely() {
    let dir = tempfile::tempdir().unwrap();
    let db = ViewDb::open_with(dir.path(), 64 << 10).unwrap();
    let mut c = Changes::new();
    // Small entries, and one far larger than a block (a block of its own, past what a thread
    // keeps between lookups).
    for i in 0..2000u32 {
        c.insert(
            format!("k{i:05}").into_bytes(),
            Some(format!("v{i}").into_bytes()),
        );
    }
    let big = vec![7u8; 5 * LOOKUP_BLOCK_KEPT];
    c.insert(b"k01000x".to_vec(), Some(big.clone()));
    db.commit(c, meta(1)).unwrap();
    db.flush().unwrap();
    assert!(db.runs() >= 1);
    // Large, then small, then large again: each lookup sees its own block's bytes.
    for _ in 0..2 {
        assert_eq!(db.get(b"k01000x").unwrap().as_deref(), Some(&big[..]));
        assert_eq!(db.get(b"k00007").unwrap().as_deref(), Some(&b"v7"[..]));
        assert_eq!(db.get(b"k01999").unwrap().as_deref(), Some(&b"v1999"[..]));
    }
    // A lookup inside another's `read` reads a block of its own; the outer value is intact.
    let nested = db
        .get_with(b"k00010", |outer| {
            let inner = db.get(b"k01990").unwrap();
            (outer.to_vec(), inner)
        })
        .unwrap()
        .unwrap();
    assert_eq!(nested, (b"v10".to_vec(), Some(b"v1990".to_vec())));
    assert_eq!(db.get(b"k00011").unwrap().as_deref(), Some(&b"v11"[..]));
    drop(db);

    // A damaged block fails a lookup as it fails a scan.
    let db = with_first_block_damaged(dir.path());
    let err = db.get(b"k00000").unwrap_err().to_string();
    assert!(
        err.contains("fails its CRC") && err.contains(".view"),
        "{err}"
    );
}

#[test]
fn a_run_whose_block_list_and_filter_span_many_pieces_reopens_intact() {
    let dir = tempfile::tempdir().unwrap();
    let db = ViewDb::open(dir.path()).unwrap();
    let mut c = Changes::new();
    // Long keys: the block list holds one per block.
    let key_of = |i: u32| format!("{}-{i:08}", "k".repeat(90)).into_bytes();
    let n = 100_000u32;
    for i in 0..n {
        c.insert(key_of(i), Some(vec![(i % 251) as u8; 40]));
    }
    db.commit(c, meta(7)).unwrap();
    db.flush().unwrap();
    drop(db);
    let run = a_run(dir.path());
    let footer_at = std::fs::metadata(&run).unwrap().len() - FOOTER_LEN;
    let bytes = std::fs::read(&run).unwrap();
    let word = |i: usize| {
        let at = footer_at as usize + i * 8;
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    };
    let (index_len, bloom_bits) = (word(4), word(6));
    assert!(
        index_len > 3 * META_PIECE as u64 && bloom_bits / 8 > META_PIECE as u64,
        "the block list ({index_len} bytes) and the filter ({} bytes) span several pieces",
        bloom_bits / 8
    );
    // Its check holds (or the view would open empty, to be rebuilt), and every key reads back.
    let db = ViewDb::open(dir.path()).unwrap();
    assert_eq!(db.meta(), Some(meta(7)));
    for i in (0..n).step_by(997).chain([n - 1]) {
        let v = db.get(&key_of(i)).unwrap();
        assert_eq!(v, Some(vec![(i % 251) as u8; 40]), "key {i}");
    }
    assert_eq!(db.get(&key_of(n)).unwrap(), None);
}

/// Commits `round`'s changes to `db` and `model`: one key rewritten, one removed, one added.
fn commit_round(db: &ViewDb, model: &mut BTreeMap<Vec<u8>, Vec<u8>>, round: u32) {
    let mut c = Changes::new();
    let put = format!("k{:03}", round * 3).into_bytes();
    let value = format!("round {round}").into_bytes();
    let removed = format!("k{:03}", round * 3 + 1).into_bytes();
    let added = format!("new{round:03}").into_bytes();
    model.insert(put.clone(), value.clone());
    model.remove(&removed);
    model.insert(added.clone(), value.clone());
    c.insert(put, Some(value.clone()));
    c.insert(removed, None);
    c.insert(added, Some(value));
    db.commit(c, meta(u64::from(round) + 2)).unwrap();
}

/// Scans `db` from `depth`; on its first entry it commits a round and scans again one level
/// deeper, so that each level's scan holds a memory table the next commit finds in use. Each
/// scan must see the view as it was when the scan began.
fn nested_scans(db: &ViewDb, model: &mut BTreeMap<Vec<u8>, Vec<u8>>, depth: u32, levels: u32) {
    let at_start = expected(model, b"", None, false);
    let mut seen = Vec::new();
    db.scan(b"", None, false, &mut |k, v| {
        if seen.is_empty() && depth < levels {
            commit_round(db, model, depth);
            nested_scans(db, model, depth + 1, levels);
        }
        seen.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    assert_eq!(seen, at_start, "the scan at depth {depth}");
}

#[test]
fn commits_under_scans_freeze_their_tables_and_every_read_stays_right() {
    let dir = tempfile::tempdir().unwrap();
    let db = ViewDb::open(dir.path()).unwrap();
    let mut model = BTreeMap::new();
    let mut c = Changes::new();
    for i in 0..100u32 {
        let (k, v) = (format!("k{i:03}").into_bytes(), b"first".to_vec());
        model.insert(k.clone(), v.clone());
        c.insert(k, Some(v));
    }
    db.commit(c, meta(1)).unwrap();
    // More nested scans than tables may be frozen: the last commits copy the table instead.
    let levels = MAX_FROZEN as u32 + 4;
    nested_scans(&db, &mut model, 0, levels);
    assert_eq!(db.read().frozen.len(), MAX_FROZEN);
    let probes: Vec<Vec<u8>> = (0..110u32)
        .map(|i| format!("k{i:03}").into_bytes())
        .chain((0..levels).map(|r| format!("new{r:03}").into_bytes()))
        .collect();
    check_all(&db, &model, &probes);
    // The flush writes every table as one run, the newest entry of a key winning.
    db.flush().unwrap();
    assert_eq!(db.read().frozen.len(), 0);
    assert_eq!(db.runs(), 1);
    check_all(&db, &model, &probes);
    drop(db);
    let db = ViewDb::open(dir.path()).unwrap();
    assert_eq!(db.meta(), Some(meta(u64::from(levels) + 1)));
    check_all(&db, &model, &probes);
}
