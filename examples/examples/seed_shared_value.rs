//! Seed 002, "Shared Memory": a child increments a shared Value; the parent sees it.
//!
//! Python: `shared_value = multiprocessing.Value('i', 0)`, `shared_value.value += 1`.
//! The increment runs under the value's lock, so it is safe from any number of
//! processes at once (Python's `+=` on `.value` is not).
use multiproc::{Process, Value};

/// What a child returns travels back serialized, so errors come back as text here.
fn modify_shared_data(shared_value: Value<i32>) -> Result<(), String> {
    shared_value.update(|v| *v += 1).map_err(|e| e.to_string())
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let shared_value = Value::new(0i32)?;
    let mut process = Process::new(modify_shared_data, (shared_value.clone(),)).start()?;
    process.join()?.map_err(anyhow::Error::msg)?;
    println!("{}", shared_value.get()?); // Output: 1
    Ok(())
}
