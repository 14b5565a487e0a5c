//! Who holds a lock: a task id (pid or tid) and that task's start time, packed in a
//! `u64`, and whether such a holder is still alive.
//!
//! A packed id is `(start_time_low32 << 32) | id`. Linux ids are below `2^22`, so bits
//! 31 and 30 are free for the lock word's "waiters" ([`WAITERS`]) and "held through a
//! guard" ([`GUARDED`]) flags. The start time (field 22
//! of `/proc/<id>/stat`, in clock ticks since boot) defeats id reuse: a recycled id has
//! a different start time.
//!
//! Our own ids are cached. The process id lives in a private page marked
//! `MADV_WIPEONFORK`, so any fork (libc's, or a raw `clone`) hands the child a zeroed
//! page and it recomputes its id; thread ids are cached per thread beside the process id
//! they were computed under, so they are recomputed after a fork as well.
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The bits of a packed id that hold the pid or tid.
pub(crate) const ID_MASK: u64 = 0x3fff_ffff;
/// The "someone may be sleeping on this lock" flag of a lock word.
pub(crate) const WAITERS: u64 = 1 << 31;
/// The "held through a guard" flag of a lock word: only that guard releases it.
pub(crate) const GUARDED: u64 = 1 << 30;

fn pack(id: u32, start: u64) -> u64 {
    ((start & 0xffff_ffff) << 32) | (u64::from(id) & ID_MASK)
}

/// The id part of a packed id.
pub(crate) fn id_of(packed: u64) -> u32 {
    (packed & ID_MASK) as u32
}

/// Reads the state letter (field 3) and start time (field 22) of `/proc/<id>/stat`.
/// `Err(true)` means the task does not exist, `Err(false)` that we could not tell.
fn read_stat(id: u32) -> Result<(u8, u64), bool> {
    let buf = match std::fs::read(format!("/proc/{id}/stat")) {
        Ok(b) => b,
        Err(e) => {
            let gone =
                e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH);
            return Err(gone);
        }
    };
    parse_stat(&buf).ok_or(false)
}

/// Parses the state letter (field 3) and start time (field 22) of a `stat` line. The
/// command name (field 2) may hold spaces and parentheses: fields 3.. start after the
/// last ')'.
fn parse_stat(buf: &[u8]) -> Option<(u8, u64)> {
    let close = buf.iter().rposition(|&b| b == b')')?;
    let mut fields = buf
        .get(close + 1..)?
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    // Field 3 was just read; field 22 is 19 further.
    let start = std::str::from_utf8(fields.nth(18)?)
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some((state, start))
}

/// Whether the holder named by `packed` (a lock word, the waiters flag ignored) may still
/// be alive. Only a certain death answers `false`: a missing task, a dead or zombie task
/// (whose thread group is empty), or a task with another start time (the id was
/// reused). If `/proc` cannot be read, the holder counts as alive.
pub(crate) fn is_alive(packed: u64) -> bool {
    let id = id_of(packed);
    let start = (packed >> 32) as u32;
    match read_stat(id) {
        Err(gone) => !gone,
        Ok((state, now_start)) => {
            if start != 0 && now_start as u32 != start {
                return false;
            }
            match state {
                b'X' | b'x' => false,
                // A zombie leader may still have live threads (it called pthread_exit).
                b'Z' => std::fs::read_dir(format!("/proc/{id}/task"))
                    .map(|d| d.count() > 1)
                    .unwrap_or(false),
                _ => true,
            }
        }
    }
}

fn packed_self(id: u32) -> u64 {
    // If /proc is unreadable the start time is 0: liveness then rests on the id alone.
    let start = read_stat(id).map(|(_, s)| s).unwrap_or(0);
    pack(id, start)
}

/// The process-id cache, in a page the kernel zeroes in a forked child. `None` if the
/// page could not be set up (a kernel older than 4.14): then every call asks the kernel.
fn fork_safe_cell() -> Option<&'static AtomicU64> {
    static CELL: OnceLock<Option<&'static AtomicU64>> = OnceLock::new();
    *CELL.get_or_init(|| {
        use rustix::mm::{madvise, mmap_anonymous, munmap, Advice, MapFlags, ProtFlags};
        let len = rustix::param::page_size();
        // SAFETY: a fresh private anonymous mapping; no Rust object lives there yet.
        let p = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
            .ok()?
        };
        // SAFETY: `p` is the mapping just made, of `len` bytes.
        if unsafe { madvise(p, len, Advice::LinuxWipeOnFork) }.is_err() {
            // SAFETY: unmaps the mapping just made; nothing refers to it.
            let _ = unsafe { munmap(p, len) };
            return None;
        }
        // SAFETY: the page is zero-filled (a valid AtomicU64), page-aligned, and never
        // unmapped, so a `'static` shared reference to its first 8 bytes is sound. The
        // kernel zeroing it in a forked child happens before the child runs any code.
        Some(unsafe { &*p.cast::<AtomicU64>() })
    })
}

/// This process: pid and start time, packed.
#[inline]
pub(crate) fn process_id() -> u64 {
    if let Some(cell) = fork_safe_cell() {
        let v = cell.load(Ordering::Relaxed);
        if v != 0 {
            return v;
        }
        let v = packed_self(rustix::process::getpid().as_raw_nonzero().get() as u32);
        cell.store(v, Ordering::Relaxed);
        v
    } else {
        static SLOW: AtomicU64 = AtomicU64::new(0);
        let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
        let v = SLOW.load(Ordering::Relaxed);
        if v != 0 && id_of(v) == pid {
            return v;
        }
        let v = packed_self(pid);
        SLOW.store(v, Ordering::Relaxed);
        v
    }
}

thread_local! {
    /// (process id it was computed under, this thread's packed id).
    static THREAD: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// This thread: tid and the thread's start time, packed.
#[inline]
pub(crate) fn thread_id() -> u64 {
    let proc_id = process_id();
    THREAD.with(|t| {
        let (under, tid) = t.get();
        if under == proc_id {
            return tid;
        }
        let tid = packed_self(rustix::thread::gettid().as_raw_nonzero().get() as u32);
        t.set((proc_id, tid));
        tid
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ids_are_alive_and_stable() {
        let p = process_id();
        assert_eq!(p, process_id());
        assert_eq!(id_of(p), std::process::id());
        assert_ne!(p >> 32, 0, "start time read from /proc");
        assert!(is_alive(p));
        let t = thread_id();
        assert!(is_alive(t));
        let other = std::thread::spawn(thread_id).join().unwrap();
        assert_ne!(other, t);
        // The thread is gone: its id is dead.
        assert!(!is_alive(other));
    }

    #[test]
    fn reused_id_or_missing_task_is_dead() {
        let p = process_id();
        // Same pid, another start time: a recycled pid.
        assert!(!is_alive(p ^ (1 << 40)));
        // pid_max is at most 2^22: this id never exists.
        assert!(!is_alive(pack((1 << 22) + 5, 1)));
    }

    #[test]
    fn parses_names_with_parentheses() {
        let line = b"123 (a) b) (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 99\n";
        assert_eq!(parse_stat(line), Some((b'S', 424242)));
        assert_eq!(parse_stat(b"123 (x) Z 1 2"), None);
        assert_eq!(parse_stat(b"garbage"), None);
    }
}
