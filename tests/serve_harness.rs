//! `serve` as a process, for what `serve::start` cannot give: a lowered
//! descriptor limit (a shell `ulimit` in front of the binary), a folder
//! vault, a start that is meant to fail; and raw HTTP on its port.

// Each test file uses its own part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::BIN;
use crate::support::world::eventually;

/// `parachute-runner serve --port 0 --shutdown-timeout 1 <extra>` with the
/// environment `World::runner` gives, and the hub at `hub`.
pub fn serve_command(home: &Path, hub: &str, extra: &[&OsStr]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("RUST_LOG", "info")
        .env("TZ", "UTC")
        .env("PARACHUTE_HOME", home)
        .env("HOME", home)
        .env("PARACHUTE_HUB_ORIGIN", hub)
        .args(["serve", "--port", "0", "--shutdown-timeout", "1"])
        .args(extra);
    cmd
}

/// The same command run by `sh` after `ulimit -n <fds>` (soft and hard).
pub fn with_fd_limit(cmd: &Command, fds: u32) -> Command {
    let mut sh = Command::new("/bin/sh");
    sh.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    sh.arg("-c")
        .arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    sh
}

/// A running `serve`.
pub struct Serve {
    pub child: Child,
    pub base: String,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

/// Starts `cmd` and waits for its "serving the admin API on" line.
pub fn launch(mut cmd: Command) -> Serve {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pipe = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("serving the admin API on ").nth(1) {
                    let _ = tx.send(addr.to_string());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let base = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(base) => base,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not start:\n{}", log.lock().unwrap());
        }
    };
    let addr = base.trim_start_matches("http://").parse().unwrap();
    Serve {
        child,
        base,
        addr,
        log,
        agent: agent(Duration::from_secs(30)),
    }
}

/// Runs `cmd` to its end (it is expected to fail at start).
pub fn run_to_end(mut cmd: Command) -> (ExitStatus, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    match r {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

impl Serve {
    /// GET; status 0 when no answer came.
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        answer(req.call())
    }

    /// POST or PUT with a body; status 0 when no answer came.
    pub fn send(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let r = match method {
            "POST" => {
                let mut req = self.agent.post(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(body)
            }
            "PUT" => {
                let mut req = self.agent.put(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(body)
            }
            _ => panic!("{method}"),
        };
        answer(r)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until /healthz answers 200 (each try bounded by 5 s).
    pub fn await_healthz(&self, limit: Duration) -> bool {
        let quick = agent(Duration::from_secs(5));
        eventually(limit, || {
            quick
                .get(format!("{}/healthz", self.base))
                .call()
                .is_ok_and(|r| r.status() == 200)
        })
    }

    /// Waits for the process to end.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.try_wait().unwrap()
    }

    pub fn sigterm(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(Duration::from_secs(30))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client saw of one connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// An answer with this status.
    Answered(u16),
    /// Closed or reset without an answer.
    Closed,
    /// Still open, nothing received.
    Open,
    /// The connection could not be made.
    Refused,
    /// No answer within the probe's patience.
    Hung,
}

/// The status code of a raw answer.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    let mut words = text.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    words.next()?.parse().ok()
}

/// Sends `request` on a new connection and reads the answer to its end;
/// `patience` only tells a hang from an answer.
pub fn probe(addr: SocketAddr, request: &[u8], patience: Duration) -> (Seen, Vec<u8>) {
    let mut c = match TcpStream::connect_timeout(&addr, patience) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (Seen::Hung, Vec::new()),
        Err(_) => return (Seen::Refused, Vec::new()),
    };
    let _ = c.set_read_timeout(Some(patience));
    let _ = c.write_all(request);
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (Seen::Hung, bytes);
            }
            Err(_) => break,
        }
    }
    let seen = status_of(&bytes).map_or(Seen::Closed, Seen::Answered);
    (seen, bytes)
}

/// What a connection opened earlier shows now, without waiting (or
/// taking what arrived).
pub fn seen_now(c: &mut TcpStream) -> Seen {
    let _ = c.set_nonblocking(true);
    let mut buf = [0u8; 512];
    let seen = match c.peek(&mut buf) {
        Ok(0) => Seen::Closed,
        Ok(n) => status_of(&buf[..n]).map_or(Seen::Closed, Seen::Answered),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Seen::Open,
        Err(_) => Seen::Closed,
    };
    let _ = c.set_nonblocking(false);
    seen
}

pub const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
