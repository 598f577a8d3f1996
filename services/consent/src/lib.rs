//! The consent service: policy versions, provable per-purpose consent, withdrawal, the child
//! rules, and consent checks as of any instant (DESIGN §6 "Consent").
//!
//! - [`decision`]: the pure decision and its types;
//! - [`domain`]: [`ConsentDomain`], the rules the kit's door applies to every consent event,
//!   whether it comes from NATS or from a gRPC command, and the events they imply;
//! - [`view`]: the projection the decision reads (histories, policies, age thresholds);
//! - [`jurisdiction`]: the jurisdiction facts it needs, behind one small interface;
//! - [`grpc`]: the `ConsentService` handlers;
//! - [`receipt`]: consent receipts.

#![forbid(unsafe_code)]

pub mod decision;
pub mod domain;
pub mod grpc;
pub mod jurisdiction;
pub mod receipt;
pub mod view;

use std::sync::Arc;

use privacy_event_store::Projection;
use privacy_proto::DomainBody;
use privacy_proto::v1::{AgeThresholds, ChildFlagged, PolicyPublished};
use privacy_service_kit::{DomainService, ServiceContext, ServiceSpec};

pub use domain::ConsentDomain;

/// Event type of the domain event that records a policy version.
pub const POLICY_PUBLISHED: &str = <PolicyPublished as DomainBody>::EVENT_TYPE;
/// Event type of the domain event that flags a child registered without a guardian.
pub const CHILD_FLAGGED: &str = <ChildFlagged as DomainBody>::EVENT_TYPE;
/// Event type of the domain event that keeps, of a birth date, the instants the child rules
/// need.
pub const AGE_THRESHOLDS: &str = <AgeThresholds as DomainBody>::EVENT_TYPE;

/// The consent service: what it publishes, its view, its domain. What it consumes comes from the
/// event catalogue (`subject.*`, `consent.*`).
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "consent",
    default_port: 50051,
    publishes: &[
        "consent.granted",
        "consent.withdrawn",
        POLICY_PUBLISHED,
        CHILD_FLAGGED,
        AGE_THRESHOLDS,
    ],
    projections,
    domain,
};

fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(view::ConsentView)]
}

fn domain(ctx: &ServiceContext) -> Arc<dyn DomainService> {
    Arc::new(ConsentDomain::new(ctx))
}
