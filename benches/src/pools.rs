//! Pool workloads and their limit (rayon over the same items).
use crate::{emit, per_call, Opts};
use multiproc::Pool;
use serde_json::json;
use std::time::Instant;

pub const WORKLOADS: &[crate::Workload] = &[
    ("pool_map_trivial", pool_map_trivial),
    ("limit_rayon_map", limit_rayon_map),
    ("pool_map_cpu", pool_map_cpu),
    ("pool_apply_async_latency", |o| {
        crate::ipc::pinned_and_not(o, pool_apply_async_latency)
    }),
];

fn identity(x: u64) -> u64 {
    x
}

/// A CPU-bound task of about a millisecond: the same arithmetic as the Python twin.
pub fn burn(seed: u64) -> u64 {
    let mut x = seed.wrapping_add(1);
    let mut acc = 0u64;
    for _ in 0..400_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc = acc.wrapping_add(x % 1000);
    }
    acc
}

fn pool(opts: &Opts) -> Option<Pool> {
    let _ = opts;
    Pool::builder().processes(2).build().ok()
}

fn pool_map_trivial(opts: &Opts) {
    let Some(p) = pool(opts) else { return };
    let _ = p.map(identity, 0..1000u64); // warm up
    for (n, chunksize) in [(100_000u64, None), (10_000u64, Some(1usize))] {
        let runs: Vec<f64> = (0..opts.runs())
            .filter_map(|_| {
                let t = Instant::now();
                let out = match chunksize {
                    None => p.map(identity, 0..n),
                    Some(c) => p.map_with_chunksize(identity, 0..n, c),
                }
                .ok()?;
                let rate = n as f64 / t.elapsed().as_secs_f64();
                (out.len() as u64 == n && out.last() == Some(&(n - 1))).then_some(rate)
            })
            .collect();
        let cs = chunksize.map_or(json!("default"), |c| json!(c));
        emit(
            "pool_map_trivial",
            json!({"start_method": "spawn", "processes": 2, "items": n, "chunksize": cs}),
            "items/s",
            runs,
            opts,
        );
    }
}

const CPU_ITEMS: u64 = 64;

fn serial_time() -> f64 {
    let t = Instant::now();
    let s: u64 = (0..CPU_ITEMS).map(burn).fold(0, u64::wrapping_add);
    std::hint::black_box(s);
    t.elapsed().as_secs_f64()
}

fn pool_map_cpu(opts: &Opts) {
    let Some(p) = pool(opts) else { return };
    let _ = p.map(burn, 0..4u64);
    let runs: Vec<f64> = (0..opts.runs())
        .filter_map(|_| {
            let serial = serial_time();
            let t = Instant::now();
            let out = p.map(burn, 0..CPU_ITEMS).ok()?;
            let parallel = t.elapsed().as_secs_f64();
            std::hint::black_box(out);
            Some(serial / parallel)
        })
        .collect();
    emit(
        "pool_map_cpu",
        json!({"start_method": "spawn", "processes": 2, "items": CPU_ITEMS}),
        "x (serial/parallel)",
        runs,
        opts,
    );
}

fn limit_rayon_map(opts: &Opts) {
    use rayon::prelude::*;
    let Ok(tp) = rayon::ThreadPoolBuilder::new().num_threads(2).build() else {
        return;
    };
    let runs = (0..opts.runs())
        .map(|_| {
            let serial = serial_time();
            let t = Instant::now();
            let out: Vec<u64> = tp.install(|| (0..CPU_ITEMS).into_par_iter().map(burn).collect());
            let parallel = t.elapsed().as_secs_f64();
            std::hint::black_box(out);
            serial / parallel
        })
        .collect();
    emit(
        "limit_rayon_map",
        json!({"threads": 2, "items": CPU_ITEMS, "for": "pool_map_cpu"}),
        "x (serial/parallel)",
        runs,
        opts,
    );
}

fn pool_apply_async_latency(opts: &Opts, pinned: bool) {
    let Some(p) = pool(opts) else { return };
    let n = if opts.quick { 1000 } else { 10_000 };
    let runs = (0..opts.runs())
        .map(|_| {
            per_call(n, || {
                if let Ok(mut r) = p.apply_async(identity, (7,)) {
                    let _ = std::hint::black_box(r.get());
                }
            }) * 1e6
        })
        .collect();
    let pinned = pinned || opts.pin.is_some();
    emit(
        "pool_apply_async_latency",
        json!({"start_method": "spawn", "processes": 2, "pinned": pinned}),
        "us/call",
        runs,
        opts,
    );
}
