//! Queue behaviour with real processes, under the start method chosen by
//! `MULTIPROC_START_METHOD` (the xtask runs this binary once per method).
use libtest_mimic::{Arguments, Failed, Trial};
use mp_process::{get_start_method, init, Process};
use mp_queue::*;

type R = Result<(), Failed>;

fn ensure(cond: bool, msg: impl std::fmt::Display) -> R {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

fn produce(q: Queue<u64>, from: u64, n: u64) {
    for i in from..from + n {
        q.put(i).expect("put");
    }
}

fn producer_to_parent() -> R {
    let q = Queue::new()?;
    let mut p = Process::new(produce, (q.clone(), 0, 10_000)).start()?;
    for i in 0..10_000u64 {
        let v = q.get()?;
        ensure(v == i, format!("got {v}, expected {i}"))?;
    }
    p.join()?;
    ensure(q.empty(), "empty at the end")
}

fn main() {
    init();
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let tests = vec![t("producer_to_parent", producer_to_parent)];
    libtest_mimic::run(&args, tests).exit();
}
