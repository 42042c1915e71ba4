//! Configuration (SPEC §3): config.json, environment overrides and the
//! vault token from the secret store, checked into a `Config`.
//!
//! Every problem of the file or the environment is collected and reported
//! at once, naming the file (or variable), the key and what is expected.
//! The environment is passed in (`Env`) rather than read here, so tests use
//! literals. The keys are described once, in `keys`; the other variables
//! the runner reads, in `env`; changes made over HTTP, in `patch`.

mod env;
mod keys;
mod patch;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

pub use env::{Crash, Env, cli_zone, clock, crash_hook};
#[cfg(test)]
pub use keys::names as key_names;
pub use keys::{Coordination, Settings, check_token, http_url, parse_env, parse_file};
pub use patch::{apply as apply_patch, deferred};

use crate::clock::Clock;
use crate::error::Problem;
use crate::files;
use crate::schedule::Zone;
use crate::secrets::{Secret, SecretStore, SecretsError};
use crate::tools::PermissionMode;
use crate::vault::Timeouts;

pub const CONFIG_FILE: &str = "config.json";
pub const TOKEN_ENTRY: &str = "vault_token";
pub const DEFAULT_VAULT_NAME: &str = "default";
pub const DEFAULT_POLL_INTERVAL: u64 = 60;
pub const DEFAULT_MAX_CONCURRENT_JOBS: usize = 4;
pub const DEFAULT_CLAUDE_BIN: &str = "claude";
pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(60);
/// At most one failure notice per job in this long (SPEC §11).
pub const DEFAULT_NOTIFY_INTERVAL: Duration = Duration::from_secs(3600);
/// Upper bounds that keep arithmetic and thread counts sane.
pub const MAX_POLL_INTERVAL: u64 = 86_400;
pub const MAX_CONCURRENT_JOBS: usize = 256;

/// Where the runner's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// `$PARACHUTE_HOME` (default `$HOME/.parachute`).
    pub home: PathBuf,
    /// `$PARACHUTE_HOME/runner`: state, outbox, locks, run temp files.
    pub runner_dir: PathBuf,
    /// config.json (`--config` or `runner/config.json`).
    pub config_file: PathBuf,
    /// The directory of config.json: master.key and secrets.json.
    pub secrets_dir: PathBuf,
}

impl Paths {
    pub fn new(env: &Env, config_override: Option<&Path>) -> Result<Paths, ConfigError> {
        let home = match (env.get(env::HOME), env.get("HOME")) {
            (Some(home), _) => PathBuf::from(home),
            (None, Some(home)) => Path::new(home).join(".parachute"),
            (None, None) => {
                return Err(ConfigError::NoHome);
            }
        };
        let runner_dir = home.join("runner");
        let config_file = match config_override {
            Some(path) => path.to_path_buf(),
            None => runner_dir.join(CONFIG_FILE),
        };
        let secrets_dir = match config_file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Paths {
            home,
            runner_dir,
            config_file,
            secrets_dir,
        })
    }

    pub fn secret_store(&self) -> SecretStore {
        SecretStore::new(&self.secrets_dir)
    }
}

/// Which vault the runner talks to.
#[derive(Clone, Debug, PartialEq)]
pub enum VaultTarget {
    /// A Parachute vault server: base URL without trailing slash.
    Rest { url: String },
    /// A folder of markdown files (SPEC §10).
    Dir { root: PathBuf },
}

/// The checked configuration, and the environment settings a pass needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub paths: Paths,
    pub vault: VaultTarget,
    pub vault_name: String,
    /// `None` when no token is stored (cleared, or a directory vault).
    pub vault_token: Option<Secret>,
    pub poll_interval_seconds: u64,
    pub max_concurrent_jobs: usize,
    pub disabled: bool,
    pub claude_bin: String,
    pub timezone: Zone,
    /// Job defaults (SPEC §6.2, §6.5): the permission mode, the budget cap
    /// of a run, and how transient failures are retried.
    pub permission_mode: PermissionMode,
    pub max_budget_usd: Option<f64>,
    pub retries: u32,
    pub retry_delay: Duration,
    /// Where failure and recovery notices go (SPEC §11): a program
    /// (empty: none), a webhook, and the least time between two failure
    /// notices of one job.
    pub notify: Vec<String>,
    pub notify_url: Option<String>,
    pub notify_interval: Duration,
    /// Whether runners on other hosts share the vault's jobs (SPEC §12).
    pub coordination: Coordination,
    /// Vault HTTP timeouts (`PARACHUTE_RUNNER_HTTP_TIMEOUT`).
    pub http: Timeouts,
    /// The hub that signs admin API tokens (`PARACHUTE_HUB_ORIGIN`).
    pub hub_origin: String,
    /// The system clock, or a test hook's.
    pub clock: Clock,
    /// Whether agents may be contained in cgroups (`PARACHUTE_RUNNER_CGROUP`).
    pub cgroups: bool,
    /// The process environment, from which the agent's is picked.
    pub env: Env,
}

/// Settings given on the command line, which win over everything.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub vault_dir: Option<PathBuf>,
    pub poll_interval: Option<u64>,
    /// Change nothing on disk (`--dry-run`, `doctor`): a plaintext token
    /// is used where it is, not moved into secrets.json.
    pub read_only: bool,
}

#[derive(Debug)]
pub enum ConfigError {
    NoHome,
    /// No config.json and no vault in the environment.
    Missing {
        path: PathBuf,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// One or more problems in one source (the file, or the environment).
    Invalid {
        source: String,
        problems: Vec<Problem>,
    },
    Secrets(SecretsError),
}

impl ConfigError {
    /// The problems, one per key, for answers that list them.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid { problems, .. } => problems.clone(),
            other => vec![Problem::whole(other.to_string())],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoHome => write!(
                f,
                "neither PARACHUTE_HOME nor HOME is set, so there is no place for the runner's files; set PARACHUTE_HOME"
            ),
            ConfigError::Missing { path } => write!(
                f,
                "no config at {}: create it with `mkdir -p {} && printf '{{\"vault_url\": \"http://127.0.0.1:1940\", \"vault_token\": \"pvt_...\"}}' > {}` (the token moves to secrets.json on first load), or set PARACHUTE_RUNNER_VAULT_URL and PARACHUTE_RUNNER_VAULT_TOKEN, or use --vault-dir DIR for a folder of notes",
                path.display(),
                path.parent()
                    .map_or(".".into(), |p| p.display().to_string()),
                path.display()
            ),
            ConfigError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ConfigError::Invalid { source, problems } => {
                let list: Vec<String> = problems.iter().map(Problem::to_string).collect();
                write!(f, "invalid config in {source}: {}", list.join("; "))
            }
            ConfigError::Secrets(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<SecretsError> for ConfigError {
    fn from(e: SecretsError) -> ConfigError {
        ConfigError::Secrets(e)
    }
}

impl ConfigError {
    fn environment(problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            source: "the environment".to_string(),
            problems: vec![problem],
        }
    }
}

/// The problem "no vault_url anywhere".
fn url_required() -> Problem {
    Problem::new("vault_url", "required (or set PARACHUTE_RUNNER_VAULT_URL)")
}

/// Loads the configuration: config.json (if any), then the environment,
/// then the command line. Moves a plaintext `vault_token` out of
/// config.json into secrets.json on the way (envelope first, config
/// second, so a crash in between loses nothing).
pub fn load(env: &Env, overrides: &Overrides) -> Result<Config, ConfigError> {
    let paths = Paths::new(env, overrides.config.as_deref())?;
    let file_doc = read_config_doc(&paths.config_file)?;
    let mut settings = Settings::default();
    // Every problem of the file and of the environment, in one message.
    let mut problems = Vec::new();
    let mut sources = Vec::new();
    let mut file_token = None;
    if let Some(doc) = &file_doc {
        match parse_file(doc) {
            Ok(from_file) => {
                file_token = from_file.vault_token.clone();
                settings.overlay(from_file);
            }
            Err(p) => {
                problems.extend(p);
                sources.push(paths.config_file.display().to_string());
            }
        }
    }
    match parse_env(env) {
        Ok(from_env) => settings.overlay(from_env),
        Err(p) => {
            problems.extend(p);
            sources.push("the environment".to_string());
        }
    }
    if !problems.is_empty() {
        let about_url = |p: &Problem| p.key == "vault_url" || p.key == "PARACHUTE_RUNNER_VAULT_URL";
        let file_has_url = file_doc
            .as_ref()
            .is_some_and(|d| d.get("vault_url").is_some_and(|v| !v.is_null()));
        if settings.vault_url.is_none()
            && !file_has_url
            && overrides.vault_dir.is_none()
            && !problems.iter().any(about_url)
        {
            problems.push(url_required());
        }
        return Err(ConfigError::Invalid {
            source: sources.join(" and "),
            problems,
        });
    }
    let http = env::http_timeouts(env).map_err(ConfigError::environment)?;
    let hub_origin = env::hub_origin(env).map_err(ConfigError::environment)?;
    let clock = env::clock(env).map_err(ConfigError::environment)?;
    let cgroups = env::cgroups(env).map_err(ConfigError::environment)?;
    // The file's token, not the environment's: that one is never written
    // anywhere.
    if let (Some(token), Some(doc)) = (&file_token, &file_doc)
        && !overrides.read_only
    {
        migrate_token(&paths, doc, token)?;
    }
    if let Some(dir) = &overrides.vault_dir {
        settings.vault_url = Some(VaultTarget::Dir {
            root: absolute(dir),
        });
    }
    if let Some(p) = overrides.poll_interval {
        settings.poll_interval_seconds = Some(p);
    }
    let Some(vault) = settings.vault_url.clone() else {
        return Err(if file_doc.is_none() {
            ConfigError::Missing {
                path: paths.config_file.clone(),
            }
        } else {
            ConfigError::Invalid {
                source: paths.config_file.display().to_string(),
                problems: vec![url_required()],
            }
        });
    };
    if settings.coordination == Some(Coordination::Vault)
        && let VaultTarget::Dir { root } = &vault
    {
        return Err(ConfigError::Invalid {
            source: if env.get("PARACHUTE_RUNNER_COORDINATION").is_some() {
                "the environment".to_string()
            } else {
                paths.config_file.display().to_string()
            },
            problems: vec![Problem::new(
                "coordination",
                format!(
                    "\"vault\" needs a vault server (vault_url http:// or https://); the folder {} is one host's, use \"local\"",
                    root.display()
                ),
            )],
        });
    }
    let vault_token = match (&vault, settings.vault_token.take()) {
        (VaultTarget::Dir { .. }, _) => None,
        (_, Some(token)) => Some(token),
        (_, None) => match paths.secret_store().get(TOKEN_ENTRY)? {
            Some(stored) => Some(check_token(stored.expose()).map_err(|message| {
                ConfigError::Invalid {
                    source: paths
                        .secrets_dir
                        .join(crate::secrets::SECRETS_FILE)
                        .display()
                        .to_string(),
                    problems: vec![Problem::new(TOKEN_ENTRY, message)],
                }
            })?),
            None => None,
        },
    };
    if let Some(token) = &vault_token {
        crate::secrets::remember(token);
    }
    let timezone = match &settings.timezone {
        // Checked above, so `get` cannot fail here; fall back all the same.
        Some(name) => Zone::get(name).unwrap_or_else(|_| Zone::utc()),
        None => Zone::system(),
    };
    Ok(Config {
        paths,
        vault,
        vault_name: settings
            .vault_name
            .unwrap_or_else(|| DEFAULT_VAULT_NAME.to_string()),
        vault_token,
        poll_interval_seconds: settings
            .poll_interval_seconds
            .unwrap_or(DEFAULT_POLL_INTERVAL),
        max_concurrent_jobs: settings
            .max_concurrent_jobs
            .unwrap_or(DEFAULT_MAX_CONCURRENT_JOBS),
        disabled: settings.disabled.unwrap_or(false),
        claude_bin: settings
            .claude_bin
            .unwrap_or_else(|| DEFAULT_CLAUDE_BIN.to_string()),
        timezone,
        permission_mode: settings.permission_mode.unwrap_or_default(),
        max_budget_usd: settings.max_budget_usd,
        retries: settings.retries.unwrap_or(DEFAULT_RETRIES),
        retry_delay: settings.retry_delay.unwrap_or(DEFAULT_RETRY_DELAY),
        notify: settings.notify.unwrap_or_default(),
        notify_url: settings.notify_url,
        notify_interval: settings.notify_interval.unwrap_or(DEFAULT_NOTIFY_INTERVAL),
        coordination: settings.coordination.unwrap_or_default(),
        http,
        hub_origin,
        clock,
        cgroups,
        env: env.clone(),
    })
}

/// Reads config.json as JSON; `None` if there is no file.
pub fn read_config_doc(path: &Path) -> Result<Option<Value>, ConfigError> {
    let Some(bytes) = files::read_optional(path, 1 << 20).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ConfigError::Invalid {
            source: path.display().to_string(),
            problems: vec![Problem::whole(format!("not valid JSON: {e}"))],
        })
}

/// Writes config.json (pretty, atomic, 0600).
pub fn write_config_doc(path: &Path, doc: &Map<String, Value>) -> Result<(), ConfigError> {
    let io_err = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = serde_json::to_vec_pretty(doc).map_err(|e| io_err(io::Error::other(e)))?;
    bytes.push(b'\n');
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        files::create_private_dir(dir).map_err(io_err)?;
    }
    files::write_atomic(path, &bytes).map_err(io_err)
}

fn migrate_token(paths: &Paths, doc: &Value, token: &Secret) -> Result<(), ConfigError> {
    paths.secret_store().set(TOKEN_ENTRY, token)?;
    let mut map = doc.as_object().cloned().unwrap_or_default();
    map.remove(TOKEN_ENTRY);
    if let Err(e) = write_config_doc(&paths.config_file, &map) {
        // The token is safe in secrets.json and the file's copy is the same
        // token, so the runner goes on; a writable load finishes the move.
        log::warn!(
            "vault_token is stored in secrets.json but could not be removed from {} ({e}); remove it by hand",
            paths.config_file.display()
        );
        return Ok(());
    }
    log::info!(
        "moved vault_token from {} into {} (encrypted)",
        paths.config_file.display(),
        paths
            .secrets_dir
            .join(crate::secrets::SECRETS_FILE)
            .display()
    );
    Ok(())
}

/// `dir` made absolute against the current directory.
pub fn absolute(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| dir.to_path_buf(), |cwd| cwd.join(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random;
    use serde_json::json;
    use std::fs;

    fn home(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("pr-config-{name}-{}", random::hex(6)))
    }

    fn write(home: &Path, doc: &Value) {
        fs::create_dir_all(home.join("runner")).unwrap();
        fs::write(
            home.join("runner/config.json"),
            serde_json::to_vec(doc).unwrap(),
        )
        .unwrap();
    }

    fn env_for(home: &Path) -> Env {
        Env::from_pairs([("PARACHUTE_HOME", home.to_str().unwrap()), ("TZ", "UTC")])
    }

    #[test]
    fn defaults_and_trailing_slash() {
        let h = home("defaults");
        write(&h, &json!({"vault_url": "http://127.0.0.1:1940/"}));
        let c = load(&env_for(&h), &Overrides::default()).unwrap();
        assert_eq!(
            c.vault,
            VaultTarget::Rest {
                url: "http://127.0.0.1:1940".into()
            }
        );
        assert_eq!(c.vault_name, "default");
        assert_eq!(c.poll_interval_seconds, 60);
        assert_eq!(c.max_concurrent_jobs, 4);
        assert!(!c.disabled);
        assert_eq!(c.claude_bin, "claude");
        assert!(c.vault_token.is_none());
        fs::remove_dir_all(h).unwrap();
    }

    #[test]
    fn file_and_environment_problems_and_a_missing_url_come_together() {
        let h = home("together");
        write(&h, &json!({"poll_interval_seconds": 0}));
        let env = Env::from_pairs([
            ("PARACHUTE_HOME", h.to_str().unwrap()),
            ("TZ", "UTC"),
            ("PARACHUTE_RUNNER_MAX_CONCURRENT_JOBS", "many"),
        ]);
        let err = load(&env, &Overrides::default()).unwrap_err().to_string();
        let file = h.join("runner/config.json");
        assert!(
            err.starts_with(&format!(
                "invalid config in {} and the environment: ",
                file.display()
            )),
            "{err}"
        );
        for want in [
            "poll_interval_seconds: expected an integer from 1 to 86400 (got 0)",
            "PARACHUTE_RUNNER_MAX_CONCURRENT_JOBS: expected an integer",
            "vault_url: required (or set PARACHUTE_RUNNER_VAULT_URL)",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
        // A file with a good vault_url and another problem: no "required".
        write(
            &h,
            &json!({"vault_url": "http://x", "poll_interval_seconds": 0}),
        );
        let err = load(&env_for(&h), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("vault_url"), "{err}");
        fs::remove_dir_all(h).unwrap();
    }

    #[test]
    fn error_names_the_file() {
        let h = home("named");
        write(
            &h,
            &json!({"vault_url": "http://x", "max_concurrent_jobs": 0}),
        );
        let err = load(&env_for(&h), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "invalid config in {}: max_concurrent_jobs:",
                h.join("runner/config.json").display()
            )),
            "{err}"
        );
        fs::write(h.join("runner/config.json"), "{").unwrap();
        let err = load(&env_for(&h), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        fs::remove_dir_all(h).unwrap();
    }

    #[test]
    fn environment_wins_and_is_checked() {
        let h = home("env");
        write(
            &h,
            &json!({"vault_url": "http://file", "vault_name": "file", "poll_interval_seconds": 5}),
        );
        let mut pairs = vec![
            ("PARACHUTE_HOME", h.to_str().unwrap()),
            ("PARACHUTE_RUNNER_VAULT_URL", "https://vault.example/"),
            ("PARACHUTE_RUNNER_VAULT_NAME", "work"),
            ("PARACHUTE_RUNNER_VAULT_TOKEN", "pvt_env"),
            ("PARACHUTE_RUNNER_POLL_INTERVAL", "30"),
            ("PARACHUTE_RUNNER_MAX_CONCURRENT_JOBS", "2"),
            ("PARACHUTE_RUNNER_DISABLED", "true"),
            ("PARACHUTE_RUNNER_CLAUDE_BIN", "/opt/claude"),
            ("PARACHUTE_RUNNER_TIMEZONE", "Asia/Kolkata"),
        ];
        let c = load(&Env::from_pairs(pairs.clone()), &Overrides::default()).unwrap();
        assert_eq!(
            c.vault,
            VaultTarget::Rest {
                url: "https://vault.example".into()
            }
        );
        assert_eq!(
            (
                c.vault_name.as_str(),
                c.poll_interval_seconds,
                c.max_concurrent_jobs
            ),
            ("work", 30, 2)
        );
        assert!(c.disabled);
        assert_eq!(c.claude_bin, "/opt/claude");
        assert_eq!(c.timezone.name, "Asia/Kolkata");
        assert_eq!(c.vault_token.unwrap().expose(), "pvt_env");
        // The env token is never written anywhere.
        assert!(!h.join("runner/secrets.json").exists());
        pairs.push(("PARACHUTE_RUNNER_POLL_INTERVAL", "soon"));
        pairs.push(("PARACHUTE_RUNNER_DISABLED", "perhaps"));
        let err = load(&Env::from_pairs(pairs), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid config in the environment: PARACHUTE_RUNNER_POLL_INTERVAL: expected an integer from 1 to 86400 (got \"soon\"); PARACHUTE_RUNNER_DISABLED: expected true or false"), "{err}");
        fs::remove_dir_all(h).unwrap();
    }

    #[test]
    fn environment_alone_needs_no_file() {
        let h = home("envonly");
        let env = Env::from_pairs([
            ("PARACHUTE_HOME", h.to_str().unwrap()),
            ("PARACHUTE_RUNNER_VAULT_URL", "http://v"),
            ("PARACHUTE_RUNNER_VAULT_TOKEN", "t"),
        ]);
        assert!(load(&env, &Overrides::default()).is_ok());
        assert!(!h.exists());
    }

    #[test]
    fn missing_config_says_how_to_create_one() {
        let h = home("missing");
        let err = load(&env_for(&h), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "no config at {}: create it with",
                h.join("runner/config.json").display()
            )),
            "{err}"
        );
        assert!(err.contains("--vault-dir"));
        assert!(matches!(
            load(&Env::default(), &Overrides::default()),
            Err(ConfigError::NoHome)
        ));
    }

    #[test]
    fn plaintext_token_moves_to_secrets() {
        let h = home("migrate");
        write(
            &h,
            &json!({"vault_url": "http://v", "vault_token": "pvt_plain"}),
        );
        let c = load(&env_for(&h), &Overrides::default()).unwrap();
        assert_eq!(c.vault_token.unwrap().expose(), "pvt_plain");
        let config = fs::read_to_string(h.join("runner/config.json")).unwrap();
        assert!(
            !config.contains("pvt_plain") && !config.contains("vault_token"),
            "{config}"
        );
        assert!(config.contains("http://v"));
        assert!(
            !fs::read_to_string(h.join("runner/secrets.json"))
                .unwrap()
                .contains("pvt_plain")
        );
        // And it loads again from secrets.json.
        let again = load(&env_for(&h), &Overrides::default()).unwrap();
        assert_eq!(again.vault_token.unwrap().expose(), "pvt_plain");
        fs::remove_dir_all(h).unwrap();
    }

    #[test]
    fn crash_between_the_two_migration_writes_converges() {
        let h = home("crash");
        write(
            &h,
            &json!({"vault_url": "http://v", "vault_token": "pvt_new"}),
        );
        // The crash: the envelope was written, config.json still has the
        // plaintext (here even with an older envelope present).
        SecretStore::new(h.join("runner"))
            .set(TOKEN_ENTRY, &Secret::new("pvt_old"))
            .unwrap();
        let c = load(&env_for(&h), &Overrides::default()).unwrap();
        assert_eq!(c.vault_token.unwrap().expose(), "pvt_new");
        assert!(
            !fs::read_to_string(h.join("runner/config.json"))
                .unwrap()
                .contains("pvt_new")
        );
        assert_eq!(
            SecretStore::new(h.join("runner"))
                .get(TOKEN_ENTRY)
                .unwrap()
                .unwrap()
                .expose(),
            "pvt_new"
        );
        fs::remove_dir_all(h).unwrap();
    }

    #[test]
    fn config_override_keeps_secrets_beside_it() {
        let h = home("override");
        let dir = h.join("elsewhere");
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("my.json");
        fs::write(&file, r#"{"vault_url":"http://v","vault_token":"pvt_o"}"#).unwrap();
        let over = Overrides {
            config: Some(file),
            ..Overrides::default()
        };
        let c = load(&env_for(&h), &over).unwrap();
        assert_eq!(c.paths.secrets_dir, dir);
        assert_eq!(c.paths.runner_dir, h.join("runner"));
        assert!(dir.join("secrets.json").exists() && dir.join("master.key").exists());
        assert!(!h.join("runner/secrets.json").exists());
        fs::remove_dir_all(h).unwrap();
    }

    #[test]
    fn vault_dir_needs_no_config_or_token() {
        let h = home("vaultdir");
        let over = Overrides {
            vault_dir: Some(PathBuf::from("/srv/notes")),
            ..Overrides::default()
        };
        let c = load(&env_for(&h), &over).unwrap();
        assert_eq!(
            c.vault,
            VaultTarget::Dir {
                root: PathBuf::from("/srv/notes")
            }
        );
        assert!(c.vault_token.is_none());
    }
}
