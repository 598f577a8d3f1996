//! The log's files: append-only segment files of framed records, written one group commit at a
//! time, with a sparse sequence → position directory, and the recovery that cuts a torn tail.
//!
//! ```text
//! file  <first seq, 20 digits>.log  =  commit*
//! commit = header frame, then `count` record frames
//! frame  = u32 word | bytes      word < 2^31: a record of `word` bytes
//!                                word = 2^31 | 40: a commit header:
//!          first_seq u64 | count u32 | body_len u32 | body_hash [16] | check [8]
//! ```
//! Integers are big-endian. `body_hash` is BLAKE3 (truncated) of the commit's record frames;
//! `check` is BLAKE3 (truncated) of the header word and the 32 bytes before it. A commit is one
//! positional write followed by one `fdatasync`, and a caller hears of it only after that, so
//! what a crash can leave unacknowledged is the last commit of the last file: recovery cuts it
//! when its header or body does not check and nothing valid follows, and refuses to open
//! (loudly, naming the file and offset) when damage has valid commits after it. The record's
//! own chain hash is left to [`crate::EventStore::verify`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::StoreError;
use crate::store::storage;

/// The word that starts a commit header frame.
pub(crate) const HEADER_WORD: u32 = 0x8000_0000 | HEADER_BODY as u32;
/// Bytes of a commit header after its word.
const HEADER_BODY: usize = 40;
/// A whole commit header frame.
pub(crate) const HEADER_LEN: usize = 4 + HEADER_BODY;
/// A directory entry is added when a record starts this far past the previous entry.
pub(crate) const DIRECTORY_SPACING: u64 = 16 * 1024;
/// How much a sequential reader asks the file for at a time.
const READ_CHUNK: usize = 256 * 1024;

/// One of the log's files, open for reading.
pub(crate) struct LogFile {
    pub first_seq: u64,
    pub path: PathBuf,
    pub file: File,
}

/// A point in the directory: the first record at or after `offset` of file `file` is `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirEntry {
    pub seq: u64,
    pub file: u32,
    pub offset: u64,
}

/// The log's files, how much of each is committed, and the directory.
#[derive(Default)]
pub(crate) struct Files {
    /// The files in order, with the committed length of each.
    pub files: Vec<(Arc<LogFile>, u64)>,
    pub directory: Vec<DirEntry>,
}

impl Files {
    /// Where to start reading for `seq`: a directory entry at or before it.
    pub fn start_for(&self, seq: u64) -> DirEntry {
        let i = self.directory.partition_point(|e| e.seq <= seq);
        if i == 0 {
            DirEntry {
                seq: self.files.first().map_or(1, |(f, _)| f.first_seq),
                file: 0,
                offset: 0,
            }
        } else {
            self.directory[i - 1]
        }
    }

    /// Records a directory entry for the record `seq` starting at `offset` of file `file`,
    /// if it is far enough past the last entry (or the first of its file).
    pub fn note(&mut self, seq: u64, file: u32, offset: u64) {
        let due = match self.directory.last() {
            None => true,
            Some(last) => last.file != file || offset >= last.offset + DIRECTORY_SPACING,
        };
        if due {
            self.directory.push(DirEntry { seq, file, offset });
        }
    }
}

/// The name of the file whose first record is `first_seq`.
pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.log")
}

fn corrupt(seq: u64, reason: String) -> StoreError {
    StoreError::Corrupt { seq, reason }
}

/// Lists the log files of `dir`, in order, opened for reading.
pub(crate) fn list(dir: &Path) -> Result<Vec<Arc<LogFile>>, StoreError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(storage)? {
        let entry = entry.map_err(storage)?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        let first_seq = stem.parse::<u64>().map_err(|_| {
            corrupt(
                0,
                format!("{}: not a log file name", entry.path().display()),
            )
        })?;
        found.push((first_seq, entry.path()));
    }
    found.sort();
    found
        .into_iter()
        .map(|(first_seq, path)| {
            let file = File::open(&path).map_err(storage)?;
            Ok(Arc::new(LogFile {
                first_seq,
                path,
                file,
            }))
        })
        .collect()
}

/// Creates the file whose first record will be `first_seq`, durably (the directory is synced).
pub(crate) fn create(dir: &Path, first_seq: u64, sync: bool) -> Result<Arc<LogFile>, StoreError> {
    let path = dir.join(file_name(first_seq));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(storage)?;
    if sync {
        sync_dir(dir)?;
    }
    let file = File::open(&path).map_err(storage)?;
    Ok(Arc::new(LogFile {
        first_seq,
        path,
        file,
    }))
}

/// Makes a directory's entries (new, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(storage)
}

/// Replaces `dir/name` with `bytes` all at once (written to `name.tmp`, renamed over it): a
/// crash leaves the old file or the new one. With `sync`, the new file and the rename are
/// durable before it returns.
pub(crate) fn replace_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    sync: bool,
) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp).map_err(storage)?;
        f.write_all(bytes).map_err(storage)?;
        if sync {
            f.sync_all().map_err(storage)?;
        }
    }
    std::fs::rename(&tmp, dir.join(name)).map_err(storage)?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

fn h16(bytes: &[u8]) -> [u8; 16] {
    blake3::hash(bytes).as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

/// Encodes a commit header for the record frames `body`.
pub(crate) fn header(first_seq: u64, count: u32, body: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&HEADER_WORD.to_be_bytes());
    h[4..12].copy_from_slice(&first_seq.to_be_bytes());
    h[12..16].copy_from_slice(&count.to_be_bytes());
    h[16..20].copy_from_slice(&(body.len() as u32).to_be_bytes());
    h[20..36].copy_from_slice(&h16(body));
    let check = h16(&h[..36]);
    h[36..].copy_from_slice(&check[..8]);
    h
}

/// A commit header that checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub first_seq: u64,
    pub count: u32,
    pub body_len: u64,
    pub body_hash: [u8; 16],
}

/// Parses a commit header frame (`bytes` at least [`HEADER_LEN`] long); `None` when it does
/// not check.
pub(crate) fn parse_header(bytes: &[u8]) -> Option<Header> {
    let bytes = bytes.get(..HEADER_LEN)?;
    if bytes[..4] != HEADER_WORD.to_be_bytes() || h16(&bytes[..36])[..8] != bytes[36..] {
        return None;
    }
    Some(Header {
        first_seq: u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes")),
        count: u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")),
        body_len: u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes")) as u64,
        body_hash: bytes[20..36].try_into().expect("16 bytes"),
    })
}

/// Whether a commit body matches its header's hash.
pub(crate) fn body_matches(header: &Header, body: &[u8]) -> bool {
    h16(body) == header.body_hash
}

/// Reads a file's frames forward from an offset up to a limit, through a buffer.
pub(crate) struct FrameReader<'a> {
    file: &'a LogFile,
    end: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
    /// Index in `buf` of the next frame.
    cursor: usize,
    chunk: usize,
}

/// A frame: a commit header, or a record's bytes.
pub(crate) enum Frame<'b> {
    Header(&'b [u8]),
    Record(&'b [u8]),
}

impl<'a> FrameReader<'a> {
    pub fn new(file: &'a LogFile, from: u64, end: u64, chunk: usize) -> FrameReader<'a> {
        FrameReader {
            file,
            end,
            buf: Vec::new(),
            buf_at: from,
            cursor: 0,
            chunk: chunk.max(HEADER_LEN),
        }
    }

    /// A reader with the usual chunk size.
    pub fn sequential(file: &'a LogFile, from: u64, end: u64) -> FrameReader<'a> {
        FrameReader::new(file, from, end, READ_CHUNK)
    }

    /// The file offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.buf_at + self.cursor as u64
    }

    /// Bytes left before the end.
    pub fn remaining(&self) -> u64 {
        self.end - self.offset()
    }

    /// Makes `n` bytes from the cursor available, or returns false when fewer than `n` are
    /// left before the end.
    fn fill(&mut self, n: usize) -> Result<bool, StoreError> {
        if self.buf.len() - self.cursor >= n {
            return Ok(true);
        }
        if self.remaining() < n as u64 {
            return Ok(false);
        }
        self.buf.drain(..self.cursor);
        self.buf_at += self.cursor as u64;
        self.cursor = 0;
        let have = self.buf.len();
        let read_from = self.buf_at + have as u64;
        let want = (n - have)
            .max(self.chunk)
            .min((self.end - read_from) as usize);
        self.buf.resize(have + want, 0);
        self.file
            .file
            .read_exact_at(&mut self.buf[have..], read_from)
            .map_err(storage)?;
        Ok(true)
    }

    /// The bytes `n` past the cursor, without moving it (`None` when past the end).
    pub fn peek(&mut self, n: usize) -> Result<Option<&[u8]>, StoreError> {
        Ok(if self.fill(n)? {
            Some(&self.buf[self.cursor..self.cursor + n])
        } else {
            None
        })
    }

    /// Moves the cursor `n` bytes on (which [`FrameReader::peek`] made available).
    pub fn skip(&mut self, n: usize) {
        self.cursor += n;
    }

    /// The next frame, or `None` at the end. A frame cut by the end is corrupt (readers stop at
    /// the committed end, which only ever falls between commits).
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, StoreError> {
        if self.remaining() == 0 {
            return Ok(None);
        }
        let at = self.offset();
        let bad = |reason: &str| {
            corrupt(
                self.file.first_seq,
                format!("{} at offset {at}: {reason}", self.file.path.display()),
            )
        };
        let word = match self.peek(4)? {
            Some(w) => u32::from_be_bytes(w.try_into().expect("4 bytes")),
            None => return Err(bad("a frame is cut short")),
        };
        let (len, header) = if word == HEADER_WORD {
            (HEADER_BODY, true)
        } else if word & 0x8000_0000 == 0 {
            (word as usize, false)
        } else {
            return Err(bad("not a frame"));
        };
        if !self.fill(4 + len)? {
            return Err(bad("a frame is cut short"));
        }
        let start = self.cursor;
        self.cursor += 4 + len;
        let bytes = &self.buf[start..start + 4 + len];
        Ok(Some(if header {
            Frame::Header(bytes)
        } else {
            Frame::Record(&bytes[4..])
        }))
    }
}

/// What recovery does with each intact commit's records.
pub(crate) trait Replay {
    /// A record at `seq`, whose frame starts at `offset` of file `file`.
    fn record(&mut self, seq: u64, file: u32, offset: u64, bytes: &[u8]) -> Result<(), StoreError>;
    /// A commit ended at `end` of file `file`; the next record is `next_seq`.
    fn committed(&mut self, next_seq: u64, file: u32, end: u64) -> Result<(), StoreError>;
}

/// Where recovery ended: the next sequence number and each file's committed length.
pub(crate) struct Recovered {
    pub next_seq: u64,
    pub lengths: Vec<u64>,
}

/// Reads the log from `start` (a commit boundary) to its end, handing every record to
/// `replay`, and cuts a torn last commit off the last file (see the module docs).
pub(crate) fn recover(
    files: &[Arc<LogFile>],
    start: DirEntry,
    sync: bool,
    replay: &mut dyn Replay,
) -> Result<Recovered, StoreError> {
    if sync {
        // A process killed between a commit's write and its fdatasync leaves the commit in the
        // OS page cache only: make what is about to be served (and checkpointed) durable.
        for f in files.iter().skip(start.file as usize) {
            f.file.sync_data().map_err(storage)?;
        }
    }
    let mut lengths = Vec::with_capacity(files.len());
    let mut next_seq = start.seq;
    for (i, f) in files.iter().enumerate() {
        let len = f.file.metadata().map_err(storage)?.len();
        if (i as u32) < start.file {
            lengths.push(len);
            continue;
        }
        let last = i + 1 == files.len();
        let from = if i as u32 == start.file {
            start.offset
        } else {
            0
        };
        if from == 0 && f.first_seq != next_seq {
            return Err(corrupt(
                next_seq,
                format!("{} should start at event {next_seq}", f.path.display()),
            ));
        }
        let mut reader = FrameReader::sequential(f, from, len);
        let kept = loop {
            let at = reader.offset();
            if at == len {
                break len;
            }
            let header = reader.peek(HEADER_LEN)?.and_then(parse_header);
            let complete = header.filter(|h| reader.remaining() >= HEADER_LEN as u64 + h.body_len);
            let Some(h) = complete else {
                // A header that does not check, or a body past the end of the file.
                if last && (header.is_some() || !valid_header_after(f, at + 1, len)?) {
                    break at;
                }
                return Err(corrupt(
                    next_seq,
                    format!(
                        "{} at offset {at}: a damaged commit with more of the log after it",
                        f.path.display()
                    ),
                ));
            };
            if h.first_seq != next_seq {
                return Err(corrupt(
                    next_seq,
                    format!(
                        "{} at offset {at}: the commit starts at event {}, expected {next_seq}",
                        f.path.display(),
                        h.first_seq
                    ),
                ));
            }
            reader.skip(HEADER_LEN);
            let body_at = at + HEADER_LEN as u64;
            let body_end = body_at + h.body_len;
            let body = reader
                .peek(h.body_len as usize)?
                .expect("the body is within the file");
            if !body_matches(&h, body) {
                if last && body_end == len {
                    break at;
                }
                tracing::error!(
                    file = %f.path.display(),
                    offset = at,
                    first_seq = h.first_seq,
                    "a commit's bytes changed after it was written; VerifyChain names the record"
                );
            }
            let mut pos = 0;
            for _ in 0..h.count {
                let Some(bytes) = record_at(body, pos) else {
                    return Err(corrupt(
                        next_seq,
                        format!(
                            "{} at offset {}: the commit holds fewer records than it says",
                            f.path.display(),
                            body_at + pos as u64
                        ),
                    ));
                };
                replay.record(next_seq, i as u32, body_at + pos as u64, bytes)?;
                pos += 4 + bytes.len();
                next_seq += 1;
            }
            if pos != body.len() {
                return Err(corrupt(
                    next_seq,
                    format!(
                        "{} at offset {at}: the commit holds more than its records",
                        f.path.display()
                    ),
                ));
            }
            reader.skip(h.body_len as usize);
            replay.committed(next_seq, i as u32, body_end)?;
        };
        if kept < len {
            tracing::error!(
                file = %f.path.display(),
                offset = kept,
                bytes = len - kept,
                next_seq,
                "cutting a torn last commit (written, never acknowledged) off the log"
            );
            let w = OpenOptions::new()
                .write(true)
                .open(&f.path)
                .map_err(storage)?;
            w.set_len(kept).map_err(storage)?;
            w.sync_all().map_err(storage)?;
        }
        lengths.push(kept);
    }
    Ok(Recovered { next_seq, lengths })
}

/// The record frame at `pos` of a commit body, if a whole one starts there.
pub(crate) fn record_at(body: &[u8], pos: usize) -> Option<&[u8]> {
    let word = u32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
    if word & 0x8000_0000 != 0 {
        return None;
    }
    body.get(pos + 4..pos + 4 + word as usize)
}

/// Whether a whole commit that checks (header and body) starts in `from..len` of the file:
/// damage followed by one is not a torn tail. (A header alone could be bytes of an event's
/// data; a whole commit with its body hash is not there by chance.)
fn valid_header_after(f: &LogFile, from: u64, len: u64) -> Result<bool, StoreError> {
    if len < from + HEADER_LEN as u64 {
        return Ok(false);
    }
    let mut bytes = vec![0u8; (len - from) as usize];
    f.file.read_exact_at(&mut bytes, from).map_err(storage)?;
    let word = HEADER_WORD.to_be_bytes();
    Ok((0..=bytes.len() - HEADER_LEN).any(|at| {
        bytes[at..at + 4] == word
            && parse_header(&bytes[at..]).is_some_and(|h| {
                bytes
                    .get(at + HEADER_LEN..at + HEADER_LEN + h.body_len as usize)
                    .is_some_and(|body| body_matches(&h, body))
            })
    }))
}
