//! One pass of the pipeline, for both drivers (`once`, `serve`): the
//! runtime a process shares, the decision over listed notes and the claim
//! of each due slot, and the claim of a run started by hand.
//!
//! The rule "each slot fires exactly once" lives here and only here: a
//! slot is decided under the state lock, claimed by taking the job's own
//! lock and recording `running`, and `checked_through` is committed before
//! any run starts. Running a claimed job is `run`'s; settling the runs of
//! dead runners is `recover`'s.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};

use crate::agent;
use crate::alert::{self, Notifier};
use crate::clock::Clock;
use crate::config::{Config, Coordination};
use crate::coord::pass::{Pending, Sharing, share, take_over_expired};
use crate::coord::{self, Coord};
use crate::due::{self, Decision, Plan, Policy, Trigger};
use crate::files;
use crate::health::Health;
use crate::job::{Job, JobError};
use crate::outbox::{Gate, Open, Outbox, Swept};
use crate::recorder::Recorder;
use crate::recover;
use crate::run::{self, Claimed};
use crate::schedule::Zone;
use crate::state::{JobState, Locked, Rejected, StateError, Store};
use crate::tools::PermissionMode;
use crate::vault::{self, Listing, Note, Vault};

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
    /// The zone of jobs that name none.
    pub default_zone: Zone,
    pub policy: Policy,
    /// What a job that names none of these gets.
    pub defaults: AgentDefaults,
    pub recorder: Arc<Recorder>,
    /// Where failure and recovery notices go.
    pub notifier: Notifier,
    /// Claims in the vault, when runners on several hosts share it
    /// (SPEC §12).
    pub coord: Option<Coord>,
}

/// The config's defaults for a job's agent (SPEC §3).
#[derive(Clone, Copy, Debug)]
pub struct AgentDefaults {
    pub permission_mode: PermissionMode,
    pub max_budget_usd: Option<f64>,
    pub retries: u32,
    pub retry_delay: Duration,
}

impl Runtime {
    /// The runtime for a configuration. `Err` (the reason) when a REST
    /// vault has no token.
    pub fn open(config: &Config) -> Result<Runtime, String> {
        let vault = vault::open(config, config.http)?;
        crate::contain::allow_cgroups(config.cgroups);
        let child_env = agent::child_env(&config.env);
        let notifier = Notifier {
            argv: config.notify.clone(),
            url: config.notify_url.clone(),
            interval: SignedDuration::try_from(config.notify_interval)
                .unwrap_or(SignedDuration::from_hours(1)),
            env: alert::notify_env(&child_env),
        };
        Ok(Runtime {
            store: Store::new(&config.paths.runner_dir),
            outbox: Outbox::new(&config.paths.runner_dir),
            claude_bin: resolve_program(&config.claude_bin),
            child_env,
            clock: config.clock,
            date_override: None,
            default_zone: config.timezone.clone(),
            policy: Policy::from(config),
            defaults: AgentDefaults {
                permission_mode: config.permission_mode,
                max_budget_usd: config.max_budget_usd,
                retries: config.retries,
                retry_delay: config.retry_delay,
            },
            recorder: Arc::new(Recorder::default()),
            notifier,
            coord: (config.coordination == Coordination::Vault)
                .then(|| Coord::new(Arc::clone(&vault), config.clock, config.env.get("HOSTNAME"))),
            vault,
        })
    }

    /// Where each run's private files (its MCP config) live.
    pub fn tmp_dir(&self) -> PathBuf {
        self.store.dir().join(run::TMP_DIR)
    }

    /// What lets a claimed run's note out (SPEC §12).
    pub fn gate(&self) -> &dyn Gate {
        match &self.coord {
            Some(coord) => coord,
            None => &Open,
        }
    }

    /// Delivers the outbox, oldest first (a no-op when it is empty). An
    /// entry of a run still marked running is left to that run.
    pub fn deliver_outbox(&self) -> Swept {
        let swept = self.outbox.sweep(
            self.vault.as_ref(),
            || recover::running_in(&self.store),
            self.gate(),
        );
        if swept.failed > 0 {
            log::warn!("outbox: {} output(s) still queued", swept.failed);
        }
        swept
    }
}

impl From<&Config> for Policy {
    fn from(config: &Config) -> Policy {
        Policy {
            poll_interval_seconds: config.poll_interval_seconds,
            globally_disabled: config.disabled,
        }
    }
}

/// A program named by a relative path (`bin/claude`) is made absolute
/// now: the agent may run in another directory (the directory vault's).
/// A bare name (`claude`) is left for the PATH lookup.
fn resolve_program(bin: &str) -> String {
    if bin.contains('/') {
        crate::config::absolute(std::path::Path::new(bin))
            .display()
            .to_string()
    } else {
        bin.to_string()
    }
}

/// Which notes a pass decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole listing: state entries of jobs no longer listed are
    /// dropped, and the runs of dead runners are settled first.
    All,
    /// Some jobs only (serve re-reading the due ones at fire time).
    Some,
}

/// What a pass did with one note that was not claimed.
#[derive(Debug)]
pub enum Verdict {
    /// Claimed: its run is in `Pass::claimed`.
    Claimed,
    Invalid(JobError),
    /// Not run, for a reason worth a line.
    Skipped(String),
    /// Not due, disabled, manual or new: nothing to say.
    Quiet(Decision),
}

/// One note as a pass saw it.
#[derive(Debug)]
pub struct Looked {
    pub path: String,
    /// What the decision was made from (`None` for an invalid note).
    pub plan: Option<Plan>,
    pub verdict: Verdict,
}

/// The outcome of a pass: the runs it claimed (their `running` entries are
/// committed, their job locks held) and what it found for every note.
pub struct Pass {
    pub claimed: Vec<Claimed>,
    pub looked: Vec<Looked>,
}

/// Decides `notes` at `now` and claims every due slot.
///
/// Notes are parsed outside the state lock: a first look under the lock
/// finds the notes whose plan is not remembered (new or changed) or that
/// look due (their job is needed); those are parsed with the lock
/// released, then the decision is made under the lock. A pass where
/// nothing changed and nothing is due takes the lock once.
pub fn claim_due(
    rt: &Runtime,
    listing: &Listing,
    now: Timestamp,
    scope: Scope,
) -> Result<Pass, StateError> {
    let notes = &listing.notes;
    let hashes: Vec<String> = notes
        .iter()
        .map(|n| due::note_hash(&n.content, n.metadata.as_ref(), &rt.default_zone.name))
        .collect();
    let mut zones = HashMap::new();
    let mut parsed: HashMap<usize, Result<Job, JobError>> = HashMap::new();
    // What runners elsewhere handled (SPEC §12), read before the lock.
    let shared = rt.coord.as_ref().map(Coord::read_all);
    if let Some(Err(e)) = &shared {
        log::warn!(
            "cannot read the runners' shared state in the vault: {e}; no slot is claimed this pass"
        );
    }
    let mut sharing = Sharing::default();
    files::ensure_reserve(rt.store.dir());
    let mut locked = rt.store.lock()?;
    // The notes to parse before deciding, outside the lock: changed ones,
    // and unchanged ones whose slot has come. The plans of the others are
    // kept for the loop below as long as the lock is not let go.
    let mut plans: Vec<Option<Plan>> = Vec::with_capacity(notes.len());
    // With each remembered plan, the decision on it and the entry's
    // `checked_through` after it: the loop below takes them as they are
    // when nothing else bears on the decision (no other runner's state, not
    // paused) and the lock was held throughout.
    let mut decided: Vec<Option<(Decision, Timestamp)>> = Vec::with_capacity(notes.len());
    let mut wanted = Vec::new();
    for (i, note) in notes.iter().enumerate() {
        let path = note.path_or_id();
        if rejected(&locked, path, &hashes[i]).is_some() {
            plans.push(None);
            decided.push(None);
            continue;
        }
        let entry = locked.state.jobs.get(path);
        let plan = entry.and_then(|e| Plan::remembered(e, &hashes[i], &mut zones));
        let decision = match (&plan, entry) {
            (Some(plan), Some(e)) => {
                // Only what the decision reads of the entry.
                let mut copy = Some(JobState {
                    schedule: e.schedule.clone(),
                    timezone: e.timezone.clone(),
                    checked_through: e.checked_through,
                    last_run: None,
                    running: None,
                    note: None,
                });
                let d = due::decide(plan, &mut copy, now, rt.policy);
                copy.map(|c| (d, c.checked_through))
            }
            _ => None,
        };
        if !matches!(decision, Some((ref d, _)) if !matches!(d, Decision::Run { .. })) {
            wanted.push(i);
        }
        plans.push(plan);
        decided.push(decision);
    }
    if !wanted.is_empty() {
        drop(locked);
        for i in wanted {
            parsed.insert(i, Job::from_note(&notes[i], &rt.default_zone));
        }
        locked = rt.store.lock()?;
        // Another runner may have written state meanwhile.
        plans.clear();
        decided.clear();
    }
    let mut notices = Vec::new();
    if scope == Scope::All {
        let listed: HashSet<&str> = notes
            .iter()
            .map(Note::path_or_id)
            .chain(listing.skipped.iter().map(|(p, _)| p.as_str()))
            .collect();
        // Entries of jobs that are gone (not while a run of theirs goes
        // on): a job created again later starts afresh instead of catching
        // up.
        locked
            .state
            .jobs
            .retain(|path, e| listed.contains(path.as_str()) || e.running.is_some());
        locked
            .state
            .invalid
            .retain(|path, _| listed.contains(path.as_str()));
        let jobs = &locked.state.jobs;
        locked
            .state
            .health
            .retain(|path, _| listed.contains(path.as_str()) || jobs.contains_key(path));
        notices = recover::recover(rt, &mut locked);
    }
    let mut pass = Pass {
        claimed: Vec::new(),
        looked: Vec::with_capacity(notes.len()),
    };
    for (i, note) in notes.iter().enumerate() {
        let path = note.path_or_id();
        // An unchanged invalid note: its problems, as last time.
        if let Some(problems) = rejected(&locked, path, &hashes[i]) {
            pass.looked.push(Looked {
                path: path.to_string(),
                plan: None,
                verdict: Verdict::Invalid(JobError {
                    path: path.to_string(),
                    problems,
                }),
            });
            continue;
        }
        let mut job = || {
            parsed
                .remove(&i)
                .unwrap_or_else(|| Job::from_note(note, &rt.default_zone))
        };
        let mut entry = locked.state.jobs.remove(path);
        let theirs = match &shared {
            Some(Ok(map)) => map.get(path),
            _ => None,
        };
        // An unchanged note is decided from what the last pass kept of it.
        let remembered = match plans.get_mut(i) {
            Some(plan) => plan.take(),
            None => entry
                .as_ref()
                .and_then(|e| Plan::remembered(e, &hashes[i], &mut zones)),
        };
        let (plan, mut parsed_job) = match remembered {
            Some(plan) => (plan, None),
            None => match job() {
                Ok(job) => (Plan::from(&job), Some(job)),
                Err(e) => {
                    if let Some(entry) = entry {
                        locked.state.jobs.insert(path.to_string(), entry);
                    }
                    locked.state.invalid.insert(
                        path.to_string(),
                        Rejected {
                            hash: hashes[i].clone(),
                            problems: e.problems.clone(),
                        },
                    );
                    pass.looked.push(Looked {
                        path: path.to_string(),
                        plan: None,
                        verdict: Verdict::Invalid(e),
                    });
                    continue;
                }
            },
        };
        locked.state.invalid.remove(path);
        locked
            .state
            .health
            .entry(path.to_string())
            .or_insert_with(|| Health::new(now));
        if let Some(theirs) = theirs {
            coord::merge(&mut entry, theirs, &plan, now);
        }
        let before = entry.as_ref().map(|e| e.checked_through);
        let paused = locked.state.paused.contains_key(path);
        let early = match decided.get_mut(i).and_then(Option::take) {
            Some((d, through)) if theirs.is_none() && !paused && d != Decision::New => {
                entry.as_mut().map(|e| {
                    e.checked_through = through;
                    d
                })
            }
            _ => None,
        };
        // A paused job is decided as a disabled one (its slots pass).
        let mut decision = if let Some(d) = early {
            d
        } else if paused {
            let mut paused = plan.clone();
            paused.disabled = true;
            due::decide(&paused, &mut entry, now, rt.policy)
        } else {
            due::decide(&plan, &mut entry, now, rt.policy)
        };
        let mut unclaimable = None;
        if let (Some(Err(e)), Decision::Run { .. }) = (&shared, &decision) {
            // No slot is claimed without the vault: this one stays due.
            if let (Some(entry), Some(before)) = (entry.as_mut(), before) {
                entry.checked_through = before;
            }
            unclaimable = Some(format!("cannot claim it in the vault: {e}"));
            decision = Decision::NotDue;
        }
        if let Some(mut entry) = entry {
            if let (Some(Ok(_)), Decision::New | Decision::ClockBack { .. }) = (&shared, &decision)
                && coord::publish_needed(&entry, theirs)
            {
                sharing
                    .publish
                    .push((path.to_string(), entry.clone(), theirs.cloned()));
            }
            entry.note = Some(plan.seen(hashes[i].clone()));
            locked.state.jobs.insert(path.to_string(), entry);
        }
        let verdict = match decision {
            _ if unclaimable.is_some() => Verdict::Skipped(unclaimable.unwrap_or_default()),
            Decision::Run { slot, trigger } => match parsed_job.take().map_or_else(job, Ok) {
                Ok(job) => {
                    let verdict =
                        claim_slot(rt, &mut locked, job, trigger, Some(slot), now, &mut pass);
                    if matches!(verdict, Verdict::Claimed) && shared.is_some() {
                        sharing.claims.push(Pending {
                            index: pass.claimed.len() - 1,
                            slot,
                            before,
                            theirs: theirs.cloned(),
                        });
                    }
                    verdict
                }
                Err(e) => Verdict::Invalid(e),
            },
            Decision::SkipLate { slot } => {
                Verdict::Skipped(format!("late slot {slot} skipped (catch_up: false)"))
            }
            Decision::ClockBack { was } => {
                log::warn!(
                    "{path}: checked through {was}, later than now ({now}): the clock went back; going on from its next slot"
                );
                Verdict::Quiet(decision)
            }
            other => Verdict::Quiet(other),
        };
        pass.looked.push(Looked {
            path: path.to_string(),
            plan: Some(plan),
            verdict,
        });
    }
    for (path, reason) in &listing.skipped {
        pass.looked.push(Looked {
            path: path.clone(),
            plan: None,
            verdict: Verdict::Invalid(JobError {
                path: path.clone(),
                problems: vec![reason.clone()],
            }),
        });
    }
    let committed = locked.commit();
    if scope == Scope::All {
        rt.store.record_pass(now);
    }
    if let Err(e) = committed {
        // Not committed: nothing may run (another runner could decide the
        // same slots). Dropping the claims releases their job locks.
        pass.claimed.clear();
        return Err(e);
    }
    for notice in notices {
        rt.notifier.send(notice);
    }
    if let (Some(coord), Some(Ok(map))) = (&rt.coord, &shared) {
        share(rt, coord, &mut pass, sharing);
        if scope == Scope::All {
            take_over_expired(rt, coord, map, &pass);
        }
    }
    Ok(pass)
}

/// The problems remembered for the note at `path`, if it was found invalid
/// as it is now (`hash`).
fn rejected(locked: &Locked, path: &str, hash: &str) -> Option<Vec<String>> {
    locked
        .state
        .invalid
        .get(path)
        .filter(|r| r.hash == hash)
        .map(|r| r.problems.clone())
}

/// Claims one run of `job` while the caller holds the state lock.
fn claim_slot(
    rt: &Runtime,
    locked: &mut Locked,
    job: Job,
    trigger: Trigger,
    slot: Option<Timestamp>,
    now: Timestamp,
    pass: &mut Pass,
) -> Verdict {
    let (info, prompt) = run::prepare(&job, trigger, slot, now, rt.date_override);
    let shared = rt.coord.is_some();
    match run::claim(&rt.store, locked, job, info, prompt, shared) {
        Ok(Some(claimed)) => {
            pass.claimed.push(claimed);
            Verdict::Claimed
        }
        Ok(None) => Verdict::Skipped("still running".to_string()),
        Err(e) => Verdict::Skipped(format!("cannot take its lock: {e}")),
    }
}

/// A run started by hand (`once --only`, run-now), whatever the schedule.
pub enum Manual {
    Claimed(Box<Claimed>),
    Invalid(JobError),
    /// The job is running already.
    Running,
}

/// Claims a run of the job in `note` now, for `trigger` (manual or http).
/// Takes no slot: the schedule is left as it is.
pub fn claim_now(rt: &Runtime, note: &Note, trigger: Trigger) -> Result<Manual, StateError> {
    let job = match Job::from_note(note, &rt.default_zone) {
        Ok(job) => job,
        Err(e) => return Ok(Manual::Invalid(e)),
    };
    let (info, prompt) = run::prepare(&job, trigger, None, rt.clock.now(), rt.date_override);
    files::ensure_reserve(rt.store.dir());
    let mut locked = rt.store.lock()?;
    let claimed = run::claim(&rt.store, &mut locked, job, info, prompt, false)?;
    locked.commit()?;
    Ok(claimed.map_or(Manual::Running, |c| Manual::Claimed(Box::new(c))))
}
