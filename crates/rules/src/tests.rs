//! Dated cases written from the law and the calendars (each comment shows the count by hand),
//! data checks, and property tests of the engine.

use jiff::Timestamp;
use jiff::civil::{Date, date};
use jiff::tz::TimeZone;
use proptest::prelude::*;

use super::*;

/// A local wall-clock instant in `zone`.
fn local(d: &str, zone: &str) -> Timestamp {
    let dt: jiff::civil::DateTime = d.parse().unwrap();
    dt.to_zoned_datetime(TimeZone::get(zone).unwrap())
        .unwrap()
        .timestamp()
}

fn zone_of(j: Jurisdiction) -> &'static str {
    match j {
        Jurisdiction::Vn => "Asia/Ho_Chi_Minh",
        Jurisdiction::Ru => "Europe/Moscow",
        Jurisdiction::Au => "Australia/Sydney",
        Jurisdiction::Eu => "Europe/Berlin",
        Jurisdiction::UsCa => "America/Los_Angeles",
    }
}

struct Case {
    what: &'static str,
    j: Jurisdiction,
    region: Option<&'static str>,
    request: &'static str,
    stage: &'static str,
    received: &'static str,
    extended: bool,
    due: Date,
    latest: Date,
}

#[allow(clippy::too_many_arguments)]
const fn case(
    what: &'static str,
    j: Jurisdiction,
    region: Option<&'static str>,
    request: &'static str,
    stage: &'static str,
    received: &'static str,
    extended: bool,
    due: Date,
    latest: Date,
) -> Case {
    Case {
        what,
        j,
        region,
        request,
        stage,
        received,
        extended,
        due,
        latest,
    }
}

use Jurisdiction::{Au, Eu, Ru, UsCa, Vn};

const CASES: &[Case] = &[
    // RU 10 WD from Fri 26 Dec 2025: Mon 29 (1), Tue 30 (2); 31 Dec and 1–11 Jan are off;
    // 12,13,14,15,16 (3–7), 19,20,21 (8–10).
    case(
        "RU before New Year",
        Ru,
        None,
        "access",
        "complete",
        "2025-12-26T10:00",
        false,
        date(2026, 1, 21),
        date(2026, 1, 21),
    ),
    // … extended by 5 WD from 21 Jan: 22, 23, 26, 27, 28.
    case(
        "RU New Year + extension",
        Ru,
        None,
        "access",
        "complete",
        "2025-12-26T10:00",
        true,
        date(2026, 1, 28),
        date(2026, 1, 28),
    ),
    // Thu 24 Apr 2025: 25, 28, 29, 30 (1–4); 1–2 May off; 5, 6, 7 (5–7); 8–9 May off; 12, 13, 14.
    case(
        "RU before the May holidays",
        Ru,
        None,
        "access",
        "complete",
        "2025-04-24T09:00",
        false,
        date(2025, 5, 14),
        date(2025, 5, 14),
    ),
    // Thu 30 Oct 2025: Fri 31 (1), Sat 1 Nov is a transferred working day (2), 3–4 Nov off;
    // 5, 6, 7 (3–5), 10–14 (6–10).
    case(
        "RU transferred working Saturday",
        Ru,
        None,
        "access",
        "complete",
        "2025-10-30T12:00",
        false,
        date(2025, 11, 14),
        date(2025, 11, 14),
    ),
    // Sat 21 Feb 2026: 23 Feb off; 24–27 (1–4), 2–6 Mar (5–9), 9 Mar off, Tue 10 (10).
    case(
        "RU received on a weekend",
        Ru,
        None,
        "access",
        "complete",
        "2026-02-21T15:00",
        false,
        date(2026, 3, 10),
        date(2026, 3, 10),
    ),
    // Thu 18 Feb 2027: Fri 19 (1), Sat 20 worked (2), 22–23 off, 24, 25, 26 (3–5), 1–5 Mar (6–10).
    case(
        "RU 2027 working Saturday",
        Ru,
        None,
        "access",
        "complete",
        "2027-02-18T11:00",
        false,
        date(2027, 3, 5),
        date(2027, 3, 5),
    ),
    // 30 CD from Tue 13 May 2025 = Thu 12 Jun (Russia Day): due as counted; the lenient
    // reading rolls past 12–13 Jun and the weekend to Mon 16 Jun.
    case(
        "RU 30 CD ending on a holiday",
        Ru,
        None,
        "consent_withdrawal",
        "destroy",
        "2025-05-13T08:00",
        false,
        date(2025, 6, 12),
        date(2025, 6, 16),
    ),
    // 7 WD from Fri 6 Jun 2025: 9, 10, 11 (1–3), 12–13 off, 16, 17, 18, 19 (4–7).
    case(
        "RU erasure of unnecessary data",
        Ru,
        None,
        "erasure",
        "complete",
        "2025-06-06T17:00",
        false,
        date(2025, 6, 19),
        date(2025, 6, 19),
    ),
    // VN Decree 13 (received 31 Dec 2025): 72 h → 3 Jan 2026 10:00.
    case(
        "VN regime switch: Decree 13",
        Vn,
        None,
        "access",
        "complete",
        "2025-12-31T10:00",
        false,
        date(2026, 1, 3),
        date(2026, 1, 3),
    ),
    // VN Law 91 (received Fri 2 Jan 2026): acknowledge in 2 WD → Mon 5 (1), Tue 6 (2).
    case(
        "VN regime switch: Law 91 acknowledge",
        Vn,
        None,
        "access",
        "acknowledge",
        "2026-01-02T10:00",
        false,
        date(2026, 1, 6),
        date(2026, 1, 6),
    ),
    // 10 days from 2 Jan 2026 = Mon 12 Jan, a working day.
    case(
        "VN Law 91 completion (uncertain 10 days)",
        Vn,
        None,
        "access",
        "complete",
        "2026-01-02T10:00",
        false,
        date(2026, 1, 12),
        date(2026, 1, 12),
    ),
    // Fri 13 Feb 2026: Tết 16–20 Feb off; Mon 23 (1), Tue 24 (2).
    case(
        "VN acknowledge across Tết",
        Vn,
        None,
        "access",
        "acknowledge",
        "2026-02-13T16:00",
        false,
        date(2026, 2, 24),
        date(2026, 2, 24),
    ),
    // Sat 7 Feb 2026 + 10 = Tue 17 Feb (Tết): Art. 148 moves it past Tết and the weekend to 23 Feb.
    case(
        "VN 10 days ending in Tết",
        Vn,
        None,
        "access",
        "complete",
        "2026-02-07T09:00",
        false,
        date(2026, 2, 23),
        date(2026, 2, 23),
    ),
    // Withdrawal 15 + 15 days from Mon 2 Mar 2026 = Wed 1 Apr.
    case(
        "VN withdrawal with extension",
        Vn,
        None,
        "consent_withdrawal",
        "complete",
        "2026-03-02T09:00",
        true,
        date(2026, 4, 1),
        date(2026, 4, 1),
    ),
    // Erasure 20 days from Fri 10 Apr 2026 = Thu 30 Apr (holiday); 1 May holiday; weekend; Mon 4 May.
    case(
        "VN erasure ending on 30 April",
        Vn,
        None,
        "erasure",
        "complete",
        "2026-04-10T09:00",
        false,
        date(2026, 5, 4),
        date(2026, 5, 4),
    ),
    // Decree 13 breach: 72 h from 31 Dec 2025 20:00.
    case(
        "VN breach under Decree 13",
        Vn,
        None,
        "breach",
        "notify_regulator",
        "2025-12-31T20:00",
        false,
        date(2026, 1, 3),
        date(2026, 1, 3),
    ),
    // CA: 45 days from Mon 2 Mar 2026: due = +44 (Wed 15 Apr), latest = +45 (Thu 16 Apr).
    case(
        "CA access 45 days",
        UsCa,
        None,
        "access",
        "complete",
        "2026-03-02T10:00",
        false,
        date(2026, 4, 15),
        date(2026, 4, 16),
    ),
    // Thu 30 Apr 2026: +44 = Sat 13 Jun; +45 = Sun 14 Jun → Mon 15 Jun.
    case(
        "CA day 45 on a Sunday",
        UsCa,
        None,
        "access",
        "complete",
        "2026-04-30T10:00",
        false,
        date(2026, 6, 13),
        date(2026, 6, 15),
    ),
    // Mon 23 Nov 2026: 24, 25 (1–2), 26–27 Thanksgiving and the day after, 30 Nov–4 Dec (3–7),
    // 7, 8, 9 Dec (8–10).
    case(
        "CA acknowledge across Thanksgiving",
        UsCa,
        None,
        "access",
        "acknowledge",
        "2026-11-23T10:00",
        false,
        date(2026, 12, 9),
        date(2026, 12, 9),
    ),
    // Mon 15 Dec 2025, 15 BD: 16–19 (1–4), 22, 23, 24 (5–7), 25 off, 26 (8), 29, 30, 31 (9–11),
    // 1 Jan off, 2 (12), 5, 6, 7 (13–15).
    case(
        "CA opt-out across the holidays",
        UsCa,
        None,
        "opt_out",
        "complete",
        "2025-12-15T10:00",
        false,
        date(2026, 1, 7),
        date(2026, 1, 7),
    ),
    // 90 days from 2 Mar 2026: +89 = Sat 30 May; +90 = Sun 31 May → Mon 1 Jun.
    case(
        "CA extended to 90 days",
        UsCa,
        None,
        "access",
        "complete",
        "2026-03-02T10:00",
        true,
        date(2026, 5, 30),
        date(2026, 6, 1),
    ),
    // GDPR: 31 Jan 2026 + 1 month = 28 Feb (clamped, a Saturday) → Mon 2 Mar (DE).
    case(
        "GDPR month end clamp and roll",
        Eu,
        Some("DE"),
        "access",
        "complete",
        "2026-01-31T10:00",
        false,
        date(2026, 3, 2),
        date(2026, 3, 2),
    ),
    // 31 Jan 2027 + 1 month = Sun 28 Feb → Mon 1 Mar.
    case(
        "GDPR February 2027",
        Eu,
        Some("DE"),
        "access",
        "complete",
        "2027-01-31T10:00",
        false,
        date(2027, 3, 1),
        date(2027, 3, 1),
    ),
    // 31 Mar 2026 + 1 month = Thu 30 Apr.
    case(
        "GDPR 31 March",
        Eu,
        Some("DE"),
        "access",
        "complete",
        "2026-03-31T10:00",
        false,
        date(2026, 4, 30),
        date(2026, 4, 30),
    ),
    // 14 Apr 2026 + 1 month = Thu 14 May, Ascension Day in Germany → Fri 15 May.
    case(
        "GDPR ending on Ascension (DE)",
        Eu,
        Some("DE"),
        "access",
        "complete",
        "2026-04-14T10:00",
        false,
        date(2026, 5, 15),
        date(2026, 5, 15),
    ),
    // 1 May 2026 + 1 month = Mon 1 Jun: a bank holiday in Ireland, not in Germany.
    case(
        "GDPR 1 June, Ireland",
        Eu,
        Some("IE"),
        "access",
        "complete",
        "2026-05-01T10:00",
        false,
        date(2026, 6, 2),
        date(2026, 6, 2),
    ),
    case(
        "GDPR 1 June, Germany",
        Eu,
        Some("DE"),
        "access",
        "complete",
        "2026-05-01T10:00",
        false,
        date(2026, 6, 1),
        date(2026, 6, 1),
    ),
    // Extension from 31 Jan 2026: three months at once = Thu 30 Apr; one then two = 28 Feb + 2 = Tue 28 Apr.
    case(
        "GDPR extension, two readings",
        Eu,
        Some("DE"),
        "access",
        "complete",
        "2026-01-31T10:00",
        true,
        date(2026, 4, 28),
        date(2026, 4, 30),
    ),
    // Extension from 10 Mar 2026: both readings give Wed 10 Jun.
    case(
        "GDPR extension, one reading",
        Eu,
        Some("DE"),
        "erasure",
        "complete",
        "2026-03-10T10:00",
        true,
        date(2026, 6, 10),
        date(2026, 6, 10),
    ),
    // Breach: 72 h from Tue 10 Mar 2026 09:00 → Fri 13 Mar 09:00.
    case(
        "GDPR breach 72 h",
        Eu,
        Some("DE"),
        "breach",
        "notify_regulator",
        "2026-03-10T09:00",
        false,
        date(2026, 3, 13),
        date(2026, 3, 13),
    ),
    // AU (NSW): Sat 28 Mar 2026 + 30 = Mon 27 Apr, NSW's Anzac Day substitute: due as counted,
    // latest Tue 28 Apr.
    case(
        "AU NSW Anzac substitute",
        Au,
        Some("NSW"),
        "access",
        "complete",
        "2026-03-28T10:00",
        false,
        date(2026, 4, 27),
        date(2026, 4, 28),
    ),
    // AU (VIC) 2031: Sun 5 Oct + 30 = Tue 4 Nov, Melbourne Cup Day in Victoria only: an
    // organisation's due stays, latest Wed 5 Nov; in NSW both are 4 Nov.
    case(
        "AU VIC Melbourne Cup 2031",
        Au,
        Some("VIC"),
        "access",
        "complete",
        "2031-10-05T10:00",
        false,
        date(2031, 11, 4),
        date(2031, 11, 5),
    ),
    case(
        "AU NSW has no Melbourne Cup 2031",
        Au,
        Some("NSW"),
        "access",
        "complete",
        "2031-10-05T10:00",
        false,
        date(2031, 11, 4),
        date(2031, 11, 4),
    ),
    // EU 2033: Tue 14 Jun + 1 month = Thu 14 Jul, France's national day → Fri 15 Jul in FR;
    // a working day in DE.
    case(
        "EU FR 14 July 2033",
        Eu,
        Some("FR"),
        "access",
        "complete",
        "2033-06-14T10:00",
        false,
        date(2033, 7, 15),
        date(2033, 7, 15),
    ),
    case(
        "EU DE 14 July 2033",
        Eu,
        Some("DE"),
        "access",
        "complete",
        "2033-06-14T10:00",
        false,
        date(2033, 7, 14),
        date(2033, 7, 14),
    ),
    // EU 2035: Fri 30 Mar + 1 month = Mon 30 Apr: Orthodox Easter Monday in Greece, then Tue
    // 1 May (Labour Day) → Wed 2 May; Western Easter was 25 Mar, so 30 Apr works in DE.
    case(
        "EU GR Orthodox Easter 2035",
        Eu,
        Some("GR"),
        "access",
        "complete",
        "2035-03-30T10:00",
        false,
        date(2035, 5, 2),
        date(2035, 5, 2),
    ),
    case(
        "EU DE after Western Easter 2035",
        Eu,
        Some("DE"),
        "access",
        "complete",
        "2035-03-30T10:00",
        false,
        date(2035, 4, 30),
        date(2035, 4, 30),
    ),
    // RU 2029, no transfer decree yet: Unity Day Sun 4 Nov moves to Mon 5 Nov (Art. 112 pt 2).
    // 10 WD from Fri 26 Oct: 29, 30, 31 Oct, 1, 2 Nov (1–5), 6–9 Nov (6–9), Mon 12 Nov (10).
    case(
        "RU Art. 112 move 2029",
        Ru,
        None,
        "access",
        "complete",
        "2029-10-26T10:00",
        false,
        date(2029, 11, 12),
        date(2029, 11, 12),
    ),
    // VN 2031: acknowledge within 2 WD of Mon 31 Mar; Tue 1 Apr is Hung Kings Day (10/3 lunar):
    // Wed 2 Apr (1), Thu 3 Apr (2).
    case(
        "VN Hung Kings 2031",
        Vn,
        None,
        "access",
        "acknowledge",
        "2031-03-31T10:00",
        false,
        date(2031, 4, 3),
        date(2031, 4, 3),
    ),
    // VN 2031: 10 days from Mon 13 Jan = Thu 23 Jan, Tết (21–24 Jan, 27 Jan as estimated) →
    // Tue 28 Jan.
    case(
        "VN Tet 2031",
        Vn,
        None,
        "access",
        "complete",
        "2031-01-13T10:00",
        false,
        date(2031, 1, 28),
        date(2031, 1, 28),
    ),
    // Same receipt, national calendar: 27 Apr is not a national holiday.
    case(
        "AU national calendar",
        Au,
        None,
        "access",
        "complete",
        "2026-03-28T10:00",
        false,
        date(2026, 4, 27),
        date(2026, 4, 27),
    ),
    // 28 Nov 2026 + 30 = Mon 28 Dec, Boxing Day observed → latest Tue 29 Dec.
    case(
        "AU Boxing Day observed",
        Au,
        Some("NSW"),
        "access",
        "complete",
        "2026-11-28T10:00",
        false,
        date(2026, 12, 28),
        date(2026, 12, 29),
    ),
    // Breach assessment: 1 Dec 2025 + 30 = Wed 31 Dec.
    case(
        "AU breach assessment",
        Au,
        Some("NSW"),
        "breach",
        "assess",
        "2025-12-01T10:00",
        false,
        date(2025, 12, 31),
        date(2025, 12, 31),
    ),
    // RU breach: 24 h from Fri 6 Mar 2026 18:00 → Sat 7 Mar 18:00 (hours do not roll).
    case(
        "RU breach 24 h",
        Ru,
        None,
        "breach",
        "notify_regulator",
        "2026-03-06T18:00",
        false,
        date(2026, 3, 7),
        date(2026, 3, 7),
    ),
    // Decree 13 rectification: 72 h from Fri 6 Jun 2025 09:00 → Mon 9 Jun.
    case(
        "VN rectification under Decree 13",
        Vn,
        None,
        "rectification",
        "complete",
        "2025-06-06T09:00",
        false,
        date(2025, 6, 9),
        date(2025, 6, 9),
    ),
    // RU rectification 7 WD from Mon 4 May 2026: 5–8 (1–4), 11 May off, 12, 13, 14 (5–7).
    case(
        "RU rectification across Victory Day",
        Ru,
        None,
        "rectification",
        "complete",
        "2026-05-04T09:00",
        false,
        date(2026, 5, 14),
        date(2026, 5, 14),
    ),
    // RU objection 10 WD from Mon 8 Jun 2026: 9, 10, 11 (1–3), 12 Jun off, 15–19 (4–8), 22, 23.
    case(
        "RU objection across Russia Day",
        Ru,
        None,
        "objection",
        "complete",
        "2026-06-08T09:00",
        false,
        date(2026, 6, 23),
        date(2026, 6, 23),
    ),
    // … extended by 5 WD: 24, 25, 26, 29, 30 Jun.
    case(
        "RU objection extended",
        Ru,
        None,
        "objection",
        "complete",
        "2026-06-08T09:00",
        true,
        date(2026, 6, 30),
        date(2026, 6, 30),
    ),
    // CA erasure from Thanksgiving 2025: +44 = Sat 10 Jan 2026; +45 = Sun 11 Jan → Mon 12 Jan.
    case(
        "CA erasure from Thanksgiving",
        UsCa,
        None,
        "erasure",
        "complete",
        "2025-11-27T10:00",
        false,
        date(2026, 1, 10),
        date(2026, 1, 12),
    ),
    // 2 Jan 2026 + 1 month = Mon 2 Feb, St Brigid's Day in Ireland → Tue 3 Feb.
    case(
        "GDPR St Brigid's Day (IE)",
        Eu,
        Some("IE"),
        "access",
        "complete",
        "2026-01-02T10:00",
        false,
        date(2026, 2, 3),
        date(2026, 2, 3),
    ),
    // AU national: 26 Dec 2025 + 30 = Sun 25 Jan 2026; the lenient reading passes the Sunday
    // and Australia Day (Mon 26 Jan) to Tue 27 Jan.
    case(
        "AU ending before Australia Day",
        Au,
        None,
        "access",
        "complete",
        "2025-12-26T10:00",
        false,
        date(2026, 1, 25),
        date(2026, 1, 27),
    ),
    // VN 2027 (provisional Tết 4–10 Feb): Wed 3 Feb + 2 WD = Thu 11 (1), Fri 12 (2).
    case(
        "VN Tết 2027 (provisional)",
        Vn,
        None,
        "access",
        "acknowledge",
        "2027-02-03T09:00",
        false,
        date(2027, 2, 12),
        date(2027, 2, 12),
    ),
    // RU blocking while checking: at once.
    case(
        "RU block at once",
        Ru,
        None,
        "restriction",
        "complete",
        "2026-03-06T18:00",
        false,
        date(2026, 3, 6),
        date(2026, 3, 6),
    ),
];

#[test]
fn dated_cases() {
    assert!(CASES.len() >= 40);
    for c in CASES {
        let start = local(c.received, zone_of(c.j));
        let d = deadline(
            c.j,
            c.region,
            None,
            c.request,
            c.stage,
            start,
            DueOptions {
                extended: c.extended,
                coverage: Coverage::Strict,
                agency: false,
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", c.what));
        assert_eq!((d.due, d.latest), (c.due, c.latest), "{}", c.what);
        assert!(!d.weekends_only_fallback, "{}", c.what);
        assert!(d.due_at >= start, "{}", c.what);
    }
}

#[test]
fn the_receipt_date_is_the_local_date() {
    // 21:30 UTC on Sun 28 Dec 2025 is 00:30 on Mon 29 Dec in Moscow: counting starts on the 29th,
    // so WD 1 is Tue 30 and WD 10 lands on Thu 22 Jan 2026 (not 21 Jan).
    let start: Timestamp = "2025-12-28T21:30:00Z".parse().unwrap();
    let d = deadline(
        Ru,
        None,
        None,
        "access",
        "complete",
        start,
        DueOptions::default(),
    )
    .unwrap();
    assert_eq!(d.due, date(2026, 1, 22));
    // The deadline ends at 24:00 Moscow time of that day.
    assert_eq!(d.due_at, local("2026-01-23T00:00", "Europe/Moscow"));
    // A tenant's own zone can move the receipt date.
    let utc = TimeZone::UTC;
    let d = deadline(
        Ru,
        None,
        Some(&utc),
        "access",
        "complete",
        start,
        DueOptions::default(),
    )
    .unwrap();
    assert_eq!(d.due, date(2026, 1, 21));
}

#[test]
fn the_regime_is_chosen_by_the_date_received() {
    assert!(
        pack(Vn, date(2025, 12, 31))
            .unwrap()
            .regime
            .contains("Decree 13")
    );
    assert!(
        pack(Vn, date(2026, 1, 1))
            .unwrap()
            .regime
            .contains("91/2025")
    );
    assert!(matches!(
        pack(Vn, date(2023, 6, 30)),
        Err(RulesError::NoRegime { .. })
    ));
    let uncertain = pack(Vn, date(2026, 1, 2))
        .unwrap()
        .rule("access", "complete")
        .unwrap();
    assert_eq!(uncertain.confidence, Confidence::Uncertain);
    assert!(!uncertain.confidence.is_certain());
}

#[test]
fn outside_the_calendar_is_an_error_or_a_labelled_fallback() {
    // RU 10 WD from Thu 27 Dec 2040 runs into 2041, which no calendar covers.
    let start = local("2040-12-27T10:00", "Europe/Moscow");
    let strict = deadline(
        Ru,
        None,
        None,
        "access",
        "complete",
        start,
        DueOptions::default(),
    );
    assert!(
        matches!(strict, Err(RulesError::OutsideCalendar { .. })),
        "{strict:?}"
    );
    let fallback = DueOptions {
        coverage: Coverage::WeekendsOnlyFallback,
        ..DueOptions::default()
    };
    let d = deadline(Ru, None, None, "access", "complete", start, fallback).unwrap();
    // Fri 28 Dec (1), Mon 31 Dec (2, the 2040 calendar has no decree moving it), then weekends
    // only: 1–4 Jan 2041 (3–6), 7–10 Jan (7–10).
    assert_eq!(d.due, date(2041, 1, 10));
    assert!(d.weekends_only_fallback);
    // GDPR leap year beyond the calendars: 31 Jan 2044 + 1 month = Mon 29 Feb 2044.
    let start = local("2044-01-31T10:00", "Europe/Berlin");
    let d = deadline(Eu, Some("DE"), None, "access", "complete", start, fallback).unwrap();
    assert_eq!(d.due, date(2044, 2, 29));
    assert!(d.weekends_only_fallback);
    // An EU tenant without a member state has no calendar unless it accepts the fallback.
    let start = local("2026-05-01T10:00", "Europe/Berlin");
    let none = deadline(
        Eu,
        None,
        None,
        "access",
        "complete",
        start,
        DueOptions::default(),
    );
    assert!(matches!(none, Err(RulesError::NoCalendar(_))));
    // An EEA state outside the shipped EU calendars (Norway) likewise.
    let strict = deadline(
        Eu,
        Some("NO"),
        None,
        "access",
        "complete",
        start,
        DueOptions::default(),
    );
    assert!(matches!(strict, Err(RulesError::NoCalendar(_))));
    let d = deadline(Eu, Some("NO"), None, "access", "complete", start, fallback).unwrap();
    assert_eq!(d.due, date(2026, 6, 1));
    assert!(d.weekends_only_fallback);
}

#[test]
fn a_calendar_day_due_never_fails_for_want_of_a_calendar() {
    // CCPA 45 calendar days from 1 Dec 2040: `due` (day 44, no rolling) needs no calendar; only
    // the lenient `latest` would be rolled, and 2041 is not covered: it stays unrolled, said so.
    let start = local("2040-12-01T10:00", "America/Los_Angeles");
    let d = deadline(
        UsCa,
        None,
        None,
        "access",
        "complete",
        start,
        DueOptions::default(),
    )
    .unwrap();
    assert_eq!(d.due, date(2041, 1, 14));
    assert_eq!(d.latest, date(2041, 1, 15));
    let note = d.note.unwrap_or_default();
    assert!(note.contains("could not be rolled"), "{note}");
    assert!(!d.weekends_only_fallback);
    // A rule that rolls `due` itself still needs the calendar (RU working days above).
}

#[test]
fn an_agency_s_last_day_rolls_and_california_rolls_over_judicial_holidays() {
    // AU 2032: Sat 8 May + 30 = Mon 7 Jun, Western Australia Day. An agency's statutory last
    // day moves to Tue 8 Jun (Acts Interpretation Act s 36(2)); an organisation's `due` stays
    // day 30 with `latest` rolled; in NSW 7 Jun is a working day.
    let perth = TimeZone::get("Australia/Perth").unwrap();
    let start = local("2032-05-08T10:00", "Australia/Perth");
    let agency = DueOptions {
        agency: true,
        ..DueOptions::default()
    };
    let at = |region, options| {
        deadline(
            Au,
            Some(region),
            Some(&perth),
            "access",
            "complete",
            start,
            options,
        )
        .unwrap()
    };
    let wa = at("WA", agency);
    assert_eq!((wa.due, wa.latest), (date(2032, 6, 8), date(2032, 6, 8)));
    assert!(wa.note.unwrap_or_default().contains("s 36(2)"));
    let wa_org = at("WA", DueOptions::default());
    assert_eq!(
        (wa_org.due, wa_org.latest),
        (date(2032, 6, 7), date(2032, 6, 8))
    );
    let nsw = at("NSW", agency);
    assert_eq!((nsw.due, nsw.latest), (date(2032, 6, 7), date(2032, 6, 7)));
    // Agency or not changes nothing where the pack has one convention (RU).
    let ru = local("2029-10-26T10:00", "Europe/Moscow");
    assert_eq!(
        deadline(Ru, None, None, "access", "complete", ru, agency).unwrap(),
        deadline(
            Ru,
            None,
            None,
            "access",
            "complete",
            ru,
            DueOptions::default()
        )
        .unwrap()
    );

    // CCPA: Tue 12 Aug 2031 + 45 = Fri 26 Sep, Native American Day: a judicial holiday (CCP
    // § 135) though no business-day closure. `due` is day 44 (Thu 25 Sep); `latest` rolls over
    // the holiday, Saturday (CCP § 12a) and Sunday to Mon 29 Sep.
    let ca = |received| {
        deadline(
            UsCa,
            None,
            None,
            "access",
            "complete",
            local(received, "America/Los_Angeles"),
            DueOptions::default(),
        )
        .unwrap()
    };
    let d = ca("2031-08-12T10:00");
    assert_eq!((d.due, d.latest), (date(2031, 9, 25), date(2031, 9, 29)));
    assert_eq!(d.calendar, "US-CA");
    assert_eq!(d.roll_calendar.as_deref(), Some("US-CA-CCP"));
    // Sat 29 Dec 2035 + 45 = Tue 12 Feb 2036, Lincoln Day (judicial only) → latest Wed 13 Feb.
    let d = ca("2035-12-29T10:00");
    assert_eq!((d.due, d.latest), (date(2036, 2, 11), date(2036, 2, 13)));
    // The business days themselves do not stop on a judicial-only holiday: 10 business days
    // from Mon 22 Sep 2031 run through Fri 26 Sep (Native American Day): 23–26 (1–4),
    // 29 Sep–3 Oct (5–9), Mon 6 Oct (10).
    let ack = deadline(
        UsCa,
        None,
        None,
        "access",
        "acknowledge",
        local("2031-09-22T10:00", "America/Los_Angeles"),
        DueOptions::default(),
    )
    .unwrap();
    assert_eq!(ack.due, date(2031, 10, 6));
}

#[test]
fn ca_business_days_are_labelled_an_assumption() {
    let start = local("2026-11-23T10:00", "America/Los_Angeles");
    let d = deadline(
        UsCa,
        None,
        None,
        "access",
        "acknowledge",
        start,
        DueOptions::default(),
    )
    .unwrap();
    assert!(
        d.calendar_assumption
            .as_deref()
            .is_some_and(|a| a.contains("assumed"))
    );
    let ru = deadline(
        Ru,
        None,
        None,
        "access",
        "complete",
        start,
        DueOptions::default(),
    )
    .unwrap();
    assert!(ru.calendar_assumption.is_none());
}

#[test]
fn a_promise_is_combined_with_the_statute_and_the_earlier_wins() {
    // VN: statute 10 days (12 Jan 2026) vs the tenant's 30 days (1 Feb is a Sunday → 2 Feb).
    let start = local("2026-01-02T10:00", "Asia/Ho_Chi_Minh");
    let statute = deadline(
        Vn,
        None,
        None,
        "access",
        "complete",
        start,
        DueOptions::default(),
    )
    .unwrap();
    let promised = promise(
        Vn,
        None,
        None,
        30,
        Unit::CalendarDays,
        start,
        DueOptions::default(),
    )
    .unwrap();
    assert_eq!(promised.due, date(2026, 2, 2));
    let c = combine(statute, promised);
    assert_eq!(
        (c.bound, c.deadline.due, c.margin_days),
        (Bound::Statute, date(2026, 1, 12), 21)
    );
    // CA: statute 45 days (due 15 Apr 2026) vs a promise of 30 (due 31 Mar): the promise binds.
    let start = local("2026-03-02T10:00", "America/Los_Angeles");
    let statute = deadline(
        UsCa,
        None,
        None,
        "access",
        "complete",
        start,
        DueOptions::default(),
    )
    .unwrap();
    let promised = promise(
        UsCa,
        None,
        None,
        30,
        Unit::CalendarDays,
        start,
        DueOptions::default(),
    )
    .unwrap();
    let c = combine(statute, promised);
    assert_eq!(
        (c.bound, c.deadline.due, c.margin_days),
        (Bound::Promise, date(2026, 3, 31), 15)
    );
    // RU: the policy's 30 days (25 Jan 2026) are longer than 10 WD (21 Jan).
    let start = local("2025-12-26T10:00", "Europe/Moscow");
    let statute = deadline(
        Ru,
        None,
        None,
        "access",
        "complete",
        start,
        DueOptions::default(),
    )
    .unwrap();
    let promised = promise(
        Ru,
        None,
        None,
        30,
        Unit::CalendarDays,
        start,
        DueOptions::default(),
    )
    .unwrap();
    let c = combine(statute, promised);
    assert_eq!((c.bound, c.margin_days), (Bound::Statute, 4));
}

#[test]
fn consent_child_cross_border_and_breach_rules() {
    let ru = consent_form_rules(Ru, date(2025, 8, 31)).unwrap();
    assert!(!ru.bundling_forbidden_on(date(2025, 8, 31)));
    assert!(ru.bundling_forbidden_on(date(2025, 9, 1)));
    assert!(ru.pre_ticked_forbidden);
    assert!(
        !consent_form_rules(Au, date(2026, 1, 1))
            .unwrap()
            .pre_ticked_forbidden
    );
    assert!(honours_gpc(UsCa, date(2026, 1, 1)));
    assert!(!honours_gpc(Eu, date(2026, 1, 1)));
    let vn = child_rules(Vn, date(2025, 6, 1)).unwrap();
    assert_eq!((vn.age, vn.own_consent_from), (Some(16), Some(7)));
    assert_eq!(child_rules(Ru, date(2026, 1, 1)).unwrap().age, None);
    assert_eq!(child_rules(UsCa, date(2026, 1, 1)).unwrap().age, Some(13));
    let ru_x = cross_border_rules(Ru, date(2026, 1, 1)).unwrap();
    assert!(ru_x.iter().any(|r| r.wait_working_days == Some(10)));
    assert!(
        cross_border_rules(Vn, date(2026, 1, 1))
            .unwrap()
            .iter()
            .any(|r| r.dossier_days == Some(60))
    );
    let ru_breach = breach_windows(Ru, date(2026, 1, 1)).unwrap();
    let hours: Vec<u32> = ru_breach.iter().map(|r| r.duration).collect();
    assert_eq!(hours, [24, 72]);
}

#[test]
fn shipped_data_is_complete_and_cited() {
    assert_eq!(packs().len(), 6);
    for p in packs() {
        p.zone();
        assert!(!p.deadlines.is_empty(), "{}", p.regime);
        for r in &p.deadlines {
            assert!(
                !r.citation.is_empty(),
                "{} {}/{}",
                p.regime,
                r.request,
                r.stage
            );
        }
        assert!(!p.child.citation.is_empty() && !p.consent_form.citation.is_empty());
    }
    for j in Jurisdiction::ALL {
        assert!(pack(j, date(2026, 6, 1)).is_ok(), "{j}");
        let table = render_pack(j, date(2026, 6, 1)).unwrap();
        assert!(
            table.contains("| request |") && table.contains("conf."),
            "{table}"
        );
    }
    let ids: Vec<&str> = calendars().map(|c| c.id.as_str()).collect();
    for id in ["RU", "VN", "US-CA", "US-CA-CCP", "AU"] {
        assert!(ids.contains(&id), "{id}");
    }
    for state in ["ACT", "NSW", "NT", "QLD", "SA", "TAS", "VIC", "WA"] {
        assert!(calendar(Au, Some(state)).is_ok(), "AU-{state}");
    }
    let eu = [
        "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT",
        "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
    ];
    for state in eu {
        assert!(calendar(Eu, Some(state)).is_ok(), "EU-{state}");
    }
    for c in calendars() {
        assert!(
            c.first_year <= 2020 && c.last_year >= 2040,
            "{}: {}–{}",
            c.id,
            c.first_year,
            c.last_year
        );
        assert!(!c.sources.is_empty(), "{}", c.id);
    }
    for p in packs() {
        if let Some(id) = &p.roll_calendar {
            assert!(calendar_by_id(id).is_ok(), "{} rolls over {id}", p.regime);
        }
    }
    // Working-day totals of the RU production calendar (CALENDARS.md): 247 in each year.
    let ru = calendar(Ru, None).unwrap();
    for year in [2025i16, 2026, 2027] {
        let mut n = 0;
        let mut d = date(year, 1, 1);
        let mut fb = false;
        while d.year() == year {
            n += i32::from(ru.is_working_day(d, Coverage::Strict, &mut fb).unwrap());
            d = d.tomorrow().unwrap();
        }
        assert_eq!(n, 247, "RU {year}");
    }
    assert!(
        render_pack(Ru, date(2026, 1, 1))
            .unwrap()
            .contains("152-FZ Art. 20(1)")
    );
}

fn any_jurisdiction() -> impl Strategy<Value = Jurisdiction> {
    prop::sample::select(Jurisdiction::ALL.to_vec())
}

fn region_of(j: Jurisdiction) -> Option<&'static str> {
    match j {
        Eu => Some("DE"),
        Au => Some("NSW"),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No deadline ends before its clock starts, and `latest` is never before `due`.
    #[test]
    fn never_before_the_clock_start(j in any_jurisdiction(), day in 0i64..5800, minute in 0i64..1440, pick in 0usize..16, ext in any::<bool>()) {
        let start = local("2025-01-01T00:00", zone_of(j))
            .checked_add(jiff::Span::new().hours(day * 24).minutes(minute)).unwrap();
        let p = pack(j, start.to_zoned_datetime(TimeZone::get(zone_of(j)).unwrap()).date()).unwrap();
        let rule = &p.deadlines[pick % p.deadlines.len()];
        let opts = DueOptions { extended: ext && rule.extension.is_some(), coverage: Coverage::WeekendsOnlyFallback, agency: false };
        let d = deadline(j, region_of(j), None, &rule.request, &rule.stage, start, opts).unwrap();
        prop_assert!(d.due_at >= start);
        prop_assert!(d.latest >= d.due);
        prop_assert!(d.latest_at >= d.due_at);
    }

    /// Counting more working days never gives an earlier date (and more days, a later one).
    #[test]
    fn working_days_are_monotonic(j in prop::sample::select(vec![Ru, Vn, UsCa]), day in 0i64..5800, a in 0u32..40, b in 0u32..40) {
        let (lo, hi) = (a.min(b), a.max(b));
        let start = local("2025-01-01T09:00", zone_of(j)).checked_add(jiff::Span::new().hours(day * 24)).unwrap();
        let cal = calendar(j, None).unwrap();
        let zone = TimeZone::get(zone_of(j)).unwrap();
        let rule = |n| DeadlineRule {
            request: "x".into(), stage: "y".into(), duration: n, unit: Unit::WorkingDays,
            clock_start: "received".into(), citation: "test".into(), confidence: Confidence::Verified,
            note: None, extension: None,
        };
        let opts = DueOptions { extended: false, coverage: Coverage::WeekendsOnlyFallback, agency: false };
        let d_lo = due(&rule(lo), DaysConvention::Rolled, start, &zone, cal, opts).unwrap();
        let d_hi = due(&rule(hi), DaysConvention::Rolled, start, &zone, cal, opts).unwrap();
        prop_assert!(d_lo.due <= d_hi.due);
        if lo < hi {
            prop_assert!(d_lo.due < d_hi.due);
        }
    }

    /// An extension never shortens a deadline.
    #[test]
    fn extension_never_shortens(j in any_jurisdiction(), day in 0i64..5800) {
        let start = local("2025-01-01T09:00", zone_of(j)).checked_add(jiff::Span::new().hours(day * 24)).unwrap();
        let p = pack(j, start.to_zoned_datetime(TimeZone::get(zone_of(j)).unwrap()).date()).unwrap();
        for rule in p.deadlines.iter().filter(|r| r.extension.is_some()) {
            let plain = DueOptions { extended: false, coverage: Coverage::WeekendsOnlyFallback, agency: false };
            let ext = DueOptions { extended: true, ..plain };
            let a = deadline(j, region_of(j), None, &rule.request, &rule.stage, start, plain).unwrap();
            let b = deadline(j, region_of(j), None, &rule.request, &rule.stage, start, ext).unwrap();
            prop_assert!(b.due >= a.due && b.latest >= a.latest, "{} {}/{}", j, rule.request, rule.stage);
        }
    }
}
