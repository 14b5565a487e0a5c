//! [`Queue`]: many producers and many consumers in any number of processes.
use crate::error::{GetError, PutError, QueueError};
use crate::fds::{FdChannel, SendFail, MAX_FDS_PER_ITEM};
use crate::ring::{record_size, type_hash, Ring, MAX_POS, REC_HDR};
use mp_core::handles::{decode, encode_into, Handle};
use mp_core::{Deadline, SharedRegion};
use mp_sync::{Lock, SyncError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Default byte capacity of a queue: how many bytes of encoded items it holds before a
/// put must wait. Address space only: pages are touched as items need them.
pub const DEFAULT_CAPACITY: u64 = 4 << 30;
/// Default size of a ring segment.
const DEFAULT_SEGMENT_SHIFT: u32 = 18; // 256 KiB
/// Bytes of free segments kept mapped for reuse before pages go back to the kernel.
const DEFAULT_HOT: u64 = 1 << 20;
/// Encode buffers larger than this are not kept for the next put.
const KEEP_BUFFER: usize = 1 << 20;

thread_local! {
    static BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Encodes `value` as a record: 8 bytes for the header (filled later), then postcard.
fn encode_record<T: Serialize>(value: &T) -> mp_core::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = BUF.with(Cell::take);
    buf.clear();
    buf.extend_from_slice(&[0; REC_HDR as usize]);
    // Fast path: plain postcard. A value holding an fd fails here (outside a carrier,
    // `push_fd` refuses) and takes the handle-collecting encoder below, which also
    // gives the full reason of a real error.
    match mp_core::postcard::serialize_with_flavor(value, VecFlavor(buf)) {
        Ok(bytes) => Ok((bytes, Vec::new())),
        Err(_) => encode_into(value, vec![0; REC_HDR as usize]),
    }
}

/// A postcard output that appends to a `Vec` with `extend_from_slice`.
struct VecFlavor(Vec<u8>);

impl mp_core::postcard::ser_flavors::Flavor for VecFlavor {
    type Output = Vec<u8>;
    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> mp_core::postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }
    #[inline]
    fn try_push(&mut self, data: u8) -> mp_core::postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }
    fn finalize(self) -> mp_core::postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Decodes a record's payload; `fds` is `None` when the record carries none.
fn decode_payload<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Option<Vec<OwnedFd>>,
) -> mp_core::Result<T> {
    if fds.is_none() {
        // Fast path, as for encoding; any failure is decoded again for its reason.
        if let Ok((v, [])) = mp_core::postcard::take_from_bytes::<T>(bytes) {
            return Ok(v);
        }
    }
    decode(bytes, fds.unwrap_or_default())
}

/// A held producer or consumer lock; released on drop.
struct Held<'a>(&'a Lock);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // We hold it, so this cannot fail; `release` is the cheapest path (one swap).
        let _ = self.0.release();
    }
}

/// Takes `lock`, blocking until `deadline`. `None` on timeout. The flag says the
/// previous holder died holding it (the caller repairs).
fn take_lock(lock: &Lock, deadline: Deadline) -> Option<(Held<'_>, bool)> {
    let timeout = if deadline.is_never() {
        None
    } else {
        Some(deadline.remaining().unwrap_or_default())
    };
    match lock.acquire(true, timeout) {
        Ok(true) => Some((Held(lock), false)),
        Ok(false) => None,
        Err(SyncError::OwnerDied(held)) => {
            held.keep(); // released by our `Held`
            Some((Held(lock), true))
        }
        // `acquire` fails only with OwnerDied; anything else counts as not taken.
        Err(_) => None,
    }
}

/// What a queue handle holds; clones of a handle share it.
pub(crate) struct Shared {
    ring: Ring,
    producer: Lock,
    consumer: Lock,
    fds: FdChannel,
}

enum PutFail {
    Full,
    Closed,
    Io(std::io::Error),
}

impl Shared {
    fn new<T>(builder: &QueueBuilder<T>, type_hash: u64) -> Result<Shared, QueueError> {
        Ok(Shared {
            ring: Ring::create(
                builder.capacity,
                builder.segment_shift,
                DEFAULT_HOT,
                builder.maxsize,
                type_hash,
            )?,
            producer: Lock::new()?,
            consumer: Lock::new()?,
            fds: FdChannel::new()?,
        })
    }

    /// Completes a producer commit that a killed producer left half-done.
    fn repair_producer(&self) {
        let p = &self.ring.hdr().prod;
        if p.committing.load(Ordering::Acquire) != 0 {
            p.put_seq
                .store(p.new_seq.load(Ordering::Relaxed), Ordering::Release);
            p.tail
                .store(p.new_tail.load(Ordering::Relaxed), Ordering::Release);
            p.committing.store(0, Ordering::Release);
        }
    }

    /// Completes a consumer commit that a killed consumer left half-done.
    fn repair_consumer(&self) {
        let c = &self.ring.hdr().cons;
        if c.committing.load(Ordering::Acquire) != 0 {
            c.head
                .store(c.new_head.load(Ordering::Relaxed), Ordering::Release);
            c.get_seq
                .store(c.new_get_seq.load(Ordering::Relaxed), Ordering::Release);
            c.committing.store(0, Ordering::Release);
        }
        // Segments the dead consumer left without recycling them.
        let _ = self.ring.recycle_upto(c.head.load(Ordering::Relaxed));
    }

    /// Publishes a fully written record: journal, then the counters (`put_seq` first,
    /// so a consumer never takes an item not counted yet: `task_done` relies on it),
    /// then the tail. A producer killed in between leaves the journal to
    /// [`repair_producer`](Self::repair_producer).
    fn commit_put(&self, new_tail: u64, new_seq: u64) {
        let p = &self.ring.hdr().prod;
        p.new_tail.store(new_tail, Ordering::Relaxed);
        p.new_seq.store(new_seq, Ordering::Relaxed);
        p.committing.store(1, Ordering::Release);
        p.put_seq.store(new_seq, Ordering::Release);
        p.tail.store(new_tail, Ordering::Release);
        p.committing.store(0, Ordering::Release);
    }

    /// Consumes the record at `head` once it was copied out, the same way.
    fn commit_get(&self, new_head: u64, new_seq: u64) {
        let c = &self.ring.hdr().cons;
        c.new_head.store(new_head, Ordering::Relaxed);
        c.new_get_seq.store(new_seq, Ordering::Relaxed);
        c.committing.store(1, Ordering::Release);
        c.head.store(new_head, Ordering::Release);
        c.get_seq.store(new_seq, Ordering::Release);
        c.committing.store(0, Ordering::Release);
    }

    /// Puts one record: `record` is an 8-byte space for the header, then the payload.
    fn put_record(
        &self,
        record: &mut [u8],
        fds: &[OwnedFd],
        block: bool,
        deadline: Deadline,
    ) -> Result<(), PutFail> {
        let ring = &self.ring;
        let len = record.len() as u64 - REC_HDR;
        let rec = record_size(len);
        let h = ring.hdr();
        let guard = loop {
            let (guard, died) = take_lock(&self.producer, deadline).ok_or(PutFail::Full)?;
            if died {
                self.repair_producer();
            }
            if ring.closed() {
                return Err(PutFail::Closed);
            }
            let tail = h.prod.tail.load(Ordering::Relaxed);
            let seq = h.prod.put_seq.load(Ordering::Relaxed);
            if tail >= MAX_POS {
                return Err(PutFail::Io(std::io::Error::other(
                    "the queue's tail is corrupt",
                )));
            }
            if ring.has_room(tail, seq, rec) {
                break guard;
            }
            drop(guard);
            if !block
                || !h
                    .space
                    .wait_until(deadline, || ring.closed() || ring.room_for(rec))
            {
                return Err(PutFail::Full);
            }
        };
        let p = &h.prod;
        let tail = p.tail.load(Ordering::Relaxed);
        let seq = p.put_seq.load(Ordering::Relaxed);
        let tag = if fds.is_empty() {
            0
        } else {
            let mut t = p.fd_tag.load(Ordering::Relaxed).wrapping_add(1);
            if t == 0 {
                t = 1;
            }
            // Stored before the send: a producer killed after sending leaves a message
            // with a tag older than any later record's.
            p.fd_tag.store(t, Ordering::Relaxed);
            self.fds
                .send(t, fds, block, deadline)
                .map_err(|e| match e {
                    SendFail::Full => PutFail::Full,
                    SendFail::Io(e) => PutFail::Io(e),
                })?;
            t
        };
        let corrupt = |e: &'static str| PutFail::Io(std::io::Error::other(e));
        ring.assign(tail, rec).map_err(corrupt)?;
        record[..4].copy_from_slice(&(len as u32).to_le_bytes());
        record[4..8].copy_from_slice(&tag.to_le_bytes());
        ring.write(tail, record).map_err(corrupt)?;
        // `tail < MAX_POS` (checked above); the count wraps rather than overflows
        // when a scribbler set it (see `ring::MAX_POS`).
        self.commit_put(tail + rec, seq.wrapping_add(1));
        drop(guard);
        h.data.notify(false);
        Ok(())
    }

    /// Whether an item is published and not taken (no lock; for waiters).
    fn has_item(&self) -> bool {
        let h = self.ring.hdr();
        h.prod.tail.load(Ordering::Acquire) != h.cons.head.load(Ordering::Acquire)
    }

    fn get<T: DeserializeOwned>(&self, block: bool, deadline: Deadline) -> Result<T, GetError> {
        let ring = &self.ring;
        let h = ring.hdr();
        loop {
            let Some((guard, died)) = take_lock(&self.consumer, deadline) else {
                return Err(GetError::Empty);
            };
            if died {
                self.repair_consumer();
            }
            let c = &h.cons;
            let head = c.head.load(Ordering::Relaxed);
            let mut tail = c.cached_tail.load(Ordering::Relaxed);
            if tail <= head {
                tail = h.prod.tail.load(Ordering::Acquire);
                c.cached_tail.store(tail, Ordering::Relaxed);
            }
            if tail != head {
                let out = self.take_record(head, tail);
                drop(guard);
                h.space.notify(true);
                return out;
            }
            drop(guard);
            if ring.closed() {
                return Err(GetError::Closed);
            }
            if !block {
                return Err(GetError::Empty);
            }
            if !h
                .data
                .wait_until(deadline, || ring.closed() || self.has_item())
            {
                return Err(GetError::Empty);
            }
            if deadline.expired() && self.has_item() {
                // We may have been the one woken for this item: pass the wake-up on
                // if the lock is busy and we give up below.
                h.data.notify(false);
            }
        }
    }

    /// Reads, decodes and commits the record at `head` (consumer lock held). A record
    /// that does not decode is consumed all the same.
    fn take_record<T: DeserializeOwned>(&self, head: u64, tail: u64) -> Result<T, GetError> {
        let ring = &self.ring;
        let c = &ring.hdr().cons;
        let avail = tail.wrapping_sub(head);
        let corrupt = GetError::Corrupt;
        if !(REC_HDR..=ring.capacity()).contains(&avail) {
            return Err(corrupt("head and tail disagree"));
        }
        if head >= MAX_POS {
            return Err(corrupt("the queue's head is corrupt"));
        }
        let (len, tag, inline) = ring.record_at(head).map_err(corrupt)?;
        let rec = record_size(u64::from(len));
        if rec > avail {
            return Err(corrupt("a record runs past the tail"));
        }
        let fds = if tag != 0 {
            self.fds.take(tag).map(Some)
        } else {
            Ok(None)
        };
        // Dequeue the fd message after the commit only if it is this record's.
        let matched = tag != 0 && fds.is_ok();
        let value = match fds {
            Err(why) => Err(GetError::Decode(mp_core::Error::decode::<T>(why))),
            Ok(fds) => {
                let at = head + REC_HDR;
                match inline {
                    Some(bytes) => decode_payload::<T>(bytes, fds),
                    None => {
                        let mut buf = vec![0u8; len as usize];
                        ring.read(at, &mut buf).map_err(corrupt)?;
                        decode_payload::<T>(&buf, fds)
                    }
                }
                .map_err(GetError::Decode)
            }
        };
        let new_head = head + rec;
        self.commit_get(new_head, c.get_seq.load(Ordering::Relaxed).wrapping_add(1));
        if matched {
            self.fds.discard();
        }
        // Only a process scribbling on the memory can make this fail; the item is
        // taken all the same.
        let _ = ring.recycle_upto(new_head);
        value
    }

    fn close(&self) {
        let h = self.ring.hdr();
        // Under the producer lock: every put that saw the queue open is published
        // before the close, so a consumer that sees "closed and empty" has seen all.
        let held = take_lock(&self.producer, Deadline::NEVER);
        if held.as_ref().is_some_and(|(_, died)| *died) {
            self.repair_producer();
        }
        h.cfg.closed.store(1, Ordering::Release);
        drop(held);
        h.data.notify(true);
        h.space.notify(true);
    }
}

/// A FIFO queue shared by any number of producer and consumer processes.
///
/// Items are `Serialize + DeserializeOwned` values (encoded with postcard); fds they
/// hold (a `Connection`, a `Lock`, an `mp_core::Handle`) travel beside them. Clones
/// share the queue; it is `Serialize + Deserialize`, so it travels as a process (or
/// pool) argument under every start method.
///
/// | Python | here |
/// |---|---|
/// | `Queue()` / `Queue(maxsize)` | [`Queue::new`] / [`Queue::bounded`] |
/// | `put(obj)` | [`put`](Self::put) (never blocks when unbounded) |
/// | `put(obj, timeout=t)` / `put_nowait(obj)` | [`put_timeout`](Self::put_timeout) / [`put_nowait`](Self::put_nowait) |
/// | `get()` / `get(timeout=t)` / `get_nowait()` | [`get`](Self::get) / [`get_timeout`](Self::get_timeout) / [`get_nowait`](Self::get_nowait) |
/// | `qsize()` / `empty()` / `full()` | the same, exact |
/// | `close()` | [`close`](Self::close): for every process, see there |
/// | `queue.Full` / `queue.Empty` | [`PutError::Full`] (value handed back) / [`GetError::Empty`] |
pub struct Queue<T> {
    pub(crate) shared: Arc<Shared>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            shared: Arc::clone(&self.shared),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.shared.ring;
        f.debug_struct("Queue")
            .field("qsize", &r.len())
            .field("maxsize", &r.maxsize())
            .field("closed", &r.closed())
            .finish()
    }
}

/// Configures a [`Queue`] before creating it: [`Queue::builder`].
pub struct QueueBuilder<T> {
    maxsize: u64,
    capacity: u64,
    segment_shift: u32,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for QueueBuilder<T> {
    fn clone(&self) -> Self {
        QueueBuilder { ..*self }
    }
}

impl<T> fmt::Debug for QueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("maxsize", &self.maxsize)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> QueueBuilder<T> {
    /// At most `maxsize` items (0: unbounded, as in Python).
    pub fn maxsize(mut self, maxsize: usize) -> Self {
        self.maxsize = maxsize as u64;
        self
    }

    /// How many bytes of encoded items the queue holds at most (default
    /// [`DEFAULT_CAPACITY`], 4 GiB of address space; memory is used only as items need
    /// it). Rounded up to a power of two of whole segments (256 KiB, at least 2). An item larger than
    /// the capacity less one segment is refused with [`PutError::TooLarge`].
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// Segments of `2^shift` bytes instead of 256 KiB (small rings for fuzzing).
    pub(crate) fn segment_shift(mut self, shift: u32) -> Self {
        self.segment_shift = shift;
        self
    }

    /// Creates the queue.
    pub fn build(self) -> Result<Queue<T>, QueueError> {
        if self.maxsize > i64::MAX as u64 {
            return Err(QueueError::InvalidArgument("maxsize too large"));
        }
        Ok(Queue {
            shared: Arc::new(Shared::new(&self, type_hash::<T>())?),
            _t: PhantomData,
        })
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// An unbounded queue: a put never waits (up to the byte capacity, 4 GiB).
    pub fn new() -> Result<Self, QueueError> {
        Self::builder().build()
    }

    /// A queue of at most `maxsize` items (0: unbounded).
    pub fn bounded(maxsize: usize) -> Result<Self, QueueError> {
        Self::builder().maxsize(maxsize).build()
    }

    /// A builder, for the byte capacity.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder {
            maxsize: 0,
            capacity: DEFAULT_CAPACITY,
            segment_shift: DEFAULT_SEGMENT_SHIFT,
            _t: PhantomData,
        }
    }

    fn put_inner(&self, value: T, block: bool, deadline: Deadline) -> Result<(), PutError<T>> {
        let shared = &*self.shared;
        if shared.ring.closed() {
            return Err(PutError::Closed(value));
        }
        let (mut bytes, fds) = match encode_record(&value) {
            Ok(x) => x,
            Err(e) => return Err(PutError::Encode(value, e)),
        };
        if fds.len() > MAX_FDS_PER_ITEM {
            let e = mp_core::Error::encode::<T>(format!(
                "an item may hold at most {MAX_FDS_PER_ITEM} handles, this one holds {}",
                fds.len()
            ));
            return Err(PutError::Encode(value, e));
        }
        let len = bytes.len() - REC_HDR as usize;
        let too_large =
            len > u32::MAX as usize || record_size(len as u64) > shared.ring.max_record();
        let res = if too_large {
            Err(PutError::TooLarge(value))
        } else {
            match shared.put_record(&mut bytes, &fds, block, deadline) {
                Ok(()) => Ok(()),
                Err(PutFail::Full) => Err(PutError::Full(value)),
                Err(PutFail::Closed) => Err(PutError::Closed(value)),
                Err(PutFail::Io(e)) => Err(PutError::Io(value, e)),
            }
        };
        if bytes.capacity() <= KEEP_BUFFER {
            BUF.with(|b| b.set(bytes));
        }
        res
    }

    /// Puts `value`, waiting for room if the queue is bounded and full (or its byte
    /// capacity is used up). An unbounded queue never waits for room.
    ///
    /// The value is encoded by the caller, so an encoding error is returned here
    /// ([`PutError::Encode`]) and the queue is unchanged. Once `put` returns `Ok`, the
    /// item is in shared memory: the producer may exit, or be killed, at once.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_inner(value, true, Deadline::NEVER)
    }

    /// As [`put`](Self::put), giving up with [`PutError::Full`] after about `timeout`.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_inner(value, true, Deadline::from_now(timeout))
    }

    /// Puts `value` only if there is room now: else [`PutError::Full`] at once.
    ///
    /// It never waits for room; it may wait for another process to finish copying an
    /// item in (the producer lock is held only for that).
    pub fn put_nowait(&self, value: T) -> Result<(), PutError<T>> {
        self.put_inner(value, false, Deadline::NEVER)
    }

    /// Python's `put(obj, block, timeout)`: `block == false` ignores the timeout;
    /// `None` waits for ever.
    pub fn put_with(
        &self,
        value: T,
        block: bool,
        timeout: Option<Duration>,
    ) -> Result<(), PutError<T>> {
        if block {
            self.put_inner(value, true, Deadline::after(timeout))
        } else {
            self.put_nowait(value)
        }
    }

    /// Takes the next item, waiting for one. After [`close`](Self::close), items put
    /// before the close are still delivered, then [`GetError::Closed`].
    pub fn get(&self) -> Result<T, GetError> {
        self.shared.get(true, Deadline::NEVER)
    }

    /// As [`get`](Self::get), giving up with [`GetError::Empty`] after about `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.shared.get(true, Deadline::from_now(timeout))
    }

    /// Takes the next item if there is one now: else [`GetError::Empty`] at once.
    pub fn get_nowait(&self) -> Result<T, GetError> {
        self.shared.get(false, Deadline::NEVER)
    }

    /// Python's `get(block, timeout)`.
    pub fn get_with(&self, block: bool, timeout: Option<Duration>) -> Result<T, GetError> {
        if block {
            self.shared.get(true, Deadline::after(timeout))
        } else {
            self.get_nowait()
        }
    }

    /// An iterator over received items; it blocks for each, and ends when the queue is
    /// closed and drained. An item that fails to decode is skipped (and logged with
    /// `tracing`).
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { queue: self }
    }
}

impl<T> Queue<T> {
    /// Items in the queue: put and not yet taken, across all processes.
    pub fn qsize(&self) -> usize {
        self.shared.ring.len() as usize
    }

    /// Whether the queue holds no item.
    pub fn empty(&self) -> bool {
        self.qsize() == 0
    }

    /// Whether the queue holds `maxsize` items (never for an unbounded queue).
    pub fn full(&self) -> bool {
        let m = self.shared.ring.maxsize();
        m != 0 && self.shared.ring.len() >= m
    }

    /// The item limit, `None` if unbounded.
    pub fn maxsize(&self) -> Option<usize> {
        match self.shared.ring.maxsize() {
            0 => None,
            m => Some(m as usize),
        }
    }

    /// Closes the queue for every process: later puts fail with
    /// [`PutError::Closed`]; gets deliver what was put before the close, then fail
    /// with [`GetError::Closed`] (iterators end). Waiting producers and consumers are
    /// woken. Idempotent.
    ///
    /// (Python's `close()` only concerns the calling process and also makes its gets
    /// fail at once. Here the close is shared, which is what lets consumers' iterators
    /// end, and what was put is not lost.)
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.shared.ring.closed()
    }

    pub(crate) fn ring(&self) -> &Ring {
        &self.shared.ring
    }
}

/// Items of a [`Queue`], blocking for each; ends when the queue is closed and drained.
pub struct Iter<'a, T> {
    queue: &'a Queue<T>,
}

impl<T: Serialize + DeserializeOwned> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        loop {
            match self.queue.get() {
                Ok(v) => return Some(v),
                Err(GetError::Decode(e)) => {
                    tracing::warn!(error = %e, "mp-queue: skipped an item that did not decode");
                }
                Err(GetError::Empty) => {}
                Err(_) => return None,
            }
        }
    }
}

impl<'a, T: Serialize + DeserializeOwned> IntoIterator for &'a Queue<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sh = &*self.shared;
        (
            sh.ring.region(),
            &sh.producer,
            &sh.consumer,
            Handle(&sh.fds.tx),
            Handle(&sh.fds.rx),
        )
            .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (region, producer, consumer, tx, rx) =
            <(SharedRegion, Lock, Lock, Handle<OwnedFd>, Handle<OwnedFd>)>::deserialize(d)?;
        let ring = Ring::open(region, type_hash::<T>()).map_err(serde::de::Error::custom)?;
        Ok(Queue {
            shared: Arc::new(Shared {
                ring,
                producer,
                consumer,
                fds: FdChannel { tx: tx.0, rx: rx.0 },
            }),
            _t: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The commit protocol, with deaths simulated at each point that matters.
    use super::*;
    use std::os::fd::AsFd;

    /// Writes a record for `v` beyond the tail without publishing it, as a producer
    /// killed before its commit leaves it. Returns (tail, record size).
    fn unpublished<T: Serialize>(q: &Queue<T>, v: &T, tag: u32) -> (u64, u64) {
        let sh = &*q.shared;
        let (mut bytes, _) = encode_record(v).unwrap();
        let len = bytes.len() as u64 - REC_HDR;
        bytes[..4].copy_from_slice(&(len as u32).to_le_bytes());
        bytes[4..8].copy_from_slice(&tag.to_le_bytes());
        let tail = sh.ring.hdr().prod.tail.load(Ordering::Relaxed);
        let rec = record_size(len);
        sh.ring.assign(tail, rec).unwrap();
        sh.ring.write(tail, &bytes).unwrap();
        (tail, rec)
    }

    #[test]
    fn half_written_record_is_overwritten() {
        let q: Queue<u64> = Queue::new().unwrap();
        q.put(1).unwrap();
        unpublished(&q, &u64::MAX, 0);
        assert_eq!(q.qsize(), 1);
        q.put(3).unwrap();
        assert_eq!(q.get_nowait().unwrap(), 1);
        assert_eq!(q.get_nowait().unwrap(), 3);
        assert!(q.get_nowait().unwrap_err().is_empty());
    }

    #[test]
    fn producer_journal_is_completed() {
        let q: Queue<u64> = Queue::new().unwrap();
        q.put(1).unwrap();
        let (tail, rec) = unpublished(&q, &2, 0);
        // Killed right after raising the journal flag, before the counters.
        let p = &q.shared.ring.hdr().prod;
        p.new_tail.store(tail + rec, Ordering::Relaxed);
        p.new_seq.store(2, Ordering::Relaxed);
        p.committing.store(1, Ordering::Release);
        assert_eq!(q.qsize(), 1);
        q.shared.repair_producer();
        assert_eq!(q.qsize(), 2);
        q.put(3).unwrap();
        let got: Vec<u64> = (0..3).map(|_| q.get_nowait().unwrap()).collect();
        assert_eq!(got, [1, 2, 3]);
    }

    #[test]
    fn consumer_journal_is_completed() {
        let q: Queue<u64> = Queue::new().unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        let ring = &q.shared.ring;
        let head = ring.hdr().cons.head.load(Ordering::Relaxed);
        let (len, _, _) = ring.record_at(head).unwrap();
        // A consumer that copied item 1 out and was killed inside its commit.
        let c = &ring.hdr().cons;
        c.new_head
            .store(head + record_size(u64::from(len)), Ordering::Relaxed);
        c.new_get_seq.store(1, Ordering::Relaxed);
        c.committing.store(1, Ordering::Release);
        c.head
            .store(head + record_size(u64::from(len)), Ordering::Release);
        q.shared.repair_consumer();
        assert_eq!(q.qsize(), 1);
        assert_eq!(q.get_nowait().unwrap(), 2);
        assert!(q.empty());
    }

    fn inode(f: &std::fs::File) -> u64 {
        rustix::fs::fstat(f.as_fd()).unwrap().st_ino
    }

    fn file() -> std::fs::File {
        let fd = rustix::fs::memfd_create("mpq-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        std::fs::File::from(fd)
    }

    #[test]
    fn stale_fd_messages_are_skipped() {
        let q: Queue<Handle<std::fs::File>> = Queue::new().unwrap();
        let sh = &*q.shared;
        let p = &sh.ring.hdr().prod;
        // A producer killed after sending its fds, before publishing its record.
        let lost = file();
        p.fd_tag.store(1, Ordering::Relaxed);
        let dup: OwnedFd = lost.as_fd().try_clone_to_owned().unwrap();
        assert!(sh.fds.send(1, &[dup], false, Deadline::NEVER).is_ok());
        let (f2, f3, f4) = (file(), file(), file());
        let (i2, i3, i4) = (inode(&f2), inode(&f3), inode(&f4));
        q.put(Handle(f2)).unwrap();
        q.put(Handle(f3)).unwrap();
        q.put(Handle(f4)).unwrap();
        assert_eq!(inode(&q.get_nowait().unwrap().0), i2);
        // A consumer killed after committing item 3, before dequeuing its fds.
        let ring = &sh.ring;
        let head = ring.hdr().cons.head.load(Ordering::Relaxed);
        let (len, tag, _) = ring.record_at(head).unwrap();
        let fds = sh.fds.take(tag).unwrap();
        assert_eq!(fds.len(), 1);
        assert_eq!(rustix::fs::fstat(&fds[0]).unwrap().st_ino, i3);
        sh.commit_get(head + record_size(u64::from(len)), 2);
        // The next consumer drops the stale message and gets item 4 with its own fd.
        assert_eq!(inode(&q.get_nowait().unwrap().0), i4);
        assert!(q.get_nowait().unwrap_err().is_empty());
    }

    #[test]
    fn wrong_handle_count_is_an_error_not_a_mixup() {
        let q: Queue<Handle<std::fs::File>> = Queue::new().unwrap();
        let sh = &*q.shared;
        // A record that says it has fds (tag 9) whose message never came.
        sh.ring.hdr().prod.fd_tag.store(9, Ordering::Relaxed);
        let (tail, rec) = unpublished(&q, &Handle(file()), 9);
        sh.commit_put(tail + rec, 1);
        let f = file();
        let i = inode(&f);
        q.put(Handle(f)).unwrap();
        assert!(matches!(q.get_nowait(), Err(GetError::Decode(_))));
        assert_eq!(inode(&q.get_nowait().unwrap().0), i);
    }
    /// Counters that another holder of the queue scribbled to values near `u64::MAX`
    /// make a put or get fail (or find no room), never panic with an overflow: a tail
    /// there, a put count, a recycle count, a segment allocation count and a get count
    /// each panicked before (found by the fuzz target queue_ring).
    #[test]
    fn scribbled_counters_are_errors_not_overflows() {
        fn fresh() -> Queue<u64> {
            let q = Queue::builder()
                .segment_shift(12)
                .capacity(4 << 12)
                .build()
                .unwrap();
            q.put(1).unwrap();
            q
        }
        let put_fails = |q: &Queue<u64>| assert!(q.put_nowait(2).is_err());
        // The tail.
        let q = fresh();
        q.shared
            .ring
            .hdr()
            .prod
            .tail
            .store(u64::MAX - 3, Ordering::Relaxed);
        put_fails(&q);
        // The recycle count, as the producer caches it.
        let q = fresh();
        let p = &q.shared.ring.hdr().prod;
        p.cached_recycled_for_tests()
            .store(u64::MAX - 1, Ordering::Relaxed);
        q.shared
            .ring
            .hdr()
            .cons
            .recycled_for_tests()
            .store(u64::MAX - 1, Ordering::Relaxed);
        let _ = q.put_nowait(2);
        // The segment allocation count (its taken half), with recycled segments to take.
        let q = fresh();
        let h = q.shared.ring.hdr();
        h.prod
            .alloc_for_tests()
            .store(!0xff_ffff, Ordering::Relaxed);
        h.cons
            .recycled_for_tests()
            .store(u64::MAX, Ordering::Relaxed);
        // The next put needs a new segment: it starts one.
        h.prod.tail.store(4 << 12, Ordering::Relaxed);
        h.cons.head.store(4 << 12, Ordering::Relaxed);
        let _ = q.put_nowait(2);
        // The put count.
        let q = fresh();
        q.shared
            .ring
            .hdr()
            .prod
            .put_seq
            .store(u64::MAX, Ordering::Relaxed);
        let _ = q.put_nowait(2);
        // The get count: the item is still delivered.
        let q = fresh();
        q.shared
            .ring
            .hdr()
            .cons
            .get_seq
            .store(u64::MAX, Ordering::Relaxed);
        assert_eq!(q.get_nowait().unwrap(), 1);
    }
}
