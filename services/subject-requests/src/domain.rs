//! [`RequestsDomain`]: the lifecycle rules the kit's door applies to every step of a request —
//! which state each step may follow, reason codes, the one extension — and what steps imply:
//! the `request.opened` (with its deadlines) of a `request.received` when the clock starts at
//! receipt; the orders a started rectification, restriction or deactivation sends to each of
//! the tenant's systems (`request.order_issued`, also published on `privacy.out`); the hand-off
//! of a started erasure to retention (`request.erasure_requested`), whose `subject.erased`
//! completes the request ([`RequestsDomain`]'s `react`). A system's `order.confirmed` must name
//! an order of this service, sent to that system, not yet answered.
//!
//! Steps are decided one at a time ([`RequestsDomain::steps`] is held from the check to the
//! append), so two operators cannot both move a request out of the same state.

use std::sync::Arc;

use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_proto::{Rejection, RejectionCode};
use privacy_service_kit::{Derived, DomainService, DomainTask, ServiceContext, Tenant};
use privacy_vocab::time::micros_or_zero;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::deadlines::{ClockStart, binding_due_at, clock_start, compute};
use crate::events;
use crate::view::{REQUESTS_VIEW, RequestsReader};

/// The lifecycle rules, over the requests view.
#[derive(Clone)]
pub struct RequestsDomain {
    pub reader: RequestsReader,
    /// Held while a step is checked and appended.
    pub steps: Arc<tokio::sync::Mutex<()>>,
}

fn forbidden(field: &str, reason: String) -> Rejection {
    Rejection::new(RejectionCode::Forbidden, field, reason)
}

/// A state's name in messages (`identity_verified`).
pub fn state_name(s: RequestState) -> &'static str {
    match s {
        RequestState::Unspecified => "unknown",
        RequestState::Received => "received",
        RequestState::IdentityVerified => "identity_verified",
        RequestState::InProgress => "in_progress",
        RequestState::Paused => "paused",
        RequestState::Completed => "completed",
        RequestState::PartiallyCompleted => "partially_completed",
        RequestState::Rejected => "rejected",
        RequestState::Withdrawn => "withdrawn",
    }
}

/// The states a step may follow.
fn allowed_from(step: &str) -> &'static [RequestState] {
    use RequestState::*;
    match step {
        events::IDENTITY_VERIFIED => &[Received],
        events::STARTED => &[IdentityVerified],
        events::PAUSED => &[Received, IdentityVerified, InProgress],
        events::RESUMED => &[Paused],
        events::COMPLETED => &[InProgress],
        events::EXTENDED
        | events::REJECTED
        | events::WITHDRAWN
        | events::DUE_SOON
        | events::OVERDUE => &[Received, IdentityVerified, InProgress, Paused],
        _ => &[],
    }
}

/// Whether a request in `state` may take `step`; the refusal names the state.
pub fn check_transition(state: RequestState, step: &str) -> Result<(), Rejection> {
    if allowed_from(step).contains(&state) {
        return Ok(());
    }
    let from: Vec<&str> = allowed_from(step).iter().map(|s| state_name(*s)).collect();
    Err(forbidden(
        "request_id",
        format!(
            "the request is {}: {step} may follow only {}",
            state_name(state),
            from.join(", ")
        ),
    ))
}

/// The request id a step's body names.
fn request_id_of(event_type: &str, body: &[u8]) -> Option<String> {
    macro_rules! id {
        ($ty:ty) => {
            <$ty>::decode(body).ok().map(|b| b.request_id)
        };
    }
    match event_type {
        events::OPENED => id!(RequestOpened),
        events::IDENTITY_VERIFIED => id!(RequestIdentityVerified),
        events::STARTED => id!(RequestStarted),
        events::EXTENDED => id!(RequestExtended),
        events::PAUSED => id!(RequestPaused),
        events::RESUMED => id!(RequestResumed),
        events::COMPLETED => id!(RequestCompleted),
        events::REJECTED => id!(RequestRejected),
        events::WITHDRAWN => id!(RequestWithdrawn),
        events::DUE_SOON => id!(RequestDueSoon),
        events::OVERDUE => id!(RequestOverdue),
        _ => None,
    }
}

/// The order action a request type sends to each system, if it sends orders.
pub fn order_action(t: RequestType) -> Option<&'static str> {
    match t {
        RequestType::Rectification => Some("rectify"),
        RequestType::Restriction => Some("restrict"),
        RequestType::Deactivation => Some("deactivate"),
        _ => None,
    }
}

/// Default time a system has to answer an order.
pub const DEFAULT_ORDER_REPLY_HOURS: i64 = 72;
/// The longest a tenant may give.
pub const MAX_ORDER_REPLY_HOURS: i64 = 24 * 30;
const HOUR: i64 = 3_600_000_000;

/// How long the tenant's systems have to answer an order (`[requests] order_reply_hours`).
pub fn order_reply_window(tenant: &Tenant) -> i64 {
    tenant
        .extra
        .get("requests")
        .and_then(|r| r.get("order_reply_hours"))
        .and_then(|v| v.as_integer())
        .unwrap_or(DEFAULT_ORDER_REPLY_HOURS)
        .clamp(1, MAX_ORDER_REPLY_HOURS)
        * HOUR
}

/// The deadlines of a request whose clock starts at `at`, or why there are none.
pub fn deadlines_at(
    tenant: &Tenant,
    t: RequestType,
    at: i64,
    how: ClockStart,
    extended: bool,
) -> Deadlines {
    compute(tenant, t, at, how, extended).unwrap_or_else(|e| Deadlines {
        clock_started_at: Some(privacy_vocab::time::timestamp(at)),
        clock_start: how.as_str().into(),
        error: e.to_string(),
        ..Default::default()
    })
}

impl RequestsDomain {
    pub fn new(ctx: &ServiceContext) -> RequestsDomain {
        RequestsDomain {
            reader: RequestsReader {
                view: ctx
                    .projector
                    .view(REQUESTS_VIEW)
                    .expect("the requests view is registered by SPEC"),
            },
            steps: Arc::default(),
        }
    }

    /// A system's answer must name an order of this tenant, sent to that system, unanswered.
    fn check_confirmation(&self, tenant: &Tenant, c: &OrderConfirmed) -> Result<(), Rejection> {
        let field = |name: &str| format!("order_confirmed.{name}");
        let unknown = || {
            Rejection::new(
                RejectionCode::Forbidden,
                field("order_id"),
                format!("tenant {} sent no such order", tenant.id),
            )
        };
        let request_id = self
            .reader
            .order_request(&tenant.id, &c.order_id)
            .ok()
            .flatten()
            .ok_or_else(unknown)?;
        let request = self
            .reader
            .get(&tenant.id, &request_id)
            .ok()
            .flatten()
            .ok_or_else(unknown)?;
        let order = request
            .orders
            .iter()
            .find(|o| o.order_id == c.order_id)
            .ok_or_else(unknown)?;
        if order.system != c.system {
            return Err(forbidden(
                "order_confirmed.system",
                format!(
                    "the order was sent to system {}, not to the confirming one",
                    order.system
                ),
            ));
        }
        if order.outcome != OrderOutcome::Unspecified as i32 {
            return Err(forbidden(
                "order_confirmed.order_id",
                format!(
                    "the order was answered before (event {}); an answer is final",
                    order.confirmation_seq
                ),
            ));
        }
        Ok(())
    }

    /// The orders (or the hand-off to retention) a started request implies.
    fn started(&self, tenant: &Tenant, env: &Envelope, body: &[u8]) -> Vec<Derived> {
        let Ok(started) = RequestStarted::decode(body) else {
            return Vec::new();
        };
        let Ok(Some(request)) = self.reader.get(&tenant.id, &started.request_id) else {
            return Vec::new();
        };
        let t = request.request_type();
        if t == RequestType::Erasure {
            return vec![Derived::domain(
                "erasure",
                RequestErasureRequested {
                    request_id: request.request_id,
                },
            )];
        }
        let Some(action) = order_action(t) else {
            return Vec::new();
        };
        let now = micros_or_zero(env.occurred_at.as_ref());
        let mut reply_by = now.saturating_add(order_reply_window(tenant));
        // An answer after the binding deadline is too late for the request.
        if let Some(due) = request.deadlines.as_ref().and_then(binding_due_at)
            && due > now
        {
            reply_by = reply_by.min(due);
        }
        tenant
            .systems
            .iter()
            .map(|system| {
                Derived::domain(
                    format!("order-{system}"),
                    RequestOrderIssued {
                        order: Some(Order {
                            order_id: format!("{}:{system}", request.request_id),
                            tenant: tenant.id.clone(),
                            subject_id: request.subject_id.clone(),
                            system: system.clone(),
                            action: action.into(),
                            categories: Vec::new(),
                            request_id: request.request_id.clone(),
                            issued_at: env.occurred_at,
                            reply_by: Some(privacy_vocab::time::timestamp(reply_by)),
                            issuer: crate::SPEC.name.into(),
                            confirm_with: <OrderConfirmed as privacy_proto::UserEvent>::TYPE
                                .as_str()
                                .into(),
                            attempt: 1,
                        }),
                    },
                )
            })
            .collect()
    }

    fn check_step(&self, tenant: &Tenant, env: &Envelope, body: &[u8]) -> Result<(), Rejection> {
        let t = env.event_type.as_str();
        // `request.opened` is implied, never stepped; events of the kit (a shred) are no step.
        if t == events::OPENED || !events::ALL.contains(&t) {
            return Ok(());
        }
        let id = request_id_of(t, body).ok_or_else(|| {
            Rejection::new(RejectionCode::Malformed, t, format!("{t} does not decode"))
        })?;
        let request = self
            .reader
            .get(&tenant.id, &id)
            .ok()
            .flatten()
            .ok_or_else(|| forbidden("request_id", "no such request".into()))?;
        check_transition(request.state(), t)?;
        match t {
            events::EXTENDED => {
                let d = request.deadlines.as_ref();
                if request.extended {
                    return Err(forbidden(
                        "request_id",
                        "the request was extended before; the law allows one extension".into(),
                    ));
                }
                if !d.is_some_and(|d| d.extension_allowed) {
                    return Err(forbidden(
                        "request_id",
                        format!(
                            "{} allows no extension of this request type (or its clock has not \
                             started)",
                            tenant.jurisdiction
                        ),
                    ));
                }
                if let Some(due) = d.and_then(binding_due_at)
                    && micros_or_zero(env.occurred_at.as_ref()) >= due
                {
                    return Err(forbidden(
                        "request_id",
                        "the deadline has passed: an extension must be given before it ends".into(),
                    ));
                }
            }
            events::DUE_SOON if request.due_soon => {
                return Err(forbidden("request_id", "already flagged due soon".into()));
            }
            events::OVERDUE if request.overdue => {
                return Err(forbidden("request_id", "already flagged overdue".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

impl DomainService for RequestsDomain {
    fn check(&self, tenant: &Tenant, envelope: &Envelope) -> Result<(), Rejection> {
        match &envelope.payload {
            Some(Payload::RequestReceived(r)) => {
                if r.request_type == RequestType::Unspecified as i32 {
                    return Err(Rejection::new(
                        RejectionCode::MissingField,
                        "request_received.request_type",
                        "request_received.request_type is required",
                    ));
                }
                Ok(())
            }
            Some(Payload::OrderConfirmed(c)) => self.check_confirmation(tenant, c),
            Some(Payload::DomainEvent(d)) => self.check_step(tenant, envelope, &d.body),
            _ => Ok(()),
        }
    }

    fn derive(&self, tenant: &Tenant, envelope: &Envelope) -> Vec<Derived> {
        let r = match &envelope.payload {
            Some(Payload::RequestReceived(r)) => r,
            Some(Payload::DomainEvent(d)) if envelope.event_type == events::STARTED => {
                return self.started(tenant, envelope, &d.body);
            }
            _ => return Vec::new(),
        };
        let t = r.request_type();
        let received = micros_or_zero(envelope.occurred_at.as_ref());
        // The clock starts now unless the law counts from proof of identity.
        let deadlines = match clock_start(tenant, t, received) {
            ClockStart::Received => Some(deadlines_at(
                tenant,
                t,
                received,
                ClockStart::Received,
                false,
            )),
            ClockStart::IdentityVerified => None,
        };
        vec![Derived::domain(
            "opened",
            RequestOpened {
                request_id: envelope.event_id.clone(),
                request_type: r.request_type,
                deadlines,
            },
        )]
    }

    fn routes(&self, ctx: &ServiceContext, routes: &mut tonic::service::RoutesBuilder) {
        crate::grpc::add_routes(ctx, self.clone(), routes);
    }

    /// Retention's `subject.erased` for an erasure a request asked for: the request completes,
    /// partially when something was kept (each kept holding a part, with its reason).
    fn react(
        &self,
        ctx: &ServiceContext,
        envelope: Envelope,
        _seq: Option<u64>,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let (ctx, this) = (ctx.clone(), self.clone());
        Box::pin(async move {
            let Some(Payload::DomainEvent(d)) = &envelope.payload else {
                return Ok(());
            };
            if envelope.event_type != <SubjectErased as privacy_proto::DomainBody>::EVENT_TYPE {
                return Ok(());
            }
            let erased = SubjectErased::decode(d.body.as_slice()).map_err(|e| e.to_string())?;
            if erased.request_id.is_empty() {
                return Ok(());
            }
            let _step = this.steps.lock().await;
            let request = this
                .reader
                .get(&envelope.tenant, &erased.request_id)
                .map_err(|e| e.to_string())?;
            let Some(request) = request.filter(|r| r.state() == RequestState::InProgress) else {
                tracing::warn!(tenant = %envelope.tenant, request = %erased.request_id, "an erasure finished for a request that is not in progress; left to the operator");
                return Ok(());
            };
            let parts_not_done = erased
                .kept
                .iter()
                .map(|k| PartNotDone {
                    part: format!("erase:{}:{}", k.system, k.category.replace(' ', "+")),
                    reason: k.reason.clone(),
                })
                .collect();
            ctx.emit(privacy_service_kit::Emit {
                tenant: envelope.tenant.clone(),
                subject_id: request.subject_id.clone(),
                body: RequestCompleted {
                    request_id: request.request_id.clone(),
                    parts_not_done,
                },
                stream: privacy_service_kit::StreamKey::Subject,
                event_id: Some(format!("{}/erased", request.request_id)),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_owned())
        })
    }

    fn tasks(&self, ctx: &ServiceContext, shutdown: CancellationToken) -> Vec<DomainTask> {
        vec![DomainTask {
            name: "the deadline watcher",
            run: Box::pin(crate::watch::run(ctx.clone(), self.clone(), shutdown)),
        }]
    }
}

#[cfg(test)]
mod tests {
    use privacy_service_kit::check_code;

    use super::*;

    #[test]
    fn illegal_steps_name_the_state() {
        assert!(check_transition(RequestState::Received, events::IDENTITY_VERIFIED).is_ok());
        let e = check_transition(RequestState::Completed, events::STARTED).unwrap_err();
        assert_eq!(e.code, RejectionCode::Forbidden);
        assert!(e.reason.contains("completed"), "{e}");
        assert!(e.reason.contains("identity_verified"), "{e}");
        assert!(check_transition(RequestState::Received, events::COMPLETED).is_err());
        assert!(check_transition(RequestState::Paused, events::RESUMED).is_ok());
        assert!(check_transition(RequestState::Withdrawn, events::WITHDRAWN).is_err());
    }

    #[test]
    fn codes_refuse_free_text_without_repeating_it() {
        assert!(check_code("reason", "legal_hold", true).is_ok());
        assert!(check_code("reason", "", false).is_ok());
        let e = check_code("reason", "Ann Example asked", true).unwrap_err();
        assert!(!e.reason.contains("Ann"), "{e}");
    }
}
