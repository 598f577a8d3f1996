//! [`ConsentDomain`]: the consent rules the service kit's door applies to every event, whether a
//! backend published it on NATS or a gRPC command built it — catalog and basis, the policy in
//! force, the jurisdiction's form rules, representatives and children, new policy versions —
//! and the events a stored event implies (a GPC signal's withdrawal, a child's flag).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::{
    AgeThreshold, AgeThresholds, ChildFlagged, ConsentGranted, ConsentMethod, ConsentRefused,
    ConsentWithdrawn, Envelope, ExpressedBy, PolicyPublished,
};
use privacy_proto::{Rejection, RejectionCode};
use privacy_service_kit::{Derived, DomainService, ServiceContext, Tenant};
use privacy_vocab::time::{micros_or_zero, timestamp};
use prost::Message;

use crate::decision::{ChildStatus, LegalBasis, policy_in_force};
use crate::view::{CONSENT_VIEW, ConsentReader};
use crate::{POLICY_PUBLISHED, jurisdiction};

/// The consent rules, over the consent view.
#[derive(Clone)]
pub struct ConsentDomain {
    pub reader: ConsentReader,
    /// Age thresholds of registrations accepted but perhaps not yet folded into the view (a
    /// registration and a grant may arrive in the same ingest batch). Memory only.
    recent_births: Arc<Mutex<HashMap<(String, String), Thresholds>>>,
}

/// When a subject reaches each child-age threshold: (age, instant), by age.
pub type Thresholds = Vec<(u8, i64)>;

/// Most registrations remembered until the view has them.
const RECENT_BIRTHS: usize = 50_000;
/// Longest policy version.
const MAX_VERSION_LEN: usize = 64;

fn forbidden(field: &str, reason: String) -> Rejection {
    Rejection::new(RejectionCode::Forbidden, field, reason)
}

fn invalid(field: &str, reason: String) -> Rejection {
    Rejection::new(RejectionCode::InvalidField, field, reason)
}

/// The age below which a guardian must consent: the stricter of the law's and the tenant's.
pub fn child_age(tenant: &Tenant, on: jiff::civil::Date) -> Option<u8> {
    let law = jurisdiction::rules_for().child_age(&tenant.jurisdiction, on);
    law.max(child_age_of_tenant(tenant))
}

/// Whether the tenant accepts consent a representative (a legal entity passing on third
/// parties' data) gives: `[consent] representatives_allowed = true` in its file; no otherwise.
pub fn representatives_allowed(tenant: &Tenant) -> bool {
    tenant
        .extra
        .get("consent")
        .and_then(|c| c.get("representatives_allowed"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// Every age a child rule of the tenant may name: its jurisdiction's, in any regime, and its
/// own `[children] min_age`.
pub fn child_ages(tenant: &Tenant) -> Vec<u8> {
    let mut ages = jurisdiction::rules_for().child_ages(&tenant.jurisdiction);
    let own = child_age_of_tenant(tenant);
    ages.extend(own);
    ages.sort_unstable();
    ages.dedup();
    ages
}

fn child_age_of_tenant(tenant: &Tenant) -> Option<u8> {
    tenant
        .extra
        .get("children")
        .and_then(|c| c.get("min_age"))
        .and_then(|v| v.as_integer())
        .and_then(|v| u8::try_from(v).ok())
}

/// The instants a subject born on `birth` reaches each of the tenant's child ages (the start of
/// that birthday, tenant-local): all the child rules keep of a birth date.
pub fn age_thresholds(tenant: &Tenant, birth: jiff::civil::Date) -> Thresholds {
    child_ages(tenant)
        .into_iter()
        .filter_map(|age| {
            let day = birth
                .checked_add(jiff::Span::new().years(i64::from(age)))
                .ok()?;
            Some((age, tenant.start_of(day)?))
        })
        .collect()
}

/// The thresholds of an `AgeThresholds` body.
pub fn thresholds_of(body: &AgeThresholds) -> Thresholds {
    body.thresholds
        .iter()
        .filter_map(|t| {
            Some((
                u8::try_from(t.age).ok()?,
                micros_or_zero(t.reached_at.as_ref()),
            ))
        })
        .collect()
}

/// Whether a subject with `thresholds` is a child at `at_micros`, under the threshold in force
/// on the tenant's local date of that instant. An age the thresholds lack (a tenant's
/// `min_age` changed after the registration) is not guessed: the subject is not known to be a
/// child under it.
pub fn child_window(tenant: &Tenant, thresholds: &[(u8, i64)], at_micros: i64) -> ChildStatus {
    let Some(on) = tenant.local_date(at_micros) else {
        return ChildStatus::default();
    };
    let Some(age) = child_age(tenant, on) else {
        return ChildStatus::default();
    };
    ChildStatus {
        adult_from: thresholds
            .iter()
            .find(|(a, _)| *a == age)
            .map(|(_, at)| *at),
    }
}

impl ConsentDomain {
    pub fn new(ctx: &ServiceContext) -> ConsentDomain {
        ConsentDomain {
            reader: ConsentReader::new(
                ctx.projector
                    .view(CONSENT_VIEW)
                    .expect("the consent view is registered by SPEC"),
            ),
            recent_births: Arc::default(),
        }
    }

    /// When the subject is a child under the tenant's rules, as instants, with the age
    /// threshold in force at `at_micros` (the instant decided: a grant's, or a check's as-of) —
    /// not the one of the birth date, when no law may have been in force yet.
    pub fn child_status(&self, tenant: &Tenant, subject: &str, at_micros: i64) -> ChildStatus {
        let recent = {
            let births = self.recent_births.lock().unwrap_or_else(|p| p.into_inner());
            // Mostly empty: then the lookup need not build its key.
            if births.is_empty() {
                None
            } else {
                births
                    .get(&(tenant.id.clone(), subject.to_owned()))
                    .cloned()
            }
        };
        let thresholds = match recent {
            Some(t) => t,
            None => match self.reader.child(&tenant.id, subject) {
                Ok(Some(body)) => thresholds_of(&body),
                _ => return ChildStatus::default(),
            },
        };
        child_window(tenant, &thresholds, at_micros)
    }

    /// A refusal names consent-based purposes of the catalog and, when it names the notice
    /// shown, the version in force then.
    fn check_refusal(
        &self,
        tenant: &Tenant,
        env: &Envelope,
        r: &ConsentRefused,
    ) -> Result<(), Rejection> {
        for (i, purpose) in r.purposes.iter().enumerate() {
            match tenant.basis_of(purpose) {
                None => {
                    return Err(invalid(
                        "consent_refused.purposes",
                        format!("purposes[{i}] is not in tenant {}'s catalog", tenant.id),
                    ));
                }
                Some(LegalBasis::Consent) => {}
                Some(other) => {
                    return Err(forbidden(
                        "consent_refused.purposes",
                        format!(
                            "purpose {purpose:?} is based on {other}; consent is not asked for it"
                        ),
                    ));
                }
            }
        }
        if r.policy_version.is_empty() {
            return Ok(());
        }
        let at = micros_or_zero(env.occurred_at.as_ref());
        let policies = self
            .reader
            .policies(&tenant.id)
            .map_err(|e| invalid("consent_refused.policy_version", e.to_string()))?;
        match policy_in_force(&policies, at) {
            Some(p) if p.version == r.policy_version => Ok(()),
            other => Err(forbidden(
                "consent_refused.policy_version",
                format!(
                    "the policy version given is not the one in force when consent was refused ({})",
                    other.map_or_else(|| "none is".to_owned(), |p| format!("{:?} is", p.version))
                ),
            )),
        }
    }

    fn check_grant(
        &self,
        tenant: &Tenant,
        env: &Envelope,
        g: &ConsentGranted,
    ) -> Result<(), Rejection> {
        let at = micros_or_zero(env.occurred_at.as_ref());
        let day = tenant.local_date(at).unwrap_or_default();
        for (i, purpose) in g.purposes.iter().enumerate() {
            match tenant.basis_of(purpose) {
                None => {
                    return Err(invalid(
                        "consent_granted.purposes",
                        format!("purposes[{i}] is not in tenant {}'s catalog", tenant.id),
                    ));
                }
                Some(LegalBasis::Consent) => {}
                Some(other) => {
                    return Err(forbidden(
                        "consent_granted.purposes",
                        format!("purpose {purpose:?} is based on {other}; it needs no consent"),
                    ));
                }
            }
        }
        let policies = self
            .reader
            .policies(&tenant.id)
            .map_err(|e| invalid("consent_granted.policy_version", e.to_string()))?;
        match policy_in_force(&policies, at) {
            Some(p) if p.version == g.policy_version => {}
            Some(p) => {
                return Err(forbidden(
                    "consent_granted.policy_version",
                    format!(
                        "the policy version given is not the one in force when consent was given \
                         ({:?} is)",
                        p.version
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
        if g.expressed_by == ExpressedBy::Representative as i32 && !representatives_allowed(tenant)
        {
            return Err(forbidden(
                "consent_granted.expressed_by",
                format!(
                    "tenant {} does not accept consent passed on by a representative \
                     ([consent] representatives_allowed in its tenant file)",
                    tenant.id
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
            .is_some_and(|u| privacy_vocab::time::micros(u) <= at)
        {
            return Err(invalid(
                "consent_granted.valid_until",
                "valid_until must be after occurred_at".into(),
            ));
        }
        let child = self.child_status(tenant, &env.subject_id, at);
        if child.is_child_at(at) && g.expressed_by != ExpressedBy::Guardian as i32 {
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

    /// A new policy version: a version id, the notice's hash, purposes of the catalog, and a
    /// version not published before.
    fn check_policy(&self, tenant: &Tenant, body: &[u8]) -> Result<(), Rejection> {
        let policy = PolicyPublished::decode(body)
            .map_err(|e| invalid("policy_published", format!("does not decode: {e}")))?;
        if policy.version.is_empty() || policy.version.len() > MAX_VERSION_LEN {
            return Err(invalid(
                "version",
                format!("1 to {MAX_VERSION_LEN} characters"),
            ));
        }
        if policy.notice_hash.is_empty() {
            return Err(Rejection::new(
                RejectionCode::MissingField,
                "notice_hash",
                "notice_hash is required",
            ));
        }
        let Some(effective_at) = &policy.effective_at else {
            return Err(Rejection::new(
                RejectionCode::MissingField,
                "effective_at",
                "effective_at is required",
            ));
        };
        privacy_proto::validate::check_timestamp("effective_at", effective_at)?;
        privacy_proto::validate::check_list_len(
            "purposes",
            policy.purposes.len(),
            &Default::default(),
        )?;
        for (i, p) in policy.purposes.iter().enumerate() {
            if tenant.purpose(p).is_none() {
                return Err(invalid(
                    "purposes",
                    format!("purposes[{i}] is not in tenant {}'s catalog", tenant.id),
                ));
            }
        }
        let existing = self
            .reader
            .policies(&tenant.id)
            .map_err(|e| invalid("version", e.to_string()))?;
        if existing.iter().any(|p| p.version == policy.version) {
            return Err(Rejection::new(
                RejectionCode::AlreadyExists,
                "version",
                format!("{:?} is already published", policy.version),
            ));
        }
        Ok(())
    }

    /// A Global Privacy Control signal withdraws the sale/marketing purposes where the
    /// jurisdiction honours it; the purposes are resolved now and stored as a fact.
    fn gpc_withdrawal(&self, tenant: &Tenant, envelope: &Envelope) -> Option<Derived> {
        let day = tenant.local_date(micros_or_zero(envelope.occurred_at.as_ref()))?;
        if !jurisdiction::rules_for().honours_gpc(&tenant.jurisdiction, day) {
            return None;
        }
        let purposes: Vec<String> = tenant
            .purposes
            .iter()
            .filter(|p| p.legal_basis == "consent" && p.gpc_opt_out)
            .map(|p| p.id.clone())
            .collect();
        (!purposes.is_empty()).then(|| {
            Derived::user(
                "gpc",
                ConsentWithdrawn {
                    purposes,
                    method: "global privacy control".into(),
                    ..Default::default()
                },
            )
        })
    }

    /// A registration's birth date, as the instants the child rules need, and a child
    /// registered without a guardian's consent flagged for erasure.
    fn child_events(&self, tenant: &Tenant, envelope: &Envelope, birth: &str) -> Vec<Derived> {
        let Ok(birth) = birth.parse::<jiff::civil::Date>() else {
            return Vec::new();
        };
        let thresholds = age_thresholds(tenant, birth);
        let mut out = Vec::new();
        if !thresholds.is_empty() {
            out.push(Derived::domain(
                "age_thresholds",
                AgeThresholds {
                    thresholds: thresholds
                        .iter()
                        .map(|(age, at)| AgeThreshold {
                            age: u32::from(*age),
                            reached_at: Some(timestamp(*at)),
                        })
                        .collect(),
                },
            ));
        }
        out.extend(self.child_flag(tenant, envelope, &thresholds));
        out
    }

    /// A child registered without a guardian's consent is flagged for erasure.
    fn child_flag(
        &self,
        tenant: &Tenant,
        envelope: &Envelope,
        thresholds: &[(u8, i64)],
    ) -> Option<Derived> {
        let at = micros_or_zero(envelope.occurred_at.as_ref());
        let age = child_age(tenant, tenant.local_date(at)?)?;
        child_window(tenant, thresholds, at)
            .is_child_at(at)
            .then(|| {
            Derived::domain(
                "child_flagged",
                ChildFlagged {
                    child_age: u32::from(age),
                    jurisdiction: tenant.jurisdiction.clone(),
                    reason: format!(
                        "registered under {age} without a guardian's consent; route the data to erasure"
                    ),
                },
            )
        })
    }
}

impl DomainService for ConsentDomain {
    fn check(&self, tenant: &Tenant, envelope: &Envelope) -> Result<(), Rejection> {
        match &envelope.payload {
            Some(Payload::SubjectRegistered(r)) if !r.birth_date.is_empty() => {
                let Ok(birth) = r.birth_date.parse::<jiff::civil::Date>() else {
                    return Ok(());
                };
                let thresholds = age_thresholds(tenant, birth);
                let mut births = self.recent_births.lock().unwrap_or_else(|p| p.into_inner());
                if births.len() >= RECENT_BIRTHS {
                    births.clear();
                }
                births.insert((tenant.id.clone(), envelope.subject_id.clone()), thresholds);
                Ok(())
            }
            Some(Payload::ConsentGranted(g)) => self.check_grant(tenant, envelope, g),
            Some(Payload::ConsentRefused(r)) => self.check_refusal(tenant, envelope, r),
            Some(Payload::ConsentWithdrawn(w)) => {
                for (i, purpose) in w.purposes.iter().enumerate() {
                    if tenant.purpose(purpose).is_none() {
                        return Err(invalid(
                            "consent_withdrawn.purposes",
                            format!("purposes[{i}] is not in tenant {}'s catalog", tenant.id),
                        ));
                    }
                }
                Ok(())
            }
            Some(Payload::DomainEvent(d)) if envelope.event_type == POLICY_PUBLISHED => {
                self.check_policy(tenant, &d.body)
            }
            _ => Ok(()),
        }
    }

    fn derive(&self, tenant: &Tenant, envelope: &Envelope) -> Vec<Derived> {
        match &envelope.payload {
            Some(Payload::ConsentSignal(sig))
                if sig.signal.eq_ignore_ascii_case("gpc") && sig.value =>
            {
                self.gpc_withdrawal(tenant, envelope).into_iter().collect()
            }
            Some(Payload::SubjectRegistered(r)) if !r.birth_date.is_empty() => {
                self.child_events(tenant, envelope, &r.birth_date)
            }
            _ => Vec::new(),
        }
    }

    fn routes(&self, ctx: &ServiceContext, routes: &mut tonic::service::RoutesBuilder) {
        crate::grpc::add_routes(ctx, self.clone(), routes);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use privacy_service_kit::TenantRegistry;

    use super::*;

    /// Noon of `date` in the tenant's zone.
    fn micros(tenant: &Tenant, date: &str) -> i64 {
        tenant.start_of(date.parse().unwrap()).unwrap() + 12 * 3_600_000_000
    }

    #[test]
    fn the_child_threshold_is_the_one_in_force_when_deciding() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tenants");
        let registry = TenantRegistry::load(&dir).unwrap();
        let vn = registry.get("vn-apihub").unwrap();
        let born: jiff::civil::Date = "2012-03-10".parse().unwrap();
        // In March 2026 (Law 91, child under 16) a 14-year-old is a child, although no Vietnamese
        // rule was in force on the birth date (the tenant's own 13 alone would say adult).
        let now = micros(vn, "2026-03-15");
        let thresholds = age_thresholds(vn, born);
        // The law's 16 and the tenant's own 13, and nothing else of the birth date.
        assert_eq!(
            thresholds.iter().map(|(age, _)| *age).collect::<Vec<_>>(),
            [13, 16]
        );
        let status = child_window(vn, &thresholds, now);
        assert!(status.is_child_at(now), "{status:?}");
        // Across the regime switch: before Decree 13 (2023-07-01) only the tenant's 13 applied,
        // so someone born 2008-03-01 was an adult in June 2022 and a child again under the
        // decree in August 2023 (15 < 16).
        let thresholds = age_thresholds(vn, "2008-03-01".parse().unwrap());
        let before = micros(vn, "2022-06-01");
        assert!(!child_window(vn, &thresholds, before).is_child_at(before));
        let after = micros(vn, "2023-08-01");
        assert!(child_window(vn, &thresholds, after).is_child_at(after));
        // A threshold instant is the start of the tenant-local birthday.
        assert_eq!(
            thresholds.last().map(|(_, at)| *at),
            vn.start_of("2024-03-01".parse().unwrap())
        );
    }
}
