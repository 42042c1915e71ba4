//! The real Claude Code CLI for tests that drive it against the fake
//! Anthropic API (`fake_anthropic`): where it is installed, and the
//! environment that keeps it on loopback.
//!
//! The version is pinned in `tests/data/claude-code.version` (the one that
//! produced `fixtures/claude-cli/`); `.ci/install-claude` installs it with npm
//! into a cache folder outside the repository and prints its path. Only a
//! machine without npm skips these tests; a failed install fails them.
//!
//! What `claude -p` 2.1.197 does with the environment below: one `HEAD /` and
//! then one `POST /v1/messages?beta=true` per model turn to
//! `ANTHROPIC_BASE_URL`, no other connection (no DNS lookup either: checked
//! with strace). It also runs `git`, `ps aux | grep …` (IDE detection) and its
//! embedded ripgrep in the working directory, and writes only under HOME and
//! CLAUDE_CODE_TMPDIR.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The pinned CLI version, from `tests/data/claude-code.version`.
pub fn version() -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/claude-code.version");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_string()
}

/// The installed `claude` executable, installed on first use (a 77 MB
/// download, 235 MB installed, once per cache folder). `None`, with a notice on stderr, only
/// when npm is not available and no installed copy exists; a failed install
/// panics with its output.
pub fn claude_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(install).clone()
}

fn install() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/install-claude");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        // The script's "npm is not installed" exit.
        Some(3) => {
            eprintln!(
                "note: npm not found: skipping the tests that run the real claude CLI {} \
                 (install Node.js/npm to run them)",
                version()
            );
            return None;
        }
        _ => panic!(
            "{} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            script.display(),
            out.status
        ),
    }
    let path = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    assert!(
        path.is_file(),
        "{} printed {path:?}, which is not a file\n--- stderr\n{stderr}",
        script.display()
    );
    Some(path)
}

/// The whole environment a test gives the CLI (start it with `env_clear()`),
/// for a private `home` (which must exist) and the fake API at `api_url`.
///
/// Only ANTHROPIC_*, CLAUDE_*, PATH and HOME pass through the runner (SPEC
/// §6.2); CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC alone was measured to stop
/// every connection to other hosts, the DISABLE_* ones only say the same for
/// a direct run in case a later version narrows it.
pub fn claude_env(home: &Path, api_url: &str) -> Vec<(String, String)> {
    // The CLI creates it when missing.
    let tmp = home.join("tmp");
    let pairs: [(&str, String); 10] = [
        // Its Bash tool runs `bash`, it runs `git`, `ps`, `grep`; the runner's
        // default PATH.
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_string()),
        // Private ~/.claude.json and ~/.claude/ (settings, sessions, shell
        // snapshots, memory): no user settings, hooks or credentials leak in,
        // and parallel tests do not share state.
        ("HOME", home.display().to_string()),
        // The CLI's per-session temp folder (`claude-<uid>/<cwd>/<session>/
        // tasks`, Bash output) goes here instead of /tmp/claude-<uid>, shared
        // by every test and user.
        ("CLAUDE_CODE_TMPDIR", tmp.display().to_string()),
        // Every API call goes to the fake (it also sends `HEAD /` there to
        // warm the connection).
        ("ANTHROPIC_BASE_URL", api_url.to_string()),
        // Any non-empty key is sent as `x-api-key`; the init line then says
        // `"apiKeySource":"ANTHROPIC_API_KEY"`. No login, no OAuth.
        ("ANTHROPIC_API_KEY", "sk-ant-fake-test-key".to_string()),
        // Fail on the first API error instead of 10 retries over ~3 min.
        // A test of the CLI's own retries overrides it.
        ("CLAUDE_CODE_MAX_RETRIES", "0".to_string()),
        // The umbrella switch: no auto-update check, telemetry, error
        // reporting, feature-flag fetches or feedback. Without it each run
        // resolves api.anthropic.com about 10 times (strace), which here only
        // fails fast because DNS has no internet.
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
        // No self-update download (covered by the umbrella above).
        ("DISABLE_AUTOUPDATER", "1".to_string()),
        // No Statsig/metrics events (covered by the umbrella above).
        ("DISABLE_TELEMETRY", "1".to_string()),
        // No Sentry reports (covered by the umbrella above).
        ("DISABLE_ERROR_REPORTING", "1".to_string()),
    ];
    // Deliberately absent: IS_SANDBOX (only `bypassPermissions` needs it as
    // root, and the runner defaults to dontAsk), CLAUDE_CONFIG_DIR (HOME
    // already moves ~/.claude), TMPDIR (nothing else is written to /tmp).
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
