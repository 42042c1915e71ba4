//! The process environment, read in one place. `Env` is a snapshot taken
//! once at start (tests pass literal ones); `VARS` lists every variable the
//! runner reads besides the config keys' overrides (`keys::KEYS`), and the
//! functions here turn them into checked settings: the vault HTTP timeout,
//! the hub origin, the test clock, the zone for `next` and `validate`.
//!
//! What the agent's own environment is made of is `agent`'s business; it
//! reads the same snapshot through `Env::iter`.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::keys;
use crate::clock::Clock;
use crate::error::Problem;
use crate::schedule::Zone;
use crate::vault::Timeouts;

pub const HOME: &str = "PARACHUTE_HOME";
pub const HTTP_TIMEOUT: &str = "PARACHUTE_RUNNER_HTTP_TIMEOUT";
pub const HUB_ORIGIN: &str = "PARACHUTE_HUB_ORIGIN";
pub const NOW: &str = "PARACHUTE_RUNNER_NOW";
pub const CLOCK: &str = "PARACHUTE_RUNNER_CLOCK";
/// Switches the test hooks (`NOW`, `CLOCK`) on in a release build.
pub const TEST_HOOKS: &str = "PARACHUTE_RUNNER_TEST_HOOKS";
/// `off`: contain agents without a cgroup (the subreaper mode).
pub const CGROUP: &str = "PARACHUTE_RUNNER_CGROUP";
/// A test hook of debug builds: `scheduler` or `http` makes that thread of
/// `serve` panic as it starts.
pub const CRASH: &str = "PARACHUTE_RUNNER_TEST_CRASH";

/// Every `PARACHUTE_*` variable that is not a config key's override, for
/// `--help` and the fuzz target.
pub const VARS: [&str; 8] = [
    HOME,
    HTTP_TIMEOUT,
    HUB_ORIGIN,
    NOW,
    CLOCK,
    TEST_HOOKS,
    CGROUP,
    CRASH,
];

/// The default hub (SPEC §9.4).
pub const DEFAULT_HUB_ORIGIN: &str = "http://127.0.0.1:1939";

/// A snapshot of the process environment (or a literal one in tests).
#[derive(Clone, Debug, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The process environment; variables that are not UTF-8 are left out.
    pub fn os() -> Env {
        Env(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// A variable's value; an empty value counts as unset.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Every variable name the runner reads, config overrides included.
    pub fn known() -> Vec<&'static str> {
        keys::KEYS
            .iter()
            .filter_map(|k| k.env)
            .chain(VARS)
            .collect()
    }
}

/// `PARACHUTE_RUNNER_HTTP_TIMEOUT`: seconds for one vault request.
pub fn http_timeouts(env: &Env) -> Result<Timeouts, Problem> {
    let mut t = Timeouts::default();
    if let Some(text) = env.get(HTTP_TIMEOUT) {
        let secs: u64 = text
            .trim()
            .parse()
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .ok_or_else(|| {
                Problem::new(
                    HTTP_TIMEOUT,
                    format!("expected seconds from 1 to 3600 (got {text:?})"),
                )
            })?;
        t.request = Duration::from_secs(secs);
        t.connect = t.connect.min(t.request);
    }
    Ok(t)
}

/// `PARACHUTE_HUB_ORIGIN` (default `http://127.0.0.1:1939`), an http(s)
/// URL with its trailing slash removed.
pub fn hub_origin(env: &Env) -> Result<String, Problem> {
    match env.get(HUB_ORIGIN) {
        None => Ok(DEFAULT_HUB_ORIGIN.to_string()),
        Some(text) => keys::http_url(text).ok_or_else(|| {
            Problem::new(
                HUB_ORIGIN,
                format!("expected an http:// or https:// URL such as {DEFAULT_HUB_ORIGIN} (got {text:?})"),
            )
        }),
    }
}

/// `PARACHUTE_RUNNER_CGROUP`: whether agents may be put in cgroups
/// (`on`, the default: where one can be made; `off`: never).
pub fn cgroups(env: &Env) -> Result<bool, Problem> {
    match env.get(CGROUP).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(true),
        Some(v) if matches!(v.as_str(), "on" | "1" | "true" | "yes") => Ok(true),
        Some(v) if matches!(v.as_str(), "off" | "0" | "false" | "no") => Ok(false),
        Some(v) => Err(Problem::new(
            CGROUP,
            format!("expected on or off (got {v:?})"),
        )),
    }
}

/// The clock: the system's, unless a test hook sets it —
/// `PARACHUTE_RUNNER_NOW=<instant>` (a fixed now) or
/// `PARACHUTE_RUNNER_CLOCK=<start>,<anchor>,<speed>` (simulated time).
/// A release build refuses both unless `PARACHUTE_RUNNER_TEST_HOOKS=1`
/// says they are meant, and then warns: a stray variable must not run a
/// production scheduler on a fake clock.
pub fn clock(env: &Env) -> Result<Clock, Problem> {
    clock_for(env, cfg!(debug_assertions))
}

/// `clock`, for a debug (`test_build`) or release build.
fn clock_for(env: &Env, test_build: bool) -> Result<Clock, Problem> {
    let (var, text) = match (env.get(NOW), env.get(CLOCK)) {
        (None, None) => return Ok(Clock::System),
        (Some(text), _) => (NOW, text),
        (None, Some(text)) => (CLOCK, text),
    };
    if !test_build {
        if env.get(TEST_HOOKS) != Some("1") {
            return Err(Problem::new(
                var,
                format!(
                    "a test hook, refused by a release build; unset it, or set {TEST_HOOKS}=1 if a simulated clock is really meant"
                ),
            ));
        }
        log::warn!(
            "TEST HOOKS ARE ON ({TEST_HOOKS}=1): the clock comes from {var}, not the system; never run this in production"
        );
    }
    if var == NOW {
        return text.parse().map(Clock::Fixed).map_err(|_| {
            Problem::new(
                NOW,
                format!("expected an RFC 3339 instant such as 2026-03-08T07:00:00Z (got {text:?})"),
            )
        });
    }
    let bad = || {
        Problem::new(
            CLOCK,
            format!(
                "expected <start>,<anchor>,<speed> (two RFC 3339 instants and a factor from 1 to 100000), got {text:?}"
            ),
        )
    };
    let mut parts = text.split(',');
    let (Some(start), Some(anchor), Some(speed), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let instant = |s: &str| s.trim().parse::<Timestamp>().map_err(|_| bad());
    Ok(Clock::Scaled {
        start: instant(start)?,
        anchor: instant(anchor)?,
        speed: speed
            .trim()
            .parse()
            .ok()
            .filter(|s| (1..=100_000).contains(s))
            .ok_or_else(bad)?,
    })
}

/// Which thread of `serve` the crash hook kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    Scheduler,
    Http,
}

/// `PARACHUTE_RUNNER_TEST_CRASH` (`scheduler` or `http`): a debug build's
/// test hook, to prove that `serve` exits non-zero when it loses its
/// scheduler or its HTTP server. A release build refuses it, whatever
/// `PARACHUTE_RUNNER_TEST_HOOKS` says.
pub fn crash_hook(env: &Env) -> Result<Option<Crash>, Problem> {
    crash_hook_for(env, cfg!(debug_assertions))
}

fn crash_hook_for(env: &Env, test_build: bool) -> Result<Option<Crash>, Problem> {
    let Some(text) = env.get(CRASH) else {
        return Ok(None);
    };
    if !test_build {
        return Err(Problem::new(
            CRASH,
            "a test hook of debug builds only, refused by a release build; unset it",
        ));
    }
    match text.trim() {
        "scheduler" => Ok(Some(Crash::Scheduler)),
        "http" => Ok(Some(Crash::Http)),
        other => Err(Problem::new(
            CRASH,
            format!("expected scheduler or http (got {other:?})"),
        )),
    }
}

/// The zone for `next` and `validate`: `--tz`, else
/// `PARACHUTE_RUNNER_TIMEZONE`, else the system zone. A bad value is
/// reported under the name it came from.
pub fn cli_zone(flag: Option<&str>, env: &Env) -> Result<Zone, Problem> {
    const VAR: &str = "PARACHUTE_RUNNER_TIMEZONE";
    match (flag, env.get(VAR)) {
        (Some(name), _) => Zone::get(name).map_err(|e| Problem::new("--tz", e)),
        (None, Some(name)) => Zone::get(name).map_err(|e| Problem::new(VAR, e)),
        (None, None) => Ok(Zone::system()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crash_hook_is_for_debug_builds_only() {
        let env = Env::from_pairs([(CRASH, "scheduler"), (TEST_HOOKS, "1")]);
        assert_eq!(crash_hook_for(&env, true), Ok(Some(Crash::Scheduler)));
        assert!(crash_hook_for(&env, false).is_err());
        let http = Env::from_pairs([(CRASH, "http")]);
        assert_eq!(crash_hook_for(&http, true), Ok(Some(Crash::Http)));
        assert!(crash_hook_for(&Env::from_pairs([(CRASH, "x")]), true).is_err());
        assert_eq!(crash_hook_for(&Env::default(), false), Ok(None));
    }

    #[test]
    fn a_release_build_refuses_the_test_clock_unless_switched_on() {
        let now = Env::from_pairs([(NOW, "2026-01-01T00:00:00Z")]);
        let err = clock_for(&now, false).unwrap_err().to_string();
        assert!(
            err.starts_with("PARACHUTE_RUNNER_NOW: a test hook, refused by a release build"),
            "{err}"
        );
        let scaled = Env::from_pairs([(CLOCK, "2026-01-01T00:00:00Z,2026-01-01T00:00:00Z,60")]);
        assert!(clock_for(&scaled, false).is_err());
        let on = Env::from_pairs([(NOW, "2026-01-01T00:00:00Z"), (TEST_HOOKS, "1")]);
        assert!(matches!(clock_for(&on, false), Ok(Clock::Fixed(_))));
        assert!(matches!(clock_for(&now, true), Ok(Clock::Fixed(_))));
        assert!(matches!(
            clock_for(&Env::default(), false),
            Ok(Clock::System)
        ));
    }

    #[test]
    fn bad_values_are_named() {
        for (var, value, want) in [
            (
                NOW,
                "soon",
                "PARACHUTE_RUNNER_NOW: expected an RFC 3339 instant",
            ),
            (
                CLOCK,
                "a,b",
                "PARACHUTE_RUNNER_CLOCK: expected <start>,<anchor>,<speed>",
            ),
            (
                "PARACHUTE_RUNNER_TIMEZONE",
                "Mars/Base",
                "PARACHUTE_RUNNER_TIMEZONE: unknown time zone \"Mars/Base\"",
            ),
            (
                HUB_ORIGIN,
                "hub:1939",
                "PARACHUTE_HUB_ORIGIN: expected an http",
            ),
            (
                HTTP_TIMEOUT,
                "0",
                "PARACHUTE_RUNNER_HTTP_TIMEOUT: expected seconds from 1 to 3600",
            ),
        ] {
            let env = Env::from_pairs([(var, value)]);
            let err = clock_for(&env, true)
                .err()
                .or_else(|| cli_zone(None, &env).err())
                .or_else(|| hub_origin(&env).err())
                .or_else(|| http_timeouts(&env).err())
                .unwrap_or_else(|| panic!("{var}={value} was accepted"))
                .to_string();
            assert!(err.starts_with(want), "{err}");
        }
        let env = Env::from_pairs([("PARACHUTE_RUNNER_TIMEZONE", "UTC")]);
        assert!(
            cli_zone(Some("Nope"), &env)
                .unwrap_err()
                .to_string()
                .starts_with("--tz: ")
        );
        let env = Env::from_pairs([(HUB_ORIGIN, "https://hub.example/ ")]);
        assert_eq!(hub_origin(&env).unwrap(), "https://hub.example");
        assert_eq!(hub_origin(&Env::default()).unwrap(), DEFAULT_HUB_ORIGIN);
    }
}
