//! The shared-memory tracker's client. One tracker serves a whole process tree, as in
//! Python: the first process that needs one (the tree's root, at its first named segment
//! or its first child) starts it by exec, and offers its socket to every child it starts
//! (through [`mp_core::inherit`]); a child takes that socket at first use instead of
//! starting a tracker of its own, and offers it to its own children in turn. Every process
//! of the tree tells the tracker the segments it creates (`+name`) and unlinks (`-name`,
//! whoever created them), over its own copy of one seqpacket socket, which keeps each
//! message whole. When the last process holding a copy is gone (end of file), the tracker
//! unlinks what is still registered, with a warning naming each segment.
//!
//! Every segment this process registered is also kept here, so a tracker that died
//! (killed, say) is replaced at the next message, with a tracing warning, and the new one
//! is told every segment of this process's still registered and still there; children
//! started from then on share the new one. (Segments that other processes registered
//! with the dead tracker are theirs to re-register, at their next message.)
mod report;
pub(crate) mod serve;
mod spawn;

use crate::ShmError;
use mp_core::inherit::{ForkHold, Offer};
use mp_core::PrivateFd;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{recv, send, RecvFlags, SendFlags};
use std::os::fd::AsFd;
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

/// The tracker's socket, as every child of this process receives it.
pub(crate) static OFFER: Offer = Offer::new("mp-shm.tracker", provide);

/// The state's lock, held across every fork multiproc makes (a child forked while another
/// thread talked to the tracker would otherwise find it held for ever).
pub(crate) static FORK_HOLD: ForkHold = ForkHold::new("mp-shm.tracker", hold_state);

fn hold_state() -> Box<dyn std::any::Any> {
    Box::new(STATE.lock().unwrap_or_else(|p| p.into_inner()))
}

/// This process's connection to its tree's tracker.
struct Tracker {
    /// Our copy of the tree's end of the tracker's socket.
    sock: PrivateFd,
    /// Set when this process started the tracker: a pidfd to stop and reap it.
    pidfd: Option<PrivateFd>,
}

struct State {
    /// The pid these fields belong to: a forked child finds its parent's here.
    owner: u32,
    tracker: Option<Tracker>,
    /// Every segment this process registered and did not remove, in order.
    names: Vec<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    owner: 0,
    tracker: None,
    names: Vec::new(),
});

/// This process's state; a forked child lets go of what it inherited.
fn state() -> MutexGuard<'static, State> {
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let me = std::process::id();
    if st.owner != me {
        // Inherited through a fork. The names are the parent's to look after. The socket
        // is the parent's copy: in a child forked by multiproc it is an inert placeholder
        // by now (a private fd), and the child got a copy of its own with its bootstrap;
        // in a child forked behind our back it is still the tree's socket, kept as in
        // Python. The tracker is not this process's child either way: no pidfd.
        st.names.clear();
        if let Some(t) = st.tracker.take() {
            if is_seqpacket(&t.sock) {
                st.tracker = Some(Tracker {
                    sock: t.sock,
                    pidfd: None,
                });
            }
        }
        st.owner = me;
    }
    st
}

/// Whether `fd` is a seqpacket socket (a tracker's, as far as a type can tell).
fn is_seqpacket(fd: &PrivateFd) -> bool {
    rustix::net::sockopt::socket_type(fd).is_ok_and(|t| t == rustix::net::SocketType::SEQPACKET)
}

/// Whether the tracker at the other end of `sock` is gone (its end closed).
fn hung_up(sock: &PrivateFd) -> bool {
    let mut fds = [PollFd::new(sock, PollFlags::empty())];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0
        && fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL))
}

fn message(op: u8, name: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(1 + name.len());
    m.push(op);
    m.extend_from_slice(name.as_bytes());
    m
}

fn send_to(sock: &PrivateFd, msg: &[u8]) -> rustix::io::Result<()> {
    loop {
        match send(sock, msg, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

impl State {
    /// Makes sure this process has a connection: the tree's tracker if this process was
    /// given one, else a tracker it starts.
    fn connect(&mut self) -> Result<(), ShmError> {
        // Children started from now on share it (the hook before `main` offered it
        // already, where this binary's initializers run).
        mp_core::inherit::offer(&OFFER);
        mp_core::inherit::hold_across_fork(&FORK_HOLD);
        if self.tracker.is_none() {
            self.take_inherited();
        }
        if self.tracker.is_none() {
            self.start()?;
        }
        Ok(())
    }

    /// Takes the tree's tracker if this process received it, telling it this process's
    /// names (any left from a tracker that died).
    fn take_inherited(&mut self) {
        let Some(sock) = mp_core::inherit::take(OFFER.name()) else {
            return;
        };
        if !is_seqpacket(&sock) {
            tracing::warn!("the inherited shared-memory tracker handle is not a tracker's socket");
            return;
        }
        let t = Tracker { sock, pidfd: None };
        if self.tell_all(&t).is_ok() {
            self.tracker = Some(t);
        }
    }

    /// Tells `t` every segment of this process's that still exists.
    fn tell_all(&self, t: &Tracker) -> Result<(), ShmError> {
        for n in self.names.iter().filter(|n| crate::named::exists(n)) {
            send_to(&t.sock, &message(ADD, n))?;
        }
        Ok(())
    }

    /// Starts a tracker and tells it this process's segments.
    fn start(&mut self) -> Result<(), ShmError> {
        let t = start_tracker()?;
        if let Err(e) = self.tell_all(&t) {
            stop(t);
            return Err(e);
        }
        self.tracker = Some(t);
        Ok(())
    }

    /// Lets go of a tracker that is gone (stopping it if it is ours and merely stuck).
    fn lost(&mut self, e: &dyn std::fmt::Display) {
        tracing::warn!(
            error = %e,
            "the shared-memory tracker is gone; starting a new one"
        );
        if let Some(t) = self.tracker.take() {
            stop(t);
        }
    }

    /// Sends `msg`; if the tracker is gone, replaces it (the new one learns the current
    /// list, which `msg` already changed) when this process has segments to look after,
    /// or when `always`.
    fn deliver(&mut self, msg: &[u8], always: bool) -> Result<(), ShmError> {
        if let Some(t) = &self.tracker {
            match send_to(&t.sock, msg) {
                Ok(()) => return Ok(()),
                Err(e) => self.lost(&e),
            }
        }
        if always || !self.names.is_empty() {
            self.start()?;
        }
        Ok(())
    }
}

/// The offer's provider: a copy of the tree's tracker socket for a child being started
/// (the tracker is started first if this process has none, or if it is found gone).
fn provide() -> std::io::Result<PrivateFd> {
    let mut st = state();
    if st.tracker.as_ref().is_some_and(|t| hung_up(&t.sock)) {
        st.lost(&"its socket hung up");
    }
    st.connect()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    match &st.tracker {
        Some(t) => t.sock.try_clone(),
        None => Err(std::io::Error::other("no shared-memory tracker")),
    }
}

/// Makes sure this process has a tracker to talk to (before a segment exists, so that a
/// failure to start one leaves nothing behind).
pub(crate) fn ensure() -> Result<(), ShmError> {
    state().connect()
}

/// Registers a segment this process created: unlinked when its tree is gone.
pub(crate) fn register(name: &str) -> Result<(), ShmError> {
    let mut st = state();
    st.names.push(name.to_string());
    let r = st.deliver(&message(ADD, name), true);
    if r.is_err() {
        st.names.pop();
    }
    r
}

/// Forgets a segment (unlinked, or handed over to whoever attaches), whichever process
/// of the tree registered it (Python's semantics: an unlink unregisters).
pub(crate) fn unregister(name: &str) {
    let mut st = state();
    if let Some(i) = st.names.iter().rposition(|n| n == name) {
        st.names.remove(i);
    }
    if st.tracker.is_none() {
        st.take_inherited();
    }
    if st.tracker.is_none() && st.names.is_empty() {
        // No tracker knows this process, and it has no segment to look after.
        return;
    }
    if let Err(e) = st.deliver(&message(REMOVE, name), false) {
        tracing::warn!(error = %e, segment = name, "could not tell the shared-memory tracker");
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
    // Private from the start: a child forked meanwhile holds neither end.
    let (ours, theirs) = (PrivateFd::new(ours)?, PrivateFd::new(theirs)?);
    let pid = spawn::spawn(&theirs)?;
    drop(theirs);
    // Still our unreaped child: the pid cannot have been reused. Without a pidfd there is
    // nothing to stop it through: it ends at end of file on its socket.
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    let t = Tracker {
        sock: ours,
        pidfd: Some(PrivateFd::new(pidfd)?),
    };
    match wait_ready(&t.sock) {
        Ok(()) => Ok(t),
        Err(e) => {
            stop(t);
            Err(e)
        }
    }
}

fn wait_ready(sock: &PrivateFd) -> Result<(), ShmError> {
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

/// Lets go of a tracker; kills it and reaps it if this process started it (bounded:
/// SIGKILL cannot be blocked). One this process was given is left to its tree.
fn stop(t: Tracker) {
    let Some(pidfd) = t.pidfd else { return };
    let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    while let Err(rustix::io::Errno::INTR) = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    ) {}
}
