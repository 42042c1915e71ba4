//! One run of one claimed job, shared by `once` and `serve`: render its
//! templates, run the agent, spool the note to the outbox, record the
//! outcome, deliver. Deciding and claiming is `engine`'s.
//!
//! The order is what makes crashes safe: the note is in the outbox before
//! the `running` entry is cleared, and an outbox entry of a run still
//! marked running is left alone by delivery until recovery settles it.
//!
//! Long (about 700 lines) because one run's steps stay in one file: the
//! order of spool, record and deliver is what makes a crash safe, and the
//! exceptions to it (a full disk, a lost claim) sit beside the rule.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::civil::Date;

use crate::agent::{self, Canceller};
use crate::alert::{self, Message, Ping};
use crate::coord::Lease;
use crate::deliver;
use crate::due::Trigger;
use crate::engine::Runtime;
use crate::files;
use crate::health::Notice;
use crate::job::Job;
use crate::judge::{self, Cause, Ending, Failure, Meta};
use crate::note::{self, RunInfo};
use crate::os;
use crate::outbox::{Delivery, Gate};
use crate::random;
use crate::recorder::{Finished, Recorded};
use crate::state::{JobState, LastRun, LiveRun, Lock, Locked, Running, StateError, Store};
use crate::template::{self, Vars};
use crate::tools;
use crate::vault::normalize;

/// Where MCP config files live while their run goes on.
pub const TMP_DIR: &str = "tmp";
const MCP_SUFFIX: &str = ".mcp.json";
const AGENT_SUFFIX: &str = ".agent.json";

/// A run's MCP config file.
pub fn mcp_config_path(tmp: &Path, run_id: &str) -> PathBuf {
    tmp.join(format!("{run_id}{MCP_SUFFIX}"))
}

/// The record of a run's agent process group.
pub fn agent_record_path(tmp: &Path, run_id: &str) -> PathBuf {
    tmp.join(format!("{run_id}{AGENT_SUFFIX}"))
}

/// A run whose job lock is held and whose `running` entry is committed.
pub struct Claimed {
    pub job: Job,
    pub info: RunInfo,
    /// The rendered prompt, or what fails the run before it starts (a
    /// template error).
    pub prompt: Result<String, Failure>,
    /// Its claim in the vault (SPEC §12), when runners coordinate there.
    pub lease: Option<Lease>,
    _lock: Lock,
    _live: LiveRun,
}

/// How a run went, for the report line.
#[derive(Clone, Debug)]
pub struct Report {
    pub job_path: String,
    pub run_id: String,
    pub trigger: Trigger,
    pub slot: Option<Timestamp>,
    pub ok: bool,
    pub error: Option<String>,
    /// The path the vault accepted, or `None` if the note is queued.
    pub written_to: Option<String>,
    /// The path the note was meant for.
    pub output_path: String,
    /// Why the note is still queued.
    pub queued_because: Option<String>,
    pub duration: Duration,
    /// Why it failed, for `/metrics`.
    pub cause: Option<Cause>,
    /// The agent's stream facts, summed over the attempts.
    pub meta: Meta,
}

impl Report {
    /// The run as one line, as `once` prints it and `serve` logs it:
    /// `ok: jobs/x -> <where> (schedule, 1.2s)`, or the failure and why.
    pub fn line(&self, vault: &dyn crate::vault::Vault) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = write!(
            s,
            "{}: {}",
            if self.ok { "ok" } else { "failed" },
            self.job_path
        );
        if let Some(e) = &self.error {
            let _ = write!(s, ": {e}");
        }
        match (&self.written_to, &self.queued_because) {
            (Some(path), _) => {
                let _ = write!(s, " -> {}", vault.locate(path));
            }
            (None, Some(why)) => {
                let _ = write!(s, " -> queued in the outbox ({why})");
            }
            (None, None) => {}
        }
        let _ = write!(
            s,
            " ({}, {:.1}s)",
            self.trigger,
            self.duration.as_secs_f64()
        );
        s
    }
}

/// What a driver learns of a run while it goes on, and how it waits
/// between attempts.
pub trait Hooks {
    /// The agent of an attempt runs; `cancel` stops it (shutdown, a
    /// signal).
    fn started(&self, _cancel: Canceller) {}

    /// Waits `delay` before another attempt; `Err(reason)` gives up (the
    /// runner is stopping), which ends the run as `interrupted: <reason>`.
    fn wait_to_retry(&self, delay: Duration) -> Result<(), String> {
        std::thread::sleep(delay);
        Ok(())
    }
}

/// No hooks: nothing to tell, plain sleeps.
pub struct NoHooks;

impl Hooks for NoHooks {}

/// Renders a job's templates for one run. The time variables come from
/// `slot` (scheduled runs) or `start` (manual runs).
pub fn prepare(
    job: &Job,
    trigger: Trigger,
    slot: Option<Timestamp>,
    start: Timestamp,
    date_override: Option<Date>,
) -> (RunInfo, Result<String, Failure>) {
    let run_id = random::uuid_v4();
    let vars = Vars::new(
        slot.unwrap_or(start),
        &job.zone.tz,
        date_override,
        &job.path,
        &run_id,
    );
    // Both templates are rendered, so the message names every unknown
    // variable of either.
    let rendered = match (
        template::render(&job.output_path, &vars, "output_path"),
        template::render(&job.prompt, &vars, "prompt"),
    ) {
        (Ok(path), Ok(_)) if path.trim_start().starts_with('/') => Err(format!(
            "output_path renders to {path:?}, an absolute path; it must be relative to the vault"
        )),
        (Ok(path), Ok(prompt)) => match normalize(&path) {
            Some(path) => Ok((path, prompt)),
            None => Err(format!(
                "output_path renders to {path:?}, which is not a usable note path (empty, or with . or .. segments)"
            )),
        },
        (path, prompt) => Err(template::describe(
            &[path.err(), prompt.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>(),
        )),
    };
    let (output_path, prompt) = match rendered {
        Ok((path, prompt)) => (path, Ok(prompt)),
        Err(e) => (
            format!("jobs/runs/{}/render-error-{run_id}", job.name()),
            Err(Failure::plain(
                format!("template error: {e}"),
                Cause::Template,
            )),
        ),
    };
    let info = RunInfo {
        run_id,
        job_id: job.id.clone(),
        job_path: job.path.clone(),
        model: job.model.clone(),
        trigger,
        slot,
        started_at: start,
        output_path,
        tags: job.output_tags.clone(),
    };
    (info, prompt)
}

/// Claims a prepared run while the caller holds the state lock: takes the
/// job lock and records `running`. `Ok(None)` if the job is still running
/// elsewhere. `shared`: its slot is to be claimed in the vault as well.
pub fn claim(
    store: &Store,
    locked: &mut Locked,
    job: Job,
    info: RunInfo,
    prompt: Result<String, Failure>,
    shared: bool,
) -> Result<Option<Claimed>, StateError> {
    let Some(lock) = store.try_lock_job(&job.path)? else {
        return Ok(None);
    };
    // A lock file removed from under a live run gives a fresh lock: the
    // run's own record says it goes on.
    if locked
        .state
        .jobs
        .get(&job.path)
        .and_then(|e| e.running.as_ref())
        .is_some_and(Running::runner_alive)
    {
        return Ok(None);
    }
    let entry = locked
        .state
        .jobs
        .entry(job.path.clone())
        .or_insert_with(|| JobState {
            schedule: job.schedule_text.clone(),
            timezone: job.zone.name.clone(),
            checked_through: info.started_at,
            last_run: None,
            running: None,
            note: None,
        });
    entry.running = Some(Running {
        run_id: info.run_id.clone(),
        slot: info.slot,
        started_at: info.started_at,
        pid: std::process::id(),
        pid_start: os::self_start(),
        boot_id: os::boot_id(),
        trigger: info.trigger,
        output_path: info.output_path.clone(),
        job_id: info.job_id.clone(),
        model: info.model.clone(),
        output_tags: info.tags.clone(),
        claimed: shared,
    });
    let live = LiveRun::new(&info.run_id);
    Ok(Some(Claimed {
        job,
        info,
        prompt,
        lease: None,
        _lock: lock,
        _live: live,
    }))
}

/// Runs a claimed job to the end and returns its report: its attempts
/// (a transient failure is tried again, SPEC §6.5), then its note, spooled,
/// recorded and delivered.
pub fn execute(rt: &Runtime, claimed: Claimed, hooks: &dyn Hooks) -> Report {
    let Claimed {
        job,
        mut info,
        mut prompt,
        lease,
        _lock,
        _live,
    } = claimed;
    info.started_at = rt.clock.now();
    let started = Instant::now();
    if let Some(why) = lease.as_ref().and_then(Lease::lost) {
        prompt = Err(Failure::plain(
            format!("interrupted: {why}"),
            Cause::Interrupted,
        ));
    }
    let ping = job
        .ping_url
        .as_deref()
        .map(|url| Ping::start(url, &job.path));
    let (ending, meta) = match prompt {
        Err(failure) => {
            let meta = Meta {
                exit_code: failure.cause.exit_code().unwrap_or(1),
                attempts: 1,
                ..Meta::default()
            };
            (Ending::Failure(failure), meta)
        }
        Ok(prompt) => run_attempts(rt, &job, &info, prompt, hooks, lease.as_ref()),
    };
    let duration = started.elapsed();
    if let Some(lease) = &lease {
        lease.stop();
        if let Some(why) = lease.lost() {
            return lost_claim(rt, &info, &why, duration, meta);
        }
    }
    let ok = ending.is_success();
    let error = ending.error().map(String::from);
    let cause = ending.failure().map(|f| f.cause);
    if !meta.denials.is_empty() {
        log::warn!(
            "{}: the agent was denied: {}",
            job.path,
            meta.denials.join(", ")
        );
    }
    let stderr_tail = ending
        .failure()
        .map(|f| f.stderr_tail.clone())
        .unwrap_or_default();
    let note = note::note(&info, ending, &meta, duration);
    // What a notice hands on, kept only when notices go somewhere.
    let note_text = if rt.notifier.enabled() {
        alert::cut(&note.content, alert::STDIN_CAP)
    } else {
        String::new()
    };
    let mut report = Report {
        job_path: job.path.clone(),
        run_id: info.run_id.clone(),
        trigger: info.trigger,
        slot: info.slot,
        ok,
        error,
        written_to: None,
        output_path: note.path.clone(),
        queued_because: None,
        duration,
        cause,
        meta,
    };

    // 1. The note is safe on disk before the run is marked finished.
    let spooled = rt
        .outbox
        .spool(&job.path, ok, &note, rt.clock.now(), lease.is_some());
    let entry = match spooled {
        Ok(entry) => entry,
        Err(spool_error) => {
            // Not on disk (a full disk, say): the vault now, or the output
            // is lost; either way the record says what happened.
            log::error!(
                "{}: could not queue the output of run {} ({spool_error}); writing it to the vault directly",
                job.path,
                info.run_id
            );
            // A claimed run's note only while the claim is still its own.
            let confirmed = match &lease {
                None => Ok(Some(String::new())),
                Some(lease) => lease.before(&info.job_path, &info.run_id),
            };
            let written = confirmed.and_then(|token| match token {
                Some(token) => deliver::deliver(rt.vault.as_ref(), &note, None).map(|p| (p, token)),
                None => Err(crate::vault::VaultError::Io {
                    what: format!("writing note {}", note.path),
                    detail: "its claim in the vault was taken over".to_string(),
                }),
            });
            let recorded = match written {
                Ok((path, token)) => {
                    report.written_to = Some(path);
                    if let Some(lease) = &lease {
                        lease.after(&info.job_path, &info.run_id, token);
                    }
                    record_outcome(rt, &info, ok, &note.path)
                }
                Err(e) => {
                    let lost = format!(
                        "output lost: it could not be queued ({spool_error}) and the vault did not take it ({e})"
                    );
                    log::error!("{}: run {}: {lost}", job.path, info.run_id);
                    report.ok = false;
                    report.cause.get_or_insert(Cause::Other);
                    report.error = Some(match report.error.take() {
                        Some(first) => format!("{first}; {lost}"),
                        None => lost,
                    });
                    record_outcome(rt, &info, false, &note.path)
                }
            };
            drop(_lock);
            tell(rt, &report, ping, recorded.notice, &stderr_tail, note_text);
            return report;
        }
    };
    drop(note);
    // 2. The outcome is recorded and the job released.
    let recorded = record_outcome(rt, &info, ok, &report.output_path);
    drop(_lock);
    // 3. Delivery, from the outbox entry. Not when the record failed: the
    // next pass must find the note in the outbox to settle the run;
    // delivered now, that pass would take the run for interrupted.
    if !recorded.written {
        report.queued_because = Some("the run could not be recorded in state.json".to_string());
    } else {
        let gate: &dyn Gate = match &lease {
            Some(lease) => lease,
            None => rt.gate(),
        };
        deliver_now(rt, &entry, &mut report, gate);
    }
    tell(rt, &report, ping, recorded.notice, &stderr_tail, note_text);
    report
}

/// Delivers a finished run's outbox entry; what happened goes in `report`.
fn deliver_now(rt: &Runtime, entry: &Path, report: &mut Report, gate: &dyn Gate) {
    match rt.outbox.deliver_entry(rt.vault.as_ref(), entry, gate) {
        Delivery::Delivered(path) => report.written_to = Some(path),
        Delivery::Dropped(why) => {
            report.ok = false;
            report.cause = Some(Cause::Interrupted);
            report.error = Some(why);
        }
        Delivery::Busy => report.written_to = Some(report.output_path.clone()),
        Delivery::Failed(e) => {
            // The report line says it (once prints it, serve logs it).
            log::debug!(
                "{}: output of run {} queued in the outbox: {e}",
                report.job_path,
                report.run_id
            );
            report.queued_because = Some(e.to_string());
        }
    }
}

/// Tells the ping endpoint and the notice channels how the run went, in
/// the background.
fn tell(
    rt: &Runtime,
    report: &Report,
    ping: Option<Ping>,
    notice: Option<Notice>,
    stderr_tail: &str,
    note: String,
) {
    let summary = ping_summary(report);
    if let Some(ping) = ping {
        ping.finish(report.ok, &summary, stderr_tail);
    }
    let Some(notice) = notice else { return };
    rt.notifier.send(Message {
        reason: alert::reason(notice, report.error.as_deref()),
        notice,
        job_path: report.job_path.clone(),
        run_id: report.run_id.clone(),
        output_path: report
            .written_to
            .clone()
            .unwrap_or_else(|| report.output_path.clone()),
        cost_usd: report.meta.cost_usd,
        note,
    });
}

/// A ping's body: `ok: jobs/x run <id> (schedule, 12.3s, $0.0123)`, or
/// the failure's reason.
fn ping_summary(report: &Report) -> String {
    match (&report.error, report.ok) {
        (Some(e), false) => e.clone(),
        _ => {
            let cost = report
                .meta
                .cost_usd
                .map(|c| format!(", ${c:.4}"))
                .unwrap_or_default();
            format!(
                "ok: {} run {} ({}, {:.1}s{cost})",
                report.job_path,
                report.run_id,
                report.trigger,
                report.duration.as_secs_f64()
            )
        }
    }
}

/// Ends a run whose claim in the vault was lost (taken over, or not
/// renewed in time): its agent was stopped and nothing is written; the
/// runner that takes the claim over reports the run. Recorded here as
/// failed.
fn lost_claim(rt: &Runtime, info: &RunInfo, why: &str, duration: Duration, meta: Meta) -> Report {
    record_outcome(rt, info, false, &info.output_path);
    let error = format!(
        "stopped: {why}; its note is not written (the runner that takes the claim over reports the run)"
    );
    log::error!("{}: run {}: {error}", info.job_path, info.run_id);
    Report {
        job_path: info.job_path.clone(),
        run_id: info.run_id.clone(),
        trigger: info.trigger,
        slot: info.slot,
        ok: false,
        error: Some(error),
        written_to: None,
        output_path: info.output_path.clone(),
        queued_because: None,
        duration,
        cause: Some(Cause::Interrupted),
        meta,
    }
}

/// Ends a claimed run that never started (serve shutting down while it
/// waited for a free slot): a failure note with `reason`, recorded as any
/// other outcome.
pub fn abandon(rt: &Runtime, claimed: Claimed, reason: &str) -> Report {
    let mut claimed = claimed;
    claimed.prompt = Err(Failure::plain(
        format!("interrupted: {reason}"),
        Cause::Interrupted,
    ));
    execute(rt, claimed, &NoHooks)
}

/// The delay before attempt `attempt + 1` (`attempt` ≥ 1 failed): `base`
/// doubling each time, times `1 + 0.2 × jitter` (`jitter` in −1..=1).
pub fn retry_delay(base: Duration, attempt: u32, jitter: f64) -> Duration {
    let doubled = base.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(20) as i32);
    let factor = 1.0 + 0.2 * jitter.clamp(-1.0, 1.0);
    Duration::try_from_secs_f64(doubled * factor).unwrap_or(Duration::MAX)
}

/// A random number in −1..=1, for jitter.
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = random::fill(&mut b);
    f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) * 2.0 - 1.0
}

/// Runs the agent until an attempt succeeds, fails for good, or the
/// retries are used up.
fn run_attempts(
    rt: &Runtime,
    job: &Job,
    info: &RunInfo,
    prompt: String,
    hooks: &dyn Hooks,
    lease: Option<&Lease>,
) -> (Ending, Meta) {
    let setup = rt.vault.agent_setup();
    let tmp = rt.tmp_dir();
    let mcp_path = mcp_config_path(&tmp, &info.run_id);
    let written = files::create_private_dir(&tmp)
        .and_then(|()| files::write_ephemeral(&mcp_path, setup.mcp_config.as_bytes()));
    if let Err(e) = written {
        let failure = Failure::plain(
            format!("could not write the MCP config {}: {e}", mcp_path.display()),
            Cause::Other,
        );
        let meta = Meta {
            exit_code: 1,
            attempts: 1,
            ..Meta::default()
        };
        return (Ending::Failure(failure), meta);
    }
    let _remove = RemoveOnDrop(&mcp_path);
    // Which process group (and cgroup) the agent is, so that a pass after a
    // crash of this runner can stop what it left running.
    let agent_path = agent_record_path(&tmp, &info.run_id);
    let _remove_agent = RemoveOnDrop(&agent_path);
    let a = &job.agent;
    let mode = a.permission_mode.unwrap_or(rt.defaults.permission_mode);
    if !mode.enforces_allowed_tools() {
        log::warn!("{}", tools::bypass_warning(&job.path));
    }
    agent::warn_if_root(&rt.child_env, mode);
    let max_budget_usd = a.max_budget_usd.or(rt.defaults.max_budget_usd);
    let args = agent::claude_args(&agent::Args {
        mcp_config: &mcp_path,
        allowed_tools: &job.allowed_tools,
        permission_mode: mode,
        model: &job.model,
        disallowed_tools: &a.disallowed_tools,
        max_turns: a.max_turns,
        max_budget_usd,
        fallback_model: &a.fallback_model,
    });
    let search = rt
        .child_env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(agent::DEFAULT_PATH, |(_, v)| v.as_str());
    let cx = judge::Context {
        bin: &rt.claude_bin,
        path: search,
        timeout: job.timeout,
        mcp_server: setup.mcp_server.as_deref(),
        max_turns: a.max_turns,
        max_budget_usd,
    };
    let retries = a.retries.unwrap_or(rt.defaults.retries);
    let base_delay = a.retry_delay.unwrap_or(rt.defaults.retry_delay);
    let prompt = prompt.into_bytes();
    let mut total: Option<Meta> = None;
    let mut attempt_errors = Vec::new();
    let mut attempt = 1;
    loop {
        let request = agent::Request {
            program: rt.claude_bin.clone(),
            args: args.clone(),
            env: rt.child_env.clone(),
            cwd: setup.cwd.clone(),
            stdin: prompt.clone(),
            timeout: job.timeout,
            run_id: info.run_id.clone(),
        };
        let mut outcome = agent::run(request, |cancel: Canceller| {
            record_agent(&agent_path, &cancel, &job.path);
            if let Some(lease) = lease {
                lease.attach(cancel.clone());
            }
            hooks.started(cancel);
        });
        let (ending, meta) = judge::judge(&mut outcome, &cx);
        if outcome.left_behind > 0 {
            log::warn!(
                "{}: stopped {} process(es) its agent left running",
                job.path,
                outcome.left_behind
            );
        }
        let total = match total.as_mut() {
            Some(t) => {
                t.absorb(meta);
                t
            }
            None => total.insert(meta),
        };
        total.attempts = attempt;
        let retry = match &ending {
            Ending::Failure(f) if f.transient && attempt <= retries => Some(f.error.clone()),
            _ => None,
        };
        let Some(error) = retry else {
            total.attempt_errors = attempt_errors;
            return (ending, total.clone());
        };
        let delay = retry_delay(base_delay, attempt, jitter());
        log::warn!(
            "{}: attempt {attempt} failed ({error}); trying again in {:.0}s",
            job.path,
            delay.as_secs_f64()
        );
        attempt_errors.push(error);
        if let Err(reason) = hooks.wait_to_retry(delay) {
            let failure = Failure::plain(format!("interrupted: {reason}"), Cause::Interrupted);
            total.exit_code = 130;
            total.attempt_errors = attempt_errors;
            return (Ending::Failure(failure), total.clone());
        }
        attempt += 1;
    }
}

/// Writes which process group and cgroup the agent is in.
fn record_agent(path: &Path, cancel: &Canceller, job_path: &str) {
    let pid = cancel.pid();
    // Read when it was spawned; from /proc only if that read failed.
    let start = match cancel.start() {
        0 => os::proc_stat(pid).map(|(_, start)| start),
        start => Some(start),
    };
    if let Some(start) = start {
        let record = serde_json::json!({
            "pgid": pid,
            "start": start,
            "boot_id": os::boot_id(),
            "cgroup": cancel.cgroup().map(|c| c.display().to_string()),
        });
        if let Err(e) = files::write_ephemeral(path, record.to_string().as_bytes()) {
            log::warn!("{job_path}: could not record the agent's pid: {e}");
        }
    }
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// Records a finished run in state and clears its `running` entry; says
/// whether state.json was written and which notice the run calls for.
fn record_outcome(rt: &Runtime, info: &RunInfo, ok: bool, output_path: &str) -> Recorded {
    let last = LastRun {
        run_id: info.run_id.clone(),
        status: if ok { "ok" } else { "failed" }.to_string(),
        started_at: info.started_at,
        finished_at: rt.clock.now().max(info.started_at),
        output_path: output_path.to_string(),
        trigger: info.trigger,
    };
    let finished = Finished {
        job_path: info.job_path.clone(),
        last,
        at: info.slot.unwrap_or(info.started_at),
        notify_interval: rt.notifier.interval,
    };
    rt.recorder.record(&rt.store, finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::test_job;

    fn job(extra: &str, body: &str) -> Job {
        let front = format!(
            "schedule: daily\nmodel: m\nallowed_tools: Read\ntimezone: America/New_York\n{extra}"
        );
        test_job("jobs/daily-brief", &front, body)
    }

    #[test]
    fn prepare_renders_at_the_slot_in_the_job_zone() {
        let slot: Timestamp = "2026-03-08T05:00:00Z".parse().unwrap();
        let (info, prompt) = prepare(
            &job("", "Brief for {{date}} ({{time}})"),
            Trigger::Schedule,
            Some(slot),
            slot,
            None,
        );
        assert_eq!(prompt.unwrap(), "Brief for 2026-03-08 (00:00)");
        assert_eq!(
            info.output_path,
            format!("jobs/runs/daily-brief/{}", info.run_id)
        );
    }

    #[test]
    fn template_errors_go_to_the_render_error_path() {
        let now: Timestamp = "2026-03-08T05:00:00Z".parse().unwrap();
        for (extra, body) in [
            ("", "{{nope}}"),
            ("output_path: \"x/{{bad}}\"\n", "ok"),
            ("output_path: \"{{date}}/../..\"\n", "ok"),
            ("output_path: \"/etc/{{date}}\"\n", "ok"),
        ] {
            let (info, prompt) = prepare(&job(extra, body), Trigger::Manual, None, now, None);
            assert!(prompt.unwrap_err().error.starts_with("template error: "));
            assert_eq!(
                info.output_path,
                format!("jobs/runs/daily-brief/render-error-{}", info.run_id)
            );
        }
    }

    #[test]
    fn a_template_error_names_the_unknown_variables_of_both_templates() {
        let now: Timestamp = "2026-03-08T05:00:00Z".parse().unwrap();
        let (_, prompt) = prepare(
            &job("output_path: \"x/{{bad}}\"\n", "{{nope}} {{date}}"),
            Trigger::Manual,
            None,
            now,
            None,
        );
        assert_eq!(
            prompt.unwrap_err().error,
            "template error: unknown variables {{bad}} in output_path, {{nope}} in prompt; \
             supported: date, time, datetime, yesterday, job_name, job_path, run_id"
        );
    }
}
