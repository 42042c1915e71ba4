//! `serve` (SPEC §9.1): the scheduling loop for containers, beside the HTTP
//! admin API (`admin_api`). Plain threads: one scheduler that sleeps on a
//! `Condvar` until the earliest slot or the next poll, a worker thread per
//! run bounded by `max_concurrent_jobs` permits, the HTTP server (`http`:
//! an accept thread and a thread per connection, capped), and a signal
//! thread for graceful shutdown.
//!
//! Deciding and claiming is the engine's, as for `once`, with the same
//! state, locks and outbox, so the two can run side by side (by mistake)
//! without a slot firing twice.
//!
//! Long (about 700 lines): the start-up (signals, the HTTP server, the
//! admin token, the first pass) and the scheduling loop, which share the
//! `Daemon`; the admin routes' side is in `admin`, the runs in `runs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::agent::Canceller;
use crate::auth::Auth;
use crate::cli::ServeArgs;
use crate::clock::Clock;
use crate::config::{self, Config, Env, Overrides};
use crate::due::Plan;
use crate::engine::{self, Runtime, Scope, Verdict};
use crate::error::Error;
use crate::health;
use crate::instant::until;
use crate::job::Job;
use crate::metrics::{Gauges, Metrics};
use crate::run::Claimed;
use crate::vault::{Listing, Note};
use crate::{EXIT_OK, admin_api, auth, http, os, registration};

mod admin;
mod runs;

pub use admin::RunNowError;

/// One job of the table: its note as last read, the plan decided from it
/// (or its problems) and its next slot.
#[derive(Clone, Debug)]
pub struct TableEntry {
    pub note: Note,
    pub plan: Result<Plan, String>,
    /// Its next slot after the last evaluation (none: manual, disabled,
    /// invalid).
    pub next: Option<Timestamp>,
}

/// Everything the scheduler and the HTTP handlers share, behind one lock.
pub struct Shared {
    pub config: Config,
    /// `None` while there is no token (cleared, never set): paused.
    pub rt: Option<Runtime>,
    /// Set by clear-credential until a new token is stored.
    pub paused: bool,
    pub table: BTreeMap<String, TableEntry>,
    pub last_tick: Option<Timestamp>,
    pub last_poll: Option<(Timestamp, bool)>,
    next_poll: Instant,
}

impl Shared {
    /// The runtime to reach the vault with; `None` while paused or without
    /// a token.
    pub fn active_rt(&self) -> Option<Runtime> {
        if self.paused { None } else { self.rt.clone() }
    }
}

/// A run going on, for shutdown and `/metrics`.
struct Live {
    job_path: String,
    cancel: Option<Canceller>,
}

pub struct Daemon {
    env: Env,
    overrides: Overrides,
    shared: Mutex<Shared>,
    /// Wakes the scheduler: config change, shutdown, a finished run.
    wake: Condvar,
    live: Mutex<HashMap<String, Live>>,
    /// Signalled when a run ends (permits freed, live shrank).
    run_ended: Condvar,
    pub metrics: Metrics,
    pub auth: Auth,
    started: Instant,
    stopping: AtomicBool,
    clock: Clock,
    /// Serializes config.json updates (PUT config, clear-credential).
    config_lock: Mutex<()>,
}

/// Entry point: `parachute-runner serve`.
///
/// Three threads beside this one: the scheduler, the HTTP accept loop
/// (`http`) and a signal watcher. The API starts answering once the
/// scheduler's first pass is done (at most 5 s after it began): until
/// then connections wait in the listen backlog. This thread then waits
/// for one of them to end. A signal stops the scheduler, runs are drained, exit 0. The
/// scheduler or the HTTP server ending any other way (a panic) stops
/// everything and is a fatal error (exit 2), so that a supervisor
/// (`Restart=on-failure`) starts a whole `serve` again instead of keeping a
/// half-dead one.
pub fn run(args: &ServeArgs, env: &Env) -> Result<u8, Error> {
    let overrides = Overrides {
        config: args.common.config.clone(),
        vault_dir: args.common.vault_dir.clone(),
        poll_interval: args.poll_interval,
        read_only: false,
    };
    let config = config::load(env, &overrides)?;
    let crash = config::crash_hook(env).map_err(|p| Error::Fatal(p.to_string()))?;
    os::raise_fd_limit();
    let runner_dir = config.paths.runner_dir.clone();
    let (admin_token, created) = auth::admin_token(&runner_dir).map_err(Error::Fatal)?;
    let daemon = Arc::new(Daemon::new(config, env.clone(), overrides));
    daemon.auth.allow_local_admin(&admin_token);
    drop(admin_token);
    log::info!(
        "local admin token {} {}: send it as Authorization: Bearer <token>",
        if created { "created in" } else { "in" },
        runner_dir.join(auth::ADMIN_TOKEN_FILE).display()
    );

    let limits = http::Limits::for_process();
    let server = http::Server::bind(&args.host, args.port, limits)
        .map_err(|e| Error::Fatal(format!("cannot listen on {}:{}: {e}", args.host, args.port)))?;
    let bound = server.local_addr().port();
    daemon.register_service(bound);
    let host = if args.host.contains(':') {
        format!("[{}]", args.host)
    } else {
        args.host.clone()
    };
    let max_connections = server.limits().max_connections;
    let stopper = server.stopper();

    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| Error::Fatal(format!("cannot handle signals: {e}")))?;
    let signal_handle = signals.handle();
    let (ended_tx, ended) = mpsc::channel();
    let scheduler = match start_scheduler(&daemon, signals, &ended_tx, crash) {
        Ok(scheduler) => scheduler,
        Err(e) => {
            signal_handle.close();
            return Err(e);
        }
    };
    // Connections wait in the backlog meanwhile: the first answers then
    // already know the jobs.
    await_first_pass(&daemon, &scheduler);
    if let Err(e) = start_http(&daemon, server, &ended_tx, crash) {
        daemon.begin_stop();
        let _ = scheduler.join();
        daemon.drain(args.shutdown_timeout);
        signal_handle.close();
        return Err(e);
    }
    drop(ended_tx);
    log::info!("admin API: at most {max_connections} connections at once");
    log::info!("serving the admin API on http://{host}:{bound}");

    let mut failure: Option<String> = None;
    for which in &ended {
        match which {
            Ended::Signal => {}
            Ended::Scheduler => break,
            Ended::Http => {
                if !daemon.stopping() {
                    log::error!("the admin API's HTTP server stopped: stopping serve");
                    failure = Some("the admin API's HTTP server stopped unexpectedly".to_string());
                    daemon.begin_stop();
                }
            }
        }
    }
    match scheduler.join() {
        Err(panic) => {
            let why = panic_message(panic.as_ref());
            log::error!("the scheduler thread died ({why}): stopping serve");
            failure.get_or_insert(format!("the scheduler thread died: {why}"));
        }
        Ok(()) if !daemon.stopping() => {
            failure.get_or_insert("the scheduler stopped unexpectedly".to_string());
        }
        Ok(()) => {}
    }
    daemon.drain(args.shutdown_timeout);
    crate::alert::drain(crate::alert::DRAIN_LIMIT_STOPPING);
    stopper.stop();
    signal_handle.close();
    match failure {
        Some(why) => Err(Error::Fatal(format!(
            "{why}; exiting so that a supervisor starts serve again"
        ))),
        None => {
            log::info!("stopped");
            Ok(EXIT_OK)
        }
    }
}

/// Which of `serve`'s threads ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Signal,
    Scheduler,
    Http,
}

/// Says that its thread ended when dropped: at its end, or as a panic
/// unwinds it.
struct Notify(mpsc::Sender<Ended>, Ended);

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| Error::Fatal(format!("cannot start the {name} thread: {e}")))
}

/// Starts the signal watcher and the scheduler; returns the scheduler's
/// handle. A thread the OS refuses is a fatal error.
fn start_scheduler(
    daemon: &Arc<Daemon>,
    mut signals: signal_hook::iterator::Signals,
    ended: &mpsc::Sender<Ended>,
    crash: Option<config::Crash>,
) -> Result<std::thread::JoinHandle<()>, Error> {
    {
        let daemon = Arc::clone(daemon);
        let notify = Notify(ended.clone(), Ended::Signal);
        spawn("signals", move || {
            let _notify = notify;
            if let Some(sig) = signals.forever().next() {
                // The API keeps answering while runs drain.
                log::info!("received signal {sig}: shutting down");
                daemon.begin_stop();
            }
        })?;
    }
    let daemon = Arc::clone(daemon);
    let notify = Notify(ended.clone(), Ended::Scheduler);
    spawn("scheduler", move || {
        let _notify = notify;
        if crash == Some(config::Crash::Scheduler) {
            panic!("test hook PARACHUTE_RUNNER_TEST_CRASH=scheduler: the scheduler dies");
        }
        daemon.schedule_loop();
    })
}

/// How long the API waits at start for the scheduler's first pass.
const FIRST_PASS_WAIT: Duration = Duration::from_secs(5);

/// Waits until the scheduler's first pass (poll and decisions) is done —
/// it sets the tick — or `FIRST_PASS_WAIT` passed (a slow vault), or the
/// scheduler ended, or serve is stopping.
fn await_first_pass(daemon: &Daemon, scheduler: &std::thread::JoinHandle<()>) {
    let deadline = Instant::now() + FIRST_PASS_WAIT;
    while Instant::now() < deadline
        && daemon.shared().last_tick.is_none()
        && !scheduler.is_finished()
        && !daemon.stopping()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts the HTTP accept loop.
fn start_http(
    daemon: &Arc<Daemon>,
    server: http::Server,
    ended: &mpsc::Sender<Ended>,
    crash: Option<config::Crash>,
) -> Result<(), Error> {
    let handler = admin_api::handler(Arc::clone(daemon));
    let notify = Notify(ended.clone(), Ended::Http);
    spawn("http-accept", move || {
        let _notify = notify;
        if crash == Some(config::Crash::Http) {
            panic!("test hook PARACHUTE_RUNNER_TEST_CRASH=http: the HTTP server dies");
        }
        server.run(handler);
    })
    .map(|_| ())
}

/// The message of a panic, for the log.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

impl Daemon {
    pub fn new(mut config: Config, env: Env, overrides: Overrides) -> Daemon {
        if let Clock::Fixed(_) = config.clock {
            log::warn!(
                "serve ignores PARACHUTE_RUNNER_NOW (a clock that never moves cannot schedule)"
            );
            config.clock = Clock::System;
        }
        let clock = config.clock;
        let rt = runtime_for(&config);
        let auth = Auth::new(config.hub_origin.clone());
        Daemon {
            env,
            overrides,
            shared: Mutex::new(Shared {
                config,
                rt,
                paused: false,
                table: BTreeMap::new(),
                last_tick: None,
                last_poll: None,
                next_poll: Instant::now(),
            }),
            wake: Condvar::new(),
            live: Mutex::new(HashMap::new()),
            run_ended: Condvar::new(),
            metrics: Metrics::default(),
            auth,
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            clock,
            config_lock: Mutex::new(()),
        }
    }

    /// The shared state. A poisoned lock (a panic elsewhere) still gives
    /// the data: every writer leaves it consistent between statements.
    pub fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Wakes the scheduler and every waiter on `run_ended`. Each condvar is
    /// notified under the mutex its waiters check their condition under, so
    /// a wake-up cannot fall between a check and a wait.
    fn wake_all(&self) {
        {
            let _shared = self.shared();
            self.wake.notify_all();
        }
        let _live = self.live();
        self.run_ended.notify_all();
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs going on; claimed runs still waiting for a permit do not count.
    pub fn running_count(&self) -> usize {
        self.live().values().filter(|l| l.cancel.is_some()).count()
    }

    pub fn gauges(&self) -> Gauges {
        let (jobs_loaded, outbox_depth, last_poll, plans, store, disabled) = {
            let s = self.shared();
            let depth = s.rt.as_ref().map_or(0, |rt| rt.outbox.depth());
            let plans: Vec<(String, Plan)> = s
                .table
                .iter()
                .filter_map(|(p, e)| e.plan.as_ref().ok().map(|plan| (p.clone(), plan.clone())))
                .collect();
            let store = s.rt.as_ref().map(|rt| rt.store.clone());
            (
                s.table.len(),
                depth,
                s.last_poll,
                plans,
                store,
                s.config.disabled,
            )
        };
        // state.json is read with the shared lock released.
        let now = self.clock.now();
        let jobs_stale = store.and_then(|st| st.read().ok()).map_or(0, |state| {
            plans
                .iter()
                .filter(|(path, plan)| health::is_stale(&state, path, plan, now, disabled))
                .count()
        });
        let waiting = self.live().values().filter(|l| l.cancel.is_none()).count();
        Gauges {
            jobs_loaded,
            jobs_stale,
            running: self.running_count(),
            waiting,
            outbox_depth,
            last_poll: last_poll.map(|(t, _)| t.as_second()),
            last_poll_ok: last_poll.is_some_and(|(_, ok)| ok),
            uptime: self.uptime(),
        }
    }

    fn register_service(&self, port: u16) {
        let home = self.shared().config.paths.home.clone();
        let install_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.display().to_string()))
            .unwrap_or_default();
        let row = registration::Row {
            port,
            version: env!("CARGO_PKG_VERSION"),
            install_dir: &install_dir,
        };
        match registration::register(&home, &row) {
            Ok(()) => log::info!("registered in {}", home.join(registration::FILE).display()),
            Err(e) => log::warn!("could not register in services.json: {e}"),
        }
    }

    /// The scheduler: polls, fires due jobs, sleeps until the next event.
    fn schedule_loop(self: &Arc<Self>) {
        loop {
            if self.stopping() {
                return;
            }
            let poll_due = Instant::now() >= self.shared().next_poll;
            if poll_due {
                self.poll();
            }
            self.fire_due();
            let mut s = self.shared();
            if self.stopping() {
                return;
            }
            let now = self.clock.now();
            let until_poll = s.next_poll.saturating_duration_since(Instant::now());
            // While paused nothing fires, so slots do not count (they would
            // stay in the past and the loop would spin).
            let runnable = !s.paused && s.rt.is_some();
            let until_slot = s
                .table
                .values()
                .filter_map(|e| e.next)
                .filter(|_| runnable)
                .min()
                .map_or(Duration::MAX, |t| self.clock.real_duration(until(now, t)));
            // Capped, so a clock step (NTP, suspend) is noticed within a
            // minute.
            let wait = until_poll.min(until_slot).min(Duration::from_secs(60));
            if wait > Duration::ZERO {
                s = self
                    .wake
                    .wait_timeout(s, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            drop(s);
        }
    }

    /// A poll (SPEC §9.1): deliver the outbox, list the jobs, decide them
    /// all. A failed listing keeps the current table.
    fn poll(self: &Arc<Self>) {
        let (rt, interval) = {
            let mut s = self.shared();
            let interval = Duration::from_secs(s.config.poll_interval_seconds);
            s.next_poll = Instant::now() + interval;
            (s.active_rt(), interval)
        };
        let Some(rt) = rt else {
            log::warn!(
                "no vault token: scheduling is paused until one is stored (PUT /.parachute/config)"
            );
            return;
        };
        rt.deliver_outbox();
        let now = self.clock.now();
        let listing = match rt.vault.list_jobs() {
            Ok(listing) => listing,
            Err(e) => {
                log::error!(
                    "poll failed, keeping the current {} jobs: {e}",
                    self.shared().table.len()
                );
                self.shared().last_poll = Some((now, false));
                self.metrics.poll(false);
                return;
            }
        };
        self.metrics.poll(true);
        log::info!(
            "poll: {} job(s){}, next in {}s",
            listing.notes.len(),
            if listing.skipped.is_empty() {
                String::new()
            } else {
                format!(" and {} skipped", listing.skipped.len())
            },
            interval.as_secs()
        );
        self.shared().last_poll = Some((now, true));
        self.decide(&rt, listing, now, Scope::All);
        // What the settling of dead runs queued.
        rt.deliver_outbox();
    }

    /// Fires the jobs whose slot has come, re-reading their notes first so
    /// edits made since the poll count.
    fn fire_due(self: &Arc<Self>) {
        let now = self.clock.now();
        let (rt, due) = {
            let mut s = self.shared();
            s.last_tick = Some(now);
            let due: Vec<String> = s
                .table
                .iter()
                .filter(|(_, e)| e.next.is_some_and(|n| n <= now))
                .map(|(p, _)| p.clone())
                .collect();
            (s.active_rt(), due)
        };
        let Some(rt) = rt else { return };
        if due.is_empty() {
            return;
        }
        let fetched = refetch(&rt, &due);
        let mut notes = Vec::new();
        {
            let mut s = self.shared();
            for (path, note) in due.iter().zip(fetched) {
                match note {
                    Ok(Some(note)) => notes.push(note),
                    Ok(None) => {
                        log::info!("{path}: the note is gone; dropping the job");
                        s.table.remove(path);
                    }
                    Err(e) => {
                        // Keep the polled version: a vault hiccup at fire
                        // time should not cost the slot.
                        log::warn!(
                            "{path}: could not re-read the note ({e}); using the polled one"
                        );
                        if let Some(entry) = s.table.get(path) {
                            notes.push(entry.note.clone());
                        }
                    }
                }
            }
        }
        let listing = Listing {
            notes,
            skipped: Vec::new(),
        };
        self.decide(&rt, listing, self.clock.now().max(now), Scope::Some);
    }

    /// Decides `notes` at `now` through the engine, starts a worker for
    /// every claimed run, and puts each note in the table with its next
    /// slot. Even if the state cannot be locked every job gets its next
    /// slot: none may stay "due" (the scheduler would spin on it).
    fn decide(self: &Arc<Self>, rt: &Runtime, listing: Listing, now: Timestamp, scope: Scope) {
        // Cleared credential since this began: start nothing.
        let pass = if self.shared().paused {
            None
        } else {
            match engine::claim_due(rt, &listing, now, scope) {
                Ok(pass) => Some(pass),
                Err(e) => {
                    log::error!("{e}");
                    None
                }
            }
        };
        for (path, reason) in &listing.skipped {
            log::warn!("invalid job at {path}: {reason}");
        }
        let notes = listing.notes;
        let (claimed, plans): (Vec<Claimed>, Vec<Result<Plan, String>>) = match pass {
            Some(pass) => {
                let plans = pass
                    .looked
                    .into_iter()
                    .take(notes.len())
                    .map(|looked| match looked.verdict {
                        Verdict::Invalid(e) => {
                            log::warn!("{e}");
                            Err(e.problems.join("; "))
                        }
                        verdict => {
                            if let Verdict::Skipped(reason) = verdict {
                                log::info!("skipped: {}: {reason}", looked.path);
                            }
                            looked.plan.ok_or_else(String::new)
                        }
                    })
                    .collect();
                (pass.claimed, plans)
            }
            None => {
                let plans = notes
                    .iter()
                    .map(|n| {
                        Job::from_note(n, &rt.default_zone)
                            .map(|job| Plan::from(&job))
                            .map_err(|e| e.problems.join("; "))
                    })
                    .collect();
                (Vec::new(), plans)
            }
        };
        {
            let mut s = self.shared();
            let globally_disabled = s.config.disabled;
            if scope == Scope::All {
                // The listing is the whole table.
                s.table.clear();
            }
            for (note, plan) in notes.into_iter().zip(plans) {
                let next = match &plan {
                    Ok(p) if !p.disabled && !globally_disabled => {
                        p.schedule.next_after(now, &p.zone.tz)
                    }
                    _ => None,
                };
                let path = note.path_or_id().to_string();
                s.table.insert(path, TableEntry { note, plan, next });
            }
        }
        for c in claimed {
            self.spawn_worker(rt.clone(), c);
        }
    }

    /// Wakes the scheduler and the runs waiting for a permit (config
    /// changed).
    pub fn nudge(&self) {
        self.wake_all();
    }
}

/// The runtime for a config; `None` when a REST vault has no token.
fn runtime_for(config: &Config) -> Option<Runtime> {
    match Runtime::open(config) {
        Ok(rt) => Some(rt),
        Err(e) => {
            log::warn!("{e}");
            None
        }
    }
}

/// Re-reads notes, several at a time when many are due at once.
fn refetch(rt: &Runtime, paths: &[String]) -> Vec<Result<Option<Note>, String>> {
    const PARALLEL: usize = 8;
    if paths.len() <= 1 {
        return paths
            .iter()
            .map(|p| rt.vault.get_note(p).map_err(|e| e.to_string()))
            .collect();
    }
    let get = |p: &String| rt.vault.get_note(p).map_err(|e| e.to_string());
    let mut out: Vec<Result<Option<Note>, String>> = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(PARALLEL) {
        std::thread::scope(|scope| {
            // A thread the OS refuses (a task limit): read on this one.
            let handles: Vec<_> = chunk
                .iter()
                .map(|p| {
                    std::thread::Builder::new()
                        .spawn_scoped(scope, move || get(p))
                        .map_err(|_| p)
                })
                .collect();
            for h in handles {
                out.push(match h {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| Err("re-read failed".to_string())),
                    Err(p) => get(p),
                });
            }
        });
    }
    out
}
