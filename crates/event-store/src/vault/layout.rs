//! The vault directory on disk. A pointer file `CURRENT` names the sub-directory holding the
//! live sled database (`gen-00000001`, `gen-00000002`, ...), so compaction can build a fresh
//! database beside the live one and switch to it with one atomic rename. Vaults written before
//! this layout keep their sled files in the vault directory itself ([`Place::Legacy`]).
//!
//! Every step is made durable (fsync of files and directories) before the next one depends on
//! it, and whatever an interrupted compaction or migration leaves behind is removed at open.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::StoreError;

const CURRENT: &str = "CURRENT";
const CURRENT_TMP: &str = "CURRENT.tmp";
const GEN_PREFIX: &str = "gen-";
/// The files sled 0.34 keeps in the directory it is given (plus `snap.*` snapshots).
const SLED_FILES: [&str; 2] = ["db", "conf"];
const SLED_BLOBS: &str = "blobs";
const SLED_SNAPSHOT_PREFIX: &str = "snap.";

/// Where a vault's sled database lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// Directly in the vault directory, as written before compaction existed.
    Legacy,
    /// In `gen-{n:08}` under the vault directory, named by `CURRENT`.
    Generation(u32),
}

impl Place {
    pub(super) fn dir(self, root: &Path) -> PathBuf {
        match self {
            Place::Legacy => root.to_path_buf(),
            Place::Generation(n) => root.join(generation_name(n)),
        }
    }

    /// The generation compaction writes the database that replaces this one to.
    pub(super) fn next_generation(self) -> Result<u32, StoreError> {
        match self {
            Place::Legacy => Ok(1),
            Place::Generation(n) => n
                .checked_add(1)
                .ok_or_else(|| StoreError::Storage("vault: no generation number left".into())),
        }
    }
}

fn generation_name(n: u32) -> String {
    format!("{GEN_PREFIX}{n:08}")
}

/// Finds the live database of the vault in `root`, after removing what an interrupted
/// compaction or migration left behind; a directory without a vault gets a new, empty one.
pub(super) fn locate(root: &Path) -> Result<Place, StoreError> {
    remove_path(&root.join(CURRENT_TMP))?;
    if let Some(n) = read_current(root)? {
        let live = root.join(generation_name(n));
        if !live.is_dir() {
            return Err(StoreError::Storage(format!(
                "vault {}: {CURRENT} names {}, which is missing",
                root.display(),
                live.display()
            )));
        }
        // Other generations are half-built copies or replaced databases; sled files in the
        // vault directory itself are a legacy database already migrated.
        remove_stale(root, n)?;
        return Ok(Place::Generation(n));
    }
    if SLED_FILES.iter().any(|f| root.join(f).is_file()) {
        // A migration that crashed before writing CURRENT: the legacy database is still the
        // live one and any generation directory is a half-built copy.
        remove_generations(root, None)?;
        return Ok(Place::Legacy);
    }
    create_first(root)
}

/// A new vault: an empty `gen-00000001` named by `CURRENT` before sled writes anything, so a
/// generation directory without `CURRENT` is never a database in use.
fn create_first(root: &Path) -> Result<Place, StoreError> {
    for (name, path) in generation_dirs(root)? {
        let empty = fs::read_dir(&path)
            .map_err(io_error(&path))?
            .next()
            .is_none();
        if !empty {
            return Err(StoreError::Storage(format!(
                "vault {}: {name} holds data but there is no {CURRENT} naming the live \
                 database; refusing to guess (restore {CURRENT}, or move the directory away)",
                root.display()
            )));
        }
        remove_path(&path)?;
    }
    let first = Place::Generation(1);
    let dir = first.dir(root);
    fs::create_dir(&dir).map_err(io_error(&dir))?;
    sync_dir(root)?;
    install_current(root, 1)?;
    sync_dir(root)?;
    Ok(first)
}

/// The generation `CURRENT` names, if there is a `CURRENT`.
fn read_current(root: &Path) -> Result<Option<u32>, StoreError> {
    let path = root.join(CURRENT);
    let content = match fs::read_to_string(&path) {
        Ok(content) => content,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path)(e)),
    };
    parse_generation(content.trim())
        .map(Some)
        .ok_or_else(|| StoreError::Storage(format!("vault: {} is malformed", path.display())))
}

fn parse_generation(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(GEN_PREFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Points `CURRENT` at generation `n`: a temporary file, fsynced, renamed over `CURRENT`. The
/// rename is atomic, so an error leaves `CURRENT` as it was; the caller fsyncs `root` to make
/// the rename itself durable.
pub(super) fn install_current(root: &Path, n: u32) -> Result<(), StoreError> {
    let tmp = root.join(CURRENT_TMP);
    let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(format!("{}\n", generation_name(n)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    drop(file);
    let current = root.join(CURRENT);
    fs::rename(&tmp, &current).map_err(io_error(&current))
}

/// Empties the way for a new generation directory (a leftover of an interrupted compaction
/// may sit there) and creates it.
pub(super) fn create_generation_dir(dir: &Path) -> Result<(), StoreError> {
    remove_path(dir)?;
    fs::create_dir(dir).map_err(io_error(dir))
}

/// Removes every database but generation `live`: other generation directories and legacy
/// sled files in the vault directory itself.
pub(super) fn remove_stale(root: &Path, live: u32) -> Result<(), StoreError> {
    let mut removed = remove_generations(root, Some(live))?;
    for name in SLED_FILES.iter().chain([&SLED_BLOBS]) {
        removed |= remove_path(&root.join(name))?;
    }
    for entry in fs::read_dir(root).map_err(io_error(root))? {
        let entry = entry.map_err(io_error(root))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SLED_SNAPSHOT_PREFIX)
        {
            removed |= remove_path(&entry.path())?;
        }
    }
    if removed {
        sync_dir(root)?;
    }
    Ok(())
}

/// Removes every `gen-*` entry except generation `keep`; whether anything was removed.
fn remove_generations(root: &Path, keep: Option<u32>) -> Result<bool, StoreError> {
    let keep = keep.map(generation_name);
    let mut removed = false;
    for (name, path) in generation_dirs(root)? {
        if keep.as_deref() != Some(name.as_str()) {
            removed |= remove_path(&path)?;
        }
    }
    Ok(removed)
}

/// Every entry of `root` named `gen-*`, with its path.
fn generation_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root).map_err(io_error(root))? {
        let entry = entry.map_err(io_error(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(GEN_PREFIX) {
            found.push((name, entry.path()));
        }
    }
    Ok(found)
}

/// Removes a file or a directory tree; whether there was anything to remove.
fn remove_path(path: &Path) -> Result<bool, StoreError> {
    let removed = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    removed.map(|()| true).map_err(io_error(path))
}

/// fsyncs every file and directory under `dir`, and `dir` itself: sled's own flush covers
/// only part of what it writes (its `blobs/` files, for one, are never fsynced).
pub(super) fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_error(&path))?;
        }
    }
    sync_dir(dir)
}

/// Makes the entries of a directory (created, renamed, removed) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io_error(dir))
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened as files here; renames are durable on their own.
        let _ = dir;
        Ok(())
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |e| StoreError::Storage(format!("vault {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_round_trip_and_junk_is_refused() {
        assert_eq!(generation_name(7), "gen-00000007");
        assert_eq!(parse_generation("gen-00000007"), Some(7));
        for junk in ["gen-7", "gen-0000000x", "gen-000000007", "CURRENT", ""] {
            assert_eq!(parse_generation(junk), None, "{junk}");
        }
    }

    #[test]
    fn a_malformed_current_is_an_error_not_a_new_vault() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CURRENT), "gen-1\n").unwrap();
        assert!(matches!(locate(dir.path()), Err(StoreError::Storage(_))));
    }

    #[test]
    fn a_generation_with_data_but_no_current_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let orphan = dir.path().join("gen-00000003");
        fs::create_dir(&orphan).unwrap();
        fs::write(orphan.join("db"), b"x").unwrap();
        assert!(matches!(locate(dir.path()), Err(StoreError::Storage(_))));
        assert!(
            orphan.join("db").exists(),
            "nothing is removed when refusing"
        );
        // An empty one (a crash while creating the vault) is replaced by a new vault.
        fs::remove_file(orphan.join("db")).unwrap();
        assert_eq!(locate(dir.path()).unwrap(), Place::Generation(1));
        assert!(!orphan.exists());
        assert_eq!(read_current(dir.path()).unwrap(), Some(1));
    }
}
