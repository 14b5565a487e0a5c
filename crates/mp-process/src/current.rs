//! What a process knows of itself and its family: `current_process()`,
//! `parent_process()`, `active_children()`, `cpu_count()`.
use rustix::event::{poll, PollFd, PollFlags};
use rustix::time::Timespec;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a process is, as its parent named it.
#[derive(Clone, Debug)]
pub(crate) struct ProcState {
    pub initialized: bool,
    pub name: String,
    pub identity: Vec<u32>,
    pub daemon: bool,
    pub authkey: [u8; 32],
    pub counter: u32,
    pub parent: Option<ParentProcess>,
}

pub(crate) static STATE: Mutex<ProcState> = Mutex::new(ProcState {
    initialized: false,
    name: String::new(),
    identity: Vec::new(),
    daemon: false,
    authkey: [0; 32],
    counter: 0,
    parent: None,
});

pub(crate) fn state() -> std::sync::MutexGuard<'static, ProcState> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The calling process, Python's `multiprocessing.current_process()`.
#[derive(Clone, Debug)]
pub struct CurrentProcess {
    /// "MainProcess" in the program's first process; the name its parent gave it in a
    /// child ("Process-N" by default, "Process-N:M" for a grandchild).
    pub name: String,
    /// The OS process id.
    pub pid: i32,
    /// Whether this process is a daemon.
    pub daemon: bool,
    /// The counters that name this process in its tree (empty in the main process).
    pub identity: Vec<u32>,
    /// A per-tree secret: 32 random bytes in the main process, inherited by children
    /// (used as the default authkey of Listener/Client).
    pub authkey: [u8; 32],
}

/// The calling process's name, pid and place in its process tree.
pub fn current_process() -> CurrentProcess {
    let s = state();
    let name = if s.name.is_empty() {
        "MainProcess".to_string()
    } else {
        s.name.clone()
    };
    CurrentProcess {
        name,
        pid: rustix::process::getpid().as_raw_nonzero().get(),
        daemon: s.daemon,
        identity: s.identity.clone(),
        authkey: s.authkey,
    }
}

/// A child's view of its parent, Python's `multiprocessing.parent_process()`.
#[derive(Clone, Debug)]
pub struct ParentProcess {
    /// The parent's pid.
    pub pid: i32,
    /// The parent's name.
    pub name: String,
    pub(crate) pidfd: Option<Arc<OwnedFd>>,
}

impl ParentProcess {
    /// Whether the parent is still running (its pidfd is not yet readable).
    pub fn is_alive(&self) -> bool {
        !self.wait_timeout(Duration::ZERO)
    }

    /// Waits up to `timeout` for the parent to exit; true if it has.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let Some(fd) = &self.pidfd else { return true };
        let mut fds = [PollFd::new(&**fd, PollFlags::IN)];
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
    }
}

/// The parent of the calling process: `None` in the main process.
pub fn parent_process() -> Option<ParentProcess> {
    state().parent.clone()
}

/// The number of CPUs this process may run on (its CPU affinity mask), at least 1.
pub fn cpu_count() -> usize {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => set.count().max(1) as usize,
        Err(_) => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    }
}

/// The number of threads of the calling process (from `/proc/self/stat`).
pub(crate) fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(17)?.parse().ok())
        })
        .unwrap_or(usize::MAX)
}
