//! Output notes (SPEC §6.3, §6.4): the note a run leaves, its delivery to
//! the vault with retries and the conflict suffix, and the outbox that
//! keeps every note the vault has not accepted yet.
//!
//! Delivery is idempotent by run id: when a path is taken, the note there
//! is read back, and if it is this run's own note (a retry after a lost
//! answer) the delivery is done. So an output is never written twice.

use std::collections::HashSet;
use std::fs::{self, File, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::agent;
use crate::files;
use crate::job::FAILED_TAG;
use crate::state::Trigger;
use crate::vault::rest::RETRY_DELAYS;
use crate::vault::{Created, NewNote, Vault, VaultError};

pub const OUTBOX_DIR: &str = "outbox";

/// The time within which an outbox delivery may start a retry (SPEC §6.4:
/// 3 tries within about 10 s).
pub const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// `run_stderr_tail` keeps this many bytes.
pub const STDERR_TAIL_BYTES: usize = 2048;
/// The line that ends a truncated output.
pub const TRUNCATED_LINE: &str = "[output truncated at 8 MiB]";

/// Facts about a run that every note carries.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub run_id: String,
    pub job_id: String,
    pub job_path: String,
    pub model: String,
    pub trigger: Trigger,
    pub slot: Option<Timestamp>,
    pub started_at: Timestamp,
    /// The success path; failures go to `<path>.failed`.
    pub output_path: String,
    /// `job-run` first.
    pub tags: Vec<String>,
}

/// How a run ended, as far as the note is concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    Success {
        stdout: String,
        truncated: bool,
    },
    Failure {
        /// One line: `claude -p exited with code 1`, `template error: …`.
        error: String,
        exit_code: Option<i32>,
        stderr_tail: String,
        truncated: bool,
    },
}

impl Ending {
    /// Classifies an agent outcome (SPEC §6.3).
    /// Takes the stdout out of `outcome` (it may be 8 MiB: not copied).
    pub fn from_agent(outcome: &mut agent::Outcome, bin: &str, timeout: Duration) -> Ending {
        let stderr_tail = agent::tail_text(&outcome.stderr_tail, STDERR_TAIL_BYTES);
        let failure = |error: String| Ending::Failure {
            error,
            exit_code: outcome.exit_code,
            stderr_tail: stderr_tail.clone(),
            truncated: outcome.stdout_truncated,
        };
        if let Some(e) = &outcome.spawn_error {
            return failure(format!("could not start {bin}: {e}"));
        }
        match outcome.stopped {
            Some(agent::Stopped::Timeout) => {
                return failure(format!(
                    "claude -p timed out after {}ms",
                    timeout.as_millis()
                ));
            }
            Some(agent::Stopped::Cancelled) => {
                return failure("interrupted: runner shutting down".to_string());
            }
            None => {}
        }
        match outcome.exit_code {
            Some(0) => {}
            Some(code) => return failure(format!("claude -p exited with code {code}")),
            None => return failure("claude -p exited without a status".to_string()),
        }
        let stdout = trim_in_place(into_text(std::mem::take(&mut outcome.stdout)));
        if stdout.is_empty() {
            return failure("claude -p produced empty stdout".to_string());
        }
        Ending::Success {
            stdout,
            truncated: outcome.stdout_truncated,
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Ending::Success { .. })
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Ending::Success { .. } => None,
            Ending::Failure { error, .. } => Some(error),
        }
    }
}

/// Bytes as text, without a copy when they are valid UTF-8.
fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `s.trim()` without a copy.
fn trim_in_place(mut s: String) -> String {
    let end = s.trim_end().len();
    s.truncate(end);
    let start = s.len() - s.trim_start().len();
    s.drain(..start);
    s
}

/// The note for a run (SPEC §6.3).
pub fn note(info: &RunInfo, ending: Ending, duration: Duration) -> NewNote {
    let mut m = Map::new();
    m.insert("parent_job_id".into(), Value::from(info.job_id.clone()));
    m.insert("parent_job_path".into(), Value::from(info.job_path.clone()));
    m.insert(
        "run_started_at".into(),
        Value::from(format!("{:.3}", info.started_at)),
    );
    m.insert(
        "run_duration_ms".into(),
        Value::from(duration.as_millis().min(u64::MAX as u128) as u64),
    );
    m.insert("run_id".into(), Value::from(info.run_id.clone()));
    m.insert("model".into(), Value::from(info.model.clone()));
    m.insert("run_trigger".into(), Value::from(info.trigger.as_str()));
    if let Some(slot) = info.slot {
        m.insert(
            "run_scheduled_for".into(),
            Value::from(format!("{slot:.0}")),
        );
    }
    match ending {
        Ending::Success { stdout, truncated } => {
            m.insert("run_exit_code".into(), Value::from(0));
            let mut content = stdout;
            if truncated {
                m.insert("run_output_truncated".into(), Value::from(true));
                content.push('\n');
                content.push_str(TRUNCATED_LINE);
            }
            NewNote {
                path: info.output_path.clone(),
                content,
                tags: info.tags.clone(),
                metadata: m,
            }
        }
        Ending::Failure {
            error,
            exit_code,
            stderr_tail,
            truncated,
        } => {
            let tail = if stderr_tail.is_empty() {
                "(empty)"
            } else {
                stderr_tail.as_str()
            };
            let content = format!(
                "# job-run failed\n\n**Reason:** {error}\n\n## stderr (tail)\n\n```\n{tail}\n```\n"
            );
            m.insert(
                "run_exit_code".into(),
                exit_code.map_or(Value::Null, Value::from),
            );
            m.insert("run_error".into(), Value::from(error));
            m.insert("run_stderr_tail".into(), Value::from(stderr_tail));
            if truncated {
                m.insert("run_output_truncated".into(), Value::from(true));
            }
            let mut tags = info.tags.clone();
            if !tags.iter().any(|t| t == FAILED_TAG) {
                tags.push(FAILED_TAG.to_string());
            }
            NewNote {
                path: format!("{}.failed", info.output_path),
                content,
                tags,
                metadata: m,
            }
        }
    }
}

/// Writes `note` to the vault: 3 tries with backoff on transient errors,
/// the `-<run id prefix>` suffix on a conflict. Returns the path written.
/// With `window` (the note is safe in the outbox), no retry starts after
/// it: a vault that stalls each request to its timeout leaves the note
/// queued instead of holding the run. Without, all 3 tries are made.
pub fn deliver(
    vault: &dyn Vault,
    note: &NewNote,
    window: Option<std::time::Duration>,
) -> Result<String, VaultError> {
    let start = std::time::Instant::now();
    let mut attempt = 0;
    loop {
        match deliver_once(vault, note) {
            Ok(path) => return Ok(path),
            Err(e)
                if e.is_transient()
                    && attempt < RETRY_DELAYS.len()
                    && window.is_none_or(|w| start.elapsed() + RETRY_DELAYS[attempt] <= w) =>
            {
                log::warn!("{e}; trying again in {}s", RETRY_DELAYS[attempt].as_secs());
                std::thread::sleep(RETRY_DELAYS[attempt]);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn deliver_once(vault: &dyn Vault, note: &NewNote) -> Result<String, VaultError> {
    if let Created::At(path) = vault.create_note(note)? {
        return Ok(path);
    }
    if is_ours(vault, &note.path, note)? {
        return Ok(note.path.clone());
    }
    let prefix: String = note.run_id().unwrap_or("").chars().take(8).collect();
    let mut other = note.clone();
    other.path = format!("{}-{prefix}", note.path);
    if let Created::At(path) = vault.create_note(&other)? {
        return Ok(path);
    }
    if is_ours(vault, &other.path, note)? {
        return Ok(other.path);
    }
    Err(VaultError::Status {
        what: format!("writing note {}", note.path),
        status: 409,
        message: format!(
            "both {} and {} are taken by other notes",
            note.path, other.path
        ),
    })
}

/// Whether the note at `path` is this run's (same `run_id`).
fn is_ours(vault: &dyn Vault, path: &str, note: &NewNote) -> Result<bool, VaultError> {
    let Some(run_id) = note.run_id() else {
        return Ok(false);
    };
    Ok(vault
        .get_note(path)?
        .is_some_and(|n| n.run_id() == Some(run_id)))
}

/// One queued note on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    pub queued_at: Timestamp,
    pub run_id: String,
    pub job_path: String,
    /// Whether the run succeeded (for the state record).
    pub ok: bool,
    pub note: NewNote,
}

/// What a delivery pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub delivered: usize,
    pub failed: usize,
    /// Left for the run that is still recording them, or held by another
    /// runner right now.
    pub skipped: usize,
}

/// `runner/outbox/`: one `<run_id>.json` per note not yet accepted.
#[derive(Clone, Debug)]
pub struct Outbox {
    dir: PathBuf,
}

/// The result of delivering one entry.
#[derive(Debug)]
pub enum Delivery {
    /// Accepted at this path; the entry is gone.
    Delivered(String),
    /// Another runner is delivering it, or already did.
    Busy,
    /// Still queued.
    Failed(VaultError),
}

impl Outbox {
    pub fn new(runner_dir: &Path) -> Outbox {
        Outbox {
            dir: runner_dir.join(OUTBOX_DIR),
        }
    }

    pub fn path_for(&self, run_id: &str) -> PathBuf {
        // Run ids are ours (UUIDs), but keep any odd character out of the
        // file name all the same.
        let safe: String = run_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    /// Queues a note (durably) before anything else happens to it.
    pub fn spool(
        &self,
        job_path: &str,
        ok: bool,
        note: &NewNote,
        now: Timestamp,
    ) -> io::Result<PathBuf> {
        /// `Entry`, borrowed: the note may be megabytes.
        #[derive(Serialize)]
        struct EntryRef<'a> {
            version: u32,
            queued_at: Timestamp,
            run_id: &'a str,
            job_path: &'a str,
            ok: bool,
            note: &'a NewNote,
        }
        files::create_private_dir(&self.dir)?;
        let run_id = note.run_id().unwrap_or_default();
        let entry = EntryRef {
            version: 1,
            queued_at: now,
            run_id,
            job_path,
            ok,
            note,
        };
        let path = self.path_for(run_id);
        files::write_atomic_with(&path, |w| {
            serde_json::to_writer(w, &entry).map_err(io::Error::other)
        })?;
        Ok(path)
    }

    pub fn contains(&self, run_id: &str) -> bool {
        self.path_for(run_id).exists()
    }

    /// Reads an entry without locking it.
    pub fn read(&self, run_id: &str) -> Option<Entry> {
        let bytes = fs::read(self.path_for(run_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Entries, oldest first.
    pub fn entries(&self) -> Vec<PathBuf> {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries: Vec<(Option<std::time::SystemTime>, PathBuf)> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| (fs::metadata(&p).and_then(|m| m.modified()).ok(), p))
            .collect();
        entries.sort();
        entries.into_iter().map(|(_, p)| p).collect()
    }

    pub fn depth(&self) -> usize {
        self.entries().len()
    }

    /// Delivers one entry under its own lock, so two runners never send
    /// the same one; deletes it only once the vault has accepted it.
    pub fn deliver_entry(&self, vault: &dyn Vault, path: &Path) -> Delivery {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Delivery::Busy,
            Err(e) => return Delivery::Failed(io_error(path, e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Delivery::Busy,
            Err(TryLockError::Error(e)) => return Delivery::Failed(io_error(path, e)),
        }
        // Delivered and removed by another runner between our open and
        // our lock: nothing left to do.
        if file.metadata().map(|m| m.nlink() == 0).unwrap_or(true) {
            return Delivery::Busy;
        }
        let parsed =
            serde_json::from_reader::<_, Entry>(io::BufReader::with_capacity(64 << 10, &mut file));
        let entry: Entry = match parsed {
            Ok(entry) => entry,
            Err(e) => {
                return Delivery::Failed(VaultError::Io {
                    what: format!("reading outbox entry {}", path.display()),
                    detail: format!("not a valid entry: {e}; move it away to silence this"),
                });
            }
        };
        match deliver(vault, &entry.note, Some(RETRY_WINDOW)) {
            Ok(written) => {
                if let Err(e) = fs::remove_file(path) {
                    log::error!(
                        "{}: delivered, but could not be removed: {e}",
                        path.display()
                    );
                }
                Delivery::Delivered(written)
            }
            Err(e) => Delivery::Failed(e),
        }
    }

    /// Delivers every entry, oldest first, except those of runs still
    /// marked running: their runner records them first, or recovery
    /// settles them if it died. `running` is asked after the listing, so
    /// an entry listed here was spooled before the answer was read.
    /// `running` answering `None` (state unreadable) delivers nothing.
    pub fn sweep(
        &self,
        vault: &dyn Vault,
        running: impl FnOnce() -> Option<HashSet<String>>,
    ) -> Swept {
        let entries = self.entries();
        if entries.is_empty() {
            return Swept::default();
        }
        let Some(exclude) = running() else {
            return Swept {
                skipped: entries.len(),
                ..Swept::default()
            };
        };
        let mut swept = Swept::default();
        for path in entries {
            let run_id = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if exclude.contains(&run_id) {
                swept.skipped += 1;
                continue;
            }
            match self.deliver_entry(vault, &path) {
                Delivery::Delivered(at) => {
                    log::info!("outbox: delivered run {run_id} to {at}");
                    swept.delivered += 1;
                }
                Delivery::Busy => swept.skipped += 1,
                Delivery::Failed(e) => {
                    log::warn!("outbox: run {run_id} stays queued: {e}");
                    swept.failed += 1;
                    // The vault is down: the rest would only wait for the
                    // same timeouts.
                    if e.is_transient() {
                        break;
                    }
                }
            }
        }
        swept
    }
}

fn io_error(path: &Path, e: io::Error) -> VaultError {
    VaultError::Io {
        what: format!("outbox entry {}", path.display()),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            run_id: "0123abcd-0000-4000-8000-000000000000".into(),
            job_id: "id-1".into(),
            job_path: "jobs/brief".into(),
            model: "m".into(),
            trigger: Trigger::Schedule,
            slot: Some("2026-01-01T08:00:00Z".parse().unwrap()),
            started_at: "2026-01-01T08:00:01.5Z".parse().unwrap(),
            output_path: "jobs/runs/brief/x".into(),
            tags: vec!["job-run".into(), "digest".into()],
        }
    }

    fn outcome(exit: Option<i32>, stdout: &str) -> agent::Outcome {
        agent::Outcome {
            exit_code: exit,
            stdout: stdout.as_bytes().to_vec(),
            stderr_tail: b"warn\n".to_vec(),
            ..agent::Outcome::default()
        }
    }

    #[test]
    fn success_note_has_exactly_the_contract() {
        let ending = Ending::from_agent(
            &mut outcome(Some(0), "\n  hello\n\n"),
            "claude",
            Duration::from_secs(600),
        );
        let n = note(&info(), ending, Duration::from_millis(1234));
        assert_eq!(n.path, "jobs/runs/brief/x");
        assert_eq!(n.content, "hello");
        assert_eq!(n.tags, ["job-run", "digest"]);
        assert_eq!(
            Value::Object(n.metadata),
            serde_json::json!({
                "parent_job_id": "id-1",
                "parent_job_path": "jobs/brief",
                "run_started_at": "2026-01-01T08:00:01.500Z",
                "run_duration_ms": 1234,
                "run_exit_code": 0,
                "run_id": "0123abcd-0000-4000-8000-000000000000",
                "model": "m",
                "run_trigger": "schedule",
                "run_scheduled_for": "2026-01-01T08:00:00Z"
            })
        );
    }

    #[test]
    fn failure_kinds() {
        let t = Duration::from_secs(600);
        let cases = [
            (
                outcome(Some(2), "partial"),
                "claude -p exited with code 2",
                Some(2),
            ),
            (
                outcome(Some(0), " \n\t"),
                "claude -p produced empty stdout",
                Some(0),
            ),
            (
                agent::Outcome {
                    stopped: Some(agent::Stopped::Timeout),
                    exit_code: Some(124),
                    ..outcome(None, "")
                },
                "claude -p timed out after 600000ms",
                Some(124),
            ),
            (
                agent::Outcome {
                    spawn_error: Some("No such file or directory (os error 2)".into()),
                    ..outcome(None, "")
                },
                "could not start /x/claude: No such file or directory (os error 2)",
                None,
            ),
        ];
        for (mut o, want, code) in cases {
            let ending = Ending::from_agent(&mut o, "/x/claude", t);
            assert_eq!(ending.error(), Some(want));
            let n = note(&info(), ending, Duration::from_millis(5));
            assert_eq!(n.path, "jobs/runs/brief/x.failed");
            assert_eq!(n.tags, ["job-run", "digest", "job-run-failed"]);
            assert_eq!(n.metadata["run_error"], want);
            assert_eq!(
                n.metadata["run_exit_code"],
                code.map_or(Value::Null, Value::from)
            );
            assert_eq!(n.metadata["run_stderr_tail"], "warn\n");
            assert_eq!(
                n.content,
                format!(
                    "# job-run failed\n\n**Reason:** {want}\n\n## stderr (tail)\n\n```\nwarn\n\n```\n"
                )
            );
        }
    }

    #[test]
    fn empty_stderr_and_truncation() {
        let ending = Ending::Failure {
            error: "e".into(),
            exit_code: None,
            stderr_tail: String::new(),
            truncated: false,
        };
        assert!(
            note(&info(), ending, Duration::ZERO)
                .content
                .contains("```\n(empty)\n```")
        );
        let ending = Ending::Success {
            stdout: "big".into(),
            truncated: true,
        };
        let n = note(&info(), ending.clone(), Duration::ZERO);
        assert_eq!(n.content, "big\n[output truncated at 8 MiB]");
        assert_eq!(n.metadata["run_output_truncated"], true);
        let mut manual = info();
        manual.slot = None;
        manual.trigger = Trigger::Manual;
        let n = note(&manual, ending, Duration::ZERO);
        assert!(!n.metadata.contains_key("run_scheduled_for"));
        assert_eq!(n.metadata["run_trigger"], "manual");
    }

    #[test]
    fn stderr_tail_is_the_last_2048_bytes() {
        let mut o = outcome(Some(1), "");
        o.stderr_tail = format!("{}é{}", "a".repeat(3000), "b".repeat(2047)).into_bytes();
        let Ending::Failure { stderr_tail, .. } =
            Ending::from_agent(&mut o, "claude", Duration::from_secs(1))
        else {
            panic!()
        };
        // 2048 bytes back lands inside `é`: the cut moves to the next char.
        assert_eq!(stderr_tail, "b".repeat(2047));
    }
}
