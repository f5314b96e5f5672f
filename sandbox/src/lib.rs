//! kiln-sandbox: runs one build step in a fresh set of namespaces.
//!
//! The engine calls [`Sandbox::spawn`] with a [`StepSpec`]; that re-executes the current
//! binary with [`INIT_ARG`], whose `main` must call [`init_main_if_requested`] before anything
//! else (before any thread starts: the init forks and must be single-threaded). The init
//! enters new namespaces, mounts the root, `pivot_root`s and execs the step; see the `init`
//! module's step list for the order and why.
//!
//! Threat model: everything the step runs is malicious from the moment it starts, and the
//! image content (symlinks, `/etc/passwd`) is untrusted from the start of set-up: mount targets
//! are resolved with `RESOLVE_IN_ROOT`, users are resolved after `pivot_root`.

mod init;
mod linux;
mod mounts;
mod probe;
mod sandbox;
mod spec;
mod syscall;
mod user;

pub use init::{InitError, InitFailure, Step};
pub use probe::{CgroupMode, Features, probe};
pub use sandbox::{Killer, RunningStep, Sandbox, SandboxError, StepExit};
pub use spec::{DEFAULT_PATH, Mount, MountKind, NetworkMode, Rootfs, StepSpec};
pub use user::UserError;

/// The hidden first argument that turns the binary into the sandbox init.
pub const INIT_ARG: &str = "__kiln-sandbox-init";

/// If this process was started as the sandbox init, run it and exit with the step's exit code
/// (never returning); otherwise return at once. Call it first thing in `main`.
pub fn init_main_if_requested() {
    if std::env::args_os().nth(1).is_some_and(|a| a == INIT_ARG) {
        init::main();
    }
}
