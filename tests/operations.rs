//! Day-to-day operation (SPEC §7.5, §8, §9.3), the binary as a process:
//! `once` stopped by a signal with a real process tree, its quiet cron
//! output, `runs`, `pause`/`resume` across `once` and `serve`, `doctor`
//! check by check, each verb's `--help`, and `validate` as a pass would.
//! Nothing here waits for a wall-clock minute: `once` runs at instants
//! given by PARACHUTE_RUNNER_NOW, and events in other processes are awaited
//! with `eventually` and a generous deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::serve::start;
use crate::support::fake_claude::{self, FakeClaude};
use crate::support::fake_hub::FakeHub;
use crate::support::fake_vault::StoredNote;
use crate::support::world::{World, eventually, job};
use crate::support::{Ran, Runner, TempDir};

/// How long an event in another process may take on a loaded machine.
const LONG: Duration = Duration::from_secs(60);

fn meta(note: &StoredNote, key: &str) -> Value {
    note.metadata.as_ref().unwrap()[key].clone()
}

/// Sends `sig` (`TERM`, `INT`, `HUP`) to one process, by its pid.
fn send(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}: {status:?}");
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// The session id of a process, from /proc (field 6 of `stat`).
fn session_of(pid: i32) -> i32 {
    crate::support::stat_fields(pid as u32).unwrap()[3]
        .parse()
        .unwrap()
}

fn is_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Job note content: a schedule, extra frontmatter lines and a prompt.
fn job_with_prompt(schedule: &str, extra: &str, prompt: &str) -> String {
    format!(
        "---\nschedule: {schedule}\nmodel: test-model\nallowed_tools: [Read, \"mcp__parachute-vault-default__search\"]\n{extra}---\n{prompt}\n"
    )
}

// ---------------------------------------------------------------------
// 1. Signals with a real process tree.
// ---------------------------------------------------------------------

/// A fake claude snippet: a grandchild `sleep 300` in a session of its own
/// (`setsid`), its pid written to `$d/grandchild.pid` once it runs.
const SETSID_GRANDCHILD: &str = "setsid sh -c 'echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; exec sleep 300' sh \"$d/grandchild.pid\" < /dev/null > /dev/null 2>&1 &\nwhile [ ! -e \"$d/grandchild.pid\" ]; do sleep 0.05; done";

/// `once` runs a due job whose agent waits (for a file the test never
/// creates) and left a grandchild in a session of its own; `sig` comes.
fn a_signal_stops_the_pass(sig: &str, code: i32) {
    let release = TempDir::new("signal-release");
    let w = World::with_claude(
        &format!("signal-{sig}"),
        FakeClaude::new()
            .runs(SETSID_GRANDCHILD)
            .prints("never")
            .waits_for(&release.join("never")),
    );
    w.every_minute("jobs/slow");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let child = w.once_at("2026-01-01T00:01:30Z").spawn();
    let pass = child.id();
    assert!(
        eventually(LONG, || w
            .invocations()
            .iter()
            .any(|c| c.dir.join("grandchild.pid").exists())),
        "the agent never started its grandchild"
    );
    let call = fake_claude::only_invocation(&w.claude_dir);
    let agent = call.pid();
    let grandchild = read_pid(&call.dir.join("grandchild.pid"));
    assert!(fake_claude::alive(agent) && fake_claude::alive(grandchild));
    assert_ne!(
        session_of(grandchild),
        session_of(agent),
        "the grandchild must be in a session of its own"
    );
    assert_eq!(session_of(grandchild), grandchild);
    // While the run goes on, state says so.
    assert!(w.state()["jobs"]["jobs/slow"].get("running").is_some());

    send(pass, sig);
    let ran = Ran(child.wait_with_output().unwrap()).status(code);
    let reason = format!("interrupted: runner stopped by SIG{sig}");
    // No agent outlives the pass, not even what left its process group.
    assert!(!fake_claude::alive(agent), "the agent outlived the pass");
    assert!(
        !fake_claude::alive(grandchild),
        "the setsid grandchild outlived the pass"
    );
    let runs = w.runs();
    assert_eq!(runs.len(), 1, "{:#?}\n{}", runs, ran.stderr());
    let note = &runs[0];
    assert!(
        note.path.as_deref().unwrap().ends_with(".failed"),
        "{note:?}"
    );
    assert!(note.tags.iter().any(|t| t == "job-run-failed"), "{note:?}");
    assert_eq!(meta(note, "run_error"), reason.as_str());
    assert_eq!(meta(note, "run_exit_code"), 130);
    assert_eq!(meta(note, "run_trigger"), "schedule");
    assert_eq!(meta(note, "run_scheduled_for"), "2026-01-01T00:01:00Z");
    assert!(note.content.contains(&reason), "{}", note.content);
    assert!(w.outbox().is_empty(), "the note was delivered before exit");
    let state = w.state();
    let entry = &state["jobs"]["jobs/slow"];
    assert!(entry.get("running").is_none(), "{state:#}");
    assert_eq!(entry["last_run"]["status"], "failed");
    // The pass says what happened to the run, then the summary.
    let out = ran.stdout();
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("failed: jobs/slow: {reason} -> "))),
        "{out}"
    );
    assert!(
        out.ends_with("done: total=1 ok=0 failed=1 skipped=0\n"),
        "{out}"
    );
    // The next pass has nothing to settle.
    w.once_at("2026-01-01T00:01:40Z")
        .run()
        .success()
        .stdout_is("");
    assert_eq!(w.runs().len(), 1);
}

#[test]
fn sigterm_stops_the_agent_and_its_setsid_grandchild_writes_the_note_and_exits_143() {
    a_signal_stops_the_pass("TERM", 143);
}

#[test]
fn sigint_stops_the_agent_and_its_setsid_grandchild_writes_the_note_and_exits_130() {
    a_signal_stops_the_pass("INT", 130);
}

#[test]
fn sighup_stops_the_agent_and_its_setsid_grandchild_writes_the_note_and_exits_143() {
    a_signal_stops_the_pass("HUP", 143);
}

#[test]
fn sigterm_with_a_second_due_job_queued_starts_no_agent_for_it_and_notes_it_interrupted() {
    let release = TempDir::new("queue-release");
    let w = World::with_claude(
        "signal-queue",
        FakeClaude::new()
            .prints("never")
            .waits_for(&release.join("never")),
    );
    w.set_config("max_concurrent_jobs", json!(1));
    w.every_minute("jobs/a");
    w.every_minute("jobs/b");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let child = w.once_at("2026-01-01T00:01:30Z").spawn();
    let pass = child.id();
    // One run at a time: the first agent runs, the second job waits.
    assert!(eventually(LONG, || w.invocations().len() == 1));
    let state = w.state();
    let running: Vec<&str> = ["jobs/a", "jobs/b"]
        .into_iter()
        .filter(|p| state["jobs"][*p].get("running").is_some())
        .collect();
    // Both slots are claimed (running recorded) before either starts.
    assert_eq!(running, ["jobs/a", "jobs/b"], "{state:#}");
    send(pass, "TERM");
    let ran = Ran(child.wait_with_output().unwrap()).status(143);
    // The queued job never got an agent...
    assert_eq!(
        w.invocations().len(),
        1,
        "an agent started after SIGTERM\n{}",
        ran.stderr()
    );
    // ...and both runs end with the signal's note.
    let mut runs = w.runs();
    runs.sort_by_key(|n| meta(n, "parent_job_path").as_str().unwrap().to_string());
    assert_eq!(runs.len(), 2, "{runs:#?}");
    for (note, job) in runs.iter().zip(["jobs/a", "jobs/b"]) {
        assert_eq!(meta(note, "parent_job_path"), job);
        assert_eq!(
            meta(note, "run_error"),
            "interrupted: runner stopped by SIGTERM",
            "{note:?}"
        );
        assert_eq!(meta(note, "run_scheduled_for"), "2026-01-01T00:01:00Z");
    }
    let state = w.state();
    for job in ["jobs/a", "jobs/b"] {
        assert!(state["jobs"][job].get("running").is_none(), "{state:#}");
        assert_eq!(state["jobs"][job]["last_run"]["status"], "failed");
    }
    let out = ran.stdout();
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(": interrupted: runner stopped by SIGTERM -> "))
            .count(),
        2,
        "{out}"
    );
    assert!(
        out.ends_with("done: total=2 ok=0 failed=2 skipped=0\n"),
        "{out}"
    );
}

// ---------------------------------------------------------------------
// 2. Quiet cron output.
// ---------------------------------------------------------------------

#[test]
fn a_pass_with_nothing_due_prints_nothing_at_all_and_v_prints_only_the_summary() {
    let w = World::new("quiet-nothing");
    // The very first pass moves the token from config.json into
    // secrets.json, and says that (once) at info level.
    let first = w
        .once_at("2026-01-01T00:00:10Z")
        .run_merged()
        .success()
        .stdout();
    assert!(
        first.lines().all(|l| l.contains("moved vault_token")),
        "{first}"
    );
    w.every_minute("jobs/a");
    w.vault.add_job("jobs/by-hand", &job("manual", ""));
    w.vault
        .add_job("jobs/off", &job("\"* * * * *\"", "disabled: true\n"));
    // Jobs first seen, then not due: nothing on stdout or stderr (2>&1).
    for now in ["2026-01-01T00:00:30Z", "2026-01-01T00:00:40Z"] {
        w.once_at(now).run_merged().success().stdout_is("");
    }
    // Without RUST_LOG (as from cron) too.
    w.once_at("2026-01-01T00:00:45Z")
        .env_remove("RUST_LOG")
        .run_merged()
        .success()
        .stdout_is("");
    // -v: the summary, and nothing else.
    w.once_at("2026-01-01T00:00:50Z")
        .args(["-v"])
        .run_merged()
        .success()
        .stdout_is("done: total=3 ok=0 failed=0 skipped=3\n");
    assert!(w.invocations().is_empty());
}

#[test]
fn a_pass_where_a_job_ran_prints_its_line_and_the_summary() {
    let w = World::new("quiet-ran");
    w.every_minute("jobs/a");
    w.vault.add_job("jobs/by-hand", &job("manual", ""));
    w.once_at("2026-01-01T00:00:30Z").run().success();
    // 2>&1: the line and the summary, no log line besides.
    let ran = w.once_at("2026-01-01T00:01:30Z").run_merged().success();
    let note = w.runs().remove(0);
    let lines: Vec<String> = ran.stdout().lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{}", ran.stdout());
    assert!(
        lines[0].starts_with(&format!(
            "ok: jobs/a -> {} (schedule, ",
            note.path.as_deref().unwrap()
        )),
        "{lines:?}"
    );
    assert_eq!(lines[1], "done: total=2 ok=1 failed=0 skipped=1");
    // -v changes nothing when something happened.
    let ran = w
        .once_at("2026-01-01T00:02:30Z")
        .args(["-v"])
        .run()
        .success();
    assert_eq!(ran.stdout().lines().count(), 2, "{}", ran.stdout());
    assert!(
        ran.stdout()
            .ends_with("done: total=2 ok=1 failed=0 skipped=1\n")
    );
}

#[test]
fn quiet_prints_only_the_failure_lines() {
    // The agent fails (exit 3) when its prompt says FAIL.
    let w = World::with_claude(
        "quiet-failures",
        FakeClaude::new()
            .runs("if grep -q FAIL \"$d/stdin\"; then echo boom >&2; exit 3; fi")
            .prints("the answer"),
    );
    w.every_minute("jobs/good");
    w.vault.add_job(
        "jobs/bad",
        &job_with_prompt("\"* * * * *\"", "", "FAIL on purpose."),
    );
    w.vault.add_job(
        "jobs/broken",
        "---\nschedule: \"* * * * *\"\nallowed_tools: [Read]\n---\nNo model.\n",
    );
    w.once_at("2026-01-01T00:00:30Z").args(["--quiet"]).run();
    // 2>&1: the failure lines and nothing else.
    let ran = w
        .once_at("2026-01-01T00:01:30Z")
        .args(["--quiet"])
        .run_merged()
        .status(1);
    assert_eq!(w.invocations().len(), 2, "both valid jobs ran");
    let mut lines: Vec<String> = ran.stdout().lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{}", ran.stdout());
    assert!(
        lines[0].starts_with("failed: jobs/bad: claude -p exited with code 3 -> jobs/runs/bad/"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "invalid job at jobs/broken: model: required");
    assert!(!ran.stdout().contains("ok: "), "{}", ran.stdout());
    assert!(!ran.stdout().contains("done: "), "{}", ran.stdout());
    // With nothing failing, --quiet prints nothing, even after a run.
    w.vault.remove_note("jobs/bad");
    w.vault.remove_note("jobs/broken");
    w.once_at("2026-01-01T00:02:30Z")
        .args(["--quiet"])
        .run_merged()
        .success()
        .stdout_is("");
    assert_eq!(w.invocations().len(), 3);
}

#[test]
fn a_job_still_running_is_said_once_in_the_merged_output() {
    let release = TempDir::new("still-release");
    let go = release.join("go");
    let w = World::with_claude(
        "quiet-still",
        FakeClaude::new().prints("slow answer").waits_for(&go),
    );
    w.every_minute("jobs/slow");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let first = w.once_at("2026-01-01T00:01:30Z").spawn();
    assert!(eventually(LONG, || w.invocations().len() == 1));
    // The next slot comes while the run goes on.
    let ran = w.once_at("2026-01-01T00:02:30Z").run_merged().success();
    let out = ran.stdout();
    assert_eq!(
        out.matches("still running").count(),
        1,
        "said once, not also logged:\n{out}"
    );
    assert_eq!(
        out,
        "skipped: jobs/slow: still running\ndone: total=1 ok=0 failed=0 skipped=1\n"
    );
    std::fs::write(&go, "").unwrap();
    let first = Ran(first.wait_with_output().unwrap()).success();
    assert!(
        first.stdout().starts_with("ok: jobs/slow -> "),
        "{}",
        first.stdout()
    );
    assert_eq!(w.invocations().len(), 1, "the skipped slot did not run");
}

// ---------------------------------------------------------------------
// 3. `runs`.
// ---------------------------------------------------------------------

/// A stream-json answer with a cost, from an agent whose vault MCP server
/// is connected.
const STREAM_OK: &str = concat!(
    r#"{"type":"system","subtype":"init","session_id":"sess-1","model":"test-model","mcp_servers":[{"name":"parachute-vault-default","status":"connected"}]}"#,
    "\n",
    r#"{"type":"result","subtype":"success","is_error":false,"result":"the answer","total_cost_usd":0.0123,"num_turns":1,"duration_ms":5,"session_id":"sess-1","usage":{"input_tokens":3,"output_tokens":2}}"#,
    "\n"
);

/// The agent of the history: answers with a cost, or fails (exit 3) when
/// the prompt says FAIL.
fn history_claude() -> FakeClaude {
    FakeClaude::new()
        .runs("if grep -q FAIL \"$d/stdin\"; then echo boom >&2; exit 3; fi")
        .prints(STREAM_OK)
}

const JOB_A: &str = "0 7 * * *";
const JOB_B: &str = "5 7 * * *";

/// Four runs of two jobs at distinct instants (all 2026-01-05, UTC):
/// jobs/a by schedule at 07:00:10 (ok), jobs/b by schedule at 07:05:20
/// (failed), jobs/a by hand at 07:10:30 (ok), jobs/b by hand at 07:15:40
/// (failed). `once` is run by `pass(now, extra args)`.
fn make_history(pass: &dyn Fn(&str, &[&str]) -> Ran) {
    pass("2026-01-05T06:59:00Z", &[]).success();
    pass("2026-01-05T07:00:10Z", &[]).success();
    pass("2026-01-05T07:05:20Z", &[]).status(1);
    pass("2026-01-05T07:10:30Z", &["--only", "jobs/a"]).success();
    pass("2026-01-05T07:15:40Z", &["--only", "jobs/b"]).status(1);
}

/// One row of the `runs` table, cut at the header's column starts.
#[derive(Debug)]
struct Row {
    started: String,
    job: String,
    trigger: String,
    status: String,
    duration: String,
    cost: String,
    output: String,
    reason: String,
}

fn runs_table(ran: &Ran) -> Vec<Row> {
    let out = ran.stdout();
    let mut lines = out.lines();
    let head = lines.next().unwrap_or_else(|| panic!("no header:\n{out}"));
    let names = [
        "STARTED", "JOB", "TRIGGER", "STATUS", "DURATION", "COST", "OUTPUT", "REASON",
    ];
    let starts: Vec<usize> = names
        .iter()
        .map(|n| {
            head.find(n)
                .unwrap_or_else(|| panic!("no column {n}: {head}"))
        })
        .collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{head}");
    lines
        .map(|line| {
            let cell = |i: usize| -> String {
                let from = starts[i].min(line.len());
                let to = starts.get(i + 1).map_or(line.len(), |&e| e.min(line.len()));
                line[from..to].trim().to_string()
            };
            Row {
                started: cell(0),
                job: cell(1),
                trigger: cell(2),
                status: cell(3),
                duration: cell(4),
                cost: cell(5),
                output: cell(6),
                reason: cell(7),
            }
        })
        .collect()
}

fn is_duration(text: &str) -> bool {
    text.strip_suffix('s')
        .and_then(|n| n.split_once('.'))
        .is_some_and(|(a, b)| {
            !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.len() == 1
        })
}

/// Checks every `runs` variant against the history of `make_history`;
/// `runs(args)` runs the verb.
fn check_history(runs: &dyn Fn(&[&str]) -> Ran) {
    let ran = runs(&[]).success();
    let rows = runs_table(&ran);
    assert_eq!(rows.len(), 4, "{}", ran.stdout());
    // Newest first, in the job's zone (UTC), not the config's (Europe/Paris).
    let started: Vec<&str> = rows.iter().map(|r| r.started.as_str()).collect();
    assert_eq!(
        started,
        [
            "2026-01-05T07:15:40+00:00",
            "2026-01-05T07:10:30+00:00",
            "2026-01-05T07:05:20+00:00",
            "2026-01-05T07:00:10+00:00"
        ],
        "{}",
        ran.stdout()
    );
    let cols: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.job.as_str(), r.trigger.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(
        cols,
        [
            ("jobs/b", "manual", "failed"),
            ("jobs/a", "manual", "ok"),
            ("jobs/b", "schedule", "failed"),
            ("jobs/a", "schedule", "ok"),
        ]
    );
    for r in &rows {
        assert!(is_duration(&r.duration), "{r:?}");
        let (job, cost, reason) = match r.status.as_str() {
            "ok" => ("a", "$0.0123", ""),
            _ => ("b", "-", "claude -p exited with code 3"),
        };
        assert!(r.output.starts_with(&format!("jobs/runs/{job}/")), "{r:?}");
        assert_eq!(r.output.ends_with(".failed"), r.status == "failed", "{r:?}");
        assert_eq!(r.cost, cost, "{r:?}");
        assert_eq!(r.reason, reason, "{r:?}");
    }
    // One job.
    let ran = runs(&["jobs/a"]).success();
    let a = runs_table(&ran);
    assert_eq!(a.len(), 2, "{}", ran.stdout());
    assert!(a.iter().all(|r| r.job == "jobs/a"), "{a:?}");
    assert_eq!(a[0].started, "2026-01-05T07:10:30+00:00");
    // Failed runs only.
    let ran = runs(&["--failed"]).success();
    let failed = runs_table(&ran);
    assert_eq!(failed.len(), 2, "{}", ran.stdout());
    assert!(failed.iter().all(|r| r.status == "failed"), "{failed:?}");
    // The newest one.
    let ran = runs(&["-n", "1"]).success();
    let one = runs_table(&ran);
    assert_eq!(one.len(), 1, "{}", ran.stdout());
    assert_eq!(one[0].started, "2026-01-05T07:15:40+00:00");
    // Since an instant between the second and the third run.
    let ran = runs(&["--since", "2026-01-05T07:08:00Z"]).success();
    let since = runs_table(&ran);
    let started: Vec<&str> = since.iter().map(|r| r.started.as_str()).collect();
    assert_eq!(
        started,
        ["2026-01-05T07:15:40+00:00", "2026-01-05T07:10:30+00:00"],
        "{}",
        ran.stdout()
    );
    // ... exactly at a run's start counts it.
    let ran = runs(&["--since", "2026-01-05T07:05:20Z"]).success();
    assert_eq!(runs_table(&ran).len(), 3, "{}", ran.stdout());
    // A date: from its start (UTC); a later one finds nothing.
    assert_eq!(
        runs_table(&runs(&["--since", "2026-01-05"]).success()).len(),
        4
    );
    runs(&["--since", "2026-01-06"])
        .success()
        .stdout_is("no runs\n");
    // Filters combine.
    let ran = runs(&["jobs/a", "--failed"]).success();
    assert_eq!(ran.stdout(), "no runs\n");
    // JSON: UTC instants and every field.
    let ran = runs(&["--json"]).success();
    let doc = ran.json();
    let list = doc["runs"].as_array().unwrap();
    assert_eq!(list.len(), 4, "{doc:#}");
    let started: Vec<&str> = list
        .iter()
        .map(|r| r["started_at"].as_str().unwrap())
        .collect();
    assert_eq!(
        started,
        [
            "2026-01-05T07:15:40.000Z",
            "2026-01-05T07:10:30.000Z",
            "2026-01-05T07:05:20.000Z",
            "2026-01-05T07:00:10.000Z"
        ]
    );
    for r in list {
        let ok = r["status"] == "ok";
        assert_eq!(r["job"], if ok { "jobs/a" } else { "jobs/b" }, "{r}");
        assert!(r["duration_ms"].is_u64(), "{r}");
        assert!(r["run_id"].as_str().is_some_and(|id| !id.is_empty()), "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        assert_eq!(r["job_paused"], false, "{r}");
        assert!(
            r["output_path"]
                .as_str()
                .unwrap()
                .contains(r["run_id"].as_str().unwrap()),
            "{r}"
        );
        if ok {
            assert_eq!(r["cost_usd"], 0.0123, "{r}");
            assert_eq!(r["error"], Value::Null, "{r}");
        } else {
            assert_eq!(r["cost_usd"], Value::Null, "{r}");
            assert_eq!(r["error"], "claude -p exited with code 3", "{r}");
        }
    }
    let triggers: Vec<&str> = list
        .iter()
        .map(|r| r["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(triggers, ["manual", "manual", "schedule", "schedule"]);
    // JSON with filters.
    let doc = runs(&["jobs/b", "-n", "1", "--json"]).success().json();
    assert_eq!(doc["runs"].as_array().unwrap().len(), 1, "{doc:#}");
    assert_eq!(doc["runs"][0]["started_at"], "2026-01-05T07:15:40.000Z");
    assert_eq!(doc["runs"][0]["trigger"], "manual");
}

#[test]
fn runs_lists_the_history_of_a_vault_server() {
    let w = World::with_claude("runs-rest", history_claude());
    w.set_config("timezone", json!("Europe/Paris"));
    w.vault.add_job(
        "jobs/a",
        &job_with_prompt(&format!("\"{JOB_A}\""), "timezone: UTC\n", "Do a."),
    );
    w.vault.add_job(
        "jobs/b",
        &job_with_prompt(&format!("\"{JOB_B}\""), "timezone: UTC\n", "FAIL b."),
    );
    make_history(&|now, extra| w.once_at(now).args(extra).run());
    assert_eq!(w.runs().len(), 4);
    check_history(&|args| w.runner().args(["runs"]).args(args).run());
}

#[test]
fn runs_lists_the_history_of_a_folder_vault() {
    let dir = TempDir::new("runs-dir");
    let notes = dir.join("notes");
    std::fs::create_dir_all(notes.join("jobs")).unwrap();
    let tagged = |schedule: &str, prompt: &str| {
        format!(
            "---\ntags: [job]\nschedule: \"{schedule}\"\nmodel: test-model\nallowed_tools: [Read]\ntimezone: UTC\n---\n{prompt}\n"
        )
    };
    std::fs::write(notes.join("jobs/a.md"), tagged(JOB_A, "Do a.")).unwrap();
    std::fs::write(notes.join("jobs/b.md"), tagged(JOB_B, "FAIL b.")).unwrap();
    let bin = history_claude().install(&dir.join("claude"));
    // The zone comes from the config file; the vault from --vault-dir.
    let home = dir.join("home");
    std::fs::create_dir_all(home.join("runner")).unwrap();
    std::fs::write(
        home.join("runner/config.json"),
        serde_json::to_vec(&json!({"timezone": "Europe/Paris", "claude_bin": bin})).unwrap(),
    )
    .unwrap();
    let runner = |verb: &str| {
        Runner::new()
            .env("PARACHUTE_HOME", &home)
            .env("HOME", dir.path())
            .args([verb.as_ref(), "--vault-dir".as_ref(), notes.as_os_str()])
    };
    make_history(&|now, extra| {
        runner("once")
            .env("PARACHUTE_RUNNER_NOW", now)
            .args(extra)
            .run()
    });
    check_history(&|args| runner("runs").args(args).run());
}

// ---------------------------------------------------------------------
// 4. Pause and resume.
// ---------------------------------------------------------------------

/// The NEXT cell of `path`'s row in the `jobs` table.
fn next_cell(jobs: &Ran, path: &str) -> String {
    let out = jobs.stdout();
    let head = out.lines().next().unwrap();
    let (from, to) = (head.find("NEXT").unwrap(), head.find("LAST RUN").unwrap());
    let row = out
        .lines()
        .find(|l| l.starts_with(&format!("{path} ")))
        .unwrap_or_else(|| panic!("no row for {path}:\n{out}"));
    row[from..to.min(row.len())].trim().to_string()
}

#[test]
fn a_paused_job_skips_its_slots_until_resumed_and_does_not_catch_up() {
    let w = World::new("pause-once");
    w.every_minute("jobs/x");
    w.every_minute("jobs/other");
    let at = |now: &str| {
        w.runner()
            .env("PARACHUTE_RUNNER_NOW", now)
            .env("USER", "tester")
    };
    w.once_at("2026-01-01T00:00:30Z").run().success();
    at("2026-01-01T00:00:40Z")
        .args(["pause", "jobs/x"])
        .run()
        .success()
        .stdout_is("paused: jobs/x\n");
    // `jobs` says so: NEXT is `paused`, the JSON who and when.
    let listing = at("2026-01-01T00:00:45Z").args(["jobs"]).run().success();
    assert_eq!(
        next_cell(&listing, "jobs/x"),
        "paused",
        "{}",
        listing.stdout()
    );
    assert_eq!(
        next_cell(&listing, "jobs/other"),
        "2026-01-01T00:01:00+00:00",
        "{}",
        listing.stdout()
    );
    let doc = at("2026-01-01T00:00:45Z")
        .args(["jobs", "--json"])
        .run()
        .success()
        .json();
    let row = |doc: &Value, path: &str| {
        doc["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == path)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        row(&doc, "jobs/x")["paused"],
        json!({"by": "tester", "at": "2026-01-01T00:00:40Z"})
    );
    assert_eq!(row(&doc, "jobs/other")["paused"], Value::Null);
    // Its slots pass; the other job runs at each.
    for now in ["2026-01-01T00:01:30Z", "2026-01-01T00:02:30Z"] {
        let ran = w.once_at(now).run().success();
        assert!(!ran.stdout().contains("jobs/x"), "{}", ran.stdout());
    }
    let ran_x = |w: &World| {
        w.runs()
            .iter()
            .filter(|n| meta(n, "parent_job_path") == "jobs/x")
            .count()
    };
    assert_eq!(ran_x(&w), 0, "a paused job ran");
    assert_eq!(w.runs().len(), 2, "the other job ran at both slots");
    // `--only` still runs it, by hand.
    let ran = at("2026-01-01T00:02:40Z")
        .args(["once", "--only", "jobs/x"])
        .run()
        .success();
    assert!(
        ran.stdout().starts_with("ok: jobs/x -> "),
        "{}",
        ran.stdout()
    );
    assert_eq!(ran_x(&w), 1);
    // `runs` marks it while paused.
    let runs = w.runner().args(["runs", "jobs/x"]).run().success();
    let rows = runs_table(&runs);
    assert_eq!(rows.len(), 1, "{}", runs.stdout());
    assert_eq!(rows[0].job, "jobs/x (paused)");
    assert_eq!(rows[0].trigger, "manual");
    let doc = w.runner().args(["runs", "--json"]).run().success().json();
    for r in doc["runs"].as_array().unwrap() {
        assert_eq!(r["job_paused"], r["job"] == "jobs/x", "{r}");
    }
    // Resumed: the slots it missed are not caught up...
    at("2026-01-01T00:02:50Z")
        .args(["resume", "jobs/x"])
        .run()
        .success()
        .stdout_is("resumed: jobs/x\n");
    let listing = at("2026-01-01T00:02:52Z").args(["jobs"]).run().success();
    assert_eq!(next_cell(&listing, "jobs/x"), "2026-01-01T00:03:00+00:00");
    w.once_at("2026-01-01T00:02:55Z")
        .run()
        .success()
        .stdout_is("");
    assert_eq!(ran_x(&w), 1);
    // ...and the following slot runs, once, by schedule.
    let ran = w.once_at("2026-01-01T00:03:30Z").run().success();
    assert!(ran.stdout().contains("ok: jobs/x -> "), "{}", ran.stdout());
    let x: Vec<StoredNote> = w
        .runs()
        .into_iter()
        .filter(|n| meta(n, "parent_job_path") == "jobs/x")
        .collect();
    assert_eq!(x.len(), 2);
    let scheduled: Vec<Value> = x.iter().map(|n| meta(n, "run_scheduled_for")).collect();
    assert!(
        scheduled.contains(&json!("2026-01-01T00:03:00Z")),
        "{scheduled:?}"
    );
    assert!(
        scheduled.contains(&Value::Null),
        "the manual run has no slot"
    );
    let runs = w.runner().args(["runs", "jobs/x"]).run().success();
    assert!(
        runs_table(&runs).iter().all(|r| r.job == "jobs/x"),
        "{}",
        runs.stdout()
    );
}

#[test]
fn a_slot_that_passed_while_paused_does_not_run_after_resume_even_with_no_pass_between() {
    let w = World::new("pause-no-pass");
    w.every_minute("jobs/x");
    let at = |now: &str| w.runner().env("PARACHUTE_RUNNER_NOW", now);
    w.once_at("2026-01-01T00:00:30Z").run().success();
    at("2026-01-01T00:00:40Z")
        .args(["pause", "jobs/x"])
        .run()
        .success();
    // Slots 00:01 … 00:05 pass while it is paused; no pass runs (the host
    // was down, or cron was stopped).
    at("2026-01-01T00:05:40Z")
        .args(["resume", "jobs/x"])
        .run()
        .success();
    w.once_at("2026-01-01T00:05:50Z")
        .run()
        .success()
        .stdout_is("");
    assert!(
        w.runs().is_empty(),
        "a slot of the paused time ran: {:#?}",
        w.runs()
    );
    // The following slot runs.
    w.once_at("2026-01-01T00:06:10Z").run().success();
    assert_eq!(w.runs().len(), 1);
    assert_eq!(
        meta(&w.runs()[0], "run_scheduled_for"),
        "2026-01-01T00:06:00Z"
    );
}

#[test]
fn pausing_an_unknown_job_fails_with_exit_2_and_says_which() {
    let w = World::new("pause-nope");
    w.every_minute("jobs/x");
    let ran = w
        .runner()
        .args(["pause", "jobs/x", "jobs/nope"])
        .run()
        .status(2)
        .stdout_empty();
    let err = ran.stderr();
    assert!(err.contains("no job at jobs/nope"), "{err}");
    assert!(err.contains("parachute-runner jobs"), "{err}");
    assert!(!err.contains("jobs/x"), "{err}");
    // Nothing was paused, not even the job that exists.
    let doc = w.runner().args(["jobs", "--json"]).run().success().json();
    assert_eq!(doc["jobs"][0]["paused"], Value::Null, "{doc:#}");
    w.runner()
        .args(["resume", "jobs/nope"])
        .run()
        .status(2)
        .stderr_has("no job at jobs/nope");
    // An output note is not a job either.
    w.vault.add_note(
        "jobs/runs/x/r1",
        "out",
        &["job-run"],
        Some(json!({"parent_job_path": "jobs/x"})),
    );
    w.runner()
        .args(["pause", "jobs/runs/x/r1"])
        .run()
        .status(2)
        .stderr_has("no job at jobs/runs/x/r1");
}

#[test]
fn serve_honours_a_pause_from_the_cli_by_its_next_poll_and_a_resume() {
    let w = World::with_claude("pause-serve", FakeClaude::new().prints("tick"));
    w.vault.add_job("jobs/tick", &job("\"* * * * * *\"", ""));
    let s = start(&w, FakeHub::start(), &["--poll-interval", "1"], &[]);
    assert!(
        eventually(LONG, || w.runs().len() >= 2),
        "serve never ran the per-second job\n{}",
        s.log()
    );
    // The same PARACHUTE_HOME: the CLI writes the state serve reads.
    w.runner()
        .args(["pause", "jobs/tick"])
        .run()
        .success()
        .stdout_is("paused: jobs/tick\n");
    // Seen by the next poll; a run that was going has ended.
    let polls = s.polls();
    assert!(
        eventually(LONG, || s.polls() >= polls + 2 && s.live_runs() == 0),
        "{}",
        s.log()
    );
    let admin = s.hub.token("runner:admin");
    let (_, jobs) = s.get("/runner/jobs", Some(&admin));
    assert_eq!(jobs["jobs"][0]["paused"], true, "{jobs}");
    // The notes stop growing over several polls of a per-second job.
    let before = w.runs().len();
    let polls = s.polls();
    assert!(eventually(LONG, || s.polls() >= polls + 3), "{}", s.log());
    assert_eq!(w.runs().len(), before, "ran while paused\n{}", s.log());
    assert_eq!(s.live_runs(), 0);
    // Resumed, it runs again.
    w.runner()
        .args(["resume", "jobs/tick"])
        .run()
        .success()
        .stdout_is("resumed: jobs/tick\n");
    assert!(
        eventually(LONG, || w.runs().len() >= before + 2),
        "did not run again after resume\n{}",
        s.log()
    );
    let (_, jobs) = s.get("/runner/jobs", Some(&admin));
    assert_eq!(jobs["jobs"][0]["paused"], false, "{jobs}");
}

// ---------------------------------------------------------------------
// 5. `doctor`.
// ---------------------------------------------------------------------

/// A fake claude that answers `--version` like the real one.
fn versioned_claude() -> FakeClaude {
    FakeClaude::new()
        .runs("if [ \"$1\" = --version ]; then echo '2.1.197 (Claude Code)'; exit 0; fi")
        .prints("the answer")
}

/// A setup where every check passes: a valid job, a claude that answers
/// `--version`, the state directory 0700, and a pass just now.
fn healthy(name: &str) -> World {
    let w = World::with_claude(name, versioned_claude());
    w.vault.add_job("jobs/daily", &job("manual", ""));
    chmod(&w.home.join("runner"), 0o700);
    w.runner().args(["once"]).run().success();
    w
}

/// `doctor`'s lines as (mark, check, detail).
fn checks(ran: &Ran) -> Vec<(String, String, String)> {
    ran.stdout()
        .lines()
        .map(|l| {
            let (mark, rest) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("not a check line: {l:?}"));
            let (what, detail) = rest
                .trim_start()
                .split_once(": ")
                .unwrap_or_else(|| panic!("not a check line: {l:?}"));
            (mark.to_string(), what.to_string(), detail.to_string())
        })
        .collect()
}

/// Runs doctor, expects exit 1 and exactly one FAIL, for `check`; returns
/// its detail.
#[track_caller]
fn fails_once(runner: Runner, check: &str) -> String {
    let ran = runner.args(["doctor"]).run().status(1);
    let all = checks(&ran);
    let failed: Vec<&(String, String, String)> =
        all.iter().filter(|(m, _, _)| m == "FAIL").collect();
    assert_eq!(failed.len(), 1, "{}", ran.stdout());
    assert_eq!(failed[0].1, check, "{}", ran.stdout());
    failed[0].2.clone()
}

const ALL_CHECKS: [&str; 9] = [
    "config",
    "vault",
    "claude",
    "permission mode",
    "state directory",
    "time zone",
    "outbox",
    "jobs",
    "last pass",
];

#[test]
fn doctor_passes_every_check_of_a_healthy_setup() {
    let w = healthy("doctor-ok");
    let ran = w.runner().args(["doctor"]).run().success();
    let all = checks(&ran);
    let names: Vec<&str> = all.iter().map(|(_, n, _)| n.as_str()).collect();
    // Every check SPEC §8 names, in this order (others may come between).
    let mut rest = names.iter();
    for want in ALL_CHECKS {
        assert!(
            rest.any(|n| *n == want),
            "no {want:?} check (in order)\n{}",
            ran.stdout()
        );
    }
    for (mark, what, detail) in &all {
        assert!(
            mark == "ok" || mark == "warn",
            "{what}: {mark} {detail}\n{}",
            ran.stdout()
        );
    }
    let detail = |name: &str| all.iter().find(|(_, n, _)| n == name).unwrap().2.clone();
    assert!(
        detail("claude").starts_with("2.1.197 (Claude Code) at "),
        "{}",
        ran.stdout()
    );
    assert!(detail("config").contains("config.json"), "{}", ran.stdout());
    assert!(
        detail("state directory").contains("mode 700"),
        "{}",
        ran.stdout()
    );
    assert_eq!(detail("jobs"), "1 job(s), none with problems");
    assert_eq!(detail("outbox"), "empty");
    // Doctor changes nothing: asked again, the same checks.
    let again = w.runner().args(["doctor"]).run().success();
    assert_eq!(checks(&again).len(), all.len());
}

#[test]
fn doctor_fails_a_missing_config() {
    let home = TempDir::new("doctor-no-config");
    let ran = Runner::new()
        .env("PARACHUTE_HOME", home.path())
        .env("HOME", home.path())
        .args(["doctor"])
        .run()
        .status(1);
    let all = checks(&ran);
    assert_eq!(all.len(), 1, "{}", ran.stdout());
    assert_eq!((all[0].0.as_str(), all[0].1.as_str()), ("FAIL", "config"));
    let want = format!("no config at {}", home.join("runner/config.json").display());
    assert!(all[0].2.starts_with(&want), "{}", ran.stdout());
    assert!(
        all[0].2.contains("--vault-dir"),
        "says the fixes: {}",
        all[0].2
    );
}

#[test]
fn doctor_fails_an_invalid_config_naming_every_bad_key() {
    let w = healthy("doctor-bad-config");
    w.set_config("poll_interval_seconds", json!(0));
    w.set_config("bogus", json!(1));
    let ran = w.runner().args(["doctor"]).run().status(1);
    let all = checks(&ran);
    assert_eq!(all.len(), 1, "{}", ran.stdout());
    assert_eq!((all[0].0.as_str(), all[0].1.as_str()), ("FAIL", "config"));
    assert!(all[0].2.contains("bogus: unknown key"), "{}", all[0].2);
    assert!(
        all[0]
            .2
            .contains("poll_interval_seconds: expected an integer from 1 to 86400"),
        "{}",
        all[0].2
    );
}

#[test]
fn doctor_fails_an_unreachable_vault() {
    let w = healthy("doctor-vault-down");
    w.vault.stop();
    let detail = fails_once(w.runner(), "vault");
    assert!(detail.contains("is the vault running?"), "{detail}");
    assert!(!detail.contains(crate::support::world::TOKEN), "{detail}");
}

#[test]
fn doctor_fails_a_refused_token() {
    let w = healthy("doctor-401");
    let detail = fails_once(
        w.runner()
            .env("PARACHUTE_RUNNER_VAULT_TOKEN", "pvt_not_the_token"),
        "vault",
    );
    assert!(detail.contains("401"), "{detail}");
    assert!(detail.contains("store a valid token"), "{detail}");
    assert!(!detail.contains("pvt_not_the_token"), "{detail}");
}

#[test]
fn doctor_fails_a_claude_not_found_naming_the_path_searched() {
    let w = healthy("doctor-no-claude");
    // claude_bin a name that is nowhere on the PATH the agent would get.
    w.set_config("claude_bin", json!("no-such-claude-here"));
    let detail = fails_once(w.runner().env("PATH", "/usr/bin:/bin:/opt/none"), "claude");
    assert!(
        detail
            .starts_with("no-such-claude-here not found (PATH searched: /usr/bin:/bin:/opt/none)"),
        "{detail}"
    );
    assert!(detail.contains("claude_bin"), "{detail}");
    assert!(detail.contains("PARACHUTE_RUNNER_CLAUDE_BIN"), "{detail}");
    // A path that does not exist, too.
    let detail = fails_once(
        w.runner()
            .env("PARACHUTE_RUNNER_CLAUDE_BIN", "/nonexistent/claude"),
        "claude",
    );
    assert!(detail.contains("/nonexistent/claude not found"), "{detail}");
}

#[test]
fn doctor_fails_a_claude_whose_version_fails() {
    let w = healthy("doctor-bad-version");
    let bin = w.home.join("broken-claude");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho 'cannot start: no node' >&2\nexit 3\n",
    )
    .unwrap();
    chmod(&bin, 0o755);
    let detail = fails_once(
        w.runner().env("PARACHUTE_RUNNER_CLAUDE_BIN", &bin),
        "claude",
    );
    assert!(
        detail.starts_with(&format!("{} does not start: ", bin.display())),
        "{detail}"
    );
    assert!(detail.contains("--version exited with"), "{detail}");
    assert!(detail.contains('3'), "{detail}");
    assert!(detail.contains("cannot start: no node"), "{detail}");
}

#[test]
fn doctor_fails_bypass_permissions_as_root_without_is_sandbox() {
    let w = healthy("doctor-bypass");
    let bypass = || {
        w.runner()
            .env("PARACHUTE_RUNNER_PERMISSION_MODE", "bypassPermissions")
    };
    if is_root() {
        let detail = fails_once(bypass(), "permission mode");
        assert!(detail.contains("as root"), "{detail}");
        assert!(detail.contains("IS_SANDBOX=1"), "{detail}");
    }
    // In a sandbox (or not as root) it is only a warning: exit 0.
    let ran = bypass()
        .env("IS_SANDBOX", "1")
        .args(["doctor"])
        .run()
        .success();
    let all = checks(&ran);
    let mode = all.iter().find(|(_, n, _)| n == "permission mode").unwrap();
    assert_eq!(mode.0, "warn", "{}", ran.stdout());
    assert!(
        mode.2.contains("allowed_tools is not enforced"),
        "{}",
        mode.2
    );
}

#[test]
fn doctor_fails_a_state_directory_others_can_read_and_gives_the_chmod() {
    let w = healthy("doctor-mode");
    let dir = w.home.join("runner");
    chmod(&dir, 0o755);
    let detail = fails_once(w.runner(), "state directory");
    assert!(detail.contains("mode 755"), "{detail}");
    assert!(
        detail.ends_with(&format!("chmod 700 {}", dir.display())),
        "{detail}"
    );
}

#[test]
fn doctor_fails_jobs_with_problems_naming_them() {
    let w = healthy("doctor-jobs");
    w.vault.add_job(
        "jobs/broken",
        "---\nschedule: every day\nmodel: m\nallowed_tools: [Read]\n---\nhi\n",
    );
    w.vault
        .add_job("jobs/also-broken", "---\nschedule: daily\n---\nno model\n");
    let detail = fails_once(w.runner(), "jobs");
    assert!(
        detail.starts_with("2 of 3 job(s) have problems ("),
        "{detail}"
    );
    assert!(detail.contains("jobs/broken"), "{detail}");
    assert!(detail.contains("jobs/also-broken"), "{detail}");
    assert!(!detail.contains("jobs/daily"), "{detail}");
}

#[test]
fn doctor_warns_when_no_pass_ran_and_fails_when_the_last_one_is_old() {
    let w = World::with_claude("doctor-last-pass", versioned_claude());
    w.vault.add_job("jobs/daily", &job("manual", ""));
    chmod(&w.home.join("runner"), 0o700);
    // No pass yet: a warning, not a failure.
    let ran = w.runner().args(["doctor"]).run().success();
    let all = checks(&ran);
    let last = all.iter().find(|(_, n, _)| n == "last pass").unwrap();
    assert_eq!(last.0, "warn", "{}", ran.stdout());
    assert!(last.2.starts_with("none recorded yet"), "{}", last.2);
    assert!(all.iter().all(|(m, _, _)| m != "FAIL"), "{}", ran.stdout());
    // A pass long ago (its clock far in the past), doctor now.
    w.once_at("2020-01-01T00:00:00Z").run().success();
    let detail = fails_once(w.runner(), "last pass");
    assert!(
        detail.contains(" days ago (2020-01-01T00:00:00Z)"),
        "{detail}"
    );
    assert!(detail.contains("cron"), "{detail}");
    // A pass now mends it.
    w.runner().args(["once"]).run().success();
    w.runner().args(["doctor"]).run().success();
}

#[test]
fn doctor_fails_a_server_vault_with_no_token() {
    let home = TempDir::new("doctor-no-token");
    let vault = crate::support::fake_vault::FakeVault::start();
    std::fs::create_dir_all(home.join("runner")).unwrap();
    chmod(&home.join("runner"), 0o700);
    std::fs::write(
        home.join("runner/config.json"),
        serde_json::to_vec(&json!({"vault_url": vault.url()})).unwrap(),
    )
    .unwrap();
    let ran = Runner::new()
        .env("PARACHUTE_HOME", home.path())
        .env("HOME", home.path())
        .args(["doctor"])
        .run()
        .status(1);
    let all = checks(&ran);
    assert!(
        all.iter()
            .any(|(m, n, _)| m == "FAIL" && n == "vault token"),
        "{}",
        ran.stdout()
    );
}

// ---------------------------------------------------------------------
// 6. Each verb's --help.
// ---------------------------------------------------------------------

#[test]
fn each_verb_help_says_its_options() {
    for (verb, wants) in [
        (
            "once",
            &[
                "--only",
                "--date",
                "--dry-run",
                "--json",
                "-v",
                "--verbose",
                "--quiet",
                "--config",
                "--vault-dir",
                "SIGINT",
                "SIGTERM",
                "SIGHUP",
                "130",
                "143",
                "interrupted: runner stopped by <signal>",
                "done: total=T",
            ][..],
        ),
        (
            "serve",
            &[
                "--port",
                "--host",
                "--poll-interval",
                "--shutdown-timeout",
                "--vault-dir",
                "SIGTERM",
            ][..],
        ),
        ("jobs", &["--json", "--config", "--vault-dir", "Exit 1"][..]),
        (
            "runs",
            &[
                "JOB",
                "-n N",
                "--since",
                "--failed",
                "--json",
                "newest first",
                "UTC",
            ][..],
        ),
        (
            "pause",
            &["pause JOB", "resume JOB", "--only", "not caught up"][..],
        ),
        ("resume", &["pause JOB", "resume JOB"][..]),
        (
            "doctor",
            &["--config", "--vault-dir", "Exit 0", "claude", "last pass"][..],
        ),
        (
            "validate",
            &["--tz", "--json", "DIR", "bypassPermissions", "Exit 1"][..],
        ),
        ("next", &["--tz", "--from", "-n N", "--utc"][..]),
    ] {
        for flag in ["--help", "-h"] {
            let ran = Runner::new().args([verb, flag]).run().success();
            assert_eq!(ran.stderr(), "", "{verb} {flag}: help goes to stdout");
            let help = ran.stdout();
            for want in wants {
                assert!(
                    help.contains(want),
                    "`{verb} {flag}` lacks {want:?}:\n{help}"
                );
            }
        }
    }
    // --help after other options still answers the help (and runs nothing).
    for args in [
        &["once", "--dry-run", "--help"][..],
        &["runs", "--failed", "--help"],
        &["jobs", "--json", "--help"],
        &["validate", "--json", "--help"],
        &["next", "--utc", "--help"],
        &["pause", "jobs/x", "--help"],
        &["serve", "--port", "0", "--help"],
    ] {
        let ran = Runner::new().args(args).run().success();
        assert!(
            ran.stdout()
                .starts_with(&format!("parachute-runner {} ", args[0]))
                || ran.stdout().starts_with("parachute-runner pause "),
            "{args:?}: {}",
            ran.stdout()
        );
    }
    // The whole help names the new verbs and flags too.
    let help = Runner::new().args(["--help"]).run().success().stdout();
    for want in [
        "runs",
        "pause",
        "resume",
        "doctor",
        "--failed",
        "--since",
        "--quiet",
        "-v, --verbose",
        "--utc",
        "130, 143",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}");
    }
    // A verb without its required argument: a usage error, exit 2.
    for (args, want) in [
        (&["pause"][..], "pause needs at least one job"),
        (&["resume"][..], "resume needs at least one job"),
        (
            &["validate"][..],
            "validate needs at least one FILE.md or DIR",
        ),
        (
            &["runs", "-n", "0"][..],
            "-n: expected an integer from 1 to 1000",
        ),
        (&["runs", "a", "b"][..], "unexpected argument"),
        (&["doctor", "--json"][..], "invalid option '--json'"),
    ] {
        Runner::new()
            .args(args)
            .run()
            .status(2)
            .stdout_empty()
            .stderr_has(want);
    }
}

// ---------------------------------------------------------------------
// 7. `validate` as a pass would.
// ---------------------------------------------------------------------

fn write(root: &Path, rel: &str, text: &str) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

const FRONT: &str = "model: test-model\nallowed_tools: [Read]\n";

#[test]
fn validate_dir_walks_the_folder_like_a_folder_vault_and_json_gives_the_findings() {
    let dir = TempDir::new("validate-dir");
    let root = dir.path();
    let good = write(
        root,
        "jobs/good.md",
        &format!(
            "---\ntags: [job]\nschedule: \"0 8 * * *\"\ntimezone: Europe/Paris\n{FRONT}---\nBrief for {{{{date}}}}.\n"
        ),
    );
    let bad = write(
        root,
        "deep/er/bad.md",
        &format!("---\ntags: \"#job\"\nschedule: \"0 8 * * *\"\n{FRONT}timeout: 0\n---\nhi\n"),
    );
    // Not jobs for a folder vault: untagged, hidden folders, outputs,
    // other extensions.
    write(
        root,
        "notes/untagged.md",
        "---\ntags: [note]\nschedule: nonsense\n---\nhi\n",
    );
    write(
        root,
        ".obsidian/hidden.md",
        "---\ntags: [job]\nschedule: nonsense\n---\n",
    );
    write(
        root,
        "projects/.git/hidden.md",
        "---\ntags: [job]\nschedule: nonsense\n---\n",
    );
    write(
        root,
        "jobs/runs/good/r1.md",
        "---\ntags: [job]\nschedule: nonsense\n---\n",
    );
    write(
        root,
        "jobs/job.txt",
        "---\ntags: [job]\nschedule: nonsense\n---\n",
    );
    let validate = |extra: &[&str]| {
        Runner::new()
            .env("PARACHUTE_RUNNER_NOW", "2026-11-23T12:00:00Z")
            .args(["validate"])
            .args(extra)
            .args([root.as_os_str()])
            .run()
    };
    let ran = validate(&[]).status(1);
    let out = ran.stdout();
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains(&format!(
            "ok: {}: schedule \"0 8 * * *\" in Europe/Paris; next 2026-11-24T08:00:00+01:00, 2026-11-25T08:00:00+01:00, 2026-11-26T08:00:00+01:00\n",
            good.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "invalid job at {}: timeout: must be more than 0 seconds\n",
            bad.display()
        )),
        "{out}"
    );
    let doc = validate(&["--json"]).status(1).json();
    let files = doc["files"].as_array().unwrap();
    let mut paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    paths.sort();
    let mut want = vec![bad.to_str().unwrap(), good.to_str().unwrap()];
    want.sort();
    assert_eq!(paths, want, "{doc:#}");
    assert_eq!(doc["invalid"], 1);
    let find = |p: &Path| {
        files
            .iter()
            .find(|f| f["path"] == p.to_str().unwrap())
            .unwrap()
    };
    let g = find(&good);
    assert_eq!(g["valid"], true);
    assert_eq!(g["problems"], json!([]));
    assert_eq!(g["warnings"], json!([]));
    assert_eq!(
        g["next"],
        json!([
            "2026-11-24T07:00:00Z",
            "2026-11-25T07:00:00Z",
            "2026-11-26T07:00:00Z"
        ])
    );
    let b = find(&bad);
    assert_eq!(b["valid"], false);
    assert_eq!(
        b["problems"],
        json!(["timeout: must be more than 0 seconds"])
    );
    assert_eq!(b["next"], json!([]));
    assert!(b["warnings"].is_array());
    // A folder with no job at all is valid (and says nothing).
    let empty = TempDir::new("validate-empty");
    write(empty.path(), "notes/a.md", "# just a note\n");
    Runner::new()
        .args(["validate".as_ref(), empty.path().as_os_str()])
        .run()
        .success()
        .stdout_is("");
}

#[test]
fn validate_reports_what_a_pass_would_fail_or_warn_about() {
    let dir = TempDir::new("validate-reports");
    let root = dir.path();
    let job_file = |name: &str, lines: &str, prompt: &str| {
        write(
            root,
            &format!("jobs/{name}.md"),
            &format!("---\ntags: [job]\n{lines}---\n{prompt}"),
        )
    };
    let leaves = job_file(
        "leaves",
        &format!("schedule: daily\n{FRONT}output_path: \"../../etc/{{{{date}}}}\"\n"),
        "hi\n",
    );
    let absolute = job_file(
        "absolute",
        &format!("schedule: daily\n{FRONT}output_path: /etc/cron.d/x\n"),
        "hi\n",
    );
    let empty = job_file("empty", &format!("schedule: daily\n{FRONT}"), "\n  \n");
    let typo = job_file("typo", &format!("schedul: daily\n{FRONT}"), "hi\n");
    let bypass = job_file(
        "bypass",
        &format!("schedule: daily\n{FRONT}permission_mode: bypassPermissions\n"),
        "hi\n",
    );
    let doc = Runner::new()
        .env("PARACHUTE_RUNNER_NOW", "2026-01-01T00:00:00Z")
        .args(["validate", "--json"])
        .args([root.as_os_str()])
        .run()
        .status(1)
        .json();
    let find = |p: &Path| -> Value {
        doc["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == p.to_str().unwrap())
            .cloned()
            .unwrap_or_else(|| panic!("no finding for {}: {doc:#}", p.display()))
    };
    assert_eq!(doc["invalid"], 4, "{doc:#}");
    let problems = |p: &Path| -> Vec<String> {
        let f = find(p);
        assert_eq!(f["valid"], false, "{f}");
        f["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let p = problems(&leaves);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("output_path renders to \"../../etc/2026-01-01\""),
        "{p:?}"
    );
    let p = problems(&absolute);
    assert_eq!(
        p,
        [
            "output_path renders to \"/etc/cron.d/x\", an absolute path; it must be relative to the vault"
        ]
    );
    let p = problems(&empty);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("prompt: empty"), "{p:?}");
    assert_eq!(
        problems(&typo),
        ["schedule: required (is `schedul` a typo of it?)"]
    );
    assert_eq!(
        find(&typo)["warnings"],
        json!(["unknown key \"schedul\" (did you mean schedule?)"])
    );
    let b = find(&bypass);
    assert_eq!(b["valid"], true, "{b}");
    assert_eq!(
        b["warnings"],
        json!(["permission_mode bypassPermissions: allowed_tools is not enforced"])
    );
    assert_eq!(b["next"].as_array().unwrap().len(), 3);
    // The same in text, one file at a time as well.
    let ran = Runner::new()
        .args(["validate".as_ref(), typo.as_os_str(), bypass.as_os_str()])
        .run()
        .status(1);
    let out = ran.stdout();
    assert!(
        out.contains(&format!(
            "invalid job at {}: schedule: required (is `schedul` a typo of it?)\n",
            typo.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "warning: {}: unknown key \"schedul\" (did you mean schedule?)\n",
            typo.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "warning: {}: permission_mode bypassPermissions: allowed_tools is not enforced\n",
            bypass.display()
        )),
        "{out}"
    );
    // A file not tagged job is checked, with a warning that a folder vault
    // would not take it.
    let untagged = write(
        root,
        "untagged.md",
        &format!("---\nschedule: daily\n{FRONT}---\nhi\n"),
    );
    let doc = Runner::new()
        .args(["validate".as_ref(), "--json".as_ref(), untagged.as_os_str()])
        .run()
        .success()
        .json();
    let w = doc["files"][0]["warnings"].as_array().unwrap();
    assert!(
        w.iter()
            .any(|w| w.as_str().unwrap().starts_with("not tagged job")),
        "{doc:#}"
    );
}
