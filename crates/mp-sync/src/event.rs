//! [`Event`]: Python's `multiprocessing.Event`, a flag processes can wait on.
use crate::shared::{Shared, SharedState};
use crate::SyncError;
use mp_core::{futex, Deadline};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const SET: u32 = 1;
/// Someone may sleep on the word: `set` must wake.
const WAITERS: u32 = 2;

#[repr(C)]
struct EventMem {
    magic: AtomicU32,
    /// `SET`, or 0 / `WAITERS` while clear. The futex word.
    state: AtomicU32,
}

// SAFETY: repr(C), magic first, atomics only.
unsafe impl SharedState for EventMem {
    const MAGIC: u32 = 0x4556_4e54; // "EVNT"
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

/// A flag shared by any number of processes: `set`, `clear`, `is_set` and `wait`.
///
/// `set` with nobody waiting is one atomic operation and no syscall.
///
/// ```
/// let ev = mp_sync::Event::new()?;
/// assert!(!ev.wait(Some(std::time::Duration::from_millis(10))));
/// ev.set();
/// assert!(ev.is_set() && ev.wait(None));
/// ev.clear();
/// assert!(!ev.is_set());
/// # Ok::<(), mp_sync::SyncError>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Event {
    mem: Shared<EventMem>,
}

impl Event {
    /// A new, clear event.
    pub fn new() -> Result<Self, SyncError> {
        Ok(Event {
            mem: Shared::new(|_| {})?,
        })
    }

    fn state(&self) -> &AtomicU32 {
        &self.mem.get().state
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.state().load(Ordering::Acquire) == SET
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        if self.state().load(Ordering::Relaxed) == SET {
            return;
        }
        if self.state().swap(SET, Ordering::Release) & WAITERS != 0 {
            futex::wake_all(self.state());
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        // Only SET -> 0: a clear event keeps its waiters flag.
        let _ = self
            .state()
            .compare_exchange(SET, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Blocks until the flag is set or `timeout` passes (`None`: for ever); returns
    /// the flag, as Python does.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = Deadline::after(timeout);
        // A setter on another CPU is often only microseconds away: poll briefly before
        // sleeping (see `mp_core::spin`), which also spares the setter a futex wake.
        if self.state().load(Ordering::Acquire) != SET && mp_core::spin::may_spin() {
            let limit = timeout.map_or(mp_core::spin::SPIN, |t| t.min(mp_core::spin::SPIN));
            let start = std::time::Instant::now();
            let mut tries = 0u32;
            while self.state().load(Ordering::Acquire) != SET {
                std::hint::spin_loop();
                tries = tries.wrapping_add(1);
                if tries % 64 == 0 && start.elapsed() >= limit {
                    break;
                }
            }
            mp_core::spin::spun(self.state().load(Ordering::Acquire) == SET);
        }
        loop {
            let s = self.state().load(Ordering::Acquire);
            if s == SET {
                return true;
            }
            if s == 0
                && self
                    .state()
                    .compare_exchange(0, WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            if !futex::wait(self.state(), WAITERS, deadline) {
                return self.is_set();
            }
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}
