//! Seed 001, "Example 3: Using a Queue for Communication": a producer process puts five
//! random items and then a `None` sentinel; a consumer process takes items until it sees
//! `None`. (The seed sleeps 1 s per put and 2 s per item; here 0.2 s and 0.4 s, to keep
//! the showcase short.)
use multiproc::{Process, Queue};
use std::time::Duration;

fn producer(queue: Queue<Option<u32>>) -> Result<(), String> {
    let mut seed = std::process::id() as u64 | 1;
    for _ in 0..5 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let item = (seed % 100) as u32 + 1;
        println!("Producer: putting item {item} into the queue");
        queue.put(Some(item)).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(200)); // time to produce an item
    }
    println!("Producer: finished, putting None to signal exit");
    queue.put(None).map_err(|e| e.to_string()) // the sentinel
}

fn consumer(queue: Queue<Option<u32>>) -> Result<(), String> {
    loop {
        match queue.get().map_err(|e| e.to_string())? {
            Some(item) => {
                println!("Consumer: got item {item}, processing...");
                std::thread::sleep(Duration::from_millis(400)); // time to process an item
            }
            None => {
                println!("Consumer: received None, exiting.");
                return Ok(());
            }
        }
    }
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let task_queue = Queue::new()?;
    let mut p1 = Process::new(producer, (task_queue.clone(),)).start()?;
    let mut p2 = Process::new(consumer, (task_queue.clone(),)).start()?;
    p1.join()?.map_err(anyhow::Error::msg)?;
    p2.join()?.map_err(anyhow::Error::msg)?;
    println!("All processes finished.");
    Ok(())
}
