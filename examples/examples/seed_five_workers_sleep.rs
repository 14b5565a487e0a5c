//! Seed 001, "Example 1: The Basic Process Class": five workers that sleep two seconds
//! in parallel, so the whole program takes about two seconds, not ten.
use std::time::{Duration, Instant};

fn worker(num: u32) {
    let process_id = std::process::id();
    println!("Worker {num} (Process ID: {process_id}) is starting...");
    std::thread::sleep(Duration::from_secs(2)); // simulate a long-running task
    println!("Worker {num} (Process ID: {process_id}) has finished.");
}

fn main() -> anyhow::Result<()> {
    multiproc::init(); // the other way to write the guard: first line of main
    let t = Instant::now();
    println!("Main Process ID: {}", std::process::id());
    let mut processes = Vec::new();
    for i in 0..5 {
        processes.push(multiproc::Process::new(worker, (i,)).start()?);
    }
    for p in &mut processes {
        p.join()?;
    }
    println!(
        "Main process has finished (in {:.1} s).",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
