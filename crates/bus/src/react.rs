//! Domain events a service takes from other services (`<prefix>.evt.…`, stream PRIVACY_EVT):
//! one durable pull consumer per event the catalogue routes to the service
//! ([`privacy_proto::catalogue::CROSS_SERVICE`]), named `<service>_evt_<event>`. Each event is
//! handed to the service's [`Reaction`] and acked only once the reaction succeeded (its effect
//! is durable); a failure naks with back-off, so the event comes again. Reactions are
//! idempotent (they record keyed events), so a redelivery changes nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use futures::future::BoxFuture;
use privacy_proto::v1::Envelope;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::{BusConfig, BusError};

/// What a service does with another service's domain event.
pub trait Reaction: Send + Sync + 'static {
    /// Acts on `envelope` (as the publishing service stored it; `seq` is its position in that
    /// service's log, from `Privacy-Seq`). `Err` says why, and the event is redelivered.
    fn react(&self, envelope: Envelope, seq: Option<u64>) -> BoxFuture<'_, Result<(), String>>;
}

/// The durable consumer of `service` for the domain event `event`.
pub fn reaction_consumer_name(service: &str, event: &str) -> String {
    format!(
        "{}_evt_{}",
        service.replace('-', "_"),
        event.replace('.', "_")
    )
}

/// Every (service, consumer name, full subject filter) the catalogue's reactions need.
pub fn reaction_consumers(config: &BusConfig) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    for (_, _, consumers) in privacy_proto::catalogue::CROSS_SERVICE {
        for service in *consumers {
            for (event, tail) in privacy_proto::catalogue::cross_service_filters(service) {
                let name = reaction_consumer_name(service, event);
                if !out.iter().any(|(_, n, _)| *n == name) {
                    out.push((*service, name, format!("{}.{tail}", config.prefix)));
                }
            }
        }
    }
    out
}

/// Takes `filter`'s events for `service` until `shutdown`, handing each to `reaction`.
pub async fn run_reactions(
    js: &jetstream::Context,
    config: &BusConfig,
    name: &str,
    filter: &str,
    reaction: Arc<dyn Reaction>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let consumer_err = |reason: String| BusError::Consumer {
        consumer: name.to_owned(),
        reason,
    };
    let consumer =
        crate::config::durable_consumer(js, config, &config.evt_stream(), name, filter).await?;
    let mut messages = consumer
        .stream()
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| consumer_err(e.to_string()))?;
    tracing::info!(consumer = %name, filter, "taking events of other services");
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let msg = match next {
            None => return Ok(()),
            Some(Err(e)) => return Err(consumer_err(e.to_string())),
            Some(Ok(m)) => m,
        };
        let seq = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Privacy-Seq"))
            .and_then(|v| v.as_str().parse().ok());
        let envelope = match Envelope::decode(msg.payload.as_ref()) {
            Ok(e) => e,
            Err(e) => {
                // Another service's bug: nothing here can fix it; say so and move on.
                tracing::error!(consumer = %name, subject = %msg.subject, error = %e, "a domain event that does not decode; skipped");
                let _ = msg.ack_with(AckKind::Term).await;
                continue;
            }
        };
        // The reaction continues the trace of the publication it answers.
        let span = tracing::info_span!(
            "react",
            consumer = %name,
            event_type = %envelope.event_type,
            seq = seq.unwrap_or_default(),
        );
        privacy_telemetry::set_parent(&span, privacy_telemetry::extract_nats(msg.headers.as_ref()));
        let reacted = tracing::Instrument::instrument(reaction.react(envelope, seq), span).await;
        match reacted {
            Ok(()) => {
                if let Err(e) = msg.ack().await {
                    tracing::debug!(error = %e, "ack failed; the event comes again");
                }
            }
            Err(e) => {
                tracing::warn!(consumer = %name, subject = %msg.subject, error = %e, "reaction failed; the event comes again");
                let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).clamp(1, 8) as u32;
                let delay = Duration::from_millis(100 * 2u64.pow(delivered - 1))
                    .min(Duration::from_secs(10));
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }
}
