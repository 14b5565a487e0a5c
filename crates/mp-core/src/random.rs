//! Random bytes from the kernel, all or an error: never a buffer left partly zero.
use std::io;

/// Fills `buf` from `getrandom(2)`, retrying on short reads and interruptions, or from
/// `/dev/urandom` where `getrandom` is missing or filtered. Fails (instead of leaving
/// zeros) when neither gives randomness.
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
            Ok(n) if n > 0 => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Ok(_) | Err(_) => {
                use std::io::Read;
                return std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(buf))
                    .map_err(|e| io::Error::new(e.kind(), format!("no random bytes: {e}")));
            }
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
