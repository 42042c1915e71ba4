//! `serve`'s HTTP API under pressure (SPEC §9.2), the binary as a process:
//! more connections than its descriptors allow, descriptors exhausted while
//! it runs, a task limit, slowloris clients, malformed framing, and the
//! scheduler or the HTTP server dying. No latency bounds: what is asserted
//! is what a client observes (answered, refused, closed, never answered)
//! and that the API answers again once the pressure is gone. How fast, is
//! bench/'s.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::serve_harness::{
    HEALTHZ, Seen, launch, probe, seen_now, serve_command, status_of, with_fd_limit,
};
use crate::support::fake_claude::FakeClaude;
use crate::support::fake_hub::FakeHub;
use crate::support::world::{World, eventually, job};

/// Patience of a probe: only tells a hang from an answer.
const PATIENCE: Duration = Duration::from_secs(20);

/// Opens `n` connections (each connect bounded, a full backlog counts as
/// refused).
fn open_connections(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, usize) {
    let mut conns = Vec::new();
    let mut refused = 0;
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(c) => conns.push(c),
            Err(_) => refused += 1,
        }
    }
    (conns, refused)
}

/// How many connections are still open (held by a server thread, waiting
/// for a request), answered 503, or closed.
fn tally(conns: &mut [TcpStream]) -> (usize, usize, usize) {
    let (mut open, mut busy, mut closed) = (0, 0, 0);
    for c in conns.iter_mut() {
        match seen_now(c) {
            Seen::Open => open += 1,
            Seen::Answered(503) => busy += 1,
            _ => closed += 1,
        }
    }
    (open, busy, closed)
}

#[test]
fn past_the_connection_cap_new_clients_get_a_quick_503_and_the_api_recovers() {
    let w = World::new("fd-cap");
    let hub = FakeHub::start();
    // 256 descriptors: the cap is (256 - 64) / 2 = 96 connections.
    let mut s = launch(with_fd_limit(
        &serve_command(w.home.path(), hub.url(), &[]),
        256,
    ));
    assert!(s.log().contains("at most 96 connections"), "{}", s.log());
    // More idle connections than the descriptor limit allows.
    let (mut conns, connect_failed) = open_connections(s.addr, 400);
    // A new client meanwhile: refused or answered, not left hanging.
    let (seen, _) = probe(s.addr, HEALTHZ, PATIENCE);
    let (open, busy, closed) = tally(&mut conns);
    eprintln!(
        "fd limit 256: 400 connections tried ({connect_failed} not made): {open} held open by serve, {busy} answered 503, {closed} closed; a new client saw {seen:?}"
    );
    assert!(
        matches!(seen, Seen::Answered(503) | Seen::Closed | Seen::Refused),
        "{seen:?}\n{}",
        s.log()
    );
    assert!(open <= 96, "{open} connections held past the cap of 96");
    assert!(busy > 0, "no connection was refused with 503");
    assert!(s.log().contains("too many connections"), "{}", s.log());
    drop(conns);
    assert!(
        s.await_healthz(Duration::from_secs(60)),
        "healthz did not come back\n{}",
        s.log()
    );
    assert!(s.alive());
    assert!(
        s.log().contains("accepting connections again"),
        "{}",
        s.log()
    );
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// Whether the `prlimit` tool (util-linux) is there.
fn have_prlimit() -> bool {
    std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn out_of_descriptors_new_clients_are_refused_and_the_api_recovers() {
    if !have_prlimit() {
        eprintln!("skipped: no prlimit (util-linux) to lower serve's descriptor limit");
        return;
    }
    let w = World::new("emfile");
    let hub = FakeHub::start();
    let mut s = launch(serve_command(w.home.path(), hub.url(), &[]));
    // The cap was set from the limit at start (512); the limit now drops
    // under it, so accept() itself runs out of descriptors.
    let in_use = std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
        .unwrap()
        .count();
    let limit = in_use + 24;
    let lowered = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &s.pid().to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(lowered.success());
    let (mut conns, connect_failed) = open_connections(s.addr, 200);
    let (seen, _) = probe(s.addr, HEALTHZ, PATIENCE);
    let (open, busy, closed) = tally(&mut conns);
    eprintln!(
        "fd limit {limit} ({in_use} in use): 200 connections tried ({connect_failed} not made): {open} held open, {busy} answered 503, {closed} closed; a new client saw {seen:?}"
    );
    assert!(
        matches!(seen, Seen::Answered(503) | Seen::Closed | Seen::Refused),
        "{seen:?}\n{}",
        s.log()
    );
    // Bounded by the descriptors, not by the cap (512): the count at start
    // may include one that closed since, so no exact figure.
    assert!(
        open < limit,
        "{open} held with a limit of {limit} descriptors"
    );
    assert!(s.log().contains("out of file descriptors"), "{}", s.log());
    drop(conns);
    assert!(
        s.await_healthz(Duration::from_secs(60)),
        "healthz did not come back\n{}",
        s.log()
    );
    assert!(s.alive());
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// A cgroup with a task limit, removed when dropped: cgroup v2 where the
/// pids controller can be enabled, else a v1 pids hierarchy.
struct TaskLimit {
    dir: PathBuf,
}

impl TaskLimit {
    fn new(name: &str) -> Option<TaskLimit> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mut v2 = Vec::new();
        let mut v1 = Vec::new();
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(point), Some(fstype), Some(options)) =
                (fields.get(4), fields.get(dash + 1), fields.get(dash + 3))
            else {
                continue;
            };
            match *fstype {
                "cgroup2" => v2.push(PathBuf::from(point)),
                "cgroup" if options.split(',').any(|o| o == "pids") => {
                    v1.push(PathBuf::from(point))
                }
                _ => {}
            }
        }
        let name = format!("pr-test-{name}-{}", std::process::id());
        for root in v2 {
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "pids") {
                continue;
            }
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+pids");
            if let Some(limit) = TaskLimit::make(&root.join(&name)) {
                return Some(limit);
            }
        }
        v1.into_iter()
            .find_map(|root| TaskLimit::make(&root.join(&name)))
    }

    fn make(dir: &Path) -> Option<TaskLimit> {
        std::fs::create_dir(dir).ok()?;
        let limit = TaskLimit {
            dir: dir.to_path_buf(),
        };
        limit.dir.join("pids.max").exists().then_some(limit)
    }

    fn add(&self, pid: u32) -> bool {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).is_ok()
    }

    fn current(&self) -> usize {
        std::fs::read_to_string(self.dir.join("pids.current"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn set_max(&self, n: usize) -> bool {
        std::fs::write(self.dir.join("pids.max"), n.to_string()).is_ok()
    }
}

impl Drop for TaskLimit {
    fn drop(&mut self) {
        let _ = self.set_max(usize::MAX / 2);
        eventually(Duration::from_secs(10), || {
            std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists()
        });
    }
}

/// Keeps `n` idle connections open to `addr` until `stop`, replacing the
/// ones serve closes (a slow client is dropped after its deadline).
fn hold_connections(
    addr: SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut conns: Vec<TcpStream> = Vec::new();
        let mut most_open = 0;
        while !stop.load(Ordering::SeqCst) {
            conns.retain_mut(|c| seen_now(c) == Seen::Open);
            most_open = most_open.max(conns.len());
            while conns.len() < n {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(c) => conns.push(c),
                    Err(_) => break,
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        most_open
    })
}

#[test]
fn a_task_limit_is_survived_and_a_run_meanwhile_fails_cleanly() {
    let Some(limit) = TaskLimit::new("pids") else {
        eprintln!(
            "skipped: no writable cgroup with a pids controller (cgroup v2 or v1) to give serve a task limit"
        );
        return;
    };
    let w = World::with_claude("pids", FakeClaude::new().prints("x"));
    w.vault.add_job("jobs/tick", &job("\"* * * * * *\"", ""));
    let hub = FakeHub::start();
    let mut cmd = serve_command(w.home.path(), hub.url(), &[]);
    cmd.env("PARACHUTE_RUNNER_CGROUP", "off");
    let mut s = launch(cmd);
    assert!(
        limit.add(s.child.id()),
        "cannot move serve into {:?}",
        limit.dir
    );
    assert!(
        eventually(Duration::from_secs(20), || w
            .runs()
            .iter()
            .any(|n| !n.tags.iter().any(|t| t == "job-run-failed"))),
        "no run before the pressure\n{}",
        s.log()
    );
    // Room for 16 more tasks: connections take them all.
    let base = limit.current();
    assert!(limit.set_max(base + 16));
    let failed_before = failed_runs(&w).len();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = s.addr;
    let holder = hold_connections(addr, 80, Arc::clone(&stop));
    assert!(
        eventually(Duration::from_secs(30), || s
            .log()
            .contains("cannot start a connection thread")),
        "the task limit was never reached\n{}",
        s.log()
    );
    let (seen, _) = probe(addr, HEALTHZ, PATIENCE);
    // A run fired meanwhile ends as a failed run (no thread, or no fork).
    let failed = eventually(Duration::from_secs(60), || {
        failed_runs(&w).len() > failed_before
    });
    stop.store(true, Ordering::SeqCst);
    let most_open = holder.join().unwrap();
    let errors: Vec<String> = failed_runs(&w)
        .iter()
        .skip(failed_before)
        .filter_map(|n| n.metadata.as_ref()?["run_error"].as_str().map(String::from))
        .collect();
    eprintln!(
        "task limit {} ({base} in use): at most {most_open} connections held; a new client saw {seen:?}; failed runs meanwhile: {errors:?}",
        base + 16
    );
    assert!(failed, "no run failed under the task limit\n{}", s.log());
    assert!(
        matches!(
            seen,
            Seen::Answered(503) | Seen::Answered(200) | Seen::Closed | Seen::Refused
        ),
        "{seen:?}"
    );
    assert!(limit.set_max(base + 4096));
    assert!(
        s.await_healthz(Duration::from_secs(60)),
        "healthz did not come back\n{}",
        s.log()
    );
    assert!(s.alive(), "serve died\n{}", s.log());
    assert!(!s.log().contains("panicked"), "{}", s.log());
    // And runs succeed again.
    let ok_before = ok_runs(&w);
    assert!(
        eventually(Duration::from_secs(30), || ok_runs(&w) > ok_before),
        "no run succeeded after the pressure\n{}",
        s.log()
    );
}

fn failed_runs(w: &World) -> Vec<crate::support::fake_vault::StoredNote> {
    w.runs()
        .into_iter()
        .filter(|n| n.tags.iter().any(|t| t == "job-run-failed"))
        .collect()
}

fn ok_runs(w: &World) -> usize {
    w.runs().len() - failed_runs(w).len()
}

/// Sends `prefix`, then `byte` every `gap` until serve closes the
/// connection; returns what serve sent.
fn trickle(
    addr: SocketAddr,
    prefix: &[u8],
    byte: u8,
    gap: Duration,
    limit: Duration,
) -> Option<Vec<u8>> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.write_all(prefix).ok()?;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if c.write_all(&[byte]).is_err() {
            break;
        }
        std::thread::sleep(gap);
        if seen_now(&mut c) != Seen::Open {
            break;
        }
    }
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    (Instant::now() < deadline).then_some(answer)
}

#[test]
fn slowloris_clients_are_dropped_and_do_not_block_healthz() {
    let w = World::new("slowloris");
    let hub = FakeHub::start();
    let s = launch(serve_command(w.home.path(), hub.url(), &[]));
    let addr = s.addr;
    // A head that never ends, a byte at a time; a body likewise.
    let head = std::thread::spawn(move || {
        trickle(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
            b'a',
            Duration::from_millis(200),
            Duration::from_secs(120),
        )
    });
    let body = std::thread::spawn(move || {
        trickle(
            addr,
            b"PUT /.parachute/config HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{",
            b' ',
            Duration::from_millis(200),
            Duration::from_secs(120),
        )
    });
    // Meanwhile others are answered.
    for _ in 0..5 {
        assert_eq!(s.get("/healthz", None).0, 200);
    }
    let head = head
        .join()
        .unwrap()
        .expect("the slow head was never dropped");
    let body = body
        .join()
        .unwrap()
        .expect("the slow body was never dropped");
    assert_eq!(
        status_of(&head),
        Some(408),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(
        status_of(&body),
        Some(400),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("cannot read the body"));
    assert_eq!(s.get("/healthz", None).0, 200);
}

#[test]
fn framing_limits_and_answers() {
    let w = World::new("framing");
    let hub = FakeHub::start();
    let s = launch(serve_command(w.home.path(), hub.url(), &[]));
    let addr = s.addr;
    let admin = hub.token("runner:admin");
    let raw = |request: String| -> (Option<u16>, String) {
        let (_, bytes) = probe(addr, request.as_bytes(), PATIENCE);
        (
            status_of(&bytes),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    };
    // Every answer says its type and length; closes when asked to.
    let (status, text) =
        raw("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into());
    assert_eq!(status, Some(200));
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    assert!(head.contains("connection: close"), "{head}");
    // Chunked bodies are refused; with a Content-Length too, 400.
    let (status, text) = raw(format!(
        "PUT /.parachute/config HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    ));
    assert_eq!(status, Some(411), "{text}");
    assert!(text.contains("length_required"), "{text}");
    let (status, _) = raw(
        "PUT /.parachute/config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}".into(),
    );
    assert_eq!(status, Some(400));
    // Headers over 16 KiB: 431 on an open route, 401 where a token counts.
    let big = "b".repeat(20_000);
    let (status, text) = raw(format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
    ));
    assert_eq!(status, Some(431), "{text}");
    let (status, _) = raw(format!(
        "GET /runner/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nX-Big: {big}\r\n\r\n"
    ));
    assert_eq!(status, Some(401));
    // A head over 1 MiB is not read to its end.
    let (status, _) = raw(format!(
        "GET /healthz HTTP/1.1\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(2 << 20)
    ));
    assert!(matches!(status, None | Some(431)), "{status:?}");
    // Garbage and other versions.
    assert_eq!(raw("GARBAGE\r\n\r\n".into()).0, Some(400));
    assert_eq!(raw("GET / HTTP/9.9\r\n\r\n".into()).0, Some(505));
    // Bodies: a declared length over 64 KiB is 413 without being read; a
    // client that waits for 100-continue gets it.
    let (status, _) = raw(format!(
        "PUT /.parachute/config HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Length: 99999999999999999999\r\n\r\n"
    ));
    assert_eq!(status, Some(413));
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(format!(
        "PUT /.parachute/config HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    ).as_bytes())
    .unwrap();
    let mut interim = [0u8; 25];
    c.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"{}").unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert_eq!(
        status_of(&rest),
        Some(200),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    // HEAD gets the head only.
    let (status, text) =
        raw("HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into());
    assert_eq!(status, Some(405));
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    // Keep-alive: two requests sent at once on one connection get two
    // answers, the second (which asks to close) the last one; HTTP/1.0
    // gets one and a close.
    let (_, bytes) = probe(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        PATIENCE,
    );
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("HTTP/1.1 404 Not Found"), "{text}");
    let first = &text[..text.find("HTTP/1.1 404").unwrap()];
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    let (_, bytes) = probe(addr, b"GET /healthz HTTP/1.0\r\n\r\n", PATIENCE);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_eq!(s.get("/healthz", None).0, 200);
}

#[test]
fn losing_the_scheduler_or_the_http_server_exits_non_zero() {
    for (hook, says) in [
        ("scheduler", "the scheduler thread died"),
        ("http", "HTTP server stopped unexpectedly"),
    ] {
        let w = World::new(&format!("crash-{hook}"));
        let hub = FakeHub::start();
        let mut cmd = serve_command(w.home.path(), hub.url(), &[]);
        cmd.env("PARACHUTE_RUNNER_TEST_CRASH", hook);
        let mut s = launch(cmd);
        let status = s.wait_exit(Duration::from_secs(60));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "{hook}: {status:?}\n{}",
            s.log()
        );
        assert!(s.log().contains(says), "{hook}:\n{}", s.log());
        assert!(
            s.log()
                .contains("exiting so that a supervisor starts serve again"),
            "{}",
            s.log()
        );
    }
    // A release build refuses the hook (a debug build, as here, takes
    // it): config::env's unit tests.
}
