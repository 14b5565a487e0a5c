//! Python's `multiprocessing.Pool` for Rust: `map`, `imap`, `imap_unordered`,
//! `starmap`, `apply` and their `_async` forms over worker processes, with no hang when
//! a worker dies.
//!
//! ```
//! use mp_pool::{Pool, PoolError};
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), PoolError> {
//!     mp_process::init(); // first line of main: in a worker, this runs the worker
//!     let pool = Pool::builder().processes(2).build()?;
//!     assert_eq!(pool.map(square, 0..10u64)?, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
//!     let mut r = pool.apply_async(|a: u64, b: u64| a + b, (2, 3))?;
//!     assert_eq!(r.get()?, 5);
//!     let lazy: Vec<u64> = pool.imap(square, 1..4u64)?.collect::<Result<_, _>>()?;
//!     assert_eq!(lazy, [1, 4, 9]);
//!     Ok(()) // dropping the pool terminates it, as Python's `with Pool() as p:`
//! }
//! ```
//!
//! # The API
//!
//! - [`Pool::new`]`(n)` or [`Pool::builder`] (processes, start method, initializer with
//!   its arguments, maxtasksperchild). `n = 0` is an error; the default is
//!   [`mp_process::cpu_count`].
//! - Tasks are `fn` items or non-capturing closures, as for `mp_process::Process`;
//!   arguments and results are `Serialize + DeserializeOwned`, and values holding fds
//!   (a Connection, a Lock, a Value, a Queue ...) travel with their fds.
//! - [`Pool::map`] (Python's default chunksize `ceil(len / (4 * processes))`, or
//!   [`Pool::map_with_chunksize`]), [`Pool::map_async`], [`Pool::starmap`],
//!   [`Pool::starmap_async`], [`Pool::apply`], [`Pool::apply_async`], each `_async`
//!   returning an [`AsyncResult`] (`get`, `get_timeout`, `wait`, `wait_timeout`,
//!   `ready`, `successful`); `_with` forms take [`Callbacks`] (success and error),
//!   run in the pool's handler thread.
//! - [`Pool::imap`] and [`Pool::imap_unordered`] (chunksize 1 by default): lazy, with a
//!   bounded number of items in flight, so a long input runs in bounded memory. Each
//!   item is a `Result`: one failing task does not end the iteration.
//! - Fallible input: [`Pool::try_map`] returns the input's first error before
//!   submitting anything; [`Pool::try_imap`] yields the results before the error, then
//!   the error, then ends. The pool stays usable either way.
//! - [`Pool::close`], [`Pool::join`] (an error while running), [`Pool::terminate`];
//!   dropping a pool terminates it. Submitting after close is [`PoolError::NotRunning`].
//!
//! # Errors
//!
//! A task that panics fails alone, with [`PoolError::Panicked`] (message and
//! location); the other tasks of the same `map` complete, and `map` returns the first
//! failure in input order (as Python raises the first failing task's exception).
//! Arguments that fail to serialize are an error in the caller and nothing is submitted.
//!
//! Beyond Python: a worker that dies in the middle of a task (SIGKILL, abort, a
//! segfault) makes that task fail at once with [`PoolError::BrokenWorker`], naming the
//! worker, its pid and its exit code; a new worker replaces it and the pool keeps
//! serving. CPython's pool hangs for ever there (bpo-22393).
//!
//! # Design
//!
//! - **One duplex pipe per worker**, no shared queue: a worker killed mid-task cannot
//!   corrupt a queue shared with others, nor die holding a lock they need.
//! - **Tasks are chunks.** A job (one `map`, one `apply` ...) is split into chunks;
//!   the caller's thread encodes each chunk once (`mp_core::handles`, so fds travel)
//!   and a chunk is one message each way. The worker runs a chunk through one
//!   `mp_process::RemoteTarget` call that loops over its items and catches a panic per
//!   item, so a panicking item fails only itself. Results come back as one encoded
//!   `Vec<Result<R, _>>` per chunk.
//! - **The parent**: one handler thread reads every worker's pipe and watches every
//!   worker's pidfd, waiting on all of them (and an eventfd for status changes) with one
//!   `epoll`. Submitting threads and the handler dispatch under one mutex, sending
//!   batches of chunks straight to workers. A thread waiting in `get` for a one-task
//!   job (an `apply`) without callbacks reads that worker's pipe itself, which leaves
//!   the handler's epoll set meanwhile: the reply takes one hop back, not two through
//!   the handler, and the handler is not woken for it. It watches the worker's pidfd
//!   too, so a death still fails the task at once (the handler reports it).
//! - **Pipelining**: each worker is given up to about 1 ms of queued work (estimated
//!   from its recent task times, between 2 and 64 chunks), batched in one message, and
//!   it batches the replies of short tasks (for at most 200 us), so short tasks cost
//!   no system call each, while long tasks are handed out two at a time for balance.
//!   What is in flight to a worker is kept under half its socket buffer, so a send
//!   never blocks on a worker that is itself waiting for the handler.
//! - **Wake-ups**: waking a sleeping thread on an idle vCPU costs tens of us, more than
//!   a short task. When another CPU is free (the affinity mask holds more than one), a
//!   reader in `get` and the handler while a reply is due poll for at most 50 us
//!   before they sleep. Nothing else spins, and nothing sleeps on a timer.
//! - **Dead workers**: end of file on its pipe or its pidfd readable. Each worker
//!   writes, in a shared-memory word, which task it is running; when it dies, the task
//!   it was running (and any it finished but had not yet reported) fails with
//!   [`PoolError::BrokenWorker`], and the tasks it had not started go to another worker.
//!   A task is never run twice. The dead worker is reaped and replaced. Workers that
//!   keep dying before they are ready break the pool with an error rather than loop.
//! - **maxtasksperchild**: a worker is sent at most that many tasks and exits after
//!   them; the handler sees it go and starts a replacement.
//! - **Initializer**: run once per worker before its first task. If it panics, the pool
//!   is broken: pending and later tasks fail with [`PoolError::Initializer`] (as
//!   `concurrent.futures` does; CPython's `Pool` restarts workers for ever).
//! - **fork**: the first workers are started before the handler thread exists, so the
//!   `fork` start method sees a single-threaded parent (or is refused, as
//!   `mp_process` does, unless [`PoolBuilder::allow_fork_with_threads`]). Replacements
//!   are forked by the handler thread with `allow_fork_with_threads`: the child runs
//!   only the worker loop; glibc's `fork` keeps `malloc` usable in the child; the
//!   forking thread holds none of the pool's locks; and the pool's other state is never
//!   touched in the child. What remains is a lock held at that instant by another
//!   thread of *your* program (stdout, a mutex of yours) that a task then takes: use
//!   `spawn` or `forkserver` if your tasks need such locks in a threaded program.
//! - **terminate** (and drop) fails every unfinished task with
//!   [`PoolError::Terminated`], sends SIGTERM to the workers (SIGKILL after 2 s) and
//!   reaps them; **close** + **join** lets every task finish, then closes the pipes,
//!   which the workers take as their cue to exit.
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod imap;
mod pool;
mod result;
mod wire;
mod worker;

pub use error::{PoolError, Result};
pub use imap::{IMapIter, IMapUnorderedIter};
pub use pool::{BoxError, Pool, PoolBuilder};
pub use result::{AsyncResult, Callbacks};
