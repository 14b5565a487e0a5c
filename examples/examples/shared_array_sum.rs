//! A parallel sum over a shared Array: the parent fills 4 million f64 once, and each
//! worker sums its part of the same pages (nothing is copied to the children).
use multiproc::{cpu_count, Process, RawArray};
use std::time::Instant;

fn partial_sum(data: RawArray<f64>, start: usize, end: usize) -> f64 {
    // SAFETY: the parent wrote the array before starting the workers, and nobody writes
    // it while they read.
    let part = unsafe { &data.as_slice()[start..end] };
    part.iter().sum()
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let n = 4_000_000;
    let data = RawArray::<f64>::new(n)?;
    // SAFETY: no worker exists yet: this is the only access.
    unsafe {
        for (i, x) in data.as_mut_slice().iter_mut().enumerate() {
            *x = (i % 1000) as f64 * 0.5;
        }
    }
    let workers = cpu_count().clamp(1, 4);
    let t = Instant::now();
    let mut jobs = Vec::new();
    for w in 0..workers {
        let (start, end) = (n * w / workers, n * (w + 1) / workers);
        jobs.push(Process::new(partial_sum, (data.clone(), start, end)).start()?);
    }
    let mut total = 0.0;
    for j in &mut jobs {
        total += j.join()?;
    }
    // SAFETY: the workers are done.
    let serial: f64 = unsafe { data.as_slice().iter().sum() };
    println!(
        "sum of {n} shared f64 by {workers} processes = {total} in {:.1} ms (serial: {serial})",
        t.elapsed().as_secs_f64() * 1e3
    );
    anyhow::ensure!((total - serial).abs() < 1e-6 * serial, "sums differ");
    Ok(())
}
