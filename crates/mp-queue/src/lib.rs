//! Python's `multiprocessing` queues for Rust processes: [`Queue`], [`SimpleQueue`] and
//! [`JoinableQueue`], with many producers and many consumers in any number of
//! processes.
//!
//! ```
//! use mp_queue::Queue;
//!
//! fn producer(q: Queue<u64>, n: u64) {
//!     for i in 0..n {
//!         q.put(i * i).unwrap();
//!     }
//!     // Returning right after the last put loses nothing: a put that returned
//!     // has its item in shared memory.
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     mp_process::init(); // first line of main: in a child, runs the task and exits
//!     let q = Queue::new()?;
//!     let mut p = mp_process::Process::new(producer, (q.clone(), 1000)).start()?;
//!     let total: u64 = (0..1000).map(|_| q.get().unwrap()).sum();
//!     p.join()?;
//!     assert_eq!(total, (0..1000u64).map(|i| i * i).sum());
//!     q.close();
//!     assert_eq!(q.iter().count(), 0); // closed and drained: the iterator ends
//!     Ok(())
//! }
//! ```
//!
//! Items are any `Serialize + DeserializeOwned` type, encoded with postcard by the
//! caller of `put` (so an encoding error is the caller's, and the queue stays usable).
//! Values that hold fds (a `Connection`, a `Lock`, an [`mp_core::Handle`]) work too.
//! Queues are `Clone` (clones share the queue) and `Serialize + Deserialize`, so they
//! travel as process and pool arguments under every start method.
//!
//! # Design
//!
//! **A ring in shared memory.** Items go through a byte stream in one sealed memfd
//! region mapped by every process: an 8-byte header (length, fd tag) then the encoded
//! bytes. The stream is cut into 256 KiB segments placed through a segment map, so
//! the ring *grows*: a consumer that keeps up makes producers reuse a few hot
//! segments; one that falls behind lets the queue take more, up to its byte capacity
//! (4 GiB of address space by default, [`QueueBuilder::capacity`]), touching pages
//! only as items need them, and pages of surplus free segments go back to the kernel.
//! So an unbounded put never waits (Python gets the same from a feeder thread and a
//! local buffer; here there is no thread, so nothing to flush at exit, `fork` stays
//! allowed, and an item whose put returned is in shared memory even if its producer is
//! killed the next instant). A message larger than any segment (64 MiB, say) is
//! simply a long record spanning many segments.
//!
//! **Two robust locks.** A producer lock serializes producers, a consumer lock
//! serializes consumers (as Python's write and read locks around its pipe), so the
//! ring itself is single-producer single-consumer with Acquire/Release head and
//! tail. They are `mp_sync::Lock`s: uncontended, one compare-and-swap; a holder killed
//! with SIGKILL is detected and the next acquirer takes over.
//!
//! **No system call when nobody waits.** A put is: encode, lock, copy, publish the
//! tail, unlock, and a futex wake only if a consumer registered as waiting (a waiter
//! count beside the futex word); a get is the mirror image. Waiters poll briefly
//! (only with more than one CPU) before they sleep. Counters give exact
//! [`Queue::qsize`], [`Queue::empty`] and [`Queue::full`].
//!
//! **Commit protocol.** A producer writes its whole record, then publishes `put_seq`
//! and `tail` through a small journal (new values, flag, stores, flag cleared). A
//! consumer decodes the record, then advances `head` and `get_seq` the same way, and
//! only then recycles segments. A process killed at any point leaves either nothing
//! visible (a half-written record beyond the tail is overwritten), or a journal that
//! the next lock holder, told of the death by the robust lock, completes. An item is
//! never delivered twice, and an acknowledged one is never lost; a consumer killed
//! between taking an item and returning it loses that one item (as any consumer that
//! dies holding one).
//!
//! **Fds beside the bytes.** The ring cannot carry fds: an item's fds go, inside the
//! producer lock and before its record is published, as one message on a
//! `SOCK_SEQPACKET` socket pair owned by the queue, under a tag the record repeats.
//! Consumers peek the message (getting copies of the fds), commit, then dequeue it,
//! and drop messages older than the record they read, so a kill on either side never
//! mismatches fds and items. At most 253 fds per item. Fd-carrying items in flight
//! are limited by the socket's buffer (a few hundred); beyond that such a put waits.
//!
//! **Close.** [`Queue::close`] closes the queue for every process: later puts fail,
//! gets deliver what was put before, then fail with [`GetError::Closed`], which is
//! what ends [`Queue::iter`].
//!
//! **Waiters killed while asleep.** A sleeper registers in a waiter count before it
//! sleeps; one killed with SIGKILL cannot unregister. Sleepers sleep in slices of
//! 250 ms and register again for each, so when wakes have found nobody asleep for a
//! second the count is known to be stale and is reset: the no-syscall fast path comes
//! back by itself.
//!
//! Known limit: a producer killed at one precise point of a segment assignment leaks
//! that segment of capacity (256 KiB of the 4 GiB default).
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod fds;
#[doc(hidden)]
pub mod fuzzing;
mod joinable;
mod queue;
mod ring;
mod simple;
mod wait;

pub use error::{GetError, PutError, QueueError};
pub use fds::MAX_FDS_PER_ITEM;
pub use joinable::JoinableQueue;
pub use queue::{Iter, Queue, QueueBuilder, DEFAULT_CAPACITY};
pub use simple::SimpleQueue;
