//! The `parachute-runner` binary: everything lives in the library; this
//! only hands it argv and turns its answer into the exit status.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(parachute_runner::main(std::env::args_os().skip(1)))
}
