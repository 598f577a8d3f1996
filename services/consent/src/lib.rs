//! The consent service: policy versions, provable per-purpose consent, withdrawal, the child
//! rules, and consent checks as of any instant (DESIGN §6 "Consent").
//!
//! - [`domain`]: the pure decision and its types;
//! - [`view`]: the projection the decision reads (histories, policies, birth dates);
//! - [`jurisdiction`]: the jurisdiction facts it needs, behind one small interface;
//! - [`grpc`]: the `ConsentService` handlers;
//! - this file: [`ConsentDomain`], the rules applied to every consent event, whether it comes
//!   from NATS or from a gRPC command.

#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod jurisdiction;
pub mod receipt;
pub mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use privacy_event_store::Projection;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::{
    ChildFlagged, ConsentGranted, ConsentMethod, ConsentWithdrawn, DomainEvent, Envelope,
    ExpressedBy,
};
use privacy_proto::{Rejection, RejectionCode};
use privacy_service_kit::{DomainService, ServiceContext, ServiceSpec, Tenant};
use prost::Message;

use crate::domain::{Basis, ChildStatus, policy_in_force};
use crate::view::{CONSENT_VIEW, ConsentReader, ConsentView, POLICY_PUBLISHED, micros};

/// Event type of the domain event that flags a child registered without a guardian.
pub const CHILD_FLAGGED: &str = "subject.child_flagged";

/// Purposes a Global Privacy Control signal opts out of (sale, sharing, targeted advertising).
pub const OPT_OUT_PURPOSES: &[&str] = &["marketing", "advertising", "sale", "sharing"];

/// What the consent service consumes and where it listens.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "consent",
    default_port: 50051,
    consumes: &["consent.*", "subject.*"],
    projections,
    domain,
};

fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(ConsentView)]
}

fn domain(ctx: &ServiceContext) -> Arc<dyn DomainService> {
    Arc::new(ConsentDomain::new(ctx))
}

/// The consent rules, over the consent view.
#[derive(Clone)]
pub struct ConsentDomain {
    pub reader: ConsentReader,
    /// Birth dates from registrations accepted but perhaps not yet folded into the view (a
    /// registration and a grant may arrive in the same ingest batch).
    recent_births: Arc<Mutex<HashMap<(String, String), String>>>,
}

/// Most registrations remembered until the view has them.
const RECENT_BIRTHS: usize = 50_000;

fn forbidden(field: &str, reason: String) -> Rejection {
    Rejection::new(RejectionCode::Forbidden, field, reason)
}

/// The basis a tenant declares for a purpose (`None`: not in its catalog).
pub fn basis_of(tenant: &Tenant, purpose: &str) -> Option<Basis> {
    tenant
        .purpose(purpose)
        .and_then(|p| Basis::parse(&p.legal_basis))
}

/// The tenant's time zone (validated when the registry loaded).
pub fn zone_of(tenant: &Tenant) -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get(&tenant.time_zone).unwrap_or(jiff::tz::TimeZone::UTC)
}

/// The local date (in the tenant's zone) an event happened on.
pub fn local_date(tenant: &Tenant, envelope: &Envelope) -> jiff::civil::Date {
    jiff::Timestamp::from_microsecond(micros(envelope.occurred_at.as_ref()))
        .map(|t| t.to_zoned_datetime(zone_of(tenant)).date())
        .unwrap_or_default()
}

/// The age below which a guardian must consent: the stricter of the law's and the tenant's.
pub fn child_age(tenant: &Tenant, on: jiff::civil::Date) -> Option<u8> {
    let law = jurisdiction::rules_for().child_age(&tenant.jurisdiction, on);
    let own = tenant
        .extra
        .get("children")
        .and_then(|c| c.get("min_age"))
        .and_then(|v| v.as_integer())
        .and_then(|v| u8::try_from(v).ok());
    law.max(own)
}

impl ConsentDomain {
    pub fn new(ctx: &ServiceContext) -> ConsentDomain {
        ConsentDomain {
            reader: ConsentReader {
                view: ctx
                    .projector
                    .view(CONSENT_VIEW)
                    .expect("the consent view is registered by SPEC"),
            },
            recent_births: Arc::default(),
        }
    }

    /// When the subject is a child under the tenant's rules, as instants.
    pub fn child_status(&self, tenant: &Tenant, subject: &str) -> ChildStatus {
        let recent = self
            .recent_births
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.id.clone(), subject.to_owned()))
            .cloned();
        let birth_date = match recent {
            Some(b) => b,
            None => match self.reader.child(&tenant.id, subject) {
                Ok(Some(info)) => info.birth_date,
                _ => return ChildStatus::default(),
            },
        };
        let Ok(birth) = birth_date.parse::<jiff::civil::Date>() else {
            return ChildStatus::default();
        };
        let Some(age) = child_age(tenant, birth) else {
            return ChildStatus::default();
        };
        let zone = zone_of(tenant);
        let at = |d: jiff::civil::Date| {
            d.to_zoned_datetime(zone.clone())
                .map(|z| z.timestamp().as_microsecond())
                .ok()
        };
        let adult = birth
            .checked_add(jiff::Span::new().years(i64::from(age)))
            .ok()
            .and_then(at);
        ChildStatus {
            child_since: at(birth),
            adult_from: adult,
        }
    }

    fn check_grant(
        &self,
        tenant: &Tenant,
        env: &Envelope,
        g: &ConsentGranted,
    ) -> Result<(), Rejection> {
        let at = micros(env.occurred_at.as_ref());
        let zone = zone_of(tenant);
        let day = jiff::Timestamp::from_microsecond(at)
            .map(|t| t.to_zoned_datetime(zone).date())
            .unwrap_or_default();
        for purpose in &g.purposes {
            match basis_of(tenant, purpose) {
                None => {
                    return Err(Rejection::new(
                        RejectionCode::InvalidField,
                        "consent_granted.purposes",
                        format!(
                            "purpose {purpose:?} is not in tenant {}'s catalog",
                            tenant.id
                        ),
                    ));
                }
                Some(Basis::Consent) => {}
                Some(other) => {
                    return Err(forbidden(
                        "consent_granted.purposes",
                        format!(
                            "purpose {purpose:?} is based on {}; it needs no consent",
                            other.as_str()
                        ),
                    ));
                }
            }
        }
        let policies = self.reader.policies(&tenant.id).map_err(|e| {
            Rejection::new(
                RejectionCode::InvalidField,
                "consent_granted.policy_version",
                e.to_string(),
            )
        })?;
        match policy_in_force(&policies, at) {
            Some(p) if p.version == g.policy_version => {}
            Some(p) => {
                return Err(forbidden(
                    "consent_granted.policy_version",
                    format!(
                        "policy version {:?} is not the one in force when consent was given ({:?} is)",
                        g.policy_version, p.version
                    ),
                ));
            }
            None => {
                return Err(forbidden(
                    "consent_granted.policy_version",
                    format!(
                        "no policy version of tenant {} is in force when consent was given",
                        tenant.id
                    ),
                ));
            }
        }
        let form = jurisdiction::rules_for().consent_form(&tenant.jurisdiction, day);
        let passive = [
            ConsentMethod::PreTickedCheckbox as i32,
            ConsentMethod::Silent as i32,
        ];
        if form.pre_ticked_forbidden && passive.contains(&g.method) {
            return Err(forbidden(
                "consent_granted.method",
                format!(
                    "{} does not accept a pre-ticked or silent consent",
                    tenant.jurisdiction
                ),
            ));
        }
        if form.bundling_forbidden && g.bundled {
            return Err(forbidden(
                "consent_granted.bundled",
                format!(
                    "{} requires consent separate from other terms on {day}",
                    tenant.jurisdiction
                ),
            ));
        }
        if g.expressed_by == ExpressedBy::Representative as i32 && g.attestation_ref.is_empty() {
            return Err(Rejection::new(
                RejectionCode::MissingField,
                "consent_granted.attestation_ref",
                "a representative's consent needs an attestation reference",
            ));
        }
        if g.valid_until
            .as_ref()
            .is_some_and(|u| micros(Some(u)) <= at)
        {
            return Err(Rejection::new(
                RejectionCode::InvalidField,
                "consent_granted.valid_until",
                "valid_until must be after occurred_at",
            ));
        }
        let child = self.child_status(tenant, &env.subject_id);
        if child.child_since.is_some_and(|s| s <= at)
            && child.adult_from.is_none_or(|a| at < a)
            && g.expressed_by != ExpressedBy::Guardian as i32
        {
            return Err(forbidden(
                "consent_granted.expressed_by",
                format!(
                    "the subject is under {} ({}): a guardian must give consent",
                    child_age(tenant, day).unwrap_or_default(),
                    tenant.jurisdiction
                ),
            ));
        }
        Ok(())
    }
}

impl DomainService for ConsentDomain {
    fn check(&self, tenant: &Tenant, envelope: &Envelope) -> Result<(), Rejection> {
        match &envelope.payload {
            Some(Payload::SubjectRegistered(r)) if !r.birth_date.is_empty() => {
                let mut births = self.recent_births.lock().unwrap_or_else(|p| p.into_inner());
                if births.len() >= RECENT_BIRTHS {
                    births.clear();
                }
                births.insert(
                    (tenant.id.clone(), envelope.subject_id.clone()),
                    r.birth_date.clone(),
                );
                Ok(())
            }
            Some(Payload::ConsentGranted(g)) => self.check_grant(tenant, envelope, g),
            Some(Payload::ConsentWithdrawn(w)) => {
                for purpose in &w.purposes {
                    if tenant.purpose(purpose).is_none() {
                        return Err(Rejection::new(
                            RejectionCode::InvalidField,
                            "consent_withdrawn.purposes",
                            format!(
                                "purpose {purpose:?} is not in tenant {}'s catalog",
                                tenant.id
                            ),
                        ));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn derive(&self, tenant: &Tenant, envelope: &Envelope) -> Vec<Envelope> {
        let derived = |suffix: &str, event_type: &str, payload: Payload| Envelope {
            event_id: format!("{}/{suffix}", envelope.event_id),
            event_type: event_type.into(),
            schema_version: 1,
            tenant: envelope.tenant.clone(),
            subject_id: envelope.subject_id.clone(),
            occurred_at: envelope.occurred_at,
            source: "consent".into(),
            causation_id: envelope.event_id.clone(),
            correlation_id: envelope.correlation_id.clone(),
            payload: Some(payload),
            ..Default::default()
        };
        match &envelope.payload {
            // A Global Privacy Control signal withdraws the sale/marketing purposes where the
            // jurisdiction honours it; the purposes are resolved now and stored as a fact.
            Some(Payload::ConsentSignal(sig))
                if sig.signal.eq_ignore_ascii_case("gpc")
                    && sig.value
                    && jurisdiction::rules_for()
                        .honours_gpc(&tenant.jurisdiction, local_date(tenant, envelope)) =>
            {
                let purposes: Vec<String> = tenant
                    .purposes
                    .iter()
                    .filter(|p| {
                        p.legal_basis == "consent" && OPT_OUT_PURPOSES.contains(&p.id.as_str())
                    })
                    .map(|p| p.id.clone())
                    .collect();
                if purposes.is_empty() {
                    return Vec::new();
                }
                vec![derived(
                    "gpc",
                    "consent.withdrawn",
                    Payload::ConsentWithdrawn(ConsentWithdrawn {
                        purposes,
                        method: "global privacy control".into(),
                    }),
                )]
            }
            // A child registered without a guardian's consent is flagged for erasure.
            Some(Payload::SubjectRegistered(r)) if !r.birth_date.is_empty() => {
                let Ok(birth) = r.birth_date.parse::<jiff::civil::Date>() else {
                    return Vec::new();
                };
                let at = micros(envelope.occurred_at.as_ref());
                let Ok(today) = jiff::Timestamp::from_microsecond(at)
                    .map(|t| t.to_zoned_datetime(zone_of(tenant)).date())
                else {
                    return Vec::new();
                };
                let Some(age) = child_age(tenant, today) else {
                    return Vec::new();
                };
                let adult = birth.checked_add(jiff::Span::new().years(i64::from(age)));
                if adult.is_ok_and(|a| today < a) {
                    let body = ChildFlagged {
                        child_age: u32::from(age),
                        jurisdiction: tenant.jurisdiction.clone(),
                        reason: format!(
                            "registered under {age} without a guardian's consent; route the data to erasure"
                        ),
                    };
                    return vec![derived(
                        "child_flagged",
                        CHILD_FLAGGED,
                        Payload::DomainEvent(DomainEvent {
                            body: body.encode_to_vec(),
                        }),
                    )];
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn publishes(&self, event_type: &str) -> bool {
        matches!(event_type, "consent.granted" | "consent.withdrawn")
            || event_type == POLICY_PUBLISHED
            || event_type == CHILD_FLAGGED
    }

    fn routes(&self, ctx: &ServiceContext, routes: &mut tonic::service::RoutesBuilder) {
        grpc::add_routes(ctx, self.clone(), routes);
    }
}
