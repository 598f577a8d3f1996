//! The event catalogue, written once: every user event a backend may publish (its dotted name,
//! payload field, the services that consume it, its personal-data fields and its required
//! fields) and every domain event a service emits (its name, publisher and personal fields).
//!
//! The [`catalogue!`] table below generates [`EventType`], the payload dispatch used by
//! validation and sealing, and the client SDK's [`UserEvent`] impls. Every `match` it generates
//! over [`Payload`] is exhaustive, so a payload added to `envelope.proto` does not compile until
//! it has a row here, and a row does not compile without a [`Contract`] impl saying what is
//! required. Adding a user event end to end touches `envelope.proto`, this file, and the owning
//! service (ARCHITECTURE.md shows the list).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::v1::envelope::Payload;
use crate::v1::{self, PersonalValue};
use crate::validate::{
    Limits, Rejection, check_enum, check_id, check_list_len, check_personal, check_text,
    check_timestamp, is_iso_date,
};

/// The personal-data maps of a payload or domain body, each with its field name; sealing and
/// opening walk exactly these.
pub type PersonalMaps<'a> = Vec<(&'static str, &'a mut BTreeMap<String, PersonalValue>)>;

/// What the contract requires of one payload, beyond the envelope: each failure names the field
/// under `root` (the payload's JSON field, e.g. `consent_granted`).
pub trait Contract {
    fn check(&self, root: &Root, limits: &Limits) -> Result<(), Rejection>;
}

/// The payload's field name, to build dotted field paths in rejections.
pub struct Root(pub &'static str);

impl Root {
    /// `root.name`.
    pub fn field(&self, name: &str) -> String {
        format!("{}.{name}", self.0)
    }
}

/// A typed user-event payload that can be published (the client SDK's input).
pub trait UserEvent {
    const TYPE: EventType;
    fn into_payload(self) -> Payload;
}

/// A typed domain-event body: its catalogue name, the service that emits it, and how its
/// personal data (if any) is sealed. Implemented for every row of the domain table.
pub trait DomainBody: prost::Message + Default {
    const EVENT_TYPE: &'static str;
    const PUBLISHER: &'static str;
    fn personal_maps(&mut self) -> PersonalMaps<'_>;
}

/// A domain event of the catalogue, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainEventInfo {
    pub name: &'static str,
    pub publisher: &'static str,
}

macro_rules! catalogue {
    (
        user {$(
            $variant:ident = $name:literal, $field:ident,
                consumers [$($consumer:literal),*], personal [$($pfield:ident),*];
        )*}
        domain {$(
            $body:ident = $dname:literal, publisher $publisher:literal, personal [$($dfield:ident),*];
        )*}
    ) => {
        /// A user event a backend may publish on `privacy.in.<tenant>.<name>`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType { $($variant),* }

        impl EventType {
            /// Every user event type, in catalogue order.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),*];

            /// The dotted name used in `Envelope.event_type` and in the subject.
            pub const fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name),* }
            }

            /// The payload's field name in the proto3 JSON mapping (for error messages).
            pub const fn payload_field(self) -> &'static str {
                match self { $(EventType::$variant => stringify!($field)),* }
            }

            /// The services that consume it from `privacy.in.`.
            pub const fn consumers(self) -> &'static [&'static str] {
                match self { $(EventType::$variant => &[$($consumer),*]),* }
            }

            /// The event type a payload case belongs to (`None` for a service's domain event).
            pub fn of_payload(payload: &Payload) -> Option<EventType> {
                match payload {
                    $(Payload::$variant(_) => Some(EventType::$variant),)*
                    Payload::DomainEvent(_) => None,
                }
            }
        }

        /// The personal-data maps of a payload. Domain-event bodies are sealed as typed values
        /// before they are encoded ([`DomainBody::personal_maps`]).
        pub fn personal_maps(payload: &mut Payload) -> PersonalMaps<'_> {
            match payload {
                $(Payload::$variant(_p) => vec![$((stringify!($pfield), &mut _p.$pfield)),*],)*
                Payload::DomainEvent(_) => Vec::new(),
            }
        }

        /// Checks a payload's own fields.
        pub(crate) fn check_payload(payload: &Payload, limits: &Limits) -> Result<(), Rejection> {
            match payload {
                $(Payload::$variant(p) => p.check(&Root(stringify!($field)), limits),)*
                Payload::DomainEvent(_) => Err(Rejection::invalid(
                    "payload",
                    "domain events are not accepted as user events",
                )),
            }
        }

        impl Payload {
            /// An empty payload of a user event type.
            pub fn default_for(t: EventType) -> Payload {
                match t { $(EventType::$variant => Payload::$variant(Default::default())),* }
            }
        }

        $(impl UserEvent for v1::$variant {
            const TYPE: EventType = EventType::$variant;
            fn into_payload(self) -> Payload {
                Payload::$variant(self)
            }
        })*

        /// Every domain event of the catalogue.
        pub const DOMAIN_EVENTS: &[DomainEventInfo] =
            &[$(DomainEventInfo { name: $dname, publisher: $publisher }),*];

        $(impl DomainBody for v1::$body {
            const EVENT_TYPE: &'static str = $dname;
            const PUBLISHER: &'static str = $publisher;
            fn personal_maps(&mut self) -> PersonalMaps<'_> {
                vec![$((stringify!($dfield), &mut self.$dfield)),*]
            }
        })*
    };
}

catalogue! {
    user {
        SubjectRegistered = "subject.registered", subject_registered,
            consumers ["consent"], personal [personal];
        SubjectUpdated = "subject.updated", subject_updated,
            consumers ["consent"], personal [personal];
        SubjectDeactivated = "subject.deactivated", subject_deactivated,
            consumers ["consent", "retention"], personal [];
        ConsentGranted = "consent.granted", consent_granted,
            consumers ["consent"], personal [evidence];
        ConsentWithdrawn = "consent.withdrawn", consent_withdrawn,
            consumers ["consent"], personal [];
        ConsentSignal = "consent.signal", consent_signal,
            consumers ["consent"], personal [];
        DataCollected = "data.collected", data_collected,
            consumers ["retention"], personal [];
        DataDisclosed = "data.disclosed", data_disclosed,
            consumers ["disclosure-log"], personal [];
        DataErased = "data.erased", data_erased,
            consumers ["retention"], personal [];
        RequestReceived = "request.received", request_received,
            consumers ["subject-requests"], personal [personal];
    }
    domain {
        PolicyPublished = "policy.published", publisher "consent", personal [];
        ChildFlagged = "subject.child_flagged", publisher "consent", personal [];
    }
}

impl Contract for v1::SubjectRegistered {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        if !self.birth_date.is_empty() && !is_iso_date(&self.birth_date) {
            return Err(Rejection::invalid(
                f.field("birth_date"),
                "birth_date must be a date YYYY-MM-DD",
            ));
        }
        check_text(&f.field("age_band"), &self.age_band, limits)?;
        check_personal(&f.field("personal"), &self.personal, limits)
    }
}

impl Contract for v1::SubjectUpdated {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_personal(&f.field("personal"), &self.personal, limits)
    }
}

impl Contract for v1::SubjectDeactivated {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_text(&f.field("reason"), &self.reason, limits)
    }
}

impl Contract for v1::ConsentGranted {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        if self.purposes.is_empty() {
            return Err(Rejection::missing(f.field("purposes")));
        }
        check_list_len(&f.field("purposes"), self.purposes.len(), limits)?;
        for purpose in &self.purposes {
            check_id(&f.field("purposes"), purpose, limits)?;
        }
        check_id(&f.field("policy_version"), &self.policy_version, limits)?;
        if let Some(until) = &self.valid_until {
            check_timestamp(&f.field("valid_until"), until)?;
        }
        check_enum::<v1::ConsentMethod>(&f.field("method"), self.method)?;
        check_enum::<v1::ExpressedBy>(&f.field("expressed_by"), self.expressed_by)?;
        check_text(&f.field("attestation_ref"), &self.attestation_ref, limits)?;
        check_personal(&f.field("evidence"), &self.evidence, limits)
    }
}

impl Contract for v1::ConsentWithdrawn {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_list_len(&f.field("purposes"), self.purposes.len(), limits)?;
        for purpose in &self.purposes {
            check_id(&f.field("purposes"), purpose, limits)?;
        }
        check_text(&f.field("method"), &self.method, limits)
    }
}

impl Contract for v1::ConsentSignal {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_id(&f.field("signal"), &self.signal, limits)
    }
}

impl Contract for v1::DataCollected {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_id(&f.field("category"), &self.category, limits)?;
        check_id(&f.field("system"), &self.system, limits)?;
        if !self.purpose.is_empty() {
            check_id(&f.field("purpose"), &self.purpose, limits)?;
        }
        check_text(&f.field("location"), &self.location, limits)
    }
}

impl Contract for v1::DataDisclosed {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_text(&f.field("recipient"), &self.recipient, limits)?;
        if self.recipient.is_empty() {
            return Err(Rejection::missing(f.field("recipient")));
        }
        check_enum::<v1::RecipientRole>(&f.field("recipient_role"), self.recipient_role)?;
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Rejection::invalid(
                f.field("country"),
                "country must be an ISO 3166-1 alpha-2 code such as DE",
            ));
        }
        if self.categories.is_empty() {
            return Err(Rejection::missing(f.field("categories")));
        }
        check_list_len(&f.field("categories"), self.categories.len(), limits)?;
        for c in &self.categories {
            check_id(&f.field("categories"), c, limits)?;
        }
        check_enum::<v1::LegalBasis>(&f.field("legal_basis"), self.legal_basis)?;
        if self.legal_basis == v1::LegalBasis::StateBodyRequest as i32
            && self.request_ref.is_empty()
        {
            return Err(Rejection::missing(f.field("request_ref")));
        }
        check_id(&f.field("system"), &self.system, limits)
    }
}

impl Contract for v1::DataErased {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_id(&f.field("system"), &self.system, limits)?;
        check_id(&f.field("category"), &self.category, limits)?;
        check_text(&f.field("kept_reason"), &self.kept_reason, limits)
    }
}

impl Contract for v1::RequestReceived {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_enum::<v1::RequestType>(&f.field("request_type"), self.request_type)?;
        check_text(&f.field("channel"), &self.channel, limits)?;
        check_personal(&f.field("personal"), &self.personal, limits)
    }
}

impl EventType {
    /// The NATS subject a backend publishes this event of `tenant` on, under `prefix`
    /// (normally `privacy`): `<prefix>.in.<tenant>.<event_type>`.
    pub fn subject(self, prefix: &str, tenant: &str) -> String {
        format!("{prefix}.in.{tenant}.{}", self.as_str())
    }

    /// The user events `service` consumes, in catalogue order.
    pub fn consumed_by(service: &str) -> Vec<EventType> {
        EventType::ALL
            .iter()
            .copied()
            .filter(|t| t.consumers().contains(&service))
            .collect()
    }

    /// Every service that consumes some user event, in first-seen catalogue order.
    pub fn consuming_services() -> Vec<&'static str> {
        let mut services: Vec<&'static str> = Vec::new();
        for t in EventType::ALL {
            for s in t.consumers() {
                if !services.contains(s) {
                    services.push(s);
                }
            }
        }
        services
    }

    /// The subject filters (after `<prefix>.in.`) that deliver exactly the events `service`
    /// consumes, of every tenant: `*.family.*` when it takes every event of a family, else
    /// `*.<name>`.
    pub fn filters_for(service: &str) -> Vec<String> {
        let mine = EventType::consumed_by(service);
        let mut filters: Vec<String> = Vec::new();
        for t in &mine {
            let family = t.as_str().split('.').next().unwrap_or_default();
            let whole = EventType::ALL
                .iter()
                .filter(|o| o.as_str().split('.').next() == Some(family))
                .all(|o| mine.contains(o));
            let filter = if whole {
                format!("*.{family}.*")
            } else {
                format!("*.{}", t.as_str())
            };
            if !filters.contains(&filter) {
                filters.push(filter);
            }
        }
        filters
    }
}

/// The domain event of the catalogue named `name`.
pub fn domain_event(name: &str) -> Option<DomainEventInfo> {
    DOMAIN_EVENTS.iter().copied().find(|d| d.name == name)
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not a known user event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_subjects_use_the_prefix() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(*t));
            assert!(!t.consumers().is_empty(), "{t} has no consumer");
        }
        assert_eq!(
            EventType::ConsentGranted.subject("privacy", "acme"),
            "privacy.in.acme.consent.granted"
        );
        assert!("consent.revoked".parse::<EventType>().is_err());
    }

    #[test]
    fn filters_cover_exactly_what_a_service_consumes() {
        assert_eq!(
            EventType::filters_for("consent"),
            ["*.subject.*", "*.consent.*"]
        );
        assert_eq!(
            EventType::filters_for("retention"),
            ["*.subject.deactivated", "*.data.collected", "*.data.erased"]
        );
        assert_eq!(EventType::filters_for("subject-requests"), ["*.request.*"]);
        assert!(EventType::filters_for("nobody").is_empty());
    }

    #[test]
    fn every_personal_map_in_the_proto_is_in_the_catalogue() {
        // The descriptor knows which payload messages hold `PersonalValue` maps; the catalogue
        // must name each of them, so nothing personal can be stored unsealed.
        let pool = prost_reflect::DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        let envelope = pool.get_message_by_name("privacy.v1.Envelope").unwrap();
        for t in EventType::ALL {
            let field = envelope.get_field_by_name(t.payload_field()).unwrap();
            let prost_reflect::Kind::Message(payload) = field.kind() else {
                panic!("{t}: payload is not a message")
            };
            let mut in_proto: Vec<String> = payload
                .fields()
                .filter(|f| {
                    let Some(m) = f.kind().as_message().cloned() else {
                        return false;
                    };
                    let value = if f.is_map() {
                        m.map_entry_value_field().kind().as_message().cloned()
                    } else {
                        Some(m)
                    };
                    value.is_some_and(|v| v.full_name() == "privacy.v1.PersonalValue")
                })
                .map(|f| f.name().to_owned())
                .collect();
            in_proto.sort();
            let mut payload_value = Payload::default_for(*t);
            let mut in_catalogue: Vec<String> = personal_maps(&mut payload_value)
                .into_iter()
                .map(|(n, _)| n.to_owned())
                .collect();
            in_catalogue.sort();
            assert_eq!(in_proto, in_catalogue, "{t}");
        }
    }
}
