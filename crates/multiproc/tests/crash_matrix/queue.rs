//! A queue producer killed mid-put and a consumer killed mid-get: every item whose put
//! returned is delivered exactly once (a consumer killed between taking an item and
//! returning it loses that one item, as documented), in order, intact, and the queue
//! stays usable for the survivor. In every other run, every third item carries an fd
//! (a memfd holding the item's index), so the side channel that carries fds beside the
//! ring is killed mid-put and mid-get too: an item never arrives with another's fd.
use crate::matrix::{Ctx, RunResult, LONG};
use multiproc::{Event, Handle, Process, ProcessError, Queue, Value};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// An item: its index, bytes whose length and content follow from it (0 to 3000 bytes,
/// so records cross the ring's segments at varied offsets), and perhaps an fd.
type Item = (u64, Vec<u8>, Option<Handle<File>>);

fn bytes(i: u64) -> Vec<u8> {
    vec![i as u8; (i.wrapping_mul(7919) % 3001) as usize]
}

fn carries_fd(i: u64, with_fds: bool) -> bool {
    with_fds && i % 3 == 0 && i != SENTINEL
}

fn item(i: u64, with_fds: bool) -> Result<Item, String> {
    let fd = if carries_fd(i, with_fds) {
        let fd = rustix::fs::memfd_create("crash-matrix-item", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| e.to_string())?;
        let f = File::from(fd);
        f.write_all_at(&i.to_le_bytes(), 0)
            .map_err(|e| e.to_string())?;
        Some(Handle(f))
    } else {
        None
    };
    Ok((i, bytes(i), fd))
}

fn intact(it: &Item, with_fds: bool) -> bool {
    let fd_ok = match &it.2 {
        None => !carries_fd(it.0, with_fds),
        Some(Handle(f)) => {
            let mut b = [0u8; 8];
            carries_fd(it.0, with_fds)
                && f.read_exact_at(&mut b, 0).is_ok()
                && u64::from_le_bytes(b) == it.0
        }
    };
    fd_ok && it.1 == bytes(it.0)
}

/// Items the producer puts at most (it is killed long before).
const MAX_PUTS: u64 = 20_000;
/// The end marker the survivor puts after the kill.
const SENTINEL: u64 = u64::MAX;

/// Puts items 0, 1, ...; after each put returned, stores how many did; says when `k`
/// did; then parks until killed.
fn producer(
    q: Queue<Item>,
    acked: Value<AtomicU64>,
    reached: Event,
    k: u64,
    with_fds: bool,
) -> Result<(), String> {
    for i in 0..MAX_PUTS {
        q.put(item(i, with_fds)?).map_err(|e| e.to_string())?;
        acked.store(i + 1, SeqCst);
        if i + 1 == k {
            reached.set();
        }
    }
    // Never set: the wait is only a bounded park.
    let _ = Event::new().map(|e| e.wait(Some(2 * LONG)));
    Err("the producer was never killed".into())
}

/// Takes the survivor's view: everything the queue delivers now, without waiting.
fn drain(q: &Queue<Item>) -> Result<Vec<Item>, String> {
    let mut got = Vec::new();
    loop {
        match q.get_nowait() {
            Ok(it) => got.push(it),
            Err(e) if e.is_empty() => return Ok(got),
            Err(e) => return Err(format!("get after the kill: {e}")),
        }
    }
}

/// Checks that `got` is `from..to` then the sentinel, each item intact.
fn check_run(
    got: &[Item],
    with_fds: bool,
    from: u64,
    to_min: u64,
    to_max: u64,
) -> Result<u64, String> {
    let (last, items) = got
        .split_last()
        .ok_or("nothing delivered, not even the sentinel")?;
    if last.0 != SENTINEL {
        return Err(format!("the last item is {}, not the sentinel", last.0));
    }
    for (n, it) in items.iter().enumerate() {
        if it.0 != from + n as u64 {
            return Err(format!(
                "item {} delivered where {} was due (duplicate or loss)",
                it.0,
                from + n as u64
            ));
        }
        if !intact(it, with_fds) {
            return Err(format!("item {} arrived damaged or with a wrong fd", it.0));
        }
    }
    let to = from + items.len() as u64;
    if to < to_min || to > to_max {
        return Err(format!(
            "delivered up to {to}, expected {to_min}..={to_max} (acknowledged puts)"
        ));
    }
    Ok(to)
}

/// After a kill: the queue is repaired by the survivor's next operations and usable.
fn survivor_carries_on(q: &Queue<Item>) -> Result<Vec<Item>, String> {
    let mut got = drain(q)?;
    q.put_timeout((SENTINEL, bytes(SENTINEL), None), LONG)
        .map_err(|e| format!("put after the kill: {e}"))?;
    got.extend(drain(q)?);
    if !q.empty() || q.qsize() != 0 {
        return Err(format!("qsize {} after draining", q.qsize()));
    }
    Ok(got)
}

pub fn producer_scenario(ctx: &mut Ctx) -> RunResult {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let q = Queue::<Item>::new().map_err(|e| s(&e))?;
    let acked = Value::new(AtomicU64::new(0)).map_err(|e| s(&e))?;
    let reached = Event::new().map_err(|e| s(&e))?;
    let k = ctx.rng.range(1, 500);
    let with_fds = ctx.run % 2 == 1;
    let mut p = Process::new(
        producer,
        (q.clone(), acked.clone(), reached.clone(), k, with_fds),
    )
    .start()
    .map_err(|e| s(&e))?;
    let ready = reached.wait(Some(LONG));
    std::thread::sleep(ctx.rng.delay(3000));
    let _ = p.kill();
    let killed = p.join_timeout(LONG);
    if !ready {
        return Err(format!("the producer never reached put {k}: {killed:?}"));
    }
    match killed {
        Err(ProcessError::Signaled(9)) => {}
        other => return Err(format!("producer: expected SIGKILL, got {other:?}")),
    }
    let acked = acked.load(SeqCst);
    let got = survivor_carries_on(&q)?;
    // Every acknowledged put, and perhaps the one in flight (its commit completed by
    // the survivor's put), each once.
    let to = check_run(&got, with_fds, 0, acked, acked + 1)?;
    ctx.note(if to > acked {
        "in-flight put delivered"
    } else {
        "in-flight put dropped"
    });
    Ok(())
}

/// Takes items, checking each is the next one and intact; stores how many it took;
/// says when it took `k`; then waits (for ever, until killed) for more.
fn consumer(
    q: Queue<Item>,
    taken: Value<AtomicU64>,
    reached: Event,
    k: u64,
    with_fds: bool,
) -> Result<(), String> {
    let mut next = 0u64;
    loop {
        let it = q.get_timeout(2 * LONG).map_err(|e| e.to_string())?;
        if it.0 != next || !intact(&it, with_fds) {
            return Err(format!("consumer got item {} where {next} was due", it.0));
        }
        next += 1;
        taken.store(next, SeqCst);
        if next == k {
            reached.set();
        }
    }
}

pub fn consumer_scenario(ctx: &mut Ctx) -> RunResult {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let q = Queue::<Item>::new().map_err(|e| s(&e))?;
    let taken = Value::new(AtomicU64::new(0)).map_err(|e| s(&e))?;
    let reached = Event::new().map_err(|e| s(&e))?;
    let with_fds = ctx.run % 2 == 1;
    // Fd-carrying items in flight are bounded by the side channel's buffer (a few
    // hundred): fewer of them, so that these puts never wait.
    let n = if with_fds {
        ctx.rng.range(100, 400)
    } else {
        ctx.rng.range(300, 1200)
    };
    for i in 0..n {
        q.put_timeout(item(i, with_fds)?, LONG).map_err(|e| s(&e))?;
    }
    let k = ctx.rng.range(1, n / 2);
    let mut c = Process::new(
        consumer,
        (q.clone(), taken.clone(), reached.clone(), k, with_fds),
    )
    .start()
    .map_err(|e| s(&e))?;
    let ready = reached.wait(Some(LONG));
    std::thread::sleep(ctx.rng.delay(3000));
    let _ = c.kill();
    let killed = c.join_timeout(LONG);
    if !ready {
        return Err(format!("the consumer never reached get {k}: {killed:?}"));
    }
    match killed {
        Err(ProcessError::Signaled(9)) => {}
        other => return Err(format!("consumer: expected SIGKILL, got {other:?}")),
    }
    let taken = taken.load(SeqCst);
    let got = survivor_carries_on(&q)?;
    // The survivor gets the rest: from `taken`, or from `taken + 1` if the consumer
    // was killed holding an item it had taken (that one is lost).
    let from = got.first().map(|it| it.0).unwrap_or(SENTINEL);
    let from = if from == SENTINEL { n } else { from };
    if from != taken && from != taken + 1 {
        return Err(format!(
            "the consumer acknowledged {taken} items, the survivor's first is {from}"
        ));
    }
    check_run(&got, with_fds, from, n, n)?;
    ctx.note(if from > taken {
        "item in flight lost"
    } else if taken == n {
        "killed waiting"
    } else {
        "nothing in flight"
    });
    Ok(())
}
