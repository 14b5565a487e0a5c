//! Listener and Client: Unix paths, abstract names and TCP, the authkey handshake
//! between Rust peers, hostile handshakes, and interoperation with this machine's
//! `python3` in both directions (its stdlib, and the 3.12 `{sha256}` challenge).
use mp_pipe::{connect, Address, Client, Listener, PipeError};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type R = Result<(), Box<dyn std::error::Error>>;

/// Generous: a slow CI machine must never fail these by time.
const LONG: Duration = Duration::from_secs(60);

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "mp-pipe-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn abstract_addr(tag: &str) -> Address {
    Address::abstract_name(unique(tag))
}

/// Runs `client` in a thread against `listener`'s address.
fn with_client<T: Send + 'static>(
    addr: Address,
    client: impl FnOnce(Address) -> Result<T, PipeError> + Send + 'static,
) -> JoinHandle<Result<T, PipeError>> {
    std::thread::spawn(move || client(addr))
}

fn join<T>(h: JoinHandle<Result<T, PipeError>>) -> Result<T, Box<dyn std::error::Error>> {
    Ok(h.join().map_err(|_| "thread panicked")??)
}

fn exchange(listener: &mut Listener, key: Option<&'static [u8]>) -> R {
    let addr = listener.address().clone();
    let h = with_client(addr, move |a| {
        let mut c = connect(a, key)?;
        c.send_bytes(b"hello from the client")?;
        c.send(&(1u32, "typed".to_string()))?;
        c.recv_bytes()
    });
    let mut conn = listener.accept_timeout(LONG)?;
    assert_eq!(conn.recv_bytes()?, b"hello from the client");
    assert_eq!(conn.recv::<(u32, String)>()?, (1, "typed".to_string()));
    conn.send_bytes(b"hello from the listener")?;
    assert_eq!(join(h)?, b"hello from the listener");
    Ok(())
}

#[test]
fn rust_to_rust_over_every_family() -> R {
    let dir = std::env::temp_dir().join(unique("dir"));
    std::fs::create_dir(&dir)?;
    let path = dir.join("listener.sock");
    for key in [None, Some(&b"secret key"[..]), Some(&b""[..])] {
        let mut l = Listener::bind(path.as_path(), key)?;
        assert!(path.exists());
        exchange(&mut l, key)?;
        l.close();
        l.close();
        assert!(!path.exists(), "the socket file is removed on close");
        assert!(matches!(l.accept(), Err(PipeError::Closed)));

        let mut l = Listener::bind(abstract_addr("abs"), key)?;
        exchange(&mut l, key)?;
        // A second bind to the same address fails.
        assert!(Listener::bind(l.address().clone(), key).is_err());

        let mut l = Listener::bind(Address::tcp("127.0.0.1:0")?, key)?;
        match l.address() {
            Address::Tcp(a) => assert_ne!(a.port(), 0, "the chosen port is reported"),
            other => panic!("not TCP: {other:?}"),
        }
        exchange(&mut l, key)?;
        assert!(matches!(l.last_accepted(), Some(Address::Tcp(_))));
    }
    std::fs::remove_dir(&dir)?;
    // Addresses from strings: a leading NUL is an abstract name.
    assert_eq!(Address::from("\0name"), Address::Abstract(b"name".to_vec()));
    assert_eq!(Address::from("/tmp/x"), Address::Unix("/tmp/x".into()));
    Ok(())
}

#[test]
fn wrong_key_fails_on_both_sides() -> R {
    for addr in [abstract_addr("wrong"), Address::tcp("127.0.0.1:0")?] {
        let mut l = Listener::bind(addr, Some(b"right"))?;
        let h = with_client(l.address().clone(), |a| {
            Client::new(a).authkey(b"wrong").connect().map(drop)
        });
        match l.accept_timeout(LONG) {
            Err(PipeError::Authentication(m)) => {
                assert!(m.contains("digest received was wrong"), "{m}")
            }
            other => panic!("the listener should refuse: {other:?}"),
        }
        match join(h) {
            Err(e) => assert!(e.to_string().contains("digest sent was rejected"), "{e}"),
            Ok(()) => panic!("the client should be refused"),
        }
        // The listener still serves a client with the right key.
        exchange(&mut l, Some(b"right"))?;
    }
    Ok(())
}

#[test]
fn a_client_without_the_key_is_served_nothing() -> R {
    let mut l = Listener::bind(abstract_addr("nokey"), Some(b"key"))?;
    let h = with_client(l.address().clone(), |a| {
        let mut c = Client::new(a).connect()?; // no authkey: no handshake
        let challenge = c.recv_bytes()?;
        c.send_bytes(b"let me in")?;
        let verdict = c.recv_bytes()?;
        Ok((challenge, verdict))
    });
    assert!(matches!(
        l.accept_timeout(LONG),
        Err(PipeError::Authentication(_))
    ));
    let (challenge, verdict) = join(h)?;
    assert!(
        challenge.starts_with(b"#CHALLENGE#{sha256}"),
        "{challenge:?}"
    );
    assert_eq!(challenge.len(), 11 + 8 + 40);
    assert_eq!(verdict, b"#FAILURE#");
    Ok(())
}

#[test]
fn legacy_md5_can_be_refused() -> R {
    // A Rust client refusing legacy still talks to a Rust listener (sha256 both ways).
    let mut l = Listener::bind(abstract_addr("strict"), Some(b"k"))?;
    l.set_allow_legacy_md5(false);
    let h = with_client(l.address().clone(), |a| {
        Client::new(a)
            .authkey(b"k")
            .allow_legacy_md5(false)
            .connect()?
            .recv_bytes()
    });
    l.accept_timeout(LONG)?.send_bytes(b"ok")?;
    assert_eq!(join(h)?, b"ok");
    Ok(())
}

/// Random handshake frames never make either side panic or succeed.
#[test]
fn hostile_handshakes_fail_cleanly() -> R {
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut l = Listener::bind(abstract_addr("fuzz"), Some(b"key"))?;
    for round in 0..150u32 {
        // Frames that look like the protocol: a challenge/verdict prefix or `{name}`.
        let prefixes: [&[u8]; 6] = [
            b"",
            b"#CHALLENGE#",
            b"#CHALLENGE#{sha256}",
            b"{sha256}",
            b"{md5}",
            b"#WELCOME#",
        ];
        let mut frames = Vec::new();
        for _ in 0..(next() % 4) {
            let mut f = prefixes[(next() % 6) as usize].to_vec();
            let extra = [0usize, 1, 5, 16, 20, 32, 40, 48, 300][(next() % 9) as usize];
            f.extend((0..extra).map(|_| next() as u8));
            frames.push(f);
        }
        let raw: Vec<u8> = (0..(next() % 24)).map(|_| next() as u8).collect();
        let use_raw = round % 3 == 0;
        // Hostile client against the listener.
        let (f2, r2) = (frames.clone(), raw.clone());
        let h = with_client(l.address().clone(), move |a| {
            let mut c = Client::new(a).connect()?;
            if use_raw {
                let fd = c.fd()?;
                let _ = rustix::net::send(fd, &r2, rustix::net::SendFlags::NOSIGNAL);
            } else {
                for f in &f2 {
                    let _ = c.send_bytes(f);
                }
            }
            Ok(())
        });
        assert!(
            l.accept_timeout(LONG).is_err(),
            "round {round}: a hostile client was accepted"
        );
        join(h)?;
        // Hostile listener against a client.
        let mut plain = Listener::bind(abstract_addr("fuzz-server"), None)?;
        let h = with_client(plain.address().clone(), |a| {
            Client::new(a).authkey(b"key").connect().map(drop)
        });
        let mut conn = plain.accept_timeout(LONG)?;
        if use_raw {
            let fd = conn.fd()?;
            let _ = rustix::net::send(fd, &raw, rustix::net::SendFlags::NOSIGNAL);
        } else {
            for f in &frames {
                let _ = conn.send_bytes(f);
            }
        }
        drop(conn);
        assert!(
            join(h).is_err(),
            "round {round}: a client trusted a hostile listener"
        );
    }
    Ok(())
}

#[test]
fn oversized_handshake_frames_are_refused() -> R {
    let mut l = Listener::bind(abstract_addr("big"), None)?;
    let h = with_client(l.address().clone(), |a| {
        Client::new(a).authkey(b"key").connect().map(drop)
    });
    let mut conn = l.accept_timeout(LONG)?;
    let mut big = b"#CHALLENGE#".to_vec();
    big.extend(vec![b'x'; 300]);
    conn.send_bytes(&big)?;
    match join(h) {
        Err(e) => assert!(e.to_string().contains("256"), "{e}"),
        Ok(()) => panic!("accepted a 311-byte challenge"),
    }
    Ok(())
}

// ----- Python -----

/// A running python3 script: its stdout lines arrive on a channel.
struct Py {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn python(script: &str, args: &[&str]) -> Result<Option<Py>, Box<dyn std::error::Error>> {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: python3 is not installed; the Python interop test did not run");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(Some(Py { child, lines }))
}

impl Py {
    fn line(&self) -> Result<String, Box<dyn std::error::Error>> {
        Ok(self
            .lines
            .recv_timeout(LONG)
            .map_err(|_| "python printed nothing in time")?)
    }

    /// Waits for the script to end (killing it after the generous bound); returns
    /// whether it succeeded, and its stderr.
    fn finish(mut self) -> Result<(bool, String), Box<dyn std::error::Error>> {
        let deadline = Instant::now() + LONG;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                return Err("python did not finish in time".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err)?;
        }
        Ok((status.success(), err))
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Python's address literal for `addr`.
fn py_addr(addr: &Address) -> String {
    match addr {
        Address::Abstract(n) => format!("'\\0{}'", String::from_utf8_lossy(n)),
        Address::Unix(p) => format!("{:?}", p.display().to_string()),
        Address::Tcp(a) => format!("('{}', {})", a.ip(), a.port()),
    }
}

const PY_CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
c = Client(eval(sys.argv[1]), authkey=sys.argv[2].encode())
c.send_bytes(b'hello from python')
print(c.recv_bytes().decode(), flush=True)
c.close()
"#;

#[test]
fn python_client_to_rust_listener() -> R {
    for addr in [abstract_addr("py"), Address::tcp("127.0.0.1:0")?] {
        let mut l = Listener::bind(addr, Some(b"shared key"))?;
        let Some(py) = python(PY_CLIENT, &[&py_addr(l.address()), "shared key"])? else {
            return Ok(());
        };
        let mut conn = l.accept_timeout(LONG)?;
        assert_eq!(conn.recv_bytes()?, b"hello from python");
        conn.send_bytes(b"hello from rust")?;
        assert_eq!(py.line()?, "hello from rust");
        let (ok, err) = py.finish()?;
        assert!(ok, "python failed: {err}");
        assert!(matches!(conn.recv_bytes(), Err(PipeError::Eof)));
    }
    Ok(())
}

#[test]
fn python_client_with_a_wrong_key() -> R {
    let mut l = Listener::bind(abstract_addr("pywrong"), Some(b"right"))?;
    let Some(py) = python(PY_CLIENT, &[&py_addr(l.address()), "wrong"])? else {
        return Ok(());
    };
    match l.accept_timeout(LONG) {
        Err(PipeError::Authentication(m)) => assert!(m.contains("wrong"), "{m}"),
        other => panic!("accepted a wrong key: {other:?}"),
    }
    let (ok, err) = py.finish()?;
    assert!(!ok);
    assert!(
        err.contains("AuthenticationError") && err.contains("digest sent was rejected"),
        "{err}"
    );
    Ok(())
}

const PY_LISTENER: &str = r#"
import sys
from multiprocessing.connection import Listener
from multiprocessing import AuthenticationError
l = Listener(eval(sys.argv[1]), authkey=sys.argv[2].encode())
print(repr(l.address), flush=True)
try:
    c = l.accept()
except AuthenticationError as e:
    print('AuthenticationError:', e, flush=True)
    sys.exit(3)
print(c.recv_bytes().decode(), flush=True)
c.send_bytes(b'hello from python')
try:
    c.recv_bytes()  # until the client closes
except EOFError:
    pass
"#;

fn rust_address_from_python(repr: &str) -> Result<Address, Box<dyn std::error::Error>> {
    // ('127.0.0.1', 12345), b'\x00name' (getsockname of an abstract socket) or 'path'
    if let Some(rest) = repr.strip_prefix("('") {
        let (ip, port) = rest
            .trim_end_matches(')')
            .split_once("', ")
            .ok_or("bad tuple")?;
        return Ok(Address::tcp(format!("{ip}:{port}"))?);
    }
    let name = repr.trim_start_matches('b').trim_matches('\'');
    Ok(match name.strip_prefix("\\x00") {
        Some(n) => Address::abstract_name(n),
        None => Address::from(name),
    })
}

#[test]
fn rust_client_to_python_listener() -> R {
    for addr in [
        "('127.0.0.1', 0)".to_string(),
        format!("'\\0{}'", unique("pyl")),
    ] {
        let Some(py) = python(PY_LISTENER, &[&addr, "shared key"])? else {
            return Ok(());
        };
        let address = rust_address_from_python(&py.line()?)?;
        let mut c = connect(address, Some(b"shared key"))?;
        c.send_bytes(b"hello from rust")?;
        assert_eq!(py.line()?, "hello from rust");
        assert_eq!(c.recv_bytes()?, b"hello from python");
        c.close();
        let (ok, err) = py.finish()?;
        assert!(ok, "python failed: {err}");
    }
    Ok(())
}

#[test]
fn rust_client_to_python_listener_with_a_wrong_key() -> R {
    let Some(py) = python(PY_LISTENER, &[&format!("'\\0{}'", unique("pylw")), "right"])? else {
        return Ok(());
    };
    let address = rust_address_from_python(&py.line()?)?;
    match connect(address, Some(b"wrong")) {
        Err(PipeError::Authentication(m)) => assert!(m.contains("rejected"), "{m}"),
        other => panic!("a wrong key was accepted: {other:?}"),
    }
    assert_eq!(py.line()?, "AuthenticationError: digest received was wrong");
    let (ok, _) = py.finish()?;
    assert!(!ok);
    Ok(())
}

/// Python 3.12's challenge (`deliver_challenge`/`answer_challenge` of 3.12.3, section
/// 11.2 of the reference), over the stdlib's framing, since 3.11 speaks only MD5.
const PY312: &str = r#"
import hmac, os, sys
from multiprocessing.connection import Client, Listener
from multiprocessing import AuthenticationError
CHALLENGE, WELCOME, FAILURE = b'#CHALLENGE#', b'#WELCOME#', b'#FAILURE#'
ALLOWED = {b'md5', b'sha256', b'sha384', b'sha3_256', b'sha3_384'}
def digest_and_payload(message):
    if len(message) in (20, 16):
        return 'md5', message
    if message.startswith(b'{'):
        curly = message.find(b'}', 1, 10)
        if curly > 0 and message[1:curly] in ALLOWED:
            return message[1:curly].decode('ascii'), message[curly+1:]
    raise AuthenticationError('unsupported message length, missing digest prefix, or unsupported digest')
def create_response(authkey, message):
    if len(message) in (20, 16):
        return hmac.new(authkey, message, 'md5').digest()
    name, _ = digest_and_payload(message)
    return b'{%s}%s' % (name.encode('ascii'), hmac.new(authkey, message, name).digest())
def verify(authkey, message, response):
    name, mac = digest_and_payload(response)
    expected = hmac.new(authkey, message, name).digest()
    if len(expected) != len(mac):
        raise AuthenticationError('expected %r of length %d got %d' % (name, len(expected), len(mac)))
    if not hmac.compare_digest(expected, mac):
        raise AuthenticationError('digest received was wrong')
    return name
def deliver(c, authkey, digest_name):
    message = b'{%s}%s' % (digest_name.encode('ascii'), os.urandom(40))
    c.send_bytes(CHALLENGE + message)
    response = c.recv_bytes(256)
    try:
        name = verify(authkey, message, response)
    except AuthenticationError:
        c.send_bytes(FAILURE)
        raise
    c.send_bytes(WELCOME)
    print('peer answered with', name, len(response), flush=True)
def answer(c, authkey):
    message = c.recv_bytes(256)
    assert message.startswith(CHALLENGE), message
    message = message[len(CHALLENGE):]
    print('challenged with', digest_and_payload(message)[0], len(message), flush=True)
    c.send_bytes(create_response(authkey, message))
    if c.recv_bytes(256) != WELCOME:
        raise AuthenticationError('digest sent was rejected')
role, address, key, digest = sys.argv[1], eval(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]
try:
    if role == 'client':
        c = Client(address)
        answer(c, key)
        deliver(c, key, digest)
    else:
        l = Listener(address)
        print(repr(l.address), flush=True)
        c = l.accept()
        deliver(c, key, digest)
        answer(c, key)
except AuthenticationError as e:
    print('AuthenticationError:', e, flush=True)
    sys.exit(3)
c.send_bytes(b'hello from python 3.12')
print(c.recv_bytes().decode(), flush=True)
"#;

#[test]
fn python_312_sha256_challenge_both_directions() -> R {
    // A 3.12 client against a Rust listener that refuses legacy MD5.
    for digest in ["sha256", "sha384"] {
        let mut l = Listener::bind(abstract_addr("py312"), Some(b"k312"))?;
        l.set_allow_legacy_md5(false);
        let Some(py) = python(PY312, &["client", &py_addr(l.address()), "k312", digest])? else {
            return Ok(());
        };
        let mut conn = l.accept_timeout(LONG)?;
        assert_eq!(py.line()?, "challenged with sha256 48");
        let expect = if digest == "sha256" {
            "peer answered with sha256 40"
        } else {
            "peer answered with sha384 56"
        };
        assert_eq!(py.line()?, expect);
        assert_eq!(conn.recv_bytes()?, b"hello from python 3.12");
        conn.send_bytes(b"hello from rust")?;
        assert_eq!(py.line()?, "hello from rust");
        let (ok, err) = py.finish()?;
        assert!(ok, "python failed: {err}");
    }
    // A Rust client (legacy refused) against a 3.12 listener.
    let Some(py) = python(
        PY312,
        &[
            "server",
            &format!("'\\0{}'", unique("py312s")),
            "k312",
            "sha256",
        ],
    )?
    else {
        return Ok(());
    };
    let address = rust_address_from_python(&py.line()?)?;
    let mut c = Client::new(address)
        .authkey(b"k312")
        .allow_legacy_md5(false)
        .connect()?;
    assert_eq!(py.line()?, "peer answered with sha256 40");
    assert_eq!(py.line()?, "challenged with sha256 48");
    assert_eq!(c.recv_bytes()?, b"hello from python 3.12");
    c.send_bytes(b"hello from rust")?;
    assert_eq!(py.line()?, "hello from rust");
    let (ok, err) = py.finish()?;
    assert!(ok, "python failed: {err}");
    Ok(())
}

#[test]
fn python_312_with_a_wrong_key() -> R {
    let mut l = Listener::bind(abstract_addr("py312w"), Some(b"right"))?;
    let Some(py) = python(PY312, &["client", &py_addr(l.address()), "wrong", "sha256"])? else {
        return Ok(());
    };
    assert!(matches!(
        l.accept_timeout(LONG),
        Err(PipeError::Authentication(_))
    ));
    assert_eq!(py.line()?, "challenged with sha256 48");
    assert_eq!(py.line()?, "AuthenticationError: digest sent was rejected");
    assert!(!py.finish()?.0);

    let Some(py) = python(
        PY312,
        &[
            "server",
            &format!("'\\0{}'", unique("py312ws")),
            "right",
            "sha256",
        ],
    )?
    else {
        return Ok(());
    };
    let address = rust_address_from_python(&py.line()?)?;
    assert!(matches!(
        connect(address, Some(b"wrong")),
        Err(PipeError::Authentication(_))
    ));
    assert_eq!(py.line()?, "AuthenticationError: digest received was wrong");
    assert!(!py.finish()?.0);
    Ok(())
}

#[test]
fn python_311_client_is_refused_when_legacy_md5_is() -> R {
    let mut l = Listener::bind(abstract_addr("pystrict"), Some(b"k"))?;
    l.set_allow_legacy_md5(false);
    let Some(py) = python(PY_CLIENT, &[&py_addr(l.address()), "k"])? else {
        return Ok(());
    };
    match l.accept_timeout(LONG) {
        Err(PipeError::Authentication(m)) => assert!(m.contains("legacy"), "{m}"),
        other => panic!("a legacy answer was accepted: {other:?}"),
    }
    assert!(!py.finish()?.0);
    Ok(())
}
