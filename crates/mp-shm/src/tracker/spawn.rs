//! Starting the tracker: `posix_spawn` of `/proc/self/exe` with its socket at
//! [`FD`], stdin on `/dev/null`, in a session of its own, and the terminal's signals
//! blocked from its first instruction (the spawn attributes set the mask before exec).
use super::serve::{ENTRY, FD, MARKER};
use mp_core::PrivateFd;
use std::io;
use std::os::fd::AsFd;

/// The signals the tracker never reacts to: it ends only at end of file (or SIGKILL).
pub(super) const BLOCKED: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

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
    let value = FD.to_string();
    mp_core::exec::SelfExec {
        fd: sock.as_fd(),
        at: FD,
        argv0: Some(std::ffi::OsStr::new("multiproc-shm-tracker")),
        marker: (MARKER, &value),
        strip_env: &[],
        blocked: &BLOCKED,
        new_session: true,
    }
    .spawn()
}
