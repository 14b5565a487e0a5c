//! [`Lock`]: Python's `multiprocessing.Lock`, a non-recursive mutex any process may
//! release.
use crate::error::{HeldLock, LockResult, OwnerDied};
use crate::ident::{id_of, process_id};
use crate::raw::{Acquired, RawLock};
use crate::shared::{Shared, SharedState};
use crate::SyncError;
use mp_core::Deadline;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

#[repr(C)]
struct LockMem {
    magic: AtomicU32,
    _pad: AtomicU32,
    raw: RawLock,
}

// SAFETY: repr(C), magic first, atomics only.
unsafe impl SharedState for LockMem {
    const MAGIC: u32 = 0x4c4f_434b; // "LOCK"
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

/// A non-recursive lock shared by any number of processes.
///
/// As in Python, any thread or process may release a held `Lock`, and releasing a free
/// one is an error. The holder is recorded as a process: if that process dies holding
/// the lock, the next acquirer takes it over and is told ([`OwnerDied`],
/// [`SyncError::OwnerDied`]).
///
/// Clones share the lock; it is `Serialize + Deserialize`, so it can be a process's
/// argument (its memory travels as an fd).
///
/// ```
/// let lock = mp_sync::Lock::new()?;
/// {
///     let _guard = lock.lock().unwrap();
///     assert!(!lock.try_lock().unwrap().is_some());
/// }
/// assert!(lock.acquire(true, None)?);
/// lock.release()?;
/// assert!(lock.release().is_err()); // released too many times
/// # Ok::<(), mp_sync::SyncError>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Lock {
    mem: Shared<LockMem>,
}

/// Holds a [`Lock`]; releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    me: u64,
}

impl Lock {
    /// A new, free lock.
    pub fn new() -> Result<Self, SyncError> {
        Ok(Lock {
            mem: Shared::new(|_| {})?,
        })
    }

    fn raw(&self) -> &RawLock {
        &self.mem.get().raw
    }

    fn take(&self, block: bool, deadline: Deadline) -> (Acquired, u64) {
        let me = process_id();
        (self.raw().acquire(me, block, deadline), me)
    }

    fn guard(&self, (a, me): (Acquired, u64)) -> LockResult<Option<LockGuard<'_>>> {
        let g = LockGuard { lock: self, me };
        match a {
            Acquired::Yes => Ok(Some(g)),
            Acquired::OwnerDied => Err(OwnerDied::new(Some(g))),
            Acquired::No => Ok(None),
        }
    }

    /// Blocks until the lock is taken; returns a guard that releases it.
    ///
    /// `Err(OwnerDied)` means the previous holder died holding it: the lock is held
    /// (the guard is in the error).
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        let me = process_id();
        let g = LockGuard { lock: self, me };
        match self.raw().acquire(me, true, Deadline::NEVER) {
            Acquired::OwnerDied => Err(OwnerDied::new(g)),
            _ => Ok(g),
        }
    }

    /// Takes the lock if it is free: `Ok(None)` if it is busy.
    pub fn try_lock(&self) -> LockResult<Option<LockGuard<'_>>> {
        self.guard(self.take(false, Deadline::NEVER))
    }

    /// Takes the lock, waiting at most `timeout`: `Ok(None)` if it stayed busy.
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<Option<LockGuard<'_>>> {
        self.guard(self.take(true, Deadline::from_now(timeout)))
    }

    /// Python's `acquire(block, timeout)`: whether the lock was taken. With `block`
    /// false the timeout is ignored; `None` waits for ever.
    ///
    /// `Err(SyncError::OwnerDied(held))`: the lock **was taken** from a holder that
    /// died; dropping `held` releases it, [`HeldLock::keep`] keeps it.
    pub fn acquire(&self, block: bool, timeout: Option<Duration>) -> Result<bool, SyncError> {
        let deadline = if block {
            Deadline::after(timeout)
        } else {
            Deadline::NEVER
        };
        match self.take(block, deadline) {
            (Acquired::Yes, _) => Ok(true),
            (Acquired::No, _) => Ok(false),
            (Acquired::OwnerDied, me) => {
                Err(SyncError::OwnerDied(HeldLock::lock(self.clone(), me)))
            }
        }
    }

    /// Releases the lock, whoever holds it. Releasing a free lock is
    /// [`SyncError::NotHeld`].
    pub fn release(&self) -> Result<(), SyncError> {
        if self.raw().release_any() {
            Ok(())
        } else {
            Err(SyncError::NotHeld)
        }
    }

    /// Whether some thread of some process holds the lock (exact across processes).
    pub fn locked(&self) -> bool {
        self.raw().holder() != 0
    }

    /// The pid of the process holding the lock, if any.
    pub fn owner_pid(&self) -> Option<u32> {
        match self.raw().holder() {
            0 => None,
            h => Some(id_of(h)),
        }
    }

    /// Whether this process holds the lock (the `Condition` ownership test).
    pub(crate) fn held_by_me(&self) -> bool {
        self.raw().holder() == process_id()
    }

    pub(crate) fn release_if_held_by(&self, me: u64) {
        self.raw().release_if(me);
    }

    /// Blocking acquire for `Condition`: `true` if the holder had died.
    pub(crate) fn reacquire(&self) -> bool {
        self.take(true, Deadline::NEVER).0 == Acquired::OwnerDied
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("owner_pid", &self.owner_pid())
            .finish()
    }
}

impl LockGuard<'_> {
    /// The lock this guard holds.
    pub fn lock(&self) -> &Lock {
        self.lock
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Only if this process still holds it: someone may have released it for us
        // (Python allows that) and another acquirer may hold it now.
        self.lock.raw().release_if(self.me);
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("lock", self.lock)
            .finish()
    }
}

impl<'a> From<OwnerDied<LockGuard<'a>>> for SyncError {
    /// The lock stays held by the error: dropping the error releases it.
    fn from(e: OwnerDied<LockGuard<'a>>) -> Self {
        let g = std::mem::ManuallyDrop::new(e.into_inner());
        SyncError::OwnerDied(HeldLock::lock(g.lock.clone(), g.me))
    }
}

impl<'a> From<OwnerDied<Option<LockGuard<'a>>>> for SyncError {
    /// The lock stays held by the error: dropping the error releases it.
    fn from(e: OwnerDied<Option<LockGuard<'a>>>) -> Self {
        match e.into_inner() {
            Some(g) => OwnerDied::new(g).into(),
            None => SyncError::OwnerDied(HeldLock::reacquired()),
        }
    }
}
