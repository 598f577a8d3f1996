//! The per-subject timeline projection: for each (tenant, subject), every stored event's type,
//! time and source in log order.
//!
//! Entries are kept in chunks of at most [`CHUNK`] entries and about [`CHUNK_BYTES`] bytes, so
//! that folding an event rewrites one small value, a rebuild writes each chunk once per commit
//! instead of one key per event, and no value grows past what sled keeps in its synced log
//! (see the event store's power-safety note). Keys:
//! `tenant 0x00 subject 0x00 chunk(u32 BE)` → `count(u16 BE)` + length-prefixed `TimelineEntry`s.

use privacy_event_store::{Projection, RecordedEvent, StoreError, View, ViewWriter};
use privacy_proto::EnvelopeHeadRef;
use privacy_proto::v1::TimelineEntry;
use prost::Message;

/// Name of the timeline projection.
pub const SUBJECT_TIMELINE: &str = "subject_timeline";
/// Entries per stored chunk.
pub const CHUNK: u32 = 64;
/// A chunk takes no more entries once it holds this many bytes (an entry is at most ~4.3 KiB).
pub const CHUNK_BYTES: usize = 16 * 1024;

/// Folds every event that names a subject into that subject's timeline.
pub struct SubjectTimeline;

fn subject_prefix(tenant: &str, subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + subject.len() + 7);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k
}

impl Projection for SubjectTimeline {
    fn name(&self) -> &'static str {
        SUBJECT_TIMELINE
    }

    fn version(&self) -> u32 {
        4
    }

    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        let env = EnvelopeHeadRef::parse(&event.data).map_err(|e| StoreError::Corrupt {
            seq: event.seq,
            reason: format!("stored data is not an envelope: {e}"),
        })?;
        if env.subject_id.is_empty() {
            return Ok(());
        }
        let prefix = subject_prefix(env.tenant, env.subject_id);
        // Append to the subject's last chunk, or open the next one when it is full.
        view.append_chunked(&prefix, |v| {
            let chunk = v.get_or_insert_with(|| vec![0, 0]);
            let count = u16::from_be_bytes([chunk[0], chunk[1]]);
            if count as u32 >= CHUNK || chunk.len() >= CHUNK_BYTES {
                return false;
            }
            chunk[..2].copy_from_slice(&(count + 1).to_be_bytes());
            encode_entry(event.seq, &env, chunk);
            true
        })
    }
}

/// Appends the length-delimited `TimelineEntry` of an event to `buf`: the bytes prost writes for
/// `TimelineEntry { seq, event_type, occurred_at, source }` (a test holds them equal), without
/// copying the strings first. Fields at their default are left out, as proto3 does.
fn encode_entry(seq: u64, env: &EnvelopeHeadRef<'_>, buf: &mut Vec<u8>) {
    // Field keys: (number << 3) | wire type (0 varint, 2 length-delimited); all one byte here.
    const SEQ: u8 = 1 << 3;
    const EVENT_TYPE: u8 = (2 << 3) | 2;
    const OCCURRED_AT: u8 = (3 << 3) | 2;
    const SOURCE: u8 = (4 << 3) | 2;
    let delimited_len = |len: usize| 1 + varint_len(len as u64) + len;
    let text_len = |s: &str| {
        if s.is_empty() {
            0
        } else {
            delimited_len(s.len())
        }
    };
    let seq_len = if seq == 0 { 0 } else { 1 + varint_len(seq) };
    let at_len = env
        .occurred_at
        .as_ref()
        .map_or(0, |t| delimited_len(t.encoded_len()));
    let len = seq_len + text_len(env.event_type) + at_len + text_len(env.source);
    put_varint(len as u64, buf);
    if seq != 0 {
        buf.push(SEQ);
        put_varint(seq, buf);
    }
    let text = |key: u8, s: &str, buf: &mut Vec<u8>| {
        if !s.is_empty() {
            buf.push(key);
            put_varint(s.len() as u64, buf);
            buf.extend_from_slice(s.as_bytes());
        }
    };
    text(EVENT_TYPE, env.event_type, buf);
    if let Some(at) = &env.occurred_at {
        buf.push(OCCURRED_AT);
        put_varint(at.encoded_len() as u64, buf);
        at.encode(buf).expect("a Vec grows as needed");
    }
    text(SOURCE, env.source, buf);
}

fn put_varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A subject's timeline, in log order.
pub fn read_timeline(
    view: &View,
    tenant: &str,
    subject: &str,
) -> Result<Vec<TimelineEntry>, StoreError> {
    let prefix = subject_prefix(tenant, subject);
    let mut entries = Vec::new();
    for (_, chunk) in view.scan_prefix(&prefix)? {
        let mut buf = chunk.get(2..).unwrap_or_default();
        while !buf.is_empty() {
            let entry = TimelineEntry::decode_length_delimited(&mut buf).map_err(|e| {
                StoreError::Corrupt {
                    seq: 0,
                    reason: format!("timeline chunk does not decode: {e}"),
                }
            })?;
            entries.push(entry);
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use privacy_event_store::{EventStore, ExpectedVersion, NewEvent, Projector, StoreConfig};
    use privacy_proto::v1::Envelope;

    use super::*;

    #[test]
    fn entries_are_encoded_as_prost_encodes_them() {
        let at = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        for (seq, event_type, occurred_at, source) in [
            (1, "consent.granted", Some(at), "crm"),
            (0, "", None, ""),
            (u64::MAX, "x", Some(prost_types::Timestamp::default()), ""),
            (300, "", Some(at), &*"s".repeat(200)),
            (127, "t", None, &*"s".repeat(20_000)),
            (128, "", None, "x"),
        ] {
            let head = EnvelopeHeadRef {
                event_type,
                occurred_at,
                source,
                ..Default::default()
            };
            let mut ours = vec![9];
            encode_entry(seq, &head, &mut ours);
            let mut theirs = vec![9];
            TimelineEntry {
                seq,
                event_type: event_type.into(),
                occurred_at,
                source: source.into(),
            }
            .encode_length_delimited(&mut theirs)
            .unwrap();
            assert_eq!(ours, theirs, "{seq} {event_type:?} {occurred_at:?}");
        }
    }

    #[tokio::test]
    async fn timelines_span_chunks_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::open(dir.path(), StoreConfig::default()).unwrap();
        let projector = Projector::open(&store, vec![Arc::new(SubjectTimeline)]).unwrap();
        let n = CHUNK as usize * 2 + 5;
        for i in 0..n {
            let subject = if i % 2 == 0 { "u-1" } else { "u-2" };
            let env = Envelope {
                event_type: format!("t{i}"),
                tenant: "acme".into(),
                subject_id: subject.into(),
                ..Default::default()
            };
            let e = NewEvent::new(
                "acme",
                format!("id-{i}"),
                format!("acme/{subject}"),
                env.event_type.clone(),
                env.encode_to_vec(),
            );
            store.append(vec![e], ExpectedVersion::Any).await.unwrap();
            if i == 70 {
                projector.catch_up().await.unwrap();
            }
        }
        projector.catch_up().await.unwrap();
        let view = projector.view(SUBJECT_TIMELINE).unwrap();
        let u1 = read_timeline(&view, "acme", "u-1").unwrap();
        let want: Vec<String> = (0..n).step_by(2).map(|i| format!("t{i}")).collect();
        assert_eq!(
            u1.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>(),
            want
        );
        assert!(u1.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(read_timeline(&view, "acme", "nobody").unwrap().is_empty());
    }

    #[tokio::test]
    async fn chunks_stay_small_whatever_the_entries_carry() {
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::open(dir.path(), StoreConfig::default()).unwrap();
        let projector = Projector::open(&store, vec![Arc::new(SubjectTimeline)]).unwrap();
        let events: Vec<NewEvent> = (0..100)
            .map(|i| {
                let env = Envelope {
                    event_type: "consent.granted".into(),
                    tenant: "acme".into(),
                    subject_id: "u-1".into(),
                    source: "s".repeat(4096),
                    ..Default::default()
                };
                NewEvent::new(
                    "acme",
                    format!("id-{i}"),
                    "acme/u-1",
                    env.event_type.clone(),
                    env.encode_to_vec(),
                )
            })
            .collect();
        store.append(events, ExpectedVersion::Any).await.unwrap();
        projector.catch_up().await.unwrap();
        let view = projector.view(SUBJECT_TIMELINE).unwrap();
        let prefix = subject_prefix("acme", "u-1");
        let chunks = view.scan_prefix(&prefix).unwrap();
        assert!(chunks.len() > 1);
        for (_, chunk) in &chunks {
            assert!(
                chunk.len() < CHUNK_BYTES + 4400,
                "a chunk of {} bytes",
                chunk.len()
            );
        }
        assert_eq!(read_timeline(&view, "acme", "u-1").unwrap().len(), 100);
    }
}
