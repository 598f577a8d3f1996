//! A request's deadlines: the statutory one from the `rules` crate (the tenant's jurisdiction,
//! the regime in force on the day the clock starts, the tenant's zone and region) beside the
//! tenant's promise from its file (`[promises] <type>_days = N`, or `<type>_working_days`,
//! `<type>_business_days`), combined — the earlier binds. Computed once, when the clock starts,
//! and stored in the event that starts it, so a later change of rules or promises never moves a
//! deadline already given.

use privacy_proto::v1::{Deadline, Deadlines, RequestType};
use privacy_service_kit::tenants::{Entity, Tenant};
use privacy_vocab::time::timestamp;
use rules::{Bound, DueOptions, Unit, combine, deadline, pack, promise};

/// The name of a request type in tenant files and rule packs (`do_you_hold`, `complaint`…).
pub fn type_name(t: RequestType) -> &'static str {
    match t {
        RequestType::Unspecified => "unspecified",
        RequestType::Access => "access",
        RequestType::Portability => "portability",
        RequestType::Rectification => "rectification",
        RequestType::Erasure => "erasure",
        RequestType::Restriction => "restriction",
        RequestType::Objection => "objection",
        RequestType::Deactivation => "deactivation",
        RequestType::DoYouHold => "do_you_hold",
        RequestType::PublicContentRemoval => "public_content_removal",
        RequestType::RecipientsList => "recipients_list",
        RequestType::Complaint => "complaint",
    }
}

/// The rule-pack request a type's statutory deadline is found under: the information rights
/// (portability, "do you hold my data", the recipients list) run on the access clock, removal of
/// public content is an erasure; an account deactivation has no statutory deadline of its own.
pub fn rule_request(t: RequestType) -> Option<&'static str> {
    match t {
        RequestType::Access
        | RequestType::Portability
        | RequestType::DoYouHold
        | RequestType::RecipientsList => Some("access"),
        RequestType::Erasure | RequestType::PublicContentRemoval => Some("erasure"),
        RequestType::Rectification => Some("rectification"),
        RequestType::Restriction => Some("restriction"),
        RequestType::Objection => Some("objection"),
        RequestType::Complaint => Some("complaint"),
        RequestType::Deactivation | RequestType::Unspecified => None,
    }
}

/// When a request's clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockStart {
    Received,
    IdentityVerified,
}

impl ClockStart {
    pub fn as_str(self) -> &'static str {
        match self {
            ClockStart::Received => "received",
            ClockStart::IdentityVerified => "identity_verified",
        }
    }
}

fn jurisdiction(tenant: &Tenant) -> Option<rules::Jurisdiction> {
    tenant.jurisdiction.parse().ok()
}

fn local_day(tenant: &Tenant, micros: i64) -> Option<jiff::civil::Date> {
    tenant.local_date(micros)
}

/// What starts the clock of a request of type `t` received at `received` (the rule pack's
/// `clock_start`: proof of identity, or receipt).
pub fn clock_start(tenant: &Tenant, t: RequestType, received: i64) -> ClockStart {
    let rule = jurisdiction(tenant)
        .zip(local_day(tenant, received))
        .and_then(|(j, day)| {
            let pack = pack(j, day).ok()?;
            pack.rule(rule_request(t)?, "complete").ok().cloned()
        });
    match rule {
        Some(r) if r.clock_start == "proof_received" => ClockStart::IdentityVerified,
        _ => ClockStart::Received,
    }
}

/// The promise the tenant's file makes for a request type: (N, unit).
pub fn promised(tenant: &Tenant, t: RequestType) -> Option<(u32, Unit)> {
    let promises = tenant.extra.get("promises")?.as_table()?;
    let name = type_name(t);
    [
        ("days", Unit::CalendarDays),
        ("working_days", Unit::WorkingDays),
        ("business_days", Unit::BusinessDays),
    ]
    .into_iter()
    .find_map(|(suffix, unit)| {
        let n = promises.get(&format!("{name}_{suffix}"))?.as_integer()?;
        Some((u32::try_from(n).ok()?, unit))
    })
}

fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::Hours => "hours",
        Unit::WorkingDays => "working_days",
        Unit::BusinessDays => "business_days",
        Unit::CalendarDays => "calendar_days",
        Unit::CalendarMonths => "calendar_months",
    }
}

fn to_proto(d: &rules::Deadline, duration: u32, unit: Unit) -> Deadline {
    Deadline {
        due: d.due.to_string(),
        due_at: Some(timestamp(d.due_at.as_microsecond())),
        latest: d.latest.to_string(),
        latest_at: Some(timestamp(d.latest_at.as_microsecond())),
        citation: d.citation.clone(),
        confidence: d.confidence.mark().into(),
        note: d.note.clone().unwrap_or_default(),
        calendar: match &d.roll_calendar {
            Some(roll) => format!("{} (a last day rolls over {roll})", d.calendar),
            None => d.calendar.clone(),
        },
        extended: d.extended,
        duration,
        unit: unit_name(unit).into(),
    }
}

/// A deadline could not be computed (a date outside every calendar, no regime in force…).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeadlineError(String);

/// The deadlines of a request of type `t` whose clock started at `start` (microseconds), by
/// `how`; `extended` applies the statute's one extension.
pub fn compute(
    tenant: &Tenant,
    t: RequestType,
    start: i64,
    how: ClockStart,
    extended: bool,
) -> Result<Deadlines, DeadlineError> {
    let err = |e: rules::RulesError| DeadlineError(e.to_string());
    let j = jurisdiction(tenant)
        .ok_or_else(|| DeadlineError(format!("unknown jurisdiction {}", tenant.jurisdiction)))?;
    let at = jiff::Timestamp::from_microsecond(start)
        .map_err(|e| DeadlineError(format!("clock start out of range: {e}")))?;
    let zone = tenant.zone();
    let region = tenant.region.as_deref();
    let agency = tenant.entity == Entity::Agency;
    let options = DueOptions {
        extended,
        agency,
        ..Default::default()
    };
    let day = local_day(tenant, start).ok_or_else(|| DeadlineError("no local date".into()))?;
    let rule = rule_request(t).and_then(|r| {
        pack(j, day)
            .ok()
            .and_then(|p| p.rule(r, "complete").ok().cloned())
    });
    let statute = match (&rule, rule_request(t)) {
        (Some(rule), Some(request)) => Some((
            deadline(j, region, Some(&zone), request, "complete", at, options).map_err(err)?,
            rule.duration,
            rule.unit,
        )),
        _ => None,
    };
    let promise = match promised(tenant, t) {
        Some((n, unit)) => Some((
            promise(
                j,
                region,
                Some(&zone),
                n,
                unit,
                at,
                DueOptions {
                    agency,
                    ..Default::default()
                },
            )
            .map_err(err)?,
            n,
            unit,
        )),
        None => None,
    };
    let extension_allowed = rule
        .as_ref()
        .and_then(|r| r.extension.as_ref())
        .is_some_and(|e| e.max_count > 0);
    let mut out = Deadlines {
        statute: statute.as_ref().map(|(d, n, u)| to_proto(d, *n, *u)),
        promise: promise.as_ref().map(|(d, n, u)| to_proto(d, *n, *u)),
        clock_started_at: Some(timestamp(start)),
        clock_start: how.as_str().into(),
        extension_allowed,
        rule_request: rule_request(t).unwrap_or_default().into(),
        ..Default::default()
    };
    match (statute, promise) {
        (Some((s, ..)), Some((p, ..))) => {
            out.promise_looser_than_statute = p.due_at > s.due_at;
            let c = combine(s, p);
            out.binding = match c.bound {
                Bound::Statute => "statute",
                Bound::Promise => "promise",
            }
            .into();
            out.margin_days = c.margin_days;
        }
        (Some(_), None) => out.binding = "statute".into(),
        (None, Some(_)) => out.binding = "promise".into(),
        (None, None) => {}
    }
    Ok(out)
}

/// The instant the binding deadline ends, if there is one.
pub fn binding_due_at(d: &Deadlines) -> Option<i64> {
    let chosen = match d.binding.as_str() {
        "statute" => d.statute.as_ref(),
        "promise" => d.promise.as_ref(),
        _ => None,
    };
    chosen
        .and_then(|c| c.due_at.as_ref())
        .map(privacy_vocab::time::micros)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use privacy_service_kit::TenantRegistry;

    use super::*;

    fn noon(date: &str) -> i64 {
        let t: jiff::Timestamp = format!("{date}T12:00:00Z").parse().unwrap();
        t.as_microsecond()
    }

    fn registry() -> TenantRegistry {
        TenantRegistry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tenants"))
            .unwrap()
    }

    #[test]
    fn ru_access_extends_by_five_working_days_across_the_may_holidays() {
        let registry = registry();
        let ru = registry.get("ru-crm").unwrap();
        let at = noon("2026-04-27");
        let plain = compute(ru, RequestType::Access, at, ClockStart::Received, false).unwrap();
        let statute = plain.statute.unwrap();
        // 10 working days: 28–30 April, 4–8 May, 12–13 May (1 and 11 May are holidays).
        assert_eq!((statute.due.as_str(), statute.duration), ("2026-05-13", 10));
        assert!(plain.extension_allowed);
        let extended = compute(ru, RequestType::Access, at, ClockStart::Received, true).unwrap();
        let statute = extended.statute.unwrap();
        assert_eq!(statute.due, "2026-05-20");
        assert!(statute.extended);
    }

    #[test]
    fn a_ru_complaint_binds_by_the_promise_in_business_days() {
        let registry = registry();
        let ru = registry.get("ru-crm").unwrap();
        let d = compute(
            ru,
            RequestType::Complaint,
            noon("2026-04-27"),
            ClockStart::Received,
            false,
        )
        .unwrap();
        // No statutory complaint rule in the RU pack: the promise alone binds.
        assert!(d.statute.is_none());
        let promise = d.promise.unwrap();
        assert_eq!(
            (promise.duration, promise.unit.as_str()),
            (30, "business_days")
        );
        assert_eq!(d.binding, "promise");
    }

    #[test]
    fn types_map_to_rule_requests() {
        assert_eq!(rule_request(RequestType::Portability), Some("access"));
        assert_eq!(
            rule_request(RequestType::PublicContentRemoval),
            Some("erasure")
        );
        assert_eq!(rule_request(RequestType::Deactivation), None);
    }
}
