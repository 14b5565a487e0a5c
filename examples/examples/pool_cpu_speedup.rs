//! A CPU-bound map, serially and over a Pool of every CPU: the speedup is what
//! processes buy (and what Python's GIL forbids threads).
use multiproc::{cpu_count, Pool};
use std::time::Instant;

/// About ten milliseconds of integer work.
fn collatz_steps(seed: u64) -> u64 {
    let mut total = 0;
    for start in seed * 20_000 + 1..(seed + 1) * 20_000 {
        let mut n = start;
        while n != 1 {
            n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
            total += 1;
        }
    }
    total
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let items: Vec<u64> = (0..48).collect();
    let t = Instant::now();
    let serial: Vec<u64> = items.iter().map(|&s| collatz_steps(s)).collect();
    let serial_time = t.elapsed();

    let pool = Pool::builder().build()?;
    pool.map(collatz_steps, [0u64])?; // workers started and warm
    let t = Instant::now();
    let parallel = pool.map(collatz_steps, items)?;
    let parallel_time = t.elapsed();

    anyhow::ensure!(serial == parallel, "results differ");
    println!(
        "{} items: serial {:.0} ms, pool of {} processes {:.0} ms: {:.2}x speedup",
        serial.len(),
        serial_time.as_secs_f64() * 1e3,
        cpu_count(),
        parallel_time.as_secs_f64() * 1e3,
        serial_time.as_secs_f64() / parallel_time.as_secs_f64()
    );
    Ok(())
}
