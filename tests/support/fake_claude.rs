//! A fake `claude`: a real executable (a POSIX shell script) written per
//! test. Each invocation records its argv, environment, stdin, working
//! directory and MCP config under `<record dir>/<pid>/`, then behaves as
//! the test asked: print, write stderr, sleep, ignore SIGTERM, leave a
//! grandchild running, flood stdout, exit with a code — or replay what the
//! real `claude -p` printed in a recorded case of `fixtures/claude-cli/`
//! ([`FakeClaude::replays`], [`FakeClaude::replays_in_turn`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Default)]
pub struct FakeClaude {
    stdout: Option<Vec<u8>>,
    stderr: Option<Vec<u8>>,
    exit: i32,
    sleep_secs: Option<f64>,
    wait_for: Option<PathBuf>,
    ignore_term: bool,
    grandchild: bool,
    flood_bytes: Option<u64>,
    write_before_read: Option<u64>,
    echo_stdin: bool,
    fill: Option<PathBuf>,
    leak_stdin: bool,
    script: Option<String>,
    /// Recorded cases, the Nth invocation replaying the Nth (the last one
    /// for any later invocation).
    in_turn: Vec<Fixture>,
}

/// What one invocation recorded.
#[derive(Debug)]
pub struct Invocation {
    pub dir: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    pub cwd: String,
    pub mcp_config: Option<String>,
    pub mcp_mode: Option<String>,
}

impl Invocation {
    /// The agent's pid: its record directory is named after it.
    pub fn pid(&self) -> i32 {
        self.dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", self.dir.display()))
    }

    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value after `flag` in argv.
    pub fn arg_after(&self, flag: &str) -> Option<&str> {
        let i = self.argv.iter().position(|a| a == flag)?;
        self.argv.get(i + 1).map(String::as_str)
    }
}

impl FakeClaude {
    pub fn new() -> FakeClaude {
        FakeClaude::default()
    }

    /// Prints this on stdout (after reading stdin).
    pub fn prints(mut self, text: impl Into<Vec<u8>>) -> FakeClaude {
        self.stdout = Some(text.into());
        self
    }

    pub fn stderr(mut self, text: impl Into<Vec<u8>>) -> FakeClaude {
        self.stderr = Some(text.into());
        self
    }

    pub fn exits(mut self, code: i32) -> FakeClaude {
        self.exit = code;
        self
    }

    /// Waits (after reading stdin) until `file` exists: the test decides
    /// when the run ends.
    pub fn waits_for(mut self, file: &Path) -> FakeClaude {
        self.wait_for = Some(file.to_path_buf());
        self
    }

    pub fn sleeps(mut self, secs: f64) -> FakeClaude {
        self.sleep_secs = Some(secs);
        self
    }

    pub fn ignores_sigterm(mut self) -> FakeClaude {
        self.ignore_term = true;
        self
    }

    /// Leaves a grandchild (ignoring SIGTERM too) that sleeps 300 s; its
    /// pid is recorded in `grandchild.pid`.
    pub fn leaves_grandchild(mut self) -> FakeClaude {
        self.grandchild = true;
        self
    }

    /// Writes `bytes` bytes of `y\n` lines to stdout.
    pub fn floods(mut self, bytes: u64) -> FakeClaude {
        self.flood_bytes = Some(bytes);
        self
    }

    /// Writes `bytes` bytes to stdout before reading stdin at all.
    pub fn writes_before_reading(mut self, bytes: u64) -> FakeClaude {
        self.write_before_read = Some(bytes);
        self
    }

    /// Prints the prompt it read back on stdout.
    pub fn echoes_stdin(mut self) -> FakeClaude {
        self.echo_stdin = true;
        self
    }

    /// After reading stdin, writes zeros to `file` until its filesystem
    /// is full (the disk fills while the run goes on), then goes on.
    pub fn fills_disk(mut self, file: &Path) -> FakeClaude {
        self.fill = Some(file.to_path_buf());
        self
    }

    /// Never reads stdin: starts a child in a session of its own
    /// (`setsid`) that holds stdin open without reading it (its pid in
    /// `setsid.pid`, stdout and stderr on /dev/null), then goes on without
    /// reading stdin.
    pub fn leaks_stdin(mut self) -> FakeClaude {
        self.leak_stdin = true;
        self
    }

    /// Runs this shell snippet after reading stdin (and after leaving the
    /// grandchild, if asked), before printing: `$d` is the invocation's
    /// record directory, `$@` the argv.
    pub fn runs(mut self, snippet: &str) -> FakeClaude {
        self.script = Some(snippet.to_string());
        self
    }

    /// Replays the recorded case `fixture` (e.g. `"api-529"`) of
    /// [`fixtures_dir`]: after reading stdin, prints the case's stdout file
    /// byte for byte (and its recorded stderr on stderr) and exits with its
    /// recorded `exit_code`.
    pub fn replays(fixture: &str) -> FakeClaude {
        let case = Fixture::load(fixture);
        let mut fake = FakeClaude::new().prints(case.stdout.clone());
        if !case.stderr().is_empty() {
            fake = fake.stderr(case.stderr());
        }
        fake.exits(case.exit_code())
    }

    /// Replays `fixtures[0]` at the first invocation, `fixtures[1]` at the
    /// second, …, and the last one at every later invocation (a run retried
    /// after a transient failure). Invocations are counted by their record
    /// directories, so they must not overlap.
    pub fn replays_in_turn(fixtures: &[&str]) -> FakeClaude {
        assert!(!fixtures.is_empty(), "replays_in_turn needs a fixture");
        FakeClaude {
            in_turn: fixtures.iter().map(|f| Fixture::load(f)).collect(),
            ..FakeClaude::default()
        }
    }

    /// Writes the executable as `<dir>/claude` (and its data files beside
    /// it) and records invocations under `<dir>/calls/`.
    pub fn install(self, dir: &Path) -> PathBuf {
        fs::create_dir_all(dir.join("calls")).unwrap();
        let bin = dir.join("claude");
        let calls = dir.join("calls");
        let mut s = String::from("#!/bin/sh\n");
        s.push_str(&format!("d={}/$$\nmkdir -p \"$d\"\n", quote(&calls)));
        if self.ignore_term {
            s.push_str("trap '' TERM\n");
        }
        s.push_str(
            ": > \"$d/argv\"\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> \"$d/argv\"; done\n",
        );
        s.push_str("env > \"$d/env\"\npwd > \"$d/cwd\"\n");
        s.push_str("prev=\nfor a in \"$@\"; do\n  if [ \"$prev\" = --mcp-config ]; then cp \"$a\" \"$d/mcp.json\"; stat -c %a \"$a\" > \"$d/mcp.mode\"; fi\n  prev=$a\ndone\n");
        if let Some(n) = self.write_before_read {
            s.push_str(&format!("yes | head -c {n}\n"));
        }
        if self.leak_stdin {
            s.push_str(
                "setsid sh -c 'echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; exec sleep 300' sh \"$d/setsid.pid\" 0<&0 > /dev/null 2>&1 &\n",
            );
            s.push_str("while [ ! -e \"$d/setsid.pid\" ]; do sleep 0.05; done\n");
        } else {
            s.push_str("cat > \"$d/stdin\"\n");
        }
        if let Some(file) = &self.fill {
            s.push_str(&format!("cat /dev/zero > {} 2> /dev/null\n", quote(file)));
        }
        if self.grandchild {
            // The pid file appears complete or not at all: an agent killed
            // mid-write must not leave an empty one.
            s.push_str("(trap '' TERM; exec sleep 300) > /dev/null 2>&1 &\necho $! > \"$d/grandchild.pid.tmp\"\nmv \"$d/grandchild.pid.tmp\" \"$d/grandchild.pid\"\n");
        }
        if let Some(snippet) = &self.script {
            s.push_str(snippet);
            s.push('\n');
        }
        if let Some(err) = &self.stderr {
            fs::write(dir.join("stderr.txt"), err).unwrap();
            s.push_str(&format!("cat {} >&2\n", quote(&dir.join("stderr.txt"))));
        }
        if let Some(out) = &self.stdout {
            fs::write(dir.join("stdout.txt"), out).unwrap();
            s.push_str(&format!("cat {}\n", quote(&dir.join("stdout.txt"))));
        }
        if self.echo_stdin {
            s.push_str("cat \"$d/stdin\"\n");
        }
        let mut exit = self.exit.to_string();
        if !self.in_turn.is_empty() {
            for (i, case) in self.in_turn.iter().enumerate() {
                fs::write(dir.join(format!("turn-{i}.stdout")), &case.stdout).unwrap();
                fs::write(dir.join(format!("turn-{i}.stderr")), case.stderr()).unwrap();
                fs::write(
                    dir.join(format!("turn-{i}.code")),
                    case.exit_code().to_string(),
                )
                .unwrap();
            }
            // This invocation's number: the record directories so far, ours
            // included.
            s.push_str(&format!(
                "n=0\nfor e in {}/*; do n=$((n + 1)); done\ni=$((n - 1))\nif [ \"$i\" -ge {len} ]; then i={last}; fi\n",
                quote(&calls),
                len = self.in_turn.len(),
                last = self.in_turn.len() - 1
            ));
            let turn = |ext: &str| format!("{}/turn-$i.{ext}", quote(dir));
            s.push_str(&format!(
                "cat {}\ncat {} >&2\ncode=$(cat {})\n",
                turn("stdout"),
                turn("stderr"),
                turn("code")
            ));
            exit = "\"$code\"".to_string();
        }
        if let Some(n) = self.flood_bytes {
            s.push_str(&format!("yes | head -c {n}\n"));
        }
        if let Some(file) = &self.wait_for {
            s.push_str(&format!(
                "while [ ! -e {} ]; do sleep 0.05; done\n",
                quote(file)
            ));
        }
        if let Some(secs) = self.sleep_secs {
            // `sleep` in the background and `wait`, so the shell itself
            // handles (or ignores) SIGTERM while sleeping.
            s.push_str(&format!("sleep {secs} &\nwait $!\nwait $!\n"));
        }
        s.push_str("echo done > \"$d/finished\"\n");
        s.push_str(&format!("exit {exit}\n"));
        fs::write(&bin, s).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }
}

/// The committed copy of the recorded `claude -p` runs.
pub fn committed_fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/claude-cli")
}

/// The shared fixtures of a developer checkout (may be absent).
pub fn shared_fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/claude-cli")
}

/// Where the recorded runs are read from: the shared folder when it
/// exists, else the committed copy (which must then be identical to it).
pub fn fixtures_dir() -> PathBuf {
    let shared = shared_fixtures_dir();
    if shared.is_dir() {
        shared
    } else {
        committed_fixtures_dir()
    }
}

/// The names of every recorded case in `dir` (`<name>.json`, not the
/// `<name>.stdout.json` of a case), sorted.
pub fn fixture_names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.contains(".stdout."))
        .filter_map(|n| n.strip_suffix(".json").map(String::from))
        .collect();
    names.sort();
    names
}

/// One recorded run of the real CLI: `<name>.json` and its stdout.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: String,
    /// `<name>.json`: `exit_code`, `output_format`, `argv`, `stderr`, …
    pub case: Value,
    /// The stdout file, as recorded.
    pub stdout: Vec<u8>,
}

impl Fixture {
    /// Reads `<name>.json` and its `stdout_file` from [`fixtures_dir`].
    pub fn load(name: &str) -> Fixture {
        let dir = fixtures_dir();
        let path = dir.join(format!("{name}.json"));
        let text = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let case: Value =
            serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = case["stdout_file"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no stdout_file", path.display()));
        let stdout = fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        Fixture {
            name: name.to_string(),
            case,
            stdout,
        }
    }

    pub fn exit_code(&self) -> i32 {
        let code = self.case["exit_code"].as_i64();
        let code = code.unwrap_or_else(|| panic!("{}: no integer exit_code", self.name));
        i32::try_from(code).unwrap()
    }

    /// What the CLI printed on stderr.
    pub fn stderr(&self) -> &str {
        self.case["stderr"].as_str().unwrap_or("")
    }

    /// The stdout lines that are JSON objects (none for a text case).
    pub fn lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// The first `result` line.
    pub fn result(&self) -> Option<Value> {
        self.lines().into_iter().find(|l| l["type"] == "result")
    }

    /// The `system`/`init` line.
    pub fn init(&self) -> Option<Value> {
        self.lines()
            .into_iter()
            .find(|l| l["type"] == "system" && l["subtype"] == "init")
    }

    /// The text blocks, joined by `\n`, of the last assistant line with
    /// text that is not blank.
    pub fn last_assistant_text(&self) -> Option<String> {
        self.lines()
            .iter()
            .rev()
            .filter(|l| l["type"] == "assistant")
            .find_map(|l| {
                let blocks = l.pointer("/message/content")?.as_array()?;
                let text: Vec<&str> = blocks
                    .iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str())
                    .collect();
                let text = text.join("\n");
                (!text.trim().is_empty()).then_some(text)
            })
    }
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Every invocation recorded under `<dir>/calls/`, in no particular order.
pub fn invocations(dir: &Path) -> Vec<Invocation> {
    let Ok(entries) = fs::read_dir(dir.join("calls")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let d = e.path();
        let read = |name: &str| fs::read_to_string(d.join(name)).ok();
        out.push(Invocation {
            argv: read("argv")
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect(),
            env: read("env")
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
            stdin: fs::read(d.join("stdin")).unwrap_or_default(),
            cwd: read("cwd").unwrap_or_default().trim_end().to_string(),
            mcp_config: read("mcp.json"),
            mcp_mode: read("mcp.mode").map(|m| m.trim().to_string()),
            dir: d,
        });
    }
    out
}

/// The single invocation; panics if there is not exactly one.
pub fn only_invocation(dir: &Path) -> Invocation {
    let mut all = invocations(dir);
    assert_eq!(
        all.len(),
        1,
        "expected one claude invocation, got {}",
        all.len()
    );
    all.remove(0)
}

/// Whether a process with this pid is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    // The state letter follows the `(comm)` field.
    u32::try_from(pid)
        .ok()
        .and_then(super::stat_fields)
        .is_some_and(|f| !matches!(f.first().map(String::as_str), Some("Z") | Some("X") | None))
}
