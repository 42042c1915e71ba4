//! The command line (SPEC §8): a lexopt loop per verb filling a plain
//! struct, then checks of the values, and the help texts (one per verb).
//! No I/O beyond reading argv.
//!
//! Long (about 670 lines) because most of it is the help text of each verb,
//! kept beside the parser of its flags so the two cannot drift apart.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use lexopt::prelude::*;

/// What no verb (or a wrong one) prints, on stderr.
pub const USAGE: &str = "\
usage: parachute-runner <command> [options]

commands:
    once       run the jobs that are due, then exit (for cron, systemd timers)
    serve      the scheduler as a long-lived process, with the HTTP admin API
    jobs       list the jobs: schedule, next fire, last run, problems
    runs       list past runs, newest first
    pause      stop scheduling a job (resume starts it again)
    resume     schedule a paused job again
    doctor     check the setup, one line per check with the fix
    validate   check job note files as a pass would
    next       print the next fire times of a cron expression

`parachute-runner <command> --help` explains a command; `--help` alone, all.
";

const ONCE_HELP: &str = "\
parachute-runner once [--only PATH] [--date YYYY-MM-DD] [--dry-run] [--json]
                      [-v | --quiet] [--config FILE] [--vault-dir DIR]

Delivers queued outputs, finds the job notes, runs the ones that are due (at
most max_concurrent_jobs at a time) and exits. Meant to be started every
minute by cron or a systemd timer; safe to start many at once.

Quiet when nothing happened (cron mails whatever a job prints): a line per
job that ran, failed, was invalid or was skipped for a reason, then
`done: total=T ok=O failed=F skipped=S`; nothing at all when no job did any
of that.

    --only PATH        run this one job now, whatever its schedule (manual,
                       disabled and paused jobs too)
    --date YYYY-MM-DD  use this date for {{date}} and {{yesterday}}
    --dry-run          print each job's decision, next fire time and output
                       path; run nothing, change nothing
    --json             print the results as one JSON object on stdout
    -v, --verbose      always print the summary line
    --quiet            print failures only (and no summary)

SIGINT, SIGTERM or SIGHUP: no new run starts, running agents are stopped,
their runs get `interrupted: runner stopped by <signal>` notes, and the
exit code is 130 (SIGINT) or 143.
";

const SERVE_HELP: &str = "\
parachute-runner serve [--port N] [--host ADDR] [--poll-interval S]
                       [--shutdown-timeout S] [--config FILE] [--vault-dir DIR]

Runs the scheduler as a long-lived process with the HTTP admin API (for
containers). SIGTERM or SIGINT stops it gracefully: no new runs, running
ones get --shutdown-timeout to finish, then they are stopped.

    --port N               listen port (default 1945; 0: any free port)
    --host ADDR            listen address (default 127.0.0.1)
    --poll-interval S      seconds between job-list polls (default: config)
    --shutdown-timeout S   seconds to let running jobs finish on shutdown
                           (default 30)

The API accepts the hub's tokens and the local admin token in
$PARACHUTE_HOME/runner/admin-token (created on first start).
";

const JOBS_HELP: &str = "\
parachute-runner jobs [--json] [--config FILE] [--vault-dir DIR]

Prints a table of the jobs: path, schedule, zone, next fire (in the job's
zone), last run and its status, problems (and warnings). Exit 1 if a job is
invalid.
";

const RUNS_HELP: &str = "\
parachute-runner runs [JOB] [-n N] [--since TIME] [--failed] [--json]
                      [--config FILE] [--vault-dir DIR]

Prints past runs from the vault's job-run notes, newest first: start time,
job, trigger, status, duration, cost, output path and, for failures, the
reason.

    JOB            only this job's runs (its path, e.g. jobs/daily-brief)
    -n N           at most N runs (default 20, at most 1000)
    --since TIME   only runs started at or after TIME (RFC 3339, or a date)
    --failed       only failed runs
    --json         one JSON object on stdout (times in UTC)
";

const PAUSE_HELP: &str = "\
parachute-runner pause JOB... [--config FILE] [--vault-dir DIR]
parachute-runner resume JOB... [--config FILE] [--vault-dir DIR]

Pauses or resumes jobs without editing their notes (kept in state.json, so
once and serve both see it). A paused job's slots are skipped, not caught up
on resume; `once --only` and run-now still run it.
";

const DOCTOR_HELP: &str = "\
parachute-runner doctor [--config FILE] [--vault-dir DIR]

Checks the setup and prints one line per check with the fix: config, the
vault and its token, claude and its version, permission mode and root, the
state directory, time zone, outbox, jobs with problems, and the time since
the last pass (is cron or systemd running us at all?). Exit 0 when every
check passes, 1 otherwise.
";

const VALIDATE_HELP: &str = "\
parachute-runner validate [--tz ZONE] [--json] FILE.md|DIR...

Checks job note files as a pass would: every problem, warnings for keys the
runner does not know (with the closest known one) and for
bypassPermissions, and the next 3 fire times in the job's zone. A DIR is
walked like a folder vault (files tagged `job`). Exit 1 if any is invalid.

    --tz ZONE   zone for jobs that name none (default:
                PARACHUTE_RUNNER_TIMEZONE, else the system zone)
    --json      the findings as one JSON object on stdout
";

const NEXT_HELP: &str = "\
parachute-runner next \"CRON OR PRESET\" [--tz ZONE] [--from RFC3339] [-n N] [--utc]

Prints the next fire times of a cron expression or preset, one per line, in
the zone with its offset (--utc: as UTC instants).

    --tz ZONE        evaluate in this IANA zone (default:
                     PARACHUTE_RUNNER_TIMEZONE, else the system zone)
    --from RFC3339   start after this instant (default: now)
    -n N             how many (default 5, at most 1000)
    --utc            print UTC instants (2026-03-08T07:00:00Z)
";

pub const HELP: &str = "\
parachute-runner: runs scheduled Claude jobs kept as notes in a Parachute
vault (or a folder of markdown files) and writes each run's output back as a
note.

USAGE:
    parachute-runner once [--only PATH] [--date YYYY-MM-DD] [--dry-run] [--json]
                          [-v | --quiet] [--config FILE] [--vault-dir DIR]
    parachute-runner serve [--port N] [--host ADDR] [--poll-interval S]
                           [--shutdown-timeout S] [--config FILE] [--vault-dir DIR]
    parachute-runner jobs [--json] [--config FILE] [--vault-dir DIR]
    parachute-runner runs [JOB] [-n N] [--since TIME] [--failed] [--json]
    parachute-runner pause JOB...    |    parachute-runner resume JOB...
    parachute-runner doctor [--config FILE] [--vault-dir DIR]
    parachute-runner validate [--tz ZONE] [--json] FILE.md|DIR...
    parachute-runner next \"CRON OR PRESET\" [--tz ZONE] [--from RFC3339] [-n N] [--utc]
    parachute-runner --help | --version | <command> --help

COMMANDS:
    once       Deliver queued outputs, find the job notes, run the ones that
               are due and exit; quiet when nothing happened. For cron and
               systemd timers; safe to start many at once.
    serve      The scheduler as a long-lived process with the HTTP admin API
               (for containers). SIGTERM or SIGINT stops it gracefully.
    jobs       A table of the jobs: path, schedule, zone, next fire, last
               run and its status, problems. --json for JSON.
    runs       Past runs, newest first, from the vault's job-run notes.
    pause      Stop scheduling a job without editing its note; resume
    resume     starts it again.
    doctor     Check the setup, one line per check with the fix.
    validate   Check job note files (or a folder) as a pass would; print
               problems, warnings and the next 3 fire times.
    next       Print the next fire times of a cron expression or preset.

OPTIONS (once):
    --only PATH        run this one job now, whatever its schedule
    --date YYYY-MM-DD  use this date for {{date}} and {{yesterday}}
    --dry-run          print each job's decision, next fire time and output
                       path; run nothing, change nothing
    --json             print the results as one JSON object on stdout
    -v, --verbose      always print the summary line
    --quiet            print failures only
OPTIONS (serve):
    --port N               listen port (default 1945)
    --host ADDR            listen address (default 127.0.0.1)
    --poll-interval S      seconds between job-list polls (default: config)
    --shutdown-timeout S   seconds to let running jobs finish on shutdown
                           (default 30)
OPTIONS (runs):
    -n N, --since TIME, --failed, --json
OPTIONS (validate, next):
    --tz ZONE          zone for jobs (or the expression) that name none
                       (default: PARACHUTE_RUNNER_TIMEZONE, else the system zone)
    --from RFC3339     start after this instant (default: now)
    -n N               how many (default 5, at most 1000)
    --utc              UTC instants instead of times in the zone

COMMON OPTIONS:
    --config FILE      use this config.json; master.key and secrets.json are
                       read beside it (default $PARACHUTE_HOME/runner/config.json)
    --vault-dir DIR    use a folder of markdown notes as the vault; no config
                       file or token needed
    -h, --help         print this help (or a command's)
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
    PARACHUTE_RUNNER_PERMISSION_MODE      default permission mode (dontAsk)
    PARACHUTE_RUNNER_MAX_BUDGET_USD       default spending cap of a run
    PARACHUTE_RUNNER_RETRIES              attempts after a transient failure (2)
    PARACHUTE_RUNNER_RETRY_DELAY          delay before the first retry (60s)
    PARACHUTE_HUB_ORIGIN                  hub for serve's API tokens
                                          (default http://127.0.0.1:1939)
    PARACHUTE_RUNNER_HTTP_TIMEOUT         seconds per vault request (default 30)
    PARACHUTE_RUNNER_CGROUP               off: contain agents without a cgroup
    PARACHUTE_RUNNER_NOW                  RFC 3339 instant to use as \"now\"
                                          (testing aid; serve ignores it)
    PARACHUTE_RUNNER_CLOCK                START,ANCHOR,SPEED: simulated time
                                          (testing aid)
    PARACHUTE_RUNNER_TEST_HOOKS           1: let a release build take the
                                          two testing aids (it warns)
    RUST_LOG                              log level (default info); logs go to stderr
    The environment wins over config.json; command-line options win over both.

EXIT CODES:
    0   success, including nothing due
    1   at least one job failed or was invalid (doctor: a check failed)
    2   fatal: bad usage, bad config, vault unreachable while listing jobs
    130, 143   once stopped by SIGINT, or by SIGTERM/SIGHUP

FILES:
    $PARACHUTE_HOME/runner/config.json    settings
    $PARACHUTE_HOME/runner/master.key     key for secrets.json (keep it)
    $PARACHUTE_HOME/runner/secrets.json   the vault token, encrypted
    $PARACHUTE_HOME/runner/state.json     what ran when; what is running; pauses
    $PARACHUTE_HOME/runner/outbox/        outputs the vault has not accepted yet
    $PARACHUTE_HOME/runner/locks/         lock files
    $PARACHUTE_HOME/runner/tmp/           each run's private MCP config (0700)
    $PARACHUTE_HOME/runner/reserve        4 MiB freed when the disk is full
    $PARACHUTE_HOME/runner/admin-token    serve's local admin token
    $PARACHUTE_HOME/services.json         serve's registration row
";

/// A parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `--help` (or `help`): the whole help, on stdout.
    Help,
    /// `<verb> --help`: that verb's help, on stdout.
    VerbHelp(&'static str),
    /// No verb: the usage, on stderr, exit 2.
    Usage,
    Version,
    Once(OnceArgs),
    Serve(ServeArgs),
    Jobs(JobsArgs),
    Runs(RunsArgs),
    Pause(PauseArgs),
    Doctor(Common),
    Validate(ValidateArgs),
    Next(NextArgs),
}

/// Options every vault-using verb takes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Common {
    pub config: Option<PathBuf>,
    pub vault_dir: Option<PathBuf>,
}

/// How much `once` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verbosity {
    /// Lines for what happened, the summary only if anything did.
    #[default]
    Normal,
    /// The summary always.
    Verbose,
    /// Failures only.
    Quiet,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct OnceArgs {
    pub only: Option<String>,
    pub date: Option<Date>,
    pub dry_run: bool,
    pub json: bool,
    pub verbosity: Verbosity,
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

#[derive(Clone, Debug, PartialEq)]
pub struct RunsArgs {
    pub job: Option<String>,
    pub count: usize,
    pub since: Option<Timestamp>,
    pub failed: bool,
    pub json: bool,
    pub common: Common,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PauseArgs {
    pub jobs: Vec<String>,
    /// `resume` rather than `pause`.
    pub resume: bool,
    pub common: Common,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValidateArgs {
    pub files: Vec<PathBuf>,
    pub tz: Option<String>,
    pub json: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NextArgs {
    pub expr: String,
    pub tz: Option<String>,
    pub from: Option<Timestamp>,
    pub count: usize,
    pub utc: bool,
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
        return Ok(Command::Usage);
    };
    match arg {
        Short('h') | Long("help") => Ok(Command::Help),
        Short('V') | Long("version") => Ok(Command::Version),
        Value(verb) => match verb.to_str() {
            Some("once") => parse_once(&mut parser),
            Some("serve") => parse_serve(&mut parser),
            Some("jobs") => parse_jobs(&mut parser),
            Some("runs") => parse_runs(&mut parser),
            Some("pause") => parse_pause(&mut parser, false),
            Some("resume") => parse_pause(&mut parser, true),
            Some("doctor") => parse_doctor(&mut parser),
            Some("validate") => parse_validate(&mut parser),
            Some("next") => parse_next(&mut parser),
            Some("help") => Ok(Command::Help),
            _ => Err(UsageError(format!(
                "unknown command {:?}; the commands are once, serve, jobs, runs, pause, resume, doctor, validate, next",
                verb.to_string_lossy()
            ))),
        },
        other => Err(other.unexpected().into()),
    }
}

/// Which common option `arg` is, if any.
#[derive(Clone, Copy)]
enum CommonOpt {
    Config,
    VaultDir,
}

fn common_opt(arg: &lexopt::Arg<'_>) -> Option<CommonOpt> {
    match arg {
        Long("config") => Some(CommonOpt::Config),
        Long("vault-dir") => Some(CommonOpt::VaultDir),
        _ => None,
    }
}

/// Takes the value of a common option.
fn set_common(
    opt: CommonOpt,
    parser: &mut lexopt::Parser,
    c: &mut Common,
) -> Result<(), UsageError> {
    let value: PathBuf = parser.value()?.into();
    match opt {
        CommonOpt::Config => c.config = Some(value),
        CommonOpt::VaultDir => c.vault_dir = Some(value),
    }
    Ok(())
}

fn parse_once(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut a = OnceArgs::default();
    while let Some(arg) = parser.next()? {
        if let Some(opt) = common_opt(&arg) {
            set_common(opt, parser, &mut a.common)?;
            continue;
        }
        match arg {
            Long("only") => a.only = Some(string(parser.value()?, "--only")?),
            Long("date") => {
                let text = string(parser.value()?, "--date")?;
                a.date = Some(parse_date(&text, "--date")?);
            }
            Long("dry-run") => a.dry_run = true,
            Long("json") => a.json = true,
            Short('v') | Long("verbose") => a.verbosity = Verbosity::Verbose,
            Short('q') | Long("quiet") => a.verbosity = Verbosity::Quiet,
            Short('h') | Long("help") => return Ok(Command::VerbHelp(ONCE_HELP)),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Command::Once(a))
}

fn parse_serve(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut a = ServeArgs::default();
    while let Some(arg) = parser.next()? {
        if let Some(opt) = common_opt(&arg) {
            set_common(opt, parser, &mut a.common)?;
            continue;
        }
        match arg {
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
            Short('h') | Long("help") => return Ok(Command::VerbHelp(SERVE_HELP)),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Command::Serve(a))
}

fn parse_jobs(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut a = JobsArgs::default();
    while let Some(arg) = parser.next()? {
        if let Some(opt) = common_opt(&arg) {
            set_common(opt, parser, &mut a.common)?;
            continue;
        }
        match arg {
            Long("json") => a.json = true,
            Short('h') | Long("help") => return Ok(Command::VerbHelp(JOBS_HELP)),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Command::Jobs(a))
}

fn parse_runs(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut a = RunsArgs {
        job: None,
        count: 20,
        since: None,
        failed: false,
        json: false,
        common: Common::default(),
    };
    while let Some(arg) = parser.next()? {
        if let Some(opt) = common_opt(&arg) {
            set_common(opt, parser, &mut a.common)?;
            continue;
        }
        match arg {
            Short('n') => a.count = number(parser.value()?, "-n", 1, 1000)? as usize,
            Long("since") => a.since = Some(parse_since(&string(parser.value()?, "--since")?)?),
            Long("failed") => a.failed = true,
            Long("json") => a.json = true,
            Value(job) if a.job.is_none() => a.job = Some(string(job, "the job")?),
            Short('h') | Long("help") => return Ok(Command::VerbHelp(RUNS_HELP)),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Command::Runs(a))
}

fn parse_pause(parser: &mut lexopt::Parser, resume: bool) -> Result<Command, UsageError> {
    let mut a = PauseArgs {
        resume,
        ..PauseArgs::default()
    };
    while let Some(arg) = parser.next()? {
        if let Some(opt) = common_opt(&arg) {
            set_common(opt, parser, &mut a.common)?;
            continue;
        }
        match arg {
            Value(job) => a.jobs.push(string(job, "the job")?),
            Short('h') | Long("help") => return Ok(Command::VerbHelp(PAUSE_HELP)),
            other => return Err(other.unexpected().into()),
        }
    }
    if a.jobs.is_empty() {
        let verb = if resume { "resume" } else { "pause" };
        return Err(UsageError(format!(
            "{verb} needs at least one job, e.g. {verb} jobs/daily-brief"
        )));
    }
    Ok(Command::Pause(a))
}

fn parse_doctor(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut c = Common::default();
    while let Some(arg) = parser.next()? {
        if let Some(opt) = common_opt(&arg) {
            set_common(opt, parser, &mut c)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::VerbHelp(DOCTOR_HELP)),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Command::Doctor(c))
}

fn parse_validate(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let mut a = ValidateArgs::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("tz") => a.tz = Some(string(parser.value()?, "--tz")?),
            Long("json") => a.json = true,
            Value(file) => a.files.push(file.into()),
            Short('h') | Long("help") => return Ok(Command::VerbHelp(VALIDATE_HELP)),
            other => return Err(other.unexpected().into()),
        }
    }
    if a.files.is_empty() {
        return Err(UsageError(
            "validate needs at least one FILE.md or DIR".to_string(),
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
        utc: false,
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
            Long("utc") => a.utc = true,
            Value(v) if expr.is_none() => expr = Some(string(v, "the expression")?),
            Short('h') | Long("help") => return Ok(Command::VerbHelp(NEXT_HELP)),
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

fn parse_date(text: &str, what: &str) -> Result<Date, UsageError> {
    let bad = || UsageError(format!("{what}: expected YYYY-MM-DD (got {text:?})"));
    if text.len() != 10 {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

/// `--since`: an RFC 3339 instant, or a date (its start, UTC).
fn parse_since(text: &str) -> Result<Timestamp, UsageError> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    let date = parse_date(text, "--since").map_err(|_| {
        UsageError(format!(
            "--since: expected an RFC 3339 instant such as 2026-03-08T07:00:00Z, or a date YYYY-MM-DD (got {text:?})"
        ))
    })?;
    date.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp())
        .map_err(|e| UsageError(format!("--since: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().copied())
    }

    #[test]
    fn verbs_and_flags() {
        assert_eq!(p(&[]).unwrap(), Command::Usage);
        assert_eq!(p(&["--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["--version"]).unwrap(), Command::Version);
        assert_eq!(p(&["-V"]).unwrap(), Command::Version);
        assert_eq!(
            p(&["once", "--help"]).unwrap(),
            Command::VerbHelp(ONCE_HELP)
        );
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
            "-v",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(o.only.as_deref(), Some("jobs/a"));
        assert_eq!(o.date.unwrap().to_string(), "2026-01-02");
        assert!(o.dry_run && o.json);
        assert_eq!(o.verbosity, Verbosity::Verbose);
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
            "--utc",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!((n.expr.as_str(), n.count, n.utc), ("0 8 * * *", 3, true));
        let Command::Validate(v) = p(&["validate", "a.md", "b.md", "--json"]).unwrap() else {
            panic!()
        };
        assert_eq!(v.files.len(), 2);
        assert!(v.json);
        let Command::Runs(r) = p(&[
            "runs",
            "jobs/a",
            "-n",
            "3",
            "--since",
            "2026-01-01",
            "--failed",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.job.as_deref(), Some("jobs/a"));
        assert_eq!(r.count, 3);
        assert_eq!(r.since.unwrap().to_string(), "2026-01-01T00:00:00Z");
        assert!(r.failed);
        let Command::Pause(pa) = p(&["resume", "jobs/a", "jobs/b"]).unwrap() else {
            panic!()
        };
        assert!(pa.resume);
        assert_eq!(pa.jobs, ["jobs/a", "jobs/b"]);
        assert_eq!(p(&["doctor"]).unwrap(), Command::Doctor(Common::default()));
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
            (&["pause"], "pause needs at least one job"),
            (
                &["runs", "--since", "soon"],
                "--since: expected an RFC 3339",
            ),
        ] {
            let err = p(args).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}
