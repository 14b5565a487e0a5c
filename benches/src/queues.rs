//! Queue workloads and their limit (crossbeam-channel between two threads).
use crate::{emit, Opts};
use multiproc::{queue::Queue, queue::SimpleQueue, Process};
use serde_bytes::ByteBuf;
use serde_json::json;
use std::time::Instant;

pub const WORKLOADS: &[crate::Workload] = &[
    ("limit_inprocess_channel", limit_inprocess_channel),
    ("queue_throughput_small", queue_throughput_small),
    ("queue_throughput_1kib", queue_throughput_1kib),
    ("simplequeue_throughput_small", simplequeue_throughput_small),
    ("queue_mpmc", queue_mpmc),
];

const ITEMS: u64 = 200_000;

fn produce(q: Queue<u64>, from: u64, n: u64) -> u64 {
    (from..from + n).take_while(|i| q.put(*i).is_ok()).count() as u64
}

fn produce_kib(q: Queue<ByteBuf>, n: u64) -> u64 {
    let payload = ByteBuf::from(vec![7u8; 1024]);
    (0..n)
        .take_while(|_| q.put(payload.clone()).is_ok())
        .count() as u64
}

fn produce_simple(q: SimpleQueue<u64>, n: u64) -> u64 {
    (0..n).take_while(|i| q.put(*i).is_ok()).count() as u64
}

fn consume(q: Queue<u64>, n: u64) -> u64 {
    (0..n).map_while(|_| q.get().ok()).count() as u64
}

/// Times one run: a producer process started, then `n` items received by the parent.
fn one_run<T>(
    n: u64,
    start: impl FnOnce() -> Option<multiproc::Process<u64>>,
    get: impl Fn() -> Option<T>,
) -> Option<f64> {
    let t = Instant::now();
    let mut p = start()?;
    for _ in 0..n {
        std::hint::black_box(get()?);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    (p.join().ok()? == n).then_some(rate)
}

fn queue_throughput_small(opts: &Opts) {
    let runs: Vec<f64> = (0..opts.runs())
        .filter_map(|_| {
            let q = Queue::<u64>::new().ok()?;
            let q2 = q.clone();
            one_run(
                ITEMS,
                || Process::new(produce, (q2, 0, ITEMS)).start().ok(),
                || q.get().ok(),
            )
        })
        .collect();
    emit(
        "queue_throughput_small",
        json!({"start_method": "spawn", "items": ITEMS}),
        "msgs/s",
        runs,
        opts,
    );
}

fn queue_throughput_1kib(opts: &Opts) {
    let n = ITEMS / 2;
    let runs: Vec<f64> = (0..opts.runs())
        .filter_map(|_| {
            let q = Queue::<ByteBuf>::new().ok()?;
            let q2 = q.clone();
            one_run(
                n,
                || Process::new(produce_kib, (q2, n)).start().ok(),
                || q.get().ok(),
            )
        })
        .collect();
    emit(
        "queue_throughput_1kib",
        json!({"start_method": "spawn", "items": n, "payload": "1 KiB"}),
        "msgs/s",
        runs,
        opts,
    );
}

fn simplequeue_throughput_small(opts: &Opts) {
    let runs: Vec<f64> = (0..opts.runs())
        .filter_map(|_| {
            let q = SimpleQueue::<u64>::new().ok()?;
            let q2 = q.clone();
            one_run(
                ITEMS,
                || Process::new(produce_simple, (q2, ITEMS)).start().ok(),
                || q.get().ok(),
            )
        })
        .collect();
    emit(
        "simplequeue_throughput_small",
        json!({"start_method": "spawn", "items": ITEMS}),
        "msgs/s",
        runs,
        opts,
    );
}

fn queue_mpmc(opts: &Opts) {
    let runs: Vec<f64> = (0..opts.runs())
        .filter_map(|_| {
            let q = Queue::<u64>::new().ok()?;
            let half = ITEMS / 2;
            let t = Instant::now();
            let mut ps = Vec::new();
            for i in 0..2 {
                ps.push(
                    Process::new(produce, (q.clone(), i * half, half))
                        .start()
                        .ok()?,
                );
            }
            let mut cs = Vec::new();
            for _ in 0..2 {
                cs.push(Process::new(consume, (q.clone(), half)).start().ok()?);
            }
            let got: u64 = cs.iter_mut().filter_map(|c| c.join().ok()).sum();
            let rate = ITEMS as f64 / t.elapsed().as_secs_f64();
            for p in &mut ps {
                let _ = p.join();
            }
            (got == ITEMS).then_some(rate)
        })
        .collect();
    emit(
        "queue_mpmc",
        json!({"start_method": "spawn", "producers": 2, "consumers": 2, "items": ITEMS}),
        "msgs/s",
        runs,
        opts,
    );
}

/// The same 200k small integers through crossbeam-channel between two threads.
fn limit_inprocess_channel(opts: &Opts) {
    let runs = (0..opts.runs())
        .map(|_| {
            let (tx, rx) = crossbeam_channel::unbounded::<u64>();
            let t = Instant::now();
            let h = std::thread::spawn(move || {
                for i in 0..ITEMS {
                    let _ = tx.send(i);
                }
            });
            for _ in 0..ITEMS {
                let _ = std::hint::black_box(rx.recv());
            }
            let _ = h.join();
            ITEMS as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    emit(
        "limit_inprocess_channel",
        json!({"items": ITEMS, "for": "queue_*"}),
        "msgs/s",
        runs,
        opts,
    );
}
