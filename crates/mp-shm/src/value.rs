use crate::cell::Cells;
use crate::error::{owner_died, LockResult};
use crate::{Element, LockFree, ShmError};
use mp_sync::{Lock, LockGuard};
use serde::{Deserialize, Deserializer, Serialize};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// One `T` in shared memory, guarded by a process-shared [`Lock`] (Python's
/// `multiprocessing.Value`).
///
/// Plain data is read and written under its lock: [`get`](Value::get),
/// [`set`](Value::set), [`update`](Value::update), or [`lock`](Value::lock) for a guard
/// that derefs to `&mut T`. Atomics ([`LockFree`] types) get no lock at all: a
/// `Value<AtomicU64>` derefs to the `AtomicU64`.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// let counter = mp_shm::Value::new(0i32).unwrap();
/// *counter.lock().unwrap() += 5;
/// counter.update(|v| *v *= 2).unwrap();
/// assert_eq!(counter.get().unwrap(), 10);
///
/// let hits = mp_shm::Value::new(AtomicU64::new(0)).unwrap();
/// hits.fetch_add(1, Ordering::Relaxed); // no lock
/// assert!(hits.get_lock().is_none());
/// ```
#[derive(Serialize)]
#[serde(bound(serialize = ""))]
pub struct Value<T: Element> {
    cells: Cells<T>,
    lock: Option<Lock>,
}

impl<T: Element> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            cells: self.cells.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<T: Element> std::fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Value")
            .field("type", &std::any::type_name::<T>())
            .field("locked", &self.lock.is_some())
            .finish()
    }
}

impl<T: Element> Value<T> {
    /// A shared `init`, with a new lock (none for atomics).
    pub fn new(init: T) -> Result<Self, ShmError> {
        let lock = if T::LOCK_FREE {
            None
        } else {
            Some(Lock::new()?)
        };
        Self::make(init, lock)
    }

    /// A shared zero value (zero is valid for every [`Element`]).
    pub fn zeroed() -> Result<Self, ShmError> {
        let lock = if T::LOCK_FREE {
            None
        } else {
            Some(Lock::new()?)
        };
        Ok(Value {
            cells: Cells::zeroed(1, lock.as_ref())?,
            lock,
        })
    }

    /// A shared `init` guarded by a lock of yours (shared with other values, say).
    pub fn with_lock(init: T, lock: Lock) -> Result<Self, ShmError> {
        Self::make(init, Some(lock))
    }

    fn make(init: T, lock: Option<Lock>) -> Result<Self, ShmError> {
        let cells = Cells::<T>::zeroed(1, lock.as_ref())?;
        // SAFETY: fresh memory for one T that no other handle can reach yet.
        unsafe { cells.ptr().write(init) };
        Ok(Value { cells, lock })
    }

    /// The lock guarding this value (Python's `get_lock()`); `None` for atomics.
    pub fn get_lock(&self) -> Option<&Lock> {
        self.lock.as_ref()
    }

    fn the_lock(&self) -> &Lock {
        const {
            assert!(
                !T::LOCK_FREE,
                "atomics need no lock: use the Value directly (it derefs)"
            )
        };
        // Every non-atomic Value has a lock: made by the constructors, checked on receipt.
        self.lock
            .as_ref()
            .expect("a Value of plain data always carries its lock")
    }

    /// Takes the lock; the guard derefs to the value. `Err(OwnerDied)` holds the guard
    /// when the previous holder died holding the lock (the value may be half-written).
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        let ptr = self.cells.ptr();
        match self.the_lock().lock() {
            Ok(g) => Ok(ValueGuard {
                _guard: g,
                ptr,
                _t: PhantomData,
            }),
            Err(e) => Err(owner_died(ValueGuard {
                _guard: e.into_inner(),
                ptr,
                _t: PhantomData,
            })),
        }
    }

    /// Runs `f` on the value under its lock. A lock whose holder died is taken over.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, ShmError> {
        let mut g = self.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&mut g))
    }

    /// A copy of the value, read under its lock.
    pub fn get(&self) -> Result<T, ShmError>
    where
        T: Copy,
    {
        self.update(|v| *v)
    }

    /// Replaces the value, under its lock.
    pub fn set(&self, value: T) -> Result<(), ShmError>
    where
        T: Copy,
    {
        self.update(|v| *v = value)
    }
}

impl<T: LockFree> Deref for Value<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the cell holds a valid T for as long as `self` lives, and a LockFree
        // type is only ever touched through atomic operations.
        unsafe { &*self.cells.ptr() }
    }
}

impl<'de, T: Element> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (cells, lock) = crate::cell::receive_locked::<D, T, Self>(d, |len| len == 1)?;
        Ok(Value { cells, lock })
    }
}

/// The value, while its lock is held.
pub struct ValueGuard<'a, T> {
    _guard: LockGuard<'a>,
    ptr: *mut T,
    _t: PhantomData<&'a mut T>,
}

impl<T> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock, and only it can release it (a guard-held
        // Lock refuses every other release; `force_unlock` is `unsafe`). Every handle of
        // this memory reaches the value only through a guard of that same lock: the
        // memory's header names the lock, checked whenever a handle arrives from
        // another process. So no other reference to the value exists meanwhile.
        unsafe { &*self.ptr }
    }
}

impl<T> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and `&mut self` makes this the only reference through
        // this guard.
        unsafe { &mut *self.ptr }
    }
}

/// One `T` in shared memory with no lock (Python's `RawValue`).
///
/// Atomics deref safely. For plain data, `get` and `set` are `unsafe`: nothing stops
/// another process from writing at the same time, which would be a data race; use them
/// when a lock of your own, or the program's phases, rule that out.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "", deserialize = "T: Element"))]
pub struct RawValue<T: Element> {
    cells: Cells<T>,
}

impl<T: Element> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        RawValue {
            cells: self.cells.clone(),
        }
    }
}

impl<T: Element> RawValue<T> {
    /// A shared `init` with no lock.
    pub fn new(init: T) -> Result<Self, ShmError> {
        let cells = Cells::<T>::zeroed(1, None)?;
        // SAFETY: fresh memory for one T that no other handle can reach yet.
        unsafe { cells.ptr().write(init) };
        Ok(RawValue { cells })
    }

    /// A pointer to the shared value.
    pub fn as_ptr(&self) -> *mut T {
        self.cells.ptr()
    }

    /// Reads the value.
    ///
    /// # Safety
    /// No other thread or process may write it during the call.
    pub unsafe fn get(&self) -> T
    where
        T: Copy,
    {
        // SAFETY: the cell holds a valid T; the caller rules out concurrent writes.
        unsafe { self.cells.ptr().read() }
    }

    /// Writes the value.
    ///
    /// # Safety
    /// No other thread or process may read or write it during the call.
    pub unsafe fn set(&self, value: T)
    where
        T: Copy,
    {
        // SAFETY: the caller rules out concurrent access.
        unsafe { self.cells.ptr().write(value) }
    }
}

impl<T: LockFree> Deref for RawValue<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: as for Value: a LockFree type is only touched atomically.
        unsafe { &*self.cells.ptr() }
    }
}
