//! Writing an output note to the vault (SPEC §6.4): 3 tries with backoff
//! on transient errors, and the `-<run id prefix>` suffix on a conflict.
//!
//! Idempotent by run id: when a path is taken, the note there is read
//! back, and if it is this run's own note (a retry after a lost answer)
//! the delivery is done. So an output is never written twice.

use std::time::{Duration, Instant};

use crate::vault::{Created, NewNote, Vault, VaultError};

/// Backoff before each retry of a transient failure (SPEC §6.4: 3 tries
/// within about 10 s).
pub const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];

/// The time within which an outbox delivery may start a retry.
pub const RETRY_WINDOW: Duration = Duration::from_secs(10);

/// Writes `note` to the vault: 3 tries with backoff on transient errors,
/// the `-<run id prefix>` suffix on a conflict. Returns the path written.
/// With `window` (the note is safe in the outbox), no retry starts after
/// it: a vault that stalls each request to its timeout leaves the note
/// queued instead of holding the run. Without, all 3 tries are made.
pub fn deliver(
    vault: &dyn Vault,
    note: &NewNote,
    window: Option<Duration>,
) -> Result<String, VaultError> {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        match deliver_once(vault, note) {
            Ok(path) => return Ok(path),
            Err(e)
                if e.is_transient()
                    && attempt < RETRY_DELAYS.len()
                    && window.is_none_or(|w| start.elapsed() + RETRY_DELAYS[attempt] <= w) =>
            {
                log::warn!("{e}; trying again in {}s", RETRY_DELAYS[attempt].as_secs());
                std::thread::sleep(RETRY_DELAYS[attempt]);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn deliver_once(vault: &dyn Vault, note: &NewNote) -> Result<String, VaultError> {
    if let Created::At(path) = vault.create_note(note)? {
        return Ok(path);
    }
    if is_ours(vault, &note.path, note)? {
        return Ok(note.path.clone());
    }
    let prefix: String = note.run_id().unwrap_or("").chars().take(8).collect();
    let mut other = note.clone();
    other.path = format!("{}-{prefix}", note.path);
    if let Created::At(path) = vault.create_note(&other)? {
        return Ok(path);
    }
    if is_ours(vault, &other.path, note)? {
        return Ok(other.path);
    }
    Err(VaultError::Status {
        what: format!("writing note {}", note.path),
        status: 409,
        message: format!(
            "both {} and {} are taken by other notes",
            note.path, other.path
        ),
    })
}

/// Whether the note at `path` is this run's (same `run_id`).
fn is_ours(vault: &dyn Vault, path: &str, note: &NewNote) -> Result<bool, VaultError> {
    let Some(run_id) = note.run_id() else {
        return Ok(false);
    };
    Ok(vault
        .get_note(path)?
        .is_some_and(|n| n.run_id() == Some(run_id)))
}
