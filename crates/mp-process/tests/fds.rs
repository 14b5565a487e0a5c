//! Descriptors, the parent link and what a child knows of itself, with real children,
//! under the start method chosen by `MULTIPROC_START_METHOD` (the xtask runs this binary
//! once per method): the user's fds are the user's, the library's own fds reach no child
//! and no exec'd program, a grandchild's link to its parent holds.
use libtest_mimic::{Arguments, Failed, Trial};
use mp_core::Handle;
use mp_process::*;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
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

// ---- targets -------------------------------------------------------------------------

/// The name under which the test offers the write end of a pipe to every child.
const OFFERED: &str = "test.fds.pipe";

/// In a child: takes the offered handle, checks it is private, and writes one byte.
fn write_to_offered_handle() -> Result<(), String> {
    let fd = mp_core::inherit::take(OFFERED).ok_or("no handle received")?;
    if !mp_core::private_fd::is_private(fd.as_fd()) {
        return Err("the received handle is not private".into());
    }
    rustix::io::write(&fd, b"x").map_err(|e| format!("write: {e}"))?;
    Ok(())
}

fn plus_one(x: u32) -> u32 {
    x + 1
}

fn parent_alive() -> bool {
    parent_process().is_some_and(|p| p.is_alive())
}

/// In a child: starts a grandchild that reports whether it sees its parent alive.
fn grandchild_sees_parent() -> Result<bool, String> {
    let mut g = Process::new(parent_alive, ())
        .start()
        .map_err(|e| e.to_string())?;
    g.join_timeout(BOUND).map_err(|e| e.to_string())
}

/// In a child: starts a daemon grandchild and returns what it computed.
fn daemon_grandchild() -> Result<u32, String> {
    let mut g = Process::new(plus_one, (41,))
        .daemon(true)
        .start()
        .map_err(|e| e.to_string())?;
    g.join_timeout(BOUND).map_err(|e| e.to_string())
}

fn write_socket(mut s: Handle<UnixStream>) -> bool {
    s.0.write_all(b"through a grandchild").is_ok()
}

/// In a child: passes one end of a socketpair to a grandchild and reads what it wrote.
fn connection_to_grandchild() -> Result<String, String> {
    let (a, mut b) = UnixStream::pair().map_err(|e| e.to_string())?;
    let mut g = Process::new(write_socket, (Handle(a),))
        .start()
        .map_err(|e| e.to_string())?;
    let wrote = g.join_timeout(BOUND).map_err(|e| e.to_string())?;
    if !wrote {
        return Err("the grandchild could not write".into());
    }
    b.set_read_timeout(Some(BOUND)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = b.read(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Starts `sleep 60`, tells the parent its pid, and aborts: the sleep outlives us (and
/// the test's bound).
fn sleep_then_abort(mut report: Handle<UnixStream>) {
    let child = std::process::Command::new("sleep")
        .arg("60")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let pid = child.map(|c| c.id()).unwrap_or(0);
    let _ = report.0.write_all(&pid.to_be_bytes());
    std::process::abort()
}

/// What a process says its start method is, and what its own child uses.
fn methods() -> Result<(StartMethod, StartMethod, StartMethod), String> {
    let mine = get_start_method();
    let mut g = Process::new(get_start_method, ())
        .start()
        .map_err(|e| e.to_string())?;
    let used = g.start_method();
    let theirs = g.join_timeout(BOUND).map_err(|e| e.to_string())?;
    Ok((mine, used, theirs))
}

/// Panics; while unwinding, another thread panics (and is caught there).
fn panic_while_another_thread_panics() -> u32 {
    struct OtherThreadPanicsOnDrop;
    impl Drop for OtherThreadPanicsOnDrop {
        fn drop(&mut self) {
            let _ = std::thread::spawn(|| panic!("not the target's panic")).join();
        }
    }
    let _guard = OtherThreadPanicsOnDrop;
    panic!("the target's panic")
}

/// Counts this process's sockets and pidfds, from `/proc/self/fd`.
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

// ---- tests ---------------------------------------------------------------------------

/// Issue 11, item 4: a program the child execs inherits nothing of the library's, so a
/// child that dies is seen at once even if its own child lives on.
fn exec_from_child_inherits_no_bootstrap_socket() -> R {
    let (a, mut b) = UnixStream::pair()?;
    let mut p = Process::new(sleep_then_abort, (Handle(a),)).start()?;
    let got = p.join_timeout(BOUND);
    b.set_read_timeout(Some(BOUND))?;
    let mut pid = [0u8; 4];
    if b.read_exact(&mut pid).is_ok() {
        if let Some(pid) = rustix::process::Pid::from_raw(i32::from_be_bytes(pid)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    ensure(
        matches!(got, Err(ProcessError::Signaled(6))),
        format!("join waited for the grandchild's exit: {got:?}"),
    )
}

/// Issue 11, item 6: a grandchild sees its parent alive.
fn grandchild_sees_its_parent_alive() -> R {
    let mut p = Process::new(grandchild_sees_parent, ()).start()?;
    let alive = p
        .join_timeout(BOUND)?
        .map_err(|e| format!("in child: {e}"))?;
    ensure(alive, "the grandchild saw its parent dead")
}

/// Issue 11, item 6: a daemon grandchild runs (it does not kill itself at start).
fn daemon_grandchild_runs() -> R {
    let mut p = Process::new(daemon_grandchild, ()).start()?;
    let got = p.join_timeout(BOUND)?;
    ensure(got == Ok(42), format!("{got:?}"))
}

/// Issue 11, item 6: an fd passed to a grandchild is the grandchild's.
fn connection_passed_to_grandchild_works() -> R {
    let mut p = Process::new(connection_to_grandchild, ()).start()?;
    let got = p.join_timeout(BOUND)?;
    ensure(
        got.as_deref() == Ok("through a grandchild"),
        format!("{got:?}"),
    )
}

/// Issue 11, item 7: a child reports the method it was started with, and its own
/// children use it by default.
fn child_start_method_is_its_own() -> R {
    let default = get_start_method();
    let mut all = vec![StartMethod::Spawn, StartMethod::Forkserver];
    // Forking needs a single-threaded parent: only the fork run has one.
    if default == StartMethod::Fork {
        all.push(StartMethod::Fork);
    }
    for m in all {
        let mut p = get_context(Some(m)).process(methods, ()).start()?;
        let got = p.join_timeout(BOUND)?;
        ensure(
            got == Ok((m, m, m)),
            format!("started with {m}: (reported, used, grandchild's) = {got:?}"),
        )?;
    }
    Ok(())
}

/// Issue 11, item 8: a panic caught on another thread is not the target's panic.
fn other_threads_panic_is_not_the_targets() -> R {
    let mut p = Process::new(panic_while_another_thread_panics, ()).start()?;
    match p.join_timeout(BOUND) {
        Err(ProcessError::Panicked { message, .. }) => ensure(
            message == "the target's panic",
            format!("reported: {message}"),
        ),
        other => Err(format!("expected the target's panic, got {other:?}").into()),
    }
}

/// A child's target that lives until it is killed.
fn park_forever() {
    loop {
        std::thread::park()
    }
}

/// A child holds one socket (its own channel) and one pidfd (its parent's), even while
/// its parent holds another child's channel and pidfd (and, under forkserver, the
/// server's).
fn child_holds_no_private_fd_of_its_parent() -> R {
    let mut other = Process::new(park_forever, ()).start()?;
    let mut p = Process::new(sockets_and_pidfds, ()).start()?;
    let got = p.join_timeout(BOUND);
    other.kill()?;
    let _ = other.join_timeout(BOUND);
    let got = got?;
    ensure(
        got == (1, 1),
        format!("(sockets, pidfds) in the child: {got:?}"),
    )
}

/// With threads allowed, a fork never leaves the child one of the library's own locks held
/// by another thread at that moment (the child would hang in its bootstrap).
fn fork_with_threads_inherits_no_held_library_lock() -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    STOP.store(false, Ordering::SeqCst);
    let busy = std::thread::spawn(|| {
        while !STOP.load(Ordering::Relaxed) {
            let _ = current_process();
            let _ = parent_process();
            let _ = active_children();
            let _ = forkserver_pid();
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

// ---- whole-program scenarios: this binary re-run with MP_SCENARIO set ------------------

fn scenario(name: &str) -> std::process::Command {
    let mut c = std::process::Command::new(
        std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
    );
    c.env("MP_SCENARIO", name);
    c
}

/// Runs a scenario; it prints "ok" or what went wrong.
fn expect_ok(mut c: std::process::Command) -> R {
    let out = c.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure(
        out.status.success() && text.trim() == "ok",
        format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

static FILE_A: OnceLock<File> = OnceLock::new();
static FILE_B: OnceLock<File> = OnceLock::new();

/// In a forked child: what fds 3 and 4 are, after writing through the parent's statics.
fn through_static_files() -> (String, String, u32) {
    let link = |fd: i32| {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| e.to_string())
    };
    if let Some(mut f) = FILE_A.get() {
        let _ = f.write_all(b"A from the child");
    }
    if let Some(mut f) = FILE_B.get() {
        let _ = f.write_all(b"B from the child");
    }
    (link(3), link(4), 42)
}

/// Issue 11, item 3: files a forked child inherits at fds 3 and 4 stay the user's.
fn static_files_at_3_and_4() -> Result<(), String> {
    let dir = std::env::var("MP_DIR").map_err(|e| e.to_string())?;
    let (pa, pb) = (format!("{dir}/a"), format!("{dir}/b"));
    let a = File::create(&pa).map_err(|e| e.to_string())?;
    let b = File::create(&pb).map_err(|e| e.to_string())?;
    if (a.as_raw_fd(), b.as_raw_fd()) != (3, 4) {
        return Err(format!(
            "setup: files at {} and {}",
            a.as_raw_fd(),
            b.as_raw_fd()
        ));
    }
    let _ = FILE_A.set(a);
    let _ = FILE_B.set(b);
    let mut p = Process::new(through_static_files, ())
        .start_method(StartMethod::Fork)
        .start()
        .map_err(|e| e.to_string())?;
    let (l3, l4, v) = p.join_timeout(BOUND).map_err(|e| format!("join: {e}"))?;
    if (l3.as_str(), l4.as_str(), v) != (pa.as_str(), pb.as_str(), 42) {
        return Err(format!(
            "the child saw fd 3 = {l3}, fd 4 = {l4}, returned {v}"
        ));
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_else(|e| e.to_string());
    let (ta, tb) = (read(&pa), read(&pb));
    if ta != "A from the child" || tb != "B from the child" {
        return Err(format!("the files hold {ta:?} and {tb:?}"));
    }
    // Still open in the parent, at the same numbers.
    for (f, fd) in [(&FILE_A, 3), (&FILE_B, 4)] {
        let f = f.get().ok_or("static not set")?;
        if f.as_raw_fd() != fd || f.metadata().is_err() {
            return Err(format!("the parent's file at {fd} is gone"));
        }
    }
    Ok(())
}

fn user_files_at_3_and_4_survive_fork() -> R {
    let dir = std::env::temp_dir().join(format!("mp-fds-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut c = scenario("static_files");
    c.env("MP_DIR", &dir).env(START_METHOD_ENV, "fork");
    let r = expect_ok(c);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// Issue 11, item 5: the forkserver keeps no fd of its parent's.
fn forkserver_pipe_reaches_eof() -> Result<(), String> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::empty())
        .map_err(|e| format!("pipe: {e}"))?;
    let mut p = Process::new(plus_one, (1,))
        .start_method(StartMethod::Forkserver)
        .start()
        .map_err(|e| e.to_string())?;
    p.join_timeout(BOUND).map_err(|e| e.to_string())?;
    drop(w);
    if !readable(&r) {
        return Err("the pipe did not reach end of file: someone holds its writer".into());
    }
    let mut buf = [0u8; 8];
    match rustix::io::read(&r, &mut buf) {
        Ok(0) => Ok(()),
        other => Err(format!("read {other:?}")),
    }
}

fn forkserver_holds_no_parent_fd() -> R {
    let mut c = scenario("forkserver_pipe");
    c.env(START_METHOD_ENV, "forkserver");
    expect_ok(c)
}

/// In a program of its own (nothing else counts its fds): a handle that saw its child
/// exit through `exit_status()` (as a pool does) keeps no pidfd once dropped.
fn reaped_handles_release_their_pidfd() -> Result<(), String> {
    // A first child starts what lives on (the forkserver and its pidfd, the tracker).
    Process::new(plus_one, (1,))
        .start()
        .and_then(|mut p| p.join())
        .map_err(|e| e.to_string())?;
    let before = sockets_and_pidfds().1;
    for _ in 0..3 {
        let p = Process::new(plus_one, (1,))
            .start()
            .map_err(|e| e.to_string())?;
        if !readable(p.sentinel()) {
            return Err("the child did not exit in time".into());
        }
        if p.exit_status().is_none() {
            return Err("exit_status() is None after the sentinel fired".into());
        }
    }
    let after = sockets_and_pidfds().1;
    if after > before {
        return Err(format!(
            "{} pidfds kept after the handles were dropped",
            after - before
        ));
    }
    Ok(())
}

fn reaped_handles_release_their_pidfds() -> R {
    expect_ok(scenario("reaped_handles"))
}

fn run_scenario(name: &str) -> ! {
    init();
    let r = match name {
        "reaped_handles" => reaped_handles_release_their_pidfd(),
        "static_files" => static_files_at_3_and_4(),
        "forkserver_pipe" => forkserver_pipe_reaches_eof(),
        other => Err(format!("no scenario {other}")),
    };
    match r {
        Ok(()) => println!("ok"),
        Err(e) => println!("{e}"),
    }
    std::process::exit(0)
}

/// The pipe whose write end the test offers: (reader, writer).
static OFFERED_PIPE: OnceLock<(std::os::fd::OwnedFd, mp_core::PrivateFd)> = OnceLock::new();

fn provide_offered() -> std::io::Result<mp_core::PrivateFd> {
    let (_, w) = OFFERED_PIPE
        .get()
        .ok_or_else(|| std::io::Error::other("no pipe"))?;
    w.try_clone()
}

static OFFER: mp_core::inherit::Offer = mp_core::inherit::Offer::new(OFFERED, provide_offered);

/// A handle a library offers reaches every child, under every start method (under fork
/// too: the parent's private copy is let go of in the child, which gets its own).
fn offered_handles_reach_the_child() -> R {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    OFFERED_PIPE
        .set((r, mp_core::PrivateFd::new(w)?))
        .map_err(|_| "offered twice")?;
    ensure(mp_core::inherit::offer(&OFFER), "offer refused")?;
    let (reader, _) = OFFERED_PIPE.get().ok_or("no pipe")?;
    for _ in 0..2 {
        Process::new(write_to_offered_handle, ())
            .start()?
            .join_timeout(BOUND)??;
        ensure(readable(reader), "nothing written")?;
        let mut b = [0u8; 1];
        ensure(
            rustix::io::read(reader, &mut b)? == 1 && b == *b"x",
            "the byte the child wrote",
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
        t(
            "exec_from_child_inherits_no_bootstrap_socket",
            exec_from_child_inherits_no_bootstrap_socket,
        ),
        t(
            "grandchild_sees_its_parent_alive",
            grandchild_sees_its_parent_alive,
        ),
        t("daemon_grandchild_runs", daemon_grandchild_runs),
        t(
            "offered_handles_reach_the_child",
            offered_handles_reach_the_child,
        ),
        t(
            "connection_passed_to_grandchild_works",
            connection_passed_to_grandchild_works,
        ),
        t(
            "child_start_method_is_its_own",
            child_start_method_is_its_own,
        ),
        t(
            "other_threads_panic_is_not_the_targets",
            other_threads_panic_is_not_the_targets,
        ),
        t(
            "child_holds_no_private_fd_of_its_parent",
            child_holds_no_private_fd_of_its_parent,
        ),
        t(
            "reaped_handles_release_their_pidfds",
            reaped_handles_release_their_pidfds,
        ),
    ];
    match method {
        StartMethod::Fork => {
            tests.push(t(
                "user_files_at_3_and_4_survive_fork",
                user_files_at_3_and_4_survive_fork,
            ));
            tests.push(t(
                "fork_with_threads_inherits_no_held_library_lock",
                fork_with_threads_inherits_no_held_library_lock,
            ));
        }
        StartMethod::Forkserver => tests.push(t(
            "forkserver_holds_no_parent_fd",
            forkserver_holds_no_parent_fd,
        )),
        StartMethod::Spawn => {}
    }
    libtest_mimic::run(&args, tests).exit();
}
