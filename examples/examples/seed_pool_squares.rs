//! The seeds' Pool programs: 001's "Example 2" (a pool of cpu_count() workers squaring
//! ten numbers, each announcing its result), 002's `Pool(processes=3)`, 003's default
//! pool and 004's `Pool(5)` over `range(10)`.
use multiproc::{cpu_count, Pool};
use std::time::Duration;

fn slow_square(n: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(100)); // the seed sleeps 0.5 s
    let result = n * n;
    println!("Calculated square of {n} = {result}");
    result
}

fn square(n: u64) -> u64 {
    n * n
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    let numbers: Vec<u64> = (1..=10).collect();
    println!("Running on a pool with {} processes.", cpu_count());
    {
        let pool = Pool::builder().build()?; // cpu_count() workers, as Python's Pool()
        let results = pool.map(slow_square, numbers)?;
        println!("\nFinal results from pool.map: {results:?}");
    } // dropping the pool terminates it, as leaving Python's `with` block

    // Each pool lives in its own block, as each of the seeds' `with Pool(...)` blocks:
    // a pool is dropped (terminated) before the next one starts. (Under the fork start
    // method that matters: a live pool's handler thread makes this process
    // multi-threaded, and forking a multi-threaded process needs an explicit opt-in.)
    {
        let pool = Pool::new(3)?;
        println!("{:?}", pool.map(square, [1, 2, 3, 4, 5])?); // [1, 4, 9, 16, 25]
    }
    {
        let pool = Pool::builder().build()?;
        println!("{:?}", pool.map(square, vec![1, 2, 3, 4, 5])?);
    }
    {
        let pool = Pool::new(5)?;
        println!("{:?}", pool.map(square, 0..10)?);
    }
    Ok(())
}
