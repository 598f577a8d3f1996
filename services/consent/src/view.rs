//! The consent projection: per (tenant, subject, purpose) the history of consent changes, per
//! tenant the published policy versions, per subject the instants it reaches the child-age
//! thresholds (never the birth date, which rests only sealed).
//!
//! Keys: `h tenant 0 subject 0 purpose` → the history's newest entries, length-delimited
//! `ConsentHistoryEntry`s (granted, withdrawn, refused; purpose `*` is a withdrawal of every
//! purpose), after a mark `0x00 count(varint)` when `count` older chunks exist ·
//! `h tenant 0 subject 0 purpose 0 n(u32 BE)` → older entries, chunk n (from 0) · `p tenant` →
//! length-delimited `StoredPolicy`s · `c tenant 0 subject` → `AgeThresholds`. When the newest
//! entries would pass [`HISTORY_HEAD_BYTES`] they move to the next older chunk, so a change
//! rewrites a value of bounded size however long the history. A history without older chunks
//! is stored as before chunks existed (no entry encodes to zero bytes: every one has a seq, so
//! a leading zero is the mark), and a check reads one value for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use privacy_event_store::{Projection, RecordedEvent, StoreError, View, ViewWriter};
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::{
    AgeThresholds, ConsentHistoryEntry, Envelope, ExpressedBy, PolicyPublished,
};
use prost::Message;

use privacy_service_kit::projection::{decode_body, decode_stored};
use privacy_vocab::time::{micros, micros_or_zero};

use crate::decision::{ChangeKind, ConsentChange, PolicyVersion};
use crate::{AGE_THRESHOLDS, POLICY_PUBLISHED};

/// Name of the consent projection.
pub const CONSENT_VIEW: &str = "consent";

/// A policy version as the view keeps it.
#[derive(Clone, PartialEq, Message)]
pub struct StoredPolicy {
    #[prost(message, optional, tag = "1")]
    pub policy: Option<PolicyPublished>,
    #[prost(message, optional, tag = "2")]
    pub published_at: Option<prost_types::Timestamp>,
    #[prost(uint64, tag = "3")]
    pub seq: u64,
}

fn history_key(tenant: &str, subject: &str, purpose: &str) -> Vec<u8> {
    // Room for an archive chunk's number too, so neither key grows its vector.
    let mut k = Vec::with_capacity(tenant.len() + subject.len() + purpose.len() + 8);
    k.push(b'h');
    for (i, part) in [tenant, subject, purpose].iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(part.as_bytes());
    }
    k
}

/// The newest entries of a history take at most about this many bytes.
pub const HISTORY_HEAD_BYTES: usize = 4096;

/// The key of a history's older chunk `n`.
fn archive_key(tenant: &str, subject: &str, purpose: &str, n: u32) -> Vec<u8> {
    let mut k = history_key(tenant, subject, purpose);
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// A history's newest value: how many older chunks there are, and the newest entries' bytes.
fn split_head(bytes: &[u8]) -> Result<(u32, &[u8]), StoreError> {
    let Some((0, mut rest)) = bytes.split_first() else {
        return Ok((0, bytes));
    };
    let count = prost::decode_length_delimiter(&mut rest)
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| StoreError::Corrupt {
            seq: 0,
            reason: "consent history value has a bad count of older chunks".into(),
        })?;
    Ok((count, rest))
}

/// Appends an entry to a history's newest value, first moving the entries there to a new older
/// chunk when the entry would take the value past [`HISTORY_HEAD_BYTES`].
fn append_history(
    view: &mut ViewWriter<'_>,
    (tenant, subject, purpose): (&str, &str, &str),
    entry: &ConsentHistoryEntry,
) -> Result<(), StoreError> {
    let bytes = entry.encode_length_delimited_to_vec();
    let mut archived = None;
    let mut failed = None;
    view.update(&history_key(tenant, subject, purpose), |v| {
        let head = v.get_or_insert_with(Vec::new);
        if head.len() + bytes.len() > HISTORY_HEAD_BYTES {
            match split_head(head) {
                Ok((count, entries)) if !entries.is_empty() => {
                    archived = Some((count, entries.to_vec()));
                    head.clear();
                    head.push(0);
                    prost::encode_length_delimiter(count as usize + 1, head)
                        .expect("a Vec grows as needed");
                }
                Ok(_) => {}
                Err(e) => {
                    failed = Some(e);
                    return;
                }
            }
        }
        head.extend_from_slice(&bytes);
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some((n, entries)) = archived {
        view.put(&archive_key(tenant, subject, purpose, n), entries);
    }
    Ok(())
}

fn child_key(tenant: &str, subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + subject.len() + 2);
    k.push(b'c');
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(subject.as_bytes());
    k
}

fn policy_key(tenant: &str) -> Vec<u8> {
    let mut k = vec![b'p'];
    k.extend_from_slice(tenant.as_bytes());
    k
}

fn append(view: &mut ViewWriter<'_>, key: &[u8], message: &impl Message) -> Result<(), StoreError> {
    view.update(key, |v| {
        message
            .encode_length_delimited(v.get_or_insert_with(Vec::new))
            .expect("a Vec grows as needed");
    })
}

fn decode_all<M: Message + Default>(bytes: &[u8]) -> Result<Vec<M>, StoreError> {
    let mut buf = bytes;
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(
            M::decode_length_delimited(&mut buf).map_err(|e| StoreError::Corrupt {
                seq: 0,
                reason: format!("consent view entry does not decode: {e}"),
            })?,
        );
    }
    Ok(out)
}

/// Log order of history entries; one event's entries (a grant of several purposes) by purpose.
fn log_order(a: &ConsentHistoryEntry, b: &ConsentHistoryEntry) -> std::cmp::Ordering {
    (a.seq, &a.purpose).cmp(&(b.seq, &b.purpose))
}

/// Folds consent events, policy versions and age thresholds into the view.
pub struct ConsentView;

impl Projection for ConsentView {
    fn name(&self) -> &'static str {
        CONSENT_VIEW
    }

    fn version(&self) -> u32 {
        // 2: age thresholds instead of birth dates; 3: long histories move older entries to
        // chunks (short ones are stored as before, but a view folded by 2 can differ).
        3
    }

    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        let env: Envelope = decode_stored(event)?;
        let (tenant, subject) = (env.tenant.as_str(), env.subject_id.as_str());
        match &env.payload {
            Some(Payload::ConsentGranted(g)) => {
                for purpose in &g.purposes {
                    let entry = ConsentHistoryEntry {
                        seq: event.seq,
                        purpose: purpose.clone(),
                        change: "granted".into(),
                        at: env.occurred_at,
                        record_id: format!("{}/{purpose}", env.event_id),
                        policy_version: g.policy_version.clone(),
                        valid_until: g.valid_until,
                        expressed_by: g.expressed_by,
                        method: g.method,
                        ..Default::default()
                    };
                    append_history(view, (tenant, subject, purpose), &entry)?;
                }
            }
            Some(Payload::ConsentRefused(r)) => {
                for purpose in &r.purposes {
                    let entry = ConsentHistoryEntry {
                        seq: event.seq,
                        purpose: purpose.clone(),
                        change: "refused".into(),
                        at: env.occurred_at,
                        record_id: format!("{}/{purpose}", env.event_id),
                        policy_version: r.policy_version.clone(),
                        expressed_by: r.expressed_by,
                        method: r.method,
                        ..Default::default()
                    };
                    append_history(view, (tenant, subject, purpose), &entry)?;
                }
            }
            Some(Payload::ConsentWithdrawn(w)) => {
                let all = ["*".to_owned()];
                let purposes = if w.purposes.is_empty() {
                    &all[..]
                } else {
                    &w.purposes[..]
                };
                for purpose in purposes {
                    let entry = ConsentHistoryEntry {
                        seq: event.seq,
                        purpose: purpose.clone(),
                        change: "withdrawn".into(),
                        at: env.occurred_at,
                        ..Default::default()
                    };
                    append_history(view, (tenant, subject, purpose), &entry)?;
                }
            }
            Some(Payload::DomainEvent(d)) if env.event_type == AGE_THRESHOLDS => {
                let body: AgeThresholds = decode_body(event, AGE_THRESHOLDS, &d.body)?;
                view.put(&child_key(tenant, subject), body.encode_to_vec());
            }
            Some(Payload::DomainEvent(d)) if env.event_type == POLICY_PUBLISHED => {
                let policy: PolicyPublished = decode_body(event, POLICY_PUBLISHED, &d.body)?;
                let stored = StoredPolicy {
                    policy: Some(policy),
                    published_at: env.occurred_at,
                    seq: event.seq,
                };
                append(view, &policy_key(tenant), &stored)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads of the consent view.
#[derive(Clone)]
pub struct ConsentReader {
    view: View,
    /// Each tenant's decoded policy versions, with the view's stamp when they were read:
    /// every grant and every check needs them, and they change only with a publication.
    policies: Arc<Mutex<PolicyCache>>,
}

/// Per tenant: the view's stamp taken before the read, and the policy versions read.
type PolicyCache = HashMap<String, (u64, Arc<Vec<PolicyVersion>>)>;

impl ConsentReader {
    pub fn new(view: View) -> ConsentReader {
        ConsentReader {
            view,
            policies: Arc::default(),
        }
    }
    /// The history of one purpose, including withdrawals of every purpose, in log order.
    pub fn history(
        &self,
        tenant: &str,
        subject: &str,
        purpose: &str,
    ) -> Result<Vec<ConsentHistoryEntry>, StoreError> {
        let mut out = Vec::new();
        for p in [purpose, "*"] {
            let Some(head) = self.view.get_with(&history_key(tenant, subject, p), |b| {
                let (older, entries) = split_head(b)?;
                Ok::<_, StoreError>((older, decode_all::<ConsentHistoryEntry>(entries)?))
            })?
            else {
                continue;
            };
            let (older, newest) = head?;
            for n in 0..older {
                let chunk = self
                    .view
                    .get_with(
                        &archive_key(tenant, subject, p, n),
                        decode_all::<ConsentHistoryEntry>,
                    )?
                    .ok_or_else(|| StoreError::Corrupt {
                        seq: 0,
                        reason: format!("consent history chunk {n} of {older} is missing"),
                    })?;
                out.extend(chunk?);
            }
            out.extend(newest);
        }
        out.sort_by(log_order);
        Ok(out)
    }

    /// Every purpose's history of a subject, in log order.
    pub fn all_history(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<Vec<ConsentHistoryEntry>, StoreError> {
        // `h tenant 0 subject 0`: every purpose of the subject.
        let prefix = history_key(tenant, subject, "");
        let mut out = Vec::new();
        for (key, bytes) in self.view.scan_prefix(&prefix)? {
            // Purposes hold no 0 byte: a key with one after the prefix is an older chunk.
            let older = key
                .get(prefix.len()..)
                .is_some_and(|rest| rest.contains(&0));
            let entries = if older {
                &bytes[..]
            } else {
                split_head(&bytes)?.1
            };
            out.extend(decode_all::<ConsentHistoryEntry>(entries)?);
        }
        out.sort_by(log_order);
        Ok(out)
    }

    /// The tenant's policy versions, in log order.
    pub fn policies(&self, tenant: &str) -> Result<Arc<Vec<PolicyVersion>>, StoreError> {
        let cache = || self.policies.lock().unwrap_or_else(|p| p.into_inner());
        // Taken before the read: a commit after it changes the stamp, so what is cached under
        // it is never newer than the stamp says, only (briefly) reread.
        let stamp = self.view.stamp();
        if let Some((at, policies)) = cache().get(tenant)
            && *at == stamp
        {
            return Ok(policies.clone());
        }
        let policies = Arc::new(self.read_policies(tenant)?);
        cache().insert(tenant.to_owned(), (stamp, policies.clone()));
        Ok(policies)
    }

    fn read_policies(&self, tenant: &str) -> Result<Vec<PolicyVersion>, StoreError> {
        let Some(stored) = self
            .view
            .get_with(&policy_key(tenant), decode_all::<StoredPolicy>)?
        else {
            return Ok(Vec::new());
        };
        Ok(stored?
            .into_iter()
            .filter_map(|s| {
                let p = s.policy?;
                Some(PolicyVersion {
                    effective_at: micros_or_zero(p.effective_at.as_ref()),
                    version: p.version,
                    notice_hash: p.notice_hash,
                    purposes: p.purposes,
                    material: p.material,
                    published_at: micros_or_zero(s.published_at.as_ref()),
                })
            })
            .collect())
    }

    /// When the subject reaches each child-age threshold, if a registration gave a birth date.
    pub fn child(&self, tenant: &str, subject: &str) -> Result<Option<AgeThresholds>, StoreError> {
        self.view
            .get_with(&child_key(tenant, subject), |bytes| {
                AgeThresholds::decode(bytes)
            })?
            .transpose()
            .map_err(|e| StoreError::Corrupt {
                seq: 0,
                reason: format!("age thresholds do not decode: {e}"),
            })
    }
}

/// A history entry as a domain change.
pub fn to_change(e: &ConsentHistoryEntry) -> ConsentChange {
    ConsentChange {
        seq: e.seq,
        at: micros_or_zero(e.at.as_ref()),
        kind: if e.change == "granted" {
            ChangeKind::Granted {
                record_id: e.record_id.clone(),
                policy_version: e.policy_version.clone(),
                valid_until: e.valid_until.as_ref().map(micros),
                by_guardian: e.expressed_by == ExpressedBy::Guardian as i32,
            }
        } else if e.change == "refused" {
            ChangeKind::Refused
        } else {
            ChangeKind::Withdrawn
        },
    }
}
