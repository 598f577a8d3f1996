//! Projections: named, versioned views folded from the log. Each lives in its own sled tree
//! whose checkpoint is written in the same atomic batch as the view's changes, so a view never
//! runs ahead of or behind its checkpoint. Views are disposable: rebuilding drops the data and
//! replays the log, and a changed version triggers that at start-up (DESIGN §5.5).
//!
//! In a view tree, data keys start with `d` and the checkpoint lives at `m`:
//! `version u32 | checkpoint u64 | rebuilding u8`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::StoreError;
use crate::record::RecordedEvent;
use crate::store::{EventStore, storage};

/// How many events a projection folds into one atomic view commit.
const APPLY_BATCH: usize = 16_384;
const META_KEY: &[u8] = b"m";
const DATA: u8 = b'd';

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
    tree: &'a sled::Tree,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The tree does not change while a batch is staged, so its last key per prefix is looked
    /// up once.
    tree_last: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>,
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA);
    k.extend_from_slice(key);
    k
}

impl ViewWriter<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = data_key(key);
        if let Some(v) = self.overlay.get(&k) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(k).map_err(storage)?.map(|v| v.to_vec()))
    }

    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.overlay.insert(data_key(key), Some(value));
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.overlay.insert(data_key(key), None);
    }

    /// The greatest key starting with `prefix` (staged or stored, not removed), without the
    /// prefix's data mark.
    pub fn last_with_prefix(&mut self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let start = data_key(prefix);
        let staged = self
            .overlay
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone())
            .last();
        let stored = match self.tree_last.get(&start) {
            Some(cached) => cached.clone(),
            None => {
                let found = match self.tree.scan_prefix(&start).next_back() {
                    Some(kv) => Some(kv.map_err(storage)?.0.to_vec()),
                    None => None,
                };
                self.tree_last.insert(start, found.clone());
                found
            }
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
        let k = data_key(key);
        if !self.overlay.contains_key(&k) {
            let current = self.tree.get(&k).map_err(storage)?.map(|v| v.to_vec());
            self.overlay.insert(k.clone(), current);
        }
        change(self.overlay.get_mut(&k).expect("staged above"));
        Ok(())
    }
}

/// A view entry: key (without the data mark) and value.
pub type ViewEntry = (Vec<u8>, Vec<u8>);

/// A read handle on a view, for queries.
#[derive(Clone)]
pub struct View {
    tree: sled::Tree,
}

impl View {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(data_key(key))
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    /// Every entry whose key starts with `prefix`, in key order (keys without the `d` mark).
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<ViewEntry>, StoreError> {
        self.tree
            .scan_prefix(data_key(prefix))
            .map(|kv| {
                let (k, v) = kv.map_err(storage)?;
                Ok((k[1..].to_vec(), v.to_vec()))
            })
            .collect()
    }
}

/// A projection's state, for `ProjectionStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub name: String,
    pub version: u32,
    /// Last sequence number folded in.
    pub checkpoint: u64,
    /// BLAKE3 over every data key and value: equal digests mean byte-identical views.
    pub digest: [u8; 32],
    pub entries: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    version: u32,
    checkpoint: u64,
    rebuilding: bool,
}

impl Meta {
    fn encode(self) -> Vec<u8> {
        let mut v = self.version.to_be_bytes().to_vec();
        v.extend_from_slice(&self.checkpoint.to_be_bytes());
        v.push(u8::from(self.rebuilding));
        v
    }

    fn decode(v: &[u8]) -> Option<Meta> {
        (v.len() == 13).then(|| Meta {
            version: u32::from_be_bytes(v[..4].try_into().expect("4 bytes")),
            checkpoint: u64::from_be_bytes(v[4..12].try_into().expect("8 bytes")),
            rebuilding: v[12] != 0,
        })
    }
}

struct Slot {
    projection: Arc<dyn Projection>,
    tree: sled::Tree,
    /// Held while folding or rebuilding, so the two never interleave.
    lock: Mutex<()>,
}

/// Runs a service's projections over its store.
#[derive(Clone)]
pub struct Projector {
    store: EventStore,
    entries: Arc<Vec<Slot>>,
}

impl Projector {
    /// Opens every projection's view; one whose stored version differs from the code's, or
    /// whose last rebuild was interrupted, is cleared so that it replays from the start.
    pub fn open(
        store: &EventStore,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Result<Projector, StoreError> {
        let mut entries = Vec::with_capacity(projections.len());
        for projection in projections {
            let tree = store
                .shared
                .db
                .open_tree(format!("view:{}", projection.name()))
                .map_err(storage)?;
            let entry = Slot {
                projection,
                tree,
                lock: Mutex::new(()),
            };
            let meta = read_meta(&entry.tree)?;
            let current = entry.projection.version();
            match meta {
                Some(m) if m.version == current && !m.rebuilding => {}
                Some(m) => {
                    tracing::info!(
                        projection = entry.projection.name(),
                        stored_version = m.version,
                        version = current,
                        interrupted = m.rebuilding,
                        "projection will be rebuilt"
                    );
                    clear(&entry)?;
                }
                None => write_meta(
                    &entry.tree,
                    Meta {
                        version: current,
                        checkpoint: 0,
                        rebuilding: false,
                    },
                )?,
            }
            entries.push(entry);
        }
        Ok(Projector {
            store: store.clone(),
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
            tree: e.tree.clone(),
        })
    }

    fn entry(&self, name: &str) -> Option<&Slot> {
        self.entries.iter().find(|e| e.projection.name() == name)
    }

    /// Folds every committed event not yet applied; returns how many were applied.
    pub async fn catch_up(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for entry in self.entries.iter() {
            let _guard = entry.lock.lock().await;
            total += self.fold_to_head(entry, &mut |_, _| {})?;
        }
        Ok(total)
    }

    /// Waits until every view has folded `seq`, so a command's caller can read its own write.
    /// Returns false when `timeout` passed first.
    pub async fn wait_for(&self, seq: u64, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let caught_up = self.entries.iter().all(|e| {
                read_meta(&e.tree)
                    .ok()
                    .flatten()
                    .is_some_and(|m| m.checkpoint >= seq)
            });
            if caught_up {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Keeps every view up to date until `shutdown` resolves.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        let mut head = self.store.watch_head();
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.catch_up().await {
                tracing::error!(error = %e, "projection fold failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    _ = &mut shutdown => return,
                }
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = &mut shutdown => return,
            }
        }
    }

    /// Drops a view and replays the log into it, calling `progress(applied, target)` per batch.
    pub async fn rebuild(
        &self,
        name: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ProjectionStatus, StoreError> {
        let entry = self
            .entry(name)
            .ok_or_else(|| StoreError::Invalid(format!("no projection named {name:?}")))?;
        let _guard = entry.lock.lock().await;
        clear(entry)?;
        self.fold_to_head(entry, &mut progress)?;
        status_of(entry)
    }

    /// Every projection's status.
    pub fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        self.entries.iter().map(status_of).collect()
    }

    fn fold_to_head(
        &self,
        entry: &Slot,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, StoreError> {
        let head = self.store.head().seq;
        let mut meta = read_meta(&entry.tree)?.unwrap_or(Meta {
            version: entry.projection.version(),
            checkpoint: 0,
            rebuilding: false,
        });
        let mut applied = 0;
        while meta.checkpoint < head {
            let want = ((head - meta.checkpoint) as usize).min(APPLY_BATCH);
            let events = self.store.read(meta.checkpoint + 1, want)?;
            let Some(last) = events.last() else { break };
            let last_seq = last.seq;
            let mut writer = ViewWriter {
                tree: &entry.tree,
                overlay: BTreeMap::new(),
                tree_last: std::collections::HashMap::new(),
            };
            for event in &events {
                entry.projection.apply(event, &mut writer)?;
            }
            meta.checkpoint = last_seq;
            meta.rebuilding = false;
            let mut batch = sled::Batch::default();
            for (k, v) in writer.overlay {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            batch.insert(META_KEY, meta.encode());
            entry.tree.apply_batch(batch).map_err(storage)?;
            applied += events.len() as u64;
            progress(meta.checkpoint, head);
        }
        Ok(applied)
    }
}

fn read_meta(tree: &sled::Tree) -> Result<Option<Meta>, StoreError> {
    Ok(tree
        .get(META_KEY)
        .map_err(storage)?
        .and_then(|v| Meta::decode(&v)))
}

fn write_meta(tree: &sled::Tree, meta: Meta) -> Result<(), StoreError> {
    tree.insert(META_KEY, meta.encode()).map_err(storage)?;
    Ok(())
}

/// Removes a view's data, keeping a `rebuilding` mark until the replay has caught up, so that a
/// crash halfway is seen and redone at the next start.
fn clear(entry: &Slot) -> Result<(), StoreError> {
    write_meta(
        &entry.tree,
        Meta {
            version: entry.projection.version(),
            checkpoint: 0,
            rebuilding: true,
        },
    )?;
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in entry.tree.range(vec![DATA]..vec![DATA + 1]).take(10_000) {
            let (k, _) = kv.map_err(storage)?;
            batch.remove(k);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        entry.tree.apply_batch(batch).map_err(storage)?;
    }
}

fn status_of(entry: &Slot) -> Result<ProjectionStatus, StoreError> {
    let meta = read_meta(&entry.tree)?;
    let mut hasher = blake3::Hasher::new();
    let mut entries = 0;
    for kv in entry.tree.range(vec![DATA]..vec![DATA + 1]) {
        let (k, v) = kv.map_err(storage)?;
        hasher.update(&(k.len() as u32).to_be_bytes());
        hasher.update(&k);
        hasher.update(&(v.len() as u32).to_be_bytes());
        hasher.update(&v);
        entries += 1;
    }
    Ok(ProjectionStatus {
        name: entry.projection.name().to_owned(),
        version: entry.projection.version(),
        checkpoint: meta.map_or(0, |m| m.checkpoint),
        digest: hasher.finalize().into(),
        entries,
    })
}
