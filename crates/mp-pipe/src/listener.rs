//! [`Listener`] and [`Client`]: connections by address, with Python's authkey handshake.
//!
//! Sockets are std's `UnixListener`/`UnixStream` (file paths, and Linux abstract names
//! through `std::os::linux::net::SocketAddrExt`) and `TcpListener`/`TcpStream`. They do
//! all this crate needs with no extra dependency, and a `Connection` only needs the
//! connected fd: fd passing and framing are this crate's own either way.
//!
//! # The handshake
//!
//! That of Python's `multiprocessing.connection`, over the connection's own framing:
//! the server delivers a challenge and then answers one, the client answers and then
//! delivers. A challenge is `#CHALLENGE#{sha256}` + 40 random bytes; the answer is
//! `{sha256}` + HMAC-SHA256(authkey, `{sha256}` + random bytes). Python 3.11 and older
//! send a 20-byte challenge and answer with a raw 16-byte HMAC-MD5; both are understood
//! (see [`Listener::set_allow_legacy_md5`]). The verdict is `#WELCOME#` or
//! `#FAILURE#`. Every handshake frame is capped at 256 bytes and digests are compared in
//! constant time. A wrong key fails on both sides with [`PipeError::Authentication`].
use crate::connection::Connection;
use crate::error::{PipeError, Result};
use hmac::{Hmac, KeyInit, Mac};
use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a challenge we deliver (Python 3.12's `MESSAGE_LENGTH`).
const MESSAGE_LENGTH: usize = 40;
/// The legacy challenge body length, and the legacy MD5 digest length.
const MD5ONLY_MESSAGE_LENGTH: usize = 20;
const MD5_DIGEST_LEN: usize = 16;
/// The longest digest name Python allows (`sha3_256`).
const MAX_DIGEST_LEN: usize = 8;
/// Every handshake frame is received with this maximum, as Python's `recv_bytes(256)`.
pub const HANDSHAKE_MAX: u64 = 256;

/// Where a [`Listener`] listens and a [`Client`] connects.
///
/// From a `&str`/`String`: a leading NUL byte (`"\0name"`) is a Linux abstract name, as
/// in Python; anything else is a file path. From a `SocketAddr`: TCP (see also
/// [`Address::tcp`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket at a file path.
    Unix(PathBuf),
    /// A Linux abstract Unix socket name (without the leading NUL).
    Abstract(Vec<u8>),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl Address {
    /// A TCP address from anything std resolves (`"127.0.0.1:0"`, `("localhost", 80)`),
    /// taking the first result.
    pub fn tcp(addr: impl ToSocketAddrs) -> Result<Self> {
        addr.to_socket_addrs()?
            .next()
            .map(Address::Tcp)
            .ok_or_else(|| {
                PipeError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "address resolved to nothing",
                ))
            })
    }

    /// A Linux abstract Unix socket name.
    pub fn abstract_name(name: impl Into<Vec<u8>>) -> Self {
        Address::Abstract(name.into())
    }
}

impl From<&str> for Address {
    fn from(s: &str) -> Self {
        match s.strip_prefix('\0') {
            Some(name) => Address::Abstract(name.as_bytes().to_vec()),
            None => Address::Unix(PathBuf::from(s)),
        }
    }
}

impl From<String> for Address {
    fn from(s: String) -> Self {
        Address::from(s.as_str())
    }
}

impl From<&Path> for Address {
    fn from(p: &Path) -> Self {
        Address::Unix(p.to_path_buf())
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Self {
        Address::Unix(p)
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Tcp(a)
    }
}

impl From<&Address> for Address {
    fn from(a: &Address) -> Self {
        a.clone()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Abstract(n) => write!(f, "\\0{}", String::from_utf8_lossy(n)),
            Address::Tcp(a) => write!(f, "{a}"),
        }
    }
}

fn unix_address(a: &UnixSocketAddr) -> Option<Address> {
    if let Some(p) = a.as_pathname() {
        return Some(Address::Unix(p.to_path_buf()));
    }
    a.as_abstract_name().map(|n| Address::Abstract(n.to_vec()))
}

enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A server endpoint: Python's `multiprocessing.connection.Listener`.
///
/// ```
/// use mp_pipe::{Address, Client, Listener};
/// let mut listener = Listener::bind(Address::tcp("127.0.0.1:0")?, Some(b"secret"))?;
/// let addr = listener.address().clone();
/// let client = std::thread::spawn(move || -> Result<Vec<u8>, mp_pipe::PipeError> {
///     let mut c = Client::new(addr).authkey(b"secret").connect()?;
///     c.recv_bytes()
/// });
/// let mut conn = listener.accept()?;
/// conn.send_bytes(b"hello")?;
/// assert_eq!(client.join().expect("client thread")?, b"hello");
/// # Ok::<(), mp_pipe::PipeError>(())
/// ```
pub struct Listener {
    socket: Option<Socket>,
    address: Address,
    authkey: Option<Vec<u8>>,
    allow_legacy: bool,
    last_accepted: Option<Address>,
    /// The socket file we created, removed on close.
    unlink: Option<PathBuf>,
}

impl Listener {
    /// Listens on `address`. With an `authkey`, [`accept`](Self::accept) authenticates
    /// every client before returning it. `Some(b"")` authenticates with an empty key
    /// (as Python 3.12 does); `None` authenticates no one.
    pub fn bind(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<Self> {
        let address = address.into();
        let (socket, address, unlink) = match &address {
            Address::Unix(p) => (
                Socket::Unix(UnixListener::bind(p)?),
                address.clone(),
                Some(p.clone()),
            ),
            Address::Abstract(n) => {
                let a = UnixSocketAddr::from_abstract_name(n)?;
                (
                    Socket::Unix(UnixListener::bind_addr(&a)?),
                    address.clone(),
                    None,
                )
            }
            Address::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                let local = l.local_addr()?;
                (Socket::Tcp(l), Address::Tcp(local), None)
            }
        };
        Ok(Listener {
            socket: Some(socket),
            address,
            authkey: authkey.map(<[u8]>::to_vec),
            allow_legacy: true,
            last_accepted: None,
            unlink,
        })
    }

    /// Whether a client may authenticate with the legacy raw HMAC-MD5 answer of Python
    /// 3.11 and older (default: yes, as Python 3.12 does). Set `false` to require a
    /// `{sha256}`-style answer; this also refuses to answer a legacy challenge.
    pub fn set_allow_legacy_md5(&mut self, allow: bool) {
        self.allow_legacy = allow;
    }

    /// The address listened on (for TCP port 0, the port the system chose).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The peer address of the last accepted connection, if it has one (Unix clients
    /// are usually unnamed).
    pub fn last_accepted(&self) -> Option<&Address> {
        self.last_accepted.as_ref()
    }

    /// The listening socket. [`PipeError::Closed`] after close.
    pub fn fd(&self) -> Result<BorrowedFd<'_>> {
        match &self.socket {
            Some(Socket::Unix(l)) => Ok(l.as_fd()),
            Some(Socket::Tcp(l)) => Ok(l.as_fd()),
            None => Err(PipeError::Closed),
        }
    }

    /// Accepts a client and, with an authkey, authenticates it (deliver a challenge,
    /// then answer one). A client that fails is dropped and the error returned; the
    /// listener stays usable.
    pub fn accept(&mut self) -> Result<Connection> {
        let (fd, peer): (OwnedFd, Option<Address>) = match &self.socket {
            None => return Err(PipeError::Closed),
            Some(Socket::Unix(l)) => {
                let (s, a) = l.accept()?;
                (s.into(), unix_address(&a))
            }
            Some(Socket::Tcp(l)) => {
                let (s, a) = l.accept()?;
                s.set_nodelay(true)?;
                (s.into(), Some(Address::Tcp(a)))
            }
        };
        self.last_accepted = peer;
        let mut conn = Connection::from_fd(fd, true, true)?;
        if let Some(key) = &self.authkey {
            deliver_challenge(&mut conn, key, self.allow_legacy)?;
            answer_challenge(&mut conn, key, self.allow_legacy)?;
        }
        Ok(conn)
    }

    /// As [`accept`](Self::accept), but gives [`PipeError::Timeout`] if no client
    /// connects within `timeout` (the handshake itself is not timed).
    pub fn accept_timeout(&mut self, timeout: Duration) -> Result<Connection> {
        let fd = self.fd()?;
        if crate::wait::poll_fds(&[fd], Some(timeout))?.is_empty() {
            return Err(PipeError::Timeout);
        }
        self.accept()
    }

    /// Stops listening and removes the socket file. Idempotent.
    pub fn close(&mut self) {
        if self.socket.take().is_some() {
            if let Some(p) = self.unlink.take() {
                // The file may already be gone; nothing to do about it then.
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .field("closed", &self.socket.is_none())
            .field("authenticates", &self.authkey.is_some())
            .finish_non_exhaustive()
    }
}

/// A client endpoint: Python's `multiprocessing.connection.Client`, as a builder.
///
/// ```no_run
/// let mut conn = mp_pipe::Client::new("\0my-service").authkey(b"secret").connect()?;
/// conn.send_bytes(b"ping")?;
/// # Ok::<(), mp_pipe::PipeError>(())
/// ```
#[derive(Clone)]
pub struct Client {
    address: Address,
    authkey: Option<Vec<u8>>,
    allow_legacy: bool,
}

impl Client {
    /// A client for `address`, without an authkey.
    pub fn new(address: impl Into<Address>) -> Self {
        Client {
            address: address.into(),
            authkey: None,
            allow_legacy: true,
        }
    }

    /// Authenticates with `key` (answer the server's challenge, then deliver one).
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// As [`Listener::set_allow_legacy_md5`].
    pub fn allow_legacy_md5(mut self, allow: bool) -> Self {
        self.allow_legacy = allow;
        self
    }

    /// Connects and, with an authkey, authenticates.
    pub fn connect(&self) -> Result<Connection> {
        let fd: OwnedFd = match &self.address {
            Address::Unix(p) => UnixStream::connect(p)?.into(),
            Address::Abstract(n) => {
                UnixStream::connect_addr(&UnixSocketAddr::from_abstract_name(n)?)?.into()
            }
            Address::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                s.into()
            }
        };
        let mut conn = Connection::from_fd(fd, true, true)?;
        if let Some(key) = &self.authkey {
            answer_challenge(&mut conn, key, self.allow_legacy)?;
            deliver_challenge(&mut conn, key, self.allow_legacy)?;
        }
        Ok(conn)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .field("authenticates", &self.authkey.is_some())
            .finish_non_exhaustive()
    }
}

/// Python's `Client(address, authkey=...)`: [`Client::new`]`(address)` with the key.
pub fn connect(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<Connection> {
    let mut c = Client::new(address);
    c.authkey = authkey.map(<[u8]>::to_vec);
    c.connect()
}

// ----- the handshake -----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Digest {
    Md5,
    Sha256,
    Sha384,
}

impl Digest {
    fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
        }
    }

    fn hmac(self, key: &[u8], message: &[u8]) -> Result<Vec<u8>, String> {
        fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Result<Vec<u8>, String> {
            let mut m = <M as KeyInit>::new_from_slice(key).map_err(|e| format!("bad key: {e}"))?;
            m.update(message);
            Ok(m.finalize().into_bytes().to_vec())
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message),
        }
    }
}

/// Splits `{name}payload`, or recognizes a legacy 16/20-byte message (md5, whole).
/// Returns the digest, the payload, and whether it was the legacy form.
fn digest_and_payload(message: &[u8]) -> Result<(Digest, &[u8], bool), String> {
    if message.len() == MD5ONLY_MESSAGE_LENGTH || message.len() == MD5_DIGEST_LEN {
        return Ok((Digest::Md5, message, true));
    }
    if message.first() == Some(&b'{') {
        let window = &message[..message.len().min(MAX_DIGEST_LEN + 2)];
        if let Some(curly) = window
            .iter()
            .skip(1)
            .position(|&b| b == b'}')
            .map(|p| p + 1)
        {
            let name = &message[1..curly];
            let payload = &message[curly + 1..];
            return match name {
                b"md5" => Ok((Digest::Md5, payload, false)),
                b"sha256" => Ok((Digest::Sha256, payload, false)),
                b"sha384" => Ok((Digest::Sha384, payload, false)),
                _ => Err(format!(
                    "unsupported digest {:?}",
                    String::from_utf8_lossy(name)
                )),
            };
        }
    }
    Err(format!(
        "unsupported message length, missing digest prefix, or unsupported digest: {} bytes",
        message.len()
    ))
}

/// Compares in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks a response to the challenge body `message` (Python's `_verify_challenge`).
fn verify_response(
    key: &[u8],
    message: &[u8],
    response: &[u8],
    allow_legacy: bool,
) -> Result<(), String> {
    let (digest, mac, legacy) = digest_and_payload(response)?;
    if legacy && !allow_legacy {
        return Err("legacy MD5 answer refused".into());
    }
    let expected = digest.hmac(key, message)?;
    if expected.len() != mac.len() {
        return Err(format!(
            "expected {} of length {} got {}",
            digest.name(),
            expected.len(),
            mac.len()
        ));
    }
    if !constant_time_eq(&expected, mac) {
        return Err("digest received was wrong".into());
    }
    Ok(())
}

/// The answer to a challenge body (Python's `_create_response`).
fn create_response(key: &[u8], message: &[u8], allow_legacy: bool) -> Result<Vec<u8>, String> {
    if message.len() < MD5ONLY_MESSAGE_LENGTH {
        return Err(format!("challenge too short: {} bytes", message.len()));
    }
    let (digest, _, legacy) = digest_and_payload(message)?;
    if legacy {
        if !allow_legacy {
            return Err("legacy MD5 challenge refused".into());
        }
        return Digest::Md5.hmac(key, message);
    }
    // The MAC covers the whole body, its `{name}` prefix included.
    let mut out = format!("{{{}}}", digest.name()).into_bytes();
    out.extend(digest.hmac(key, message)?);
    Ok(out)
}

/// Receives one handshake frame; an oversized one is an authentication failure.
fn recv_handshake(conn: &mut Connection) -> Result<Vec<u8>> {
    match conn.recv_bytes_max(HANDSHAKE_MAX) {
        Err(PipeError::FrameTooLarge { len, .. }) => Err(PipeError::Authentication(format!(
            "handshake message of {len} bytes (at most {HANDSHAKE_MAX})"
        ))),
        other => other,
    }
}

/// Sends a challenge and checks the answer (Python's `deliver_challenge`).
pub(crate) fn deliver_challenge(
    conn: &mut Connection,
    key: &[u8],
    allow_legacy: bool,
) -> Result<()> {
    let mut message = b"{sha256}".to_vec();
    let mut random = [0u8; MESSAGE_LENGTH];
    mp_core::random::fill(&mut random)?;
    message.extend_from_slice(&random);
    let mut frame = CHALLENGE.to_vec();
    frame.extend_from_slice(&message);
    conn.send_bytes(&frame)?;
    let response = recv_handshake(conn)?;
    match verify_response(key, &message, &response, allow_legacy) {
        Ok(()) => conn.send_bytes(WELCOME),
        Err(reason) => {
            // The peer learns of the failure if it is still there; ours is the error.
            let _ = conn.send_bytes(FAILURE);
            Err(PipeError::Authentication(reason))
        }
    }
}

/// Answers a challenge and reads the verdict (Python's `answer_challenge`).
pub(crate) fn answer_challenge(
    conn: &mut Connection,
    key: &[u8],
    allow_legacy: bool,
) -> Result<()> {
    let frame = recv_handshake(conn)?;
    let message = frame
        .strip_prefix(CHALLENGE)
        .ok_or_else(|| PipeError::Authentication("protocol error, expected challenge".into()))?;
    let response =
        create_response(key, message, allow_legacy).map_err(PipeError::Authentication)?;
    conn.send_bytes(&response)?;
    let verdict = recv_handshake(conn)?;
    if verdict != WELCOME {
        return Err(PipeError::Authentication("digest sent was rejected".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_prefixes_parse_as_python_does() {
        let (d, p, legacy) = digest_and_payload(b"{sha256}abc").expect("sha256");
        assert_eq!((d, p, legacy), (Digest::Sha256, &b"abc"[..], false));
        assert_eq!(
            digest_and_payload(&[7u8; 20]).expect("legacy").0,
            Digest::Md5
        );
        assert!(digest_and_payload(&[7u8; 16]).expect("legacy").2);
        // A `}` past the first 10 bytes, a missing `}`, an unknown name, sha3 (allowed
        // by Python, not built in here): all errors, never panics.
        assert!(digest_and_payload(b"{sha256sha256}x").is_err());
        assert!(digest_and_payload(b"{sha256").is_err());
        assert!(digest_and_payload(b"{}").is_err());
        assert!(digest_and_payload(b"{sha1}abcdef").is_err());
        assert!(digest_and_payload(b"{sha3_256}x")
            .expect_err("sha3")
            .contains("sha3_256"));
        assert!(digest_and_payload(b"").is_err());
        assert!(
            create_response(b"k", b"{sha256}short", true).is_err(),
            "shorter than 20 bytes"
        );
    }

    #[test]
    fn responses_verify_only_with_the_same_key() {
        let message = b"{sha256}0123456789012345678901234567890123456789";
        let r = create_response(b"key", message, true).expect("response");
        assert!(r.starts_with(b"{sha256}") && r.len() == 40);
        assert!(verify_response(b"key", message, &r, false).is_ok());
        assert!(verify_response(b"other", message, &r, true).is_err());
        // A legacy 16-byte answer over the same body (what Python 3.11 sends).
        let legacy = Digest::Md5.hmac(b"key", message).expect("md5");
        assert!(verify_response(b"key", message, &legacy, true).is_ok());
        assert!(verify_response(b"key", message, &legacy, false).is_err());
        // A truncated MAC is a length mismatch, not a panic.
        assert!(verify_response(b"key", message, &r[..30], true).is_err());
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"a", b"ab")
        );
    }

    /// RFC 4231 test case 2, to pin the HMAC construction itself.
    #[test]
    fn hmac_sha256_known_answer() {
        let mac = Digest::Sha256
            .hmac(b"Jefe", b"what do ya want for nothing?")
            .expect("hmac");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
