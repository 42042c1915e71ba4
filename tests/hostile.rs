//! Hostile conditions through the binary (issue: hostile conditions): a
//! full disk, notes built to stall the YAML parser or the listing, a vault
//! that echoes the token in its error bodies, a folder vault with links out
//! of it, FIFOs and /dev/zero where files should be, a clock that goes
//! back, lock files removed under a live run, a dead run's cleanup next to
//! an innocent process, and an agent that keeps stdin open without reading.
//!
//! The full-disk tests mount a tiny tmpfs as PARACHUTE_HOME, so they need
//! root; without it they print a notice and pass without testing.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::faults::check_invariants;
use crate::serve::start;
use crate::support::fake_claude::{self, FakeClaude};
use crate::support::fake_hub::FakeHub;
use crate::support::fake_vault::{FakeVault, Fault, Route};
use crate::support::world::{TOKEN, World, eventually, job, walk};
use crate::support::{NoteFile, Ran, Runner, TempDir};

/// The pass that records a new every-minute job...
const FIRST: &str = "2026-01-01T00:00:30Z";
/// ...the pass that runs its 00:01 slot...
const DUE: &str = "2026-01-01T00:01:30Z";
/// ...and one in the same minute, with nothing due.
const AFTER: &str = "2026-01-01T00:01:40Z";

/// A bound that only a failure reaches: a process that must end is killed
/// (and the test fails) if it is still running by then.
const PATIENCE: Duration = Duration::from_secs(120);

/// Runs the process to its end, or kills it at `limit` and fails the test.
fn run_within(runner: Runner, limit: Duration) -> Ran {
    let mut child = runner.spawn();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = out.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = err.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            panic!(
                "still running after {limit:?}, killed\n--- stderr\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran(Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    })
}

/// Every line of stdout and stderr.
fn all_lines(ran: &Ran) -> Vec<String> {
    ran.stdout()
        .lines()
        .chain(ran.stderr().lines())
        .map(String::from)
        .collect()
}

fn meta<'a>(note: &'a crate::support::fake_vault::StoredNote, key: &str) -> &'a Value {
    &note.metadata.as_ref().unwrap()[key]
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Sends SIGKILL to a pid (or, negative, a process group).
fn kill(target: i64) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &target.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A field of /proc/<pid>/status, as its first number (`Threads`, `VmRSS`).
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------
// 1. A full disk loses nothing and says nothing false.

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uids = s.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            Some(uids.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false)
}

/// A mounted tmpfs, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Size of the tmpfs: room for the runner's files and its 4 MiB reserve.
const TINY_MIB: u64 = 8;

/// A world whose PARACHUTE_HOME is a tmpfs of `TINY_MIB` MiB. The fake
/// claude records its calls outside it (so a full disk does not change
/// what it does), and with `tmp_outside` so do the run files of
/// `runner/tmp` (a link to a folder outside): the runner removes them when
/// the agent exits, and the pages they free would otherwise make a disk
/// filled by the agent not quite full when the note is queued.
struct TinyWorld {
    // Dropped first: unmounted before the home directory is removed.
    _tmpfs: Tmpfs,
    w: World,
    _outside: TempDir,
}

impl TinyWorld {
    fn path(&self, rel: &str) -> PathBuf {
        self.w.home.join(rel)
    }
}

fn tiny_world(
    name: &str,
    claude: impl FnOnce(&Path) -> FakeClaude,
    tmp_outside: bool,
) -> Option<TinyWorld> {
    if !running_as_root() {
        eprintln!(
            "NOTICE {name}: not running as root, cannot mount a tmpfs: full-disk test skipped"
        );
        return None;
    }
    let home = TempDir::new(name);
    let tmpfs = match Tmpfs::mount(home.path(), TINY_MIB) {
        Ok(tmpfs) => tmpfs,
        Err(e) => {
            eprintln!(
                "NOTICE {name}: root, but cannot mount a tmpfs ({e}): full-disk test skipped"
            );
            return None;
        }
    };
    let outside = TempDir::new(&format!("{name}-outside"));
    let claude_dir = outside.join("claude");
    let claude_bin = claude(home.path()).install(&claude_dir);
    let vault = FakeVault::start();
    let runner = home.join("runner");
    std::fs::create_dir_all(&runner).unwrap();
    std::fs::write(
        runner.join("config.json"),
        json!({
            "vault_url": vault.url(),
            "vault_token": TOKEN,
            "claude_bin": claude_bin,
            "timezone": "UTC",
        })
        .to_string(),
    )
    .unwrap();
    if tmp_outside {
        let tmp = outside.join("runner-tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        std::os::unix::fs::symlink(&tmp, runner.join("tmp")).unwrap();
    }
    Some(TinyWorld {
        _tmpfs: tmpfs,
        w: World {
            home,
            vault,
            claude_dir,
        },
        _outside: outside,
    })
}

/// Writes zeros to `file` until its filesystem is full; returns its size.
fn fill(file: &Path) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    let zeros = vec![0u8; 64 << 10];
    loop {
        match f.write(&zeros) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", file.display()),
        }
    }
    f.metadata().unwrap().len()
}

#[test]
fn full_disk_and_a_failing_vault_say_output_lost_not_queued() {
    // The reserve is there; the agent fills the disk while it runs; the
    // vault answers 500 to every write. Nothing can keep the note: the run
    // must say so, and the record must not let a later pass invent an
    // `interrupted` outcome for the slot.
    let Some(t) = tiny_world(
        "full-lost",
        |home| {
            FakeClaude::new()
                .fills_disk(&home.join("filler"))
                .prints("precious")
        },
        true,
    ) else {
        return;
    };
    let w = &t.w;
    w.every_minute("jobs/a");
    w.once_at(FIRST).run().success();
    assert!(
        t.path("runner/reserve").exists(),
        "the first pass makes the reserve"
    );
    w.vault.set_fault(Route::Create, Fault::Status(500), None);
    let ran = w.once_at(DUE).run().status(1);
    assert!(t.path("filler").exists(), "the agent did not fill the disk");
    let line = ran
        .stdout()
        .lines()
        .find(|l| l.starts_with("failed: jobs/a: "))
        .map(String::from)
        .unwrap_or_else(|| panic!("no failed line\n{}\n{}", ran.stdout(), ran.stderr()));
    assert!(
        line.contains("output lost: it could not be queued (")
            && line.contains("and the vault did not take it ("),
        "{line}"
    );
    for text in [ran.stdout(), ran.stderr()] {
        assert!(
            !text.contains("queued in the outbox"),
            "claims to have queued it:\n{text}"
        );
    }
    assert!(w.outbox().is_empty() && w.runs().is_empty());
    let state = w.state();
    assert_eq!(
        state["jobs"]["jobs/a"]["last_run"]["status"], "failed",
        "{state}"
    );
    assert!(state["jobs"]["jobs/a"].get("running").is_none(), "{state}");
    assert!(
        !t.path("runner/reserve").exists(),
        "the record was paid for with the reserve"
    );
    // Space returns (and the vault heals: a second note would show).
    std::fs::remove_file(t.path("filler")).unwrap();
    w.vault.clear_faults();
    let ran = w.once_at(AFTER).run().success();
    assert!(!ran.stderr().contains("interrupted"), "{}", ran.stderr());
    let tally = check_invariants(w);
    assert!(
        tally.notes.is_empty(),
        "a second outcome for the slot: {tally:?}"
    );
    assert_eq!(w.invocations().len(), 1);
    let state = w.state();
    assert_eq!(state["jobs"]["jobs/a"]["last_run"]["status"], "failed");
    assert!(state["jobs"]["jobs/a"].get("running").is_none());
    assert!(
        t.path("runner/reserve").exists(),
        "the reserve is made again once there is room"
    );
}

#[test]
fn full_disk_without_a_reserve_a_directly_delivered_note_gets_no_interrupted_twin() {
    // No reserve (removed, and no room to make it again), the agent fills
    // the rest: the note cannot be queued, goes to the vault directly, and
    // the record of the run cannot be written. The next pass finds the
    // note in the vault and settles the run without a second note.
    let Some(t) = tiny_world(
        "full-direct",
        |home| {
            FakeClaude::new()
                .fills_disk(&home.join("filler"))
                .prints("precious")
        },
        true,
    ) else {
        return;
    };
    let w = &t.w;
    w.every_minute("jobs/a");
    w.once_at(FIRST).run().success();
    std::fs::remove_file(t.path("runner/reserve")).unwrap();
    // Less than the 4 MiB reserve left, enough to claim the run.
    let ballast = t.path("ballast");
    let size = fill(&ballast);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ballast)
        .unwrap()
        .set_len(size - (1 << 20))
        .unwrap();
    let ran = w.once_at(DUE).run();
    assert!(
        !t.path("runner/reserve").exists(),
        "the reserve was made again after all"
    );
    assert!(t.path("filler").exists(), "the agent did not fill the disk");
    assert!(
        ran.stderr().contains("could not record run"),
        "the record did not fail; the scenario did not happen\n{}",
        ran.stderr()
    );
    assert!(
        w.state()["jobs"]["jobs/a"].get("running").is_some(),
        "{}",
        w.state()
    );
    assert_eq!(w.runs().len(), 1, "{}\n{}", ran.stdout(), ran.stderr());
    assert!(
        ran.stdout().contains("ok: jobs/a -> jobs/runs/a/"),
        "{}",
        ran.stdout()
    );
    std::fs::remove_file(t.path("filler")).unwrap();
    std::fs::remove_file(&ballast).unwrap();
    let ran = w.once_at(AFTER).run().success();
    assert!(
        ran.stderr().contains("its note is in the vault"),
        "{}",
        ran.stderr()
    );
    let tally = check_invariants(w);
    assert_eq!(tally.notes.len(), 1, "{tally:?}");
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].content, "precious");
    assert!(!runs[0].path.as_deref().unwrap().ends_with(".failed"));
    let state = w.state();
    assert!(state["jobs"]["jobs/a"].get("running").is_none(), "{state}");
    assert_eq!(state["jobs"]["jobs/a"]["last_run"]["status"], "ok");
    // Converged: another pass changes nothing.
    w.once_at("2026-01-01T00:01:50Z").run().success();
    assert_eq!(w.runs().len(), 1);
}

#[test]
fn full_disk_with_the_reserve_the_run_is_recorded_and_the_reserve_spent() {
    let Some(t) = tiny_world("full-reserve", |_| FakeClaude::new().prints("kept"), false) else {
        return;
    };
    let w = &t.w;
    w.every_minute("jobs/a");
    w.once_at(FIRST).run().success();
    assert!(t.path("runner/reserve").exists());
    fill(&t.path("filler"));
    let ran = w.once_at(DUE).run().success();
    assert!(
        ran.stderr().contains("is full: used the runner's reserve"),
        "{}",
        ran.stderr()
    );
    assert!(
        ran.stdout().starts_with("ok: jobs/a -> "),
        "{}",
        ran.stdout()
    );
    assert!(!t.path("runner/reserve").exists());
    let tally = check_invariants(w);
    assert_eq!(tally.notes.len(), 1, "queued or delivered: {tally:?}");
    let state = w.state();
    assert_eq!(
        state["jobs"]["jobs/a"]["last_run"]["status"], "ok",
        "{state}"
    );
    assert!(state["jobs"]["jobs/a"].get("running").is_none());
    std::fs::remove_file(t.path("filler")).unwrap();
    w.once_at(AFTER).run().success();
    assert!(
        t.path("runner/reserve").exists(),
        "made again once there is room"
    );
    let tally = check_invariants(w);
    assert_eq!((tally.notes.len(), tally.in_outbox), (1, 0));
    assert_eq!(w.runs()[0].content, "kept");
}

#[test]
fn full_disk_without_a_reserve_runs_nothing_and_the_slot_runs_once_later() {
    let Some(t) = tiny_world("full-none", |_| FakeClaude::new().prints("later"), false) else {
        return;
    };
    let w = &t.w;
    w.every_minute("jobs/a");
    w.once_at(FIRST).run().success();
    std::fs::remove_file(t.path("runner/reserve")).unwrap();
    fill(&t.path("filler"));
    let ran = w.once_at(DUE).run().status(2);
    assert!(
        ran.stderr().contains("state.json") && ran.stderr().contains("No space left"),
        "{}",
        ran.stderr()
    );
    assert!(!ran.stdout().contains("ok:"), "{}", ran.stdout());
    assert!(w.invocations().is_empty(), "ran a slot it could not record");
    std::fs::remove_file(t.path("filler")).unwrap();
    w.once_at(AFTER).run().success().stdout_has("ok: jobs/a");
    assert_eq!(check_invariants(w).notes.len(), 1);
    assert!(t.path("runner/reserve").exists());
}

// ---------------------------------------------------------------------------
// 2. One note cannot stall every job.

#[test]
fn a_huge_or_deeply_nested_frontmatter_is_refused_unparsed_and_remembered() {
    let w = World::new("deep-yaml");
    w.every_minute("jobs/normal");
    // ~400 KB of brackets, and 65 levels in a few hundred bytes.
    let wide = format!("x: {}{}\n", "[".repeat(200_000), "]".repeat(200_000));
    let deep = format!("x: {}{}\n", "[".repeat(65), "]".repeat(65));
    w.vault.add_job("jobs/wide", &job("\"* * * * *\"", &wide));
    w.vault.add_job("jobs/deep", &job("\"* * * * *\"", &deep));
    let started = Instant::now();
    let ran = w.once_at(FIRST).run();
    let first_pass = started.elapsed();
    ran.status(1)
        .stdout_has("invalid job at jobs/wide: frontmatter: larger than 256 KiB")
        .stdout_has("invalid job at jobs/deep: frontmatter: nested deeper than 64 levels");
    let state = w.state();
    let hash =
        |state: &Value, path: &str| state["invalid"][path]["hash"].as_str().map(String::from);
    let (wide_hash, deep_hash) = (hash(&state, "jobs/wide"), hash(&state, "jobs/deep"));
    assert!(wide_hash.is_some() && deep_hash.is_some(), "{state}");
    // What the runner remembers is what it reports next time: a changed
    // record shows the note was not checked again.
    let path = w.home.join("runner/state.json");
    let mut doc = state.clone();
    for p in ["jobs/wide", "jobs/deep"] {
        doc["invalid"][p]["problems"] = json!(["remembered, not parsed again"]);
    }
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let started = Instant::now();
    let ran = w
        .once_at(DUE)
        .run()
        .status(1)
        .stdout_has("ok: jobs/normal")
        .stdout_has("invalid job at jobs/wide: remembered, not parsed again")
        .stdout_has("invalid job at jobs/deep: remembered, not parsed again");
    let second_pass = started.elapsed();
    assert!(
        ran.stdout()
            .ends_with("done: total=3 ok=1 failed=2 skipped=0\n"),
        "{}",
        ran.stdout()
    );
    assert_eq!(w.runs().len(), 1);
    let state = w.state();
    assert_eq!(hash(&state, "jobs/wide"), wide_hash);
    assert_eq!(hash(&state, "jobs/deep"), deep_hash);
    eprintln!(
        "figure: the pass that checked the 400 KB and 65-level frontmatters took {first_pass:?}; the next pass, remembering them, {second_pass:?}"
    );
    // An edited note is checked again (the record is by hash).
    let deeper = format!("x: {}{}\n", "[".repeat(66), "]".repeat(66));
    w.vault
        .set_content("jobs/deep", &job("\"* * * * *\"", &deeper));
    w.once_at(AFTER)
        .run()
        .status(1)
        .stdout_has("invalid job at jobs/deep: frontmatter: nested deeper than 64 levels");
    assert_ne!(hash(&w.state(), "jobs/deep"), deep_hash);
}

// ---------------------------------------------------------------------------
// 3. One huge note does not fail the listing.

#[test]
fn a_note_over_64_mib_is_skipped_and_the_others_on_its_page_run() {
    let w = World::new("huge-note");
    w.every_minute("jobs/a");
    let huge = format!("{}{}", job("\"* * * * *\"", ""), "y".repeat(65 << 20));
    w.vault.add_job("jobs/huge", &huge);
    drop(huge);
    w.every_minute("jobs/b");
    let said = "larger than the 8 MiB a job note may be";
    let ran = w.once_at(FIRST).run().status(1);
    let line = ran
        .stdout()
        .lines()
        .find(|l| l.starts_with("invalid job at jobs/huge: "))
        .map(String::from);
    assert!(
        line.as_deref().is_some_and(|l| l.contains(said)),
        "{}\n{}",
        ran.stdout(),
        ran.stderr()
    );
    let ran = w.once_at(DUE).run().status(1);
    let ran = ran
        .stdout_has("ok: jobs/a -> ")
        .stdout_has("ok: jobs/b -> ")
        .stdout_has(said);
    assert!(
        ran.stdout()
            .ends_with("done: total=3 ok=2 failed=1 skipped=0\n"),
        "{}",
        ran.stdout()
    );
    let mut ran_jobs: Vec<String> = w
        .runs()
        .iter()
        .map(|n| meta(n, "parent_job_path").as_str().unwrap().to_string())
        .collect();
    ran_jobs.sort();
    assert_eq!(ran_jobs, ["jobs/a", "jobs/b"]);
    // The page was listed again without content, the huge note not read.
    let requests = w.vault.requests();
    assert!(requests.iter().any(|r| r.route() == Some(Route::List)
        && r.query_param("include_content").as_deref() == Some("false")));
    assert!(
        !requests
            .iter()
            .any(|r| r.route() == Some(Route::Get) && r.path().ends_with("huge")),
        "the huge note was fetched alone"
    );
}

// ---------------------------------------------------------------------------
// 4. The vault token never leaks through error bodies.

#[track_caller]
fn no_token(what: &str, text: &str) {
    assert!(
        !text.contains(TOKEN),
        "{what} shows the vault token:\n{text}"
    );
}

#[track_caller]
fn no_token_in(ran: &Ran) {
    no_token("stdout", &ran.stdout());
    no_token("stderr", &ran.stderr());
}

/// No file the runner keeps holds the token in the clear (secrets.json
/// holds it encrypted).
#[track_caller]
fn no_token_on_disk(w: &World) {
    for file in walk(&w.home.join("runner")) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        no_token(
            &file.display().to_string(),
            &String::from_utf8_lossy(&bytes),
        );
    }
}

#[test]
fn the_token_echoed_by_a_failing_listing_or_read_is_not_shown() {
    let w = World::new("echo-list");
    w.every_minute("jobs/a");
    w.vault
        .set_fault(Route::List, Fault::EchoAuthorization(401), None);
    for ran in [w.once_at(FIRST).run(), w.runner().args(["jobs"]).run()] {
        let ran = ran
            .status(2)
            .stderr_has("listing notes tagged job: vault answered 401")
            .stderr_has("Bearer [redacted]");
        no_token_in(&ran);
    }
    w.vault.clear_faults();
    w.vault
        .set_fault(Route::Get, Fault::EchoAuthorization(403), None);
    let ran = w
        .runner()
        .args(["once", "--only", "jobs/a"])
        .run()
        .status(2)
        .stderr_has("Bearer [redacted]");
    no_token_in(&ran);
    no_token_on_disk(&w);
}

#[test]
fn the_token_echoed_by_a_failing_write_is_in_no_line_outbox_entry_or_note() {
    let w = World::new("echo-write");
    w.every_minute("jobs/a");
    w.once_at(FIRST).run().success();
    w.vault
        .set_fault(Route::Create, Fault::EchoAuthorization(401), None);
    let ran = w
        .once_at(DUE)
        .run()
        .success()
        .stdout_has("ok: jobs/a -> queued in the outbox (")
        .stdout_has("Bearer [redacted]");
    no_token_in(&ran);
    assert_eq!(w.outbox().len(), 1);
    no_token_on_disk(&w);
    // Still refused: the delivery pass's log.
    let ran = w
        .once_at(AFTER)
        .run()
        .success()
        .stderr_has("stays queued")
        .stderr_has("Bearer [redacted]");
    no_token_in(&ran);
    no_token_on_disk(&w);
    w.vault.clear_faults();
    let ran = w.once_at("2026-01-01T00:01:50Z").run().success();
    no_token_in(&ran);
    assert!(w.outbox().is_empty());
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    no_token("the note", &format!("{:?}", runs[0]));
}

#[test]
fn the_token_an_agent_prints_is_not_kept_in_its_failure_note() {
    let w = World::with_claude(
        "echo-agent",
        FakeClaude::new()
            .stderr(format!(
                "MCP error: 401 for Authorization: Bearer {TOKEN}\n"
            ))
            .exits(1),
    );
    w.every_minute("jobs/a");
    w.once_at(FIRST).run().success();
    let ran = w.once_at(DUE).run().status(1);
    no_token_in(&ran);
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    assert!(
        runs[0].content.contains("[redacted]"),
        "{}",
        runs[0].content
    );
    no_token("the failure note", &format!("{:?}", runs[0]));
    no_token_on_disk(&w);
}

#[test]
fn the_token_echoed_to_serve_is_in_no_http_body_or_log_line() {
    let w = World::new("echo-serve");
    w.vault.add_job("jobs/m", &job("manual", ""));
    let s = start(&w, FakeHub::start(), &[], &[]);
    w.vault
        .set_fault(Route::List, Fault::EchoAuthorization(500), None);
    let (status, body) = s.get("/runner/runs", Some(&s.hub.token("runner:read")));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_unreachable");
    assert!(body.to_string().contains("[redacted]"), "{body}");
    no_token("the /runner/runs body", &body.to_string());
    // A run whose write is refused the same way.
    w.vault
        .set_fault(Route::Create, Fault::EchoAuthorization(401), None);
    let (status, body) = s.send(
        "POST",
        "/runner/jobs/jobs%2Fm/run-now",
        Some(&s.hub.token("runner:admin")),
        None,
    );
    assert_eq!(status, 200, "{body}\n{}", s.log());
    no_token("the run-now body", &body.to_string());
    no_token("serve's log", &s.log());
    no_token_on_disk(&w);
}

// ---------------------------------------------------------------------------
// 5. Folder vault escapes (SPEC §10).

/// A folder vault, a runner home and a fake claude side by side.
struct Folder {
    dir: TempDir,
    claude_bin: PathBuf,
    claude_dir: PathBuf,
}

impl Folder {
    fn new(name: &str, claude: FakeClaude) -> Folder {
        let dir = TempDir::new(name);
        std::fs::create_dir_all(dir.join("notes/jobs")).unwrap();
        let claude_dir = dir.join("claude");
        let claude_bin = claude.install(&claude_dir);
        Folder {
            dir,
            claude_bin,
            claude_dir,
        }
    }

    fn notes(&self) -> PathBuf {
        self.dir.join("notes")
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.notes().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// `parachute-runner <verb> --vault-dir <notes>`.
    fn runner(&self, verb: &str) -> Runner {
        Runner::new()
            .env("PARACHUTE_HOME", self.dir.join("home"))
            .env("HOME", self.dir.path())
            .env("PARACHUTE_RUNNER_CLAUDE_BIN", &self.claude_bin)
            .args([
                verb.as_ref(),
                "--vault-dir".as_ref(),
                self.notes().as_os_str(),
            ])
    }

    fn once_at(&self, now: &str) -> Runner {
        self.runner("once").env("PARACHUTE_RUNNER_NOW", now)
    }

    fn outbox(&self) -> Vec<PathBuf> {
        walk(&self.dir.join("home/runner/outbox"))
    }
}

/// A folder-vault job note (tagged in its frontmatter).
fn folder_job(extra: &str) -> String {
    job("\"* * * * *\"", &format!("tags: [job]\n{extra}"))
}

#[test]
fn a_linked_runs_folder_or_output_folder_gets_no_file_outside_the_vault() {
    let f = Folder::new("link-out", FakeClaude::new().prints("kept"));
    let outside = f.dir.join("outside");
    for d in ["runs", "reports"] {
        std::fs::create_dir_all(outside.join(d)).unwrap();
    }
    f.write("jobs/a.md", &folder_job(""));
    f.write(
        "jobs/b.md",
        &folder_job("output_path: \"reports/{{date}}\"\n"),
    );
    std::os::unix::fs::symlink(outside.join("runs"), f.notes().join("jobs/runs")).unwrap();
    std::os::unix::fs::symlink(outside.join("reports"), f.notes().join("reports")).unwrap();
    f.once_at(FIRST).run().success();
    let ran = f.once_at(DUE).run();
    for job in ["jobs/a", "jobs/b"] {
        let line = ran
            .stdout()
            .lines()
            .find(|l| l.split_whitespace().nth(1).map(|p| p.trim_end_matches(':')) == Some(job))
            .map(String::from)
            .unwrap_or_else(|| panic!("no line for {job}\n{}", ran.stdout()));
        assert!(
            line.contains("is a symbolic link") && !line.contains(" -> /"),
            "{line}"
        );
    }
    assert!(
        walk(&outside).is_empty(),
        "written outside: {:?}",
        walk(&outside)
    );
    // Kept, not lost: once the links are real folders, the notes arrive.
    assert_eq!(f.outbox().len(), 2, "{}", ran.stdout());
    for (link, dir) in [("jobs/runs", "jobs/runs"), ("reports", "reports")] {
        std::fs::remove_file(f.notes().join(link)).unwrap();
        std::fs::create_dir_all(f.notes().join(dir)).unwrap();
    }
    f.once_at(AFTER).run().success();
    assert!(f.outbox().is_empty());
    assert_eq!(walk(&f.notes().join("jobs/runs")).len(), 1);
    assert_eq!(walk(&f.notes().join("reports")).len(), 1);
    assert!(walk(&outside).is_empty());
}

#[test]
fn an_absolute_output_path_is_a_template_error_and_nothing_is_written_there() {
    let f = Folder::new("abs-out", FakeClaude::new().prints("x"));
    let target = f.dir.join("x");
    assert!(target.is_absolute());
    f.write(
        "jobs/abs.md",
        &folder_job(&format!(
            "output_path: \"{}/{{{{date}}}}\"\n",
            target.display()
        )),
    );
    f.once_at(FIRST).run().success();
    f.once_at(DUE)
        .run()
        .status(1)
        .stdout_has("failed: jobs/abs: template error: output_path renders to")
        .stdout_has("an absolute path");
    assert!(fake_claude::invocations(&f.claude_dir).is_empty());
    assert!(!target.exists(), "written at the absolute path");
    let notes = NoteFile::all_in(&f.notes().join("jobs/runs/abs"));
    assert_eq!(notes.len(), 1);
    assert!(notes[0].is_failed(), "{}", notes[0].dump());
    assert!(
        notes[0]
            .meta("run_error")
            .as_str()
            .is_some_and(|e| e.starts_with("template error: ")),
        "{}",
        notes[0].dump()
    );
}

#[test]
fn a_fifo_where_a_job_note_should_be_fails_fast_with_a_clear_error() {
    let f = Folder::new("fifo-note", FakeClaude::new().prints("x"));
    f.write("jobs/ok.md", &folder_job(""));
    mkfifo(&f.notes().join("jobs/fifo.md"));
    let ran = run_within(f.runner("once").args(["--only", "jobs/fifo"]), PATIENCE);
    ran.status(2).stderr_has("fifo.md: not a regular file");
    // A scheduled pass walks past it.
    run_within(f.once_at(FIRST), PATIENCE).success();
    run_within(f.once_at(DUE), PATIENCE)
        .success()
        .stdout_has("ok: jobs/ok");
}

const FORGED: &str = "done: total=9 ok=9 failed=0 skipped=0";

/// A folder with a valid and an invalid job whose file names hold a
/// newline followed by a forged summary line.
fn forged_names(name: &str) -> Folder {
    let f = Folder::new(name, FakeClaude::new().prints("x"));
    f.write(&format!("jobs/evil\n{FORGED}.md"), &folder_job(""));
    f.write(
        &format!("jobs/bad\n{FORGED}.md"),
        "---\ntags: [job]\nschedule: every day\n---\nhi\n",
    );
    f
}

#[track_caller]
fn no_forged_line(what: &str, ran: &Ran) {
    for line in all_lines(ran) {
        assert!(
            !line.starts_with(FORGED),
            "{what}: a file name forged a line:\n{}\n{}",
            ran.stdout(),
            ran.stderr()
        );
    }
}

#[test]
fn a_file_name_with_a_newline_cannot_forge_a_done_line_of_once() {
    let f = forged_names("forged-once");
    let ran = f.once_at(FIRST).run().status(1);
    no_forged_line("the first pass", &ran);
    let ran = f.once_at(DUE).run().status(1);
    no_forged_line("the pass that runs it", &ran);
    let ran = ran
        .stdout_has("ok: jobs/evil\\ndone: total=9")
        .stdout_has("invalid job at jobs/bad\\ndone: total=9");
    assert!(
        ran.stdout()
            .ends_with("done: total=2 ok=1 failed=1 skipped=0\n"),
        "{}",
        ran.stdout()
    );
}

#[test]
fn a_file_name_with_a_newline_cannot_forge_a_line_of_jobs_runs_dry_run_or_validate() {
    let f = forged_names("forged-other");
    f.once_at(FIRST).run().status(1);
    f.once_at(DUE).run().status(1);
    no_forged_line("jobs", &f.runner("jobs").run());
    no_forged_line("runs", &f.runner("runs").run());
    no_forged_line("once --dry-run", &f.once_at(DUE).args(["--dry-run"]).run());
    let ran = Runner::new()
        .args([
            "validate".as_ref(),
            f.notes()
                .join(format!("jobs/evil\n{FORGED}.md"))
                .as_os_str(),
        ])
        .run();
    no_forged_line("validate", &ran);
}

// ---------------------------------------------------------------------------
// 6. Clock faults (SPEC §7.6).

#[test]
fn a_clock_that_went_back_warns_runs_nothing_and_resumes_at_the_next_slot() {
    let w = World::new("clock-back");
    w.vault.add_job("jobs/h", &job("\"0 * * * *\"", ""));
    w.once_at("2026-01-01T00:30:00Z").run().success();
    // A year ahead: one catch-up run for the latest missed slot.
    w.once_at("2027-01-01T00:30:00Z")
        .run()
        .success()
        .stdout_has("ok: jobs/h -> ");
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(meta(&runs[0], "run_trigger"), "catch-up");
    assert_eq!(meta(&runs[0], "run_scheduled_for"), "2027-01-01T00:00:00Z");
    // Back to ten minutes after the first pass: said, nothing runs.
    w.once_at("2026-01-01T00:40:00Z")
        .run()
        .success()
        .stderr_has("the clock went back");
    w.once_at("2026-01-01T00:50:00Z").run().success();
    assert_eq!(w.runs().len(), 1);
    // The next slot runs, not a year later.
    w.once_at("2026-01-01T01:00:30Z")
        .run()
        .success()
        .stdout_has("ok: jobs/h -> ");
    let runs = w.runs();
    assert_eq!(runs.len(), 2);
    assert_eq!(meta(&runs[1], "run_trigger"), "schedule");
    assert_eq!(meta(&runs[1], "run_scheduled_for"), "2026-01-01T01:00:00Z");
    check_invariants(&w);
}

// ---------------------------------------------------------------------------
// 7. Deleted lock files do not kill a live run.

/// Creates the file a waiting fake claude is released by, when dropped
/// (so a failed test does not leave the agent waiting).
struct Release(PathBuf);

impl Release {
    fn now(&self) {
        std::fs::write(&self.0, "go").unwrap();
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "go");
    }
}

#[test]
fn removed_lock_files_neither_kill_a_live_run_nor_start_a_second_one() {
    let gate = TempDir::new("locks-gate");
    let release = Release(gate.join("go"));
    let w = World::with_claude(
        "locks-removed",
        FakeClaude::new().prints("only once").waits_for(&release.0),
    );
    w.every_minute("jobs/slow");
    w.once_at(FIRST).run().success();
    let first = w.once_at(DUE).spawn();
    assert!(eventually(PATIENCE, || w.invocations().len() == 1));
    let agent = fake_claude::only_invocation(&w.claude_dir).pid();
    // A tmp cleaner takes the lock files.
    let locks = w.home.join("runner/locks");
    let mut removed = 0;
    for e in std::fs::read_dir(&locks).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
        removed += 1;
    }
    assert!(removed > 0);
    // Another pass, with the job due again.
    let ran = w
        .once_at("2026-01-01T00:02:30Z")
        .run()
        .success()
        .stdout_has("skipped: jobs/slow: still running");
    assert!(!ran.stderr().contains("interrupted"), "{}", ran.stderr());
    assert!(fake_claude::alive(agent), "the live agent was killed");
    assert_eq!(w.invocations().len(), 1, "a second run of the job started");
    assert!(w.runs().is_empty());
    release.now();
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.once_at("2026-01-01T00:02:40Z").run().success();
    let tally = check_invariants(&w);
    assert_eq!(tally.notes.len(), 1, "{tally:?}");
    let runs = w.runs();
    assert_eq!(runs[0].content, "only once");
    assert!(w.state()["jobs"]["jobs/slow"].get("running").is_none());
}

// ---------------------------------------------------------------------------
// 8. Unbounded reads.

/// The stderr of a fatal start: exactly one line, naming `file`.
#[track_caller]
fn one_line_naming(ran: &Ran, file: &Path) {
    let err = ran.stderr();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("parachute-runner: error: ")
            && lines[0].contains(&file.display().to_string())
            && lines[0].contains("not a regular file"),
        "{err}"
    );
}

#[test]
fn state_json_linked_to_dev_zero_fails_at_once_naming_the_file() {
    let w = World::new("state-zero");
    w.every_minute("jobs/a");
    w.once_at(FIRST).run().success();
    let state = w.home.join("runner/state.json");
    std::fs::remove_file(&state).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &state).unwrap();
    let ran = run_within(w.once_at(DUE), PATIENCE).status(2);
    one_line_naming(&ran, &state);
    let ran = run_within(w.runner().args(["jobs"]), PATIENCE).status(2);
    one_line_naming(&ran, &state);
    assert!(w.invocations().is_empty());
}

#[test]
fn config_json_as_a_fifo_or_a_link_to_dev_zero_fails_at_once_naming_the_file() {
    let w = World::new("config-fifo");
    let config = w.home.join("runner/config.json");
    std::fs::remove_file(&config).unwrap();
    mkfifo(&config);
    let ran = run_within(w.once_at(FIRST), PATIENCE).status(2);
    one_line_naming(&ran, &config);
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    let ran = run_within(w.once_at(FIRST), PATIENCE).status(2);
    one_line_naming(&ran, &config);
}

// ---------------------------------------------------------------------------
// 9. The dead-run cleanup kills only what the run started.

/// A process of nobody's run, killed (with its group) when dropped.
struct Bystander(Child);

impl Drop for Bystander {
    fn drop(&mut self) {
        kill(-i64::from(self.0.id()));
        let _ = self.0.wait();
    }
}

#[test]
fn the_dead_run_cleanup_spares_a_process_that_only_names_its_mcp_config() {
    let w = World::with_claude(
        "cleanup-spares",
        FakeClaude::new().prints("never").sleeps(60.0),
    );
    w.every_minute("jobs/slow");
    w.once_at(FIRST).run().success();
    let mut runner = w.once_at(DUE).spawn();
    let tmp = w.home.join("runner/tmp");
    // The agent runs and its runner has recorded it.
    assert!(eventually(PATIENCE, || {
        w.invocations().iter().any(|c| c.mcp_config.is_some())
            && walk(&tmp)
                .iter()
                .any(|p| p.to_string_lossy().ends_with(".agent.json"))
    }));
    runner.kill().unwrap();
    runner.wait().unwrap();
    let call = fake_claude::only_invocation(&w.claude_dir);
    let agent = call.pid();
    assert!(fake_claude::alive(agent));
    let mcp = call.arg_after("--mcp-config").unwrap().to_string();
    assert!(
        mcp.starts_with(&tmp.display().to_string()) && mcp.ends_with(".mcp.json"),
        "{mcp}"
    );
    let bystander = Bystander(
        Command::new("sh")
            .args(["-c", "sleep 300; exit 0"])
            .arg(&mcp)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = bystander.0.id();
    // Its argv names the MCP config once it has exec'd.
    assert!(eventually(PATIENCE, || std::fs::read(format!(
        "/proc/{pid}/cmdline"
    ))
    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&mcp))));
    let ran = w.once_at(AFTER).run().success();
    assert!(ran.stderr().contains("was interrupted"), "{}", ran.stderr());
    assert!(
        eventually(PATIENCE, || !fake_claude::alive(agent)),
        "the orphaned agent survived the next pass\n{}",
        ran.stderr()
    );
    assert!(
        fake_claude::alive(pid as i32),
        "the cleanup killed a process that only named the run's MCP config\n{}",
        ran.stderr()
    );
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        meta(&runs[0], "run_error"),
        "interrupted: runner stopped before the run finished"
    );
    drop(bystander);
}

// ---------------------------------------------------------------------------
// 10. A leaked stdin writer.

/// Kills the `setsid` children the fake claude recorded, when dropped.
struct SetsidChildren(PathBuf);

impl SetsidChildren {
    fn pids(&self) -> Vec<i32> {
        fake_claude::invocations(&self.0)
            .iter()
            .filter_map(|c| std::fs::read_to_string(c.dir.join("setsid.pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }
}

impl Drop for SetsidChildren {
    fn drop(&mut self) {
        for pid in self.pids() {
            kill(i64::from(pid));
        }
    }
}

#[test]
fn an_agent_whose_child_holds_stdin_unread_leaks_no_thread() {
    let w = World::with_claude(
        "stdin-leak",
        FakeClaude::new().prints("the answer").leaks_stdin(),
    );
    let children = SetsidChildren(w.claude_dir.clone());
    // The prompt: as big as a job note may be (8 MiB), far over a pipe's
    // buffer, so the writer must give up rather than wait.
    let body = "p".repeat(7 << 20);
    w.vault.add_job(
        "jobs/big",
        &format!("---\nschedule: manual\nmodel: m\nallowed_tools: Read\n---\n{body}\n"),
    );
    drop(body);
    let s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    let pid = s.child.id();
    assert_eq!(s.text("/healthz").0, 200);
    let threads_before = proc_status(pid, "Threads");
    let rss_before = proc_status(pid, "VmRSS");
    for i in 0..3 {
        let (status, body) = s.send(
            "POST",
            "/runner/jobs/jobs%2Fbig/run-now",
            Some(&admin),
            None,
        );
        assert_eq!(status, 200, "run {i}: {body}\n{}", s.log());
        assert_eq!(body["status"], "ok", "run {i}: {body}\n{}", s.log());
    }
    let pids = children.pids();
    assert_eq!(pids.len(), 3, "{}", s.log());
    for child in &pids {
        assert!(
            eventually(PATIENCE, || !fake_claude::alive(*child)),
            "the setsid child {child} survived its run"
        );
    }
    let mut threads_after = 0;
    let settled = eventually(PATIENCE, || {
        threads_after = proc_status(pid, "Threads");
        threads_after <= threads_before
    });
    let rss_after = proc_status(pid, "VmRSS");
    eprintln!(
        "figure: serve threads {threads_before} before, {threads_after} after 3 runs; VmRSS {rss_before} kB before, {rss_after} kB after"
    );
    assert!(
        settled,
        "serve has {threads_after} threads after the runs, {threads_before} before\n{}",
        s.log()
    );
}
