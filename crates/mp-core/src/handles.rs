//! OS handles that travel beside serialized bytes.
//!
//! [`encode`] serializes a value with postcard while collecting every fd the value holds
//! into a side table; in the bytes each fd is only an index. The carrier moves the table
//! (SCM_RIGHTS over a socket, or inheritance at spawn) and [`decode`] gives the fds back
//! to the value's `Deserialize` through the same indices. Types that hold an fd call
//! [`push_fd`] / [`take_fd`] from their serde impls, or use [`Handle`] or the [`fd`]
//! module with `#[serde(with = "mp_core::handles::fd")]`.
//!
//! Serializing a handle anywhere else (to JSON, say) is an error, never a dangling
//! number: a handle is only meaningful to a carrier that moves the table.
//!
//! ```
//! use mp_core::handles::{decode, encode, Handle};
//! use std::os::fd::AsFd;
//! let file = Handle(std::fs::File::open("/dev/null").unwrap());
//! let (bytes, fds) = encode(&file).unwrap();
//! assert_eq!(fds.len(), 1); // a dup of the file's fd, ready to travel
//! let back: Handle<std::fs::File> = decode(&bytes, fds).unwrap();
//! assert!(back.0.as_fd().try_clone_to_owned().is_ok());
//! ```
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    /// postcard keeps no text for custom errors: the reason a handle failed waits here.
    static HANDLE_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn fail(msg: String) -> String {
    HANDLE_ERROR.with(|h| *h.borrow_mut() = Some(msg.clone()));
    msg
}

fn reason(e: postcard::Error) -> String {
    HANDLE_ERROR
        .with(|h| h.borrow_mut().take())
        .unwrap_or_else(|| e.to_string())
}

/// A thread-local table installed for one encode or decode, and put back as it was when
/// that ends, also when a `Serialize` or `Deserialize` impl panics (so a caught panic
/// leaves no fds behind in the thread, and an outer encode or decode finds its own table).
struct Swap<T: 'static> {
    key: &'static std::thread::LocalKey<RefCell<Option<T>>>,
    saved: Option<Option<T>>,
}

impl<T: 'static> Swap<T> {
    fn install(key: &'static std::thread::LocalKey<RefCell<Option<T>>>, table: Option<T>) -> Self {
        let saved = key.with(|k| std::mem::replace(&mut *k.borrow_mut(), table));
        Swap {
            key,
            saved: Some(saved),
        }
    }

    /// Puts the previous table back and returns the one installed.
    fn restore(mut self) -> Option<T> {
        let saved = self.saved.take().flatten();
        self.key
            .with(|k| std::mem::replace(&mut *k.borrow_mut(), saved))
    }
}

impl<T: 'static> Drop for Swap<T> {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            // Unwinding: drop what the failed call left (closing its fds).
            let _ = self
                .key
                .try_with(|k| std::mem::replace(&mut *k.borrow_mut(), saved));
        }
    }
}

const NO_CARRIER: &str =
    "an OS handle can only be serialized by a multiproc carrier (process arguments, Connection, Queue, Pool)";

/// Serializes `value` with postcard, collecting the fds it holds (each dup'ed, so the
/// value stays usable and the table owns what it sends).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    encode_into(value, Vec::new())
}

/// As [`encode`], appending to `buf` (whose existing bytes are kept).
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buf: Vec<u8>,
) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    HANDLE_ERROR.with(|h| h.borrow_mut().take());
    let table = Swap::install(&OUTGOING, Some(Vec::new()));
    let res = postcard::to_extend(value, buf);
    let fds = table.restore().unwrap_or_default();
    match res {
        Ok(bytes) => Ok((bytes, fds)),
        Err(e) => {
            let mut why = reason(e);
            if why == postcard::Error::SerdeSerCustom.to_string() {
                // postcard keeps no text for a custom error: find it again.
                why = crate::probe::custom_message(value).unwrap_or(why);
            }
            Err(Error::encode::<T>(why))
        }
    }
}

/// Deserializes a `T` from `bytes`, handing it the received `fds` by index. Fds the
/// value does not claim are closed. Trailing bytes are an error (a sign of a type
/// mismatch between sender and receiver).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
    HANDLE_ERROR.with(|h| h.borrow_mut().take());
    let table = Swap::install(&INCOMING, Some(fds.into_iter().map(Some).collect()));
    let res = postcard::take_from_bytes::<T>(bytes);
    drop(table.restore()); // fds the value did not claim are closed here
    match res {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(Error::decode::<T>(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(Error::decode::<T>(reason(e))),
    }
}

/// Called by a `Serialize` impl: dups `fd` into the table being built and returns its
/// index. Fails outside [`encode`].
pub fn push_fd(fd: BorrowedFd<'_>) -> Result<u32, String> {
    let dup = rustix::io::fcntl_dupfd_cloexec(fd, 3)
        .map_err(|e| fail(format!("dup of fd failed: {e}")))?;
    OUTGOING.with(|o| match o.borrow_mut().as_mut() {
        Some(v) => {
            v.push(dup);
            u32::try_from(v.len() - 1).map_err(|_| fail("too many handles".to_string()))
        }
        None => Err(fail(NO_CARRIER.to_string())),
    })
}

/// Called by a `Deserialize` impl: takes fd number `index` of the table being decoded.
pub fn take_fd(index: u32) -> Result<OwnedFd, String> {
    INCOMING.with(|i| match i.borrow_mut().as_mut() {
        Some(v) => v
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| fail(format!("handle {index} is missing or was already taken"))),
        None => Err(fail(NO_CARRIER.to_string())),
    })
}

/// Builds a serde error for a `Deserialize` impl, keeping its text for [`decode`]'s
/// error (postcard itself keeps no text for custom errors).
pub fn decode_error<E: serde::de::Error>(msg: impl std::fmt::Display) -> E {
    E::custom(fail(msg.to_string()))
}

/// serde helpers for an `OwnedFd` field: `#[serde(with = "mp_core::handles::fd")]`.
pub mod fd {
    use super::*;

    /// Serializes the fd as its index in the outgoing table.
    pub fn serialize<S: Serializer>(fd: &OwnedFd, s: S) -> Result<S::Ok, S::Error> {
        let idx = push_fd(fd.as_fd()).map_err(serde::ser::Error::custom)?;
        s.serialize_newtype_struct("MpFd", &idx)
    }

    /// Takes the fd back from the incoming table.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "MpFd")]
        struct Idx(u32);
        let Idx(i) = Idx::deserialize(d)?;
        take_fd(i).map_err(serde::de::Error::custom)
    }
}

/// Any fd-backed value (a `File`, a `UnixStream`, a `TcpStream`, an `OwnedFd` ...) made
/// able to travel: `Process::new(worker, (Handle(file),))`.
#[derive(Debug)]
pub struct Handle<T>(pub T);

impl<T> Handle<T> {
    /// The wrapped value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: AsFd> Serialize for Handle<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let idx = push_fd(self.0.as_fd()).map_err(serde::ser::Error::custom)?;
        s.serialize_newtype_struct("MpFd", &idx)
    }
}

impl<'de, T: From<OwnedFd>> Deserialize<'de> for Handle<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fd::deserialize(d).map(|fd| Handle(T::from(fd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_carrier_is_an_error() {
        let h = Handle(std::fs::File::open("/dev/null").unwrap());
        assert!(postcard::to_allocvec(&h).is_err());
        assert!(take_fd(0).unwrap_err().contains("carrier"));
    }

    #[test]
    fn nested_values_and_missing_fds() {
        let v = (
            1u8,
            Handle(std::fs::File::open("/dev/null").unwrap()),
            vec![Handle(OwnedFd::from(
                std::fs::File::open("/dev/null").unwrap(),
            ))],
        );
        let (bytes, fds) = encode(&v).unwrap();
        assert_eq!(fds.len(), 2);
        let back: (u8, Handle<std::fs::File>, Vec<Handle<OwnedFd>>) = decode(&bytes, fds).unwrap();
        assert_eq!(back.0, 1);
        let e = decode::<(u8, Handle<std::fs::File>)>(&bytes, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn a_panicking_deserialize_leaves_no_fds_behind() {
        struct Boom;
        impl<'de> Deserialize<'de> for Boom {
            fn deserialize<D: Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
                panic!("decoder panics")
            }
        }
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        let (bytes, _) = encode(&0u8).unwrap();
        let got = std::panic::catch_unwind(|| decode::<Boom>(&bytes, vec![w]));
        assert!(got.is_err());
        // The write end went with the failed decode: the read end sees end of file (an fd
        // kept in the thread's table would make this read EAGAIN).
        let mut b = [0u8; 1];
        assert_eq!(rustix::io::read(&r, &mut b).unwrap(), 0);
        INCOMING.with(|i| assert!(i.borrow().is_none()));
        // The thread decodes normally afterwards.
        assert_eq!(decode::<u8>(&bytes, Vec::new()).unwrap(), 0);
    }

    #[test]
    fn wrong_type_names_the_expected_type() {
        let (bytes, fds) = encode(&"a string that is long".to_string()).unwrap();
        let e = decode::<u8>(&bytes, fds).unwrap_err();
        assert!(e.to_string().contains("u8"), "{e}");
    }
}
