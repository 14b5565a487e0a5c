//! What a child runs: `fn` items and non-capturing closures, found again in the child
//! by their offset from an anchor in the same executable, under a tag that only this
//! process tree can make.
use crate::wire::{ExeId, Outcome};
use crate::ProcessError;
use hmac::{Hmac, KeyInit, Mac};
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

/// The base address of the loaded object (executable or shared library) that holds
/// `addr`, if the dynamic loader knows it.
fn image_base(addr: usize) -> Option<usize> {
    // SAFETY: dladdr only reads the loader's tables; `info` is a plain C struct that it
    // fills (or leaves alone when it returns 0, in which case we do not read it).
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(addr as *const libc::c_void, &mut info) == 0 {
            return None;
        }
        Some(info.dli_fbase as usize)
    }
}

/// Whether `addr` lies in the main executable (not in a shared library). Offsets are
/// measured within the main executable, whose image is the same in every process of
/// the tree; a library's load address differs from process to process.
fn in_main_executable(addr: usize) -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave this process.
    let entry = unsafe { libc::getauxval(libc::AT_ENTRY) } as usize;
    match (image_base(entry), image_base(addr)) {
        (Some(main), Some(here)) => main == here,
        // No loader information for the entry point: a static executable, which is
        // one image.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// The offset of `F`'s trampoline from the anchor, and its type hash. Fails when the
/// anchor (this library) or the trampoline is not in the main executable, as when
/// mp-process is linked as a shared library: offsets would then not hold in a child.
pub(crate) fn locate<F: Target<A>, A: DeserializeOwned>() -> Result<(i64, u64), ProcessError> {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a process target must be a fn item or a non-capturing closure"
        )
    };
    let entry: Entry = trampoline::<F, A>;
    let (at, base) = (entry as usize, anchor as Entry as usize);
    if !in_main_executable(base) || !in_main_executable(at) {
        return Err(ProcessError::Target(
            "targets must live in the main executable: mp-process (and the target) cannot be \
             used from a shared library (dylib or cdylib)"
                .into(),
        ));
    }
    Ok(((at as i64).wrapping_sub(base as i64), type_hash::<F, A>()))
}

/// Finds a trampoline again from its offset.
///
/// # Safety
/// `offset` must come from [`locate`] in a process of this tree running the same
/// executable image: the caller checks that through [`RemoteTarget::entry`] (the
/// executable's identity and the tree's tag) or by having made the offset itself.
unsafe fn resolve(offset: i64) -> Entry {
    let addr = (anchor as Entry as usize as i64).wrapping_add(offset) as usize;
    // SAFETY: by the contract above, `addr` is the address of a function of type `Entry`
    // in this very image, since the same offset from the same anchor named one in the
    // parent's identical image.
    unsafe { std::mem::transmute::<usize, Entry>(addr) }
}

type Tag = [u8; 32];

/// HMAC-SHA256 under the tree's key over everything that decides what is called.
fn tag(
    key: &[u8; 32],
    exe: &ExeId,
    offset: i64,
    hash: u64,
) -> Result<Hmac<sha2::Sha256>, ProcessError> {
    let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .map_err(|e| ProcessError::Target(format!("bad target key: {e}")))?;
    m.update(b"multiproc target v1\0");
    for part in [
        exe.dev,
        exe.ino,
        exe.size as u64,
        exe.mtime as u64,
        offset as u64,
        hash,
    ] {
        m.update(&part.to_le_bytes());
    }
    Ok(m)
}

thread_local! {
    /// The last target this thread verified: a pool worker calls the same one for task
    /// after task, and pays for the tag's check once.
    static VERIFIED: std::cell::Cell<Option<RemoteTarget>> = const { std::cell::Cell::new(None) };
}

/// Names a target so that another process of this same process tree, running this same
/// executable, can call it: what a pool sends its workers, the function once and then
/// arguments many times. Any process can hold one (it is `Serialize`), but only the
/// tree that made it can call it.
///
/// It is plain data: the offset of the target's trampoline, the identity of the
/// executable, a hash of the type names, and a tag (HMAC-SHA256 of all three under a
/// secret that the tree's first process draws and hands only to its children).
/// [`call`](RemoteTarget::call) checks the executable and the tag before it resolves
/// anything, and the trampoline checks the hash: a `RemoteTarget` that was altered,
/// forged, or made by another program or another run is
/// [`ProcessError::Target`](crate::ProcessError::Target), never a jump into the unknown.
///
/// Targets must be in the main executable: [`of`](RemoteTarget::of) refuses when this
/// library is linked as a shared library, where offsets would not hold in a child.
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
    exe: ExeId,
    offset: i64,
    hash: u64,
    tag: Tag,
}

impl RemoteTarget {
    /// The remote name of `target`, called with arguments `A` (a tuple).
    pub fn of<F: Target<A>, A: DeserializeOwned>(target: F) -> Result<Self, ProcessError> {
        let _ = target;
        let (offset, hash) = locate::<F, A>()?;
        let exe = ExeId::cached().map_err(ProcessError::Start)?;
        let key = crate::secret::key().map_err(ProcessError::Start)?;
        let tag = tag(key, &exe, offset, hash)?.finalize().into_bytes().into();
        Ok(RemoteTarget {
            exe,
            offset,
            hash,
            tag,
        })
    }

    /// The trampoline this target names, after checking that this process runs the
    /// executable it was made in and that the tag is this tree's.
    pub(crate) fn entry(&self) -> Result<Entry, ProcessError> {
        if VERIFIED.with(|v| v.get()) != Some(*self) {
            match ExeId::cached() {
                Ok(id) if id == self.exe => {}
                _ => {
                    return Err(ProcessError::Target(
                        "it names a function of another executable".into(),
                    ))
                }
            }
            let key = crate::secret::key().map_err(ProcessError::Start)?;
            tag(key, &self.exe, self.offset, self.hash)?
                .verify_slice(&self.tag)
                .map_err(|_| {
                    ProcessError::Target(
                        "its tag is not this process tree's (altered, forged, or made by \
                         another run of the program)"
                            .into(),
                    )
                })?;
            VERIFIED.with(|v| v.set(Some(*self)));
        }
        // SAFETY: the tag proves that `locate` in a process of this tree computed the
        // offset for this executable identity (only the tree's processes hold the key,
        // and no public API reveals it), and this process runs that same executable
        // (checked above), so the offset names a trampoline of this image; the
        // trampoline checks the type hash before it decodes anything.
        Ok(unsafe { resolve(self.offset) })
    }

    /// Calls the target on encoded arguments (the bytes and fds of an `A`, from
    /// `mp_core::handles::encode`), returning the encoded result. A panic comes back as
    /// [`ProcessError::Panicked`] with its message and location; a target that is not
    /// this tree's, or that names another executable, as [`ProcessError::Target`];
    /// arguments that do not decode as [`ProcessError::Bootstrap`].
    pub fn call(
        &self,
        args: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), ProcessError> {
        let entry = self.entry()?;
        match crate::child::run_entry(entry, self.hash, args, fds) {
            (Outcome::Ok(bytes), fds) => Ok((bytes, fds)),
            (Outcome::Panicked { message, location }, _) => {
                Err(ProcessError::Panicked { message, location })
            }
            (Outcome::ResultEncode(m), _) => Err(ProcessError::ResultEncode(m)),
            (Outcome::Bootstrap(m), _) => Err(ProcessError::Bootstrap(m)),
        }
    }

    /// The type hash the trampoline checks.
    pub(crate) fn type_hash(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locate_entry<F: Target<(u32,)>>(_: F) -> usize {
        trampoline::<F, (u32,)> as Entry as usize
    }

    #[test]
    fn offsets_are_taken_only_inside_the_main_executable() {
        assert!(in_main_executable(anchor as Entry as usize));
        fn g(x: u32) -> u32 {
            x
        }
        assert!(in_main_executable(locate_entry(g)));
        // A function of the C library lives in a shared object: refused.
        assert!(!in_main_executable(libc::getpid as *const () as usize));
    }

    #[test]
    fn a_tag_binds_every_field() {
        fn f(x: u32) -> u32 {
            x
        }
        let t = RemoteTarget::of::<_, (u32,)>(f).unwrap();
        assert!(t.entry().is_ok());
        for forged in [
            RemoteTarget {
                offset: t.offset + 1,
                ..t
            },
            RemoteTarget {
                hash: t.hash ^ 1,
                ..t
            },
            RemoteTarget { tag: [0; 32], ..t },
        ] {
            assert!(matches!(forged.entry(), Err(ProcessError::Target(_))));
        }
    }
}
