//! The memory under a Value or an Array: a memfd region holding a small header (which
//! type, how many, which lock guards them) and then the elements, 64-byte aligned.
//!
//! The header names the lock (its memory's identity, see `Lock::memory_id`), so data
//! and lock that arrive from another process are checked to belong together: a wire
//! form whose lock fd was swapped for another lock's would give two locks over one
//! datum, hence two guards and two `&mut` to the same memory.
use crate::{Element, ShmError};
use mp_core::SharedRegion;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;
use std::sync::Arc;

const MAGIC: u64 = 0x6d70_7368_6d76_0002; // "mpshmv" v2
const DATA: usize = 64;
const _: () = assert!(std::mem::size_of::<Header>() <= DATA);

#[repr(C)]
struct Header {
    magic: u64,
    type_hash: u64,
    elem_size: u64,
    len: u64,
    /// `Lock::memory_id` of the lock that guards the elements; zeros for none.
    lock: [u64; 2],
}

/// The identity a header records for `lock`.
fn lock_id(lock: Option<&mp_sync::Lock>) -> [u64; 2] {
    lock.map_or([0, 0], mp_sync::Lock::memory_id)
}

fn type_hash<T>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::any::type_name::<T>().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `len` elements of `T` in shared memory. Clones share the mapping.
pub(crate) struct Cells<T> {
    region: Arc<SharedRegion>,
    len: usize,
    /// The header's lock identity (the header is never written after creation).
    lock: [u64; 2],
    _t: PhantomData<T>,
}

impl<T> Clone for Cells<T> {
    fn clone(&self) -> Self {
        Cells {
            region: self.region.clone(),
            len: self.len,
            lock: self.lock,
            _t: PhantomData,
        }
    }
}

impl<T: Element> Cells<T> {
    /// Zero-filled cells (zero is a valid `T`, by `Element`'s contract), guarded by
    /// `lock` (none: raw memory, or atomics).
    pub(crate) fn zeroed(len: usize, lock: Option<&mp_sync::Lock>) -> Result<Self, ShmError> {
        const {
            assert!(
                std::mem::align_of::<T>() <= DATA,
                "element alignment above 64 bytes"
            )
        };
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(DATA))
            .ok_or_else(|| ShmError::Invalid(format!("{len} elements do not fit in memory")))?;
        let region = SharedRegion::new(bytes)?;
        let header = Header {
            magic: MAGIC,
            type_hash: type_hash::<T>(),
            elem_size: std::mem::size_of::<T>() as u64,
            len: len as u64,
            lock: lock_id(lock),
        };
        let lock = header.lock;
        // SAFETY: the region is at least DATA (64) bytes, page-aligned, and fresh: no
        // one else can see it yet.
        unsafe { region.as_ptr().cast::<Header>().write(header) };
        Ok(Cells {
            region: Arc::new(region),
            len,
            lock,
            _t: PhantomData,
        })
    }

    fn check(region: SharedRegion) -> Result<Self, ShmError> {
        let mismatch = || ShmError::TypeMismatch {
            expected: std::any::type_name::<T>(),
        };
        if region.len() < DATA {
            return Err(mismatch());
        }
        // SAFETY: the region is at least 64 bytes and page-aligned; the header is only
        // written before the region is first shared, so reading it races with nothing.
        let h = unsafe { region.as_ptr().cast::<Header>().read() };
        let len = usize::try_from(h.len).map_err(|_| mismatch())?;
        let fits = len
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(DATA))
            .is_some_and(|b| b <= region.len());
        if h.magic != MAGIC
            || h.type_hash != type_hash::<T>()
            || h.elem_size != std::mem::size_of::<T>() as u64
            || !fits
        {
            return Err(mismatch());
        }
        Ok(Cells {
            region: Arc::new(region),
            len,
            lock: h.lock,
            _t: PhantomData,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first element. Valid for `len` elements while `self` lives.
    pub(crate) fn ptr(&self) -> *mut T {
        // SAFETY: DATA is inside the region (checked at creation and on receipt).
        unsafe { self.region.as_ptr().add(DATA).cast::<T>() }
    }
}

impl<T> Serialize for Cells<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.region.serialize(s)
    }
}

impl<'de, T: Element> Deserialize<'de> for Cells<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let region = SharedRegion::deserialize(d)?;
        Cells::check(region).map_err(mp_core::handles::decode_error)
    }
}

/// Receives the memory and the lock of a `Value` or an `Array` (`W`, for the error):
/// plain data must arrive with the very lock its header names (atomics need none), and
/// `len_ok` checks the element count.
pub(crate) fn receive_locked<'de, D, T, W>(
    d: D,
    len_ok: impl Fn(usize) -> bool,
) -> Result<(Cells<T>, Option<mp_sync::Lock>), D::Error>
where
    D: Deserializer<'de>,
    T: Element,
{
    #[derive(Deserialize)]
    #[serde(bound = "T: Element")]
    struct Wire<T: Element> {
        cells: Cells<T>,
        lock: Option<mp_sync::Lock>,
    }
    let w = Wire::<T>::deserialize(d)?;
    if !len_ok(w.cells.len())
        || (w.lock.is_none() && !T::LOCK_FREE)
        || w.cells.lock != lock_id(w.lock.as_ref())
    {
        return Err(mp_core::handles::decode_error(ShmError::TypeMismatch {
            expected: std::any::type_name::<W>(),
        }));
    }
    Ok((w.cells, w.lock))
}
