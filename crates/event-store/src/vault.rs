//! The key vault: per-subject data keys in a sled database of their own, separate from the log.
//! Personal data is sealed with XChaCha20-Poly1305 under the subject's key; shredding destroys
//! the key so every sealed field of that subject opens as [`Opened::Erased`], while the log and
//! its hash chain stay untouched (DESIGN §5.6).
//!
//! Keys are per (tenant, subject, generation): a subject seen again after shredding gets a new
//! generation, and what was sealed under the old one stays erased.
//!
//! Data keys are stored wrapped under a [`MasterKey`], bound to their slot, never in the clear.
//! sled is log-structured, so a shredded key's wrapped bytes survive in old log segments until
//! [`Vault::compact`] rewrites the vault into a fresh database and deletes the old one.

mod layout;
mod master_key;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::StoreError;
use crate::store::storage;
use layout::Place;
pub use master_key::MasterKey;

/// A field sealed under a subject's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedField {
    pub key_generation: u32,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// What opening a sealed field yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Clear(Vec<u8>),
    /// The subject's key was shredded at this instant (microseconds since the Unix epoch).
    Erased {
        shredded_at_micros: i64,
    },
}

/// Per-subject data keys, sealing and shredding.
pub struct Vault {
    /// The vault directory: `CURRENT` and the `gen-*` database directories.
    root: PathBuf,
    /// Wraps and unwraps data keys.
    master: XChaCha20Poly1305,
    /// The live database; swapped whole by [`Vault::compact`].
    inner: RwLock<Inner>,
    /// Keys were created since the last [`Vault::sync`].
    dirty: AtomicBool,
    /// Serialises key creation, cache fills, shredding and compaction (reads and cache hits
    /// stay concurrent), so a shred can never be followed by a cache fill of the key it
    /// destroyed, and no key changes while compaction copies the database.
    write_lock: Mutex<()>,
    /// Serialises [`Vault::sync`], so a caller never returns before a flush that another
    /// caller started (after taking the `dirty` flag) has finished.
    sync_lock: Mutex<()>,
    /// Live keys by (tenant, subject), so sealing on the ingest path does not read sled.
    cache: RwLock<HashMap<String, SubjectKeys>>,
    /// Shreds that destroyed a key since the last compaction (or open).
    shreds: AtomicU64,
}

/// The live sled database and where it lives.
struct Inner {
    db: sled::Db,
    keys: sled::Tree,
    db_file: PathBuf,
    place: Place,
}

/// A tenant's cached live keys: subject → (generation, cipher).
type SubjectKeys = HashMap<String, (u32, XChaCha20Poly1305)>;

/// Most subjects whose live key is cached; the cache is emptied when it grows past this.
const CACHE_LIMIT: usize = 100_000;

/// sled's page cache for a vault database. sled counts what it caches by its size on disk and
/// holds several times that in memory: at 16 MiB a heap profile of the consent service 4M
/// events into 1M subjects found ~86 MB under the vault's sled, and 10M events peaked at
/// 325 MiB RSS; at 8 MiB the peak was 266 MiB, at 4 MiB 239. Below 8 a small vault (tens of
/// thousands of subjects) no longer stays cached and ingest slows (README → Performance).
/// Sealing reads the vault only for subjects missing from the vault's own key cache.
const VAULT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Whether this build left poly1305 its AVX2 code, whose per-message setup makes sealing and
/// opening short fields about 3× slower: true when `.cargo/config.toml`'s
/// `--cfg poly1305_force_soft` was lost (a `RUSTFLAGS` variable replaces it).
pub const SLOW_SEAL_BUILD: bool = cfg!(all(
    any(target_arch = "x86", target_arch = "x86_64"),
    not(poly1305_force_soft)
));

const KEYS_TREE: &str = "keys";
/// Entries per batch when compaction copies a tree (bounds its memory, not its atomicity:
/// the copy only becomes live once complete).
const COPY_BATCH: usize = 4096;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// `[LIVE, key(32)]`: a data key in the clear, as written before wrapping; rewrapped at open.
const LIVE: u8 = 1;
/// `[SHREDDED, at_micros(8)]`.
const SHREDDED: u8 = 2;
/// `[LIVE_WRAPPED, nonce(24), ciphertext(32 + 16)]`: a data key wrapped under the master key.
const LIVE_WRAPPED: u8 = 3;

/// The slot of the master key check: an AEAD of [`CHECK_PLAINTEXT`] under the master key, so a
/// vault opened with another key fails at open rather than at the first field.
const CHECK_SLOT: &[u8] = b"m";
const CHECK_PLAINTEXT: &[u8] = b"privacy-event-store vault master key check v1";

fn subject_key(tenant: &str, subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + subject.len() + 2);
    k.push(b'c');
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(subject.as_bytes());
    k
}

fn generation_key(tenant: &str, subject: &str, generation: u32) -> Vec<u8> {
    let mut k = subject_key(tenant, subject);
    k[0] = b'g';
    k.push(0);
    k.extend_from_slice(&generation.to_be_bytes());
    k
}

/// Every slot holding a generation's key starts with this.
const GENERATION_PREFIX: &[u8] = b"g";

fn aad(tenant: &str, subject: &str, field: &str, generation: u32) -> Vec<u8> {
    let mut a = Vec::new();
    for part in [tenant.as_bytes(), subject.as_bytes(), field.as_bytes()] {
        a.extend_from_slice(&(part.len() as u32).to_be_bytes());
        a.extend_from_slice(part);
    }
    a.extend_from_slice(&generation.to_be_bytes());
    a
}

/// The AAD of a wrapped data key: its slot, which names tenant, subject and generation, so a
/// wrapped key copied into another slot does not unwrap. The label keeps it apart from any
/// field's AAD.
fn wrap_aad(slot: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(slot.len() + 12);
    for part in [b"\0key".as_slice(), slot] {
        a.extend_from_slice(&(part.len() as u32).to_be_bytes());
        a.extend_from_slice(part);
    }
    a
}

/// A generation slot's value, decoded but not unwrapped.
enum Stored<'a> {
    Legacy(&'a [u8]),
    /// `nonce || ciphertext`, as [`Vault::master_seal`] makes it.
    Wrapped(&'a [u8]),
    Shredded {
        at_micros: i64,
    },
}

fn decode(v: &[u8]) -> Result<Stored<'_>, StoreError> {
    let malformed = || StoreError::Crypto("a vault entry is malformed".into());
    match v.split_first() {
        Some((&LIVE, key)) if key.len() == KEY_LEN => Ok(Stored::Legacy(key)),
        Some((&LIVE_WRAPPED, sealed)) if sealed.len() == NONCE_LEN + KEY_LEN + TAG_LEN => {
            Ok(Stored::Wrapped(sealed))
        }
        Some((&SHREDDED, at)) => <[u8; 8]>::try_from(at)
            .map(|at| Stored::Shredded {
                at_micros: i64::from_be_bytes(at),
            })
            .map_err(|_| malformed()),
        _ => Err(malformed()),
    }
}

/// A generation slot's key, once unwrapped.
enum Slot {
    Live(Vec<u8>),
    Shredded { at_micros: i64 },
}

impl Inner {
    fn open(root: &Path, place: Place) -> Result<Inner, StoreError> {
        let dir = place.dir(root);
        // The vault's values are small (nothing lands in `blobs/`) and few are hot: a small
        // page cache, not sled's default 1 GiB.
        let db = crate::store::open_sled(
            sled::Config::new()
                .path(&dir)
                .cache_capacity(VAULT_CACHE_BYTES),
            &dir,
        )?;
        let keys = db.open_tree(KEYS_TREE).map_err(storage)?;
        Ok(Inner {
            db,
            keys,
            db_file: dir.join("db"),
            place,
        })
    }

    /// Flushes sled and fdatasyncs its file.
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(storage)?;
        File::open(&self.db_file)
            .and_then(|f| f.sync_data())
            .map_err(storage)
    }
}

impl Vault {
    /// Opens (or creates) the vault in `dir` (never the log's directory) with the master key
    /// that wraps its data keys. Fails if `master` is not the key the vault was created with.
    ///
    /// A vault written before wrapping (a sled database directly in `dir`, keys in the clear)
    /// is migrated: every key is wrapped, then the vault is compacted into `gen-00000001` and
    /// the old files are deleted, so no clear key bytes remain.
    pub fn open(dir: impl AsRef<Path>, master: &MasterKey) -> Result<Vault, StoreError> {
        let root = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(storage)?;
        let place = layout::locate(&root)?;
        let vault = Vault {
            inner: RwLock::new(Inner::open(&root, place)?),
            root,
            master: master.cipher(),
            dirty: AtomicBool::new(false),
            write_lock: Mutex::new(()),
            sync_lock: Mutex::new(()),
            cache: RwLock::new(HashMap::new()),
            shreds: AtomicU64::new(0),
        };
        vault.check_master_key()?;
        let rewrapped = vault.wrap_legacy_keys()?;
        vault.sync()?;
        if place == Place::Legacy || rewrapped > 0 {
            vault.compact()?;
        }
        Ok(vault)
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, slot: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.read().keys.get(slot).map_err(storage)
    }

    /// Verifies the check value against `master`, or writes one if the vault has none (new, or
    /// written before the check existed) after making sure no wrapped key contradicts it.
    fn check_master_key(&self) -> Result<(), StoreError> {
        let mismatch = || {
            StoreError::Crypto(format!(
                "the master key does not match this vault ({}): it was created with another key",
                self.root.display()
            ))
        };
        if let Some(check) = self.get(CHECK_SLOT)? {
            return match self.master_open(CHECK_SLOT, &check) {
                Some(plain) if plain == CHECK_PLAINTEXT => Ok(()),
                _ => Err(mismatch()),
            };
        }
        if self.stored_keys_refuse_the_master_key()? {
            return Err(mismatch());
        }
        let check = self.master_seal(CHECK_SLOT, CHECK_PLAINTEXT)?;
        self.read()
            .keys
            .insert(CHECK_SLOT, check)
            .map_err(storage)?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the master key fails to unwrap the first wrapped key found (false if none).
    fn stored_keys_refuse_the_master_key(&self) -> Result<bool, StoreError> {
        for entry in self.read().keys.scan_prefix(GENERATION_PREFIX) {
            let (slot, v) = entry.map_err(storage)?;
            if let Ok(Stored::Wrapped(sealed)) = decode(&v) {
                return Ok(self.unwrap_key(&slot, sealed).is_err());
            }
        }
        Ok(false)
    }

    /// Wraps every key stored in the clear (written before wrapping), in one batch; how many.
    /// Their clear bytes stay in sled's old segments until the caller compacts.
    fn wrap_legacy_keys(&self) -> Result<usize, StoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let inner = self.read();
        let mut batch = sled::Batch::default();
        let mut wrapped = 0;
        for entry in inner.keys.scan_prefix(GENERATION_PREFIX) {
            let (slot, v) = entry.map_err(storage)?;
            if let Ok(Stored::Legacy(key)) = decode(&v) {
                batch.insert(&slot, self.wrap_key(&slot, key)?);
                wrapped += 1;
            }
        }
        if wrapped > 0 {
            inner.keys.apply_batch(batch).map_err(storage)?;
            self.dirty.store(true, Ordering::Release);
        }
        Ok(wrapped)
    }

    /// `nonce || AEAD(master, msg)`, bound to `slot`.
    fn master_seal(&self, slot: &[u8], msg: &[u8]) -> Result<Vec<u8>, StoreError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .master
            .encrypt(
                &nonce,
                Payload {
                    msg,
                    aad: &wrap_aad(slot),
                },
            )
            .map_err(|_| StoreError::Crypto("sealing under the master key failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// What [`Vault::master_seal`] sealed for `slot`; `None` if it does not authenticate
    /// (another master key, another slot, or damaged).
    fn master_open(&self, slot: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.master
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &wrap_aad(slot),
                },
            )
            .ok()
    }

    /// `[LIVE_WRAPPED, nonce, AEAD(master, key)]`, bound to the key's slot.
    fn wrap_key(&self, slot: &[u8], key: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut value = vec![LIVE_WRAPPED];
        value.extend_from_slice(&self.master_seal(slot, key)?);
        Ok(value)
    }

    fn unwrap_key(&self, slot: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.master_open(slot, sealed)
            .filter(|key| key.len() == KEY_LEN)
            .ok_or_else(|| {
                StoreError::Crypto("a stored data key does not unwrap under the master key".into())
            })
    }

    /// What a generation slot holds, unwrapped; `None` if it is empty.
    fn read_slot(&self, slot: &[u8]) -> Result<Option<Slot>, StoreError> {
        let Some(v) = self.get(slot)? else {
            return Ok(None);
        };
        match decode(&v)? {
            Stored::Wrapped(sealed) => Ok(Some(Slot::Live(self.unwrap_key(slot, sealed)?))),
            Stored::Shredded { at_micros } => Ok(Some(Slot::Shredded { at_micros })),
            // Open wraps them all; one here was written behind the vault's back.
            Stored::Legacy(_) => Err(StoreError::Crypto(
                "a data key is stored unwrapped; reopen the vault to wrap it".into(),
            )),
        }
    }

    fn current_generation(&self, tenant: &str, subject: &str) -> Result<Option<u32>, StoreError> {
        self.get(&subject_key(tenant, subject))?
            .map(|v| {
                <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Crypto("a vault entry is malformed".into()))
            })
            .transpose()
    }

    fn cached(&self, tenant: &str, subject: &str) -> Option<(u32, XChaCha20Poly1305)> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .and_then(|subjects| subjects.get(subject))
            .cloned()
    }

    fn live_key(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<(u32, XChaCha20Poly1305), StoreError> {
        if let Some(hit) = self.cached(tenant, subject) {
            return Ok(hit);
        }
        // Under the write lock: a shred either finished before (and the key read below is the
        // new generation) or starts after the cache holds the key (and removes it).
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let found = self.load_or_create_key_locked(tenant, subject)?;
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let subjects = cache.entry(tenant.to_owned()).or_default();
        if subjects.len() >= CACHE_LIMIT {
            subjects.clear();
        }
        subjects.insert(subject.to_owned(), found.clone());
        Ok(found)
    }

    /// The subject's live key, created if it has none; the caller holds `write_lock`.
    fn load_or_create_key_locked(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<(u32, XChaCha20Poly1305), StoreError> {
        let current = self.current_generation(tenant, subject)?;
        if let Some(generation) = current
            && let Some(Slot::Live(key)) =
                self.read_slot(&generation_key(tenant, subject, generation))?
        {
            return Ok((generation, cipher(&key)?));
        }
        let generation = match current {
            None => 1,
            Some(g) => g.checked_add(1).ok_or_else(|| {
                StoreError::Crypto(format!("{tenant}/{subject} has no key generation left"))
            })?,
        };
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let slot = generation_key(tenant, subject, generation);
        // Two inserts, key first, not one `apply_batch`: sled writes out its I/O buffer on
        // every batch (about 40 µs per new key, most of a new subject's ingest). A crash
        // between them is harmless either way: nothing sealed with this key is stored before
        // the next `sync`, and a pointer whose key is missing (or a key without its pointer)
        // only makes the next creation take the following generation (or write over it).
        let inner = self.read();
        inner
            .keys
            .insert(slot.as_slice(), self.wrap_key(&slot, &key)?)
            .map_err(storage)?;
        inner
            .keys
            .insert(subject_key(tenant, subject), &generation.to_be_bytes())
            .map_err(storage)?;
        drop(inner);
        self.dirty.store(true, Ordering::Release);
        Ok((generation, XChaCha20Poly1305::new(&key)))
    }

    /// Seals `plaintext` of `field` under the subject's current key, creating one if needed.
    /// Call [`Vault::sync`] before storing anything sealed, so no event outlives its key's birth.
    pub fn seal(
        &self,
        tenant: &str,
        subject: &str,
        field: &str,
        plaintext: &[u8],
    ) -> Result<SealedField, StoreError> {
        let (generation, cipher) = self.live_key(tenant, subject)?;
        // A thread-local CSPRNG seeded from the OS: no system call per nonce.
        let nonce = XChaCha20Poly1305::generate_nonce(&mut rand::thread_rng());
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad(tenant, subject, field, generation),
                },
            )
            .map_err(|_| StoreError::Crypto("sealing failed".into()))?;
        Ok(SealedField {
            key_generation: generation,
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a sealed field; a shredded key yields [`Opened::Erased`].
    pub fn open_field(
        &self,
        tenant: &str,
        subject: &str,
        field: &str,
        sealed: &SealedField,
    ) -> Result<Opened, StoreError> {
        // The cache only ever holds live keys (a shred removes its entry before destroying the
        // key), so a hit for this generation spares a read and an unwrap.
        let cipher = match self.cached(tenant, subject) {
            Some((generation, cipher)) if generation == sealed.key_generation => cipher,
            _ => match self.read_slot(&generation_key(tenant, subject, sealed.key_generation))? {
                None => {
                    return Err(StoreError::Crypto(format!(
                        "no key generation {} for {tenant}/{subject}",
                        sealed.key_generation
                    )));
                }
                Some(Slot::Shredded { at_micros }) => {
                    return Ok(Opened::Erased {
                        shredded_at_micros: at_micros,
                    });
                }
                Some(Slot::Live(key)) => cipher(&key)?,
            },
        };
        if sealed.nonce.len() != NONCE_LEN {
            return Err(StoreError::Crypto("nonce must be 24 bytes".into()));
        }
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad(tenant, subject, field, sealed.key_generation),
                },
            )
            .map_err(|_| {
                StoreError::Crypto(format!(
                    "field {field} of {tenant}/{subject} does not authenticate"
                ))
            })?;
        Ok(Opened::Clear(plain))
    }

    /// Destroys every key generation of a subject, durably. Idempotent.
    ///
    /// The destroyed keys' wrapped bytes survive in sled's old log segments until
    /// [`Vault::compact`]; a caller should compact after shredding (it rewrites the whole
    /// vault, so at most every so many seconds while [`Vault::shreds_since_compaction`] is
    /// non-zero, rather than after each shred).
    pub fn shred(&self, tenant: &str, subject: &str, at_micros: i64) -> Result<(), StoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(subjects) = self
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(tenant)
        {
            subjects.remove(subject);
        }
        let Some(current) = self.current_generation(tenant, subject)? else {
            return Ok(());
        };
        let mut tomb = vec![SHREDDED];
        tomb.extend_from_slice(&at_micros.to_be_bytes());
        let mut batch = sled::Batch::default();
        let mut destroyed = false;
        for generation in 1..=current {
            let slot = generation_key(tenant, subject, generation);
            // Anything but a tombstone is destroyed, a malformed entry included.
            if let Some(v) = self.get(&slot)?
                && !matches!(decode(&v), Ok(Stored::Shredded { .. }))
            {
                batch.insert(slot, tomb.as_slice());
                destroyed = true;
            }
        }
        if destroyed {
            self.read().keys.apply_batch(batch).map_err(storage)?;
            self.dirty.store(true, Ordering::Release);
        }
        // Even when nothing was left to destroy: a retry after a failed sync must not return
        // before the earlier tombstones are durable.
        self.sync()?;
        if destroyed {
            self.shreds.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// How many shreds destroyed a key since the last [`Vault::compact`] (or since open): a
    /// cheap way for a caller to decide whether compacting is due.
    pub fn shreds_since_compaction(&self) -> u64 {
        self.shreds.load(Ordering::Relaxed)
    }

    /// Rewrites the vault into a fresh sled database and deletes the old one, so no copy of a
    /// shredded (or pre-wrapping) key's bytes remains in the vault's files. Crash-safe: the new
    /// database is complete and durable before `CURRENT` names it, and open removes whichever
    /// of the two a crash left behind. Seals of cached keys and opens go on meanwhile; key
    /// creation and shreds wait.
    pub fn compact(&self) -> Result<(), StoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.read().place.next_generation()?;
        let fresh = self.copy_into(Place::Generation(n))?;
        if let Err(e) = layout::install_current(&self.root, n) {
            // `CURRENT` still names the live database.
            discard(fresh, &self.root);
            return Err(e);
        }
        // `CURRENT` names the fresh database now: use it from here on, whatever follows.
        let old = std::mem::replace(
            &mut *self.inner.write().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        drop(old);
        self.shreds.store(0, Ordering::Relaxed);
        // The rename must be durable before the old database may go.
        layout::sync_dir(&self.root)?;
        layout::remove_stale(&self.root, n)
    }

    /// A durable copy of every tree of the live database at `place`; the caller holds
    /// `write_lock`, so nothing changes while it copies.
    fn copy_into(&self, place: Place) -> Result<Inner, StoreError> {
        let dir = place.dir(&self.root);
        layout::create_generation_dir(&dir)?;
        let fresh = Inner::open(&self.root, place)?;
        let copied = copy_trees(&self.read().db, &fresh.db)
            .and_then(|()| fresh.db.flush().map_err(storage).map(drop))
            .and_then(|()| layout::sync_tree(&dir))
            .and_then(|()| layout::sync_dir(&self.root));
        match copied {
            Ok(()) => Ok(fresh),
            Err(e) => {
                discard(fresh, &self.root);
                Err(e)
            }
        }
    }

    /// Whether the subject has a live key.
    pub fn has_live_key(&self, tenant: &str, subject: &str) -> Result<bool, StoreError> {
        let Some(generation) = self.current_generation(tenant, subject)? else {
            return Ok(false);
        };
        Ok(self
            .get(&generation_key(tenant, subject, generation))?
            .is_some_and(|v| matches!(decode(&v), Ok(Stored::Wrapped(_)))))
    }

    /// Makes created and shredded keys durable (flush + fdatasync); cheap when nothing changed.
    pub fn sync(&self) -> Result<(), StoreError> {
        let _serial = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.read().flush();
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }

    /// The subject's current live data key in the clear. Exists only for tests that prove the
    /// vault's files never hold it.
    #[cfg(any(test, feature = "tamper"))]
    pub fn key_bytes_for_test(&self, tenant: &str, subject: &str) -> Option<Vec<u8>> {
        let generation = self.current_generation(tenant, subject).ok()??;
        match self
            .read_slot(&generation_key(tenant, subject, generation))
            .ok()??
        {
            Slot::Live(key) => Some(key),
            Slot::Shredded { .. } => None,
        }
    }

    /// The bytes stored for the subject's current key generation (wrapped key or tombstone).
    /// Exists only for tests that prove compaction leaves no copy of them.
    #[cfg(any(test, feature = "tamper"))]
    pub fn stored_bytes_for_test(&self, tenant: &str, subject: &str) -> Option<Vec<u8>> {
        let generation = self.current_generation(tenant, subject).ok()??;
        self.get(&generation_key(tenant, subject, generation))
            .ok()?
            .map(|v| v.to_vec())
    }
}

/// Copies every tree, the default one included.
fn copy_trees(from: &sled::Db, to: &sled::Db) -> Result<(), StoreError> {
    for name in from.tree_names() {
        let source = from.open_tree(&name).map_err(storage)?;
        let target = to.open_tree(&name).map_err(storage)?;
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for entry in source.iter() {
            let (k, v) = entry.map_err(storage)?;
            batch.insert(k, v);
            pending += 1;
            if pending == COPY_BATCH {
                target
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(storage)?;
                pending = 0;
            }
        }
        target.apply_batch(batch).map_err(storage)?;
    }
    Ok(())
}

/// Closes a database compaction will not use and removes it, best effort: open removes any
/// generation `CURRENT` does not name anyway.
fn discard(unused: Inner, root: &Path) {
    let dir = unused.place.dir(root);
    drop(unused);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove an unused vault copy");
    }
}

fn cipher(key: &[u8]) -> Result<XChaCha20Poly1305, StoreError> {
    XChaCha20Poly1305::new_from_slice(key)
        .map_err(|_| StoreError::Crypto("a stored data key has the wrong length".into()))
}
