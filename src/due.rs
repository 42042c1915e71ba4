//! The due decision (SPEC §7.2), pure: given a job's plan, its state
//! entry and `now`, whether a slot is due and how it was triggered. It
//! edits only the in-memory entry; locking, committing and running are the
//! engine's. Also the fingerprint that lets a pass skip parsing an
//! unchanged note.

use std::collections::HashMap;
use std::fmt;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::job::Job;
use crate::schedule::{Schedule, Zone};
use crate::state::{JobState, Seen};

/// How a run was started (`run_trigger`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Schedule,
    CatchUp,
    Manual,
    Http,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch-up",
            Trigger::Manual => "manual",
            Trigger::Http => "http",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fingerprint of what a job is checked from: the note's content and
/// metadata, the default zone and this version of the runner.
///
/// FNV-1a, 64 bits: it only has to notice edits, on every note of every
/// pass, so it is cheap rather than cryptographic (whoever could forge a
/// collision can edit the note anyway).
pub fn note_hash(
    content: &str,
    metadata: Option<&serde_json::Value>,
    default_zone: &str,
) -> String {
    fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let mut h = fnv(0xcbf2_9ce4_8422_2325, content.as_bytes());
    h = fnv(h, &[0]);
    if let Some(m) = metadata {
        h = fnv(h, m.to_string().as_bytes());
    }
    h = fnv(h, &[0]);
    h = fnv(h, default_zone.as_bytes());
    // Another version may check notes differently.
    h = fnv(h, env!("CARGO_PKG_VERSION").as_bytes());
    format!("{h:016x}")
}

/// What the due decision needs of a job.
#[derive(Clone, Debug)]
pub struct Plan {
    pub schedule: Schedule,
    pub schedule_text: String,
    pub zone: Zone,
    pub disabled: bool,
    pub catch_up: bool,
}

impl From<&Job> for Plan {
    fn from(job: &Job) -> Plan {
        Plan {
            schedule: job.schedule.clone(),
            schedule_text: job.schedule_text.clone(),
            zone: job.zone.clone(),
            disabled: job.disabled,
            catch_up: job.catch_up,
        }
    }
}

impl Plan {
    /// The plan remembered in a state entry, if its note is unchanged
    /// (`hash`). `zones` caches zone lookups over a pass.
    pub fn remembered(
        entry: &JobState,
        hash: &str,
        zones: &mut HashMap<String, Zone>,
    ) -> Option<Plan> {
        let seen = entry.note.as_ref().filter(|s| s.hash == hash)?;
        let schedule = Schedule::parse(&entry.schedule).ok()?;
        let zone = match zones.get(&entry.timezone) {
            Some(z) => z.clone(),
            None => {
                let z = Zone::get(&entry.timezone).ok()?;
                zones.insert(entry.timezone.clone(), z.clone());
                z
            }
        };
        Some(Plan {
            schedule,
            schedule_text: entry.schedule.clone(),
            zone,
            disabled: seen.disabled,
            catch_up: seen.catch_up,
        })
    }

    /// What to remember of it.
    pub fn seen(&self, hash: String) -> Seen {
        Seen {
            hash,
            disabled: self.disabled,
            catch_up: self.catch_up,
        }
    }
}

/// What the due decision says about one job at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// First seen, or its schedule or zone changed: it fires from its next
    /// slot on.
    New,
    /// `manual`: never fires on its own.
    Manual,
    /// Disabled by the note or globally.
    Disabled,
    /// No slot since the last check.
    NotDue,
    /// Run now, for this slot (missed earlier slots coalesced into it).
    Run { slot: Timestamp, trigger: Trigger },
    /// A late slot of a `catch_up: false` job: skipped.
    SkipLate { slot: Timestamp },
    /// `checked_through` was later than now by more than `CLOCK_SLACK`:
    /// the clock went back after running ahead (SPEC §7.6). Clamped to
    /// now; the schedule goes on from its next slot.
    ClockBack { was: Timestamp },
}

/// How far ahead of now `checked_through` may be before it is taken for a
/// clock that went back (another runner's clock may be a little ahead).
pub const CLOCK_SLACK: SignedDuration = SignedDuration::from_secs(300);

/// Settings the decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub poll_interval_seconds: u64,
    pub globally_disabled: bool,
}

impl Policy {
    /// A slot older than this is late: `catch-up` (or skipped).
    pub fn late_after(&self) -> SignedDuration {
        let two_polls = self
            .poll_interval_seconds
            .saturating_mul(2)
            .min(i64::MAX as u64) as i64;
        SignedDuration::from_secs(two_polls.max(120))
    }
}

/// The due decision (SPEC §7.2) for `job` at `now`. Edits `entry` as the
/// decision requires; the caller commits it before starting any run.
pub fn decide(
    job: &Plan,
    entry: &mut Option<JobState>,
    now: Timestamp,
    policy: Policy,
) -> Decision {
    let current = entry
        .as_mut()
        .filter(|e| e.schedule == job.schedule_text && e.timezone == job.zone.name);
    let Some(e) = current else {
        let (last_run, running) = entry
            .take()
            .map(|e| (e.last_run, e.running))
            .unwrap_or_default();
        *entry = Some(JobState {
            schedule: job.schedule_text.clone(),
            timezone: job.zone.name.clone(),
            checked_through: now,
            last_run,
            running,
            note: None,
        });
        return Decision::New;
    };
    if now
        .checked_add(CLOCK_SLACK)
        .is_ok_and(|limit| e.checked_through > limit)
    {
        let was = e.checked_through;
        e.checked_through = now;
        return Decision::ClockBack { was };
    }
    if job.schedule == Schedule::Manual {
        return Decision::Manual;
    }
    let Some(slot) = latest_slot(&job.schedule, &job.zone.tz, e.checked_through, now) else {
        return if job.disabled || policy.globally_disabled {
            Decision::Disabled
        } else {
            Decision::NotDue
        };
    };
    // Slots were passed: whatever happens to them, they are handled.
    e.checked_through = now;
    if job.disabled || policy.globally_disabled {
        return Decision::Disabled;
    }
    let late = now.duration_since(slot) >= policy.late_after();
    match (late, job.catch_up) {
        (false, _) => Decision::Run {
            slot,
            trigger: Trigger::Schedule,
        },
        (true, true) => Decision::Run {
            slot,
            trigger: Trigger::CatchUp,
        },
        (true, false) => Decision::SkipLate { slot },
    }
}

/// The latest fire time in `(after, upto]`. Searches backwards in growing
/// windows, so a long downtime of a frequent schedule costs little.
pub fn latest_slot(
    schedule: &Schedule,
    tz: &jiff::tz::TimeZone,
    after: Timestamp,
    upto: Timestamp,
) -> Option<Timestamp> {
    if upto <= after {
        return None;
    }
    let mut window = SignedDuration::from_secs(120);
    loop {
        let start = upto
            .checked_sub(window)
            .ok()
            .filter(|s| *s > after)
            .unwrap_or(after);
        let mut at = start;
        let mut last = None;
        while let Some(next) = schedule.next_after(at, tz) {
            if next > upto {
                break;
            }
            last = Some(next);
            at = next;
        }
        if last.is_some() || start == after {
            return last;
        }
        window = window.checked_mul(2).unwrap_or(SignedDuration::MAX);
    }
}

/// The plan of a UTC job with `schedule`, for tests.
#[cfg(test)]
pub fn test_plan(schedule: &str) -> Plan {
    Plan {
        schedule: Schedule::parse(schedule).expect("a valid test schedule"),
        schedule_text: schedule.into(),
        zone: Zone::utc(),
        disabled: false,
        catch_up: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instant::t;
    use crate::job::test_job;
    use crate::state::LastRun;

    fn job(schedule: &str, extra: &str) -> Plan {
        let front = format!("schedule: \"{schedule}\"\nmodel: m\nallowed_tools: Read\n{extra}");
        Plan::from(&test_job("jobs/j", &front, "hi"))
    }

    const POLICY: Policy = Policy {
        poll_interval_seconds: 60,
        globally_disabled: false,
    };

    #[test]
    fn a_new_job_waits_for_its_next_slot() {
        let j = job("* * * * *", "");
        let mut entry = None;
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T00:00:30Z"), POLICY),
            Decision::New
        );
        assert_eq!(
            entry.as_ref().unwrap().checked_through,
            t("2026-01-01T00:00:30Z")
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T00:01:05Z"), POLICY),
            Decision::Run {
                slot: t("2026-01-01T00:01:00Z"),
                trigger: Trigger::Schedule
            }
        );
    }

    #[test]
    fn due_exactly_once_around_its_slot() {
        let j = job("0 8 * * *", "");
        let mut entry = None;
        decide(&j, &mut entry, t("2026-01-01T07:00:00Z"), POLICY);
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T07:59:59Z"), POLICY),
            Decision::NotDue
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T08:00:00Z"), POLICY),
            Decision::Run {
                slot: t("2026-01-01T08:00:00Z"),
                trigger: Trigger::Schedule
            }
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T08:00:00Z"), POLICY),
            Decision::NotDue
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T08:00:59Z"), POLICY),
            Decision::NotDue
        );
        // A runner whose clock read earlier never moves the check back.
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T07:59:00Z"), POLICY),
            Decision::NotDue
        );
        assert_eq!(entry.unwrap().checked_through, t("2026-01-01T08:00:00Z"));
    }

    #[test]
    fn a_week_of_downtime_is_one_catch_up_run_for_the_latest_slot() {
        let j = job("*/5 * * * *", "");
        let mut entry = None;
        decide(&j, &mut entry, t("2026-01-01T00:00:00Z"), POLICY);
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-08T00:03:00Z"), POLICY),
            Decision::Run {
                slot: t("2026-01-08T00:00:00Z"),
                trigger: Trigger::CatchUp
            }
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-08T00:04:00Z"), POLICY),
            Decision::NotDue
        );
    }

    #[test]
    fn lateness_threshold_is_two_polls_or_two_minutes() {
        let j = job("0 8 * * *", "");
        let run = |now: &str, poll: u64| {
            let mut entry = None;
            decide(&j, &mut entry, t("2026-01-01T07:00:00Z"), POLICY);
            decide(
                &j,
                &mut entry,
                t(now),
                Policy {
                    poll_interval_seconds: poll,
                    globally_disabled: false,
                },
            )
        };
        let slot = t("2026-01-01T08:00:00Z");
        assert_eq!(
            run("2026-01-01T08:01:59Z", 60),
            Decision::Run {
                slot,
                trigger: Trigger::Schedule
            }
        );
        assert_eq!(
            run("2026-01-01T08:02:00Z", 60),
            Decision::Run {
                slot,
                trigger: Trigger::CatchUp
            }
        );
        assert_eq!(
            run("2026-01-01T08:09:59Z", 300),
            Decision::Run {
                slot,
                trigger: Trigger::Schedule
            }
        );
        assert_eq!(
            run("2026-01-01T08:10:00Z", 300),
            Decision::Run {
                slot,
                trigger: Trigger::CatchUp
            }
        );
    }

    #[test]
    fn catch_up_false_skips_late_slots() {
        let j = job("0 8 * * *", "catch_up: false\n");
        let mut entry = None;
        decide(&j, &mut entry, t("2026-01-01T07:00:00Z"), POLICY);
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-03T09:00:00Z"), POLICY),
            Decision::SkipLate {
                slot: t("2026-01-03T08:00:00Z")
            }
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-03T09:01:00Z"), POLICY),
            Decision::NotDue
        );
        // On time, it runs.
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-04T08:00:30Z"), POLICY),
            Decision::Run {
                slot: t("2026-01-04T08:00:00Z"),
                trigger: Trigger::Schedule
            }
        );
    }

    #[test]
    fn schedule_or_zone_change_resets() {
        let mut entry = None;
        decide(
            &job("0 8 * * *", ""),
            &mut entry,
            t("2026-01-01T00:00:00Z"),
            POLICY,
        );
        entry.as_mut().unwrap().last_run = Some(LastRun {
            run_id: "r".into(),
            status: "ok".into(),
            started_at: t("2026-01-01T00:00:00Z"),
            finished_at: t("2026-01-01T00:00:00Z"),
            output_path: "o".into(),
            trigger: Trigger::Manual,
        });
        assert_eq!(
            decide(
                &job("0 9 * * *", ""),
                &mut entry,
                t("2026-01-02T10:00:00Z"),
                POLICY
            ),
            Decision::New
        );
        assert!(
            entry.as_ref().unwrap().last_run.is_some(),
            "the last run is kept"
        );
        assert_eq!(
            decide(
                &job("0 9 * * *", "timezone: Europe/Paris\n"),
                &mut entry,
                t("2026-01-03T10:00:00Z"),
                POLICY
            ),
            Decision::New
        );
        assert_eq!(entry.unwrap().timezone, "Europe/Paris");
    }

    #[test]
    fn disabled_and_manual_never_run_and_do_not_pile_up() {
        let j = job("* * * * *", "disabled: true\n");
        let mut entry = None;
        decide(&j, &mut entry, t("2026-01-01T00:00:00Z"), POLICY);
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T05:00:00Z"), POLICY),
            Decision::Disabled
        );
        // Enabled again: the slots of the disabled time do not fire.
        let j = job("* * * * *", "");
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T05:00:30Z"), POLICY),
            Decision::NotDue
        );
        let off = Policy {
            globally_disabled: true,
            ..POLICY
        };
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T06:00:00Z"), off),
            Decision::Disabled
        );
        let m = job("manual", "");
        let mut entry = None;
        decide(&m, &mut entry, t("2026-01-01T00:00:00Z"), POLICY);
        assert_eq!(
            decide(&m, &mut entry, t("2027-01-01T00:00:00Z"), POLICY),
            Decision::Manual
        );
    }

    #[test]
    fn a_clock_that_went_back_is_clamped_and_the_schedule_resumes() {
        let j = job("0 * * * *", "");
        let mut entry = None;
        decide(&j, &mut entry, t("2026-01-01T00:30:00Z"), POLICY);
        // The clock jumps a year ahead: one catch-up run.
        assert_eq!(
            decide(&j, &mut entry, t("2027-01-01T00:30:00Z"), POLICY),
            Decision::Run {
                slot: t("2027-01-01T00:00:00Z"),
                trigger: Trigger::CatchUp
            }
        );
        // And back: clamped, said once, nothing runs twice.
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T00:40:00Z"), POLICY),
            Decision::ClockBack {
                was: t("2027-01-01T00:30:00Z")
            }
        );
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T00:50:00Z"), POLICY),
            Decision::NotDue
        );
        // The next slot fires as usual.
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T01:00:10Z"), POLICY),
            Decision::Run {
                slot: t("2026-01-01T01:00:00Z"),
                trigger: Trigger::Schedule
            }
        );
        // A little ahead (another runner's clock) is no clock fault.
        let mut entry = None;
        decide(&j, &mut entry, t("2026-01-01T00:34:00Z"), POLICY);
        assert_eq!(
            decide(&j, &mut entry, t("2026-01-01T00:30:00Z"), POLICY),
            Decision::NotDue
        );
    }

    #[test]
    fn latest_slot_is_cheap_over_long_gaps() {
        let every_second = Schedule::parse("* * * * * *").unwrap();
        let tz = jiff::tz::TimeZone::UTC;
        assert_eq!(
            latest_slot(
                &every_second,
                &tz,
                t("2020-01-01T00:00:00Z"),
                t("2026-01-01T00:00:00.5Z")
            ),
            Some(t("2026-01-01T00:00:00Z"))
        );
        let yearly = Schedule::parse("@yearly").unwrap();
        assert_eq!(
            latest_slot(
                &yearly,
                &tz,
                t("2020-06-01T00:00:00Z"),
                t("2026-06-01T00:00:00Z")
            ),
            Some(t("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            latest_slot(
                &yearly,
                &tz,
                t("2026-01-01T00:00:00Z"),
                t("2026-06-01T00:00:00Z")
            ),
            None
        );
        assert_eq!(
            latest_slot(
                &yearly,
                &tz,
                t("2026-06-01T00:00:00Z"),
                t("2026-01-01T00:00:00Z")
            ),
            None
        );
    }
}
