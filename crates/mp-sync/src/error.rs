//! Errors: [`SyncError`], and [`OwnerDied`] / [`HeldLock`] for a lock whose holder died.
use crate::{Lock, RLock};
use std::fmt;

/// What can go wrong with a synchronization primitive.
///
/// The variants follow Python's exceptions where they map: [`NotHeld`](Self::NotHeld)
/// is `ValueError('semaphore or lock released too many times')`,
/// [`NotOwner`](Self::NotOwner) is the `AssertionError` of an RLock or Condition used by
/// a non-owner, [`BrokenBarrier`](Self::BrokenBarrier) is `BrokenBarrierError`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A `Lock` (or `Semaphore`) released more times than it was acquired.
    #[error("semaphore or lock released too many times")]
    NotHeld,
    /// An `RLock` released, or a `Condition` waited on or notified, by a thread that does
    /// not hold the lock.
    #[error("lock is not owned by the calling thread")]
    NotOwner,
    /// A `Lock` held through a guard (a [`LockGuard`](crate::LockGuard), or the guard
    /// of data the lock protects) released from outside that guard: only the guard
    /// releases it (or [`Lock::force_unlock`](crate::Lock::force_unlock), which is
    /// `unsafe`). Also a `Condition` asked to wait while its lock is held through such
    /// a guard. Nothing changes.
    #[error("the lock is held through a guard; only the guard releases it")]
    GuardHeld,
    /// A `BoundedSemaphore` released above its initial value, a semaphore above
    /// [`SEM_VALUE_MAX`](crate::SEM_VALUE_MAX), or a recursion count overflowed.
    #[error("value too large: {0}")]
    ValueTooLarge(&'static str),
    /// The previous holder of the lock died while holding it. **The caller now holds
    /// the lock.** The data it protects may be half-updated. See [`HeldLock`].
    #[error("{0}")]
    OwnerDied(HeldLock),
    /// The barrier was broken (aborted, reset, or a party timed out); every waiter of a
    /// broken barrier gets this.
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// The barrier was created with an action, but the handle of the last party to
    /// arrive carries none (actions do not travel between processes: install one with
    /// [`Barrier::set_action`](crate::Barrier::set_action)). The barrier is broken.
    #[error("the barrier has an action but this process's handle carries none (see Barrier::set_action)")]
    ActionMissing,
    /// More threads wait on a `Condition` at once than it has slots for.
    #[error("too many waiters on this condition (at most {0})")]
    TooManyWaiters(usize),
    /// An argument out of range (a barrier of zero parties, say).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// Creating or mapping the shared memory failed.
    #[error(transparent)]
    Core(#[from] mp_core::Error),
}

/// A lock the caller took over from a holder that died; carried by
/// [`SyncError::OwnerDied`].
///
/// Dropping it releases the lock, so propagating the error with `?` does not leave the
/// lock held. To keep the lock (after repairing the data it protects), call
/// [`keep`](Self::keep), then release it as usual with `release()`.
///
/// When the error comes from [`Condition::wait`](crate::Condition::wait), the lock was
/// already held before the call: dropping the error then leaves it held (as it was),
/// and `keep` is not needed.
pub struct HeldLock {
    held: Option<Held>,
}

enum Held {
    Lock(Lock, u64),
    RLock(RLock, u64),
}

impl HeldLock {
    pub(crate) fn lock(lock: Lock, me: u64) -> Self {
        HeldLock {
            held: Some(Held::Lock(lock, me)),
        }
    }
    pub(crate) fn rlock(lock: RLock, me: u64) -> Self {
        HeldLock {
            held: Some(Held::RLock(lock, me)),
        }
    }
    /// Reports a takeover without owning the release (the caller's guard does).
    pub(crate) fn reacquired() -> Self {
        HeldLock { held: None }
    }

    /// Keeps the lock held; the caller releases it later with `release()`.
    pub fn keep(mut self) {
        self.held = None;
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        match self.held.take() {
            Some(Held::Lock(l, me)) => l.release_if_held_by(me),
            Some(Held::RLock(l, me)) => l.release_all_if_held_by(me),
            None => {}
        }
    }
}

impl fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.held {
            Some(Held::Lock(..)) => "Lock",
            Some(Held::RLock(..)) => "RLock",
            None => "reacquired",
        };
        f.debug_struct("HeldLock").field("lock", &what).finish()
    }
}

impl fmt::Display for HeldLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the previous owner of the lock died while holding it; the caller now holds the lock",
        )
    }
}

/// A lock taken over from a holder that died, in the spirit of
/// [`std::sync::PoisonError`]: the guard is inside, the lock is held.
///
/// The data the lock protects may be half-updated. Repair it, then
/// [`into_inner`](Self::into_inner) to go on with the guard. The condition is not
/// sticky: later acquirers see a plain lock.
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(guard: G) -> Self {
        OwnerDied { guard }
    }
    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }
    /// The guard, borrowed.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }
    /// The guard, mutably borrowed.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied").finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the previous owner of the lock died while holding it")
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// The result of the guard-returning lock methods.
pub type LockResult<G> = Result<G, OwnerDied<G>>;
