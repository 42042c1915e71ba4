//! Scheduling state on disk (SPEC §7.1, §7.3): `state.json` and the lock
//! files that make concurrent runners of one host fire each slot exactly
//! once. `Store` does the locked read-modify-write of the file and hands
//! out job locks; what the entries mean is decided in `due`, and how a pass
//! uses them in `engine`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::due::Trigger;
use crate::files;
use crate::health::Health;
use crate::instant;
use crate::os;

pub const STATE_FILE: &str = "state.json";
pub const LOCKS_DIR: &str = "locks";
/// When the last scheduled pass happened.
pub const LAST_PASS_FILE: &str = "last-pass";
const VERSION: u32 = 1;
/// The largest state.json read: some hundred bytes per job.
const MAX_STATE: u64 = 64 << 20;

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub jobs: BTreeMap<String, JobState>,
    /// Notes found invalid, by path, so an unchanged one is not parsed
    /// again every pass.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub invalid: BTreeMap<String, Rejected>,
    /// Jobs paused by hand (SPEC §7.5), by path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paused: BTreeMap<String, Paused>,
    /// Each job's health (SPEC §11): last success, failure streak, notice
    /// throttle. Apart from `jobs`, whose entry a schedule change resets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health: BTreeMap<String, Health>,
}

/// Who paused a job, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    pub by: String,
    #[serde(with = "instant")]
    pub at: Timestamp,
}

/// What a pass remembers of an invalid note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// `note_hash` of the note it was checked from.
    pub hash: String,
    pub problems: Vec<String>,
}

/// One job's entry, keyed by job path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// The schedule and zone the entry was evaluated with; a change resets
    /// `checked_through`.
    pub schedule: String,
    pub timezone: String,
    /// Slots up to this instant have been handled.
    #[serde(with = "instant")]
    pub checked_through: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Running>,
    /// The note as last checked, so an unchanged note need not be parsed
    /// again on the next pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Seen>,
}

/// What a pass remembers of a valid job note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// `note_hash` of the note it was checked from.
    pub hash: String,
    pub disabled: bool,
    pub catch_up: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub run_id: String,
    /// `ok` or `failed`.
    pub status: String,
    #[serde(with = "instant")]
    pub started_at: Timestamp,
    #[serde(with = "instant")]
    pub finished_at: Timestamp,
    pub output_path: String,
    pub trigger: Trigger,
}

/// A run in progress: enough to write its failure note if its runner dies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<Timestamp>,
    #[serde(with = "instant")]
    pub started_at: Timestamp,
    /// The runner process of the run, with its start time and boot, so
    /// its liveness does not rest on a lock file alone (a tmp cleaner may
    /// remove lock files).
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    pub trigger: Trigger,
    /// Where the success note would go (the failure note adds `.failed`).
    pub output_path: String,
    pub job_id: String,
    pub model: String,
    #[serde(default)]
    pub output_tags: Vec<String>,
    /// The slot is claimed in the vault too (SPEC §12): if this runner
    /// dies, the runner that takes the claim over reports the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claimed: bool,
}

/// The runs this process has going on, by run id: a `running` entry with
/// this process's pid is alive only if it is one of them.
fn live_here() -> std::sync::MutexGuard<'static, std::collections::HashSet<String>> {
    static LIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A run of this process going on; it ends when this is dropped.
#[derive(Debug)]
pub struct LiveRun(String);

/// Whether run `run_id` goes on in this process.
pub fn is_live_here(run_id: &str) -> bool {
    live_here().contains(run_id)
}

impl LiveRun {
    pub fn new(run_id: &str) -> LiveRun {
        live_here().insert(run_id.to_string());
        LiveRun(run_id.to_string())
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        live_here().remove(&self.0);
    }
}

impl Running {
    /// Whether the runner that started this run is alive: the same pid,
    /// started at the same time, in this boot (and, for this very
    /// process, the run still going on). An entry without a start time
    /// (an older runner's) is judged by its lock alone.
    pub fn runner_alive(&self) -> bool {
        if self.pid == std::process::id() && self.pid_start == os::self_start() {
            return live_here().contains(&self.run_id);
        }
        let (Some(start), Some(boot)) = (self.pid_start, self.boot_id.as_deref()) else {
            return false;
        };
        if os::boot_id().as_deref() != Some(boot) {
            return false;
        }
        os::process(self.pid).is_some_and(|p| !p.zombie && p.start == start)
    }
}

/// A held advisory lock; released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

#[derive(Debug)]
pub enum StateError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// A state file from an unknown (newer) version.
    Version {
        path: PathBuf,
        found: u32,
    },
    /// Not valid state JSON (seen without the lock, so left in place).
    Damaged {
        path: PathBuf,
        detail: String,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StateError::Version { path, found } => write!(
                f,
                "{}: written by a newer parachute-runner (state version {found}, this one reads {VERSION}); upgrade, or move the file away to start afresh",
                path.display()
            ),
            StateError::Damaged { path, detail } => write!(
                f,
                "{}: unreadable ({detail}); the next pass moves it aside",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StateError {}

/// A state and the bytes of the file that holds it.
type Committed = (Vec<u8>, State);

/// The runner directory's state file and locks.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    /// The state as this process last committed (or found unchanged) under
    /// the lock, with the file's bytes then. The next lock that reads the
    /// same bytes takes it instead of parsing them again: the parse is
    /// most of what a lock holds, and runs going on at once wait for one
    /// another there. Shared by the store's clones.
    cache: Arc<Mutex<Option<Committed>>>,
}

impl Store {
    /// `dir` is the runner directory (`$PARACHUTE_HOME/runner`).
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store {
            dir: dir.into(),
            cache: Arc::default(),
        }
    }

    fn cache(&self) -> MutexGuard<'_, Option<Committed>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn io(path: &Path, source: io::Error) -> StateError {
        StateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn lock_file(&self, name: &str) -> Result<File, StateError> {
        let dir = self.dir.join(LOCKS_DIR);
        files::create_private_dir(&dir).map_err(|e| Self::io(&dir, e))?;
        let path = dir.join(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(files::FILE_MODE)
            .open(&path)
            .map_err(|e| Self::io(&path, e))
    }

    /// Takes the state lock (waiting for it) and reads the state.
    pub fn lock(&self) -> Result<Locked, StateError> {
        let file = self.lock_file("state.lock")?;
        file.lock()
            .map_err(|e| Self::io(&self.dir.join(LOCKS_DIR).join("state.lock"), e))?;
        let lock = Lock { _file: file };
        // Taken out either way: a lock dropped without commit may have
        // changed it.
        let cached = self.cache().take();
        let (state, bytes) = self.load_with_bytes(true, cached)?;
        // What `commit` compares with: the file as read, or what an empty
        // state would be written as (so a pass that changes nothing writes
        // nothing, even the first).
        let original = match bytes {
            Some(bytes) => bytes,
            None => serialized(&state).map_err(|e| Self::io(&self.state_path(), e))?,
        };
        Ok(Locked {
            path: self.state_path(),
            original,
            state,
            cache: Arc::clone(&self.cache),
            _lock: lock,
        })
    }

    /// Reads the state without the lock (for listings). A missing file is
    /// an empty state; so is a damaged one (logged), which only a pass
    /// holding the lock moves aside.
    pub fn read(&self) -> Result<State, StateError> {
        match self.load(false) {
            Err(e @ StateError::Damaged { .. }) => {
                log::warn!("{e}");
                Ok(State {
                    version: VERSION,
                    ..State::default()
                })
            }
            other => other,
        }
    }

    /// Reads the state without the lock; a damaged file is an error.
    pub fn read_checked(&self) -> Result<State, StateError> {
        self.load(false)
    }

    fn load(&self, locked: bool) -> Result<State, StateError> {
        self.load_with_bytes(locked, None).map(|(state, _)| state)
    }

    /// The state, and the bytes it was read from (`None`: no file, or a
    /// damaged one moved aside). `cached`, if its bytes are the file's, is
    /// the state without a parse.
    fn load_with_bytes(
        &self,
        locked: bool,
        cached: Option<Committed>,
    ) -> Result<(State, Option<Vec<u8>>), StateError> {
        let path = self.state_path();
        let Some(bytes) = files::read_optional(&path, MAX_STATE).map_err(|e| Self::io(&path, e))?
        else {
            let empty = State {
                version: VERSION,
                ..State::default()
            };
            return Ok((empty, None));
        };
        if let Some((_, state)) = cached.filter(|(b, _)| *b == bytes) {
            return Ok((state, Some(bytes)));
        }
        match serde_json::from_slice::<State>(&bytes) {
            Ok(state) if state.version > VERSION => Err(StateError::Version {
                path,
                found: state.version,
            }),
            Ok(mut state) => {
                state.version = VERSION;
                Ok((state, Some(bytes)))
            }
            Err(e) if !locked => Err(StateError::Damaged {
                path,
                detail: e.to_string(),
            }),
            Err(e) => {
                // Written atomically, so this is damage from outside. Keep
                // the file for inspection and start afresh: every job then
                // waits for its next slot, so nothing runs twice.
                let aside = self.dir.join(format!(
                    "{STATE_FILE}.corrupt-{}",
                    Timestamp::now().as_second()
                ));
                log::error!(
                    "{}: unreadable ({e}); moved to {} and starting with empty state",
                    path.display(),
                    aside.display()
                );
                let _ = fs::rename(&path, &aside);
                let empty = State {
                    version: VERSION,
                    ..State::default()
                };
                Ok((empty, None))
            }
        }
    }

    /// Pauses (`Some`) or resumes (`None`) jobs.
    /// Pauses (`Some`) or resumes (`None`) jobs at `now`. A resume moves
    /// `checked_through` to `now`: the slots that passed while paused are
    /// skipped, even when no pass saw the job paused (SPEC §7.5).
    pub fn set_paused(
        &self,
        paths: &[String],
        paused: Option<Paused>,
        now: Timestamp,
    ) -> Result<(), StateError> {
        let mut locked = self.lock()?;
        for path in paths {
            match &paused {
                Some(p) => {
                    locked.state.paused.insert(path.clone(), p.clone());
                }
                None => {
                    if locked.state.paused.remove(path).is_some()
                        && let Some(entry) = locked.state.jobs.get_mut(path)
                    {
                        entry.checked_through = entry.checked_through.max(now);
                    }
                }
            }
        }
        locked.commit()
    }

    /// Notes that a scheduled pass happened at `now` (for `doctor`: is cron
    /// running us?). A small file of its own, so a pass that changes
    /// nothing does not rewrite state.json.
    pub fn record_pass(&self, now: Timestamp) {
        let path = self.dir.join(LAST_PASS_FILE);
        let _ = files::write_ephemeral(&path, format!("{now}\n").as_bytes());
    }

    /// When the last scheduled pass happened, if one is recorded.
    pub fn last_pass(&self) -> Option<Timestamp> {
        let bytes = files::read_capped(&self.dir.join(LAST_PASS_FILE), 1 << 10).ok()?;
        std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
    }

    /// Tries the lock of one job. `Ok(None)` if another run holds it.
    pub fn try_lock_job(&self, job_path: &str) -> Result<Option<Lock>, StateError> {
        let name = job_lock_name(job_path);
        let file = self.lock_file(&name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(Self::io(&self.dir.join(LOCKS_DIR).join(name), e)),
        }
    }
}

/// The lock file name of a job: its path with everything but letters,
/// digits, `-`, `_` and `.` escaped, so every path has its own file.
pub fn job_lock_name(job_path: &str) -> String {
    let mut name = String::from("job-");
    for b in job_path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    // File names are at most 255 bytes; long paths share a hashed name.
    if name.len() > 200 {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(job_path.as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        name = format!("job-{}-{hex}", &name[4..100].trim_end_matches('%'));
    }
    name.push_str(".lock");
    name
}

/// The state, read under the state lock. `commit` writes it back if it
/// changed; dropping it releases the lock without writing.
pub struct Locked {
    path: PathBuf,
    /// The file as it was read. Comparing the new bytes with it costs less
    /// than keeping a copy of the state to compare with (a pass over 1,000
    /// jobs: a clone, its drop and a deep comparison).
    original: Vec<u8>,
    pub state: State,
    cache: Arc<Mutex<Option<Committed>>>,
    _lock: Lock,
}

impl Locked {
    pub fn commit(self) -> Result<(), StateError> {
        let bytes = serialized(&self.state).map_err(|e| Store::io(&self.path, e))?;
        if bytes == self.original {
            self.keep(bytes);
            return Ok(());
        }
        let written = match files::write_atomic(&self.path, &bytes) {
            Err(e) if files::is_full(&e) => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                if !files::release_reserve(dir) {
                    return Err(Store::io(&self.path, e));
                }
                log::error!(
                    "the disk of {} is full: used the runner's reserve to record state; free some space",
                    dir.display()
                );
                files::write_atomic(&self.path, &bytes).map_err(|e| Store::io(&self.path, e))
            }
            other => other.map_err(|e| Store::io(&self.path, e)),
        };
        if written.is_ok() {
            self.keep(bytes);
        }
        written
    }

    /// Leaves the state, now the file's `bytes`, for the next lock (the
    /// state lock is still held: no one else wrote meanwhile).
    fn keep(self, bytes: Vec<u8>) {
        let Locked {
            state,
            cache,
            _lock,
            ..
        } = self;
        *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((bytes, state));
        drop(_lock);
    }
}

/// The state file's bytes: compact JSON (it is rewritten after every run)
/// and a newline.
fn serialized(state: &State) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instant::t;

    #[test]
    fn lock_names() {
        assert_eq!(
            job_lock_name("jobs/daily brief"),
            "job-jobs%2Fdaily%20brief.lock"
        );
        assert_ne!(job_lock_name("a/b"), job_lock_name("a%2Fb"));
        let long = "x/".repeat(300);
        let name = job_lock_name(&long);
        assert!(name.len() < 255, "{}", name.len());
        assert_ne!(name, job_lock_name(&"x/".repeat(301)));
    }

    #[test]
    fn a_commit_that_changes_nothing_writes_nothing() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("pr-state-{}", crate::random::hex(6)));
        let store = Store::new(&dir);
        let file = dir.join(STATE_FILE);
        // No file, nothing changed: still no file.
        store.lock().unwrap().commit().unwrap();
        assert!(!file.exists());
        let mut locked = store.lock().unwrap();
        let paused = Paused {
            by: "test".into(),
            at: t("2026-01-01T00:00:00Z"),
        };
        locked.state.paused.insert("jobs/j".into(), paused);
        locked.commit().unwrap();
        let inode = fs::metadata(&file).unwrap().ino();
        // Read and committed as it was: the same file, not a new one.
        store.lock().unwrap().commit().unwrap();
        assert_eq!(fs::metadata(&file).unwrap().ino(), inode);
        let mut locked = store.lock().unwrap();
        locked.state.paused.clear();
        locked.commit().unwrap();
        assert_ne!(fs::metadata(&file).unwrap().ino(), inode);
        assert!(store.read().unwrap().paused.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_lock_takes_its_last_commit_only_while_the_file_holds_it() {
        let dir = std::env::temp_dir().join(format!("pr-state-{}", crate::random::hex(6)));
        let store = Store::new(&dir);
        let paused = |by: &str| Paused {
            by: by.into(),
            at: t("2026-01-01T00:00:00Z"),
        };
        let mut locked = store.lock().unwrap();
        locked.state.paused.insert("jobs/a".into(), paused("me"));
        locked.commit().unwrap();
        // Another writer (another process, or a hand) changes the file.
        let mut other = store.read().unwrap();
        other.paused.insert("jobs/b".into(), paused("them"));
        fs::write(dir.join(STATE_FILE), serialized(&other).unwrap()).unwrap();
        assert_eq!(store.lock().unwrap().state, other);
        // A lock dropped without commit does not leave its changes behind.
        let mut locked = store.lock().unwrap();
        locked.state.paused.clear();
        drop(locked);
        assert_eq!(store.lock().unwrap().state, other);
        // A clone of the store shares what the last commit left.
        let mut locked = store.clone().lock().unwrap();
        locked.state.paused.remove("jobs/b");
        locked.commit().unwrap();
        let state = store.lock().unwrap().state.clone();
        assert_eq!(state.paused.keys().collect::<Vec<_>>(), ["jobs/a"]);
        assert_eq!(store.read().unwrap(), state);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn store_round_trip_and_locks() {
        let dir = std::env::temp_dir().join(format!("pr-state-{}", crate::random::hex(6)));
        let store = Store::new(&dir);
        let mut locked = store.lock().unwrap();
        let entry = JobState {
            schedule: "* * * * *".into(),
            timezone: "UTC".into(),
            checked_through: t("2026-01-01T00:00:00Z"),
            last_run: None,
            running: None,
            note: None,
        };
        locked.state.jobs.insert("jobs/j".into(), entry);
        locked.commit().unwrap();
        assert_eq!(store.read().unwrap().jobs["jobs/j"].schedule, "* * * * *");
        let held = store.try_lock_job("jobs/j").unwrap().unwrap();
        assert!(store.try_lock_job("jobs/j").unwrap().is_none());
        drop(held);
        assert!(store.try_lock_job("jobs/j").unwrap().is_some());
        fs::write(dir.join(STATE_FILE), "{broken").unwrap();
        // A damaged file reads as empty; only the lock holder moves it.
        let aside = |dir: &Path| {
            fs::read_dir(dir).unwrap().flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-")
            })
        };
        assert!(store.read().unwrap().jobs.is_empty());
        assert!(matches!(
            store.read_checked(),
            Err(StateError::Damaged { .. })
        ));
        assert!(!aside(&dir));
        assert!(store.lock().unwrap().state.jobs.is_empty());
        assert!(aside(&dir));
        fs::write(dir.join(STATE_FILE), "{\"version\":9,\"jobs\":{}}").unwrap();
        assert!(
            store
                .read()
                .unwrap_err()
                .to_string()
                .contains("newer parachute-runner")
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
