//! The event log: a single writer thread per store assigns gap-free sequence numbers, checks
//! expected versions and idempotency, and group-commits many appends as one positional write to
//! the current log file followed by one `fdatasync` (see [`crate::log`] for the file format and
//! the recovery of a torn tail).
//!
//! The lookups (`(scope, event_id)` → seq, stream → versions and seqs) are [`crate::index`]:
//! a memory table of the newest events plus sorted runs on disk, checkpointed by an indexer
//! thread every [`StoreConfig::index_memtable_events`] events together with the log's sparse
//! directory. Opening a store loads the checkpoint and reads only the log after it, so the open
//! does not grow with the log, and memory holds the runs' filters and block keys rather than
//! every key. The index is derived from the log: without a checkpoint it is rebuilt from it.
//!
//! sled holds the store's metadata in the same directory (e.g. the outbox cursor, written
//! with flush + `fdatasync`, and each view's live generation); the views keep their own files
//! under `views/` (see `viewdb`). A store created
//! before the log had its own files kept its records in sled; opening it moves them into log
//! files once (into `log.migrating/`, renamed to `log/` when complete).
//!
//! **Fail-stop.** A commit that fails may leave part of its bytes in the file, so the writer
//! refuses every later append and publishes the failure ([`EventStore::watch_failure`]); the
//! service kit turns that into NOT_SERVING and a non-zero exit. A restart recovers (the torn
//! bytes are cut). The failed batch's fate is indeterminate (its write may have reached the
//! disk): its callers were told it failed, and their retries dedupe, so nothing is stored twice.
//! A failed index checkpoint stops the store the same way.
//!
//! Key layout in sled's `log` tree: `m name` → metadata. (`g first_seq` → segment and `h` →
//! head were the log itself before it moved to files; they are removed once migrated.)

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::StoreError;
use crate::index::{self, Covered, Index, MemTable, Run, stream_key};
use crate::log::{self, DirEntry, Files, Frame, FrameReader, HEADER_LEN, LogFile};
use crate::record::{self, GENESIS_HASH, HASH_LEN, RecordedEvent, Unsealed};

/// The largest record (an event with its names and chain fields) the store accepts.
pub const MAX_RECORD_BYTES: usize = 96 * 1024;
/// The most bytes one append may store (a commit's length must fit its header's u32 with the
/// rest of its group: at most 4096 events of [`MAX_RECORD_BYTES`] besides).
pub const MAX_APPEND_BYTES: usize = 256 * 1024 * 1024;
/// sled's segment size for a new store (its blob threshold is a quarter of it): the
/// metadata's values stay below it, so sled's unsynced `blobs/` files stay empty.
pub const SLED_SEGMENT_BYTES: usize = 8 * 1024 * 1024;
/// A log file is closed, and the next commit starts a new one, past this size.
pub const DEFAULT_LOG_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Events in the index's memory table before it is checkpointed as a run on disk.
pub const DEFAULT_INDEX_MEMTABLE_EVENTS: usize = 131_072;

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
    /// Follow each group commit's write with `fdatasync` of the log file (and each index
    /// checkpoint's files with `fsync`).
    pub fsync: bool,
    /// The commit clock, microseconds since the Unix epoch.
    pub clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// sled's page cache for the store's metadata, in bytes (sled's own default is 1 GiB);
    /// views keep their own files and memory tables.
    pub cache_bytes: u64,
    /// A log file's size before the next one is started.
    pub log_file_bytes: u64,
    /// Events the index keeps in memory before writing them as a run (and checkpointing).
    /// Bounds both the index's memory and what an open must re-read from the log.
    pub index_memtable_events: usize,
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
            log_file_bytes: DEFAULT_LOG_FILE_BYTES,
            index_memtable_events: DEFAULT_INDEX_MEMTABLE_EVENTS,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("max_batch_events", &self.max_batch_events)
            .field("fsync", &self.fsync)
            .field("cache_bytes", &self.cache_bytes)
            .field("log_file_bytes", &self.log_file_bytes)
            .field("index_memtable_events", &self.index_memtable_events)
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

fn id_digest(scope: &str, event_id: &str) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&(scope.len() as u64).to_be_bytes());
    h.update(scope.as_bytes());
    h.update(event_id.as_bytes());
    h.finalize().as_bytes()[..16].try_into().expect("16 bytes")
}

pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    /// sled's `log` tree: the store's metadata.
    meta: sled::Tree,
    pub(crate) head: watch::Sender<Head>,
    files: RwLock<Files>,
    index: RwLock<Index>,
    log_dir: PathBuf,
    db_file: PathBuf,
    /// Set once a commit failed or the writer died; the store then refuses writes.
    failure: watch::Sender<Option<StoreError>>,
    /// Makes the next commit fail (fault injection for tests).
    inject_failure: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn fail(&self, e: StoreError) {
        self.failure.send_if_modified(|f| {
            if f.is_none() {
                *f = Some(e);
                true
            } else {
                false
            }
        });
    }
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

pub(crate) fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

pub(crate) fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// How long an open waits for a sled database's file lock that this process still holds.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a sled database. A handle dropped just before in this same process (a store or vault
/// closed and reopened) can hold the file lock a little longer: sled's own I/O threads let go
/// of the file after the handle. So a lock held elsewhere is waited for, up to
/// [`SLED_LOCK_WAIT`], before the open fails naming the directory.
pub(crate) fn open_sled(config: sled::Config, dir: &Path) -> Result<sled::Db, StoreError> {
    open_sled_waiting(config, dir, SLED_LOCK_WAIT)
}

pub(crate) fn open_sled_waiting(
    config: sled::Config,
    dir: &Path,
    wait: std::time::Duration,
) -> Result<sled::Db, StoreError> {
    // sled reports a lock held elsewhere as an `Other` I/O error with this message.
    let locked = |e: &sled::Error| matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"));
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match config.open() {
            Err(e) if locked(&e) && start.elapsed() < wait => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) if locked(&e) => {
                return Err(StoreError::Storage(format!(
                    "{} is open in another process or handle (its lock was not released in \
                     {} ms): {e}",
                    dir.display(),
                    wait.as_millis()
                )));
            }
            other => return other.map_err(storage),
        }
    }
}

/// The log's files as a reader sees them: each with its committed length.
type Snapshot = Vec<(Arc<LogFile>, u64)>;

/// Calls `visit(seq, record bytes)` for each record from `from` to `last` (inclusive) of the
/// files in `snapshot`, starting at the directory entry `start`, until it returns false.
fn scan(
    snapshot: &Snapshot,
    start: DirEntry,
    from: u64,
    last: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut seq = start.seq;
    let chunk = if last - from < 64 {
        32 * 1024
    } else {
        256 * 1024
    };
    for (i, (f, len)) in snapshot.iter().enumerate().skip(start.file as usize) {
        let offset = if i == start.file as usize {
            start.offset
        } else {
            0
        };
        let mut reader = FrameReader::new(f, offset, *len, chunk);
        while let Some(frame) = reader.next_frame()? {
            match frame {
                Frame::Header(h) => {
                    if be_u64(&h[4..12]) != seq {
                        return Err(StoreError::Corrupt {
                            seq,
                            reason: format!(
                                "{}: a commit starts at event {}, expected {seq}",
                                f.path.display(),
                                be_u64(&h[4..12])
                            ),
                        });
                    }
                }
                Frame::Record(bytes) => {
                    if seq >= from && !visit(seq, bytes)? {
                        return Ok(());
                    }
                    seq += 1;
                    if seq > last {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// The record `seq`, read from `snapshot` starting at the directory entry `start`.
fn record_in(
    snapshot: &Snapshot,
    start: DirEntry,
    seq: u64,
) -> Result<Option<RecordedEvent>, StoreError> {
    let mut found = None;
    scan(snapshot, start, seq, seq, |seq, bytes| {
        found = Some(record::decode(seq, bytes)?);
        Ok(false)
    })?;
    Ok(found)
}

/// Splits a sled segment (the log's format before it moved to files) into its records' bytes.
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

/// Builds a commit: room for its header, then record frames. Returns the bytes to write once
/// [`seal_commit`] filled the header.
fn new_commit(capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + capacity);
    buf.resize(HEADER_LEN, 0);
    buf
}

fn seal_commit(buf: &mut [u8], first_seq: u64, count: u32) {
    let header = log::header(first_seq, count, &buf[HEADER_LEN..]);
    buf[..HEADER_LEN].copy_from_slice(&header);
}

/// Moves a store whose records are in sled (before the log had its own files) into log files:
/// written to `log.migrating/`, made durable, renamed to `log/`, then removed from sled.
fn migrate_from_sled(
    dir: &Path,
    meta: &sled::Tree,
    log_dir: &Path,
    config: &StoreConfig,
) -> Result<(), StoreError> {
    let segments = || meta.range(key(K_SEGMENT, &0u64.to_be_bytes())..key(K_SEGMENT + 1, &[]));
    if segments().next().is_none() {
        return Ok(());
    }
    // `log/` appears complete (by rename) or not at all; one without log files holds nothing
    // of sled's records, so the move starts over rather than dropping them.
    if log_dir.exists() && log::list(log_dir)?.is_empty() {
        std::fs::remove_dir_all(log_dir).map_err(storage)?;
    }
    if !log_dir.exists() {
        let tmp = dir.join("log.migrating");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(storage)?;
        }
        std::fs::create_dir_all(&tmp).map_err(storage)?;
        let head = meta
            .get([K_HEAD])
            .map_err(storage)?
            .filter(|v| v.len() == 8 + HASH_LEN)
            .map(|v| be_u64(&v));
        let started = std::time::Instant::now();
        let mut next = 1u64;
        let mut out: Option<(File, u64)> = None;
        for kv in segments() {
            let (k, v) = kv.map_err(storage)?;
            let first = be_u64(&k[1..]);
            if first != next {
                return Err(StoreError::Corrupt {
                    seq: next,
                    reason: format!("the log jumps from {} to {first}", next - 1),
                });
            }
            let records = split_segment(first, &v)?;
            let mut buf = new_commit(v.len());
            for bytes in &records {
                buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                buf.extend_from_slice(bytes);
            }
            seal_commit(&mut buf, first, records.len() as u32);
            let roll = out
                .as_ref()
                .is_none_or(|(_, len)| *len > 0 && len + buf.len() as u64 > config.log_file_bytes);
            if roll {
                if let Some((f, _)) = out.take() {
                    f.sync_data().map_err(storage)?;
                }
                let path = tmp.join(log::file_name(first));
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(storage)?;
                out = Some((f, 0));
            }
            let (f, len) = out.as_mut().expect("a file");
            f.write_all_at(&buf, *len).map_err(storage)?;
            *len += buf.len() as u64;
            next = first + records.len() as u64;
        }
        if let Some((f, _)) = out.take() {
            f.sync_data().map_err(storage)?;
        }
        if head.is_some_and(|h| h != next - 1) {
            return Err(StoreError::Corrupt {
                seq: next - 1,
                reason: format!(
                    "the head says {} but the log ends at {}",
                    head.unwrap_or(0),
                    next - 1
                ),
            });
        }
        log::sync_dir(&tmp)?;
        std::fs::rename(&tmp, log_dir).map_err(storage)?;
        log::sync_dir(dir)?;
        tracing::info!(
            dir = %dir.display(),
            events = next - 1,
            seconds = started.elapsed().as_secs_f64(),
            "moved the log out of sled into log files"
        );
    }
    // The records are in log files now (this run or an interrupted earlier one): drop sled's copy.
    let mut batch = sled::Batch::default();
    let mut any = false;
    for k in segments().keys() {
        batch.remove(k.map_err(storage)?);
        any = true;
    }
    if any {
        batch.remove(vec![K_HEAD]);
        meta.apply_batch(batch).map_err(storage)?;
        meta.flush().map_err(storage)?;
    }
    Ok(())
}

/// What opening the store rebuilds while it reads the log after the checkpoint.
struct OpenReplay<'a> {
    index: Index,
    files: Files,
    next_run: u64,
    log_dir: &'a Path,
    config: &'a StoreConfig,
    last: Option<([u8; HASH_LEN], i64)>,
}

impl log::Replay for OpenReplay<'_> {
    fn record(&mut self, seq: u64, file: u32, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let rec = record::decode(seq, bytes)?;
        if rec.seq != seq {
            return Err(StoreError::Corrupt {
                seq,
                reason: format!("the record at this position names event {}", rec.seq),
            });
        }
        self.index.add(
            id_digest(&rec.scope, &rec.event_id),
            stream_key(&rec.stream),
            rec.stream_version,
            seq,
        );
        self.files.note(seq, file, offset);
        self.last = Some((rec.hash, rec.recorded_at_micros));
        Ok(())
    }

    fn committed(&mut self, next_seq: u64, file: u32, end: u64) -> Result<(), StoreError> {
        if self.index.mem.events < self.config.index_memtable_events {
            return Ok(());
        }
        let mem = std::mem::take(&mut self.index.mem);
        let covered = Covered {
            seq: next_seq - 1,
            next: DirEntry {
                seq: next_seq,
                file,
                offset: end,
            },
        };
        let (runs, next_run) = index::checkpoint(
            self.log_dir,
            &mem,
            &self.index.runs,
            self.next_run,
            covered,
            &self.files.directory,
            self.config.fsync,
        )?;
        self.index.runs = runs;
        self.next_run = next_run;
        Ok(())
    }
}

impl EventStore {
    /// Opens (or creates) the store in `dir`: loads the index checkpoint, reads the log after
    /// it (cutting a torn last commit), and starts the writer and indexer threads.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<EventStore, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(storage)?;
        let db = open_sled(
            sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                .segment_size(sled_segment_size(dir))
                .cache_capacity(config.cache_bytes),
            dir,
        )?;
        let meta = db.open_tree("log").map_err(storage)?;
        let log_dir = dir.join("log");
        migrate_from_sled(dir, &meta, &log_dir, &config)?;
        if !log_dir.exists() {
            std::fs::create_dir_all(&log_dir).map_err(storage)?;
            if config.fsync {
                log::sync_dir(dir)?;
            }
        }
        let mut files = log::list(&log_dir)?;
        if files.is_empty() {
            files.push(log::create(&log_dir, 1, config.fsync)?);
        }
        let checkpoint = match index::load(&log_dir)? {
            Some(m) => {
                let fits = |e: &DirEntry| {
                    files
                        .get(e.file as usize)
                        .is_some_and(|f| f.file.metadata().is_ok_and(|md| md.len() >= e.offset))
                };
                if fits(&m.covered.next) && m.directory.iter().all(fits) {
                    Some(m)
                } else if config.fsync {
                    // A checkpoint covers only fdatasynced commits: the log lost some.
                    return Err(StoreError::Corrupt {
                        seq: m.covered.seq,
                        reason: format!(
                            "the index checkpoint covers events up to {} but the log files in \
                             {} end before them; events acknowledged earlier are missing (to \
                             open what is left, remove log/MANIFEST)",
                            m.covered.seq,
                            log_dir.display()
                        ),
                    });
                } else {
                    tracing::warn!(
                        "the index checkpoint reaches past the log (written without fsync); \
                         rebuilding it from the log"
                    );
                    None
                }
            }
            None => None,
        };
        let from_scratch = DirEntry {
            seq: 1,
            file: 0,
            offset: 0,
        };
        let (start, runs, directory, next_run) = match checkpoint {
            Some(m) => (m.covered.next, m.runs, m.directory, m.next_run),
            None => (from_scratch, Vec::new(), Vec::new(), 1),
        };
        let mut replay = OpenReplay {
            index: Index {
                runs,
                ..Index::default()
            },
            files: Files {
                files: Vec::new(),
                directory,
            },
            next_run,
            log_dir: &log_dir,
            config: &config,
            last: None,
        };
        let started = std::time::Instant::now();
        let recovered = log::recover(&files, start, config.fsync, &mut replay)?;
        let OpenReplay {
            index,
            files: mut file_set,
            next_run,
            last,
            ..
        } = replay;
        file_set.files = files.into_iter().zip(recovered.lengths).collect();
        tracing::debug!(
            replayed = recovered.next_seq - start.seq,
            seconds = started.elapsed().as_secs_f64(),
            "read the log after the index checkpoint"
        );
        let head_seq = recovered.next_seq - 1;
        let (head_hash, last_recorded_at) = match last {
            Some(l) => l,
            None if head_seq == 0 => (GENESIS_HASH, i64::MIN),
            None => record_in(&file_set.files, file_set.start_for(head_seq), head_seq)?
                .map(|rec| (rec.hash, rec.recorded_at_micros))
                .ok_or_else(|| StoreError::Corrupt {
                    seq: head_seq,
                    reason: "the last event cannot be read".into(),
                })?,
        };
        let head = Head {
            seq: head_seq,
            hash: head_hash,
        };
        let (head_tx, _) = watch::channel(head);
        let shared = Arc::new(Shared {
            db,
            meta,
            head: head_tx,
            files: RwLock::new(file_set),
            index: RwLock::new(index),
            log_dir,
            db_file: dir.join("db"),
            failure: watch::channel(None).0,
            inject_failure: Default::default(),
        });
        let (tx, rx) = mpsc::channel(1024);
        let writer = Writer::new(shared.clone(), config, last_recorded_at, next_run)?;
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("event-store-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| writer.run(rx));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("the event store's writer panicked; the store refuses writes");
                    writer_shared.fail(StoreError::Storage(
                        "the writer thread panicked; restart the service to recover".into(),
                    ));
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
        let total: usize = events.iter().map(|e| 4 + e.stored_len()).sum();
        if total > MAX_APPEND_BYTES {
            return Err(StoreError::Invalid(format!(
                "an append of {total} bytes is more than the {MAX_APPEND_BYTES} one may hold; \
                 split it"
            )));
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
        visit: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        EventStore::scan_shared(&self.shared, from, last, visit)
    }

    fn scan_shared(
        shared: &Shared,
        from: u64,
        last: u64,
        visit: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        if from > last {
            return Ok(());
        }
        // A snapshot, so that a long read never holds up the writer.
        let (snapshot, start) = {
            let files = shared.files.read().unwrap_or_else(|p| p.into_inner());
            (files.files.clone(), files.start_for(from))
        };
        scan(&snapshot, start, from, last, visit)
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

    /// Like [`EventStore::read`], but stops after the record that brings the bytes read to
    /// `max_bytes` (so at least one event when any is committed): bounds a batch's memory
    /// whatever the events' sizes.
    pub(crate) fn read_bounded(
        &self,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let from = from.max(1);
        let head = self.head().seq;
        if from > head || limit == 0 {
            return Ok(Vec::new());
        }
        let last = head.min(from.saturating_add(limit as u64 - 1));
        let mut out = Vec::new();
        let mut read = 0;
        self.scan_records(from, last, |seq, bytes| {
            out.push(record::decode(seq, bytes)?);
            read += bytes.len();
            Ok(read < max_bytes)
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
        let seqs = self
            .index()
            .stream_events(&stream_key(stream), from_version.max(1), limit)?;
        let mut out = Vec::with_capacity(seqs.len());
        for (_, seq) in seqs {
            match EventStore::read_one(&self.shared, seq)? {
                // A 128-bit digest collision is not expected; the name check makes it harmless.
                Some(rec) if rec.stream == stream => out.push(rec),
                Some(_) => {}
                None => {
                    return Err(StoreError::Corrupt {
                        seq,
                        reason: format!("the index places an event of {stream:?} here"),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The last version of a stream (0 when it does not exist).
    pub fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        self.index().stream_version(&stream_key(stream))
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
        let mut bad: Option<(u64, String)> = None;
        let mut checked = 0u64;
        let scanned = self.scan_records(from, to, |seq, bytes| {
            let reason = if !record::check_hash(bytes) {
                Some("hash does not match the record's bytes".to_owned())
            } else {
                match record::decode(seq, bytes) {
                    Err(e) => Some(e.to_string()),
                    Ok(rec) if rec.seq != seq => {
                        Some("record names another sequence number".to_owned())
                    }
                    Ok(rec) if rec.prev_hash != prev => {
                        Some("prev_hash does not match the previous record's hash".to_owned())
                    }
                    Ok(rec) => {
                        prev = rec.hash;
                        None
                    }
                }
            };
            match reason {
                Some(r) => {
                    bad = Some((seq, r));
                    Ok(false)
                }
                None => {
                    checked += 1;
                    Ok(true)
                }
            }
        });
        report.events_checked = checked;
        if let Err(e) = scanned {
            bad = Some((from + checked, e.to_string()));
        }
        if bad.is_none() && checked < to - from + 1 {
            bad = Some((from + checked, "events are missing from the log".to_owned()));
        }
        if bad.is_none() && to == head.seq && prev != head.hash {
            bad = Some((
                to,
                "the head hash does not match the last record".to_owned(),
            ));
        }
        report.first_bad = bad;
        Ok(report)
    }

    /// Reads a metadata value (e.g. a relay cursor).
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .shared
            .meta
            .get(key(K_META, name.as_bytes()))
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    /// Writes a metadata value durably (flushed and fdatasynced, like a commit).
    pub async fn set_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let shared = self.shared.clone();
        let (key, value) = (key(K_META, name.as_bytes()), value.to_vec());
        tokio::task::spawn_blocking(move || {
            shared.meta.insert(key, value).map_err(storage)?;
            shared.db.flush().map_err(storage)?;
            File::open(&shared.db_file)
                .and_then(|f| f.sync_data())
                .map_err(storage)
        })
        .await
        .map_err(storage)?
    }

    /// Where the projections' views keep their files (beside the log).
    pub(crate) fn views_dir(&self) -> PathBuf {
        self.shared
            .log_dir
            .parent()
            .unwrap_or(&self.shared.log_dir)
            .join("views")
    }

    /// Waits until every earlier write is durable (used at shutdown): the log's commits are
    /// already; this flushes sled's metadata. Refused after a failure.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        self.shared.db.flush_async().await.map_err(storage)?;
        Ok(())
    }

    /// Overwrites one byte of a stored record and mends its commit's checksum, as an attacker
    /// with disk access would. Exists only to prove that tampering is caught.
    #[cfg(any(test, feature = "tamper"))]
    pub fn tamper_flip_byte(&self, seq: u64, index: usize) -> Result<(), StoreError> {
        let snapshot = self
            .shared
            .files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .files
            .clone();
        for (f, len) in &snapshot {
            let mut reader = FrameReader::sequential(f, 0, *len);
            while reader.remaining() > 0 {
                let at = reader.offset();
                let h = reader
                    .peek(HEADER_LEN)?
                    .and_then(log::parse_header)
                    .ok_or_else(|| StoreError::Invalid(format!("no commit at {at}")))?;
                reader.skip(HEADER_LEN);
                if (h.first_seq..h.first_seq + h.count as u64).contains(&seq) {
                    let mut commit = new_commit(h.body_len as usize);
                    commit.extend_from_slice(reader.peek(h.body_len as usize)?.expect("whole"));
                    let mut pos = HEADER_LEN;
                    for _ in h.first_seq..seq {
                        pos += 4 + log::record_at(&commit, pos).expect("a record").len();
                    }
                    let len = log::record_at(&commit, pos).expect("a record").len();
                    commit[pos + 4 + index % len] ^= 0x01;
                    seal_commit(&mut commit, h.first_seq, h.count);
                    let w = OpenOptions::new()
                        .write(true)
                        .open(&f.path)
                        .map_err(storage)?;
                    w.write_all_at(&commit, at).map_err(storage)?;
                    return w.sync_data().map_err(storage);
                }
                reader.skip(h.body_len as usize);
            }
        }
        Err(StoreError::Invalid(format!("no event {seq}")))
    }
}

/// A checkpoint for the indexer thread to write.
struct CheckpointJob {
    frozen: Arc<MemTable>,
    covered: Covered,
    directory: Vec<DirEntry>,
}

/// Writes index checkpoints in the background, so that the writer never waits for one.
fn run_indexer(
    shared: Arc<Shared>,
    jobs: std::sync::mpsc::Receiver<CheckpointJob>,
    mut next_run: u64,
    sync: bool,
) {
    for job in jobs {
        let runs: Vec<Arc<Run>> = shared
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .runs
            .clone();
        match index::checkpoint(
            &shared.log_dir,
            &job.frozen,
            &runs,
            next_run,
            job.covered,
            &job.directory,
            sync,
        ) {
            Ok((runs, next)) => {
                next_run = next;
                let mut index = shared.index.write().unwrap_or_else(|p| p.into_inner());
                index.runs = runs;
                index.frozen = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "writing the index checkpoint failed; the store refuses writes until restarted");
                shared.fail(StoreError::Storage(format!(
                    "writing the index checkpoint failed ({e}); restart the service to recover"
                )));
                return;
            }
        }
    }
}

/// The single committer of one store.
struct Writer {
    shared: Arc<Shared>,
    config: StoreConfig,
    head: Head,
    last_recorded_at: i64,
    /// The last log file, open for writing: its index and committed length.
    out: File,
    out_file: u32,
    out_len: u64,
    indexer: Option<(
        std::sync::mpsc::Sender<CheckpointJob>,
        std::thread::JoinHandle<()>,
    )>,
    /// Set when a commit failed: the writer then refuses everything (fail-stop), because part
    /// of the commit may be in the file. A restart recovers.
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
                "this store was created with small sled segments: large view values may land \
                 in blobs/ files that are not fsynced; rebuild the views in a new data directory"
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

/// Records staged by one group commit.
struct Staging {
    /// The commit's bytes: room for the header, then record frames.
    bytes: Vec<u8>,
    first_seq: u64,
    count: u32,
    /// (id digest, stream key, version, seq, frame offset in `bytes`) to index once durable.
    added: Vec<([u8; 16], index::StreamKey, u64, u64, usize)>,
    ids: HashMap<[u8; 16], Known>,
    versions: HashMap<String, u64>,
}

impl Writer {
    fn new(
        shared: Arc<Shared>,
        config: StoreConfig,
        last_recorded_at: i64,
        next_run: u64,
    ) -> Result<Writer, StoreError> {
        let head = *shared.head.borrow();
        let (path, out_file, out_len) = {
            let files = shared.files.read().unwrap_or_else(|p| p.into_inner());
            let (f, len) = files.files.last().expect("the store has a log file");
            (f.path.clone(), files.files.len() as u32 - 1, *len)
        };
        let out = OpenOptions::new().write(true).open(path).map_err(storage)?;
        let (jobs, rx) = std::sync::mpsc::channel();
        let indexer_shared = shared.clone();
        let sync = config.fsync;
        let indexer = std::thread::Builder::new()
            .name("event-store-indexer".into())
            .spawn(move || run_indexer(indexer_shared, rx, next_run, sync))
            .map_err(storage)?;
        Ok(Writer {
            shared,
            config,
            head,
            last_recorded_at,
            out,
            out_file,
            out_len,
            indexer: Some((jobs, indexer)),
            failed: None,
        })
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
        if let Some((jobs, thread)) = self.indexer.take() {
            drop(jobs);
            let _ = thread.join();
        }
    }

    fn commit(&mut self, requests: Vec<AppendRequest>) {
        if self.failed.is_none()
            && let Some(e) = self.shared.failure.borrow().clone()
        {
            self.failed = Some(e);
        }
        if let Some(e) = &self.failed {
            for req in requests {
                let _ = req.reply.send(Err(e.clone()));
            }
            return;
        }
        let start_head = self.head;
        let capacity = requests
            .iter()
            .flat_map(|r| &r.events)
            .map(|e| 4 + e.stored_len())
            .sum();
        let mut staging = Staging {
            bytes: new_commit(capacity),
            first_seq: self.head.seq + 1,
            count: 0,
            added: Vec::new(),
            ids: HashMap::new(),
            versions: HashMap::new(),
        };
        let now = (self.config.clock)().max(self.last_recorded_at);
        let outcomes: Vec<Staged> = requests
            .iter()
            .map(|req| match self.stage(req, now, &mut staging) {
                Ok(p) => Staged::Appended(p),
                Err(e) => Staged::Failed(e),
            })
            .collect();
        let result = if staging.count == 0 {
            Ok(())
        } else {
            self.durable_write(&mut staging)
        };
        match result {
            Ok(()) => {
                if staging.count > 0 {
                    self.publish(&staging);
                    self.last_recorded_at = now;
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
                self.shared.fail(failed);
                for req in requests {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Writes a staged commit to the log file (starting a new file when this one is full) and
    /// makes it durable.
    fn durable_write(&mut self, staging: &mut Staging) -> Result<(), StoreError> {
        if self
            .shared
            .inject_failure
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Storage("injected commit failure".into()));
        }
        seal_commit(&mut staging.bytes, staging.first_seq, staging.count);
        let size = staging.bytes.len() as u64;
        if self.out_len > 0 && self.out_len + size > self.config.log_file_bytes {
            let next = log::create(&self.shared.log_dir, staging.first_seq, self.config.fsync)?;
            self.out = OpenOptions::new()
                .write(true)
                .open(&next.path)
                .map_err(storage)?;
            self.shared
                .files
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .files
                .push((next, 0));
            self.out_file += 1;
            self.out_len = 0;
        }
        self.out
            .write_all_at(&staging.bytes, self.out_len)
            .map_err(storage)?;
        if self.config.fsync {
            self.out.sync_data().map_err(storage)?;
        }
        Ok(())
    }

    /// Makes a durable commit visible: the files' committed length and directory, the index,
    /// the head; and hands the index's memory table to the indexer when it is full.
    fn publish(&mut self, staging: &Staging) {
        let at = self.out_len;
        self.out_len += staging.bytes.len() as u64;
        let directory = {
            let mut files = self.shared.files.write().unwrap_or_else(|p| p.into_inner());
            if let Some(last) = files.files.last_mut() {
                last.1 = self.out_len;
            }
            files.note(staging.first_seq, self.out_file, at);
            for (_, _, _, seq, offset) in &staging.added {
                files.note(*seq, self.out_file, at + *offset as u64);
            }
            let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
            for (id, stream, version, seq, _) in &staging.added {
                index.add(*id, *stream, *version, *seq);
            }
            let full = index.mem.events >= self.config.index_memtable_events
                && index.frozen.is_none()
                && self.indexer.is_some();
            full.then(|| {
                let frozen = Arc::new(std::mem::take(&mut index.mem));
                index.frozen = Some(frozen.clone());
                (frozen, files.directory.clone())
            })
        };
        self.shared.head.send_replace(self.head);
        if let Some((frozen, directory)) = directory
            && let Some((jobs, _)) = &self.indexer
        {
            let job = CheckpointJob {
                frozen,
                covered: Covered {
                    seq: self.head.seq,
                    next: DirEntry {
                        seq: self.head.seq + 1,
                        file: self.out_file,
                        offset: self.out_len,
                    },
                },
                directory,
            };
            if jobs.send(job).is_err() {
                // The indexer stopped after a failure it already reported.
                self.indexer = None;
            }
        }
    }

    /// Stages one request into the commit, or refuses it whole.
    fn stage(
        &mut self,
        req: &AppendRequest,
        now: i64,
        staging: &mut Staging,
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
            .map(|(e, d)| self.lookup_id(e, *d, staging))
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
            let actual = self.current_version(stream, staging)?;
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
        // Every fallible lookup comes before anything is staged, so that a request is staged
        // whole or not at all.
        let mut base: HashMap<&str, u64> = HashMap::new();
        for e in &req.events {
            if !base.contains_key(e.stream.as_str()) {
                base.insert(&e.stream, self.current_version(&e.stream, staging)?);
            }
        }
        let mut positions = Vec::with_capacity(req.events.len());
        for ((e, known), digest) in req.events.iter().zip(known).zip(digests) {
            if let Some(k) = known.or_else(|| staging.ids.get(&digest).copied()) {
                positions.push(Position {
                    duplicate: true,
                    ..k.position
                });
                continue;
            }
            let version = staging
                .versions
                .get(&e.stream)
                .copied()
                .unwrap_or(base[e.stream.as_str()])
                + 1;
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
            let offset = staging.bytes.len();
            staging
                .bytes
                .extend_from_slice(&(record.len() as u32).to_be_bytes());
            let hash = record.encode_into(&mut staging.bytes);
            staging.count += 1;
            staging
                .added
                .push((digest, stream_key(&e.stream), version, seq, offset));
            self.head = Head { seq, hash };
            match staging.versions.get_mut(&e.stream) {
                Some(v) => *v = version,
                None => {
                    staging.versions.insert(e.stream.clone(), version);
                }
            }
            let p = Position {
                seq,
                stream_version: version,
                duplicate: false,
            };
            staging.ids.insert(
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
        staging: &Staging,
    ) -> Result<Option<Known>, StoreError> {
        let known = match staging.ids.get(&digest) {
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

    fn current_version(&self, stream: &str, staging: &Staging) -> Result<u64, StoreError> {
        if let Some(v) = staging.versions.get(stream) {
            return Ok(*v);
        }
        let index = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
        index.stream_version(&stream_key(stream))
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
            index.id(&digest)?
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

    /// Reads one committed record (for the writer, which has no handle).
    fn read_one(shared: &Shared, seq: u64) -> Result<Option<RecordedEvent>, StoreError> {
        let (snapshot, start) = {
            let files = shared.files.read().unwrap_or_else(|p| p.into_inner());
            (files.files.clone(), files.start_for(seq))
        };
        record_in(&snapshot, start, seq)
    }
}
