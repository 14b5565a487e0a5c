//! The library's private descriptors: a registry of the fds multiproc keeps for itself, so
//! that a forked child lets go of every one of them it does not own.
//!
//! # Why
//!
//! Under `fork` a child inherits every fd of its parent, as in Python: the user's files,
//! sockets and pipes stay open in the child, at the same numbers. But the library's own fds
//! (the pidfds of other children, the parent's ends of their bootstrap sockets, the
//! forkserver's control socket, a pool's worker pipes) must not live on in it: a worker that
//! keeps its own socket's other end never sees end of file, a pidfd kept by a grandchild
//! keeps nothing alive but confuses whoever polls it. Linux has no close-on-fork flag, so
//! the library records its fds here ([`PrivateFd`]) and the child of a fork calls
//! [`neutralize_inherited`] first thing.
//!
//! Every private fd is also close-on-exec, so no program started with
//! `std::process::Command` (or any exec) inherits one.
//!
//! # How a neutralised fd looks
//!
//! It is not closed. The child has a copy of the parent's memory, so the Rust object that
//! owned the number in the parent (a `Process`, a pool handle kept in a static ...) still
//! exists in the child and still owns that number. Had the number been closed, the next
//! `open` or `pidfd_open` could reuse it, and that stale object's drop would later close
//! whatever got the number: exactly how a grandchild used to lose its own parent pidfd and
//! the fds passed to it. Instead the number is overwritten, with `dup3`, by an inert
//! descriptor (`open("/", O_PATH | O_CLOEXEC)`). Then:
//! - the real resource (the socket end, the pidfd, the pipe end) is released in the child
//!   at once, since the child's reference to it is gone;
//! - the number stays allocated and owned by the same object, so nothing else can be given
//!   that number behind the object's back;
//! - I/O through the stale object fails with `EBADF` (and `poll` reports `POLLNVAL`): it
//!   can reach nothing;
//! - dropping the stale object closes only the placeholder.
//!
//! # Soundness
//!
//! The registry is a bitmap over fd numbers: bit `n` is set exactly while a [`PrivateFd`]
//! owns fd `n` (possibly a stale one, in a forked child). [`PrivateFd::new`] takes the fd
//! by value (an `OwnedFd`, so by I/O safety nobody else may close it) and sets the bit;
//! its `Drop` clears the bit *before* the fd is closed, and
//! [`PrivateFd::into_inner`] clears it before handing the fd back. So a set bit never
//! names a number that some other owner could hold, and [`neutralize_inherited`] only ever
//! replaces fds whose owner is a `PrivateFd`, which never looks at what its fd refers to
//! beyond doing I/O with it. That holds in a process with one thread, which is why
//! [`neutralize_inherited`] is `unsafe` and made for the child of a `fork` (which runs only
//! the thread that called `fork`). Whatever other threads of the parent were doing at
//! the moment of the fork, the child's snapshot is in one of these states for each fd:
//! bit set and fd open (neutralised), bit clear and fd open (between `open` and
//! registration, or between unregistration and `close`: the fd then leaks into that child,
//! harmlessly, as any fd would), or bit clear and fd closed. Never bit set and the number
//! free or someone else's.
//!
//! The after-fork path takes no lock and allocates nothing (the child of a multi-threaded
//! parent may have inherited a held lock, the allocator's included): the bitmap is made of
//! atomic words in pages that are allocated on first use, never freed, and installed with
//! a compare-and-swap, so a page that was being installed at the moment of the fork is
//! simply absent in the child (and no fd on it could be registered yet).
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// An fd the library keeps for itself: close-on-exec, and let go of in every child
/// forked while it lives (see the [module docs](self)).
///
/// ```
/// use mp_core::PrivateFd;
/// use std::os::fd::AsFd;
/// let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
/// let private = PrivateFd::new(a.into()).unwrap();
/// assert!(mp_core::private_fd::is_private(private.as_fd()));
/// let back = private.into_inner(); // an ordinary fd again
/// assert!(!mp_core::private_fd::is_private(back.as_fd()));
/// ```
#[derive(Debug)]
pub struct PrivateFd {
    fd: OwnedFd,
}

impl PrivateFd {
    /// Makes `fd` private: sets close-on-exec on it if it was not set, and records it, so
    /// that every child forked from now on lets go of it.
    ///
    /// Fails only if the fd's flags cannot be read or set. Allocates only the first time
    /// a page of fd numbers (4096 at first, then ever larger) holds a private fd.
    pub fn new(fd: OwnedFd) -> io::Result<PrivateFd> {
        let flags = rustix::io::fcntl_getfd(&fd)?;
        if !flags.contains(rustix::io::FdFlags::CLOEXEC) {
            rustix::io::fcntl_setfd(&fd, flags | rustix::io::FdFlags::CLOEXEC)?;
        }
        set(fd.as_raw_fd(), true);
        Ok(PrivateFd { fd })
    }

    /// A second private fd for the same open file (a close-on-exec `dup`).
    pub fn try_clone(&self) -> io::Result<PrivateFd> {
        PrivateFd::new(rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)?)
    }

    /// Ends the fd's private status and returns it (still close-on-exec): from now on a
    /// forked child inherits it like any other fd.
    pub fn into_inner(self) -> OwnedFd {
        let this = ManuallyDrop::new(self);
        set(this.fd.as_raw_fd(), false);
        // SAFETY: `this` is never dropped nor used again, so the fd is moved out exactly
        // once and keeps exactly one owner.
        unsafe { ptr::read(&this.fd) }
    }
}

impl Drop for PrivateFd {
    fn drop(&mut self) {
        // Unregister first: once the field is dropped the number is closed and may be
        // reused at once by another thread, and a set bit must never name that.
        set(self.fd.as_raw_fd(), false);
    }
}

impl AsFd for PrivateFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PrivateFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Whether `fd` is currently registered as private.
pub fn is_private(fd: BorrowedFd<'_>) -> bool {
    is_set(fd.as_raw_fd())
}

/// In the child of a `fork`: replaces every private fd inherited from the parent, except
/// those in `keep`, by an inert placeholder (see the [module docs](self)). The user's fds
/// are untouched. Takes no lock and allocates nothing.
///
/// On error some private fds may be left as they were, or, if no descriptor could be
/// opened at all, one may have been closed: the child should then exit at once (with
/// `_exit`), without dropping anything.
///
/// # Safety
///
/// The calling process must have a single thread, as the child of a `fork` does until it
/// starts one: another thread dropping a [`PrivateFd`] meanwhile could have its number
/// reused by someone else's fd, which would then be overwritten.
pub unsafe fn neutralize_inherited(keep: &[BorrowedFd<'_>]) -> io::Result<()> {
    let end = END.load(Ordering::Acquire);
    let mut inert = Inert::None;
    let result = (|| {
        for k in 0..PAGES {
            let start = page_start(k);
            if start >= end {
                break;
            }
            let Some(words) = page(k) else { continue };
            for (w, word) in words.iter().enumerate() {
                let first = start + w * 64;
                if first >= end {
                    break;
                }
                let mut bits = word.load(Ordering::Acquire);
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    // Every registered number came from an `OwnedFd`, so it fits.
                    let fd = (first + b) as RawFd;
                    if keep.iter().all(|k| k.as_raw_fd() != fd) {
                        inert.replace(fd)?;
                    }
                }
            }
        }
        Ok(())
    })();
    inert.close();
    result
}

// ---- the placeholder -----------------------------------------------------------------

/// The inert descriptor copied onto each neutralised number.
enum Inert {
    /// Not opened yet (none may be needed).
    None,
    /// Opened at a number of its own, closed at the end.
    Own(RawFd),
    /// Opened onto a neutralised number itself (there was no free number): it belongs to
    /// that number's stale owner and is never closed here.
    AtNumber(RawFd),
}

impl Inert {
    fn replace(&mut self, fd: RawFd) -> io::Result<()> {
        let src = match *self {
            Inert::Own(src) | Inert::AtNumber(src) => src,
            Inert::None => {
                *self = open_inert(fd)?;
                match *self {
                    Inert::Own(src) => src,
                    _ => return Ok(()), // it was opened at `fd` itself
                }
            }
        };
        dup3_retry(src, fd)
    }

    fn close(self) {
        if let Inert::Own(fd) = self {
            // SAFETY: opened by `open_inert` and owned by nobody else.
            unsafe { libc::close(fd) };
        }
    }
}

fn open_placeholder() -> io::Result<RawFd> {
    loop {
        // SAFETY: a NUL-terminated path; the returned fd is the caller's.
        let fd = unsafe { libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd >= 0 {
            return Ok(fd);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Opens the placeholder; `fd` is the first number to neutralise, given up to make room
/// if no number is free.
fn open_inert(fd: RawFd) -> io::Result<Inert> {
    match open_placeholder() {
        Ok(src) => Ok(Inert::Own(src)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
            // SAFETY: `fd` is a registered private fd, which this single-threaded child
            // is replacing anyway; the placeholder goes back onto it just below.
            unsafe { libc::close(fd) };
            let src = open_placeholder()?;
            if src == fd {
                return Ok(Inert::AtNumber(src));
            }
            dup3_retry(src, fd)?;
            Ok(Inert::Own(src))
        }
        Err(e) => Err(e),
    }
}

fn dup3_retry(src: RawFd, fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: `src` is the placeholder; `fd` is a registered private fd whose owner
        // keeps the number (see the module docs); dup3 replaces it atomically.
        if unsafe { libc::dup3(src, fd, libc::O_CLOEXEC) } >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) {
            return Err(e);
        }
    }
}

// ---- the bitmap ----------------------------------------------------------------------

/// Numbers in page 0; page `k` holds `PAGE0 << k`, so 20 pages cover every `i32`.
const PAGE0: usize = 4096;
const PAGES: usize = 20;

/// Page `k` (words of 64 bits), or null until first used; never freed once installed.
static PAGE: [AtomicPtr<AtomicU64>; PAGES] = [const { AtomicPtr::new(ptr::null_mut()) }; PAGES];
/// One past the highest number ever registered: where a scan may stop.
static END: AtomicUsize = AtomicUsize::new(0);

fn page_start(k: usize) -> usize {
    PAGE0 * ((1 << k) - 1)
}

fn page_words(k: usize) -> usize {
    (PAGE0 << k) / 64
}

/// The page of `fd` and its bit's index in that page.
fn place(fd: usize) -> (usize, usize) {
    let q = fd / PAGE0 + 1;
    let k = (usize::BITS - 1 - q.leading_zeros()) as usize;
    (k, fd - page_start(k))
}

fn page(k: usize) -> Option<&'static [AtomicU64]> {
    let p = PAGE[k].load(Ordering::Acquire);
    // SAFETY: a non-null entry was installed by `page_or_new` from a leaked allocation of
    // exactly `page_words(k)` words, which is never freed.
    (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p, page_words(k)) })
}

fn page_or_new(k: usize) -> &'static [AtomicU64] {
    if let Some(p) = page(k) {
        return p;
    }
    let fresh: Box<[AtomicU64]> = (0..page_words(k)).map(|_| AtomicU64::new(0)).collect();
    let raw = Box::into_raw(fresh).cast::<AtomicU64>();
    match PAGE[k].compare_exchange(ptr::null_mut(), raw, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        Err(_) => {
            // Another thread installed it first: free ours.
            // SAFETY: `raw` came from `Box::into_raw` of a slice of this length just above
            // and was never shared.
            drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(raw, page_words(k))) });
        }
    }
    page(k).unwrap_or(&[])
}

fn set(fd: RawFd, on: bool) {
    let Ok(n) = usize::try_from(fd) else { return };
    let (k, i) = place(n);
    let bit = 1u64 << (i % 64);
    if on {
        if let Some(w) = page_or_new(k).get(i / 64) {
            w.fetch_or(bit, Ordering::Release);
            END.fetch_max(n + 1, Ordering::Release);
        }
    } else if let Some(w) = page(k).and_then(|p| p.get(i / 64)) {
        w.fetch_and(!bit, Ordering::Release);
    }
}

fn is_set(fd: RawFd) -> bool {
    let Ok(n) = usize::try_from(fd) else {
        return false;
    };
    let (k, i) = place(n);
    page(k)
        .and_then(|p| p.get(i / 64))
        .is_some_and(|w| w.load(Ordering::Acquire) & (1u64 << (i % 64)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::empty()).unwrap()
    }

    #[test]
    fn pages_cover_every_number() {
        assert_eq!(place(0), (0, 0));
        assert_eq!(place(4095), (0, 4095));
        assert_eq!(place(4096), (1, 0));
        assert_eq!(place(3 * 4096 - 1), (1, 2 * 4096 - 1));
        assert_eq!(place(3 * 4096), (2, 0));
        let max = i32::MAX as usize;
        let (k, i) = place(max);
        assert!(k < PAGES && i < PAGE0 << k, "{k} {i}");
    }

    #[test]
    fn register_drop_and_into_inner() {
        let (r, _w) = pipe();
        let raw = r.as_raw_fd();
        assert!(!is_set(raw));
        let p = PrivateFd::new(r).unwrap();
        assert!(is_private(p.as_fd()));
        let flags = rustix::io::fcntl_getfd(&p).unwrap();
        assert!(
            flags.contains(rustix::io::FdFlags::CLOEXEC),
            "close-on-exec"
        );
        let c = p.try_clone().unwrap();
        assert!(is_private(c.as_fd()) && c.as_raw_fd() != raw);
        drop(c);
        let back = p.into_inner();
        assert_eq!(back.as_raw_fd(), raw);
        assert!(!is_private(back.as_fd()));
        let p = PrivateFd::new(back).unwrap();
        drop(p);
        assert!(!is_set(raw), "a dropped private fd is unregistered");
    }

    /// Waits up to 20 s for `fd` to be readable.
    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut p = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::time::Timespec {
            tv_sec: 20,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut p, Some(&ts)), Ok(n) if n > 0)
    }

    /// In a real fork: the child's private fds become placeholders (the resource is
    /// released while the child lives), the kept one and the user's fds stay.
    #[test]
    fn a_forked_child_lets_go_of_private_fds() {
        // A private pipe writer: the parent's reader sees EOF once both copies are gone.
        let (reader, writer) = pipe();
        let writer = PrivateFd::new(writer).unwrap();
        // A private fd on a page of its own, the fd the child keeps, and a user's fd.
        let high = rustix::io::fcntl_dupfd_cloexec(&reader, 5000).unwrap();
        let high = PrivateFd::new(high).unwrap();
        let (kept_r, kept_w) = pipe();
        let kept = PrivateFd::new(kept_w).unwrap();
        let (user_r, user_w) = pipe();
        // The child waits for this pipe's EOF before exiting (its copy of the writer is
        // private, so neutralised).
        let (go_r, go_w) = pipe();
        let go_w = PrivateFd::new(go_w).unwrap();
        let (w, h, k, u, g) = (
            writer.as_raw_fd(),
            high.as_raw_fd(),
            kept.as_raw_fd(),
            user_w.as_raw_fd(),
            go_r.as_raw_fd(),
        );
        // SAFETY: the child only makes raw syscalls (no allocation, no lock) and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: `k` stays open (it is kept); the rest is a forked child, which has a
            // single thread, making raw syscalls on numbers this test opened.
            let keep = [unsafe { BorrowedFd::borrow_raw(k) }];
            // SAFETY: as above: raw syscalls on this test's numbers, then `_exit`.
            let code = unsafe {
                let mut code = 0;
                if neutralize_inherited(&keep).is_err() {
                    code |= 1;
                }
                let o_path = |fd| libc::fcntl(fd, libc::F_GETFL) & libc::O_PATH != 0;
                if !o_path(w) || !o_path(h) {
                    code |= 2;
                }
                if o_path(k) || o_path(u) || o_path(g) {
                    code |= 4;
                }
                let b = [0u8; 1];
                if libc::write(w, b.as_ptr().cast(), 1) != -1
                    || *libc::__errno_location() != libc::EBADF
                {
                    code |= 8;
                }
                if libc::write(k, b.as_ptr().cast(), 1) != 1
                    || libc::write(u, b.as_ptr().cast(), 1) != 1
                {
                    code |= 16;
                }
                // Wait (20 s at most) for the parent to have checked the pipe's EOF.
                let mut p = libc::pollfd {
                    fd: g,
                    events: libc::POLLIN,
                    revents: 0,
                };
                libc::poll(&mut p, 1, 20_000);
                code
            };
            // SAFETY: ends the child without running anything of the parent's.
            unsafe { libc::_exit(code) };
        }
        drop(go_r);
        drop(writer);
        // The child still runs, yet the pipe reaches EOF: its copy of the writer is gone.
        assert!(
            readable(reader.as_fd()),
            "the child still holds the private writer"
        );
        let mut b = [0u8; 1];
        assert_eq!(rustix::io::read(&reader, &mut b).unwrap(), 0);
        drop(go_w);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        drop((high, kept, user_w));
        // The kept and user fds still worked in the child.
        assert_eq!(rustix::io::read(&kept_r, &mut b).unwrap(), 1);
        assert_eq!(rustix::io::read(&user_r, &mut b).unwrap(), 1);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the child's check bits");
    }
}
