//! Recording finished runs in state.json, several in one write when runs
//! end together (a group commit). Each caller returns once its own record
//! is written, so its job lock is released only after that (SPEC §7.3: a
//! `running` entry with a free job lock always means its runner died).

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

use crate::state::{LastRun, Store};

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
    failed: HashSet<u64>,
    /// Tickets handed out, and the last one written.
    issued: u64,
    done: u64,
    writing: bool,
}

impl Recorder {
    /// `false` if the write that carried this record failed.
    pub fn record(&self, store: &Store, job_path: String, last: LastRun) -> bool {
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
