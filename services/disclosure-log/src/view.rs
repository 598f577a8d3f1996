//! The `ledger` projection: every disclosure (`data.disclosed`) with what its checks found
//! (`disclosure.recorded`, `disclosure.flagged`) and what consent answered
//! (`disclosure.consent_checked`), indexed by subject, recipient, cross-border, state body,
//! flagged and unchecked. Records keep personal fields as stored (sealed); reads open them.
//!
//! Keys (`at` = the disclosure instant, 8 bytes big-endian, so indexes are in time order):
//! `D tenant 0 id` → `Disclosure` · `a tenant 0 at id` (all) · `s tenant 0 subject 0 at id` ·
//! `r tenant 0 recipient 0 at id` · `l tenant 0 legal basis 0 at id` · `x tenant 0 at id`
//! (cross-border) · `b tenant 0 at id` (state
//! body) · `f tenant 0 at id` (flagged) · `u tenant 0 id` (consent unchecked) — index values are
//! empty.

use privacy_event_store::{Projection, RecordedEvent, StoreError, View, ViewWriter};
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_service_kit::projection::{decode_body, decode_stored};
use privacy_vocab::time::micros;
use prost::Message;

use crate::events;

/// Name of the projection.
pub const LEDGER_VIEW: &str = "ledger";

/// `tag tenant 0 parts… 0` (each part followed by a 0).
fn prefix(tag: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = vec![tag];
    for p in parts {
        k.extend_from_slice(p.as_bytes());
        k.push(0);
    }
    k
}

/// The instant as an order-preserving 8-byte key part (instants before 1970 sort first).
fn at_key(at: i64) -> [u8; 8] {
    ((at as u64) ^ (1 << 63)).to_be_bytes()
}

fn indexed(tag: u8, parts: &[&str], at: i64, id: &str) -> Vec<u8> {
    let mut k = prefix(tag, parts);
    k.extend_from_slice(&at_key(at));
    k.extend_from_slice(id.as_bytes());
    k
}

fn record_key(tenant: &str, id: &str) -> Vec<u8> {
    let mut k = prefix(b'D', &[tenant]);
    k.extend_from_slice(id.as_bytes());
    k
}

fn corrupt(e: prost::DecodeError) -> StoreError {
    StoreError::Corrupt {
        seq: 0,
        reason: format!("a disclosure does not decode: {e}"),
    }
}

/// Folds the ledger.
pub struct LedgerView;

impl LedgerView {
    /// Applies `change` to a stored disclosure (skipped if unknown), and answers it.
    fn change(
        view: &mut ViewWriter<'_>,
        tenant: &str,
        id: &str,
        change: impl FnOnce(&mut Disclosure),
    ) -> Result<Option<Disclosure>, StoreError> {
        let k = record_key(tenant, id);
        let Some(bytes) = view.get(&k)? else {
            return Ok(None);
        };
        let mut d = Disclosure::decode(bytes.as_slice()).map_err(corrupt)?;
        change(&mut d);
        view.put(&k, d.encode_to_vec());
        Ok(Some(d))
    }
}

fn at_of(d: &Disclosure) -> i64 {
    d.disclosed_at.as_ref().map_or(0, micros)
}

impl Projection for LedgerView {
    fn name(&self) -> &'static str {
        LEDGER_VIEW
    }

    fn version(&self) -> u32 {
        2
    }

    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        let env: Envelope = decode_stored(event)?;
        let tenant = env.tenant.as_str();
        match &env.payload {
            Some(Payload::DataDisclosed(d)) => {
                let id = env.event_id.as_str();
                let at = env.occurred_at.as_ref().map_or(0, micros);
                let record = Disclosure {
                    disclosure_id: id.to_owned(),
                    subject_id: env.subject_id.clone(),
                    disclosure: Some(d.clone()),
                    disclosed_at: env.occurred_at,
                    consent_check: ConsentCheck::NotNeeded as i32,
                    seq: event.seq,
                    source: env.source.clone(),
                    ..Default::default()
                };
                view.put(&record_key(tenant, id), record.encode_to_vec());
                view.put(&indexed(b'a', &[tenant], at, id), Vec::new());
                if !env.subject_id.is_empty() {
                    let k = indexed(b's', &[tenant, &env.subject_id], at, id);
                    view.put(&k, Vec::new());
                }
                view.put(&indexed(b'r', &[tenant, &d.recipient], at, id), Vec::new());
                let basis = d.legal_basis.to_string();
                view.put(&indexed(b'l', &[tenant, &basis], at, id), Vec::new());
                if d.recipient_role == RecipientRole::StateBody as i32 {
                    view.put(&indexed(b'b', &[tenant], at, id), Vec::new());
                }
                Ok(())
            }
            Some(Payload::DomainEvent(body)) => match env.event_type.as_str() {
                events::RECORDED => {
                    let b: DisclosureRecorded = decode_body(event, &env.event_type, &body.body)?;
                    let id = b.disclosure_id.clone();
                    let Some(d) = Self::change(view, tenant, &id, |d| {
                        d.cross_border = b.cross_border;
                        if b.needs_consent_check {
                            d.consent_check = ConsentCheck::Unchecked as i32;
                        }
                    })?
                    else {
                        return Ok(());
                    };
                    if b.cross_border {
                        view.put(&indexed(b'x', &[tenant], at_of(&d), &id), Vec::new());
                    }
                    if b.needs_consent_check {
                        let mut k = prefix(b'u', &[tenant]);
                        k.extend_from_slice(id.as_bytes());
                        view.put(&k, Vec::new());
                    }
                    Ok(())
                }
                events::FLAGGED => {
                    let b: DisclosureFlagged = decode_body(event, &env.event_type, &body.body)?;
                    let id = b.disclosure_id.clone();
                    let Some(d) =
                        Self::change(view, tenant, &id, |d| d.flags.extend(b.flags.clone()))?
                    else {
                        return Ok(());
                    };
                    view.put(&indexed(b'f', &[tenant], at_of(&d), &id), Vec::new());
                    Ok(())
                }
                events::CONSENT_CHECKED => {
                    let b: DisclosureConsentChecked =
                        decode_body(event, &env.event_type, &body.body)?;
                    Self::change(view, tenant, &b.disclosure_id, |d| {
                        d.consent_check = if b.allowed {
                            ConsentCheck::Valid as i32
                        } else {
                            ConsentCheck::Invalid as i32
                        };
                        d.consent_reason = b.reason.clone();
                        d.consent_record_id = b.record_id.clone();
                        d.consent_decided_by_seq = b.decided_by_seq;
                    })?;
                    let mut k = prefix(b'u', &[tenant]);
                    k.extend_from_slice(b.disclosure_id.as_bytes());
                    view.remove(&k);
                    Ok(())
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// Which index a listing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index<'a> {
    All,
    Subject(&'a str),
    Recipient(&'a str),
    Basis(LegalBasis),
    CrossBorder,
    StateBody,
    Flagged,
}

/// Reads of the ledger.
#[derive(Clone)]
pub struct LedgerReader {
    pub view: View,
}

impl LedgerReader {
    /// A disclosure as stored (personal fields sealed).
    pub fn get(&self, tenant: &str, id: &str) -> Result<Option<Disclosure>, StoreError> {
        self.view
            .get(&record_key(tenant, id))?
            .map(|b| Disclosure::decode(b.as_slice()).map_err(corrupt))
            .transpose()
    }

    /// Disclosures of an index within `[from, to)` (microseconds), newest first, at most
    /// `limit`; and whether more matched.
    pub fn list(
        &self,
        tenant: &str,
        index: Index<'_>,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<(Vec<Disclosure>, bool), StoreError> {
        let p = match index {
            Index::All => prefix(b'a', &[tenant]),
            Index::Subject(s) => prefix(b's', &[tenant, s]),
            Index::Recipient(r) => prefix(b'r', &[tenant, r]),
            Index::Basis(b) => prefix(b'l', &[tenant, &(b as i32).to_string()]),
            Index::CrossBorder => prefix(b'x', &[tenant]),
            Index::StateBody => prefix(b'b', &[tenant]),
            Index::Flagged => prefix(b'f', &[tenant]),
        };
        let (mut start, mut end) = (p.clone(), p.clone());
        start.extend_from_slice(&at_key(from));
        end.extend_from_slice(&at_key(to));
        let keys = self.view.range_rev(&start, &end, limit.saturating_add(1))?;
        let truncated = keys.len() > limit;
        let mut out = Vec::with_capacity(keys.len().min(limit));
        for (k, _) in keys.into_iter().take(limit) {
            let id = String::from_utf8_lossy(&k[p.len() + 8..]).into_owned();
            if let Some(d) = self.get(tenant, &id)? {
                out.push(d);
            }
        }
        Ok((out, truncated))
    }

    /// Consent-based disclosures not yet checked, of every tenant: (tenant, id), at most
    /// `limit`.
    pub fn unchecked(&self, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .view
            .range(b"u", b"v", limit)?
            .into_iter()
            .filter_map(|(k, _)| privacy_service_kit::projection::tenant_and_id(&k))
            .collect())
    }

    /// The tenant's unchecked disclosures, at most `limit`.
    pub fn unchecked_of(&self, tenant: &str, limit: usize) -> Result<Vec<Disclosure>, StoreError> {
        let p = prefix(b'u', &[tenant]);
        // The prefix ends in its 0 separator: the next tenant's keys start past `… 1`.
        let mut end = p.clone();
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        let mut out = Vec::new();
        for (k, _) in self.view.range(&p, &end, limit)? {
            let id = String::from_utf8_lossy(&k[p.len()..]).into_owned();
            if let Some(d) = self.get(tenant, &id)? {
                out.push(d);
            }
        }
        Ok(out)
    }
}
