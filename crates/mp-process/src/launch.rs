//! Creating a child: spawn (posix_spawn of `/proc/self/exe`), fork, and the forkserver.
//!
//! What a child holds of its parent's fds:
//! - spawn (and the forkserver itself): only its bootstrap socket, at [`CHILD_FD`]; every
//!   other fd is closed before the new program starts (a `closefrom` file action of
//!   posix_spawn, or, on a C library without it, by the child at start). The child makes
//!   the socket close-on-exec and private at once.
//! - fork (and a child of the forkserver): every fd of the parent, at the same numbers, as
//!   in Python, except the library's private ones ([`mp_core::PrivateFd`]: pidfds, the
//!   parent's ends of bootstrap sockets, the forkserver's control socket, the parent pidfd
//!   of a child), which are neutralised at once; its bootstrap socket stays at the number
//!   it had in the parent, close-on-exec.
//!
//! So no program a child execs inherits anything of ours, and everything else a child
//! needs (argument fds included) arrives over its bootstrap socket.
use crate::child;
use crate::error::ProcessError;
use mp_core::fdpass::{recv_frame, send_all, send_frame};
use mp_core::{Deadline, PrivateFd};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::Pid;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::time::Duration;

/// The fd number of the bootstrap socket in a spawned child (and of the control socket
/// in the forkserver).
pub(crate) const CHILD_FD: i32 = 3;
/// Marks a spawned child; the value says where its bootstrap fd is (see [`marker_value`]).
pub(crate) const BOOTSTRAP_ENV: &str = "MULTIPROC_BOOTSTRAP";
/// Marks a spawned forkserver; the value says where its control fd is.
pub(crate) const FORKSERVER_ENV: &str = "MULTIPROC_FORKSERVER";

/// The marker's value: `3` when every fd above it was closed by posix_spawn, `3,close`
/// when the child must close them itself (no `closefrom` file action here).
fn marker_value(closed: bool) -> String {
    if closed {
        format!("{CHILD_FD}")
    } else {
        format!("{CHILD_FD},close")
    }
}

/// In a spawned child or forkserver, first thing: checks the marker, closes the fds the
/// parent could not, and takes the bootstrap socket (close-on-exec, private). Exits with
/// [`child::EXIT_BOOTSTRAP`] if the marker or the fd is not what the parent sends.
pub(crate) fn take_bootstrap_fd(value: &std::ffi::OsStr) -> PrivateFd {
    let close = match value.to_str() {
        Some(v) if v == marker_value(true) => false,
        Some(v) if v == marker_value(false) => true,
        _ => std::process::exit(child::EXIT_BOOTSTRAP),
    };
    if close {
        // SAFETY: this process has just started (init() is the first line of main), so no
        // Rust object owns an fd above the bootstrap socket: all of them are inherited
        // leftovers of the parent's that this C library could not close at spawn.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                (CHILD_FD + 1) as libc::c_uint,
                libc::c_uint::MAX,
                0 as libc::c_uint,
            )
        };
    }
    // SAFETY: only an fstat, before the fd is owned; CHILD_FD is open (checked by fstat).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(CHILD_FD) };
    match rustix::fs::fstat(fd) {
        Ok(st)
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket => {}
        _ => std::process::exit(child::EXIT_BOOTSTRAP),
    }
    // SAFETY: the parent put our socket at CHILD_FD (a socket, checked just above) and
    // nothing else in this fresh process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(CHILD_FD) };
    PrivateFd::new(fd).unwrap_or_else(|_| std::process::exit(child::EXIT_BOOTSTRAP))
}

/// The type of glibc's `posix_spawn_file_actions_addclosefrom_np`.
type AddCloseFrom =
    unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, libc::c_int) -> libc::c_int;

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), looked up at run
/// time so that a program built here still runs on an older C library, whose children
/// then close the inherited fds themselves.
fn addclosefrom() -> Option<AddCloseFrom> {
    static ADDR: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let addr = *ADDR.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name; it only looks the symbol up.
        unsafe {
            libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addclosefrom_np".as_ptr(),
            ) as usize
        }
    });
    // SAFETY: a non-null address of this symbol is glibc's function, whose C prototype is
    // `int (posix_spawn_file_actions_t *, int)`, the type named here.
    (addr != 0).then(|| unsafe { std::mem::transmute::<usize, AddCloseFrom>(addr) })
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL byte in an argument or env var",
        )
    })
}

/// Re-executes this program with `fd` at [`CHILD_FD`] and no other fd above stderr, stdin
/// on /dev/null, an empty signal mask, and `marker` in its environment.
pub(crate) fn spawn_exec(fd: &PrivateFd, marker: &str) -> io::Result<Pid> {
    // dup2 onto the same number would not clear close-on-exec: keep the source elsewhere.
    let moved;
    let src = if fd.as_raw_fd() == CHILD_FD {
        moved = rustix::io::fcntl_dupfd_cloexec(fd, CHILD_FD + 1)?;
        moved.as_raw_fd()
    } else {
        fd.as_raw_fd()
    };
    let path = cstring(b"/proc/self/exe")?;
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("multiproc-child"));
    let argv_c = [cstring(argv0.as_bytes())?];
    let mut env_c = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k == BOOTSTRAP_ENV || k == FORKSERVER_ENV {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_c.push(cstring(&kv)?);
    }
    let closefrom = addclosefrom();
    let value = marker_value(closefrom.is_some());
    env_c.push(cstring(format!("{marker}={value}").as_bytes())?);
    let argv: Vec<*mut libc::c_char> = argv_c
        .iter()
        .map(|c| c.as_ptr() as *mut libc::c_char)
        .chain([std::ptr::null_mut()])
        .collect();
    let envp: Vec<*mut libc::c_char> = env_c
        .iter()
        .map(|c| c.as_ptr() as *mut libc::c_char)
        .chain([std::ptr::null_mut()])
        .collect();
    let devnull = cstring(b"/dev/null")?;

    // SAFETY: every pointer handed to libc below points into a live local (the CStrings
    // and the NULL-terminated pointer arrays outlive the call); the file actions and
    // attributes are initialized before use and destroyed exactly once; `closefrom` is
    // the C library's own function (see `addclosefrom`).
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let mut rc = libc::posix_spawn_file_actions_init(&mut fa);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        rc = libc::posix_spawnattr_init(&mut attr);
        if rc != 0 {
            libc::posix_spawn_file_actions_destroy(&mut fa);
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        let mut pid: libc::pid_t = 0;
        rc = libc::posix_spawn_file_actions_adddup2(&mut fa, src, CHILD_FD);
        if rc == 0 {
            rc = libc::posix_spawn_file_actions_addopen(
                &mut fa,
                0,
                devnull.as_ptr(),
                libc::O_RDONLY,
                0,
            );
        }
        if let (0, Some(closefrom)) = (rc, closefrom) {
            rc = closefrom(&mut fa, CHILD_FD + 1);
        }
        if rc == 0 {
            rc = libc::posix_spawnattr_setflags(
                &mut attr,
                libc::POSIX_SPAWN_SETSIGMASK as libc::c_short,
            );
        }
        if rc == 0 {
            rc = libc::posix_spawnattr_setsigmask(&mut attr, &empty);
        }
        if rc == 0 {
            rc = libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &fa,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            );
        }
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::posix_spawnattr_destroy(&mut attr);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Pid::from_raw(pid).ok_or_else(|| io::Error::other("posix_spawn returned pid 0"))
    }
}

/// In a freshly forked child (of this process or of the forkserver): neutralises every
/// private fd but `sock`, lets go of the parent's records, and runs the child with `sock`
/// as its bootstrap socket, where it already is. The user's fds stay open. Never returns.
fn after_fork(sock: &PrivateFd) -> ! {
    // SAFETY: the child of a fork runs one thread, this one.
    if unsafe { mp_core::private_fd::neutralize_inherited(&[sock.as_fd()]) }.is_err() {
        // SAFETY: ends the child at once, dropping nothing (see neutralize_inherited).
        unsafe { libc::_exit(child::EXIT_BOOTSTRAP) }
    }
    child::let_go_inherited();
    // SAFETY: `sock` is owned by a frame of the parent's code (ProcessBuilder::start, or
    // the forkserver's loop) that this child never returns to, unwinds or drops: from now
    // on the child is its only owner.
    let own = unsafe { OwnedFd::from_raw_fd(sock.as_raw_fd()) };
    match PrivateFd::new(own) {
        Ok(sock) => child::child_main(sock),
        // SAFETY: as above.
        Err(_) => unsafe { libc::_exit(child::EXIT_BOOTSTRAP) },
    }
}

/// Forks the calling process; the child runs its task and exits.
pub(crate) fn fork(fd: &PrivateFd, allow_threads: bool) -> Result<Pid, ProcessError> {
    if !allow_threads {
        let threads = crate::current::thread_count().map_err(ProcessError::ThreadCountUnknown)?;
        if threads > 1 {
            return Err(ProcessError::ForkWithThreads { threads });
        }
    }
    // Unflushed output would otherwise be written twice, once by each process.
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
    }
    // SAFETY: fork in a single-threaded process (checked above, or explicitly allowed
    // by the caller, who takes on that other threads' locks may be held); the child
    // only runs our bootstrap and the target, then exits without returning.
    match unsafe { libc::fork() } {
        -1 => Err(ProcessError::Start(io::Error::last_os_error())),
        0 => after_fork(fd),
        pid => Pid::from_raw(pid)
            .ok_or_else(|| ProcessError::Start(io::Error::other("fork returned pid 0"))),
    }
}

// ---------------------------------------------------------------------------------
// forkserver

struct Server {
    pid: Pid,
    pidfd: PrivateFd,
    control: PrivateFd,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// How long a forkserver may take to answer one request.
const SERVER_REPLY: Duration = Duration::from_secs(30);

fn start_server() -> io::Result<Server> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let (ours, theirs) = (PrivateFd::new(ours)?, PrivateFd::new(theirs)?);
    let pid = spawn_exec(&theirs, FORKSERVER_ENV)?;
    drop(theirs);
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    Ok(Server {
        pid,
        pidfd: PrivateFd::new(pidfd)?,
        control: ours,
    })
}

fn reap_server(s: Server) {
    let _ = rustix::process::pidfd_send_signal(&s.pidfd, rustix::process::Signal::KILL);
    drop(s.control);
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(s.pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    );
    let _ = s.pid;
}

fn ask(server: &Server, fd: &PrivateFd) -> mp_core::Result<Pid> {
    let mut header = [0u8; mp_core::frame::MAX_HEADER];
    let header = mp_core::frame::encode_header(1, &mut header);
    send_all(server.control.as_fd(), &[header, b"F"], &[fd.as_fd()])?;
    let deadline = Deadline::from_now(SERVER_REPLY);
    let mut p = [PollFd::new(&server.control, PollFlags::IN)];
    loop {
        match poll(&mut p, deadline.remaining_timespec().as_ref()) {
            Ok(0) => return Err(mp_core::Error::Timeout),
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let (reply, _) = recv_frame(server.control.as_fd(), 16)?;
    let raw = <[u8; 4]>::try_from(&reply[..])
        .map(i32::from_be_bytes)
        .map_err(|_| mp_core::Error::BadFrame("bad forkserver reply".into()))?;
    if raw < 0 {
        return Err(mp_core::Error::Io(io::Error::from_raw_os_error(-raw)));
    }
    Pid::from_raw(raw).ok_or_else(|| mp_core::Error::BadFrame("forkserver replied pid 0".into()))
}

/// Asks the forkserver (started on first use, restarted if it died) for a child.
pub(crate) fn forkserver(fd: &PrivateFd) -> Result<Pid, ProcessError> {
    let mut guard = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    let mut last = String::new();
    for _ in 0..2 {
        if guard.is_none() {
            *guard = Some(
                start_server()
                    .map_err(|e| ProcessError::Forkserver(format!("could not start it: {e}")))?,
            );
        }
        let Some(server) = guard.as_ref() else {
            continue;
        };
        match ask(server, fd) {
            Ok(pid) => return Ok(pid),
            Err(e) => {
                // Dead or wedged: replace it, and try once more.
                last = e.to_string();
                if let Some(s) = guard.take() {
                    reap_server(s);
                }
            }
        }
    }
    Err(ProcessError::Forkserver(format!(
        "it failed twice, last with: {last}"
    )))
}

/// The pid of the running forkserver, if one was started (for tests and diagnostics).
pub fn forkserver_pid() -> Option<i32> {
    SERVER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|s| s.pid.as_raw_nonzero().get())
}

/// In a forked child: drops the parent's forkserver connection, whose fds are already
/// placeholders (so only those are closed); the child starts its own server if it needs one.
pub(crate) fn let_go_server() {
    let server = match SERVER.try_lock() {
        Ok(mut g) => g.take(),
        // A fork while another thread held the lock (only with allow_fork_with_threads):
        // leave it; this child never uses it.
        Err(_) => None,
    };
    drop(server);
}

/// The forkserver's loop: for each request, fork a child that becomes a child of the
/// server's parent (CLONE_PARENT), so the parent waits for it with its own pidfd.
/// Exits when the parent closes the control socket. Never returns.
pub(crate) fn serve(control: PrivateFd) -> ! {
    // Read once here, so every child forked below inherits it instead of asking again.
    let _ = crate::wire::ExeId::cached();
    loop {
        let (_, mut fds) = match recv_frame(control.as_fd(), 64) {
            Ok(r) => r,
            Err(_) => std::process::exit(0),
        };
        let Some(fd) = fds.pop() else {
            std::process::exit(1)
        };
        let Ok(fd) = PrivateFd::new(fd) else {
            std::process::exit(1)
        };
        // SAFETY: the server is single-threaded (it runs only this loop, started fresh by
        // exec), so a clone without CLONE_VM is a plain fork; the child never returns
        // into this loop.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid == 0 {
            after_fork(&fd);
        }
        let reply = if pid < 0 {
            -io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EAGAIN)
        } else {
            pid as i32
        };
        drop(fd);
        if send_frame(control.as_fd(), &reply.to_be_bytes(), &[]).is_err() {
            std::process::exit(0);
        }
    }
}
