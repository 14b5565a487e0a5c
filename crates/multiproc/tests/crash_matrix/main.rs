//! The crash matrix (issue 12): SIGKILL each participant at random points, 20 times
//! each, under the start method of `MULTIPROC_START_METHOD`, and check that the
//! survivors carry on and that nothing is left behind (fds in the survivor, zombie or
//! stray children, segments in /dev/shm); every wait is bounded, and a watchdog ends
//! the binary if a run hangs anyway. Prints the table (participant: runs, recovered,
//! leaks) that `cargo xtask test` collects.
//!
//! `MP_CRASH_RUNS` changes the number of runs, `MP_CRASH_SEED` repeats a run's random
//! points. The trials run one at a time, on the main thread (they count the process's
//! fds and children, and fork needs a single thread).
use libtest_mimic::{Arguments, Failed, Trial};
use multiproc::{get_start_method, Process, StartMethod};

mod forkserver;
mod listener;
mod lock;
mod matrix;
mod pool;
mod probe;
mod queue;
mod tracker;

fn next(x: u64) -> u64 {
    x + 1
}

/// Starts what a first start creates for good (the forkserver), so that a run's fd
/// count is compared with a settled one.
fn warm_up() {
    let started = Process::new(next, (1,)).start();
    if let Ok(mut p) = started {
        let _ = p.join_timeout(matrix::LONG);
    }
}

fn main() {
    multiproc::init();
    if std::env::var(tracker::ROLE).as_deref() == Ok(tracker::CREATOR) {
        tracker::creator_main();
    }
    let mut args = Arguments::from_args();
    // One at a time, on this thread: the runs count this process's fds and children.
    args.test_threads = Some(1);
    let method = get_start_method();
    if !args.list {
        warm_up();
    }
    let t = |name: &'static str, f: Box<dyn FnOnce() -> Result<(), Failed> + Send>| {
        Trial::test(format!("{method}::{name}"), f)
    };
    let trials = vec![
        t(
            "lock_holder",
            Box::new(|| matrix::run_participant("lock holder", 1, lock::scenario)),
        ),
        t(
            "queue_producer",
            Box::new(|| matrix::run_participant("queue producer", 2, queue::producer_scenario)),
        ),
        t(
            "queue_consumer",
            Box::new(|| matrix::run_participant("queue consumer", 3, queue::consumer_scenario)),
        ),
        t(
            "pool_worker",
            Box::new(|| matrix::run_participant("pool worker", 4, pool::scenario)),
        ),
        t(
            "forkserver",
            Box::new(move || {
                if method == StartMethod::Forkserver {
                    matrix::run_participant("forkserver", 5, forkserver::scenario)
                } else {
                    matrix::not_applicable("forkserver");
                    Ok(())
                }
            }),
        ),
        t(
            "shm_tracker",
            Box::new(|| matrix::run_participant("shm tracker", 6, tracker::scenario)),
        ),
        t(
            "listener_peer",
            Box::new(|| {
                let mut shared = listener::Shared::new()?;
                matrix::run_participant("listener peer", 7, |ctx| {
                    listener::scenario(ctx, &mut shared)
                })
            }),
        ),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    matrix::print_table();
    conclusion.exit();
}
