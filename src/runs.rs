//! `runs` (SPEC §8): the run history, from the vault's `job-run` notes,
//! newest first — start time (in the job's zone), job, trigger, status,
//! duration, cost, output path and, for failures, the reason. `--json`
//! keeps instants in UTC.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::cli::RunsArgs;
use crate::config::Env;
use crate::error::Error;
use crate::instant::in_zone;
use crate::job::Job;
use crate::schedule::Zone;
use crate::vault::{Note, RunFilter};
use crate::{EXIT_OK, once, print};

/// One run, as the listing shows it.
struct Run {
    started: jiff::Timestamp,
    job: String,
    trigger: String,
    failed: bool,
    duration_ms: Option<u64>,
    cost_usd: Option<f64>,
    output: String,
    reason: Option<String>,
    run_id: Option<String>,
    attempts: Option<u64>,
}

impl Run {
    fn from_note(note: &Note) -> Run {
        let m = note.metadata.as_ref();
        let text = |k: &str| {
            m.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .map(String::from)
        };
        let num = |k: &str| m.and_then(|m| m.get(k));
        Run {
            started: note.started(),
            job: text("parent_job_path").unwrap_or_else(|| "?".to_string()),
            trigger: text("run_trigger").unwrap_or_else(|| "?".to_string()),
            failed: note.is_failed_run(),
            duration_ms: num("run_duration_ms").and_then(Value::as_u64),
            cost_usd: num("run_cost_usd").and_then(Value::as_f64),
            output: note.path_or_id().to_string(),
            reason: text("run_error"),
            run_id: text("run_id"),
            attempts: num("run_attempts").and_then(Value::as_u64),
        }
    }
}

pub fn runs(args: &RunsArgs, env: &Env) -> Result<u8, Error> {
    let (config, rt) = once::setup(&args.common, env)?;
    let filter = RunFilter {
        since: args.since,
        job: args.job.clone(),
        failed: args.failed,
    };
    let notes = rt.vault.list_runs(&filter, args.count)?;
    let paused = rt.store.read()?.paused;
    let runs: Vec<Run> = notes.iter().map(Run::from_note).collect();
    if args.json {
        let list: Vec<Value> = runs
            .iter()
            .map(|r| {
                json!({
                    "started_at": format!("{:.3}", r.started),
                    "job": r.job,
                    "trigger": r.trigger,
                    "status": if r.failed { "failed" } else { "ok" },
                    "duration_ms": r.duration_ms,
                    "cost_usd": r.cost_usd,
                    "output_path": r.output,
                    "error": r.reason,
                    "run_id": r.run_id,
                    "attempts": r.attempts,
                    "job_paused": paused.contains_key(&r.job),
                })
            })
            .collect();
        print(&format!("{}\n", json!({ "runs": list })))?;
        return Ok(EXIT_OK);
    }
    if runs.is_empty() {
        print("no runs\n")?;
        return Ok(EXIT_OK);
    }
    // Each run's time in its job's zone (SPEC §8); a job gone or broken
    // since, in the config's.
    let zones: HashMap<String, Zone> = match rt.vault.list_jobs() {
        Ok(listing) => listing
            .notes
            .iter()
            .filter_map(|n| Job::from_note(n, &config.timezone).ok())
            .map(|job| (job.path, job.zone))
            .collect(),
        Err(_) => HashMap::new(),
    };
    let rows: Vec<[String; 8]> = runs
        .iter()
        .map(|r| {
            let tz = zones.get(&r.job).unwrap_or(&config.timezone);
            let cells: [String; 8] = [
                in_zone(r.started, &tz.tz),
                if paused.contains_key(&r.job) {
                    format!("{} (paused)", r.job)
                } else {
                    r.job.clone()
                },
                r.trigger.clone(),
                if r.failed { "failed" } else { "ok" }.to_string(),
                r.duration_ms
                    .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                r.cost_usd.map_or("-".to_string(), |c| format!("${c:.4}")),
                r.output.clone(),
                r.reason.clone().unwrap_or_default(),
            ];
            cells.map(|c| crate::text::shown(&c).into_owned())
        })
        .collect();
    const HEAD: [&str; 8] = [
        "STARTED", "JOB", "TRIGGER", "STATUS", "DURATION", "COST", "OUTPUT", "REASON",
    ];
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([HEAD[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        for (i, text) in cells.iter().enumerate() {
            if i < 7 {
                let _ = write!(out, "{text:<w$}  ", w = widths[i]);
            } else {
                out.push_str(text);
            }
        }
        let end = out.trim_end().len();
        out.truncate(end);
        out.push('\n');
    };
    line(&HEAD.map(String::from));
    for r in &rows {
        line(r);
    }
    print(&out)?;
    Ok(EXIT_OK)
}
