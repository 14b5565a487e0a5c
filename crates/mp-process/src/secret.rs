//! The per-tree secret that authenticates [`RemoteTarget`](crate::RemoteTarget)s.
//!
//! The first process of a program draws 32 random bytes; every child receives them in
//! its bootstrap (never through a public API: unlike the authkey, no safe call reveals
//! them). A target name is only called if its tag was made with this key, so bytes from
//! outside the tree, or altered on the way, cannot choose the address that is called.
use std::io;
use std::sync::OnceLock;

static KEY: OnceLock<[u8; 32]> = OnceLock::new();

/// This tree's key, drawn on first use in the tree's first process.
pub(crate) fn key() -> io::Result<&'static [u8; 32]> {
    if let Some(k) = KEY.get() {
        return Ok(k);
    }
    let fresh = mp_core::random::bytes::<32>()?;
    Ok(KEY.get_or_init(|| fresh))
}

/// In a child: takes on the key its parent sent. A forked child already holds the same
/// key; a different one means the child's state is not its parent's, and is refused.
pub(crate) fn adopt(k: [u8; 32]) -> Result<(), &'static str> {
    if *KEY.get_or_init(|| k) == k {
        Ok(())
    } else {
        Err("the parent's target key differs from the one this process already holds")
    }
}
