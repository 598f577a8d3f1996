//! Time conversions used everywhere: protobuf `Timestamp` ⇄ microseconds since the Unix epoch,
//! and an instant ⇄ the local date of a tenant's time zone. Arithmetic saturates, so an absurd
//! timestamp can never panic or wrap (contract validation refuses it with the field named).

use jiff::civil::Date;
use jiff::tz::TimeZone;
use prost_types::Timestamp;

/// Microseconds since the epoch of a protobuf timestamp.
pub fn micros(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.nanos) / 1000)
}

/// Microseconds of an optional timestamp, 0 when absent.
pub fn micros_or_zero(ts: Option<&Timestamp>) -> i64 {
    ts.map_or(0, micros)
}

/// The protobuf timestamp of microseconds since the epoch.
pub fn timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// The current instant, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// The local date of an instant in `zone` (`None` outside jiff's range).
pub fn local_date(micros: i64, zone: &TimeZone) -> Option<Date> {
    jiff::Timestamp::from_microsecond(micros)
        .ok()
        .map(|t| t.to_zoned_datetime(zone.clone()).date())
}

/// The instant a local date begins in `zone` (`None` outside jiff's range).
pub fn start_of(date: Date, zone: &TimeZone) -> Option<i64> {
    date.to_zoned_datetime(zone.clone())
        .ok()
        .map(|z| z.timestamp().as_microsecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_saturate() {
        for m in [0, 1, -1, 1_700_000_000_123_456, -86_400_000_001] {
            assert_eq!(micros(&timestamp(m)), m);
        }
        let absurd = Timestamp {
            seconds: i64::MAX,
            nanos: 999_999_999,
        };
        assert_eq!(micros(&absurd), i64::MAX);
        let hcm = TimeZone::get("Asia/Ho_Chi_Minh").unwrap();
        // 2026-01-01T17:00Z is already 2 January in Ho Chi Minh City (UTC+7).
        let m = 1_767_286_800_000_000;
        assert_eq!(local_date(m, &hcm), Some(jiff::civil::date(2026, 1, 2)));
        assert_eq!(start_of(jiff::civil::date(2026, 1, 2), &hcm), Some(m));
    }
}
