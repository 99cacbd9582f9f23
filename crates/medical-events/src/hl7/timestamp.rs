//! HL7 TS/DTM values (`YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]`) as
//! instants.
//!
//! Written here rather than taken from hl7-parser, whose parser drops an
//! offset of hours only (`+05`) and any sign without digits silently (the
//! time would then be read in the local zone), and checks no ranges.
//! Missing precision means the start of the period (`2024` is 1 January,
//! midnight). A value without an offset is in the listener's time zone; a
//! zone, not a fixed offset, because hospitals keep summer time.

use chrono::{
    DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone,
};
use chrono_tz::Tz;

/// Reads a TS value (its first component: TS.2, the old "degree of
/// precision", is ignored).
pub(crate) fn parse(value: &str, zone: Tz) -> Result<DateTime<FixedOffset>, &'static str> {
    let digits = value
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(value.len());
    let (date_time, mut rest) = value.split_at(digits);
    if !matches!(date_time.len(), 4 | 6 | 8 | 10 | 12 | 14) {
        return Err("must be YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]");
    }
    // Only ASCII digits so far: two-byte slices are on character boundaries.
    let part = |from: usize, default: u32| -> u32 {
        date_time
            .get(from..from + 2)
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(default)
    };
    let year: i32 = date_time[..4].parse().map_err(|_| "year is not a number")?;
    let date =
        NaiveDate::from_ymd_opt(year, part(4, 1), part(6, 1)).ok_or("not a calendar date")?;

    let mut nanos = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction
            .bytes()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(fraction.len());
        // HL7 allows four digits; up to nine (nanoseconds) are read, since
        // some senders send microseconds.
        if date_time.len() != 14 || !(1..=9).contains(&len) {
            return Err("fractional seconds must follow the seconds");
        }
        let digits = &fraction[..len];
        let scale = 10u32.pow(9 - len as u32);
        nanos = digits.parse::<u32>().map_err(|_| "bad fraction")? * scale;
        rest = &fraction[len..];
    }
    let time = NaiveTime::from_hms_nano_opt(part(8, 0), part(10, 0), part(12, 0), nanos)
        .ok_or("not a time of day")?;
    let local = NaiveDateTime::new(date, time);

    if rest.is_empty() {
        return in_zone(local, zone).ok_or("not a time that exists in the listener's time zone");
    }
    let sign = match rest.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Err("unexpected characters after the time"),
    };
    let zone = &rest[1..];
    if zone.len() != 4 || !zone.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the offset must be +HHMM or -HHMM");
    }
    let hours: i32 = zone[..2].parse().map_err(|_| "bad offset")?;
    let minutes: i32 = zone[2..].parse().map_err(|_| "bad offset")?;
    if hours > 14 || minutes > 59 {
        return Err("the offset is out of range");
    }
    let offset = FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)).ok_or("bad offset")?;
    offset
        .from_local_datetime(&local)
        .single()
        .ok_or("the time is out of range")
}

/// A wall-clock time in `zone`. In the hour that repeats when summer time
/// ends, the earlier instant; in the hour skipped when it starts, the time
/// read with the offset in force before the jump (as java.time does), so a
/// sender's 02:30 on that night still lands between 02:00 and 04:00.
fn in_zone(local: NaiveDateTime, zone: Tz) -> Option<DateTime<FixedOffset>> {
    if let Some(instant) = zone.from_local_datetime(&local).earliest() {
        return Some(instant.fixed_offset());
    }
    let before = local.checked_sub_signed(TimeDelta::days(1))?;
    let offset = zone.offset_from_utc_datetime(&before).fix();
    let utc = local.checked_sub_signed(TimeDelta::seconds(offset.local_minus_utc().into()))?;
    Some(DateTime::from_naive_utc_and_offset(utc, offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;

    fn rfc3339(value: &str, zone: Tz) -> Result<String, &'static str> {
        parse(value, zone).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    #[test]
    fn reads_every_precision() {
        let utc = Tz::UTC;
        assert_eq!(rfc3339("2024", utc).unwrap(), "2024-01-01T00:00:00.000Z");
        assert_eq!(rfc3339("202403", utc).unwrap(), "2024-03-01T00:00:00.000Z");
        assert_eq!(
            rfc3339("20240315", utc).unwrap(),
            "2024-03-15T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339("2024031512", utc).unwrap(),
            "2024-03-15T12:00:00.000Z"
        );
        assert_eq!(
            rfc3339("202403151234", utc).unwrap(),
            "2024-03-15T12:34:00.000Z"
        );
        assert_eq!(
            rfc3339("20240315123456", utc).unwrap(),
            "2024-03-15T12:34:56.000Z"
        );
        assert_eq!(
            rfc3339("20240315123456.7", utc).unwrap(),
            "2024-03-15T12:34:56.700Z"
        );
        assert_eq!(
            rfc3339("20240315123456.1234+0130", utc).unwrap(),
            "2024-03-15T12:34:56.123+01:30"
        );
        assert_eq!(
            rfc3339("20240315123456.123456-0500", utc).unwrap(),
            "2024-03-15T12:34:56.123-05:00"
        );
        assert_eq!(
            rfc3339("20240315-0000", utc).unwrap(),
            "2024-03-15T00:00:00.000Z"
        );
    }

    #[test]
    fn zone_less_times_are_in_the_listener_zone_with_summer_time() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            rfc3339("20240115120000", berlin).unwrap(),
            "2024-01-15T12:00:00.000+01:00"
        );
        assert_eq!(
            rfc3339("20240715120000", berlin).unwrap(),
            "2024-07-15T12:00:00.000+02:00"
        );
        // 02:30 on 31 March 2024 does not exist in Berlin: read as +01:00.
        assert_eq!(
            parse("202403310230", berlin).unwrap().to_utc().to_rfc3339(),
            "2024-03-31T01:30:00+00:00"
        );
        // 02:30 on 27 October 2024 happens twice: the first one.
        assert_eq!(
            rfc3339("202410270230", berlin).unwrap(),
            "2024-10-27T02:30:00.000+02:00"
        );
    }

    #[test]
    fn refuses_what_is_not_a_timestamp() {
        for bad in [
            "",
            "24",
            "20240",
            "2024031",
            "20241301",
            "20240230",
            "2024031525",
            "202403151260",
            "20240315123456.",
            "202403151234.5",
            "20240315123456.1234567890",
            "20240315+05",
            "20240315+",
            "20240315+0560",
            "20240315+1500",
            "20240315 1200",
            "2024-03-15",
            "２０２４",
            "20240315123456.5+0100x",
        ] {
            assert!(parse(bad, Tz::UTC).is_err(), "{bad:?}");
        }
    }
}
