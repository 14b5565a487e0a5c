use std::sync::atomic::*;

/// A type that may live in shared memory, in a [`crate::Value`] or an [`crate::Array`].
///
/// # Safety
/// An implementor promises that the all-zero bit pattern is a valid value, that the
/// type has no drop glue, and that it holds no pointer or reference (meaningless in
/// another process): plain data, or an atomic. Implemented here for the integers,
/// floats, `bool`, `char`, fixed arrays and the atomics; for your own `#[repr(C)]`
/// structs use [`shared_struct!`](crate::shared_struct), which checks
/// `bytemuck::Pod` (every bit pattern valid) at compile time.
pub unsafe trait Element: Sized + Send + Sync + 'static {
    /// True for types that synchronize themselves (the atomics): a `Value` or `Array`
    /// of them makes no lock, and gives direct shared access.
    const LOCK_FREE: bool = false;
}

/// Types that synchronize themselves (the atomics, and arrays of them):
/// `Value<T>` derefs to `T` and `Array<T>` to `[T]`, with no lock.
///
/// # Safety
/// Every method of the type reachable through a shared reference must be free of data
/// races when other processes call it at the same time.
pub unsafe trait LockFree: Element {}

macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: a primitive: zero is valid, no drop glue, no pointers.
        unsafe impl Element for $t {}
    )* };
}
plain!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, bool, char);

macro_rules! atomic {
    ($($t:ty),*) => { $(
        // SAFETY: an atomic: zero is valid, no drop glue, no pointers.
        unsafe impl Element for $t {
            const LOCK_FREE: bool = true;
        }
        // SAFETY: every method of an atomic through `&self` is atomic, across processes
        // too (the memory is MAP_SHARED; these atomics are lock-free on Linux).
        unsafe impl LockFree for $t {}
    )* };
}
atomic!(
    AtomicBool,
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize,
    AtomicI8,
    AtomicI16,
    AtomicI32,
    AtomicI64,
    AtomicIsize
);

// SAFETY: an array of elements is as plain as its element.
unsafe impl<T: Element, const N: usize> Element for [T; N] {
    const LOCK_FREE: bool = T::LOCK_FREE;
}
// SAFETY: an array of self-synchronizing elements is accessed element by element.
unsafe impl<T: LockFree, const N: usize> LockFree for [T; N] {}

/// Declares `#[repr(C)]` structs as [`Element`]s, checking at compile time that each
/// is `bytemuck::Pod` (every bit pattern valid, no padding, no pointers).
///
/// ```
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Point {
///     x: f64,
///     y: f64,
/// }
/// mp_shm::shared_struct!(Point);
/// let v = mp_shm::Value::new(Point { x: 1.0, y: 2.0 }).unwrap();
/// assert_eq!(v.get().unwrap().y, 2.0);
/// ```
#[macro_export]
macro_rules! shared_struct {
    ($($t:ty),+ $(,)?) => { $(
        const _: () = {
            fn is_pod<T: $crate::bytemuck::Pod + Send + Sync + 'static>() {}
            fn check() {
                is_pod::<$t>();
            }
        };
        // SAFETY: checked just above to be `bytemuck::Pod`: every bit pattern (zero
        // included) is valid, no padding, no drop glue, no pointers.
        unsafe impl $crate::Element for $t {}
    )+ };
}
