//! Keeping account of every process an agent starts, so that none is left
//! when its run ends (SPEC §6.2). The Bash tool runs its commands in a
//! session of their own, so killing the agent's process group is not
//! enough.
//!
//! Two mechanisms, chosen once per process:
//! - **cgroup** (cgroup v2, where the runner may create a child of its own
//!   cgroup: root, or a systemd unit with `Delegate=yes`): the agent is
//!   started in a fresh cgroup (the child joins it between clone and
//!   exec, `os::spawn`), so every descendant is born in it; the end of the
//!   run kills the whole cgroup.
//! - **subreaper** (everywhere else): the runner is the child subreaper of
//!   its descendants, so an orphan is re-parented to it rather than to
//!   init; a scan of /proc every 200 ms records the process groups and
//!   sessions of the agent's descendants, and the end of the run kills the
//!   runner's descendants in those, plus orphans that appeared during the
//!   run and that no other live run may own. Orphans are reaped here.
//!
//! Signals and /proc reading are `os`'s; this module decides whom to hit.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::os::{self, Process};

/// How often the subreaper mode looks at the agent's descendants.
const SCAN_EVERY: Duration = Duration::from_millis(200);
/// How long `finish` waits for killed processes to be gone.
const GONE_WITHIN: Duration = Duration::from_secs(2);
/// Prefix of the cgroups the runner makes.
pub const CGROUP_PREFIX: &str = "parachute-run-";

/// The mechanism of this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// cgroup v2: each run gets a child of this directory.
    Cgroup(PathBuf),
    /// Child subreaper and /proc tracking.
    Subreaper,
}

static MECHANISM: OnceLock<Mechanism> = OnceLock::new();
static CGROUPS_ALLOWED: AtomicBool = AtomicBool::new(true);

/// Whether the mechanism may be cgroups (`false` forces the subreaper
/// mode); it is chosen when first needed, so a pass that starts no agent
/// never probes the cgroup tree. Call it before any agent starts.
pub fn allow_cgroups(allow: bool) {
    CGROUPS_ALLOWED.store(allow, Ordering::Relaxed);
}

/// The mechanism of this process, chosen on the first call.
pub fn mechanism() -> &'static Mechanism {
    MECHANISM.get_or_init(|| {
        if CGROUPS_ALLOWED.load(Ordering::Relaxed)
            && let Some(dir) = own_cgroup_dir().filter(|d| can_make_child(d))
        {
            log::debug!("agents run in cgroups under {}", dir.display());
            return Mechanism::Cgroup(dir);
        }
        match os::become_subreaper() {
            Ok(()) => log::debug!("agents are tracked as descendants (child subreaper)"),
            Err(e) => log::warn!(
                "cannot become the subreaper of the agents ({e}): a process an agent starts in a session of its own may survive its run"
            ),
        }
        Mechanism::Subreaper
    })
}

/// The cgroup v2 directory this process is in, from /proc/self/cgroup
/// (`0::<path>`) and the cgroup2 mount in /proc/self/mountinfo.
fn own_cgroup_dir() -> Option<PathBuf> {
    let cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|line| {
        // `<id> <parent> <dev> <root> <mount point> … - <fstype> <source> …`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4)
    })?;
    let dir = Path::new(mount).join(rel.trim_start_matches('/'));
    dir.join("cgroup.procs").exists().then_some(dir)
}

/// Whether a child cgroup can be made (and removed) in `dir`.
fn can_make_child(dir: &Path) -> bool {
    let probe = dir.join(format!("{CGROUP_PREFIX}probe-{}", std::process::id()));
    if fs::create_dir(&probe).is_err() {
        return false;
    }
    let usable = probe.join("cgroup.procs").exists();
    let _ = fs::remove_dir(&probe);
    usable
}

/// The children this process spawned itself and reaps itself
/// (agents): never reaped here, never taken for orphans.
fn spawned() -> MutexGuard<'static, HashSet<u32>> {
    static SPAWNED: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    SPAWNED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The start times of the agents of this process's live runs (contained
/// either way), for telling whose a process is.
fn live_starts() -> MutexGuard<'static, HashMap<u32, u64>> {
    static LIVE: OnceLock<Mutex<HashMap<u32, u64>>> = OnceLock::new();
    LIVE.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Held shared by each spawn from before its clone until its agent is in
/// `spawned` and `live_starts`, and exclusively by a scan that has just
/// read /proc, around its reading of those two: a scan never sees a
/// freshly spawned agent (or a child it started at once) without its
/// registration, and spawns do not wait for one another.
fn spawn_gate() -> &'static RwLock<()> {
    static GATE: RwLock<()> = RwLock::new(());
    &GATE
}

/// Containment for one run, before its agent starts.
pub struct Pending {
    /// The run's cgroup and its `cgroup.procs`, open for the agent to
    /// join.
    cgroup: Option<(PathBuf, fs::File)>,
}

/// Sets up containment for the run `run_id`: in cgroup mode, a fresh
/// cgroup.
pub fn prepare(run_id: &str) -> Pending {
    let Mechanism::Cgroup(parent) = mechanism() else {
        return Pending::none();
    };
    let dir = parent.join(format!("{CGROUP_PREFIX}{run_id}"));
    let made = fs::create_dir(&dir).and_then(|()| {
        fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .inspect_err(|_| {
                let _ = fs::remove_dir(&dir);
            })
    });
    match made {
        Ok(procs) => Pending {
            cgroup: Some((dir, procs)),
        },
        Err(e) => {
            log::warn!(
                "cannot make the cgroup {} ({e}); tracking the agent's processes instead",
                dir.display()
            );
            Pending::none()
        }
    }
}

impl Pending {
    /// No cgroup: tracking.
    fn none() -> Pending {
        Pending { cgroup: None }
    }

    /// In cgroup mode, the run's `cgroup.procs`, for the agent to write
    /// itself into between clone and exec (`os::SpawnRequest`), so that
    /// every process it starts is born inside.
    pub fn procs(&self) -> Option<&fs::File> {
        self.cgroup.as_ref().map(|(_, procs)| procs)
    }

    /// The agent could not be started: undo.
    pub fn abandon(self) {
        if let Some((dir, _)) = &self.cgroup {
            let _ = fs::remove_dir(dir);
        }
    }

    /// The agent could not join the cgroup (and did not run): its cgroup
    /// is removed, and the next spawn is tracked instead.
    pub fn without_cgroup(self) -> Pending {
        self.abandon();
        Pending::none()
    }

    /// The agent `pid` runs (in the cgroup, if there is one: it does not
    /// run otherwise): contain it.
    pub fn started(self, pid: u32) -> Contained {
        let agent_start = agent_start(pid);
        if let Some((dir, _)) = self.cgroup {
            return Contained {
                agent: pid,
                kind: Kind::Cgroup(dir),
            };
        }
        let me = os::process(std::process::id());
        let tracked = Arc::new(Tracked {
            agent: pid,
            agent_start,
            me: me.map_or((0, 0), |p| (p.pgid, p.sid)),
            seen: Mutex::default(),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread = {
            let tracked = Arc::clone(&tracked);
            std::thread::Builder::new()
                .name("agent-scan".into())
                .spawn(move || while tracked.wait_then_scan() {})
        };
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                // Without the scans only what is found at the end is
                // stopped; the run goes on.
                log::warn!("cannot start the scan of the agent's processes: {e}");
                None
            }
        };
        tracked.scan();
        Contained {
            agent: pid,
            kind: Kind::Tracked { tracked, thread },
        }
    }
}

/// A running (or finished) agent's processes.
pub struct Contained {
    agent: u32,
    kind: Kind,
}

enum Kind {
    Cgroup(PathBuf),
    Tracked {
        tracked: Arc<Tracked>,
        thread: Option<JoinHandle<()>>,
    },
}

/// What the subreaper mode has seen of one run.
struct Tracked {
    agent: u32,
    agent_start: u64,
    /// The runner's own process group and session: never a target.
    me: (u32, u32),
    seen: Mutex<Seen>,
    /// Set at the end of the run; `wake` tells the scan thread at once, so
    /// the end of a run never waits for the next scan.
    stop: Mutex<bool>,
    wake: Condvar,
}

#[derive(Default)]
struct Seen {
    pgids: HashSet<u32>,
    sids: HashSet<u32>,
    procs: HashSet<(u32, u64)>,
}

impl Tracked {
    /// A wait of `SCAN_EVERY` that the end of the run cuts short, then a
    /// scan (`started` made the first). `false` once the run has ended.
    fn wait_then_scan(&self) -> bool {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        let (stop, _) = self
            .wake
            .wait_timeout_while(stop, SCAN_EVERY, |stop| !*stop)
            .unwrap_or_else(|p| p.into_inner());
        if *stop {
            return false;
        }
        drop(stop);
        self.scan();
        true
    }

    /// Records the groups and sessions of the run's processes, and reaps
    /// exited orphans.
    fn scan(&self) {
        let all = os::processes();
        let members = self.members(&all);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for p in &members {
            if p.pgid != self.me.0 {
                seen.pgids.insert(p.pgid);
            }
            if p.sid != self.me.1 {
                seen.sids.insert(p.sid);
            }
            seen.procs.insert((p.pid, p.start));
        }
        drop(seen);
        reap_orphans(&all);
    }

    /// The live processes of this run among `all`: the runner's
    /// descendants that descend from the agent, or are in a group or
    /// session seen among those, or are orphans born during the run that
    /// no other live run may own.
    fn members(&self, all: &[Process]) -> Vec<Process> {
        let me = std::process::id();
        let by_pid: HashMap<u32, &Process> = all.iter().map(|p| (p.pid, p)).collect();
        // The chain of parents from `p` up: whether it reaches `target`
        // before it leaves the runner's tree.
        let descends = |p: &Process, target: u32| {
            let mut at = p.ppid;
            for _ in 0..4096 {
                if at == target {
                    return true;
                }
                if at == me || at <= 1 {
                    return false;
                }
                match by_pid.get(&at) {
                    Some(parent) => at = parent.ppid,
                    None => return false,
                }
            }
            false
        };
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (spawned, others) = {
            let _gate = spawn_gate().write().unwrap_or_else(|p| p.into_inner());
            let others: Vec<(u32, u64)> = live_starts()
                .iter()
                .filter(|(pid, _)| **pid != self.agent)
                .map(|(pid, start)| (*pid, *start))
                .collect();
            (spawned().clone(), others)
        };
        all.iter()
            .filter(|p| !p.zombie && p.pid != me && p.pid != self.agent)
            .filter(|p| descends(p, me) || p.ppid == me)
            .filter(|p| {
                if descends(p, self.agent) || seen.procs.contains(&(p.pid, p.start)) {
                    return true;
                }
                // Another live run's own processes are not ours.
                if others.iter().any(|(agent, _)| descends(p, *agent)) {
                    return false;
                }
                if (p.pgid != self.me.0 && seen.pgids.contains(&p.pgid))
                    || (p.sid != self.me.1 && seen.sids.contains(&p.sid))
                {
                    return true;
                }
                // An orphan never seen: ours if it was born during this
                // run and no other live run was going on since its birth.
                !spawned.contains(&p.pid)
                    && p.start >= self.agent_start
                    && !others.iter().any(|(_, start)| *start <= p.start)
            })
            .copied()
            .collect()
    }
}

/// Spawns an agent already known as one: `spawn_gate` is held across the
/// spawn and until the agent is among the spawned children and the live
/// runs' agents, so no scan (which reads /proc, then those) can take the
/// new agent, or a child it starts at once, for an orphan to reap or kill.
/// `forget` it once it is reaped.
pub fn spawn_child(req: &os::SpawnRequest<'_>) -> std::io::Result<os::Spawned> {
    let _gate = spawn_gate().read().unwrap_or_else(|p| p.into_inner());
    let child = os::spawn(req)?;
    let start = os::process(child.pid).map_or(0, |p| p.start);
    spawned().insert(child.pid);
    live_starts().insert(child.pid, start);
    Ok(child)
}

/// Reaps the runner's exited children that are not agents (orphans).
fn reap_orphans(all: &[Process]) {
    let me = std::process::id();
    let spawned = {
        let _gate = spawn_gate().write().unwrap_or_else(|p| p.into_inner());
        spawned().clone()
    };
    for p in all {
        if p.zombie && p.ppid == me && !spawned.contains(&p.pid) {
            os::reap(p.pid);
        }
    }
}

impl Contained {
    /// The run's cgroup, if it has one (recorded with the agent, so a
    /// later pass can stop what a dead runner left in it).
    pub fn cgroup(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Cgroup(dir) => Some(dir),
            Kind::Tracked { .. } => None,
        }
    }

    /// The run's processes now, its agent aside.
    fn pids(&self) -> Vec<u32> {
        match &self.kind {
            Kind::Cgroup(dir) => cgroup_pids(dir)
                .into_iter()
                .filter(|p| *p != self.agent)
                .collect(),
            Kind::Tracked { tracked, .. } => tracked
                .members(&os::processes())
                .iter()
                .map(|p| p.pid)
                .collect(),
        }
    }

    /// Whether any process of the run but its agent is left, or (tracking
    /// mode; a cgroup holds them all) any live one in process group
    /// `group`. One read of /proc either way.
    pub fn any_left(&self, group: u32) -> bool {
        match &self.kind {
            Kind::Cgroup(dir) => cgroup_pids(dir).iter().any(|p| *p != self.agent),
            Kind::Tracked { tracked, .. } => {
                let all = os::processes();
                all.iter().any(|p| !p.zombie && p.pgid == group)
                    || !tracked.members(&all).is_empty()
            }
        }
    }

    /// Sends `signal` to every process of the run but its agent.
    pub fn signal(&self, signal: i32) {
        for pid in self.pids() {
            let _ = os::kill_pid(pid, signal);
        }
    }

    /// Kills what is left of the run and lets go of it (its cgroup is
    /// removed, its scans stop). Returns how many processes it killed.
    /// Call it before the agent is reaped: its zombie keeps its pid, and
    /// so its group, from being reused.
    pub fn finish(self) -> Finished {
        match self.kind {
            Kind::Cgroup(dir) => {
                let agent = self.agent;
                let others = |dir: &Path| -> Vec<u32> {
                    cgroup_pids(dir)
                        .into_iter()
                        .filter(|p| *p != agent)
                        .collect()
                };
                let pids = others(&dir);
                if !pids.is_empty() && fs::write(dir.join("cgroup.kill"), "1").is_err() {
                    // Before Linux 5.14: one by one.
                    for pid in &pids {
                        let _ = os::kill_pid(*pid, os::SIGKILL);
                    }
                }
                let deadline = Instant::now() + GONE_WITHIN;
                while !others(&dir).is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                live_starts().remove(&agent);
                Finished {
                    killed: pids.len(),
                    cgroup: Some(dir),
                }
            }
            Kind::Tracked { tracked, thread } => {
                *tracked.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
                tracked.wake.notify_all();
                if let Some(t) = thread {
                    let _ = t.join();
                }
                let mut killed = 0;
                let deadline = Instant::now() + GONE_WITHIN;
                loop {
                    let all = os::processes();
                    let left = tracked.members(&all);
                    reap_orphans(&all);
                    if left.is_empty() || Instant::now() >= deadline {
                        break;
                    }
                    for p in &left {
                        if os::kill_pid(p.pid, os::SIGKILL).unwrap_or(false) {
                            killed += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                live_starts().remove(&tracked.agent);
                Finished {
                    killed,
                    cgroup: None,
                }
            }
        }
    }
}

/// A run whose processes were all stopped, the agent's zombie aside.
pub struct Finished {
    /// How many had to be killed.
    pub killed: usize,
    cgroup: Option<PathBuf>,
}

impl Finished {
    /// Lets go of the run's cgroup, once its agent has been reaped (its
    /// zombie kept the cgroup in use until then).
    pub fn release(self) {
        let Some(dir) = self.cgroup else { return };
        for _ in 0..100 {
            match fs::remove_dir(&dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        log::warn!(
            "cannot remove the cgroup {}; a later pass does",
            dir.display()
        );
    }
}

/// The pids in a cgroup (`cgroup.procs`).
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Where the cgroup of run `run_id` would be, in cgroup mode.
pub fn cgroup_of(run_id: &str) -> Option<PathBuf> {
    match mechanism() {
        Mechanism::Cgroup(parent) => Some(parent.join(format!("{CGROUP_PREFIX}{run_id}"))),
        Mechanism::Subreaper => None,
    }
}

/// Kills everything in a cgroup a dead runner left, and removes it. Only
/// a directory named like ours under this process's cgroup parent is
/// touched.
pub fn kill_leftover_cgroup(dir: &Path) -> usize {
    let Mechanism::Cgroup(parent) = mechanism() else {
        return 0;
    };
    let ours = dir.parent() == Some(parent.as_path())
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(CGROUP_PREFIX));
    if !ours || !dir.exists() {
        return 0;
    }
    // Killed until it can be removed: an agent the dead runner was still
    // spawning may join it after a look finds it empty (one that finds it
    // removed does not run at all).
    let mut killed = 0;
    for _ in 0..100 {
        killed += Contained {
            agent: 0,
            kind: Kind::Cgroup(dir.to_path_buf()),
        }
        .finish()
        .killed;
        match fs::remove_dir(dir) {
            Ok(()) => return killed,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return killed,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    log::warn!("cannot remove the cgroup {}", dir.display());
    killed
}

/// The start time of the live run's agent `pid`, as read when it was
/// spawned (0: unknown).
pub fn agent_start(pid: u32) -> u64 {
    live_starts().get(&pid).copied().unwrap_or(0)
}

/// The agent `pid` was reaped (`os::wait_reap`): it is no longer
/// one of ours.
pub fn forget(pid: u32) {
    spawned().remove(&pid);
}
