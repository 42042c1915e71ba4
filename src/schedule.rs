//! Cron schedules (SPEC §5): parsing classic 5-field and 6-field (seconds
//! first) expressions and presets, and computing the next fire instant in a
//! time zone.
//!
//! The matcher works on wall-clock times and maps each matching wall time to
//! one instant with jiff's "compatible" disambiguation: a time skipped by a
//! spring-forward fires at the wall time plus the gap, a time repeated by a
//! fall-back fires at its first occurrence. It leaves out everything outside
//! the classic grammar (`L`, `W`, `#`, `?`, years).

use std::fmt;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

/// A time zone with the name it was asked for, so state and listings can
/// show and compare it.
#[derive(Clone, Debug)]
pub struct Zone {
    pub name: String,
    pub tz: TimeZone,
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        self.name == other.name
    }
}

impl Zone {
    /// An IANA zone by name, e.g. `Europe/Paris`. The tz database bundled in
    /// the binary is used when the host has none.
    pub fn get(name: &str) -> Result<Zone, String> {
        let name = name.trim();
        if name.is_empty() {
            return Err("must not be empty".to_string());
        }
        if is_utc(name) {
            return Ok(Zone {
                name: name.to_string(),
                tz: TimeZone::UTC,
            });
        }
        TimeZone::get(name)
            .map(|tz| Zone {
                name: name.to_string(),
                tz,
            })
            .map_err(|_| format!("unknown time zone {name:?}"))
    }

    /// UTC.
    pub fn utc() -> Zone {
        Zone {
            name: "UTC".to_string(),
            tz: TimeZone::UTC,
        }
    }

    /// The host's zone, from `TZ` or `/etc/localtime`; UTC when neither
    /// says (a container without tzdata, say).
    pub fn system() -> Zone {
        if let Some(name) = system_utc_name() {
            return Zone {
                name,
                tz: TimeZone::UTC,
            };
        }
        match TimeZone::try_system() {
            Ok(tz) => Zone {
                name: tz.iana_name().unwrap_or("local").to_string(),
                tz,
            },
            Err(_) => Zone::utc(),
        }
    }
}

/// Names of zones that are UTC forever (offset 0, no daylight saving).
/// They need no time zone database, whose loading is the largest fixed
/// cost of a pass on a UTC host.
fn is_utc(name: &str) -> bool {
    matches!(
        name,
        "UTC"
            | "Etc/UTC"
            | "UCT"
            | "Etc/UCT"
            | "Universal"
            | "Etc/Universal"
            | "Zulu"
            | "Etc/Zulu"
            | "GMT"
            | "Etc/GMT"
            | "GMT0"
            | "Etc/GMT0"
            | "Greenwich"
            | "Etc/Greenwich"
    )
}

/// The host zone's name when it is UTC, read as jiff would (`TZ`, else the
/// `/etc/localtime` link); `None` otherwise.
fn system_utc_name() -> Option<String> {
    let name = match std::env::var("TZ") {
        Ok(tz) => tz.trim_start_matches(':').to_string(),
        Err(_) => {
            let target = std::fs::read_link("/etc/localtime").ok()?;
            target.to_str()?.rsplit_once("zoneinfo/")?.1.to_string()
        }
    };
    is_utc(&name).then_some(name)
}

/// A job's schedule: either never fires on its own, or a cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    Manual,
    Cron(Cron),
}

/// The message for a schedule that is not an expression at all.
pub const EXPECTED: &str = "expected 5-field cron or one of hourly, daily, weekly, manual";

impl Schedule {
    /// Parses a schedule as a job note writes it: a preset or a cron
    /// expression.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        const PRESETS: [(&str, &str); 8] = [
            ("hourly", "0 * * * *"),
            ("@hourly", "0 * * * *"),
            ("daily", "0 0 * * *"),
            ("@daily", "0 0 * * *"),
            ("weekly", "0 0 * * 0"),
            ("@weekly", "0 0 * * 0"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
        ];
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("manual") {
            return Ok(Schedule::Manual);
        }
        let expr = PRESETS
            .iter()
            .find(|(name, _)| trimmed.eq_ignore_ascii_case(name))
            .map_or(trimmed, |(_, expr)| expr);
        Cron::parse(expr).map(Schedule::Cron)
    }

    /// The first fire instant strictly after `after`, or `None` for a manual
    /// schedule.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Schedule::Manual => None,
            Schedule::Cron(cron) => cron.next_after(after, tz),
        }
    }
}

/// Why a schedule was rejected. `Display` gives the text after
/// `schedule: ` in a job problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleError {
    /// Not an expression of 5 or 6 fields, nor a preset.
    Shape { got: String },
    /// One field is wrong.
    Field {
        field: &'static str,
        text: String,
        reason: String,
    },
    /// The day fields together never match any day.
    NeverFires { got: String },
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::Shape { got } => write!(f, "{EXPECTED} (got {got:?})"),
            ScheduleError::Field {
                field,
                text,
                reason,
            } => {
                write!(f, "{field} field {text:?}: {reason}")
            }
            ScheduleError::NeverFires { got } => write!(
                f,
                "day-of-month field: no month in the expression has such a day, so it never fires (got {got:?})"
            ),
        }
    }
}

impl std::error::Error for ScheduleError {}

/// A parsed cron expression. Each field is a bit set of the values it
/// matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days_of_month: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday = 0.
    days_of_week: u8,
    /// Classic cron: a day field starting with `*` is unrestricted for the
    /// OR rule, even `*/n`.
    dom_starred: bool,
    dow_starred: bool,
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: FieldSpec = FieldSpec {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
/// 0..=7 with 7 = Sunday, as in vixie cron; folded to 0..=6 after parsing.
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// Days in each month, February counted as 29 (it has one in leap years).
const MAX_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// How far ahead a search for the next fire time goes before giving up. A
/// valid expression always fires within 8 years (29 February), so this is
/// only a guard.
const SEARCH_YEARS: i16 = 30;

impl Cron {
    /// Parses a 5-field (`m h dom mon dow`) or 6-field (`s m h dom mon dow`)
    /// expression.
    pub fn parse(expr: &str) -> Result<Cron, ScheduleError> {
        let mut fields = [""; 6];
        let mut count = 0;
        for field in expr.split_ascii_whitespace() {
            if let Some(slot) = fields.get_mut(count) {
                *slot = field;
            }
            count += 1;
        }
        let (sec, rest) = match count {
            5 => ("0", &fields[..5]),
            6 => (fields[0], &fields[1..]),
            _ => {
                return Err(ScheduleError::Shape {
                    got: expr.to_string(),
                });
            }
        };
        let dom_text = rest[2];
        let dow_text = rest[4];
        let dow = parse_field(dow_text, &DAY_OF_WEEK)?;
        let cron = Cron {
            seconds: parse_field(sec, &SECOND)?,
            minutes: parse_field(rest[0], &MINUTE)?,
            hours: parse_field(rest[1], &HOUR)? as u32,
            days_of_month: parse_field(dom_text, &DAY_OF_MONTH)? as u32,
            months: parse_field(rest[3], &MONTH)? as u16,
            // Sunday is both 0 and 7.
            days_of_week: ((dow | (dow >> 7)) & 0x7f) as u8,
            dom_starred: dom_text.starts_with('*'),
            dow_starred: dow_text.starts_with('*'),
        };
        // Days come from day-of-month alone when day-of-week does not widen
        // them (it is starred, so the two are ANDed): then some month of
        // the expression must have one of those days.
        if !cron.dom_starred && cron.dow_starred {
            let possible = (1..=12u32).any(|m| {
                cron.months & (1 << m) != 0
                    && cron.days_of_month & mask_up_to(MAX_DAYS[m as usize - 1]) != 0
            });
            if !possible {
                return Err(ScheduleError::NeverFires {
                    got: expr.to_string(),
                });
            }
        }
        Ok(cron)
    }

    /// The first fire instant strictly after `after`, in `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // Wall times inside a spring-forward gap fire after the gap, so a
        // gap wall time earlier than `after`'s own wall time can still fire
        // after `after`. Start early enough to see them: by the amount the
        // offset grew over the last two days.
        let local = tz.to_datetime(after);
        let window = SignedDuration::from_hours(48);
        let mut wall = after
            .checked_sub(window)
            .ok()
            .map(|earlier| tz.to_datetime(earlier))
            .and_then(|dt| dt.checked_add(window).ok())
            .map_or(local, |shifted| shifted.min(local));
        wall = wall.with().subsec_nanosecond(0).build().ok()?;
        let limit = local.year().saturating_add(SEARCH_YEARS);
        let mut best: Option<Timestamp> = None;
        loop {
            let candidate = self.next_wall_from(wall, limit)?;
            let ambiguous = tz.to_ambiguous_timestamp(candidate);
            let in_gap = matches!(ambiguous.offset(), AmbiguousOffset::Gap { .. });
            if let Ok(instant) = ambiguous.compatible()
                && instant > after
            {
                best = Some(best.map_or(instant, |b| b.min(instant)));
                if !in_gap {
                    // Outside gaps the wall-to-instant map is monotonic, so
                    // no later wall time can fire earlier.
                    return best;
                }
            }
            wall = candidate.checked_add(SignedDuration::from_secs(1)).ok()?;
            if let Some(b) = best {
                // Only gap candidates so far; a later match that is in no gap
                // ends the search above. Stop if the walls went past it.
                if wall.year() > tz.to_datetime(b).year().saturating_add(1) {
                    return best;
                }
            }
        }
    }

    /// The first wall time at or after `from` (whole seconds) that matches,
    /// searching up to the end of year `limit`.
    fn next_wall_from(&self, from: DateTime, limit: i16) -> Option<DateTime> {
        let mut date = from.date();
        let (mut hour, mut minute, mut second) = (
            from.hour() as u32,
            from.minute() as u32,
            from.second() as u32,
        );
        loop {
            if date.year() > limit {
                return None;
            }
            if self.months & (1 << date.month()) == 0 {
                date = self.next_month_start(date)?;
                (hour, minute, second) = (0, 0, 0);
                continue;
            }
            if self.day_matches(date)
                && let Some((h, m, s)) = self.time_from(hour, minute, second)
            {
                return DateTime::new(
                    date.year(),
                    date.month(),
                    date.day(),
                    h as i8,
                    m as i8,
                    s as i8,
                    0,
                )
                .ok();
            }
            date = date.tomorrow().ok()?;
            (hour, minute, second) = (0, 0, 0);
        }
    }

    /// The first day of the next month in the expression, after `date`'s.
    fn next_month_start(&self, date: Date) -> Option<Date> {
        let mut year = date.year();
        let mut month = date.month() as u32 + 1;
        loop {
            if month > 12 {
                year = year.checked_add(1)?;
                month = 1;
            }
            if self.months & (1 << month) != 0 {
                return Date::new(year, month as i8, 1).ok();
            }
            month += 1;
        }
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_starred || self.dow_starred {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first (hour, minute, second) at or after the given one that
    /// matches, within the same day.
    fn time_from(&self, hour: u32, minute: u32, second: u32) -> Option<(u32, u32, u32)> {
        let mut h = next_bit(self.hours as u64, hour)?;
        loop {
            let (m0, s0) = if h == hour { (minute, second) } else { (0, 0) };
            if let Some(m) = next_bit(self.minutes, m0) {
                let s0 = if h == hour && m == minute { s0 } else { 0 };
                if let Some(s) = next_bit(self.seconds, s0) {
                    return Some((h, m, s));
                }
                // No second left in this minute: try the next minute.
                if let Some(m) = next_bit(self.minutes, m + 1) {
                    let s = next_bit(self.seconds, 0)?;
                    return Some((h, m, s));
                }
            }
            h = next_bit(self.hours as u64, h + 1)?;
        }
    }
}

/// The smallest set bit at index ≥ `from`.
fn next_bit(set: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = set >> from << from;
    (rest != 0).then(|| rest.trailing_zeros())
}

/// Bits 0..=n set.
fn mask_up_to(n: u32) -> u32 {
    if n >= 31 {
        u32::MAX
    } else {
        (1u32 << (n + 1)) - 1
    }
}

fn parse_field(text: &str, spec: &FieldSpec) -> Result<u64, ScheduleError> {
    let fail = |reason: String| ScheduleError::Field {
        field: spec.name,
        text: text.to_string(),
        reason,
    };
    // The common forms first: `*` and a single value.
    if text == "*" {
        return Ok(span(spec.min, spec.max));
    }
    if !text.contains([',', '/', '-']) {
        return value(text, spec).map(|v| 1 << v).map_err(fail);
    }
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| fail(format!("step {step:?} is not a number")))?;
                if step == 0 {
                    return Err(fail("step must be at least 1".into()));
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let (low, high) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a, spec).map_err(fail)?, value(b, spec).map_err(fail)?);
            if a > b {
                return Err(fail(format!("range {range:?} runs backwards")));
            }
            (a, b)
        } else {
            let a = value(range, spec).map_err(fail)?;
            // `a/n` runs from a to the end of the field.
            (a, if step.is_some() { spec.max } else { a })
        };
        match step {
            None | Some(1) => set |= span(low, high),
            Some(step) => {
                let mut v = low;
                while v <= high {
                    set |= 1 << v;
                    v += step;
                }
            }
        }
    }
    Ok(set)
}

/// The bits `low..=high` (`high` ≤ 59).
fn span(low: u32, high: u32) -> u64 {
    (u64::MAX >> (63 - high)) & (u64::MAX << low)
}

fn value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    if text.is_empty() {
        return Err("empty value".into());
    }
    if text.len() <= 2
        && let Some(n) = text.bytes().try_fold(0u32, |n, b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    {
        return if (spec.min..=spec.max).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} is out of range {}-{}", spec.min, spec.max))
        };
    }
    if let Some(i) = spec
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        return Ok(i as u32 + spec.min);
    }
    let n: u32 = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse()
            .map_err(|_| format!("{text} is out of range {}-{}", spec.min, spec.max))?
    } else if spec.names.is_empty() {
        return Err(format!("{text:?} is not a number"));
    } else {
        return Err(format!("{text:?} is not a number or a name"));
    };
    if n < spec.min || n > spec.max {
        return Err(format!("{n} is out of range {}-{}", spec.min, spec.max));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> TimeZone {
        TimeZone::UTC
    }

    #[track_caller]
    fn next(expr: &str, tz: &str, from: &str, want: &[&str]) {
        let tz = TimeZone::get(tz).unwrap();
        let schedule = Schedule::parse(expr).unwrap();
        let mut at: Timestamp = from.parse().unwrap();
        for w in want {
            at = schedule.next_after(at, &tz).unwrap();
            assert_eq!(at.to_string(), *w, "{expr} in {tz:?}");
        }
    }

    #[track_caller]
    fn rejects(expr: &str, message: &str) {
        let err = Schedule::parse(expr).unwrap_err().to_string();
        assert!(err.contains(message), "{expr}: {err}");
    }

    #[test]
    fn presets() {
        for (preset, expr) in [
            ("hourly", "0 * * * *"),
            ("@hourly", "0 * * * *"),
            ("daily", "0 0 * * *"),
            ("DAILY", "0 0 * * *"),
            ("weekly", "0 0 * * 0"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
        ] {
            assert_eq!(
                Schedule::parse(preset).unwrap(),
                Schedule::parse(expr).unwrap()
            );
        }
        assert_eq!(Schedule::parse("manual").unwrap(), Schedule::Manual);
        assert_eq!(
            Schedule::Manual.next_after(Timestamp::UNIX_EPOCH, &utc()),
            None
        );
    }

    #[test]
    fn seconds_field() {
        next(
            "*/20 * * * * *",
            "UTC",
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-01T00:00:20Z",
                "2026-01-01T00:00:40Z",
                "2026-01-01T00:01:00Z",
            ],
        );
        next(
            "30 59 23 31 12 *",
            "UTC",
            "2026-06-01T00:00:00Z",
            &["2026-12-31T23:59:30Z", "2027-12-31T23:59:30Z"],
        );
    }

    #[test]
    fn strictly_after_with_fraction() {
        next(
            "0 8 * * *",
            "UTC",
            "2026-04-10T08:00:00.5Z",
            &["2026-04-11T08:00:00Z"],
        );
        next(
            "* * * * *",
            "UTC",
            "2026-04-10T07:59:59.9Z",
            &["2026-04-10T08:00:00Z"],
        );
    }

    #[test]
    fn dow_step_from_value_runs_to_seven() {
        // 1/2 in day-of-week is 1,3,5,7 and 7 is Sunday (vixie).
        next(
            "0 0 * * 1/2",
            "UTC",
            "2026-11-21T12:00:00Z", // a Saturday
            &[
                "2026-11-22T00:00:00Z",
                "2026-11-23T00:00:00Z",
                "2026-11-25T00:00:00Z",
            ],
        );
    }

    #[test]
    fn gap_only_match_is_found() {
        // 02:30 on 8 March 2026 exists only in the gap in New York.
        next(
            "30 2 8 3 *",
            "America/New_York",
            "2026-03-01T00:00:00Z",
            &["2026-03-08T07:30:00Z", "2027-03-08T07:30:00Z"],
        );
    }

    #[test]
    fn rejections() {
        rejects(
            "every day",
            "expected 5-field cron or one of hourly, daily, weekly, manual (got \"every day\")",
        );
        rejects("", "expected 5-field cron");
        rejects("* * * * * * *", "expected 5-field cron");
        rejects("60 * * * *", "minute field \"60\": 60 is out of range 0-59");
        rejects("* 24 * * *", "hour field");
        rejects(
            "* * 0 * *",
            "day-of-month field \"0\": 0 is out of range 1-31",
        );
        rejects("* * 32 * *", "day-of-month");
        rejects("* * * 13 *", "month field");
        rejects("* * * * 8", "day-of-week field \"8\"");
        rejects(
            "* * L * *",
            "day-of-month field \"L\": \"L\" is not a number",
        );
        rejects("* * 15W * *", "day-of-month");
        rejects("* * * * 5#3", "day-of-week");
        rejects("* * ? * *", "day-of-month");
        rejects("*/0 * * * *", "step must be at least 1");
        rejects("5-1 * * * *", "runs backwards");
        rejects("1,,2 * * * *", "empty value");
        rejects("* * * foo *", "\"foo\" is not a number or a name");
        rejects("* * * * mon-", "empty value");
        rejects("99999999999 * * * *", "out of range 0-59");
        rejects("0 0 30 2 *", "never fires");
        rejects("0 0 31 4,6,9,11 *", "never fires");
        rejects("0 0 30 2 */2", "never fires");
        // OR with a restricted day-of-week: fires on Sundays in February.
        assert!(Schedule::parse("0 0 30 2 0").is_ok());
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(
            Schedule::parse("0 0 * Jan-MAR mon-Fri").unwrap(),
            Schedule::parse("0 0 * 1-3 1-5").unwrap()
        );
        assert_eq!(
            Schedule::parse("0 0 * * 0").unwrap(),
            Schedule::parse("0 0 * * 7").unwrap()
        );
    }

    #[test]
    fn never_panics_near_the_end_of_time() {
        let tz = utc();
        assert_eq!(
            Schedule::parse("0 0 1 1 *")
                .unwrap()
                .next_after(Timestamp::MAX, &tz),
            None
        );
        let auckland = TimeZone::get("Pacific/Auckland").unwrap();
        assert_eq!(
            Schedule::parse("* * * * * *")
                .unwrap()
                .next_after(Timestamp::MAX, &auckland),
            None
        );
        assert!(
            Schedule::parse("* * * * *")
                .unwrap()
                .next_after(Timestamp::MIN, &tz)
                .is_some()
        );
    }
}
