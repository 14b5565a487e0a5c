use crate::{handles, Error, Result};
use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, fstat, ftruncate, memfd_create, MemfdFlags, SealFlags,
};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

/// Anonymous shared memory: a sealed memfd mapped `MAP_SHARED`, zero-filled.
///
/// It travels as its fd (see [`crate::handles`]), so every process that receives it maps
/// the same pages, and nothing is left in `/dev/shm` whatever happens to the processes.
/// The size is sealed (`F_SEAL_GROW | F_SEAL_SHRINK`), so a receiver trusts the size it
/// reads from the fd and no peer can shrink the memory under a mapping (no `SIGBUS`).
///
/// The region hands out raw memory: what lives in it, and how it is synchronized, is the
/// business of the typed layers above (locks, values, queues).
#[derive(Debug)]
pub struct SharedRegion {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the region is plain shared memory with no thread affinity; the pointer is only
// dereferenced by the typed layers above, which synchronize with atomics and locks.
unsafe impl Send for SharedRegion {}
// SAFETY: as above: `&SharedRegion` only exposes the pointer and length.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Creates a zero-filled region of `len` bytes (`len > 0`), page-aligned.
    pub fn new(len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a shared region cannot be empty",
            )));
        }
        let fd = memfd_create("multiproc", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        ftruncate(&fd, len as u64)?;
        fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)?;
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self> {
        // SAFETY: a fresh shared mapping of `len` bytes of a memfd whose size is sealed to
        // at least `len`; no existing Rust object lives at the address the kernel picks.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| Error::Io(std::io::Error::other("mmap returned null")))?;
        Ok(SharedRegion { ptr, len, fd })
    }

    /// Maps a region received as an fd, checking its seals and taking its size from it.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        let seals = fcntl_get_seals(&fd)?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(Error::decode::<Self>("fd is not a sealed multiproc region"));
        }
        let len = usize::try_from(fstat(&fd)?.st_size).map_err(Error::decode::<Self>)?;
        if len == 0 {
            return Err(Error::decode::<Self>("region is empty"));
        }
        Self::map(fd, len)
    }

    /// Start of the mapping (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; the typed layers above hold
        // the region for as long as they hand out references into it.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl Serialize for SharedRegion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let idx = handles::push_fd(self.fd.as_fd()).map_err(serde::ser::Error::custom)?;
        s.serialize_newtype_struct("MpFd", &idx)
    }
}

impl<'de> Deserialize<'de> for SharedRegion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fd = handles::fd::deserialize(d)?;
        SharedRegion::from_fd(fd).map_err(handles::decode_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn travels_and_shares_pages() {
        let r = SharedRegion::new(100).unwrap();
        // SAFETY: in bounds of a live mapping, no other reference.
        unsafe { *r.as_ptr().add(5) = 42 };
        let (bytes, fds) = handles::encode(&r).unwrap();
        let r2: SharedRegion = handles::decode(&bytes, fds).unwrap();
        // SAFETY: in bounds, the write above is complete (same thread).
        assert_eq!(unsafe { *r2.as_ptr().add(5) }, 42);
        assert_eq!(r2.len(), 100);
        assert!(SharedRegion::new(0).is_err());
        let plain: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(SharedRegion::from_fd(plain).is_err());
    }
}
