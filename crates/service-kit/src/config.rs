//! Service configuration: `PRIVACY_*` environment variables over an optional TOML file
//! (`PRIVACY_CONFIG_FILE`, same keys in lower case without the prefix) over defaults that let
//! every piece find the others on one machine (DESIGN §7).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use privacy_bus::BusConfig;

use crate::auth::Tokens;

/// A configuration value is missing or wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("PRIVACY_{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Everything a service needs to start.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub bus: BusConfig,
    /// Root data folder; the service uses `<data_dir>/<service>/events` and `/vault`.
    pub data_dir: PathBuf,
    pub tenants_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub tokens: Tokens,
    /// PEM certificate and key; TLS is on when both are set.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// fdatasync after each group commit (on unless `PRIVACY_FSYNC=false`).
    pub fsync: bool,
    /// The event store's page cache in bytes (`PRIVACY_CACHE_MB`, default 64).
    pub cache_bytes: u64,
    /// Where the vault's master key comes from.
    pub master_key: MasterKeySource,
    /// The gRPC address of each of the four services (`PRIVACY_<SERVICE>_URL`), for the
    /// services that assemble answers from the others (the access report).
    pub peers: BTreeMap<&'static str, String>,
    /// `PRIVACY_PEER_TOKEN`: the bearer token this service presents to the others for its own
    /// background calls (disclosure-log asking consent); a backend token is enough.
    pub peer_token: Option<String>,
}

/// The four services: (name, URL key, default port) — DESIGN §7.
pub use privacy_vocab::SERVICES as PEERS;

/// Where the master key that wraps the vault's data keys comes from.
#[derive(Debug, Clone)]
pub enum MasterKeySource {
    /// `PRIVACY_MASTER_KEY`: 64 hex characters (from a secret store, in production).
    Key(privacy_event_store::MasterKey),
    /// `PRIVACY_MASTER_KEY_FILE`: a file holding them; created with a new key if missing.
    File(PathBuf),
    /// Neither set: a development key generated at `<data_dir>/<service>/master.key`, beside
    /// the data it protects (the service warns at start).
    Development,
}

/// Keys read from the environment (with the `PRIVACY_` prefix) or the file.
pub const KEYS: &[&str] = &[
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "SUBJECT_PREFIX",
    "STREAM_PREFIX",
    "STREAM_REPLICAS",
    "DATA_DIR",
    "TENANTS_DIR",
    "GRPC_ADDR",
    "TOKENS",
    "TOKENS_FILE",
    "TLS_CERT",
    "TLS_KEY",
    "INGEST_BATCH",
    "ACK_WAIT_SECS",
    "DLQ_MAX_AGE_DAYS",
    "FSYNC",
    "CACHE_MB",
    "MASTER_KEY",
    "MASTER_KEY_FILE",
    "CONSENT_URL",
    "SUBJECT_REQUESTS_URL",
    "RETENTION_URL",
    "DISCLOSURE_LOG_URL",
    "PEER_TOKEN",
];

impl ServiceConfig {
    /// Reads the process environment.
    pub fn from_env(default_port: u16) -> Result<ServiceConfig, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        ServiceConfig::from_map(&env, default_port)
    }

    /// Reads a map shaped like the environment (`PRIVACY_*` keys).
    pub fn from_map(
        env: &BTreeMap<String, String>,
        default_port: u16,
    ) -> Result<ServiceConfig, ConfigError> {
        let mut values = BTreeMap::new();
        if let Some(path) = env.get("PRIVACY_CONFIG_FILE").filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            for (k, v) in table {
                let key = k.to_ascii_uppercase();
                if !KEYS.contains(&key.as_str()) {
                    return Err(ConfigError::File {
                        path,
                        reason: format!(
                            "unknown key {k:?} (known: {})",
                            KEYS.join(", ").to_lowercase()
                        ),
                    });
                }
                let v = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    _ => {
                        return Err(ConfigError::File {
                            path,
                            reason: format!("{k}: expected a string, number or boolean"),
                        });
                    }
                };
                values.insert(key, v);
            }
        }
        for key in KEYS {
            if let Some(v) = env.get(&format!("PRIVACY_{key}")) {
                values.insert((*key).to_owned(), v.clone());
            }
        }
        let get = |k: &str| values.get(k).filter(|v| !v.is_empty()).cloned();
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let number = |key: &str, default: u64| -> Result<u64, ConfigError> {
            match get(key) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| invalid(key, format!("{v:?} is not a whole number"))),
            }
        };
        let defaults = BusConfig::default();
        let credentials = match (get("NATS_USER"), get("NATS_PASSWORD")) {
            (Some(user), Some(password)) => Some(privacy_bus::Credentials { user, password }),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "NATS_USER",
                    "set both PRIVACY_NATS_USER and PRIVACY_NATS_PASSWORD, or neither".into(),
                ));
            }
        };
        let bus = BusConfig {
            credentials,
            url: get("NATS_URL").unwrap_or(defaults.url),
            prefix: get("SUBJECT_PREFIX").unwrap_or(defaults.prefix),
            stream_prefix: get("STREAM_PREFIX").unwrap_or(defaults.stream_prefix),
            replicas: number("STREAM_REPLICAS", 1)? as usize,
            duplicate_window: defaults.duplicate_window,
            ack_wait: Duration::from_secs(number("ACK_WAIT_SECS", 30)?),
            batch_size: number("INGEST_BATCH", defaults.batch_size as u64)? as usize,
            dlq_max_age: Duration::from_secs(
                number("DLQ_MAX_AGE_DAYS", defaults.dlq_max_age.as_secs() / 86_400)?
                    .saturating_mul(86_400),
            ),
        };
        if bus.dlq_max_age.is_zero() {
            return Err(invalid(
                "DLQ_MAX_AGE_DAYS",
                "must be at least 1: the DLQ holds refused personal data in the clear".into(),
            ));
        }
        if !(1..=5).contains(&bus.replicas) {
            return Err(invalid("STREAM_REPLICAS", "must be 1 to 5".into()));
        }
        if bus.batch_size == 0 {
            return Err(invalid("INGEST_BATCH", "must be at least 1".into()));
        }
        let grpc_addr = match get("GRPC_ADDR") {
            None => SocketAddr::from(([127, 0, 0, 1], default_port)),
            Some(v) => v.parse().map_err(|_| {
                invalid(
                    "GRPC_ADDR",
                    format!("{v:?} is not host:port, e.g. 127.0.0.1:{default_port}"),
                )
            })?,
        };
        let mut tokens = Tokens::default();
        if let Some(list) = get("TOKENS") {
            tokens
                .add_list(&list)
                .map_err(|reason| invalid("TOKENS", reason))?;
        }
        if let Some(file) = get("TOKENS_FILE") {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| invalid("TOKENS_FILE", format!("{file}: {e}")))?;
            tokens
                .add_lines(&text)
                .map_err(|reason| invalid("TOKENS_FILE", format!("{file}: {reason}")))?;
        }
        let tls = match (get("TLS_CERT"), get("TLS_KEY")) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "TLS_CERT",
                    "set both PRIVACY_TLS_CERT and PRIVACY_TLS_KEY, or neither".into(),
                ));
            }
        };
        let fsync = match get("FSYNC").as_deref() {
            None | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(v) => return Err(invalid("FSYNC", format!("{v:?} is not true or false"))),
        };
        let cache_mb = number(
            "CACHE_MB",
            privacy_event_store::DEFAULT_CACHE_BYTES / (1024 * 1024),
        )?;
        if cache_mb == 0 {
            return Err(invalid("CACHE_MB", "must be at least 1".into()));
        }
        let master_key = match (get("MASTER_KEY"), get("MASTER_KEY_FILE")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "MASTER_KEY",
                    "set PRIVACY_MASTER_KEY or PRIVACY_MASTER_KEY_FILE, not both".into(),
                ));
            }
            (Some(hex), None) => MasterKeySource::Key(
                privacy_event_store::MasterKey::from_hex(hex.trim())
                    .map_err(|e| invalid("MASTER_KEY", e.to_string()))?,
            ),
            (None, Some(file)) => MasterKeySource::File(PathBuf::from(file)),
            (None, None) => MasterKeySource::Development,
        };
        let mut peers = BTreeMap::new();
        for (service, key, port) in &PEERS {
            let url = get(key).unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    key,
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
            peers.insert(*service, url);
        }
        Ok(ServiceConfig {
            peers,
            peer_token: get("PEER_TOKEN").filter(|t| !t.is_empty()),
            bus,
            data_dir: PathBuf::from(get("DATA_DIR").unwrap_or_else(|| ".data".into())),
            tenants_dir: PathBuf::from(
                get("TENANTS_DIR").unwrap_or_else(|| "examples/tenants".into()),
            ),
            grpc_addr,
            tokens,
            tls,
            fsync,
            cache_bytes: cache_mb.saturating_mul(1024 * 1024),
            master_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn defaults_work_locally() {
        let c = ServiceConfig::from_map(&BTreeMap::new(), 50051).unwrap();
        assert_eq!(c.bus.url, "nats://127.0.0.1:4222");
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.data_dir, PathBuf::from(".data"));
        assert!(c.fsync);
        assert!(c.tls.is_none());
        assert_eq!(c.cache_bytes, privacy_event_store::DEFAULT_CACHE_BYTES);
    }

    #[test]
    fn the_page_cache_is_set_in_mib_and_never_zero() {
        let c = ServiceConfig::from_map(&map(&[("PRIVACY_CACHE_MB", "256")]), 1).unwrap();
        assert_eq!(c.cache_bytes, 256 << 20);
        for bad in ["0", "lots"] {
            let err = ServiceConfig::from_map(&map(&[("PRIVACY_CACHE_MB", bad)]), 1).unwrap_err();
            assert!(err.to_string().starts_with("PRIVACY_CACHE_MB"), "{err}");
        }
    }

    #[test]
    fn secrets_are_checked_and_never_repeated() {
        let c = ServiceConfig::from_map(&BTreeMap::new(), 1).unwrap();
        assert!(matches!(c.master_key, MasterKeySource::Development));
        let hex = "ab".repeat(32);
        let c = ServiceConfig::from_map(&map(&[("PRIVACY_MASTER_KEY", &hex)]), 1).unwrap();
        assert!(matches!(c.master_key, MasterKeySource::Key(_)));
        assert!(!format!("{c:?}").contains(&hex));
        let bad = "zz".repeat(32);
        let err = ServiceConfig::from_map(&map(&[("PRIVACY_MASTER_KEY", &bad)]), 1).unwrap_err();
        assert!(err.to_string().starts_with("PRIVACY_MASTER_KEY"), "{err}");
        assert!(!err.to_string().contains(&bad), "{err}");
        let both = map(&[
            ("PRIVACY_MASTER_KEY", &hex),
            ("PRIVACY_MASTER_KEY_FILE", "/k"),
        ]);
        assert!(ServiceConfig::from_map(&both, 1).is_err());
        let c = ServiceConfig::from_map(
            &map(&[
                ("PRIVACY_NATS_USER", "consent"),
                ("PRIVACY_NATS_PASSWORD", "s3cret-pw"),
            ]),
            1,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("s3cret-pw"));
        let half = map(&[("PRIVACY_NATS_USER", "consent")]);
        assert!(ServiceConfig::from_map(&half, 1).is_err());
    }

    #[test]
    fn environment_overrides_the_file_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "nats_url = \"nats://a:1\"\nstream_replicas = 3\n").unwrap();
        let f = file.to_str().unwrap();
        let c = ServiceConfig::from_map(
            &map(&[
                ("PRIVACY_CONFIG_FILE", f),
                ("PRIVACY_NATS_URL", "nats://b:2"),
            ]),
            1,
        )
        .unwrap();
        assert_eq!((c.bus.url.as_str(), c.bus.replicas), ("nats://b:2", 3));
        let err =
            ServiceConfig::from_map(&map(&[("PRIVACY_GRPC_ADDR", "nowhere")]), 1).unwrap_err();
        assert!(err.to_string().starts_with("PRIVACY_GRPC_ADDR"), "{err}");
        std::fs::write(&file, "colour = \"red\"\n").unwrap();
        let err = ServiceConfig::from_map(&map(&[("PRIVACY_CONFIG_FILE", f)]), 1).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
