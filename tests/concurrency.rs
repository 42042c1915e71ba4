//! Many `once` processes against one state directory: every minute slot of
//! every job fires exactly once. The default run is driven by the injected
//! clock alone (each simulated minute, ten passes at once, each at its own
//! fixed instant in that minute), so a loaded machine cannot make it miss a
//! slot. The long runs (`cargo test -- --ignored`) add a `serve` on a
//! shared simulated clock (PARACHUTE_RUNNER_CLOCK) for a whole day with 10
//! and with 50 passes; they depend on the machine keeping up with a 60×
//! clock, so they are not in the default run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use crate::faults::check_invariants;
use crate::serve::start;
use crate::support::fake_claude::FakeClaude;
use crate::support::fake_hub::FakeHub;
use crate::support::world::{World, job};

pub struct Figures {
    pub slots_expected: usize,
    pub fired: usize,
    pub missing: Vec<String>,
    pub passes: usize,
}

/// `jobs` jobs every minute; `passes` loops of `once` plus one `serve`,
/// for `minutes` simulated minutes at `speed` times real time.
pub fn simulate(name: &str, jobs: usize, passes: usize, minutes: i64, speed: i64) -> Figures {
    let w = World::with_claude(name, FakeClaude::new().prints("x"));
    for i in 0..jobs {
        w.vault
            .add_job(&format!("jobs/c{i}"), &job("\"* * * * *\"", ""));
    }
    let start_sim: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let anchor = Timestamp::now() + SignedDuration::from_secs(2);
    let clock = format!("{start_sim},{anchor},{speed}");
    let real_span = Duration::from_millis((minutes * 60_000 / speed) as u64);
    let end_real = Instant::now() + Duration::from_secs(2) + real_span;

    let served = start(
        &w,
        FakeHub::start(),
        &["--poll-interval", "1"],
        &[("PARACHUTE_RUNNER_CLOCK", clock.as_str())],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for _ in 0..passes {
            let (w, clock, stop, count) = (&w, &clock, Arc::clone(&stop), Arc::clone(&count));
            scope.spawn(move || {
                while Instant::now() < end_real && !stop.load(Ordering::Relaxed) {
                    let out = w
                        .runner()
                        .env("PARACHUTE_RUNNER_CLOCK", clock)
                        .env("RUST_LOG", "warn")
                        .args(["once"])
                        .run();
                    assert_eq!(out.code(), Some(0), "{}", out.stderr());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let mut served = served;
    assert!(served.sigterm().success());
    let tally = check_invariants(&w);
    // The slots that must have fired: every minute after the first, up to
    // the last minute that ended a little before the end.
    let end_sim = start_sim + SignedDuration::from_secs(minutes * 60 - 30);
    let mut expected = BTreeSet::new();
    let mut slot = start_sim + SignedDuration::from_mins(1);
    while slot <= end_sim {
        expected.insert(format!("{slot:.0}"));
        slot += SignedDuration::from_mins(1);
    }
    let mut fired: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for meta in tally.notes.values() {
        assert!(meta.get("run_error").is_none(), "a failed run: {meta}");
        let job = meta["parent_job_path"].as_str().unwrap().to_string();
        fired
            .entry(job)
            .or_default()
            .insert(meta["run_scheduled_for"].as_str().unwrap().to_string());
    }
    let mut missing = Vec::new();
    for i in 0..jobs {
        let got = fired
            .get(&format!("jobs/c{i}"))
            .cloned()
            .unwrap_or_default();
        for slot in expected.difference(&got) {
            missing.push(format!("jobs/c{i}@{slot}"));
        }
    }
    Figures {
        slots_expected: expected.len() * jobs,
        fired: tally.notes.len(),
        missing,
        passes: count.load(Ordering::Relaxed),
    }
}

/// Prints the figures (for RELIABILITY.md) and fails on any missed slot.
fn report(label: &str, f: &Figures) {
    eprintln!(
        "{label}: {} slots expected, {} fired, {} missing, {} once passes",
        f.slots_expected,
        f.fired,
        f.missing.len(),
        f.passes
    );
    assert!(f.missing.is_empty(), "missed: {:?}", f.missing);
}

#[test]
fn ten_concurrent_passes_a_minute_for_twenty_minutes_fire_each_slot_once() {
    let jobs = 3;
    let w = World::with_claude("sim-fixed", FakeClaude::new().prints("x"));
    for i in 0..jobs {
        w.vault
            .add_job(&format!("jobs/c{i}"), &job("\"* * * * *\"", ""));
    }
    let start_sim: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let at = |minute: i64, second: i64| {
        format!(
            "{:.0}",
            start_sim + SignedDuration::from_secs(minute * 60 + second)
        )
    };
    // The first pass records the jobs; each later minute has ten passes at
    // once, at instants spread over the minute.
    w.once_at(&at(0, 5)).run().success();
    let mut passes = 1;
    for minute in 1..=20 {
        std::thread::scope(|scope| {
            for p in 0..10 {
                let now = at(minute, 1 + p * 5);
                let w = &w;
                scope.spawn(move || {
                    let out = w.once_at(&now).env("RUST_LOG", "warn").run();
                    assert_eq!(out.code(), Some(0), "{}", out.stderr());
                });
            }
        });
        passes += 10;
    }
    let tally = check_invariants(&w);
    let mut fired: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for meta in tally.notes.values() {
        assert!(meta.get("run_error").is_none(), "a failed run: {meta}");
        let job = meta["parent_job_path"].as_str().unwrap().to_string();
        let slot = meta["run_scheduled_for"].as_str().unwrap().to_string();
        assert!(fired.entry(job).or_default().insert(slot), "{meta}");
    }
    let mut missing = Vec::new();
    for i in 0..jobs {
        let got = fired
            .get(&format!("jobs/c{i}"))
            .cloned()
            .unwrap_or_default();
        for minute in 1..=20 {
            let slot = at(minute, 0);
            if !got.contains(&slot) {
                missing.push(format!("jobs/c{i}@{slot}"));
            }
        }
    }
    report(
        "20 simulated minutes, 10 passes each",
        &Figures {
            slots_expected: 20 * jobs,
            fired: tally.notes.len(),
            missing,
            passes,
        },
    );
    assert_eq!(tally.notes.len(), 20 * jobs);
}

#[test]
#[ignore = "depends on the machine keeping up with a 60x clock (about 25 s)"]
fn ten_passes_and_serve_over_twenty_minutes_fire_each_slot_once() {
    report("simulated 20 min", &simulate("sim-short", 3, 10, 20, 60));
}

#[test]
#[ignore = "long: a simulated day (about 24 minutes)"]
fn ten_passes_and_serve_over_a_day() {
    report("10 passes, a day", &simulate("sim-day-10", 3, 10, 1440, 60));
}

#[test]
#[ignore = "long: a simulated day with 50 concurrent passes (about 24 minutes)"]
fn fifty_passes_and_serve_over_a_day() {
    report("50 passes, a day", &simulate("sim-day-50", 3, 50, 1440, 60));
}
