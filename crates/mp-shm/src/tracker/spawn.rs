//! Starting the tracker: `posix_spawn` of `/proc/self/exe` with its socket at
//! [`FD`], stdin on `/dev/null`, in a session of its own, and the terminal's signals
//! blocked from its first instruction (the spawn attributes set the mask before exec).
use super::serve::{ENTRY, FD, MARKER};
use mp_core::PrivateFd;
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

/// The signals the tracker never reacts to: it ends only at end of file (or SIGKILL).
pub(super) const BLOCKED: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in an env var"))
}

/// Spawns the tracker with `sock` as its fd [`FD`]; returns its pid.
pub(super) fn spawn(sock: &PrivateFd) -> io::Result<rustix::process::Pid> {
    if std::env::var_os(MARKER).is_some() {
        // We were started as a tracker and yet run the program: the entry hook was not
        // linked in. Never start helpers from here (that would repeat for ever).
        return Err(io::Error::other(
            "this process was started as a shared-memory tracker but runs the program",
        ));
    }
    // The hook that makes the new process a tracker lives in this binary: keep it linked.
    std::hint::black_box(ENTRY);
    // dup2 onto the same number would not clear close-on-exec: keep the source elsewhere.
    let moved;
    let src = if sock.as_raw_fd() == FD {
        moved = PrivateFd::new(rustix::io::fcntl_dupfd_cloexec(sock, FD + 1)?)?;
        moved.as_raw_fd()
    } else {
        sock.as_raw_fd()
    };
    let path = cstring(b"/proc/self/exe")?;
    let argv_c = [cstring(b"multiproc-shm-tracker")?];
    let mut env_c = Vec::new();
    // The environment travels (the loader may need it); the marker says "be a tracker".
    for (k, v) in std::env::vars_os() {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_c.push(cstring(&kv)?);
    }
    env_c.push(cstring(format!("{MARKER}={FD}").as_bytes())?);
    let argv: Vec<*mut libc::c_char> = argv_c
        .iter()
        .map(|c| c.as_ptr().cast_mut())
        .chain([std::ptr::null_mut()])
        .collect();
    let envp: Vec<*mut libc::c_char> = env_c
        .iter()
        .map(|c| c.as_ptr().cast_mut())
        .chain([std::ptr::null_mut()])
        .collect();
    let devnull = cstring(b"/dev/null")?;

    // SAFETY: every pointer handed to libc points into a live local (the CStrings and the
    // NULL-terminated pointer arrays outlive the call); the file actions and attributes
    // are initialized before use and destroyed exactly once. posix_spawn runs nothing of
    // this process's in the child (no fork of a possibly multi-threaded process).
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
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        for s in BLOCKED {
            libc::sigaddset(&mut mask, s);
        }
        let mut pid: libc::pid_t = 0;
        rc = libc::posix_spawn_file_actions_adddup2(&mut fa, src, FD);
        if rc == 0 {
            rc = libc::posix_spawn_file_actions_addopen(
                &mut fa,
                0,
                devnull.as_ptr(),
                libc::O_RDONLY,
                0,
            );
        }
        if rc == 0 {
            rc = libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETSIGMASK as libc::c_short) | libc::POSIX_SPAWN_SETSID,
            );
        }
        if rc == 0 {
            rc = libc::posix_spawnattr_setsigmask(&mut attr, &mask);
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
        rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| io::Error::other("posix_spawn returned pid 0"))
    }
}
