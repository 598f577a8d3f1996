//! Jurisdiction rules and the deadline engine (DESIGN §6 "Rules"; `shared/RULES.md`,
//! `DEADLINES.md`, `CALENDARS.md`).
//!
//! - Rule packs (`data/packs/*.toml`): per jurisdiction and regime, effective-dated deadlines per
//!   request type and stage with extensions, child rules, consent-form rules, cross-border
//!   requirements, breach windows — each with its citation and a [`Confidence`] mark.
//! - Calendars (`data/calendars/*.toml`): working days per jurisdiction or region, with sources
//!   and the years covered ([`Calendar`]).
//! - The engine ([`due`], [`deadline`], [`combine`]): a deadline is a local date and the instant
//!   it ends; where the law is open the result carries the lenient `latest` reading too.
//! - [`render_pack`] shows a pack as a table with citations.
//!
//! All data is embedded in the binary and parsed once; nothing is read at query time.

#![forbid(unsafe_code)]

mod calendar;
mod engine;
mod render;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use jiff::civil::Date;
use serde::Deserialize;

pub use calendar::{Calendar, Coverage};
pub use engine::{Bound, Combined, Deadline, DueOptions, combine, deadline, due, promise};
pub use privacy_vocab::{Jurisdiction, UnknownJurisdiction};
pub use render::render_pack;

/// What can go wrong asking for rules or deadlines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error(transparent)]
    UnknownJurisdiction(#[from] UnknownJurisdiction),
    #[error("no {jurisdiction} regime is in force on {date}")]
    NoRegime { jurisdiction: String, date: Date },
    #[error("{jurisdiction} has no rule for {request} / {stage}")]
    NoRule {
        jurisdiction: String,
        request: String,
        stage: String,
    },
    #[error(
        "no working-day calendar for {0}; name a supported region or use the weekends-only fallback"
    )]
    NoCalendar(String),
    #[error("{date} is outside calendar {calendar} ({first_year}–{last_year})")]
    OutsideCalendar {
        calendar: String,
        date: Date,
        first_year: i16,
        last_year: i16,
    },
    #[error("the rule has no extension")]
    NoExtension,
    #[error("date arithmetic: {0}")]
    Date(String),
}

/// How sure the research is (RULES.md): never shown as certain when it is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Confidence {
    /// V: the wording of the law was seen.
    #[serde(rename = "V")]
    Verified,
    /// S: a secondary source (law firm, regulator news).
    #[serde(rename = "S")]
    Secondary,
    /// K: background knowledge, unconfirmed.
    #[serde(rename = "K")]
    Background,
    /// ?: sources conflict or were not found.
    #[serde(rename = "?")]
    Uncertain,
}

impl Confidence {
    pub const fn mark(self) -> &'static str {
        match self {
            Confidence::Verified => "V",
            Confidence::Secondary => "S",
            Confidence::Background => "K",
            Confidence::Uncertain => "?",
        }
    }

    /// Only wording seen in the law counts as settled.
    pub const fn is_certain(self) -> bool {
        matches!(self, Confidence::Verified)
    }
}

/// Units a period is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Hours,
    WorkingDays,
    BusinessDays,
    CalendarDays,
    CalendarMonths,
}

/// How a jurisdiction ends a period counted in calendar days (DEADLINES.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaysConvention {
    /// The last day moves to the next working day (settled: VN Civil Code Art. 148, EU 1182/71).
    Rolled,
    /// `due` is day N; `latest` rolls it forward (open point: RU Art. 193, AU organisations).
    ExactDueRolledLatest,
    /// `due` is day N − 1; `latest` is day N rolled forward (US-CA).
    MinusOneDueRolledLatest,
}

/// An extension a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    pub duration: u32,
    pub unit: Unit,
    pub max_count: u32,
    pub reasoned_notice: bool,
    pub citation: String,
    pub confidence: Confidence,
}

fn received() -> String {
    "received".into()
}

/// One deadline rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineRule {
    /// access, rectification, erasure, restriction, objection, consent_withdrawal, breach…
    pub request: String,
    /// acknowledge, complete, destroy, notify_regulator…
    pub stage: String,
    pub duration: u32,
    pub unit: Unit,
    /// received, proof_received, consent_withdrawn, purpose_achieved, detected, occurred.
    #[serde(default = "received")]
    pub clock_start: String,
    pub citation: String,
    pub confidence: Confidence,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub extension: Option<Extension>,
}

/// The child rule of a regime.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildRule {
    /// Below this age a guardian (legal representative) must consent; `None`: no statutory age.
    #[serde(default)]
    pub age: Option<u8>,
    /// From this age the child's own consent is needed as well as the guardian's.
    #[serde(default)]
    pub own_consent_from: Option<u8>,
    pub citation: String,
    pub confidence: Confidence,
}

/// What a consent must look like.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentFormRule {
    pub per_purpose: bool,
    pub pre_ticked_forbidden: bool,
    pub silence_not_consent: bool,
    /// Bundling with other terms or consents is forbidden from this date.
    #[serde(default)]
    pub bundling_forbidden_from: Option<Date>,
    /// A Global Privacy Control signal must be honoured.
    #[serde(default)]
    pub gpc: bool,
    pub citation: String,
    pub confidence: Confidence,
}

impl ConsentFormRule {
    pub fn bundling_forbidden_on(&self, date: Date) -> bool {
        self.bundling_forbidden_from
            .is_some_and(|from| date >= from)
    }
}

/// A cross-border transfer requirement.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossBorderRule {
    pub requirement: String,
    #[serde(default)]
    pub wait_working_days: Option<u32>,
    #[serde(default)]
    pub dossier_days: Option<u32>,
    /// The transfer-mechanism codes a disclosure may name to meet it (`data.disclosed`
    /// `transfer_mechanism`); empty: the requirement is listed, not checked per disclosure.
    #[serde(default)]
    pub satisfied_by: Vec<String>,
    /// In force from this date, when later than its pack.
    #[serde(default)]
    pub effective_from: Option<Date>,
    pub citation: String,
    pub confidence: Confidence,
}

impl CrossBorderRule {
    /// Whether the requirement is in force on `date` (its pack being in force).
    pub fn in_force(&self, date: Date) -> bool {
        self.effective_from.is_none_or(|from| date >= from)
    }
}

/// Categories of personal data the law treats as special (a disclosure of them is flagged).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialCategories {
    pub categories: Vec<String>,
    pub citation: String,
    pub confidence: Confidence,
}

/// The rules of one jurisdiction under one regime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulePack {
    pub jurisdiction: String,
    pub regime: String,
    pub effective_from: Date,
    #[serde(default)]
    pub effective_to: Option<Date>,
    /// IANA zone a deadline's day ends in (a tenant may override it).
    pub time_zone: String,
    /// Calendar id, or `EU` (per member state) / `AU` (national; states by region).
    pub calendar: String,
    pub days: DaysConvention,
    #[serde(default)]
    pub days_note: Option<String>,
    pub deadlines: Vec<DeadlineRule>,
    pub child: ChildRule,
    pub consent_form: ConsentFormRule,
    #[serde(default)]
    pub cross_border: Vec<CrossBorderRule>,
    /// ISO 3166-1 alpha-2 countries a transfer stays within (a recipient elsewhere is
    /// cross-border).
    #[serde(default)]
    pub home_countries: Vec<String>,
    #[serde(default)]
    pub special_categories: Option<SpecialCategories>,
}

impl RulePack {
    /// Whether this regime is in force on `date`.
    pub fn in_force(&self, date: Date) -> bool {
        self.effective_from <= date && self.effective_to.is_none_or(|to| date <= to)
    }

    /// The rule for a request type and stage.
    pub fn rule(&self, request: &str, stage: &str) -> Result<&DeadlineRule, RulesError> {
        self.deadlines
            .iter()
            .find(|r| r.request == request && r.stage == stage)
            .ok_or_else(|| RulesError::NoRule {
                jurisdiction: self.jurisdiction.clone(),
                request: request.to_owned(),
                stage: stage.to_owned(),
            })
    }

    /// The breach-notification windows.
    pub fn breach_windows(&self) -> Vec<&DeadlineRule> {
        self.deadlines
            .iter()
            .filter(|r| r.request == "breach")
            .collect()
    }

    pub fn zone(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.time_zone).expect("pack time zones are checked by a test")
    }
}

const PACK_FILES: &[(&str, &str)] = &[
    ("vn-2023", include_str!("../data/packs/vn-2023.toml")),
    ("vn-2026", include_str!("../data/packs/vn-2026.toml")),
    ("ru", include_str!("../data/packs/ru.toml")),
    ("au", include_str!("../data/packs/au.toml")),
    ("eu", include_str!("../data/packs/eu.toml")),
    ("us-ca", include_str!("../data/packs/us-ca.toml")),
];

const CALENDAR_FILES: &[(&str, &str)] = &[
    ("ru", include_str!("../data/calendars/ru.toml")),
    ("vn", include_str!("../data/calendars/vn.toml")),
    ("us-ca", include_str!("../data/calendars/us-ca.toml")),
    ("au", include_str!("../data/calendars/au.toml")),
    ("au-nsw", include_str!("../data/calendars/au-nsw.toml")),
    ("eu-de", include_str!("../data/calendars/eu-de.toml")),
    ("eu-ie", include_str!("../data/calendars/eu-ie.toml")),
];

struct Data {
    packs: Vec<RulePack>,
    calendars: BTreeMap<String, Calendar>,
}

static DATA: LazyLock<Data> = LazyLock::new(|| {
    let packs = PACK_FILES
        .iter()
        .map(|(name, text)| {
            toml::from_str::<RulePack>(text)
                .unwrap_or_else(|e| panic!("shipped rule pack {name} does not parse: {e}"))
        })
        .collect();
    let calendars = CALENDAR_FILES
        .iter()
        .map(|(name, text)| {
            let c = Calendar::parse(text)
                .unwrap_or_else(|e| panic!("shipped calendar {name} does not parse: {e}"));
            (c.id.clone(), c)
        })
        .collect();
    Data { packs, calendars }
});

/// Every shipped pack (all regimes).
pub fn packs() -> &'static [RulePack] {
    &DATA.packs
}

/// The pack of `jurisdiction` in force on `date` (the regime is chosen by the date received).
pub fn pack(jurisdiction: Jurisdiction, date: Date) -> Result<&'static RulePack, RulesError> {
    DATA.packs
        .iter()
        .find(|p| p.jurisdiction == jurisdiction.code() && p.in_force(date))
        .ok_or_else(|| RulesError::NoRegime {
            jurisdiction: jurisdiction.code().to_owned(),
            date,
        })
}

/// The working-day calendar of a jurisdiction, refined by a region (EU member state such as
/// `DE`, Australian state such as `NSW`) where holidays differ.
pub fn calendar(
    jurisdiction: Jurisdiction,
    region: Option<&str>,
) -> Result<&'static Calendar, RulesError> {
    let id = match (jurisdiction, region) {
        (Jurisdiction::Eu, Some(r)) => format!("EU-{}", r.to_ascii_uppercase()),
        (Jurisdiction::Eu, None) => {
            return Err(RulesError::NoCalendar("EU without a member state".into()));
        }
        (Jurisdiction::Au, Some(r)) => format!("AU-{}", r.to_ascii_uppercase()),
        (j, _) => j.code().to_owned(),
    };
    DATA.calendars.get(&id).ok_or(RulesError::NoCalendar(id))
}

/// Every shipped calendar.
pub fn calendars() -> impl Iterator<Item = &'static Calendar> {
    DATA.calendars.values()
}

/// The child rule in force on `date`.
pub fn child_rules(
    jurisdiction: Jurisdiction,
    date: Date,
) -> Result<&'static ChildRule, RulesError> {
    Ok(&pack(jurisdiction, date)?.child)
}

/// The consent-form rules in force on `date`.
pub fn consent_form_rules(
    jurisdiction: Jurisdiction,
    date: Date,
) -> Result<&'static ConsentFormRule, RulesError> {
    Ok(&pack(jurisdiction, date)?.consent_form)
}

/// Whether a Global Privacy Control signal must be honoured on `date`.
pub fn honours_gpc(jurisdiction: Jurisdiction, date: Date) -> bool {
    pack(jurisdiction, date).is_ok_and(|p| p.consent_form.gpc)
}

/// Cross-border requirements in force on `date`.
pub fn cross_border_rules(
    jurisdiction: Jurisdiction,
    date: Date,
) -> Result<&'static [CrossBorderRule], RulesError> {
    Ok(&pack(jurisdiction, date)?.cross_border)
}

/// Breach-notification windows in force on `date`.
pub fn breach_windows(
    jurisdiction: Jurisdiction,
    date: Date,
) -> Result<Vec<&'static DeadlineRule>, RulesError> {
    Ok(pack(jurisdiction, date)?.breach_windows())
}

#[cfg(test)]
mod tests;
