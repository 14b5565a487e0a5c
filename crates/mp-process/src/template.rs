//! [`ForkTemplate`]: a single-threaded copy of this process, forked at one moment, from
//! which children are forked later, from any thread, with no thread check.
//!
//! A library that starts processes under `fork` from a thread of its own (a pool replacing
//! a worker) would otherwise fork a multi-threaded process behind the user's back. Instead
//! it makes a template while the program is still single-threaded. The template runs the
//! forkserver's request loop ([`crate::forkserver::serve_requests`]): each child is forked
//! from it with `CLONE_PARENT`, so it is the owner's child (waited for with the owner's
//! own pidfd, listed by [`crate::active_children`], joined at exit, as any child), and it
//! starts as any forked child does, with the program's memory and fds as they were when
//! the template was made.
use crate::current::state;
use crate::error::ProcessError;
use crate::fork::{fork_then, settle_in_child, ForkLocks};
use crate::forkserver::{
    ask, block_stop_signals, leave, reap_orphan, serve_requests, set_signal_mask,
};
use mp_core::PrivateFd;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_send_signal, waitid, Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the drop of a template waits for it to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A single-threaded copy of this process, made now, from which children are forked
/// later ([`ProcessBuilder::fork_from`](crate::ProcessBuilder::fork_from)), from any
/// thread: the `fork` start method for a program that will have threads by then.
///
/// ```
/// use mp_process::{init, ForkTemplate, Process, ProcessError};
///
/// fn double(x: u32) -> u32 {
///     x * 2
/// }
///
/// fn main() -> Result<(), ProcessError> {
///     init();
///     // While this program runs one thread:
///     let template = ForkTemplate::new()?;
///     // From now on, other threads are no obstacle.
///     let mut p = std::thread::spawn(move || {
///         Process::new(double, (21,)).fork_from(&template).start()
///     })
///     .join()
///     .expect("the thread")?;
///     assert_eq!(p.join()?, 42);
///     Ok(())
/// }
/// ```
///
/// - A child forked from a template sees the program's memory and fds as they were when
///   the template was made (not as they are when the child starts), as a fork then would;
///   it is this process's child, and [`Process::start_method`](crate::Process::start_method)
///   says `fork`.
/// - The template holds the user's fds of that moment for as long as it lives (as a
///   child forked then would), none of the library's private ones, and no thread but its
///   own. It blocks SIGINT and SIGTERM (its children start with the signal mask of the
///   thread that made it), and leaves when its owner exits: it never outlives the
///   program, is not one of its [`active_children`](crate::active_children), and the
///   program's exit does not wait for it.
/// - Handles are cheap clones of one template, which is killed and reaped when the last
///   is dropped. Requests from several threads are served one at a time.
/// - A template that died (killed by someone) is not replaced: starting a child from it
///   fails with [`ProcessError::ForkTemplate`].
#[derive(Clone)]
pub struct ForkTemplate {
    inner: Arc<Inner>,
}

struct Inner {
    pid: Pid,
    pidfd: PrivateFd,
    /// The control socket, or why the template can no longer be used.
    control: Mutex<Result<PrivateFd, String>>,
}

impl std::fmt::Debug for ForkTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkTemplate")
            .field("pid", &self.inner.pid)
            .finish_non_exhaustive()
    }
}

impl ForkTemplate {
    /// Forks the template now, from the calling thread.
    ///
    /// Fails when `init()` was not called, in a daemon process, and, as the `fork` start
    /// method does, when this process runs other threads (see
    /// [`new_allowing_threads`](Self::new_allowing_threads)).
    pub fn new() -> Result<ForkTemplate, ProcessError> {
        Self::start(false)
    }

    /// As [`new`](Self::new), in a process that may run other threads: the template gets
    /// a copy of memory in which another thread may hold a lock (stdout's, another
    /// library's, one of yours) that no child forked from it can ever take (see
    /// [`ProcessBuilder::allow_fork_with_threads`](crate::ProcessBuilder::allow_fork_with_threads)).
    pub fn new_allowing_threads() -> Result<ForkTemplate, ProcessError> {
        Self::start(true)
    }

    fn start(allow_threads: bool) -> Result<ForkTemplate, ProcessError> {
        {
            let s = state();
            if !s.initialized {
                return Err(ProcessError::NotInitialized);
            }
            if s.daemon {
                return Err(ProcessError::DaemonCannotHaveChildren);
            }
        }
        let (ours, theirs) = crate::process::channel()?;
        let owner = rustix::process::getpid();
        // Blocked across the fork, so the template never runs a handler of the program's
        // for them; this thread gets its mask back at once.
        let mask = block_stop_signals();
        // SAFETY: the closure runs first thing in the child of fork_then's fork; `theirs`
        // is owned by this frame, which that child never returns to (template_main
        // never returns).
        let forked = fork_then(allow_threads, |locks| unsafe {
            template_main(&theirs, owner, locks, mask)
        });
        set_signal_mask(&mask);
        let pid = forked?;
        drop(theirs);
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty())
            .map_err(std::io::Error::from)
            .and_then(PrivateFd::new)
        {
            Ok(fd) => fd,
            Err(e) => {
                // Our own child, not reaped yet: its pid cannot have been reused.
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                let _ = waitid(WaitId::Pid(pid), WaitIdOptions::EXITED);
                return Err(ProcessError::Start(e));
            }
        };
        Ok(ForkTemplate {
            inner: Arc::new(Inner {
                pid,
                pidfd,
                control: Mutex::new(Ok(ours)),
            }),
        })
    }

    /// The template's pid (for diagnostics and tests).
    pub fn pid(&self) -> i32 {
        self.inner.pid.as_raw_nonzero().get()
    }

    /// Asks the template for a child: its pid and our end of its bootstrap channel.
    /// After a failure the template is done with (killed), and every later request fails.
    pub(crate) fn fork_child(&self) -> Result<(Pid, PrivateFd), ProcessError> {
        let mut control = self.inner.control.lock().unwrap_or_else(|p| p.into_inner());
        let (ours, theirs) = crate::process::channel()?;
        let asked = match &*control {
            Ok(c) => ask(c, &theirs),
            Err(why) => return Err(ProcessError::ForkTemplate(why.clone())),
        };
        match asked {
            Ok(pid) => Ok((pid, ours)),
            Err(e) => {
                let why = if self.exited() {
                    format!("it exited (pid {})", self.pid())
                } else {
                    format!("it failed (pid {}, now killed): {e}", self.pid())
                };
                // Its reply may still come: the socket is never read again.
                *control = Err(why.clone());
                let _ = pidfd_send_signal(&self.inner.pidfd, Signal::KILL);
                // A child it forked before failing is ours: reaped, having run nothing.
                reap_orphan(ours, theirs);
                Err(ProcessError::ForkTemplate(why))
            }
        }
    }

    /// Whether the template process has exited.
    fn exited(&self) -> bool {
        let mut p = [PollFd::new(&self.inner.pidfd, PollFlags::IN)];
        let now = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut p, Some(&now)), Ok(n) if n > 0)
    }
}

impl Drop for Inner {
    /// Kills the template and reaps it. In a forked child that inherited this handle
    /// with its parent's memory, its fds are placeholders: nothing is signalled there.
    fn drop(&mut self) {
        let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
        let mut p = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let bound = rustix::time::Timespec {
            tv_sec: KILL_WAIT.as_secs() as i64,
            tv_nsec: 0,
        };
        loop {
            match poll(&mut p, Some(&bound)) {
                Err(rustix::io::Errno::INTR) => continue,
                Ok(n) if n > 0 => {
                    let _ = waitid(
                        WaitId::PidFd(self.pidfd.as_fd()),
                        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
                    );
                }
                _ => tracing::error!(pid = ?self.pid, "fork template still there after SIGKILL"),
            }
            break;
        }
    }
}

/// The template, right after the fork: lets go of the library's private fds but its
/// control socket, watches its owner, and serves requests until the owner or the
/// control socket goes. Never returns.
///
/// # Safety
///
/// As for [`settle_in_child`], with `control` as `keep`.
unsafe fn template_main(
    control: &PrivateFd,
    owner: Pid,
    locks: ForkLocks,
    child_mask: libc::sigset_t,
) -> ! {
    // SAFETY: this function's contract is settle_in_child's.
    let control = unsafe { settle_in_child(control, locks) };
    let Ok(watch) = rustix::process::pidfd_open(owner, PidfdFlags::empty()) else {
        leave(0)
    };
    // Reparented already: the owner died before it could be watched.
    if rustix::process::getppid() != Some(owner) {
        leave(0)
    }
    let Ok(watch) = PrivateFd::new(watch) else {
        leave(0)
    };
    serve_requests(control, Some(watch), child_mask)
}
