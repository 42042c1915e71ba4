//! Recording finished runs in state.json, several in one write when runs
//! end together (a group commit). Each caller returns once its own record
//! is written, so its job lock is released only after that (SPEC §7.3: a
//! `running` entry with a free job lock always means its runner died).
//! The same write updates the job's health (SPEC §11) and says which
//! notice, if any, the run calls for.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use jiff::{SignedDuration, Timestamp};

use crate::health::{Health, Notice};
use crate::state::{LastRun, State, Store};

/// A finished run to record.
#[derive(Clone, Debug)]
pub struct Finished {
    pub job_path: String,
    pub last: LastRun,
    /// Its slot, or its start for a run by hand: what a success counts for.
    pub at: Timestamp,
    /// The least time between two failure notices of one job.
    pub notify_interval: SignedDuration,
}

/// What recording a run gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// `false` if the write that carried the record failed.
    pub written: bool,
    /// The notice the run calls for (decided even if the write failed).
    pub notice: Option<Notice>,
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
    pending: Vec<(u64, Finished)>,
    /// Written tickets, with what their write gave, until their caller
    /// has seen it.
    results: HashMap<u64, Recorded>,
    /// Tickets handed out, and the last one written.
    issued: u64,
    done: u64,
    writing: bool,
}

impl Recorder {
    pub fn record(&self, store: &Store, finished: Finished) -> Recorded {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.issued += 1;
        let ticket = q.issued;
        q.pending.push((ticket, finished));
        loop {
            if q.done >= ticket {
                return q.results.remove(&ticket).unwrap_or(Recorded {
                    written: false,
                    notice: None,
                });
            }
            if q.writing {
                q = self.written.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            q.writing = true;
            let batch = std::mem::take(&mut q.pending);
            let upto = q.issued;
            drop(q);
            let results = write_outcomes(store, &batch);
            q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.results.extend(results);
            q.done = upto;
            q.writing = false;
            self.written.notify_all();
        }
    }
}

/// Records one finished run in `state` (under the caller's lock) and
/// returns the notice it calls for.
pub fn apply(state: &mut State, f: &Finished) -> Option<Notice> {
    if let Some(entry) = state.jobs.get_mut(&f.job_path) {
        if entry
            .running
            .as_ref()
            .is_some_and(|r| r.run_id == f.last.run_id)
        {
            entry.running = None;
        }
        entry.last_run = Some(f.last.clone());
    }
    let now = f.last.finished_at;
    state
        .health
        .entry(f.job_path.clone())
        .or_insert_with(|| Health::new(f.last.started_at))
        .outcome(f.last.status == "ok", f.at, now, f.notify_interval)
}

fn write_outcomes(store: &Store, batch: &[(u64, Finished)]) -> Vec<(u64, Recorded)> {
    let result = store.lock().and_then(|mut locked| {
        let notices: Vec<Option<Notice>> = batch
            .iter()
            .map(|(_, f)| apply(&mut locked.state, f))
            .collect();
        locked.commit().map(|()| notices)
    });
    match result {
        Ok(notices) => batch
            .iter()
            .zip(notices)
            .map(|((ticket, _), notice)| {
                (
                    *ticket,
                    Recorded {
                        written: true,
                        notice,
                    },
                )
            })
            .collect(),
        Err(e) => {
            // The notes stay queued; the next pass sees `running` entries
            // with free locks, finds the notes in the outbox and settles
            // them. A failure is still told: better twice than never.
            batch
                .iter()
                .map(|(ticket, f)| {
                    log::error!(
                        "{}: could not record run {}: {e}",
                        f.job_path,
                        f.last.run_id
                    );
                    let notice = (f.last.status != "ok").then_some(Notice::Failed);
                    (
                        *ticket,
                        Recorded {
                            written: false,
                            notice,
                        },
                    )
                })
                .collect()
        }
    }
}
