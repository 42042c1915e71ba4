//! `once` (SPEC §8): one pass of the pipeline, for cron and systemd timers.
//! Settle dead runs and deliver the outbox, list the jobs, decide and claim
//! (`engine`), run the due ones (at most `max_concurrent_jobs` at a time),
//! print a line per job and the summary, exit 0, 1 or 2. Also `--dry-run`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::cli::{Common, OnceArgs};
use crate::config::{self, Config, Env, Overrides};
use crate::due::{self, Decision, Trigger};
use crate::engine::{self, Manual, Runtime, Scope, Verdict};
use crate::error::Error;
use crate::job::{Job, JobError};
use crate::run::{self, Claimed, Report};
use crate::{EXIT_JOB_FAILED, EXIT_OK, os, recover};

/// What happened to one job in this pass.
#[derive(Debug)]
enum Line {
    Ran(Box<Report>),
    Invalid(JobError),
    /// Not run, for a reason worth a line.
    Skipped {
        path: String,
        reason: String,
    },
    /// Not due (or disabled, manual, new): counted, not printed.
    Quiet {
        path: String,
        decision: &'static str,
    },
}

/// The shared start of every vault verb: config (with the clock and the
/// environment), then the vault.
pub fn setup(common: &Common, env: &Env) -> Result<(Config, Runtime), Error> {
    let overrides = Overrides {
        config: common.config.clone(),
        vault_dir: common.vault_dir.clone(),
        poll_interval: None,
    };
    let config = config::load(env, &overrides)?;
    let rt = Runtime::open(&config).map_err(Error::Fatal)?;
    Ok((config, rt))
}

pub fn run(args: &OnceArgs, env: &Env) -> Result<u8, Error> {
    let (config, mut rt) = setup(&args.common, env)?;
    rt.date_override = args.date;
    os::raise_fd_limit();
    if args.dry_run {
        return dry_run(args, &rt);
    }
    let json = args.json;
    let lines = match &args.only {
        Some(path) => run_only(&rt, path, json)?,
        None => run_scheduled(&rt, config.max_concurrent_jobs, json)?,
    };
    finish(&lines, json)
}

/// `--only`: that one job, now, whatever its schedule.
fn run_only(rt: &Runtime, path: &str, json: bool) -> Result<Vec<Line>, Error> {
    recover::settle(rt)?;
    rt.deliver_outbox();
    let note = rt
        .vault
        .get_note(path)?
        .ok_or_else(|| Error::Fatal(format!("no note at {path} in {}", rt.vault.describe())))?;
    match engine::claim_now(rt, &note, Trigger::Manual)? {
        Manual::Claimed(claimed) => Ok(execute_all(rt, vec![*claimed], 1, json)),
        Manual::Invalid(e) => {
            print_line(&e.to_string(), json);
            Ok(vec![Line::Invalid(e)])
        }
        Manual::Running => {
            let path = note.path_or_id();
            log::info!("skipped: {path}: still running");
            print_line(&format!("skipped: {path}: still running"), json);
            Ok(vec![skipped(path, "still running".to_string())])
        }
    }
}

/// Every job, by the due decision: deliver the outbox, list, decide and
/// claim (the engine settles dead runs in the same pass), deliver what the
/// settling queued, run.
fn run_scheduled(rt: &Runtime, workers: usize, json: bool) -> Result<Vec<Line>, Error> {
    rt.deliver_outbox();
    let notes = rt.vault.list_jobs()?;
    let now = rt.clock.now();
    let pass = engine::claim_due(rt, &notes, now, Scope::All)?;
    rt.deliver_outbox();
    let mut lines = Vec::new();
    // Printed once the state lock is released: a slow reader of our stdout
    // must not hold up other runners.
    for looked in pass.looked {
        let path = looked.path;
        match looked.verdict {
            Verdict::Claimed => {}
            Verdict::Invalid(e) => {
                print_line(&e.to_string(), json);
                lines.push(Line::Invalid(e));
            }
            Verdict::Skipped(reason) => {
                log::info!("skipped: {path}: {reason}");
                print_line(&format!("skipped: {path}: {reason}"), json);
                lines.push(Line::Skipped { path, reason });
            }
            Verdict::Quiet(decision) => lines.push(Line::Quiet {
                path,
                decision: quiet_name(&decision),
            }),
        }
    }
    lines.extend(execute_all(rt, pass.claimed, workers, json));
    Ok(lines)
}

fn quiet_name(d: &Decision) -> &'static str {
    match d {
        Decision::New => "new",
        Decision::Manual => "manual",
        Decision::Disabled => "disabled",
        Decision::NotDue => "not-due",
        Decision::Run { .. } => "due",
        Decision::SkipLate { .. } => "skipped-late",
        Decision::ClockBack { .. } => "clock-back",
    }
}

fn skipped(path: &str, reason: String) -> Line {
    Line::Skipped {
        path: path.to_string(),
        reason,
    }
}

/// Runs the claimed jobs on `workers` threads, printing each line as its
/// run ends.
fn execute_all(rt: &Runtime, claimed: Vec<Claimed>, workers: usize, json: bool) -> Vec<Line> {
    if claimed.is_empty() {
        return Vec::new();
    }
    let queue = Arc::new(Mutex::new(claimed.into_iter().collect::<VecDeque<_>>()));
    let done = Arc::new(Mutex::new(Vec::new()));
    let n = workers
        .max(1)
        .min(queue.lock().map(|q| q.len()).unwrap_or(1));
    std::thread::scope(|scope| {
        for _ in 0..n {
            let queue = Arc::clone(&queue);
            let done = Arc::clone(&done);
            scope.spawn(move || {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some(claimed) = next else { break };
                    let report = run::execute(rt, claimed, &run::NoHooks);
                    print_line(&report_line(&report, rt.vault.as_ref()), json);
                    if let Ok(mut d) = done.lock() {
                        d.push(Line::Ran(Box::new(report)));
                    }
                }
            });
        }
    });
    Arc::try_unwrap(done)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default()
}

fn report_line(r: &Report, vault: &dyn crate::vault::Vault) -> String {
    let mut s = String::new();
    let _ = write!(s, "{}: {}", if r.ok { "ok" } else { "failed" }, r.job_path);
    if let Some(e) = &r.error {
        let _ = write!(s, ": {e}");
    }
    match (&r.written_to, &r.queued_because) {
        (Some(path), _) => {
            let _ = write!(s, " -> {}", vault.locate(path));
        }
        (None, Some(why)) => {
            let _ = write!(s, " -> queued in the outbox ({why})");
        }
        (None, None) => {}
    }
    let _ = write!(s, " ({}, {:.1}s)", r.trigger, r.duration.as_secs_f64());
    s
}

fn print_line(line: &str, json: bool) {
    if !json {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", crate::text::shown(line));
        let _ = out.flush();
    }
}

/// The summary line (or the JSON object) and the exit code.
fn finish(lines: &[Line], json: bool) -> Result<u8, Error> {
    let total = lines.len();
    let mut ok = 0;
    let mut failed = 0;
    for line in lines {
        match line {
            Line::Ran(r) if r.ok => ok += 1,
            Line::Ran(_) | Line::Invalid(_) => failed += 1,
            _ => {}
        }
    }
    let skipped = total - ok - failed;
    let code = if failed > 0 { EXIT_JOB_FAILED } else { EXIT_OK };
    if json {
        let jobs: Vec<Value> = lines.iter().map(line_json).collect();
        let doc = json!({
            "total": total, "ok": ok, "failed": failed, "skipped": skipped,
            "jobs": jobs,
        });
        crate::print(&format!("{doc}\n"))?;
    } else {
        crate::print(&format!(
            "done: total={total} ok={ok} failed={failed} skipped={skipped}\n"
        ))?;
    }
    Ok(code)
}

fn line_json(line: &Line) -> Value {
    match line {
        Line::Ran(r) => json!({
            "path": r.job_path,
            "result": if r.ok { "ok" } else { "failed" },
            "run_id": r.run_id,
            "trigger": r.trigger.as_str(),
            "scheduled_for": r.slot.map(|s| format!("{s:.0}")),
            "output_path": r.written_to.as_deref().unwrap_or(&r.output_path),
            "queued": r.written_to.is_none(),
            "error": r.error,
            "duration_ms": r.duration.as_millis() as u64,
        }),
        Line::Invalid(e) => json!({"path": e.path, "result": "invalid", "error": e.to_string()}),
        Line::Skipped { path, reason } => {
            json!({"path": path, "result": "skipped", "reason": reason})
        }
        Line::Quiet { path, decision } => {
            json!({"path": path, "result": "skipped", "reason": decision})
        }
    }
}

/// `--dry-run`: each job's decision, next fire time and rendered output
/// path. Reads state, changes nothing, runs nothing.
fn dry_run(args: &OnceArgs, rt: &Runtime) -> Result<u8, Error> {
    let now = rt.clock.now();
    let mut text = String::new();
    let mut invalid = 0;
    let notes = match &args.only {
        Some(path) => vec![rt.vault.get_note(path)?.ok_or_else(|| {
            Error::Fatal(format!("no note at {path} in {}", rt.vault.describe()))
        })?],
        None => {
            let listing = rt.vault.list_jobs()?;
            for (path, reason) in &listing.skipped {
                invalid += 1;
                let _ = writeln!(text, "invalid job at {path}: {reason}");
            }
            listing.notes
        }
    };
    let state = rt.store.read()?;
    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    for note in &notes {
        let job = match Job::from_note(note, &rt.default_zone) {
            Ok(job) => job,
            Err(e) => {
                invalid += 1;
                let _ = writeln!(text, "{e}");
                rows.insert(
                    e.path.clone(),
                    json!({"path": e.path, "decision": "invalid", "error": e.to_string()}),
                );
                continue;
            }
        };
        let mut entry = state.jobs.get(&job.path).cloned();
        let decision = if args.only.is_some() {
            Decision::Run {
                slot: now,
                trigger: Trigger::Manual,
            }
        } else {
            due::decide(&(&job).into(), &mut entry, now, rt.policy)
        };
        let (what, slot, trigger) = match &decision {
            Decision::Run { slot, trigger } => ("would run", Some(*slot), Some(*trigger)),
            Decision::SkipLate { slot } => ("would skip a late slot", Some(*slot), None),
            other => (quiet_name(other), None, None),
        };
        let slot = slot.filter(|_| trigger != Some(Trigger::Manual));
        let next = job.schedule.next_after(now, &job.zone.tz);
        let (info, prompt) = run::prepare(
            &job,
            trigger.unwrap_or(Trigger::Schedule),
            slot,
            now,
            rt.date_override,
        );
        let _ = write!(text, "{}: {what}", job.path);
        if let (Some(slot), Some(trigger)) = (slot, trigger) {
            let _ = write!(text, " ({trigger}, slot {slot})");
        } else if let Some(trigger) = trigger {
            let _ = write!(text, " ({trigger})");
        }
        let _ = write!(
            text,
            "; next {}",
            next.map_or("never".to_string(), |n| n.to_string())
        );
        let _ = write!(text, "; output {}", info.output_path);
        if let Err(e) = &prompt {
            let _ = write!(text, " ({})", e.error);
        }
        text.push('\n');
        rows.insert(
            job.path.clone(),
            json!({
                "path": job.path, "decision": what, "trigger": trigger.map(Trigger::as_str),
                "slot": slot.map(|s| format!("{s:.0}")), "next": next.map(|n| format!("{n:.0}")),
                "output_path": info.output_path, "error": prompt.err().map(|f| f.error),
            }),
        );
    }
    if args.json {
        let jobs: Vec<Value> = rows.into_values().collect();
        crate::print(&format!(
            "{}\n",
            json!({"dry_run": true, "now": format!("{now:.0}"), "jobs": jobs})
        ))?;
    } else {
        crate::print(&text)?;
    }
    Ok(if invalid > 0 {
        EXIT_JOB_FAILED
    } else {
        EXIT_OK
    })
}
