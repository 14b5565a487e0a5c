//! [`AsyncResult`], the callbacks, and the sink that gathers a job's chunks.
use crate::handler::Shared;
use crate::wire::ChunkResult;
use crate::PoolError;
use mp_core::spin::{may_spin, SPIN};
use serde::de::DeserializeOwned;
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// One chunk's decoded results, or the failure of the whole chunk.
pub(crate) type Chunk<R> = Result<ChunkResult<R>, PoolError>;

/// What the handler hands a job for one of its chunks: the encoded
/// `Vec<Result<R, TaskFailure>>`, or a failure of the whole chunk.
pub(crate) type ChunkOutcome = Result<(Vec<u8>, Vec<OwnedFd>), PoolError>;

/// A job's receiving end, type-erased for the handler. Called outside every pool lock.
pub(crate) trait Sink: Send + Sync {
    fn deliver(&self, index: usize, outcome: ChunkOutcome);
    /// Chunk `index` was sent to worker `worker` (a key).
    fn dispatched(&self, _index: usize, _worker: u64) {}
    /// Whether delivering runs user callbacks, which belong to the handler thread.
    fn needs_handler(&self) -> bool {
        false
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

/// Decodes one chunk's results, checking it has the expected number of items.
///
/// The result type's `Deserialize` is the caller's code, run here in the handler thread
/// or in a reader in `get`: if it panics, that panic is this chunk's error
/// ([`PoolError::Decode`]), and the thread goes on serving the pool.
pub(crate) fn decode_chunk<R: DeserializeOwned>(outcome: ChunkOutcome, len: usize) -> Chunk<R> {
    let (bytes, fds) = outcome?;
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        mp_core::handles::decode::<ChunkResult<R>>(&bytes, fds)
    }));
    let v = match decoded {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(PoolError::Decode(e.to_string())),
        Err(payload) => {
            return Err(PoolError::Decode(format!(
                "the result's Deserialize panicked: {}",
                panic_text(&*payload)
            )))
        }
    };
    if v.len() != len {
        return Err(PoolError::Decode(format!(
            "a chunk of {len} items came back with {} results",
            v.len()
        )));
    }
    Ok(v)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Slot<T> {
    Pending,
    Ready(Result<T, PoolError>),
    Taken { ok: bool },
}

/// Where a result waits for its reader.
pub(crate) struct ResultCell<T> {
    slot: Mutex<Slot<T>>,
    cv: Condvar,
    ready: AtomicBool,
    /// Threads asleep on `cv`, counted under `slot`'s lock: `set` calls into the kernel
    /// to wake them only if there are any (a reader that polled needs no wake-up).
    sleepers: AtomicUsize,
    /// The pool, and the worker (key, 0 when unknown) that has this result's only task:
    /// a reader may then read that worker's pipe itself ([`Shared::help`]).
    pool: Weak<Shared>,
    worker: AtomicU64,
}

impl<T> ResultCell<T> {
    pub fn new(pool: Weak<Shared>) -> Arc<Self> {
        Arc::new(ResultCell {
            pool,
            worker: AtomicU64::new(0),
            slot: Mutex::new(Slot::Pending),
            cv: Condvar::new(),
            ready: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
        })
    }

    pub fn set(&self, r: Result<T, PoolError>) {
        let mut s = lock(&self.slot);
        if matches!(*s, Slot::Pending) {
            *s = Slot::Ready(r);
        }
        self.ready.store(true, Ordering::Release);
        let sleepers = self.sleepers.load(Ordering::Relaxed);
        drop(s);
        if sleepers > 0 {
            self.cv.notify_all();
        }
    }

    /// Waits until ready (or `timeout`); returns the guard and whether it is ready.
    fn wait(&self, timeout: Option<Duration>) -> (MutexGuard<'_, Slot<T>>, bool) {
        let deadline = mp_core::Deadline::after(timeout);
        if !self.ready.load(Ordering::Acquire) {
            let worker = self.worker.load(Ordering::Acquire);
            if worker != 0 {
                if let Some(pool) = self.pool.upgrade() {
                    pool.help(worker, &self.ready, &deadline);
                }
            }
        }
        if !self.ready.load(Ordering::Acquire) && may_spin() {
            let limit = deadline.remaining().map_or(SPIN, |t| t.min(SPIN));
            let start = std::time::Instant::now();
            'spin: while start.elapsed() < limit {
                for _ in 0..64 {
                    if self.ready.load(Ordering::Acquire) {
                        break 'spin;
                    }
                    std::hint::spin_loop();
                }
            }
        }
        let mut s = lock(&self.slot);
        loop {
            if !matches!(*s, Slot::Pending) {
                return (s, true);
            }
            let d = deadline.remaining();
            if d.is_some_and(|d| d.is_zero()) {
                return (s, false);
            }
            // Counted under the lock `set` takes, so `set` sees every sleeper.
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            s = match d {
                None => self.cv.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    self.cv
                        .wait_timeout(s, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The result of an `apply_async`, `map_async` or `starmap_async` (Python's
/// `AsyncResult`).
///
/// It does not keep the pool alive: if the pool is terminated or dropped first, the
/// result is [`PoolError::Terminated`], never a hang.
pub struct AsyncResult<T> {
    cell: Arc<ResultCell<T>>,
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<T> AsyncResult<T> {
    pub(crate) fn new(cell: Arc<ResultCell<T>>) -> Self {
        AsyncResult { cell }
    }

    /// Waits for the result and takes it: the value, or the task's error (the first
    /// failing item's, in input order, for a map). A second `get` is
    /// [`PoolError::AlreadyTaken`].
    pub fn get(&mut self) -> Result<T, PoolError> {
        self.take(None)
    }

    /// As [`get`](Self::get), waiting at most `timeout`: [`PoolError::Timeout`] if the
    /// result is not ready by then (it stays pending; ask again later).
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<T, PoolError> {
        self.take(Some(timeout))
    }

    fn take(&mut self, timeout: Option<Duration>) -> Result<T, PoolError> {
        let (mut s, ready) = self.cell.wait(timeout);
        if !ready {
            return Err(PoolError::Timeout);
        }
        let ok = match &*s {
            Slot::Ready(r) => r.is_ok(),
            Slot::Taken { ok } => *ok,
            Slot::Pending => false,
        };
        match std::mem::replace(&mut *s, Slot::Taken { ok }) {
            Slot::Ready(r) => r,
            _ => Err(PoolError::AlreadyTaken),
        }
    }

    /// Waits until the result is ready.
    pub fn wait(&self) {
        let _ = self.cell.wait(None);
    }

    /// Waits up to `timeout`; whether the result is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.cell.wait(Some(timeout)).1
    }

    /// Whether the result is ready (without waiting).
    pub fn ready(&self) -> bool {
        !matches!(*lock(&self.cell.slot), Slot::Pending)
    }

    /// Whether the task succeeded; [`PoolError::NotReady`] while it runs (Python's
    /// `ValueError`).
    pub fn successful(&self) -> Result<bool, PoolError> {
        match &*lock(&self.cell.slot) {
            Slot::Pending => Err(PoolError::NotReady),
            Slot::Ready(r) => Ok(r.is_ok()),
            Slot::Taken { ok } => Ok(*ok),
        }
    }
}

type OnSuccess<T> = Box<dyn FnOnce(&T) + Send>;
type OnError = Box<dyn FnOnce(&PoolError) + Send>;

/// Python's `callback` and `error_callback`: closures run once in the pool's handler
/// thread when the result is ready, before `get` returns it.
///
/// Keep them short (they hold up the pool's bookkeeping while they run). A callback may
/// submit more work to the pool. A panic in a callback is caught and reported with a
/// `tracing` event; it neither kills the handler nor changes the result.
///
/// ```
/// # use mp_pool::Callbacks;
/// let cb = Callbacks::new()
///     .on_success(|v: &Vec<u64>| assert!(!v.is_empty()))
///     .on_error(|e| eprintln!("failed: {e}"));
/// # let _ = cb;
/// ```
pub struct Callbacks<T> {
    success: Option<OnSuccess<T>>,
    error: Option<OnError>,
}

impl<T> Default for Callbacks<T> {
    fn default() -> Self {
        Callbacks {
            success: None,
            error: None,
        }
    }
}

impl<T> std::fmt::Debug for Callbacks<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("success", &self.success.is_some())
            .field("error", &self.error.is_some())
            .finish()
    }
}

impl<T> Callbacks<T> {
    /// No callbacks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Called with the value when the task succeeds (Python's `callback`).
    pub fn on_success(mut self, f: impl FnOnce(&T) + Send + 'static) -> Self {
        self.success = Some(Box::new(f));
        self
    }

    /// Called with the error when the task fails (Python's `error_callback`).
    pub fn on_error(mut self, f: impl FnOnce(&PoolError) + Send + 'static) -> Self {
        self.error = Some(Box::new(f));
        self
    }

    /// Runs the matching callback, catching a panic.
    pub(crate) fn run(self, r: &Result<T, PoolError>) {
        let caught = match r {
            Ok(v) => self
                .success
                .map(|f| catch_unwind(AssertUnwindSafe(|| f(v))).is_err()),
            Err(e) => self
                .error
                .map(|f| catch_unwind(AssertUnwindSafe(|| f(e))).is_err()),
        };
        if caught == Some(true) {
            tracing::error!("a pool result callback panicked; the panic was ignored");
        }
    }
}

/// Completes a result: callbacks first, then the value becomes visible.
pub(crate) fn complete<T>(cell: &ResultCell<T>, cb: Option<Callbacks<T>>, r: Result<T, PoolError>) {
    if let Some(cb) = cb {
        cb.run(&r);
    }
    cell.set(r);
}

type Finish<R, T> = fn(Vec<R>) -> Result<T, PoolError>;

struct Gather<R> {
    chunks: Vec<Option<Chunk<R>>>,
    remaining: usize,
}

/// Gathers the chunks of a `map` / `starmap` / `apply` job in order, then completes its
/// [`AsyncResult`].
pub(crate) struct CollectSink<R, T> {
    gather: Mutex<Gather<R>>,
    lens: Vec<usize>,
    cell: Arc<ResultCell<T>>,
    callbacks: Mutex<Option<Callbacks<T>>>,
    finish: Finish<R, T>,
}

impl<R, T> CollectSink<R, T> {
    pub fn new(
        lens: Vec<usize>,
        cell: Arc<ResultCell<T>>,
        callbacks: Option<Callbacks<T>>,
        finish: Finish<R, T>,
    ) -> Self {
        let n = lens.len();
        CollectSink {
            gather: Mutex::new(Gather {
                chunks: (0..n).map(|_| None).collect(),
                remaining: n,
            }),
            lens,
            cell,
            callbacks: Mutex::new(callbacks),
            finish,
        }
    }
}

impl<R, T> Sink for CollectSink<R, T>
where
    R: DeserializeOwned + Send,
    T: Send,
{
    fn deliver(&self, index: usize, outcome: ChunkOutcome) {
        let Some(&len) = self.lens.get(index) else {
            return;
        };
        let decoded = decode_chunk::<R>(outcome, len);
        let mut g = lock(&self.gather);
        match g.chunks.get_mut(index) {
            Some(slot @ None) => *slot = Some(decoded),
            _ => return, // delivered twice: cannot happen, but never count it twice
        }
        g.remaining -= 1;
        if g.remaining > 0 {
            return;
        }
        let chunks = std::mem::take(&mut g.chunks);
        drop(g);
        let total = self.lens.iter().sum();
        let mut values = Vec::with_capacity(total);
        let mut first_err = None;
        for c in chunks {
            match c {
                Some(Ok(chunk)) => {
                    if first_err.is_none() {
                        match chunk.failures.into_iter().next() {
                            Some((_, f)) => first_err = Some(PoolError::from(f)),
                            None => values.extend(chunk.values),
                        }
                    }
                }
                Some(Err(e)) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
                None => {
                    if first_err.is_none() {
                        first_err = Some(PoolError::Io("a chunk never arrived".into()));
                    }
                }
            }
        }
        let r = match first_err {
            Some(e) => Err(e),
            None => (self.finish)(values),
        };
        let cb = lock(&self.callbacks).take();
        complete(&self.cell, cb, r);
    }

    fn dispatched(&self, _index: usize, worker: u64) {
        // Read directly only by a reader whose result has no callbacks to run first.
        if self.lens.len() == 1 && !self.needs_handler() {
            self.cell.worker.store(worker, Ordering::Release);
        }
    }

    fn needs_handler(&self) -> bool {
        lock(&self.callbacks)
            .as_ref()
            .is_some_and(|c| c.success.is_some() || c.error.is_some())
    }
}
