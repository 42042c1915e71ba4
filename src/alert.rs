//! Telling people how runs go (SPEC §11): a job's `ping_url` in the
//! healthchecks.io convention, and the config's `notify` (a program) and
//! `notify_url` (a webhook) on failures and recoveries. Everything here
//! runs in the background (`background`): an endpoint that hangs or fails
//! is logged and changes nothing about the run. No request carries the
//! vault token; logs name only an endpoint's scheme and host (a ping URL's
//! path is its secret).

use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Duration;

use jiff::SignedDuration;
use serde_json::json;

use crate::agent;
use crate::background;
use crate::health::Notice;
use crate::secrets;
use crate::text;

/// Each ping or webhook request's time limit.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries after the first, for a request that failed in a way another try
/// may not (no answer, 408, 429, 5xx).
pub const HTTP_RETRIES: u32 = 2;
/// The most a failure ping's body holds.
pub const FAIL_BODY_CAP: usize = 10 << 10;
/// The most of a note a `notify` program gets on stdin.
pub const STDIN_CAP: usize = 1 << 20;
/// The most of a note a webhook gets in its `note` field.
pub const WEBHOOK_NOTE_CAP: usize = 64 << 10;
/// How long a `notify` program may run.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `once` waits, at most, for pings and notices before it exits:
/// a ping's every try, with the waits between them.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(40);
/// The same, after a signal asked the runner to stop.
pub const DRAIN_LIMIT_STOPPING: Duration = Duration::from_secs(5);

/// Waits for the pings and notices in flight, at most `limit`; says so
/// if some are left.
pub fn drain(limit: Duration) {
    let left = background::wait(limit);
    if left > 0 {
        log::warn!(
            "{left} ping(s) or notice(s) still in flight after {}s; not waiting for them",
            limit.as_secs()
        );
    }
}

/// Where notices go, from the config (SPEC §3).
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    /// `notify`: the program and its arguments (empty: none).
    pub argv: Vec<String>,
    pub url: Option<String>,
    pub interval: SignedDuration,
    /// The notify program's environment (without the agent's API keys).
    pub env: Vec<(String, String)>,
}

/// One notice about one run.
#[derive(Clone, Debug)]
pub struct Message {
    pub notice: Notice,
    pub job_path: String,
    pub run_id: String,
    /// The failure's one-line reason; for a recovery, what it recovered
    /// from.
    pub reason: String,
    /// Where the run's note went (or is queued for).
    pub output_path: String,
    pub cost_usd: Option<f64>,
    /// The run's note (markdown), cut to `STDIN_CAP`.
    pub note: String,
}

/// A notice's reason: the failure's one line, or what a recovery recovered
/// from.
pub fn reason(notice: Notice, error: Option<&str>) -> String {
    match notice {
        Notice::Failed => error.unwrap_or("failed").to_string(),
        Notice::Recovered { failures, since } => format!(
            "after {failures} failed run{} since {since:.0}",
            if failures == 1 { "" } else { "s" }
        ),
    }
}

impl Message {
    /// One line for people: `jobs/x failed: <reason>`.
    pub fn summary(&self) -> String {
        match self.notice {
            Notice::Failed => format!("{} failed: {}", self.job_path, self.reason),
            Notice::Recovered { .. } => format!("{} recovered ({})", self.job_path, self.reason),
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        [
            ("NOTIFY_JOB", self.job_path.clone()),
            ("NOTIFY_STATUS", self.notice.status().to_string()),
            ("NOTIFY_REASON", self.reason.clone()),
            ("NOTIFY_OUTPUT_PATH", self.output_path.clone()),
            ("NOTIFY_RUN_ID", self.run_id.clone()),
            (
                "NOTIFY_COST_USD",
                self.cost_usd.map(|c| format!("{c}")).unwrap_or_default(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The webhook's body.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "text": format!("parachute-runner: {}", self.summary()),
            "job": self.job_path,
            "status": self.notice.status(),
            "reason": self.reason,
            "output_path": self.output_path,
            "run_id": self.run_id,
            "cost_usd": self.cost_usd,
            "note": cut(&self.note, WEBHOOK_NOTE_CAP),
        })
    }
}

impl Notifier {
    /// Whether any notice goes anywhere.
    pub fn enabled(&self) -> bool {
        !self.argv.is_empty() || self.url.is_some()
    }

    /// Sends `message` to every configured channel, in the background.
    pub fn send(&self, message: Message) {
        if !self.enabled() {
            return;
        }
        log::debug!("notice: {}", text::shown(&message.summary()));
        if !self.argv.is_empty() {
            let argv = self.argv.clone();
            let mut env = self.env.clone();
            env.extend(message.vars());
            let m = message.clone();
            background::spawn("notify", move || run_notify(&argv, env, &m));
        }
        if let Some(url) = self.url.clone() {
            let body = message.json().to_string().into_bytes();
            background::spawn("notify_url", move || {
                send_http("notify_url", &url, Some(("application/json", body)));
            });
        }
    }
}

/// The notify program's environment: the agent's, without the API keys
/// and settings meant for claude.
pub fn notify_env(child_env: &[(String, String)]) -> Vec<(String, String)> {
    child_env
        .iter()
        .filter(|(k, _)| !k.starts_with("ANTHROPIC_") && !k.starts_with("CLAUDE_"))
        .cloned()
        .collect()
}

fn run_notify(argv: &[String], env: Vec<(String, String)>, m: &Message) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let request = agent::Request {
        program: program.clone(),
        args: args.to_vec(),
        env,
        cwd: None,
        stdin: m.note.as_bytes().to_vec(),
        timeout: NOTIFY_TIMEOUT,
        run_id: format!("notify-{}", m.run_id),
    };
    let outcome = agent::run(request, |_| {});
    let stderr = agent::tail_text(&outcome.stderr_tail, 300);
    let failed = match (
        &outcome.spawn_error,
        outcome.stopped.is_some(),
        outcome.exit_code,
    ) {
        (Some(e), ..) => Some(format!("could not start {program:?}: {e}")),
        (None, true, _) => Some(format!(
            "{program:?} did not finish within {}s; stopped it",
            NOTIFY_TIMEOUT.as_secs()
        )),
        (None, false, Some(0)) => None,
        (None, false, code) => Some(format!(
            "{program:?} exited with {}{}",
            code.map_or("no code".to_string(), |c| c.to_string()),
            if stderr.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", stderr.trim())
            }
        )),
    };
    if let Some(why) = failed {
        log::warn!(
            "notify for {} ({}): {}",
            m.job_path,
            m.notice.status(),
            text::shown(&secrets::scrub(&why))
        );
    }
}

/// A run's pings: the start ping goes out when the run starts; the finish
/// ping waits for it, so the endpoint sees them in order.
pub struct Ping {
    url: String,
    job_path: String,
    start: Option<JoinHandle<()>>,
}

impl Ping {
    /// `GET <url>/start`, in the background.
    pub fn start(url: &str, job_path: &str) -> Ping {
        let target = format!("{url}/start");
        let start = background::spawn("ping_url start", move || {
            send_http("ping_url", &target, None);
        });
        Ping {
            url: url.to_string(),
            job_path: job_path.to_string(),
            start,
        }
    }

    /// `POST <url>` with `summary` on success; `POST <url>/fail` with the
    /// reason and the stderr tail, cut to `FAIL_BODY_CAP`, on failure.
    pub fn finish(self, ok: bool, summary: &str, stderr_tail: &str) {
        let (target, body) = if ok {
            (self.url.clone(), cut(summary, FAIL_BODY_CAP))
        } else {
            (
                format!("{}/fail", self.url),
                fail_body(summary, stderr_tail),
            )
        };
        let body = secrets::scrub_owned(body).into_bytes();
        let start = self.start;
        let what = if ok {
            "ping_url success"
        } else {
            "ping_url fail"
        };
        let job_path = self.job_path;
        background::spawn(what, move || {
            if let Some(start) = start {
                let _ = start.join();
            }
            log::debug!("{job_path}: {what}");
            send_http(
                "ping_url",
                &target,
                Some(("text/plain; charset=utf-8", body)),
            );
        });
    }
}

/// The failure ping's body: the reason, then as much of the stderr tail's
/// end as fits in `FAIL_BODY_CAP`.
pub fn fail_body(reason: &str, stderr_tail: &str) -> String {
    let reason = cut(reason, FAIL_BODY_CAP);
    let stderr = stderr_tail.trim();
    if stderr.is_empty() {
        return reason;
    }
    let head = format!("{reason}\n\nstderr (tail):\n");
    let room = FAIL_BODY_CAP.saturating_sub(head.len());
    if room == 0 {
        return reason;
    }
    let mut from = stderr.len().saturating_sub(room);
    while !stderr.is_char_boundary(from) {
        from += 1;
    }
    format!("{head}{}", &stderr[from..])
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// `scheme://host` of a URL, for logs.
pub fn endpoint(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

fn http() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT))
            .max_redirects(0)
            .user_agent(concat!("parachute-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    })
}

/// A GET (no body) or POST to `url`, tried again on what another try may
/// fix. Logs the outcome; never fails.
fn send_http(what: &str, url: &str, body: Option<(&str, Vec<u8>)>) {
    let mut last = String::new();
    for attempt in 0..=HTTP_RETRIES {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1 << (attempt - 1)));
        }
        let result = match &body {
            None => http().get(url).call(),
            Some((content_type, bytes)) => http()
                .post(url)
                .header("Content-Type", *content_type)
                .send(&bytes[..]),
        };
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                if (200..300).contains(&status) {
                    return;
                }
                last = format!("answered {status}");
                if !matches!(status, 408 | 429 | 500..=599) {
                    break;
                }
            }
            Err(e) => last = e.to_string(),
        }
    }
    log::warn!(
        "{what} {}: {}; giving up (the run is not affected)",
        endpoint(url),
        text::shown(&secrets::scrub(&last))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fail_body_keeps_the_reason_and_the_end_of_stderr() {
        assert_eq!(fail_body("boom", "  "), "boom");
        let stderr = format!("{}END", "x".repeat(20_000));
        let body = fail_body("boom", &stderr);
        assert!(body.len() <= FAIL_BODY_CAP);
        assert!(body.starts_with("boom\n\nstderr (tail):\n"));
        assert!(body.ends_with("xEND"));
        let wide = "é".repeat(10_000);
        assert!(fail_body(&wide, "").len() <= FAIL_BODY_CAP);
        assert!(fail_body("r", &wide).len() <= FAIL_BODY_CAP);
    }

    #[test]
    fn endpoints_hide_the_path() {
        assert_eq!(
            endpoint("https://hc-ping.com/5f2a-uuid/start"),
            "https://hc-ping.com"
        );
        assert_eq!(endpoint("http://127.0.0.1:9/x"), "http://127.0.0.1:9");
        assert_eq!(endpoint("http://h"), "http://h");
    }

    #[test]
    fn the_notify_environment_has_no_api_keys() {
        let env = vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("ANTHROPIC_API_KEY".to_string(), "sk".to_string()),
            ("CLAUDE_CODE_X".to_string(), "1".to_string()),
        ];
        assert_eq!(notify_env(&env), vec![("PATH".into(), "/bin".into())]);
    }
}
