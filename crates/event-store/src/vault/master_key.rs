//! The vault's master key: 32 bytes under which every subject's data key is stored wrapped, so
//! the vault's files never hold a data key in the clear. Kept in a file of 64 hex characters.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use chacha20poly1305::aead::{KeyInit, OsRng};
use chacha20poly1305::{Key, XChaCha20Poly1305};

use crate::StoreError;

const KEY_LEN: usize = 32;
const HEX_LEN: usize = 2 * KEY_LEN;

/// A 32-byte key that wraps the vault's data keys. Its `Debug` output holds nothing secret.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_LEN]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> MasterKey {
        MasterKey(XChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    /// Parses 64 hex characters (either case). The error never repeats the input.
    pub fn from_hex(hex: &str) -> Result<MasterKey, StoreError> {
        if hex.len() != HEX_LEN {
            return Err(StoreError::Invalid(format!(
                "a master key must be {HEX_LEN} hex characters (32 bytes), not {} bytes",
                hex.len()
            )));
        }
        let mut key = [0u8; KEY_LEN];
        for (byte, pair) in key.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(high), Some(low)) => *byte = high << 4 | low,
                _ => {
                    return Err(StoreError::Invalid(
                        "a master key must hold only hex digits (0-9, a-f)".into(),
                    ));
                }
            }
        }
        Ok(MasterKey(key))
    }

    /// Reads the key from `path` (64 hex characters, optionally followed by a newline), or, if
    /// there is no such file, generates one and writes it there durably with mode 0600. The
    /// flag says whether the key was generated. Errors name the path, never the content.
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<(MasterKey, bool), StoreError> {
        let path = path.as_ref();
        match fs::read(path) {
            Ok(content) => Ok((parse_file(path, &content)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = MasterKey::generate();
                match key.write_new(path) {
                    Ok(()) => Ok((key, true)),
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let content = fs::read(path).map_err(file_error(path))?;
                        Ok((parse_file(path, &content)?, false))
                    }
                    Err(e) => Err(file_error(path)(e)),
                }
            }
            Err(e) => Err(file_error(path)(e)),
        }
    }

    /// The AEAD that wraps data keys.
    pub(super) fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Creates `path` (never overwriting), writes the key, and makes file and name durable.
    fn write_new(&self, path: &Path) -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        let written = file
            .write_all(format!("{}\n", self.to_hex()).as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| sync_parent(path));
        if written.is_err() {
            // A half-written file would fail every later start with "wrong content".
            drop(file);
            let _ = fs::remove_file(path);
        }
        written
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_file(path: &Path, content: &[u8]) -> Result<MasterKey, StoreError> {
    let hex = content
        .strip_suffix(b"\n")
        .map(|c| c.strip_suffix(b"\r").unwrap_or(c))
        .unwrap_or(content);
    std::str::from_utf8(hex)
        .ok()
        .and_then(|hex| MasterKey::from_hex(hex).ok())
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "master key file {} must hold {HEX_LEN} hex characters and at most a trailing \
                 newline",
                path.display()
            ))
        })
}

fn file_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |e| StoreError::Storage(format!("master key file {}: {e}", path.display()))
}

/// Makes a new file's directory entry durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191A1B1C1D1E1F";

    #[test]
    fn from_hex_parses_and_refuses_without_echoing() {
        let key = MasterKey::from_hex(HEX).unwrap();
        assert_eq!(key.0[0x1f], 0x1f);
        assert_eq!(key.0[0x0a], 0x0a);
        assert_eq!(format!("{key:?}"), "MasterKey(..)");
        let secretish = "zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        for bad in [&HEX[1..], secretish, &format!("{HEX}\n")] {
            let err = MasterKey::from_hex(bad).unwrap_err();
            assert!(matches!(err, StoreError::Invalid(_)));
            assert!(!err.to_string().contains(&bad[2..20]), "{err}");
        }
        assert!(MasterKey::from_hex("").is_err());
        // Multi-byte characters: 64 bytes but not hex, no panic on a char boundary.
        assert!(MasterKey::from_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn load_or_generate_writes_a_private_file_once_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (first, generated) = MasterKey::load_or_generate(&path).unwrap();
        assert!(generated);
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content, format!("{}\n", first.to_hex()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, generated) = MasterKey::load_or_generate(&path).unwrap();
        assert!(!generated);
        assert_eq!(again.0, first.0);
        // Without the newline too.
        std::fs::write(&path, first.to_hex()).unwrap();
        assert_eq!(MasterKey::load_or_generate(&path).unwrap().0.0, first.0);
    }

    #[test]
    fn a_bad_key_file_names_the_path_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let content = "not-a-key-but-maybe-a-secret";
        std::fs::write(&path, content).unwrap();
        let err = MasterKey::load_or_generate(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!err.contains(content), "{err}");
        // A missing directory is a storage error naming the path, not a panic.
        let nowhere = dir.path().join("missing").join("master.key");
        let err = MasterKey::load_or_generate(&nowhere).unwrap_err();
        assert!(matches!(&err, StoreError::Storage(m) if m.contains("missing")));
    }
}
