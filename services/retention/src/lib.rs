//! The retention service: what each system holds of each subject, the tenant's retention
//! schedules, when each holding falls due, and the legal holds that keep it (DESIGN §6
//! "Retention").
//!
//! - [`schedules`]: `[[retention]]` schedules of the tenant file, the one governing a holding,
//!   and when its action falls due;
//! - [`view`]: the `inventory` projection (holdings, deactivations, legal holds);
//! - [`domain`]: [`RetentionDomain`], the rules for legal holds and answers to erase orders;
//! - [`erasure`]: erasure plans, erase orders, settling (`subject.erased`, the shred here,
//!   `subject.shredded`) and certificates;
//! - [`grpc`]: the `RetentionService` handlers.
//!
//! Other services' events it takes (`CROSS_SERVICE`): a subject request's
//! `request.erasure_requested` and consent's `subject.child_flagged` (each plans and orders an
//! erasure of the subject), consent's `consent.withdrawn` (a trigger schedules count from) and
//! every service's `subject.shredded` (for the certificate).
//!
//! Due schedules act by themselves ([`erasure::sweep`]): their holdings are erased, anonymised
//! (reduced to cohort counts) or archived, once, by orders to the systems that hold them.

#![forbid(unsafe_code)]

pub mod domain;
pub mod erasure;
pub mod grpc;
pub mod schedules;
pub mod view;

use std::sync::Arc;

use privacy_event_store::Projection;
use privacy_service_kit::{DomainService, ServiceContext, ServiceSpec};

pub use domain::RetentionDomain;

/// The domain events of the service, by catalogue name.
pub mod events {
    use privacy_proto::DomainBody;
    use privacy_proto::v1::*;

    pub const HOLD_PLACED: &str = <HoldPlaced as DomainBody>::EVENT_TYPE;
    pub const HOLD_RELEASED: &str = <HoldReleased as DomainBody>::EVENT_TYPE;
    pub const ERASURE_PLANNED: &str = <ErasurePlanned as DomainBody>::EVENT_TYPE;
    pub const ERASURE_ORDERED: &str = <ErasureOrdered as DomainBody>::EVENT_TYPE;
    pub const ERASURE_ESCALATED: &str = <ErasureEscalated as DomainBody>::EVENT_TYPE;
    pub const SUBJECT_ERASED: &str = <SubjectErased as DomainBody>::EVENT_TYPE;
    /// Emitted by every service through the kit (publisher `*`): not in [`ALL`].
    pub const SUBJECT_SHREDDED: &str = <SubjectShredded as DomainBody>::EVENT_TYPE;
    pub const SHRED_CONFIRMED: &str = <ErasureShredConfirmed as DomainBody>::EVENT_TYPE;
    pub const ERASURE_COMPLETED: &str = <ErasureCompleted as DomainBody>::EVENT_TYPE;
    pub const TRIGGER_OBSERVED: &str = <TriggerObserved as DomainBody>::EVENT_TYPE;
    pub const SCHEDULE_PUT: &str = <SchedulePut as DomainBody>::EVENT_TYPE;

    pub const ALL: &[&str] = &[
        HOLD_PLACED,
        HOLD_RELEASED,
        ERASURE_PLANNED,
        ERASURE_ORDERED,
        ERASURE_ESCALATED,
        SUBJECT_ERASED,
        SHRED_CONFIRMED,
        ERASURE_COMPLETED,
        TRIGGER_OBSERVED,
        SCHEDULE_PUT,
    ];
}

/// What the retention service is to the kit (what it consumes comes from the event catalogue).
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "retention",
    default_port: 50053,
    publishes: events::ALL,
    projections,
    domain,
};

fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(view::InventoryView)]
}

fn domain(ctx: &ServiceContext) -> Arc<dyn DomainService> {
    Arc::new(RetentionDomain::new(ctx))
}
