//! Progress words: which task each worker is running, in one shared region for the whole
//! pool (one fd in the parent, not one per worker), read by the parent when a worker dies.
//!
//! A word is 0 before the worker's initializer finished, 1 once it is ready, `2s+1`
//! while task `s` runs and `2s+2` once it finished. Tasks sent after the one that was
//! running never started, so the parent hands them to another worker instead of
//! failing them.
use crate::result::lock;
use crate::PoolError;
use mp_shm::RawArray;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) fn started(seq: u64) -> u64 {
    2 * seq + 1
}

pub(crate) fn finished(seq: u64) -> u64 {
    2 * seq + 2
}

/// Decodes a progress word: (seq of the last task started, seq of the last finished).
pub(crate) fn decode(p: u64) -> (u64, u64) {
    if p <= 1 {
        (0, 0)
    } else {
        ((p - 1) / 2, (p - 2) / 2)
    }
}

/// The parent's side: one word per live worker. A pool never has more live workers
/// than its size (a replacement starts after the worker it replaces is forgotten), so
/// that many words suffice, and a word is reused once its worker is forgotten.
pub(crate) struct Board {
    words: RawArray<AtomicU64>,
    free: Mutex<Vec<usize>>,
}

impl Board {
    pub fn new(workers: usize) -> Result<Arc<Self>, PoolError> {
        let words = RawArray::new(workers.max(1)).map_err(|e| PoolError::Io(e.to_string()))?;
        let free = (0..words.len()).rev().collect();
        Ok(Arc::new(Board {
            words,
            free: Mutex::new(free),
        }))
    }

    /// A word for a new worker (reset to 0), or `None` if every word is taken.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let index = lock(&self.free).pop()?;
        self.words[index].store(0, Ordering::Release);
        Some(Slot {
            board: self.clone(),
            index,
        })
    }
}

/// A worker's word on the board; dropped with the worker's record, which frees it.
pub(crate) struct Slot {
    board: Arc<Board>,
    index: usize,
}

impl Slot {
    pub fn load(&self) -> u64 {
        self.board.words[self.index].load(Ordering::Acquire)
    }

    /// What the worker is given to write its progress.
    pub fn for_worker(&self) -> Progress {
        Progress {
            words: self.board.words.clone(),
            index: self.index,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.board.free).push(self.index);
    }
}

/// The worker's side: the board and the index of its own word.
#[derive(Serialize, Deserialize)]
pub(crate) struct Progress {
    words: RawArray<AtomicU64>,
    index: usize,
}

impl Progress {
    pub fn store(&self, value: u64) {
        if let Some(w) = self.words.get(self.index) {
            w.store(value, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_shared_and_reused() {
        let board = Board::new(2).unwrap();
        let a = board.take().unwrap();
        let b = board.take().unwrap();
        assert!(board.take().is_none(), "no more words than workers");
        a.for_worker().store(started(3));
        assert_eq!(decode(a.load()), (3, 2));
        assert_eq!(b.load(), 0);
        drop(a);
        let c = board.take().unwrap();
        assert_eq!(c.load(), 0, "a reused word starts afresh");
        // The worker's copy travels with its fd and writes the same word.
        let (bytes, fds) = mp_core::handles::encode(&c.for_worker()).unwrap();
        let remote: Progress = mp_core::handles::decode(&bytes, fds).unwrap();
        remote.store(finished(5));
        assert_eq!(decode(c.load()), (5, 5));
    }
}
