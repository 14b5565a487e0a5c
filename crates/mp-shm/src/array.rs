use crate::cell::Cells;
use crate::error::{owner_died, LockResult};
use crate::{Element, LockFree, ShmError};
use mp_sync::{Lock, LockGuard};
use serde::{Deserialize, Deserializer, Serialize};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};

/// A fixed-length array of `T` in shared memory, guarded by a process-shared [`Lock`]
/// (Python's `multiprocessing.Array`). The elements are never copied to be shared: every
/// process maps the same pages.
///
/// Element access is checked: an index out of range is [`ShmError::OutOfRange`], never
/// undefined behaviour. [`lock`](Array::lock) gives a guard that derefs to `&mut [T]`
/// for work on slices without copying. Arrays of atomics have no lock and deref to
/// `[T]`.
///
/// ```
/// let a = mp_shm::Array::from_slice(&[1.0f64, 2.0, 3.0]).unwrap();
/// a.set(1, 20.0).unwrap();
/// assert_eq!(a.get(1).unwrap(), 20.0);
/// assert!(a.get(3).is_err());
/// let sum: f64 = a.lock().unwrap().iter().sum();
/// assert_eq!(sum, 24.0);
/// assert_eq!(a.read(0..2).unwrap(), vec![1.0, 20.0]);
/// ```
#[derive(Serialize)]
#[serde(bound(serialize = ""))]
pub struct Array<T: Element> {
    cells: Cells<T>,
    lock: Option<Lock>,
}

impl<T: Element> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            cells: self.cells.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<T: Element> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len())
            .finish()
    }
}

fn check_range(r: &Range<usize>, len: usize) -> Result<(), ShmError> {
    if r.start > r.end || r.end > len {
        return Err(ShmError::OutOfRange {
            index: if r.start > len {
                r.start
            } else {
                r.end.max(r.start)
            },
            len,
        });
    }
    Ok(())
}

impl<T: Element> Array<T> {
    /// `len` zeroed elements, with a new lock (none for atomics).
    pub fn new(len: usize) -> Result<Self, ShmError> {
        let lock = if T::LOCK_FREE {
            None
        } else {
            Some(Lock::new()?)
        };
        Ok(Array {
            cells: Cells::zeroed(len, lock.as_ref())?,
            lock,
        })
    }

    /// `len` zeroed elements guarded by a lock of yours.
    pub fn with_lock(len: usize, lock: Lock) -> Result<Self, ShmError> {
        Ok(Array {
            cells: Cells::zeroed(len, Some(&lock))?,
            lock: Some(lock),
        })
    }

    /// A shared copy of `items`, with a new lock.
    pub fn from_slice(items: &[T]) -> Result<Self, ShmError>
    where
        T: Copy,
    {
        let a = Self::new(items.len())?;
        // SAFETY: fresh memory for exactly items.len() elements that no other handle can
        // reach yet; the source is a valid slice that cannot overlap it.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), a.cells.ptr(), items.len()) };
        Ok(a)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lock guarding this array (Python's `get_lock()`); `None` for atomics.
    pub fn get_lock(&self) -> Option<&Lock> {
        self.lock.as_ref()
    }

    /// Takes the lock; the guard derefs to the whole slice. `Err(OwnerDied)` holds the
    /// guard when the previous holder died holding the lock.
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        const {
            assert!(
                !T::LOCK_FREE,
                "atomics need no lock: use the Array directly (it derefs)"
            )
        };
        // Every non-atomic Array has a lock: made by the constructors, checked on receipt.
        let lock = self
            .lock
            .as_ref()
            .expect("an Array of plain data always carries its lock");
        let (ptr, len) = (self.cells.ptr(), self.len());
        match lock.lock() {
            Ok(g) => Ok(ArrayGuard {
                _guard: g,
                ptr,
                len,
                _t: PhantomData,
            }),
            Err(e) => Err(owner_died(ArrayGuard {
                _guard: e.into_inner(),
                ptr,
                len,
                _t: PhantomData,
            })),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> R {
        let mut g = self.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Element `index`, read under the lock.
    pub fn get(&self, index: usize) -> Result<T, ShmError>
    where
        T: Copy,
    {
        let len = self.len();
        self.with(|s| s.get(index).copied())
            .ok_or(ShmError::OutOfRange { index, len })
    }

    /// Sets element `index`, under the lock.
    pub fn set(&self, index: usize, value: T) -> Result<(), ShmError>
    where
        T: Copy,
    {
        let len = self.len();
        self.with(|s| s.get_mut(index).map(|slot| *slot = value))
            .ok_or(ShmError::OutOfRange { index, len })
    }

    /// A copy of the elements in `range`, read under the lock.
    pub fn read(&self, range: Range<usize>) -> Result<Vec<T>, ShmError>
    where
        T: Copy,
    {
        check_range(&range, self.len())?;
        Ok(self.with(|s| s[range].to_vec()))
    }

    /// Writes `items` starting at `offset`, under the lock.
    pub fn write(&self, offset: usize, items: &[T]) -> Result<(), ShmError>
    where
        T: Copy,
    {
        let end = offset
            .checked_add(items.len())
            .ok_or(ShmError::OutOfRange {
                index: offset,
                len: self.len(),
            })?;
        check_range(&(offset..end), self.len())?;
        self.with(|s| s[offset..end].copy_from_slice(items));
        Ok(())
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T>
    where
        T: Copy,
    {
        self.with(|s| s.to_vec())
    }
}

impl<T: LockFree> Deref for Array<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` valid elements live as long as `self`; LockFree elements are only
        // touched through atomic operations.
        unsafe { std::slice::from_raw_parts(self.cells.ptr(), self.len()) }
    }
}

impl<'de, T: Element> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (cells, lock) = crate::cell::receive_locked::<D, T, Self>(d, |_| true)?;
        Ok(Array { cells, lock })
    }
}

/// The array's elements, while its lock is held.
pub struct ArrayGuard<'a, T> {
    _guard: LockGuard<'a>,
    ptr: *mut T,
    len: usize,
    _t: PhantomData<&'a mut [T]>,
}

impl<T> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: this guard holds the lock, and only it can release it (a guard-held
        // Lock refuses every other release; `force_unlock` is `unsafe`). Every handle of
        // this memory reaches the elements only through a guard of that same lock: the
        // memory's header names the lock, checked whenever a handle arrives from
        // another process. So no other reference to the elements exists meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` makes this the only reference through
        // this guard.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// A fixed-length array in shared memory with no lock (Python's `RawArray`).
///
/// Arrays of atomics deref safely. For plain data the slices are `unsafe`: the caller
/// rules out writes by other processes while it reads (for example: the parent fills
/// the array, then children only read their parts).
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "", deserialize = "T: Element"))]
pub struct RawArray<T: Element> {
    cells: Cells<T>,
}

impl<T: Element> Clone for RawArray<T> {
    fn clone(&self) -> Self {
        RawArray {
            cells: self.cells.clone(),
        }
    }
}

impl<T: Element> RawArray<T> {
    /// `len` zeroed elements, with no lock.
    pub fn new(len: usize) -> Result<Self, ShmError> {
        Ok(RawArray {
            cells: Cells::zeroed(len, None)?,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as a slice, zero-copy.
    ///
    /// # Safety
    /// No thread or process may write the elements while the slice lives.
    pub unsafe fn as_slice(&self) -> &[T] {
        // SAFETY: `len` valid elements; the caller rules out concurrent writes.
        unsafe { std::slice::from_raw_parts(self.cells.ptr(), self.len()) }
    }

    /// The elements as a mutable slice, zero-copy.
    ///
    /// # Safety
    /// No other thread or process may read or write the elements while the slice
    /// lives, and no other slice of them may exist in this process.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [T] {
        // SAFETY: `len` valid elements; the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.cells.ptr(), self.len()) }
    }
}

impl<T: LockFree> Deref for RawArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: as for Array: LockFree elements are only touched atomically.
        unsafe { std::slice::from_raw_parts(self.cells.ptr(), self.len()) }
    }
}
