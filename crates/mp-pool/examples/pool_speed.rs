//! A quick look at the pool's speed on the benchmark suite's workloads (the suite in
//! `benches/` is the reference; this is for a glance while developing):
//! `cargo run --release -p mp-pool --example pool_speed`.
use mp_pool::Pool;
use std::time::{Duration, Instant};

fn identity(x: u64) -> u64 {
    x
}

fn echo(mut c: mp_pipe::Connection) {
    while let Ok(v) = c.recv::<u64>() {
        if c.send(&v).is_err() {
            break;
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    mp_process::init();
    let pool = Pool::new(2)?;
    let items: Vec<u64> = (0..100_000).collect();
    let _ = pool.map(identity, items.clone())?; // warm up
    let mut rates = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = pool.map(identity, items.clone())?;
        rates.push(r.len() as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "map 100k, default chunksize: {:.2} M items/s",
        median(rates) / 1e6
    );
    let small: Vec<u64> = (0..10_000).collect();
    let mut rates = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = pool.map_with_chunksize(identity, small.clone(), 1)?;
        rates.push(r.len() as f64 / t.elapsed().as_secs_f64());
    }
    println!("map 10k, chunksize 1: {:.1} k items/s", median(rates) / 1e3);
    let mut lat = Vec::new();
    for i in 0..2000u64 {
        let t = Instant::now();
        let v = pool.apply_async(identity, (i,))?.get()?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(v, i);
    }
    println!("apply_async latency: {:.1} us (median)", median(lat));
    let (mut a, b) = mp_pipe::pipe()?;
    let _child = mp_process::Process::new(echo, (b,)).daemon(true).start()?;
    let mut lat = Vec::new();
    for i in 0..2000u64 {
        let t = Instant::now();
        a.send(&i)?;
        let v: u64 = a.recv()?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(v, i);
    }
    println!("pipe round trip: {:.1} us (median)", median(lat));
    std::thread::sleep(Duration::from_millis(1));
    Ok(())
}
