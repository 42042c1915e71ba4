//! Several runners, one vault (SPEC §12): with `coordination: "vault"`
//! each job has a state note in the vault, `jobs/runs/.runner/<h>`, and the
//! vault's conditional update (`if_updated_at`) is the only lock between
//! hosts. A runner that wants slot S moves the note's `checked_through` to
//! S and writes its `claim` in one conditional PATCH; whoever wins the
//! PATCH runs the slot. The claimant keeps its claim alive with a lease it
//! renews; a claim whose lease ran out is taken over (by the same kind of
//! PATCH) and its run reported `interrupted`.
//!
//! Safety rests on one rule: the note of a claimed run is written only by
//! the claimant right after a conditional renewal succeeded, or by the
//! runner whose conditional takeover succeeded. Both are PATCHes of the
//! same note, so only one of them can win; a lease is not taken over
//! before `SKEW` after it ran out, which covers clocks that disagree by
//! less than that and a write already under way.
//!
//! The pure part (what the shared state means for a decision) takes its
//! inputs as arguments; `Coord` does the requests; `Lease` renews a claim
//! while its run goes on.
//!
//! `requests` does the vault's side, `lease` keeps a claim alive, `pass`
//! is what a pass does with them.

mod lease;
pub mod pass;
mod requests;

pub use lease::Lease;
pub use requests::Coord;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::due::{CLOCK_SLACK, Plan, Trigger};
use crate::note::RunInfo;
use crate::state::JobState;
use crate::vault::Note;

/// The tag of the state notes.
pub const STATE_TAG: &str = "job-state";
/// Where the state notes live (under `jobs/runs/`: listings skip them).
pub const STATE_DIR: &str = "jobs/runs/.runner";
/// How long a claim holds without renewal.
pub const LEASE: SignedDuration = SignedDuration::from_secs(60);
/// How often a claimant renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);
/// How long after its lease ran out a claim may be taken over: clocks of
/// the hosts may disagree by less than this.
pub const SKEW: SignedDuration = SignedDuration::from_secs(30);
/// A claimant that could not renew stops this long before its lease ends.
const GIVE_UP_BEFORE: SignedDuration = SignedDuration::from_secs(5);
/// Between renewals that failed.
const RENEW_RETRY: Duration = Duration::from_secs(5);
/// Conditional updates tried again after a conflict, before giving up.
const CONFLICT_TRIES: usize = 8;

/// The state note of the job at `job_path`: the first 16 hex digits of the
/// SHA-256 of its path.
pub fn state_path(job_path: &str) -> String {
    let digest = Sha256::digest(job_path.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{STATE_DIR}/{hex}")
}

/// A runner's claim of one slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub slot: Timestamp,
    pub run_id: String,
    pub host: String,
    pub lease_until: Timestamp,
    /// What the run's `interrupted` note needs, if it comes to that.
    pub started_at: Timestamp,
    pub output_path: String,
    pub job_id: String,
    pub model: String,
    pub trigger: Trigger,
    #[serde(default)]
    pub output_tags: Vec<String>,
    /// Set by the runner that took an expired claim over, while it reports
    /// the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_over_by: Option<String>,
}

impl Claim {
    /// Its lease ran out more than `SKEW` ago.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.lease_until
            .checked_add(SKEW)
            .is_ok_and(|until| now > until)
    }

    /// Whether `run_id` still holds it (not taken over).
    fn held_by(&self, run_id: &str) -> bool {
        self.run_id == run_id && self.taken_over_by.is_none()
    }

    /// The run it stands for, to report it.
    pub fn info(&self, job_path: &str) -> RunInfo {
        RunInfo {
            run_id: self.run_id.clone(),
            job_id: self.job_id.clone(),
            job_path: job_path.to_string(),
            model: self.model.clone(),
            trigger: self.trigger,
            slot: Some(self.slot),
            started_at: self.started_at,
            output_path: self.output_path.clone(),
            tags: if self.output_tags.is_empty() {
                vec![crate::job::RUN_TAG.to_string()]
            } else {
                self.output_tags.clone()
            },
        }
    }
}

/// One job's state note, as read.
#[derive(Clone, Debug, PartialEq)]
pub struct Shared {
    pub note_path: String,
    /// `updatedAt`, for the next conditional update.
    pub updated_at: String,
    pub job_path: String,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub checked_through: Option<Timestamp>,
    pub claim: Option<Claim>,
}

impl Shared {
    /// Reads a state note; `None` if it is not one (no `job_path`, no
    /// `updatedAt`). A damaged claim reads as none.
    pub fn from_note(note: &Note) -> Option<Shared> {
        let m = note.metadata.as_ref()?.as_object()?;
        let text = |k: &str| m.get(k).and_then(Value::as_str).map(String::from);
        Some(Shared {
            note_path: note.path_or_id().to_string(),
            updated_at: note.updated_at.clone()?,
            job_path: text("job_path")?,
            schedule: text("schedule"),
            timezone: text("timezone"),
            checked_through: text("checked_through").and_then(|t| t.parse().ok()),
            claim: m
                .get("claim")
                .filter(|c| !c.is_null())
                .and_then(|c| serde_json::from_value(c.clone()).ok()),
        })
    }
}

/// Takes what runners elsewhere handled into the local entry of a job
/// (before its due decision): a shared `checked_through` later than ours
/// wins, and a job any runner has seen is not new here. A shared state of
/// another schedule or zone, or far in the future (a clock ahead), is not
/// taken.
pub fn merge(entry: &mut Option<JobState>, shared: &Shared, plan: &Plan, now: Timestamp) {
    let (Some(schedule), Some(timezone), Some(ct)) =
        (&shared.schedule, &shared.timezone, shared.checked_through)
    else {
        return;
    };
    if *schedule != plan.schedule_text || *timezone != plan.zone.name {
        return;
    }
    if now.checked_add(CLOCK_SLACK).is_ok_and(|limit| ct > limit) {
        return;
    }
    match entry {
        None => {
            *entry = Some(JobState {
                schedule: schedule.clone(),
                timezone: timezone.clone(),
                checked_through: ct,
                last_run: None,
                running: None,
                note: None,
            });
        }
        Some(e) if e.schedule == *schedule && e.timezone == *timezone => {
            e.checked_through = e.checked_through.max(ct);
        }
        // Ours is of the note's older version: the shared one is current.
        Some(e) => {
            e.schedule = schedule.clone();
            e.timezone = timezone.clone();
            e.checked_through = ct;
        }
    }
}

/// Whether the shared state must learn a local decision that reset the
/// entry (a new job, a changed schedule, a clock that went back).
pub fn publish_needed(entry: &JobState, shared: Option<&Shared>) -> bool {
    shared.is_none_or(|s| {
        s.schedule.as_deref() != Some(entry.schedule.as_str())
            || s.timezone.as_deref() != Some(entry.timezone.as_str())
            || s.checked_through != Some(entry.checked_through)
    })
}

/// What claiming slot `slot` at `now` takes, given the shared state.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No state note yet: create it, with the claim.
    Create,
    /// Claim it; `orphan` is an expired claim to take over (and report)
    /// in the same update.
    Claim { orphan: Option<Claim> },
    /// Another runner handled this slot already.
    Handled(String),
    /// Another runner's run of the job goes on: skipped, as locally.
    Busy(String),
}

pub fn claim_step(shared: Option<&Shared>, slot: Timestamp, now: Timestamp) -> Step {
    let Some(s) = shared else {
        return Step::Create;
    };
    if s.checked_through.is_some_and(|ct| ct >= slot) {
        return Step::Handled(match &s.claim {
            Some(c) => format!("claimed by {}", c.host),
            None => "handled by another runner".to_string(),
        });
    }
    match &s.claim {
        Some(c) if !c.expired(now) => Step::Busy(format!(
            "still running on {}",
            c.taken_over_by.as_deref().unwrap_or(&c.host)
        )),
        Some(c) => Step::Claim {
            orphan: Some(c.clone()),
        },
        None => Step::Claim { orphan: None },
    }
}

/// How a claim attempt ended.
pub enum Claimed {
    /// The slot is ours.
    Won { lease: Lease },
    /// An expired claim holds the job: it must be taken over and its run
    /// reported first (`take_over`), then the slot claimed again.
    Orphan(Box<Shared>),
    /// Not ours: why (a skip line).
    Lost(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::due::test_plan as plan;
    use crate::instant::t;
    use serde_json::json;

    fn shared(ct: Option<&str>, claim: Option<Claim>) -> Shared {
        Shared {
            note_path: state_path("jobs/x"),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            job_path: "jobs/x".into(),
            schedule: Some("* * * * *".into()),
            timezone: Some("UTC".into()),
            checked_through: ct.map(t),
            claim,
        }
    }

    fn claim(lease_until: &str) -> Claim {
        Claim {
            slot: t("2026-01-01T00:01:00Z"),
            run_id: "r1".into(),
            host: "a:1".into(),
            lease_until: t(lease_until),
            started_at: t("2026-01-01T00:01:00Z"),
            output_path: "jobs/runs/x/r1".into(),
            job_id: "id".into(),
            model: "m".into(),
            trigger: Trigger::Schedule,
            output_tags: vec!["job-run".into()],
            taken_over_by: None,
        }
    }

    #[test]
    fn state_paths_are_sixteen_hex_digits_of_the_sha256() {
        // printf 'jobs/daily-brief' | sha256sum
        assert_eq!(
            state_path("jobs/daily-brief"),
            "jobs/runs/.runner/9d21f03482feaa93"
        );
        assert_ne!(state_path("jobs/a"), state_path("jobs/b"));
    }

    #[test]
    fn a_job_seen_elsewhere_is_not_new_here() {
        let now = t("2026-01-01T00:05:30Z");
        let mut entry = None;
        // Taken; then a later local instant stays; a later shared one wins.
        for (theirs, ours) in [
            ("2026-01-01T00:03:00Z", "2026-01-01T00:03:00Z"),
            ("2026-01-01T00:02:00Z", "2026-01-01T00:03:00Z"),
            ("2026-01-01T00:04:00Z", "2026-01-01T00:04:00Z"),
        ] {
            merge(
                &mut entry,
                &shared(Some(theirs), None),
                &plan("* * * * *"),
                now,
            );
            assert_eq!(entry.as_ref().unwrap().checked_through, t(ours));
        }
        // Another schedule, or an instant far ahead, is not taken.
        let mut other = None;
        merge(
            &mut other,
            &shared(Some("2026-01-01T00:03:00Z"), None),
            &plan("0 * * * *"),
            now,
        );
        assert!(other.is_none());
        merge(
            &mut other,
            &shared(Some("2026-01-02T00:00:00Z"), None),
            &plan("* * * * *"),
            now,
        );
        assert!(other.is_none());
    }

    #[test]
    fn claim_steps() {
        let slot = t("2026-01-01T00:02:00Z");
        let now = t("2026-01-01T00:02:10Z");
        assert_eq!(claim_step(None, slot, now), Step::Create);
        assert_eq!(
            claim_step(Some(&shared(Some("2026-01-01T00:01:00Z"), None)), slot, now),
            Step::Claim { orphan: None }
        );
        assert_eq!(
            claim_step(
                Some(&shared(
                    Some("2026-01-01T00:02:00Z"),
                    Some(claim("2026-01-01T00:03:00Z"))
                )),
                slot,
                now
            ),
            Step::Handled("claimed by a:1".into())
        );
        // A live claim of an earlier slot: busy; expired (past SKEW): taken over.
        let live = shared(
            Some("2026-01-01T00:01:00Z"),
            Some(claim("2026-01-01T00:01:50Z")),
        );
        assert_eq!(
            claim_step(Some(&live), slot, now),
            Step::Busy("still running on a:1".into())
        );
        let later = t("2026-01-01T00:02:21Z");
        assert_eq!(
            claim_step(Some(&live), slot, later),
            Step::Claim {
                orphan: Some(claim("2026-01-01T00:01:50Z"))
            }
        );
    }

    #[test]
    fn publishing_only_what_changed() {
        let s = shared(Some("2026-01-01T00:03:00Z"), None);
        let mut entry = JobState {
            schedule: "* * * * *".into(),
            timezone: "UTC".into(),
            checked_through: t("2026-01-01T00:03:00Z"),
            last_run: None,
            running: None,
            note: None,
        };
        assert!(!publish_needed(&entry, Some(&s)));
        assert!(publish_needed(&entry, None));
        entry.schedule = "0 * * * *".into();
        assert!(publish_needed(&entry, Some(&s)));
    }

    #[test]
    fn state_notes_read_back() {
        let note = Note {
            id: "n".into(),
            path: Some(state_path("jobs/x")),
            metadata: Some(json!({
                "job_path": "jobs/x", "schedule": "* * * * *", "timezone": "UTC",
                "checked_through": "2026-01-01T00:01:00.000Z",
                "claim": claim("2026-01-01T00:02:00Z"),
            })),
            updated_at: Some("2026-01-01T00:01:00.123Z".into()),
            ..Note::default()
        };
        let s = Shared::from_note(&note).unwrap();
        assert_eq!(s.claim, Some(claim("2026-01-01T00:02:00Z")));
        let mut broken = note.clone();
        broken.metadata = Some(json!({"job_path": "jobs/x", "claim": {"run_id": 3}}));
        assert_eq!(Shared::from_note(&broken).unwrap().claim, None);
        broken.updated_at = None;
        assert!(Shared::from_note(&broken).is_none());
    }
}
