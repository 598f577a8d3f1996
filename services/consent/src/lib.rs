//! The consent service: purposes, policy versions and provable per-purpose consent.
//!
//! Today a skeleton over the service kit — it consumes its subjects, stores them in its own
//! event store, keeps the subject timeline and serves AuditService. Its domain (commands,
//! aggregates, projections, gRPC service) is added by its own issue.

#![forbid(unsafe_code)]

pub mod domain;

use privacy_service_kit::ServiceSpec;

/// What the consent service consumes and where it listens.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "consent",
    default_port: 50051,
    consumes: &["consent.*", "subject.*"],
    projections: ServiceSpec::no_projections,
    domain: ServiceSpec::no_domain,
};
