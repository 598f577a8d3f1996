//! The bus: how services meet NATS JetStream (DESIGN §4.2, §5.1–5.3).
//!
//! - [`BusConfig`] and [`ensure_streams`]: the four streams, created idempotently at start-up.
//! - [`Ingest`]: a durable pull consumer feeding the event store — decode (protobuf or JSON),
//!   validate, append (deduped by `event_id`), ack only after the group commit; invalid input to
//!   the DLQ with its reason and original bytes, then ack; store failure: nak with back-off.
//! - [`OutboxRelay`]: publishes stored domain events in order with `Nats-Msg-Id =
//!   <service>:<tenant>:<event_id>`
//!   and advances a durable cursor only after JetStream acked.
//! - [`run_reactions`]: a service's durable consumers of other services' domain events, each
//!   event acked only after the service's [`Reaction`] succeeded.
//! - [`authz`]: the NATS authorization block confining each user to its subjects.

#![forbid(unsafe_code)]

pub mod authz;
mod config;
mod dlq;
mod ingest;
mod outbox;
mod react;

pub use config::{
    BusConfig, Credentials, catalogue_filters, connect, consumer_config, ensure_streams,
};
pub use dlq::{HEADER_ERROR, HEADER_ERROR_CODE, HEADER_ERROR_FIELD, HEADER_ORIGINAL_SUBJECT};
pub use ingest::{Ingest, IngestHandler, IngestStats, Prepared, Transient};
pub use outbox::{OutboxRelay, msg_id};
pub use react::{Reaction, reaction_consumer_name, reaction_consumers, run_reactions};

/// What can go wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("JetStream consumer {consumer}: {reason}")]
    Consumer { consumer: String, reason: String },
    #[error("publish to {subject}: {reason}")]
    Publish { subject: String, reason: String },
    #[error(transparent)]
    Store(#[from] privacy_event_store::StoreError),
}
