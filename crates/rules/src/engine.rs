//! The deadline engine. The day of receipt is never counted; the receipt date is the local date
//! of the clock start in the jurisdiction's (or tenant's) zone. A deadline is a local date and
//! the instant it ends (24:00 local); a period in hours ends at its exact instant. Where the law
//! is open, `due` is the earliest defensible date and `latest` the most lenient one, with a note.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

use crate::calendar::{Calendar, Coverage};
use crate::{
    Confidence, DaysConvention, DeadlineRule, Jurisdiction, RulePack, RulesError, Unit, calendar,
    calendar_by_id, pack,
};

/// How to compute a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DueOptions {
    /// Apply the rule's extension (once).
    pub extended: bool,
    pub coverage: Coverage,
    /// The controller is a public agency: where the pack says so, its statutory last day rolls
    /// (AU: Acts Interpretation Act s 36) instead of the organisation's convention.
    pub agency: bool,
}

/// A computed deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// The last local day on which the answer is on time (conservative reading).
    pub due: Date,
    /// The instant `due` ends (or, for hours, the exact instant).
    pub due_at: Timestamp,
    /// The most lenient defensible reading (equal to `due` where the law is settled).
    pub latest: Date,
    pub latest_at: Timestamp,
    /// Why `latest` differs, or what is uncertain.
    pub note: Option<String>,
    pub calendar: String,
    /// The calendar a last day rolled over, when it is not `calendar` (US-CA: CCP § 135).
    pub roll_calendar: Option<String>,
    /// Set when the calendar's holiday set is an assumption (US-CA business days).
    pub calendar_assumption: Option<String>,
    /// Set when a date fell outside the calendar and weekends-only counting was used.
    pub weekends_only_fallback: bool,
    pub extended: bool,
    pub citation: String,
    pub confidence: Confidence,
}

fn date_err(e: jiff::Error) -> RulesError {
    RulesError::Date(e.to_string())
}

fn add_days(d: Date, n: i64) -> Result<Date, RulesError> {
    d.checked_add(Span::new().days(n)).map_err(date_err)
}

/// Same day `n` months later, clamped to the month's last day (31 Jan + 1 month = 28/29 Feb).
fn add_months(d: Date, n: i64) -> Result<Date, RulesError> {
    // jiff clamps the day of month when adding months to a civil date.
    d.checked_add(Span::new().months(n)).map_err(date_err)
}

struct Counter<'a> {
    calendar: &'a Calendar,
    /// The calendar a last day rolls over (usually `calendar`).
    rolling: &'a Calendar,
    coverage: Coverage,
    fallback: bool,
}

impl Counter<'_> {
    fn working(&mut self, d: Date) -> Result<bool, RulesError> {
        self.calendar
            .is_working_day(d, self.coverage, &mut self.fallback)
    }

    fn open(&mut self, d: Date) -> Result<bool, RulesError> {
        self.rolling
            .is_working_day(d, self.coverage, &mut self.fallback)
    }

    /// The `n`th working day after `from` (`from` itself when `n` is 0).
    fn working_days_after(&mut self, from: Date, n: u32) -> Result<Date, RulesError> {
        let mut d = from;
        let mut counted = 0;
        while counted < n {
            d = add_days(d, 1)?;
            if self.working(d)? {
                counted += 1;
            }
        }
        Ok(d)
    }

    /// `d` rolled for `latest` only: outside the calendar's years `d` itself, and `unrolled`
    /// says why (the rule needs no calendar for `due`, so a missing year must not fail it).
    fn roll_latest(&mut self, d: Date, unrolled: &mut Option<String>) -> Result<Date, RulesError> {
        match self.roll(d) {
            Err(RulesError::OutsideCalendar {
                calendar,
                first_year,
                last_year,
                ..
            }) => {
                *unrolled = Some(format!(
                    "`latest` could not be rolled: calendar {calendar} covers {first_year}–{last_year} only"
                ));
                Ok(d)
            }
            other => other,
        }
    }

    /// `d`, or the next day after it that the rolling calendar keeps open.
    fn roll(&mut self, mut d: Date) -> Result<Date, RulesError> {
        while !self.open(d)? {
            d = add_days(d, 1)?;
        }
        Ok(d)
    }
}

fn end_of_day(d: Date, zone: &TimeZone) -> Result<Timestamp, RulesError> {
    Ok(add_days(d, 1)?
        .to_zoned_datetime(zone.clone())
        .map_err(date_err)?
        .timestamp())
}

/// Computes a rule's deadline from `clock_start`, counting and rolling over `calendar`.
pub fn due(
    rule: &DeadlineRule,
    convention: DaysConvention,
    clock_start: Timestamp,
    zone: &TimeZone,
    calendar: &Calendar,
    options: DueOptions,
) -> Result<Deadline, RulesError> {
    due_on(
        rule,
        convention,
        clock_start,
        zone,
        calendar,
        calendar,
        options,
    )
}

/// [`due`], with a last day rolled over `rolling` rather than the counting calendar.
fn due_on(
    rule: &DeadlineRule,
    convention: DaysConvention,
    clock_start: Timestamp,
    zone: &TimeZone,
    calendar: &Calendar,
    rolling: &Calendar,
    options: DueOptions,
) -> Result<Deadline, RulesError> {
    let receipt = clock_start.to_zoned_datetime(zone.clone()).date();
    let extension = if options.extended {
        Some(rule.extension.as_ref().ok_or(RulesError::NoExtension)?)
    } else {
        None
    };
    let ext = extension.map_or(0, |e| e.duration);
    let mut c = Counter {
        calendar,
        rolling,
        coverage: options.coverage,
        fallback: false,
    };
    let mut note = rule.note.clone();
    let mut unrolled = None;
    let (due, latest, due_at, latest_at) = match rule.unit {
        Unit::Hours => {
            let at = clock_start
                .checked_add(Span::new().hours(i64::from(rule.duration + ext)))
                .map_err(date_err)?;
            let day = at.to_zoned_datetime(zone.clone()).date();
            (day, day, at, at)
        }
        Unit::WorkingDays | Unit::BusinessDays => {
            let d = c.working_days_after(receipt, rule.duration + ext)?;
            (d, d, end_of_day(d, zone)?, end_of_day(d, zone)?)
        }
        Unit::CalendarDays => {
            let n = i64::from(rule.duration + ext);
            let (due, latest) = match convention {
                DaysConvention::Rolled => {
                    let d = c.roll(add_days(receipt, n)?)?;
                    (d, d)
                }
                DaysConvention::ExactDueRolledLatest => {
                    let d = add_days(receipt, n)?;
                    (d, c.roll_latest(d, &mut unrolled)?)
                }
                DaysConvention::MinusOneDueRolledLatest => (
                    add_days(receipt, n - 1)?,
                    c.roll_latest(add_days(receipt, n)?, &mut unrolled)?,
                ),
            };
            (
                due,
                latest,
                end_of_day(due, zone)?,
                end_of_day(latest, zone)?,
            )
        }
        Unit::CalendarMonths => {
            let n = i64::from(rule.duration);
            let (due, latest) = match extension {
                None => {
                    let d = c.roll(add_months(receipt, n)?)?;
                    (d, d)
                }
                Some(e) => {
                    // "Two further months": from receipt at once, or after the first period.
                    let at_once = c.roll(add_months(receipt, n + i64::from(e.duration))?)?;
                    let chained =
                        c.roll(add_months(add_months(receipt, n)?, i64::from(e.duration))?)?;
                    if at_once != chained {
                        note = Some(
                            "the extension read as months from receipt and as months after the first period differ; `due` takes the earlier".into(),
                        );
                    }
                    (at_once.min(chained), at_once.max(chained))
                }
            };
            (
                due,
                latest,
                end_of_day(due, zone)?,
                end_of_day(latest, zone)?,
            )
        }
    };
    if rule.unit == Unit::CalendarDays && due != latest && note.is_none() {
        note = Some(
            "the last day may move to the next working day; `latest` takes that reading".into(),
        );
    }
    if let Some(why) = unrolled {
        note = Some(match note {
            Some(n) => format!("{n}; {why}"),
            None => why,
        });
    }
    Ok(Deadline {
        due,
        due_at,
        latest,
        latest_at,
        note,
        calendar: calendar.id.clone(),
        roll_calendar: (rolling.id != calendar.id).then(|| rolling.id.clone()),
        calendar_assumption: calendar.assumption.clone(),
        weekends_only_fallback: c.fallback,
        extended: options.extended,
        citation: extension.map_or_else(
            || rule.citation.clone(),
            |e| format!("{}; extension: {}", rule.citation, e.citation),
        ),
        confidence: extension.map_or(rule.confidence, |e| e.confidence.min_with(rule.confidence)),
    })
}

impl Confidence {
    /// The less certain of two marks.
    fn min_with(self, other: Confidence) -> Confidence {
        let rank = |c: Confidence| match c {
            Confidence::Verified => 3,
            Confidence::Secondary => 2,
            Confidence::Background => 1,
            Confidence::Uncertain => 0,
        };
        if rank(self) <= rank(other) {
            self
        } else {
            other
        }
    }
}

fn or_fallback(
    found: Result<&'static Calendar, RulesError>,
    coverage: Coverage,
) -> Result<std::borrow::Cow<'static, Calendar>, RulesError> {
    match found {
        Ok(c) => Ok(std::borrow::Cow::Borrowed(c)),
        Err(RulesError::NoCalendar(id)) if coverage == Coverage::WeekendsOnlyFallback => {
            Ok(std::borrow::Cow::Owned(Calendar::weekends_only(&id)))
        }
        Err(e) => Err(e),
    }
}

/// A pack's counting calendar (refined by `region`) and the calendar its last days roll over.
fn calendars_for(
    pack: &RulePack,
    jurisdiction: Jurisdiction,
    region: Option<&str>,
    coverage: Coverage,
) -> Result<
    (
        std::borrow::Cow<'static, Calendar>,
        std::borrow::Cow<'static, Calendar>,
    ),
    RulesError,
> {
    let counting = or_fallback(calendar(jurisdiction, region), coverage)?;
    let rolling = match &pack.roll_calendar {
        Some(id) => or_fallback(calendar_by_id(id), coverage)?,
        None => counting.clone(),
    };
    Ok((counting, rolling))
}

/// The convention a pack's calendar-day periods end by, for an organisation or an agency,
/// with the note that explains a `due`/`latest` gap.
fn convention(pack: &RulePack, options: DueOptions) -> (DaysConvention, Option<&String>) {
    match (options.agency, pack.agency_days) {
        (true, Some(days)) => (days, pack.agency_days_note.as_ref()),
        _ => (pack.days, pack.days_note.as_ref()),
    }
}

/// The statutory deadline of `request`/`stage` for a request whose clock started at
/// `clock_start`: the regime is the one in force on the local receipt date; `zone` overrides the
/// pack's zone (a tenant's own zone); `region` picks the member state's or state's calendar.
pub fn deadline(
    jurisdiction: Jurisdiction,
    region: Option<&str>,
    zone: Option<&TimeZone>,
    request: &str,
    stage: &str,
    clock_start: Timestamp,
    options: DueOptions,
) -> Result<Deadline, RulesError> {
    let probe = zone.cloned().unwrap_or(TimeZone::UTC);
    let received = clock_start.to_zoned_datetime(probe).date();
    let pack = pack(jurisdiction, received)?;
    let zone = zone.cloned().unwrap_or_else(|| pack.zone());
    let rule = pack.rule(request, stage)?;
    let (counting, rolling) = calendars_for(pack, jurisdiction, region, options.coverage)?;
    let (days, days_note) = convention(pack, options);
    let mut d = due_on(rule, days, clock_start, &zone, &counting, &rolling, options)?;
    let agency = options.agency && pack.agency_days.is_some();
    if d.note.is_none() && (d.due != d.latest || agency) {
        d.note = days_note.cloned();
    }
    Ok(d)
}

/// Which bound decided a combined deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Statute,
    Promise,
}

/// The earlier of the statutory deadline and the tenant's promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combined {
    pub deadline: Deadline,
    pub bound: Bound,
    /// How many days earlier the binding deadline is than the other (0 when equal).
    pub margin_days: i64,
}

/// Combines a statutory deadline with a tenant's promised one: the earlier wins (the statute
/// on a tie), and the result says which and by how many days.
pub fn combine(statute: Deadline, promise: Deadline) -> Combined {
    let days = |a: Date, b: Date| (b - a).get_days() as i64;
    if promise.due_at < statute.due_at {
        Combined {
            margin_days: days(promise.due, statute.due),
            deadline: promise,
            bound: Bound::Promise,
        }
    } else {
        Combined {
            margin_days: days(statute.due, promise.due),
            deadline: statute,
            bound: Bound::Statute,
        }
    }
}

/// A tenant's promise ("we answer within N days", or N working/business days), counted with the
/// jurisdiction's conventions and calendar.
pub fn promise(
    jurisdiction: Jurisdiction,
    region: Option<&str>,
    zone: Option<&TimeZone>,
    days: u32,
    unit: Unit,
    clock_start: Timestamp,
    options: DueOptions,
) -> Result<Deadline, RulesError> {
    let probe = zone.cloned().unwrap_or(TimeZone::UTC);
    let pack = pack(jurisdiction, clock_start.to_zoned_datetime(probe).date())?;
    let zone = zone.cloned().unwrap_or_else(|| pack.zone());
    let rule = DeadlineRule {
        request: "promise".into(),
        stage: "complete".into(),
        duration: days,
        unit,
        clock_start: "received".into(),
        citation: "the tenant's published promise".into(),
        confidence: Confidence::Verified,
        note: None,
        extension: None,
    };
    let (counting, rolling) = calendars_for(pack, jurisdiction, region, options.coverage)?;
    due_on(
        &rule,
        convention(pack, options).0,
        clock_start,
        &zone,
        &counting,
        &rolling,
        DueOptions {
            extended: false,
            ..options
        },
    )
}
