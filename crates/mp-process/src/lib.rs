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
//! - **Fork templates**: a [`ForkTemplate`] is a single-threaded copy of the program
//!   made while it still runs one thread; children forked from it later
//!   ([`ProcessBuilder::fork_from`]), from any thread, are `fork` children that see the
//!   program as it was then. A library (a pool replacing a worker) uses one rather than
//!   fork a multi-threaded program behind its back.
//! - **Outcomes** stay apart: `Ok(value)`, [`ProcessError::Panicked`] (message and
//!   location; exit code 1), [`ProcessError::Exited`], [`ProcessError::Signaled`].
//!   [`Process::exitcode`] follows Python: 0, N, or -N for signal N.
//! - **Exit**: when `main` returns, daemon children are terminated and the others are
//!   joined, as in Python; a daemon child also dies if its parent is killed.
//! - **A child's own start method**: in a child, [`get_start_method`] returns the method
//!   it was started with, and its own children use that method unless told otherwise.
//!
//! # Descriptors and fork
//!
//! - Under `fork`, a child inherits every fd of its parent, at the same number, as in
//!   Python: a file or socket the parent keeps (in a static, say) is open and usable in
//!   the child. Under `spawn` and `forkserver` a child inherits none: only what is passed
//!   as an argument (a Connection, `mp_core::Handle(file)` ...) reaches it, over its
//!   bootstrap socket.
//! - The library's own fds (pidfds, both ends of each bootstrap socket, the forkserver's
//!   control socket, a child's pidfd of its parent) are [`mp_core::PrivateFd`]s: they
//!   never collide with the user's numbers, are close-on-exec, so a program a child starts
//!   with `std::process::Command` inherits none of them (and a child that dies is seen at
//!   once even if its own children live on), and every forked child lets go of those it
//!   does not own, first thing. A handle copied into a forked child with the parent's
//!   memory (a `Process` kept in a static) is then inert there: its I/O fails, and it
//!   never touches a descriptor of the child's.
//! - Library handles that the whole process tree shares (the shared-memory tracker's
//!   socket, offered through [`mp_core::inherit`]) reach every child with its bootstrap,
//!   under every start method, after the argument fds; the child receives them as private
//!   fds before its target runs. Under `fork` the parent's copy is let go of like any
//!   private fd, and the child uses the one in its bootstrap.
//! - Helpers (the forkserver, a fork template) hold SIGINT and SIGTERM blocked (the
//!   forkserver from its first instruction: it is spawned with that mask), so a Ctrl-C
//!   meant for the program does not stop them; they leave when their owner does.
//!   Their children start with the signal mask of a spawned child (empty) or of the
//!   thread that made the template.
//! - `fork` with other threads running is refused unless allowed
//!   ([`ProcessBuilder::allow_fork_with_threads`]). This crate's own locks, and those
//!   registered with [`mp_core::inherit::hold_across_fork`] (mp-shm's tracker state,
//!   `mp_core::inherit`'s own), are held across the fork, so the child never inherits one
//!   of them held; other locks (yours, those of other libraries) may be.
//!
//! How the child finds its function: each target is monomorphised into a trampoline;
//! the parent sends the trampoline's offset from an anchor function together with the
//! identity of the executable, a hash of the type names, and a tag (HMAC-SHA256 of the
//! three under a secret that only this process tree holds). The child checks the
//! executable and the tag before it calls anything, and the trampoline checks the hash,
//! so a mismatch, an altered or a forged [`RemoteTarget`] is an error and never
//! undefined behaviour. Targets must live in the main executable: linking mp-process as
//! a shared library makes [`ProcessBuilder::start`] fail with [`ProcessError::Target`].
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod child;
mod context;
mod current;
mod error;
mod fork;
mod forkserver;
#[doc(hidden)]
pub mod fuzzing;
mod launch;
mod process;
mod secret;
mod target;
mod template;
#[doc(hidden)]
pub mod testing;
mod wire;

pub use context::{
    get_all_start_methods, get_context, get_start_method, set_start_method, Context, StartMethod,
    START_METHOD_ENV,
};
pub use current::{cpu_count, current_process, parent_process, CurrentProcess, ParentProcess};
pub use error::ProcessError;
pub use forkserver::forkserver_pid;
pub use process::{active_children, init, ChildInfo, ExitStatus, Process, ProcessBuilder};
pub use rustix::process::Signal;
pub use target::{RemoteTarget, Target};
pub use template::ForkTemplate;
