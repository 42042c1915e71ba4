//! `{{variable}}` templates in prompts and output paths (SPEC §4.3).
//!
//! A reference is `{{`, optional spaces, a name made of ASCII letters, digits
//! and `_`, optional spaces, `}}`. Anything else (single braces, `{{` with no
//! closing `}}`, `{{ two words }}`) is text and is left as it is. This module
//! only substitutes; the values are computed by the caller (`Vars::new`).

use std::fmt;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// The supported variable names, in the order error messages list them.
pub const NAMES: [&str; 7] = [
    "date",
    "time",
    "datetime",
    "yesterday",
    "job_name",
    "job_path",
    "run_id",
];

/// Values for every supported variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vars {
    pub date: String,
    pub time: String,
    pub datetime: String,
    pub yesterday: String,
    pub job_name: String,
    pub job_path: String,
    pub run_id: String,
}

impl Vars {
    /// Values for a run at instant `at` in `tz`; `date_override` (from
    /// `--date`) replaces `date` and `yesterday`.
    pub fn new(
        at: Timestamp,
        tz: &TimeZone,
        date_override: Option<Date>,
        job_path: &str,
        run_id: &str,
    ) -> Vars {
        let zoned = at.to_zoned_datetime(tz.clone());
        let date = date_override.unwrap_or_else(|| zoned.date());
        let yesterday = date.yesterday().unwrap_or(date);
        Vars {
            date: date.to_string(),
            time: format!("{:02}:{:02}", zoned.hour(), zoned.minute()),
            datetime: zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
            yesterday: yesterday.to_string(),
            job_name: job_name(job_path).to_string(),
            job_path: job_path.to_string(),
            run_id: run_id.to_string(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "date" => &self.date,
            "time" => &self.time,
            "datetime" => &self.datetime,
            "yesterday" => &self.yesterday,
            "job_name" => &self.job_name,
            "job_path" => &self.job_path,
            "run_id" => &self.run_id,
            _ => return None,
        })
    }
}

/// The last path segment of a job path, without its extension.
pub fn job_name(path: &str) -> &str {
    let last = path.rsplit('/').next().unwrap_or(path);
    match last.rfind('.') {
        Some(i) if i > 0 => &last[..i],
        _ => last,
    }
}

/// A template referred to variables that do not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownVariables {
    /// Where: "prompt" or "output_path".
    pub place: &'static str,
    /// Each unknown name once, in order of first use.
    pub names: Vec<String>,
}

impl fmt::Display for UnknownVariables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(std::slice::from_ref(self)))
    }
}

/// One message for the unknown variables of several templates, e.g.
/// `unknown variables {{a}} in output_path, {{b}} in prompt; supported: …`.
pub fn describe(all: &[UnknownVariables]) -> String {
    let count: usize = all.iter().map(|u| u.names.len()).sum();
    let groups: Vec<String> = all
        .iter()
        .map(|u| {
            let names: Vec<String> = u.names.iter().map(|n| format!("{{{{{n}}}}}")).collect();
            format!("{} in {}", names.join(", "), u.place)
        })
        .collect();
    format!(
        "unknown variable{} {}; supported: {}",
        if count == 1 { "" } else { "s" },
        groups.join(", "),
        NAMES.join(", ")
    )
}

impl std::error::Error for UnknownVariables {}

/// Substitutes every reference in `text`.
pub fn render(text: &str, vars: &Vars, place: &'static str) -> Result<String, UnknownVariables> {
    let mut out = String::with_capacity(text.len());
    let mut unknown: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some((before, name, after)) = next_reference(rest) {
        out.push_str(before);
        match vars.get(name) {
            Some(value) => out.push_str(value),
            None => {
                if !unknown.iter().any(|u| u == name) {
                    unknown.push(name.to_string());
                }
            }
        }
        rest = after;
    }
    out.push_str(rest);
    if unknown.is_empty() {
        Ok(out)
    } else {
        Err(UnknownVariables {
            place,
            names: unknown,
        })
    }
}

/// Checks references without values: the unknown names, if any.
pub fn check(text: &str, place: &'static str) -> Result<(), UnknownVariables> {
    let mut unknown: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some((_, name, after)) = next_reference(rest) {
        if !NAMES.contains(&name) && !unknown.iter().any(|u| u == name) {
            unknown.push(name.to_string());
        }
        rest = after;
    }
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(UnknownVariables {
            place,
            names: unknown,
        })
    }
}

/// Finds the first reference: (text before it, the name, text after it).
fn next_reference(text: &str) -> Option<(&str, &str, &str)> {
    let mut from = 0;
    while let Some(i) = text[from..].find("{{") {
        let open = from + i;
        let inner_start = open + 2;
        if let Some(name) = reference_name(&text[inner_start..]) {
            let (name, len) = name;
            return Some((&text[..open], name, &text[inner_start + len..]));
        }
        from = open + 1;
    }
    None
}

/// If `s` starts with `  name  }}`, the name and the length up to and
/// including `}}`.
fn reference_name(s: &str) -> Option<(&str, usize)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    let start = i;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    let end = i;
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    (end > start && s[i..].starts_with("}}")).then(|| (&s[start..end], i + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let at: Timestamp = "2026-03-08T07:30:00Z".parse().unwrap();
        let tz = TimeZone::get("America/New_York").unwrap();
        Vars::new(at, &tz, None, "jobs/daily-brief.md", "run-1")
    }

    #[track_caller]
    fn case(text: &str, want: &str) {
        assert_eq!(render(text, &vars(), "prompt").unwrap(), want);
    }

    #[test]
    fn every_variable() {
        case(
            "{{date}} {{time}} {{datetime}} {{yesterday}} {{job_name}} {{job_path}} {{run_id}}",
            "2026-03-08 03:30 2026-03-08T03:30:00-04:00 2026-03-07 daily-brief jobs/daily-brief.md run-1",
        );
    }

    #[test]
    fn spaces_inside_braces() {
        case(
            "{{ date }}|{{date  }}|{{   run_id}}",
            "2026-03-08|2026-03-08|run-1",
        );
    }

    #[test]
    fn non_references_are_left_alone() {
        case("{date} { {date} } {{ date", "{date} { {date} } {{ date");
        case("{{}} {{ two words }} {{-x}}", "{{}} {{ two words }} {{-x}}");
        case("{{{date}}}", "{2026-03-08}");
        case("a }} b {{", "a }} b {{");
        case("{{\tdate}}", "{{\tdate}}");
        case("ünïcödé {{date}} ✓", "ünïcödé 2026-03-08 ✓");
    }

    #[test]
    fn unknown_variables_are_all_listed_once() {
        let err = render("{{foo}} {{date}} {{ bar }} {{foo}}", &vars(), "prompt").unwrap_err();
        assert_eq!(err.names, ["foo", "bar"]);
        assert_eq!(
            err.to_string(),
            "unknown variables {{foo}}, {{bar}} in prompt; supported: date, time, datetime, yesterday, job_name, job_path, run_id"
        );
        assert_eq!(
            check("{{ foo }}", "output_path").unwrap_err().names,
            ["foo"]
        );
        assert!(check("{{date}}", "prompt").is_ok());
    }

    #[test]
    fn date_override_moves_yesterday() {
        let at: Timestamp = "2026-03-08T07:30:00Z".parse().unwrap();
        let d: Date = "2024-03-01".parse().unwrap();
        let v = Vars::new(at, &TimeZone::UTC, Some(d), "x", "r");
        assert_eq!(
            (v.date.as_str(), v.yesterday.as_str()),
            ("2024-03-01", "2024-02-29")
        );
        assert_eq!(v.time, "07:30");
    }

    #[test]
    fn job_names() {
        assert_eq!(job_name("jobs/daily-brief"), "daily-brief");
        assert_eq!(job_name("jobs/daily.brief.md"), "daily.brief");
        assert_eq!(job_name("brief"), "brief");
        assert_eq!(job_name("jobs/.hidden"), ".hidden");
    }
}
