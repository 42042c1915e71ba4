//! `runner/outbox/` (SPEC §6.4): every output note the vault has not
//! accepted yet, one `<run_id>.json` each, written durably before anything
//! else happens to the note. Delivery takes each entry's own lock, so two
//! runners never send the same one, and deletes it only once the vault has
//! accepted it.

use std::collections::HashSet;
use std::fs::{self, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::deliver::{RETRY_WINDOW, deliver};
use crate::files;
use crate::vault::{NewNote, Vault, VaultError};

pub const OUTBOX_DIR: &str = "outbox";
/// The largest entry read: an 8 MiB answer, JSON-escaped, and its metadata.
const MAX_ENTRY: u64 = 64 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    pub queued_at: Timestamp,
    pub run_id: String,
    pub job_path: String,
    /// Whether the run succeeded (for the state record).
    pub ok: bool,
    /// Its slot was claimed in the vault (SPEC §12): the note goes out
    /// only while the claim is still the run's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claimed: bool,
    pub note: NewNote,
}

/// What decides whether a claimed run's note may still be written
/// (coordination in the vault, SPEC §12).
pub trait Gate {
    /// Before the note of run `run_id` of `job_path` is written:
    /// `Ok(Some(token))` to write it, `Ok(None)` if it must never be
    /// (its claim was taken over), `Err` to try later.
    fn before(&self, job_path: &str, run_id: &str) -> Result<Option<String>, VaultError>;
    /// After it was accepted, with the token `before` gave.
    fn after(&self, job_path: &str, run_id: &str, token: String);
}

/// No coordination: every note goes out.
pub struct Open;

impl Gate for Open {
    fn before(&self, _: &str, _: &str) -> Result<Option<String>, VaultError> {
        Ok(Some(String::new()))
    }

    fn after(&self, _: &str, _: &str, _: String) {}
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
    /// Removed unwritten: its claim was taken over (why).
    Dropped(String),
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
        claimed: bool,
    ) -> io::Result<PathBuf> {
        /// `Entry`, borrowed: the note may be megabytes.
        #[derive(Serialize)]
        struct EntryRef<'a> {
            version: u32,
            queued_at: Timestamp,
            run_id: &'a str,
            job_path: &'a str,
            ok: bool,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            claimed: bool,
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
            claimed,
            note,
        };
        let path = self.path_for(run_id);
        files::write_atomic_with(&path, |w| {
            serde_json::to_writer(w, &entry).map_err(io::Error::other)
        })?;
        Ok(path)
    }

    /// Reads an entry without locking it.
    pub fn read(&self, run_id: &str) -> Option<Entry> {
        let bytes = files::read_capped(&self.path_for(run_id), MAX_ENTRY).ok()?;
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
    pub fn deliver_entry(&self, vault: &dyn Vault, path: &Path, gate: &dyn Gate) -> Delivery {
        let file = match files::open_regular(path) {
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
        let parsed = serde_json::from_reader::<_, Entry>(io::BufReader::with_capacity(
            64 << 10,
            io::Read::take(&file, MAX_ENTRY),
        ));
        let entry: Entry = match parsed {
            Ok(entry) => entry,
            Err(e) => {
                return Delivery::Failed(VaultError::Io {
                    what: format!("reading outbox entry {}", path.display()),
                    detail: format!("not a valid entry: {e}; move it away to silence this"),
                });
            }
        };
        let token = if entry.claimed {
            match gate.before(&entry.job_path, &entry.run_id) {
                Ok(Some(token)) => token,
                Ok(None) => {
                    let why = format!(
                        "its claim in the vault was taken over before its note could be written; the runner that took it over reported run {}",
                        entry.run_id
                    );
                    if let Err(e) = fs::remove_file(path) {
                        log::error!("{}: could not be removed: {e}", path.display());
                    }
                    return Delivery::Dropped(why);
                }
                Err(e) => return Delivery::Failed(e),
            }
        } else {
            String::new()
        };
        // A claimed note goes out in one try: the claim just renewed holds
        // for a lease, and a later try renews it again.
        let window = if entry.claimed {
            Some(std::time::Duration::ZERO)
        } else {
            Some(RETRY_WINDOW)
        };
        match deliver(vault, &entry.note, window) {
            Ok(written) => {
                if let Err(e) = fs::remove_file(path) {
                    log::error!(
                        "{}: delivered, but could not be removed: {e}",
                        path.display()
                    );
                }
                if entry.claimed {
                    gate.after(&entry.job_path, &entry.run_id, token);
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
        gate: &dyn Gate,
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
            match self.deliver_entry(vault, &path, gate) {
                Delivery::Delivered(at) => {
                    log::info!("outbox: delivered run {run_id} to {at}");
                    swept.delivered += 1;
                }
                Delivery::Dropped(why) => {
                    log::warn!("outbox: run {run_id} dropped: {why}");
                    swept.skipped += 1;
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
