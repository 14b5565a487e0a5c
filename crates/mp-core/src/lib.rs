//! The floor of [multiproc](https://docs.rs/multiproc): what every primitive shares.
//!
//! - [`Error`]: the errors every crate builds on (I/O, encoding, framing, timeouts).
//! - [`frame`]: the message framing of Python's `multiprocessing.connection`
//!   (4-byte signed big-endian length, `-1` then 8 bytes for huge messages).
//! - [`handles`]: OS handles that travel *beside* serialized bytes. While a value is
//!   encoded, each fd it holds is pushed into a table and only its index is written;
//!   the carrier moves the table (SCM_RIGHTS, or inheritance) and the receiver
//!   rebuilds the handles.
//! - [`exec`]: re-executing this program as a child or helper (posix_spawn).
//! - [`fdpass`]: sending bytes plus fds over a Unix socket (SCM_RIGHTS).
//! - [`futex`] and [`Deadline`]: process-shared futex waits on `CLOCK_MONOTONIC`.
//! - [`random`]: kernel randomness, all or an error.
//! - [`spin`]: when a waiter may poll before it sleeps (bounded, never on one CPU).
//! - [`private_fd`]: the library's own fds ([`PrivateFd`]): close-on-exec, and let go of
//!   in every forked child, while the user's fds are inherited as in Python.
//! - [`inherit`]: library handles a whole process tree shares (the shared-memory
//!   tracker's socket): offered by the crate that owns them, carried to every child.
//! - [`SharedRegion`]: anonymous shared memory (memfd) that travels as an fd and leaves
//!   nothing in `/dev/shm`.
//!
//! ```
//! use mp_core::handles::{decode, encode};
//! let (bytes, fds) = encode(&("hello".to_string(), 42u32)).unwrap();
//! assert!(fds.is_empty());
//! let back: (String, u32) = decode(&bytes, fds).unwrap();
//! assert_eq!(back, ("hello".to_string(), 42));
//! ```
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod deadline;
mod error;
pub mod exec;
pub mod fdpass;
pub mod frame;
pub mod futex;
#[doc(hidden)]
pub mod fuzzing;
pub mod handles;
pub mod inherit;
pub mod private_fd;
mod probe;
pub mod random;
mod region;
pub mod spin;

pub use deadline::Deadline;
pub use error::{Error, Result};
pub use handles::Handle;
pub use private_fd::PrivateFd;
pub use region::SharedRegion;

/// Re-exported so that dependent crates name one version of these.
pub use postcard;
pub use rustix;
pub use serde;
