//! SPEC §11, knowing when jobs fail or stop: a job's `ping_url` (the
//! healthchecks.io convention), the config's `notify` program and
//! `notify_url` webhook with their throttle, and stale jobs — the binary
//! against the fake vault, the fake claude and a fake HTTP endpoint.
//!
//! `once` runs at instants given by PARACHUTE_RUNNER_NOW, so throttling and
//! staleness are decided on literal instants. Pings and notices go out in
//! the background; `once` waits for them before it exits, and the tests
//! still await every request on the endpoint's condvar (never sleep, then
//! look). Nothing here asserts how long anything took.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::serve::start;
use crate::support::Ran;
use crate::support::fake_claude::{self, FakeClaude};
use crate::support::fake_endpoint::{Answer, FakeEndpoint, Request};
use crate::support::fake_hub::FakeHub;
use crate::support::fake_vault::StoredNote;
use crate::support::world::{TOKEN, World, eventually, job};

/// A stream-json answer with a cost, from an agent whose vault MCP server
/// is connected.
const STREAM_OK: &str = concat!(
    r#"{"type":"system","subtype":"init","session_id":"sess-1","model":"test-model","mcp_servers":[{"name":"parachute-vault-default","status":"connected"}]}"#,
    "\n",
    r#"{"type":"result","subtype":"success","is_error":false,"result":"the answer","total_cost_usd":0.0123,"num_turns":1,"duration_ms":5,"session_id":"sess-1","usage":{"input_tokens":3,"output_tokens":2}}"#,
    "\n"
);

/// What the webhook's JSON body holds, and nothing else.
const WEBHOOK_KEYS: [&str; 8] = [
    "cost_usd",
    "job",
    "note",
    "output_path",
    "reason",
    "run_id",
    "status",
    "text",
];

/// How long to wait for an event in another process.
const LONG: Duration = Duration::from_secs(60);

/// The flag file whose presence makes [`toggled`]'s agent fail.
fn fail_flag(w: &World) -> PathBuf {
    w.home.join("make-claude-fail")
}

fn set_failing(w: &World, failing: bool) {
    let flag = fail_flag(w);
    if failing {
        std::fs::write(&flag, "").unwrap();
    } else {
        let _ = std::fs::remove_file(&flag);
    }
}

/// A world whose agent answers [`STREAM_OK`] (cost $0.0123) unless
/// [`set_failing`]: then it runs `on_fail` (a shell snippet, after reading
/// the prompt) and exits 3.
fn toggled(name: &str, on_fail: &str) -> World {
    let w = World::new(name);
    let flag = fail_flag(&w);
    FakeClaude::new()
        .runs(&format!(
            "if [ -e '{}' ]; then {on_fail}\nexit 3; fi",
            flag.display()
        ))
        .prints(STREAM_OK)
        .install(&w.claude_dir);
    w
}

/// Adds a job run every minute (no retries) with these frontmatter lines.
fn every_minute(w: &World, path: &str, extra: &str) {
    w.vault
        .add_job(path, &job("\"* * * * *\"", &format!("retries: 0\n{extra}")));
}

fn ping_line(url: &str) -> String {
    format!("ping_url: \"{url}\"\n")
}

/// The job-run note of the run scheduled for `slot`.
fn run_for(w: &World, slot: &str) -> StoredNote {
    let runs = w.runs();
    runs.iter()
        .find(|n| n.metadata.as_ref().unwrap()["run_scheduled_for"] == slot)
        .cloned()
        .unwrap_or_else(|| {
            let slots: Vec<Value> = runs
                .iter()
                .map(|n| n.metadata.as_ref().unwrap()["run_scheduled_for"].clone())
                .collect();
            panic!("no run for {slot}; runs for {slots:?}")
        })
}

fn meta_str(note: &StoredNote, key: &str) -> String {
    note.metadata.as_ref().unwrap()[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string: {:?}", note.metadata))
        .to_string()
}

fn lines_of(requests: &[Request]) -> Vec<String> {
    requests.iter().map(Request::line).collect()
}

/// Requests to `path` (any method).
fn to_path<'a>(requests: &'a [Request], path: &str) -> Vec<&'a Request> {
    requests.iter().filter(|r| r.path == path).collect()
}

#[track_caller]
fn assert_webhook_keys(body: &Value) {
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, WEBHOOK_KEYS, "{body}");
}

// ---------------------------------------------------------------------
// 1. The pings' exact requests.
// ---------------------------------------------------------------------

#[test]
fn pings_start_then_success_or_fail_with_the_reason_and_the_stderr_tail() {
    let w = World::new("ping-exact");
    // 1 MiB of stderr, its last line a marker.
    let big = w.home.join("big-stderr");
    let mut stderr = "e".repeat(1023);
    stderr.push('\n');
    let mut all = stderr.repeat(1024);
    all.push_str("LAST-STDERR-LINE\n");
    assert!(all.len() > 1 << 20);
    std::fs::write(&big, &all).unwrap();
    FakeClaude::new()
        .runs(&format!(
            "if [ -e '{}' ]; then cat '{}' >&2\nexit 3; fi",
            fail_flag(&w).display(),
            big.display()
        ))
        .prints(STREAM_OK)
        .install(&w.claude_dir);
    let ep = FakeEndpoint::start();
    every_minute(&w, "jobs/x", &ping_line(&ep.ping_url("x")));

    w.once_at("2026-01-01T00:00:30Z").run().success();
    assert!(ep.requests().is_empty(), "no run, no ping");

    // A success: GET <url>/start, then POST <url> with the summary.
    w.once_at("2026-01-01T00:01:30Z").run().success();
    let got = ep.wait_for(2);
    assert_eq!(
        lines_of(&got),
        ["GET /ping/x/start", "POST /ping/x"],
        "exactly these, in this order"
    );
    assert!(got[0].body.is_empty(), "{}", got[0].body_text());
    let ok = run_for(&w, "2026-01-01T00:01:00Z");
    let run_id = meta_str(&ok, "run_id");
    let body = got[1].body_text();
    assert!(
        body.starts_with(&format!("ok: jobs/x run {run_id} (schedule, ")),
        "{body}"
    );
    assert!(body.ends_with(", $0.0123)"), "{body}");
    assert_eq!(
        got[1].header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    // A failure with 1 MiB of stderr: GET <url>/start, then POST
    // <url>/fail with the reason and the stderr tail, at most 10 KiB.
    set_failing(&w, true);
    w.once_at("2026-01-01T00:02:30Z").run().status(1);
    let got = ep.wait_for(4);
    assert_eq!(
        lines_of(&got),
        [
            "GET /ping/x/start",
            "POST /ping/x",
            "GET /ping/x/start",
            "POST /ping/x/fail"
        ]
    );
    let failed = run_for(&w, "2026-01-01T00:02:00Z");
    assert!(failed.path.as_deref().unwrap().ends_with(".failed"));
    let reason = meta_str(&failed, "run_error");
    assert_eq!(reason, "claude -p exited with code 3");
    let body = got[3].body_text();
    assert!(
        body.starts_with(&format!("{reason}\n\nstderr (tail):\n")),
        "{body:.300}"
    );
    assert!(body.contains("LAST-STDERR-LINE"), "{body:.300}");
    assert!(
        got[3].body.len() <= 10 << 10,
        "fail body is {} bytes",
        got[3].body.len()
    );
    // The process has exited: nothing more comes.
    assert_eq!(ep.requests().len(), 4, "{:?}", lines_of(&ep.requests()));
}

// ---------------------------------------------------------------------
// 2. Never the vault token.
// ---------------------------------------------------------------------

/// A `notify` program that saves, per call, its stdin, environment and
/// argv under `<out>/call.XXXXXX/` (`done` last).
fn notify_script(w: &World, exit: i32) -> (PathBuf, PathBuf) {
    let out = w.home.join("notify-out");
    std::fs::create_dir_all(&out).unwrap();
    let script = w.home.join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nd=$(mktemp -d '{}/call.XXXXXX')\ncat > \"$d/stdin\"\nenv > \"$d/env\"\n: > \"$d/argv\"\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> \"$d/argv\"; done\necho notify-script-stderr >&2\n: > \"$d/done\"\nexit {exit}\n",
            out.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, out)
}

/// One `notify` call's record.
struct NotifyCall {
    stdin: String,
    env: Vec<(String, String)>,
    env_text: String,
    argv: Vec<String>,
}

impl NotifyCall {
    fn var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The finished calls recorded under `out`, in no particular order.
fn notify_calls(out: &Path) -> Vec<NotifyCall> {
    let mut calls = Vec::new();
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let d = e.path();
        if !d.join("done").exists() {
            continue;
        }
        let env_text = std::fs::read_to_string(d.join("env")).unwrap();
        calls.push(NotifyCall {
            stdin: std::fs::read_to_string(d.join("stdin")).unwrap(),
            env: env_text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env_text,
            argv: std::fs::read_to_string(d.join("argv"))
                .unwrap()
                .lines()
                .map(String::from)
                .collect(),
        });
    }
    calls
}

/// The one finished call with this `NOTIFY_STATUS`.
#[track_caller]
fn call_with_status<'a>(calls: &'a [NotifyCall], status: &str) -> &'a NotifyCall {
    let found: Vec<&NotifyCall> = calls
        .iter()
        .filter(|c| c.var("NOTIFY_STATUS") == Some(status))
        .collect();
    assert_eq!(found.len(), 1, "notify calls with status {status}");
    found[0]
}

#[test]
fn no_ping_webhook_or_notify_call_carries_the_vault_token() {
    // The agent prints the token on stdout and stderr, failing (an API
    // error whose text holds it, so the reason would too) and succeeding
    // (its answer holds it).
    let w = World::new("no-token");
    let flag = fail_flag(&w);
    let leaky_ok = STREAM_OK.replace(
        "\"result\":\"the answer\"",
        &format!("\"result\":\"the answer {TOKEN}\""),
    );
    FakeClaude::new()
        .runs(&format!(
            "echo 'stderr says {TOKEN}' >&2\nif [ -e '{}' ]; then echo 'API Error: 500 upstream said {TOKEN}'\nexit 1; fi",
            flag.display()
        ))
        .prints(leaky_ok)
        .install(&w.claude_dir);
    let ep = FakeEndpoint::start();
    let (script, out) = notify_script(&w, 0);
    w.set_config("notify", json!([script, "--from-runner"]));
    w.set_config("notify_url", json!(format!("{}/hook", ep.url())));
    every_minute(&w, "jobs/leak", &ping_line(&ep.ping_url("leak")));
    let pass = |now: &str| {
        w.once_at(now)
            .env("PARACHUTE_RUNNER_VAULT_TOKEN", TOKEN)
            .run()
    };

    pass("2026-01-01T00:00:30Z").success();
    set_failing(&w, true);
    pass("2026-01-01T00:01:30Z").status(1);
    set_failing(&w, false);
    pass("2026-01-01T00:02:30Z").success();

    // start + fail, a failure notice, start + success, a recovery notice.
    let got = ep.wait_for(6);
    assert_eq!(got.len(), 6, "{:?}", lines_of(&got));
    assert_eq!(to_path(&got, "/ping/leak/start").len(), 2);
    assert_eq!(to_path(&got, "/ping/leak/fail").len(), 1);
    assert_eq!(to_path(&got, "/ping/leak").len(), 1);
    let hooks = to_path(&got, "/hook");
    assert_eq!(hooks.len(), 2, "{:?}", lines_of(&got));
    for r in &got {
        assert_eq!(r.header("authorization"), None, "{}", r.everything());
        assert!(!r.everything().contains(TOKEN), "{}", r.everything());
    }
    // The token did reach what was sent, and was cut out of it.
    let failed = hooks
        .iter()
        .map(|r| r.body_json())
        .find(|b| b["status"] == "failed")
        .unwrap();
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .starts_with("claude -p: API error 500: upstream said"),
        "{failed}"
    );
    assert!(failed.to_string().contains("[redacted]"), "{failed}");

    let calls = notify_calls(&out);
    assert_eq!(calls.len(), 2);
    for status in ["failed", "recovered"] {
        let c = call_with_status(&calls, status);
        assert!(!c.stdin.contains(TOKEN), "{status} stdin:\n{}", c.stdin);
        assert!(!c.env_text.contains(TOKEN), "{status} env:\n{}", c.env_text);
        assert!(
            !c.argv.iter().any(|a| a.contains(TOKEN)),
            "{status} argv: {:?}",
            c.argv
        );
        assert!(c.var("PARACHUTE_RUNNER_VAULT_TOKEN").is_none());
    }
    assert!(
        call_with_status(&calls, "failed")
            .stdin
            .contains("[redacted]"),
        "{}",
        call_with_status(&calls, "failed").stdin
    );
}

// ---------------------------------------------------------------------
// 3. A ping endpoint that hangs holds nothing up.
// ---------------------------------------------------------------------

#[test]
fn a_hanging_ping_endpoint_does_not_hold_up_a_run_in_serve() {
    let w = World::new("hang-serve");
    let ep = FakeEndpoint::start();
    for path in ["/ping/h/start", "/ping/h", "/ping/h/fail"] {
        ep.answer(path, Answer::Hang);
    }
    w.vault
        .add_job("jobs/h", &job("manual", &ping_line(&ep.ping_url("h"))));
    let s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    let (status, body) = s.send(
        "POST",
        "/runner/jobs/jobs%2Fh/run-now?async=1",
        Some(&admin),
        None,
    );
    assert_eq!(status, 202, "{body}\n{}", s.log());
    // The start ping arrived and is held without an answer...
    ep.wait_for_path("GET", "/ping/h/start", 1);
    // ...and the run ends all the same: its note reaches the vault, ok.
    let runs = w.vault.wait_for_notes_tagged("job-run", 1, LONG);
    assert_eq!(runs.len(), 1, "{}", s.log());
    let note = &runs[0];
    assert!(
        !note.path.as_deref().unwrap().ends_with(".failed"),
        "{:?}",
        note.path
    );
    assert_eq!(note.tags, ["job-run"]);
    assert_eq!(note.content, "the answer");
    let token = s.hub.token("runner:read");
    let (status, jobs) = s.get("/runner/jobs", Some(&token));
    assert_eq!(status, 200, "{jobs}");
    assert_eq!(jobs["jobs"][0]["jobPath"], "jobs/h");
    assert_eq!(jobs["jobs"][0]["lastRunStatus"], "ok", "{jobs}");
    assert_eq!(
        jobs["jobs"][0]["lastRunId"],
        note.metadata.as_ref().unwrap()["run_id"]
    );
    // While the endpoint still has not answered anything.
    assert_eq!(ep.answered(), 0, "{:?}", lines_of(&ep.requests()));
}

#[test]
fn a_hanging_ping_endpoint_changes_neither_the_exit_code_nor_the_note_of_once() {
    let w = World::new("hang-once");
    let ep = FakeEndpoint::start();
    for path in ["/ping/h/start", "/ping/h", "/ping/h/fail"] {
        ep.answer(path, Answer::Hang);
    }
    every_minute(&w, "jobs/h", &ping_line(&ep.ping_url("h")));
    w.once_at("2026-01-01T00:00:30Z").run().success();
    // `once` may wait for the pings a while before it exits (bounded);
    // how long is not asserted.
    let ran = w
        .once_at("2026-01-01T00:01:30Z")
        .run()
        .success()
        .stdout_has("ok: jobs/h -> ");
    ep.wait_for_path("GET", "/ping/h/start", 1);
    assert_eq!(ep.answered(), 0);
    let runs = w.runs();
    assert_eq!(runs.len(), 1, "{}", ran.stderr());
    assert!(!runs[0].path.as_deref().unwrap().ends_with(".failed"));
    assert_eq!(runs[0].content, "the answer");
    assert_eq!(w.state()["jobs"]["jobs/h"]["last_run"]["status"], "ok");
}

// ---------------------------------------------------------------------
// 4. A ping answered 500 is tried three times in all.
// ---------------------------------------------------------------------

#[test]
fn a_ping_answered_500_is_tried_three_times_and_the_run_is_unchanged() {
    let w = World::new("ping-500");
    let ep = FakeEndpoint::start();
    ep.answer("/ping/r/start", Answer::Status(500));
    ep.answer("/ping/r", Answer::Status(503));
    every_minute(&w, "jobs/r", &ping_line(&ep.ping_url("r")));
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let ran = w
        .once_at("2026-01-01T00:01:30Z")
        .run()
        .success()
        .stdout_has("ok: jobs/r -> ");
    let got = ep.wait_for(6);
    assert_eq!(
        lines_of(&got),
        [
            "GET /ping/r/start",
            "GET /ping/r/start",
            "GET /ping/r/start",
            "POST /ping/r",
            "POST /ping/r",
            "POST /ping/r"
        ]
    );
    // Every try carried the same body.
    assert!(got[3..].iter().all(|r| r.body == got[3].body));
    // Logged, naming only the endpoint's scheme and host.
    let err = ran.stderr();
    assert!(err.contains("giving up (the run is not affected)"), "{err}");
    assert!(err.contains(&ep.url()), "{err}");
    assert!(
        !err.contains("/ping/r"),
        "the ping URL's path is its secret:\n{err}"
    );
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    assert!(!runs[0].path.as_deref().unwrap().ends_with(".failed"));
    assert_eq!(w.state()["jobs"]["jobs/r"]["last_run"]["status"], "ok");
    assert_eq!(ep.requests().len(), 6);
}

#[test]
fn a_ping_answered_404_is_not_tried_again() {
    let w = World::new("ping-404");
    let ep = FakeEndpoint::start();
    ep.answer("/ping/n/start", Answer::Status(404));
    ep.answer("/ping/n", Answer::Status(404));
    every_minute(&w, "jobs/n", &ping_line(&ep.ping_url("n")));
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let ran = w.once_at("2026-01-01T00:01:30Z").run().success();
    let got = ep.wait_for(2);
    assert_eq!(lines_of(&got), ["GET /ping/n/start", "POST /ping/n"]);
    assert!(ran.stderr().contains("answered 404"), "{}", ran.stderr());
    assert_eq!(ep.requests().len(), 2);
}

#[test]
fn a_run_retried_after_a_transient_failure_pings_once() {
    let w = World::with_claude(
        "ping-retried",
        FakeClaude::replays_in_turn(&["text-api-529", "text-success"]),
    );
    let ep = FakeEndpoint::start();
    w.vault.add_job(
        "jobs/p",
        &job(
            "\"* * * * *\"",
            &format!(
                "retries: 1\nretry_delay: 0.05\n{}",
                ping_line(&ep.ping_url("p"))
            ),
        ),
    );
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.once_at("2026-01-01T00:01:30Z").run().success();
    let got = ep.wait_for(2);
    assert_eq!(lines_of(&got), ["GET /ping/p/start", "POST /ping/p"]);
    let run = run_for(&w, "2026-01-01T00:01:00Z");
    assert_eq!(run.metadata.as_ref().unwrap()["run_attempts"], 2);
    assert_eq!(w.invocations().len(), 2);
    assert_eq!(ep.requests().len(), 2);
}

// ---------------------------------------------------------------------
// 5. The webhook and its throttle.
// ---------------------------------------------------------------------

#[test]
fn three_failures_give_one_webhook_then_one_recovery_then_nothing() {
    let w = toggled("throttle", "echo boom >&2");
    let ep = FakeEndpoint::start();
    w.set_config("notify_url", json!(format!("{}/hook", ep.url())));
    every_minute(&w, "jobs/t", "");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    set_failing(&w, true);
    w.once_at("2026-01-01T00:01:30Z").run().status(1);
    let got = ep.wait_for(1);
    w.once_at("2026-01-01T00:02:30Z").run().status(1);
    w.once_at("2026-01-01T00:03:30Z").run().status(1);
    assert_eq!(w.runs().len(), 3);
    assert_eq!(ep.requests(), got, "one failure notice per hour");
    assert_eq!(lines_of(&got), ["POST /hook"]);
    assert_eq!(got[0].header("content-type"), Some("application/json"));

    let first = run_for(&w, "2026-01-01T00:01:00Z");
    let reason = meta_str(&first, "run_error");
    assert_eq!(reason, "claude -p exited with code 3");
    let run_id = meta_str(&first, "run_id");
    let body = got[0].body_json();
    assert_webhook_keys(&body);
    assert_eq!(
        body["text"],
        format!("parachute-runner: jobs/t failed: {reason}")
    );
    assert_eq!(body["job"], "jobs/t");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], reason.as_str());
    assert_eq!(body["output_path"], first.path.clone().unwrap());
    assert_eq!(body["output_path"], format!("jobs/runs/t/{run_id}.failed"));
    assert_eq!(body["run_id"], run_id.as_str());
    assert_eq!(body["cost_usd"], Value::Null);
    let note = body["note"].as_str().unwrap();
    assert!(note.starts_with("# job-run failed"), "{note}");
    assert!(note.contains(&reason), "{note}");
    assert!(note.contains("boom"), "the stderr tail: {note}");

    // The throttle lives in state.json, between passes.
    let health = &w.state()["health"]["jobs/t"];
    assert_eq!(health["failing"]["failures"], 3, "{health}");
    assert_eq!(
        health["failing"]["since"], "2026-01-01T00:01:30Z",
        "{health}"
    );
    assert_eq!(
        health["failing"]["noticed_at"], "2026-01-01T00:01:30Z",
        "{health}"
    );
    assert!(health["first_seen"].is_string(), "{health}");

    // The first success after them: one recovery notice.
    set_failing(&w, false);
    w.once_at("2026-01-01T00:04:30Z").run().success();
    let got = ep.wait_for(2);
    assert_eq!(got.len(), 2, "{:?}", lines_of(&got));
    let ok = run_for(&w, "2026-01-01T00:04:00Z");
    let ok_id = meta_str(&ok, "run_id");
    let body = got[1].body_json();
    assert_webhook_keys(&body);
    let why = "after 3 failed runs since 2026-01-01T00:01:30Z";
    assert_eq!(body["status"], "recovered");
    assert_eq!(body["reason"], why);
    assert_eq!(
        body["text"],
        format!("parachute-runner: jobs/t recovered ({why})")
    );
    assert_eq!(body["job"], "jobs/t");
    assert_eq!(body["run_id"], ok_id.as_str());
    assert_eq!(body["output_path"], format!("jobs/runs/t/{ok_id}"));
    assert_eq!(body["output_path"], ok.path.clone().unwrap());
    assert_eq!(body["cost_usd"], json!(0.0123));
    assert!(
        body["note"].as_str().unwrap().contains("the answer"),
        "{body}"
    );
    let health = &w.state()["health"]["jobs/t"];
    assert!(health.get("failing").is_none(), "{health}");
    assert_eq!(health["last_success"], "2026-01-01T00:04:00Z", "{health}");

    // A success after a success is no news.
    w.once_at("2026-01-01T00:05:30Z").run().success();
    assert_eq!(ep.requests().len(), 2, "{:?}", lines_of(&ep.requests()));
    assert_eq!(
        w.state()["health"]["jobs/t"]["last_success"],
        "2026-01-01T00:05:00Z"
    );
}

#[test]
fn the_throttle_is_per_job() {
    let w = toggled("throttle-per-job", "echo boom >&2");
    let ep = FakeEndpoint::start();
    w.set_config("notify_url", json!(format!("{}/hook", ep.url())));
    every_minute(&w, "jobs/one", "");
    every_minute(&w, "jobs/two", "");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    set_failing(&w, true);
    w.once_at("2026-01-01T00:01:30Z").run().status(1);
    let got = ep.wait_for(2);
    let mut jobs: Vec<String> = got
        .iter()
        .map(|r| r.body_json()["job"].as_str().unwrap().to_string())
        .collect();
    jobs.sort();
    assert_eq!(jobs, ["jobs/one", "jobs/two"]);
    w.once_at("2026-01-01T00:02:30Z").run().status(1);
    assert_eq!(ep.requests().len(), 2, "{:?}", lines_of(&ep.requests()));
}

#[test]
fn with_a_one_minute_interval_a_failure_two_minutes_later_is_sent_again() {
    for (i, interval) in [json!("1m"), json!(60)].into_iter().enumerate() {
        let w = toggled(&format!("interval-{i}"), "echo boom >&2");
        let ep = FakeEndpoint::start();
        w.set_config("notify_url", json!(format!("{}/hook", ep.url())));
        w.set_config("notify_interval", interval.clone());
        every_minute(&w, "jobs/i", "");
        w.once_at("2026-01-01T00:00:30Z").run().success();
        set_failing(&w, true);
        w.once_at("2026-01-01T00:01:30Z").run().status(1);
        ep.wait_for(1);
        // 40 s after the notice: held back.
        w.once_at("2026-01-01T00:02:10Z").run().status(1);
        assert_eq!(ep.requests().len(), 1, "{interval}");
        // Two minutes after it: sent again.
        w.once_at("2026-01-01T00:03:30Z").run().status(1);
        let got = ep.wait_for(2);
        assert_eq!(got.len(), 2, "{interval}: {:?}", lines_of(&got));
        let again = got[1].body_json();
        assert_eq!(again["status"], "failed", "{interval}");
        assert_eq!(
            again["run_id"],
            meta_str(&run_for(&w, "2026-01-01T00:03:00Z"), "run_id").as_str()
        );
        let health = &w.state()["health"]["jobs/i"]["failing"];
        assert_eq!(health["failures"], 3, "{interval}: {health}");
        assert_eq!(health["noticed_at"], "2026-01-01T00:03:30Z", "{health}");
    }
}

// ---------------------------------------------------------------------
// 6. `notify`: a program, no shell.
// ---------------------------------------------------------------------

#[test]
fn notify_runs_the_argv_without_a_shell_with_the_note_on_stdin_and_the_variables() {
    let w = toggled("notify", "echo boom >&2");
    let (script, out) = notify_script(&w, 0);
    let args = ["arg one", "$HOME", "it's; `echo x` | y > z", "*"];
    let mut argv = vec![script.display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    w.set_config("notify", json!(argv));
    every_minute(&w, "jobs/n", "");
    let key = "sk-ant-api03-not-for-notify";
    let pass = |now: &str| w.once_at(now).env("ANTHROPIC_API_KEY", key).run();
    pass("2026-01-01T00:00:30Z").success();
    set_failing(&w, true);
    pass("2026-01-01T00:01:30Z").status(1);

    let failed = run_for(&w, "2026-01-01T00:01:00Z");
    let reason = meta_str(&failed, "run_error");
    let run_id = meta_str(&failed, "run_id");
    let calls = notify_calls(&out);
    assert_eq!(calls.len(), 1);
    let c = call_with_status(&calls, "failed");
    assert!(c.stdin.starts_with("# job-run failed"), "{}", c.stdin);
    assert!(c.stdin.contains(&reason), "{}", c.stdin);
    assert_eq!(c.var("NOTIFY_JOB"), Some("jobs/n"));
    assert_eq!(c.var("NOTIFY_REASON"), Some(reason.as_str()));
    assert_eq!(
        c.var("NOTIFY_OUTPUT_PATH"),
        Some(format!("jobs/runs/n/{run_id}.failed").as_str())
    );
    assert_eq!(c.var("NOTIFY_RUN_ID"), Some(run_id.as_str()));
    assert_eq!(c.var("NOTIFY_COST_USD"), Some(""));
    assert_eq!(c.argv, args, "verbatim: no shell expanded or split them");
    // The agent got the API key; the notify program did not.
    let agent = fake_claude::invocations(&w.claude_dir);
    assert!(
        agent
            .iter()
            .all(|i| i.env_var("ANTHROPIC_API_KEY") == Some(key))
    );
    assert!(c.var("ANTHROPIC_API_KEY").is_none(), "{}", c.env_text);
    assert!(!c.env_text.contains(key), "{}", c.env_text);

    // The recovery.
    set_failing(&w, false);
    pass("2026-01-01T00:02:30Z").success();
    let ok = run_for(&w, "2026-01-01T00:02:00Z");
    let ok_id = meta_str(&ok, "run_id");
    let calls = notify_calls(&out);
    assert_eq!(calls.len(), 2);
    let c = call_with_status(&calls, "recovered");
    assert_eq!(c.var("NOTIFY_JOB"), Some("jobs/n"));
    assert_eq!(
        c.var("NOTIFY_REASON"),
        Some("after 1 failed run since 2026-01-01T00:01:30Z")
    );
    assert_eq!(
        c.var("NOTIFY_OUTPUT_PATH"),
        Some(format!("jobs/runs/n/{ok_id}").as_str())
    );
    assert_eq!(c.var("NOTIFY_RUN_ID"), Some(ok_id.as_str()));
    assert_eq!(c.var("NOTIFY_COST_USD"), Some("0.0123"));
    assert!(c.stdin.contains("the answer"), "{}", c.stdin);
    assert_eq!(c.argv, args);
    assert!(!c.env_text.contains(key));
}

#[test]
fn a_notify_program_that_is_missing_or_fails_is_logged_and_changes_nothing() {
    for case in ["missing", "exits-1"] {
        let w = toggled(&format!("notify-{case}"), "echo boom >&2");
        let program = match case {
            "missing" => w.home.join("no-such-notify-program"),
            _ => notify_script(&w, 1).0,
        };
        w.set_config("notify", json!([program]));
        every_minute(&w, "jobs/n", "");
        w.once_at("2026-01-01T00:00:30Z").run().success();
        set_failing(&w, true);
        let failed: Ran = w
            .once_at("2026-01-01T00:01:30Z")
            .run()
            .status(1)
            .stdout_has("failed: jobs/n: claude -p exited with code 3");
        let err = failed.stderr();
        assert!(err.contains("notify for jobs/n (failed)"), "{case}:\n{err}");
        set_failing(&w, false);
        let ok = w
            .once_at("2026-01-01T00:02:30Z")
            .run()
            .success()
            .stdout_has("ok: jobs/n -> ");
        let err = ok.stderr();
        assert!(
            err.contains("notify for jobs/n (recovered)"),
            "{case}:\n{err}"
        );
        if case == "exits-1" {
            assert!(err.contains("exited with 1"), "{err}");
            assert!(err.contains("notify-script-stderr"), "{err}");
        }
        let runs = w.runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(w.state()["jobs"]["jobs/n"]["last_run"]["status"], "ok");
    }
}

// ---------------------------------------------------------------------
// 7. Config errors.
// ---------------------------------------------------------------------

#[test]
fn bad_notify_settings_are_one_line_config_errors_naming_the_key() {
    for (key, value) in [
        ("notify", json!("mail")),
        ("notify", json!([])),
        ("notify", json!([""])),
        ("notify", json!(["/bin/echo", 3])),
        ("notify_url", json!("ftp://x")),
        ("notify_url", json!("not a url")),
        ("notify_interval", json!(0)),
        ("notify_interval", json!("0s")),
        ("notify_interval", json!(-5)),
        ("notify_interval", json!("soon")),
    ] {
        let w = World::new("notify-config");
        w.vault.add_job("jobs/a", &job("manual", ""));
        w.set_config(key, value.clone());
        let ran = w.once_at("2026-01-01T00:00:30Z").run().status(2);
        let err = ran.stderr();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{key}={value}: one line:\n{err}");
        assert!(
            lines[0].starts_with("parachute-runner: error: invalid config in "),
            "{key}={value}: {err}"
        );
        assert!(
            lines[0].contains(&format!("/runner/config.json: {key}: ")),
            "{key}={value}: {err}"
        );
        assert!(w.invocations().is_empty());
    }
}

#[test]
fn a_bad_notify_environment_override_is_a_config_error_naming_the_variable() {
    for (var, value) in [
        ("PARACHUTE_RUNNER_NOTIFY", "mail"),
        ("PARACHUTE_RUNNER_NOTIFY", "[]"),
        ("PARACHUTE_RUNNER_NOTIFY_URL", "ftp://x"),
        ("PARACHUTE_RUNNER_NOTIFY_INTERVAL", "0"),
    ] {
        let w = World::new("notify-env");
        w.vault.add_job("jobs/a", &job("manual", ""));
        let ran = w
            .once_at("2026-01-01T00:00:30Z")
            .env(var, value)
            .run()
            .status(2);
        let err = ran.stderr();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{var}={value}: one line:\n{err}");
        assert!(lines[0].contains(var), "{var}={value}: {err}");
        assert!(w.invocations().is_empty());
    }
    // A good one is used: a list as JSON text, no shell.
    let w = toggled("notify-env-ok", "echo boom >&2");
    let (script, out) = notify_script(&w, 0);
    every_minute(&w, "jobs/e", "");
    let argv = json!([script, "a b", "$HOME"]).to_string();
    let pass = |now: &str| w.once_at(now).env("PARACHUTE_RUNNER_NOTIFY", &argv).run();
    pass("2026-01-01T00:00:30Z").success();
    set_failing(&w, true);
    pass("2026-01-01T00:01:30Z").status(1);
    let calls = notify_calls(&out);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].argv, ["a b", "$HOME"]);
    assert_eq!(calls[0].var("NOTIFY_STATUS"), Some("failed"));
}

#[test]
fn notify_cannot_be_set_over_http() {
    let w = World::new("notify-put");
    w.vault.add_job("jobs/a", &job("manual", ""));
    let s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    let before = std::fs::read(w.home.join("runner/config.json")).unwrap();
    for patch in [
        json!({"notify": ["/bin/sh", "-c", "curl evil"]}),
        json!({"notify": ["/bin/true"], "poll_interval_seconds": 7}),
    ] {
        let (status, body) = s.send(
            "PUT",
            "/.parachute/config",
            Some(&admin),
            Some(patch.to_string().into_bytes()),
        );
        assert_eq!(status, 400, "{patch}: {body}");
        assert_eq!(body["error"], "validation_failed", "{body}");
        let errors = body["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{body}");
        assert_eq!(errors[0]["path"], "notify", "{body}");
    }
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(json!({"notify_url": "ftp://x"}).to_string().into_bytes()),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["path"], "notify_url", "{body}");
    assert_eq!(
        std::fs::read(w.home.join("runner/config.json")).unwrap(),
        before,
        "nothing written"
    );
}

#[test]
fn a_notify_url_put_over_http_takes_effect_for_the_next_failure_in_serve() {
    let w = World::with_claude("notify-serve", FakeClaude::new().stderr("boom").exits(3));
    w.vault.add_job("jobs/f", &job("manual", "retries: 0\n"));
    let ep = FakeEndpoint::start();
    let s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    let patch = json!({"notify_url": format!("{}/hook", ep.url()), "notify_interval": "30m"});
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(patch.to_string().into_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    let file: Value =
        serde_json::from_slice(&std::fs::read(w.home.join("runner/config.json")).unwrap()).unwrap();
    assert_eq!(file["notify_url"], format!("{}/hook", ep.url()), "{file}");
    let (status, body) = s.send("POST", "/runner/jobs/jobs%2Ff/run-now", Some(&admin), None);
    assert_eq!(status, 200, "{body}\n{}", s.log());
    assert_eq!(body["status"], "failed", "{body}");
    let got = ep.wait_for(1);
    let notice = got[0].body_json();
    assert_webhook_keys(&notice);
    assert_eq!(notice["status"], "failed");
    assert_eq!(notice["job"], "jobs/f");
    assert_eq!(notice["run_id"], body["runId"], "{notice}\n{body}");
    // A second failure within 30 minutes is held back.
    let (status, body) = s.send("POST", "/runner/jobs/jobs%2Ff/run-now", Some(&admin), None);
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("failed")),
        "{body}"
    );
    assert_eq!(w.runs().len(), 2);
    let health = &w.state()["health"]["jobs/f"]["failing"];
    assert_eq!(health["failures"], 2, "{health}");
    assert_eq!(ep.requests().len(), 1, "{:?}", lines_of(&ep.requests()));
}

#[test]
fn a_huge_answer_gives_a_bounded_recovery_notice() {
    let w = World::new("huge-answer");
    FakeClaude::new()
        .runs(&format!(
            "if [ -e '{}' ]; then echo boom >&2\nexit 3; fi",
            fail_flag(&w).display()
        ))
        .floods(3 << 20)
        .install(&w.claude_dir);
    let ep = FakeEndpoint::start();
    let (script, out) = notify_script(&w, 0);
    w.set_config("notify", json!([script]));
    w.set_config("notify_url", json!(format!("{}/hook", ep.url())));
    every_minute(&w, "jobs/big", "");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    set_failing(&w, true);
    w.once_at("2026-01-01T00:01:30Z").run().status(1);
    set_failing(&w, false);
    w.once_at("2026-01-01T00:02:30Z").run().success();
    let got = ep.wait_for(2);
    let recovered = got
        .iter()
        .map(Request::body_json)
        .find(|b| b["status"] == "recovered")
        .unwrap_or_else(|| panic!("{:?}", lines_of(&got)));
    let note = recovered["note"].as_str().unwrap();
    assert!(
        note.len() <= 64 << 10,
        "webhook note is {} bytes",
        note.len()
    );
    assert!(note.starts_with("y\ny\n"), "{:.100}", note);
    // The body is that note, JSON-escaped, and a few short fields.
    assert!(got.iter().all(|r| r.body.len() <= 256 << 10));
    let calls = notify_calls(&out);
    let c = call_with_status(&calls, "recovered");
    assert!(
        c.stdin.len() <= 1 << 20,
        "notify stdin is {} bytes",
        c.stdin.len()
    );
    assert!(c.stdin.starts_with("y\ny\n"), "{:.100}", c.stdin);
}

// ---------------------------------------------------------------------
// 8. Stale jobs.
// ---------------------------------------------------------------------

fn jobs_json(w: &World, now: &str) -> Vec<Value> {
    let ran = w
        .runner()
        .env("PARACHUTE_RUNNER_NOW", now)
        .args(["jobs", "--json"])
        .run()
        .success();
    let v = ran.json();
    let rows = v
        .as_array()
        .or_else(|| v["jobs"].as_array())
        .unwrap_or_else(|| panic!("{v}"));
    rows.clone()
}

#[track_caller]
fn stale_of(rows: &[Value], path: &str) -> Value {
    rows.iter()
        .find(|r| r["path"] == path)
        .unwrap_or_else(|| panic!("no row for {path}: {rows:?}"))["stale"]
        .clone()
}

#[test]
fn a_job_without_a_success_in_two_periods_is_stale_in_jobs_doctor_and_metrics() {
    let w = World::new("stale");
    FakeClaude::new()
        .runs("if grep -q FAIL \"$d/stdin\"; then echo boom >&2; exit 3; fi")
        .prints(STREAM_OK)
        .install(&w.claude_dir);
    let hourly = |prompt: &str| {
        format!(
            "---\nschedule: \"0 * * * *\"\nmodel: test-model\nallowed_tools: [Read]\nretries: 0\n---\n{prompt}\n"
        )
    };
    w.vault.add_job("jobs/bad", &hourly("FAIL every time."));
    w.vault.add_job("jobs/good", &hourly("Succeed every time."));

    // First seen at 10:00:30; the 11:00 and 12:00 slots fail for one job.
    w.once_at("2026-01-01T10:00:30Z").run().success();
    w.once_at("2026-01-01T11:00:30Z").run().status(1);
    let rows = jobs_json(&w, "2026-01-01T11:30:30Z");
    assert_eq!(stale_of(&rows, "jobs/bad"), false, "one slot only");
    assert_eq!(stale_of(&rows, "jobs/good"), false);
    w.once_at("2026-01-01T12:00:30Z").run().status(1);
    let state = w.state();
    assert_eq!(
        state["health"]["jobs/bad"]["first_seen"],
        "2026-01-01T10:00:30Z"
    );
    assert!(state["health"]["jobs/bad"].get("last_success").is_none());
    assert_eq!(
        state["health"]["jobs/good"]["last_success"],
        "2026-01-01T12:00:00Z"
    );

    let rows = jobs_json(&w, "2026-01-01T12:00:30Z");
    assert_eq!(stale_of(&rows, "jobs/bad"), true, "{rows:?}");
    assert_eq!(stale_of(&rows, "jobs/good"), false, "{rows:?}");

    let doctor = w
        .runner()
        .env("PARACHUTE_RUNNER_NOW", "2026-01-01T12:00:30Z")
        .args(["doctor"])
        .run();
    let out = doctor.stdout();
    let stale: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("FAIL stale jobs"))
        .collect();
    assert_eq!(stale.len(), 1, "{out}\n{}", doctor.stderr());
    assert!(stale[0].contains("jobs/bad"), "{out}");
    assert!(!stale[0].contains("jobs/good"), "{out}");
    assert_eq!(doctor.code(), Some(1), "a FAIL line fails doctor\n{out}");
    let table = w
        .runner()
        .env("PARACHUTE_RUNNER_NOW", "2026-01-01T12:00:30Z")
        .args(["jobs"])
        .run()
        .success()
        .stdout();
    let row = |path: &str| {
        table
            .lines()
            .find(|l| l.starts_with(path))
            .unwrap_or_else(|| panic!("no {path} row:\n{table}"))
            .to_string()
    };
    assert!(row("jobs/bad").contains("failed, stale"), "{table}");
    assert!(!row("jobs/good").contains("stale"), "{table}");

    // serve, on a clock that starts at 12:00:30 (the same state).
    let anchor = jiff::Timestamp::now();
    let clock = format!("2026-01-01T12:00:30Z,{anchor},1");
    let s = start(
        &w,
        FakeHub::start(),
        &[],
        &[("PARACHUTE_RUNNER_CLOCK", clock.as_str())],
    );
    let (_, metrics) = s.text("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "parachute_runner_jobs_stale 1"),
        "{metrics}\n{}",
        s.log()
    );
    assert!(
        metrics.contains("# TYPE parachute_runner_jobs_stale gauge"),
        "{metrics}"
    );
}

#[test]
fn serve_counts_no_stale_job_when_every_job_succeeds() {
    let w = World::new("stale-none");
    w.vault.add_job("jobs/a", &job("\"0 * * * *\"", ""));
    let s = start(&w, FakeHub::start(), &[], &[]);
    let (_, metrics) = s.text("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "parachute_runner_jobs_stale 0"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------
// 9. An interrupted run is a failure notice too.
// ---------------------------------------------------------------------

#[test]
fn a_run_settled_as_interrupted_sends_a_failure_notice() {
    let w = World::with_claude(
        "interrupted",
        FakeClaude::new().prints("never").sleeps(60.0),
    );
    let ep = FakeEndpoint::start();
    w.set_config("notify_url", json!(format!("{}/hook", ep.url())));
    every_minute(&w, "jobs/slow", "");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let mut child = w.once_at("2026-01-01T00:01:30Z").spawn();
    assert!(eventually(LONG, || w.invocations().len() == 1));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ep.requests().is_empty(), "the killed runner told nothing");

    let ran = w.once_at("2026-01-01T00:01:40Z").run().success();
    assert!(ran.stderr().contains("was interrupted"), "{}", ran.stderr());
    let got = ep.wait_for(1);
    assert_eq!(lines_of(&got), ["POST /hook"]);
    let note = w.runs().remove(0);
    let run_id = meta_str(&note, "run_id");
    let reason = "interrupted: runner stopped before the run finished";
    assert_eq!(meta_str(&note, "run_error"), reason);
    let body = got[0].body_json();
    assert_webhook_keys(&body);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["job"], "jobs/slow");
    assert_eq!(body["reason"], reason);
    assert_eq!(
        body["text"],
        format!("parachute-runner: jobs/slow failed: {reason}")
    );
    assert_eq!(body["run_id"], run_id.as_str());
    assert_eq!(body["output_path"], note.path.clone().unwrap());
    assert_eq!(body["cost_usd"], Value::Null);
    let text = body["note"].as_str().unwrap();
    assert!(text.starts_with("# job-run failed"), "{text}");
    assert!(text.contains(reason), "{text}");
    // Settled once, told once.
    w.once_at("2026-01-01T00:01:50Z").run().success();
    assert_eq!(ep.requests().len(), 1);
    let health = &w.state()["health"]["jobs/slow"]["failing"];
    assert_eq!(health["failures"], 1, "{health}");
}

#[test]
fn a_run_stopped_by_sigterm_to_serve_sends_its_failure_notice_before_serve_exits() {
    let w = World::with_claude(
        "notify-sigterm",
        FakeClaude::new().prints("never").sleeps(60.0),
    );
    let ep = FakeEndpoint::start();
    w.set_config("notify_url", json!(format!("{}/hook", ep.url())));
    w.vault.add_job(
        "jobs/slow",
        &job("manual", &ping_line(&ep.ping_url("slow"))),
    );
    let mut s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    let (status, _) = s.send(
        "POST",
        "/runner/jobs/jobs%2Fslow/run-now?async=1",
        Some(&admin),
        None,
    );
    assert_eq!(status, 202);
    assert!(eventually(LONG, || w.invocations().len() == 1));
    ep.wait_for_path("GET", "/ping/slow/start", 1);
    let status = s.sigterm();
    assert!(status.success(), "{status:?}\n{}", s.log());
    let got = ep.wait_for(3);
    assert_eq!(got.len(), 3, "{:?}", lines_of(&got));
    let reason = "interrupted: runner shutting down";
    let fail = to_path(&got, "/ping/slow/fail");
    assert_eq!(fail.len(), 1, "{:?}", lines_of(&got));
    assert!(
        fail[0].body_text().starts_with(reason),
        "{}",
        fail[0].body_text()
    );
    let hook = to_path(&got, "/hook");
    assert_eq!(hook.len(), 1, "{:?}", lines_of(&got));
    let body = hook[0].body_json();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], reason);
}

// ---------------------------------------------------------------------
// A recovery whose record was lost is still a recovery.
// ---------------------------------------------------------------------

/// SPEC §11: "a recovery is always sent". A successful run after failures
/// whose outcome could not be written to state.json (here: the state
/// lock cannot be opened when the run ends) is settled by the next pass
/// from its queued note. `recover` then decides the recovery (the job's
/// `failing` streak is cleared) but drops the notice, because it only
/// sends notices for runs settled as interrupted; and the run itself sent
/// none, because `write_outcomes` gives a run whose record failed a
/// notice only when it failed. The recovery is never told. The same loss
/// happens when the runner dies between spooling a note and recording it.
#[test]
fn a_recovery_whose_record_failed_is_sent_when_the_next_pass_settles_it() {
    let w = World::new("lost-recovery");
    let locks = w.home.join("runner/locks");
    let sabotage = w.home.join("sabotage-state-lock");
    FakeClaude::new()
        .runs(&format!(
            "if [ -e '{fail}' ]; then echo boom >&2\nexit 3; fi\nif [ -e '{sabotage}' ]; then rm -f '{locks}/state.lock'; mkdir '{locks}/state.lock'; fi",
            fail = fail_flag(&w).display(),
            sabotage = sabotage.display(),
            locks = locks.display(),
        ))
        .prints(STREAM_OK)
        .install(&w.claude_dir);
    let ep = FakeEndpoint::start();
    w.set_config("notify_url", json!(format!("{}/hook", ep.url())));
    every_minute(&w, "jobs/l", "");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    set_failing(&w, true);
    w.once_at("2026-01-01T00:01:30Z").run().status(1);
    let got = ep.wait_for(1);
    assert_eq!(got[0].body_json()["status"], "failed");

    // The success after the failure; its outcome cannot be recorded.
    set_failing(&w, false);
    std::fs::write(&sabotage, "").unwrap();
    let ran = w.once_at("2026-01-01T00:02:30Z").run();
    assert!(
        ran.stderr().contains("could not record run"),
        "{}",
        ran.stderr()
    );
    std::fs::remove_file(&sabotage).unwrap();
    std::fs::remove_dir(locks.join("state.lock")).unwrap();
    assert_eq!(ep.requests().len(), 1, "nothing told yet");

    // The next pass settles it as ok from the outbox: the job recovered.
    w.once_at("2026-01-01T00:03:30Z").run().success();
    let ok = run_for(&w, "2026-01-01T00:02:00Z");
    assert!(!ok.path.as_deref().unwrap().ends_with(".failed"));
    assert!(
        w.state()["health"]["jobs/l"].get("failing").is_none(),
        "the streak is over: {}",
        w.state()["health"]
    );
    let got = ep.wait_until("a recovery notice", |r| {
        r.iter().any(|q| q.body_json()["status"] == "recovered")
    });
    let recovered: Vec<Value> = got
        .iter()
        .map(Request::body_json)
        .filter(|b| b["status"] == "recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0]["job"], "jobs/l");
}

/// The same loss for a failure: a runner that dies after its failed run's
/// note is in the outbox but before the outcome is in state.json (here
/// held there by the test holding the state lock, then SIGKILLed). The
/// next pass settles the run as failed from the queued note and records
/// the failure in the job's health, but no notice goes out, ever: the
/// run died before telling, and `recover` tells only runs settled as
/// interrupted.
#[test]
fn a_failure_settled_from_the_outbox_after_the_runner_died_is_told() {
    let w = World::new("lost-failure");
    let release = w.home.join("release-agent");
    FakeClaude::new()
        .waits_for(&release)
        .stderr("boom")
        .exits(3)
        .install(&w.claude_dir);
    let ep = FakeEndpoint::start();
    w.set_config("notify_url", json!(format!("{}/hook", ep.url())));
    every_minute(&w, "jobs/d", "");
    w.once_at("2026-01-01T00:00:30Z").run().success();

    let mut child = w.once_at("2026-01-01T00:01:30Z").spawn();
    assert!(eventually(LONG, || w.invocations().len() == 1));
    // The run is claimed and its agent runs: hold the state lock, so the
    // runner, its note spooled, waits to record the outcome.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(w.home.join("runner/locks/state.lock"))
        .unwrap();
    lock.lock().unwrap();
    std::fs::write(&release, "").unwrap();
    let queued = |w: &World| {
        w.outbox().iter().any(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            !name.starts_with('.') && name.ends_with(".json")
        })
    };
    assert!(eventually(LONG, || queued(&w)), "{:?}", w.outbox());
    child.kill().unwrap();
    child.wait().unwrap();
    lock.unlock().unwrap();
    drop(lock);
    assert!(ep.requests().is_empty());

    // The next pass settles it from the outbox: failed.
    w.once_at("2026-01-01T00:01:40Z").run();
    let failed = run_for(&w, "2026-01-01T00:01:00Z");
    assert!(failed.path.as_deref().unwrap().ends_with(".failed"));
    assert_eq!(w.state()["jobs"]["jobs/d"]["last_run"]["status"], "failed");
    assert_eq!(
        w.state()["health"]["jobs/d"]["failing"]["failures"],
        1,
        "{}",
        w.state()["health"]
    );
    let got = ep.wait_for(1);
    let body = got[0].body_json();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["job"], "jobs/d");
    assert_eq!(body["run_id"], meta_str(&failed, "run_id").as_str());
}
