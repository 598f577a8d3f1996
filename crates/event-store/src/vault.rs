//! The key vault: per-subject data keys in a sled database of their own, separate from the log.
//! Personal data is sealed with XChaCha20-Poly1305 under the subject's key; shredding destroys
//! the key so every sealed field of that subject opens as [`Opened::Erased`], while the log and
//! its hash chain stay untouched (DESIGN §5.6).
//!
//! Keys are per (tenant, subject, generation): a subject seen again after shredding gets a new
//! generation, and what was sealed under the old one stays erased.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};

use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::StoreError;
use crate::store::storage;

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
    db: sled::Db,
    keys: sled::Tree,
    db_file: PathBuf,
    /// Keys were created since the last [`Vault::sync`].
    dirty: AtomicBool,
    /// Serialises key creation, cache fills and shredding (reads and cache hits stay
    /// concurrent), so a shred can never be followed by a cache fill of the key it destroyed.
    write_lock: Mutex<()>,
    /// Serialises [`Vault::sync`], so a caller never returns before a flush that another
    /// caller started (after taking the `dirty` flag) has finished.
    sync_lock: Mutex<()>,
    /// Live keys by (tenant, subject), so sealing on the ingest path does not read sled.
    cache: RwLock<HashMap<String, SubjectKeys>>,
}

/// A tenant's cached live keys: subject → (generation, cipher).
type SubjectKeys = HashMap<String, (u32, XChaCha20Poly1305)>;

/// Most subjects whose live key is cached; the cache is emptied when it grows past this.
const CACHE_LIMIT: usize = 100_000;

const LIVE: u8 = 1;
const SHREDDED: u8 = 2;

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

fn aad(tenant: &str, subject: &str, field: &str, generation: u32) -> Vec<u8> {
    let mut a = Vec::new();
    for part in [tenant.as_bytes(), subject.as_bytes(), field.as_bytes()] {
        a.extend_from_slice(&(part.len() as u32).to_be_bytes());
        a.extend_from_slice(part);
    }
    a.extend_from_slice(&generation.to_be_bytes());
    a
}

impl Vault {
    /// Opens (or creates) the vault database in `dir` (never the log's directory).
    pub fn open(dir: impl AsRef<Path>) -> Result<Vault, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(storage)?;
        let db = sled::Config::new().path(dir).open().map_err(storage)?;
        let keys = db.open_tree("keys").map_err(storage)?;
        Ok(Vault {
            db,
            keys,
            db_file: dir.join("db"),
            dirty: AtomicBool::new(false),
            write_lock: Mutex::new(()),
            sync_lock: Mutex::new(()),
            cache: RwLock::new(HashMap::new()),
        })
    }

    fn current_generation(&self, tenant: &str, subject: &str) -> Result<Option<u32>, StoreError> {
        Ok(self
            .keys
            .get(subject_key(tenant, subject))
            .map_err(storage)?
            .map(|v| u32::from_be_bytes(v[..4].try_into().expect("4 bytes"))))
    }

    fn live_key(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<(u32, XChaCha20Poly1305), StoreError> {
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .and_then(|subjects| subjects.get(subject))
        {
            return Ok(hit.clone());
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
            && let Some(v) = self
                .keys
                .get(generation_key(tenant, subject, generation))
                .map_err(storage)?
            && v[0] == LIVE
        {
            return Ok((generation, cipher(&v[1..])?));
        }
        let generation = current.map_or(1, |g| g + 1);
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut value = vec![LIVE];
        value.extend_from_slice(&key);
        let mut batch = sled::Batch::default();
        batch.insert(generation_key(tenant, subject, generation), value);
        batch.insert(subject_key(tenant, subject), &generation.to_be_bytes());
        self.keys.apply_batch(batch).map_err(storage)?;
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
        let v = self
            .keys
            .get(generation_key(tenant, subject, sealed.key_generation))
            .map_err(storage)?
            .ok_or_else(|| {
                StoreError::Crypto(format!(
                    "no key generation {} for {tenant}/{subject}",
                    sealed.key_generation
                ))
            })?;
        match v[0] {
            SHREDDED => Ok(Opened::Erased {
                shredded_at_micros: i64::from_be_bytes(v[1..9].try_into().expect("8 bytes")),
            }),
            _ => {
                if sealed.nonce.len() != 24 {
                    return Err(StoreError::Crypto("nonce must be 24 bytes".into()));
                }
                let plain = cipher(&v[1..])?
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
        }
    }

    /// Destroys every key generation of a subject, durably. Idempotent.
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
        let mut batch = sled::Batch::default();
        for generation in 1..=current {
            let k = generation_key(tenant, subject, generation);
            if let Some(v) = self.keys.get(&k).map_err(storage)?
                && v[0] == LIVE
            {
                let mut tomb = vec![SHREDDED];
                tomb.extend_from_slice(&at_micros.to_be_bytes());
                batch.insert(k, tomb);
            }
        }
        self.keys.apply_batch(batch).map_err(storage)?;
        self.dirty.store(true, Ordering::Release);
        self.sync()
    }

    /// Whether the subject has a live key.
    pub fn has_live_key(&self, tenant: &str, subject: &str) -> Result<bool, StoreError> {
        let Some(generation) = self.current_generation(tenant, subject)? else {
            return Ok(false);
        };
        Ok(self
            .keys
            .get(generation_key(tenant, subject, generation))
            .map_err(storage)?
            .is_some_and(|v| v[0] == LIVE))
    }

    /// Makes created and shredded keys durable (flush + fdatasync); cheap when nothing changed.
    pub fn sync(&self) -> Result<(), StoreError> {
        let _serial = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.db.flush().map_err(storage).and_then(|_| {
            File::open(&self.db_file)
                .and_then(|f| f.sync_data())
                .map_err(storage)
        });
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}

fn cipher(key: &[u8]) -> Result<XChaCha20Poly1305, StoreError> {
    XChaCha20Poly1305::new_from_slice(key)
        .map_err(|_| StoreError::Crypto("a stored data key has the wrong length".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_shred_and_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path()).unwrap();
        let sealed = vault
            .seal("acme", "u-1", "email", b"ann@example.com")
            .unwrap();
        vault.sync().unwrap();
        assert_eq!(sealed.key_generation, 1);
        assert_eq!(
            vault.open_field("acme", "u-1", "email", &sealed).unwrap(),
            Opened::Clear(b"ann@example.com".to_vec())
        );
        // The field name is authenticated: a sealed value cannot be moved to another field.
        assert!(vault.open_field("acme", "u-1", "name", &sealed).is_err());
        vault.shred("acme", "u-1", 42).unwrap();
        assert_eq!(
            vault.open_field("acme", "u-1", "email", &sealed).unwrap(),
            Opened::Erased {
                shredded_at_micros: 42
            }
        );
        assert!(!vault.has_live_key("acme", "u-1").unwrap());
        let again = vault.seal("acme", "u-1", "email", b"new").unwrap();
        assert_eq!(again.key_generation, 2);
        assert!(matches!(
            vault.open_field("acme", "u-1", "email", &sealed).unwrap(),
            Opened::Erased { .. }
        ));
        assert_eq!(
            vault.open_field("acme", "u-1", "email", &again).unwrap(),
            Opened::Clear(b"new".to_vec())
        );
    }

    #[test]
    fn keys_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = {
            let vault = Vault::open(dir.path()).unwrap();
            let s = vault.seal("acme", "u-2", "ip", b"10.0.0.1").unwrap();
            vault.sync().unwrap();
            s
        };
        let vault = Vault::open(dir.path()).unwrap();
        assert_eq!(
            vault.open_field("acme", "u-2", "ip", &sealed).unwrap(),
            Opened::Clear(b"10.0.0.1".to_vec())
        );
    }

    #[test]
    fn a_shred_racing_a_first_seal_never_leaves_a_dead_key_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let vault = std::sync::Arc::new(Vault::open(dir.path()).unwrap());
        for round in 0..200 {
            let subject = format!("s-{round}");
            let (a, b) = (vault.clone(), vault.clone());
            let (sa, sb) = (subject.clone(), subject.clone());
            let sealer = std::thread::spawn(move || a.seal("t", &sa, "f", b"x").unwrap());
            let shredder = std::thread::spawn(move || b.shred("t", &sb, 1).unwrap());
            sealer.join().unwrap();
            shredder.join().unwrap();
            // Whatever the interleaving, a seal after the shred uses a live key.
            let sealed = vault.seal("t", &subject, "f", b"after").unwrap();
            assert_eq!(
                vault.open_field("t", &subject, "f", &sealed).unwrap(),
                Opened::Clear(b"after".to_vec()),
                "round {round}: sealed under a shredded key"
            );
        }
    }
}
