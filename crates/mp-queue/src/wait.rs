//! Sleeping and waking across processes without a system call when nobody sleeps: an
//! event count in shared memory.
//!
//! A sleeper registers in `waiters`, reads `signal`, checks its condition once more,
//! and sleeps on the futex `signal` (Dekker style: both sides use SeqCst, so either the
//! sleeper sees the change or the notifier sees the sleeper). A notifier that finds
//! `waiters == 0` does nothing else; otherwise it bumps `signal` and wakes.
//!
//! A sleeper killed with SIGKILL cannot unregister. So sleepers sleep at most
//! [`SLICE`] at a time and register again for each slice; a notifier whose wakes have
//! found nobody asleep for longer than [`STALE`] knows the count is stale and resets
//! it. Only a sleeper caught in the few instructions between registering and sleeping
//! can miss a wake-up through a reset, and then only until its slice ends.
use mp_core::{futex, Deadline};
use rustix::time::{clock_gettime, ClockId};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The longest a sleeper sleeps before it registers again.
const SLICE: Duration = Duration::from_millis(250);
/// How long wakes must find nobody asleep before the waiter count is reset.
const STALE_MS: u64 = 1000;
/// Spin-loop hints a waiter spends polling before it sleeps (only with more than one
/// CPU): about 50 us here, the cost of waking an idle CPU.
const SPINS: u32 = 1000;

/// An event count. `repr(C)`, atomics only: lives in shared memory.
#[repr(C, align(128))]
pub(crate) struct WaitWord {
    waiters: AtomicU32,
    signal: AtomicU32,
    /// When (ms on CLOCK_MONOTONIC, 0: not) wakes started finding nobody asleep.
    missed_since: AtomicU64,
}

fn now_ms() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1000) + t.tv_nsec as u64 / 1_000_000 + 1
}

/// The earlier of `deadline` and one [`SLICE`] from now.
fn slice_of(deadline: Deadline) -> Deadline {
    match deadline.remaining() {
        Some(r) if r <= SLICE => deadline,
        _ => Deadline::from_now(SLICE),
    }
}

impl WaitWord {
    /// Waits until `ready()` or `deadline`: polls a little, then sleeps. Returns the
    /// last `ready()`.
    pub(crate) fn wait_until(&self, deadline: Deadline, ready: impl Fn() -> bool) -> bool {
        if mp_core::spin::may_spin() {
            // Look less often as the wait goes on: each look pulls the cache line the
            // other side is writing, and slows it down.
            let (mut pause, mut spent) = (1, 0);
            while spent < SPINS {
                if ready() {
                    return true;
                }
                for _ in 0..pause {
                    std::hint::spin_loop();
                }
                spent += pause;
                pause = (pause * 2).min(64);
            }
        }
        loop {
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let s = self.signal.load(Ordering::SeqCst);
            if ready() {
                self.unregister();
                return true;
            }
            futex::wait(&self.signal, s, slice_of(deadline));
            self.unregister();
            if ready() {
                return true;
            }
            if deadline.expired() {
                return false;
            }
        }
    }

    /// Leaves the count, never below zero (a notifier may have reset it).
    fn unregister(&self) {
        let _ = self
            .waiters
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Wakes one (or every) sleeper; no system call when nobody is registered.
    #[inline]
    pub(crate) fn notify(&self, all: bool) {
        fence(Ordering::SeqCst);
        let n = self.waiters.load(Ordering::Relaxed);
        if n != 0 {
            self.wake(n, all);
        }
    }

    #[cold]
    fn wake(&self, registered: u32, all: bool) {
        self.signal.fetch_add(1, Ordering::SeqCst);
        let woken = if all {
            futex::wake_all(&self.signal)
        } else {
            futex::wake(&self.signal, 1)
        };
        let since = self.missed_since.load(Ordering::Relaxed);
        if woken > 0 {
            if since != 0 {
                self.missed_since.store(0, Ordering::Relaxed);
            }
            return;
        }
        let now = now_ms();
        if since == 0 {
            self.missed_since.store(now, Ordering::Relaxed);
        } else if now.saturating_sub(since) > STALE_MS {
            // Registered for longer than any live sleeper stays registered without
            // sleeping: the sleepers died. Reset; a live one registers again.
            let _ =
                self.waiters
                    .compare_exchange(registered, 0, Ordering::SeqCst, Ordering::Relaxed);
            self.missed_since.store(0, Ordering::Relaxed);
        }
    }

    /// How many are registered (for tests).
    #[cfg(test)]
    pub(crate) fn registered(&self) -> u32 {
        self.waiters.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word() -> WaitWord {
        WaitWord {
            waiters: AtomicU32::new(0),
            signal: AtomicU32::new(0),
            missed_since: AtomicU64::new(0),
        }
    }

    #[test]
    fn times_out_and_wakes() {
        let w = std::sync::Arc::new(word());
        let t = std::time::Instant::now();
        assert!(!w.wait_until(Deadline::from_now(Duration::from_millis(100)), || false));
        assert!(t.elapsed() >= Duration::from_millis(100));
        let flag = std::sync::Arc::new(AtomicU32::new(0));
        let (w2, f2) = (w.clone(), flag.clone());
        let h = std::thread::spawn(move || {
            w2.wait_until(Deadline::NEVER, || f2.load(Ordering::SeqCst) == 1)
        });
        std::thread::sleep(Duration::from_millis(50));
        flag.store(1, Ordering::SeqCst);
        w.notify(false);
        assert!(h.join().unwrap());
        assert_eq!(w.registered(), 0);
    }

    #[test]
    fn a_stale_count_is_reset() {
        let w = word();
        // A sleeper that died registered.
        w.waiters.store(1, Ordering::SeqCst);
        w.notify(false);
        assert_eq!(w.registered(), 1, "one miss is not enough");
        w.missed_since
            .store(now_ms() - STALE_MS - 10, Ordering::Relaxed);
        w.notify(false);
        assert_eq!(w.registered(), 0, "reset after a long run of misses");
    }
}
