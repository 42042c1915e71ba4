//! Scheduling state shared by `once` and `serve` (SPEC §7): state.json,
//! the due decision, and the lock files that make ten concurrent runners
//! fire each slot exactly once.
//!
//! `decide` is pure (it takes `now`) and only edits the in-memory entry;
//! `Store` does the locked read-modify-write of the file. Running a job is
//! left to `run`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::files;
use crate::job::Job;
use crate::schedule::{Schedule, Zone};

pub const STATE_FILE: &str = "state.json";
pub const LOCKS_DIR: &str = "locks";
const VERSION: u32 = 1;

/// How a run was started (`run_trigger`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Schedule,
    CatchUp,
    Manual,
    Http,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch-up",
            Trigger::Manual => "manual",
            Trigger::Http => "http",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub jobs: BTreeMap<String, JobState>,
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

/// A fingerprint of what a job is checked from: the note's content and
/// metadata, the default zone and this version of the runner.
///
/// FNV-1a, 64 bits: it only has to notice edits, on every note of every
/// pass, so it is cheap rather than cryptographic (whoever could forge a
/// collision can edit the note anyway).
pub fn note_hash(
    content: &str,
    metadata: Option<&serde_json::Value>,
    default_zone: &str,
) -> String {
    fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let mut h = fnv(0xcbf2_9ce4_8422_2325, content.as_bytes());
    h = fnv(h, &[0]);
    if let Some(m) = metadata {
        h = fnv(h, m.to_string().as_bytes());
    }
    h = fnv(h, &[0]);
    h = fnv(h, default_zone.as_bytes());
    // Another version may check notes differently.
    h = fnv(h, env!("CARGO_PKG_VERSION").as_bytes());
    format!("{h:016x}")
}

/// What the due decision needs of a job.
#[derive(Clone, Debug)]
pub struct Plan {
    pub schedule: Schedule,
    pub schedule_text: String,
    pub zone: Zone,
    pub disabled: bool,
    pub catch_up: bool,
}

impl From<&Job> for Plan {
    fn from(job: &Job) -> Plan {
        Plan {
            schedule: job.schedule.clone(),
            schedule_text: job.schedule_text.clone(),
            zone: job.zone.clone(),
            disabled: job.disabled,
            catch_up: job.catch_up,
        }
    }
}

impl Plan {
    /// The plan remembered in a state entry, if its note is unchanged
    /// (`hash`). `zones` caches zone lookups over a pass.
    pub fn remembered(
        entry: &JobState,
        hash: &str,
        zones: &mut std::collections::HashMap<String, Zone>,
    ) -> Option<Plan> {
        let seen = entry.note.as_ref().filter(|s| s.hash == hash)?;
        let schedule = Schedule::parse(&entry.schedule).ok()?;
        let zone = match zones.get(&entry.timezone) {
            Some(z) => z.clone(),
            None => {
                let z = Zone::get(&entry.timezone).ok()?;
                zones.insert(entry.timezone.clone(), z.clone());
                z
            }
        };
        Some(Plan {
            schedule,
            schedule_text: entry.schedule.clone(),
            zone,
            disabled: seen.disabled,
            catch_up: seen.catch_up,
        })
    }

    /// What to remember of it.
    pub fn seen(&self, hash: String) -> Seen {
        Seen {
            hash,
            disabled: self.disabled,
            catch_up: self.catch_up,
        }
    }
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
    pub pid: u32,
    pub trigger: Trigger,
    /// Where the success note would go (the failure note adds `.failed`).
    pub output_path: String,
    pub job_id: String,
    pub model: String,
    #[serde(default)]
    pub output_tags: Vec<String>,
}

/// What the due decision says about one job at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// First seen, or its schedule or zone changed: it fires from its next
    /// slot on.
    New,
    /// `manual`: never fires on its own.
    Manual,
    /// Disabled by the note or globally.
    Disabled,
    /// No slot since the last check.
    NotDue,
    /// Run now, for this slot (missed earlier slots coalesced into it).
    Run { slot: Timestamp, trigger: Trigger },
    /// A late slot of a `catch_up: false` job: skipped.
    SkipLate { slot: Timestamp },
}

/// Settings the decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub poll_interval_seconds: u64,
    pub globally_disabled: bool,
}

impl Policy {
    /// A slot older than this is late: `catch-up` (or skipped).
    pub fn late_after(&self) -> SignedDuration {
        let two_polls = self
            .poll_interval_seconds
            .saturating_mul(2)
            .min(i64::MAX as u64) as i64;
        SignedDuration::from_secs(two_polls.max(120))
    }
}

/// The due decision (SPEC §7.2) for `job` at `now`. Edits `entry` as the
/// decision requires; the caller commits it before starting any run.
pub fn decide(
    job: &Plan,
    entry: &mut Option<JobState>,
    now: Timestamp,
    policy: Policy,
) -> Decision {
    let current = entry
        .as_mut()
        .filter(|e| e.schedule == job.schedule_text && e.timezone == job.zone.name);
    let Some(e) = current else {
        let (last_run, running) = entry
            .take()
            .map(|e| (e.last_run, e.running))
            .unwrap_or_default();
        *entry = Some(JobState {
            schedule: job.schedule_text.clone(),
            timezone: job.zone.name.clone(),
            checked_through: now,
            last_run,
            running,
            note: None,
        });
        return Decision::New;
    };
    if job.schedule == Schedule::Manual {
        return Decision::Manual;
    }
    let Some(slot) = latest_slot(&job.schedule, &job.zone.tz, e.checked_through, now) else {
        return if job.disabled || policy.globally_disabled {
            Decision::Disabled
        } else {
            Decision::NotDue
        };
    };
    // Slots were passed: whatever happens to them, they are handled.
    e.checked_through = now;
    if job.disabled || policy.globally_disabled {
        return Decision::Disabled;
    }
    let late = now.duration_since(slot) >= policy.late_after();
    match (late, job.catch_up) {
        (false, _) => Decision::Run {
            slot,
            trigger: Trigger::Schedule,
        },
        (true, true) => Decision::Run {
            slot,
            trigger: Trigger::CatchUp,
        },
        (true, false) => Decision::SkipLate { slot },
    }
}

/// The latest fire time in `(after, upto]`. Searches backwards in growing
/// windows, so a long downtime of a frequent schedule costs little.
pub fn latest_slot(
    schedule: &Schedule,
    tz: &jiff::tz::TimeZone,
    after: Timestamp,
    upto: Timestamp,
) -> Option<Timestamp> {
    if upto <= after {
        return None;
    }
    let mut window = SignedDuration::from_secs(120);
    loop {
        let start = upto
            .checked_sub(window)
            .ok()
            .filter(|s| *s > after)
            .unwrap_or(after);
        let mut at = start;
        let mut last = None;
        while let Some(next) = schedule.next_after(at, tz) {
            if next > upto {
                break;
            }
            last = Some(next);
            at = next;
        }
        if last.is_some() || start == after {
            return last;
        }
        window = window.checked_mul(2).unwrap_or(SignedDuration::MAX);
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

/// The runner directory's state file and locks.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// `dir` is the runner directory (`$PARACHUTE_HOME/runner`).
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
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
        let state = self.load(true)?;
        Ok(Locked {
            path: self.state_path(),
            original: state.clone(),
            state,
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
                    jobs: BTreeMap::new(),
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
        let path = self.state_path();
        let Some(bytes) = files::read_optional(&path).map_err(|e| Self::io(&path, e))? else {
            return Ok(State {
                version: VERSION,
                jobs: BTreeMap::new(),
            });
        };
        match serde_json::from_slice::<State>(&bytes) {
            Ok(state) if state.version > VERSION => Err(StateError::Version {
                path,
                found: state.version,
            }),
            Ok(mut state) => {
                state.version = VERSION;
                Ok(state)
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
                Ok(State {
                    version: VERSION,
                    jobs: BTreeMap::new(),
                })
            }
        }
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

    /// Tries an exclusive lock by name. `Ok(None)` if someone holds it.
    pub fn try_lock_named(&self, name: &str) -> Result<Option<Lock>, StateError> {
        let file = self.lock_file(name)?;
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
    original: State,
    pub state: State,
    _lock: Lock,
}

impl Locked {
    pub fn commit(self) -> Result<(), StateError> {
        if self.state == self.original {
            return Ok(());
        }
        // Compact: it is rewritten after every run.
        let mut bytes = serde_json::to_vec(&self.state)
            .map_err(|e| Store::io(&self.path, io::Error::other(e)))?;
        bytes.push(b'\n');
        files::write_atomic(&self.path, &bytes).map_err(|e| Store::io(&self.path, e))
    }
}

/// State timestamps as RFC 3339 text, read with a fast path for the form
/// this runner writes (`2026-01-01T08:00:00.123Z`): a pass reads one per
/// job, and jiff's general parser is several times slower.
mod instant {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        match parse_utc(&text) {
            Some(t) => Ok(t),
            None => text.parse().map_err(serde::de::Error::custom),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, or `None` for anything else.
    pub fn parse_utc(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            b.get(r)?.iter().try_fold(0i64, |n, c| {
                c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
            })
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let nanos = match &b[19..] {
            [b'Z'] => 0,
            [b'.', digits @ .., b'Z']
                if (1..=9).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) =>
            {
                let n = digits
                    .iter()
                    .fold(0i64, |n, c| n * 10 + i64::from(c - b'0'));
                n * 10i64.pow(9 - digits.len() as u32)
            }
            _ => return None,
        };
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days_in_month = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month[month as usize - 1]
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        // Days from 1970-01-01 (H. Hinnant's days_from_civil).
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Timestamp::new(
            days * 86_400 + hour * 3600 + minute * 60 + second,
            nanos as i32,
        )
        .ok()
    }
}

/// How long until `at`, from `now` (zero if past).
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Note;

    fn job(schedule: &str, extra: &str) -> Plan {
        let note = Note {
            id: "id".into(),
            path: Some("jobs/j".into()),
            content: format!(
                "---\nschedule: \"{schedule}\"\nmodel: m\nallowed_tools: Read\n{extra}---\nhi"
            ),
            ..Note::default()
        };
        Plan::from(&Job::from_note(&note, &Zone::utc()).unwrap())
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const POLICY: Policy = Policy {
        poll_interval_seconds: 60,
        globally_disabled: false,
    };

    #[test]
    fn a_new_job_waits_for_its_next_slot() {
        let j = job("* * * * *", "");
        let mut entry = None;
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T00:00:30Z"), POLICY),
            Decision::New
        );
        assert_eq!(
            entry.as_ref().unwrap().checked_through,
            t("2026-01-01T00:00:30Z")
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T00:01:05Z"), POLICY),
            Decision::Run {
                slot: t("2026-01-01T00:01:00Z"),
                trigger: Trigger::Schedule
            }
        );
    }

    #[test]
    fn due_exactly_once_around_its_slot() {
        let j = job("0 8 * * *", "");
        let mut entry = None;
        decide(&j, &mut entry, t("2026-01-01T07:00:00Z"), POLICY);
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T07:59:59Z"), POLICY),
            Decision::NotDue
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T08:00:00Z"), POLICY),
            Decision::Run {
                slot: t("2026-01-01T08:00:00Z"),
                trigger: Trigger::Schedule
            }
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T08:00:00Z"), POLICY),
            Decision::NotDue
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T08:00:59Z"), POLICY),
            Decision::NotDue
        );
        // A runner whose clock read earlier never moves the check back.
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T07:59:00Z"), POLICY),
            Decision::NotDue
        );
        assert_eq!(entry.unwrap().checked_through, t("2026-01-01T08:00:00Z"));
    }

    #[test]
    fn a_week_of_downtime_is_one_catch_up_run_for_the_latest_slot() {
        let j = job("*/5 * * * *", "");
        let mut entry = None;
        decide(&j, &mut entry, t("2026-01-01T00:00:00Z"), POLICY);
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-08T00:03:00Z"), POLICY),
            Decision::Run {
                slot: t("2026-01-08T00:00:00Z"),
                trigger: Trigger::CatchUp
            }
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-08T00:04:00Z"), POLICY),
            Decision::NotDue
        );
    }

    #[test]
    fn lateness_threshold_is_two_polls_or_two_minutes() {
        let j = job("0 8 * * *", "");
        let run = |now: &str, poll: u64| {
            let mut entry = None;
            decide(&j, &mut entry, t("2026-01-01T07:00:00Z"), POLICY);
            decide(
                &j,
                &mut entry,
                t(now),
                Policy {
                    poll_interval_seconds: poll,
                    globally_disabled: false,
                },
            )
        };
        let slot = t("2026-01-01T08:00:00Z");
        assert_eq!(
            run("2026-01-01T08:01:59Z", 60),
            Decision::Run {
                slot,
                trigger: Trigger::Schedule
            }
        );
        assert_eq!(
            run("2026-01-01T08:02:00Z", 60),
            Decision::Run {
                slot,
                trigger: Trigger::CatchUp
            }
        );
        assert_eq!(
            run("2026-01-01T08:09:59Z", 300),
            Decision::Run {
                slot,
                trigger: Trigger::Schedule
            }
        );
        assert_eq!(
            run("2026-01-01T08:10:00Z", 300),
            Decision::Run {
                slot,
                trigger: Trigger::CatchUp
            }
        );
    }

    #[test]
    fn catch_up_false_skips_late_slots() {
        let j = job("0 8 * * *", "catch_up: false\n");
        let mut entry = None;
        decide(&j, &mut entry, t("2026-01-01T07:00:00Z"), POLICY);
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-03T09:00:00Z"), POLICY),
            Decision::SkipLate {
                slot: t("2026-01-03T08:00:00Z")
            }
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-03T09:01:00Z"), POLICY),
            Decision::NotDue
        );
        // On time, it runs.
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-04T08:00:30Z"), POLICY),
            Decision::Run {
                slot: t("2026-01-04T08:00:00Z"),
                trigger: Trigger::Schedule
            }
        );
    }

    #[test]
    fn schedule_or_zone_change_resets() {
        let mut entry = None;
        decide(
            &job("0 8 * * *", ""),
            &mut entry,
            t("2026-01-01T00:00:00Z"),
            POLICY,
        );
        entry.as_mut().unwrap().last_run = Some(LastRun {
            run_id: "r".into(),
            status: "ok".into(),
            started_at: t("2026-01-01T00:00:00Z"),
            finished_at: t("2026-01-01T00:00:00Z"),
            output_path: "o".into(),
            trigger: Trigger::Manual,
        });
        assert_eq!(
            decide(
                &job("0 9 * * *", ""),
                &mut entry,
                t("2026-01-02T10:00:00Z"),
                POLICY
            ),
            Decision::New
        );
        assert!(
            entry.as_ref().unwrap().last_run.is_some(),
            "the last run is kept"
        );
        assert_eq!(
            decide(
                &job("0 9 * * *", "timezone: Europe/Paris\n"),
                &mut entry,
                t("2026-01-03T10:00:00Z"),
                POLICY
            ),
            Decision::New
        );
        assert_eq!(entry.unwrap().timezone, "Europe/Paris");
    }

    #[test]
    fn disabled_and_manual_never_run_and_do_not_pile_up() {
        let j = job("* * * * *", "disabled: true\n");
        let mut entry = None;
        decide(&j, &mut entry, t("2026-01-01T00:00:00Z"), POLICY);
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T05:00:00Z"), POLICY),
            Decision::Disabled
        );
        // Enabled again: the slots of the disabled time do not fire.
        let j = job("* * * * *", "");
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T05:00:30Z"), POLICY),
            Decision::NotDue
        );
        let off = Policy {
            globally_disabled: true,
            ..POLICY
        };
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T06:00:00Z"), off),
            Decision::Disabled
        );
        let m = job("manual", "");
        let mut entry = None;
        decide(&m, &mut entry, t("2026-01-01T00:00:00Z"), POLICY);
        assert_eq!(
            decide(&m, &mut entry, t("2027-01-01T00:00:00Z"), POLICY),
            Decision::Manual
        );
    }

    #[test]
    fn latest_slot_is_cheap_over_long_gaps() {
        let every_second = Schedule::parse("* * * * * *").unwrap();
        let tz = jiff::tz::TimeZone::UTC;
        assert_eq!(
            latest_slot(
                &every_second,
                &tz,
                t("2020-01-01T00:00:00Z"),
                t("2026-01-01T00:00:00.5Z")
            ),
            Some(t("2026-01-01T00:00:00Z"))
        );
        let yearly = Schedule::parse("@yearly").unwrap();
        assert_eq!(
            latest_slot(
                &yearly,
                &tz,
                t("2020-06-01T00:00:00Z"),
                t("2026-06-01T00:00:00Z")
            ),
            Some(t("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            latest_slot(
                &yearly,
                &tz,
                t("2026-01-01T00:00:00Z"),
                t("2026-06-01T00:00:00Z")
            ),
            None
        );
        assert_eq!(
            latest_slot(
                &yearly,
                &tz,
                t("2026-06-01T00:00:00Z"),
                t("2026-01-01T00:00:00Z")
            ),
            None
        );
    }

    #[test]
    fn fast_instants_agree_with_jiff() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2026-03-08T07:30:00Z",
            "2024-02-29T23:59:59.999999999Z",
            "2000-12-31T12:00:00.5Z",
            "1969-07-20T20:17:40.1Z",
            "9999-12-30T00:00:00Z",
            "0001-01-01T00:00:00Z",
        ] {
            let want: Timestamp = text.parse().unwrap();
            assert_eq!(instant::parse_utc(text), Some(want), "{text}");
        }
        for text in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00+01:00",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.1234567890Z",
            "x",
        ] {
            assert_eq!(instant::parse_utc(text), None, "{text}");
        }
        // Other forms still parse, through jiff.
        let entry: JobState = serde_json::from_str(
            r#"{"schedule":"x","timezone":"UTC","checked_through":"2026-01-01T01:00:00+01:00"}"#,
        )
        .unwrap();
        assert_eq!(entry.checked_through, t("2026-01-01T00:00:00Z"));
    }

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
    fn store_round_trip_and_locks() {
        let dir = std::env::temp_dir().join(format!("pr-state-{}", crate::random::hex(6)));
        let store = Store::new(&dir);
        let mut locked = store.lock().unwrap();
        let mut entry = None;
        decide(
            &job("* * * * *", ""),
            &mut entry,
            t("2026-01-01T00:00:00Z"),
            POLICY,
        );
        locked.state.jobs.insert("jobs/j".into(), entry.unwrap());
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
