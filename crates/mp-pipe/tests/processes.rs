//! Connections across real processes, under the start method chosen by
//! `MULTIPROC_START_METHOD` (the xtask runs this binary once per method; fork with
//! `--test-threads=1`). Nothing here starts a thread in the parent.
use libtest_mimic::{Arguments, Failed, Trial};
use mp_core::Handle;
use mp_pipe::{pipe, pipe_oneway, wait, Connection, PipeError};
use mp_process::{get_start_method, init, Process};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

type R = Result<(), Failed>;

/// Generous: a slow machine must never fail these by time.
const LONG: Duration = Duration::from_secs(60);

fn ensure(cond: bool, msg: impl std::fmt::Display) -> R {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

fn fail(e: impl std::fmt::Display) -> Failed {
    e.to_string().into()
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Msg {
    Text(String),
    Blob(Vec<u8>),
    Number(u64),
    Stop,
}

// ---- targets (they run in the child) --------------------------------------------------

/// Echoes typed messages until `Stop`; returns how many it echoed.
fn echo(mut c: Connection) -> Result<u64, String> {
    let mut n = 0;
    loop {
        match c.recv::<Msg>().map_err(|e| e.to_string())? {
            Msg::Stop => return Ok(n),
            m => {
                c.send(&m).map_err(|e| e.to_string())?;
                n += 1;
            }
        }
    }
}

/// Echoes raw messages until an empty one, which it echoes too.
fn echo_bytes(mut c: Connection) -> Result<(), String> {
    loop {
        let m = c.recv_bytes().map_err(|e| e.to_string())?;
        c.send_bytes(&m).map_err(|e| e.to_string())?;
        if m.is_empty() {
            return Ok(());
        }
    }
}

/// Receives a Connection over `ctl`, talks through it, then sends back one end of a
/// pipe made here and a file.
fn relay(mut ctl: Connection) -> Result<String, String> {
    let e = |e: PipeError| e.to_string();
    let mut passed: Connection = ctl.recv().map_err(e)?;
    passed
        .send(&Msg::Text("through the passed connection".into()))
        .map_err(e)?;
    let reply = passed.recv::<Msg>().map_err(e)?;
    let (mut mine, theirs) = pipe().map_err(e)?;
    let mut file = tempfile().map_err(|e| e.to_string())?;
    file.write_all(b"written by the child")
        .map_err(|e| e.to_string())?;
    ctl.send(&(theirs, Handle(file))).map_err(e)?;
    mine.send(&Msg::Number(99)).map_err(e)?;
    match mine.recv::<Msg>().map_err(e)? {
        Msg::Text(t) => Ok(format!("{reply:?} / {t}")),
        other => Err(format!("unexpected {other:?}")),
    }
}

/// Sends two messages and returns at once.
fn say_two_and_exit(mut c: Connection) -> Result<(), String> {
    c.send(&Msg::Number(1)).map_err(|e| e.to_string())?;
    c.send_bytes(b"second").map_err(|e| e.to_string())
}

/// Returns at once: its end closes when it exits.
fn exit_at_once(_c: Connection) {}

/// Sends on a write end; tries to send on a read end.
fn one_way(mut w: Connection, mut r: Connection) -> String {
    let sent = w.send(&Msg::Text("one way".into()));
    let refused = r.send(&Msg::Stop);
    format!(
        "{:?} {}",
        sent.is_ok(),
        refused.map_err(|e| e.to_string()).err().unwrap_or_default()
    )
}

/// Sleeps, then sends (or just exits if `send` is false).
fn later(mut c: Connection, millis: u64, send: bool) -> Result<(), String> {
    std::thread::sleep(Duration::from_millis(millis));
    if send {
        c.send(&Msg::Text(format!("after {millis} ms")))
            .map_err(|e| e.to_string())?;
        // Stay until told to go, so the parent sees the message before the sentinel.
        let _ = c.recv::<Msg>();
    }
    Ok(())
}

fn tempfile() -> std::io::Result<File> {
    let path = std::env::temp_dir().join(format!(
        "mp-pipe-proc-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

// ---- tests (they run in the parent) -------------------------------------------------

fn connection_as_argument_echoes() -> R {
    let (mut a, b) = pipe()?;
    let mut p = Process::new(echo, (b,)).start()?;
    let big = Msg::Blob((0..1_500_000u32).map(|i| (i % 253) as u8).collect());
    let msgs = [
        Msg::Text(String::new()),
        Msg::Number(7),
        big.clone(),
        Msg::Text("é ünïcode".into()),
        Msg::Blob(Vec::new()),
    ];
    for m in &msgs {
        a.send(m)?;
        ensure(a.poll(Some(LONG))?, "no echo in time")?;
        ensure(&a.recv::<Msg>()? == m, "echo differs")?;
    }
    // A burst before reading anything: boundaries are kept.
    for i in 0..500 {
        a.send(&Msg::Number(i))?;
    }
    for i in 0..500 {
        ensure(
            a.recv::<Msg>()? == Msg::Number(i),
            format!("burst message {i}"),
        )?;
    }
    a.send(&Msg::Stop)?;
    let n = p.join_timeout(LONG)?.map_err(fail)?;
    ensure(n == 505, format!("echoed {n}"))
}

fn raw_bytes_echo() -> R {
    let (mut a, b) = pipe()?;
    let mut p = Process::new(echo_bytes, (b,)).start()?;
    for m in [&b"x"[..], &[0u8; 70_000][..], b"\x00\x01", b""] {
        a.send_bytes(m)?;
        let mut buf = vec![0u8; 100_000];
        let n = a.recv_bytes_into(&mut buf)?;
        ensure(&buf[..n] == m, "raw echo differs")?;
    }
    p.join_timeout(LONG)?.map_err(fail)?;
    Ok(())
}

fn connection_sent_inside_a_message_both_ways() -> R {
    let (mut ctl, ctl_child) = pipe()?;
    let mut p = Process::new(relay, (ctl_child,)).start()?;
    let (mut x, y) = pipe()?;
    ctl.send(&y)?;
    drop(y);
    ensure(
        x.recv::<Msg>()? == Msg::Text("through the passed connection".into()),
        "first message",
    )?;
    x.send(&Msg::Number(5))?;
    let (mut theirs, Handle(mut file)): (Connection, Handle<File>) = ctl.recv()?;
    ensure(
        theirs.recv::<Msg>()? == Msg::Number(99),
        "message on the child's pipe",
    )?;
    theirs.send(&Msg::Text("back to the child".into()))?;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    ensure(
        text == "written by the child",
        format!("file said {text:?}"),
    )?;
    let out = p.join_timeout(LONG)?.map_err(fail)?;
    ensure(out == "Number(5) / back to the child", out)
}

fn eof_after_the_child_exits() -> R {
    let (mut a, b) = pipe()?;
    let mut p = Process::new(say_two_and_exit, (b,)).start()?;
    p.join_timeout(LONG)?.map_err(fail)?;
    ensure(a.poll(Some(Duration::ZERO))?, "readable after exit")?;
    ensure(a.recv::<Msg>()? == Msg::Number(1), "first")?;
    ensure(a.recv_bytes()? == b"second", "second")?;
    ensure(
        matches!(a.recv::<Msg>(), Err(PipeError::Eof)),
        "end of file once drained",
    )?;
    ensure(
        matches!(a.recv_bytes(), Err(PipeError::Eof)),
        "still end of file",
    )
}

fn broken_pipe_after_the_child_exits() -> R {
    let (mut a, b) = pipe()?;
    let mut p = Process::new(exit_at_once, (b,)).start()?;
    p.join_timeout(LONG)?;
    ensure(
        matches!(a.send(&Msg::Stop), Err(PipeError::BrokenPipe)),
        "send to a gone peer",
    )?;
    let (r, mut w) = pipe_oneway()?;
    let mut p = Process::new(exit_at_once, (r,)).start()?;
    p.join_timeout(LONG)?;
    match w.send_bytes(b"x") {
        Err(PipeError::BrokenPipe) => Ok(()),
        other => Err(format!("expected BrokenPipe, got {other:?}").into()),
    }
}

fn one_way_pipes_as_arguments() -> R {
    let (mut r, w) = pipe_oneway()?;
    let (r2, _w2) = pipe_oneway()?;
    let mut p = Process::new(one_way, (w, r2)).start()?;
    ensure(
        r.recv::<Msg>()? == Msg::Text("one way".into()),
        "one-way message",
    )?;
    let out = p.join_timeout(LONG)?;
    ensure(out == "true connection is read-only", out)
}

fn wait_over_connections_and_sentinels() -> R {
    let (mut a1, b1) = pipe()?;
    let mut talker = Process::new(later, (b1, 100, true)).start()?;
    // Made after the talker started: under fork a child inherits the parent's fds, as in
    // Python, and a talker holding `b2` would keep the quitter's pipe open.
    let (a2, b2) = pipe()?;
    let mut quitter = Process::new(later, (b2, 300, false)).start()?;
    let deadline = Instant::now() + LONG;
    // First only the talker's message.
    let ready = wait(
        &[&a1, &a2, &talker.sentinel(), &quitter.sentinel()],
        Some(LONG),
    )?;
    ensure(ready == [0], format!("first ready: {ready:?}"))?;
    ensure(
        matches!(a1.recv::<Msg>()?, Msg::Text(_)),
        "talker's message",
    )?;
    // Then the quitter: its connection (end of file) and its sentinel, maybe apart.
    let mut seen = [false; 2];
    while !(seen[0] && seen[1]) {
        ensure(Instant::now() < deadline, "quitter not seen in time")?;
        let ready = wait(
            &[&a1, &a2, &talker.sentinel(), &quitter.sentinel()],
            Some(LONG),
        )?;
        ensure(
            !ready.contains(&0) && !ready.contains(&2),
            format!("talker is still quiet: {ready:?}"),
        )?;
        seen[0] |= ready.contains(&1);
        seen[1] |= ready.contains(&3);
    }
    ensure(
        wait(&[&talker.sentinel()], Some(Duration::ZERO))?.is_empty(),
        "talker still alive",
    )?;
    a1.send(&Msg::Stop)?;
    ensure(
        wait(&[&talker.sentinel()], Some(LONG))? == [0],
        "talker's sentinel",
    )?;
    talker.join_timeout(LONG)?.map_err(fail)?;
    quitter.join_timeout(LONG)?.map_err(fail)?;
    Ok(())
}

fn main() {
    init();
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let tests = vec![
        t(
            "connection_as_argument_echoes",
            connection_as_argument_echoes,
        ),
        t("raw_bytes_echo", raw_bytes_echo),
        t(
            "connection_sent_inside_a_message_both_ways",
            connection_sent_inside_a_message_both_ways,
        ),
        t("eof_after_the_child_exits", eof_after_the_child_exits),
        t(
            "broken_pipe_after_the_child_exits",
            broken_pipe_after_the_child_exits,
        ),
        t("one_way_pipes_as_arguments", one_way_pipes_as_arguments),
        t(
            "wait_over_connections_and_sentinels",
            wait_over_connections_and_sentinels,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
