//! The bootstrap and outcome decoding against any bytes, for the `fuzz/` targets and
//! the bounded property tests (not part of the API).
use crate::wire::{Bootstrap, Outcome, MAGIC, MAX_FRAME};
use crate::RemoteTarget;
use mp_core::fuzzing::{feed, Input, Marker};
use mp_core::Handle;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;

fn add(a: u32, b: u32) -> u64 {
    u64::from(a) + u64::from(b)
}

fn echo(s: String, f: Handle<std::fs::File>) -> (usize, Handle<std::fs::File>) {
    (s.len(), f)
}

fn count(v: Vec<Handle<OwnedFd>>, tail: Option<Vec<u8>>) -> usize {
    v.len() + tail.map_or(0, |t| t.len())
}

/// Targets this process made, so their tags are good here.
fn targets() -> &'static [RemoteTarget] {
    static T: OnceLock<Vec<RemoteTarget>> = OnceLock::new();
    T.get_or_init(|| {
        [
            RemoteTarget::of::<_, (u32, u32)>(add),
            RemoteTarget::of::<_, (String, Handle<std::fs::File>)>(echo),
            RemoteTarget::of::<_, (Vec<Handle<OwnedFd>>, Option<Vec<u8>>)>(count),
        ]
        .into_iter()
        .flatten()
        .collect()
    })
}

/// How much [`bootstrap`] may hold at once: some dozens of times its input (a decoded
/// value is larger than its encoding), and serde's bounded preallocation.
pub fn bootstrap_bound(data: &[u8]) -> usize {
    (4 << 20) + 64 * data.len()
}

/// What a child does with its bootstrap message: `[mode, fd count, bytes...]`. Mode 0
/// decodes a `Bootstrap` from the bytes, checks its magic and resolves its target
/// (checking the executable and the tag, never calling it): only a target this process
/// made itself may resolve. Mode 1 calls one of this process's own targets (chosen by
/// the first byte) on the rest as its encoded arguments, with the fds: a bad argument
/// is an error, never a panic, and no fd is left once the result is dropped.
pub fn bootstrap(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.byte();
    let nfds = usize::from(input.byte() % 4);
    let Ok(marker) = Marker::new() else { return };
    let Ok(fds) = marker.copies(nfds) else { return };
    if mode & 1 == 0 {
        let bytes = input.rest();
        if let Ok(boot) = mp_core::postcard::from_bytes::<Bootstrap>(bytes) {
            if boot.magic == MAGIC && boot.target.entry().is_ok() {
                assert!(
                    targets().contains(&boot.target),
                    "a target this process did not make was resolved"
                );
            }
            drop(boot);
        }
        drop(fds);
    } else {
        let all = targets();
        let Some(t) = all.get(usize::from(input.byte()) % all.len().max(1)) else {
            return;
        };
        if let Ok((_, out)) = t.call(input.rest(), fds) {
            drop(out);
        }
    }
    assert_eq!(marker.installed(), 0, "an fd was kept");
}

/// Seeds for [`bootstrap`]: a whole bootstrap for each of this process's targets, and
/// encoded arguments for each.
pub fn bootstrap_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for t in targets() {
        let boot = Bootstrap {
            magic: MAGIC,
            target: *t,
            target_key: [3; 32],
            name: "Process-1".into(),
            identity: vec![1],
            daemon: false,
            parent_pid: 1,
            parent_name: "MainProcess".into(),
            authkey: [4; 32],
            start_method: crate::StartMethod::Spawn,
            env: vec![(b"K".to_vec(), Some(b"V".to_vec())), (b"X".to_vec(), None)],
            handles: vec!["mp-shm.tracker".into()],
            args: vec![1, 2, 3],
        };
        if let Ok(b) = mp_core::postcard::to_allocvec(&boot) {
            let mut v = vec![0, 0];
            v.extend(b);
            out.push(v);
        }
    }
    let Ok(m) = Marker::new() else { return out };
    let fd = || m.copies(1).ok().and_then(|mut v| v.pop());
    let mut args = |which: u8, r: mp_core::Result<(Vec<u8>, Vec<OwnedFd>)>| {
        if let Ok((b, f)) = r {
            let mut v = vec![1, f.len() as u8, which];
            v.extend(b);
            out.push(v);
        }
    };
    args(0, mp_core::handles::encode(&(2u32, 3u32)));
    if let Some(f) = fd() {
        let file = Handle(std::fs::File::from(f));
        args(1, mp_core::handles::encode(&("x".to_string(), file)));
    }
    if let (Some(a), Some(b)) = (fd(), fd()) {
        let v = vec![Handle(a), Handle(b)];
        args(2, mp_core::handles::encode(&(v, Some(vec![1u8]))));
    }
    out
}

/// How much [`outcome`] may hold at once: the up-front allocation for a long frame
/// (16 MiB, the child's frame limit being far larger) and some dozens of times the
/// bytes that arrived.
pub fn outcome_bound(data: &[u8]) -> usize {
    (16 << 20) + (4 << 20) + 64 * data.len()
}

/// What a parent does with its child's outcome: reads a frame with its fds from the
/// socket (`[result type, chunks...]`, see [`mp_core::fuzzing::feed`]), decodes an
/// `Outcome` and, for `Ok`, the result as one of a few types with those fds. No fd
/// is left once the result is dropped.
pub fn outcome(data: &[u8]) {
    use mp_core::handles::decode;
    let mut input = Input(data);
    let ty = input.byte();
    let Ok(marker) = Marker::new() else { return };
    let Ok((sock, _)) = feed(&mut input, &marker, false) else {
        return;
    };
    if let Ok((bytes, fds)) = mp_core::fdpass::recv_frame(sock.as_fd(), MAX_FRAME) {
        match mp_core::postcard::from_bytes::<Outcome>(&bytes) {
            Ok(Outcome::Ok(v)) => match ty % 4 {
                0 => drop(decode::<u64>(&v, fds)),
                1 => drop(decode::<(usize, Handle<std::fs::File>)>(&v, fds)),
                2 => drop(decode::<Vec<Handle<OwnedFd>>>(&v, fds)),
                _ => drop(decode::<Result<String, (String, Option<String>)>>(&v, fds)),
            },
            other => drop((other, fds)),
        }
    }
    drop(sock);
    assert_eq!(marker.installed(), 0, "an fd was kept");
}

/// Seeds for [`outcome`]: each kind of outcome, `Ok` with fds beside it.
pub fn outcome_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |ty: u8, fds: u8, o: &Outcome| {
        if let Ok(b) = mp_core::postcard::to_allocvec(o) {
            let mut frame = (b.len() as u32).to_be_bytes().to_vec();
            frame.extend(b);
            let mut v = vec![ty];
            for (i, c) in frame.chunks(200).enumerate() {
                v.extend_from_slice(&[if i == 0 { fds } else { 0 }, c.len() as u8]);
                v.extend_from_slice(c);
            }
            out.push(v);
        }
    };
    push(0, 0, &Outcome::Ok(vec![7]));
    push(1, 1, &Outcome::Ok(vec![3, 0]));
    push(2, 2, &Outcome::Ok(vec![2, 0, 1]));
    push(3, 0, &Outcome::Ok(vec![1, 1, b'e', 1, 1, b'l']));
    push(
        0,
        0,
        &Outcome::Panicked {
            message: "boom".into(),
            location: Some("src/main.rs:1:1".into()),
        },
    );
    push(0, 0, &Outcome::ResultEncode("no".into()));
    push(0, 1, &Outcome::Bootstrap("bad".into()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp_core::fuzzing::{inputs, run_all, CountingAlloc};

    #[global_allocator]
    static A: CountingAlloc = CountingAlloc;

    /// Bounded property pass of the bootstrap decoding (the fuzz target
    /// `process_bootstrap`).
    #[test]
    fn bootstrap_property() {
        let seeds = bootstrap_seeds();
        assert_eq!(seeds.len(), 6);
        run_all(
            "process_bootstrap",
            &inputs(0xb007, &seeds, 3000, 200),
            bootstrap_bound,
            bootstrap,
        );
    }

    /// Bounded property pass of the outcome decoding (the fuzz target
    /// `process_outcome`).
    #[test]
    fn outcome_property() {
        run_all(
            "process_outcome",
            &inputs(0x0c0e, &outcome_seeds(), 2000, 160),
            outcome_bound,
            outcome,
        );
    }

    /// The seeds reach the deep paths: a seeded bootstrap resolves, and seeded
    /// arguments run their target.
    #[test]
    fn seeds_are_valid() {
        let seeds = bootstrap_seeds();
        let boot: Bootstrap = mp_core::postcard::from_bytes(&seeds[0][2..]).expect("decodes");
        assert!(boot.target.entry().is_ok());
        let (out, _) = targets()[0].call(&seeds[3][3..], Vec::new()).expect("runs");
        assert_eq!(
            mp_core::handles::decode::<u64>(&out, Vec::new()).expect("u64"),
            5
        );
    }
}
