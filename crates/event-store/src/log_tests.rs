//! Tests of the log's files and the on-disk index: many files and runs against a model,
//! checkpoints and rebuilds across reopens, a torn tail cut, damage refused, and the move of a
//! store whose log was in sled.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;

use crate::record::Unsealed;
use crate::*;

fn ev(id: &str, stream: &str) -> NewEvent {
    NewEvent::new(
        "t",
        id,
        stream,
        "test.happened",
        format!("data of {id}").into_bytes(),
    )
}

/// Tiny files and index tables, so that a few hundred events make many of each.
fn small() -> StoreConfig {
    StoreConfig {
        log_file_bytes: 4096,
        index_memtable_events: 7,
        ..StoreConfig::default()
    }
}

fn log_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// A closed store of `n` one-event commits, and its last log file.
async fn commits(config: &StoreConfig, n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path(), config.clone()).unwrap();
    for i in 0..n {
        store
            .append(vec![ev(&format!("e{i}"), "s")], ExpectedVersion::Any)
            .await
            .unwrap();
    }
    drop(store);
    let file = log_files(dir.path()).pop().unwrap();
    (dir, file)
}

/// What the store must answer, kept by the test.
#[derive(Default)]
struct Model {
    /// id → seq
    ids: HashMap<String, u64>,
    /// stream → seqs in version order
    streams: BTreeMap<String, Vec<u64>>,
    head: u64,
}

impl Model {
    fn append(&mut self, ids: &[u16]) {
        for i in ids {
            let id = format!("id{i}");
            if self.ids.contains_key(&id) {
                continue;
            }
            self.head += 1;
            self.ids.insert(id, self.head);
            self.streams
                .entry(format!("s{}", i % 17))
                .or_default()
                .push(self.head);
        }
    }

    fn check(&self, store: &EventStore) -> Result<(), TestCaseError> {
        prop_assert_eq!(store.head().seq, self.head);
        for (stream, seqs) in &self.streams {
            prop_assert_eq!(store.stream_version(stream).unwrap(), seqs.len() as u64);
            let from = seqs.len() as u64 / 2 + 1;
            let got: Vec<u64> = store
                .read_stream(stream, from, 5)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            let want: Vec<u64> = seqs
                .iter()
                .skip(from as usize - 1)
                .take(5)
                .copied()
                .collect();
            prop_assert_eq!(got, want, "stream {}", stream);
        }
        prop_assert_eq!(store.stream_version("never").unwrap(), 0);
        for (id, seq) in &self.ids {
            let known = store.lookup("t", id).unwrap().map(|k| k.position.seq);
            prop_assert_eq!(known, Some(*seq), "id {}", id);
        }
        prop_assert_eq!(store.lookup("t", "id-never").unwrap(), None);
        let report = store.verify(0, 0).unwrap();
        prop_assert_eq!((report.events_checked, report.first_bad), (self.head, None));
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Appends, reopens (with the checkpoint, or with it deleted so the index is rebuilt from
    /// the log) and redeliveries, over many small files and runs: the store answers as the
    /// model does at every step.
    #[test]
    fn the_index_on_disk_answers_as_the_log_says(
        steps in prop::collection::vec(
            (prop::collection::vec(0u16..300, 1..40), 0u8..6),
            1..14,
        )
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut store = EventStore::open(dir.path(), small()).unwrap();
            let mut model = Model::default();
            for (ids, reopen) in &steps {
                let events = ids.iter().map(|i| ev(&format!("id{i}"), &format!("s{}", i % 17))).collect();
                store.append(events, ExpectedVersion::Any).await.unwrap();
                model.append(ids);
                if *reopen >= 4 {
                    drop(store);
                    if *reopen == 5 {
                        let _ = std::fs::remove_file(dir.path().join("log/MANIFEST"));
                    }
                    store = EventStore::open(dir.path(), small()).unwrap();
                }
                model.check(&store)?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}

#[tokio::test]
async fn checkpoints_write_runs_and_merge_them_and_a_reopen_reads_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path(), small()).unwrap();
    for i in 0..100 {
        store
            .append(vec![ev(&format!("e{i}"), "s")], ExpectedVersion::Any)
            .await
            .unwrap();
    }
    drop(store);
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.ends_with(".ids"))
        .collect();
    // 14 checkpoints of 7 events, merged as they grow: a handful of runs, not 14.
    assert!(!runs.is_empty() && runs.len() <= 4, "{runs:?}");
    assert!(log_files(dir.path()).len() > 5, "files of 4 KiB roll over");
    let store = EventStore::open(dir.path(), small()).unwrap();
    assert_eq!(store.stream_version("s").unwrap(), 100);
    assert_eq!(store.read_stream("s", 98, 10).unwrap().len(), 3);
    let again = store
        .append(vec![ev("e42", "s")], ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!((again[0].seq, again[0].duplicate), (43, true));
}

#[tokio::test]
async fn a_torn_last_commit_is_cut_and_the_log_goes_on() {
    let (dir, file) = commits(&StoreConfig::default(), 3).await;
    let good = std::fs::metadata(&file).unwrap().len();
    // A commit whose write stopped partway: its header and half its body.
    let (record, _) = Unsealed {
        seq: 4,
        stream_version: 4,
        recorded_at_micros: 0,
        flags: 0,
        prev_hash: [0; 32],
        scope: "t",
        stream: "s",
        event_id: "e3",
        event_type: "test.happened",
        data: b"never acknowledged",
        content: [0; 32],
    }
    .encode();
    let mut body = (record.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&record);
    let mut torn = crate::log::header(4, 1, &body).to_vec();
    torn.extend_from_slice(&body[..body.len() / 2]);
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&torn, good).unwrap();
    drop(f);
    let store = EventStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(store.head().seq, 3);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), good);
    let p = store
        .append(vec![ev("e3", "s")], ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!((p[0].seq, p[0].duplicate), (4, false));
    assert_eq!(store.verify(0, 0).unwrap().first_bad, None);
    drop(store);

    // Zeros past the end (a file extended, its data never written) are cut too.
    let good = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&[0u8; 300], good).unwrap();
    drop(f);
    let store = EventStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(store.head().seq, 4);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), good);
}

#[tokio::test]
async fn damage_with_acknowledged_commits_after_it_refuses_to_open() {
    let (dir, file) = commits(&StoreConfig::default(), 3).await;
    let bytes = std::fs::read(&file).unwrap();
    // The second commit's header starts where the first commit ends.
    let first_len = crate::log::HEADER_LEN
        + 4
        + u32::from_be_bytes(bytes[crate::log::HEADER_LEN..][..4].try_into().unwrap()) as usize;
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&[bytes[first_len + 6] ^ 0xff], first_len as u64 + 6)
        .unwrap();
    drop(f);
    let err = match EventStore::open(dir.path(), StoreConfig::default()) {
        Err(e) => e,
        Ok(_) => panic!("a damaged log opened"),
    };
    assert!(
        matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains("more of the log after it")),
        "{err}"
    );
    // Nothing was cut: the acknowledged commits are all still there.
    assert_eq!(std::fs::read(&file).unwrap().len(), bytes.len());
}

/// The store's sled database and its `log` tree, opened directly.
fn sled_log(dir: &Path) -> (sled::Db, sled::Tree) {
    let db = sled::Config::new()
        .path(dir)
        .segment_size(SLED_SEGMENT_BYTES)
        .open()
        .unwrap();
    let tree = db.open_tree("log").unwrap();
    (db, tree)
}

#[tokio::test]
async fn a_store_whose_log_is_in_sled_is_moved_into_log_files() {
    let dir = tempfile::tempdir().unwrap();
    // The layout before log files: `g first_seq` → segment, `h` → head, `m name` → metadata.
    let mut prev = GENESIS_HASH;
    {
        let (db, tree) = sled_log(dir.path());
        let mut seq = 0u64;
        for segment in 0..3u64 {
            let first = seq + 1;
            let mut value = Vec::new();
            value.extend_from_slice(&4u32.to_be_bytes());
            for _ in 0..4 {
                seq += 1;
                let id = format!("e{seq}");
                let (bytes, hash) = Unsealed {
                    seq,
                    stream_version: seq - first + 1,
                    recorded_at_micros: seq as i64,
                    flags: 0,
                    prev_hash: prev,
                    scope: "t",
                    stream: &format!("s{segment}"),
                    event_id: &id,
                    event_type: "test.happened",
                    data: id.as_bytes(),
                    content: content_digest(id.as_bytes()),
                }
                .encode();
                value.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                value.extend_from_slice(&bytes);
                prev = hash;
            }
            let mut k = vec![b'g'];
            k.extend_from_slice(&first.to_be_bytes());
            tree.insert(k, value).unwrap();
        }
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(&prev);
        tree.insert(b"h", head).unwrap();
        tree.insert(b"mcursor", b"7".to_vec()).unwrap();
        db.flush().unwrap();
    }
    // An empty `log/` (as a start that stopped before writing anything would leave) does not
    // count as moved.
    std::fs::create_dir_all(dir.path().join("log")).unwrap();
    let store = EventStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(
        store.head(),
        Head {
            seq: 12,
            hash: prev
        }
    );
    assert_eq!(store.verify(0, 0).unwrap().first_bad, None);
    assert_eq!(store.meta("cursor").unwrap(), Some(b"7".to_vec()));
    assert_eq!(store.lookup("t", "e5").unwrap().unwrap().position.seq, 5);
    assert_eq!(store.stream_version("s2").unwrap(), 4);
    let p = store
        .append(vec![ev("new", "s2")], ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!((p[0].seq, p[0].stream_version), (13, 5));
    assert!(dir.path().join("log").is_dir() && !dir.path().join("log.migrating").exists());
    drop(store);
    // sled no longer holds the records; a second open finds them in the files alone.
    {
        let (_db, tree) = sled_log(dir.path());
        let left: Vec<_> = tree.iter().keys().map(|k| k.unwrap()[0]).collect();
        assert_eq!(left, vec![b'm']);
    }
    let store = EventStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(store.head().seq, 13);
    assert_eq!(store.verify(0, 0).unwrap().first_bad, None);
}

#[tokio::test]
async fn a_log_shorter_than_its_checkpoint_refuses_to_open() {
    let (dir, _) = commits(&small(), 40).await;
    // Acknowledged, checkpointed events vanish from the files (a lost disk write, a bad copy):
    // the log is cut one byte before the end of what the checkpoint covers (how far that is
    // depends on how far the indexer got before the close).
    let manifest = crate::index::load(&dir.path().join("log"))
        .unwrap()
        .expect("40 events with a 7-event memory table leave a checkpoint");
    let (file, offset) = (
        manifest.covered.next.file as usize,
        manifest.covered.next.offset,
    );
    let files = log_files(dir.path());
    for later in &files[file + 1..] {
        std::fs::remove_file(later).unwrap();
    }
    if offset == 0 {
        std::fs::remove_file(&files[file]).unwrap();
    } else {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&files[file])
            .unwrap();
        f.set_len(offset - 1).unwrap();
    }
    let err = match EventStore::open(dir.path(), small()) {
        Err(e) => e,
        Ok(_) => panic!("a log missing checkpointed events opened"),
    };
    assert!(err.to_string().contains("remove log/MANIFEST"), "{err}");
}

#[tokio::test]
async fn a_damaged_index_block_is_an_error_never_a_wrong_answer() {
    let (dir, _) = commits(&small(), 40).await;
    // Flip the low byte of every entry's seq in every ids run: without a check per block, a
    // lookup would find another seq, miss the id's record, and store a repeat as a new event.
    let mut damaged = 0;
    for entry in std::fs::read_dir(dir.path().join("log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "ids") {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let table = crate::index::Table::open(path.clone()).unwrap();
            for i in 0..table.entries() {
                let at = i * 24 + 23;
                let mut b = [0u8; 1];
                file.read_exact_at(&mut b, at).unwrap();
                file.write_all_at(&[b[0] ^ 0x01], at).unwrap();
            }
            damaged += 1;
        }
    }
    assert!(damaged > 0, "the small config makes runs");
    let store = EventStore::open(dir.path(), small()).unwrap();
    let mut refused = 0;
    for i in 0..40 {
        match store
            .append(vec![ev(&format!("e{i}"), "s")], ExpectedVersion::Any)
            .await
        {
            Ok(p) => assert!(p[0].duplicate, "e{i} stored twice"),
            Err(e) => {
                assert!(e.to_string().contains("does not match its checksum"), "{e}");
                assert!(e.to_string().contains("remove log/MANIFEST"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0);
    assert_eq!(store.head().seq, 40);
}

#[tokio::test]
async fn runs_of_another_format_version_are_rebuilt_from_the_log() {
    let (dir, _) = commits(&small(), 40).await;
    // The footer starts with the format's magic number: make every run look older.
    for entry in std::fs::read_dir(dir.path().join("log")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|e| e == "ids" || e == "streams")
        {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let footer = file.metadata().unwrap().len() - 40;
            file.write_all_at(&0x504c_4944_5831_0001u64.to_be_bytes(), footer)
                .unwrap();
        }
    }
    let store = EventStore::open(dir.path(), small()).unwrap();
    for i in 0..40 {
        let p = store
            .append(vec![ev(&format!("e{i}"), "s")], ExpectedVersion::Any)
            .await
            .unwrap();
        assert!(p[0].duplicate && p[0].seq == i + 1, "e{i}: {p:?}");
    }
    assert_eq!(store.stream_version("s").unwrap(), 40);
}
