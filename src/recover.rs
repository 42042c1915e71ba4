//! Settling the runs of runners that died (SPEC §7.4): a `running` entry
//! whose job lock is free. If its note is already in the outbox the run
//! finished and only the record is missing; otherwise an `interrupted`
//! failure note is queued. The agent processes a dead runner left behind
//! are stopped, and run files no live run owns are removed.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::alert::{self, Message};
use crate::contain;
use crate::engine::Runtime;
use crate::files;
use crate::health::Health;
use crate::note::{self, RunInfo};
use crate::os;
use crate::outbox::OUTBOX_DIR;
use crate::run;
use crate::state::{LastRun, Locked, StateError, Store};
use crate::vault::{Vault, VaultError};

/// Settles the runs of dead runners (SPEC §7.4) while the caller holds the
/// state lock: a `running` entry whose job lock is free. If its note is
/// already in the outbox the run finished and only the record is missing;
/// otherwise an `interrupted` failure note is queued. Also removes MCP
/// config files no live run owns. Returns the notices the settled runs
/// call for, to send once the state is committed.
pub fn recover(rt: &Runtime, locked: &mut Locked) -> Vec<Message> {
    let now = rt.clock.now();
    let mut notices = Vec::new();
    let health = &mut locked.state.health;
    for (path, entry) in locked.state.jobs.iter_mut() {
        let Some(running) = entry.running.clone() else {
            continue;
        };
        match rt.store.try_lock_job(path) {
            Ok(Some(_lock)) if running.runner_alive() => {
                log::warn!(
                    "{path}: run {} holds no lock (was its lock file removed?) but its runner {} is alive; leaving it be",
                    running.run_id,
                    running.pid
                );
                continue;
            }
            Ok(Some(_lock)) => {}
            Ok(None) => continue,
            Err(e) => {
                log::warn!("{path}: cannot check its run {}: {e}", running.run_id);
                continue;
            }
        }
        stop_orphans(&rt.tmp_dir(), path, &running.run_id);
        // A slot claimed in the vault is reported by whoever takes the
        // claim over once its lease runs out (this runner too, on a later
        // pass): no note here, unless the run's own note is queued.
        if running.claimed && rt.outbox.read(&running.run_id).is_none() {
            log::warn!(
                "{path}: run {} was interrupted (its runner stopped); the runner that takes its claim over reports it",
                running.run_id
            );
            entry.running = None;
            continue;
        }
        let delivered = match rt.outbox.read(&running.run_id) {
            Some(_) => None,
            None => match delivered(rt.vault.as_ref(), &running.output_path, &running.run_id) {
                Ok(found) => found,
                Err(e) => {
                    // Not knowing whether its note is there, write none:
                    // a later pass asks again.
                    log::warn!(
                        "{path}: cannot tell whether run {} left a note ({e}); settling it later",
                        running.run_id
                    );
                    continue;
                }
            },
        };
        // What a notice of the run says: its note and its reason.
        let mut told: (String, Option<String>) = (String::new(), None);
        let status = match (rt.outbox.read(&running.run_id), delivered) {
            (Some(queued), _) => {
                let error = queued
                    .note
                    .metadata
                    .get("run_error")
                    .and_then(|v| v.as_str());
                told = (
                    alert::cut(&queued.note.content, alert::STDIN_CAP),
                    error.map(String::from),
                );
                queued.ok
            }
            (None, Some(ok)) => {
                log::warn!(
                    "{path}: run {} finished and its note is in the vault, but its record was missing; recorded it now",
                    running.run_id
                );
                ok
            }
            (None, None) => {
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
                let note = note::interrupted(&info, INTERRUPTED, now);
                told = (
                    alert::cut(&note.content, alert::STDIN_CAP),
                    Some(INTERRUPTED.to_string()),
                );
                if let Err(e) = rt.outbox.spool(path, false, &note, now, false) {
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
        let notice = health
            .entry(path.clone())
            .or_insert_with(|| Health::new(running.started_at))
            .outcome(
                status,
                running.slot.unwrap_or(running.started_at),
                now,
                rt.notifier.interval,
            );
        // A run settled here was not recorded when it ended, so its
        // notice (if any) was not decided then either.
        if let Some(notice) = notice {
            let (note, error) = told;
            notices.push(Message {
                reason: alert::reason(notice, error.as_deref()),
                notice,
                job_path: path.clone(),
                run_id: running.run_id.clone(),
                output_path: if status {
                    running.output_path.clone()
                } else {
                    format!("{}.failed", running.output_path)
                },
                cost_usd: None,
                note,
            });
        }
    }
    remove_stale_run_files(&rt.tmp_dir(), &running_ids(locked));
    // Half-written files of crashed writers. Under the state lock no one is
    // writing state.json; elsewhere only old ones are taken.
    files::sweep_temps(rt.store.dir(), Duration::from_secs(600));
    files::sweep_temps(&rt.store.dir().join(OUTBOX_DIR), Duration::from_secs(600));
    notices
}

/// The failure of a run whose runner died (SPEC §7.4).
const INTERRUPTED: &str = "interrupted: runner stopped before the run finished";

/// Stops the agent processes a dead runner left behind, if the recorded
/// process group is still that agent's (same boot, same start time: a
/// reused pid is left alone).
fn stop_orphans(tmp: &Path, job_path: &str, run_id: &str) {
    let file = run::agent_record_path(tmp, run_id);
    let record = files::read_capped(&file, 64 << 10)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let _ = fs::remove_file(&file);
    // The run's cgroup: exactly what the run started, found by the record
    // or by its name (a runner killed before it wrote the record).
    let cgroup = record
        .as_ref()
        .and_then(|r| r["cgroup"].as_str().map(PathBuf::from))
        .or_else(|| contain::cgroup_of(run_id));
    if let Some(dir) = cgroup {
        let killed = contain::kill_leftover_cgroup(&dir);
        if killed > 0 {
            log::warn!(
                "{job_path}: stopped {killed} process(es) of run {run_id} (its cgroup), left running by a runner that died"
            );
        }
    }
    // Its process group, from the record: only if it is still that
    // agent's (same boot; the leader, if alive, the one recorded), and only
    // the members born after the agent.
    let Some(record) = record else { return };
    let (Some(pgid), Some(start)) = (
        record["pgid"].as_u64().and_then(|p| u32::try_from(p).ok()),
        record["start"].as_u64(),
    ) else {
        return;
    };
    if pgid <= 1 || record["boot_id"].as_str() != os::boot_id().as_deref() {
        return;
    }
    if os::process(pgid).is_some_and(|p| p.start != start) {
        return;
    }
    let members: Vec<os::Process> = os::processes()
        .into_iter()
        .filter(|p| p.pgid == pgid && !p.zombie && p.start >= start)
        .collect();
    if !members.is_empty() {
        log::warn!(
            "{job_path}: stopping {} process(es) left running by the agent of run {run_id}",
            members.len()
        );
        for p in members {
            let _ = os::kill_pid(p.pid, os::SIGKILL);
        }
    }
}

/// Whether the vault already holds the note of a run whose record is
/// missing (delivered straight, then state.json could not be written):
/// `Some(ok)` when it does. A second note for the slot must not follow.
pub fn delivered(
    vault: &dyn Vault,
    output_path: &str,
    run_id: &str,
) -> Result<Option<bool>, VaultError> {
    let prefix: String = run_id.chars().take(8).collect();
    let failed = format!("{output_path}.failed");
    for (path, ok) in [(output_path, true), (failed.as_str(), false)] {
        let Some(note) = vault.get_note(path)? else {
            continue;
        };
        if note.run_id() == Some(run_id) {
            return Ok(Some(ok));
        }
        // Taken by another note: this run's went to the suffixed path.
        let suffixed = format!("{path}-{prefix}");
        if vault
            .get_note(&suffixed)?
            .is_some_and(|n| n.run_id() == Some(run_id))
        {
            return Ok(Some(ok));
        }
    }
    Ok(None)
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
    let notices = recover(rt, &mut locked);
    locked.commit()?;
    for notice in notices {
        rt.notifier.send(notice);
    }
    Ok(())
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
