//! The fatal errors of a command: each stops it with exit code 2 and one
//! line on stderr. A failing job is not one of them; it is a result that
//! the command reports and counts (exit code 1). Also `Problem`, one
//! finding about one named setting or field, which config checks and the
//! HTTP API report in lists.

use std::fmt;

use crate::cli::UsageError;
use crate::config::ConfigError;
use crate::state::StateError;
use crate::vault::VaultError;

#[derive(Debug)]
pub enum Error {
    Usage(UsageError),
    Config(ConfigError),
    State(StateError),
    Vault(VaultError),
    /// Anything else that stops the command, already phrased for the user.
    Fatal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(e) => e.fmt(f),
            Error::Config(e) => e.fmt(f),
            Error::State(e) => e.fmt(f),
            Error::Vault(e) => e.fmt(f),
            Error::Fatal(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

/// `From` for each wrapped error, so `?` lifts them.
macro_rules! wrap {
    ($($variant:ident($ty:ty)),*) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Error {
                Error::$variant(e)
            }
        })*
    };
}

wrap!(
    Usage(UsageError),
    Config(ConfigError),
    State(StateError),
    Vault(VaultError)
);

/// One problem with one named thing: a config key (`poll_interval_seconds`),
/// an environment variable, a job field. `key` is empty when the problem is
/// about the whole document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }

    /// A problem of the whole document rather than of one key.
    pub fn whole(message: impl Into<String>) -> Problem {
        Problem::new("", message)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}
