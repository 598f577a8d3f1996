//! Projections: named, versioned views folded from the log. Each lives in its own
//! [`ViewDb`](crate::viewdb) (a directory of sorted runs under `views/`), whose checkpoint
//! changes in the same atomic commit as the view's data, so a view never runs ahead of or
//! behind its checkpoint. Views are disposable and never read half-built
//! (DESIGN §5.5): a rebuild folds the whole log into a *shadow* tree while the live view keeps
//! answering and folding, then catches the shadow up under the fold lock and swaps it in
//! atomically. A changed version (or a rebuild a crash interrupted) marks the view stale at
//! open; [`Projector::catch_up`] rebuilds a stale view the same way before folding into it.
//!
//! Folding is blocking work: the async entry points run it on tokio's blocking pool so a
//! long rebuild never starves the async workers that serve gRPC and ack NATS messages.
//!
//! Layout. sled's `views` tree maps a projection's name to its live *generation* g, whose
//! files are the directory `views/<name>@<g>`. Any other generation's directory is a leftover
//! (an interrupted rebuild, or the old view after a swap) and is removed at open, as are the
//! sled trees (`view:<name>`) views lived in before: such a view is rebuilt from the log. Data
//! keys start with `d`; the checkpoint (`version | checkpoint | rebuilding`) is in the view's
//! manifest. A view's changes reach its files when its memory table is full or it has folded
//! 262,144 events since, when a rebuild swaps it in, and at [`Projector::flush`] (shutdown);
//! after a crash it folds again from the checkpoint its files hold.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::StoreError;
use crate::record::RecordedEvent;
use crate::store::{EventStore, storage};
use crate::viewdb::{Meta, ViewDb};

/// How many events a projection folds into one atomic view commit, at most; a commit also ends
/// before the events' data passes [`APPLY_BATCH_BYTES`], so large events do not make large
/// commits.
const APPLY_BATCH: usize = 65_536;
const APPLY_BATCH_BYTES: usize = 32 << 20;
const DATA: u8 = b'd';
/// The tree that records each projection's live generation.
const DIRECTORY: &str = "views";

/// A fold of the log into a view. `apply` must be deterministic (no clocks, no randomness): a
/// rebuild has to produce the same bytes.
pub trait Projection: Send + Sync + 'static {
    /// Stable name; also the name of its tree.
    fn name(&self) -> &'static str;
    /// Bump it whenever `apply` changes what it writes; the view is then rebuilt at start-up.
    fn version(&self) -> u32;
    /// Folds one event into the view.
    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError>;
}

/// Staged changes to a view, read-your-writes, committed atomically with the checkpoint.
pub struct ViewWriter<'a> {
    tree: &'a ViewDb,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The tree does not change while a batch is staged, so its last key per prefix is looked
    /// up once.
    tree_last: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// For each chunked list appended to in this batch ([`ViewWriter::append_chunked`]): its
    /// prefix → its last chunk, key and staged value. A tail's value lives here, not in the
    /// overlay, so an append is one hash lookup; the tails are settled into the overlay
    /// before anything else reads or changes the view, and at the commit.
    chunk_tails: HashMap<Vec<u8>, Tail>,
    /// A reused buffer for data keys that are only looked up.
    scratch: Vec<u8>,
}

/// The last chunk of a chunked list: its data key and staged value (`None` = absent).
struct Tail {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// The data key of chunk `n` of the list under `prefix`.
fn chunk_key(prefix: &[u8], n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 5);
    k.push(DATA);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA);
    k.extend_from_slice(key);
    k
}

impl<'a> ViewWriter<'a> {
    fn new(tree: &'a ViewDb) -> ViewWriter<'a> {
        ViewWriter {
            tree,
            overlay: BTreeMap::new(),
            tree_last: HashMap::new(),
            chunk_tails: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Moves the remembered last chunks into the overlay, before any other read or change
    /// (which may also move a list's last chunk) and before the commit.
    fn settle_chunk_tails(&mut self) {
        for (_, tail) in self.chunk_tails.drain() {
            self.overlay.insert(tail.key, tail.value);
        }
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.settle_chunk_tails();
        let k = data_key(key);
        if let Some(v) = self.overlay.get(&k) {
            return Ok(v.clone());
        }
        self.tree.get(&k)
    }

    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.settle_chunk_tails();
        self.overlay.insert(data_key(key), Some(value));
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.settle_chunk_tails();
        self.overlay.insert(data_key(key), None);
    }

    /// The greatest key starting with `prefix` (staged or stored, not removed), without the
    /// prefix's data mark.
    pub fn last_with_prefix(&mut self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.settle_chunk_tails();
        let start = data_key(prefix);
        // Walk back from the end of the prefix's range: only the last staged key is cloned.
        let staged = match prefix_end(&start) {
            Some(end) => self.overlay.range(start.clone()..end).rev(),
            None => self.overlay.range(start.clone()..).rev(),
        }
        .find(|(_, v)| v.is_some())
        .map(|(k, _)| k.clone());
        let end = prefix_end(&start);
        if !self.tree_last.contains_key(&start) {
            let mut found = None;
            self.tree.scan(&start, end.as_deref(), true, &mut |k, _| {
                found = Some(k.to_vec());
                false
            })?;
            self.tree_last.insert(start.clone(), found);
        }
        // The tree's last key, unless the overlay removes it (then the last one it does not).
        let removed = |k: &[u8]| matches!(self.overlay.get(k), Some(None));
        let stored = match &self.tree_last[&start] {
            Some(last) if removed(last) => {
                let mut found = None;
                self.tree.scan(&start, end.as_deref(), true, &mut |k, _| {
                    if removed(k) {
                        return true;
                    }
                    found = Some(k.to_vec());
                    false
                })?;
                found
            }
            cached => cached.clone(),
        };
        Ok(staged.max(stored).map(|k| k[1..].to_vec()))
    }

    /// Changes a value in place (`None` = absent); cheaper than `get` + `put` for values that
    /// grow, because the staged copy is edited rather than cloned.
    pub fn update(
        &mut self,
        key: &[u8],
        change: impl FnOnce(&mut Option<Vec<u8>>),
    ) -> Result<(), StoreError> {
        self.settle_chunk_tails();
        self.scratch.clear();
        self.scratch.push(DATA);
        self.scratch.extend_from_slice(key);
        change(staged(self.tree, &mut self.overlay, &self.scratch)?);
        Ok(())
    }

    /// Appends to a list kept in numbered chunks under `prefix`: keys `prefix` + chunk number
    /// (u32 BE, from 0). `add` is offered the list's last chunk (`None` = absent) and says
    /// whether it took the entry; when it did not (the chunk is full), the next chunk is opened
    /// and offered to `add`, which must take it. Chunks are numbered without gaps: a list kept
    /// this way is only ever appended to. The same as finding the last chunk with
    /// [`ViewWriter::last_with_prefix`] and changing it with [`ViewWriter::update`], but the
    /// last chunk of each list is remembered (key and value) for the rest of the batch. A
    /// chunk that took an entry must hold a value.
    pub fn append_chunked(
        &mut self,
        prefix: &[u8],
        mut add: impl FnMut(&mut Option<Vec<u8>>) -> bool,
    ) -> Result<(), StoreError> {
        if let Some(tail) = self.chunk_tails.get_mut(prefix) {
            if add(&mut tail.value) {
                return Ok(());
            }
        } else {
            let last = self.last_chunk(prefix)?.unwrap_or(0);
            let key = chunk_key(prefix, last);
            let mut tail = self.take_staged(key)?;
            let added = add(&mut tail.value);
            self.chunk_tails.insert(prefix.to_vec(), tail);
            if added {
                return Ok(());
            }
        }
        // The last chunk is full: it goes to the overlay, and the tail moves to the next one.
        let full = self.chunk_tails.remove(prefix).expect("remembered above");
        let number = full
            .key
            .get(1 + prefix.len()..)
            .and_then(|n| <[u8; 4]>::try_from(n).ok())
            .map_or(0, u32::from_be_bytes);
        let mut next = full.key.clone();
        self.overlay.insert(full.key, full.value);
        next.truncate(1 + prefix.len());
        next.extend_from_slice(&(number + 1).to_be_bytes());
        let mut tail = self.take_staged(next)?;
        let added = add(&mut tail.value);
        debug_assert!(added, "a fresh chunk takes an entry");
        self.chunk_tails.insert(prefix.to_vec(), tail);
        Ok(())
    }

    /// The number of a list's last chunk (`None`: the list is empty). Chunks are numbered from
    /// 0 without gaps, so it is found by probing numbers (doubling, then halving): a few point
    /// lookups instead of a scan back from the end of the prefix's range.
    fn last_chunk(&self, prefix: &[u8]) -> Result<Option<u32>, StoreError> {
        let exists = |n: u32| -> Result<bool, StoreError> {
            let key = chunk_key(prefix, n);
            match self.overlay.get(&key) {
                Some(staged) => Ok(staged.is_some()),
                None => self.tree.contains_key(&key),
            }
        };
        if !exists(0)? {
            return Ok(None);
        }
        // `low` exists; find a `high` that does not, then close in.
        let (mut low, mut high) = (0u32, 1u32);
        while exists(high)? {
            low = high;
            match high.checked_mul(2) {
                Some(next) => high = next,
                None if exists(u32::MAX)? => return Ok(Some(u32::MAX)),
                None => {
                    high = u32::MAX;
                    break;
                }
            }
        }
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if exists(mid)? {
                low = mid;
            } else {
                high = mid;
            }
        }
        Ok(Some(low))
    }

    /// The staged value of the data key `key` (loaded from the tree the first time), to be
    /// held as a list's tail; the overlay keeps the key with an empty placeholder, since the
    /// chunk holds a value once it has taken an entry.
    fn take_staged(&mut self, key: Vec<u8>) -> Result<Tail, StoreError> {
        let value = match self.overlay.insert(key.clone(), Some(Vec::new())) {
            Some(staged) => staged,
            None => self.tree.get_with(&key, to_vec_with_room)?,
        };
        Ok(Tail { key, value })
    }
}

/// The staged value of the data key `key`, loaded from `tree` the first time it is touched.
fn staged<'o>(
    tree: &ViewDb,
    overlay: &'o mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    key: &[u8],
) -> Result<&'o mut Option<Vec<u8>>, StoreError> {
    if !overlay.contains_key(key) {
        let current = tree.get_with(key, to_vec_with_room)?;
        overlay.insert(key.to_vec(), current);
    }
    Ok(overlay.get_mut(key).expect("inserted above"))
}

/// A stored value copied to be changed, with room to grow: values staged for a change are
/// mostly appended to, and a copy of the exact size would be copied again by the first append.
/// The room (a quarter more, at most 256 bytes: a few entries) stays with the value in the
/// memory table until it is written, so it is kept small.
fn to_vec_with_room(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + (bytes.len() / 4 + 64).min(256));
    v.extend_from_slice(bytes);
    v
}

/// The least key greater than every key that starts with `prefix` (`None`: there is none,
/// the prefix is all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A view entry: key (without the data mark) and value.
pub type ViewEntry = (Vec<u8>, Vec<u8>);

/// A read handle on a view, for queries. It always reads the live generation: a rebuild's swap
/// is seen by every handle at once, and no handle ever sees a shadow being filled.
#[derive(Clone)]
pub struct View {
    live: Arc<RwLock<Arc<ViewDb>>>,
}

impl View {
    /// The live tree, read-locked for the duration of one read so a finishing rebuild cannot
    /// drop it underneath.
    fn tree(&self) -> std::sync::RwLockReadGuard<'_, Arc<ViewDb>> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_with(key, <[u8]>::to_vec)
    }

    /// A number that changes whenever the view's data may have changed (a commit, a rebuild's
    /// swap): what was read after taking a stamp is still what the view holds while
    /// `stamp()` returns the same number — for caches of decoded values.
    pub fn stamp(&self) -> u64 {
        self.tree().stamp()
    }

    /// Runs `read` on the value at `key` where it is stored, without copying it (for values
    /// that are decoded right away).
    pub fn get_with<R>(
        &self,
        key: &[u8],
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, StoreError> {
        self.tree().get_with(&data_key(key), read)
    }

    /// Every entry whose key starts with `prefix`, in key order (keys without the `d` mark).
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<ViewEntry>, StoreError> {
        let from = data_key(prefix);
        let to = prefix_end(&from);
        collect(&self.tree(), &from, to.as_deref(), false, usize::MAX)
    }
}

impl View {
    /// Entries with `from <= key < to`, in key order, at most `limit` of them (keys without the
    /// `d` mark).
    pub fn range(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<ViewEntry>, StoreError> {
        collect(
            &self.tree(),
            &data_key(from),
            Some(&data_key(to)),
            false,
            limit,
        )
    }
}

impl View {
    /// Entries with `from <= key < to`, in reverse key order (newest first for time-ordered
    /// keys), at most `limit` of them (keys without the `d` mark).
    pub fn range_rev(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<ViewEntry>, StoreError> {
        collect(
            &self.tree(),
            &data_key(from),
            Some(&data_key(to)),
            true,
            limit,
        )
    }
}

/// At most `limit` entries of `from <= key < to` (data keys), without their data mark.
fn collect(
    tree: &ViewDb,
    from: &[u8],
    to: Option<&[u8]>,
    rev: bool,
    limit: usize,
) -> Result<Vec<ViewEntry>, StoreError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    tree.scan(from, to, rev, &mut |k, v| {
        out.push((k[1..].to_vec(), v.to_vec()));
        out.len() < limit
    })?;
    Ok(out)
}

/// A projection's state, for `ProjectionStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub name: String,
    pub version: u32,
    /// Last sequence number folded in (0 while a stale view waits for its rebuild).
    pub checkpoint: u64,
    /// BLAKE3 over every data key and value: equal digests mean byte-identical views.
    pub digest: [u8; 32],
    pub entries: u64,
}

/// One registered projection and its live generation.
struct Slot {
    projection: Arc<dyn Projection>,
    /// The live view; replaced (under the write lock) only by a finished rebuild.
    live: Arc<RwLock<Arc<ViewDb>>>,
    generation: Mutex<u64>,
    /// Held while folding into the live tree, and for a rebuild's last catch-up and swap.
    fold: Mutex<()>,
    /// One rebuild of this projection at a time.
    rebuild: Mutex<()>,
    /// The live view must be rebuilt before it is folded into or read (version change).
    stale: AtomicBool,
    /// Last sequence number the live view has folded (0 while stale).
    checkpoint: watch::Sender<u64>,
}

impl Slot {
    fn live_tree(&self) -> Arc<ViewDb> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The directory of one generation of a projection's view.
fn generation_dir(views: &Path, projection: &str, generation: u64) -> PathBuf {
    views.join(format!("{projection}@{generation}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a service's projections over its store.
#[derive(Clone)]
pub struct Projector {
    store: EventStore,
    directory: sled::Tree,
    /// Where the views' directories are.
    views: PathBuf,
    entries: Arc<Vec<Slot>>,
}

impl Projector {
    /// Opens every projection's live view and drops leftover generations. A view whose stored
    /// version differs from the code's, or whose last in-place rebuild was interrupted, is
    /// marked stale: it is rebuilt (in a shadow) by the next [`Projector::catch_up`].
    pub fn open(
        store: &EventStore,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Result<Projector, StoreError> {
        let db = &store.shared.db;
        let directory = db.open_tree(DIRECTORY).map_err(storage)?;
        let views = store.views_dir();
        std::fs::create_dir_all(&views).map_err(storage)?;
        // Views kept in sled trees before they had files of their own: dropped, and folded
        // again from the log (a service does so before it reports SERVING).
        for name in db.tree_names() {
            if name.starts_with(b"view:") {
                db.drop_tree(&name).map_err(storage)?;
            }
        }
        let existing: Vec<String> = std::fs::read_dir(&views)
            .map_err(storage)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut entries = Vec::with_capacity(projections.len());
        for projection in projections {
            let name = projection.name();
            let generation = directory
                .get(name.as_bytes())
                .map_err(storage)?
                .map_or(0, |v| crate::store::be_u64(&v));
            let live_dir = generation_dir(&views, name, generation);
            let ours = |n: &str| n.rsplit_once('@').is_some_and(|(p, _)| p == name);
            for leftover in existing.iter().filter(|n| ours(n)) {
                let dir = views.join(leftover);
                if dir != live_dir {
                    tracing::info!(projection = name, dir = %dir.display(), "removing a leftover view generation");
                    ViewDb::destroy(&dir)?;
                }
            }
            let tree = ViewDb::open(&live_dir)?;
            let current = projection.version();
            let head = store.head().seq;
            let (stale, checkpoint) = match tree.meta() {
                Some(m) if m.version == current && !m.rebuilding && m.checkpoint <= head => {
                    (false, m.checkpoint)
                }
                // A view ahead of the log (a store without fsync that lost its tail) would skip
                // the events that reuse those numbers: rebuilt, like a changed version.
                Some(m) => {
                    tracing::info!(
                        projection = name,
                        stored_version = m.version,
                        version = current,
                        interrupted = m.rebuilding,
                        checkpoint = m.checkpoint,
                        head,
                        "projection will be rebuilt before it is read"
                    );
                    (true, 0)
                }
                None => {
                    tree.set_meta(Meta {
                        version: current,
                        checkpoint: 0,
                        rebuilding: false,
                    })?;
                    (false, 0)
                }
            };
            entries.push(Slot {
                projection,
                live: Arc::new(RwLock::new(Arc::new(tree))),
                generation: Mutex::new(generation),
                fold: Mutex::new(()),
                rebuild: Mutex::new(()),
                stale: AtomicBool::new(stale),
                checkpoint: watch::Sender::new(checkpoint),
            });
        }
        Ok(Projector {
            store: store.clone(),
            directory,
            views,
            entries: Arc::new(entries),
        })
    }

    /// Names of the projections, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.projection.name()).collect()
    }

    /// A read handle on a view.
    pub fn view(&self, name: &str) -> Option<View> {
        self.entry(name).map(|e| View {
            live: e.live.clone(),
        })
    }

    fn entry(&self, name: &str) -> Option<&Slot> {
        self.entries.iter().find(|e| e.projection.name() == name)
    }

    /// The lowest checkpoint over every view: everything up to it is folded everywhere.
    pub fn checkpoint(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| *e.checkpoint.borrow())
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Folds every committed event not yet applied (rebuilding stale views first); returns how
    /// many were applied. Runs on the blocking pool.
    pub async fn catch_up(&self) -> Result<u64, StoreError> {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.catch_up_blocking()).await {
            Ok(r) => r,
            // A fold that panicked is a bug, not a state to retry: the caller's task panics too,
            // and its supervisor stops the service loudly.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Invalid(format!("projection task failed: {e}"))),
        }
    }

    /// [`Projector::catch_up`] on the calling thread.
    fn catch_up_blocking(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for slot in self.entries.iter() {
            if slot.stale.load(Ordering::Acquire) {
                total += self.rebuild_slot(slot, &mut |_, _| {})?.checkpoint;
            }
        }
        // The live views fold together: each batch of the log is read and decoded once.
        let live: Vec<&Slot> = self
            .entries
            .iter()
            .filter(|slot| !slot.stale.load(Ordering::Acquire))
            .collect();
        let _folding: Vec<_> = live.iter().map(|slot| lock(&slot.fold)).collect();
        let trees: Vec<Arc<ViewDb>> = live.iter().map(|slot| slot.live_tree()).collect();
        let mut folds = live
            .iter()
            .zip(&trees)
            .map(|(slot, tree)| Fold::open(slot, tree))
            .collect::<Result<Vec<_>, _>>()?;
        let folded = fold_all(&self.store, &mut folds, &mut |_, _| {});
        // A view that committed before another failed keeps (and shows) what it folded.
        for fold in &folds {
            fold.slot.checkpoint.send_replace(fold.meta.checkpoint);
            total += fold.applied;
        }
        folded?;
        Ok(total)
    }

    /// Waits until every view has folded `seq`, so a command's caller can read its own write.
    /// Returns false when `timeout` passed first.
    pub async fn wait_for(&self, seq: u64, timeout: std::time::Duration) -> bool {
        let all = async {
            for slot in self.entries.iter() {
                let mut rx = slot.checkpoint.subscribe();
                if rx.wait_for(|c| *c >= seq).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, all).await.unwrap_or(false)
    }

    /// Keeps every view up to date until `shutdown` resolves.
    ///
    /// Returns at shutdown, or with the error when a fold fails: the views would otherwise
    /// stall silently behind the log, so the caller stops the service (fail-stop) and a restart
    /// folds again. A fold that panics panics here too.
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), StoreError> {
        let mut head = self.store.watch_head();
        tokio::pin!(shutdown);
        loop {
            self.catch_up().await?;
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return Ok(()) },
                _ = &mut shutdown => return Ok(()),
            }
        }
    }

    /// Replays the log into a fresh copy of a view and swaps it in atomically, calling
    /// `progress(applied, target)` per batch. The live view keeps answering meanwhile.
    pub async fn rebuild(
        &self,
        name: &str,
        mut progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<ProjectionStatus, StoreError> {
        if self.entry(name).is_none() {
            return Err(StoreError::Invalid(format!("no projection named {name:?}")));
        }
        let this = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let slot = this.entry(&name).expect("checked above");
            this.rebuild_slot(slot, &mut progress)
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("projection task failed: {e}")))?
    }

    /// Every projection's status.
    pub fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        self.entries
            .iter()
            .map(|slot| status_of(slot, &slot.live_tree()))
            .collect()
    }

    /// Every projection's name, version and checkpoint (as in [`Projector::status`]), without
    /// walking its view for the digest: for polling how far the views are behind the log.
    pub fn checkpoints(&self) -> Vec<(&'static str, u32, u64)> {
        self.entries
            .iter()
            .map(|slot| {
                let p = &slot.projection;
                (
                    p.name(),
                    p.version(),
                    checkpoint_of(slot, &slot.live_tree()),
                )
            })
            .collect()
    }

    /// Writes every view's folded changes to its files, so the next open folds from here
    /// (views are derived from the log: this is for a quick restart, not for durability).
    pub fn flush(&self) -> Result<(), StoreError> {
        for slot in self.entries.iter() {
            let _folding = lock(&slot.fold);
            slot.live_tree().flush()?;
        }
        Ok(())
    }

    /// Folds the log into a new generation, then swaps it in under the fold lock.
    fn rebuild_slot(
        &self,
        slot: &Slot,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ProjectionStatus, StoreError> {
        let _one = lock(&slot.rebuild);
        let name = slot.projection.name();
        let generation = *lock(&slot.generation) + 1;
        let shadow_dir = generation_dir(&self.views, name, generation);
        ViewDb::destroy(&shadow_dir)?;
        let shadow = ViewDb::open(&shadow_dir)?;
        shadow.set_meta(Meta {
            version: slot.projection.version(),
            checkpoint: 0,
            rebuilding: false,
        })?;
        // Most of the work happens while the live view still folds and answers.
        loop {
            let (_, checkpoint) = fold_to_head(&self.store, slot, &shadow, progress)?;
            if self.store.head().seq.saturating_sub(checkpoint) <= APPLY_BATCH as u64 {
                break;
            }
        }
        let _fold = lock(&slot.fold);
        let (_, checkpoint) = fold_to_head(&self.store, slot, &shadow, progress)?;
        // The new generation's files, then the directory's record of it, are on disk before
        // the old generation is removed. Nothing changes the shadow now (the fold lock is
        // held), so its digest is taken on a second thread meanwhile.
        let (digest, flushed) = std::thread::scope(|scope| {
            let digest = scope.spawn(|| digest_of(&shadow));
            let flushed = shadow.flush().and_then(|()| {
                self.directory
                    .insert(name.as_bytes(), &generation.to_be_bytes())
                    .map_err(storage)?;
                self.store.shared.db.flush().map_err(storage)
            });
            let digest = digest
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (digest, flushed)
        });
        flushed?;
        let (digest, entries) = digest?;
        let shadow = Arc::new(shadow);
        let old = {
            let mut live = slot.live.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *live, shadow.clone())
        };
        let old_generation = std::mem::replace(&mut *lock(&slot.generation), generation);
        slot.stale.store(false, Ordering::Release);
        slot.checkpoint.send_replace(checkpoint);
        old.discard();
        drop(old);
        ViewDb::destroy(&generation_dir(&self.views, name, old_generation))?;
        Ok(status_with(slot, checkpoint, digest, entries))
    }
}

/// Folds every committed event after `tree`'s checkpoint into it; returns how many events were
/// applied and the new checkpoint.
fn fold_to_head(
    store: &EventStore,
    slot: &Slot,
    tree: &ViewDb,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, u64), StoreError> {
    let mut folds = [Fold::open(slot, tree)?];
    fold_all(store, &mut folds, progress)?;
    Ok((folds[0].applied, folds[0].meta.checkpoint))
}

/// One view being folded: its slot, tree and checkpoint, and the changes staged since its
/// last commit.
struct Fold<'a> {
    slot: &'a Slot,
    tree: &'a ViewDb,
    meta: Meta,
    applied: u64,
    writer: ViewWriter<'a>,
    /// Events staged in `writer` and not committed yet, their data's bytes, the last one's seq.
    staged: usize,
    staged_bytes: usize,
    staged_last: u64,
}

impl<'a> Fold<'a> {
    fn open(slot: &'a Slot, tree: &'a ViewDb) -> Result<Fold<'a>, StoreError> {
        let meta = tree.meta().unwrap_or(Meta {
            version: slot.projection.version(),
            checkpoint: 0,
            rebuilding: false,
        });
        Ok(Fold {
            slot,
            tree,
            meta,
            applied: 0,
            writer: ViewWriter::new(tree),
            staged: 0,
            staged_bytes: 0,
            staged_last: 0,
        })
    }

    /// Stages the events after this view's checkpoint (and after what is staged already),
    /// committing first whenever the next event would take the staged changes past
    /// [`APPLY_BATCH`] events or [`APPLY_BATCH_BYTES`] of event data; `committed` is told the
    /// checkpoint of each commit.
    fn stage(
        &mut self,
        events: &[RecordedEvent],
        committed: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        let through = self.meta.checkpoint.max(self.staged_last);
        let fresh = events.partition_point(|e| e.seq <= through);
        for event in &events[fresh..] {
            if self.staged >= APPLY_BATCH
                || (self.staged > 0 && self.staged_bytes + event.data.len() > APPLY_BATCH_BYTES)
            {
                self.commit()?;
                committed(self.meta.checkpoint);
            }
            self.slot.projection.apply(event, &mut self.writer)?;
            self.staged += 1;
            self.staged_bytes += event.data.len();
            self.staged_last = event.seq;
        }
        Ok(())
    }

    /// Commits the staged changes with the new checkpoint in one atomic batch.
    fn commit(&mut self) -> Result<(), StoreError> {
        if self.staged == 0 {
            return Ok(());
        }
        let mut writer = std::mem::replace(&mut self.writer, ViewWriter::new(self.tree));
        writer.settle_chunk_tails();
        let mut meta = self.meta;
        meta.checkpoint = self.staged_last;
        meta.rebuilding = false;
        let staged = std::mem::take(&mut self.staged);
        self.staged_bytes = 0;
        self.tree.commit(writer.overlay, meta)?;
        self.meta = meta;
        self.applied += staged as u64;
        Ok(())
    }
}

/// How many events are read from the log at a time while folding: a piece is staged into the
/// views while the next one is read, and the views commit every [`APPLY_BATCH`] events.
const READ_PIECE: usize = 4096;

/// Folds every committed event up to the head into each of `folds`, reading (and decoding)
/// each piece of the log once for all of them. With more than one piece to go, the next piece
/// is read on a second thread while this one is staged.
fn fold_all(
    store: &EventStore,
    folds: &mut [Fold<'_>],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), StoreError> {
    let head = store.head().seq;
    let Some(from) = folds.iter().map(|f| f.meta.checkpoint).min() else {
        return Ok(());
    };
    if from >= head {
        return Ok(());
    }
    // Progress is reported at each commit (once per sequence number when several views fold
    // together), and at the end.
    let mut reported = from;
    let mut report = |seq: u64| {
        if seq > reported {
            progress(seq, head);
            reported = seq;
        }
    };
    let mut stage = |events: &[RecordedEvent]| -> Result<(), StoreError> {
        for fold in folds.iter_mut() {
            fold.stage(events, &mut report)?;
        }
        Ok(())
    };
    // The piece of the log that starts at `next` (cut short by its bytes when need be).
    let read_piece = |next: u64, most: usize| {
        let want = ((head + 1 - next) as usize).min(most);
        store.read_bounded(next, want, APPLY_BATCH_BYTES)
    };
    if head - from <= READ_PIECE as u64 {
        // Usually one piece (a live view following the log): read it here.
        let mut from = from;
        while from < head {
            let events = read_piece(from + 1, READ_PIECE)?;
            from = events.last().map_or(head, |e| e.seq);
            stage(&events)?;
        }
    } else {
        std::thread::scope(|scope| {
            let (tx, rx) =
                std::sync::mpsc::sync_channel::<Result<Vec<RecordedEvent>, StoreError>>(2);
            // Staged pieces go back to the reading thread to be freed where they were
            // allocated, which is cheaper, and takes that work off the folding thread.
            let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<RecordedEvent>>();
            scope.spawn(move || {
                let mut next = from + 1;
                // The folding side waits for the first piece: it is a small one.
                let mut most = READ_PIECE / 8;
                while next <= head {
                    drop(done_rx.try_iter().collect::<Vec<_>>());
                    let piece = read_piece(next, most);
                    most = READ_PIECE;
                    let last = match &piece {
                        Ok(events) => events.last().map(|e| e.seq),
                        Err(_) => None,
                    };
                    // The folding side has stopped (an error): stop reading.
                    if tx.send(piece).is_err() {
                        return;
                    }
                    match last {
                        Some(last) => next = last + 1,
                        None => return,
                    }
                }
            });
            for piece in rx {
                let piece = piece?;
                stage(&piece)?;
                // The reader may have finished: then the piece is freed here.
                let _ = done_tx.send(piece);
            }
            Ok::<(), StoreError>(())
        })?;
    }
    for fold in folds.iter_mut() {
        fold.commit()?;
        report(fold.meta.checkpoint);
    }
    Ok(())
}

fn status_of(slot: &Slot, tree: &ViewDb) -> Result<ProjectionStatus, StoreError> {
    // Taken before the digest, as before: never newer than what the digest covers.
    let checkpoint = checkpoint_of(slot, tree);
    let (digest, entries) = digest_of(tree)?;
    Ok(status_with(slot, checkpoint, digest, entries))
}

/// The view's checkpoint (0 while a stale view waits for its rebuild).
fn checkpoint_of(slot: &Slot, tree: &ViewDb) -> u64 {
    let stale = slot.stale.load(Ordering::Acquire);
    let meta = tree.meta();
    if stale {
        0
    } else {
        meta.map_or(0, |m| m.checkpoint)
    }
}

fn status_with(slot: &Slot, checkpoint: u64, digest: [u8; 32], entries: u64) -> ProjectionStatus {
    ProjectionStatus {
        name: slot.projection.name().to_owned(),
        version: slot.projection.version(),
        checkpoint,
        digest,
        entries,
    }
}

/// A view's digest (BLAKE3 over its entries in key order, each key and value
/// length-prefixed) and how many entries it has.
fn digest_of(tree: &ViewDb) -> Result<([u8; 32], u64), StoreError> {
    let mut hasher = blake3::Hasher::new();
    let mut entries = 0;
    tree.scan(&[DATA], Some(&[DATA + 1]), false, &mut |k, v| {
        hasher.update(&(k.len() as u32).to_be_bytes());
        hasher.update(k);
        hasher.update(&(v.len() as u32).to_be_bytes());
        hasher.update(v);
        entries += 1;
        true
    })?;
    Ok((hasher.finalize().into(), entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last key under a prefix is never one the batch removed, stored or staged.
    #[test]
    fn the_last_key_under_a_prefix_skips_removed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let tree = ViewDb::open(dir.path()).unwrap();
        let stored = [&b"p1"[..], b"p2", b"p3", b"q1"]
            .into_iter()
            .map(|k| (data_key(k), Some(b"v".to_vec())))
            .collect();
        let meta = Meta {
            version: 1,
            checkpoint: 1,
            rebuilding: false,
        };
        tree.commit(stored, meta).unwrap();
        let mut w = ViewWriter::new(&tree);
        assert_eq!(w.last_with_prefix(b"p").unwrap(), Some(b"p3".to_vec()));
        w.put(b"p4", b"v".to_vec());
        assert_eq!(w.last_with_prefix(b"p").unwrap(), Some(b"p4".to_vec()));
        w.remove(b"p4");
        w.remove(b"p3");
        assert_eq!(w.last_with_prefix(b"p").unwrap(), Some(b"p2".to_vec()));
        w.remove(b"p2");
        w.remove(b"p1");
        assert_eq!(w.last_with_prefix(b"p").unwrap(), None);
        w.put(b"p2", b"v".to_vec());
        assert_eq!(w.last_with_prefix(b"p").unwrap(), Some(b"p2".to_vec()));
        assert_eq!(w.last_with_prefix(b"q").unwrap(), Some(b"q1".to_vec()));
    }
}
