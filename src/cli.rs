//! The command line (SPEC §8): a lexopt loop per verb filling a plain
//! struct, then checks of the values. No I/O beyond reading argv.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use lexopt::prelude::*;

pub const HELP: &str = "\
parachute-runner: runs scheduled Claude jobs kept as notes in a Parachute
vault (or a folder of markdown files) and writes each run's output back as a
note.

USAGE:
    parachute-runner once [--only PATH] [--date YYYY-MM-DD] [--dry-run] [--json]
                          [--config FILE] [--vault-dir DIR]
    parachute-runner serve [--port N] [--host ADDR] [--poll-interval S]
                           [--shutdown-timeout S] [--config FILE] [--vault-dir DIR]
    parachute-runner jobs [--json] [--config FILE] [--vault-dir DIR]
    parachute-runner validate [--tz ZONE] FILE.md...
    parachute-runner next \"CRON OR PRESET\" [--tz ZONE] [--from RFC3339] [-n N]
    parachute-runner --help | --version

COMMANDS:
    once       Deliver queued outputs, find the job notes, run the ones that
               are due (at most max_concurrent_jobs at a time) and exit. Meant
               to be started every minute by cron or a systemd timer; safe to
               start many at once. Prints one line per job that ran, failed,
               was invalid or was skipped for a reason, then
               `done: total=T ok=O failed=F skipped=S`.
      --only PATH        run this one job now, whatever its schedule (manual
                         and disabled jobs too)
      --date YYYY-MM-DD  use this date for {{date}} and {{yesterday}}
      --dry-run          print each job's decision, next fire time and output
                         path; run nothing, change nothing
      --json             print the results as one JSON object on stdout
    serve      Run the scheduler as a long-lived process with the HTTP admin
               API (for containers). SIGTERM or SIGINT stops it gracefully.
      --port N               listen port (default 1945)
      --host ADDR            listen address (default 127.0.0.1)
      --poll-interval S      seconds between job-list polls (default: config)
      --shutdown-timeout S   seconds to let running jobs finish on shutdown
                             (default 30)
    jobs       Print a table of the jobs: path, schedule, zone, next fire, last
               run and its status, problems. --json for JSON.
    validate   Check local job note files as `once` would; print problems and
               the next 3 fire times. Exit 1 if any file is invalid.
      --tz ZONE          zone for jobs that name none (default:
                         PARACHUTE_RUNNER_TIMEZONE, else the system zone)
    next       Print the next fire instants of a cron expression or preset,
               one RFC 3339 UTC instant per line.
      --tz ZONE          evaluate in this IANA zone (default:
                         PARACHUTE_RUNNER_TIMEZONE, else the system zone)
      --from RFC3339     start after this instant (default: now)
      -n N               how many (default 5, at most 1000)

COMMON OPTIONS:
    --config FILE      use this config.json; master.key and secrets.json are
                       read beside it (default $PARACHUTE_HOME/runner/config.json)
    --vault-dir DIR    use a folder of markdown notes as the vault; no config
                       file or token needed
    -h, --help         print this help
    -V, --version      print the version

ENVIRONMENT:
    PARACHUTE_HOME                        base directory (default $HOME/.parachute)
    PARACHUTE_RUNNER_VAULT_URL            vault URL, or file:///path for a folder
    PARACHUTE_RUNNER_VAULT_NAME           vault name (default \"default\")
    PARACHUTE_RUNNER_VAULT_TOKEN          vault token; used as given, never stored
    PARACHUTE_RUNNER_POLL_INTERVAL        seconds between polls (serve)
    PARACHUTE_RUNNER_MAX_CONCURRENT_JOBS  jobs run at once (default 4)
    PARACHUTE_RUNNER_DISABLED             true: run no scheduled job
    PARACHUTE_RUNNER_CLAUDE_BIN           agent binary (default \"claude\" on PATH)
    PARACHUTE_RUNNER_TIMEZONE             default zone for schedules
    PARACHUTE_HUB_ORIGIN                  hub for serve's API tokens
                                          (default http://127.0.0.1:1939)
    PARACHUTE_RUNNER_HTTP_TIMEOUT         seconds per vault request (default 30)
    PARACHUTE_RUNNER_NOW                  RFC 3339 instant to use as \"now\"
                                          (for tests and replays: once, jobs,
                                          validate, next; serve ignores it)
    PARACHUTE_RUNNER_CLOCK                START,ANCHOR,SPEED: simulated time
                                          (for tests)
    RUST_LOG                              log level (default info); logs go to stderr
    The environment wins over config.json; command-line options win over both.

EXIT CODES:
    0   success, including nothing due
    1   at least one job failed or was invalid
    2   fatal: bad usage, bad config, vault unreachable while listing jobs

FILES:
    $PARACHUTE_HOME/runner/config.json    settings
    $PARACHUTE_HOME/runner/master.key     key for secrets.json (keep it)
    $PARACHUTE_HOME/runner/secrets.json   the vault token, encrypted
    $PARACHUTE_HOME/runner/state.json     what ran when; what is running
    $PARACHUTE_HOME/runner/outbox/        outputs the vault has not accepted yet
    $PARACHUTE_HOME/runner/locks/         lock files
    $PARACHUTE_HOME/runner/tmp/           each run's private MCP config (0700)
    $PARACHUTE_HOME/services.json         serve's registration row
";

/// A parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Help,
    Version,
    Once(OnceArgs),
    Serve(ServeArgs),
    Jobs(JobsArgs),
    Validate(ValidateArgs),
    Next(NextArgs),
}

/// Options every vault-using verb takes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Common {
    pub config: Option<PathBuf>,
    pub vault_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct OnceArgs {
    pub only: Option<String>,
    pub date: Option<Date>,
    pub dry_run: bool,
    pub json: bool,
    pub common: Common,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServeArgs {
    pub port: u16,
    pub host: String,
    pub poll_interval: Option<u64>,
    pub shutdown_timeout: Duration,
    pub common: Common,
}

impl Default for ServeArgs {
    fn default() -> ServeArgs {
        ServeArgs {
            port: 1945,
            host: "127.0.0.1".to_string(),
            poll_interval: None,
            shutdown_timeout: Duration::from_secs(30),
            common: Common::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobsArgs {
    pub json: bool,
    pub common: Common,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValidateArgs {
    pub files: Vec<PathBuf>,
    pub tz: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NextArgs {
    pub expr: String,
    pub tz: Option<String>,
    pub from: Option<Timestamp>,
    pub count: usize,
}

/// A usage error: the message says what was wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (see parachute-runner --help)", self.0)
    }
}

impl std::error::Error for UsageError {}

impl From<lexopt::Error> for UsageError {
    fn from(e: lexopt::Error) -> UsageError {
        UsageError(e.to_string())
    }
}

/// Parses argv (without the program name).
pub fn parse<I>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut parser = lexopt::Parser::from_args(args);
    let Some(arg) = parser.next()? else {
        return Ok(Command::Help);
    };
    match arg {
        Short('h') | Long("help") => Ok(Command::Help),
        Short('V') | Long("version") => Ok(Command::Version),
        Value(verb) => match verb.to_str() {
            Some("once") => parse_once(&mut parser),
            Some("serve") => parse_serve(&mut parser),
            Some("jobs") => parse_jobs(&mut parser),
            Some("validate") => parse_validate(&mut parser),
            Some("next") => parse_next(&mut parser),
            Some("help") => Ok(Command::Help),
            _ => Err(UsageError(format!(
                "unknown command {:?}; the commands are once, serve, jobs, validate, next",
                verb.to_string_lossy()
            ))),
        },
        other => Err(other.unexpected().into()),
    }
}

fn parse_once(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut a = OnceArgs::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => a.common.config = Some(parser.value()?.into()),
            Long("vault-dir") => a.common.vault_dir = Some(parser.value()?.into()),
            Long("only") => a.only = Some(string(parser.value()?, "--only")?),
            Long("date") => {
                let text = string(parser.value()?, "--date")?;
                a.date = Some(parse_date(&text)?);
            }
            Long("dry-run") => a.dry_run = true,
            Long("json") => a.json = true,
            Short('h') | Long("help") => return Ok(Command::Help),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Command::Once(a))
}

fn parse_serve(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut a = ServeArgs::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => a.common.config = Some(parser.value()?.into()),
            Long("vault-dir") => a.common.vault_dir = Some(parser.value()?.into()),
            Long("port") => a.port = number(parser.value()?, "--port", 0, u16::MAX as u64)? as u16,
            Long("host") => a.host = string(parser.value()?, "--host")?,
            Long("poll-interval") => {
                a.poll_interval = Some(number(
                    parser.value()?,
                    "--poll-interval",
                    1,
                    crate::config::MAX_POLL_INTERVAL,
                )?);
            }
            Long("shutdown-timeout") => {
                a.shutdown_timeout =
                    Duration::from_secs(number(parser.value()?, "--shutdown-timeout", 0, 86_400)?);
            }
            Short('h') | Long("help") => return Ok(Command::Help),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Command::Serve(a))
}

fn parse_jobs(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut a = JobsArgs::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => a.common.config = Some(parser.value()?.into()),
            Long("vault-dir") => a.common.vault_dir = Some(parser.value()?.into()),
            Long("json") => a.json = true,
            Short('h') | Long("help") => return Ok(Command::Help),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Command::Jobs(a))
}

fn parse_validate(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut a = ValidateArgs::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("tz") => a.tz = Some(string(parser.value()?, "--tz")?),
            Value(file) => a.files.push(file.into()),
            Short('h') | Long("help") => return Ok(Command::Help),
            other => return Err(other.unexpected().into()),
        }
    }
    if a.files.is_empty() {
        return Err(UsageError(
            "validate needs at least one FILE.md".to_string(),
        ));
    }
    Ok(Command::Validate(a))
}

fn parse_next(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut expr = None;
    let mut a = NextArgs {
        expr: String::new(),
        tz: None,
        from: None,
        count: 5,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("tz") => a.tz = Some(string(parser.value()?, "--tz")?),
            Long("from") => {
                let text = string(parser.value()?, "--from")?;
                a.from = Some(text.parse().map_err(|_| {
                    UsageError(format!("--from: expected an RFC 3339 instant such as 2026-03-08T07:00:00Z (got {text:?})"))
                })?);
            }
            Short('n') => a.count = number(parser.value()?, "-n", 1, 1000)? as usize,
            Value(v) if expr.is_none() => expr = Some(string(v, "the expression")?),
            Short('h') | Long("help") => return Ok(Command::Help),
            other => return Err(other.unexpected().into()),
        }
    }
    a.expr = expr.ok_or_else(|| {
        UsageError("next needs a cron expression or preset, e.g. next \"0 8 * * *\"".to_string())
    })?;
    Ok(Command::Next(a))
}

fn string(value: OsString, what: &str) -> Result<String, UsageError> {
    value.into_string().map_err(|v| {
        UsageError(format!(
            "{what}: not valid UTF-8: {:?}",
            v.to_string_lossy()
        ))
    })
}

fn number(value: OsString, what: &str, min: u64, max: u64) -> Result<u64, UsageError> {
    let text = string(value, what)?;
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(UsageError(format!(
            "{what}: expected an integer from {min} to {max} (got {text:?})"
        ))),
    }
}

fn parse_date(text: &str) -> Result<Date, UsageError> {
    let bad = || UsageError(format!("--date: expected YYYY-MM-DD (got {text:?})"));
    if text.len() != 10 {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().copied())
    }

    #[test]
    fn verbs_and_flags() {
        assert_eq!(p(&[]).unwrap(), Command::Help);
        assert_eq!(p(&["--version"]).unwrap(), Command::Version);
        assert_eq!(p(&["-V"]).unwrap(), Command::Version);
        assert_eq!(p(&["once", "--help"]).unwrap(), Command::Help);
        let Command::Once(o) = p(&[
            "once",
            "--only",
            "jobs/a",
            "--date",
            "2026-01-02",
            "--dry-run",
            "--json",
            "--config",
            "/c.json",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(o.only.as_deref(), Some("jobs/a"));
        assert_eq!(o.date.unwrap().to_string(), "2026-01-02");
        assert!(o.dry_run && o.json);
        assert_eq!(o.common.config, Some(PathBuf::from("/c.json")));
        let Command::Serve(s) = p(&[
            "serve",
            "--port",
            "0",
            "--host",
            "0.0.0.0",
            "--poll-interval",
            "5",
            "--shutdown-timeout",
            "2",
            "--vault-dir",
            "v",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.port, s.host.as_str(), s.poll_interval, s.shutdown_timeout),
            (0, "0.0.0.0", Some(5), Duration::from_secs(2))
        );
        assert_eq!(s.common.vault_dir, Some(PathBuf::from("v")));
        let Command::Next(n) = p(&[
            "next",
            "0 8 * * *",
            "--tz",
            "UTC",
            "--from",
            "2026-01-01T00:00:00Z",
            "-n",
            "3",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!((n.expr.as_str(), n.count), ("0 8 * * *", 3));
        let Command::Validate(v) = p(&["validate", "a.md", "b.md"]).unwrap() else {
            panic!()
        };
        assert_eq!(v.files.len(), 2);
    }

    #[test]
    fn usage_errors() {
        for (args, want) in [
            (&["frobnicate"][..], "unknown command \"frobnicate\""),
            (
                &["once", "--date", "2026-13-01"],
                "--date: expected YYYY-MM-DD",
            ),
            (&["once", "--date", "26-1-1"], "--date: expected YYYY-MM-DD"),
            (&["once", "--bogus"], "invalid option '--bogus'"),
            (
                &["serve", "--port", "70000"],
                "--port: expected an integer from 0 to 65535",
            ),
            (&["serve", "--poll-interval", "0"], "--poll-interval"),
            (&["next"], "next needs a cron expression"),
            (&["next", "a", "b"], "unexpected argument"),
            (
                &["next", "* * * * *", "-n", "0"],
                "-n: expected an integer from 1 to 1000",
            ),
            (
                &["next", "* * * * *", "--from", "yesterday"],
                "--from: expected an RFC 3339 instant",
            ),
            (&["validate"], "validate needs at least one FILE.md"),
            (&["once", "--only"], "missing argument"),
        ] {
            let err = p(args).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}
