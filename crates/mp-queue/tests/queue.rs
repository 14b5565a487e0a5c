//! Queue behaviour with real processes, under the start method chosen by
//! `MULTIPROC_START_METHOD` (the xtask runs this binary once per method).
use libtest_mimic::{Arguments, Failed, Trial};
use mp_core::{Handle, SharedRegion};
use mp_process::{get_start_method, init, Process, ProcessError};
use mp_queue::*;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, Write};
use std::os::unix::net::UnixStream;
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

/// Generous bounds: tests never assert speed, only that a timeout is about right.
const LONG: Duration = Duration::from_secs(30);

/// A small xorshift generator seeded from the clock and the pid.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let t = Instant::now().elapsed().as_nanos() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
        Rng(t ^ (u64::from(std::process::id()) << 32) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Counters in shared memory, for what children report beside the queue.
struct Counters {
    region: SharedRegion,
}
impl Counters {
    fn new(n: usize) -> Counters {
        Counters {
            region: SharedRegion::new(n.max(1) * 8).expect("region"),
        }
    }
    fn at(&self, i: usize) -> &AtomicU64 {
        assert!((i + 1) * 8 <= self.region.len());
        // SAFETY: in bounds (checked), 8-aligned in a page-aligned shared mapping that
        // lives as long as `self`; only accessed through atomics.
        unsafe { &*self.region.as_ptr().add(i * 8).cast::<AtomicU64>() }
    }
}
impl Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.region.serialize(s)
    }
}
impl<'de> Deserialize<'de> for Counters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SharedRegion::deserialize(d).map(|region| Counters { region })
    }
}

/// An item that carries its identity and a payload derived from it.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Item {
    producer: u32,
    seq: u64,
    payload: Vec<u8>,
}
impl Item {
    fn new(producer: u32, seq: u64, len: usize) -> Item {
        let payload = (0..len)
            .map(|k| (seq as usize).wrapping_mul(31).wrapping_add(k) as u8)
            .collect();
        Item {
            producer,
            seq,
            payload,
        }
    }
    fn intact(&self) -> bool {
        self.payload
            .iter()
            .enumerate()
            .all(|(k, &b)| b == (self.seq as usize).wrapping_mul(31).wrapping_add(k) as u8)
    }
}

// ---- child targets ----------------------------------------------------------------

fn produce(q: Queue<u64>, from: u64, n: u64) -> Result<(), String> {
    for i in from..from + n {
        q.put(i).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn produce_items(q: Queue<Item>, producer: u32, n: u64, len: usize) -> Result<(), String> {
    for i in 0..n {
        q.put(Item::new(producer, i, len))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn consume_all(q: Queue<Item>) -> Vec<(u32, u64, bool)> {
    q.iter()
        .map(|it| (it.producer, it.seq, it.intact()))
        .collect()
}

fn count_until_closed(q: Queue<u64>) -> (u64, u64) {
    let (mut n, mut sum) = (0, 0);
    for v in &q {
        n += 1;
        sum += v;
    }
    (n, sum)
}

fn get_once(q: Queue<u64>) -> Result<u64, String> {
    q.get().map_err(|e| e.to_string())
}

fn get_blocked_then_closed(q: Queue<u64>) -> String {
    match q.get() {
        Ok(v) => format!("got {v}"),
        Err(e) if e.is_closed() => "closed".into(),
        Err(e) => format!("error {e}"),
    }
}

fn put_after(q: Queue<u64>, ms: u64, v: u64) -> Result<(), String> {
    std::thread::sleep(Duration::from_millis(ms));
    q.put(v).map_err(|e| e.to_string())
}

fn get_after(q: Queue<u64>, ms: u64) -> Result<u64, String> {
    std::thread::sleep(Duration::from_millis(ms));
    q.get().map_err(|e| e.to_string())
}

fn put_big(q: Queue<Vec<u8>>, len: usize) -> Result<(), String> {
    q.put(vec![1, 2, 3]).map_err(|e| e.to_string())?;
    let big: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    q.put(big).map_err(|e| e.to_string())?;
    q.put(vec![4, 5]).map_err(|e| e.to_string())
}

/// Puts a burst and returns at once: the test checks nothing is lost.
fn burst_and_return(q: Queue<Item>, n: u64) -> Result<(), String> {
    for i in 0..n {
        // Mostly small items, some of 100 KiB so that several segments fill.
        let len = if i % 97 == 0 { 100 << 10 } else { 8 };
        q.put(Item::new(7, i, len)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Puts until killed, acknowledging each put in `ack` after it returned.
fn produce_acked(q: Queue<Item>, round: u32, ack: Counters) {
    let mut rng = Rng::new();
    let mut i = 0;
    loop {
        // Small and large (multi-segment) items, so that kills land mid-copy too.
        let len = match rng.below(10) {
            0 => 300 << 10,
            1 => 20 << 10,
            _ => rng.below(64) as usize,
        };
        if q.put(Item::new(round, i, len)).is_err() {
            return;
        }
        i += 1;
        ack.at(0).store(i, Ordering::SeqCst);
    }
}

/// Takes items until killed, counting each id it was given.
fn consume_counted(q: Queue<Item>, counts: Counters) {
    loop {
        match q.get_timeout(Duration::from_secs(20)) {
            Ok(it) => {
                let slot = if it.intact() { it.seq as usize } else { 0 };
                counts.at(slot + 1).fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => return,
        }
    }
}

fn read_file_handle(q: Queue<(String, Handle<std::fs::File>)>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for _ in 0..3 {
        let (name, Handle(mut f)) = q.get().map_err(|e| e.to_string())?;
        f.rewind().map_err(|e| e.to_string())?;
        let mut s = String::new();
        f.read_to_string(&mut s).map_err(|e| e.to_string())?;
        out.push(format!("{name}:{s}"));
    }
    Ok(out)
}

fn send_stream_back(q: Queue<Option<Handle<UnixStream>>>) -> Result<(), String> {
    let (mut a, b) = UnixStream::pair().map_err(|e| e.to_string())?;
    q.put(None).map_err(|e| e.to_string())?;
    q.put(Some(Handle(b))).map_err(|e| e.to_string())?;
    q.put(None).map_err(|e| e.to_string())?;
    a.write_all(b"hello through a queued socket")
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn joinable_worker(q: JoinableQueue<u64>, out: Counters) -> Result<u64, String> {
    let mut n = 0;
    for v in q.iter() {
        std::thread::sleep(Duration::from_micros(200));
        out.at(v as usize).fetch_add(1, Ordering::SeqCst);
        q.task_done().map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

fn simple_producer(q: SimpleQueue<String>, n: u32) -> Result<(), String> {
    for i in 0..n {
        q.put(format!("item {i}")).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn queue_of_queues(outer: Queue<Queue<u64>>) -> Result<u64, String> {
    let inner = outer.get().map_err(|e| e.to_string())?;
    inner.put(41).map_err(|e| e.to_string())?;
    inner.put(1).map_err(|e| e.to_string())?;
    Ok(2)
}

fn receive_wrong_type(q: Queue<String>) -> String {
    q.qsize().to_string()
}

// ---- tests --------------------------------------------------------------------------

fn producer_to_parent_in_order() -> R {
    let q = Queue::new()?;
    let mut p = Process::new(produce, (q.clone(), 0, 50_000)).start()?;
    for i in 0..50_000u64 {
        let v = q.get_timeout(LONG)?;
        ensure(v == i, format!("got {v}, expected {i}"))?;
    }
    p.join()?.map_err(Failed::from)?;
    ensure(q.empty() && q.qsize() == 0, "empty at the end")
}

fn many_producers_many_consumers() -> R {
    let q: Queue<Item> = Queue::new()?;
    let (producers, per) = (3u32, 20_000u64);
    let mut ps = Vec::new();
    for p in 0..producers {
        ps.push(Process::new(produce_items, (q.clone(), p, per, (p as usize) * 7)).start()?);
    }
    let mut cs = Vec::new();
    for _ in 0..2 {
        cs.push(Process::new(consume_all, (q.clone(),)).start()?);
    }
    for mut p in ps {
        p.join()?.map_err(Failed::from)?;
    }
    q.close();
    let mut seen = vec![vec![false; per as usize]; producers as usize];
    for mut c in cs {
        let got = c.join()?;
        let mut last = vec![None::<u64>; producers as usize];
        for (p, s, intact) in got {
            ensure(intact, "payload intact")?;
            let (pi, si) = (p as usize, s as usize);
            ensure(!seen[pi][si], format!("item {p}/{s} delivered twice"))?;
            seen[pi][si] = true;
            // One consumer sees each producer's items in the order they were put.
            ensure(
                last[pi].is_none_or(|l| l < s),
                format!("producer {p}: {s} after {:?}", last[pi]),
            )?;
            last[pi] = Some(s);
        }
    }
    ensure(
        seen.iter().flatten().all(|&b| b),
        "every item delivered exactly once",
    )
}

fn bounded_full_and_empty_with_timeouts() -> R {
    let q: Queue<u64> = Queue::bounded(2)?;
    ensure(q.maxsize() == Some(2) && q.empty() && !q.full(), "fresh")?;
    q.put(1)?;
    q.put_nowait(2)?;
    ensure(q.full() && q.qsize() == 2, "full at maxsize")?;
    let t = Instant::now();
    match q.put_nowait(3) {
        Err(PutError::Full(3)) => {}
        other => return Err(format!("put_nowait on a full queue: {other:?}").into()),
    }
    ensure(
        t.elapsed() < Duration::from_secs(5),
        "put_nowait fails at once",
    )?;
    let t = Instant::now();
    let r = q.put_timeout(4, Duration::from_millis(200));
    let waited = t.elapsed();
    ensure(
        matches!(r, Err(PutError::Full(4))),
        "Full hands the value back",
    )?;
    ensure(
        waited >= Duration::from_millis(190) && waited < LONG,
        format!("timed put waited {waited:?}"),
    )?;
    ensure(
        q.put_with(5, false, Some(LONG)).is_err(),
        "block=false ignores timeout",
    )?;
    // A blocked put is let in when another process takes an item.
    let mut c = Process::new(get_after, (q.clone(), 100)).start()?;
    q.put_timeout(6, LONG)?;
    ensure(
        c.join()?.map_err(Failed::from)? == 1,
        "child took the first item",
    )?;
    ensure(q.get_nowait()? == 2 && q.get()? == 6, "FIFO")?;
    ensure(q.empty() && !q.full(), "empty again")?;
    let t = Instant::now();
    ensure(
        q.get_nowait().is_err_and(|e| e.is_empty()),
        "get_nowait: Empty",
    )?;
    ensure(t.elapsed() < Duration::from_secs(5), "at once")?;
    let t = Instant::now();
    ensure(
        q.get_timeout(Duration::from_millis(200))
            .is_err_and(|e| e.is_empty()),
        "timed get: Empty",
    )?;
    let waited = t.elapsed();
    ensure(
        waited >= Duration::from_millis(190) && waited < LONG,
        format!("timed get waited {waited:?}"),
    )?;
    ensure(
        q.get_with(false, Some(LONG)).is_err_and(|e| e.is_empty()),
        "block=false ignores timeout",
    )
}

fn blocking_get_is_woken_by_another_process() -> R {
    let q: Queue<u64> = Queue::new()?;
    let mut p = Process::new(put_after, (q.clone(), 150, 99)).start()?;
    let t = Instant::now();
    ensure(q.get_timeout(LONG)? == 99, "item from the child")?;
    ensure(t.elapsed() >= Duration::from_millis(100), "it did wait")?;
    p.join()?.map_err(Failed::from)?;
    // And the other way round.
    let mut c = Process::new(get_once, (q.clone(),)).start()?;
    std::thread::sleep(Duration::from_millis(100));
    q.put(7)?;
    ensure(
        c.join()?.map_err(Failed::from)? == 7,
        "child woken by the parent",
    )
}

fn close_semantics() -> R {
    let q: Queue<u64> = Queue::new()?;
    // A consumer blocked in get is woken by the close.
    let mut c = Process::new(get_blocked_then_closed, (q.clone(),)).start()?;
    std::thread::sleep(Duration::from_millis(100));
    let q2: Queue<u64> = Queue::new()?;
    q2.put(1)?;
    q2.put(2)?;
    q2.close();
    q2.close(); // idempotent
    ensure(q2.is_closed(), "closed")?;
    match q2.put(3) {
        Err(PutError::Closed(3)) => {}
        other => return Err(format!("put after close: {other:?}").into()),
    }
    ensure(
        q2.put_nowait(3).is_err_and(|e| e.is_closed()),
        "put_nowait too",
    )?;
    ensure(q2.get()? == 1 && q2.get()? == 2, "items put before close")?;
    ensure(q2.get().is_err_and(|e| e.is_closed()), "then Closed")?;
    ensure(
        q2.get_nowait().is_err_and(|e| e.is_closed()),
        "get_nowait Closed",
    )?;
    ensure(q2.iter().next().is_none(), "iterator ends")?;
    q.close();
    ensure(c.join()? == "closed", "blocked consumer saw the close")
}

fn iterator_ends_when_closed() -> R {
    let q: Queue<u64> = Queue::new()?;
    let mut c = Process::new(count_until_closed, (q.clone(),)).start()?;
    for i in 0..1000 {
        q.put(i)?;
    }
    q.close();
    let (n, sum) = c.join()?;
    ensure(
        n == 1000 && sum == 999 * 500,
        format!("child counted {n}, {sum}"),
    )
}

fn message_of_64_mib() -> R {
    let len = 64 << 20;
    let q: Queue<Vec<u8>> = Queue::new()?;
    let mut p = Process::new(put_big, (q.clone(), len)).start()?;
    ensure(q.get_timeout(LONG)? == [1, 2, 3], "small before")?;
    let big = q.get_timeout(LONG)?;
    ensure(big.len() == len, format!("length {}", big.len()))?;
    ensure(
        big.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "content",
    )?;
    ensure(q.get_timeout(LONG)? == [4, 5], "small after")?;
    p.join()?.map_err(Failed::from)?;
    // Too large for a small queue: refused, value handed back, queue usable.
    let small: Queue<Vec<u8>> = Queue::builder().capacity(1 << 20).build()?;
    match small.put(vec![0u8; 2 << 20]) {
        Err(PutError::TooLarge(v)) => ensure(v.len() == 2 << 20, "value back")?,
        other => return Err(format!("too large: {other:?}").into()),
    }
    small.put(vec![9])?;
    ensure(small.get()? == [9], "still usable")
}

fn small_ring_wraps_many_times() -> R {
    // Two segments of capacity: 40 MB go through it, so segments are recycled over and
    // over, and records straddle segment boundaries.
    let q: Queue<Item> = Queue::builder().capacity(512 << 10).build()?;
    let n = 4000;
    let mut p = Process::new(produce_items, (q.clone(), 3, n, 10_000)).start()?;
    for i in 0..n {
        let it = q.get_timeout(LONG)?;
        ensure(it.seq == i && it.intact(), format!("item {i}: {}", it.seq))?;
    }
    p.join()?.map_err(Failed::from)?;
    // A byte-bounded queue is Full when its capacity is used up.
    let mut k = 0u64;
    loop {
        match q.put_nowait(Item::new(0, k, 10_000)) {
            Ok(()) => k += 1,
            Err(PutError::Full(_)) => break,
            Err(e) => return Err(format!("{e:?}").into()),
        }
        ensure(k < 1000, "a 512 KiB queue must fill up")?;
    }
    ensure(k > 10 && q.qsize() as u64 == k, format!("{k} items fit"))?;
    for i in 0..k {
        ensure(q.get_nowait()?.seq == i, "drained in order")?;
    }
    Ok(())
}

fn nothing_lost_when_producer_returns() -> R {
    let q: Queue<Item> = Queue::new()?;
    let n = 30_000;
    let mut p = Process::new(burst_and_return, (q.clone(), n)).start()?;
    // Join first: the producer is gone before anything is taken.
    p.join()?.map_err(Failed::from)?;
    ensure(
        q.qsize() as u64 == n,
        format!("qsize {} after exit", q.qsize()),
    )?;
    for i in 0..n {
        let it = q.get_nowait()?;
        ensure(it.seq == i && it.intact(), format!("item {i}"))?;
    }
    ensure(q.get_nowait().is_err_and(|e| e.is_empty()), "nothing more")
}

fn producers_killed_in_a_loop() -> R {
    let q: Queue<Item> = Queue::new()?;
    let mut rng = Rng::new();
    let rounds = 25u32;
    for round in 0..rounds {
        let ack = Counters::new(1);
        let p = Process::new(produce_acked, (q.clone(), round, ack.clone_handle()?)).start()?;
        // Let it run until it has acknowledged something, then a little more.
        let t = Instant::now();
        while ack.at(0).load(Ordering::SeqCst) == 0 && t.elapsed() < LONG {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        p.kill()?;
        let mut p = p;
        ensure(
            matches!(p.join(), Err(ProcessError::Signaled(_))),
            "producer killed",
        )?;
        let acked = ack.at(0).load(Ordering::SeqCst);
        let mut got = 0u64;
        loop {
            match q.get_nowait() {
                Ok(it) => {
                    ensure(
                        it.producer == round,
                        format!("round {round}: item of {}", it.producer),
                    )?;
                    ensure(
                        it.seq == got,
                        format!("round {round}: {} after {got}", it.seq),
                    )?;
                    ensure(it.intact(), "payload intact")?;
                    got += 1;
                }
                Err(GetError::Empty) => break,
                Err(e) => return Err(format!("round {round}: {e}").into()),
            }
        }
        // Every acknowledged put arrived once; at most the one in flight besides.
        ensure(
            got == acked || got == acked + 1,
            format!("round {round}: {got} items, {acked} acknowledged"),
        )?;
    }
    // The queue still works, for others too.
    q.put(Item::new(99, 0, 10))?;
    ensure(q.get()?.producer == 99, "usable after the kills")
}

fn consumers_killed_in_a_loop() -> R {
    let q: Queue<Item> = Queue::new()?;
    let n = 20_000u64;
    for i in 0..n {
        q.put(Item::new(0, i, (i % 300) as usize))?;
    }
    // Slot 0 counts corrupt items, slot 1 + id counts deliveries of id.
    let counts = Counters::new(n as usize + 1);
    let mut rng = Rng::new();
    let mut kills = 0u64;
    for _ in 0..30 {
        if q.empty() {
            break;
        }
        let before = q.qsize();
        let c = Process::new(consume_counted, (q.clone(), counts.clone_handle()?)).start()?;
        let t = Instant::now();
        while q.qsize() == before && t.elapsed() < LONG {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        c.kill()?;
        let mut c = c;
        let _ = c.join();
        kills += 1;
    }
    // Take the rest here.
    loop {
        match q.get_nowait() {
            Ok(it) => {
                ensure(it.intact(), "intact")?;
                counts
                    .at(it.seq as usize + 1)
                    .fetch_add(1, Ordering::SeqCst);
            }
            Err(GetError::Empty) => break,
            Err(e) => return Err(e.to_string().into()),
        }
    }
    ensure(counts.at(0).load(Ordering::SeqCst) == 0, "no corrupt item")?;
    let mut missing = 0;
    for i in 0..n {
        match counts.at(i as usize + 1).load(Ordering::SeqCst) {
            0 => missing += 1,
            1 => {}
            k => return Err(format!("item {i} delivered {k} times").into()),
        }
    }
    // A killed consumer loses at most the item it had taken and not yet counted.
    ensure(
        missing <= kills,
        format!("{missing} items missing after {kills} kills"),
    )
}

fn killed_sleeping_consumer_does_not_wedge() -> R {
    let q: Queue<u64> = Queue::new()?;
    // Consumers that die asleep in get, registered as waiters.
    for _ in 0..3 {
        let c = Process::new(get_once, (q.clone(),)).start()?;
        std::thread::sleep(Duration::from_millis(150));
        c.kill()?;
        let mut c = c;
        let _ = c.join();
    }
    // Later consumers are still woken, and the queue still delivers.
    let mut c = Process::new(get_once, (q.clone(),)).start()?;
    std::thread::sleep(Duration::from_millis(100));
    q.put(5)?;
    ensure(
        c.join()?.map_err(Failed::from)? == 5,
        "woken after the kills",
    )?;
    for i in 0..1000 {
        q.put(i)?;
    }
    for i in 0..1000 {
        ensure(q.get_timeout(LONG)? == i, "in order")?;
    }
    ensure(q.empty(), "empty")
}

#[derive(Debug, PartialEq)]
struct Picky(u32);
impl Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 is unlucky"));
        }
        s.serialize_u32(self.0)
    }
}
impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(Picky)
    }
}

fn serialize_failure_is_the_callers() -> R {
    let q: Queue<Picky> = Queue::bounded(10)?;
    q.put(Picky(1))?;
    match q.put(Picky(13)) {
        Err(PutError::Encode(v, e)) => {
            ensure(v == Picky(13), "value back")?;
            ensure(e.to_string().contains("unlucky"), format!("reason: {e}"))?;
        }
        other => return Err(format!("{other:?}").into()),
    }
    ensure(q.qsize() == 1, "qsize unchanged")?;
    q.put(Picky(2))?;
    ensure(q.get()? == Picky(1) && q.get()? == Picky(2), "queue usable")?;
    ensure(q.empty(), "empty")
}

fn fd_carrying_values() -> R {
    let q: Queue<(String, Handle<std::fs::File>)> = Queue::new()?;
    let mut c = Process::new(read_file_handle, (q.clone(),)).start()?;
    for name in ["a", "b", "c"] {
        let mut f = tempfile(name)?;
        write!(f, "content of {name}")?;
        q.put((name.to_string(), Handle(f)))?;
    }
    let got = c.join()?.map_err(Failed::from)?;
    ensure(
        got == ["a:content of a", "b:content of b", "c:content of c"],
        format!("{got:?}"),
    )?;
    // A socket end from a child, between items without fds.
    let q: Queue<Option<Handle<UnixStream>>> = Queue::new()?;
    let mut p = Process::new(send_stream_back, (q.clone(),)).start()?;
    ensure(q.get_timeout(LONG)?.is_none(), "plain item first")?;
    let Some(Handle(mut s)) = q.get_timeout(LONG)? else {
        return Err("expected a stream".into());
    };
    ensure(q.get_timeout(LONG)?.is_none(), "plain item after")?;
    p.join()?.map_err(Failed::from)?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    ensure(text == "hello through a queued socket", text)
}

fn tempfile(name: &str) -> std::io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("mpq-{}-{name}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

fn joinable_queue_join_and_task_done() -> R {
    let q: JoinableQueue<u64> = JoinableQueue::new()?;
    let n = 300u64;
    let out = Counters::new(n as usize);
    let mut ws = Vec::new();
    for _ in 0..2 {
        ws.push(Process::new(joinable_worker, (q.clone(), out.clone_handle()?)).start()?);
    }
    for i in 0..n {
        q.put(i)?;
    }
    ensure(q.unfinished_tasks() > 0, "unfinished")?;
    q.join();
    ensure(q.unfinished_tasks() == 0, "all done after join")?;
    for i in 0..n {
        ensure(
            out.at(i as usize).load(Ordering::SeqCst) == 1,
            format!("task {i}"),
        )?;
    }
    q.close();
    let mut total = 0;
    for mut w in ws {
        total += w.join()?.map_err(Failed::from)?;
    }
    ensure(total == n, "workers processed everything")?;
    ensure(
        matches!(q.task_done(), Err(QueueError::TaskDoneTooManyTimes)),
        "one task_done too many",
    )?;
    let q2: JoinableQueue<u64> = JoinableQueue::new()?;
    q2.put(1)?;
    let t = Instant::now();
    ensure(
        !q2.join_timeout(Duration::from_millis(100)),
        "join times out",
    )?;
    ensure(
        t.elapsed() >= Duration::from_millis(90),
        "after about the timeout",
    )?;
    q2.get()?;
    q2.task_done()?;
    ensure(q2.join_timeout(LONG), "joined")
}

fn simple_queue_across_processes() -> R {
    let q: SimpleQueue<String> = SimpleQueue::new()?;
    ensure(q.empty(), "empty")?;
    let mut p = Process::new(simple_producer, (q.clone(), 500)).start()?;
    for i in 0..500 {
        ensure(q.get()? == format!("item {i}"), "order")?;
    }
    p.join()?.map_err(Failed::from)?;
    q.put("last".into())?;
    q.close();
    let rest: Vec<String> = q.iter().collect();
    ensure(rest == ["last"], format!("{rest:?}"))
}

fn queues_travel_inside_queues() -> R {
    let outer: Queue<Queue<u64>> = Queue::new()?;
    let inner: Queue<u64> = Queue::new()?;
    let mut p = Process::new(queue_of_queues, (outer.clone(),)).start()?;
    outer.put(inner.clone())?;
    ensure(p.join()?.map_err(Failed::from)? == 2, "child used it")?;
    ensure(
        inner.get()? + inner.get()? == 42,
        "items through the passed queue",
    )?;
    // A queue of another item type is refused on receipt.
    let mut w = Process::new(receive_wrong_type, (Queue::<String>::new()?,)).start()?;
    ensure(w.join()? == "0", "same type is fine")?;
    let wrong = mp_core::handles::encode(&inner)
        .and_then(|(b, f)| mp_core::handles::decode::<Queue<String>>(&b, f));
    ensure(wrong.is_err(), "Queue<u64> is not a Queue<String>")
}

impl Counters {
    fn clone_handle(&self) -> Result<Counters, mp_core::Error> {
        let (b, f) = mp_core::handles::encode(&self.region)?;
        Ok(Counters {
            region: mp_core::handles::decode(&b, f)?,
        })
    }
}

fn main() {
    init();
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let tests = vec![
        t("producer_to_parent_in_order", producer_to_parent_in_order),
        t(
            "many_producers_many_consumers",
            many_producers_many_consumers,
        ),
        t(
            "bounded_full_and_empty_with_timeouts",
            bounded_full_and_empty_with_timeouts,
        ),
        t(
            "blocking_get_is_woken_by_another_process",
            blocking_get_is_woken_by_another_process,
        ),
        t("close_semantics", close_semantics),
        t("iterator_ends_when_closed", iterator_ends_when_closed),
        t("message_of_64_mib", message_of_64_mib),
        t("small_ring_wraps_many_times", small_ring_wraps_many_times),
        t(
            "nothing_lost_when_producer_returns",
            nothing_lost_when_producer_returns,
        ),
        t("producers_killed_in_a_loop", producers_killed_in_a_loop),
        t("consumers_killed_in_a_loop", consumers_killed_in_a_loop),
        t(
            "killed_sleeping_consumer_does_not_wedge",
            killed_sleeping_consumer_does_not_wedge,
        ),
        t(
            "serialize_failure_is_the_callers",
            serialize_failure_is_the_callers,
        ),
        t("fd_carrying_values", fd_carrying_values),
        t(
            "joinable_queue_join_and_task_done",
            joinable_queue_join_and_task_done,
        ),
        t(
            "simple_queue_across_processes",
            simple_queue_across_processes,
        ),
        t("queues_travel_inside_queues", queues_travel_inside_queues),
    ];
    libtest_mimic::run(&args, tests).exit();
}
