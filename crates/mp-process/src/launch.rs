//! Creating a spawned child: posix_spawn of `/proc/self/exe` (for a child or the
//! forkserver), and the spawned process's first step.
//!
//! What a child holds of its parent's fds:
//! - spawn (and the forkserver itself): only its bootstrap socket, at [`CHILD_FD`]; every
//!   other fd is closed before the new program starts (a `closefrom` file action of
//!   posix_spawn, or, on a C library without it, by the child at start). The child makes
//!   the socket close-on-exec and private at once.
//! - fork (and a child of the forkserver): see [`crate::fork`].
//!
//! So no program a child execs inherits anything of ours, and everything else a child
//! needs (argument fds included) arrives over its bootstrap socket.
use crate::child;
use mp_core::PrivateFd;
use rustix::process::Pid;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

/// The fd number of the bootstrap socket in a spawned child (and of the control socket
/// in the forkserver).
pub(crate) const CHILD_FD: i32 = 3;
/// Marks a spawned child; the value says where its bootstrap fd is (see [`marker_value`]).
pub(crate) const BOOTSTRAP_ENV: &str = "MULTIPROC_BOOTSTRAP";
/// Marks a spawned forkserver; the value says where its control fd is.
pub(crate) const FORKSERVER_ENV: &str = "MULTIPROC_FORKSERVER";

/// The marker's value: `3` when every fd above it was closed by posix_spawn, `3,close`
/// when the child must close them itself (no `closefrom` file action here).
fn marker_value(closed: bool) -> String {
    if closed {
        format!("{CHILD_FD}")
    } else {
        format!("{CHILD_FD},close")
    }
}

/// In a spawned child or forkserver, first thing: checks the marker, closes the fds the
/// parent could not, and takes the bootstrap socket (close-on-exec, private). Exits with
/// [`child::EXIT_BOOTSTRAP`] if the marker or the fd is not what the parent sends.
pub(crate) fn take_bootstrap_fd(value: &std::ffi::OsStr) -> PrivateFd {
    let close = match value.to_str() {
        Some(v) if v == marker_value(true) => false,
        Some(v) if v == marker_value(false) => true,
        _ => std::process::exit(child::EXIT_BOOTSTRAP),
    };
    if close {
        // SAFETY: this process has just started (init() is the first line of main), so no
        // Rust object owns an fd above the bootstrap socket: all of them are inherited
        // leftovers of the parent's that this C library could not close at spawn.
        unsafe { mp_core::exec::close_inherited_above(CHILD_FD) };
    }
    // SAFETY: only an fstat, before the fd is owned; CHILD_FD is open (checked by fstat).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(CHILD_FD) };
    match rustix::fs::fstat(fd) {
        Ok(st)
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket => {}
        _ => std::process::exit(child::EXIT_BOOTSTRAP),
    }
    // SAFETY: the parent put our socket at CHILD_FD (a socket, checked just above) and
    // nothing else in this fresh process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(CHILD_FD) };
    PrivateFd::new(fd).unwrap_or_else(|_| std::process::exit(child::EXIT_BOOTSTRAP))
}

/// The signal mask a spawned process starts with: empty for a child; SIGINT and SIGTERM
/// for a helper (the forkserver), from its first instruction, so that a Ctrl-C during
/// its start does not stop it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartMask {
    Empty,
    StopSignalsBlocked,
}

/// Re-executes this program with `fd` at [`CHILD_FD`] and no other fd above stderr, stdin
/// on /dev/null, the signal mask `mask`, and `marker` in its environment.
pub(crate) fn spawn_exec(fd: &PrivateFd, marker: &str, mask: StartMask) -> io::Result<Pid> {
    let value = marker_value(mp_core::exec::closes_inherited());
    let blocked: &[libc::c_int] = match mask {
        StartMask::Empty => &[],
        StartMask::StopSignalsBlocked => &[libc::SIGINT, libc::SIGTERM],
    };
    mp_core::exec::SelfExec {
        fd: fd.as_fd(),
        at: CHILD_FD,
        argv0: None,
        marker: (marker, &value),
        strip_env: &[BOOTSTRAP_ENV, FORKSERVER_ENV],
        blocked,
        new_session: false,
    }
    .spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On glibc 2.34 or later, posix_spawn itself closes a spawned child's other fds.
    #[cfg(target_env = "gnu")]
    #[test]
    fn closefrom_is_found_where_the_c_library_has_it() {
        // SAFETY: returns a pointer to a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        let v = v.to_string_lossy();
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        assert_eq!(
            mp_core::exec::closes_inherited(),
            version >= (2, 34),
            "glibc {v}"
        );
    }

    #[test]
    fn the_marker_says_who_closes() {
        assert_eq!(marker_value(true), "3");
        assert_eq!(marker_value(false), "3,close");
    }
}
