//! The side channel for items that hold fds: a `SOCK_SEQPACKET` socket pair owned by
//! the queue (both ends travel with it). The ring cannot carry fds, so a producer
//! sends an item's fds here, inside the producer lock and before it publishes the
//! record, as one message holding a 4-byte tag; the record carries the same tag.
//!
//! A consumer (inside the consumer lock) *peeks* the message, which installs copies of
//! the fds in its process and leaves the message queued; only after it has committed
//! the record does it dequeue the message (the kernel closes the fds still in flight).
//! So a consumer killed at any point leaves the fds for the next one, and a message
//! whose record was never published (a producer killed between the two) or whose
//! record was already committed (a consumer killed between the two) has a tag older
//! than the record being read and is discarded. So is a message that is not exactly a
//! 4-byte tag, which no producer sends (any holder of the queue could): it belongs to
//! no item, and left at the head it would fail the fds of every later one.
use mp_core::Deadline;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
    SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The most fds one item may hold (Linux's `SCM_MAX_FD`).
pub const MAX_FDS_PER_ITEM: usize = mp_core::fdpass::MAX_FDS_PER_SEND;

/// Why a send did not happen.
pub(crate) enum SendFail {
    /// The socket stayed full until the deadline (or at once when not blocking).
    Full,
    /// The socket failed.
    Io(io::Error),
}

/// Whether tag `a` was issued before tag `b` (tags wrap; 0 is never issued).
pub(crate) fn before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

/// What [`FdChannel::peek`] found at the head of the channel.
enum Peeked {
    /// A tag and copies of the fds sent with it.
    Message(u32, Vec<OwnedFd>),
    /// Anything but a 4-byte tag.
    Malformed,
}

/// The two ends of the side channel.
pub(crate) struct FdChannel {
    pub(crate) tx: OwnedFd,
    pub(crate) rx: OwnedFd,
}

impl FdChannel {
    pub(crate) fn new() -> io::Result<FdChannel> {
        let (tx, rx) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        Ok(FdChannel { tx, rx })
    }

    /// Sends `fds` under `tag`; waits for room until `deadline` if `block`.
    pub(crate) fn send(
        &self,
        tag: u32,
        fds: &[OwnedFd],
        block: bool,
        deadline: Deadline,
    ) -> Result<(), SendFail> {
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let bytes = tag.to_le_bytes();
        loop {
            let mut space =
                [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_ITEM))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
                return Err(SendFail::Io(io::Error::other("too many fds for one item")));
            }
            match sendmsg(
                &self.tx,
                &[IoSlice::new(&bytes)],
                &mut control,
                SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    if !block {
                        return Err(SendFail::Full);
                    }
                    let timeout = deadline.remaining_timespec();
                    if timeout.is_some_and(|t| t.tv_sec == 0 && t.tv_nsec == 0) {
                        return Err(SendFail::Full);
                    }
                    let mut p = [PollFd::new(&self.tx, PollFlags::OUT)];
                    match poll(&mut p, timeout.as_ref()) {
                        Ok(_) | Err(Errno::INTR) => {}
                        Err(e) => return Err(SendFail::Io(e.into())),
                    }
                }
                Err(e) => return Err(SendFail::Io(e.into())),
            }
        }
    }

    /// Peeks the next message: its tag and copies of its fds, or `Malformed` for a
    /// message that is not exactly a 4-byte tag (its fds are closed at once). `None` if
    /// none is queued.
    fn peek(&self) -> io::Result<Option<Peeked>> {
        let mut space =
            [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_ITEM))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut bytes = [0u8; 4];
        loop {
            let mut iov = [IoSliceMut::new(&mut bytes)];
            // TRUNC: the whole length of the message, however much of it fits.
            match recvmsg(
                &self.rx,
                &mut iov,
                &mut control,
                RecvFlags::PEEK | RecvFlags::TRUNC | RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for m in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(it) = m {
                            fds.extend(it);
                        }
                    }
                    if msg.bytes != 4 || msg.flags.contains(ReturnFlags::TRUNC) {
                        return Ok(Some(Peeked::Malformed));
                    }
                    // Fds lost on the way (this process out of fds): an error for this
                    // item; the message stays and is dropped later as a stale one.
                    if msg.flags.contains(ReturnFlags::CTRUNC) {
                        return Err(io::Error::other("the item's fds could not all be received"));
                    }
                    return Ok(Some(Peeked::Message(u32::from_le_bytes(bytes), fds)));
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Dequeues the next message, letting the kernel close the fds it holds.
    pub(crate) fn discard(&self) {
        let mut control = RecvAncillaryBuffer::default();
        let mut bytes = [0u8; 4];
        loop {
            let mut iov = [IoSliceMut::new(&mut bytes)];
            match recvmsg(&self.rx, &mut iov, &mut control, RecvFlags::DONTWAIT) {
                Err(Errno::INTR) => {}
                _ => return,
            }
        }
    }

    /// The fds sent under `tag`, left queued until [`discard`](Self::discard).
    /// Messages older than `tag` (stale, see the module docs) and messages that are not
    /// a 4-byte tag (which no producer sends) are dropped on the way.
    pub(crate) fn take(&self, tag: u32) -> Result<Vec<OwnedFd>, String> {
        loop {
            match self.peek() {
                Ok(Some(Peeked::Message(t, fds))) if t == tag => return Ok(fds),
                Ok(Some(Peeked::Message(t, _))) if before(t, tag) => self.discard(),
                // Not from a producer of this queue: nobody's fds.
                Ok(Some(Peeked::Malformed)) => self.discard(),
                Ok(_) => return Err(format!("the handles of the item (tag {tag}) are missing")),
                Err(e) => return Err(format!("fd channel: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_bytes(ch: &FdChannel, bytes: &[u8], fds: &[OwnedFd]) {
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !borrowed.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        }
        sendmsg(
            &ch.tx,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::DONTWAIT,
        )
        .expect("send");
    }

    fn null() -> OwnedFd {
        std::fs::File::open("/dev/null").expect("/dev/null").into()
    }

    /// A message that is not exactly a 4-byte tag (one any holder of the queue can
    /// send) is skipped like a stale one: it used to stay at the head of the channel
    /// and fail the fds of every later item ("malformed message on the fd channel"),
    /// and a longer one was read as the tag in its first 4 bytes.
    #[test]
    fn malformed_messages_are_skipped() {
        let ch = FdChannel::new().expect("channel");
        send_bytes(&ch, &[7, 0, 0], &[null()]);
        send_bytes(&ch, &[], &[]);
        send_bytes(&ch, &[7, 0, 0, 0, 0], &[null(), null()]);
        ch.send(7, &[null()], false, Deadline::NEVER)
            .unwrap_or_else(|_| panic!("send"));
        let fds = ch.take(7).expect("the item's fds behind the garbage");
        assert_eq!(fds.len(), 1);
        ch.discard();
        assert!(ch.take(8).is_err(), "nothing left");
    }
}
