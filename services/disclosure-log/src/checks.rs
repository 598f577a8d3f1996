//! The rules a disclosure is checked against when recorded, each broken rule a flag with its
//! citation: a cross-border transfer without what the tenant's jurisdiction requires on that
//! date (the rule pack's `[[cross_border]]` requirements that name the transfer mechanisms
//! meeting them), special categories (the pack's and the tenant file's `[disclosures]
//! special_categories`), a cross-border transfer the tenant's own policy rules out (`[disclosures]
//! no_cross_border`), a state body without its motivated-request reference, and a purpose
//! outside the tenant's catalogue. Consent is checked apart, against the consent service
//! ([`crate::consent_check`]). Decided at ingest from configuration and stored as an event, so a
//! rebuild gives the same flags.

use privacy_proto::v1::{DataDisclosed, DisclosureFlag, LegalBasis, RecipientRole};
use privacy_service_kit::Tenant;

/// What the checks found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checked {
    /// The recipient's country is outside the jurisdiction's home countries.
    pub cross_border: bool,
    pub flags: Vec<DisclosureFlag>,
}

fn flag(rule: &str, citation: impl Into<String>, detail: impl Into<String>) -> DisclosureFlag {
    DisclosureFlag {
        rule: rule.into(),
        citation: citation.into(),
        detail: detail.into(),
    }
}

/// The tenant file's own special categories (`[disclosures] special_categories`).
pub fn tenant_special(tenant: &Tenant) -> Vec<String> {
    tenant
        .extra
        .get("disclosures")
        .and_then(|d| d.get("special_categories"))
        .and_then(|v| v.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The tenant policy's promise of no cross-border transfer (`[disclosures] no_cross_border`,
/// the promise's citation), if it makes one.
pub fn no_cross_border_promise(tenant: &Tenant) -> Option<&str> {
    tenant
        .extra
        .get("disclosures")
        .and_then(|d| d.get("no_cross_border"))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
}

/// Whether a disclosure needs the consent service's answer: consent-based, of one subject.
pub fn needs_consent(d: &DataDisclosed, subject_id: &str) -> bool {
    d.legal_basis == LegalBasis::Consent as i32 && !subject_id.is_empty()
}

/// Checks a disclosure (as stored: free text may be sealed) made at `at` (microseconds).
pub fn check(tenant: &Tenant, d: &DataDisclosed, at: i64) -> Checked {
    let mut out = Checked::default();
    let pack = tenant.local_date(at).and_then(|date| {
        let j = tenant.jurisdiction.parse().ok()?;
        rules::pack(j, date).ok().map(|p| (p, date))
    });
    match pack {
        None => out.flags.push(flag(
            "rules_unavailable",
            "",
            format!(
                "no rule pack of jurisdiction {} is in force on that date: transfer and \
                 special-category rules not checked",
                tenant.jurisdiction
            ),
        )),
        Some((pack, date)) => {
            out.cross_border =
                !pack.home_countries.is_empty() && !pack.home_countries.contains(&d.country);
            if let Some(promise) = no_cross_border_promise(tenant).filter(|_| out.cross_border) {
                out.flags.push(flag(
                    "policy_no_cross_border",
                    promise,
                    format!(
                        "to {}: the tenant's policy promises no cross-border transfer",
                        d.country
                    ),
                ));
            }
            if out.cross_border {
                for rule in pack.cross_border.iter().filter(|r| r.in_force(date)) {
                    if rule.satisfied_by.is_empty()
                        || rule.satisfied_by.contains(&d.transfer_mechanism)
                    {
                        continue;
                    }
                    let named = if d.transfer_mechanism.is_empty() {
                        "none named".to_owned()
                    } else {
                        format!("{} does not meet it", d.transfer_mechanism)
                    };
                    out.flags.push(flag(
                        "cross_border",
                        &rule.citation,
                        format!(
                            "to {}: {}; transfer_mechanism: {named} (one of {})",
                            d.country,
                            rule.requirement,
                            rule.satisfied_by.join(", ")
                        ),
                    ));
                }
            }
            let by_law = pack
                .special_categories
                .as_ref()
                .map(|s| (s.categories.as_slice(), s.citation.as_str()));
            let own = tenant_special(tenant);
            for c in &d.categories {
                let citation = match by_law {
                    Some((list, citation)) if list.contains(c) => citation.to_owned(),
                    _ if own.contains(c) => {
                        "the tenant file's [disclosures] special_categories".to_owned()
                    }
                    _ => continue,
                };
                out.flags.push(flag(
                    "special_category",
                    citation,
                    format!("category {c} is special"),
                ));
            }
        }
    }
    let has_ref = !d.request_ref.is_empty() || d.personal.contains_key("request_ref");
    if d.recipient_role == RecipientRole::StateBody as i32 && !has_ref {
        out.flags.push(flag(
            "state_body_without_request",
            "a state body receives personal data on its motivated request, whose reference is \
             kept (e.g. 152-FZ Art. 6(1); the tenant's policy)",
            "request_ref is missing",
        ));
    }
    let anonymised = d.legal_basis == LegalBasis::Anonymised as i32;
    if d.purpose.is_empty() && !anonymised {
        out.flags.push(flag(
            "purpose_not_in_catalog",
            "purpose limitation: data is disclosed for a stated purpose",
            "no purpose named",
        ));
    } else if !d.purpose.is_empty() && tenant.purpose(&d.purpose).is_none() {
        out.flags.push(flag(
            "purpose_not_in_catalog",
            "purpose limitation: data is disclosed for a stated purpose",
            format!(
                "purpose {} is not in tenant {}'s catalog",
                d.purpose, tenant.id
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use privacy_service_kit::TenantRegistry;

    use super::*;

    fn tenants() -> TenantRegistry {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tenants");
        TenantRegistry::load(&dir).unwrap()
    }

    fn at(tenant: &Tenant, date: &str) -> i64 {
        tenant.start_of(date.parse().unwrap()).unwrap() + 12 * 3_600_000_000
    }

    fn rules(c: &Checked) -> Vec<&str> {
        c.flags.iter().map(|f| f.rule.as_str()).collect()
    }

    #[test]
    fn cross_border_follows_the_pack_in_force_on_the_date() {
        let registry = tenants();
        let ru = registry.get("ru-crm").unwrap();
        let mut d = DataDisclosed {
            recipient: "Partner GmbH".into(),
            recipient_role: RecipientRole::Partner as i32,
            country: "DE".into(),
            categories: vec!["contact".into()],
            purpose: ru.purposes[0].id.clone(),
            legal_basis: LegalBasis::Contract as i32,
            system: "crm-sync".into(),
            ..Default::default()
        };
        // ru-crm's policy (4.4) promises no cross-border transfer: every one is flagged, with
        // the policy as citation, whatever the law asks.
        let promise = |c: &Checked| {
            c.flags
                .iter()
                .any(|f| f.rule == "policy_no_cross_border" && f.citation.contains("4.4"))
        };
        // Before the notice rule (2023-03-01): cross-border, nothing required per disclosure.
        let before = check(ru, &d, at(ru, "2022-06-01"));
        assert!(before.cross_border);
        assert_eq!(rules(&before), ["policy_no_cross_border"]);
        assert!(promise(&before));
        // After: flagged without the notice, not with it; at home, not cross-border.
        let after = check(ru, &d, at(ru, "2026-06-01"));
        assert_eq!(rules(&after), ["policy_no_cross_border", "cross_border"]);
        assert!(after.flags[1].citation.contains("152-FZ Art. 12"));
        d.transfer_mechanism = "rkn-notice".into();
        assert_eq!(
            rules(&check(ru, &d, at(ru, "2026-06-01"))),
            ["policy_no_cross_border"]
        );
        d.country = "RU".into();
        let home = check(ru, &d, at(ru, "2026-06-01"));
        assert!(!home.cross_border && home.flags.is_empty(), "{home:?}");
        // A tenant without the promise is checked against the law only.
        let au = registry.get("au-messenger").unwrap();
        assert!(no_cross_border_promise(au).is_none());
    }

    #[test]
    fn special_categories_state_bodies_and_purposes_are_flagged() {
        let registry = tenants();
        let ru = registry.get("ru-crm").unwrap();
        let d = DataDisclosed {
            recipient: "Investigative Committee".into(),
            recipient_role: RecipientRole::StateBody as i32,
            country: "RU".into(),
            categories: vec!["health".into(), "contact".into()],
            purpose: "astrology".into(),
            legal_basis: LegalBasis::StateBodyRequest as i32,
            system: "crm-sync".into(),
            ..Default::default()
        };
        let c = check(ru, &d, at(ru, "2026-06-01"));
        assert_eq!(
            rules(&c),
            [
                "special_category",
                "state_body_without_request",
                "purpose_not_in_catalog"
            ]
        );
        assert_eq!(c.flags[0].citation, "152-FZ Art. 10(1)");
        // A sealed reference counts as given.
        let mut sealed = d.clone();
        sealed
            .personal
            .insert("request_ref".into(), Default::default());
        assert!(
            !rules(&check(ru, &sealed, at(ru, "2026-06-01")))
                .contains(&"state_body_without_request")
        );
    }
}
