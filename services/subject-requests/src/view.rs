//! The `requests` projection: every request as the service knows it, and an index of the open
//! ones by the instant their binding deadline ends, for the deadline watcher.
//!
//! Keys: `r tenant 0 request_id` → `SubjectRequest` · `o due_at(i64 BE, offset) tenant 0
//! request_id` → empty, while a request is open, has a binding deadline and is not yet flagged
//! overdue · `p settle_at tenant 0 request_id` → empty, while a request in progress has orders
//! out: `settle_at` is the earliest reply-by of its unanswered orders, or the lowest instant
//! once all are answered (it can complete now) · `O tenant 0 order_id` → the order's request id.

use privacy_event_store::{Projection, RecordedEvent, StoreError, View, ViewWriter};
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_service_kit::projection::{decode_body, decode_stored};
use prost::Message;

use privacy_vocab::time::micros;

use crate::deadlines::binding_due_at;
use crate::events;

/// Name of the projection.
pub const REQUESTS_VIEW: &str = "requests";

fn request_key(tenant: &str, id: &str) -> Vec<u8> {
    let mut k = vec![b'r'];
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Sortable bytes of a signed instant.
fn instant_bytes(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

fn instant_of(bytes: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Whether a request in `state` is still open.
pub fn is_open(state: RequestState) -> bool {
    matches!(
        state,
        RequestState::Received
            | RequestState::IdentityVerified
            | RequestState::InProgress
            | RequestState::Paused
    )
}

/// Folds requests and their steps.
pub struct RequestsView;

fn step(event: &RecordedEvent, env: &Envelope, state: RequestState, reason: &str) -> RequestStep {
    RequestStep {
        seq: event.seq,
        event_type: env.event_type.clone(),
        at: env.occurred_at,
        state: state as i32,
        reason: reason.to_owned(),
    }
}

fn instant_key(tag: u8, at: i64, tenant: &str, id: &str) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(&instant_bytes(at));
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn order_key(tenant: &str, order_id: &str) -> Vec<u8> {
    let mut k = vec![b'O'];
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(order_id.as_bytes());
    k
}

/// When a request's orders can be settled: `i64::MIN` once every order is answered, else the
/// earliest reply-by of the unanswered ones; `None` without orders.
pub fn settle_at(r: &SubjectRequest) -> Option<i64> {
    if r.orders.is_empty() {
        return None;
    }
    let unanswered = r
        .orders
        .iter()
        .filter(|o| o.outcome == OrderOutcome::Unspecified as i32)
        .map(|o| o.reply_by.as_ref().map_or(i64::MIN, micros));
    Some(unanswered.min().unwrap_or(i64::MIN))
}

/// The index entries of a request.
fn index_entries(r: &SubjectRequest) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    if let Some(due) = r.deadlines.as_ref().and_then(binding_due_at)
        && is_open(r.state())
        && !r.overdue
    {
        keys.push(instant_key(b'o', due, &r.tenant, &r.request_id));
    }
    if let Some(at) = settle_at(r)
        && r.state() == RequestState::InProgress
    {
        keys.push(instant_key(b'p', at, &r.tenant, &r.request_id));
    }
    keys
}

/// (tenant, request id, instant) of the index entries under `tag` before `before`.
fn instants_before(
    view: &View,
    tag: u8,
    before: i64,
    limit: usize,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let mut from = vec![tag];
    from.extend_from_slice(&instant_bytes(i64::MIN));
    let mut to = vec![tag];
    to.extend_from_slice(&instant_bytes(before));
    Ok(view
        .range(&from, &to, limit)?
        .into_iter()
        .filter_map(|(k, _)| {
            let at = instant_of(&k[1..9]);
            let rest = &k[9..];
            let zero = rest.iter().position(|b| *b == 0)?;
            Some((
                String::from_utf8_lossy(&rest[..zero]).into_owned(),
                String::from_utf8_lossy(&rest[zero + 1..]).into_owned(),
                at,
            ))
        })
        .collect())
}

impl RequestsView {
    /// Applies `change` to the stored request `id` of `tenant` (skipped if unknown: a domain
    /// event always follows its request's receipt in the log), keeping the index in step.
    fn change(
        view: &mut ViewWriter<'_>,
        tenant: &str,
        id: &str,
        change: impl FnOnce(&mut SubjectRequest),
    ) -> Result<(), StoreError> {
        let key = request_key(tenant, id);
        let Some(bytes) = view.get(&key)? else {
            return Ok(());
        };
        let mut r = SubjectRequest::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
            seq: 0,
            reason: format!("request {id} does not decode: {e}"),
        })?;
        let before = index_entries(&r);
        change(&mut r);
        let after = index_entries(&r);
        for k in before.iter().filter(|k| !after.contains(k)) {
            view.remove(k);
        }
        for k in after.iter().filter(|k| !before.contains(k)) {
            view.put(k, Vec::new());
        }
        view.put(&key, r.encode_to_vec());
        Ok(())
    }
}

impl Projection for RequestsView {
    fn name(&self) -> &'static str {
        REQUESTS_VIEW
    }

    fn version(&self) -> u32 {
        2
    }

    fn apply(&self, event: &RecordedEvent, view: &mut ViewWriter<'_>) -> Result<(), StoreError> {
        let env: Envelope = decode_stored(event)?;
        let tenant = env.tenant.clone();
        let body = match &env.payload {
            Some(Payload::RequestReceived(r)) => {
                let request = SubjectRequest {
                    tenant: tenant.clone(),
                    request_id: env.event_id.clone(),
                    subject_id: env.subject_id.clone(),
                    request_type: r.request_type,
                    state: RequestState::Received as i32,
                    received_at: env.occurred_at,
                    channel: r.channel.clone(),
                    steps: vec![step(event, &env, RequestState::Received, "")],
                    ..Default::default()
                };
                view.put(
                    &request_key(&tenant, &env.event_id),
                    request.encode_to_vec(),
                );
                return Ok(());
            }
            Some(Payload::DomainEvent(d)) => &d.body,
            Some(Payload::OrderConfirmed(c)) => {
                let Some(id) = view.get(&order_key(&tenant, &c.order_id))? else {
                    return Ok(());
                };
                let id = String::from_utf8_lossy(&id).into_owned();
                return Self::change(view, &tenant, &id, |r| {
                    if let Some(o) = r.orders.iter_mut().find(|o| o.order_id == c.order_id) {
                        o.outcome = c.outcome;
                        o.reason = c.reason.clone();
                        o.confirmed_at = env.occurred_at;
                        o.confirmation_seq = event.seq;
                    }
                });
            }
            _ => return Ok(()),
        };
        let t = env.event_type.as_str();
        macro_rules! body {
            ($ty:ty) => {
                decode_body::<$ty>(event, t, body)?
            };
        }
        match t {
            events::OPENED => {
                let b = body!(RequestOpened);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.deadlines = b.deadlines;
                })
            }
            events::IDENTITY_VERIFIED => {
                let b = body!(RequestIdentityVerified);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.state = RequestState::IdentityVerified as i32;
                    if b.deadlines.is_some() {
                        r.deadlines = b.deadlines;
                    }
                    r.steps
                        .push(step(event, &env, RequestState::IdentityVerified, &b.method));
                })
            }
            events::STARTED => {
                let b = body!(RequestStarted);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.state = RequestState::InProgress as i32;
                    r.steps
                        .push(step(event, &env, RequestState::InProgress, ""));
                })
            }
            events::EXTENDED => {
                let b = body!(RequestExtended);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.extended = true;
                    r.deadlines = b.deadlines;
                    r.due_soon = false;
                    r.overdue = false;
                    r.steps.push(step(event, &env, r.state(), &b.reason));
                })
            }
            events::PAUSED => {
                let b = body!(RequestPaused);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.paused_from = r.state;
                    r.state = RequestState::Paused as i32;
                    r.pause_reason = b.reason.clone();
                    r.steps
                        .push(step(event, &env, RequestState::Paused, &b.reason));
                })
            }
            events::RESUMED => {
                let b = body!(RequestResumed);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.state = r.paused_from;
                    r.paused_from = 0;
                    r.pause_reason.clear();
                    r.steps.push(step(event, &env, r.state(), ""));
                })
            }
            events::COMPLETED => {
                let b = body!(RequestCompleted);
                Self::change(view, &tenant, &b.request_id, |r| {
                    let state = if b.parts_not_done.is_empty() {
                        RequestState::Completed
                    } else {
                        RequestState::PartiallyCompleted
                    };
                    r.state = state as i32;
                    r.parts_not_done = b.parts_not_done;
                    r.waiting_on.clear();
                    r.closed_at = env.occurred_at;
                    r.steps.push(step(event, &env, state, ""));
                })
            }
            events::REJECTED => {
                let b = body!(RequestRejected);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.state = RequestState::Rejected as i32;
                    r.reject_reason = b.reason.clone();
                    r.legal_ground = b.legal_ground;
                    r.closed_at = env.occurred_at;
                    r.steps
                        .push(step(event, &env, RequestState::Rejected, &b.reason));
                })
            }
            events::WITHDRAWN => {
                let b = body!(RequestWithdrawn);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.state = RequestState::Withdrawn as i32;
                    r.closed_at = env.occurred_at;
                    r.steps.push(step(event, &env, RequestState::Withdrawn, ""));
                })
            }
            events::DUE_SOON => {
                let b = body!(RequestDueSoon);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.due_soon = true;
                    r.steps.push(step(event, &env, r.state(), ""));
                })
            }
            events::OVERDUE => {
                let b = body!(RequestOverdue);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.overdue = true;
                    r.steps.push(step(event, &env, r.state(), ""));
                })
            }
            events::ORDER_ISSUED => {
                let Some(o) = body!(RequestOrderIssued).order else {
                    return Ok(());
                };
                view.put(
                    &order_key(&tenant, &o.order_id),
                    o.request_id.clone().into_bytes(),
                );
                Self::change(view, &tenant, &o.request_id, |r| {
                    r.orders.push(OrderStatus {
                        order_id: o.order_id.clone(),
                        system: o.system.clone(),
                        action: o.action.clone(),
                        reply_by: o.reply_by,
                        ..Default::default()
                    });
                })
            }
            events::ERASURE_REQUESTED => {
                let b = body!(RequestErasureRequested);
                Self::change(view, &tenant, &b.request_id, |r| {
                    r.waiting_on.push("retention".into());
                })
            }
            _ => Ok(()),
        }
    }
}

/// Reads of the requests view.
#[derive(Clone)]
pub struct RequestsReader {
    pub view: View,
}

fn decode(bytes: &[u8]) -> Result<SubjectRequest, StoreError> {
    SubjectRequest::decode(bytes).map_err(|e| StoreError::Corrupt {
        seq: 0,
        reason: format!("a request does not decode: {e}"),
    })
}

impl RequestsReader {
    pub fn get(&self, tenant: &str, id: &str) -> Result<Option<SubjectRequest>, StoreError> {
        self.view
            .get(&request_key(tenant, id))?
            .map(|b| decode(&b))
            .transpose()
    }

    /// Every request of a tenant.
    pub fn all(&self, tenant: &str) -> Result<Vec<SubjectRequest>, StoreError> {
        let mut prefix = vec![b'r'];
        prefix.extend_from_slice(tenant.as_bytes());
        prefix.push(0);
        self.view
            .scan_prefix(&prefix)?
            .iter()
            .map(|(_, v)| decode(v))
            .collect()
    }

    /// Open requests (any tenant) not yet flagged overdue whose binding deadline ends before
    /// `before`, soonest first, at most `limit`: (tenant, request id, due at).
    pub fn open_due_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        instants_before(&self.view, b'o', before, limit)
    }

    /// Requests in progress whose orders can be settled before `before` (all answered, or one
    /// past its reply-by), at most `limit`: (tenant, request id, settle at).
    pub fn settle_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        instants_before(&self.view, b'p', before, limit)
    }

    /// The request an order belongs to.
    pub fn order_request(
        &self,
        tenant: &str,
        order_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .view
            .get(&order_key(tenant, order_id))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
}
