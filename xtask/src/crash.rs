//! The crash matrix's table: rows that the facade's `crash_matrix` test binary prints
//! (`crash-matrix <TAB> participant <TAB> method <TAB> runs <TAB> recovered <TAB> leaks`,
//! runs 0 where a participant does not exist under a method) are collected from each
//! start method's run and shown as one table, participant x start method; and
//! `cargo xtask crash [--runs N] [--seed S]` runs that binary alone.
use crate::{cargo, run_captured, METHODS};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// One cell: a participant under a start method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub participant: String,
    pub method: String,
    pub runs: usize,
    pub recovered: usize,
    pub leaks: usize,
}

/// The rows in a test binary's output.
pub fn rows(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("crash-matrix\t")?.split('\t');
            Some(Row {
                participant: f.next()?.to_string(),
                method: f.next()?.to_string(),
                runs: f.next()?.parse().ok()?,
                recovered: f.next()?.parse().ok()?,
                leaks: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// Prints the table; true if every cell that ran recovered every run with no leak.
pub fn print(rows: &[Row]) -> bool {
    if rows.is_empty() {
        return true;
    }
    println!(
        "\n{:<22} {:>22} {:>22} {:>22}",
        "crash matrix", "spawn", "forkserver", "fork"
    );
    println!(
        "{:<22} {:>22} {:>22} {:>22}",
        "(recovered/runs)", "", "", ""
    );
    let mut participants: Vec<&str> = Vec::new();
    for r in rows {
        if !participants.contains(&r.participant.as_str()) {
            participants.push(&r.participant);
        }
    }
    let mut ok = true;
    for p in participants {
        let mut line = format!("{p:<22}");
        for m in METHODS {
            let cell = rows.iter().find(|r| r.participant == p && r.method == m);
            let text = match cell {
                None => "not run".to_string(),
                Some(r) if r.runs == 0 => "-".to_string(),
                Some(r) => {
                    let good = r.recovered == r.runs && r.leaks == 0;
                    ok &= good;
                    format!(
                        "{}{}/{}, {} leak{}",
                        if good { "" } else { "FAIL " },
                        r.recovered,
                        r.runs,
                        r.leaks,
                        if r.leaks == 1 { "" } else { "s" }
                    )
                }
            };
            line.push_str(&format!(" {text:>22}"));
        }
        println!("{line}");
    }
    ok
}

/// `cargo xtask crash [--runs N] [--seed S]`: the crash matrix alone, under each start
/// method, and its table.
pub fn crash(args: &[String]) -> ExitCode {
    let mut env: Vec<(&str, String)> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let var = match a.as_str() {
            "--runs" => "MP_CRASH_RUNS",
            "--seed" => "MP_CRASH_SEED",
            other => {
                eprintln!("xtask crash: unknown argument {other}");
                return ExitCode::from(2);
            }
        };
        match it.next() {
            Some(v) => env.push((var, v.clone())),
            None => {
                eprintln!("xtask crash: {a} needs a value");
                return ExitCode::from(2);
            }
        }
    }
    let mut all = Vec::new();
    let mut failed = false;
    for method in METHODS {
        let mut cmd = cargo();
        cmd.args([
            "test",
            "--quiet",
            "-p",
            "multiproc",
            "--test",
            "crash_matrix",
            "--",
            "--test-threads=1",
        ])
        .env("MULTIPROC_START_METHOD", method);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let t = Instant::now();
        let (ok, text) = run_captured(cmd, Duration::from_secs(900));
        eprintln!(
            "xtask: crash matrix [{method}]: {} ({:.1} s)",
            if ok { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if !ok {
            eprintln!("{text}");
            failed = true;
        }
        all.extend(rows(&text));
    }
    let clean = print(&all);
    if failed || !clean {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_and_other_lines_skipped() {
        let text = "test x ... ok\ncrash-matrix\tlock holder\tspawn\t20\t19\t1\n\
                    crash-matrix\tforkserver\tfork\t0\t0\t0\ncrash-matrix\tbad\tline\n";
        let r = rows(text);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Row {
                participant: "lock holder".into(),
                method: "spawn".into(),
                runs: 20,
                recovered: 19,
                leaks: 1
            }
        );
        assert!(!print(&r), "a cell with a leak fails the table");
        assert!(print(&r[1..]), "a cell that does not apply does not");
    }
}
