//! Running the agent process (SPEC §6.2): exact argv, a cleared
//! environment with an allowlist, its own process group, the prompt fed
//! from its own thread, stdout kept up to 8 MiB and the last 64 KiB of
//! stderr, and at the timeout SIGTERM then SIGKILL to the whole group.
//!
//! This module knows nothing of jobs or notes: it takes what to run and
//! gives back what happened. Writing the MCP config file is the caller's
//! job; here it is only a path in argv.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Env;
use crate::os;

/// stdout kept for the note.
pub const STDOUT_CAP: usize = 8 << 20;
/// stderr tail kept.
pub const STDERR_CAP: usize = 64 << 10;
/// Between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
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

/// Warns once when running as root without `IS_SANDBOX=1` (the agent
/// refuses `bypassPermissions` then).
pub fn warn_if_root(env: &Env) {
    if os::is_root() && env.get("IS_SANDBOX") != Some("1") {
        log::warn!(
            "running as root: claude refuses --permission-mode bypassPermissions as root unless IS_SANDBOX=1; run the runner as an unprivileged user"
        );
    }
}

/// The argv after the binary (SPEC §6.2), in the contract's order.
pub fn claude_args(mcp_config: &Path, tools: &[String], model: &str) -> Vec<String> {
    vec![
        "-p".into(),
        "--strict-mcp-config".into(),
        "--mcp-config".into(),
        mcp_config.display().to_string(),
        "--allowedTools".into(),
        tools.join(","),
        "--permission-mode".into(),
        "bypassPermissions".into(),
        "--model".into(),
        model.into(),
        "--no-session-persistence".into(),
        "--output-format".into(),
        "text".into(),
    ]
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
}

/// Why a run ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The job's timeout passed.
    Timeout,
    /// Someone called `Canceller::cancel` (serve shutting down).
    Cancelled,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The process could not be started: the OS error.
    pub spawn_error: Option<String>,
    /// Exit code, or 128 + signal for a child killed by a signal.
    pub exit_code: Option<i32>,
    pub stopped: Option<Stopped>,
    pub stdout: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_tail: Vec<u8>,
    pub duration: Duration,
}

enum Event {
    Exited,
    Cancel,
    ReaderDone,
}

/// Stops a running agent early, from another thread.
#[derive(Clone)]
pub struct Canceller {
    tx: Sender<Event>,
    pid: u32,
}

impl Canceller {
    /// A canceller connected to nothing (for a run not started yet).
    pub fn none() -> Canceller {
        Canceller {
            tx: mpsc::channel().0,
            pid: 0,
        }
    }

    pub fn cancel(&self) {
        let _ = self.tx.send(Event::Cancel);
    }

    /// The agent's pid, which is also its process group id (0: none).
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Runs the request to the end. `on_start` receives a `Canceller` once the
/// process is running.
pub fn run(mut req: Request, on_start: impl FnOnce(Canceller)) -> Outcome {
    let started = Instant::now();
    let mut cmd = Command::new(&req.program);
    cmd.args(&req.args)
        .env_clear()
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = &req.cwd {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Outcome {
                spawn_error: Some(e.to_string()),
                duration: started.elapsed(),
                ..Outcome::default()
            };
        }
    };
    let pid = child.id();
    let (tx, rx) = mpsc::channel();

    // The prompt goes in from its own thread: a child that writes before
    // it reads must not deadlock against us.
    if let Some(mut stdin) = child.stdin.take() {
        let prompt = std::mem::take(&mut req.stdin);
        thread::spawn(move || {
            let _ = stdin.write_all(&prompt);
        });
    }
    let stdout = Arc::new(Mutex::new(Capture::default()));
    let stderr = Arc::new(Mutex::new(Tail::default()));
    if let Some(pipe) = child.stdout.take() {
        spawn_reader(
            pipe,
            Arc::clone(&stdout),
            tx.clone(),
            |cap: &mut Capture, chunk| cap.push(chunk),
        );
    }
    if let Some(pipe) = child.stderr.take() {
        spawn_reader(
            pipe,
            Arc::clone(&stderr),
            tx.clone(),
            |tail: &mut Tail, chunk| tail.push(chunk),
        );
    }
    {
        let tx = tx.clone();
        thread::spawn(move || {
            if os::wait_exit_keep_zombie(pid).is_ok() {
                let _ = tx.send(Event::Exited);
            }
        });
    }
    on_start(Canceller { tx, pid });

    let mut readers_left = 2;
    let mut stopped = None;
    let deadline = started + req.timeout;
    // Wait for the exit, the deadline or a cancel.
    let exited = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Exited) => break true,
            Ok(Event::ReaderDone) => readers_left -= 1,
            Ok(Event::Cancel) => {
                stopped = Some(Stopped::Cancelled);
                break false;
            }
            Err(RecvTimeoutError::Timeout) => {
                stopped = Some(Stopped::Timeout);
                break false;
            }
            // Every sender gone: nothing more can happen; reap below.
            Err(RecvTimeoutError::Disconnected) => break true,
        }
    };
    if !exited {
        // SIGTERM to the group, SIGKILL after the grace period.
        let _ = os::kill_group(pid, os::SIGTERM);
        if !wait_for(&rx, KILL_GRACE, &mut readers_left, true) {
            let _ = os::kill_group(pid, os::SIGKILL);
            wait_for(&rx, Duration::MAX, &mut readers_left, true);
        }
    }
    // The leader is gone (a zombie, so its group id is still ours). Whatever
    // it left behind in its group goes too: politely, then not.
    let _ = os::kill_group(pid, os::SIGTERM);
    if !wait_for(&rx, KILL_GRACE, &mut readers_left, false) {
        let _ = os::kill_group(pid, os::SIGKILL);
        // A process that left the group (setsid) may hold the pipes open;
        // do not wait for it forever.
        wait_for(&rx, Duration::from_secs(1), &mut readers_left, false);
    }
    let _ = os::kill_group(pid, os::SIGKILL);
    let status = child.wait();
    let exit_code = match stopped {
        Some(Stopped::Timeout) => Some(TIMEOUT_EXIT_CODE),
        _ => status
            .ok()
            .and_then(|s| s.code().or_else(|| s.signal().map(|sig| 128 + sig))),
    };
    let (stdout, stdout_truncated) = match stdout.lock() {
        Ok(mut c) => (std::mem::take(&mut c.kept), c.truncated),
        Err(_) => (Vec::new(), false),
    };
    let stderr_tail = stderr.lock().map(|mut t| t.take()).unwrap_or_default();
    Outcome {
        spawn_error: None,
        exit_code,
        stopped,
        stdout,
        stdout_truncated,
        stderr_tail,
        duration: started.elapsed(),
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

fn spawn_reader<R, T>(
    mut pipe: R,
    sink: Arc<Mutex<T>>,
    done: Sender<Event>,
    push: fn(&mut T, &[u8]),
) where
    R: Read + Send + 'static,
    T: Send + 'static,
{
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Ok(mut s) = sink.lock() {
                        push(&mut s, &buf[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(Event::ReaderDone);
    });
}

/// The first `STDOUT_CAP` bytes; the rest is counted as dropped.
#[derive(Default)]
struct Capture {
    kept: Vec<u8>,
    truncated: bool,
}

impl Capture {
    fn push(&mut self, chunk: &[u8]) {
        let room = STDOUT_CAP.saturating_sub(self.kept.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
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
        let args = claude_args(
            Path::new("/r/mcp.json"),
            &["Read".into(), "Grep".into()],
            "claude-sonnet-4-5",
        );
        assert_eq!(
            args.join(" "),
            "-p --strict-mcp-config --mcp-config /r/mcp.json --allowedTools Read,Grep --permission-mode bypassPermissions --model claude-sonnet-4-5 --no-session-persistence --output-format text"
        );
    }

    #[test]
    fn capture_and_tail_are_bounded() {
        let mut c = Capture::default();
        for _ in 0..20 {
            c.push(&[b'x'; 1 << 20]);
        }
        assert_eq!(c.kept.len(), STDOUT_CAP);
        assert!(c.truncated);
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
            },
            |_| {},
        )
    }

    #[test]
    fn runs_and_captures() {
        let out = sh("cat; echo; echo err >&2; exit 3", Duration::from_secs(30));
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stdout, b"prompt\n");
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
            },
            |_| {},
        );
        assert!(out.spawn_error.unwrap().contains("No such file"));
    }

    #[test]
    fn cancel_stops_the_group() {
        let (tx, rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            run(
                Request {
                    program: "/bin/sh".into(),
                    args: vec!["-c".into(), "echo started; exec sleep 30".into()],
                    env: vec![],
                    cwd: None,
                    stdin: vec![],
                    timeout: Duration::from_secs(60),
                },
                move |c| {
                    let _ = tx.send(c);
                },
            )
        });
        let canceller = rx.recv().unwrap();
        canceller.cancel();
        let out = handle.join().unwrap();
        assert_eq!(out.stopped, Some(Stopped::Cancelled));
        assert_eq!(out.exit_code, Some(128 + libc::SIGTERM));
    }
}
