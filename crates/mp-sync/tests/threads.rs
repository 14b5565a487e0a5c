//! Every primitive with several threads sharing clones, and with a second mapping of
//! the same memory (a round trip through the fd carrier).
#![allow(clippy::unwrap_used)]
use mp_core::handles::{decode, encode};
use mp_sync::*;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

/// A second handle mapping the same pages through a fresh mmap of a dup'ed fd.
fn remap<T: Serialize + DeserializeOwned>(v: &T) -> T {
    let (bytes, fds) = encode(v).unwrap();
    assert!(!fds.is_empty());
    decode(&bytes, fds).unwrap()
}

#[test]
fn lock_python_semantics() {
    let lock = Lock::new().unwrap();
    assert!(!lock.locked());
    assert!(lock.acquire(true, None).unwrap());
    assert!(lock.locked());
    assert_eq!(lock.owner_pid(), Some(std::process::id()));
    assert!(
        !lock.acquire(false, Some(LONG)).unwrap(),
        "block=false ignores the timeout"
    );
    let t = Instant::now();
    assert!(!lock
        .acquire(true, Some(Duration::from_millis(100)))
        .unwrap());
    assert!(t.elapsed() >= Duration::from_millis(100));
    // Any thread may release it.
    let l2 = lock.clone();
    thread::spawn(move || l2.release().unwrap()).join().unwrap();
    assert!(!lock.locked());
    assert!(matches!(lock.release(), Err(SyncError::NotHeld)));
    assert!(lock.try_lock().unwrap().is_some());
    assert!(lock
        .lock_timeout(Duration::from_millis(10))
        .unwrap()
        .is_some());
}

#[test]
fn lock_excludes_threads_and_mappings() {
    let lock = Lock::new().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let l = if i % 2 == 0 {
                lock.clone()
            } else {
                remap(&lock)
            };
            let c = counter.clone();
            thread::spawn(move || {
                for _ in 0..20_000 {
                    let _g = l.lock().unwrap();
                    // Not an atomic increment: a lost update shows a broken lock.
                    let v = c.load(Ordering::Relaxed);
                    c.store(v + 1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::Relaxed), 80_000);
}

/// A non-atomic counter bump (load, then store): only mutual exclusion keeps it exact.
fn bump(c: &AtomicU64) {
    let v = c.load(Ordering::Relaxed);
    std::hint::spin_loop();
    c.store(v + 1, Ordering::Relaxed);
}

#[test]
fn a_guard_held_lock_is_released_only_by_its_guard() {
    let lock = Lock::new().unwrap();
    let g = lock.lock().unwrap();
    // Neither this thread, nor another, nor another mapping may release it.
    assert!(matches!(lock.release(), Err(SyncError::GuardHeld)));
    let l2 = remap(&lock);
    let r = thread::spawn(move || l2.release()).join().unwrap();
    assert!(matches!(r, Err(SyncError::GuardHeld)), "{r:?}");
    assert!(lock.locked() && lock.try_lock().unwrap().is_none());
    drop(g);
    assert!(!lock.locked(), "the guard released it");
    // acquire/release pairs keep Python's semantics: any thread releases.
    assert!(lock.acquire(true, None).unwrap());
    let l3 = lock.clone();
    thread::spawn(move || l3.release().unwrap()).join().unwrap();
    assert!(!lock.locked());
    // The escape hatch: a guard forgotten on purpose, unlocked by hand.
    std::mem::forget(lock.lock().unwrap());
    assert!(matches!(lock.release(), Err(SyncError::GuardHeld)));
    // SAFETY: the guard was forgotten; nothing relies on the lock being held.
    unsafe { lock.force_unlock() }.unwrap();
    assert!(!lock.locked());
    // SAFETY: as above (the lock is free: NotHeld).
    let again = unsafe { lock.force_unlock() };
    assert!(matches!(again, Err(SyncError::NotHeld)));
}

#[test]
fn releases_from_outside_lose_no_guarded_update() {
    // Two threads bump under guards while a third keeps calling release(): the lock a
    // guard holds must stay held, or updates are lost.
    let lock = Lock::new().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let releaser = {
        let (l, stop) = (lock.clone(), stop.clone());
        thread::spawn(move || {
            let mut released = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if l.release().is_ok() {
                    released += 1;
                }
            }
            released
        })
    };
    let bumpers: Vec<_> = (0..2)
        .map(|_| {
            let (l, c) = (lock.clone(), counter.clone());
            thread::spawn(move || {
                for _ in 0..20_000 {
                    let _g = l.lock().unwrap();
                    bump(&c);
                }
            })
        })
        .collect();
    for b in bumpers {
        b.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let released = releaser.join().unwrap();
    assert_eq!(counter.load(Ordering::Relaxed), 40_000, "updates were lost");
    assert_eq!(released, 0, "a guard's lock was released from outside");
}

#[test]
fn condition_wait_needs_the_lock_in_this_thread() {
    // Python's Lock knows the thread that acquired it; Condition.wait from another
    // thread is refused and must not release the holder's lock.
    let lock = Lock::new().unwrap();
    let c = Condition::with_lock(lock.clone()).unwrap();
    for by_guard in [false, true] {
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let c2 = c.clone();
        let holder = thread::spawn(move || {
            if by_guard {
                let g = c2.lock().unwrap();
                held_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                drop(g);
            } else {
                assert!(c2.acquire(true, None).unwrap());
                held_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                c2.release().unwrap();
            }
        });
        held_rx.recv().unwrap();
        let r = c.wait(Some(Duration::from_millis(20)));
        assert!(matches!(r, Err(SyncError::NotOwner)), "wait: {r:?}");
        assert!(matches!(c.notify(1), Err(SyncError::NotOwner)));
        assert!(lock.locked(), "the holder's lock was released");
        go_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(!lock.locked());
    }
}

#[test]
fn condition_wait_does_not_release_a_lock_a_guard_holds() {
    let lock = Lock::new().unwrap();
    let c = Condition::with_lock(lock.clone()).unwrap();
    let g = lock.lock().unwrap();
    let r = c.wait(Some(Duration::ZERO));
    assert!(matches!(r, Err(SyncError::GuardHeld)), "wait: {r:?}");
    assert!(lock.locked());
    c.notify_all().unwrap(); // notifying releases nothing: allowed
    let c2 = c.clone();
    let r = thread::spawn(move || c2.wait(Some(Duration::ZERO)))
        .join()
        .unwrap();
    assert!(matches!(r, Err(SyncError::NotOwner)), "wait: {r:?}");
    drop(g);
    assert!(!lock.locked());
}

#[test]
fn rlock_recursion_and_ownership() {
    let r = RLock::new().unwrap();
    assert!(r.acquire(true, None).unwrap());
    assert!(r.acquire(false, None).unwrap());
    let g = r.lock().unwrap();
    assert_eq!(r.count(), 3);
    let r2 = remap(&r);
    let (locked, rel, try_) = thread::spawn(move || {
        (
            r2.locked(),
            r2.release().is_err(),
            r2.acquire(true, Some(Duration::from_millis(50))).unwrap(),
        )
    })
    .join()
    .unwrap();
    assert!(
        locked && rel && !try_,
        "another thread neither releases nor takes it"
    );
    assert_eq!(r.count(), 3, "a refused release changes nothing");
    drop(g);
    r.release().unwrap();
    r.release().unwrap();
    assert!(!r.locked());
    assert!(
        matches!(r.release(), Err(SyncError::NotOwner)),
        "one release too many"
    );
}

#[test]
fn rlock_of_a_thread_that_ended_holding_it_is_recovered() {
    let r = RLock::new().unwrap();
    let r2 = r.clone();
    thread::spawn(move || {
        std::mem::forget(r2.lock().unwrap());
        std::mem::forget(r2.lock().unwrap());
    })
    .join()
    .unwrap();
    assert!(r.locked());
    match r.lock() {
        Err(e) => {
            let g = e.into_inner();
            assert_eq!(r.count(), 1, "the dead owner's depth is gone");
            drop(g);
        }
        Ok(_) => panic!("expected OwnerDied"),
    }
    assert!(!r.locked());
    // The parity API: the error holds the lock and releases it when dropped.
    let r3 = r.clone();
    thread::spawn(move || std::mem::forget(r3.lock().unwrap()))
        .join()
        .unwrap();
    match r.acquire(true, Some(LONG)) {
        Err(SyncError::OwnerDied(held)) => {
            assert!(r.is_owned());
            drop(held);
        }
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert!(!r.locked());
    let r4 = r.clone();
    thread::spawn(move || std::mem::forget(r4.lock().unwrap()))
        .join()
        .unwrap();
    match r.acquire(false, None) {
        Err(SyncError::OwnerDied(held)) => held.keep(),
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert!(r.is_owned());
    r.release().unwrap();
    assert!(!r.locked());
}

#[test]
fn semaphores_count_and_bound() {
    let s = Semaphore::new(2).unwrap();
    assert!(s.try_acquire() && s.acquire(true, None));
    assert!(!s.try_acquire());
    let t = Instant::now();
    assert!(!s.acquire_timeout(Duration::from_millis(80)));
    assert!(t.elapsed() >= Duration::from_millis(80));
    for _ in 0..5 {
        s.release().unwrap();
    }
    assert_eq!(s.get_value(), 5, "above the initial value");
    assert!(Semaphore::new(SEM_VALUE_MAX + 1).is_err());

    let b = BoundedSemaphore::new(2).unwrap();
    assert!(matches!(b.release(), Err(SyncError::ValueTooLarge(_))));
    assert_eq!(b.get_value(), 2);
    {
        let _p = b.access();
        assert_eq!(b.get_value(), 1);
    }
    assert_eq!(b.get_value(), 2);
}

#[test]
fn semaphore_wakes_blocked_threads() {
    let s = Semaphore::new(0).unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let (s, taken) = (remap(&s), taken.clone());
            thread::spawn(move || {
                for _ in 0..500 {
                    assert!(s.acquire(true, Some(LONG)));
                    taken.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for _ in 0..2000 {
        s.release().unwrap();
    }
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(taken.load(Ordering::Relaxed), 2000);
    assert_eq!(s.get_value(), 0);
}

#[test]
fn event_set_clear_wait() {
    let e = Event::new().unwrap();
    let t = Instant::now();
    assert!(!e.wait(Some(Duration::from_millis(60))));
    assert!(t.elapsed() >= Duration::from_millis(60));
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let e = remap(&e);
            thread::spawn(move || e.wait(Some(LONG)))
        })
        .collect();
    thread::sleep(Duration::from_millis(20));
    e.set();
    for h in hs {
        assert!(h.join().unwrap());
    }
    assert!(e.is_set() && e.wait(Some(Duration::ZERO)));
    e.clear();
    assert!(!e.is_set() && !e.wait(Some(Duration::ZERO)));
}

#[test]
fn event_ping_pong_loses_no_wakeup() {
    let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
    let (p2, q2) = (remap(&ping), remap(&pong));
    let h = thread::spawn(move || {
        for _ in 0..5000 {
            assert!(p2.wait(Some(LONG)));
            p2.clear();
            q2.set();
        }
    });
    for _ in 0..5000 {
        ping.set();
        assert!(pong.wait(Some(LONG)));
        pong.clear();
    }
    h.join().unwrap();
}

/// Waits until `n` threads wait on `c`.
fn until_waiters(c: &Condition, n: usize) {
    let end = Instant::now() + LONG;
    loop {
        let g = c.lock().unwrap();
        if g.waiters() == n {
            return;
        }
        drop(g);
        assert!(Instant::now() < end, "waiters never arrived");
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn condition_requires_the_lock() {
    for c in [
        Condition::new().unwrap(),
        Condition::with_lock(Lock::new().unwrap()).unwrap(),
    ] {
        assert!(matches!(
            c.wait(Some(Duration::ZERO)),
            Err(SyncError::NotOwner)
        ));
        assert!(matches!(c.notify(1), Err(SyncError::NotOwner)));
        assert!(matches!(c.notify_all(), Err(SyncError::NotOwner)));
        let mut g = c.lock().unwrap();
        assert!(
            !g.wait(Some(Duration::from_millis(20))).unwrap(),
            "timed out: not notified"
        );
        g.notify_all().unwrap();
    }
}

#[test]
fn condition_notify_n_counts_only_live_waiters() {
    for over_rlock in [true, false] {
        let c = if over_rlock {
            Condition::new().unwrap()
        } else {
            Condition::with_lock(Lock::new().unwrap()).unwrap()
        };
        // A waiter that times out must not absorb a later notify.
        let c1 = remap(&c);
        let timed = thread::spawn(move || {
            c1.lock()
                .unwrap()
                .wait(Some(Duration::from_millis(30)))
                .unwrap()
        });
        assert!(!timed.join().unwrap());
        let woken = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let (c, w) = (remap(&c), woken.clone());
                thread::spawn(move || {
                    let mut g = c.lock().unwrap();
                    let r = g.wait(Some(LONG)).unwrap();
                    w.fetch_add(1, Ordering::SeqCst);
                    r
                })
            })
            .collect();
        until_waiters(&c, 3);
        c.lock().unwrap().notify(2).unwrap();
        let end = Instant::now() + LONG;
        while woken.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < end);
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            woken.load(Ordering::SeqCst),
            2,
            "notify(2) woke exactly two"
        );
        c.lock().unwrap().notify_all().unwrap();
        for h in hs {
            assert!(h.join().unwrap(), "every wait returned notified");
        }
    }
}

#[test]
fn condition_wait_for_and_rlock_depth_restored() {
    let c = Condition::new().unwrap();
    let flag = Arc::new(AtomicUsize::new(0));
    let (c2, f2) = (c.clone(), flag.clone());
    let h = thread::spawn(move || {
        let mut g = c2.lock().unwrap();
        let inner = c2.acquire(true, None).unwrap(); // depth 2
        assert!(inner);
        let ok = g
            .wait_for(|| f2.load(Ordering::SeqCst) == 1, Some(LONG))
            .unwrap();
        let ConditionLock::RLock(r) = c2.get_lock() else {
            unreachable!()
        };
        let depth = r.count();
        c2.release().unwrap();
        (ok, depth)
    });
    until_waiters(&c, 1);
    {
        let g = c.lock().unwrap();
        g.notify(1).unwrap(); // predicate still false: it waits again
    }
    until_waiters(&c, 1);
    {
        let g = c.lock().unwrap();
        flag.store(1, Ordering::SeqCst);
        g.notify(1).unwrap();
    }
    assert_eq!(h.join().unwrap(), (true, 2));
    let mut g = c.lock().unwrap();
    let t = Instant::now();
    assert!(!g
        .wait_for(|| false, Some(Duration::from_millis(50)))
        .unwrap());
    assert!(t.elapsed() >= Duration::from_millis(50));
}

static ACTIONS: AtomicUsize = AtomicUsize::new(0);
fn count_action() {
    ACTIONS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn barrier_indices_action_and_cycles() {
    let parties = 4;
    let b = Barrier::new(parties, Some(count_action), None).unwrap();
    let hs: Vec<_> = (0..parties)
        .map(|i| {
            let b = if i == 0 {
                b.clone()
            } else {
                remap(&b).with_action(count_action)
            };
            thread::spawn(move || {
                let mut idx = Vec::new();
                for cycle in 0..300 {
                    idx.push(b.wait().unwrap());
                    // The action of this cycle ran before anyone was released.
                    assert!(ACTIONS.load(Ordering::SeqCst) > cycle);
                }
                idx
            })
        })
        .collect();
    let all: Vec<Vec<usize>> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    for cycle in 0..300 {
        let mut seen: Vec<usize> = all.iter().map(|v| v[cycle]).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..parties).collect::<Vec<_>>());
    }
    assert_eq!(ACTIONS.load(Ordering::SeqCst), 300);
    assert_eq!(b.parties(), parties);
    assert_eq!(b.n_waiting(), 0);
}

#[test]
fn barrier_timeout_abort_reset() {
    assert!(Barrier::new(0, None, None).is_err());
    let b = Barrier::new(3, None, Some(Duration::from_millis(80))).unwrap();
    let b2 = remap(&b);
    let h = thread::spawn(move || b2.wait_timeout(LONG));
    let t = Instant::now();
    assert!(
        matches!(b.wait(), Err(SyncError::BrokenBarrier)),
        "default timeout breaks it"
    );
    assert!(t.elapsed() >= Duration::from_millis(80));
    assert!(
        matches!(h.join().unwrap(), Err(SyncError::BrokenBarrier)),
        "every waiter gets it"
    );
    assert!(b.broken());
    assert!(matches!(b.wait(), Err(SyncError::BrokenBarrier)));
    b.reset();
    assert!(!b.broken());

    // reset while one waits: it gets BrokenBarrier, then the barrier works again.
    let b3 = b.clone();
    let h = thread::spawn(move || b3.wait_timeout(LONG));
    while b.n_waiting() < 1 {
        thread::sleep(Duration::from_millis(1));
    }
    b.reset();
    assert!(matches!(h.join().unwrap(), Err(SyncError::BrokenBarrier)));
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let b = b.clone();
            thread::spawn(move || b.wait_timeout(LONG))
        })
        .collect();
    assert!(b.wait_timeout(LONG).is_ok());
    for h in hs {
        assert!(h.join().unwrap().is_ok());
    }

    // abort wakes waiters with BrokenBarrier.
    let b4 = b.clone();
    let h = thread::spawn(move || b4.wait_timeout(LONG));
    while b.n_waiting() < 1 {
        thread::sleep(Duration::from_millis(1));
    }
    b.abort();
    assert!(matches!(h.join().unwrap(), Err(SyncError::BrokenBarrier)));
}

#[test]
fn barrier_action_does_not_travel() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    fn action() {
        RUNS.fetch_add(1, Ordering::SeqCst);
    }
    let b = Barrier::new(1, Some(action), None).unwrap();
    assert_eq!(b.wait().unwrap(), 0);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    let received = remap(&b);
    assert!(matches!(received.wait(), Err(SyncError::ActionMissing)));
    assert!(b.broken());
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    b.reset();
    let mut received = received;
    received.set_action(Some(action));
    assert_eq!(received.wait().unwrap(), 0);
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);
}

#[test]
fn serialization_needs_a_carrier_and_the_right_type() {
    let lock = Lock::new().unwrap();
    assert!(
        mp_core::postcard::to_allocvec(&lock).is_err(),
        "no fd carrier: an error"
    );
    let (bytes, fds) = encode(&lock).unwrap();
    // The region's magic says "Lock": it is refused as an Event.
    assert!(decode::<Event>(&bytes, fds).is_err());
    let (bytes, fds) = encode(&(Condition::new().unwrap(), Semaphore::new(3).unwrap())).unwrap();
    assert_eq!(
        fds.len(),
        3,
        "a condition carries its lock's region and its own"
    );
    let (_c, s): (Condition, Semaphore) = decode(&bytes, fds).unwrap();
    assert_eq!(s.get_value(), 3);
}

extern "C" fn on_signal(_: libc::c_int) {}

#[test]
fn timeouts_are_not_stretched_or_cut_by_signals() {
    // SAFETY: installs a handler that does nothing (async-signal-safe), without
    // SA_RESTART, so blocked futex waits return EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    let lock = Lock::new().unwrap();
    let _held = lock.lock().unwrap();
    let (ev, sem) = (Event::new().unwrap(), Semaphore::new(0).unwrap());
    let cond = Condition::new().unwrap();
    let wait = Duration::from_millis(300);
    let (l, e, s, c) = (lock.clone(), ev.clone(), sem.clone(), cond.clone());
    let h = thread::spawn(move || {
        let mut out = Vec::new();
        let t = Instant::now();
        out.push((l.acquire(true, Some(wait)).unwrap(), t.elapsed()));
        let t = Instant::now();
        out.push((e.wait(Some(wait)), t.elapsed()));
        let t = Instant::now();
        out.push((s.acquire_timeout(wait), t.elapsed()));
        let mut g = c.lock().unwrap();
        let t = Instant::now();
        out.push((g.wait(Some(wait)).unwrap(), t.elapsed()));
        out
    });
    let pt = {
        use std::os::unix::thread::JoinHandleExt;
        h.as_pthread_t()
    };
    let end = Instant::now() + Duration::from_millis(1300);
    while Instant::now() < end && !h.is_finished() {
        // SAFETY: the thread is alive (not joined); SIGUSR2 has a no-op handler.
        unsafe { libc::pthread_kill(pt, libc::SIGUSR2) };
        thread::sleep(Duration::from_millis(7));
    }
    for (got, took) in h.join().unwrap() {
        assert!(!got, "nothing was released or set");
        assert!(took >= wait, "a signal cut a wait short: {took:?}");
        assert!(took < LONG, "a wait overran: {took:?}");
    }
}
