//! Value, Array and SharedMemory across real processes, under the start method chosen
//! by `MULTIPROC_START_METHOD` (the xtask runs this binary once per method).
use libtest_mimic::{Arguments, Failed, Trial};
use mp_process::{get_start_method, init, Process};
use mp_shm::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type R = Result<(), Failed>;

fn ensure(cond: bool, msg: impl std::fmt::Display) -> R {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    bytemuck::Pod,
    bytemuck::Zeroable,
    serde::Serialize,
    serde::Deserialize,
)]
#[repr(C)]
struct Point {
    x: f64,
    y: f64,
    n: u32,
    pad: u32,
}
mp_shm::shared_struct!(Point);

fn set_value(v: Value<i32>, x: i32) {
    let _ = v.set(x);
}
fn increment(v: Value<i32>, times: u32) {
    for _ in 0..times {
        if let Ok(mut g) = v.lock() {
            *g += 1;
        }
    }
}
fn atomic_add(v: Value<AtomicU64>, times: u64) {
    for _ in 0..times {
        v.fetch_add(1, Ordering::Relaxed);
    }
}
fn move_point(p: Value<Point>) -> Point {
    let _ = p.update(|p| {
        p.x += 1.0;
        p.n += 1;
    });
    p.get().unwrap_or(Point {
        x: -1.0,
        y: -1.0,
        n: 0,
        pad: 0,
    })
}
fn fill(a: Array<u32>, from: u32) -> Result<(), String> {
    let mut g = a.lock().map_err(|e| e.to_string())?;
    for (i, x) in g.iter_mut().enumerate() {
        *x = from + i as u32;
    }
    Ok(())
}
fn out_of_range(a: Array<u32>) -> String {
    match a.get(a.len()) {
        Err(e) => e.to_string(),
        Ok(v) => format!("got {v}"),
    }
}
fn sum_part(a: RawArray<f64>, start: usize, end: usize) -> f64 {
    // SAFETY: the parent filled the array before starting us and nobody writes it now.
    unsafe { a.as_slice()[start..end].iter().sum() }
}
fn hold_forever(v: Value<i32>) {
    if let Ok(mut g) = v.lock() {
        *g = 99;
        std::thread::sleep(Duration::from_secs(600));
    }
}
fn shared_lock_pair(a: Value<i32>, b: Value<i32>) -> bool {
    // Both values share one lock: holding a's guard, b's lock is busy.
    let _g = a.lock();
    b.get_lock().is_some_and(|l| l.locked())
}
fn write_named(shm: SharedMemory, text: String) -> usize {
    shm.write_at(0, text.as_bytes())
        .map(|_| shm.size())
        .unwrap_or(0)
}
fn create_and_wait(name: String, secs: u64, ready: mp_sync::Event) -> bool {
    match SharedMemory::create(Some(&name), 8192) {
        Ok(s) => {
            ready.set();
            std::thread::sleep(Duration::from_secs(secs));
            drop(s);
            true
        }
        Err(_) => false,
    }
}
fn create_untracked(name: String) -> bool {
    SharedMemory::create(Some(&name), 4096)
        .map(|s| s.untrack())
        .is_ok()
}
/// Creates `name` and returns without unlinking it; reports this process's own children
/// (a tracker of its own, had it started one).
fn create_and_leave(name: String) -> Result<Vec<u32>, String> {
    SharedMemory::create(Some(&name), 4096).map_err(|e| format!("create {name}: {e}"))?;
    Ok(my_children())
}
/// Creates `n` segments named `{prefix}_{i}` and unlinks the even ones; reports this
/// process's own children (a tracker of its own, had it started one).
fn create_many(prefix: String, n: u32) -> Result<Vec<u32>, String> {
    for i in 0..n {
        let name = format!("{prefix}_{i}");
        let s = SharedMemory::create(Some(&name), 4096).map_err(|e| format!("{name}: {e}"))?;
        if i % 2 == 0 {
            s.unlink().map_err(|e| format!("unlink {name}: {e}"))?;
        }
    }
    Ok(my_children())
}
/// Attaches to a segment another process created and unlinks it.
fn unlink_named(name: String) -> Result<(), String> {
    SharedMemory::attach(&name)
        .and_then(|s| s.unlink())
        .map_err(|e| format!("unlink {name}: {e}"))
}

/// What another process can do to data whose guard the parent holds: release its lock,
/// wait on a condition over it, take the lock. (release, wait, took it)
fn release_a_guarded_lock(
    v: Value<i32>,
    a: Array<u8>,
    cond: mp_sync::Condition,
) -> (String, String, String, bool) {
    let release_v = format!("{:?}", v.get_lock().map(|l| l.release()));
    let release_a = format!("{:?}", a.get_lock().map(|l| l.release()));
    let wait = format!("{:?}", cond.wait(Some(Duration::ZERO)));
    let took = v
        .get_lock()
        .is_some_and(|l| !matches!(l.try_lock(), Ok(None)));
    (release_v, release_a, wait, took)
}

/// The pids of this process's children (the tracker is the only one a fresh child
/// process has).
fn my_children() -> Vec<u32> {
    let me = std::process::id();
    let mut kids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Field 4 (ppid) comes after the command name, which ends at the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            kids.push(pid);
        }
    }
    kids
}

/// A hex mask line (`SigBlk`, `ShdPnd` ...) of `/proc/<pid>/status`.
fn status_mask(pid: u32, key: &str) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| format!("no {key} for {pid}"))
}

fn sig_bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// Waits (bounded) until process `pid` exits, through a pidfd: true if it did.
fn wait_exit(pid: u32, within: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    let fd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return true,
        Err(_) => return false,
    };
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let t = Timespec::try_from(left).ok();
        match poll(&mut fds, t.as_ref()) {
            Ok(n) if n > 0 => return true,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
}

/// Creates a segment from a thread named `shm-creator`, then reports on this process's
/// tracker: (pid, its name, SigBlk, ShdPnd after SIGINT and SIGTERM were sent to it).
fn tracker_facts(name: String) -> Result<(u32, String, u64, u64), String> {
    let made = std::thread::Builder::new()
        .name("shm-creator".into())
        .spawn(move || SharedMemory::create(Some(&name), 4096).map(SharedMemory::close))
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "creator panicked".to_string())?;
    made.map_err(|e| format!("create: {e}"))?;
    let kids = my_children();
    let [tracker] = kids[..] else {
        return Err(format!("children: {kids:?}"));
    };
    let comm = std::fs::read_to_string(format!("/proc/{tracker}/comm"))
        .map_err(|e| e.to_string())?
        .trim()
        .to_string();
    let blocked = status_mask(tracker, "SigBlk")?;
    let pid = rustix::process::Pid::from_raw(tracker as i32).ok_or("pid 0")?;
    for sig in [rustix::process::Signal::INT, rustix::process::Signal::TERM] {
        rustix::process::kill_process(pid, sig).map_err(|e| e.to_string())?;
    }
    let pending = status_mask(tracker, "ShdPnd")?;
    Ok((tracker, comm, blocked, pending))
}

/// Creates `a`, kills the tracker with SIGKILL, then creates `b`; returns the old
/// tracker's pid and the pid of the one that serves `b`.
fn kill_tracker_then_create(a: String, b: String) -> Result<(u32, u32), String> {
    SharedMemory::create(Some(&a), 4096).map_err(|e| format!("create {a}: {e}"))?;
    let kids = my_children();
    let [old] = kids[..] else {
        return Err(format!("children: {kids:?}"));
    };
    let pid = rustix::process::Pid::from_raw(old as i32).ok_or("pid 0")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).map_err(|e| e.to_string())?;
    if !wait_exit(old, Duration::from_secs(30)) {
        return Err("the tracker did not die".into());
    }
    SharedMemory::create(Some(&b), 4096)
        .map_err(|e| format!("create {b} after the tracker died: {e}"))?;
    let live: Vec<u32> = my_children().into_iter().filter(|&k| k != old).collect();
    let [new] = live[..] else {
        return Err(format!("live children: {live:?}"));
    };
    Ok((old, new))
}

/// With `getrandom` failing (a seccomp filter on this process), creates two segments
/// with random names; reports what each create returned.
fn create_without_randomness() -> String {
    // SAFETY: installs a seccomp filter on this thread (inherited by its children): a
    // four-instruction BPF program that fails getrandom with EPERM and allows the rest.
    // The program lives on the stack for the duration of the prctl call, which copies it.
    let installed = unsafe {
        let mut filter = [
            libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: libc::SYS_getrandom as u32,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) == 0
    };
    if !installed {
        return format!("seccomp: {}", std::io::Error::last_os_error());
    }
    let (mut out, mut made) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        out.push(match SharedMemory::create(None, 4096) {
            Ok(s) => {
                let r = format!("Ok({})", s.name());
                made.push(s);
                r
            }
            Err(e) => format!("Err({e})"),
        });
    }
    for s in made {
        let _ = s.unlink();
    }
    out.join(" / ")
}

fn dev_shm() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn unique(tag: &str) -> String {
    format!(
        "mp_test_{tag}_{}_{}",
        std::process::id(),
        mp_process::get_start_method()
    )
}

// ---- tests -----------------------------------------------------------------------

fn child_write_is_seen() -> R {
    let v = Value::new(1i32)?;
    Process::new(set_value, (v.clone(), 42)).start()?.join()?;
    ensure(v.get()? == 42, "value written by the child")
}

fn locked_increments_are_exact() -> R {
    let v = Value::new(0i32)?;
    let mut ps = Vec::new();
    for _ in 0..3 {
        ps.push(Process::new(increment, (v.clone(), 10_000)).start()?);
    }
    increment(v.clone(), 10_000);
    for p in &mut ps {
        p.join()?;
    }
    ensure(v.get()? == 40_000, format!("final value {}", v.get()?))
}

fn atomic_value_needs_no_lock() -> R {
    let v = Value::new(AtomicU64::new(0))?;
    ensure(v.get_lock().is_none(), "no lock for atomics")?;
    let mut ps = Vec::new();
    for _ in 0..3 {
        ps.push(Process::new(atomic_add, (v.clone(), 20_000)).start()?);
    }
    for p in &mut ps {
        p.join()?;
    }
    ensure(
        v.load(Ordering::SeqCst) == 60_000,
        format!("final {}", v.load(Ordering::SeqCst)),
    )
}

fn structs_and_arrays() -> R {
    let p = Value::new(Point {
        x: 1.0,
        y: 2.0,
        n: 0,
        pad: 0,
    })?;
    let seen = Process::new(move_point, (p.clone(),)).start()?.join()?;
    ensure(
        seen == Point {
            x: 2.0,
            y: 2.0,
            n: 1,
            pad: 0,
        } && p.get()? == seen,
        format!("{seen:?}"),
    )?;
    let a = Array::<u32>::new(1000)?;
    Process::new(fill, (a.clone(), 7)).start()?.join()??;
    ensure(
        a.get(0)? == 7 && a.get(999)? == 1006,
        "array filled by the child",
    )?;
    ensure(a.read(10..13)? == vec![17, 18, 19], "slice read")?;
    a.write(998, &[1, 2])?;
    ensure(a.to_vec()[998..] == [1, 2], "slice written")?;
    ensure(
        matches!(
            a.get(1000),
            Err(ShmError::OutOfRange {
                index: 1000,
                len: 1000
            })
        ),
        "get out of range",
    )?;
    ensure(
        a.set(5000, 1).is_err() && a.write(999, &[1, 2]).is_err() && a.read(5..2000).is_err(),
        "range errors",
    )?;
    let msg = Process::new(out_of_range, (a.clone(),)).start()?.join()?;
    ensure(msg.contains("out of range"), msg)?;
    let empty = Array::<f32>::new(0)?;
    ensure(empty.is_empty() && empty.get(0).is_err(), "empty array")
}

fn parallel_sum_over_a_raw_array() -> R {
    let n = 1_000_000;
    let a = RawArray::<f64>::new(n)?;
    // SAFETY: no child exists yet: this is the only access.
    unsafe {
        for (i, x) in a.as_mut_slice().iter_mut().enumerate() {
            *x = i as f64;
        }
    }
    let mut left = Process::new(sum_part, (a.clone(), 0, n / 2)).start()?;
    let mut right = Process::new(sum_part, (a.clone(), n / 2, n)).start()?;
    let total = left.join()? + right.join()?;
    let expect = (n as f64 - 1.0) * n as f64 / 2.0;
    ensure(total == expect, format!("{total} != {expect}"))
}

fn one_lock_for_two_values() -> R {
    let lock = mp_sync::Lock::new()?;
    let a = Value::with_lock(1i32, lock.clone())?;
    let b = Value::with_lock(2i32, lock)?;
    ensure(
        Process::new(shared_lock_pair, (a, b)).start()?.join()?,
        "the lock is shared",
    )
}

fn holder_killed_does_not_deadlock() -> R {
    let v = Value::new(0i32)?;
    let mut p = Process::new(hold_forever, (v.clone(),)).start()?;
    let t = Instant::now();
    while v.get_lock().is_some_and(|l| !l.locked()) {
        ensure(
            t.elapsed() < Duration::from_secs(30),
            "child never took the lock",
        )?;
        std::thread::sleep(Duration::from_millis(5));
    }
    p.kill()?;
    let _ = p.join();
    let r = v.get_lock().map(|l| l.release());
    ensure(
        matches!(r, Some(Err(mp_sync::SyncError::GuardHeld))),
        format!("a dead guard's lock is recovered by taking it, not released: {r:?}"),
    )?;
    match v.lock() {
        Err(died) => {
            let mut g = died.into_inner();
            ensure(*g == 99, "the dead holder's write is visible")?;
            *g = 100;
        }
        Ok(_) => return Err("expected OwnerDied".into()),
    }
    ensure(v.get()? == 100, "usable after recovery")
}

fn data_lock_is_released_only_by_its_guard() -> R {
    let lock = mp_sync::Lock::new()?;
    let v = Value::with_lock(5i32, lock.clone())?;
    let a = Array::<u8>::with_lock(4, lock.clone())?;
    let cond = mp_sync::Condition::with_lock(lock.clone())?;
    // The sequence, in one thread: the lock's release must not free the guard's.
    let mut g1 = v.lock().map_err(|_| "fresh lock")?;
    let r = v.get_lock().map(|l| l.release());
    ensure(
        matches!(r, Some(Err(mp_sync::SyncError::GuardHeld))),
        format!("release under a live guard: {r:?}"),
    )?;
    // Another thread: no release, no wait on a condition over the lock, no second guard.
    let (v2, c2) = (v.clone(), cond.clone());
    let (release, wait, second) = std::thread::spawn(move || {
        (
            format!("{:?}", v2.get_lock().map(|l| l.release())),
            format!("{:?}", c2.wait(Some(Duration::ZERO))),
            v2.get_lock()
                .is_some_and(|l| !matches!(l.try_lock(), Ok(None))),
        )
    })
    .join()
    .map_err(|_| "thread panicked")?;
    ensure(
        release == "Some(Err(GuardHeld))" && wait == "Err(NotOwner)" && !second,
        format!("another thread: release {release}, wait {wait}, second guard {second}"),
    )?;
    // This thread, through the condition: wait would release the guard's lock.
    let r = cond.wait(Some(Duration::ZERO));
    ensure(
        matches!(r, Err(mp_sync::SyncError::GuardHeld)),
        format!("wait under a live guard: {r:?}"),
    )?;
    // Another process.
    let (release_v, release_a, wait, took) =
        Process::new(release_a_guarded_lock, (v.clone(), a.clone(), cond.clone()))
            .start()?
            .join()?;
    ensure(
        release_v == "Some(Err(GuardHeld))"
            && release_a == "Some(Err(GuardHeld))"
            && wait == "Err(NotOwner)"
            && !took,
        format!("in a child: release {release_v} / {release_a}, wait {wait}, took {took}"),
    )?;
    *g1 += 1;
    drop(g1);
    ensure(!lock.locked() && v.get()? == 6, "the guard released it")
}

fn a_lock_that_is_not_the_datas_is_refused() -> R {
    // Swapping the lock's fd for another lock's in a value's wire form would give two
    // locks over one datum (two guards, two `&mut`): refused on receipt.
    for own_lock in [true, false] {
        let v = if own_lock {
            Value::new(1u64)?
        } else {
            Value::with_lock(1u64, mp_sync::Lock::new()?)?
        };
        let (bytes, mut fds) = mp_core::handles::encode(&v)?;
        let (_, other) = mp_core::handles::encode(&mp_sync::Lock::new()?)?;
        ensure(fds.len() == 2, format!("{} fds", fds.len()))?;
        fds.truncate(1);
        fds.extend(other);
        let forged = mp_core::handles::decode::<Value<u64>>(&bytes, fds);
        if let Ok(forged) = forged {
            let g1 = v.lock();
            let g2 = forged.lock();
            return Err(format!(
                "decoded with another lock: two guards at once ({}, {})",
                g1.is_ok(),
                g2.is_ok()
            )
            .into());
        }
        // An array too, and a value with no lock at all (a RawValue's memory).
        let a = Array::<u8>::new(3)?;
        let (bytes, mut fds) = mp_core::handles::encode(&a)?;
        let (_, other) = mp_core::handles::encode(&mp_sync::Lock::new()?)?;
        fds.truncate(1);
        fds.extend(other);
        ensure(
            mp_core::handles::decode::<Array<u8>>(&bytes, fds).is_err(),
            "an array decoded with another lock",
        )?;
        let raw = RawValue::new(1u64)?;
        let (_, raw_fds) = mp_core::handles::encode(&raw)?;
        let (bytes, fds) = mp_core::handles::encode(&v)?;
        let mut swapped = raw_fds;
        swapped.extend(fds.into_iter().skip(1));
        ensure(
            mp_core::handles::decode::<Value<u64>>(&bytes, swapped).is_err(),
            "a raw value's memory decoded as a locked value",
        )?;
    }
    // The genuine pair still travels.
    let v = Value::new(9u64)?;
    let (bytes, fds) = mp_core::handles::encode(&v)?;
    let back = mp_core::handles::decode::<Value<u64>>(&bytes, fds)?;
    ensure(back.get()? == 9, "genuine value decoded")
}

fn nothing_left_in_dev_shm() -> R {
    let before = dev_shm();
    {
        let v = Value::new(5u8)?;
        let a = Array::<u64>::new(4096)?;
        let r = RawArray::<u8>::new(10)?;
        let mut p = Process::new(hold_forever, (Value::new(0i32)?,)).start()?;
        Process::new(set_value, (Value::new(0i32)?, 1))
            .start()?
            .join()?;
        p.kill()?;
        let _ = p.join();
        drop((v, a, r));
    }
    let after = dev_shm();
    let new: Vec<_> = after
        .difference(&before)
        .filter(|n| !n.starts_with("mp_test_"))
        .collect();
    ensure(new.is_empty(), format!("left in /dev/shm: {new:?}"))
}

fn type_checked_on_receipt() -> R {
    let v = Value::new(7u32)?;
    let (bytes, fds) = mp_core::handles::encode(&v)?;
    let e = mp_core::handles::decode::<Value<u64>>(&bytes, fds)
        .err()
        .ok_or("decoded as another type")?;
    ensure(e.to_string().contains("another type"), e.to_string())
}

fn named_segment_travels_by_name() -> R {
    let shm = SharedMemory::create(None, 10_000)?;
    let size = Process::new(
        write_named,
        (
            SharedMemory::attach(shm.name())?,
            "from the child".to_string(),
        ),
    )
    .start()?
    .join()?;
    ensure(size == 10_000, format!("child saw size {size}"))?;
    let mut buf = [0u8; 14];
    shm.read_at(0, &mut buf)?;
    ensure(&buf == b"from the child", "bytes written by the child")?;
    ensure(
        matches!(
            SharedMemory::create(Some(shm.name()), 10),
            Err(ShmError::Exists(_))
        ),
        "create existing",
    )?;
    ensure(
        matches!(SharedMemory::create(None, 0), Err(ShmError::Invalid(_))),
        "size 0",
    )?;
    ensure(
        matches!(
            SharedMemory::attach("mp_test_no_such_segment"),
            Err(ShmError::NotFound(_))
        ),
        "attach missing",
    )?;
    ensure(
        matches!(SharedMemory::attach("bad/name"), Err(ShmError::Invalid(_))),
        "bad name",
    )?;
    ensure(
        shm.read_at(9_999, &mut [0u8; 2]).is_err(),
        "read past the end",
    )?;
    shm.unlink()?;
    ensure(
        matches!(SharedMemory::attach(shm.name()), Err(ShmError::NotFound(_))),
        "attach after unlink",
    )?;
    ensure(
        matches!(shm.unlink(), Err(ShmError::NotFound(_))),
        "second unlink",
    )
}

/// Python's semantics: a segment a child creates and leaves belongs to the tree, not to
/// the child: it outlives the child's normal exit and the parent attaches to it.
fn a_child_segment_outlives_the_child() -> R {
    let name = unique("outlives");
    let own = Process::new(create_and_leave, (name.clone(),))
        .start()?
        .join()??;
    // A tracker of the child's own would be gone (and done) with it.
    for pid in own {
        ensure(
            wait_exit(pid, Duration::from_secs(30)),
            "the child's helper outlived it",
        )?;
    }
    let shm = SharedMemory::attach(&name)
        .map_err(|e| format!("the segment a child created did not outlive the child: {e}"))?;
    ensure(shm.size() == 4096, "real size")?;
    shm.unlink()?;
    ensure(
        !std::path::Path::new("/dev/shm").join(&name).exists(),
        "unlinked",
    )
}

// ---- a process tree of its own -----------------------------------------------------
//
// The root of a tree is a program, not a child: these tests run this binary again with
// `ROOT_ENV` set (after `init()`, `main` runs the scenario instead of the tests). Its
// stdout says what it did; its stderr reaches end of file once every process of its
// tree is gone, the tracker included (which inherits it), so the test waits on that.

const ROOT_ENV: &str = "MP_SHM_TEST_ROOT";
/// The bound on every wait for a root (never reached unless something hangs).
const ROOT_WAIT: Duration = Duration::from_secs(60);

struct Root {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::mpsc::Receiver<String>,
    /// The readers of stdout and stderr: joined by `finish`, so that a test under fork
    /// that comes next runs in a process with one thread.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Root {
    fn start(scenario: &str) -> Result<Root, Failed> {
        use std::io::{BufRead, Read};
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe()?)
            .env(ROOT_ENV, scenario)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let (out, mut err) = (out.ok_or("no stdout")?, err.ok_or("no stderr")?);
        let (ltx, lines) = std::sync::mpsc::channel();
        let out = std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = ltx.send(l);
            }
        });
        let (etx, stderr) = std::sync::mpsc::channel();
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            let _ = etx.send(s);
        });
        Ok(Root {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            readers: vec![out, err],
        })
    }

    /// The root's report: the words of its next stdout line after "ok".
    fn report(&mut self) -> Result<Vec<String>, Failed> {
        let line = match self.lines.recv_timeout(ROOT_WAIT) {
            Ok(l) => l,
            Err(_) => {
                let _ = self.child.kill();
                let err = self.stderr.recv_timeout(ROOT_WAIT).unwrap_or_default();
                return Err(format!("the root said nothing; stderr: {err}").into());
            }
        };
        let mut words = line.split(' ').map(str::to_string);
        match words.next().as_deref() {
            Some("ok") => Ok(words.collect()),
            _ => Err(format!("root: {line}").into()),
        }
    }

    fn tell(&mut self, line: &str) -> R {
        use std::io::Write;
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")?;
        Ok(())
    }

    /// Waits until every process of the tree is gone (stderr's end of file); its stderr.
    fn finish(mut self) -> Result<String, Failed> {
        drop(self.stdin.take());
        let err = self.stderr.recv_timeout(ROOT_WAIT);
        if err.is_err() {
            let _ = self.child.kill();
        }
        let status = self.child.wait()?;
        let err = err.map_err(|_| format!("the tree outlived its root ({status}) by a minute"))?;
        // The same processes held stdout: its reader is at end of file too, or nearly.
        loop {
            match self.lines.recv_timeout(ROOT_WAIT) {
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err("stdout stayed open a minute after stderr closed".into())
                }
            }
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(err)
    }
}

fn exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

/// After a root is gone: every one of `names` is gone too, and its stderr warned about
/// each (the tracker's cleanup); removes what is left, in any case.
fn cleaned_and_warned(names: &[String], stderr: &str) -> R {
    let left: Vec<&String> = names.iter().filter(|n| exists(n)).collect();
    for n in &left {
        let _ = rustix::shm::unlink(format!("/{n}").as_str());
    }
    ensure(
        left.is_empty(),
        format!("left in /dev/shm after the tree ended: {left:?}"),
    )?;
    let unwarned: Vec<&String> = names
        .iter()
        .filter(|n| {
            !stderr
                .lines()
                .any(|l| l.contains("WARN") && l.contains(n.as_str()))
        })
        .collect();
    ensure(
        unwarned.is_empty(),
        format!("no warning named {unwarned:?}; stderr: {stderr}"),
    )
}

/// Root scenario: a child creates `a` and exits normally, another creates `b` and is
/// killed; both survive their creators (the root attaches to each); then the root exits
/// normally ("exit") or waits to be killed ("kill").
fn root_children_create() -> Result<String, String> {
    let (a, b) = (unique("left_by_child"), unique("killed_child"));
    let own = Process::new(create_and_leave, (a.clone(),))
        .start()
        .and_then(|mut p| p.join())
        .map_err(|e| e.to_string())??;
    for pid in own {
        if !wait_exit(pid, Duration::from_secs(30)) {
            return Err("the child's helper outlived it".into());
        }
    }
    let ready = mp_sync::Event::new().map_err(|e| e.to_string())?;
    let mut p = Process::new(create_and_wait, (b.clone(), 600, ready.clone()))
        .start()
        .map_err(|e| e.to_string())?;
    let created = ready.wait(Some(Duration::from_secs(30)));
    let _ = p.kill();
    let _ = p.join();
    if !created {
        return Err("the second child did not create its segment".into());
    }
    for n in [&a, &b] {
        SharedMemory::attach(n)
            .map_err(|e| format!("{n} did not outlive the child that created it: {e}"))?;
    }
    Ok(format!("{a} {b}"))
}

/// Root scenario: the root creates `c`, a child unlinks it; the root then waits for a
/// line on stdin and exits.
fn root_child_unlinks() -> Result<String, String> {
    let c = unique("unlinked_by_child");
    let shm = SharedMemory::create(Some(&c), 4096).map_err(|e| e.to_string())?;
    Process::new(unlink_named, (c.clone(),))
        .start()
        .and_then(|mut p| p.join())
        .map_err(|e| e.to_string())??;
    drop(shm);
    Ok(c)
}

/// Root scenario: children at once each create segments and unlink half of them, all
/// through the one tracker; the root attaches to those left. Reports the names left and
/// the names unlinked.
fn root_many_children() -> Result<String, String> {
    const CHILDREN: u32 = 4;
    const EACH: u32 = 24;
    let prefixes: Vec<String> = (0..CHILDREN).map(|c| unique(&format!("many{c}"))).collect();
    let mut ps = Vec::new();
    for p in &prefixes {
        ps.push(
            Process::new(create_many, (p.clone(), EACH))
                .start()
                .map_err(|e| e.to_string())?,
        );
    }
    for mut p in ps {
        let own = p.join().map_err(|e| e.to_string())??;
        if !own.is_empty() {
            return Err(format!("a child started trackers of its own: {own:?}"));
        }
    }
    let (mut left, mut gone) = (Vec::new(), Vec::new());
    for p in &prefixes {
        for i in 0..EACH {
            let name = format!("{p}_{i}");
            if i % 2 == 0 {
                gone.push(name);
            } else {
                SharedMemory::attach(&name).map_err(|e| format!("{name}: {e}"))?;
                left.push(name);
            }
        }
    }
    Ok(format!("{} / {}", left.join(" "), gone.join(" ")))
}

/// Runs a root scenario (this process is a tree's root): prints "ok ..." or "err ...",
/// then, for the scenarios that say so, waits for a line on stdin (or for SIGKILL).
fn root_main(scenario: &str) -> i32 {
    let r = match scenario {
        "exit" | "kill" => root_children_create(),
        "unlink" => root_child_unlinks(),
        "many" => root_many_children(),
        "tracker" => {
            let name = unique("tracker_start");
            tracker_facts(name.clone()).map(|(pid, comm, blocked, pending)| {
                format!("{pid} {comm} {blocked} {pending} {name}")
            })
        }
        "restart" => {
            let (a, b) = (unique("before_death"), unique("after_death"));
            kill_tracker_then_create(a.clone(), b.clone())
                .map(|(old, new)| format!("{old} {new} {a} {b}"))
        }
        other => Err(format!("no scenario {other}")),
    };
    match &r {
        Ok(words) => println!("ok {words}"),
        Err(e) => println!("err {}", e.replace('\n', " ")),
    }
    if matches!(scenario, "kill" | "unlink") {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    i32::from(r.is_err())
}

/// A child's segment survives it (a normal exit or SIGKILL) and is cleaned, with a
/// warning naming it, when the tree's root exits normally.
fn root_exit_cleans_and_warns() -> R {
    let mut root = Root::start("exit")?;
    let names = root.report();
    let stderr = root.finish()?;
    cleaned_and_warned(&names?, &stderr)
}

/// As above, the root being killed with SIGKILL.
fn root_killed_cleans_and_warns() -> R {
    let mut root = Root::start("kill")?;
    let names = root.report();
    root.child.kill()?;
    let stderr = root.finish()?;
    cleaned_and_warned(&names?, &stderr)
}

/// Children at once share the one tracker: each message arrives whole, whoever sent it.
/// When the root exits, what they left is cleaned and warned about, and nothing that a
/// child unlinked is named.
fn many_children_share_one_tracker() -> R {
    let mut root = Root::start("many")?;
    let report = root.report();
    let stderr = root.finish()?;
    let report = report?;
    let mut halves = report.split(|w| w == "/");
    let (left, gone) = (halves.next().unwrap_or(&[]), halves.next().unwrap_or(&[]));
    ensure(
        left.len() == 48 && gone.len() == 48,
        format!("report: {report:?}"),
    )?;
    cleaned_and_warned(left, &stderr)?;
    let named: Vec<&String> = gone
        .iter()
        .filter(|n| {
            stderr
                .split_whitespace()
                .any(|w| w == format!("segment={n:?}"))
        })
        .collect();
    ensure(
        named.is_empty(),
        format!("warned about segments a child unlinked: {named:?}"),
    )
}

/// A child's unlink unregisters the segment from the tree (Python's semantics): when the
/// root exits, its tracker leaves alone a new segment of the same name (made here, in
/// another tree).
fn a_segment_a_child_unlinks_is_forgotten() -> R {
    let mut root = Root::start("unlink")?;
    let names = root.report()?;
    let [c] = &names[..] else {
        return Err(format!("report: {names:?}").into());
    };
    let mine = SharedMemory::create(Some(c), 4096)?;
    root.tell("go")?;
    let stderr = root.finish()?;
    let survived = exists(c);
    let _ = mine.unlink();
    ensure(
        survived,
        format!("the root's tracker unlinked {c}, which a child had unlinked and another tree made again; stderr: {stderr}"),
    )
}

/// The tracker is started by exec (not forked from the creating thread), with SIGINT
/// and SIGTERM blocked from its start; it ends once its tree is gone, cleaning up.
fn tracker_is_exec_started_with_signals_blocked() -> R {
    let mut root = Root::start("tracker")?;
    let report = root.report();
    let stderr = root.finish()?;
    let report = report?;
    let [_, comm, blocked, pending, name] = &report[..] else {
        return Err(format!("report: {report:?}").into());
    };
    let (blocked, pending): (u64, u64) = (blocked.parse()?, pending.parse()?);
    let (int, term) = (sig_bit(libc::SIGINT), sig_bit(libc::SIGTERM));
    ensure(
        comm != "shm-creator",
        "the tracker was forked from the creating thread (it carries its name), not started by exec",
    )?;
    ensure(
        blocked & int != 0 && blocked & term != 0,
        format!("SIGINT and SIGTERM not blocked in the tracker: SigBlk {blocked:x}"),
    )?;
    ensure(
        pending & int != 0 && pending & term != 0,
        format!("SIGINT and SIGTERM sent right after start were not held pending: {pending:x}"),
    )?;
    // Still serving when its root exited: it cleaned up, warned and left (stderr's end
    // of file).
    cleaned_and_warned(std::slice::from_ref(name), &stderr)
}

/// A tracker killed with SIGKILL is replaced at the next create, and the new one cleans
/// every segment, the older ones included, when the tree ends.
fn a_dead_tracker_is_replaced_and_nothing_leaks() -> R {
    let mut root = Root::start("restart")?;
    let report = root.report();
    let stderr = root.finish()?;
    let report = report?;
    let [old, new, a, b] = &report[..] else {
        return Err(format!("report: {report:?}").into());
    };
    ensure(old != new, "a new tracker")?;
    let names = [a.clone(), b.clone()];
    let left: Vec<&String> = names.iter().filter(|n| exists(n)).collect();
    for n in &left {
        let _ = rustix::shm::unlink(format!("/{n}").as_str());
    }
    ensure(
        left.is_empty(),
        format!("segments left behind: {left:?}; stderr: {stderr}"),
    )
}

fn random_names_fail_without_randomness() -> R {
    let mut p = Process::new(create_without_randomness, ()).start()?;
    let r = p.join_timeout(Duration::from_secs(30));
    let _ = rustix::shm::unlink("/mp_0000000000000000");
    let out = match r {
        Ok(out) => out,
        Err(mp_process::ProcessError::Timeout(_)) => {
            let _ = p.kill();
            let _ = p.join();
            return Err("create(None) looped for ever with getrandom failing".into());
        }
        Err(e) => return Err(e.into()),
    };
    ensure(
        out.starts_with("Err(") && out.contains(" / Err("),
        format!("creates with getrandom failing: {out}"),
    )
}

fn untracked_segment_outlives_its_creator() -> R {
    let name = unique("untracked");
    ensure(
        Process::new(create_untracked, (name.clone(),))
            .start()?
            .join()?,
        "created",
    )?;
    let shm = SharedMemory::attach(&name)?;
    ensure(shm.size() == 4096, "real size")?;
    shm.unlink()?;
    ensure(
        !std::path::Path::new("/dev/shm").join(&name).exists(),
        "unlinked",
    )
}

/// In a child: creates a segment (which talks to the tracker) and unlinks it.
fn create_and_unlink() -> Result<(), String> {
    let s = SharedMemory::create(None, 4096).map_err(|e| format!("create: {e}"))?;
    s.unlink().map_err(|e| format!("unlink: {e}"))
}

/// With threads allowed, a fork never leaves the child the tracker client's lock held by
/// another thread (the child's first shared-memory call would hang).
fn fork_with_threads_inherits_no_held_tracker_lock() -> R {
    use std::sync::atomic::AtomicBool;
    static STOP: AtomicBool = AtomicBool::new(false);
    STOP.store(false, Ordering::SeqCst);
    create_and_unlink()?;
    let busy = std::thread::spawn(|| {
        while !STOP.load(Ordering::Relaxed) {
            let _ = create_and_unlink();
        }
    });
    let bound = Duration::from_secs(20);
    let mut result = Ok(());
    for i in 0..100u32 {
        let got = Process::new(create_and_unlink, ())
            .start_method(mp_process::StartMethod::Fork)
            .allow_fork_with_threads()
            .start()
            .and_then(|mut p| {
                let r = p.join_timeout(bound);
                if r.is_err() {
                    let _ = p.kill();
                    let _ = p.join_timeout(bound);
                }
                r
            });
        if !matches!(got, Ok(Ok(()))) {
            result = Err(format!("child {i}: {got:?}"));
            break;
        }
    }
    STOP.store(true, Ordering::SeqCst);
    let _ = busy.join();
    Ok(result?)
}

fn main() {
    init();
    if let Some(scenario) = std::env::var_os(ROOT_ENV) {
        std::process::exit(root_main(&scenario.to_string_lossy()));
    }
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let tests = vec![
        t("child_write_is_seen", child_write_is_seen),
        t("locked_increments_are_exact", locked_increments_are_exact),
        t("atomic_value_needs_no_lock", atomic_value_needs_no_lock),
        t("structs_and_arrays", structs_and_arrays),
        t(
            "parallel_sum_over_a_raw_array",
            parallel_sum_over_a_raw_array,
        ),
        t("one_lock_for_two_values", one_lock_for_two_values),
        t(
            "holder_killed_does_not_deadlock",
            holder_killed_does_not_deadlock,
        ),
        t("nothing_left_in_dev_shm", nothing_left_in_dev_shm),
        t(
            "data_lock_is_released_only_by_its_guard",
            data_lock_is_released_only_by_its_guard,
        ),
        t(
            "a_lock_that_is_not_the_datas_is_refused",
            a_lock_that_is_not_the_datas_is_refused,
        ),
        t("type_checked_on_receipt", type_checked_on_receipt),
        t(
            "named_segment_travels_by_name",
            named_segment_travels_by_name,
        ),
        t(
            "a_child_segment_outlives_the_child",
            a_child_segment_outlives_the_child,
        ),
        t("root_exit_cleans_and_warns", root_exit_cleans_and_warns),
        t("root_killed_cleans_and_warns", root_killed_cleans_and_warns),
        t(
            "many_children_share_one_tracker",
            many_children_share_one_tracker,
        ),
        t(
            "a_segment_a_child_unlinks_is_forgotten",
            a_segment_a_child_unlinks_is_forgotten,
        ),
        t(
            "untracked_segment_outlives_its_creator",
            untracked_segment_outlives_its_creator,
        ),
        t(
            "tracker_is_exec_started_with_signals_blocked",
            tracker_is_exec_started_with_signals_blocked,
        ),
        t(
            "a_dead_tracker_is_replaced_and_nothing_leaks",
            a_dead_tracker_is_replaced_and_nothing_leaks,
        ),
        t(
            "random_names_fail_without_randomness",
            random_names_fail_without_randomness,
        ),
    ];
    let mut tests = tests;
    if method == mp_process::StartMethod::Fork {
        tests.push(t(
            "fork_with_threads_inherits_no_held_tracker_lock",
            fork_with_threads_inherits_no_held_tracker_lock,
        ));
    }
    libtest_mimic::run(&args, tests).exit();
}
