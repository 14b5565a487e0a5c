//! Python's `multiprocessing.Pipe`, `Connection`, `connection.wait`, `Listener` and
//! `Client`, for Rust processes (and Python ones).
//!
//! - [`pipe`] / [`pipe_oneway`] ([`Pipe::new`]): two connected [`Connection`]s over a
//!   Unix socketpair.
//! - [`Connection`]: messages with their boundaries kept. Typed [`send`](Connection::send)
//!   / [`recv`](Connection::recv) of serde values (postcard), raw
//!   [`send_bytes`](Connection::send_bytes) / [`recv_bytes`](Connection::recv_bytes) /
//!   [`recv_bytes_into`](Connection::recv_bytes_into) that a Python peer reads and writes
//!   with the same names, [`poll`](Connection::poll), [`close`](Connection::close).
//!   Values that hold OS handles (another `Connection`, `mp_core::Handle`) carry their
//!   fds with SCM_RIGHTS, and a `Connection` is itself `Serialize + Deserialize`, so it
//!   travels as a process argument or inside a message.
//! - [`wait`]: readiness across Connections, sockets and process sentinels at once.
//! - [`Listener`] / [`Client`]: Unix sockets (paths and Linux abstract names) and TCP,
//!   with the authkey challenge of Python's `multiprocessing.connection` (the
//!   `{sha256}` HMAC of 3.12 and the MD5 answer of 3.11), so Rust and Python programs
//!   talk to each other; the whole handshake has a deadline
//!   ([`DEFAULT_HANDSHAKE_TIMEOUT`]).
//!
//! # Hostile peers
//!
//! The other end of a connection may be another program, over TCP even. Until its
//! handshake succeeds it is a stranger, and even then it is trusted no further than
//! this:
//!
//! - **Before authentication** a peer meets only exact reads of handshake frames of at
//!   most [`HANDSHAKE_MAX`] bytes, with plain `recv` (never `recvmsg`), under one
//!   deadline for the whole exchange: it cannot put an fd in this process, cannot make
//!   [`Listener::accept`] or [`Client::connect`] wait longer than the handshake timeout
//!   (silent or one byte at a time), and nothing it sends past the verdict is read
//!   early. Each client can hold a listener that long, and `accept` serves one at a
//!   time: keep the timeout short where strangers connect. Without an authkey there is
//!   no handshake, and every client is treated as authenticated.
//! - **Fds** travel only over Unix sockets, never TCP, and only with a typed message
//!   that announces exactly how many it carries (at most [`MAX_FDS_PER_MESSAGE`]); any
//!   other fd is closed as soon as its message is read, and a message that announces
//!   fds it did not bring (or more than may travel) is a [`PipeError::Decode`] error
//!   for that message alone. A connection holds at most `MAX_FDS_PER_MESSAGE` + 253
//!   received fds at any time; past that the kernel drops what a peer attaches. Fds lost
//!   on the way (this process out of fds) fail only the message that claimed them.
//! - **Bytes**: a frame longer than the connection's maximum
//!   ([`Connection::set_max_message_size`], 1 GiB by default) is refused before
//!   anything is allocated and ends the read side ([`Connection::readable`] turns
//!   false); a long frame gets at most 64 MiB up front, the rest as its bytes arrive.
//!   A value that does not decode is an error, never a panic, and never chooses code
//!   to run: a peer with the key can make [`Connection::recv`] return any value of the
//!   type asked for, and no more.
//! - **Time**: after the handshake, a blocking receive waits as long as the peer is
//!   silent, and a send waits while a peer that does not read has filled the socket's
//!   buffers, as in Python; bound the receive with [`Connection::poll`] or [`wait`].
//!
//! ```
//! use mp_pipe::{pipe, PipeError};
//! use std::time::Duration;
//!
//! let (mut parent, mut child) = pipe()?;
//! // A connection travels inside a message: its fd goes along with SCM_RIGHTS.
//! let (mut a, b) = pipe()?;
//! parent.send(&("here is a pipe", b))?;
//! let (note, mut b): (String, mp_pipe::Connection) = child.recv()?;
//! assert_eq!(note, "here is a pipe");
//! a.send(&vec![1u32, 2, 3])?;
//! assert_eq!(b.recv::<Vec<u32>>()?, [1, 2, 3]);
//!
//! // Raw bytes, as Python's send_bytes / recv_bytes.
//! child.send_bytes(b"abc")?;
//! assert!(parent.poll(Some(Duration::from_secs(5)))?);
//! let mut buf = [0u8; 2];
//! match parent.recv_bytes_into(&mut buf) {
//!     Err(PipeError::BufferTooShort(whole)) => assert_eq!(whole, b"abc"),
//!     other => panic!("{other:?}"),
//! }
//!
//! // End of file once the peer is gone and the data drained.
//! drop(child);
//! assert!(matches!(parent.recv::<u8>(), Err(PipeError::Eof)));
//! # Ok::<(), PipeError>(())
//! ```
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod connection;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod listener;
mod wait;

pub use connection::{
    pipe, pipe_oneway, Connection, Pipe, DEFAULT_MAX_MESSAGE, MAX_FDS_PER_MESSAGE,
};
pub use error::{PipeError, Result};
pub use handshake::{DEFAULT_HANDSHAKE_TIMEOUT, HANDSHAKE_MAX};
pub use listener::{connect, Address, Client, Listener};
pub use wait::{wait, Waitable};
