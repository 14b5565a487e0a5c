//! The shared-memory tracker killed at a random point while its creator creates named
//! segments; the creator carries on (its next create starts a new tracker), a child of
//! it (started with this run's method) creates segments too; then the creator is killed
//! as well. Afterwards nothing of theirs is left in /dev/shm, and the creator's fd count
//! did not grow.
//!
//! The creator is a program of its own (this test binary started with `MP_CRASH_ROLE`),
//! not a multiproc child: the segments of a process tree's root are the ones its tracker
//! must clean up when the root is killed. It talks over its stdin and stdout, a line at
//! a time.
use crate::matrix::{Ctx, RunResult, LONG};
use crate::probe;
use multiproc::{Process, SharedMemory};
use rustix::event::{poll, PollFd, PollFlags};
use std::io::{BufRead, Read, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

/// The environment variable that makes this binary a creator.
pub const ROLE: &str = "MP_CRASH_ROLE";
pub const CREATOR: &str = "shm-creator";
/// Marks every process of one run (creator, its children, its trackers).
const TAG: &str = "MP_CRASH_TAG";
const PREFIX: &str = "MP_CRASH_PREFIX";
const COUNT: &str = "MP_CRASH_SEGMENTS";
/// What a tracker's command line contains.
const TRACKER_ARGV0: &str = "shm-tracker";

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn create(name: &str) -> Result<(), String> {
    SharedMemory::create(Some(name), 4096)
        .map(SharedMemory::close)
        .map_err(|e| format!("create {name}: {e}"))
}

/// In a child of the creator: segments of its own.
fn child_creates(prefix: String) -> Result<(), String> {
    (0..2).try_for_each(|j| create(&format!("{prefix}c{j}")))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn creator() -> Result<(), String> {
    let prefix = std::env::var(PREFIX).map_err(|e| e.to_string())?;
    let n: u64 = std::env::var(COUNT)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("no segment count")?;
    let mut first = 0;
    for i in 0..n {
        create(&format!("{prefix}{i}"))?;
        if i == 0 {
            first = fd_count();
        }
        say(&format!("step {i}"));
    }
    say("waiting");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    create(&format!("{prefix}{n}"))?;
    let after = fd_count();
    let mut p = Process::new(child_creates, (prefix.clone(),))
        .start()
        .map_err(|e| e.to_string())?;
    p.join_timeout(LONG)
        .map_err(|e| format!("the creator's child: {e}"))??;
    say(&format!("done {first} {after}"));
    // Killed while it waits here.
    let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
    Ok(())
}

/// The creator's `main` (after `init()`).
pub fn creator_main() -> ! {
    let code = match creator() {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("error {e}"));
            1
        }
    };
    std::process::exit(code)
}

/// Reads the creator's lines, each within a deadline.
struct Lines {
    out: ChildStdout,
    buf: Vec<u8>,
}

impl Lines {
    fn next(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line).trim().to_string();
                if let Some(e) = line.strip_prefix("error ") {
                    return Err(format!("creator: {e}"));
                }
                return Ok(line);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = rustix::event::Timespec::try_from(left).map_err(|e| e.to_string())?;
            let mut p = [PollFd::new(&self.out, PollFlags::IN)];
            match poll(&mut p, Some(&ts)) {
                Ok(0) => return Err("the creator said nothing for 30 s".into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.to_string()),
            }
            let mut chunk = [0u8; 512];
            match self.out.read(&mut chunk) {
                Ok(0) => return Err("the creator's output ended".into()),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn until(&mut self, want: &str) -> Result<String, String> {
        loop {
            let line = self.next()?;
            if line.starts_with(want) {
                return Ok(line);
            }
        }
    }
}

fn trackers(tag: &str) -> Vec<i32> {
    probe::find_by_env(TRACKER_ARGV0, TAG, tag)
}

/// Drives the creator: kills its tracker after step `k` (and a random delay), lets it
/// go on, and returns the pidfds of the trackers alive at the end, and its fd counts.
fn drive(
    ctx: &mut Ctx,
    creator: &mut Child,
    lines: &mut Lines,
    k: u64,
) -> Result<(Vec<std::os::fd::OwnedFd>, usize, usize), String> {
    lines.until(&format!("step {k}"))?;
    let found = trackers(&ctx.tag);
    let [pid] = found[..] else {
        return Err(format!("expected one tracker, found {found:?}"));
    };
    let pidfd = probe::pidfd(pid)?;
    std::thread::sleep(ctx.rng.delay(2000));
    probe::kill(&pidfd)?;
    if !probe::wait_gone(&pidfd, LONG) {
        return Err(format!("the tracker {pid} survived SIGKILL"));
    }
    lines.until("waiting")?;
    let stdin = creator.stdin.as_mut().ok_or("no stdin")?;
    stdin
        .write_all(b"more\n")
        .and_then(|()| stdin.flush())
        .map_err(|e| e.to_string())?;
    let done = lines.until("done")?;
    let counts: Vec<usize> = done
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let [first, after] = counts[..] else {
        return Err(format!("bad line {done:?}"));
    };
    // The killed tracker was reaped by the creator, not left a zombie.
    for (pid, comm, state) in probe::children_of(creator.id() as i32) {
        if state == 'Z' {
            ctx.leak(format!("zombie {pid} ({comm}) in the creator"));
        }
    }
    let alive = trackers(&ctx.tag)
        .into_iter()
        .filter_map(|p| probe::pidfd(p).ok())
        .collect();
    Ok((alive, first, after))
}

/// Counts (as leaks) and removes what is left of this run's segments.
fn leftover_segments(ctx: &mut Ctx, prefix: &str) -> usize {
    let left = probe::segments(prefix);
    for s in &left {
        let _ = rustix::shm::unlink(format!("/{s}").as_str());
        ctx.leak(format!("/dev/shm/{s}"));
    }
    left.len()
}

pub fn scenario(ctx: &mut Ctx) -> RunResult {
    let prefix = format!("mpcrash-{}-{}-", std::process::id(), ctx.run);
    let n = ctx.rng.range(1, 12);
    let k = ctx.rng.range(0, n);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut creator = Command::new(exe)
        .env(ROLE, CREATOR)
        .env(TAG, &ctx.tag)
        .env(PREFIX, &prefix)
        .env(COUNT, n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let driven = match creator.stdout.take() {
        Some(out) => drive(
            ctx,
            &mut creator,
            &mut Lines {
                out,
                buf: Vec::new(),
            },
            k,
        ),
        None => Err("no stdout".into()),
    };
    // Whatever happened, the creator is killed now, and its trackers must clean up.
    let _ = creator.kill();
    let _ = creator.wait();
    let alive = match &driven {
        Ok((alive, first, after)) => {
            if first != after {
                ctx.leak(format!(
                    "the creator held {first} fds with its first tracker, {after} with the next"
                ));
            }
            alive.iter().collect()
        }
        Err(_) => Vec::new(),
    };
    for t in alive {
        if !probe::wait_gone(t, LONG) {
            return Err("a tracker outlived its creator by 30 s".into());
        }
    }
    if let Err(e) = driven {
        // Trackers still alive after a failed run: see them off before reporting.
        for p in trackers(&ctx.tag) {
            if let Ok(fd) = probe::pidfd(p) {
                probe::wait_gone(&fd, LONG);
            }
        }
        leftover_segments(ctx, &prefix);
        return Err(e);
    }
    match leftover_segments(ctx, &prefix) {
        0 => Ok(()),
        n => Err(format!(
            "{n} segments of the killed creator left in /dev/shm"
        )),
    }
}
