//! The errors of this crate.
use std::sync::Arc;

/// What can go wrong with a [`Pool`](crate::Pool) or one of its results.
///
/// Variants follow Python where they map: [`NotRunning`](PoolError::NotRunning) is
/// `ValueError('Pool not running')`, [`Timeout`](PoolError::Timeout) is
/// `multiprocessing.TimeoutError`, [`BrokenWorker`](PoolError::BrokenWorker) is the
/// `BrokenProcessPool` of `concurrent.futures` (but only the affected tasks fail; the
/// pool replaces the worker and keeps serving). It is `Clone`, so one failure can be
/// handed to every task it touches.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A pool needs at least one worker process.
    #[error("number of processes must be at least 1")]
    NoProcesses,
    /// A chunksize of 0 was given.
    #[error("chunksize must be at least 1")]
    ZeroChunksize,
    /// `maxtasksperchild` of 0 was given.
    #[error("maxtasksperchild must be at least 1")]
    ZeroMaxTasks,
    /// Submitting to a pool after `close()` or `terminate()`.
    #[error("Pool not running")]
    NotRunning,
    /// `join()` on a pool that was neither closed nor terminated.
    #[error("Pool is still running: call close() or terminate() before join()")]
    StillRunning,
    /// The task panicked in its worker; the other tasks are not affected.
    #[error("the task panicked at {}: {message}", location.as_deref().unwrap_or("<unknown location>"))]
    Panicked {
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
    },
    /// The worker process running the task died (killed, aborted, crashed) before it
    /// reported the result. The pool has started a replacement and keeps serving.
    #[error("worker {name} (pid {pid}) died before reporting the task's result: {}", how(*exitcode))]
    BrokenWorker {
        /// The dead worker's pid.
        pid: i32,
        /// The dead worker's name (`SpawnPoolWorker-3` ...).
        name: String,
        /// Python's exitcode: the exit code, or `-N` for signal N (`None` if unknown).
        exitcode: Option<i32>,
    },
    /// After `close()`, with every task done, a worker did not exit within 30 s of being
    /// told to: it was killed, and `join()` reports it (the first such worker).
    #[error("worker {name} (pid {pid}) did not exit within 30 s of close(), with no task left; it was killed")]
    StuckWorker {
        /// The worker's pid.
        pid: i32,
        /// The worker's name.
        name: String,
    },
    /// The pool was terminated (or dropped) before the task finished.
    #[error("the pool was terminated before the task finished")]
    Terminated,
    /// A `get_timeout` or `next_timeout` ran out of time; the task keeps running.
    #[error("timed out waiting for the result")]
    Timeout,
    /// `successful()` on a result that is not ready yet.
    #[error("the result is not ready")]
    NotReady,
    /// The result was already taken by an earlier `get`.
    #[error("the result was already taken by an earlier get")]
    AlreadyTaken,
    /// The task's arguments could not be serialized; nothing was submitted.
    #[error("could not serialize the task's arguments (nothing was submitted): {0}")]
    Encode(String),
    /// The task's result arrived but could not be deserialized.
    #[error("could not deserialize the task's result: {0}")]
    Decode(String),
    /// The worker could not run the task (its arguments did not decode there, or its
    /// result could not be serialized: Python's `MaybeEncodingError`).
    #[error("the worker could not run the task: {0}")]
    Worker(String),
    /// The input iterator of a `try_` method failed; results before it were kept (for
    /// `try_imap`) and the pool stays usable.
    #[error("the input iterator failed: {0}")]
    Input(Arc<dyn std::error::Error + Send + Sync>),
    /// The pool's initializer failed in a worker; the pool cannot run tasks any more.
    #[error("the pool's initializer failed in worker {name}: {message}")]
    Initializer {
        /// The worker it failed in.
        name: String,
        /// The panic message, or what else went wrong.
        message: String,
        /// Where it panicked, when known.
        location: Option<String>,
    },
    /// A worker process could not be started.
    #[error("could not start a worker process: {0}")]
    Start(String),
    /// Talking to a worker failed in an unexpected way.
    #[error("pool I/O error: {0}")]
    Io(String),
}

fn how(exitcode: Option<i32>) -> String {
    match exitcode {
        Some(c) if c < 0 => format!("killed by signal {} ({})", -c, signal_name(-c)),
        Some(c) => format!("exited with code {c}"),
        None => "its exit status is unknown".into(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

impl PoolError {
    /// For [`PoolError::BrokenWorker`]: the signal that killed the worker, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self {
            PoolError::BrokenWorker {
                exitcode: Some(c), ..
            } if *c < 0 => Some(-c),
            _ => None,
        }
    }
}

/// `Result` with [`PoolError`].
pub type Result<T, E = PoolError> = std::result::Result<T, E>;
