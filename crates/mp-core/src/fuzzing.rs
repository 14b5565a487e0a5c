//! Tools for fuzzing and property-testing the decoders of every crate: a seeded input
//! generator, an allocation meter, and a marker that tells whether a process kept an fd.
//!
//! Not part of the API (hidden from the docs); the `fuzz/` targets at the repository
//! root and the crates' bounded property tests share it, so both check the same
//! invariants: no panic, no allocation beyond a bound derived from the frame limit and
//! the input, no fd kept.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

// ----- inputs -----

/// A small seeded generator (splitmix64): reproducible inputs, no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `len` random bytes, biased toward the values decoders treat specially.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    fn byte(&mut self) -> u8 {
        const SPECIAL: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, b'{', b'#'];
        let r = self.next_u64();
        if r & 3 == 0 {
            SPECIAL[(r >> 8) as usize % SPECIAL.len()]
        } else {
            (r >> 16) as u8
        }
    }

    /// Changes `input` a few times: bit flips, special bytes, insertions, deletions,
    /// truncation, a repeated slice, or a length field overwritten.
    pub fn mutate(&mut self, input: &mut Vec<u8>) {
        for _ in 0..1 + self.below(4) {
            let len = input.len();
            match self.below(8) {
                0 if len > 0 => {
                    let i = self.below(len);
                    input[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    input[i] = self.byte();
                }
                2 => {
                    let i = self.below(len + 1);
                    let n = 1 + self.below(8);
                    let extra = self.bytes(n);
                    input.splice(i..i, extra);
                }
                3 if len > 0 => {
                    let i = self.below(len);
                    let n = 1 + self.below((len - i).min(8));
                    input.drain(i..i + n);
                }
                4 if len > 0 => input.truncate(self.below(len)),
                5 if len > 0 && len < 4096 => {
                    let i = self.below(len);
                    let n = 1 + self.below((len - i).min(32));
                    let copy = input[i..i + n].to_vec();
                    let at = self.below(len + 1);
                    input.splice(at..at, copy);
                }
                6 if len >= 4 => {
                    // A length or count field made huge, negative or zero.
                    const WORDS: [[u8; 4]; 5] = [
                        [0xff; 4],
                        [0x7f, 0xff, 0xff, 0xff],
                        [0x80, 0, 0, 0],
                        [0, 0, 0, 0],
                        [0xff, 0xff, 0xff, 0x0f],
                    ];
                    let i = self.below(len - 3);
                    input[i..i + 4].copy_from_slice(&WORDS[self.below(WORDS.len())]);
                }
                _ => {
                    let n = self.below(16);
                    let more = self.bytes(n);
                    input.extend(more);
                }
            }
        }
    }
}

/// `runs` inputs for a property test: the `seeds` themselves (valid encodings, and
/// inputs that once found a bug), then random bytes (up to `max_len`) and mutations
/// of the seeds in turn, so that both the first checks of a decoder and its deep
/// paths are reached.
pub fn inputs(seed: u64, seeds: &[Vec<u8>], runs: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let verbatim = seeds.iter().take(runs).cloned();
    verbatim
        .chain((seeds.len().min(runs)..runs).map(|i| {
            if i % 2 == 0 || seeds.is_empty() {
                let len = rng.below(max_len + 1);
                rng.bytes(len)
            } else {
                let mut v = seeds[rng.below(seeds.len())].clone();
                rng.mutate(&mut v);
                v
            }
        }))
        .collect()
}

/// Reads a fuzz input as a sequence of choices.
#[derive(Debug)]
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// The next byte (0 once the input is used up).
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// The next `n` bytes, or fewer at the end.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ----- allocations -----

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static METERING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// A global allocator that, on threads inside [`measure`], counts the bytes held and
/// the largest single request. Install it in a test or fuzz binary with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
#[derive(Debug)]
pub struct CountingAlloc;

fn note(delta: isize, request: usize) {
    // `try_with`: a thread being torn down has no counters left; nothing to count.
    let _ = METERING.try_with(|m| {
        if m.get() {
            let _ = LIVE.try_with(|l| {
                let now = l.get() + delta;
                l.set(now);
                let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
            });
            let _ = LARGEST.try_with(|b| b.set(b.get().max(request)));
        }
    });
}

// SAFETY: every call is passed on unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counting only touches thread-local cells that need no
// allocation and no destructor.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize), 0);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize, new_size);
        }
        p
    }
}

/// What [`measure`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocated {
    /// Most bytes held at once by allocations made inside the call (from this thread).
    pub peak: usize,
    /// The largest single allocation request.
    pub largest: usize,
}

/// Runs `f`, measuring its allocations on this thread; `None` for the measure when
/// [`CountingAlloc`] is not the global allocator.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Option<Allocated>) {
    let was = METERING.with(|m| m.replace(true));
    let (live0, peak0, largest0) = (
        LIVE.with(Cell::get),
        PEAK.with(|p| p.replace(LIVE.with(Cell::get))),
        LARGEST.with(|b| b.replace(0)),
    );
    let r = f();
    let peak = PEAK.with(Cell::get) - live0;
    let largest = LARGEST.with(Cell::get);
    PEAK.with(|p| p.set(p.get().max(peak0)));
    LARGEST.with(|b| b.set(b.get().max(largest0)));
    METERING.with(|m| m.set(was));
    let seen = INSTALLED.load(Ordering::Relaxed).then_some(Allocated {
        peak: peak.max(0) as usize,
        largest,
    });
    (r, seen)
}

// ----- fds -----

static MARKERS: AtomicU64 = AtomicU64::new(0);

/// A memfd with a name of its own: the fds handed to a decoder are copies of it, and
/// [`Marker::installed`] counts the copies this process holds, whichever thread made
/// them (so it works while other tests run beside it).
#[derive(Debug)]
pub struct Marker {
    fd: OwnedFd,
    link: String,
}

impl Marker {
    /// A new marker.
    pub fn new() -> std::io::Result<Marker> {
        let name = format!(
            "mp-fuzz-{}-{}",
            std::process::id(),
            MARKERS.fetch_add(1, Ordering::Relaxed)
        );
        let fd = rustix::fs::memfd_create(name.as_str(), rustix::fs::MemfdFlags::CLOEXEC)?;
        Ok(Marker {
            fd,
            link: format!("/memfd:{name} (deleted)"),
        })
    }

    /// `n` copies (close-on-exec) to hand to a decoder or attach to bytes.
    pub fn copies(&self, n: usize) -> std::io::Result<Vec<OwnedFd>> {
        (0..n)
            .map(|_| Ok(rustix::io::fcntl_dupfd_cloexec(self.fd.as_fd(), 3)?))
            .collect()
    }

    /// The marker's own fd.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// How many fds of this process refer to the marker, besides its own.
    pub fn installed(&self) -> usize {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l.as_os_str().as_encoded_bytes() == self.link.as_bytes())
            .count()
            .saturating_sub(1)
    }
}

/// How many fds this process has open (meaningful when one thread runs).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Runs `check` on every input, asserting that it never allocates more than
/// `limit(input)` bytes at once (when [`CountingAlloc`] is installed). A panic names
/// the input (in hex) so that it can become a unit test. Returns the inputs run.
pub fn run_all(
    name: &str,
    inputs: &[Vec<u8>],
    limit: impl Fn(&[u8]) -> usize,
    mut check: impl FnMut(&[u8]),
) -> usize {
    let hex = |input: &[u8]| -> String { input.iter().map(|b| format!("{b:02x}")).collect() };
    for input in inputs {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure(|| check(input))));
        match r {
            Ok(((), Some(a))) => assert!(
                a.peak <= limit(input),
                "{name}: input {} made {} bytes live at once (largest request {}), over the bound {}",
                hex(input),
                a.peak,
                a.largest,
                limit(input)
            ),
            Ok(((), None)) => {}
            Err(p) => {
                let why = p
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                panic!("{name}: input {} failed: {why}", hex(input));
            }
        }
    }
    inputs.len()
}

// ----- a peer's bytes on a socket -----

/// Sends the rest of `input` on a new Unix stream socket as a peer would: chunks of
/// `[fd count, length, bytes...]`, each chunk's bytes carrying that many copies of
/// `marker` (at most 7). Sending stops where the socket's buffer is full (nobody
/// reads it yet). The peer's end is closed after the last chunk unless `keep_peer`,
/// in which case only its write side is shut down and it is returned too. Returns the
/// receiving end.
pub fn feed(
    input: &mut Input<'_>,
    marker: &Marker,
    keep_peer: bool,
) -> std::io::Result<(OwnedFd, Option<OwnedFd>)> {
    use rustix::net::{sendmsg, socketpair, AddressFamily, SocketFlags, SocketType};
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let (peer, ours) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    while !input.is_empty() {
        let nfds = usize::from(input.byte() & 7);
        let len = usize::from(input.byte());
        let bytes = input.take(len);
        if bytes.is_empty() {
            continue;
        }
        let fds = marker.copies(nfds)?;
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(7))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(std::io::Error::other("ancillary buffer too small"));
        }
        let iov = [std::io::IoSlice::new(bytes)];
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        match sendmsg(&peer, &iov, &mut control, flags) {
            Ok(_) => {}
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if keep_peer {
        rustix::net::shutdown(&peer, rustix::net::Shutdown::Write)?;
        Ok((ours, Some(peer)))
    } else {
        Ok((ours, None))
    }
}

// ----- mp-core's own decoders -----

/// The frame limits a target picks from.
const MAXES: [u64; 6] = [0, 4, 64, 4096, 1 << 20, u64::MAX];

/// How much [`frame`] may hold at once for `data`: what a frame announces, but no
/// more than the up-front allocation for a long frame, plus what the bytes actually
/// sent can fill (a vector grown as they arrive may double).
pub fn frame_bound(data: &[u8]) -> usize {
    let max = MAXES[usize::from(data.first().copied().unwrap_or(0)) % MAXES.len()];
    let eager = max.min(16 << 20) as usize;
    eager + 4 * data.len() + (1 << 16)
}

/// The frame codec against any bytes: `[max choice, chunking, mode, bytes...]`.
/// Mode 0 parses headers and reads frames from a reader that returns a few bytes at a
/// time; mode 1 reads frames with their fds from a socket (what a child reads its
/// bootstrap with). Payloads never exceed the limit; a socket frame's fds are the
/// caller's alone.
pub fn frame(data: &[u8]) {
    let mut input = Input(data);
    let max = MAXES[usize::from(input.byte()) % MAXES.len()];
    let chunk = 1 + usize::from(input.byte() % 16);
    if input.byte() & 1 == 0 {
        let bytes = input.rest();
        if let Ok(crate::frame::Header::Complete {
            header_len,
            payload_len,
        }) = crate::frame::parse_header(bytes, max)
        {
            assert!(header_len == 4 || header_len == 12);
            assert!(payload_len <= max);
        }
        let mut r = Trickle { bytes, chunk };
        loop {
            let before = r.bytes.len();
            match crate::frame::read_frame(&mut r, max) {
                Ok(p) => {
                    assert!(p.len() as u64 <= max);
                    assert!(
                        before - r.bytes.len() >= 4 + p.len(),
                        "a frame read no header"
                    );
                }
                Err(_) => break,
            }
        }
    } else {
        let Ok(marker) = Marker::new() else { return };
        let Ok((sock, _)) = feed(&mut input, &marker, false) else {
            return;
        };
        while let Ok((p, fds)) = crate::fdpass::recv_frame(sock.as_fd(), max) {
            assert!(p.len() as u64 <= max);
            drop(fds);
        }
        drop(sock);
        assert_eq!(marker.installed(), 0, "an fd was kept");
    }
}

/// A reader that returns at most `chunk` bytes per read.
struct Trickle<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// Seeds for [`frame`]: valid frames, short and long headers, under each mode.
pub fn frame_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for mode in [0u8, 1] {
        let mut wire = Vec::new();
        for p in [&b""[..], b"abc", &[7u8; 70]] {
            let _ = crate::frame::write_frame(&mut wire, p);
        }
        wire.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 2, 1, 2]);
        let mut v = vec![3, 5, mode];
        if mode == 0 {
            v.extend_from_slice(&wire);
        } else {
            for c in wire.chunks(40) {
                v.extend_from_slice(&[1, c.len() as u8]);
                v.extend_from_slice(c);
            }
        }
        out.push(v);
    }
    out
}

/// A value type with handles in several places, for [`handles`].
#[derive(serde::Serialize, serde::Deserialize)]
enum Shape {
    Plain(u32),
    Named {
        name: String,
        fd: crate::Handle<OwnedFd>,
    },
    Nested(Vec<Vec<u64>>),
    Many(Vec<crate::Handle<OwnedFd>>),
}

/// How much [`handles`] may hold at once: serde preallocates at most 1 MiB per
/// sequence being decoded, and a decoded value may be some dozens of times larger than
/// its encoding (an empty `String` is one byte and 24 in memory).
pub fn handles_bound(data: &[u8]) -> usize {
    (4 << 20) + 64 * data.len()
}

/// `handles::decode` of representative types: `[type, fd count, bytes...]`, the fds
/// being copies of a marker. Whatever the bytes, it returns or fails, and once the
/// value is dropped no fd it was given is left.
pub fn handles(data: &[u8]) {
    use crate::handles::decode;
    use crate::Handle;
    let mut input = Input(data);
    let ty = input.byte();
    let nfds = usize::from(input.byte() % 5);
    let bytes = input.rest();
    let Ok(marker) = Marker::new() else { return };
    let Ok(fds) = marker.copies(nfds) else { return };
    type Fd = Handle<OwnedFd>;
    match ty % 10 {
        0 => drop(decode::<u64>(bytes, fds)),
        1 => drop(decode::<String>(bytes, fds)),
        2 => drop(decode::<Vec<u8>>(bytes, fds)),
        3 => drop(decode::<(u8, Handle<std::fs::File>)>(bytes, fds)),
        4 => drop(decode::<Vec<Fd>>(bytes, fds)),
        5 => drop(decode::<Option<(String, Fd)>>(bytes, fds)),
        6 => drop(decode::<Shape>(bytes, fds)),
        7 => drop(decode::<std::collections::BTreeMap<String, Vec<u32>>>(
            bytes, fds,
        )),
        8 => drop(decode::<(Fd, Fd, Fd)>(bytes, fds)),
        _ => drop(decode::<(crate::SharedRegion, u8)>(bytes, fds)),
    }
    assert_eq!(marker.installed(), 0, "an fd was kept");
}

/// Seeds for [`handles`]: a valid encoding of each type, with its fds.
pub fn handles_seeds() -> Vec<Vec<u8>> {
    use crate::handles::encode;
    use crate::Handle;
    let Ok(m) = Marker::new() else {
        return Vec::new();
    };
    let fd = || m.copies(1).ok().and_then(|mut v| v.pop());
    let mut out = Vec::new();
    let mut push = |ty: u8, r: crate::Result<(Vec<u8>, Vec<OwnedFd>)>| {
        if let Ok((b, f)) = r {
            let mut v = vec![ty, f.len() as u8];
            v.extend(b);
            out.push(v);
        }
    };
    push(0, encode(&123_456u64));
    push(1, encode("a string"));
    push(2, encode(&vec![1u8, 2, 3]));
    if let Some(f) = fd() {
        push(3, encode(&(9u8, Handle(f))));
    }
    if let (Some(a), Some(b)) = (fd(), fd()) {
        push(4, encode(&vec![Handle(a), Handle(b)]));
    }
    if let Some(f) = fd() {
        push(5, encode(&Some(("x".to_string(), Handle(f)))));
    }
    if let Some(f) = fd() {
        push(
            6,
            encode(&Shape::Named {
                name: "n".into(),
                fd: Handle(f),
            }),
        );
    }
    push(6, encode(&Shape::Nested(vec![vec![1, 2], vec![]])));
    push(6, encode(&Shape::Plain(7)));
    push(6, encode(&Shape::Many(Vec::new())));
    let map: std::collections::BTreeMap<String, Vec<u32>> =
        [("k".to_string(), vec![1, 2])].into_iter().collect();
    push(7, encode(&map));
    if let (Some(a), Some(b), Some(c)) = (fd(), fd(), fd()) {
        push(8, encode(&(Handle(a), Handle(b), Handle(c))));
    }
    if let Ok(r) = crate::SharedRegion::new(4096) {
        push(9, encode(&(r, 1u8)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static A: CountingAlloc = CountingAlloc;

    #[test]
    fn the_meter_sees_what_a_call_holds() {
        let (v, a) = measure(|| {
            let big = vec![1u8; 100_000];
            drop(big);
            vec![0u8; 10]
        });
        let a = a.expect("installed");
        assert!(a.peak >= 100_000 && a.largest >= 100_000, "{a:?}");
        assert_eq!(v.len(), 10);
        let ((), b) = measure(|| {});
        assert_eq!(b.expect("installed").peak, 0);
    }

    #[test]
    fn markers_count_copies() {
        let m = Marker::new().expect("memfd");
        assert_eq!(m.installed(), 0);
        let c = m.copies(3).expect("dup");
        assert_eq!(m.installed(), 3);
        drop(c);
        assert_eq!(m.installed(), 0);
    }

    /// Bounded property pass of the frame codec (the fuzz target `frame`).
    #[test]
    fn frame_codec_property() {
        let seeds = frame_seeds();
        let n = run_all(
            "frame",
            &inputs(0xf4a3e, &seeds, 3000, 96),
            frame_bound,
            frame,
        );
        assert_eq!(n, 3000);
    }

    /// Bounded property pass of `handles::decode` (the fuzz target `handles`).
    #[test]
    fn handles_decode_property() {
        let seeds = handles_seeds();
        assert!(seeds.len() >= 12, "{} seeds", seeds.len());
        run_all(
            "handles",
            &inputs(0x4a4d1e5, &seeds, 3000, 64),
            handles_bound,
            handles,
        );
    }

    #[test]
    fn inputs_are_reproducible() {
        let seeds = vec![b"abc".to_vec()];
        assert_eq!(inputs(7, &seeds, 50, 64), inputs(7, &seeds, 50, 64));
        assert_ne!(inputs(7, &seeds, 50, 64), inputs(8, &seeds, 50, 64));
    }
}
