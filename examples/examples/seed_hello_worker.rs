//! Seed 000, "Creating Processes": one worker process, started and joined.
//!
//! Python: `p = Process(target=worker, args=('A',)); p.start(); p.join()`
use multiproc::Process;

fn worker(name: String) {
    println!("Worker {name} starting");
}

#[multiproc::main] // the `if __name__ == '__main__':` guard
fn main() -> anyhow::Result<()> {
    let mut p = Process::new(worker, ("A".to_string(),)).start()?;
    p.join()?; // wait for completion
    Ok(())
}
