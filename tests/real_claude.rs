//! The real `claude` CLI (the pinned version, `support::real_claude`) driven
//! THROUGH THE RUNNER (`once --only …`, `serve`) against the fake Anthropic
//! API: permissions (SPEC §6.2), the note's stream metadata and judgement
//! (§6.3), retries (§6.5) and stopping (§6.2, §9.1) with the real agent.
//! Skipped, with a notice, on a machine without npm.
//!
//! Each test has its own fake API, runner home, CLI HOME (with its
//! CLAUDE_CODE_TMPDIR) and folder vault, so they run in parallel. The
//! runner gets the CLI's environment (`real_claude::claude_env`); it passes
//! ANTHROPIC_*, CLAUDE_*, HOME and PATH on to the agent. Nothing sleeps to
//! let something happen: tests wait for the runner to exit, for requests,
//! or for processes to appear in /proc, with limits that only bound a
//! failure.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::fake_anthropic::{FakeAnthropic, Reply, Usage};
use crate::support::fake_hub::FakeHub;
use crate::support::real_claude::{claude_bin, claude_env, version};
use crate::support::world::{World, eventually};
use crate::support::{NoteFile, Ran, Runner, TempDir};

/// Bounds every wait; only a broken run gets near it.
const LIMIT: Duration = Duration::from_secs(60);
const MODEL: &str = "claude-sonnet-4-5";

/// One test's world: the CLI, a fake API, a runner home, the CLI's HOME and
/// a folder vault.
struct Lab {
    /// The real CLI.
    cli: PathBuf,
    /// What the runner starts as `claude_bin`: the CLI or a wrapper.
    agent: PathBuf,
    api: FakeAnthropic,
    root: TempDir,
}

impl Lab {
    /// `None` (skip) when the CLI cannot be installed for lack of npm.
    fn new(name: &str) -> Option<Lab> {
        let cli = claude_bin()?;
        let root = TempDir::new(&format!("rc-{name}"));
        for dir in ["home", "parachute", "notes/jobs", "run"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("notes/notes.txt"), "a note\n").unwrap();
        Some(Lab {
            agent: cli.clone(),
            cli,
            api: FakeAnthropic::start(),
            root,
        })
    }

    fn notes(&self) -> PathBuf {
        self.root.join("notes")
    }

    /// A manual job `jobs/<name>` of the folder vault.
    fn job(&self, name: &str, allowed_tools: &str, extra: &str, prompt: &str) -> String {
        std::fs::write(
            self.notes().join(format!("jobs/{name}.md")),
            format!(
                "---\ntags: [job]\nschedule: manual\nmodel: {MODEL}\nallowed_tools: {allowed_tools}\n{extra}---\n{prompt}\n"
            ),
        )
        .unwrap();
        format!("jobs/{name}")
    }

    /// Makes `claude_bin` a wrapper script whose body is `body` (`$CLI`
    /// is the real CLI).
    fn wrap(&mut self, body: &str) {
        let path = self.root.join("run/claude-wrapper");
        std::fs::write(
            &path,
            format!("#!/bin/sh\nCLI={}\n{body}\n", quote(&self.cli)),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.agent = path;
    }

    /// The runner with the CLI's environment and `claude_bin` set.
    fn runner(&self) -> Runner {
        let mut r = Runner::new()
            .env("PARACHUTE_HOME", self.root.join("parachute"))
            .env("PARACHUTE_RUNNER_CLAUDE_BIN", &self.agent);
        for (k, v) in claude_env(&self.root.join("home"), &self.api.url()) {
            r = r.env(&k, v);
        }
        r
    }

    /// `once --vault-dir <notes> --only <job>`.
    fn once(&self, job: &str) -> Runner {
        self.runner()
            .args([
                "once".as_ref(),
                "--vault-dir".as_ref(),
                self.notes().as_os_str(),
            ])
            .args(["--only", job])
    }

    /// The notes written for `jobs/<name>`.
    fn notes_of(&self, job: &str) -> Vec<NoteFile> {
        let name = job.rsplit('/').next().unwrap();
        NoteFile::all_in(&self.notes().join("jobs/runs").join(name))
    }

    /// The one note written for `job`.
    #[track_caller]
    fn note(&self, job: &str, ran: &Ran) -> NoteFile {
        let mut notes = self.notes_of(job);
        assert_eq!(
            notes.len(),
            1,
            "one note expected\n--- stdout\n{}\n--- stderr\n{}",
            ran.stdout(),
            ran.stderr()
        );
        notes.remove(0)
    }
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn dump(note: &NoteFile, ran: &Ran) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        note.dump(),
        ran.stdout(),
        ran.stderr()
    )
}

fn tool_names(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The Bash tool call of `touch <marker>`, then a text answer.
fn bash_touch_then_text(lab: &Lab, marker: &Path) {
    lab.api.push(Reply::tool_use(
        "Bash",
        json!({ "command": format!("touch {}", marker.display()), "description": "marker" }),
    ));
    lab.api.push(Reply::text("finished"));
}

#[test]
fn real_claude_bash_outside_allowed_tools_is_not_even_offered() {
    let Some(lab) = Lab::new("bash-read") else {
        return;
    };
    let marker = lab.root.join("run/PWNED");
    bash_touch_then_text(&lab, &marker);
    let job = lab.job("bash-read", "Read", "", "make a marker");
    let ran = lab.once(&job).run();
    let note = lab.note(&job, &ran);
    let d = dump(&note, &ran);
    assert!(!marker.exists(), "Bash ran\n{d}");
    // `--tools Read`: the model was offered Read only; its Bash call found
    // no such tool (not a denial), and its answer is the note.
    let turns = lab.api.wait_for_message_requests(2, LIMIT);
    assert_eq!(tool_names(&turns[0].body), ["Read"], "{d}");
    assert_eq!(ran.code(), Some(0), "{d}");
    assert!(!note.is_failed(), "{d}");
    assert_eq!(note.body, "finished\n", "{d}");
    assert!(note.meta("run_permission_denials").is_null(), "{d}");
}

#[test]
fn real_claude_bash_outside_its_allowed_pattern_is_denied() {
    let Some(lab) = Lab::new("bash-ls") else {
        return;
    };
    let marker = lab.root.join("run/PWNED");
    bash_touch_then_text(&lab, &marker);
    let job = lab.job("bash-ls", "[\"Bash(ls)\"]", "", "make a marker");
    let ran = lab.once(&job).run();
    let note = lab.note(&job, &ran);
    let d = dump(&note, &ran);
    assert!(!marker.exists(), "Bash ran\n{d}");
    // Bash is offered (`--tools Bash`), `touch` is not `ls`: denied by
    // dontAsk and reported.
    let turns = lab.api.wait_for_message_requests(2, LIMIT);
    assert_eq!(tool_names(&turns[0].body), ["Bash"], "{d}");
    assert_eq!(note.meta("run_permission_denials"), &json!(["Bash"]), "{d}");
    // The agent still answered, so SPEC §6.3 makes it a success: its body is
    // the answer (the `## Denied tools` section is a failure note's).
    assert_eq!(ran.code(), Some(0), "{d}");
    assert!(!note.is_failed(), "{d}");
    assert_eq!(note.body, "finished\n", "{d}");
}

/// The example MCP server, built by plain `cargo test` beside the binary.
fn mcp_lab() -> PathBuf {
    let bin = Path::new(crate::support::BIN);
    let path = bin.parent().unwrap().join("examples/mcp_lab");
    assert!(
        path.is_file(),
        "{} missing: plain `cargo test` builds examples, `cargo test NAME` and \
         `cargo test --test integration` do not (run `cargo build --example mcp_lab`)",
        path.display()
    );
    path
}

#[test]
fn real_claude_mcp_tool_outside_allowed_tools_is_denied() {
    let Some(mut lab) = Lab::new("mcp") else {
        return;
    };
    // The runner hands the agent its own MCP config only (an empty one for
    // a folder vault, under --strict-mcp-config). The wrapper keeps the
    // runner's argv as it is and adds a second --mcp-config with the lab
    // server: the CLI merges the two files.
    let log = lab.root.join("run/mcp-lab.log");
    let lab_json = lab.root.join("run/lab.json");
    let config = json!({ "mcpServers": { "lab": {
        "type": "stdio",
        "command": mcp_lab(),
        "args": [],
        "env": { "MCP_LAB_LOG": log },
    }}});
    std::fs::write(&lab_json, config.to_string()).unwrap();
    let argv = lab.root.join("run/argv");
    lab.wrap(&format!(
        "printf '%s\\n' \"$@\" > {}\nexec \"$CLI\" \"$@\" --mcp-config {}",
        quote(&argv),
        quote(&lab_json)
    ));
    lab.api
        .push(Reply::tool_use("mcp__lab__query", json!({ "q": "status" })));
    lab.api
        .push(Reply::tool_use("mcp__lab__delete", json!({ "id": "42" })));
    lab.api.push(Reply::text("done"));
    let job = lab.job(
        "mcp",
        "[Read, mcp__lab__query]",
        "",
        "query, then delete record 42",
    );
    let ran = lab.once(&job).run();
    let note = lab.note(&job, &ran);
    let d = dump(&note, &ran);
    // The runner's own argv reached the CLI.
    let args: Vec<String> = std::fs::read_to_string(&argv)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let after = |flag: &str| {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1].clone()
    };
    assert!(
        args.contains(&"--strict-mcp-config".to_string()),
        "{args:?}"
    );
    assert_eq!(after("--allowedTools"), "Read,mcp__lab__query", "{args:?}");
    assert_eq!(after("--tools"), "Read", "{args:?}");
    assert_eq!(after("--permission-mode"), "dontAsk", "{args:?}");
    // query ran, delete did not and is reported.
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(calls, "query {\"q\":\"status\"}\n", "{d}");
    assert_eq!(
        note.meta("run_permission_denials"),
        &json!(["mcp__lab__delete"]),
        "{d}"
    );
    // Both lab tools were offered; the lab server was connected, so the run
    // is the agent's answer.
    let turns = lab.api.wait_for_message_requests(3, LIMIT);
    let mut offered = tool_names(&turns[0].body);
    offered.sort();
    assert_eq!(offered, ["Read", "mcp__lab__delete", "mcp__lab__query"]);
    assert_eq!(ran.code(), Some(0), "{d}");
    assert_eq!(note.body, "done\n", "{d}");
}

#[test]
fn real_claude_cost_and_tokens_land_in_the_note() {
    let Some(mut lab) = Lab::new("cost") else {
        return;
    };
    // The wrapper keeps a copy of the CLI's stream, to compare the note
    // with what the CLI's result line said.
    let stream = lab.root.join("run/stream.jsonl");
    lab.wrap(&format!(
        "\"$CLI\" \"$@\" > {s}\ncode=$?\ncat {s}\nexit $code",
        s = quote(&stream)
    ));
    let usage = Usage {
        input_tokens: 1234,
        output_tokens: 321,
    };
    lab.api
        .push_with_usage(Reply::text("the costed answer"), usage);
    let job = lab.job("cost", "Read", "", "answer");
    let ran = lab.once(&job).run();
    let note = lab.note(&job, &ran);
    let d = dump(&note, &ran);
    assert_eq!(ran.code(), Some(0), "{d}");
    assert_eq!(note.body, "the costed answer\n", "{d}");
    let lines: Vec<Value> = std::fs::read_to_string(&stream)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let result = lines
        .iter()
        .find(|l| l["type"] == "result")
        .expect("result");
    let init = lines
        .iter()
        .find(|l| l["type"] == "system" && l["subtype"] == "init")
        .expect("init");
    let cost = note.meta("run_cost_usd").as_f64().unwrap_or(0.0);
    assert!(cost > 0.0, "{d}");
    assert_eq!(Some(cost), result["total_cost_usd"].as_f64(), "{d}");
    // Sonnet 4.5: $3 / $15 per million tokens.
    let priced = 1234.0 * 3e-6 + 321.0 * 15e-6;
    assert!((cost - priced).abs() < 1e-9, "{cost} vs {priced}");
    assert_eq!(
        note.meta("run_usage"),
        &json!({
            "input_tokens": 1234,
            "output_tokens": 321,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }),
        "{d}"
    );
    assert_eq!(note.meta("run_num_turns"), &result["num_turns"], "{d}");
    assert_eq!(note.meta("run_num_turns"), 1, "{d}");
    assert_eq!(note.meta("run_session_id"), &result["session_id"], "{d}");
    assert!(
        note.meta("run_session_id")
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(note.meta("run_agent_version"), version().as_str(), "{d}");
    assert_eq!(note.meta("run_agent_version"), &init["claude_code_version"]);
}

/// A 529 then a success, with `retries: 2`.
fn overloaded_then_ok() -> Option<(Lab, Ran, NoteFile)> {
    let lab = Lab::new("retry")?;
    lab.api
        .push(Reply::error(529, "overloaded_error", "Overloaded"));
    lab.api.push(Reply::text("recovered"));
    let job = lab.job("retry", "Read", "retries: 2\nretry_delay: 0.05\n", "answer");
    let ran = lab.once(&job).run();
    let note = lab.note(&job, &ran);
    Some((lab, ran, note))
}

#[test]
fn real_claude_529_then_success_is_one_note_with_two_attempts() {
    let Some((lab, ran, note)) = overloaded_then_ok() else {
        return;
    };
    let d = dump(&note, &ran);
    assert_eq!(ran.code(), Some(0), "{d}");
    assert!(!note.is_failed(), "{d}");
    assert_eq!(note.body, "recovered\n", "{d}");
    assert_eq!(note.meta("run_attempts"), 2, "{d}");
    // CLAUDE_CODE_MAX_RETRIES=0: the CLI did not retry, the runner did.
    assert_eq!(lab.api.message_requests().len(), 2, "{d}");
}

#[test]
fn real_claude_529_then_success_names_the_529_in_run_attempt_errors() {
    let Some((_lab, ran, note)) = overloaded_then_ok() else {
        return;
    };
    let d = dump(&note, &ran);
    assert_eq!(note.meta("run_attempts"), 2, "{d}");
    let errors = note.meta("run_attempt_errors").as_array().cloned();
    let errors = errors.unwrap_or_else(|| panic!("no run_attempt_errors\n{d}"));
    assert_eq!(errors.len(), 1, "{d}");
    let first = errors[0].as_str().unwrap_or("");
    assert!(first.starts_with("claude -p: API error 529: "), "{d}");
}

#[test]
fn real_claude_401_is_a_failed_note_without_retry() {
    let Some(lab) = Lab::new("e401") else { return };
    lab.api.push(Reply::error(
        401,
        "authentication_error",
        "invalid x-api-key",
    ));
    let job = lab.job("e401", "Read", "retries: 2\nretry_delay: 0.05\n", "hello");
    let ran = lab.once(&job).run();
    let note = lab.note(&job, &ran);
    let d = dump(&note, &ran);
    assert_eq!(ran.code(), Some(1), "{d}");
    assert!(note.is_failed(), "{d}");
    let error = note.meta("run_error").as_str().unwrap_or("");
    assert!(error.starts_with("claude -p: API error 401: "), "{d}");
    assert_eq!(note.meta("run_api_error_status"), 401, "{d}");
    assert_eq!(note.meta("run_attempts"), 1, "{d}");
    assert!(note.meta("run_attempt_errors").is_null(), "{d}");
    assert!(
        note.body.starts_with(&format!(
            "# job-run failed\n\n**Reason:** {error}\n\n## Agent said\n\n"
        )),
        "{d}"
    );
    assert_eq!(lab.api.message_requests().len(), 1, "{d}");
}

#[test]
fn real_claude_max_turns_stops_a_tool_loop() {
    let Some(lab) = Lab::new("max-turns") else {
        return;
    };
    for _ in 0..3 {
        lab.api.push(Reply::tool_use(
            "Read",
            json!({ "file_path": lab.notes().join("notes.txt") }),
        ));
    }
    let job = lab.job("max-turns", "Read", "max_turns: 1\n", "read forever");
    let ran = lab.once(&job).run();
    let note = lab.note(&job, &ran);
    let d = dump(&note, &ran);
    assert_eq!(ran.code(), Some(1), "{d}");
    assert!(note.is_failed(), "{d}");
    assert_eq!(
        note.meta("run_error"),
        "claude -p: stopped at the turn limit (1)",
        "{d}"
    );
    assert_eq!(note.meta("run_exit_code"), 1, "{d}");
}

/// Live processes whose command line holds `marker` (zombies have none).
fn procs_with(marker: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(marker) && crate::support::fake_claude::alive(pid) {
            out.push((pid, cmd.trim().to_string()));
        }
    }
    out
}

/// The live `sleep <arg>` processes (argv exactly that).
fn sleeps(arg: &str) -> Vec<(i32, String)> {
    let argv = format!("sleep {arg}");
    procs_with(arg)
        .into_iter()
        .filter(|(_, c)| *c == argv)
        .collect()
}

/// Kills, at the end of a test that failed half-way, the processes it
/// started (found by their unique marker).
struct Reap(String);

impl Drop for Reap {
    fn drop(&mut self) {
        for (pid, _) in procs_with(&self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// A `sleep` argument no other process has: `<base><our pid><n>`.
fn unique_sleep(base: &str, n: u32) -> String {
    format!("{base}{}{n}", std::process::id())
}

/// Waits for `child` (at most LIMIT, then kills it and panics).
fn wait_child(mut child: Child, what: &str) -> std::process::Output {
    let deadline = Instant::now() + LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still running after {LIMIT:?}\n--- stderr\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// One `once` of a job with `timeout` whose Bash tool sleeps: checks the
/// note and that nothing is left, and returns whether the sleep was seen
/// running before the runner stopped the run. `cgroup`: the runner's
/// choice of containment (where it can make cgroups), else forced off
/// (the child-subreaper tracking every unprivileged runner uses).
fn time_out_a_bash_sleep(n: u32, timeout: u64, cgroup: bool) -> Option<bool> {
    let lab = Lab::new(&format!("timeout-{n}"))?;
    let arg = unique_sleep("987.654", n);
    let _reap = Reap(arg.clone());
    lab.api.push(Reply::tool_use(
        "Bash",
        json!({ "command": format!("sleep {arg}"), "description": "wait", "timeout": 600000 }),
    ));
    lab.api.push(Reply::text("slept"));
    let job = lab.job("timeout", "Bash", &format!("timeout: {timeout}\n"), "sleep");
    let mut once = lab.once(&job).env("RUST_LOG", "debug");
    if !cgroup {
        once = once.env("PARACHUTE_RUNNER_CGROUP", "off");
    }
    let child = once.spawn();
    let waiter = thread::spawn(move || wait_child(child, "once"));
    let mut seen = Vec::new();
    while !waiter.is_finished() {
        if seen.is_empty() {
            seen = sleeps(&arg);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let ran = Ran(waiter.join().unwrap());
    // As soon as `once` is back: nothing of the run is left.
    let left = procs_with(&arg);
    let note = lab.note(&job, &ran);
    let d = dump(&note, &ran);
    assert!(left.is_empty(), "left running: {left:?}\n{d}");
    assert_eq!(ran.code(), Some(1), "{d}");
    assert!(note.is_failed(), "{d}");
    assert_eq!(
        note.meta("run_error"),
        &json!(format!("claude -p timed out after {}ms", timeout * 1000)),
        "{d}"
    );
    assert_eq!(note.meta("run_exit_code"), 124, "{d}");
    let how = ran
        .stderr()
        .lines()
        .find(|l| l.contains("agents run in cgroups") || l.contains("agents are tracked"))
        .map(String::from)
        .unwrap_or_default();
    if !cgroup {
        assert!(how.contains("child subreaper"), "{d}");
    }
    if !seen.is_empty() {
        eprintln!("timeout {timeout}s ({how}): stopped the Bash tool's {seen:?}");
    }
    Some(!seen.is_empty())
}

/// `time_out_a_bash_sleep` with 3 s, and again with 30 s if the machine
/// was too busy to reach the Bash tool in 3 s (a try that never ran the
/// sleep proves nothing).
fn time_out_a_running_bash_sleep(first: u32, cgroup: bool) {
    for (n, timeout) in [(first, 3), (first + 1, 30)] {
        match time_out_a_bash_sleep(n, timeout, cgroup) {
            None => return,
            Some(true) => return,
            Some(false) => {
                eprintln!(
                    "note: the Bash tool had not started within {timeout}s; again with more time"
                )
            }
        }
    }
    panic!("the Bash tool never started its sleep");
}

#[test]
fn real_claude_timeout_during_a_bash_sleep_leaves_no_process() {
    time_out_a_running_bash_sleep(0, true);
}

#[test]
fn real_claude_timeout_during_a_bash_sleep_leaves_no_process_without_a_cgroup() {
    time_out_a_running_bash_sleep(2, false);
}

/// A running `serve` of a folder vault, its stderr collected.
struct Serve {
    child: Option<Child>,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(lab: &Lab, hub: &FakeHub, cgroup: bool) -> Serve {
        let mut runner = lab.runner();
        if !cgroup {
            runner = runner.env("PARACHUTE_RUNNER_CGROUP", "off");
        }
        let mut child = runner
            .env("PARACHUTE_HUB_ORIGIN", hub.url())
            .args([
                "serve".as_ref(),
                "--vault-dir".as_ref(),
                lab.notes().as_os_str(),
            ])
            .args(["--port", "0", "--shutdown-timeout", "1"])
            .spawn();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("serving the admin API on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let base = rx
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("serve did not start:\n{}", log.lock().unwrap()));
        Serve {
            child: Some(child),
            base,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn post(&self, path: &str, token: &str) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(LIMIT))
            .build()
            .into();
        let mut r = agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .send(&b""[..])
            .unwrap();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            r.status().as_u16(),
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// SIGTERM, then its exit.
    fn terminate(&mut self) -> std::process::Output {
        let child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_child(child, "serve")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `serve` runs a job whose Bash tool sleeps; SIGTERM to serve: exit 0,
/// an interrupted note, nothing left. `cgroup` as in
/// `time_out_a_bash_sleep`.
fn sigterm_serve_mid_run(n: u32, cgroup: bool) {
    let Some(lab) = Lab::new("serve-term") else {
        return;
    };
    let arg = unique_sleep("876.543", n);
    let _reap = Reap(arg.clone());
    lab.api.push(Reply::tool_use(
        "Bash",
        json!({ "command": format!("sleep {arg}"), "description": "wait", "timeout": 600000 }),
    ));
    lab.api.push(Reply::text("slept"));
    let job = lab.job("serve-term", "Bash", "", "sleep");
    let hub = FakeHub::start();
    let mut serve = Serve::start(&lab, &hub, cgroup);
    let admin = hub.token("runner:admin");
    let (status, body) = serve.post("/runner/jobs/jobs%2Fserve-term/run-now?async=1", &admin);
    assert_eq!(status, 202, "{body}\n{}", serve.log());
    assert_eq!(body["status"], "started", "{body}");
    assert!(
        eventually(LIMIT, || !sleeps(&arg).is_empty()),
        "the Bash tool's sleep never ran\n{}",
        serve.log()
    );
    let out = serve.terminate();
    let log = format!("{}{}", serve.log(), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{log}");
    let left = procs_with(&arg);
    assert!(left.is_empty(), "left running: {left:?}\n{log}");
    let notes = lab.notes_of(&job);
    assert_eq!(notes.len(), 1, "{log}");
    let note = &notes[0];
    assert!(note.is_failed(), "{}\n{log}", note.dump());
    assert_eq!(
        note.meta("run_error"),
        "interrupted: runner shutting down",
        "{}\n{log}",
        note.dump()
    );
    assert_eq!(note.meta("run_exit_code"), 130, "{}", note.dump());
    assert_eq!(note.meta("run_trigger"), "http", "{}", note.dump());
}

#[test]
fn real_claude_sigterm_to_serve_mid_run_leaves_no_process_and_an_interrupted_note() {
    sigterm_serve_mid_run(0, true);
}

#[test]
fn real_claude_sigterm_to_serve_mid_run_leaves_no_process_without_a_cgroup() {
    sigterm_serve_mid_run(1, false);
}

#[test]
fn real_claude_rest_vault_without_its_mcp_server_is_a_failed_run() {
    let Some(cli) = claude_bin() else { return };
    // The tests' fake vault has no MCP endpoint (404): the CLI reports the
    // vault's HTTP MCP server `failed` and the model still answers.
    let w = World::new("rc-rest");
    w.set_config("claude_bin", json!(cli));
    let api = FakeAnthropic::start();
    api.push(Reply::text("this looks like an answer"));
    w.vault.add_job(
        "jobs/rest",
        &format!("---\nschedule: manual\nmodel: {MODEL}\nallowed_tools: [Read, \"mcp__parachute-vault-default__search\"]\n---\nsearch the vault\n"),
    );
    let cli_home = w.home.join("cli-home");
    let work = w.home.join("work");
    std::fs::create_dir_all(&cli_home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut runner = w.runner().current_dir(&work);
    for (k, v) in claude_env(&cli_home, &api.url()) {
        runner = runner.env(&k, v);
    }
    let ran = runner.args(["once", "--only", "jobs/rest"]).run();
    let runs = w.runs();
    assert_eq!(runs.len(), 1, "{}\n{}", ran.stdout(), ran.stderr());
    let note = &runs[0];
    let meta = note.metadata.clone().unwrap_or_default();
    let d = format!(
        "{note:?}\n--- stdout\n{}\n--- stderr\n{}",
        ran.stdout(),
        ran.stderr()
    );
    assert_eq!(ran.code(), Some(1), "{d}");
    assert!(
        note.path.as_deref().unwrap_or("").ends_with(".failed"),
        "{d}"
    );
    assert_eq!(
        meta["run_error"], "claude -p: vault MCP server failed",
        "{d}"
    );
    assert!(
        note.content
            .contains("## Agent said\n\nthis looks like an answer\n"),
        "{d}"
    );
    // The CLI did try the vault's MCP endpoint.
    let tried = w
        .vault
        .requests()
        .iter()
        .any(|r| r.path() == "/vault/default/mcp");
    assert!(tried, "{d}");
}
