//! The deadline watcher: `request.due_soon` once a request's binding deadline is near (the
//! tenant's `[requests] due_soon_hours`, default 48), `request.overdue` once it has passed —
//! each exactly once per request and deadline, also across restarts and concurrent scans,
//! because each is emitted under a key derived from the request (`<id>/overdue`) that the door
//! stores at most once. [`scan`] takes the instant to judge by, so tests drive it with an
//! explicit clock; [`run`] calls it with the wall clock every [`SCAN_EVERY`].
//!
//! The same scan settles requests whose orders are all answered, or past their reply-by:
//! `request.completed`, partially when a system refused, failed or did not answer (each such
//! system a part not done, `no_confirmation` for silence). [`run`] also scans as soon as a
//! system's `order.confirmed` is stored, so the last answer completes the request at once.

use std::time::Duration;

use privacy_proto::v1::{
    OrderOutcome, PartNotDone, RequestCompleted, RequestDueSoon, RequestOverdue, RequestState,
    SubjectRequest,
};
use privacy_service_kit::{Emit, ServiceContext, StreamKey, Tenant};
use privacy_vocab::time::{now_micros, timestamp};
use tokio_util::sync::CancellationToken;

use crate::RequestsDomain;

/// What wakes [`run`] before its tick: a system's answer to an order.
const CONFIRMED: &[&str] = &[privacy_proto::EventType::OrderConfirmed.as_str()];
/// How often [`run`] scans.
pub const SCAN_EVERY: Duration = Duration::from_secs(30);
/// Default warning time before a deadline.
pub const DEFAULT_DUE_SOON_HOURS: i64 = 48;
/// The longest warning time a tenant may set.
pub const MAX_DUE_SOON_HOURS: i64 = 24 * 14;
/// Requests looked at per scan (the soonest first; the rest wait for the next scan).
const SCAN_LIMIT: usize = 10_000;
const HOUR: i64 = 3_600_000_000;

/// The tenant's warning time before a deadline, in microseconds.
pub fn due_soon_window(tenant: &Tenant) -> i64 {
    let hours = tenant
        .extra
        .get("requests")
        .and_then(|r| r.get("due_soon_hours"))
        .and_then(|v| v.as_integer())
        .unwrap_or(DEFAULT_DUE_SOON_HOURS)
        .clamp(0, MAX_DUE_SOON_HOURS);
    hours * HOUR
}

/// Where a flag goes and the key that makes it unique.
struct Flag<'a> {
    tenant: &'a str,
    subject_id: &'a str,
    key: String,
}

impl Flag<'_> {
    fn emit<B>(self, body: B) -> Emit<B> {
        Emit {
            tenant: self.tenant.to_owned(),
            subject_id: self.subject_id.to_owned(),
            body,
            stream: StreamKey::Subject,
            event_id: Some(self.key),
        }
    }
}

/// What one scan emitted: (event type, request id).
pub type Flagged = Vec<(&'static str, String)>;

/// Flags, as of `now` (microseconds), every open request whose binding deadline has passed
/// (`request.overdue`) or is within its tenant's warning time (`request.due_soon`), unless it
/// was flagged before. Returns what it emitted now.
pub async fn scan(
    ctx: &ServiceContext,
    domain: &RequestsDomain,
    now: i64,
) -> Result<Flagged, tonic::Status> {
    let horizon = now
        .saturating_add(MAX_DUE_SOON_HOURS * HOUR)
        .saturating_add(1);
    let candidates = domain
        .reader
        .open_due_before(horizon, SCAN_LIMIT)
        .map_err(privacy_service_kit::audit::status_of)?;
    let mut flagged = Vec::new();
    for (tenant_id, id, due) in candidates {
        let Ok(tenant) = ctx.tenant(&tenant_id) else {
            continue;
        };
        let window = due_soon_window(tenant);
        let _step = domain.steps.lock().await;
        let Some(request) = domain
            .reader
            .get(&tenant_id, &id)
            .map_err(privacy_service_kit::audit::status_of)?
        else {
            continue;
        };
        // A deadline extended is a new deadline: its flags have their own keys.
        let generation = if request.extended { "-extended" } else { "" };
        let flag = |name: &str| Flag {
            tenant: &tenant_id,
            subject_id: &request.subject_id,
            key: format!("{id}/{name}{generation}"),
        };
        let (request_id, due_at) = (id.clone(), Some(timestamp(due)));
        let event_type = if due <= now && !request.overdue {
            ctx.emit(flag("overdue").emit(RequestOverdue { request_id, due_at }))
                .await?;
            crate::events::OVERDUE
        } else if due > now && due - window <= now && !request.due_soon {
            ctx.emit(flag("due_soon").emit(RequestDueSoon { request_id, due_at }))
                .await?;
            crate::events::DUE_SOON
        } else {
            continue;
        };
        tracing::info!(tenant = %tenant_id, request = %id, event_type, "flagged");
        flagged.push((event_type, id));
    }
    settle(ctx, domain, now, &mut flagged).await?;
    Ok(flagged)
}

/// The parts of a request's orders not done as of `now`, or `None` while some order may still
/// be answered in time.
pub fn orders_outcome(r: &SubjectRequest, now: i64) -> Option<Vec<PartNotDone>> {
    let mut parts = Vec::new();
    for o in &r.orders {
        let part = format!("{}:{}", o.action, o.system);
        match o.outcome() {
            OrderOutcome::Done | OrderOutcome::NotHeld => {}
            OrderOutcome::Refused | OrderOutcome::Failed => parts.push(PartNotDone {
                part,
                reason: o.reason.clone(),
            }),
            OrderOutcome::Unspecified => {
                if o.reply_by
                    .as_ref()
                    .map_or(i64::MIN, privacy_vocab::time::micros)
                    > now
                {
                    return None;
                }
                parts.push(PartNotDone {
                    part,
                    reason: "no_confirmation".into(),
                });
            }
        }
    }
    Some(parts)
}

/// Completes every request in progress whose orders are settled as of `now`.
async fn settle(
    ctx: &ServiceContext,
    domain: &RequestsDomain,
    now: i64,
    flagged: &mut Flagged,
) -> Result<(), tonic::Status> {
    let candidates = domain
        .reader
        .settle_before(now.saturating_add(1), SCAN_LIMIT)
        .map_err(privacy_service_kit::audit::status_of)?;
    for (tenant_id, id, _) in candidates {
        let _step = domain.steps.lock().await;
        let Some(request) = domain
            .reader
            .get(&tenant_id, &id)
            .map_err(privacy_service_kit::audit::status_of)?
        else {
            continue;
        };
        if request.state() != RequestState::InProgress {
            continue;
        }
        let Some(parts_not_done) = orders_outcome(&request, now) else {
            continue;
        };
        let flag = Flag {
            tenant: &tenant_id,
            subject_id: &request.subject_id,
            key: format!("{id}/orders-settled"),
        };
        ctx.emit(flag.emit(RequestCompleted {
            request_id: id.clone(),
            parts_not_done,
        }))
        .await?;
        tracing::info!(tenant = %tenant_id, request = %id, "orders settled; request completed");
        flagged.push((crate::events::COMPLETED, id));
    }
    Ok(())
}

/// Scans with the wall clock every [`SCAN_EVERY`] until `shutdown`. A failed scan (the store
/// busy, views behind) is logged and retried at the next tick.
pub async fn run(
    ctx: ServiceContext,
    domain: RequestsDomain,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let mut confirmations = ctx.store.subscribe(ctx.store.head().seq + 1);
    loop {
        if let Err(e) = scan(&ctx, &domain, now_micros()).await {
            tracing::warn!(error = %e, "deadline scan failed; retrying at the next tick");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SCAN_EVERY) => {}
            woke = ctx.stored(&mut confirmations, CONFIRMED, SCAN_EVERY) => {
                woke.map_err(|e| e.to_string())?;
            }
        }
    }
}
