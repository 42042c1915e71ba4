//! `serve` (SPEC §9.1): the scheduling loop for containers, beside the HTTP
//! admin server (`server`). Plain threads: one scheduler that sleeps on a
//! `Condvar` until the earliest slot or the next poll, a worker thread per
//! run bounded by `max_concurrent_jobs` permits, one thread per HTTP
//! request, and a signal thread for graceful shutdown.
//!
//! Scheduling state, locks and the outbox are the same as `once`'s, so the
//! two can run side by side (by mistake) without a slot firing twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::agent::{Canceller, KILL_GRACE};
use crate::auth::Auth;
use crate::cli::ServeArgs;
use crate::config::{self, Config, Env, Overrides, VaultTarget};
use crate::error::Error;
use crate::job::{Job, JobError};
use crate::metrics::{Gauges, Metrics};
use crate::run::{self, Claimed, Clock, Report, Runtime};
use crate::state::{self, Decision, Policy, Trigger};
use crate::vault::{self, Note};
use crate::{EXIT_OK, once, server, services, sys};

/// One job of the table: checked, or its problems.
#[derive(Clone, Debug)]
pub struct TableEntry {
    pub job: Result<Job, JobError>,
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
pub fn run(args: &ServeArgs, env: &Env) -> Result<u8, Error> {
    let overrides = Overrides {
        config: args.common.config.clone(),
        vault_dir: args.common.vault_dir.clone(),
        poll_interval: args.poll_interval,
    };
    let config = config::load(env, &overrides)?;
    once::warn_if_root(env);
    sys::raise_fd_limit();
    let daemon = Arc::new(Daemon::new(config, env.clone(), overrides)?);

    let addr = format!("{}:{}", args.host, args.port);
    let http = tiny_http::Server::http(&addr)
        .map_err(|e| Error::Fatal(format!("cannot listen on {addr}: {e}")))?;
    let http = Arc::new(http);
    let bound = http.server_addr().to_ip().map_or(args.port, |a| a.port());
    daemon.register_service(bound);
    log::info!("serving the admin API on http://{}:{bound}", args.host);

    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| Error::Fatal(format!("cannot handle signals: {e}")))?;
    let signal_handle = signals.handle();
    {
        let daemon = Arc::clone(&daemon);
        let http = Arc::clone(&http);
        let mut signals = signals;
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("received signal {sig}: shutting down");
                daemon.begin_stop();
                http.unblock();
            }
        });
    }
    let accept = {
        let daemon = Arc::clone(&daemon);
        let http = Arc::clone(&http);
        std::thread::spawn(move || server::accept_loop(&http, &daemon))
    };
    let scheduler = {
        let daemon = Arc::clone(&daemon);
        std::thread::spawn(move || daemon.schedule_loop())
    };
    let _ = scheduler.join();
    daemon.drain(args.shutdown_timeout);
    http.unblock();
    let _ = accept.join();
    signal_handle.close();
    log::info!("stopped");
    Ok(EXIT_OK)
}

impl Daemon {
    pub fn new(config: Config, env: Env, overrides: Overrides) -> Result<Daemon, Error> {
        let clock = match Clock::from_env(&env)? {
            Clock::Fixed(_) => {
                log::warn!(
                    "serve ignores PARACHUTE_RUNNER_NOW (a clock that never moves cannot schedule)"
                );
                Clock::System
            }
            other => other,
        };
        let rt = runtime_for(&config, &env, clock)?;
        let auth = Auth::new(crate::auth::hub_origin(env.get("PARACHUTE_HUB_ORIGIN")));
        Ok(Daemon {
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
        })
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
        let (jobs_loaded, outbox_depth, last_poll) = {
            let s = self.shared();
            let depth = s.rt.as_ref().map_or(0, |rt| rt.outbox.depth());
            (s.table.len(), depth, s.last_poll)
        };
        Gauges {
            jobs_loaded,
            running: self.running_count(),
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
        let row = services::Row {
            port,
            version: env!("CARGO_PKG_VERSION"),
            install_dir: &install_dir,
        };
        match services::register(&home, &row) {
            Ok(()) => log::info!("registered in {}", home.join(services::FILE).display()),
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
                .map_or(Duration::MAX, |t| {
                    self.clock.real_duration(state::until(now, t))
                });
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

    /// A poll (SPEC §9.1): settle and deliver the outbox, list the jobs,
    /// decide them all. A failed listing keeps the current table.
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
        if let Err(e) = run::settle_and_deliver(&rt) {
            log::error!("{e}");
        }
        let now = self.clock.now();
        let notes = match rt.vault.list_jobs() {
            Ok(notes) => notes,
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
        let zone = self.shared().config.timezone.clone();
        let mut table = BTreeMap::new();
        for note in &notes {
            let job = Job::from_note(note, &zone);
            if let Err(e) = &job {
                log::warn!("{e}");
            }
            table.insert(
                note.path_or_id().to_string(),
                TableEntry { job, next: None },
            );
        }
        let jobs: Vec<Job> = table
            .values()
            .filter_map(|e| e.job.as_ref().ok().cloned())
            .collect();
        log::debug!(
            "poll: {} jobs ({} valid), next in {}s",
            table.len(),
            jobs.len(),
            interval.as_secs()
        );
        {
            let mut s = self.shared();
            s.table = table;
            s.last_poll = Some((now, true));
        }
        self.evaluate(&rt, jobs, now, true);
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
        let zone = self.shared().config.timezone.clone();
        let fetched = refetch(&rt, &due);
        let mut jobs = Vec::new();
        {
            let mut s = self.shared();
            for (path, note) in due.iter().zip(fetched) {
                match note {
                    Ok(Some(note)) => {
                        let job = Job::from_note(&note, &zone);
                        if let Ok(job) = &job {
                            jobs.push(job.clone());
                        } else if let Err(e) = &job {
                            log::warn!("{e}");
                        }
                        s.table.insert(path.clone(), TableEntry { job, next: None });
                    }
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
                        if let Some(TableEntry { job: Ok(job), .. }) = s.table.get(path) {
                            jobs.push(job.clone());
                        }
                    }
                }
            }
        }
        self.evaluate(&rt, jobs, self.clock.now().max(now), false);
    }

    /// Decides `jobs` at `now` under the state lock, claims the due ones and
    /// starts their workers; updates each job's next slot.
    fn evaluate(self: &Arc<Self>, rt: &Runtime, jobs: Vec<Job>, now: Timestamp, prune: bool) {
        let policy = {
            let s = self.shared();
            Policy {
                poll_interval_seconds: s.config.poll_interval_seconds,
                globally_disabled: s.config.disabled,
            }
        };
        // Next slots first: even if the state cannot be locked, no job may
        // stay "due" (the scheduler would spin on it).
        let nexts: Vec<(String, Option<Timestamp>)> = jobs
            .iter()
            .map(|job| {
                let next = if job.disabled || policy.globally_disabled {
                    None
                } else {
                    job.schedule.next_after(now, &job.zone.tz)
                };
                (job.path.clone(), next)
            })
            .collect();
        {
            let mut s = self.shared();
            for (path, next) in &nexts {
                if let Some(entry) = s.table.get_mut(path) {
                    entry.next = *next;
                }
            }
        }
        let mut claimed = Vec::new();
        match rt.store.lock() {
            // Cleared credential since this evaluation began: start nothing.
            Ok(_) if self.shared().paused => {}
            Ok(mut locked) => {
                if prune {
                    let listed: std::collections::HashSet<String> =
                        self.shared().table.keys().cloned().collect();
                    locked
                        .state
                        .jobs
                        .retain(|p, e| listed.contains(p) || e.running.is_some());
                }
                for job in jobs {
                    let mut entry = locked.state.jobs.remove(&job.path);
                    let decision = state::decide(&(&job).into(), &mut entry, now, policy);
                    if let Some(entry) = entry {
                        locked.state.jobs.insert(job.path.clone(), entry);
                    }
                    match decision {
                        Decision::Run { slot, trigger } => {
                            let (info, prompt) = run::prepare(&job, trigger, Some(slot), now, None);
                            let path = job.path.clone();
                            match run::claim(&rt.store, &mut locked, job, info, prompt) {
                                Ok(Some(c)) => claimed.push(c),
                                Ok(None) => log::info!("skipped: {path}: still running"),
                                Err(e) => log::error!("skipped: {path}: {e}"),
                            }
                        }
                        Decision::SkipLate { slot } => {
                            log::info!("skipped: {}: late slot {slot} (catch_up: false)", job.path);
                        }
                        _ => {}
                    }
                }
                if let Err(e) = locked.commit() {
                    log::error!("{e}");
                    // Not committed: nothing may run (another runner could
                    // decide the same slots).
                    claimed.clear();
                }
            }
            Err(e) => log::error!("{e}"),
        }
        for c in claimed {
            self.spawn_worker(rt.clone(), c);
        }
    }

    /// Counts a claimed run as live (waiting for a permit until it starts),
    /// for shutdown and `/metrics`.
    fn track(&self, claimed: &Claimed) {
        self.live().insert(
            claimed.info.run_id.clone(),
            Live {
                job_path: claimed.job.path.clone(),
                cancel: None,
            },
        );
    }

    /// Starts a worker thread for a claimed run.
    pub fn spawn_worker(
        self: &Arc<Self>,
        rt: Runtime,
        claimed: Claimed,
    ) -> std::thread::JoinHandle<Report> {
        let daemon = Arc::clone(self);
        self.track(&claimed);
        std::thread::spawn(move || daemon.work(&rt, claimed))
    }

    /// One run: wait for a permit, run, record, free the permit.
    pub fn work(self: &Arc<Self>, rt: &Runtime, claimed: Claimed) -> Report {
        let run_id = claimed.info.run_id.clone();
        let report = if self.acquire_permit(&run_id) {
            let daemon = Arc::clone(self);
            let id = run_id.clone();
            run::execute(rt, claimed, move |cancel| daemon.started_run(&id, cancel))
        } else {
            run::abandon(rt, claimed, "interrupted: runner shutting down")
        };
        log::info!(
            "{}: {} ({}){}",
            report.job_path,
            if report.ok { "ok" } else { "failed" },
            report.trigger,
            report
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        self.metrics.run_finished(report.ok, report.duration);
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

    /// Shutdown (SPEC §9.1): no new runs; wait up to `timeout` for the
    /// running ones, then stop the rest with the kill sequence; their notes
    /// say `interrupted: runner shutting down`.
    fn drain(&self, timeout: Duration) {
        self.begin_stop();
        let deadline = Instant::now() + timeout;
        let mut live = self.live();
        while !live.is_empty() {
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
                    c.cancel();
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

    /// Wakes the scheduler and the runs waiting for a permit (config
    /// changed).
    pub fn nudge(&self) {
        self.wake_all();
    }

    /// Runs one job now for `POST /runner/jobs/<path>/run-now`.
    /// `Err(None)`: no such job; `Err(Some(msg))`: it cannot run now.
    pub fn run_now(self: &Arc<Self>, path: &str) -> Result<(Runtime, Claimed), RunNowError> {
        let (rt, known, zone) = {
            let s = self.shared();
            let rt = s.active_rt();
            (rt, s.table.contains_key(path), s.config.timezone.clone())
        };
        let rt = rt.ok_or(RunNowError::Paused)?;
        if !known {
            return Err(RunNowError::NotFound);
        }
        let note = rt
            .vault
            .get_note(path)
            .map_err(|e| RunNowError::Upstream(e.to_string()))?
            .ok_or(RunNowError::NotFound)?;
        let job = Job::from_note(&note, &zone).map_err(|e| RunNowError::Invalid(e.to_string()))?;
        let (info, prompt) = run::prepare(&job, Trigger::Http, None, self.clock.now(), None);
        let mut locked = rt
            .store
            .lock()
            .map_err(|e| RunNowError::Upstream(e.to_string()))?;
        let claimed = run::claim(&rt.store, &mut locked, job, info, prompt)
            .map_err(|e| RunNowError::Upstream(e.to_string()))?;
        locked
            .commit()
            .map_err(|e| RunNowError::Upstream(e.to_string()))?;
        let claimed = claimed.ok_or(RunNowError::Running)?;
        self.track(&claimed);
        Ok((rt, claimed))
    }

    /// Applies a partial config update (PUT /.parachute/config). Returns
    /// the keys whose new value an environment variable overrides.
    pub fn update_config(
        &self,
        patch: &Map<String, Value>,
    ) -> Result<Vec<String>, Vec<(String, String)>> {
        let problems = |list: Vec<String>| -> Vec<(String, String)> {
            list.into_iter()
                .map(|p| match p.split_once(": ") {
                    Some((k, m)) => (k.to_string(), m.to_string()),
                    None => (String::new(), p),
                })
                .collect()
        };
        let non_null: Map<String, Value> = patch
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let checked = config::parse_file(&Value::Object(non_null));
        // A key set to null (removed) must still be a known one.
        let mut unknown: Vec<(String, String)> = patch
            .iter()
            .filter(|(k, v)| v.is_null() && !config::KEYS.contains(&k.as_str()))
            .map(|(k, _)| (k.clone(), "unknown key".to_string()))
            .collect();
        let checked = match checked {
            Ok(c) if unknown.is_empty() => c,
            Ok(_) => return Err(unknown),
            Err(list) => {
                unknown.extend(problems(list));
                return Err(unknown);
            }
        };
        if patch.get("vault_url").is_some_and(Value::is_null) {
            return Err(vec![(
                "vault_url".into(),
                "required; cannot be removed".into(),
            )]);
        }
        // One update at a time: the file is read, changed and written back.
        let _one = self.config_lock.lock().unwrap_or_else(|p| p.into_inner());
        let paths = self.shared().config.paths.clone();
        let mut doc = match config::read_config_doc(&paths.config_file) {
            Ok(Some(Value::Object(m))) => m,
            Ok(_) => Map::new(),
            Err(e) => return Err(vec![(String::new(), e.to_string())]),
        };
        for (k, v) in patch {
            if k == config::TOKEN_ENTRY {
                continue;
            }
            if v.is_null() {
                doc.remove(k);
            } else {
                doc.insert(k.clone(), v.clone());
            }
        }
        config::parse_file(&Value::Object(doc.clone())).map_err(problems)?;
        if let Some(token) = &checked.vault_token {
            paths
                .secret_store()
                .set(config::TOKEN_ENTRY, token)
                .map_err(|e| vec![("vault_token".to_string(), e.to_string())])?;
        }
        config::write_config_doc(&paths.config_file, &doc)
            .map_err(|e| vec![(String::new(), e.to_string())])?;
        let config = config::load(&self.env, &self.overrides)
            .map_err(|e| vec![(String::new(), e.to_string())])?;
        let rt = runtime_for(&config, &self.env, self.clock)
            .map_err(|e| vec![(String::new(), e.to_string())])?;
        let deferred: Vec<String> = patch
            .keys()
            .filter(|k| {
                env_var_for(k).is_some_and(|var| self.env.get(var).is_some())
                    || self.overridden_by_flag(k)
            })
            .cloned()
            .collect();
        {
            let mut s = self.shared();
            s.config = config;
            s.rt = rt;
            if checked.vault_token.is_some() {
                s.paused = false;
            }
            // Poll now with the new settings.
            s.next_poll = Instant::now();
        }
        log::info!(
            "config updated: {}",
            patch.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        self.nudge();
        Ok(deferred)
    }

    /// Whether a command-line flag of this `serve` overrides config key `k`.
    fn overridden_by_flag(&self, k: &str) -> bool {
        match k {
            "poll_interval_seconds" => self.overrides.poll_interval.is_some(),
            "vault_url" | "vault_name" | "vault_token" => self.overrides.vault_dir.is_some(),
            _ => false,
        }
    }

    /// Removes the stored vault token and pauses scheduling. While paused
    /// nothing reaches the vault (polls, fires, run-now and /runner/runs
    /// all check `paused`); runs already going finish. The runtime stays,
    /// for the local state and outbox that /runner/jobs and /metrics show.
    pub fn clear_token(&self) -> Result<(), String> {
        let _one = self.config_lock.lock().unwrap_or_else(|p| p.into_inner());
        let paths = self.shared().config.paths.clone();
        paths
            .secret_store()
            .remove(config::TOKEN_ENTRY)
            .map_err(|e| e.to_string())?;
        {
            let mut s = self.shared();
            s.paused = true;
            s.config.vault_token = None;
            for entry in s.table.values_mut() {
                entry.next = None;
            }
        }
        log::warn!("vault token cleared: scheduling paused until a new one is stored");
        self.nudge();
        Ok(())
    }

    /// The config as `GET /.parachute/config` shows it (no token).
    pub fn config_view(&self) -> Value {
        let s = self.shared();
        let c = &s.config;
        serde_json::json!({
            "vault_url": match &c.vault {
                VaultTarget::Rest { url } => url.clone(),
                VaultTarget::Dir { root } => format!("file://{}", root.display()),
            },
            "vault_name": c.vault_name,
            "poll_interval_seconds": c.poll_interval_seconds,
            "max_concurrent_jobs": c.max_concurrent_jobs,
            "disabled": c.disabled,
            "claude_bin": c.claude_bin,
            "timezone": c.timezone.name,
        })
    }
}

/// Why run-now cannot run.
#[derive(Debug)]
pub enum RunNowError {
    NotFound,
    Running,
    Paused,
    Invalid(String),
    Upstream(String),
}

/// The environment variable that overrides a config key.
fn env_var_for(key: &str) -> Option<&'static str> {
    Some(match key {
        "vault_url" => "PARACHUTE_RUNNER_VAULT_URL",
        "vault_name" => "PARACHUTE_RUNNER_VAULT_NAME",
        "vault_token" => "PARACHUTE_RUNNER_VAULT_TOKEN",
        "poll_interval_seconds" => "PARACHUTE_RUNNER_POLL_INTERVAL",
        "max_concurrent_jobs" => "PARACHUTE_RUNNER_MAX_CONCURRENT_JOBS",
        "disabled" => "PARACHUTE_RUNNER_DISABLED",
        "claude_bin" => "PARACHUTE_RUNNER_CLAUDE_BIN",
        "timezone" => "PARACHUTE_RUNNER_TIMEZONE",
        _ => return None,
    })
}

/// The runtime for a config; `None` when a REST vault has no token.
fn runtime_for(config: &Config, env: &Env, clock: Clock) -> Result<Option<Runtime>, Error> {
    let timeouts = once::http_timeouts(env)?;
    match vault::open(config, timeouts) {
        Ok(vault) => Ok(Some(Runtime::new(config, vault, env, clock))),
        Err(e) => {
            log::warn!("{e}");
            Ok(None)
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
    let mut out: Vec<Result<Option<Note>, String>> = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(PARALLEL) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|p| scope.spawn(move || rt.vault.get_note(p).map_err(|e| e.to_string())))
                .collect();
            for h in handles {
                out.push(
                    h.join()
                        .unwrap_or_else(|_| Err("re-read failed".to_string())),
                );
            }
        });
    }
    out
}
