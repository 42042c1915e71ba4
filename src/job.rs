//! Job notes (SPEC §4.2): the frontmatter split, the YAML parse and every
//! field's check, turning a vault note into a `Job` or one message listing
//! all of its problems.
//!
//! Pure: no I/O. Templates are checked at run time (`template`), time zones
//! are resolved through `schedule::Zone`.
//!
//! Long (about 850 lines) because every frontmatter key's check lives
//! here, so that all of a note's problems are found in one place and
//! reported together (SPEC §4.2).

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::schedule::{Schedule, Zone};
use crate::template;
use crate::tools::PermissionMode;
use crate::vault::Note;

/// The default `output_path` template.
pub const DEFAULT_OUTPUT_PATH: &str = "jobs/runs/{{job_name}}/{{run_id}}";
/// The tag every output note carries, first.
pub const RUN_TAG: &str = "job-run";
/// Added to the tags of a failure note.
pub const FAILED_TAG: &str = "job-run-failed";
/// Default agent timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest accepted timeout: a week.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A checked job, ready to be scheduled and run.
#[derive(Clone, Debug)]
pub struct Job {
    /// The vault's note id.
    pub id: String,
    /// The note's path (its id when it has none).
    pub path: String,
    pub schedule: Schedule,
    /// The schedule as written (trimmed), kept to notice edits.
    pub schedule_text: String,
    pub model: String,
    pub allowed_tools: Vec<String>,
    /// The unrendered `output_path` template.
    pub output_path: String,
    /// `job-run` first, then the note's `output_tags`, without repeats.
    pub output_tags: Vec<String>,
    pub timeout: Duration,
    pub disabled: bool,
    pub zone: Zone,
    pub catch_up: bool,
    /// The prompt template (the body after the frontmatter).
    pub prompt: String,
    /// How its agent runs; unset fields take the config's defaults.
    pub agent: AgentSettings,
    /// Pinged at start, success and failure (SPEC §11).
    pub ping_url: Option<String>,
}

/// A job's agent settings (SPEC §4.2, §6.2, §6.5). `None` (or empty):
/// the config's default, or nothing passed to the CLI.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentSettings {
    pub permission_mode: Option<PermissionMode>,
    pub disallowed_tools: Vec<String>,
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
    pub fallback_model: Vec<String>,
    pub retries: Option<u32>,
    pub retry_delay: Option<Duration>,
}

/// The most retries a job may ask for.
pub const MAX_RETRIES: u64 = 10;
/// The longest delay before a first retry: a day.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(86_400);

/// Everything wrong with one job note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    pub path: String,
    pub problems: Vec<String>,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid job at {}: {}",
            self.path,
            self.problems.join("; ")
        )
    }
}

impl std::error::Error for JobError {}

/// A note's content split at its frontmatter.
#[derive(Debug, PartialEq, Eq)]
pub struct Split<'a> {
    /// The YAML between the `---` lines, if the note has a frontmatter.
    pub yaml: Option<&'a str>,
    /// The rest, with one leading newline removed.
    pub body: &'a str,
}

/// Splits `content` into frontmatter YAML and body. A first line `---`
/// opens a frontmatter; a later line `---` closes it. An opening line with
/// no closing one is an error.
pub fn split_frontmatter(content: &str) -> Result<Split<'_>, String> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let Some(after_open) = strip_marker_line(content) else {
        return Ok(Split {
            yaml: None,
            body: content,
        });
    };
    let mut offset = 0;
    for line in after_open.split_inclusive('\n') {
        if let Some(rest) = strip_marker_line(line)
            && rest.is_empty()
        {
            let yaml = &after_open[..offset];
            // The closing line's own newline is the one removed.
            let body = &after_open[offset + line.len()..];
            return Ok(Split {
                yaml: Some(yaml),
                body,
            });
        }
        offset += line.len();
    }
    Err("frontmatter: the opening --- line has no closing --- line".to_string())
}

/// If `text` starts with a line that is exactly `---` (trailing spaces and
/// CR allowed), the text after that line.
fn strip_marker_line(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("---")?;
    let (line, after) = match rest.find('\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    line.trim_end_matches([' ', '\t', '\r'])
        .is_empty()
        .then_some(after)
}

/// The largest frontmatter parsed (SPEC §4.2).
pub const MAX_FRONTMATTER: usize = 256 << 10;
/// The deepest nesting parsed (SPEC §4.2).
pub const MAX_DEPTH: usize = 64;

/// Checks size and nesting before any YAML parsing: a frontmatter of
/// deeply nested flow sequences (`[[[[…]]]]`) takes a YAML parser time
/// quadratic in its depth, on every pass. The depth counted is an upper
/// bound of the YAML's: block indentation levels plus `- ` entries that
/// open a line plus open `[`/`{` outside quotes and comments.
pub fn check_shape(yaml: &str) -> Result<(), String> {
    if yaml.len() > MAX_FRONTMATTER {
        return Err(format!(
            "frontmatter: larger than {} KiB ({} bytes)",
            MAX_FRONTMATTER >> 10,
            yaml.len()
        ));
    }
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut deepest = 0usize;
    for line in yaml.lines() {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if flow == 0 && !body.trim().is_empty() && !body.starts_with('#') {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let mut dashes = 0;
        let mut rest = body;
        while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("-\t")) {
            dashes += 1;
            rest = r.trim_start();
        }
        let (mut quote, mut prev_space) = (None::<char>, true);
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            match (quote, c) {
                (Some('"'), '\\') => {
                    chars.next();
                }
                (Some(q), c) if c == q => {
                    // `''` inside single quotes is one quote.
                    if q == '\'' && chars.peek() == Some(&'\'') {
                        chars.next();
                    } else {
                        quote = None;
                    }
                }
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if prev_space => break,
                (None, '[' | '{') => {
                    flow += 1;
                    deepest = deepest.max(indents.len() + dashes + flow);
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            prev_space = c == ' ' || c == '\t';
        }
        deepest = deepest.max(indents.len() + dashes + flow);
        if deepest > MAX_DEPTH {
            return Err(format!(
                "frontmatter: nested deeper than {MAX_DEPTH} levels"
            ));
        }
    }
    Ok(())
}

/// Parses frontmatter YAML into a map. An empty frontmatter is an empty
/// map. Errors carry the line and column in the note (the `---` line is
/// line 1). Too large or too deep a frontmatter is refused unparsed.
pub fn parse_frontmatter(yaml: &str) -> Result<Map<String, Value>, String> {
    if yaml.trim().is_empty() {
        return Ok(Map::new());
    }
    check_shape(yaml)?;
    match serde_yaml::from_str::<Value>(yaml) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err("frontmatter: expected key: value lines".to_string()),
        Err(e) => {
            let mut msg = e.to_string();
            // serde_yaml appends its own position, counted from the YAML's
            // first line; restate it counted from the note's first line.
            if let Some(i) = msg.find(" at line ") {
                msg.truncate(i);
            }
            // The usual cause: an unquoted cron expression, whose `*` YAML
            // reads as an alias.
            let line = e
                .location()
                .and_then(|loc| yaml.lines().nth(loc.line().saturating_sub(1)));
            let starts_special = line
                .and_then(|l| l.split_once(':'))
                .is_some_and(|(_, v)| v.trim_start().starts_with(['*', '&', '!', '%', '@', '`']));
            let hint = if starts_special {
                " (a value starting with * & ! % @ or ` must be quoted, e.g. schedule: \"*/5 * * * *\")"
            } else {
                ""
            };
            match e.location() {
                Some(loc) => Err(format!(
                    "frontmatter: YAML error at line {} column {}: {msg}{hint}",
                    loc.line() + 1,
                    loc.column()
                )),
                None => Err(format!("frontmatter: YAML error: {msg}{hint}")),
            }
        }
    }
}

/// The tags a note's own frontmatter declares (`tags:` as a list or one
/// string), for the directory vault, with any leading `#` removed. A note
/// without frontmatter, or with broken YAML, has none.
pub fn frontmatter_tags(content: &str) -> Vec<String> {
    let Ok(Split {
        yaml: Some(yaml), ..
    }) = split_frontmatter(content)
    else {
        return Vec::new();
    };
    let clean = |s: &str| s.trim().trim_start_matches('#').to_string();
    let Ok(map) = parse_frontmatter(yaml) else {
        // Broken YAML can still say it is a job (then it is reported as
        // one with its problem, not silently left out): a `tags:` line of
        // its own, `[a, b]`, a word, or `- a` lines under it.
        return tags_by_line(yaml).iter().map(|t| clean(t)).collect();
    };
    match map.get("tags") {
        Some(Value::String(s)) => s
            .split([',', ' '])
            .filter(|t| !t.trim().is_empty())
            .map(clean)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(clean)
            .filter(|t| !t.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// The tags of a frontmatter that does not parse, read line by line.
fn tags_by_line(yaml: &str) -> Vec<String> {
    let mut lines = yaml.lines();
    let Some(value) = lines.by_ref().find_map(|l| l.strip_prefix("tags:")) else {
        return Vec::new();
    };
    let value = value.trim();
    let words = |s: &str| -> Vec<String> {
        s.split([',', ' '])
            .map(|w| w.trim_matches(|c| matches!(c, '[' | ']' | '"' | '\'')))
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    };
    if !value.is_empty() {
        return words(value);
    }
    lines
        .map_while(|l| l.trim_start().strip_prefix("- "))
        .flat_map(words)
        .collect()
}

impl Job {
    /// Checks a job note. `default_zone` applies when the note names none.
    pub fn from_note(note: &Note, default_zone: &Zone) -> Result<Job, JobError> {
        let path = note.path_or_id().to_string();
        let fail = |problems: Vec<String>| JobError {
            path: path.clone(),
            problems,
        };
        let split = split_frontmatter(&note.content).map_err(|p| fail(vec![p]))?;
        let front = match split.yaml {
            Some(yaml) => parse_frontmatter(yaml).map_err(|p| fail(vec![p]))?,
            None => Map::new(),
        };
        let empty = Map::new();
        let metadata = match &note.metadata {
            Some(Value::Object(m)) => m,
            _ => &empty,
        };
        let unknown = unknown_keys(&front);
        let fields = Fields { front, metadata };
        let mut problems = Vec::new();

        let schedule_text = fields
            .string("schedule", &mut problems, true)
            .map(|s| s.trim().to_string());
        let schedule = schedule_text.as_deref().and_then(|text| {
            Schedule::parse(text)
                .map_err(|e| problems.push(format!("schedule: {e}")))
                .ok()
        });
        let model = fields.string("model", &mut problems, true);
        let allowed_tools = fields.allowed_tools(&mut problems);
        let output_path = match fields.get("output_path") {
            None => Some(DEFAULT_OUTPUT_PATH.to_string()),
            Some(_) => fields.string("output_path", &mut problems, false),
        };
        let output_tags = fields.output_tags(&mut problems);
        let timeout = fields.timeout(&mut problems);
        let disabled = fields.bool("disabled", false, &mut problems);
        let catch_up = fields.bool("catch_up", true, &mut problems);
        let agent = AgentSettings {
            permission_mode: fields
                .string("permission_mode", &mut problems, false)
                .and_then(|m| match PermissionMode::parse(&m) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        problems.push(format!("permission_mode: {e}"));
                        None
                    }
                }),
            disallowed_tools: fields
                .names("disallowed_tools", "tool", false, &mut problems)
                .unwrap_or_default(),
            max_turns: fields
                .integer("max_turns", 1, 10_000, &mut problems)
                .map(|n| n as u32),
            max_budget_usd: fields.positive("max_budget_usd", &mut problems),
            fallback_model: fields
                .names("fallback_model", "model", false, &mut problems)
                .unwrap_or_default(),
            retries: fields
                .integer("retries", 0, MAX_RETRIES, &mut problems)
                .map(|n| n as u32),
            retry_delay: fields.duration("retry_delay", MAX_RETRY_DELAY, &mut problems),
        };
        let ping_url = fields
            .string("ping_url", &mut problems, false)
            .and_then(|u| match crate::config::http_url(&u) {
                Some(url) => Some(url),
                None => {
                    problems.push(format!(
                        "ping_url: expected an http:// or https:// URL (got {u:?})"
                    ));
                    None
                }
            });
        if split.body.trim().is_empty() {
            problems.push(
                "prompt: empty (the body after the frontmatter is what the agent is asked)"
                    .to_string(),
            );
        }
        let zone = match fields.get("timezone") {
            None => Some(default_zone.clone()),
            Some(_) => fields
                .string("timezone", &mut problems, false)
                .and_then(|name| match Zone::get(&name) {
                    Ok(zone) => Some(zone),
                    Err(e) => {
                        problems.push(format!("timezone: {e}"));
                        None
                    }
                }),
        };

        match (
            schedule_text,
            schedule,
            model,
            allowed_tools,
            output_path,
            output_tags,
            timeout,
            zone,
        ) {
            (
                Some(schedule_text),
                Some(schedule),
                Some(model),
                Some(allowed_tools),
                Some(output_path),
                Some(output_tags),
                Some(timeout),
                Some(zone),
            ) if problems.is_empty() => Ok(Job {
                id: note.id.clone(),
                path: path.clone(),
                schedule,
                schedule_text,
                model,
                allowed_tools,
                output_path,
                output_tags,
                timeout,
                disabled,
                zone,
                catch_up,
                prompt: split.body.to_string(),
                agent,
                ping_url,
            }),
            _ => {
                // A required field missing next to a key that looks like
                // it: say so (`schedul:` is not a schedule).
                for p in &mut problems {
                    let Some(key) = p.strip_suffix(": required") else {
                        continue;
                    };
                    if let Some((typo, _)) = unknown.iter().find(|(_, near)| *near == Some(key)) {
                        p.push_str(&format!(" (is `{typo}` a typo of it?)"));
                    }
                }
                Err(fail(problems))
            }
        }
    }

    /// The job name used in templates and default paths.
    pub fn name(&self) -> &str {
        template::job_name(&self.path)
    }
}

/// The keys a job note's frontmatter may hold (SPEC §4.2).
pub const JOB_KEYS: [&str; 17] = [
    "schedule",
    "model",
    "allowed_tools",
    "output_path",
    "output_tags",
    "timeout",
    "disabled",
    "timezone",
    "catch_up",
    "permission_mode",
    "disallowed_tools",
    "max_turns",
    "max_budget_usd",
    "fallback_model",
    "retries",
    "retry_delay",
    "ping_url",
];

/// Keys notes commonly carry that say nothing about the job: no warning.
const NOTE_KEYS: [&str; 14] = [
    "tags",
    "title",
    "description",
    "aliases",
    "alias",
    "created",
    "updated",
    "modified",
    "author",
    "date",
    "status",
    "type",
    "id",
    "summary",
];

/// Frontmatter keys the runner does not know, each with the known key it
/// is closest to, when one is near (`schedul` → `schedule`).
pub fn unknown_keys(front: &Map<String, Value>) -> Vec<(String, Option<&'static str>)> {
    front
        .keys()
        .filter(|k| !JOB_KEYS.contains(&k.as_str()) && !NOTE_KEYS.contains(&k.as_str()))
        .map(|k| {
            let near = JOB_KEYS
                .iter()
                .map(|known| (edit_distance(k, known), *known))
                .filter(|(d, known)| *d <= 2.min(known.len() / 3).max(1))
                .min_by_key(|(d, _)| *d)
                .map(|(_, known)| known);
            (k.clone(), near)
        })
        .collect()
}

/// What `validate` and `jobs` warn about a note: keys the runner does not
/// know (notes carry other keys, so not an error), and a permission mode
/// that does not enforce `allowed_tools`.
pub fn warnings(note: &Note) -> Vec<String> {
    let Ok(Split {
        yaml: Some(yaml), ..
    }) = split_frontmatter(&note.content)
    else {
        return Vec::new();
    };
    let Ok(front) = parse_frontmatter(yaml) else {
        return Vec::new();
    };
    let mut out: Vec<String> = unknown_keys(&front)
        .into_iter()
        .map(|(key, near)| match near {
            Some(near) => format!("unknown key {key:?} (did you mean {near}?)"),
            None => format!("unknown key {key:?} (ignored)"),
        })
        .collect();
    if front.get("permission_mode").and_then(Value::as_str) == Some("bypassPermissions") {
        out.push("permission_mode bypassPermissions: allowed_tools is not enforced".to_string());
    }
    out
}

/// Levenshtein distance, for typo hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Field lookup with the frontmatter first and the vault metadata second.
struct Fields<'a> {
    front: Map<String, Value>,
    metadata: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.front.get(key).or_else(|| self.metadata.get(key))
    }

    /// A non-empty string field. `required` adds a problem when absent.
    fn string(&self, key: &str, problems: &mut Vec<String>, required: bool) -> Option<String> {
        match self.get(key) {
            None | Some(Value::Null) if required => {
                problems.push(format!("{key}: required"));
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                problems.push(format!("{key}: must not be empty"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                problems.push(format!(
                    "{key}: expected a string (got {})",
                    describe(other)
                ));
                None
            }
        }
    }

    fn bool(&self, key: &str, default: bool, problems: &mut Vec<String>) -> bool {
        match self.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                problems.push(format!(
                    "{key}: expected true or false (got {})",
                    describe(other)
                ));
                default
            }
        }
    }

    fn allowed_tools(&self, problems: &mut Vec<String>) -> Option<Vec<String>> {
        self.names("allowed_tools", "tool", true, problems)
    }

    /// A list of `what` names, or one comma-separated string. `required`:
    /// it must be there and name at least one.
    fn names(
        &self,
        key: &str,
        what: &str,
        required: bool,
        problems: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        let tools: Vec<String> = match self.get(key) {
            None | Some(Value::Null) if required => {
                problems.push(format!("{key}: required"));
                return None;
            }
            None | Some(Value::Null) => return None,
            Some(Value::String(s)) => s.split(',').map(|t| t.trim().to_string()).collect(),
            Some(Value::Array(items)) => {
                let mut tools = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => tools.push(s.trim().to_string()),
                        other => {
                            problems.push(format!(
                                "{key}: expected a list of {what} names (got {} in the list)",
                                describe(other)
                            ));
                            return None;
                        }
                    }
                }
                tools
            }
            Some(other) => {
                problems.push(format!(
                    "{key}: expected a list of {what} names or one comma-separated string (got {})",
                    describe(other)
                ));
                return None;
            }
        };
        if tools.is_empty() || tools.iter().all(String::is_empty) {
            if required {
                problems.push(format!("{key}: must name at least one {what}"));
            }
            return if required { None } else { Some(Vec::new()) };
        }
        if tools.iter().any(String::is_empty) {
            problems.push(format!("{key}: a {what} name is empty"));
            return None;
        }
        Some(tools)
    }

    /// An integer from `min` to `max`, if set.
    fn integer(&self, key: &str, min: u64, max: u64, problems: &mut Vec<String>) -> Option<u64> {
        match self.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (min..=max).contains(&n)) => {
                n.as_u64()
            }
            Some(other) => {
                problems.push(format!(
                    "{key}: expected an integer from {min} to {max} (got {})",
                    describe(other)
                ));
                None
            }
        }
    }

    /// A number more than 0, if set.
    fn positive(&self, key: &str, problems: &mut Vec<String>) -> Option<f64> {
        match self.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_f64().is_some_and(|x| x > 0.0 && x.is_finite()) => {
                n.as_f64()
            }
            Some(other) => {
                problems.push(format!(
                    "{key}: expected a number more than 0 (got {})",
                    describe(other)
                ));
                None
            }
        }
    }

    fn output_tags(&self, problems: &mut Vec<String>) -> Option<Vec<String>> {
        const KEY: &str = "output_tags";
        let extra: Vec<String> = match self.get(KEY) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                let mut tags = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => tags.push(s.clone()),
                        other => {
                            problems.push(format!(
                                "{KEY}: expected a list of strings (got {} in the list)",
                                describe(other)
                            ));
                            return None;
                        }
                    }
                }
                tags
            }
            Some(other) => {
                problems.push(format!(
                    "{KEY}: expected a list of strings or one string (got {})",
                    describe(other)
                ));
                return None;
            }
        };
        let mut tags = vec![RUN_TAG.to_string()];
        for tag in extra {
            if tag.trim().is_empty() {
                problems.push(format!("{KEY}: a tag is empty"));
                return None;
            }
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Some(tags)
    }

    fn timeout(&self, problems: &mut Vec<String>) -> Option<Duration> {
        match self.get("timeout") {
            None | Some(Value::Null) => Some(DEFAULT_TIMEOUT),
            Some(_) => self.duration("timeout", MAX_TIMEOUT, problems),
        }
    }

    /// Seconds as a number, or a duration string (`"10m"`), more than 0
    /// and at most `max`, if set.
    fn duration(&self, key: &str, max: Duration, problems: &mut Vec<String>) -> Option<Duration> {
        let value = self.get(key).filter(|v| !v.is_null())?;
        match duration_value(value, max) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                None
            }
        }
    }
}

/// A duration as a job or config value: seconds as a number, or a string
/// such as `"600"`, `"600s"`, `"10m"`, `"1.5h"`; more than 0, at most
/// `max`; at least a millisecond, so a tiny positive value is not zero.
pub fn duration_value(value: &Value, max: Duration) -> Result<Duration, String> {
    let secs = match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("{n} is not a number of seconds"))?,
        Value::String(s) => parse_duration_secs(s)?,
        other => {
            return Err(format!(
                "expected seconds or a duration such as \"10m\" (got {})",
                describe(other)
            ));
        }
    };
    if secs.is_nan() || secs <= 0.0 {
        return Err("must be more than 0 seconds".to_string());
    }
    if secs > max.as_secs_f64() {
        return Err(format!(
            "at most {} seconds ({})",
            max.as_secs(),
            human(max)
        ));
    }
    Ok(Duration::from_secs_f64(secs).max(Duration::from_millis(1)))
}

/// `max` for messages: "a week", "a day".
fn human(d: Duration) -> &'static str {
    match d.as_secs() {
        604_800 => "a week",
        86_400 => "a day",
        _ => "the limit",
    }
}

/// `"600"`, `"600s"`, `"10m"`, `"1h"`, `"1.5h"` → seconds.
pub fn parse_duration_secs(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, unit) = match t
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
    {
        Some((i, _)) => (&t[..i], t[i..].trim()),
        None => (t, ""),
    };
    let scale = match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "expected seconds or a number with s, m or h, such as \"10m\" or \"1.5h\" (got {text:?})"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("expected seconds or a number with s, m or h, such as \"10m\" or \"1.5h\" (got {text:?})"))?;
    Ok(value * scale)
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// A checked job for unit tests elsewhere: `path` with `frontmatter`
/// (YAML lines, each ending in a newline) and `body`.
#[cfg(test)]
pub fn test_job(path: &str, frontmatter: &str, body: &str) -> Job {
    let note = Note {
        id: "id".into(),
        path: Some(path.into()),
        content: format!("---\n{frontmatter}---\n{body}"),
        ..Note::default()
    };
    match Job::from_note(&note, &Zone::utc()) {
        Ok(job) => job,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn note(content: &str) -> Note {
        Note {
            id: "id-1".into(),
            path: Some("jobs/brief".into()),
            content: content.into(),
            ..Note::default()
        }
    }

    fn utc() -> Zone {
        Zone::get("UTC").unwrap()
    }

    #[track_caller]
    fn problems(content: &str) -> String {
        Job::from_note(&note(content), &utc())
            .unwrap_err()
            .to_string()
    }

    const GOOD: &str = "---\nschedule: \"0 8 * * *\"\nmodel: claude-sonnet-4-5\nallowed_tools: [Read, \"mcp__parachute-vault-default__search\"]\n---\nSummarise {{date}}.\n";

    #[test]
    fn a_good_job() {
        let job = Job::from_note(&note(GOOD), &utc()).unwrap();
        assert_eq!(job.schedule_text, "0 8 * * *");
        assert_eq!(job.model, "claude-sonnet-4-5");
        assert_eq!(
            job.allowed_tools,
            ["Read", "mcp__parachute-vault-default__search"]
        );
        assert_eq!(job.output_path, DEFAULT_OUTPUT_PATH);
        assert_eq!(job.output_tags, ["job-run"]);
        assert_eq!(job.timeout, DEFAULT_TIMEOUT);
        assert!(!job.disabled && job.catch_up);
        assert_eq!(job.prompt, "Summarise {{date}}.\n");
        assert_eq!(job.name(), "brief");
    }

    #[test]
    fn every_field() {
        let job = Job::from_note(
            &note("---\r\nschedule: weekly\r\nmodel: m\r\nallowed_tools: Read, Grep ,Bash(git log:*)\r\noutput_path: out/{{date}}\r\noutput_tags: [digest, job-run, digest]\r\ntimeout: 1.5h\r\ndisabled: true\r\ntimezone: Europe/Paris\r\ncatch_up: false\r\ntitle: ignored\r\n---\r\n\r\nbody"),
            &utc(),
        )
        .unwrap();
        assert_eq!(job.allowed_tools, ["Read", "Grep", "Bash(git log:*)"]);
        assert_eq!(job.output_path, "out/{{date}}");
        assert_eq!(job.output_tags, ["job-run", "digest"]);
        assert_eq!(job.timeout, Duration::from_secs(5400));
        assert!(job.disabled && !job.catch_up);
        assert_eq!(job.zone.name, "Europe/Paris");
        assert_eq!(job.prompt, "\r\nbody");
    }

    #[test]
    fn timeouts() {
        for (text, secs) in [
            ("600", 600.0),
            ("\"600\"", 600.0),
            ("\"600s\"", 600.0),
            ("10m", 600.0),
            ("1h", 3600.0),
            ("1.5h", 5400.0),
            ("0.5", 0.5),
        ] {
            let job = Job::from_note(
                &note(&format!(
                    "---\nschedule: daily\nmodel: m\nallowed_tools: Read\ntimeout: {text}\n---\nbody"
                )),
                &utc(),
            )
            .unwrap();
            assert_eq!(job.timeout.as_secs_f64(), secs, "{text}");
        }
        for (text, want) in [
            ("0", "timeout: must be more than 0 seconds"),
            ("-5", "timeout: must be more than 0 seconds"),
            (
                "10d",
                "timeout: expected seconds or a number with s, m or h",
            ),
            ("ten", "timeout: expected seconds"),
            ("1e300", "timeout: at most 604800 seconds"),
            ("\"\"", "timeout: expected seconds"),
            (
                "[1]",
                "timeout: expected seconds or a duration such as \"10m\" (got a list)",
            ),
        ] {
            let err = problems(&format!(
                "---\nschedule: daily\nmodel: m\nallowed_tools: Read\ntimeout: {text}\n---\nbody"
            ));
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn all_problems_in_one_message() {
        assert_eq!(
            problems(
                "---\nschedule: every day\nallowed_tools: []\ndisabled: maybe\ntimezone: Mars/Olympus\n---\nbody"
            ),
            "invalid job at jobs/brief: schedule: expected 5-field cron or one of hourly, daily, weekly, manual (got \"every day\"); model: required; allowed_tools: must name at least one tool; disabled: expected true or false (got \"maybe\"); timezone: unknown time zone \"Mars/Olympus\""
        );
        assert_eq!(
            problems("no frontmatter"),
            "invalid job at jobs/brief: schedule: required; model: required; allowed_tools: required"
        );
        assert!(problems("---\nschedule: 5\nmodel: [a]\nallowed_tools: [1]\noutput_tags: 3\n---\nbody").contains(
            "schedule: expected a string (got 5); model: expected a string (got a list); allowed_tools: expected a list of tool names (got 1 in the list); output_tags: expected a list of strings or one string (got 3)"
        ));
    }

    #[test]
    fn yaml_errors_have_line_and_column() {
        let err = problems("---\nmodel: m\nschedule: */5 * * * *\n---\n");
        assert!(
            err.starts_with("invalid job at jobs/brief: frontmatter: YAML error at line 3 column"),
            "{err}"
        );
        assert!(err.contains("must be quoted"), "{err}");
        let err = problems("---\nmodel: [unclosed\n---\n");
        assert!(err.contains("YAML error at line"), "{err}");
        assert_eq!(
            problems("---\nschedule: daily\n"),
            "invalid job at jobs/brief: frontmatter: the opening --- line has no closing --- line"
        );
        assert!(
            problems("---\n- a\n- b\n---\n").contains("frontmatter: expected key: value lines")
        );
    }

    #[test]
    fn metadata_fills_absent_fields_and_frontmatter_wins() {
        let mut n = note("---\nmodel: from-frontmatter\n---\nbody");
        n.metadata = Some(
            json!({"schedule": "hourly", "model": "from-metadata", "allowed_tools": ["Read"], "catch_up": false}),
        );
        let job = Job::from_note(&n, &utc()).unwrap();
        assert_eq!(job.model, "from-frontmatter");
        assert_eq!(job.schedule_text, "hourly");
        assert!(!job.catch_up);
        assert_eq!(job.prompt, "body");
    }

    #[test]
    fn too_large_or_too_deep_a_frontmatter_is_refused_before_parsing() {
        let deep = format!("x: {}{}\n", "[".repeat(200_000), "]".repeat(200_000));
        let err = parse_frontmatter(&deep).unwrap_err();
        assert!(err.starts_with("frontmatter: larger than 256 KiB"), "{err}");
        let deep = format!("x: {}{}\n", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            parse_frontmatter(&deep).unwrap_err(),
            "frontmatter: nested deeper than 64 levels"
        );
        let ok = format!("x: {}{}\n", "[".repeat(60), "]".repeat(60));
        assert!(parse_frontmatter(&ok).is_ok());
        let dashes = format!("x:\n  {}a\n", "- ".repeat(70));
        assert!(
            parse_frontmatter(&dashes)
                .unwrap_err()
                .contains("nested deeper")
        );
        let mut indented = String::new();
        for i in 0..70 {
            indented.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        assert!(
            parse_frontmatter(&indented)
                .unwrap_err()
                .contains("nested deeper")
        );
        // Brackets in quotes and comments are text.
        let quoted = format!(
            "a: \"{}\"\nb: '{}'\nc: 1 # {}\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        assert!(
            parse_frontmatter(&quoted).is_ok(),
            "{:?}",
            parse_frontmatter(&quoted)
        );
        // The note says it, with every other problem suppressed.
        assert_eq!(
            problems(&format!("---\n{deep}---\nbody")),
            "invalid job at jobs/brief: frontmatter: nested deeper than 64 levels"
        );
    }

    #[test]
    fn unknown_keys_warn_and_typos_get_a_hint() {
        let err =
            problems("---\nschedul: daily\nmodel: m\nallowed_tools: Read\ntitle: t\n---\nbody");
        assert_eq!(
            err,
            "invalid job at jobs/brief: schedule: required (is `schedul` a typo of it?)"
        );
        let n = note(
            "---\nschedule: daily\nmodel: m\nallowed_tools: Read\ntimout: 5\ncolour: red\ntitle: t\npermission_mode: bypassPermissions\n---\nbody",
        );
        assert_eq!(
            warnings(&n),
            [
                "unknown key \"colour\" (ignored)",
                "unknown key \"timout\" (did you mean timeout?)",
                "permission_mode bypassPermissions: allowed_tools is not enforced"
            ]
        );
        assert_eq!(edit_distance("schedul", "schedule"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn an_empty_prompt_is_a_problem() {
        assert_eq!(
            problems("---\nschedule: daily\nmodel: m\nallowed_tools: Read\n---\n \n"),
            "invalid job at jobs/brief: prompt: empty (the body after the frontmatter is what the agent is asked)"
        );
    }

    #[test]
    fn aliases_cannot_blow_up() {
        let mut yaml = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*l{}", i - 1); 9].join(", ");
            yaml.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        let err = parse_frontmatter(&yaml).unwrap_err();
        assert!(err.contains("repetition limit"), "{err}");
    }

    #[test]
    fn frontmatter_split() {
        assert_eq!(
            split_frontmatter("hello").unwrap(),
            Split {
                yaml: None,
                body: "hello"
            }
        );
        assert_eq!(
            split_frontmatter("---\n---\n").unwrap(),
            Split {
                yaml: Some(""),
                body: ""
            }
        );
        assert_eq!(
            split_frontmatter("---  \na: 1\n---\t\nx").unwrap(),
            Split {
                yaml: Some("a: 1\n"),
                body: "x"
            }
        );
        assert_eq!(
            split_frontmatter("---\na: 1\n---\n\nx\n").unwrap(),
            Split {
                yaml: Some("a: 1\n"),
                body: "\nx\n"
            }
        );
        assert_eq!(
            split_frontmatter("\u{feff}---\na: 1\n---").unwrap(),
            Split {
                yaml: Some("a: 1\n"),
                body: ""
            }
        );
        // `----` is not a marker; neither is text after the dashes.
        assert_eq!(split_frontmatter("----\nx").unwrap().yaml, None);
        assert_eq!(split_frontmatter("--- x\n").unwrap().yaml, None);
        assert_eq!(
            split_frontmatter("---\na: |\n  ---x\n---\nb").unwrap(),
            Split {
                yaml: Some("a: |\n  ---x\n"),
                body: "b"
            }
        );
    }

    #[test]
    fn frontmatter_tag_forms() {
        assert_eq!(
            frontmatter_tags("---\ntags: [job, \"#daily\"]\n---\n"),
            ["job", "daily"]
        );
        assert_eq!(frontmatter_tags("---\ntags: \"#job\"\n---\n"), ["job"]);
        assert_eq!(
            frontmatter_tags("---\ntags:\n  - job\n  - 3\n---\n"),
            ["job"]
        );
        assert!(frontmatter_tags("---\ntags: [\n---\n").is_empty());
        // Broken YAML elsewhere: the tags line still says it.
        assert_eq!(
            frontmatter_tags("---\ntags: [job]\nschedule: */5 * * * *\n---\n"),
            ["job"]
        );
        assert_eq!(
            frontmatter_tags("---\nschedule: */5 * * * *\ntags:\n  - job\n  - x\n---\n"),
            ["job", "x"]
        );
        assert!(frontmatter_tags("tags: job").is_empty());
    }
}
