//! Running the agent process (SPEC §6.2): exact argv, a cleared
//! environment with an allowlist, its own process group, the prompt fed
//! from its own thread, stdout read as stream-json (`stream`) and the last
//! 64 KiB of stderr, and stopping: SIGINT, SIGTERM, SIGKILL to its group,
//! with every process it started contained (`contain`) and stopped when
//! the run ends. Once its `result` line is read, the agent has 10 s to exit.
//!
//! This module knows nothing of jobs or notes: it takes what to run and
//! gives back what happened. Writing the MCP config file is the caller's
//! job; here it is only a path in argv.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::PipeWriter;
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Env;
use crate::contain::{self, Contained};
use crate::os;
use crate::stream::{AgentOutput, StreamReader};
use crate::tools::{self, PermissionMode};

/// stderr tail kept.
pub const STDERR_CAP: usize = 64 << 10;
/// Between the steps of the stop sequence (SIGINT, SIGTERM, SIGKILL), and
/// for what an agent leaves behind to go after a polite signal.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long an agent may take to exit after its `result` line.
pub const RESULT_GRACE: Duration = Duration::from_secs(10);
/// The exit code reported for a timed-out run (as `timeout(1)` does).
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// Variables passed through by name.
const ALLOWED_VARS: [&str; 13] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "LANG",
    "TZ",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
    "IS_SANDBOX",
];
/// Variables passed through by prefix.
const ALLOWED_PREFIXES: [&str; 3] = ["LC_", "ANTHROPIC_", "CLAUDE_"];
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The agent's environment: the allowlisted part of ours.
pub fn child_env(env: &Env) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| {
            ALLOWED_VARS.contains(k) || ALLOWED_PREFIXES.iter().any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.push(("PATH".to_string(), DEFAULT_PATH.to_string()));
    }
    out
}

/// Warns when a run uses `bypassPermissions` as root without
/// `IS_SANDBOX=1`: the CLI refuses that mode then (every other mode runs
/// as root).
pub fn warn_if_root(env: &[(String, String)], mode: PermissionMode) {
    let sandbox = env.iter().any(|(k, v)| k == "IS_SANDBOX" && v == "1");
    if mode == PermissionMode::BypassPermissions && os::is_root() && !sandbox {
        log::warn!(
            "running as root: claude refuses --permission-mode bypassPermissions as root unless IS_SANDBOX=1; run the runner as an unprivileged user, or choose another permission_mode"
        );
    }
}

/// What the argv says about a run (SPEC §6.2).
#[derive(Clone, Debug, PartialEq)]
pub struct Args<'a> {
    pub mcp_config: &'a Path,
    pub allowed_tools: &'a [String],
    pub permission_mode: PermissionMode,
    pub model: &'a str,
    pub disallowed_tools: &'a [String],
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
    pub fallback_model: &'a [String],
}

impl Default for Args<'_> {
    fn default() -> Self {
        Args {
            mcp_config: Path::new(""),
            allowed_tools: &[],
            permission_mode: PermissionMode::default(),
            model: "",
            disallowed_tools: &[],
            max_turns: None,
            max_budget_usd: None,
            fallback_model: &[],
        }
    }
}

/// The argv after the binary, in the contract's order.
pub fn claude_args(a: &Args<'_>) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "-p".into(),
        "--strict-mcp-config".into(),
        "--mcp-config".into(),
        a.mcp_config.display().to_string(),
        "--allowedTools".into(),
        a.allowed_tools.join(","),
        "--tools".into(),
        tools::builtin_tools(a.allowed_tools).join(","),
        "--permission-mode".into(),
        a.permission_mode.as_str().into(),
        "--model".into(),
        a.model.into(),
        "--no-session-persistence".into(),
        "--output-format".into(),
        "stream-json".into(),
        "--verbose".into(),
    ];
    if !a.disallowed_tools.is_empty() {
        argv.push("--disallowedTools".into());
        argv.push(a.disallowed_tools.join(","));
    }
    if let Some(n) = a.max_turns {
        argv.push("--max-turns".into());
        argv.push(n.to_string());
    }
    if let Some(x) = a.max_budget_usd {
        argv.push("--max-budget-usd".into());
        argv.push(x.to_string());
    }
    if !a.fallback_model.is_empty() {
        argv.push("--fallback-model".into());
        argv.push(a.fallback_model.join(","));
    }
    argv
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Request {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    /// Names the run's containment (its cgroup).
    pub run_id: String,
}

/// Why a run was stopped by the runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The job's timeout passed.
    Timeout,
    /// `Canceller::cancel`, with the reason (shutdown, a signal).
    Cancelled(String),
    /// It did not exit within `RESULT_GRACE` of its result line; the run
    /// keeps its result.
    AfterResult,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The process could not be started: the OS error.
    pub spawn_error: Option<String>,
    /// Exit code, or 128 + signal for a child killed by a signal.
    pub exit_code: Option<i32>,
    pub stopped: Option<Stopped>,
    /// stdout, read as stream-json (or plain text).
    pub output: AgentOutput,
    pub stderr_tail: Vec<u8>,
    /// Processes the agent left that had to be killed after it exited.
    pub left_behind: usize,
}

enum Event {
    Exited,
    Cancel(String),
    ReaderDone,
    ResultRead,
}

/// Stops a running agent early, from another thread.
#[derive(Clone)]
pub struct Canceller {
    tx: Sender<Event>,
    pid: u32,
    /// The agent's start time (clock ticks after boot), 0 if unknown.
    start: u64,
    cgroup: Option<PathBuf>,
}

impl Canceller {
    /// A canceller connected to nothing (for a run not started yet).
    pub fn none() -> Canceller {
        Canceller {
            tx: mpsc::channel().0,
            pid: 0,
            start: 0,
            cgroup: None,
        }
    }

    /// Stops the run; its failure says `interrupted: <reason>`.
    pub fn cancel(&self, reason: &str) {
        let _ = self.tx.send(Event::Cancel(reason.to_string()));
    }

    /// The agent's pid, which is also its process group id (0: none).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The agent's start time in clock ticks after boot (0: unknown).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The run's cgroup, when it has one.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }
}

/// Starts a named thread; the OS may refuse (a task limit).
fn spawn_thread<F: FnOnce() + Send + 'static>(name: &str, f: F) -> io::Result<()> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(|_| ())
}

/// Spawns the agent inside its containment, with only `req.env`, in its
/// own process group, its stdio piped to us.
fn spawn(req: &Request) -> io::Result<(os::Spawned, Contained)> {
    let program = resolve_program(req)?;
    let argv: Vec<&OsStr> = std::iter::once(OsStr::new(&req.program))
        .chain(req.args.iter().map(OsStr::new))
        .collect();
    let mut pending = contain::prepare(&req.run_id);
    let spawn = |pending: &contain::Pending| {
        contain::spawn_child(&os::SpawnRequest {
            program: &program,
            argv: &argv,
            env: &req.env,
            cwd: req.cwd.as_deref(),
            cgroup_procs: pending.procs(),
        })
    };
    let mut spawned = spawn(&pending);
    if let Err(e) = &spawned
        && os::is_join_error(e)
    {
        log::warn!("the agent {e}; tracking its processes instead");
        pending = pending.without_cgroup();
        spawned = spawn(&pending);
    }
    match spawned {
        Ok(child) => {
            let contained = pending.started(child.pid);
            Ok((child, contained))
        }
        Err(e) => {
            pending.abandon();
            Err(e)
        }
    }
}

/// The program's file, found as exec would (`PATH` of the agent's
/// environment for a bare name), with the errors exec would give: not
/// found, not executable, neither a script (`#!`) nor an ELF program
/// (exec falls back to running such a file with /bin/sh; a spawn refuses
/// it, and so does the runner).
fn resolve_program(req: &Request) -> io::Result<PathBuf> {
    let found = if req.program.contains('/') {
        (std::path::absolute(&req.program)?, None)
    } else {
        let search = req
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        // As execvp: the first executable file on the PATH; a file that
        // is there but not executable only when there is no other.
        let mut not_executable = None;
        let mut executable = None;
        for dir in search.split(':').filter(|dir| !dir.is_empty()) {
            let path = Path::new(dir).join(&req.program);
            match std::fs::metadata(&path) {
                Ok(m) if is_executable(&m) => {
                    executable = Some((path, Some(m)));
                    break;
                }
                Ok(m) if m.is_file() && not_executable.is_none() => {
                    not_executable = Some((path, Some(m)));
                }
                _ => {}
            }
        }
        executable
            .or(not_executable)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?
    };
    let (path, meta) = match found {
        (path, Some(meta)) => (path, meta),
        (path, None) => {
            let meta = std::fs::metadata(&path)?;
            (path, meta)
        }
    };
    if !is_executable(&meta) {
        return Err(io::Error::from_raw_os_error(libc::EACCES));
    }
    let mut head = [0u8; 4];
    let n = std::fs::File::open(&path).and_then(|mut f| f.read(&mut head))?;
    if head[..n].starts_with(b"#!") || head[..n] == *b"\x7fELF" {
        Ok(path)
    } else {
        Err(io::Error::from_raw_os_error(libc::ENOEXEC))
    }
}

/// A regular file with an execute bit.
fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
}

/// Runs the request to the end. `on_start` receives a `Canceller` once the
/// process is running.
pub fn run(mut req: Request, on_start: impl FnOnce(Canceller)) -> Outcome {
    let started = Instant::now();
    let (child, contained) = match spawn(&req) {
        Ok(v) => v,
        Err(e) => {
            return Outcome {
                spawn_error: Some(e.to_string()),
                ..Outcome::default()
            };
        }
    };
    let pid = child.pid;
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let stdout = Arc::new(Mutex::new(StreamReader::new()));
    let stderr = Arc::new(Mutex::new(Tail::default()));
    let threads = start_threads(child, &mut req, &tx, &done, &stdout, &stderr);
    if let Err(e) = threads {
        // Nothing can be read or fed: stop it at once.
        let _ = os::kill_group(pid, os::SIGKILL);
        let finished = contained.finish();
        let _ = os::wait_reap(pid);
        contain::forget(pid);
        finished.release();
        done.store(true, Ordering::Relaxed);
        return Outcome {
            spawn_error: Some(format!("could not start a thread for it: {e}")),
            ..Outcome::default()
        };
    }
    on_start(Canceller {
        tx,
        pid,
        start: contain::agent_start(pid),
        cgroup: contained.cgroup().map(Path::to_path_buf),
    });

    let mut readers_left = 2;
    let mut stopped = None;
    let deadline = started + req.timeout;
    let mut grace: Option<Instant> = None;
    // Wait for the exit, the deadline, the grace after the result, or a
    // cancel.
    let exited = loop {
        let until = grace.map_or(deadline, |g| g.min(deadline));
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Event::Exited) => break true,
            Ok(Event::ReaderDone) => readers_left -= 1,
            Ok(Event::ResultRead) => grace = Some(Instant::now() + RESULT_GRACE),
            Ok(Event::Cancel(reason)) => {
                stopped = Some(Stopped::Cancelled(reason));
                break false;
            }
            Err(RecvTimeoutError::Timeout) => {
                stopped = Some(if grace.is_some_and(|g| g <= Instant::now()) {
                    Stopped::AfterResult
                } else {
                    Stopped::Timeout
                });
                break false;
            }
            // Every sender gone: nothing more can happen; reap below.
            Err(RecvTimeoutError::Disconnected) => break true,
        }
    };
    if !exited {
        stop_sequence(pid, &contained, &rx, &mut readers_left);
    }
    // The leader is gone (a zombie, so its group id is still ours). What it
    // left behind goes too: politely, then not.
    let mut left_behind = 0;
    // A cgroup holds every process of the run, its group included; only
    // the tracking mode needs to look at the group too.
    if readers_left > 0 || contained.any_left(pid) {
        let _ = os::kill_group(pid, os::SIGTERM);
        contained.signal(os::SIGTERM);
        let deadline = Instant::now() + KILL_GRACE;
        while Instant::now() < deadline && (readers_left > 0 || contained.any_left(pid)) {
            wait_for(&rx, Duration::from_millis(50), &mut readers_left, false);
        }
    }
    let _ = os::kill_group(pid, os::SIGKILL);
    let finished = contained.finish();
    left_behind += finished.killed;
    // A process that escaped (another session, not found) may still hold
    // the pipes: do not wait for it forever.
    wait_for(&rx, Duration::from_secs(1), &mut readers_left, false);
    let status = os::wait_reap(pid);
    contain::forget(pid);
    finished.release();
    done.store(true, Ordering::Relaxed);
    let exit_code = match stopped {
        Some(Stopped::Timeout) => Some(TIMEOUT_EXIT_CODE),
        _ => status
            .ok()
            .and_then(|s| s.code().or_else(|| s.signal().map(|sig| 128 + sig))),
    };
    let output = {
        let mut reader = stdout.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *reader).finish()
    };
    let stderr_tail = stderr
        .lock()
        .map(|mut t| t.take())
        .unwrap_or_else(|p| p.into_inner().take());
    Outcome {
        spawn_error: None,
        exit_code,
        stopped,
        output,
        stderr_tail,
        left_behind,
    }
}

/// SIGINT to the group (claude then aborts its own tools), SIGTERM after
/// `KILL_GRACE`, SIGKILL after another; the later steps reach every
/// process of the run.
fn stop_sequence(pid: u32, contained: &Contained, rx: &Receiver<Event>, readers_left: &mut i32) {
    let _ = os::kill_group(pid, os::SIGINT);
    if wait_for(rx, KILL_GRACE, readers_left, true) {
        return;
    }
    let _ = os::kill_group(pid, os::SIGTERM);
    contained.signal(os::SIGTERM);
    if wait_for(rx, KILL_GRACE, readers_left, true) {
        return;
    }
    let _ = os::kill_group(pid, os::SIGKILL);
    contained.signal(os::SIGKILL);
    wait_for(rx, Duration::MAX, readers_left, true);
}

/// The threads of a run: the prompt writer, the two readers, the waiter.
fn start_threads(
    child: os::Spawned,
    req: &mut Request,
    tx: &Sender<Event>,
    done: &Arc<AtomicBool>,
    stdout: &Arc<Mutex<StreamReader>>,
    stderr: &Arc<Mutex<Tail>>,
) -> io::Result<()> {
    // The prompt goes in from its own thread: a child that writes before
    // it reads must not deadlock against us. Non-blocking, so the thread
    // ends with the run whoever keeps the pipe open without reading.
    let os::Spawned {
        pid,
        stdin,
        stdout: mut out,
        stderr: mut err,
        ..
    } = child;
    let prompt = std::mem::take(&mut req.stdin);
    let done = Arc::clone(done);
    os::set_nonblocking(&stdin)?;
    spawn_thread("agent-stdin", move || feed(stdin, &prompt, &done))?;
    let sink = Arc::clone(stdout);
    let tx_out = tx.clone();
    spawn_thread("agent-stdout", move || {
        read_all(&mut out, |chunk| {
            let mut reader = sink.lock().unwrap_or_else(|p| p.into_inner());
            if reader.push(chunk) {
                let _ = tx_out.send(Event::ResultRead);
            }
        });
        let _ = tx_out.send(Event::ReaderDone);
    })?;
    let sink = Arc::clone(stderr);
    let tx_err = tx.clone();
    spawn_thread("agent-stderr", move || {
        read_all(&mut err, |chunk| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(chunk);
        });
        let _ = tx_err.send(Event::ReaderDone);
    })?;
    let tx = tx.clone();
    spawn_thread("agent-wait", move || {
        // An error (the child already reaped) can only mean it is gone:
        // the run must not wait for its timeout.
        let _ = os::wait_exit_keep_zombie(pid);
        let _ = tx.send(Event::Exited);
    })
}

/// Writes `prompt` to the agent's stdin, then closes it; gives up when the
/// run is `done` or the other end is gone.
fn feed(mut stdin: PipeWriter, prompt: &[u8], done: &AtomicBool) {
    let mut at = 0;
    while at < prompt.len() && !done.load(Ordering::Relaxed) {
        match stdin.write(&prompt[at..]) {
            Ok(0) => return,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if os::wait_writable(&stdin, Duration::from_millis(100)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn read_all(pipe: &mut impl Read, mut push: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Waits up to `limit` for the leader's exit (`for_exit`) or for both
/// readers to finish. Returns whether it came.
fn wait_for(rx: &Receiver<Event>, limit: Duration, readers_left: &mut i32, for_exit: bool) -> bool {
    let deadline = Instant::now().checked_add(limit);
    loop {
        if !for_exit && *readers_left <= 0 {
            return true;
        }
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(left) {
            Ok(Event::Exited) if for_exit => return true,
            Ok(Event::ReaderDone) => *readers_left -= 1,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) if deadline.is_some() => return false,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return true,
        }
    }
}

/// The last `STDERR_CAP` bytes.
#[derive(Default)]
struct Tail(VecDeque<u8>);

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(STDERR_CAP)..];
        let overflow = (self.0.len() + chunk.len()).saturating_sub(STDERR_CAP);
        self.0.drain(..overflow);
        self.0.extend(chunk);
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0).into()
    }
}

/// The last `max` bytes of `bytes`, starting on a UTF-8 character
/// boundary, as text (invalid sequences replaced).
pub fn tail_text(bytes: &[u8], max: usize) -> String {
    let mut start = bytes.len().saturating_sub(max);
    // Skip continuation bytes so the cut does not split a character.
    while start < bytes.len() && (bytes[start] & 0b1100_0000) == 0b1000_0000 {
        start += 1;
    }
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_allowlist() {
        let env = Env::from_pairs([
            ("HOME", "/home/u"),
            ("LC_ALL", "C"),
            ("ANTHROPIC_API_KEY", "k"),
            ("CLAUDE_CONFIG_DIR", "/c"),
            ("IS_SANDBOX", "1"),
            ("PARACHUTE_RUNNER_VAULT_TOKEN", "secret"),
            ("PARACHUTE_HOME", "/p"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("LD_PRELOAD", "/evil.so"),
        ]);
        let mut got: Vec<String> = child_env(&env).into_iter().map(|(k, _)| k).collect();
        got.sort();
        assert_eq!(
            got,
            [
                "ANTHROPIC_API_KEY",
                "CLAUDE_CONFIG_DIR",
                "HOME",
                "IS_SANDBOX",
                "LC_ALL",
                "PATH"
            ]
        );
        assert!(child_env(&env).contains(&("PATH".into(), DEFAULT_PATH.into())));
        let with_path = Env::from_pairs([("PATH", "/x")]);
        assert_eq!(
            child_env(&with_path),
            [("PATH".to_string(), "/x".to_string())]
        );
    }

    #[test]
    fn argv_order() {
        let allowed: Vec<String> = vec![
            "Read".into(),
            "Bash(git log:*)".into(),
            "mcp__v__search".into(),
        ];
        let base = Args {
            mcp_config: Path::new("/r/mcp.json"),
            allowed_tools: &allowed,
            model: "claude-sonnet-4-5",
            ..Args::default()
        };
        assert_eq!(
            claude_args(&base).join(" "),
            "-p --strict-mcp-config --mcp-config /r/mcp.json --allowedTools Read,Bash(git log:*),mcp__v__search --tools Read,Bash --permission-mode dontAsk --model claude-sonnet-4-5 --no-session-persistence --output-format stream-json --verbose"
        );
        let denied = vec!["Write".to_string()];
        let fallback = vec!["a".to_string(), "b".to_string()];
        let all = Args {
            permission_mode: PermissionMode::Plan,
            disallowed_tools: &denied,
            max_turns: Some(3),
            max_budget_usd: Some(0.5),
            fallback_model: &fallback,
            ..base.clone()
        };
        assert!(claude_args(&all).join(" ").ends_with(
            "--permission-mode plan --model claude-sonnet-4-5 --no-session-persistence --output-format stream-json --verbose --disallowedTools Write --max-turns 3 --max-budget-usd 0.5 --fallback-model a,b"
        ));
        // No built-in tool named: none offered.
        let mcp_only = vec!["mcp__v__search".to_string()];
        let argv = claude_args(&Args {
            allowed_tools: &mcp_only,
            ..base
        });
        let i = argv.iter().position(|a| a == "--tools").unwrap();
        assert_eq!(argv[i + 1], "");
    }

    #[test]
    fn tail_is_bounded() {
        let mut t = Tail::default();
        t.push(&[b'a'; 100 << 10]);
        t.push(b"end");
        let tail = t.take();
        assert_eq!(tail.len(), STDERR_CAP);
        assert!(tail.ends_with(b"aend"));
    }

    #[test]
    fn tail_cuts_on_a_character_boundary() {
        let text = "ééé".as_bytes(); // 6 bytes
        assert_eq!(tail_text(text, 3), "é");
        assert_eq!(tail_text(text, 4), "éé");
        assert_eq!(tail_text(b"ab\xff", 2), "b\u{fffd}");
        assert_eq!(tail_text(b"", 10), "");
    }

    fn sh(script: &str, timeout: Duration) -> Outcome {
        run(
            Request {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                cwd: None,
                stdin: b"prompt".to_vec(),
                timeout,
                run_id: crate::random::uuid_v4(),
            },
            |_| {},
        )
    }

    #[test]
    fn runs_and_captures() {
        let out = sh("cat; echo; echo err >&2; exit 3", Duration::from_secs(30));
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.output.text, "prompt\n");
        assert_eq!(out.stderr_tail, b"err\n");
        assert_eq!(out.stopped, None);
    }

    #[test]
    fn spawn_error_is_an_outcome() {
        let out = run(
            Request {
                program: "/nonexistent/claude".into(),
                args: vec![],
                env: vec![],
                cwd: None,
                stdin: vec![],
                timeout: Duration::from_secs(1),
                run_id: crate::random::uuid_v4(),
            },
            |_| {},
        );
        assert!(out.spawn_error.unwrap().contains("No such file"));
    }

    #[test]
    fn cancel_stops_the_group() {
        // As the binary does at start: a test run started in the
        // background of a script has SIGINT ignored, and so would the shell.
        os::unignore_stop_signals();
        let dir = std::env::temp_dir().join(format!("pr-cancel-{}", crate::random::uuid_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ready = dir.join("ready");
        // The shell says which signal reached it first (its traps run in
        // signal-number order, so a SIGTERM that came too, on a machine so
        // loaded the shell did not run for the whole grace, does not hide
        // a SIGINT that came first).
        let script = format!(
            "trap 'echo INT >&2; exit 130' INT; trap 'echo TERM >&2; exit 143' TERM; : > '{}'; while :; do sleep 1; done",
            ready.display()
        );
        let (tx, rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            run(
                Request {
                    program: "/bin/sh".into(),
                    args: vec!["-c".into(), script],
                    env: vec![],
                    cwd: None,
                    stdin: vec![],
                    timeout: Duration::from_secs(600),
                    run_id: crate::random::uuid_v4(),
                },
                move |c| {
                    let _ = tx.send(c);
                },
            )
        });
        let canceller = rx.recv().unwrap();
        // Once its traps are set.
        while !ready.exists() {
            thread::sleep(Duration::from_millis(5));
        }
        canceller.cancel("test");
        let out = handle.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(out.stopped, Some(Stopped::Cancelled("test".into())));
        // SIGINT comes first: claude aborts its own tools on it.
        assert_eq!(String::from_utf8_lossy(&out.stderr_tail).trim(), "INT");
        assert_eq!(out.exit_code, Some(128 + libc::SIGINT));
    }
}
