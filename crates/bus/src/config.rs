//! Bus configuration, connecting, and the idempotent creation of the four streams.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::BusError;

/// Where NATS is and how the streams are named.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// A NATS URL, or a cluster's nodes' URLs separated by commas.
    pub url: String,
    /// Subject prefix: `<prefix>.in.<tenant>.<event_type>`, `<prefix>.evt.<service>.<tenant>.<type>`,
    /// `<prefix>.out.>`, `<prefix>.dlq.<service>.<tenant>` (DESIGN §4.2).
    pub prefix: String,
    /// Stream names are `<stream_prefix>_IN`, `_EVT`, `_OUT`, `_DLQ`.
    pub stream_prefix: String,
    /// Stream replicas (3 on a NATS cluster).
    pub replicas: usize,
    /// JetStream's `Nats-Msg-Id` duplicate window.
    pub duplicate_window: Duration,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Most messages pulled into one ingest batch.
    pub batch_size: usize,
    /// How long the DLQ keeps a refused message (it may hold personal data in the clear).
    pub dlq_max_age: Duration,
    /// NATS user and password, when the server requires them.
    pub credentials: Option<Credentials>,
}

/// A NATS user and password; Debug never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, password hidden)", self.user)
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "privacy".into(),
            stream_prefix: "PRIVACY".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            batch_size: 1000,
            dlq_max_age: Duration::from_secs(7 * 86_400),
            credentials: None,
        }
    }
}

impl BusConfig {
    /// The DLQ subject of a service for a tenant.
    pub fn dlq_subject(&self, service: &str, tenant: &str) -> String {
        format!("{}.dlq.{service}.{tenant}", self.prefix)
    }

    /// The subject a service publishes a tenant's domain event on.
    pub fn domain_subject(&self, service: &str, tenant: &str, event_type: &str) -> String {
        format!("{}.evt.{service}.{tenant}.{event_type}", self.prefix)
    }

    /// The subject of an order to a tenant's backend system (`<prefix>.out.<tenant>.<system>.<action>`).
    pub fn out_subject(&self, tenant: &str, system: &str, action: &str) -> String {
        format!("{}.out.{tenant}.{system}.{action}", self.prefix)
    }

    /// Every domain-event subject of a service.
    pub fn domain_subjects(&self, service: &str) -> String {
        format!("{}.evt.{service}.>", self.prefix)
    }

    /// The user-event subject of a tenant's event type.
    pub fn in_subject(&self, tenant: &str, event_type: &str) -> String {
        format!("{}.in.{tenant}.{event_type}", self.prefix)
    }

    /// The (tenant, event type) a user-event subject names (`<prefix>.in.<tenant>.<type>`).
    pub fn parse_in_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|s| s.strip_prefix(".in."))
            .and_then(|s| s.split_once('.'))
    }

    /// The (stream name, subjects) of the four streams.
    pub fn streams(&self) -> [(String, String); 4] {
        let p = &self.prefix;
        let s = &self.stream_prefix;
        [
            // Exactly `<prefix>.in.<tenant>.<family>.<action>`: a publish on any other shape
            // gets no JetStream ack, so the publisher hears of it.
            (format!("{s}_IN"), format!("{p}.in.*.*.*")),
            (format!("{s}_EVT"), format!("{p}.evt.>")),
            (format!("{s}_OUT"), format!("{p}.out.>")),
            (format!("{s}_DLQ"), format!("{p}.dlq.>")),
        ]
    }

    /// The servers `url` names: one URL, or several separated by commas (nodes of one cluster;
    /// the client also learns the others from whichever it reaches).
    pub fn server_urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The stream holding user events.
    pub fn in_stream(&self) -> String {
        format!("{}_IN", self.stream_prefix)
    }

    /// The stream holding the services' domain events.
    pub fn evt_stream(&self) -> String {
        format!("{}_EVT", self.stream_prefix)
    }
}

/// Connects to NATS (any of the configured servers), retrying the first connection and
/// reconnecting forever after.
pub async fn connect(config: &BusConfig, name: &str) -> Result<async_nats::Client, BusError> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(c) = &config.credentials {
        options = options.user_and_password(c.user.clone(), c.password.clone());
    }
    options
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .connect(config.server_urls())
        .await
        .map_err(|e| BusError::Connect {
            url: config.url.clone(),
            reason: e.to_string(),
        })
}

/// Creates the four streams if they do not exist (file storage, the configured replicas and
/// duplicate window), then every service's durable consumer on `PRIVACY_IN`.
///
/// `PRIVACY_IN` keeps a message only while a consumer still has to ack it (interest
/// retention), so the clear personal data a user event carries does not linger once every
/// service has stored it sealed; `PRIVACY_DLQ` keeps a refused message for `dlq_max_age`.
/// Because an interest stream drops a message no consumer wants, the consumers of *all*
/// services in the catalogue are created here, before any is needed: a service that starts
/// later still finds every message published meanwhile.
///
/// Existing streams keep their settings, except that the DLQ's `max_age` and `PRIVACY_IN`'s
/// subjects are brought to the configured ones. A stream's retention cannot change after
/// creation: an existing `PRIVACY_IN` with limits retention is reported, not changed.
pub async fn ensure_streams(js: &jetstream::Context, config: &BusConfig) -> Result<(), BusError> {
    let dlq = format!("{}_DLQ", config.stream_prefix);
    let input = config.in_stream();
    for (name, subject) in config.streams() {
        let err = |e: &dyn std::fmt::Display| BusError::Stream {
            stream: name.clone(),
            reason: e.to_string(),
        };
        let max_age = if name == dlq {
            config.dlq_max_age
        } else {
            Duration::ZERO
        };
        let retention = if name == input {
            stream::RetentionPolicy::Interest
        } else {
            stream::RetentionPolicy::Limits
        };
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                duplicate_window: config.duplicate_window,
                max_age,
                retention,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        let existing = stream.info().await.map_err(|e| err(&e))?.config.clone();
        if existing.retention != retention {
            tracing::warn!(
                stream = %name,
                have = ?existing.retention,
                want = ?retention,
                "the stream was created with another retention, which cannot change; \
                 recreate it (after every service has caught up) to get the documented one"
            );
        }
        // The settings this function keeps current on an existing stream.
        let mut wanted = existing.clone();
        if name == dlq {
            wanted.max_age = max_age;
        }
        if name == input {
            wanted.subjects = vec![subject];
        }
        if wanted != existing {
            tracing::info!(stream = %name, ?wanted.max_age, subjects = ?wanted.subjects, "updating the stream");
            js.update_stream(wanted).await.map_err(|e| err(&e))?;
        }
    }
    ensure_consumers(js, config).await
}

/// Creates (idempotently) the durable consumer of every service and subject filter the
/// catalogue names.
async fn ensure_consumers(js: &jetstream::Context, config: &BusConfig) -> Result<(), BusError> {
    let stream_name = config.in_stream();
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| BusError::Stream {
            stream: stream_name.clone(),
            reason: e.to_string(),
        })?;
    for (service, filter) in catalogue_filters(config) {
        let name = crate::ingest::consumer_name(service, &config.prefix, &filter);
        stream
            .get_or_create_consumer::<jetstream::consumer::pull::Config>(
                &name,
                consumer_config(config, &name, &filter),
            )
            .await
            .map_err(|e| BusError::Consumer {
                consumer: name.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// Every (service, full subject filter) the catalogue's consumers need.
pub fn catalogue_filters(config: &BusConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for service in privacy_proto::EventType::consuming_services() {
        for tail in privacy_proto::EventType::filters_for(service) {
            out.push((service, format!("{}.in.{tail}", config.prefix)));
        }
    }
    out
}

/// The durable pull consumer `name` over `filter` on `stream_name`, created if missing.
pub(crate) async fn durable_consumer(
    js: &jetstream::Context,
    config: &BusConfig,
    stream_name: &str,
    name: &str,
    filter: &str,
) -> Result<jetstream::consumer::PullConsumer, BusError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| BusError::Stream {
            stream: stream_name.to_owned(),
            reason: e.to_string(),
        })?;
    stream
        .get_or_create_consumer::<jetstream::consumer::pull::Config>(
            name,
            consumer_config(config, name, filter),
        )
        .await
        .map_err(|e| BusError::Consumer {
            consumer: name.to_owned(),
            reason: e.to_string(),
        })
}

/// The configuration of the durable pull consumer `name` over `filter`.
pub fn consumer_config(
    config: &BusConfig,
    name: &str,
    filter: &str,
) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: filter.to_owned(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: -1,
        max_ack_pending: (config.batch_size * 20) as i64,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::BusConfig;

    #[test]
    fn the_url_may_list_several_servers() {
        let config = BusConfig {
            url: "nats://127.0.0.1:4222, nats://127.0.0.1:4223,,nats://127.0.0.1:4224".into(),
            ..Default::default()
        };
        assert_eq!(
            config.server_urls(),
            [
                "nats://127.0.0.1:4222",
                "nats://127.0.0.1:4223",
                "nats://127.0.0.1:4224"
            ]
        );
        assert_eq!(
            BusConfig::default().server_urls(),
            ["nats://127.0.0.1:4222"]
        );
    }
}
