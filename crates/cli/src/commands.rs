//! The commands: each calls one service's RPC with the caller's token, turns the answer into
//! its proto3 JSON, and writes it as a table, JSON, JSON Lines or CSV (see `render`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use futures::StreamExt;
use privacy_proto::v1::audit_service_client::AuditServiceClient;
use privacy_proto::v1::consent_service_client::ConsentServiceClient;
use privacy_proto::v1::disclosure_log_service_client::DisclosureLogServiceClient;
use privacy_proto::v1::retention_service_client::RetentionServiceClient;
use privacy_proto::v1::subject_request_service_client::SubjectRequestServiceClient;
use privacy_proto::v1::*;
use prost_types::Timestamp;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

use crate::failure::Failure;
use crate::render::{self, Column, Format, Listing, enumeration, flag, text};
use crate::settings::{Service, Settings};

/// Settings and the output format.
pub struct Context {
    settings: Settings,
    format: Format,
    /// The CA certificate (PEM) for https URLs.
    ca: Option<Vec<u8>>,
}

/// `RFC 3339` or a bare date (midnight UTC).
fn parse_time(s: &str) -> Result<Timestamp, String> {
    let t: jiff::Timestamp = if s.len() == 10 {
        let date: jiff::civil::Date = s
            .parse()
            .map_err(|e| format!("{s:?} is not a date (YYYY-MM-DD): {e}"))?;
        date.to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .map_err(|e| e.to_string())?
            .timestamp()
    } else {
        s.parse().map_err(|e| {
            format!("{s:?} is not an RFC 3339 time (2026-11-24T09:00:00Z) or a date: {e}")
        })?
    };
    Ok(Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    })
}

fn micros(t: &Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000 + i128::from(t.nanos) / 1000
}

/// The proto3 JSON of a message of type `privacy.v1.<name>`.
fn to_json<M: prost::Message>(name: &str, message: &M) -> Value {
    privacy_proto::message_to_json(&format!("privacy.v1.{name}"), message)
        .expect("every answer's type is in the descriptor set")
}

/// Each item's proto3 JSON (items of type `privacy.v1.<name>`).
fn rows<M: prost::Message>(name: &str, items: &[M]) -> Vec<Value> {
    items.iter().map(|m| to_json(name, m)).collect()
}

// ---- arguments -------------------------------------------------------------------------

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Only these services' logs (repeatable) [default: all four].
    #[arg(long, value_enum)]
    service: Vec<Service>,
    /// The tenant (an id of the tenant registry, e.g. vn-apihub).
    #[arg(long)]
    tenant: Option<String>,
    /// Only this subject's events (needs --tenant).
    #[arg(long, requires = "tenant")]
    subject: Option<String>,
    /// Only events of this type (repeatable), e.g. consent.granted.
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    event_type: Vec<String>,
    /// Only events recorded at or after this time.
    #[arg(long, value_parser = parse_time)]
    since: Option<Timestamp>,
    /// Only events recorded before this time.
    #[arg(long, value_parser = parse_time)]
    until: Option<Timestamp>,
    /// First global sequence number of each log to read.
    #[arg(long, default_value_t = 1)]
    from_seq: u64,
    /// Stop after this many events.
    #[arg(long)]
    limit: Option<u64>,
    /// Keep streaming events as they are committed (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The tenant (an id of the tenant registry, e.g. vn-apihub).
    #[arg(long)]
    tenant: String,
    /// The subject's id, as the backends publish it.
    #[arg(long)]
    subject: String,
    /// Only this purpose.
    #[arg(long)]
    purpose: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RequestsListArgs {
    /// The tenant (an id of the tenant registry, e.g. vn-apihub).
    #[arg(long)]
    tenant: String,
    /// Only requests in this state (repeatable): received, identity-verified, in-progress,
    /// paused, completed, partially-completed, rejected, withdrawn.
    #[arg(long)]
    state: Vec<String>,
    /// Only requests of this type (repeatable): access, portability, rectification, erasure…
    #[arg(long = "type", value_name = "TYPE")]
    request_type: Vec<String>,
    /// Only overdue requests.
    #[arg(long)]
    overdue: bool,
    /// Only requests due before this time.
    #[arg(long, value_parser = parse_time)]
    due_before: Option<Timestamp>,
    /// Judge "overdue" and "due soon" at this instant [default: now].
    #[arg(long, value_parser = parse_time)]
    as_of: Option<Timestamp>,
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct AccountArgs {
    /// The tenant (an id of the tenant registry, e.g. vn-apihub).
    #[arg(long)]
    tenant: String,
    /// The subject's id, as the backends publish it.
    #[arg(long)]
    subject: String,
    /// Only disclosures at or after this time.
    #[arg(long, value_parser = parse_time)]
    since: Option<Timestamp>,
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct RecipientsArgs {
    /// The tenant (an id of the tenant registry, e.g. vn-apihub).
    #[arg(long)]
    tenant: String,
    /// The subject's id, as the backends publish it.
    #[arg(long)]
    subject: String,
}

#[derive(Debug, Clone, Args)]
pub struct FlaggedArgs {
    /// The tenant (an id of the tenant registry, e.g. vn-apihub).
    #[arg(long)]
    tenant: String,
    /// Only disclosures at or after this time.
    #[arg(long, value_parser = parse_time)]
    from: Option<Timestamp>,
    /// Only disclosures before this time.
    #[arg(long, value_parser = parse_time)]
    to: Option<Timestamp>,
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct HoldsListArgs {
    /// The tenant (an id of the tenant registry, e.g. vn-apihub).
    #[arg(long)]
    tenant: String,
    /// Released holds too.
    #[arg(long)]
    include_released: bool,
}

/// Every list a command shows, for `export`.
#[derive(Debug, Clone, Subcommand)]
pub enum ListCommand {
    /// Stored events (as `privacy events`).
    Events(EventsArgs),
    /// A subject's consent history (as `privacy consent history`).
    ConsentHistory(HistoryArgs),
    /// Requests (as `privacy requests list`).
    Requests(RequestsListArgs),
    /// A subject's disclosures (as `privacy disclosures account`).
    Accounting(AccountArgs),
    /// A subject's recipients to notify (as `privacy disclosures recipients`).
    Recipients(RecipientsArgs),
    /// Flagged disclosures (as `privacy disclosures flagged`).
    Flagged(FlaggedArgs),
    /// Legal holds (as `privacy holds list`).
    Holds(HoldsListArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Is consent in force for a purpose, now or as of an instant? (exit 6 when it is not)
    Check {
        /// The tenant (an id of the tenant registry, e.g. vn-apihub).
        #[arg(long)]
        tenant: String,
        /// The subject's id, as the backends publish it.
        #[arg(long)]
        subject: String,
        #[arg(long)]
        purpose: String,
        /// Decide as of this instant [default: now].
        #[arg(long, value_parser = parse_time)]
        as_of: Option<Timestamp>,
    },
    /// Every grant, withdrawal and refusal of a subject, with each record's state now.
    History(HistoryArgs),
    /// A consent record's receipt (ISO/IEC TS 27560 JSON).
    Receipt {
        /// The tenant (an id of the tenant registry, e.g. vn-apihub).
        #[arg(long)]
        tenant: String,
        /// The subject's id, as the backends publish it.
        #[arg(long)]
        subject: String,
        /// The record id (from `consent history`).
        #[arg(long)]
        record: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Requests of a tenant, with their deadlines.
    List(RequestsListArgs),
    /// One request: deadlines, steps, orders.
    Show {
        /// The tenant (an id of the tenant registry, e.g. vn-apihub).
        #[arg(long)]
        tenant: String,
        /// The request's id.
        #[arg(long)]
        id: String,
    },
    /// Extend the deadline where the law allows it (operator token).
    Extend {
        /// The tenant (an id of the tenant registry, e.g. vn-apihub).
        #[arg(long)]
        tenant: String,
        /// The request's id.
        #[arg(long)]
        id: String,
        /// Why, as a code of up to 64 letters, digits and - _ . : ( ) — no personal data (e.g. complex_request).
        #[arg(long)]
        reason: String,
    },
    /// Complete a request; name each part not done (operator token).
    Complete {
        /// The tenant (an id of the tenant registry, e.g. vn-apihub).
        #[arg(long)]
        tenant: String,
        /// The request's id.
        #[arg(long)]
        id: String,
        /// A part not done and why, as PART=REASON, both codes (repeatable).
        #[arg(long, value_name = "PART=REASON", value_parser = parse_part)]
        not_done: Vec<PartNotDone>,
    },
}

fn parse_part(s: &str) -> Result<PartNotDone, String> {
    match s.split_once('=') {
        Some((part, reason)) if !part.trim().is_empty() && !reason.trim().is_empty() => {
            Ok(PartNotDone {
                part: part.trim().to_owned(),
                reason: reason.trim().to_owned(),
            })
        }
        _ => Err(format!("{s:?} is not PART=REASON")),
    }
}

#[derive(Debug, Subcommand)]
pub enum ErasureCommand {
    /// Plan and order a subject's erasure (operator token); --dry-run shows the plan only.
    Start {
        /// The tenant (an id of the tenant registry, e.g. vn-apihub).
        #[arg(long)]
        tenant: String,
        /// The subject's id, as the backends publish it.
        #[arg(long)]
        subject: String,
        /// Why, as a code of up to 64 letters, digits and - _ . : ( ) — no personal data (e.g. subject_request).
        #[arg(long)]
        reason: String,
        /// The subject request this erasure serves.
        #[arg(long)]
        request: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// An erasure's plan, orders, confirmations and shreds.
    Status {
        /// The tenant (an id of the tenant registry, e.g. vn-apihub).
        #[arg(long)]
        tenant: String,
        /// The erasure's id (from `erasure start`).
        #[arg(long)]
        id: String,
    },
    /// An erasure's certificate (what went, what stayed and why, every service's shred).
    Certificate {
        /// The tenant (an id of the tenant registry, e.g. vn-apihub).
        #[arg(long)]
        tenant: String,
        /// The erasure's id (from `erasure start`).
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DisclosuresCommand {
    /// The accounting of a subject's disclosures.
    Account(AccountArgs),
    /// Who received a subject's data and must be told of a correction or erasure.
    Recipients(RecipientsArgs),
    /// Disclosures the ledger flagged (cross-border, special categories, consent…).
    Flagged(FlaggedArgs),
}

#[derive(Debug, Subcommand)]
pub enum HoldsCommand {
    /// Legal holds in force (--include-released for all).
    List(HoldsListArgs),
    /// Place a legal hold (operator token); a hold stops erasure of what it covers.
    Place {
        /// The tenant (an id of the tenant registry, e.g. vn-apihub).
        #[arg(long)]
        tenant: String,
        /// Only this subject [default: every subject].
        #[arg(long)]
        subject: Option<String>,
        /// Only this data category.
        #[arg(long)]
        category: Option<String>,
        /// Only this system.
        #[arg(long)]
        system: Option<String>,
        /// Why, as a code of up to 64 letters, digits and - _ . : ( ) — no personal data (e.g. litigation-2026-17).
        #[arg(long)]
        reason: String,
        /// Who placed it (kept in the log).
        #[arg(long)]
        placed_by: String,
    },
    /// Release a legal hold (operator token).
    Release {
        /// The tenant (an id of the tenant registry, e.g. vn-apihub).
        #[arg(long)]
        tenant: String,
        /// The hold's id (from `holds list`).
        #[arg(long)]
        id: String,
        /// Why, as a code of up to 64 letters, digits and - _ . : ( ) — no personal data (e.g. case_closed).
        #[arg(long)]
        reason: String,
    },
}

// ---- columns ---------------------------------------------------------------------------

const EVENT_COLUMNS: &[Column] = &[
    text("SERVICE", "/service"),
    text("SEQ", "/seq"),
    text("RECORDED", "/recordedAt"),
    text("TENANT", "/envelope/tenant"),
    text("SUBJECT", "/envelope/subjectId"),
    text("TYPE", "/envelope/eventType"),
    text("SOURCE", "/envelope/source"),
];

const HISTORY_COLUMNS: &[Column] = &[
    text("SEQ", "/seq"),
    text("PURPOSE", "/purpose"),
    text("CHANGE", "/change"),
    text("STATE", "/state"),
    text("AT", "/at"),
    text("POLICY", "/policyVersion"),
    text("VALID UNTIL", "/validUntil"),
    text("RECORD", "/recordId"),
    text("WHY", "/stateReason"),
];

const REQUEST_COLUMNS: &[Column] = &[
    text("REQUEST", "/requestId"),
    text("SUBJECT", "/subjectId"),
    enumeration("TYPE", "/requestType", "REQUEST_TYPE_"),
    enumeration("STATE", "/state", "REQUEST_STATE_"),
    text("RECEIVED", "/receivedAt"),
    text("DUE (LAW)", "/deadlines/statute/due"),
    text("DUE (PROMISE)", "/deadlines/promise/due"),
    flag("OVERDUE", "/overdue"),
    text("WAITING ON", "/waitingOn"),
];

const DISCLOSURE_COLUMNS: &[Column] = &[
    text("DISCLOSURE", "/disclosureId"),
    text("SUBJECT", "/subjectId"),
    text("AT", "/disclosedAt"),
    text("RECIPIENT", "/disclosure/recipient"),
    enumeration("ROLE", "/disclosure/recipientRole", "RECIPIENT_ROLE_"),
    text("COUNTRY", "/disclosure/country"),
    text("CATEGORIES", "/disclosure/categories"),
    text("PURPOSE", "/disclosure/purpose"),
    enumeration("BASIS", "/disclosure/legalBasis", "LEGAL_BASIS_"),
    flag("CROSS-BORDER", "/crossBorder"),
    enumeration("CONSENT", "/consentCheck", "CONSENT_CHECK_"),
    text("FLAGS", "/flagRules"),
];

const RECIPIENT_COLUMNS: &[Column] = &[
    text("RECIPIENT", "/recipient"),
    enumeration("ROLE", "/role", "RECIPIENT_ROLE_"),
    text("COUNTRY", "/country"),
    text("DISCLOSURES", "/disclosures"),
    text("FIRST", "/firstAt"),
    text("LAST", "/lastAt"),
];

const HOLD_COLUMNS: &[Column] = &[
    text("HOLD", "/holdId"),
    text("SUBJECT", "/subjectId"),
    text("CATEGORY", "/category"),
    text("SYSTEM", "/system"),
    text("REASON", "/reason"),
    text("PLACED BY", "/placedBy"),
    text("PLACED", "/placedAt"),
    text("RELEASED", "/releasedAt"),
];

const VERIFY_COLUMNS: &[Column] = &[
    text("SERVICE", "/service"),
    text("CHAIN", "/chain"),
    text("EVENTS", "/eventsChecked"),
    text("HEAD", "/headSeq"),
    text("FIRST BAD", "/firstBadSeq"),
    text("HEAD HASH", "/headHash"),
    text("DETAIL", "/detail"),
];

const STATUS_COLUMNS: &[Column] = &[
    text("SERVICE", "/service"),
    text("PROJECTION", "/name"),
    text("VERSION", "/version"),
    text("CHECKPOINT", "/checkpoint"),
    text("HEAD", "/headSeq"),
    text("ENTRIES", "/entries"),
    text("DIGEST", "/digest"),
    text("DETAIL", "/detail"),
];

const REBUILD_COLUMNS: &[Column] = &[
    text("PROJECTION", "/name"),
    text("APPLIED", "/applied"),
    text("DIGEST", "/digest"),
];

const CHECK_FIELDS: &[Column] = &[
    flag("allowed", "/allowed"),
    text("basis", "/basis"),
    text("reason", "/reason"),
    text("record", "/recordId"),
    text("policy version", "/policyVersion"),
    text("superseded by", "/supersededBy"),
    text("as of", "/asOf"),
    text("decided by seq", "/decidedBySeq"),
];

const REQUEST_FIELDS: &[Column] = &[
    text("request", "/requestId"),
    text("tenant", "/tenant"),
    text("subject", "/subjectId"),
    enumeration("type", "/requestType", "REQUEST_TYPE_"),
    enumeration("state", "/state", "REQUEST_STATE_"),
    text("channel", "/channel"),
    text("received", "/receivedAt"),
    text("due (law)", "/deadlines/statute/due"),
    text("latest (law)", "/deadlines/statute/latest"),
    text("citation", "/deadlines/statute/citation"),
    text("due (promise)", "/deadlines/promise/due"),
    text("binding", "/deadlines/binding"),
    flag("extended", "/extended"),
    flag("extension allowed", "/deadlines/extensionAllowed"),
    flag("due soon", "/dueSoon"),
    flag("overdue", "/overdue"),
    text("waiting on", "/waitingOn"),
    text("paused because", "/pauseReason"),
    text("rejected because", "/rejectReason"),
    text("legal ground", "/legalGround"),
    text("closed", "/closedAt"),
];

const STEP_COLUMNS: &[Column] = &[
    text("SEQ", "/seq"),
    text("EVENT", "/eventType"),
    text("AT", "/at"),
    enumeration("STATE", "/state", "REQUEST_STATE_"),
    text("REASON", "/reason"),
];

const ORDER_COLUMNS: &[Column] = &[
    text("ORDER", "/orderId"),
    text("SYSTEM", "/system"),
    text("ACTION", "/action"),
    text("REPLY BY", "/replyBy"),
    enumeration("OUTCOME", "/outcome", "ORDER_OUTCOME_"),
    text("CONFIRMED", "/confirmedAt"),
];

const PART_COLUMNS: &[Column] = &[text("PART", "/part"), text("REASON", "/reason")];

const ERASURE_FIELDS: &[Column] = &[
    text("erasure", "/erasureId"),
    text("subject", "/subjectId"),
    text("action", "/action"),
    text("scope", "/scope"),
    text("reason", "/reason"),
    text("request", "/requestId"),
    text("planned", "/plannedAt"),
    text("erased", "/erasedAt"),
    text("shredded", "/shreddedAt"),
];

const ITEM_COLUMNS: &[Column] = &[
    text("SYSTEM", "/system"),
    text("CATEGORY", "/category"),
    text("REASON", "/reason"),
    text("CITATION", "/citation"),
    text("UNTIL", "/until"),
];

const ERASURE_ORDER_COLUMNS: &[Column] = &[
    text("ORDER", "/orderId"),
    text("SYSTEM", "/system"),
    text("CATEGORIES", "/categories"),
    text("REPLY BY", "/replyBy"),
    flag("ANSWERED", "/answered"),
    flag("KEPT", "/kept"),
    text("CONFIRMED", "/confirmedAt"),
    text("ATTEMPTS", "/attempts"),
    flag("ESCALATED", "/escalated"),
];

const SHRED_COLUMNS: &[Column] = &[
    text("SERVICE", "/service"),
    text("SHREDDED", "/shreddedAt"),
    text("SEQ", "/seq"),
];

const CERTIFICATE_FIELDS: &[Column] = &[
    text("erasure", "/erasureId"),
    text("tenant", "/tenant"),
    text("subject", "/subjectId"),
    text("planned", "/plannedAt"),
    text("erased", "/erasedAt"),
    text("log position", "/logPosition"),
    text("missing", "/missing"),
];

const HOLD_FIELDS: &[Column] = &[
    text("hold", "/holdId"),
    text("subject", "/subjectId"),
    text("category", "/category"),
    text("system", "/system"),
    text("reason", "/reason"),
    text("placed by", "/placedBy"),
    text("placed", "/placedAt"),
    text("released", "/releasedAt"),
    text("release reason", "/releaseReason"),
];

// ---- the commands ----------------------------------------------------------------------

impl Context {
    pub fn new(settings: Settings, format: Format) -> Result<Context, Failure> {
        let ca = match &settings.ca_cert {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                Failure::Config(format!("cannot read the CA file {}: {e}", path.display()))
            })?),
            None => None,
        };
        Ok(Context {
            settings,
            format,
            ca,
        })
    }

    pub fn with_format(mut self, format: Format) -> Context {
        self.format = format;
        self
    }

    /// A channel to `service`, connected on first use; only the services a command calls need
    /// a valid URL.
    fn channel(&self, service: Service) -> Result<Channel, Failure> {
        let url = self.settings.url(service).to_owned();
        let bad = |e: &dyn std::fmt::Display| {
            Failure::Config(format!(
                "{} / {}: {url:?} is not a URL: {e}",
                service.flag(),
                service.env()
            ))
        };
        // Each call is bounded by the timeout until its answer (or a stream's first headers,
        // which the services send at once), so a hung service cannot hang a script.
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| bad(&e))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(self.settings.timeout);
        if url.starts_with("https://") {
            let Some(ca) = &self.ca else {
                return Err(Failure::Config(format!(
                    "{url} is https: name the CA that signed the services' certificates with \
                     --ca-cert or PRIVACY_CA_CERT"
                )));
            };
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca));
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(&e))?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// A request with the token, for a call that answers once (bounded by the timeout).
    fn unary<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.streaming(message);
        request.set_timeout(self.settings.timeout);
        request
    }

    /// A request with the token and no deadline (streams).
    fn streaming<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.settings.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    fn failed(&self, service: Service) -> impl Fn(tonic::Status) -> Failure + '_ {
        move |status| Failure::Rpc {
            service,
            url: self.settings.url(service).to_owned(),
            status,
            token_source: self.settings.token_source.clone(),
        }
    }

    fn stdout(&self) -> std::io::StdoutLock<'static> {
        std::io::stdout().lock()
    }

    /// Writes one object: its JSON with `--json`, else the fields, then each section.
    fn object(
        &self,
        value: &Value,
        fields: &[Column],
        sections: &[(&str, &str, &[Column])],
    ) -> Result<(), Failure> {
        let mut out = self.stdout();
        let written = (|| -> std::io::Result<()> {
            if self.format == Format::Table {
                render::details(&mut out, value, fields)?;
                for (title, path, columns) in sections {
                    render::section(&mut out, title, value, path, columns)?;
                }
            } else {
                writeln!(out, "{}", render::pretty(value))?;
            }
            out.flush()
        })();
        written.map_err(io_failure)
    }

    // ---- audit ----

    pub async fn verify(&self, services: &[Service]) -> Result<(), Failure> {
        let mut rows = Vec::new();
        let mut broken = Vec::new();
        let mut unreachable = None;
        for &service in services {
            let answer = match self.channel(service) {
                Ok(channel) => AuditServiceClient::new(channel)
                    .verify_chain(self.unary(VerifyChainRequest::default()))
                    .await
                    .map_err(self.failed(service)),
                Err(failure) => Err(failure),
            };
            match answer {
                Ok(r) => {
                    let r = r.into_inner();
                    if !r.ok {
                        broken.push(format!(
                            "{}'s chain is broken at seq {}: {}",
                            service.name(),
                            r.first_bad_seq,
                            r.reason
                        ));
                    }
                    rows.push(json!({
                        "service": service.name(),
                        "chain": if r.ok { "intact" } else { "BROKEN" },
                        "ok": r.ok,
                        "eventsChecked": r.events_checked,
                        "headSeq": r.head_seq,
                        "firstBadSeq": if r.ok { Value::Null } else { r.first_bad_seq.into() },
                        "headHash": render::hex(&r.head_hash),
                        "detail": r.reason,
                    }));
                }
                Err(failure) => {
                    rows.push(json!({
                        "service": service.name(),
                        "chain": "not checked",
                        "detail": failure.to_string(),
                    }));
                    unreachable.get_or_insert(failure);
                }
            }
        }
        self.rows(VERIFY_COLUMNS, rows, None)?;
        if !broken.is_empty() {
            return Err(Failure::No(broken.join("; ")));
        }
        match unreachable {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// Each projection of `services`; with `checkpoints_only`, without digests and entry
    /// counts (rows leave them out).
    pub async fn status(
        &self,
        services: &[Service],
        checkpoints_only: bool,
    ) -> Result<(), Failure> {
        let mut rows = Vec::new();
        let mut first_failure = None;
        for &service in services {
            let answer = match self.channel(service) {
                Ok(channel) => AuditServiceClient::new(channel)
                    .projection_status(self.unary(ProjectionStatusRequest { checkpoints_only }))
                    .await
                    .map_err(self.failed(service)),
                Err(failure) => Err(failure),
            };
            match answer {
                Ok(r) => {
                    let r = r.into_inner();
                    for p in r.projections {
                        let mut row = json!({
                            "service": service.name(),
                            "name": p.name,
                            "version": p.version,
                            "checkpoint": p.checkpoint,
                            "headSeq": r.head_seq,
                            "detail": if p.checkpoint < r.head_seq { "catching up" } else { "" },
                        });
                        if !checkpoints_only {
                            row["entries"] = json!(p.entries);
                            row["digest"] = json!(render::hex(&p.digest));
                        }
                        rows.push(row);
                    }
                }
                Err(failure) => {
                    rows.push(json!({"service": service.name(), "detail": failure.to_string()}));
                    first_failure.get_or_insert(failure);
                }
            }
        }
        self.rows(STATUS_COLUMNS, rows, None)?;
        match first_failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    pub async fn rebuild(&self, service: Service, names: Vec<String>) -> Result<(), Failure> {
        let mut client = AuditServiceClient::new(self.channel(service)?);
        let mut stream = client
            .rebuild_projections(self.streaming(RebuildProjectionsRequest { names }))
            .await
            .map_err(self.failed(service))?
            .into_inner();
        let bar = std::io::stderr().is_terminal();
        let mut rows = Vec::new();
        while let Some(progress) = stream.next().await {
            let p = progress.map_err(self.failed(service))?;
            let mut err = std::io::stderr().lock();
            if bar {
                let width = 30usize;
                let filled = if p.target == 0 {
                    width
                } else {
                    ((p.applied.min(p.target) as f64 / p.target as f64) * width as f64) as usize
                };
                // Best effort: a progress bar that cannot be drawn is no failure.
                let _ = write!(
                    err,
                    "\r{:<24} [{}{}] {}/{}",
                    p.name,
                    "#".repeat(filled),
                    ".".repeat(width - filled),
                    p.applied,
                    p.target
                );
                if p.done {
                    let _ = writeln!(err);
                }
            } else if p.done {
                let _ = writeln!(err, "{}: rebuilt from {} events", p.name, p.applied);
            }
            if p.done {
                rows.push(json!({
                    "name": p.name,
                    "applied": p.applied,
                    "target": p.target,
                    "digest": render::hex(&p.digest),
                }));
            }
        }
        self.rows(REBUILD_COLUMNS, rows, None)
    }

    /// Writes rows with the context's format to standard output, or `out`.
    fn rows(
        &self,
        columns: &[Column],
        rows: Vec<Value>,
        out: Option<&PathBuf>,
    ) -> Result<(), Failure> {
        let mut sink = self.sink(out)?;
        let mut listing = Listing::new(self.format, columns, &mut sink, false);
        for row in rows {
            listing.row(row).map_err(io_failure)?;
        }
        listing.finish().map_err(io_failure)?;
        Ok(())
    }

    fn sink(&self, out: Option<&PathBuf>) -> Result<Box<dyn Write>, Failure> {
        Ok(match out {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .map_err(|e| Failure::Io(format!("cannot write {}: {e}", path.display())))?,
            )),
            None => Box::new(self.stdout()),
        })
    }

    // ---- lists ----

    pub async fn list(&self, list: ListCommand, out: Option<&PathBuf>) -> Result<(), Failure> {
        match list {
            ListCommand::Events(args) => return self.events(args, out).await,
            ListCommand::ConsentHistory(a) => {
                let mut c = ConsentServiceClient::new(self.channel(Service::Consent)?);
                let r = c
                    .get_consent_history(self.unary(GetConsentHistoryRequest {
                        tenant: a.tenant,
                        subject_id: a.subject,
                        purpose: a.purpose.unwrap_or_default(),
                    }))
                    .await
                    .map_err(self.failed(Service::Consent))?
                    .into_inner();
                self.rows(
                    HISTORY_COLUMNS,
                    rows("ConsentHistoryEntry", &r.entries),
                    out,
                )
            }
            ListCommand::Requests(a) => {
                let states = a
                    .state
                    .iter()
                    .map(|s| {
                        enum_value("--state", "REQUEST_STATE_", s, RequestState::from_str_name)
                    })
                    .collect::<Result<_, _>>()?;
                let types = a
                    .request_type
                    .iter()
                    .map(|s| enum_value("--type", "REQUEST_TYPE_", s, RequestType::from_str_name))
                    .collect::<Result<_, _>>()?;
                let mut c =
                    SubjectRequestServiceClient::new(self.channel(Service::SubjectRequests)?);
                let r = c
                    .list_requests(self.unary(ListRequestsRequest {
                        tenant: a.tenant,
                        states,
                        request_types: types,
                        overdue: a.overdue,
                        due_before: a.due_before,
                        as_of: a.as_of,
                        limit: a.limit.unwrap_or(0),
                    }))
                    .await
                    .map_err(self.failed(Service::SubjectRequests))?
                    .into_inner();
                self.rows(REQUEST_COLUMNS, rows("SubjectRequest", &r.requests), out)
            }
            ListCommand::Accounting(a) => {
                let mut c = DisclosureLogServiceClient::new(self.channel(Service::DisclosureLog)?);
                let r = c
                    .accounting_of_disclosures(self.unary(AccountingOfDisclosuresRequest {
                        tenant: a.tenant,
                        subject_id: a.subject,
                        since: a.since,
                        limit: a.limit.unwrap_or(0),
                    }))
                    .await
                    .map_err(self.failed(Service::DisclosureLog))?
                    .into_inner();
                self.disclosure_rows(r, out)
            }
            ListCommand::Recipients(a) => {
                let mut c = DisclosureLogServiceClient::new(self.channel(Service::DisclosureLog)?);
                let r = c
                    .recipients_to_notify(self.unary(RecipientsToNotifyRequest {
                        tenant: a.tenant,
                        subject_id: a.subject,
                    }))
                    .await
                    .map_err(self.failed(Service::DisclosureLog))?
                    .into_inner();
                self.rows(RECIPIENT_COLUMNS, rows("Recipient", &r.recipients), out)
            }
            ListCommand::Flagged(a) => {
                let mut c = DisclosureLogServiceClient::new(self.channel(Service::DisclosureLog)?);
                let r = c
                    .list_disclosures(self.unary(ListDisclosuresRequest {
                        tenant: a.tenant,
                        filter: DisclosureFilter::Flagged as i32,
                        value: String::new(),
                        from: a.from,
                        to: a.to,
                        limit: a.limit.unwrap_or(0),
                    }))
                    .await
                    .map_err(self.failed(Service::DisclosureLog))?
                    .into_inner();
                self.disclosure_rows(r, out)
            }
            ListCommand::Holds(a) => {
                let mut c = RetentionServiceClient::new(self.channel(Service::Retention)?);
                let r = c
                    .list_legal_holds(self.unary(ListLegalHoldsRequest {
                        tenant: a.tenant,
                        include_released: a.include_released,
                    }))
                    .await
                    .map_err(self.failed(Service::Retention))?
                    .into_inner();
                self.rows(HOLD_COLUMNS, rows("LegalHold", &r.holds), out)
            }
        }
    }

    fn disclosure_rows(
        &self,
        r: ListDisclosuresResponse,
        out: Option<&PathBuf>,
    ) -> Result<(), Failure> {
        let rows = r
            .disclosures
            .iter()
            .map(|d| {
                let mut v = to_json("Disclosure", d);
                // The flags' rule names, for the table (the JSON keeps the whole flags).
                let rules: Vec<Value> = d.flags.iter().map(|f| f.rule.clone().into()).collect();
                v["flagRules"] = Value::Array(rules);
                v
            })
            .collect();
        self.rows(DISCLOSURE_COLUMNS, rows, out)?;
        if r.truncated {
            eprintln!(
                "privacy: the list was cut at the limit (log position {}); raise --limit or \
                 narrow the time range",
                r.log_position
            );
        }
        Ok(())
    }

    async fn events(&self, a: EventsArgs, out: Option<&PathBuf>) -> Result<(), Failure> {
        let services = Service::chosen(a.service.clone());
        let timed = a.since.is_some() || a.until.is_some();
        let request = StreamEventsRequest {
            from_seq: a.from_seq.max(1),
            event_types: a.event_type.clone(),
            tenant: a.tenant.clone().unwrap_or_default(),
            subject_id: a.subject.clone().unwrap_or_default(),
            // With a time filter the limit counts what passes it, here.
            limit: if timed { 0 } else { a.limit.unwrap_or(0) },
            follow: a.follow,
        };
        let mut streams = Vec::new();
        for &service in &services {
            let mut client = AuditServiceClient::new(self.channel(service)?);
            let stream = client
                .stream_events(self.streaming(request.clone()))
                .await
                .map_err(self.failed(service))?
                .into_inner();
            streams.push(stream.map(move |item| (service, item)).boxed());
        }
        // Without --follow each log is read to its end in turn; with it, they interleave.
        let mut merged = if a.follow {
            futures::stream::select_all(streams).boxed()
        } else {
            futures::stream::iter(streams).flatten().boxed()
        };
        let mut sink = self.sink(out)?;
        // A followed stream is written as it comes; a finite one is aligned (tables) or one
        // array (--json). JSON Lines and CSV are written row by row either way.
        let mut listing = Listing::new(self.format, EVENT_COLUMNS, &mut sink, a.follow);
        let mut written = 0u64;
        while let Some((service, item)) = merged.next().await {
            let event = item.map_err(self.failed(service))?;
            let at = event.recorded_at.as_ref().map(micros).unwrap_or(0);
            if a.since.as_ref().is_some_and(|s| at < micros(s))
                || a.until.as_ref().is_some_and(|u| at >= micros(u))
            {
                continue;
            }
            let mut row = to_json("StoredEvent", &event);
            row["service"] = service.name().into();
            decode_domain_body(&event, &mut row);
            listing.row(row).map_err(io_failure)?;
            written += 1;
            if a.limit.is_some_and(|l| written >= l) {
                break;
            }
        }
        listing.finish().map_err(io_failure)?;
        Ok(())
    }

    // ---- consent ----

    pub async fn consent(&self, command: ConsentCommand) -> Result<(), Failure> {
        let mut c = ConsentServiceClient::new(self.channel(Service::Consent)?);
        match command {
            ConsentCommand::Check {
                tenant,
                subject,
                purpose,
                as_of,
            } => {
                let r = c
                    .check_consent(self.unary(CheckConsentRequest {
                        tenant,
                        subject_id: subject,
                        purpose: purpose.clone(),
                        as_of,
                    }))
                    .await
                    .map_err(self.failed(Service::Consent))?
                    .into_inner();
                self.object(&to_json("CheckConsentResponse", &r), CHECK_FIELDS, &[])?;
                if r.allowed {
                    Ok(())
                } else {
                    Err(Failure::No(format!(
                        "no consent in force for {purpose}: {}",
                        r.reason
                    )))
                }
            }
            ConsentCommand::History(a) => self.list(ListCommand::ConsentHistory(a), None).await,
            ConsentCommand::Receipt {
                tenant,
                subject,
                record,
            } => {
                let r = c
                    .export_consent_receipt(self.unary(ExportConsentReceiptRequest {
                        tenant,
                        subject_id: subject,
                        record_id: record,
                    }))
                    .await
                    .map_err(self.failed(Service::Consent))?
                    .into_inner();
                // The receipt is a JSON document in every format.
                let receipt: Value = serde_json::from_str(&r.receipt_json).map_err(|e| {
                    Failure::Io(format!("consent sent a receipt that is not JSON: {e}"))
                })?;
                let mut out = self.stdout();
                writeln!(out, "{}", render::pretty(&receipt)).map_err(io_failure)
            }
        }
    }

    // ---- requests ----

    pub async fn requests(&self, command: RequestsCommand) -> Result<(), Failure> {
        let mut c = SubjectRequestServiceClient::new(self.channel(Service::SubjectRequests)?);
        let failed = self.failed(Service::SubjectRequests);
        let response = match command {
            RequestsCommand::List(a) => return self.list(ListCommand::Requests(a), None).await,
            RequestsCommand::Show { tenant, id } => c
                .get_request(self.unary(GetRequestRequest {
                    tenant,
                    request_id: id,
                }))
                .await
                .map_err(failed)?,
            RequestsCommand::Extend { tenant, id, reason } => c
                .extend_deadline(self.unary(ExtendDeadlineRequest {
                    tenant,
                    request_id: id,
                    reason,
                }))
                .await
                .map_err(failed)?,
            RequestsCommand::Complete {
                tenant,
                id,
                not_done,
            } => c
                .complete_request(self.unary(CompleteRequestRequest {
                    tenant,
                    request_id: id,
                    parts_not_done: not_done,
                }))
                .await
                .map_err(failed)?,
        };
        let request = response.into_inner().request.unwrap_or_default();
        self.object(
            &to_json("SubjectRequest", &request),
            REQUEST_FIELDS,
            &[
                ("steps", "/steps", STEP_COLUMNS),
                ("orders", "/orders", ORDER_COLUMNS),
                ("parts not done", "/partsNotDone", PART_COLUMNS),
            ],
        )
    }

    // ---- erasure ----

    pub async fn erasure(&self, command: ErasureCommand) -> Result<(), Failure> {
        let mut c = RetentionServiceClient::new(self.channel(Service::Retention)?);
        let failed = self.failed(Service::Retention);
        let erasure = match command {
            ErasureCommand::Start {
                tenant,
                subject,
                reason,
                request,
                dry_run,
            } => c
                .plan_erasure(self.unary(PlanErasureRequest {
                    tenant,
                    subject_id: subject,
                    reason,
                    request_id: request.unwrap_or_default(),
                    dry_run,
                }))
                .await
                .map_err(failed)?,
            ErasureCommand::Status { tenant, id } => c
                .get_erasure(self.unary(GetErasureRequest {
                    tenant,
                    erasure_id: id,
                }))
                .await
                .map_err(failed)?,
            ErasureCommand::Certificate { tenant, id } => {
                let cert = c
                    .get_erasure_certificate(self.unary(GetErasureRequest {
                        tenant,
                        erasure_id: id,
                    }))
                    .await
                    .map_err(failed)?
                    .into_inner();
                return self.object(
                    &to_json("ErasureCertificate", &cert),
                    CERTIFICATE_FIELDS,
                    &[
                        ("confirmations", "/confirmations", ERASURE_ORDER_COLUMNS),
                        ("kept", "/kept", ITEM_COLUMNS),
                        ("shreds", "/shreds", SHRED_COLUMNS),
                        (
                            "recipients to notify",
                            "/recipientsToNotify",
                            RECIPIENT_COLUMNS,
                        ),
                    ],
                );
            }
        };
        let erasure = erasure.into_inner().erasure.unwrap_or_default();
        self.object(
            &to_json("Erasure", &erasure),
            ERASURE_FIELDS,
            &[
                ("goes", "/goes", ITEM_COLUMNS),
                ("stays", "/stays", ITEM_COLUMNS),
                ("orders", "/orders", ERASURE_ORDER_COLUMNS),
                ("shreds", "/shreds", SHRED_COLUMNS),
            ],
        )
    }

    // ---- disclosures and holds ----

    pub async fn disclosures(&self, command: DisclosuresCommand) -> Result<(), Failure> {
        let list = match command {
            DisclosuresCommand::Account(a) => ListCommand::Accounting(a),
            DisclosuresCommand::Recipients(a) => ListCommand::Recipients(a),
            DisclosuresCommand::Flagged(a) => ListCommand::Flagged(a),
        };
        self.list(list, None).await
    }

    pub async fn holds(&self, command: HoldsCommand) -> Result<(), Failure> {
        let mut c = RetentionServiceClient::new(self.channel(Service::Retention)?);
        let failed = self.failed(Service::Retention);
        let hold = match command {
            HoldsCommand::List(a) => return self.list(ListCommand::Holds(a), None).await,
            HoldsCommand::Place {
                tenant,
                subject,
                category,
                system,
                reason,
                placed_by,
            } => c
                .place_legal_hold(self.unary(PlaceLegalHoldRequest {
                    tenant,
                    subject_id: subject.unwrap_or_default(),
                    category: category.unwrap_or_default(),
                    system: system.unwrap_or_default(),
                    reason,
                    placed_by,
                }))
                .await
                .map_err(failed)?,
            HoldsCommand::Release { tenant, id, reason } => c
                .release_legal_hold(self.unary(ReleaseLegalHoldRequest {
                    tenant,
                    hold_id: id,
                    reason,
                }))
                .await
                .map_err(failed)?,
        };
        let hold = hold.into_inner().hold.unwrap_or_default();
        self.object(&to_json("LegalHold", &hold), HOLD_FIELDS, &[])
    }
}

/// Adds the decoded body of a domain event beside its bytes (`envelope.domainEvent.bodyJson`),
/// so a reader sees what the service recorded; the bytes stay, as the hash covers them.
fn decode_domain_body(event: &StoredEvent, row: &mut Value) {
    let Some(envelope) = &event.envelope else {
        return;
    };
    let Some(envelope::Payload::DomainEvent(domain)) = &envelope.payload else {
        return;
    };
    let Some(info) = privacy_proto::catalogue::domain_event(&envelope.event_type) else {
        return;
    };
    if let Ok(body) =
        privacy_proto::encoded_to_json(&format!("privacy.v1.{}", info.body), &domain.body)
    {
        row["envelope"]["domainEvent"]["bodyJson"] = body;
    }
}

/// `in-progress` (or `in_progress`, `IN_PROGRESS`) → the enum's number.
fn enum_value<E: Into<i32>>(
    flag: &str,
    prefix: &str,
    value: &str,
    from_name: impl Fn(&str) -> Option<E>,
) -> Result<i32, Failure> {
    let name = format!(
        "{prefix}{}",
        value.trim().to_ascii_uppercase().replace(['-', ' '], "_")
    );
    match from_name(&name) {
        Some(v) if !name.ends_with("_UNSPECIFIED") => Ok(v.into()),
        _ => Err(Failure::Config(format!(
            "{flag}: {value:?} is not a known value (see `privacy requests list --help`)"
        ))),
    }
}

fn io_failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // The reader stopped (`| head`): nothing more to say.
        return Failure::Closed;
    }
    Failure::Io(format!("cannot write the output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_type_shown_is_in_the_descriptor_set() {
        let source = include_str!("commands.rs");
        let mut names = 0;
        for part in source
            .split("to_json(\"")
            .skip(1)
            .chain(source.split("rows(\"").skip(1))
        {
            let name = &part[..part.find('"').unwrap()];
            let full = format!("privacy.v1.{name}");
            assert!(privacy_proto::encoded_to_json(&full, &[]).is_ok(), "{full}");
            names += 1;
        }
        assert!(names >= 9, "{names}");
    }

    #[test]
    fn times_are_rfc3339_or_dates_at_midnight_utc() {
        assert_eq!(
            parse_time("2026-11-24").unwrap().seconds,
            parse_time("2026-11-24T00:00:00Z").unwrap().seconds
        );
        assert_eq!(
            parse_time("2026-11-24T09:00:00+07:00").unwrap().seconds,
            parse_time("2026-11-24").unwrap().seconds + 2 * 3600
        );
        assert!(parse_time("24/11/2026").unwrap_err().contains("24/11/2026"));
    }

    #[test]
    fn enum_flags_take_the_spellings_people_type() {
        let v = |s| enum_value("--state", "REQUEST_STATE_", s, RequestState::from_str_name);
        assert_eq!(v("in-progress").unwrap(), RequestState::InProgress as i32);
        assert_eq!(v("IN_PROGRESS").unwrap(), RequestState::InProgress as i32);
        assert!(v("unspecified").is_err());
        assert!(v("done").unwrap_err().to_string().contains("--state"));
    }
}
