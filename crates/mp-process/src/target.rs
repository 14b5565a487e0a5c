//! What a child runs: `fn` items and non-capturing closures, found again in the child
//! by their offset from an anchor in the same executable.
use crate::wire::Outcome;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::os::fd::OwnedFd;

/// A function a child process can run with arguments `Args` (a tuple).
///
/// Implemented for every `fn` item and non-capturing closure of up to six arguments
/// whose arguments and return value are `Serialize + DeserializeOwned`. Such a value
/// is zero-sized: it names code, not data, so the child can call the same code from its
/// own copy of the executable. A capturing closure is refused at compile time.
pub trait Target<Args>: Copy + Send + 'static {
    /// What the function returns.
    type Output: Serialize + DeserializeOwned + 'static;
    /// Calls the function.
    fn call(self, args: Args) -> Self::Output;
}

macro_rules! impl_target {
    ($($a:ident),*) => {
        impl<Func, Ret, $($a),*> Target<($($a,)*)> for Func
        where
            Func: Fn($($a),*) -> Ret + Copy + Send + 'static,
            Ret: Serialize + DeserializeOwned + 'static,
            $($a: Serialize + DeserializeOwned + 'static,)*
        {
            type Output = Ret;
            #[allow(non_snake_case)]
            fn call(self, ($($a,)*): ($($a,)*)) -> Ret {
                self($($a),*)
            }
        }
    };
}
impl_target!();
impl_target!(A1);
impl_target!(A1, A2);
impl_target!(A1, A2, A3);
impl_target!(A1, A2, A3, A4);
impl_target!(A1, A2, A3, A4, A5);
impl_target!(A1, A2, A3, A4, A5, A6);

/// The signature of every trampoline: arguments and their fds in, an outcome (and the
/// result's fds) out. `type_hash` is checked before anything else runs.
pub(crate) type Entry =
    fn(type_hash: u64, args: &[u8], fds: Vec<OwnedFd>) -> (Outcome, Vec<OwnedFd>);

/// The anchor every trampoline offset is measured from.
#[inline(never)]
pub(crate) fn anchor(_: u64, _: &[u8], _: Vec<OwnedFd>) -> (Outcome, Vec<OwnedFd>) {
    (Outcome::Bootstrap("anchor called".into()), Vec::new())
}

/// FNV-1a over the type names of the target, its arguments and its result: a second
/// check, after the executable's identity, that both sides mean the same function.
pub(crate) fn type_hash<F: Target<A>, A>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for name in [
        std::any::type_name::<F>(),
        std::any::type_name::<A>(),
        std::any::type_name::<F::Output>(),
    ] {
        for b in name.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Runs `F` on decoded arguments in the child. Panics are caught by the caller
/// (`child::run_entry`), which has the panic hook's message and location.
fn trampoline<F: Target<A>, A: DeserializeOwned>(
    hash: u64,
    args: &[u8],
    fds: Vec<OwnedFd>,
) -> (Outcome, Vec<OwnedFd>) {
    if hash != type_hash::<F, A>() {
        return (
            Outcome::Bootstrap("the target's type does not match the parent's".into()),
            Vec::new(),
        );
    }
    let args: A = match mp_core::handles::decode(args, fds) {
        Ok(a) => a,
        Err(e) => {
            return (
                Outcome::Bootstrap(format!("arguments could not be decoded: {e}")),
                Vec::new(),
            )
        }
    };
    let f = conjure::<F>();
    let out = f.call(args);
    match mp_core::handles::encode(&out) {
        Ok((bytes, fds)) => (Outcome::Ok(bytes), fds),
        Err(e) => (Outcome::ResultEncode(e.to_string()), Vec::new()),
    }
}

/// Makes a value of a zero-sized target type.
fn conjure<F: Copy>() -> F {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a process target must be a fn item or a non-capturing closure"
        )
    };
    // SAFETY: `F` is zero-sized (checked at compile time above), so there are no bytes to
    // initialize; it is inhabited, since the parent held a value of it to start us; and
    // the only zero-sized `Fn` types are fn items and closures whose captures are all
    // zero-sized, which carry no invariant beyond their type.
    unsafe { std::mem::zeroed::<F>() }
}

/// The offset of `F`'s trampoline from the anchor, and its type hash.
pub(crate) fn locate<F: Target<A>, A: DeserializeOwned>() -> (i64, u64) {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a process target must be a fn item or a non-capturing closure"
        )
    };
    let entry: Entry = trampoline::<F, A>;
    let offset = (entry as usize as i64).wrapping_sub(anchor as Entry as usize as i64);
    (offset, type_hash::<F, A>())
}

/// Finds a trampoline again from its offset.
///
/// # Safety
/// `offset` must come from [`locate`] in a process running the same executable image
/// (checked by the caller through the executable's identity).
pub(crate) unsafe fn resolve(offset: i64) -> Entry {
    let addr = (anchor as Entry as usize as i64).wrapping_add(offset) as usize;
    // SAFETY: by the contract above, `addr` is the address of a function of type `Entry`
    // in this very image, since the same offset from the same anchor named one in the
    // parent's identical image.
    unsafe { std::mem::transmute::<usize, Entry>(addr) }
}

/// Names a target so that another process running this same executable can call it:
/// what a pool sends its workers, the function once and then arguments many times.
///
/// It is plain data (`Serialize`): the offset of the target's trampoline, the identity
/// of the executable and a hash of the type names. [`call`](RemoteTarget::call) checks
/// the executable before it resolves anything, and the trampoline checks the hash, so a
/// `RemoteTarget` from another program is an error, never a jump into the unknown.
///
/// ```
/// use mp_process::RemoteTarget;
/// fn add(a: u32, b: u32) -> u32 { a + b }
/// let t = RemoteTarget::of::<_, (u32, u32)>(add).unwrap();
/// let (args, fds) = mp_core::handles::encode(&(2u32, 3u32)).unwrap();
/// let (out, out_fds) = t.call(&args, fds).unwrap();
/// assert_eq!(mp_core::handles::decode::<u32>(&out, out_fds).unwrap(), 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteTarget {
    exe: crate::wire::ExeId,
    offset: i64,
    hash: u64,
}

impl RemoteTarget {
    /// The remote name of `target`, called with arguments `A` (a tuple).
    pub fn of<F: Target<A>, A: DeserializeOwned>(target: F) -> Result<Self, crate::ProcessError> {
        let _ = target;
        let (offset, hash) = locate::<F, A>();
        let exe = crate::wire::ExeId::cached().map_err(crate::ProcessError::Start)?;
        Ok(RemoteTarget { exe, offset, hash })
    }

    /// Calls the target on encoded arguments (the bytes and fds of an `A`, from
    /// `mp_core::handles::encode`), returning the encoded result. A panic comes back as
    /// [`ProcessError::Panicked`](crate::ProcessError::Panicked) with its message and
    /// location; a target from another executable, or arguments that do not decode, as
    /// [`ProcessError::Bootstrap`](crate::ProcessError::Bootstrap).
    pub fn call(
        &self,
        args: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), crate::ProcessError> {
        match crate::wire::ExeId::cached() {
            Ok(id) if id == self.exe => {}
            _ => {
                return Err(crate::ProcessError::Bootstrap(
                    "the target names a function of another executable".into(),
                ))
            }
        }
        // SAFETY: the executable is the one the offset was measured in (checked above),
        // so it names a trampoline of this image; the trampoline checks the type hash.
        let entry = unsafe { resolve(self.offset) };
        match crate::child::run_entry(entry, self.hash, args, fds) {
            (Outcome::Ok(bytes), fds) => Ok((bytes, fds)),
            (Outcome::Panicked { message, location }, _) => {
                Err(crate::ProcessError::Panicked { message, location })
            }
            (Outcome::ResultEncode(m), _) => Err(crate::ProcessError::ResultEncode(m)),
            (Outcome::Bootstrap(m), _) => Err(crate::ProcessError::Bootstrap(m)),
        }
    }
}
