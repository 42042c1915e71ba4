//! The verbs that need no vault and no config: `next` (fire times of an
//! expression) and `validate` (check local job files as a pass would).

use std::fmt::Write as _;
use std::path::Path;

use crate::cli::{NextArgs, ValidateArgs};
use crate::config::{self, Env};
use crate::error::Error;
use crate::job::{Job, JobError};
use crate::schedule::{Schedule, Zone};
use crate::template;
use crate::tools::{self, PermissionMode};
use crate::vault::Note;
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
                if job.agent.permission_mode == Some(PermissionMode::BypassPermissions) {
                    let _ = writeln!(out, "warning: {}", tools::bypass_warning(&job.path));
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
    let bytes = crate::files::read_capped(file, 8 << 20)
        .map_err(|e| fail(format!("cannot read the file: {e}")))?;
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
