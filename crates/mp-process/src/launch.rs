//! Creating a child: spawn (posix_spawn of `/proc/self/exe`), fork, and the forkserver.
//!
//! Every child gets exactly one inherited fd, its bootstrap socket, at [`CHILD_FD`];
//! everything else it needs (argument fds included) arrives over that socket. So no
//! fd that was not passed leaks into a child, under any start method.
use crate::child;
use crate::error::ProcessError;
use mp_core::fdpass::{recv_frame, send_frame};
use mp_core::Deadline;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::Pid;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::time::Duration;

/// The fd number of the bootstrap socket in every child (and of the control socket in
/// the forkserver).
pub(crate) const CHILD_FD: i32 = 3;
/// Marks a spawned child; the value is the bootstrap fd.
pub(crate) const BOOTSTRAP_ENV: &str = "MULTIPROC_BOOTSTRAP";
/// Marks a spawned forkserver; the value is its control fd.
pub(crate) const FORKSERVER_ENV: &str = "MULTIPROC_FORKSERVER";

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL byte in an argument or env var",
        )
    })
}

/// Re-executes this program with `fd` at [`CHILD_FD`], stdin on /dev/null, an empty
/// signal mask, and `marker=3` in its environment.
pub(crate) fn spawn_exec(fd: &OwnedFd, marker: &str) -> io::Result<Pid> {
    // dup2 onto the same number would not clear close-on-exec: keep the source elsewhere.
    let moved;
    let src = if fd.as_raw_fd() == CHILD_FD {
        moved = rustix::io::fcntl_dupfd_cloexec(fd, CHILD_FD + 1)?;
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
    env_c.push(cstring(format!("{marker}={CHILD_FD}").as_bytes())?);
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
    // attributes are initialized before use and destroyed exactly once.
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
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
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
        if rc == 0 {
            rc = libc::posix_spawnattr_setflags(
                &mut attr,
                libc::POSIX_SPAWN_SETSIGMASK as libc::c_short,
            );
        }
        if rc == 0 {
            rc = libc::posix_spawnattr_setsigmask(&mut attr, &empty);
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

/// In a freshly forked child: puts `fd` at [`CHILD_FD`], closes every other fd above
/// stderr, and runs the child. Never returns.
fn after_fork(fd: &OwnedFd) -> ! {
    let raw = fd.as_raw_fd();
    // SAFETY: plain fd syscalls in the child; the closed fds belong to objects of the
    // parent's copy of memory that this child never returns to, drops or uses (the
    // child's own registries are reset without dropping, see `child::forget_inherited`).
    unsafe {
        if raw != CHILD_FD && libc::dup2(raw, CHILD_FD) < 0 {
            libc::_exit(70);
        }
        libc::syscall(
            libc::SYS_close_range,
            (CHILD_FD + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
        child::forget_inherited();
        child::child_main(OwnedFd::from_raw_fd(CHILD_FD))
    }
}

/// Forks the calling process; the child runs its task and exits.
pub(crate) fn fork(fd: &OwnedFd, allow_threads: bool) -> Result<Pid, ProcessError> {
    if !allow_threads {
        let threads = crate::current::thread_count();
        if threads > 1 {
            return Err(ProcessError::ForkWithThreads { threads });
        }
    }
    // Unflushed output would otherwise be written twice, once by each process.
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
    }
    // SAFETY: fork in a single-threaded process (checked above, or explicitly allowed
    // by the caller, who takes on that other threads' locks may be held); the child
    // only runs our bootstrap and the target, then exits without returning.
    match unsafe { libc::fork() } {
        -1 => Err(ProcessError::Start(io::Error::last_os_error())),
        0 => after_fork(fd),
        pid => Pid::from_raw(pid)
            .ok_or_else(|| ProcessError::Start(io::Error::other("fork returned pid 0"))),
    }
}

// ---------------------------------------------------------------------------------
// forkserver

struct Server {
    pid: Pid,
    pidfd: OwnedFd,
    control: OwnedFd,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// How long a forkserver may take to answer one request.
const SERVER_REPLY: Duration = Duration::from_secs(30);

fn start_server() -> io::Result<Server> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let pid = spawn_exec(&theirs, FORKSERVER_ENV)?;
    drop(theirs);
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    Ok(Server {
        pid,
        pidfd,
        control: ours,
    })
}

fn reap_server(s: Server) {
    let _ = rustix::process::pidfd_send_signal(&s.pidfd, rustix::process::Signal::KILL);
    drop(s.control);
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(s.pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    );
    let _ = s.pid;
}

fn ask(server: &Server, fd: &OwnedFd) -> mp_core::Result<Pid> {
    let dup = rustix::io::fcntl_dupfd_cloexec(fd, 3)?;
    send_frame(server.control.as_fd(), b"F", &[dup])?;
    let deadline = Deadline::from_now(SERVER_REPLY);
    let mut p = [PollFd::new(&server.control, PollFlags::IN)];
    loop {
        match poll(&mut p, deadline.remaining_timespec().as_ref()) {
            Ok(0) => return Err(mp_core::Error::Timeout),
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let (reply, _) = recv_frame(server.control.as_fd(), 16)?;
    let raw = <[u8; 4]>::try_from(&reply[..])
        .map(i32::from_be_bytes)
        .map_err(|_| mp_core::Error::BadFrame("bad forkserver reply".into()))?;
    if raw < 0 {
        return Err(mp_core::Error::Io(io::Error::from_raw_os_error(-raw)));
    }
    Pid::from_raw(raw).ok_or_else(|| mp_core::Error::BadFrame("forkserver replied pid 0".into()))
}

/// Asks the forkserver (started on first use, restarted if it died) for a child.
pub(crate) fn forkserver(fd: &OwnedFd) -> Result<Pid, ProcessError> {
    let mut guard = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    let mut last = String::new();
    for _ in 0..2 {
        if guard.is_none() {
            *guard = Some(
                start_server()
                    .map_err(|e| ProcessError::Forkserver(format!("could not start it: {e}")))?,
            );
        }
        let Some(server) = guard.as_ref() else {
            continue;
        };
        match ask(server, fd) {
            Ok(pid) => return Ok(pid),
            Err(e) => {
                // Dead or wedged: replace it, and try once more.
                last = e.to_string();
                if let Some(s) = guard.take() {
                    reap_server(s);
                }
            }
        }
    }
    Err(ProcessError::Forkserver(format!(
        "it failed twice, last with: {last}"
    )))
}

/// The pid of the running forkserver, if one was started (for tests and diagnostics).
pub fn forkserver_pid() -> Option<i32> {
    SERVER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|s| s.pid.as_raw_nonzero().get())
}

/// Forgets the forkserver connection without closing it (in a forked child, whose
/// copy of it belongs to the parent).
pub(crate) fn forget_server() {
    if let Ok(mut g) = SERVER.try_lock() {
        std::mem::forget(g.take());
    } else {
        // A fork while another thread held the lock (only with allow_fork_with_threads):
        // leave it; this child never asks for a forkserver of its parent's.
    }
}

/// The forkserver's loop: for each request, fork a child that becomes a child of the
/// server's parent (CLONE_PARENT), so the parent waits for it with its own pidfd.
/// Exits when the parent closes the control socket. Never returns.
pub(crate) fn serve(control: OwnedFd) -> ! {
    // Read once here, so every child forked below inherits it instead of asking again.
    let _ = crate::wire::ExeId::cached();
    loop {
        let (_, mut fds) = match recv_frame(control.as_fd(), 64) {
            Ok(r) => r,
            Err(_) => std::process::exit(0),
        };
        let Some(fd) = fds.pop() else {
            std::process::exit(1)
        };
        // SAFETY: the server is single-threaded (it runs only this loop, started fresh by
        // exec), so a clone without CLONE_VM is a plain fork; the child never returns
        // into this loop.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid == 0 {
            after_fork(&fd);
        }
        let reply = if pid < 0 {
            -io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EAGAIN)
        } else {
            pid as i32
        };
        drop(fd);
        if send_frame(control.as_fd(), &reply.to_be_bytes(), &[]).is_err() {
            std::process::exit(0);
        }
    }
}
