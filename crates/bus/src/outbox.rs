//! The outbox relay: stored domain events reach the bus exactly as stored, in order.
//!
//! Events are committed to the store first (flagged for publishing); the relay reads them from
//! its durable cursor, publishes each with `Nats-Msg-Id = event_id`, waits for JetStream's ack,
//! and only then advances the cursor. One event is in flight at a time, so a failure can never
//! let a later event overtake an earlier one; a crash between publish and cursor re-publishes,
//! and the stream's duplicate window absorbs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use privacy_event_store::{EventStore, RecordedEvent};
use tokio_util::sync::CancellationToken;

use crate::{BusConfig, BusError};

/// Publishes a store's domain events to `<prefix>.evt.<service>.<event_type>`.
#[derive(Clone)]
pub struct OutboxRelay {
    js: jetstream::Context,
    store: EventStore,
    service: String,
    config: BusConfig,
    /// The last sequence number relayed or skipped (in memory; the durable cursor may lag it
    /// by events that are not published).
    position: Arc<AtomicU64>,
}

const CURSOR: &str = "outbox.cursor";

impl OutboxRelay {
    pub fn new(
        js: jetstream::Context,
        store: EventStore,
        service: &str,
        config: BusConfig,
    ) -> Self {
        OutboxRelay {
            js,
            store,
            service: service.to_owned(),
            config,
            position: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The last sequence number this relay has dealt with since it started.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// The last sequence number known to be on the bus (or skipped as not published).
    pub fn cursor(&self) -> Result<u64, BusError> {
        Ok(self
            .store
            .meta(CURSOR)?
            .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8]))))
    }

    /// Relays until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), BusError> {
        let cursor = self.cursor()?;
        self.position.fetch_max(cursor, Ordering::AcqRel);
        let mut sub = self
            .store
            .subscribe(cursor + 1)
            .only_flagged(privacy_event_store::FLAG_PUBLISH);
        loop {
            let batch = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                batch = sub.next_batch(4096) => batch?,
            };
            let last = sub.position() - 1;
            let mut published = false;
            for event in batch.iter().filter(|e| e.is_published()) {
                if !self.publish_until_acked(event, &shutdown).await {
                    return Ok(());
                }
                published = true;
            }
            // Moving past events that are not published needs no durable write: after a
            // restart they are read again and skipped again.
            if published {
                self.store.set_meta(CURSOR, &last.to_be_bytes()).await?;
            }
            self.position.store(last, Ordering::Release);
        }
    }

    /// Publishes one event, retrying with back-off until JetStream acks it. Returns false when
    /// shutdown interrupted it (the cursor has not moved, so it is published again next time).
    async fn publish_until_acked(
        &self,
        event: &RecordedEvent,
        shutdown: &CancellationToken,
    ) -> bool {
        let subject = self.config.domain_subject(&self.service, &event.event_type);
        let mut delay = Duration::from_millis(50);
        loop {
            match self.publish(&subject, event).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(seq = event.seq, error = %e, "outbox publish failed; retrying in {delay:?}");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn publish(&self, subject: &str, event: &RecordedEvent) -> Result<(), BusError> {
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/protobuf");
        headers.insert("Privacy-Seq", event.seq.to_string().as_str());
        privacy_telemetry::inject_nats(&mut headers);
        let msg = PublishMessage::build()
            .payload(event.data.clone().into())
            .headers(headers)
            .message_id(&event.event_id);
        let err = |reason: String| BusError::Publish {
            subject: subject.to_owned(),
            reason,
        };
        self.js
            .send_publish(subject.to_owned(), msg)
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}
