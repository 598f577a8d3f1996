//! [`RetentionDomain`]: the rules the kit's door applies to retention's own events — a hold
//! names a scope and codes, a release names a live hold — and the tenants' schedules, checked
//! once at start (an unusable schedule is logged and named by every query that needs it).

use std::collections::BTreeMap;

use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_proto::{Rejection, RejectionCode};
use privacy_service_kit::{DomainService, ServiceContext, Tenant};
use prost::Message;

use crate::events;
use crate::schedules::{ScheduleError, schedules};
use crate::view::{INVENTORY_VIEW, InventoryReader};

/// The retention rules, over the inventory view.
#[derive(Clone)]
pub struct RetentionDomain {
    pub reader: InventoryReader,
    /// Each tenant's schedules, or why they cannot be used.
    pub schedules: std::sync::Arc<BTreeMap<String, Result<Vec<Schedule>, ScheduleError>>>,
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
        }
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
}

impl DomainService for RetentionDomain {
    fn check(&self, tenant: &Tenant, envelope: &Envelope) -> Result<(), Rejection> {
        match &envelope.payload {
            Some(Payload::DomainEvent(d)) => self.check_domain(tenant, envelope, &d.body),
            _ => Ok(()),
        }
    }

    fn routes(&self, ctx: &ServiceContext, routes: &mut tonic::service::RoutesBuilder) {
        crate::grpc::add_routes(ctx, self.clone(), routes);
    }
}
