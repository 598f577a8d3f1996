//! The retention service: data inventory, retention schedules, legal holds and erasure.
//!
//! Today a skeleton over the service kit — it consumes its subjects, stores them in its own
//! event store, keeps the subject timeline and serves AuditService. Its domain (commands,
//! aggregates, projections, gRPC service) is added by its own issue.

#![forbid(unsafe_code)]

use privacy_service_kit::ServiceSpec;

/// What the retention service is to the kit (what it consumes comes from the event catalogue).
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "retention",
    default_port: 50053,
    publishes: &[],
    projections: ServiceSpec::no_projections,
    domain: ServiceSpec::no_domain,
};
