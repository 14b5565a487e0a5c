//! A Listener's peer killed mid-handshake: a raw client in a child process walks the
//! authkey handshake step by step and dies (SIGKILL, from itself) after a chosen step and
//! a short random delay. `accept` reports that client's failure at once (never a
//! timeout: a dead peer is end of file), or, if it died after its verdict, returns a
//! connection that reads end of file; then the Listener accepts the next client.
use crate::matrix::{Ctx, RunResult, LONG};
use hmac::{Hmac, KeyInit, Mac};
use multiproc::pipe::Address;
use multiproc::{connect, Listener, PipeError, Process, ProcessError};
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

const KEY: &[u8] = b"crash matrix key";
/// The steps of the handshake the stranger walks (see [`stranger`]).
const STEPS: u64 = 11;
/// The first step after which the server has its verdict: a stranger killed after it
/// was accepted.
const AUTHENTICATED: u64 = 9;
/// The Listener's handshake deadline: a dead peer must be seen long before it.
const HANDSHAKE: Duration = Duration::from_secs(20);

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn read_frame(sock: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; 4];
    sock.read_exact(&mut h)?;
    let len = u32::from_be_bytes(h);
    if len > 4096 {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len as usize];
    sock.read_exact(&mut body)?;
    Ok(body)
}

/// The `{sha256}` answer to a `#CHALLENGE#` frame.
fn response(challenge: &[u8]) -> Result<Vec<u8>, String> {
    let body = challenge
        .strip_prefix(b"#CHALLENGE#")
        .ok_or("not a challenge")?;
    let mut mac =
        <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(KEY).map_err(|e| e.to_string())?;
    mac.update(body);
    let mut out = b"{sha256}".to_vec();
    out.extend_from_slice(&mac.finalize().into_bytes());
    Ok(out)
}

/// The client side of the handshake by hand, dying after step `die_at` (plus
/// `delay_us`): 0 connected; 1 read the challenge's header; 2 its body; 3 sent the
/// answer's header; 4 the whole answer; 5 read the verdict; 6 sent half of its own
/// challenge; 7 all of it; 8 read the server's answer; 9 sent `#WELCOME#`; 10 sent
/// the first bytes of a message.
fn stranger(name: Vec<u8>, die_at: u64, delay_us: u64) -> Result<(), String> {
    let die = |step: u64| {
        if step == die_at {
            std::thread::sleep(Duration::from_micros(delay_us));
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            loop {
                std::thread::park();
            }
        }
    };
    let s = |e: std::io::Error| e.to_string();
    let addr = SocketAddr::from_abstract_name(&name).map_err(s)?;
    let mut sock = UnixStream::connect_addr(&addr).map_err(s)?;
    die(0);
    let mut h = [0u8; 4];
    sock.read_exact(&mut h).map_err(s)?;
    die(1);
    let len = u32::from_be_bytes(h).min(4096);
    let mut challenge = vec![0u8; len as usize];
    sock.read_exact(&mut challenge).map_err(s)?;
    die(2);
    let answer = frame(&response(&challenge)?);
    sock.write_all(&answer[..4]).map_err(s)?;
    die(3);
    sock.write_all(&answer[4..]).map_err(s)?;
    die(4);
    let verdict = read_frame(&mut sock).map_err(s)?;
    if verdict != b"#WELCOME#" {
        return Err(format!("verdict {:?}", String::from_utf8_lossy(&verdict)));
    }
    die(5);
    let mut mine = b"#CHALLENGE#{sha256}".to_vec();
    mine.extend_from_slice(&[7u8; 40]);
    let mine = frame(&mine);
    let half = mine.len() / 2;
    sock.write_all(&mine[..half]).map_err(s)?;
    die(6);
    sock.write_all(&mine[half..]).map_err(s)?;
    die(7);
    read_frame(&mut sock).map_err(s)?;
    die(8);
    sock.write_all(&frame(b"#WELCOME#")).map_err(s)?;
    die(9);
    sock.write_all(&frame(b"a message cut short")[..10])
        .map_err(s)?;
    die(10);
    Err("the stranger was never killed".into())
}

/// An honest client: sends "ping", returns the reply.
fn honest(name: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut c = connect(Address::abstract_name(name), Some(KEY)).map_err(|e| e.to_string())?;
    c.send_bytes(b"ping").map_err(|e| e.to_string())?;
    c.recv_bytes().map_err(|e| e.to_string())
}

/// The Listener every run of this participant shares (it must keep accepting).
pub struct Shared {
    name: Vec<u8>,
    listener: Listener,
}

impl Shared {
    pub fn new() -> Result<Shared, String> {
        let name = format!("mp-crash-matrix-{}", std::process::id()).into_bytes();
        let mut listener = Listener::bind(Address::abstract_name(name.clone()), Some(KEY))
            .map_err(|e| e.to_string())?;
        listener.set_handshake_timeout(HANDSHAKE);
        Ok(Shared { name, listener })
    }
}

fn the_strangers_end(
    ctx: &mut Ctx,
    die_at: u64,
    accepted: Result<multiproc::Connection, PipeError>,
) -> Result<(), String> {
    match accepted {
        Err(PipeError::Timeout) => Err(format!(
            "accept timed out with a stranger dead after step {die_at}: its end was not seen"
        )),
        Err(e) if die_at < AUTHENTICATED => {
            ctx.note(match e {
                PipeError::Eof | PipeError::TruncatedMessage => "accept: end of file",
                PipeError::BrokenPipe => "accept: broken pipe",
                _ => "accept: other error",
            });
            Ok(())
        }
        Err(e) => Err(format!(
            "accept failed for a stranger that finished its handshake: {e}"
        )),
        Ok(_) if die_at < AUTHENTICATED => Err(format!(
            "accepted a stranger that died after step {die_at}, before its verdict"
        )),
        Ok(mut c) => {
            // Its end of file (or a message cut short) is readable, and no message.
            match c.poll(Some(LONG)) {
                Ok(true) => {}
                other => return Err(format!("the dead peer's connection: poll {other:?}")),
            }
            match c.recv_bytes() {
                Err(_) => {
                    ctx.note("accepted, then end of file");
                    Ok(())
                }
                Ok(b) => Err(format!("read {b:?} from a peer that sent no whole message")),
            }
        }
    }
}

pub fn scenario(ctx: &mut Ctx, shared: &mut Shared) -> RunResult {
    let die_at = ctx.run as u64 % STEPS;
    let delay = ctx.rng.range(0, 500);
    let mut v = Process::new(stranger, (shared.name.clone(), die_at, delay))
        .start()
        .map_err(|e| e.to_string())?;
    let accepted = shared.listener.accept_timeout(LONG);
    let ended = the_strangers_end(ctx, die_at, accepted);
    match v.join_timeout(LONG) {
        Err(ProcessError::Signaled(9)) => {}
        other => return Err(format!("the stranger: expected SIGKILL, got {other:?}")),
    }
    ended?;
    // The Listener keeps accepting.
    let mut h = Process::new(honest, (shared.name.clone(),))
        .start()
        .map_err(|e| e.to_string())?;
    let served = (|| -> Result<(), String> {
        let mut c = shared
            .listener
            .accept_timeout(LONG)
            .map_err(|e| format!("accept after the kill: {e}"))?;
        if !c.poll(Some(LONG)).map_err(|e| e.to_string())? {
            return Err("the honest client sent nothing".into());
        }
        let m = c.recv_bytes().map_err(|e| e.to_string())?;
        if m != b"ping" {
            return Err(format!("the honest client sent {m:?}"));
        }
        c.send_bytes(b"pong").map_err(|e| e.to_string())
    })();
    let joined = h.join_timeout(LONG);
    served?;
    match joined {
        Ok(Ok(reply)) if reply == b"pong" => Ok(()),
        other => Err(format!("the honest client: {other:?}")),
    }
}
