//! A pool worker killed mid-task: that task fails with BrokenWorker (a worker killed
//! while it runs a stream of short tasks fails only the tasks it held, and no task runs
//! twice), the pool replaces it and keeps serving, and close() + join() ends it cleanly.
use crate::matrix::{Ctx, RunResult, LONG};
use multiproc::{get_start_method, Array, Event, Pool, PoolError, Value};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::Instant;

/// In a worker: how many times each short task ran, shared with the test.
static RUNS: OnceLock<Array<AtomicU32>> = OnceLock::new();

/// The counter of task `i`.
fn counter(runs: &Array<AtomicU32>, i: u64) -> Option<&AtomicU32> {
    let all: &[AtomicU32] = runs;
    all.get(usize::try_from(i).ok()?)
}

/// The pool's initializer: every worker, replacements too, gets the counters.
fn init_worker(runs: Array<AtomicU32>) {
    let _ = RUNS.set(runs);
}

/// A long task: says which worker runs it, then works until told to stop.
fn busy(started: Event, stop: Event, pid: Value<AtomicU64>) -> u64 {
    pid.store(u64::from(std::process::id()), SeqCst);
    started.set();
    let end = Instant::now() + 2 * LONG;
    let mut x = 0u64;
    while !stop.is_set() && Instant::now() < end {
        for i in 0..1000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

fn square(x: u64) -> u64 {
    x * x
}

/// A short task that keeps its worker busy for a moment (about 50 us).
fn slow_square(x: u64) -> u64 {
    if let Some(c) = RUNS.get().and_then(|r| counter(r, x)) {
        c.fetch_add(1, SeqCst);
    }
    let end = Instant::now() + std::time::Duration::from_micros(50);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
    x * x
}

fn broken_by_sigkill(e: &PoolError) -> bool {
    matches!(e, PoolError::BrokenWorker { .. }) && e.signal() == Some(9)
}

/// Kills the worker running a long task at a random point of it.
fn long_task(ctx: &mut Ctx, pool: &Pool) -> Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let (started, stop) = (
        Event::new().map_err(|e| s(&e))?,
        Event::new().map_err(|e| s(&e))?,
    );
    let pid = Value::new(AtomicU64::new(0)).map_err(|e| s(&e))?;
    let mut r = pool
        .apply_async(busy, (started.clone(), stop.clone(), pid.clone()))
        .map_err(|e| s(&e))?;
    if !started.wait(Some(LONG)) {
        stop.set();
        return Err("the task never started".into());
    }
    std::thread::sleep(ctx.rng.delay(3000));
    let victim = pid.load(SeqCst) as i32;
    let killed = crate::probe::kill_child(victim);
    let got = r.get_timeout(LONG);
    stop.set();
    killed?;
    match got {
        Err(e) if broken_by_sigkill(&e) => Ok(()),
        other => Err(format!(
            "the killed task: expected BrokenWorker (SIGKILL), got {other:?}"
        )),
    }
}

/// Kills one worker after a random number of a stream of short tasks came back (and a
/// short random delay): each task either succeeds or fails with BrokenWorker.
fn short_tasks(ctx: &mut Ctx, pool: &Pool, runs: &Array<AtomicU32>) -> Result<(), String> {
    let pids = pool.worker_pids();
    let victim = *pids
        .get(ctx.rng.range(0, pids.len() as u64) as usize)
        .ok_or("the pool has no workers")?;
    let n = SHORT_TASKS as u64;
    let kill_at = ctx.rng.range(0, n / 2);
    let mut it = pool
        .imap_with_chunksize(slow_square, 0..n, 1 + ctx.rng.range(0, 8) as usize)
        .map_err(|e| e.to_string())?;
    let mut broken = 0;
    for i in 0..n {
        if i == kill_at {
            std::thread::sleep(ctx.rng.delay(200));
            crate::probe::kill_child(victim)?;
        }
        let got = it.next_timeout(LONG);
        let ran = counter(runs, i).map(|c| c.load(SeqCst));
        match got {
            Some(Ok(v)) if v == i * i && ran == Some(1) => {}
            Some(Err(e)) if broken_by_sigkill(&e) && ran <= Some(1) => broken += 1,
            other => return Err(format!("task {i} (ran {ran:?} times): {other:?}")),
        }
    }
    ctx.note(if broken > 0 {
        "short tasks: some failed"
    } else {
        "short tasks: none in flight"
    });
    Ok(())
}

/// How many short tasks a stream has.
const SHORT_TASKS: usize = 1000;

pub fn scenario(ctx: &mut Ctx) -> RunResult {
    let runs = Array::<AtomicU32>::new(SHORT_TASKS).map_err(|e| e.to_string())?;
    let pool = Pool::builder()
        .processes(2)
        .start_method(get_start_method())
        .initializer(init_worker, (runs.clone(),))
        .build()
        .map_err(|e| e.to_string())?;
    if ctx.run % 2 == 0 {
        long_task(ctx, &pool)?;
        ctx.note("long task killed");
    } else {
        short_tasks(ctx, &pool, &runs)?;
    }
    // Keeps serving: the replacement and the other worker take new work.
    let squares = pool
        .map(square, 0..64u64)
        .map_err(|e| format!("map after the kill: {e}"))?;
    if squares != (0..64u64).map(|x| x * x).collect::<Vec<_>>() {
        return Err("map after the kill gave wrong results".into());
    }
    pool.close();
    pool.join().map_err(|e| format!("close + join: {e}"))?;
    Ok(())
}
