//! Seed 002, "Communication between Processes": five processes each put the square of
//! their number into a result queue; the parent drains it after joining them. Then seed
//! 003's one-liner: a worker puts a greeting that the parent prints.
use multiproc::{Process, Queue};

fn square(n: u64, result_queue: Queue<u64>) -> Result<(), String> {
    result_queue.put(n * n).map_err(|e| e.to_string())
}

fn worker(q: Queue<String>) -> Result<(), String> {
    q.put("Hello from worker!".to_string())
        .map_err(|e| e.to_string())
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let result_queue = Queue::new()?;
    let mut processes = Vec::new();
    for i in 1..=5 {
        processes.push(Process::new(square, (i, result_queue.clone())).start()?);
    }
    for process in &mut processes {
        process.join()?.map_err(anyhow::Error::msg)?;
    }
    // empty() is exact here (Python's is only approximate), so this drains all five.
    let mut squares = Vec::new();
    while !result_queue.empty() {
        squares.push(result_queue.get()?);
    }
    squares.sort(); // the processes finish in any order
    println!("{squares:?}"); // squares of 1 to 5

    let q = Queue::new()?;
    let mut p = Process::new(worker, (q.clone(),)).start()?;
    println!("{}", q.get()?);
    p.join()?.map_err(anyhow::Error::msg)?;
    Ok(())
}
