//! `serve`'s Prometheus metrics (SPEC §9.3 `/metrics`): counters and a
//! duration histogram updated by runs, gauges read at scrape time. Labels
//! never carry job paths or other note data.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::judge::Cause;
use crate::run::Report;

/// Upper bounds (seconds) of the run duration histogram.
const BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

#[derive(Default)]
pub struct Metrics {
    runs_ok: AtomicU64,
    runs_failed: AtomicU64,
    durations: Mutex<Histogram>,
    polls_ok: AtomicU64,
    polls_failed: AtomicU64,
    agent: Mutex<AgentTotals>,
}

/// What the agents' streams reported, and how runs failed.
#[derive(Default)]
struct AgentTotals {
    cost_usd: f64,
    /// input, output, cache_read, cache_creation.
    tokens: [u64; 4],
    failures: [u64; Cause::ALL.len()],
    retries: u64,
}

const TOKEN_KINDS: [&str; 4] = ["input", "output", "cache_read", "cache_creation"];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Values known only at scrape time.
pub struct Gauges {
    pub jobs_loaded: usize,
    /// Jobs without a success in two of their periods (SPEC §11).
    pub jobs_stale: usize,
    pub running: usize,
    /// Claimed runs waiting for a permit or for their next attempt.
    pub waiting: usize,
    pub outbox_depth: usize,
    /// Unix seconds of the last poll, if any.
    pub last_poll: Option<i64>,
    pub last_poll_ok: bool,
    pub uptime: Duration,
}

impl Metrics {
    pub fn run_finished(&self, report: &Report) {
        let (ok, duration) = (report.ok, report.duration);
        if let Ok(mut a) = self.agent.lock() {
            let m = &report.meta;
            a.cost_usd += m.cost_usd.unwrap_or(0.0);
            if let Some(u) = &m.usage {
                for (t, n) in a.tokens.iter_mut().zip([
                    u.input_tokens,
                    u.output_tokens,
                    u.cache_read_input_tokens,
                    u.cache_creation_input_tokens,
                ]) {
                    *t += n;
                }
            }
            a.retries += u64::from(m.attempts.saturating_sub(1));
            if let Some(i) = report
                .cause
                .and_then(|c| Cause::ALL.iter().position(|x| *x == c))
            {
                a.failures[i] += 1;
            }
        }
        if ok {
            self.runs_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.runs_failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut h) = self.durations.lock() {
            let secs = duration.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    pub fn poll(&self, ok: bool) {
        if ok {
            self.polls_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.polls_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The text exposition format.
    pub fn render(&self, g: &Gauges) -> String {
        let mut s = String::with_capacity(2048);
        let ok = self.runs_ok.load(Ordering::Relaxed);
        let failed = self.runs_failed.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP parachute_runner_runs_total Finished runs by status."
        );
        let _ = writeln!(s, "# TYPE parachute_runner_runs_total counter");
        let _ = writeln!(s, "parachute_runner_runs_total{{status=\"ok\"}} {ok}");
        let _ = writeln!(
            s,
            "parachute_runner_runs_total{{status=\"failed\"}} {failed}"
        );
        let _ = writeln!(
            s,
            "# HELP parachute_runner_run_duration_seconds Duration of finished runs."
        );
        let _ = writeln!(s, "# TYPE parachute_runner_run_duration_seconds histogram");
        if let Ok(h) = self.durations.lock() {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "parachute_runner_run_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                s,
                "parachute_runner_run_duration_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(s, "parachute_runner_run_duration_seconds_sum {}", h.sum);
            let _ = writeln!(s, "parachute_runner_run_duration_seconds_count {}", h.count);
        }
        let gauge = |s: &mut String, name: &str, help: &str, value: String| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            let _ = writeln!(s, "{name} {value}");
        };
        gauge(
            &mut s,
            "parachute_runner_jobs_loaded",
            "Job notes in the current table.",
            g.jobs_loaded.to_string(),
        );
        gauge(
            &mut s,
            "parachute_runner_jobs_stale",
            "Jobs without a successful run in two of their periods.",
            g.jobs_stale.to_string(),
        );
        gauge(
            &mut s,
            "parachute_runner_running_jobs",
            "Runs going on now.",
            g.running.to_string(),
        );
        gauge(
            &mut s,
            "parachute_runner_waiting_runs",
            "Claimed runs waiting for a concurrency slot or a retry.",
            g.waiting.to_string(),
        );
        gauge(
            &mut s,
            "parachute_runner_outbox_depth",
            "Output notes waiting for the vault.",
            g.outbox_depth.to_string(),
        );
        gauge(
            &mut s,
            "parachute_runner_last_poll_timestamp_seconds",
            "Unix time of the last poll of the vault (0: none yet).",
            g.last_poll.unwrap_or(0).to_string(),
        );
        gauge(
            &mut s,
            "parachute_runner_last_poll_success",
            "1 if the last poll of the vault succeeded.",
            u8::from(g.last_poll_ok).to_string(),
        );
        let _ = writeln!(
            s,
            "# HELP parachute_runner_polls_total Polls of the vault by result."
        );
        let _ = writeln!(s, "# TYPE parachute_runner_polls_total counter");
        let _ = writeln!(
            s,
            "parachute_runner_polls_total{{result=\"ok\"}} {}",
            self.polls_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "parachute_runner_polls_total{{result=\"failed\"}} {}",
            self.polls_failed.load(Ordering::Relaxed)
        );
        if let Ok(a) = self.agent.lock() {
            let _ = writeln!(
                s,
                "# HELP parachute_runner_agent_cost_usd_total Cost the agents reported, in US dollars."
            );
            let _ = writeln!(s, "# TYPE parachute_runner_agent_cost_usd_total counter");
            let _ = writeln!(s, "parachute_runner_agent_cost_usd_total {}", a.cost_usd);
            let _ = writeln!(
                s,
                "# HELP parachute_runner_agent_tokens_total Tokens the agents reported, by kind."
            );
            let _ = writeln!(s, "# TYPE parachute_runner_agent_tokens_total counter");
            for (kind, n) in TOKEN_KINDS.iter().zip(a.tokens) {
                let _ = writeln!(
                    s,
                    "parachute_runner_agent_tokens_total{{kind=\"{kind}\"}} {n}"
                );
            }
            let _ = writeln!(
                s,
                "# HELP parachute_runner_run_failures_total Failed runs by cause."
            );
            let _ = writeln!(s, "# TYPE parachute_runner_run_failures_total counter");
            for (cause, n) in Cause::ALL.iter().zip(a.failures) {
                let _ = writeln!(
                    s,
                    "parachute_runner_run_failures_total{{cause=\"{}\"}} {n}",
                    cause.as_str()
                );
            }
            let _ = writeln!(
                s,
                "# HELP parachute_runner_run_retries_total Attempts made again after a transient failure."
            );
            let _ = writeln!(s, "# TYPE parachute_runner_run_retries_total counter");
            let _ = writeln!(s, "parachute_runner_run_retries_total {}", a.retries);
        }
        gauge(
            &mut s,
            "parachute_runner_uptime_seconds",
            "Seconds since serve started.",
            g.uptime.as_secs().to_string(),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::Meta;

    fn report(ok: bool, secs: u64, cause: Option<Cause>, meta: Meta) -> Report {
        Report {
            job_path: "jobs/x".into(),
            run_id: "r".into(),
            trigger: crate::due::Trigger::Schedule,
            slot: None,
            ok,
            error: None,
            written_to: None,
            output_path: "o".into(),
            queued_because: None,
            duration: Duration::from_secs(secs),
            cause,
            meta,
        }
    }

    #[test]
    fn exposition() {
        let m = Metrics::default();
        let usage = crate::stream::Usage {
            input_tokens: 1000,
            output_tokens: 200,
            cache_read_input_tokens: 5,
            cache_creation_input_tokens: 7,
        };
        m.run_finished(&report(
            true,
            3,
            None,
            Meta {
                cost_usd: Some(0.25),
                usage: Some(usage),
                attempts: 3,
                ..Meta::default()
            },
        ));
        m.run_finished(&report(
            false,
            700,
            Some(Cause::Api),
            Meta {
                cost_usd: Some(0.5),
                usage: Some(usage),
                attempts: 1,
                ..Meta::default()
            },
        ));
        m.poll(true);
        let text = m.render(&Gauges {
            jobs_loaded: 7,
            jobs_stale: 2,
            running: 1,
            waiting: 3,
            outbox_depth: 2,
            last_poll: Some(1_800_000_000),
            last_poll_ok: true,
            uptime: Duration::from_secs(9),
        });
        for line in [
            "parachute_runner_runs_total{status=\"ok\"} 1",
            "parachute_runner_runs_total{status=\"failed\"} 1",
            "parachute_runner_run_duration_seconds_bucket{le=\"1\"} 0",
            "parachute_runner_run_duration_seconds_bucket{le=\"5\"} 1",
            "parachute_runner_run_duration_seconds_bucket{le=\"600\"} 1",
            "parachute_runner_run_duration_seconds_bucket{le=\"1800\"} 2",
            "parachute_runner_run_duration_seconds_bucket{le=\"+Inf\"} 2",
            "parachute_runner_run_duration_seconds_count 2",
            "parachute_runner_jobs_loaded 7",
            "parachute_runner_jobs_stale 2",
            "parachute_runner_running_jobs 1",
            "parachute_runner_waiting_runs 3",
            "parachute_runner_outbox_depth 2",
            "parachute_runner_last_poll_timestamp_seconds 1800000000",
            "parachute_runner_last_poll_success 1",
            "parachute_runner_agent_cost_usd_total 0.75",
            "parachute_runner_agent_tokens_total{kind=\"input\"} 2000",
            "parachute_runner_agent_tokens_total{kind=\"output\"} 400",
            "parachute_runner_agent_tokens_total{kind=\"cache_read\"} 10",
            "parachute_runner_agent_tokens_total{kind=\"cache_creation\"} 14",
            "parachute_runner_run_failures_total{cause=\"api\"} 1",
            "parachute_runner_run_failures_total{cause=\"timeout\"} 0",
            "parachute_runner_run_retries_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
