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
//!   `close(); join()` returns as soon as every task is done and the workers have left
//!   (with exit code 0); another thread may `terminate()` while a `join` waits.
//!
//! # Errors
//!
//! A task that panics fails alone, with [`PoolError::Panicked`] (message and
//! location); the other tasks of the same `map` complete, and `map` returns the first
//! failure in input order (as Python raises the first failing task's exception).
//! Arguments that fail to serialize are an error in the caller and nothing is submitted.
//! A result that does not decode in the parent, or whose `Deserialize` panics there,
//! fails its task with [`PoolError::Decode`]; the pool keeps serving.
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
//! - **Start methods**: every worker, first or replacement, is started with the
//!   pool's start method. Under `spawn` and `forkserver` nothing forks the caller's
//!   process. Under `fork`, `build()` makes an [`mp_process::ForkTemplate`] (a
//!   single-threaded copy of the program) before the handler thread exists, so that
//!   fork sees a single-threaded program (or is refused, as `mp_process` does, unless
//!   [`PoolBuilder::allow_fork_with_threads`]); every worker, first or replacement, is
//!   forked from that template, never from the running (multi-threaded) program. So
//!   every worker sees the program's memory and fds as they were at `build()`, as in a
//!   fork made then (a replacement does not see what changed since). The template holds
//!   the fds the program had then for as long as the pool lives, as a worker forked then
//!   would; it is killed and reaped when the pool has stopped its workers.
//! - **Descriptors**: the parent holds 4 fds per worker (its end of the worker's pipe
//!   and a second descriptor of it for sending, the worker's pidfd, and the socket
//!   `mp_process` keeps for a child's outcome), plus a few for the whole pool (an
//!   epoll, an eventfd, one shared-memory region for every worker's progress word, and
//!   under fork the template's pidfd and control socket): a `Pool(200)` runs at
//!   `ulimit -n 1024`. All but the shared memory are the library's private fds
//!   ([`mp_core::PrivateFd`]): close-on-exec, and let go of first thing by every child
//!   forked from the program while the pool lives (a `Process` of yours under fork), so
//!   such a child holds none of the pool's pipes, and the pool's workers and template
//!   never wait for it. A worker holds its own end of its pipe, never another worker's;
//!   the pool tells a worker to leave with `shutdown(SHUT_WR)` of the parent's end, and
//!   sees its death on its pidfd, never by waiting for end of file.
//! - **close** + **join** lets every task finish, then ends each worker's pipe
//!   (`shutdown`), which the workers take as their cue to exit with code 0; the handler
//!   waits for them on their pidfds. One still there 30 s later is killed and `join`
//!   returns [`PoolError::StuckWorker`]. A `terminate()` during that wait is heard at
//!   once. **terminate** (and drop) fails every unfinished task with
//!   [`PoolError::Terminated`], sends SIGTERM to the workers (SIGKILL after 2 s) and
//!   reaps them.
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod imap;
mod pool;
mod progress;
mod reap;
mod result;
mod start;
mod wire;
mod worker;

pub use error::{PoolError, Result};
pub use imap::{IMapIter, IMapUnorderedIter};
pub use pool::{BoxError, Pool, PoolBuilder};
pub use result::{AsyncResult, Callbacks};
