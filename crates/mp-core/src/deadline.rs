use rustix::time::{clock_gettime, ClockId, Timespec};
use std::time::Duration;

/// A point in time on `CLOCK_MONOTONIC`, or "never".
///
/// Waits recompute what is left from the deadline after every wake-up, so an `EINTR` or
/// a spurious wake never stretches a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(Option<Timespec>);

fn now() -> Timespec {
    clock_gettime(ClockId::Monotonic)
}

fn add(t: Timespec, d: Duration) -> Timespec {
    let mut sec = t
        .tv_sec
        .saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut nsec = t.tv_nsec + i64::from(d.subsec_nanos());
    if nsec >= 1_000_000_000 {
        nsec -= 1_000_000_000;
        sec = sec.saturating_add(1);
    }
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

impl Deadline {
    /// No deadline: wait for ever.
    pub const NEVER: Deadline = Deadline(None);

    /// `timeout` from now; `None` means never.
    pub fn after(timeout: Option<Duration>) -> Self {
        Deadline(timeout.map(|d| add(now(), d)))
    }

    /// `d` from now.
    pub fn from_now(d: Duration) -> Self {
        Self::after(Some(d))
    }

    /// Whether this deadline is "never".
    pub fn is_never(&self) -> bool {
        self.0.is_none()
    }

    /// The absolute `CLOCK_MONOTONIC` time, for syscalls that take one.
    pub fn absolute(&self) -> Option<Timespec> {
        self.0
    }

    /// What is left: `None` for never, `Some(ZERO)` once passed.
    pub fn remaining(&self) -> Option<Duration> {
        let at = self.0?;
        let n = now();
        let secs = at.tv_sec - n.tv_sec;
        let nanos = at.tv_nsec - n.tv_nsec;
        let total = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Some(if total <= 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(total.min(u64::MAX as i128) as u64)
        })
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.remaining() == Some(Duration::ZERO)
    }

    /// What is left, as a relative `Timespec` for `poll`-like calls.
    pub fn remaining_timespec(&self) -> Option<Timespec> {
        self.remaining().map(|d| Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: d.subsec_nanos() as _,
        })
    }
}
