//! Several runners, one vault (SPEC §12; issue 16 item 3): runner homes
//! with `coordination: "vault"` against one fake vault. Each home is a host
//! of its own (its own state.json, locks, outbox and fake claude), so the
//! vault's conditional update is the only thing they share. Every
//! scheduled slot gets exactly one note whoever runs it; a claimant killed,
//! or cut off from the vault, is reported `interrupted` once, by the runner
//! that takes its claim over after the lease; manual runs take no claim;
//! listings skip the state notes. Every test ends with no live claim in
//! the vault and no agent process left.
//!
//! Nothing here waits a fixed time and then asserts: instants are injected
//! (`PARACHUTE_RUNNER_NOW`, or `PARACHUTE_RUNNER_CLOCK` where time must
//! pass for a lease), and events in other processes are awaited with
//! generous deadlines.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::serve::start;
use crate::support::fake_claude::{self, FakeClaude};
use crate::support::fake_hub::FakeHub;
use crate::support::fake_vault::{FakeVault, Fault, Route, StoredNote};
use crate::support::world::{Home, TOKEN, World, eventually, job};
use crate::support::{Ran, Runner, TempDir};

/// For events in other processes, on a loaded machine.
const LONG: Duration = Duration::from_secs(60);
const STATE_TAG: &str = "job-state";
const EVERY_MINUTE: &str = "\"* * * * *\"";

fn coordinated() -> Value {
    json!({"coordination": "vault"})
}

fn ts(s: &str) -> Timestamp {
    s.parse()
        .unwrap_or_else(|e| panic!("not an instant: {s:?}: {e}"))
}

/// 2026-01-01, `m` minutes and `s` seconds after midnight UTC.
fn at(m: i64, s: i64) -> String {
    format!(
        "{:.0}",
        ts("2026-01-01T00:00:00Z") + SignedDuration::from_secs(m * 60 + s)
    )
}

fn plus(instant: &str, secs: i64) -> String {
    format!("{:.0}", ts(instant) + SignedDuration::from_secs(secs))
}

fn meta(note: &StoredNote) -> Value {
    note.metadata.clone().unwrap_or(Value::Null)
}

/// `jobs/runs/.runner/` + the first 16 hex digits of SHA-256(job path).
fn state_path(job_path: &str) -> String {
    let digest = Sha256::digest(job_path.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("jobs/runs/.runner/{hex}")
}

/// The state note of `job_path`: exactly one, where SPEC §12 puts it.
#[track_caller]
fn state_note(v: &FakeVault, job_path: &str) -> StoredNote {
    let mut notes: Vec<StoredNote> = v
        .notes_tagged(STATE_TAG)
        .into_iter()
        .filter(|n| meta(n)["job_path"] == job_path)
        .collect();
    assert_eq!(notes.len(), 1, "state notes of {job_path}: {notes:#?}");
    let note = notes.remove(0);
    assert_eq!(note.path.as_deref(), Some(state_path(job_path).as_str()));
    note
}

/// The claim in the state note of `job_path` (`Null` when none).
#[track_caller]
fn claim(v: &FakeVault, job_path: &str) -> Value {
    meta(&state_note(v, job_path))["claim"].clone()
}

#[track_caller]
fn checked_through(v: &FakeVault, job_path: &str) -> Timestamp {
    let note = state_note(v, job_path);
    ts(meta(&note)["checked_through"]
        .as_str()
        .unwrap_or_else(|| panic!("no checked_through: {note:#?}")))
}

/// No state note holds a claim (live or not).
#[track_caller]
fn assert_no_claim_left(v: &FakeVault) {
    for note in v.notes_tagged(STATE_TAG) {
        let m = meta(&note);
        assert!(
            m["claim"].is_null(),
            "{:?} keeps a claim: {}",
            note.path,
            m["claim"]
        );
    }
}

/// No agent any home started is alive, nor a `running` entry left in any
/// home's state.
#[track_caller]
fn assert_nothing_left(homes: &[&Home]) {
    for h in homes {
        for call in h.invocations() {
            let pid = call.pid();
            assert!(
                eventually(LONG, || !fake_claude::alive(pid)),
                "agent {pid} of {} is still running",
                h.home.path().display()
            );
        }
        if let Some(state) = h.state() {
            for (path, entry) in state["jobs"].as_object().into_iter().flatten() {
                assert!(
                    entry["running"].is_null(),
                    "{}: {path} still marked running: {entry}",
                    h.home.path().display()
                );
            }
        }
    }
}

/// The run notes, by (job, slot); manual runs under slot "manual".
fn by_slot(v: &FakeVault) -> BTreeMap<(String, String), Vec<StoredNote>> {
    let mut out: BTreeMap<(String, String), Vec<StoredNote>> = BTreeMap::new();
    for note in v.notes_tagged("job-run") {
        let m = meta(&note);
        let job = m["parent_job_path"].as_str().unwrap_or("?").to_string();
        let slot = m["run_scheduled_for"]
            .as_str()
            .map_or("manual".to_string(), |s| format!("{:.0}", ts(s)));
        out.entry((job, slot)).or_default().push(note);
    }
    out
}

/// Waits for `child` at most `limit` (killed and failed after it),
/// reading its output meanwhile.
#[track_caller]
fn finish(mut child: Child, limit: Duration) -> Ran {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the runner did not end within {limit:?}\n--- stderr\n{}",
                String::from_utf8_lossy(&err.join().unwrap())
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

/// A `once` line of a pass that lost a slot to another runner.
fn lost_to_another(line: &str) -> bool {
    line.starts_with("skipped: ")
        && (line.contains(": claimed by ") || line.contains(": handled by another runner"))
}

// ---------------------------------------------------------------------
// 1. Ten concurrent passes over three homes.
// ---------------------------------------------------------------------

/// Ten `once` processes over three homes, all at the same instant, each
/// minute for ten minutes: each due slot is run by exactly one of them;
/// the others say `skipped: … claimed by …` (or `handled by another
/// runner`) or nothing.
#[test]
fn ten_passes_over_three_homes_fire_each_slot_once() {
    const JOBS: usize = 5;
    const MINUTES: i64 = 10;
    let w = World::new("sr-ten");
    let homes: Vec<Home> = (0..3)
        .map(|i| {
            w.home(
                &format!("sr-ten-{i}"),
                FakeClaude::new().prints("x"),
                coordinated(),
            )
        })
        .collect();
    let jobs: Vec<String> = (0..JOBS).map(|i| format!("jobs/p{i}")).collect();
    for j in &jobs {
        w.vault.add_job(j, &job(EVERY_MINUTE, ""));
    }
    // The first pass records the jobs, here and in the vault.
    homes[0].once_at(&at(0, 30)).run().success().stdout_empty();
    for j in &jobs {
        assert_eq!(checked_through(&w.vault, j), ts(&at(0, 30)));
        assert!(claim(&w.vault, j).is_null());
    }
    let (mut lost_lines, mut quiet, mut ok_lines) = (0, 0, 0);
    for minute in 1..=MINUTES {
        let now = at(minute, 30);
        let children: Vec<Child> = (0..10)
            .map(|p| homes[p % 3].once_at(&now).env("RUST_LOG", "warn").spawn())
            .collect();
        let outs: Vec<Ran> = children.into_iter().map(|c| finish(c, LONG)).collect();
        let mut ran: BTreeMap<String, usize> = BTreeMap::new();
        for out in &outs {
            assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout(), out.stderr());
            let text = out.stdout();
            if text.is_empty() {
                quiet += 1;
            }
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("ok: ") {
                    let job = rest.split(' ').next().unwrap().to_string();
                    *ran.entry(job).or_default() += 1;
                    ok_lines += 1;
                } else if lost_to_another(line) {
                    lost_lines += 1;
                } else {
                    assert!(
                        line.starts_with("done: "),
                        "minute {minute}: unexpected line {line:?}\n{text}\n{}",
                        out.stderr()
                    );
                }
            }
        }
        let want: BTreeMap<String, usize> = jobs.iter().map(|j| (j.clone(), 1)).collect();
        assert_eq!(ran, want, "minute {minute}: ok lines per job");
        let notes = by_slot(&w.vault);
        for j in &jobs {
            let got = notes.get(&(j.clone(), at(minute, 0)));
            assert_eq!(
                got.map_or(0, Vec::len),
                1,
                "{j} at {}: {got:#?}",
                at(minute, 0)
            );
        }
    }
    // The figures: every slot of every job once.
    let notes = by_slot(&w.vault);
    let expected: Vec<(String, String)> = jobs
        .iter()
        .flat_map(|j| (1..=MINUTES).map(move |m| (j.clone(), at(m, 0))))
        .collect();
    let missing = expected.iter().filter(|k| !notes.contains_key(*k)).count();
    let twice = notes.values().filter(|n| n.len() > 1).count();
    let total: usize = notes.values().map(Vec::len).sum();
    let agents: usize = homes.iter().map(|h| h.invocations().len()).sum();
    eprintln!(
        "ten passes over three homes: {} slots, {total} notes, {missing} missing, {twice} twice; \
         {ok_lines} ok lines, {lost_lines} 'claimed by/handled' lines, {quiet} quiet passes, \
         {agents} agents (per home: {:?})",
        expected.len(),
        homes
            .iter()
            .map(|h| h.invocations().len())
            .collect::<Vec<_>>()
    );
    assert_eq!((missing, twice, total), (0, 0, expected.len()));
    assert_eq!(agents, expected.len(), "one agent per slot");
    for note in w.runs() {
        assert!(meta(&note).get("run_error").is_none(), "{note:#?}");
        assert_eq!(meta(&note)["run_trigger"], "schedule");
    }
    for j in &jobs {
        assert_eq!(checked_through(&w.vault, j), ts(&at(MINUTES, 0)));
    }
    assert_no_claim_left(&w.vault);
    assert_nothing_left(&homes.iter().collect::<Vec<_>>());
}

// ---------------------------------------------------------------------
// 2. serve in one home, passes in two others, over a simulated hour.
// ---------------------------------------------------------------------

/// How much faster than real time the simulated hour runs.
const HOUR_SPEED: i64 = 30;

/// A `serve` on a simulated clock (an hour in two minutes) and, in two
/// other homes, a `once` every simulated minute at that minute's instant,
/// started when serve's clock reaches it: the three race for each slot
/// of a `* * * * *` job, and each slot of the hour gets one note.
#[test]
fn serve_and_passes_in_two_other_homes_share_an_hour() {
    let w = World::with_claude("sr-hour", FakeClaude::new().prints("x"));
    w.set_config("coordination", json!("vault"));
    let homes: Vec<Home> = (1..=2)
        .map(|i| {
            w.home(
                &format!("sr-hour-{i}"),
                FakeClaude::new().prints("x"),
                coordinated(),
            )
        })
        .collect();
    w.vault.add_job("jobs/tick", &job(EVERY_MINUTE, ""));
    // A first pass records the job at 00:00:00: the hour's slots are
    // 00:01 … 01:00.
    homes[0].once_at(&at(0, 0)).run().success().stdout_empty();
    let lead = Duration::from_secs(5);
    let anchor = Timestamp::now() + SignedDuration::try_from(lead).unwrap();
    let anchor_real = Instant::now() + lead;
    let clock = format!("{},{anchor},{HOUR_SPEED}", at(0, 0));
    let mut served = start(
        &w,
        FakeHub::start(),
        &["--poll-interval", "5"],
        &[("PARACHUTE_RUNNER_CLOCK", clock.as_str())],
    );
    let lines = Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for h in &homes {
            let lines = &lines;
            scope.spawn(move || {
                for m in 1..=60 {
                    // When serve's clock reaches minute m (later if this
                    // loop is behind: it never skips a minute).
                    let ms = m * 60_000 / HOUR_SPEED;
                    let due = anchor_real + Duration::from_millis(ms as u64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let out = h.once_at(&at(m, 0)).env("RUST_LOG", "warn").run();
                    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout(), out.stderr());
                    lines
                        .lock()
                        .unwrap()
                        .extend(out.stdout().lines().map(|l| format!("{}: {l}", at(m, 0))));
                }
            });
        }
    });
    let hour: Vec<String> = (1..=60).map(|m| at(m, 0)).collect();
    let covered = |v: &FakeVault| {
        let notes = by_slot(v);
        hour.iter()
            .all(|s| notes.contains_key(&("jobs/tick".to_string(), s.clone())))
    };
    let all = eventually(LONG, || covered(&w.vault));
    assert!(served.sigterm().success(), "{}", served.log());
    let notes = by_slot(&w.vault);
    let missing: Vec<&String> = hour
        .iter()
        .filter(|s| !notes.contains_key(&("jobs/tick".to_string(), (*s).clone())))
        .collect();
    let twice: Vec<&(String, String)> = notes
        .iter()
        .filter(|(_, n)| n.len() > 1)
        .map(|(k, _)| k)
        .collect();
    let in_hour: usize = hour
        .iter()
        .filter_map(|s| notes.get(&("jobs/tick".to_string(), s.clone())))
        .map(Vec::len)
        .sum();
    let lines = lines.into_inner().unwrap();
    let log = served.log();
    let still_running: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .chain(log.lines())
        .filter(|l| l.contains("still running"))
        .collect();
    let by_home = [
        w.invocations().len(),
        homes[0].invocations().len(),
        homes[1].invocations().len(),
    ];
    eprintln!(
        "serve + 2 homes over a simulated hour ({HOUR_SPEED}x): 60 slots, {in_hour} notes in the hour \
         ({} in all), {} missing, {} twice; runs by serve / home 1 / home 2: {by_home:?}; \
         {} 'claimed by/handled' lines from the passes, {} 'still running' skips",
        notes.values().map(Vec::len).sum::<usize>(),
        missing.len(),
        twice.len(),
        lines
            .iter()
            .filter(|l| lost_to_another(l.split_once(": ").unwrap().1))
            .count(),
        still_running.len(),
    );
    assert!(
        all && missing.is_empty() && twice.is_empty(),
        "missing {missing:?}, twice {twice:?}\n--- still running\n{still_running:#?}\n--- passes\n{lines:#?}\n--- serve\n{log}"
    );
    assert_eq!(in_hour, 60);
    for note in w.runs() {
        assert!(meta(&note).get("run_error").is_none(), "{note:#?}");
    }
    assert_eq!(
        by_home.iter().sum::<usize>(),
        notes.values().map(Vec::len).sum::<usize>(),
        "one agent per note"
    );
    assert_no_claim_left(&w.vault);
    assert_nothing_left(&homes.iter().collect::<Vec<_>>());
    for call in w.invocations() {
        assert!(
            eventually(LONG, || !fake_claude::alive(call.pid())),
            "serve's agent {} left",
            call.pid()
        );
    }
    for (path, entry) in w.state()["jobs"].as_object().into_iter().flatten() {
        assert!(
            entry["running"].is_null(),
            "serve: {path} still running: {entry}"
        );
    }
}

// ---------------------------------------------------------------------
// 3. A claimant SIGKILLed mid-run.
// ---------------------------------------------------------------------

/// A world with the job `job_path` on `schedule` and two homes: `a`, whose
/// agent prints only once `release` exists, and `b`, whose agent answers
/// at once and whose first pass (00:00:30) has seen the job.
fn waiting_claimant_and_a_peer(
    name: &str,
    job_path: &str,
    schedule: &str,
) -> (World, Home, Home, std::path::PathBuf) {
    let w = World::new(name);
    let release = w.home.join("release");
    let a = w.home(
        &format!("{name}-a"),
        FakeClaude::new().prints("never").waits_for(&release),
        coordinated(),
    );
    let b = w.home(
        &format!("{name}-b"),
        FakeClaude::new().prints("x"),
        coordinated(),
    );
    w.vault.add_job(job_path, &job(schedule, ""));
    b.once_at(&at(0, 30)).run().success().stdout_empty();
    (w, a, b, release)
}

/// Starts a `once` in `a` at `now` whose agent waits, waits for the agent
/// and for its claim, and returns the runner and the claim.
fn claimant_running(w: &World, a: &Home, now: &str, job_path: &str) -> (Child, Value) {
    let child = a.once_at(now).spawn();
    assert!(
        eventually(LONG, || a.invocations().len() == 1),
        "the agent never started"
    );
    let claim = claim(&w.vault, job_path);
    assert!(claim.is_object(), "no claim while the run goes on");
    (child, claim)
}

/// The single interrupted note of the run `claim` stood for.
#[track_caller]
fn assert_interrupted_note(w: &World, claim: &Value, runner_pid: u32) {
    let output_path = claim["output_path"].as_str().unwrap();
    let failed = format!("{output_path}.failed");
    let note = w
        .vault
        .note_at(&failed)
        .unwrap_or_else(|| panic!("no note at {failed}: {:#?}", w.runs()));
    let m = meta(&note);
    assert_eq!(m["run_id"], claim["run_id"], "{m}");
    assert_eq!(
        ts(m["run_scheduled_for"].as_str().unwrap()),
        ts(claim["slot"].as_str().unwrap())
    );
    assert_eq!(m["run_exit_code"], 130, "{m}");
    let error = m["run_error"].as_str().unwrap();
    assert!(error.starts_with("interrupted: "), "{error}");
    assert!(
        error.contains(&format!(":{runner_pid} ")) && error.contains("runner"),
        "the reason names the runner that died ({runner_pid}): {error}"
    );
    assert!(
        note.tags.iter().any(|t| t == "job-run-failed"),
        "{:?}",
        note.tags
    );
    assert!(note.content.contains(error), "{}", note.content);
    // And it is the slot's only note.
    let slot = format!("{:.0}", ts(claim["slot"].as_str().unwrap()));
    let job = m["parent_job_path"].as_str().unwrap().to_string();
    assert_eq!(by_slot(&w.vault)[&(job, slot)].len(), 1);
}

/// The claimant is SIGKILLed while its agent runs. Passes in another home
/// before its lease ran out (and up to 30 s after) take nothing over and
/// write nothing; the first one past `lease_until + 30 s` writes the run's
/// single `interrupted` note and clears the claim; later passes anywhere
/// write nothing more, and the dead runner's own home stops its agent.
#[test]
fn a_claimant_killed_mid_run_is_reported_once_after_its_lease() {
    // Minute 1 of every hour: the only slot in the test is 00:01.
    let (w, a, b, release) = waiting_claimant_and_a_peer("sr-kill", "jobs/k", "\"1 * * * *\"");
    let (mut child, claimed) = claimant_running(&w, &a, &at(1, 30), "jobs/k");
    let pid = child.id();
    assert_eq!(ts(claimed["slot"].as_str().unwrap()), ts(&at(1, 0)));
    // 60 s from the claim at the fixed instant.
    assert_eq!(ts(claimed["lease_until"].as_str().unwrap()), ts(&at(2, 30)));
    assert!(
        claimed["host"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{pid}")),
        "{claimed}"
    );
    assert_eq!(checked_through(&w.vault, "jobs/k"), ts(&at(1, 0)));
    child.kill().unwrap();
    child.wait().unwrap();
    let agent = a.invocations()[0].pid();
    eprintln!(
        "after its runner's SIGKILL the agent is {}",
        if fake_claude::alive(agent) {
            "still running (an orphan)"
        } else {
            "gone"
        }
    );

    // Before the lease ran out, and until 30 s after it: no takeover.
    for now in [at(1, 45), at(2, 20), at(2, 50), at(3, 0)] {
        let ran = b.once_at(&now).run().success();
        assert_eq!(ran.stdout(), "", "at {now}:\n{}", ran.stderr());
        assert!(w.runs().is_empty(), "at {now}: {:#?}", w.runs());
        assert_eq!(claim(&w.vault, "jobs/k"), claimed, "at {now}");
    }
    assert!(b.invocations().is_empty());

    // Past lease_until + 30 s: taken over and reported, once.
    let ran = b.once_at(&at(3, 1)).run();
    assert!(matches!(ran.code(), Some(0 | 1)), "{}", ran.stderr());
    assert_eq!(w.runs().len(), 1, "{}\n{:#?}", ran.stderr(), w.runs());
    assert_interrupted_note(&w, &claimed, pid);
    assert!(claim(&w.vault, "jobs/k").is_null(), "the claim is cleared");
    assert!(b.invocations().is_empty(), "nothing was due for b to run");

    // Later passes, in any home, write nothing more; the dead runner's
    // home stops the agent it left.
    a.once_at(&at(3, 30)).run();
    assert!(
        eventually(LONG, || !fake_claude::alive(agent)),
        "the dead runner's agent {agent} is still running after a pass in its home"
    );
    b.once_at(&at(4, 0)).run().success();
    let c = w.home("sr-kill-c", FakeClaude::new().prints("x"), coordinated());
    c.once_at(&at(4, 10)).run().success().stdout_empty();
    assert_eq!(w.runs().len(), 1, "{:#?}", w.runs());
    assert!(c.invocations().is_empty());
    std::fs::write(&release, "").unwrap();
    assert_no_claim_left(&w.vault);
    assert_nothing_left(&[&a, &b, &c]);
}

/// The same with an every-minute job: the slot that comes while the dead
/// claimant's lease holds is skipped (`still running on <host>`, no
/// note), and the pass past the lease takes the claim over for its own
/// slot in the same update: the dead run's `interrupted` note, then its
/// own run's note; each slot has at most one note.
#[test]
fn a_dead_claimants_next_slot_is_skipped_then_taken_over_with_the_claim() {
    let (w, a, b, release) = waiting_claimant_and_a_peer("sr-kill-next", "jobs/e", EVERY_MINUTE);
    let (mut child, claimed) = claimant_running(&w, &a, &at(1, 30), "jobs/e");
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let agent = a.invocations()[0].pid();

    // 00:02 comes while the lease (to 00:02:30) holds.
    let ran = b.once_at(&at(2, 20)).run().success();
    let host = claimed["host"].as_str().unwrap();
    assert_eq!(
        ran.stdout().lines().next().unwrap_or(""),
        format!("skipped: jobs/e: still running on {host}"),
        "{}",
        ran.stderr()
    );
    assert!(w.runs().is_empty());
    assert_eq!(claim(&w.vault, "jobs/e"), claimed);
    assert_eq!(checked_through(&w.vault, "jobs/e"), ts(&at(2, 0)));

    // 00:03, past lease + 30 s: b claims it, taking the dead claim over.
    let ran = b.once_at(&at(3, 1)).run();
    assert!(
        ran.stdout().contains("ok: jobs/e"),
        "{}\n{}",
        ran.stdout(),
        ran.stderr()
    );
    assert_interrupted_note(&w, &claimed, pid);
    let notes = by_slot(&w.vault);
    let slots: Vec<&str> = notes.keys().map(|(_, s)| s.as_str()).collect();
    assert_eq!(slots, [at(1, 0), at(3, 0)], "{notes:#?}");
    assert!(notes.values().all(|n| n.len() == 1));
    let own = &notes[&("jobs/e".to_string(), at(3, 0))][0];
    assert!(meta(own).get("run_error").is_none(), "{own:#?}");
    assert!(claim(&w.vault, "jobs/e").is_null());

    // Nothing more, anywhere.
    a.once_at(&at(3, 30)).run();
    assert!(eventually(LONG, || !fake_claude::alive(agent)));
    let c = w.home(
        "sr-kill-next-c",
        FakeClaude::new().prints("x"),
        coordinated(),
    );
    c.once_at(&at(3, 40)).run().success().stdout_empty();
    b.once_at(&at(3, 50)).run().success().stdout_empty();
    assert_eq!(w.runs().len(), 2, "{:#?}", w.runs());
    std::fs::write(&release, "").unwrap();
    assert_no_claim_left(&w.vault);
    assert_nothing_left(&[&a, &b, &c]);
}

// ---------------------------------------------------------------------
// 4. A claimant cut off from the vault past its lease.
// ---------------------------------------------------------------------

/// The claimant's clock runs 60× (its 60 s lease passes in a second of
/// real time, renewals every 20 simulated seconds): once the vault stops
/// answering its PATCHes (a 503 on every PATCH, or the vault down), it
/// cannot renew, stops its agent before the lease ends and writes
/// nothing. With the vault back, another home's pass past lease + 30 s
/// writes the run's single `interrupted` note.
#[test]
fn a_claimant_cut_off_from_the_vault_stops_its_agent_and_writes_nothing() {
    for case in ["patch-503", "vault-down"] {
        let w = World::new(&format!("sr-cut-{case}"));
        let release = w.home.join("release");
        let a = w.home(
            &format!("sr-cut-{case}-a"),
            FakeClaude::new().prints("never").waits_for(&release),
            coordinated(),
        );
        let b = w.home(
            &format!("sr-cut-{case}-b"),
            FakeClaude::new().prints("x"),
            coordinated(),
        );
        // Once a day at 00:01: a's fast clock reaches no other slot.
        w.vault.add_job("jobs/c", &job("\"1 0 * * *\"", ""));
        b.once_at(&at(0, 30)).run().success().stdout_empty();
        let clock = format!("{},{},60", at(1, 30), Timestamp::now());
        let child = a
            .runner()
            .env("PARACHUTE_RUNNER_CLOCK", &clock)
            .args(["once"])
            .spawn();
        let pid = child.id();
        assert!(eventually(LONG, || a.invocations().len() == 1), "{case}");
        let agent = a.invocations()[0].pid();
        let first = claim(&w.vault, "jobs/c");
        assert_eq!(ts(first["slot"].as_str().unwrap()), ts(&at(1, 0)), "{case}");
        // Renewed while the vault answers.
        assert!(
            eventually(LONG, || claim(&w.vault, "jobs/c")["lease_until"]
                != first["lease_until"]),
            "{case}: the lease was never renewed"
        );
        match case {
            "patch-503" => w.vault.set_fault(Route::Patch, Fault::Status(503), None),
            _ => w.vault.stop(),
        }
        let ran = finish(child, LONG);
        assert!(
            ran.stdout()
                .contains("failed: jobs/c: stopped: could not renew its claim"),
            "{case}\n{}\n{}",
            ran.stdout(),
            ran.stderr()
        );
        assert!(
            !fake_claude::alive(agent),
            "{case}: its agent is still running"
        );
        assert!(
            !a.invocations()[0].dir.join("finished").exists(),
            "{case}: the agent was not stopped, it ended"
        );
        assert!(w.runs().is_empty(), "{case}: {:#?}", w.runs());
        assert!(a.outbox().is_empty(), "{case}: {:?}", a.outbox());
        w.vault.clear_faults();
        w.vault.restart();
        // The claim is still a's (it could not clear it): past its lease
        // + 30 s another home takes it over.
        let left = claim(&w.vault, "jobs/c");
        assert_eq!(left["run_id"], first["run_id"], "{case}");
        let lease_until = format!("{:.0}", ts(left["lease_until"].as_str().unwrap()));
        b.once_at(&plus(&lease_until, 29))
            .run()
            .success()
            .stdout_empty();
        assert!(
            w.runs().is_empty(),
            "{case}: taken over before lease + 30 s"
        );
        b.once_at(&plus(&lease_until, 31)).run();
        assert_interrupted_note(&w, &left, pid);
        assert!(claim(&w.vault, "jobs/c").is_null(), "{case}");
        // Nothing more, anywhere (a on its own clock, still fast).
        a.runner()
            .env("PARACHUTE_RUNNER_CLOCK", &clock)
            .args(["once"])
            .run();
        b.once_at(&plus(&lease_until, 90)).run().success();
        assert_eq!(w.runs().len(), 1, "{case}: {:#?}", w.runs());
        assert!(b.invocations().is_empty(), "{case}");
        std::fs::write(&release, "").unwrap();
        assert_no_claim_left(&w.vault);
        assert_nothing_left(&[&a, &b]);
    }
}

// ---------------------------------------------------------------------
// 5. A home that is empty at every pass.
// ---------------------------------------------------------------------

/// A pass whose home is empty every time (a CronJob pod without a
/// volume): the first pass ever records the jobs (no run); then each
/// pass, in a new home or in a wiped one, runs exactly the slot due, and
/// a pass in an empty home at the same instant runs nothing.
#[test]
fn a_home_empty_at_every_pass_fires_each_slot_once_and_sees_no_job_as_new() {
    let w = World::new("sr-fresh");
    let jobs = ["jobs/f0", "jobs/f1"];
    for j in jobs {
        w.vault.add_job(j, &job(EVERY_MINUTE, ""));
    }
    let n = std::cell::Cell::new(0);
    let fresh = || {
        n.set(n.get() + 1);
        w.home(
            &format!("sr-fresh-{}", n.get()),
            FakeClaude::new().prints("x"),
            coordinated(),
        )
    };
    let first = fresh();
    first.once_at(&at(0, 30)).run().success().stdout_empty();
    assert!(first.invocations().is_empty(), "a new job does not run");
    for j in jobs {
        assert_eq!(checked_through(&w.vault, j), ts(&at(0, 30)));
    }
    let wiped = fresh();
    let mut passes = Vec::new();
    for minute in 1..=6 {
        // New homes on odd minutes, the same home wiped on even ones.
        let home = if minute % 2 == 1 {
            passes.push(fresh());
            passes.last().unwrap()
        } else {
            wiped.wipe();
            &wiped
        };
        let before = home.invocations().len();
        let ran = home.once_at(&at(minute, 30)).run().success();
        let ok = ran
            .stdout()
            .lines()
            .filter(|l| l.starts_with("ok: "))
            .count();
        assert_eq!(
            ok,
            2,
            "minute {minute}:\n{}\n{}",
            ran.stdout(),
            ran.stderr()
        );
        assert_eq!(home.invocations().len(), before + 2, "minute {minute}");
        let notes = by_slot(&w.vault);
        for j in jobs {
            let got = &notes[&(j.to_string(), at(minute, 0))];
            assert_eq!(got.len(), 1, "{j} at minute {minute}");
            assert_eq!(meta(&got[0])["run_trigger"], "schedule");
        }
        assert_eq!(notes.len(), 2 * minute as usize, "{notes:#?}");
        // Again at the same instant, empty again: nothing to run.
        let again = fresh();
        again
            .once_at(&at(minute, 30))
            .run()
            .success()
            .stdout_empty();
        assert!(again.invocations().is_empty(), "minute {minute}");
        wiped.wipe();
        wiped
            .once_at(&at(minute, 40))
            .run()
            .success()
            .stdout_empty();
        passes.push(again);
    }
    assert_eq!(w.runs().len(), 12);
    eprintln!(
        "empty homes: 6 minutes x 2 jobs = 12 slots, {} notes, 0 missing, 0 twice",
        w.runs().len()
    );
    assert_no_claim_left(&w.vault);
    let mut all: Vec<&Home> = passes.iter().collect();
    all.extend([&first, &wiped]);
    assert_nothing_left(&all);
}

// ---------------------------------------------------------------------
// 6. A folder vault cannot coordinate.
// ---------------------------------------------------------------------

#[track_caller]
fn one_line_naming_coordination(ran: Ran, what: &str) {
    let ran = ran.status(2);
    let err = ran.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: {err}");
    assert!(lines[0].contains("coordination"), "{what}: {err}");
    assert_eq!(ran.stdout(), "", "{what}");
}

/// `coordination: "vault"` with a directory vault (in config, with
/// `--vault-dir`, or from the environment) is a one-line config error
/// naming `coordination`, exit 2, for `once`, `jobs` and `serve`.
#[test]
fn a_folder_vault_with_coordination_vault_is_a_config_error() {
    let notes = TempDir::new("sr-folder-notes");
    std::fs::write(
        notes.join("brief.md"),
        "---\ntags: [job]\nschedule: hourly\nmodel: m\nallowed_tools: Read\n---\nHi\n",
    )
    .unwrap();
    let home = TempDir::new("sr-folder-home");
    std::fs::create_dir_all(home.join("runner")).unwrap();
    let config = |doc: Value| {
        std::fs::write(
            home.join("runner/config.json"),
            serde_json::to_vec(&doc).unwrap(),
        )
        .unwrap();
    };
    let runner = || {
        Runner::new()
            .env("PARACHUTE_HOME", home.path())
            .env("HOME", home.path())
            .env("PARACHUTE_RUNNER_NOW", at(0, 30))
    };
    let dir = notes.path().display().to_string();
    config(json!({"vault_url": format!("file://{dir}"), "coordination": "vault"}));
    for verb in [&["once"][..], &["jobs"], &["serve", "--port", "0"]] {
        let ran = finish(runner().args(verb).spawn(), LONG);
        one_line_naming_coordination(ran, &format!("file:// {verb:?}"));
    }
    config(json!({"coordination": "vault"}));
    let ran = runner().args(["once", "--vault-dir", &dir]).run();
    one_line_naming_coordination(ran, "--vault-dir");
    std::fs::remove_file(home.join("runner/config.json")).unwrap();
    let ran = runner()
        .env("PARACHUTE_RUNNER_COORDINATION", "vault")
        .args(["once", "--vault-dir", &dir])
        .run();
    one_line_naming_coordination(ran, "environment");
    assert!(!home.join("runner/state.json").exists(), "nothing ran");
}

// ---------------------------------------------------------------------
// 7. Manual runs take no claim.
// ---------------------------------------------------------------------

/// `once --only` in a coordinated home: while its agent runs and after,
/// the job's state note is untouched (no claim, the same
/// `checked_through`, not even updated), and the slot it ran at is still
/// due for the schedule.
#[test]
fn a_manual_run_takes_no_claim() {
    let w = World::new("sr-manual");
    let release = w.home.join("release");
    let a = w.home(
        "sr-manual-a",
        FakeClaude::new().prints("by hand").waits_for(&release),
        coordinated(),
    );
    let b = w.home("sr-manual-b", FakeClaude::new().prints("x"), coordinated());
    w.vault.add_job("jobs/m", &job(EVERY_MINUTE, ""));
    b.once_at(&at(0, 30)).run().success().stdout_empty();
    let before = state_note(&w.vault, "jobs/m");
    assert!(meta(&before)["claim"].is_null());
    w.vault.clear_requests();
    let child = a
        .runner()
        .env("PARACHUTE_RUNNER_NOW", at(1, 30))
        .args(["once", "--only", "jobs/m"])
        .spawn();
    assert!(eventually(LONG, || a.invocations().len() == 1));
    let during = state_note(&w.vault, "jobs/m");
    assert!(meta(&during)["claim"].is_null(), "{during:#?}");
    assert_eq!(during, before, "the manual run changed the state note");
    std::fs::write(&release, "").unwrap();
    let ran = finish(child, LONG).success();
    assert!(ran.stdout().contains("ok: jobs/m"), "{}", ran.stdout());
    let after = state_note(&w.vault, "jobs/m");
    assert_eq!(after, before, "the manual run changed the state note");
    assert_eq!(checked_through(&w.vault, "jobs/m"), ts(&at(0, 30)));
    let runs = w.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(meta(&runs[0])["run_trigger"], "manual");
    assert!(meta(&runs[0]).get("run_scheduled_for").is_none());
    let touched: Vec<String> = w
        .vault
        .requests()
        .iter()
        .filter(|r| {
            r.method == "PATCH"
                || (r.method == "POST"
                    && r.body_json()
                        .is_some_and(|b| b["path"].as_str().is_some_and(|p| p.contains(".runner"))))
        })
        .map(|r| format!("{} {}", r.method, r.url))
        .collect();
    assert!(touched.is_empty(), "{touched:?}");
    // The slot it ran at is still the schedule's.
    let ran = b.once_at(&at(1, 40)).run().success();
    assert!(ran.stdout().contains("ok: jobs/m"), "{}", ran.stdout());
    let notes = by_slot(&w.vault);
    assert_eq!(notes[&("jobs/m".to_string(), at(1, 0))].len(), 1);
    assert_eq!(checked_through(&w.vault, "jobs/m"), ts(&at(1, 0)));
    assert_no_claim_left(&w.vault);
    assert_nothing_left(&[&a, &b]);
}

// ---------------------------------------------------------------------
// 8. Listings skip the state notes.
// ---------------------------------------------------------------------

/// `jobs` and `runs` (table and JSON) list the jobs and their runs, never
/// the `jobs/runs/.runner/…` state notes — not even one that someone
/// tagged `job`.
#[test]
fn listings_skip_the_state_notes() {
    let w = World::new("sr-listing");
    let h = w.home("sr-listing-h", FakeClaude::new().prints("x"), coordinated());
    let jobs = ["jobs/l0", "jobs/l1"];
    for j in jobs {
        w.vault.add_job(j, &job(EVERY_MINUTE, ""));
    }
    h.once_at(&at(0, 30)).run().success();
    h.once_at(&at(1, 30)).run().success();
    assert_eq!(w.vault.notes_tagged(STATE_TAG).len(), 2);
    assert_eq!(w.runs().len(), 2);
    let check = |label: &str| {
        let listed = h
            .runner()
            .env("PARACHUTE_RUNNER_NOW", at(1, 40))
            .args(["jobs", "--json"])
            .run()
            .success()
            .json();
        let paths: Vec<&str> = listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, jobs, "{label}: {listed}");
        let table = h
            .runner()
            .env("PARACHUTE_RUNNER_NOW", at(1, 40))
            .args(["jobs"])
            .run()
            .success()
            .stdout();
        assert!(!table.contains(".runner"), "{label}: {table}");
        let runs = h.runner().args(["runs", "--json"]).run().success().json();
        let outputs: Vec<&str> = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["output_path"].as_str().unwrap())
            .collect();
        assert_eq!(outputs.len(), 2, "{label}: {runs}");
        assert!(
            outputs.iter().all(|p| !p.contains(".runner")),
            "{label}: {runs}"
        );
        let table = h.runner().args(["runs"]).run().success().stdout();
        assert!(!table.contains(".runner"), "{label}: {table}");
        assert_eq!(table.lines().count(), 3, "{label}: {table}");
    };
    check("as written");
    // Someone tags a state note `job`: still not a job (it is under
    // jobs/runs/).
    let path = state_path("jobs/l0");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let tagged = agent
        .patch(format!(
            "{}/notes/{}",
            w.vault.api_url(),
            path.replace('/', "%2F")
        ))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .content_type("application/json")
        .send(
            json!({"tags": {"add": ["job"]}, "force": true})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(tagged.status().as_u16(), 200);
    assert!(
        w.vault
            .notes_tagged("job")
            .iter()
            .any(|n| n.path.as_deref() == Some(&path))
    );
    check("tagged job");
    let ran = h.once_at(&at(2, 30)).run().success();
    assert!(!ran.stdout().contains(".runner"), "{}", ran.stdout());
    assert!(!ran.stderr().contains(".runner/"), "{}", ran.stderr());
    assert_eq!(
        ran.stdout()
            .lines()
            .filter(|l| l.starts_with("ok: "))
            .count(),
        2,
        "{}",
        ran.stdout()
    );
    assert_no_claim_left(&w.vault);
    assert_nothing_left(&[&h]);
}

// ---------------------------------------------------------------------
// More of the same rule: no slot gets two notes, none goes unreported.
// ---------------------------------------------------------------------

/// A claimant that is alive but whose claim another runner took over (a
/// clock far ahead sees its lease long run out): at its next renewal it
/// finds the claim gone, stops its agent and writes nothing; the slot's
/// only note is the taker's `interrupted` one.
#[test]
fn a_claimant_whose_claim_is_taken_over_while_it_runs_writes_nothing() {
    let (w, a, b, release) = waiting_claimant_and_a_peer("sr-taken", "jobs/t", "\"1 0 * * *\"");
    // a's clock runs 60x from 00:01:30: it renews every 20 simulated s.
    let clock = format!("{},{},60", at(1, 30), Timestamp::now());
    let child = a
        .runner()
        .env("PARACHUTE_RUNNER_CLOCK", &clock)
        .args(["once"])
        .spawn();
    let pid = child.id();
    assert!(eventually(LONG, || a.invocations().len() == 1));
    let agent = a.invocations()[0].pid();
    let claimed = claim(&w.vault, "jobs/t");
    // b's clock says 12:00: the lease ran out long ago for it.
    b.once_at(&at(12 * 60, 0)).run();
    assert_interrupted_note(&w, &claimed, pid);
    let ran = finish(child, LONG);
    assert!(
        ran.stdout()
            .contains("failed: jobs/t: stopped: its claim in the vault was taken over"),
        "{}\n{}",
        ran.stdout(),
        ran.stderr()
    );
    assert!(!fake_claude::alive(agent));
    assert!(!a.invocations()[0].dir.join("finished").exists());
    assert!(a.outbox().is_empty());
    assert_eq!(w.runs().len(), 1, "{:#?}", w.runs());
    std::fs::write(&release, "").unwrap();
    assert_no_claim_left(&w.vault);
    assert_nothing_left(&[&a, &b]);
}

/// A claimant whose run ended while the vault refused its PATCHes keeps
/// the note in its outbox. It goes out at the claimant's next pass if the
/// claim is still its own; if another runner took the claim over first,
/// the queued note is dropped and the taker's `interrupted` note is the
/// slot's only one.
#[test]
fn a_queued_note_of_a_claimed_run_goes_out_only_while_the_claim_holds() {
    for taken_over in [false, true] {
        let name = format!("sr-queued-{taken_over}");
        let w = World::new(&name);
        let release = w.home.join("release");
        let a = w.home(
            &format!("{name}-a"),
            FakeClaude::new().prints("precious").waits_for(&release),
            coordinated(),
        );
        let b = w.home(
            &format!("{name}-b"),
            FakeClaude::new().prints("x"),
            coordinated(),
        );
        w.vault.add_job("jobs/q", &job("\"1 0 * * *\"", ""));
        b.once_at(&at(0, 30)).run().success().stdout_empty();
        let (child, claimed) = claimant_running(&w, &a, &at(1, 30), "jobs/q");
        let pid = child.id();
        w.vault.set_fault(Route::Patch, Fault::Status(503), None);
        std::fs::write(&release, "").unwrap();
        let ran = finish(child, LONG);
        assert!(
            ran.stdout().contains("queued in the outbox"),
            "{taken_over}: {}\n{}",
            ran.stdout(),
            ran.stderr()
        );
        assert_eq!(a.outbox().len(), 1, "{taken_over}");
        assert!(w.runs().is_empty(), "{taken_over}");
        w.vault.clear_faults();
        if taken_over {
            b.once_at(&at(3, 1)).run();
            assert_interrupted_note(&w, &claimed, pid);
        }
        // The claimant's next pass (its clock still at the run's minute).
        a.once_at(&at(1, 40)).run();
        assert!(a.outbox().is_empty(), "{taken_over}: {:?}", a.outbox());
        let runs = w.runs();
        assert_eq!(runs.len(), 1, "{taken_over}: {runs:#?}");
        if !taken_over {
            assert_eq!(runs[0].content, "precious");
            assert_eq!(meta(&runs[0])["run_id"], claimed["run_id"]);
        }
        b.once_at(&at(4, 0)).run().success();
        assert_eq!(w.runs().len(), 1, "{taken_over}");
        assert_no_claim_left(&w.vault);
        assert_nothing_left(&[&a, &b]);
    }
}

/// A claim the vault refused (a 503 on the PATCH) is not a slot handled:
/// the pass runs nothing and says why, and the next pass runs the slot.
#[test]
fn a_claim_the_vault_refused_leaves_the_slot_due() {
    let w = World::new("sr-refused");
    let a = w.home("sr-refused-a", FakeClaude::new().prints("x"), coordinated());
    w.vault.add_job("jobs/r", &job(EVERY_MINUTE, ""));
    a.once_at(&at(0, 30)).run().success().stdout_empty();
    w.vault.set_fault(Route::Patch, Fault::Status(503), Some(1));
    let ran = a.once_at(&at(1, 30)).run();
    assert!(
        ran.stdout()
            .starts_with("skipped: jobs/r: cannot claim it in the vault"),
        "{}\n{}",
        ran.stdout(),
        ran.stderr()
    );
    assert!(a.invocations().is_empty());
    assert_eq!(checked_through(&w.vault, "jobs/r"), ts(&at(0, 30)));
    // Another home, or the same one: the slot is still due, and runs once.
    let b = w.home("sr-refused-b", FakeClaude::new().prints("x"), coordinated());
    b.once_at(&at(1, 40))
        .run()
        .success()
        .stdout_has("ok: jobs/r");
    a.once_at(&at(1, 50)).run().success().stdout_empty();
    let notes = by_slot(&w.vault);
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_eq!(notes[&("jobs/r".to_string(), at(1, 0))].len(), 1);
    assert_no_claim_left(&w.vault);
    assert_nothing_left(&[&a, &b]);
}

/// The pass that claims a slot and takes over a dead claim in the same
/// update must report the dead run even when the vault does not answer
/// the question "did that run leave a note?" at that moment.
#[test]
fn an_orphan_taken_over_with_a_new_claim_is_reported_even_after_a_vault_hiccup() {
    let (w, a, b, release) = waiting_claimant_and_a_peer("sr-orphan-lost", "jobs/o", EVERY_MINUTE);
    let (mut child, claimed) = claimant_running(&w, &a, &at(1, 30), "jobs/o");
    child.kill().unwrap();
    child.wait().unwrap();
    // b's pass past the lease claims 00:03 and takes the dead claim over
    // in one PATCH; the GETs that follow fail (a vault hiccup).
    w.vault.set_fault(Route::Get, Fault::Status(503), None);
    let ran = b.once_at(&at(3, 1)).run();
    w.vault.clear_faults();
    eprintln!("--- the takeover pass\n{}\n{}", ran.stdout(), ran.stderr());
    // Later passes, anywhere, with the vault answering.
    b.once_at(&at(3, 10)).run();
    a.once_at(&at(3, 20)).run();
    let c = w.home(
        "sr-orphan-lost-c",
        FakeClaude::new().prints("x"),
        coordinated(),
    );
    c.once_at(&at(3, 30)).run();
    b.once_at(&at(3, 40)).run();
    std::fs::write(&release, "").unwrap();
    let notes = by_slot(&w.vault);
    assert_eq!(
        notes
            .get(&("jobs/o".to_string(), at(3, 0)))
            .map_or(0, Vec::len),
        1,
        "b's own run: {notes:#?}"
    );
    // The dead run of 00:01 must be reported, once.
    assert_interrupted_note(&w, &claimed, child.id());
}
