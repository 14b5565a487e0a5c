//! A tour of what multiproc does beyond Python's `multiprocessing`: return values,
//! panics that come back with their location, exit codes and signals kept apart, the
//! three start methods, daemons, contexts and fds passed to children.
use multiproc::prelude::*;
use multiproc::{get_all_start_methods, ExitStatus};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// How a join ended, in words.
fn outcome<T: std::fmt::Debug>(r: Result<T, ProcessError>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => e.to_string(),
    }
}

fn square(x: u64) -> u64 {
    x * x
}
fn fails(n: u32) -> u32 {
    if n > 2 {
        panic!("n = {n} is too large");
    }
    n
}
fn exits_early() {
    std::process::exit(3);
}
fn sleeps_forever() {
    std::thread::sleep(Duration::from_secs(3600));
}
fn whoami() -> (String, i32, String) {
    let me = current_process();
    let parent =
        parent_process().map(|p| format!("{} (pid {}, alive: {})", p.name, p.pid, p.is_alive()));
    (me.name, me.pid, parent.unwrap_or_default())
}
fn greet_through(mut sock: Handle<std::os::unix::net::UnixStream>) {
    let _ = writeln!(
        sock.0,
        "hello over a socket passed as an argument, from pid {}",
        std::process::id()
    );
}

#[multiproc::main]
fn main() -> anyhow::Result<()> {
    println!(
        "== multiproc tour ({} CPUs available to this process)",
        cpu_count()
    );

    println!("\n-- 1. a child's return value comes back (Python's join() returns None)");
    let mut p = Process::new(square, (12,)).start()?;
    println!("square(12) in pid {} = {}", p.pid(), p.join()?);

    println!("\n-- 2. the three start methods, timed");
    for method in get_all_start_methods() {
        let t = Instant::now();
        let mut p = get_context(Some(method)).process(square, (7,)).start()?;
        let v = p.join()?;
        println!("{method:>10}: square(7) = {v} in {:.2} ms (first start of a forkserver includes the server)", t.elapsed().as_secs_f64() * 1e3);
    }

    println!("\n-- 3. failures are told apart, never a hang");
    let mut p = Process::new(fails, (5,)).start()?;
    match p.join() {
        Err(ProcessError::Panicked { message, location }) => {
            println!(
                "panic: {message:?} at {}, exitcode {:?}",
                location.unwrap_or_default(),
                p.exitcode()
            )
        }
        other => println!("unexpected: {other:?}"),
    }
    let mut p = Process::new(exits_early, ()).start()?;
    println!(
        "exit(3): {} -> exitcode {:?}",
        outcome(p.join()),
        p.exitcode()
    );
    let mut p = Process::new(sleeps_forever, ()).start()?;
    println!(
        "join_timeout(200 ms) on a sleeper: {}",
        outcome(p.join_timeout(Duration::from_millis(200)))
    );
    p.kill()?;
    println!(
        "after kill(): {} -> exitcode {:?} ({:?})",
        outcome(p.join()),
        p.exitcode(),
        p.exit_status().map(|s| s == ExitStatus::Signaled(9))
    );

    println!("\n-- 4. names, parents and daemons");
    println!(
        "here: {} (pid {})",
        current_process().name,
        current_process().pid
    );
    let mut p = Process::new(whoami, ()).name("Worker-A").start()?;
    let (name, pid, parent) = p.join()?;
    println!("child: {name} (pid {pid}), parent {parent}");
    let d = Process::new(sleeps_forever, ()).daemon(true).start()?;
    println!(
        "daemon {} (pid {}) will be terminated when main returns; active children: {:?}",
        d.name(),
        d.pid(),
        active_children()
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
    );

    println!("\n-- 5. OS handles travel beside the bytes");
    let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let mut p = Process::new(greet_through, (Handle(a),)).start()?;
    p.join()?;
    let mut line = String::new();
    b.read_to_string(&mut line)?;
    print!("{line}");
    println!("\n== done");
    Ok(())
}
