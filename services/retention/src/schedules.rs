//! Retention schedules from the tenant file (`[[retention]]`, keyed by data category and
//! purpose) and from operators (`schedule.put`, versioned), the schedule that governs a holding,
//! and the instant — and the action — that falls due. A trigger counts from what the inventory
//! observed: the collection, the subject's deactivation, or a `trigger.observed` (a consent
//! withdrawal, a contract ended, a purpose achieved) after the holding's last collection.
//! `archive_then_erase` first orders an `archive`; the archive copy then falls due
//! `archive_days` later, for erasure.
//!
//! ```toml
//! [[retention]]
//! category = "contact"
//! purpose = "*"                 # any purpose; a named purpose wins over `*`
//! trigger = "deactivated"       # collected | deactivated | consent_withdrawn | contract_ended | purpose_achieved
//! duration_days = 30
//! action = "erase"              # erase | anonymise | archive_then_erase
//! basis = "legal_obligation"
//! citation = "152-FZ Art. 21(5)"
//!
//! [anonymisation]
//! cohort = ["category", "purpose"]   # what anonymised holdings are counted by
//! ```

use privacy_proto::v1::{Holding, Schedule};
use privacy_service_kit::Tenant;

/// The triggers a schedule may count from.
pub const TRIGGERS: &[&str] = &[
    "collected",
    "deactivated",
    "consent_withdrawn",
    "contract_ended",
    "purpose_achieved",
];
/// The actions a schedule may take.
pub const ACTIONS: &[&str] = &["erase", "anonymise", "archive_then_erase"];
/// The triggers recorded as `trigger.observed` (the others are observed from the inventory).
pub const OBSERVED_TRIGGERS: &[&str] = &["consent_withdrawn", "contract_ended", "purpose_achieved"];
/// What anonymised holdings may be counted by.
pub const COHORT_DIMENSIONS: &[&str] = &["category", "system", "purpose", "collected_year"];

const DAY: i64 = 86_400_000_000;

/// A tenant file's schedule that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant}: [[retention]] #{index}: {reason}")]
pub struct ScheduleError {
    pub tenant: String,
    pub index: usize,
    pub reason: String,
}

fn text(table: &toml::Table, key: &str) -> Option<String> {
    table.get(key).and_then(|v| v.as_str()).map(str::to_owned)
}

fn days(table: &toml::Table, key: &str) -> Result<u32, String> {
    match table.get(key) {
        None => Ok(0),
        Some(v) => v
            .as_integer()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{key} must be a whole number of days")),
    }
}

fn parse_one(table: &toml::Table) -> Result<Schedule, String> {
    let required = |key: &str| text(table, key).ok_or_else(|| format!("{key} is required"));
    let s = Schedule {
        category: required("category")?,
        purpose: text(table, "purpose").unwrap_or_else(|| "*".into()),
        trigger: required("trigger")?,
        duration_days: days(table, "duration_days")?,
        action: required("action")?,
        basis: required("basis")?,
        citation: text(table, "citation").unwrap_or_default(),
        archive_days: days(table, "archive_days")?,
        archive_basis: text(table, "archive_basis").unwrap_or_default(),
        ..Default::default()
    };
    check(&s).map_err(|(_, reason)| reason)?;
    Ok(s)
}

/// Whether a schedule can be used: `Err((field, reason))` names the first field that cannot.
pub fn check(s: &Schedule) -> Result<(), (&'static str, String)> {
    for (field, value) in [
        ("category", &s.category),
        ("purpose", &s.purpose),
        ("basis", &s.basis),
    ] {
        if value.is_empty() {
            return Err((field, format!("{field} is required")));
        }
    }
    if !TRIGGERS.contains(&s.trigger.as_str()) {
        return Err((
            "trigger",
            format!("trigger must be one of {}", TRIGGERS.join(", ")),
        ));
    }
    if !ACTIONS.contains(&s.action.as_str()) {
        return Err((
            "action",
            format!("action must be one of {}", ACTIONS.join(", ")),
        ));
    }
    if s.action == "archive_then_erase" && (s.archive_days == 0 || s.archive_basis.is_empty()) {
        return Err((
            "archive_days",
            "archive_then_erase needs archive_days and archive_basis".into(),
        ));
    }
    Ok(())
}

/// The tenant's `[anonymisation] cohort` dimensions (default: the category alone).
pub fn cohort_dimensions(tenant: &Tenant) -> Result<Vec<String>, ScheduleError> {
    let err = |reason: String| ScheduleError {
        tenant: tenant.id.clone(),
        index: 0,
        reason: format!("[anonymisation] {reason}"),
    };
    let Some(table) = tenant.extra.get("anonymisation") else {
        return Ok(vec!["category".into()]);
    };
    let Some(list) = table.get("cohort").and_then(|v| v.as_array()) else {
        return Err(err("cohort must be a list of dimensions".into()));
    };
    let mut out = Vec::new();
    for v in list {
        match v.as_str() {
            Some(d) if COHORT_DIMENSIONS.contains(&d) => out.push(d.to_owned()),
            _ => {
                return Err(err(format!(
                    "cohort dimensions are among {}",
                    COHORT_DIMENSIONS.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// The tenant's schedules, in file order, or the first that cannot be used.
pub fn schedules(tenant: &Tenant) -> Result<Vec<Schedule>, ScheduleError> {
    cohort_dimensions(tenant)?;
    let Some(list) = tenant.extra.get("retention") else {
        return Ok(Vec::new());
    };
    let err = |index: usize, reason: String| ScheduleError {
        tenant: tenant.id.clone(),
        index,
        reason,
    };
    let list = list.as_array().ok_or_else(|| {
        err(
            0,
            "retention must be an array of tables ([[retention]])".into(),
        )
    })?;
    let mut out: Vec<Schedule> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let table = item
            .as_table()
            .ok_or_else(|| err(i + 1, "not a table".into()))?;
        let s = parse_one(table).map_err(|r| err(i + 1, r))?;
        if out
            .iter()
            .any(|o| o.category == s.category && o.purpose == s.purpose)
        {
            return Err(err(
                i + 1,
                format!("({}, {}) is scheduled twice", s.category, s.purpose),
            ));
        }
        out.push(s);
    }
    Ok(out)
}

/// The schedule for a holding: one naming its category and one of its purposes (the longest
/// such period: data collected for two purposes is kept until the later ends), else the
/// category's `*` schedule.
pub fn governing<'a>(schedules: &'a [Schedule], h: &Holding) -> Option<&'a Schedule> {
    let named = schedules
        .iter()
        .filter(|s| s.category == h.category && h.purposes.contains(&s.purpose))
        .max_by_key(|s| s.duration_days);
    named.or_else(|| {
        schedules
            .iter()
            .find(|s| s.category == h.category && s.purpose == "*")
    })
}

/// The schedules in force: the tenant file's, each replaced by the latest put for its
/// (category, purpose), and the puts for keys the file does not have.
pub fn in_force(file: &[Schedule], puts: Vec<Schedule>) -> Vec<Schedule> {
    let mut out = file.to_vec();
    for put in puts {
        match out
            .iter_mut()
            .find(|s| s.category == put.category && s.purpose == put.purpose)
        {
            Some(s) => *s = put,
            None => out.push(put),
        }
    }
    out
}

/// A trigger observed for a subject: (trigger, purpose or `*`, instant).
pub type Observed = (String, String, i64);

/// What the inventory knows of a subject that schedules count from.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub deactivated_at: Option<i64>,
    pub triggers: Vec<Observed>,
}

impl Facts {
    /// The latest instant `trigger` was observed for `purpose` (or for every purpose), at or
    /// after `since`.
    fn latest(&self, trigger: &str, purpose: &str, since: i64) -> Option<i64> {
        self.triggers
            .iter()
            .filter(|(t, p, at)| t == trigger && (p == purpose || p == "*") && *at >= since)
            .map(|(_, _, at)| *at)
            .max()
    }
}

/// What falls due for a holding, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub at: i64,
    /// `erase`, `anonymise` or `archive` (the first step of `archive_then_erase`).
    pub action: &'static str,
}

/// When the schedule's action falls due for a holding, and which; or why that is not known yet.
pub fn next_action(s: &Schedule, h: &Holding, facts: &Facts) -> Result<Due, String> {
    let micros = |t: &Option<prost_types::Timestamp>| t.as_ref().map(privacy_vocab::time::micros);
    if let Some(archived) = micros(&h.archived_at) {
        return Ok(Due {
            at: archived.saturating_add(i64::from(s.archive_days) * DAY),
            action: "erase",
        });
    }
    let since = micros(&h.last_collected_at).unwrap_or(0);
    let start = match s.trigger.as_str() {
        "collected" => micros(&h.last_collected_at),
        "deactivated" => facts.deactivated_at,
        trigger if s.purpose != "*" => facts.latest(trigger, &s.purpose, since),
        // Any purpose: it ends when it has ended for every purpose the data was collected for.
        trigger if h.purposes.is_empty() => facts.latest(trigger, "*", since),
        trigger => h
            .purposes
            .iter()
            .map(|p| facts.latest(trigger, p, since))
            .collect::<Option<Vec<i64>>>()
            .and_then(|all| all.into_iter().max()),
    };
    let start = start.ok_or_else(|| format!("trigger {} not observed", s.trigger))?;
    let action = match s.action.as_str() {
        "anonymise" => "anonymise",
        "archive_then_erase" => "archive",
        _ => "erase",
    };
    Ok(Due {
        at: start.saturating_add(i64::from(s.duration_days) * DAY),
        action,
    })
}

/// When the schedule's next action falls due for a holding, or why that is not known yet.
pub fn due_at(s: &Schedule, h: &Holding, facts: &Facts) -> Result<i64, String> {
    next_action(s, h, facts).map(|d| d.at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(extra: &str) -> Tenant {
        privacy_service_kit::tenants::parse(&format!(
            "id = \"t\"\ndisplay_name = \"T\"\njurisdiction = \"RU\"\ntime_zone = \"Europe/Moscow\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn a_named_purpose_wins_and_due_counts_from_the_trigger() {
        let t = tenant(
            r#"
[[retention]]
category = "contact"
trigger = "deactivated"
duration_days = 30
action = "erase"
basis = "legal_obligation"

[[retention]]
category = "contact"
purpose = "billing"
trigger = "collected"
duration_days = 1825
action = "archive_then_erase"
basis = "legal_obligation"
citation = "Tax Code Art. 23"
archive_days = 1095
archive_basis = "disputes"
"#,
        );
        let s = schedules(&t).unwrap();
        let mut h = Holding {
            category: "contact".into(),
            purposes: vec!["marketing".into()],
            last_collected_at: Some(privacy_vocab::time::timestamp(0)),
            ..Default::default()
        };
        let g = governing(&s, &h).unwrap();
        assert_eq!(g.trigger, "deactivated");
        assert!(
            due_at(g, &h, &Facts::default())
                .unwrap_err()
                .contains("deactivated")
        );
        let facts = Facts {
            deactivated_at: Some(DAY),
            ..Default::default()
        };
        assert_eq!(due_at(g, &h, &facts).unwrap(), 31 * DAY);
        h.purposes.push("billing".into());
        assert_eq!(governing(&s, &h).unwrap().duration_days, 1825);
        h.category = "location".into();
        assert!(governing(&s, &h).is_none());
    }

    #[test]
    fn withdrawals_count_per_purpose_and_archives_fall_due_again() {
        let s = Schedule {
            category: "usage".into(),
            purpose: "*".into(),
            trigger: "consent_withdrawn".into(),
            duration_days: 30,
            action: "archive_then_erase".into(),
            basis: "consent".into(),
            archive_days: 10,
            archive_basis: "disputes".into(),
            ..Default::default()
        };
        let mut h = Holding {
            category: "usage".into(),
            purposes: vec!["analytics".into(), "marketing".into()],
            last_collected_at: Some(privacy_vocab::time::timestamp(5 * DAY)),
            ..Default::default()
        };
        let seen = |p: &str, at: i64| ("consent_withdrawn".to_owned(), p.to_owned(), at);
        // Withdrawn for one purpose only, or before the last collection: not ended.
        let mut facts = Facts {
            triggers: vec![seen("analytics", 6 * DAY), seen("marketing", DAY)],
            ..Default::default()
        };
        assert!(next_action(&s, &h, &facts).is_err());
        // Withdrawn for every purpose after it: due 30 days after the later withdrawal, first
        // to the archive.
        facts.triggers.push(seen("*", 8 * DAY));
        assert_eq!(
            next_action(&s, &h, &facts),
            Ok(Due {
                at: 38 * DAY,
                action: "archive"
            })
        );
        // Archived: the copy falls due archive_days later, for erasure.
        h.archived_at = Some(privacy_vocab::time::timestamp(40 * DAY));
        assert_eq!(
            next_action(&s, &h, &facts),
            Ok(Due {
                at: 50 * DAY,
                action: "erase"
            })
        );
    }

    #[test]
    fn unusable_schedules_are_named() {
        let bad = tenant(
            "[[retention]]\ncategory = \"c\"\ntrigger = \"whenever\"\naction = \"erase\"\nbasis = \"b\"\n",
        );
        let e = schedules(&bad).unwrap_err();
        assert!(
            e.to_string().contains("#1") && e.reason.contains("trigger"),
            "{e}"
        );
        let archive = tenant(
            "[[retention]]\ncategory = \"c\"\ntrigger = \"collected\"\naction = \"archive_then_erase\"\nbasis = \"b\"\n",
        );
        assert!(
            schedules(&archive)
                .unwrap_err()
                .reason
                .contains("archive_days")
        );
        let cohort = tenant("[anonymisation]\ncohort = [\"category\", \"email\"]\n");
        assert!(schedules(&cohort).unwrap_err().reason.contains("cohort"));
    }
}
