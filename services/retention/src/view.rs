//! The `inventory` projection: what each system holds of each subject (from `data.collected`,
//! `data.erased`), when each subject's account was deactivated (`subject.deactivated`), and the
//! tenant's legal holds (`hold.placed`, `hold.released`). Schedules and due instants are not
//! stored: they are worked out when read, from the tenant file ([`crate::schedules`]).
//!
//! Erasures (`erasure.planned`, `erasure.ordered`, the systems' `data.erased` naming an order,
//! `subject.erased`, `subject.shredded`, `erasure.completed`) are folded here too, as are the
//! triggers schedules count from (`trigger.observed`), operators' schedules (`schedule.put`)
//! and what anonymisation left (cohort counts; the anonymised holdings leave the inventory).
//!
//! Keys: `h tenant 0 subject 0 system 0 category` → `Holding` · `d tenant 0 subject` →
//! deactivation instant (i64 BE microseconds) · `H tenant 0 hold_id` → `LegalHold` ·
//! `E tenant 0 erasure_id` → `Erasure` · `e tenant 0 erasure_id` → empty while the erasure is
//! not finished (not yet shredded here, or not completed) · `O tenant 0 order_id` → the order's
//! erasure id · `t tenant 0 subject 0 trigger 0 purpose` → latest instant observed (i64 BE) ·
//! `S tenant 0 category 0 purpose` → the latest put `Schedule` · `C tenant 0 cohort` → count
//! (u64 BE).

use privacy_event_store::{Projection, RecordedEvent, StoreError, View, ViewWriter};
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_service_kit::projection::{decode_body, decode_stored};
use privacy_vocab::time::micros;
use prost::Message;

use crate::events;
use crate::schedules::Facts;

/// Name of the projection.
pub const INVENTORY_VIEW: &str = "inventory";

fn key(tag: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = vec![tag];
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

fn corrupt(what: &str, e: prost::DecodeError) -> StoreError {
    StoreError::Corrupt {
        seq: 0,
        reason: format!("{what} does not decode: {e}"),
    }
}

/// Folds the inventory.
pub struct InventoryView;

impl InventoryView {
    fn change(
        view: &mut ViewWriter<'_>,
        k: Vec<u8>,
        change: impl FnOnce(&mut Holding),
    ) -> Result<(), StoreError> {
        let mut h = match view.get(&k)? {
            Some(b) => Holding::decode(b.as_slice()).map_err(|e| corrupt("a holding", e))?,
            None => Holding::default(),
        };
        change(&mut h);
        view.put(&k, h.encode_to_vec());
        Ok(())
    }
}

impl InventoryView {
    /// Applies `change` to a stored erasure (skipped if unknown: its plan comes first).
    fn erasure(
        view: &mut ViewWriter<'_>,
        tenant: &str,
        id: &str,
        change: impl FnOnce(&mut Erasure),
    ) -> Result<(), StoreError> {
        let k = key(b'E', &[tenant, id]);
        let Some(bytes) = view.get(&k)? else {
            return Ok(());
        };
        let mut e = Erasure::decode(bytes.as_slice()).map_err(|e| corrupt("an erasure", e))?;
        change(&mut e);
        view.put(&k, e.encode_to_vec());
        Ok(())
    }
}

impl Projection for InventoryView {
    fn name(&self) -> &'static str {
        INVENTORY_VIEW
    }

    fn version(&self) -> u32 {
        4
    }

    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        let env: Envelope = decode_stored(event)?;
        let (tenant, subject) = (env.tenant.as_str(), env.subject_id.as_str());
        match &env.payload {
            Some(Payload::DataCollected(c)) => {
                let k = key(b'h', &[tenant, subject, &c.system, &c.category]);
                Self::change(view, k, |h| {
                    h.subject_id = subject.to_owned();
                    h.system = c.system.clone();
                    h.category = c.category.clone();
                    if !c.purpose.is_empty() && !h.purposes.contains(&c.purpose) {
                        h.purposes.push(c.purpose.clone());
                    }
                    if h.first_collected_at.is_none() || h.erased_at.is_some() {
                        h.first_collected_at = env.occurred_at;
                    }
                    h.last_collected_at = env.occurred_at;
                    // Collected again after an erasure or archiving: held again.
                    h.erased_at = None;
                    h.archived_at = None;
                    h.erase_order_id.clear();
                    h.kept = false;
                    h.seq = event.seq;
                })
            }
            Some(Payload::DataErased(e)) => {
                let k = key(b'h', &[tenant, subject, &e.system, &e.category]);
                let kept = e.personal.contains_key("kept_reason") || !e.kept_reason.is_empty();
                let mut action = String::new();
                if !e.order_id.is_empty()
                    && let Some(id) = view.get(&key(b'O', &[tenant, &e.order_id]))?
                {
                    let id = String::from_utf8_lossy(&id).into_owned();
                    Self::erasure(view, tenant, &id, |er| {
                        if let Some(o) = er.orders.iter_mut().find(|o| o.order_id == e.order_id) {
                            o.answered = true;
                            o.kept |= kept;
                            o.confirmed_at = env.occurred_at;
                            o.confirmation_seq = event.seq;
                            action = o.action.clone();
                        }
                    })?;
                }
                Self::change(view, k, |h| {
                    h.subject_id = subject.to_owned();
                    h.system = e.system.clone();
                    h.category = e.category.clone();
                    h.erase_order_id = e.order_id.clone();
                    h.pending_order_id.clear();
                    h.kept = kept;
                    h.seq = event.seq;
                    if kept {
                        h.erased_at = None;
                    } else if action == "archive" {
                        // Moved to the archive copy: held (archived) until the archive falls due.
                        h.archived_at = env.occurred_at;
                    } else {
                        h.erased_at = env.occurred_at;
                    }
                })
            }
            Some(Payload::SubjectDeactivated(_)) => {
                let at = env.occurred_at.as_ref().map_or(0, micros);
                view.put(&key(b'd', &[tenant, subject]), at.to_be_bytes().to_vec());
                Ok(())
            }
            Some(Payload::DomainEvent(d)) => match env.event_type.as_str() {
                events::HOLD_PLACED => {
                    let b: HoldPlaced = decode_body(event, &env.event_type, &d.body)?;
                    let Some(hold) = b.hold else { return Ok(()) };
                    view.put(&key(b'H', &[tenant, &hold.hold_id]), hold.encode_to_vec());
                    Ok(())
                }
                events::HOLD_RELEASED => {
                    let b: HoldReleased = decode_body(event, &env.event_type, &d.body)?;
                    let k = key(b'H', &[tenant, &b.hold_id]);
                    let Some(bytes) = view.get(&k)? else {
                        return Ok(());
                    };
                    let mut hold = LegalHold::decode(bytes.as_slice())
                        .map_err(|e| corrupt("a legal hold", e))?;
                    hold.released_at = env.occurred_at;
                    hold.release_reason = b.reason;
                    view.put(&k, hold.encode_to_vec());
                    Ok(())
                }
                events::ERASURE_PLANNED => {
                    let b: ErasurePlanned = decode_body(event, &env.event_type, &d.body)?;
                    let Some(mut erasure) = b.erasure else {
                        return Ok(());
                    };
                    erasure.planned_at = env.occurred_at;
                    let id = erasure.erasure_id.clone();
                    view.put(&key(b'E', &[tenant, &id]), erasure.encode_to_vec());
                    view.put(&key(b'e', &[tenant, &id]), Vec::new());
                    Ok(())
                }
                events::ERASURE_ORDERED => {
                    let b: ErasureOrdered = decode_body(event, &env.event_type, &d.body)?;
                    let Some(o) = b.order else { return Ok(()) };
                    view.put(
                        &key(b'O', &[tenant, &o.order_id]),
                        b.erasure_id.clone().into_bytes(),
                    );
                    for category in &o.categories {
                        let k = key(b'h', &[tenant, subject, &o.system, category]);
                        if view.get(&k)?.is_some() {
                            Self::change(view, k, |h| h.pending_order_id = o.order_id.clone())?;
                        }
                    }
                    Self::erasure(view, tenant, &b.erasure_id, |er| {
                        // Sent again: the same order, a new reply-by.
                        if let Some(known) = er.orders.iter_mut().find(|k| k.order_id == o.order_id)
                        {
                            known.reply_by = o.reply_by;
                            known.attempts = o.attempt.max(known.attempts);
                            return;
                        }
                        er.orders.push(ErasureOrder {
                            order_id: o.order_id.clone(),
                            system: o.system.clone(),
                            categories: o.categories.clone(),
                            reply_by: o.reply_by,
                            attempts: o.attempt.max(1),
                            action: o.action.clone(),
                            ..Default::default()
                        });
                    })
                }
                events::ERASURE_ESCALATED => {
                    let b: ErasureEscalated = decode_body(event, &env.event_type, &d.body)?;
                    Self::erasure(view, tenant, &b.erasure_id, |er| {
                        if let Some(o) = er.orders.iter_mut().find(|o| o.order_id == b.order_id) {
                            o.escalated = true;
                        }
                    })
                }
                events::SUBJECT_ERASED => {
                    let b: SubjectErased = decode_body(event, &env.event_type, &d.body)?;
                    Self::erasure(view, tenant, &b.erasure_id, |er| {
                        er.erased_at = env.occurred_at;
                        er.erased_seq = event.seq;
                    })
                }
                events::SHRED_CONFIRMED => {
                    let b: ErasureShredConfirmed = decode_body(event, &env.event_type, &d.body)?;
                    let Some(shred) = b.shred else { return Ok(()) };
                    Self::erasure(view, tenant, &b.erasure_id, |er| {
                        if !er.shreds.iter().any(|s| s.service == shred.service) {
                            er.shreds.push(shred);
                        }
                    })
                }
                events::ERASURE_COMPLETED => {
                    let b: ErasureCompleted = decode_body(event, &env.event_type, &d.body)?;
                    view.remove(&key(b'e', &[tenant, &b.erasure_id]));
                    for item in &b.anonymised {
                        view.remove(&key(b'h', &[tenant, subject, &item.system, &item.category]));
                    }
                    for c in &b.cohorts {
                        let k = key(b'C', &[tenant, &c.cohort]);
                        let n = view
                            .get(&k)?
                            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                            .map_or(0, u64::from_be_bytes);
                        view.put(&k, (n + c.count).to_be_bytes().to_vec());
                    }
                    Self::erasure(view, tenant, &b.erasure_id, |er| {
                        er.erased_at = env.occurred_at;
                        er.erased_seq = event.seq;
                    })
                }
                events::TRIGGER_OBSERVED => {
                    let b: TriggerObserved = decode_body(event, &env.event_type, &d.body)?;
                    let at = b.at.as_ref().or(env.occurred_at.as_ref()).map_or(0, micros);
                    let all = ["*".to_owned()];
                    let purposes = if b.purposes.is_empty() {
                        &all[..]
                    } else {
                        &b.purposes[..]
                    };
                    for p in purposes {
                        let k = key(b't', &[tenant, subject, &b.trigger, p]);
                        let known = view
                            .get(&k)?
                            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                            .map(i64::from_be_bytes);
                        if known.is_none_or(|k| k < at) {
                            view.put(&k, at.to_be_bytes().to_vec());
                        }
                    }
                    Ok(())
                }
                events::SCHEDULE_PUT => {
                    let b: SchedulePut = decode_body(event, &env.event_type, &d.body)?;
                    let Some(mut sched) = b.schedule else {
                        return Ok(());
                    };
                    sched.seq = event.seq;
                    let k = key(b'S', &[tenant, &sched.category, &sched.purpose]);
                    view.put(&k, sched.encode_to_vec());
                    Ok(())
                }
                events::SUBJECT_SHREDDED => {
                    let b: SubjectShredded = decode_body(event, &env.event_type, &d.body)?;
                    view.remove(&key(b'e', &[tenant, &b.erasure_id]));
                    Self::erasure(view, tenant, &b.erasure_id, |er| {
                        er.shredded_at = env.occurred_at;
                        er.shredded_seq = event.seq;
                    })
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// Reads of the inventory.
#[derive(Clone)]
pub struct InventoryReader {
    pub view: View,
}

impl InventoryReader {
    /// The subject's holdings, by system and category.
    pub fn holdings(&self, tenant: &str, subject: &str) -> Result<Vec<Holding>, StoreError> {
        let mut prefix = key(b'h', &[tenant, subject]);
        prefix.push(0);
        self.decode_all(&prefix)
    }

    /// Every holding of the tenant.
    pub fn all_holdings(&self, tenant: &str) -> Result<Vec<Holding>, StoreError> {
        let mut prefix = key(b'h', &[tenant]);
        prefix.push(0);
        self.decode_all(&prefix)
    }

    fn decode_all(&self, prefix: &[u8]) -> Result<Vec<Holding>, StoreError> {
        self.view
            .scan_prefix(prefix)?
            .iter()
            .map(|(_, v)| Holding::decode(v.as_slice()).map_err(|e| corrupt("a holding", e)))
            .collect()
    }

    /// When the subject's account was deactivated.
    pub fn deactivated_at(&self, tenant: &str, subject: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .view
            .get(&key(b'd', &[tenant, subject]))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(i64::from_be_bytes))
    }

    /// A legal hold of the tenant.
    pub fn hold(&self, tenant: &str, id: &str) -> Result<Option<LegalHold>, StoreError> {
        self.view
            .get(&key(b'H', &[tenant, id]))?
            .map(|b| LegalHold::decode(b.as_slice()).map_err(|e| corrupt("a legal hold", e)))
            .transpose()
    }

    /// The tenant's legal holds, released ones too.
    pub fn holds(&self, tenant: &str) -> Result<Vec<LegalHold>, StoreError> {
        let mut prefix = key(b'H', &[tenant]);
        prefix.push(0);
        self.view
            .scan_prefix(&prefix)?
            .iter()
            .map(|(_, v)| LegalHold::decode(v.as_slice()).map_err(|e| corrupt("a legal hold", e)))
            .collect()
    }
}

impl InventoryReader {
    /// What schedules count from for a subject: its deactivation and the triggers observed.
    pub fn facts(&self, tenant: &str, subject: &str) -> Result<Facts, StoreError> {
        let mut prefix = key(b't', &[tenant, subject]);
        prefix.push(0);
        let mut triggers = Vec::new();
        for (k, v) in self.view.scan_prefix(&prefix)? {
            let rest = &k[prefix.len()..];
            let Some(zero) = rest.iter().position(|b| *b == 0) else {
                continue;
            };
            let Ok(at) = <[u8; 8]>::try_from(v.as_slice()) else {
                continue;
            };
            triggers.push((
                String::from_utf8_lossy(&rest[..zero]).into_owned(),
                String::from_utf8_lossy(&rest[zero + 1..]).into_owned(),
                i64::from_be_bytes(at),
            ));
        }
        Ok(Facts {
            deactivated_at: self.deactivated_at(tenant, subject)?,
            triggers,
        })
    }

    /// The tenant's schedules put by operators, the latest per (category, purpose).
    pub fn schedule_puts(&self, tenant: &str) -> Result<Vec<Schedule>, StoreError> {
        let mut prefix = key(b'S', &[tenant]);
        prefix.push(0);
        self.view
            .scan_prefix(&prefix)?
            .iter()
            .map(|(_, v)| Schedule::decode(v.as_slice()).map_err(|e| corrupt("a schedule", e)))
            .collect()
    }

    /// The tenant's cohort counts.
    pub fn cohorts(&self, tenant: &str) -> Result<Vec<CohortCount>, StoreError> {
        let mut prefix = key(b'C', &[tenant]);
        prefix.push(0);
        Ok(self
            .view
            .scan_prefix(&prefix)?
            .into_iter()
            .filter_map(|(k, v)| {
                Some(CohortCount {
                    cohort: String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                    count: u64::from_be_bytes(<[u8; 8]>::try_from(v.as_slice()).ok()?),
                })
            })
            .collect())
    }

    /// An erasure of the tenant.
    pub fn erasure(&self, tenant: &str, id: &str) -> Result<Option<Erasure>, StoreError> {
        self.view
            .get(&key(b'E', &[tenant, id]))?
            .map(|b| Erasure::decode(b.as_slice()).map_err(|e| corrupt("an erasure", e)))
            .transpose()
    }

    /// The erasure an order belongs to.
    pub fn order_erasure(
        &self,
        tenant: &str,
        order_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .view
            .get(&key(b'O', &[tenant, order_id]))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Unfinished erasures of every tenant: (tenant, erasure id), at most `limit`.
    pub fn unfinished(&self, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .view
            .range(b"e", b"f", limit)?
            .into_iter()
            .filter_map(|(k, _)| privacy_service_kit::projection::tenant_and_id(&k))
            .collect())
    }
}

/// Whether a live hold covers a holding.
pub fn covers(hold: &LegalHold, h: &Holding) -> bool {
    hold.released_at.is_none()
        && (hold.subject_id.is_empty() || hold.subject_id == h.subject_id)
        && (hold.category.is_empty() || hold.category == h.category)
        && (hold.system.is_empty() || hold.system == h.system)
}
