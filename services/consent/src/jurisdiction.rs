//! The jurisdiction facts the consent service needs, behind one small interface
//! ([`JurisdictionRules`]): [`rules_for`] answers from the `rules` crate's effective-dated packs.
//! [`InterimTable`] is the table the service used before that crate existed, kept for a test
//! that both agree.

use jiff::civil::Date;

/// What the consent rules of a jurisdiction require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentForm {
    /// Pre-ticked boxes and silence are not consent.
    pub pre_ticked_forbidden: bool,
    /// Consent must not be bundled with other terms or consents.
    pub bundling_forbidden: bool,
}

/// The jurisdiction facts consent needs.
pub trait JurisdictionRules: Send + Sync {
    /// Below this age a guardian's consent is required (`None`: no statutory age).
    fn child_age(&self, jurisdiction: &str, on: Date) -> Option<u8>;
    /// Every age [`Self::child_age`] answers for the jurisdiction on some date.
    fn child_ages(&self, jurisdiction: &str) -> Vec<u8>;
    fn consent_form(&self, jurisdiction: &str, on: Date) -> ConsentForm;
    /// Whether a Global Privacy Control signal is an opt-out of sale/sharing.
    fn honours_gpc(&self, jurisdiction: &str, on: Date) -> bool;
}

/// The rules in force.
pub fn rules_for() -> &'static dyn JurisdictionRules {
    &RulePacks
}

/// The `rules` crate's packs, chosen by the date.
pub struct RulePacks;

impl JurisdictionRules for RulePacks {
    fn child_age(&self, jurisdiction: &str, on: Date) -> Option<u8> {
        let j = jurisdiction.parse().ok()?;
        rules::child_rules(j, on).ok()?.age
    }

    fn child_ages(&self, jurisdiction: &str) -> Vec<u8> {
        let Ok(j) = jurisdiction.parse::<rules::Jurisdiction>() else {
            return Vec::new();
        };
        let mut ages: Vec<u8> = rules::packs()
            .iter()
            .filter(|p| p.jurisdiction == j.code())
            .filter_map(|p| p.child.age)
            .collect();
        ages.sort_unstable();
        ages.dedup();
        ages
    }

    fn consent_form(&self, jurisdiction: &str, on: Date) -> ConsentForm {
        match jurisdiction
            .parse()
            .ok()
            .and_then(|j| rules::consent_form_rules(j, on).ok())
        {
            Some(f) => ConsentForm {
                pre_ticked_forbidden: f.pre_ticked_forbidden || f.silence_not_consent,
                bundling_forbidden: f.bundling_forbidden_on(on),
            },
            // No regime in force: refuse nothing the law was not shown to refuse.
            None => ConsentForm {
                pre_ticked_forbidden: false,
                bundling_forbidden: false,
            },
        }
    }

    fn honours_gpc(&self, jurisdiction: &str, on: Date) -> bool {
        jurisdiction
            .parse()
            .is_ok_and(|j| rules::honours_gpc(j, on))
    }
}

/// Interim values from `shared/RULES.md`.
pub struct InterimTable;

impl JurisdictionRules for InterimTable {
    fn child_age(&self, jurisdiction: &str, _on: Date) -> Option<u8> {
        match jurisdiction {
            // Decree 13/2023 Art. 20: a child is under 16 [V]; Law 91/2025 keeps the
            // representative rule [S].
            "VN" => Some(16),
            // GDPR Art. 8: 16 unless a member state lowers it (13–16) [V].
            "EU" => Some(16),
            // CCPA sale/share: under 13 needs a parent's opt-in [S].
            "US-CA" => Some(13),
            // 152-FZ: no statutory age [V]; Privacy Act: no fixed age [S].
            _ => None,
        }
    }

    fn child_ages(&self, jurisdiction: &str) -> Vec<u8> {
        self.child_age(jurisdiction, Date::MIN)
            .into_iter()
            .collect()
    }

    fn consent_form(&self, jurisdiction: &str, on: Date) -> ConsentForm {
        match jurisdiction {
            // Decree 13 Art. 11: silence is not consent [V]; no default or pre-ticked [S].
            "VN" => ConsentForm {
                pre_ticked_forbidden: true,
                bundling_forbidden: true,
            },
            // 152-FZ Art. 9(1): conscious, unambiguous [V]; a separate document since
            // 2025-09-01 (156-FZ) [S].
            "RU" => ConsentForm {
                pre_ticked_forbidden: true,
                bundling_forbidden: on >= jiff::civil::date(2025, 9, 1),
            },
            // GDPR Art. 7: distinguishable, demonstrable [V]; pre-ticked boxes are no consent.
            "EU" => ConsentForm {
                pre_ticked_forbidden: true,
                bundling_forbidden: true,
            },
            // AU: express or implied consent [K]; US-CA: opt-out regime.
            _ => ConsentForm {
                pre_ticked_forbidden: false,
                bundling_forbidden: false,
            },
        }
    }

    fn honours_gpc(&self, jurisdiction: &str, _on: Date) -> bool {
        // CCPA regulations require honouring GPC [S].
        jurisdiction == "US-CA"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_packs_agree_with_the_interim_table() {
        for j in ["VN", "RU", "AU", "EU", "US-CA"] {
            for on in [
                jiff::civil::date(2025, 8, 31),
                jiff::civil::date(2025, 9, 1),
                jiff::civil::date(2026, 6, 1),
            ] {
                assert_eq!(
                    RulePacks.child_age(j, on),
                    InterimTable.child_age(j, on),
                    "{j} {on}"
                );
                assert_eq!(
                    RulePacks.consent_form(j, on),
                    InterimTable.consent_form(j, on),
                    "{j} {on}"
                );
                assert_eq!(
                    RulePacks.honours_gpc(j, on),
                    InterimTable.honours_gpc(j, on),
                    "{j}"
                );
            }
        }
    }
}
