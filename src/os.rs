//! The one small OS module, and the only `unsafe` in the crate: signals
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

use std::io;

use std::os::fd::AsRawFd;
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
/// `true` when it was reaped. Only for processes no `Child` handle owns
/// (re-parented orphans), or that handle's wait would fail.
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
/// its pid and process group stay reserved until `Child::wait` reaps it.
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
