//! The shared test world: a runner home, a fake vault and a fake claude,
//! with helpers to run `once` at an instant and read what it left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fake_claude::{self, FakeClaude, Invocation};
use super::fake_vault::{FakeVault, StoredNote};
use super::{Runner, TempDir};

pub const TOKEN: &str = "pvt_test_token";

/// A runner home, a fake vault and a fake claude.
pub struct World {
    pub home: TempDir,
    pub vault: FakeVault,
    pub claude_dir: PathBuf,
}

impl World {
    pub fn new(name: &str) -> World {
        World::with_claude(name, FakeClaude::new().prints("the answer"))
    }

    pub fn with_claude(name: &str, claude: FakeClaude) -> World {
        let home = TempDir::new(name);
        let vault = FakeVault::start();
        let claude_dir = home.join("claude");
        let claude_bin = claude.install(&claude_dir);
        let runner = home.join("runner");
        std::fs::create_dir_all(&runner).unwrap();
        std::fs::write(
            runner.join("config.json"),
            serde_json::to_vec(&serde_json::json!({
                "vault_url": vault.url(),
                "vault_token": TOKEN,
                "claude_bin": claude_bin,
                "timezone": "UTC",
            }))
            .unwrap(),
        )
        .unwrap();
        World {
            home,
            vault,
            claude_dir,
        }
    }

    pub fn set_config(&self, key: &str, value: Value) {
        let path = self.home.join("runner/config.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc[key] = value;
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    }

    pub fn runner(&self) -> Runner {
        Runner::new()
            .env("PARACHUTE_HOME", self.home.path())
            .env("HOME", self.home.path())
    }

    /// `once` at the given instant.
    pub fn once_at(&self, now: &str) -> Runner {
        self.runner()
            .env("PARACHUTE_RUNNER_NOW", now)
            .args(["once"])
    }

    pub fn invocations(&self) -> Vec<Invocation> {
        fake_claude::invocations(&self.claude_dir)
    }

    pub fn runs(&self) -> Vec<StoredNote> {
        self.vault.notes_tagged("job-run")
    }

    pub fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.home.join("runner/state.json")).unwrap())
            .unwrap()
    }

    pub fn outbox(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.home.join("runner/outbox")) {
            Ok(d) => d.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A job that the first pass at `first` records and the pass at
    /// `first + 1 min` runs.
    pub fn every_minute(&self, path: &str) -> String {
        self.vault.add_job(path, &job("\"* * * * *\"", ""))
    }
}

/// Job note content with a schedule and extra frontmatter lines.
pub fn job(schedule: &str, extra: &str) -> String {
    format!(
        "---\nschedule: {schedule}\nmodel: test-model\nallowed_tools: [Read, \"mcp__parachute-vault-default__search\"]\n{extra}---\nWrite the brief for {{{{date}}}}.\n"
    )
}

/// Polls `cond` until true or `limit` passes (for events in other
/// processes that leave no handle to wait on).
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------
// Several runner homes against one vault (SPEC §12).

/// A runner home of its own (its own `runner/` directory and fake
/// claude) against a vault that other homes share: one host of several.
/// The token comes from the environment, so the home holds no secret and
/// [`Home::wipe`] leaves it as empty as a fresh pod's.
pub struct Home {
    pub home: TempDir,
    pub claude_dir: PathBuf,
    config: Value,
}

impl World {
    /// A home against this world's vault with `claude`, and config.json
    /// holding the usual keys (vault_url, claude_bin, timezone UTC) and
    /// those of `extra` (e.g. `{"coordination": "vault"}`).
    pub fn home(&self, name: &str, claude: FakeClaude, extra: Value) -> Home {
        Home::new(name, &self.vault, claude, extra)
    }
}

impl Home {
    pub fn new(name: &str, vault: &FakeVault, claude: FakeClaude, extra: Value) -> Home {
        let home = TempDir::new(name);
        let claude_dir = home.join("claude");
        let claude_bin = claude.install(&claude_dir);
        let mut config = serde_json::json!({
            "vault_url": vault.url(),
            "claude_bin": claude_bin,
            "timezone": "UTC",
        });
        if let (Some(doc), Value::Object(more)) = (config.as_object_mut(), extra) {
            doc.extend(more);
        }
        let h = Home {
            home,
            claude_dir,
            config,
        };
        h.write_config();
        h
    }

    fn write_config(&self) {
        let runner = self.home.join("runner");
        std::fs::create_dir_all(&runner).unwrap();
        std::fs::write(
            runner.join("config.json"),
            serde_json::to_vec(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// Removes everything the runner keeps in this home (state, locks,
    /// outbox, keys) but its config.json.
    pub fn wipe(&self) {
        std::fs::remove_dir_all(self.home.join("runner")).unwrap();
        self.write_config();
    }

    pub fn runner(&self) -> Runner {
        Runner::new()
            .env("PARACHUTE_HOME", self.home.path())
            .env("HOME", self.home.path())
            .env("PARACHUTE_RUNNER_VAULT_TOKEN", TOKEN)
    }

    /// `once` at the given instant.
    pub fn once_at(&self, now: &str) -> Runner {
        self.runner()
            .env("PARACHUTE_RUNNER_NOW", now)
            .args(["once"])
    }

    pub fn invocations(&self) -> Vec<Invocation> {
        fake_claude::invocations(&self.claude_dir)
    }

    /// state.json, if a pass wrote one.
    pub fn state(&self) -> Option<Value> {
        let bytes = std::fs::read(self.home.join("runner/state.json")).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    pub fn outbox(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.home.join("runner/outbox")) {
            Ok(d) => d.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}
