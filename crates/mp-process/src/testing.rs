//! Hooks for this crate's own tests, which put a helper in a state that is otherwise
//! only reached by chance (a crash at one precise point). Not part of the API: hidden,
//! and each hook applies only to the calling thread's next request.
use std::cell::Cell;

thread_local! {
    static DIE_AFTER_FORK: Cell<bool> = const { Cell::new(false) };
    static SIGNAL_AT_START: Cell<bool> = const { Cell::new(false) };
    static SIGNALLED: Cell<Option<i32>> = const { Cell::new(None) };
}

/// The next child this thread asks a server for (the forkserver or a fork template) is
/// forked, and then the server is killed (SIGKILL) before it replies, as a crash there
/// would.
pub fn server_dies_after_next_fork() {
    DIE_AFTER_FORK.with(|c| c.set(true));
}

/// The next forkserver this thread starts is sent SIGINT and SIGTERM as soon as it is
/// spawned; [`signalled_server`] then gives its pid.
pub fn signal_next_server_at_start() {
    SIGNAL_AT_START.with(|c| c.set(true));
}

/// The pid of the last forkserver that [`signal_next_server_at_start`] signalled.
pub fn signalled_server() -> Option<i32> {
    SIGNALLED.with(Cell::get)
}

/// Whether this request is to end the server after its fork (and clears the hook).
pub(crate) fn take_die_after_fork() -> bool {
    DIE_AFTER_FORK.with(|c| c.replace(false))
}

/// Signals a server just started, if the hook is set (and clears it).
pub(crate) fn maybe_signal_at_start(pid: rustix::process::Pid) {
    if SIGNAL_AT_START.with(|c| c.replace(false)) {
        for sig in [rustix::process::Signal::INT, rustix::process::Signal::TERM] {
            let _ = rustix::process::kill_process(pid, sig);
        }
        SIGNALLED.with(|c| c.set(Some(pid.as_raw_nonzero().get())));
    }
}
