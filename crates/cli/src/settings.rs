//! Where the CLI finds its token and the four services: flags, then `PRIVACY_*` environment
//! variables (clap reads both), then a TOML config file, then the local defaults of `scripts/dev`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::failure::Failure;

/// The four services (DESIGN §7), with their URL setting and `scripts/dev`'s port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Service {
    Consent,
    SubjectRequests,
    Retention,
    DisclosureLog,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Consent,
        Service::SubjectRequests,
        Service::Retention,
        Service::DisclosureLog,
    ];

    /// `services`, or all four when none was named.
    pub fn chosen(services: Vec<Service>) -> Vec<Service> {
        if services.is_empty() {
            Service::ALL.to_vec()
        } else {
            services
        }
    }

    /// (name, URL key, default port) from the shared table; `ALL` is in its order.
    fn entry(self) -> (&'static str, &'static str, u16) {
        privacy_vocab::SERVICES[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.entry().0
    }

    /// The flag that sets this service's URL.
    pub fn flag(self) -> String {
        format!("--{}-url", self.name())
    }

    /// The environment variable that sets this service's URL (the services' own peer setting).
    pub fn env(self) -> String {
        format!("PRIVACY_{}", self.entry().1)
    }

    fn default_port(self) -> u16 {
        self.entry().2
    }
}

/// What the command line and environment gave (clap fills it).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// Bearer token (prefer PRIVACY_TOKEN or --token-file: a flag shows in the process list).
    #[arg(long, global = true, env = "PRIVACY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (first line).
    #[arg(long, global = true, env = "PRIVACY_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Config file [default: $XDG_CONFIG_HOME/privacy/config.toml, if it exists].
    #[arg(long, global = true, env = "PRIVACY_CLI_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// consent's gRPC URL [default: http://127.0.0.1:50051].
    #[arg(long, global = true, env = "PRIVACY_CONSENT_URL", value_name = "URL")]
    pub consent_url: Option<String>,
    /// subject-requests' gRPC URL [default: http://127.0.0.1:50052].
    #[arg(
        long,
        global = true,
        env = "PRIVACY_SUBJECT_REQUESTS_URL",
        value_name = "URL"
    )]
    pub subject_requests_url: Option<String>,
    /// retention's gRPC URL [default: http://127.0.0.1:50053].
    #[arg(long, global = true, env = "PRIVACY_RETENTION_URL", value_name = "URL")]
    pub retention_url: Option<String>,
    /// disclosure-log's gRPC URL [default: http://127.0.0.1:50054].
    #[arg(
        long,
        global = true,
        env = "PRIVACY_DISCLOSURE_LOG_URL",
        value_name = "URL"
    )]
    pub disclosure_log_url: Option<String>,
    /// PEM file of the CA that signed the services' certificates (for https:// URLs).
    #[arg(long, global = true, env = "PRIVACY_CA_CERT", value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// Seconds each call may take [default: 30; streams with --follow have no limit].
    #[arg(long, global = true, env = "PRIVACY_TIMEOUT_SECS", value_name = "SECS")]
    pub timeout_secs: Option<u64>,
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub token: Option<String>,
    /// Where the token came from, for error messages (never the token itself).
    pub token_source: String,
    pub urls: BTreeMap<Service, String>,
    pub ca_cert: Option<PathBuf>,
    pub timeout: Duration,
}

impl Settings {
    pub fn url(&self, service: Service) -> &str {
        &self.urls[&service]
    }
}

/// Keys a config file may hold.
const FILE_KEYS: &[&str] = &["token", "token_file", "ca_cert", "timeout_secs", "urls"];

/// The file read when neither `--config` nor `PRIVACY_CLI_CONFIG` names one.
fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("privacy/config.toml"))
}

impl ConnectionArgs {
    /// Flags and environment over the config file over the defaults.
    pub fn resolve(&self) -> Result<Settings, Failure> {
        let (file, path) = match &self.config {
            Some(path) => (Some(read_config(path)?), Some(path.clone())),
            None => match default_config_path().filter(|p| p.exists()) {
                Some(path) => (Some(read_config(&path)?), Some(path)),
                None => (None, None),
            },
        };
        let file = file.unwrap_or_default();
        let shown = |key: &str| match &path {
            Some(p) => format!("`{key}` in {}", p.display()),
            None => format!("`{key}` in a config file"),
        };

        let (token, token_source) = if let Some(t) = &self.token {
            (Some(t.clone()), "--token / PRIVACY_TOKEN".to_owned())
        } else if let Some(p) = &self.token_file {
            (
                Some(read_token(p)?),
                format!("--token-file / PRIVACY_TOKEN_FILE ({})", p.display()),
            )
        } else if let Some(t) = string(&file, "token", &shown)? {
            (Some(t), shown("token"))
        } else if let Some(p) = string(&file, "token_file", &shown)? {
            let p = PathBuf::from(p);
            (
                Some(read_token(&p)?),
                format!("{} ({})", shown("token_file"), p.display()),
            )
        } else {
            (None, "nowhere".to_owned())
        };

        let file_urls = match file.get("urls") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t.clone(),
            Some(_) => {
                return Err(Failure::Config(format!(
                    "{} must be a table of service = \"URL\"",
                    shown("urls")
                )));
            }
        };
        for key in file_urls.keys() {
            if !Service::ALL.iter().any(|s| s.name() == key) {
                return Err(Failure::Config(format!(
                    "{}: unknown service {key:?} (services: consent, subject-requests, \
                     retention, disclosure-log)",
                    shown("urls")
                )));
            }
        }
        let mut urls = BTreeMap::new();
        for service in Service::ALL {
            let flag = match service {
                Service::Consent => &self.consent_url,
                Service::SubjectRequests => &self.subject_requests_url,
                Service::Retention => &self.retention_url,
                Service::DisclosureLog => &self.disclosure_log_url,
            };
            let url = match (flag, file_urls.get(service.name())) {
                (Some(u), _) => u.clone(),
                (None, Some(toml::Value::String(u))) => u.clone(),
                (None, Some(_)) => {
                    return Err(Failure::Config(format!(
                        "{}.{} must be a string",
                        shown("urls"),
                        service.name()
                    )));
                }
                (None, None) => format!("http://127.0.0.1:{}", service.default_port()),
            };
            // A bare host:port is what the services print; accept it as plain http.
            let url = if url.contains("://") {
                url
            } else {
                format!("http://{url}")
            };
            urls.insert(service, url);
        }

        let ca_cert = match &self.ca_cert {
            Some(p) => Some(p.clone()),
            None => string(&file, "ca_cert", &shown)?.map(PathBuf::from),
        };
        let timeout_secs = match self.timeout_secs {
            Some(s) => s,
            None => match file.get("timeout_secs") {
                None => 30,
                Some(toml::Value::Integer(s)) if *s > 0 => *s as u64,
                Some(_) => {
                    return Err(Failure::Config(format!(
                        "{} must be a positive whole number of seconds",
                        shown("timeout_secs")
                    )));
                }
            },
        };
        if timeout_secs == 0 {
            return Err(Failure::Config(
                "--timeout-secs / PRIVACY_TIMEOUT_SECS must be at least 1".into(),
            ));
        }
        Ok(Settings {
            token,
            token_source,
            urls,
            ca_cert,
            timeout: Duration::from_secs(timeout_secs),
        })
    }
}

fn read_config(path: &Path) -> Result<toml::Table, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::Config(format!(
            "cannot read the config file {}: {e}",
            path.display()
        ))
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        Failure::Config(format!(
            "the config file {} is not valid TOML: {}",
            path.display(),
            e.message()
        ))
    })?;
    for key in table.keys() {
        if !FILE_KEYS.contains(&key.as_str()) {
            return Err(Failure::Config(format!(
                "the config file {} has an unknown key {key:?} (keys: {})",
                path.display(),
                FILE_KEYS.join(", ")
            )));
        }
    }
    Ok(table)
}

fn string(
    file: &toml::Table,
    key: &str,
    shown: &dyn Fn(&str) -> String,
) -> Result<Option<String>, Failure> {
    match file.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Failure::Config(format!("{} must be a string", shown(key)))),
    }
}

fn read_token(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::Config(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(Failure::Config(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ConnectionArgs {
        ConnectionArgs {
            // Never the developer's own file.
            config: Some(PathBuf::from("/nonexistent/privacy.toml")),
            ..Default::default()
        }
    }

    #[test]
    fn the_flags_and_variables_are_those_of_the_shared_table() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Probe {
            #[command(flatten)]
            connection: ConnectionArgs,
        }
        let command = Probe::command();
        for service in Service::ALL {
            let flag = service.flag();
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == flag.strip_prefix("--"))
                .unwrap_or_else(|| panic!("{flag}"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(service.env().as_str())
            );
        }
    }

    #[test]
    fn a_missing_named_config_file_is_an_error_naming_it() {
        let err = args().resolve().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/privacy.toml"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("privacy-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            "token = \"file-token\"\ntimeout_secs = 7\n[urls]\nconsent = \"http://h:1\"\n\
             retention = \"h:3\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        a.retention_url = Some("http://flag:3".into());
        let s = a.resolve().unwrap();
        assert_eq!(s.token.as_deref(), Some("file-token"));
        assert!(s.token_source.contains("config.toml"), "{}", s.token_source);
        assert_eq!(s.url(Service::Consent), "http://h:1");
        assert_eq!(s.url(Service::Retention), "http://flag:3");
        assert_eq!(s.url(Service::DisclosureLog), "http://127.0.0.1:50054");
        assert_eq!(s.timeout, Duration::from_secs(7));

        std::fs::write(&path, "tokn = \"x\"\n").unwrap();
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("unknown key \"tokn\""), "{err}");
        std::fs::write(&path, "[urls]\nconsnt = \"x\"\n").unwrap();
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("unknown service \"consnt\""), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
