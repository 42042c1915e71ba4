//! The fatal errors of a command: each stops it with exit code 2 and one
//! line on stderr. A failing job is not one of them; it is a result that
//! the command reports and counts (exit code 1).

use std::fmt;

use crate::cli::UsageError;
use crate::config::ConfigError;

#[derive(Debug)]
pub enum Error {
    Usage(UsageError),
    Config(ConfigError),
    /// Anything else that stops the command, already phrased for the user.
    Fatal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(e) => e.fmt(f),
            Error::Config(e) => e.fmt(f),
            Error::Fatal(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

impl From<UsageError> for Error {
    fn from(e: UsageError) -> Error {
        Error::Usage(e)
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}
