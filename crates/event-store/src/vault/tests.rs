//! Tests of the vault: sealing and shredding, master-key wrapping, the check at open, migration
//! of vaults written before wrapping, and compaction (no copy of a shredded key left on disk).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;

fn master() -> MasterKey {
    MasterKey::from_hex(&"42".repeat(32)).unwrap()
}

/// Every file under `root` (recursively) whose bytes contain `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn seal_open_shred_and_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path(), &master()).unwrap();
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
        let vault = Vault::open(dir.path(), &master()).unwrap();
        let s = vault.seal("acme", "u-2", "ip", b"10.0.0.1").unwrap();
        vault.sync().unwrap();
        s
    };
    let vault = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(
        vault.open_field("acme", "u-2", "ip", &sealed).unwrap(),
        Opened::Clear(b"10.0.0.1".to_vec())
    );
}

#[test]
fn a_shred_racing_a_first_seal_never_leaves_a_dead_key_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(Vault::open(dir.path(), &master()).unwrap());
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

#[test]
fn raw_keys_never_reach_the_vault_files() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path(), &master()).unwrap();
    let subjects: Vec<String> = (0..20).map(|i| format!("u-{i}")).collect();
    for subject in &subjects {
        vault
            .seal("acme", subject, "email", b"x@example.com")
            .unwrap();
    }
    vault.sync().unwrap();
    for subject in &subjects {
        let key = vault.key_bytes_for_test("acme", subject).unwrap();
        assert_eq!(key.len(), KEY_LEN);
        assert_eq!(files_containing(dir.path(), &key), Vec::<PathBuf>::new());
        // The wrapped form is what is stored (and the search does find stored bytes).
        let stored = vault.stored_bytes_for_test("acme", subject).unwrap();
        assert_eq!(stored[0], LIVE_WRAPPED);
        assert!(!files_containing(dir.path(), &stored).is_empty());
    }
}

#[test]
fn compaction_leaves_no_copy_of_a_shredded_key() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path(), &master()).unwrap();
    let doomed = vault
        .seal("acme", "doomed", "email", b"a@example.com")
        .unwrap();
    let kept = vault
        .seal("acme", "kept", "email", b"b@example.com")
        .unwrap();
    vault.sync().unwrap();
    let raw = vault.key_bytes_for_test("acme", "doomed").unwrap();
    let wrapped = vault.stored_bytes_for_test("acme", "doomed").unwrap();

    vault.shred("acme", "doomed", 7).unwrap();
    assert_eq!(vault.shreds_since_compaction(), 1);
    vault.shred("acme", "doomed", 8).unwrap();
    assert_eq!(
        vault.shreds_since_compaction(),
        1,
        "a repeated shred destroys nothing"
    );
    // The control: the tombstone replaced the value, yet sled's log still holds the wrapped
    // key (it appends and never rewrites a segment this young), so the check below can fail.
    assert!(
        !files_containing(dir.path(), &wrapped).is_empty(),
        "the wrapped key should survive a shred until compaction"
    );

    vault.compact().unwrap();
    assert_eq!(vault.shreds_since_compaction(), 0);
    assert_eq!(files_containing(dir.path(), &raw), Vec::<PathBuf>::new());
    assert_eq!(
        files_containing(dir.path(), &wrapped),
        Vec::<PathBuf>::new()
    );
    assert_eq!(names_in(dir.path()), ["CURRENT", "gen-00000002"]);
    assert_eq!(
        vault
            .open_field("acme", "doomed", "email", &doomed)
            .unwrap(),
        Opened::Erased {
            shredded_at_micros: 7
        }
    );
    assert_eq!(
        vault.open_field("acme", "kept", "email", &kept).unwrap(),
        Opened::Clear(b"b@example.com".to_vec())
    );
    drop(vault);
    let vault = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(
        vault.open_field("acme", "kept", "email", &kept).unwrap(),
        Opened::Clear(b"b@example.com".to_vec())
    );
    assert!(matches!(
        vault
            .open_field("acme", "doomed", "email", &doomed)
            .unwrap(),
        Opened::Erased { .. }
    ));
    assert_eq!(
        vault
            .seal("acme", "doomed", "email", b"c")
            .unwrap()
            .key_generation,
        2
    );
}

/// Writes a vault as the code before wrapping did: sled directly in `dir`, tree "keys", keys
/// in the clear. `u-1` has one live key; `u-2` a shredded generation 1 and a live generation 2.
/// Returns each live subject with its raw key and a field sealed under it.
fn write_legacy_vault(dir: &Path) -> Vec<(&'static str, Vec<u8>, SealedField)> {
    let db = sled::Config::new().path(dir).open().unwrap();
    let keys = db.open_tree(KEYS_TREE).unwrap();
    let mut live = Vec::new();
    for (subject, generation) in [("u-1", 1u32), ("u-2", 2)] {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut value = vec![LIVE];
        value.extend_from_slice(&key);
        keys.insert(generation_key("acme", subject, generation), value)
            .unwrap();
        keys.insert(subject_key("acme", subject), &generation.to_be_bytes())
            .unwrap();
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = XChaCha20Poly1305::new(&key)
            .encrypt(
                &nonce,
                Payload {
                    msg: subject.as_bytes(),
                    aad: &aad("acme", subject, "name", generation),
                },
            )
            .unwrap();
        let sealed = SealedField {
            key_generation: generation,
            nonce: nonce.to_vec(),
            ciphertext,
        };
        live.push((subject, key.to_vec(), sealed));
    }
    let mut tomb = vec![SHREDDED];
    tomb.extend_from_slice(&5i64.to_be_bytes());
    keys.insert(generation_key("acme", "u-2", 1), tomb).unwrap();
    db.flush().unwrap();
    live
}

#[test]
fn a_legacy_vault_is_wrapped_migrated_and_left_without_clear_keys() {
    let dir = tempfile::tempdir().unwrap();
    let live = write_legacy_vault(dir.path());
    for (_, raw, _) in &live {
        assert!(
            !files_containing(dir.path(), raw).is_empty(),
            "the legacy files hold the raw key (the control)"
        );
    }
    // A migration that crashed half-way left a partial copy; open starts it over.
    std::fs::create_dir(dir.path().join("gen-00000001")).unwrap();
    std::fs::write(dir.path().join("gen-00000001").join("db"), b"partial").unwrap();

    let vault = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(names_in(dir.path()), ["CURRENT", "gen-00000001"]);
    for (subject, raw, sealed) in &live {
        assert_eq!(files_containing(dir.path(), raw), Vec::<PathBuf>::new());
        assert_eq!(
            vault.key_bytes_for_test("acme", subject).as_ref(),
            Some(raw)
        );
        assert_eq!(
            vault.open_field("acme", subject, "name", sealed).unwrap(),
            Opened::Clear(subject.as_bytes().to_vec())
        );
        // New seals use the migrated key's generation.
        let fresh = vault.seal("acme", subject, "name", b"new").unwrap();
        assert_eq!(fresh.key_generation, sealed.key_generation);
    }
    let old_u2 = SealedField {
        key_generation: 1,
        nonce: vec![0; NONCE_LEN],
        ciphertext: vec![0; 32],
    };
    assert_eq!(
        vault.open_field("acme", "u-2", "name", &old_u2).unwrap(),
        Opened::Erased {
            shredded_at_micros: 5
        }
    );
    drop(vault);

    // The migration is done once: a reopen leaves the layout as it is.
    let vault = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(names_in(dir.path()), ["CURRENT", "gen-00000001"]);
    let (subject, _, sealed) = &live[0];
    assert_eq!(
        vault.open_field("acme", subject, "name", sealed).unwrap(),
        Opened::Clear(subject.as_bytes().to_vec())
    );
}

#[test]
fn the_wrong_master_key_fails_at_open_and_the_right_one_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = {
        let vault = Vault::open(dir.path(), &master()).unwrap();
        let s = vault
            .seal("acme", "u-1", "email", b"ann@example.com")
            .unwrap();
        vault.sync().unwrap();
        s
    };
    let other = MasterKey::from_hex(&"17".repeat(32)).unwrap();
    match Vault::open(dir.path(), &other) {
        Err(StoreError::Crypto(m)) => {
            assert!(
                m.contains("the master key does not match this vault"),
                "{m}"
            )
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened with the wrong master key"),
    }
    let vault = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(
        vault.open_field("acme", "u-1", "email", &sealed).unwrap(),
        Opened::Clear(b"ann@example.com".to_vec())
    );
}

#[test]
fn a_vault_without_a_check_value_is_checked_against_its_wrapped_keys() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = {
        let vault = Vault::open(dir.path(), &master()).unwrap();
        let s = vault.seal("acme", "u-1", "email", b"x").unwrap();
        // As if the check value had never been written.
        vault.read().keys.remove(CHECK_SLOT).unwrap();
        vault.dirty.store(true, Ordering::Release);
        vault.sync().unwrap();
        s
    };
    let other = MasterKey::from_hex(&"17".repeat(32)).unwrap();
    assert!(matches!(
        Vault::open(dir.path(), &other),
        Err(StoreError::Crypto(_))
    ));
    let vault = Vault::open(dir.path(), &master()).unwrap();
    assert!(vault.get(CHECK_SLOT).unwrap().is_some(), "written again");
    assert_eq!(
        vault.open_field("acme", "u-1", "email", &sealed).unwrap(),
        Opened::Clear(b"x".to_vec())
    );
}

#[test]
fn a_wrapped_key_moved_to_another_subject_does_not_unwrap() {
    let dir = tempfile::tempdir().unwrap();
    let master = master();
    let vault = Vault::open(dir.path(), &master).unwrap();
    vault.seal("acme", "alice", "email", b"a").unwrap();
    let bobs = vault.seal("acme", "bob", "email", b"b").unwrap();
    let alices_key = vault.stored_bytes_for_test("acme", "alice").unwrap();
    vault.sync().unwrap();
    drop(vault);
    // A fresh instance, so bob's key is not cached.
    let vault = Vault::open(dir.path(), &master).unwrap();
    vault
        .read()
        .keys
        .insert(generation_key("acme", "bob", 1), alices_key)
        .unwrap();
    assert!(matches!(
        vault.open_field("acme", "bob", "email", &bobs),
        Err(StoreError::Crypto(_))
    ));
}

#[test]
fn compaction_runs_alongside_seals_and_opens() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(Vault::open(dir.path(), &master()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let (vault, stop) = (vault.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut sealed = Vec::new();
                // Until the compactions are done, bounded either way.
                for i in 0..5_000 {
                    if i >= 20 && stop.load(Ordering::Acquire) {
                        break;
                    }
                    // Every third seal is for a new subject, so creates a key (and waits while
                    // compaction copies); the others hit the cache.
                    let subject = format!("w{t}-{}", i / 3);
                    let plain = format!("{t}/{i}").into_bytes();
                    let s = vault.seal("acme", &subject, "f", &plain).unwrap();
                    assert_eq!(
                        vault.open_field("acme", &subject, "f", &s).unwrap(),
                        Opened::Clear(plain.clone())
                    );
                    sealed.push((subject, plain, s));
                }
                vault.sync().unwrap();
                sealed
            })
        })
        .collect();
    for _ in 0..4 {
        vault.compact().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop.store(true, Ordering::Release);
    let sealed: Vec<_> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let open_all = |vault: &Vault| {
        for (subject, plain, s) in &sealed {
            assert_eq!(
                vault.open_field("acme", subject, "f", s).unwrap(),
                Opened::Clear(plain.clone())
            );
        }
    };
    open_all(&vault);
    assert_eq!(names_in(dir.path()), ["CURRENT", "gen-00000005"]);
    drop(vault);
    open_all(&Vault::open(dir.path(), &master()).unwrap());
}

#[test]
fn leftovers_of_an_interrupted_compaction_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = {
        let vault = Vault::open(dir.path(), &master()).unwrap();
        let s = vault.seal("acme", "u-1", "email", b"x").unwrap();
        vault.compact().unwrap();
        s
    };
    // A copy that crashed before CURRENT named it, a stray older one, a half-written pointer,
    // and legacy files a crashed migration had not yet removed.
    for stray in ["gen-00000003", "gen-00000001"] {
        std::fs::create_dir(dir.path().join(stray)).unwrap();
        std::fs::write(dir.path().join(stray).join("db"), b"old").unwrap();
    }
    std::fs::write(dir.path().join("CURRENT.tmp"), b"gen-00000003\n").unwrap();
    std::fs::write(dir.path().join("db"), b"legacy").unwrap();
    std::fs::write(dir.path().join("snap.0000000000000001"), b"legacy").unwrap();
    let vault = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(names_in(dir.path()), ["CURRENT", "gen-00000002"]);
    assert_eq!(
        vault.open_field("acme", "u-1", "email", &sealed).unwrap(),
        Opened::Clear(b"x".to_vec())
    );
}

#[test]
fn a_key_creation_half_written_before_a_crash_leaves_a_usable_vault() {
    let dir = tempfile::tempdir().unwrap();
    {
        let vault = Vault::open(dir.path(), &master()).unwrap();
        let inner = vault.read();
        // A generation pointer whose key never reached the disk, and a key without a pointer.
        inner
            .keys
            .insert(subject_key("acme", "u-1"), &1u32.to_be_bytes())
            .unwrap();
        let orphan = generation_key("acme", "u-2", 1);
        inner
            .keys
            .insert(
                orphan.as_slice(),
                vault.wrap_key(&orphan, &[7u8; 32]).unwrap(),
            )
            .unwrap();
        drop(inner);
        vault.sync().unwrap();
    }
    let vault = Vault::open(dir.path(), &master()).unwrap();
    let first = vault
        .seal("acme", "u-1", "email", b"ann@example.com")
        .unwrap();
    let second = vault
        .seal("acme", "u-2", "email", b"bo@example.com")
        .unwrap();
    vault.sync().unwrap();
    assert_eq!((first.key_generation, second.key_generation), (2, 1));
    assert_ne!(vault.key_bytes_for_test("acme", "u-2"), Some(vec![7u8; 32]));
    drop(vault);
    let vault = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(
        vault.open_field("acme", "u-1", "email", &first).unwrap(),
        Opened::Clear(b"ann@example.com".to_vec())
    );
    assert_eq!(
        vault.open_field("acme", "u-2", "email", &second).unwrap(),
        Opened::Clear(b"bo@example.com".to_vec())
    );
}
