//! parachute-runner: runs scheduled Claude jobs kept as notes in a
//! Parachute vault or a folder of markdown files.
//!
//! One pass is a pipeline and the modules follow it: `config` (file, env,
//! `secrets`) → `vault` (REST or directory) → `job` (note → checked job) →
//! `schedule` (cron → instants) → `state` (due decision, locks, records) →
//! `agent` (spawn, capture, kill) → `output` (note, delivery, outbox).
//! `once` and `serve` drive it; `server` and `auth` sit beside `serve`.

pub mod agent;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod files;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod job;
pub mod metrics;
pub mod once;
pub mod output;
pub mod percent;
pub mod random;
pub mod run;
pub mod schedule;
pub mod secrets;
pub mod serve;
pub mod server;
pub mod services;
pub mod state;
pub mod sys;
pub mod template;
pub mod vault;

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
    sys::limit_malloc_arenas();
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
            let _ = writeln!(std::io::stderr(), "parachute-runner: error: {e}");
            EXIT_FATAL
        }
    }
}

/// Runs one parsed command.
pub fn run(cmd: Command, env: &Env) -> Result<u8, Error> {
    match cmd {
        Command::Help => print(cli::HELP),
        Command::Version => print(&format!("parachute-runner {}\n", env!("CARGO_PKG_VERSION"))),
        Command::Next(args) => commands::next(&args, env),
        Command::Validate(args) => commands::validate(&args, env),
        Command::Once(args) => once::run(&args, env),
        Command::Jobs(args) => commands::jobs(&args, env),
        Command::Serve(args) => serve::run(&args, env),
    }
}

/// Writes to stdout. A closed pipe (`| head`) is not an error.
pub fn print(text: &str) -> Result<u8, Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(EXIT_OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(EXIT_OK),
        Err(e) => Err(Error::Fatal(format!("writing to stdout: {e}"))),
    }
}

/// "Now": the clock, or `PARACHUTE_RUNNER_NOW` when set (tests, replays).
pub fn now(env: &Env) -> Result<Timestamp, Error> {
    match env.get("PARACHUTE_RUNNER_NOW") {
        None => Ok(Timestamp::now()),
        Some(text) => text.parse().map_err(|_| {
            Error::Fatal(format!(
                "PARACHUTE_RUNNER_NOW: expected an RFC 3339 instant such as 2026-03-08T07:00:00Z (got {text:?})"
            ))
        }),
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
            writeln!(
                buf,
                "{} {:<5} {}",
                now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                record.level(),
                record.args()
            )
        })
        .try_init();
}
