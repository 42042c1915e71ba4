//! A folder of markdown files as a vault (SPEC §10).
//!
//! Jobs are the `*.md` files whose frontmatter `tags` hold `job`; a note's
//! id and path are its path relative to the folder without `.md`. Outputs
//! are new files with a YAML frontmatter holding `tags` and the run
//! metadata, created without ever overwriting (temp file, then link) so no
//! reader sees half a note. Hidden folders (`.git`, `.obsidian`) and
//! `jobs/runs/` are not searched for jobs.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::Value;

use super::{
    AgentSetup, Created, Listing, MAX_NOTE, NewNote, Newest, Note, Patched, RunFilter, Vault,
    VaultError, normalize,
};
use crate::files;
use crate::job;

/// Bytes read to decide whether a file is a job (its frontmatter).
const HEAD: u64 = 64 << 10;

pub struct DirVault {
    root: PathBuf,
}

impl DirVault {
    pub fn new(root: PathBuf) -> DirVault {
        DirVault { root }
    }

    fn io(&self, what: &str, e: io::Error) -> VaultError {
        VaultError::Io {
            what: what.to_string(),
            detail: e.to_string(),
        }
    }

    /// Calls `each(relative path without .md, full path)` for every
    /// markdown file, skipping hidden folders and, if `skip_runs`,
    /// `jobs/runs/`.
    fn walk(&self, skip_runs: bool, each: &mut dyn FnMut(&str, &Path)) -> Result<(), VaultError> {
        let what = format!("reading the vault folder {}", self.root.display());
        let meta = fs::metadata(&self.root).map_err(|e| self.io(&what, e))?;
        if !meta.is_dir() {
            return Err(self.io(&what, io::Error::other("not a directory")));
        }
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                // The root must be readable; a subfolder we cannot read is
                // skipped, as a file manager would.
                Err(e) if dir == self.root => return Err(self.io(&what, e)),
                Err(e) => {
                    log::warn!("skipping {}: {e}", dir.display());
                    continue;
                }
            };
            let mut names: Vec<_> = entries.flatten().collect();
            names.sort_by_key(|e| e.file_name());
            for entry in names {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                if file_type.is_dir() {
                    if skip_runs && self.relative(&path).as_deref() == Some("jobs/runs") {
                        continue;
                    }
                    stack.push(path);
                } else if name.ends_with(".md")
                    && (file_type.is_file()
                        || (file_type.is_symlink() && path.is_file() && self.inside(&path)))
                    && let Some(rel) = self.relative(&path)
                {
                    let id = rel.strip_suffix(".md").unwrap_or(&rel).to_string();
                    each(&id, &path);
                }
            }
        }
        Ok(())
    }

    fn relative(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        Some(parts?.join("/"))
    }

    /// The file for a note path, if the path stays inside the folder.
    fn file_for(&self, path: &str) -> Option<PathBuf> {
        let clean = normalize(path)?;
        Some(self.root.join(format!("{clean}.md")))
    }

    /// Creates the folders of note path `clean` one by one, below the
    /// vault folder, refusing any that is a symbolic link (or not a
    /// folder): an output is never written outside the vault through a
    /// linked `jobs/runs` or output folder.
    fn make_parents(&self, clean: &str) -> io::Result<()> {
        let Some((folders, _)) = clean.rsplit_once('/') else {
            return Ok(());
        };
        let mut dir = self.root.clone();
        for part in folders.split('/') {
            dir.push(part);
            let meta = match fs::symlink_metadata(&dir) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match fs::create_dir(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                    fs::symlink_metadata(&dir)?
                }
                Err(e) => return Err(e),
            };
            if meta.file_type().is_symlink() {
                return Err(io::Error::other(format!(
                    "{} is a symbolic link; the runner writes outputs only into real folders of the vault",
                    dir.display()
                )));
            }
            if !meta.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is not a folder",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Whether `file` (which may be a symbolic link) is inside the vault
    /// folder once every link is resolved.
    fn inside(&self, file: &Path) -> bool {
        match (fs::canonicalize(&self.root), fs::canonicalize(file)) {
            (Ok(root), Ok(real)) => real.starts_with(root),
            _ => false,
        }
    }

    fn note_from_file(&self, id: &str, file: &Path, content: String) -> Note {
        let created_at = fs::metadata(file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| Timestamp::try_from(t).ok())
            .map(|t| format!("{t:.3}"));
        let (tags, metadata) = frontmatter_fields(&content);
        Note {
            id: id.to_string(),
            path: Some(id.to_string()),
            content,
            tags,
            metadata,
            updated_at: created_at.clone(),
            created_at,
            byte_size: None,
        }
    }
}

impl Vault for DirVault {
    fn list_jobs(&self) -> Result<Listing, VaultError> {
        let mut jobs = Vec::new();
        let mut skipped = Vec::new();
        self.walk(true, &mut |id, file| {
            let Some(head) = read_head(file) else { return };
            if !job::frontmatter_tags(&head)
                .iter()
                .any(|t| t == super::JOB_TAG)
            {
                return;
            }
            match read_limited(file) {
                Ok(content) => {
                    let note = self.note_from_file(id, file, content);
                    if !note.is_output() {
                        jobs.push(note);
                    }
                }
                Err(e) => skipped.push((
                    id.to_string(),
                    format!("cannot read {}: {e}", file.display()),
                )),
            }
        })?;
        Ok(Listing {
            notes: jobs,
            skipped,
        })
    }

    fn get_note(&self, path: &str) -> Result<Option<Note>, VaultError> {
        let Some(file) = self.file_for(path) else {
            return Ok(None);
        };
        if fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink())
            && !self.inside(&file)
        {
            return Err(VaultError::Io {
                what: format!("reading {}", file.display()),
                detail: "a symbolic link out of the vault folder; not followed".to_string(),
            });
        }
        match read_limited(&file) {
            Ok(content) => {
                let id = normalize(path).unwrap_or_default();
                Ok(Some(self.note_from_file(&id, &file, content)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(&format!("reading {}", file.display()), e)),
        }
    }

    fn create_note(&self, note: &NewNote) -> Result<Created, VaultError> {
        let what = format!("writing note {}", note.path);
        let Some(clean) = normalize(&note.path) else {
            return Err(VaultError::Io {
                what,
                detail: "the path must be relative, inside the vault folder, without \"..\""
                    .to_string(),
            });
        };
        let file = self.root.join(format!("{clean}.md"));
        self.make_parents(&clean).map_err(|e| self.io(&what, e))?;
        let text = render_file(note).map_err(|e| self.io(&what, e))?;
        match files::write_new(&file, text.as_bytes()) {
            Ok(true) => Ok(Created::At(clean)),
            Ok(false) => Ok(Created::Conflict),
            Err(e) => Err(self.io(&what, e)),
        }
    }

    fn list_runs(&self, filter: &RunFilter, limit: usize) -> Result<Vec<Note>, VaultError> {
        let mut runs = Newest::new(filter, limit);
        self.walk(false, &mut |id, file| {
            let Some(head) = read_head(file) else { return };
            if !job::frontmatter_tags(&head)
                .iter()
                .any(|t| t == job::RUN_TAG)
            {
                return;
            }
            let mut note = self.note_from_file(id, file, head);
            note.content.clear();
            runs.offer(note);
        })?;
        Ok(runs.finish())
    }

    fn list_index(&self, _tag: &str) -> Result<Vec<Note>, VaultError> {
        Err(unsupported("listing notes by tag"))
    }

    fn patch_metadata(
        &self,
        path: &str,
        _metadata: &serde_json::Map<String, Value>,
        _if_updated_at: &str,
    ) -> Result<Patched, VaultError> {
        Err(unsupported(&format!("updating note {path}")))
    }

    fn agent_setup(&self) -> AgentSetup {
        AgentSetup {
            mcp_config: "{\"mcpServers\":{}}\n".to_string(),
            cwd: Some(self.root.clone()),
            mcp_server: None,
        }
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn locate(&self, note_path: &str) -> String {
        self.root
            .join(format!("{note_path}.md"))
            .display()
            .to_string()
    }
}

/// The text of an output file: frontmatter with `tags` then the metadata
/// keys, then the content.
pub fn render_file(note: &NewNote) -> io::Result<String> {
    // serde_yaml's mapping keeps insertion order: `tags` first.
    let mut front = serde_yaml::Mapping::new();
    let yaml = |v: &Value| serde_yaml::to_value(v).map_err(io::Error::other);
    front.insert("tags".into(), yaml(&Value::from(note.tags.clone()))?);
    for (k, v) in &note.metadata {
        if k != "tags" {
            front.insert(k.as_str().into(), yaml(v)?);
        }
    }
    let yaml = serde_yaml::to_string(&front).map_err(io::Error::other)?;
    let mut text = format!("---\n{yaml}---\n{}", note.content);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Tags (without `#`) and the other frontmatter keys as metadata.
fn frontmatter_fields(content: &str) -> (Vec<String>, Option<Value>) {
    let tags = job::frontmatter_tags(content);
    let metadata = job::split_frontmatter(content)
        .ok()
        .and_then(|s| s.yaml)
        .and_then(|y| job::parse_frontmatter(y).ok())
        .map(|mut m| {
            m.remove("tags");
            Value::Object(m)
        })
        .filter(|v| v.as_object().is_some_and(|m| !m.is_empty()));
    (tags, metadata)
}

/// The first `HEAD` bytes of a file as text (lossy), `None` if unreadable.
fn read_head(file: &Path) -> Option<String> {
    let mut buf = Vec::new();
    files::open_regular(file)
        .ok()?
        .take(HEAD)
        .read_to_end(&mut buf)
        .ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn read_limited(file: &Path) -> io::Result<String> {
    let buf = files::read_capped(file, MAX_NOTE)?;
    String::from_utf8(buf).map_err(|_| io::Error::other("not UTF-8 text"))
}

/// What a folder cannot do: conditional updates, for coordination across
/// hosts (the config refuses that combination before it gets here).
fn unsupported(what: &str) -> VaultError {
    VaultError::Io {
        what: what.to_string(),
        detail: "a folder vault does not support it (coordination \"vault\" needs a vault server)"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn output_file_round_trips_as_a_note() {
        let mut metadata = serde_json::Map::new();
        metadata.insert("run_id".into(), json!("r-1"));
        metadata.insert("run_duration_ms".into(), json!(1234));
        metadata.insert("run_stderr_tail".into(), json!("line 1\n---\nline: \"3\""));
        metadata.insert("run_output_truncated".into(), json!(true));
        let note = NewNote {
            path: "jobs/runs/x/r-1".into(),
            content: "---\nnot frontmatter\n".into(),
            tags: vec!["job-run".into(), "#weird tag".into()],
            metadata: metadata.clone(),
        };
        let text = render_file(&note).unwrap();
        let split = job::split_frontmatter(&text).unwrap();
        assert_eq!(split.body, note.content);
        let (tags, meta) = frontmatter_fields(&text);
        assert_eq!(tags, ["job-run", "weird tag"]);
        assert_eq!(meta.unwrap(), Value::Object(metadata));
    }
}
