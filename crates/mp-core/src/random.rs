//! Random bytes from the kernel, all or an error: never a buffer left partly zero.
use std::io;

/// Fills `buf` from `getrandom(2)`, retrying on short reads and interruptions. Fails
/// (instead of leaving zeros) when the kernel has no randomness to give.
///
/// ```
/// let mut key = [0u8; 32];
/// mp_core::random::fill(&mut key).unwrap();
/// assert_ne!(key, [0u8; 32]);
/// ```
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(0) => return Err(io::Error::other("getrandom returned no bytes")),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `N` random bytes (see [`fill`]).
pub fn bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    fill(&mut b)?;
    Ok(b)
}
