//! The subject-requests service: data-subject requests from receipt to outcome, with the
//! statutory deadline beside the tenant's promise (DESIGN §6 "Subject requests").
//!
//! - [`deadlines`]: the statutory and promised deadlines of a request, from the `rules` crate
//!   and the tenant file;
//! - [`domain`]: [`RequestsDomain`], the lifecycle's rules the kit's door applies to every step,
//!   and the `request.opened` a `request.received` implies;
//! - [`view`]: the `requests` projection (each request, and the open ones by deadline);
//! - [`watch`]: `request.due_soon` / `request.overdue`, once each, against an explicit clock;
//! - [`report`]: the access report, assembled over gRPC from the other services;
//! - [`grpc`]: the `SubjectRequestService` handlers.

#![forbid(unsafe_code)]

pub mod deadlines;
pub mod domain;
pub mod grpc;
pub mod report;
pub mod view;
pub mod watch;

use std::sync::Arc;

use privacy_event_store::Projection;
use privacy_service_kit::{DomainService, ServiceContext, ServiceSpec};

pub use domain::RequestsDomain;

/// The domain events of the service, by catalogue name.
pub mod events {
    use privacy_proto::DomainBody;
    use privacy_proto::v1::*;

    pub const OPENED: &str = <RequestOpened as DomainBody>::EVENT_TYPE;
    pub const IDENTITY_VERIFIED: &str = <RequestIdentityVerified as DomainBody>::EVENT_TYPE;
    pub const STARTED: &str = <RequestStarted as DomainBody>::EVENT_TYPE;
    pub const EXTENDED: &str = <RequestExtended as DomainBody>::EVENT_TYPE;
    pub const PAUSED: &str = <RequestPaused as DomainBody>::EVENT_TYPE;
    pub const RESUMED: &str = <RequestResumed as DomainBody>::EVENT_TYPE;
    pub const COMPLETED: &str = <RequestCompleted as DomainBody>::EVENT_TYPE;
    pub const REJECTED: &str = <RequestRejected as DomainBody>::EVENT_TYPE;
    pub const WITHDRAWN: &str = <RequestWithdrawn as DomainBody>::EVENT_TYPE;
    pub const DUE_SOON: &str = <RequestDueSoon as DomainBody>::EVENT_TYPE;
    pub const OVERDUE: &str = <RequestOverdue as DomainBody>::EVENT_TYPE;
    pub const ORDER_ISSUED: &str = <RequestOrderIssued as DomainBody>::EVENT_TYPE;
    pub const ERASURE_REQUESTED: &str = <RequestErasureRequested as DomainBody>::EVENT_TYPE;

    /// Every one of them, in lifecycle order.
    pub const ALL: &[&str] = &[
        OPENED,
        IDENTITY_VERIFIED,
        STARTED,
        EXTENDED,
        PAUSED,
        RESUMED,
        COMPLETED,
        REJECTED,
        WITHDRAWN,
        DUE_SOON,
        OVERDUE,
        ORDER_ISSUED,
        ERASURE_REQUESTED,
    ];
}

/// What the subject-requests service is to the kit (what it consumes comes from the event
/// catalogue: `request.*`).
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "subject-requests",
    default_port: 50052,
    publishes: events::ALL,
    projections,
    domain,
};

fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(view::RequestsView)]
}

fn domain(ctx: &ServiceContext) -> Arc<dyn DomainService> {
    Arc::new(RequestsDomain::new(ctx))
}
