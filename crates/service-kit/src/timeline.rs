//! The per-subject timeline projection: for each (tenant, subject), every stored event's type,
//! time and source in log order.
//!
//! Entries are kept in chunks of at most [`CHUNK`] entries and about [`CHUNK_BYTES`] bytes, so
//! that folding an event rewrites one small value, a rebuild writes each chunk once per commit
//! instead of one key per event, and no value grows past what sled keeps in its synced log
//! (see the event store's power-safety note). Keys:
//! `tenant 0x00 subject 0x00 chunk(u32 BE)` → `count(u16 BE)` + length-prefixed `TimelineEntry`s.

use privacy_event_store::{Projection, RecordedEvent, StoreError, View, ViewWriter};
use privacy_proto::EnvelopeHead;
use privacy_proto::v1::TimelineEntry;
use prost::Message;

use crate::projection::decode_stored;

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
        let env: EnvelopeHead = decode_stored(event)?;
        if env.subject_id.is_empty() {
            return Ok(());
        }
        let prefix = subject_prefix(&env.tenant, &env.subject_id);
        let entry = TimelineEntry {
            seq: event.seq,
            event_type: env.event_type,
            occurred_at: env.occurred_at,
            source: env.source,
        };
        // Append to the subject's last chunk, or open the next one when it is full.
        view.append_chunked(&prefix, |v| {
            let chunk = v.get_or_insert_with(|| vec![0, 0]);
            let count = u16::from_be_bytes([chunk[0], chunk[1]]);
            if count as u32 >= CHUNK || chunk.len() >= CHUNK_BYTES {
                return false;
            }
            chunk[..2].copy_from_slice(&(count + 1).to_be_bytes());
            entry
                .encode_length_delimited(chunk)
                .expect("a Vec grows as needed");
            true
        })
    }
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
