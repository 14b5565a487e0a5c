//! Seed 003, "Synchronization Primitives": five processes take one Lock in turn.
//!
//! Python: `with lock: print("Critical section!")`. Here the guard is the `with`: the
//! lock is released when it goes out of scope, even if the code in between panics.
use multiproc::{Lock, Process};

fn worker(lock: Lock) {
    let _guard = lock.lock(); // an error here would mean a holder died: see the tour
    println!("Critical section! (pid {})", std::process::id());
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let lock = Lock::new()?;
    let mut jobs = Vec::new();
    for _ in 0..5 {
        jobs.push(Process::new(worker, (lock.clone(),)).start()?);
    }
    for proc in &mut jobs {
        proc.join()?;
    }
    Ok(())
}
