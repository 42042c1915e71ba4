//! The jobs and what state says of them, joined into rows: the `jobs` verb
//! (a table or JSON, SPEC §8) and serve's `GET /runner/jobs` (§9.3) both
//! show these rows, each in its own shape.

use std::fmt::Write as _;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::cli::JobsArgs;
use crate::cli::PauseArgs;
use crate::config::Env;
use crate::due::Plan;
use crate::error::Error;
use crate::health;
use crate::inspect::check_note;
use crate::instant::in_zone;
use crate::state::{LastRun, Paused, State};
use crate::tools::PermissionMode;
use crate::{EXIT_JOB_FAILED, EXIT_OK, once, print};

/// One job with its state.
#[derive(Clone, Debug)]
pub struct Row {
    pub path: String,
    /// The checked job's plan, or its problems.
    pub plan: Result<Plan, String>,
    /// Disabled by its note or globally.
    pub disabled: bool,
    pub next: Option<Timestamp>,
    pub last: Option<LastRun>,
    pub running: bool,
    /// Said next to the row (e.g. tools not enforced).
    pub warnings: Vec<String>,
    /// Paused by hand (SPEC §7.5).
    pub paused: Option<Paused>,
    /// No success in two of its periods (SPEC §11).
    pub stale: bool,
}

impl Row {
    /// Joins a job with its state entry.
    pub fn new(
        path: &str,
        plan: Result<Plan, String>,
        next: Option<Timestamp>,
        state: &State,
        globally_disabled: bool,
    ) -> Row {
        let entry = state.jobs.get(path);
        Row {
            path: path.to_string(),
            disabled: plan.as_ref().is_ok_and(|p| p.disabled) || globally_disabled,
            plan,
            next,
            last: entry.and_then(|e| e.last_run.clone()),
            running: entry.is_some_and(|e| e.running.is_some()),
            warnings: Vec::new(),
            paused: state.paused.get(path).cloned(),
            stale: false,
        }
    }

    /// `running` while a run goes on, else the last run's status.
    pub fn status(&self) -> Option<&str> {
        if self.running {
            Some("running")
        } else {
            self.last.as_ref().map(|l| l.status.as_str())
        }
    }

    /// The `GET /runner/jobs` shape (camelCase, milliseconds).
    pub fn api_json(&self) -> Value {
        json!({
            "jobPath": self.path,
            "schedule": self.plan.as_ref().ok().map(|p| p.schedule_text.clone()),
            "nextRunAt": self.next.map(|t| format!("{t:.3}")),
            "disabled": self.disabled,
            "lastRunAt": self.last.as_ref().map(|l| format!("{:.3}", l.started_at)),
            "lastRunStatus": self.status(),
            "lastRunId": self.last.as_ref().map(|l| l.run_id.clone()),
            "paused": self.paused.is_some(),
        })
    }

    /// The `jobs --json` shape.
    fn cli_json(&self) -> Value {
        let last_run_at = self.last.as_ref().map(|l| format!("{:.0}", l.started_at));
        let last_run_id = self.last.as_ref().map(|l| l.run_id.clone());
        match &self.plan {
            Ok(plan) => json!({
                "path": self.path,
                "schedule": plan.schedule_text,
                "timezone": plan.zone.name,
                "disabled": self.disabled,
                "next": self.next.map(|t| format!("{t:.0}")),
                "last_run_at": last_run_at,
                "last_status": self.status(),
                "last_run_id": last_run_id,
                "problems": Value::Null,
                "warnings": self.warnings,
                "paused": self.paused.as_ref().map(|p| json!({"by": p.by, "at": format!("{:.0}", p.at)})),
                "stale": self.stale,
                "next_local": self.next.map(|t| in_zone(t, &plan.zone.tz)),
                "last_run_local": self.last.as_ref().map(|l| in_zone(l.started_at, &plan.zone.tz)),
            }),
            Err(problems) => json!({
                "path": self.path, "schedule": null, "timezone": null, "disabled": null, "next": null,
                "last_run_at": last_run_at,
                "last_status": self.last.as_ref().map(|l| l.status.clone()),
                "last_run_id": last_run_id,
                "problems": problems,
            }),
        }
    }
}

/// `jobs`: a table (or JSON) of the jobs with their next fire and last run.
pub fn jobs(args: &JobsArgs, env: &Env) -> Result<u8, Error> {
    let (config, rt) = once::setup(&args.common, env)?;
    let listing = rt.vault.list_jobs()?;
    let state = rt.store.read()?;
    let now = rt.clock.now();
    let mut invalid = 0;
    let mut rows: Vec<Row> = listing
        .notes
        .iter()
        .map(|note| {
            let found = check_note(note, note.path_or_id(), &config.timezone, now);
            let bypass = found.job.as_ref().is_ok_and(|j| {
                j.agent.permission_mode.is_none()
                    && config.permission_mode == PermissionMode::BypassPermissions
            });
            let plan = found
                .job
                .map(|job| Plan::from(&job))
                .map_err(|e| e.problems.join("; "));
            invalid += usize::from(plan.is_err());
            let next = match &plan {
                Ok(p) if !p.disabled && !config.disabled => p.schedule.next_after(now, &p.zone.tz),
                _ => None,
            };
            let stale = plan
                .as_ref()
                .is_ok_and(|p| health::is_stale(&state, note.path_or_id(), p, now, config.disabled));
            let mut row = Row::new(note.path_or_id(), plan, next, &state, config.disabled);
            row.stale = stale;
            row.warnings = found.warnings;
            if bypass {
                row.warnings.push(
                    "permission_mode bypassPermissions (the config's default): allowed_tools is not enforced".to_string(),
                );
            }
            row
        })
        .collect();
    for (path, reason) in &listing.skipped {
        invalid += 1;
        rows.push(Row::new(
            path,
            Err(reason.clone()),
            None,
            &state,
            config.disabled,
        ));
    }
    rows.sort_by(|a, b| a.path.cmp(&b.path));
    let rows: Vec<Value> = rows.iter().map(Row::cli_json).collect();
    if args.json {
        print(&format!("{}\n", json!({ "jobs": rows })))?;
    } else {
        print(&table(&rows))?;
    }
    Ok(if invalid > 0 {
        EXIT_JOB_FAILED
    } else {
        EXIT_OK
    })
}

fn table(rows: &[Value]) -> String {
    const HEAD: [&str; 7] = [
        "PATH", "SCHEDULE", "ZONE", "NEXT", "LAST RUN", "STATUS", "PROBLEMS",
    ];
    let cell = |row: &Value, i: usize| -> String {
        let key = [
            "path",
            "schedule",
            "timezone",
            "next_local",
            "last_run_local",
            "last_status",
            "problems",
        ][i];
        if i == 3 && !row["paused"].is_null() {
            return "paused".to_string();
        }
        if i == 5 && row["stale"] == true {
            let status = row["last_status"].as_str().unwrap_or("never ran");
            return format!("{status}, stale");
        }
        match &row[key] {
            Value::String(s) => s.clone(),
            Value::Null if i == 4 && row["last_run_at"].is_string() => {
                row["last_run_at"].as_str().unwrap_or("-").to_string()
            }
            Value::Null if i == 3 && row["disabled"] == true => "disabled".to_string(),
            Value::Null if i == 3 && row["problems"].is_null() => "never".to_string(),
            Value::Null if i == 6 => match row["warnings"].as_array() {
                Some(w) if !w.is_empty() => w
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|w| format!("warning: {w}"))
                    .collect::<Vec<_>>()
                    .join("; "),
                _ => "-".to_string(),
            },
            _ => "-".to_string(),
        }
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            (0..7)
                .map(|i| crate::text::shown(&cell(r, i)).into_owned())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([HEAD[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |c: &[String]| {
        for (i, text) in c.iter().enumerate() {
            if i < 6 {
                let _ = write!(out, "{text:<w$}  ", w = widths[i]);
            } else {
                out.push_str(text);
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&HEAD.map(String::from));
    for c in &cells {
        line(c);
    }
    out
}

/// `pause` and `resume` (SPEC §7.5): by hand, without editing the note.
pub fn pause(args: &PauseArgs, env: &Env) -> Result<u8, Error> {
    let (_, rt) = once::setup(&args.common, env)?;
    for path in &args.jobs {
        let note = rt.vault.get_note(path)?;
        let is_job = note
            .as_ref()
            .is_some_and(|n| n.tags.iter().any(|t| t == crate::vault::JOB_TAG) && !n.is_output());
        if !is_job {
            return Err(Error::Fatal(format!(
                "no job at {path} in {} (see parachute-runner jobs)",
                rt.vault.describe()
            )));
        }
    }
    let paused = (!args.resume).then(|| Paused {
        by: env.get("USER").unwrap_or("cli").to_string(),
        at: rt.clock.now(),
    });
    rt.store.set_paused(&args.jobs, paused, rt.clock.now())?;
    let verb = if args.resume { "resumed" } else { "paused" };
    let mut out = String::new();
    for path in &args.jobs {
        let _ = writeln!(out, "{verb}: {path}");
    }
    print(&out)?;
    Ok(EXIT_OK)
}
