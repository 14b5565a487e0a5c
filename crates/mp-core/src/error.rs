use std::io;

/// The errors shared by every multiproc crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A value could not be encoded (serde/postcard), or held a handle that cannot travel.
    #[error("could not encode a value of type `{type_name}`: {reason}")]
    Encode {
        /// The Rust type that failed to encode.
        type_name: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Bytes on the wire did not decode as the type expected.
    #[error("could not decode a value of type `{type_name}`: {reason}")]
    Decode {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A frame header announced more bytes than the receiver accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A frame header was malformed (negative length other than -1).
    #[error("malformed frame header: {0}")]
    BadFrame(String),
    /// The peer closed before any byte of a message.
    #[error("end of file: the peer closed the connection")]
    Eof,
    /// The peer closed in the middle of a message.
    #[error("got end of file during message")]
    TruncatedMessage,
    /// A deadline passed.
    #[error("timed out")]
    Timeout,
}

impl Error {
    /// Builds an [`Error::Encode`] for type `T`.
    pub fn encode<T: ?Sized>(reason: impl ToString) -> Self {
        Error::Encode {
            type_name: std::any::type_name::<T>(),
            reason: reason.to_string(),
        }
    }
    /// Builds an [`Error::Decode`] for type `T`.
    pub fn decode<T: ?Sized>(reason: impl ToString) -> Self {
        Error::Decode {
            type_name: std::any::type_name::<T>(),
            reason: reason.to_string(),
        }
    }
    /// Whether this is the peer going away (EOF, EPIPE, ECONNRESET).
    pub fn is_disconnect(&self) -> bool {
        match self {
            Error::Eof | Error::TruncatedMessage => true,
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::Io(e.into())
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
