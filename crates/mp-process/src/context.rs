//! Start methods and contexts (Python's `get_context` / `set_start_method`).
use crate::target::Target;
use crate::{ProcessBuilder, ProcessError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

/// How a child process is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StartMethod {
    /// Re-execute this program (`/proc/self/exe`); the child starts fresh and runs only
    /// its target. Safe from any thread. The default.
    Spawn,
    /// Fork from a small server process that was itself spawned fresh, so children start
    /// fast and inherit nothing of the caller's state. Safe from any thread.
    Forkserver,
    /// Fork the caller. Fastest; the child starts with a copy of the caller's memory and
    /// its fds (as in Python), minus the library's own. Refused in a multi-threaded
    /// caller unless explicitly allowed.
    Fork,
}

impl StartMethod {
    /// Python's name for it.
    pub fn as_str(&self) -> &'static str {
        match self {
            StartMethod::Spawn => "spawn",
            StartMethod::Forkserver => "forkserver",
            StartMethod::Fork => "fork",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StartMethod {
    type Err = ProcessError;
    fn from_str(s: &str) -> Result<Self, ProcessError> {
        match s {
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::Forkserver),
            "fork" => Ok(StartMethod::Fork),
            other => Err(ProcessError::UnknownStartMethod(other.to_string())),
        }
    }
}

/// The environment variable that sets the default start method (handy for running a
/// whole test suite under each method).
pub const START_METHOD_ENV: &str = "MULTIPROC_START_METHOD";

static DEFAULT: Mutex<Option<StartMethod>> = Mutex::new(None);

pub(crate) fn default_lock() -> std::sync::MutexGuard<'static, Option<StartMethod>> {
    DEFAULT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the default start method. A second call fails unless `force` is true.
pub fn set_start_method(method: StartMethod, force: bool) -> Result<(), ProcessError> {
    let mut d = default_lock();
    if d.is_some() && !force {
        return Err(ProcessError::ContextAlreadySet);
    }
    *d = Some(method);
    Ok(())
}

/// The default start method: the one set by [`set_start_method`], else the
/// `MULTIPROC_START_METHOD` environment variable, else [`StartMethod::Spawn`]. In a
/// child, it is the method the child was started with (as if set with `force`).
pub fn get_start_method() -> StartMethod {
    let d = *default_lock();
    d.or_else(|| {
        std::env::var(START_METHOD_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
    })
    .unwrap_or(StartMethod::Spawn)
}

/// Every start method this platform supports (all three on Linux), the default first.
pub fn get_all_start_methods() -> Vec<StartMethod> {
    let d = get_start_method();
    let mut v = vec![d];
    v.extend(
        [
            StartMethod::Spawn,
            StartMethod::Forkserver,
            StartMethod::Fork,
        ]
        .into_iter()
        .filter(|m| *m != d),
    );
    v
}

/// A context bound to one start method: the same API as the crate, Python's
/// `multiprocessing.get_context(method)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
}

/// The context of `method`, or of the default start method for `None`.
pub fn get_context(method: Option<StartMethod>) -> Context {
    Context {
        method: method.unwrap_or_else(get_start_method),
    }
}

impl Context {
    /// This context's start method.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// A process builder that will use this context's start method.
    pub fn process<F, A>(&self, target: F, args: A) -> ProcessBuilder<F, A>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + 'static,
    {
        ProcessBuilder::new(target, args).start_method(self.method)
    }
}
