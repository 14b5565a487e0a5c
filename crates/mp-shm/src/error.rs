use std::fmt;

/// Errors of shared values, arrays and named segments.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// An index or range outside the array.
    #[error("index {index} is out of range for an array of length {len}")]
    OutOfRange {
        /// The first index that was out of range.
        index: usize,
        /// The array's length.
        len: usize,
    },
    /// A value or array without a lock was asked for one.
    #[error("this shared value has no lock (it was created raw, or holds atomics)")]
    NoLock,
    /// A named segment of this name already exists.
    #[error("a shared memory segment named {0:?} already exists")]
    Exists(String),
    /// No named segment of this name exists.
    #[error("no shared memory segment named {0:?}")]
    NotFound(String),
    /// Size 0, a bad name, or a size that does not fit.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Received memory that does not hold the type expected.
    #[error("shared memory holds another type than `{expected}`")]
    TypeMismatch {
        /// The type the receiver expected.
        expected: &'static str,
    },
    /// An error of the lock.
    #[error(transparent)]
    Sync(#[from] mp_sync::SyncError),
    /// An OS or encoding error.
    #[error(transparent)]
    Core(#[from] mp_core::Error),
}

impl From<std::io::Error> for ShmError {
    fn from(e: std::io::Error) -> Self {
        ShmError::Core(e.into())
    }
}

impl From<rustix::io::Errno> for ShmError {
    fn from(e: rustix::io::Errno) -> Self {
        ShmError::Core(e.into())
    }
}

/// The lock's previous holder died while holding it: the guard is inside, and the
/// data it protects may be half-updated (std's `PoisonError`, for processes).
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerDied { .. }")
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the previous owner of the lock died while holding it")
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// The result of taking a value's or an array's lock.
pub type LockResult<G> = Result<G, OwnerDied<G>>;

pub(crate) fn owner_died<G>(guard: G) -> OwnerDied<G> {
    OwnerDied { guard }
}
