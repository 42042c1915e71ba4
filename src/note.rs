//! The output note of a run (SPEC §6.3): how a run ended, as far as the
//! note is concerned, and the note itself — path, content, tags and
//! metadata exactly as the contract says. Pure; writing it is `deliver`'s
//! and keeping it safe until then is `outbox`'s.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::agent;
use crate::due::Trigger;
use crate::job::FAILED_TAG;
use crate::vault::NewNote;

/// `run_stderr_tail` keeps this many bytes.
pub const STDERR_TAIL_BYTES: usize = 2048;
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

/// How a run ended, as far as the note is concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    Success {
        stdout: String,
        truncated: bool,
    },
    Failure {
        /// One line: `claude -p exited with code 1`, `template error: …`.
        error: String,
        exit_code: Option<i32>,
        stderr_tail: String,
        truncated: bool,
    },
}

impl Ending {
    /// Classifies an agent outcome (SPEC §6.3).
    /// Takes the stdout out of `outcome` (it may be 8 MiB: not copied).
    pub fn from_agent(outcome: &mut agent::Outcome, bin: &str, timeout: Duration) -> Ending {
        let stderr_tail = agent::tail_text(&outcome.stderr_tail, STDERR_TAIL_BYTES);
        let failure = |error: String| Ending::Failure {
            error,
            exit_code: outcome.exit_code,
            stderr_tail: stderr_tail.clone(),
            truncated: outcome.stdout_truncated,
        };
        if let Some(e) = &outcome.spawn_error {
            return failure(format!("could not start {bin}: {e}"));
        }
        match outcome.stopped {
            Some(agent::Stopped::Timeout) => {
                return failure(format!(
                    "claude -p timed out after {}ms",
                    timeout.as_millis()
                ));
            }
            Some(agent::Stopped::Cancelled) => {
                return failure("interrupted: runner shutting down".to_string());
            }
            None => {}
        }
        match outcome.exit_code {
            Some(0) => {}
            Some(code) => return failure(format!("claude -p exited with code {code}")),
            None => return failure("claude -p exited without a status".to_string()),
        }
        let stdout = trim_in_place(into_text(std::mem::take(&mut outcome.stdout)));
        if stdout.is_empty() {
            return failure("claude -p produced empty stdout".to_string());
        }
        Ending::Success {
            stdout,
            truncated: outcome.stdout_truncated,
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Ending::Success { .. })
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Ending::Success { .. } => None,
            Ending::Failure { error, .. } => Some(error),
        }
    }
}

/// Bytes as text, without a copy when they are valid UTF-8.
fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `s.trim()` without a copy.
fn trim_in_place(mut s: String) -> String {
    let end = s.trim_end().len();
    s.truncate(end);
    let start = s.len() - s.trim_start().len();
    s.drain(..start);
    s
}

/// The note for a run (SPEC §6.3).
pub fn note(info: &RunInfo, ending: Ending, duration: Duration) -> NewNote {
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
    m.insert("run_id".into(), Value::from(info.run_id.clone()));
    m.insert("model".into(), Value::from(info.model.clone()));
    m.insert("run_trigger".into(), Value::from(info.trigger.as_str()));
    if let Some(slot) = info.slot {
        m.insert(
            "run_scheduled_for".into(),
            Value::from(format!("{slot:.0}")),
        );
    }
    match ending {
        Ending::Success { stdout, truncated } => {
            m.insert("run_exit_code".into(), Value::from(0));
            let mut content = stdout;
            if truncated {
                m.insert("run_output_truncated".into(), Value::from(true));
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
        Ending::Failure {
            error,
            exit_code,
            stderr_tail,
            truncated,
        } => {
            let tail = if stderr_tail.is_empty() {
                "(empty)"
            } else {
                stderr_tail.as_str()
            };
            let content = format!(
                "# job-run failed\n\n**Reason:** {error}\n\n## stderr (tail)\n\n```\n{tail}\n```\n"
            );
            m.insert(
                "run_exit_code".into(),
                exit_code.map_or(Value::Null, Value::from),
            );
            m.insert("run_error".into(), Value::from(error));
            m.insert("run_stderr_tail".into(), Value::from(stderr_tail));
            if truncated {
                m.insert("run_output_truncated".into(), Value::from(true));
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn outcome(exit: Option<i32>, stdout: &str) -> agent::Outcome {
        agent::Outcome {
            exit_code: exit,
            stdout: stdout.as_bytes().to_vec(),
            stderr_tail: b"warn\n".to_vec(),
            ..agent::Outcome::default()
        }
    }

    #[test]
    fn success_note_has_exactly_the_contract() {
        let ending = Ending::from_agent(
            &mut outcome(Some(0), "\n  hello\n\n"),
            "claude",
            Duration::from_secs(600),
        );
        let n = note(&info(), ending, Duration::from_millis(1234));
        assert_eq!(n.path, "jobs/runs/brief/x");
        assert_eq!(n.content, "hello");
        assert_eq!(n.tags, ["job-run", "digest"]);
        assert_eq!(
            Value::Object(n.metadata),
            serde_json::json!({
                "parent_job_id": "id-1",
                "parent_job_path": "jobs/brief",
                "run_started_at": "2026-01-01T08:00:01.500Z",
                "run_duration_ms": 1234,
                "run_exit_code": 0,
                "run_id": "0123abcd-0000-4000-8000-000000000000",
                "model": "m",
                "run_trigger": "schedule",
                "run_scheduled_for": "2026-01-01T08:00:00Z"
            })
        );
    }

    #[test]
    fn failure_kinds() {
        let t = Duration::from_secs(600);
        let cases = [
            (
                outcome(Some(2), "partial"),
                "claude -p exited with code 2",
                Some(2),
            ),
            (
                outcome(Some(0), " \n\t"),
                "claude -p produced empty stdout",
                Some(0),
            ),
            (
                agent::Outcome {
                    stopped: Some(agent::Stopped::Timeout),
                    exit_code: Some(124),
                    ..outcome(None, "")
                },
                "claude -p timed out after 600000ms",
                Some(124),
            ),
            (
                agent::Outcome {
                    spawn_error: Some("No such file or directory (os error 2)".into()),
                    ..outcome(None, "")
                },
                "could not start /x/claude: No such file or directory (os error 2)",
                None,
            ),
        ];
        for (mut o, want, code) in cases {
            let ending = Ending::from_agent(&mut o, "/x/claude", t);
            assert_eq!(ending.error(), Some(want));
            let n = note(&info(), ending, Duration::from_millis(5));
            assert_eq!(n.path, "jobs/runs/brief/x.failed");
            assert_eq!(n.tags, ["job-run", "digest", "job-run-failed"]);
            assert_eq!(n.metadata["run_error"], want);
            assert_eq!(
                n.metadata["run_exit_code"],
                code.map_or(Value::Null, Value::from)
            );
            assert_eq!(n.metadata["run_stderr_tail"], "warn\n");
            assert_eq!(
                n.content,
                format!(
                    "# job-run failed\n\n**Reason:** {want}\n\n## stderr (tail)\n\n```\nwarn\n\n```\n"
                )
            );
        }
    }

    #[test]
    fn empty_stderr_and_truncation() {
        let ending = Ending::Failure {
            error: "e".into(),
            exit_code: None,
            stderr_tail: String::new(),
            truncated: false,
        };
        assert!(
            note(&info(), ending, Duration::ZERO)
                .content
                .contains("```\n(empty)\n```")
        );
        let ending = Ending::Success {
            stdout: "big".into(),
            truncated: true,
        };
        let n = note(&info(), ending.clone(), Duration::ZERO);
        assert_eq!(n.content, "big\n[output truncated at 8 MiB]");
        assert_eq!(n.metadata["run_output_truncated"], true);
        let mut manual = info();
        manual.slot = None;
        manual.trigger = Trigger::Manual;
        let n = note(&manual, ending, Duration::ZERO);
        assert!(!n.metadata.contains_key("run_scheduled_for"));
        assert_eq!(n.metadata["run_trigger"], "manual");
    }

    #[test]
    fn stderr_tail_is_the_last_2048_bytes() {
        let mut o = outcome(Some(1), "");
        o.stderr_tail = format!("{}é{}", "a".repeat(3000), "b".repeat(2047)).into_bytes();
        let Ending::Failure { stderr_tail, .. } =
            Ending::from_agent(&mut o, "claude", Duration::from_secs(1))
        else {
            panic!()
        };
        // 2048 bytes back lands inside `é`: the cut moves to the next char.
        assert_eq!(stderr_tail, "b".repeat(2047));
    }
}
