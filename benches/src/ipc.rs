//! Pipe, lock, event and shared-memory workloads, and their limits.
use crate::{emit, per_call, Opts};
use multiproc::core::{futex, Deadline, SharedRegion};
use multiproc::{pipe, Connection, Event, Lock, Process, RLock, RawArray, Semaphore, Value};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

pub const WORKLOADS: &[crate::Workload] = &[
    ("limit_socketpair_roundtrip", |o| {
        pinned_and_not(o, limit_socketpair_roundtrip)
    }),
    ("pipe_roundtrip", |o| pinned_and_not(o, pipe_roundtrip)),
    ("limit_socketpair_throughput", limit_socketpair_throughput),
    ("pipe_bytes_throughput", pipe_bytes_throughput),
    ("limit_std_mutex", limit_std_mutex),
    ("lock_uncontended", lock_uncontended),
    ("rlock_uncontended", rlock_uncontended),
    ("semaphore_uncontended", semaphore_uncontended),
    ("limit_futex_pingpong", |o| {
        pinned_and_not(o, limit_futex_pingpong)
    }),
    ("event_pingpong", |o| pinned_and_not(o, event_pingpong)),
    ("value_increment_contended", value_increment_contended),
    ("limit_rayon_sum", limit_rayon_sum),
    ("array_sum_shared", array_sum_shared),
];

/// Runs a latency workload unpinned, then with this process and its children pinned to
/// one CPU (unless the whole run is already pinned).
pub fn pinned_and_not(opts: &Opts, f: fn(&Opts, bool)) {
    f(opts, false);
    if opts.pin.is_none() {
        let saved = crate::affinity();
        crate::pin_to(saved.first().copied().unwrap_or(0));
        f(opts, true);
        crate::set_affinity(&saved);
    }
}

fn pin_param(opts: &Opts, pinned: bool) -> serde_json::Value {
    json!(pinned || opts.pin.is_some())
}

fn rounds(opts: &Opts) -> usize {
    if opts.quick {
        2_000
    } else {
        20_000
    }
}

// ---- pipes ---------------------------------------------------------------------------

fn echo(mut c: Connection) -> u64 {
    let mut n = 0;
    while let Ok(x) = c.recv::<u64>() {
        if c.send(&x).is_err() {
            break;
        }
        n += 1;
    }
    n
}

fn pipe_roundtrip(opts: &Opts, pinned: bool) {
    let Ok((mut a, b)) = pipe() else { return };
    let Ok(mut p) = Process::new(echo, (b,)).start() else {
        return;
    };
    let mut runs = Vec::new();
    for _ in 0..opts.runs() {
        let n = rounds(opts);
        runs.push(
            per_call(n, || {
                let _ = a.send(&7u64);
                let _ = a.recv::<u64>();
            }) * 1e6,
        );
    }
    drop(a);
    let _ = p.join();
    emit(
        "pipe_roundtrip",
        json!({"start_method": "spawn", "pinned": pin_param(opts, pinned)}),
        "us/roundtrip",
        runs,
        opts,
    );
}

/// Raw one-byte ping-pong over a socketpair between two processes (fork, raw syscalls).
fn limit_socketpair_roundtrip(opts: &Opts, pinned: bool) {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let Ok((a, b)) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    ) else {
        return;
    };
    let total = rounds(opts) * opts.runs();
    // SAFETY: the child only makes raw read/write syscalls and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(a);
        let mut byte = [0u8; 1];
        for _ in 0..total {
            if rustix::io::read(&b, &mut byte).map_or(true, |n| n == 0)
                || rustix::io::write(&b, &byte).is_err()
            {
                break;
            }
        }
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    drop(b);
    let mut runs = Vec::new();
    let mut byte = [1u8; 1];
    for _ in 0..opts.runs() {
        runs.push(
            per_call(rounds(opts), || {
                let _ = rustix::io::write(&a, &byte);
                let _ = rustix::io::read(&a, &mut byte);
            }) * 1e6,
        );
    }
    drop(a);
    // SAFETY: reaps the child forked above.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    emit(
        "limit_socketpair_roundtrip",
        json!({"pinned": pin_param(opts, pinned), "for": "pipe_roundtrip"}),
        "us/roundtrip",
        runs,
        opts,
    );
}

const MIB: usize = 1 << 20;

fn mib_count(opts: &Opts) -> usize {
    if opts.quick {
        200
    } else {
        1000
    }
}

fn send_mibs(mut c: Connection, count: usize) -> usize {
    let buf = vec![0x5au8; MIB];
    for i in 0..count {
        if c.send_bytes(&buf).is_err() {
            return i;
        }
    }
    count
}

fn pipe_bytes_throughput(opts: &Opts) {
    let mut runs = Vec::new();
    let count = mib_count(opts);
    let mut buf = vec![0u8; MIB];
    for _ in 0..opts.runs() {
        let Ok((mut a, b)) = pipe() else { return };
        let Ok(mut p) = Process::new(send_mibs, (b, count)).start() else {
            return;
        };
        let t = Instant::now();
        let mut got = 0;
        while got < count {
            if a.recv_bytes_into(&mut buf).is_err() {
                break;
            }
            got += 1;
        }
        runs.push(got as f64 / t.elapsed().as_secs_f64());
        let _ = p.join();
    }
    emit(
        "pipe_bytes_throughput",
        json!({"start_method": "spawn", "message": "1 MiB"}),
        "MiB/s",
        runs,
        opts,
    );
}

fn limit_socketpair_throughput(opts: &Opts) {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let count = mib_count(opts);
    let mut runs = Vec::new();
    let mut buf = vec![0u8; MIB];
    for _ in 0..opts.runs() {
        let Ok((a, b)) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        ) else {
            return;
        };
        // SAFETY: the child only writes with raw syscalls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(a);
            let data = vec![0x5au8; MIB];
            for _ in 0..count {
                let mut off = 0;
                while off < MIB {
                    match rustix::io::write(&b, &data[off..]) {
                        Ok(n) => off += n,
                        Err(_) => break,
                    }
                }
            }
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        drop(b);
        let t = Instant::now();
        let mut total = 0usize;
        while total < count * MIB {
            match rustix::io::read(&a, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        runs.push(total as f64 / MIB as f64 / t.elapsed().as_secs_f64());
        // SAFETY: reaps the child forked above.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    emit(
        "limit_socketpair_throughput",
        json!({"message": "1 MiB", "for": "pipe_bytes_throughput"}),
        "MiB/s",
        runs,
        opts,
    );
}

// ---- locks ---------------------------------------------------------------------------

fn ops(opts: &Opts) -> usize {
    if opts.quick {
        1_000_000
    } else {
        5_000_000
    }
}

fn uncontended(opts: &Opts, name: &str, mut f: impl FnMut()) {
    // One untimed pass first: a fresh process's first millions of operations can run
    // at half speed here (frequency and cache warm-up), which is not the primitive.
    per_call(ops(opts), &mut f);
    let runs = (0..opts.runs())
        .map(|_| per_call(ops(opts), &mut f) * 1e9)
        .collect();
    emit(name, json!({}), "ns/op", runs, opts);
}

fn limit_std_mutex(opts: &Opts) {
    let m = std::sync::Mutex::new(0u64);
    uncontended(opts, "limit_std_mutex", || {
        if let Ok(mut g) = m.lock() {
            *std::hint::black_box(&mut *g) += 1;
        }
    });
}

fn lock_uncontended(opts: &Opts) {
    let Ok(l) = Lock::new() else { return };
    uncontended(opts, "lock_uncontended", || {
        let _ = std::hint::black_box(l.acquire(true, None));
        let _ = l.release();
    });
}

fn rlock_uncontended(opts: &Opts) {
    let Ok(l) = RLock::new() else { return };
    uncontended(opts, "rlock_uncontended", || {
        let _ = std::hint::black_box(l.acquire(true, None));
        let _ = l.release();
    });
}

fn semaphore_uncontended(opts: &Opts) {
    let Ok(s) = Semaphore::new(1) else { return };
    uncontended(opts, "semaphore_uncontended", || {
        let _ = std::hint::black_box(s.acquire(true, None));
        let _ = s.release();
    });
}

// ---- events and futexes --------------------------------------------------------------

fn event_partner(ping: Event, pong: Event, n: usize) {
    for _ in 0..n {
        ping.wait(None);
        ping.clear();
        pong.set();
    }
}

fn event_pingpong(opts: &Opts, pinned: bool) {
    let (Ok(ping), Ok(pong)) = (Event::new(), Event::new()) else {
        return;
    };
    let n = rounds(opts);
    let mut runs = Vec::new();
    let Ok(mut p) =
        Process::new(event_partner, (ping.clone(), pong.clone(), n * opts.runs())).start()
    else {
        return;
    };
    for _ in 0..opts.runs() {
        let t = Instant::now();
        for _ in 0..n {
            ping.set();
            pong.wait(None);
            pong.clear();
        }
        runs.push(n as f64 / t.elapsed().as_secs_f64());
    }
    let _ = p.join();
    emit(
        "event_pingpong",
        json!({"start_method": "spawn", "pinned": pin_param(opts, pinned)}),
        "roundtrips/s",
        runs,
        opts,
    );
}

/// Two futex words in shared memory; each side flips its word and wakes the other.
fn limit_futex_pingpong(opts: &Opts, pinned: bool) {
    let Ok(region) = SharedRegion::new(4096) else {
        return;
    };
    // SAFETY: the region is page-aligned, at least 8 bytes, zero-filled, and lives until
    // both processes are done with it (the child _exits before the parent drops it).
    let words = unsafe { &*(region.as_ptr().cast::<[AtomicU32; 2]>()) };
    let n = rounds(opts);
    let total = n * opts.runs();
    // SAFETY: the child only touches the shared words with atomics and futex syscalls.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        for i in 0..total as u32 {
            while words[0].load(Ordering::Acquire) == i {
                futex::wait(&words[0], i, Deadline::NEVER);
            }
            words[1].store(i + 1, Ordering::Release);
            futex::wake(&words[1], 1);
        }
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut runs = Vec::new();
    let mut i = 0u32;
    for _ in 0..opts.runs() {
        let t = Instant::now();
        for _ in 0..n {
            words[0].store(i + 1, Ordering::Release);
            futex::wake(&words[0], 1);
            while words[1].load(Ordering::Acquire) == i {
                futex::wait(&words[1], i, Deadline::NEVER);
            }
            i += 1;
        }
        runs.push(n as f64 / t.elapsed().as_secs_f64());
    }
    // SAFETY: reaps the child forked above.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    emit(
        "limit_futex_pingpong",
        json!({"pinned": pin_param(opts, pinned), "for": "event_pingpong"}),
        "roundtrips/s",
        runs,
        opts,
    );
}

// ---- shared memory -------------------------------------------------------------------

fn increments(v: Value<i32>, n: u32) {
    for _ in 0..n {
        let _ = v.update(|x| *x += 1);
    }
}

fn value_increment_contended(opts: &Opts) {
    let n = 100_000u32;
    let mut runs = Vec::new();
    for _ in 0..opts.runs() {
        let Ok(v) = Value::new(0i32) else { return };
        let t = Instant::now();
        let Ok(mut p) = Process::new(increments, (v.clone(), n)).start() else {
            return;
        };
        increments(v.clone(), n);
        let _ = p.join();
        let elapsed = t.elapsed().as_secs_f64();
        let total = v.get().unwrap_or(-1);
        if total != 2 * n as i32 {
            eprintln!(
                "value_increment_contended: final value {total}, expected {}",
                2 * n
            );
            return;
        }
        runs.push(2.0 * f64::from(n) / elapsed);
    }
    emit(
        "value_increment_contended",
        json!({"start_method": "spawn", "processes": 2}),
        "ops/s",
        runs,
        opts,
    );
}

const SUM_LEN: usize = 10_000_000;

fn sum_worker(data: RawArray<f64>, start: usize, end: usize, mut cmd: Connection) {
    while let Ok(true) = cmd.recv::<bool>() {
        // SAFETY: the parent filled the array before starting us and never writes it again.
        let s: f64 = unsafe { data.as_slice()[start..end].iter().sum() };
        if cmd.send(&s).is_err() {
            break;
        }
    }
}

fn filled_array() -> Option<RawArray<f64>> {
    let a = RawArray::<f64>::new(SUM_LEN).ok()?;
    // SAFETY: nobody else can see the array yet.
    unsafe {
        for (i, x) in a.as_mut_slice().iter_mut().enumerate() {
            *x = (i % 1024) as f64;
        }
    }
    Some(a)
}

fn array_sum_shared(opts: &Opts) {
    let Some(data) = filled_array() else { return };
    let mut workers = Vec::new();
    let mut conns = Vec::new();
    for w in 0..2 {
        let Ok((a, b)) = pipe() else { return };
        let (start, end) = (SUM_LEN * w / 2, SUM_LEN * (w + 1) / 2);
        let Ok(p) = Process::new(sum_worker, (data.clone(), start, end, b)).start() else {
            return;
        };
        workers.push(p);
        conns.push(a);
    }
    let passes = if opts.quick { 3 } else { 10 };
    let mut runs = Vec::new();
    for _ in 0..opts.runs() {
        let t = Instant::now();
        for _ in 0..passes {
            let mut total = 0.0;
            for c in &mut conns {
                let _ = c.send(&true);
            }
            for c in &mut conns {
                total += c.recv::<f64>().unwrap_or(f64::NAN);
            }
            std::hint::black_box(total);
        }
        runs.push(t.elapsed().as_secs_f64() / passes as f64);
    }
    for c in &mut conns {
        let _ = c.send(&false);
    }
    for p in &mut workers {
        let _ = p.join();
    }
    emit(
        "array_sum_shared",
        json!({"start_method": "spawn", "workers": 2, "len": SUM_LEN}),
        "s/pass",
        runs,
        opts,
    );
}

fn limit_rayon_sum(opts: &Opts) {
    use rayon::prelude::*;
    let data: Vec<f64> = (0..SUM_LEN).map(|i| (i % 1024) as f64).collect();
    let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(2).build() else {
        return;
    };
    let passes = if opts.quick { 3 } else { 10 };
    let runs = (0..opts.runs())
        .map(|_| {
            let t = Instant::now();
            for _ in 0..passes {
                let s: f64 = pool.install(|| {
                    data.par_chunks(SUM_LEN / 2)
                        .map(|c| c.iter().sum::<f64>())
                        .sum()
                });
                std::hint::black_box(s);
            }
            t.elapsed().as_secs_f64() / passes as f64
        })
        .collect();
    emit(
        "limit_rayon_sum",
        json!({"threads": 2, "len": SUM_LEN, "for": "array_sum_shared"}),
        "s/pass",
        runs,
        opts,
    );
}
