//! The canonical byte layout of a stored event and its hash-chain link.
//!
//! ```text
//! format u8 = 2 | seq u64 | stream_version u64 | recorded_at_micros i64 | flags u8
//! | prev_hash [32] | scope, stream, event_id, event_type, data (each u32 length + bytes)
//! | content [32] | hash [32]
//! ```
//! Integers are big-endian. `hash = BLAKE3(every byte before it)`, so it covers the previous
//! hash and the chain breaks at the first record whose bytes changed. `scope` (the tenant) and
//! `event_id` are the idempotency key; `content` is the digest of what the caller sent, so a
//! different event reusing a key is told apart from a redelivery.
//!
//! Format 1 (before idempotency scopes) lacks `scope` and `content`; it still decodes, with the
//! scope taken from the stream's first `/`-separated part and no content digest.

use crate::StoreError;

pub(crate) const FORMAT: u8 = 2;
/// Records written before idempotency scopes and content digests.
const FORMAT_1: u8 = 1;
/// Length of a chain hash (BLAKE3).
pub const HASH_LEN: usize = 32;
/// The `prev_hash` of the first event.
pub const GENESIS_HASH: [u8; HASH_LEN] = [0; HASH_LEN];

/// Offset of the flags byte in a record.
pub(crate) const FLAGS_OFFSET: usize = 1 + 8 + 8 + 8;

/// Flag: the event is a domain event the outbox relay publishes.
pub const FLAG_PUBLISH: u8 = 1;

/// An event as committed: its position, its chain link and its opaque data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Gap-free global sequence number, from 1.
    pub seq: u64,
    /// Per-stream version, from 1.
    pub stream_version: u64,
    /// Commit time, microseconds since the Unix epoch; never decreases along the log.
    pub recorded_at_micros: i64,
    pub flags: u8,
    /// The idempotency scope (the tenant).
    pub scope: String,
    pub stream: String,
    pub event_id: String,
    pub event_type: String,
    pub data: Vec<u8>,
    /// Digest of the event as the caller sent it (none in format-1 records).
    pub content: Option<[u8; HASH_LEN]>,
    pub prev_hash: [u8; HASH_LEN],
    pub hash: [u8; HASH_LEN],
}

impl RecordedEvent {
    /// Whether the outbox relay publishes this event.
    pub fn is_published(&self) -> bool {
        self.flags & FLAG_PUBLISH != 0
    }
}

/// The fields of a record before it is hashed.
pub(crate) struct Unsealed<'a> {
    pub seq: u64,
    pub stream_version: u64,
    pub recorded_at_micros: i64,
    pub flags: u8,
    pub prev_hash: [u8; HASH_LEN],
    pub scope: &'a str,
    pub stream: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub data: &'a [u8],
    pub content: [u8; HASH_LEN],
}

/// The encoded length of a record with these variable parts.
pub(crate) fn encoded_len(
    scope: &str,
    stream: &str,
    event_id: &str,
    event_type: &str,
    data: usize,
) -> usize {
    let var = scope.len() + stream.len() + event_id.len() + event_type.len() + data;
    1 + 8 + 8 + 8 + 1 + HASH_LEN + 4 * 5 + var + HASH_LEN + HASH_LEN
}

impl Unsealed<'_> {
    /// Encodes the record and returns its bytes and its hash.
    #[cfg(test)]
    pub fn encode(&self) -> (Vec<u8>, [u8; HASH_LEN]) {
        let mut out = Vec::new();
        let hash = self.encode_into(&mut out);
        (out, hash)
    }

    /// The encoded length of the record.
    pub fn len(&self) -> usize {
        encoded_len(
            self.scope,
            self.stream,
            self.event_id,
            self.event_type,
            self.data.len(),
        )
    }

    /// Appends the encoded record to `out` and returns its hash.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> [u8; HASH_LEN] {
        let start = out.len();
        out.reserve(self.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.stream_version.to_be_bytes());
        out.extend_from_slice(&self.recorded_at_micros.to_be_bytes());
        out.push(self.flags);
        out.extend_from_slice(&self.prev_hash);
        for part in [
            self.scope.as_bytes(),
            self.stream.as_bytes(),
            self.event_id.as_bytes(),
            self.event_type.as_bytes(),
            self.data,
        ] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&self.content);
        let hash: [u8; HASH_LEN] = blake3::hash(&out[start..]).into();
        out.extend_from_slice(&hash);
        hash
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    seq: u64,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| StoreError::Corrupt {
            seq: self.seq,
            reason: "record is truncated".into(),
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes).map_err(|_| StoreError::Corrupt {
            seq: self.seq,
            reason: "a name is not UTF-8".into(),
        })
    }
    fn bytes(&mut self) -> Result<Vec<u8>, StoreError> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        Ok(self.take(len)?.to_vec())
    }
}

/// Decodes a stored record; `seq` is the key it was stored under (for error messages).
/// Does not check the hash: see [`check_hash`].
pub(crate) fn decode(seq: u64, bytes: &[u8]) -> Result<RecordedEvent, StoreError> {
    let mut r = Reader { bytes, pos: 0, seq };
    let [format] = r.array::<1>()?;
    if format != FORMAT && format != FORMAT_1 {
        return Err(StoreError::Corrupt {
            seq,
            reason: format!("unknown record format {format}"),
        });
    }
    let rec_seq = u64::from_be_bytes(r.array()?);
    let stream_version = u64::from_be_bytes(r.array()?);
    let recorded_at_micros = i64::from_be_bytes(r.array()?);
    let [flags] = r.array::<1>()?;
    let prev_hash = r.array()?;
    let scope = if format == FORMAT {
        Some(r.string()?)
    } else {
        None
    };
    let stream = r.string()?;
    let event_id = r.string()?;
    let event_type = r.string()?;
    let data = r.bytes()?;
    let content = if format == FORMAT {
        Some(r.array()?)
    } else {
        None
    };
    let hash = r.array()?;
    let scope = scope.unwrap_or_else(|| legacy_scope(&stream).to_owned());
    if r.pos != bytes.len() {
        return Err(StoreError::Corrupt {
            seq,
            reason: "trailing bytes after the hash".into(),
        });
    }
    Ok(RecordedEvent {
        seq: rec_seq,
        stream_version,
        recorded_at_micros,
        flags,
        scope,
        stream,
        event_id,
        event_type,
        data,
        content,
        prev_hash,
        hash,
    })
}

/// The scope of a format-1 record: its stream's first `/`-separated part (the tenant).
fn legacy_scope(stream: &str) -> &str {
    stream.split('/').next().unwrap_or_default()
}

/// Whether the last 32 bytes of `bytes` are the BLAKE3 hash of the bytes before them.
pub(crate) fn check_hash(bytes: &[u8]) -> bool {
    if bytes.len() < HASH_LEN {
        return false;
    }
    let (body, hash) = bytes.split_at(bytes.len() - HASH_LEN);
    blake3::hash(body).as_bytes() == hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_its_hash_covers_every_byte() {
        let (bytes, hash) = Unsealed {
            seq: 7,
            stream_version: 2,
            recorded_at_micros: 1_700_000_000_000_000,
            flags: FLAG_PUBLISH,
            prev_hash: [9; HASH_LEN],
            scope: "acme",
            stream: "acme/u-1",
            event_id: "e-1",
            event_type: "consent.granted",
            data: b"payload",
            content: [7; HASH_LEN],
        }
        .encode();
        let rec = decode(7, &bytes).unwrap();
        assert_eq!(rec.seq, 7);
        assert_eq!(rec.hash, hash);
        assert_eq!(rec.data, b"payload");
        assert_eq!(
            (rec.scope.as_str(), rec.content),
            ("acme", Some([7; HASH_LEN]))
        );
        assert!(rec.is_published());
        assert!(check_hash(&bytes));
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            assert!(!check_hash(&flipped), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn a_format_1_record_still_decodes_with_its_stream_tenant_as_scope() {
        let mut bytes = vec![FORMAT_1];
        bytes.extend_from_slice(&3u64.to_be_bytes());
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&5i64.to_be_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&[0; HASH_LEN]);
        for part in [&b"acme/u-1"[..], b"e-1", b"consent.granted", b"x"] {
            bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
            bytes.extend_from_slice(part);
        }
        let hash = blake3::hash(&bytes);
        bytes.extend_from_slice(hash.as_bytes());
        let rec = decode(3, &bytes).unwrap();
        assert_eq!((rec.scope.as_str(), rec.content), ("acme", None));
        assert_eq!(rec.event_id, "e-1");
        assert!(check_hash(&bytes));
    }
}
