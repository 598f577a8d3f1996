//! The per-subject timeline projection: for each (tenant, subject), every stored event's type,
//! time and source in log order. Keys: `tenant 0x00 subject 0x00 seq(u64 BE)`.

use privacy_event_store::{Projection, RecordedEvent, StoreError, View, ViewWriter};
use privacy_proto::v1::{Envelope, TimelineEntry};
use prost::Message;

/// Name of the timeline projection.
pub const SUBJECT_TIMELINE: &str = "subject_timeline";

/// Folds every event that names a subject into that subject's timeline.
pub struct SubjectTimeline;

fn subject_prefix(tenant: &str, subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + subject.len() + 2);
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
        1
    }

    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        let env = Envelope::decode(event.data.as_slice()).map_err(|e| StoreError::Corrupt {
            seq: event.seq,
            reason: format!("stored data is not an envelope: {e}"),
        })?;
        if env.subject_id.is_empty() {
            return Ok(());
        }
        let mut key = subject_prefix(&env.tenant, &env.subject_id);
        key.extend_from_slice(&event.seq.to_be_bytes());
        let entry = TimelineEntry {
            seq: event.seq,
            event_type: env.event_type,
            occurred_at: env.occurred_at,
            source: env.source,
        };
        view.put(&key, entry.encode_to_vec());
        Ok(())
    }
}

/// A subject's timeline, in log order.
pub fn read_timeline(
    view: &View,
    tenant: &str,
    subject: &str,
) -> Result<Vec<TimelineEntry>, StoreError> {
    view.scan_prefix(&subject_prefix(tenant, subject))?
        .into_iter()
        .map(|(_, v)| {
            TimelineEntry::decode(v.as_slice()).map_err(|e| StoreError::Corrupt {
                seq: 0,
                reason: format!("timeline entry does not decode: {e}"),
            })
        })
        .collect()
}
