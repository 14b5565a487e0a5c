//! The benchmark binary: `mp-bench [--quick] [--only NAME[,NAME]] [--pin CPU] [--list]`
//! prints one JSON object per line, as ../shared/BENCHMARKS.md describes:
//! `{"bench": ..., "params": {...}, "value": median, "unit": ..., "runs": [...]}`.
//! `cargo xtask bench` runs it beside `cpython_bench.py` and prints the table.
use serde_json::{json, Value};
use std::time::Instant;

mod ipc;
mod pools;
mod process;
mod queues;

/// Options shared by every workload.
pub struct Opts {
    /// Fewer runs and iterations (a smoke run of about a minute for the whole suite).
    pub quick: bool,
    /// The CPU this process is pinned to, if any.
    pub pin: Option<usize>,
}

impl Opts {
    /// How many timed runs a workload makes (the value is their median).
    pub fn runs(&self) -> usize {
        if self.quick {
            3
        } else {
            9
        }
    }
}

/// The median of `runs`.
pub fn median(runs: &[f64]) -> f64 {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Prints one result line.
pub fn emit(bench: &str, params: Value, unit: &str, runs: Vec<f64>, opts: &Opts) {
    let mut params = params;
    if let (Some(cpu), Some(map)) = (opts.pin, params.as_object_mut()) {
        map.insert("pinned_cpu".into(), json!(cpu));
    }
    let line = json!({"bench": bench, "impl": "rust", "params": params, "value": median(&runs), "unit": unit, "runs": runs});
    println!("{line}");
}

/// Times `iters` calls of `f`, returning seconds per call.
pub fn per_call(iters: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() / iters as f64
}

fn env_line(opts: &Opts) {
    let rustc = option_env!("MP_BENCH_RUSTC").unwrap_or("unknown");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let line = json!({"env": {
        "rustc": rustc,
        "kernel": kernel.trim(),
        "cpu_count": multiproc::cpu_count(),
        "online_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "pinned_cpu": opts.pin,
        "quick": opts.quick,
    }});
    println!("{line}");
}

/// Every workload this binary knows: (name, function).
type Workload = (&'static str, fn(&Opts));

fn workloads() -> Vec<Workload> {
    [
        process::WORKLOADS,
        ipc::WORKLOADS,
        queues::WORKLOADS,
        pools::WORKLOADS,
    ]
    .concat()
}

fn main() {
    if std::env::var_os(process::LIMIT_EXEC_ENV).is_some() {
        // limit_exec's child: exists only to be executed and waited for.
        return;
    }
    multiproc::init();
    let mut opts = Opts {
        quick: false,
        pin: None,
    };
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--only" => {
                only = args
                    .next()
                    .map(|s| s.split(',').map(str::to_string).collect())
            }
            "--pin" => opts.pin = args.next().and_then(|s| s.parse().ok()),
            "--list" => {
                for (name, _) in workloads() {
                    println!("{name}");
                }
                return;
            }
            "--env" => {
                env_line(&opts);
                return;
            }
            other => {
                eprintln!("mp-bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if let Some(cpu) = opts.pin {
        pin_to(cpu);
    }
    for (name, f) in workloads() {
        if only.as_ref().is_none_or(|o| o.iter().any(|n| n == name)) {
            f(&opts);
        }
    }
}

/// The CPUs this process may run on.
pub fn affinity() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by sched_getaffinity with
    // exactly size_of::<cpu_set_t>() bytes; CPU_ISSET reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Restricts this process (and the children it starts afterwards) to `cpus`.
pub fn set_affinity(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it, and
    // sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("mp-bench: could not set the CPU affinity to {cpus:?}");
        }
    }
}

/// Pins this process (and the children it starts afterwards) to one CPU.
pub fn pin_to(cpu: usize) {
    set_affinity(&[cpu]);
}
