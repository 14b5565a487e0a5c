//! Process-shared futex waits and wakes.
//!
//! The words live in `MAP_SHARED` memory (a [`crate::SharedRegion`]), so the
//! private-futex flag is never used. Waits take an absolute [`Deadline`] on
//! `CLOCK_MONOTONIC` (`FUTEX_WAIT_BITSET`), so an `EINTR` or a spurious wake-up never
//! stretches a timeout: callers loop on their condition and call [`wait`] again with
//! the same deadline.
use crate::Deadline;
use rustix::io::Errno;
use rustix::thread::futex;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicU32;

/// Blocks while `*word == expected`, until woken or `deadline`. Returns `false` only if
/// the deadline passed; `true` means "look again" (woken, value changed, or a signal).
pub fn wait(word: &AtomicU32, expected: u32, deadline: Deadline) -> bool {
    let abs = deadline.absolute();
    if abs.is_some() && deadline.expired() {
        return false;
    }
    match futex::wait_bitset(
        word,
        futex::Flags::empty(),
        expected,
        abs.as_ref(),
        NonZeroU32::MAX,
    ) {
        Ok(()) => true,
        Err(Errno::TIMEDOUT) => false,
        // AGAIN: the value changed; INTR: a signal. Anything else cannot happen with a
        // valid aligned reference; the caller re-checks its condition either way.
        Err(_) => true,
    }
}

/// Wakes up to `n` waiters on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), n).unwrap_or(0)
}

/// Wakes every waiter on `word`.
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, i32::MAX as u32)
}
