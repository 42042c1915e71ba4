//! The runs a `serve` has going on: a worker thread per claimed run, the
//! `max_concurrent_jobs` permits they wait for, and the drain at shutdown
//! (SPEC §9.1: wait up to `--shutdown-timeout`, then the kill sequence,
//! `interrupted: runner shutting down` notes).

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::{Daemon, Live};
use crate::agent::{Canceller, KILL_GRACE};
use crate::engine::Runtime;
use crate::run::{self, Claimed, Report};

/// What a mutex slot holds, taken out (a poisoned lock still gives it).
fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// Why runs still going at shutdown end.
const SHUTTING_DOWN: &str = "runner shutting down";

/// How a run of `serve` tells the daemon that its agent runs, and waits
/// between attempts without holding a concurrency slot.
struct ServeHooks<'a> {
    daemon: &'a Daemon,
    run_id: &'a str,
}

impl run::Hooks for ServeHooks<'_> {
    fn started(&self, cancel: Canceller) {
        self.daemon.started_run(self.run_id, cancel);
    }

    fn wait_to_retry(&self, delay: Duration) -> Result<(), String> {
        if self.daemon.wait_to_retry(self.run_id, delay) {
            Ok(())
        } else {
            Err(SHUTTING_DOWN.to_string())
        }
    }
}

impl Daemon {
    /// Counts a claimed run as live (waiting for a permit until it starts),
    /// for shutdown and `/metrics`.
    pub(super) fn track(&self, claimed: &Claimed) {
        self.live().insert(
            claimed.info.run_id.clone(),
            Live {
                job_path: claimed.job.path.clone(),
                cancel: None,
            },
        );
    }

    /// Starts a worker thread for a claimed run. When the OS refuses a
    /// thread (a task limit) the run is recorded as failed at once: it was
    /// claimed, so it must end with a note, and the scheduler must not
    /// wait for a permit or for the agent itself.
    pub fn spawn_worker(self: &Arc<Self>, rt: Runtime, claimed: Claimed) {
        self.track(&claimed);
        let slot = Arc::new(std::sync::Mutex::new(Some((rt, claimed))));
        let (daemon, slot2) = (Arc::clone(self), Arc::clone(&slot));
        let spawned = std::thread::Builder::new()
            .name("run".into())
            .spawn(move || {
                if let Some((rt, claimed)) = take(&slot2) {
                    daemon.work(&rt, claimed);
                }
            });
        if let Err(e) = spawned
            && let Some((rt, claimed)) = take(&slot)
        {
            let run_id = claimed.info.run_id.clone();
            let report = run::abandon(
                &rt,
                claimed,
                &format!("could not start a thread for the run: {e}"),
            );
            log::error!(
                "{}: failed ({}): {}",
                report.job_path,
                report.trigger,
                report.error.as_deref().unwrap_or_default()
            );
            self.metrics.run_finished(&report);
            self.live().remove(&run_id);
            self.run_ended.notify_all();
        }
    }

    /// One run: wait for a permit, run, record, free the permit.
    pub fn work(self: &Arc<Self>, rt: &Runtime, claimed: Claimed) -> Report {
        let run_id = claimed.info.run_id.clone();
        let report = if self.acquire_permit(&run_id) {
            let hooks = ServeHooks {
                daemon: self,
                run_id: &run_id,
            };
            run::execute(rt, claimed, &hooks)
        } else {
            run::abandon(rt, claimed, SHUTTING_DOWN)
        };
        let line = report.line(rt.vault.as_ref());
        if report.ok {
            log::info!("{line}");
        } else {
            log::warn!("{line}");
        }
        self.metrics.run_finished(&report);
        {
            let mut live = self.live();
            live.remove(&run_id);
        }
        self.run_ended.notify_all();
        report
    }

    /// Waits until fewer than `max_concurrent_jobs` runs are going on, then
    /// counts this one as going on. `false` if shutting down meanwhile.
    fn acquire_permit(&self, run_id: &str) -> bool {
        let mut live = self.live();
        loop {
            if self.stopping() {
                return false;
            }
            let limit = self.shared().config.max_concurrent_jobs;
            let active = live.values().filter(|l| l.cancel.is_some()).count();
            if active < limit {
                if let Some(l) = live.get_mut(run_id) {
                    // Holds the slot until `started_run` gives the real
                    // canceller (a no-op one meanwhile).
                    l.cancel = Some(Canceller::none());
                }
                return true;
            }
            live = self.run_ended.wait(live).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn started_run(&self, run_id: &str, cancel: Canceller) {
        if let Some(l) = self.live().get_mut(run_id) {
            l.cancel = Some(cancel);
        }
    }

    /// Gives the run's permit back while it waits `delay` for its next
    /// attempt, then waits for a permit again. `false` when shutting down.
    fn wait_to_retry(&self, run_id: &str, delay: Duration) -> bool {
        {
            let mut live = self.live();
            if let Some(l) = live.get_mut(run_id) {
                l.cancel = None;
            }
            self.run_ended.notify_all();
            drop(self.wait_ended(live, Instant::now() + delay, |_| self.stopping()));
        }
        self.acquire_permit(run_id)
    }

    /// Waits for runs to end until `done` says so or `deadline` passes.
    fn wait_ended<'a>(
        &self,
        mut live: MutexGuard<'a, HashMap<String, Live>>,
        deadline: Instant,
        done: impl Fn(&HashMap<String, Live>) -> bool,
    ) -> MutexGuard<'a, HashMap<String, Live>> {
        while !done(&live) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            live = self
                .run_ended
                .wait_timeout(live, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        live
    }

    /// Shutdown (SPEC §9.1): no new runs; wait up to `timeout` for the
    /// running ones, then stop the rest with the kill sequence; their notes
    /// say `interrupted: runner shutting down`.
    pub(super) fn drain(&self, timeout: Duration) {
        self.begin_stop();
        let deadline = Instant::now() + timeout;
        let mut live = self.wait_ended(self.live(), deadline, HashMap::is_empty);
        if !live.is_empty() {
            log::warn!(
                "stopping {} run(s) still going after {}s",
                live.len(),
                timeout.as_secs()
            );
            for l in live.values() {
                log::info!("{}: stopping its run", l.job_path);
            }
            // The kill sequence takes up to KILL_GRACE; then the note is
            // spooled and recorded. Delivery may still retry: the note is
            // safe in the outbox whatever happens after. Cancels are sent
            // again each second, for a run whose agent was only starting.
            let deadline = Instant::now() + KILL_GRACE + Duration::from_secs(15);
            while !live.is_empty() {
                for c in live.values().filter_map(|l| l.cancel.as_ref()) {
                    c.cancel(SHUTTING_DOWN);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    log::warn!(
                        "{} run(s) did not finish recording; the next start settles them",
                        live.len()
                    );
                    break;
                }
                live = self
                    .run_ended
                    .wait_timeout(live, left.min(Duration::from_secs(1)))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
    }
}
