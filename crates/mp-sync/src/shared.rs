//! Typed state in a [`SharedRegion`]: the memory every primitive lives in.
use crate::SyncError;
use mp_core::SharedRegion;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// State that can live in shared memory.
///
/// # Safety
/// The type is `#[repr(C)]`, starts with an `AtomicU32` magic field, and is made only
/// of atomics (or arrays of them), so that all-zero bytes, and any bytes another process
/// writes, are a valid value, and it has no `Drop`.
pub(crate) unsafe trait SharedState: Sized + Send + Sync {
    /// Written last at creation, checked when a region is received, so that a region
    /// made for one primitive is never taken for another.
    const MAGIC: u32;
    /// The magic field.
    fn magic(&self) -> &AtomicU32;
}

/// A `T` in a shared memory region; clones share the mapping.
pub(crate) struct Shared<T: SharedState> {
    region: Arc<SharedRegion>,
    /// The memfd's device and inode: the same in every process that maps it.
    id: [u64; 2],
    _t: PhantomData<T>,
}

impl<T: SharedState> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            region: Arc::clone(&self.region),
            id: self.id,
            _t: PhantomData,
        }
    }
}

/// The device and inode of a region's fd.
fn identity(fd: &OwnedFd) -> mp_core::Result<[u64; 2]> {
    let st = rustix::fs::fstat(fd)?;
    Ok([st.st_dev, st.st_ino])
}

/// A sealed memfd region of `len` bytes (as `SharedRegion::new` makes them), and its
/// identity.
fn new_region(len: usize) -> mp_core::Result<(SharedRegion, [u64; 2])> {
    use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
    let fd = memfd_create("multiproc", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    ftruncate(&fd, len as u64)?;
    fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)?;
    let id = identity(&fd)?;
    Ok((SharedRegion::from_fd(fd)?, id))
}

impl<T: SharedState> Shared<T> {
    /// Maps a new zeroed `T`, lets `init` set its fields, then publishes the magic.
    pub(crate) fn new(init: impl FnOnce(&T)) -> Result<Self, SyncError> {
        let (region, id) = new_region(std::mem::size_of::<T>())?;
        let s = Self::check_layout(region, id).map_err(SyncError::Core)?;
        init(s.get());
        s.get().magic().store(T::MAGIC, Ordering::Release);
        Ok(s)
    }

    fn check_layout(region: SharedRegion, id: [u64; 2]) -> mp_core::Result<Self> {
        if region.len() < std::mem::size_of::<T>()
            || region.as_ptr().align_offset(std::mem::align_of::<T>()) != 0
        {
            return Err(mp_core::Error::decode::<T>(
                "shared region too small or misaligned",
            ));
        }
        Ok(Shared {
            region: Arc::new(region),
            id,
            _t: PhantomData,
        })
    }

    /// The identity of the memory (device and inode of its memfd), the same for every
    /// handle in every process.
    pub(crate) fn id(&self) -> [u64; 2] {
        self.id
    }

    /// The state.
    #[inline]
    pub(crate) fn get(&self) -> &T {
        // SAFETY: `check_layout` verified size and alignment; the mapping lives as long as
        // `self.region`, which the returned borrow cannot outlive; `SharedState`
        // guarantees any bytes are a valid `T` and that it is only accessed through
        // atomics, so other processes writing concurrently is no data race.
        unsafe { &*self.region.as_ptr().cast::<T>() }
    }
}

impl<T: SharedState> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.region.serialize(s)
    }
}

impl<'de, T: SharedState> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fd = mp_core::handles::fd::deserialize(d)?;
        let id = identity(&fd).map_err(mp_core::handles::decode_error)?;
        let region = SharedRegion::from_fd(fd).map_err(mp_core::handles::decode_error)?;
        let s = Self::check_layout(region, id).map_err(mp_core::handles::decode_error)?;
        if s.get().magic().load(Ordering::Acquire) != T::MAGIC {
            return Err(mp_core::handles::decode_error(format!(
                "shared region does not hold a {}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("primitive")
            )));
        }
        Ok(s)
    }
}
