//! Helpers under a crash, and locks across fork, with real processes, under the start
//! method chosen by `MULTIPROC_START_METHOD`: a forkserver or a fork template that dies
//! between forking a child and replying leaves no child behind and runs no task twice or
//! in a child the parent does not know; a signal sent to a forkserver as it starts does
//! not stop it; a fork with threads allowed never inherits a library lock held.
use libtest_mimic::{Arguments, Failed, Trial};
use mp_process::*;
use std::io::Write;
use std::time::Duration;

type R = Result<(), Failed>;

fn ensure(cond: bool, msg: impl std::fmt::Display) -> R {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

/// Generous bound on every wait a test makes.
const BOUND: Duration = Duration::from_secs(20);

/// Appends this process's pid to the file at `path` (one line per run); returns it.
fn record(path: String) -> Result<u32, String> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    writeln!(f, "{}", std::process::id()).map_err(|e| e.to_string())?;
    Ok(std::process::id())
}

fn plus_one(x: u32) -> u32 {
    x + 1
}

/// A fresh empty file for [`record`]: its path.
fn run_log(tag: &str) -> Result<String, Failed> {
    let path = std::env::temp_dir().join(format!("mp-process-crash-{tag}-{}", std::process::id()));
    std::fs::write(&path, b"")?;
    Ok(path.to_string_lossy().into_owned())
}

/// The pids recorded in `path`, then the file removed.
fn runs(path: &str) -> Result<Vec<u32>, Failed> {
    let text = std::fs::read_to_string(path)?;
    let _ = std::fs::remove_file(path);
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// A line of `/proc/<pid>/status`: its value.
fn status_field(pid: i32, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn sig_bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

fn mask(pid: i32, name: &str) -> Result<u64, Failed> {
    let v = status_field(pid, name).ok_or(format!("no {name} for {pid}"))?;
    Ok(u64::from_str_radix(&v, 16)?)
}

/// This process's children (pid, state letter), from `/proc/<pid>/stat`.
fn my_children() -> Vec<(i32, char)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if f.next().and_then(|p| p.parse::<i32>().ok()) == Some(me) {
            out.push((pid, state));
        }
    }
    out
}

/// Zombie children of ours that nobody will reap: seen before and after the registry
/// reaps what has finished (a child of another test that just exited is reaped then).
fn lost_zombies() -> Vec<i32> {
    let zombies = |v: Vec<(i32, char)>| -> Vec<i32> {
        v.into_iter()
            .filter(|&(_, s)| s == 'Z')
            .map(|(p, _)| p)
            .collect()
    };
    let first = zombies(my_children());
    let _ = active_children();
    let second = zombies(my_children());
    first.into_iter().filter(|p| second.contains(p)).collect()
}

/// Kills the running forkserver (if any) and waits for it to be gone.
fn kill_forkserver() -> R {
    let Some(pid) = forkserver_pid() else {
        return Ok(());
    };
    let pid = rustix::process::Pid::from_raw(pid).ok_or("pid 0")?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL)?;
    let mut p = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::time::Timespec {
        tv_sec: BOUND.as_secs() as i64,
        tv_nsec: 0,
    };
    ensure(
        matches!(rustix::event::poll(&mut p, Some(&ts)), Ok(n) if n > 0),
        "the forkserver outlived SIGKILL",
    )
}

// ---- forkserver ------------------------------------------------------------------------

/// Held by each forkserver test: they replace the one server, so they run one at a time.
static SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERVER.lock().unwrap_or_else(|p| p.into_inner())
}

/// The forkserver dies between forking a child and replying: the start is retried with
/// a new server, the task runs once, in the child whose pid the handle holds, and the
/// first server's child is reaped, never having run it.
fn forkserver_crash_after_fork_runs_the_task_once_in_our_child() -> R {
    let _serial = one_at_a_time();
    // A server that runs (so the crash hits one, and the retry starts another).
    Process::new(plus_one, (1,)).start()?.join_timeout(BOUND)?;
    let old = forkserver_pid();
    let log = run_log("fsrv")?;
    testing::server_dies_after_next_fork();
    let mut p = Process::new(record, (log.clone(),)).start()?;
    let pid = p.pid() as u32;
    let got = p.join_timeout(BOUND);
    if got.is_err() {
        let _ = p.kill();
        let _ = p.join_timeout(BOUND);
    }
    let ran = runs(&log)?;
    ensure(
        forkserver_pid() != old,
        "the server was not replaced after its crash",
    )?;
    ensure(
        matches!(got, Ok(Ok(v)) if v == pid),
        format!("join: {got:?}, the handle's pid {pid}, runs {ran:?}"),
    )?;
    ensure(
        ran == [pid],
        format!("the task ran in {ran:?}; the handle's child is {pid}"),
    )?;
    let lost = lost_zombies();
    ensure(lost.is_empty(), format!("zombie children left: {lost:?}"))
}

/// A SIGINT and a SIGTERM sent to a forkserver as soon as it is spawned neither kill
/// it nor reach it (held pending); its children get the usual signal mask back.
fn forkserver_survives_signals_at_its_start() -> R {
    let _serial = one_at_a_time();
    kill_forkserver()?;
    testing::signal_next_server_at_start();
    let mut p = Process::new(own_blocked_mask, ()).start()?;
    let child_mask = p.join_timeout(BOUND)?;
    let signalled = testing::signalled_server().ok_or("no server was started")?;
    ensure(
        forkserver_pid() == Some(signalled),
        format!(
            "the server signalled at its start ({signalled}) was replaced by {:?}",
            forkserver_pid()
        ),
    )?;
    let (int, term) = (sig_bit(libc::SIGINT), sig_bit(libc::SIGTERM));
    let blocked = mask(signalled, "SigBlk")?;
    let pending = mask(signalled, "ShdPnd")?;
    ensure(
        blocked & int != 0 && blocked & term != 0,
        format!("SigBlk {blocked:x}"),
    )?;
    ensure(
        pending & int != 0 && pending & term != 0,
        format!("ShdPnd {pending:x}"),
    )?;
    ensure(
        child_mask & (int | term) == 0,
        format!("a child of the server has SIGINT or SIGTERM blocked: {child_mask:x}"),
    )
}

/// This process's SigBlk.
fn own_blocked_mask() -> u64 {
    status_field(std::process::id() as i32, "SigBlk")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(u64::MAX)
}

// ---- fork ------------------------------------------------------------------------------

/// A fork template dies between forking a child and replying: the start fails, and the
/// child it forked is reaped, never having run the task.
fn template_crash_after_fork_leaves_no_child() -> R {
    let log = run_log("template")?;
    let template = ForkTemplate::new()?;
    testing::server_dies_after_next_fork();
    let got = Process::new(record, (log.clone(),))
        .fork_from(&template)
        .start();
    let failed = matches!(got, Err(ProcessError::ForkTemplate(_)));
    let kid = got.ok().map(|mut p| {
        let r = p.join_timeout(BOUND);
        (p.pid(), r)
    });
    drop(template);
    // Right after the failed start (the template reaped with its handle): no child left.
    let kids = my_children();
    let ran = runs(&log)?;
    ensure(failed, format!("start from a crashed template: {kid:?}"))?;
    ensure(kids.is_empty(), format!("children left: {kids:?}"))?;
    ensure(ran.is_empty(), format!("the task ran in {ran:?}"))
}

/// With threads allowed, a fork never leaves the child the lock of `mp_core::inherit`
/// held by another thread (the child takes it in its bootstrap).
fn fork_with_threads_inherits_no_held_inherit_lock() -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    STOP.store(false, Ordering::SeqCst);
    let busy = std::thread::spawn(|| {
        while !STOP.load(Ordering::Relaxed) {
            let _ = mp_core::inherit::take("test.crash.nothing");
        }
    });
    let mut result = Ok(());
    for i in 0..200u32 {
        let got = Process::new(plus_one, (i,))
            .start_method(StartMethod::Fork)
            .allow_fork_with_threads()
            .start()
            .and_then(|mut p| {
                let r = p.join_timeout(BOUND);
                if r.is_err() {
                    let _ = p.kill();
                    let _ = p.join_timeout(BOUND);
                }
                r
            });
        if !matches!(got, Ok(v) if v == i + 1) {
            result = Err(format!("child {i}: {got:?}"));
            break;
        }
    }
    STOP.store(true, Ordering::SeqCst);
    let _ = busy.join();
    Ok(result?)
}

fn main() {
    init();
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let tests = match method {
        StartMethod::Forkserver => vec![
            t(
                "forkserver_crash_after_fork_runs_the_task_once_in_our_child",
                forkserver_crash_after_fork_runs_the_task_once_in_our_child,
            ),
            t(
                "forkserver_survives_signals_at_its_start",
                forkserver_survives_signals_at_its_start,
            ),
        ],
        StartMethod::Fork => vec![
            t(
                "template_crash_after_fork_leaves_no_child",
                template_crash_after_fork_leaves_no_child,
            ),
            t(
                "fork_with_threads_inherits_no_held_inherit_lock",
                fork_with_threads_inherits_no_held_inherit_lock,
            ),
        ],
        StartMethod::Spawn => Vec::new(),
    };
    libtest_mimic::run(&args, tests).exit();
}
