//! Turns the bytes of a NATS message into an [`Envelope`]: protobuf by default, the proto3 JSON
//! mapping when the message says `Content-Type: application/json`.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::FILE_DESCRIPTOR_SET;
use crate::v1::Envelope;

/// How a message body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// The encoding a `Content-Type` header names; protobuf when absent or anything else.
    pub fn from_content_type(content_type: Option<&str>) -> Encoding {
        match content_type {
            Some(ct)
                if ct
                    .split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")) =>
            {
                Encoding::Json
            }
            _ => Encoding::Protobuf,
        }
    }
}

/// The bytes are not an envelope in the encoding they claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a protobuf privacy.v1.Envelope: {0}")]
    Protobuf(String),
    #[error("not a JSON privacy.v1.Envelope: {0}")]
    Json(String),
}

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("the embedded descriptor set decodes")
});

/// Decodes `bytes` as an envelope in `encoding`.
pub fn decode_envelope(bytes: &[u8], encoding: Encoding) -> Result<Envelope, DecodeError> {
    match encoding {
        Encoding::Protobuf => {
            Envelope::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))
        }
        Encoding::Json => {
            let desc = POOL
                .get_message_by_name("privacy.v1.Envelope")
                .expect("privacy.v1.Envelope is in the descriptor set");
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let dynamic = DynamicMessage::deserialize(desc, &mut de)
                .map_err(|e| DecodeError::Json(e.to_string()))?;
            de.end().map_err(|e| DecodeError::Json(e.to_string()))?;
            dynamic
                .transcode_to::<Envelope>()
                .map_err(|e| DecodeError::Json(e.to_string()))
        }
    }
}

/// Encodes an envelope in the proto3 JSON mapping (what a plain NATS client may publish).
/// Fails for what JSON cannot express, e.g. a timestamp outside years 1–9999.
pub fn envelope_to_json(envelope: &Envelope) -> Result<Vec<u8>, DecodeError> {
    let desc = POOL
        .get_message_by_name("privacy.v1.Envelope")
        .expect("privacy.v1.Envelope is in the descriptor set");
    let mut dynamic = DynamicMessage::new(desc);
    dynamic
        .transcode_from(envelope)
        .map_err(|e| DecodeError::Json(e.to_string()))?;
    serde_json::to_vec(&dynamic).map_err(|e| DecodeError::Json(e.to_string()))
}

/// A message of the contract (`full_name`, e.g. `privacy.v1.ConsentHistoryEntry`) in the proto3
/// JSON mapping, as a JSON value.
pub fn message_to_json<M: Message>(
    full_name: &str,
    message: &M,
) -> Result<serde_json::Value, DecodeError> {
    encoded_to_json(full_name, &message.encode_to_vec())
}

/// The encoded bytes of a message of the contract (`full_name`) as proto3 JSON — e.g. a
/// domain event's body, whose type the catalogue names ([`crate::catalogue::domain_event`]).
pub fn encoded_to_json(full_name: &str, bytes: &[u8]) -> Result<serde_json::Value, DecodeError> {
    let desc = POOL
        .get_message_by_name(full_name)
        .ok_or_else(|| DecodeError::Json(format!("{full_name} is not in the descriptor set")))?;
    let dynamic =
        DynamicMessage::decode(desc, bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    serde_json::to_value(&dynamic).map_err(|e| DecodeError::Json(e.to_string()))
}

/// The envelope without its payload: what an index over every event (the subject timeline)
/// needs. Decoding it skips the payload's bytes. Its tags are those of `privacy.v1.Envelope`; a
/// test checks them against the descriptor, so the two cannot drift apart.
#[derive(Clone, PartialEq, Message)]
pub struct EnvelopeHead {
    #[prost(string, tag = "1")]
    pub event_id: String,
    #[prost(string, tag = "2")]
    pub event_type: String,
    #[prost(string, tag = "4")]
    pub tenant: String,
    #[prost(string, tag = "5")]
    pub subject_id: String,
    #[prost(message, optional, tag = "6")]
    pub occurred_at: Option<prost_types::Timestamp>,
    #[prost(string, tag = "8")]
    pub source: String,
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_envelope_head_has_the_envelopes_tags() {
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
        let envelope = pool.get_message_by_name("privacy.v1.Envelope").unwrap();
        for (name, tag) in [
            ("event_id", 1),
            ("event_type", 2),
            ("tenant", 4),
            ("subject_id", 5),
            ("occurred_at", 6),
            ("source", 8),
        ] {
            assert_eq!(
                envelope.get_field_by_name(name).unwrap().number(),
                tag,
                "{name}"
            );
        }
        let full = Envelope {
            event_id: "e".into(),
            event_type: "consent.granted".into(),
            tenant: "t".into(),
            subject_id: "s".into(),
            source: "crm".into(),
            ..Default::default()
        };
        let head = EnvelopeHead::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            (
                head.event_id.as_str(),
                head.event_type.as_str(),
                head.tenant.as_str()
            ),
            ("e", "consent.granted", "t")
        );
        assert_eq!(
            (head.subject_id.as_str(), head.source.as_str()),
            ("s", "crm")
        );
    }
    use super::*;
    use crate::v1::{ConsentGranted, envelope::Payload};

    #[test]
    fn json_and_protobuf_decode_to_the_same_envelope() {
        let env = Envelope {
            event_id: "0190f5a4-8a3c-7cc0-9d3e-4c1d2e3f4a5b".into(),
            event_type: "consent.granted".into(),
            schema_version: 1,
            tenant: "acme".into(),
            subject_id: "u-1".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            payload: Some(Payload::ConsentGranted(ConsentGranted {
                purposes: vec!["marketing".into()],
                policy_version: "v3".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let json = envelope_to_json(&env).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"eventType\":\"consent.granted\""), "{text}");
        assert_eq!(decode_envelope(&json, Encoding::Json).unwrap(), env);
        assert_eq!(
            decode_envelope(&env.encode_to_vec(), Encoding::Protobuf).unwrap(),
            env
        );
    }

    #[test]
    fn json_accepts_original_field_names_and_rejects_unknown_fields() {
        let ok = br#"{"event_id":"x","event_type":"consent.withdrawn","consentWithdrawn":{}}"#;
        let env = decode_envelope(ok, Encoding::Json).unwrap();
        assert_eq!(env.event_type, "consent.withdrawn");
        let bad = br#"{"eventId":"x","colour":"red"}"#;
        let err = decode_envelope(bad, Encoding::Json).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn content_type_selects_the_encoding() {
        assert_eq!(
            Encoding::from_content_type(Some("application/json; charset=utf-8")),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type(Some("application/protobuf")),
            Encoding::Protobuf
        );
        assert_eq!(Encoding::from_content_type(None), Encoding::Protobuf);
    }
}
