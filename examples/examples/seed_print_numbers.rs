//! Seed 002, "Creating Processes": a process that prints 0 to 4.
fn print_numbers() {
    for i in 0..5 {
        println!("{i}");
    }
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let mut process = multiproc::Process::new(print_numbers, ()).start()?; // create and start
    process.join()?; // wait for the process to finish
    Ok(())
}
