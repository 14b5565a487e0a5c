//! A lock holder killed at a random point of its loop (mostly inside the critical
//! section, now and then inside acquire or release, or while it waits): a waiter in
//! another process takes the lock over (OwnerDied when it was held) and repairs the
//! data it guards; the lock then works as new. Half the runs hold the lock through a
//! guard (`lock()`), the others Python's way (`acquire()` / `release()`).
use crate::matrix::{Ctx, RunResult, LONG};
use multiproc::{Event, Lock, Process, ProcessError, Value};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Instant;

/// Two counters the lock guards: `b` catches up with `a` before each release, so a
/// holder killed inside leaves `a == b + 1` (half-updated data) and one killed outside
/// leaves them equal.
type Pair = (Value<AtomicU64>, Value<AtomicU64>);

/// The critical section: `a` moves, some work, `b` catches up.
fn update((a, b): &Pair) {
    a.fetch_add(1, SeqCst);
    for _ in 0..20 {
        std::hint::black_box(rustix::process::getpid());
    }
    b.store(a.load(SeqCst), SeqCst);
}

/// Takes and releases the lock in a loop (through a guard, or `plain`ly); says when it
/// has done so `k` times.
fn holder(lock: Lock, pair: Pair, reached: Event, k: u64, plain: bool) -> Result<(), String> {
    let end = Instant::now() + 2 * LONG;
    let mut step = 0;
    while Instant::now() < end {
        if plain {
            match lock.acquire(true, None) {
                Ok(true) => {}
                Ok(false) => return Err("acquire without a timeout gave up".into()),
                Err(multiproc::SyncError::OwnerDied(held)) => held.keep(),
                Err(e) => return Err(e.to_string()),
            }
            update(&pair);
            lock.release().map_err(|e| e.to_string())?;
        } else {
            let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
            update(&pair);
        }
        step += 1;
        if step == k {
            reached.set();
        }
    }
    Err("the holder was never killed".into())
}

/// Waits for `go`, then for the lock; repairs the data if its holder died. Returns
/// whether it did, and the counters it found.
fn waiter(lock: Lock, (a, b): Pair, go: Event) -> Result<(bool, u64, u64), String> {
    if !go.wait(Some(LONG)) {
        return Err("no go".into());
    }
    match lock.lock_timeout(LONG) {
        Ok(Some(_g)) => Ok((false, a.load(SeqCst), b.load(SeqCst))),
        Ok(None) => Err(format!("lock not taken within {LONG:?}")),
        Err(died) => {
            let _g = died.into_inner();
            let (x, y) = (a.load(SeqCst), b.load(SeqCst));
            b.store(x, SeqCst);
            Ok((true, x, y))
        }
    }
}

fn consistent(died: bool, a: u64, b: u64) -> Result<(), String> {
    match (died, a.wrapping_sub(b)) {
        (_, 0) | (true, 1) => Ok(()),
        _ => Err(format!(
            "guarded data a={a} b={b} after a take-over (owner died: {died})"
        )),
    }
}

pub fn scenario(ctx: &mut Ctx) -> RunResult {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let lock = Lock::new().map_err(|e| s(&e))?;
    let pair: Pair = (
        Value::new(AtomicU64::new(0)).map_err(|e| s(&e))?,
        Value::new(AtomicU64::new(0)).map_err(|e| s(&e))?,
    );
    let (reached, go) = (
        Event::new().map_err(|e| s(&e))?,
        Event::new().map_err(|e| s(&e))?,
    );
    let k = ctx.rng.range(1, 300);
    let plain = ctx.run % 4 >= 2;
    let mut h = Process::new(
        holder,
        (lock.clone(), pair.clone(), reached.clone(), k, plain),
    )
    .start()
    .map_err(|e| s(&e))?;
    let mut w = match Process::new(waiter, (lock.clone(), pair.clone(), go.clone())).start() {
        Ok(w) => w,
        Err(e) => {
            let _ = h.kill();
            let _ = h.join_timeout(LONG);
            return Err(s(&e));
        }
    };
    let ready = reached.wait(Some(LONG));
    // The waiter starts waiting before the random delay (it is asleep on the lock, or
    // took it in passing, when the holder dies) or right at the kill (it finds the
    // holder dead or dying).
    let early = ctx.run % 2 == 0;
    if early {
        go.set();
    }
    std::thread::sleep(ctx.rng.delay(2000));
    if !early {
        go.set();
    }
    let _ = h.kill();
    let killed = h.join_timeout(LONG);
    let waited = w.join_timeout(LONG);
    if !ready {
        return Err("the holder never reached its step".into());
    }
    match killed {
        Err(ProcessError::Signaled(9)) => {}
        other => return Err(format!("holder: expected SIGKILL, got {other:?}")),
    }
    let (died, a, b) = waited
        .map_err(|e| format!("waiter: {e}"))?
        .map_err(|e| format!("waiter: {e}"))?;
    consistent(died, a, b)?;
    ctx.note(if died {
        "waiter saw OwnerDied"
    } else {
        "waiter took it plainly"
    });
    // The waiter may have taken the lock while the holder lived, and the holder then
    // died holding it again: this process takes it over then.
    match lock.lock_timeout(LONG) {
        Ok(Some(_g)) => consistent(false, pair.0.load(SeqCst), pair.1.load(SeqCst))?,
        Ok(None) => return Err("the lock stayed held".into()),
        Err(died) => {
            let _g = died.into_inner();
            let (x, y) = (pair.0.load(SeqCst), pair.1.load(SeqCst));
            consistent(true, x, y)?;
            pair.1.store(x, SeqCst);
            ctx.note("survivor saw OwnerDied");
        }
    }
    // Usable as new: free, taken at once, released, taken the Python way.
    if lock.locked() {
        return Err("still locked after the guard's drop".into());
    }
    match lock.try_lock() {
        Ok(Some(_)) => {}
        other => return Err(format!("try_lock after recovery: {other:?}")),
    }
    match lock.acquire(false, None) {
        Ok(true) => lock.release().map_err(|e| s(&e))?,
        other => return Err(format!("acquire after recovery: {other:?}")),
    }
    Ok(())
}
