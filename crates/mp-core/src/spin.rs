//! Bounded spinning before sleeping, shared by every waiter of multiproc.
//!
//! Waking a sleeping process on an idle CPU costs tens of microseconds on a VM (about
//! 45 us measured here), more than a whole round trip between two busy CPUs. So a
//! waiter that expects an answer soon polls for up to [`SPIN`] first, but only when
//! another CPU may be running the peer ([`may_spin`]): with one CPU, spinning would
//! take the very CPU the peer needs to answer.
use std::cell::Cell;
use std::time::Duration;

/// How long a waiter polls before it sleeps.
pub const SPIN: Duration = Duration::from_micros(50);

thread_local! {
    static CACHE: Cell<(bool, u32)> = const { Cell::new((false, 0)) };
}

/// Whether this thread may run on more than one CPU (its affinity mask), so that
/// spinning can pay. Cached per thread and asked again every 256 calls, so a change
/// of affinity (a benchmark pinning itself, say) is seen soon while a call costs no
/// system call.
pub fn may_spin() -> bool {
    CACHE.with(|c| match c.get() {
        (_, 0) => {
            let v = rustix::thread::sched_getaffinity(None).is_ok_and(|set| set.count() > 1);
            c.set((v, 255));
            v
        }
        (v, n) => {
            c.set((v, n - 1));
            v
        }
    })
}
