//! The framing of Python's `multiprocessing.connection`.
//!
//! A message is a 4-byte **signed** big-endian length followed by the payload. A payload
//! longer than `i32::MAX` bytes is announced by `-1` followed by an 8-byte unsigned
//! big-endian length. Decoders treat input as hostile: a length above the receiver's
//! maximum is refused before anything is allocated, a negative length other than `-1`
//! is an error, and nothing here panics on any input.
//!
//! ```
//! use mp_core::frame::{read_frame, write_frame};
//! let mut wire = Vec::new();
//! write_frame(&mut wire, b"abc").unwrap();
//! assert_eq!(wire, [0, 0, 0, 3, b'a', b'b', b'c']);
//! let got = read_frame(&mut &wire[..], 1024).unwrap();
//! assert_eq!(got, b"abc");
//! ```
use crate::{Error, Result};
use std::io::{self, Read, Write};

/// The largest header: 4 bytes of `-1` then 8 bytes of length.
pub const MAX_HEADER: usize = 12;

/// Up to this many bytes, a frame is written with its header in one `write` (as Python
/// does, to avoid Nagle delays and a separate zero-length write).
pub const SMALL_FRAME: usize = 16384;

/// Allocation made up front for a frame whose length was announced; larger frames grow as
/// their bytes arrive, so a hostile header cannot make us allocate memory it never fills.
const EAGER_ALLOC: u64 = 16 << 20;

/// Writes the header for a payload of `len` bytes into `buf`, returning the used part.
pub fn encode_header(len: usize, buf: &mut [u8; MAX_HEADER]) -> &[u8] {
    if len <= i32::MAX as usize {
        buf[..4].copy_from_slice(&(len as i32).to_be_bytes());
        &buf[..4]
    } else {
        buf[..4].copy_from_slice(&(-1i32).to_be_bytes());
        buf[4..12].copy_from_slice(&(len as u64).to_be_bytes());
        &buf[..12]
    }
}

/// What the first bytes of a frame say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The header is complete: its size in bytes and the payload length.
    Complete {
        /// Bytes taken by the header (4 or 12).
        header_len: usize,
        /// Payload length.
        payload_len: u64,
    },
    /// More header bytes are needed (at least this many in all).
    NeedMore(usize),
}

/// Parses a header from the start of `buf` (sans-io), checking it against `max`.
pub fn parse_header(buf: &[u8], max: u64) -> Result<Header> {
    let Some(first) = buf.get(..4) else {
        return Ok(Header::NeedMore(4));
    };
    let n = i32::from_be_bytes([first[0], first[1], first[2], first[3]]);
    let (header_len, payload_len) = if n >= 0 {
        (4, n as u64)
    } else if n == -1 {
        let Some(long) = buf.get(4..12) else {
            return Ok(Header::NeedMore(12));
        };
        let mut b = [0u8; 8];
        b.copy_from_slice(long);
        (12, u64::from_be_bytes(b))
    } else {
        return Err(Error::BadFrame(format!("negative length {n}")));
    };
    if payload_len > max {
        return Err(Error::FrameTooLarge {
            len: payload_len,
            max,
        });
    }
    Ok(Header::Complete {
        header_len,
        payload_len,
    })
}

/// Writes one frame (header and payload) to `w`.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let mut hb = [0u8; MAX_HEADER];
    let header = encode_header(payload.len(), &mut hb);
    if payload.len() <= SMALL_FRAME {
        let mut small = [0u8; MAX_HEADER + SMALL_FRAME];
        small[..header.len()].copy_from_slice(header);
        small[header.len()..header.len() + payload.len()].copy_from_slice(payload);
        w.write_all(&small[..header.len() + payload.len()])
    } else {
        w.write_all(header)?;
        w.write_all(payload)
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if EOF came before the first byte.
fn read_exact_or_eof<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => return Err(Error::TruncatedMessage),
            Ok(k) => done += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Reads the header of the next frame: the payload length, or [`Error::Eof`] if the
/// stream ended cleanly before it.
pub fn read_header<R: Read + ?Sized>(r: &mut R, max: u64) -> Result<u64> {
    let mut hb = [0u8; MAX_HEADER];
    if !read_exact_or_eof(r, &mut hb[..4])? {
        return Err(Error::Eof);
    }
    let mut have = 4;
    loop {
        match parse_header(&hb[..have], max)? {
            Header::Complete { payload_len, .. } => return Ok(payload_len),
            Header::NeedMore(n) => {
                if !read_exact_or_eof(r, &mut hb[have..n])? {
                    return Err(Error::TruncatedMessage);
                }
                have = n;
            }
        }
    }
}

/// Reads `len` payload bytes into a new vector, growing it as bytes arrive.
pub fn read_payload<R: Read + ?Sized>(r: &mut R, len: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len.min(EAGER_ALLOC) as usize);
    let got = r.take(len).read_to_end(&mut out)?;
    if (got as u64) < len {
        return Err(Error::TruncatedMessage);
    }
    Ok(out)
}

/// Reads one frame of at most `max` payload bytes.
pub fn read_frame<R: Read + ?Sized>(r: &mut R, max: u64) -> Result<Vec<u8>> {
    let len = read_header(r, max)?;
    read_payload(r, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_examples() {
        let mut w = Vec::new();
        write_frame(&mut w, b"").unwrap();
        write_frame(&mut w, b"abc").unwrap();
        assert_eq!(w, [0, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']);
        let mut r = &w[..];
        assert_eq!(read_frame(&mut r, 10).unwrap(), b"");
        assert_eq!(read_frame(&mut r, 10).unwrap(), b"abc");
        assert!(matches!(read_frame(&mut r, 10), Err(Error::Eof)));
    }

    #[test]
    fn long_header_and_limits() {
        let mut hb = [0u8; MAX_HEADER];
        assert_eq!(
            encode_header(1 << 31, &mut hb),
            &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0]
        );
        assert_eq!(
            parse_header(&hb, u64::MAX).unwrap(),
            Header::Complete {
                header_len: 12,
                payload_len: 1 << 31
            }
        );
        assert!(matches!(
            parse_header(&hb, 100),
            Err(Error::FrameTooLarge { .. })
        ));
        assert_eq!(parse_header(&hb[..6], 100).unwrap(), Header::NeedMore(12));
        assert!(matches!(
            parse_header(&[0xff, 0xff, 0xff, 0xfe], 100),
            Err(Error::BadFrame(_))
        ));
        let mut r: &[u8] = &[0, 0, 0, 5, 1, 2];
        assert!(matches!(
            read_frame(&mut r, 10),
            Err(Error::TruncatedMessage)
        ));
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r, 10),
            Err(Error::TruncatedMessage)
        ));
    }

    /// Random input never panics and never allocates past the maximum (a bounded
    /// property test: a simple xorshift generator, so it needs no extra crate).
    #[test]
    fn random_bytes_never_panic() {
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let len = (s % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (s >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            let mut r = &bytes[..];
            while let Ok(p) = read_frame(&mut r, 64) {
                assert!(p.len() <= 64);
            }
        }
    }
}
