//! What a crash can leave behind, read from `/proc` and `/dev/shm`: the survivor's fds,
//! its children (zombies, strays), named segments, and processes found by their
//! environment; and waits on processes that are not ours to reap (pidfds).
use rustix::event::{poll, PollFd, PollFlags};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// The open fds of this process: number -> what it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fds(BTreeMap<i32, String>);

impl Fds {
    pub fn take() -> Fds {
        let me = format!("/proc/{}/fd", std::process::id());
        let mut m = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return Fds(m);
        };
        for e in dir.flatten() {
            let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            // The directory being read has an fd of its own: not ours to count.
            match std::fs::read_link(e.path()) {
                Ok(t) if t.to_string_lossy() == me => {}
                Ok(t) => {
                    m.insert(n, t.to_string_lossy().into_owned());
                }
                // Closed between the listing and the read: it is gone.
                Err(_) => {}
            }
        }
        Fds(m)
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The fds open now that were not open (or were something else) in `before`.
    pub fn new_since(&self, before: &Fds) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, t)| before.0.get(n) != Some(t))
            .map(|(n, t)| format!("fd {n} -> {t}"))
            .collect()
    }
}

/// One entry of `/proc/<pid>/stat`: (pid, comm, state, ppid).
fn stat(pid: i32) -> Option<(String, char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The children of `parent`: (pid, comm, state).
pub fn children_of(parent: i32) -> Vec<(i32, String, char)> {
    pids()
        .into_iter()
        .filter_map(|p| {
            let (comm, state, ppid) = stat(p)?;
            (ppid == parent).then_some((p, comm, state))
        })
        .collect()
}

/// Children of this process that are zombies, or alive and not in `expected`: their
/// pids and what they are.
pub fn stray_children(expected: &[i32]) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    children_of(me)
        .into_iter()
        .filter_map(|(pid, comm, state)| match state {
            'Z' => Some((
                pid,
                format!("zombie child {pid} ({comm}, {})", exit_of(pid)),
            )),
            _ if expected.contains(&pid) => None,
            _ => Some((pid, format!("stray child {pid} ({comm}, state {state})"))),
        })
        .collect()
}

/// How a zombie ended, from its wait status (field 52 of `/proc/<pid>/stat`).
fn exit_of(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            let (_, rest) = t.rsplit_once(')')?;
            rest.split_whitespace().nth(49)?.parse::<i32>().ok()
        });
    match status {
        Some(s) if s & 0x7f == 0 => format!("exited with {}", (s >> 8) & 0xff),
        Some(s) => format!("killed by signal {}", s & 0x7f),
        None => "status unknown".into(),
    }
}

/// Entries of `/dev/shm` whose name starts with `prefix`.
pub fn segments(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Processes whose first argument contains `argv0` and whose environment holds
/// `key=value` (only processes of this user can be read).
pub fn find_by_env(argv0: &str, key: &str, value: &str) -> Vec<i32> {
    let want = format!("{key}={value}");
    pids()
        .into_iter()
        .filter(|p| {
            let Ok(cmd) = std::fs::read(format!("/proc/{p}/cmdline")) else {
                return false;
            };
            let first = cmd.split(|b| *b == 0).next().unwrap_or_default();
            if !String::from_utf8_lossy(first).contains(argv0) {
                return false;
            }
            let Ok(env) = std::fs::read(format!("/proc/{p}/environ")) else {
                return false;
            };
            env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
        })
        .collect()
}

/// A pidfd of any process (not necessarily our child), to signal it and see it end.
pub fn pidfd(pid: i32) -> Result<OwnedFd, String> {
    let p = rustix::process::Pid::from_raw(pid).ok_or("pid 0")?;
    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("pidfd_open({pid}): {e}"))
}

/// Waits until the process of `pidfd` has ended; false after `timeout`.
pub fn wait_gone(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(ts) = rustix::event::Timespec::try_from(left) else {
            return false;
        };
        let mut p = [PollFd::new(pidfd, PollFlags::IN)];
        match poll(&mut p, Some(&ts)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// SIGKILL through a pidfd.
pub fn kill(pidfd: &OwnedFd) -> Result<(), String> {
    rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL)
        .map_err(|e| format!("kill: {e}"))
}

/// SIGKILL to a child of ours that is not reaped yet (so its pid is not reused).
pub fn kill_child(pid: i32) -> Result<(), String> {
    let p = rustix::process::Pid::from_raw(pid).ok_or("pid 0")?;
    rustix::process::kill_process(p, rustix::process::Signal::KILL)
        .map_err(|e| format!("kill({pid}): {e}"))
}
