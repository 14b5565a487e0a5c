//! Connection behaviour within one process: framing, buffering, errors, fd passing,
//! wait(), and hostile input. (Behaviour across processes is in `tests/processes.rs`.)
use mp_core::Handle;
use mp_pipe::{pipe, pipe_oneway, wait, Connection, Pipe, PipeError, MAX_FDS_PER_MESSAGE};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

type R = Result<(), Box<dyn std::error::Error>>;

fn err<T: std::fmt::Debug>(r: Result<T, PipeError>) -> PipeError {
    match r {
        Ok(v) => {
            let text: String = format!("{v:?}").chars().take(200).collect();
            panic!("expected an error, got Ok({text})")
        }
        Err(e) => e,
    }
}

/// Writes raw bytes on the socket under `c`, bypassing its framing.
fn raw_write(c: &Connection, bytes: &[u8]) -> R {
    let fd = c.fd()?;
    let mut done = 0;
    while done < bytes.len() {
        done += rustix::net::send(fd, &bytes[done..], rustix::net::SendFlags::NOSIGNAL)?;
    }
    Ok(())
}

/// Reads exactly `n` raw bytes from the socket under `c`.
fn raw_read(c: &Connection, n: usize) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let fd = c.fd()?;
    let mut out = vec![0u8; n];
    let mut done = 0;
    while done < n {
        let k = rustix::io::read(fd, &mut out[done..])?;
        if k == 0 {
            return Err("unexpected end of file".into());
        }
        done += k;
    }
    Ok(out)
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Job {
    id: u64,
    name: String,
    data: Vec<u32>,
}

#[test]
fn typed_and_raw_round_trips() -> R {
    let (mut a, mut b) = pipe()?;
    let job = Job {
        id: 7,
        name: "seven".into(),
        data: vec![1, 2, 3],
    };
    a.send(&job)?;
    assert_eq!(b.recv::<Job>()?, job);
    b.send_bytes(b"raw bytes")?;
    assert_eq!(a.recv_bytes()?, b"raw bytes");
    a.send(&())?;
    b.recv::<()>()?;
    a.send("a str slice")?;
    assert_eq!(b.recv::<String>()?, "a str slice");
    Ok(())
}

#[test]
fn raw_messages_are_python_frames_byte_for_byte() -> R {
    let (mut a, b) = pipe()?;
    a.send_bytes(b"abc")?;
    a.send_bytes(b"")?;
    assert_eq!(
        raw_read(&b, 11)?,
        [0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0]
    );
    // And what Python writes, we read: two frames in one write, then a split frame.
    raw_write(&b, &[0, 0, 0, 2, b'h', b'i', 0, 0, 0, 0, 0, 0])?;
    assert_eq!(a.recv_bytes()?, b"hi");
    assert_eq!(a.recv_bytes()?, b"");
    raw_write(&b, &[0, 5, b'h', b'e'])?;
    assert!(
        a.poll(Some(Duration::ZERO))?,
        "buffered bytes count for poll"
    );
    raw_write(&b, b"llo")?;
    assert_eq!(a.recv_bytes()?, b"hello");
    Ok(())
}

#[test]
fn boundaries_kept_in_a_burst() -> R {
    let (mut a, mut b) = pipe()?;
    // Sizes around the read buffer (64 KiB) and the frame's small limit.
    let sizes = [
        0usize, 1, 3, 0, 100, 16384, 16385, 65531, 65532, 65536, 65537, 0, 200_000, 7,
    ];
    let writer = std::thread::spawn(move || -> Result<Connection, PipeError> {
        for (i, &n) in sizes.iter().enumerate() {
            let msg: Vec<u8> = (0..n).map(|k| (k + i) as u8).collect();
            a.send_bytes(&msg)?;
            a.send(&(i as u32, n as u64))?;
        }
        Ok(a)
    });
    for (i, &n) in sizes.iter().enumerate() {
        let msg = b.recv_bytes()?;
        assert_eq!(msg.len(), n, "message {i}");
        assert!(
            msg.iter().enumerate().all(|(k, &x)| x == (k + i) as u8),
            "content of message {i}"
        );
        assert_eq!(b.recv::<(u32, u64)>()?, (i as u32, n as u64));
    }
    let _a = writer.join().map_err(|_| "writer panicked")??;
    assert!(!b.poll(Some(Duration::ZERO))?, "nothing left over");
    Ok(())
}

#[test]
fn large_messages_both_ways() -> R {
    let (mut a, mut b) = pipe()?;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let big2 = big.clone();
    let writer = std::thread::spawn(move || -> Result<(), PipeError> {
        a.send_bytes(&big2)?;
        a.send(&big2)?;
        a.send_bytes(&big2)?;
        a.send_bytes(&big2[..70_000])
    });
    assert_eq!(b.recv_bytes()?, big);
    assert_eq!(b.recv::<Vec<u8>>()?, big);
    let mut into = vec![0u8; 4_000_000];
    let n = b.recv_bytes_into(&mut into)?;
    assert_eq!(&into[..n], &big[..]);
    let n = b.recv_bytes_into(&mut into)?;
    assert_eq!(&into[..n], &big[..70_000]);
    writer.join().map_err(|_| "writer panicked")??;
    Ok(())
}

#[test]
fn buffer_too_short_hands_back_the_whole_message() -> R {
    let (mut a, mut b) = pipe()?;
    let large = vec![9u8; 100_000];
    a.send_bytes(b"abcdef")?;
    let writer = std::thread::spawn(move || -> Result<Connection, PipeError> {
        a.send_bytes(&large)?;
        a.send_bytes(b"next")?;
        Ok(a)
    });
    let mut small = [0u8; 3];
    match b.recv_bytes_into(&mut small) {
        Err(PipeError::BufferTooShort(m)) => assert_eq!(m, b"abcdef"),
        other => panic!("expected BufferTooShort, got {other:?}"),
    }
    match b.recv_bytes_into(&mut small) {
        Err(PipeError::BufferTooShort(m)) => assert_eq!(m, vec![9u8; 100_000]),
        other => panic!("expected BufferTooShort, got {other:?}"),
    }
    let mut exact = [0u8; 4];
    assert_eq!(b.recv_bytes_into(&mut exact)?, 4);
    assert_eq!(&exact, b"next");
    let _a = writer.join().map_err(|_| "writer panicked")??;
    Ok(())
}

#[test]
fn one_way_pipe_refuses_the_wrong_direction() -> R {
    let (mut r, mut w) = pipe_oneway()?;
    assert!(r.readable() && !r.writable() && w.writable() && !w.readable());
    assert!(matches!(err(r.send(&1u8)), PipeError::ReadOnly));
    assert!(matches!(err(r.send_bytes(b"x")), PipeError::ReadOnly));
    assert!(matches!(err(w.recv::<u8>()), PipeError::WriteOnly));
    assert!(matches!(err(w.recv_bytes()), PipeError::WriteOnly));
    assert!(matches!(
        err(w.poll(Some(Duration::ZERO))),
        PipeError::WriteOnly
    ));
    w.send(&"one way")?;
    assert_eq!(r.recv::<String>()?, "one way");
    let (mut r2, mut w2) = Pipe::new(false)?;
    assert!(matches!(err(r2.send_bytes(b"")), PipeError::ReadOnly));
    drop(r2);
    assert!(matches!(err(w2.send_bytes(b"x")), PipeError::BrokenPipe));
    let (r3, w3) = Pipe::new(true)?;
    assert!(r3.readable() && r3.writable() && w3.readable() && w3.writable());
    Ok(())
}

#[test]
fn eof_after_drain_and_broken_pipe() -> R {
    let (mut a, mut b) = pipe()?;
    a.send(&1u8)?;
    a.send_bytes(b"last")?;
    drop(a);
    assert!(b.poll(Some(Duration::ZERO))?);
    assert_eq!(b.recv::<u8>()?, 1);
    assert_eq!(b.recv_bytes()?, b"last");
    assert!(b.poll(Some(Duration::ZERO))?, "poll is true at end of file");
    assert!(matches!(err(b.recv_bytes()), PipeError::Eof));
    assert!(
        matches!(err(b.recv::<u8>()), PipeError::Eof),
        "still end of file"
    );
    assert!(matches!(err(b.send(&2u8)), PipeError::BrokenPipe));
    Ok(())
}

#[test]
fn eof_when_the_peer_closed_with_our_data_unread() -> R {
    // Linux reports ECONNRESET here; it is the peer going away, so end of file.
    let (mut a, b) = pipe()?;
    a.send_bytes(b"never read")?;
    drop(b);
    assert!(matches!(err(a.recv_bytes()), PipeError::Eof));
    Ok(())
}

#[test]
fn eof_in_the_middle_of_a_message() -> R {
    let (mut a, b) = pipe()?;
    raw_write(&b, &[0, 0, 0, 10, 1, 2, 3])?;
    drop(b);
    assert!(matches!(err(a.recv_bytes()), PipeError::TruncatedMessage));
    assert!(matches!(err(a.recv_bytes()), PipeError::Eof));
    let (mut a, b) = pipe()?;
    raw_write(&b, &[0, 0])?;
    drop(b);
    assert!(matches!(err(a.recv::<u8>()), PipeError::TruncatedMessage));
    // A large message cut short.
    let (mut a, b) = pipe()?;
    let mut frame = 100_000u32.to_be_bytes().to_vec();
    frame.extend(vec![5u8; 70_000]);
    let t = std::thread::spawn(move || {
        let r = raw_write(&b, &frame).map_err(|e| e.to_string());
        drop(b);
        r
    });
    assert!(matches!(err(a.recv_bytes()), PipeError::TruncatedMessage));
    t.join().map_err(|_| "writer panicked")??;
    Ok(())
}

#[test]
fn close_is_idempotent_and_final() -> R {
    let (mut a, mut b) = pipe()?;
    b.send_bytes(b"pending")?;
    a.close();
    a.close();
    assert!(a.closed());
    assert!(matches!(err(a.send_bytes(b"x")), PipeError::Closed));
    assert!(matches!(err(a.recv_bytes()), PipeError::Closed));
    assert!(matches!(err(a.poll(None)), PipeError::Closed));
    assert!(matches!(err(a.fd()), PipeError::Closed));
    assert!(matches!(
        err(wait(&[&a], Some(Duration::ZERO))),
        PipeError::Closed
    ));
    assert!(matches!(err(b.recv_bytes()), PipeError::Eof));
    Ok(())
}

#[test]
fn poll_waits_and_never_consumes() -> R {
    let (mut a, mut b) = pipe()?;
    assert!(!b.poll(Some(Duration::ZERO))?);
    let t0 = Instant::now();
    assert!(!b.poll(Some(Duration::from_millis(50)))?);
    assert!(
        t0.elapsed() >= Duration::from_millis(50),
        "poll returned before its timeout"
    );
    let t = std::thread::spawn(move || -> Result<Connection, PipeError> {
        std::thread::sleep(Duration::from_millis(50));
        a.send_bytes(b"")?;
        a.send_bytes(b"second")?;
        Ok(a)
    });
    assert!(b.poll(None)?, "an empty message makes poll true");
    assert!(b.poll(Some(Duration::ZERO))?);
    assert_eq!(b.recv_bytes()?, b"");
    // The second message may sit in our buffer already: poll must still see it.
    assert!(b.poll(Some(Duration::from_secs(30)))?);
    assert_eq!(b.recv_bytes()?, b"second");
    let _a = t.join().map_err(|_| "sender panicked")??;
    assert!(!b.poll(Some(Duration::ZERO))?);
    Ok(())
}

#[test]
fn oversized_frames_are_refused_before_allocation() -> R {
    let (mut a, mut b) = pipe()?;
    b.set_max_message_size(10);
    assert_eq!(b.max_message_size(), 10);
    a.send_bytes(&[1; 10])?;
    assert_eq!(b.recv_bytes()?.len(), 10);
    a.send_bytes(&[1; 11])?;
    assert!(matches!(
        err(b.recv_bytes()),
        PipeError::FrameTooLarge { len: 11, max: 10 }
    ));
    assert!(
        matches!(err(b.recv_bytes()), PipeError::Unreadable),
        "boundaries are lost"
    );
    b.send_bytes(b"sending still works")?;
    assert_eq!(a.recv_bytes()?, b"sending still works");
    // A hostile header announcing 2^60 bytes (the long form) with the default maximum.
    let (a, mut b) = pipe()?;
    let mut hdr = vec![0xff, 0xff, 0xff, 0xff];
    hdr.extend((1u64 << 60).to_be_bytes());
    raw_write(&a, &hdr)?;
    assert!(matches!(err(b.recv_bytes()), PipeError::FrameTooLarge { len, .. } if len == 1 << 60));
    // A negative length other than -1.
    let (a, mut b) = pipe()?;
    raw_write(&a, &[0xff, 0xff, 0xff, 0xfe])?;
    assert!(matches!(err(b.recv::<u8>()), PipeError::BadFrame(_)));
    Ok(())
}

#[test]
fn wrong_type_names_the_type_and_the_connection_stays_usable() -> R {
    let (mut a, mut b) = pipe()?;
    a.send(&"a string, not a number".to_string())?;
    let e = err(b.recv::<u16>());
    assert!(
        matches!(
            e,
            PipeError::Decode {
                type_name: "u16",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("u16"));
    // A raw message (a Python pickle, say) read as a typed one.
    a.send_bytes(&[0x80, 0x04, 0x95, 0x05])?;
    let e = err(b.recv::<Job>());
    assert!(e.to_string().contains("Job"), "{e}");
    // A message carrying a Connection read as something that has no room for it: the
    // fd is consumed with the message, and the next message is intact.
    let (_x, y) = pipe()?;
    a.send(&(5u8, y))?;
    assert!(matches!(err(b.recv::<u8>()), PipeError::Decode { .. }));
    a.send(&(1u32, "fine".to_string()))?;
    assert_eq!(b.recv::<(u32, String)>()?, (1, "fine".to_string()));
    Ok(())
}

#[test]
fn encode_failure_is_in_the_sender_and_sends_nothing() -> R {
    struct Unencodable;
    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no thanks"))
        }
    }
    let (mut a, mut b) = pipe()?;
    assert!(matches!(
        err(a.send(&Unencodable)),
        PipeError::Encode { .. }
    ));
    a.send(&3u8)?;
    assert_eq!(b.recv::<u8>()?, 3);
    Ok(())
}

#[test]
fn connections_and_files_travel_inside_messages() -> R {
    let (mut a, mut b) = pipe()?;
    let (mut x1, y1) = pipe()?;
    let (mut x2, y2) = pipe()?;
    let (r3, mut w3) = pipe_oneway()?;
    let mut file = tempfile()?;
    file.write_all(b"file contents")?;
    // A burst of messages with and without fds, before anything is received: each
    // typed message must get its own fds back.
    a.send(&y1)?;
    a.send_bytes(b"no fds here")?;
    a.send(&42u64)?;
    a.send(&(y2, "two".to_string(), r3))?;
    a.send(&Handle(file))?;
    drop((y1,));
    let mut got1: Connection = b.recv()?;
    assert_eq!(b.recv_bytes()?, b"no fds here");
    assert_eq!(b.recv::<u64>()?, 42);
    let (mut got2, s, mut got3): (Connection, String, Connection) = b.recv()?;
    assert_eq!(s, "two");
    let Handle(mut f): Handle<File> = b.recv()?;
    f.seek(std::io::SeekFrom::Start(0))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    assert_eq!(text, "file contents");
    // The received ends are live and keep their direction.
    x1.send(&"to one")?;
    assert_eq!(got1.recv::<String>()?, "to one");
    got1.send(&"back")?;
    assert_eq!(x1.recv::<String>()?, "back");
    got2.send_bytes(b"from two")?;
    assert_eq!(x2.recv_bytes()?, b"from two");
    assert!(!got3.writable());
    w3.send(&3u8)?;
    assert_eq!(got3.recv::<u8>()?, 3);
    assert!(matches!(err(got3.send(&1u8)), PipeError::ReadOnly));
    Ok(())
}

/// A private connection (a library's own channel) works as before, is registered as
/// private, and still travels: the receiver's copy is an ordinary fd.
#[test]
fn a_private_connection_works_and_travels() -> R {
    use mp_core::private_fd::is_private;
    let (mut a, mut b) = pipe()?;
    let (mut x, mut y) = pipe()?;
    x.make_private()?;
    x.make_private()?; // again: nothing changes
    assert!(is_private(x.fd()?));
    x.send(&"private")?;
    assert_eq!(y.recv::<String>()?, "private");
    y.send(&1u8)?;
    assert_eq!(x.recv::<u8>()?, 1);
    a.send(&x)?;
    let mut got: Connection = b.recv()?;
    assert!(is_private(x.fd()?) && !is_private(got.fd()?));
    got.send(&2u8)?;
    assert_eq!(y.recv::<u8>()?, 2);
    let raw = x.fd()?.as_raw_fd();
    drop(x);
    // Closed: the number is no longer registered (whatever reuses it is not private).
    let reuse = File::open("/dev/null")?;
    assert!(reuse.as_raw_fd() != raw || !is_private(reuse.as_fd()));
    Ok(())
}

#[test]
fn many_fds_in_one_message() -> R {
    let (mut a, mut b) = pipe()?;
    let files: Vec<Handle<OwnedFd>> = (0..300)
        .map(|_| Ok(Handle(OwnedFd::from(tempfile()?))))
        .collect::<Result<_, std::io::Error>>()?;
    a.send(&(&files, 1u8))?;
    a.send(&files[..2])?;
    let (got, one): (Vec<Handle<OwnedFd>>, u8) = b.recv()?;
    assert_eq!((got.len(), one), (300, 1));
    assert_eq!(b.recv::<Vec<Handle<OwnedFd>>>()?.len(), 2);
    let too_many: Vec<Handle<std::os::fd::BorrowedFd<'_>>> = (0..=MAX_FDS_PER_MESSAGE)
        .map(|i| Handle(files[i % 300].0.as_fd()))
        .collect();
    let e = err(a.send(&too_many));
    assert!(matches!(e, PipeError::Encode { .. }), "{e}");
    a.send(&9u8)?;
    assert_eq!(
        b.recv::<u8>()?,
        9,
        "nothing of the refused message was sent"
    );
    Ok(())
}

#[test]
fn a_large_message_with_fds() -> R {
    let (mut a, mut b) = pipe()?;
    let (mut x, y) = pipe()?;
    let payload = vec![3u8; 2_000_000];
    let t = std::thread::spawn(move || -> Result<Connection, PipeError> {
        a.send(&(&payload, y, &payload))?;
        a.send(&0u8)?;
        Ok(a)
    });
    let (p1, mut y, p2): (Vec<u8>, Connection, Vec<u8>) = b.recv()?;
    assert_eq!((p1.len(), p2.len()), (2_000_000, 2_000_000));
    assert_eq!(b.recv::<u8>()?, 0);
    x.send(&"alive")?;
    assert_eq!(y.recv::<String>()?, "alive");
    let _a = t.join().map_err(|_| "sender panicked")??;
    Ok(())
}

#[test]
fn a_connection_with_unread_data_refuses_to_travel() -> R {
    let (mut a, mut b) = pipe()?;
    let (mut x, mut y) = pipe()?;
    x.send(&1u8)?;
    x.send(&2u8)?;
    assert_eq!(y.recv::<u8>()?, 1); // the second is now in y's buffer
    let e = err(a.send(&y));
    assert!(e.to_string().contains("unread"), "{e}");
    assert_eq!(y.recv::<u8>()?, 2);
    a.send(&y)?;
    let mut y2: Connection = b.recv()?;
    x.send(&3u8)?;
    assert_eq!(y2.recv::<u8>()?, 3);
    let mut closed = y;
    closed.close();
    assert!(matches!(err(a.send(&closed)), PipeError::Encode { .. }));
    Ok(())
}

#[test]
fn wait_over_connections_and_fds() -> R {
    let (mut a1, b1) = pipe()?;
    let (mut a2, mut b2) = pipe()?;
    let (r3, w3) = pipe_oneway()?;
    let (pr, pw) = rustix::pipe::pipe()?;
    assert!(wait(&[&b1, &b2, &r3, &pr], Some(Duration::ZERO))?.is_empty());
    let t0 = Instant::now();
    assert!(wait(&[&b1, &b2, &r3, &pr], Some(Duration::from_millis(50)))?.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(50));
    a2.send(&1u8)?;
    assert_eq!(wait(&[&b1, &b2, &r3, &pr], None)?, vec![1]);
    rustix::io::write(&pw, b"x")?;
    assert_eq!(
        wait(&[&b1, &b2, &r3, &pr], Some(Duration::from_secs(30)))?,
        vec![1, 3]
    );
    drop(w3);
    assert_eq!(
        wait(&[&b1, &b2, &r3, &pr], Some(Duration::from_secs(30)))?,
        vec![1, 2, 3]
    );
    // Buffered data: two messages arrive in one read; the second is in b2's buffer and
    // the socket itself is empty, yet wait() reports it.
    a2.send(&2u8)?;
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(b2.recv::<u8>()?, 1);
    assert!(
        !rustix_readable(&b2)?,
        "the socket is drained into the buffer"
    );
    assert_eq!(wait(&[&b1, &b2], Some(Duration::ZERO))?, vec![1]);
    assert_eq!(b2.recv::<u8>()?, 2);
    a1.send_bytes(b"")?;
    let spawned =
        std::thread::spawn(move || -> Result<Vec<usize>, PipeError> { wait(&[&b2, &b1], None) });
    assert_eq!(spawned.join().map_err(|_| "waiter panicked")??, vec![1]);
    Ok(())
}

fn rustix_readable(c: &Connection) -> Result<bool, Box<dyn std::error::Error>> {
    let fd = c.fd()?;
    let mut p = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    Ok(rustix::event::poll(
        &mut p,
        Some(&rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }),
    )? > 0)
}

#[test]
fn threads_ping_pong() -> R {
    let (mut a, mut b) = pipe()?;
    let echo = std::thread::spawn(move || -> Result<u64, PipeError> {
        let mut n = 0;
        loop {
            match b.recv::<Option<u64>>()? {
                Some(v) => {
                    b.send(&Some(v + 1))?;
                    n += 1;
                }
                None => return Ok(n),
            }
        }
    });
    for i in 0..5000u64 {
        a.send(&Some(i))?;
        assert_eq!(a.recv::<Option<u64>>()?, Some(i + 1));
    }
    a.send(&None::<u64>)?;
    assert_eq!(echo.join().map_err(|_| "echo panicked")??, 5000);
    Ok(())
}

/// Random bytes on the wire never make a receiver panic, hang or allocate past its
/// maximum; every receive either gives a message or an error (bounded: a fixed count of
/// inputs from a xorshift generator, so it needs no extra crate).
#[test]
fn random_bytes_never_panic() -> R {
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for round in 0..2000 {
        let (a, mut b) = pipe()?;
        b.set_max_message_size(1 << 16);
        let len = (next() % 200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Often make plausible headers so payloads get decoded too.
        if round % 2 == 0 && len >= 4 {
            let n = (next() % (len as u64 - 3)) as u32;
            bytes[..4].copy_from_slice(&n.to_be_bytes());
        }
        raw_write(&a, &bytes)?;
        drop(a);
        for _ in 0..=len {
            let r = match round % 4 {
                0 => b.recv::<(String, Vec<u32>, Option<Connection>)>().map(drop),
                1 => b.recv::<Job>().map(drop),
                2 => b.recv_bytes().map(drop),
                _ => b.recv_bytes_into(&mut [0u8; 8]).map(drop),
            };
            if let Err(PipeError::Eof | PipeError::TruncatedMessage | PipeError::Unreadable) = r {
                break;
            }
        }
        assert!(
            b.poll(Some(Duration::ZERO))?,
            "at the end, the receiver sees end of file"
        );
    }
    Ok(())
}

/// After an oversized or malformed frame the read side is gone, as in Python:
/// `readable()` turns false, and a read-only end is closed (issue 12, item 5).
#[test]
fn a_bad_frame_ends_the_read_side() -> R {
    let (mut a, mut b) = pipe()?;
    b.set_max_message_size(10);
    a.send_bytes(&[0; 11])?;
    assert!(matches!(
        err(b.recv_bytes()),
        PipeError::FrameTooLarge { .. }
    ));
    assert!(!b.readable(), "still readable after FrameTooLarge");
    assert!(b.writable() && !b.closed());
    assert!(matches!(err(b.recv_bytes()), PipeError::Unreadable));
    assert!(
        b.poll(Some(Duration::ZERO))?,
        "a receive returns at once (with the error)"
    );
    b.send_bytes(b"still writes")?;
    assert_eq!(a.recv_bytes()?, b"still writes");
    let (a, mut b) = pipe()?;
    raw_write(&a, &[0xff, 0xff, 0xff, 0xfe])?;
    assert!(matches!(err(b.recv_bytes()), PipeError::BadFrame(_)));
    assert!(!b.readable());
    let (mut r, mut w) = pipe_oneway()?;
    r.set_max_message_size(1);
    w.send_bytes(b"xx")?;
    assert!(matches!(
        err(r.recv_bytes()),
        PipeError::FrameTooLarge { .. }
    ));
    assert!(!r.readable() && r.closed(), "a read-only end is closed");
    assert!(matches!(err(r.recv_bytes()), PipeError::Closed));
    Ok(())
}

/// Whether `r` (a pipe's read end) sees end of file: no copy of its write end is open.
fn writers_gone(r: &OwnedFd) -> Result<bool, Box<dyn std::error::Error>> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut p = [PollFd::new(r, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut p, Some(&zero))?;
    Ok(p[0].revents().contains(PollFlags::HUP))
}

/// A typed message arrives with exactly the fds it claims, or it is an error for that
/// message alone, its fds closed: more claimed than sent (never a wait for more), more
/// than may travel, or fds it does not claim, which must not be handed to the next
/// message (issue 12, item 2).
#[test]
fn typed_fd_counts_are_checked() -> R {
    let (mut a, mut b) = pipe()?;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let three: Vec<Handle<OwnedFd>> = (0..3)
        .map(|_| Ok(Handle(OwnedFd::from(tempfile()?))))
        .collect::<std::io::Result<_>>()?;
    let (body, _fds) = mp_core::handles::encode(&three)?;
    let typed = |count: &[u8], body: &[u8]| {
        let mut p = count.to_vec();
        p.extend_from_slice(body);
        let mut f = (p.len() as u32).to_be_bytes().to_vec();
        f.extend(p);
        f
    };
    let send = |a: &Connection, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]| {
        mp_core::fdpass::send_all(a.fd()?, &[bytes], fds).map_err(PipeError::Io)
    };
    type Three = Vec<Handle<OwnedFd>>;
    // Three claimed, one sent.
    send(&a, &typed(&[3], &body), &[w.as_fd()])?;
    let e = err(b.recv::<Three>());
    assert!(matches!(e, PipeError::Decode { .. }), "{e}");
    // 5000 claimed (LEB128), more than may travel, none sent.
    send(&a, &typed(&[0x88, 0x27], &body), &[])?;
    let e = err(b.recv::<Three>());
    assert!(matches!(e, PipeError::Decode { .. }), "{e}");
    // Three claimed, none sent.
    send(&a, &typed(&[3], &body), &[])?;
    let e = err(b.recv::<Three>());
    assert!(matches!(e, PipeError::Decode { .. }), "{e}");
    // None claimed, two sent.
    let (five, _) = mp_core::handles::encode(&5u8)?;
    send(&a, &typed(&[0], &five), &[w.as_fd(), w.as_fd()])?;
    let e = err(b.recv::<u8>());
    assert!(matches!(e, PipeError::Decode { .. }), "{e}");
    // The connection is intact, and an honest message gets its own handle.
    let mut file = tempfile()?;
    file.write_all(b"mine")?;
    a.send(&Handle(file))?;
    let Handle(mut f): Handle<File> = b.recv()?;
    f.seek(std::io::SeekFrom::Start(0))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    assert_eq!(text, "mine");
    drop(w);
    assert!(writers_gone(&r)?, "the receiver still holds a passed fd");
    Ok(())
}

#[test]
fn fds_over_tcp_are_refused_in_the_sender() -> R {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let c = std::net::TcpStream::connect(l.local_addr()?)?;
    let (s, _) = l.accept()?;
    let mut a = Connection::from_fd(c.into(), true, true)?;
    let mut b = Connection::from_fd(s.into(), true, true)?;
    let (_x, y) = pipe()?;
    assert!(matches!(err(a.send(&y)), PipeError::Encode { .. }));
    a.send(&"plain values are fine")?;
    assert_eq!(b.recv::<String>()?, "plain values are fine");
    let (p, _q) = rustix::pipe::pipe()?;
    assert!(Connection::from_fd(p, true, true).is_err(), "not a socket");
    let (s1, _s2) = std::os::unix::net::UnixStream::pair()?;
    assert!(Connection::from_fd(s1.into(), false, false).is_err());
    Ok(())
}

fn tempfile() -> std::io::Result<File> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "mp-pipe-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
