//! Bytes and fds over a Unix stream socket (SCM_RIGHTS).
//!
//! Fds ride on the first byte(s) of what is sent; the receiver collects them in order,
//! so a carrier that knows how many fds each message holds (the table built by
//! [`crate::handles::encode`]) can give every message its own. Every send uses
//! `MSG_NOSIGNAL`: a closed peer is an `EPIPE` error, never a `SIGPIPE`.
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The most fds Linux carries in one `sendmsg` (SCM_MAX_FD).
pub const MAX_FDS_PER_SEND: usize = 253;

/// Sends every byte of `bufs` on the stream socket `sock`, attaching `fds` to the first
/// bytes (in chunks of [`MAX_FDS_PER_SEND`], each on its own byte).
pub fn send_all(sock: BorrowedFd<'_>, bufs: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let chunks = fds.len().div_ceil(MAX_FDS_PER_SEND);
    if chunks > total {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more fds than bytes to carry them",
        ));
    }
    let (mut sent, mut next_chunk) = (0usize, 0usize);
    while sent < total {
        let chunk = fds.chunks(MAX_FDS_PER_SEND).nth(next_chunk);
        // While more fd chunks wait behind this one, send a single byte so that each
        // chunk has its own byte to ride on.
        let limit = if next_chunk + 1 < chunks {
            1
        } else {
            usize::MAX
        };
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len());
        let (mut skip, mut room) = (sent, limit);
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let part = &b[skip..];
            skip = 0;
            let take = part.len().min(room);
            slices.push(IoSlice::new(&part[..take]));
            room -= take;
            if room == 0 {
                break;
            }
        }
        let mut space =
            [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_SEND))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if let Some(c) = chunk {
            if !control.push(SendAncillaryMessage::ScmRights(c)) {
                return Err(io::Error::other("ancillary buffer too small"));
            }
        }
        match sendmsg(sock, &slices, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => {
                sent += n;
                next_chunk += usize::from(chunk.is_some());
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => wait_writable(sock)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn wait_writable(sock: BorrowedFd<'_>) -> io::Result<()> {
    let mut p = [rustix::event::PollFd::new(
        &sock,
        rustix::event::PollFlags::OUT,
    )];
    match rustix::event::poll(&mut p, None) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How [`recv_some`] waits when nothing has arrived yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Do not wait: `WouldBlock`.
    Never,
    /// Sleep until something arrives.
    Block,
    /// Poll for up to [`crate::spin::SPIN`] when another CPU may run the peer, then
    /// sleep: for a peer that is expected to answer soon.
    SpinThenBlock,
}

/// What one [`recv_chunk`] received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Bytes received; 0 means end of file.
    pub bytes: usize,
    /// Fds appended to the caller's vector.
    pub fds: usize,
    /// Whether fds that came with these bytes were lost (`MSG_CTRUNC`): the process
    /// ran out of fds, say. Those that did arrive were appended all the same.
    pub truncated: bool,
}

/// Receives some bytes into `buf` (0 means end of file) with one system call that
/// returns data. With `fds`, it is `recvmsg` with room for [`MAX_FDS_PER_SEND`] fds,
/// which are appended (with `O_CLOEXEC`); Linux ends such a receive right after the
/// bytes that carried fds, so the fds belong to the last bytes returned. Without, it is
/// a plain `recv`, and the kernel closes any fd a peer attached: nothing is installed
/// in this process. Works on blocking and non-blocking sockets alike; `wait` says what
/// to do while nothing is there.
pub fn recv_chunk(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    mut fds: Option<&mut Vec<OwnedFd>>,
    wait: Wait,
) -> io::Result<Received> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_SEND))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // Non-blocking attempts while polling; the spin deadline is set at the first miss.
    let mut polling = match wait {
        Wait::Never => true,
        Wait::Block => false,
        Wait::SpinThenBlock => crate::spin::may_spin(),
    };
    let mut spin_until: Option<std::time::Instant> = None;
    loop {
        let mut flags = if polling {
            RecvFlags::DONTWAIT
        } else {
            RecvFlags::empty()
        };
        let got = match fds.as_deref_mut() {
            None => rustix::net::recv(sock, &mut *buf, flags).map(|(n, _)| Received {
                bytes: n,
                ..Received::default()
            }),
            Some(out) => {
                flags |= RecvFlags::CMSG_CLOEXEC;
                let mut iov = [IoSliceMut::new(&mut *buf)];
                recvmsg(sock, &mut iov, &mut control, flags).map(|msg| {
                    let before = out.len();
                    for m in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(it) = m {
                            out.extend(it);
                        }
                    }
                    Received {
                        bytes: msg.bytes,
                        fds: out.len() - before,
                        truncated: msg.flags.contains(ReturnFlags::CTRUNC),
                    }
                })
            }
        };
        match got {
            Ok(r) => {
                if spin_until.is_some() {
                    crate::spin::spun(true);
                }
                return Ok(r);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) if wait == Wait::Never => {
                return Err(io::ErrorKind::WouldBlock.into())
            }
            Err(rustix::io::Errno::AGAIN) if polling => {
                let now = std::time::Instant::now();
                if now < *spin_until.get_or_insert(now + crate::spin::SPIN) {
                    std::hint::spin_loop();
                } else {
                    crate::spin::spun(false);
                    polling = false;
                    spin_until = None;
                }
            }
            // A non-blocking socket with nothing to read: sleep in poll.
            Err(rustix::io::Errno::AGAIN) => {
                let mut p = [rustix::event::PollFd::new(
                    &sock,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut p, None) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives some bytes into `buf` (0 means end of file), appending any fds that came
/// with them to `fds` (received with `O_CLOEXEC`). Fds lost on the way (`MSG_CTRUNC`)
/// are an error. Works on blocking and non-blocking sockets alike; `wait` says what
/// to do while nothing is there.
pub fn recv_some(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut impl Extend<OwnedFd>,
    wait: Wait,
) -> io::Result<usize> {
    let mut got = Vec::new();
    let r = recv_chunk(sock, buf, Some(&mut got), wait)?;
    fds.extend(got);
    if r.truncated {
        return Err(io::Error::other(
            "received fds were truncated (too many in one message)",
        ));
    }
    Ok(r.bytes)
}

/// A blocking [`Read`] over a socket that collects the fds arriving with the bytes.
pub struct FdReader<'a> {
    sock: BorrowedFd<'a>,
    /// Fds received so far, in order.
    pub fds: Vec<OwnedFd>,
}

impl<'a> FdReader<'a> {
    /// Reads from `sock`.
    pub fn new(sock: BorrowedFd<'a>) -> Self {
        FdReader {
            sock,
            fds: Vec::new(),
        }
    }
}

impl Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv_some(self.sock, buf, &mut self.fds, Wait::Block)
    }
}

/// Sends one framed message (Python framing) with `fds` attached.
pub fn send_frame(sock: BorrowedFd<'_>, payload: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let mut hb = [0u8; crate::frame::MAX_HEADER];
    let header = crate::frame::encode_header(payload.len(), &mut hb);
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    send_all(sock, &[header, payload], &borrowed)
}

/// Receives one framed message of at most `max` bytes, with the fds that came with it.
pub fn recv_frame(sock: BorrowedFd<'_>, max: u64) -> crate::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut r = FdReader::new(sock);
    let payload = crate::frame::read_frame(&mut r, max)?;
    Ok((payload, r.fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

    #[test]
    fn frame_with_many_fds() {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let fds: Vec<OwnedFd> = (0..300)
            .map(|_| std::fs::File::open("/dev/null").unwrap().into())
            .collect();
        let payload = vec![7u8; 1000];
        send_frame(a.as_fd(), &payload, &fds).unwrap();
        let (got, got_fds) = recv_frame(b.as_fd(), 1 << 20).unwrap();
        assert_eq!(got, payload);
        assert_eq!(got_fds.len(), 300);
        drop(a);
        assert!(matches!(recv_frame(b.as_fd(), 10), Err(crate::Error::Eof)));
    }

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    /// The properties mp-pipe's accounting rests on: a receive with room for fds ends
    /// right after the bytes that carried some; a plain one installs none (the kernel
    /// drops them: the pipe below sees end of file once our own copy is closed).
    #[test]
    fn recv_chunk_ends_after_fds_and_plain_recv_drops_them() {
        let (a, b) = pair();
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        send_all(a.as_fd(), &[b"ab"], &[]).unwrap();
        send_all(a.as_fd(), &[b"cd"], &[w.as_fd(), w.as_fd()]).unwrap();
        send_all(a.as_fd(), &[b"ef"], &[w.as_fd()]).unwrap();
        send_all(a.as_fd(), &[b"gh"], &[]).unwrap();
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        let got = recv_chunk(b.as_fd(), &mut buf, Some(&mut fds), Wait::Block).unwrap();
        assert_eq!(
            (got.bytes, got.fds, got.truncated, &buf[..4]),
            (4, 2, false, &b"abcd"[..])
        );
        assert_eq!(fds.len(), 2);
        drop(fds);
        let got = recv_chunk(b.as_fd(), &mut buf, None, Wait::Block).unwrap();
        assert_eq!((got.bytes, got.fds, &buf[..2]), (2, 0, &b"ef"[..]));
        let got = recv_chunk(b.as_fd(), &mut buf, None, Wait::Never).unwrap();
        assert_eq!((got.bytes, &buf[..2]), (2, &b"gh"[..]));
        assert_eq!(
            recv_chunk(b.as_fd(), &mut buf, None, Wait::Never)
                .unwrap_err()
                .kind(),
            io::ErrorKind::WouldBlock
        );
        drop(w);
        let mut one = [0u8; 1];
        assert_eq!(rustix::io::read(&r, &mut one).unwrap(), 0, "no copy kept");
    }

    #[test]
    fn closed_peer_is_epipe_not_sigpipe() {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        drop(b);
        let e = send_frame(a.as_fd(), b"x", &[]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
