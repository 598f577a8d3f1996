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

/// The free-text fields of a payload that may carry personal data. The door moves each
/// non-empty one into the payload's personal map ([`FreeText::MAP`]) under the field's own name
/// and seals it there, so a stored event holds them only sealed; [`restore_free_text`] puts an
/// opened value back in its field. The map must not use those names itself.
pub trait FreeText {
    /// The personal map the fields move into (empty: the payload has no free text).
    const MAP: &'static str;
    /// Every free-text field's name: reserved as keys of the map.
    const TEXT: &'static [&'static str];
    /// The map, and the fields to seal in this value (all of [`Self::TEXT`], or fewer when a
    /// field is free text only in some cases, such as a recipient who is a natural person).
    fn free_text(&mut self) -> Option<TextFields<'_>>;
    /// The map, to check the reserved names.
    fn text_map(&self) -> Option<&BTreeMap<String, PersonalValue>>;
}

/// A payload's free-text fields and the personal map they are sealed into.
pub struct TextFields<'a> {
    pub fields: Vec<(&'static str, &'a mut String)>,
    pub map: &'a mut BTreeMap<String, PersonalValue>,
}

/// No free text.
macro_rules! no_free_text {
    ($($t:ident),*) => {$(
        impl FreeText for v1::$t {
            const MAP: &'static str = "";
            const TEXT: &'static [&'static str] = &[];
            fn free_text(&mut self) -> Option<TextFields<'_>> {
                None
            }
            fn text_map(&self) -> Option<&BTreeMap<String, PersonalValue>> {
                None
            }
        }
    )*};
}

/// Free text sealed into `$map`: every field, always.
macro_rules! free_text {
    ($($t:ident: $map:ident [$($f:ident),+];)*) => {$(
        impl FreeText for v1::$t {
            const MAP: &'static str = stringify!($map);
            const TEXT: &'static [&'static str] = &[$(stringify!($f)),+];
            fn free_text(&mut self) -> Option<TextFields<'_>> {
                Some(TextFields {
                    fields: vec![$((stringify!($f), &mut self.$f)),+],
                    map: &mut self.$map,
                })
            }
            fn text_map(&self) -> Option<&BTreeMap<String, PersonalValue>> {
                Some(&self.$map)
            }
        }
    )*};
}

no_free_text!(
    SubjectUpdated,
    ConsentRefused,
    ConsentSignal,
    RequestReceived,
    OrderConfirmed
);

free_text! {
    SubjectRegistered: personal [birth_date, age_band];
    SubjectDeactivated: personal [reason];
    ConsentGranted: evidence [attestation_ref];
    ConsentWithdrawn: personal [method];
    DataCollected: personal [location];
    DataErased: personal [kept_reason];
}

impl FreeText for v1::DataDisclosed {
    const MAP: &'static str = "personal";
    const TEXT: &'static [&'static str] = &["recipient", "request_ref"];
    fn free_text(&mut self) -> Option<TextFields<'_>> {
        let mut fields = vec![("request_ref", &mut self.request_ref)];
        if self.recipient_natural_person {
            fields.push(("recipient", &mut self.recipient));
        }
        Some(TextFields {
            fields,
            map: &mut self.personal,
        })
    }
    fn text_map(&self) -> Option<&BTreeMap<String, PersonalValue>> {
        Some(&self.personal)
    }
}

/// Refuses a personal map that uses a free-text field's name as a key.
fn check_reserved<T: FreeText>(root: &Root, payload: &T) -> Result<(), Rejection> {
    let Some(map) = payload.text_map() else {
        return Ok(());
    };
    match T::TEXT.iter().find(|name| map.contains_key(**name)) {
        Some(name) => {
            let field = root.field(&format!("{}.{name}", T::MAP));
            let reason = format!("{field} is reserved for the {name} field: publish it there");
            Err(Rejection::invalid(field, reason))
        }
        None => Ok(()),
    }
}

/// Moves a payload's non-empty free-text fields into its personal map, in the clear, ready to
/// be sealed with the rest of it.
pub fn move_free_text(payload: &mut Payload) {
    if let Some(t) = free_text_of(payload) {
        for (name, field) in t.fields {
            if !field.is_empty() {
                let text = std::mem::take(field);
                t.map.insert(
                    name.to_owned(),
                    PersonalValue {
                        value: Some(v1::personal_value::Value::Clear(text)),
                    },
                );
            }
        }
    }
}

/// Puts opened free text back into its field (a value shown as erased stays in the map).
pub fn restore_free_text(payload: &mut Payload) {
    if let Some(t) = free_text_of(payload) {
        for (name, field) in t.fields {
            if let Some(PersonalValue {
                value: Some(v1::personal_value::Value::Clear(text)),
            }) = t.map.get_mut(name)
            {
                *field = std::mem::take(text);
                t.map.remove(name);
            }
        }
    }
}

/// What the contract requires of one payload, beyond the envelope: each failure names the field
/// under `root` (the payload's JSON field, e.g. `consent_granted`).
pub trait Contract {
    fn check(&self, root: &Root, limits: &Limits) -> Result<(), Rejection>;
}

/// The payload's field name, to build dotted field paths in rejections.
pub struct Root(pub &'static str);

impl Root {
    /// `root.name` (built without `format!`: every check of every event names its fields).
    pub fn field(&self, name: &str) -> String {
        let mut path = String::with_capacity(self.0.len() + 1 + name.len());
        path.push_str(self.0);
        path.push('.');
        path.push_str(name);
        path
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
    /// The body's message in package `privacy.v1` (e.g. `HoldPlaced`).
    pub body: &'static str,
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

        /// The free-text fields of a payload (none for a domain event).
        fn free_text_of(payload: &mut Payload) -> Option<TextFields<'_>> {
            match payload {
                $(Payload::$variant(p) => p.free_text(),)*
                Payload::DomainEvent(_) => None,
            }
        }

        /// Checks a payload's own fields.
        pub(crate) fn check_payload(payload: &Payload, limits: &Limits) -> Result<(), Rejection> {
            match payload {
                $(Payload::$variant(p) => {
                    let root = Root(stringify!($field));
                    check_reserved(&root, p)?;
                    p.check(&root, limits)
                })*
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
            &[$(DomainEventInfo { name: $dname, publisher: $publisher, body: stringify!($body) }),*];

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
            consumers ["consent", "retention"], personal [personal];
        ConsentGranted = "consent.granted", consent_granted,
            consumers ["consent"], personal [evidence];
        ConsentWithdrawn = "consent.withdrawn", consent_withdrawn,
            consumers ["consent"], personal [personal];
        ConsentRefused = "consent.refused", consent_refused,
            consumers ["consent"], personal [];
        ConsentSignal = "consent.signal", consent_signal,
            consumers ["consent"], personal [];
        DataCollected = "data.collected", data_collected,
            consumers ["retention"], personal [personal];
        DataDisclosed = "data.disclosed", data_disclosed,
            consumers ["disclosure-log"], personal [personal];
        DataErased = "data.erased", data_erased,
            consumers ["retention"], personal [personal];
        RequestReceived = "request.received", request_received,
            consumers ["subject-requests"], personal [personal];
        OrderConfirmed = "order.confirmed", order_confirmed,
            consumers ["subject-requests"], personal [];
    }
    domain {
        PolicyPublished = "policy.published", publisher "consent", personal [];
        ChildFlagged = "subject.child_flagged", publisher "consent", personal [];
        AgeThresholds = "subject.age_thresholds", publisher "consent", personal [];
        RequestOpened = "request.opened", publisher "subject-requests", personal [];
        RequestIdentityVerified = "request.identity_verified", publisher "subject-requests",
            personal [];
        RequestStarted = "request.started", publisher "subject-requests", personal [];
        RequestExtended = "request.extended", publisher "subject-requests", personal [];
        RequestPaused = "request.paused", publisher "subject-requests", personal [];
        RequestResumed = "request.resumed", publisher "subject-requests", personal [];
        RequestCompleted = "request.completed", publisher "subject-requests", personal [];
        RequestRejected = "request.rejected", publisher "subject-requests", personal [];
        RequestWithdrawn = "request.withdrawn", publisher "subject-requests", personal [];
        RequestDueSoon = "request.due_soon", publisher "subject-requests", personal [];
        RequestOverdue = "request.overdue", publisher "subject-requests", personal [];
        RequestOrderIssued = "request.order_issued", publisher "subject-requests", personal [];
        RequestErasureRequested = "request.erasure_requested", publisher "subject-requests",
            personal [];
        HoldPlaced = "hold.placed", publisher "retention", personal [];
        HoldReleased = "hold.released", publisher "retention", personal [];
        ErasurePlanned = "erasure.planned", publisher "retention", personal [];
        ErasureOrdered = "erasure.ordered", publisher "retention", personal [];
        ErasureEscalated = "erasure.escalated", publisher "retention", personal [];
        SubjectErased = "subject.erased", publisher "retention", personal [];
        SubjectShredded = "subject.shredded", publisher "*", personal [];
        ErasureShredConfirmed = "erasure.shred_confirmed", publisher "retention", personal [];
        ErasureCompleted = "erasure.completed", publisher "retention", personal [];
        TriggerObserved = "trigger.observed", publisher "retention", personal [];
        SchedulePut = "schedule.put", publisher "retention", personal [];
        DisclosureRecorded = "disclosure.recorded", publisher "disclosure-log", personal [];
        DisclosureFlagged = "disclosure.flagged", publisher "disclosure-log", personal [];
        DisclosureConsentChecked = "disclosure.consent_checked", publisher "disclosure-log",
            personal [];
    }
}

/// The publisher of a domain event every service emits through the kit (e.g. its own shred of
/// a subject's key), not one service's.
pub const ANY_SERVICE: &str = "*";

/// The events a service takes from other services (from `<prefix>.evt.`): (event, publisher,
/// consumers). Mostly domain events (their publisher is the catalogue's); a user event a service
/// stored after its checks and re-publishes (consent's `consent.withdrawn`) names that service.
///
/// `subject.erased` makes every other service shred the subject's key and say so with
/// `subject.shredded`, which retention collects for the erasure's certificate; subject-requests
/// also completes the request the erasure served. `request.erasure_requested` and
/// `subject.child_flagged` make retention plan and order an erasure; `consent.withdrawn` starts
/// the schedules that count from a withdrawal.
pub const CROSS_SERVICE: &[(&str, &str, &[&str])] = &[
    (
        "subject.erased",
        "retention",
        &["consent", "subject-requests", "disclosure-log"],
    ),
    ("subject.shredded", ANY_SERVICE, &["retention"]),
    (
        "request.erasure_requested",
        "subject-requests",
        &["retention"],
    ),
    ("subject.child_flagged", "consent", &["retention"]),
    ("consent.withdrawn", "consent", &["retention"]),
];

/// The `<prefix>.evt.` filters (after the prefix) of the events `service` takes from other
/// services: `evt.<publisher or *>.*.<event>`.
pub fn cross_service_filters(service: &str) -> Vec<(&'static str, String)> {
    CROSS_SERVICE
        .iter()
        .filter(|(_, _, consumers)| consumers.contains(&service))
        .map(|(event, publisher, _)| (*event, format!("evt.{publisher}.*.{event}")))
        .collect()
}

/// The domain events that carry an [`v1::Order`] to a backend (as field 1 of their body): the
/// outbox relay also publishes that order on `<prefix>.out.<tenant>.<system>.<action>`.
pub const ORDER_EVENTS: &[&str] = &["request.order_issued", "erasure.ordered"];

/// The actions an order may name (the last token of its `privacy.out` subject).
pub const ORDER_ACTIONS: &[&str] = &[
    "rectify",
    "restrict",
    "deactivate",
    "erase",
    "anonymise",
    "archive",
];

/// Any body that carries an order as its field 1.
#[derive(Clone, PartialEq, prost::Message)]
struct OrderCarrier {
    #[prost(message, optional, tag = "1")]
    order: Option<v1::Order>,
}

/// The order a stored domain event carries, if it is one of [`ORDER_EVENTS`] and decodes.
pub fn order_of(envelope: &v1::Envelope) -> Option<v1::Order> {
    if !ORDER_EVENTS.contains(&envelope.event_type.as_str()) {
        return None;
    }
    let Some(Payload::DomainEvent(d)) = &envelope.payload else {
        return None;
    };
    <OrderCarrier as prost::Message>::decode(d.body.as_slice())
        .ok()?
        .order
}

/// The channels a subject request may arrive through.
pub const REQUEST_CHANNELS: &[&str] = &[
    "email",
    "web",
    "app",
    "post",
    "phone",
    "in_person",
    "api",
    "other",
];

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
        check_text(&f.field("reason"), &self.reason, limits)?;
        check_personal(&f.field("personal"), &self.personal, limits)
    }
}

/// A consent event's `purposes`: ids, within the list limit, and at least one when `required`.
fn check_purposes(
    f: &Root,
    purposes: &[String],
    required: bool,
    limits: &Limits,
) -> Result<(), Rejection> {
    if required && purposes.is_empty() {
        return Err(Rejection::missing(f.field("purposes")));
    }
    check_list_len(&f.field("purposes"), purposes.len(), limits)?;
    for purpose in purposes {
        check_id(&f.field("purposes"), purpose, limits)?;
    }
    Ok(())
}

impl Contract for v1::ConsentGranted {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_purposes(f, &self.purposes, true, limits)?;
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
        check_purposes(f, &self.purposes, false, limits)?;
        check_text(&f.field("method"), &self.method, limits)?;
        check_personal(&f.field("personal"), &self.personal, limits)
    }
}

impl Contract for v1::ConsentRefused {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_purposes(f, &self.purposes, true, limits)?;
        if !self.policy_version.is_empty() {
            check_id(&f.field("policy_version"), &self.policy_version, limits)?;
        }
        check_enum::<v1::ConsentMethod>(&f.field("method"), self.method)?;
        check_enum::<v1::ExpressedBy>(&f.field("expressed_by"), self.expressed_by)
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
        check_text(&f.field("location"), &self.location, limits)?;
        check_personal(&f.field("personal"), &self.personal, limits)
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
        // A state body's disclosure without its request reference is recorded and flagged by
        // disclosure-log (a bad disclosure is evidence), not refused here.
        check_enum::<v1::LegalBasis>(&f.field("legal_basis"), self.legal_basis)?;
        check_text(&f.field("request_ref"), &self.request_ref, limits)?;
        for (name, code) in [
            ("purpose", &self.purpose),
            ("transfer_mechanism", &self.transfer_mechanism),
            ("cohort_ref", &self.cohort_ref),
        ] {
            if !code.is_empty() {
                check_id(&f.field(name), code, limits)?;
            }
        }
        check_id(&f.field("system"), &self.system, limits)?;
        check_personal(&f.field("personal"), &self.personal, limits)
    }
}

impl Contract for v1::DataErased {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_id(&f.field("system"), &self.system, limits)?;
        check_id(&f.field("category"), &self.category, limits)?;
        if !self.order_id.is_empty() {
            check_id(&f.field("order_id"), &self.order_id, limits)?;
        }
        check_text(&f.field("kept_reason"), &self.kept_reason, limits)?;
        check_personal(&f.field("personal"), &self.personal, limits)
    }
}

impl Contract for v1::RequestReceived {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_enum::<v1::RequestType>(&f.field("request_type"), self.request_type)?;
        if !self.channel.is_empty() && !REQUEST_CHANNELS.contains(&self.channel.as_str()) {
            return Err(Rejection::invalid(
                f.field("channel"),
                format!(
                    "channel must be one of {} (the value is not repeated here)",
                    REQUEST_CHANNELS.join(", ")
                ),
            ));
        }
        check_personal(&f.field("personal"), &self.personal, limits)
    }
}

impl Contract for v1::OrderConfirmed {
    fn check(&self, f: &Root, limits: &Limits) -> Result<(), Rejection> {
        check_id(&f.field("order_id"), &self.order_id, limits)?;
        check_id(&f.field("system"), &self.system, limits)?;
        check_enum::<v1::OrderOutcome>(&f.field("outcome"), self.outcome)?;
        let explained = matches!(
            self.outcome(),
            v1::OrderOutcome::Refused | v1::OrderOutcome::Failed
        );
        if explained && self.reason.is_empty() {
            return Err(Rejection::missing(f.field("reason")));
        }
        if !self.reason.is_empty() {
            check_id(&f.field("reason"), &self.reason, limits)?;
        }
        Ok(())
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
    fn every_domain_body_is_in_the_descriptor_set() {
        for d in DOMAIN_EVENTS {
            let name = format!("privacy.v1.{}", d.body);
            assert!(crate::encoded_to_json(&name, &[]).is_ok(), "{name}");
        }
    }

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
    fn cross_service_events_name_their_catalogue_publisher() {
        for (event, publisher, consumers) in CROSS_SERVICE {
            match domain_event(event) {
                Some(d) => assert_eq!(d.publisher, *publisher, "{event}"),
                None => assert!(
                    event.parse::<EventType>().is_ok(),
                    "{event} is not catalogued"
                ),
            }
            assert!(
                !consumers.contains(publisher),
                "{event}: a service reacts to itself"
            );
        }
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
        assert_eq!(
            EventType::filters_for("subject-requests"),
            ["*.request.*", "*.order.*"]
        );
        assert!(EventType::filters_for("nobody").is_empty());
    }

    /// A valid event of each type, to change one field of.
    fn valid(t: EventType) -> v1::Envelope {
        use v1::*;
        let payload = match Payload::default_for(t) {
            Payload::ConsentGranted(_) => Payload::ConsentGranted(ConsentGranted {
                purposes: vec!["marketing".into()],
                policy_version: "v1".into(),
                method: ConsentMethod::UntickedCheckbox as i32,
                expressed_by: ExpressedBy::Subject as i32,
                ..Default::default()
            }),
            Payload::ConsentRefused(_) => Payload::ConsentRefused(ConsentRefused {
                purposes: vec!["marketing".into()],
                policy_version: "v1".into(),
                method: ConsentMethod::UntickedCheckbox as i32,
                expressed_by: ExpressedBy::Subject as i32,
            }),
            Payload::ConsentSignal(_) => Payload::ConsentSignal(ConsentSignal {
                signal: "gpc".into(),
                value: true,
            }),
            Payload::DataCollected(_) => Payload::DataCollected(DataCollected {
                category: "contact".into(),
                system: "crm".into(),
                ..Default::default()
            }),
            Payload::DataDisclosed(_) => Payload::DataDisclosed(DataDisclosed {
                recipient: "Acme Logistics".into(),
                recipient_role: RecipientRole::Processor as i32,
                country: "DE".into(),
                categories: vec!["email".into()],
                legal_basis: LegalBasis::Consent as i32,
                system: "crm".into(),
                ..Default::default()
            }),
            Payload::DataErased(_) => Payload::DataErased(DataErased {
                category: "contact".into(),
                system: "crm".into(),
                ..Default::default()
            }),
            Payload::RequestReceived(_) => Payload::RequestReceived(RequestReceived {
                request_type: RequestType::Access as i32,
                ..Default::default()
            }),
            Payload::OrderConfirmed(_) => Payload::OrderConfirmed(OrderConfirmed {
                order_id: "0190f5a4-8a3c-7cc0-9d3e-4c1d2e3f4a5b:crm".into(),
                system: "crm".into(),
                outcome: OrderOutcome::Done as i32,
                reason: String::new(),
            }),
            other => other,
        };
        Envelope {
            event_id: "0190f5a4-8a3c-7cc0-9d3e-4c1d2e3f4a5b".into(),
            event_type: t.as_str().into(),
            schema_version: 1,
            tenant: "acme".into(),
            subject_id: "u-1".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn check(env: &v1::Envelope) -> Result<EventType, Rejection> {
        crate::validate_envelope(env, None, std::time::SystemTime::now(), &Limits::default())
    }

    /// Every string a backend can publish, in the envelope or in any payload, either rests
    /// sealed (a free-text field) or must be a code, a date or a country: free text such as a
    /// person's name is refused anywhere else, naming the field. A string field added to the
    /// proto is covered by this walk without being listed.
    #[test]
    fn no_string_field_keeps_free_text_in_the_clear() {
        use prost::Message;
        use prost_reflect::{DynamicMessage, Value};

        const NAME: &str = "Ann Example, 12 Main St";
        let pool = prost_reflect::DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        let envelope_desc = pool.get_message_by_name("privacy.v1.Envelope").unwrap();
        let mut walked = 0;
        for t in EventType::ALL {
            assert!(check(&valid(*t)).is_ok(), "{t}: {:?}", check(&valid(*t)));
            let payload_field = envelope_desc.get_field_by_name(t.payload_field()).unwrap();
            let prost_reflect::Kind::Message(payload_desc) = payload_field.kind() else {
                unreachable!()
            };
            let mut paths: Vec<(Option<String>, String)> = envelope_desc
                .fields()
                .filter(|f| f.kind() == prost_reflect::Kind::String)
                .map(|f| (None, f.name().to_owned()))
                .collect();
            paths.extend(
                payload_desc
                    .fields()
                    .filter(|f| f.kind() == prost_reflect::Kind::String)
                    .map(|f| (Some(t.payload_field().to_owned()), f.name().to_owned())),
            );
            for (payload, name) in paths {
                walked += 1;
                let mut env = DynamicMessage::decode(
                    envelope_desc.clone(),
                    valid(*t).encode_to_vec().as_slice(),
                )
                .unwrap();
                let (target, field_desc) = match &payload {
                    None => (None, envelope_desc.get_field_by_name(&name).unwrap()),
                    Some(p) => (
                        Some(p.clone()),
                        payload_desc.get_field_by_name(&name).unwrap(),
                    ),
                };
                let value = if field_desc.is_list() {
                    Value::List(vec![Value::String(NAME.into())])
                } else {
                    Value::String(NAME.into())
                };
                match &target {
                    None => env.set_field(&field_desc, value),
                    Some(p) => {
                        let mut inner = env
                            .get_field_by_name(p)
                            .unwrap()
                            .as_message()
                            .unwrap()
                            .clone();
                        inner.set_field(&field_desc, value);
                        if name == "recipient" {
                            inner.set_field_by_name("recipient_natural_person", Value::Bool(true));
                        }
                        env.set_field_by_name(p, Value::Message(inner));
                    }
                }
                let mut env: v1::Envelope = env.transcode_to().unwrap();
                let path = match &payload {
                    Some(p) => format!("{p}.{name}"),
                    None => name.clone(),
                };
                let sealed = payload.is_some()
                    && env
                        .payload
                        .as_mut()
                        .and_then(free_text_of)
                        .is_some_and(|f| f.fields.iter().any(|(n, _)| *n == name));
                if name == "birth_date" {
                    // A date, or refused; a date rests sealed (asserted below with a date).
                    assert_eq!(check(&env).unwrap_err().field, path);
                    let Some(Payload::SubjectRegistered(r)) = &mut env.payload else {
                        unreachable!()
                    };
                    r.birth_date = "2011-07-23".into();
                }
                if sealed {
                    assert!(check(&env).is_ok(), "{path}: {:?}", check(&env));
                    let payload = env.payload.as_mut().unwrap();
                    move_free_text(payload);
                    let text = format!("{payload:?}");
                    assert!(
                        !text.contains(&format!("{name}: \""))
                            || text.contains(&format!("{name}: \"\"")),
                        "{path} is left in its field: {text}"
                    );
                } else {
                    let refused = check(&env).expect_err(&path);
                    assert_eq!(refused.field, path, "{refused}");
                    assert!(!refused.reason.contains("Ann"), "{refused}");
                }
            }
        }
        assert!(walked > 30, "walked {walked} fields");
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
