//! The forkserver killed at rest or at a random moment while processes are being
//! started through it: every start succeeds (a new forkserver serves it), every child
//! is joined, and nothing of the old server is left (no zombie, no fd).
use crate::matrix::{Ctx, RunResult, LONG};
use crate::probe;
use multiproc::process::forkserver_pid;
use multiproc::Process;

fn next(x: u64) -> u64 {
    x + 1
}

fn start_one(x: u64) -> Result<(), String> {
    let mut p = Process::new(next, (x,))
        .start()
        .map_err(|e| format!("start: {e}"))?;
    match p.join_timeout(LONG) {
        Ok(v) if v == x + 1 => Ok(()),
        other => Err(format!("child {}: {other:?}", p.pid())),
    }
}

pub fn scenario(ctx: &mut Ctx) -> RunResult {
    if forkserver_pid().is_none() {
        start_one(0)?;
    }
    let old = forkserver_pid().ok_or("no forkserver after a start")?;
    let pidfd = probe::pidfd(old)?;
    if ctx.run % 2 == 0 {
        probe::kill(&pidfd)?;
        ctx.note("killed at rest");
    } else {
        // A thread kills it a random moment after the starts begin (forkserver only:
        // this process never forks, so a second thread is harmless).
        let delay = ctx.rng.delay(4000);
        let pidfd = &pidfd;
        std::thread::scope(|sc| {
            let killer = sc.spawn(move || {
                std::thread::sleep(delay);
                probe::kill(pidfd)
            });
            let started: Result<(), String> = (1..=3).try_for_each(start_one);
            let killed = killer
                .join()
                .unwrap_or_else(|_| Err("the killer thread panicked".into()));
            started.and(killed)
        })?;
        ctx.note(if forkserver_pid() == Some(old) {
            "killed during starts, replaced after them"
        } else {
            "killed during starts, replaced during them"
        });
    }
    // The next start is served by a new forkserver, which also reaps the old one.
    start_one(100)?;
    match forkserver_pid() {
        Some(p) if p != old => {}
        other => return Err(format!("forkserver after the kill: {other:?} (was {old})")),
    }
    if !probe::wait_gone(&pidfd, LONG) {
        return Err(format!("the old forkserver {old} is still running"));
    }
    Ok(())
}
