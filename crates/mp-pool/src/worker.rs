//! The worker side: the loop each worker process runs, and the chunk function that
//! runs one task's items with a panic caught per item.
use crate::progress::{finished, started, Progress};
use crate::wire::{ChunkResult, Encoded, Reply, TaskFailure, TaskIn, WorkerMsg};
use crate::PoolError;
use mp_pipe::Connection;
use mp_process::{ProcessError, RemoteTarget, Target};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// Replies of short tasks are batched, but never held longer than this.
const FLUSH_AFTER: Duration = Duration::from_micros(200);
/// ... nor past this many bytes or replies.
const FLUSH_BYTES: usize = 256 << 10;
const FLUSH_COUNT: usize = 512;
/// Parent and workers trust each other: allow large chunks.
pub(crate) const MAX_MESSAGE: u64 = 1 << 40;

/// What a worker is started with, beside its Connection.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerConfig {
    pub init: Option<(RemoteTarget, Encoded)>,
    pub maxtasks: Option<u64>,
    /// Where it writes which task it is running (see [`crate::progress`]).
    pub progress: Progress,
}

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    static TASK_PANIC: RefCell<Option<TaskFailure>> = const { RefCell::new(None) };
}

/// In a worker: panics inside a task are recorded (message and location) for the
/// task's result and not printed, as Python's pool does not print a task's exception;
/// any other panic goes to the hook that was there before.
fn install_task_hook() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_TASK.with(Cell::get) {
            let message = crate::result::panic_text(info.payload());
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            TASK_PANIC.with(|p| *p.borrow_mut() = Some(TaskFailure { message, location }));
        } else {
            prev(info)
        }
    }));
}

/// Runs one item, turning a panic into a [`TaskFailure`].
fn run_one<F: Target<A>, A>(f: F, a: A) -> Result<F::Output, TaskFailure> {
    IN_TASK.with(|t| t.set(true));
    let r = catch_unwind(AssertUnwindSafe(|| f.call(a)));
    IN_TASK.with(|t| t.set(false));
    r.map_err(|_| {
        TASK_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| TaskFailure {
                message: "the task panicked".into(),
                location: None,
            })
    })
}

/// The remote name of "run `f` on each item of a chunk": one call per task, so the
/// per-call checks of [`RemoteTarget`] are paid once per chunk, not once per item.
pub(crate) fn chunk_target<F, A>(f: F) -> Result<RemoteTarget, PoolError>
where
    F: Target<A>,
    A: Serialize + DeserializeOwned + 'static,
{
    // Captures only `f`, which is zero-sized: this closure is zero-sized too, so it
    // names code, as a RemoteTarget requires.
    let chunk = move |items: Vec<A>| -> ChunkResult<F::Output> {
        let mut values = Vec::with_capacity(items.len());
        let mut failures = Vec::new();
        for (i, a) in items.into_iter().enumerate() {
            match run_one(f, a) {
                Ok(v) => values.push(v),
                Err(e) => failures.push((i as u32, e)),
            }
        }
        ChunkResult { values, failures }
    };
    RemoteTarget::of::<_, (Vec<A>,)>(chunk).map_err(|e| PoolError::Start(e.to_string()))
}

/// The worker loop: run tasks in the order received, reply in batches, exit at end of
/// file (the pool closed its end) or after `maxtasks` tasks.
///
/// Replies to the tasks of one received batch are sent together (but never held past
/// `FLUSH_AFTER`); once the batch is done they go at once, before waiting for more.
pub(crate) fn worker_main(mut conn: Connection, cfg: WorkerConfig) {
    install_task_hook();
    conn.set_max_message_size(MAX_MESSAGE);
    if let Some((target, args)) = cfg.init {
        let (bytes, fds) = args.into_parts();
        if let Err(e) = target.call(&bytes, fds) {
            let (message, location) = match e {
                ProcessError::Panicked { message, location } => (message, location),
                other => (other.to_string(), None),
            };
            let _ = conn.send(&WorkerMsg::InitFailed { message, location });
            return;
        }
    }
    let progress = cfg.progress;
    progress.store(1);
    let mut queue: VecDeque<TaskIn> = VecDeque::new();
    let mut out: Vec<Reply> = Vec::new();
    let mut out_bytes = 0usize;
    let mut out_since = Instant::now();
    let mut done = 0u64;
    let flush = |conn: &mut Connection, out: &mut Vec<Reply>, bytes: &mut usize| -> bool {
        *bytes = 0;
        let msg = WorkerMsg::Replies(std::mem::take(out));
        conn.send(&msg).is_ok()
    };
    loop {
        if queue.is_empty() {
            if !out.is_empty() && !flush(&mut conn, &mut out, &mut out_bytes) {
                return;
            }
            match conn.recv::<Vec<TaskIn>>() {
                Ok(v) => queue.extend(v),
                Err(_) => return, // end of file: the pool is done with us
            }
            continue;
        }
        let Some(task) = queue.pop_front() else {
            continue;
        };
        let seq = task.seq;
        progress.store(started(seq));
        let (bytes, fds) = task.args.into_parts();
        let reply = match task.target.call(&bytes, fds) {
            Ok((b, f)) => Reply::Done {
                seq,
                result: Encoded::new(b, f),
            },
            Err(e) => Reply::Failed {
                seq,
                error: e.to_string(),
            },
        };
        progress.store(finished(seq));
        if out.is_empty() {
            out_since = Instant::now();
        }
        out_bytes += match &reply {
            Reply::Done { result, .. } => result.wire_len(),
            Reply::Failed { error, .. } => error.len() + 16,
        };
        out.push(reply);
        done += 1;
        if cfg.maxtasks.is_some_and(|m| done >= m) {
            flush(&mut conn, &mut out, &mut out_bytes);
            return;
        }
        let due = queue.is_empty()
            || out_bytes >= FLUSH_BYTES
            || out.len() >= FLUSH_COUNT
            || out_since.elapsed() >= FLUSH_AFTER;
        if due && !flush(&mut conn, &mut out, &mut out_bytes) {
            return;
        }
    }
}
