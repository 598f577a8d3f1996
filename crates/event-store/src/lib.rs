//! The event store every service owns: an append-only, hash-chained log in its own files with a
//! single group-committing writer, on-disk indexes with checkpoints, idempotent appends, catch-up-then-live subscriptions, projections
//! with atomic checkpoints, and a separate key vault for crypto-shredding.
//!
//! sled never appears in this crate's API, so the rest of the workspace cannot depend on it.
//!
//! - [`EventStore`]: append (gap-free `seq`, per-stream version, expected-version check,
//!   `event_id` dedupe), read by range or stream, [`EventStore::verify`] the chain.
//! - [`Subscription`]: read from a position, then wait for new commits.
//! - [`Projector`] and [`Projection`]: disposable views with checkpoints and rebuild.
//! - [`Vault`]: per-subject data keys wrapped under a [`MasterKey`]; seal, open, shred, compact.

#![forbid(unsafe_code)]

mod index;
mod line_bloom;
mod log;
mod projection;
mod record;
mod store;
mod subscription;
mod vault;
mod viewdb;

pub use projection::{Projection, ProjectionStatus, Projector, View, ViewEntry, ViewWriter};
pub use record::{FLAG_PUBLISH, GENESIS_HASH, HASH_LEN, RecordedEvent};
pub use store::{
    DEFAULT_CACHE_BYTES, DEFAULT_INDEX_MEMTABLE_EVENTS, DEFAULT_LOG_FILE_BYTES, EventStore,
    ExpectedVersion, Head, Known, MAX_APPEND_BYTES, MAX_RECORD_BYTES, NewEvent, Position,
    SLED_SEGMENT_BYTES, StoreConfig, VerifyReport, content_digest,
};
pub use subscription::Subscription;
pub use vault::{MasterKey, Opened, SLOW_SEAL_BUILD, SealedField, Vault};

/// What can go wrong in the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The disk or the database failed; the write was not committed.
    #[error("storage unavailable: {0}")]
    Storage(String),
    /// The stream's version is not the one the caller expected.
    #[error("stream {stream:?} is at version {actual}, expected {expected:?}")]
    Conflict {
        stream: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// A stored record cannot be read.
    #[error("event {seq} is corrupt: {reason}")]
    Corrupt { seq: u64, reason: String },
    /// The caller asked for something the store does not allow.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Sealing or opening a field failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// An event is larger than the store accepts ([`MAX_RECORD_BYTES`]).
    #[error("event {event_id:?} is {bytes} bytes stored, more than the {max} a record may hold")]
    TooLarge {
        event_id: String,
        bytes: usize,
        max: usize,
    },
    /// A different event reuses an idempotency key already taken (in the log at `seq`, or
    /// earlier in the same append).
    #[error("event_id {event_id:?} of scope {scope:?} is taken by an event with other content")]
    ConflictingDuplicate {
        scope: String,
        event_id: String,
        seq: Option<u64>,
    },
    /// The store's writer has stopped.
    #[error("the event store is closed")]
    Closed,
}

#[cfg(test)]
mod log_tests;
#[cfg(test)]
mod tests;
