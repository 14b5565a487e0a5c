//! The decoders of this crate against memory and messages another process wrote, for
//! the `fuzz/` targets and the bounded property tests (not part of the API): a ring
//! opened over scribbled shared memory and read, and the fd side channel.
use crate::fds::FdChannel;
use crate::queue::{Queue, QueueBuilder};
use crate::ring::IDENTITY;
use crate::{GetError, MAX_FDS_PER_ITEM};
use mp_core::fuzzing::{Input, Marker};
use mp_core::Handle;
use std::os::fd::{AsFd, OwnedFd};

/// What the fuzzed queues carry: values with and without fds.
#[derive(serde::Serialize, serde::Deserialize)]
pub enum Item {
    /// Plain bytes.
    Bytes(Vec<u8>),
    /// Text.
    Text(String),
    /// One file.
    File(Handle<std::fs::File>),
    /// Several fds.
    Fds(Vec<Handle<OwnedFd>>),
}

/// Segments of 4 KiB, four of them: a region of 24 KiB whose every byte a two-byte
/// offset reaches.
const SHIFT: u32 = 12;
const CAPACITY: u64 = 4 << SHIFT;

/// How much [`ring`] may hold at once: the records are bounded by the ring's capacity,
/// whatever its header says, and a decoded value may be some dozens of times larger
/// than its encoding.
pub fn ring_bound(data: &[u8]) -> usize {
    (2 << 20) + 64 * (CAPACITY as usize + data.len())
}

fn item(marker: &Marker, kind: u8) -> Option<Item> {
    let n = usize::from(kind >> 2);
    Some(match kind & 3 {
        0 => Item::Bytes(vec![kind; n * 40]),
        1 => Item::Text("t".repeat(n)),
        2 => Item::File(Handle(std::fs::File::from(marker.copies(1).ok()?.pop()?))),
        _ => Item::Fds(marker.copies(n % 4).ok()?.into_iter().map(Handle).collect()),
    })
}

/// A queue whose shared memory a stranger scribbled on: `[flags, item count, item
/// kinds..., patches...]`. A queue of 16 KiB gets up to seven items (some with fds),
/// then each patch `[offset (2 bytes), length, bytes...]` overwrites its region;
/// unless flag 1 is set, the header's identity (magic, version, type hash) is put back
/// so that the deeper paths are reached. The queue is then received again (as another
/// process would: `Ring::open`) and read item by item, with a put in between when flag
/// 2 is set. Nothing panics, nothing outside the region is touched, allocations stay
/// within the ring's capacity, every operation returns, and no fd is left once the
/// queues are dropped.
pub fn ring(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.byte();
    let Ok(marker) = Marker::new() else { return };
    let Ok(q) = QueueBuilder::<Item>::segment_shift(Queue::builder(), SHIFT)
        .capacity(CAPACITY)
        .build()
    else {
        return;
    };
    for _ in 0..input.byte() % 8 {
        if let Some(v) = item(&marker, input.byte()) {
            let _ = q.put_nowait(v);
        }
    }
    {
        let region = q.ring().region();
        let (base, len) = (region.as_ptr(), region.len());
        let saved: Vec<(usize, Vec<u8>)> = IDENTITY
            .iter()
            .map(|r| {
                // SAFETY: the header lies inside the mapping (`len` bytes from `base`);
                // reading bytes of atomics that no other thread or process writes now.
                let b = unsafe { std::slice::from_raw_parts(base.add(r.start), r.len()) };
                (r.start, b.to_vec())
            })
            .collect();
        while !input.is_empty() {
            let off = usize::from(u16::from_be_bytes([input.byte(), input.byte()])) % len;
            let n = usize::from(input.byte() % 64);
            let bytes = input.take(n.min(len - off));
            write(base, off, bytes);
        }
        if flags & 1 == 0 {
            for (at, b) in &saved {
                write(base, *at, b);
            }
        }
    }
    // Received as another process receives it: the bytes and fds of its wire form.
    let Ok((bytes, fds)) = mp_core::handles::encode(&q) else {
        return;
    };
    drop(q);
    if let Ok(q) = mp_core::handles::decode::<Queue<Item>>(&bytes, fds) {
        for step in 0..12 {
            if step == 3 && flags & 2 != 0 {
                if let Some(v) = item(&marker, flags >> 2) {
                    let _ = q.put_nowait(v);
                }
            }
            let _ = (q.qsize(), q.empty(), q.full(), q.is_closed());
            match q.get_nowait() {
                Ok(v) => {
                    if let Item::Fds(f) = &v {
                        assert!(f.len() <= MAX_FDS_PER_ITEM);
                    }
                }
                Err(GetError::Empty | GetError::Closed) => break,
                Err(_) => {}
            }
        }
    }
    assert_eq!(marker.installed(), 0, "an fd was kept");
}

/// Writes `bytes` at `off` in the mapping at `base` (the caller keeps it in bounds).
fn write(base: *mut u8, off: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        // SAFETY: `off + i` is inside the mapping (the caller bounds `bytes` by the
        // region's length); the memory is shared and only read through atomics or raw
        // copies, and no other thread uses this queue, so a plain byte store races
        // with nothing.
        unsafe { std::ptr::write_volatile(base.add(off + i), b) };
    }
}

/// Seeds for [`ring`]: queues with items of each kind and a few patches.
pub fn ring_seeds() -> Vec<Vec<u8>> {
    vec![
        vec![0, 3, 4, 5, 6],
        vec![2, 4, 0x41, 0x0a, 0x0b, 0x1c, 0x20, 0, 8, 0xff, 0xff],
        // Patches over the first record header, the segment map and the tail.
        vec![0, 2, 8, 6, 0x20, 0x00, 4, 0xff, 0xff, 0xff, 0x7f],
        vec![0, 2, 8, 6, 0x10, 0x00, 8, 9, 0, 0, 0, 0, 0, 0, 0],
        vec![
            0, 2, 8, 6, 0x01, 0x00, 8, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        vec![1, 1, 4, 0x00, 0x00, 8, 0, 0, 0, 0, 0, 0, 0, 0],
        // Found by the fuzzer: a tail near u64::MAX overflowed in `has_room`.
        hex(
            "024120007171717171713a1900000071010000010b0101000000008080808080\
             800e0000270000000000000080ffffffffffffffffff8080808080808080800000000080807c23",
        ),
    ]
}

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// The fd side channel against messages anyone holding the queue may send:
/// `[tag to take, then messages [length, fd count, bytes...]]`, and a well-formed
/// message for the tag last. Taking the tag skips stale messages (older tags) and
/// malformed ones (not exactly a 4-byte tag), returns the fds of the first message
/// with that tag, or fails if a newer tag comes first; and nothing is left once the
/// channel is dropped.
pub fn side_channel(data: &[u8]) {
    let mut input = Input(data);
    let tag = u32::from(input.byte()) + 1;
    let Ok(marker) = Marker::new() else { return };
    let Ok(ch) = FdChannel::new() else { return };
    // What taking `tag` must give: the fd count of the message found, or `None`.
    let mut expected: Option<Option<usize>> = None;
    let mut sent = 0;
    while !input.is_empty() && sent < 32 {
        let len = usize::from(input.byte() % 12);
        let nfds = usize::from(input.byte() % 4);
        let bytes = input.take(len);
        let Ok(fds) = marker.copies(nfds) else { return };
        if send_raw(&ch, bytes, &fds).is_err() {
            return;
        }
        sent += 1;
        if expected.is_none() {
            if let Ok(t) = <[u8; 4]>::try_from(bytes).map(u32::from_le_bytes) {
                if t == tag {
                    expected = Some(Some(nfds));
                } else if !crate::fds::before(t, tag) {
                    expected = Some(None);
                }
            }
        }
    }
    let Ok(mine) = marker.copies(2) else { return };
    if send_raw(&ch, &tag.to_le_bytes(), &mine).is_err() {
        return;
    }
    drop(mine);
    let expected = expected.unwrap_or(Some(2));
    let before = marker.installed();
    match (ch.take(tag), expected) {
        (Ok(fds), Some(n)) => {
            assert_eq!(fds.len(), n, "the fds of another message");
            assert_eq!(marker.installed(), before + n);
            drop(fds);
            ch.discard();
        }
        (Err(_), None) => {}
        (Ok(fds), None) => panic!("took {} fds from a message newer than tag {tag}", fds.len()),
        (Err(why), Some(_)) => panic!("the message for tag {tag} was not found: {why}"),
    }
    drop(ch);
    assert_eq!(marker.installed(), 0, "an fd was kept");
}

/// How much [`side_channel`] may hold at once: a few small messages and their fds.
pub fn side_channel_bound(_: &[u8]) -> usize {
    1 << 20
}

fn send_raw(ch: &FdChannel, bytes: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(std::io::Error::other("ancillary buffer"));
    }
    sendmsg(
        &ch.tx,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?;
    Ok(())
}

/// Seeds for [`side_channel`]: stale messages, a short one, a long one, fd-less ones.
pub fn side_channel_seeds() -> Vec<Vec<u8>> {
    vec![
        vec![5, 4, 1, 1, 0, 0, 0, 4, 2, 2, 0, 0, 0],
        vec![5, 4, 0, 6, 0, 0, 0],
        vec![9, 3, 1, 1, 2, 3, 4, 1, 10, 0, 0, 0],
        vec![9, 6, 2, 10, 0, 0, 0, 0, 0],
        vec![0, 0, 3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp_core::fuzzing::{inputs, run_all, CountingAlloc};

    #[global_allocator]
    static A: CountingAlloc = CountingAlloc;

    /// Bounded property pass of a ring over scribbled memory (the fuzz target
    /// `queue_ring`).
    #[test]
    fn ring_property() {
        run_all(
            "queue_ring",
            &inputs(0x0e0e, &ring_seeds(), 2000, 64),
            ring_bound,
            ring,
        );
    }

    /// Bounded property pass of the fd side channel (the fuzz target `queue_fds`).
    #[test]
    fn side_channel_property() {
        run_all(
            "queue_fds",
            &inputs(0xfd5, &side_channel_seeds(), 2000, 48),
            side_channel_bound,
            side_channel,
        );
    }
}
