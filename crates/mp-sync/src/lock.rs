//! [`Lock`]: Python's `multiprocessing.Lock`, a non-recursive mutex any process may
//! release.
use crate::error::{HeldLock, LockResult, OwnerDied};
use crate::ident::{id_of, process_id, thread_id, GUARDED};
use crate::raw::{Acquired, RawLock, Released};
use crate::shared::{Shared, SharedState};
use crate::SyncError;
use mp_core::Deadline;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

#[repr(C)]
struct LockMem {
    magic: AtomicU32,
    _pad: AtomicU32,
    raw: RawLock,
    /// The packed id of the thread that took the lock (0 once released): what
    /// `Condition` asks, as Python's `SemLock` records the acquiring thread. Written by
    /// the taker after it took the lock, cleared by the releaser; it never decides who
    /// may touch data (the lock word does), only whether a thread counts as the owner.
    owner: AtomicU64,
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
/// It is held in one of two ways, as in `lock_api`:
///
/// - **Through a guard** ([`lock`](Self::lock), [`try_lock`](Self::try_lock),
///   [`lock_timeout`](Self::lock_timeout), and the guards of the data a lock protects,
///   such as mp-shm's `Value` and `Array`): only that guard releases it. A
///   [`release`](Self::release) from anywhere else is [`SyncError::GuardHeld`] and
///   changes nothing, so data behind a lock is never reachable twice. The escape hatch
///   is [`force_unlock`](Self::force_unlock), which is `unsafe`.
/// - **By [`acquire`](Self::acquire)**, Python's way: any thread or process may then
///   release it, and releasing a free lock is [`SyncError::NotHeld`].
///
/// The holder is recorded as a process, and the thread that took it as well (a
/// [`Condition`](crate::Condition) over the lock waits and notifies only from that
/// thread, as in Python). If the holding process dies, the next acquirer takes the lock
/// over and is told ([`OwnerDied`], [`SyncError::OwnerDied`]); a lock a dead guard held
/// is recovered that way, never released from outside.
///
/// Clones share the lock; it is `Serialize + Deserialize`, so it can be a process's
/// argument (its memory travels as an fd).
///
/// ```
/// let lock = mp_sync::Lock::new()?;
/// {
///     let _guard = lock.lock().unwrap();
///     assert!(!lock.try_lock().unwrap().is_some());
///     assert!(lock.release().is_err()); // the guard's: only the guard releases it
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

/// Holds a [`Lock`]; releases it when dropped. While it lives, no one else can release
/// the lock (short of the `unsafe` [`Lock::force_unlock`]).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    /// This process's packed id with [`GUARDED`]: the exact lock word of this hold.
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

    fn owner(&self) -> &AtomicU64 {
        &self.mem.get().owner
    }

    /// Takes the lock for this process (through a guard if `guarded`) and records the
    /// calling thread as its owner.
    #[inline]
    fn take(&self, guarded: bool, block: bool, deadline: Deadline) -> (Acquired, u64) {
        let me = if guarded {
            process_id() | GUARDED
        } else {
            process_id()
        };
        let a = self.raw().acquire(me, block, deadline);
        if a != Acquired::No {
            self.owner().store(thread_id(), Ordering::Relaxed);
        }
        (a, me)
    }

    /// For a release that may come from another thread than the holder's: runs
    /// `release` (which returns whether it released the word), then forgets the owner
    /// thread seen before, unless a new holder recorded itself meanwhile.
    #[inline]
    fn release_with(&self, release: impl FnOnce() -> bool) -> bool {
        let seen = self.owner().load(Ordering::Relaxed);
        let released = release();
        if released {
            let _ = self
                .owner()
                .compare_exchange(seen, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        released
    }

    fn guard(&self, (a, me): (Acquired, u64)) -> LockResult<Option<LockGuard<'_>>> {
        match a {
            Acquired::Yes => Ok(Some(LockGuard { lock: self, me })),
            Acquired::OwnerDied => Err(OwnerDied::new(Some(LockGuard { lock: self, me }))),
            Acquired::No => Ok(None),
        }
    }

    /// Blocks until the lock is taken; returns a guard that releases it.
    ///
    /// `Err(OwnerDied)` means the previous holder died holding it: the lock is held
    /// (the guard is in the error).
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        let (a, me) = self.take(true, true, Deadline::NEVER);
        let g = LockGuard { lock: self, me };
        match a {
            Acquired::OwnerDied => Err(OwnerDied::new(g)),
            _ => Ok(g),
        }
    }

    /// Takes the lock if it is free: `Ok(None)` if it is busy.
    pub fn try_lock(&self) -> LockResult<Option<LockGuard<'_>>> {
        self.guard(self.take(true, false, Deadline::NEVER))
    }

    /// Takes the lock, waiting at most `timeout`: `Ok(None)` if it stayed busy.
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<Option<LockGuard<'_>>> {
        self.guard(self.take(true, true, Deadline::from_now(timeout)))
    }

    /// Python's `acquire(block, timeout)`: whether the lock was taken. With `block`
    /// false the timeout is ignored; `None` waits for ever. Any thread or process may
    /// [`release`](Self::release) a lock taken this way.
    ///
    /// `Err(SyncError::OwnerDied(held))`: the lock **was taken** from a holder that
    /// died; dropping `held` releases it, [`HeldLock::keep`] keeps it.
    pub fn acquire(&self, block: bool, timeout: Option<Duration>) -> Result<bool, SyncError> {
        let deadline = if block {
            Deadline::after(timeout)
        } else {
            Deadline::NEVER
        };
        match self.take(false, block, deadline) {
            (Acquired::Yes, _) => Ok(true),
            (Acquired::No, _) => Ok(false),
            (Acquired::OwnerDied, me) => {
                Err(SyncError::OwnerDied(HeldLock::lock(self.clone(), me)))
            }
        }
    }

    /// Releases a lock taken with [`acquire`](Self::acquire), whoever holds it (as in
    /// Python). A free lock is [`SyncError::NotHeld`]; a lock held through a guard is
    /// [`SyncError::GuardHeld`] (only the guard releases it). Neither changes anything.
    pub fn release(&self) -> Result<(), SyncError> {
        // The owner record is cleared before the word is freed (the release publishes
        // it), so the next holder never shows a stale owner.
        match self
            .raw()
            .release_unguarded(|| self.owner().store(0, Ordering::Relaxed))
        {
            Released::Yes => Ok(()),
            Released::Free => Err(SyncError::NotHeld),
            Released::Guarded => Err(SyncError::GuardHeld),
        }
    }

    /// Releases the lock, whoever holds it and however it was taken; a free lock is
    /// [`SyncError::NotHeld`].
    ///
    /// # Safety
    /// No guard of this lock may be alive, in any process, and none may be used again:
    /// a guard's data would otherwise be reachable twice (two `&mut` to the same
    /// memory). For a guard that was leaked on purpose, say.
    pub unsafe fn force_unlock(&self) -> Result<(), SyncError> {
        if self.release_with(|| self.raw().release_any()) {
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

    /// An identity of the lock's memory, the same for every handle of this lock in
    /// every process, and different for any other lock alive: the memfd's device and
    /// inode. Lets a type that keeps data beside a lock check, when both arrive from
    /// another process, that they belong together.
    #[doc(hidden)]
    pub fn memory_id(&self) -> [u64; 2] {
        self.mem.id()
    }

    /// Whether the calling thread took the lock and holds it (through a guard or not):
    /// the `Condition` ownership test, as Python's `SemLock._is_mine()`.
    pub(crate) fn is_mine(&self) -> bool {
        // Acquire pairs with the release that freed the word before the current hold,
        // so the owner read below is not older than that release's clearing.
        let word = self.raw().holder_acquire();
        word & !GUARDED == process_id() && self.owner().load(Ordering::Relaxed) == thread_id()
    }

    /// Whether the lock is held through a guard.
    pub(crate) fn guard_held(&self) -> bool {
        self.raw().holder() & GUARDED != 0
    }

    /// Releases a plain hold of this process taken by the calling thread (for
    /// `Condition`); false, and nothing changes, otherwise.
    pub(crate) fn release_mine(&self) -> bool {
        if self.owner().load(Ordering::Relaxed) != thread_id() {
            return false;
        }
        let me = process_id();
        self.release_with(|| self.raw().release_if(me))
    }

    /// Releases the hold whose exact lock word is `me`, if it is still there.
    pub(crate) fn release_if_held_by(&self, me: u64) {
        self.release_with(|| self.raw().release_if(me));
    }

    /// Blocking plain acquire for `Condition`: `true` if the holder had died.
    pub(crate) fn reacquire(&self) -> bool {
        self.take(false, true, Deadline::NEVER).0 == Acquired::OwnerDied
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
        // No one else releases a guard-held lock, so the word is still `me` (unless an
        // `unsafe` force_unlock broke that contract: then this releases nothing). The
        // owner record goes first, published by the release.
        if self.lock.raw().holder() == self.me {
            self.lock.owner().store(0, Ordering::Relaxed);
            self.lock.raw().release_if(self.me);
        }
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
    ///
    /// The guard is gone, so the hold becomes a plain one: after
    /// [`HeldLock::keep`], `release()` releases it.
    fn from(e: OwnerDied<LockGuard<'a>>) -> Self {
        let g = std::mem::ManuallyDrop::new(e.into_inner());
        let plain = g.me & !GUARDED;
        g.lock.raw().unguard(g.me);
        SyncError::OwnerDied(HeldLock::lock(g.lock.clone(), plain))
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
