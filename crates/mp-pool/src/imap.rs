//! `imap` and `imap_unordered`: lazy iterators that read their input as results are
//! consumed, with a bounded number of items in flight.
use crate::handler::{Shared, Task};
use crate::result::{decode_chunk, lock, Chunk, ChunkOutcome, Sink};
use crate::wire::Encoded;
use crate::PoolError;
use mp_process::RemoteTarget;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Pulls and encodes the next chunk of input: the chunk (if any), and an error that ends
/// the input.
pub(crate) type Source<'p> = Box<dyn FnMut() -> (Option<(Encoded, usize)>, Option<PoolError>) + 'p>;

struct Received<R> {
    lens: HashMap<usize, usize>,
    /// Ordered: whole chunks by index.
    chunks: BTreeMap<usize, Chunk<R>>,
    /// Unordered: items in completion order.
    items: VecDeque<Result<R, PoolError>>,
}

struct LazySink<R> {
    ordered: bool,
    received: Mutex<Received<R>>,
    cv: Condvar,
}

impl<R: DeserializeOwned + Send> Sink for LazySink<R> {
    fn deliver(&self, index: usize, outcome: ChunkOutcome) {
        let len = lock(&self.received).lens.get(&index).copied().unwrap_or(0);
        let chunk = decode_chunk::<R>(outcome, len);
        let mut r = lock(&self.received);
        if self.ordered {
            r.chunks.insert(index, chunk);
        } else {
            r.lens.remove(&index);
            match chunk {
                Ok(chunk) => r.items.extend(chunk.into_items()),
                Err(e) => r.items.extend((0..len).map(|_| Err(e.clone()))),
            }
        }
        drop(r);
        self.cv.notify_all();
    }
}

/// The machinery both iterators share.
pub(crate) struct Lazy<'p, R> {
    shared: &'p Arc<Shared>,
    sink: Arc<LazySink<R>>,
    target: RemoteTarget,
    source: Source<'p>,
    job: u64,
    /// Items submitted and items handed to the caller: their difference is bounded.
    submitted_items: usize,
    yielded_items: usize,
    window_items: usize,
    next_chunk: usize,
    /// Ordered: the next chunk to hand out, and what is left of the current one.
    want_chunk: usize,
    current: std::vec::IntoIter<Result<R, PoolError>>,
    input_done: bool,
    /// Counted in the pool's open lazy jobs (may submit after close()).
    registered: bool,
    pending_error: Option<PoolError>,
}

impl<'p, R: DeserializeOwned + Send + 'static> Lazy<'p, R> {
    pub(crate) fn start(
        shared: &'p Arc<Shared>,
        target: RemoteTarget,
        source: Source<'p>,
        chunksize: usize,
        processes: usize,
        ordered: bool,
    ) -> Result<Self, PoolError> {
        {
            let mut st = lock(&shared.state);
            if st.status != crate::handler::Status::Running {
                return Err(PoolError::NotRunning);
            }
            if let Some(e) = &st.broken {
                return Err(e.clone());
            }
            st.open_lazy += 1;
        }
        // Enough chunks to keep every worker's pipeline full, and no more.
        let window_chunks = (processes * 16).max(32);
        let mut l = Lazy {
            shared,
            sink: Arc::new(LazySink {
                ordered,
                received: Mutex::new(Received {
                    lens: HashMap::new(),
                    chunks: BTreeMap::new(),
                    items: VecDeque::new(),
                }),
                cv: Condvar::new(),
            }),
            target,
            source,
            job: shared.job_id(),
            submitted_items: 0,
            yielded_items: 0,
            window_items: window_chunks.saturating_mul(chunksize),
            next_chunk: 0,
            want_chunk: 0,
            current: Vec::new().into_iter(),
            input_done: false,
            registered: true,
            pending_error: None,
        };
        l.top_up();
        Ok(l)
    }

    fn unregister(&mut self) {
        if self.registered {
            self.registered = false;
            lock(&self.shared.state).open_lazy -= 1;
            self.shared.wake();
        }
    }

    /// Reads and submits input until the window is full or the input ends.
    fn top_up(&mut self) {
        while !self.input_done && self.submitted_items - self.yielded_items < self.window_items {
            let (chunk, err) = (self.source)();
            if let Some((args, len)) = chunk {
                let index = self.next_chunk;
                lock(&self.sink.received).lens.insert(index, len);
                let task = Task {
                    sink: self.sink.clone(),
                    index,
                    job: self.job,
                    target: self.target,
                    args,
                };
                match self.shared.submit(vec![task], true) {
                    Ok(()) => {
                        self.next_chunk += 1;
                        self.submitted_items += len;
                    }
                    Err(e) => {
                        lock(&self.sink.received).lens.remove(&index);
                        self.pending_error = Some(e);
                        self.input_done = true;
                    }
                }
            } else if err.is_none() {
                self.input_done = true;
            }
            if let Some(e) = err {
                self.pending_error.get_or_insert(e);
                self.input_done = true;
            }
        }
        if self.input_done {
            self.unregister();
        }
    }

    /// The end of the results: the input's error once, then `None`.
    fn finish(&mut self) -> Option<Result<R, PoolError>> {
        self.pending_error.take().map(Err)
    }

    fn next_ordered(&mut self, timeout: Option<Duration>) -> Option<Result<R, PoolError>> {
        loop {
            if let Some(item) = self.current.next() {
                self.yielded_items += 1;
                self.top_up();
                return Some(item);
            }
            self.top_up();
            if self.want_chunk == self.next_chunk {
                return self.finish();
            }
            let want = self.want_chunk;
            let deadline = mp_core::Deadline::after(timeout);
            let mut r = lock(&self.sink.received);
            let chunk = loop {
                if let Some(c) = r.chunks.remove(&want) {
                    break c;
                }
                r = match deadline.remaining() {
                    None => self.sink.cv.wait(r).unwrap_or_else(|p| p.into_inner()),
                    Some(d) if d.is_zero() => return Some(Err(PoolError::Timeout)),
                    Some(d) => {
                        self.sink
                            .cv
                            .wait_timeout(r, d)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                };
            };
            let len = r.lens.remove(&want).unwrap_or(0);
            drop(r);
            self.want_chunk += 1;
            let items: Vec<Result<R, PoolError>> = match chunk {
                Ok(chunk) => chunk.into_items(),
                Err(e) => {
                    let n = if len == 0 { 1 } else { len };
                    (0..n).map(|_| Err(e.clone())).collect()
                }
            };
            self.current = items.into_iter();
        }
    }

    fn next_unordered(&mut self, timeout: Option<Duration>) -> Option<Result<R, PoolError>> {
        self.top_up();
        if self.yielded_items == self.submitted_items {
            return self.finish();
        }
        let deadline = mp_core::Deadline::after(timeout);
        let mut r = lock(&self.sink.received);
        let item = loop {
            if let Some(i) = r.items.pop_front() {
                break i;
            }
            r = match deadline.remaining() {
                None => self.sink.cv.wait(r).unwrap_or_else(|p| p.into_inner()),
                Some(d) if d.is_zero() => return Some(Err(PoolError::Timeout)),
                Some(d) => {
                    self.sink
                        .cv
                        .wait_timeout(r, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        };
        drop(r);
        self.yielded_items += 1;
        self.top_up();
        Some(item)
    }
}

impl<R> Drop for Lazy<'_, R> {
    fn drop(&mut self) {
        // Work not yet handed to a worker is dropped; what runs finishes and is discarded.
        let mut st = lock(&self.shared.state);
        st.cancel_job(self.job);
        if self.registered {
            self.registered = false;
            st.open_lazy -= 1;
        }
        drop(st);
        self.shared.wake();
    }
}

/// The iterator of [`Pool::imap`](crate::Pool::imap): results in input order.
///
/// Each item is the task's result or its error (a panic, a dead worker ...): one failing
/// item does not end the iteration. It borrows the pool, which therefore outlives it.
pub struct IMapIter<'p, R> {
    lazy: Lazy<'p, R>,
}

impl<'p, R: DeserializeOwned + Send + 'static> IMapIter<'p, R> {
    pub(crate) fn new(lazy: Lazy<'p, R>) -> Self {
        IMapIter { lazy }
    }

    /// The next result, waiting at most `timeout`: `Some(Err(PoolError::Timeout))` if it
    /// is not ready by then (ask again later). Python's `next(timeout)`.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, PoolError>> {
        self.lazy.next_ordered(Some(timeout))
    }
}

impl<R: DeserializeOwned + Send + 'static> Iterator for IMapIter<'_, R> {
    type Item = Result<R, PoolError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.lazy.next_ordered(None)
    }
}

impl<R> std::fmt::Debug for IMapIter<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMapIter").finish_non_exhaustive()
    }
}

/// The iterator of [`Pool::imap_unordered`](crate::Pool::imap_unordered): results in
/// the order they complete.
pub struct IMapUnorderedIter<'p, R> {
    lazy: Lazy<'p, R>,
}

impl<'p, R: DeserializeOwned + Send + 'static> IMapUnorderedIter<'p, R> {
    pub(crate) fn new(lazy: Lazy<'p, R>) -> Self {
        IMapUnorderedIter { lazy }
    }

    /// The next result, waiting at most `timeout` (see [`IMapIter::next_timeout`]).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, PoolError>> {
        self.lazy.next_unordered(Some(timeout))
    }
}

impl<R: DeserializeOwned + Send + 'static> Iterator for IMapUnorderedIter<'_, R> {
    type Item = Result<R, PoolError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.lazy.next_unordered(None)
    }
}

impl<R> std::fmt::Debug for IMapUnorderedIter<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMapUnorderedIter").finish_non_exhaustive()
    }
}
