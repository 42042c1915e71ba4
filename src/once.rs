//! `once` (SPEC §8): one pass of the pipeline, for cron and systemd timers.
//! Settle dead runs and deliver the outbox, list the jobs, decide under
//! the state lock, run the due ones (at most `max_concurrent_jobs` at a
//! time), print a line per job and the summary, exit 0, 1 or 2.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::cli::OnceArgs;
use crate::config::{self, Config, Env, Overrides};
use crate::error::Error;
use crate::job::{Job, JobError};
use crate::run::{self, Claimed, Clock, Report, Runtime};
use crate::state::{self, Decision, Plan, Policy, Trigger};
use crate::vault::{self, Note, Timeouts};
use crate::{EXIT_JOB_FAILED, EXIT_OK, sys};

/// What happened to one job in this pass.
#[derive(Debug)]
enum Line {
    Ran(Report),
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

/// The shared start of every vault verb: config, clock, vault.
pub fn setup(common: &crate::cli::Common, env: &Env) -> Result<(Config, Runtime), Error> {
    let overrides = Overrides {
        config: common.config.clone(),
        vault_dir: common.vault_dir.clone(),
        poll_interval: None,
    };
    let config = config::load(env, &overrides)?;
    let clock = Clock::from_env(env)?;
    let vault = vault::open(&config, http_timeouts(env)?).map_err(Error::Fatal)?;
    let rt = Runtime::new(&config, vault, env, clock);
    Ok((config, rt))
}

/// `PARACHUTE_RUNNER_HTTP_TIMEOUT`: seconds for one vault request.
pub fn http_timeouts(env: &Env) -> Result<Timeouts, Error> {
    let mut t = Timeouts::default();
    if let Some(text) = env.get("PARACHUTE_RUNNER_HTTP_TIMEOUT") {
        let secs: u64 = text
            .trim()
            .parse()
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .ok_or_else(|| {
                Error::Fatal(format!(
                    "PARACHUTE_RUNNER_HTTP_TIMEOUT: expected seconds from 1 to 3600 (got {text:?})"
                ))
            })?;
        t.request = Duration::from_secs(secs);
        t.connect = t.connect.min(t.request);
    }
    Ok(t)
}

/// Warns once when running as root without `IS_SANDBOX=1` (the agent
/// refuses `bypassPermissions` then).
pub fn warn_if_root(env: &Env) {
    if sys::is_root() && env.get("IS_SANDBOX") != Some("1") {
        log::warn!(
            "running as root: claude refuses --permission-mode bypassPermissions as root unless IS_SANDBOX=1; run the runner as an unprivileged user"
        );
    }
}

pub fn run(args: &OnceArgs, env: &Env) -> Result<u8, Error> {
    let (config, mut rt) = setup(&args.common, env)?;
    rt.date_override = args.date;
    sys::raise_fd_limit();
    warn_if_root(env);
    if args.dry_run {
        return dry_run(args, &config, &rt);
    }
    let json = args.json;
    let lines = match &args.only {
        Some(path) => run_only(&rt, &config, path, json)?,
        None => run_scheduled(&rt, &config, json)?,
    };
    finish(&lines, json)
}

/// Delivers the outbox (a no-op when it is empty), without settling.
fn sweep(rt: &Runtime) {
    report_swept(
        &rt.outbox
            .sweep(rt.vault.as_ref(), || run::running_in(&rt.store)),
    );
}

fn report_swept(swept: &crate::output::Swept) {
    if swept.failed > 0 {
        log::warn!("outbox: {} output(s) still queued", swept.failed);
    }
}

/// `--only`: that one job, now, whatever its schedule.
fn run_only(rt: &Runtime, config: &Config, path: &str, json: bool) -> Result<Vec<Line>, Error> {
    report_swept(&run::settle_and_deliver(rt).map_err(|e| Error::Fatal(e.to_string()))?);
    let note = rt
        .vault
        .get_note(path)
        .map_err(|e| Error::Fatal(e.to_string()))?
        .ok_or_else(|| Error::Fatal(format!("no note at {path} in {}", rt.vault.describe())))?;
    let job = match Job::from_note(&note, &config.timezone) {
        Ok(job) => job,
        Err(e) => {
            print_line(&e.to_string(), json);
            return Ok(vec![Line::Invalid(e)]);
        }
    };
    let now = rt.clock.now();
    let (info, prompt) = run::prepare(&job, Trigger::Manual, None, now, rt.date_override);
    let mut locked = rt.store.lock().map_err(|e| Error::Fatal(e.to_string()))?;
    let claimed = run::claim(&rt.store, &mut locked, job.clone(), info, prompt)
        .map_err(|e| Error::Fatal(e.to_string()))?;
    locked.commit().map_err(|e| Error::Fatal(e.to_string()))?;
    let Some(claimed) = claimed else {
        log::info!("skipped: {}: still running", job.path);
        print_line(&format!("skipped: {}: still running", job.path), json);
        return Ok(vec![skipped(&job.path, "still running".to_string())]);
    };
    Ok(execute_all(rt, vec![claimed], 1, json))
}

/// Every job, by the due decision: deliver the outbox, list, decide (one
/// state read serves the settling of dead runs and the decisions), deliver
/// what the settling queued, run.
fn run_scheduled(rt: &Runtime, config: &Config, json: bool) -> Result<Vec<Line>, Error> {
    sweep(rt);
    let notes = rt
        .vault
        .list_jobs()
        .map_err(|e| Error::Fatal(e.to_string()))?;
    let now = rt.clock.now();
    let policy = Policy {
        poll_interval_seconds: config.poll_interval_seconds,
        globally_disabled: config.disabled,
    };
    let listed: HashSet<&str> = notes.iter().map(Note::path_or_id).collect();
    let mut lines = Vec::new();
    let mut claimed = Vec::new();
    let mut zones = HashMap::new();
    {
        let mut locked = rt.store.lock().map_err(|e| Error::Fatal(e.to_string()))?;
        // Entries of jobs that are gone (not while a run of theirs goes on):
        // a job created again later starts afresh instead of catching up.
        locked
            .state
            .jobs
            .retain(|path, e| listed.contains(path.as_str()) || e.running.is_some());
        run::recover(rt, &mut locked);
        for note in &notes {
            let path = note.path_or_id();
            let hash =
                state::note_hash(&note.content, note.metadata.as_ref(), &config.timezone.name);
            let mut entry = locked.state.jobs.remove(path);
            // An unchanged note is decided from what the last pass kept of
            // it; only a changed one (or a due one, below) is parsed.
            let remembered = entry
                .as_ref()
                .and_then(|e| Plan::remembered(e, &hash, &mut zones));
            let (plan, mut parsed) = match remembered {
                Some(plan) => (plan, None),
                None => match Job::from_note(note, &config.timezone) {
                    Ok(job) => (Plan::from(&job), Some(job)),
                    Err(e) => {
                        if let Some(entry) = entry {
                            locked.state.jobs.insert(path.to_string(), entry);
                        }
                        lines.push(Line::Invalid(e));
                        continue;
                    }
                },
            };
            let decision = state::decide(&plan, &mut entry, now, policy);
            if let Some(mut entry) = entry {
                entry.note = Some(plan.seen(hash));
                locked.state.jobs.insert(path.to_string(), entry);
            }
            match decision {
                Decision::Run { slot, trigger } => {
                    let job = match parsed
                        .take()
                        .map_or_else(|| Job::from_note(note, &config.timezone), Ok)
                    {
                        Ok(job) => job,
                        Err(e) => {
                            lines.push(Line::Invalid(e));
                            continue;
                        }
                    };
                    let (info, prompt) =
                        run::prepare(&job, trigger, Some(slot), now, rt.date_override);
                    match run::claim(&rt.store, &mut locked, job, info, prompt) {
                        Ok(Some(c)) => claimed.push(c),
                        Ok(None) => {
                            log::info!("skipped: {path}: still running");
                            lines.push(skipped(path, "still running".to_string()));
                        }
                        Err(e) => lines.push(skipped(path, format!("cannot take its lock: {e}"))),
                    }
                }
                Decision::SkipLate { slot } => {
                    let reason = format!("late slot {slot} skipped (catch_up: false)");
                    log::info!("{path}: {reason}");
                    lines.push(skipped(path, reason));
                }
                other => lines.push(Line::Quiet {
                    path: path.to_string(),
                    decision: quiet_name(&other),
                }),
            }
        }
        locked.commit().map_err(|e| Error::Fatal(e.to_string()))?;
    }
    sweep(rt);
    // Printed once the state lock is released: a slow reader of our stdout
    // must not hold up other runners.
    for line in &lines {
        match line {
            Line::Invalid(e) => print_line(&e.to_string(), json),
            Line::Skipped { path, reason } => {
                print_line(&format!("skipped: {path}: {reason}"), json)
            }
            _ => {}
        }
    }
    lines.extend(execute_all(rt, claimed, config.max_concurrent_jobs, json));
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
                    let report = run::execute(rt, claimed, |_| {});
                    print_line(&report_line(&report, rt.vault.as_ref()), json);
                    if let Ok(mut d) = done.lock() {
                        d.push(Line::Ran(report));
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
        let _ = writeln!(out, "{line}");
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
fn dry_run(args: &OnceArgs, config: &Config, rt: &Runtime) -> Result<u8, Error> {
    let now = rt.clock.now();
    let notes = match &args.only {
        Some(path) => vec![
            rt.vault
                .get_note(path)
                .map_err(|e| Error::Fatal(e.to_string()))?
                .ok_or_else(|| {
                    Error::Fatal(format!("no note at {path} in {}", rt.vault.describe()))
                })?,
        ],
        None => rt
            .vault
            .list_jobs()
            .map_err(|e| Error::Fatal(e.to_string()))?,
    };
    let state = rt.store.read().map_err(|e| Error::Fatal(e.to_string()))?;
    let policy = Policy {
        poll_interval_seconds: config.poll_interval_seconds,
        globally_disabled: config.disabled,
    };
    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    let mut text = String::new();
    let mut invalid = 0;
    for note in &notes {
        let job = match Job::from_note(note, &config.timezone) {
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
            state::decide(&(&job).into(), &mut entry, now, policy)
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
            let _ = write!(text, " ({e})");
        }
        text.push('\n');
        rows.insert(
            job.path.clone(),
            json!({
                "path": job.path, "decision": what, "trigger": trigger.map(Trigger::as_str),
                "slot": slot.map(|s| format!("{s:.0}")), "next": next.map(|n| format!("{n:.0}")),
                "output_path": info.output_path, "error": prompt.err(),
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

/// The instant `t` as RFC 3339 UTC without fractions, for listings.
pub fn instant(t: Timestamp) -> String {
    format!("{t:.0}")
}
