//! Test support: a builder that runs the real binary as a process with a
//! cleared environment and a private home, temp directories, and a fake
//! `claude` executable. The fake vault lives in `fake_vault`.

#![allow(dead_code)]

pub mod fake_anthropic;
pub mod fake_claude;
pub mod fake_endpoint;
pub mod fake_hub;
pub mod fake_vault;
pub mod real_claude;
pub mod world;

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_parachute-runner");

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pr-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `parachute-runner` with only the environment the test gives it
/// (plus a PATH with the system tools).
#[must_use]
pub struct Runner {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl Runner {
    pub fn new() -> Runner {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("RUST_LOG", "info")
            .env("TZ", "UTC");
        Runner { cmd, stdin: None }
    }

    pub fn args<I, S>(mut self, args: I) -> Runner
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Runner {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Runner {
        self.cmd.env_remove(key);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Runner {
        self.cmd.current_dir(dir);
        self
    }

    /// The same command, started by a shell that first ignores SIGINT and
    /// SIGQUIT (as a job started with `&` by a script is): call it last.
    pub fn ignoring_sigint(self) -> Runner {
        self.through_shell("trap '' INT QUIT; exec \"$0\" \"$@\"")
    }

    /// The same command, started with its stdin, stdout and stderr closed
    /// (`<&- >&- 2>&-`): it prints nothing the test can read. Call it last.
    pub fn with_stdio_closed(self) -> Runner {
        self.through_shell("exec \"$0\" \"$@\" <&- >&- 2>&-")
    }

    /// The same command, exec'd by `/bin/sh -c script` (`"$0" "$@"` are
    /// the program and its arguments).
    fn through_shell(self, script: &str) -> Runner {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg(self.cmd.get_program())
            .args(self.cmd.get_args())
            .env_clear();
        for (k, v) in self.cmd.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(dir) = self.cmd.get_current_dir() {
            cmd.current_dir(dir);
        }
        Runner {
            cmd,
            stdin: self.stdin,
        }
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Runner {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn run(mut self) -> Ran {
        self.cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.cmd.spawn().unwrap();
        if let Some(bytes) = self.stdin.take() {
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        Ran(child.wait_with_output().unwrap())
    }

    /// Runs the process with stdout and stderr on one pipe, as `2>&1`
    /// (what cron mails): the `Ran`'s stdout holds both, interleaved as
    /// written, and its stderr is empty.
    pub fn run_merged(mut self) -> Ran {
        let (mut reader, writer) = std::io::pipe().unwrap();
        self.cmd
            .stdin(Stdio::null())
            .stdout(writer.try_clone().unwrap())
            .stderr(writer);
        let mut child = self.cmd.spawn().unwrap();
        // The command holds the write ends: drop them, or the read below
        // never sees the end.
        drop(self.cmd);
        let mut merged = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut merged).unwrap();
        let status = child.wait().unwrap();
        Ran(Output {
            status,
            stdout: merged,
            stderr: Vec::new(),
        })
    }

    /// Starts the process and returns it, for tests that signal it.
    pub fn spawn(mut self) -> Child {
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.cmd.spawn().unwrap()
    }
}

impl Default for Runner {
    fn default() -> Runner {
        Runner::new()
    }
}

/// A finished run, with assertions that print everything on failure.
pub struct Ran(pub Output);

impl Ran {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    pub fn code(&self) -> Option<i32> {
        self.0.status.code()
    }

    #[track_caller]
    pub fn status(self, code: i32) -> Ran {
        assert_eq!(
            self.code(),
            Some(code),
            "exit status\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }

    #[track_caller]
    pub fn success(self) -> Ran {
        self.status(0)
    }

    #[track_caller]
    pub fn stdout_is(self, want: &str) -> Ran {
        assert_eq!(self.stdout(), want, "stdout\n--- stderr\n{}", self.stderr());
        self
    }

    #[track_caller]
    pub fn stdout_has(self, want: &str) -> Ran {
        assert!(
            self.stdout().contains(want),
            "stdout lacks {want:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(self, want: &str) -> Ran {
        assert!(
            self.stderr().contains(want),
            "stderr lacks {want:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }

    #[track_caller]
    pub fn stdout_empty(self) -> Ran {
        assert_eq!(
            self.stdout(),
            "",
            "stdout should be empty\n--- stderr\n{}",
            self.stderr()
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout()))
    }
}

/// An output note file of a folder vault, read back: its frontmatter (read
/// with serde_yaml, not the runner's own reader) and its body.
pub struct NoteFile {
    pub path: PathBuf,
    pub front: serde_json::Map<String, serde_json::Value>,
    pub body: String,
}

impl NoteFile {
    /// Reads `---\n<yaml>\n---\n<body>`; panics on anything else.
    pub fn read(path: &Path) -> NoteFile {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let rest = text
            .strip_prefix("---\n")
            .unwrap_or_else(|| panic!("{}: no frontmatter:\n{text}", path.display()));
        let end = rest
            .find("\n---\n")
            .unwrap_or_else(|| panic!("{}: frontmatter not closed:\n{text}", path.display()));
        let front: serde_json::Value = serde_yaml::from_str(&rest[..end]).unwrap_or_else(|e| {
            panic!("{}: frontmatter is not YAML ({e}):\n{text}", path.display())
        });
        let serde_json::Value::Object(front) = front else {
            panic!("{}: frontmatter is not a mapping:\n{text}", path.display())
        };
        NoteFile {
            path: path.to_path_buf(),
            front,
            body: rest[end + 5..].to_string(),
        }
    }

    /// Every note file under `dir` (recursively), sorted by path.
    pub fn all_in(dir: &Path) -> Vec<NoteFile> {
        let mut files = world::walk(dir);
        files.sort();
        files.iter().map(|f| NoteFile::read(f)).collect()
    }

    /// A metadata value (`Null` when absent).
    pub fn meta(&self, key: &str) -> &serde_json::Value {
        self.front.get(key).unwrap_or(&serde_json::Value::Null)
    }

    /// A `.failed` note (`<run_id>.failed.md`).
    pub fn is_failed(&self) -> bool {
        self.path.to_string_lossy().ends_with(".failed.md")
    }

    /// The whole file, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "--- {}\n{}---\n{}",
            self.path.display(),
            serde_yaml::to_string(&self.front).unwrap_or_default(),
            self.body
        )
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may
/// itself hold `) `): the state is `[0]`, the session `[3]`, utime `[11]`,
/// stime `[12]`. `None` once the process is gone.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// The runner's own peak RSS in KiB, from the debug line it logs at exit
/// (`peak memory: N KiB`, read from /proc/self/status).
pub fn peak_rss_kib(ran: &Ran) -> u64 {
    let err = ran.stderr();
    let line = err
        .lines()
        .find_map(|l| l.split("peak memory: ").nth(1))
        .unwrap_or_else(|| panic!("no peak memory line (RUST_LOG=debug?)\n{err}"));
    line.trim_end_matches(" KiB").trim().parse().unwrap()
}
