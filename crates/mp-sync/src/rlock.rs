//! [`RLock`]: Python's `multiprocessing.RLock`, a recursive mutex owned by a thread of
//! a process.
use crate::error::{HeldLock, LockResult, OwnerDied};
use crate::ident::{id_of, thread_id};
use crate::raw::{Acquired, RawLock};
use crate::shared::{Shared, SharedState};
use crate::SyncError;
use mp_core::Deadline;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[repr(C)]
struct RLockMem {
    magic: AtomicU32,
    /// Recursion depth; only the holder reads or writes it, ordered by the lock word.
    count: AtomicU32,
    raw: RawLock,
}

// SAFETY: repr(C), magic first, atomics only.
unsafe impl SharedState for RLockMem {
    const MAGIC: u32 = 0x524c_434b; // "RLCK"
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

/// A recursive lock shared by any number of processes, owned by one thread of one
/// process at a time.
///
/// The owner may acquire it again; it is free once released as many times. A release
/// by another thread or process is [`SyncError::NotOwner`] and the lock stays held; one
/// release too many is `NotOwner` as well (Python raises the same `AssertionError`). If
/// the owning thread's process dies holding it (or the thread ends without releasing
/// it), the next acquirer takes it over and is told ([`OwnerDied`]).
///
/// ```
/// let rlock = mp_sync::RLock::new()?;
/// let outer = rlock.lock().unwrap();
/// let inner = rlock.lock().unwrap();
/// assert_eq!(rlock.count(), 2);
/// drop(inner);
/// drop(outer);
/// assert!(!rlock.locked());
/// assert!(rlock.release().is_err()); // one release too many
/// # Ok::<(), mp_sync::SyncError>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct RLock {
    mem: Shared<RLockMem>,
}

/// Holds one level of an [`RLock`]; releases it when dropped. Stays on its thread.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    me: u64,
    _not_send: PhantomData<*const ()>,
}

impl RLock {
    /// A new, free recursive lock.
    pub fn new() -> Result<Self, SyncError> {
        Ok(RLock {
            mem: Shared::new(|_| {})?,
        })
    }

    fn raw(&self) -> &RawLock {
        &self.mem.get().raw
    }

    fn count_word(&self) -> &AtomicU32 {
        &self.mem.get().count
    }

    /// One level more for `me`, which holds the lock.
    fn recurse(&self) -> Result<(), SyncError> {
        let c = self.count_word().load(Ordering::Relaxed);
        let c = c
            .checked_add(1)
            .ok_or(SyncError::ValueTooLarge("RLock recursion count"))?;
        self.count_word().store(c, Ordering::Relaxed);
        Ok(())
    }

    fn take(&self, block: bool, deadline: Deadline) -> Result<(Acquired, u64), SyncError> {
        let me = thread_id();
        let a = if self.raw().try_fast(me) {
            Acquired::Yes
        } else if self.raw().holder() == me {
            self.recurse()?;
            return Ok((Acquired::Yes, me));
        } else {
            self.raw().acquire(me, block, deadline)
        };
        if a != Acquired::No {
            self.count_word().store(1, Ordering::Relaxed);
        }
        Ok((a, me))
    }

    fn guard(&self, me: u64) -> RLockGuard<'_> {
        RLockGuard {
            lock: self,
            me,
            _not_send: PhantomData,
        }
    }

    fn to_result(
        &self,
        r: Result<(Acquired, u64), SyncError>,
    ) -> LockResult<Option<RLockGuard<'_>>> {
        match r {
            Ok((Acquired::Yes, me)) => Ok(Some(self.guard(me))),
            Ok((Acquired::OwnerDied, me)) => Err(OwnerDied::new(Some(self.guard(me)))),
            // A recursion count of 2^32 - 1: treated as "not taken".
            Ok((Acquired::No, _)) | Err(_) => Ok(None),
        }
    }

    /// Blocks until this thread holds the lock (once more if it already does).
    ///
    /// # Panics
    /// If the recursion count would overflow `u32` (a program error, like
    /// `RefCell`'s).
    pub fn lock(&self) -> LockResult<RLockGuard<'_>> {
        match self.take(true, Deadline::NEVER) {
            Ok((Acquired::OwnerDied, me)) => Err(OwnerDied::new(self.guard(me))),
            Ok((_, me)) => Ok(self.guard(me)),
            Err(e) => panic!("RLock::lock: {e}"),
        }
    }

    /// Takes the lock if it is free or already ours: `Ok(None)` if another holds it.
    pub fn try_lock(&self) -> LockResult<Option<RLockGuard<'_>>> {
        self.to_result(self.take(false, Deadline::NEVER))
    }

    /// As [`try_lock`](Self::try_lock), waiting at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<Option<RLockGuard<'_>>> {
        self.to_result(self.take(true, Deadline::from_now(timeout)))
    }

    /// Python's `acquire(block, timeout)`: whether the lock was taken.
    ///
    /// `Err(SyncError::OwnerDied(held))`: the lock **was taken** from a holder that
    /// died; dropping `held` releases it, [`HeldLock::keep`] keeps it.
    pub fn acquire(&self, block: bool, timeout: Option<Duration>) -> Result<bool, SyncError> {
        let deadline = if block {
            Deadline::after(timeout)
        } else {
            Deadline::NEVER
        };
        match self.take(block, deadline)? {
            (Acquired::Yes, _) => Ok(true),
            (Acquired::No, _) => Ok(false),
            (Acquired::OwnerDied, me) => {
                Err(SyncError::OwnerDied(HeldLock::rlock(self.clone(), me)))
            }
        }
    }

    /// Releases one level. Not the owner (another thread, another process, or a free
    /// lock): [`SyncError::NotOwner`], and nothing changes.
    pub fn release(&self) -> Result<(), SyncError> {
        self.release_as(thread_id())
    }

    #[inline]
    fn release_as(&self, me: u64) -> Result<(), SyncError> {
        if self.raw().holder() != me {
            return Err(SyncError::NotOwner);
        }
        let c = self.count_word().load(Ordering::Relaxed);
        if c > 1 {
            self.count_word().store(c - 1, Ordering::Relaxed);
        } else {
            self.count_word().store(0, Ordering::Relaxed);
            self.raw().release_owned();
        }
        Ok(())
    }

    /// Whether some thread holds the lock.
    pub fn locked(&self) -> bool {
        self.raw().holder() != 0
    }

    /// Whether the calling thread holds the lock.
    pub fn is_owned(&self) -> bool {
        self.raw().holder() == thread_id()
    }

    /// The recursion depth if the calling thread holds the lock, else 0.
    pub fn count(&self) -> u32 {
        if self.is_owned() {
            self.count_word().load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// The thread id (tid) of the holder, if any.
    pub fn owner_tid(&self) -> Option<u32> {
        match self.raw().holder() {
            0 => None,
            h => Some(id_of(h)),
        }
    }

    /// For `HeldLock`: releases every level if `me` still holds it (from any thread).
    pub(crate) fn release_all_if_held_by(&self, me: u64) {
        if self.raw().holder() == me {
            self.count_word().store(0, Ordering::Relaxed);
            self.raw().release_if(me);
        }
    }

    /// For `Condition::wait`: releases every level, returning the depth (0 if the
    /// calling thread is not the owner, and then nothing changes).
    pub(crate) fn release_save(&self) -> u32 {
        let me = thread_id();
        if self.raw().holder() != me {
            return 0;
        }
        let c = self.count_word().swap(0, Ordering::Relaxed);
        self.raw().release_if(me);
        c
    }

    /// For `Condition::wait`: takes the lock back at depth `count`; `true` if the
    /// holder in between had died.
    pub(crate) fn acquire_restore(&self, count: u32) -> bool {
        let died = self.raw().acquire(thread_id(), true, Deadline::NEVER) == Acquired::OwnerDied;
        self.count_word().store(count, Ordering::Relaxed);
        died
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("owner_tid", &self.owner_tid())
            .field("count", &self.count())
            .finish()
    }
}

impl RLockGuard<'_> {
    /// The lock this guard holds a level of.
    pub fn lock(&self) -> &RLock {
        self.lock
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        // Cannot fail: the guard stays on the owning thread and holds a level.
        let _ = self.lock.release_as(self.me);
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard")
            .field("lock", self.lock)
            .finish()
    }
}

impl<'a> From<OwnerDied<RLockGuard<'a>>> for SyncError {
    /// The lock level stays held by the error: dropping the error releases it.
    fn from(e: OwnerDied<RLockGuard<'a>>) -> Self {
        let g = std::mem::ManuallyDrop::new(e.into_inner());
        SyncError::OwnerDied(HeldLock::rlock(g.lock.clone(), g.me))
    }
}

impl<'a> From<OwnerDied<Option<RLockGuard<'a>>>> for SyncError {
    /// The lock level stays held by the error: dropping the error releases it.
    fn from(e: OwnerDied<Option<RLockGuard<'a>>>) -> Self {
        match e.into_inner() {
            Some(g) => OwnerDied::new(g).into(),
            None => SyncError::OwnerDied(HeldLock::reacquired()),
        }
    }
}
