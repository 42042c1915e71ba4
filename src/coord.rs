//! Several runners, one vault (SPEC §12): with `coordination: "vault"`
//! each job has a state note in the vault, `jobs/runs/.runner/<h>`, and the
//! vault's conditional update (`if_updated_at`) is the only lock between
//! hosts. A runner that wants slot S moves the note's `checked_through` to
//! S and writes its `claim` in one conditional PATCH; whoever wins the
//! PATCH runs the slot. The claimant keeps its claim alive with a lease it
//! renews; a claim whose lease ran out is taken over (by the same kind of
//! PATCH) and its run reported `interrupted`.
//!
//! Safety rests on one rule: the note of a claimed run is written only by
//! the claimant right after a conditional renewal succeeded, or by the
//! runner whose conditional takeover succeeded. Both are PATCHes of the
//! same note, so only one of them can win; a lease is not taken over
//! before `SKEW` after it ran out, which covers clocks that disagree by
//! less than that and a write already under way.
//!
//! The pure part (what the shared state means for a decision) takes its
//! inputs as arguments; `Coord` does the requests; `Lease` renews a claim
//! while its run goes on.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::agent::Canceller;
use crate::clock::Clock;
use crate::due::{CLOCK_SLACK, Plan, Trigger};
use crate::note::RunInfo;
use crate::outbox::Gate;
use crate::state::JobState;
use crate::vault::{Created, NewNote, Note, Patched, Vault, VaultError};

/// The tag of the state notes.
pub const STATE_TAG: &str = "job-state";
/// Where the state notes live (under `jobs/runs/`: listings skip them).
pub const STATE_DIR: &str = "jobs/runs/.runner";
/// How long a claim holds without renewal.
pub const LEASE: SignedDuration = SignedDuration::from_secs(60);
/// How often a claimant renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);
/// How long after its lease ran out a claim may be taken over: clocks of
/// the hosts may disagree by less than this.
pub const SKEW: SignedDuration = SignedDuration::from_secs(30);
/// A claimant that could not renew stops this long before its lease ends.
const GIVE_UP_BEFORE: SignedDuration = SignedDuration::from_secs(5);
/// Between renewals that failed.
const RENEW_RETRY: Duration = Duration::from_secs(5);
/// Conditional updates tried again after a conflict, before giving up.
const CONFLICT_TRIES: usize = 8;

/// The state note of the job at `job_path`: the first 16 hex digits of the
/// SHA-256 of its path.
pub fn state_path(job_path: &str) -> String {
    let digest = Sha256::digest(job_path.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{STATE_DIR}/{hex}")
}

/// A runner's claim of one slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub slot: Timestamp,
    pub run_id: String,
    pub host: String,
    pub lease_until: Timestamp,
    /// What the run's `interrupted` note needs, if it comes to that.
    pub started_at: Timestamp,
    pub output_path: String,
    pub job_id: String,
    pub model: String,
    pub trigger: Trigger,
    #[serde(default)]
    pub output_tags: Vec<String>,
    /// Set by the runner that took an expired claim over, while it reports
    /// the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_over_by: Option<String>,
}

impl Claim {
    /// Its lease ran out more than `SKEW` ago.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.lease_until
            .checked_add(SKEW)
            .is_ok_and(|until| now > until)
    }

    /// Whether `run_id` still holds it (not taken over).
    fn held_by(&self, run_id: &str) -> bool {
        self.run_id == run_id && self.taken_over_by.is_none()
    }

    /// The run it stands for, to report it.
    pub fn info(&self, job_path: &str) -> RunInfo {
        RunInfo {
            run_id: self.run_id.clone(),
            job_id: self.job_id.clone(),
            job_path: job_path.to_string(),
            model: self.model.clone(),
            trigger: self.trigger,
            slot: Some(self.slot),
            started_at: self.started_at,
            output_path: self.output_path.clone(),
            tags: if self.output_tags.is_empty() {
                vec![crate::job::RUN_TAG.to_string()]
            } else {
                self.output_tags.clone()
            },
        }
    }
}

/// One job's state note, as read.
#[derive(Clone, Debug, PartialEq)]
pub struct Shared {
    pub note_path: String,
    /// `updatedAt`, for the next conditional update.
    pub updated_at: String,
    pub job_path: String,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub checked_through: Option<Timestamp>,
    pub claim: Option<Claim>,
}

impl Shared {
    /// Reads a state note; `None` if it is not one (no `job_path`, no
    /// `updatedAt`). A damaged claim reads as none.
    pub fn from_note(note: &Note) -> Option<Shared> {
        let m = note.metadata.as_ref()?.as_object()?;
        let text = |k: &str| m.get(k).and_then(Value::as_str).map(String::from);
        Some(Shared {
            note_path: note.path_or_id().to_string(),
            updated_at: note.updated_at.clone()?,
            job_path: text("job_path")?,
            schedule: text("schedule"),
            timezone: text("timezone"),
            checked_through: text("checked_through").and_then(|t| t.parse().ok()),
            claim: m
                .get("claim")
                .filter(|c| !c.is_null())
                .and_then(|c| serde_json::from_value(c.clone()).ok()),
        })
    }
}

/// Takes what runners elsewhere handled into the local entry of a job
/// (before its due decision): a shared `checked_through` later than ours
/// wins, and a job any runner has seen is not new here. A shared state of
/// another schedule or zone, or far in the future (a clock ahead), is not
/// taken.
pub fn merge(entry: &mut Option<JobState>, shared: &Shared, plan: &Plan, now: Timestamp) {
    let (Some(schedule), Some(timezone), Some(ct)) =
        (&shared.schedule, &shared.timezone, shared.checked_through)
    else {
        return;
    };
    if *schedule != plan.schedule_text || *timezone != plan.zone.name {
        return;
    }
    if now.checked_add(CLOCK_SLACK).is_ok_and(|limit| ct > limit) {
        return;
    }
    match entry {
        None => {
            *entry = Some(JobState {
                schedule: schedule.clone(),
                timezone: timezone.clone(),
                checked_through: ct,
                last_run: None,
                running: None,
                note: None,
            });
        }
        Some(e) if e.schedule == *schedule && e.timezone == *timezone => {
            e.checked_through = e.checked_through.max(ct);
        }
        // Ours is of the note's older version: the shared one is current.
        Some(e) => {
            e.schedule = schedule.clone();
            e.timezone = timezone.clone();
            e.checked_through = ct;
        }
    }
}

/// Whether the shared state must learn a local decision that reset the
/// entry (a new job, a changed schedule, a clock that went back).
pub fn publish_needed(entry: &JobState, shared: Option<&Shared>) -> bool {
    shared.is_none_or(|s| {
        s.schedule.as_deref() != Some(entry.schedule.as_str())
            || s.timezone.as_deref() != Some(entry.timezone.as_str())
            || s.checked_through != Some(entry.checked_through)
    })
}

/// What claiming slot `slot` at `now` takes, given the shared state.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No state note yet: create it, with the claim.
    Create,
    /// Claim it; `orphan` is an expired claim to take over (and report)
    /// in the same update.
    Claim { orphan: Option<Claim> },
    /// Another runner handled this slot already.
    Handled(String),
    /// Another runner's run of the job goes on: skipped, as locally.
    Busy(String),
}

pub fn claim_step(shared: Option<&Shared>, slot: Timestamp, now: Timestamp) -> Step {
    let Some(s) = shared else {
        return Step::Create;
    };
    if s.checked_through.is_some_and(|ct| ct >= slot) {
        return Step::Handled(match &s.claim {
            Some(c) => format!("claimed by {}", c.host),
            None => "handled by another runner".to_string(),
        });
    }
    match &s.claim {
        Some(c) if !c.expired(now) => Step::Busy(format!(
            "still running on {}",
            c.taken_over_by.as_deref().unwrap_or(&c.host)
        )),
        Some(c) => Step::Claim {
            orphan: Some(c.clone()),
        },
        None => Step::Claim { orphan: None },
    }
}

/// How a claim attempt ended.
pub enum Claimed {
    /// The slot is ours.
    Won { lease: Lease },
    /// An expired claim holds the job: it must be taken over and its run
    /// reported first (`take_over`), then the slot claimed again.
    Orphan(Box<Shared>),
    /// Not ours: why (a skip line).
    Lost(String),
}

/// The requests of coordination, for one process.
#[derive(Clone)]
pub struct Coord {
    vault: Arc<dyn Vault>,
    clock: Clock,
    /// Who we are in claims: host name and pid.
    pub host: String,
}

impl Coord {
    pub fn new(vault: Arc<dyn Vault>, clock: Clock) -> Coord {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown-host".to_string());
        Coord {
            vault,
            clock,
            host: format!("{name}:{}", std::process::id()),
        }
    }

    /// Every state note, by job path.
    pub fn read_all(&self) -> Result<HashMap<String, Shared>, VaultError> {
        Ok(self
            .vault
            .list_index(STATE_TAG)?
            .iter()
            .filter_map(Shared::from_note)
            .filter(|s| s.note_path == state_path(&s.job_path))
            .map(|s| (s.job_path.clone(), s))
            .collect())
    }

    /// The state note of one job, read again.
    pub fn read(&self, job_path: &str) -> Result<Option<Shared>, VaultError> {
        Ok(self
            .vault
            .get_note(&state_path(job_path))?
            .as_ref()
            .and_then(Shared::from_note))
    }

    /// Makes the shared state say what a local decision reset (`entry`):
    /// best effort, another runner moving first is fine.
    pub fn publish(&self, job_path: &str, entry: &JobState, shared: Option<&Shared>) {
        let fields = json!({
            "job_path": job_path,
            "schedule": entry.schedule,
            "timezone": entry.timezone,
            "checked_through": format!("{:.3}", entry.checked_through),
        });
        let result = match shared {
            None => self.create(job_path, fields).map(|_| ()),
            Some(s) => self
                .vault
                .patch_metadata(&s.note_path, &object(fields), &s.updated_at)
                .map(|_| ()),
        };
        if let Err(e) = result {
            log::warn!("{job_path}: could not record its state in the vault: {e}");
        }
    }

    /// Creates the state note with `fields`; `Ok(false)` if another runner
    /// created it first.
    fn create(&self, job_path: &str, fields: Value) -> Result<bool, VaultError> {
        let note = NewNote {
            path: state_path(job_path),
            content: format!(
                "Scheduling state of {job_path}, kept by parachute-runner (coordination \"vault\"). Do not edit.\n"
            ),
            tags: vec![STATE_TAG.to_string()],
            metadata: object(fields),
        };
        Ok(matches!(self.vault.create_note(&note)?, Created::At(_)))
    }

    /// Claims `slot` for the run `info`, whose job has `schedule` in
    /// `timezone`; `shared` is the state note as last read.
    pub fn claim(
        &self,
        info: &RunInfo,
        slot: Timestamp,
        schedule: &str,
        timezone: &str,
        mut shared: Option<Shared>,
    ) -> Result<Claimed, VaultError> {
        let job_path = info.job_path.as_str();
        for _ in 0..CONFLICT_TRIES {
            let now = self.clock.now();
            let claim = Claim {
                slot,
                run_id: info.run_id.clone(),
                host: self.host.clone(),
                lease_until: lease_from(now),
                started_at: info.started_at,
                output_path: info.output_path.clone(),
                job_id: info.job_id.clone(),
                model: info.model.clone(),
                trigger: info.trigger,
                output_tags: info.tags.clone(),
                taken_over_by: None,
            };
            let fields = json!({
                "job_path": job_path,
                "schedule": schedule,
                "timezone": timezone,
                "checked_through": format!("{slot:.3}"),
                "claim": claim,
            });
            match claim_step(shared.as_ref(), slot, now) {
                Step::Handled(why) => return Ok(Claimed::Lost(why)),
                Step::Busy(why) => {
                    // The slot passes, as a locally running job's does.
                    if let Some(s) = &shared {
                        let ct = object(json!({ "checked_through": format!("{slot:.3}") }));
                        let _ = self.vault.patch_metadata(&s.note_path, &ct, &s.updated_at);
                    }
                    return Ok(Claimed::Lost(why));
                }
                Step::Create => {
                    if self.create(job_path, fields)? {
                        // Its `updatedAt`, for the renewals.
                        if let Some(s) = self.read(job_path)?
                            && s.claim.as_ref().is_some_and(|c| c.held_by(&info.run_id))
                        {
                            return Ok(Claimed::Won {
                                lease: Lease::new(self.clone(), job_path, claim, s.updated_at),
                            });
                        }
                    }
                    shared = self.read(job_path)?;
                }
                Step::Claim { orphan: Some(_) } => {
                    if let Some(s) = shared {
                        return Ok(Claimed::Orphan(Box::new(s)));
                    }
                }
                Step::Claim { orphan: None } => {
                    let s = shared.as_ref().map_or("", |s| s.updated_at.as_str());
                    match self
                        .vault
                        .patch_metadata(&state_path(job_path), &object(fields), s)?
                    {
                        Patched::Updated(note) => {
                            let updated_at = note.updated_at.unwrap_or_default();
                            return Ok(Claimed::Won {
                                lease: Lease::new(self.clone(), job_path, claim, updated_at),
                            });
                        }
                        Patched::Conflict | Patched::Missing => shared = self.read(job_path)?,
                    }
                }
            }
        }
        Ok(Claimed::Lost(
            "other runners kept changing its state note; left to them".to_string(),
        ))
    }

    /// Takes over the expired claim in `shared`: `Ok(Some((claim,
    /// updated_at)))` when this runner won and must now report the run,
    /// then `release` it.
    pub fn take_over(&self, shared: &Shared) -> Result<Option<(Claim, String)>, VaultError> {
        let mut current = shared.clone();
        for _ in 0..CONFLICT_TRIES {
            let now = self.clock.now();
            let Some(claim) = current.claim.clone().filter(|c| c.expired(now)) else {
                return Ok(None);
            };
            let mut taken = claim.clone();
            taken.taken_over_by = Some(self.host.clone());
            taken.lease_until = lease_from(now);
            let fields = object(json!({ "claim": taken }));
            match self
                .vault
                .patch_metadata(&current.note_path, &fields, &current.updated_at)?
            {
                Patched::Updated(note) => {
                    return Ok(Some((claim, note.updated_at.unwrap_or_default())));
                }
                Patched::Missing => return Ok(None),
                Patched::Conflict => match self.read(&shared.job_path)? {
                    Some(s) => current = s,
                    None => return Ok(None),
                },
            }
        }
        Ok(None)
    }

    /// Puts back an expired claim this runner took over but could not
    /// report (the vault did not answer): the next pass anywhere tries
    /// again at once instead of after this takeover's lease. Best effort.
    pub fn give_back(&self, job_path: &str, claim: &Claim, updated_at: &str) {
        let fields = object(json!({ "claim": claim }));
        if let Err(e) = self
            .vault
            .patch_metadata(&state_path(job_path), &fields, updated_at)
        {
            log::warn!(
                "{job_path}: could not give back the expired claim of run {}: {e}",
                claim.run_id
            );
        }
    }

    /// Renews the claim of run `run_id` of `job_path` right before its note
    /// is written: `Ok(Some(updated_at))` while it is still ours (the note
    /// may be written now), `Ok(None)` when it is not (the run was taken
    /// over: its note must not be written).
    pub fn confirm(&self, job_path: &str, run_id: &str) -> Result<Option<String>, VaultError> {
        for _ in 0..CONFLICT_TRIES {
            let Some(s) = self.read(job_path)? else {
                return Ok(None);
            };
            let Some(mut claim) = s.claim.clone().filter(|c| c.held_by(run_id)) else {
                return Ok(None);
            };
            claim.lease_until = lease_from(self.clock.now());
            let fields = object(json!({ "claim": claim }));
            match self
                .vault
                .patch_metadata(&s.note_path, &fields, &s.updated_at)?
            {
                Patched::Updated(note) => return Ok(Some(note.updated_at.unwrap_or_default())),
                Patched::Missing => return Ok(None),
                Patched::Conflict => {}
            }
        }
        Ok(None)
    }

    /// Clears the claim of run `run_id` once its note was accepted (best
    /// effort: a claim left behind expires, and the runner that takes it
    /// over finds the note and only clears it).
    pub fn release(&self, job_path: &str, run_id: &str, mut updated_at: String) {
        let path = state_path(job_path);
        for _ in 0..CONFLICT_TRIES {
            let fields = object(json!({ "claim": Value::Null }));
            match self.vault.patch_metadata(&path, &fields, &updated_at) {
                Ok(Patched::Updated(_) | Patched::Missing) => return,
                Ok(Patched::Conflict) => match self.read(job_path) {
                    Ok(Some(s))
                        if s.claim.as_ref().is_some_and(|c| {
                            c.run_id == run_id
                                && c.taken_over_by.as_deref().is_none_or(|h| h == self.host)
                        }) =>
                    {
                        updated_at = s.updated_at;
                    }
                    Ok(_) => return,
                    Err(e) => {
                        log::warn!("{job_path}: could not clear the claim of run {run_id}: {e}");
                        return;
                    }
                },
                Err(e) => {
                    log::warn!("{job_path}: could not clear the claim of run {run_id}: {e}");
                    return;
                }
            }
        }
    }
}

/// A claimed run's note goes out only while its claim is its own.
impl Gate for Coord {
    fn before(&self, job_path: &str, run_id: &str) -> Result<Option<String>, VaultError> {
        self.confirm(job_path, run_id)
    }

    fn after(&self, job_path: &str, run_id: &str, token: String) {
        self.release(job_path, run_id, token);
    }
}

fn lease_from(now: Timestamp) -> Timestamp {
    now.checked_add(LEASE).unwrap_or(now)
}

/// `value`'s object (our literals are objects).
fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A claim held while its run goes on: renewed every `RENEW_EVERY` on a
/// thread of its own. If it is taken over, or cannot be renewed before it
/// runs out, the lease is lost: the run's agent is stopped and its note
/// is not written (the runner that takes the claim over reports the run).
pub struct Lease {
    inner: Arc<LeaseInner>,
}

struct LeaseInner {
    coord: Coord,
    job_path: String,
    state: Mutex<LeaseState>,
    changed: Condvar,
}

struct LeaseState {
    claim: Claim,
    updated_at: String,
    /// Why the lease was lost.
    lost: Option<String>,
    /// The run's agent, while it runs.
    agent: Option<Canceller>,
    stopped: bool,
}

impl Lease {
    fn new(coord: Coord, job_path: &str, claim: Claim, updated_at: String) -> Lease {
        Lease {
            inner: Arc::new(LeaseInner {
                coord,
                job_path: job_path.to_string(),
                state: Mutex::new(LeaseState {
                    claim,
                    updated_at,
                    lost: None,
                    agent: None,
                    stopped: false,
                }),
                changed: Condvar::new(),
            }),
        }
    }

    /// Starts renewing. Without a thread (the OS refused one) the claim is
    /// not renewed: a run longer than the lease is then taken over, and
    /// its note is not written.
    pub fn start(&self) {
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("lease".to_string())
            .spawn(move || inner.renew_loop());
        if let Err(e) = spawned {
            log::warn!(
                "{}: cannot renew its claim (no thread: {e}); a run longer than {}s will be taken over",
                self.inner.job_path,
                LEASE.as_secs()
            );
        }
    }

    /// The run's agent started: a lost lease stops it.
    pub fn attach(&self, agent: Canceller) {
        let mut s = self.inner.lock();
        if let Some(why) = &s.lost {
            agent.cancel(why);
        }
        s.agent = Some(agent);
    }

    /// Why the lease was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        self.inner.lock().lost.clone()
    }

    /// Stops renewing (the run ended); the claim stays until `release`.
    pub fn stop(&self) {
        self.inner.lock().stopped = true;
        self.inner.changed.notify_all();
    }
}

/// The run's own note goes out while its lease holds: renewed from the
/// version the lease last wrote (no read first), cleared after.
impl Gate for Lease {
    fn before(&self, _job_path: &str, _run_id: &str) -> Result<Option<String>, VaultError> {
        if self.lost().is_some() {
            return Ok(None);
        }
        Ok(self
            .inner
            .renew()?
            .then(|| self.inner.lock().updated_at.clone()))
    }

    fn after(&self, job_path: &str, run_id: &str, token: String) {
        self.inner.coord.release(job_path, run_id, token);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop();
    }
}

impl LeaseInner {
    fn lock(&self) -> MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits `simulated` (of the runner's clock); `true` if stopped.
    fn wait(&self, simulated: Duration) -> bool {
        let real = self.coord.clock.real_duration(simulated);
        let deadline = std::time::Instant::now() + real;
        let mut s = self.lock();
        while !s.stopped {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }

    fn renew_loop(&self) {
        let mut failure: Option<VaultError> = None;
        loop {
            let pause = if failure.is_some() {
                RENEW_RETRY
            } else {
                RENEW_EVERY
            };
            if self.wait(pause) {
                return;
            }
            match self.renew() {
                Ok(true) => failure = None,
                Ok(false) => {
                    self.lose("its claim in the vault was taken over by another runner".into());
                    return;
                }
                Err(e) => {
                    let until = self.lock().claim.lease_until;
                    let give_up = until.checked_sub(GIVE_UP_BEFORE).unwrap_or(until);
                    if self.coord.clock.now() >= give_up {
                        self.lose(format!(
                            "could not renew its claim in the vault before it ran out ({e})"
                        ));
                        return;
                    }
                    log::warn!("{}: renewing its claim: {e}; trying again", self.job_path);
                    failure = Some(e);
                }
            }
        }
    }

    /// One conditional renewal; `Ok(false)` if the claim is no longer ours.
    fn renew(&self) -> Result<bool, VaultError> {
        for _ in 0..CONFLICT_TRIES {
            let (mut claim, updated_at) = {
                let s = self.lock();
                (s.claim.clone(), s.updated_at.clone())
            };
            claim.lease_until = lease_from(self.coord.clock.now());
            let fields = object(json!({ "claim": claim }));
            let path = state_path(&self.job_path);
            match self
                .coord
                .vault
                .patch_metadata(&path, &fields, &updated_at)?
            {
                Patched::Updated(note) => {
                    let mut s = self.lock();
                    s.claim = claim;
                    s.updated_at = note.updated_at.unwrap_or_default();
                    return Ok(true);
                }
                Patched::Missing => return Ok(false),
                // Someone else wrote the note (a runner moving
                // `checked_through` past a slot it skipped): still ours if
                // the claim is.
                Patched::Conflict => match self.coord.read(&self.job_path)? {
                    Some(now) if now.claim.as_ref().is_some_and(|c| c.held_by(&claim.run_id)) => {
                        self.lock().updated_at = now.updated_at;
                    }
                    _ => return Ok(false),
                },
            }
        }
        Ok(false)
    }

    fn lose(&self, why: String) {
        log::error!("{}: {why}; stopping its run", self.job_path);
        let mut s = self.lock();
        if let Some(agent) = &s.agent {
            agent.cancel(&why);
        }
        s.lost = Some(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instant::t;
    use crate::schedule::{Schedule, Zone};

    fn plan(schedule: &str) -> Plan {
        Plan {
            schedule: Schedule::parse(schedule).unwrap(),
            schedule_text: schedule.into(),
            zone: Zone::utc(),
            disabled: false,
            catch_up: true,
        }
    }

    fn shared(ct: Option<&str>, claim: Option<Claim>) -> Shared {
        Shared {
            note_path: state_path("jobs/x"),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            job_path: "jobs/x".into(),
            schedule: Some("* * * * *".into()),
            timezone: Some("UTC".into()),
            checked_through: ct.map(t),
            claim,
        }
    }

    fn claim(lease_until: &str) -> Claim {
        Claim {
            slot: t("2026-01-01T00:01:00Z"),
            run_id: "r1".into(),
            host: "a:1".into(),
            lease_until: t(lease_until),
            started_at: t("2026-01-01T00:01:00Z"),
            output_path: "jobs/runs/x/r1".into(),
            job_id: "id".into(),
            model: "m".into(),
            trigger: Trigger::Schedule,
            output_tags: vec!["job-run".into()],
            taken_over_by: None,
        }
    }

    #[test]
    fn state_paths_are_sixteen_hex_digits_of_the_sha256() {
        // printf 'jobs/daily-brief' | sha256sum
        assert_eq!(
            state_path("jobs/daily-brief"),
            "jobs/runs/.runner/9d21f03482feaa93"
        );
        assert_ne!(state_path("jobs/a"), state_path("jobs/b"));
    }

    #[test]
    fn a_job_seen_elsewhere_is_not_new_here() {
        let now = t("2026-01-01T00:05:30Z");
        let mut entry = None;
        merge(
            &mut entry,
            &shared(Some("2026-01-01T00:03:00Z"), None),
            &plan("* * * * *"),
            now,
        );
        assert_eq!(
            entry.as_ref().unwrap().checked_through,
            t("2026-01-01T00:03:00Z")
        );
        // A later local instant stays; a later shared one wins.
        merge(
            &mut entry,
            &shared(Some("2026-01-01T00:02:00Z"), None),
            &plan("* * * * *"),
            now,
        );
        assert_eq!(
            entry.as_ref().unwrap().checked_through,
            t("2026-01-01T00:03:00Z")
        );
        merge(
            &mut entry,
            &shared(Some("2026-01-01T00:04:00Z"), None),
            &plan("* * * * *"),
            now,
        );
        assert_eq!(
            entry.as_ref().unwrap().checked_through,
            t("2026-01-01T00:04:00Z")
        );
        // Another schedule, or an instant far ahead, is not taken.
        let mut other = None;
        merge(
            &mut other,
            &shared(Some("2026-01-01T00:03:00Z"), None),
            &plan("0 * * * *"),
            now,
        );
        assert!(other.is_none());
        merge(
            &mut other,
            &shared(Some("2026-01-02T00:00:00Z"), None),
            &plan("* * * * *"),
            now,
        );
        assert!(other.is_none());
    }

    #[test]
    fn claim_steps() {
        let slot = t("2026-01-01T00:02:00Z");
        let now = t("2026-01-01T00:02:10Z");
        assert_eq!(claim_step(None, slot, now), Step::Create);
        assert_eq!(
            claim_step(Some(&shared(Some("2026-01-01T00:01:00Z"), None)), slot, now),
            Step::Claim { orphan: None }
        );
        assert_eq!(
            claim_step(
                Some(&shared(
                    Some("2026-01-01T00:02:00Z"),
                    Some(claim("2026-01-01T00:03:00Z"))
                )),
                slot,
                now
            ),
            Step::Handled("claimed by a:1".into())
        );
        // A live claim of an earlier slot: busy; expired (past SKEW): taken over.
        let live = shared(
            Some("2026-01-01T00:01:00Z"),
            Some(claim("2026-01-01T00:01:50Z")),
        );
        assert_eq!(
            claim_step(Some(&live), slot, now),
            Step::Busy("still running on a:1".into())
        );
        let later = t("2026-01-01T00:02:21Z");
        assert_eq!(
            claim_step(Some(&live), slot, later),
            Step::Claim {
                orphan: Some(claim("2026-01-01T00:01:50Z"))
            }
        );
    }

    #[test]
    fn publishing_only_what_changed() {
        let s = shared(Some("2026-01-01T00:03:00Z"), None);
        let mut entry = JobState {
            schedule: "* * * * *".into(),
            timezone: "UTC".into(),
            checked_through: t("2026-01-01T00:03:00Z"),
            last_run: None,
            running: None,
            note: None,
        };
        assert!(!publish_needed(&entry, Some(&s)));
        assert!(publish_needed(&entry, None));
        entry.schedule = "0 * * * *".into();
        assert!(publish_needed(&entry, Some(&s)));
    }

    #[test]
    fn state_notes_read_back() {
        let note = Note {
            id: "n".into(),
            path: Some(state_path("jobs/x")),
            metadata: Some(json!({
                "job_path": "jobs/x", "schedule": "* * * * *", "timezone": "UTC",
                "checked_through": "2026-01-01T00:01:00.000Z",
                "claim": claim("2026-01-01T00:02:00Z"),
            })),
            updated_at: Some("2026-01-01T00:01:00.123Z".into()),
            ..Note::default()
        };
        let s = Shared::from_note(&note).unwrap();
        assert_eq!(s.claim, Some(claim("2026-01-01T00:02:00Z")));
        let mut broken = note.clone();
        broken.metadata = Some(json!({"job_path": "jobs/x", "claim": {"run_id": 3}}));
        assert_eq!(Shared::from_note(&broken).unwrap().claim, None);
        broken.updated_at = None;
        assert!(Shared::from_note(&broken).is_none());
    }
}
