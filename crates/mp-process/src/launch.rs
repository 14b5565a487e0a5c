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
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

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
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                (CHILD_FD + 1) as libc::c_uint,
                libc::c_uint::MAX,
                0 as libc::c_uint,
            )
        };
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

/// The type of glibc's `posix_spawn_file_actions_addclosefrom_np`.
type AddCloseFrom =
    unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, libc::c_int) -> libc::c_int;

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), looked up at run
/// time so that a program built here still runs on an older C library, whose children
/// then close the inherited fds themselves.
fn addclosefrom() -> Option<AddCloseFrom> {
    static ADDR: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let addr = *ADDR.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name; it only looks the symbol up.
        unsafe {
            libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addclosefrom_np".as_ptr(),
            ) as usize
        }
    });
    // SAFETY: a non-null address of this symbol is glibc's function, whose C prototype is
    // `int (posix_spawn_file_actions_t *, int)`, the type named here.
    (addr != 0).then(|| unsafe { std::mem::transmute::<usize, AddCloseFrom>(addr) })
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL byte in an argument or env var",
        )
    })
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
    // dup2 onto the same number would not clear close-on-exec: keep the source elsewhere.
    let moved;
    let src = if fd.as_raw_fd() == CHILD_FD {
        moved = PrivateFd::new(rustix::io::fcntl_dupfd_cloexec(fd, CHILD_FD + 1)?)?;
        moved.as_raw_fd()
    } else {
        fd.as_raw_fd()
    };
    let path = cstring(b"/proc/self/exe")?;
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("multiproc-child"));
    let argv_c = [cstring(argv0.as_bytes())?];
    let mut env_c = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k == BOOTSTRAP_ENV || k == FORKSERVER_ENV {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_c.push(cstring(&kv)?);
    }
    let closefrom = addclosefrom();
    let value = marker_value(closefrom.is_some());
    env_c.push(cstring(format!("{marker}={value}").as_bytes())?);
    let argv: Vec<*mut libc::c_char> = argv_c
        .iter()
        .map(|c| c.as_ptr() as *mut libc::c_char)
        .chain([std::ptr::null_mut()])
        .collect();
    let envp: Vec<*mut libc::c_char> = env_c
        .iter()
        .map(|c| c.as_ptr() as *mut libc::c_char)
        .chain([std::ptr::null_mut()])
        .collect();
    let devnull = cstring(b"/dev/null")?;

    // SAFETY: every pointer handed to libc below points into a live local (the CStrings
    // and the NULL-terminated pointer arrays outlive the call); the file actions and
    // attributes are initialized before use and destroyed exactly once; `closefrom` is
    // the C library's own function (see `addclosefrom`).
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let mut rc = libc::posix_spawn_file_actions_init(&mut fa);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        rc = libc::posix_spawnattr_init(&mut attr);
        if rc != 0 {
            libc::posix_spawn_file_actions_destroy(&mut fa);
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut start_mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut start_mask);
        if mask == StartMask::StopSignalsBlocked {
            libc::sigaddset(&mut start_mask, libc::SIGINT);
            libc::sigaddset(&mut start_mask, libc::SIGTERM);
        }
        let mut pid: libc::pid_t = 0;
        rc = libc::posix_spawn_file_actions_adddup2(&mut fa, src, CHILD_FD);
        if rc == 0 {
            rc = libc::posix_spawn_file_actions_addopen(
                &mut fa,
                0,
                devnull.as_ptr(),
                libc::O_RDONLY,
                0,
            );
        }
        if let (0, Some(closefrom)) = (rc, closefrom) {
            rc = closefrom(&mut fa, CHILD_FD + 1);
        }
        if rc == 0 {
            rc = libc::posix_spawnattr_setflags(
                &mut attr,
                libc::POSIX_SPAWN_SETSIGMASK as libc::c_short,
            );
        }
        if rc == 0 {
            rc = libc::posix_spawnattr_setsigmask(&mut attr, &start_mask);
        }
        if rc == 0 {
            rc = libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &fa,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            );
        }
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::posix_spawnattr_destroy(&mut attr);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Pid::from_raw(pid).ok_or_else(|| io::Error::other("posix_spawn returned pid 0"))
    }
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
        assert_eq!(addclosefrom().is_some(), version >= (2, 34), "glibc {v}");
    }

    #[test]
    fn the_marker_says_who_closes() {
        assert_eq!(marker_value(true), "3");
        assert_eq!(marker_value(false), "3,close");
    }
}
