//! A claim kept alive while its run goes on (SPEC §12): renewed on a
//! thread of its own; lost when taken over or not renewed in time, which
//! stops the run's agent.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;

use super::CONFLICT_TRIES;
use super::requests::{lease_from, object};
use super::{Claim, Coord, GIVE_UP_BEFORE, LEASE, RENEW_EVERY, RENEW_RETRY, state_path};
use crate::agent::Canceller;
use crate::outbox::Gate;
use crate::vault::{Patched, VaultError};

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
    pub(super) fn new(coord: Coord, job_path: &str, claim: Claim, updated_at: String) -> Lease {
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
