//! `once` (SPEC §8): one pass of the pipeline, for cron and systemd timers.
//! Settle dead runs and deliver the outbox, list the jobs, decide and claim
//! (`engine`), run the due ones (at most `max_concurrent_jobs` at a time),
//! print a line per job that did something and the summary (nothing when
//! nothing happened), exit 0, 1 or 2. SIGINT, SIGTERM and SIGHUP stop the
//! running agents, leave `interrupted` notes and exit 130 or 143. Also
//! `--dry-run`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::Canceller;
use crate::alert;
use crate::cli::{Common, OnceArgs, Verbosity};
use crate::config::{self, Config, Env, Overrides};
use crate::due::{self, Decision, Trigger};
use crate::engine::{self, Manual, Runtime, Scope, Verdict};
use crate::error::Error;
use crate::instant::in_zone;
use crate::job::{Job, JobError};
use crate::run::{self, Claimed, Report};
use crate::text::push_line;
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
    setup_with(common, env, false)
}

/// `setup`; `read_only` changes nothing on disk (no token migration).
pub fn setup_with(common: &Common, env: &Env, read_only: bool) -> Result<(Config, Runtime), Error> {
    let overrides = Overrides {
        config: common.config.clone(),
        vault_dir: common.vault_dir.clone(),
        poll_interval: None,
        read_only,
    };
    let config = config::load(env, &overrides)?;
    let rt = Runtime::open(&config).map_err(Error::Fatal)?;
    Ok((config, rt))
}

pub fn run(args: &OnceArgs, env: &Env) -> Result<u8, Error> {
    let (config, mut rt) = setup_with(&args.common, env, args.dry_run)?;
    rt.date_override = args.date;
    if args.dry_run {
        return dry_run(args, &rt);
    }
    os::raise_fd_limit();
    let out = Out {
        json: args.json,
        verbosity: args.verbosity,
        said: AtomicBool::new(false),
    };
    let stop = Stop::watch();
    let lines = match &args.only {
        Some(path) => run_only(&rt, path, &out, &stop)?,
        None => run_scheduled(&rt, config.max_concurrent_jobs, &out, &stop)?,
    };
    let code = finish(&lines, &out);
    // Pings and notices of the runs, sent in the background.
    alert::drain(match stop.reason() {
        Some(_) => alert::DRAIN_LIMIT_STOPPING,
        None => alert::DRAIN_LIMIT,
    });
    Ok(stop.exit_code().unwrap_or(code?))
}

/// Where `once`'s lines go, and how many of them.
struct Out {
    json: bool,
    verbosity: Verbosity,
    /// Whether any line was printed (then the summary is too).
    said: AtomicBool,
}

impl Out {
    /// Prints a line about one job; `failure` lines survive `--quiet`.
    fn line(&self, line: &str, failure: bool) {
        if self.json || (self.verbosity == Verbosity::Quiet && !failure) {
            return;
        }
        self.said.store(true, Ordering::Relaxed);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", crate::text::shown(line));
        let _ = out.flush();
    }
}

/// The signals that stop a pass (SPEC §8): no new run starts, the running
/// agents are stopped, their runs end `interrupted: runner stopped by
/// <signal>`, and `once` exits 130 (SIGINT) or 143.
struct Stop {
    /// The signal that came, or 0.
    signal: Arc<AtomicI32>,
    /// The running agents, by run id.
    agents: Arc<Mutex<HashMap<String, Canceller>>>,
}

impl Stop {
    /// Starts watching SIGINT, SIGTERM and SIGHUP. If that cannot be set
    /// up, the signals keep their default effect (the next pass settles
    /// what this one leaves).
    fn watch() -> Stop {
        let stop = Stop {
            signal: Arc::new(AtomicI32::new(0)),
            agents: Arc::new(Mutex::new(HashMap::new())),
        };
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot handle signals ({e}): a signal stops this pass at once");
                return stop;
            }
        };
        let (signal, agents) = (Arc::clone(&stop.signal), Arc::clone(&stop.agents));
        let mut signals = signals;
        let watcher = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let first = signal
                        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                    if first {
                        log::warn!("{}: stopping the running agents", signal_name(sig));
                    }
                    let reason = format!("runner stopped by {}", signal_name(sig));
                    for c in agents.lock().unwrap_or_else(|p| p.into_inner()).values() {
                        c.cancel(&reason);
                    }
                }
            });
        if let Err(e) = watcher {
            log::warn!("cannot watch signals ({e}): a signal stops this pass at once");
        }
        stop
    }

    /// Why runs must not start (`runner stopped by SIGTERM`), once a
    /// signal came.
    fn reason(&self) -> Option<String> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(format!("runner stopped by {}", signal_name(sig))),
        }
    }

    /// 130 after SIGINT, 143 after SIGTERM or SIGHUP.
    fn exit_code(&self) -> Option<u8> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            sig if sig == signal_hook::consts::SIGINT => Some(130),
            _ => Some(143),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// How a run of `once` tells the signal watcher its agent runs, and waits
/// between attempts (a signal ends the wait).
struct OnceHooks<'a> {
    stop: &'a Stop,
    run_id: String,
}

impl run::Hooks for OnceHooks<'_> {
    fn started(&self, cancel: Canceller) {
        if let Some(reason) = self.stop.reason() {
            cancel.cancel(&reason);
        }
        self.stop
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.run_id.clone(), cancel);
    }

    fn wait_to_retry(&self, delay: Duration) -> Result<(), String> {
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if let Some(reason) = self.stop.reason() {
                return Err(reason);
            }
            std::thread::sleep(
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            );
        }
        self.stop.reason().map_or(Ok(()), Err)
    }
}

/// `--only`: that one job, now, whatever its schedule.
fn run_only(rt: &Runtime, path: &str, out: &Out, stop: &Stop) -> Result<Vec<Line>, Error> {
    recover::settle(rt)?;
    rt.deliver_outbox();
    let note = rt
        .vault
        .get_note(path)?
        .ok_or_else(|| Error::Fatal(format!("no note at {path} in {}", rt.vault.describe())))?;
    match engine::claim_now(rt, &note, Trigger::Manual)? {
        Manual::Claimed(claimed) => Ok(execute_all(rt, vec![*claimed], 1, out, stop)),
        Manual::Invalid(e) => {
            out.line(&e.to_string(), true);
            Ok(vec![Line::Invalid(e)])
        }
        Manual::Running => {
            let path = note.path_or_id();
            out.line(&format!("skipped: {path}: still running"), false);
            Ok(vec![skipped(path, "still running".to_string())])
        }
    }
}

/// Every job, by the due decision: deliver the outbox, list, decide and
/// claim (the engine settles dead runs in the same pass), deliver what the
/// settling queued, run.
fn run_scheduled(rt: &Runtime, workers: usize, out: &Out, stop: &Stop) -> Result<Vec<Line>, Error> {
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
                out.line(&e.to_string(), true);
                lines.push(Line::Invalid(e));
            }
            Verdict::Skipped(reason) => {
                out.line(&format!("skipped: {path}: {reason}"), false);
                lines.push(Line::Skipped { path, reason });
            }
            Verdict::Quiet(decision) => lines.push(Line::Quiet {
                path,
                decision: quiet_name(&decision),
            }),
        }
    }
    lines.extend(execute_all(rt, pass.claimed, workers, out, stop));
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
/// run ends. A thread the OS refuses leaves its share to the others (and,
/// with none, to this thread). After a signal, the runs not started yet
/// end `interrupted` without an agent.
fn execute_all(
    rt: &Runtime,
    claimed: Vec<Claimed>,
    workers: usize,
    out: &Out,
    stop: &Stop,
) -> Vec<Line> {
    if claimed.is_empty() {
        return Vec::new();
    }
    let n = workers.max(1).min(claimed.len());
    let queue = Mutex::new(claimed.into_iter().collect::<VecDeque<_>>());
    let done = Mutex::new(Vec::new());
    let work = || {
        loop {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            let Some(claimed) = next else { break };
            let run_id = claimed.info.run_id.clone();
            let report = match stop.reason() {
                Some(reason) => run::abandon(rt, claimed, &reason),
                None => {
                    let hooks = OnceHooks {
                        stop,
                        run_id: run_id.clone(),
                    };
                    run::execute(rt, claimed, &hooks)
                }
            };
            stop.agents
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run_id);
            out.line(&report.line(rt.vault.as_ref()), !report.ok);
            done.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Line::Ran(Box::new(report)));
        }
    };
    std::thread::scope(|scope| {
        let mut started = 0;
        for _ in 1..n {
            match std::thread::Builder::new()
                .name("run".into())
                .spawn_scoped(scope, work)
            {
                Ok(_) => started += 1,
                Err(e) => {
                    log::warn!("cannot start a run thread ({e}); {started} more run(s) at a time");
                    break;
                }
            }
        }
        // This thread works too.
        work();
    });
    done.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// The summary line (or the JSON object) and the exit code. The summary
/// is printed when a line was (or with `-v`), never with `--quiet`.
fn finish(lines: &[Line], out: &Out) -> Result<u8, Error> {
    let json = out.json;
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
    } else if out.verbosity == Verbosity::Verbose
        || (out.verbosity == Verbosity::Normal && out.said.load(Ordering::Relaxed))
    {
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
                push_line(&mut text, &format!("invalid job at {path}: {reason}"));
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
                push_line(&mut text, &e.to_string());
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
        // The output path of the slot that is printed: this one, else the
        // next.
        let (info, prompt) = run::prepare(
            &job,
            trigger.unwrap_or(Trigger::Schedule),
            slot.or(next),
            now,
            rt.date_override,
        );
        let local = |t: jiff::Timestamp| in_zone(t, &job.zone.tz);
        let mut line = format!("{}: {what}", job.path);
        if let (Some(slot), Some(trigger)) = (slot, trigger) {
            let _ = write!(line, " ({trigger}, slot {})", local(slot));
        } else if let Some(trigger) = trigger {
            let _ = write!(line, " ({trigger})");
        }
        let _ = write!(line, "; next {}", next.map_or("never".to_string(), local));
        let _ = write!(line, "; output {}", info.output_path);
        if let Err(e) = &prompt {
            let _ = write!(line, " ({})", e.error);
        }
        push_line(&mut text, &line);
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
