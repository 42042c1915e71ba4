//! SPEC §8 through the binary: `--help`, `--version`, `next`, `validate`,
//! usage errors and their exit codes.

use crate::support::{Runner, TempDir};

#[test]
fn help_documents_every_verb_flag_variable_and_exit_code() {
    let out = Runner::new().args(["--help"]).run().success().stdout();
    for want in [
        "once",
        "serve",
        "jobs",
        "validate",
        "next",
        "--only",
        "--date",
        "--dry-run",
        "--json",
        "--config",
        "--vault-dir",
        "--port",
        "--host",
        "--poll-interval",
        "--shutdown-timeout",
        "--tz",
        "--from",
        "-n N",
        "PARACHUTE_HOME",
        "PARACHUTE_RUNNER_VAULT_URL",
        "PARACHUTE_RUNNER_VAULT_NAME",
        "PARACHUTE_RUNNER_VAULT_TOKEN",
        "PARACHUTE_RUNNER_POLL_INTERVAL",
        "PARACHUTE_RUNNER_MAX_CONCURRENT_JOBS",
        "PARACHUTE_RUNNER_DISABLED",
        "PARACHUTE_RUNNER_CLAUDE_BIN",
        "PARACHUTE_RUNNER_TIMEZONE",
        "PARACHUTE_HUB_ORIGIN",
        "RUST_LOG",
        "EXIT CODES",
    ] {
        assert!(out.contains(want), "--help lacks {want}");
    }
    assert_eq!(Runner::new().args(["help"]).run().success().stdout(), out);
    // No verb: the usage on stderr, exit 2.
    let ran = Runner::new().run().status(2).stdout_empty();
    assert!(
        ran.stderr()
            .starts_with("usage: parachute-runner <command>"),
        "{}",
        ran.stderr()
    );
    // Each verb has its own help.
    for (verb, first) in [
        ("once", "parachute-runner once "),
        ("serve", "parachute-runner serve "),
        ("jobs", "parachute-runner jobs "),
        ("runs", "parachute-runner runs "),
        ("pause", "parachute-runner pause "),
        ("resume", "parachute-runner pause "),
        ("doctor", "parachute-runner doctor "),
        ("validate", "parachute-runner validate "),
        ("next", "parachute-runner next "),
    ] {
        let help = Runner::new()
            .args([verb, "--help"])
            .run()
            .success()
            .stdout();
        assert!(help.starts_with(first), "{verb}: {help}");
        assert_ne!(help, out);
    }
}

#[test]
fn version_is_the_crate_version() {
    Runner::new()
        .args(["--version"])
        .run()
        .success()
        .stdout_is(&format!("parachute-runner {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let ran = Runner::new()
        .args(["launch"])
        .run()
        .status(2)
        .stdout_empty();
    let err = ran.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown command \"launch\""), "{err}");
    Runner::new()
        .args(["next", "0 8 * *"])
        .run()
        .status(2)
        .stderr_has("schedule: expected 5-field cron");
    Runner::new()
        .args(["next", "0 8 * * *", "--tz", "Mars/Base"])
        .run()
        .status(2)
        .stderr_has("unknown time zone \"Mars/Base\"");
    Runner::new()
        .args(["once", "--date", "tomorrow"])
        .run()
        .status(2)
        .stderr_has("--date: expected YYYY-MM-DD");
}

#[test]
fn next_defaults_to_five_from_now_in_the_given_zone() {
    Runner::new()
        .env("PARACHUTE_RUNNER_NOW", "2026-03-07T12:00:00Z")
        .args(["next", "daily", "--tz", "America/New_York"])
        .run()
        .success()
        .stdout_is(
            "2026-03-08T00:00:00-05:00\n2026-03-09T00:00:00-04:00\n2026-03-10T00:00:00-04:00\n2026-03-11T00:00:00-04:00\n2026-03-12T00:00:00-04:00\n",
        );
    Runner::new()
        .env("PARACHUTE_RUNNER_NOW", "2026-03-07T12:00:00Z")
        .args([
            "next",
            "daily",
            "--tz",
            "America/New_York",
            "--utc",
            "-n",
            "2",
        ])
        .run()
        .success()
        .stdout_is("2026-03-08T05:00:00Z\n2026-03-09T04:00:00Z\n");
    // The zone falls back to PARACHUTE_RUNNER_TIMEZONE, then TZ.
    Runner::new()
        .env("PARACHUTE_RUNNER_TIMEZONE", "Asia/Kolkata")
        .args([
            "next",
            "0 9 * * *",
            "--from",
            "2026-01-01T00:00:00Z",
            "-n",
            "1",
            "--utc",
        ])
        .run()
        .success()
        .stdout_is("2026-01-01T03:30:00Z\n");
    Runner::new()
        .env("TZ", "Europe/London")
        .args([
            "next",
            "@monthly",
            "--from",
            "2026-06-15T00:00:00Z",
            "-n",
            "2",
        ])
        .run()
        .success()
        .stdout_is("2026-07-01T00:00:00+01:00\n2026-08-01T00:00:00+01:00\n");
    Runner::new()
        .args(["next", "manual"])
        .run()
        .success()
        .stdout_empty();
}

#[test]
fn next_works_without_any_tz_data_or_home() {
    // No HOME, no PARACHUTE_HOME, a TZ naming a zone: the bundled database
    // answers even where /usr/share/zoneinfo is missing.
    Runner::new()
        .env("TZ", "Pacific/Auckland")
        .env("TZDIR", "/nonexistent")
        .args([
            "next",
            "0 6 * * *",
            "--from",
            "2026-01-01T00:00:00Z",
            "-n",
            "1",
        ])
        .run()
        .success()
        .stdout_is("2026-01-02T06:00:00+13:00\n");
}

const GOOD: &str = "---\ntags: [job]\nschedule: \"0 8 * * *\"\nmodel: claude-sonnet-4-5\nallowed_tools: [Read, Grep]\ntimezone: Europe/Paris\n---\nSummarise yesterday ({{yesterday}}).\n";

#[test]
fn validate_good_file_prints_next_three_fires() {
    let dir = TempDir::new("validate-good");
    let file = dir.join("brief.md");
    std::fs::write(&file, GOOD).unwrap();
    Runner::new()
        .env("PARACHUTE_RUNNER_NOW", "2026-11-23T12:00:00Z")
        .args(["validate".as_ref(), file.as_os_str()])
        .run()
        .success()
        .stdout_is(&format!(
            "ok: {}: schedule \"0 8 * * *\" in Europe/Paris; next 2026-11-24T08:00:00+01:00, 2026-11-25T08:00:00+01:00, 2026-11-26T08:00:00+01:00\n",
            file.display()
        ));
}

#[test]
fn validate_reports_every_problem_and_exits_1() {
    let dir = TempDir::new("validate-bad");
    let good = dir.join("good.md");
    let bad = dir.join("bad.md");
    let yaml = dir.join("yaml.md");
    let template = dir.join("template.md");
    let missing = dir.join("missing.md");
    std::fs::write(&good, GOOD).unwrap();
    std::fs::write(&bad, "---\nschedule: every day\ntimeout: 0\n---\nhi\n").unwrap();
    std::fs::write(&yaml, "---\nmodel: m\nschedule: */5 * * * *\n---\n").unwrap();
    std::fs::write(&template, "---\nschedule: manual\nmodel: m\nallowed_tools: Read\noutput_path: out/{{ when }}\n---\n{{date}} {{nope}}\n").unwrap();
    let ran = Runner::new()
        .args([
            "validate".as_ref(),
            good.as_os_str(),
            bad.as_os_str(),
            yaml.as_os_str(),
            template.as_os_str(),
            missing.as_os_str(),
        ])
        .run()
        .status(1);
    let out = ran.stdout();
    // Files not tagged job are warned about (a folder vault would skip
    // them); the findings are the other lines.
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        out.contains(&format!("warning: {}: not tagged job", bad.display())),
        "{out}"
    );
    assert!(lines[0].starts_with("ok: "), "{out}");
    assert_eq!(
        lines[1],
        format!(
            "invalid job at {}: schedule: expected 5-field cron or one of hourly, daily, weekly, manual (got \"every day\"); model: required; allowed_tools: required; timeout: must be more than 0 seconds",
            bad.display()
        )
    );
    assert!(
        lines[2].starts_with(&format!(
            "invalid job at {}: frontmatter: YAML error at line 3 column",
            yaml.display()
        )),
        "{out}"
    );
    assert!(lines[2].contains("must be quoted"), "{out}");
    assert_eq!(
        lines[3],
        format!(
            "invalid job at {}: template: unknown variable {{{{nope}}}} in prompt; supported: date, time, datetime, yesterday, job_name, job_path, run_id; template: unknown variable {{{{when}}}} in output_path; supported: date, time, datetime, yesterday, job_name, job_path, run_id",
            template.display()
        )
    );
    assert!(
        lines[4].starts_with(&format!(
            "invalid job at {}: cannot read the file:",
            missing.display()
        )),
        "{out}"
    );
}
