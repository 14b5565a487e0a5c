use mp_process::*;
fn worker(name: String, n: u64) -> String { format!("{name}:{} in {} pid {}", n * n, current_process().name, std::process::id()) }
fn boom() -> u32 { panic!("kaboom") }
fn main() {
    init();
    for m in [StartMethod::Spawn, StartMethod::Forkserver, StartMethod::Fork] {
        let t = std::time::Instant::now();
        let mut p = Process::new(worker, ("A".to_string(), 7)).start_method(m).start().unwrap();
        println!("{m}: {:?} {:?} exit={:?}", p.join(), t.elapsed(), p.exitcode());
        let mut p = Process::new(boom, ()).start_method(m).start().unwrap();
        println!("{m}: {:?} exit={:?}", p.join().map_err(|e| e.to_string()), p.exitcode());
    }
}
