//! The shared memory of a queue: a header, a segment map, a recycle ring, and the data
//! segments, all in one sealed memfd region (sparse: untouched pages cost nothing).
//!
//! # Positions and segments
//!
//! `head` and `tail` are byte positions in an endless logical stream (u64, never
//! wrapping in practice). Logical segment `l = pos >> shift` lives in physical segment
//! `segmap[l % nseg]` (`nseg` a power of two), assigned by the producer that first writes into it: a recycled
//! segment if one is free (hot pages, no fault), else a never-used one. When `head`
//! leaves a segment, the consumer pushes its physical segment on the recycle ring. So a
//! queue that keeps up reuses a few hot segments, while one that falls behind grows up
//! to `nseg` segments (the byte capacity), touching pages only as it needs them. When
//! more than `hot` free segments wait for reuse, the consumer returns the pages of the
//! next one to the kernel (`MADV_REMOVE`) before it recycles it.
//!
//! A segment map entry is `(l + 1) << 24 | phys`: the tag tells a producer that the
//! slot already holds logical segment `l` (assigned by a producer that died before
//! writing its record).
//!
//! # Records
//!
//! An 8-byte header (`len: u32`, `tag: u32`, little endian) then `len` payload bytes,
//! padded to 8 bytes, so a header never straddles a segment. `tag != 0` means the
//! item's fds wait on the side channel under that tag.
//!
//! # Who writes what
//!
//! The producer side (under the producer lock) owns `tail`, `put_seq`, `alloc` and the
//! segment map; the consumer side (under the consumer lock) owns `head`, `get_seq`,
//! `recycled` and the recycle ring. Each side commits with a small journal (the new
//! values, a flag, the stores, the flag cleared), so a holder killed in the middle is
//! repaired by the next one, which learns of the death from the robust lock.
use crate::error::QueueError;
use crate::wait::WaitWord;
use mp_core::SharedRegion;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const MAGIC: u32 = 0x5155_4555; // "QUEU"
const VERSION: u32 = 1;
/// Bytes of a record header.
pub(crate) const REC_HDR: u64 = 8;
const PHYS_BITS: u32 = 24;
const PHYS_MASK: u64 = (1 << PHYS_BITS) - 1;
/// The largest number of segments (physical indices must fit in 24 bits).
const MAX_SEGS: u64 = 1 << PHYS_BITS;

/// Stream positions (`head`, `tail`) at or past this are corrupt: no queue moves 2^62
/// bytes, and below it a position plus a record never overflows. Positions, counts
/// and segment numbers live in memory every holder of the queue can write, so they
/// are checked where they are read, or combined with saturating or wrapping
/// arithmetic: a scribbled value is an error or finds no room, never a panic.
pub(crate) const MAX_POS: u64 = 1 << 62;

/// The size of a record with `len` payload bytes.
#[inline]
pub(crate) fn record_size(len: u64) -> u64 {
    (REC_HDR + len + 7) & !7
}

/// Configuration, written once at creation, read-mostly (`closed` aside).
#[repr(C, align(128))]
pub(crate) struct Config {
    magic: AtomicU32,
    version: AtomicU32,
    seg_shift: AtomicU32,
    nseg: AtomicU32,
    hot: AtomicU32,
    pub(crate) closed: AtomicU32,
    maxsize: AtomicU64,
    type_hash: AtomicU64,
}

/// Written by producers (under the producer lock).
#[repr(C, align(128))]
pub(crate) struct ProducerSide {
    pub(crate) tail: AtomicU64,
    pub(crate) put_seq: AtomicU64,
    /// `taken << 24 | fresh`: recycle-ring entries taken, never-used segments handed out.
    alloc: AtomicU64,
    /// A lower bound of the consumer side's `recycled` (saves reading its cache line).
    cached_recycled: AtomicU64,
    /// A lower bound of the consumer side's `get_seq`.
    pub(crate) cached_get_seq: AtomicU64,
    pub(crate) new_tail: AtomicU64,
    pub(crate) new_seq: AtomicU64,
    pub(crate) committing: AtomicU32,
    pub(crate) fd_tag: AtomicU32,
}

/// Written by consumers (under the consumer lock).
#[repr(C, align(128))]
pub(crate) struct ConsumerSide {
    pub(crate) head: AtomicU64,
    pub(crate) get_seq: AtomicU64,
    /// Logical segments pushed on the recycle ring so far.
    recycled: AtomicU64,
    /// A lower bound of the producer side's `tail`.
    pub(crate) cached_tail: AtomicU64,
    pub(crate) new_head: AtomicU64,
    pub(crate) new_get_seq: AtomicU64,
    pub(crate) committing: AtomicU32,
    _pad: AtomicU32,
}

#[cfg(test)]
impl ProducerSide {
    pub(crate) fn cached_recycled_for_tests(&self) -> &AtomicU64 {
        &self.cached_recycled
    }
    pub(crate) fn alloc_for_tests(&self) -> &AtomicU64 {
        &self.alloc
    }
}

#[cfg(test)]
impl ConsumerSide {
    pub(crate) fn recycled_for_tests(&self) -> &AtomicU64 {
        &self.recycled
    }
}

/// `JoinableQueue` state: unfinished tasks are `put_seq - done`.
#[repr(C, align(128))]
pub(crate) struct JoinSide {
    pub(crate) done: AtomicU64,
}

/// The header at the start of the region. `repr(C)`, atomics only: any bytes are a
/// valid value, and other processes write it concurrently.
#[repr(C)]
pub(crate) struct Header {
    pub(crate) cfg: Config,
    pub(crate) prod: ProducerSide,
    pub(crate) cons: ConsumerSide,
    /// Consumers waiting for items (or for the close).
    pub(crate) data: WaitWord,
    /// Producers waiting for room.
    pub(crate) space: WaitWord,
    pub(crate) join: JoinSide,
    /// `join()` callers waiting for `done == put_seq`.
    pub(crate) joiners: WaitWord,
}

/// The byte ranges of the header that say what the region holds (magic and version,
/// type hash): what a region of another kind or type must get wrong.
pub(crate) const IDENTITY: [std::ops::Range<usize>; 2] = [
    std::mem::offset_of!(Config, magic)..std::mem::offset_of!(Config, seg_shift),
    std::mem::offset_of!(Config, type_hash)..std::mem::offset_of!(Config, type_hash) + 8,
];

/// Where things are in the region; computed locally, never read from shared memory.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    shift: u32,
    nseg: u64,
    segmap: usize,
    recycle: usize,
    data: usize,
    total: usize,
}

impl Geometry {
    fn new(shift: u32, nseg: u64) -> Option<Geometry> {
        if !(12..=30).contains(&shift) || !(2..=MAX_SEGS).contains(&nseg) || !nseg.is_power_of_two()
        {
            return None;
        }
        let page = rustix::param::page_size();
        let round = |x: usize| x.checked_add(page - 1).map(|v| v & !(page - 1));
        let n = usize::try_from(nseg).ok()?;
        let segmap = round(std::mem::size_of::<Header>())?;
        let recycle = segmap.checked_add(n.checked_mul(8)?)?;
        let data = round(recycle.checked_add(n.checked_mul(4)?)?)?;
        let total = data.checked_add(n.checked_mul(1usize.checked_shl(shift)?)?)?;
        Some(Geometry {
            shift,
            nseg,
            segmap,
            recycle,
            data,
            total,
        })
    }
}

/// The ring: a mapped region plus its geometry and configuration (local copies).
pub(crate) struct Ring {
    region: SharedRegion,
    geo: Geometry,
    maxsize: u64,
    hot: u64,
}

/// A hash of a type's name, stored in the header so that a queue of one type is never
/// received as a queue of another.
pub(crate) fn type_hash<T: ?Sized>() -> u64 {
    // FNV-1a: stable across builds of the same program, which is all that is needed.
    std::any::type_name::<T>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

impl Ring {
    /// A new ring holding up to `capacity` bytes of records in segments of
    /// `2^shift` bytes, at most `maxsize` items (0: unbounded), keeping `hot` bytes of
    /// free segments mapped.
    pub(crate) fn create(
        capacity: u64,
        shift: u32,
        hot: u64,
        maxsize: u64,
        type_hash: u64,
    ) -> Result<Ring, QueueError> {
        let seg = 1u64 << shift.min(63);
        // A power of two, so that slots are found with a mask, not a division.
        let nseg = capacity.div_ceil(seg).max(2).next_power_of_two();
        let geo = Geometry::new(shift, nseg).ok_or(QueueError::InvalidArgument(
            "capacity or segment size out of range",
        ))?;
        let region = SharedRegion::new(geo.total)?;
        let ring = Ring {
            region,
            geo,
            maxsize,
            hot: hot.div_ceil(seg).max(1),
        };
        let c = &ring.hdr().cfg;
        c.seg_shift.store(shift, Ordering::Relaxed);
        c.nseg.store(nseg as u32, Ordering::Relaxed);
        c.hot
            .store(ring.hot.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
        c.maxsize.store(maxsize, Ordering::Relaxed);
        c.type_hash.store(type_hash, Ordering::Relaxed);
        c.version.store(VERSION, Ordering::Relaxed);
        c.magic.store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Maps a ring received from another process, checking it holds a queue of the
    /// expected type and that its geometry fits the region.
    pub(crate) fn open(region: SharedRegion, type_hash: u64) -> Result<Ring, &'static str> {
        if region.len() < std::mem::size_of::<Header>() {
            return Err("shared region too small for a queue");
        }
        // A temporary ring with a placeholder geometry, only to read the header.
        let mut ring = Ring {
            region,
            geo: Geometry {
                shift: 12,
                nseg: 2,
                segmap: 0,
                recycle: 0,
                data: 0,
                total: 0,
            },
            maxsize: 0,
            hot: 1,
        };
        let c = &ring.hdr().cfg;
        if c.magic.load(Ordering::Acquire) != MAGIC || c.version.load(Ordering::Relaxed) != VERSION
        {
            return Err("shared region does not hold a queue");
        }
        if c.type_hash.load(Ordering::Relaxed) != type_hash {
            return Err("the queue carries items of another type");
        }
        let geo = Geometry::new(
            c.seg_shift.load(Ordering::Relaxed),
            u64::from(c.nseg.load(Ordering::Relaxed)),
        )
        .ok_or("queue header holds an impossible geometry")?;
        if geo.total > ring.region.len() {
            return Err("queue region is smaller than its header says");
        }
        let maxsize = c.maxsize.load(Ordering::Relaxed);
        let hot = u64::from(c.hot.load(Ordering::Relaxed)).max(1);
        ring.geo = geo;
        ring.maxsize = maxsize;
        ring.hot = hot;
        Ok(ring)
    }

    /// The region, for serialization.
    pub(crate) fn region(&self) -> &SharedRegion {
        &self.region
    }

    #[inline]
    pub(crate) fn hdr(&self) -> &Header {
        // SAFETY: the region is page-aligned and at least `size_of::<Header>()` long
        // (checked in `open`, and `Geometry` puts the header first in `create`); the
        // mapping lives as long as `self`; `Header` is `repr(C)` atomics only, so any
        // bytes are a valid value and concurrent writers in other processes are
        // synchronized through the atomics.
        unsafe { &*self.region.as_ptr().cast::<Header>() }
    }

    #[inline]
    fn segmap(&self, l: u64) -> &AtomicU64 {
        let i = (l & (self.geo.nseg - 1)) as usize;
        // SAFETY: `segmap + 8 * nseg <= total <= region.len()` (Geometry, checked in
        // `open`); the offset is 8-aligned in a page-aligned mapping; an AtomicU64 is
        // valid for any bytes.
        unsafe {
            &*self
                .region
                .as_ptr()
                .add(self.geo.segmap + 8 * i)
                .cast::<AtomicU64>()
        }
    }

    #[inline]
    fn recycle_slot(&self, r: u64) -> &AtomicU32 {
        let i = (r & (self.geo.nseg - 1)) as usize;
        // SAFETY: as for `segmap`: `recycle + 4 * nseg <= total <= region.len()`,
        // 4-aligned, any bytes valid.
        unsafe {
            &*self
                .region
                .as_ptr()
                .add(self.geo.recycle + 4 * i)
                .cast::<AtomicU32>()
        }
    }

    /// The item limit (0: unbounded).
    pub(crate) fn maxsize(&self) -> u64 {
        self.maxsize
    }

    /// The most bytes the stream can hold.
    pub(crate) fn capacity(&self) -> u64 {
        self.geo.nseg << self.geo.shift
    }

    /// The largest record that can ever fit.
    pub(crate) fn max_record(&self) -> u64 {
        (self.geo.nseg - 1) << self.geo.shift
    }

    pub(crate) fn closed(&self) -> bool {
        self.hdr().cfg.closed.load(Ordering::Acquire) != 0
    }

    /// Items in the queue (put and not yet taken).
    pub(crate) fn len(&self) -> u64 {
        let h = self.hdr();
        let got = h.cons.get_seq.load(Ordering::Acquire);
        h.prod.put_seq.load(Ordering::Acquire).saturating_sub(got)
    }

    // ---- producer side (caller holds the producer lock) ---------------------------

    /// Whether a record of `rec` bytes fits at `tail` now, and the item count allows
    /// one more. Reads the consumer side only when the cached bounds say no.
    pub(crate) fn has_room(&self, tail: u64, seq: u64, rec: u64) -> bool {
        let p = &self.hdr().prod;
        if self.maxsize != 0 {
            let mut got = p.cached_get_seq.load(Ordering::Relaxed);
            if seq.saturating_sub(got) >= self.maxsize {
                got = self.hdr().cons.get_seq.load(Ordering::Acquire);
                p.cached_get_seq.store(got, Ordering::Relaxed);
                if seq.saturating_sub(got) >= self.maxsize {
                    return false;
                }
            }
        }
        let Some(last) = Self::last_segment(tail, rec, self.geo.shift) else {
            return false;
        };
        let mut r = p.cached_recycled.load(Ordering::Relaxed);
        if last >= r.saturating_add(self.geo.nseg) {
            r = self.hdr().cons.recycled.load(Ordering::Acquire);
            p.cached_recycled.store(r, Ordering::Relaxed);
            if last >= r.saturating_add(self.geo.nseg) {
                return false;
            }
        }
        true
    }

    /// The logical segment of the last byte of a record of `rec` bytes at `tail`;
    /// `None` for a corrupt tail.
    fn last_segment(tail: u64, rec: u64, shift: u32) -> Option<u64> {
        if tail >= MAX_POS {
            return None;
        }
        Some((tail + rec - 1) >> shift)
    }

    /// Room check for a waiting producer (no lock held; reads shared state only).
    pub(crate) fn room_for(&self, rec: u64) -> bool {
        let h = self.hdr();
        let seq = h.prod.put_seq.load(Ordering::Acquire);
        if self.maxsize != 0
            && seq.saturating_sub(h.cons.get_seq.load(Ordering::Acquire)) >= self.maxsize
        {
            return false;
        }
        let tail = h.prod.tail.load(Ordering::Acquire);
        Self::last_segment(tail, rec, self.geo.shift).is_some_and(|last| {
            last < h
                .cons
                .recycled
                .load(Ordering::Acquire)
                .saturating_add(self.geo.nseg)
        })
    }

    /// Makes sure every logical segment of `[pos, pos + len)` has a physical segment.
    /// Call only after [`has_room`](Self::has_room) said yes.
    pub(crate) fn assign(&self, pos: u64, len: u64) -> Result<(), &'static str> {
        let first = pos >> self.geo.shift;
        let last = (pos + len - 1) >> self.geo.shift;
        for l in first..=last {
            let slot = self.segmap(l);
            if slot.load(Ordering::Relaxed) >> PHYS_BITS == l + 1 {
                continue; // assigned already (by a producer that died before publishing)
            }
            let p = &self.hdr().prod;
            let a = p.alloc.load(Ordering::Relaxed);
            let (taken, fresh) = (a >> PHYS_BITS, a & PHYS_MASK);
            let r = self.hdr().cons.recycled.load(Ordering::Acquire);
            // Wrapping: `alloc` is shared memory; a scribbled count yields a segment
            // number that is checked below, never an overflow.
            let (phys, next) = if taken < r {
                let phys = u64::from(self.recycle_slot(taken).load(Ordering::Relaxed));
                (phys, a.wrapping_add(1 << PHYS_BITS))
            } else if fresh < self.geo.nseg {
                (fresh, a.wrapping_add(1))
            } else {
                return Err("no free segment although there was room");
            };
            if phys >= self.geo.nseg {
                return Err("recycle ring holds an impossible segment");
            }
            // Alloc first: a producer killed between the two stores leaks one segment
            // of capacity, never hands one out twice.
            p.alloc.store(next, Ordering::Relaxed);
            slot.store(((l + 1) << PHYS_BITS) | phys, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The address of byte `pos` and how many bytes follow it in its segment.
    #[inline]
    fn locate(&self, pos: u64) -> Result<(*mut u8, usize), &'static str> {
        let l = pos >> self.geo.shift;
        let v = self.segmap(l).load(Ordering::Relaxed);
        let phys = v & PHYS_MASK;
        if v >> PHYS_BITS != l + 1 || phys >= self.geo.nseg {
            return Err("segment map does not match the stream");
        }
        let seg = 1usize << self.geo.shift;
        let off = (pos & (seg as u64 - 1)) as usize;
        let at = self.geo.data + phys as usize * seg + off;
        // SAFETY: `phys < nseg` and `off < seg`, so `at < data + nseg * seg = total <=
        // region.len()`: in bounds of the mapping.
        Ok((unsafe { self.region.as_ptr().add(at) }, seg - off))
    }

    /// Copies `src` into the stream at `pos` (segments assigned, beyond `tail`).
    pub(crate) fn write(&self, mut pos: u64, mut src: &[u8]) -> Result<(), &'static str> {
        while !src.is_empty() {
            let (p, room) = self.locate(pos)?;
            let n = room.min(src.len());
            // SAFETY: `locate` gives `room` in-bounds bytes at `p`; this range lies
            // beyond the published tail, so no other process reads or writes it until
            // this producer publishes (it holds the producer lock); `src` is local.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, n) };
            src = &src[n..];
            pos += n as u64;
        }
        Ok(())
    }

    // ---- consumer side (caller holds the consumer lock) ----------------------------

    /// Copies stream bytes at `pos` (below the published tail) into `dst`.
    pub(crate) fn read(&self, mut pos: u64, mut dst: &mut [u8]) -> Result<(), &'static str> {
        while !dst.is_empty() {
            let (p, room) = self.locate(pos)?;
            let n = room.min(dst.len());
            // SAFETY: `locate` gives `room` in-bounds bytes at `p`; the range is
            // published (below `tail`, read with Acquire) and not yet consumed, so no
            // producer writes it while this consumer (holding the consumer lock) reads.
            unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), n) };
            dst = &mut dst[n..];
            pos += n as u64;
        }
        Ok(())
    }

    /// The record at `pos` (published, unconsumed): its payload length, its fd tag,
    /// and its payload as one slice if it lies in one segment.
    #[allow(clippy::type_complexity)]
    pub(crate) fn record_at(&self, pos: u64) -> Result<(u32, u32, Option<&[u8]>), &'static str> {
        let (p, room) = self.locate(pos)?;
        let mut h = [0u8; REC_HDR as usize];
        // Records are 8-aligned and segments are multiples of 8: the header is whole
        // (unless the shared memory was scribbled on).
        if room < h.len() {
            return Err("a record header straddles a segment");
        }
        // SAFETY: `locate` gives `room >= 8` in-bounds bytes at `p` (8-aligned position
        // in a segment whose size is a multiple of 8); the record is published and
        // unconsumed, so nobody writes it while the caller holds the consumer lock.
        unsafe { std::ptr::copy_nonoverlapping(p, h.as_mut_ptr(), h.len()) };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let tag = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let inline = if REC_HDR as usize + len as usize <= room {
            // SAFETY: in bounds (checked just above against `room`); published and
            // unconsumed as above; the slice borrows `self` and the caller drops it
            // before it advances `head`.
            Some(unsafe { std::slice::from_raw_parts(p.add(REC_HDR as usize), len as usize) })
        } else {
            None
        };
        Ok((len, tag, inline))
    }

    /// Pushes every segment that `head` has left on the recycle ring. Idempotent: a
    /// consumer killed half-way leaves work the next one finishes.
    pub(crate) fn recycle_upto(&self, head: u64) -> Result<(), &'static str> {
        let c = &self.hdr().cons;
        let target = head >> self.geo.shift;
        let mut r = c.recycled.load(Ordering::Relaxed);
        while r < target {
            let v = self.segmap(r).load(Ordering::Relaxed);
            let phys = v & PHYS_MASK;
            if v >> PHYS_BITS != r + 1 || phys >= self.geo.nseg {
                return Err("segment map does not match the stream");
            }
            let taken = self.hdr().prod.alloc.load(Ordering::Relaxed) >> PHYS_BITS;
            if r.saturating_sub(taken) >= self.hot {
                self.release_pages(phys);
            }
            self.recycle_slot(r).store(phys as u32, Ordering::Relaxed);
            r += 1;
            c.recycled.store(r, Ordering::Release);
        }
        Ok(())
    }

    /// Gives the pages of a free physical segment back to the kernel (it reads as
    /// zeros afterwards). Only called on a segment no one else can be using.
    fn release_pages(&self, phys: u64) {
        let seg = 1usize << self.geo.shift;
        let at = self.geo.data + phys as usize * seg;
        // SAFETY: a page-aligned range inside the mapping (data offset and segment size
        // are page multiples); the segment is free (consumed, not yet on the recycle
        // ring), so no Rust reference points into it. MADV_REMOVE only replaces its
        // contents with zeros.
        let _ = unsafe {
            rustix::mm::madvise(
                self.region.as_ptr().add(at).cast(),
                seg,
                rustix::mm::Advice::LinuxRemove,
            )
        };
    }
}
