//! Forking: the child of `fork` (or of the forkserver) inherits every fd of its parent, at
//! the same numbers, as in Python, except the library's private ones
//! ([`mp_core::PrivateFd`]: pidfds, the parent's ends of bootstrap sockets, the
//! forkserver's control socket, the parent pidfd of a child), which it neutralises first
//! thing; its bootstrap socket stays at the number it had in the parent, close-on-exec.
//!
//! The library's own locks (this crate's, and those registered with
//! `mp_core::inherit::hold_across_fork`) are held across the fork ([`ForkLocks`]), so that a child forked
//! while another thread used one (possible only with `allow_fork_with_threads`) never
//! finds it held for ever. [`fork_then`] is the one place this process forks itself (for
//! a child, or for a [`crate::ForkTemplate`]).
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

/// Every lock of this crate's that a forked child uses, taken in this fixed order, then
/// those other crates registered with `mp_core::inherit` (and its own). No other code path
/// holds two of this crate's at once, nor takes another crate's while holding one of
/// them, so taking them all cannot deadlock.
pub(crate) struct ForkLocks {
    /// Held only: a guard is released when dropped.
    _state: MutexGuard<'static, ProcState>,
    _default: MutexGuard<'static, Option<StartMethod>>,
    children: MutexGuard<'static, Vec<Arc<ChildEntry>>>,
    server: MutexGuard<'static, Option<Server>>,
    /// Other crates' locks and `mp_core::inherit`'s (see `mp_core::inherit::hold_for_fork`).
    library: Option<mp_core::inherit::ForkHeld>,
}

impl ForkLocks {
    /// Waits for every other thread to leave them (a forkserver request may hold one for
    /// up to its reply bound).
    pub(crate) fn take() -> ForkLocks {
        let state = crate::current::state();
        let default = crate::context::default_lock();
        let children = crate::process::children();
        let server = crate::forkserver::server_lock();
        let library = Some(mp_core::inherit::hold_for_fork());
        ForkLocks {
            _state: state,
            _default: default,
            children,
            server,
            library,
        }
    }

    /// In the child: releases the locks, then drops the parent's records of its children
    /// and forkserver (their fds are placeholders by now, so only those are closed; they
    /// are not this child's).
    pub(crate) fn release_in_child(mut self) {
        let children = std::mem::take(&mut *self.children);
        let server = self.server.take();
        // Other crates' locks first: their owners may take mp_core::inherit's after them.
        drop(self.library.take());
        drop(self);
        drop((children, server));
    }
}

/// In a freshly forked child: neutralises every private fd but `keep`, lets go of the
/// parent's records, and takes ownership of `keep`, where it already is. The user's fds
/// stay open. Exits the child (with [`child::EXIT_BOOTSTRAP`]) if that fails.
///
/// # Safety
///
/// Call it only in the child of a `fork` (or of a `clone` without `CLONE_VM`), before it
/// starts a thread, and with `keep` owned by a frame of the parent's code
/// (ProcessBuilder::start, the forkserver's loop, ForkTemplate::start) that the child
/// never returns to, unwinds or drops: the returned `PrivateFd` becomes the fd's only
/// owner.
pub(crate) unsafe fn settle_in_child(keep: &PrivateFd, locks: ForkLocks) -> PrivateFd {
    // SAFETY: the child of a fork runs one thread, this one (this function's contract).
    if unsafe { mp_core::private_fd::neutralize_inherited(&[keep.as_fd()]) }.is_err() {
        // SAFETY: ends the child at once, dropping nothing (see neutralize_inherited).
        unsafe { libc::_exit(child::EXIT_BOOTSTRAP) }
    }
    locks.release_in_child();
    // SAFETY: `keep` is owned by a frame of the parent's code that this child never
    // returns to, unwinds or drops (this function's contract): from now on the child's
    // new owner is the only one.
    let own = unsafe { OwnedFd::from_raw_fd(keep.as_raw_fd()) };
    match PrivateFd::new(own) {
        Ok(fd) => fd,
        // SAFETY: as above.
        Err(_) => unsafe { libc::_exit(child::EXIT_BOOTSTRAP) },
    }
}

/// In a freshly forked child (of this process, of the forkserver or of a fork template):
/// settles in (see [`settle_in_child`]) and runs the child with `sock` as its bootstrap
/// socket. Never returns.
///
/// # Safety
///
/// As for [`settle_in_child`], with `sock` as `keep`.
pub(crate) unsafe fn after_fork(sock: &PrivateFd, locks: ForkLocks) -> ! {
    // SAFETY: this function's contract is settle_in_child's.
    child::child_main(unsafe { settle_in_child(sock, locks) })
}

/// Refuses to fork a process that runs other threads, unless `allow_threads`.
///
/// A thread that was just joined may still be counted for a moment (the kernel wakes the
/// joiner before it takes the exiting thread off the count), so a count above one is
/// read again for up to [`EXITING_THREAD_GRACE`] before the fork is refused.
pub(crate) fn check_threads(allow_threads: bool) -> Result<(), ProcessError> {
    if allow_threads {
        return Ok(());
    }
    let until = std::time::Instant::now() + EXITING_THREAD_GRACE;
    loop {
        let threads = crate::current::thread_count().map_err(ProcessError::ThreadCountUnknown)?;
        if threads <= 1 {
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            return Err(ProcessError::ForkWithThreads { threads });
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// How long a fork waits for threads that are exiting to leave the count.
const EXITING_THREAD_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// Forks the calling process (refused with other threads running, unless
/// `allow_threads`), with this crate's locks held across the fork; the child runs
/// `in_child`, which must never return.
pub(crate) fn fork_then(
    allow_threads: bool,
    in_child: impl FnOnce(ForkLocks),
) -> Result<Pid, ProcessError> {
    check_threads(allow_threads)?;
    // Unflushed output would otherwise be written twice, once by each process.
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
    }
    let locks = ForkLocks::take();
    // SAFETY: fork in a single-threaded process (checked above, or explicitly allowed
    // by the caller, who takes on that other threads' locks may be held); the child
    // only runs `in_child`, and never returns into the caller's frames.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        in_child(locks);
        // SAFETY: `in_child` never returns; should it, the child ends here, running
        // nothing of its parent's.
        unsafe { libc::_exit(child::EXIT_BOOTSTRAP) }
    }
    let err = io::Error::last_os_error();
    drop(locks);
    match pid {
        -1 => Err(ProcessError::Start(err)),
        pid => Pid::from_raw(pid)
            .ok_or_else(|| ProcessError::Start(io::Error::other("fork returned pid 0"))),
    }
}

/// Forks the calling process; the child runs its task and exits.
pub(crate) fn fork(fd: &PrivateFd, allow_threads: bool) -> Result<Pid, ProcessError> {
    // SAFETY: the closure runs in the child of fork_then's fork, first thing; `fd` is
    // owned by ProcessBuilder::start's frame, which that child never returns to.
    fork_then(allow_threads, |locks| unsafe { after_fork(fd, locks) })
}
