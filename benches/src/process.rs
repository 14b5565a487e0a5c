//! Process start workloads: spawn_join_{spawn,forkserver,fork}, limit_exec, limit_fork.
use crate::{emit, per_call, Opts};
use multiproc::{get_context, StartMethod};
use serde_json::json;

/// Set in limit_exec's child, which then returns from main at once.
pub const LIMIT_EXEC_ENV: &str = "MP_BENCH_LIMIT_EXEC";

pub const WORKLOADS: &[crate::Workload] = &[
    ("limit_exec", limit_exec),
    ("spawn_join_spawn", |o| spawn_join(o, StartMethod::Spawn)),
    ("limit_fork", limit_fork),
    ("spawn_join_forkserver", |o| {
        spawn_join(o, StartMethod::Forkserver)
    }),
    ("spawn_join_fork", |o| spawn_join(o, StartMethod::Fork)),
];

fn empty() {}

fn iters(opts: &Opts) -> usize {
    if opts.quick {
        10
    } else {
        40
    }
}

fn spawn_join(opts: &Opts, method: StartMethod) {
    let ctx = get_context(Some(method));
    // Warm up (and, for forkserver, start the server: its start is excluded).
    for _ in 0..2 {
        if let Ok(mut p) = ctx.process(empty, ()).start() {
            let _ = p.join();
        }
    }
    let runs = (0..opts.runs())
        .map(|_| {
            per_call(iters(opts), || match ctx.process(empty, ()).start() {
                Ok(mut p) => {
                    if let Err(e) = p.join() {
                        eprintln!("spawn_join: {e}");
                    }
                }
                Err(e) => eprintln!("spawn_join: {e}"),
            }) * 1e3
        })
        .collect();
    emit(
        &format!("spawn_join_{}", method.as_str()),
        json!({"start_method": method.as_str()}),
        "ms/process",
        runs,
        opts,
    );
}

/// Re-executes this binary with no IPC at all (std::process::Command, i.e.
/// posix_spawn), then waits: the floor of `spawn`.
fn limit_exec(opts: &Opts) {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let runs = (0..opts.runs())
        .map(|_| {
            per_call(iters(opts), || {
                let _ = std::process::Command::new(&exe)
                    .env(LIMIT_EXEC_ENV, "1")
                    .status();
            }) * 1e3
        })
        .collect();
    emit(
        "limit_exec",
        json!({"for": "spawn_join_spawn"}),
        "ms/process",
        runs,
        opts,
    );
}

/// fork + _exit + waitpid: the floor of `fork` and `forkserver`.
fn limit_fork(opts: &Opts) {
    let runs = (0..opts.runs())
        .map(|_| {
            per_call(iters(opts), || {
                // SAFETY: the child calls only _exit, which is async-signal-safe; the parent
                // waits for it with a valid status pointer.
                unsafe {
                    let pid = libc::fork();
                    if pid == 0 {
                        libc::_exit(0);
                    }
                    let mut st = 0;
                    libc::waitpid(pid, &mut st, 0);
                }
            }) * 1e3
        })
        .collect();
    emit(
        "limit_fork",
        json!({"for": "spawn_join_fork, spawn_join_forkserver"}),
        "ms/process",
        runs,
        opts,
    );
}
