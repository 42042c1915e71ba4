//! Whether a job is well (SPEC §11), decided on literals: when to send a
//! failure or recovery notice (throttled per job while it keeps failing),
//! and whether a job has gone stale (no success in two of its periods).
//! What is remembered lives in state.json's `health` map, apart from the
//! scheduling entries, so a schedule change does not forget it.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::due::Plan;
use crate::instant;
use crate::state::State;

/// One job's health, keyed by job path in `State::health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// When a pass first saw the job.
    #[serde(with = "instant")]
    pub first_seen: Timestamp,
    /// The slot (or, for a run by hand, the start) of its last successful
    /// run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Timestamp>,
    /// Set from its first failure until its next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<Failing>,
}

/// A job that keeps failing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failing {
    /// The first failure of this streak.
    #[serde(with = "instant")]
    pub since: Timestamp,
    pub failures: u32,
    /// When the last failure notice went out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noticed_at: Option<Timestamp>,
}

/// What a finished run calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    Failed,
    /// The first success after `failures` failures, the first at `since`.
    Recovered {
        failures: u32,
        since: Timestamp,
    },
}

impl Notice {
    /// `NOTIFY_STATUS` and the webhook's `status`.
    pub fn status(self) -> &'static str {
        match self {
            Notice::Failed => "failed",
            Notice::Recovered { .. } => "recovered",
        }
    }
}

impl Health {
    pub fn new(first_seen: Timestamp) -> Health {
        Health {
            first_seen,
            last_success: None,
            failing: None,
        }
    }

    /// Takes a finished run into account: `ok`, for the slot (or start)
    /// `at`, finished at `now`. Returns the notice it calls for: every
    /// recovery; a failure when none was sent in the last `interval`.
    pub fn outcome(
        &mut self,
        ok: bool,
        at: Timestamp,
        now: Timestamp,
        interval: SignedDuration,
    ) -> Option<Notice> {
        if ok {
            self.last_success = Some(self.last_success.map_or(at, |t| t.max(at)));
            return self.failing.take().map(|f| Notice::Recovered {
                failures: f.failures,
                since: f.since,
            });
        }
        let failing = self.failing.get_or_insert(Failing {
            since: now,
            failures: 0,
            noticed_at: None,
        });
        failing.failures = failing.failures.saturating_add(1);
        // A notice "from the future" (the clock went back) does not hold
        // notices back.
        let quiet = failing
            .noticed_at
            .is_some_and(|t| t <= now && now.duration_since(t) < interval);
        if quiet {
            return None;
        }
        failing.noticed_at = Some(now);
        Some(Notice::Failed)
    }

    /// Stale (SPEC §11): two slots of the schedule have come since the
    /// last success (or since the job was first seen, if it never
    /// succeeded). Manual and disabled jobs are never stale.
    pub fn is_stale(&self, plan: &Plan, now: Timestamp) -> bool {
        if plan.disabled {
            return false;
        }
        let from = self.last_success.unwrap_or(self.first_seen);
        let tz = &plan.zone.tz;
        plan.schedule
            .next_after(from, tz)
            .and_then(|first| plan.schedule.next_after(first, tz))
            .is_some_and(|second| second <= now)
    }
}

/// Whether the job at `path` is stale in `state` at `now`: as
/// `Health::is_stale`, and never while paused or globally disabled.
pub fn is_stale(
    state: &State,
    path: &str,
    plan: &Plan,
    now: Timestamp,
    globally_disabled: bool,
) -> bool {
    !globally_disabled
        && !state.paused.contains_key(path)
        && state
            .health
            .get(path)
            .is_some_and(|h| h.is_stale(plan, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::due::test_plan as plan;
    use crate::instant::t;

    const HOUR: SignedDuration = SignedDuration::from_hours(1);

    #[test]
    fn three_failures_in_an_hour_give_one_notice_then_a_recovery() {
        let mut h = Health::new(t("2026-01-01T00:00:00Z"));
        let at = |m: &str| t(&format!("2026-01-01T{m}:00Z"));
        assert_eq!(
            h.outcome(false, at("10:00"), at("10:01"), HOUR),
            Some(Notice::Failed)
        );
        assert_eq!(h.outcome(false, at("10:20"), at("10:21"), HOUR), None);
        assert_eq!(h.outcome(false, at("10:40"), at("10:41"), HOUR), None);
        assert_eq!(h.failing.as_ref().unwrap().failures, 3);
        assert_eq!(
            h.outcome(true, at("11:00"), at("11:01"), HOUR),
            Some(Notice::Recovered {
                failures: 3,
                since: at("10:01")
            })
        );
        assert_eq!(h.failing, None);
        assert_eq!(h.last_success, Some(at("11:00")));
        // A success after a success is no news.
        assert_eq!(h.outcome(true, at("11:20"), at("11:21"), HOUR), None);
    }

    #[test]
    fn a_failure_an_interval_after_the_last_notice_is_sent_again() {
        let mut h = Health::new(t("2026-01-01T00:00:00Z"));
        let now = t("2026-01-01T10:00:00Z");
        assert!(h.outcome(false, now, now, HOUR).is_some());
        let later = t("2026-01-01T10:59:59Z");
        assert!(h.outcome(false, later, later, HOUR).is_none());
        let hour = t("2026-01-01T11:00:00Z");
        assert_eq!(h.outcome(false, hour, hour, HOUR), Some(Notice::Failed));
        // The clock went back before the last notice: not held back.
        let back = t("2026-01-01T09:00:00Z");
        assert_eq!(h.outcome(false, back, back, HOUR), Some(Notice::Failed));
    }

    #[test]
    fn stale_after_two_slots_without_success() {
        let p = plan("0 9 * * *");
        let mut h = Health::new(t("2026-01-01T12:00:00Z"));
        // Never succeeded: slots Jan 2 and Jan 3 09:00 since first seen.
        assert!(!h.is_stale(&p, t("2026-01-03T08:59:59Z")));
        assert!(h.is_stale(&p, t("2026-01-03T09:00:00Z")));
        h.last_success = Some(t("2026-01-03T09:00:00Z"));
        assert!(!h.is_stale(&p, t("2026-01-04T09:30:00Z")));
        assert!(h.is_stale(&p, t("2026-01-05T09:00:00Z")));
        let mut off = p.clone();
        off.disabled = true;
        assert!(!h.is_stale(&off, t("2026-02-01T00:00:00Z")));
        assert!(!h.is_stale(&plan("manual"), t("2030-01-01T00:00:00Z")));
    }

    #[test]
    fn round_trips_through_json() {
        let mut h = Health::new(t("2026-01-01T00:00:00Z"));
        let now = t("2026-01-01T10:00:00Z");
        h.outcome(false, now, now, HOUR);
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(
            text,
            r#"{"first_seen":"2026-01-01T00:00:00Z","failing":{"since":"2026-01-01T10:00:00Z","failures":1,"noticed_at":"2026-01-01T10:00:00Z"}}"#
        );
        assert_eq!(serde_json::from_str::<Health>(&text).unwrap(), h);
    }
}
