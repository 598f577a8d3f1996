//! The outbox relay: stored domain events reach the bus exactly as stored, in order.
//!
//! Events are committed to the store first (flagged for publishing); the relay reads them from
//! its cursor, publishes each with `Nats-Msg-Id = <service>:<tenant>:<event_id>` (event ids are
//! unique per tenant and store only: two services may record events with one id, e.g. each
//! its `<erasure>/shredded`) and `Privacy-Seq = seq`, waits for
//! JetStream's ack, and only then moves on. One event is in flight at a time, so a failure can
//! never let a later event overtake an earlier one.
//!
//! Where to resume: the later of the durable cursor (fdatasynced after every
//! [`CURSOR_EVERY`] published events, at the end of each batch and when shutdown interrupts)
//! and the last `Privacy-Seq` this service has on the stream (checked against the store by its
//! `Nats-Msg-Id`). So a restart never re-publishes what the stream already holds, however long
//! after the duplicate window it comes; only a crash between JetStream's ack and the stream
//! lookup could, and the lookup happens first thing at start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, message::PublishMessage};
use privacy_event_store::{EventStore, RecordedEvent};
use privacy_proto::catalogue::{ORDER_EVENTS, order_of};
use privacy_proto::v1::Envelope;
use prost::Message;
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
    /// The spans that committed the events, to parent each publication on.
    links: Arc<privacy_telemetry::TraceLinks>,
}

const CURSOR: &str = "outbox.cursor";

/// The `Nats-Msg-Id` of an event `service` published: `<service>:<tenant>:<event_id>`, so that
/// two tenants' or two services' events with one id are never taken for duplicates by
/// JetStream.
pub fn msg_id(service: &str, event: &RecordedEvent) -> String {
    format!("{service}:{}:{}", event.scope, event.event_id)
}
/// The cursor is made durable at least this often (in published events).
pub const CURSOR_EVERY: usize = 256;

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
            links: Arc::default(),
        }
    }

    /// Continues each event's trace from the span that committed it, as left in `links`.
    pub fn with_links(mut self, links: Arc<privacy_telemetry::TraceLinks>) -> Self {
        self.links = links;
        self
    }

    /// The last sequence number this relay has dealt with since it started.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// The last sequence number known to be on the bus (or skipped as not published).
    /// An unreadable cursor is an error, never silently 0 (that would re-publish everything).
    pub fn cursor(&self) -> Result<u64, BusError> {
        match self.store.meta(CURSOR)? {
            None => Ok(0),
            Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                Ok(b) => Ok(u64::from_be_bytes(b)),
                Err(_) => Err(BusError::Store(privacy_event_store::StoreError::Corrupt {
                    seq: 0,
                    reason: format!("the outbox cursor has {} bytes, not 8", v.len()),
                })),
            },
        }
    }

    /// The last sequence number this service published that the stream holds (0 if none), as
    /// its `Privacy-Seq` header says, checked against the store by `Nats-Msg-Id`.
    pub async fn last_on_stream(&self) -> Result<u64, BusError> {
        let stream_name = self.config.evt_stream();
        let stream_err = |reason: String| BusError::Stream {
            stream: stream_name.clone(),
            reason,
        };
        let stream = self
            .js
            .get_stream(&stream_name)
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        let subjects = self.config.domain_subjects(&self.service);
        let msg = match stream.get_last_raw_message_by_subject(&subjects).await {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(0),
            Err(e) => return Err(stream_err(e.to_string())),
        };
        let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
        let Some(seq) = header("Privacy-Seq").and_then(|s| s.parse::<u64>().ok()) else {
            tracing::warn!(subject = %msg.subject, "the last outbox message has no Privacy-Seq; resuming from the cursor");
            return Ok(0);
        };
        match self.store.get(seq)? {
            Some(e) if Some(msg_id(&self.service, &e)) == header("Nats-Msg-Id") => Ok(seq),
            _ => {
                tracing::warn!(
                    seq,
                    "the stream's last outbox message does not match this store's event {seq}; \
                     resuming from the cursor"
                );
                Ok(0)
            }
        }
    }

    /// Relays until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), BusError> {
        let cursor = self.cursor()?;
        let on_stream = self.last_on_stream().await?;
        if on_stream > cursor {
            tracing::info!(
                cursor,
                on_stream,
                "the stream is ahead of the outbox cursor; resuming after it"
            );
        }
        let start = cursor.max(on_stream);
        self.position.fetch_max(start, Ordering::AcqRel);
        let mut saved = cursor;
        let mut sub = self
            .store
            .subscribe(start + 1)
            .only_flagged(privacy_event_store::FLAG_PUBLISH);
        loop {
            let batch = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                batch = sub.next_batch(4096) => batch?,
            };
            let last = sub.position() - 1;
            let mut unsaved = 0;
            let mut interrupted = false;
            for event in batch.iter().filter(|e| e.is_published()) {
                if !self.publish_until_acked(event, &shutdown).await {
                    interrupted = true;
                    break;
                }
                self.position.store(event.seq, Ordering::Release);
                unsaved += 1;
                if unsaved >= CURSOR_EVERY {
                    self.save(event.seq, &mut saved).await?;
                    unsaved = 0;
                }
            }
            if interrupted {
                break;
            }
            // Moving past events that are not published needs no durable write: after a
            // restart they are read again and skipped again.
            if unsaved > 0 {
                self.save(last, &mut saved).await?;
            }
            self.position.store(last, Ordering::Release);
        }
        self.save(self.position(), &mut saved).await
    }

    /// Makes the cursor durable at `seq` unless it is there already.
    async fn save(&self, seq: u64, saved: &mut u64) -> Result<(), BusError> {
        if seq > *saved {
            self.store.set_meta(CURSOR, &seq.to_be_bytes()).await?;
            *saved = seq;
        }
        Ok(())
    }

    /// Publishes one event, retrying with back-off until JetStream acks it. Returns false when
    /// shutdown interrupted it (the cursor has not moved, so it is published again next time).
    async fn publish_until_acked(
        &self,
        event: &RecordedEvent,
        shutdown: &CancellationToken,
    ) -> bool {
        let subject = self
            .config
            .domain_subject(&self.service, &event.scope, &event.event_type);
        let order = self.order_message(event);
        let span = tracing::info_span!(
            "outbox.publish",
            service = %self.service,
            seq = event.seq,
            event_type = %event.event_type,
        );
        if let Some(cause) = self.links.take(&event.scope, &event.event_id) {
            privacy_telemetry::set_parent(&span, cause);
        }
        tracing::Instrument::instrument(
            self.attempt_until_acked(event, &subject, order, shutdown),
            span,
        )
        .await
    }

    async fn attempt_until_acked(
        &self,
        event: &RecordedEvent,
        subject: &str,
        order: Option<(String, String, Vec<u8>)>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut delay = Duration::from_millis(50);
        loop {
            let attempt = async {
                if let Some((subject, id, bytes)) = &order {
                    self.send(subject, id, bytes.clone(), None).await?;
                }
                self.publish(subject, event).await
            };
            match attempt.await {
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

    /// The order an event carries, as (subject, `Nats-Msg-Id`, bytes); `None` for other events.
    /// An order event whose order does not decode is stored evidence of a bug: it is logged
    /// and relayed as a domain event only.
    fn order_message(&self, event: &RecordedEvent) -> Option<(String, String, Vec<u8>)> {
        if !ORDER_EVENTS.contains(&event.event_type.as_str()) {
            return None;
        }
        let order = Envelope::decode(event.data.as_slice())
            .ok()
            .and_then(|e| order_of(&e));
        let Some(order) = order else {
            tracing::error!(seq = event.seq, event_type = %event.event_type, "an order event without a readable order; not sent to any system");
            return None;
        };
        let subject = self
            .config
            .out_subject(&order.tenant, &order.system, &order.action);
        // A re-sent order (attempt 2, 3…) is a new message to JetStream, the same order to the
        // system.
        let id = match order.attempt {
            0 | 1 => format!("{}:{}", order.tenant, order.order_id),
            n => format!("{}:{}:{n}", order.tenant, order.order_id),
        };
        Some((subject, id, order.encode_to_vec()))
    }

    async fn publish(&self, subject: &str, event: &RecordedEvent) -> Result<(), BusError> {
        self.send(
            subject,
            &msg_id(&self.service, event),
            event.data.clone(),
            Some(event.seq),
        )
        .await
    }

    /// Publishes protobuf `bytes` and waits for JetStream's ack.
    async fn send(
        &self,
        subject: &str,
        id: &str,
        bytes: Vec<u8>,
        seq: Option<u64>,
    ) -> Result<(), BusError> {
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/protobuf");
        if let Some(seq) = seq {
            headers.insert("Privacy-Seq", seq.to_string().as_str());
        }
        privacy_telemetry::inject_nats(&mut headers);
        let msg = PublishMessage::build()
            .payload(bytes.into())
            .headers(headers)
            .message_id(id);
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
