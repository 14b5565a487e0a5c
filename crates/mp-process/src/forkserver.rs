//! The forkserver: a small server spawned fresh (so it holds none of the caller's
//! threads, locks or fds), which forks each child on request. Its children become
//! children of the caller (`CLONE_PARENT`), and start like a forked child (see
//! [`crate::fork`]), holding none of the server's private fds.
//!
//! The request loop ([`serve_requests`]) and its client side ([`ask`]) are shared with
//! [`crate::ForkTemplate`], a server forked from the caller instead of spawned.
use crate::error::ProcessError;
use crate::fork::{after_fork, ForkLocks};
use crate::launch::{spawn_exec, StartMask, FORKSERVER_ENV};
use mp_core::fdpass::{recv_frame, send_all, send_frame};
use mp_core::{Deadline, PrivateFd};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::Pid;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The running forkserver, as its parent sees it.
pub(crate) struct Server {
    pid: Pid,
    pidfd: PrivateFd,
    control: PrivateFd,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

pub(crate) fn server_lock() -> MutexGuard<'static, Option<Server>> {
    SERVER.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a forkserver may take to answer one request.
const SERVER_REPLY: Duration = Duration::from_secs(30);

fn start_server() -> io::Result<Server> {
    let (ours, theirs) = crate::process::channel()?;
    let pid = spawn_exec(&theirs, FORKSERVER_ENV, StartMask::StopSignalsBlocked)?;
    crate::testing::maybe_signal_at_start(pid);
    drop(theirs);
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    Ok(Server {
        pid,
        pidfd: PrivateFd::new(pidfd)?,
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

/// Asks the server at the other end of `control` (a forkserver or a fork template) to
/// fork a child with `fd` as its bootstrap socket: the child's pid. The server is
/// trusted (ours), but a dead or wedged one is an error within [`SERVER_REPLY`].
pub(crate) fn ask(control: &PrivateFd, fd: &PrivateFd) -> mp_core::Result<Pid> {
    let mut header = [0u8; mp_core::frame::MAX_HEADER];
    let header = mp_core::frame::encode_header(1, &mut header);
    // "f": a test's request to crash right after the fork (see crate::testing).
    let kind: &[u8] = if crate::testing::take_die_after_fork() {
        b"f"
    } else {
        b"F"
    };
    send_all(control.as_fd(), &[header, kind], &[fd.as_fd()])?;
    let deadline = Deadline::from_now(SERVER_REPLY);
    let mut p = [PollFd::new(control, PollFlags::IN)];
    loop {
        match poll(&mut p, deadline.remaining_timespec().as_ref()) {
            Ok(0) => return Err(mp_core::Error::Timeout),
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let (reply, _) = recv_frame(control.as_fd(), 16)?;
    let raw = <[u8; 4]>::try_from(&reply[..])
        .map(i32::from_be_bytes)
        .map_err(|_| mp_core::Error::BadFrame("bad forkserver reply".into()))?;
    if raw < 0 {
        return Err(mp_core::Error::Io(io::Error::from_raw_os_error(-raw)));
    }
    Pid::from_raw(raw).ok_or_else(|| mp_core::Error::BadFrame("forkserver replied pid 0".into()))
}

/// Asks the forkserver (started on first use, restarted if it died) for a child: its pid
/// and our end of its bootstrap channel, a fresh one for each attempt.
pub(crate) fn forkserver() -> Result<(Pid, PrivateFd), ProcessError> {
    let mut guard = server_lock();
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
        let (ours, theirs) = crate::process::channel()?;
        match ask(&server.control, &theirs) {
            Ok(pid) => return Ok((pid, ours)),
            Err(e) => {
                // Dead or wedged: replace it, and try once more, on a new channel.
                last = e.to_string();
                if let Some(s) = guard.take() {
                    reap_server(s);
                }
                reap_orphan(ours, theirs);
            }
        }
    }
    Err(ProcessError::Forkserver(format!(
        "it failed twice, last with: {last}"
    )))
}

/// How long the parent waits, after a server failed a request, to learn whether it had
/// forked a child for it.
const ORPHAN_WAIT: Duration = Duration::from_secs(10);

/// After a server (the forkserver or a fork template) failed a request, dead or killed
/// by now: finds the child it may have forked for it before failing, and reaps it.
///
/// Every child a server forks first announces its pid on its bootstrap socket (see
/// [`serve_requests`]), and its bootstrap is sent only once the server's reply gave the
/// parent that pid, so this child never got one: it runs no task, and exits at once
/// when `ours` closes (end of file before its bootstrap). So: `ours` becomes readable
/// with the announcement, or at end of file once the server's copy of `theirs` is gone
/// with it and no child holds one. The announced pid is that of a child of ours
/// (`CLONE_PARENT`) that nobody else can reap, so it cannot have been reused; waiting on
/// it through a pidfd reaps it and never another process (one that is not our child
/// fails with ECHILD).
pub(crate) fn reap_orphan(ours: PrivateFd, theirs: PrivateFd) {
    drop(theirs);
    let deadline = Deadline::from_now(ORPHAN_WAIT);
    if !wait_readable(&ours, deadline) {
        tracing::warn!("a failed server's child did not announce itself; it may be left a zombie");
        return;
    }
    let announced = match recv_frame(ours.as_fd(), 16) {
        Ok((b, fds)) if fds.is_empty() => <[u8; 4]>::try_from(&b[..]).ok(),
        _ => None, // end of file: the server forked no child for this request
    };
    // The child sees end of file and exits.
    drop(ours);
    let Some(pid) = announced.and_then(|b| Pid::from_raw(i32::from_be_bytes(b))) else {
        return;
    };
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return; // reaped already (SIGCHLD ignored by the program)
    };
    if !wait_readable(&pidfd, deadline) {
        tracing::warn!(
            pid = pid.as_raw_nonzero().get(),
            "a failed server's child did not exit"
        );
        return;
    }
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
    );
    tracing::debug!(
        pid = pid.as_raw_nonzero().get(),
        "reaped a failed server's child"
    );
}

/// Waits until `fd` is readable (or hung up) by `deadline`: whether it is.
fn wait_readable(fd: impl AsFd, deadline: Deadline) -> bool {
    let mut p = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        match poll(&mut p, deadline.remaining_timespec().as_ref()) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// The pid of the running forkserver, if one was started (for tests and diagnostics).
pub fn forkserver_pid() -> Option<i32> {
    server_lock().as_ref().map(|s| s.pid.as_raw_nonzero().get())
}

/// The forkserver's loop (see [`serve_requests`]): it was spawned with SIGINT and SIGTERM
/// blocked (see [`StartMask`]); its children start with the empty signal mask a spawned
/// process has. Never returns.
pub(crate) fn serve(control: PrivateFd) -> ! {
    // Blocked since exec already; blocked again should a C library ignore the spawn mask.
    let _ = block_stop_signals();
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let child_mask = unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        empty
    };
    serve_requests(control, None, child_mask)
}

/// Blocks SIGINT and SIGTERM in the calling thread (a helper is not stopped by the
/// Ctrl-C or the SIGTERM meant for the program: it leaves when its owner does); the mask
/// it had before.
pub(crate) fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the calls
    // only read and write the two local sets and this thread's mask.
    unsafe {
        let mut stop: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut stop);
        libc::sigemptyset(&mut old);
        libc::sigaddset(&mut stop, libc::SIGINT);
        libc::sigaddset(&mut stop, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &stop, &mut old);
        old
    }
}

/// Sets the calling thread's signal mask.
pub(crate) fn set_signal_mask(mask: &libc::sigset_t) {
    // SAFETY: `mask` is an initialised sigset_t; only this thread's mask changes.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

/// Ends a server at once: no atexit handler (a fork template's would be its owner's)
/// and no destructor runs.
pub(crate) fn leave(code: i32) -> ! {
    // SAFETY: _exit ends the process without running anything of the program's.
    unsafe { libc::_exit(code) }
}

/// Waits for the next request on `control`, or for `owner` (a pidfd) to exit: true when
/// a request (or end of file) is there, false when the owner is gone.
fn next_request(control: &PrivateFd, owner: Option<&PrivateFd>) -> bool {
    // Without an owner to watch, the control socket is polled twice.
    let watch = owner.unwrap_or(control);
    loop {
        let mut p = [
            PollFd::new(control, PollFlags::IN),
            PollFd::new(watch, PollFlags::IN),
        ];
        match poll(&mut p, None) {
            Ok(_) if owner.is_some() && !p[1].revents().is_empty() => return false,
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
}

/// A server's loop: for each request, fork a child that becomes a child of the server's
/// parent (CLONE_PARENT), so the parent waits for it with its own pidfd. The child
/// starts with `child_mask` as its signal mask and runs the usual bootstrap. Exits when
/// the control socket reaches end of file, or when `owner` (a pidfd of the server's
/// parent, for a fork template) reports its exit. Never returns.
///
/// Must run in a single-threaded process: the forkserver (started fresh by exec) or a
/// fork template (the child of a fork).
pub(crate) fn serve_requests(
    control: PrivateFd,
    owner: Option<PrivateFd>,
    child_mask: libc::sigset_t,
) -> ! {
    // Read once here, so every child forked below inherits it instead of asking again.
    let _ = crate::wire::ExeId::cached();
    loop {
        if !next_request(&control, owner.as_ref()) {
            leave(0)
        }
        let (kind, mut fds) = match recv_frame(control.as_fd(), 64) {
            Ok(r) => r,
            Err(_) => leave(0),
        };
        let Some(fd) = fds.pop() else { leave(1) };
        drop(fds);
        let Ok(fd) = PrivateFd::new(fd) else { leave(1) };
        // Free here (the server runs one thread), but the child releases them as every
        // forked child does.
        let locks = ForkLocks::take();
        // SAFETY: the server is single-threaded (this function's contract), so a clone
        // without CLONE_VM is a plain fork; the child never returns into this loop.
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
            // First thing, the child's pid, so that the parent can find (and reap) it
            // should this server die before it replies (see reap_orphan).
            // It fails only when the parent has let go of its end already (a handle
            // dropped at once): the bootstrap it sent before may still be there to run.
            let me = rustix::process::getpid().as_raw_nonzero().get();
            let _ = send_frame(fd.as_fd(), &me.to_be_bytes(), &[]);
            set_signal_mask(&child_mask);
            // SAFETY: the child of the clone above, single-threaded; `fd` is owned by
            // this loop's frame, which the child never returns to (after_fork never
            // returns).
            unsafe { after_fork(&fd, locks) };
        }
        let reply = if pid < 0 {
            -io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EAGAIN)
        } else {
            pid as i32
        };
        drop((locks, fd));
        if kind == b"f" {
            // A test's crash between the fork and the reply (see crate::testing).
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
        if send_frame(control.as_fd(), &reply.to_be_bytes(), &[]).is_err() {
            leave(0)
        }
    }
}
