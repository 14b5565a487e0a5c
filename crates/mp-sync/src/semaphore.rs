//! [`Semaphore`] and [`BoundedSemaphore`]: Python's counting semaphores.
use crate::shared::{Shared, SharedState};
use crate::SyncError;
use mp_core::{futex, Deadline};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The largest value a semaphore can hold (Python's `SEM_VALUE_MAX` on Linux).
pub const SEM_VALUE_MAX: u32 = i32::MAX as u32;

/// The shared state of both semaphores.
#[repr(C)]
struct SemCore {
    magic: AtomicU32,
    /// The count; also the futex word sleepers wait on while it is 0.
    value: AtomicU32,
    /// How many acquirers are (about to be) asleep: a release wakes only if non-zero.
    sleepers: AtomicU32,
    /// The ceiling: [`SEM_VALUE_MAX`], or the initial value for a bounded semaphore.
    max: AtomicU32,
}

impl SemCore {
    #[inline]
    fn try_take(&self) -> bool {
        let mut v = self.value.load(Ordering::Relaxed);
        while v > 0 {
            match self
                .value
                .compare_exchange_weak(v, v - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => v = now,
            }
        }
        false
    }

    #[inline]
    fn acquire(&self, block: bool, timeout: Option<Duration>) -> bool {
        if self.try_take() {
            return true;
        }
        self.acquire_slow(block, timeout)
    }

    #[cold]
    fn acquire_slow(&self, block: bool, timeout: Option<Duration>) -> bool {
        if !block {
            return false;
        }
        let deadline = Deadline::after(timeout);
        // SeqCst pairs with `release`: either it sees our sleeper count and wakes us, or
        // we see its increment before we sleep.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let taken = loop {
            if self.try_take() {
                break true;
            }
            if self.value.load(Ordering::SeqCst) == 0 && !futex::wait(&self.value, 0, deadline) {
                // Deadline: one last look, so a release racing the timeout is not lost.
                break self.try_take();
            }
        };
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
        taken
    }

    #[inline]
    fn release(&self, n: u32) -> Result<(), SyncError> {
        let max = self.max.load(Ordering::Relaxed);
        if max == SEM_VALUE_MAX {
            // Unbounded: one fetch_add; the value stays below 2^32 because n and the
            // value are both at most SEM_VALUE_MAX = 2^31 - 1.
            let n = n.min(SEM_VALUE_MAX);
            let prev = self.value.fetch_add(n, Ordering::SeqCst);
            if prev.saturating_add(n) > SEM_VALUE_MAX {
                self.value.fetch_sub(n, Ordering::Relaxed);
                return Err(SyncError::ValueTooLarge(
                    "semaphore value above SEM_VALUE_MAX",
                ));
            }
        } else {
            let mut v = self.value.load(Ordering::Relaxed);
            loop {
                let new = match v.checked_add(n) {
                    Some(new) if new <= max => new,
                    _ => {
                        return Err(SyncError::ValueTooLarge(
                            "BoundedSemaphore released too many times",
                        ))
                    }
                };
                match self
                    .value
                    .compare_exchange_weak(v, new, Ordering::SeqCst, Ordering::Relaxed)
                {
                    Ok(_) => break,
                    Err(now) => v = now,
                }
            }
        }
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake(&self.value, n);
        }
        Ok(())
    }
}

macro_rules! semaphore {
    ($(#[$doc:meta])* $name:ident, $mem:ident, $magic:expr, $guard:ident) => {
        #[repr(C)]
        struct $mem(SemCore);

        // SAFETY: repr(C) wrapper of a repr(C) struct of atomics whose first field is
        // the magic.
        unsafe impl SharedState for $mem {
            const MAGIC: u32 = $magic;
            fn magic(&self) -> &AtomicU32 {
                &self.0.magic
            }
        }

        $(#[$doc])*
        #[derive(Clone, Serialize, Deserialize)]
        pub struct $name {
            mem: Shared<$mem>,
        }

        impl $name {
            fn core(&self) -> &SemCore {
                &self.mem.get().0
            }

            /// Python's `acquire(block, timeout)`: whether a unit was taken. With
            /// `block` false the timeout is ignored; `None` waits for ever.
            pub fn acquire(&self, block: bool, timeout: Option<Duration>) -> bool {
                self.core().acquire(block, timeout)
            }

            /// Takes a unit if one is available now.
            pub fn try_acquire(&self) -> bool {
                self.core().acquire(false, None)
            }

            /// Takes a unit, waiting at most `timeout`.
            pub fn acquire_timeout(&self, timeout: Duration) -> bool {
                self.core().acquire(true, Some(timeout))
            }

            /// Blocks until a unit is taken; the guard gives it back when dropped.
            pub fn access(&self) -> $guard<'_> {
                self.core().acquire(true, None);
                $guard { sem: self }
            }

            /// The current value.
            pub fn get_value(&self) -> u32 {
                self.core().value.load(Ordering::Relaxed)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).field("value", &self.get_value()).finish()
            }
        }

        /// A unit taken with `access()`, given back when dropped.
        #[must_use = "the unit is given back as soon as the guard is dropped"]
        #[derive(Debug)]
        pub struct $guard<'a> {
            sem: &'a $name,
        }

        impl Drop for $guard<'_> {
            fn drop(&mut self) {
                // Cannot exceed the ceiling: this guard took the unit it gives back,
                // unless releases beyond it were made by hand; then the value is kept.
                let _ = self.sem.core().release(1);
            }
        }
    };
}

semaphore!(
    /// A counting semaphore shared by any number of processes.
    ///
    /// `release` may raise the value above its initial value (up to
    /// [`SEM_VALUE_MAX`]). Semaphores have no owner, so a process that dies holding a
    /// unit does not give it back (as in Python).
    ///
    /// ```
    /// let sem = mp_sync::Semaphore::new(2)?;
    /// assert!(sem.try_acquire() && sem.try_acquire());
    /// assert!(!sem.try_acquire());
    /// sem.release()?;
    /// sem.release()?;
    /// sem.release()?; // above the initial value: allowed
    /// assert_eq!(sem.get_value(), 3);
    /// # Ok::<(), mp_sync::SyncError>(())
    /// ```
    Semaphore,
    SemMem,
    0x5345_4d41, // "SEMA"
    SemaphoreGuard
);

semaphore!(
    /// A semaphore that refuses to be released above its initial value.
    ///
    /// ```
    /// let sem = mp_sync::BoundedSemaphore::new(1)?;
    /// assert!(sem.release().is_err()); // already at its initial value
    /// assert_eq!(sem.get_value(), 1);
    /// # Ok::<(), mp_sync::SyncError>(())
    /// ```
    BoundedSemaphore,
    BoundedMem,
    0x4253_454d, // "BSEM"
    BoundedSemaphoreGuard
);

fn new_core<T: SharedState>(
    value: u32,
    max: u32,
    core: impl Fn(&T) -> &SemCore,
) -> Result<Shared<T>, SyncError> {
    if value > SEM_VALUE_MAX {
        return Err(SyncError::ValueTooLarge(
            "semaphore value above SEM_VALUE_MAX",
        ));
    }
    Shared::new(|m: &T| {
        core(m).value.store(value, Ordering::Relaxed);
        core(m).max.store(max, Ordering::Relaxed);
    })
}

impl Semaphore {
    /// A semaphore holding `value` units (at most [`SEM_VALUE_MAX`]).
    pub fn new(value: u32) -> Result<Self, SyncError> {
        Ok(Semaphore {
            mem: new_core(value, SEM_VALUE_MAX, |m: &SemMem| &m.0)?,
        })
    }

    /// Gives a unit back. Above [`SEM_VALUE_MAX`]: [`SyncError::ValueTooLarge`].
    pub fn release(&self) -> Result<(), SyncError> {
        self.core().release(1)
    }

    /// Gives `n` units back at once (Python 3.9's `release(n)` of `threading`).
    pub fn release_n(&self, n: u32) -> Result<(), SyncError> {
        self.core().release(n)
    }
}

impl BoundedSemaphore {
    /// A bounded semaphore holding `value` units, which is also its ceiling.
    pub fn new(value: u32) -> Result<Self, SyncError> {
        Ok(BoundedSemaphore {
            mem: new_core(value, value, |m: &BoundedMem| &m.0)?,
        })
    }

    /// Gives a unit back. Above the initial value: [`SyncError::ValueTooLarge`], and
    /// the value is kept.
    pub fn release(&self) -> Result<(), SyncError> {
        self.core().release(1)
    }
}
