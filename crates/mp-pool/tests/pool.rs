//! Pool behaviour with real worker processes, under the start method chosen by
//! `MULTIPROC_START_METHOD` (the xtask runs this binary once per method; fork with
//! `--test-threads=1`). Every pool is dropped (terminated) by the end of its test.
use libtest_mimic::{Arguments, Failed, Trial};
use mp_pool::{Callbacks, Pool, PoolError};
use mp_process::{get_start_method, init, StartMethod};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

type R = Result<(), Failed>;

fn ensure(cond: bool, msg: impl std::fmt::Display) -> R {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

/// Generous: a result that should come "promptly" must come within this.
const PROMPT: Duration = Duration::from_secs(30);

// ---- tasks -------------------------------------------------------------------------

fn square(x: u64) -> u64 {
    x * x
}
fn add(a: u64, b: u64) -> u64 {
    a + b
}
fn pid_of(_: u64) -> i32 {
    std::process::id() as i32
}
fn panics_on_3(x: u64) -> u64 {
    if x == 3 {
        panic!("bad item {x}");
    }
    x + 1
}
fn die_by_sigkill(x: u64) -> u64 {
    if x == 3 {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // The signal may land a moment after the call returns (other threads).
        loop {
            std::thread::park();
        }
    }
    x
}
fn die_by_abort(x: u64) -> u64 {
    if x == 3 {
        std::process::abort();
    }
    x
}
fn die_by_segfault(x: u64) -> u64 {
    if x == 3 {
        // SAFETY: none: this deliberately crashes the worker with SIGSEGV.
        unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
    }
    x
}
/// Waits (at most a minute) for `go`; whether it came.
fn wait_for(go: mp_sync::Event) -> bool {
    go.wait(Some(Duration::from_secs(60)))
}
/// Says it started, then waits (at most a minute) for `go`.
fn started_then_wait_for(started: mp_sync::Event, go: mp_sync::Event) -> bool {
    started.set();
    go.wait(Some(Duration::from_secs(60)))
}
fn len_of(v: Vec<u8>) -> usize {
    v.len()
}

static INIT_COUNT: AtomicU64 = AtomicU64::new(0);
static INIT_ARG: AtomicU64 = AtomicU64::new(0);
fn initializer(arg: u64) {
    INIT_COUNT.fetch_add(1, Ordering::SeqCst);
    INIT_ARG.store(arg, Ordering::SeqCst);
}
fn init_state(_: u64) -> (i32, u64, u64) {
    (
        std::process::id() as i32,
        INIT_COUNT.load(Ordering::SeqCst),
        INIT_ARG.load(Ordering::SeqCst),
    )
}
fn bad_initializer() {
    panic!("initializer says no");
}

fn locked_add(lock: mp_sync::Lock, value: mp_shm::Value<i64>, n: i64) -> i64 {
    let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
    let cur = value.get().unwrap_or(i64::MIN);
    std::thread::sleep(Duration::from_micros(200));
    let _ = value.set(cur + n);
    n
}
fn send_on(mut conn: mp_pipe::Connection, x: u64) -> bool {
    conn.send(&(x * 10)).is_ok()
}

/// A value whose serialization always fails.
#[derive(Debug)]
struct Unserializable;
impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value refuses to travel"))
    }
}
impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|_| Unserializable)
    }
}
fn takes_unserializable(_: Unserializable) -> u8 {
    1
}

fn pool(n: usize) -> Result<Pool, PoolError> {
    Pool::builder().processes(n).build()
}

fn pid_exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// A join that only ends by killing workers takes longer than this: after `close()`,
/// each worker is given 30 s to exit before it is killed.
const JOIN_BOUND: Duration = Duration::from_secs(20);

/// Runs `f` on another thread and waits at most `bound` for it to return.
fn within<T: Send>(bound: Duration, what: &str, f: impl FnOnce() -> T + Send) -> Result<T, Failed> {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let h = s.spawn(move || {
            let _ = tx.send(f());
        });
        let got = rx
            .recv_timeout(bound)
            .map_err(|_| format!("{what} did not return within {bound:?}"))?;
        joined(h);
        Ok(got)
    })
}

/// Joins a thread that has done its work. A scope's implicit join returns once the
/// thread's closure ended, while the thread may still exist a moment longer: under
/// fork, the next test must find this process single-threaded.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) {
    let _ = h.join();
}

/// A pidfd of process `pid` (open it while the process is known to live).
fn pidfd(pid: i32) -> Result<std::os::fd::OwnedFd, Failed> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or("pid 0")?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Waits (at most `bound`) for the process of pidfd `fd` to exit.
fn exits_within(fd: &std::os::fd::OwnedFd, bound: Duration) -> Result<bool, Failed> {
    let ts = rustix::time::Timespec {
        tv_sec: bound.as_secs() as i64,
        tv_nsec: 0,
    };
    let mut p = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    Ok(rustix::event::poll(&mut p, Some(&ts))? > 0)
}

/// In a worker: a thread takes stdout's lock for good, so the worker's exit (which
/// flushes stdout) never finishes: a worker that does not leave when told to.
fn hold_stdout_forever() -> i32 {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _g = std::io::stdout().lock();
        let _ = tx.send(());
        loop {
            std::thread::park();
        }
    });
    let _ = rx.recv();
    std::process::id() as i32
}

/// A result whose `Deserialize` panics (in the parent only) on 13.
#[derive(Debug, Serialize)]
struct Touchy(u64);
impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == 13 && mp_process::parent_process().is_none() {
            panic!("touchy about {v}");
        }
        Ok(Touchy(v))
    }
}
fn touchy(x: u64) -> Touchy {
    Touchy(x)
}

fn is_touchy_error(r: &Result<impl std::fmt::Debug, PoolError>) -> bool {
    matches!(r, Err(PoolError::Decode(m)) if m.contains("touchy about 13"))
}

fn open_fds() -> Result<usize, Failed> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Set in a copy of this test binary started to run [`pool_of_200_at_1024_fds`] alone.
const FD_LIMIT_CHILD: &str = "MP_POOL_TEST_FD_LIMIT_CHILD";

/// Run alone, in a copy of this test binary started for the purpose (so no other test
/// runs under the lowered limit, or opens fds while they are counted): lowers
/// RLIMIT_NOFILE to 1024, then starts a pool of 200 workers, counts the fds it costs,
/// and runs a map on it.
fn pool_of_200_at_1024_fds() -> R {
    let n = 200;
    let limit = rustix::process::Rlimit {
        current: Some(1024),
        maximum: Some(1024),
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
    let before = open_fds()?;
    let p = Pool::new(n)?;
    let cost = open_fds()? - before;
    // 4 per worker, and a few for the pool (epoll, eventfd, progress words, and the
    // forkserver's, started with the first worker).
    ensure(
        cost <= 4 * n + 8,
        format!("{cost} fds for {n} workers ({before} open before)"),
    )?;
    let pids: HashSet<i32> = p.worker_pids().into_iter().collect();
    ensure(pids.len() == n, format!("{} workers of {n}", pids.len()))?;
    let want: Vec<u64> = (0..4 * n as u64).map(square).collect();
    ensure(
        p.map_with_chunksize(square, 0..4 * n as u64, 1)? == want,
        "a map",
    )
}

/// What each of this process's fds is: its `/proc/self/fd` link and what its fdinfo says
/// of the object (a socket's inode, a pidfd's inode and pid, an eventfd's id, what an epoll
/// watches), leaving out what changes with use (offset, flags, counters).
fn fd_identities() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let changing = ["pos:", "flags:", "mnt_id:", "eventfd-count:", "scm_fds:"];
        let mut id = link.to_string_lossy().into_owned();
        for line in info
            .lines()
            .filter(|l| !changing.iter().any(|c| l.starts_with(c)))
        {
            id.push(' ');
            id.push_str(&line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        out.push(id);
    }
    out
}

/// In a child started while a pool lives: says on `report` which of `pool_fds` it holds,
/// then waits (at most a minute) for `go`.
fn report_pool_fds(
    pool_fds: Vec<String>,
    mut report: mp_pipe::Connection,
    go: mp_sync::Event,
) -> bool {
    let held: Vec<String> = fd_identities()
        .into_iter()
        .filter(|id| pool_fds.contains(id))
        .collect();
    report.send(&held).is_ok() && go.wait(Some(Duration::from_secs(60)))
}

static LATE: AtomicU64 = AtomicU64::new(0);
fn late_value(_: u64) -> u64 {
    LATE.load(Ordering::SeqCst)
}

// ---- tests -------------------------------------------------------------------------

fn map_keeps_order_at_every_chunksize() -> R {
    let p = pool(2)?;
    let want: Vec<u64> = (0..1000u64).map(square).collect();
    ensure(p.map(square, 0..1000u64)? == want, "default chunksize")?;
    for cs in [1, 7, 999, 1000, 5000] {
        ensure(
            p.map_with_chunksize(square, 0..1000u64, cs)? == want,
            format!("chunksize {cs}"),
        )?;
    }
    let big: Vec<u64> = (0..200_000u64).collect();
    let got = p.map(|x: u64| x.wrapping_mul(3), big.clone())?;
    ensure(
        got == big.iter().map(|x| x * 3).collect::<Vec<_>>(),
        "200k items",
    )?;
    ensure(
        matches!(
            p.map_with_chunksize(square, 0..3u64, 0),
            Err(PoolError::ZeroChunksize)
        ),
        "chunksize 0 is an error",
    )
}

fn bad_configurations_are_errors() -> R {
    ensure(
        matches!(Pool::new(0), Err(PoolError::NoProcesses)),
        "0 processes",
    )?;
    ensure(
        matches!(
            Pool::builder().processes(1).maxtasksperchild(0).build(),
            Err(PoolError::ZeroMaxTasks)
        ),
        "maxtasksperchild 0",
    )?;
    let p = Pool::builder().build()?;
    ensure(
        p.processes() == mp_process::cpu_count(),
        "default is cpu_count",
    )?;
    ensure(
        p.start_method() == get_start_method(),
        "default start method",
    )?;
    ensure(p.worker_pids().len() == p.processes(), "one pid per worker")
}

fn empty_input_gives_empty_result_at_once() -> R {
    let p = pool(1)?;
    ensure(p.map(square, Vec::<u64>::new())?.is_empty(), "map")?;
    ensure(
        p.starmap(add, Vec::<(u64, u64)>::new())?.is_empty(),
        "starmap",
    )?;
    let mut r = p.map_async(square, Vec::<u64>::new())?;
    ensure(r.ready(), "map_async is ready at once")?;
    ensure(r.get()?.is_empty(), "map_async")?;
    ensure(p.imap(square, Vec::<u64>::new())?.next().is_none(), "imap")?;
    let mut un = p.imap_unordered(square, Vec::<u64>::new())?;
    ensure(un.next().is_none(), "imap_unordered")
}

fn apply_and_async_result() -> R {
    let p = pool(2)?;
    ensure(p.apply(add, (2, 3))? == 5, "apply")?;
    ensure(p.apply(|| 7u8, ())? == 7, "closure, no args")?;
    let mut r = p.apply_async(add, (40, 2))?;
    r.wait();
    ensure(r.ready(), "ready after wait")?;
    ensure(r.successful()?, "successful")?;
    ensure(r.get()? == 42, "get")?;
    ensure(
        matches!(r.get(), Err(PoolError::AlreadyTaken)),
        "second get",
    )?;
    ensure(r.successful()?, "still successful after get")?;
    let mut many: Vec<_> = (0..50u64)
        .map(|i| p.apply_async(square, (i,)))
        .collect::<Result<_, _>>()?;
    for (i, r) in many.iter_mut().enumerate() {
        ensure(r.get()? == (i as u64).pow(2), "many apply_async")?;
    }
    Ok(())
}

fn starmap_and_starmap_async() -> R {
    let p = pool(2)?;
    let args: Vec<(u64, u64)> = (0..100).map(|i| (i, 2 * i)).collect();
    let want: Vec<u64> = (0..100).map(|i| 3 * i).collect();
    ensure(p.starmap(add, args.clone())? == want, "starmap")?;
    ensure(
        p.starmap_async(add, args.clone())?.get()? == want,
        "starmap_async",
    )?;
    ensure(
        p.starmap_async_with(add, args, Some(3), Callbacks::new())?
            .get()?
            == want,
        "starmap_async chunksize 3",
    )?;
    ensure(
        p.map_async(square, 0..10u64)?.get()? == (0..10).map(square).collect::<Vec<_>>(),
        "map_async",
    )
}

fn imap_is_ordered_lazy_and_bounded() -> R {
    let p = pool(2)?;
    for cs in [1, 3, 50] {
        let got: Vec<u64> = p
            .imap_with_chunksize(square, 0..500u64, cs)?
            .collect::<Result<_, _>>()?;
        ensure(
            got == (0..500).map(square).collect::<Vec<_>>(),
            format!("imap chunksize {cs}"),
        )?;
        let mut un: Vec<u64> = p
            .imap_unordered_with_chunksize(square, 0..500u64, cs)?
            .collect::<Result<_, _>>()?;
        un.sort();
        ensure(
            un == (0..500).map(square).collect::<Vec<_>>(),
            format!("imap_unordered {cs}"),
        )?;
    }
    // An endless input: only a bounded prefix is ever read.
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let first: Vec<u64> = p
        .imap(square, endless)?
        .take(10)
        .collect::<Result<_, _>>()?;
    ensure(
        first == (0..10).map(square).collect::<Vec<_>>(),
        "first ten",
    )?;
    let n = pulled.load(Ordering::Relaxed);
    ensure(n < 10_000, format!("read {n} items of an endless input"))?;
    let first: Vec<u64> = p
        .imap_unordered(square, 0u64..)?
        .take(10)
        .collect::<Result<_, _>>()?;
    ensure(first.len() == 10, "unordered over an endless input")?;
    // The pool still serves after abandoned iterators.
    ensure(p.apply(add, (1, 1))? == 2, "after abandoned imaps")
}

fn imap_next_timeout() -> R {
    let p = pool(1)?;
    let go = mp_sync::Event::new()?;
    let mut it = p.imap(wait_for, vec![go.clone(), go.clone()])?;
    ensure(
        matches!(
            it.next_timeout(Duration::from_millis(50)),
            Some(Err(PoolError::Timeout))
        ),
        "times out first",
    )?;
    go.set();
    ensure(
        matches!(it.next_timeout(PROMPT), Some(Ok(true))),
        "then comes",
    )?;
    ensure(matches!(it.next(), Some(Ok(true))), "second")?;
    ensure(it.next().is_none(), "end")
}

fn panicking_task_fails_alone() -> R {
    let p = pool(2)?;
    let e = p
        .map_with_chunksize(panics_on_3, 0..20u64, 4)
        .err()
        .ok_or("map should fail")?;
    match &e {
        PoolError::Panicked { message, location } => {
            ensure(message == "bad item 3", format!("message {message:?}"))?;
            ensure(
                location.as_deref().is_some_and(|l| l.contains("pool.rs")),
                format!("location {location:?}"),
            )?;
        }
        other => return Err(format!("{other:?}").into()),
    }
    let items: Vec<_> = p.imap(panics_on_3, 0..8u64)?.collect();
    ensure(items.len() == 8, "every item yields")?;
    for (i, it) in items.iter().enumerate() {
        match (i, it) {
            (3, Err(PoolError::Panicked { message, .. })) if message == "bad item 3" => {}
            (i, Ok(v)) if *v == i as u64 + 1 => {}
            other => return Err(format!("item {other:?}").into()),
        }
    }
    let mut r = p.apply_async(panics_on_3, (3,))?;
    ensure(
        matches!(r.get(), Err(PoolError::Panicked { .. })),
        "apply_async panics",
    )?;
    ensure(!r.successful()?, "not successful")?;
    ensure(
        p.map(square, 0..5u64)? == [0, 1, 4, 9, 16],
        "the pool keeps serving",
    )
}

fn killed_worker<F: mp_process::Target<(u64,), Output = u64>>(f: F, signal: i32) -> R {
    let p = pool(2)?;
    let before: HashSet<i32> = p.worker_pids().into_iter().collect();
    let mut r = p.apply_async(f, (3,))?;
    let t = Instant::now();
    match r.get_timeout(PROMPT) {
        Err(PoolError::BrokenWorker {
            pid,
            name,
            exitcode,
        }) => {
            ensure(
                before.contains(&pid),
                format!("pid {pid} was one of the workers"),
            )?;
            ensure(name.contains("PoolWorker-"), format!("name {name}"))?;
            ensure(exitcode == Some(-signal), format!("exitcode {exitcode:?}"))?;
        }
        other => return Err(format!("expected BrokenWorker, got {other:?}").into()),
    }
    ensure(t.elapsed() < PROMPT, "promptly")?;
    // The pool keeps serving, with a replacement worker.
    ensure(
        p.map(square, 0..100u64)? == (0..100).map(square).collect::<Vec<_>>(),
        "map after",
    )?;
    let after = p.worker_pids();
    ensure(after.len() == 2, "two workers again")?;
    ensure(
        after.iter().any(|pid| !before.contains(pid)),
        "a new worker",
    )?;
    // A map with one fatal item: that item fails, the others are right or fail with it.
    let items: Vec<_> = p.imap(f, 0..12u64)?.collect();
    ensure(items.len() == 12, "every item yields")?;
    ensure(
        matches!(items[3], Err(PoolError::BrokenWorker { .. })),
        format!("item 3: {:?}", items[3]),
    )?;
    for (i, it) in items.iter().enumerate() {
        match it {
            Ok(v) => ensure(*v == i as u64, "value")?,
            Err(PoolError::BrokenWorker { .. }) => {}
            Err(e) => return Err(format!("item {i}: {e}").into()),
        }
    }
    ensure(
        matches!(p.map(f, 0..6u64), Err(PoolError::BrokenWorker { .. })),
        "map reports the broken worker",
    )?;
    ensure(p.apply(add, (1, 2))? == 3, "still serving")
}

fn worker_killed_by_sigkill() -> R {
    killed_worker(die_by_sigkill, 9)
}
fn worker_killed_by_abort() -> R {
    killed_worker(die_by_abort, 6)
}
fn worker_killed_by_segfault() -> R {
    killed_worker(die_by_segfault, 11)
}

fn tasks_queued_behind_a_dying_task_still_run() -> R {
    let p = pool(1)?;
    let mut dying = p.apply_async(die_by_sigkill, (3,))?;
    let mut rest: Vec<_> = (0..6u64)
        .map(|i| p.apply_async(add, (i, 100)))
        .collect::<Result<_, _>>()?;
    ensure(
        matches!(
            dying.get_timeout(PROMPT),
            Err(PoolError::BrokenWorker { .. })
        ),
        "the dying task fails",
    )?;
    for (i, r) in rest.iter_mut().enumerate() {
        ensure(
            r.get_timeout(PROMPT)? == i as u64 + 100,
            "queued tasks run on the replacement",
        )?;
    }
    Ok(())
}

fn maxtasksperchild_replaces_workers() -> R {
    let p = Pool::builder().processes(2).maxtasksperchild(2).build()?;
    let before = p.worker_pids();
    let pids = p.map_with_chunksize(pid_of, 0..20u64, 1)?;
    ensure(pids.len() == 20, "all results")?;
    let distinct: HashSet<i32> = pids.iter().copied().collect();
    ensure(
        distinct.len() >= 10,
        format!("{} distinct pids for 20 tasks", distinct.len()),
    )?;
    let counts = pids
        .iter()
        .fold(std::collections::HashMap::new(), |mut m, p| {
            *m.entry(*p).or_insert(0) += 1;
            m
        });
    ensure(
        counts.values().all(|&c| c <= 2),
        "no worker ran more than 2 tasks",
    )?;
    ensure(
        p.map(square, 0..50u64)? == (0..50).map(square).collect::<Vec<_>>(),
        "results right",
    )?;
    ensure(p.worker_pids() != before, "pids changed")?;
    drop(p); // under fork, a second pool needs a single-threaded parent
             // close + join with maxtasksperchild=1 does not hang.
    let p1 = Pool::builder().processes(2).maxtasksperchild(1).build()?;
    let mut r = p1.map_async_with(square, 0..10u64, Some(1), Callbacks::new())?;
    p1.close();
    p1.join()?;
    ensure(
        r.get()? == (0..10).map(square).collect::<Vec<_>>(),
        "maxtasks 1, closed",
    )
}

fn initializer_runs_once_per_worker() -> R {
    let p = Pool::builder()
        .processes(2)
        .initializer(initializer, (77u64,))
        .build()?;
    let states = p.map_with_chunksize(init_state, 0..40u64, 1)?;
    for (pid, count, arg) in &states {
        ensure(
            *count == 1,
            format!("worker {pid} ran its initializer {count} times"),
        )?;
        ensure(*arg == 77, "initargs arrived")?;
    }
    drop(p);
    // Replacement workers run it too.
    let p = Pool::builder()
        .processes(1)
        .maxtasksperchild(1)
        .initializer(initializer, (5u64,))
        .build()?;
    let states = p.map_with_chunksize(init_state, 0..4u64, 1)?;
    ensure(
        states.iter().all(|s| s.1 == 1 && s.2 == 5),
        format!("{states:?}"),
    )
}

fn failing_initializer_breaks_the_pool() -> R {
    let p = Pool::builder()
        .processes(2)
        .initializer(bad_initializer, ())
        .build()?;
    // The workers may fail before or after the submission (fork starts them fast), so
    // the error may come from apply_async itself or from get: either way it must be
    // the initializer's.
    match p
        .apply_async(square, (2,))
        .and_then(|mut r| r.get_timeout(PROMPT))
    {
        Err(PoolError::Initializer { message, .. }) => {
            ensure(message.contains("initializer says no"), message)?
        }
        other => return Err(format!("{other:?}").into()),
    }
    ensure(
        matches!(p.apply(square, (2,)), Err(PoolError::Initializer { .. })),
        "later submissions fail too",
    )
}

fn shared_lock_and_value_as_arguments() -> R {
    let p = pool(2)?;
    let lock = mp_sync::Lock::new()?;
    let value = mp_shm::Value::<i64>::new(0)?;
    let args: Vec<_> = (1..=40i64)
        .map(|i| (lock.clone(), value.clone(), i))
        .collect();
    let got = p
        .starmap_async_with(locked_add, args, Some(1), Callbacks::new())?
        .get()?;
    ensure(got == (1..=40).collect::<Vec<i64>>(), "results")?;
    ensure(
        value.get()? == (1..=40).sum::<i64>(),
        format!("value {:?}", value.get()),
    )
}

fn connection_as_argument() -> R {
    let p = pool(2)?;
    let (mut a, b) = mp_pipe::pipe()?;
    ensure(p.apply(send_on, (b, 4))?, "sent")?;
    ensure(a.poll(Some(PROMPT))?, "arrives")?;
    ensure(a.recv::<u64>()? == 40, "value")
}

fn close_join_terminate() -> R {
    let p = pool(2)?;
    ensure(
        matches!(p.join(), Err(PoolError::StillRunning)),
        "join while running",
    )?;
    let go = mp_sync::Event::new()?;
    let mut r = p.map_async_with(wait_for, vec![go.clone(); 6], Some(1), Callbacks::new())?;
    p.close();
    ensure(
        matches!(p.apply(add, (1, 1)), Err(PoolError::NotRunning)),
        "apply after close",
    )?;
    ensure(
        matches!(p.map(square, 0..3u64), Err(PoolError::NotRunning)),
        "map after close",
    )?;
    ensure(
        matches!(p.imap(square, 0..3u64), Err(PoolError::NotRunning)),
        "imap after close",
    )?;
    let pids = p.worker_pids();
    ensure(!r.ready(), "the tasks wait")?;
    go.set();
    p.join()?;
    ensure(r.ready(), "close + join lets the tasks finish")?;
    ensure(r.get()? == vec![true; 6], "their results")?;
    ensure(pids.iter().all(|&pid| !pid_exists(pid)), "workers exited")?;

    // terminate during a long map_async: prompt, and the result fails.
    let p = pool(2)?;
    let (started, never) = (mp_sync::Event::new()?, mp_sync::Event::new()?);
    let args = vec![(started.clone(), never.clone()); 4];
    let mut r = p.starmap_async_with(started_then_wait_for, args, Some(1), Callbacks::new())?;
    ensure(started.wait(Some(PROMPT)), "a task started")?;
    let pids = p.worker_pids();
    let t = Instant::now();
    p.terminate();
    ensure(
        t.elapsed() < Duration::from_secs(4),
        format!("terminate took {:?}", t.elapsed()),
    )?;
    ensure(
        matches!(r.get(), Err(PoolError::Terminated)),
        "the result fails",
    )?;
    ensure(pids.iter().all(|&pid| !pid_exists(pid)), "workers gone")?;
    ensure(
        matches!(p.apply(add, (1, 1)), Err(PoolError::NotRunning)),
        "apply after terminate",
    )?;
    p.join()?;

    // Drop terminates (Python's `with`).
    let p = pool(2)?;
    let pids = p.worker_pids();
    let mut r = p.apply_async(wait_for, (never,))?;
    drop(p);
    ensure(
        matches!(r.get(), Err(PoolError::Terminated)),
        "dropped pool fails its results",
    )?;
    ensure(
        pids.iter().all(|&pid| !pid_exists(pid)),
        "workers gone after drop",
    )
}

fn unserializable_arguments_are_an_error() -> R {
    let p = pool(1)?;
    match p.map(takes_unserializable, vec![Unserializable]) {
        Err(PoolError::Encode(m)) => ensure(m.contains("refuses to travel"), m)?,
        other => return Err(format!("{other:?}").into()),
    }
    ensure(
        matches!(
            p.apply_async(takes_unserializable, (Unserializable,)),
            Err(PoolError::Encode(_))
        ),
        "apply_async",
    )?;
    let mut it = p.imap(takes_unserializable, vec![Unserializable])?;
    ensure(matches!(it.next(), Some(Err(PoolError::Encode(_)))), "imap")?;
    ensure(it.next().is_none(), "imap ends")?;
    drop(it);
    ensure(p.apply(add, (1, 1))? == 2, "the pool stays usable")
}

#[derive(Debug)]
struct InputBroke;
impl std::fmt::Display for InputBroke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the input broke")
    }
}
impl std::error::Error for InputBroke {}

fn failing_input_iterator() -> R {
    let p = pool(2)?;
    let input = (0..10u64).map(|i| if i == 5 { Err(InputBroke) } else { Ok(i) });
    match p.try_map(square, input) {
        Err(PoolError::Input(e)) => ensure(e.to_string() == "the input broke", e)?,
        other => return Err(format!("{other:?}").into()),
    }
    ensure(
        p.try_map(square, (0..4u64).map(Ok::<u64, InputBroke>))? == [0, 1, 4, 9],
        "ok input",
    )?;
    for cs in [1, 2, 3] {
        let input = (0..10u64).map(|i| if i == 5 { Err(InputBroke) } else { Ok(i) });
        let items: Vec<_> = p.try_imap(square, input, cs)?.collect();
        ensure(items.len() == 6, format!("chunksize {cs}: {items:?}"))?;
        for (i, it) in items.iter().take(5).enumerate() {
            ensure(
                matches!(it, Ok(v) if *v == (i as u64).pow(2)),
                format!("item {i}"),
            )?;
        }
        ensure(
            matches!(items[5], Err(PoolError::Input(_))),
            "then the error",
        )?;
        let input = (0..10u64).map(|i| if i == 5 { Err(InputBroke) } else { Ok(i) });
        let items: Vec<_> = p.try_imap_unordered(square, input, cs)?.collect();
        ensure(
            items.len() == 6 && items.iter().filter(|i| i.is_ok()).count() == 5,
            "unordered",
        )?;
        ensure(
            matches!(items[5], Err(PoolError::Input(_))),
            "unordered: the error last",
        )?;
    }
    ensure(
        p.map(square, 0..3u64)? == [0, 1, 4],
        "the pool stays usable",
    )
}

fn get_timeout_and_readiness() -> R {
    let p = pool(1)?;
    let go = mp_sync::Event::new()?;
    let mut r = p.apply_async(wait_for, (go.clone(),))?;
    ensure(
        matches!(
            r.get_timeout(Duration::from_millis(50)),
            Err(PoolError::Timeout)
        ),
        "timeout",
    )?;
    ensure(!r.ready(), "not ready")?;
    ensure(
        matches!(r.successful(), Err(PoolError::NotReady)),
        "successful before ready",
    )?;
    ensure(!r.wait_timeout(Duration::from_millis(10)), "wait_timeout")?;
    go.set();
    ensure(r.wait_timeout(PROMPT), "ready later")?;
    ensure(r.get_timeout(Duration::ZERO)?, "value after the timeout")
}

fn callbacks_run_before_get_returns() -> R {
    let p = pool(2)?;
    let (tx, rx) = mpsc::channel();
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = flag.clone();
    let tx2 = tx.clone();
    let mut r = p.apply_async_with(
        add,
        (20, 22),
        Callbacks::new().on_success(move |v: &u64| {
            f2.store(true, Ordering::SeqCst);
            let _ = tx2.send(format!("ok {v}"));
        }),
    )?;
    ensure(r.get()? == 42, "value")?;
    ensure(
        flag.load(Ordering::SeqCst),
        "callback ran before get returned",
    )?;
    ensure(rx.recv_timeout(PROMPT)? == "ok 42", "callback value")?;
    let tx3 = tx.clone();
    let mut r = p.apply_async_with(
        panics_on_3,
        (3,),
        Callbacks::new()
            .on_success(|_: &u64| panic!("not this one"))
            .on_error(move |e| {
                let _ = tx3.send(format!("err {e}"));
            }),
    )?;
    ensure(r.get().is_err(), "fails")?;
    let m = rx.recv_timeout(PROMPT)?;
    ensure(m.starts_with("err") && m.contains("bad item 3"), m)?;
    let tx4 = tx.clone();
    let mut r = p.map_async_with(
        square,
        0..5u64,
        None,
        Callbacks::new().on_success(move |v: &Vec<u64>| {
            let _ = tx4.send(format!("map {v:?}"));
        }),
    )?;
    ensure(r.get()? == [0, 1, 4, 9, 16], "map value")?;
    ensure(
        rx.recv_timeout(PROMPT)? == "map [0, 1, 4, 9, 16]",
        "map callback gets the whole list",
    )?;
    // A panicking callback does not break the pool.
    let mut r = p.apply_async_with(
        add,
        (1, 1),
        Callbacks::new().on_success(|_: &u64| panic!("callback bug")),
    )?;
    ensure(r.get()? == 2, "value despite the callback's panic")?;
    ensure(p.apply(add, (2, 2))? == 4, "pool fine")
}

fn big_arguments_and_results() -> R {
    let p = pool(2)?;
    let items: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8; (3 << 20) + i]).collect();
    let lens = p.map_with_chunksize(len_of, items, 1)?;
    ensure(
        lens == (0..6).map(|i| (3 << 20) + i).collect::<Vec<_>>(),
        "lens",
    )?;
    let big = p.apply(|n: usize| vec![7u8; n], (5 << 20,))?;
    ensure(
        big.len() == 5 << 20 && big.iter().all(|&b| b == 7),
        "big result",
    )
}

fn fork_from_a_threaded_parent_needs_opt_in() -> R {
    let first = Pool::builder()
        .processes(1)
        .start_method(StartMethod::Fork)
        .build()?;
    // `first`'s handler thread makes this process multi-threaded.
    match Pool::builder()
        .processes(1)
        .start_method(StartMethod::Fork)
        .build()
    {
        Err(PoolError::Start(m)) => ensure(m.contains("refusing to fork"), m)?,
        other => return Err(format!("{other:?}").into()),
    }
    let second = Pool::builder()
        .processes(1)
        .start_method(StartMethod::Fork)
        .allow_fork_with_threads()
        .build()?;
    ensure(second.apply(add, (1, 2))? == 3, "opted in")?;
    ensure(first.apply(add, (2, 2))? == 4, "the first still serves")
}

fn close_then_join_returns_as_the_workers_exit() -> R {
    // Idle workers: Python's most common pattern, `close(); join()`.
    let p = pool(2)?;
    ensure(p.map(square, 0..10u64)?.len() == 10, "map")?;
    let pids = p.worker_pids();
    p.close();
    within(JOIN_BOUND, "join after close", || p.join())??;
    ensure(pids.iter().all(|&pid| !pid_exists(pid)), "workers exited")?;
    drop(p);
    // Busy workers: join returns once their tasks are done.
    let p = pool(2)?;
    let go = mp_sync::Event::new()?;
    let mut r = p.map_async_with(wait_for, vec![go.clone(); 4], Some(1), Callbacks::new())?;
    p.close();
    go.set();
    within(JOIN_BOUND, "join after close, tasks running", || p.join())??;
    ensure(
        r.get_timeout(Duration::ZERO)? == [true; 4],
        "the tasks' results",
    )
}

fn terminate_is_heard_while_join_waits() -> R {
    let p = pool(2)?;
    let stuck = p.apply(hold_stdout_forever, ())?;
    let other = p
        .worker_pids()
        .into_iter()
        .find(|&pid| pid != stuck)
        .ok_or("two workers")?;
    let other = pidfd(other)?;
    p.close();
    std::thread::scope(|s| -> R {
        let (tx, rx) = mpsc::channel();
        let pool = &p;
        let h = s.spawn(move || {
            let _ = tx.send(pool.join());
        });
        // The other worker leaves when told to: the join now waits for the stuck one.
        ensure(
            exits_within(&other, PROMPT)?,
            "the other worker exits after close",
        )?;
        p.terminate();
        let got = rx
            .recv_timeout(JOIN_BOUND)
            .map_err(|_| "join did not return after terminate")?;
        joined(h);
        ensure(got.is_ok(), format!("join: {got:?}"))
    })?;
    ensure(!pid_exists(stuck), "the stuck worker is gone")
}

fn terminate_wakes_a_reader_waiting_in_get() -> R {
    let p = pool(1)?;
    let (started, never) = (mp_sync::Event::new()?, mp_sync::Event::new()?);
    let mut r = p.apply_async(started_then_wait_for, (started.clone(), never))?;
    ensure(started.wait(Some(PROMPT)), "the task started")?;
    std::thread::scope(|s| -> R {
        let (tx, rx) = mpsc::channel();
        // This reader reads the worker's pipe itself while it waits (one task, no
        // callbacks), for a reply that never comes.
        let h = s.spawn(move || {
            let _ = tx.send(r.get());
        });
        within(JOIN_BOUND, "terminate", || p.terminate())?;
        let got = rx
            .recv_timeout(JOIN_BOUND)
            .map_err(|_| "get did not return after terminate")?;
        joined(h);
        ensure(
            matches!(got, Err(PoolError::Terminated)),
            format!("get: {got:?}"),
        )
    })
}

fn a_panicking_result_decoder_fails_its_task_only() -> R {
    // One worker, so every later task runs where the bad result came from.
    let p = pool(1)?;
    // A reader in get() reads the worker's pipe itself.
    let mut r = p.apply_async(touchy, (13,))?;
    ensure(is_touchy_error(&r.get_timeout(PROMPT)), "apply_async(13)")?;
    for i in 0..3u64 {
        let mut r = p.apply_async(touchy, (i,))?;
        ensure(
            matches!(r.get_timeout(PROMPT), Ok(Touchy(v)) if v == i),
            "later tasks on that worker",
        )?;
    }
    // With callbacks, the handler thread decodes.
    let (tx, rx) = mpsc::channel();
    let mut r = p.apply_async_with(
        touchy,
        (13,),
        Callbacks::new().on_error(move |e| {
            let _ = tx.send(e.to_string());
        }),
    )?;
    ensure(is_touchy_error(&r.get_timeout(PROMPT)), "with callbacks")?;
    ensure(
        rx.recv_timeout(PROMPT)?.contains("touchy about 13"),
        "the error callback",
    )?;
    ensure(
        is_touchy_error(&p.map_async(touchy, 0..20u64)?.get_timeout(PROMPT)),
        "map_async",
    )?;
    let items: Vec<_> = p.imap(touchy, 10..16u64)?.collect();
    ensure(items.len() == 6, "imap yields every item")?;
    for (i, it) in (10u64..).zip(&items) {
        match it {
            Ok(Touchy(v)) if *v == i && i != 13 => {}
            Err(PoolError::Decode(m)) if i == 13 && m.contains("touchy about 13") => {}
            other => return Err(format!("imap item {i}: {other:?}").into()),
        }
    }
    let mut r = p.map_async(square, 0..5u64)?;
    ensure(
        r.get_timeout(PROMPT)? == [0, 1, 4, 9, 16],
        "the pool keeps serving",
    )
}

fn a_pool_costs_few_fds_per_worker() -> R {
    // Python's Pool(200) runs at `ulimit -n 1024`; so does ours.
    let name = format!("{}::pool_of_200_at_1024_fds", get_start_method());
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", &name, "--test-threads=1"])
        .env(FD_LIMIT_CHILD, "1")
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure(
        out.status.success() && text.contains("1 passed"),
        format!("Pool(200) at 1024 fds ({}):\n{text}", out.status),
    )
}

/// A child started while a pool lives (forked, under fork) holds none of the pool's fds:
/// not the parent's ends of the workers' pipes, the handler's epoll and eventfd, the
/// workers' pidfds, nor (under fork) the template's; and the pool's close + join returns
/// while that child still runs.
fn a_child_started_while_a_pool_lives_holds_none_of_its_fds() -> R {
    let (mut report, theirs) = mp_pipe::pipe()?;
    let go = mp_sync::Event::new()?;
    let before = fd_identities();
    let p = pool(2)?;
    ensure(p.map(square, 0..8u64)?.len() == 8, "map")?;
    // What this process holds now and did not before, but for the progress words' shared
    // memory (mapped into every forked child anyway, like all of the parent's memory).
    let pool_fds: Vec<String> = fd_identities()
        .into_iter()
        .filter(|id| !before.contains(id) && !id.starts_with("/memfd:"))
        .collect();
    ensure(
        pool_fds.len() >= 2 * 3,
        format!("the pool's fds: {pool_fds:?}"),
    )?;
    let mut child = mp_process::Process::new(report_pool_fds, (pool_fds, theirs, go.clone()))
        .allow_fork_with_threads()
        .start()?;
    let held = if report.poll(Some(PROMPT))? {
        report.recv::<Vec<String>>().map_err(|e| e.to_string())
    } else {
        Err("the child did not report".to_string())
    };
    p.close();
    let joined = within(JOIN_BOUND, "join after close, while the child runs", || {
        p.join()
    });
    go.set();
    let child_done = child.join_timeout(PROMPT);
    let held = held?;
    ensure(
        held.is_empty(),
        format!("the child holds the pool's {held:?}"),
    )?;
    joined??;
    ensure(
        matches!(child_done, Ok(true)),
        format!("the child: {child_done:?}"),
    )
}

fn replacements_are_not_forks_of_the_threaded_parent() -> R {
    let p = pool(1)?;
    // Set after the pool started: no worker, first or replacement, sees it.
    LATE.store(7, Ordering::SeqCst);
    let res = (|| -> R {
        let mut r = p.apply_async(die_by_sigkill, (3,))?;
        ensure(
            matches!(r.get_timeout(PROMPT), Err(PoolError::BrokenWorker { .. })),
            "the worker died",
        )?;
        let seen = p.apply(late_value, (0,))?;
        ensure(
            seen == 0,
            format!("a replacement saw {seen}: it was forked from the running (threaded) parent"),
        )
    })();
    LATE.store(0, Ordering::SeqCst);
    res
}

fn main() {
    init();
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    if std::env::var_os(FD_LIMIT_CHILD).is_some() {
        let tests = vec![t("pool_of_200_at_1024_fds", pool_of_200_at_1024_fds)];
        libtest_mimic::run(&args, tests).exit();
    }
    let mut tests = vec![
        t(
            "map_keeps_order_at_every_chunksize",
            map_keeps_order_at_every_chunksize,
        ),
        t(
            "bad_configurations_are_errors",
            bad_configurations_are_errors,
        ),
        t(
            "empty_input_gives_empty_result_at_once",
            empty_input_gives_empty_result_at_once,
        ),
        t("apply_and_async_result", apply_and_async_result),
        t("starmap_and_starmap_async", starmap_and_starmap_async),
        t(
            "imap_is_ordered_lazy_and_bounded",
            imap_is_ordered_lazy_and_bounded,
        ),
        t("imap_next_timeout", imap_next_timeout),
        t("panicking_task_fails_alone", panicking_task_fails_alone),
        t("worker_killed_by_sigkill", worker_killed_by_sigkill),
        t("worker_killed_by_abort", worker_killed_by_abort),
        t("worker_killed_by_segfault", worker_killed_by_segfault),
        t(
            "tasks_queued_behind_a_dying_task_still_run",
            tasks_queued_behind_a_dying_task_still_run,
        ),
        t(
            "maxtasksperchild_replaces_workers",
            maxtasksperchild_replaces_workers,
        ),
        t(
            "initializer_runs_once_per_worker",
            initializer_runs_once_per_worker,
        ),
        t(
            "failing_initializer_breaks_the_pool",
            failing_initializer_breaks_the_pool,
        ),
        t(
            "shared_lock_and_value_as_arguments",
            shared_lock_and_value_as_arguments,
        ),
        t("connection_as_argument", connection_as_argument),
        t("close_join_terminate", close_join_terminate),
        t(
            "unserializable_arguments_are_an_error",
            unserializable_arguments_are_an_error,
        ),
        t("failing_input_iterator", failing_input_iterator),
        t("get_timeout_and_readiness", get_timeout_and_readiness),
        t(
            "callbacks_run_before_get_returns",
            callbacks_run_before_get_returns,
        ),
        t("big_arguments_and_results", big_arguments_and_results),
        t(
            "close_then_join_returns_as_the_workers_exit",
            close_then_join_returns_as_the_workers_exit,
        ),
        t(
            "terminate_is_heard_while_join_waits",
            terminate_is_heard_while_join_waits,
        ),
        t(
            "terminate_wakes_a_reader_waiting_in_get",
            terminate_wakes_a_reader_waiting_in_get,
        ),
        t(
            "a_panicking_result_decoder_fails_its_task_only",
            a_panicking_result_decoder_fails_its_task_only,
        ),
        t(
            "a_pool_costs_few_fds_per_worker",
            a_pool_costs_few_fds_per_worker,
        ),
        t(
            "a_child_started_while_a_pool_lives_holds_none_of_its_fds",
            a_child_started_while_a_pool_lives_holds_none_of_its_fds,
        ),
        t(
            "replacements_are_not_forks_of_the_threaded_parent",
            replacements_are_not_forks_of_the_threaded_parent,
        ),
    ];
    if method == StartMethod::Fork {
        tests.push(t(
            "fork_from_a_threaded_parent_needs_opt_in",
            fork_from_a_threaded_parent_needs_opt_in,
        ));
    }
    libtest_mimic::run(&args, tests).exit();
}
