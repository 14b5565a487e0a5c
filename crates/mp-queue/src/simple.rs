//! [`SimpleQueue`]: Python's `SimpleQueue`, no maxsize and a blocking get.
use crate::error::{GetError, PutError, QueueError};
use crate::queue::{Iter, Queue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An unbounded queue with the small API of Python's `SimpleQueue`: [`put`],
/// [`get`] (blocking, no timeout), [`empty`], [`close`], plus an iterator.
///
/// It is the same ring as a [`Queue`], so it is as fast; the narrower API is for code
/// that wants no more.
///
/// ```
/// let q = mp_queue::SimpleQueue::<String>::new()?;
/// q.put("hi".to_string()).unwrap();
/// assert!(!q.empty());
/// assert_eq!(q.get().unwrap(), "hi");
/// q.close();
/// assert!(q.get().unwrap_err().is_closed());
/// # Ok::<(), mp_queue::QueueError>(())
/// ```
///
/// [`put`]: Self::put
/// [`get`]: Self::get
/// [`empty`]: Self::empty
/// [`close`]: Self::close
pub struct SimpleQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleQueue")
            .field("empty", &self.empty())
            .field("closed", &self.queue.is_closed())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// A new, empty queue.
    pub fn new() -> Result<Self, QueueError> {
        Ok(SimpleQueue {
            queue: Queue::new()?,
        })
    }

    /// Puts `value`; never waits for room. An encoding error is returned here.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.queue.put(value)
    }

    /// Takes the next item, waiting for one; [`GetError::Closed`] once the queue is
    /// closed and drained.
    pub fn get(&self) -> Result<T, GetError> {
        self.queue.get()
    }

    /// Received items until the queue is closed and drained.
    pub fn iter(&self) -> Iter<'_, T> {
        self.queue.iter()
    }
}

impl<T> SimpleQueue<T> {
    /// Whether the queue holds no item.
    pub fn empty(&self) -> bool {
        self.queue.empty()
    }

    /// Closes the queue for every process (see [`Queue::close`]). Idempotent.
    pub fn close(&self) {
        self.queue.close()
    }
}

impl<'a, T: Serialize + DeserializeOwned> IntoIterator for &'a SimpleQueue<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> Serialize for SimpleQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for SimpleQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Queue::deserialize(d).map(|queue| SimpleQueue { queue })
    }
}
