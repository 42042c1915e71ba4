//! SPEC §6.3, §6.5 against what the real `claude -p` printed: every recorded
//! case of `fixtures/claude-cli/` (one test each, `fixture_<name>`), replayed
//! byte for byte by the fake claude, through `once --only jobs/<name>` on a
//! folder vault, and the note the runner wrote, read back from its file
//! `<vault>/jobs/runs/<name>/<run_id>[.failed].md`.
//!
//! A folder vault hands the agent no MCP server, so the runner expects none;
//! a server the agent lists anyway (the captures' `lab`) must be connected.
//! The expected stream metadata (cost, tokens, turns, session, version,
//! denials) is read from the fixture itself. Every job asks for
//! `retries: 2` with a short `retry_delay`, so a run retried that should not
//! be shows as extra invocations instead of a slow test.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::support::fake_claude::{self, FakeClaude, Fixture};
use crate::support::{NoteFile, Ran, Runner, TempDir};

const MODEL: &str = "claude-sonnet-4-5";

/// What a pass left behind for one job.
struct Written {
    ran: Ran,
    job: String,
    note: NoteFile,
    calls: Vec<fake_claude::Invocation>,
    _dir: TempDir,
}

impl Written {
    fn dump(&self) -> String {
        format!(
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.note.dump(),
            self.ran.stdout(),
            self.ran.stderr()
        )
    }

    fn meta(&self, key: &str) -> &Value {
        self.note.meta(key)
    }
}

/// Runs `once --vault-dir <notes> --only jobs/<name>` with `claude` as the
/// agent, the job's frontmatter extended by `extra` lines, and reads the
/// one note it wrote.
fn run_job(name: &str, claude: FakeClaude, extra: &str) -> Written {
    run_job_with(name, claude, extra, &[])
}

/// [`run_job`] with more environment variables for the runner.
fn run_job_with(name: &str, claude: FakeClaude, extra: &str, env: &[(&str, &str)]) -> Written {
    let dir = TempDir::new(&format!("fixture-{name}"));
    let notes = dir.join("notes");
    let job = format!("jobs/{name}");
    let job_file = notes.join(format!("{job}.md"));
    std::fs::create_dir_all(job_file.parent().unwrap()).unwrap();
    std::fs::write(notes.join("notes.txt"), "hello notes\n").unwrap();
    std::fs::write(
        &job_file,
        format!(
            "---\ntags: [job]\nschedule: manual\nmodel: {MODEL}\nallowed_tools: [Read]\nretries: 2\nretry_delay: 0.05\n{extra}---\nReplay {name}.\n"
        ),
    )
    .unwrap();
    let claude_dir = dir.join("claude");
    let bin = claude.install(&claude_dir);
    let mut runner = Runner::new()
        .env("PARACHUTE_HOME", dir.join("home"))
        .env("HOME", dir.path())
        .env("PARACHUTE_RUNNER_CLAUDE_BIN", &bin)
        .args(["once".as_ref(), "--vault-dir".as_ref(), notes.as_os_str()])
        .args(["--only", &job]);
    for (k, v) in env {
        runner = runner.env(k, v);
    }
    let ran = runner.run();
    let mut notes = NoteFile::all_in(&notes.join("jobs/runs").join(name));
    assert_eq!(
        notes.len(),
        1,
        "one note expected, got {}\n--- stdout\n{}\n--- stderr\n{}",
        notes.len(),
        ran.stdout(),
        ran.stderr()
    );
    Written {
        ran,
        job,
        note: notes.remove(0),
        calls: fake_claude::invocations(&claude_dir),
        _dir: dir,
    }
}

/// The metadata the stream of `attempts` replays of `fx` gives (SPEC
/// §6.3): cost and tokens add up over the attempts, the rest is the
/// case's own.
fn stream_metadata(fx: &Fixture, attempts: u32) -> Map<String, Value> {
    let mut m = Map::new();
    let init = fx.init();
    let result = fx.result();
    if let Some(r) = &result {
        let cost = r["total_cost_usd"].as_f64().expect("total_cost_usd");
        let total = (1..attempts).fold(cost, |sum, _| sum + cost);
        m.insert("run_cost_usd".into(), json!(total));
        let usage: Map<String, Value> = [
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ]
        .iter()
        .map(|k| {
            let n = r["usage"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("usage.{k}"));
            (k.to_string(), json!(n * u64::from(attempts)))
        })
        .collect();
        m.insert("run_usage".into(), Value::Object(usage));
        m.insert("run_num_turns".into(), r["num_turns"].clone());
        m.insert("run_session_id".into(), r["session_id"].clone());
        let denied: Vec<Value> = r["permission_denials"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d["tool_name"].clone())
            .collect();
        if !denied.is_empty() {
            m.insert("run_permission_denials".into(), Value::from(denied));
        }
    } else if let Some(i) = &init {
        m.insert("run_session_id".into(), i["session_id"].clone());
    }
    if let Some(i) = &init {
        m.insert("run_agent_version".into(), i["claude_code_version"].clone());
    }
    m
}

/// Checks what every note of these runs has: tags, the run's own facts,
/// the stream metadata read from the fixture, exactly these keys, the
/// report line, the exit status and the number of attempts.
#[track_caller]
fn assert_note(w: &Written, fx: &Fixture, attempts: u32, failed: bool) {
    let d = w.dump();
    let run_id = w.meta("run_id").as_str().unwrap_or_else(|| panic!("{d}"));
    let file_name = w.note.path.file_name().unwrap().to_str().unwrap();
    let want_name = if failed {
        format!("{run_id}.failed.md")
    } else {
        format!("{run_id}.md")
    };
    assert_eq!(file_name, want_name, "{d}");
    let tags: &[&str] = if failed {
        &["job-run", "job-run-failed"]
    } else {
        &["job-run"]
    };
    assert_eq!(w.meta("tags"), &json!(tags), "{d}");
    assert_eq!(w.meta("parent_job_path"), &json!(w.job), "{d}");
    assert_eq!(w.meta("parent_job_id"), &json!(w.job), "{d}");
    assert_eq!(w.meta("model"), MODEL, "{d}");
    assert_eq!(w.meta("run_trigger"), "manual", "{d}");
    assert!(w.meta("run_duration_ms").is_u64(), "{d}");
    let started = w.meta("run_started_at").as_str().unwrap_or("");
    assert!(
        started.ends_with('Z') && started.parse::<jiff::Timestamp>().is_ok(),
        "{d}"
    );
    // Always an integer: the agent's own exit code.
    assert!(w.meta("run_exit_code").is_i64(), "{d}");
    assert_eq!(w.meta("run_exit_code"), &json!(fx.exit_code()), "{d}");
    assert_eq!(w.meta("run_attempts"), &json!(attempts), "{d}");
    for (k, v) in stream_metadata(fx, attempts) {
        assert_eq!(w.meta(&k), &v, "{k}\n{d}");
    }
    // Nothing else.
    let mut want: Vec<String> = [
        "tags",
        "parent_job_id",
        "parent_job_path",
        "run_started_at",
        "run_duration_ms",
        "run_exit_code",
        "run_id",
        "model",
        "run_trigger",
        "run_attempts",
    ]
    .iter()
    .map(|k| k.to_string())
    .chain(stream_metadata(fx, attempts).keys().cloned())
    .collect();
    if failed {
        want.extend(["run_error".to_string(), "run_stderr_tail".to_string()]);
        if w.note.front.contains_key("run_api_error_status") {
            want.push("run_api_error_status".into());
        }
        if attempts > 1 {
            want.push("run_attempt_errors".into());
        }
    }
    want.sort();
    let mut got: Vec<String> = w.note.front.keys().cloned().collect();
    got.sort();
    assert_eq!(got, want, "{d}");
    // One agent per attempt, and the exit status of the pass.
    assert_eq!(w.calls.len(), attempts as usize, "invocations\n{d}");
    let located = w.note.path.display().to_string();
    let line = w
        .ran
        .stdout()
        .lines()
        .find(|l| l.contains(&w.job))
        .map(String::from)
        .unwrap_or_default();
    if failed {
        assert_eq!(w.ran.code(), Some(1), "{d}");
        assert!(
            line.starts_with(&format!("failed: {}: ", w.job)),
            "{line}\n{d}"
        );
    } else {
        assert_eq!(w.ran.code(), Some(0), "{d}");
        assert!(line.starts_with(&format!("ok: {} -> ", w.job)), "{d}");
    }
    assert!(line.contains(&format!(" -> {located} (manual, ")), "{d}");
}

/// A success: the note is the trimmed answer.
#[track_caller]
fn assert_success(w: &Written, fx: &Fixture, answer: &str) {
    assert_note(w, fx, 1, false);
    let from_fixture = match fx.result() {
        Some(r) => r["result"].as_str().unwrap_or("").trim().to_string(),
        None => String::from_utf8_lossy(&fx.stdout).trim().to_string(),
    };
    assert_eq!(answer, from_fixture, "the test's answer is the fixture's");
    assert_eq!(w.note.body, format!("{answer}\n"), "{}", w.dump());
}

/// A failure: `run_error`, the API status, the attempts and the body of
/// SPEC §6.3.
#[track_caller]
fn assert_failure(w: &Written, fx: &Fixture, error: &str, api_status: Option<u16>, attempts: u32) {
    let d = w.dump();
    assert_eq!(w.meta("run_error"), error, "{d}");
    assert_eq!(w.meta("run_stderr_tail"), fx.stderr(), "{d}");
    match api_status {
        Some(s) => assert_eq!(w.meta("run_api_error_status"), &json!(s), "{d}"),
        None => assert!(!w.note.front.contains_key("run_api_error_status"), "{d}"),
    }
    if attempts > 1 {
        // Each attempt before the last (whose error is `run_error`).
        let before = vec![error; attempts as usize - 1];
        assert_eq!(w.meta("run_attempt_errors"), &json!(before), "{d}");
    }
    assert_note(w, fx, attempts, true);
    assert!(
        w.ran
            .stdout()
            .contains(&format!("failed: {}: {error} -> ", w.job)),
        "{d}"
    );
    // What the agent said: the result text, else its last text, else (a
    // plain-text agent) what it printed.
    let said = fx
        .result()
        .and_then(|r| r["result"].as_str().map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty())
        .or_else(|| fx.last_assistant_text())
        .or_else(|| {
            fx.result()
                .is_none()
                .then(|| String::from_utf8_lossy(&fx.stdout).trim().to_string())
                .filter(|t| !t.is_empty() && fx.lines().is_empty())
        });
    let denied: Vec<String> = match w.meta("run_permission_denials") {
        Value::Array(a) => a.iter().map(|t| t.as_str().unwrap().to_string()).collect(),
        _ => Vec::new(),
    };
    let mut body = format!("# job-run failed\n\n**Reason:** {error}\n\n");
    if let Some(said) = &said {
        body.push_str(&format!("## Agent said\n\n{said}\n\n"));
    }
    if !denied.is_empty() {
        body.push_str(&format!("## Denied tools\n\n{}\n\n", denied.join("\n")));
    }
    let tail = if fx.stderr().is_empty() {
        "(empty)"
    } else {
        fx.stderr()
    };
    body.push_str(&format!("## stderr (tail)\n\n```\n{tail}\n```\n"));
    assert_eq!(w.note.body, body, "{d}");
}

/// Replays `name` once through the runner.
fn replay(name: &str, extra: &str) -> (Written, Fixture) {
    let fx = Fixture::load(name);
    (run_job(name, FakeClaude::replays(name), extra), fx)
}

/// The recorded API status of a case.
fn api_status(fx: &Fixture) -> u16 {
    let status = fx.result().map(|r| r["api_error_status"].clone());
    u16::try_from(status.and_then(|s| s.as_u64()).expect("api_error_status")).unwrap()
}

#[test]
fn fixture_api_401() {
    let (w, fx) = replay("api-401", "");
    // Not transient: one attempt, whatever `retries` says.
    assert_failure(
        &w,
        &fx,
        "claude -p: API error 401: Invalid API key · Fix external API key",
        Some(api_status(&fx)),
        1,
    );
    assert_eq!(api_status(&fx), 401);
}

#[test]
fn fixture_api_429() {
    let (w, fx) = replay("api-429", "");
    assert_failure(
        &w,
        &fx,
        "claude -p: API error 429: Request rejected (429) · Number of requests has exceeded your rate limit",
        Some(429),
        3,
    );
    assert_eq!(api_status(&fx), 429);
}

#[test]
fn fixture_api_500() {
    let (w, fx) = replay("api-500", "");
    assert_failure(
        &w,
        &fx,
        "claude -p: API error 500: Internal server error. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:37149).",
        Some(500),
        3,
    );
    assert_eq!(api_status(&fx), 500);
}

#[test]
fn fixture_api_529() {
    let (w, fx) = replay("api-529", "");
    assert_failure(
        &w,
        &fx,
        "claude -p: API error 529: Overloaded. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:35167).",
        Some(529),
        3,
    );
    assert_eq!(api_status(&fx), 529);
}

#[test]
fn fixture_api_529_then_ok() {
    // The CLI's own retries (api_retry lines) happened inside the one
    // attempt: a plain success for the runner.
    let (w, fx) = replay("api-529-then-ok", "");
    let retries = fx
        .lines()
        .iter()
        .filter(|l| l["subtype"] == "api_retry")
        .count();
    assert_eq!(retries, 2);
    assert_success(&w, &fx, "recovered");
}

#[test]
fn fixture_bash_denied_dontask() {
    // A denial does not fail a run that answered (SPEC §6.3): a success
    // note, the denied tool in its metadata.
    let (w, fx) = replay("bash-denied-dontask", "");
    assert_success(&w, &fx, "finished");
    assert_eq!(
        w.meta("run_permission_denials"),
        &json!(["Bash"]),
        "{}",
        w.dump()
    );
}

#[test]
fn fixture_bash_ran_bypass() {
    let (w, fx) = replay("bash-ran-bypass", "");
    assert_success(&w, &fx, "finished");
}

#[test]
fn fixture_empty_reply() {
    let (w, fx) = replay("empty-reply", "");
    assert_failure(&w, &fx, "claude -p: empty answer", None, 1);
    // `--output-format json`: no init line, so no version.
    assert!(fx.init().is_none());
    assert_eq!(w.meta("run_exit_code"), 0);
}

#[test]
fn fixture_max_budget() {
    let (w, fx) = replay("max-budget", "max_budget_usd: 0.0001\n");
    assert_failure(
        &w,
        &fx,
        "claude -p: stopped at the budget ($0.0001)",
        None,
        1,
    );
    assert_eq!(w.calls[0].arg_after("--max-budget-usd"), Some("0.0001"));
    // The budget stop: zero tokens, a cost that is not zero.
    assert!(
        w.meta("run_cost_usd").as_f64().unwrap() > 0.0,
        "{}",
        w.dump()
    );
}

#[test]
fn fixture_max_turns() {
    let (w, fx) = replay("max-turns", "max_turns: 1\n");
    assert_failure(&w, &fx, "claude -p: stopped at the turn limit (1)", None, 1);
    assert_eq!(w.calls[0].arg_after("--max-turns"), Some("1"));
}

#[test]
fn fixture_mcp_server_failed() {
    // The agent went on without its server and answered "done": not an
    // answer to keep.
    let (w, fx) = replay("mcp-server-failed", "");
    assert_eq!(
        fx.init().unwrap()["mcp_servers"],
        json!([{"name": "lab", "status": "failed"}])
    );
    assert_failure(&w, &fx, "claude -p: MCP server lab failed", None, 1);
    assert_eq!(w.meta("run_exit_code"), 0);
}

#[test]
fn fixture_mcp_tool_denied_dontask() {
    let (w, fx) = replay("mcp-tool-denied-dontask", "");
    assert_eq!(
        fx.init().unwrap()["mcp_servers"],
        json!([{"name": "lab", "status": "connected"}])
    );
    assert_success(&w, &fx, "finished");
    assert_eq!(
        w.meta("run_permission_denials"),
        &json!(["mcp__lab__delete"]),
        "{}",
        w.dump()
    );
}

#[test]
fn fixture_sigint_while_waiting() {
    // Interrupted from outside (not by the runner): exit 0, an error result
    // without text.
    let (w, fx) = replay("sigint-while-waiting", "");
    assert_failure(
        &w,
        &fx,
        "claude -p exited with code 0: stopped during execution",
        None,
        1,
    );
}

#[test]
fn fixture_sigterm_during_bash() {
    // No result line at all: no cost, tokens or turns; the session and
    // version from the init line.
    let (w, fx) = replay("sigterm-during-bash", "");
    assert!(fx.result().is_none());
    assert_failure(
        &w,
        &fx,
        "claude -p exited with code 143 before its result",
        None,
        1,
    );
    assert_eq!(w.meta("run_exit_code"), 143);
    assert!(!w.note.front.contains_key("run_cost_usd"), "{}", w.dump());
}

#[test]
fn fixture_success_after_tool() {
    let (w, fx) = replay("success-after-tool", "");
    assert_success(&w, &fx, "The file says hello.");
    assert_eq!(w.meta("run_num_turns"), 2);
}

#[test]
fn fixture_success_json() {
    // `--output-format json`: the one result object reads as a stream.
    let (w, fx) = replay("success-json", "");
    assert_success(&w, &fx, "Hello from fake");
    assert!(
        !w.note.front.contains_key("run_agent_version"),
        "{}",
        w.dump()
    );
}

#[test]
fn fixture_success_text() {
    let (w, fx) = replay("success-text", "");
    assert_success(&w, &fx, "Hello from fake");
    assert_eq!(w.meta("run_agent_version"), "2.1.197");
}

#[test]
fn fixture_text_api_529() {
    // A plain-text agent: the status is read from its text, and retried.
    let (w, fx) = replay("text-api-529", "");
    assert!(fx.lines().is_empty());
    assert_failure(
        &w,
        &fx,
        "claude -p: API error 529: Overloaded. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:36041).",
        Some(529),
        3,
    );
}

#[test]
fn fixture_text_success() {
    let (w, fx) = replay("text-success", "");
    assert_success(&w, &fx, "Hello from fake");
}

/// Test names of this file: `fixture_<case name with _ for ->`.
const THIS_FILE: &str = include_str!("agent_results.rs");

#[test]
fn every_fixture_has_a_test() {
    let dir = fake_claude::fixtures_dir();
    let names = fake_claude::fixture_names_in(&dir);
    assert!(names.len() >= 19, "{}: {names:?}", dir.display());
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            let test = format!("#[test]\nfn fixture_{}() {{", n.replace('-', "_"));
            !THIS_FILE.contains(&test)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "fixtures of {} without a test in tests/agent_results.rs: {missing:?}",
        dir.display()
    );
    // And every case can be replayed: its stdout file is there.
    for n in &names {
        let fx = Fixture::load(n);
        assert!(!fx.stdout.is_empty(), "{n}");
        fx.exit_code();
    }
}

#[test]
fn the_committed_fixtures_are_the_shared_ones() {
    let ours = fake_claude::committed_fixtures_dir();
    let shared = fake_claude::shared_fixtures_dir();
    let list = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let committed = list(&ours);
    assert!(
        committed.iter().any(|n| n == "README.md") && committed.len() > 30,
        "{committed:?}"
    );
    if !shared.is_dir() {
        return;
    }
    assert_eq!(
        committed,
        list(&shared),
        "tests/data/claude-cli differs from {}: copy it again",
        shared.display()
    );
    for name in &committed {
        assert!(
            std::fs::read(ours.join(name)).unwrap() == std::fs::read(shared.join(name)).unwrap(),
            "tests/data/claude-cli/{name} differs from {}: copy it again",
            shared.display()
        );
    }
}

/// The run of a transient failure then a success, replayed in turn.
fn retried_then_ok() -> (Written, Fixture, Fixture) {
    let claude = FakeClaude::replays_in_turn(&["api-529", "success-text"]);
    let w = run_job("retried", claude, "");
    (w, Fixture::load("api-529"), Fixture::load("success-text"))
}

#[test]
fn a_transient_failure_then_a_success_is_one_note_with_both_attempts() {
    let (w, failed, ok) = retried_then_ok();
    let d = w.dump();
    assert_eq!(w.ran.code(), Some(0), "{d}");
    assert_eq!(w.calls.len(), 2, "{d}");
    assert!(!w.note.is_failed(), "{d}");
    assert_eq!(w.note.body, "Hello from fake\n", "{d}");
    assert_eq!(w.meta("run_attempts"), 2, "{d}");
    assert_eq!(w.meta("run_exit_code"), 0, "{d}");
    // Cost and tokens add up over the attempts; the rest is the last one's.
    let (fr, or) = (failed.result().unwrap(), ok.result().unwrap());
    let cost = fr["total_cost_usd"].as_f64().unwrap() + or["total_cost_usd"].as_f64().unwrap();
    assert_eq!(w.meta("run_cost_usd").as_f64(), Some(cost), "{d}");
    for k in ["input_tokens", "output_tokens"] {
        let sum = fr["usage"][k].as_u64().unwrap() + or["usage"][k].as_u64().unwrap();
        assert_eq!(w.meta("run_usage")[k], sum, "{k}\n{d}");
    }
    assert_eq!(w.meta("run_session_id"), &or["session_id"], "{d}");
    assert_eq!(w.meta("run_num_turns"), &or["num_turns"], "{d}");
}

#[test]
fn a_transient_failure_then_a_success_names_the_failed_attempt() {
    let (w, _, _) = retried_then_ok();
    assert_eq!(w.meta("run_attempts"), 2, "{}", w.dump());
    assert_eq!(
        w.meta("run_attempt_errors"),
        &json!([
            "claude -p: API error 529: Overloaded. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:35167)."
        ]),
        "{}",
        w.dump()
    );
}

/// SPEC §6.2, §4.2: the permission and limit keys of a job reach the
/// agent's argv; a job without them gets the config's defaults.
#[test]
fn the_jobs_permission_and_limit_keys_reach_the_agent() {
    let extra = "permission_mode: acceptEdits\ndisallowed_tools: [Write, \"Bash(rm:*)\"]\nmax_turns: 7\nmax_budget_usd: 0.25\nfallback_model: claude-haiku-4-5\n";
    let w = run_job("success-text", FakeClaude::replays("success-text"), extra);
    assert!(!w.note.is_failed(), "{}", w.dump());
    let call = &w.calls[0];
    assert_eq!(call.arg_after("--permission-mode"), Some("acceptEdits"));
    assert_eq!(
        call.arg_after("--disallowedTools"),
        Some("Write,Bash(rm:*)")
    );
    assert_eq!(call.arg_after("--max-turns"), Some("7"));
    assert_eq!(call.arg_after("--max-budget-usd"), Some("0.25"));
    assert_eq!(call.arg_after("--fallback-model"), Some("claude-haiku-4-5"));
    assert_eq!(call.arg_after("--allowedTools"), Some("Read"));
    assert_eq!(call.arg_after("--tools"), Some("Read"));

    // Defaults from the config (here its environment variables); none of
    // the job-only flags.
    let w = run_job_with(
        "success-text",
        FakeClaude::replays("success-text"),
        "",
        &[
            ("PARACHUTE_RUNNER_PERMISSION_MODE", "plan"),
            ("PARACHUTE_RUNNER_MAX_BUDGET_USD", "1.5"),
        ],
    );
    assert!(!w.note.is_failed(), "{}", w.dump());
    let call = &w.calls[0];
    assert_eq!(call.arg_after("--permission-mode"), Some("plan"));
    assert_eq!(call.arg_after("--max-budget-usd"), Some("1.5"));
    for flag in ["--disallowedTools", "--max-turns", "--fallback-model"] {
        assert_eq!(call.arg_after(flag), None, "{flag}: {:?}", call.argv);
    }
}

/// SPEC §6.2: an agent that prints its result and then does not exit is
/// stopped (10 s after the result line) and the run keeps its answer;
/// what it left running is gone too.
#[test]
fn an_agent_that_hangs_after_its_answer_is_stopped_and_the_run_keeps_it() {
    let fx = Fixture::load("success-text");
    let w = run_job(
        "success-text",
        FakeClaude::replays("success-text")
            .leaves_grandchild()
            .sleeps(300.0),
        "",
    );
    let d = w.dump();
    assert_eq!(w.ran.code(), Some(0), "{d}");
    assert!(!w.note.is_failed(), "{d}");
    let answer = fx.result().unwrap()["result"]
        .as_str()
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(w.note.body, format!("{answer}\n"), "{d}");
    assert_eq!(
        w.meta("run_cost_usd"),
        &fx.result().unwrap()["total_cost_usd"],
        "{d}"
    );
    assert_eq!(w.calls.len(), 1, "{d}");
    // It never finished on its own, and neither the agent nor the process
    // it left behind is running.
    let call = &w.calls[0];
    assert!(!call.dir.join("finished").exists(), "{d}");
    assert!(!fake_claude::alive(call.pid()), "{d}");
    let grandchild: i32 = std::fs::read_to_string(call.dir.join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!fake_claude::alive(grandchild), "{d}");
}

/// SPEC §6.2: `bypassPermissions` is warned about at every run (its
/// allowlist means nothing); the root warning is for that mode only, and
/// not when `IS_SANDBOX=1` lets claude run it as root.
#[test]
fn bypass_permissions_is_warned_about_and_root_only_in_that_mode() {
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    let root_warning = "running as root: claude refuses --permission-mode bypassPermissions";
    let bypass_warning = "permission_mode bypassPermissions: allowed_tools is not enforced";
    let run = |extra: &str, sandbox: &str| {
        let w = run_job_with(
            "success-text",
            FakeClaude::replays("success-text"),
            extra,
            &[("IS_SANDBOX", sandbox)],
        );
        assert!(!w.note.is_failed(), "{}", w.dump());
        w.ran.stderr()
    };
    let default = run("", "0");
    assert!(!default.contains(bypass_warning), "{default}");
    assert!(!default.contains(root_warning), "{default}");
    let bypass = run("permission_mode: bypassPermissions\n", "0");
    assert!(bypass.contains(bypass_warning), "{bypass}");
    if root {
        assert!(bypass.contains(root_warning), "{bypass}");
    } else {
        eprintln!("NOTICE: not running as root: the root warning is not checked");
        assert!(!bypass.contains(root_warning), "{bypass}");
    }
    let sandboxed = run("permission_mode: bypassPermissions\n", "1");
    assert!(sandboxed.contains(bypass_warning), "{sandboxed}");
    assert!(!sandboxed.contains(root_warning), "{sandboxed}");
}
