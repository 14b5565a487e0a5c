//! The matrix itself: runs one participant's scenario N times, checks the survivor for
//! leaks after each run (new fds, zombie or stray children), bounds every run with a
//! watchdog, and prints the table (participant x start method: runs, recovered, leaks).
use crate::probe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many runs each participant gets (`MP_CRASH_RUNS` to change it).
pub const DEFAULT_RUNS: usize = 20;
/// A run that takes longer than this has hung: the watchdog ends the test binary
/// (`MP_CRASH_WATCHDOG`, in seconds, to change it).
pub const WATCHDOG: Duration = Duration::from_secs(90);

fn watchdog_secs() -> u32 {
    std::env::var("MP_CRASH_WATCHDOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(WATCHDOG.as_secs() as u32)
}
/// The bound of every wait inside a run (generous: a slow machine must never fail by time).
pub const LONG: Duration = Duration::from_secs(30);

/// A small xorshift generator: reproducible from the seed printed at the start.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in `lo..hi` (hi > lo).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
    /// A short random delay: the "random point" after a known one.
    pub fn delay(&mut self, max_us: u64) -> Duration {
        Duration::from_micros(self.range(0, max_us + 1))
    }
}

/// The seed of this run of the binary: `MP_CRASH_SEED`, or from the clock.
pub fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("MP_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                t ^ (u64::from(std::process::id()) << 32)
            })
    })
}

pub fn runs() -> usize {
    std::env::var("MP_CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_RUNS)
}

/// What one run gives its scenario.
pub struct Ctx {
    pub rng: Rng,
    /// The run's number, from 0.
    pub run: usize,
    /// Unique to this run of this participant in this process (for names and tags).
    pub tag: String,
    /// Children of ours that may outlive a run (the forkserver).
    pub expected_children: Vec<i32>,
    /// What the run saw (which kind of point the kill hit, say), counted per participant.
    pub notes: Vec<&'static str>,
    /// What the run found left behind beyond the survivor's fds and children, which the
    /// harness checks itself (segments in /dev/shm, fds in another survivor).
    pub leaks: Vec<String>,
}

impl Ctx {
    pub fn note(&mut self, what: &'static str) {
        self.notes.push(what);
    }
    pub fn leak(&mut self, what: String) {
        self.leaks.push(what);
    }
}

/// One cell of the table.
#[derive(Clone, Debug)]
pub struct Tally {
    pub participant: &'static str,
    pub method: String,
    pub runs: usize,
    pub recovered: usize,
    pub leaks: usize,
    /// Not applicable under this start method.
    pub na: bool,
    pub seconds: f64,
    pub notes: std::collections::BTreeMap<&'static str, usize>,
}

static TALLIES: Mutex<Vec<Tally>> = Mutex::new(Vec::new());

fn record(t: Tally) {
    TALLIES.lock().unwrap_or_else(|p| p.into_inner()).push(t);
}

/// Records a participant that does not exist under this start method.
pub fn not_applicable(participant: &'static str) {
    record(Tally {
        participant,
        method: multiproc::get_start_method().as_str().to_string(),
        runs: 0,
        recovered: 0,
        leaks: 0,
        na: true,
        seconds: 0.0,
        notes: Default::default(),
    });
}

/// What a scenario returns: `Err(why)` when the survivors did not carry on.
pub type RunResult = Result<(), String>;

/// Runs `scenario` [`runs`] times for `participant`; the test fails if a run did not
/// recover or leaked anything.
pub fn run_participant(
    participant: &'static str,
    index: u64,
    mut scenario: impl FnMut(&mut Ctx) -> RunResult,
) -> Result<(), libtest_mimic::Failed> {
    let t0 = Instant::now();
    let method = multiproc::get_start_method().as_str().to_string();
    let n = runs();
    let mut rng = Rng::new(seed() ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut tally = Tally {
        participant,
        method,
        runs: 0,
        recovered: 0,
        leaks: 0,
        na: false,
        seconds: 0.0,
        notes: Default::default(),
    };
    let mut problems = Vec::new();
    for run in 0..n {
        let mut ctx = Ctx {
            rng: Rng::new(rng.next()),
            run,
            tag: format!("{}-{participant}-{run}", std::process::id()),
            expected_children: multiproc::process::forkserver_pid().into_iter().collect(),
            notes: Vec::new(),
            leaks: Vec::new(),
        };
        let before = probe::Fds::take();
        let strays_before: Vec<i32> = probe::stray_children(&ctx.expected_children)
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        watchdog::arm(participant, run);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&mut ctx)))
            .unwrap_or_else(|p| {
                Err(format!(
                    "panicked: {}",
                    p.downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| p.downcast_ref::<&str>().copied())
                        .unwrap_or("?")
                ))
            });
        watchdog::disarm();
        for n in ctx.notes.drain(..) {
            *tally.notes.entry(n).or_default() += 1;
        }
        match outcome {
            Ok(()) => tally.recovered += 1,
            Err(why) => problems.push(format!("run {run}: not recovered: {why}")),
        }
        let mut leaks = std::mem::take(&mut ctx.leaks);
        // Each leaked thing counts once: a segment, a child, an fd.
        let mut count = leaks.len();
        // The fd count must not grow; a helper's fds replaced one for one (a new
        // forkserver's) are no leak.
        let after = probe::Fds::take();
        if after.count() > before.count() {
            count += after.count() - before.count();
            leaks.push(format!(
                "{} more fds: new ones {}",
                after.count() - before.count(),
                after.new_since(&before).join(", ")
            ));
        }
        // Children that were already there (an earlier run's leak, counted then) are
        // not this run's.
        let mut expected = ctx.expected_children.clone();
        expected.extend(multiproc::process::forkserver_pid());
        let strays: Vec<String> = probe::stray_children(&expected)
            .into_iter()
            .filter(|(pid, _)| !strays_before.contains(pid))
            .map(|(_, what)| what)
            .collect();
        count += strays.len();
        leaks.extend(strays);
        if !leaks.is_empty() {
            problems.push(format!("run {run}: left behind: {}", leaks.join("; ")));
        }
        tally.leaks += count;
        tally.runs += 1;
    }
    tally.seconds = t0.elapsed().as_secs_f64();
    record(tally);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{participant} (seed {}):\n  {}",
            seed(),
            problems.join("\n  ")
        )
        .into())
    }
}

/// Prints the table of this binary's cells, and one machine-readable line per cell
/// (`crash-matrix <TAB> participant <TAB> method <TAB> runs <TAB> recovered <TAB> leaks`,
/// runs 0 for "not applicable") for `cargo xtask test` to collect.
pub fn print_table() {
    let tallies = TALLIES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if tallies.is_empty() {
        return;
    }
    let method = multiproc::get_start_method().as_str();
    println!(
        "\ncrash matrix under {method} (seed {}, MP_CRASH_SEED to repeat)",
        seed()
    );
    println!(
        "{:<20} {:>5} {:>10} {:>6} {:>8}",
        "participant", "runs", "recovered", "leaks", "seconds"
    );
    for t in &tallies {
        if t.na {
            println!(
                "{:<20} {:>5} {:>10} {:>6} {:>8}",
                t.participant, "-", "-", "-", "-"
            );
        } else {
            println!(
                "{:<20} {:>5} {:>10} {:>6} {:>8.1}",
                t.participant, t.runs, t.recovered, t.leaks, t.seconds
            );
        }
    }
    for t in tallies.iter().filter(|t| !t.notes.is_empty()) {
        let seen: Vec<String> = t.notes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("  {}: {}", t.participant, seen.join(", "));
    }
    for t in &tallies {
        println!(
            "crash-matrix\t{}\t{}\t{}\t{}\t{}",
            t.participant, t.method, t.runs, t.recovered, t.leaks
        );
    }
}

/// A bound on every run, for waits that a library call might not bound: SIGALRM ends
/// the test binary, naming the run that hung. (Alarms are not inherited by children.)
mod watchdog {
    use super::*;

    static LABEL: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

    extern "C" fn on_alarm(_: libc::c_int) {
        // Only async-signal-safe calls: write(2) of bytes prepared before, then _exit.
        let ptr = LABEL[0].load(Ordering::SeqCst) as *const u8;
        let len = LABEL[1].load(Ordering::SeqCst);
        let head = b"\ncrash matrix: a run hung (watchdog): ";
        // SAFETY: `head` is a live static; `ptr`/`len` describe a leaked, never freed
        // String set by `arm` (or are null/0); write and _exit are async-signal-safe.
        unsafe {
            libc::write(2, head.as_ptr().cast(), head.len());
            if !ptr.is_null() {
                libc::write(2, ptr.cast(), len);
            }
            libc::write(2, b"\n".as_ptr().cast(), 1);
            libc::_exit(101);
        }
    }

    pub fn arm(participant: &'static str, run: usize) {
        let secs = watchdog_secs();
        let label: &'static str =
            Box::leak(format!("{participant}, run {run}, after {secs} s").into_boxed_str());
        LABEL[1].store(label.len(), Ordering::SeqCst);
        LABEL[0].store(label.as_ptr() as usize, Ordering::SeqCst);
        // SAFETY: installs a handler that only calls async-signal-safe functions; alarm
        // has no memory effects.
        unsafe {
            libc::signal(
                libc::SIGALRM,
                on_alarm as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
            );
            libc::alarm(secs);
        }
    }

    pub fn disarm() {
        // SAFETY: cancels the pending alarm; no memory effects.
        unsafe {
            libc::alarm(0);
        }
    }
}
