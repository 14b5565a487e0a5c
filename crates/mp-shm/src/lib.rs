//! Shared memory across processes: [`Value`] and [`Array`] (Python's
//! `multiprocessing.Value` / `Array`), their lock-free [`RawValue`] and [`RawArray`],
//! and named [`SharedMemory`] segments that never leak.
//!
//! ```
//! use mp_shm::{Array, Value};
//! let counter = Value::new(0u64).unwrap();
//! let data = Array::from_slice(&[1, 2, 3]).unwrap();
//! // Pass clones to child processes as arguments: each maps the same pages.
//! *counter.lock().unwrap() += 1;
//! data.set(0, 10).unwrap();
//! assert_eq!((counter.get().unwrap(), data.to_vec()), (1, vec![10, 2, 3]));
//! ```
//!
//! # What can be shared
//! [`Element`] types: integers, floats, `bool`, `char`, fixed arrays, the atomics, and
//! `#[repr(C)]` structs declared with [`shared_struct!`], which checks at compile time
//! that every bit pattern is valid (`bytemuck::Pod`). No pointers, no drop glue.
//!
//! # Memory model: who may write when
//! - A [`Value`] or [`Array`] of plain data carries a process-shared [`mp_sync::Lock`]
//!   (its own, or one you give). Every safe access takes it: `get`, `set`, `update`,
//!   `read`, `write`, or `lock()` for a guard that derefs to `&mut T` / `&mut [T]`. So
//!   the safe API cannot race: two processes never touch the data at the same time.
//!   The lock a guard holds is released only by that guard: `get_lock()`'s `release()`
//!   is refused meanwhile ([`mp_sync::SyncError::GuardHeld`]), and so is a
//!   `Condition::wait` over it; `Lock::force_unlock` is `unsafe`. The memory names its
//!   lock, so a value or array received from another process with any other lock is
//!   refused.
//! - Atomics synchronize themselves: a `Value<AtomicU64>` has no lock and derefs to the
//!   atomic; an `Array<AtomicU32>` derefs to `[AtomicU32]`.
//! - [`RawValue`] and [`RawArray`] have no lock: their plain-data accesses are `unsafe`
//!   (the caller rules out concurrent writers, e.g. the parent fills, children read).
//! - A [`SharedMemory`] segment can be written by any process at any time (Python
//!   processes included): its safe view is `&[AtomicU8]`; plain slices are `unsafe`.
//! - A holder of a lock killed with SIGKILL does not deadlock the others (mp-sync's
//!   owner-death detection): `lock()` reports it as [`OwnerDied`]; `get`/`set`/`update`
//!   take the lock over and go on.
//!
//! # Where the memory lives
//! Values and arrays live in sealed memfd regions that travel as fds
//! ([`mp_core::SharedRegion`]): nothing is ever left in `/dev/shm`, whatever happens to
//! the processes. A receiver checks the type (a hash of its name and its size), the
//! length and the lock against a header in the region, so a mismatch is an error, not a
//! misread and never a second lock over the same data.
//!
//! # Helper process, fds and fork
//! One tracker serves a whole process tree, as in Python: a helper process that unlinks
//! the named segments still registered once the last process of the tree is gone (exited
//! or killed), with a tracing warning naming each. It is started by exec of
//! `/proc/self/exe` (never by forking a process that may have threads), recognised before
//! `main` by a hook in this crate (no call from `main` is needed), by the first process
//! that needs it: at its first named segment, or when it starts its first child. Every
//! child (under spawn, forkserver and fork alike) receives a copy of its socket with its
//! bootstrap ([`mp_core::inherit`]) and uses that one instead of starting its own, and so
//! do its children. The tracker blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT from its first
//! instruction and runs in a session of its own, so a Ctrl-C aimed at the program does
//! not kill it before it cleans up; having no subscriber of the program's, it writes its
//! warnings to its stderr (the program's). Each process's copy of its socket is a
//! [`mp_core::PrivateFd`] (close-on-exec; a forked child lets go of its parent's copy and
//! uses the one in its bootstrap). A value or an array holds the fds of its memfd regions
//! (its data's and its lock's), close-on-exec, as every [`mp_core::SharedRegion`] does.
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod array;
mod cell;
mod element;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod named;
mod tracker;
mod value;

pub use array::{Array, ArrayGuard, RawArray};
pub use element::{Element, LockFree};
pub use error::{LockResult, OwnerDied, ShmError};
pub use named::SharedMemory;
pub use value::{RawValue, Value, ValueGuard};

#[doc(hidden)]
pub use bytemuck;
