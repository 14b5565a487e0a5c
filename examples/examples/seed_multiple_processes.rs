//! Seed 000, "Multiple processes": four named workers print their name, pid and
//! parent pid.
use multiproc::{current_process, parent_process, Process};

fn worker() {
    println!("Process: {}", current_process().name);
    println!("PID: {}", std::process::id());
    println!(
        "Parent PID: {}",
        parent_process().map(|p| p.pid).unwrap_or_default()
    );
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let mut processes = Vec::new();
    for i in 0..4 {
        processes.push(
            Process::new(worker, ())
                .name(format!("Worker-{i}"))
                .start()?,
        );
    }
    for p in &mut processes {
        p.join()?;
    }
    Ok(())
}
