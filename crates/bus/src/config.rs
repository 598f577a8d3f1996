//! Bus configuration, connecting, and the idempotent creation of the four streams.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::BusError;

/// Where NATS is and how the streams are named.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// A NATS URL, or a cluster's nodes' URLs separated by commas.
    pub url: String,
    /// Subject prefix: `<prefix>.in.>`, `<prefix>.evt.>`, `<prefix>.out.>`, `<prefix>.dlq.>`.
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
        }
    }
}

impl BusConfig {
    /// The DLQ subject of a service.
    pub fn dlq_subject(&self, service: &str) -> String {
        format!("{}.dlq.{service}", self.prefix)
    }

    /// The subject a service publishes a domain event on.
    pub fn domain_subject(&self, service: &str, event_type: &str) -> String {
        format!("{}.evt.{service}.{event_type}", self.prefix)
    }

    /// The event type named by a user-event subject (`<prefix>.in.<type>`).
    pub fn event_type_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|s| s.strip_prefix(".in."))
    }

    /// The (stream name, subjects) of the four streams.
    pub fn streams(&self) -> [(String, String); 4] {
        let p = &self.prefix;
        let s = &self.stream_prefix;
        [
            (format!("{s}_IN"), format!("{p}.in.>")),
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
    async_nats::ConnectOptions::new()
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
/// duplicate window; the DLQ with `dlq_max_age`). Existing streams are left as they are, except
/// that the DLQ's `max_age` is brought to the configured one: it bounds how long refused
/// personal data rests in the clear.
pub async fn ensure_streams(js: &jetstream::Context, config: &BusConfig) -> Result<(), BusError> {
    let dlq = format!("{}_DLQ", config.stream_prefix);
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
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject],
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                duplicate_window: config.duplicate_window,
                max_age,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        if name == dlq {
            let existing = stream.info().await.map_err(|e| err(&e))?.config.clone();
            if existing.max_age != max_age {
                tracing::info!(stream = %name, ?max_age, "setting the DLQ's max_age");
                js.update_stream(stream::Config {
                    max_age,
                    ..existing
                })
                .await
                .map_err(|e| err(&e))?;
            }
        }
    }
    Ok(())
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
