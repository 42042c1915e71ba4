//! A fake `claude`: a real executable (a POSIX shell script) written per
//! test. Each invocation records its argv, environment, stdin, working
//! directory and MCP config under `<record dir>/<pid>/`, then behaves as
//! the test asked: print, write stderr, sleep, ignore SIGTERM, leave a
//! grandchild running, flood stdout, exit with a code.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Default)]
pub struct FakeClaude {
    stdout: Option<Vec<u8>>,
    stderr: Option<Vec<u8>>,
    exit: i32,
    sleep_secs: Option<f64>,
    ignore_term: bool,
    grandchild: bool,
    flood_bytes: Option<u64>,
    write_before_read: Option<u64>,
    echo_stdin: bool,
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
        s.push_str("cat > \"$d/stdin\"\n");
        if self.grandchild {
            s.push_str("(trap '' TERM; exec sleep 300) > /dev/null 2>&1 &\necho $! > \"$d/grandchild.pid\"\n");
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
        if let Some(n) = self.flood_bytes {
            s.push_str(&format!("yes | head -c {n}\n"));
        }
        if let Some(secs) = self.sleep_secs {
            // `sleep` in the background and `wait`, so the shell itself
            // handles (or ignores) SIGTERM while sleeping.
            s.push_str(&format!("sleep {secs} &\nwait $!\nwait $!\n"));
        }
        s.push_str("echo done > \"$d/finished\"\n");
        s.push_str(&format!("exit {}\n", self.exit));
        fs::write(&bin, s).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        bin
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
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state letter follows the `(comm)` field.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}
