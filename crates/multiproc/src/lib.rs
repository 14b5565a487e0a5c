//! Python's `multiprocessing`, done the Rust way: true parallelism across processes
//! (isolation, crash containment, no shared heap) with the ease of Python's API.
//!
//! Each primitive lives in its own small crate, re-exported here; depend on this facade,
//! or on one crate alone.
//!
//! - [`Process`] ([`process`]): run a Rust function in a child process started with
//!   spawn, forkserver or fork, and get its return value back.
//! - [`Pipe`](pipe::Pipe), [`Connection`] ([`pipe`](mod@pipe)): messages between processes,
//!   fd passing, `wait`, and `Listener`/`Client` that talk to Python's
//!   `multiprocessing.connection`.
//! - [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`],
//!   [`Barrier`] ([`sync`]): in shared memory, robust when a holder dies.
//! - [`Value`], [`Array`], [`SharedMemory`] ([`shm`]): shared memory, with a lock or
//!   lock-free, and named segments that never leak.
//! - [`Queue`], [`SimpleQueue`], [`JoinableQueue`] ([`queue`]): many producers and
//!   consumers in any number of processes, with no system call per message.
//! - [`Pool`] ([`pool`]): `map`, `imap`, `starmap`, `apply_async` over worker
//!   processes; a worker that dies fails its task, never hangs the pool.
//! - [`core`] ([`mp_core`]): errors, the Python-compatible frame codec, fd transfer,
//!   futex and shared-memory regions, shared by every crate.
//!
//! ```
//! #[multiproc::main]
//! fn main() -> anyhow::Result<()> {
//!     use multiproc::prelude::*;
//!     fn worker(name: String) -> String {
//!         format!("hello from {name} in {}", current_process().name)
//!     }
//!     let mut p = Process::new(worker, ("A".to_string(),)).name("Worker-A").start()?;
//!     assert_eq!(p.join()?, "hello from A in Worker-A");
//!     Ok(())
//! }
//! ```
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

#[doc(inline)]
pub use mp_core as core;
#[doc(inline)]
pub use mp_pipe as pipe;
#[doc(inline)]
pub use mp_pool as pool;
#[doc(inline)]
pub use mp_process as process;
#[doc(inline)]
pub use mp_queue as queue;
#[doc(inline)]
pub use mp_shm as shm;
#[doc(inline)]
pub use mp_sync as sync;

pub use mp_core::Handle;
pub use mp_pipe::{connect, pipe, pipe_oneway, wait, Client, Connection, Listener, PipeError};
pub use mp_pool::{AsyncResult, Pool, PoolError};
pub use mp_process::{
    active_children, cpu_count, current_process, get_all_start_methods, get_context,
    get_start_method, init, parent_process, set_start_method, Context, ExitStatus, Process,
    ProcessError, StartMethod,
};
pub use mp_queue::{JoinableQueue, Queue, SimpleQueue};
pub use mp_shm::{shared_struct, Array, RawArray, RawValue, SharedMemory, ShmError, Value};
pub use mp_sync::{Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore, SyncError};
/// `#[multiproc::main]`: calls [`init`] as the first statement of `main`.
pub use multiproc_macros::main;

/// The names most programs use.
pub mod prelude {
    pub use crate::{
        active_children, cpu_count, current_process, get_context, parent_process, pipe, wait,
        Array, Barrier, BoundedSemaphore, Condition, Connection, Event, Handle, JoinableQueue,
        Lock, Pool, Process, ProcessError, Queue, RLock, Semaphore, SharedMemory, SimpleQueue,
        StartMethod, Value,
    };
}

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExamples;
