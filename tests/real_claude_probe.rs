//! The real `claude` CLI (the pinned version, `support::real_claude`) run
//! directly, not through the runner, against the fake Anthropic API
//! (`support::fake_anthropic`): proves the harness works and pins down what
//! the runner relies on (SPEC §6.2, §6.3, §6.5, fixtures/claude-cli/). Skipped,
//! with a note, on a machine without npm.
//!
//! Each test has its own fake API, HOME and working directory, so they run
//! in parallel. Nothing sleeps to let something happen: tests wait for the
//! CLI to exit, for requests to arrive or for processes to appear in /proc,
//! with generous limits that only bound a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::TempDir;
use crate::support::fake_anthropic::{FakeAnthropic, Kind, Reply, Usage};
use crate::support::real_claude::{claude_bin, claude_env, version};

/// Bounds every wait; only a broken run gets near it.
const LIMIT: Duration = Duration::from_secs(60);
const MODEL: &str = "claude-sonnet-4-5";

/// One test's world: the CLI, a fake API, a private HOME and a working
/// directory.
struct Lab {
    bin: PathBuf,
    api: FakeAnthropic,
    root: TempDir,
}

impl Lab {
    /// `None` (skip) when the CLI cannot be installed for lack of npm.
    fn new(name: &str) -> Option<Lab> {
        let bin = claude_bin()?;
        let root = TempDir::new(&format!("claude-{name}"));
        for dir in ["home", "work", "run"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("work/notes.txt"), "a note\n").unwrap();
        let lab = Lab {
            bin,
            api: FakeAnthropic::start(),
            root,
        };
        lab.mcp_config(&json!({}));
        Some(lab)
    }

    fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// Writes `run/mcp.json` with these servers and returns its path.
    fn mcp_config(&self, servers: &Value) -> PathBuf {
        let path = self.root.join("run/mcp.json");
        let config = json!({ "mcpServers": servers });
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        path
    }

    /// The runner's argv (SPEC §6.2) for these tools and mode, then `extra`.
    fn args(&self, allowed: &str, tools: &str, mode: &str, extra: &[&str]) -> Vec<String> {
        let mcp = self.root.join("run/mcp.json");
        let mut args: Vec<String> = [
            "-p",
            "--strict-mcp-config",
            "--mcp-config",
            mcp.to_str().unwrap(),
            "--allowedTools",
            allowed,
            "--tools",
            tools,
            "--permission-mode",
            mode,
            "--model",
            MODEL,
            "--no-session-persistence",
            "--output-format",
            "stream-json",
            "--verbose",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts the CLI with the prompt on stdin (then closed) and stdout and
    /// stderr read on their own threads.
    fn spawn(&self, args: &[String], prompt: &str) -> Running {
        let mut child = Command::new(&self.bin)
            .args(args)
            .env_clear()
            .envs(claude_env(&self.home(), &self.api.url()))
            .current_dir(self.work())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let prompt = prompt.as_bytes().to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&prompt);
        });
        let stdout = Pipe::new(child.stdout.take().unwrap());
        let stderr = Pipe::new(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    fn run(&self, args: &[String], prompt: &str) -> Finished {
        self.spawn(args, prompt).wait()
    }
}

/// A pipe read to its end on its own thread; what arrived so far can be
/// awaited line by line.
struct Pipe {
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

/// The bytes read so far, and whether the pipe is closed.
type Seen = (Vec<u8>, bool);

impl Pipe {
    fn new(pipe: impl Read + Send + 'static) -> Pipe {
        let seen = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
        let shared = seen.clone();
        thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            loop {
                let mut line = Vec::new();
                let n = pipe.read_until(b'\n', &mut line).unwrap_or(0);
                let (lock, changed) = &*shared;
                let mut state = lock.lock().unwrap();
                state.0.extend_from_slice(&line);
                state.1 = n == 0;
                changed.notify_all();
                if n == 0 {
                    break;
                }
            }
        });
        Pipe { seen }
    }

    /// Waits until a complete line satisfies `check` (panics at EOF or
    /// after LIMIT).
    fn wait_for_line(&self, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + LIMIT;
        let (lock, changed) = &*self.seen;
        let mut state = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&state.0);
            if text
                .split_inclusive('\n')
                .any(|l| l.ends_with('\n') && check(l))
            {
                return;
            }
            let now = Instant::now();
            assert!(!state.1 && now < deadline, "no {what} line in:\n{text}");
            state = changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Everything, once the pipe is closed (after LIMIT: what there is).
    fn all(&self) -> Vec<u8> {
        let deadline = Instant::now() + LIMIT;
        let (lock, changed) = &*self.seen;
        let mut state = lock.lock().unwrap();
        while !state.1 && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            state = changed.wait_timeout(state, left).unwrap().0;
        }
        state.0.clone()
    }
}

struct Running {
    child: Child,
    stdout: Pipe,
    stderr: Pipe,
    started: Instant,
}

impl Running {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {}", self.pid());
    }

    /// Waits for the exit (killing the CLI after LIMIT) and its output.
    fn wait(mut self) -> Finished {
        let deadline = self.started + LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let out = self.stdout.all();
                panic!(
                    "claude still running after {LIMIT:?}\n--- stdout\n{}",
                    String::from_utf8_lossy(&out)
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        let stdout = self.stdout.all();
        let stderr = self.stderr.all();
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let lines = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not stream-json ({e}): {l}\n--- stdout\n{stdout}"))
            })
            .collect();
        Finished {
            code: status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&status),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            lines,
            elapsed,
        }
    }
}

impl Drop for Running {
    /// A test that failed half-way does not leave the CLI running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let procs = tree(self.pid());
            let _ = self.child.kill();
            let _ = self.child.wait();
            kill_groups(&procs);
        }
    }
}

struct Finished {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    lines: Vec<Value>,
    elapsed: Duration,
}

impl Finished {
    #[track_caller]
    fn status(&self, code: i32) -> &Finished {
        assert_eq!(self.code, Some(code), "exit status\n{}", self.dump());
        self
    }

    /// The CLI prints nothing on stderr in any of these cases.
    #[track_caller]
    fn quiet(&self) -> &Finished {
        assert_eq!(self.stderr, "", "stderr\n{}", self.dump());
        self
    }

    fn dump(&self) -> String {
        format!(
            "--- exit {:?} signal {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.signal, self.elapsed, self.stdout, self.stderr
        )
    }

    fn line(&self, kind: &str) -> Option<&Value> {
        self.lines.iter().find(|l| l["type"] == kind)
    }

    #[track_caller]
    fn result(&self) -> &Value {
        self.line("result")
            .unwrap_or_else(|| panic!("no result line\n{}", self.dump()))
    }

    #[track_caller]
    fn init(&self) -> &Value {
        self.lines
            .iter()
            .find(|l| l["type"] == "system" && l["subtype"] == "init")
            .unwrap_or_else(|| panic!("no init line\n{}", self.dump()))
    }

    /// The `tool_result` blocks the CLI sent back to the model.
    fn tool_results(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l["type"] == "user")
            .filter_map(|l| l.pointer("/message/content").and_then(Value::as_array))
            .flatten()
            .filter(|b| b["type"] == "tool_result")
            .collect()
    }

    fn denied(&self) -> Vec<String> {
        self.result()["permission_denials"]
            .as_array()
            .unwrap_or_else(|| panic!("no permission_denials\n{}", self.dump()))
            .iter()
            .map(|d| d["tool_name"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

fn tool_names(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .map(|t| t["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn real_claude_text_reply_is_a_result_with_cost_and_usage() {
    let Some(lab) = Lab::new("text") else { return };
    lab.api.push(Reply::text("Hello from fake"));
    let ran = lab.run(&lab.args("Read", "Read", "dontAsk", &[]), "say hello");
    ran.status(0).quiet();
    let init = ran.init();
    assert_eq!(init["claude_code_version"], version(), "{}", ran.dump());
    assert_eq!(init["permissionMode"], "dontAsk");
    assert_eq!(init["apiKeySource"], "ANTHROPIC_API_KEY");
    assert_eq!(init["tools"], json!(["Read"]));
    let result = ran.result();
    assert_eq!(result["subtype"], "success", "{}", ran.dump());
    assert_eq!(result["is_error"], false);
    assert_eq!(result["result"], "Hello from fake");
    assert_eq!(result["num_turns"], 1);
    assert_eq!(result["usage"]["input_tokens"], 1000);
    assert_eq!(result["usage"]["output_tokens"], 200);
    // $3 / $15 per million tokens.
    let cost = result["total_cost_usd"].as_f64().unwrap();
    assert!((cost - 0.006).abs() < 1e-9, "total_cost_usd {cost}");
    assert_eq!(result["modelUsage"][MODEL]["costUSD"].as_f64(), Some(cost));

    // What went over the wire: a warm-up HEAD and one streaming turn.
    let requests = lab.api.requests();
    let seen: Vec<(String, String)> = requests
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("HEAD".to_string(), "/".to_string()),
            ("POST".to_string(), "/v1/messages?beta=true".to_string())
        ],
        "{requests:#?}"
    );
    let turn = &lab.api.message_requests()[0];
    assert_eq!(turn.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(turn.header("x-api-key"), Some("sk-ant-fake-test-key"));
    let beta = turn.header("anthropic-beta").unwrap_or("");
    assert!(
        beta.contains("claude-code-20250219"),
        "anthropic-beta {beta}"
    );
    assert_eq!(turn.body["model"], MODEL);
    assert_eq!(turn.body["stream"], true);
    assert_eq!(tool_names(&turn.body), ["Read"]);
    let prompt = turn.body["messages"][0]["content"].to_string();
    assert!(prompt.contains("say hello"), "{prompt}");
    eprintln!("claude -p, one text turn: {:?}", ran.elapsed);
}

#[test]
fn real_claude_usage_is_what_the_fake_reports() {
    let Some(lab) = Lab::new("usage") else { return };
    lab.api.push_with_usage(
        Reply::text("big"),
        Usage {
            input_tokens: 200_000,
            output_tokens: 10_000,
        },
    );
    let ran = lab.run(&lab.args("", "", "dontAsk", &[]), "go");
    ran.status(0).quiet();
    let result = ran.result();
    assert_eq!(result["usage"]["input_tokens"], 200_000);
    assert_eq!(result["usage"]["output_tokens"], 10_000);
    // 0.2 M * $3 + 0.01 M * $15.
    let cost = result["total_cost_usd"].as_f64().unwrap();
    assert!((cost - 0.75).abs() < 1e-9, "total_cost_usd {cost}");
    // `--tools ""` offers no built-in tool at all.
    assert_eq!(ran.init()["tools"], json!([]));
    assert_eq!(tool_names(&lab.api.message_requests()[0].body), [""; 0]);
}

#[test]
fn real_claude_bash_is_not_offered_with_tools_read() {
    let Some(lab) = Lab::new("bash-tools") else {
        return;
    };
    let marker = lab.root.join("run/PWNED");
    lab.api.push(Reply::tool_use(
        "Bash",
        json!({ "command": format!("touch {}", marker.display()), "description": "marker" }),
    ));
    lab.api.push(Reply::text("finished"));
    let ran = lab.run(&lab.args("Read", "Read", "dontAsk", &[]), "make a marker");
    ran.status(0).quiet();
    assert!(!marker.exists(), "Bash ran\n{}", ran.dump());
    assert_eq!(ran.result()["result"], "finished");
    assert_eq!(ran.result()["num_turns"], 2);
    // The tool does not exist in this run, so nothing was "denied".
    assert_eq!(ran.denied(), [""; 0], "{}", ran.dump());
    let results = ran.tool_results();
    assert_eq!(results.len(), 1, "{}", ran.dump());
    assert_eq!(results[0]["is_error"], true);
    let text = results[0]["content"].as_str().unwrap_or("");
    assert!(
        text.contains("No such tool available: Bash"),
        "tool_result: {text}"
    );
    let turns = lab.api.wait_for_message_requests(2, LIMIT);
    assert_eq!(turns.len(), 2);
    assert_eq!(tool_names(&turns[0].body), ["Read"]);
}

#[test]
fn real_claude_bash_is_denied_by_dont_ask_without_tools() {
    let Some(lab) = Lab::new("bash-denied") else {
        return;
    };
    let marker = lab.root.join("run/PWNED");
    lab.api.push(Reply::tool_use(
        "Bash",
        json!({ "command": format!("touch {}", marker.display()), "description": "marker" }),
    ));
    lab.api.push(Reply::text("finished"));
    // No --tools: every built-in tool is offered, the allowlist denies.
    let mut args = lab.args("Read", "Read", "dontAsk", &[]);
    let at = args.iter().position(|a| a == "--tools").unwrap();
    args.drain(at..at + 2);
    let ran = lab.run(&args, "make a marker");
    ran.status(0).quiet();
    assert!(!marker.exists(), "Bash ran\n{}", ran.dump());
    assert_eq!(ran.denied(), ["Bash"], "{}", ran.dump());
    let results = ran.tool_results();
    let text = results[0]["content"].as_str().unwrap_or("");
    assert!(text.contains("don't ask mode"), "tool_result: {text}");
    assert!(ran.init()["tools"].as_array().unwrap().len() > 10);
}

#[test]
fn real_claude_mcp_allowlist_runs_query_and_denies_delete() {
    let Some(lab) = Lab::new("mcp") else { return };
    let log = lab.root.join("run/mcp-lab.log");
    lab.mcp_config(&json!({
        "lab": {
            "type": "stdio",
            "command": mcp_lab().to_str().unwrap(),
            "args": [],
            "env": { "MCP_LAB_LOG": log.to_str().unwrap() },
        }
    }));
    lab.api
        .push(Reply::tool_use("mcp__lab__query", json!({ "q": "status" })));
    lab.api
        .push(Reply::tool_use("mcp__lab__delete", json!({ "id": "42" })));
    lab.api.push(Reply::text("done"));
    let ran = lab.run(
        &lab.args("mcp__lab__query", "", "dontAsk", &[]),
        "query then delete",
    );
    ran.status(0).quiet();
    assert_eq!(
        ran.init()["mcp_servers"],
        json!([{ "name": "lab", "status": "connected" }]),
        "{}",
        ran.dump()
    );
    assert_eq!(ran.result()["result"], "done");
    assert_eq!(ran.denied(), ["mcp__lab__delete"], "{}", ran.dump());
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(calls, "query {\"q\":\"status\"}\n", "{}", ran.dump());
    let results = ran.tool_results();
    assert_eq!(results.len(), 2, "{}", ran.dump());
    assert!(
        results[0]["content"]
            .to_string()
            .contains("lab result for status"),
        "{}",
        ran.dump()
    );
    // Both MCP tools are offered to the model; only the allowlist stops one.
    let turns = lab.api.wait_for_message_requests(3, LIMIT);
    let mut offered = tool_names(&turns[0].body);
    offered.sort();
    assert_eq!(offered, ["mcp__lab__delete", "mcp__lab__query"]);
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

#[track_caller]
fn api_error(name: &str, status: u16, error_type: &str, message: &str) -> Option<Finished> {
    let lab = Lab::new(name)?;
    lab.api.push(Reply::error(status, error_type, message));
    let ran = lab.run(&lab.args("Read", "Read", "dontAsk", &[]), "hello");
    ran.status(1).quiet();
    let result = ran.result();
    assert_eq!(result["is_error"], true, "{}", ran.dump());
    assert_eq!(result["subtype"], "success");
    assert_eq!(result["api_error_status"], status);
    assert_eq!(result["total_cost_usd"], 0);
    // CLAUDE_CODE_MAX_RETRIES=0: one attempt, no api_retry line.
    assert_eq!(lab.api.message_requests().len(), 1);
    assert!(
        !ran.lines.iter().any(|l| l["subtype"] == "api_retry"),
        "{}",
        ran.dump()
    );
    Some(ran)
}

#[test]
fn real_claude_api_529_is_an_error_result() {
    let Some(ran) = api_error("e529", 529, "overloaded_error", "Overloaded") else {
        return;
    };
    let text = ran.result()["result"].as_str().unwrap();
    assert!(text.starts_with("API Error: 529 Overloaded"), "{text}");
}

#[test]
fn real_claude_api_401_is_an_error_result() {
    let Some(ran) = api_error("e401", 401, "authentication_error", "invalid x-api-key") else {
        return;
    };
    let text = ran.result()["result"].as_str().unwrap();
    assert!(text.contains("Invalid API key"), "{text}");
}

#[test]
fn real_claude_api_429_and_500_are_error_results() {
    if api_error("e429", 429, "rate_limit_error", "Rate limited").is_none() {
        return;
    }
    api_error("e500", 500, "api_error", "Internal server error");
}

#[test]
fn real_claude_max_turns_stops_a_tool_loop() {
    let Some(lab) = Lab::new("max-turns") else {
        return;
    };
    for _ in 0..3 {
        lab.api.push(Reply::tool_use(
            "Read",
            json!({ "file_path": lab.work().join("notes.txt") }),
        ));
    }
    let ran = lab.run(
        &lab.args("Read", "Read", "dontAsk", &["--max-turns", "1"]),
        "read forever",
    );
    ran.status(1).quiet();
    let result = ran.result();
    assert_eq!(result["subtype"], "error_max_turns", "{}", ran.dump());
    assert_eq!(result["is_error"], true);
    assert!(result.get("result").is_none(), "{}", ran.dump());
    assert_eq!(
        result["errors"],
        json!(["Reached maximum number of turns (1)"])
    );
    assert_eq!(result["terminal_reason"], "max_turns");
    // Counted as 2 although the limit is 1 and one model turn happened.
    assert_eq!(result["num_turns"], 2);
    assert_eq!(lab.api.message_requests().len(), 1, "{}", ran.dump());
    // The one tool call did run before the stop.
    assert_eq!(ran.tool_results().len(), 1, "{}", ran.dump());
}

/// A process as /proc shows it.
#[derive(Clone, Debug, PartialEq)]
struct Proc {
    pid: i32,
    comm: String,
    ppid: i32,
    pgrp: i32,
    sid: i32,
    /// Start time in clock ticks after boot: with the pid, names a process.
    start: u64,
    cmd: String,
}

fn proc_info(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    // After `(comm)`: state ppid pgrp session … starttime is the 20th.
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    if matches!(rest.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    Some(Proc {
        pid,
        comm,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        sid: rest.get(3)?.parse().ok()?,
        start: rest.get(19)?.parse().ok()?,
        cmd,
    })
}

fn all_procs() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(proc_info)
        .collect()
}

/// `root` and every process below it, by parent links.
fn tree(root: i32) -> Vec<Proc> {
    let procs = all_procs();
    let mut found: Vec<Proc> = procs.iter().filter(|p| p.pid == root).cloned().collect();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i].pid;
        found.extend(procs.iter().filter(|p| p.ppid == parent).cloned());
        i += 1;
    }
    found
}

fn still_alive(p: &Proc) -> bool {
    proc_info(p.pid).is_some_and(|now| now.start == p.start)
}

#[track_caller]
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills what a test left running: each process of `procs` still alive, and
/// the process groups they lead (never the test's own group, which claude
/// shares).
fn kill_groups(procs: &[Proc]) {
    let own = proc_info(i32::try_from(std::process::id()).unwrap()).map(|p| p.pgrp);
    for p in procs.iter().filter(|p| still_alive(p)) {
        if Some(p.pgrp) != own && p.pgrp > 1 {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", p.pgrp)])
                .status();
        }
        let _ = Command::new("kill")
            .args(["-KILL", &p.pid.to_string()])
            .status();
    }
}

/// Starts a Bash tool call of `sleep 300` and returns the CLI and its
/// process tree once the sleep runs.
fn bash_sleeping(lab: &Lab) -> (Running, Vec<Proc>) {
    lab.api.push(Reply::tool_use(
        "Bash",
        json!({ "command": "sleep 300", "description": "wait", "timeout": 600000 }),
    ));
    lab.api.push(Reply::text("slept"));
    let running = lab.spawn(&lab.args("Bash", "Bash", "dontAsk", &[]), "sleep");
    let pid = running.pid();
    let procs = wait_until("the Bash tool's sleep", || {
        let procs = tree(pid);
        procs
            .iter()
            .any(|p| p.comm == "sleep" && p.cmd == "sleep 300")
            .then_some(procs)
    });
    (running, procs)
}

fn describe(procs: &[Proc]) -> String {
    procs
        .iter()
        .map(|p| {
            format!(
                "  {} {} ppid {} pgrp {} sid {}: {}\n",
                p.pid,
                p.comm,
                p.ppid,
                p.pgrp,
                p.sid,
                p.cmd.chars().take(70).collect::<String>()
            )
        })
        .collect()
}

/// What a SIGINT'd CLI may do, in every state tried (waiting for the API's
/// answer, reading a stalled stream, running a Bash tool): exit 0 or 1,
/// nothing on stderr, and either a result line `error_during_execution`
/// (`is_error` true, no `result`) or no result line at all. Which one is a
/// race inside the CLI (the same test gave both, more often on a loaded
/// machine), so a runner must not expect either.
#[track_caller]
fn interrupted(ran: &Finished) {
    assert!(
        matches!(ran.code, Some(0 | 1)),
        "exit status\n{}",
        ran.dump()
    );
    ran.quiet();
    if let Some(result) = ran.line("result") {
        assert_eq!(
            result["subtype"],
            "error_during_execution",
            "{}",
            ran.dump()
        );
        assert_eq!(result["is_error"], true, "{}", ran.dump());
        assert!(result.get("result").is_none(), "{}", ran.dump());
    }
}

#[test]
fn real_claude_bash_tool_survives_sigterm_of_claude() {
    let Some(lab) = Lab::new("sigterm") else {
        return;
    };
    let (running, before) = bash_sleeping(&lab);
    let claude = running.pid();
    let claude_sid = before[0].sid;
    running.signal("TERM");
    let ran = running.wait();
    let survivors: Vec<Proc> = before
        .iter()
        .filter(|p| p.pid != claude && still_alive(p))
        .cloned()
        .collect();
    kill_groups(&before);
    eprintln!(
        "SIGTERM: claude exit {:?} signal {:?}\nbefore:\n{}survivors:\n{}",
        ran.code,
        ran.signal,
        describe(&before),
        describe(&survivors)
    );
    assert_eq!(ran.code, Some(143), "{}", ran.dump());
    ran.quiet();
    assert!(ran.line("result").is_none(), "{}", ran.dump());
    let sleep = survivors
        .iter()
        .find(|p| p.cmd == "sleep 300")
        .unwrap_or_else(|| panic!("sleep did not survive\n{}", describe(&before)));
    // Its own session and group (the Bash tool's shell's), not claude's.
    assert_ne!(sleep.sid, claude_sid);
    assert_eq!(sleep.pgrp, sleep.sid);
    let shell = before.iter().find(|p| p.pid == sleep.ppid).unwrap();
    assert_eq!(shell.ppid, claude, "{}", describe(&before));
    assert_eq!(shell.sid, shell.pid, "{}", describe(&before));
}

#[test]
fn real_claude_sigint_stops_its_bash_tool() {
    let Some(lab) = Lab::new("sigint") else {
        return;
    };
    let (running, before) = bash_sleeping(&lab);
    let claude = running.pid();
    running.signal("INT");
    let ran = running.wait();
    let children: Vec<Proc> = before.iter().filter(|p| p.pid != claude).cloned().collect();
    // claude kills its tools itself; give the kill time to land.
    let gone = Instant::now() + Duration::from_secs(10);
    while children.iter().any(still_alive) && Instant::now() < gone {
        thread::sleep(Duration::from_millis(20));
    }
    let survivors: Vec<Proc> = children
        .iter()
        .filter(|p| still_alive(p))
        .cloned()
        .collect();
    kill_groups(&before);
    eprintln!(
        "SIGINT during Bash: exit {:?} signal {:?} result {:?}\nbefore:\n{}survivors:\n{}",
        ran.code,
        ran.signal,
        ran.line("result").map(|r| r["subtype"].clone()),
        describe(&before),
        describe(&survivors)
    );
    assert!(survivors.is_empty(), "{}", describe(&survivors));
    interrupted(&ran);
}

#[test]
fn real_claude_sigint_while_the_model_streams() {
    let Some(lab) = Lab::new("stall") else { return };
    lab.api.push(Reply::Stall);
    // Partial messages, to see when the CLI has read the stream's start.
    let args = lab.args("Read", "Read", "dontAsk", &["--include-partial-messages"]);
    let running = lab.spawn(&args, "hello");
    running
        .stdout
        .wait_for_line("message_start stream_event", |l| {
            l.contains(r#""type":"stream_event""#) && l.contains(r#""type":"message_start""#)
        });
    running.signal("INT");
    let ran = running.wait();
    eprintln!(
        "SIGINT while streaming: exit {:?} signal {:?} result {:?} after {:?}",
        ran.code,
        ran.signal,
        ran.line("result").map(|r| r["subtype"].clone()),
        ran.elapsed
    );
    interrupted(&ran);
    assert!(
        lab.api.requests().iter().all(|r| r.kind != Kind::Auxiliary),
        "{:#?}",
        lab.api.requests()
    );
}

#[test]
fn real_claude_sigint_before_the_api_answers() {
    let Some(lab) = Lab::new("hang") else { return };
    lab.api.push(Reply::Hang);
    let running = lab.spawn(&lab.args("Read", "Read", "dontAsk", &[]), "hello");
    lab.api.wait_for_message_requests(1, LIMIT);
    running.signal("INT");
    let ran = running.wait();
    eprintln!(
        "SIGINT before any answer: exit {:?} signal {:?} result {:?} after {:?}",
        ran.code,
        ran.signal,
        ran.line("result").map(|r| r["subtype"].clone()),
        ran.elapsed
    );
    interrupted(&ran);
}

// The fake API on its own (no CLI needed): what the tests above rely on.

/// One HTTP/1.1 request with `Connection: close`; the status, the head and
/// the body (de-chunked).
fn http(url: &str, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, mut rest) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = String::new();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            body.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
    } else {
        body = rest.to_string();
    }
    (status, head.to_string(), body)
}

/// The `event:` names of a server-sent event stream, and the data of each.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name.to_string(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

const TURN: &str = r#"{"model":"claude-sonnet-4-5","stream":true,"tools":[{"name":"Read"}],
    "messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn fake_anthropic_streams_scripted_replies_in_order() {
    let api = FakeAnthropic::start();
    api.push(Reply::tool_use(
        "Read",
        json!({ "file_path": "/tmp/é.txt" }),
    ));
    api.push_with_usage(
        Reply::text("two"),
        Usage {
            input_tokens: 7,
            output_tokens: 3,
        },
    );
    let (status, head, body) = http(&api.url(), "POST", "/v1/messages?beta=true", TURN);
    assert_eq!(status, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let stream = events(&body);
    let names: Vec<&str> = stream.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(stream[2].1["content_block"]["name"], "Read");
    let input: String = stream[3..5]
        .iter()
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(input, r#"{"file_path":"/tmp/é.txt"}"#);
    assert_eq!(stream[6].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(stream[0].1["message"]["usage"]["input_tokens"], 1000);
    assert_eq!(stream[6].1["usage"]["output_tokens"], 200);

    // Not streaming: the same message as JSON.
    let plain = TURN.replace(r#""stream":true"#, r#""stream":false"#);
    let (status, _, body) = http(&api.url(), "POST", "/v1/messages", &plain);
    assert_eq!(status, 200);
    let message: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        message["content"],
        json!([{ "type": "text", "text": "two" }])
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["input_tokens"], 7);
    assert_eq!(message["usage"]["output_tokens"], 3);

    // Script empty: "ok".
    let (_, _, body) = http(&api.url(), "POST", "/v1/messages", TURN);
    assert_eq!(events(&body)[3].1["delta"]["text"], "ok");
    assert_eq!(api.wait_for_message_requests(3, LIMIT).len(), 3);
}

#[test]
fn fake_anthropic_answers_side_calls_outside_the_script() {
    let api = FakeAnthropic::start();
    api.push(Reply::text("for the agent"));
    let side = r#"{"model":"claude-haiku-4-5","tools":[],"max_tokens":512,
        "system":[{"type":"text","text":"Generate a concise, sentence-case title"}],
        "messages":[{"role":"user","content":[{"type":"text","text":"<session>x</session>"}]}]}"#;
    let (status, _, body) = http(&api.url(), "POST", "/v1/messages?beta=true", side);
    assert_eq!(status, 200);
    let message: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(message["content"][0]["text"], "ok");
    assert_eq!(api.remaining(), 1);
    let (status, _, body) = http(&api.url(), "POST", "/v1/messages/count_tokens", TURN);
    assert_eq!(status, 200);
    assert!(body.contains("input_tokens"), "{body}");
    let (status, _, body) = http(&api.url(), "GET", "/v1/models", "");
    assert_eq!(status, 200);
    assert!(body.contains("claude-sonnet-4-5"), "{body}");
    let (status, _, body) = http(&api.url(), "GET", "/nope", "");
    assert_eq!(status, 404);
    assert!(body.contains("not_found_error"), "{body}");
    let (status, _, body) = http(&api.url(), "HEAD", "/", "");
    assert_eq!((status, body.as_str()), (200, ""));
    // Not JSON at all: recorded as Null, answered, never a crash.
    let (status, _, _) = http(&api.url(), "POST", "/v1/messages", "{not json");
    assert_eq!(status, 200);
    let kinds: Vec<Kind> = api.requests().iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Auxiliary,
            Kind::CountTokens,
            Kind::Other,
            Kind::Other,
            Kind::Other,
            Kind::Auxiliary
        ]
    );
    assert_eq!(api.requests()[5].body, Value::Null);
    assert!(api.message_requests().is_empty());
    assert_eq!(api.remaining(), 1);
}

#[test]
fn fake_anthropic_errors_and_hangs_released_by_drop() {
    let api = FakeAnthropic::start();
    api.push(Reply::error(529, "overloaded_error", "Overloaded"));
    api.push(Reply::Hang);
    api.push(Reply::Stall);
    let (status, head, body) = http(&api.url(), "POST", "/v1/messages", TURN);
    assert_eq!(status, 529);
    assert!(
        head.to_ascii_lowercase().contains("request-id: req_fake_"),
        "{head}"
    );
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "overloaded_error");
    assert_eq!(error["error"]["message"], "Overloaded");
    let url = api.url();
    let hung = {
        let url = url.clone();
        thread::spawn(move || http(&url, "POST", "/v1/messages", TURN))
    };
    api.wait_for_message_requests(2, LIMIT);
    let stalled = thread::spawn(move || http(&url, "POST", "/v1/messages", TURN));
    api.wait_for_message_requests(3, LIMIT);
    drop(api);
    let (status, _, body) = hung.join().unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("fake API stopped"), "{body}");
    let (status, _, body) = stalled.join().unwrap();
    assert_eq!(status, 200);
    let names: Vec<String> = events(&body).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["message_start", "ping", "error"]);
}
