//! `cargo xtask bench [--quick] [--json FILE] [--pin CPU]`: every workload of the Rust
//! suite (benches/, the `mp-bench` binary) and, interleaved with it workload by workload,
//! CPython's figures from benches/cpython_bench.py; then a table of each workload beside
//! CPython and beside its limit, with the ratios.
use crate::{cargo, root, run_captured};
use serde_json::Value;
use std::process::{Command, ExitCode};
use std::time::Duration;

/// Which limit_* bench stands for the floor of each workload.
pub const LIMITS: &[(&str, &str)] = &[
    ("spawn_join_spawn", "limit_exec"),
    ("spawn_join_fork", "limit_fork"),
    ("spawn_join_forkserver", "limit_fork"),
    ("pipe_roundtrip", "limit_socketpair_roundtrip"),
    ("pipe_bytes_throughput", "limit_socketpair_throughput"),
    ("queue_throughput_small", "limit_inprocess_channel"),
    ("queue_throughput_1kib", "limit_inprocess_channel"),
    ("simplequeue_throughput_small", "limit_inprocess_channel"),
    ("queue_mpmc", "limit_inprocess_channel"),
    ("lock_uncontended", "limit_std_mutex"),
    ("rlock_uncontended", "limit_std_mutex"),
    ("semaphore_uncontended", "limit_std_mutex"),
    ("event_pingpong", "limit_futex_pingpong"),
    ("pool_map_cpu", "limit_rayon_map"),
    ("pool_apply_async_latency", "limit_socketpair_roundtrip"),
    ("array_sum_shared", "limit_rayon_sum"),
];

/// Whether a smaller value is better for this unit (times), as opposed to rates.
pub fn lower_is_better(unit: &str) -> bool {
    ["ms/", "us/", "ns/", "s/"]
        .iter()
        .any(|p| unit.starts_with(p))
}

fn lines_of(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .collect()
}

/// The params that identify a configuration (not bookkeeping such as "for").
fn key(v: &Value) -> String {
    let mut p = v["params"].clone();
    if let Some(m) = p.as_object_mut() {
        m.remove("for");
    }
    format!("{}|{}", v["bench"].as_str().unwrap_or_default(), p)
}

fn list(cmd: Command) -> Vec<String> {
    let (ok, text) = run_captured(cmd, Duration::from_secs(120));
    if !ok {
        return Vec::new();
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(' '))
        .map(str::to_string)
        .collect()
}

pub fn bench(args: &[String]) -> ExitCode {
    let quick = args.iter().any(|a| a == "--quick");
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let json_path = value_of("--json");
    let pin = value_of("--pin");

    eprintln!("xtask: building the benchmark suite (release) ...");
    let mut build = cargo();
    build.args(["build", "--release", "--quiet", "-p", "multiproc-benches"]);
    let (ok, text) = run_captured(build, Duration::from_secs(1800));
    if !ok {
        eprintln!("{text}");
        return ExitCode::FAILURE;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("release/mp-bench");
    let py_script = root().join("benches/cpython_bench.py");
    let extra: Vec<String> = [
        quick.then(|| vec!["--quick".to_string()]),
        pin.clone().map(|p| vec!["--pin".to_string(), p]),
    ]
    .into_iter()
    .flatten()
    .flatten()
    .collect();

    let mut results: Vec<Value> = Vec::new();
    let mut env_cmd = Command::new(&bin);
    env_cmd.arg("--env").args(&extra);
    let (_, env_text) = run_captured(env_cmd, Duration::from_secs(60));
    let mut env = lines_of(&env_text)
        .into_iter()
        .next()
        .unwrap_or_else(|| serde_json::json!({"env": {}}));
    if let Some(e) = env["env"].as_object_mut() {
        let rustc = Command::new("rustc")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        e.insert("rustc".into(), Value::from(rustc.unwrap_or_default()));
        let py = Command::new("python3")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        e.insert("python".into(), Value::from(py.unwrap_or_default()));
    }

    let mut rust_list = Command::new(&bin);
    rust_list.arg("--list");
    let rust_workloads = list(rust_list);
    let mut py_list = Command::new("python3");
    py_list.arg(&py_script).arg("--list");
    let py_workloads = list(py_list);
    if py_workloads.is_empty() {
        eprintln!(
            "xtask: python3 or {} is unavailable: no CPython figures",
            py_script.display()
        );
    }
    let n = rust_workloads.len();
    for (i, w) in rust_workloads.iter().enumerate() {
        eprintln!("xtask: [{}/{n}] {w} (rust) ...", i + 1);
        let mut cmd = Command::new(&bin);
        cmd.args(["--only", w]).args(&extra);
        let (ok, text) = run_captured(cmd, Duration::from_secs(900));
        if !ok {
            eprintln!("xtask: {w} failed:\n{text}");
        }
        results.extend(lines_of(&text));
        if py_workloads.contains(w) {
            eprintln!("xtask: [{}/{n}] {w} (cpython) ...", i + 1);
            let mut cmd = Command::new("python3");
            cmd.arg(&py_script).args(["--only", w]).args(&extra);
            let (ok, text) = run_captured(cmd, Duration::from_secs(900));
            if !ok {
                eprintln!("xtask: cpython {w} failed:\n{text}");
            }
            results.extend(lines_of(&text));
        }
    }

    if let Some(path) = &json_path {
        let mut out = String::new();
        for v in std::iter::once(&env).chain(results.iter()) {
            out.push_str(&v.to_string());
            out.push('\n');
        }
        if let Err(e) = std::fs::write(path, out) {
            eprintln!("xtask: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("xtask: wrote {} results to {path}", results.len());
    }
    print!("{}", table(&results));
    let failed = rust_workloads.iter().any(|w| {
        !results.iter().any(|r| {
            r["bench"]
                .as_str()
                .is_some_and(|b| b.starts_with(w.as_str()))
        })
    });
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One row of the table: a Rust result beside CPython's and its limit.
pub struct Row {
    /// Workload name.
    pub bench: String,
    /// Its parameters (start method, chunk size ...), as text.
    pub params: String,
    /// Unit of the values.
    pub unit: String,
    /// The Rust median.
    pub rust: f64,
    /// CPython's median, if measured.
    pub cpython: Option<f64>,
    /// How many times better than CPython (>1 is better).
    pub speedup: Option<f64>,
    /// The limit's median and its name.
    pub limit: Option<(String, f64)>,
    /// How far from the limit (1.0 = at the limit, 2.0 = twice as slow).
    pub vs_limit: Option<f64>,
}

pub fn rows(results: &[Value]) -> Vec<Row> {
    let rust: Vec<&Value> = results.iter().filter(|r| r["impl"] == "rust").collect();
    let mut out = Vec::new();
    for r in rust.iter().filter(|r| {
        !r["bench"]
            .as_str()
            .unwrap_or_default()
            .starts_with("limit_")
    }) {
        let bench = r["bench"].as_str().unwrap_or_default().to_string();
        let unit = r["unit"].as_str().unwrap_or_default().to_string();
        let value = r["value"].as_f64().unwrap_or(f64::NAN);
        let lower = lower_is_better(&unit);
        let cpython = results
            .iter()
            .find(|c| c["impl"] == "cpython" && key(c) == key(r))
            .and_then(|c| c["value"].as_f64());
        let speedup = cpython.map(|c| if lower { c / value } else { value / c });
        // A limit is measured in the same conditions: pinned with pinned, unpinned with
        // unpinned (missing keys compare equal to missing keys).
        let same_pinning = |x: &Value| {
            ["pinned", "pinned_cpu"]
                .iter()
                .all(|k| x["params"][*k] == r["params"][*k])
        };
        let limit = LIMITS.iter().find(|(b, _)| *b == bench).and_then(|(_, l)| {
            rust.iter()
                .find(|x| x["bench"] == *l && same_pinning(x))
                .and_then(|x| x["value"].as_f64())
                .map(|v| (l.to_string(), v))
        });
        let vs_limit = limit
            .as_ref()
            .map(|(_, l)| if lower { value / l } else { l / value });
        let mut params = r["params"].clone();
        if let Some(m) = params.as_object_mut() {
            if let Some(method) = m.remove("start_method") {
                m.insert("method".into(), method);
            }
        }
        let params = params
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(Row {
            bench,
            params,
            unit,
            rust: value,
            cpython,
            speedup,
            limit,
            vs_limit,
        });
    }
    out
}

pub fn table(results: &[Value]) -> String {
    let mut s = format!(
        "\n{:<30} {:<22} {:>10} {:<13} {:>10} {:>9} {:>10} {:>9}  limit\n",
        "workload", "params", "multiproc", "unit", "CPython", "speedup", "limit", "vs limit"
    );
    for r in rows(results) {
        s.push_str(&format!(
            "{:<30} {:<22} {:>10} {:<13} {:>10} {:>9} {:>10} {:>9}  {}\n",
            r.bench,
            r.params,
            fmt_num(r.rust),
            r.unit,
            r.cpython.map(fmt_num).unwrap_or_else(|| "-".into()),
            r.speedup
                .map(|x| format!("{x:.1}x"))
                .unwrap_or_else(|| "-".into()),
            r.limit
                .as_ref()
                .map(|l| fmt_num(l.1))
                .unwrap_or_else(|| "-".into()),
            r.vs_limit
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            r.limit.as_ref().map(|l| l.0.as_str()).unwrap_or("-"),
        ));
    }
    s.push_str("speedup: times better than CPython (>1 is better); vs limit: times the limit's cost (1.00 = at the limit)\n");
    s
}
