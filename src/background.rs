//! Work that must not hold a run up: pings and notices (SPEC §11). Each
//! task is a thread of its own, counted, so that `once` can wait for them
//! (within a bound) before it exits and `serve` before it stops. When the
//! OS refuses a thread, or too many tasks are in flight (an endpoint that
//! hangs while runs keep finishing), the task is dropped with a warning:
//! nothing about a run waits on it.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most tasks in flight at once.
const MAX_TASKS: usize = 64;

struct Tasks {
    count: Mutex<usize>,
    done: Condvar,
}

fn tasks() -> &'static Tasks {
    static TASKS: Tasks = Tasks {
        count: Mutex::new(0),
        done: Condvar::new(),
    };
    &TASKS
}

fn count() -> MutexGuard<'static, usize> {
    tasks().count.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ends a task's count when the task ends, however it ends.
struct Counted;

impl Drop for Counted {
    fn drop(&mut self) {
        let mut n = count();
        *n = n.saturating_sub(1);
        tasks().done.notify_all();
    }
}

/// Runs `work` on a thread of its own; `what` names it in the warning if it
/// cannot be started. Returns the thread's handle, to wait for it.
pub fn spawn<F>(what: &str, work: F) -> Option<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    {
        let mut n = count();
        if *n >= MAX_TASKS {
            log::warn!("{what}: not sent, {MAX_TASKS} pings and notices are still in flight");
            return None;
        }
        *n += 1;
    }
    let counted = Counted;
    let spawned = std::thread::Builder::new()
        .name("background".to_string())
        .spawn(move || {
            let _counted = counted;
            work();
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            // The closure, and the count with it, was dropped.
            log::warn!("{what}: not sent, no thread for it: {e}");
            None
        }
    }
}

/// Waits until no task is in flight, or `limit` passed. Returns how many
/// are left.
pub fn wait(limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut n = count();
    while *n > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        n = tasks()
            .done
            .wait_timeout(n, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    *n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn waits_for_tasks_to_end() {
        let (tx, rx) = mpsc::channel::<()>();
        let handle = spawn("test", move || {
            let _ = rx.recv();
        })
        .unwrap();
        assert!(wait(Duration::ZERO) >= 1);
        drop(tx);
        handle.join().unwrap();
        assert_eq!(wait(Duration::from_secs(60)), 0);
    }
}
