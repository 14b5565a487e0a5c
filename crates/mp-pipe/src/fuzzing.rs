//! The decoders of this crate against a hostile peer, for the `fuzz/` targets and the
//! bounded property tests (not part of the API): the handshake on either side, and
//! the messages of a [`Connection`].
use crate::{Connection, PipeError, MAX_FDS_PER_MESSAGE};
use mp_core::fuzzing::{feed, Input, Marker};
use mp_core::Handle;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

/// The key both sides of a fuzzed handshake use.
pub const KEY: &[u8] = b"fuzzing key";

/// A bound on every handshake: the peer's end is shut down, so only a bug waits.
const HANDSHAKE_BOUND: Duration = Duration::from_secs(5);

/// The most fds a connection may hold at once: a whole message and the next batch.
const HELD: usize = MAX_FDS_PER_MESSAGE + mp_core::fdpass::MAX_FDS_PER_SEND;

/// The handshake against a peer's bytes: `[flags, chunks...]` (see
/// [`mp_core::fuzzing::feed`]), flag 1 allowing the legacy digest, flag 2 keeping the
/// peer's socket open (shut down for writing) rather than closed, flag 4 playing the
/// client instead of the server. It ends (success or error) within its deadline, and
/// no fd the peer attached is ever installed here.
pub fn handshake(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.byte();
    let Ok(marker) = Marker::new() else { return };
    let Ok((ours, peer)) = feed(&mut input, &marker, flags & 2 != 0) else {
        return;
    };
    let legacy = flags & 1 != 0;
    let start = std::time::Instant::now();
    let r = if flags & 4 == 0 {
        crate::handshake::server(ours.as_fd(), KEY, legacy, HANDSHAKE_BOUND)
    } else {
        crate::handshake::client(ours.as_fd(), KEY, legacy, HANDSHAKE_BOUND)
    };
    assert!(
        !matches!(r, Err(PipeError::Timeout)),
        "a peer that has said all it will say held the handshake to its deadline"
    );
    assert!(start.elapsed() < HANDSHAKE_BOUND);
    // The server's challenge is random, so no fixed peer can pass it: success is only
    // possible for a client whose server never challenges back, and it does.
    assert!(
        r.is_err(),
        "a peer passed a challenge it could not have seen"
    );
    assert_eq!(marker.installed(), 0, "a stranger's fd was installed");
    drop((ours, peer));
}

/// Seeds for [`handshake`]: a valid challenge and welcome (as a client receives them,
/// modern and legacy), and answers of each shape (as a server receives them).
pub fn handshake_seeds() -> Vec<Vec<u8>> {
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }
    fn chunks(flags: u8, fds: u8, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![flags];
        for f in frames {
            for c in framed(f).chunks(200) {
                v.extend_from_slice(&[fds, c.len() as u8]);
                v.extend_from_slice(c);
            }
        }
        v
    }
    let mut challenge = b"#CHALLENGE#{sha256}".to_vec();
    challenge.extend_from_slice(&[0x5a; 40]);
    let mut legacy = b"#CHALLENGE#".to_vec();
    legacy.extend_from_slice(&[0x33; 20]);
    let mut answer = b"{sha256}".to_vec();
    answer.extend_from_slice(&[1; 32]);
    vec![
        chunks(4, 0, &[challenge.clone(), b"#WELCOME#".to_vec()]),
        chunks(6, 3, &[challenge, b"#WELCOME#".to_vec(), answer.clone()]),
        chunks(5, 1, &[legacy, b"#WELCOME#".to_vec()]),
        chunks(0, 2, std::slice::from_ref(&answer)),
        chunks(1, 0, &[vec![9; 16]]),
        chunks(2, 0, &[b"{sha384}".to_vec()]),
    ]
}

/// How much [`handshake`] may hold at once: frames of at most 256 bytes, digests.
pub fn handshake_bound(data: &[u8]) -> usize {
    (1 << 20) + 16 * data.len()
}

/// The frame limits a connection target picks from.
const MAXES: [u64; 4] = [16, 4096, 1 << 20, crate::DEFAULT_MAX_MESSAGE];

/// How much [`connection`] may hold at once for `data`: the read buffer, the frame a
/// header announces up to the up-front allocation for a long frame, and some dozens of
/// times the bytes that arrived (a decoded value is larger than its encoding).
pub fn connection_bound(data: &[u8]) -> usize {
    let max = MAXES[usize::from(data.first().copied().unwrap_or(0)) % MAXES.len()];
    (max.min(64 << 20) as usize) + (4 << 20) + 64 * data.len()
}

/// A connection reading a peer's bytes: `[max choice, 4 operation bytes, chunks...]`.
/// Each message is read with one operation (typed receives of several types, raw
/// receives, polls) until the stream ends; no payload exceeds the limit, an oversized
/// frame ends readability, the connection never holds more fds than its bound, and
/// once the stream has ended no fd the peer attached is left.
pub fn connection(data: &[u8]) {
    let mut input = Input(data);
    let max = MAXES[usize::from(input.byte()) % MAXES.len()];
    let ops: Vec<u8> = input.take(4).to_vec();
    let Ok(marker) = Marker::new() else { return };
    let Ok((ours, _)) = feed(&mut input, &marker, false) else {
        return;
    };
    let Ok(mut conn) = Connection::from_fd(ours, true, true) else {
        return;
    };
    conn.set_max_message_size(max);
    let mut ended = false;
    for step in 0..64 {
        let op = ops.get(step % 4).copied().unwrap_or(0);
        let r = read_one(&mut conn, op, max);
        assert!(
            marker.installed() <= HELD,
            "{} fds held",
            marker.installed()
        );
        match r {
            Err(PipeError::FrameTooLarge { .. }) => {
                assert!(!conn.readable(), "readable after an oversized frame");
            }
            Err(
                PipeError::Eof
                | PipeError::TruncatedMessage
                | PipeError::Unreadable
                | PipeError::Closed
                | PipeError::Io(_),
            ) => {
                ended = true;
                break;
            }
            _ => {}
        }
        if !conn.readable() {
            ended = true;
            break;
        }
    }
    if ended {
        assert_eq!(marker.installed(), 0, "fds kept after the stream ended");
    }
    drop(conn);
    assert_eq!(marker.installed(), 0, "an fd was kept");
}

/// A value type that holds handles in several places.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
enum Shape {
    Text(String),
    File(Handle<std::fs::File>),
    Pipe(Connection),
    Many(Vec<Handle<OwnedFd>>, Option<Connection>),
}

fn read_one(conn: &mut Connection, op: u8, max: u64) -> crate::Result<()> {
    let check = |len: usize| assert!(len as u64 <= max, "a payload of {len} over {max}");
    match op % 9 {
        0 => conn.recv::<u32>().map(drop),
        1 => conn.recv::<String>().map(|s| check(s.len())),
        2 => conn.recv::<Vec<u8>>().map(|v| check(v.len())),
        3 => conn.recv::<(String, Handle<std::fs::File>)>().map(drop),
        4 => conn.recv::<Vec<Handle<OwnedFd>>>().map(|v| {
            assert!(v.len() <= MAX_FDS_PER_MESSAGE);
        }),
        5 => conn.recv::<Shape>().map(drop),
        6 => conn.recv_bytes().map(|v| check(v.len())),
        7 => {
            // Up to the size of the read buffer and past it (a long message is read
            // straight into the caller's buffer).
            const SIZES: [usize; 5] = [0, 8, 64, 1000, 70_000];
            let mut buf = vec![0u8; SIZES[usize::from(op >> 4) % SIZES.len()]];
            match conn.recv_bytes_into(&mut buf) {
                Ok(n) => {
                    assert!(n <= buf.len());
                    Ok(())
                }
                Err(PipeError::BufferTooShort(v)) => {
                    check(v.len());
                    assert!(v.len() > buf.len());
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        _ => conn.poll(Some(Duration::ZERO)).map(drop),
    }
}

/// Seeds for [`connection`]: typed messages with and without fds, raw messages, a long
/// header, as [`Connection::send`] and [`Connection::send_bytes`] write them.
pub fn connection_seeds() -> Vec<Vec<u8>> {
    fn typed(count: u8, value: &[u8]) -> Vec<u8> {
        let mut p = vec![count];
        p.extend_from_slice(value);
        let mut v = (p.len() as u32).to_be_bytes().to_vec();
        v.extend(p);
        v
    }
    fn chunked(head: &[u8], frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut v = head.to_vec();
        for (fds, f) in frames {
            for (i, c) in f.chunks(200).enumerate() {
                v.extend_from_slice(&[if i == 0 { *fds } else { 0 }, c.len() as u8]);
                v.extend_from_slice(c);
            }
        }
        v
    }
    fn pc<T: serde::Serialize>(v: &T) -> Vec<u8> {
        mp_core::postcard::to_allocvec(v).unwrap_or_default()
    }
    let s = typed(0, &pc(&"hello".to_string()));
    let n = typed(0, &pc(&7u32));
    let file = typed(1, &pc(&("f".to_string(), 0u32)));
    let many = typed(2, &[2, 0, 1]);
    let mut raw = 5u32.to_be_bytes().to_vec();
    raw.extend_from_slice(b"bytes");
    let mut long = vec![0xff; 4];
    long.extend_from_slice(&3u64.to_be_bytes());
    long.extend_from_slice(b"xyz");
    let mut long_cut = 70_000u32.to_be_bytes().to_vec();
    long_cut.extend_from_slice(&[5; 100]);
    vec![
        chunked(
            &[1, 0, 1, 2, 3],
            &[(0, n.clone()), (0, s.clone()), (0, typed(0, &[3, 1, 2, 3]))],
        ),
        chunked(
            &[2, 3, 4, 3, 4],
            &[(1, file.clone()), (2, many.clone()), (1, file)],
        ),
        chunked(
            &[3, 6, 7, 0x34, 8],
            &[(0, raw.clone()), (0, raw), (3, long)],
        ),
        chunked(&[0, 5, 5, 0, 1], &[(0, n), (2, many), (0, s)]),
        // A message longer than the read buffer, cut short, read into a buffer that
        // holds it.
        chunked(&[2, 0x46, 6, 6, 6], &[(0, long_cut)]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp_core::fuzzing::{inputs, run_all, CountingAlloc};

    #[global_allocator]
    static A: CountingAlloc = CountingAlloc;

    /// Bounded property pass of the handshake, both sides (the fuzz target
    /// `handshake`).
    #[test]
    fn handshake_property() {
        let seeds = handshake_seeds();
        run_all(
            "handshake",
            &inputs(0x5a5a, &seeds, 2000, 128),
            handshake_bound,
            handshake,
        );
    }

    /// Bounded property pass of a connection's decoding (the fuzz target `connection`).
    #[test]
    fn connection_property() {
        let seeds = connection_seeds();
        run_all(
            "connection",
            &inputs(0xc0_22ec7, &seeds, 2000, 160),
            connection_bound,
            connection,
        );
    }

    /// The seeds reach the deep paths: a client answers the seeded challenge and is
    /// welcomed (then fails only at the challenge it delivers), and typed messages
    /// with fds decode.
    #[test]
    fn seeds_are_valid() {
        let seeds = handshake_seeds();
        let mut input = Input(&seeds[0][1..]);
        let m = Marker::new().expect("marker");
        let (ours, _peer) = feed(&mut input, &m, true).expect("feed");
        let mut wire = crate::handshake::Stranger::new(ours.as_fd(), HANDSHAKE_BOUND);
        crate::handshake::answer_challenge(&mut wire, KEY, false).expect("welcomed");
        let seeds = connection_seeds();
        let mut input = Input(&seeds[1][5..]);
        let (ours, _) = feed(&mut input, &m, false).expect("feed");
        let mut c = Connection::from_fd(ours, true, true).expect("conn");
        let (name, _f) = c
            .recv::<(String, Handle<std::fs::File>)>()
            .expect("typed with fd");
        assert_eq!(name, "f");
        assert_eq!(c.recv::<Vec<Handle<OwnedFd>>>().expect("two fds").len(), 2);
    }
}
