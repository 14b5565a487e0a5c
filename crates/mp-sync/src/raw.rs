//! The robust lock core shared by [`Lock`](crate::Lock), [`RLock`](crate::RLock), the
//! [`Barrier`](crate::Barrier)'s internal lock and, through them,
//! [`Condition`](crate::Condition).
//!
//! `word` is 0 when free, else the holder's packed id (see `ident`), possibly with the
//! [`WAITERS`] flag, and with the [`GUARDED`] flag when a guard holds it (the holder
//! passes it in as part of its id). `seq` is the futex word sleepers block on: a release that finds the
//! flag bumps it and wakes one sleeper. So the uncontended path is one CAS to take and
//! one swap to release, and no syscall.
//!
//! A sleeper never sleeps longer than [`SLICE`] at a time. When a slice passes and the
//! same holder still holds the word, it checks that the holder is alive (`/proc`); a
//! dead holder is replaced with one CAS from the exact word seen, so only one
//! acquirer takes over, and it is told ([`Acquired::OwnerDied`]).
use crate::ident::{is_alive, GUARDED, ID_MASK, WAITERS};
use mp_core::{futex, Deadline};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The longest a sleeper sleeps before it checks the holder's liveness.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// How many times a contended acquirer polls before it sleeps (only when more than one
/// CPU is available; a wake-up costs tens of microseconds, a poll a few nanoseconds).
const SPINS: u32 = 100;

/// The outcome of an acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Taken.
    Yes,
    /// Taken from a holder that died holding it.
    OwnerDied,
    /// Not taken (busy, and not blocking or the deadline passed).
    No,
}

/// The outcome of a release that refuses guard-held locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Released {
    /// Released.
    Yes,
    /// It was free.
    Free,
    /// A guard holds it: nothing changed.
    Guarded,
}

/// A lock word and its futex. `#[repr(C)]` atomics only: lives in shared memory.
#[repr(C)]
pub(crate) struct RawLock {
    word: AtomicU64,
    seq: AtomicU32,
    _pad: AtomicU32,
}

/// How long a "still alive" answer about a holder is trusted by the thread that got it,
/// so that a loop of failing `try_lock`s does not read `/proc` on every try.
const ALIVE_FOR: Duration = Duration::from_millis(10);

thread_local! {
    /// The last holder this thread found alive, and when.
    static LAST_ALIVE: std::cell::Cell<Option<(u64, std::time::Instant)>> = const { std::cell::Cell::new(None) };
}

/// [`is_alive`], remembering a live answer for [`ALIVE_FOR`].
fn holder_alive(holder: u64) -> bool {
    let now = std::time::Instant::now();
    if let Some((h, at)) = LAST_ALIVE.with(|c| c.get()) {
        if h == holder && now.duration_since(at) < ALIVE_FOR {
            return true;
        }
    }
    let alive = is_alive(holder);
    if alive {
        LAST_ALIVE.with(|c| c.set(Some((holder, now))));
    }
    alive
}

/// The earlier of `deadline` and one [`SLICE`] from now.
fn slice_of(deadline: Deadline) -> Deadline {
    match deadline.remaining() {
        Some(r) if r <= SLICE => deadline,
        _ => Deadline::from_now(SLICE),
    }
}

impl RawLock {
    /// The holder's packed id (the waiters flag cleared), 0 if free.
    #[inline]
    pub(crate) fn holder(&self) -> u64 {
        self.word.load(Ordering::Relaxed) & !WAITERS
    }

    /// As [`holder`](Self::holder), with Acquire ordering: what the release that
    /// freed the word before the current hold wrote is visible after it.
    #[inline]
    pub(crate) fn holder_acquire(&self) -> u64 {
        self.word.load(Ordering::Acquire) & !WAITERS
    }

    /// One CAS: takes the lock if it is free.
    #[inline]
    pub(crate) fn try_fast(&self, me: u64) -> bool {
        self.word
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the lock for `me`: blocking until `deadline` if `block`, else one try.
    #[inline]
    pub(crate) fn acquire(&self, me: u64, block: bool, deadline: Deadline) -> Acquired {
        if self.try_fast(me) {
            return Acquired::Yes;
        }
        self.acquire_slow(me, block, deadline)
    }

    #[cold]
    fn acquire_slow(&self, me: u64, block: bool, deadline: Deadline) -> Acquired {
        if block && mp_core::spin::may_spin() {
            for _ in 0..SPINS {
                let cur = self.word.load(Ordering::Relaxed);
                if cur == 0 {
                    if self.try_fast(me) {
                        return Acquired::Yes;
                    }
                } else if cur & WAITERS != 0 {
                    break; // others already sleep: join them rather than burn the CPU
                }
                std::hint::spin_loop();
            }
        }
        // Once we have slept, we take the lock with the flag set: other sleepers may
        // remain, and our release must wake them.
        let mut slept = false;
        let mut check_holder = !block;
        loop {
            // Read `seq` before looking at the word: a release that happens after we
            // saw the word held bumps `seq` after it, so our futex wait cannot miss it.
            let seq = self.seq.load(Ordering::Acquire);
            let cur = self.word.load(Ordering::Relaxed);
            if cur == 0 {
                let new = if slept { me | WAITERS } else { me };
                if self
                    .word
                    .compare_exchange(0, new, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Acquired::Yes;
                }
                continue;
            }
            let giving_up = !block || deadline.expired();
            if check_holder || giving_up {
                check_holder = false;
                if !holder_alive(cur & !WAITERS) {
                    if self.take_over(cur, me) {
                        return Acquired::OwnerDied;
                    }
                    continue;
                }
            }
            if giving_up {
                return Acquired::No;
            }
            if cur & WAITERS == 0
                && self
                    .word
                    .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            slept = true;
            if !futex::wait(&self.seq, seq, slice_of(deadline)) {
                // A slice (or the deadline) passed with no release: look at the holder.
                check_holder = self.word.load(Ordering::Relaxed) & !WAITERS == cur & !WAITERS;
            }
        }
    }

    /// Replaces the dead holder seen as `cur` with `me`, keeping the waiters flag.
    fn take_over(&self, cur: u64, me: u64) -> bool {
        self.word
            .compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock unless it is free or held through a guard. `before` runs
    /// before each attempt to free the word (so what it writes is published by the
    /// release).
    #[inline]
    pub(crate) fn release_unguarded(&self, before: impl Fn()) -> Released {
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return Released::Free;
            }
            if cur & GUARDED != 0 {
                return Released::Guarded;
            }
            before();
            match self
                .word
                .compare_exchange_weak(cur, 0, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur & WAITERS != 0 {
            self.wake_one();
        }
        Released::Yes
    }

    /// Turns the hold of `me` (which carries [`GUARDED`]) into a plain hold, keeping
    /// the waiters flag. False (and nothing changes) if `me` does not hold it.
    pub(crate) fn unguard(&self, me: u64) -> bool {
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            if cur & !WAITERS != me || me & GUARDED == 0 {
                return false;
            }
            match self.word.compare_exchange_weak(
                cur,
                cur & !GUARDED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Releases whoever holds the lock, however it was taken. Returns false if it was
    /// not held.
    #[inline]
    pub(crate) fn release_any(&self) -> bool {
        let prev = self.word.swap(0, Ordering::Release);
        if prev & WAITERS != 0 {
            self.wake_one();
        }
        prev != 0
    }

    /// Releases the lock if `me` holds it. Returns false (and changes nothing) if not.
    #[inline]
    pub(crate) fn release_if(&self, me: u64) -> bool {
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            if cur & !WAITERS != me || cur & ID_MASK == 0 {
                return false;
            }
            match self
                .word
                .compare_exchange_weak(cur, 0, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur & WAITERS != 0 {
            self.wake_one();
        }
        true
    }

    /// Releases the lock held by the caller (checked beforehand): one swap.
    #[inline]
    pub(crate) fn release_owned(&self) {
        if self.word.swap(0, Ordering::Release) & WAITERS != 0 {
            self.wake_one();
        }
    }

    #[cold]
    fn wake_one(&self) {
        self.seq.fetch_add(1, Ordering::Release);
        futex::wake(&self.seq, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::process_id;

    fn raw() -> RawLock {
        RawLock {
            word: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            _pad: AtomicU32::new(0),
        }
    }

    #[test]
    fn take_release_and_try() {
        let l = raw();
        let me = process_id();
        assert_eq!(l.acquire(me, false, Deadline::NEVER), Acquired::Yes);
        assert_eq!(l.holder(), me);
        assert_eq!(l.acquire(me, false, Deadline::NEVER), Acquired::No);
        assert!(!l.release_if(me ^ 1));
        assert!(l.release_if(me));
        assert!(!l.release_any());
        assert_eq!(l.holder(), 0);
    }

    #[test]
    fn a_guarded_hold_refuses_a_plain_release() {
        let l = raw();
        let me = process_id() | GUARDED;
        assert_eq!(l.acquire(me, false, Deadline::NEVER), Acquired::Yes);
        assert_eq!(l.release_unguarded(|| {}), Released::Guarded);
        assert_eq!(l.holder(), me);
        assert!(!l.unguard(me & !GUARDED), "a plain id unguards nothing");
        assert!(l.unguard(me));
        assert_eq!(l.holder(), me & !GUARDED);
        assert_eq!(l.release_unguarded(|| {}), Released::Yes);
        assert_eq!(l.release_unguarded(|| {}), Released::Free);
    }

    #[test]
    fn dead_holder_is_replaced_once() {
        let l = raw();
        // A holder with our pid and another start time: a dead, recycled id.
        let dead = process_id() ^ (1 << 40);
        l.word.store(dead | WAITERS, Ordering::Relaxed);
        let me = process_id();
        assert_eq!(l.acquire(me, false, Deadline::NEVER), Acquired::OwnerDied);
        assert_eq!(l.holder(), me);
        assert_eq!(l.acquire(me, false, Deadline::NEVER), Acquired::No);
        assert!(l.release_any());
    }

    #[test]
    fn timed_acquire_times_out() {
        let l = raw();
        let me = process_id();
        assert_eq!(l.acquire(me, true, Deadline::NEVER), Acquired::Yes);
        let t = std::time::Instant::now();
        assert_eq!(
            l.acquire(me, true, Deadline::from_now(Duration::from_millis(120))),
            Acquired::No
        );
        assert!(t.elapsed() >= Duration::from_millis(120));
    }
}
