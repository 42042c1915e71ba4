//! Settling the runs of runners that died (SPEC §7.4): a `running` entry
//! whose job lock is free. If its note is already in the outbox the run
//! finished and only the record is missing; otherwise an `interrupted`
//! failure note is queued. The agent processes a dead runner left behind
//! are stopped, and run files no live run owns are removed.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::engine::Runtime;
use crate::files;
use crate::instant::until;
use crate::judge::{Cause, Ending, Failure, Meta};
use crate::note::{self, RunInfo};
use crate::os;
use crate::outbox::OUTBOX_DIR;
use crate::run;
use crate::state::{LastRun, Locked, StateError, Store};

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
                let ending = Ending::Failure(Failure::plain(
                    "interrupted: runner stopped before the run finished",
                    Cause::Interrupted,
                ));
                let meta = Meta {
                    exit_code: 130,
                    attempts: 1,
                    ..Meta::default()
                };
                let elapsed = until(running.started_at, now);
                let note = note::note(&info, ending, &meta, elapsed);
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
    files::sweep_temps(&rt.store.dir().join(OUTBOX_DIR), Duration::from_secs(600));
    settled
}

/// Stops the agent processes a dead runner left behind, if the recorded
/// process group is still that agent's (same boot, same start time: a
/// reused pid is left alone).
fn stop_orphans(tmp: &Path, job_path: &str, run_id: &str) {
    // The agent itself is found by its argv, which holds this run's own MCP
    // config path: that covers a runner killed before it could record the
    // agent's group.
    let mcp = run::mcp_config_path(tmp, run_id).display().to_string();
    for (pid, pgid) in os::processes_with_arg(&mcp) {
        if pgid > 1 && pgid != std::process::id() {
            log::warn!(
                "{job_path}: stopping the agent {pid} of run {run_id}, left running by a runner that died"
            );
            let _ = os::kill_group(pgid, os::SIGKILL);
        }
    }
    // What it left in its group after it exited, from the record.
    let file = run::agent_record_path(tmp, run_id);
    let Ok(bytes) = fs::read(&file) else { return };
    let _ = fs::remove_file(&file);
    let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return;
    };
    if let Some(cgroup) = record["cgroup"].as_str() {
        let killed = crate::contain::kill_leftover_cgroup(Path::new(cgroup));
        if killed > 0 {
            log::warn!(
                "{job_path}: stopped {killed} process(es) left in the cgroup of run {run_id}"
            );
        }
    }
    let (Some(pgid), Some(start)) = (
        record["pgid"].as_u64().and_then(|p| u32::try_from(p).ok()),
        record["start"].as_u64(),
    ) else {
        return;
    };
    if record["boot_id"].as_str() != os::boot_id().as_deref() {
        return;
    }
    if os::proc_stat(pgid).is_some_and(|(_, s)| s != start) {
        return;
    }
    let members = os::group_members(pgid);
    if !members.is_empty() {
        log::warn!(
            "{job_path}: stopping {} process(es) left running by the agent of run {run_id}",
            members.len()
        );
        let _ = os::kill_group(pgid, os::SIGKILL);
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

/// Recovery on its own, under the state lock (a manual run, which has no
/// pass around it).
pub fn settle(rt: &Runtime) -> Result<(), StateError> {
    let mut locked = rt.store.lock()?;
    recover(rt, &mut locked);
    locked.commit()
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
