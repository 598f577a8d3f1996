//! The backend SDK: publish typed user events to Privacy Ledger.
//!
//! ```no_run
//! # async fn demo() -> Result<(), privacy_client::ClientError> {
//! use privacy_client::{PrivacyClient, v1::ConsentWithdrawn};
//! let client = PrivacyClient::connect("nats://127.0.0.1:4222", "billing-api").await?;
//! let receipt = client
//!     .publish("acme", "u-42", ConsentWithdrawn { purposes: vec!["marketing".into()], ..Default::default() })
//!     .await?;
//! println!("stored as JetStream message {}", receipt.stream_sequence);
//! # Ok(()) }
//! ```
//!
//! The client fills `event_id` (UUIDv7), `event_type`, `schema_version` and `occurred_at`,
//! checks the event against the contract before sending (the same checks the services apply),
//! publishes it on `privacy.in.<tenant>.<event_type>` with `Nats-Msg-Id = <tenant>:<event_id>`
//! (the tenant in the subject is what NATS permissions confine a backend to), waits for
//! JetStream's ack, and retries transient failures with the same id, so a retry is never stored
//! twice.

#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message;

pub use privacy_proto::UserEvent;
pub use privacy_proto::v1;
use privacy_proto::v1::Envelope;
use privacy_proto::{Limits, Rejection, validate_envelope};

/// What can go wrong publishing.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The event breaks the contract; it was not sent.
    #[error("invalid event: {0}")]
    Invalid(#[from] Rejection),
    /// JetStream did not acknowledge within the retries.
    #[error("publish of {event_id} failed after {attempts} attempts: {reason}")]
    Publish {
        event_id: String,
        attempts: u32,
        reason: String,
    },
}

/// JetStream's acknowledgement of a published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReceipt {
    pub event_id: String,
    pub stream_sequence: u64,
    /// JetStream had this `event_id` already (a retry or a repeat).
    pub duplicate: bool,
}

/// A connection to Privacy Ledger's bus for one publishing system.
#[derive(Clone)]
pub struct PrivacyClient {
    js: jetstream::Context,
    prefix: String,
    source: String,
    attempts: u32,
    limits: Limits,
}

impl PrivacyClient {
    /// Connects to NATS; `url` may list a cluster's servers separated by commas. `source`
    /// names the publishing system in every envelope.
    pub async fn connect(url: &str, source: &str) -> Result<PrivacyClient, ClientError> {
        PrivacyClient::connect_with(url, source, async_nats::ConnectOptions::new()).await
    }

    /// Like [`PrivacyClient::connect`], with connection options of your own: credentials
    /// (`user_and_password`, `credentials_file`, `nkey`), TLS, timeouts.
    pub async fn connect_with(
        url: &str,
        source: &str,
        options: async_nats::ConnectOptions,
    ) -> Result<PrivacyClient, ClientError> {
        let servers: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let client = options
            .name(format!("privacy-client:{source}"))
            .connect(servers)
            .await
            .map_err(|e| ClientError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(PrivacyClient::from_nats(client, source))
    }

    /// Wraps an existing NATS connection.
    pub fn from_nats(client: async_nats::Client, source: &str) -> PrivacyClient {
        PrivacyClient {
            js: jetstream::new(client),
            prefix: "privacy".into(),
            source: source.to_owned(),
            attempts: 5,
            limits: Limits::default(),
        }
    }

    /// Uses another subject prefix than `privacy`.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// Tries each publish this many times (at least once) before giving up.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Builds the envelope for an event that happens now, with a fresh UUIDv7 id.
    pub fn envelope<E: UserEvent>(&self, tenant: &str, subject_id: &str, event: E) -> Envelope {
        Envelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: E::TYPE.as_str().to_owned(),
            schema_version: 1,
            tenant: tenant.to_owned(),
            subject_id: subject_id.to_owned(),
            occurred_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            source: self.source.clone(),
            payload: Some(event.into_payload()),
            ..Default::default()
        }
    }

    /// Publishes an event about `subject_id` of `tenant` that happens now.
    pub async fn publish(
        &self,
        tenant: &str,
        subject_id: &str,
        event: impl UserEvent,
    ) -> Result<PublishReceipt, ClientError> {
        self.publish_envelope(self.envelope(tenant, subject_id, event))
            .await
    }

    /// Publishes a complete envelope (e.g. one with its own `occurred_at` or correlation ids).
    ///
    /// The publication is a `publish` span (a child of the caller's current span, if any); its
    /// W3C trace context travels in the message's headers, so the services' spans for this
    /// event join the caller's trace.
    pub async fn publish_envelope(
        &self,
        envelope: Envelope,
    ) -> Result<PublishReceipt, ClientError> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "publish",
            event_type = %envelope.event_type,
            tenant = %envelope.tenant,
            event_id = %envelope.event_id,
        );
        self.publish_in_span(envelope).instrument(span).await
    }

    async fn publish_in_span(&self, envelope: Envelope) -> Result<PublishReceipt, ClientError> {
        validate_envelope(&envelope, None, SystemTime::now(), &self.limits)?;
        let subject = format!(
            "{}.in.{}.{}",
            self.prefix, envelope.tenant, envelope.event_type
        );
        let bytes = envelope.encode_to_vec();
        privacy_proto::validate::check_size(bytes.len(), &self.limits)?;
        let mut delay = Duration::from_millis(100);
        let mut last_error = String::new();
        for attempt in 1..=self.attempts {
            let mut headers = HeaderMap::new();
            headers.insert("Content-Type", "application/protobuf");
            privacy_telemetry::inject_nats(&mut headers);
            let msg = PublishMessage::build()
                .payload(bytes.clone().into())
                .headers(headers)
                .message_id(format!("{}:{}", envelope.tenant, envelope.event_id));
            let result = async {
                self.js
                    .send_publish(subject.clone(), msg)
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(ack) => {
                    return Ok(PublishReceipt {
                        event_id: envelope.event_id,
                        stream_sequence: ack.sequence,
                        duplicate: ack.duplicate,
                    });
                }
                Err(e) => last_error = e,
            }
            if attempt < self.attempts {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        Err(ClientError::Publish {
            event_id: envelope.event_id,
            attempts: self.attempts,
            reason: last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_invalid_event_is_refused_before_it_is_sent() {
        // A client over a connection that is never used: validation fails first.
        let opts = async_nats::ConnectOptions::new().retry_on_initial_connect();
        let nats = opts.connect("nats://127.0.0.1:1").await.unwrap();
        let client = PrivacyClient::from_nats(nats, "test");
        let err = client
            .publish("acme", "ann@example.com", v1::ConsentWithdrawn::default())
            .await
            .unwrap_err();
        match err {
            ClientError::Invalid(r) => assert_eq!(r.field, "subject_id"),
            other => panic!("{other}"),
        }
        let env = client.envelope("acme", "u-1", v1::SubjectDeactivated::default());
        assert_eq!(env.event_type, "subject.deactivated");
        assert!(uuid::Uuid::parse_str(&env.event_id).is_ok());
    }
}
