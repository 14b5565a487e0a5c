//! Starting a worker: its pipe, its progress word, its process under the pool's start
//! method, and its place in the handler's epoll set.
//!
//! How a worker may start: under spawn and forkserver, as any process of that method
//! (nothing forks this process); under fork, every worker, first or replacement, is
//! forked from the pool's [`mp_process::ForkTemplate`], made at `build()` before the
//! handler thread exists, so the pool never forks this (by then multi-threaded) process.
//!
//! What the parent keeps per worker, in fds: its end of the worker's pipe and a second
//! descriptor of it for sending (the reader and the writer keep separate buffers), and
//! what `mp_process` keeps for a child (its pidfd, and the socket its outcome would
//! arrive on). Progress words share one region for the whole pool. So 4 per worker:
//! a `Pool(200)` runs at `ulimit -n 1024`.
use crate::handler::{Reader, Shared, WorkerHandle, WorkerSlot};
use crate::result::lock;
use crate::worker::{worker_main, WorkerConfig, MAX_MESSAGE};
use crate::PoolError;
use mp_pipe::Connection;
use mp_process::{Process, StartMethod};
use rustix::event::epoll;
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Socket buffer asked for on each worker's pipe.
const SNDBUF: usize = 1 << 20;

/// The parent's and the worker's ends of a new worker's pipe.
struct WorkerPipe {
    reader: Connection,
    writer: Connection,
    child: Connection,
}

/// Makes a worker's pipe. This is the one place where the parent's end of a worker's
/// pipe is made, and its descriptors are private ([`mp_core::PrivateFd`], through
/// [`Connection::make_private`]): a child forked from this process while the pool lives
/// (a `Process` of the user's, under fork) lets go of them first thing, and no program
/// started by exec inherits them.
///
/// Who holds what, afterwards: the parent holds `reader` (the handler thread, or a
/// reader in `get`, reads it) and `writer` (submitters send on it); the worker holds
/// `child`, whose copy in the parent (private too, until then) is closed once the worker
/// started. The workers are told to leave with `shutdown(SHUT_WR)` on the parent's end,
/// which reaches the worker whoever else holds a descriptor of that end; their death is
/// seen on their pidfd.
fn worker_pipe() -> Result<WorkerPipe, PoolError> {
    let io = |e: &dyn std::fmt::Display| PoolError::Start(e.to_string());
    let (mut reader, mut child) = mp_pipe::pipe().map_err(|e| io(&e))?;
    reader.make_private().map_err(|e| io(&e))?;
    child.make_private().map_err(|e| io(&e))?;
    reader.set_max_message_size(MAX_MESSAGE);
    child.set_max_message_size(MAX_MESSAGE);
    // A second Connection on the same socket, for sending: its own buffers, so the
    // handler reads while submitters write.
    let dup = reader
        .fd()
        .map_err(|e| io(&e))?
        .try_clone_to_owned()
        .map_err(|e| io(&e))?;
    let mut writer = Connection::from_fd(dup, false, true).map_err(|e| io(&e))?;
    writer.make_private().map_err(|e| io(&e))?;
    Ok(WorkerPipe {
        reader,
        writer,
        child,
    })
}

/// How much may be in flight to a worker: half its socket buffer.
fn budget(writer: &Connection) -> usize {
    writer
        .fd()
        .ok()
        .and_then(|fd| {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, SNDBUF);
            rustix::net::sockopt::socket_send_buffer_size(fd).ok()
        })
        .map_or(64 << 10, |b| (b / 2).clamp(32 << 10, 512 << 10))
}

impl Shared {
    /// Starts worker number `number`: its handle for the handler thread, and its
    /// record for the scheduler.
    pub fn start_worker(&self, number: usize) -> Result<(WorkerHandle, WorkerSlot), PoolError> {
        let io = |e: &dyn std::fmt::Display| PoolError::Start(e.to_string());
        let progress = self
            .board
            .take()
            .ok_or_else(|| PoolError::Start("more live workers than the pool's size".into()))?;
        let pipe = worker_pipe()?;
        let init = match &self.cfg.init {
            Some((t, a)) => Some((*t, a.try_clone().map_err(|e| io(&e))?)),
            None => None,
        };
        let wc = WorkerConfig {
            init,
            maxtasks: self.cfg.maxtasks,
            progress: progress.for_worker(),
        };
        let method = self.cfg.method;
        let prefix = match method {
            StartMethod::Spawn => "Spawn",
            StartMethod::Forkserver => "Forkserver",
            StartMethod::Fork => "Fork",
        };
        let name = format!("{prefix}PoolWorker-{number}");
        let mut b = Process::new(worker_main, (pipe.child, wc))
            .daemon(true)
            .name(name.clone())
            .start_method(method);
        if method == StartMethod::Fork {
            let template = lock(&self.template)
                .clone()
                .ok_or_else(|| PoolError::Start("the pool's fork template is gone".into()))?;
            b = b.fork_from(&template);
        }
        // Consumed here: the parent's copy of the worker's end closes once it started.
        let process = Arc::new(b.start().map_err(|e| io(&e))?);
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let watch = |fd: BorrowedFd<'_>, data: u64| {
            epoll::add(
                &self.epoll,
                fd,
                epoll::EventData::new_u64(data),
                epoll::EventFlags::IN,
            )
        };
        let watched = pipe
            .reader
            .fd()
            .map_err(|e| io(&e))
            .and_then(|fd| watch(fd, 2 * key).map_err(|e| io(&e)))
            .and_then(|()| watch(process.sentinel(), 2 * key + 1).map_err(|e| io(&e)));
        if let Err(e) = watched {
            // Started, but the handler could not watch it: do not leave it running.
            if let Ok(fd) = pipe.reader.fd() {
                let _ = epoll::delete(&self.epoll, fd);
            }
            let _ = process.kill();
            crate::reap::wait_exit(&process, crate::reap::KILL_WAIT);
            return Err(e);
        }
        let reader = Arc::new(Mutex::new(Reader {
            conn: pipe.reader,
            retired: false,
        }));
        let slot = WorkerSlot {
            key,
            pid: process.pid(),
            name,
            budget: budget(&pipe.writer),
            writer: pipe.writer,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            next_seq: 1,
            sent: 0,
            ewma_ns: 0,
            last_reply: Instant::now(),
            progress,
            reader: reader.clone(),
            process: process.clone(),
        };
        Ok((
            WorkerHandle {
                key,
                reader,
                process,
            },
            slot,
        ))
    }
}
