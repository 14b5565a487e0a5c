//! Library handles that a whole process tree shares: a crate offers one (mp-shm offers
//! its tracker's socket), every child started from then on receives a copy of its own
//! with its bootstrap, and the crate takes it there by name instead of starting a helper
//! of its own.
//!
//! This module knows neither the offering crates nor the carrier. A crate registers an
//! [`Offer`] (a name, and a function that returns a fresh fd for one child); the carrier
//! (mp-process) calls [`gather`] for each child it starts and sends what it got beside the
//! bootstrap bytes, under every start method, and the child hands them to [`receive`]
//! before its target runs; the crate then calls [`take`].
//!
//! ```
//! use mp_core::inherit::{self, Offer};
//! use mp_core::PrivateFd;
//! fn provide() -> std::io::Result<PrivateFd> {
//!     PrivateFd::new(std::fs::File::open("/dev/null")?.into())
//! }
//! static NULL: Offer = Offer::new("doc.null", provide);
//! assert!(inherit::offer(&NULL));
//! // What a carrier does for each child it starts ...
//! let mut sent = Vec::new();
//! for (name, fd) in inherit::gather() {
//!     if name == "doc.null" {
//!         sent.push((name.to_string(), fd.unwrap().into_inner()));
//!     }
//! }
//! // ... and what the child does with it, before the crate takes it by name.
//! inherit::receive(sent).unwrap();
//! assert!(inherit::take("doc.null").is_some());
//! assert!(inherit::take("doc.null").is_none(), "taken once");
//! ```
//!
//! # Fork
//!
//! Offers live in a fixed table of write-once cells: registering takes no lock and
//! allocates nothing, so a forked child finds the table as its parent left it. Received
//! handles are [`PrivateFd`]s: a child forked from a process that had not taken its copy
//! lets go of it (see [`crate::private_fd`]) and gets one of its own with its bootstrap,
//! which [`receive`] puts in place of whatever the parent's memory held.
//!
//! A crate whose lock a forked child takes (this module's table of received handles, a
//! helper's client state) registers it with [`hold_across_fork`]; whoever forks a process
//! that may run other threads takes every such lock first ([`hold_for_fork`]) and lets
//! go of them in both processes after the fork, so no child inherits one held by a
//! thread that does not exist there.
use crate::PrivateFd;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};

/// How many different handles can be offered (and so received) at most.
pub const MAX_OFFERS: usize = 8;
/// The longest name an offer may have, in bytes.
pub const MAX_NAME: usize = 64;

/// A handle that every child of this process receives: its name, and how to make a
/// copy for one child.
#[derive(Debug)]
pub struct Offer {
    name: &'static str,
    provide: fn() -> io::Result<PrivateFd>,
}

impl Offer {
    /// An offer named `name` (at most [`MAX_NAME`] bytes, checked when the constant is
    /// built); `provide` returns a fresh fd (a `dup`) for one child, starting whatever
    /// it stands for if need be. It runs in the thread that starts a child, for each
    /// child.
    pub const fn new(name: &'static str, provide: fn() -> io::Result<PrivateFd>) -> Offer {
        assert!(
            !name.is_empty() && name.len() <= MAX_NAME,
            "an offer's name has 1 to MAX_NAME bytes"
        );
        Offer { name, provide }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The offers, in the order they were made; a cell once set is never changed.
static OFFERS: [OnceLock<&'static Offer>; MAX_OFFERS] = [const { OnceLock::new() }; MAX_OFFERS];

/// Offers a handle to every child started from now on (again with the same name: no
/// change). False if [`MAX_OFFERS`] other names were offered already.
///
/// Takes no lock and allocates nothing, so it may be called before `main` (from an
/// initializer) and from any thread.
pub fn offer(o: &'static Offer) -> bool {
    for cell in &OFFERS {
        if cell.get().is_none() {
            let _ = cell.set(o);
        }
        // Set now, by us or by another thread first.
        if cell.get().is_some_and(|x| x.name == o.name) {
            return true;
        }
    }
    false
}

/// For a carrier starting a child: a copy of each offered handle (once per name, in the
/// order they were offered), or why it could not be made.
pub fn gather() -> Vec<(&'static str, io::Result<PrivateFd>)> {
    let mut out: Vec<(&'static str, io::Result<PrivateFd>)> = Vec::new();
    for o in OFFERS.iter().filter_map(OnceLock::get) {
        if out.iter().all(|(n, _)| *n != o.name) {
            out.push((o.name, (o.provide)()));
        }
    }
    out
}

/// How many locks can be registered with [`hold_across_fork`] at most.
pub const MAX_FORK_HOLDS: usize = 8;

/// A lock that a fork must not leave held in the child: `hold` waits for it and returns
/// its guard (boxed), which the forking thread keeps across the fork.
///
/// A registered lock is taken after this crate's callers' own locks and before this
/// module's: code holding it may take [`take`]'s lock, never the other way round, and it
/// must not wait for another registered lock.
#[derive(Debug)]
pub struct ForkHold {
    name: &'static str,
    hold: fn() -> Box<dyn std::any::Any>,
}

impl ForkHold {
    /// A lock named `name` (for diagnostics), taken by `hold`.
    pub const fn new(name: &'static str, hold: fn() -> Box<dyn std::any::Any>) -> ForkHold {
        ForkHold { name, hold }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The registered locks, in the order they were registered; a cell once set never changes.
static FORK_HOLDS: [OnceLock<&'static ForkHold>; MAX_FORK_HOLDS] =
    [const { OnceLock::new() }; MAX_FORK_HOLDS];

/// Registers a lock to hold across every fork made through [`hold_for_fork`] (again with
/// the same name: no change). False if [`MAX_FORK_HOLDS`] other names were registered.
///
/// Takes no lock and allocates nothing, so it may be called before `main` and from any
/// thread.
pub fn hold_across_fork(h: &'static ForkHold) -> bool {
    for cell in &FORK_HOLDS {
        if cell.get().is_none() {
            let _ = cell.set(h);
        }
        if cell.get().is_some_and(|x| x.name == h.name) {
            return true;
        }
    }
    false
}

/// Every registered lock and this module's own, held: drop it after the fork, in the
/// parent and in the child (where the thread that forked is the only one, and owns them).
pub struct ForkHeld {
    /// Dropped first: the registered locks, in the order they were taken.
    _registered: Vec<Box<dyn std::any::Any>>,
    _received: std::sync::MutexGuard<'static, Vec<(String, PrivateFd)>>,
}

impl std::fmt::Debug for ForkHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkHeld").finish_non_exhaustive()
    }
}

/// For one about to fork: waits for and takes every registered lock (in the order they
/// were registered), then this module's own. Another thread that holds one for long
/// (a helper starting) delays the fork as long.
pub fn hold_for_fork() -> ForkHeld {
    let mut registered = Vec::with_capacity(MAX_FORK_HOLDS);
    let mut seen: [&str; MAX_FORK_HOLDS] = [""; MAX_FORK_HOLDS];
    for (i, h) in FORK_HOLDS.iter().filter_map(OnceLock::get).enumerate() {
        if seen[..i].contains(&h.name) {
            continue;
        }
        seen[i] = h.name;
        registered.push((h.hold)());
    }
    ForkHeld {
        _registered: registered,
        _received: received(),
    }
}

/// The handles a child received, not yet taken.
static RECEIVED: Mutex<Vec<(String, PrivateFd)>> = Mutex::new(Vec::new());

fn received() -> std::sync::MutexGuard<'static, Vec<(String, PrivateFd)>> {
    RECEIVED.lock().unwrap_or_else(|p| p.into_inner())
}

/// For a carrier, in a child before its target runs: the handles its parent sent, by
/// name. They replace whatever this process held (copies a forked child has from its
/// parent's memory) and become private.
///
/// More than [`MAX_OFFERS`] handles, a name longer than [`MAX_NAME`] or one given twice
/// is an error, and then none is kept (all are closed).
pub fn receive(handles: Vec<(String, OwnedFd)>) -> io::Result<()> {
    let bad = handles.len() > MAX_OFFERS
        || handles.iter().enumerate().any(|(i, (n, _))| {
            n.is_empty() || n.len() > MAX_NAME || handles[..i].iter().any(|(m, _)| m == n)
        });
    let mut kept = Vec::with_capacity(handles.len());
    let mut result = if bad {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad library handles in a bootstrap: too many, a bad name, or one twice",
        ))
    } else {
        Ok(())
    };
    if !bad {
        for (name, fd) in handles {
            match PrivateFd::new(fd) {
                Ok(fd) => kept.push((name, fd)),
                Err(e) => {
                    result = Err(e);
                    kept.clear();
                    break;
                }
            }
        }
    }
    let stale = std::mem::replace(&mut *received(), kept);
    drop(stale);
    result
}

/// Takes the handle this process received under `name`, if any (once: a second call
/// finds nothing). A process that takes it owns the tree's shared resource from then on.
pub fn take(name: &str) -> Option<PrivateFd> {
    let mut r = received();
    let i = r.iter().position(|(n, _)| n == name)?;
    Some(r.swap_remove(i).1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn null() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn provide_null() -> io::Result<PrivateFd> {
        PrivateFd::new(null())
    }

    fn provide_fails() -> io::Result<PrivateFd> {
        Err(io::Error::other("no helper"))
    }

    static A: Offer = Offer::new("test.a", provide_null);
    static A_AGAIN: Offer = Offer::new("test.a", provide_fails);
    static B: Offer = Offer::new("test.b", provide_fails);

    #[test]
    fn offers_are_gathered_once_per_name() {
        assert!(offer(&A) && offer(&A_AGAIN) && offer(&B) && offer(&A));
        let got = gather();
        let a: Vec<_> = got.iter().filter(|(n, _)| *n == "test.a").collect();
        assert_eq!(a.len(), 1, "one copy per name");
        assert!(a[0]
            .1
            .as_ref()
            .is_ok_and(|fd| crate::private_fd::is_private(fd.as_fd())));
        let b: Vec<_> = got.iter().filter(|(n, _)| *n == "test.b").collect();
        assert!(
            b.len() == 1 && b[0].1.is_err(),
            "a failure is reported, not hidden"
        );
    }

    /// One test for receive and take, since they share the process-wide table.
    #[test]
    fn received_handles_are_private_replaced_and_checked() {
        receive(vec![("x".into(), null()), ("y".into(), null())]).unwrap();
        let x = take("x").unwrap();
        assert!(crate::private_fd::is_private(x.as_fd()));
        assert!(take("x").is_none(), "taken once");
        // A new set replaces what was left ("y").
        receive(vec![("z".into(), null())]).unwrap();
        assert!(take("y").is_none());
        assert!(take("z").is_some());
        // Malformed sets keep nothing.
        let twice = vec![("w".into(), null()), ("w".into(), null())];
        let long = vec![("n".repeat(MAX_NAME + 1), null())];
        let many = (0..=MAX_OFFERS)
            .map(|i| (format!("h{i}"), null()))
            .collect();
        for bad in [twice, long, many, vec![(String::new(), null())]] {
            receive(vec![("v".into(), null())]).unwrap();
            assert!(receive(bad).is_err());
            assert!(take("v").is_none() && take("w").is_none() && take("h0").is_none());
        }
    }
}
