//! The vault: where job notes are found and output notes are written.
//!
//! `Vault` is the one small interface the drivers (`once`, `serve`, `jobs`)
//! use; `rest` speaks the Parachute vault's HTTP API (vault-api.md) and `dir`
//! works on a plain folder of markdown files (SPEC §10). Nothing outside this
//! module knows which one it talks to. Also the vault's path rules
//! (`normalize`), which both backends and a run's output path follow.

pub mod dir;
pub mod rest;

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Config, VaultTarget};

/// The tag that marks job notes.
pub const JOB_TAG: &str = "job";

/// A note as the vault returns it. Only the fields the runner reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    pub id: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub created_at: Option<String>,
    /// `updatedAt`, exactly as the vault wrote it (it goes back in
    /// `if_updated_at`).
    #[serde(default)]
    pub updated_at: Option<String>,
    /// `byteSize` of a listing without content.
    #[serde(default)]
    pub byte_size: Option<u64>,
}

/// The job notes a listing found, and those it had to leave out (each
/// with why: too large to be read).
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub notes: Vec<Note>,
    pub skipped: Vec<(String, String)>,
}

/// The largest job note read: its frontmatter is at most 256 KiB and its
/// prompt is what the agent gets on stdin.
pub const MAX_NOTE: u64 = 8 << 20;

impl Note {
    /// The note's path, or its id when it has none.
    pub fn path_or_id(&self) -> &str {
        self.path.as_deref().unwrap_or(&self.id)
    }

    /// Whether this note is an output rather than a job (SPEC §4.1).
    pub fn is_output(&self) -> bool {
        self.path_or_id().starts_with("jobs/runs/")
            || self.tags.iter().any(|t| t == crate::job::RUN_TAG)
    }

    /// `metadata.run_id`, if the note is a run output.
    pub fn run_id(&self) -> Option<&str> {
        self.metadata.as_ref()?.get("run_id")?.as_str()
    }

    /// When the run of an output note started: `run_started_at`, else the
    /// note's `createdAt`.
    pub fn started(&self) -> Timestamp {
        self.metadata
            .as_ref()
            .and_then(|m| m.get("run_started_at"))
            .and_then(Value::as_str)
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| self.created())
    }

    /// Whether an output note says its run failed.
    pub fn is_failed_run(&self) -> bool {
        self.tags.iter().any(|t| t == crate::job::FAILED_TAG)
            || self.path_or_id().ends_with(".failed")
            || self
                .metadata
                .as_ref()
                .is_some_and(|m| m.get("run_error").is_some())
    }

    /// `createdAt` as an instant (the epoch when absent or unreadable).
    pub fn created(&self) -> Timestamp {
        self.created_at
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

/// A note to create.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NewNote {
    pub path: String,
    pub content: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
}

impl NewNote {
    pub fn run_id(&self) -> Option<&str> {
        self.metadata.get("run_id")?.as_str()
    }
}

/// The answer to a create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// Written at this path.
    At(String),
    /// The path is taken (409).
    Conflict,
}

/// The answer to a conditional update.
#[derive(Clone, Debug, PartialEq)]
pub enum Patched {
    /// Written: the note as it is now.
    Updated(Note),
    /// The note changed since the `updatedAt` given (409): nothing written.
    Conflict,
    /// No such note (404).
    Missing,
}

/// What the agent gets to reach the vault.
#[derive(Clone, Debug)]
pub struct AgentSetup {
    /// The MCP config JSON (it may hold the bearer token: write it to a
    /// private file, never to argv or a log).
    pub mcp_config: String,
    /// Working directory for the agent, if the vault wants one.
    pub cwd: Option<PathBuf>,
    /// The MCP server the agent must report `connected` (none for a
    /// folder vault, which hands over no server).
    pub mcp_server: Option<String>,
}

#[derive(Debug)]
pub enum VaultError {
    /// No answer: refused, timed out, DNS, TLS, connection dropped.
    Unreachable {
        what: String,
        /// The vault, as `describe` names it.
        url: String,
        detail: String,
    },
    /// An HTTP error status with the vault's message.
    Status {
        what: String,
        status: u16,
        message: String,
    },
    /// An answer that is not what the API promises.
    Malformed { what: String, detail: String },
    /// A directory vault's file error.
    Io { what: String, detail: String },
    /// An answer larger than the runner reads.
    TooLarge { what: String, limit: u64 },
}

impl VaultError {
    /// Worth trying again soon: no answer, or a 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Unreachable { .. } => true,
            VaultError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

impl fmt::Display for VaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaultError::Unreachable { what, url, detail } => {
                write!(f, "{what}: vault unreachable at {url}: {detail}")
            }
            VaultError::Status {
                what,
                status,
                message,
            } => write!(f, "{what}: vault answered {status}: {message}"),
            VaultError::Malformed { what, detail } => {
                write!(f, "{what}: unexpected answer from the vault: {detail}")
            }
            VaultError::Io { what, detail } => write!(f, "{what}: {detail}"),
            VaultError::TooLarge { what, limit } => write!(
                f,
                "{what}: the answer is larger than the {} the runner reads",
                crate::files::size(*limit)
            ),
        }
    }
}

impl std::error::Error for VaultError {}

/// The operations the runner needs from a vault.
pub trait Vault: Send + Sync {
    /// Every job note (tagged `job`, outputs excluded), each once; a note
    /// too large to read is left out and named in `skipped`.
    fn list_jobs(&self) -> Result<Listing, VaultError>;
    /// One note by path; `None` if there is none.
    fn get_note(&self, path: &str) -> Result<Option<Note>, VaultError>;
    /// Creates a note; never overwrites.
    fn create_note(&self, note: &NewNote) -> Result<Created, VaultError>;
    /// Output notes (tagged `job-run`) that `filter` keeps, newest first,
    /// at most `limit`.
    fn list_runs(&self, filter: &RunFilter, limit: usize) -> Result<Vec<Note>, VaultError>;
    /// Every note tagged `tag`, without content (metadata and `updatedAt`
    /// only).
    fn list_index(&self, tag: &str) -> Result<Vec<Note>, VaultError>;
    /// Merges `metadata` into the note at `path` (shallowly: keys given
    /// replace those keys), only if it was not updated since
    /// `if_updated_at`.
    fn patch_metadata(
        &self,
        path: &str,
        metadata: &Map<String, Value>,
        if_updated_at: &str,
    ) -> Result<Patched, VaultError>;
    /// How the agent reaches this vault.
    fn agent_setup(&self) -> AgentSetup;
    /// For logs: the URL or folder, never a credential.
    fn describe(&self) -> String;
    /// Where a written note can be found, for report lines: its path, or
    /// its file for a directory vault.
    fn locate(&self, note_path: &str) -> String {
        note_path.to_string()
    }
}

/// HTTP timeouts for a REST vault.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(30),
        }
    }
}

/// The vault a configuration names. `Err` when a REST vault has no token.
pub fn open(config: &Config, timeouts: Timeouts) -> Result<Arc<dyn Vault>, String> {
    match &config.vault {
        VaultTarget::Dir { root } => Ok(Arc::new(dir::DirVault::new(root.clone()))),
        VaultTarget::Rest { url } => {
            let token = config.vault_token.clone().ok_or_else(|| {
                "no vault token: store one with PUT /.parachute/config, put \"vault_token\" in config.json (it moves to secrets.json), or set PARACHUTE_RUNNER_VAULT_TOKEN".to_string()
            })?;
            Ok(Arc::new(rest::RestVault::new(
                url,
                &config.vault_name,
                token,
                timeouts,
            )))
        }
    }
}

/// Which run notes a listing wants.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Runs started (`run_started_at`, else the note's `createdAt`) at or
    /// after this.
    pub since: Option<Timestamp>,
    /// Only this job's runs (`parent_job_path`).
    pub job: Option<String>,
    /// Only failed runs.
    pub failed: bool,
}

impl RunFilter {
    fn keeps(&self, note: &Note) -> bool {
        self.since.is_none_or(|s| note.started() >= s)
            && self.job.as_deref().is_none_or(|job| {
                note.metadata
                    .as_ref()
                    .and_then(|m| m.get("parent_job_path"))
                    .and_then(Value::as_str)
                    == Some(job)
            })
            && (!self.failed || note.is_failed_run())
    }
}

/// Collects the newest `limit` run notes a filter keeps from a stream of
/// any length, in bounded memory (for `list_runs`).
pub(crate) struct Newest<'a> {
    filter: &'a RunFilter,
    limit: usize,
    notes: Vec<Note>,
}

impl<'a> Newest<'a> {
    pub(crate) fn new(filter: &'a RunFilter, limit: usize) -> Newest<'a> {
        Newest {
            filter,
            limit,
            notes: Vec::new(),
        }
    }

    pub(crate) fn offer(&mut self, note: Note) {
        if self.filter.keeps(&note) {
            self.notes.push(note);
            if self.notes.len() >= 2 * self.limit.max(1) {
                self.trim();
            }
        }
    }

    fn trim(&mut self) {
        self.notes
            .sort_by(|a, b| b.started().cmp(&a.started()).then_with(|| b.id.cmp(&a.id)));
        self.notes.truncate(self.limit);
    }

    /// Newest first.
    pub(crate) fn finish(mut self) -> Vec<Note> {
        self.trim();
        self.notes
    }
}

/// The vault's path rules (vault-api.md): trimmed, a trailing `.md`
/// removed, leading and trailing `/` removed, `//` collapsed. `None` for a
/// path that would leave the folder or is empty.
pub fn normalize(path: &str) -> Option<String> {
    let t = path.trim();
    let t = t.strip_suffix(".md").unwrap_or(t);
    let parts: Vec<&str> = t.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty()
        || parts
            .iter()
            .any(|p| *p == "." || *p == ".." || p.contains('\0'))
    {
        return None;
    }
    let joined = parts.join("/");
    // Belt and braces: the result must be a plain relative path.
    Path::new(&joined)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(
            normalize(" /jobs//runs/x.md/ ").as_deref(),
            Some("jobs/runs/x.md")
        );
        assert_eq!(normalize("jobs//runs/x.md").as_deref(), Some("jobs/runs/x"));
        assert_eq!(normalize("/a/b/").as_deref(), Some("a/b"));
        for bad in ["", "/", "../x", "a/../../x", "a/./b", "a\0b"] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }
}
