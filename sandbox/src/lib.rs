//! kiln-sandbox: runs one build step in a fresh set of namespaces.
//!
//! The engine calls [`Sandbox::spawn`] with a [`StepSpec`]; that re-executes `init_exe` with
//! [`INIT_ARG`], whose `main` must call [`init_main_if_requested`] before anything else
//! (before any thread starts: the init forks and must be single-threaded).
//!
//! Wire protocol: the spec is JSON on the init's stdin (then `/dev/null` replaces it); a
//! set-up failure comes back as one [`InitFailure`] in JSON on fd 3, a close-on-exec pipe, so
//! it can never be confused with the step's stdout/stderr. A nonzero exit of the command is a
//! [`StepExit`], not an error.
//!
//! The init's steps, in order (each its own [`InitError`] variant, see [`Step`]):
//! 1. outer init: `unshare` mount, PID, net (network `None`), IPC, UTS, cgroup namespaces;
//!    `fork` so the child is PID 1 (the outer init forwards SIGTERM/INT/HUP/QUIT, relays the
//!    exit code, 128+signal when killed; the child has `PR_SET_PDEATHSIG(SIGKILL)`);
//! 2. PID 1: `/` recursively private; rootfs (overlay through `fsopen` + one `lowerdir+` per
//!    layer, falling back to `mount(2)`; an empty tmpfs dir when there are no lowers; or a
//!    `Dir` bound onto itself); `/proc`; `/dev` (tmpfs, mknod'ed null, zero, full, random,
//!    urandom, tty, `/dev/pts` newinstance + `ptmx` link, `/dev/shm`, fd/stdin/stdout/stderr
//!    links); `/sys` read-only; the step's mounts (targets created and opened with
//!    `openat2(RESOLVE_IN_ROOT)`, mounted through `move_mount` onto that fd); `lo` up;
//!    `sethostname`; `pivot_root(".", ".")` + detach the old root; mkdir -p and chdir to cwd;
//!    user from the image's `/etc/passwd` and `/etc/group`, setgroups, setgid, setuid;
//!    `no_new_privs`; every fd above 2 close-on-exec; signals reset; `execve` with `args[0]`
//!    looked up on the step env's `PATH`.
//!
//! Capabilities, landlock, seccomp and cgroup limits come between the user change and exec in
//! a later change; until then a step run as root keeps root's capabilities inside its
//! namespaces, so this is isolation, not yet a security boundary against a root step.
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
    StepCgroup, join_cgroups, kiln_cgroups, move_into_cgroups, remove_stale_cgroups,
};
pub use init::{Confinement, InitError, InitFailure, Step};
pub use landlock::{Enforcement, LandlockRecord};
pub use probe::{CgroupMode, Features, probe};
pub use sandbox::{Killer, RunningStep, Sandbox, SandboxError, StepExit};
pub use spec::{DEFAULT_PATH, IdMap, Mount, MountKind, NetworkMode, Rootfs, Security, StepSpec};
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
