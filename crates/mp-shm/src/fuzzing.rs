//! The shared-memory tracker's message decoding against any messages, for the `fuzz/`
//! target and the bounded property test (not part of the API).
use crate::tracker::serve::{read_messages, valid};
use mp_core::fuzzing::{Input, Marker};
use std::os::fd::AsFd;

/// The tracker reading what its creator sends: messages `[length (2 bytes, up to
/// 1023), fd count, bytes...]` on a seqpacket socket, then end of file. Only valid
/// names are kept, at most one per message, no message is trusted for a size, and no
/// fd attached to a message is installed.
pub fn tracker(data: &[u8]) {
    use rustix::net::{sendmsg, socketpair, AddressFamily, SocketFlags, SocketType};
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let mut input = Input(data);
    let Ok(marker) = Marker::new() else { return };
    let Ok((creator, tracker)) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    ) else {
        return;
    };
    let mut sent = 0;
    while !input.is_empty() && sent < 64 {
        let len = usize::from(u16::from_be_bytes([input.byte(), input.byte()]) % 1024);
        let nfds = usize::from(input.byte() % 4);
        let bytes = input.take(len);
        let Ok(fds) = marker.copies(nfds) else { return };
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return;
        }
        let iov = [std::io::IoSlice::new(bytes)];
        if sendmsg(&creator, &iov, &mut control, SendFlags::DONTWAIT).is_err() {
            break;
        }
        sent += 1;
    }
    // The creator is gone: the tracker reads to the end.
    drop(creator);
    let names = read_messages(tracker.as_fd());
    assert!(
        names.len() <= sent,
        "{} names from {sent} messages",
        names.len()
    );
    assert!(names.iter().all(|n| valid(n)), "an invalid name was kept");
    assert_eq!(
        marker.installed(),
        0,
        "an fd attached to a message was installed"
    );
}

/// How much [`tracker`] may hold at once: the names kept, which came in the input.
pub fn tracker_bound(data: &[u8]) -> usize {
    (64 << 10) + 4 * data.len()
}

/// Seeds for [`tracker`]: registrations, removals, an oversized message, garbage.
pub fn tracker_seeds() -> Vec<Vec<u8>> {
    fn msg(out: &mut Vec<u8>, fds: u8, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.push(fds);
        out.extend_from_slice(bytes);
    }
    let mut a = Vec::new();
    msg(&mut a, 0, b"+seg-one");
    msg(&mut a, 1, b"+seg-two");
    msg(&mut a, 0, b"-seg-one");
    let mut b = Vec::new();
    msg(&mut b, 0, &[b'+'; 600]);
    msg(&mut b, 2, b"+a/b");
    msg(&mut b, 0, b"");
    msg(&mut b, 0, b"+ok");
    vec![a, b]
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp_core::fuzzing::{inputs, run_all, CountingAlloc};

    #[global_allocator]
    static A: CountingAlloc = CountingAlloc;

    /// Bounded property pass of the tracker's decoding (the fuzz target `shm_tracker`).
    #[test]
    fn tracker_property() {
        run_all(
            "shm_tracker",
            &inputs(0x7ac, &tracker_seeds(), 2000, 256),
            tracker_bound,
            tracker,
        );
    }
}
