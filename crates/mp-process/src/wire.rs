//! The bootstrap exchange between a parent and its child, over an inherited socketpair.
//!
//! parent -> child: one frame holding [`Bootstrap`] (with the argument fds attached, then
//! the fds of the library handles the tree shares);
//! child -> parent: one frame holding [`Outcome`] (with the result's fds attached), then
//! end of file when the child exits. A child that dies early is seen as end of file,
//! never as a hang.
use crate::context::StartMethod;
use serde::{Deserialize, Serialize};

/// Distinguishes our bootstrap from anything else found on the socket.
pub(crate) const MAGIC: u64 = 0x6d75_6c74_6970_7201; // "multipr" + version 1

/// Bootstrap messages are small apart from the arguments; results may be large.
pub(crate) const MAX_FRAME: u64 = 1 << 40;

/// Identity of the running executable: the child refuses to resolve a target offset
/// unless it runs the very same file.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExeId {
    pub dev: u64,
    pub ino: u64,
    pub size: i64,
    pub mtime: i64,
}

impl ExeId {
    /// This process's executable identity, read once (the executable a process runs
    /// cannot change under it).
    pub(crate) fn cached() -> std::io::Result<ExeId> {
        static ID: std::sync::OnceLock<ExeId> = std::sync::OnceLock::new();
        if let Some(id) = ID.get() {
            return Ok(*id);
        }
        let id = Self::current()?;
        Ok(*ID.get_or_init(|| id))
    }

    pub(crate) fn current() -> std::io::Result<ExeId> {
        let st = rustix::fs::stat("/proc/self/exe")?;
        Ok(ExeId {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: st.st_mtime,
        })
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Bootstrap {
    pub magic: u64,
    /// What to run: checked against the tree's key before anything is called.
    pub target: crate::RemoteTarget,
    /// The tree's secret (see `secret.rs`), which the child adopts first.
    pub target_key: [u8; 32],
    pub name: String,
    pub identity: Vec<u32>,
    pub daemon: bool,
    pub parent_pid: i32,
    pub parent_name: String,
    pub authkey: [u8; 32],
    pub start_method: StartMethod,
    /// Environment changes: set (Some) or remove (None), applied before the target runs.
    pub env: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub args: Vec<u8>,
    /// The names of the library handles the tree shares (`mp_core::inherit`): their fds
    /// are the last ones of the frame, after the arguments'.
    pub handles: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Outcome {
    /// The target returned; these are its encoded bytes (fds ride beside them).
    Ok(Vec<u8>),
    /// The target panicked.
    Panicked {
        message: String,
        location: Option<String>,
    },
    /// The return value failed to serialize.
    ResultEncode(String),
    /// The child could not rebuild its task.
    Bootstrap(String),
}
