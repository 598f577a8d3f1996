//! The deadline watcher: `request.due_soon` once a request's binding deadline is near (the
//! tenant's `[requests] due_soon_hours`, default 48), `request.overdue` once it has passed —
//! each exactly once per request and deadline, also across restarts and concurrent scans,
//! because each is emitted under a key derived from the request (`<id>/overdue`) that the door
//! stores at most once. [`scan`] takes the instant to judge by, so tests drive it with an
//! explicit clock; [`run`] calls it with the wall clock every [`SCAN_EVERY`].

use std::time::Duration;

use privacy_proto::v1::{RequestDueSoon, RequestOverdue};
use privacy_service_kit::{Emit, ServiceContext, StreamKey, Tenant};
use privacy_vocab::time::{now_micros, timestamp};
use tokio_util::sync::CancellationToken;

use crate::RequestsDomain;

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
    Ok(flagged)
}

/// Scans with the wall clock every [`SCAN_EVERY`] until `shutdown`. A failed scan (the store
/// busy, views behind) is logged and retried at the next tick.
pub async fn run(
    ctx: ServiceContext,
    domain: RequestsDomain,
    shutdown: CancellationToken,
) -> Result<(), String> {
    loop {
        if let Err(e) = scan(&ctx, &domain, now_micros()).await {
            tracing::warn!(error = %e, "deadline scan failed; retrying at the next tick");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SCAN_EVERY) => {}
        }
    }
}
