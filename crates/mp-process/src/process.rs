//! `Process`: the builder, the handle, and the registry of children that are joined (or,
//! for daemons, terminated) when the program's `main` returns.
use crate::context::{get_start_method, StartMethod};
use crate::current::state;
use crate::error::ProcessError;
use crate::launch;
use crate::target::{RemoteTarget, Target};
use crate::wire::{Bootstrap, Outcome, MAGIC, MAX_FRAME};
use mp_core::fdpass::recv_frame;
use mp_core::{Deadline, PrivateFd};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_send_signal, waitid, Pid, Signal, WaitId, WaitIdOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::ffi::OsStr;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// Python's `exitcode`: the code, or `-N` for signal N.
    pub fn exitcode(&self) -> i32 {
        match *self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => -s,
        }
    }
}

/// One child, shared by its handle and the registry.
#[derive(Debug)]
pub(crate) struct ChildEntry {
    pid: Pid,
    pidfd: PrivateFd,
    daemon: bool,
    name: String,
    status: Mutex<Option<ExitStatus>>,
}

impl ChildEntry {
    /// Reaps the child if it has exited by `deadline`; its status, or `None` if still running.
    fn reap(&self, deadline: Deadline) -> Option<ExitStatus> {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = *st {
            return Some(s);
        }
        let mut spin = true;
        loop {
            match waitid(
                WaitId::PidFd(self.pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                Ok(Some(w)) => {
                    let s = match (w.exit_status(), w.terminating_signal()) {
                        (Some(c), _) => ExitStatus::Exited(c),
                        (None, Some(sig)) => ExitStatus::Signaled(sig),
                        (None, None) => ExitStatus::Exited(0),
                    };
                    *st = Some(s);
                    return Some(s);
                }
                Ok(None) => {}
                Err(rustix::io::Errno::INTR) => continue,
                // ECHILD: reaped elsewhere (e.g. SIGCHLD ignored by the program); we
                // cannot know the code.
                Err(_) => {
                    *st = Some(ExitStatus::Exited(0));
                    return *st;
                }
            }
            if deadline.expired() {
                return None;
            }
            // A child that has just reported is exiting: look again for a few
            // microseconds before sleeping on the pidfd (see `mp_core::spin`).
            if spin && mp_core::spin::may_spin() {
                spin = false;
                let until = std::time::Instant::now() + mp_core::spin::SPIN;
                let mut found = false;
                while !found && std::time::Instant::now() < until && !deadline.expired() {
                    let mut p = [PollFd::new(&self.pidfd, PollFlags::IN)];
                    found = matches!(poll(&mut p, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0);
                    if !found {
                        std::hint::spin_loop();
                    }
                }
                mp_core::spin::spun(found);
                continue;
            }
            let mut p = [PollFd::new(&self.pidfd, PollFlags::IN)];
            match poll(&mut p, deadline.remaining_timespec().as_ref()) {
                Ok(0) => return None,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return None,
            }
        }
    }

    fn signal(&self, sig: Signal) -> Result<(), ProcessError> {
        if self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Ok(()); // already reaped: nothing to signal, as Python's terminate()
        }
        match pidfd_send_signal(&self.pidfd, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Bootstraps up to this size are written before the child is started (well below the
/// default Unix socket buffer, so the write never blocks).
const EARLY_BOOTSTRAP: usize = 64 << 10;

static CHILDREN: Mutex<Vec<Arc<ChildEntry>>> = Mutex::new(Vec::new());

pub(crate) fn children() -> std::sync::MutexGuard<'static, Vec<Arc<ChildEntry>>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reaps children that have finished (as Python does at each `start()`), so none is
/// left a zombie while the program runs.
fn reap_finished() {
    let mut list = children();
    list.retain(|c| c.reap(Deadline::from_now(Duration::ZERO)).is_none());
}

/// Python's exit sequence: terminate daemon children, then join every child.
pub(crate) fn exit_cleanup() {
    let list = std::mem::take(&mut *children());
    for c in list.iter().filter(|c| c.daemon) {
        let _ = c.signal(Signal::TERM);
    }
    for c in &list {
        c.reap(Deadline::NEVER);
    }
}

/// A summary of a live child, from [`active_children`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildInfo {
    /// Its pid.
    pub pid: i32,
    /// Its name.
    pub name: String,
    /// Whether it is a daemon.
    pub daemon: bool,
}

/// The children of this process that are still running (finished ones are reaped).
pub fn active_children() -> Vec<ChildInfo> {
    reap_finished();
    children()
        .iter()
        .map(|c| ChildInfo {
            pid: c.pid.as_raw_nonzero().get(),
            name: c.name.clone(),
            daemon: c.daemon,
        })
        .collect()
}

/// Sets up multiproc in this program; call it as the first line of `main` (or use
/// `#[multiproc::main]`).
///
/// In the program's first process it returns at once, after arranging for children to
/// be joined when `main` returns (daemon children are terminated). In a child it never
/// returns: it runs the task the parent sent, reports the result and exits. It is the
/// Rust form of Python's `if __name__ == "__main__":`, and without it starting a
/// process is an error, never a re-run of `main`.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Some(v) = std::env::var_os(launch::BOOTSTRAP_ENV) {
            std::env::remove_var(launch::BOOTSTRAP_ENV);
            crate::child::enter_spawned(&v);
        }
        if let Some(v) = std::env::var_os(launch::FORKSERVER_ENV) {
            std::env::remove_var(launch::FORKSERVER_ENV);
            crate::forkserver::serve(launch::take_bootstrap_fd(&v));
        }
        {
            let mut s = state();
            s.initialized = true;
            s.name = "MainProcess".to_string();
            match crate::current::random_key() {
                Ok(key) => s.authkey = key,
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "multiproc: random bytes for this program's authkey could not be read; \
                         starting a child will fail"
                    );
                    s.authkey_error = Some(e.to_string());
                }
            }
        }
        extern "C" fn at_exit() {
            let _ = std::panic::catch_unwind(exit_cleanup);
        }
        // SAFETY: registers a plain extern "C" fn that catches every panic.
        unsafe { libc::atexit(at_exit) };
    });
}

/// Builds a child process: `Process::new(target, args)`, then options, then `start()`.
#[must_use = "a builder does nothing until start() is called"]
pub struct ProcessBuilder<F, A> {
    target: F,
    args: A,
    name: Option<String>,
    daemon: bool,
    method: Option<StartMethod>,
    env: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    allow_fork_threads: bool,
    template: Option<crate::ForkTemplate>,
}

impl<F, A> ProcessBuilder<F, A>
where
    F: Target<A>,
    A: Serialize + DeserializeOwned + 'static,
{
    pub(crate) fn new(target: F, args: A) -> Self {
        ProcessBuilder {
            target,
            args,
            name: None,
            daemon: false,
            method: None,
            env: Vec::new(),
            allow_fork_threads: false,
            template: None,
        }
    }

    /// The child's name (`current_process().name` there); default `Process-N`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Makes the child a daemon: terminated when this program's `main` returns, killed
    /// if this process dies, and not allowed children of its own.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// The start method (default: [`crate::get_start_method`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Sets an environment variable in the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((
            key.as_ref().as_bytes().to_vec(),
            Some(value.as_ref().as_bytes().to_vec()),
        ));
        self
    }

    /// Removes an environment variable in the child.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().as_bytes().to_vec(), None));
        self
    }

    /// Allows the `fork` start method in a process that runs other threads. The child
    /// gets a copy of memory in which another thread may hold a lock (stdout's, another
    /// library's, one of yours) that will never be released there: use it only when you
    /// know the other threads hold none the child needs. This crate's own locks are held
    /// across the fork, so they are never inherited held.
    pub fn allow_fork_with_threads(mut self) -> Self {
        self.allow_fork_threads = true;
        self
    }

    /// Forks the child from `template` (see [`crate::ForkTemplate`]) rather than from
    /// this process: the start method is then `fork` (whatever
    /// [`start_method`](Self::start_method) says), and no thread check is made, since the
    /// template runs one thread. The child sees memory and fds as they were when the
    /// template was made.
    pub fn fork_from(mut self, template: &crate::ForkTemplate) -> Self {
        self.template = Some(template.clone());
        self
    }

    /// Starts the child.
    ///
    /// Fails, with no child started, when `init()` was not called, when this process is
    /// a daemon, when the arguments fail to serialize, or when `fork` is refused.
    pub fn start(self) -> Result<Process<F::Output>, ProcessError> {
        if !state().initialized {
            return Err(ProcessError::NotInitialized);
        }
        let authkey = crate::current::authkey()?;
        let (identity, parent_name) = {
            let mut s = state();
            if s.daemon {
                return Err(ProcessError::DaemonCannotHaveChildren);
            }
            s.counter += 1;
            let mut id = s.identity.clone();
            id.push(s.counter);
            (id, s.name.clone())
        };
        reap_finished();
        let (args, fds) = mp_core::handles::encode(&self.args).map_err(ProcessError::ArgsEncode)?;
        let (handle_names, handle_fds) = library_handles();
        let method = match self.template {
            Some(_) => StartMethod::Fork,
            None => self.method.unwrap_or_else(get_start_method),
        };
        let name = self.name.unwrap_or_else(|| {
            let ids: Vec<String> = identity.iter().map(u32::to_string).collect();
            format!("Process-{}", ids.join(":"))
        });
        let boot = Bootstrap {
            magic: MAGIC,
            target: RemoteTarget::of::<F, A>(self.target)?,
            target_key: *crate::secret::key().map_err(ProcessError::Start)?,
            name: name.clone(),
            identity,
            daemon: self.daemon,
            parent_pid: rustix::process::getpid().as_raw_nonzero().get(),
            parent_name,
            authkey,
            start_method: method,
            env: self.env,
            args,
            handles: handle_names,
        };
        let boot_bytes = postcard::to_allocvec(&boot)
            .map_err(|e| ProcessError::ArgsEncode(mp_core::Error::encode::<Bootstrap>(e)))?;
        // A larger bootstrap, or one carrying argument fds, is written once the child
        // runs (and reads), since before that the write might not finish. The few library
        // handles ride along either way.
        let early = boot_bytes.len() <= EARLY_BOOTSTRAP && fds.is_empty();

        // A child forked by a server (the forkserver, a template) gets its bootstrap only
        // once the server has told us its pid, over a channel of its own for each attempt:
        // a server that dies between its fork and its reply leaves a child that never
        // runs the task (see `crate::forkserver::reap_orphan`). Such a child announces its
        // pid first on its socket, which join reads past.
        let (pid, ours, server) = match (method, &self.template) {
            (_, Some(template)) => {
                let (pid, ours) = template.fork_child()?;
                (pid, ours, true)
            }
            (StartMethod::Forkserver, None) => {
                let (pid, ours) = crate::forkserver::forkserver()?;
                (pid, ours, true)
            }
            (StartMethod::Spawn | StartMethod::Fork, None) => {
                let (ours, theirs) = channel()?;
                // A bootstrap that fits in the socket buffer is written before the child
                // exists, so the child never waits for it (the pid of a child that this
                // process starts itself is known once it exists).
                if early {
                    send_bootstrap(ours.as_fd(), &boot_bytes, &fds, &handle_fds)?;
                }
                let pid = if method == StartMethod::Spawn {
                    launch::spawn_exec(&theirs, launch::BOOTSTRAP_ENV, launch::StartMask::Empty)
                        .map_err(ProcessError::Start)?
                } else {
                    crate::fork::fork(&theirs, self.allow_fork_threads)?
                };
                drop(theirs);
                (pid, ours, false)
            }
        };
        let early = early && !server;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        let pidfd = PrivateFd::new(pidfd)?;
        let entry = Arc::new(ChildEntry {
            pid,
            pidfd,
            daemon: self.daemon,
            name,
            status: Mutex::new(None),
        });
        children().push(entry.clone());
        if !early {
            // If the child died before reading, join reports how it ended.
            let _ = send_bootstrap(ours.as_fd(), &boot_bytes, &fds, &handle_fds);
        }
        drop(handle_fds);
        Ok(Process {
            entry,
            reply: Reply::Pending(ours),
            announced: server,
            method,
            _result: PhantomData,
        })
    }
}

/// A fresh channel of the library's own (a child's bootstrap socket, a helper's control
/// socket): our end, the other end, both private from the start, so a child forked
/// meanwhile by another thread holds neither.
pub(crate) fn channel() -> std::io::Result<(PrivateFd, PrivateFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok((PrivateFd::new(ours)?, PrivateFd::new(theirs)?))
}

/// A copy of each library handle the tree shares (see `mp_core::inherit`) for one child:
/// their names and fds. One that cannot be made is left out, with a warning: the child
/// then does without (mp-shm, say, starts a tracker of its own).
fn library_handles() -> (Vec<String>, Vec<PrivateFd>) {
    let mut names = Vec::new();
    let mut fds = Vec::new();
    for (name, fd) in mp_core::inherit::gather() {
        match fd {
            Ok(fd) => {
                names.push(name.to_string());
                fds.push(fd);
            }
            Err(e) => tracing::warn!(
                handle = name,
                error = %e,
                "a library handle could not be made for a child, which does without it"
            ),
        }
    }
    (names, fds)
}

/// Sends the bootstrap frame: the argument fds, then the library handles.
fn send_bootstrap(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[OwnedFd],
    handles: &[PrivateFd],
) -> std::io::Result<()> {
    let mut header = [0u8; mp_core::frame::MAX_HEADER];
    let header = mp_core::frame::encode_header(bytes.len(), &mut header);
    let all: Vec<BorrowedFd<'_>> = fds
        .iter()
        .map(AsFd::as_fd)
        .chain(handles.iter().map(AsFd::as_fd))
        .collect();
    mp_core::fdpass::send_all(sock, &[header, bytes], &all)
}

enum Reply {
    /// Not read yet: the socket to read it from.
    Pending(PrivateFd),
    /// Read: the outcome (if one came before end of file) and its fds.
    Read(Option<(Outcome, Vec<OwnedFd>)>),
    /// Handed to the caller by `join`.
    Taken,
}

/// A started child process, returning an `R` (Python's `multiprocessing.Process`).
///
/// Dropping the handle neither kills nor detaches the child: it is still joined when
/// `main` returns (or terminated then, for a daemon).
pub struct Process<R> {
    entry: Arc<ChildEntry>,
    reply: Reply,
    /// Whether the child's pid announcement (a server's child sends one first) is still
    /// to be read past.
    announced: bool,
    method: StartMethod,
    _result: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.entry.name)
            .field("pid", &self.entry.pid)
            .field("daemon", &self.entry.daemon)
            .field("start_method", &self.method)
            .field("exitcode", &self.exitcode())
            .finish()
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// A builder for a child that runs `target(args...)`; `args` is a tuple.
    ///
    /// `target` is a `fn` item or a non-capturing closure: it must name code, not carry
    /// data, since the child runs its own copy of this executable.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<F, A>(target: F, args: A) -> ProcessBuilder<F, A>
    where
        F: Target<A, Output = R>,
        A: Serialize + DeserializeOwned + 'static,
    {
        ProcessBuilder::new(target, args)
    }

    /// Waits for the child to finish and returns what the target returned, or how it
    /// failed (a panic with its message and location, an early exit, a signal).
    pub fn join(&mut self) -> Result<R, ProcessError> {
        self.join_until(Deadline::NEVER, Duration::MAX)
    }

    /// As [`join`](Self::join), waiting at most `timeout`: [`ProcessError::Timeout`] if
    /// the child is still running then (it keeps running; join again later).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R, ProcessError> {
        self.join_until(Deadline::from_now(timeout), timeout)
    }

    fn join_until(&mut self, deadline: Deadline, timeout: Duration) -> Result<R, ProcessError> {
        while let Reply::Pending(sock) = &self.reply {
            let mut p = [PollFd::new(sock, PollFlags::IN)];
            loop {
                match poll(&mut p, deadline.remaining_timespec().as_ref()) {
                    Ok(0) => return Err(ProcessError::Timeout(timeout)),
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let got = recv_frame(sock.as_fd(), MAX_FRAME);
            if self.announced {
                // A server's child: first its pid, then (if it ran) its outcome.
                self.announced = false;
                if matches!(&got, Ok((b, f)) if f.is_empty() && b[..] == self.entry.pid.as_raw_nonzero().get().to_be_bytes())
                {
                    continue;
                }
            }
            let got = got.ok().and_then(|(bytes, fds)| {
                postcard::from_bytes::<Outcome>(&bytes)
                    .ok()
                    .map(|o| (o, fds))
            });
            self.reply = Reply::Read(got);
        }
        let status = self
            .entry
            .reap(deadline)
            .ok_or(ProcessError::Timeout(timeout))?;
        self.unregister();
        match std::mem::replace(&mut self.reply, Reply::Taken) {
            Reply::Taken => Err(ProcessError::AlreadyJoined),
            Reply::Pending(_) => Err(ProcessError::AlreadyJoined),
            Reply::Read(Some((Outcome::Ok(bytes), fds))) => {
                mp_core::handles::decode(&bytes, fds).map_err(ProcessError::ResultDecode)
            }
            Reply::Read(Some((Outcome::Panicked { message, location }, _))) => {
                Err(ProcessError::Panicked { message, location })
            }
            Reply::Read(Some((Outcome::ResultEncode(m), _))) => Err(ProcessError::ResultEncode(m)),
            Reply::Read(Some((Outcome::Bootstrap(m), _))) => Err(ProcessError::Bootstrap(m)),
            Reply::Read(None) => Err(match status {
                ExitStatus::Exited(c) => ProcessError::Exited(c),
                ExitStatus::Signaled(s) => ProcessError::Signaled(s),
            }),
        }
    }
}

impl<R> Process<R> {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.entry.pid.as_raw_nonzero().get()
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Whether the child is a daemon.
    pub fn daemon(&self) -> bool {
        self.entry.daemon
    }

    /// The start method it was started with.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// How the child ended, without waiting: `None` while it runs.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let status = self.entry.reap(Deadline::from_now(Duration::ZERO));
        if status.is_some() {
            self.unregister();
        }
        status
    }

    /// Takes a reaped child out of the registry of children, so its pidfd closes with
    /// the last handle (a pool that drops its workers' handles keeps no pidfd).
    fn unregister(&self) {
        children().retain(|c| !Arc::ptr_eq(c, &self.entry));
    }

    /// Python's `exitcode`: `None` while running, 0, N after `exit(N)` (1 after a
    /// panic), or -N after signal N.
    pub fn exitcode(&self) -> Option<i32> {
        self.exit_status().map(|s| s.exitcode())
    }

    /// Whether the child is still running.
    pub fn is_alive(&self) -> bool {
        self.exit_status().is_none()
    }

    /// A pidfd that becomes readable when the child exits: poll it, or pass it to
    /// `mp_pipe::wait` beside Connections.
    pub fn sentinel(&self) -> BorrowedFd<'_> {
        self.entry.pidfd.as_fd()
    }

    /// Sends SIGTERM (Python's `terminate()`); join afterwards.
    pub fn terminate(&self) -> Result<(), ProcessError> {
        self.entry.signal(Signal::TERM)
    }

    /// Sends SIGKILL (Python's `kill()`); join afterwards.
    pub fn kill(&self) -> Result<(), ProcessError> {
        self.entry.signal(Signal::KILL)
    }

    /// Sends any signal, through the pidfd (never to a recycled pid).
    pub fn send_signal(&self, signal: Signal) -> Result<(), ProcessError> {
        self.entry.signal(signal)
    }
}
