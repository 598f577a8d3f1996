//! Retention schedules from the tenant file (`[[retention]]`, keyed by data category and
//! purpose), the schedule that governs a holding, and the instant its action falls due.
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
    };
    if !TRIGGERS.contains(&s.trigger.as_str()) {
        return Err(format!("trigger must be one of {}", TRIGGERS.join(", ")));
    }
    if !ACTIONS.contains(&s.action.as_str()) {
        return Err(format!("action must be one of {}", ACTIONS.join(", ")));
    }
    if s.action == "archive_then_erase" && (s.archive_days == 0 || s.archive_basis.is_empty()) {
        return Err("archive_then_erase needs archive_days and archive_basis".into());
    }
    Ok(s)
}

/// The tenant's schedules, in file order, or the first that cannot be used.
pub fn schedules(tenant: &Tenant) -> Result<Vec<Schedule>, ScheduleError> {
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

/// When the schedule's action falls due for a holding whose subject was deactivated at
/// `deactivated_at`, or why that is not known yet.
pub fn due_at(s: &Schedule, h: &Holding, deactivated_at: Option<i64>) -> Result<i64, String> {
    let micros = |t: &Option<prost_types::Timestamp>| t.as_ref().map(privacy_vocab::time::micros);
    let start = match s.trigger.as_str() {
        "collected" => micros(&h.last_collected_at),
        "deactivated" => deactivated_at,
        _ => None,
    };
    let start = start.ok_or_else(|| format!("trigger {} not observed", s.trigger))?;
    Ok(start.saturating_add(i64::from(s.duration_days) * DAY))
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
        assert!(due_at(g, &h, None).unwrap_err().contains("deactivated"));
        assert_eq!(due_at(g, &h, Some(DAY)).unwrap(), 31 * DAY);
        h.purposes.push("billing".into());
        assert_eq!(governing(&s, &h).unwrap().duration_days, 1825);
        h.category = "location".into();
        assert!(governing(&s, &h).is_none());
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
    }
}
