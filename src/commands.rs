//! The small verbs: `next` (fire times of an expression) and `validate`
//! (check local job files). They need no vault and no config.

use std::fmt::Write as _;
use std::path::Path;

use crate::cli::{NextArgs, ValidateArgs};
use crate::config::Env;
use crate::error::Error;
use crate::job::{Job, JobError};
use crate::schedule::{Schedule, Zone};
use crate::template;
use crate::vault::Note;
use crate::{EXIT_JOB_FAILED, EXIT_OK, now, print};

/// The zone named by `--tz`, else `PARACHUTE_RUNNER_TIMEZONE`, else the
/// system zone.
fn zone_for(tz: Option<&str>, env: &Env) -> Result<Zone, Error> {
    match tz.or_else(|| env.get("PARACHUTE_RUNNER_TIMEZONE")) {
        Some(name) => Zone::get(name).map_err(|e| Error::Fatal(format!("--tz: {e}"))),
        None => Ok(Zone::system()),
    }
}

/// `next`: the next N fire instants, one RFC 3339 UTC instant per line.
pub fn next(args: &NextArgs, env: &Env) -> Result<u8, Error> {
    let schedule =
        Schedule::parse(&args.expr).map_err(|e| Error::Fatal(format!("schedule: {e}")))?;
    let zone = zone_for(args.tz.as_deref(), env)?;
    let mut at = match args.from {
        Some(from) => from,
        None => now(env)?,
    };
    let mut out = String::new();
    for _ in 0..args.count {
        match schedule.next_after(at, &zone.tz) {
            Some(next) => {
                let _ = writeln!(out, "{next}");
                at = next;
            }
            None => break,
        }
    }
    if schedule == Schedule::Manual {
        log::info!("manual: this schedule never fires on its own");
    }
    print(&out)
}

/// `validate`: checks each file as `once` would check the note.
pub fn validate(args: &ValidateArgs, env: &Env) -> Result<u8, Error> {
    let zone = zone_for(args.tz.as_deref(), env)?;
    let now = now(env)?;
    let mut out = String::new();
    let mut invalid = 0;
    for file in &args.files {
        match check_file(file, &zone) {
            Ok(job) => {
                let _ = write!(
                    out,
                    "ok: {}: schedule {:?} in {}",
                    job.path, job.schedule_text, job.zone.name
                );
                if job.disabled {
                    out.push_str(" (disabled)");
                }
                let mut at = now;
                let mut nexts = Vec::new();
                for _ in 0..3 {
                    match job.schedule.next_after(at, &job.zone.tz) {
                        Some(next) => {
                            nexts.push(next.to_string());
                            at = next;
                        }
                        None => break,
                    }
                }
                if nexts.is_empty() {
                    out.push_str("; never fires on its own (manual)\n");
                } else {
                    let _ = writeln!(out, "; next {}", nexts.join(", "));
                }
            }
            Err(e) => {
                invalid += 1;
                let _ = writeln!(out, "{e}");
            }
        }
    }
    print(&out)?;
    Ok(if invalid > 0 {
        EXIT_JOB_FAILED
    } else {
        EXIT_OK
    })
}

/// Reads and checks one job file, templates included.
fn check_file(file: &Path, zone: &Zone) -> Result<Job, JobError> {
    let path = file.display().to_string();
    let fail = |problem: String| JobError {
        path: path.clone(),
        problems: vec![problem],
    };
    let bytes = std::fs::read(file).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    let content =
        String::from_utf8(bytes).map_err(|_| fail("the file is not UTF-8 text".to_string()))?;
    let note = Note {
        id: path.clone(),
        path: Some(path.clone()),
        content,
        ..Note::default()
    };
    let job = Job::from_note(&note, zone)?;
    let problems: Vec<String> = [
        template::check(&job.prompt, "prompt"),
        template::check(&job.output_path, "output_path"),
    ]
    .into_iter()
    .filter_map(|r| r.err().map(|e| format!("template: {e}")))
    .collect();
    if problems.is_empty() {
        Ok(job)
    } else {
        Err(JobError { path, problems })
    }
}

/// `jobs`: a table (or JSON) of the jobs with their next fire and last run.
pub fn jobs(args: &crate::cli::JobsArgs, env: &Env) -> Result<u8, Error> {
    let (config, rt) = crate::once::setup(&args.common, env)?;
    let notes = rt
        .vault
        .list_jobs()
        .map_err(|e| Error::Fatal(e.to_string()))?;
    let state = rt.store.read().map_err(|e| Error::Fatal(e.to_string()))?;
    let now = rt.clock.now();
    let mut rows = Vec::new();
    let mut invalid = 0;
    for note in &notes {
        let path = note.path_or_id().to_string();
        let entry = state.jobs.get(&path);
        let last = entry.and_then(|e| e.last_run.as_ref());
        let running = entry.is_some_and(|e| e.running.is_some());
        let row = match Job::from_note(note, &config.timezone) {
            Ok(job) => serde_json::json!({
                "path": path,
                "schedule": job.schedule_text,
                "timezone": job.zone.name,
                "disabled": job.disabled || config.disabled,
                "next": if job.disabled || config.disabled { None } else { job.schedule.next_after(now, &job.zone.tz).map(|t| format!("{t:.0}")) },
                "last_run_at": last.map(|l| format!("{:.0}", l.started_at)),
                "last_status": if running { Some("running".to_string()) } else { last.map(|l| l.status.clone()) },
                "last_run_id": last.map(|l| l.run_id.clone()),
                "problems": serde_json::Value::Null,
            }),
            Err(e) => {
                invalid += 1;
                serde_json::json!({
                    "path": path, "schedule": null, "timezone": null, "disabled": null, "next": null,
                    "last_run_at": last.map(|l| format!("{:.0}", l.started_at)),
                    "last_status": last.map(|l| l.status.clone()),
                    "last_run_id": last.map(|l| l.run_id.clone()),
                    "problems": e.problems.join("; "),
                })
            }
        };
        rows.push(row);
    }
    rows.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    if args.json {
        print(&format!("{}\n", serde_json::json!({ "jobs": rows })))?;
    } else {
        print(&table(&rows))?;
    }
    Ok(if invalid > 0 {
        EXIT_JOB_FAILED
    } else {
        EXIT_OK
    })
}

fn table(rows: &[serde_json::Value]) -> String {
    const HEAD: [&str; 7] = [
        "PATH", "SCHEDULE", "ZONE", "NEXT", "LAST RUN", "STATUS", "PROBLEMS",
    ];
    let cell = |row: &serde_json::Value, i: usize| -> String {
        let key = [
            "path",
            "schedule",
            "timezone",
            "next",
            "last_run_at",
            "last_status",
            "problems",
        ][i];
        match &row[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null if i == 3 && row["disabled"] == true => "disabled".to_string(),
            serde_json::Value::Null if i == 3 && row["problems"].is_null() => "never".to_string(),
            _ => "-".to_string(),
        }
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| (0..7).map(|i| cell(r, i)).collect())
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
