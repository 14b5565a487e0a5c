//! Python's authkey handshake, with a peer that is still a stranger.
//!
//! The exchange is that of Python's `multiprocessing.connection`, over its framing: the
//! server delivers a challenge and then answers one, the client answers and then
//! delivers. A challenge is `#CHALLENGE#{sha256}` + 40 random bytes; the answer is
//! `{sha256}` + HMAC-SHA256(authkey, `{sha256}` + random bytes). Python 3.11 and older
//! send a 20-byte challenge and answer with a raw 16-byte HMAC-MD5; both are understood
//! (see [`Listener::set_allow_legacy_md5`](crate::Listener::set_allow_legacy_md5)). The
//! verdict is `#WELCOME#` or `#FAILURE#`. Digests are compared in constant time.
//!
//! Until the exchange succeeds the peer is a stranger, and [`Stranger`] is all it
//! meets: no `recvmsg`, so no fd a peer attaches is ever installed here (a plain `recv`
//! makes the kernel drop them); exact reads of one frame at a time, at most
//! [`HANDSHAKE_MAX`] bytes each, so nothing past the verdict is read and the
//! connection starts with nothing buffered; and one deadline for the whole exchange,
//! so neither a silent peer nor one that trickles a byte at a time holds us longer.
use crate::error::{PipeError, Result};
use hmac::{Hmac, KeyInit, Mac};
use mp_core::Deadline;
use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvFlags, SendFlags};
use std::os::fd::BorrowedFd;
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

/// How long a handshake may take, unless set otherwise
/// ([`Listener::set_handshake_timeout`](crate::Listener::set_handshake_timeout),
/// [`Client::handshake_timeout`](crate::Client::handshake_timeout)).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// A connected socket during the handshake: exact, fd-less reads and non-blocking
/// writes, all under one deadline.
pub(crate) struct Stranger<'a> {
    fd: BorrowedFd<'a>,
    deadline: Deadline,
}

impl<'a> Stranger<'a> {
    /// The handshake on `fd` must be over within `timeout`.
    pub(crate) fn new(fd: BorrowedFd<'a>, timeout: Duration) -> Self {
        Stranger {
            fd,
            deadline: Deadline::from_now(timeout),
        }
    }

    /// Waits until `fd` is ready for `events`, or fails with [`PipeError::Timeout`].
    fn wait(&self, events: PollFlags) -> Result<()> {
        let mut p = [PollFd::new(&self.fd, events)];
        loop {
            if self.deadline.expired() {
                return Err(PipeError::Timeout);
            }
            let left = self.deadline.remaining_timespec();
            match rustix::event::poll(&mut p, left.as_ref()) {
                Ok(0) | Err(rustix::io::Errno::INTR) => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Fills `buf` exactly. End of file is [`PipeError::Eof`] before the first byte of
    /// a frame (`frame_start`), [`PipeError::TruncatedMessage`] after it.
    fn read_exact(&mut self, buf: &mut [u8], frame_start: bool) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            // A plain `recv`: an fd attached to these bytes is closed by the kernel.
            // (Linux reports a peer that closed with our bytes unread as a reset.)
            let got = match rustix::net::recv(self.fd, &mut buf[done..], RecvFlags::DONTWAIT) {
                Err(rustix::io::Errno::CONNRESET) => Ok((0, 0)),
                other => other,
            };
            match got {
                Ok((0, _)) if done == 0 && frame_start => return Err(PipeError::Eof),
                Ok((0, _)) => return Err(PipeError::TruncatedMessage),
                Ok((n, _)) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => self.wait(PollFlags::IN)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one frame of at most [`HANDSHAKE_MAX`] bytes; a longer one (or a
    /// malformed length) is an authentication failure, and nothing is allocated for it.
    pub(crate) fn recv_frame(&mut self) -> Result<Vec<u8>> {
        let mut header = [0u8; 4];
        self.read_exact(&mut header, true)?;
        let len = i32::from_be_bytes(header);
        let len = match usize::try_from(len) {
            Ok(n) if n as u64 <= HANDSHAKE_MAX => n,
            // -1 announces a length past i32::MAX: too long as well.
            _ => {
                return Err(PipeError::Authentication(format!(
                    "handshake message of {} bytes (at most {HANDSHAKE_MAX})",
                    if len == -1 {
                        "more than 2^31".to_string()
                    } else {
                        len.to_string()
                    }
                )))
            }
        };
        let mut payload = vec![0u8; len];
        self.read_exact(&mut payload, false)?;
        Ok(payload)
    }

    /// Sends one frame.
    pub(crate) fn send_frame(&mut self, payload: &[u8]) -> Result<()> {
        let mut hb = [0u8; mp_core::frame::MAX_HEADER];
        let mut bytes = mp_core::frame::encode_header(payload.len(), &mut hb).to_vec();
        bytes.extend_from_slice(payload);
        let mut sent = 0;
        while sent < bytes.len() {
            match rustix::net::send(
                self.fd,
                &bytes[sent..],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => self.wait(PollFlags::OUT)?,
                Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {
                    return Err(PipeError::BrokenPipe)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

// ----- the digests -----

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

// ----- the exchange -----

/// The server's side on a freshly accepted socket: deliver a challenge, then answer
/// one, all within `timeout`.
pub(crate) fn server(
    fd: BorrowedFd<'_>,
    key: &[u8],
    allow_legacy: bool,
    timeout: Duration,
) -> Result<()> {
    let mut wire = Stranger::new(fd, timeout);
    deliver_challenge(&mut wire, key, allow_legacy)?;
    answer_challenge(&mut wire, key, allow_legacy)
}

/// The client's side on a fresh connection: answer a challenge, then deliver one, all
/// within `timeout`.
pub(crate) fn client(
    fd: BorrowedFd<'_>,
    key: &[u8],
    allow_legacy: bool,
    timeout: Duration,
) -> Result<()> {
    let mut wire = Stranger::new(fd, timeout);
    answer_challenge(&mut wire, key, allow_legacy)?;
    deliver_challenge(&mut wire, key, allow_legacy)
}

/// Sends a challenge and checks the answer (Python's `deliver_challenge`).
pub(crate) fn deliver_challenge(
    wire: &mut Stranger<'_>,
    key: &[u8],
    allow_legacy: bool,
) -> Result<()> {
    let mut message = b"{sha256}".to_vec();
    let mut random = [0u8; MESSAGE_LENGTH];
    mp_core::random::fill(&mut random)?;
    message.extend_from_slice(&random);
    let mut frame = CHALLENGE.to_vec();
    frame.extend_from_slice(&message);
    wire.send_frame(&frame)?;
    let response = wire.recv_frame()?;
    match verify_response(key, &message, &response, allow_legacy) {
        Ok(()) => wire.send_frame(WELCOME),
        Err(reason) => {
            // The peer learns of the failure if it is still there; ours is the error.
            let _ = wire.send_frame(FAILURE);
            Err(PipeError::Authentication(reason))
        }
    }
}

/// Answers a challenge and reads the verdict (Python's `answer_challenge`).
pub(crate) fn answer_challenge(
    wire: &mut Stranger<'_>,
    key: &[u8],
    allow_legacy: bool,
) -> Result<()> {
    let frame = wire.recv_frame()?;
    let message = frame
        .strip_prefix(CHALLENGE)
        .ok_or_else(|| PipeError::Authentication("protocol error, expected challenge".into()))?;
    let response =
        create_response(key, message, allow_legacy).map_err(PipeError::Authentication)?;
    wire.send_frame(&response)?;
    let verdict = wire.recv_frame()?;
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

    /// Lengths a stranger may announce: over the cap, the long form, negative, or a
    /// frame it never finishes are errors before any allocation or past the deadline.
    #[test]
    fn stranger_frames_are_bounded() {
        use std::os::fd::AsFd;
        let cases: [(&[u8], &str); 4] = [
            (&[0, 0, 1, 1], "257"),
            (&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1], "2^31"),
            (&[0xff, 0xff, 0xff, 0xfe], "-2"),
            (&[0, 0, 0, 9, b'#'], "timed out"),
        ];
        for (bytes, expect) in cases {
            let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
            rustix::net::send(&a, bytes, SendFlags::NOSIGNAL).expect("send");
            let mut wire = Stranger::new(b.as_fd(), Duration::from_millis(50));
            let e = wire.recv_frame().expect_err("refused");
            assert!(e.to_string().contains(expect), "{e}");
        }
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
