//! The daemon's side of the admin API (SPEC §9.3): run-now, partial
//! config updates, clear-credential and the config view. Routing and
//! answers are `admin_api`'s.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use super::{Daemon, runtime_for};
use crate::config::{self, VaultTarget};
use crate::due::Trigger;
use crate::engine::{self, Manual, Runtime};
use crate::error::Problem;
use crate::run::Claimed;

/// Why run-now cannot run.
#[derive(Debug)]
pub enum RunNowError {
    NotFound,
    Running,
    Paused,
    Invalid(String),
    Upstream(String),
}

impl Daemon {
    /// Runs one job now for `POST /runner/jobs/<path>/run-now`.
    pub fn run_now(self: &Arc<Self>, path: &str) -> Result<(Runtime, Claimed), RunNowError> {
        let (rt, known) = {
            let s = self.shared();
            (s.active_rt(), s.table.contains_key(path))
        };
        let rt = rt.ok_or(RunNowError::Paused)?;
        let note = rt
            .vault
            .get_note(path)
            .map_err(|e| RunNowError::Upstream(e.to_string()))?
            .ok_or(RunNowError::NotFound)?;
        // A job the first poll has not listed yet is a job all the same.
        let is_job = note.tags.iter().any(|t| t == crate::vault::JOB_TAG) && !note.is_output();
        if !known && !is_job {
            return Err(RunNowError::NotFound);
        }
        let claimed = match engine::claim_now(&rt, &note, Trigger::Http) {
            Ok(Manual::Claimed(claimed)) => *claimed,
            Ok(Manual::Invalid(e)) => return Err(RunNowError::Invalid(e.to_string())),
            Ok(Manual::Running) => return Err(RunNowError::Running),
            Err(e) => return Err(RunNowError::Upstream(e.to_string())),
        };
        self.track(&claimed);
        Ok((rt, claimed))
    }

    /// Pauses or resumes one job for `POST /runner/jobs/<path>/pause|resume`
    /// (SPEC §7.5). `Ok(false)`: no such job.
    pub fn set_paused(&self, path: &str, paused: bool) -> Result<bool, String> {
        let (rt, known, runner_dir) = {
            let s = self.shared();
            (
                s.active_rt(),
                s.table.contains_key(path),
                s.config.paths.runner_dir.clone(),
            )
        };
        if !known {
            // A job the last poll has not listed yet is a job all the same.
            let Some(rt) = &rt else { return Ok(false) };
            let note = rt.vault.get_note(path).map_err(|e| e.to_string())?;
            if !note.is_some_and(|n| {
                n.tags.iter().any(|t| t == crate::vault::JOB_TAG) && !n.is_output()
            }) {
                return Ok(false);
            }
        }
        let now = self.clock.now();
        let by = paused.then(|| crate::state::Paused {
            by: "http".to_string(),
            at: now,
        });
        crate::state::Store::new(&runner_dir)
            .set_paused(&[path.to_string()], by, now)
            .map_err(|e| e.to_string())?;
        log::info!(
            "{path}: {} over HTTP",
            if paused { "paused" } else { "resumed" }
        );
        self.wake.notify_all();
        Ok(true)
    }

    /// Applies a partial config update (PUT /.parachute/config). Returns
    /// the keys whose new value an environment variable or a flag
    /// overrides.
    pub fn update_config(&self, patch: &Map<String, Value>) -> Result<Vec<String>, Vec<Problem>> {
        // One update at a time: the file is read, changed and written back.
        let _one = self.config_lock.lock().unwrap_or_else(|p| p.into_inner());
        let patched = config::apply_patch(patch, &self.env, &self.overrides)?;
        let rt = runtime_for(&patched.config);
        let deferred = config::deferred(patch, &self.env, &self.overrides);
        {
            let mut s = self.shared();
            s.config = patched.config;
            s.rt = rt;
            if patched.token_stored {
                s.paused = false;
            }
            // Poll now with the new settings.
            s.next_poll = Instant::now();
        }
        log::info!(
            "config updated: {}",
            patch.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        self.nudge();
        Ok(deferred)
    }

    /// Removes the stored vault token and pauses scheduling. While paused
    /// nothing reaches the vault (polls, fires, run-now and /runner/runs
    /// all check `paused`); runs already going finish. The runtime stays,
    /// for the local state and outbox that /runner/jobs and /metrics show.
    pub fn clear_token(&self) -> Result<(), String> {
        let _one = self.config_lock.lock().unwrap_or_else(|p| p.into_inner());
        let paths = self.shared().config.paths.clone();
        paths
            .secret_store()
            .remove(config::TOKEN_ENTRY)
            .map_err(|e| e.to_string())?;
        {
            let mut s = self.shared();
            s.paused = true;
            s.config.vault_token = None;
            for entry in s.table.values_mut() {
                entry.next = None;
            }
        }
        log::warn!("vault token cleared: scheduling paused until a new one is stored");
        self.nudge();
        Ok(())
    }

    /// The config as `GET /.parachute/config` shows it (no token).
    pub fn config_view(&self) -> Value {
        let s = self.shared();
        let c = &s.config;
        serde_json::json!({
            "vault_url": match &c.vault {
                VaultTarget::Rest { url } => url.clone(),
                VaultTarget::Dir { root } => format!("file://{}", root.display()),
            },
            "vault_name": c.vault_name,
            "poll_interval_seconds": c.poll_interval_seconds,
            "max_concurrent_jobs": c.max_concurrent_jobs,
            "disabled": c.disabled,
            "claude_bin": c.claude_bin,
            "timezone": c.timezone.name,
        })
    }
}
