//! The catalogue of user event types: their dotted names, NATS subjects and payload cases.

use std::fmt;
use std::str::FromStr;

use crate::v1::envelope::Payload;

/// A user event a backend may publish on `privacy.in.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    SubjectRegistered,
    SubjectUpdated,
    SubjectDeactivated,
    ConsentGranted,
    ConsentWithdrawn,
    ConsentSignal,
    DataCollected,
    DataDisclosed,
    DataErased,
    RequestReceived,
}

impl EventType {
    /// Every user event type, in catalogue order.
    pub const ALL: [EventType; 10] = [
        EventType::SubjectRegistered,
        EventType::SubjectUpdated,
        EventType::SubjectDeactivated,
        EventType::ConsentGranted,
        EventType::ConsentWithdrawn,
        EventType::ConsentSignal,
        EventType::DataCollected,
        EventType::DataDisclosed,
        EventType::DataErased,
        EventType::RequestReceived,
    ];

    /// The dotted name used in `Envelope.event_type` and in the subject.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::SubjectRegistered => "subject.registered",
            EventType::SubjectUpdated => "subject.updated",
            EventType::SubjectDeactivated => "subject.deactivated",
            EventType::ConsentGranted => "consent.granted",
            EventType::ConsentWithdrawn => "consent.withdrawn",
            EventType::ConsentSignal => "consent.signal",
            EventType::DataCollected => "data.collected",
            EventType::DataDisclosed => "data.disclosed",
            EventType::DataErased => "data.erased",
            EventType::RequestReceived => "request.received",
        }
    }

    /// The event type a payload case belongs to (`None` for a service's domain event).
    pub fn of_payload(payload: &Payload) -> Option<EventType> {
        Some(match payload {
            Payload::SubjectRegistered(_) => EventType::SubjectRegistered,
            Payload::SubjectUpdated(_) => EventType::SubjectUpdated,
            Payload::SubjectDeactivated(_) => EventType::SubjectDeactivated,
            Payload::ConsentGranted(_) => EventType::ConsentGranted,
            Payload::ConsentWithdrawn(_) => EventType::ConsentWithdrawn,
            Payload::ConsentSignal(_) => EventType::ConsentSignal,
            Payload::DataCollected(_) => EventType::DataCollected,
            Payload::DataDisclosed(_) => EventType::DataDisclosed,
            Payload::DataErased(_) => EventType::DataErased,
            Payload::RequestReceived(_) => EventType::RequestReceived,
            Payload::DomainEvent(_) => return None,
        })
    }

    /// The payload's field name in the proto3 JSON mapping (for error messages).
    pub const fn payload_field(self) -> &'static str {
        match self {
            EventType::SubjectRegistered => "subject_registered",
            EventType::SubjectUpdated => "subject_updated",
            EventType::SubjectDeactivated => "subject_deactivated",
            EventType::ConsentGranted => "consent_granted",
            EventType::ConsentWithdrawn => "consent_withdrawn",
            EventType::ConsentSignal => "consent_signal",
            EventType::DataCollected => "data_collected",
            EventType::DataDisclosed => "data_disclosed",
            EventType::DataErased => "data_erased",
            EventType::RequestReceived => "request_received",
        }
    }

    /// The NATS subject a backend publishes this event on, under `prefix` (normally `privacy`).
    pub fn subject(self, prefix: &str) -> String {
        format!("{prefix}.in.{}", self.as_str())
    }
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
            .into_iter()
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
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
        }
        assert_eq!(
            EventType::ConsentGranted.subject("privacy"),
            "privacy.in.consent.granted"
        );
        assert!("consent.revoked".parse::<EventType>().is_err());
    }
}
