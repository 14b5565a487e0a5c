//! The tracker process itself. Its entry is a hook that runs before `main` in every
//! process of a binary that links mp-shm: in a process started with [`MARKER`], it
//! becomes the tracker and never returns to the program; anywhere else it returns at
//! once. So the tracker needs no call from `main`, and never runs the user's code.
//!
//! Anywhere else, the hook offers the tracker's socket to every child this process will
//! start (see the parent module), before `main`, so that even a parent that never touches
//! a named segment shares its tracker with children that do.
//!
//! It reads messages (`+name`, `-name`) from its socket, coming from every process of its
//! tree, until end of file (the last of them exited or was killed), then unlinks every
//! segment still registered, with a warning naming each, and exits. Its peers are treated
//! as strangers all the same: a malformed message is skipped, never trusted for a size,
//! an empty one is not taken for end of file, and the fds it did not ask for are closed
//! first thing.
use super::{ADD, READY, REMOVE};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{recv, send, RecvFlags, SendFlags};
use std::os::fd::{BorrowedFd, RawFd};

/// The environment variable that makes a process the tracker; its value is [`FD`].
pub(super) const MARKER: &str = "MULTIPROC_SHM_TRACKER";
/// The tracker's socket in the tracker process.
pub(super) const FD: RawFd = 3;

/// The hook, in the ELF initializers the loader runs before `main`.
// SAFETY: `.init_array` holds pointers to functions the loader calls, with no argument
// this one reads, before `main`; `entry` is such a function, and the section is not used
// for anything else.
#[unsafe(link_section = ".init_array")]
#[used]
pub(super) static ENTRY: extern "C" fn() = entry;

extern "C" fn entry() {
    // SAFETY: a NUL-terminated name; getenv reads the environment, which nothing writes
    // before `main` in a process we started (and in any other, only the loader did).
    let v = unsafe { libc::getenv(c"MULTIPROC_SHM_TRACKER".as_ptr()) };
    if v.is_null() {
        // A process of the program: its children share its tracker (no lock, no
        // allocation; the tracker itself starts only when first needed).
        mp_core::inherit::offer(&super::OFFER);
        mp_core::inherit::hold_across_fork(&super::FORK_HOLD);
        return;
    }
    // SAFETY: getenv returned a NUL-terminated string that lives as long as the
    // environment, which is not changed while we read it.
    let value = unsafe { std::ffi::CStr::from_ptr(v) };
    if value.to_bytes() != FD.to_string().as_bytes() {
        // SAFETY: leave at once, running nothing of the program's.
        unsafe { libc::_exit(70) }
    }
    serve()
}

/// A segment name as `SharedMemory` accepts them (1 to 250 bytes, no '/' or NUL).
pub(crate) fn valid(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= 250 && !name.contains(&b'/') && !name.contains(&0)
}

/// Applies one message to the list of registered segments; anything malformed is
/// skipped.
fn apply(names: &mut Vec<Vec<u8>>, msg: &[u8]) {
    match msg.split_first() {
        Some((&ADD, name)) if valid(name) => names.push(name.to_vec()),
        Some((&REMOVE, name)) => {
            if let Some(i) = names.iter().rposition(|n| n == name) {
                names.swap_remove(i);
            }
        }
        _ => {}
    }
}

fn serve() -> ! {
    // SAFETY: this fresh process keeps stdio and its socket and closes every other fd
    // it inherited (the spawning process's fds without close-on-exec): no object of this
    // process owns them, `main` never runs here.
    unsafe { mp_core::exec::close_inherited_above(FD) };
    // SAFETY: the spawner put our socket at FD, and nothing else in this process uses
    // that number; the borrow lives until `_exit`.
    let sock = unsafe { BorrowedFd::borrow_raw(FD) };
    if send(sock, &[READY], SendFlags::NOSIGNAL).is_err() {
        // SAFETY: leave at once; nothing was registered.
        unsafe { libc::_exit(71) }
    }
    let names = read_messages(sock);
    super::report::install();
    for n in names {
        let mut path = Vec::with_capacity(n.len() + 1);
        path.push(b'/');
        path.extend_from_slice(&n);
        let Ok(p) = std::ffi::CString::new(path) else {
            continue;
        };
        // A segment already gone was unlinked behind the tracker's back: nothing leaked.
        if rustix::shm::unlink(p.as_c_str()).is_ok() {
            tracing::warn!(
                // Quoted and escaped: a name may hold any byte but '/' and NUL.
                segment = ?String::from_utf8_lossy(&n),
                "unlinked a segment still registered when the last process of its tree \
                 ended (its creator was killed, or never unlinked it)"
            );
        }
    }
    // SAFETY: leave at once, running no destructor or handler of the program.
    unsafe { libc::_exit(0) }
}

/// Reads messages until end of file (every copy of the other end closed); the segments
/// still registered then.
pub(crate) fn read_messages(sock: BorrowedFd<'_>) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    // One message per read (a seqpacket socket); a longer one is cut and skipped. A
    // plain `recv`: the kernel closes any fd attached to a message.
    let mut buf = [0u8; 512];
    loop {
        match recv(sock, &mut buf[..], RecvFlags::TRUNC) {
            // An empty message reads as 0 bytes too: the end is a hang-up with no byte
            // left to read (FIONREAD counts every queued message's bytes here).
            Ok((0, 0)) if hung_up(sock) && rustix::io::ioctl_fionread(sock).unwrap_or(0) == 0 => {
                return names
            }
            Ok((n, full)) => {
                if let Some(msg) = buf.get(..n).filter(|_| full == n) {
                    apply(&mut names, msg);
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return names,
        }
    }
}

/// Whether every copy of the other end of `sock` is closed.
fn hung_up(sock: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&sock, PollFlags::RDHUP)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0
        && fds[0].revents().intersects(PollFlags::HUP | PollFlags::RDHUP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_add_remove_and_skip_garbage() {
        let mut names = Vec::new();
        apply(&mut names, b"+a");
        apply(&mut names, b"+b");
        apply(&mut names, b"+a");
        apply(&mut names, b"-a");
        assert_eq!(names.len(), 2, "one of the two registrations of a remains");
        for bad in [
            &b""[..],
            b"+",
            b"+x/y",
            b"+x\0",
            b"?z",
            b"-nope",
            &[b'+'; 300][..],
        ] {
            apply(&mut names, bad);
        }
        assert_eq!(names.len(), 2, "malformed messages change nothing");
        // Any bytes: no panic, only valid names kept.
        let mut x: u32 = 0x9e37_79b9;
        for len in 0..400 {
            let msg: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            apply(&mut names, &msg);
        }
        assert!(names.iter().all(|n| valid(n)));
    }

    /// Messages from several copies of the client end, an empty one among them, then
    /// end of file once the last copy is closed.
    #[test]
    fn collects_until_the_last_copy_is_closed() {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        use std::os::fd::AsFd;
        let (client, tracker) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let other = client.try_clone().unwrap();
        for (s, m) in [
            (&client, &b"+a"[..]),
            (&other, b""),
            (&other, b"+b"),
            (&client, b"-a"),
        ] {
            send(s, m, SendFlags::NOSIGNAL).unwrap();
        }
        drop(client);
        send(&other, b"+c", SendFlags::NOSIGNAL).unwrap();
        // An empty message just before the end, with one more behind it.
        send(&other, b"", SendFlags::NOSIGNAL).unwrap();
        send(&other, b"+d", SendFlags::NOSIGNAL).unwrap();
        drop(other);
        assert_eq!(
            read_messages(tracker.as_fd()),
            vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
    }
}
