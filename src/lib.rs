//! parachute-runner: runs scheduled Claude jobs kept as notes in a
//! Parachute vault or a folder of markdown files.
//!
//! One pass is a pipeline and the modules follow it, in the order data
//! flows: `config` (file, environment, `secrets`) → `vault` (REST or a
//! directory) → `job` (note → checked job, `template`s, `tools`) →
//! `schedule` (cron → instants) → `due` (the pure due decision) → `state`
//! (records and locks, `instant`s on disk; `health` for notices and
//! staleness) → `engine` (decide and claim a pass, by the `clock`; `coord`
//! for claims in the vault across hosts) → `run` (one claimed run) →
//! `agent` (spawn, feed, stop; `contain` keeps what it starts in a cgroup,
//! through `os`) → `stream` (its stream-json) → `judge` (success or the
//! failure's cause) → `note` (the output note) → `deliver` and `outbox`
//! (writing it, keeping it until written), with `recorder` writing the
//! outcome, `alert` sending pings and notices in the `background`, and
//! `recover` settling the runs of runners that died.
//!
//! `once` and `serve` are the two drivers of the engine; `admin_api` (on
//! `http`), `auth`, `metrics` and `registration` sit beside `serve`;
//! `inspect`, `jobs`, `runs` and `doctor` are the other verbs, `cli` the
//! command line. `files`, `text`, `percent`, `random` and `error` serve
//! them all.

mod admin_api;
mod agent;
mod alert;
mod auth;
mod background;
mod cli;
mod clock;
mod config;
mod contain;
mod coord;
mod deliver;
mod doctor;
mod due;
mod engine;
mod error;
mod files;
#[doc(hidden)]
pub mod fuzz_targets;
mod health;
mod http;
mod inspect;
mod instant;
mod job;
mod jobs;
mod judge;
mod metrics;
mod note;
mod once;
mod os;
mod outbox;
mod percent;
mod random;
mod recorder;
mod recover;
mod registration;
mod run;
mod runs;
mod schedule;
mod secrets;
mod serve;
mod state;
mod stream;
mod template;
mod text;
mod tools;
mod vault;

/// What the integration tests check directly, beside the binary.
#[doc(hidden)]
pub mod testing {
    pub use crate::job::{parse_frontmatter, split_frontmatter};
    pub use crate::schedule::Schedule;
    pub use crate::secrets::{Secret, SecretStore};
    pub use crate::vault::dir::DirVault;
    pub use crate::vault::{Created, NewNote, RunFilter, Vault};
}

use std::ffi::OsString;
use std::io::Write;

use jiff::Timestamp;

use crate::cli::Command;
use crate::config::Env;
use crate::error::Error;

/// Exit codes (SPEC §8).
pub const EXIT_OK: u8 = 0;
pub const EXIT_JOB_FAILED: u8 = 1;
pub const EXIT_FATAL: u8 = 2;

/// Runs the command line `args` (without the program name) and returns the
/// exit code. Fatal errors are printed here, once.
pub fn main<I>(args: I) -> u8
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let args = args.into_iter().map(Into::into);
    os::limit_malloc_arenas();
    os::unignore_stop_signals();
    init_logging();
    let env = Env::os();
    let result = cli::parse(args)
        .map_err(Error::from)
        .and_then(|cmd| run(cmd, &env));
    if log::log_enabled!(log::Level::Debug)
        && let Some(kib) = peak_rss_kib()
    {
        log::debug!("peak memory: {kib} KiB");
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            // Not through the logger: a fatal error must show even with
            // RUST_LOG=off.
            let message = e.to_string();
            let _ = writeln!(
                std::io::stderr(),
                "parachute-runner: error: {}",
                text::shown(&message)
            );
            EXIT_FATAL
        }
    }
}

/// Runs one parsed command.
pub fn run(cmd: Command, env: &Env) -> Result<u8, Error> {
    match cmd {
        Command::Help => print(cli::HELP),
        Command::VerbHelp(text) => print(text),
        Command::Usage => {
            let _ = std::io::stderr().write_all(cli::USAGE.as_bytes());
            Ok(EXIT_FATAL)
        }
        Command::Version => print(&format!("parachute-runner {}\n", env!("CARGO_PKG_VERSION"))),
        Command::Next(args) => inspect::next(&args, env),
        Command::Validate(args) => inspect::validate(&args, env),
        Command::Once(args) => once::run(&args, env),
        Command::Jobs(args) => jobs::jobs(&args, env),
        Command::Runs(args) => runs::runs(&args, env),
        Command::Pause(args) => jobs::pause(&args, env),
        Command::Doctor(args) => doctor::doctor(&args, env),
        Command::Serve(args) => serve::run(&args, env),
    }
}

/// Writes to stdout. A closed pipe (`| head`) is not an error.
pub fn print(text: &str) -> Result<u8, Error> {
    let text = text::shown_lines(text);
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(EXIT_OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(EXIT_OK),
        Err(e) => Err(Error::Fatal(format!("writing to stdout: {e}"))),
    }
}

/// This process's peak resident memory (VmHWM), where /proc has it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Logs go to stderr as `<UTC time> <LEVEL> <message>`; the level comes from
/// `RUST_LOG` (default `info`).
fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("info");
    let _ = env_logger::Builder::from_env(env)
        .format(|buf, record| {
            let now = Timestamp::now();
            let message = record.args().to_string();
            writeln!(
                buf,
                "{} {:<5} {}",
                now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                record.level(),
                text::shown(&message)
            )
        })
        .try_init();
}
