//! The event log: a single writer thread per store assigns gap-free sequence numbers, checks
//! expected versions and idempotency, and group-commits many appends as one atomic sled batch
//! followed by one `flush` and one `fdatasync` of the database file.
//!
//! Key layout in the `log` tree (all integers big-endian):
//! `e seq` → record · `i event_id` → seq · `s stream 0x00 version` → seq · `v stream` → version
//! · `h` → head seq + head hash · `m name` → metadata (e.g. the outbox cursor).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::StoreError;
use crate::record::{self, GENESIS_HASH, HASH_LEN, RecordedEvent, Unsealed};

/// An event to append. `event_id` is the idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: String,
    /// The stream (aggregate) it belongs to, e.g. `acme/u-1`; must not contain NUL.
    pub stream: String,
    pub event_type: String,
    pub data: Vec<u8>,
    /// Whether the outbox relay publishes it (a domain event).
    pub publish: bool,
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
}

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
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("max_batch_events", &self.max_batch_events)
            .field("fsync", &self.fsync)
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

pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    pub(crate) log: sled::Tree,
    pub(crate) head: watch::Sender<Head>,
    db_file: PathBuf,
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

const K_EVENT: u8 = b'e';
const K_ID: u8 = b'i';
const K_STREAM: u8 = b's';
const K_VERSION: u8 = b'v';
const K_HEAD: u8 = b'h';
const K_META: u8 = b'm';

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn event_key(seq: u64) -> Vec<u8> {
    key(K_EVENT, &seq.to_be_bytes())
}

fn stream_key(stream: &str, version: u64) -> Vec<u8> {
    let mut k = key(K_STREAM, stream.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

pub(crate) fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

impl EventStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<EventStore, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(storage)?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
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
        let (head_tx, _) = watch::channel(head);
        let shared = Arc::new(Shared {
            db,
            log,
            head: head_tx,
            db_file: dir.join("db"),
        });
        let (tx, rx) = mpsc::channel(1024);
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("event-store-writer".into())
            .spawn(move || Writer::new(writer_shared, config).run(rx))
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
        if events.is_empty() {
            return Ok(Vec::new());
        }
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
        }
        if expected != ExpectedVersion::Any && events.iter().any(|e| e.stream != events[0].stream) {
            return Err(StoreError::Invalid(
                "an append with an expected version must target one stream".into(),
            ));
        }
        let (reply, rx) = oneshot::channel();
        let tx = self.writer.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(AppendRequest {
            events,
            expected,
            reply,
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The committed head.
    pub fn head(&self) -> Head {
        *self.shared.head.borrow()
    }

    /// A receiver that changes whenever the head moves.
    pub fn watch_head(&self) -> watch::Receiver<Head> {
        self.shared.head.subscribe()
    }

    /// Events with `seq >= from`, at most `limit`, in order.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.shared
            .log
            .range(event_key(from.max(1))..key(K_EVENT + 1, &[]))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(storage)?;
                record::decode(be_u64(&k[1..]), &v)
            })
            .collect()
    }

    /// One event by sequence number.
    pub fn get(&self, seq: u64) -> Result<Option<RecordedEvent>, StoreError> {
        match self.shared.log.get(event_key(seq)).map_err(storage)? {
            Some(v) => Ok(Some(record::decode(seq, &v)?)),
            None => Ok(None),
        }
    }

    /// Events of one stream with `stream_version >= from_version`, at most `limit`.
    pub fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut end = key(K_STREAM, stream.as_bytes());
        end.push(1);
        self.shared
            .log
            .range(stream_key(stream, from_version.max(1))..end)
            .take(limit)
            .map(|kv| {
                let (_, seq) = kv.map_err(storage)?;
                let seq = be_u64(&seq);
                self.get(seq)?.ok_or_else(|| StoreError::Corrupt {
                    seq,
                    reason: format!("stream index of {stream:?} points to a missing event"),
                })
            })
            .collect()
    }

    /// The last version of a stream (0 when it does not exist).
    pub fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        Ok(self
            .shared
            .log
            .get(key(K_VERSION, stream.as_bytes()))
            .map_err(storage)?
            .map_or(0, |v| be_u64(&v)))
    }

    /// The sequence number an event id was stored at.
    pub fn position_of(&self, event_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .shared
            .log
            .get(key(K_ID, event_id.as_bytes()))
            .map_err(storage)?
            .map(|v| be_u64(&v)))
    }

    /// Recomputes the chain over `from..=to` (0 = head) and names the first bad record.
    pub fn verify(&self, from: u64, to: u64) -> Result<VerifyReport, StoreError> {
        let head = self.head();
        let to = if to == 0 { head.seq } else { to.min(head.seq) };
        let from = from.max(1);
        let mut prev = if from == 1 {
            GENESIS_HASH
        } else {
            match self.shared.log.get(event_key(from - 1)).map_err(storage)? {
                Some(v) => record::decode(from - 1, &v)?.hash,
                None => GENESIS_HASH,
            }
        };
        let mut expected_seq = from;
        let mut checked = 0;
        let bad = |checked: u64, seq: u64, reason: &str| VerifyReport {
            events_checked: checked,
            first_bad: Some((seq, reason.to_owned())),
            head,
        };
        for kv in self
            .shared
            .log
            .range(event_key(from)..=event_key(to.max(from)))
        {
            let (k, v) = kv.map_err(storage)?;
            let seq = be_u64(&k[1..]);
            if seq > to {
                break;
            }
            if seq != expected_seq {
                return Ok(bad(checked, expected_seq, "event is missing from the log"));
            }
            if !record::check_hash(&v) {
                return Ok(bad(checked, seq, "hash does not match the record's bytes"));
            }
            let rec = match record::decode(seq, &v) {
                Ok(rec) => rec,
                Err(e) => return Ok(bad(checked, seq, &e.to_string())),
            };
            if rec.seq != seq {
                return Ok(bad(checked, seq, "record names another sequence number"));
            }
            if rec.prev_hash != prev {
                return Ok(bad(
                    checked,
                    seq,
                    "prev_hash does not match the previous record's hash",
                ));
            }
            prev = rec.hash;
            expected_seq += 1;
            checked += 1;
        }
        if to >= from && expected_seq != to + 1 {
            return Ok(bad(checked, expected_seq, "event is missing from the log"));
        }
        if to == head.seq && to >= from && prev != head.hash {
            return Ok(bad(
                checked,
                to,
                "the head hash does not match the last record",
            ));
        }
        Ok(VerifyReport {
            events_checked: checked,
            first_bad: None,
            head,
        })
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

    /// Writes a metadata value durably.
    pub async fn set_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.shared
            .log
            .insert(key(K_META, name.as_bytes()), value)
            .map_err(storage)?;
        self.shared.db.flush_async().await.map_err(storage)?;
        Ok(())
    }

    /// Waits until every earlier write is durable (used at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.shared.db.flush_async().await.map_err(storage)?;
        Ok(())
    }

    /// Overwrites one byte of a stored record. Exists only to prove that tampering is caught.
    #[cfg(feature = "tamper")]
    pub fn tamper_flip_byte(&self, seq: u64, index: usize) -> Result<(), StoreError> {
        let v = self
            .shared
            .log
            .get(event_key(seq))
            .map_err(storage)?
            .ok_or_else(|| StoreError::Invalid(format!("no event {seq}")))?;
        let mut bytes = v.to_vec();
        let i = index % bytes.len();
        bytes[i] ^= 0x01;
        self.shared
            .log
            .insert(event_key(seq), bytes)
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

/// What one request staged into the batch.
enum Staged {
    Appended(Vec<Position>),
    Failed(StoreError),
}

impl Writer {
    fn new(shared: Arc<Shared>, config: StoreConfig) -> Writer {
        let head = *shared.head.borrow();
        let last_recorded_at = shared
            .log
            .get(event_key(head.seq))
            .ok()
            .flatten()
            .and_then(|v| record::decode(head.seq, &v).ok())
            .map_or(i64::MIN, |r| r.recorded_at_micros);
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
        let _ = self.shared.db.flush();
    }

    fn commit(&mut self, requests: Vec<AppendRequest>) {
        if let Some(e) = &self.failed {
            for req in requests {
                let _ = req.reply.send(Err(e.clone()));
            }
            return;
        }
        let start_head = self.head;
        let mut batch = sled::Batch::default();
        // Within one group commit, ids and stream versions staged by earlier requests.
        let mut staged_ids: HashMap<String, Position> = HashMap::new();
        let mut staged_versions: HashMap<String, u64> = HashMap::new();
        let mut outcomes = Vec::with_capacity(requests.len());
        let now = (self.config.clock)().max(self.last_recorded_at);
        for req in &requests {
            let outcome =
                match self.stage(req, now, &mut batch, &mut staged_ids, &mut staged_versions) {
                    Ok(p) => Staged::Appended(p),
                    Err(e) => Staged::Failed(e),
                };
            outcomes.push(outcome);
        }
        let result = if self.head.seq == start_head.seq {
            Ok(())
        } else {
            let mut h = self.head.seq.to_be_bytes().to_vec();
            h.extend_from_slice(&self.head.hash);
            batch.insert(vec![K_HEAD], h);
            self.durable_apply(batch)
        };
        match result {
            Ok(()) => {
                if self.head.seq != start_head.seq {
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
                self.failed = Some(StoreError::Storage(format!(
                    "an earlier commit failed ({e}); restart the service to recover"
                )));
                for req in requests {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn durable_apply(&mut self, batch: sled::Batch) -> Result<(), StoreError> {
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

    fn stage(
        &mut self,
        req: &AppendRequest,
        now: i64,
        batch: &mut sled::Batch,
        staged_ids: &mut HashMap<String, Position>,
        staged_versions: &mut HashMap<String, u64>,
    ) -> Result<Vec<Position>, StoreError> {
        // First pass: which events are new, and does the expectation hold?
        let mut known = Vec::with_capacity(req.events.len());
        for e in &req.events {
            known.push(self.lookup_id(&e.event_id, staged_ids)?);
        }
        if known.iter().all(Option::is_some) {
            return Ok(known.into_iter().flatten().collect());
        }
        if req.expected != ExpectedVersion::Any {
            let stream = &req.events[0].stream;
            let actual = self.current_version(stream, staged_versions)?;
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
        // Second pass: stage the new ones; an id repeated inside the request is a duplicate.
        let mut positions = Vec::with_capacity(req.events.len());
        for (e, known) in req.events.iter().zip(known) {
            if let Some(p) = known.or_else(|| staged_ids.get(&e.event_id).copied()) {
                positions.push(Position {
                    duplicate: true,
                    ..p
                });
                continue;
            }
            let version = self.current_version(&e.stream, staged_versions)? + 1;
            let seq = self.head.seq + 1;
            let (bytes, hash) = Unsealed {
                seq,
                stream_version: version,
                recorded_at_micros: now,
                flags: if e.publish { record::FLAG_PUBLISH } else { 0 },
                prev_hash: self.head.hash,
                stream: &e.stream,
                event_id: &e.event_id,
                event_type: &e.event_type,
                data: &e.data,
            }
            .encode();
            batch.insert(event_key(seq), bytes);
            batch.insert(key(K_ID, e.event_id.as_bytes()), &seq.to_be_bytes());
            batch.insert(stream_key(&e.stream, version), &seq.to_be_bytes());
            batch.insert(key(K_VERSION, e.stream.as_bytes()), &version.to_be_bytes());
            self.head = Head { seq, hash };
            staged_versions.insert(e.stream.clone(), version);
            let p = Position {
                seq,
                stream_version: version,
                duplicate: false,
            };
            staged_ids.insert(e.event_id.clone(), p);
            positions.push(p);
        }
        Ok(positions)
    }

    fn lookup_id(
        &self,
        event_id: &str,
        staged: &HashMap<String, Position>,
    ) -> Result<Option<Position>, StoreError> {
        if let Some(p) = staged.get(event_id) {
            return Ok(Some(Position {
                duplicate: true,
                ..*p
            }));
        }
        let Some(seq) = self
            .shared
            .log
            .get(key(K_ID, event_id.as_bytes()))
            .map_err(storage)?
        else {
            return Ok(None);
        };
        let seq = be_u64(&seq);
        let v = self
            .shared
            .log
            .get(event_key(seq))
            .map_err(storage)?
            .ok_or_else(|| StoreError::Corrupt {
                seq,
                reason: "id index points to a missing event".into(),
            })?;
        let rec = record::decode(seq, &v)?;
        Ok(Some(Position {
            seq,
            stream_version: rec.stream_version,
            duplicate: true,
        }))
    }

    fn current_version(
        &self,
        stream: &str,
        staged: &HashMap<String, u64>,
    ) -> Result<u64, StoreError> {
        if let Some(v) = staged.get(stream) {
            return Ok(*v);
        }
        Ok(self
            .shared
            .log
            .get(key(K_VERSION, stream.as_bytes()))
            .map_err(storage)?
            .map_or(0, |v| be_u64(&v)))
    }
}
