//! The log's lookups kept on disk: `(scope, event_id)` → seq and stream → (version, seq), as an
//! in-memory table of the newest events plus immutable sorted *runs* (as EventStoreDB's index
//! tables or an LSM tree), with the checkpoint (`MANIFEST`) that says which runs are current and
//! how far into the log they reach.
//!
//! A run is two table files, `run-<n>.ids` (16-byte id digest → seq) and `run-<n>.streams`
//! (16-byte stream digest + version → seq). A table is its entries sorted by key, then a Bloom
//! filter over the keys' first 16 bytes, then the first key of every block of [`BLOCK`]
//! entries, then a CRC-32 of every block, then a footer whose check covers the filter, keys and
//! CRCs; only those are held in memory, and a lookup reads one block with `pread` and checks it
//! (a damaged block is an error naming the file and the remedy, never a wrong answer). When
//! the memory table reaches its size it is frozen and written as a new run by the store's
//! indexer thread, which then merges the newest runs while the one before them is less than
//! twice their size (so there are about log₂(events / table size) runs), and writes the
//! manifest — tables first, each fsynced, then the manifest by rename — so a crash leaves
//! either the old checkpoint or the new one. Everything here is derived from the log: with no
//! manifest, or one that does not check, the store rebuilds it by reading the log.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::StoreError;
use crate::log::{DirEntry, replace_file};
use crate::store::storage;

/// Entries per block (one `pread` per lookup in a run).
const BLOCK: usize = 128;
/// Bloom filter bits per entry (about 1% false positives with [`BLOOM_HASHES`]).
pub(crate) const BLOOM_BITS: u64 = 10;
const BLOOM_HASHES: u64 = 7;
/// Version 2: a CRC per block (version 1 tables are not read; the index is rebuilt from the log).
const TABLE_MAGIC: u64 = 0x504c_4944_5831_0002;
const MANIFEST_MAGIC: u64 = 0x504c_4d41_4e31_0001;
const FOOTER_LEN: usize = 8 * 5;
const MANIFEST: &str = "MANIFEST";

pub(crate) type IdKey = [u8; 16];
pub(crate) type StreamKey = [u8; 16];

/// The index key of a stream name.
pub(crate) fn stream_key(stream: &str) -> StreamKey {
    blake3::hash(stream.as_bytes()).as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

/// The newest events' lookups, in memory.
#[derive(Default)]
pub(crate) struct MemTable {
    ids: HashMap<IdKey, u64>,
    /// (version, seq) per stream, in version order.
    streams: HashMap<StreamKey, Versions>,
    pub events: usize,
}

/// A stream's (version, seq) pairs in one memory table. With many streams (a stream per
/// subject) most get one event per table, kept inline: a vector for each would cost an
/// allocation and about 64 more bytes a stream (tens of MiB per table at a million subjects).
enum Versions {
    One((u64, u64)),
    Many(Vec<(u64, u64)>),
}

impl Versions {
    fn as_slice(&self) -> &[(u64, u64)] {
        match self {
            Versions::One(v) => std::slice::from_ref(v),
            Versions::Many(vs) => vs,
        }
    }

    fn push(&mut self, v: (u64, u64)) {
        match self {
            Versions::One(first) => *self = Versions::Many(vec![*first, v]),
            Versions::Many(vs) => vs.push(v),
        }
    }
}

impl MemTable {
    pub fn add(&mut self, id: IdKey, stream: StreamKey, version: u64, seq: u64) {
        self.ids.insert(id, seq);
        self.streams
            .entry(stream)
            .and_modify(|vs| vs.push((version, seq)))
            .or_insert(Versions::One((version, seq)));
        self.events += 1;
    }
}

fn corrupt(path: &Path, reason: &str) -> StoreError {
    StoreError::Corrupt {
        seq: 0,
        reason: format!("index file {}: {reason}", path.display()),
    }
}

/// One sorted table file, with its filter and block keys in memory.
pub(crate) struct Table {
    file: File,
    path: PathBuf,
    /// Key bytes (16 or 24); an entry is the key and a u64.
    key_len: usize,
    entries: u64,
    bloom: Vec<u8>,
    /// The first key of every block, concatenated.
    fences: Vec<u8>,
    /// The CRC-32 of every block's bytes.
    checks: Vec<u32>,
}

fn bloom_bits(key: &[u8], bits: u64) -> impl Iterator<Item = u64> {
    let h1 = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let h2 = u64::from_be_bytes(key[8..16].try_into().expect("8 bytes")) | 1;
    bloom_positions((h1, h2), bits)
}

/// The filter bits of a key whose two independent hashes are `(h1, h2)` (h2 odd), out of `bits`
/// (double hashing).
pub(crate) fn bloom_positions((h1, h2): (u64, u64), bits: u64) -> impl Iterator<Item = u64> {
    (0..BLOOM_HASHES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

impl Table {
    fn entry_len(&self) -> usize {
        self.key_len + 8
    }

    fn may_contain(&self, prefix: &[u8]) -> bool {
        let bits = self.bloom.len() as u64 * 8;
        bloom_bits(prefix, bits).all(|b| self.bloom[(b / 8) as usize] & (1 << (b % 8)) != 0)
    }

    fn fence(&self, i: usize) -> &[u8] {
        &self.fences[i * self.key_len..(i + 1) * self.key_len]
    }

    fn blocks(&self) -> usize {
        self.fences.len() / self.key_len
    }

    /// The block that holds `key` if any does: the last whose first key is not above it.
    fn block_for(&self, key: &[u8]) -> Option<usize> {
        let mut lo = 0;
        let mut hi = self.blocks();
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.fence(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    fn read_block(&self, block: usize) -> Result<Vec<u8>, StoreError> {
        let first = (block * BLOCK) as u64;
        let count = (self.entries - first).min(BLOCK as u64) as usize;
        let mut bytes = vec![0u8; count * self.entry_len()];
        self.file
            .read_exact_at(&mut bytes, first * self.entry_len() as u64)
            .map_err(storage)?;
        self.check_block(block, &bytes)?;
        Ok(bytes)
    }

    fn check_block(&self, block: usize, bytes: &[u8]) -> Result<(), StoreError> {
        if block_crc(bytes) == self.checks[block] {
            return Ok(());
        }
        Err(corrupt(
            &self.path,
            &format!(
                "block {block} does not match its checksum; stop the service and remove \
                 log/MANIFEST to rebuild the index from the log"
            ),
        ))
    }

    /// The value of the last entry whose key is at most `key`, with that key, within `key`'s
    /// block.
    fn floor(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let Some(block) = self.block_for(key) else {
            return Ok(None);
        };
        let bytes = self.read_block(block)?;
        let n = bytes.len() / self.entry_len();
        let at = |i: usize| &bytes[i * self.entry_len()..(i + 1) * self.entry_len()];
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if &at(mid)[..self.key_len] <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo.checked_sub(1).map(|i| {
            let e = at(i);
            (
                e[..self.key_len].to_vec(),
                u64::from_be_bytes(e[self.key_len..].try_into().expect("8 bytes")),
            )
        }))
    }

    /// The value stored under exactly `key` (a 16-byte table).
    fn get(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        if !self.may_contain(key) {
            return Ok(None);
        }
        Ok(self.floor(key)?.filter(|(k, _)| k == key).map(|(_, v)| v))
    }

    /// The entries whose keys start with `prefix` and are at least `from`, in key order, at most
    /// `limit` (pushed onto `out` as (key suffix as u64, value)).
    fn range(
        &self,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<(), StoreError> {
        if !self.may_contain(prefix) {
            return Ok(());
        }
        let mut block = self.block_for(from).unwrap_or(0);
        let el = self.entry_len();
        while block < self.blocks() && out.len() < limit {
            let bytes = self.read_block(block)?;
            for e in bytes.chunks_exact(el) {
                let key = &e[..self.key_len];
                if key < from {
                    continue;
                }
                if !key.starts_with(prefix) || out.len() >= limit {
                    return Ok(());
                }
                out.push((
                    u64::from_be_bytes(key[prefix.len()..].try_into().expect("8 bytes")),
                    u64::from_be_bytes(e[self.key_len..].try_into().expect("8 bytes")),
                ));
            }
            block += 1;
        }
        Ok(())
    }

    /// How many entries the table holds.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Opens a table file, reading its filter and block keys.
    pub(crate) fn open(path: PathBuf) -> Result<Table, StoreError> {
        let file = File::open(&path).map_err(storage)?;
        let len = file.metadata().map_err(storage)?.len();
        if len < FOOTER_LEN as u64 {
            return Err(corrupt(&path, "shorter than its footer"));
        }
        let mut footer = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut footer, len - FOOTER_LEN as u64)
            .map_err(storage)?;
        let word = |i: usize| u64::from_be_bytes(footer[i * 8..i * 8 + 8].try_into().expect("8"));
        let (magic, key_len, entries, bloom_len, check) =
            (word(0), word(1), word(2), word(3), word(4));
        if magic != TABLE_MAGIC || (key_len != 16 && key_len != 24) {
            return Err(corrupt(&path, "not an index table"));
        }
        let key_len = key_len as usize;
        let data_len = entries * (key_len as u64 + 8);
        let blocks = entries.div_ceil(BLOCK as u64);
        let fences_len = blocks * key_len as u64;
        let checks_len = blocks * 4;
        if data_len + bloom_len + fences_len + checks_len + FOOTER_LEN as u64 != len {
            return Err(corrupt(&path, "its parts do not add up to its length"));
        }
        let mut meta = vec![0u8; (bloom_len + fences_len + checks_len) as usize];
        file.read_exact_at(&mut meta, data_len).map_err(storage)?;
        if table_check(&meta, &footer[..32]) != check {
            return Err(corrupt(
                &path,
                "its filter, block keys or block checksums do not check",
            ));
        }
        let checks = meta
            .split_off((bloom_len + fences_len) as usize)
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let fences = meta.split_off(bloom_len as usize);
        Ok(Table {
            file,
            path,
            key_len,
            entries,
            bloom: meta,
            fences,
            checks,
        })
    }
}

/// CRC-32 of a block: catches flipped bits in it, cheaply enough for every lookup.
fn block_crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The check of a table's in-memory parts (and of a view run's): the first 8 bytes of their
/// BLAKE3 with the footer's head.
pub(crate) fn table_check(meta: &[u8], footer_head: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(meta);
    h.update(footer_head);
    table_check_of(&h)
}

/// [`table_check`] of what `h` has hashed (the same bytes fed in pieces).
pub(crate) fn table_check_of(h: &blake3::Hasher) -> u64 {
    u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Writes a table from entries given in key order.
struct TableWriter {
    out: BufWriter<File>,
    path: PathBuf,
    key_len: usize,
    entries: u64,
    bloom: Vec<u8>,
    fences: Vec<u8>,
    /// The CRC of the block being written, and those of the blocks before it.
    block: crc32fast::Hasher,
    checks: Vec<u8>,
}

impl TableWriter {
    fn create(path: PathBuf, key_len: usize, expected: u64) -> Result<TableWriter, StoreError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(storage)?;
        let bloom_bytes = (expected * BLOOM_BITS).div_ceil(8).max(8) as usize;
        Ok(TableWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            path,
            key_len,
            entries: 0,
            bloom: vec![0; bloom_bytes],
            fences: Vec::new(),
            block: crc32fast::Hasher::new(),
            checks: Vec::new(),
        })
    }

    fn push(&mut self, key: &[u8], value: u64) -> Result<(), StoreError> {
        debug_assert_eq!(key.len(), self.key_len);
        if self.entries.is_multiple_of(BLOCK as u64) {
            self.fences.extend_from_slice(key);
        }
        let bits = self.bloom.len() as u64 * 8;
        for b in bloom_bits(key, bits) {
            self.bloom[(b / 8) as usize] |= 1 << (b % 8);
        }
        self.out.write_all(key).map_err(storage)?;
        self.out.write_all(&value.to_be_bytes()).map_err(storage)?;
        self.block.update(key);
        self.block.update(&value.to_be_bytes());
        self.entries += 1;
        if self.entries.is_multiple_of(BLOCK as u64) {
            self.close_block();
        }
        Ok(())
    }

    fn close_block(&mut self) {
        let crc = std::mem::take(&mut self.block).finalize();
        self.checks.extend_from_slice(&crc.to_be_bytes());
    }

    fn finish(mut self, sync: bool) -> Result<Table, StoreError> {
        if !self.entries.is_multiple_of(BLOCK as u64) {
            self.close_block();
        }
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        for w in [
            TABLE_MAGIC,
            self.key_len as u64,
            self.entries,
            self.bloom.len() as u64,
        ] {
            footer.extend_from_slice(&w.to_be_bytes());
        }
        let mut meta = std::mem::take(&mut self.bloom);
        meta.extend_from_slice(&self.fences);
        meta.extend_from_slice(&self.checks);
        footer.extend_from_slice(&table_check(&meta, &footer).to_be_bytes());
        self.out.write_all(&meta).map_err(storage)?;
        self.out.write_all(&footer).map_err(storage)?;
        let file = self.out.into_inner().map_err(|e| storage(e.error()))?;
        if sync {
            file.sync_all().map_err(storage)?;
        }
        drop(file);
        Table::open(self.path)
    }
}

/// Reads a table's entries in order (for merges), checking each block as it ends.
struct TableCursor<'a> {
    table: &'a Table,
    input: BufReader<File>,
    read: u64,
    block: crc32fast::Hasher,
    entry: Vec<u8>,
}

impl<'a> TableCursor<'a> {
    fn new(table: &'a Table) -> Result<TableCursor<'a>, StoreError> {
        let file = File::open(&table.path).map_err(storage)?;
        Ok(TableCursor {
            table,
            input: BufReader::with_capacity(1 << 20, file),
            read: 0,
            block: crc32fast::Hasher::new(),
            entry: vec![0; table.entry_len()],
        })
    }

    /// Moves to the next entry; false at the end.
    fn advance(&mut self) -> Result<bool, StoreError> {
        if self.read == self.table.entries {
            return Ok(false);
        }
        self.input.read_exact(&mut self.entry).map_err(storage)?;
        self.block.update(&self.entry);
        self.read += 1;
        if self.read.is_multiple_of(BLOCK as u64) || self.read == self.table.entries {
            let block = ((self.read - 1) / BLOCK as u64) as usize;
            if std::mem::take(&mut self.block).finalize() != self.table.checks[block] {
                return Err(corrupt(
                    &self.table.path,
                    &format!(
                        "block {block} does not match its checksum; stop the service and \
                         remove log/MANIFEST to rebuild the index from the log"
                    ),
                ));
            }
        }
        Ok(true)
    }
}

/// Merges tables (whose keys never repeat across them) into one.
fn merge(tables: &[&Table], path: PathBuf, sync: bool) -> Result<Table, StoreError> {
    let key_len = tables[0].key_len;
    let total = tables.iter().map(|t| t.entries).sum();
    let mut out = TableWriter::create(path, key_len, total)?;
    let mut cursors = Vec::with_capacity(tables.len());
    for t in tables {
        let mut c = TableCursor::new(t)?;
        if c.advance()? {
            cursors.push(c);
        }
    }
    while !cursors.is_empty() {
        let (i, _) = cursors
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.entry[..key_len].cmp(&b.1.entry[..key_len]))
            .expect("not empty");
        let c = &mut cursors[i];
        out.push(
            &c.entry[..key_len],
            u64::from_be_bytes(c.entry[key_len..].try_into().expect("8 bytes")),
        )?;
        if !c.advance()? {
            cursors.swap_remove(i);
        }
    }
    out.finish(sync)
}

/// An immutable run: the lookups of a range of the log.
pub(crate) struct Run {
    pub number: u64,
    ids: Table,
    streams: Table,
}

fn run_paths(dir: &Path, number: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("run-{number:020}.ids")),
        dir.join(format!("run-{number:020}.streams")),
    )
}

impl Run {
    fn open(dir: &Path, number: u64) -> Result<Run, StoreError> {
        let (ids, streams) = run_paths(dir, number);
        Ok(Run {
            number,
            ids: Table::open(ids)?,
            streams: Table::open(streams)?,
        })
    }

    fn events(&self) -> u64 {
        self.ids.entries
    }

    /// Writes a frozen memory table as a run.
    fn write(dir: &Path, number: u64, mem: &MemTable, sync: bool) -> Result<Run, StoreError> {
        let (ids_path, streams_path) = run_paths(dir, number);
        let mut ids: Vec<(&IdKey, &u64)> = mem.ids.iter().collect();
        ids.sort_unstable();
        let mut w = TableWriter::create(ids_path, 16, ids.len() as u64)?;
        for (k, v) in ids {
            w.push(k, *v)?;
        }
        let ids = w.finish(sync)?;
        let mut streams: Vec<(&StreamKey, &Versions)> = mem.streams.iter().collect();
        streams.sort_unstable_by_key(|(k, _)| **k);
        let mut w = TableWriter::create(streams_path, 24, mem.events as u64)?;
        let mut key = [0u8; 24];
        for (k, versions) in streams {
            key[..16].copy_from_slice(k);
            for (version, seq) in versions.as_slice() {
                key[16..].copy_from_slice(&version.to_be_bytes());
                w.push(&key, *seq)?;
            }
        }
        let streams = w.finish(sync)?;
        Ok(Run {
            number,
            ids,
            streams,
        })
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.ids.path);
        let _ = std::fs::remove_file(&self.streams.path);
    }
}

/// Every lookup of the log: the memory table, the one being written, and the runs.
#[derive(Default)]
pub(crate) struct Index {
    pub mem: MemTable,
    pub frozen: Option<Arc<MemTable>>,
    /// Oldest first.
    pub runs: Vec<Arc<Run>>,
}

impl Index {
    pub fn add(&mut self, id: IdKey, stream: StreamKey, version: u64, seq: u64) {
        self.mem.add(id, stream, version, seq);
    }

    fn tables(&self) -> impl Iterator<Item = &MemTable> {
        std::iter::once(&self.mem).chain(self.frozen.as_deref())
    }

    /// The seq stored under an id digest, if any.
    pub fn id(&self, id: &IdKey) -> Result<Option<u64>, StoreError> {
        if let Some(seq) = self.tables().find_map(|t| t.ids.get(id)) {
            return Ok(Some(*seq));
        }
        for run in self.runs.iter().rev() {
            if let Some(seq) = run.ids.get(id)? {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// A stream's last version (0 when it has no events).
    pub fn stream_version(&self, stream: &StreamKey) -> Result<u64, StoreError> {
        if let Some(v) = self
            .tables()
            .find_map(|t| t.streams.get(stream)?.as_slice().last())
        {
            return Ok(v.0);
        }
        let mut top = [0xffu8; 24];
        top[..16].copy_from_slice(stream);
        for run in self.runs.iter().rev() {
            if !run.streams.may_contain(stream) {
                continue;
            }
            if let Some((key, _)) = run.streams.floor(&top)?
                && key[..16] == stream[..]
            {
                return Ok(u64::from_be_bytes(key[16..].try_into().expect("8 bytes")));
            }
        }
        Ok(0)
    }

    /// The (version, seq) of a stream's events from `from_version`, at most `limit`, in order.
    pub fn stream_events(
        &self,
        stream: &StreamKey,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out = Vec::new();
        let mut from = [0u8; 24];
        from[..16].copy_from_slice(stream);
        from[16..].copy_from_slice(&from_version.to_be_bytes());
        for run in &self.runs {
            run.streams.range(stream, &from, limit, &mut out)?;
        }
        let mem = self.frozen.as_deref().into_iter().chain([&self.mem]);
        for t in mem {
            if let Some(versions) = t.streams.get(stream) {
                out.extend(
                    versions
                        .as_slice()
                        .iter()
                        .filter(|(v, _)| *v >= from_version),
                );
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}

/// How far a checkpoint reaches: every event up to `seq` is in its runs, and the log goes on
/// at `next` (a commit boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Covered {
    pub seq: u64,
    pub next: DirEntry,
}

/// The checkpoint: current runs, how far they reach, and the log's directory to there.
pub(crate) struct Manifest {
    pub covered: Covered,
    pub next_run: u64,
    pub runs: Vec<Arc<Run>>,
    pub directory: Vec<DirEntry>,
}

/// Reads the manifest and opens its runs; `None` when there is none, or it (or a run) does not
/// check, in which case the caller rebuilds from the log. Run files it does not name are
/// removed (left by a checkpoint a crash interrupted).
pub(crate) fn load(dir: &Path) -> Result<Option<Manifest>, StoreError> {
    let path = dir.join(MANIFEST);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            remove_runs_except(dir, &[]);
            return Ok(None);
        }
        Err(e) => return Err(storage(e)),
    };
    let manifest = match parse_manifest(&bytes) {
        Some(m) => m,
        None => {
            tracing::warn!(path = %path.display(), "the index checkpoint does not check; rebuilding it from the log");
            remove_runs_except(dir, &[]);
            return Ok(None);
        }
    };
    let (covered, next_run, numbers, directory) = manifest;
    remove_runs_except(dir, &numbers);
    let mut runs = Vec::with_capacity(numbers.len());
    for n in numbers {
        match Run::open(dir, n) {
            Ok(run) => runs.push(Arc::new(run)),
            Err(e) => {
                tracing::warn!(error = %e, "an index run cannot be used (damaged, or written by an older version); rebuilding the index from the log");
                return Ok(None);
            }
        }
    }
    Ok(Some(Manifest {
        covered,
        next_run,
        runs,
        directory,
    }))
}

type Parsed = (Covered, u64, Vec<u64>, Vec<DirEntry>);

fn parse_manifest(bytes: &[u8]) -> Option<Parsed> {
    let (body, check) = bytes.split_at(bytes.len().checked_sub(8)?);
    if blake3::hash(body).as_bytes()[..8] != *check {
        return None;
    }
    let mut words = body
        .chunks_exact(8)
        .map(|w| u64::from_be_bytes(w.try_into().expect("8 bytes")));
    if body.len() % 8 != 0 || words.next()? != MANIFEST_MAGIC {
        return None;
    }
    let covered = Covered {
        seq: words.next()?,
        next: DirEntry {
            seq: words.next()?,
            file: u32::try_from(words.next()?).ok()?,
            offset: words.next()?,
        },
    };
    let next_run = words.next()?;
    let runs = (0..words.next()?)
        .map(|_| words.next())
        .collect::<Option<Vec<_>>>()?;
    let entries = words.next()?;
    let directory = (0..entries)
        .map(|_| {
            Some(DirEntry {
                seq: words.next()?,
                file: u32::try_from(words.next()?).ok()?,
                offset: words.next()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    words
        .next()
        .is_none()
        .then_some((covered, next_run, runs, directory))
}

fn remove_runs_except(dir: &Path, keep: &[u64]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let number = name
            .strip_prefix("run-")
            .and_then(|n| n.split('.').next())
            .and_then(|n| n.parse::<u64>().ok());
        if number.is_some_and(|n| !keep.contains(&n)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_file(dir.join(format!("{MANIFEST}.tmp")));
}

/// Writes a checkpoint: `frozen` as a new run after `runs`, merges the newest runs, then the
/// manifest (atomically), then removes the runs merged away. Returns the runs now current and
/// the next run number.
pub(crate) fn checkpoint(
    dir: &Path,
    frozen: &MemTable,
    runs: &[Arc<Run>],
    mut next_run: u64,
    covered: Covered,
    directory: &[DirEntry],
    sync: bool,
) -> Result<(Vec<Arc<Run>>, u64), StoreError> {
    let mut current: Vec<Arc<Run>> = runs.to_vec();
    if frozen.events > 0 {
        current.push(Arc::new(Run::write(dir, next_run, frozen, sync)?));
        next_run += 1;
    }
    // Merge the newest runs while the run before them is less than twice their size.
    let mut from = current.len();
    let mut tail = 0;
    while from > 0 {
        let candidate = current[from - 1].events();
        if from < current.len() && candidate >= 2 * tail {
            break;
        }
        tail += candidate;
        from -= 1;
    }
    let mut merged_away = Vec::new();
    if current.len() - from >= 2 {
        let parts: Vec<Arc<Run>> = current.split_off(from);
        let (ids_path, streams_path) = run_paths(dir, next_run);
        let ids = merge(
            &parts.iter().map(|r| &r.ids).collect::<Vec<_>>(),
            ids_path,
            sync,
        )?;
        let streams = merge(
            &parts.iter().map(|r| &r.streams).collect::<Vec<_>>(),
            streams_path,
            sync,
        )?;
        current.push(Arc::new(Run {
            number: next_run,
            ids,
            streams,
        }));
        next_run += 1;
        merged_away = parts;
    }
    write_manifest(dir, covered, next_run, &current, directory, sync)?;
    for run in merged_away {
        run.remove();
    }
    Ok((current, next_run))
}

fn write_manifest(
    dir: &Path,
    covered: Covered,
    next_run: u64,
    runs: &[Arc<Run>],
    directory: &[DirEntry],
    sync: bool,
) -> Result<(), StoreError> {
    let mut body = Vec::with_capacity(80 + runs.len() * 8 + directory.len() * 24);
    let mut put = |w: u64| body.extend_from_slice(&w.to_be_bytes());
    for w in [
        MANIFEST_MAGIC,
        covered.seq,
        covered.next.seq,
        covered.next.file as u64,
        covered.next.offset,
        next_run,
        runs.len() as u64,
    ] {
        put(w);
    }
    for run in runs {
        put(run.number);
    }
    put(directory.len() as u64);
    for e in directory {
        put(e.seq);
        put(e.file as u64);
        put(e.offset);
    }
    let check = blake3::hash(&body).as_bytes()[..8].to_vec();
    body.extend_from_slice(&check);
    replace_file(dir, MANIFEST, &body, sync)
}
