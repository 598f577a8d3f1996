//! Contract checks applied to every user event before it is stored (DESIGN §5.9): ids, sizes,
//! timestamps, enum values and required payload fields. Each rejection names the field.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::catalogue::EventType;
use crate::v1::envelope::Payload;
use crate::v1::{Envelope, PersonalValue, personal_value};

/// Why an event was refused; travels as `Privacy-Error-Code` on the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionCode {
    /// The bytes are not an envelope.
    Malformed,
    /// The message is larger than the configured limit.
    TooLarge,
    /// `event_type` is not in the catalogue, or this service does not take it.
    UnknownEventType,
    /// A required field is empty.
    MissingField,
    /// A field has a value outside its rules.
    InvalidField,
    /// The tenant is not in the tenant registry.
    UnknownTenant,
    /// A domain rule forbids it (e.g. a pre-ticked consent where the jurisdiction refuses it).
    Forbidden,
    /// It would create something that exists already (e.g. a policy version published twice).
    AlreadyExists,
    /// Its `event_id` is already stored for the tenant with other content.
    ConflictingDuplicate,
    /// The envelope's `tenant` is not the tenant its NATS subject names.
    TenantMismatch,
}

impl RejectionCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectionCode::Malformed => "malformed",
            RejectionCode::TooLarge => "too_large",
            RejectionCode::UnknownEventType => "unknown_event_type",
            RejectionCode::MissingField => "missing_field",
            RejectionCode::InvalidField => "invalid_field",
            RejectionCode::UnknownTenant => "unknown_tenant",
            RejectionCode::Forbidden => "forbidden",
            RejectionCode::AlreadyExists => "already_exists",
            RejectionCode::ConflictingDuplicate => "conflicting_duplicate",
            RejectionCode::TenantMismatch => "tenant_mismatch",
        }
    }
}

impl fmt::Display for RejectionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event refused at the door: what is wrong and in which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {field}: {reason}")]
pub struct Rejection {
    pub code: RejectionCode,
    /// Dotted path of the field in the envelope (`message` for the whole message).
    pub field: String,
    pub reason: String,
}

impl Rejection {
    pub fn new(code: RejectionCode, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection {
            code,
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn missing(field: impl Into<String>) -> Self {
        let field = field.into();
        let reason = format!("{field} is required");
        Rejection::new(RejectionCode::MissingField, field, reason)
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection::new(RejectionCode::InvalidField, field, reason)
    }
}

/// Size and time limits of the contract.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted message body.
    pub max_message_bytes: usize,
    /// How far `occurred_at` may lie ahead of the receiving clock.
    pub max_future_skew: Duration,
    /// Longest id (`event_id`, `tenant`, `subject_id`, purposes, systems…).
    pub max_id_len: usize,
    /// Longest free-text or personal value.
    pub max_text_len: usize,
    /// Most items in a repeated field or map (purposes, categories, personal values…).
    pub max_list_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_future_skew: Duration::from_secs(300),
            max_id_len: 128,
            max_text_len: 4096,
            max_list_len: 64,
        }
    }
}

/// Checks the size of a raw message before decoding it.
pub fn check_size(len: usize, limits: &Limits) -> Result<(), Rejection> {
    if len > limits.max_message_bytes {
        return Err(Rejection::new(
            RejectionCode::TooLarge,
            "message",
            format!(
                "message is {len} bytes; the limit is {} bytes",
                limits.max_message_bytes
            ),
        ));
    }
    Ok(())
}

/// Checks a decoded user event against the contract. `subject_type` is the event type named by
/// the NATS subject it arrived on, when there is one; `now` is the receiving clock.
pub fn validate_envelope(
    env: &Envelope,
    subject_type: Option<&str>,
    now: SystemTime,
    limits: &Limits,
) -> Result<EventType, Rejection> {
    check_event_id(&env.event_id, limits)?;
    if env.event_type.is_empty() {
        return Err(Rejection::missing("event_type"));
    }
    let event_type: EventType = env.event_type.parse().map_err(|_| {
        Rejection::new(
            RejectionCode::UnknownEventType,
            "event_type",
            format!(
                "the event type is not in the catalogue ({} characters; the value is not \
                 repeated here)",
                env.event_type.chars().count()
            ),
        )
    })?;
    if let Some(st) = subject_type
        && st != env.event_type
    {
        return Err(Rejection::invalid(
            "event_type",
            format!(
                "event_type {:?} does not match the subject's {st:?}",
                env.event_type
            ),
        ));
    }
    if env.schema_version > 1 {
        return Err(Rejection::invalid(
            "schema_version",
            format!(
                "schema_version {} is not supported (1 is)",
                env.schema_version
            ),
        ));
    }
    check_tenant(&env.tenant)?;
    check_occurred_at(env, now, limits)?;
    // Identifiers of systems and traces, stored as given: codes, so no free text (which could
    // carry personal data) rests in the clear through them.
    for (field, code) in [
        ("source", &env.source),
        ("correlation_id", &env.correlation_id),
        ("causation_id", &env.causation_id),
    ] {
        if !code.is_empty() {
            check_id(field, code, limits)?;
        }
    }

    let payload = env
        .payload
        .as_ref()
        .ok_or_else(|| Rejection::missing(event_type.payload_field()))?;
    if EventType::of_payload(payload) != Some(event_type) {
        return Err(Rejection::invalid(
            event_type.payload_field(),
            format!(
                "payload does not match event_type {:?} (expected field {})",
                env.event_type,
                event_type.payload_field()
            ),
        ));
    }
    let aggregate_ok = matches!(payload, Payload::DataDisclosed(d) if !d.cohort_ref.is_empty());
    if env.subject_id.is_empty() {
        if !aggregate_ok {
            return Err(Rejection::missing("subject_id"));
        }
    } else {
        check_subject_id(&env.subject_id, limits)?;
    }
    crate::catalogue::check_payload(payload, limits)?;
    Ok(event_type)
}

fn check_event_id(id: &str, limits: &Limits) -> Result<(), Rejection> {
    if id.is_empty() {
        return Err(Rejection::missing("event_id"));
    }
    if id.len() > limits.max_id_len {
        return Err(Rejection::invalid("event_id", "event_id is too long"));
    }
    let is_uuid = uuid::Uuid::try_parse(id).is_ok();
    let is_ulid = id.len() == 26
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)));
    if !(is_uuid || is_ulid) {
        return Err(Rejection::invalid(
            "event_id",
            format!(
                "event_id is neither a UUID nor a ULID ({} characters; the value is not \
                 repeated here)",
                id.chars().count()
            ),
        ));
    }
    Ok(())
}

/// Longest tenant id: it is a NATS subject token and part of every key.
pub const MAX_TENANT_LEN: usize = 63;

/// Whether `s` is a tenant id: 1–63 of `[a-z0-9-]`, not starting or ending with `-` — safe as
/// one NATS subject token (DESIGN §4.2).
pub fn is_tenant_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TENANT_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The envelope's `tenant`: a tenant id ([`is_tenant_id`]).
pub fn check_tenant(value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::missing("tenant"));
    }
    if !is_tenant_id(value) {
        return Err(Rejection::invalid(
            "tenant",
            format!(
                "tenant must be 1-{MAX_TENANT_LEN} of a-z, 0-9 and -, not starting or ending                  with - (the value is not repeated here)"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_id(field: &str, value: &str, limits: &Limits) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::missing(field));
    }
    if value.len() > limits.max_id_len {
        return Err(Rejection::invalid(
            field,
            format!("{field} is longer than {} bytes", limits.max_id_len),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(Rejection::invalid(
            field,
            format!(
                "{field} may hold only letters, digits and - _ . : (its first other character \
                 is at position {}; the value is not repeated here)",
                value
                    .bytes()
                    .position(|b| !(b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
                    .unwrap_or(0)
                    + 1
            ),
        ));
    }
    Ok(())
}

/// A subject id: a pseudonymous id, never an e-mail address or a phone number.
pub fn check_subject_id(value: &str, limits: &Limits) -> Result<(), Rejection> {
    if value.contains('@') {
        return Err(Rejection::invalid(
            "subject_id",
            "subject_id looks like an e-mail address; use the tenant's pseudonymous id",
        ));
    }
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    if value.starts_with('+') && digits >= 7 {
        return Err(Rejection::invalid(
            "subject_id",
            "subject_id looks like a phone number; use the tenant's pseudonymous id",
        ));
    }
    check_id("subject_id", value, limits)
}

pub(crate) fn check_text(field: &str, value: &str, limits: &Limits) -> Result<(), Rejection> {
    if value.len() > limits.max_text_len {
        return Err(Rejection::invalid(
            field,
            format!("{field} is longer than {} bytes", limits.max_text_len),
        ));
    }
    Ok(())
}

/// 9999-12-31T23:59:59Z, the last second a timestamp of the contract may name.
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// Checks that a timestamp names an instant from 1970-01-01 to 9999-12-31 (UTC) with valid
/// nanoseconds, so that every later conversion to microseconds is exact.
pub fn check_timestamp(field: &str, ts: &prost_types::Timestamp) -> Result<(), Rejection> {
    if !(0..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos)
    {
        return Err(Rejection::invalid(
            field,
            format!(
                "{field} must be an instant from 1970-01-01 to 9999-12-31 (got {}s {}ns)",
                ts.seconds, ts.nanos
            ),
        ));
    }
    Ok(())
}

/// Checks the number of items of a repeated field or map.
pub fn check_list_len(field: &str, len: usize, limits: &Limits) -> Result<(), Rejection> {
    if len > limits.max_list_len {
        return Err(Rejection::new(
            RejectionCode::TooLarge,
            field,
            format!(
                "{field} has {len} items; the limit is {}",
                limits.max_list_len
            ),
        ));
    }
    Ok(())
}

fn check_occurred_at(env: &Envelope, now: SystemTime, limits: &Limits) -> Result<(), Rejection> {
    let ts = env
        .occurred_at
        .as_ref()
        .ok_or_else(|| Rejection::missing("occurred_at"))?;
    check_timestamp("occurred_at", ts)?;
    if ts.seconds == 0 {
        return Err(Rejection::invalid(
            "occurred_at",
            "occurred_at must be a valid instant after 1970-01-01",
        ));
    }
    let at = UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32);
    if at > now + limits.max_future_skew {
        return Err(Rejection::invalid(
            "occurred_at",
            format!(
                "occurred_at is more than {} s in the future",
                limits.max_future_skew.as_secs()
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_personal(
    field: &str,
    map: &BTreeMap<String, PersonalValue>,
    limits: &Limits,
) -> Result<(), Rejection> {
    check_list_len(field, map.len(), limits)?;
    for (name, value) in map {
        let path = format!("{field}.{name}");
        check_id(&path, name, limits)?;
        match &value.value {
            Some(personal_value::Value::Clear(text)) => check_text(&path, text, limits)?,
            Some(_) => {
                return Err(Rejection::invalid(
                    path,
                    "personal data must be published in the clear; the service seals it",
                ));
            }
            None => return Err(Rejection::missing(path)),
        }
    }
    Ok(())
}

/// A protobuf enum value must be known and not the `UNSPECIFIED` zero.
pub(crate) fn check_enum<E: TryFrom<i32>>(field: &str, value: i32) -> Result<(), Rejection> {
    if value == 0 {
        return Err(Rejection::missing(field));
    }
    if E::try_from(value).is_err() {
        return Err(Rejection::invalid(
            field,
            format!("{field} has no value {value}"),
        ));
    }
    Ok(())
}

pub(crate) fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ConsentGranted, ConsentMethod, DataDisclosed};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn granted() -> Envelope {
        Envelope {
            event_id: "0190f5a4-8a3c-7cc0-9d3e-4c1d2e3f4a5b".into(),
            event_type: "consent.granted".into(),
            schema_version: 1,
            tenant: "acme".into(),
            subject_id: "u-1".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_799_999_000,
                nanos: 0,
            }),
            payload: Some(Payload::ConsentGranted(ConsentGranted {
                purposes: vec!["marketing".into()],
                policy_version: "v1".into(),
                method: ConsentMethod::UntickedCheckbox as i32,
                expressed_by: crate::v1::ExpressedBy::Subject as i32,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// A change that breaks one field.
    type Mutation = Box<dyn Fn(&mut Envelope)>;

    fn field_of(env: &Envelope) -> String {
        validate_envelope(env, None, now(), &Limits::default())
            .unwrap_err()
            .field
    }

    #[test]
    fn a_complete_event_passes() {
        assert_eq!(
            validate_envelope(
                &granted(),
                Some("consent.granted"),
                now(),
                &Limits::default()
            ),
            Ok(EventType::ConsentGranted)
        );
    }

    #[test]
    fn each_rejection_names_its_field() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("event_id", Box::new(|e| e.event_id.clear())),
            ("event_id", Box::new(|e| e.event_id = "not-an-id".into())),
            (
                "event_type",
                Box::new(|e| e.event_type = "consent.revoked".into()),
            ),
            ("tenant", Box::new(|e| e.tenant.clear())),
            (
                "subject_id",
                Box::new(|e| e.subject_id = "ann@example.com".into()),
            ),
            (
                "subject_id",
                Box::new(|e| e.subject_id = "+7 915 000 11 22".into()),
            ),
            ("occurred_at", Box::new(|e| e.occurred_at = None)),
            (
                "occurred_at",
                Box::new(|e| e.occurred_at.as_mut().unwrap().seconds = 1_800_001_000),
            ),
            ("consent_granted", Box::new(|e| e.payload = None)),
            (
                "consent_granted.purposes",
                Box::new(|e| {
                    if let Some(Payload::ConsentGranted(p)) = &mut e.payload {
                        p.purposes.clear();
                    }
                }),
            ),
            (
                "consent_granted.method",
                Box::new(|e| {
                    if let Some(Payload::ConsentGranted(p)) = &mut e.payload {
                        p.method = 99;
                    }
                }),
            ),
            (
                "consent_granted",
                Box::new(|e| {
                    e.payload = Some(Payload::DataDisclosed(DataDisclosed::default()));
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut env = granted();
            mutate(&mut env);
            assert_eq!(field_of(&env), field, "{env:?}");
        }
    }

    #[test]
    fn tenant_ids_are_nats_subject_tokens() {
        for ok in ["acme", "vn-apihub", "a1", "x"] {
            assert!(is_tenant_id(ok), "{ok}");
        }
        let long = "a".repeat(MAX_TENANT_LEN + 1);
        for bad in [
            "",
            "Acme",
            "a.b",
            "a*",
            "a>",
            "a b",
            "-a",
            "a-",
            "a_b",
            long.as_str(),
        ] {
            assert!(!is_tenant_id(bad), "{bad}");
            let mut env = granted();
            env.tenant = bad.into();
            assert_eq!(field_of(&env), "tenant", "{bad}");
        }
    }

    #[test]
    fn refusals_never_repeat_the_refused_value() {
        let marker = "Ann Q. Example";
        type Change = Box<dyn Fn(&mut Envelope)>;
        let cases: Vec<Change> = vec![
            Box::new(|e| e.subject_id = marker.into()),
            Box::new(|e| e.event_id = marker.into()),
            Box::new(|e| e.event_type = marker.into()),
            Box::new(|e| e.tenant = marker.into()),
            Box::new(|e| {
                if let Some(Payload::ConsentGranted(p)) = &mut e.payload {
                    p.purposes = vec![marker.into()];
                }
            }),
        ];
        for change in cases {
            let mut env = granted();
            change(&mut env);
            let r = validate_envelope(&env, None, now(), &Limits::default()).unwrap_err();
            assert!(!r.reason.contains("Ann"), "{r}");
            assert!(!r.field.contains("Ann"), "{r}");
        }
    }

    #[test]
    fn subject_and_event_type_must_agree() {
        let err = validate_envelope(
            &granted(),
            Some("consent.withdrawn"),
            now(),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.field, "event_type");
    }

    #[test]
    fn oversized_messages_are_refused_before_decoding() {
        let limits = Limits::default();
        assert!(check_size(limits.max_message_bytes, &limits).is_ok());
        let err = check_size(limits.max_message_bytes + 1, &limits).unwrap_err();
        assert_eq!(err.code, RejectionCode::TooLarge);
    }
}
