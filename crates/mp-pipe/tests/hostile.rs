//! Hostile peers on Listeners and Connections (issue 12), under the start method chosen
//! by `MULTIPROC_START_METHOD` (fork with `--test-threads=1`): fds attached where none
//! belong, a process that runs out of fds, handshakes that never end, a first message
//! right behind `#WELCOME#`. The victim runs in a child, so its fds are counted exactly
//! in `/proc/<pid>/fd`; the hostile peer is written here with raw sockets. Nothing here
//! starts a thread in the parent.
use hmac::{Hmac, KeyInit, Mac};
use libtest_mimic::{Arguments, Failed, Trial};
use mp_core::Handle;
use mp_pipe::{pipe, Address, Client, Connection, Listener, PipeError};
use mp_process::{get_start_method, init, Process};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

type R = Result<(), Failed>;

/// Generous: a slow machine must never fail these by time.
const LONG: Duration = Duration::from_secs(60);
/// A handshake deadline short enough for a test, long enough for any honest peer here.
const SHORT_MS: u64 = 300;
const KEY: &[u8] = b"hostile key";
const WELCOME: &[u8] = b"#WELCOME#";
/// Fds a hostile peer attaches to every byte it sends (as in the issue's report).
const PER_BYTE: usize = 250;

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

fn s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn unique(tag: &str) -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "mp-pipe-hostile-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
    .into_bytes()
}

// ---- a raw peer --------------------------------------------------------------------

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// Sends `bytes` with `fds` attached to the first of them.
fn send_raw(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    mp_core::fdpass::send_all(sock, &[bytes], fds)
}

/// Sends `bytes` one at a time, each with `fds` attached.
fn send_bytewise(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    for b in bytes {
        send_raw(sock, std::slice::from_ref(b), fds)?;
    }
    Ok(())
}

fn read_exact(sock: BorrowedFd<'_>, n: usize) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; n];
    let mut done = 0;
    while done < n {
        match rustix::io::read(sock, &mut out[done..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => done += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn read_frame(sock: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let h = read_exact(sock, 4)?;
    let len = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if !(0..=4096).contains(&len) {
        return Err(io::Error::other(format!("unexpected frame length {len}")));
    }
    read_exact(sock, len as usize)
}

/// The `{sha256}` answer to a `#CHALLENGE#` frame.
fn response(key: &[u8], challenge: &[u8]) -> Result<Vec<u8>, String> {
    let body = challenge
        .strip_prefix(b"#CHALLENGE#")
        .ok_or("not a challenge")?;
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).map_err(s)?;
    mac.update(body);
    let mut out = b"{sha256}".to_vec();
    out.extend_from_slice(&mac.finalize().into_bytes());
    Ok(out)
}

fn connect_raw(name: &[u8]) -> io::Result<UnixStream> {
    UnixStream::connect_addr(&SocketAddr::from_abstract_name(name)?)
}

fn open_fds(pid: i32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// A pipe whose write end a hostile peer attaches to what it sends: once our own copy
/// is closed, the read end sees end of file only if no other copy is open anywhere.
struct Canary {
    r: OwnedFd,
    w: OwnedFd,
}

impl Canary {
    /// Make it after starting the victim, so that a forked child does not inherit it.
    fn new() -> io::Result<Self> {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok(Canary { r, w })
    }

    fn copies(&self, n: usize) -> Vec<BorrowedFd<'_>> {
        vec![self.w.as_fd(); n]
    }

    /// Closes our copy; whether another copy of the write end is still open.
    fn still_held(self) -> io::Result<bool> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        drop(self.w);
        let mut p = [PollFd::new(&self.r, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut p, Some(&zero))?;
        Ok(!p[0].revents().contains(PollFlags::HUP))
    }
}

// ---- targets (they run in the child) -------------------------------------------------

/// Binds a Listener on `name`, says so on `ready`, accepts one client (with a
/// handshake timeout of `timeout_ms`, 0 for the default), echoes its first message,
/// waits for its end of file, and tells how it went.
fn serve_once(name: Vec<u8>, timeout_ms: u64, mut ready: Connection) -> String {
    let mut l = match Listener::bind(Address::abstract_name(name), Some(KEY)) {
        Ok(l) => l,
        Err(e) => return format!("bind: {e}"),
    };
    if timeout_ms > 0 {
        l.set_handshake_timeout(Duration::from_millis(timeout_ms));
    }
    if let Err(e) = ready.send_bytes(b"bound") {
        return format!("ready: {e}");
    }
    let mut c = match l.accept() {
        Err(PipeError::Timeout) => return "timeout".into(),
        Err(e) => return format!("accept: {e}"),
        Ok(c) => c,
    };
    if let Err(e) = c.recv_bytes().and_then(|m| c.send_bytes(&m)) {
        return format!("echo: {e}");
    }
    match c.recv_bytes() {
        Err(PipeError::Eof) => "echoed".into(),
        other => format!("after the echo: {other:?}"),
    }
}

/// Binds a plain socket on `name`, says so, accepts one client, sends it the first
/// bytes of a challenge and nothing more, and waits for its end of file.
fn stalling_server(name: Vec<u8>, mut ready: Connection) -> Result<(), String> {
    let l =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name).map_err(s)?).map_err(s)?;
    ready.send_bytes(b"bound").map_err(s)?;
    let (c, _) = l.accept().map_err(s)?;
    send_raw(c.as_fd(), &[0, 0, 0, 59, b'#', b'C', b'H'], &[]).map_err(s)?;
    match read_exact(c.as_fd(), 1) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
        other => Err(format!("the client sent {other:?}")),
    }
}

/// Receives `n` byte messages (each arrives with fds that a hostile peer attached) and
/// returns its open fds before and after; says `done`, then waits for end of file.
fn byte_victim(mut c: Connection, n: u32) -> Result<(usize, usize), String> {
    let me = std::process::id() as i32;
    let before = open_fds(me).map_err(s)?;
    for i in 0..n {
        let m = c.recv_bytes().map_err(s)?;
        if m != format!("message {i}").as_bytes() {
            return Err(format!("message {i} was {m:?}"));
        }
    }
    let after = open_fds(me).map_err(s)?;
    c.send_bytes(b"done").map_err(s)?;
    // Not end of file: under fork this child inherited the parent's end too, as in Python.
    match c.recv_bytes() {
        Ok(m) if m == b"bye" => Ok((before, after)),
        other => Err(format!("expected the parent's goodbye, got {other:?}")),
    }
}

/// Opens `n` files: the fds that a process with that much room left can still open.
fn open_n(n: usize) -> io::Result<Vec<File>> {
    (0..n).map(|_| File::open("/dev/null")).collect()
}

/// Leaves room for three more fds (RLIMIT_NOFILE), then receives: a typed message with
/// ten handles (more than fit), a byte message with ten fds attached, and a `u8`.
/// Returns what each receive gave and whether the three slots were free again after.
fn tight_victim(mut c: Connection) -> Result<(String, String, String, bool), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let probe = open_n(3).map_err(s)?;
    let top = probe
        .iter()
        .map(|f| f.as_raw_fd())
        .max()
        .ok_or("no probe")?;
    drop(probe);
    let old = getrlimit(Resource::Nofile);
    let tight = Rlimit {
        current: Some(top as u64 + 1),
        maximum: old.maximum,
    };
    setrlimit(Resource::Nofile, tight).map_err(s)?;
    let first = match c.recv::<Vec<Handle<OwnedFd>>>() {
        Ok(v) => format!("Ok: {} handles", v.len()),
        Err(e) => format!("Err: {e}"),
    };
    let second = format!("{:?}", c.recv_bytes().map(String::from_utf8));
    let third = format!("{:?}", c.recv::<u8>());
    let room = open_n(3).is_ok();
    setrlimit(Resource::Nofile, old).map_err(s)?;
    Ok((first, second, third, room))
}

/// A client that completes the handshake by hand and sends its verdict and its first
/// message in one write, so that they arrive together; returns the reply it gets.
fn eager_client(name: Vec<u8>) -> Result<Vec<u8>, String> {
    let sock = connect_raw(&name).map_err(s)?;
    let fd = sock.as_fd();
    let challenge = read_frame(fd).map_err(s)?;
    send_raw(fd, &frame(&response(KEY, &challenge)?), &[]).map_err(s)?;
    if read_frame(fd).map_err(s)? != WELCOME {
        return Err("not welcome".into());
    }
    let mut mine = b"#CHALLENGE#{sha256}".to_vec();
    mine.extend([7u8; 40]);
    send_raw(fd, &frame(&mine), &[]).map_err(s)?;
    let _answer = read_frame(fd).map_err(s)?;
    let mut both = frame(WELCOME);
    both.extend(frame(b"first message"));
    send_raw(fd, &both, &[]).map_err(s)?;
    read_frame(fd).map_err(s)
}

/// Reads the first message on an accepted connection and answers it.
fn handle_first(mut c: Connection) -> Result<Vec<u8>, String> {
    let m = c.recv_bytes().map_err(s)?;
    let mut reply = b"reply to ".to_vec();
    reply.extend_from_slice(&m);
    c.send_bytes(&reply).map_err(s)?;
    Ok(m)
}

// ---- tests (they run in the parent) -------------------------------------------------

/// Starts [`serve_once`] and waits until it listens.
fn start_server(timeout_ms: u64) -> Result<(Process<String>, Vec<u8>), Failed> {
    let name = unique("srv");
    let (mut ready, theirs) = pipe()?;
    let p = Process::new(serve_once, (name.clone(), timeout_ms, theirs)).start()?;
    ensure(ready.poll(Some(LONG))?, "the server did not listen in time")?;
    ensure(ready.recv_bytes()? == b"bound", "the server did not listen")?;
    Ok((p, name))
}

/// Item 1: a client attaches fds to every byte of its handshake; the server must not
/// hold one (it read with `recvmsg`: 44 bytes x 250 fds = 11,000 before the fix).
fn handshake_bytes_bring_no_fds() -> R {
    let (mut server, name) = start_server(0)?;
    let pid = server.pid();
    let baseline = open_fds(pid)?;
    let canary = Canary::new()?;
    let fds = canary.copies(PER_BYTE);
    let sock = connect_raw(&name)?;
    let fd = sock.as_fd();
    let challenge = read_frame(fd)?;
    send_bytewise(fd, &frame(&response(KEY, &challenge)?), &fds)?;
    ensure(read_frame(fd)? == WELCOME, "not welcome")?;
    // The server has read our answer and waits for our challenge.
    let during = open_fds(pid)?;
    ensure(
        during <= baseline + 2,
        format!("the server holds {during} fds mid-handshake (from {baseline})"),
    )?;
    let mut mine = b"#CHALLENGE#{sha256}".to_vec();
    mine.extend([9u8; 40]);
    send_bytewise(fd, &frame(&mine), &fds)?;
    let _answer = read_frame(fd)?;
    send_bytewise(fd, &frame(WELCOME), &fds)?;
    // Authenticated now, but a byte message carries no fds either.
    send_bytewise(fd, &frame(b"ping"), &fds)?;
    ensure(read_frame(fd)? == b"ping", "no echo")?;
    let after = open_fds(pid)?;
    ensure(
        after <= baseline + 2,
        format!("the server holds {after} fds after the handshake (from {baseline})"),
    )?;
    drop(fds);
    ensure(!canary.still_held()?, "the server still holds a passed fd")?;
    drop(sock);
    let out = server.join_timeout(LONG)?;
    ensure(out == "echoed", out)
}

/// Item 3: a client that connects and says nothing costs the server its handshake
/// timeout, not its life.
fn silent_client_is_dropped_at_the_deadline() -> R {
    let (mut server, name) = start_server(SHORT_MS)?;
    let sock = connect_raw(&name)?;
    let out = server.join_timeout(LONG)?;
    ensure(out == "timeout", out)?;
    let _challenge = read_frame(sock.as_fd())?;
    ensure(
        read_exact(sock.as_fd(), 1).is_err(),
        "the server did not close",
    )
}

/// Item 3: a client that sends one byte at a time, each well within any per-read
/// timeout, is bounded by the same deadline for the whole handshake.
fn slow_loris_client_is_dropped_at_the_deadline() -> R {
    let (mut server, name) = start_server(SHORT_MS)?;
    let sock = connect_raw(&name)?;
    let fd = sock.as_fd();
    let _challenge = read_frame(fd)?;
    // 200 bytes, one per 50 ms (10 s in all), until the server goes away.
    let trickle = frame(&[b'x'; 196]);
    let mut sent = 0;
    for b in &trickle {
        if !mp_pipe::wait(&[&server.sentinel()], Some(Duration::from_millis(50)))?.is_empty() {
            break;
        }
        if rustix::net::send(
            fd,
            std::slice::from_ref(b),
            rustix::net::SendFlags::NOSIGNAL,
        )
        .is_err()
        {
            break;
        }
        sent += 1;
    }
    let out = server.join_timeout(LONG)?;
    ensure(out == "timeout", &out)?;
    ensure(
        sent < trickle.len(),
        format!("the server read the whole trickle ({out})"),
    )
}

/// Item 3: a Client bounds its wait for the server's challenge and verdict.
fn client_gives_up_on_a_silent_server() -> R {
    let short = Duration::from_millis(SHORT_MS);
    // Never accepted: the connection completes in the backlog, and nothing comes.
    let name = unique("silent");
    let _l = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name)?)?;
    let r = Client::new(Address::abstract_name(name))
        .authkey(KEY)
        .handshake_timeout(short)
        .connect();
    ensure(matches!(r, Err(PipeError::Timeout)), format!("{r:?}"))?;
    // Accepted, then half a challenge and silence.
    let name = unique("stall");
    let (mut ready, theirs) = pipe()?;
    let mut server = Process::new(stalling_server, (name.clone(), theirs)).start()?;
    ensure(ready.poll(Some(LONG))?, "the server did not listen in time")?;
    ready.recv_bytes()?;
    let r = Client::new(Address::abstract_name(name))
        .authkey(KEY)
        .handshake_timeout(short)
        .connect();
    ensure(matches!(r, Err(PipeError::Timeout)), format!("{r:?}"))?;
    drop(r);
    server.join_timeout(LONG)?.map_err(fail)
}

/// Item 2: fds attached to byte messages are closed as those messages are received
/// (they were kept for the connection's life: +5,000 fds over 20 messages).
fn byte_messages_keep_no_fds() -> R {
    let (mut a, b) = pipe()?;
    let mut victim = Process::new(byte_victim, (b, 20u32)).start()?;
    let canary = Canary::new()?;
    for i in 0..20 {
        let fds = canary.copies(PER_BYTE);
        send_raw(a.fd()?, &frame(format!("message {i}").as_bytes()), &fds)?;
    }
    ensure(a.poll(Some(LONG))?, "the victim did not answer in time")?;
    ensure(a.recv_bytes()? == b"done", "the victim did not finish")?;
    ensure(!canary.still_held()?, "the victim still holds a passed fd")?;
    a.send_bytes(b"bye")?;
    let (before, after) = victim.join_timeout(LONG)?.map_err(fail)?;
    ensure(
        after <= before + 1,
        format!("the victim went from {before} to {after} open fds"),
    )
}

/// Item 2: fds lost on the way (`MSG_CTRUNC`, here a process out of fds) fail the
/// message that claimed them and no other; the connection is not wedged and nothing
/// that did arrive is kept.
fn lost_fds_fail_one_message_only() -> R {
    let (mut a, b) = pipe()?;
    let mut victim = Process::new(tight_victim, (b,)).start()?;
    let canary = Canary::new()?;
    let handles: Vec<Handle<OwnedFd>> = (0..10)
        .map(|_| Ok(Handle(OwnedFd::from(File::open("/dev/null")?))))
        .collect::<io::Result<_>>()?;
    a.send(&handles)?;
    send_raw(a.fd()?, &frame(b"raw"), &canary.copies(10))?;
    a.send(&7u8)?;
    let (first, second, third, room) = victim.join_timeout(LONG)?.map_err(fail)?;
    ensure(
        first.starts_with("Err") && first.contains("lost"),
        format!("first: {first}"),
    )?;
    ensure(second == r#"Ok(Ok("raw"))"#, format!("second: {second}"))?;
    ensure(third == "Ok(7)", format!("third: {third}"))?;
    ensure(room, "fds that arrived were kept")
}

/// Item 4: a connection whose client's first message came right behind `#WELCOME#`
/// travels to another process with that message.
fn first_message_behind_welcome_travels() -> R {
    let name = unique("eager");
    let mut l = Listener::bind(Address::abstract_name(name.clone()), Some(KEY))?;
    let mut client = Process::new(eager_client, (name,)).start()?;
    let conn = l.accept_timeout(LONG)?;
    let mut handler = Process::new(handle_first, (conn,)).start()?;
    let first = handler.join_timeout(LONG)?.map_err(fail)?;
    ensure(first == b"first message", format!("{first:?}"))?;
    let reply = client.join_timeout(LONG)?.map_err(fail)?;
    ensure(reply == b"reply to first message", format!("{reply:?}"))
}

fn main() {
    init();
    let args = Arguments::from_args();
    let method = get_start_method();
    let t = |name: &str, f: fn() -> R| Trial::test(format!("{method}::{name}"), f);
    let tests = vec![
        t("handshake_bytes_bring_no_fds", handshake_bytes_bring_no_fds),
        t(
            "silent_client_is_dropped_at_the_deadline",
            silent_client_is_dropped_at_the_deadline,
        ),
        t(
            "slow_loris_client_is_dropped_at_the_deadline",
            slow_loris_client_is_dropped_at_the_deadline,
        ),
        t(
            "client_gives_up_on_a_silent_server",
            client_gives_up_on_a_silent_server,
        ),
        t("byte_messages_keep_no_fds", byte_messages_keep_no_fds),
        t(
            "lost_fds_fail_one_message_only",
            lost_fds_fail_one_message_only,
        ),
        t(
            "first_message_behind_welcome_travels",
            first_message_behind_welcome_travels,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
