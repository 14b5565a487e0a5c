//! [`Listener`] and [`Client`]: connections by address, with Python's authkey handshake.
//!
//! Sockets are std's `UnixListener`/`UnixStream` (file paths, and Linux abstract names
//! through `std::os::linux::net::SocketAddrExt`) and `TcpListener`/`TcpStream`. They do
//! all this crate needs with no extra dependency, and a `Connection` only needs the
//! connected fd: fd passing and framing are this crate's own either way.
//!
//! With an authkey, a socket becomes a [`Connection`] only once the handshake (see
//! `handshake.rs`) has succeeded within its deadline; a wrong key fails on both sides
//! with [`PipeError::Authentication`].
use crate::connection::Connection;
use crate::error::{PipeError, Result};
use crate::handshake::{self, DEFAULT_HANDSHAKE_TIMEOUT};
use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    handshake_timeout: Duration,
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
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
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

    /// How long a client may take over the whole handshake, from its connection to its
    /// verdict (default [`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT)).
    /// A client that is silent, or that trickles its bytes, is dropped then and
    /// [`accept`](Self::accept) gives [`PipeError::Timeout`]; one slow client holds the
    /// listener no longer than this. Without an authkey there is no handshake.
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// The handshake timeout (see [`set_handshake_timeout`](Self::set_handshake_timeout)).
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
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
    /// then answer one) within the [handshake timeout](Self::set_handshake_timeout). A
    /// client that fails is dropped and the error returned ([`PipeError::Timeout`] if it
    /// was too slow); the listener stays usable.
    ///
    /// Until it has authenticated, the client is a stranger: nothing it sends is read
    /// past its handshake frames, and no fd it attaches is ever installed here.
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
        if let Some(key) = &self.authkey {
            handshake::server(fd.as_fd(), key, self.allow_legacy, self.handshake_timeout)?;
        }
        Connection::from_fd(fd, true, true)
    }

    /// As [`accept`](Self::accept), but gives [`PipeError::Timeout`] if no client
    /// connects within `timeout`. The handshake of a client that connects has its own
    /// deadline (see [`set_handshake_timeout`](Self::set_handshake_timeout)).
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
            .field("handshake_timeout", &self.handshake_timeout)
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
    handshake_timeout: Duration,
}

impl Client {
    /// A client for `address`, without an authkey.
    pub fn new(address: impl Into<Address>) -> Self {
        Client {
            address: address.into(),
            authkey: None,
            allow_legacy: true,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Authenticates with `key` (answer the server's challenge, then deliver one).
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// How long the server may take over the whole handshake (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT)); then
    /// [`connect`](Self::connect) gives [`PipeError::Timeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// As [`Listener::set_allow_legacy_md5`].
    pub fn allow_legacy_md5(mut self, allow: bool) -> Self {
        self.allow_legacy = allow;
        self
    }

    /// Connects and, with an authkey, authenticates within the handshake timeout. Until
    /// then the server is a stranger too: no fd it attaches is installed here.
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
        if let Some(key) = &self.authkey {
            handshake::client(fd.as_fd(), key, self.allow_legacy, self.handshake_timeout)?;
        }
        Connection::from_fd(fd, true, true)
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
