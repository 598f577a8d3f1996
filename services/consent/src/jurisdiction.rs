//! The jurisdiction facts the consent service needs, behind one small interface
//! ([`JurisdictionRules`]) so that switching to the `rules` crate is a one-line change in
//! [`rules_for`].
//!
//! Until then these values are an interim table written from `shared/RULES.md` (confidence marks
//! kept in the comments); nothing here computes deadlines.

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
    fn consent_form(&self, jurisdiction: &str, on: Date) -> ConsentForm;
    /// Whether a Global Privacy Control signal is an opt-out of sale/sharing.
    fn honours_gpc(&self, jurisdiction: &str) -> bool;
}

/// The rules in force. Replace the body with the `rules` crate's adapter when it lands.
pub fn rules_for() -> &'static dyn JurisdictionRules {
    &InterimTable
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

    fn honours_gpc(&self, jurisdiction: &str) -> bool {
        // CCPA regulations require honouring GPC [S].
        jurisdiction == "US-CA"
    }
}
