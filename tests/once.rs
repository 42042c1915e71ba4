//! `once` end to end (SPEC §4.1, §6, §7, §8): the binary against the fake
//! vault with the fake claude. The clock is injected with
//! PARACHUTE_RUNNER_NOW; nothing waits for a wall-clock minute.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::Ran;
use crate::support::fake_claude::{self, FakeClaude};
use crate::support::fake_vault::{Fault, Route, StoredNote};
use crate::support::world::{TOKEN, World, eventually, job, walk};

fn lines(ran: &Ran) -> Vec<String> {
    let mut l: Vec<String> = ran.stdout().lines().map(String::from).collect();
    l.sort();
    l
}

#[test]
fn a_due_job_runs_and_its_output_note_is_exactly_the_contract() {
    let w = World::new("due");
    let id = w.every_minute("jobs/daily-brief");
    // A pass where nothing happened says nothing (cron mails what it
    // prints); -v says the summary all the same.
    w.once_at("2026-03-08T06:59:30Z")
        .run()
        .success()
        .stdout_is("");
    w.once_at("2026-03-08T06:59:40Z")
        .args(["-v"])
        .run()
        .success()
        .stdout_is("done: total=1 ok=0 failed=0 skipped=1\n");
    assert!(w.invocations().is_empty());
    let ran = w.once_at("2026-03-08T07:00:10Z").run().success();
    let call = fake_claude::only_invocation(&w.claude_dir);
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    let note = &runs[0];
    let meta = note.metadata.clone().unwrap();
    let run_id = meta["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        note.path.as_deref(),
        Some(format!("jobs/runs/daily-brief/{run_id}").as_str())
    );
    assert_eq!(note.content, "the answer");
    assert_eq!(note.tags, ["job-run"]);
    let keys: Vec<&str> = meta
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "model",
            "parent_job_id",
            "parent_job_path",
            "run_attempts",
            "run_duration_ms",
            "run_exit_code",
            "run_id",
            "run_scheduled_for",
            "run_started_at",
            "run_trigger"
        ]
    );
    assert_eq!(meta["parent_job_id"], id.as_str());
    assert_eq!(meta["parent_job_path"], "jobs/daily-brief");
    assert_eq!(meta["model"], "test-model");
    assert_eq!(meta["run_exit_code"], 0);
    assert_eq!(meta["run_trigger"], "schedule");
    assert_eq!(meta["run_scheduled_for"], "2026-03-08T07:00:00Z");
    assert_eq!(meta["run_started_at"], "2026-03-08T07:00:10.000Z");
    assert!(meta["run_duration_ms"].is_u64());
    assert_eq!(
        ran.stdout().lines().next().unwrap(),
        format!(
            "ok: jobs/daily-brief -> jobs/runs/daily-brief/{run_id} (schedule, {:.1}s)",
            meta["run_duration_ms"].as_u64().unwrap() as f64 / 1000.0
        )
    );
    assert_eq!(
        ran.stdout().lines().last().unwrap(),
        "done: total=1 ok=1 failed=0 skipped=0"
    );
    // The prompt was rendered at the slot, in the job's zone.
    assert_eq!(
        String::from_utf8_lossy(&call.stdin),
        "Write the brief for 2026-03-08.\n"
    );
    // State records the run.
    let state = w.state();
    let entry = &state["jobs"]["jobs/daily-brief"];
    assert_eq!(entry["last_run"]["run_id"], run_id.as_str());
    assert_eq!(entry["last_run"]["status"], "ok");
    assert!(entry.get("running").is_none());
    assert!(w.outbox().is_empty());
}

#[test]
fn exact_argv_and_a_private_mcp_config_that_is_removed() {
    let w = World::new("argv");
    w.every_minute("jobs/a");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.once_at("2026-01-01T00:01:30Z").run().success();
    let call = fake_claude::only_invocation(&w.claude_dir);
    let mcp_path = call.arg_after("--mcp-config").unwrap().to_string();
    assert_eq!(
        call.argv,
        [
            "-p",
            "--strict-mcp-config",
            "--mcp-config",
            mcp_path.as_str(),
            "--allowedTools",
            "Read,mcp__parachute-vault-default__search",
            "--tools",
            "Read",
            "--permission-mode",
            "dontAsk",
            "--model",
            "test-model",
            "--no-session-persistence",
            "--output-format",
            "stream-json",
            "--verbose"
        ]
    );
    assert!(
        mcp_path.starts_with(w.home.join("runner/").to_str().unwrap()),
        "{mcp_path}"
    );
    assert_eq!(call.mcp_mode.as_deref(), Some("600"));
    let dir_mode = std::fs::metadata(Path::new(&mcp_path).parent().unwrap()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&dir_mode.permissions()) & 0o777,
        0o700
    );
    assert_eq!(
        call.mcp_config.as_deref().unwrap(),
        format!(
            "{{\n  \"mcpServers\": {{\n    \"parachute-vault-default\": {{\n      \"type\": \"http\",\n      \"url\": \"{}/vault/default/mcp\",\n      \"headers\": {{\n        \"Authorization\": \"Bearer {TOKEN}\"\n      }}\n    }}\n  }}\n}}\n",
            w.vault.url()
        )
    );
    assert!(
        !Path::new(&mcp_path).exists(),
        "the MCP config must be removed after the run"
    );
}

#[test]
fn the_environment_is_an_allowlist() {
    let w = World::new("env");
    w.every_minute("jobs/a");
    let run = |now: &str| {
        w.once_at(now)
            .env("PARACHUTE_RUNNER_VAULT_TOKEN", TOKEN)
            .env("UNRELATED_SECRET", "nope")
            .env("AWS_SECRET_ACCESS_KEY", "nope")
            .env("ANTHROPIC_API_KEY", "sk-ant-pass")
            .env("CLAUDE_CONFIG_DIR", "/tmp/claude-config")
            .env("LC_ALL", "C.UTF-8")
            .env("LANG", "C.UTF-8")
            .env("IS_SANDBOX", "1")
            .run()
            .success()
    };
    run("2026-01-01T00:00:30Z");
    run("2026-01-01T00:01:30Z");
    let call = fake_claude::only_invocation(&w.claude_dir);
    let mut names: Vec<&str> = call
        .env
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !matches!(*k, "PWD" | "SHLVL" | "_"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ANTHROPIC_API_KEY",
            "CLAUDE_CONFIG_DIR",
            "HOME",
            "IS_SANDBOX",
            "LANG",
            "LC_ALL",
            "PATH",
            "TZ"
        ]
    );
    assert_eq!(call.env_var("ANTHROPIC_API_KEY"), Some("sk-ant-pass"));
    assert_eq!(call.env_var("PATH"), Some("/usr/bin:/bin"));
}

#[test]
fn the_token_is_in_no_argv_output_or_environment() {
    let w = World::with_claude(
        "token",
        FakeClaude::new().prints("ok").stderr("some warning"),
    );
    w.every_minute("jobs/a");
    w.vault.add_job("jobs/broken", "---\nschedule: nope\n---\n");
    let a = w
        .once_at("2026-01-01T00:00:30Z")
        .env("RUST_LOG", "trace")
        .run()
        .status(1);
    let b = w
        .once_at("2026-01-01T00:01:30Z")
        .env("RUST_LOG", "trace")
        .run()
        .status(1);
    let call = fake_claude::only_invocation(&w.claude_dir);
    for text in [
        a.stdout(),
        a.stderr(),
        b.stdout(),
        b.stderr(),
        call.argv.join(" "),
        format!("{:?}", call.env),
    ] {
        assert!(!text.contains(TOKEN), "token leaked: {text}");
    }
    // On disk it is only in secrets.json, encrypted; config.json lost it.
    for entry in walk(&w.home.join("runner")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(TOKEN),
            "token in {}",
            entry.display()
        );
    }
    for note in w.vault.notes() {
        assert!(!note.content.contains(TOKEN) && !format!("{:?}", note.metadata).contains(TOKEN));
    }
}

/// Runs one due pass with the given claude and returns the single note.
fn failed_run(name: &str, claude: FakeClaude, extra: &str) -> (World, Ran, StoredNote) {
    let w = World::with_claude(name, claude);
    w.vault.add_job("jobs/f", &job("\"* * * * *\"", extra));
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let ran = w.once_at("2026-01-01T00:01:30Z").run().status(1);
    let runs = w.runs();
    assert_eq!(runs.len(), 1, "{}", ran.stderr());
    let note = runs.into_iter().next().unwrap();
    assert!(
        note.path.as_deref().unwrap().ends_with(".failed"),
        "{:?}",
        note.path
    );
    assert_eq!(note.tags, ["job-run", "job-run-failed"]);
    (w, ran, note)
}

fn meta(note: &StoredNote, key: &str) -> Value {
    note.metadata.as_ref().unwrap()[key].clone()
}

#[test]
fn failure_exit_code() {
    let (_w, ran, note) = failed_run(
        "exit",
        FakeClaude::new()
            .prints("partial")
            .stderr("boom\n")
            .exits(3),
        "",
    );
    assert_eq!(meta(&note, "run_error"), "claude -p exited with code 3");
    assert_eq!(meta(&note, "run_exit_code"), 3);
    assert_eq!(meta(&note, "run_stderr_tail"), "boom\n");
    assert_eq!(
        note.content,
        "# job-run failed\n\n**Reason:** claude -p exited with code 3\n\n## Agent said\n\npartial\n\n## stderr (tail)\n\n```\nboom\n\n```\n"
    );
    assert!(
        ran.stdout()
            .contains("failed: jobs/f: claude -p exited with code 3 -> jobs/runs/f/"),
        "{}",
        ran.stdout()
    );
    assert!(
        ran.stdout()
            .ends_with("done: total=1 ok=0 failed=1 skipped=0\n")
    );
}

#[test]
fn failure_empty_stdout() {
    let (_w, _, note) = failed_run("empty", FakeClaude::new().prints("  \n\n"), "");
    assert_eq!(meta(&note, "run_error"), "claude -p: empty answer");
    assert_eq!(meta(&note, "run_exit_code"), 0);
    assert!(note.content.contains("```\n(empty)\n```"));
}

#[test]
fn failure_timeout() {
    let (_w, _, note) = failed_run(
        "timeout",
        FakeClaude::new().stderr("working\n").sleeps(30.0),
        "timeout: 0.5\n",
    );
    assert_eq!(meta(&note, "run_error"), "claude -p timed out after 500ms");
    assert_eq!(meta(&note, "run_exit_code"), 124);
    assert_eq!(meta(&note, "run_stderr_tail"), "working\n");
}

#[test]
fn failure_missing_binary() {
    let w = World::new("missing");
    w.set_config("claude_bin", Value::from("/nonexistent/claude"));
    w.every_minute("jobs/f");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.once_at("2026-01-01T00:01:30Z").run().status(1);
    let note = w.runs().remove(0);
    assert_eq!(
        meta(&note, "run_error"),
        "could not start /nonexistent/claude: No such file or directory (os error 2)"
    );
    assert_eq!(meta(&note, "run_exit_code"), 127);
}

#[test]
fn failure_not_executable() {
    let w = World::new("noexec");
    let plain = w.home.join("plain-file");
    std::fs::write(&plain, "not a program").unwrap();
    w.set_config("claude_bin", Value::from(plain.to_str().unwrap()));
    w.every_minute("jobs/f");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.once_at("2026-01-01T00:01:30Z").run().status(1);
    let note = w.runs().remove(0);
    assert_eq!(
        meta(&note, "run_error"),
        format!(
            "could not start {}: Permission denied (os error 13)",
            plain.display()
        )
    );
}

#[test]
fn failure_template_error_spawns_nothing() {
    let w = World::new("template");
    w.vault.add_job("jobs/t", "---\nschedule: \"* * * * *\"\nmodel: m\nallowed_tools: Read\n---\nHello {{ who }} on {{date}} {{ what }}\n");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.once_at("2026-01-01T00:01:30Z").run().status(1);
    assert!(w.invocations().is_empty());
    let note = w.runs().remove(0);
    let run_id = meta(&note, "run_id");
    assert_eq!(
        note.path.clone().unwrap(),
        format!(
            "jobs/runs/t/render-error-{}.failed",
            run_id.as_str().unwrap()
        )
    );
    assert_eq!(
        meta(&note, "run_error"),
        "template error: unknown variables {{who}}, {{what}} in prompt; supported: date, time, datetime, yesterday, job_name, job_path, run_id"
    );
}

#[test]
fn invalid_jobs_are_reported_and_others_still_run() {
    let w = World::new("invalid");
    w.every_minute("jobs/good");
    w.vault
        .add_job("jobs/bad", "---\nschedule: every day\n---\n");
    w.vault
        .add_note("jobs/runs/good/old", "output", &["job", "job-run"], None);
    let ran = w.once_at("2026-01-01T00:00:30Z").run().status(1);
    assert_eq!(
        lines(&ran),
        [
            "done: total=2 ok=0 failed=1 skipped=1",
            "invalid job at jobs/bad: schedule: expected 5-field cron or one of hourly, daily, weekly, manual (got \"every day\"); model: required; allowed_tools: required; prompt: empty (the body after the frontmatter is what the agent is asked)"
        ]
    );
    let ran = w.once_at("2026-01-01T00:01:30Z").run().status(1);
    assert!(ran.stdout().contains("ok: jobs/good -> "));
}

#[test]
fn due_exactly_once_across_passes_around_its_slot() {
    let w = World::new("once-around");
    w.vault.add_job("jobs/eight", &job("\"0 8 * * *\"", ""));
    for now in [
        "2026-01-01T07:59:00Z",
        "2026-01-01T07:59:59Z",
        "2026-01-01T08:00:00Z",
        "2026-01-01T08:00:01Z",
        "2026-01-01T08:00:59Z",
        "2026-01-01T08:05:00Z",
    ] {
        w.once_at(now).run().success();
    }
    assert_eq!(w.invocations().len(), 1);
    let note = w.runs().remove(0);
    assert_eq!(meta(&note, "run_scheduled_for"), "2026-01-01T08:00:00Z");
    assert_eq!(meta(&note, "run_trigger"), "schedule");
}

#[test]
fn a_week_of_downtime_fires_one_coalesced_catch_up_run() {
    let w = World::new("downtime");
    w.vault.add_job("jobs/hourly", &job("hourly", ""));
    w.once_at("2026-01-01T00:30:00Z").run().success();
    w.once_at("2026-01-08T00:30:00Z").run().success();
    w.once_at("2026-01-08T00:31:00Z").run().success();
    assert_eq!(w.invocations().len(), 1);
    let note = w.runs().remove(0);
    assert_eq!(meta(&note, "run_trigger"), "catch-up");
    assert_eq!(meta(&note, "run_scheduled_for"), "2026-01-08T00:00:00Z");
}

#[test]
fn catch_up_false_skips_a_late_slot() {
    let w = World::new("no-catch-up");
    w.vault
        .add_job("jobs/hourly", &job("hourly", "catch_up: false\n"));
    w.once_at("2026-01-01T00:30:00Z").run().success();
    w.once_at("2026-01-08T00:30:00Z")
        .run()
        .success()
        .stdout_is("skipped: jobs/hourly: late slot 2026-01-08T00:00:00Z skipped (catch_up: false)\ndone: total=1 ok=0 failed=0 skipped=1\n");
    assert!(w.invocations().is_empty());
    // The next slot, on time, runs.
    w.once_at("2026-01-08T01:00:20Z").run().success();
    assert_eq!(w.invocations().len(), 1);
}

#[test]
fn ten_concurrent_passes_run_each_due_slot_once() {
    let w = World::with_claude("ten", FakeClaude::new().prints("x").sleeps(0.3));
    for i in 0..5 {
        w.every_minute(&format!("jobs/j{i}"));
    }
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let children: Vec<_> = (0..10)
        .map(|_| w.once_at("2026-01-01T00:01:30Z").spawn())
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(w.invocations().len(), 5);
    let runs = w.runs();
    assert_eq!(runs.len(), 5);
    let mut jobs: Vec<String> = runs
        .iter()
        .map(|n| meta(n, "parent_job_path").as_str().unwrap().to_string())
        .collect();
    jobs.sort();
    assert_eq!(
        jobs,
        ["jobs/j0", "jobs/j1", "jobs/j2", "jobs/j3", "jobs/j4"]
    );
}

#[test]
fn parallel_up_to_max_concurrent_jobs() {
    let w = World::with_claude("parallel", FakeClaude::new().prints("x").sleeps(0.5));
    w.set_config("max_concurrent_jobs", Value::from(3));
    for i in 0..6 {
        w.every_minute(&format!("jobs/p{i}"));
    }
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let ran = w.once_at("2026-01-01T00:01:30Z").run().success();
    assert!(
        ran.stdout()
            .ends_with("done: total=6 ok=6 failed=0 skipped=0\n")
    );
    // Each invocation records its start and end; at no instant were more
    // than 3 running, and at some instant 3 were.
    let mut events: Vec<(std::time::SystemTime, i32)> = Vec::new();
    for call in w.invocations() {
        events.push((
            std::fs::metadata(call.dir.join("argv"))
                .unwrap()
                .modified()
                .unwrap(),
            1,
        ));
        events.push((
            std::fs::metadata(call.dir.join("finished"))
                .unwrap()
                .modified()
                .unwrap(),
            -1,
        ));
    }
    events.sort();
    let (mut now, mut peak) = (0, 0);
    for (_, d) in events {
        now += d;
        peak = peak.max(now);
    }
    assert_eq!(peak, 3);
}

#[test]
fn vault_down_at_write_time_goes_to_the_outbox_and_is_delivered_once() {
    let w = World::new("outbox");
    w.every_minute("jobs/a");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.vault.set_fault(Route::Create, Fault::Status(503), None);
    let ran = w.once_at("2026-01-01T00:01:30Z").run().success();
    assert!(
        ran.stdout()
            .contains("ok: jobs/a -> queued in the outbox ("),
        "{}",
        ran.stdout()
    );
    assert!(w.runs().is_empty());
    let queued = w.outbox();
    assert_eq!(queued.len(), 1);
    let entry: Value = serde_json::from_slice(&std::fs::read(&queued[0]).unwrap()).unwrap();
    assert_eq!(entry["note"]["content"], "the answer");
    // Three tries, then queued.
    let creates = w
        .vault
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(creates, 3);
    // Still down: the next pass keeps it.
    w.once_at("2026-01-01T00:01:40Z").run().success();
    assert_eq!(w.outbox().len(), 1);
    w.vault.clear_faults();
    w.once_at("2026-01-01T00:01:50Z")
        .run()
        .success()
        .stderr_has("outbox: delivered run");
    assert!(w.outbox().is_empty());
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].content, "the answer");
    w.once_at("2026-01-01T00:01:55Z").run().success();
    assert_eq!(w.runs().len(), 1, "delivered twice");
}

#[test]
fn the_outbox_goes_out_before_the_listing_even_when_the_listing_fails() {
    let w = World::new("outbox-first");
    w.every_minute("jobs/a");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.vault.set_fault(Route::Create, Fault::Status(503), None);
    w.once_at("2026-01-01T00:01:30Z").run().success();
    assert_eq!(w.outbox().len(), 1);
    w.vault.clear_faults();
    w.vault.set_fault(Route::List, Fault::Status(500), None);
    w.once_at("2026-01-01T00:01:40Z")
        .run()
        .status(2)
        .stderr_has("outbox: delivered run");
    assert!(w.outbox().is_empty());
    assert_eq!(w.runs().len(), 1);
}

#[test]
fn only_on_an_invalid_job_says_why() {
    let w = World::new("only-invalid");
    w.vault
        .add_job("jobs/bad", "---\ntags: [job]\nschedule: every day\n---\nhi");
    w.runner()
        .args(["once", "--only", "jobs/bad"])
        .run()
        .status(1)
        .stdout_has("invalid job at jobs/bad: schedule: ")
        .stdout_has("model: required");
}

#[test]
fn a_lost_answer_is_not_a_second_note() {
    // The vault stored the note but the answer never came: the retry gets
    // 409, reads the note back, sees its own run id, and stops.
    let w = World::new("lost-answer");
    w.every_minute("jobs/a");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.vault
        .set_fault(Route::Create, Fault::CloseAfterStore, Some(1));
    w.once_at("2026-01-01T00:01:30Z").run().success();
    assert_eq!(w.runs().len(), 1);
    assert!(w.outbox().is_empty());
}

#[test]
fn a_taken_path_gets_the_run_id_suffix() {
    let w = World::new("conflict");
    w.vault.add_job(
        "jobs/a",
        &job("\"* * * * *\"", "output_path: \"reports/{{date}}\"\n"),
    );
    w.vault
        .add_note("reports/2026-01-01", "someone else's", &[], None);
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.once_at("2026-01-01T00:01:30Z").run().success();
    let run = w.runs().remove(0);
    let run_id = meta(&run, "run_id");
    assert_eq!(
        run.path.unwrap(),
        format!("reports/2026-01-01-{}", &run_id.as_str().unwrap()[..8])
    );
    assert_eq!(
        w.vault.note_at("reports/2026-01-01").unwrap().content,
        "someone else's"
    );
}

#[test]
fn a_killed_runner_leaves_an_interrupted_note_on_the_next_pass() {
    let w = World::with_claude("killed", FakeClaude::new().prints("never").sleeps(60.0));
    w.every_minute("jobs/slow");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let mut child = w.once_at("2026-01-01T00:01:30Z").spawn();
    assert!(eventually(Duration::from_secs(10), || w
        .invocations()
        .len()
        == 1));
    child.kill().unwrap();
    child.wait().unwrap();
    // The agent outlives a SIGKILLed runner...
    let call = fake_claude::only_invocation(&w.claude_dir);
    let pid = call.pid();
    assert!(fake_claude::alive(pid));
    let ran = w.once_at("2026-01-01T00:01:40Z").run().success();
    assert!(ran.stderr().contains("was interrupted"), "{}", ran.stderr());
    // ...until the next pass stops it.
    assert!(ran.stderr().contains("left running by"), "{}", ran.stderr());
    assert!(
        !fake_claude::alive(pid),
        "the orphaned agent survived the next pass"
    );
    let note = w.runs().remove(0);
    assert!(note.path.as_deref().unwrap().ends_with(".failed"));
    assert_eq!(
        meta(&note, "run_error"),
        "interrupted: runner stopped before the run finished"
    );
    assert_eq!(meta(&note, "run_trigger"), "schedule");
    assert_eq!(meta(&note, "run_scheduled_for"), "2026-01-01T00:01:00Z");
    let state = w.state();
    assert!(state["jobs"]["jobs/slow"].get("running").is_none());
    assert_eq!(state["jobs"]["jobs/slow"]["last_run"]["status"], "failed");
    // Settled once: the next pass writes nothing more.
    w.once_at("2026-01-01T00:01:50Z").run().success();
    assert_eq!(w.runs().len(), 1);
}

#[test]
fn timeout_kills_a_child_that_ignores_sigterm_and_its_grandchild() {
    let w = World::with_claude(
        "kill-tree",
        FakeClaude::new()
            .ignores_sigterm()
            .leaves_grandchild()
            .sleeps(60.0),
    );
    w.vault
        .add_job("jobs/stubborn", &job("\"* * * * *\"", "timeout: 0.5\n"));
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let started = Instant::now();
    w.once_at("2026-01-01T00:01:30Z").run().status(1);
    // SIGTERM at 0.5 s is ignored; SIGKILL 5 s later ends it.
    assert!(started.elapsed() < Duration::from_secs(20));
    let call = fake_claude::only_invocation(&w.claude_dir);
    let pid = call.pid();
    let grandchild: i32 = std::fs::read_to_string(call.dir.join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!fake_claude::alive(pid), "the agent survived");
    assert!(!fake_claude::alive(grandchild), "the grandchild survived");
    assert_eq!(meta(&w.runs()[0], "run_exit_code"), 124);
}

#[test]
fn a_grandchild_left_after_a_normal_exit_is_stopped() {
    let w = World::with_claude(
        "leftover",
        FakeClaude::new().prints("done").leaves_grandchild(),
    );
    w.every_minute("jobs/a");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.once_at("2026-01-01T00:01:30Z").run().success();
    let call = fake_claude::only_invocation(&w.claude_dir);
    let grandchild: i32 = std::fs::read_to_string(call.dir.join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!fake_claude::alive(grandchild));
    assert_eq!(w.runs()[0].content, "done");
}

#[test]
fn a_big_prompt_does_not_deadlock_against_a_child_that_writes_first() {
    let big = "word ".repeat(400_000); // 2 MB
    let w = World::with_claude(
        "deadlock",
        FakeClaude::new()
            .writes_before_reading(1 << 20)
            .prints("end"),
    );
    w.vault.add_job(
        "jobs/big",
        &format!("---\nschedule: \"* * * * *\"\nmodel: m\nallowed_tools: Read\n---\n{big}"),
    );
    w.once_at("2026-01-01T00:00:30Z").run().success();
    w.once_at("2026-01-01T00:01:30Z").run().success();
    let call = fake_claude::only_invocation(&w.claude_dir);
    assert_eq!(call.stdin.len(), big.len());
    assert!(w.runs()[0].content.ends_with("end"));
}

#[test]
fn a_100_mib_flood_keeps_memory_bounded_and_truncates() {
    let w = World::with_claude("flood", FakeClaude::new().floods(100 << 20));
    w.every_minute("jobs/flood");
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let ran = w
        .once_at("2026-01-01T00:01:30Z")
        .env("RUST_LOG", "debug")
        .run()
        .success();
    let max_rss_kib = crate::support::peak_rss_kib(&ran);
    let note = w.runs().remove(0);
    assert!(note.content.ends_with("\n[output truncated at 8 MiB]"));
    assert_eq!(meta(&note, "run_output_truncated"), true);
    assert!(note.content.len() <= (8 << 20) + 40);
    eprintln!("peak RSS under a 100 MiB flood: {max_rss_kib} KiB");
    // 8 MiB kept, plus the note's JSON on its way to the vault: well under
    // 48 MiB (about 31 MiB in a debug build). Unbounded would be over 100.
    assert!(
        max_rss_kib < 48 * 1024,
        "peak RSS {max_rss_kib} KiB\n{}",
        ran.stderr()
    );
}

#[test]
fn only_runs_one_job_now_even_manual_or_disabled() {
    let w = World::new("only");
    w.vault
        .add_job("jobs/manual", &job("manual", "disabled: true\n"));
    w.every_minute("jobs/other");
    let ran = w
        .once_at("2026-05-05T10:20:00Z")
        .args(["--only", "jobs/manual", "--date", "2026-01-31"])
        .run()
        .success();
    assert!(
        ran.stdout()
            .contains("ok: jobs/manual -> jobs/runs/manual/"),
        "{}",
        ran.stdout()
    );
    let call = fake_claude::only_invocation(&w.claude_dir);
    assert_eq!(
        String::from_utf8_lossy(&call.stdin),
        "Write the brief for 2026-01-31.\n"
    );
    let note = w.runs().remove(0);
    assert_eq!(meta(&note, "run_trigger"), "manual");
    assert!(note.metadata.unwrap().get("run_scheduled_for").is_none());
    w.once_at("2026-05-05T10:20:00Z")
        .args(["--only", "jobs/nothing"])
        .run()
        .status(2)
        .stderr_has("no note at jobs/nothing");
}

#[test]
fn dry_run_moves_no_token_makes_no_key_and_renders_the_printed_slot() {
    let w = World::new("dry-fresh");
    w.vault.add_job(
        "jobs/brief",
        &job("\"30 6 * * *\"", "output_path: \"briefs/{{date}}\"\n"),
    );
    let config_before = std::fs::read(w.home.join("runner/config.json")).unwrap();
    let ran = w
        .once_at("2026-12-01T12:00:00Z")
        .args(["--dry-run"])
        .run()
        .success();
    // Not due now: the output path is the one of the next slot it prints.
    assert_eq!(
        ran.stdout(),
        "jobs/brief: new; next 2026-12-02T06:30:00+00:00; output briefs/2026-12-02\n"
    );
    assert_eq!(
        std::fs::read(w.home.join("runner/config.json")).unwrap(),
        config_before,
        "the plaintext token was moved"
    );
    assert!(!w.home.join("runner/master.key").exists());
    assert!(!w.home.join("runner/secrets.json").exists());
    assert!(!w.home.join("runner/state.json").exists());
}

#[test]
fn dry_run_changes_nothing_and_spawns_nothing() {
    let w = World::new("dry");
    w.every_minute("jobs/a");
    w.vault.add_job("jobs/m", &job("manual", ""));
    w.once_at("2026-01-01T00:00:30Z").run().success();
    let state_before = std::fs::read(w.home.join("runner/state.json")).unwrap();
    let ran = w
        .once_at("2026-01-01T00:01:30Z")
        .args(["--dry-run"])
        .run()
        .success();
    let out = lines(&ran);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].starts_with("jobs/a: would run (schedule, slot 2026-01-01T00:01:00+00:00); next 2026-01-01T00:02:00+00:00; output jobs/runs/a/"), "{out:?}");
    assert!(
        out[1].starts_with("jobs/m: manual; next never; output jobs/runs/m/"),
        "{out:?}"
    );
    assert!(w.invocations().is_empty());
    assert_eq!(
        std::fs::read(w.home.join("runner/state.json")).unwrap(),
        state_before
    );
    let json = w
        .once_at("2026-01-01T00:01:30Z")
        .args(["--dry-run", "--json"])
        .run()
        .success()
        .json();
    assert_eq!(json["jobs"][0]["decision"], "would run");
    assert_eq!(json["jobs"][0]["slot"], "2026-01-01T00:01:00Z");
    // And the real pass still runs it.
    w.once_at("2026-01-01T00:01:30Z").run().success();
    assert_eq!(w.invocations().len(), 1);
}

#[test]
fn json_output_is_alone_on_stdout() {
    let w = World::new("json");
    w.every_minute("jobs/a");
    w.vault.add_job("jobs/bad", "---\nmodel: m\n---\n");
    w.once_at("2026-01-01T00:00:30Z")
        .args(["--json"])
        .run()
        .status(1);
    let ran = w
        .once_at("2026-01-01T00:01:30Z")
        .args(["--json"])
        .run()
        .status(1);
    let doc = ran.json();
    assert_eq!(
        (
            doc["total"].as_u64(),
            doc["ok"].as_u64(),
            doc["failed"].as_u64(),
            doc["skipped"].as_u64()
        ),
        (Some(2), Some(1), Some(1), Some(0))
    );
    let jobs = doc["jobs"].as_array().unwrap();
    let ok = jobs.iter().find(|j| j["path"] == "jobs/a").unwrap();
    assert_eq!(ok["result"], "ok");
    assert_eq!(ok["trigger"], "schedule");
    assert_eq!(ok["scheduled_for"], "2026-01-01T00:01:00Z");
    assert_eq!(ok["queued"], false);
    let bad = jobs.iter().find(|j| j["path"] == "jobs/bad").unwrap();
    assert_eq!(bad["result"], "invalid");
}

#[test]
fn vault_unreachable_while_listing_is_fatal() {
    let w = World::new("down");
    w.vault.stop();
    w.once_at("2026-01-01T00:00:30Z")
        .run()
        .status(2)
        .stderr_has("listing notes tagged job: vault unreachable at ")
        .stdout_empty();
    w.vault.restart();
    w.vault.set_fault(Route::List, Fault::Status(401), None);
    w.once_at("2026-01-01T00:00:30Z")
        .run()
        .status(2)
        .stderr_has("vault answered 401");
}

#[test]
fn listing_pages_and_deduplicates() {
    let w = World::new("pages");
    for i in 0..1203 {
        w.vault
            .add_job(&format!("jobs/n{i:04}"), &job("manual", ""));
    }
    let doc = w.runner().args(["jobs", "--json"]).run().success().json();
    assert_eq!(doc["jobs"].as_array().unwrap().len(), 1203);
    let offsets: Vec<String> = w
        .vault
        .requests()
        .iter()
        .filter_map(|r| r.query_param("offset"))
        .collect();
    assert_eq!(offsets, ["0", "500", "1000"]);
    assert!(
        w.vault
            .requests()
            .iter()
            .all(|r| r.query_param("limit").as_deref() == Some("500")
                && r.query_param("tag").as_deref() == Some("job")
                && r.query_param("include_content").as_deref() == Some("true"))
    );
}

#[test]
fn jobs_prints_the_table() {
    let w = World::new("jobs-table");
    w.vault
        .add_job("jobs/a", &job("\"0 8 * * *\"", "timezone: Europe/Paris\n"));
    w.vault.add_job("jobs/bad", "---\nschedule: 0 8\n---\n");
    w.every_minute("jobs/b");
    w.once_at("2026-01-01T00:00:30Z").run().status(1);
    w.once_at("2026-01-01T00:01:30Z").run().status(1);
    let ran = w
        .runner()
        .env("PARACHUTE_RUNNER_NOW", "2026-01-01T00:02:00Z")
        .args(["jobs"])
        .run()
        .status(1);
    let out = ran.stdout();
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("PATH"), "{out}");
    assert!(
        rows[1].starts_with("jobs/a ")
            && rows[1].contains("0 8 * * *")
            && rows[1].contains("Europe/Paris")
            && rows[1].contains("2026-01-01T08:00:00+01:00"),
        "{out}"
    );
    assert!(
        rows[2].starts_with("jobs/b ")
            && rows[2].contains("2026-01-01T00:03:00+00:00")
            && rows[2].contains("2026-01-01T00:01:30+00:00")
            && rows[2].contains(" ok"),
        "{out}"
    );
    assert!(
        rows[3].starts_with("jobs/bad ") && rows[3].contains("schedule: expected 5-field cron"),
        "{out}"
    );
}

#[test]
fn a_stalled_vault_times_out_with_a_clear_error() {
    let w = World::new("stall");
    w.vault
        .set_fault(Route::List, Fault::Stall(Duration::from_secs(10)), None);
    // The 1 s request timeout ends the 10 s stall (a stalled pass would
    // run into the stall instead).
    let ran = w
        .once_at("2026-01-01T00:00:30Z")
        .env("PARACHUTE_RUNNER_HTTP_TIMEOUT", "1")
        .run()
        .status(2)
        .stderr_has(&format!(
            "listing notes tagged job: vault unreachable at {}",
            w.vault.url()
        ));
    assert!(ran.stderr().contains("timed out"), "{}", ran.stderr());
}

#[test]
fn an_https_vault_url_speaks_tls() {
    // The fake vault speaks plain HTTP: the TLS handshake fails, which shows
    // the https URL went through rustls.
    let w = World::new("https");
    w.set_config(
        "vault_url",
        Value::from(w.vault.url().replace("http://", "https://")),
    );
    let ran = w.once_at("2026-01-01T00:00:30Z").run().status(2);
    assert!(
        ran.stderr()
            .contains("listing notes tagged job: vault unreachable at https://"),
        "{}",
        ran.stderr()
    );
    assert!(!ran.stderr().contains(TOKEN));
    assert!(
        w.vault.requests().is_empty(),
        "no plaintext request may reach the server"
    );
}

#[test]
fn vault_error_bodies_reach_the_message() {
    let w = World::new("error-body");
    w.set_config("vault_token", Value::from("pvt_wrong"));
    w.once_at("2026-01-01T00:00:30Z")
        .run()
        .status(2)
        .stderr_has("listing notes tagged job: vault answered 401: Unauthorized: Invalid API key");
}

#[test]
fn an_edited_note_is_checked_again_and_an_unchanged_one_is_not_parsed_twice() {
    let w = World::new("edited");
    w.vault.add_job("jobs/e", &job("\"0 8 * * *\"", ""));
    w.once_at("2026-01-01T07:00:00Z").run().success();
    let hash = w.state()["jobs"]["jobs/e"]["note"]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    // Broken now: reported, and the entry is kept.
    w.vault.set_content(
        "jobs/e",
        "---\nschedule: \"0 8 * *\"\nmodel: m\nallowed_tools: Read\n---\n",
    );
    w.once_at("2026-01-01T07:10:00Z")
        .run()
        .status(1)
        .stdout_has("invalid job at jobs/e: schedule:");
    assert_eq!(w.state()["jobs"]["jobs/e"]["note"]["hash"], hash.as_str());
    // Fixed with another schedule: a new job from its next slot.
    w.vault
        .set_content("jobs/e", &job("\"0 9 * * *\"", "disabled: true\n"));
    w.once_at("2026-01-01T07:20:00Z").run().success();
    let entry = &w.state()["jobs"]["jobs/e"];
    assert_eq!(entry["schedule"], "0 9 * * *");
    assert_eq!(entry["note"]["disabled"], true);
    assert_ne!(entry["note"]["hash"], hash.as_str());
    w.once_at("2026-01-01T09:00:30Z").run().success();
    assert!(w.invocations().is_empty(), "disabled");
    // Enabled again (content changes): runs at its slot.
    w.vault.set_content("jobs/e", &job("\"0 9 * * *\"", ""));
    w.once_at("2026-01-02T09:00:30Z").run().success();
    assert_eq!(w.invocations().len(), 1);
}
