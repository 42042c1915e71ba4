//! `doctor` (SPEC §8): everything a person checks by hand when "my job
//! didn't run", one line per check with the fix: config, vault and token,
//! claude and its version, permission mode and root, the state directory,
//! time zone, outbox, jobs with problems, and the time since the last
//! scheduled pass (is cron or systemd running us at all?). Exit 0 when all
//! pass, 1 otherwise; a warning does not fail.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jiff::SignedDuration;

use crate::alert;
use crate::cli::Common;
use crate::config::{self, Config, Env, Overrides, VaultTarget};
use crate::due::Plan;
use crate::engine::Runtime;
use crate::error::Error;
use crate::health;
use crate::job::Job;
use crate::tools::PermissionMode;
use crate::{EXIT_JOB_FAILED, EXIT_OK, agent, os, print};

/// One check's verdict.
enum Mark {
    Ok,
    Warn,
    Fail,
}

struct Report {
    out: String,
    failed: bool,
}

impl Report {
    fn line(&mut self, mark: Mark, what: &str, detail: &str) {
        let tag = match mark {
            Mark::Ok => "ok  ",
            Mark::Warn => "warn",
            Mark::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        let _ = writeln!(self.out, "{tag} {what}: {detail}");
    }
}

pub fn doctor(common: &Common, env: &Env) -> Result<u8, Error> {
    let mut r = Report {
        out: String::new(),
        failed: false,
    };
    let overrides = Overrides {
        config: common.config.clone(),
        vault_dir: common.vault_dir.clone(),
        read_only: true,
        ..Overrides::default()
    };
    let config = match config::load(env, &overrides) {
        Ok(c) => {
            let source = if c.paths.config_file.exists() {
                c.paths.config_file.display().to_string()
            } else {
                "the environment".to_string()
            };
            r.line(Mark::Ok, "config", &format!("read from {source}"));
            c
        }
        Err(e) => {
            r.line(Mark::Fail, "config", &e.to_string());
            print(&r.out)?;
            return Ok(EXIT_JOB_FAILED);
        }
    };
    let rt = match Runtime::open(&config) {
        Ok(rt) => Some(rt),
        Err(e) => {
            r.line(Mark::Fail, "vault token", &e);
            None
        }
    };
    if let Some(rt) = &rt {
        check_vault(&mut r, &config, rt);
    }
    check_claude(&mut r, &config);
    check_mode(&mut r, &config);
    check_state_dir(&mut r, &config.paths.runner_dir);
    r.line(
        Mark::Ok,
        "time zone",
        &format!(
            "{} for jobs that name none (set timezone in config.json to change it)",
            config.timezone.name
        ),
    );
    if let Some(rt) = &rt {
        let depth = rt.outbox.depth();
        if depth == 0 {
            r.line(Mark::Ok, "outbox", "empty");
        } else {
            r.line(
                Mark::Warn,
                "outbox",
                &format!(
                    "{depth} output(s) waiting for the vault in {}; each pass tries again",
                    config.paths.runner_dir.join("outbox").display()
                ),
            );
        }
        check_jobs(&mut r, &config, rt);
        check_notify(&mut r, &config, rt);
        check_coordination(&mut r, &config, rt);
        check_last_pass(&mut r, &config, rt);
    }
    print(&r.out)?;
    Ok(if r.failed { EXIT_JOB_FAILED } else { EXIT_OK })
}

fn check_vault(r: &mut Report, config: &Config, rt: &Runtime) {
    match (&config.vault, rt.vault.list_jobs()) {
        (VaultTarget::Dir { root }, Ok(_)) => {
            let writable = std::fs::metadata(root).is_ok_and(|m| !m.permissions().readonly());
            if writable {
                r.line(Mark::Ok, "vault", &format!("the folder {}", root.display()));
            } else {
                r.line(
                    Mark::Fail,
                    "vault",
                    &format!(
                        "the folder {} is read-only: outputs cannot be written (chmod u+w, or run as its owner)",
                        root.display()
                    ),
                );
            }
        }
        (_, Ok(_)) => r.line(
            Mark::Ok,
            "vault",
            &format!("{} answered and took the token", rt.vault.describe()),
        ),
        (_, Err(e)) => {
            let fix = match &e {
                crate::vault::VaultError::Status {
                    status: 401 | 403, ..
                } => {
                    "store a valid token: PUT /.parachute/config {\"vault_token\": …}, or vault_token in config.json"
                }
                crate::vault::VaultError::Unreachable { .. } => {
                    "is the vault running? check vault_url in config.json"
                }
                _ => "check vault_url and vault_name in config.json",
            };
            r.line(Mark::Fail, "vault", &format!("{e}; {fix}"));
        }
    }
}

/// Where `bin` is: itself when it names a path, else the first match on
/// `path` (a PATH list).
pub fn find_program(bin: &str, path: &str) -> Option<PathBuf> {
    if bin.contains('/') {
        let p = config::absolute(Path::new(bin));
        return p.is_file().then_some(p);
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(bin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn check_claude(r: &mut Report, config: &Config) {
    let env = agent::child_env(&config.env);
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(agent::DEFAULT_PATH, |(_, v)| v.as_str())
        .to_string();
    let Some(found) = find_program(&config.claude_bin, &path) else {
        r.line(
            Mark::Fail,
            "claude",
            &format!(
                "{} not found (PATH searched: {path}); install it (npm install -g @anthropic-ai/claude-code) or set claude_bin in config.json or PARACHUTE_RUNNER_CLAUDE_BIN to its full path",
                config.claude_bin
            ),
        );
        return;
    };
    match version_of(&found, &env) {
        Ok(v) => r.line(Mark::Ok, "claude", &format!("{v} at {}", found.display())),
        Err(e) => r.line(
            Mark::Fail,
            "claude",
            &format!("{} does not start: {e}", found.display()),
        ),
    }
}

/// `<bin> --version`, with the agent's environment, within 20 s.
fn version_of(bin: &Path, env: &[(String, String)]) -> Result<String, String> {
    let mut child = Command::new(bin)
        .arg("--version")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no answer to --version within 20 s".to_string());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "--version exited with {}: {}",
            out.status,
            err.trim()
        ));
    }
    Ok(if text.is_empty() {
        "answers --version".to_string()
    } else {
        text
    })
}

fn check_mode(r: &mut Report, config: &Config) {
    let mode = config.permission_mode;
    let sandbox = config.env.get("IS_SANDBOX") == Some("1");
    match mode {
        PermissionMode::BypassPermissions if os::is_root() && !sandbox => r.line(
            Mark::Fail,
            "permission mode",
            "bypassPermissions as root: claude refuses it unless IS_SANDBOX=1; run as an unprivileged user or choose dontAsk",
        ),
        PermissionMode::BypassPermissions => r.line(
            Mark::Warn,
            "permission mode",
            "bypassPermissions: allowed_tools is not enforced, agents may run any tool",
        ),
        m => r.line(
            Mark::Ok,
            "permission mode",
            &format!(
                "{m} by default{}",
                if os::is_root() {
                    " (running as root: fine for every mode but bypassPermissions)"
                } else {
                    ""
                }
            ),
        ),
    }
}

fn check_state_dir(r: &mut Report, dir: &Path) {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.line(
                Mark::Warn,
                "state directory",
                &format!(
                    "{} does not exist yet; the first pass creates it",
                    dir.display()
                ),
            );
            return;
        }
        Err(e) => {
            r.line(
                Mark::Fail,
                "state directory",
                &format!("{}: {e}", dir.display()),
            );
            return;
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    // This process's uid, from /proc.
    let mine = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if mine.is_some_and(|uid| uid != meta.uid()) {
        r.line(
            Mark::Fail,
            "state directory",
            &format!(
                "{} belongs to uid {}, not to this user: run the runner as its owner, or chown it",
                dir.display(),
                meta.uid()
            ),
        );
    } else if mode & 0o077 != 0 {
        r.line(
            Mark::Fail,
            "state directory",
            &format!(
                "{} has mode {mode:o}; it holds the vault token's key: chmod 700 {}",
                dir.display(),
                dir.display()
            ),
        );
    } else {
        r.line(
            Mark::Ok,
            "state directory",
            &format!("{} (mode {mode:o})", dir.display()),
        );
    }
}

fn check_jobs(r: &mut Report, config: &Config, rt: &Runtime) {
    let Ok(listing) = rt.vault.list_jobs() else {
        return;
    };
    let total = listing.notes.len() + listing.skipped.len();
    let state = rt.store.read().unwrap_or_default();
    let now = rt.clock.now();
    let mut stale = Vec::new();
    let bad: Vec<String> = listing
        .notes
        .iter()
        .filter_map(|n| match Job::from_note(n, &config.timezone) {
            Ok(job) => {
                let plan = Plan::from(&job);
                if health::is_stale(&state, &job.path, &plan, now, config.disabled) {
                    stale.push(job.path);
                }
                None
            }
            Err(e) => Some(e.path),
        })
        .chain(listing.skipped.iter().map(|(p, _)| p.clone()))
        .collect();
    if !stale.is_empty() {
        r.line(
            Mark::Fail,
            "stale jobs",
            &format!(
                "{} job(s) without a successful run in two of their periods: {}; see their .failed notes (parachute-runner runs)",
                stale.len(),
                stale.join(", ")
            ),
        );
    }
    if total == 0 {
        r.line(
            Mark::Warn,
            "jobs",
            "no job notes found (a job is a note tagged job; see parachute-runner validate)",
        );
    } else if bad.is_empty() {
        r.line(
            Mark::Ok,
            "jobs",
            &format!("{total} job(s), none with problems"),
        );
    } else {
        r.line(
            Mark::Fail,
            "jobs",
            &format!(
                "{} of {total} job(s) have problems ({}); parachute-runner jobs says what",
                bad.len(),
                bad.join(", ")
            ),
        );
    }
}

fn check_notify(r: &mut Report, config: &Config, rt: &Runtime) {
    let mut told = Vec::new();
    if let Some(program) = config.notify.first() {
        let path = rt
            .child_env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(agent::DEFAULT_PATH, |(_, v)| v.as_str());
        if find_program(program, path).is_none() {
            r.line(
                Mark::Fail,
                "notify",
                &format!("{program:?} is not an executable file, nor found on PATH ({path}); notices cannot be sent"),
            );
            return;
        }
        told.push(format!("the program {program:?}"));
    }
    if let Some(url) = &config.notify_url {
        told.push(format!("the webhook {}", alert::endpoint(url)));
    }
    if told.is_empty() {
        r.line(
            Mark::Ok,
            "notify",
            "none set: a failure leaves only its .failed note (set notify or notify_url to be told)",
        );
    } else {
        r.line(
            Mark::Ok,
            "notify",
            &format!(
                "failures and recoveries go to {} (at most one failure notice per job every {})",
                told.join(" and "),
                human(SignedDuration::try_from(config.notify_interval).unwrap_or_default())
            ),
        );
    }
}

fn check_coordination(r: &mut Report, config: &Config, rt: &Runtime) {
    let Some(coord) = &rt.coord else {
        r.line(
            Mark::Ok,
            "coordination",
            &format!(
                "{}: runners of this host share {} (set coordination to \"vault\" for several hosts)",
                config.coordination.as_str(),
                config.paths.runner_dir.display()
            ),
        );
        return;
    };
    match coord.read_all() {
        Ok(shared) => {
            let now = rt.clock.now();
            let live = shared
                .values()
                .filter(|s| s.claim.as_ref().is_some_and(|c| !c.expired(now)))
                .count();
            r.line(
                Mark::Ok,
                "coordination",
                &format!(
                    "vault: {} job(s) with shared state, {live} claimed now; this runner claims as {}",
                    shared.len(),
                    coord.host
                ),
            );
        }
        Err(e) => r.line(
            Mark::Fail,
            "coordination",
            &format!("vault: cannot read the shared state ({e}); no slot can be claimed"),
        ),
    }
}

fn check_last_pass(r: &mut Report, config: &Config, rt: &Runtime) {
    let now = rt.clock.now();
    // `once` from cron runs every minute; serve polls every interval.
    let late = SignedDuration::from_secs((3 * config.poll_interval_seconds).max(300) as i64);
    match rt.store.last_pass() {
        None => r.line(
            Mark::Warn,
            "last pass",
            "none recorded yet: is cron, a systemd timer or serve running `parachute-runner once`?",
        ),
        Some(at) => {
            let ago = now.duration_since(at);
            let text = human(ago);
            if ago > late {
                r.line(
                    Mark::Fail,
                    "last pass",
                    &format!(
                        "{text} ago ({at}): is cron or the systemd timer still running `parachute-runner once` (or serve)?"
                    ),
                );
            } else {
                r.line(Mark::Ok, "last pass", &format!("{text} ago"));
            }
        }
    }
}

/// A duration for a person: "42 s", "5 min", "3 h", "2 days".
fn human(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}
