//! Seed 004, "blendedfeelings": five workers each print their number.
fn worker(num: u32) {
    println!("Worker: {num}");
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(multiproc::Process::new(worker, (i,)).start()?);
    }
    for j in &mut jobs {
        j.join()?; // wait for all processes to finish
    }
    Ok(())
}
