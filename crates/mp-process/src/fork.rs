//! Forking: the child of `fork` (or of the forkserver) inherits every fd of its parent, at
//! the same numbers, as in Python, except the library's private ones
//! ([`mp_core::PrivateFd`]: pidfds, the parent's ends of bootstrap sockets, the
//! forkserver's control socket, the parent pidfd of a child), which it neutralises first
//! thing; its bootstrap socket stays at the number it had in the parent, close-on-exec.
//!
//! The library's own locks are held across the fork ([`ForkLocks`]), so that a child forked
//! while another thread used one (possible only with `allow_fork_with_threads`) never
//! finds it held for ever.
use crate::child;
use crate::context::StartMethod;
use crate::current::ProcState;
use crate::error::ProcessError;
use crate::forkserver::Server;
use crate::process::ChildEntry;
use mp_core::PrivateFd;
use rustix::process::Pid;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, MutexGuard};

/// Every lock of this crate's that a forked child uses, taken in this fixed order. No other
/// code path holds two of them at once, so taking them all cannot deadlock.
pub(crate) struct ForkLocks {
    /// Held only: a guard is released when dropped.
    _state: MutexGuard<'static, ProcState>,
    _default: MutexGuard<'static, Option<StartMethod>>,
    children: MutexGuard<'static, Vec<Arc<ChildEntry>>>,
    server: MutexGuard<'static, Option<Server>>,
}

impl ForkLocks {
    /// Waits for every other thread to leave them (a forkserver request may hold one for
    /// up to its reply bound).
    pub(crate) fn take() -> ForkLocks {
        let state = crate::current::state();
        let default = crate::context::default_lock();
        let children = crate::process::children();
        let server = crate::forkserver::server_lock();
        ForkLocks {
            _state: state,
            _default: default,
            children,
            server,
        }
    }

    /// In the child: releases the locks, then drops the parent's records of its children
    /// and forkserver (their fds are placeholders by now, so only those are closed; they
    /// are not this child's).
    fn release_in_child(mut self) {
        let children = std::mem::take(&mut *self.children);
        let server = self.server.take();
        drop(self);
        drop((children, server));
    }
}

/// In a freshly forked child (of this process or of the forkserver): neutralises every
/// private fd but `sock`, lets go of the parent's records, and runs the child with `sock`
/// as its bootstrap socket, where it already is. The user's fds stay open. Never returns.
pub(crate) fn after_fork(sock: &PrivateFd, locks: ForkLocks) -> ! {
    // SAFETY: the child of a fork runs one thread, this one.
    if unsafe { mp_core::private_fd::neutralize_inherited(&[sock.as_fd()]) }.is_err() {
        // SAFETY: ends the child at once, dropping nothing (see neutralize_inherited).
        unsafe { libc::_exit(child::EXIT_BOOTSTRAP) }
    }
    locks.release_in_child();
    // SAFETY: `sock` is owned by a frame of the parent's code (ProcessBuilder::start, or
    // the forkserver's loop) that this child never returns to, unwinds or drops: from now
    // on the child is its only owner.
    let own = unsafe { OwnedFd::from_raw_fd(sock.as_raw_fd()) };
    match PrivateFd::new(own) {
        Ok(sock) => child::child_main(sock),
        // SAFETY: as above.
        Err(_) => unsafe { libc::_exit(child::EXIT_BOOTSTRAP) },
    }
}

/// Forks the calling process; the child runs its task and exits.
pub(crate) fn fork(fd: &PrivateFd, allow_threads: bool) -> Result<Pid, ProcessError> {
    if !allow_threads {
        let threads = crate::current::thread_count().map_err(ProcessError::ThreadCountUnknown)?;
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
    let locks = ForkLocks::take();
    // SAFETY: fork in a single-threaded process (checked above, or explicitly allowed
    // by the caller, who takes on that other threads' locks may be held); the child
    // only runs our bootstrap and the target, then exits without returning.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        after_fork(fd, locks);
    }
    let err = io::Error::last_os_error();
    drop(locks);
    match pid {
        -1 => Err(ProcessError::Start(err)),
        pid => Pid::from_raw(pid)
            .ok_or_else(|| ProcessError::Start(io::Error::other("fork returned pid 0"))),
    }
}
