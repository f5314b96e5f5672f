//! kiln-sandbox: runs one build step in a fresh set of namespaces.
//!
//! The engine calls [`Sandbox::spawn`] with a [`StepSpec`]; that re-executes `init_exe` with
//! [`INIT_ARG`], whose `main` must call [`init_main_if_requested`] before anything else
//! (before any thread starts: the init forks and must be single-threaded).
//!
//! Wire protocol: the spec (with the `cgroup.procs` files of the step's cgroup, which
//! [`Sandbox::spawn`] made and moved the init into) is JSON on the init's stdin (then
//! `/dev/null` replaces it). The init answers on fd 3, a close-on-exec pipe, one JSON line per
//! message: `confined` (the [`Confinement`] it applied) just before exec, or `failed` (an
//! [`InitFailure`]: which step, which errno). The step's stdout/stderr are separate pipes, so
//! the two can never be confused. A nonzero exit of the command is a [`StepExit`], not an
//! error; so are an OOM kill and the pids limit (in [`StepExit::resources`]).
//!
//! The init's steps, in order, are the lists `OUTER_STEPS` and `INNER_STEPS` in `init.rs`
//! (each step its own [`InitError`] variant, see [`Step`]; the order is unit-tested with a
//! recording [`syscall`](crate) implementation):
//! 1. outer init: compile the seccomp profile; check it is in the step's cgroup (join if
//!    not); `setsid`; with a mapping, make the user namespace; `unshare` mount, PID, net
//!    (network `None`), IPC, UTS, cgroup namespaces; `fork` so the child is PID 1 (the outer
//!    init forwards SIGTERM/INT/HUP/QUIT and relays the exit code; the child has
//!    `PR_SET_PDEATHSIG(SIGKILL)`);
//! 2. PID 1: `/` recursively private; rootfs (overlay `nodev`, or a `Dir` bound onto itself);
//!    `/proc`; `/dev`; `/sys` read-only; the step's mounts (targets resolved with
//!    `openat2(RESOLVE_IN_ROOT)`); the working directory; masked and read-only kernel paths and
//!    `/dev` read-only; `lo` up; `sethostname`; with a user namespace, an idmapped root;
//!    `pivot_root` + detach the old root; chdir; enter the user namespace; shrink the
//!    bounding set; user from the image's `/etc/passwd` and `/etc/group`; capabilities (Docker's
//!    default set minus `NET_RAW` for root, none otherwise); `no_new_privs`; every fd above 2
//!    close-on-exec; landlock; seccomp; `execve`.
//!
//! Threat model: everything the step runs is malicious from the moment it starts, and the
//! image content (symlinks, `/etc/passwd`) is untrusted from the start of set-up: mount
//! targets are resolved with `RESOLVE_IN_ROOT`, users are resolved after `pivot_root`.

mod caps;
mod cgroup;
mod init;
mod landlock;
mod linux;
mod mounts;
mod probe;
mod sandbox;
pub mod seccomp;
mod spec;
mod syscall;
mod user;

pub use caps::{Cap, DEFAULT_CAPS};
pub use cgroup::{
    CgroupError, Controller, CpuLimit, KILL_TIMEOUT, KILN_PARENT, Limits, MAX_NAME_LEN, Outcome,
    StepCgroup, join_cgroups, kiln_cgroups, move_into_cgroups, remove_orphaned_cgroups,
    remove_stale_cgroups,
};
pub use init::{Confinement, InitError, InitFailure, Step};
pub use landlock::{Enforcement, LandlockRecord};
pub use probe::{CgroupMode, Features, probe};
pub use sandbox::{Killer, RunningStep, Sandbox, SandboxError, StepExit};
pub use spec::{
    DEFAULT_PATH, IdMap, Mount, MountKind, NetworkMode, Rootfs, SecretBytes, Security, StepSpec,
};
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
