//! Python's `multiprocessing` synchronization primitives for Rust processes: [`Lock`],
//! [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`] and
//! [`Barrier`], robust when a holder dies.
//!
//! Each primitive lives in a small anonymous shared-memory region (a sealed memfd,
//! `MAP_SHARED`) and blocks on process-shared futexes. Handles are `Clone` (clones share
//! the memory) and `Serialize + Deserialize`: passed as a process argument (or over a
//! multiproc `Connection` or `Queue`), the region's fd travels beside the bytes and the
//! receiver maps the same pages. Outside a multiproc carrier, serializing one is an
//! error.
//!
//! ```
//! use mp_sync::{Event, Lock};
//! use std::time::Duration;
//!
//! let lock = Lock::new()?;
//! let ready = Event::new()?;
//! let (l2, r2) = (lock.clone(), ready.clone());
//! let t = std::thread::spawn(move || {
//!     let _guard = l2.lock().unwrap();
//!     r2.set();
//!     std::thread::sleep(Duration::from_millis(20));
//! });
//! assert!(ready.wait(Some(Duration::from_secs(10))));
//! let guard = lock.lock().unwrap(); // waits for the thread's guard
//! drop(guard);
//! t.join().unwrap();
//! assert!(!lock.locked());
//! # Ok::<(), mp_sync::SyncError>(())
//! ```
//!
//! # Python's API and the Rust one
//!
//! `acquire(block, timeout) -> bool` and `release()` exist on every lock and semaphore,
//! with Python's meaning (`block == false` ignores the timeout; `None` waits for ever).
//! Beside them: `lock()` / `try_lock()` / `lock_timeout(d)` return RAII guards, and
//! `access()` gives a semaphore unit back on drop. Errors are [`SyncError`], after
//! Python's exceptions where they map.
//!
//! A [`Lock`] held through a guard is released only by that guard (lock_api's rule): a
//! `release()` from anywhere else is [`SyncError::GuardHeld`], and the escape hatch,
//! [`Lock::force_unlock`], is `unsafe`. So the data a lock guards (mp-shm's `Value` and
//! `Array`) is never reachable twice. A lock taken with `acquire()` keeps Python's
//! semantics: any thread or process may release it. A `Lock` also records the thread
//! that took it, so a [`Condition`] waits and notifies only from that thread, as in
//! Python.
//!
//! # When a holder dies
//!
//! CPython deadlocks when a process is killed while it holds a lock. Here the lock word
//! holds its owner: the process (for a `Lock`, which any process may release) or the
//! thread (for an `RLock`), as a pid or tid plus that task's start time (field 22 of
//! `/proc/<id>/stat`; a recycled id has another start time).
//!
//! - Uncontended, `acquire` is one compare-and-swap and `release` one atomic
//!   read-modify-write: no syscall. Setting an `Event` nobody waits on makes no
//!   syscall either.
//! - A contended acquirer spins briefly (only with more than one CPU), then sets a
//!   waiters flag and sleeps on a futex, at most 50 ms at a time. After a slice in which
//!   the same owner kept the lock, it reads `/proc/<id>/stat`: missing, dead, zombie
//!   (with no live thread) or another start time means the owner died. One compare-and-
//!   swap from the exact word it saw moves the lock to the acquirer, so only one
//!   acquirer takes over. A non-blocking or timed acquire about to report "not taken"
//!   makes the same check first (a live answer is trusted for 10 ms per thread, so a
//!   loop of failing `try_lock`s does not read `/proc` every time).
//! - The acquirer that takes over is told: `lock()` returns `Err(`[`OwnerDied`]`)`
//!   holding the guard (as std's `PoisonError`), `acquire` returns
//!   `Err(`[`SyncError::OwnerDied`]`)` holding a [`HeldLock`] that releases the lock on
//!   drop unless kept. The data the lock protects may be half-updated; repair it and go
//!   on. The condition is not sticky.
//! - A `Condition`'s lock is a `Lock` or an `RLock`, so it is covered; a waiter that
//!   takes the lock back from a dead holder gets the error from `wait`. A `Barrier`
//!   whose internal lock was held by a dead process breaks.
//! - Semaphores and events have no owner; a process that dies holding a semaphore unit
//!   does not give it back (as in Python). A process killed while *waiting* on a
//!   `Condition` absorbs one notification, and one killed while waiting at a `Barrier`
//!   leaves the others waiting until their timeout (both as in Python).
//!
//! Our own ids are cached in a page marked `MADV_WIPEONFORK`, so a forked child never
//! acts under its parent's id. All processes must share a pid namespace, and `/proc`
//! must be mounted for deaths to be seen (if it cannot be read, holders count as alive:
//! a lock is never taken from a live holder).
//!
//! # Timeouts
//!
//! Every timeout is an absolute deadline on `CLOCK_MONOTONIC`
//! ([`mp_core::Deadline`]); an `EINTR` or a spurious wake-up only makes the waiter look
//! again, so it never stretches a wait.
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod barrier;
mod condition;
mod error;
mod event;
mod ident;
mod lock;
mod raw;
mod rlock;
mod semaphore;
mod shared;

pub use barrier::Barrier;
pub use condition::{Condition, ConditionGuard, ConditionLock, MAX_WAITERS};
pub use error::{HeldLock, LockResult, OwnerDied, SyncError};
pub use event::Event;
pub use lock::{Lock, LockGuard};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{
    BoundedSemaphore, BoundedSemaphoreGuard, Semaphore, SemaphoreGuard, SEM_VALUE_MAX,
};
