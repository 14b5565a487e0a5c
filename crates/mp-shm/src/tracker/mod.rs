//! The shared-memory tracker's client: one helper process per creating process, started
//! by exec (never by forking a process that may have threads), told each segment this
//! process creates and removes; when this process is gone it unlinks what is left.
//!
//! Every segment this process registered is also kept here, so a tracker that died
//! (killed, say) is replaced at the next message, with a tracing warning, and the new
//! one is told every segment still registered: nothing is left behind for good.
pub(crate) mod serve;
mod spawn;

use crate::ShmError;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{recv, send, RecvFlags, SendFlags};
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How long a new tracker may take to say it runs.
const START: Duration = Duration::from_secs(30);
/// How long one message may wait for room in the tracker's socket (a stopped tracker).
const SEND: Duration = Duration::from_secs(30);

/// What a tracker sends once, when it runs.
const READY: u8 = b'!';
/// The first byte of a message: a segment registered, or removed (or handed over).
const ADD: u8 = b'+';
const REMOVE: u8 = b'-';

/// A running tracker: our end of its socket, and a pidfd to stop and reap it.
struct Tracker {
    sock: OwnedFd,
    pidfd: OwnedFd,
}

struct State {
    /// The pid these fields belong to: a forked child finds its parent's here.
    owner: u32,
    tracker: Option<Tracker>,
    /// Every segment registered and not removed, in order.
    names: Vec<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    owner: 0,
    tracker: None,
    names: Vec::new(),
});

/// This process's state; a forked child drops what it inherited.
fn state() -> MutexGuard<'static, State> {
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let me = std::process::id();
    if st.owner != me {
        // Inherited through a fork: the tracker is the parent's (a multiproc child has
        // closed those fds; their numbers may be reused), and so are the names. Forget
        // them without closing anything.
        std::mem::forget(st.tracker.take());
        st.names.clear();
        st.owner = me;
    }
    st
}

fn message(op: u8, name: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(1 + name.len());
    m.push(op);
    m.extend_from_slice(name.as_bytes());
    m
}

fn send_to(sock: &OwnedFd, msg: &[u8]) -> rustix::io::Result<()> {
    loop {
        match send(sock, msg, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

impl State {
    /// Starts a tracker and tells it every registered segment.
    fn start(&mut self) -> Result<(), ShmError> {
        let t = start_tracker()?;
        for n in &self.names {
            if let Err(e) = send_to(&t.sock, &message(ADD, n)) {
                stop(t);
                return Err(e.into());
            }
        }
        self.tracker = Some(t);
        Ok(())
    }

    /// Sends `msg`; if the tracker is gone, replaces it (the new one learns the current
    /// list, which `msg` already changed).
    fn deliver(&mut self, msg: &[u8]) -> Result<(), ShmError> {
        if let Some(t) = &self.tracker {
            match send_to(&t.sock, msg) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "the shared-memory tracker is gone; starting a new one"
                    );
                    if let Some(t) = self.tracker.take() {
                        stop(t);
                    }
                }
            }
        }
        self.start()
    }
}

/// Makes sure this process has a tracker (before a segment exists, so that a failure
/// to start one leaves nothing behind).
pub(crate) fn ensure() -> Result<(), ShmError> {
    let mut st = state();
    if st.tracker.is_none() {
        st.start()?;
    }
    Ok(())
}

/// Registers a segment this process created: unlinked when this process is gone.
pub(crate) fn register(name: &str) -> Result<(), ShmError> {
    let mut st = state();
    st.names.push(name.to_string());
    let r = st.deliver(&message(ADD, name));
    if r.is_err() {
        st.names.pop();
    }
    r
}

/// Forgets a segment (unlinked, or handed over to whoever attaches).
pub(crate) fn unregister(name: &str) {
    let mut st = state();
    let Some(i) = st.names.iter().rposition(|n| n == name) else {
        return;
    };
    st.names.remove(i);
    if st.tracker.is_some() {
        if let Err(e) = st.deliver(&message(REMOVE, name)) {
            tracing::warn!(error = %e, segment = name, "could not tell the shared-memory tracker");
        }
    }
}

/// Starts a tracker and waits (bounded) until it says it runs.
fn start_tracker() -> Result<Tracker, ShmError> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::sockopt::set_socket_timeout(
        &ours,
        rustix::net::sockopt::Timeout::Send,
        Some(SEND),
    )?;
    let pid = spawn::spawn(&theirs)?;
    drop(theirs);
    // Still our unreaped child: the pid cannot have been reused.
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // Nothing to stop it through: it ends at end of file on its socket.
            return Err(e.into());
        }
    };
    let t = Tracker { sock: ours, pidfd };
    match wait_ready(&t.sock) {
        Ok(()) => Ok(t),
        Err(e) => {
            stop(t);
            Err(e)
        }
    }
}

fn wait_ready(sock: &OwnedFd) -> Result<(), ShmError> {
    let deadline = mp_core::Deadline::from_now(START);
    loop {
        let left = deadline.remaining().unwrap_or(Duration::ZERO);
        let not_ready = || {
            ShmError::Core(mp_core::Error::Io(std::io::Error::other(
                "the shared-memory tracker did not start",
            )))
        };
        if left.is_zero() {
            return Err(not_ready());
        }
        let mut fds = [PollFd::new(sock, PollFlags::IN)];
        let timeout = Timespec::try_from(left).ok();
        match poll(&mut fds, timeout.as_ref()) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let mut b = [0u8; 1];
        return match recv(sock, &mut b[..], RecvFlags::DONTWAIT) {
            Ok((1, _)) if b[0] == READY => Ok(()),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => Err(e.into()),
            Ok(_) => Err(not_ready()),
        };
    }
}

/// Kills a tracker and reaps it (bounded: SIGKILL cannot be blocked).
fn stop(t: Tracker) {
    let _ = rustix::process::pidfd_send_signal(&t.pidfd, rustix::process::Signal::KILL);
    while let Err(rustix::io::Errno::INTR) = rustix::process::waitid(
        rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&t.pidfd)),
        rustix::process::WaitIdOptions::EXITED,
    ) {}
}
