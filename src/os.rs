//! The one small OS module, and the only `unsafe` in the crate: starting
//! a child (as posix_spawn does, joining a cgroup on the way), signals
//! to process groups, ignored stop signals given back their default,
//! waiting for a child's exit without reaping it, the effective uid, the
//! open-file limit and glibc's malloc arenas; and the
//! `/proc` readers (a process's group and start time, the boot id, every
//! process, processes by argv) that the stopping of agents relies on.
//!
//! Waiting without reaping matters: while the exited leader is a zombie its
//! pid cannot be reused, so signalling its process group afterwards can
//! only reach the run's own leftover processes.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, c_char, c_int, c_void};
use std::fs::File;
use std::io::{self, PipeReader, PipeWriter};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

pub use libc::{SIGINT, SIGKILL, SIGTERM};

/// Sends `signal` to every process in group `pgid`. `Ok(false)` when the
/// group has no process left.
pub fn kill_group(pgid: u32, signal: i32) -> io::Result<bool> {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // Never signal group 0 or 1 (our own group; init): that is not a run.
    if pgid <= 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours;
    // a negative pid addresses the process group.
    let rc = unsafe { libc::kill(-pgid, signal) };
    kill_result(rc)
}

/// kill(2)'s answer: `Ok(false)` when no process was there (ESRCH).
fn kill_result(rc: i32) -> io::Result<bool> {
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Sends `signal` to process `pid`. `Ok(false)` when it is gone.
pub fn kill_pid(pid: u32, signal: i32) -> io::Result<bool> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // Never pid 0 (our group), 1 (init) or ourselves.
    if pid <= 1 || pid as u32 == std::process::id() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    kill_result(rc)
}

/// Makes this process the "child subreaper" of its descendants: a process
/// whose parent dies is re-parented to us instead of init, so what an
/// agent left behind can still be found (and must be reaped by us).
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes plain integers and
    // touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reaps the zombie `pid` if it is one of our children and has exited;
/// `true` when it was reaped. Only for re-parented orphans, never an
/// agent (its own `wait_reap` would fail).
pub fn reap(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 1 {
        return false;
    }
    let mut status = 0;
    // SAFETY: `status` is a live local the call writes one int to;
    // WNOHANG makes it return at once.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    rc == pid
}

/// Sets `fd` non-blocking (the agent's stdin pipe, so its writer can give
/// up when the run ends whoever holds the other end).
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl with F_GETFL/F_SETFL takes and returns plain integers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits up to `limit` for `fd` to be writable. `Ok(true)`: writable (or
/// the other end is closed, which the next write reports).
pub fn wait_writable(fd: &impl AsRawFd, limit: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one live pollfd on our stack; poll reads and writes
    // exactly that one entry.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

/// Blocks until child `pid` has exited, leaving it unreaped (a zombie) so
/// its pid and process group stay reserved until `wait_reap` reaps it.
pub fn wait_exit_keep_zombie(pid: u32) -> io::Result<()> {
    let pid: libc::id_t = pid;
    loop {
        // SAFETY: `info` is a zeroed siginfo_t owned by this frame, valid
        // for writes for the whole call; waitid does not keep the pointer.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Raises the soft open-file limit to the hard one: each claimed run holds
/// a lock file open, and a pass may claim hundreds.
pub fn raise_fd_limit() {
    // SAFETY: `lim` is a plain struct owned by this frame; getrlimit and
    // setrlimit read or write exactly one rlimit through the pointer.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A process's group id and start time (clock ticks after boot), from
/// /proc; `None` if it is gone or a zombie.
pub fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let p = process(pid)?;
    (!p.zombie).then_some((p.pgid, p.start))
}

/// What /proc says of one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    /// Start time, clock ticks after boot: with the pid, it names one
    /// process (a pid can be reused, the pair cannot within a boot).
    pub start: u64,
    /// Exited, not reaped yet.
    pub zombie: bool,
}

/// `/proc/<pid>/stat`, or `None` if the process is gone.
pub fn process(pid: u32) -> Option<Process> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold ") ".
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let state = *rest.first()?;
    Some(Process {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        pgid: rest.get(2)?.parse().ok()?,
        sid: rest.get(3)?.parse().ok()?,
        start: rest.get(19)?.parse().ok()?,
        zombie: matches!(state, "Z" | "X"),
    })
}

/// Every process /proc shows now.
pub fn processes() -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(process)
        .collect()
}

/// This boot's id: pids and start times are only comparable within one.
pub fn boot_id() -> Option<String> {
    static BOOT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
    })
    .clone()
}

/// This process's start time (clock ticks after boot).
pub fn self_start() -> Option<u64> {
    static START: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *START.get_or_init(|| process(std::process::id()).map(|p| p.start))
}

/// Gives SIGINT and SIGQUIT back their default action if this process was
/// started with them ignored (a job started with `&` by a non-interactive
/// shell is). An ignored signal stays ignored across exec, so every agent
/// would ignore the SIGINT that starts the stop sequence, and a shell
/// agent could not even trap it.
pub fn unignore_stop_signals() {
    for signal in [libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: `old` is a zeroed sigaction owned by this frame; with a
        // null new action, sigaction only writes the current one into it.
        // signal(2) then sets the default action, which runs no code of
        // ours.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
            {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
    }
}

/// Caps glibc's malloc arenas at two. By default every new thread may get
/// an arena of its own (up to 8 per core), and `serve` starts a thread per
/// request: memory then creeps up with every new thread until the cap is
/// reached. Two arenas keep it flat at no measurable cost for this load.
/// glibc only: other C libraries (musl) have no arenas to cap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; it is called once
    // at start, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Not glibc: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_malloc_arenas() {}

/// What [`spawn`] starts.
pub struct SpawnRequest<'a> {
    /// The program's file, already found (no `PATH` search here).
    pub program: &'a Path,
    /// The whole argv, argv[0] included.
    pub argv: &'a [&'a OsStr],
    /// The whole environment.
    pub env: &'a [(String, String)],
    pub cwd: Option<&'a Path>,
    /// An open `cgroup.procs` the child writes itself into before exec,
    /// so that it and all it starts are born in that cgroup. If it cannot
    /// (the cgroup was removed meanwhile, or the write is refused), it
    /// does not exec: [`is_join_error`] tells that error.
    pub cgroup_procs: Option<&'a File>,
}

/// A child [`spawn`] started, with the other ends of its stdio pipes.
pub struct Spawned {
    pub pid: u32,
    pub stdin: PipeWriter,
    pub stdout: PipeReader,
    pub stderr: PipeReader,
}

/// The child's stack: it runs only the few calls of `child_main`.
const CHILD_STACK: usize = 64 << 10;
/// Signals 1..NSIG (64 on Linux; sigaction refuses the rest).
const NSIG: c_int = 65;

/// What the parent hands the child across `clone`. The child shares our
/// memory until it execs, may not allocate, and answers through `stage`
/// and `errno`.
#[repr(C)]
struct ChildArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    /// Null: stay in our directory.
    cwd: *const c_char,
    /// The child's ends of its stdin, stdout, stderr; each fd ≥ 3.
    stdio: [c_int; 3],
    /// -1: no cgroup.
    cgroup: c_int,
    /// 0: exec'd; else the step that failed (a `STAGE_*`) and its errno.
    stage: AtomicI32,
    errno: AtomicI32,
}

/// Where a child gave up before running its program.
const STAGE_GROUP: i32 = 1;
const STAGE_STDIO: i32 = 2;
const STAGE_CWD: i32 = 3;
const STAGE_EXEC: i32 = 4;
const STAGE_JOIN: i32 = 5;

/// The error of a child that could not join its cgroup (and so did not
/// run its program).
#[derive(Debug)]
struct JoinError(io::Error);

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot join its cgroup: {}", self.0)
    }
}

impl std::error::Error for JoinError {}

/// Whether `err`, from [`spawn`], says the child could not join its
/// cgroup.
pub fn is_join_error(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<JoinError>())
}

/// Starts a child as `posix_spawn` does (a `clone` that shares our memory
/// and suspends this thread until the child execs, so no page of ours is
/// copied), with what `std::process::Command` gives a child: pipes for its
/// stdio, its own process group, signal dispositions and mask back to
/// their defaults; and one thing it cannot give: joining a cgroup between
/// the clone and the exec. (`Command::pre_exec` could do that, but forces
/// a full fork of the runner, which cost more than the rest of a quick
/// run.)
pub fn spawn(req: &SpawnRequest<'_>) -> io::Result<Spawned> {
    let c_string = |bytes: Vec<u8>| {
        CString::new(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in the agent's command line or environment",
            )
        })
    };
    let path = c_string(req.program.as_os_str().as_bytes().to_vec())?;
    let argv_owned = req
        .argv
        .iter()
        .map(|a| c_string(a.as_bytes().to_vec()))
        .collect::<io::Result<Vec<_>>>()?;
    let envp_owned = req
        .env
        .iter()
        .map(|(k, v)| c_string([k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<io::Result<Vec<_>>>()?;
    let cwd = req
        .cwd
        .map(|d| c_string(d.as_os_str().as_bytes().to_vec()))
        .transpose()?;
    let pointers = |owned: &[CString]| -> Vec<*const c_char> {
        owned
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv, envp) = (pointers(&argv_owned), pointers(&envp_owned));

    let (stdin_child, stdin) = io::pipe()?;
    let (stdout, stdout_child) = io::pipe()?;
    let (stderr, stderr_child) = io::pipe()?;
    // Above 0..2, so that no dup2 onto 0..2 can overwrite another end.
    let stdin_child = above_stdio(stdin_child.into())?;
    let stdout_child = above_stdio(stdout_child.into())?;
    let stderr_child = above_stdio(stderr_child.into())?;

    let args = ChildArgs {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        stdio: [
            stdin_child.as_raw_fd(),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        cgroup: req.cgroup_procs.map_or(-1, |f| f.as_raw_fd()),
        stage: AtomicI32::new(0),
        errno: AtomicI32::new(0),
    };
    let stack = Stack::new()?;
    let pid = {
        // SAFETY: `all` and `old` are sigsets owned by this frame;
        // pthread_sigmask reads and writes only them. Every signal stays
        // blocked in this thread, and so in the child, until the child
        // has given its handlers back their defaults: no handler of ours
        // may run in a child that shares our memory.
        let old = unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            old
        };
        // SAFETY: CLONE_VM | CLONE_VFORK is posix_spawn's clone: the child
        // runs `child_main` on `stack` (its own, mapped above, 16-byte
        // aligned top) in our memory while this thread is suspended until
        // it execs or exits, so `args`, the C strings and the fds it
        // points to outlive its every use of them. `child_main` only
        // makes async-signal-safe calls and never unwinds.
        let pid = unsafe {
            libc::clone(
                child_main,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(&args).cast_mut().cast(),
            )
        };
        let err = io::Error::last_os_error();
        // SAFETY: as above; `old` is the mask this thread had.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        if pid < 0 {
            return Err(err);
        }
        pid
    };
    drop(stack);
    let stage = args.stage.load(Ordering::Acquire);
    if stage != 0 {
        let err = io::Error::from_raw_os_error(args.errno.load(Ordering::Acquire));
        let _ = wait_reap(pid as u32);
        return Err(match stage {
            STAGE_CWD => io::Error::new(
                err.kind(),
                format!(
                    "cannot enter {}: {err}",
                    req.cwd.unwrap_or(Path::new("")).display()
                ),
            ),
            STAGE_EXEC => err,
            STAGE_JOIN => io::Error::other(JoinError(err)),
            _ => io::Error::new(err.kind(), format!("cannot set up the child: {err}")),
        });
    }
    Ok(Spawned {
        pid: pid as u32,
        stdin,
        stdout,
        stderr,
    })
}

/// `fd`, or a copy of it at 3 or above if it is one of 0..2 (close-on-exec
/// either way). Only a guard: Rust's runtime opens /dev/null on a closed
/// 0..2 before `main`, so a pipe cannot get there.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC makes a new fd, which we then own alone.
    unsafe {
        let copy = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3);
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(copy))
    }
}

/// The child's own stack, with a guard page below it.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        let len = CHILD_STACK + GUARD;
        // SAFETY: a fresh private anonymous mapping: no memory of ours is
        // touched; the lowest page is made inaccessible, so an overflow
        // faults instead of writing into a neighbour.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = Stack { base, len };
            if libc::mprotect(base, GUARD, libc::PROT_NONE) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    /// Its top (stacks grow down): page-aligned.
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of our own mapping.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

/// The guard page (4 KiB pages on every Linux we build for; a larger page
/// only makes the guard partial).
const GUARD: usize = 4096;

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by no one any more (the
        // child has exec'd or exited before `clone` returned).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// The child, between `clone` and exec. Every call is async-signal-safe;
/// nothing allocates, locks or unwinds. It gives up with exit code 127
/// after noting the failed step and its errno in `ChildArgs`.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive (the parent is
    // suspended until we exec or exit) and only read here, its atomics
    // aside. The pointers in it are C strings and null-terminated arrays
    // of them that live as long; the fds are open.
    unsafe {
        let a = &*arg.cast::<ChildArgs>();
        let fail = |stage: i32| -> ! {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            a.errno.store(errno, Ordering::Release);
            a.stage.store(stage, Ordering::Release);
            libc::_exit(127)
        };
        // Handlers back to the default (exec would, but a signal before
        // it must not run our code here); SIGPIPE too, which the Rust
        // runtime ignores. Other ignored signals stay ignored, as exec
        // keeps them.
        for signal in 1..NSIG {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &dfl, std::ptr::null_mut());
            }
        }
        // Not in its cgroup, it must not run: a cgroup removed under it
        // means its run is over (a dead runner's, cleaned up).
        if a.cgroup >= 0 && libc::write(a.cgroup, b"0".as_ptr().cast(), 1) != 1 {
            fail(STAGE_JOIN);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(STAGE_GROUP);
        }
        for (target, fd) in (0..).zip(a.stdio) {
            if libc::dup2(fd, target) < 0 {
                fail(STAGE_STDIO);
            }
        }
        if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
            fail(STAGE_CWD);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(a.path, a.argv, a.envp);
        fail(STAGE_EXEC)
    }
}

/// Reaps child `pid` (blocking) and returns how it ended.
pub fn wait_reap(pid: u32) -> io::Result<ExitStatus> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live local the call writes one int to.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sh(script: &str, env: &[(String, String)], cwd: Option<&Path>) -> io::Result<String> {
        let argv = [OsStr::new("sh"), OsStr::new("-c"), OsStr::new(script)];
        let child = spawn(&SpawnRequest {
            program: Path::new("/bin/sh"),
            argv: &argv,
            env,
            cwd,
            cgroup_procs: None,
        })?;
        drop(child.stdin);
        let mut out = String::new();
        let mut stdout = child.stdout;
        stdout.read_to_string(&mut out)?;
        let status = wait_reap(child.pid)?;
        assert!(status.success(), "{status:?}: {out}");
        Ok(out)
    }

    #[test]
    fn the_child_gets_its_argv_env_directory_and_group() {
        let env = [("ONLY".to_string(), "this".to_string())];
        let out = sh(
            "echo \"$0|$ONLY|$(env | wc -l)|$(pwd)\"; cut -d' ' -f5 /proc/$$/stat; echo $$",
            &env,
            Some(Path::new("/tmp")),
        )
        .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        // env(1) shows ONLY, and the PWD the shell sets itself.
        assert!(lines[0].starts_with("sh|this|"), "{out}");
        assert!(lines[0].ends_with("|/tmp"), "{out}");
        assert_eq!(lines[1].trim(), lines[2].trim(), "not its own group: {out}");
    }

    #[test]
    fn the_child_starts_with_no_signal_blocked_and_sigpipe_default() {
        // exec: grep's own status is the shell's as it was given (a shell
        // blocks signals itself around a fork).
        let out = sh("exec grep -E '^Sig(Blk|Ign)' /proc/self/status", &[], None).unwrap();
        let mask = |name: &str| -> u64 {
            let line = out.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(mask("SigBlk:"), 0, "{out}");
        assert_eq!(mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }

    #[test]
    fn a_child_that_cannot_join_its_cgroup_does_not_run() {
        let marker = std::env::temp_dir().join(format!("os-join-{}", std::process::id()));
        // A file the write of the join fails on (opened read-only), as it
        // fails on the `cgroup.procs` of a removed cgroup.
        let procs = File::open("/dev/null").unwrap();
        let script = format!("touch {}", marker.display());
        let argv = [OsStr::new("sh"), OsStr::new("-c"), OsStr::new(&script)];
        let err = spawn(&SpawnRequest {
            program: Path::new("/bin/sh"),
            argv: &argv,
            env: &[],
            cwd: None,
            cgroup_procs: Some(&procs),
        })
        .err()
        .unwrap();
        assert!(is_join_error(&err), "{err}");
        assert!(err.to_string().contains("cannot join its cgroup"), "{err}");
        assert!(!marker.exists(), "the program ran");
        assert!(!is_join_error(&io::Error::other("x")));
    }

    #[test]
    fn failures_before_the_program_runs_are_errors() {
        let err = sh("true", &[], Some(Path::new("/nonexistent/dir"))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("cannot enter /nonexistent/dir"),
            "{err}"
        );
        let nul = [("A".to_string(), "x\0y".to_string())];
        let err = sh("true", &nul, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let file = std::env::temp_dir().join(format!("os-spawn-{}", std::process::id()));
        std::fs::write(&file, "not a program\n").unwrap();
        let argv = [OsStr::new("x")];
        let err = spawn(&SpawnRequest {
            program: &file,
            argv: &argv,
            env: &[],
            cwd: None,
            cgroup_procs: None,
        })
        .err()
        .unwrap();
        let _ = std::fs::remove_file(&file);
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    }
}
