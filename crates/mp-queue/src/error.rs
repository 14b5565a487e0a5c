//! Errors: [`PutError`] hands the value back (crossbeam style), [`GetError`] for the
//! receiving side, [`QueueError`] for everything else.
use std::fmt;

/// Why a put failed. Every variant hands the value back.
///
/// `Full` is Python's `queue.Full`: at once for a non-blocking put, after about the
/// timeout for a timed one.
pub enum PutError<T> {
    /// The queue stayed full (maxsize items, or its byte capacity is used up).
    Full(T),
    /// The queue was closed.
    Closed(T),
    /// The encoded value is larger than the queue's byte capacity can ever hold.
    TooLarge(T),
    /// The value could not be serialized (the queue is unchanged and stays usable).
    Encode(T, mp_core::Error),
    /// The side channel that carries the value's fds failed.
    Io(T, std::io::Error),
}

impl<T> PutError<T> {
    /// The value that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(v)
            | PutError::Closed(v)
            | PutError::TooLarge(v)
            | PutError::Encode(v, _)
            | PutError::Io(v, _) => v,
        }
    }

    /// Whether this is [`PutError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }

    /// Whether this is [`PutError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, PutError::Closed(_))
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::TooLarge(_) => f.write_str("TooLarge(..)"),
            PutError::Encode(_, e) => write!(f, "Encode(.., {e:?})"),
            PutError::Io(_, e) => write!(f, "Io(.., {e:?})"),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("the queue is full"),
            PutError::Closed(_) => f.write_str("the queue is closed"),
            PutError::TooLarge(_) => {
                f.write_str("the item is larger than the queue's byte capacity")
            }
            PutError::Encode(_, e) => write!(f, "{e}"),
            PutError::Io(_, e) => write!(f, "could not send the item's handles: {e}"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PutError::Encode(_, e) => Some(e),
            PutError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Why a get failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// Nothing to get: at once for a non-blocking get, after about the timeout for a
    /// timed one (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,
    /// The queue is closed and every item put before the close has been taken.
    #[error("the queue is closed")]
    Closed,
    /// The next item did not decode as the expected type (or its handles were
    /// missing). The item is consumed; the queue stays usable.
    #[error(transparent)]
    Decode(mp_core::Error),
    /// The shared state is inconsistent (only a misbehaving process writing into the
    /// queue's memory can cause this).
    #[error("queue memory is corrupt: {0}")]
    Corrupt(&'static str),
}

impl GetError {
    /// Whether this is [`GetError::Empty`].
    pub fn is_empty(&self) -> bool {
        matches!(self, GetError::Empty)
    }
    /// Whether this is [`GetError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, GetError::Closed)
    }
}

/// Errors of creating a queue and of `JoinableQueue::task_done`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// `task_done()` was called more times than items were put (Python's
    /// `ValueError('task_done() called too many times')`).
    #[error("task_done() called too many times")]
    TaskDoneTooManyTimes,
    /// A builder argument out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// Creating the locks failed.
    #[error(transparent)]
    Sync(#[from] mp_sync::SyncError),
    /// Creating the shared memory failed.
    #[error(transparent)]
    Core(#[from] mp_core::Error),
    /// Creating the side channel for handles failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
