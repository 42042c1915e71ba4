//! The one small OS module, and the only `unsafe` in the crate: signals
//! to process groups, waiting for a child's exit without reaping it, the
//! effective uid, the open-file limit and glibc's malloc arenas; and the
//! `/proc` readers (a process's group and start time, the boot id, group
//! members, processes by argv) that the stopping of agents relies on.
//!
//! Waiting without reaping matters: while the exited leader is a zombie its
//! pid cannot be reused, so signalling its process group afterwards can
//! only reach the run's own leftover processes.
#![allow(unsafe_code)]

use std::io;

pub use libc::{SIGKILL, SIGTERM};

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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold ") ".
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if matches!(rest.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    Some((rest.get(2)?.parse().ok()?, rest.get(19)?.parse().ok()?))
}

/// This boot's id: pids and start times are only comparable within one.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Live processes whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(g, _)| g == pgid))
        .collect()
}

/// Live processes with `arg` among their argv, with their process groups.
pub fn processes_with_arg(arg: &str) -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .filter_map(|pid| proc_stat(pid).map(|(pgid, _)| (pid, pgid)))
        .collect()
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
