//! Run Rust functions in child processes: the Rust form of Python's
//! `multiprocessing.Process`, with the target's return value coming back to the parent.
//!
//! ```
//! use mp_process::{init, Process, ProcessError};
//!
//! fn worker(name: String, n: u64) -> String {
//!     format!("{name} computed {}", n * n)
//! }
//!
//! fn main() -> Result<(), ProcessError> {
//!     init(); // first line of main: in a child, this runs the task and exits
//!     let mut p = Process::new(worker, ("A".to_string(), 7)).name("Worker-A").start()?;
//!     assert_eq!(p.join()?, "A computed 49");
//!     assert_eq!(p.exitcode(), Some(0));
//!     Ok(())
//! }
//! ```
//!
//! - **Targets** are `fn` items or non-capturing closures (checked at compile time);
//!   arguments (a tuple) and the result are `Serialize + DeserializeOwned`. Values
//!   holding fds (a Connection, a Lock, `mp_core::Handle(file)`) travel too: their fds
//!   go beside the bytes.
//! - **Start methods** ([`StartMethod`]): `spawn` re-executes this program
//!   (`/proc/self/exe`) and is the default; `forkserver` forks from a small server that
//!   was itself spawned fresh; `fork` forks the caller and is refused in a
//!   multi-threaded caller unless allowed. Choose per process, through a [`Context`],
//!   with [`set_start_method`], or with the `MULTIPROC_START_METHOD` variable.
//! - **Outcomes** stay apart: `Ok(value)`, [`ProcessError::Panicked`] (message and
//!   location; exit code 1), [`ProcessError::Exited`], [`ProcessError::Signaled`].
//!   [`Process::exitcode`] follows Python: 0, N, or -N for signal N.
//! - **Exit**: when `main` returns, daemon children are terminated and the others are
//!   joined, as in Python; a daemon child also dies if its parent is killed.
//!
//! How the child finds its function: each target is monomorphised into a trampoline;
//! the parent sends the trampoline's offset from an anchor function together with the
//! identity of the executable, a hash of the type names, and a tag (HMAC-SHA256 of the
//! three under a secret that only this process tree holds). The child checks the
//! executable and the tag before it calls anything, and the trampoline checks the hash,
//! so a mismatch, an altered or a forged [`RemoteTarget`] is an error and never
//! undefined behaviour. Targets must live in the main executable: linking mp-process as
//! a shared library makes [`Process::start`] fail with [`ProcessError::Target`].
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod child;
mod context;
mod current;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod launch;
mod process;
mod secret;
mod target;
mod wire;

pub use context::{
    get_all_start_methods, get_context, get_start_method, set_start_method, Context, StartMethod,
    START_METHOD_ENV,
};
pub use current::{cpu_count, current_process, parent_process, CurrentProcess, ParentProcess};
pub use error::ProcessError;
pub use launch::forkserver_pid;
pub use process::{active_children, init, ChildInfo, ExitStatus, Process, ProcessBuilder};
pub use rustix::process::Signal;
pub use target::{RemoteTarget, Target};
