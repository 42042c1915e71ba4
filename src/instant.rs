//! Instants in state files as RFC 3339 text, read and written with a fast
//! path for the form this runner writes (`2026-01-01T08:00:00.123Z`): a
//! pass reads and writes a few per job, and jiff's general parser and
//! printer are several times slower. Other forms still parse, through
//! jiff, and instants with a fraction of a second print through it.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    match format_utc(*t) {
        Some(text) => s.serialize_str(text.as_str()),
        None => s.collect_str(t),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = Timestamp;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 instant")
        }
        // Borrowed or not, no copy of the text is made.
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
            match parse_utc(text) {
                Some(t) => Ok(t),
                None => text.parse().map_err(E::custom),
            }
        }
    }
    d.deserialize_str(Text)
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as jiff prints it, for a whole second of the
/// years 0000..=9999; `None` for anything else.
struct Utc([u8; 20]);

impl Utc {
    fn as_str(&self) -> &str {
        // Only ASCII digits and `-T:Z` are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn format_utc(t: Timestamp) -> Option<Utc> {
    if t.subsec_nanosecond() != 0 {
        return None;
    }
    let secs = t.as_second();
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // H. Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, width: usize, mut n: i64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    Some(Utc(out))
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
    fn fast_printing_agrees_with_jiff() {
        // Every day of 1900..2200 at a few times of day, and the edges.
        let start = t("1900-01-01T00:00:00Z").as_second();
        for day in 0..(300 * 366) {
            for of_day in [0, 3599, 86_399] {
                let at = Timestamp::from_second(start + day * 86_400 + of_day).unwrap();
                let fast = format_utc(at).unwrap();
                assert_eq!(fast.as_str(), at.to_string());
            }
        }
        for text in [
            "0000-01-01T00:00:00Z",
            "9999-12-30T00:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(format_utc(t(text)).unwrap().as_str(), text);
            assert_eq!(t(text).to_string(), text);
        }
        assert!(format_utc(t("2026-01-01T00:00:00.5Z")).is_none());
        assert!(format_utc(Timestamp::MIN).is_none());
        // Through serde, the same either way.
        for text in ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.25Z"] {
            let mut out = Vec::new();
            serialize(&t(text), &mut serde_json::Serializer::new(&mut out)).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{text}\""));
        }
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
