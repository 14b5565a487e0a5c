//! Bounded, adaptive spinning before sleeping, shared by every waiter of multiproc.
//!
//! Waking a sleeping process on an idle CPU costs tens of microseconds on a VM (about
//! 45 us measured here), more than a whole round trip between two busy CPUs. So a
//! waiter that expects an answer soon polls for up to [`SPIN`] first, but only when it
//! can pay ([`may_spin`]):
//! - another CPU may be running the peer (this thread's affinity has more than one):
//!   with one CPU, spinning would take the very CPU the peer needs to answer;
//! - recent spins of this thread succeeded: after a spin that ran out (the peer was
//!   busy, or not running because the CPUs are taken), this thread sleeps straight
//!   away for its next [`BACKOFF`] waits, so a loaded machine is not made worse.
//!
//! Waiters report each spin's outcome with [`spun`].
use std::cell::Cell;
use std::time::Duration;

/// How long a waiter polls before it sleeps.
pub const SPIN: Duration = Duration::from_micros(50);

/// How many waits a thread skips spinning after a spin that ran out.
pub const BACKOFF: u32 = 32;

/// Per thread: whether several CPUs are allowed, calls left before asking again, and
/// waits left without spinning.
#[derive(Clone, Copy)]
struct State {
    multi: bool,
    refresh: u32,
    backoff: u32,
}

thread_local! {
    static STATE: Cell<State> = const { Cell::new(State { multi: false, refresh: 0, backoff: 0 }) };
}

/// Whether this wait should spin before sleeping. The CPU count comes from the
/// thread's affinity mask, cached and asked again every 256 calls (so a benchmark that
/// pins itself is seen soon) at no system call per wait.
pub fn may_spin() -> bool {
    STATE.with(|c| {
        let mut s = c.get();
        if s.refresh == 0 {
            s.multi = rustix::thread::sched_getaffinity(None).is_ok_and(|set| set.count() > 1);
            s.refresh = 256;
        }
        s.refresh -= 1;
        let spin = s.multi && s.backoff == 0;
        s.backoff = s.backoff.saturating_sub(1);
        c.set(s);
        spin
    })
}

/// Reports whether a spin found what it waited for (`true`) or ran out (`false`).
pub fn spun(found: bool) {
    if !found {
        STATE.with(|c| {
            let mut s = c.get();
            s.backoff = BACKOFF;
            c.set(s);
        });
    }
}
