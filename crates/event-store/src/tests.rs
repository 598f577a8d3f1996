//! Unit tests of the store as a whole: appends, idempotency, conflicts, the chain, reopening,
//! subscriptions and projections.

use std::sync::Arc;

use proptest::prelude::*;

use crate::*;

fn ev(id: &str, stream: &str) -> NewEvent {
    let data = format!("data of {id}").into_bytes();
    NewEvent {
        scope: "t".into(),
        event_id: id.into(),
        stream: stream.into(),
        event_type: "test.happened".into(),
        content: content_digest(&data),
        data,
        publish: false,
    }
}

/// An event of `scope` whose content digest is that of `content`.
fn scoped(scope: &str, id: &str, content: &str) -> NewEvent {
    NewEvent {
        scope: scope.into(),
        content: content_digest(content.as_bytes()),
        ..ev(id, &format!("{scope}/s"))
    }
}

fn open(dir: &tempfile::TempDir) -> EventStore {
    EventStore::open(dir.path(), StoreConfig::default()).unwrap()
}

#[tokio::test]
async fn appends_get_gap_free_sequences_and_stream_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let p = store
        .append(
            vec![ev("a", "s1"), ev("b", "s2"), ev("c", "s1")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    assert_eq!(
        p.iter()
            .map(|p| (p.seq, p.stream_version))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 1), (3, 2)]
    );
    assert_eq!(store.head().seq, 3);
    let s1: Vec<_> = store
        .read_stream("s1", 1, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(s1, vec!["a", "c"]);
    assert_eq!(store.stream_version("s1").unwrap(), 2);
    assert_eq!(store.stream_version("nope").unwrap(), 0);
}

#[tokio::test]
async fn a_repeated_event_id_appends_nothing_and_returns_the_original_position() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .append(vec![ev("a", "s")], ExpectedVersion::Any)
        .await
        .unwrap();
    let again = store
        .append(
            vec![ev("a", "s"), ev("b", "s"), ev("b", "s")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![
            Position {
                seq: 1,
                stream_version: 1,
                duplicate: true
            },
            Position {
                seq: 2,
                stream_version: 2,
                duplicate: false
            },
            Position {
                seq: 2,
                stream_version: 2,
                duplicate: true
            },
        ]
    );
    assert_eq!(store.head().seq, 2);
}

#[tokio::test]
async fn idempotency_is_per_scope_and_a_reused_key_with_other_content_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let p = store
        .append(
            vec![scoped("acme", "e-1", "one"), scoped("globex", "e-1", "two")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    assert!(p.iter().all(|p| !p.duplicate), "two tenants, two events");
    // A redelivery (same content) is a duplicate; other content under the same key is refused
    // and the whole append stores nothing.
    let again = store
        .append(vec![scoped("acme", "e-1", "one")], ExpectedVersion::Any)
        .await
        .unwrap();
    assert!(again[0].duplicate);
    assert_eq!(again[0].seq, 1);
    let err = store
        .append(
            vec![scoped("acme", "e-2", "x"), scoped("acme", "e-1", "changed")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::ConflictingDuplicate {
            scope: "acme".into(),
            event_id: "e-1".into(),
            seq: Some(1)
        }
    );
    let err = store
        .append(
            vec![scoped("acme", "e-3", "x"), scoped("acme", "e-3", "y")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ConflictingDuplicate { seq: None, .. }),
        "{err}"
    );
    assert_eq!(store.head().seq, 2);
    let known = store.lookup("globex", "e-1").unwrap().unwrap();
    assert_eq!(known.position.seq, 2);
    assert!(known.same_content(&content_digest(b"two")));
    assert!(!known.same_content(&content_digest(b"one")));
    assert_eq!(store.lookup("initech", "e-1").unwrap(), None);
    // The keys survive a reopen (the index is rebuilt from the records).
    drop(store);
    let store = open(&dir);
    assert!(store.lookup("acme", "e-1").unwrap().is_some());
    let err = store
        .append(vec![scoped("globex", "e-1", "other")], ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::ConflictingDuplicate { seq: Some(2), .. }
    ));
}

#[tokio::test]
async fn full_batches_of_the_largest_events_leave_no_unsynced_blob_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let overhead = ev("x", "s").data.len();
    let mut n = 0;
    // Three commits of the largest records, then commits of small ones: whatever the events'
    // size, nothing the store keeps in sled passes sled's blob threshold.
    for round in 0..5 {
        let size = if round < 3 {
            MAX_RECORD_BYTES - 200
        } else {
            300
        };
        let events: Vec<NewEvent> = (0..if round < 3 { 60 } else { 4000 })
            .map(|_| {
                n += 1;
                let mut e = ev(&format!("e-{n}"), &format!("s{}", n % 7));
                e.data = vec![(n % 251) as u8; size - overhead];
                e
            })
            .collect();
        store.append(events, ExpectedVersion::Any).await.unwrap();
    }
    let too_big = NewEvent {
        data: vec![0; MAX_RECORD_BYTES],
        ..ev("huge", "s")
    };
    assert!(matches!(
        store.append(vec![too_big], ExpectedVersion::Any).await,
        Err(StoreError::TooLarge { .. })
    ));
    store.flush().await.unwrap();
    let blobs: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        blobs.is_empty(),
        "sled wrote blob files it never fsyncs: {blobs:?}"
    );
    drop(store);
    let store = open(&dir);
    assert_eq!(store.head().seq, n);
    let report = store.verify(1, n).unwrap();
    assert_eq!((report.events_checked, report.first_bad), (n, None));
}

#[tokio::test]
async fn a_failed_commit_stops_the_store_loudly_and_a_reopen_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .append(vec![ev("a", "s")], ExpectedVersion::Any)
        .await
        .unwrap();
    let mut failure = store.watch_failure();
    assert!(store.failure().is_none());
    store.inject_commit_failure();
    assert!(
        store
            .append(vec![ev("b", "s")], ExpectedVersion::Any)
            .await
            .is_err()
    );
    failure.wait_for(Option::is_some).await.unwrap();
    // Every later write is refused, not silently retried.
    let err = store
        .append(vec![ev("c", "s")], ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("restart"), "{err}");
    assert_eq!(store.head().seq, 1);
    drop(store);
    let store = open(&dir);
    assert!(store.failure().is_none());
    let p = store
        .append(vec![ev("b", "s")], ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!(p[0].seq, 2);
}

#[tokio::test]
async fn expected_version_conflicts_are_reported_and_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .append(vec![ev("a", "s")], ExpectedVersion::NoStream)
        .await
        .unwrap();
    let err = store
        .append(vec![ev("b", "s")], ExpectedVersion::NoStream)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: 1, .. }),
        "{err}"
    );
    let err = store
        .append(vec![ev("b", "s")], ExpectedVersion::Exact(5))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
    store
        .append(vec![ev("b", "s")], ExpectedVersion::Exact(1))
        .await
        .unwrap();
    assert_eq!(store.head().seq, 2);
}

#[tokio::test]
async fn concurrent_appends_are_group_committed_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                store
                    .append(
                        vec![ev(&format!("{t}-{i}"), &format!("s{t}"))],
                        ExpectedVersion::Any,
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = store.read(1, 1000).unwrap();
    assert_eq!(all.len(), 400);
    assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    assert!(
        all.windows(2)
            .all(|w| w[0].recorded_at_micros <= w[1].recorded_at_micros)
    );
    assert_eq!(store.verify(0, 0).unwrap().first_bad, None);
}

#[tokio::test]
async fn the_chain_survives_a_reopen_and_names_a_tampered_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        for i in 0..10 {
            store
                .append(vec![ev(&format!("e{i}"), "s")], ExpectedVersion::Any)
                .await
                .unwrap();
        }
    }
    let store = open(&dir);
    assert_eq!(store.head().seq, 10);
    store
        .append(vec![ev("e10", "s")], ExpectedVersion::Any)
        .await
        .unwrap();
    let report = store.verify(0, 0).unwrap();
    assert_eq!(report.events_checked, 11);
    assert_eq!(report.first_bad, None);
    // Tampering is simulated below the API, as an attacker with disk access would.
    store.tamper_flip_byte(7, 30).unwrap();
    let report = store.verify(0, 0).unwrap();
    assert_eq!(report.first_bad.map(|b| b.0), Some(7));
    assert_eq!(report.events_checked, 6);
    // Ranges that end before it verify; ranges that contain it name it.
    assert_eq!(store.verify(1, 6).unwrap().first_bad, None);
    assert_eq!(store.verify(5, 9).unwrap().first_bad.map(|b| b.0), Some(7));
}

#[tokio::test]
async fn a_subscription_catches_up_then_follows_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for i in 0..5 {
        store
            .append(vec![ev(&format!("a{i}"), "s")], ExpectedVersion::Any)
            .await
            .unwrap();
    }
    let mut sub = store.subscribe(3);
    let writer = store.clone();
    let producer = tokio::spawn(async move {
        for i in 0..100 {
            writer
                .append(vec![ev(&format!("b{i}"), "s")], ExpectedVersion::Any)
                .await
                .unwrap();
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 103 {
        for e in sub.next_batch(7).await.unwrap() {
            seen.push(e.seq);
        }
    }
    producer.await.unwrap();
    assert_eq!(seen, (3..=105).collect::<Vec<_>>());
}

/// Counts events per stream: needs read-your-writes inside a batch.
struct CountPerStream;

impl Projection for CountPerStream {
    fn name(&self) -> &'static str {
        "count_per_stream"
    }
    fn version(&self) -> u32 {
        1
    }
    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        let n = view
            .get(event.stream.as_bytes())?
            .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
        view.put(event.stream.as_bytes(), (n + 1).to_be_bytes().to_vec());
        Ok(())
    }
}

struct CountV2;

impl Projection for CountV2 {
    fn name(&self) -> &'static str {
        "count_per_stream"
    }
    fn version(&self) -> u32 {
        2
    }
    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        CountPerStream.apply(event, view)
    }
}

/// A view's stamp stays while nothing is folded and changes with every commit and with a
/// rebuild's swap, so a cache keyed by it never serves what the view no longer holds.
#[tokio::test]
async fn a_views_stamp_changes_with_every_change_of_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let projector = Projector::open(&store, vec![Arc::new(CountPerStream)]).unwrap();
    let view = projector.view("count_per_stream").unwrap();
    let mut seen = vec![view.stamp()];
    for i in 0..3 {
        store
            .append(vec![ev(&format!("e{i}"), "s")], ExpectedVersion::Any)
            .await
            .unwrap();
        // Appended, not folded: the view, and its stamp, are as they were.
        assert_eq!(view.stamp(), *seen.last().unwrap());
        projector.catch_up().await.unwrap();
        assert_eq!(
            view.get(b"s").unwrap(),
            Some((i + 1u64).to_be_bytes().to_vec())
        );
        seen.push(view.stamp());
    }
    projector.catch_up().await.unwrap();
    assert_eq!(
        view.stamp(),
        *seen.last().unwrap(),
        "nothing new was folded"
    );
    projector
        .rebuild("count_per_stream", |_, _| {})
        .await
        .unwrap();
    seen.push(view.stamp());
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "{seen:?}");
}

#[tokio::test]
async fn projections_rebuild_to_the_same_bytes_and_rebuild_on_a_version_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let projector = Projector::open(&store, vec![Arc::new(CountPerStream)]).unwrap();
    for i in 0..3000 {
        store
            .append(
                vec![ev(&format!("e{i}"), &format!("s{}", i % 7))],
                ExpectedVersion::Any,
            )
            .await
            .unwrap();
        if i == 1500 {
            projector.catch_up().await.unwrap();
        }
    }
    projector.catch_up().await.unwrap();
    let live = projector.status().unwrap().remove(0);
    assert_eq!(live.checkpoint, 3000);
    assert_eq!(live.entries, 7);
    let view = projector.view("count_per_stream").unwrap();
    assert_eq!(
        view.get(b"s0").unwrap(),
        Some(429u64.to_be_bytes().to_vec())
    );
    let last_progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = last_progress.clone();
    let rebuilt = projector
        .rebuild("count_per_stream", move |applied, _| {
            seen.store(applied, std::sync::atomic::Ordering::Relaxed)
        })
        .await
        .unwrap();
    assert_eq!(
        last_progress.load(std::sync::atomic::Ordering::Relaxed),
        3000
    );
    assert_eq!(rebuilt, live);
    drop(projector);
    // A new version marks the view stale at start-up (checkpoint 0, so nothing waiting on it
    // proceeds), and the next catch-up rebuilds it in a shadow and swaps it in.
    let projector = Projector::open(&store, vec![Arc::new(CountV2)]).unwrap();
    assert_eq!(projector.status().unwrap()[0].checkpoint, 0);
    assert_eq!(projector.checkpoint(), 0);
    projector.catch_up().await.unwrap();
    let v2 = projector.status().unwrap().remove(0);
    assert_eq!((v2.version, v2.digest), (2, live.digest));
    assert_eq!(projector.checkpoint(), 3000);
    drop(projector);
    // The swapped-in generation is the one found at the next open; no leftover remains.
    let projector = Projector::open(&store, vec![Arc::new(CountV2)]).unwrap();
    assert_eq!(projector.status().unwrap().remove(0), v2);
}

/// Events `e<i>` for `i` in `ids`, spread over the streams `s0`…`s<streams - 1>`.
fn spread(ids: std::ops::Range<usize>, streams: usize) -> Vec<NewEvent> {
    ids.map(|i| ev(&format!("e{i}"), &format!("s{}", i % streams)))
        .collect()
}

/// The generations of `count_per_stream` present in `views/`.
fn generations(store: &EventStore) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(store.views_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("count_per_stream@"))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn a_rebuild_leaves_one_generation_and_an_unfinished_shadow_is_a_leftover() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let projector = Projector::open(&store, vec![Arc::new(CountPerStream)]).unwrap();
    store
        .append(spread(0..500, 3), ExpectedVersion::Any)
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    assert_eq!(generations(&store), ["count_per_stream@0"]);
    let rebuilt = projector
        .rebuild("count_per_stream", |_, _| {})
        .await
        .unwrap();
    assert_eq!(generations(&store), ["count_per_stream@1"]);
    // A crash during the next rebuild leaves its shadow, with whatever it had written, and a
    // directory that still names generation 1: the next open keeps generation 1 and removes
    // the shadow.
    drop(projector);
    let shadow = store.views_dir().join("count_per_stream@2");
    std::fs::create_dir(&shadow).unwrap();
    std::fs::write(shadow.join("run-1.view"), b"half a run").unwrap();
    let projector = Projector::open(&store, vec![Arc::new(CountPerStream)]).unwrap();
    assert_eq!(projector.status().unwrap().remove(0), rebuilt);
    assert_eq!(generations(&store), ["count_per_stream@1"]);
    let view = projector.view("count_per_stream").unwrap();
    assert_eq!(
        view.get(b"s0").unwrap(),
        Some(167u64.to_be_bytes().to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_never_shows_readers_a_half_built_view() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let projector = Projector::open(&store, vec![Arc::new(CountPerStream)]).unwrap();
    let events = spread(0..40_000, 5);
    for chunk in events.chunks(4000) {
        store
            .append(chunk.to_vec(), ExpectedVersion::Any)
            .await
            .unwrap();
    }
    projector.catch_up().await.unwrap();
    let view = projector.view("count_per_stream").unwrap();
    let want = Some(8000u64.to_be_bytes().to_vec());
    assert_eq!(view.get(b"s0").unwrap(), want);
    let rebuild = tokio::spawn({
        let projector = projector.clone();
        async move { projector.rebuild("count_per_stream", |_, _| {}).await }
    });
    // Read until the rebuild is done: every read sees the complete count, never a partial one.
    let mut reads = 0u64;
    while !rebuild.is_finished() {
        assert_eq!(view.get(b"s0").unwrap(), want, "after {reads} reads");
        reads += 1;
        tokio::task::yield_now().await;
    }
    rebuild.await.unwrap().unwrap();
    assert_eq!(view.get(b"s0").unwrap(), want);
    assert!(reads > 0);
}

/// Counts every event under one key; fails on the event whose id is `fail_at`, when set.
struct Total {
    fail_at: Option<&'static str>,
}

impl Projection for Total {
    fn name(&self) -> &'static str {
        "total"
    }
    fn version(&self) -> u32 {
        1
    }
    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        if self.fail_at == Some(event.event_id.as_str()) {
            return Err(StoreError::Invalid(format!(
                "cannot fold {}",
                event.event_id
            )));
        }
        let n = view
            .get(b"n")?
            .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
        view.put(b"n", (n + 1).to_be_bytes().to_vec());
        Ok(())
    }
}

#[tokio::test]
async fn views_at_different_checkpoints_fold_together_over_many_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let append = |range: std::ops::Range<usize>| {
        let events = spread(range, 5);
        let store = store.clone();
        async move {
            for chunk in events.chunks(20_000) {
                store
                    .append(chunk.to_vec(), ExpectedVersion::Any)
                    .await
                    .unwrap();
            }
        }
    };
    append(0..1000).await;
    // One view folds the first thousand alone; then a second view joins, at checkpoint 0.
    Projector::open(&store, vec![Arc::new(CountPerStream)])
        .unwrap()
        .catch_up()
        .await
        .unwrap();
    append(1000..140_000).await;
    let projector = Projector::open(
        &store,
        vec![Arc::new(CountPerStream), Arc::new(Total { fail_at: None })],
    )
    .unwrap();
    let checkpoints: Vec<u64> = projector
        .status()
        .unwrap()
        .iter()
        .map(|s| s.checkpoint)
        .collect();
    assert_eq!(checkpoints, [1000, 0]);
    // Several read batches (one read ahead while the other folds): each event lands once in
    // each view.
    assert_eq!(projector.catch_up().await.unwrap(), 139_000 + 140_000);
    assert_eq!(projector.checkpoint(), 140_000);
    let count = |name: &str, key: &[u8]| {
        projector
            .view(name)
            .unwrap()
            .get(key)
            .unwrap()
            .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
    };
    assert_eq!(count("count_per_stream", b"s0"), Some(28_000));
    assert_eq!(count("total", b"n"), Some(140_000));
    let folded = projector.status().unwrap();
    for name in ["count_per_stream", "total"] {
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = reports.clone();
        let rebuilt = projector
            .rebuild(name, move |applied, target| {
                seen.lock().unwrap().push((applied, target))
            })
            .await
            .unwrap();
        assert!(folded.contains(&rebuilt), "{name} rebuilt to other bytes");
        // A commit (and a report) about every 65,536 events, then the last one at the head.
        let reports = reports.lock().unwrap().clone();
        assert!(reports.len() >= 3, "{reports:?}");
        assert!(reports.windows(2).all(|w| w[0].0 < w[1].0), "{reports:?}");
        assert_eq!(reports.last(), Some(&(140_000, 140_000)));
        assert_eq!(reports[0].0, 65_536, "{reports:?}");
    }
}

#[tokio::test]
async fn a_fold_that_fails_while_the_next_batch_is_read_ahead_reports_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let events: Vec<NewEvent> = (0..140_000).map(|i| ev(&format!("e{i}"), "s")).collect();
    for chunk in events.chunks(20_000) {
        store
            .append(chunk.to_vec(), ExpectedVersion::Any)
            .await
            .unwrap();
    }
    let projector = Projector::open(
        &store,
        vec![
            Arc::new(CountPerStream),
            Arc::new(Total {
                fail_at: Some("e100000"),
            }),
        ],
    )
    .unwrap();
    let err = projector.catch_up().await.unwrap_err();
    assert!(err.to_string().contains("cannot fold e100000"), "{err}");
    // What each view committed before the failure is kept and shown: whole batches only (the
    // other view had staged past 65,536 too, uncommitted: a restart folds it again).
    let status = projector.status().unwrap();
    assert_eq!(status[1].checkpoint, 65_536, "{status:?}");
    assert_eq!(status[0].checkpoint, 65_536, "{status:?}");
    assert_eq!(projector.checkpoint(), status[1].checkpoint);
}

#[tokio::test]
async fn a_fold_batch_ends_at_its_byte_bound_whatever_the_event_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // 400 events of 90 KiB: 35 MiB, past one batch's 32 MiB though far below its event count.
    let events: Vec<NewEvent> = (0..400)
        .map(|i| {
            NewEvent::new(
                "t",
                format!("e{i}"),
                "s",
                "test.happened",
                vec![7; 90 << 10],
            )
        })
        .collect();
    for chunk in events.chunks(100) {
        store
            .append(chunk.to_vec(), ExpectedVersion::Any)
            .await
            .unwrap();
    }
    let projector = Projector::open(&store, vec![Arc::new(Total { fail_at: None })]).unwrap();
    assert_eq!(projector.catch_up().await.unwrap(), 400);
    let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = batches.clone();
    let rebuilt = projector
        .rebuild("total", move |applied, _| {
            seen.lock().unwrap().push(applied)
        })
        .await
        .unwrap();
    assert_eq!(rebuilt.checkpoint, 400);
    let batches = batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert_eq!(batches[1], 400);
    assert_eq!(
        projector.view("total").unwrap().get(b"n").unwrap(),
        Some(400u64.to_be_bytes().to_vec())
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Whatever mix of new and repeated ids is appended, each id is stored exactly once and
    /// the log stays gap-free and verifiable.
    #[test]
    fn every_id_is_stored_once(batches in prop::collection::vec(prop::collection::vec(0u8..40, 1..10), 1..12)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = open(&dir);
            let mut distinct = std::collections::BTreeSet::new();
            for batch in &batches {
                let events = batch.iter().map(|i| ev(&format!("id{i}"), &format!("s{}", i % 3))).collect();
                store.append(events, ExpectedVersion::Any).await.unwrap();
                distinct.extend(batch.iter().copied());
            }
            let all = store.read(1, 10_000).unwrap();
            prop_assert_eq!(all.len(), distinct.len());
            prop_assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
            prop_assert_eq!(store.verify(0, 0).unwrap().first_bad, None);
            Ok(())
        })?;
    }
}

/// Keeps each stream's event ids in chunks of at most three, under `<stream> 0`, and every
/// fifth event's id at `last/<stream>`; `CHUNKED` says whether through
/// `ViewWriter::append_chunked` or by finding the last chunk and updating it.
struct Chunks<const CHUNKED: bool>;

impl<const CHUNKED: bool> Projection for Chunks<CHUNKED> {
    fn name(&self) -> &'static str {
        if CHUNKED { "chunked" } else { "by_hand" }
    }
    fn version(&self) -> u32 {
        1
    }
    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        let mut prefix = event.stream.as_bytes().to_vec();
        prefix.push(0);
        let id = event.event_id.as_bytes();
        let add = |v: &mut Option<Vec<u8>>| {
            let chunk = v.get_or_insert_with(Vec::new);
            if chunk.iter().filter(|b| **b == b';').count() >= 3 {
                return false;
            }
            chunk.extend_from_slice(id);
            chunk.push(b';');
            true
        };
        if CHUNKED {
            view.append_chunked(&prefix, add)?;
        } else {
            let mut key = view
                .last_with_prefix(&prefix)?
                .unwrap_or_else(|| [prefix.as_slice(), &0u32.to_be_bytes()].concat());
            let mut added = false;
            view.update(&key, |v| added = add(v))?;
            if !added {
                let n = u32::from_be_bytes(key[prefix.len()..].try_into().unwrap());
                key = [prefix.as_slice(), &(n + 1).to_be_bytes()].concat();
                view.update(&key, |v| added = add(v))?;
            }
            assert!(added);
        }
        if event.seq.is_multiple_of(5) {
            // Another change between appends: a write outside the chunked lists.
            view.put(format!("last/{}", event.stream).as_bytes(), id.to_vec());
        }
        Ok(())
    }
}

#[tokio::test]
async fn chunked_appends_write_what_finding_the_last_chunk_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let projector = Projector::open(
        &store,
        vec![Arc::new(Chunks::<true>), Arc::new(Chunks::<false>)],
    )
    .unwrap();
    for i in 0..200 {
        // Streams of one, two and more events in a batch; batches of 1 to 13 events.
        let batch = (0..1 + i % 13)
            .map(|j| ev(&format!("e{i}.{j}"), &format!("s{}", (i * 7 + j) % 5)))
            .collect();
        store.append(batch, ExpectedVersion::Any).await.unwrap();
        if i % 3 == 0 {
            projector.catch_up().await.unwrap();
        }
    }
    projector.catch_up().await.unwrap();
    let chunked = projector.view("chunked").unwrap().scan_prefix(b"").unwrap();
    let by_hand = projector.view("by_hand").unwrap().scan_prefix(b"").unwrap();
    assert!(chunked.len() > 100, "{} entries", chunked.len());
    assert_eq!(chunked, by_hand);
    let status = projector.status().unwrap();
    assert_eq!(status[0].digest, status[1].digest);
}

#[test]
fn a_held_lock_is_waited_for_then_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = || sled::Config::new().path(dir.path());
    let held = config().open().unwrap();
    let err =
        crate::store::open_sled_waiting(config(), dir.path(), std::time::Duration::from_millis(30))
            .unwrap_err()
            .to_string();
    assert!(err.contains("is open in another process"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    // Released while the open waits: the open goes through.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        rx.recv().unwrap();
        drop(held);
    });
    tx.send(()).unwrap();
    crate::store::open_sled(config(), dir.path()).unwrap();
    holder.join().unwrap();
}
