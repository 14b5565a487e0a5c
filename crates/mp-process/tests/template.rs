//! Fork templates, with real processes: a child forked from a template sees the program as
//! it was when the template was made, is this process's child, and holds none of the
//! library's fds; the template itself is no child of the program's, refuses to be made in
//! a multi-threaded process unless allowed, and never outlives its owner or its handle.
//!
//! A template is made by fork, so these tests run in the fork run of the matrix only
//! (`--test-threads=1`, a single-threaded test process); under spawn and forkserver this
//! binary has nothing to run.
use libtest_mimic::{Arguments, Failed, Trial};
use mp_core::Handle;
use mp_process::*;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
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

/// Waits until `fd` is readable, at most [`BOUND`]; true if it is.
fn readable(fd: impl AsFd) -> bool {
    let mut p = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::time::Timespec {
        tv_sec: BOUND.as_secs() as i64,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut p, Some(&ts)), Ok(n) if n > 0)
}

fn pidfd(pid: i32) -> Result<OwnedFd, Failed> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or("pid 0")?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// A line of `/proc/<pid>/status` (`Name:\tvalue`): its value.
fn status_field(pid: &str, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Whether process `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    status_field(&pid.to_string(), "State").is_some_and(|s| !s.starts_with('Z'))
}

/// SIGINT and SIGTERM's bits in a signal mask.
fn stop_bits() -> u64 {
    (1 << (libc::SIGINT - 1)) | (1 << (libc::SIGTERM - 1))
}

fn sig_blocked(pid: &str) -> u64 {
    status_field(pid, "SigBlk")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(u64::MAX)
}

// ---- targets -------------------------------------------------------------------------

static LATE: AtomicU32 = AtomicU32::new(0);

/// What a child forked from a template knows: the static, its parent, its method.
fn what_i_see() -> (u32, Option<i32>, StartMethod, i32) {
    (
        LATE.load(Ordering::SeqCst),
        parent_process().map(|p| p.pid),
        get_start_method(),
        rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()),
    )
}

/// Waits for a byte on `s`, then returns it.
fn wait_byte(mut s: Handle<UnixStream>) -> u8 {
    let mut b = [0u8; 1];
    let _ = s.0.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.0.read_exact(&mut b);
    b[0]
}

/// This process's sockets and pidfds, from `/proc/self/fd`.
fn sockets_and_pidfds() -> (usize, usize) {
    let (mut sockets, mut pidfds) = (0, 0);
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy();
            sockets += usize::from(t.starts_with("socket:"));
            pidfds += usize::from(t.contains("pidfd"));
        }
    }
    (sockets, pidfds)
}

/// This process's blocked signals.
fn my_blocked_signals() -> u64 {
    sig_blocked("self")
}

// ---- tests ---------------------------------------------------------------------------

/// A child forked from a template sees memory as it was when the template was made; it
/// is this process's child, started with `fork`.
fn a_child_sees_the_program_as_it_was() -> R {
    LATE.store(1, Ordering::SeqCst);
    let t = ForkTemplate::new()?;
    LATE.store(2, Ordering::SeqCst);
    let mut p = Process::new(what_i_see, ()).fork_from(&t).start()?;
    let got = p.join_timeout(BOUND);
    LATE.store(0, Ordering::SeqCst);
    let me = std::process::id() as i32;
    ensure(p.start_method() == StartMethod::Fork, "start_method")?;
    ensure(
        got? == (1, Some(me), StartMethod::Fork, me),
        "(static, parent_process, method, ppid) in the child",
    )
}

/// The template is not one of the program's children; a child forked from it is, while
/// it runs, and a template's child may be started from another thread, with no opt-in.
fn children_of_a_template_are_ours_and_it_is_not() -> R {
    let t = ForkTemplate::new()?;
    let me = std::process::id().to_string();
    ensure(
        status_field(&t.pid().to_string(), "PPid").as_deref() == Some(me.as_str()),
        "the template is forked from this process",
    )?;
    ensure(
        active_children().iter().all(|c| c.pid != t.pid()),
        "the template counts as an active child",
    )?;
    let (a, mut b) = UnixStream::pair()?;
    let t2 = t.clone();
    let mut p =
        std::thread::spawn(move || Process::new(wait_byte, (Handle(a),)).fork_from(&t2).start())
            .join()
            .map_err(|_| "the thread panicked")??;
    let listed = active_children().iter().any(|c| c.pid == p.pid());
    b.write_all(&[9])?;
    let got = p.join_timeout(BOUND)?;
    ensure(listed, "a template's child is an active child")?;
    ensure(got == 9, format!("the child returned {got}"))
}

/// A template's child holds one socket (its own channel) and one pidfd (its parent's):
/// none of the template's, the program's other children's or the program's own.
fn a_child_holds_no_private_fd() -> R {
    let t = ForkTemplate::new()?;
    let (a, mut b) = UnixStream::pair()?;
    let mut other = Process::new(wait_byte, (Handle(a),))
        .fork_from(&t)
        .start()?;
    let mut p = Process::new(sockets_and_pidfds, ()).fork_from(&t).start()?;
    let got = p.join_timeout(BOUND);
    b.write_all(&[1])?;
    let _ = other.join_timeout(BOUND);
    let got = got?;
    ensure(
        got == (1, 1),
        format!("(sockets, pidfds) in the child: {got:?}"),
    )
}

/// As the `fork` start method: refused with other threads running, unless allowed.
fn refused_with_threads_unless_allowed() -> R {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _ = rx.recv();
    });
    let refused = ForkTemplate::new();
    let allowed = ForkTemplate::new_allowing_threads();
    drop(tx);
    let _ = thread.join();
    ensure(
        matches!(refused, Err(ProcessError::ForkWithThreads { .. })),
        format!("{refused:?}"),
    )?;
    let t = allowed?;
    let got = Process::new(what_i_see, ())
        .fork_from(&t)
        .start()?
        .join_timeout(BOUND)?;
    ensure(got.2 == StartMethod::Fork, "the opted-in template serves")
}

/// Dropping the last handle kills and reaps the template (no zombie is left).
fn dropping_it_reaps_it() -> R {
    let t = ForkTemplate::new()?;
    let pid = t.pid();
    let fd = pidfd(pid)?;
    let clone = t.clone();
    drop(t);
    ensure(running(pid), "a clone keeps it")?;
    drop(clone);
    ensure(readable(&fd), "it exited")?;
    ensure(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "it was reaped",
    )
}

/// A template that died is an error, for every later child.
fn a_dead_template_is_an_error() -> R {
    let t = ForkTemplate::new()?;
    let fd = pidfd(t.pid())?;
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL)?;
    ensure(readable(&fd), "it died")?;
    for _ in 0..2 {
        let got = Process::new(what_i_see, ()).fork_from(&t).start();
        ensure(
            matches!(got, Err(ProcessError::ForkTemplate(_))),
            format!("{got:?}"),
        )?;
    }
    Ok(())
}

/// The template is not stopped by SIGINT or SIGTERM (meant for the program); its
/// children start with the signal mask of the thread that made it.
fn stop_signals_reach_its_children_not_it() -> R {
    let t = ForkTemplate::new()?;
    let pid = t.pid().to_string();
    ensure(
        sig_blocked(&pid) & stop_bits() == stop_bits(),
        format!("SigBlk of the template: {:x}", sig_blocked(&pid)),
    )?;
    let fd = pidfd(t.pid())?;
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::TERM)?;
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::INT)?;
    let child_mask = Process::new(my_blocked_signals, ())
        .fork_from(&t)
        .start()?
        .join_timeout(BOUND)?;
    ensure(
        child_mask & stop_bits() == 0,
        format!("SigBlk of its child: {child_mask:x}"),
    )?;
    ensure(running(t.pid()), "the template lives")
}

/// A template leaked by a program (a pool in a static, say) does not hold up the
/// program's exit, and leaves when the program has gone.
fn a_leaked_template_leaves_with_its_owner() -> R {
    let mut c = std::process::Command::new(std::env::current_exe()?);
    c.env("MP_SCENARIO", "leak_template")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn()?;
    let owner = pidfd(child.id() as i32)?;
    // Its first line, the template's pid (the template holds the pipe too, so no end of
    // file is awaited here).
    let stdout = child.stdout.take().ok_or("no stdout")?;
    ensure(readable(&stdout), "the program said nothing")?;
    let mut out = String::new();
    std::io::BufReader::new(stdout).read_line(&mut out)?;
    ensure(readable(&owner), "the program did not exit")?;
    let status = child.wait()?;
    ensure(status.success(), format!("the program: {status}: {out}"))?;
    let pids: Vec<i32> = out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let [template, other] = pids[..] else {
        return Err(format!("the program said {out:?}").into());
    };
    let other = pidfd(other);
    // Gone already, or going: its pidfd turns readable.
    let gone = match pidfd(template) {
        Ok(fd) => readable(&fd),
        Err(_) => true,
    };
    if let Ok(fd) = other {
        rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL)?;
    }
    ensure(gone, "the template outlived its owner")
}

fn run_scenario(name: &str) -> ! {
    init();
    match name {
        "leak_template" => match ForkTemplate::new() {
            Ok(t) => {
                // A process forked by other code (not by this library) keeps a copy of
                // every fd, the template's control socket included: only its owner's
                // exit can tell the template to leave.
                // SAFETY: the child makes one system call and `_exit`s.
                let other = unsafe { libc::fork() };
                if other == 0 {
                    // SAFETY: as above.
                    unsafe {
                        libc::poll(std::ptr::null_mut(), 0, 30_000);
                        libc::_exit(0)
                    }
                }
                println!("{} {other}", t.pid());
                std::mem::forget(t);
            }
            Err(e) => println!("{e}"),
        },
        other => println!("no scenario {other}"),
    }
    // Returning from main: the exit sequence runs (the children are joined).
    std::process::exit(0)
}

fn main() {
    if let Ok(s) = std::env::var("MP_SCENARIO") {
        run_scenario(&s);
    }
    init();
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let mut tests = Vec::new();
    if method == StartMethod::Fork {
        tests = vec![
            t(
                "a_child_sees_the_program_as_it_was",
                a_child_sees_the_program_as_it_was,
            ),
            t(
                "children_of_a_template_are_ours_and_it_is_not",
                children_of_a_template_are_ours_and_it_is_not,
            ),
            t("a_child_holds_no_private_fd", a_child_holds_no_private_fd),
            t(
                "refused_with_threads_unless_allowed",
                refused_with_threads_unless_allowed,
            ),
            t("dropping_it_reaps_it", dropping_it_reaps_it),
            t("a_dead_template_is_an_error", a_dead_template_is_an_error),
            t(
                "stop_signals_reach_its_children_not_it",
                stop_signals_reach_its_children_not_it,
            ),
            t(
                "a_leaked_template_leaves_with_its_owner",
                a_leaked_template_leaves_with_its_owner,
            ),
        ];
    }
    libtest_mimic::run(&args, tests).exit();
}
