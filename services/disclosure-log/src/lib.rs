//! The disclosure-log service: one record per disclosure of personal data to a third party
//! (DESIGN §6 "Disclosure log"), each checked when recorded and never refused for a rule — a bad
//! disclosure is evidence.
//!
//! - [`checks`]: the rules a disclosure is checked against when recorded (cross-border transfer
//!   without what the jurisdiction requires on that date, special categories, a state body
//!   without its request reference, a purpose outside the catalogue);
//! - [`view`]: the `ledger` projection (every disclosure with its flags and consent check, by
//!   subject, recipient, cross-border, state body, flagged, unchecked);
//! - [`domain`]: [`DisclosureDomain`], the flags an event implies, the consent checker;
//! - [`consent_check`]: consent-based disclosures asked of the consent service as of their
//!   instant, retried while it is unreachable (the record stays `unchecked`, never guessed);
//! - [`grpc`]: the `DisclosureLogService` handlers.

#![forbid(unsafe_code)]

pub mod checks;
pub mod consent_check;
pub mod domain;
pub mod grpc;
pub mod view;

use std::sync::Arc;

use privacy_event_store::Projection;
use privacy_service_kit::{DomainService, ServiceContext, ServiceSpec};

pub use domain::DisclosureDomain;

/// The domain events of the service, by catalogue name.
pub mod events {
    use privacy_proto::DomainBody;
    use privacy_proto::v1::*;

    pub const RECORDED: &str = <DisclosureRecorded as DomainBody>::EVENT_TYPE;
    pub const FLAGGED: &str = <DisclosureFlagged as DomainBody>::EVENT_TYPE;
    pub const CONSENT_CHECKED: &str = <DisclosureConsentChecked as DomainBody>::EVENT_TYPE;

    pub const ALL: &[&str] = &[RECORDED, FLAGGED, CONSENT_CHECKED];
}

/// What the disclosure-log service is to the kit (what it consumes comes from the event
/// catalogue).
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "disclosure-log",
    default_port: 50054,
    publishes: events::ALL,
    projections,
    domain,
};

fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(view::LedgerView)]
}

fn domain(ctx: &ServiceContext) -> Arc<dyn DomainService> {
    Arc::new(DisclosureDomain::new(ctx))
}
