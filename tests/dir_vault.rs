//! SPEC §10: a folder of markdown notes as the vault — discovery, output
//! files, no overwrite, the agent's empty MCP config and working directory,
//! and the bundled example run end to end with the stand-in agent.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use parachute_runner::testing::DirVault;
use parachute_runner::testing::{Created, NewNote, RunFilter, Vault};
use parachute_runner::testing::{parse_frontmatter, split_frontmatter};
use serde_json::{Map, Value, json};

use crate::support::fake_claude::{self, FakeClaude};
use crate::support::world::walk;
use crate::support::{Runner, TempDir};

const JOB: &str = "schedule: \"* * * * *\"\nmodel: test-model\nallowed_tools: [Read, Grep]\n";

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A folder vault with a runner home beside it.
struct Folder {
    dir: TempDir,
}

impl Folder {
    fn new(name: &str) -> Folder {
        let dir = TempDir::new(name);
        std::fs::create_dir_all(dir.join("notes")).unwrap();
        Folder { dir }
    }

    fn notes(&self) -> PathBuf {
        self.dir.join("notes")
    }

    /// `parachute-runner <verb> --vault-dir <notes>`.
    fn runner(&self, verb: &str) -> Runner {
        Runner::new()
            .env("PARACHUTE_HOME", self.dir.join("home"))
            .env("HOME", self.dir.path())
            .args([
                verb.as_ref(),
                "--vault-dir".as_ref(),
                self.notes().as_os_str(),
            ])
    }
}

#[test]
fn discovery_follows_the_rules() {
    let f = Folder::new("discovery");
    let n = f.notes();
    write(
        &n,
        "jobs/list.md",
        &format!("---\ntags: [job, daily]\n{JOB}---\nA"),
    );
    write(
        &n,
        "jobs/hash.md",
        &format!("---\ntags: \"#job\"\n{JOB}---\nB"),
    );
    write(
        &n,
        "deep/er/string.md",
        &format!("---\ntags: job\n{JOB}---\nC"),
    );
    write(
        &n,
        "jobs/hash-list.md",
        &format!("---\ntags: [\"#job\"]\n{JOB}---\nD"),
    );
    write(
        &n,
        ".obsidian/hidden.md",
        &format!("---\ntags: [job]\n{JOB}---\n"),
    );
    write(
        &n,
        "projects/.git/hidden.md",
        &format!("---\ntags: [job]\n{JOB}---\n"),
    );
    write(
        &n,
        "jobs/runs/old/output.md",
        &format!("---\ntags: [job]\n{JOB}---\n"),
    );
    write(
        &n,
        "notes/output.md",
        &format!("---\ntags: [job, job-run]\n{JOB}---\n"),
    );
    write(
        &n,
        "notes/other.md",
        &format!("---\ntags: [jobs, job/daily]\n{JOB}---\n"),
    );
    write(&n, "notes/no-frontmatter.md", "tags: [job]\n");
    write(
        &n,
        "notes/job.txt",
        &format!("---\ntags: [job]\n{JOB}---\n"),
    );
    write(
        &n,
        "notes/broken.md",
        "---\ntags: [job]\nschedule: [\n---\n",
    );
    let doc = f.runner("jobs").args(["--json"]).run().status(1).json();
    let paths: Vec<&str> = doc["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["path"].as_str().unwrap())
        .collect();
    // The broken file says it is a job on its tags line, so it is listed
    // with its problem (exit 1) rather than silently left out.
    assert_eq!(
        paths,
        [
            "deep/er/string",
            "jobs/hash",
            "jobs/hash-list",
            "jobs/list",
            "notes/broken"
        ],
        "{doc}"
    );
    assert!(
        doc["jobs"][4]["problems"]
            .as_str()
            .unwrap()
            .contains("YAML error"),
        "{doc}"
    );
    write(
        &n,
        "notes/broken.md",
        "---\ntags: [job]\nschedule: nope\n---\n",
    );
    let doc = f.runner("jobs").args(["--json"]).run().status(1).json();
    let bad = doc["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["path"] == "notes/broken")
        .unwrap();
    assert!(
        bad["problems"]
            .as_str()
            .unwrap()
            .contains("schedule: expected 5-field cron")
    );
}

#[test]
fn a_run_writes_a_note_file_that_reads_back_as_a_note() {
    let f = Folder::new("roundtrip");
    let claude_dir = f.dir.join("claude");
    let bin = FakeClaude::new()
        .prints("Line one\n---\nline: two")
        .install(&claude_dir);
    write(
        &f.notes(),
        "jobs/brief.md",
        &format!(
            "---\ntags: [job]\n{JOB}output_tags: [brief, \"#x\"]\n---\nHello {{{{job_name}}}}"
        ),
    );
    let run = |now: &str| {
        f.runner("once")
            .env("PARACHUTE_RUNNER_NOW", now)
            .env("PARACHUTE_RUNNER_CLAUDE_BIN", &bin)
            .run()
    };
    run("2026-01-01T00:00:30Z").success();
    let ran = run("2026-01-01T00:01:30Z").success();
    let files: Vec<PathBuf> = walk(&f.notes().join("jobs/runs"));
    assert_eq!(files.len(), 1);
    let file = &files[0];
    assert!(
        ran.stdout()
            .contains(&format!("ok: jobs/brief -> {}", file.display())),
        "{}",
        ran.stdout()
    );
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.starts_with("---\ntags:\n- job-run\n- brief\n- '#x'\n"),
        "{text}"
    );
    let split = split_frontmatter(&text).unwrap();
    assert_eq!(split.body, "Line one\n---\nline: two\n");
    let front = parse_frontmatter(split.yaml.unwrap()).unwrap();
    assert_eq!(front["tags"], json!(["job-run", "brief", "#x"]));
    let run_id = front["run_id"].as_str().unwrap();
    assert_eq!(file.file_stem().unwrap().to_str().unwrap(), run_id);
    assert_eq!(front["parent_job_path"], "jobs/brief");
    assert_eq!(front["parent_job_id"], "jobs/brief");
    assert_eq!(front["run_trigger"], "schedule");
    assert_eq!(front["run_scheduled_for"], "2026-01-01T00:01:00Z");
    assert_eq!(front["run_exit_code"], 0);
    // The agent: an empty MCP config, the folder as working directory.
    let call = fake_claude::only_invocation(&claude_dir);
    assert_eq!(call.mcp_config.as_deref(), Some("{\"mcpServers\":{}}\n"));
    assert_eq!(Path::new(&call.cwd), f.notes().canonicalize().unwrap());
    // Read back through the vault, it is a run, not a job.
    let vault = DirVault::new(f.notes());
    let runs = vault.list_runs(&RunFilter::default(), 10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].run_id(), Some(run_id));
    assert!(
        vault
            .list_jobs()
            .unwrap()
            .notes
            .iter()
            .all(|n| n.path.as_deref() == Some("jobs/brief"))
    );
}

#[test]
fn output_files_are_never_overwritten_even_by_racing_writers() {
    let dir = TempDir::new("race");
    let vault = Arc::new(DirVault::new(dir.path().to_path_buf()));
    for round in 0..50 {
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|writer| {
                let vault = Arc::clone(&vault);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let mut metadata = Map::new();
                    metadata.insert("run_id".into(), Value::from(format!("writer-{writer}")));
                    let note = NewNote {
                        path: format!("out/r{round}"),
                        content: format!("from writer {writer}\n").repeat(1000),
                        tags: vec!["job-run".into()],
                        metadata,
                    };
                    barrier.wait();
                    vault.create_note(&note).unwrap()
                })
            })
            .collect();
        let results: Vec<Created> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won = results
            .iter()
            .filter(|r| matches!(r, Created::At(_)))
            .count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        let text = std::fs::read_to_string(dir.join(format!("out/r{round}.md"))).unwrap();
        let writer = if text.contains("from writer 0") { 0 } else { 1 };
        assert_eq!(
            split_frontmatter(&text).unwrap().body,
            format!("from writer {writer}\n").repeat(1000)
        );
    }
    // No temp file is left behind.
    assert!(
        walk(dir.path())
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "md"))
    );
}

#[test]
fn a_taken_file_gets_the_suffix_and_the_original_is_kept() {
    let f = Folder::new("taken");
    let claude_dir = f.dir.join("claude");
    let bin = FakeClaude::new().prints("new").install(&claude_dir);
    write(
        &f.notes(),
        "jobs/x.md",
        &format!("---\ntags: [job]\n{JOB}output_path: \"daily/{{{{date}}}}\"\n---\nhi"),
    );
    write(&f.notes(), "daily/2026-01-01.md", "mine, do not touch\n");
    let run = |now: &str| {
        f.runner("once")
            .env("PARACHUTE_RUNNER_NOW", now)
            .env("PARACHUTE_RUNNER_CLAUDE_BIN", &bin)
            .run()
    };
    run("2026-01-01T00:00:30Z").success();
    run("2026-01-01T00:01:30Z").success();
    assert_eq!(
        std::fs::read_to_string(f.notes().join("daily/2026-01-01.md")).unwrap(),
        "mine, do not touch\n"
    );
    let files: Vec<PathBuf> = walk(&f.notes().join("daily"));
    assert_eq!(files.len(), 2);
    let other = files
        .iter()
        .find(|p| !p.ends_with("2026-01-01.md"))
        .unwrap();
    assert!(
        other
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("2026-01-01-")
    );
}

#[test]
fn an_output_path_that_escapes_the_folder_is_a_template_error() {
    let f = Folder::new("escape");
    let claude_dir = f.dir.join("claude");
    let bin = FakeClaude::new().prints("x").install(&claude_dir);
    write(
        &f.notes(),
        "jobs/x.md",
        &format!("---\ntags: [job]\n{JOB}output_path: \"../../etc/{{{{date}}}}\"\n---\nhi"),
    );
    let run = |now: &str| {
        f.runner("once")
            .env("PARACHUTE_RUNNER_NOW", now)
            .env("PARACHUTE_RUNNER_CLAUDE_BIN", &bin)
            .run()
    };
    run("2026-01-01T00:00:30Z").success();
    run("2026-01-01T00:01:30Z").status(1);
    assert!(fake_claude::invocations(&claude_dir).is_empty());
    let files = walk(&f.notes().join("jobs/runs/x"));
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.contains("template error: output_path renders to \\\"../../etc/2026-01-01\\\"")
            || text.contains("template error: output_path renders to"),
        "{text}"
    );
    assert!(!f.dir.join("etc").exists());
}

#[test]
fn the_bundled_example_runs_end_to_end_with_the_stand_in_agent() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = TempDir::new("example");
    let vault = dir.join("vault");
    copy_dir(&root.join("examples/vault"), &vault);
    let _ = std::fs::remove_dir_all(vault.join("jobs/runs"));
    let _ = std::fs::remove_dir_all(vault.join("briefs"));
    let standin = root.join("examples/claude-standin");
    let runner = || {
        Runner::new()
            .env("PARACHUTE_HOME", dir.join("home"))
            .env("PARACHUTE_RUNNER_CLAUDE_BIN", &standin)
            .args(["once".as_ref(), "--vault-dir".as_ref(), vault.as_os_str()])
    };
    // The manual job, on demand.
    let ran = runner()
        .args(["--only", "jobs/weekly-review"])
        .run()
        .success();
    let written = walk(&vault.join("jobs/runs/weekly-review"));
    assert_eq!(written.len(), 1);
    assert_eq!(
        ran.stdout(),
        format!(
            "ok: jobs/weekly-review -> {} (manual, {})\ndone: total=1 ok=1 failed=0 skipped=0\n",
            written[0].display(),
            ran.stdout()
                .split(", ")
                .nth(1)
                .unwrap()
                .split(')')
                .next()
                .unwrap()
        )
    );
    let text = std::fs::read_to_string(&written[0]).unwrap();
    assert!(text.contains("# Stand-in answer"));
    assert!(text.contains("- model: `claude-opus-4-1`"));
    assert!(text.contains("- allowed tools: `Read,Grep,Glob`"));
    assert!(text.contains("> Write my weekly review ("));
    assert!(text.contains("- review\n"));
    // The daily job, by its schedule (Mon 2026-11-23, 07:30 in Paris).
    runner()
        .env("PARACHUTE_RUNNER_NOW", "2026-11-23T06:00:00Z")
        .run()
        .success();
    let ran = runner()
        .env("PARACHUTE_RUNNER_NOW", "2026-11-23T06:30:20Z")
        .run()
        .success();
    let brief = vault.join("briefs/2026-11-23.md");
    assert!(
        ran.stdout()
            .contains(&format!("ok: jobs/morning-brief -> {}", brief.display())),
        "{}",
        ran.stdout()
    );
    let text = std::fs::read_to_string(&brief).unwrap();
    assert!(
        text.contains("> this morning's brief for 2026-11-23:")
            || text.contains("brief for 2026-11-23"),
        "{text}"
    );
    assert!(
        text.contains("run_scheduled_for: 2026-11-23T06:30:00Z"),
        "{text}"
    );
}
