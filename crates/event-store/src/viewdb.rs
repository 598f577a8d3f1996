//! A view's storage, outside sled: a sorted map of byte keys to byte values kept as an
//! in-memory table of the newest changes over immutable sorted *runs* on disk (an LSM tree, as
//! the log's index), with a `MANIFEST` that says which runs are current and how far into the
//! log they reach (the view's checkpoint).
//!
//! A view is derived from the log, so nothing here is synced per commit: a commit changes the
//! memory table and the checkpoint readers see, atomically under one lock. When the table
//! passes [`MEM_TABLE_BYTES`] (or the view is [`FLUSH_EVERY_EVENTS`] past its manifest's
//! checkpoint) it is written as a new run (fsynced) and the manifest is replaced
//! by rename; a thread of the view's own then merges the newest runs while the one before them
//! is under twice their size (so there are about log₂(view / table) runs), replacing the
//! manifest again, so a large merge never holds up folding. A crash leaves the last manifest's
//! runs and checkpoint, and the projector folds the log again from there.
//!
//! A run file is its entries sorted by key in blocks of about [`BLOCK_BYTES`] (each entry
//! `varint key length | varint value length + 1, or 0 for a removal | key | value`), then for
//! each block its first key, offset, length and CRC-32, then the greatest key, then a Bloom
//! filter over the keys (`line_bloom`: a key's bits in one 64-byte line), then a footer whose
//! check covers all of that. Only the block list and the filter are held in memory; a lookup
//! reads one block with `pread` (the OS page cache, not this process, keeps the hot blocks)
//! and checks its CRC before using it. A manifest or
//! run list that does not check at open makes the view rebuild from the log; a damaged block
//! met later is an error naming the file (remove the view's directory to rebuild it). Never a
//! wrong answer.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use crate::StoreError;
use crate::index::{BLOOM_BITS, table_check, table_check_of};
use crate::line_bloom::{LINE_BITS, LineBloom};
use crate::log::{replace_file, sync_dir};
use crate::store::storage;

/// A block's size, about (an entry larger than a block gets a block of its own).
const BLOCK_BYTES: usize = 4096;
/// Version 2: filters of 64-byte lines (version 1 runs are not read: the view rebuilds).
const RUN_MAGIC: u64 = 0x504c_5652_554e_0002;
const MANIFEST_MAGIC: u64 = 0x504c_564d_414e_0001;
/// magic, blocks, entries, index offset, index length, bloom offset, bloom bits, check.
const FOOTER_LEN: u64 = 8 * 8;
const MANIFEST: &str = "MANIFEST";
/// The memory table is written as a run once its keys and values pass this. 8 MiB rather
/// than 16: at 10M events over 1M subjects the consent service (two views) holds less while
/// ingesting, at the same rate (README → Performance).
pub(crate) const MEM_TABLE_BYTES: usize = 8 << 20;
/// ... and once the view has folded this many events past its manifest's checkpoint, so a view
/// whose changes stay small (the same keys rewritten) still bounds what a crash makes the
/// projector fold again.
const FLUSH_EVERY_EVENTS: u64 = 262_144;
/// What one entry of the memory table costs beyond its key and value (tree node, vectors).
const ENTRY_OVERHEAD: usize = 64;

/// A view's version, how far into the log it has folded, and whether a rebuild into it was
/// interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub version: u32,
    pub checkpoint: u64,
    pub rebuilding: bool,
}

/// Staged changes: key → new value (`None` = removed).
pub(crate) type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// One view generation's storage (a directory). Reads go through [`Inner`].
pub(crate) struct ViewDb {
    inner: Arc<Inner>,
    /// The thread merging runs, when there is one.
    merger: Mutex<Option<JoinHandle<()>>>,
}

/// What a view's readers, its writer and its merging thread share.
pub(crate) struct Inner {
    dir: PathBuf,
    state: RwLock<State>,
    /// Serialises the changes to the state and the manifest: commits and flushes (one folding
    /// thread at a time, plus a flush at shutdown) and a merge's install.
    writer: Mutex<()>,
    mem_limit: usize,
    /// Set when the view closes: no merge starts, and one under way stops.
    closing: AtomicBool,
    /// Set when the view's directory is about to be removed: nothing is written at the close.
    discarded: AtomicBool,
    /// Set when a merge failed: no other starts until the view is opened again (reads stay
    /// right over unmerged runs; the error was logged).
    merging_failed: AtomicBool,
}

impl std::ops::Deref for ViewDb {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

struct State {
    /// Shared with scans under way (a scan reads a snapshot, not under the lock). A commit
    /// that finds it held by a scan does not copy it: it is frozen and a new table started.
    mem: Arc<Changes>,
    /// Memory tables frozen so, newest first: read after `mem`, written with it at the flush.
    frozen: Vec<Arc<Changes>>,
    /// What `mem` and `frozen` hold, about.
    mem_bytes: usize,
    /// Newest first.
    runs: Vec<Arc<Run>>,
    /// What readers see (`None`: never written).
    meta: Option<Meta>,
    /// What the manifest on disk says.
    durable: Option<Meta>,
    next_run: u64,
    /// Changes with every commit, and differs between any two views of the process: equal
    /// stamps mean equal data (see [`ViewDb::stamp`]).
    stamp: u64,
}

/// How many memory tables may be frozen at once ([`State::frozen`]); past that, a commit that
/// finds the table held by a scan copies it, as a bound on what every lookup walks.
const MAX_FROZEN: usize = 8;

impl State {
    /// The memory tables, newest first: the live one, then the frozen ones.
    fn memory_tables(&self) -> impl Iterator<Item = &Arc<Changes>> {
        std::iter::once(&self.mem).chain(&self.frozen)
    }

    /// The memory tables that hold anything, newest first, shared (a snapshot).
    fn tables(&self) -> Vec<Arc<Changes>> {
        self.memory_tables()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect()
    }
}

/// Where stamps come from: no two states of any views in this process share one.
static STAMPS: AtomicU64 = AtomicU64::new(1);

fn next_stamp() -> u64 {
    STAMPS.fetch_add(1, Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ViewDb {
    /// Opens (or creates) the view in `dir`. A manifest or run that does not check is reported
    /// and the directory emptied: the view then has no meta and is rebuilt from the log.
    pub(crate) fn open(dir: &Path) -> Result<ViewDb, StoreError> {
        ViewDb::open_with(dir, MEM_TABLE_BYTES)
    }

    pub(crate) fn open_with(dir: &Path, mem_limit: usize) -> Result<ViewDb, StoreError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(storage)?;
            if let Some(parent) = dir.parent() {
                // A new generation's directory entry is durable before anything names it.
                sync_dir(parent)?;
            }
        }
        let (meta, runs, next_run) = match load(dir) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => (None, Vec::new(), 1),
            Err(Fault::Damaged(e)) => {
                tracing::warn!(view = %dir.display(), error = %e, "a view's files do not check; it will be rebuilt from the log");
                (None, Vec::new(), 1)
            }
            Err(Fault::Io(e)) => return Err(e),
        };
        let keep: Vec<u64> = runs.iter().map(|r| r.number).collect();
        remove_files_except(dir, &keep, meta.is_some());
        let db = ViewDb {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                state: RwLock::new(State {
                    mem: Arc::default(),
                    frozen: Vec::new(),
                    mem_bytes: 0,
                    runs,
                    meta,
                    durable: meta,
                    next_run,
                    stamp: next_stamp(),
                }),
                writer: Mutex::new(()),
                mem_limit,
                closing: AtomicBool::new(false),
                discarded: AtomicBool::new(false),
                merging_failed: AtomicBool::new(false),
            }),
            merger: Mutex::new(None),
        };
        // A merge a crash or a close interrupted is taken up again.
        db.start_merge();
        Ok(db)
    }

    /// The view's directory is going to be removed: its close writes nothing.
    pub(crate) fn discard(&self) {
        self.discarded.store(true, Ordering::Release);
        self.stop_merging();
    }

    /// Stops the merging thread (after the merge it is in, which it abandons) and waits for it.
    fn stop_merging(&self) {
        self.closing.store(true, Ordering::Release);
        let merger = lock(&self.merger).take();
        if let Some(merger) = merger {
            let _ = merger.join();
        }
    }

    /// Starts the merging thread unless one is running or there is nothing to merge.
    fn start_merge(&self) {
        if self.closing.load(Ordering::Acquire) || self.merging_failed.load(Ordering::Acquire) {
            return;
        }
        let mut merger = lock(&self.merger);
        if merger.as_ref().is_some_and(|m| !m.is_finished()) {
            return;
        }
        if let Some(done) = merger.take() {
            let _ = done.join();
        }
        if self.merge_plan().is_none() {
            return;
        }
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("view-merge".into())
            .spawn(move || {
                while !inner.closing.load(Ordering::Acquire) {
                    match inner.merge_once() {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            inner.merging_failed.store(true, Ordering::Release);
                            tracing::error!(view = %inner.dir.display(), error = %e, "merging a view's runs failed; they are read unmerged, and no merge is tried again until the service restarts");
                            break;
                        }
                    }
                }
            });
        match spawned {
            Ok(thread) => *merger = Some(thread),
            Err(e) => {
                tracing::error!(view = %self.dir.display(), error = %e, "cannot start a thread to merge a view's runs")
            }
        }
    }

    /// Waits until the runs are merged as far as they go (tests).
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        loop {
            let merger = lock(&self.merger).take();
            if let Some(merger) = merger {
                merger.join().expect("the merging thread panicked");
            }
            if self.merge_plan().is_none() {
                return;
            }
            self.start_merge();
        }
    }

    /// Gone without writing anything, as after `kill -9` (tests).
    #[cfg(test)]
    pub(crate) fn crash(self) {
        self.discard();
    }

    /// Removes a view's directory (a leftover generation).
    pub(crate) fn destroy(dir: &Path) -> Result<(), StoreError> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(storage(format!("removing {}: {e}", dir.display()))),
        }
    }

    /// Sets the meta and writes it (with everything in memory) to disk now.
    pub(crate) fn set_meta(&self, meta: Meta) -> Result<(), StoreError> {
        {
            let _w = lock(&self.writer);
            self.state.write().unwrap_or_else(|p| p.into_inner()).meta = Some(meta);
            self.flush_locked()?;
        }
        self.start_merge();
        Ok(())
    }

    /// Applies `changes` and the new meta atomically (readers see all of it or none of it);
    /// writes the memory table as a run when it has grown past its limit.
    pub(crate) fn commit(&self, changes: Changes, meta: Meta) -> Result<(), StoreError> {
        let _w = lock(&self.writer);
        let full = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            let state = &mut *state;
            let shared = Arc::get_mut(&mut state.mem).is_none();
            if state.mem.is_empty() || (shared && state.frozen.len() < MAX_FROZEN) {
                // Fresh, or held by a scan: the changes start a table of their own (a scan's
                // table is frozen rather than copied, which at 8 MiB took as much memory again
                // for as long as a digest walked the view).
                state.mem_bytes += changes
                    .iter()
                    .map(|(k, v)| entry_bytes(k, v))
                    .sum::<usize>();
                let held = std::mem::replace(&mut state.mem, Arc::new(changes));
                if !held.is_empty() {
                    state.frozen.insert(0, held);
                }
            } else {
                // Copied only when a scan holds it and enough tables are frozen already.
                let mem = Arc::make_mut(&mut state.mem);
                for (k, v) in changes {
                    let added = entry_bytes(&k, &v);
                    let value = v.as_ref().map_or(0, Vec::len);
                    match mem.insert(k, v) {
                        Some(old) => {
                            state.mem_bytes =
                                (state.mem_bytes + value).saturating_sub(old.map_or(0, |o| o.len()))
                        }
                        None => state.mem_bytes += added,
                    }
                }
            }
            state.meta = Some(meta);
            state.stamp = next_stamp();
            let folded = state.durable.map_or(0, |d| d.checkpoint);
            state.mem_bytes >= self.mem_limit
                || meta.checkpoint.saturating_sub(folded) >= FLUSH_EVERY_EVENTS
        };
        if full {
            self.flush_locked()?;
            drop(_w);
            self.start_merge();
        }
        Ok(())
    }

    /// Writes what is in memory, and the meta, to disk (a no-op when nothing changed).
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        {
            let _w = lock(&self.writer);
            self.flush_locked()?;
        }
        self.start_merge();
        Ok(())
    }
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn meta(&self) -> Option<Meta> {
        self.read().meta
    }

    /// A number that changes whenever the data may have changed: a value read after taking a
    /// stamp is current for as long as the stamp is.
    pub(crate) fn stamp(&self) -> u64 {
        self.read().stamp
    }

    /// The newest runs to merge now (newest first), and whether removals must be kept (the
    /// oldest run is not among them); `None` when the runs are as merged as they should be.
    fn merge_plan(&self) -> Option<(Vec<Arc<Run>>, bool)> {
        let state = self.read();
        let runs = &state.runs;
        let mut total = runs.first()?.bytes;
        let mut j = 1;
        while j < runs.len() && runs[j].bytes < 2 * total {
            total += runs[j].bytes;
            j += 1;
        }
        (j >= 2).then(|| (runs[..j].to_vec(), j < runs.len()))
    }

    /// Merges the runs the plan names into one and installs it; false when there was nothing
    /// to merge or the view is closing.
    fn merge_once(&self) -> Result<bool, StoreError> {
        let Some((inputs, keep_removals)) = self.merge_plan() else {
            return Ok(false);
        };
        let number = {
            let _w = lock(&self.writer);
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            state.next_run += 1;
            state.next_run - 1
        };
        let merged = self.merge_into(number, &inputs, keep_removals);
        if !matches!(merged, Ok(true)) {
            // Not installed (stopped, or failed): its file goes.
            let _ = std::fs::remove_file(run_path(&self.dir, number));
        }
        merged
    }

    /// [`Inner::merge_once`]'s work: `inputs` merged into run `number` and installed.
    fn merge_into(
        &self,
        number: u64,
        inputs: &[Arc<Run>],
        keep_removals: bool,
    ) -> Result<bool, StoreError> {
        let expected = inputs.iter().map(|r| r.layout.entries).sum();
        let mut w = RunWriter::create(&self.dir, number, expected)?;
        let mut pushed = 0u64;
        let mut stopped = false;
        {
            let mut sources: Vec<Source<'_>> = inputs
                .iter()
                .map(|r| Source::Run(RunCursor::new(r, b"", None, false)))
                .collect();
            merge(&mut sources, b"", None, false, &mut |k, v| {
                if v.is_some() || keep_removals {
                    w.push(k, v)?;
                }
                pushed += 1;
                if pushed.is_multiple_of(4096) && self.closing.load(Ordering::Acquire) {
                    stopped = true;
                    return Ok(false);
                }
                Ok(true)
            })?;
        }
        if stopped {
            return Ok(false);
        }
        let merged = Arc::new(w.finish()?);
        let _w = lock(&self.writer);
        let (runs, durable, next_run) = {
            let state = self.read();
            let at = state.runs.iter().position(|r| r.number == inputs[0].number);
            let intact = at.is_some_and(|at| {
                state.runs.len() >= at + inputs.len()
                    && state.runs[at..at + inputs.len()]
                        .iter()
                        .zip(inputs)
                        .all(|(a, b)| a.number == b.number)
            });
            let Some(at) = at.filter(|_| intact) else {
                return Err(StoreError::Invalid(
                    "a view's runs changed while they were merged".into(),
                ));
            };
            let mut runs = state.runs.clone();
            runs.splice(at..at + inputs.len(), [merged]);
            (runs, state.durable, state.next_run)
        };
        // On failure the state keeps the inputs and the merged file goes; a manifest that was
        // renamed into place before the failure is replaced by the next flush, or (after a
        // crash first) names a missing run, which rebuilds the view from the log.
        write_manifest(&self.dir, durable, &runs, next_run)?;
        self.state.write().unwrap_or_else(|p| p.into_inner()).runs = runs;
        for run in inputs {
            let _ = std::fs::remove_file(&run.path);
        }
        Ok(true)
    }

    /// [`ViewDb::flush`] with the writer lock held: only this thread changes the state.
    fn flush_locked(&self) -> Result<(), StoreError> {
        let (dirty, written) = {
            let state = self.read();
            (
                !state.mem.is_empty() || !state.frozen.is_empty() || state.meta != state.durable,
                !state.mem.is_empty() || !state.frozen.is_empty(),
            )
        };
        if !dirty {
            return Ok(());
        }
        // The new run's number is taken before its file is made, so no later run (a merge's,
        // or this one after a failure further on) can reuse a number a manifest may name.
        let number = written.then(|| {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            state.next_run += 1;
            state.next_run - 1
        });
        let (runs, meta, next_run) = {
            let state = self.read();
            let mut runs = state.runs.clone();
            if let Some(number) = number {
                let tables = state.tables();
                let entries = tables.iter().map(|t| t.len() as u64).sum();
                let mut w = RunWriter::create(&self.dir, number, entries)?;
                if let [table] = tables.as_slice() {
                    for (k, v) in table.iter() {
                        w.push(k, v.as_deref())?;
                    }
                } else {
                    // The newest table's entry of a key wins; removals are written too.
                    let mut sources: Vec<Source<'_>> = tables
                        .iter()
                        .map(|t| Source::mem(Box::new(t.iter())))
                        .collect();
                    merge(&mut sources, b"", None, false, &mut |k, v| {
                        w.push(k, v)?;
                        Ok(true)
                    })?;
                }
                runs.insert(0, Arc::new(w.finish()?));
            }
            (runs, state.meta, state.next_run)
        };
        write_manifest(&self.dir, meta, &runs, next_run)?;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.runs = runs;
        if written {
            state.mem = Arc::default();
            state.frozen.clear();
            state.mem_bytes = 0;
        }
        state.durable = meta;
        Ok(())
    }

    /// The value at `key`, given to `read` where it lies.
    pub(crate) fn get_with<R>(
        &self,
        key: &[u8],
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, StoreError> {
        let state = self.read();
        for table in state.memory_tables() {
            if let Some(v) = table.get(key) {
                return Ok(v.as_deref().map(read));
            }
        }
        let hashes = key_hashes(key);
        // The block is read into this thread's buffer, kept between lookups: no allocation
        // and no zeroing of a block's worth of memory per lookup. Taken out while in use, so a
        // `read` that looks up a view itself gets a buffer of its own.
        let mut block = LOOKUP_BLOCK.take();
        let mut found = Ok(None);
        for run in &state.runs {
            if !run.layout.may_contain(hashes) {
                continue;
            }
            match run.find(key, &mut block) {
                Ok(Found::Absent) => continue,
                Ok(Found::Removed) => {}
                Ok(Found::Value(range)) => found = Ok(Some(read(&block[range]))),
                Err(e) => found = Err(e),
            }
            break;
        }
        if block.capacity() <= LOOKUP_BLOCK_KEPT {
            LOOKUP_BLOCK.set(block);
        }
        found
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_with(key, <[u8]>::to_vec)
    }

    pub(crate) fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get_with(key, |_| ())?.is_some())
    }

    /// Visits the entries with `from <= key < to` (`to = None`: to the end) in key order, or
    /// in reverse, until `visit` returns false.
    pub(crate) fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        rev: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        if to.is_some_and(|to| from >= to) {
            return Ok(());
        }
        // A snapshot: a long scan (a view's digest) holds no lock that commits wait for.
        let (tables, runs) = {
            let state = self.read();
            (state.tables(), state.runs.clone())
        };
        let mut sources = Vec::with_capacity(tables.len() + runs.len());
        for table in &tables {
            use std::ops::Bound::{Excluded, Included, Unbounded};
            let upper = to.map_or(Unbounded, Excluded);
            let range = table.range::<[u8], _>((Included(from), upper));
            let mem: MemIter<'_> = if rev {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            sources.push(Source::mem(mem));
        }
        for run in &runs {
            sources.push(Source::Run(RunCursor::new(run, from, to, rev)));
        }
        merge(&mut sources, from, to, rev, &mut |k, v| {
            Ok(match v {
                Some(v) => visit(k, v),
                None => true,
            })
        })
    }

    /// How many runs the view has (for tests and status).
    #[cfg(test)]
    fn runs(&self) -> usize {
        self.read().runs.len()
    }
}

/// A view closed with changes in memory writes them, so the next open need not fold them
/// again (best effort: the log has them anyway). A removed generation is left removed.
impl Drop for ViewDb {
    fn drop(&mut self) {
        self.stop_merging();
        if self.discarded.load(Ordering::Acquire) || !self.dir.exists() {
            return;
        }
        if let Err(e) = self.flush() {
            tracing::warn!(view = %self.dir.display(), error = %e, "a view's last changes were not written; they will be folded again");
        }
    }
}

fn entry_bytes(k: &[u8], v: &Option<Vec<u8>>) -> usize {
    k.len() + v.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

/// Why a view's files could not be loaded: damaged (the view is rebuilt from the log), or the
/// disk could not be read (an error: the files may be fine).
enum Fault {
    Damaged(StoreError),
    Io(StoreError),
}

impl From<Fault> for StoreError {
    fn from(f: Fault) -> StoreError {
        match f {
            Fault::Damaged(e) | Fault::Io(e) => e,
        }
    }
}

fn damaged(path: &Path, reason: &str) -> Fault {
    Fault::Damaged(corrupt(path, reason))
}

/// A missing file or one shorter than its own layout says is damage; anything else is the disk.
fn io_fault(path: &Path, e: std::io::Error) -> Fault {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof => {
            damaged(path, &e.to_string())
        }
        _ => Fault::Io(storage(format!("{}: {e}", path.display()))),
    }
}

fn corrupt(path: &Path, reason: &str) -> StoreError {
    StoreError::Storage(format!(
        "view file {} is damaged ({reason}); delete the view's directory to rebuild it from the log",
        path.display()
    ))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Two independent 64-bit hashes of a key (FNV-1a, then two mixes), stable across builds:
/// the Bloom filters on disk depend on them.
pub(crate) fn key_hashes(key: &[u8]) -> (u64, u64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (mix(h), mix(h ^ 0x9e37_79b9_7f4a_7c15) | 1)
}

/// Where a key's entry is in a block: key and value ranges (`None` value: removed).
type Entry = (Range<usize>, Option<Range<usize>>);

/// The entry at `pos` in a block, moving `pos` past it; `None` when the bytes do not parse.
fn next_entry(bytes: &[u8], pos: &mut usize) -> Option<Entry> {
    let klen = usize::try_from(get_varint(bytes, pos)?).ok()?;
    let tag = usize::try_from(get_varint(bytes, pos)?).ok()?;
    let key = *pos..pos.checked_add(klen)?;
    *pos = key.end;
    let value = match tag {
        0 => None,
        n => {
            let v = *pos..pos.checked_add(n - 1)?;
            *pos = v.end;
            Some(v)
        }
    };
    (*pos <= bytes.len()).then_some((key, value))
}

/// The entries of a block, in order; `None` when the bytes do not parse.
fn parse_block(bytes: &[u8]) -> Option<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        entries.push(next_entry(bytes, &mut pos)?);
    }
    Some(entries)
}

enum Found {
    Absent,
    Removed,
    /// Where the value is in the block read.
    Value(Range<usize>),
}

/// A lookup's buffer is kept for the thread's next lookup up to this size (a block larger
/// than [`BLOCK_BYTES`] holds one large entry).
const LOOKUP_BLOCK_KEPT: usize = 4 * BLOCK_BYTES;

thread_local! {
    /// The block a lookup reads into ([`Inner::get_with`]).
    static LOOKUP_BLOCK: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A run on disk: its file, and its [`Layout`] in memory.
struct Run {
    number: u64,
    path: PathBuf,
    file: File,
    bytes: u64,
    layout: Layout,
}

/// What a run keeps in memory (built by its writer, or read back at open).
struct Layout {
    /// The first key of every block, concatenated; block i's is `fences[fence_ends[i-1]..fence_ends[i]]`.
    fences: Vec<u8>,
    fence_ends: Vec<usize>,
    /// For the search of the fences: how many leading bytes every fence shares, and for each
    /// fence the 8 bytes after those (big-endian, zero-padded), so the search walks one dense
    /// array and compares whole fences only where those 8 bytes tie.
    shared: usize,
    heads: Vec<u64>,
    /// Offset, length and CRC-32 of every block.
    blocks: Vec<(u64, u32, u32)>,
    bloom: LineBloom,
    entries: u64,
    /// The greatest key (empty when the run has none).
    last: Vec<u8>,
}

/// The 8 bytes of `key` after its first `shared`, big-endian, zero-padded: for keys that share
/// those first bytes, a smaller head means a smaller key.
fn head(key: &[u8], shared: usize) -> u64 {
    let mut bytes = [0u8; 8];
    let rest = key.get(shared..).unwrap_or_default();
    let n = rest.len().min(8);
    bytes[..n].copy_from_slice(&rest[..n]);
    u64::from_be_bytes(bytes)
}

fn run_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("run-{number}.view"))
}

impl Layout {
    fn fence(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.fence_ends[i - 1] };
        &self.fences[start..self.fence_ends[i]]
    }

    /// A layout with no blocks yet and a filter for about `expected` keys.
    fn empty(expected: u64) -> Layout {
        Layout {
            fences: Vec::new(),
            fence_ends: Vec::new(),
            shared: 0,
            heads: Vec::new(),
            blocks: Vec::new(),
            bloom: LineBloom::with_bits(expected.max(1) * BLOOM_BITS),
            entries: 0,
            last: Vec::new(),
        }
    }

    /// Fills `shared` and `heads` from the fences.
    fn index_fences(&mut self) {
        let n = self.fence_ends.len();
        self.shared = if n == 0 {
            0
        } else {
            let first = self.fence(0);
            (1..n).fold(first.len(), |shared, i| {
                let f = self.fence(i);
                shared.min(first.iter().zip(f).take_while(|(a, b)| a == b).count())
            })
        };
        self.heads = (0..n).map(|i| head(self.fence(i), self.shared)).collect();
    }

    /// How many blocks start at or before `key` (inclusive) / before `key` (exclusive).
    fn blocks_starting_before(&self, key: &[u8], inclusive: bool) -> usize {
        let before = |f: &[u8]| f < key || (inclusive && f == key);
        let Some(first) = self.fence_ends.first() else {
            return 0;
        };
        // Every fence starts with `prefix`: a key that does not sorts before them all or
        // after them all.
        let prefix = &self.fences[..(*first).min(self.shared)];
        match key[..key.len().min(self.shared)].cmp(prefix) {
            std::cmp::Ordering::Less => return 0,
            std::cmp::Ordering::Greater => return self.blocks.len(),
            std::cmp::Ordering::Equal => {}
        }
        // A fence whose head is below the key's sorts before the key, one above after it;
        // where they tie, whole fences decide.
        let key_head = head(key, self.shared);
        let (mut lo, mut hi) = (
            self.heads.partition_point(|&h| h < key_head),
            self.heads.partition_point(|&h| h <= key_head),
        );
        while lo < hi {
            let mid = (lo + hi) / 2;
            if before(self.fence(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn may_contain(&self, hashes: (u64, u64)) -> bool {
        self.bloom.may_contain(hashes)
    }
}

impl Run {
    /// Block `i`'s bytes, checked against its CRC.
    fn block_bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        let mut bytes = Vec::new();
        self.read_block_into(i, &mut bytes)?;
        Ok(bytes)
    }

    /// Reads block `i` into `bytes` (whose old contents are overwritten, not zeroed first),
    /// checked against its CRC.
    fn read_block_into(&self, i: usize, bytes: &mut Vec<u8>) -> Result<(), StoreError> {
        let (offset, len, crc) = self.layout.blocks[i];
        bytes.resize(len as usize, 0);
        self.file.read_exact_at(bytes, offset).map_err(storage)?;
        if crc32fast::hash(bytes) != crc {
            return Err(corrupt(&self.path, &format!("block {i} fails its CRC")));
        }
        Ok(())
    }

    fn read_block(&self, i: usize) -> Result<(Vec<u8>, Vec<Entry>), StoreError> {
        let bytes = self.block_bytes(i)?;
        let entries = parse_block(&bytes)
            .ok_or_else(|| corrupt(&self.path, &format!("block {i} does not parse")))?;
        Ok((bytes, entries))
    }

    /// The entry of `key` in this run, once its filter has passed it; its block is read into
    /// `bytes`.
    fn find(&self, key: &[u8], bytes: &mut Vec<u8>) -> Result<Found, StoreError> {
        let layout = &self.layout;
        if key > &layout.last[..] {
            return Ok(Found::Absent);
        }
        let Some(block) = layout.blocks_starting_before(key, true).checked_sub(1) else {
            return Ok(Found::Absent);
        };
        self.read_block_into(block, bytes)?;
        let mut pos = 0;
        while pos < bytes.len() {
            let (k, v) = next_entry(bytes, &mut pos)
                .ok_or_else(|| corrupt(&self.path, &format!("block {block} does not parse")))?;
            match bytes[k].cmp(key) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Equal => {
                    return Ok(match v {
                        Some(v) => Found::Value(v),
                        None => Found::Removed,
                    });
                }
            }
        }
        Ok(Found::Absent)
    }

    fn open(dir: &Path, number: u64) -> Result<Run, Fault> {
        let path = run_path(dir, number);
        let file = File::open(&path).map_err(|e| io_fault(&path, e))?;
        let bytes = file.metadata().map_err(|e| io_fault(&path, e))?.len();
        if bytes < FOOTER_LEN {
            return Err(damaged(&path, "shorter than its footer"));
        }
        let mut footer = [0u8; FOOTER_LEN as usize];
        file.read_exact_at(&mut footer, bytes - FOOTER_LEN)
            .map_err(|e| io_fault(&path, e))?;
        let word =
            |i: usize| u64::from_le_bytes(footer[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let (magic, blocks, entries, index_at, index_len, bloom_at, bloom_bits, check) = (
            word(0),
            word(1),
            word(2),
            word(3),
            word(4),
            word(5),
            word(6),
            word(7),
        );
        if magic != RUN_MAGIC {
            return Err(damaged(&path, "not a view run"));
        }
        if index_at.checked_add(index_len) != Some(bloom_at)
            || bloom_bits == 0
            || bloom_bits % LINE_BITS != 0
            || bloom_at.checked_add(bloom_bits / 8) != Some(bytes - FOOTER_LEN)
        {
            return Err(damaged(&path, "its footer does not fit the file"));
        }
        let mut meta = vec![0u8; (bytes - FOOTER_LEN - index_at) as usize];
        file.read_exact_at(&mut meta, index_at)
            .map_err(|e| io_fault(&path, e))?;
        if table_check(&meta, &footer[..56]) != check {
            return Err(damaged(&path, "its block list or filter fails the check"));
        }
        let (index, bloom_bytes) = meta.split_at(index_len as usize);
        let mut run = Layout {
            fences: Vec::new(),
            fence_ends: Vec::with_capacity(blocks as usize),
            shared: 0,
            heads: Vec::new(),
            blocks: Vec::with_capacity(blocks as usize),
            bloom: LineBloom::from_le_bytes(bloom_bytes)
                .ok_or_else(|| damaged(&path, "its filter is not whole lines"))?,
            entries,
            last: Vec::new(),
        };
        let mut pos = 0;
        let bad = || damaged(&path, "its block list does not parse");
        for _ in 0..blocks {
            let len =
                usize::try_from(get_varint(index, &mut pos).ok_or_else(bad)?).map_err(|_| bad())?;
            let end = pos.checked_add(len).ok_or_else(bad)?;
            let fence = index.get(pos..end).ok_or_else(bad)?;
            pos = end;
            let rest = index.get(pos..pos + 16).ok_or_else(bad)?;
            pos += 16;
            run.fences.extend_from_slice(fence);
            run.fence_ends.push(run.fences.len());
            run.blocks.push((
                u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")),
                u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")),
                u32::from_le_bytes(rest[12..].try_into().expect("4 bytes")),
            ));
        }
        if blocks > 0 {
            let len =
                usize::try_from(get_varint(index, &mut pos).ok_or_else(bad)?).map_err(|_| bad())?;
            let end = pos.checked_add(len).ok_or_else(bad)?;
            run.last = index.get(pos..end).ok_or_else(bad)?.to_vec();
            pos = end;
        }
        if pos != index.len() {
            return Err(bad());
        }
        run.index_fences();
        Ok(Run {
            number,
            path,
            file,
            bytes,
            layout: run,
        })
    }
}

/// Writes a run: entries in key order.
struct RunWriter {
    number: u64,
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    block: Vec<u8>,
    block_first: Vec<u8>,
    /// The run's in-memory part, as it is written; the block list and filter after the
    /// blocks are written from it at the end, not kept twice while a large merge runs.
    layout: Layout,
}

impl RunWriter {
    /// `expected`: at most how many entries will be pushed (sizes the Bloom filter).
    fn create(dir: &Path, number: u64, expected: u64) -> Result<RunWriter, StoreError> {
        let path = run_path(dir, number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| storage(format!("{}: {e}", path.display())))?;
        Ok(RunWriter {
            number,
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            offset: 0,
            block: Vec::with_capacity(2 * BLOCK_BYTES),
            block_first: Vec::new(),
            layout: Layout::empty(expected),
        })
    }

    fn push(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        let len = key.len() + value.map_or(0, <[u8]>::len) + 10;
        if !self.block.is_empty() && self.block.len() + len > BLOCK_BYTES {
            self.close_block()?;
        }
        if self.block.is_empty() {
            self.block_first.clear();
            self.block_first.extend_from_slice(key);
        }
        put_varint(&mut self.block, key.len() as u64);
        put_varint(&mut self.block, value.map_or(0, |v| v.len() as u64 + 1));
        self.block.extend_from_slice(key);
        if let Some(v) = value {
            self.block.extend_from_slice(v);
        }
        let layout = &mut self.layout;
        layout.last.clear();
        layout.last.extend_from_slice(key);
        layout.bloom.insert(key_hashes(key));
        layout.entries += 1;
        Ok(())
    }

    fn close_block(&mut self) -> Result<(), StoreError> {
        let crc = crc32fast::hash(&self.block);
        let len =
            u32::try_from(self.block.len()).map_err(|_| storage("a view block passed 4 GiB"))?;
        self.out.write_all(&self.block).map_err(storage)?;
        let layout = &mut self.layout;
        layout.fences.extend_from_slice(&self.block_first);
        layout.fence_ends.push(layout.fences.len());
        layout.blocks.push((self.offset, len, crc));
        self.offset += u64::from(len);
        self.block.clear();
        Ok(())
    }

    /// Writes the block list, filter and footer, and fsyncs the file. They go out in pieces,
    /// hashed as they go, rather than gathered first: at the end of a large merge that was a
    /// second copy of every fence and of the filter.
    fn finish(mut self) -> Result<Run, StoreError> {
        if !self.block.is_empty() {
            self.close_block()?;
        }
        let index_at = self.offset;
        let mut meta = MetaWriter {
            out: &mut self.out,
            check: blake3::Hasher::new(),
            piece: Vec::with_capacity(2 * META_PIECE),
            written: 0,
        };
        let layout = &mut self.layout;
        for (i, &(offset, len, crc)) in layout.blocks.iter().enumerate() {
            let fence = layout.fence(i);
            put_varint(&mut meta.piece, fence.len() as u64);
            meta.piece.extend_from_slice(fence);
            meta.piece.extend_from_slice(&offset.to_le_bytes());
            meta.piece.extend_from_slice(&len.to_le_bytes());
            meta.piece.extend_from_slice(&crc.to_le_bytes());
            meta.pass()?;
        }
        if !layout.blocks.is_empty() {
            // After the block list: the greatest key, so a lookup past it reads nothing.
            put_varint(&mut meta.piece, layout.last.len() as u64);
            meta.piece.extend_from_slice(&layout.last);
        }
        meta.write_piece()?;
        let index_len = meta.written;
        let lines = layout.bloom.lines();
        for from in (0..lines).step_by(META_PIECE / 64) {
            layout
                .bloom
                .write_lines_le(from..(from + META_PIECE / 64).min(lines), &mut meta.piece);
            meta.write_piece()?;
        }
        let meta_len = meta.written;
        let mut check = meta.check;
        let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
        for w in [
            RUN_MAGIC,
            layout.blocks.len() as u64,
            layout.entries,
            index_at,
            index_len,
            index_at + index_len,
            layout.bloom.bits(),
        ] {
            footer.extend_from_slice(&w.to_le_bytes());
        }
        check.update(&footer);
        footer.extend_from_slice(&table_check_of(&check).to_le_bytes());
        self.out.write_all(&footer).map_err(storage)?;
        let file = self.out.into_inner().map_err(|e| storage(e.error()))?;
        file.sync_data().map_err(storage)?;
        let bytes = index_at + meta_len + FOOTER_LEN;
        // Held for the run's life: no room left over from growing.
        layout.fences.shrink_to_fit();
        layout.fence_ends.shrink_to_fit();
        layout.blocks.shrink_to_fit();
        self.layout.index_fences();
        Ok(Run {
            number: self.number,
            path: self.path,
            file,
            bytes,
            layout: self.layout,
        })
    }
}

/// How much of a run's block list and filter is gathered before it is written.
const META_PIECE: usize = 64 << 10;

/// Writes a run's block list and filter in pieces, hashing them for the footer's check.
struct MetaWriter<'w> {
    out: &'w mut BufWriter<File>,
    check: blake3::Hasher,
    piece: Vec<u8>,
    /// Bytes written so far.
    written: u64,
}

impl MetaWriter<'_> {
    /// Writes the piece once it is large enough.
    fn pass(&mut self) -> Result<(), StoreError> {
        if self.piece.len() >= META_PIECE {
            self.write_piece()?;
        }
        Ok(())
    }

    fn write_piece(&mut self) -> Result<(), StoreError> {
        self.out.write_all(&self.piece).map_err(storage)?;
        self.check.update(&self.piece);
        self.written += self.piece.len() as u64;
        self.piece.clear();
        Ok(())
    }
}

/// Walks one run's entries from a bound, block by block, forwards or backwards.
struct RunCursor<'r> {
    run: &'r Run,
    rev: bool,
    /// The block loaded (its index), its bytes and entries, and the position in it: the next
    /// entry forwards is `entries[pos]`, backwards `entries[pos - 1]`.
    block: usize,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    pos: usize,
    /// Not loaded yet: the first load happens at the first peek (errors surface there).
    start: Option<(Vec<u8>, Option<Vec<u8>>)>,
    done: bool,
}

impl<'r> RunCursor<'r> {
    fn new(run: &'r Run, from: &[u8], to: Option<&[u8]>, rev: bool) -> RunCursor<'r> {
        RunCursor {
            run,
            rev,
            block: 0,
            bytes: Vec::new(),
            entries: Vec::new(),
            pos: 0,
            start: Some((from.to_vec(), to.map(<[u8]>::to_vec))),
            done: run.layout.blocks.is_empty(),
        }
    }

    fn load(&mut self, block: usize) -> Result<(), StoreError> {
        let (bytes, entries) = self.run.read_block(block)?;
        self.block = block;
        self.bytes = bytes;
        self.entries = entries;
        Ok(())
    }

    /// Positions the cursor at its bound, once.
    fn begin(&mut self) -> Result<(), StoreError> {
        let Some((from, to)) = self.start.take() else {
            return Ok(());
        };
        if self.done {
            return Ok(());
        }
        if self.rev {
            let before = match &to {
                Some(to) => self.run.layout.blocks_starting_before(to, false),
                None => self.run.layout.blocks.len(),
            };
            let Some(block) = before.checked_sub(1) else {
                self.done = true;
                return Ok(());
            };
            self.load(block)?;
            self.pos = match &to {
                Some(to) => self
                    .entries
                    .partition_point(|(k, _)| self.bytes[k.clone()] < to[..]),
                None => self.entries.len(),
            };
        } else if from[..] > self.run.layout.last[..] {
            self.done = true;
        } else {
            let block = self
                .run
                .layout
                .blocks_starting_before(&from, true)
                .saturating_sub(1);
            self.load(block)?;
            self.pos = self
                .entries
                .partition_point(|(k, _)| self.bytes[k.clone()] < from[..]);
        }
        Ok(())
    }

    /// Makes the next entry available (loading blocks as needed); false at the end.
    fn ready(&mut self) -> Result<bool, StoreError> {
        self.begin()?;
        while !self.done {
            if self.rev {
                if self.pos > 0 {
                    return Ok(true);
                }
                if self.block == 0 {
                    self.done = true;
                } else {
                    self.load(self.block - 1)?;
                    self.pos = self.entries.len();
                }
            } else {
                if self.pos < self.entries.len() {
                    return Ok(true);
                }
                if self.block + 1 >= self.run.layout.blocks.len() {
                    self.done = true;
                } else {
                    self.load(self.block + 1)?;
                    self.pos = 0;
                }
            }
        }
        Ok(false)
    }

    /// The next entry; call only after `ready` returned true.
    fn current(&self) -> (&[u8], Option<&[u8]>) {
        let (k, v) = &self.entries[if self.rev { self.pos - 1 } else { self.pos }];
        (&self.bytes[k.clone()], v.clone().map(|v| &self.bytes[v]))
    }

    fn advance(&mut self) {
        if self.rev {
            self.pos -= 1;
        } else {
            self.pos += 1;
        }
    }
}

type MemEntry<'a> = (&'a Vec<u8>, &'a Option<Vec<u8>>);
type MemIter<'a> = Box<dyn Iterator<Item = MemEntry<'a>> + 'a>;
/// Takes each merged key and its newest value (`None` = removed); false stops the merge.
type Emit<'e> = dyn FnMut(&[u8], Option<&[u8]>) -> Result<bool, StoreError> + 'e;

/// One sorted source of a merge: the memory table's range, or a run.
enum Source<'a> {
    Mem {
        iter: MemIter<'a>,
        head: Option<MemEntry<'a>>,
    },
    Run(RunCursor<'a>),
}

impl<'a> Source<'a> {
    fn mem(mut iter: MemIter<'a>) -> Source<'a> {
        let head = iter.next();
        Source::Mem { iter, head }
    }

    fn ready(&mut self) -> Result<bool, StoreError> {
        match self {
            Source::Mem { head, .. } => Ok(head.is_some()),
            Source::Run(c) => c.ready(),
        }
    }

    /// The next entry; only after `ready` returned true.
    fn current(&self) -> (&[u8], Option<&[u8]>) {
        match self {
            Source::Mem { head, .. } => {
                let (k, v) = head.expect("ready");
                (k, v.as_deref())
            }
            Source::Run(c) => c.current(),
        }
    }

    fn advance(&mut self) {
        match self {
            Source::Mem { iter, head } => *head = iter.next(),
            Source::Run(c) => c.advance(),
        }
    }
}

/// Merges sources (newest first: an equal key's newest entry wins) within `from <= key < to`,
/// in key order or in reverse, giving `emit` each key once with its newest value (`None` =
/// removed) until it returns false.
fn merge(
    sources: &mut [Source<'_>],
    from: &[u8],
    to: Option<&[u8]>,
    rev: bool,
    emit: &mut Emit<'_>,
) -> Result<(), StoreError> {
    let mut key = Vec::new();
    let mut live = vec![true; sources.len()];
    loop {
        let mut winner: Option<usize> = None;
        for i in 0..sources.len() {
            if !live[i] {
                continue;
            }
            if !sources[i].ready()? {
                live[i] = false;
                continue;
            }
            let k = sources[i].current().0;
            let in_range = if rev {
                k >= from
            } else {
                to.is_none_or(|to| k < to)
            };
            if !in_range {
                live[i] = false;
                continue;
            }
            winner = match winner {
                None => Some(i),
                Some(w) => {
                    let wk = sources[w].current().0;
                    // Newest first: on a tie the earlier source stays the winner.
                    if (rev && k > wk) || (!rev && k < wk) {
                        Some(i)
                    } else {
                        Some(w)
                    }
                }
            };
        }
        let Some(w) = winner else {
            return Ok(());
        };
        let (k, v) = sources[w].current();
        key.clear();
        key.extend_from_slice(k);
        if !emit(k, v)? {
            return Ok(());
        }
        for i in 0..sources.len() {
            if live[i] && sources[i].current().0 == key.as_slice() {
                sources[i].advance();
            }
        }
    }
}

/// Loads the manifest and its runs: `None` when there is no manifest.
#[allow(clippy::type_complexity)]
fn load(dir: &Path) -> Result<Option<(Option<Meta>, Vec<Arc<Run>>, u64)>, Fault> {
    let path = dir.join(MANIFEST);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_fault(&path, e)),
    };
    let bad = || damaged(&path, "it does not parse");
    if bytes.len() < 8 + 8 {
        return Err(bad());
    }
    let (body, check) = bytes.split_at(bytes.len() - 8);
    if blake3::hash(body).as_bytes()[..8] != *check {
        return Err(damaged(&path, "it fails its check"));
    }
    let word = |i: usize| -> Result<u64, Fault> {
        Ok(u64::from_le_bytes(
            body.get(i..i + 8)
                .ok_or_else(bad)?
                .try_into()
                .expect("8 bytes"),
        ))
    };
    if word(0)? != MANIFEST_MAGIC {
        return Err(bad());
    }
    let version = u32::try_from(word(8)?).map_err(|_| bad())?;
    let checkpoint = word(16)?;
    let rebuilding = word(24)? != 0;
    let next_run = word(32)?;
    let count = word(40)?;
    if count.checked_mul(8).and_then(|c| c.checked_add(48)) != Some(body.len() as u64) {
        return Err(bad());
    }
    let mut runs = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        runs.push(Arc::new(Run::open(dir, word(48 + 8 * i)?)?));
    }
    let meta = Meta {
        version,
        checkpoint,
        rebuilding,
    };
    Ok(Some((Some(meta), runs, next_run)))
}

fn write_manifest(
    dir: &Path,
    meta: Option<Meta>,
    runs: &[Arc<Run>],
    next_run: u64,
) -> Result<(), StoreError> {
    let Some(meta) = meta else {
        return Err(StoreError::Invalid(
            "a view is flushed before its meta is set".into(),
        ));
    };
    let mut body = Vec::new();
    for w in [
        MANIFEST_MAGIC,
        u64::from(meta.version),
        meta.checkpoint,
        u64::from(meta.rebuilding),
        next_run,
        runs.len() as u64,
    ] {
        body.extend_from_slice(&w.to_le_bytes());
    }
    for r in runs {
        body.extend_from_slice(&r.number.to_le_bytes());
    }
    let check = blake3::hash(&body);
    body.extend_from_slice(&check.as_bytes()[..8]);
    replace_file(dir, MANIFEST, &body, true)
}

/// Removes run files the manifest does not list (a flush or merge a crash interrupted), and
/// everything when there is no valid manifest.
fn remove_files_except(dir: &Path, keep: &[u64], has_manifest: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let listed = name
            .strip_prefix("run-")
            .and_then(|n| n.strip_suffix(".view"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| keep.contains(&n));
        if listed || (has_manifest && name == MANIFEST) {
            continue;
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

#[cfg(test)]
#[path = "viewdb_tests.rs"]
mod tests;
