//! Seed 003, "A Developer's Guide": five workers report the name multiproc gave them
//! (Process-1 ... Process-5, as in Python), then `foo` prints from a child.
use multiproc::{current_process, Process};
use std::time::Duration;

fn worker(num: u32) {
    let name = current_process().name;
    println!("Worker {num} started in {name}");
    std::thread::sleep(Duration::from_secs(2));
    println!("Worker {num} finished in {name}");
}

fn foo() {
    println!("Foo");
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(Process::new(worker, (i,)).start()?);
    }
    for proc in &mut jobs {
        proc.join()?;
    }
    Process::new(foo, ()).start()?.join()?;
    Ok(())
}
