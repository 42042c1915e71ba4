//! Instants in state files as RFC 3339 text, read with a fast path for the
//! form this runner writes (`2026-01-01T08:00:00.123Z`): a pass reads one
//! per job, and jiff's general parser is several times slower. Other forms
//! still parse, through jiff.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    match parse_utc(&text) {
        Some(t) => Ok(t),
        None => text.parse().map_err(serde::de::Error::custom),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, or `None` for anything else.
pub fn parse_utc(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b.get(r)?.iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let nanos = match &b[19..] {
        [b'Z'] => 0,
        [b'.', digits @ .., b'Z']
            if (1..=9).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) =>
        {
            let n = digits
                .iter()
                .fold(0i64, |n, c| n * 10 + i64::from(c - b'0'));
            n * 10i64.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month[month as usize - 1]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    // Days from 1970-01-01 (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Timestamp::new(
        days * 86_400 + hour * 3600 + minute * 60 + second,
        nanos as i32,
    )
    .ok()
}

/// `t` as a person reads it: in `tz`, with its offset
/// (`2026-03-08T08:00:00+01:00`).
pub fn in_zone(t: Timestamp, tz: &jiff::tz::TimeZone) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// How long until `at`, from `now` (zero if past).
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// An instant from text, for unit tests.
#[cfg(test)]
pub fn t(s: &str) -> Timestamp {
    match s.parse() {
        Ok(t) => t,
        Err(e) => panic!("{s}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::JobState;

    #[test]
    fn instants_in_a_zone() {
        let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
        assert_eq!(
            in_zone(t("2026-03-08T07:00:00Z"), &tz),
            "2026-03-08T03:00:00-04:00"
        );
        assert_eq!(
            in_zone(t("2026-03-08T07:00:00Z"), &jiff::tz::TimeZone::UTC),
            "2026-03-08T07:00:00+00:00"
        );
    }

    #[test]
    fn fast_instants_agree_with_jiff() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2026-03-08T07:30:00Z",
            "2024-02-29T23:59:59.999999999Z",
            "2000-12-31T12:00:00.5Z",
            "1969-07-20T20:17:40.1Z",
            "9999-12-30T00:00:00Z",
            "0001-01-01T00:00:00Z",
        ] {
            let want: Timestamp = text.parse().unwrap();
            assert_eq!(parse_utc(text), Some(want), "{text}");
        }
        for text in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00+01:00",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.1234567890Z",
            "x",
        ] {
            assert_eq!(parse_utc(text), None, "{text}");
        }
        // Other forms still parse, through jiff.
        let entry: JobState = serde_json::from_str(
            r#"{"schedule":"x","timezone":"UTC","checked_through":"2026-01-01T01:00:00+01:00"}"#,
        )
        .unwrap();
        assert_eq!(entry.checked_through, t("2026-01-01T00:00:00Z"));
    }
}
