//! [`wait`]: readiness across many Connections, sockets and process sentinels at once.
use crate::connection::Connection;
use crate::error::{PipeError, Result};
use mp_core::Deadline;
use rustix::event::{PollFd, PollFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

/// Anything [`wait`] can watch: every `AsFd` type (sockets, pipes, the pidfd a process
/// exposes as its sentinel ...) and [`Connection`], whose buffered messages its fd
/// alone does not show.
pub trait Waitable {
    /// The fd to poll for readability.
    fn wait_fd(&self) -> Result<BorrowedFd<'_>>;
    /// Whether the object is ready without asking the kernel (data already buffered).
    fn ready_now(&self) -> bool {
        false
    }
}

impl<T: AsFd + ?Sized> Waitable for T {
    fn wait_fd(&self) -> Result<BorrowedFd<'_>> {
        Ok(self.as_fd())
    }
}

impl Waitable for Connection {
    fn wait_fd(&self) -> Result<BorrowedFd<'_>> {
        self.fd()
    }
    fn ready_now(&self) -> bool {
        self.ready_without_io()
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes (`None`: no
/// limit), and returns the indices of the ready ones in input order; empty on timeout.
///
/// A Connection is ready when a message or end of file can be received (a following
/// `recv` does not block on a whole message that has not begun to arrive); a process
/// sentinel when the process has exited. Python's `multiprocessing.connection.wait`.
/// An empty list returns an empty result at once (it could never become ready).
///
/// ```
/// use std::time::Duration;
/// let (mut a, b) = mp_pipe::pipe()?;
/// let (c, _d) = mp_pipe::pipe()?;
/// assert!(mp_pipe::wait(&[&b, &c], Some(Duration::ZERO))?.is_empty());
/// a.send_bytes(b"hi")?;
/// assert_eq!(mp_pipe::wait(&[&b, &c], None)?, vec![0]);
/// # Ok::<(), mp_pipe::PipeError>(())
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>> {
    if objects.is_empty() {
        return Ok(Vec::new());
    }
    let mut fds = Vec::with_capacity(objects.len());
    let mut any_now = false;
    for o in objects {
        fds.push(o.wait_fd()?);
        any_now |= o.ready_now();
    }
    let polled = poll_fds(
        &fds,
        if any_now {
            Some(Duration::ZERO)
        } else {
            timeout
        },
    )?;
    let mut ready = Vec::new();
    let mut p = polled.iter().peekable();
    for (i, o) in objects.iter().enumerate() {
        let by_poll = p.next_if_eq(&&i).is_some();
        if by_poll || o.ready_now() {
            ready.push(i);
        }
    }
    Ok(ready)
}

/// Polls `fds` for readability (end of file and errors count as ready), retrying after
/// signals until the deadline. Returns the indices of the ready fds.
pub(crate) fn poll_fds(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Result<Vec<usize>> {
    let deadline = Deadline::after(timeout);
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    loop {
        let left = deadline.remaining_timespec();
        match rustix::event::poll(&mut pfds, left.as_ref()) {
            Ok(0) if deadline.expired() => return Ok(Vec::new()),
            Ok(0) => continue,
            Ok(_) => {
                let mut ready = Vec::new();
                for (i, p) in pfds.iter().enumerate() {
                    let r = p.revents();
                    if r.contains(PollFlags::NVAL) {
                        return Err(PipeError::Io(io::Error::from_raw_os_error(libc::EBADF)));
                    }
                    if !r.is_empty() {
                        ready.push(i);
                    }
                }
                return Ok(ready);
            }
            Err(rustix::io::Errno::INTR) => {
                if deadline.expired() {
                    return Ok(Vec::new());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
