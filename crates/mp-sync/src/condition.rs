//! [`Condition`]: Python's `multiprocessing.Condition`, over a [`Lock`] or an
//! [`RLock`].
//!
//! Waiters queue in a ring of slots in shared memory, in arrival order. A waiter takes
//! ticket `t` (under the lock), writes `tag(t, WAITING)` into slot `t % SLOTS`, releases
//! the lock and sleeps on that slot's futex. `notify(n)` (under the lock) walks the ring
//! from its head, marks the next `n` slots still `WAITING` as notified and wakes each
//! one. A waiter whose wait times out takes the lock back and, if its slot still says
//! `WAITING`, marks it cancelled: `notify` skips cancelled slots, so a waiter that timed
//! out is never counted by a later notify, and a notify that raced the timeout is not
//! lost (the waiter reports it was notified). Slots hold the ticket as well as the
//! state, so a slot reused by a later ticket still tells its old waiter "notified".
use crate::error::{HeldLock, LockResult, OwnerDied};
use crate::shared::{Shared, SharedState};
use crate::{Lock, RLock, SyncError};
use mp_core::{futex, Deadline};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How many threads can wait on one condition at once (a power of two).
pub const MAX_WAITERS: usize = 4096;

const WAITING: u32 = 1;
const NOTIFIED: u32 = 2;
const CANCELLED: u32 = 3;

/// A slot value: the ticket's low 30 bits and a state.
fn tag(ticket: u32, state: u32) -> u32 {
    (ticket << 2) | state
}

#[repr(C)]
struct CondMem {
    magic: AtomicU32,
    /// The oldest ticket that may still be waiting. Changed only under the lock.
    head: AtomicU32,
    /// The next ticket. Changed only under the lock.
    tail: AtomicU32,
    _pad: AtomicU32,
    slots: [AtomicU32; MAX_WAITERS],
}

// SAFETY: repr(C), magic first, atomics only.
unsafe impl SharedState for CondMem {
    const MAGIC: u32 = 0x434f_4e44; // "COND"
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

impl CondMem {
    fn slot(&self, ticket: u32) -> &AtomicU32 {
        &self.slots[ticket as usize % MAX_WAITERS]
    }
}

/// The lock under a [`Condition`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ConditionLock {
    /// A [`Lock`]: "held" means held by this process.
    Lock(Lock),
    /// An [`RLock`]: "held" means held by this thread (waiting releases every level and
    /// restores them).
    RLock(RLock),
}

impl From<Lock> for ConditionLock {
    fn from(l: Lock) -> Self {
        ConditionLock::Lock(l)
    }
}

impl From<RLock> for ConditionLock {
    fn from(l: RLock) -> Self {
        ConditionLock::RLock(l)
    }
}

/// A condition variable shared by any number of processes.
///
/// Waiting and notifying need the lock held by the calling thread
/// ([`SyncError::NotOwner`] otherwise, as Python's `AssertionError`).
/// `wait` returns whether it was notified (false on timeout); waiters are woken in the
/// order they began to wait; a waiter that timed out is not counted by a later notify.
/// If the holder of the lock dies, the next thread to take it (a waiter waking up, say)
/// is told with [`SyncError::OwnerDied`]. A process killed while waiting keeps its
/// place in the queue and absorbs one notification, as in Python.
///
/// ```
/// use std::time::Duration;
/// let cond = mp_sync::Condition::new()?; // over a new RLock, as in Python
/// let c2 = cond.clone();
/// let t = std::thread::spawn(move || {
///     let mut g = c2.lock().unwrap();
///     g.wait(None)
/// });
/// loop {
///     let g = cond.lock().unwrap();
///     if g.waiters() == 1 {
///         g.notify(1)?;
///         break;
///     }
///     drop(g);
///     std::thread::sleep(Duration::from_millis(1));
/// }
/// assert!(t.join().unwrap()?);
/// # Ok::<(), mp_sync::SyncError>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Condition {
    lock: ConditionLock,
    mem: Shared<CondMem>,
}

/// Holds a [`Condition`]'s lock; releases it when dropped. Stays on its thread.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    _not_send: PhantomData<*const ()>,
}

impl Condition {
    /// A condition over a new [`RLock`] (Python's default).
    pub fn new() -> Result<Self, SyncError> {
        Self::with_lock(RLock::new()?)
    }

    /// A condition over `lock`, which others may also use directly.
    pub fn with_lock(lock: impl Into<ConditionLock>) -> Result<Self, SyncError> {
        Ok(Condition {
            lock: lock.into(),
            mem: Shared::new(|_| {})?,
        })
    }

    /// The lock under this condition.
    pub fn get_lock(&self) -> &ConditionLock {
        &self.lock
    }

    /// Takes the lock, as `acquire` of the underlying lock.
    pub fn acquire(&self, block: bool, timeout: Option<Duration>) -> Result<bool, SyncError> {
        match &self.lock {
            ConditionLock::Lock(l) => l.acquire(block, timeout),
            ConditionLock::RLock(l) => l.acquire(block, timeout),
        }
    }

    /// Releases the lock, as `release` of the underlying lock.
    pub fn release(&self) -> Result<(), SyncError> {
        match &self.lock {
            ConditionLock::Lock(l) => l.release(),
            ConditionLock::RLock(l) => l.release(),
        }
    }

    /// Takes the lock, blocking; the guard releases it and offers `wait` and `notify`.
    ///
    /// Over a [`Lock`], the guard holds it as [`Lock::acquire`] does (a plain hold that
    /// `wait` may release): it guards no data.
    pub fn lock(&self) -> LockResult<ConditionGuard<'_>> {
        // The guard below owns the release from here on: the inner guards are
        // forgotten, not dropped.
        let died = match &self.lock {
            ConditionLock::Lock(l) => l.reacquire(),
            ConditionLock::RLock(l) => match l.lock() {
                Ok(g) => {
                    std::mem::forget(g);
                    false
                }
                Err(e) => {
                    std::mem::forget(e.into_inner());
                    true
                }
            },
        };
        let guard = ConditionGuard {
            cond: self,
            _not_send: PhantomData,
        };
        if died {
            Err(OwnerDied::new(guard))
        } else {
            Ok(guard)
        }
    }

    /// Whether the calling thread holds the lock (Python's `_is_owned`): a `Lock` knows
    /// the thread that took it, an `RLock` its owning thread.
    fn is_owned(&self) -> bool {
        match &self.lock {
            ConditionLock::Lock(l) => l.is_mine(),
            ConditionLock::RLock(l) => l.is_owned(),
        }
    }

    /// Releases the lock, every level of it; returns what `restore` needs.
    fn release_save(&self) -> u32 {
        match &self.lock {
            ConditionLock::Lock(l) => u32::from(l.release_mine()),
            ConditionLock::RLock(l) => l.release_save(),
        }
    }

    /// Takes the lock back; `true` if its holder in between died.
    fn restore(&self, saved: u32) -> bool {
        match &self.lock {
            ConditionLock::Lock(l) => l.reacquire(),
            ConditionLock::RLock(l) => l.acquire_restore(saved),
        }
    }

    /// Releases the lock, waits until notified or `timeout` passes (`None`: for ever),
    /// takes the lock back; returns whether it was notified.
    ///
    /// A notify that lands after the timeout but before the lock is taken back counts:
    /// the call returns `true`, so no notification is ever spent on a waiter that then
    /// reports a timeout.
    ///
    /// Not holding the lock in this thread: [`SyncError::NotOwner`]. A `Lock` held
    /// through a guard (a `LockGuard`, or the guard of data it protects) is never
    /// released here: [`SyncError::GuardHeld`]. `Err(OwnerDied)`: the lock was taken
    /// back from a holder that died; it is held, as before the call.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, SyncError> {
        if !self.is_owned() {
            return Err(SyncError::NotOwner);
        }
        if let ConditionLock::Lock(l) = &self.lock {
            if l.guard_held() {
                return Err(SyncError::GuardHeld);
            }
        }
        let m = self.mem.get();
        let head = m.head.load(Ordering::Relaxed);
        let ticket = m.tail.load(Ordering::Relaxed);
        if ticket.wrapping_sub(head) as usize >= MAX_WAITERS {
            return Err(SyncError::TooManyWaiters(MAX_WAITERS));
        }
        let slot = m.slot(ticket);
        let waiting = tag(ticket, WAITING);
        slot.store(waiting, Ordering::Relaxed);
        m.tail.store(ticket.wrapping_add(1), Ordering::Relaxed);

        let deadline = Deadline::after(timeout);
        let saved = self.release_save();
        while slot.load(Ordering::Acquire) == waiting {
            if !futex::wait(slot, waiting, deadline) {
                break;
            }
        }
        let died = self.restore(saved);

        // Under the lock again: settle the ticket.
        let notified = slot.load(Ordering::Relaxed) != waiting;
        if !notified {
            slot.store(tag(ticket, CANCELLED), Ordering::Relaxed);
            self.compact(m);
        }
        if died {
            return Err(SyncError::OwnerDied(HeldLock::reacquired()));
        }
        Ok(notified)
    }

    /// Drops cancelled tickets from both ends of the ring. Under the lock.
    fn compact(&self, m: &CondMem) {
        let mut head = m.head.load(Ordering::Relaxed);
        let mut tail = m.tail.load(Ordering::Relaxed);
        while head != tail && m.slot(head).load(Ordering::Relaxed) == tag(head, CANCELLED) {
            head = head.wrapping_add(1);
        }
        while head != tail
            && m.slot(tail.wrapping_sub(1)).load(Ordering::Relaxed)
                == tag(tail.wrapping_sub(1), CANCELLED)
        {
            tail = tail.wrapping_sub(1);
        }
        m.head.store(head, Ordering::Relaxed);
        m.tail.store(tail, Ordering::Relaxed);
    }

    /// Waits until `predicate` is true or `timeout` passes; returns the predicate's
    /// last value. The predicate runs with the lock held.
    pub fn wait_for(
        &self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool, SyncError> {
        let deadline = Deadline::after(timeout);
        loop {
            if predicate() {
                return Ok(true);
            }
            let left = deadline.remaining();
            if left == Some(Duration::ZERO) {
                return Ok(false);
            }
            self.wait(left)?;
        }
    }

    /// Wakes up to `n` waiters (the oldest first). Not holding the lock:
    /// [`SyncError::NotOwner`].
    pub fn notify(&self, n: usize) -> Result<(), SyncError> {
        if !self.is_owned() {
            return Err(SyncError::NotOwner);
        }
        let m = self.mem.get();
        let mut head = m.head.load(Ordering::Relaxed);
        let tail = m.tail.load(Ordering::Relaxed);
        let mut woken = 0;
        while head != tail && woken < n {
            let slot = m.slot(head);
            if slot.load(Ordering::Relaxed) == tag(head, WAITING) {
                slot.store(tag(head, NOTIFIED), Ordering::Release);
                futex::wake(slot, 1);
                woken += 1;
            }
            head = head.wrapping_add(1);
        }
        m.head.store(head, Ordering::Relaxed);
        self.compact(m);
        Ok(())
    }

    /// Wakes every waiter. Not holding the lock: [`SyncError::NotOwner`].
    pub fn notify_all(&self) -> Result<(), SyncError> {
        self.notify(usize::MAX)
    }

    /// How many waiters a notify would count now (cancelled ones excluded). Meaningful
    /// with the lock held.
    pub fn waiters(&self) -> usize {
        let m = self.mem.get();
        let (head, tail) = (
            m.head.load(Ordering::Relaxed),
            m.tail.load(Ordering::Relaxed),
        );
        let n = (tail.wrapping_sub(head) as usize).min(MAX_WAITERS);
        (0..n as u32)
            .map(|i| head.wrapping_add(i))
            .filter(|&t| m.slot(t).load(Ordering::Relaxed) == tag(t, WAITING))
            .count()
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .field("waiters", &self.waiters())
            .finish()
    }
}

impl ConditionGuard<'_> {
    /// See [`Condition::wait`].
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, SyncError> {
        self.cond.wait(timeout)
    }

    /// See [`Condition::wait_for`].
    pub fn wait_for(
        &mut self,
        predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool, SyncError> {
        self.cond.wait_for(predicate, timeout)
    }

    /// See [`Condition::notify`].
    pub fn notify(&self, n: usize) -> Result<(), SyncError> {
        self.cond.notify(n)
    }

    /// See [`Condition::notify_all`].
    pub fn notify_all(&self) -> Result<(), SyncError> {
        self.cond.notify_all()
    }

    /// See [`Condition::waiters`].
    pub fn waiters(&self) -> usize {
        self.cond.waiters()
    }

    /// The condition.
    pub fn condition(&self) -> &Condition {
        self.cond
    }
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        match &self.cond.lock {
            // Only if this thread still holds it plainly (someone may have released it
            // for us, as Python allows, and another may hold it now).
            ConditionLock::Lock(l) => {
                l.release_mine();
            }
            ConditionLock::RLock(l) => {
                let _ = l.release();
            }
        }
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard")
            .field("cond", self.cond)
            .finish()
    }
}

impl<'a> From<OwnerDied<ConditionGuard<'a>>> for SyncError {
    /// The lock stays held by the error: dropping the error releases it.
    fn from(e: OwnerDied<ConditionGuard<'a>>) -> Self {
        let g = std::mem::ManuallyDrop::new(e.into_inner());
        let held = match &g.cond.lock {
            ConditionLock::Lock(l) => HeldLock::lock(l.clone(), crate::ident::process_id()),
            ConditionLock::RLock(l) => HeldLock::rlock(l.clone(), crate::ident::thread_id()),
        };
        SyncError::OwnerDied(held)
    }
}
