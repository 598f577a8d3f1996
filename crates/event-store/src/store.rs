//! The event log: a single writer thread per store assigns gap-free sequence numbers, checks
//! expected versions and idempotency, and group-commits many appends as one atomic sled batch
//! followed by one `flush` and one `fdatasync` of the database file.
//!
//! A group commit is stored as *segments*: sled values of at most [`SEGMENT_TARGET_BYTES`]
//! (or one record, at most [`MAX_RECORD_BYTES`]) holding consecutive records, written in the
//! same atomic batch as the new head. A few sled writes per commit instead of several per event
//! is what lets the store keep up with the raw floor (see the benchmark). The lookups
//! (`(scope, event_id)` → seq, stream → seqs, the segment directory) live in memory and are
//! rebuilt from the segments when the store opens, as Bitcask does with its key directory: the
//! log is the only thing on disk, so an index can never disagree with it.
//!
//! **Power safety.** sled 0.34 writes any page larger than a quarter of its segment size to a
//! separate file in `blobs/` that it never fsyncs; only the `db` file is made durable here. A
//! sled leaf holds at most about 17 values before it splits, so the store opens sled with
//! [`SLED_SEGMENT_BYTES`] segments (blob threshold ≈ 2 MiB) and bounds each value: 20 values of
//! the largest segment (one record of [`MAX_RECORD_BYTES`]) are 1.9 MiB, below the threshold, so
//! every committed byte lands in the fsynced `db` file and `blobs/` stays empty (tested).
//!
//! **Fail-stop.** A commit that fails leaves sled's memory possibly ahead of the disk, so the
//! writer refuses every later append and publishes the failure ([`EventStore::watch_failure`]);
//! the service kit turns that into NOT_SERVING and a non-zero exit. A restart recovers. The
//! failed batch's fate is indeterminate (sled's background flush may still write it): its
//! callers were told it failed, and their retries dedupe, so nothing is stored twice.
//!
//! Key layout in the `log` tree (integers big-endian):
//! `g first_seq` → segment (`u32 count`, then per record `u32 len` + record bytes)
//! · `h` → head seq + head hash · `m name` → metadata (e.g. the outbox cursor).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::StoreError;
use crate::record::{self, GENESIS_HASH, HASH_LEN, RecordedEvent, Unsealed};

/// The largest record (an event with its names and chain fields) the store accepts.
pub const MAX_RECORD_BYTES: usize = 96 * 1024;
/// A commit's records are cut into sled values of about this size.
pub const SEGMENT_TARGET_BYTES: usize = 64 * 1024;
/// sled's segment size for a new store (its blob threshold is a quarter of it).
pub const SLED_SEGMENT_BYTES: usize = 8 * 1024 * 1024;

/// An event to append. (`scope`, `event_id`) is the idempotency key; `content` tells a
/// redelivery (same digest) from a different event reusing the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The idempotency scope: the tenant. Event ids are unique within it.
    pub scope: String,
    pub event_id: String,
    /// The stream (aggregate) it belongs to, e.g. `acme/u-1`; must not contain NUL.
    pub stream: String,
    pub event_type: String,
    pub data: Vec<u8>,
    /// Whether the outbox relay publishes it (a domain event).
    pub publish: bool,
    /// Digest of the event as the caller sent it (see [`content_digest`]); `data` may differ
    /// between deliveries (sealing uses fresh nonces), this must not.
    pub content: [u8; HASH_LEN],
}

impl NewEvent {
    /// An unpublished event whose content digest is that of its `data` (right when `data` is
    /// the same bytes on every delivery, i.e. nothing in it is sealed with a fresh nonce).
    pub fn new(
        scope: impl Into<String>,
        event_id: impl Into<String>,
        stream: impl Into<String>,
        event_type: impl Into<String>,
        data: Vec<u8>,
    ) -> NewEvent {
        NewEvent {
            scope: scope.into(),
            event_id: event_id.into(),
            stream: stream.into(),
            event_type: event_type.into(),
            content: content_digest(&data),
            data,
            publish: false,
        }
    }
}

impl NewEvent {
    /// The bytes it takes as a stored record (at most [`MAX_RECORD_BYTES`]).
    pub fn stored_len(&self) -> usize {
        record::encoded_len(
            &self.scope,
            &self.stream,
            &self.event_id,
            &self.event_type,
            self.data.len(),
        )
    }
}

/// The content digest of some canonical bytes (BLAKE3).
pub fn content_digest(bytes: &[u8]) -> [u8; HASH_LEN] {
    blake3::hash(bytes).into()
}

/// An event already stored under an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub position: Position,
    /// Its content digest (none for records written before digests were kept).
    pub content: Option<[u8; HASH_LEN]>,
}

impl Known {
    /// Whether an event with `content` is a redelivery of this one (not a different event).
    pub fn same_content(&self, content: &[u8; HASH_LEN]) -> bool {
        self.content.is_none_or(|c| &c == content)
    }
}

/// The optimistic-concurrency expectation of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last version must be exactly this.
    Exact(u64),
}

/// Where an appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub stream_version: u64,
    /// The `event_id` was seen before: nothing was appended, this is the original position.
    pub duplicate: bool,
}

/// Tuning of a store.
#[derive(Clone)]
pub struct StoreConfig {
    /// Most events committed in one group commit.
    pub max_batch_events: usize,
    /// Follow each group commit's flush with `fdatasync` of the database file.
    pub fsync: bool,
    /// The commit clock, microseconds since the Unix epoch.
    pub clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// sled's page cache for the log and the views, in bytes (sled's own default is 1 GiB).
    pub cache_bytes: u64,
}

/// The default page cache of a store: what keeps a service's memory small; the OS page cache
/// still holds the hot parts of the file.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_batch_events: 4096,
            fsync: true,
            clock: Arc::new(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros() as i64)
                    .unwrap_or(0)
            }),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("max_batch_events", &self.max_batch_events)
            .field("fsync", &self.fsync)
            .field("cache_bytes", &self.cache_bytes)
            .finish_non_exhaustive()
    }
}

/// The committed end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; HASH_LEN],
}

/// What [`EventStore::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events_checked: u64,
    /// The first sequence number whose record does not verify, with the reason.
    pub first_bad: Option<(u64, String)>,
    pub head: Head,
}

struct AppendRequest {
    events: Vec<NewEvent>,
    expected: ExpectedVersion,
    reply: oneshot::Sender<Result<Vec<Position>, StoreError>>,
}

/// The in-memory lookups, rebuilt from the segments at open.
#[derive(Default)]
struct Index {
    /// First sequence number of every segment, ascending.
    segments: Vec<u64>,
    /// Truncated BLAKE3 of an `event_id` → its sequence number (a hit is confirmed by reading
    /// the record, so a truncation collision cannot hide an event).
    ids: HashMap<[u8; 16], u64>,
    /// Stream → the sequence numbers of its events, in version order.
    streams: HashMap<String, Vec<u64>>,
}

impl Index {
    /// First seq of the segment holding `seq`.
    fn segment_of(&self, seq: u64) -> Option<u64> {
        let i = self.segments.partition_point(|first| *first <= seq);
        (i > 0).then(|| self.segments[i - 1])
    }

    fn add(&mut self, id: [u8; 16], stream: &str, seq: u64) {
        self.ids.insert(id, seq);
        match self.streams.get_mut(stream) {
            Some(seqs) => seqs.push(seq),
            None => {
                self.streams.insert(stream.to_owned(), vec![seq]);
            }
        }
    }
}

fn id_digest(scope: &str, event_id: &str) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&(scope.len() as u64).to_be_bytes());
    h.update(scope.as_bytes());
    h.update(event_id.as_bytes());
    h.finalize().as_bytes()[..16].try_into().expect("16 bytes")
}

pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    pub(crate) log: sled::Tree,
    pub(crate) head: watch::Sender<Head>,
    index: RwLock<Index>,
    db_file: PathBuf,
    /// Set once a commit failed or the writer died; the store then refuses writes.
    failure: watch::Sender<Option<StoreError>>,
    /// Makes the next commit fail (fault injection for tests).
    inject_failure: std::sync::atomic::AtomicBool,
}

/// An append-only, hash-chained event log. Cheap to clone; one per database directory.
#[derive(Clone)]
pub struct EventStore {
    pub(crate) shared: Arc<Shared>,
    writer: Arc<WriterHandle>,
}

/// The writer thread's inbox; dropping the last handle stops the thread and waits for it, so
/// the database is closed (and can be reopened) once every clone of the store is gone.
struct WriterHandle {
    tx: Option<mpsc::Sender<AppendRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const K_SEGMENT: u8 = b'g';
const K_HEAD: u8 = b'h';
const K_META: u8 = b'm';

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn segment_key(first_seq: u64) -> Vec<u8> {
    key(K_SEGMENT, &first_seq.to_be_bytes())
}

pub(crate) fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

pub(crate) fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Splits a segment into its records' bytes.
fn split_segment(first_seq: u64, bytes: &[u8]) -> Result<Vec<&[u8]>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        seq: first_seq,
        reason: format!("segment starting at {first_seq}: {reason}"),
    };
    if bytes.len() < 4 {
        return Err(corrupt("truncated header"));
    }
    let count = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let mut records = Vec::with_capacity(count);
    let mut pos = 4;
    for _ in 0..count {
        let len_end = pos + 4;
        if len_end > bytes.len() {
            return Err(corrupt("truncated record length"));
        }
        let len = u32::from_be_bytes(bytes[pos..len_end].try_into().expect("4 bytes")) as usize;
        let end = len_end + len;
        if end > bytes.len() {
            return Err(corrupt("truncated record"));
        }
        records.push(&bytes[len_end..end]);
        pos = end;
    }
    if pos != bytes.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(records)
}

impl EventStore {
    /// Opens (or creates) the store in `dir`, rebuilds its in-memory lookups from the log, and
    /// starts its writer thread.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<EventStore, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(storage)?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .segment_size(sled_segment_size(dir))
            .cache_capacity(config.cache_bytes)
            .open()
            .map_err(storage)?;
        let log = db.open_tree("log").map_err(storage)?;
        let head = match log.get([K_HEAD]).map_err(storage)? {
            Some(v) if v.len() == 8 + HASH_LEN => Head {
                seq: be_u64(&v),
                hash: v[8..].try_into().expect("32 bytes"),
            },
            Some(_) => {
                return Err(StoreError::Corrupt {
                    seq: 0,
                    reason: "the head record has the wrong length".into(),
                });
            }
            None => Head {
                seq: 0,
                hash: GENESIS_HASH,
            },
        };
        let mut index = Index::default();
        let mut next = 1;
        for kv in log.range(segment_key(0)..key(K_SEGMENT + 1, &[])) {
            let (k, v) = kv.map_err(storage)?;
            let first = be_u64(&k[1..]);
            index.segments.push(first);
            for bytes in split_segment(first, &v)? {
                let rec = record::decode(next, bytes)?;
                if rec.seq != next {
                    return Err(StoreError::Corrupt {
                        seq: next,
                        reason: format!("the log jumps from {} to {}", next - 1, rec.seq),
                    });
                }
                index.add(id_digest(&rec.scope, &rec.event_id), &rec.stream, rec.seq);
                next += 1;
            }
        }
        if next - 1 != head.seq {
            return Err(StoreError::Corrupt {
                seq: head.seq,
                reason: format!(
                    "the head says {} but the log ends at {}",
                    head.seq,
                    next - 1
                ),
            });
        }
        let (head_tx, _) = watch::channel(head);
        let shared = Arc::new(Shared {
            db,
            log,
            head: head_tx,
            index: RwLock::new(index),
            db_file: dir.join("db"),
            failure: watch::channel(None).0,
            inject_failure: Default::default(),
        });
        let (tx, rx) = mpsc::channel(1024);
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("event-store-writer".into())
            .spawn(move || {
                let failure = writer_shared.failure.clone();
                let run =
                    std::panic::AssertUnwindSafe(|| Writer::new(writer_shared, config).run(rx));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("the event store's writer panicked; the store refuses writes");
                    failure.send_replace(Some(StoreError::Storage(
                        "the writer thread panicked; restart the service to recover".into(),
                    )));
                }
            })
            .map_err(storage)?;
        Ok(EventStore {
            shared,
            writer: Arc::new(WriterHandle {
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    /// Appends events atomically (all or none), answering after they are durable.
    ///
    /// An event whose `event_id` is already stored appends nothing and reports its original
    /// position. With an expectation other than [`ExpectedVersion::Any`], every event must be of
    /// one stream.
    pub async fn append(
        &self,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<Vec<Position>, StoreError> {
        self.submit(events, expected).await?.await
    }

    /// Queues an append and returns a future of its outcome. Appends are committed in the order
    /// they were submitted, so a caller can submit the next batch before the previous one is
    /// durable (pipelining) without reordering them.
    pub async fn submit(
        &self,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<
        impl std::future::Future<Output = Result<Vec<Position>, StoreError>> + use<>,
        StoreError,
    > {
        for e in &events {
            if e.stream.contains('\0') || e.stream.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "stream name {:?} must be non-empty and contain no NUL",
                    e.stream
                )));
            }
            if e.event_id.is_empty() {
                return Err(StoreError::Invalid("event_id must not be empty".into()));
            }
            let bytes = e.stored_len();
            if bytes > MAX_RECORD_BYTES {
                return Err(StoreError::TooLarge {
                    event_id: e.event_id.clone(),
                    bytes,
                    max: MAX_RECORD_BYTES,
                });
            }
        }
        if expected != ExpectedVersion::Any && events.iter().any(|e| e.stream != events[0].stream) {
            return Err(StoreError::Invalid(
                "an append with an expected version must target one stream".into(),
            ));
        }
        let (reply, rx) = oneshot::channel();
        if events.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
        } else {
            let tx = self.writer.tx.as_ref().ok_or(StoreError::Closed)?;
            tx.send(AppendRequest {
                events,
                expected,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        }
        Ok(async move { rx.await.map_err(|_| StoreError::Closed)? })
    }

    /// The event stored under an idempotency key, if any (committed ones only).
    pub fn lookup(&self, scope: &str, event_id: &str) -> Result<Option<Known>, StoreError> {
        EventStore::known(&self.shared, scope, event_id, id_digest(scope, event_id))
    }

    /// Why the store stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<StoreError> {
        self.shared.failure.borrow().clone()
    }

    /// A receiver that changes once the store fails (a commit failed or its writer died).
    pub fn watch_failure(&self) -> watch::Receiver<Option<StoreError>> {
        self.shared.failure.subscribe()
    }

    /// Makes the next group commit fail as a disk error would. Exists only for tests of
    /// fail-stop behaviour.
    #[cfg(any(test, feature = "tamper"))]
    pub fn inject_commit_failure(&self) {
        self.shared
            .inject_failure
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The committed head.
    pub fn head(&self) -> Head {
        *self.shared.head.borrow()
    }

    /// A receiver that changes whenever the head moves.
    pub fn watch_head(&self) -> watch::Receiver<Head> {
        self.shared.head.subscribe()
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.shared.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `visit(seq, record bytes)` for each committed record from `from` to `last`
    /// (inclusive), in order, until it returns false.
    fn scan_records(
        &self,
        from: u64,
        last: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let start = self.index().segment_of(from).unwrap_or(1);
        for kv in self
            .shared
            .log
            .range(segment_key(start)..key(K_SEGMENT + 1, &[]))
        {
            let (k, v) = kv.map_err(storage)?;
            let first = be_u64(&k[1..]);
            if first > last {
                break;
            }
            for (i, bytes) in split_segment(first, &v)?.into_iter().enumerate() {
                let seq = first + i as u64;
                if seq < from {
                    continue;
                }
                if seq > last || !visit(seq, bytes)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Events with `seq >= from`, at most `limit`, in order (only committed ones).
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let from = from.max(1);
        let head = self.head().seq;
        if from > head || limit == 0 {
            return Ok(Vec::new());
        }
        let last = head.min(from.saturating_add(limit as u64 - 1));
        let mut out = Vec::with_capacity(((last - from + 1) as usize).min(65_536));
        self.scan_records(from, last, |seq, bytes| {
            out.push(record::decode(seq, bytes)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Scans at most `scan` committed records from `from` and decodes only those whose flags
    /// share a bit with `mask` (the others are skipped by their header byte). Returns them and
    /// the last sequence number scanned (0 when nothing was).
    pub fn read_flagged(
        &self,
        from: u64,
        scan: usize,
        mask: u8,
    ) -> Result<(Vec<RecordedEvent>, u64), StoreError> {
        let from = from.max(1);
        let head = self.head().seq;
        if from > head || scan == 0 {
            return Ok((Vec::new(), 0));
        }
        let last = head.min(from.saturating_add(scan as u64 - 1));
        let mut out = Vec::new();
        self.scan_records(from, last, |seq, bytes| {
            if bytes
                .get(record::FLAGS_OFFSET)
                .is_some_and(|f| f & mask != 0)
            {
                out.push(record::decode(seq, bytes)?);
            }
            Ok(true)
        })?;
        Ok((out, last))
    }

    /// One event by sequence number.
    pub fn get(&self, seq: u64) -> Result<Option<RecordedEvent>, StoreError> {
        Ok(self
            .read(seq, 1)?
            .into_iter()
            .next()
            .filter(|e| e.seq == seq))
    }

    /// Events of one stream with `stream_version >= from_version`, at most `limit`.
    pub fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let seqs: Vec<u64> = match self.index().streams.get(stream) {
            Some(seqs) => seqs
                .iter()
                .skip(from_version.max(1) as usize - 1)
                .take(limit)
                .copied()
                .collect(),
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::with_capacity(seqs.len());
        // Events of one stream are often in one segment: decode each segment once.
        let mut cached: Option<(u64, sled::IVec)> = None;
        for seq in seqs {
            let first = self
                .index()
                .segment_of(seq)
                .ok_or_else(|| StoreError::Corrupt {
                    seq,
                    reason: "no segment holds this event".into(),
                })?;
            if cached.as_ref().is_none_or(|(f, _)| *f != first) {
                let v = self
                    .shared
                    .log
                    .get(segment_key(first))
                    .map_err(storage)?
                    .ok_or_else(|| StoreError::Corrupt {
                        seq,
                        reason: format!("segment {first} is missing"),
                    })?;
                cached = Some((first, v));
            }
            let (first, v) = cached.as_ref().expect("cached above");
            let records = split_segment(*first, v)?;
            let bytes = records
                .get((seq - first) as usize)
                .ok_or_else(|| StoreError::Corrupt {
                    seq,
                    reason: "segment is shorter than its index says".into(),
                })?;
            out.push(record::decode(seq, bytes)?);
        }
        Ok(out)
    }

    /// The last version of a stream (0 when it does not exist).
    pub fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        Ok(self
            .index()
            .streams
            .get(stream)
            .map_or(0, |s| s.len() as u64))
    }

    /// Recomputes the chain over `from..=to` (0 = head) and names the first bad record. The
    /// first record in the range is linked to its predecessor's stored hash.
    pub fn verify(&self, from: u64, to: u64) -> Result<VerifyReport, StoreError> {
        let head = self.head();
        let to = if to == 0 { head.seq } else { to.min(head.seq) };
        let from = from.max(1);
        let mut report = VerifyReport {
            events_checked: 0,
            first_bad: None,
            head,
        };
        if from > to {
            return Ok(report);
        }
        let mut prev = if from == 1 {
            GENESIS_HASH
        } else {
            match EventStore::read_one(&self.shared, from - 1) {
                Ok(Some(rec)) => rec.hash,
                _ => [0; HASH_LEN],
            }
        };
        let first_segment = self.index().segment_of(from).unwrap_or(1);
        let mut expected = first_segment;
        let fail = |mut report: VerifyReport, seq: u64, reason: &str| {
            report.first_bad = Some((seq, reason.to_owned()));
            Ok(report)
        };
        for kv in self
            .shared
            .log
            .range(segment_key(first_segment)..key(K_SEGMENT + 1, &[]))
        {
            let (k, v) = kv.map_err(storage)?;
            let first = be_u64(&k[1..]);
            if first != expected {
                return fail(
                    report,
                    expected.max(from),
                    "events are missing from the log",
                );
            }
            let records = match split_segment(first, &v) {
                Ok(r) => r,
                Err(e) => return fail(report, first.max(from), &e.to_string()),
            };
            for (i, bytes) in records.into_iter().enumerate() {
                let seq = first + i as u64;
                expected = seq + 1;
                if seq < from {
                    continue;
                }
                if seq > to {
                    break;
                }
                if !record::check_hash(bytes) {
                    return fail(report, seq, "hash does not match the record's bytes");
                }
                let rec = match record::decode(seq, bytes) {
                    Ok(rec) => rec,
                    Err(e) => return fail(report, seq, &e.to_string()),
                };
                if rec.seq != seq {
                    return fail(report, seq, "record names another sequence number");
                }
                if rec.prev_hash != prev {
                    return fail(
                        report,
                        seq,
                        "prev_hash does not match the previous record's hash",
                    );
                }
                prev = rec.hash;
                report.events_checked += 1;
            }
            if expected > to {
                break;
            }
        }
        if report.events_checked < to - from + 1 {
            let missing = from + report.events_checked;
            return fail(report, missing, "events are missing from the log");
        }
        if to == head.seq && prev != head.hash {
            return fail(report, to, "the head hash does not match the last record");
        }
        Ok(report)
    }

    /// Reads a metadata value (e.g. a relay cursor).
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .shared
            .log
            .get(key(K_META, name.as_bytes()))
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    /// Writes a metadata value durably (flushed and fdatasynced, like a commit).
    pub async fn set_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        // After a failed commit, a flush could make the failed batch durable after all.
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let shared = self.shared.clone();
        let (key, value) = (key(K_META, name.as_bytes()), value.to_vec());
        tokio::task::spawn_blocking(move || {
            shared.log.insert(key, value).map_err(storage)?;
            shared.db.flush().map_err(storage)?;
            File::open(&shared.db_file)
                .and_then(|f| f.sync_data())
                .map_err(storage)
        })
        .await
        .map_err(storage)?
    }

    /// Waits until every earlier write is durable (used at shutdown). Refused after a failed
    /// commit, so that the failed batch sled may still hold in memory never reaches the disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        self.shared.db.flush_async().await.map_err(storage)?;
        Ok(())
    }

    /// Overwrites one byte of a stored record. Exists only to prove that tampering is caught.
    #[cfg(any(test, feature = "tamper"))]
    pub fn tamper_flip_byte(&self, seq: u64, index: usize) -> Result<(), StoreError> {
        let first = self
            .index()
            .segment_of(seq)
            .ok_or_else(|| StoreError::Invalid(format!("no event {seq}")))?;
        let v = self
            .shared
            .log
            .get(segment_key(first))
            .map_err(storage)?
            .ok_or_else(|| StoreError::Invalid(format!("no event {seq}")))?;
        let records = split_segment(first, &v)?;
        let target = records
            .get((seq - first) as usize)
            .ok_or_else(|| StoreError::Invalid(format!("no event {seq}")))?;
        let offset = target.as_ptr() as usize - v.as_ptr() as usize + index % target.len();
        let mut bytes = v.to_vec();
        bytes[offset] ^= 0x01;
        self.shared
            .log
            .insert(segment_key(first), bytes)
            .map_err(storage)?;
        self.shared.db.flush().map_err(storage)?;
        Ok(())
    }
}

/// The single committer of one store.
struct Writer {
    shared: Arc<Shared>,
    config: StoreConfig,
    head: Head,
    last_recorded_at: i64,
    db_file: Option<File>,
    /// Set when a commit failed: the writer then refuses everything (fail-stop), because what
    /// sled holds in memory may differ from what is durable. A restart recovers.
    failed: Option<StoreError>,
}

/// sled's segment size: [`SLED_SEGMENT_BYTES`] for a new store; an existing store keeps the
/// one it was created with (sled refuses a change), with a warning when it is smaller.
fn sled_segment_size(dir: &Path) -> usize {
    let existing = std::fs::read_to_string(dir.join("conf"))
        .ok()
        .and_then(|conf| {
            conf.lines()
                .find_map(|l| l.strip_prefix("segment_size: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
    match existing {
        Some(size) if size < SLED_SEGMENT_BYTES => {
            tracing::warn!(
                dir = %dir.display(),
                segment_size = size,
                "this store was created with small sled segments: large commits may land in \
                 blobs/ files that are not fsynced; replay it into a new data directory to be \
                 power-safe"
            );
            size
        }
        Some(size) => size,
        None => SLED_SEGMENT_BYTES,
    }
}

/// What one request staged into the commit.
enum Staged {
    Appended(Vec<Position>),
    Failed(StoreError),
}

/// One sled value of a commit: consecutive records from `first`.
struct Chunk {
    first: u64,
    count: u32,
    body: Vec<u8>,
}

/// Records staged by one group commit.
#[derive(Default)]
struct Segment {
    chunks: Vec<Chunk>,
    /// (id digest, stream, seq) to add to the index once durable.
    added: Vec<([u8; 16], String, u64)>,
    ids: HashMap<[u8; 16], Known>,
    versions: HashMap<String, u64>,
}

impl Segment {
    /// The body to append a record of `len` bytes at `seq` to, cutting a new chunk when the
    /// current one would pass [`SEGMENT_TARGET_BYTES`].
    fn body_for(&mut self, seq: u64, len: usize) -> &mut Vec<u8> {
        let full = self
            .chunks
            .last()
            .is_none_or(|c| c.count > 0 && c.body.len() + 4 + len > SEGMENT_TARGET_BYTES);
        if full {
            self.chunks.push(Chunk {
                first: seq,
                count: 0,
                body: Vec::with_capacity((4 + len).max(SEGMENT_TARGET_BYTES)),
            });
        }
        let chunk = self.chunks.last_mut().expect("a chunk");
        chunk.count += 1;
        &mut chunk.body
    }
}

impl Writer {
    fn new(shared: Arc<Shared>, config: StoreConfig) -> Writer {
        let head = *shared.head.borrow();
        let last_recorded_at = EventStore::read_last(&shared, head.seq);
        let db_file = File::open(&shared.db_file).ok();
        Writer {
            shared,
            config,
            head,
            last_recorded_at,
            db_file,
            failed: None,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<AppendRequest>) {
        while let Some(first) = rx.blocking_recv() {
            let mut count = first.events.len();
            let mut requests = vec![first];
            while count < self.config.max_batch_events {
                match rx.try_recv() {
                    Ok(r) => {
                        count += r.events.len();
                        requests.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit(requests);
        }
        if self.failed.is_none() {
            let _ = self.shared.db.flush();
        }
    }

    fn commit(&mut self, requests: Vec<AppendRequest>) {
        if let Some(e) = &self.failed {
            for req in requests {
                let _ = req.reply.send(Err(e.clone()));
            }
            return;
        }
        let start_head = self.head;
        let mut segment = Segment::default();
        let now = (self.config.clock)().max(self.last_recorded_at);
        let outcomes: Vec<Staged> = requests
            .iter()
            .map(|req| match self.stage(req, now, &mut segment) {
                Ok(p) => Staged::Appended(p),
                Err(e) => Staged::Failed(e),
            })
            .collect();
        let result = if segment.chunks.is_empty() {
            Ok(())
        } else {
            let mut batch = sled::Batch::default();
            for chunk in &segment.chunks {
                let mut value = Vec::with_capacity(4 + chunk.body.len());
                value.extend_from_slice(&chunk.count.to_be_bytes());
                value.extend_from_slice(&chunk.body);
                batch.insert(segment_key(chunk.first), value);
            }
            let mut h = self.head.seq.to_be_bytes().to_vec();
            h.extend_from_slice(&self.head.hash);
            batch.insert(vec![K_HEAD], h);
            self.durable_apply(batch)
        };
        match result {
            Ok(()) => {
                if !segment.chunks.is_empty() {
                    {
                        let mut index =
                            self.shared.index.write().unwrap_or_else(|p| p.into_inner());
                        index
                            .segments
                            .extend(segment.chunks.iter().map(|c| c.first));
                        for (id, stream, seq) in &segment.added {
                            index.add(*id, stream, *seq);
                        }
                    }
                    self.last_recorded_at = now;
                    self.shared.head.send_replace(self.head);
                }
                for (req, outcome) in requests.into_iter().zip(outcomes) {
                    let _ = req.reply.send(match outcome {
                        Staged::Appended(p) => Ok(p),
                        Staged::Failed(e) => Err(e),
                    });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; the store refuses writes until restarted");
                self.head = start_head;
                let failed = StoreError::Storage(format!(
                    "an earlier commit failed ({e}); restart the service to recover"
                ));
                self.failed = Some(failed.clone());
                self.shared.failure.send_replace(Some(failed));
                for req in requests {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn durable_apply(&mut self, batch: sled::Batch) -> Result<(), StoreError> {
        if self
            .shared
            .inject_failure
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Storage("injected commit failure".into()));
        }
        self.shared.log.apply_batch(batch).map_err(storage)?;
        self.shared.db.flush().map_err(storage)?;
        if self.config.fsync {
            if self.db_file.is_none() {
                self.db_file = Some(File::open(&self.shared.db_file).map_err(storage)?);
            }
            if let Some(f) = &self.db_file {
                f.sync_data().map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Stages one request into the commit, or refuses it whole.
    fn stage(
        &mut self,
        req: &AppendRequest,
        now: i64,
        segment: &mut Segment,
    ) -> Result<Vec<Position>, StoreError> {
        let digests: Vec<[u8; 16]> = req
            .events
            .iter()
            .map(|e| id_digest(&e.scope, &e.event_id))
            .collect();
        let known: Vec<Option<Known>> = req
            .events
            .iter()
            .zip(&digests)
            .map(|(e, d)| self.lookup_id(e, *d, segment))
            .collect::<Result<_, _>>()?;
        // Within one request, a key may repeat only with the same content.
        let mut first_of: HashMap<[u8; 16], &[u8; HASH_LEN]> = HashMap::new();
        for (e, d) in req.events.iter().zip(&digests) {
            if let Some(content) = first_of.insert(*d, &e.content)
                && content != &e.content
            {
                return Err(StoreError::ConflictingDuplicate {
                    scope: e.scope.clone(),
                    event_id: e.event_id.clone(),
                    seq: None,
                });
            }
        }
        if known.iter().all(Option::is_some) {
            return Ok(known.into_iter().flatten().map(|k| k.position).collect());
        }
        if req.expected != ExpectedVersion::Any {
            let stream = &req.events[0].stream;
            let actual = self.current_version(stream, segment);
            let ok = match req.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual == 0,
                ExpectedVersion::Exact(v) => actual == v,
            };
            if !ok {
                return Err(StoreError::Conflict {
                    stream: stream.clone(),
                    expected: req.expected,
                    actual,
                });
            }
        }
        let mut positions = Vec::with_capacity(req.events.len());
        for ((e, known), digest) in req.events.iter().zip(known).zip(digests) {
            if let Some(k) = known.or_else(|| segment.ids.get(&digest).copied()) {
                positions.push(Position {
                    duplicate: true,
                    ..k.position
                });
                continue;
            }
            let version = self.current_version(&e.stream, segment) + 1;
            let seq = self.head.seq + 1;
            let record = Unsealed {
                seq,
                stream_version: version,
                recorded_at_micros: now,
                flags: if e.publish { record::FLAG_PUBLISH } else { 0 },
                prev_hash: self.head.hash,
                scope: &e.scope,
                stream: &e.stream,
                event_id: &e.event_id,
                event_type: &e.event_type,
                data: &e.data,
                content: e.content,
            };
            let len = record.len();
            let body = segment.body_for(seq, len);
            body.extend_from_slice(&(len as u32).to_be_bytes());
            let hash = record.encode_into(body);
            segment.added.push((digest, e.stream.clone(), seq));
            self.head = Head { seq, hash };
            match segment.versions.get_mut(&e.stream) {
                Some(v) => *v = version,
                None => {
                    segment.versions.insert(e.stream.clone(), version);
                }
            }
            let p = Position {
                seq,
                stream_version: version,
                duplicate: false,
            };
            segment.ids.insert(
                digest,
                Known {
                    position: p,
                    content: Some(e.content),
                },
            );
            positions.push(p);
        }
        Ok(positions)
    }

    /// The event already stored (or staged) under `e`'s key; the same key with other content
    /// is refused as a conflicting duplicate.
    fn lookup_id(
        &self,
        e: &NewEvent,
        digest: [u8; 16],
        segment: &Segment,
    ) -> Result<Option<Known>, StoreError> {
        let known = match segment.ids.get(&digest) {
            Some(k) => Some(*k),
            None => EventStore::known(&self.shared, &e.scope, &e.event_id, digest)?,
        };
        match known {
            Some(k) if !k.same_content(&e.content) => Err(StoreError::ConflictingDuplicate {
                scope: e.scope.clone(),
                event_id: e.event_id.clone(),
                seq: Some(k.position.seq),
            }),
            Some(k) => Ok(Some(Known {
                position: Position {
                    duplicate: true,
                    ..k.position
                },
                ..k
            })),
            None => Ok(None),
        }
    }

    fn current_version(&self, stream: &str, segment: &Segment) -> u64 {
        if let Some(v) = segment.versions.get(stream) {
            return *v;
        }
        let index = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
        index.streams.get(stream).map_or(0, |s| s.len() as u64)
    }
}

impl EventStore {
    /// The committed event under an idempotency key (`digest` is its [`id_digest`]); a hit of
    /// the truncated digest is confirmed against the record.
    fn known(
        shared: &Shared,
        scope: &str,
        event_id: &str,
        digest: [u8; 16],
    ) -> Result<Option<Known>, StoreError> {
        let candidate = {
            let index = shared.index.read().unwrap_or_else(|p| p.into_inner());
            index.ids.get(&digest).copied()
        };
        let Some(seq) = candidate else {
            return Ok(None);
        };
        Ok(EventStore::read_one(shared, seq)?
            .filter(|rec| rec.scope == scope && rec.event_id == event_id)
            .map(|rec| Known {
                position: Position {
                    seq,
                    stream_version: rec.stream_version,
                    duplicate: true,
                },
                content: rec.content,
            }))
    }

    /// Reads one committed record straight from the tree (for the writer, which has no handle).
    fn read_one(shared: &Shared, seq: u64) -> Result<Option<RecordedEvent>, StoreError> {
        let first = {
            let index = shared.index.read().unwrap_or_else(|p| p.into_inner());
            index.segment_of(seq)
        };
        let Some(first) = first else { return Ok(None) };
        let Some(v) = shared.log.get(segment_key(first)).map_err(storage)? else {
            return Ok(None);
        };
        let records = split_segment(first, &v)?;
        match records.get((seq - first) as usize) {
            Some(bytes) => Ok(Some(record::decode(seq, bytes)?)),
            None => Ok(None),
        }
    }

    /// The commit time of the last record, so that commit times never go backwards.
    fn read_last(shared: &Shared, head: u64) -> i64 {
        EventStore::read_one(shared, head)
            .ok()
            .flatten()
            .map_or(i64::MIN, |r| r.recorded_at_micros)
    }
}
