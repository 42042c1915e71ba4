//! The output note of a run (SPEC §6.3): path, content, tags and metadata
//! exactly as the contract says, from how the run ended (`judge`). Pure;
//! writing it is `deliver`'s and keeping it safe until then is `outbox`'s.

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::due::Trigger;
use crate::job::FAILED_TAG;
use crate::judge::{Ending, Meta};
use crate::vault::NewNote;

/// The line that ends a truncated output.
pub const TRUNCATED_LINE: &str = "[output truncated at 8 MiB]";

/// Facts about a run that every note carries.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub run_id: String,
    pub job_id: String,
    pub job_path: String,
    pub model: String,
    pub trigger: Trigger,
    pub slot: Option<Timestamp>,
    pub started_at: Timestamp,
    /// The success path; failures go to `<path>.failed`.
    pub output_path: String,
    /// `job-run` first.
    pub tags: Vec<String>,
}

/// The failure note of a run that ended without its runner (SPEC §7.4,
/// §12): `reason` is its `run_error`, the time since its start its
/// duration.
pub fn interrupted(info: &RunInfo, reason: &str, now: jiff::Timestamp) -> NewNote {
    let ending = Ending::Failure(crate::judge::Failure::plain(
        reason,
        crate::judge::Cause::Interrupted,
    ));
    let meta = Meta {
        exit_code: 130,
        attempts: 1,
        ..Meta::default()
    };
    note(
        info,
        ending,
        &meta,
        crate::instant::until(info.started_at, now),
    )
}

/// The note for a run (SPEC §6.3).
pub fn note(info: &RunInfo, ending: Ending, meta: &Meta, duration: Duration) -> NewNote {
    let mut m = Map::new();
    m.insert("parent_job_id".into(), Value::from(info.job_id.clone()));
    m.insert("parent_job_path".into(), Value::from(info.job_path.clone()));
    m.insert(
        "run_started_at".into(),
        Value::from(format!("{:.3}", info.started_at)),
    );
    m.insert(
        "run_duration_ms".into(),
        Value::from(duration.as_millis().min(u64::MAX as u128) as u64),
    );
    m.insert("run_exit_code".into(), Value::from(meta.exit_code));
    m.insert("run_id".into(), Value::from(info.run_id.clone()));
    m.insert("model".into(), Value::from(info.model.clone()));
    m.insert("run_trigger".into(), Value::from(info.trigger.as_str()));
    if let Some(slot) = info.slot {
        m.insert(
            "run_scheduled_for".into(),
            Value::from(format!("{slot:.0}")),
        );
    }
    m.insert("run_attempts".into(), Value::from(meta.attempts.max(1)));
    if !meta.attempt_errors.is_empty() {
        m.insert(
            "run_attempt_errors".into(),
            Value::from(meta.attempt_errors.clone()),
        );
    }
    stream_metadata(&mut m, meta);
    if meta.truncated {
        m.insert("run_output_truncated".into(), Value::from(true));
    }
    match ending {
        Ending::Success { answer } => {
            let mut content = answer;
            if meta.truncated {
                content.push('\n');
                content.push_str(TRUNCATED_LINE);
            }
            NewNote {
                path: info.output_path.clone(),
                content,
                tags: info.tags.clone(),
                metadata: m,
            }
        }
        Ending::Failure(f) => {
            let mut content = format!("# job-run failed\n\n**Reason:** {}\n\n", f.error);
            if let Some(said) = &f.agent_said {
                let _ = write!(content, "## Agent said\n\n{said}\n\n");
            }
            if !meta.denials.is_empty() {
                let _ = write!(
                    content,
                    "## Denied tools\n\n{}\n\n",
                    meta.denials.join("\n")
                );
            }
            let tail = if f.stderr_tail.is_empty() {
                "(empty)"
            } else {
                f.stderr_tail.as_str()
            };
            let _ = write!(content, "## stderr (tail)\n\n```\n{tail}\n```\n");
            m.insert("run_error".into(), Value::from(f.error));
            m.insert("run_stderr_tail".into(), Value::from(f.stderr_tail));
            if let Some(status) = f.api_status {
                m.insert("run_api_error_status".into(), Value::from(status));
            }
            let mut tags = info.tags.clone();
            if !tags.iter().any(|t| t == FAILED_TAG) {
                tags.push(FAILED_TAG.to_string());
            }
            NewNote {
                path: format!("{}.failed", info.output_path),
                content,
                tags,
                metadata: m,
            }
        }
    }
}

/// What the agent's stream told, when it told it.
fn stream_metadata(m: &mut Map<String, Value>, meta: &Meta) {
    if let Some(cost) = meta.cost_usd {
        m.insert("run_cost_usd".into(), Value::from(cost));
    }
    if let Some(u) = &meta.usage {
        m.insert(
            "run_usage".into(),
            json!({
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cache_read_input_tokens": u.cache_read_input_tokens,
                "cache_creation_input_tokens": u.cache_creation_input_tokens,
            }),
        );
    }
    if let Some(n) = meta.num_turns {
        m.insert("run_num_turns".into(), Value::from(n));
    }
    if let Some(s) = &meta.session_id {
        m.insert("run_session_id".into(), Value::from(s.clone()));
    }
    if let Some(v) = &meta.agent_version {
        m.insert("run_agent_version".into(), Value::from(v.clone()));
    }
    if !meta.denials.is_empty() {
        m.insert(
            "run_permission_denials".into(),
            Value::from(meta.denials.clone()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{Cause, Failure};
    use crate::stream::Usage;

    fn info() -> RunInfo {
        RunInfo {
            run_id: "0123abcd-0000-4000-8000-000000000000".into(),
            job_id: "id-1".into(),
            job_path: "jobs/brief".into(),
            model: "m".into(),
            trigger: Trigger::Schedule,
            slot: Some("2026-01-01T08:00:00Z".parse().unwrap()),
            started_at: "2026-01-01T08:00:01.5Z".parse().unwrap(),
            output_path: "jobs/runs/brief/x".into(),
            tags: vec!["job-run".into(), "digest".into()],
        }
    }

    fn meta() -> Meta {
        Meta {
            attempts: 1,
            ..Meta::default()
        }
    }

    #[test]
    fn success_note_has_exactly_the_contract() {
        let ending = Ending::Success {
            answer: "hello".into(),
        };
        let n = note(&info(), ending, &meta(), Duration::from_millis(1234));
        assert_eq!(n.path, "jobs/runs/brief/x");
        assert_eq!(n.content, "hello");
        assert_eq!(n.tags, ["job-run", "digest"]);
        assert_eq!(
            Value::Object(n.metadata),
            json!({
                "parent_job_id": "id-1",
                "parent_job_path": "jobs/brief",
                "run_started_at": "2026-01-01T08:00:01.500Z",
                "run_duration_ms": 1234,
                "run_exit_code": 0,
                "run_id": "0123abcd-0000-4000-8000-000000000000",
                "model": "m",
                "run_trigger": "schedule",
                "run_scheduled_for": "2026-01-01T08:00:00Z",
                "run_attempts": 1
            })
        );
    }

    #[test]
    fn the_stream_metadata_lands_in_the_note() {
        let m = Meta {
            exit_code: 0,
            cost_usd: Some(0.006),
            usage: Some(Usage {
                input_tokens: 1000,
                output_tokens: 200,
                cache_read_input_tokens: 3,
                cache_creation_input_tokens: 4,
            }),
            num_turns: Some(2),
            session_id: Some("s-1".into()),
            agent_version: Some("2.1.197".into()),
            denials: vec!["Bash".into()],
            attempts: 2,
            attempt_errors: vec!["claude -p: API error 529: Overloaded".into()],
            ..Meta::default()
        };
        let failure = Ending::Failure(Failure {
            error: "claude -p: API error 401: Invalid API key".into(),
            cause: Cause::Api,
            transient: false,
            api_status: Some(401),
            agent_said: Some("Invalid API key".into()),
            stderr_tail: String::new(),
        });
        let n = note(&info(), failure, &m, Duration::ZERO);
        let md = Value::Object(n.metadata);
        assert_eq!(md["run_cost_usd"], 0.006);
        assert_eq!(
            md["run_usage"],
            json!({"input_tokens": 1000, "output_tokens": 200, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 4})
        );
        assert_eq!(md["run_num_turns"], 2);
        assert_eq!(md["run_session_id"], "s-1");
        assert_eq!(md["run_agent_version"], "2.1.197");
        assert_eq!(md["run_permission_denials"], json!(["Bash"]));
        assert_eq!(md["run_attempts"], 2);
        assert_eq!(
            md["run_attempt_errors"],
            json!(["claude -p: API error 529: Overloaded"])
        );
        assert_eq!(md["run_api_error_status"], 401);
        assert_eq!(
            n.content,
            "# job-run failed\n\n**Reason:** claude -p: API error 401: Invalid API key\n\n## Agent said\n\nInvalid API key\n\n## Denied tools\n\nBash\n\n## stderr (tail)\n\n```\n(empty)\n```\n"
        );
    }

    #[test]
    fn a_plain_failure_and_truncation() {
        let ending = Ending::Failure(Failure::plain("e", Cause::Template));
        let mut m = meta();
        m.exit_code = 2;
        let n = note(&info(), ending, &m, Duration::ZERO);
        assert_eq!(n.path, "jobs/runs/brief/x.failed");
        assert_eq!(n.tags, ["job-run", "digest", "job-run-failed"]);
        assert_eq!(n.metadata["run_exit_code"], 2);
        assert!(n.content.contains("```\n(empty)\n```"));
        assert!(!n.content.contains("## Agent said"));
        assert!(!n.content.contains("## Denied tools"));
        let mut m = meta();
        m.truncated = true;
        let n = note(
            &info(),
            Ending::Success {
                answer: "big".into(),
            },
            &m,
            Duration::ZERO,
        );
        assert_eq!(n.content, "big\n[output truncated at 8 MiB]");
        assert_eq!(n.metadata["run_output_truncated"], true);
        let mut manual = info();
        manual.slot = None;
        manual.trigger = Trigger::Manual;
        let n = note(
            &manual,
            Ending::Success { answer: "x".into() },
            &meta(),
            Duration::ZERO,
        );
        assert!(!n.metadata.contains_key("run_scheduled_for"));
        assert_eq!(n.metadata["run_trigger"], "manual");
    }
}
