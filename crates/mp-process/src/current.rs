//! What a process knows of itself and its family: `current_process()`,
//! `parent_process()`, `active_children()`, `cpu_count()`.
use mp_core::PrivateFd;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::time::Timespec;
use std::io;
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
    /// Why the main process has no authkey (random bytes could not be read at init):
    /// then no child may start.
    pub authkey_error: Option<String>,
    pub counter: u32,
    pub parent: Option<ParentProcess>,
}

pub(crate) static STATE: Mutex<ProcState> = Mutex::new(ProcState {
    initialized: false,
    name: String::new(),
    identity: Vec::new(),
    daemon: false,
    authkey: [0; 32],
    authkey_error: None,
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
    /// (used as the default authkey of Listener/Client). Should the operating system
    /// refuse random bytes at `init()`, it stays all zeros and starting a child fails
    /// with [`ProcessError::Authkey`](crate::ProcessError::Authkey).
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
    pub(crate) pidfd: Option<Arc<PrivateFd>>,
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
pub(crate) fn thread_count() -> io::Result<usize> {
    parse_thread_count(&std::fs::read_to_string("/proc/self/stat")?)
}

/// The thread count in the text of a `/proc/<pid>/stat` file (field 20).
fn parse_thread_count(stat: &str) -> io::Result<usize> {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17)?.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/self/stat has no thread count where expected",
            )
        })
}

/// 32 random bytes from the kernel (see [`mp_core::random::fill`]).
pub(crate) fn random_key() -> io::Result<[u8; 32]> {
    mp_core::random::bytes::<32>()
}

/// This process tree's secret, or why there is none.
pub(crate) fn authkey() -> Result<[u8; 32], crate::ProcessError> {
    let s = state();
    match &s.authkey_error {
        Some(why) => Err(crate::ProcessError::Authkey(why.clone())),
        None => Ok(s.authkey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_is_read_or_the_cause_is_said() {
        assert!(thread_count().is_ok_and(|n| n >= 1));
        let stat = "12 (a (strange) name) S 1 12 12 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 7 0 1";
        assert_eq!(parse_thread_count(stat).unwrap(), 7);
        let e = parse_thread_count("12 (cut").unwrap_err();
        let msg = crate::ProcessError::ThreadCountUnknown(e).to_string();
        assert!(msg.contains("could not be read"), "{msg}");
        assert!(!msg.contains("18446744073709551615"), "{msg}");
    }

    #[test]
    fn no_child_starts_without_an_authkey() {
        fn noop() {}
        {
            let mut s = state();
            s.initialized = true;
            s.authkey_error = Some("getrandom: function not implemented".into());
        }
        let r = crate::Process::new(noop, ()).start();
        state().authkey_error = None;
        match r {
            Err(crate::ProcessError::Authkey(m)) => assert!(m.contains("not implemented")),
            other => panic!("expected the authkey error, got {other:?}"),
        }
    }

    #[test]
    fn random_keys_differ() {
        let (a, b) = (random_key().unwrap(), random_key().unwrap());
        assert_ne!(a, b);
        assert_ne!(a, [0; 32]);
    }
}
