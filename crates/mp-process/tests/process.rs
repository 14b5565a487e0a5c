//! Process behaviour with real children, under the start method chosen by
//! `MULTIPROC_START_METHOD` (the xtask runs this binary once per method).
use libtest_mimic::{Arguments, Failed, Trial};
use mp_core::Handle;
use mp_process::*;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

type R = Result<(), Failed>;

fn ensure(cond: bool, msg: impl std::fmt::Display) -> R {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

// ---- targets -----------------------------------------------------------------------

fn greet(name: String, n: u64) -> String {
    format!("{name}:{}:{}", n * n, current_process().name)
}
fn panics() -> u32 {
    panic!("kaboom {}", 42)
}
fn exits(code: i32) {
    std::process::exit(code)
}
fn aborts() {
    std::process::abort()
}
fn sleeps(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs))
}
fn family() -> (String, Option<(i32, String, bool)>, i32, bool) {
    let me = current_process();
    let parent = parent_process().map(|p| (p.pid, p.name.clone(), p.is_alive()));
    (
        me.name,
        parent,
        rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()),
        me.daemon,
    )
}
fn grandchild() -> Result<String, String> {
    let mut p = Process::new(family, ())
        .start()
        .map_err(|e| e.to_string())?;
    let (name, parent, _, _) = p.join().map_err(|e| e.to_string())?;
    let parent_name = parent.map(|p| p.1).unwrap_or_default();
    Ok(format!("{name} child of {parent_name}"))
}
fn try_start_child() -> String {
    match Process::new(sleeps, (0,)).start() {
        Ok(_) => "started".into(),
        Err(e) => e.to_string(),
    }
}
fn open_fds(marker: String) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(t) = std::fs::read_link(e.path()) {
            if t.to_string_lossy().contains(&marker) {
                out.push(format!(
                    "{} -> {}",
                    e.file_name().to_string_lossy(),
                    t.display()
                ));
            }
        }
    }
    out
}
fn write_file(mut f: Handle<std::fs::File>, text: String) -> usize {
    f.0.write_all(text.as_bytes())
        .map(|_| text.len())
        .unwrap_or(0)
}
fn write_socket(mut s: Handle<std::os::unix::net::UnixStream>) -> bool {
    s.0.write_all(b"hello through a passed socket").is_ok()
}
fn echo_big(v: Vec<u8>) -> Vec<u8> {
    v.into_iter().rev().collect()
}
fn env_var(key: String) -> Option<String> {
    std::env::var(key).ok()
}
fn plus_one(x: u32) -> u32 {
    x + 1
}

/// Serializes only while `fail` is false: exercises both error paths.
#[derive(Debug, Deserialize)]
struct Fragile {
    fail: bool,
}
impl Serialize for Fragile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.fail {
            Err(serde::ser::Error::custom("Fragile refuses to serialize"))
        } else {
            s.serialize_bool(false)
        }
    }
}
fn takes_fragile(_f: Fragile) {}
fn returns_fragile() -> Fragile {
    Fragile { fail: true }
}

// ---- tests ---------------------------------------------------------------------------

fn returns_value() -> R {
    let mut p = Process::new(greet, ("A".to_string(), 7))
        .name("Worker-A")
        .start()?;
    ensure(p.name() == "Worker-A", "name")?;
    let out = p.join()?;
    ensure(out == "A:49:Worker-A", format!("got {out}"))?;
    ensure(
        p.exitcode() == Some(0),
        format!("exitcode {:?}", p.exitcode()),
    )?;
    ensure(
        matches!(p.join(), Err(ProcessError::AlreadyJoined)),
        "second join",
    )?;
    let mut q = Process::new(|x: u32, y: u32| x * y, (6, 7)).start()?;
    ensure(q.join()? == 42, "closure target")?;
    ensure(
        q.name().starts_with("Process-"),
        format!("default name {}", q.name()),
    )
}

fn panic_carries_message_and_location() -> R {
    let mut p = Process::new(panics, ()).start()?;
    match p.join() {
        Err(ProcessError::Panicked { message, location }) => {
            ensure(message == "kaboom 42", format!("message {message}"))?;
            let loc = location.unwrap_or_default();
            ensure(loc.contains("tests/process.rs:"), format!("location {loc}"))?;
        }
        other => return Err(format!("expected a panic, got {other:?}").into()),
    }
    ensure(
        p.exitcode() == Some(1),
        format!("exitcode {:?}", p.exitcode()),
    )
}

fn exit_early_gives_code() -> R {
    let mut p = Process::new(exits, (3,)).start()?;
    ensure(
        matches!(p.join(), Err(ProcessError::Exited(3))),
        "Exited(3)",
    )?;
    ensure(p.exitcode() == Some(3), "exitcode 3")?;
    let mut p = Process::new(exits, (0,)).start()?;
    ensure(
        matches!(p.join(), Err(ProcessError::Exited(0))),
        "Exited(0)",
    )?;
    ensure(p.exitcode() == Some(0), "exitcode 0")
}

fn abort_and_signals() -> R {
    let mut p = Process::new(aborts, ()).start()?;
    ensure(matches!(p.join(), Err(ProcessError::Signaled(6))), "abort")?;
    ensure(p.exitcode() == Some(-6), "exitcode -6")?;
    let mut p = Process::new(sleeps, (60,)).start()?;
    ensure(p.exitcode().is_none() && p.is_alive(), "running")?;
    p.terminate()?;
    ensure(
        matches!(p.join(), Err(ProcessError::Signaled(15))),
        "terminate",
    )?;
    ensure(p.exitcode() == Some(-15), "exitcode -15")?;
    let mut p = Process::new(sleeps, (60,)).start()?;
    p.kill()?;
    ensure(matches!(p.join(), Err(ProcessError::Signaled(9))), "kill")?;
    ensure(p.exitcode() == Some(-9), "exitcode -9")?;
    p.kill()?; // killing a reaped child is a no-op, as in Python
    Ok(())
}

fn join_timeout_then_kill_leaves_no_zombie() -> R {
    let mut p = Process::new(sleeps, (60,)).start()?;
    let t = Instant::now();
    ensure(
        matches!(
            p.join_timeout(Duration::from_millis(300)),
            Err(ProcessError::Timeout(_))
        ),
        "timeout",
    )?;
    ensure(
        t.elapsed() >= Duration::from_millis(250),
        "waited about the timeout",
    )?;
    ensure(p.is_alive(), "still alive after the timeout")?;
    let pid = p.pid();
    p.kill()?;
    ensure(
        matches!(
            p.join_timeout(Duration::from_secs(20)),
            Err(ProcessError::Signaled(9))
        ),
        "killed",
    )?;
    ensure(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "no zombie left",
    )
}

fn sentinel_becomes_readable() -> R {
    let mut p = Process::new(sleeps, (0,)).start()?;
    let sentinel = p.sentinel();
    let mut fds = [rustix::event::PollFd::new(
        &sentinel,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::time::Timespec {
        tv_sec: 20,
        tv_nsec: 0,
    };
    let n = rustix::event::poll(&mut fds, Some(&ts))?;
    ensure(n == 1, "sentinel ready")?;
    p.join()?;
    Ok(())
}

fn bad_args_and_bad_results() -> R {
    let before = active_children().len();
    match Process::new(takes_fragile, (Fragile { fail: true },)).start() {
        Err(ProcessError::ArgsEncode(e)) => {
            ensure(e.to_string().contains("Fragile refuses"), format!("{e}"))?
        }
        other => return Err(format!("expected ArgsEncode, got {other:?}").into()),
    }
    ensure(active_children().len() == before, "no child was started")?;
    let mut p = Process::new(returns_fragile, ()).start()?;
    match p.join() {
        Err(ProcessError::ResultEncode(m)) => ensure(m.contains("Fragile refuses"), m)?,
        other => return Err(format!("expected ResultEncode, got {other:?}").into()),
    }
    ensure(p.exitcode() == Some(1), "exitcode 1")
}

fn family_names_and_parent() -> R {
    let me = current_process();
    ensure(
        me.name == "MainProcess" && parent_process().is_none(),
        "main process",
    )?;
    let mut p = Process::new(family, ()).start()?;
    let (name, parent, ppid, daemon) = p.join()?;
    ensure(name == p.name(), &name)?;
    let (pid, pname, alive) = parent.ok_or("no parent")?;
    ensure(
        pid == me.pid && ppid == me.pid && pname == "MainProcess" && alive,
        format!("{pid} {ppid} {pname} {alive}"),
    )?;
    ensure(!daemon, "not a daemon")?;
    let mut g = Process::new(grandchild, ()).start()?;
    let text = g.join()?.map_err(|e| format!("in child: {e}"))?;
    let expect = format!("{}:1 child of {}", g.name(), g.name());
    ensure(text == expect, format!("{text} != {expect}"))
}

fn daemon_cannot_have_children() -> R {
    let mut p = Process::new(try_start_child, ()).daemon(true).start()?;
    ensure(p.daemon(), "daemon flag")?;
    let msg = p.join()?;
    ensure(
        msg.contains("daemonic processes are not allowed to have children"),
        msg,
    )
}

fn fds_travel_and_nothing_else_leaks() -> R {
    let dir = std::env::temp_dir().join(format!("mp-fd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // A file opened without O_CLOEXEC: the classic leak (under spawn).
    let leak_path = dir.join("leaky-marker");
    std::fs::write(&leak_path, b"x")?;
    let path_c = std::ffi::CString::new(leak_path.to_string_lossy().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; the fd is closed at the end of the test.
    let leaky = unsafe { libc::open(path_c.as_ptr(), libc::O_RDONLY) };
    ensure(leaky >= 0, "open")?;
    let mut p = Process::new(open_fds, ("leaky-marker".to_string(),)).start()?;
    let seen = p.join()?;
    // SAFETY: closing the fd opened above, owned by nobody else.
    unsafe { libc::close(leaky) };
    // A forked child inherits the parent's fds, as in Python; a spawned one (or one forked
    // from the forkserver, itself spawned fresh) inherits none.
    if get_start_method() == StartMethod::Fork {
        ensure(seen.len() == 1, format!("not inherited by fork: {seen:?}"))?;
    } else {
        ensure(seen.is_empty(), format!("leaked into the child: {seen:?}"))?;
    }

    let file_path = dir.join("passed");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&file_path)?;
    let mut p = Process::new(
        write_file,
        (
            Handle(file.try_clone()?),
            "written by the child".to_string(),
        ),
    )
    .start()?;
    ensure(p.join()? == 20, "bytes written")?;
    let mut f = file;
    f.rewind()?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    ensure(s == "written by the child", s)?;

    let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let mut p = Process::new(write_socket, (Handle(a),)).start()?;
    ensure(p.join()?, "child wrote")?;
    b.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut buf = [0u8; 64];
    let n = b.read(&mut buf)?;
    ensure(&buf[..n] == b"hello through a passed socket", "socket data")?;
    let _ = b.as_raw_fd();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn big_arguments_and_results() -> R {
    let v: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    let mut p = Process::new(echo_big, (v.clone(),)).start()?;
    let back = p.join()?;
    ensure(
        back.len() == v.len() && back.iter().rev().eq(v.iter()),
        "8 MiB round trip",
    )
}

fn environment_and_context() -> R {
    let mut p = Process::new(env_var, ("MP_TEST_VAR".to_string(),))
        .env("MP_TEST_VAR", "hello")
        .start()?;
    ensure(p.join()? == Some("hello".to_string()), "env set")?;
    let ctx = get_context(Some(StartMethod::Spawn));
    let mut p = ctx.process(plus_one, (1,)).start()?;
    ensure(
        p.start_method() == StartMethod::Spawn && p.join()? == 2,
        "context",
    )?;
    ensure(
        matches!(
            "nope".parse::<StartMethod>(),
            Err(ProcessError::UnknownStartMethod(_))
        ),
        "unknown method",
    )?;
    ensure(get_all_start_methods().len() == 3, "three methods")?;
    ensure(cpu_count() >= 1, "cpu_count")?;
    let affinity = rustix::thread::sched_getaffinity(None)?.count() as usize;
    ensure(
        cpu_count() == affinity,
        "cpu_count follows the affinity mask",
    )
}

fn active_children_and_many_at_once() -> R {
    let mut ps = Vec::new();
    for i in 0..16u32 {
        ps.push(Process::new(plus_one, (i,)).start()?);
    }
    let mut sleeper = Process::new(sleeps, (60,)).start()?;
    ensure(
        active_children().iter().any(|c| c.pid == sleeper.pid()),
        "sleeper listed",
    )?;
    for (i, p) in ps.iter_mut().enumerate() {
        ensure(p.join()? == i as u32 + 1, "result")?;
    }
    sleeper.kill()?;
    let _ = sleeper.join();
    ensure(
        !active_children().iter().any(|c| c.pid == sleeper.pid()),
        "joined child not listed",
    )
}

fn fork_refused_with_threads() -> R {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let _ = rx.recv();
    });
    let refused = Process::new(plus_one, (1,))
        .start_method(StartMethod::Fork)
        .start();
    let allowed = Process::new(plus_one, (1,))
        .start_method(StartMethod::Fork)
        .allow_fork_with_threads()
        .start();
    drop(tx);
    let _ = t.join();
    ensure(
        matches!(refused, Err(ProcessError::ForkWithThreads { .. })),
        format!("{refused:?}"),
    )?;
    ensure(allowed?.join()? == 2, "opted-in fork works")
}

/// This process's blocked signals (SigBlk in `/proc/<pid>/status`).
fn blocked_signals(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let v = text.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

fn my_blocked_signals() -> Option<u64> {
    blocked_signals("self")
}

/// The forkserver is a helper: SIGINT and SIGTERM (a Ctrl-C meant for the program) do
/// not stop it, and its children start with them unblocked.
fn forkserver_ignores_stop_signals_its_children_do_not() -> R {
    let ctx = get_context(Some(StartMethod::Forkserver));
    ensure(ctx.process(plus_one, (1,)).start()?.join()? == 2, "first")?;
    let pid = forkserver_pid().ok_or("no forkserver")?;
    let stop = (1u64 << (libc::SIGINT - 1)) | (1 << (libc::SIGTERM - 1));
    let server = blocked_signals(&pid.to_string()).ok_or("no SigBlk")?;
    ensure(
        server & stop == stop,
        format!("SigBlk of the forkserver: {server:x}"),
    )?;
    let child = ctx
        .process(my_blocked_signals, ())
        .start()?
        .join()?
        .ok_or("no SigBlk in the child")?;
    ensure(child & stop == 0, format!("SigBlk of its child: {child:x}"))?;
    ensure(forkserver_pid() == Some(pid), "the same server")
}

fn forkserver_restarts_after_kill() -> R {
    let ctx = get_context(Some(StartMethod::Forkserver));
    ensure(ctx.process(plus_one, (1,)).start()?.join()? == 2, "first")?;
    let pid = forkserver_pid().ok_or("no forkserver")?;
    let server = rustix::process::Pid::from_raw(pid).ok_or("pid")?;
    let pidfd = rustix::process::pidfd_open(server, rustix::process::PidfdFlags::empty())?;
    rustix::process::kill_process(server, rustix::process::Signal::KILL)?;
    // Wait for it to be dead (its pidfd turns readable), so the next start finds it so.
    let mut p = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::time::Timespec {
        tv_sec: 20,
        tv_nsec: 0,
    };
    ensure(rustix::event::poll(&mut p, Some(&ts))? == 1, "server died")?;
    ensure(
        ctx.process(plus_one, (2,)).start()?.join()? == 3,
        "after the kill",
    )?;
    ensure(forkserver_pid() != Some(pid), "a new server")
}

// ---- whole-program scenarios: this binary re-run with MP_SCENARIO set ----------------

fn scenario(name: &str) -> std::process::Command {
    let mut c = std::process::Command::new(
        std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
    );
    c.env("MP_SCENARIO", name);
    c
}

fn run_scenario(name: &str) -> ! {
    match name {
        "no_init" => {
            let r = Process::new(plus_one, (1,)).start();
            println!(
                "{}",
                r.map(|_| "started".to_string())
                    .unwrap_or_else(|e| e.to_string())
            );
        }
        "exit_semantics" => {
            init();
            let marker = std::env::var("MP_MARKER").unwrap_or_default();
            let d = Process::new(sleeps, (600,))
                .daemon(true)
                .start()
                .expect("daemon");
            let _n = Process::new(touch_after, (marker, 500))
                .start()
                .expect("non-daemon");
            println!("{}", d.pid());
            // main returns here: the daemon is terminated, the other joined
        }
        "orphan_daemon" => {
            init();
            let d = Process::new(sleeps, (600,))
                .daemon(true)
                .start()
                .expect("daemon");
            println!("{}", d.pid());
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_secs(600));
        }
        _ => {}
    }
    std::process::exit(0)
}

fn touch_after(path: String, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    let _ = std::fs::write(path, b"done");
}

fn gone(pid: i32, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

fn not_initialized_is_a_clear_error() -> R {
    let out = scenario("no_init").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure(
        text.contains("multiproc::init()") && text.contains("not initialized"),
        text.to_string(),
    )
}

fn main_return_terminates_daemons_and_joins_others() -> R {
    let marker = std::env::temp_dir().join(format!("mp-exit-marker-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let t = Instant::now();
    let out = scenario("exit_semantics")
        .env("MP_MARKER", &marker)
        .output()?;
    ensure(out.status.success(), format!("scenario failed: {out:?}"))?;
    ensure(
        t.elapsed() >= Duration::from_millis(450),
        "main waited for its non-daemon child",
    )?;
    ensure(marker.exists(), "non-daemon child finished its work")?;
    let _ = std::fs::remove_file(&marker);
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    ensure(
        gone(pid, Duration::from_secs(20)),
        "daemon child was terminated",
    )
}

fn killed_parent_takes_its_daemons() -> R {
    let mut child = scenario("orphan_daemon")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let mut out = child.stdout.take().ok_or("stdout")?;
    let mut byte = [0u8; 1];
    while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    let pid: i32 = line.trim().parse()?;
    child.kill()?;
    child.wait()?;
    ensure(
        gone(pid, Duration::from_secs(20)),
        "daemon died with its parent",
    )
}

/// A thread that was joined is gone: a fork right after its join is not refused (the
/// kernel may count an exiting thread for a moment after `join` returned).
fn fork_right_after_a_thread_was_joined() -> R {
    for i in 0..300 {
        std::thread::spawn(|| std::hint::black_box(1u8))
            .join()
            .map_err(|_| "the thread panicked")?;
        let got = Process::new(plus_one, (i,))
            .start_method(StartMethod::Fork)
            .start()
            .and_then(|mut p| p.join());
        ensure(
            got.as_ref().is_ok_and(|v| *v == i + 1),
            format!("fork {i}: {got:?}"),
        )?;
    }
    Ok(())
}

fn main() {
    if let Ok(s) = std::env::var("MP_SCENARIO") {
        run_scenario(&s);
    }
    init();
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let mut tests = vec![
        t("returns_value", returns_value),
        t(
            "panic_carries_message_and_location",
            panic_carries_message_and_location,
        ),
        t("exit_early_gives_code", exit_early_gives_code),
        t("abort_and_signals", abort_and_signals),
        t(
            "join_timeout_then_kill_leaves_no_zombie",
            join_timeout_then_kill_leaves_no_zombie,
        ),
        t("sentinel_becomes_readable", sentinel_becomes_readable),
        t("bad_args_and_bad_results", bad_args_and_bad_results),
        t("family_names_and_parent", family_names_and_parent),
        t("daemon_cannot_have_children", daemon_cannot_have_children),
        t(
            "fds_travel_and_nothing_else_leaks",
            fds_travel_and_nothing_else_leaks,
        ),
        t("big_arguments_and_results", big_arguments_and_results),
        t("environment_and_context", environment_and_context),
        t(
            "active_children_and_many_at_once",
            active_children_and_many_at_once,
        ),
        t(
            "not_initialized_is_a_clear_error",
            not_initialized_is_a_clear_error,
        ),
        t(
            "main_return_terminates_daemons_and_joins_others",
            main_return_terminates_daemons_and_joins_others,
        ),
        t(
            "killed_parent_takes_its_daemons",
            killed_parent_takes_its_daemons,
        ),
    ];
    match method {
        StartMethod::Fork => {
            tests.push(t("fork_refused_with_threads", fork_refused_with_threads));
            tests.push(t(
                "fork_right_after_a_thread_was_joined",
                fork_right_after_a_thread_was_joined,
            ));
        }
        StartMethod::Forkserver => {
            tests.push(t(
                "forkserver_restarts_after_kill",
                forkserver_restarts_after_kill,
            ));
            tests.push(t(
                "forkserver_ignores_stop_signals_its_children_do_not",
                forkserver_ignores_stop_signals_its_children_do_not,
            ));
        }
        StartMethod::Spawn => {}
    }
    libtest_mimic::run(&args, tests).exit();
}
