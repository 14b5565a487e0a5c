//! Every primitive with real processes, under the start method chosen by
//! `MULTIPROC_START_METHOD` (the xtask runs this binary once per method), including
//! holders killed with SIGKILL and a stress test of thousands of barrier cycles.
use libtest_mimic::{Arguments, Failed, Trial};
use mp_process::{get_start_method, Process, ProcessError};
use mp_sync::*;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

type R = Result<(), Failed>;
const LONG: Duration = Duration::from_secs(60);
/// How long a process may take before a test gives up on it (never reached when the
/// code is right; only a bound so a bug fails instead of hanging).
const JOIN: Duration = Duration::from_secs(180);

fn ensure(cond: bool, msg: impl std::fmt::Display) -> R {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

fn join<T: Serialize + DeserializeOwned>(p: &mut Process<T>) -> Result<T, Failed> {
    match p.join_timeout(JOIN) {
        Err(ProcessError::Timeout(_)) => {
            let _ = p.kill();
            let _ = p.join();
            Err("child did not finish in time".into())
        }
        r => r.map_err(|e| format!("child failed: {e}").into()),
    }
}

/// The result of a child that returns `Result<T, String>`.
fn join_ok<T: Serialize + DeserializeOwned>(
    p: &mut Process<Result<T, String>>,
) -> Result<T, Failed> {
    join(p)?.map_err(|e| format!("in the child: {e}").into())
}

fn start<F, A, T>(target: F, args: A) -> Result<Process<T>, Failed>
where
    F: mp_process::Target<A, Output = T>,
    A: Serialize + DeserializeOwned + 'static,
    T: Serialize + DeserializeOwned + 'static,
{
    Process::new(target, args)
        .start()
        .map_err(|e| format!("start: {e}").into())
}

fn die_now() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

// ---- child targets -------------------------------------------------------------------

fn hold_lock(lock: Lock, ready: Event) {
    let _guard = lock.lock();
    ready.set();
    sleep_forever()
}

fn hold_rlock_twice(lock: RLock, ready: Event) {
    let _a = lock.lock();
    let _b = lock.lock();
    ready.set();
    sleep_forever()
}

fn hold_lock_until(lock: Lock, ready: Event, go: Event) -> Result<(), String> {
    let g = lock.lock().map_err(|e| e.to_string())?;
    ready.set();
    if !go.wait(Some(LONG)) {
        return Err("never told to go".into());
    }
    drop(g);
    Ok(())
}

/// Releases a lock the parent holds, takes it, and exits holding it.
fn release_then_take(lock: Lock) -> Result<String, String> {
    lock.release()
        .map_err(|e| format!("release of a held lock: {e}"))?;
    let again = match lock.release() {
        Err(SyncError::NotHeld) => "NotHeld".to_string(),
        other => format!("{other:?}"),
    };
    if !lock.acquire(true, Some(LONG)).map_err(|e| e.to_string())? {
        return Err("could not take the free lock".into());
    }
    Ok(again)
}

/// Tries to release a lock whose guard the parent holds, and to wait on a condition
/// over it: (release, wait, still busy).
fn foreign_release_of_a_guarded_lock(lock: Lock, cond: Condition) -> (String, String, bool) {
    let release = format!("{:?}", lock.release());
    let wait = format!("{:?}", cond.wait(Some(Duration::ZERO)));
    let busy = matches!(lock.try_lock(), Ok(None));
    (release, wait, busy)
}

fn foreign_rlock_release(lock: RLock) -> (bool, bool, bool) {
    let refused = matches!(lock.release(), Err(SyncError::NotOwner));
    let took = matches!(lock.acquire(false, None), Ok(true));
    (refused, took, lock.locked())
}

fn notify_then_die(cond: Condition) -> Result<(), String> {
    let g = cond.lock().map_err(|e| e.to_string())?;
    g.notify(1).map_err(|e| e.to_string())?;
    die_now()
}

fn cond_waiter(cond: Condition, timeout_ms: u64, done: Semaphore) -> Result<bool, String> {
    let mut g = cond.lock().map_err(|e| e.to_string())?;
    let notified = g
        .wait(Some(Duration::from_millis(timeout_ms)))
        .map_err(|e| e.to_string())?;
    drop(g);
    done.release().map_err(|e| e.to_string())?;
    Ok(notified)
}

static ACTIONS: OnceLock<Semaphore> = OnceLock::new();
fn count_action() {
    if let Some(s) = ACTIONS.get() {
        let _ = s.release();
    }
}

fn barrier_party(barrier: Barrier, actions: Semaphore, cycles: u32) -> Result<Vec<u8>, String> {
    let _ = ACTIONS.set(actions.clone());
    let barrier = barrier.with_action(count_action);
    let mut seen = Vec::with_capacity(cycles as usize);
    for cycle in 0..cycles {
        let i = barrier.wait().map_err(|e| format!("cycle {cycle}: {e}"))?;
        // The action of this cycle ran before anyone was released.
        if actions.get_value() <= cycle {
            return Err(format!("cycle {cycle}: released before the action ran"));
        }
        seen.push(u8::try_from(i).map_err(|e| e.to_string())?);
    }
    Ok(seen)
}

fn barrier_expect_broken(barrier: Barrier, timeout_ms: u64) -> (String, u64) {
    let t = Instant::now();
    let r = barrier.wait_timeout(Duration::from_millis(timeout_ms));
    (format!("{r:?}"), t.elapsed().as_millis() as u64)
}

fn barrier_wait(barrier: Barrier) -> Result<usize, String> {
    barrier.wait_timeout(LONG).map_err(|e| e.to_string())
}

fn pong(ping: Event, pong: Event, rounds: u32) -> Result<u32, String> {
    for i in 0..rounds {
        if !ping.wait(Some(LONG)) {
            return Err(format!("round {i}: ping lost"));
        }
        ping.clear();
        pong.set();
    }
    Ok(rounds)
}

fn release_n(sem: Semaphore, n: u32) -> Result<(), String> {
    for _ in 0..n {
        sem.release().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn timed_acquire(sem: Semaphore, timeout_ms: u64) -> (bool, u64) {
    let t = Instant::now();
    let got = sem.acquire(true, Some(Duration::from_millis(timeout_ms)));
    (got, t.elapsed().as_millis() as u64)
}

fn bounded_overflow(sem: BoundedSemaphore) -> (String, u32) {
    (format!("{:?}", sem.release()), sem.get_value())
}

/// A counter in shared memory, bumped with a plain load and store (not an atomic
/// increment): only mutual exclusion keeps updates from being lost.
fn counter(region: &mp_core::SharedRegion) -> &std::sync::atomic::AtomicU64 {
    // SAFETY: the region is page-aligned, at least 8 bytes long and lives as long as the
    // borrow; its memory is only accessed through this atomic, in every process.
    unsafe { &*region.as_ptr().cast::<std::sync::atomic::AtomicU64>() }
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    use std::sync::atomic::Ordering::Relaxed;
    let v = c.load(Relaxed);
    std::hint::spin_loop();
    c.store(v + 1, Relaxed);
}

fn bump_under_lock(lock: Lock, region: mp_core::SharedRegion, n: u32) -> Result<(), String> {
    let c = counter(&region);
    for _ in 0..n {
        let _g = lock
            .lock_timeout(LONG)
            .map_err(|e| e.to_string())?
            .ok_or("lock timed out")?;
        bump(c);
    }
    Ok(())
}

fn bump_under_rlock(lock: RLock, region: mp_core::SharedRegion, n: u32) -> Result<(), String> {
    let c = counter(&region);
    for _ in 0..n {
        if !lock.acquire(true, Some(LONG)).map_err(|e| e.to_string())? {
            return Err("rlock timed out".into());
        }
        let _inner = lock.lock().map_err(|e| e.to_string())?;
        bump(c);
        drop(_inner);
        lock.release().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn produce(sem: Semaphore, n: u32) -> Result<(), String> {
    release_n(sem, n)
}

fn consume(sem: Semaphore, n: u32) -> Result<(), String> {
    for i in 0..n {
        if !sem.acquire(true, Some(LONG)) {
            return Err(format!("unit {i} never came"));
        }
    }
    Ok(())
}

/// Waits for the lock; reports whether the previous holder had died.
fn contend(lock: Lock, started: Semaphore) -> Result<bool, String> {
    started.release().map_err(|e| e.to_string())?;
    match lock.lock_timeout(LONG) {
        Ok(Some(_)) => Ok(false),
        Ok(None) => Err("timed out".into()),
        Err(_) => Ok(true),
    }
}

fn wait_for_lock(lock: Lock) -> bool {
    matches!(lock.acquire(true, Some(LONG)), Ok(true))
}

// ---- tests ---------------------------------------------------------------------------

fn lock_of_a_killed_child_is_recovered() -> R {
    let (lock, ready) = (Lock::new()?, Event::new()?);
    let mut p = start(hold_lock, (lock.clone(), ready.clone()))?;
    ensure(ready.wait(Some(LONG)), "child took the lock")?;
    ensure(
        lock.owner_pid() == Some(p.pid() as u32),
        "owner is the child",
    )?;
    // A live holder is never taken over.
    ensure(
        matches!(lock.lock_timeout(Duration::from_millis(150)), Ok(None)),
        "busy while the child lives",
    )?;
    ensure(
        matches!(lock.acquire(false, None), Ok(false)),
        "try fails while the child lives",
    )?;
    p.kill()?;
    // Not joined yet: the child is a zombie.
    let t = Instant::now();
    let guard = match lock.lock_timeout(LONG) {
        Err(e) => e.into_inner().ok_or("OwnerDied holds a guard")?,
        Ok(_) => return Err("expected OwnerDied".into()),
    };
    ensure(t.elapsed() < LONG, "recovered in bounded time")?;
    ensure(lock.owner_pid() == Some(std::process::id()), "we hold it")?;
    drop(guard);
    ensure(!lock.locked(), "released")?;
    ensure(
        lock.try_lock().map(|g| g.is_some()).unwrap_or(false),
        "usable again, not poisoned",
    )?;
    ensure(
        matches!(p.join(), Err(ProcessError::Signaled(9))),
        "child died of SIGKILL",
    )
}

fn rlock_of_a_killed_child_is_recovered() -> R {
    let (lock, ready) = (RLock::new()?, Event::new()?);
    let mut p = start(hold_rlock_twice, (lock.clone(), ready.clone()))?;
    ensure(ready.wait(Some(LONG)), "child took the lock")?;
    ensure(
        matches!(lock.release(), Err(SyncError::NotOwner)),
        "we are not the owner",
    )?;
    ensure(lock.locked() && !lock.is_owned(), "still the child's")?;
    p.kill()?;
    ensure(
        matches!(p.join(), Err(ProcessError::Signaled(9))),
        "child died of SIGKILL",
    )?;
    // Reaped: /proc/<pid> is gone.
    match lock.acquire(true, Some(LONG)) {
        Err(SyncError::OwnerDied(held)) => {
            ensure(lock.is_owned() && lock.count() == 1, "we hold one level")?;
            held.keep();
        }
        other => return Err(format!("expected OwnerDied, got {other:?}").into()),
    }
    lock.release()?;
    ensure(!lock.locked(), "released")?;
    // And the error releases the lock if dropped.
    let ready = Event::new()?;
    let mut p = start(hold_rlock_twice, (lock.clone(), ready.clone()))?;
    ensure(ready.wait(Some(LONG)), "child took the lock")?;
    p.kill()?;
    let err = lock.acquire(true, Some(LONG));
    ensure(
        matches!(err, Err(SyncError::OwnerDied(_))),
        "OwnerDied again",
    )?;
    drop(err);
    ensure(!lock.locked(), "dropping the error released it")?;
    let _ = p.join();
    Ok(())
}

fn condition_lock_of_a_killed_child_is_recovered() -> R {
    for over_rlock in [true, false] {
        let cond = if over_rlock {
            Condition::new()?
        } else {
            Condition::with_lock(Lock::new()?)?
        };
        let mut g = cond.lock().map_err(|_| "fresh lock")?;
        let mut p = start(notify_then_die, (cond.clone(),))?;
        // The child takes the lock while we wait, notifies us and dies holding it.
        match g.wait(Some(LONG)) {
            Err(SyncError::OwnerDied(_)) => {}
            other => return Err(format!("expected OwnerDied from wait, got {other:?}").into()),
        }
        g.notify_all()?; // we hold the lock again
        drop(g);
        ensure(
            matches!(cond.acquire(false, None), Ok(true)),
            "free after our guard",
        )?;
        cond.release()?;
        ensure(
            matches!(p.join(), Err(ProcessError::Signaled(9))),
            "child died of SIGKILL",
        )?;
    }
    Ok(())
}

fn lock_any_process_may_release() -> R {
    let lock = Lock::new()?;
    ensure(lock.acquire(true, None)?, "fresh lock")?;
    let mut p = start(release_then_take, (lock.clone(),))?;
    let again = join_ok(&mut p)?;
    ensure(
        again == "NotHeld",
        format!("second release in the child: {again}"),
    )?;
    ensure(lock.locked(), "the child exited holding it")?;
    ensure(
        lock.lock_timeout(LONG).is_err(),
        "the child exited holding it: OwnerDied",
    )?;
    ensure(!lock.locked(), "the guard inside the error released it")
}

fn a_guard_held_lock_is_released_only_by_its_guard() -> R {
    let lock = Lock::new()?;
    let cond = Condition::with_lock(lock.clone())?;
    let guard = lock.lock().map_err(|_| "fresh lock")?;
    let mut p = start(foreign_release_of_a_guarded_lock, (lock.clone(), cond))?;
    let (release, wait, busy) = join(&mut p)?;
    ensure(
        release == "Err(GuardHeld)",
        format!("release in the child: {release}"),
    )?;
    ensure(
        wait == "Err(NotOwner)",
        format!("condition wait in the child: {wait}"),
    )?;
    ensure(busy, "the child could take the lock our guard holds")?;
    ensure(
        lock.owner_pid() == Some(std::process::id()),
        "still held by us",
    )?;
    drop(guard);
    ensure(!lock.locked(), "released by its guard")
}

fn a_guard_held_lock_of_a_killed_child_is_recovered() -> R {
    let lock = Lock::new()?;
    let kill_holder = || -> R {
        let ready = Event::new()?;
        let mut p = start(hold_lock, (lock.clone(), ready.clone()))?;
        ensure(ready.wait(Some(LONG)), "child took the lock")?;
        p.kill()?;
        ensure(
            matches!(p.join(), Err(ProcessError::Signaled(9))),
            "child died of SIGKILL",
        )
    };
    // Taken over with acquire: released with release.
    kill_holder()?;
    ensure(
        matches!(lock.release(), Err(SyncError::GuardHeld)),
        "a dead guard's lock is recovered by acquiring it, not released from outside",
    )?;
    match lock.acquire(true, Some(LONG)) {
        Err(SyncError::OwnerDied(held)) => held.keep(),
        other => return Err(format!("expected OwnerDied, got {other:?}").into()),
    }
    lock.release()?;
    ensure(!lock.locked(), "released")?;
    // Taken over with a guard: only that guard releases it.
    kill_holder()?;
    let guard = match lock.lock() {
        Err(e) => e.into_inner(),
        Ok(_) => return Err("expected OwnerDied".into()),
    };
    ensure(
        matches!(lock.release(), Err(SyncError::GuardHeld)),
        "the recovered guard's lock refused a release",
    )?;
    drop(guard);
    ensure(!lock.locked(), "released by the guard")?;
    // A recovered guard turned into an error and kept: a plain hold, released as one.
    kill_holder()?;
    let err: SyncError = match lock.lock() {
        Err(e) => e.into(),
        Ok(_) => return Err("expected OwnerDied".into()),
    };
    match err {
        SyncError::OwnerDied(held) => held.keep(),
        other => return Err(format!("expected OwnerDied, got {other:?}").into()),
    }
    lock.release()?;
    ensure(!lock.locked(), "released after keep")
}

fn lock_timeouts_across_processes() -> R {
    let (lock, ready, go) = (Lock::new()?, Event::new()?, Event::new()?);
    let mut p = start(hold_lock_until, (lock.clone(), ready.clone(), go.clone()))?;
    ensure(ready.wait(Some(LONG)), "child took the lock")?;
    let t = Instant::now();
    ensure(
        matches!(
            lock.acquire(true, Some(Duration::from_millis(200))),
            Ok(false)
        ),
        "timed out",
    )?;
    ensure(
        t.elapsed() >= Duration::from_millis(200),
        "waited the whole timeout",
    )?;
    go.set();
    ensure(
        matches!(lock.lock_timeout(LONG), Ok(Some(_))),
        "taken once the child let go",
    )?;
    join_ok(&mut p)
}

fn rlock_refuses_a_foreign_release() -> R {
    let lock = RLock::new()?;
    let _a = lock.lock().map_err(|_| "fresh lock")?;
    let _b = lock.lock().map_err(|_| "fresh lock")?;
    let mut p = start(foreign_rlock_release, (lock.clone(),))?;
    let (refused, took, locked) = join(&mut p)?;
    ensure(
        refused && !took && locked,
        format!("child saw refused={refused} took={took} locked={locked}"),
    )?;
    ensure(lock.is_owned() && lock.count() == 2, "unchanged")
}

fn condition_notify_counts_live_waiters_across_processes() -> R {
    let cond = Condition::new()?;
    let done = Semaphore::new(0)?;
    // A waiter that times out is not counted by the notify that follows.
    let mut timed = start(cond_waiter, (cond.clone(), 50, done.clone()))?;
    ensure(!join_ok(&mut timed)?, "the timed waiter timed out")?;
    ensure(done.acquire(true, Some(LONG)), "it finished")?;
    let mut ps = Vec::new();
    for _ in 0..3 {
        ps.push(start(cond_waiter, (cond.clone(), 120_000, done.clone()))?);
    }
    let end = Instant::now() + LONG;
    loop {
        let g = cond.lock().map_err(|_| "lock")?;
        if g.waiters() == 3 {
            g.notify(1)?;
            break;
        }
        drop(g);
        ensure(Instant::now() < end, "waiters never arrived")?;
        std::thread::sleep(Duration::from_millis(5));
    }
    ensure(done.acquire(true, Some(LONG)), "one waiter woke")?;
    ensure(
        !done.acquire(true, Some(Duration::from_millis(300))),
        "and only one",
    )?;
    cond.lock().map_err(|_| "lock")?.notify_all()?;
    for p in &mut ps {
        ensure(join_ok(p)?, "every waiter was notified")?;
    }
    ensure(done.get_value() == 2, "the other two finished")
}

fn barrier_of_five_processes_for_a_thousand_cycles() -> R {
    const PARTIES: usize = 5;
    const CYCLES: u32 = 1000;
    let actions = Semaphore::new(0)?;
    let barrier = Barrier::new(PARTIES, Some(count_action), Some(LONG))?;
    let mut ps = Vec::new();
    for _ in 0..PARTIES {
        ps.push(start(
            barrier_party,
            (barrier.clone(), actions.clone(), CYCLES),
        )?);
    }
    let mut all = Vec::new();
    for p in &mut ps {
        all.push(join_ok(p)?);
    }
    for cycle in 0..CYCLES as usize {
        let mut idx: Vec<u8> = all.iter().map(|v| v[cycle]).collect();
        idx.sort_unstable();
        ensure(
            idx == [0, 1, 2, 3, 4],
            format!("cycle {cycle}: indices {idx:?}"),
        )?;
    }
    ensure(
        actions.get_value() == CYCLES,
        format!("the action ran {} times", actions.get_value()),
    )?;
    ensure(
        !barrier.broken() && barrier.n_waiting() == 0,
        "clean at the end",
    )
}

fn barrier_timeout_abort_reset_across_processes() -> R {
    let b = Barrier::new(3, None, None)?;
    let mut timed = start(barrier_expect_broken, (b.clone(), 150))?;
    let (r, ms) = join(&mut timed)?;
    ensure(
        r.contains("BrokenBarrier") && ms >= 150,
        format!("timed party: {r} after {ms} ms"),
    )?;
    ensure(b.broken(), "a timeout breaks the barrier")?;
    b.reset();
    let mut ps = vec![
        start(barrier_expect_broken, (b.clone(), 120_000))?,
        start(barrier_expect_broken, (b.clone(), 120_000))?,
    ];
    let end = Instant::now() + LONG;
    while b.n_waiting() < 2 {
        ensure(Instant::now() < end, "parties never arrived")?;
        std::thread::sleep(Duration::from_millis(5));
    }
    b.abort();
    for p in &mut ps {
        let (r, _) = join(p)?;
        ensure(r.contains("BrokenBarrier"), format!("aborted party: {r}"))?;
    }
    b.reset();
    let mut ps = vec![
        start(barrier_wait, (b.clone(),))?,
        start(barrier_wait, (b.clone(),))?,
    ];
    let mine = b.wait_timeout(LONG)?;
    let mut idx = vec![mine];
    for p in &mut ps {
        idx.push(join_ok(p)?);
    }
    idx.sort_unstable();
    ensure(idx == [0, 1, 2], format!("after reset: {idx:?}"))
}

fn event_ping_pong_between_processes() -> R {
    const ROUNDS: u32 = 2000;
    let (ping, pong_ev) = (Event::new()?, Event::new()?);
    let mut p = start(pong, (ping.clone(), pong_ev.clone(), ROUNDS))?;
    for i in 0..ROUNDS {
        ping.set();
        ensure(pong_ev.wait(Some(LONG)), format!("round {i}: pong lost"))?;
        pong_ev.clear();
    }
    ensure(join_ok(&mut p)? == ROUNDS, "all rounds")
}

fn semaphores_across_processes() -> R {
    let sem = Semaphore::new(0)?;
    let mut ps = Vec::new();
    for _ in 0..3 {
        ps.push(start(release_n, (sem.clone(), 4))?);
    }
    for p in &mut ps {
        join_ok(p)?;
    }
    ensure(sem.get_value() == 12, format!("value {}", sem.get_value()))?;
    for _ in 0..12 {
        ensure(sem.try_acquire(), "a unit per release")?;
    }
    ensure(!sem.try_acquire(), "no more")?;

    // A blocked acquire in a child: times out, then is woken by our release.
    let mut t = start(timed_acquire, (sem.clone(), 150))?;
    let (got, ms) = join(&mut t)?;
    ensure(
        !got && ms >= 150,
        format!("timed acquire: {got} after {ms} ms"),
    )?;
    let mut w = start(timed_acquire, (sem.clone(), 120_000))?;
    std::thread::sleep(Duration::from_millis(50));
    sem.release()?;
    let (got, _) = join(&mut w)?;
    ensure(got, "woken by a release from another process")?;

    let bounded = BoundedSemaphore::new(2)?;
    ensure(bounded.try_acquire(), "take one")?;
    bounded.release()?;
    let mut b = start(bounded_overflow, (bounded.clone(),))?;
    let (r, v) = join(&mut b)?;
    ensure(
        r.contains("ValueTooLarge") && v == 2,
        format!("bounded: {r}, value {v}"),
    )?;
    ensure(bounded.get_value() == 2, "value kept")
}

fn locks_exclude_processes_under_contention() -> R {
    const PROCS: u32 = 4;
    const N: u32 = 5000;
    let region = mp_core::SharedRegion::new(8)?;
    let lock = Lock::new()?;
    let mut ps = Vec::new();
    for _ in 0..PROCS {
        ps.push(start(
            bump_under_lock,
            (
                lock.clone(),
                mp_core::SharedRegion::from_fd(dup(&region)?)?,
                N,
            ),
        )?);
    }
    for p in &mut ps {
        join_ok(p)?;
    }
    let got = counter(&region).load(std::sync::atomic::Ordering::Relaxed);
    ensure(
        got == u64::from(PROCS * N),
        format!("Lock: {got} increments of {}", PROCS * N),
    )?;

    let region = mp_core::SharedRegion::new(8)?;
    let rlock = RLock::new()?;
    let mut ps = Vec::new();
    for _ in 0..PROCS {
        ps.push(start(
            bump_under_rlock,
            (
                rlock.clone(),
                mp_core::SharedRegion::from_fd(dup(&region)?)?,
                N,
            ),
        )?);
    }
    for p in &mut ps {
        join_ok(p)?;
    }
    let got = counter(&region).load(std::sync::atomic::Ordering::Relaxed);
    ensure(
        got == u64::from(PROCS * N),
        format!("RLock: {got} increments of {}", PROCS * N),
    )?;
    ensure(!lock.locked() && !rlock.locked(), "all released")
}

/// A second handle on the same memory (a `SharedRegion` is not `Clone`).
fn dup(region: &mp_core::SharedRegion) -> Result<std::os::fd::OwnedFd, Failed> {
    let (_, mut fds) = mp_core::handles::encode(region)?;
    fds.pop().ok_or_else(|| "no fd".into())
}

fn semaphore_loses_no_wakeup_under_contention() -> R {
    const N: u32 = 4000;
    let sem = Semaphore::new(0)?;
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(start(consume, (sem.clone(), N))?);
    }
    let mut producers = Vec::new();
    for _ in 0..3 {
        producers.push(start(produce, (sem.clone(), N))?);
    }
    for p in producers.iter_mut().chain(consumers.iter_mut()) {
        join_ok(p)?;
    }
    ensure(
        sem.get_value() == 0,
        format!("value {} left", sem.get_value()),
    )
}

fn only_one_acquirer_takes_over_a_dead_holder() -> R {
    let (lock, ready, started) = (Lock::new()?, Event::new()?, Semaphore::new(0)?);
    let mut holder = start(hold_lock, (lock.clone(), ready.clone()))?;
    ensure(ready.wait(Some(LONG)), "child took the lock")?;
    let mut ps = Vec::new();
    for _ in 0..3 {
        ps.push(start(contend, (lock.clone(), started.clone()))?);
    }
    for _ in 0..3 {
        ensure(started.acquire(true, Some(LONG)), "contenders started")?;
    }
    std::thread::sleep(Duration::from_millis(100)); // let them block
    holder.kill()?;
    let mut died = 0;
    for p in &mut ps {
        died += u32::from(join_ok(p)?);
    }
    ensure(
        died == 1,
        format!("{died} acquirers were told the owner died"),
    )?;
    ensure(!lock.locked(), "all released")?;
    let _ = holder.join();
    Ok(())
}

fn a_killed_waiter_does_not_wedge_the_lock() -> R {
    let lock = Lock::new()?;
    let guard = lock.lock().map_err(|_| "fresh lock")?;
    let mut waiter = start(wait_for_lock, (lock.clone(),))?;
    std::thread::sleep(Duration::from_millis(100)); // let it block
    waiter.kill()?;
    let _ = waiter.join();
    drop(guard);
    ensure(!lock.locked(), "released")?;
    let mut next = start(wait_for_lock, (lock.clone(),))?;
    ensure(join(&mut next)?, "another process takes it")?;
    // That child exited holding it: we take it over.
    ensure(
        lock.lock_timeout(LONG).is_err(),
        "OwnerDied after the child exited",
    )?;
    ensure(!lock.locked(), "released")
}

fn main() {
    mp_process::init();
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let tests = vec![
        t(
            "lock_of_a_killed_child_is_recovered",
            lock_of_a_killed_child_is_recovered,
        ),
        t(
            "rlock_of_a_killed_child_is_recovered",
            rlock_of_a_killed_child_is_recovered,
        ),
        t(
            "condition_lock_of_a_killed_child_is_recovered",
            condition_lock_of_a_killed_child_is_recovered,
        ),
        t("lock_any_process_may_release", lock_any_process_may_release),
        t(
            "a_guard_held_lock_is_released_only_by_its_guard",
            a_guard_held_lock_is_released_only_by_its_guard,
        ),
        t(
            "a_guard_held_lock_of_a_killed_child_is_recovered",
            a_guard_held_lock_of_a_killed_child_is_recovered,
        ),
        t(
            "lock_timeouts_across_processes",
            lock_timeouts_across_processes,
        ),
        t(
            "rlock_refuses_a_foreign_release",
            rlock_refuses_a_foreign_release,
        ),
        t(
            "condition_notify_counts_live_waiters_across_processes",
            condition_notify_counts_live_waiters_across_processes,
        ),
        t(
            "barrier_of_five_processes_for_a_thousand_cycles",
            barrier_of_five_processes_for_a_thousand_cycles,
        ),
        t(
            "barrier_timeout_abort_reset_across_processes",
            barrier_timeout_abort_reset_across_processes,
        ),
        t(
            "event_ping_pong_between_processes",
            event_ping_pong_between_processes,
        ),
        t("semaphores_across_processes", semaphores_across_processes),
        t(
            "only_one_acquirer_takes_over_a_dead_holder",
            only_one_acquirer_takes_over_a_dead_holder,
        ),
        t(
            "a_killed_waiter_does_not_wedge_the_lock",
            a_killed_waiter_does_not_wedge_the_lock,
        ),
        t(
            "locks_exclude_processes_under_contention",
            locks_exclude_processes_under_contention,
        ),
        t(
            "semaphore_loses_no_wakeup_under_contention",
            semaphore_loses_no_wakeup_under_contention,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
