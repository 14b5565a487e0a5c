//! [`Connection`] and the two kinds of [`Pipe`]: framing, buffering and fd accounting.
//!
//! # Wire format
//!
//! Every message is one frame of Python's `multiprocessing.connection` (a 4-byte signed
//! big-endian length, or `-1` and an 8-byte length). Raw messages
//! ([`Connection::send_bytes`]) are the payload itself, byte for byte, so a Python peer
//! reads them with `recv_bytes()`. A typed message ([`Connection::send`]) is a payload
//! of: a LEB128 varint giving how many fds travel with the message, then the value in
//! postcard, whose handles (Connections, `Handle`s ...) are indices into those fds.
//!
//! # Fd accounting
//!
//! The fds of a typed message ride with SCM_RIGHTS on the first bytes of its frame. At
//! most [`MAX_FDS_PER_MESSAGE`] fds go in one message: the kernel carries 253 per
//! `sendmsg`, each batch on its own byte, and this keeps all of them within the 4
//! header bytes.
//!
//! Linux ends a `recvmsg` right after the bytes that carried fds, so the fds of one
//! receive belong to the message that holds the last byte it returned. Each batch of
//! fds is kept with that byte's offset in the stream, and when a message has been read
//! it takes the batches that fall inside it: a typed message must find exactly the
//! count it announces (else it is a [`PipeError::Decode`] error for that message
//! alone), and a raw message closes whatever came with it. Fds never wait for a later
//! message. A connection holds at most [`MAX_FDS_PER_MESSAGE`] + 253 fds at any time
//! (one whole message and the first batch of the next): past that, and on TCP, it
//! receives with a plain `recv`, so the kernel drops what a peer attaches. Fds lost on
//! the way (`MSG_CTRUNC`, when this process runs out of fds) fail the message that
//! claimed them, and only if it claimed some.
//!
//! # Buffering
//!
//! Reads go through a 64 KiB buffer, filled with as much as one `recvmsg` returns: a
//! small message costs one system call to send and one to receive, and a burst of them
//! often less. A message larger than the buffer is read straight into its own vector
//! (or into the caller's buffer), without zeroing it first. [`Connection::poll`] and
//! [`wait`](crate::wait) see buffered bytes.
use crate::error::{PipeError, Result};
use mp_core::frame::{self, Header, MAX_HEADER};
use mp_core::handles;
use mp_core::PrivateFd;
use rustix::net::{SendAncillaryBuffer, SendFlags};
use serde::de::DeserializeOwned;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// The largest message a new [`Connection`] accepts: 1 GiB. A frame announcing more is
/// refused before anything is allocated; see [`Connection::set_max_message_size`].
pub const DEFAULT_MAX_MESSAGE: u64 = 1 << 30;

/// The most fds one typed message may carry (four SCM_RIGHTS batches of 253).
pub const MAX_FDS_PER_MESSAGE: usize = 4 * mp_core::fdpass::MAX_FDS_PER_SEND;

/// The most fds a connection holds while messages are being read (see the module doc).
const MAX_HELD_FDS: usize = MAX_FDS_PER_MESSAGE + mp_core::fdpass::MAX_FDS_PER_SEND;

/// Size of the read buffer; larger messages bypass it.
const READ_BUF: usize = 64 * 1024;
/// Up to this much is allocated up front for a large message once its header is read;
/// beyond it, the vector grows as bytes arrive.
const EAGER_ALLOC: usize = 64 << 20;
/// A typed send keeps its encoding buffer for the next send up to this capacity.
const KEEP_WRITE_BUF: usize = 4 << 20;
/// Longest LEB128 encoding of a `u32`.
const MAX_VARINT: usize = 5;

/// One end of a [`Pipe`], or a connection made by a [`Listener`](crate::Listener) or
/// [`Client`](crate::Client): Python's `multiprocessing.connection.Connection`.
///
/// A `Connection` is `Serialize + Deserialize` through `mp_core`'s handle table, so it
/// can be a process argument or travel inside a message over another `Connection`
/// (its fd goes with SCM_RIGHTS). The sender keeps its own copy open.
///
/// Methods that receive take `&mut self`: a connection has one reader at a time.
pub struct Connection {
    fd: Option<Sock>,
    readable: bool,
    writable: bool,
    /// An `AF_UNIX` socket, which can carry fds.
    unix: bool,
    max_message: u64,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Bytes received from the socket so far: the stream offset just past `rbuf[rend]`.
    received: u64,
    /// Where the frame being read ends in the stream (set by `read_header`).
    frame_end: u64,
    /// Fds received and not yet claimed by their message, in arrival order.
    fds: VecDeque<Batch>,
    /// How many fds `fds` holds.
    held: usize,
    wbuf: Vec<u8>,
    read_state: ReadState,
}

/// A connection's socket: an ordinary fd, or one of the library's own
/// ([`Connection::make_private`]).
#[derive(Debug)]
enum Sock {
    Plain(OwnedFd),
    Private(PrivateFd),
}

impl AsFd for Sock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Sock::Plain(fd) => fd.as_fd(),
            Sock::Private(fd) => fd.as_fd(),
        }
    }
}

/// Fds that came with one receive.
struct Batch {
    /// The stream offset of the last byte received with them: they belong to the
    /// message that holds it.
    last: u64,
    fds: Vec<OwnedFd>,
    /// Some fds of this receive were lost (`MSG_CTRUNC`).
    lost: bool,
}

/// The fds of one message.
#[derive(Default)]
struct Claimed {
    fds: Vec<OwnedFd>,
    lost: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadState {
    Ok,
    /// The peer closed mid-message: every later receive is end of file.
    Eof,
    /// An oversized or malformed frame: boundaries are lost.
    Broken,
}

/// A payload just read: in the read buffer (already consumed), or in its own vector.
enum Payload {
    Buffered { start: usize, len: usize },
    Owned(Vec<u8>),
}

/// Python's `Pipe(duplex)`: [`Pipe::new`]`(true)` is [`pipe`], `Pipe::new(false)` is
/// [`pipe_oneway`].
#[derive(Debug)]
pub struct Pipe;

impl Pipe {
    /// A duplex pair (`duplex = true`), or `(reader, writer)` (`duplex = false`).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(duplex: bool) -> Result<(Connection, Connection)> {
        if duplex {
            pipe()
        } else {
            pipe_oneway()
        }
    }
}

fn socketpair() -> Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    Ok(socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Two connected duplex [`Connection`]s over a Unix socketpair.
///
/// ```
/// let (mut a, mut b) = mp_pipe::pipe()?;
/// a.send(&(1u8, "one".to_string()))?;
/// assert_eq!(b.recv::<(u8, String)>()?, (1, "one".to_string()));
/// b.send_bytes(b"")?; // an empty message is a message
/// assert_eq!(a.recv_bytes()?, b"");
/// # Ok::<(), mp_pipe::PipeError>(())
/// ```
pub fn pipe() -> Result<(Connection, Connection)> {
    let (a, b) = socketpair()?;
    Ok((
        Connection::new(a, true, true, true),
        Connection::new(b, true, true, true),
    ))
}

/// A one-way pipe: `(reader, writer)`. Sending on the reader, or receiving or polling
/// on the writer, is an error ([`PipeError::ReadOnly`] / [`PipeError::WriteOnly`]).
///
/// It is a socketpair with one direction shut down (not an OS pipe), so it too carries
/// fds and Connections.
pub fn pipe_oneway() -> Result<(Connection, Connection)> {
    use rustix::net::{shutdown, Shutdown};
    let (r, w) = socketpair()?;
    shutdown(&r, Shutdown::Write)?;
    shutdown(&w, Shutdown::Read)?;
    Ok((
        Connection::new(r, true, false, true),
        Connection::new(w, false, true, true),
    ))
}

impl Connection {
    fn new(fd: OwnedFd, readable: bool, writable: bool, unix: bool) -> Self {
        Connection {
            fd: Some(Sock::Plain(fd)),
            readable,
            writable,
            unix,
            max_message: DEFAULT_MAX_MESSAGE,
            rbuf: Vec::new(),
            rstart: 0,
            rend: 0,
            received: 0,
            frame_end: 0,
            fds: VecDeque::new(),
            held: 0,
            wbuf: Vec::new(),
            read_state: ReadState::Ok,
        }
    }

    /// Wraps a connected stream socket (Unix or TCP). At least one of `readable` and
    /// `writable` must be true. Only a Unix socket carries fds.
    pub fn from_fd(fd: OwnedFd, readable: bool, writable: bool) -> Result<Self> {
        if !readable && !writable {
            return Err(PipeError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at least one of readable and writable must be true",
            )));
        }
        let unix = rustix::net::sockopt::socket_domain(&fd)? == rustix::net::AddressFamily::UNIX;
        Ok(Connection::new(fd, readable, writable, unix))
    }

    /// Makes this end's socket one of the library's own fds ([`mp_core::PrivateFd`]): a
    /// child forked from now on (by `mp_process`) lets go of it first thing, and no program
    /// started by exec inherits it. For a library's own channels (a pool's ends of its
    /// workers' pipes), never for a user's, which a forked child inherits as in Python.
    /// Sending the connection to another process still works: the receiver gets an
    /// ordinary fd.
    ///
    /// Does nothing on a closed or already private connection. Fails only if the fd's
    /// flags cannot be read or set, which leaves the connection closed.
    pub fn make_private(&mut self) -> Result<()> {
        match self.fd.take() {
            Some(Sock::Plain(fd)) => match PrivateFd::new(fd) {
                Ok(fd) => self.fd = Some(Sock::Private(fd)),
                Err(e) => {
                    self.close();
                    return Err(e.into());
                }
            },
            other => self.fd = other,
        }
        Ok(())
    }

    /// Whether this end may receive: false for the write end of a one-way pipe, and,
    /// as in Python, once an oversized or malformed frame has lost the message
    /// boundaries (see [`PipeError::Unreadable`]).
    pub fn readable(&self) -> bool {
        self.readable && self.read_state != ReadState::Broken
    }

    /// Whether this end may send.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Whether [`close`](Self::close) was called.
    pub fn closed(&self) -> bool {
        self.fd.is_none()
    }

    /// The socket, for use with other event loops. [`PipeError::Closed`] after close.
    ///
    /// A `Connection` does not implement `AsFd`: it may hold buffered messages that the
    /// fd alone does not show. [`wait`](crate::wait) and [`poll`](Self::poll) know this.
    pub fn fd(&self) -> Result<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd()).ok_or(PipeError::Closed)
    }

    /// The largest message this end accepts.
    pub fn max_message_size(&self) -> u64 {
        self.max_message
    }

    /// Sets the largest message this end accepts (default [`DEFAULT_MAX_MESSAGE`]). A
    /// frame announcing more is refused with [`PipeError::FrameTooLarge`] before any
    /// allocation, and the read side becomes unusable, as in Python: `readable()` turns
    /// false, and a connection that cannot send either is closed.
    pub fn set_max_message_size(&mut self, max: u64) {
        self.max_message = max;
    }

    /// Closes the connection. Idempotent; dropping it closes it too.
    pub fn close(&mut self) {
        self.fd = None;
        self.drop_fds();
        self.rbuf = Vec::new();
        self.rstart = 0;
        self.rend = 0;
    }

    /// Whether a received message (or part of one) waits in the buffer.
    pub(crate) fn has_buffered(&self) -> bool {
        self.rend > self.rstart
    }

    /// Whether a receive would return at once without a system call: a message (or
    /// part of one) is buffered, or the read side can only give an error.
    pub(crate) fn ready_without_io(&self) -> bool {
        self.has_buffered() || self.read_state != ReadState::Ok
    }

    // ----- sending -----

    fn write_fd(&self) -> Result<BorrowedFd<'_>> {
        let fd = self.fd.as_ref().ok_or(PipeError::Closed)?;
        if !self.writable {
            return Err(PipeError::ReadOnly);
        }
        Ok(fd.as_fd())
    }

    /// Sends `data` as one message, byte for byte (Python's `send_bytes`).
    pub fn send_bytes(&mut self, data: &[u8]) -> Result<()> {
        self.write_fd()?;
        let mut hb = [0u8; MAX_HEADER];
        let header = frame::encode_header(data.len(), &mut hb);
        if data.len() <= frame::SMALL_FRAME {
            // One contiguous `send`: the cheapest system call for a small message.
            let mut buf = std::mem::take(&mut self.wbuf);
            buf.clear();
            buf.extend_from_slice(header);
            buf.extend_from_slice(data);
            let res = send_slices(self.write_fd()?, &[&buf]);
            self.wbuf = buf;
            return res;
        }
        // One `sendmsg` of two slices: no copy of a large payload.
        send_slices(self.write_fd()?, &[header, data])
    }

    /// Sends a value as one message (postcard; handles it holds travel as fds).
    ///
    /// A value that fails to encode is an error here, in the sender, and nothing is
    /// sent. Over TCP, a value holding handles is an [`PipeError::Encode`] error.
    /// Typed messages are for Rust peers (postcard, not pickle): a Python peer exchanges
    /// raw messages with [`send_bytes`](Self::send_bytes) / [`recv_bytes`](Self::recv_bytes).
    pub fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.write_fd()?;
        // Room for the 4-byte header and a 1-byte fd count, filled in after encoding.
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        buf.extend_from_slice(&[0u8; 5]);
        let (mut buf, fds) = handles::encode_into(value, buf)?;
        let count = fds.len();
        if count > 0 && !self.unix {
            return Err(PipeError::Encode {
                type_name: std::any::type_name::<T>(),
                reason: "OS handles can only travel over a Unix socket, not TCP".into(),
            });
        }
        if count > MAX_FDS_PER_MESSAGE {
            return Err(PipeError::Encode {
                type_name: std::any::type_name::<T>(),
                reason: format!("{count} handles in one message; at most {MAX_FDS_PER_MESSAGE} may travel together"),
            });
        }
        if count < 0x80 {
            buf[4] = count as u8;
        } else {
            let mut v = [0u8; MAX_VARINT];
            let n = encode_varint(count as u32, &mut v);
            buf.splice(4..5, v[..n].iter().copied());
        }
        let payload_len = buf.len() - 4;
        let fd = self.write_fd()?;
        let res = if payload_len <= i32::MAX as usize {
            buf[..4].copy_from_slice(&(payload_len as i32).to_be_bytes());
            if fds.is_empty() {
                send_slices(fd, &[&buf])
            } else {
                send_with_fds(fd, &[&buf], &fds)
            }
        } else {
            let mut hb = [0u8; MAX_HEADER];
            let header = frame::encode_header(payload_len, &mut hb);
            if fds.is_empty() {
                send_slices(fd, &[header, &buf[4..]])
            } else {
                send_with_fds(fd, &[header, &buf[4..]], &fds)
            }
        };
        if buf.capacity() <= KEEP_WRITE_BUF {
            self.wbuf = buf;
        }
        res
    }

    // ----- receiving -----

    fn check_readable(&self) -> Result<()> {
        if self.fd.is_none() {
            return Err(PipeError::Closed);
        }
        if !self.readable {
            return Err(PipeError::WriteOnly);
        }
        match self.read_state {
            ReadState::Ok => Ok(()),
            ReadState::Eof => Err(PipeError::Eof),
            ReadState::Broken => Err(PipeError::Unreadable),
        }
    }

    /// Whether a message (or end of file) can be received: waits up to `timeout`
    /// (`None`: for ever; `Some(Duration::ZERO)`: not at all). Consumes nothing.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        match self.check_readable() {
            Ok(()) => {}
            Err(PipeError::Eof | PipeError::Unreadable) => return Ok(true),
            Err(e) => return Err(e),
        }
        if self.has_buffered() {
            return Ok(true);
        }
        let fd = self.fd()?;
        Ok(!crate::wait::poll_fds(&[fd], timeout)?.is_empty())
    }

    /// Receives one message's bytes (Python's `recv_bytes`). A typed message comes
    /// back with its fd-count prefix; use [`recv`](Self::recv) for those. Fds that a
    /// peer attached to the message are closed.
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>> {
        self.check_readable()?;
        let len = self.read_header(self.max_message)?;
        let payload = self.read_payload(len)?;
        self.close_unclaimed_fds();
        Ok(match payload {
            Payload::Buffered { start, len } => self.rbuf[start..start + len].to_vec(),
            Payload::Owned(v) => v,
        })
    }

    /// Receives one message into `buf`, returning its length. If `buf` is too short,
    /// the message is consumed and handed back whole in [`PipeError::BufferTooShort`].
    pub fn recv_bytes_into(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.check_readable()?;
        let len = self.read_header(self.max_message)?;
        // `len <= max_message`, which fits in memory if it was accepted.
        let n = usize::try_from(len).map_err(|_| PipeError::FrameTooLarge {
            len,
            max: usize::MAX as u64,
        })?;
        if n > buf.len() {
            let payload = self.read_payload(len)?;
            self.close_unclaimed_fds();
            return Err(PipeError::BufferTooShort(match payload {
                Payload::Buffered { start, len } => self.rbuf[start..start + len].to_vec(),
                Payload::Owned(v) => v,
            }));
        }
        if n <= READ_BUF {
            match self.read_payload(len)? {
                Payload::Buffered { start, len } => {
                    buf[..len].copy_from_slice(&self.rbuf[start..start + len])
                }
                Payload::Owned(v) => buf[..v.len()].copy_from_slice(&v),
            }
        } else {
            let have = self.rend - self.rstart;
            buf[..have].copy_from_slice(&self.rbuf[self.rstart..self.rend]);
            self.rstart = 0;
            self.rend = 0;
            let mut done = have;
            while done < n {
                let fd = self.fd()?;
                // Plain read(): the fds of this message, if any, came with its header.
                match rustix::io::read(fd, &mut buf[done..n]) {
                    Ok(0) => return Err(self.truncated()),
                    Ok(k) => {
                        done += k;
                        self.received += k as u64;
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(rustix::io::Errno::AGAIN) => wait_readable(fd)?,
                    Err(e) => return Err(self.recv_error(e.into(), true)),
                }
            }
        }
        self.close_unclaimed_fds();
        Ok(n)
    }

    /// Receives one typed message sent with [`send`](Self::send).
    ///
    /// A message that does not decode as `T` is a [`PipeError::Decode`] naming `T`; it is
    /// consumed (with its fds, which are closed) and the connection stays usable. So is
    /// a message that did not come with exactly the fds it announces.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T> {
        self.check_readable()?;
        let len = self.read_header(self.max_message)?;
        let payload = self.read_payload(len)?;
        let claimed = self.claim_fds();
        let bytes: &[u8] = match &payload {
            Payload::Buffered { start, len } => &self.rbuf[*start..*start + *len],
            Payload::Owned(v) => v,
        };
        let decode_err = |reason: String| PipeError::Decode {
            type_name: std::any::type_name::<T>(),
            reason,
        };
        let (count, used) = decode_varint(bytes).ok_or_else(|| {
            decode_err("the message has no handle count (not a typed message?)".into())
        })?;
        let count = count as usize;
        let arrived = claimed.fds.len();
        if count > MAX_FDS_PER_MESSAGE {
            return Err(decode_err(format!(
                "the message announces {count} handles; at most {MAX_FDS_PER_MESSAGE} travel in one"
            )));
        }
        if claimed.lost && count > 0 {
            return Err(decode_err(format!(
                "the message announces {count} handles and some were lost on the way ({arrived} \
                 arrived; is this process out of fds?)"
            )));
        }
        if count != arrived && !(claimed.lost && count == 0) {
            return Err(decode_err(format!(
                "the message announces {count} handles but {arrived} came with it (not a typed message?)"
            )));
        }
        let fds = if count == 0 { Vec::new() } else { claimed.fds };
        Ok(handles::decode::<T>(&bytes[used..], fds)?)
    }

    /// Takes the fds that came with the message just read (see the module doc).
    fn claim_fds(&mut self) -> Claimed {
        let mut claimed = Claimed::default();
        while let Some(batch) = self.fds.pop_front() {
            if batch.last >= self.frame_end {
                self.fds.push_front(batch);
                break;
            }
            self.held -= batch.fds.len();
            claimed.lost |= batch.lost;
            claimed.fds.extend(batch.fds);
        }
        claimed
    }

    /// Closes whatever fds came with the message just read (a raw message has none).
    fn close_unclaimed_fds(&mut self) {
        let claimed = self.claim_fds();
        if !claimed.fds.is_empty() || claimed.lost {
            tracing::debug!(
                fds = claimed.fds.len(),
                "closed the fds a peer attached to a byte message"
            );
        }
    }

    /// Closes every fd received and not yet claimed.
    fn drop_fds(&mut self) {
        self.fds.clear();
        self.held = 0;
    }

    /// Marks the read side at end of file after a truncated message.
    fn truncated(&mut self) -> PipeError {
        self.read_state = ReadState::Eof;
        self.rstart = 0;
        self.rend = 0;
        self.drop_fds();
        PipeError::TruncatedMessage
    }

    /// Gives up the read side after an oversized or malformed frame, as Python does: it
    /// is no longer readable, and a connection that cannot send either is closed.
    fn broken(&mut self) {
        self.read_state = ReadState::Broken;
        self.rstart = 0;
        self.rend = 0;
        self.drop_fds();
        if !self.writable {
            self.close();
        }
    }

    /// Maps a receive error; a reset peer is end of file (Linux reports `ECONNRESET`
    /// when the peer closed with our messages unread).
    fn recv_error(&mut self, e: io::Error, mid_message: bool) -> PipeError {
        if e.kind() == io::ErrorKind::ConnectionReset {
            if mid_message {
                return self.truncated();
            }
            self.read_state = ReadState::Eof;
            self.drop_fds();
            return PipeError::Eof;
        }
        PipeError::Io(e)
    }

    /// Reads once from the socket into the free end of the read buffer.
    fn fill_some(&mut self, mid_message: bool) -> Result<usize> {
        if self.rbuf.is_empty() {
            self.rbuf = vec![0; READ_BUF];
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() {
            self.compact();
        }
        let Some(fd) = self.fd.as_ref() else {
            return Err(PipeError::Closed);
        };
        // Room for fds only on a Unix socket, and only while a whole batch more stays
        // within the bound; otherwise a plain `recv`, and the kernel drops them. A peer
        // is expected to answer soon: poll briefly before sleeping (`mp_core::spin`).
        let take_fds = self.unix && self.held + mp_core::fdpass::MAX_FDS_PER_SEND <= MAX_HELD_FDS;
        let mut fds = Vec::new();
        match mp_core::fdpass::recv_chunk(
            fd.as_fd(),
            &mut self.rbuf[self.rend..],
            take_fds.then_some(&mut fds),
            mp_core::fdpass::Wait::SpinThenBlock,
        ) {
            Ok(got) => {
                self.rend += got.bytes;
                self.received += got.bytes as u64;
                if got.bytes > 0 && (!fds.is_empty() || got.truncated) {
                    self.held += fds.len();
                    self.fds.push_back(Batch {
                        last: self.received - 1,
                        fds,
                        lost: got.truncated,
                    });
                }
                Ok(got.bytes)
            }
            Err(e) => Err(self.recv_error(e, mid_message)),
        }
    }

    fn compact(&mut self) {
        self.rbuf.copy_within(self.rstart..self.rend, 0);
        self.rend -= self.rstart;
        self.rstart = 0;
    }

    /// Reads and consumes the next frame header, returning the payload length.
    fn read_header(&mut self, max: u64) -> Result<u64> {
        loop {
            match frame::parse_header(&self.rbuf[self.rstart..self.rend], max) {
                Ok(Header::Complete {
                    header_len,
                    payload_len,
                }) => {
                    let start = self.received - (self.rend - self.rstart) as u64;
                    self.frame_end = start
                        .saturating_add(header_len as u64)
                        .saturating_add(payload_len);
                    self.rstart += header_len;
                    return Ok(payload_len);
                }
                Ok(Header::NeedMore(_)) => {
                    let mid = self.has_buffered();
                    if self.fill_some(mid)? == 0 {
                        if mid {
                            return Err(self.truncated());
                        }
                        return Err(PipeError::Eof);
                    }
                }
                Err(e) => {
                    self.broken();
                    return Err(e.into());
                }
            }
        }
    }

    /// Reads the `len` payload bytes that follow a header.
    fn read_payload(&mut self, len: u64) -> Result<Payload> {
        let n = usize::try_from(len).map_err(|_| PipeError::FrameTooLarge {
            len,
            max: usize::MAX as u64,
        })?;
        if n <= READ_BUF {
            while self.rend - self.rstart < n {
                if self.rstart + n > self.rbuf.len() {
                    self.compact();
                }
                if self.fill_some(true)? == 0 {
                    return Err(self.truncated());
                }
            }
            let start = self.rstart;
            self.rstart += n;
            return Ok(Payload::Buffered { start, len: n });
        }
        let mut v = Vec::with_capacity(n.min(EAGER_ALLOC));
        v.extend_from_slice(&self.rbuf[self.rstart..self.rend]);
        self.rstart = 0;
        self.rend = 0;
        while v.len() < n {
            if v.len() == v.capacity() {
                let more = (n - v.len()).min(v.len().max(EAGER_ALLOC));
                v.reserve_exact(more);
            }
            let want = (v.capacity() - v.len()).min(n - v.len());
            let spare: &mut [MaybeUninit<u8>] = &mut v.spare_capacity_mut()[..want];
            let fd = self.fd()?;
            // Plain read(): the fds of this message, if any, came with its header.
            match rustix::io::read(fd, spare) {
                Ok(([], _)) => return Err(self.truncated()),
                Ok((got, _)) => {
                    let k = got.len();
                    self.received += k as u64;
                    // SAFETY: `read` initialized the first `k` bytes of the spare capacity
                    // (it returned them as `got`), so `len + k` bytes are initialized.
                    unsafe { v.set_len(v.len() + k) };
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => wait_readable(fd)?,
                Err(e) => return Err(self.recv_error(e.into(), true)),
            }
        }
        Ok(Payload::Owned(v))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.fd)
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .field("buffered", &(self.rend - self.rstart))
            .finish_non_exhaustive()
    }
}

// ----- travelling -----

/// The fd's index in the handle table, under the name `mp_core::handles::fd` reads.
struct FdIndex(u32);

impl Serialize for FdIndex {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_newtype_struct("MpFd", &self.0)
    }
}

impl Serialize for Connection {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let fd = self
            .fd
            .as_ref()
            .ok_or_else(|| S::Error::custom("a closed Connection cannot travel"))?;
        if self.has_buffered() || !self.fds.is_empty() {
            return Err(S::Error::custom(
                "a Connection holding received, unread data cannot travel (that data would be lost)",
            ));
        }
        let idx = handles::push_fd(fd.as_fd()).map_err(S::Error::custom)?;
        let mut st = s.serialize_struct("MpConnection", 5)?;
        st.serialize_field("fd", &FdIndex(idx))?;
        st.serialize_field("readable", &self.readable)?;
        st.serialize_field("writable", &self.writable)?;
        st.serialize_field("unix", &self.unix)?;
        st.serialize_field("max_message", &self.max_message)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "MpConnection")]
        struct Wire {
            #[serde(with = "mp_core::handles::fd")]
            fd: OwnedFd,
            readable: bool,
            writable: bool,
            unix: bool,
            max_message: u64,
        }
        let w = Wire::deserialize(d)?;
        let mut c = Connection::new(w.fd, w.readable, w.writable, w.unix);
        c.max_message = w.max_message;
        Ok(c)
    }
}

// ----- system calls -----

/// Writes every byte of `bufs` (no fds) with as few system calls as the kernel allows:
/// `send` for one slice, `sendmsg` for more.
fn send_slices(fd: BorrowedFd<'_>, bufs: &[&[u8]]) -> Result<()> {
    if let [one] = bufs {
        let mut sent = 0;
        while sent < one.len() {
            match rustix::net::send(fd, &one[sent..], SendFlags::NOSIGNAL) {
                Ok(n) => sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => wait_writable(fd)?,
                Err(e) => return Err(send_error(e.into())),
            }
        }
        return Ok(());
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut sent = 0;
    while sent < total {
        let mut slices = [IoSlice::new(&[]); 3];
        let mut used = 0;
        let mut skip = sent;
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            if used == slices.len() {
                break;
            }
            slices[used] = IoSlice::new(&b[skip..]);
            skip = 0;
            used += 1;
        }
        match rustix::net::sendmsg(
            fd,
            &slices[..used],
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => wait_writable(fd)?,
            Err(e) => return Err(send_error(e.into())),
        }
    }
    Ok(())
}

fn send_with_fds(fd: BorrowedFd<'_>, bufs: &[&[u8]], fds: &[OwnedFd]) -> Result<()> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    mp_core::fdpass::send_all(fd, bufs, &borrowed).map_err(send_error)
}

fn send_error(e: io::Error) -> PipeError {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => PipeError::BrokenPipe,
        _ => PipeError::Io(e),
    }
}

fn wait_readable(fd: BorrowedFd<'_>) -> io::Result<()> {
    crate::wait::poll_fds(&[fd], None)
        .map(drop)
        .map_err(|e| match e {
            PipeError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })
}

fn wait_writable(fd: BorrowedFd<'_>) -> Result<()> {
    let mut p = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::OUT,
    )];
    match rustix::event::poll(&mut p, None) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn encode_varint(mut v: u32, out: &mut [u8; MAX_VARINT]) -> usize {
    let mut i = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// Parses a LEB128 `u32`: the value and the bytes used, or `None` if malformed.
fn decode_varint(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().take(MAX_VARINT).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u32::try_from(v).ok().map(|v| (v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many fds a peer attaches, a connection holds at most `MAX_HELD_FDS`
    /// while a message is being read, and none once it is read.
    #[test]
    fn held_fds_are_bounded() {
        let (a, mut b) = pipe().expect("pipe");
        let dev_null = std::fs::File::open("/dev/null").expect("/dev/null");
        let copies = vec![dev_null.as_fd(); 250];
        let mut frame = 100u32.to_be_bytes().to_vec();
        frame.extend([7u8; 100]);
        // The header and 40 payload bytes, each with 250 fds: 11,000 in all.
        for byte in &frame[..44] {
            let fd = a.fd().expect("fd");
            mp_core::fdpass::send_all(fd, &[std::slice::from_ref(byte)], &copies).expect("send");
        }
        let mut got = 0;
        while got < 44 {
            got += b.fill_some(true).expect("receive");
            assert!(b.held <= MAX_HELD_FDS, "{} fds held", b.held);
        }
        assert!(b.held > 0, "no fds were received at all");
        let fd = a.fd().expect("fd");
        mp_core::fdpass::send_all(fd, &[&frame[44..]], &[]).expect("send");
        assert_eq!(b.recv_bytes().expect("message"), [7u8; 100]);
        assert_eq!((b.held, b.fds.len()), (0, 0));
    }
}
