//! What an agent run came to (SPEC §6.3, §6.5): success, or a failure with
//! its one-line reason, its cause and whether another attempt may help;
//! and the run metadata the agent's stream carried (cost, tokens, turns,
//! session, version, denied tools). Pure: it reads an `agent::Outcome`.
//!
//! Exit code 0 proves nothing: a run succeeds only when a `result` line
//! was read, it is not an error, its subtype is `success`, its answer is
//! not empty, and the vault's MCP server was connected. A plain-text agent
//! (a wrapper, the bundled stand-in) succeeds on exit 0 with a non-empty
//! answer, as before.

use std::time::Duration;

use crate::agent::{self, Outcome, Stopped};
use crate::secrets::scrub_owned;
use crate::stream::{Format, ResultLine, Usage};

/// `run_stderr_tail` keeps this many bytes.
pub const STDERR_TAIL_BYTES: usize = 2048;
/// "Agent said" in a failure note keeps this many bytes.
pub const SAID_CAP: usize = 64 << 10;
/// API statuses worth another attempt (SPEC §6.5).
pub const TRANSIENT_STATUSES: [u16; 6] = [429, 500, 502, 503, 504, 529];

/// Why a run failed, for `/metrics` (`parachute_runner_run_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    Api,
    Limit,
    Timeout,
    Denied,
    Empty,
    Spawn,
    Template,
    Interrupted,
    Other,
}

impl Cause {
    pub const ALL: [Cause; 9] = [
        Cause::Api,
        Cause::Limit,
        Cause::Timeout,
        Cause::Denied,
        Cause::Empty,
        Cause::Spawn,
        Cause::Template,
        Cause::Interrupted,
        Cause::Other,
    ];

    /// `run_exit_code` of a run that ended without an exit of its own
    /// (SPEC §6.3).
    pub fn exit_code(self) -> Option<i32> {
        match self {
            Cause::Template => Some(2),
            Cause::Spawn => Some(127),
            Cause::Timeout => Some(crate::agent::TIMEOUT_EXIT_CODE),
            Cause::Interrupted => Some(130),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Api => "api",
            Cause::Limit => "limit",
            Cause::Timeout => "timeout",
            Cause::Denied => "denied",
            Cause::Empty => "empty",
            Cause::Spawn => "spawn",
            Cause::Template => "template",
            Cause::Interrupted => "interrupted",
            Cause::Other => "other",
        }
    }
}

/// A failed run (or attempt).
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// `run_error`: one line a person can act on.
    pub error: String,
    pub cause: Cause,
    /// Another attempt may succeed (API 429/5xx/529, API unreachable).
    pub transient: bool,
    /// `run_api_error_status`.
    pub api_status: Option<u16>,
    /// The result text, or the last assistant text.
    pub agent_said: Option<String>,
    pub stderr_tail: String,
}

impl Failure {
    /// A failure with no agent behind it (a template error, a run
    /// interrupted before it ran).
    pub fn plain(error: impl Into<String>, cause: Cause) -> Failure {
        Failure {
            error: error.into(),
            cause,
            transient: false,
            api_status: None,
            agent_said: None,
            stderr_tail: String::new(),
        }
    }
}

/// How a run ended, as far as its note is concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    Success { answer: String },
    Failure(Failure),
}

impl Ending {
    pub fn is_success(&self) -> bool {
        matches!(self, Ending::Success { .. })
    }

    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Ending::Success { .. } => None,
            Ending::Failure(f) => Some(f),
        }
    }

    pub fn error(&self) -> Option<&str> {
        self.failure().map(|f| f.error.as_str())
    }
}

/// What the agent's stream said about the run, summed over its attempts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    /// `run_exit_code`: always an integer.
    pub exit_code: i32,
    /// The answer (or the agent's output) was cut at 8 MiB.
    pub truncated: bool,
    pub cost_usd: Option<f64>,
    pub usage: Option<Usage>,
    pub num_turns: Option<u64>,
    pub session_id: Option<String>,
    pub agent_version: Option<String>,
    /// Denied tool names, each once.
    pub denials: Vec<String>,
    /// 1 unless retried.
    pub attempts: u32,
    /// The `run_error` of each failed attempt before the last.
    pub attempt_errors: Vec<String>,
}

impl Meta {
    /// Adds a later attempt's stream facts: cost and tokens add up, the
    /// rest is the latest one's.
    pub fn absorb(&mut self, later: Meta) {
        self.cost_usd = match (self.cost_usd, later.cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.usage = match (self.usage.take(), later.usage) {
            (Some(a), Some(b)) => Some(Usage {
                input_tokens: a.input_tokens + b.input_tokens,
                output_tokens: a.output_tokens + b.output_tokens,
                cache_read_input_tokens: a.cache_read_input_tokens + b.cache_read_input_tokens,
                cache_creation_input_tokens: a.cache_creation_input_tokens
                    + b.cache_creation_input_tokens,
            }),
            (a, b) => a.or(b),
        };
        for d in later.denials {
            if !self.denials.contains(&d) {
                self.denials.push(d);
            }
        }
        self.exit_code = later.exit_code;
        self.truncated = later.truncated;
        self.num_turns = later.num_turns.or(self.num_turns);
        self.session_id = later.session_id.or(self.session_id.take());
        self.agent_version = later.agent_version.or(self.agent_version.take());
    }
}

/// What the judgement needs to know besides the outcome.
#[derive(Clone, Debug, Default)]
pub struct Context<'a> {
    /// The program, for "could not start", and the PATH it was looked up
    /// on.
    pub bin: &'a str,
    pub path: &'a str,
    pub timeout: Duration,
    /// The vault's MCP server the agent must have connected (`None`: a
    /// folder vault, which hands over no server).
    pub mcp_server: Option<&'a str>,
    /// For the limit messages.
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
}

/// Judges one attempt. Takes the answer out of `outcome` (it may be
/// megabytes: not copied).
pub fn judge(outcome: &mut Outcome, cx: &Context<'_>) -> (Ending, Meta) {
    let stderr_tail = scrub_owned(agent::tail_text(&outcome.stderr_tail, STDERR_TAIL_BYTES));
    let out = &mut outcome.output;
    let mut meta = Meta {
        exit_code: outcome.exit_code.unwrap_or(1),
        attempts: 1,
        ..Meta::default()
    };
    if let Some(init) = &out.init {
        meta.agent_version = init.claude_code_version.clone();
        meta.session_id = init.session_id.clone();
    }
    if let Some(r) = &out.result {
        meta.cost_usd = r.total_cost_usd;
        meta.usage = r.usage;
        meta.num_turns = r.num_turns;
        meta.session_id = r.session_id.clone().or(meta.session_id.take());
        meta.denials = r.permission_denials.clone();
        meta.truncated = r.result_truncated;
    }
    if out.format == Format::PlainText {
        meta.truncated = out.text_truncated;
    }
    let said = said(out);
    let fail = |meta: &mut Meta, error: String, cause: Cause, exit: Option<i32>| {
        if let Some(code) = exit {
            meta.exit_code = code;
        }
        Ending::Failure(Failure {
            error,
            cause,
            transient: false,
            api_status: None,
            agent_said: said.clone(),
            stderr_tail: stderr_tail.clone(),
        })
    };
    if let Some(e) = &outcome.spawn_error {
        let error = if !cx.bin.contains('/') && e.contains("os error 2") {
            format!(
                "could not start {}: not found on PATH ({}); install it, or set claude_bin in config.json or PARACHUTE_RUNNER_CLAUDE_BIN to its full path",
                cx.bin, cx.path
            )
        } else {
            format!("could not start {}: {e}", cx.bin)
        };
        let ending = fail(&mut meta, error, Cause::Spawn, Some(127));
        return (ending, meta);
    }
    match &outcome.stopped {
        Some(Stopped::Timeout) => {
            let error = format!("claude -p timed out after {}ms", cx.timeout.as_millis());
            let ending = fail(
                &mut meta,
                error,
                Cause::Timeout,
                Some(agent::TIMEOUT_EXIT_CODE),
            );
            return (ending, meta);
        }
        Some(Stopped::Cancelled(reason)) => {
            let ending = fail(
                &mut meta,
                format!("interrupted: {reason}"),
                Cause::Interrupted,
                Some(130),
            );
            return (ending, meta);
        }
        // Stopped after its result: judged by the result below.
        Some(Stopped::AfterResult) | None => {}
    }
    let after_result = outcome.stopped == Some(Stopped::AfterResult);
    let code = meta.exit_code;
    let ending = match out.format {
        Format::StreamJson => match out.result.as_mut() {
            Some(r) => judge_result(r, out.init.as_ref(), code, after_result, cx),
            None => Err((
                format!("claude -p exited with code {code} before its result"),
                Cause::Other,
                None,
            )),
        },
        Format::PlainText | Format::Empty => judge_text(out, code),
    };
    let ending = match ending {
        Ok(answer) => Ending::Success {
            answer: scrub_owned(answer),
        },
        Err((error, mut cause, api_status)) => {
            if cause == Cause::Other && !meta.denials.is_empty() {
                cause = Cause::Denied;
            }
            Ending::Failure(Failure {
                error: scrub_owned(error),
                cause,
                transient: api_status.is_some_and(|s| TRANSIENT_STATUSES.contains(&s))
                    || (cause == Cause::Api && api_status.is_none()),
                api_status,
                agent_said: said,
                stderr_tail,
            })
        }
    };
    (ending, meta)
}

/// A failure's reason, cause and API status.
type Fault = (String, Cause, Option<u16>);

/// A stream-json run by its result line (and its init line).
fn judge_result(
    r: &mut ResultLine,
    init: Option<&crate::stream::Init>,
    code: i32,
    after_result: bool,
    cx: &Context<'_>,
) -> Result<String, Fault> {
    let text = r.result.as_deref().unwrap_or("").trim();
    if r.is_error {
        if let Some(status) = r.api_error_status {
            return Err((
                format!(
                    "claude -p: API error {status}: {}",
                    api_message(text, status)
                ),
                Cause::Api,
                Some(status),
            ));
        }
        if is_unreachable(text) {
            return Err((
                format!("claude -p: API unreachable: {}", one_line(text)),
                Cause::Api,
                None,
            ));
        }
    }
    match r.subtype.as_str() {
        "error_max_turns" => {
            let n = cx
                .max_turns
                .map(|n| n.to_string())
                .or_else(|| number_in(&r.errors))
                .unwrap_or_else(|| "?".to_string());
            return Err((
                format!("claude -p: stopped at the turn limit ({n})"),
                Cause::Limit,
                None,
            ));
        }
        "error_max_budget_usd" => {
            let x = cx
                .max_budget_usd
                .map(|x| x.to_string())
                .or_else(|| dollars_in(&r.errors))
                .unwrap_or_else(|| "?".to_string());
            return Err((
                format!("claude -p: stopped at the budget (${x})"),
                Cause::Limit,
                None,
            ));
        }
        _ => {}
    }
    if let Some(expected) = cx.mcp_server {
        let status = init
            .and_then(|i| i.mcp_servers.iter().find(|s| s.name == expected))
            .map_or("missing", |s| s.status.as_str());
        if status != "connected" {
            return Err((
                format!("claude -p: vault MCP server {status}"),
                Cause::Other,
                None,
            ));
        }
    }
    if let Some(bad) = init.and_then(|i| i.mcp_servers.iter().find(|s| s.status != "connected")) {
        return Err((
            format!("claude -p: MCP server {} {}", bad.name, bad.status),
            Cause::Other,
            None,
        ));
    }
    if r.subtype == "error_during_execution" {
        // Its `errors` are the CLI's own diagnostics, not for a person.
        return Err((
            format!("claude -p exited with code {code}: stopped during execution"),
            Cause::Other,
            None,
        ));
    }
    if r.is_error || r.subtype != "success" {
        let detail = r.errors.first().map_or(text, String::as_str);
        return Err((
            format!(
                "claude -p exited with code {code}: {}{}",
                r.subtype,
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", one_line(detail))
                }
            ),
            Cause::Other,
            None,
        ));
    }
    if text.is_empty() {
        return Err(("claude -p: empty answer".to_string(), Cause::Empty, None));
    }
    if code != 0 && !after_result {
        return Err((
            format!("claude -p exited with code {code}"),
            Cause::Other,
            None,
        ));
    }
    Ok(trim_in_place(r.result.take().unwrap_or_default()))
}

/// A plain-text run: exit 0 and a non-empty answer.
fn judge_text(out: &mut crate::stream::AgentOutput, code: i32) -> Result<String, Fault> {
    if code != 0 {
        let text = out.text.trim();
        let status = api_status_in_text(text);
        return Err(match status {
            Some(s) => (
                format!("claude -p: API error {s}: {}", api_message(text, s)),
                Cause::Api,
                Some(s),
            ),
            None => (
                format!("claude -p exited with code {code}"),
                Cause::Other,
                None,
            ),
        });
    }
    let answer = trim_in_place(std::mem::take(&mut out.text));
    if answer.is_empty() {
        return Err(("claude -p: empty answer".to_string(), Cause::Empty, None));
    }
    Ok(answer)
}

/// What the agent said, for a failure note: the result text, else the
/// last assistant text, else (plain text) its output; capped.
fn said(out: &crate::stream::AgentOutput) -> Option<String> {
    let text = out
        .result
        .as_ref()
        .and_then(|r| r.result.as_deref())
        .filter(|t| !t.trim().is_empty())
        .or(out.last_assistant_text.as_deref())
        .or((out.format == Format::PlainText).then_some(out.text.as_str()))?
        .trim();
    if text.is_empty() {
        return None;
    }
    let mut end = text.len().min(SAID_CAP);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(scrub_owned(text[..end].to_string()))
}

/// The CLI's API error text without what `run_error` says already: its
/// `API Error:` prefix and a leading status (`529 Overloaded…`).
fn api_message(text: &str, status: u16) -> String {
    let t = text.strip_prefix("API Error:").unwrap_or(text).trim();
    let t = t
        .strip_prefix(&status.to_string())
        .filter(|rest| rest.starts_with(' '))
        .map_or(t, str::trim_start);
    one_line(t)
}

/// The status in a plain-text CLI error: `API Error: 529 …` or
/// `API Error: … (429) …`.
fn api_status_in_text(text: &str) -> Option<u16> {
    let rest = text.strip_prefix("API Error:")?.trim_start();
    let digits = |s: &str| -> Option<u16> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        (d.len() == 3).then(|| d.parse().ok()).flatten()
    };
    digits(rest).or_else(|| {
        let open = rest.find('(')?;
        let status = digits(&rest[open + 1..])?;
        rest[open + 4..].starts_with(')').then_some(status)
    })
}

/// Whether an error result says the API could not be reached (the CLI
/// reports a connection failure without a status).
fn is_unreachable(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.starts_with("api error")
        && (t.contains("connection") || t.contains("timed out") || t.contains("unable to connect"))
}

/// The first integer in `errors` (`Reached maximum number of turns (1)`).
fn number_in(errors: &[String]) -> Option<String> {
    let e = errors.first()?;
    let start = e.find(|c: char| c.is_ascii_digit())?;
    let n: String = e[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some(n)
}

/// The dollar amount in `errors` (`Reached maximum budget ($0.0001)`).
fn dollars_in(errors: &[String]) -> Option<String> {
    let e = errors.first()?;
    let start = e.find('$')? + 1;
    let x: String = e[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!x.is_empty()).then_some(x)
}

/// Text on one line (for `run_error`), at most 300 characters.
fn one_line(s: &str) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

/// `s.trim()` without a copy.
fn trim_in_place(mut s: String) -> String {
    let end = s.trim_end().len();
    s.truncate(end);
    let start = s.len() - s.trim_start().len();
    s.drain(..start);
    s
}
