//! `cargo xtask <command>`, the project's automation in plain Rust:
//!
//! - `test`: format check, clippy (warnings denied), unit and doc tests, the docs
//!   (warnings denied), then every integration test binary under each start method
//!   (spawn, forkserver, fork) and every example; a table of pass and fail per crate and
//!   start method, and the crash matrix's table (participant x start method: runs,
//!   recovered, leaks); fails if any cell does.
//! - `crash [--runs N] [--seed S]`: the crash matrix alone (see crash.rs).
//! - `bench [--quick] [--json FILE] [--pin CPU]`: the benchmark suite beside CPython and
//!   the limits (see bench.rs).
//! - `report [--from FILE] [--quick]`: benches/REPORT.md and benches/report.svg.
//! - `showcase`: runs the seed programs and the tour.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod bench;
mod crash;
mod report;

const METHODS: [&str; 3] = ["spawn", "forkserver", "fork"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs `cmd` to completion or until `limit`, capturing output; returns (success, stdout+stderr).
fn run_captured(mut cmd: Command, limit: Duration) -> (bool, String) {
    let out_path = std::env::temp_dir().join(format!(
        "xtask-{}-{}.log",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let Ok(file) = std::fs::File::create(&out_path) else {
        return (false, "cannot create a log file".into());
    };
    let Ok(file2) = file.try_clone() else {
        return (false, "cannot clone a log file".into());
    };
    cmd.stdout(Stdio::from(file))
        .stderr(Stdio::from(file2))
        .stdin(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("could not run {cmd:?}: {e}")),
    };
    let t = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    let mut text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    if status.is_none() {
        text.push_str(&format!("\nxtask: timed out after {limit:?}\n"));
    }
    (status.is_some_and(|s| s.success()), text)
}

/// Runs `cmd` with inherited output; true on success.
fn run_loud(mut cmd: Command) -> bool {
    eprintln!("xtask: running {cmd:?}");
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

/// (passed, failed) summed over libtest's "test result:" lines.
fn count(text: &str) -> (usize, usize) {
    let mut p = 0;
    let mut f = 0;
    for line in text.lines().filter(|l| l.starts_with("test result:")) {
        let num = |word: &str| {
            line.split(';')
                .find(|part| part.contains(word))
                .and_then(|part| part.split_whitespace().rev().nth(1)?.parse::<usize>().ok())
                .unwrap_or(0)
        };
        p += num(" passed");
        f += num(" failed");
    }
    (p, f)
}

/// Packages and their integration test targets, from `cargo metadata`.
fn test_targets() -> Vec<(String, Vec<String>)> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    let Ok(meta) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let name = pkg["name"].as_str().unwrap_or_default().to_string();
        let tests: Vec<String> = pkg["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|x| x == "test"))
            })
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect();
        if !tests.is_empty() {
            v.push((name, tests));
        }
    }
    v.sort();
    v
}

/// The examples of the examples package, seeds first and the tour last.
fn examples() -> Vec<String> {
    let dir = root().join("examples/examples");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".rs")
                .map(str::to_string)
        })
        .collect();
    v.sort_by_key(|n| (n == "tour", n.clone()));
    v
}

/// One crate under one start method.
struct Cell {
    ok: bool,
    passed: usize,
    failed: usize,
}

fn test() -> ExitCode {
    let t0 = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    // Counts from the steps before the matrix (unit and doc tests; 1 failure for a
    // failed step with no test count of its own, such as the format check).
    let (mut total_p, mut total_f) = (0usize, 0usize);
    let steps: [(&str, &[&str]); 5] = [
        ("format check", &["fmt", "--all", "--", "--check"]),
        (
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ],
        ),
        ("unit tests", &["test", "--workspace", "--lib", "--bins"]),
        ("doc tests", &["test", "--workspace", "--doc"]),
        // Broken intra-doc links and the like (RUSTDOCFLAGS below).
        ("docs", &["doc", "--workspace", "--no-deps", "--quiet"]),
    ];
    for (name, args) in steps {
        eprintln!("xtask: {name} ...");
        let t = Instant::now();
        let mut cmd = cargo();
        cmd.args(args).env("MULTIPROC_START_METHOD", "spawn");
        if name == "docs" {
            cmd.env("RUSTDOCFLAGS", "-D warnings");
        }
        let (ok, text) = run_captured(cmd, Duration::from_secs(1800));
        let (passed, failed) = count(&text);
        eprintln!(
            "xtask: {name}: {} ({passed} passed, {failed} failed, {:.1} s)",
            if ok { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        total_p += passed;
        total_f += failed.max(usize::from(!ok));
        if !ok {
            eprintln!("{text}");
            failures.push(name.to_string());
        }
    }

    // Build every integration test once, then run the matrix.
    let mut build = cargo();
    build.args(["test", "--workspace", "--no-run", "--tests", "--quiet"]);
    let (ok, text) = run_captured(build, Duration::from_secs(1800));
    if !ok {
        eprintln!("{text}");
        failures.push("building tests".into());
        total_f += 1;
    }
    let mut matrix: Vec<(String, String, Cell)> = Vec::new();
    let mut crash_rows = Vec::new();
    for (pkg, tests) in test_targets() {
        for method in METHODS {
            let mut cell = Cell {
                ok: true,
                passed: 0,
                failed: 0,
            };
            for t in &tests {
                let mut cmd = cargo();
                cmd.args(["test", "--quiet", "-p", &pkg, "--test", t, "--"]);
                if method == "fork" {
                    // A forking parent must be single-threaded: run tests one at a time.
                    cmd.arg("--test-threads=1");
                }
                cmd.env("MULTIPROC_START_METHOD", method);
                let t0 = Instant::now();
                let (ok, text) = run_captured(cmd, Duration::from_secs(900));
                let (p, f) = count(&text);
                crash_rows.extend(crash::rows(&text));
                eprintln!(
                    "xtask: {pkg}/{t} [{method}]: {} ({p} passed, {f} failed, {:.1} s)",
                    if ok { "ok" } else { "FAILED" },
                    t0.elapsed().as_secs_f64()
                );
                if !ok {
                    eprintln!("{text}");
                    failures.push(format!("{pkg}/{t} [{method}]"));
                }
                cell.ok &= ok;
                cell.passed += p;
                cell.failed += f + usize::from(!ok && f == 0);
            }
            matrix.push((pkg.clone(), method.to_string(), cell));
        }
    }

    // Every example, under each start method.
    let mut build = cargo();
    build.args(["build", "--quiet", "-p", "multiproc-examples", "--examples"]);
    let (ok, text) = run_captured(build, Duration::from_secs(1800));
    if !ok {
        eprintln!("{text}");
        failures.push("building examples".into());
        total_f += 1;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    for method in METHODS {
        let mut cell = Cell {
            ok: true,
            passed: 0,
            failed: 0,
        };
        for ex in examples() {
            let mut cmd = Command::new(target.join("debug/examples").join(&ex));
            cmd.env("MULTIPROC_START_METHOD", method);
            let (ok, text) = run_captured(cmd, Duration::from_secs(300));
            if ok {
                cell.passed += 1;
            } else {
                cell.failed += 1;
                cell.ok = false;
                eprintln!("xtask: example {ex} [{method}] FAILED:\n{text}");
                failures.push(format!("example {ex} [{method}]"));
            }
        }
        eprintln!(
            "xtask: examples [{method}]: {} passed, {} failed",
            cell.passed, cell.failed
        );
        matrix.push(("examples".into(), method.to_string(), cell));
    }

    // The table.
    println!(
        "\n{:<22} {:>16} {:>16} {:>16}",
        "crate", "spawn", "forkserver", "fork"
    );
    let mut crates: Vec<&String> = matrix.iter().map(|r| &r.0).collect();
    crates.dedup();
    for c in crates {
        let mut line = format!("{c:<22}");
        for m in METHODS {
            let cell = matrix.iter().find(|r| &r.0 == c && r.1 == m).map(|r| &r.2);
            let text = match cell {
                Some(cell) => {
                    total_p += cell.passed;
                    total_f += cell.failed;
                    if cell.ok {
                        format!("ok {}", cell.passed)
                    } else {
                        format!("FAIL {}/{}", cell.failed, cell.passed + cell.failed)
                    }
                }
                None => "-".into(),
            };
            line.push_str(&format!(" {text:>16}"));
        }
        println!("{line}");
    }
    // The crash matrix's failures are already counted as its binary's test failures.
    crash::print(&crash_rows);
    println!("\nxtask test took {:.0} s", t0.elapsed().as_secs_f64());
    if !failures.is_empty() {
        println!("failed: {}", failures.join(", "));
    }
    println!("xtask: {total_p} passed, {total_f} failed");
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn showcase() -> ExitCode {
    if !run_loud({
        let mut c = cargo();
        c.args(["build", "--quiet", "-p", "multiproc-examples", "--examples"]);
        c
    }) {
        return ExitCode::FAILURE;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    for ex in examples() {
        println!("\n================ {ex} ================");
        let ok = Command::new(target.join("debug/examples").join(&ex))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("xtask: example {ex} failed");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("bench") => bench::bench(&args[1..]),
        Some("showcase") => showcase(),
        Some("crash") => crash::crash(&args[1..]),
        Some("report") => report::report(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask test | crash [--runs N] [--seed S] | bench [--quick] [--json FILE] [--pin CPU] | showcase"
            );
            ExitCode::from(2)
        }
    }
}
