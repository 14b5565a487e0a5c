//! Reaping workers: one that is gone, and all of them when the pool shuts down (after
//! `close()` once every task is done, or on `terminate()`), every wait bounded.
use crate::handler::{Shared, Status, WorkerHandle};
use crate::result::lock;
use crate::PoolError;
use mp_process::{ExitStatus, Process};
use rustix::event::{epoll, poll, PollFd, PollFlags};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// After `close()` and the last task, how long a worker has to leave before it is
/// killed (it has nothing left to do: only a wedged worker takes this long).
pub(crate) const GRACE: Duration = Duration::from_secs(30);
/// After SIGTERM, how long before SIGKILL.
pub(crate) const TERM_GRACE: Duration = Duration::from_secs(2);
/// After SIGKILL, how long to wait for the kernel to finish the process.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(10);

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Waits up to `timeout` for `process` to exit and reaps it: its status, or `None` if
/// it still runs.
pub(crate) fn wait_exit(process: &Process<()>, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = process.exit_status() {
            return Some(s);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let sentinel = process.sentinel();
        let mut p = [PollFd::new(&sentinel, PollFlags::IN)];
        match poll(&mut p, Some(&timespec(left))) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return process.exit_status(),
        }
    }
}

/// Reaps a worker that is gone (or going): its exit code. One that does not finish
/// within a few seconds of its death being seen is killed.
pub(crate) fn reap(process: &Process<()>) -> Option<i32> {
    let status = wait_exit(process, Duration::from_secs(5)).or_else(|| {
        let _ = process.kill();
        wait_exit(process, KILL_WAIT)
    });
    status.map(|s| s.exitcode())
}

/// Stops every worker and reaps it; called by the handler thread as its last act.
///
/// `graceful` (after `close()`, every task done): each worker is told to leave by end
/// of file on its pipe (`shutdown(SHUT_WR)` of the parent's end, which no other holder
/// of that end can hold back), and exits with code 0. A `terminate()` meanwhile is
/// heard (the wait includes the pool's wake-up eventfd): the rest are then stopped as
/// by `terminate()`, SIGTERM then SIGKILL. A worker still there after [`GRACE`] is
/// killed, and `join()` reports it.
pub(crate) fn stop_workers(shared: &Shared, mut handles: Vec<WorkerHandle>, graceful: bool) {
    {
        let mut st = lock(&shared.state);
        for w in &st.workers {
            if let Ok(fd) = w.writer.fd() {
                let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Write);
            }
        }
        st.workers.clear();
    }
    let mut forced = !graceful;
    if forced {
        for h in &handles {
            let _ = h.process.terminate();
        }
    }
    // Their pipes are done with: only their pidfds (and the wake-up) are watched now.
    // A reader in `get` may hold a pipe, waiting for its worker's reply or death: the
    // signals above (or, after close(), the end of file, with every task done) end
    // that wait, so taking the pipe's lock waits only for that reader to leave.
    for h in &handles {
        let mut r = lock(&h.reader);
        r.retired = true;
        if let Ok(fd) = r.conn.fd() {
            let _ = epoll::delete(&shared.epoll, fd);
        }
    }
    let mut deadline = Instant::now() + if forced { TERM_GRACE } else { GRACE };
    let mut events: Vec<epoll::Event> = Vec::with_capacity(16);
    while !handles.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        events.clear();
        match epoll::wait(
            &shared.epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timespec(left)),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "pool: waiting for the workers to exit failed");
                break;
            }
        }
        for ev in &events {
            let data = ev.data.u64();
            if data == 0 {
                shared.drain_wake();
                if !forced && lock(&shared.state).status == Status::Terminated {
                    forced = true;
                    for h in &handles {
                        let _ = h.process.terminate();
                    }
                    deadline = deadline.min(Instant::now() + TERM_GRACE);
                }
            } else if data % 2 == 1 {
                let key = data / 2;
                if let Some(i) = handles.iter().position(|h| h.key == key) {
                    let h = handles.swap_remove(i);
                    let _ = epoll::delete(&shared.epoll, h.process.sentinel());
                    let code = reap(&h.process);
                    if graceful && !forced && code != Some(0) {
                        tracing::warn!(worker = %h.process.name(), exitcode = ?code, "pool worker exited abnormally after close()");
                    }
                }
            }
        }
    }
    // Out of time: whoever is left is killed.
    let mut stuck = None;
    for h in &handles {
        if !forced && stuck.is_none() {
            stuck = Some(PoolError::StuckWorker {
                pid: h.process.pid(),
                name: h.process.name().to_string(),
            });
        }
        tracing::warn!(worker = %h.process.name(), "pool worker did not exit in time; killing it");
        let _ = h.process.kill();
    }
    for h in &handles {
        let _ = epoll::delete(&shared.epoll, h.process.sentinel().as_fd());
        if wait_exit(&h.process, KILL_WAIT).is_none() {
            tracing::error!(worker = %h.process.name(), "pool worker survived SIGKILL");
        }
    }
    if stuck.is_some() {
        lock(&shared.state).stuck = stuck;
    }
}
