//! The verbs that need no vault and no config: `next` (fire times of an
//! expression) and `validate` (check local job files as a pass would).

use std::fmt::Write as _;
use std::path::Path;

use crate::cli::{NextArgs, ValidateArgs};
use crate::config::{self, Env};
use crate::error::Error;
use crate::instant::in_zone;
use crate::job::{self, Job, JobError};
use crate::schedule::{Schedule, Zone};
use crate::template;
use crate::text::push_line;
use crate::vault::dir::DirVault;
use crate::vault::{Note, Vault};
use crate::{EXIT_JOB_FAILED, EXIT_OK, print};

/// The zone of `--tz`, else `PARACHUTE_RUNNER_TIMEZONE`, else the system's.
fn zone_for(tz: Option<&str>, env: &Env) -> Result<Zone, Error> {
    config::cli_zone(tz, env).map_err(|p| Error::Fatal(p.to_string()))
}

/// "Now": the clock, or a test hook's.
fn now(env: &Env) -> Result<jiff::Timestamp, Error> {
    config::clock(env)
        .map(|c| c.now())
        .map_err(|p| Error::Fatal(p.to_string()))
}

/// `next`: the next N fire times, one per line, in the zone with its
/// offset (`--utc`: RFC 3339 UTC instants).
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
                if args.utc {
                    let _ = writeln!(out, "{next}");
                } else {
                    let _ = writeln!(out, "{}", in_zone(next, &zone.tz));
                }
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

/// What `validate` (and `jobs`) found for one note.
pub struct Finding {
    pub path: String,
    pub job: Result<Job, JobError>,
    pub warnings: Vec<String>,
}

/// `validate`: checks each file (or each job of a folder, as a folder
/// vault would find them) as a pass would.
pub fn validate(args: &ValidateArgs, env: &Env) -> Result<u8, Error> {
    let zone = zone_for(args.tz.as_deref(), env)?;
    let now = now(env)?;
    let mut findings = Vec::new();
    for arg in &args.files {
        if arg.is_dir() {
            let root = config::absolute(arg);
            let listing = DirVault::new(root.clone()).list_jobs()?;
            for note in &listing.notes {
                let file = root.join(format!("{}.md", note.path_or_id()));
                findings.push(check_note(note, &file.display().to_string(), &zone, now));
            }
            for (path, reason) in listing.skipped {
                findings.push(Finding {
                    job: Err(JobError {
                        path: path.clone(),
                        problems: vec![reason],
                    }),
                    path,
                    warnings: Vec::new(),
                });
            }
        } else {
            findings.push(check_file(arg, &zone, now));
        }
    }
    let invalid = findings.iter().filter(|f| f.job.is_err()).count();
    if args.json {
        let list: Vec<serde_json::Value> = findings
            .iter()
            .map(|f| {
                let (problems, schedule, timezone, next) = match &f.job {
                    Ok(job) => (
                        Vec::new(),
                        Some(job.schedule_text.clone()),
                        Some(job.zone.name.clone()),
                        next_three(job, now)
                            .into_iter()
                            .map(|t| format!("{t:.0}"))
                            .collect(),
                    ),
                    Err(e) => (e.problems.clone(), None, None, Vec::new()),
                };
                serde_json::json!({
                    "path": f.path, "valid": f.job.is_ok(), "problems": problems,
                    "warnings": f.warnings, "schedule": schedule, "timezone": timezone,
                    "next": next,
                })
            })
            .collect();
        print(&format!(
            "{}\n",
            serde_json::json!({ "files": list, "invalid": invalid })
        ))?;
    } else {
        let mut out = String::new();
        for f in &findings {
            match &f.job {
                Ok(job) => {
                    let mut line = format!(
                        "ok: {}: schedule {:?} in {}",
                        f.path, job.schedule_text, job.zone.name
                    );
                    if job.disabled {
                        line.push_str(" (disabled)");
                    }
                    let nexts: Vec<String> = next_three(job, now)
                        .into_iter()
                        .map(|t| in_zone(t, &job.zone.tz))
                        .collect();
                    if nexts.is_empty() {
                        line.push_str("; never fires on its own (manual)");
                    } else {
                        let _ = write!(line, "; next {}", nexts.join(", "));
                    }
                    push_line(&mut out, &line);
                }
                Err(e) => push_line(&mut out, &e.to_string()),
            }
            for w in &f.warnings {
                push_line(&mut out, &format!("warning: {}: {w}", f.path));
            }
        }
        print(&out)?;
    }
    Ok(if invalid > 0 {
        EXIT_JOB_FAILED
    } else {
        EXIT_OK
    })
}

/// The next three fire times of a job after `now`.
fn next_three(job: &Job, now: jiff::Timestamp) -> Vec<jiff::Timestamp> {
    let mut at = now;
    let mut out = Vec::new();
    for _ in 0..3 {
        match job.schedule.next_after(at, &job.zone.tz) {
            Some(next) => {
                out.push(next);
                at = next;
            }
            None => break,
        }
    }
    out
}

/// Reads and checks one job file, as a pass would check the note.
fn check_file(file: &Path, zone: &Zone, now: jiff::Timestamp) -> Finding {
    let path = file.display().to_string();
    let fail = |problem: String| Finding {
        path: path.clone(),
        job: Err(JobError {
            path: path.clone(),
            problems: vec![problem],
        }),
        warnings: Vec::new(),
    };
    let bytes = match crate::files::read_capped(file, crate::vault::MAX_NOTE) {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot read the file: {e}")),
    };
    let Ok(content) = String::from_utf8(bytes) else {
        return fail("the file is not UTF-8 text".to_string());
    };
    let note = Note {
        id: path.clone(),
        path: Some(path.clone()),
        content,
        ..Note::default()
    };
    let mut finding = check_note(&note, &path, zone, now);
    if !job::frontmatter_tags(&note.content)
        .iter()
        .any(|t| t == crate::vault::JOB_TAG)
    {
        finding.warnings.push(
            "not tagged job: a folder vault does not take it for a job (add tags: [job] to its frontmatter); a vault server needs the note tagged job".to_string(),
        );
    }
    finding
}

/// Checks one note as a pass would: the job, its templates and the output
/// path they render to, and the warnings.
pub fn check_note(note: &Note, shown: &str, zone: &Zone, now: jiff::Timestamp) -> Finding {
    let warnings = job::warnings(note);
    let fail = |problems: Vec<String>| JobError {
        path: shown.to_string(),
        problems,
    };
    let job = Job::from_note(note, zone)
        .map_err(|e| fail(e.problems))
        .and_then(|job| {
            let problems: Vec<String> = [
                template::check(&job.prompt, "prompt"),
                template::check(&job.output_path, "output_path"),
            ]
            .into_iter()
            .filter_map(|r| r.err().map(|e| format!("template: {e}")))
            .collect();
            if !problems.is_empty() {
                return Err(fail(problems));
            }
            // What a run renders: an output path that leaves the vault or is
            // absolute fails every run.
            match crate::run::prepare(&job, crate::due::Trigger::Manual, None, now, None).1 {
                Err(f) => Err(fail(vec![
                    f.error
                        .strip_prefix("template error: ")
                        .unwrap_or(&f.error)
                        .to_string(),
                ])),
                Ok(_) => Ok(job),
            }
        });
    Finding {
        path: shown.to_string(),
        job,
        warnings,
    }
}
