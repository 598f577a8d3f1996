//! The consent domain, pure: policy versions, per-purpose consent changes, and the decision
//! "may we process this subject's data for this purpose at instant T?". No I/O and no clock —
//! every function takes the instant it reasons about (DESIGN §5.7).
//!
//! Times are microseconds since the Unix epoch. A change takes effect at its `at` (the event's
//! `occurred_at`); two changes at the same instant are ordered by their log sequence number.

use std::fmt;

pub use privacy_vocab::LegalBasis;

/// A published notice (privacy policy) version of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    pub version: String,
    /// Hash of the notice text the subject was shown.
    pub notice_hash: String,
    /// Purposes the change affects; empty means every purpose.
    pub purposes: Vec<String>,
    /// A material change requires re-consent for the affected purposes.
    pub material: bool,
    pub published_at: i64,
    pub effective_at: i64,
}

impl PolicyVersion {
    fn affects(&self, purpose: &str) -> bool {
        self.purposes.is_empty() || self.purposes.iter().any(|p| p == purpose)
    }
}

/// The policy version in force at `at`: the one with the latest `effective_at <= at`.
pub fn policy_in_force(policies: &[PolicyVersion], at: i64) -> Option<&PolicyVersion> {
    policies
        .iter()
        .filter(|p| p.effective_at <= at)
        .max_by_key(|p| (p.effective_at, p.published_at))
}

/// One change of one subject's consent for one purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentChange {
    pub seq: u64,
    pub at: i64,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    Granted {
        record_id: String,
        policy_version: String,
        valid_until: Option<i64>,
        /// Given by a guardian (or a representative) rather than the subject.
        by_guardian: bool,
    },
    Withdrawn,
    /// The subject was asked and said no.
    Refused,
}

/// Why processing is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NeverGiven,
    Withdrawn,
    Refused,
    Expired,
    ReconsentRequired,
    ChildWithoutGuardian,
    UnknownPurpose,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::NeverGiven => "never_given",
            Reason::Withdrawn => "withdrawn",
            Reason::Refused => "refused",
            Reason::Expired => "expired",
            Reason::ReconsentRequired => "reconsent_required",
            Reason::ChildWithoutGuardian => "child_without_guardian",
            Reason::UnknownPurpose => "unknown_purpose",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to a consent check, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub basis: Option<LegalBasis>,
    pub reason: Option<Reason>,
    /// The consent record that decided it (the last grant), if any.
    pub record_id: Option<String>,
    /// The policy version that grant was given under.
    pub policy_version: Option<String>,
    /// For `reconsent_required`: the material policy version that requires it.
    pub superseded_by: Option<String>,
    /// The log position of the change that decided it: the last grant, or the withdrawal.
    pub decided_by_seq: Option<u64>,
}

impl Decision {
    fn allowed(basis: LegalBasis) -> Decision {
        Decision {
            allowed: true,
            basis: Some(basis),
            reason: None,
            record_id: None,
            policy_version: None,
            superseded_by: None,
            decided_by_seq: None,
        }
    }

    fn denied(reason: Reason) -> Decision {
        Decision {
            allowed: false,
            basis: Some(LegalBasis::Consent),
            reason: Some(reason),
            record_id: None,
            policy_version: None,
            superseded_by: None,
            decided_by_seq: None,
        }
    }
}

/// What is known about the subject as a child, for the child rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildStatus {
    /// The subject is below the age threshold in force (the jurisdiction's, or the tenant's
    /// stricter one) until this instant, the birthday that crosses it; `None`: not known to be
    /// a child.
    pub adult_from: Option<i64>,
}

impl ChildStatus {
    /// Whether the subject is a child at `at`.
    pub fn is_child_at(&self, at: i64) -> bool {
        self.adult_from.is_some_and(|a| at < a)
    }
}

/// The first material policy change to `purpose` that took effect after a grant under
/// `version` at `granted_at`, by `now`: it requires re-consent.
fn superseding<'a>(
    policies: &'a [PolicyVersion],
    purpose: &str,
    version: &str,
    granted_at: i64,
    now: i64,
) -> Option<&'a PolicyVersion> {
    policies
        .iter()
        .filter(|p| {
            p.material
                && p.affects(purpose)
                && p.version != version
                && p.effective_at > granted_at
                && p.effective_at <= now
        })
        .min_by_key(|p| p.effective_at)
}

/// May the subject's data be processed for a purpose with `basis` at `as_of`, given that
/// purpose's consent `history` (any order) and the tenant's `policies`?
pub fn decide(
    basis: Option<LegalBasis>,
    history: &[ConsentChange],
    policies: &[PolicyVersion],
    child: ChildStatus,
    purpose: &str,
    as_of: i64,
) -> Decision {
    let Some(basis) = basis else {
        return Decision {
            basis: None,
            ..Decision::denied(Reason::UnknownPurpose)
        };
    };
    if basis != LegalBasis::Consent {
        return Decision::allowed(basis);
    }
    let last = history
        .iter()
        .filter(|c| c.at <= as_of)
        .max_by_key(|c| (c.at, c.seq));
    let Some(last) = last else {
        return Decision::denied(Reason::NeverGiven);
    };
    let ChangeKind::Granted {
        record_id,
        policy_version,
        valid_until,
        by_guardian,
    } = &last.kind
    else {
        let reason = if last.kind == ChangeKind::Refused {
            Reason::Refused
        } else {
            Reason::Withdrawn
        };
        return Decision {
            decided_by_seq: Some(last.seq),
            ..Decision::denied(reason)
        };
    };
    let with_record = |reason: Option<Reason>| Decision {
        allowed: reason.is_none(),
        basis: Some(LegalBasis::Consent),
        reason,
        record_id: Some(record_id.clone()),
        policy_version: Some(policy_version.clone()),
        superseded_by: None,
        decided_by_seq: Some(last.seq),
    };
    if valid_until.is_some_and(|until| until <= as_of) {
        return with_record(Some(Reason::Expired));
    }
    // A child's own consent is no consent: not while a child, and not later either when it
    // was given as a child (the record stays invalid; a new grant is needed).
    if !by_guardian && (child.is_child_at(as_of) || child.is_child_at(last.at)) {
        return with_record(Some(Reason::ChildWithoutGuardian));
    }
    if let Some(p) = superseding(policies, purpose, policy_version, last.at, as_of) {
        return Decision {
            superseded_by: Some(p.version.clone()),
            ..with_record(Some(Reason::ReconsentRequired))
        };
    }
    with_record(None)
}

/// A consent record's ISO/IEC TS 27560 state at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    Given,
    Refused,
    Withdrawn,
    Expired,
    /// A later grant for the same purpose replaced it.
    Renewed,
    ReconsentRequired,
    Invalidated,
}

impl RecordState {
    pub const fn as_str(self) -> &'static str {
        match self {
            RecordState::Given => "given",
            RecordState::Refused => "refused",
            RecordState::Withdrawn => "withdrawn",
            RecordState::Expired => "expired",
            RecordState::Renewed => "renewed",
            RecordState::ReconsentRequired => "reconsent_required",
            RecordState::Invalidated => "invalidated",
        }
    }
}

/// The state at `now` of the change `record` of `purpose`, given the purpose's `history` (any
/// order; it may include `record` and changes after `now`, which are ignored), the tenant's
/// `policies` and what is known of the subject as a child. Returns the state and, for
/// `reconsent_required` and `invalidated`, why.
pub fn record_state(
    record: &ConsentChange,
    history: &[ConsentChange],
    policies: &[PolicyVersion],
    child: ChildStatus,
    purpose: &str,
    now: i64,
) -> (RecordState, Option<String>) {
    let ChangeKind::Granted {
        policy_version,
        valid_until,
        by_guardian,
        ..
    } = &record.kind
    else {
        let state = match record.kind {
            ChangeKind::Refused => RecordState::Refused,
            _ => RecordState::Withdrawn,
        };
        return (state, None);
    };
    let next = history
        .iter()
        .filter(|c| (c.at, c.seq) > (record.at, record.seq) && c.at <= now)
        .min_by_key(|c| (c.at, c.seq));
    if let Some(next) = next {
        let state = match next.kind {
            ChangeKind::Granted { .. } => RecordState::Renewed,
            ChangeKind::Withdrawn | ChangeKind::Refused => RecordState::Withdrawn,
        };
        return (state, None);
    }
    if !by_guardian && child.is_child_at(record.at) {
        return (
            RecordState::Invalidated,
            Some("given by a child below the age in force, without a guardian".into()),
        );
    }
    if valid_until.is_some_and(|until| until <= now) {
        return (RecordState::Expired, None);
    }
    match superseding(policies, purpose, policy_version, record.at, now) {
        Some(p) => (
            RecordState::ReconsentRequired,
            Some(format!("policy version {} changed the purpose", p.version)),
        ),
        None => (RecordState::Given, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;
    const T0: i64 = 1_780_000_000_000_000;

    fn policy(
        version: &str,
        effective_at: i64,
        material: bool,
        purposes: &[&str],
    ) -> PolicyVersion {
        PolicyVersion {
            version: version.into(),
            notice_hash: format!("hash-{version}"),
            purposes: purposes.iter().map(|p| (*p).to_owned()).collect(),
            material,
            published_at: effective_at - DAY,
            effective_at,
        }
    }

    fn grant(seq: u64, at: i64, version: &str, until: Option<i64>) -> ConsentChange {
        ConsentChange {
            seq,
            at,
            kind: ChangeKind::Granted {
                record_id: format!("r{seq}"),
                policy_version: version.into(),
                valid_until: until,
                by_guardian: false,
            },
        }
    }

    fn withdraw(seq: u64, at: i64) -> ConsentChange {
        ConsentChange {
            seq,
            at,
            kind: ChangeKind::Withdrawn,
        }
    }

    fn reason(d: &Decision) -> Option<&'static str> {
        d.reason.map(Reason::as_str)
    }

    #[test]
    fn decisions_follow_the_history_as_of_any_instant() {
        let policies = vec![
            policy("v1", T0, false, &[]),
            policy("v2", T0 + 10 * DAY, true, &["marketing"]),
        ];
        let history = vec![
            grant(1, T0 + DAY, "v1", None),
            withdraw(2, T0 + 3 * DAY),
            grant(3, T0 + 5 * DAY, "v1", Some(T0 + 20 * DAY)),
        ];
        let at = |t| {
            decide(
                Some(LegalBasis::Consent),
                &history,
                &policies,
                ChildStatus::default(),
                "marketing",
                t,
            )
        };
        assert_eq!(reason(&at(T0)), Some("never_given"));
        assert!(at(T0 + DAY).allowed, "effective at the grant instant");
        assert_eq!(at(T0 + 2 * DAY).record_id.as_deref(), Some("r1"));
        assert_eq!(reason(&at(T0 + 3 * DAY)), Some("withdrawn"));
        assert!(at(T0 + 6 * DAY).allowed);
        let later = at(T0 + 10 * DAY);
        assert_eq!(reason(&later), Some("reconsent_required"));
        assert_eq!(later.superseded_by.as_deref(), Some("v2"));
        // The material change concerns marketing only.
        let analytics = decide(
            Some(LegalBasis::Consent),
            &history,
            &policies,
            ChildStatus::default(),
            "analytics",
            T0 + 10 * DAY,
        );
        assert!(analytics.allowed);
        assert_eq!(reason(&at(T0 + 21 * DAY)), Some("expired"));
    }

    #[test]
    fn a_grant_under_the_new_version_or_after_it_took_effect_is_not_superseded() {
        let policies = vec![
            policy("v1", T0, false, &[]),
            policy("v2", T0 + 10 * DAY, true, &[]),
        ];
        let regrant = vec![
            grant(1, T0 + DAY, "v1", None),
            grant(2, T0 + 11 * DAY, "v2", None),
        ];
        let d = decide(
            Some(LegalBasis::Consent),
            &regrant,
            &policies,
            ChildStatus::default(),
            "x",
            T0 + 12 * DAY,
        );
        assert!(d.allowed);
        assert_eq!(d.policy_version.as_deref(), Some("v2"));
    }

    #[test]
    fn contract_purposes_need_no_consent_and_unknown_ones_are_refused() {
        let d = decide(
            Some(LegalBasis::Contract),
            &[],
            &[],
            ChildStatus::default(),
            "provide_service",
            T0,
        );
        assert!(d.allowed);
        assert_eq!(d.basis, Some(LegalBasis::Contract));
        let d = decide(None, &[], &[], ChildStatus::default(), "nope", T0);
        assert_eq!(reason(&d), Some("unknown_purpose"));
    }

    #[test]
    fn a_child_needs_a_guardians_consent_until_the_threshold_birthday() {
        let child = ChildStatus {
            adult_from: Some(T0 + 100 * DAY),
        };
        let own = vec![grant(1, T0 + DAY, "v1", None)];
        let d = decide(
            Some(LegalBasis::Consent),
            &own,
            &[],
            child,
            "marketing",
            T0 + 2 * DAY,
        );
        assert_eq!(reason(&d), Some("child_without_guardian"));
        // The grant a child gave stays invalid past the birthday; a new grant then counts.
        let past = decide(
            Some(LegalBasis::Consent),
            &own,
            &[],
            child,
            "marketing",
            T0 + 100 * DAY,
        );
        assert_eq!(reason(&past), Some("child_without_guardian"));
        let (state, why) = record_state(&own[0], &own, &[], child, "marketing", T0 + 100 * DAY);
        assert_eq!(state, RecordState::Invalidated);
        assert!(why.is_some_and(|w| w.contains("child")));
        let mut again = own.clone();
        again.push(grant(2, T0 + 101 * DAY, "v1", None));
        let d = decide(
            Some(LegalBasis::Consent),
            &again,
            &[],
            child,
            "marketing",
            T0 + 101 * DAY,
        );
        assert!(d.allowed);
        assert_eq!(
            record_state(&again[0], &again, &[], child, "marketing", T0 + 101 * DAY).0,
            RecordState::Renewed
        );
        let mut by_guardian = own.clone();
        if let ChangeKind::Granted { by_guardian: g, .. } = &mut by_guardian[0].kind {
            *g = true;
        }
        assert!(
            decide(
                Some(LegalBasis::Consent),
                &by_guardian,
                &[],
                child,
                "marketing",
                T0 + 2 * DAY
            )
            .allowed
        );
    }

    #[test]
    fn same_instant_changes_are_ordered_by_sequence() {
        let history = vec![withdraw(2, T0), grant(1, T0, "v1", None)];
        let d = decide(
            Some(LegalBasis::Consent),
            &history,
            &[],
            ChildStatus::default(),
            "m",
            T0,
        );
        assert_eq!(reason(&d), Some("withdrawn"));
    }

    /// An independent, event-driven restatement of the rules: walk policy effects and consent
    /// changes in time order (policy effects first at equal instants) and keep flags.
    fn naive(
        history: &[ConsentChange],
        policies: &[PolicyVersion],
        purpose: &str,
        as_of: i64,
    ) -> Option<&'static str> {
        enum Step<'a> {
            Policy(&'a PolicyVersion),
            Change(&'a ConsentChange),
        }
        let mut steps: Vec<(i64, u8, u64, Step)> = Vec::new();
        for p in policies {
            steps.push((p.effective_at, 0, 0, Step::Policy(p)));
        }
        for c in history {
            steps.push((c.at, 1, c.seq, Step::Change(c)));
        }
        steps.sort_by_key(|(at, kind, seq, _)| (*at, *kind, *seq));
        let mut granted: Option<(String, Option<i64>)> = None;
        let mut ever = false;
        let mut refused = false;
        let mut reconsent = false;
        for (at, _, _, step) in steps {
            if at > as_of {
                break;
            }
            match step {
                Step::Policy(p) => {
                    if let Some((version, _)) = &granted
                        && p.material
                        && p.affects(purpose)
                        && p.version != *version
                    {
                        reconsent = true;
                    }
                }
                Step::Change(c) => {
                    ever = true;
                    reconsent = false;
                    refused = c.kind == ChangeKind::Refused;
                    granted = match &c.kind {
                        ChangeKind::Granted {
                            policy_version,
                            valid_until,
                            ..
                        } => Some((policy_version.clone(), *valid_until)),
                        ChangeKind::Withdrawn | ChangeKind::Refused => None,
                    };
                }
            }
        }
        match granted {
            None if refused => Some("refused"),
            None if ever => Some("withdrawn"),
            None => Some("never_given"),
            Some((_, Some(until))) if until <= as_of => Some("expired"),
            Some(_) if reconsent => Some("reconsent_required"),
            Some(_) => None,
        }
    }

    use proptest::prelude::*;

    /// (day, kind: 0–1 grant, 2 withdrawal, 3 refusal, policy version, validity in days).
    fn arb_change() -> impl Strategy<Value = (i64, u8, u8, Option<i64>)> {
        (0i64..40, 0u8..4, 0u8..3, prop::option::of(1i64..20))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decide_agrees_with_a_naive_fold(
            changes in prop::collection::vec(arb_change(), 0..12),
            policies in prop::collection::vec((0i64..40, any::<bool>(), 0u8..3, any::<bool>()), 0..5),
            as_of in 0i64..45,
        ) {
            let versions = ["v1", "v2", "v3"];
            let history: Vec<ConsentChange> = changes
                .iter()
                .enumerate()
                .map(|(i, (at, kind, v, until))| ConsentChange {
                    seq: i as u64 + 1,
                    at: T0 + at * DAY,
                    kind: match kind {
                        0 | 1 => ChangeKind::Granted {
                            record_id: format!("r{i}"),
                            policy_version: versions[*v as usize].into(),
                            valid_until: until.map(|u| T0 + (at + u) * DAY),
                            by_guardian: false,
                        },
                        2 => ChangeKind::Withdrawn,
                        _ => ChangeKind::Refused,
                    },
                })
                .collect();
            let policies: Vec<PolicyVersion> = policies
                .iter()
                .map(|(at, material, v, all)| PolicyVersion {
                    version: versions[*v as usize].into(),
                    notice_hash: String::new(),
                    purposes: if *all { vec![] } else { vec!["analytics".into()] },
                    material: *material,
                    published_at: T0 + at * DAY - 1,
                    effective_at: T0 + at * DAY,
                })
                .collect();
            for purpose in ["marketing", "analytics"] {
                let t = T0 + as_of * DAY;
                let d = decide(Some(LegalBasis::Consent), &history, &policies, ChildStatus::default(), purpose, t);
                prop_assert_eq!(reason(&d), naive(&history, &policies, purpose, t), "{} at day {}", purpose, as_of);
                prop_assert_eq!(d.allowed, d.reason.is_none());
                // The record that decided it is in the matching ISO/IEC TS 27560 state.
                if let Some(seq) = d.decided_by_seq {
                    let record = history.iter().find(|c| c.seq == seq).unwrap();
                    let (state, _) = record_state(record, &history, &policies, ChildStatus::default(), purpose, t);
                    let expected = match d.reason {
                        None => RecordState::Given,
                        Some(Reason::Expired) => RecordState::Expired,
                        Some(Reason::ReconsentRequired) => RecordState::ReconsentRequired,
                        Some(Reason::Refused) => RecordState::Refused,
                        Some(_) => RecordState::Withdrawn,
                    };
                    prop_assert_eq!(state, expected);
                }
                // Every earlier grant was replaced: renewed or withdrawn.
                for c in history.iter().filter(|c| c.at <= t && Some(c.seq) != d.decided_by_seq) {
                    let (state, _) = record_state(c, &history, &policies, ChildStatus::default(), purpose, t);
                    if matches!(c.kind, ChangeKind::Granted { .. }) {
                        prop_assert!(matches!(state, RecordState::Renewed | RecordState::Withdrawn), "{:?}", state);
                    }
                }
            }
        }
    }
}
