//! [`RetentionDomain`]: the rules the kit's door applies to retention's events — a hold names a
//! scope, a release names a live hold, a system's `data.erased` naming an order answers an
//! erase order sent to it, once, a schedule put is usable, a trigger names a known one — the
//! orders an `erasure.planned` implies, what it does with other services' events, the erasure
//! task, and the tenants' schedules: the tenant file's, checked once at start (an unusable one
//! is logged and named by every query that needs it), each replaced by its latest put.

use std::collections::BTreeMap;

use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_proto::{Rejection, RejectionCode};
use privacy_service_kit::{Derived, DomainService, DomainTask, ServiceContext, Tenant};
use privacy_vocab::time::micros_or_zero;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::events;
use crate::schedules::{OBSERVED_TRIGGERS, ScheduleError, in_force, schedules};
use crate::view::{INVENTORY_VIEW, InventoryReader};

/// The retention rules, over the inventory view.
#[derive(Clone)]
pub struct RetentionDomain {
    pub reader: InventoryReader,
    /// Each tenant's schedules, or why they cannot be used.
    pub schedules: std::sync::Arc<BTreeMap<String, Result<Vec<Schedule>, ScheduleError>>>,
    /// Held while an erasure step is decided and appended.
    pub steps: std::sync::Arc<tokio::sync::Mutex<()>>,
}

fn forbidden(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::new(RejectionCode::Forbidden, field, reason)
}

impl RetentionDomain {
    pub fn new(ctx: &ServiceContext) -> RetentionDomain {
        let mut all = BTreeMap::new();
        for id in ctx.tenants.ids() {
            let tenant = ctx.tenants.get(id).expect("listed");
            let s = schedules(tenant);
            if let Err(e) = &s {
                tracing::error!(error = %e, "a retention schedule cannot be used; ListDue and holdings of this tenant say so");
            }
            all.insert(id.to_owned(), s);
        }
        RetentionDomain {
            reader: InventoryReader {
                view: ctx
                    .projector
                    .view(INVENTORY_VIEW)
                    .expect("the inventory view is registered by SPEC"),
            },
            schedules: std::sync::Arc::new(all),
            steps: Default::default(),
        }
    }

    /// The tenant's schedules in force, or FAILED_PRECONDITION saying why the tenant file's
    /// cannot be used.
    pub fn tenant_schedules(&self, tenant: &str) -> Result<Vec<Schedule>, tonic::Status> {
        let file = match self.schedules.get(tenant) {
            Some(Ok(s)) => s.as_slice(),
            Some(Err(e)) => {
                return Err(tonic::Status::failed_precondition(format!(
                    "the tenant file's retention schedules cannot be used: {e}"
                )));
            }
            None => &[],
        };
        let puts = self
            .reader
            .schedule_puts(tenant)
            .map_err(privacy_service_kit::audit::status_of)?;
        Ok(in_force(file, puts))
    }

    fn check_domain(&self, tenant: &Tenant, env: &Envelope, body: &[u8]) -> Result<(), Rejection> {
        let malformed = || {
            Rejection::new(
                RejectionCode::Malformed,
                env.event_type.as_str(),
                "the body does not decode",
            )
        };
        match env.event_type.as_str() {
            events::HOLD_PLACED => {
                let hold = HoldPlaced::decode(body)
                    .map_err(|_| malformed())?
                    .hold
                    .ok_or_else(malformed)?;
                if hold.subject_id.is_empty() && hold.category.is_empty() && hold.system.is_empty()
                {
                    return Err(Rejection::new(
                        RejectionCode::MissingField,
                        "subject_id",
                        "a hold names a subject_id, a category or a system (or several)",
                    ));
                }
                if !hold.system.is_empty() && !tenant.systems.contains(&hold.system) {
                    return Err(Rejection::new(
                        RejectionCode::InvalidField,
                        "system",
                        format!(
                            "system is not one of the tenant's: {}",
                            tenant.systems.join(", ")
                        ),
                    ));
                }
                Ok(())
            }
            events::SCHEDULE_PUT => {
                let s = SchedulePut::decode(body)
                    .map_err(|_| malformed())?
                    .schedule
                    .ok_or_else(malformed)?;
                crate::schedules::check(&s).map_err(|(field, reason)| {
                    Rejection::new(RejectionCode::InvalidField, field, reason)
                })?;
                check_purposes(tenant, std::slice::from_ref(&s.purpose), "purpose")
            }
            events::TRIGGER_OBSERVED => {
                let t = TriggerObserved::decode(body).map_err(|_| malformed())?;
                if !OBSERVED_TRIGGERS.contains(&t.trigger.as_str()) {
                    return Err(Rejection::new(
                        RejectionCode::InvalidField,
                        "trigger",
                        format!("trigger must be one of {}", OBSERVED_TRIGGERS.join(", ")),
                    ));
                }
                check_purposes(tenant, &t.purposes, "purposes")
            }
            events::HOLD_RELEASED => {
                let b = HoldReleased::decode(body).map_err(|_| malformed())?;
                match self.reader.hold(&tenant.id, &b.hold_id) {
                    Ok(Some(h)) if h.released_at.is_none() => Ok(()),
                    Ok(Some(_)) => Err(forbidden("hold_id", "the hold was released before")),
                    _ => Err(forbidden(
                        "hold_id",
                        format!("tenant {} has no such hold", tenant.id),
                    )),
                }
            }
            _ => Ok(()),
        }
    }

    /// A system's answer to an erase order: the order exists, went to that system, and was not
    /// answered before.
    fn check_answer(&self, tenant: &Tenant, e: &DataErased) -> Result<(), Rejection> {
        let unknown = || forbidden("data_erased.order_id", "this service sent no such order");
        let id = self
            .reader
            .order_erasure(&tenant.id, &e.order_id)
            .ok()
            .flatten()
            .ok_or_else(unknown)?;
        let erasure = self
            .reader
            .erasure(&tenant.id, &id)
            .ok()
            .flatten()
            .ok_or_else(unknown)?;
        let order = erasure
            .orders
            .iter()
            .find(|o| o.order_id == e.order_id)
            .ok_or_else(unknown)?;
        if order.system != e.system {
            return Err(forbidden(
                "data_erased.system",
                format!(
                    "the order was sent to system {}, not to this one",
                    order.system
                ),
            ));
        }
        if order.answered {
            return Err(forbidden(
                "data_erased.order_id",
                format!(
                    "the order was answered before (event {}); an answer is final",
                    order.confirmation_seq
                ),
            ));
        }
        Ok(())
    }
}

/// Each purpose is `*` or one of the tenant's.
fn check_purposes(tenant: &Tenant, purposes: &[String], field: &str) -> Result<(), Rejection> {
    for (i, p) in purposes.iter().enumerate() {
        if p != "*" && tenant.purpose(p).is_none() {
            return Err(Rejection::new(
                RejectionCode::InvalidField,
                field,
                format!("{field}[{i}] is not in tenant {}'s catalog", tenant.id),
            ));
        }
    }
    Ok(())
}

/// Consent's flag of a child registered without a guardian's consent.
const CHILD_FLAGGED: &str = <ChildFlagged as privacy_proto::DomainBody>::EVENT_TYPE;

/// The hand-off of an erasure request from subject-requests.
const REQUEST_ERASURE_REQUESTED: &str =
    <RequestErasureRequested as privacy_proto::DomainBody>::EVENT_TYPE;

impl RetentionDomain {
    /// Plans and orders an erasure of the subject, once per `key`.
    async fn erasure_once(
        &self,
        ctx: &ServiceContext,
        envelope: &Envelope,
        reason: &str,
        request_id: &str,
        key: String,
    ) -> Result<(), String> {
        let known = ctx
            .store
            .lookup(&envelope.tenant, &key)
            .map_err(|e| e.to_string())?;
        if known.is_some() {
            return Ok(());
        }
        crate::erasure::record_plan(
            ctx,
            self,
            crate::erasure::PlanRequest {
                tenant: &envelope.tenant,
                subject_id: &envelope.subject_id,
                reason,
                request_id,
                dry_run: false,
                key: Some(key),
            },
        )
        .await
        .map(|_| ())
        .map_err(|s| s.message().to_owned())
    }

    /// Consent's `consent.withdrawn` (as consent stored it): the trigger `consent_withdrawn`
    /// observed for its purposes (none: every purpose), once per withdrawal.
    async fn withdrawn(
        &self,
        ctx: &ServiceContext,
        envelope: &Envelope,
        purposes: &[String],
    ) -> Result<(), String> {
        let body = TriggerObserved {
            trigger: "consent_withdrawn".into(),
            purposes: purposes.to_vec(),
            at: envelope.occurred_at,
            // Observed in consent's log: that log and its event id are the evidence.
            source: "consent".into(),
            source_event_id: envelope.event_id.clone(),
        };
        ctx.emit(privacy_service_kit::Emit {
            tenant: envelope.tenant.clone(),
            subject_id: envelope.subject_id.clone(),
            body,
            stream: privacy_service_kit::StreamKey::Subject,
            event_id: Some(format!("consent-withdrawn/{}", envelope.event_id)),
        })
        .await
        .map(|_| ())
        .map_err(|s| s.message().to_owned())
    }
}

impl DomainService for RetentionDomain {
    fn check(&self, tenant: &Tenant, envelope: &Envelope) -> Result<(), Rejection> {
        match &envelope.payload {
            Some(Payload::DomainEvent(d)) => self.check_domain(tenant, envelope, &d.body),
            Some(Payload::DataErased(e)) if !e.order_id.is_empty() => self.check_answer(tenant, e),
            _ => Ok(()),
        }
    }

    fn derive(&self, tenant: &Tenant, envelope: &Envelope) -> Vec<Derived> {
        let Some(Payload::DomainEvent(d)) = &envelope.payload else {
            return Vec::new();
        };
        if envelope.event_type != events::ERASURE_PLANNED {
            return Vec::new();
        }
        let Some(erasure) = ErasurePlanned::decode(d.body.as_slice())
            .ok()
            .and_then(|p| p.erasure)
        else {
            return Vec::new();
        };
        let at = micros_or_zero(envelope.occurred_at.as_ref());
        crate::erasure::orders(tenant, &erasure, at)
            .into_iter()
            .map(|o| {
                let system = o
                    .order
                    .as_ref()
                    .map(|o| o.system.clone())
                    .unwrap_or_default();
                Derived::domain(format!("erase-{system}"), o)
            })
            .collect()
    }

    /// Another service's `subject.shredded`: recorded against its erasure, for the certificate.
    /// A subject request's `request.erasure_requested` and consent's `subject.child_flagged`:
    /// the subject's erasure planned and ordered. Consent's `consent.withdrawn`: a trigger.
    fn react(
        &self,
        ctx: &ServiceContext,
        envelope: Envelope,
        seq: Option<u64>,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let (ctx, this) = (ctx.clone(), self.clone());
        Box::pin(async move {
            let d = match &envelope.payload {
                Some(Payload::ConsentWithdrawn(w)) => {
                    return this.withdrawn(&ctx, &envelope, &w.purposes).await;
                }
                Some(Payload::DomainEvent(d)) => d,
                _ => return Ok(()),
            };
            if envelope.event_type == REQUEST_ERASURE_REQUESTED {
                let asked = RequestErasureRequested::decode(d.body.as_slice())
                    .map_err(|e| e.to_string())?;
                let key = format!("{}/erasure", asked.request_id);
                return this
                    .erasure_once(&ctx, &envelope, "subject_request", &asked.request_id, key)
                    .await;
            }
            if envelope.event_type == CHILD_FLAGGED {
                let key = format!("child-flagged/{}", envelope.event_id);
                return this
                    .erasure_once(&ctx, &envelope, "child_flagged", "", key)
                    .await;
            }
            if envelope.event_type != events::SUBJECT_SHREDDED {
                return Ok(());
            }
            let shredded = SubjectShredded::decode(d.body.as_slice()).map_err(|e| e.to_string())?;
            // The service is the one that stored and published the event, whatever the body
            // says; retention's own shred is in its erasure already.
            let service = envelope.source.clone();
            if service == crate::SPEC.name || service != shredded.service {
                if service != shredded.service {
                    tracing::warn!(source = %service, claimed = %shredded.service, "a subject.shredded whose body names another service; ignored");
                }
                return Ok(());
            }
            let key = format!("{}/shred-{service}", shredded.erasure_id);
            let body = ErasureShredConfirmed {
                erasure_id: shredded.erasure_id,
                shred: Some(ServiceShred {
                    service,
                    shredded_at: envelope.occurred_at,
                    seq: seq.unwrap_or_default(),
                }),
            };
            ctx.emit(privacy_service_kit::Emit {
                tenant: envelope.tenant.clone(),
                subject_id: envelope.subject_id.clone(),
                body,
                stream: privacy_service_kit::StreamKey::Subject,
                event_id: Some(key),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_owned())
        })
    }

    fn tasks(&self, ctx: &ServiceContext, shutdown: CancellationToken) -> Vec<DomainTask> {
        vec![DomainTask {
            name: "the erasure task",
            run: Box::pin(crate::erasure::run(ctx.clone(), self.clone(), shutdown)),
        }]
    }

    fn routes(&self, ctx: &ServiceContext, routes: &mut tonic::service::RoutesBuilder) {
        crate::grpc::add_routes(ctx, self.clone(), routes);
    }
}
