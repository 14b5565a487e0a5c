//! The parent's side: the scheduler state shared by submitters and the handler thread,
//! worker start and replacement, and the handler loop that collects results and watches
//! for dead workers.
//!
//! Locking: one mutex guards [`State`]. Submitting threads and the handler both
//! dispatch under it, writing task batches straight to workers' sockets; only the
//! handler reads replies, and it never blocks on a worker while holding the lock except
//! to send one oversized batch to an idle worker (which is reading, so the send ends).
//! Every other send fits in the socket buffer by construction (see `budget`), so a send
//! never waits on a worker that is itself waiting for the handler to read its replies.
//! Sinks and callbacks run with no lock held.
use crate::progress::{self, Board};
use crate::result::{lock, ChunkOutcome, Sink};
use crate::wire::{Encoded, Reply, TaskOut, WorkerMsg};
use crate::PoolError;
use mp_core::spin::{may_spin, SPIN};
use mp_core::{Deadline, PrivateFd};
use mp_pipe::{Connection, Waitable};
use mp_process::{ForkTemplate, Process, RemoteTarget, StartMethod};
use rustix::event::epoll;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Each worker is kept busy with about this much queued work, so that it never waits
/// for the parent between short tasks ...
const QUEUED_WORK: Duration = Duration::from_millis(1);
/// ... within these bounds on the tasks handed to it and not yet reported.
const MIN_DEPTH: usize = 2;
const MAX_DEPTH: usize = 64;
/// Kernel bookkeeping per message, counted against the budget.
const MSG_OVERHEAD: usize = 1024;
/// Workers that die before they are ready, in a row, before the pool gives up.
const MAX_FAILED_STARTS: u32 = 3;

/// How the pool was configured.
pub(crate) struct Config {
    pub method: StartMethod,
    pub maxtasks: Option<u64>,
    pub init: Option<(RemoteTarget, Encoded)>,
}

/// One unit of work: a chunk of a job.
pub(crate) struct Task {
    pub sink: Arc<dyn Sink>,
    pub index: usize,
    pub job: u64,
    pub target: RemoteTarget,
    pub args: Encoded,
}

pub(crate) struct InFlight {
    seq: u64,
    task: Task,
    cost: usize,
    sent_at: Instant,
}

/// The scheduler's view of one worker.
pub(crate) struct WorkerSlot {
    pub key: u64,
    pub pid: i32,
    pub name: String,
    pub writer: Connection,
    pub in_flight: VecDeque<InFlight>,
    pub in_flight_bytes: usize,
    pub next_seq: u64,
    pub sent: u64,
    pub ewma_ns: u64,
    pub last_reply: Instant,
    pub budget: usize,
    pub progress: progress::Slot,
    pub reader: SharedReader,
    /// The worker's process, shared with the handler's [`WorkerHandle`]: its pidfd
    /// serves a reader in `get` too (see [`Shared::help`]).
    pub process: Arc<Process<()>>,
}

/// The read side of a worker's pipe. The handler reads it; so may a thread waiting in
/// `get` for the one task it has on that worker ([`Shared::help`]), which takes it out
/// of the handler's epoll set meanwhile.
pub(crate) struct Reader {
    pub conn: Connection,
    /// The worker is gone and forgotten: nobody puts it back in the epoll set.
    pub retired: bool,
}

pub(crate) type SharedReader = Arc<Mutex<Reader>>;

impl WorkerSlot {
    fn depth(&self) -> usize {
        if self.ewma_ns == 0 {
            return MIN_DEPTH;
        }
        let d = QUEUED_WORK.as_nanos() as u64 / self.ewma_ns.max(1);
        (d as usize).clamp(MIN_DEPTH, MAX_DEPTH)
    }
}

/// The handler thread's side of one worker.
pub(crate) struct WorkerHandle {
    pub key: u64,
    pub reader: SharedReader,
    pub process: Arc<Process<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Running,
    Closed,
    Terminated,
}

pub(crate) type Failures = Vec<(Arc<dyn Sink>, usize, PoolError)>;
type Deliveries = Vec<(Arc<dyn Sink>, usize, ChunkOutcome)>;

pub(crate) fn deliver_failures(f: Failures) {
    for (sink, index, e) in f {
        deliver_one(&*sink, index, Err(e));
    }
}

fn deliver(d: Deliveries) {
    for (sink, index, outcome) in d {
        deliver_one(&*sink, index, outcome);
    }
}

/// Hands one chunk to its job. A sink runs the caller's code (a result's `Deserialize`,
/// which `decode_chunk` already turns into the task's error; a result's `Drop`): a
/// panic that still escapes is caught here, so that neither the handler thread nor a
/// reader holding a worker's pipe unwinds out of the pool's bookkeeping.
fn deliver_one(sink: &dyn Sink, index: usize, outcome: ChunkOutcome) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| sink.deliver(index, outcome))) {
        tracing::error!(
            panic = %crate::result::panic_text(&*p),
            "pool: delivering a result panicked; the panic was caught"
        );
    }
}

/// Everything the scheduler knows, under one lock.
pub(crate) struct State {
    pub status: Status,
    queue: VecDeque<Task>,
    pub workers: Vec<WorkerSlot>,
    pub broken: Option<PoolError>,
    /// Lazy jobs (imap iterators) that may still submit after `close()`.
    pub open_lazy: usize,
    failed_starts: u32,
    /// A worker that had to be killed after `close()`: `join()` reports it.
    pub stuck: Option<PoolError>,
}

impl State {
    /// Fails every queued and in-flight task with `e`.
    fn fail_all(&mut self, e: &PoolError) -> Failures {
        let mut f: Failures = Vec::new();
        for t in self.queue.drain(..) {
            f.push((t.sink, t.index, e.clone()));
        }
        for w in &mut self.workers {
            w.in_flight_bytes = 0;
            for i in w.in_flight.drain(..) {
                f.push((i.task.sink, i.task.index, e.clone()));
            }
        }
        f
    }

    /// Drops the queued tasks of `job` (an abandoned imap).
    pub fn cancel_job(&mut self, job: u64) {
        self.queue.retain(|t| t.job != job);
    }

    /// Hands queued tasks to workers with room for them: one message per worker.
    fn dispatch(&mut self, maxtasks: Option<u64>) -> Failures {
        let mut failures = Vec::new();
        if self.status == Status::Terminated || self.broken.is_some() || self.queue.is_empty() {
            return failures;
        }
        let n = self.workers.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| self.workers[i].in_flight.len());
        let mut batches: Vec<Vec<Task>> = (0..n).map(|_| Vec::new()).collect();
        let mut bytes = vec![0usize; n];
        let mut fds = vec![0usize; n];
        let mut progress = true;
        while progress && !self.queue.is_empty() {
            progress = false;
            for &w in &order {
                let Some(next) = self.queue.front() else {
                    break;
                };
                let slot = &self.workers[w];
                let pending = slot.in_flight.len() + batches[w].len();
                if maxtasks.is_some_and(|m| slot.sent + batches[w].len() as u64 >= m) {
                    continue;
                }
                if pending >= slot.depth() {
                    continue;
                }
                let cost = next.args.wire_len();
                if pending > 0
                    && slot.in_flight_bytes + bytes[w] + cost + MSG_OVERHEAD > slot.budget
                {
                    continue;
                }
                let nfds = next.args.fds.len();
                if !batches[w].is_empty() && fds[w] + nfds > mp_pipe::MAX_FDS_PER_MESSAGE {
                    continue;
                }
                if let Some(t) = self.queue.pop_front() {
                    bytes[w] += cost;
                    fds[w] += nfds;
                    batches[w].push(t);
                    progress = true;
                }
            }
        }
        for (w, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                self.send_batch(w, batch, &mut failures);
            }
        }
        failures
    }

    fn send_batch(&mut self, w: usize, batch: Vec<Task>, failures: &mut Failures) {
        let slot = &mut self.workers[w];
        let seq0 = slot.next_seq;
        let res = {
            let out: Vec<TaskOut<'_>> = batch
                .iter()
                .zip(seq0..)
                .map(|(t, seq)| TaskOut {
                    seq,
                    target: &t.target,
                    args: &t.args,
                })
                .collect();
            slot.writer.send(&out[..])
        };
        match res {
            Err(mp_pipe::PipeError::Encode { reason, .. }) => {
                for t in batch {
                    failures.push((t.sink, t.index, PoolError::Encode(reason.clone())));
                }
                return;
            }
            Err(e) if !e.is_disconnect() => {
                // The worker may not have the whole batch: it cannot be trusted any more.
                // Killing it makes the handler requeue what it never started.
                tracing::warn!(worker = %slot.name, error = %e, "sending to a pool worker failed; killing it");
                if let Some(pid) = rustix::process::Pid::from_raw(slot.pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            // A dead worker: the handler sees it die and requeues what it never started.
            Err(_) | Ok(()) => {}
        }
        let now = Instant::now();
        let k = batch.len() as u64;
        for (i, (task, seq)) in batch.into_iter().zip(seq0..).enumerate() {
            task.sink.dispatched(task.index, slot.key);
            let cost = task.args.wire_len() + if i == 0 { MSG_OVERHEAD } else { 0 };
            slot.in_flight_bytes += cost;
            slot.in_flight.push_back(InFlight {
                seq,
                task,
                cost,
                sent_at: now,
            });
        }
        slot.next_seq += k;
        slot.sent += k;
    }

    /// Takes the replies of worker `key` off its in-flight list.
    fn on_replies(&mut self, key: u64, replies: Vec<Reply>) -> Deliveries {
        let mut out = Vec::with_capacity(replies.len());
        let Some(slot) = self.workers.iter_mut().find(|w| w.key == key) else {
            return out;
        };
        let now = Instant::now();
        let k = replies.len() as u64;
        if let Some(first) = slot.in_flight.front() {
            let since = slot.last_reply.max(first.sent_at);
            let per = (now.saturating_duration_since(since).as_nanos() as u64 / k.max(1)).max(1);
            slot.ewma_ns = if slot.ewma_ns == 0 {
                per
            } else {
                (slot.ewma_ns * 3 + per) / 4
            };
        }
        slot.last_reply = now;
        for r in replies {
            if slot.in_flight.front().map(|f| f.seq) != Some(r.seq()) {
                continue; // already failed (terminate) or unknown: nothing to deliver
            }
            let Some(inf) = slot.in_flight.pop_front() else {
                continue;
            };
            slot.in_flight_bytes = slot.in_flight_bytes.saturating_sub(inf.cost);
            let outcome = match r {
                Reply::Done { result, .. } => Ok(result.into_parts()),
                Reply::Failed { error, .. } => Err(PoolError::Worker(error)),
            };
            out.push((inf.task.sink, inf.task.index, outcome));
        }
        out
    }

    /// Forgets a dead worker: the task it was running (and any it finished but had not
    /// reported) fail with [`PoolError::BrokenWorker`]; those it never started go back
    /// to the front of the queue. Returns the failures and whether to replace it.
    fn on_death(&mut self, key: u64, exitcode: Option<i32>) -> (Failures, bool) {
        let mut f: Failures = Vec::new();
        let Some(pos) = self.workers.iter().position(|w| w.key == key) else {
            return (f, false);
        };
        let slot = self.workers.remove(pos);
        let p = slot.progress.load();
        let (started, _finished) = progress::decode(p);
        let broken = PoolError::BrokenWorker {
            pid: slot.pid,
            name: slot.name.clone(),
            exitcode,
        };
        let requeue_ok = self.status != Status::Terminated && self.broken.is_none();
        let mut back = Vec::new();
        for inf in slot.in_flight {
            if inf.seq > started && requeue_ok {
                back.push(inf.task);
            } else {
                f.push((inf.task.sink, inf.task.index, broken.clone()));
            }
        }
        for t in back.into_iter().rev() {
            self.queue.push_front(t);
        }
        if p == 0 {
            self.failed_starts += 1;
            if self.failed_starts >= MAX_FAILED_STARTS && self.broken.is_none() {
                let e = PoolError::Start(format!(
                    "{MAX_FAILED_STARTS} workers in a row died before they were ready (the last: {broken})"
                ));
                f.extend(self.fail_all(&e));
                self.broken = Some(e);
            }
        } else {
            self.failed_starts = 0;
        }
        let replace = self.broken.is_none()
            && match self.status {
                Status::Running => true,
                Status::Closed => !self.queue.is_empty() || self.open_lazy > 0,
                Status::Terminated => false,
            };
        (f, replace)
    }

    /// What the handler does next, decided under the lock: shut down (gracefully or
    /// not), or wait, expecting a reply or not.
    fn next_step(&mut self) -> Step {
        match self.status {
            Status::Terminated => Step::Shutdown { graceful: false },
            Status::Closed if self.drained() => Step::Shutdown { graceful: true },
            _ => Step::Wait {
                expecting: self.workers.iter().any(|w| !w.in_flight.is_empty()),
            },
        }
    }

    /// Whether a closed pool has nothing left to do.
    fn drained(&self) -> bool {
        self.queue.is_empty()
            && self.open_lazy == 0
            && self.workers.iter().all(|w| w.in_flight.is_empty())
    }

    pub fn worker_pids(&self) -> Vec<i32> {
        self.workers.iter().map(|w| w.pid).collect()
    }
}

/// The handler's next move (see [`State::next_step`]).
#[derive(Clone, Copy)]
enum Step {
    Shutdown { graceful: bool },
    Wait { expecting: bool },
}

/// What the pool's handle, its results and its handler thread share.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Private fds ([`mp_core::PrivateFd`]), as the workers' pipes and pidfds are: no
    /// child forked from this process while the pool lives holds one.
    wake: PrivateFd,
    /// What the handler waits on: `wake` (data 0), each worker's reader (`2 * key`) and
    /// pidfd (`2 * key + 1`).
    pub epoll: PrivateFd,
    /// Under fork, what every worker is forked from (see [`crate::start`]); dropped, and
    /// so killed and reaped, by the handler once the workers are gone.
    pub template: Mutex<Option<ForkTemplate>>,
    /// Bumped each time a reader in `get` takes a worker's reader: the handler then
    /// checks a reader is still readable before it reads.
    helps: AtomicU64,
    /// Results a reader in `get` received for jobs with callbacks, which run in the
    /// handler thread.
    deferred: Mutex<Deliveries>,
    pub cfg: Config,
    /// The workers' progress words.
    pub board: Arc<Board>,
    pub next_key: AtomicU64,
    next_job: AtomicU64,
}

impl Shared {
    pub fn new(
        cfg: Config,
        processes: usize,
        template: Option<ForkTemplate>,
    ) -> Result<Self, PoolError> {
        use rustix::event::{eventfd, EventfdFlags};
        let io = |e: rustix::io::Errno| PoolError::Io(e.to_string());
        let private = |fd| PrivateFd::new(fd).map_err(|e| PoolError::Io(e.to_string()));
        let wake =
            private(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(io)?)?;
        let ep = private(epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io)?)?;
        epoll::add(
            &ep,
            &wake,
            epoll::EventData::new_u64(0),
            epoll::EventFlags::IN,
        )
        .map_err(io)?;
        Ok(Shared {
            state: Mutex::new(State {
                status: Status::Running,
                queue: VecDeque::new(),
                workers: Vec::new(),
                broken: None,
                open_lazy: 0,
                failed_starts: 0,
                stuck: None,
            }),
            wake,
            epoll: ep,
            template: Mutex::new(template),
            helps: AtomicU64::new(0),
            deferred: Mutex::new(Vec::new()),
            cfg,
            board: Board::new(processes)?,
            next_key: AtomicU64::new(1),
            next_job: AtomicU64::new(1),
        })
    }

    pub fn job_id(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::Relaxed)
    }

    /// Wakes the handler thread (after a change of status).
    pub fn wake(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// In the handler thread: takes the wake-up, so the eventfd reads empty again.
    pub fn drain_wake(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut buf);
    }

    /// Queues tasks and dispatches what the workers have room for. `lazy`: the tasks
    /// belong to an imap registered before `close()`.
    pub fn submit(&self, tasks: Vec<Task>, lazy: bool) -> Result<(), PoolError> {
        let mut st = lock(&self.state);
        match st.status {
            Status::Running => {}
            Status::Closed if lazy => {}
            _ => return Err(PoolError::NotRunning),
        }
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        st.queue.extend(tasks);
        let f = st.dispatch(self.cfg.maxtasks);
        drop(st);
        deliver_failures(f);
        Ok(())
    }

    /// Adds a started worker to the scheduler and gives it work.
    pub fn add_worker(&self, slot: WorkerSlot) {
        let mut st = lock(&self.state);
        st.workers.push(slot);
        let f = st.dispatch(self.cfg.maxtasks);
        drop(st);
        deliver_failures(f);
    }

    /// Python's `terminate()`, the part that does not wait: fail what is left, tell the
    /// handler to kill the workers.
    pub fn terminate(&self) {
        let mut st = lock(&self.state);
        let f = if st.status == Status::Terminated {
            Vec::new()
        } else {
            st.status = Status::Terminated;
            st.fail_all(&PoolError::Terminated)
        };
        drop(st);
        deliver_failures(f);
        self.wake();
    }
}

/// What reading a worker gave.
enum Read {
    /// End of file: the worker is gone.
    Gone,
    /// A message was handled; with the handler's next step when it was decided under
    /// the same lock (replies), so the loop need not take the lock again.
    Handled(Option<Step>),
}

/// Reads one message from worker `key`'s pipe, in the handler (`in_handler`) or in a
/// reader waiting in `get` ([`Shared::help`]).
fn read_one(shared: &Shared, key: u64, conn: &mut Connection, in_handler: bool) -> Read {
    match conn.recv::<WorkerMsg>() {
        Ok(WorkerMsg::Replies(v)) => {
            let mut st = lock(&shared.state);
            let mut d = st.on_replies(key, v);
            let f = st.dispatch(shared.cfg.maxtasks);
            let step = st.next_step();
            let mut wake = false;
            if !in_handler {
                // Callbacks run in the handler thread: hand those results over, under
                // the state lock, so a handler that then sees the pool done (and
                // delivers what was handed over before it exits) sees them.
                let later: Deliveries;
                (later, d) = d.into_iter().partition(|(sink, _, _)| sink.needs_handler());
                wake = !later.is_empty() || matches!(step, Step::Shutdown { .. });
                if !later.is_empty() {
                    lock(&shared.deferred).extend(later);
                }
            }
            drop(st);
            if wake {
                shared.wake();
            }
            deliver_failures(f);
            deliver(d);
            Read::Handled(Some(step))
        }
        Ok(WorkerMsg::InitFailed { message, location }) => {
            let mut st = lock(&shared.state);
            let name = st
                .workers
                .iter()
                .find(|w| w.key == key)
                .map(|w| w.name.clone())
                .unwrap_or_default();
            let e = PoolError::Initializer {
                name,
                message,
                location,
            };
            let f = if st.broken.is_none() {
                let f = st.fail_all(&e);
                st.broken = Some(e);
                f
            } else {
                Vec::new()
            };
            drop(st);
            deliver_failures(f);
            if !in_handler {
                shared.wake();
            }
            Read::Handled(None)
        }
        Err(_) => Read::Gone,
    }
}

/// Reads worker `h` in the handler: one message, and any already buffered behind it
/// (epoll does not see those). Skipped while a reader in `get` holds the pipe; if one
/// took it since `helps` was read, it may have taken the message epoll announced.
fn read_worker(shared: &Shared, h: &WorkerHandle, helps: u64) -> Read {
    let Ok(mut r) = h.reader.try_lock() else {
        return Read::Handled(None);
    };
    // Read under the reader's lock, which a reader in `get` holds when it counts itself.
    let check = shared.helps.load(Ordering::Acquire) != helps;
    if check && !matches!(r.conn.poll(Some(Duration::ZERO)), Ok(true)) {
        return Read::Handled(None);
    }
    loop {
        match read_one(shared, h.key, &mut r.conn, true) {
            Read::Handled(s) if r.conn.ready_now() => {
                let _ = s;
            }
            other => return other,
        }
    }
}

/// A worker's pipe lent to a reader in `get`: handed back to the handler's epoll set
/// when dropped, however the reader leaves (a panic included), unless the worker was
/// retired meanwhile. The reader's lock is held until then.
struct Lent<'a> {
    shared: &'a Shared,
    key: u64,
    reader: MutexGuard<'a, Reader>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if self.reader.retired {
            return;
        }
        let back = match self.reader.conn.fd() {
            Ok(fd) => epoll::add(
                &self.shared.epoll,
                fd,
                epoll::EventData::new_u64(2 * self.key),
                epoll::EventFlags::IN,
            ),
            Err(_) => Ok(()), // closed: nothing left to watch
        };
        if let Err(e) = back {
            // Cannot happen with a live fd; fail loudly rather than hang silently.
            tracing::error!(error = %e, "pool: could not hand a worker's pipe back to the handler; terminating the pool");
            self.shared.terminate();
        }
    }
}

impl Shared {
    /// A thread waiting in `get` for the task it has on worker `key` reads that
    /// worker's replies itself, until `ready` (or the deadline, or the worker's death):
    /// the reply then takes one hop, worker to reader, instead of two through the
    /// handler thread. The pipe leaves the handler's epoll set meanwhile, so the
    /// handler is not woken for it. Returns at once if another thread reads that pipe.
    pub fn help(&self, key: u64, ready: &AtomicBool, deadline: &Deadline) {
        let (reader, process) = {
            let st = lock(&self.state);
            match st.workers.iter().find(|w| w.key == key) {
                Some(w) => (w.reader.clone(), w.process.clone()),
                None => return,
            }
        };
        let Ok(r) = reader.try_lock() else { return };
        if r.retired || ready.load(Ordering::Acquire) {
            return;
        }
        match r.conn.fd() {
            Ok(fd) if epoll::delete(&self.epoll, fd).is_ok() => {}
            _ => return,
        }
        let mut lent = Lent {
            shared: self,
            key,
            reader: r,
        };
        let conn = &mut lent.reader.conn;
        self.helps.fetch_add(1, Ordering::AcqRel);
        let spin_until = may_spin().then(|| Instant::now() + SPIN);
        let sentinel = process.sentinel();
        while !ready.load(Ordering::Acquire) {
            if !conn.ready_now() {
                let spinning = spin_until.is_some_and(|t| Instant::now() < t);
                let timeout = if spinning {
                    Some(Duration::ZERO)
                } else {
                    deadline.remaining()
                };
                let objs: [&dyn Waitable; 2] = [&*conn, &sentinel];
                match mp_pipe::wait(&objs, timeout) {
                    Ok(v) if v.is_empty() => {
                        if deadline.expired() {
                            break;
                        }
                        std::hint::spin_loop();
                        continue;
                    }
                    // Its death is the handler's business.
                    Ok(v) if v.contains(&1) => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if matches!(read_one(self, key, conn, false), Read::Gone) {
                break;
            }
        }
        // What is already buffered goes now: epoll would not announce it.
        while conn.ready_now() {
            if matches!(read_one(self, key, conn, false), Read::Gone) {
                break;
            }
        }
        // Dropping `lent` hands the pipe back to the handler (which also sees an end of
        // file met here).
    }
}

/// The handler thread: collects results, replaces dead workers, and on close or
/// terminate shuts the workers down.
pub(crate) fn run_handler(shared: Arc<Shared>, mut handles: Vec<WorkerHandle>, mut number: usize) {
    // The next step, when the last pass decided it under the lock (after replies):
    // then the loop does not take the lock again before it waits, so it does not
    // contend with a reader that its delivery woke and that submits at once.
    let mut known: Option<Step> = None;
    let mut events: Vec<epoll::Event> = Vec::with_capacity(16);
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        let step = match known.take() {
            Some(s) => s,
            None => lock(&shared.state).next_step(),
        };
        let expecting = match step {
            Step::Shutdown { graceful } => {
                // Results a reader in `get` handed over (see `read_one`).
                let later = std::mem::take(&mut *lock(&shared.deferred));
                deliver(later);
                crate::reap::stop_workers(&shared, handles, graceful);
                drop(lock(&shared.template).take());
                return;
            }
            Step::Wait { expecting } => expecting && may_spin(),
        };
        let helps = shared.helps.load(Ordering::Acquire);
        events.clear();
        // A reply due soon is polled for a little while before sleeping: waking a
        // sleeping thread on an idle vCPU costs more than a short task.
        let mut waited = Ok(0);
        if expecting {
            let start = Instant::now();
            while start.elapsed() < SPIN {
                waited = epoll::wait(
                    &shared.epoll,
                    rustix::buffer::spare_capacity(&mut events),
                    Some(&zero),
                );
                match waited {
                    Ok(0) => std::hint::spin_loop(),
                    _ => break,
                }
            }
        }
        if matches!(waited, Ok(0)) {
            waited = epoll::wait(
                &shared.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            );
        }
        match waited {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                // Cannot happen with a valid epoll fd; never spin on it.
                tracing::error!(error = %e, "pool handler: wait failed; terminating the pool");
                shared.terminate();
                continue;
            }
        }
        let mut dead: Vec<u64> = Vec::new();
        // Anything but replies (a status change, a death) has the lock taken afresh.
        let mut fresh = true;
        for ev in &events {
            let data = ev.data.u64();
            if data == 0 {
                shared.drain_wake();
                let later = std::mem::take(&mut *lock(&shared.deferred));
                deliver(later);
                fresh = false;
                continue;
            }
            let key = data / 2;
            if data % 2 == 1 {
                dead.push(key);
                continue;
            }
            let Some(h) = handles.iter().find(|h| h.key == key) else {
                continue;
            };
            match read_worker(&shared, h, helps) {
                Read::Gone => dead.push(key),
                Read::Handled(s) => {
                    known = s;
                    fresh &= s.is_some();
                }
            }
        }
        if !fresh || !dead.is_empty() {
            known = None;
        }
        dead.sort_unstable();
        dead.dedup();
        for key in dead {
            let Some(i) = handles.iter().position(|h| h.key == key) else {
                continue;
            };
            let h = handles.remove(i);
            let _ = epoll::delete(&shared.epoll, h.process.sentinel());
            {
                // A reader in `get` polls the pidfd too, and lets go of the pipe.
                let mut r = lock(&h.reader);
                r.retired = true;
                if let Ok(fd) = r.conn.fd() {
                    let _ = epoll::delete(&shared.epoll, fd);
                }
                // Everything it sent before dying counts.
                while matches!(r.conn.poll(Some(Duration::ZERO)), Ok(true)) {
                    if matches!(read_one(&shared, h.key, &mut r.conn, true), Read::Gone) {
                        break;
                    }
                }
            }
            let exitcode = crate::reap::reap(&h.process);
            let (f, replace) = lock(&shared.state).on_death(h.key, exitcode);
            deliver_failures(f);
            if replace {
                number += 1;
                // Under fork, forked from the pool's template, never from this process.
                match shared.start_worker(number) {
                    Ok((handle, slot)) => {
                        shared.add_worker(slot);
                        handles.push(handle);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not start a replacement pool worker");
                        let mut st = lock(&shared.state);
                        let f = if st.workers.is_empty() && st.broken.is_none() {
                            let f = st.fail_all(&e);
                            st.broken = Some(e);
                            f
                        } else {
                            Vec::new()
                        };
                        drop(st);
                        deliver_failures(f);
                    }
                }
            }
        }
    }
}
