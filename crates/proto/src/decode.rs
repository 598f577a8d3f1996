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

/// [`EnvelopeHead`] borrowed from the encoded bytes: the same fields and the same decoding
/// rules (last occurrence wins, a nested timestamp merges, strings must be UTF-8, unknown fields
/// are skipped), without allocating. For folds that read every event of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvelopeHeadRef<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub tenant: &'a str,
    pub subject_id: &'a str,
    pub occurred_at: Option<prost_types::Timestamp>,
    pub source: &'a str,
}

impl<'a> EnvelopeHeadRef<'a> {
    /// Reads the head of an encoded `privacy.v1.Envelope`; an error where
    /// `EnvelopeHead::decode` would fail.
    pub fn parse(bytes: &'a [u8]) -> Result<EnvelopeHeadRef<'a>, DecodeError> {
        let mut head = EnvelopeHeadRef::default();
        let mut buf = bytes;
        while !buf.is_empty() {
            let (field, wire) = wire_key(&mut buf)?;
            let text = match field {
                1 => &mut head.event_id,
                2 => &mut head.event_type,
                4 => &mut head.tenant,
                5 => &mut head.subject_id,
                8 => &mut head.source,
                6 => {
                    let nested = length_delimited(&mut buf, wire)?;
                    merge_timestamp(
                        head.occurred_at.get_or_insert_with(Default::default),
                        nested,
                    )?;
                    continue;
                }
                _ => {
                    skip_wire(&mut buf, field, wire, 0)?;
                    continue;
                }
            };
            let raw = length_delimited(&mut buf, wire)?;
            *text = std::str::from_utf8(raw).map_err(|_| {
                DecodeError::Protobuf("invalid string value: data is not UTF-8 encoded".into())
            })?;
        }
        Ok(head)
    }
}

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const START_GROUP: u32 = 3;
const END_GROUP: u32 = 4;
const FIXED32: u32 = 5;
/// How deeply unknown groups may nest (prost's own recursion limit).
const GROUP_DEPTH: u32 = 100;

/// A base-128 varint, read as prost reads one: at most ten bytes, the tenth at most 1.
#[inline]
fn varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    // Keys, lengths and small numbers take one byte.
    if let Some((&b, rest)) = buf.split_first()
        && b < 0x80
    {
        *buf = rest;
        return Ok(u64::from(b));
    }
    varint_long(buf)
}

#[inline(never)]
fn varint_long(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().take(10).enumerate() {
        if i == 9 && b > 1 {
            break;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    Err(DecodeError::Protobuf("invalid varint".into()))
}

/// A field's number and wire type.
#[inline]
fn wire_key(buf: &mut &[u8]) -> Result<(u32, u32), DecodeError> {
    let key = varint(buf)?;
    if key > u64::from(u32::MAX) {
        return Err(DecodeError::Protobuf(format!("invalid key value: {key}")));
    }
    let (field, wire) = ((key >> 3) as u32, (key & 7) as u32);
    if wire > FIXED32 {
        return Err(DecodeError::Protobuf(format!(
            "invalid wire type value: {wire}"
        )));
    }
    if field == 0 {
        return Err(DecodeError::Protobuf("invalid tag value: 0".into()));
    }
    Ok((field, wire))
}

fn take<'a>(buf: &mut &'a [u8], n: u64) -> Result<&'a [u8], DecodeError> {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > buf.len() {
        return Err(DecodeError::Protobuf("buffer underflow".into()));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn length_delimited<'a>(buf: &mut &'a [u8], wire: u32) -> Result<&'a [u8], DecodeError> {
    if wire != LEN {
        return Err(DecodeError::Protobuf(format!(
            "invalid wire type: {wire} (expected {LEN})"
        )));
    }
    let len = varint(buf)?;
    take(buf, len)
}

/// Skips one field's value (a group up to its end).
fn skip_wire(buf: &mut &[u8], field: u32, wire: u32, depth: u32) -> Result<(), DecodeError> {
    match wire {
        VARINT => {
            varint(buf)?;
        }
        FIXED64 => {
            take(buf, 8)?;
        }
        LEN => {
            length_delimited(buf, wire)?;
        }
        FIXED32 => {
            take(buf, 4)?;
        }
        START_GROUP => {
            if depth >= GROUP_DEPTH {
                return Err(DecodeError::Protobuf("recursion limit reached".into()));
            }
            loop {
                if buf.is_empty() {
                    return Err(DecodeError::Protobuf("buffer underflow".into()));
                }
                let (inner, inner_wire) = wire_key(buf)?;
                if inner_wire == END_GROUP {
                    if inner != field {
                        return Err(DecodeError::Protobuf("unexpected end group tag".into()));
                    }
                    break;
                }
                skip_wire(buf, inner, inner_wire, depth + 1)?;
            }
        }
        _ => return Err(DecodeError::Protobuf("unexpected end group tag".into())),
    }
    Ok(())
}

/// Merges an encoded `google.protobuf.Timestamp` into `ts`.
fn merge_timestamp(ts: &mut prost_types::Timestamp, mut buf: &[u8]) -> Result<(), DecodeError> {
    while !buf.is_empty() {
        let (field, wire) = wire_key(&mut buf)?;
        match field {
            1 | 2 => {
                if wire != VARINT {
                    return Err(DecodeError::Protobuf(format!(
                        "invalid wire type: {wire} (expected {VARINT})"
                    )));
                }
                let v = varint(&mut buf)?;
                if field == 1 {
                    ts.seconds = v as i64;
                } else {
                    ts.nanos = v as i32;
                }
            }
            _ => skip_wire(&mut buf, field, wire, 0)?,
        }
    }
    Ok(())
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

    /// The borrowed head and prost's agree on every input: whole envelopes, envelopes with
    /// fields repeated, and every truncation and one-byte corruption of them.
    #[test]
    fn the_borrowed_head_reads_what_prost_reads() {
        let full = Envelope {
            event_id: "0190f5a4-8a3c-7cc0-9d3e-4c1d2e3f4a5b".into(),
            event_type: "consent.granted".into(),
            schema_version: 1,
            tenant: "acme".into(),
            subject_id: "u-1".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: -5,
            }),
            source: "crm".into(),
            payload: Some(Payload::ConsentGranted(ConsentGranted {
                purposes: vec!["marketing".into()],
                policy_version: "v1".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut repeated = full.encode_to_vec();
        repeated.extend(
            Envelope {
                tenant: "other".into(),
                occurred_at: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 7,
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        // An unknown group (field 99) and an unknown fixed64 and fixed32.
        let mut unknown = vec![0x9b, 0x06, 0x08, 0x01, 0x9c, 0x06, 0x99, 0x06];
        unknown.extend([0; 8]);
        unknown.extend([0x9d, 0x06, 0, 0, 0, 0]);
        unknown.extend(full.encode_to_vec());
        // Varints of ten bytes (the tenth 1, then 2), eleven, and cut short.
        let long = |last: u8, n: usize| {
            let mut c = vec![0x18];
            c.extend(std::iter::repeat_n(0xff, n - 1));
            c.push(last);
            c
        };
        let mut cases = vec![
            long(0x01, 10),
            long(0x02, 10),
            long(0x01, 11),
            vec![0x18, 0xff],
            Vec::new(),
            full.encode_to_vec(),
            Envelope::default().encode_to_vec(),
            repeated,
            unknown,
        ];
        let bases = cases.clone();
        for base in &bases {
            for cut in 0..base.len() {
                cases.push(base[..cut].to_vec());
            }
            for at in 0..base.len() {
                for byte in [0x00, 0x04, 0x0c, 0x80, 0xff] {
                    let mut c = base.clone();
                    c[at] = byte;
                    cases.push(c);
                }
            }
        }
        for case in &cases {
            let theirs = EnvelopeHead::decode(case.as_slice());
            let ours = EnvelopeHeadRef::parse(case);
            match (theirs, ours) {
                (Ok(h), Ok(r)) => assert_eq!(
                    (
                        h.event_id.as_str(),
                        h.event_type.as_str(),
                        h.tenant.as_str(),
                        h.subject_id.as_str(),
                        h.occurred_at,
                        h.source.as_str()
                    ),
                    (
                        r.event_id,
                        r.event_type,
                        r.tenant,
                        r.subject_id,
                        r.occurred_at,
                        r.source
                    ),
                    "{case:02x?}"
                ),
                (Err(_), Err(_)) => {}
                (theirs, ours) => panic!("{case:02x?}: prost {theirs:?}, borrowed {ours:?}"),
            }
        }
    }

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
