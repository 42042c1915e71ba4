//! One run of one job, shared by `once` and `serve`: claim it (job lock,
//! `running` entry), render its templates, run the agent, spool the note to
//! the outbox, record the outcome, deliver. Also the recovery of runs whose
//! runner died (SPEC §7.4).
//!
//! The order is what makes crashes safe: the note is in the outbox before
//! the `running` entry is cleared, and an outbox entry of a run still
//! marked running is left alone by delivery until recovery settles it.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;

use crate::agent::{self, Canceller};
use crate::config::{Config, Env};
use crate::files;
use crate::job::Job;
use crate::output::{self, Delivery, Ending, Outbox, RunInfo};
use crate::random;
use crate::state::{LastRun, Lock, Locked, Running, StateError, Store, Trigger};
use crate::sys;
use crate::template::{self, Vars};
use crate::vault::Vault;
use crate::vault::dir::normalize;

/// Where MCP config files live while their run goes on.
pub const TMP_DIR: &str = "tmp";
const MCP_SUFFIX: &str = ".mcp.json";
const AGENT_SUFFIX: &str = ".agent.json";

/// The clock: the system's, or a fixed instant (`PARACHUTE_RUNNER_NOW`).
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    System,
    Fixed(Timestamp),
    /// Simulated time for tests: `start` at the real instant `anchor`, then
    /// `speed` times faster than real time (`PARACHUTE_RUNNER_CLOCK`).
    Scaled {
        start: Timestamp,
        anchor: Timestamp,
        speed: u32,
    },
}

impl Clock {
    pub fn now(self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Fixed(t) => t,
            Clock::Scaled {
                start,
                anchor,
                speed,
            } => {
                let real = Timestamp::now().duration_since(anchor);
                let simulated = real
                    .checked_mul(i32::try_from(speed).unwrap_or(i32::MAX))
                    .unwrap_or(real);
                start.checked_add(simulated).unwrap_or(start)
            }
        }
    }

    /// How long to really wait for `simulated` to pass.
    pub fn real_duration(self, simulated: Duration) -> Duration {
        match self {
            Clock::Scaled { speed, .. } => simulated / speed.max(1),
            _ => simulated,
        }
    }

    /// `PARACHUTE_RUNNER_NOW=<instant>` (a fixed now) or
    /// `PARACHUTE_RUNNER_CLOCK=<start>,<anchor>,<speed>` (simulated time).
    pub fn from_env(env: &Env) -> Result<Clock, crate::error::Error> {
        if env.get("PARACHUTE_RUNNER_NOW").is_some() {
            return crate::now(env).map(Clock::Fixed);
        }
        let Some(text) = env.get("PARACHUTE_RUNNER_CLOCK") else {
            return Ok(Clock::System);
        };
        let bad = || {
            crate::error::Error::Fatal(format!(
                "PARACHUTE_RUNNER_CLOCK: expected <start>,<anchor>,<speed> (two RFC 3339 instants and a factor from 1 to 100000), got {text:?}"
            ))
        };
        let mut parts = text.split(',');
        let (Some(start), Some(anchor), Some(speed), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Clock::Scaled {
            start: start.trim().parse().map_err(|_| bad())?,
            anchor: anchor.trim().parse().map_err(|_| bad())?,
            speed: speed
                .trim()
                .parse()
                .ok()
                .filter(|s| (1..=100_000).contains(s))
                .ok_or_else(bad)?,
        })
    }
}

/// A program named by a relative path (`bin/claude`) is made absolute
/// now: the agent may run in another directory (the directory vault's).
/// A bare name (`claude`) is left for the PATH lookup.
fn resolve_program(bin: &str) -> String {
    if bin.contains('/') {
        crate::config::absolute(Path::new(bin))
            .display()
            .to_string()
    } else {
        bin.to_string()
    }
}

/// What every run of a process shares.
#[derive(Clone)]
pub struct Runtime {
    pub vault: Arc<dyn Vault>,
    pub store: Store,
    pub outbox: Outbox,
    pub claude_bin: String,
    pub child_env: Vec<(String, String)>,
    pub clock: Clock,
    /// `--date`: replaces `{{date}}` and `{{yesterday}}`.
    pub date_override: Option<Date>,
    recorder: Arc<Recorder>,
}

impl Runtime {
    pub fn new(config: &Config, vault: Arc<dyn Vault>, env: &Env, clock: Clock) -> Runtime {
        Runtime {
            vault,
            store: Store::new(&config.paths.runner_dir),
            outbox: Outbox::new(&config.paths.runner_dir),
            claude_bin: resolve_program(&config.claude_bin),
            child_env: agent::child_env(env),
            clock,
            date_override: None,
            recorder: Arc::new(Recorder::default()),
        }
    }

    fn tmp_dir(&self) -> PathBuf {
        self.store.dir().join(TMP_DIR)
    }
}

/// A run whose job lock is held and whose `running` entry is committed.
pub struct Claimed {
    pub job: Job,
    pub info: RunInfo,
    /// The rendered prompt, or the template error that fails the run.
    pub prompt: Result<String, String>,
    _lock: Lock,
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
}

/// Renders a job's templates for one run. The time variables come from
/// `slot` (scheduled runs) or `start` (manual runs).
pub fn prepare(
    job: &Job,
    trigger: Trigger,
    slot: Option<Timestamp>,
    start: Timestamp,
    date_override: Option<Date>,
) -> (RunInfo, Result<String, String>) {
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
            Err(format!("template error: {e}")),
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
/// elsewhere.
pub fn claim(
    store: &Store,
    locked: &mut Locked,
    job: Job,
    info: RunInfo,
    prompt: Result<String, String>,
) -> Result<Option<Claimed>, StateError> {
    let Some(lock) = store.try_lock_job(&job.path)? else {
        return Ok(None);
    };
    let entry = locked
        .state
        .jobs
        .entry(job.path.clone())
        .or_insert_with(|| crate::state::JobState {
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
        trigger: info.trigger,
        output_path: info.output_path.clone(),
        job_id: info.job_id.clone(),
        model: info.model.clone(),
        output_tags: info.tags.clone(),
    });
    Ok(Some(Claimed {
        job,
        info,
        prompt,
        _lock: lock,
    }))
}

/// Runs a claimed job to the end and returns its report. `on_start` gets a
/// `Canceller` once the agent runs (serve uses it on shutdown).
pub fn execute(rt: &Runtime, claimed: Claimed, on_start: impl FnOnce(Canceller)) -> Report {
    let Claimed {
        job,
        mut info,
        prompt,
        _lock,
    } = claimed;
    info.started_at = rt.clock.now();
    let (ending, duration) = match prompt {
        Err(error) => (
            Ending::Failure {
                error,
                exit_code: None,
                stderr_tail: String::new(),
                truncated: false,
            },
            Duration::ZERO,
        ),
        Ok(prompt) => run_agent(rt, &job, &info, prompt, on_start),
    };
    let ok = ending.is_success();
    let error = ending.error().map(String::from);
    let note = output::note(&info, ending, duration);
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
    };

    // 1. The note is safe on disk before the run is marked finished.
    let spooled = rt.outbox.spool(&job.path, ok, &note, rt.clock.now());
    if let Err(e) = &spooled {
        log::error!(
            "{}: could not queue the output of run {} ({e}); writing it to the vault directly",
            job.path,
            info.run_id
        );
    }
    // 2. The outcome is recorded and the job released.
    let recorded = record_outcome(rt, &info, ok, &note.path);
    drop(_lock);
    // 3. Delivery, from the outbox entry (the note in memory, which may be
    // megabytes, is dropped first). Not when the record failed and the note
    // is queued: the next pass must find it in the outbox to settle the
    // run; delivered now, that pass would take the run for interrupted.
    let spooled = spooled.map_err(|_| note);
    match spooled {
        Ok(_) if !recorded => {
            report.queued_because = Some("the run could not be recorded in state.json".to_string());
        }
        Ok(entry) => match rt.outbox.deliver_entry(rt.vault.as_ref(), &entry) {
            Delivery::Delivered(path) => report.written_to = Some(path),
            Delivery::Busy => report.written_to = Some(report.output_path.clone()),
            Delivery::Failed(e) => {
                log::warn!(
                    "{}: output of run {} queued in the outbox: {e}",
                    job.path,
                    info.run_id
                );
                report.queued_because = Some(e.to_string());
            }
        },
        Err(note) => match output::deliver(rt.vault.as_ref(), &note, None) {
            Ok(path) => report.written_to = Some(path),
            Err(e) => {
                log::error!(
                    "{}: the output of run {} is LOST: {e}",
                    job.path,
                    info.run_id
                );
                report.queued_because = Some(e.to_string());
            }
        },
    }
    report
}

/// Ends a claimed run that never started (serve shutting down while it
/// waited for a free slot): a failure note with `reason`, recorded as any
/// other outcome.
pub fn abandon(rt: &Runtime, claimed: Claimed, reason: &str) -> Report {
    let mut claimed = claimed;
    claimed.prompt = Err(reason.to_string());
    execute(rt, claimed, |_| {})
}

fn run_agent(
    rt: &Runtime,
    job: &Job,
    info: &RunInfo,
    prompt: String,
    on_start: impl FnOnce(Canceller),
) -> (Ending, Duration) {
    let setup = rt.vault.agent_setup();
    let tmp = rt.tmp_dir();
    let mcp_path = tmp.join(format!("{}{MCP_SUFFIX}", info.run_id));
    let written = files::create_private_dir(&tmp)
        .and_then(|()| files::write_ephemeral(&mcp_path, setup.mcp_config.as_bytes()));
    if let Err(e) = written {
        let ending = Ending::Failure {
            error: format!("could not write the MCP config {}: {e}", mcp_path.display()),
            exit_code: None,
            stderr_tail: String::new(),
            truncated: false,
        };
        return (ending, Duration::ZERO);
    }
    let _remove = RemoveOnDrop(&mcp_path);
    // Which process group the agent is, so that a pass after a crash of
    // this runner can stop what it left running.
    let agent_path = tmp.join(format!("{}{AGENT_SUFFIX}", info.run_id));
    let _remove_agent = RemoveOnDrop(&agent_path);
    let on_start = |cancel: Canceller| {
        let pid = cancel.pid();
        if let Some((_, start)) = sys::proc_stat(pid) {
            let record =
                serde_json::json!({"pgid": pid, "start": start, "boot_id": sys::boot_id()});
            if let Err(e) = files::write_ephemeral(&agent_path, record.to_string().as_bytes()) {
                log::warn!("{}: could not record the agent's pid: {e}", job.path);
            }
        }
        on_start(cancel);
    };
    let request = agent::Request {
        program: rt.claude_bin.clone(),
        args: agent::claude_args(&mcp_path, &job.allowed_tools, &job.model),
        env: rt.child_env.clone(),
        cwd: setup.cwd,
        stdin: prompt.into_bytes(),
        timeout: job.timeout,
    };
    let mut outcome = agent::run(request, on_start);
    (
        Ending::from_agent(&mut outcome, &rt.claude_bin, job.timeout),
        outcome.duration,
    )
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// Records a finished run in state and clears its `running` entry. `false`
/// if state.json could not be written.
fn record_outcome(rt: &Runtime, info: &RunInfo, ok: bool, output_path: &str) -> bool {
    let last = LastRun {
        run_id: info.run_id.clone(),
        status: if ok { "ok" } else { "failed" }.to_string(),
        started_at: info.started_at,
        finished_at: rt.clock.now().max(info.started_at),
        output_path: output_path.to_string(),
        trigger: info.trigger,
    };
    rt.recorder.record(&rt.store, info.job_path.clone(), last)
}

/// Records finished runs in state.json, several in one write when runs end
/// together (a group commit): each caller returns once its own record is
/// written, so its job lock is still released only after that.
#[derive(Default)]
pub struct Recorder {
    queue: Mutex<RecorderQueue>,
    written: Condvar,
}

#[derive(Default)]
struct RecorderQueue {
    pending: Vec<(u64, String, LastRun)>,
    /// Written tickets whose write failed, until their caller has seen it.
    failed: std::collections::HashSet<u64>,
    /// Tickets handed out, and the last one written.
    issued: u64,
    done: u64,
    writing: bool,
}

impl Recorder {
    /// `false` if the write that carried this record failed.
    fn record(&self, store: &Store, job_path: String, last: LastRun) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.issued += 1;
        let ticket = q.issued;
        q.pending.push((ticket, job_path, last));
        loop {
            if q.done >= ticket {
                return !q.failed.remove(&ticket);
            }
            if q.writing {
                q = self.written.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            q.writing = true;
            let batch = std::mem::take(&mut q.pending);
            let upto = q.issued;
            drop(q);
            let written = write_outcomes(store, &batch);
            q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if !written {
                q.failed.extend(batch.iter().map(|(ticket, ..)| *ticket));
            }
            q.done = upto;
            q.writing = false;
            self.written.notify_all();
        }
    }
}

fn write_outcomes(store: &Store, batch: &[(u64, String, LastRun)]) -> bool {
    let result = store.lock().and_then(|mut locked| {
        for (_, path, last) in batch {
            if let Some(entry) = locked.state.jobs.get_mut(path) {
                if entry
                    .running
                    .as_ref()
                    .is_some_and(|r| r.run_id == last.run_id)
                {
                    entry.running = None;
                }
                entry.last_run = Some(last.clone());
            }
        }
        locked.commit()
    });
    match result {
        Ok(()) => true,
        Err(e) => {
            // The notes stay queued; the next pass sees `running` entries
            // with free locks, finds the notes in the outbox and settles
            // them.
            for (_, path, last) in batch {
                log::error!("{path}: could not record run {}: {e}", last.run_id);
            }
            false
        }
    }
}

/// Settles the runs of dead runners (SPEC §7.4) while the caller holds the
/// state lock: a `running` entry whose job lock is free. If its note is
/// already in the outbox the run finished and only the record is missing;
/// otherwise an `interrupted` failure note is queued. Also removes MCP
/// config files no live run owns. Returns the settled run ids.
pub fn recover(rt: &Runtime, locked: &mut Locked) -> Vec<String> {
    let now = rt.clock.now();
    let mut settled = Vec::new();
    for (path, entry) in locked.state.jobs.iter_mut() {
        let Some(running) = entry.running.clone() else {
            continue;
        };
        match rt.store.try_lock_job(path) {
            Ok(Some(_lock)) => {}
            Ok(None) => continue,
            Err(e) => {
                log::warn!("{path}: cannot check its run {}: {e}", running.run_id);
                continue;
            }
        }
        stop_orphans(&rt.tmp_dir(), path, &running.run_id);
        let status = match rt.outbox.read(&running.run_id) {
            Some(queued) => queued.ok,
            None => {
                let info = RunInfo {
                    run_id: running.run_id.clone(),
                    job_id: running.job_id.clone(),
                    job_path: path.clone(),
                    model: running.model.clone(),
                    trigger: running.trigger,
                    slot: running.slot,
                    started_at: running.started_at,
                    output_path: running.output_path.clone(),
                    tags: if running.output_tags.is_empty() {
                        vec![crate::job::RUN_TAG.to_string()]
                    } else {
                        running.output_tags.clone()
                    },
                };
                let ending = Ending::Failure {
                    error: "interrupted: runner stopped before the run finished".to_string(),
                    exit_code: None,
                    stderr_tail: String::new(),
                    truncated: false,
                };
                let elapsed = crate::state::until(running.started_at, now);
                let note = output::note(&info, ending, elapsed);
                if let Err(e) = rt.outbox.spool(path, false, &note, now) {
                    log::error!(
                        "{path}: could not queue the interrupted note of run {}: {e}",
                        running.run_id
                    );
                    continue;
                }
                log::warn!(
                    "{path}: run {} was interrupted (its runner stopped); queued a failure note",
                    running.run_id
                );
                false
            }
        };
        entry.running = None;
        entry.last_run = Some(LastRun {
            run_id: running.run_id.clone(),
            status: if status { "ok" } else { "failed" }.to_string(),
            started_at: running.started_at,
            finished_at: now.max(running.started_at),
            output_path: running.output_path.clone(),
            trigger: running.trigger,
        });
        settled.push(running.run_id);
    }
    remove_stale_run_files(&rt.tmp_dir(), &running_ids(locked));
    // Half-written files of crashed writers. Under the state lock no one is
    // writing state.json; elsewhere only old ones are taken.
    files::sweep_temps(rt.store.dir(), Duration::from_secs(600));
    files::sweep_temps(
        &rt.store.dir().join(crate::output::OUTBOX_DIR),
        Duration::from_secs(600),
    );
    settled
}

/// Stops the agent processes a dead runner left behind, if the recorded
/// process group is still that agent's (same boot, same start time: a
/// reused pid is left alone).
fn stop_orphans(tmp: &Path, job_path: &str, run_id: &str) {
    // The agent itself is found by its argv, which holds this run's own MCP
    // config path: that covers a runner killed before it could record the
    // agent's group.
    let mcp = tmp
        .join(format!("{run_id}{MCP_SUFFIX}"))
        .display()
        .to_string();
    for (pid, pgid) in sys::processes_with_arg(&mcp) {
        if pgid > 1 && pgid != std::process::id() {
            log::warn!(
                "{job_path}: stopping the agent {pid} of run {run_id}, left running by a runner that died"
            );
            let _ = sys::kill_group(pgid, sys::SIGKILL);
        }
    }
    // What it left in its group after it exited, from the record.
    let file = tmp.join(format!("{run_id}{AGENT_SUFFIX}"));
    let Ok(bytes) = fs::read(&file) else { return };
    let _ = fs::remove_file(&file);
    let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return;
    };
    let (Some(pgid), Some(start)) = (
        record["pgid"].as_u64().and_then(|p| u32::try_from(p).ok()),
        record["start"].as_u64(),
    ) else {
        return;
    };
    if record["boot_id"].as_str() != sys::boot_id().as_deref() {
        return;
    }
    if sys::proc_stat(pgid).is_some_and(|(_, s)| s != start) {
        return;
    }
    let members = sys::group_members(pgid);
    if !members.is_empty() {
        log::warn!(
            "{job_path}: stopping {} process(es) left running by the agent of run {run_id}",
            members.len()
        );
        let _ = sys::kill_group(pgid, sys::SIGKILL);
    }
}

/// The run ids still marked running.
pub fn running_ids(locked: &Locked) -> HashSet<String> {
    locked
        .state
        .jobs
        .values()
        .filter_map(|e| e.running.as_ref().map(|r| r.run_id.clone()))
        .collect()
}

fn remove_stale_run_files(tmp: &Path, live: &HashSet<String>) {
    let Ok(dir) = fs::read_dir(tmp) else { return };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // `<run_id>.mcp.json`, `<run_id>.agent.json`, or the temp files
        // they are written through, `.<run_id>.….tmp-<random>`. Run ids
        // (UUIDs) have no dot.
        let run_id = name
            .strip_prefix('.')
            .unwrap_or(name)
            .split('.')
            .next()
            .unwrap_or("");
        if !live.contains(run_id) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Recovery and outbox delivery, as every pass begins (SPEC §6.4, §7.4).
pub fn settle_and_deliver(rt: &Runtime) -> Result<output::Swept, StateError> {
    let mut locked = rt.store.lock()?;
    recover(rt, &mut locked);
    locked.commit()?;
    Ok(rt.outbox.sweep(rt.vault.as_ref(), || running_in(&rt.store)))
}

/// The run ids marked running in the state file now; `None` if it cannot
/// be read (then nothing is sent blind).
pub fn running_in(store: &Store) -> Option<HashSet<String>> {
    match store.read_checked() {
        Ok(state) => Some(
            state
                .jobs
                .values()
                .filter_map(|e| e.running.as_ref().map(|r| r.run_id.clone()))
                .collect(),
        ),
        Err(e) => {
            log::warn!("outbox: not delivering this time: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Zone;
    use crate::vault::Note;

    fn job(extra: &str, body: &str) -> Job {
        let note = Note {
            id: "id".into(),
            path: Some("jobs/daily-brief".into()),
            content: format!(
                "---\nschedule: daily\nmodel: m\nallowed_tools: Read\ntimezone: America/New_York\n{extra}---\n{body}"
            ),
            ..Note::default()
        };
        Job::from_note(&note, &Zone::utc()).unwrap()
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
        ] {
            let (info, prompt) = prepare(&job(extra, body), Trigger::Manual, None, now, None);
            assert!(prompt.unwrap_err().starts_with("template error: "));
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
            prompt.unwrap_err(),
            "template error: unknown variables {{bad}} in output_path, {{nope}} in prompt; \
             supported: date, time, datetime, yesterday, job_name, job_path, run_id"
        );
    }
}
