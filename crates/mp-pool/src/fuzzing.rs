//! The pool's wire formats against any bytes, for the `fuzz/` targets and the bounded
//! property tests (not part of the API): what a worker receives, and what the parent
//! receives from a worker.
use crate::result::decode_chunk;
use crate::wire::{ChunkResult, Encoded, Reply, TaskFailure, TaskIn, TaskOut, WorkerMsg};
use mp_core::fuzzing::{Input, Marker};
use mp_core::handles::decode;
use mp_core::Handle;
use mp_process::RemoteTarget;
use std::os::fd::OwnedFd;

/// How much a wire decoder may hold at once: some dozens of times its input (a
/// decoded value is larger than its encoding), and serde's bounded preallocation.
pub fn bound(data: &[u8]) -> usize {
    (4 << 20) + 64 * data.len()
}

fn double(x: u32) -> u64 {
    u64::from(x) * 2
}

/// What a worker receives: `[fd count, bytes...]` decoded as a batch of tasks with
/// the fds (as `Connection::recv` hands them over), then each task's arguments taken
/// apart and its target called as the worker does: a target this process did not make
/// is refused before anything runs. No fd is left afterwards.
pub fn worker(data: &[u8]) {
    let mut input = Input(data);
    let nfds = usize::from(input.byte() % 5);
    let Ok(marker) = Marker::new() else { return };
    let Ok(fds) = marker.copies(nfds) else { return };
    if let Ok(tasks) = decode::<Vec<TaskIn>>(input.rest(), fds) {
        for task in tasks {
            let _ = task.seq;
            let (bytes, fds) = task.args.into_parts();
            let _ = task.target.call(&bytes, fds);
        }
    }
    assert_eq!(marker.installed(), 0, "an fd was kept");
}

/// Seeds for [`worker`]: batches of tasks, with and without fds.
pub fn worker_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(target) = RemoteTarget::of::<_, (u32,)>(double) else {
        return out;
    };
    let Ok(m) = Marker::new() else { return out };
    let plain = Encoded::of(&vec![(5u32,)]).ok();
    let with_fd = m
        .copies(1)
        .ok()
        .and_then(|mut v| v.pop())
        .and_then(|fd| Encoded::of(&vec![(Handle(fd),)]).ok());
    for args in [plain, with_fd].into_iter().flatten() {
        let batch = [
            TaskOut {
                seq: 1,
                target: &target,
                args: &args,
            },
            TaskOut {
                seq: 2,
                target: &target,
                args: &args,
            },
        ];
        if let Ok((b, f)) = mp_core::handles::encode(&batch[..]) {
            let mut v = vec![f.len() as u8];
            v.extend(b);
            out.push(v);
        }
    }
    out
}

/// What the parent receives: `[fd count, item count, result type, bytes...]` decoded
/// as a worker's message with the fds; each reply's result is then decoded as a chunk
/// of that many items of one of a few types and split into items, as a job does. No
/// fd is left afterwards.
pub fn parent(data: &[u8]) {
    let mut input = Input(data);
    let nfds = usize::from(input.byte() % 5);
    let len = usize::from(input.byte() % 8);
    let ty = input.byte();
    let Ok(marker) = Marker::new() else { return };
    let Ok(fds) = marker.copies(nfds) else { return };
    let (started, finished) = crate::progress::decode(u64::from(ty) << 40 | len as u64);
    let _ = (started, finished);
    if let Ok(msg) = decode::<WorkerMsg>(input.rest(), fds) {
        match msg {
            WorkerMsg::Replies(replies) => {
                for r in replies {
                    let _ = r.seq();
                    if let Reply::Done { result, .. } = r {
                        chunk(ty, Ok(result.into_parts()), len);
                    }
                }
            }
            WorkerMsg::InitFailed { .. } => {}
        }
    }
    assert_eq!(marker.installed(), 0, "an fd was kept");
}

fn chunk(ty: u8, outcome: crate::result::ChunkOutcome, len: usize) {
    fn items<R>(c: crate::result::Chunk<R>, len: usize) {
        if let Ok(c) = c {
            assert_eq!(c.len(), len);
            let items = c.into_items();
            assert!(items.len() <= len);
        }
    }
    match ty % 4 {
        0 => items(decode_chunk::<u64>(outcome, len), len),
        1 => items(decode_chunk::<String>(outcome, len), len),
        2 => items(decode_chunk::<Handle<OwnedFd>>(outcome, len), len),
        _ => items(
            decode_chunk::<(Vec<u8>, Option<Handle<OwnedFd>>)>(outcome, len),
            len,
        ),
    }
}

/// Seeds for [`parent`]: replies of each kind, results with fds, an initializer
/// failure.
pub fn parent_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(m) = Marker::new() else { return out };
    let fd = || m.copies(1).ok().and_then(|mut v| v.pop());
    let mut push = |len: u8, ty: u8, msg: &WorkerMsg| {
        if let Ok((b, f)) = mp_core::handles::encode(msg) {
            let mut v = vec![f.len() as u8, len, ty];
            v.extend(b);
            out.push(v);
        }
    };
    let failure = TaskFailure {
        message: "boom".into(),
        location: None,
    };
    if let Ok(result) = Encoded::of(&ChunkResult {
        values: vec![1u64, 2],
        failures: vec![(1u32, failure.clone())],
    }) {
        let msg = WorkerMsg::Replies(vec![
            Reply::Done { seq: 1, result },
            Reply::Failed {
                seq: 2,
                error: "x".into(),
            },
        ]);
        push(3, 0, &msg);
    }
    if let (Some(a), Some(b)) = (fd(), fd()) {
        if let Ok(result) = Encoded::of(&ChunkResult {
            values: vec![Handle(a), Handle(b)],
            failures: Vec::new(),
        }) {
            push(
                2,
                2,
                &WorkerMsg::Replies(vec![Reply::Done { seq: 9, result }]),
            );
        }
    }
    push(
        0,
        0,
        &WorkerMsg::InitFailed {
            message: "init".into(),
            location: Some("here".into()),
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp_core::fuzzing::{inputs, run_all, CountingAlloc};

    #[global_allocator]
    static A: CountingAlloc = CountingAlloc;

    /// Bounded property pass of what a worker receives (the fuzz target
    /// `pool_worker`).
    #[test]
    fn worker_property() {
        let seeds = worker_seeds();
        assert_eq!(seeds.len(), 2);
        run_all(
            "pool_worker",
            &inputs(0x9001, &seeds, 2000, 160),
            bound,
            worker,
        );
    }

    /// Bounded property pass of what the parent receives (the fuzz target
    /// `pool_parent`).
    #[test]
    fn parent_property() {
        let seeds = parent_seeds();
        assert_eq!(seeds.len(), 3);
        run_all(
            "pool_parent",
            &inputs(0x9002, &seeds, 2000, 160),
            bound,
            parent,
        );
    }
}
