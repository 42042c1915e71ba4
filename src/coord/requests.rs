//! The requests of coordination (SPEC §12): reading the state notes,
//! publishing a decision, claiming a slot, taking an expired claim over,
//! confirming and clearing a claim. Each is a conditional update, tried
//! again on a conflict from a fresh read.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{
    CONFLICT_TRIES, Claim, Claimed, LEASE, Lease, STATE_TAG, Shared, Step, claim_step, state_path,
};
use crate::clock::Clock;
use crate::note::RunInfo;
use crate::outbox::Gate;
use crate::state::JobState;
use crate::vault::{Created, NewNote, Patched, Vault, VaultError};

/// The requests of coordination, for one process.
#[derive(Clone)]
pub struct Coord {
    pub(super) vault: Arc<dyn Vault>,
    pub(super) clock: Clock,
    /// Who we are in claims: host name and pid.
    pub host: String,
}

impl Coord {
    /// `hostname_var`: `HOSTNAME` from the environment, used when the
    /// kernel's host name cannot be read.
    pub fn new(vault: Arc<dyn Vault>, clock: Clock, hostname_var: Option<&str>) -> Coord {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| hostname_var.map(String::from))
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

pub(super) fn lease_from(now: Timestamp) -> Timestamp {
    now.checked_add(LEASE).unwrap_or(now)
}

/// `value`'s object (our literals are objects).
pub(super) fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
