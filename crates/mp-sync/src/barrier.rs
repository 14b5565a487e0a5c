//! [`Barrier`]: Python's `multiprocessing.Barrier`, a cyclic barrier for a fixed number
//! of parties across processes.
//!
//! It follows CPython's `threading.Barrier` state machine (filling, draining,
//! resetting, broken) over a robust internal lock and a futex sequence word used as a
//! condition variable: a new cycle cannot begin until every party has left the last
//! one, so no waiter can miss its own cycle's outcome.
use crate::ident::process_id;
use crate::raw::{Acquired, RawLock};
use crate::shared::{Shared, SharedState};
use crate::SyncError;
use mp_core::{futex, Deadline};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const FILLING: u32 = 0;
const DRAINING: u32 = 1;
const RESETTING: u32 = 2;
const BROKEN: u32 = 3;
const NO_TIMEOUT: u64 = u64::MAX;

#[repr(C)]
struct BarrierMem {
    magic: AtomicU32,
    parties: AtomicU32,
    /// FILLING, DRAINING, RESETTING or BROKEN. Under the internal lock.
    state: AtomicU32,
    /// Parties inside `wait`. Under the internal lock.
    count: AtomicU32,
    /// Bumped by every state change that waiters look at; their futex word.
    seq: AtomicU32,
    /// Whether the barrier was created with an action.
    has_action: AtomicU32,
    /// The default timeout in nanoseconds, or `NO_TIMEOUT`.
    timeout_ns: AtomicU64,
    lock: RawLock,
}

// SAFETY: repr(C), magic first, atomics only.
unsafe impl SharedState for BarrierMem {
    const MAGIC: u32 = 0x4241_5252; // "BARR"
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

/// A cyclic barrier for `parties` threads or processes.
///
/// `wait` blocks until `parties` callers are waiting, then releases them all; each
/// gets a distinct index in `0..parties`. The action, if any, runs once per cycle in
/// the last party to arrive, before anyone is released. A timeout in any party,
/// [`abort`](Self::abort), or [`reset`](Self::reset) while parties wait breaks the
/// barrier: every waiter gets [`SyncError::BrokenBarrier`].
///
/// **Actions do not travel.** A `fn()` pointer means nothing in another process (the
/// binary may be mapped elsewhere, or be another binary), so the action belongs to the
/// handle, not to the shared state: a handle received by another process has none, and
/// that process installs its own with [`set_action`](Self::set_action). If the barrier
/// was created with an action and the last party's handle has none, the barrier breaks
/// and that party gets [`SyncError::ActionMissing`], rather than skipping the action
/// silently.
///
/// If a process dies holding the barrier's internal lock, the next party to take it
/// breaks the barrier. A party that dies while waiting leaves the others waiting until
/// their timeout, as in Python.
///
/// ```
/// let b = mp_sync::Barrier::new(2, None, None)?;
/// let b2 = b.clone();
/// let t = std::thread::spawn(move || b2.wait());
/// let mine = b.wait()?;
/// let theirs = t.join().unwrap()?;
/// assert_eq!(mine + theirs, 1); // indices 0 and 1
/// # Ok::<(), mp_sync::SyncError>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Barrier {
    mem: Shared<BarrierMem>,
    #[serde(skip)]
    action: Option<fn()>,
}

/// The internal lock, held; released on drop.
struct Inner<'a> {
    m: &'a BarrierMem,
    me: u64,
}

impl Inner<'_> {
    fn state(&self) -> u32 {
        self.m.state.load(Ordering::Relaxed)
    }

    fn set_state(&self, s: u32) {
        self.m.state.store(s, Ordering::Relaxed);
    }

    fn count(&self) -> u32 {
        self.m.count.load(Ordering::Relaxed)
    }

    fn notify_all(&self) {
        self.m.seq.fetch_add(1, Ordering::Release);
        futex::wake_all(&self.m.seq);
    }

    /// Releases the lock, sleeps until a notify or `deadline`, takes the lock back.
    fn wait(&self, deadline: Deadline) {
        let seq = self.m.seq.load(Ordering::Acquire);
        self.m.lock.release_if(self.me);
        futex::wait(&self.m.seq, seq, deadline);
        self.relock();
    }

    fn relock(&self) {
        if self.m.lock.acquire(self.me, true, Deadline::NEVER) == Acquired::OwnerDied {
            // A party died mid-update: nothing it left can be trusted.
            self.brk();
        }
    }

    fn brk(&self) {
        self.set_state(BROKEN);
        self.notify_all();
    }

    /// Python's `_exit`: the last party out of a draining or resetting barrier refills
    /// it.
    fn leave(&self) {
        let count = self.count().saturating_sub(1);
        self.m.count.store(count, Ordering::Relaxed);
        if count == 0 && matches!(self.state(), DRAINING | RESETTING) {
            self.set_state(FILLING);
            self.notify_all();
        }
    }
}

impl Drop for Inner<'_> {
    fn drop(&mut self) {
        self.m.lock.release_if(self.me);
    }
}

impl Barrier {
    /// A barrier for `parties` (at least 1) callers, with an optional action and a
    /// default timeout for [`wait`](Self::wait).
    pub fn new(
        parties: usize,
        action: Option<fn()>,
        timeout: Option<Duration>,
    ) -> Result<Self, SyncError> {
        let parties =
            u32::try_from(parties)
                .ok()
                .filter(|&p| p > 0)
                .ok_or(SyncError::InvalidArgument(
                    "a barrier needs between 1 and u32::MAX parties",
                ))?;
        let timeout_ns = timeout.map_or(NO_TIMEOUT, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(NO_TIMEOUT - 1)
        });
        let mem = Shared::new(|m: &BarrierMem| {
            m.parties.store(parties, Ordering::Relaxed);
            m.has_action
                .store(u32::from(action.is_some()), Ordering::Relaxed);
            m.timeout_ns.store(timeout_ns, Ordering::Relaxed);
        })?;
        Ok(Barrier { mem, action })
    }

    /// Installs (or removes) the action this handle runs when its process is the last
    /// to arrive. Each process installs its own: actions do not travel.
    pub fn set_action(&mut self, action: Option<fn()>) {
        self.action = action;
    }

    /// This handle with `action` installed.
    pub fn with_action(mut self, action: fn()) -> Self {
        self.action = Some(action);
        self
    }

    fn enter(&self) -> Inner<'_> {
        let m = self.mem.get();
        let inner = Inner {
            m,
            me: process_id(),
        };
        if m.lock.acquire(inner.me, true, Deadline::NEVER) == Acquired::OwnerDied {
            inner.brk();
        }
        inner
    }

    /// Waits for the other parties, with the default timeout; returns this party's
    /// index in `0..parties`.
    pub fn wait(&self) -> Result<usize, SyncError> {
        let ns = self.mem.get().timeout_ns.load(Ordering::Relaxed);
        self.wait_inner((ns != NO_TIMEOUT).then(|| Duration::from_nanos(ns)))
    }

    /// As [`wait`](Self::wait), with `timeout` instead of the default.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, SyncError> {
        self.wait_inner(Some(timeout))
    }

    fn wait_inner(&self, timeout: Option<Duration>) -> Result<usize, SyncError> {
        let deadline = Deadline::after(timeout);
        let g = self.enter();
        // A new cycle waits for the last one to empty. (Python waits here without a
        // timeout; a bounded wait stays bounded here, so a party that died mid-drain
        // cannot hold the next cycle for ever: the timeout breaks the barrier.)
        while matches!(g.state(), DRAINING | RESETTING) {
            if deadline.expired() {
                g.brk();
                return Err(SyncError::BrokenBarrier);
            }
            g.wait(deadline);
        }
        if g.state() == BROKEN {
            return Err(SyncError::BrokenBarrier);
        }
        let index = g.count();
        g.m.count.store(index + 1, Ordering::Relaxed);
        let parties = g.m.parties.load(Ordering::Relaxed);
        let outcome = if index + 1 >= parties {
            self.release(&g)
        } else {
            Self::await_release(&g, deadline)
        };
        g.leave();
        drop(g);
        match outcome {
            Ok(()) => Ok(index as usize),
            Err(Outcome::Error(e)) => Err(e),
            Err(Outcome::Panic(p)) => std::panic::resume_unwind(p),
        }
    }

    /// Python's `_release`: runs the action, then lets everyone go.
    fn release(&self, g: &Inner<'_>) -> Result<(), Outcome> {
        match self.action {
            Some(action) => {
                if let Err(p) = std::panic::catch_unwind(action) {
                    g.brk();
                    return Err(Outcome::Panic(p));
                }
            }
            None if g.m.has_action.load(Ordering::Relaxed) != 0 => {
                g.brk();
                return Err(Outcome::Error(SyncError::ActionMissing));
            }
            None => {}
        }
        g.set_state(DRAINING);
        g.notify_all();
        Ok(())
    }

    /// Python's `_wait`: until the state leaves FILLING; a timeout breaks the barrier.
    fn await_release(g: &Inner<'_>, deadline: Deadline) -> Result<(), Outcome> {
        while g.state() == FILLING {
            if deadline.expired() {
                g.brk();
                return Err(Outcome::Error(SyncError::BrokenBarrier));
            }
            g.wait(deadline);
        }
        if matches!(g.state(), BROKEN | RESETTING) {
            return Err(Outcome::Error(SyncError::BrokenBarrier));
        }
        Ok(())
    }

    /// Breaks the barrier: current and future waiters get
    /// [`SyncError::BrokenBarrier`] until [`reset`](Self::reset).
    pub fn abort(&self) {
        self.enter().brk();
    }

    /// Returns the barrier to its initial state. Parties waiting now get
    /// [`SyncError::BrokenBarrier`].
    pub fn reset(&self) {
        let g = self.enter();
        if g.count() > 0 {
            if matches!(g.state(), FILLING | BROKEN) {
                g.set_state(RESETTING);
            }
        } else {
            g.set_state(FILLING);
        }
        g.notify_all();
    }

    /// The number of parties needed to pass.
    pub fn parties(&self) -> usize {
        self.mem.get().parties.load(Ordering::Relaxed) as usize
    }

    /// The number of parties waiting now.
    pub fn n_waiting(&self) -> usize {
        let g = self.enter();
        if g.state() == FILLING {
            g.count() as usize
        } else {
            0
        }
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.mem.get().state.load(Ordering::Relaxed) == BROKEN
    }
}

enum Outcome {
    Error(SyncError),
    Panic(Box<dyn std::any::Any + Send>),
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("broken", &self.broken())
            .field("has_action", &self.action.is_some())
            .finish()
    }
}
