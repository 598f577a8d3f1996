//! Working-day calendars, loaded from the data files in `data/calendars/`: for each year covered,
//! the weekdays that are not working days and the weekend days that are (transfers). A date
//! outside the covered years is an error unless the caller asks, explicitly, for the labelled
//! weekends-only fallback.

use std::collections::BTreeSet;

use jiff::civil::{Date, Weekday};
use serde::Deserialize;

use crate::RulesError;

/// One calendar file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarFile {
    id: String,
    name: String,
    first_year: i16,
    last_year: i16,
    sources: Vec<String>,
    #[serde(default)]
    assumption: Option<String>,
    non_working: Vec<Date>,
    working_weekend: Vec<Date>,
    #[serde(default)]
    notes: Vec<String>,
}

/// A jurisdiction's (or region's) working days.
#[derive(Debug, Clone)]
pub struct Calendar {
    pub id: String,
    pub name: String,
    pub first_year: i16,
    pub last_year: i16,
    pub sources: Vec<String>,
    /// Set when the holiday set is this product's assumption rather than the law's.
    pub assumption: Option<String>,
    pub notes: Vec<String>,
    non_working: BTreeSet<Date>,
    working_weekend: BTreeSet<Date>,
}

/// What to do with a date outside the calendar's years.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coverage {
    /// Refuse (the default): no silent guesses.
    #[default]
    Strict,
    /// Count Saturdays and Sundays only, and say so in the result.
    WeekendsOnlyFallback,
}

impl Calendar {
    pub(crate) fn parse(text: &str) -> Result<Calendar, String> {
        let f: CalendarFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for d in f.non_working.iter().chain(&f.working_weekend) {
            if d.year() < f.first_year || d.year() > f.last_year {
                return Err(format!(
                    "{}: {d} is outside {}–{}",
                    f.id, f.first_year, f.last_year
                ));
            }
        }
        // Holidays that fall on a weekend may be listed (they change nothing); days listed as
        // working weekend days must really be weekend days.
        for d in &f.working_weekend {
            if !is_weekend(*d) {
                return Err(format!(
                    "{}: {d} is listed as a working weekend day but is a weekday",
                    f.id
                ));
            }
        }
        Ok(Calendar {
            id: f.id,
            name: f.name,
            first_year: f.first_year,
            last_year: f.last_year,
            sources: f.sources,
            assumption: f.assumption.filter(|a| !a.is_empty()),
            notes: f.notes,
            non_working: f.non_working.into_iter().collect(),
            working_weekend: f.working_weekend.into_iter().collect(),
        })
    }

    /// A calendar that covers no year: every lookup falls back to weekends only (and says so),
    /// or fails when the caller did not ask for the fallback.
    pub fn weekends_only(id: &str) -> Calendar {
        Calendar {
            id: id.to_owned(),
            name: format!("{id}: weekends only (no holiday data)"),
            first_year: 1,
            last_year: 0,
            sources: Vec::new(),
            assumption: None,
            notes: Vec::new(),
            non_working: BTreeSet::new(),
            working_weekend: BTreeSet::new(),
        }
    }

    /// Whether `date` is in the years this calendar covers.
    pub fn covers(&self, date: Date) -> bool {
        (self.first_year..=self.last_year).contains(&date.year())
    }

    /// Whether `date` is a working day. Outside the covered years: an error, or (with the
    /// fallback) Monday to Friday, reported through `fallback_used`.
    pub fn is_working_day(
        &self,
        date: Date,
        coverage: Coverage,
        fallback_used: &mut bool,
    ) -> Result<bool, RulesError> {
        if !self.covers(date) {
            return match coverage {
                Coverage::Strict => Err(RulesError::OutsideCalendar {
                    calendar: self.id.clone(),
                    date,
                    first_year: self.first_year,
                    last_year: self.last_year,
                }),
                Coverage::WeekendsOnlyFallback => {
                    *fallback_used = true;
                    Ok(!is_weekend(date))
                }
            };
        }
        if is_weekend(date) {
            Ok(self.working_weekend.contains(&date))
        } else {
            Ok(!self.non_working.contains(&date))
        }
    }
}

pub(crate) fn is_weekend(d: Date) -> bool {
    matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday)
}
