//! What the parent and a worker say to each other over the worker's own duplex pipe.
//!
//! parent -> worker: one message holding a batch of tasks (`Vec<TaskIn>`, sent as
//! `[TaskOut]`), each a [`RemoteTarget`] plus its encoded arguments (a chunk of items);
//! worker -> parent: one [`WorkerMsg`] holding a batch of replies, in task order.
//! Argument and result bytes are encoded once, by the side that knows their type, and
//! travel here as opaque bytes with their fds beside them.
use mp_core::handles::Handle;
use mp_process::RemoteTarget;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::os::fd::OwnedFd;

/// Bytes serialized as one byte string (serde's `Vec<u8>` would go byte by byte).
#[derive(Debug, Default)]
pub(crate) struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Bytes, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = a.next_element()? {
                    v.push(b);
                }
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A value encoded with `mp_core::handles::encode`: its bytes, and the fds it holds
/// (indices in the bytes refer to this table).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Encoded {
    pub bytes: Bytes,
    pub fds: Vec<Handle<OwnedFd>>,
}

impl Encoded {
    pub fn new(bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Self {
        Encoded {
            bytes: Bytes(bytes),
            fds: fds.into_iter().map(Handle).collect(),
        }
    }

    /// Encodes `value` (an error names its type and the reason).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, crate::PoolError> {
        let (b, f) =
            mp_core::handles::encode(value).map_err(|e| crate::PoolError::Encode(e.to_string()))?;
        Ok(Encoded::new(b, f))
    }

    pub fn into_parts(self) -> (Vec<u8>, Vec<OwnedFd>) {
        (self.bytes.0, self.fds.into_iter().map(|h| h.0).collect())
    }

    /// A copy whose fds are duplicates (for the initializer's arguments, sent to every
    /// worker the pool ever starts).
    pub fn try_clone(&self) -> std::io::Result<Self> {
        let mut fds = Vec::with_capacity(self.fds.len());
        for h in &self.fds {
            fds.push(Handle(h.0.try_clone()?));
        }
        Ok(Encoded {
            bytes: Bytes(self.bytes.0.clone()),
            fds,
        })
    }

    /// How many bytes this costs on the wire, roughly.
    pub fn wire_len(&self) -> usize {
        self.bytes.0.len() + 8 * self.fds.len() + 48
    }
}

/// One task as the parent sends it (borrowing what it keeps until the reply).
#[derive(Serialize)]
pub(crate) struct TaskOut<'a> {
    pub seq: u64,
    pub target: &'a RemoteTarget,
    pub args: &'a Encoded,
}

/// One task as the worker receives it: the same fields as [`TaskOut`], owned.
#[derive(Deserialize)]
pub(crate) struct TaskIn {
    pub seq: u64,
    pub target: RemoteTarget,
    pub args: Encoded,
}

/// How one task went, as the worker reports it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// The chunk ran: its encoded `Vec<Result<R, TaskFailure>>`.
    Done { seq: u64, result: Encoded },
    /// The chunk as a whole failed (arguments did not decode, result did not encode...).
    Failed { seq: u64, error: String },
}

impl Reply {
    pub fn seq(&self) -> u64 {
        match self {
            Reply::Done { seq, .. } | Reply::Failed { seq, .. } => *seq,
        }
    }
}

/// Everything a worker sends.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WorkerMsg {
    /// Replies to tasks, in the order the tasks were sent.
    Replies(Vec<Reply>),
    /// The initializer failed; the worker exits after this.
    InitFailed {
        message: String,
        location: Option<String>,
    },
}

/// A panic inside one task of a chunk: the other items of the chunk still ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskFailure {
    pub message: String,
    pub location: Option<String>,
}

impl From<TaskFailure> for crate::PoolError {
    fn from(f: TaskFailure) -> Self {
        crate::PoolError::Panicked {
            message: f.message,
            location: f.location,
        }
    }
}

/// The results of one chunk, as the worker encodes them: the values of the items that
/// succeeded, in order, and the failures with their positions in the chunk. A chunk
/// with no failure decodes straight into the `Vec<R>` a map returns.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChunkResult<R> {
    pub values: Vec<R>,
    pub failures: Vec<(u32, TaskFailure)>,
}

impl<R> ChunkResult<R> {
    pub fn len(&self) -> usize {
        self.values.len() + self.failures.len()
    }

    /// One result per item, in order.
    pub fn into_items(self) -> Vec<Result<R, crate::PoolError>> {
        let n = self.len();
        let mut out = Vec::with_capacity(n);
        let mut values = self.values.into_iter();
        let mut failures = self.failures.into_iter().peekable();
        for i in 0..n {
            match failures.next_if(|(j, _)| *j as usize == i) {
                Some((_, f)) => out.push(Err(f.into())),
                None => {
                    if let Some(v) = values.next() {
                        out.push(Ok(v));
                    }
                }
            }
        }
        out
    }
}

/// Serializes a slice of items as a sequence of one-element tuples, so that `map(f,
/// items)` runs the same worker code as `starmap(f, [(item,) ...])` without copying the
/// items into tuples first.
pub(crate) struct SeqOfOne<'a, T>(pub &'a [T]);

impl<T: Serialize> Serialize for SeqOfOne<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|x| (x,)))
    }
}
