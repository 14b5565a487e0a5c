//! [`Pool`] and [`PoolBuilder`]: the public API.
use crate::handler::{run_handler, Config, Shared, Status, Task};
use crate::imap::{IMapIter, IMapUnorderedIter, Lazy};
use crate::result::{complete, lock, AsyncResult, Callbacks, CollectSink, ResultCell, Sink};
use crate::wire::{Encoded, SeqOfOne};
use crate::worker::chunk_target;
use crate::PoolError;
use mp_process::{ForkTemplate, RemoteTarget, StartMethod, Target};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};

/// A boxed error from an input iterator (see the `try_` methods).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Configures a [`Pool`]: `Pool::builder().processes(4).start_method(..).build()`.
#[must_use = "a builder does nothing until build() is called"]
pub struct PoolBuilder {
    processes: Option<usize>,
    method: Option<StartMethod>,
    maxtasks: Option<usize>,
    init: Option<Result<(RemoteTarget, Encoded), PoolError>>,
    allow_fork_threads: bool,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("start_method", &self.method)
            .field("maxtasksperchild", &self.maxtasks)
            .field("initializer", &self.init.is_some())
            .finish()
    }
}

impl PoolBuilder {
    /// The number of worker processes (default: [`mp_process::cpu_count`]; 0 is an error).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// The start method of the workers (default: [`mp_process::get_start_method`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Runs `f(initargs...)` once in each worker before its first task (Python's
    /// `initializer` and `initargs`). If it panics, the pool is broken: every pending
    /// and later task fails with [`PoolError::Initializer`].
    pub fn initializer<F, A>(mut self, f: F, initargs: A) -> Self
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + 'static,
    {
        let t = RemoteTarget::of::<F, A>(f).map_err(|e| PoolError::Start(e.to_string()));
        self.init = Some(t.and_then(|t| Ok((t, Encoded::of(&initargs)?))));
        self
    }

    /// Replaces each worker after it has run `n` tasks (chunks); 0 is an error.
    pub fn maxtasksperchild(mut self, n: usize) -> Self {
        self.maxtasks = Some(n);
        self
    }

    /// With the `fork` start method, allows building the pool in a program that already
    /// runs other threads (its workers are forked from a copy of it made at `build()`:
    /// see "Start methods" in the crate docs).
    pub fn allow_fork_with_threads(mut self) -> Self {
        self.allow_fork_threads = true;
        self
    }

    /// Starts the workers and the handler thread. If a worker fails to start, those
    /// already started are stopped and the error is returned.
    pub fn build(self) -> Result<Pool, PoolError> {
        let processes = match self.processes {
            Some(0) => return Err(PoolError::NoProcesses),
            Some(n) => n,
            None => mp_process::cpu_count(),
        };
        let maxtasks = match self.maxtasks {
            Some(0) => return Err(PoolError::ZeroMaxTasks),
            m => m.map(|m| m as u64),
        };
        let init = self.init.transpose()?;
        let method = self.method.unwrap_or_else(mp_process::get_start_method);
        // Under fork, every worker (first or replacement) is forked from a template made
        // now, before the handler thread exists: the only fork of this process the pool
        // makes, refused (unless allowed) if the program runs threads of its own.
        let template = match method {
            StartMethod::Fork if self.allow_fork_threads => {
                Some(ForkTemplate::new_allowing_threads())
            }
            StartMethod::Fork => Some(ForkTemplate::new()),
            StartMethod::Spawn | StartMethod::Forkserver => None,
        }
        .transpose()
        .map_err(|e| PoolError::Start(e.to_string()))?;
        let cfg = Config {
            method,
            maxtasks,
            init,
        };
        let shared = Arc::new(Shared::new(cfg, processes, template)?);
        let mut handles = Vec::with_capacity(processes);
        for i in 1..=processes {
            match shared.start_worker(i) {
                Ok((h, slot)) => {
                    shared.add_worker(slot);
                    handles.push(h);
                }
                Err(e) => {
                    // No handler thread yet: stop what was started, right here.
                    shared.terminate();
                    run_handler(shared.clone(), handles, processes);
                    return Err(e);
                }
            }
        }
        let s2 = shared.clone();
        let handler = std::thread::Builder::new()
            .name("mp-pool-handler".into())
            .spawn(move || run_handler(s2, handles, processes))
            .map_err(|e| {
                shared.terminate();
                PoolError::Start(format!("could not start the handler thread: {e}"))
            })?;
        let handler_id = handler.thread().id();
        Ok(Pool {
            shared,
            handler: Mutex::new(Some(handler)),
            handler_id,
            processes,
        })
    }
}

/// A pool of worker processes: Python's `multiprocessing.Pool`.
///
/// Tasks are `fn` items or non-capturing closures (as for `Process`), with arguments and
/// results that are `Serialize + DeserializeOwned`; values holding fds (a Connection, a
/// Lock, a Value ...) travel too. Dropping the pool terminates it (Python's `with`).
pub struct Pool {
    shared: Arc<Shared>,
    handler: Mutex<Option<JoinHandle<()>>>,
    handler_id: ThreadId,
    processes: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.shared.state);
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("start_method", &self.shared.cfg.method)
            .field("status", &st.status)
            .field("workers", &st.worker_pids())
            .finish()
    }
}

fn first<R>(v: Vec<R>) -> Result<R, PoolError> {
    v.into_iter()
        .next()
        .ok_or_else(|| PoolError::Decode("no result came back".into()))
}

fn whole<R>(v: Vec<R>) -> Result<Vec<R>, PoolError> {
    Ok(v)
}

fn encode_one<T: Serialize>(items: &[T]) -> Result<Encoded, PoolError> {
    Encoded::of(&(SeqOfOne(items),))
}

fn encode_star<A: Serialize>(items: &[A]) -> Result<Encoded, PoolError> {
    Encoded::of(&(items,))
}

fn collect_input<T, E: Into<BoxError>>(
    items: impl IntoIterator<Item = Result<T, E>>,
) -> Result<Vec<T>, PoolError> {
    items
        .into_iter()
        .collect::<Result<Vec<T>, E>>()
        .map_err(|e| PoolError::Input(Arc::from(e.into())))
}

impl Pool {
    /// A pool of `processes` workers with the default start method (0 is an error).
    pub fn new(processes: usize) -> Result<Pool, PoolError> {
        Self::builder().processes(processes).build()
    }

    /// A builder, for the start method, an initializer, maxtasksperchild.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            method: None,
            maxtasks: None,
            init: None,
            allow_fork_threads: false,
        }
    }

    /// The number of workers.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// The start method of the workers.
    pub fn start_method(&self) -> StartMethod {
        self.shared.cfg.method
    }

    /// The pids of the live workers (they change when workers are replaced).
    pub fn worker_pids(&self) -> Vec<i32> {
        lock(&self.shared.state).worker_pids()
    }

    fn check_running(&self) -> Result<(), PoolError> {
        let st = lock(&self.shared.state);
        if st.status != Status::Running {
            return Err(PoolError::NotRunning);
        }
        match &st.broken {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn default_chunksize(&self, len: usize) -> usize {
        len.div_ceil(4 * self.processes).max(1)
    }

    /// Splits `items` into chunks, encodes them, and submits them as one job.
    #[allow(clippy::too_many_arguments)]
    fn submit_chunks<X, R, T>(
        &self,
        target: Result<RemoteTarget, PoolError>,
        items: Vec<X>,
        chunksize: Option<usize>,
        encode: fn(&[X]) -> Result<Encoded, PoolError>,
        callbacks: Option<Callbacks<T>>,
        finish: fn(Vec<R>) -> Result<T, PoolError>,
    ) -> Result<AsyncResult<T>, PoolError>
    where
        R: DeserializeOwned + Send + 'static,
        T: Send + 'static,
    {
        self.check_running()?;
        let cs = match chunksize {
            Some(0) => return Err(PoolError::ZeroChunksize),
            Some(c) => c,
            None => self.default_chunksize(items.len()),
        };
        let target = target?;
        let cell = ResultCell::new(Arc::downgrade(&self.shared));
        if items.is_empty() {
            complete(&cell, callbacks, finish(Vec::new()));
            return Ok(AsyncResult::new(cell));
        }
        let lens: Vec<usize> = items.chunks(cs).map(<[X]>::len).collect();
        let sink: Arc<dyn Sink> = Arc::new(CollectSink::new(lens, cell.clone(), callbacks, finish));
        let job = self.shared.job_id();
        // Chunks are submitted as they are encoded (the first ones one by one), so the
        // workers start while the rest of the input is being encoded.
        let eager = 2 * self.processes;
        let mut batch = Vec::new();
        let n = items.len().div_ceil(cs);
        for (index, c) in items.chunks(cs).enumerate() {
            let submitted = encode(c).and_then(|args| {
                batch.push(Task {
                    sink: sink.clone(),
                    index,
                    job,
                    target,
                    args,
                });
                if index < eager || batch.len() >= 16 || index + 1 == n {
                    self.shared.submit(std::mem::take(&mut batch), false)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = submitted {
                // Nothing is returned for a job that failed to submit: drop what waits.
                lock(&self.shared.state).cancel_job(job);
                return Err(e);
            }
        }
        Ok(AsyncResult::new(cell))
    }

    // ----- apply -----

    /// Runs `f(args...)` in a worker and waits for its result (Python's `apply`).
    pub fn apply<F, A>(&self, f: F, args: A) -> Result<F::Output, PoolError>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
    {
        self.apply_async(f, args)?.get()
    }

    /// Runs `f(args...)` in a worker (Python's `apply_async`).
    pub fn apply_async<F, A>(&self, f: F, args: A) -> Result<AsyncResult<F::Output>, PoolError>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
    {
        self.apply_async_with(f, args, Callbacks::new())
    }

    /// As [`apply_async`](Self::apply_async), with callbacks.
    pub fn apply_async_with<F, A>(
        &self,
        f: F,
        args: A,
        callbacks: Callbacks<F::Output>,
    ) -> Result<AsyncResult<F::Output>, PoolError>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
    {
        self.submit_chunks(
            chunk_target::<F, A>(f),
            vec![args],
            Some(1),
            encode_star::<A>,
            Some(callbacks),
            first::<F::Output>,
        )
    }

    // ----- map -----

    /// `f(item)` for every item, in order (Python's `map`), with Python's default
    /// chunksize: `ceil(len / (4 * processes))`. The input is collected first. If tasks
    /// fail, the first failure in input order is returned, after every task finished.
    pub fn map<F, T>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<F::Output>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
    {
        self.map_async_with(f, items, None, Callbacks::new())?.get()
    }

    /// As [`map`](Self::map) with a given chunksize (0 is an error).
    pub fn map_with_chunksize<F, T>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
    {
        self.map_async_with(f, items, Some(chunksize), Callbacks::new())?
            .get()
    }

    /// As [`map`](Self::map) over an input whose items may fail: the first `Err` is
    /// returned as [`PoolError::Input`] before anything is submitted (as Python turns
    /// the input into a list first); the pool stays usable.
    pub fn try_map<F, T, E>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Result<T, E>>,
    ) -> Result<Vec<F::Output>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
        E: Into<BoxError>,
    {
        let items = collect_input(items)?;
        self.map(f, items)
    }

    /// `map` without waiting (Python's `map_async`).
    pub fn map_async<F, T>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<F::Output>>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
    {
        self.map_async_with(f, items, None, Callbacks::new())
    }

    /// `map_async` with a chunksize (`None`: Python's default) and callbacks; the
    /// success callback gets the whole result vector once.
    pub fn map_async_with<F, T>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<F::Output>>,
    ) -> Result<AsyncResult<Vec<F::Output>>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
    {
        self.submit_chunks(
            chunk_target::<F, (T,)>(f),
            items.into_iter().collect(),
            chunksize,
            encode_one::<T>,
            Some(callbacks),
            whole::<F::Output>,
        )
    }

    // ----- starmap -----

    /// `f(args...)` for every argument tuple, in order (Python's `starmap`).
    pub fn starmap<F, A>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<F::Output>, PoolError>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
    {
        self.starmap_async_with(f, items, None, Callbacks::new())?
            .get()
    }

    /// `starmap` without waiting (Python's `starmap_async`).
    pub fn starmap_async<F, A>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> Result<AsyncResult<Vec<F::Output>>, PoolError>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
    {
        self.starmap_async_with(f, items, None, Callbacks::new())
    }

    /// `starmap_async` with a chunksize (`None`: Python's default) and callbacks.
    pub fn starmap_async_with<F, A>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<F::Output>>,
    ) -> Result<AsyncResult<Vec<F::Output>>, PoolError>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
    {
        self.submit_chunks(
            chunk_target::<F, A>(f),
            items.into_iter().collect(),
            chunksize,
            encode_star::<A>,
            Some(callbacks),
            whole::<F::Output>,
        )
    }

    // ----- imap -----

    /// A lazy, ordered `map` (Python's `imap`, chunksize 1): the input is read as the
    /// results are consumed, with a bounded number of items in flight, so a long (or
    /// endless) input runs in bounded memory.
    pub fn imap<'p, F, T, I>(&'p self, f: F, items: I) -> Result<IMapIter<'p, F::Output>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'p,
    {
        self.try_imap(
            f,
            items.into_iter().map(Ok::<T, std::convert::Infallible>),
            1,
        )
    }

    /// As [`imap`](Self::imap) with a chunksize (0 is an error).
    pub fn imap_with_chunksize<'p, F, T, I>(
        &'p self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<IMapIter<'p, F::Output>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'p,
    {
        self.try_imap(
            f,
            items.into_iter().map(Ok::<T, std::convert::Infallible>),
            chunksize,
        )
    }

    /// As [`imap`](Self::imap) over an input whose items may fail: the results of the
    /// items before the first `Err` are yielded, then [`PoolError::Input`], then the
    /// iterator ends. The pool stays usable.
    pub fn try_imap<'p, F, T, E, I>(
        &'p self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<IMapIter<'p, F::Output>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
        E: Into<BoxError>,
        I: IntoIterator<Item = Result<T, E>>,
        I::IntoIter: 'p,
    {
        Ok(IMapIter::new(self.lazy(f, items, chunksize, true)?))
    }

    /// A lazy `map` whose results come in completion order (Python's
    /// `imap_unordered`, chunksize 1).
    pub fn imap_unordered<'p, F, T, I>(
        &'p self,
        f: F,
        items: I,
    ) -> Result<IMapUnorderedIter<'p, F::Output>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'p,
    {
        self.try_imap_unordered(
            f,
            items.into_iter().map(Ok::<T, std::convert::Infallible>),
            1,
        )
    }

    /// As [`imap_unordered`](Self::imap_unordered) with a chunksize (0 is an error).
    pub fn imap_unordered_with_chunksize<'p, F, T, I>(
        &'p self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<IMapUnorderedIter<'p, F::Output>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'p,
    {
        self.try_imap_unordered(
            f,
            items.into_iter().map(Ok::<T, std::convert::Infallible>),
            chunksize,
        )
    }

    /// As [`imap_unordered`](Self::imap_unordered) over a fallible input: after the
    /// results of every item before the first `Err`, [`PoolError::Input`], then the end.
    pub fn try_imap_unordered<'p, F, T, E, I>(
        &'p self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<IMapUnorderedIter<'p, F::Output>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
        E: Into<BoxError>,
        I: IntoIterator<Item = Result<T, E>>,
        I::IntoIter: 'p,
    {
        Ok(IMapUnorderedIter::new(
            self.lazy(f, items, chunksize, false)?,
        ))
    }

    fn lazy<'p, F, T, E, I>(
        &'p self,
        f: F,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> Result<Lazy<'p, F::Output>, PoolError>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + 'static,
        F::Output: Send,
        E: Into<BoxError>,
        I: IntoIterator<Item = Result<T, E>>,
        I::IntoIter: 'p,
    {
        if chunksize == 0 {
            return Err(PoolError::ZeroChunksize);
        }
        let target = chunk_target::<F, (T,)>(f)?;
        let mut it = items.into_iter();
        let mut buf: Vec<T> = Vec::with_capacity(chunksize.min(1 << 16));
        // Pulls the next chunk: its encoding and length, and an error that ends the
        // input (from the iterator, or from encoding).
        let source = move || -> (Option<(Encoded, usize)>, Option<PoolError>) {
            buf.clear();
            let mut err = None;
            while buf.len() < chunksize {
                match it.next() {
                    Some(Ok(x)) => buf.push(x),
                    Some(Err(e)) => {
                        err = Some(PoolError::Input(Arc::from(e.into())));
                        break;
                    }
                    None => break,
                }
            }
            if buf.is_empty() {
                return (None, err);
            }
            match encode_one(&buf) {
                Ok(enc) => (Some((enc, buf.len())), err),
                Err(e) => (None, Some(e)),
            }
        };
        Lazy::start(
            &self.shared,
            target,
            Box::new(source),
            chunksize,
            self.processes,
            ordered,
        )
    }

    // ----- lifecycle -----

    /// Stops accepting tasks; those submitted run to completion (Python's `close`).
    pub fn close(&self) {
        let mut st = lock(&self.shared.state);
        if st.status == Status::Running {
            st.status = Status::Closed;
        }
        drop(st);
        self.shared.wake();
    }

    /// Fails every unfinished task with [`PoolError::Terminated`], stops the workers and
    /// waits for them (Python's `terminate`).
    pub fn terminate(&self) {
        self.shared.terminate();
        self.join_handler();
    }

    /// Waits for the workers to exit, after [`close`](Self::close) (every task done) or
    /// [`terminate`](Self::terminate). [`PoolError::StillRunning`] on a running pool.
    ///
    /// As in Python, another thread may call [`terminate`](Self::terminate) while this
    /// waits: the wait then ends as soon as the workers are stopped.
    pub fn join(&self) -> Result<(), PoolError> {
        if lock(&self.shared.state).status == Status::Running {
            return Err(PoolError::StillRunning);
        }
        self.join_handler();
        match lock(&self.shared.state).stuck.clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for the handler thread to finish. Every caller waits: the first joins the
    /// thread under the lock, the others wait for that lock.
    fn join_handler(&self) {
        if std::thread::current().id() == self.handler_id {
            return; // from a callback: the handler finishes on its own
        }
        let mut h = lock(&self.handler);
        if let Some(h) = h.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Pool {
    /// Terminates the pool, as Python's `with Pool() as p:` does on exit.
    fn drop(&mut self) {
        self.terminate();
    }
}
