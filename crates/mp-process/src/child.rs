//! The child's side: read the bootstrap, become the named process, run the target,
//! send the outcome, clean up our own children, exit.
use crate::current::{state, ParentProcess};
use crate::target::Entry;
use crate::wire::{Bootstrap, Outcome, MAGIC, MAX_FRAME};
use mp_core::fdpass::{recv_frame, send_frame};
use mp_core::PrivateFd;
use std::cell::RefCell;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

thread_local! {
    /// The last panic this thread's panic hook saw: message and location. Per thread, so
    /// that a panic on another thread is never taken for the target's.
    static LAST_PANIC: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
}

/// Exit code of a child whose bootstrap failed before its target could run.
pub(crate) const EXIT_BOOTSTRAP: i32 = 70;

/// A spawned child: takes its bootstrap socket (the env var's value says where) and runs.
pub(crate) fn enter_spawned(value: &std::ffi::OsStr) -> ! {
    child_main(crate::launch::take_bootstrap_fd(value))
}

/// Runs the task announced on `sock`, reports, cleans up and exits. Never returns.
pub(crate) fn child_main(sock: PrivateFd) -> ! {
    let (code, outcome) = run(&sock);
    crate::process::exit_cleanup();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: flushes C stdio; no Rust object is involved.
    unsafe { libc::fflush(std::ptr::null_mut()) };
    // The outcome goes last, so that a parent woken by it finds this process already
    // exiting (usually saving it a second sleep before it can reap us).
    if let Some((outcome, fds)) = outcome {
        if let Ok(bytes) = postcard::to_allocvec(&outcome) {
            // The parent may have dropped its handle: nobody to tell, nothing to do.
            let _ = send_frame(sock.as_fd(), &bytes, &fds);
        }
    }
    drop(sock);
    // As Python's children do (`os._exit` after flushing): the atexit handlers of a
    // forked child are its parent's, and are not the child's to run.
    // SAFETY: _exit ends the process at once, after our own cleanup above, running no
    // handler and no destructor.
    unsafe { libc::_exit(code) }
}

/// What the child reports: its outcome and the fds that go with it.
type Report = Option<(Outcome, Vec<OwnedFd>)>;

fn failed(why: String) -> (i32, Report) {
    (EXIT_BOOTSTRAP, Some((Outcome::Bootstrap(why), Vec::new())))
}

/// Runs the task: the exit code, and what to report.
fn run(sock: &PrivateFd) -> (i32, Report) {
    let (bytes, fds) = match recv_frame(sock.as_fd(), MAX_FRAME) {
        Ok(r) => r,
        Err(_) => return (EXIT_BOOTSTRAP, None), // the parent went away before telling us anything
    };
    let mut boot: Bootstrap = match postcard::from_bytes(&bytes) {
        Ok(b) => b,
        Err(e) => return failed(format!("bad bootstrap message: {e}")),
    };
    if boot.magic != MAGIC {
        return failed("bootstrap message of another version".into());
    }
    if let Err(why) = crate::secret::adopt(boot.target_key) {
        return failed(why.into());
    }
    // Checks the executable's identity and the tree's tag before resolving anything.
    let entry = match boot.target.entry() {
        Ok(e) => e,
        Err(e) => return failed(e.to_string()),
    };
    // The library handles the tree shares are the last fds; the rest are the arguments'.
    let mut fds = fds;
    let Some(at) = fds.len().checked_sub(boot.handles.len()) else {
        return failed("the bootstrap names more library handles than it carries fds".into());
    };
    let handles = std::mem::take(&mut boot.handles).into_iter();
    if let Err(e) = mp_core::inherit::receive(handles.zip(fds.split_off(at)).collect()) {
        return failed(e.to_string());
    }
    become_child(&boot);
    let (outcome, out_fds) = run_entry(entry, boot.target.type_hash(), &boot.args, fds);
    let code = i32::from(!matches!(outcome, Outcome::Ok(_)));
    (code, Some((outcome, out_fds)))
}

/// Takes on the name, family and environment the parent gave.
fn become_child(boot: &Bootstrap) {
    use std::os::unix::ffi::OsStrExt;
    for (k, v) in &boot.env {
        let k = std::ffi::OsStr::from_bytes(k);
        // The child is still single-threaded here: nothing reads the environment
        // concurrently.
        match v {
            Some(v) => std::env::set_var(k, std::ffi::OsStr::from_bytes(v)),
            None => std::env::remove_var(k),
        }
    }
    let parent_pidfd = rustix::process::Pid::from_raw(boot.parent_pid)
        .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok())
        .and_then(|fd| PrivateFd::new(fd).ok())
        .map(Arc::new);
    let ppid = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    let parent_alive = parent_pidfd.is_some() && ppid == Some(boot.parent_pid);
    // As Python's children do: the method this process was started with is its default,
    // so its own children use it unless told otherwise.
    let _ = crate::context::set_start_method(boot.start_method, true);
    {
        let mut s = state();
        s.initialized = true;
        s.name = boot.name.clone();
        s.identity = boot.identity.clone();
        s.daemon = boot.daemon;
        s.authkey = boot.authkey;
        s.counter = 0;
        s.parent = Some(ParentProcess {
            pid: boot.parent_pid,
            name: boot.parent_name.clone(),
            pidfd: parent_pidfd.clone(),
        });
    }
    if boot.daemon {
        // A daemon dies with its parent (Python leaves it running if the parent is
        // SIGKILLed; we do not). A thread watches the parent's pidfd, so this holds
        // whichever thread of the parent started us.
        match parent_pidfd {
            Some(fd) if parent_alive => {
                let _ = std::thread::Builder::new()
                    .name("multiproc-parent-watch".into())
                    .spawn(move || loop {
                        let mut p = [rustix::event::PollFd::new(
                            &*fd,
                            rustix::event::PollFlags::IN,
                        )];
                        if let Ok(n) = rustix::event::poll(&mut p, None) {
                            if n > 0 {
                                let _ = rustix::process::kill_process(
                                    rustix::process::getpid(),
                                    rustix::process::Signal::KILL,
                                );
                            }
                        }
                    });
            }
            _ => {
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
            }
        }
    }
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

/// Calls a trampoline, turning a panic into [`Outcome::Panicked`] with the message and
/// location our panic hook saw.
pub(crate) fn run_entry(
    entry: Entry,
    hash: u64,
    args: &[u8],
    fds: Vec<OwnedFd>,
) -> (Outcome, Vec<OwnedFd>) {
    install_panic_hook();
    LAST_PANIC.with(|p| p.borrow_mut().take());
    match catch_unwind(AssertUnwindSafe(|| entry(hash, args, fds))) {
        Ok(r) => r,
        Err(payload) => {
            let (message, location) = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| (payload_text(&*payload), None));
            (Outcome::Panicked { message, location }, Vec::new())
        }
    }
}

/// Installs (once per process) a panic hook that records the message and location,
/// then hands over to the hook that was there (which prints, as usual).
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install_panic_hook_now);
}

fn install_panic_hook_now() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = payload_text(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        // A panic while this thread's record is borrowed cannot happen (the borrows
        // above never panic), and try_with fails only during thread teardown.
        let _ = LAST_PANIC.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                *p = Some((message, location));
            }
        });
        prev(info);
    }));
}
