//! [`JoinableQueue`]: a [`Queue`] that counts unfinished tasks.
use crate::error::QueueError;
use crate::queue::Queue;
use mp_core::Deadline;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A [`Queue`] whose consumers report each item as done ([`task_done`]), so that
/// a producer can wait until every item put has been processed ([`join`]).
///
/// It dereferences to its [`Queue`], for `put`, `get` and the rest. The count of
/// unfinished tasks goes up with each put and down with each `task_done`; one
/// `task_done` too many is [`QueueError::TaskDoneTooManyTimes`].
///
/// ```
/// let q = mp_queue::JoinableQueue::<u32>::new()?;
/// q.put(1).unwrap();
/// assert_eq!(q.unfinished_tasks(), 1);
/// assert_eq!(q.get().unwrap(), 1);
/// q.task_done()?;
/// q.join(); // returns at once: nothing unfinished
/// assert!(q.task_done().is_err());
/// # Ok::<(), mp_queue::QueueError>(())
/// ```
///
/// [`task_done`]: Self::task_done
/// [`join`]: Self::join
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .field("unfinished_tasks", &self.unfinished_tasks())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// An unbounded joinable queue.
    pub fn new() -> Result<Self, QueueError> {
        Ok(JoinableQueue {
            queue: Queue::new()?,
        })
    }

    /// A joinable queue of at most `maxsize` items (0: unbounded).
    pub fn bounded(maxsize: usize) -> Result<Self, QueueError> {
        Ok(JoinableQueue {
            queue: Queue::bounded(maxsize)?,
        })
    }
}

impl<T> JoinableQueue<T> {
    /// Wraps a queue made with [`Queue::builder`]. Its items already put count as
    /// unfinished tasks.
    pub fn from_queue(queue: Queue<T>) -> Self {
        JoinableQueue { queue }
    }

    /// Items put and not yet reported done, across all processes.
    pub fn unfinished_tasks(&self) -> usize {
        let h = self.queue.ring().hdr();
        let done = h.join.done.load(Ordering::Acquire);
        h.prod.put_seq.load(Ordering::Acquire).saturating_sub(done) as usize
    }

    /// Reports one item taken from the queue as processed.
    pub fn task_done(&self) -> Result<(), QueueError> {
        let h = self.queue.ring().hdr();
        let mut done = h.join.done.load(Ordering::Acquire);
        loop {
            let put = h.prod.put_seq.load(Ordering::Acquire);
            if done >= put {
                return Err(QueueError::TaskDoneTooManyTimes);
            }
            match h.join.done.compare_exchange_weak(
                done,
                done + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if done + 1 == put {
                        h.joiners.notify(true);
                    }
                    return Ok(());
                }
                Err(now) => done = now,
            }
        }
    }

    /// Waits until every item put has been reported done.
    pub fn join(&self) {
        self.join_until(Deadline::NEVER);
    }

    /// As [`join`](Self::join), for at most `timeout`: whether everything was done.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.join_until(Deadline::from_now(timeout))
    }

    fn join_until(&self, deadline: Deadline) -> bool {
        let h = self.queue.ring().hdr();
        h.joiners.wait_until(deadline, || {
            h.join.done.load(Ordering::Acquire) >= h.prod.put_seq.load(Ordering::Acquire)
        })
    }

    /// The queue.
    pub fn queue(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Queue::deserialize(d).map(|queue| JoinableQueue { queue })
    }
}
