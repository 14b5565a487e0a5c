//! The errors of this crate.
use std::io;

/// What can go wrong with a [`Connection`](crate::Connection), [`wait`](crate::wait),
/// a [`Listener`](crate::Listener) or a [`Client`](crate::Client).
///
/// The variants follow Python's exceptions where they map: `Eof` is `EOFError`,
/// `BrokenPipe` is `BrokenPipeError`, `BufferTooShort` hands the message back as
/// Python's does, `Authentication` is `AuthenticationError`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipeError {
    /// The peer closed the connection and every message before that was received.
    #[error("end of file: the peer closed the connection")]
    Eof,
    /// The peer closed in the middle of a message.
    #[error("got end of file during message")]
    TruncatedMessage,
    /// Sending to a peer that has closed its end.
    #[error("broken pipe: the peer closed the connection")]
    BrokenPipe,
    /// This connection (or listener) was closed.
    #[error("handle is closed")]
    Closed,
    /// Sending on the read end of a one-way pipe.
    #[error("connection is read-only")]
    ReadOnly,
    /// Receiving on the write end of a one-way pipe.
    #[error("connection is write-only")]
    WriteOnly,
    /// The buffer given to [`Connection::recv_bytes_into`](crate::Connection::recv_bytes_into)
    /// was too small. The message was consumed and is handed back whole.
    #[error("buffer too short for a message of {} bytes", .0.len())]
    BufferTooShort(Vec<u8>),
    /// The authkey handshake failed (a wrong key on either side, or a protocol error).
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// A frame announced more bytes than this connection accepts. Nothing was
    /// allocated for it; the connection can no longer be read (see [`PipeError::Unreadable`]).
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The connection's maximum.
        max: u64,
    },
    /// A frame header was malformed; the connection can no longer be read.
    #[error("malformed frame: {0}")]
    BadFrame(String),
    /// An earlier oversized or malformed frame lost the message boundaries: the read
    /// side of this connection cannot be used any more (sending still works).
    #[error("connection is unreadable after an oversized or malformed message")]
    Unreadable,
    /// A value could not be serialized, or holds handles that cannot travel this way.
    #[error("could not encode a value of type `{type_name}`: {reason}")]
    Encode {
        /// The Rust type being sent.
        type_name: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A message did not decode as the type expected. The message was consumed, and the
    /// connection stays usable.
    #[error("could not decode a value of type `{type_name}`: {reason}")]
    Decode {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A deadline passed.
    #[error("timed out")]
    Timeout,
    /// Any other operating-system error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl PipeError {
    /// Whether this is the peer going away (end of file or broken pipe).
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            PipeError::Eof | PipeError::TruncatedMessage | PipeError::BrokenPipe
        )
    }
}

impl From<mp_core::Error> for PipeError {
    fn from(e: mp_core::Error) -> Self {
        match e {
            mp_core::Error::Io(e) => PipeError::Io(e),
            mp_core::Error::Encode { type_name, reason } => PipeError::Encode { type_name, reason },
            mp_core::Error::Decode { type_name, reason } => PipeError::Decode { type_name, reason },
            mp_core::Error::FrameTooLarge { len, max } => PipeError::FrameTooLarge { len, max },
            mp_core::Error::BadFrame(s) => PipeError::BadFrame(s),
            mp_core::Error::Eof => PipeError::Eof,
            mp_core::Error::TruncatedMessage => PipeError::TruncatedMessage,
            mp_core::Error::Timeout => PipeError::Timeout,
            other => PipeError::Io(io::Error::other(other.to_string())),
        }
    }
}

impl From<rustix::io::Errno> for PipeError {
    fn from(e: rustix::io::Errno) -> Self {
        PipeError::Io(e.into())
    }
}

/// `Result` with [`PipeError`].
pub type Result<T, E = PipeError> = std::result::Result<T, E>;
