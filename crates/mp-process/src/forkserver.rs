//! The forkserver: a small server spawned fresh (so it holds none of the caller's
//! threads, locks or fds), which forks each child on request. Its children become
//! children of the caller (`CLONE_PARENT`), and start like a forked child (see
//! [`crate::fork`]), holding none of the server's private fds.
use crate::error::ProcessError;
use crate::fork::{after_fork, ForkLocks};
use crate::launch::{spawn_exec, FORKSERVER_ENV};
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
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let (ours, theirs) = (PrivateFd::new(ours)?, PrivateFd::new(theirs)?);
    let pid = spawn_exec(&theirs, FORKSERVER_ENV)?;
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

fn ask(server: &Server, fd: &PrivateFd) -> mp_core::Result<Pid> {
    let mut header = [0u8; mp_core::frame::MAX_HEADER];
    let header = mp_core::frame::encode_header(1, &mut header);
    send_all(server.control.as_fd(), &[header, b"F"], &[fd.as_fd()])?;
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
pub(crate) fn forkserver(fd: &PrivateFd) -> Result<Pid, ProcessError> {
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
    server_lock().as_ref().map(|s| s.pid.as_raw_nonzero().get())
}

/// The forkserver's loop: for each request, fork a child that becomes a child of the
/// server's parent (CLONE_PARENT), so the parent waits for it with its own pidfd.
/// Exits when the parent closes the control socket. Never returns.
pub(crate) fn serve(control: PrivateFd) -> ! {
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
        let Ok(fd) = PrivateFd::new(fd) else {
            std::process::exit(1)
        };
        // Free here (the server runs one thread), but the child releases them as every
        // forked child does.
        let locks = ForkLocks::take();
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
            after_fork(&fd, locks);
        }
        let reply = if pid < 0 {
            -io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EAGAIN)
        } else {
            pid as i32
        };
        drop((locks, fd));
        if send_frame(control.as_fd(), &reply.to_be_bytes(), &[]).is_err() {
            std::process::exit(0);
        }
    }
}
