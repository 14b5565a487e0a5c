//! Re-executing this program (`/proc/self/exe`) as a child or a helper process, with
//! `posix_spawn`: never a fork of a process that may have threads.
//!
//! The new program gets one socket at a fixed fd number, stdin on `/dev/null`, and
//! nothing else of ours: every other fd above stderr is closed by the spawn itself where
//! the C library can (`posix_spawn_file_actions_addclosefrom_np`, glibc 2.34 and later;
//! see [`closes_inherited`]), otherwise the new program must close them first thing. Its
//! signal mask is set by the spawn, so signals meant to be blocked are blocked from its
//! first instruction.
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// How to start this program again.
#[derive(Debug)]
pub struct SelfExec<'a> {
    /// The socket the new program finds at [`at`](Self::at).
    pub fd: BorrowedFd<'a>,
    /// Its fd number there (above stderr).
    pub at: RawFd,
    /// `argv[0]` of the new program; `None` keeps this program's.
    pub argv0: Option<&'a OsStr>,
    /// The environment variable (name, value) that tells the new program what it is.
    pub marker: (&'a str, &'a str),
    /// Variables of this environment not passed on (other markers).
    pub strip_env: &'a [&'a str],
    /// Signals blocked in the new program from its first instruction (the rest unblocked).
    pub blocked: &'a [libc::c_int],
    /// Starts it in a session of its own (no terminal's signals reach it).
    pub new_session: bool,
}

/// The type of glibc's `posix_spawn_file_actions_addclosefrom_np`.
type AddCloseFrom =
    unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, libc::c_int) -> libc::c_int;

/// glibc's `posix_spawn_file_actions_addclosefrom_np`, looked up at run time so that a
/// program built here still runs on an older C library.
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

/// Whether [`SelfExec::spawn`] closes every inherited fd above the socket itself; if
/// not, the new program must close them before anything else owns an fd.
pub fn closes_inherited() -> bool {
    addclosefrom().is_some()
}

/// In a program just started by [`SelfExec::spawn`]: closes every fd above `at` (what
/// the spawn could not close, or leftovers of whatever started us).
///
/// # Safety
/// No object of this process may own an fd above `at`: call it first thing, before
/// anything opens one (as before `main`, or as `init()`'s first step).
pub unsafe fn close_inherited_above(at: RawFd) {
    let first = libc::c_uint::try_from(at.saturating_add(1)).unwrap_or(libc::c_uint::MAX);
    // SAFETY: close_range on numbers that, by the contract above, no object owns.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL byte in an argument or env var",
        )
    })
}

impl SelfExec<'_> {
    /// Starts the new program; its pid.
    pub fn spawn(&self) -> io::Result<rustix::process::Pid> {
        if self.at <= 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the socket must go above stderr",
            ));
        }
        // dup2 onto the same number would not clear close-on-exec: keep the source
        // elsewhere (dropped when this function returns).
        let moved;
        let src = if self.fd.as_raw_fd() == self.at {
            moved = rustix::io::fcntl_dupfd_cloexec(self.fd, self.at + 1)?;
            moved.as_raw_fd()
        } else {
            self.fd.as_raw_fd()
        };
        let path = cstring(b"/proc/self/exe")?;
        let argv0 = match self.argv0 {
            Some(a) => a.to_owned(),
            None => std::env::args_os()
                .next()
                .unwrap_or_else(|| "multiproc-child".into()),
        };
        let argv_c = [cstring(argv0.as_bytes())?];
        let mut env_c = Vec::new();
        for (k, v) in std::env::vars_os() {
            if k == self.marker.0 || self.strip_env.iter().any(|s| k == *s) {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env_c.push(cstring(&kv)?);
        }
        env_c.push(cstring(
            format!("{}={}", self.marker.0, self.marker.1).as_bytes(),
        )?);
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
        let closefrom = addclosefrom();

        // SAFETY: every pointer handed to libc points into a live local (the CStrings and
        // the NULL-terminated pointer arrays outlive the call); the file actions and
        // attributes are initialized before use and destroyed exactly once; `closefrom`
        // is the C library's own function (see `addclosefrom`). posix_spawn runs nothing
        // of this process's in the child.
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
            for &s in self.blocked {
                libc::sigaddset(&mut mask, s);
            }
            let mut flags = libc::POSIX_SPAWN_SETSIGMASK as libc::c_short;
            if self.new_session {
                flags |= libc::POSIX_SPAWN_SETSID;
            }
            let mut pid: libc::pid_t = 0;
            rc = libc::posix_spawn_file_actions_adddup2(&mut fa, src, self.at);
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
                rc = closefrom(&mut fa, self.at + 1);
            }
            if rc == 0 {
                rc = libc::posix_spawnattr_setflags(&mut attr, flags);
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
}
