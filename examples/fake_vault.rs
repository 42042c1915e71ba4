//! Runs the fake vault (`tests/support/fake_vault.rs`) as a standalone
//! server, for benchmarks and manual testing of the runner.
//!
//! ```text
//! cargo run --example fake_vault -- [--addr 127.0.0.1:0] [--token pvt_test_token]
//!     [--vault default] [--seed-jobs N] [--seed-due N]
//! ```
//!
//! Prints the URL (`http://127.0.0.1:PORT`) on the first line of stdout, then
//! serves until killed. `--seed-jobs N` creates `jobs/bench-00001`… that fire
//! once a year (`0 0 1 1 *`); `--seed-due N` creates `jobs/due-00001`… that
//! fire every minute (`* * * * *`). Requests are not recorded (nobody could
//! read them, and a long run would keep growing).

#[path = "../tests/support/fake_vault.rs"]
mod fake_vault;

use std::io::Write;
use std::process::ExitCode;

use fake_vault::{DEFAULT_TOKEN, DEFAULT_VAULT, FakeVault};

const USAGE: &str = "usage: fake_vault [--addr HOST:PORT] [--token TOKEN] [--vault NAME] \
                     [--seed-jobs N] [--seed-due N]";

struct Options {
    addr: String,
    token: String,
    vault: String,
    seed_jobs: usize,
    seed_due: usize,
}

/// What the command line asks for.
enum Parsed {
    Run(Options),
    Help,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut options = Options {
        addr: "127.0.0.1:0".to_string(),
        token: DEFAULT_TOKEN.to_string(),
        vault: DEFAULT_VAULT.to_string(),
        seed_jobs: 0,
        seed_due: 0,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Parsed::Help);
        }
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let count = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: expected a count, got {v:?}"))
        };
        match flag.as_str() {
            "--addr" => options.addr = value()?,
            "--token" => options.token = value()?,
            "--vault" => options.vault = value()?,
            "--seed-jobs" => options.seed_jobs = count(value()?)?,
            "--seed-due" => options.seed_due = count(value()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Parsed::Run(options))
}

/// A valid job note: frontmatter plus a one-line prompt.
fn job_content(name: &str, schedule: &str) -> String {
    format!(
        "---\nschedule: \"{schedule}\"\nmodel: test-model\nallowed_tools: [Read]\n---\nSay hello from {name}.\n"
    )
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("fake_vault: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let vault = match FakeVault::start_with(&options.addr, &options.token, &options.vault) {
        Ok(vault) => vault,
        Err(err) => {
            eprintln!("fake_vault: cannot listen on {}: {err}", options.addr);
            return ExitCode::FAILURE;
        }
    };
    vault.set_recording(false);
    for i in 1..=options.seed_jobs {
        let name = format!("bench-{i:05}");
        vault.add_job(&format!("jobs/{name}"), &job_content(&name, "0 0 1 1 *"));
    }
    for i in 1..=options.seed_due {
        let name = format!("due-{i:05}");
        vault.add_job(&format!("jobs/{name}"), &job_content(&name, "* * * * *"));
    }

    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{}", vault.url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    eprintln!(
        "fake_vault: serving vault {:?} at {} ({} notes), token {:?}",
        options.vault,
        vault.api_url(),
        vault.notes().len(),
        options.token
    );
    loop {
        std::thread::park();
    }
}
