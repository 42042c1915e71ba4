//! Files and secrets (SPEC §2): after every operation every file under
//! `runner/` is 0600 and every directory 0700, and the vault token is in
//! no file, log line, error, argv, environment or note — only encrypted
//! in secrets.json.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;

use crate::serve::start;
use crate::support::fake_claude::{self, FakeClaude};
use crate::support::fake_hub::FakeHub;
use crate::support::fake_vault::{Fault, Route};
use crate::support::world::{World, job, walk};

const SECRET: &str = "pvt_this_must_never_leak_0123456789";

fn check_modes(runner: &Path, after: &str) {
    let mut dirs = vec![runner.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o} after {after}", dir.display());
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{} is {mode:o} after {after}", p.display());
            }
        }
    }
}

fn check_no_secret(home: &Path, outputs: &[String], after: &str) {
    // The runner's files (not the fake agent's records beside them).
    let mut files = walk(&home.join("runner"));
    files.push(home.join("services.json"));
    for file in files.into_iter().filter(|f| f.exists()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "the token is in {} after {after}",
            file.display()
        );
    }
    for text in outputs {
        assert!(
            !text.contains(SECRET),
            "the token is in the output after {after}: {text}"
        );
    }
}

#[test]
fn modes_and_the_token_after_every_operation() {
    let w = World::with_claude("files", FakeClaude::new().prints("out").stderr("err"));
    w.vault.add_job("jobs/a", &job("\"* * * * *\"", ""));
    w.vault.add_job("jobs/m", &job("manual", ""));
    // The vault takes our secret token too.
    let vault = crate::support::fake_vault::FakeVault::start_with("127.0.0.1:0", SECRET, "default")
        .unwrap();
    vault.add_job("jobs/a", &job("\"* * * * *\"", ""));
    vault.add_job("jobs/m", &job("manual", ""));
    let runner = w.home.join("runner");
    // What a careful user creates: a private directory and config.
    std::fs::remove_dir_all(&runner).unwrap();
    std::fs::create_dir(&runner).unwrap();
    std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = runner.join("config.json");
    std::fs::write(
        &config,
        json!({"vault_url": vault.url(), "vault_token": SECRET, "claude_bin": w.claude_dir.join("claude"), "timezone": "UTC"}).to_string(),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut outputs = Vec::new();
    let mut step = |name: &str, ran: crate::support::Ran| {
        outputs.push(ran.stdout());
        outputs.push(ran.stderr());
        check_modes(&runner, name);
        check_no_secret(w.home.path(), &outputs, name);
    };
    step(
        "the first pass (migration)",
        w.once_at("2026-01-01T00:00:30Z")
            .env("RUST_LOG", "trace")
            .run(),
    );
    step(
        "a run",
        w.once_at("2026-01-01T00:01:30Z")
            .env("RUST_LOG", "debug")
            .run(),
    );
    vault.set_fault(Route::Create, Fault::Status(503), None);
    step("a queued note", w.once_at("2026-01-01T00:02:30Z").run());
    vault.clear_faults();
    step(
        "a delivered outbox",
        w.once_at("2026-01-01T00:02:40Z").run(),
    );
    let mut killed = w
        .runner()
        .env("PARACHUTE_RUNNER_NOW", "2026-01-01T00:03:30Z")
        .args(["once", "--only", "jobs/m"])
        .spawn();
    let _ = killed.kill();
    let _ = killed.wait();
    step("a recovery", w.once_at("2026-01-01T00:03:40Z").run());
    step("jobs", w.runner().args(["jobs"]).run());
    step(
        "a dry run",
        w.once_at("2026-01-01T00:04:30Z")
            .args(["--dry-run", "--json"])
            .run(),
    );
    {
        let s = start(&w, FakeHub::start(), &[], &[]);
        let admin = s.hub.token("runner:admin");
        let (status, _) = s.send(
            "PUT",
            "/.parachute/config",
            Some(&admin),
            Some(
                json!({"max_concurrent_jobs": 2, "vault_token": SECRET})
                    .to_string()
                    .into_bytes(),
            ),
        );
        assert_eq!(status, 200);
        let (_, config) = s.get("/.parachute/config", Some(&admin));
        assert!(!config.to_string().contains(SECRET));
        let (status, _) = s.send("POST", "/runner/jobs/jobs%2Fm/run-now", Some(&admin), None);
        assert_eq!(status, 200, "{}", s.log());
        check_modes(&runner, "serve");
        let (status, _) = s.send(
            "POST",
            "/.parachute/clear-credential/vault-token",
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        check_modes(&runner, "clear-credential");
        outputs.push(s.log());
    }
    let services = w.home.join("services.json");
    assert_eq!(
        std::fs::metadata(&services).unwrap().permissions().mode() & 0o777,
        0o600
    );
    check_no_secret(w.home.path(), &outputs, "serve");
    // Nor in what the agent saw but its private MCP config.
    for call in fake_claude::invocations(&w.claude_dir) {
        assert!(!call.argv.join(" ").contains(SECRET));
        assert!(!format!("{:?}", call.env).contains(SECRET));
        assert!(!String::from_utf8_lossy(&call.stdin).contains(SECRET));
        assert!(
            call.mcp_config.unwrap().contains(SECRET),
            "the MCP config is where it belongs"
        );
    }
    for note in vault.notes() {
        assert!(!note.content.contains(SECRET) && !format!("{:?}", note.metadata).contains(SECRET));
    }
}
