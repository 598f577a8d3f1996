//! The ingest loop: one durable pull consumer per subject filter, feeding the service's store.
//!
//! Per batch: decode (protobuf, or JSON when `Content-Type: application/json`) → the service's
//! door (contract, idempotency key, domain check, sealing) → one append of every accepted event
//! (deduped by (`tenant`, `event_id`), group-committed and fsynced) → ack. A refused message
//! goes to the DLQ and is acked only after the DLQ has it; a transient failure naks with
//! back-off and never acks. Two messages of one batch with the same key are one event when
//! their content agrees (the second is a duplicate) and a `conflicting_duplicate` otherwise.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use futures::future::BoxFuture;
use privacy_event_store::{EventStore, ExpectedVersion, NewEvent};
use privacy_proto::v1::Envelope;
use privacy_proto::validate::check_size;
use privacy_proto::{Encoding, Limits, Rejection, RejectionCode, decode_envelope};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{BusConfig, BusError, dlq};

/// Batches decoded and submitted ahead of the oldest one still committing.
const PIPELINE: usize = 3;

/// What a service makes of a decoded user event.
pub enum Prepared {
    /// Store these, atomically: the user event first, then any domain events it implies.
    Store(Vec<NewEvent>),
    /// Refuse it (to the DLQ).
    Reject(Rejection),
    /// Already stored with the same content: ack it, store nothing.
    Duplicate,
}

/// A failure that is not the message's fault (storage, the vault, views still catching up):
/// the message is nak'ed and redelivered.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Transient(#[from] pub Box<dyn std::error::Error + Send + Sync>);

/// The service-specific part of ingest: the service kit's one door into the log.
pub trait IngestHandler: Send + Sync + 'static {
    /// Checks a decoded event (the contract, with `subject_type` the event type the NATS subject
    /// names; then the service's own rules) and turns it into the events to store (stream
    /// named, personal data sealed).
    fn prepare<'a>(
        &'a self,
        envelope: Envelope,
        subject_type: Option<&'a str>,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Prepared, Transient>>;

    /// Runs once per batch after `prepare` and before the append (e.g. make new data keys
    /// durable). `Err` naks the batch.
    fn before_append(&self) -> Result<(), Transient> {
        Ok(())
    }
}

/// Counters of one service's ingest, for logs and health.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub naked: AtomicU64,
}

impl IngestStats {
    pub fn snapshot(&self) -> [u64; 4] {
        [
            self.accepted.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.naked.load(Ordering::Relaxed),
        ]
    }
}

/// Runs a service's ingest consumers.
#[derive(Clone)]
pub struct Ingest {
    pub js: jetstream::Context,
    pub store: EventStore,
    pub handler: Arc<dyn IngestHandler>,
    pub service: String,
    pub config: BusConfig,
    pub limits: Limits,
    pub stats: Arc<IngestStats>,
    /// Where each stored event's `store` span is left for the outbox relay.
    pub links: Arc<privacy_telemetry::TraceLinks>,
}

/// A message's fate within a batch.
enum Fate {
    Store(Vec<NewEvent>),
    Reject(Rejection),
    Duplicate,
    Retry,
}

/// The durable consumer name for a service and subject filter, e.g. `consent_all_consent_all`
/// for `privacy.in.*.consent.*` (every tenant's `consent.*`).
pub fn consumer_name(service: &str, prefix: &str, filter: &str) -> String {
    let tail = filter
        .strip_prefix(prefix)
        .and_then(|s| s.strip_prefix(".in."))
        .unwrap_or(filter);
    let tail = tail
        .replace('.', "_")
        .replace('*', "all")
        .replace('>', "rest");
    format!("{}_{tail}", service.replace('-', "_"))
}

impl Ingest {
    /// Creates (idempotently) the durable consumer for `filter` and processes its messages until
    /// `shutdown` is cancelled; the batch in hand when that happens is finished first.
    pub async fn run(&self, filter: &str, shutdown: CancellationToken) -> Result<(), BusError> {
        let name = consumer_name(&self.service, &self.config.prefix, filter);
        let consumer_err = |reason: String| BusError::Consumer {
            consumer: name.clone(),
            reason,
        };
        let stream_name = self.config.in_stream();
        let consumer =
            crate::config::durable_consumer(&self.js, &self.config, &stream_name, &name, filter)
                .await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.config.batch_size)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| consumer_err(e.to_string()))?;
        let mut chunks = messages.ready_chunks(self.config.batch_size);
        tracing::info!(consumer = %name, filter, "ingesting");
        // Up to PIPELINE batches in flight: the next one is decoded and submitted while earlier
        // ones commit; the store commits them in submission order.
        let mut committing: std::collections::VecDeque<tokio::task::JoinHandle<()>> =
            std::collections::VecDeque::new();
        loop {
            let chunk = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else { break };
            let mut batch = Vec::with_capacity(chunk.len());
            // After a NATS node failed, the pull request in flight may be gone: async-nats only
            // reports it and would wait for the request to expire (~35 s). Leaving the loop
            // makes the caller pull afresh (the kit restarts it after a second).
            let mut pull_lost = false;
            for m in chunk {
                match m {
                    Ok(m) => batch.push(m),
                    Err(e) => {
                        tracing::warn!(consumer = %name, error = %e, "pull error");
                        pull_lost |= matches!(
                            e.kind(),
                            pull::MessagesErrorKind::NoResponders
                                | pull::MessagesErrorKind::MissingHeartbeat
                        );
                    }
                }
            }
            if !batch.is_empty() {
                let span =
                    tracing::debug_span!("ingest_batch", consumer = %name, size = batch.len());
                let commit = self.process(batch).instrument(span).await;
                committing.push_back(tokio::spawn(commit));
                if committing.len() >= PIPELINE
                    && let Some(oldest) = committing.pop_front()
                {
                    rethrow(oldest.await);
                }
            }
            if pull_lost {
                tracing::warn!(consumer = %name, "pull request lost; pulling afresh");
                break;
            }
        }
        for pending in committing {
            rethrow(pending.await);
        }
        tracing::info!(consumer = %name, "ingest stopped");
        Ok(())
    }

    /// Decodes, checks and submits one pulled batch; the returned future waits for the commit
    /// and then acks (or naks) every stored message. Refused messages are dead-lettered here.
    pub async fn process(
        &self,
        batch: Vec<jetstream::Message>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let now = SystemTime::now();
        let mut msgs = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        // The key and content of each user event of this batch: a repeat is one event.
        let mut keys: HashMap<(String, String), [u8; 32]> = HashMap::new();
        // One `store` span per stored message (a child of its `ingest` span), open until the
        // commit is durable and acked.
        let mut spans = Vec::new();
        for msg in batch {
            let (fate, span) = self.classify(&msg, now).await;
            match fate {
                Fate::Store(e) => {
                    let first = &e[0];
                    let key = (first.scope.clone(), first.event_id.clone());
                    match keys.get(&key) {
                        Some(content) if *content == first.content => {
                            // Acked with the batch once the first copy is durable.
                            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            msgs.push(msg);
                        }
                        Some(_) => {
                            let rejection = Rejection::new(
                                RejectionCode::ConflictingDuplicate,
                                "event_id",
                                format!(
                                    "event_id {:?} arrived twice in one batch with different \
                                     content; a new event needs a new event_id",
                                    key.1
                                ),
                            );
                            self.dead_letter(&msg, &rejection).await;
                        }
                        None => {
                            keys.insert(key, first.content);
                            msgs.push(msg);
                            let store =
                                tracing::info_span!(parent: &span, "store", events = e.len());
                            for event in e.iter().filter(|e| e.publish) {
                                self.links.remember(&event.scope, &event.event_id, &store);
                            }
                            spans.push(store);
                            events.extend(e);
                        }
                    }
                }
                Fate::Duplicate => {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = msg.ack().await {
                        tracing::debug!(error = %e, "ack failed");
                    }
                }
                Fate::Retry => nak(&self.stats, &msg).await,
                Fate::Reject(rejection) => self.dead_letter(&msg, &rejection).await,
            }
        }
        let stats = self.stats.clone();
        let submitted = if events.is_empty() {
            None
        } else if let Err(e) = self.handler.before_append() {
            tracing::warn!(error = %e, "batch not stored; retrying later");
            for msg in &msgs {
                nak(&stats, msg).await;
            }
            None
        } else {
            Some(self.store.submit(events, ExpectedVersion::Any).await)
        };
        async move {
            let _spans = spans;
            let Some(submitted) = submitted else { return };
            let outcome = match submitted {
                Ok(commit) => commit.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(positions) => {
                    let dups = positions.iter().filter(|p| p.duplicate).count() as u64;
                    stats.duplicates.fetch_add(dups, Ordering::Relaxed);
                    stats
                        .accepted
                        .fetch_add(positions.len() as u64 - dups, Ordering::Relaxed);
                    for msg in &msgs {
                        if let Err(e) = msg.ack().await {
                            // The event is stored; a lost ack means a redelivery, which dedupes.
                            tracing::debug!(error = %e, "ack failed");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, size = msgs.len(), "store refused the batch; nak with back-off");
                    for msg in &msgs {
                        nak(&stats, msg).await;
                    }
                }
            }
        }
    }

    /// A message's fate, and its `ingest` span (a child of the publisher's trace context).
    async fn classify(&self, msg: &jetstream::Message, now: SystemTime) -> (Fate, tracing::Span) {
        let (subject_tenant, subject_type) = match self.config.parse_in_subject(&msg.subject) {
            Some((tenant, event_type)) => (Some(tenant), Some(event_type)),
            None => (None, None),
        };
        let parent = privacy_telemetry::extract_nats(msg.headers.as_ref());
        // The subject is not logged: its tokens are whatever the publisher wrote.
        let span = tracing::info_span!(
            "ingest",
            service = %self.service,
            in_seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default()
        );
        privacy_telemetry::set_parent(&span, parent);
        let fate = async {
            if let Err(r) = check_size(msg.payload.len(), &self.limits) {
                return Fate::Reject(r);
            }
            let content_type = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Content-Type"))
                .map(|v| v.as_str());
            let envelope =
                match decode_envelope(&msg.payload, Encoding::from_content_type(content_type)) {
                    Ok(env) => env,
                    Err(e) => {
                        return Fate::Reject(Rejection::new(
                            RejectionCode::Malformed,
                            "message",
                            e.to_string(),
                        ));
                    }
                };
            if let Some(tenant) = subject_tenant
                && envelope.tenant != tenant
            {
                return Fate::Reject(Rejection::new(
                    RejectionCode::TenantMismatch,
                    "tenant",
                    "the envelope's tenant is not the tenant of the NATS subject \
                     (<prefix>.in.<tenant>.<event_type>); neither value is repeated here",
                ));
            }
            match self.handler.prepare(envelope, subject_type, now).await {
                Ok(Prepared::Store(e)) if e.is_empty() => Fate::Duplicate,
                Ok(Prepared::Store(e)) => Fate::Store(e),
                Ok(Prepared::Reject(r)) => Fate::Reject(r),
                Ok(Prepared::Duplicate) => Fate::Duplicate,
                Err(e) => {
                    tracing::warn!(error = %e, "transient failure preparing an event");
                    Fate::Retry
                }
            }
        }
        .instrument(span.clone())
        .await;
        (fate, span)
    }

    async fn dead_letter(&self, msg: &jetstream::Message, rejection: &Rejection) {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
        let dedupe_id = format!("{}:{}:{seq}", self.service, self.config.in_stream());
        // The subject's tenant token, when it is a tenant id (it may be anything a publisher
        // wrote; the DLQ subject never carries more than a tenant id).
        let tenant = self
            .config
            .parse_in_subject(&msg.subject)
            .map(|(t, _)| t)
            .filter(|t| privacy_proto::validate::is_tenant_id(t))
            .unwrap_or("invalid-tenant");
        let subject = self.config.dlq_subject(&self.service, tenant);
        tracing::warn!(
            code = rejection.code.as_str(),
            field = %rejection.field,
            reason = %rejection.reason,
            in_seq = seq,
            "refused; sent to {subject}"
        );
        match dlq::publish(&self.js, &subject, msg, rejection, &dedupe_id).await {
            Ok(()) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = msg.ack().await {
                    tracing::debug!(error = %e, "ack failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "DLQ publish failed; the message will be redelivered");
                nak(&self.stats, msg).await;
            }
        }
    }
}

/// A commit task that panicked panics this loop too, so its supervisor sees it.
fn rethrow(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Negative ack with exponential back-off by delivery count (100 ms doubling, at most 10 s).
async fn nak(stats: &IngestStats, msg: &jetstream::Message) {
    stats.naked.fetch_add(1, Ordering::Relaxed);
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).clamp(1, 8) as u32;
    let delay = Duration::from_millis(100 * 2u64.pow(delivered - 1)).min(Duration::from_secs(10));
    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::debug!(error = %e, "nak failed; the server redelivers after ack_wait");
    }
}

#[cfg(test)]
mod tests {
    use super::consumer_name;

    #[test]
    fn consumer_names_are_valid_and_distinct() {
        assert_eq!(
            consumer_name("consent", "privacy", "privacy.in.*.consent.*"),
            "consent_all_consent_all"
        );
        assert_eq!(
            consumer_name("disclosure-log", "privacy", "privacy.in.*.data.disclosed"),
            "disclosure_log_all_data_disclosed"
        );
    }
}
