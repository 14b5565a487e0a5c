use std::time::Duration;

/// Why a process could not be started, or how it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// `init()` was not called at the top of `main` in this program.
    #[error(
        "multiproc is not initialized in this program: call `multiproc::init()` (or `mp_process::init()`) \
         as the first line of `main`, or put `#[multiproc::main]` on it; without it a child cannot find its task"
    )]
    NotInitialized,
    /// Daemon processes may not start children (as in Python).
    #[error("daemonic processes are not allowed to have children")]
    DaemonCannotHaveChildren,
    /// `fork` was asked for in a process that runs more than one thread.
    #[error(
        "refusing to fork: this process has {threads} threads, and a forked child could inherit a lock \
         held by one of them; use spawn or forkserver, or opt in with `.allow_fork_with_threads()`"
    )]
    ForkWithThreads {
        /// How many threads were running.
        threads: usize,
    },
    /// `fork` was asked for (without allowing threads) and this process's thread count
    /// could not be read, so it could not be checked.
    #[error(
        "refusing to fork: the number of threads of this process could not be read ({0}), so it \
         could not be checked that no other thread holds a lock a forked child would inherit; use \
         spawn or forkserver, or opt in with `.allow_fork_with_threads()`"
    )]
    ThreadCountUnknown(#[source] std::io::Error),
    /// The operating system refused random bytes at `init()`, so this process tree has
    /// no secret key; no child is started without one.
    #[error(
        "no child was started: this program has no secret key (authkey), since random bytes \
         could not be read when multiproc was initialized: {0}"
    )]
    Authkey(String),
    /// The arguments could not be serialized; no child was started.
    #[error("could not serialize the arguments (no child was started): {0}")]
    ArgsEncode(#[source] mp_core::Error),
    /// The child could not rebuild its task (arguments failed to deserialize, or the
    /// executable or the target did not match).
    #[error("the child could not start its task: {0}")]
    Bootstrap(String),
    /// A [`RemoteTarget`](crate::RemoteTarget) that this process may not call: altered,
    /// forged, made by another program or another run, or a target outside the main
    /// executable.
    #[error("not a callable target: {0}")]
    Target(String),
    /// Starting the child failed at the OS level.
    #[error("could not start the child process: {0}")]
    Start(#[source] std::io::Error),
    /// The forkserver could not be reached, even after restarting it.
    #[error("the forkserver is unavailable: {0}")]
    Forkserver(String),
    /// The [`ForkTemplate`](crate::ForkTemplate) could not fork the child: it exited or
    /// failed (it is not replaced).
    #[error("the fork template is unavailable: {0}")]
    ForkTemplate(String),
    /// The target panicked in the child (exit code 1).
    #[error("the child panicked at {}: {message}", location.as_deref().unwrap_or("<unknown location>"))]
    Panicked {
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
    },
    /// The child's return value could not be serialized.
    #[error("the child's result could not be serialized: {0}")]
    ResultEncode(String),
    /// The child's return value arrived but could not be deserialized.
    #[error("the child's result could not be deserialized: {0}")]
    ResultDecode(#[source] mp_core::Error),
    /// The child exited with this code before returning a value (e.g. `std::process::exit`).
    #[error("the child exited with code {0} before returning a value")]
    Exited(i32),
    /// The child was killed by this signal.
    #[error("the child was killed by signal {0} ({name})", name = signal_name(*.0))]
    Signaled(i32),
    /// `join_timeout` returned before the child finished; it is still running.
    #[error("the child is still running after {0:?}")]
    Timeout(Duration),
    /// The value was already returned by an earlier `join`.
    #[error("the child's result was already taken by an earlier join")]
    AlreadyJoined,
    /// An unknown start method name.
    #[error("cannot find context for '{0}' (expected spawn, forkserver or fork)")]
    UnknownStartMethod(String),
    /// `set_start_method` was called twice without `force`.
    #[error("context has already been set")]
    ContextAlreadySet,
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

impl From<rustix::io::Errno> for ProcessError {
    fn from(e: rustix::io::Errno) -> Self {
        ProcessError::Io(e.into())
    }
}

impl From<mp_core::Error> for ProcessError {
    fn from(e: mp_core::Error) -> Self {
        match e {
            mp_core::Error::Io(io) => ProcessError::Io(io),
            other => ProcessError::Io(std::io::Error::other(other)),
        }
    }
}
