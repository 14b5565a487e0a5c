//! Named segments (Python's `multiprocessing.shared_memory.SharedMemory`), built on the
//! `shared_memory` crate, with a tracker that removes what is left when the process tree
//! is gone.
use crate::tracker;
use crate::ShmError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shared_memory::{Shmem, ShmemConf, ShmemError};
use std::sync::atomic::AtomicU8;

/// A named block of shared memory that any process can attach to by name (Python
/// interoperates: the segment `foo` is `/dev/shm/foo`, `SharedMemory(name="foo")`).
///
/// It travels by name: serializing it (as a process argument, say) sends the name and
/// the receiver attaches. `close` (or drop) unmaps it in this process; `unlink` removes
/// the name, after which the memory lives until the last mapping goes.
///
/// **No leaks, one tracker per process tree** (as in Python). Each segment is registered
/// with the tree's tracker, a small helper process that every process of the tree shares:
/// a segment a child creates and leaves outlives the child (the parent can attach to it),
/// and whatever is still registered when the last process of the tree is gone (the root
/// exited, or was killed with SIGKILL) is unlinked then, with a tracing warning naming the
/// segment. [`unlink`](SharedMemory::unlink), in any process of the tree, unregisters the
/// segment; a segment meant to outlive the tree is handed over with
/// [`untrack`](SharedMemory::untrack).
///
/// The tracker is started by exec of `/proc/self/exe` (never by forking a process that
/// may have threads), in a session of its own, with SIGINT, SIGTERM, SIGHUP and SIGQUIT
/// blocked from its first instruction: it ends only when its tree is gone. A binary that
/// links mp-shm recognises the tracker's start before `main`, so no call is needed from
/// `main`. A tracker that dies is replaced at the next create, unlink or untrack of a
/// process that finds it gone, with a tracing warning; the new one is told that process's
/// segments still registered, and serves the children it starts from then on.
///
/// **Access.** Another process may write the bytes at any time, so the safe view is
/// [`as_atomic_bytes`](SharedMemory::as_atomic_bytes) (with [`read_at`](Self::read_at)
/// and [`write_at`](Self::write_at) on top); plain slices are `unsafe`, for when a lock
/// or the program's phases rule out concurrent writes.
///
/// ```
/// use mp_shm::SharedMemory;
/// let shm = SharedMemory::create(None, 4096).unwrap();
/// shm.write_at(0, b"hello").unwrap();
/// let other = SharedMemory::attach(shm.name()).unwrap();
/// let mut buf = [0u8; 5];
/// other.read_at(0, &mut buf).unwrap();
/// assert_eq!(&buf, b"hello");
/// assert_eq!(other.size(), 4096);
/// shm.unlink().unwrap();
/// assert!(SharedMemory::attach(shm.name()).is_err());
/// ```
pub struct SharedMemory {
    name: String,
    shmem: Shmem,
}

// SAFETY: `Shmem` is a mapping (a pointer and a length) plus an fd; nothing in it is tied
// to a thread. Concurrent access to the bytes goes through atomics or `unsafe` methods.
unsafe impl Send for SharedMemory {}
// SAFETY: as above: `&SharedMemory` gives out only atomic views or `unsafe` slices.
unsafe impl Sync for SharedMemory {}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name)
            .field("size", &self.size())
            .finish()
    }
}

fn check_name(name: &str) -> Result<(), ShmError> {
    if name.is_empty() || name.len() > 250 || name.contains('/') || name.contains('\0') {
        return Err(ShmError::Invalid(format!(
            "bad segment name {name:?}: 1 to 250 bytes, no '/' or NUL"
        )));
    }
    Ok(())
}

/// How many random names `create(None, ..)` tries before it gives up (each collides
/// with an existing segment with probability about n / 2^64).
const RANDOM_TRIES: u32 = 64;

/// A random `mp_…` name; an error if the kernel gives no random bytes.
fn random_name() -> Result<String, ShmError> {
    let mut b = [0u8; 8];
    let mut filled = 0;
    while filled < b.len() {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(0) => return Err(no_randomness(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(no_randomness(e.into())),
        }
    }
    Ok(format!("mp_{:016x}", u64::from_le_bytes(b)))
}

fn no_randomness(e: std::io::Error) -> ShmError {
    ShmError::Core(mp_core::Error::Io(std::io::Error::new(
        e.kind(),
        format!("no random bytes for a segment name: {e}"),
    )))
}

impl SharedMemory {
    /// Creates a segment of `size` bytes (zero-filled), named `name` or a random
    /// `mp_…` name. An existing name, size 0 or a bad name is an error.
    pub fn create(name: Option<&str>, size: usize) -> Result<Self, ShmError> {
        if size == 0 {
            return Err(ShmError::Invalid(
                "a shared memory segment cannot have size 0".into(),
            ));
        }
        for _ in 0..RANDOM_TRIES {
            let n = match name {
                Some(n) => n.to_string(),
                None => random_name()?,
            };
            check_name(&n)?;
            // The tracker runs before the name exists, so a failure to start it leaves
            // nothing behind, and the window in which a creator killed right after
            // creating would leak is one message.
            tracker::ensure()?;
            match ShmemConf::new().os_id(format!("/{n}")).size(size).create() {
                Ok(mut shmem) => {
                    // We unlink explicitly (Python's semantics), never on drop.
                    shmem.set_owner(false);
                    if let Err(e) = tracker::register(&n) {
                        // Not tracked: nothing may be left behind on this error path.
                        let _ = rustix::shm::unlink(format!("/{n}").as_str());
                        return Err(e);
                    }
                    return Ok(SharedMemory { name: n, shmem });
                }
                Err(ShmemError::MappingIdExists) if name.is_none() => continue,
                Err(ShmemError::MappingIdExists) => return Err(ShmError::Exists(n)),
                Err(e) => return Err(ShmError::Invalid(e.to_string())),
            }
        }
        Err(ShmError::Invalid(format!(
            "{RANDOM_TRIES} random segment names were all taken"
        )))
    }

    /// Attaches to the existing segment `name`; its real size is reported by
    /// [`size`](Self::size).
    pub fn attach(name: &str) -> Result<Self, ShmError> {
        check_name(name)?;
        match ShmemConf::new().os_id(format!("/{name}")).open() {
            Ok(mut shmem) => {
                shmem.set_owner(false);
                Ok(SharedMemory {
                    name: name.to_string(),
                    shmem,
                })
            }
            Err(ShmemError::MapOpenFailed(_)) if !exists(name) => {
                Err(ShmError::NotFound(name.to_string()))
            }
            Err(e) => Err(ShmError::Invalid(e.to_string())),
        }
    }

    /// The segment's name (without the leading '/').
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.shmem.len()
    }

    /// The bytes, as atomics: safe whatever other processes do.
    pub fn as_atomic_bytes(&self) -> &[AtomicU8] {
        // SAFETY: the mapping is `size()` bytes, lives as long as `self`, and AtomicU8 has
        // the size and alignment of u8; atomics make concurrent access race-free.
        unsafe { std::slice::from_raw_parts(self.shmem.as_ptr().cast::<AtomicU8>(), self.size()) }
    }

    /// Copies bytes out, from `offset`.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), ShmError> {
        let src = self.range(offset, buf.len())?;
        for (d, s) in buf.iter_mut().zip(src) {
            *d = s.load(std::sync::atomic::Ordering::Relaxed);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        Ok(())
    }

    /// Copies bytes in, at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), ShmError> {
        let dst = self.range(offset, data.len())?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        for (d, s) in dst.iter().zip(data) {
            d.store(*s, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn range(&self, offset: usize, len: usize) -> Result<&[AtomicU8], ShmError> {
        let end = offset.checked_add(len).filter(|e| *e <= self.size());
        end.map(|e| &self.as_atomic_bytes()[offset..e])
            .ok_or(ShmError::OutOfRange {
                index: offset.saturating_add(len),
                len: self.size(),
            })
    }

    /// The bytes as a slice, zero-copy.
    ///
    /// # Safety
    /// No thread or process may write the segment while the slice lives.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: `size()` mapped bytes; the caller rules out concurrent writes.
        unsafe { std::slice::from_raw_parts(self.shmem.as_ptr(), self.size()) }
    }

    /// The bytes as a mutable slice, zero-copy.
    ///
    /// # Safety
    /// No other thread or process may touch the segment while the slice lives, and no
    /// other slice of it may exist in this process.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: `size()` mapped bytes; the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.shmem.as_ptr(), self.size()) }
    }

    /// Removes the name (Python's `unlink()`) and unregisters it from the tree's tracker,
    /// whichever process of the tree created it; mappings stay valid until closed. An
    /// already removed name is [`ShmError::NotFound`].
    pub fn unlink(&self) -> Result<(), ShmError> {
        tracker::unregister(&self.name);
        match rustix::shm::unlink(format!("/{}", self.name).as_str()) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::NOENT) => Err(ShmError::NotFound(self.name.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Lets the segment outlive its process tree: the tracker forgets it, and whoever
    /// attaches later must unlink it.
    pub fn untrack(&self) {
        tracker::unregister(&self.name);
    }

    /// Unmaps the segment in this process (Python's `close()`; dropping does the same).
    pub fn close(self) {}
}

/// Whether the segment `name` exists (in `/dev/shm`).
pub(crate) fn exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.name.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        SharedMemory::attach(&name).map_err(mp_core::handles::decode_error)
    }
}
