//! Python's `multiprocessing`, done the Rust way: true parallelism across processes
//! (isolation, crash containment, no shared heap) with the ease of Python's API.
//!
//! Each primitive lives in its own small crate, re-exported here; depend on this facade,
//! or on one crate alone.
//!
//! - [`Process`] ([`mp_process`]): run a Rust function in a child process started with
//!   spawn, forkserver or fork, and get its return value back.
//! - [`core`] ([`mp_core`]): errors, the Python-compatible frame codec, fd transfer,
//!   futex and shared-memory regions, shared by every crate.
//!
//! ```
//! #[multiproc::main]
//! fn main() -> anyhow::Result<()> {
//!     use multiproc::prelude::*;
//!     fn worker(name: String) -> String {
//!         format!("hello from {name} in {}", current_process().name)
//!     }
//!     let mut p = Process::new(worker, ("A".to_string(),)).name("Worker-A").start()?;
//!     assert_eq!(p.join()?, "hello from A in Worker-A");
//!     Ok(())
//! }
//! ```
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

#[doc(inline)]
pub use mp_core as core;
#[doc(inline)]
pub use mp_process as process;

pub use mp_core::Handle;
pub use mp_process::{
    active_children, cpu_count, current_process, get_all_start_methods, get_context,
    get_start_method, init, parent_process, set_start_method, Context, ExitStatus, Process,
    ProcessError, StartMethod,
};
/// `#[multiproc::main]`: calls [`init`] as the first statement of `main`.
pub use multiproc_macros::main;

/// The names most programs use.
pub mod prelude {
    pub use crate::{
        active_children, cpu_count, current_process, get_context, parent_process, Handle, Process,
        ProcessError, StartMethod,
    };
}
