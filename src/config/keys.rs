//! The config keys (SPEC §3) in one table: each key's name, the
//! environment variable that overrides it, and its check. config.json,
//! the environment, the HTTP API's partial updates and the fuzz target all
//! go through this table, so a key is described once.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{Env, MAX_CONCURRENT_JOBS, MAX_POLL_INTERVAL, VaultTarget};
use crate::error::Problem;
use crate::job;
use crate::schedule::Zone;
use crate::secrets::Secret;
use crate::tools::PermissionMode;

/// The settings one source gives; `None` = not set there.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub vault_url: Option<VaultTarget>,
    pub vault_name: Option<String>,
    pub vault_token: Option<Secret>,
    pub poll_interval_seconds: Option<u64>,
    pub max_concurrent_jobs: Option<usize>,
    pub disabled: Option<bool>,
    pub claude_bin: Option<String>,
    pub timezone: Option<String>,
    pub permission_mode: Option<PermissionMode>,
    pub max_budget_usd: Option<f64>,
    pub retries: Option<u32>,
    pub retry_delay: Option<Duration>,
    pub notify: Option<Vec<String>>,
    pub notify_url: Option<String>,
    pub notify_interval: Option<Duration>,
    pub coordination: Option<Coordination>,
}

impl Settings {
    /// Later sources win: fields set in `other` replace ours.
    pub fn overlay(&mut self, other: Settings) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            vault_url,
            vault_name,
            vault_token,
            poll_interval_seconds,
            max_concurrent_jobs,
            disabled,
            claude_bin,
            timezone,
            permission_mode,
            max_budget_usd,
            retries,
            retry_delay,
            notify,
            notify_url,
            notify_interval,
            coordination
        );
    }
}

/// A value as one source gives it: JSON from a file or a request body,
/// text from the environment.
#[derive(Clone, Copy, Debug)]
pub enum Raw<'a> {
    Json(&'a Value),
    Text(&'a str),
}

impl Raw<'_> {
    fn string(self) -> Result<String, String> {
        match self {
            Raw::Json(Value::String(s)) if s.trim().is_empty() => {
                Err("must not be empty".to_string())
            }
            Raw::Json(Value::String(s)) => Ok(s.clone()),
            Raw::Json(other) => Err(format!("expected a string (got {other})")),
            Raw::Text(t) => Ok(t.to_string()),
        }
    }

    fn integer(self, min: u64, max: u64) -> Result<u64, String> {
        let (n, shown) = match self {
            Raw::Json(v) => (v.as_u64(), v.to_string()),
            Raw::Text(t) => (t.trim().parse::<u64>().ok(), format!("{t:?}")),
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "expected an integer from {min} to {max} (got {shown})"
            )),
        }
    }

    fn positive(self) -> Result<f64, String> {
        let (n, shown) = match self {
            Raw::Json(v) => (v.as_f64(), v.to_string()),
            Raw::Text(t) => (t.trim().parse::<f64>().ok(), format!("{t:?}")),
        };
        match n {
            Some(n) if n > 0.0 && n.is_finite() => Ok(n),
            _ => Err(format!("expected a number more than 0 (got {shown})")),
        }
    }

    fn duration(self, max: Duration) -> Result<Duration, String> {
        match self {
            Raw::Json(v) => job::duration_value(v, max),
            Raw::Text(t) => job::duration_value(&Value::String(t.to_string()), max),
        }
    }

    /// A program and its arguments: a JSON list of strings (in the
    /// environment too, as JSON text). No shell is involved.
    fn argv(self) -> Result<Vec<String>, String> {
        let parsed;
        let value = match self {
            Raw::Json(v) => v,
            Raw::Text(t) => {
                parsed = serde_json::from_str::<Value>(t).map_err(|_| {
                    format!("expected a JSON list such as [\"/usr/bin/mail\", \"-s\", \"job failed\", \"ops@example.com\"] (got {t:?})")
                })?;
                &parsed
            }
        };
        let expected = || {
            format!(
                "expected a list of 1 to {MAX_ARGS} strings, the program first (got {})",
                crate::text::shown(&value.to_string())
            )
        };
        let Value::Array(items) = value else {
            return Err(expected());
        };
        if items.is_empty() || items.len() > MAX_ARGS {
            return Err(expected());
        }
        let argv: Vec<String> = items
            .iter()
            .filter_map(|v| v.as_str())
            .filter(|s| !s.contains('\0') && s.len() <= 4096)
            .map(String::from)
            .collect();
        if argv.len() != items.len() || argv[0].trim().is_empty() {
            return Err(expected());
        }
        Ok(argv)
    }

    fn boolean(self) -> Result<bool, String> {
        match self {
            Raw::Json(Value::Bool(b)) => Ok(*b),
            Raw::Json(other) => Err(format!("expected true or false (got {other})")),
            Raw::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(format!("expected true or false (got {t:?})")),
            },
        }
    }
}

/// The most words a `notify` command may have.
const MAX_ARGS: usize = 64;

/// One config key.
pub struct Key {
    pub name: &'static str,
    /// The environment variable that overrides it, if any.
    pub env: Option<&'static str>,
    set: fn(&mut Settings, Raw<'_>) -> Result<(), String>,
}

/// A row of `KEYS`: the key, its variable, the `Settings` field it sets
/// and how a raw value becomes that field's value.
macro_rules! key {
    ($name:literal, $env:literal, $field:ident, $check:expr) => {
        Key {
            name: $name,
            env: Some($env),
            set: |s, raw| {
                s.$field = Some($check(raw)?);
                Ok(())
            },
        }
    };
}

/// Every key config.json may hold, in the order messages list them.
pub const KEYS: [Key; 16] = [
    key!(
        "vault_url",
        "PARACHUTE_RUNNER_VAULT_URL",
        vault_url,
        |r: Raw<'_>| parse_vault_url(&r.string()?)
    ),
    key!(
        "vault_name",
        "PARACHUTE_RUNNER_VAULT_NAME",
        vault_name,
        |r: Raw<'_>| check_vault_name(&r.string()?)
    ),
    key!(
        "vault_token",
        "PARACHUTE_RUNNER_VAULT_TOKEN",
        vault_token,
        |r: Raw<'_>| check_token(&r.string()?)
    ),
    key!(
        "poll_interval_seconds",
        "PARACHUTE_RUNNER_POLL_INTERVAL",
        poll_interval_seconds,
        |r: Raw<'_>| r.integer(1, MAX_POLL_INTERVAL)
    ),
    key!(
        "max_concurrent_jobs",
        "PARACHUTE_RUNNER_MAX_CONCURRENT_JOBS",
        max_concurrent_jobs,
        |r: Raw<'_>| r.integer(1, MAX_CONCURRENT_JOBS as u64).map(|n| n as usize)
    ),
    key!(
        "disabled",
        "PARACHUTE_RUNNER_DISABLED",
        disabled,
        Raw::boolean
    ),
    key!(
        "claude_bin",
        "PARACHUTE_RUNNER_CLAUDE_BIN",
        claude_bin,
        Raw::string
    ),
    key!(
        "timezone",
        "PARACHUTE_RUNNER_TIMEZONE",
        timezone,
        |r: Raw<'_>| check_zone(&r.string()?)
    ),
    key!(
        "permission_mode",
        "PARACHUTE_RUNNER_PERMISSION_MODE",
        permission_mode,
        |r: Raw<'_>| PermissionMode::parse(&r.string()?)
    ),
    key!(
        "max_budget_usd",
        "PARACHUTE_RUNNER_MAX_BUDGET_USD",
        max_budget_usd,
        Raw::positive
    ),
    key!("retries", "PARACHUTE_RUNNER_RETRIES", retries, |r: Raw<
        '_,
    >| r
        .integer(0, job::MAX_RETRIES)
        .map(|n| n as u32)),
    key!(
        "retry_delay",
        "PARACHUTE_RUNNER_RETRY_DELAY",
        retry_delay,
        |r: Raw<'_>| r.duration(job::MAX_RETRY_DELAY)
    ),
    key!("notify", "PARACHUTE_RUNNER_NOTIFY", notify, Raw::argv),
    key!(
        "notify_url",
        "PARACHUTE_RUNNER_NOTIFY_URL",
        notify_url,
        |r: Raw<'_>| {
            let text = r.string()?;
            http_url(&text).ok_or_else(|| {
                format!("expected an http:// or https:// URL without credentials, query or fragment (got {text:?})")
            })
        }
    ),
    key!(
        "notify_interval",
        "PARACHUTE_RUNNER_NOTIFY_INTERVAL",
        notify_interval,
        |r: Raw<'_>| r.duration(MAX_NOTIFY_INTERVAL)
    ),
    key!(
        "coordination",
        "PARACHUTE_RUNNER_COORDINATION",
        coordination,
        |r: Raw<'_>| Coordination::parse(&r.string()?)
    ),
];

/// How runners share the work (SPEC §12).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Coordination {
    /// File locks and state.json: runners of one host.
    #[default]
    Local,
    /// Claims in the vault: runners on any hosts.
    Vault,
}

impl Coordination {
    pub fn parse(text: &str) -> Result<Coordination, String> {
        match text.trim() {
            "local" => Ok(Coordination::Local),
            "vault" => Ok(Coordination::Vault),
            other => Err(format!("expected \"local\" or \"vault\" (got {other:?})")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Coordination::Local => "local",
            Coordination::Vault => "vault",
        }
    }
}

/// The longest `notify_interval`: a week.
const MAX_NOTIFY_INTERVAL: Duration = Duration::from_secs(7 * 86_400);

/// The key called `name`.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The names of every key, for messages.
pub fn names() -> Vec<&'static str> {
    KEYS.iter().map(|k| k.name).collect()
}

/// Checks a config.json document (or a request body). Collects every
/// problem. A JSON null means "not set", as if the key were absent.
pub fn parse_file(doc: &Value) -> Result<Settings, Vec<Problem>> {
    let Value::Object(map) = doc else {
        return Err(vec![Problem::whole("expected a JSON object of settings")]);
    };
    let mut problems = Vec::new();
    let mut s = Settings::default();
    for (name, value) in map {
        if value.is_null() {
            continue;
        }
        let result = match key(name) {
            Some(k) => (k.set)(&mut s, Raw::Json(value)),
            None => Err(format!("unknown key; the keys are {}", names().join(", "))),
        };
        if let Err(message) = result {
            problems.push(Problem::new(name.as_str(), message));
        }
    }
    if problems.is_empty() {
        Ok(s)
    } else {
        Err(problems)
    }
}

/// Reads the environment overrides of the keys. Collects every problem,
/// each under its variable's name.
pub fn parse_env(env: &Env) -> Result<Settings, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut s = Settings::default();
    for k in &KEYS {
        let Some(var) = k.env else { continue };
        let Some(text) = env.get(var) else { continue };
        if let Err(message) = (k.set)(&mut s, Raw::Text(text)) {
            problems.push(Problem::new(var, message));
        }
    }
    if problems.is_empty() {
        Ok(s)
    } else {
        Err(problems)
    }
}

/// A token goes into an HTTP header: printable ASCII, no spaces. The
/// message never repeats the token.
pub fn check_token(token: &str) -> Result<Secret, String> {
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(Secret::new(token))
    } else {
        Err("must be printable ASCII without spaces (as vault tokens are: pvt_...)".to_string())
    }
}

fn check_zone(name: &str) -> Result<String, String> {
    Zone::get(name).map(|z| z.name)
}

/// Vault names go into URL paths; keep them to a safe alphabet.
fn check_vault_name(name: &str) -> Result<String, String> {
    if !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "."
        && name != ".."
    {
        Ok(name.to_string())
    } else {
        Err(format!(
            "expected letters, digits, '-', '_' or '.' (got {name:?})"
        ))
    }
}

/// `http(s)://host[:port][/prefix]` (trailing slash stripped) or
/// `file:///absolute/path`.
pub fn parse_vault_url(text: &str) -> Result<VaultTarget, String> {
    let t = text.trim();
    let expected =
        || format!("expected an http:// or https:// URL, or file:///absolute/path (got {t:?})");
    if let Some(rest) = t.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(expected());
        }
        let path = crate::percent::decode(rest).ok_or_else(expected)?;
        return Ok(VaultTarget::Dir {
            root: PathBuf::from(path),
        });
    }
    http_url(t)
        .map(|url| VaultTarget::Rest { url })
        .ok_or_else(expected)
}

/// `http(s)://host[:port][/prefix]` without credentials, query or
/// fragment, trailing slash stripped; `None` for anything else.
pub fn http_url(text: &str) -> Option<String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty()
        || t.contains(['?', '#', ' '])
        || host.contains('@')
        || t.chars().any(char::is_control)
    {
        return None;
    }
    Some(t.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_problem_at_once() {
        let problems = parse_file(&json!({
            "vault_url": "ftp://x",
            "poll_interval_seconds": 0,
            "max_concurrent_jobs": "4",
            "disabled": "no",
            "timezone": "Nowhere/Land",
            "vault_name": "a/b",
            "colour": "blue",
            "claude_bin": 3
        }))
        .unwrap_err();
        let text: Vec<String> = problems.iter().map(Problem::to_string).collect();
        let text = text.join("\n");
        for want in [
            "vault_url: expected an http:// or https:// URL",
            "poll_interval_seconds: expected an integer from 1 to 86400 (got 0)",
            "max_concurrent_jobs: expected an integer from 1 to 256 (got \"4\")",
            "disabled: expected true or false (got \"no\")",
            "timezone: unknown time zone \"Nowhere/Land\"",
            "vault_name: expected letters, digits",
            "colour: unknown key; the keys are vault_url, vault_name, vault_token",
            "claude_bin: expected a string (got 3)",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(problems.len(), 8);
        let problems = parse_file(&json!({"vault_token": "pvt_secret value"})).unwrap_err();
        assert_eq!(
            problems,
            [Problem::new(
                "vault_token",
                "must be printable ASCII without spaces (as vault tokens are: pvt_...)"
            )]
        );
    }

    #[test]
    fn vault_urls() {
        assert_eq!(
            parse_vault_url("https://v.example/prefix/").unwrap(),
            VaultTarget::Rest {
                url: "https://v.example/prefix".into()
            }
        );
        assert_eq!(
            parse_vault_url("file:///srv/notes%20x/").unwrap(),
            VaultTarget::Dir {
                root: PathBuf::from("/srv/notes x/")
            }
        );
        for bad in [
            "",
            "v.example",
            "http://",
            "http://a b",
            "file://relative",
            "https://u:p@h",
            "http://h/?q",
            "file:///%zz",
        ] {
            assert!(parse_vault_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_key_has_its_own_variable() {
        let mut vars: Vec<&str> = KEYS.iter().filter_map(|k| k.env).collect();
        vars.sort();
        vars.dedup();
        assert_eq!(vars.len(), KEYS.len());
    }
}
