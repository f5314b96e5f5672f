//! The init: the re-executed binary that sets up the sandbox and execs the step.
//!
//! Protocol with [`crate::Sandbox::spawn`]:
//! - argv[1] is [`crate::INIT_ARG`];
//! - stdin carries the [`StepSpec`] as JSON, then EOF; the init then puts `/dev/null` on fd 0;
//! - fd 3 is the error pipe: a set-up failure is written there once as an [`InitFailure`] in
//!   JSON. It is close-on-exec, so a successful `execve` leaves nothing on it; the step's own
//!   output only ever goes to fds 1 and 2, so the two can not be confused;
//! - stdout/stderr are the step's.
//!
//! Process shape: the outer init unshares the namespaces and forks; the child is PID 1 of the
//! new PID namespace, runs [`INNER_STEPS`] and execs the command. The outer init waits for it,
//! forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT, and exits with its code (128+signal if it was
//! killed). A SIGKILL of the outer init kills the child (`PR_SET_PDEATHSIG`), and with it, as
//! PID 1, the whole PID namespace.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::io::Errno;
use rustix::thread::UnshareFlags;
use serde::{Deserialize, Serialize};

use crate::caps::{self, CapSets, DEFAULT_CAPS};
use crate::landlock::{LandlockError, LandlockRecord};
use crate::spec::{DEFAULT_PATH, IdMap, MountKind, NetworkMode, Rootfs, Security, StepSpec};
use crate::syscall::{Forked, Harden, InRootFs, OpError, Syscall};
use crate::user::{self, ExecUser, UserError};

/// The fd the error pipe is on in the init.
pub(crate) const ERROR_FD: i32 = 3;
/// Exit code of an init whose set-up failed (the report on the error pipe says why).
pub(crate) const SETUP_FAILED: i32 = 125;

/// A set-up step of the init. Serialised in [`InitFailure`] so the engine knows which broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Step {
    ReadSpec,
    CompileSeccomp,
    JoinCgroup,
    NewSession,
    UserNs,
    Unshare,
    Fork,
    MakeRootPrivate,
    MountRootfs,
    MountProc,
    MountDev,
    MountSys,
    StepMounts,
    MakeCwd,
    MaskPaths,
    Loopback,
    Hostname,
    IdmapRoot,
    PivotRoot,
    Chdir,
    EnterUserNs,
    DropBounding,
    SetUser,
    Capabilities,
    NoNewPrivs,
    CloseFds,
    Landlock,
    Seccomp,
    Exec,
}

/// Steps of the outer init, in order.
pub(crate) static OUTER_STEPS: &[Step] = &[
    // The step's seccomp profile, compiled once, before anything changes: bad data fails the
    // step before it has any effect (fail closed).
    Step::CompileSeccomp,
    // First: every process of the step (the inits included) is in the step's cgroup from
    // here on, so its limits cover everything and the cgroup namespace below is rooted there.
    Step::JoinCgroup,
    // A session (and process group) of its own, without a controlling terminal: `kill(0)` or
    // `kill(-pgrp)` in the step can not reach kiln or the user's shell job, and `/dev/tty`
    // (TIOCSTI keystroke injection) is not the user's terminal.
    Step::NewSession,
    // With a user-namespace mapping only: the namespace is made (and its maps written) by
    // this host-privileged process, and held by an fd; the step's other namespaces stay owned
    // by the initial one, so root in the step can not mount, set the hostname or configure
    // the network even inside them.
    Step::UserNs,
    // New mount, PID, net (for NetworkMode::None), IPC, UTS, cgroup namespaces. (Later: the
    // user namespace for rootless goes here too; cgroup placement of the init must happen
    // before this, so the cgroup namespace is rooted at the step's cgroup.)
    Step::Unshare,
    // A new PID namespace applies to children only: fork so the child is its PID 1.
    Step::Fork,
];

/// Steps of PID 1 in the new namespaces, in order.
pub(crate) static INNER_STEPS: &[Step] = &[
    // First, so no mount below propagates back to the host's mount namespace.
    Step::MakeRootPrivate,
    // The root everything else is mounted into.
    Step::MountRootfs,
    // A proc of the new PID namespace: the step sees only its own processes.
    Step::MountProc,
    // Minimal /dev, then its pts and shm inside it.
    Step::MountDev,
    // Read-only, as BuildKit does; after proc and dev, and in the new net ns so /sys/class/net
    // shows only the step's interfaces.
    Step::MountSys,
    // The step's mounts last, so they may sit on top of anything above (e.g. a tmpfs /dev/shm).
    Step::StepMounts,
    // The working directory, created (as root, owned by root as Docker does) inside the root
    // before an idmapped root would turn the host's root into an unmapped id.
    Step::MakeCwd,
    // runc's masked and read-only kernel paths, and /dev read-only; after every mount (a step
    // mount under /dev needs its target created first), before pivot_root.
    Step::MaskPaths,
    // Needs the new net ns (from Unshare); independent of the file system.
    Step::Loopback,
    Step::Hostname,
    // With a user namespace: an idmapped clone of the root tree on top of it, so the step's
    // ids are the image's ids on disk.
    Step::IdmapRoot,
    // After every mount that needs a host path; the old root is detached here.
    Step::PivotRoot,
    // In the new root: a relative symlink or `..` in cwd can not leave it.
    Step::Chdir,
    // With a user namespace: from here on every capability counts only inside it.
    Step::EnterUserNs,
    // Shrink the bounding set while we still hold CAP_SETPCAP (a non-root user loses it at
    // setuid).
    Step::DropBounding,
    // Reads the image's /etc/passwd and /etc/group (needs PivotRoot); setgroups and setgid
    // before setuid, while we still may.
    Step::SetUser,
    // Ambient cleared; effective = permitted = the kept set (empty for a non-root user).
    Step::Capabilities,
    // Before landlock (which requires it) and before exec (setuid bits, file caps ignored).
    Step::NoNewPrivs,
    // No fd of the init (error pipe, lifeline, root dirfd) survives exec (runc CVE-2024-21626).
    Step::CloseFds,
    // After everything that opens paths; the rule is on the new "/".
    Step::Landlock,
    // Last before exec: the allow-list need not permit any set-up call. What runs after it
    // (the PATH lookup's stat, signal resets, the report write, execve) is allowed.
    Step::Seccomp,
    Step::Exec,
];

/// A set-up failure, one variant per step, so a failure says which step broke.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error("reading the spec: {source}")]
    ReadSpec { source: std::io::Error },
    #[error("parsing the spec: {source}")]
    ParseSpec { source: serde_json::Error },
    #[error("invalid spec: {reason}")]
    InvalidSpec { reason: String },
    #[error("joining the step's cgroup: {source}")]
    JoinCgroup { source: crate::cgroup::CgroupError },
    #[error("setsid: {source}")]
    NewSession { source: Errno },
    #[error("creating the user namespace: {source}")]
    UserNs { source: OpError },
    #[error("unshare: {source}")]
    Unshare { source: Errno },
    #[error("fork: {source}")]
    Fork { source: Errno },
    #[error("making / private: {source}")]
    MakeRootPrivate { source: Errno },
    #[error("mounting the rootfs: {source}")]
    MountRootfs { source: OpError },
    #[error("mounting /proc: {source}")]
    MountProc { source: OpError },
    #[error("mounting /dev: {source}")]
    MountDev { source: OpError },
    #[error("mounting /sys: {source}")]
    MountSys { source: OpError },
    #[error("mounting {target}: {source}")]
    Mount { target: String, source: OpError },
    #[error("chdir to {cwd}: creating the working directory: {source}")]
    MakeCwd { cwd: String, source: OpError },
    #[error("idmapping the root for the user namespace: {source}")]
    IdmapRoot { source: OpError },
    #[error("entering the user namespace: {source}")]
    EnterUserNs { source: Errno },
    #[error("masking {target}: {source}")]
    MaskPath {
        target: &'static str,
        source: OpError,
    },
    #[error("bringing up lo: {source}")]
    Loopback { source: Errno },
    #[error("sethostname: {source}")]
    Hostname { source: Errno },
    #[error("pivot_root: {source}")]
    PivotRoot { source: OpError },
    #[error("chdir to {cwd}: {source}")]
    Chdir { cwd: String, source: Errno },
    #[error("reading {path}: {source}")]
    ReadUserDb { path: &'static str, source: Errno },
    #[error("{source}")]
    User { source: UserError },
    #[error("setgroups: {source}")]
    SetGroups { source: Errno },
    #[error("setgid: {source}")]
    SetGid { source: Errno },
    #[error("setuid: {source}")]
    SetUid { source: Errno },
    #[error("dropping capabilities from the bounding set: {source}")]
    DropBounding { source: Errno },
    #[error("setting capabilities: {source}")]
    Capabilities { source: Errno },
    #[error("prctl(PR_SET_NO_NEW_PRIVS): {source}")]
    NoNewPrivs { source: Errno },
    #[error("landlock: {source}")]
    Landlock { source: LandlockError },
    #[error("compiling the seccomp profile: {source}")]
    CompileSeccomp {
        source: crate::seccomp::SeccompError,
    },
    #[error("seccomp: {source}")]
    Seccomp {
        source: crate::seccomp::SeccompError,
    },
    #[error("closing inherited fds: {source}")]
    CloseFds { source: Errno },
    #[error("resetting signal dispositions: {source}")]
    ResetSignals { source: Errno },
    #[error("exec: {name:?}: executable file not found in $PATH")]
    ExecNotFound { name: String },
    #[error("exec {path}: {source}")]
    Exec { path: String, source: Errno },
}

impl InitError {
    /// The step this error belongs to.
    pub fn step(&self) -> Step {
        match self {
            Self::ReadSpec { .. } | Self::ParseSpec { .. } | Self::InvalidSpec { .. } => {
                Step::ReadSpec
            }
            Self::JoinCgroup { .. } => Step::JoinCgroup,
            Self::UserNs { .. } => Step::UserNs,
            Self::NewSession { .. } => Step::NewSession,
            Self::MakeCwd { .. } => Step::MakeCwd,
            Self::IdmapRoot { .. } => Step::IdmapRoot,
            Self::EnterUserNs { .. } => Step::EnterUserNs,
            Self::Unshare { .. } => Step::Unshare,
            Self::Fork { .. } => Step::Fork,
            Self::MakeRootPrivate { .. } => Step::MakeRootPrivate,
            Self::MountRootfs { .. } => Step::MountRootfs,
            Self::MountProc { .. } => Step::MountProc,
            Self::MountDev { .. } => Step::MountDev,
            Self::MountSys { .. } => Step::MountSys,
            Self::Mount { .. } => Step::StepMounts,
            Self::MaskPath { .. } => Step::MaskPaths,
            Self::DropBounding { .. } => Step::DropBounding,
            Self::Capabilities { .. } => Step::Capabilities,
            Self::Landlock { .. } => Step::Landlock,
            Self::CompileSeccomp { .. } => Step::CompileSeccomp,
            Self::Seccomp { .. } => Step::Seccomp,
            Self::Loopback { .. } => Step::Loopback,
            Self::Hostname { .. } => Step::Hostname,
            Self::PivotRoot { .. } => Step::PivotRoot,
            Self::Chdir { .. } => Step::Chdir,
            Self::ReadUserDb { .. }
            | Self::User { .. }
            | Self::SetGroups { .. }
            | Self::SetGid { .. }
            | Self::SetUid { .. } => Step::SetUser,
            Self::NoNewPrivs { .. } => Step::NoNewPrivs,
            Self::CloseFds { .. } => Step::CloseFds,
            Self::ResetSignals { .. } | Self::ExecNotFound { .. } | Self::Exec { .. } => Step::Exec,
        }
    }

    fn errno(&self) -> Option<i32> {
        match self {
            Self::Unshare { source }
            | Self::Fork { source }
            | Self::MakeRootPrivate { source }
            | Self::Loopback { source }
            | Self::Hostname { source }
            | Self::Chdir { source, .. }
            | Self::ReadUserDb { source, .. }
            | Self::SetGroups { source }
            | Self::SetGid { source }
            | Self::SetUid { source }
            | Self::NoNewPrivs { source }
            | Self::DropBounding { source }
            | Self::EnterUserNs { source }
            | Self::NewSession { source }
            | Self::Capabilities { source }
            | Self::CloseFds { source }
            | Self::ResetSignals { source }
            | Self::Exec { source, .. } => Some(source.raw_os_error()),
            Self::MountRootfs { source }
            | Self::MountProc { source }
            | Self::MountDev { source }
            | Self::MountSys { source }
            | Self::Mount { source, .. }
            | Self::MaskPath { source, .. }
            | Self::UserNs { source }
            | Self::MakeCwd { source, .. }
            | Self::IdmapRoot { source }
            | Self::PivotRoot { source } => Some(source.errno.raw_os_error()),
            Self::ReadSpec { source } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// What the init reports on the error pipe; the engine gets it as `SandboxError::Init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct InitFailure {
    /// The step that broke.
    pub step: Step,
    /// The errno, when a kernel call failed.
    pub errno: Option<i32>,
    /// Human-readable, e.g. `pivot_root: pivot_root: Operation not permitted (os error 1)`.
    pub message: String,
}

impl From<&InitError> for InitFailure {
    fn from(e: &InitError) -> Self {
        Self {
            step: e.step(),
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}

/// How the step was confined, as the init applied it. Reported just before `execve`, so it
/// is what the kernel really enforced, not what was asked for; it goes into the step result
/// and from there into the provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Confinement {
    /// `sandboxed` or `insecure`.
    pub security: Security,
    /// `none` or `host`.
    pub network: NetworkMode,
    /// Capabilities left in the step's permitted (= effective) set.
    pub capabilities: Vec<String>,
    /// Capabilities left in the bounding set (what a root exec can have).
    pub bounding: Vec<String>,
    /// The landlock domain; `None` for an insecure step.
    pub landlock: Option<LandlockRecord>,
    /// The seccomp profile installed (`default` or `insecure`).
    pub seccomp: Option<String>,
    /// `no_new_privs` is set (always).
    pub no_new_privs: bool,
    /// Kernel paths masked or made read-only (those present in this kernel's /proc and /sys).
    pub hardened_paths: Vec<String>,
    /// The user-namespace mapping, when the step ran in one.
    pub user_namespace: Option<IdMap>,
}

/// One message on the report pipe (fd 3), one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Report {
    /// Set-up is done; the init is about to exec the command.
    Confined(Confinement),
    /// Set-up failed.
    Failed(InitFailure),
}

impl Report {
    pub(crate) fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// Entry point of the init process. Never returns.
pub(crate) fn main() -> ! {
    // SAFETY: F_GETFD passes no memory; it only tells whether fd 3 is open.
    let have_report_fd = unsafe { libc::fcntl(ERROR_FD, libc::F_GETFD) } >= 0;
    let report = have_report_fd.then(|| {
        // SAFETY: fd 3 is open (checked above) and is the error pipe `Sandbox::spawn` put
        // there; nothing else in this freshly exec'd process owns it.
        unsafe { OwnedFd::from_raw_fd(ERROR_FD) }
    });
    if let Some(fd) = &report {
        // Never inherited by the step: a successful exec leaves the pipe empty.
        let _ = rustix::io::ioctl_fioclex(fd);
    }
    let code = match run_outer(&crate::linux::LinuxSyscall) {
        Ok(code) => code,
        Err(e) => {
            match report {
                Some(fd) => {
                    let line = Report::Failed(InitFailure::from(&e)).to_line();
                    let _ = std::fs::File::from(fd).write_all(&line);
                }
                // Started by hand, without the error pipe: say it on stderr.
                None => eprintln!("sandbox init: {e}"),
            }
            SETUP_FAILED
        }
    };
    std::process::exit(code)
}

fn run_outer(sys: &impl Syscall) -> Result<i32, InitError> {
    let InitSpec { spec, cgroup } = read_spec()?;
    let mut forked = None;
    let mut userns = None;
    let mut filters = None;
    for step in OUTER_STEPS {
        match step {
            Step::CompileSeccomp => {
                filters = Some(
                    crate::seccomp::compile(seccomp_profile(spec.security))
                        .map_err(|source| InitError::CompileSeccomp { source })?,
                );
            }
            Step::JoinCgroup => sys
                .join_cgroup(&cgroup)
                .map_err(|source| InitError::JoinCgroup { source })?,
            Step::NewSession => sys
                .setsid()
                .map_err(|source| InitError::NewSession { source })?,
            Step::UserNs => {
                if let Some(map) = &spec.userns {
                    userns = Some(
                        sys.create_userns(map)
                            .map_err(|source| InitError::UserNs { source })?,
                    );
                }
            }
            Step::Unshare => sys
                .unshare(namespaces(spec.network))
                .map_err(|source| InitError::Unshare { source })?,
            Step::Fork => forked = Some(sys.fork().map_err(|source| InitError::Fork { source })?),
            _ => {}
        }
    }
    match forked {
        Some(Forked::Parent { pid, _lifeline }) => Ok(supervise(pid)),
        _ => {
            // PID 1 of the new namespace: report our own failure and exit; on success we exec.
            let userns = userns.as_ref().map(std::os::fd::AsFd::as_fd);
            let err = run_inner(sys, &spec, userns, filters.as_ref())
                .err()
                .unwrap_or(InitError::Exec {
                    path: String::new(),
                    source: Errno::NOEXEC,
                });
            Err(err)
        }
    }
}

/// What [`crate::Sandbox::spawn`] sends the init: the step, and the `cgroup.procs` files of
/// the step's cgroup (one per hierarchy) it made for it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitSpec {
    pub spec: StepSpec,
    pub cgroup: Vec<PathBuf>,
}

fn read_spec() -> Result<InitSpec, InitError> {
    let mut json = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut json)
        .map_err(|source| InitError::ReadSpec { source })?;
    let devnull =
        std::fs::File::open("/dev/null").map_err(|source| InitError::ReadSpec { source })?;
    // SAFETY: both fds are open (`devnull` just opened, 0 is the spec pipe we finished
    // reading); dup2 atomically replaces fd 0, which no Rust object in this process owns
    // except `stdin()`, and that only ever reads fd 0 whatever it refers to.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&devnull), 0) } < 0 {
        return Err(InitError::ReadSpec {
            source: std::io::Error::last_os_error(),
        });
    }
    // Zeroed when dropped: the spec may hold secret values.
    let json = crate::SecretBytes::new(json);
    let spec: InitSpec =
        serde_json::from_slice(json.expose()).map_err(|source| InitError::ParseSpec { source })?;
    validate(&spec.spec)?;
    Ok(spec)
}

fn validate(spec: &StepSpec) -> Result<(), InitError> {
    let invalid = |reason: String| Err(InitError::InvalidSpec { reason });
    if spec.args.is_empty() {
        return invalid("empty args".into());
    }
    if !spec.cwd.starts_with('/') {
        return invalid(format!("cwd {:?} is not absolute", spec.cwd));
    }
    if let Some(map) = &spec.userns {
        let fits = |start: u32| start > 0 && start.checked_add(map.size).is_some();
        if map.size == 0 || !fits(map.host_uid) || !fits(map.host_gid) {
            return invalid(format!(
                "user namespace mapping {map:?}: the range must be non-empty, must not start at host id 0 and must not overflow"
            ));
        }
    }
    if spec.userns.is_some() && !matches!(spec.rootfs, Rootfs::Dir { .. }) {
        return invalid(
            "a user namespace needs a directory root (the copying snapshotter): an overlay mount can not be idmapped".into(),
        );
    }
    if let Some(m) = spec.mounts.iter().find(|m| !m.target.starts_with('/')) {
        return invalid(format!("mount target {:?} is not absolute", m.target));
    }
    Ok(())
}

fn namespaces(network: NetworkMode) -> UnshareFlags {
    let mut flags = UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWCGROUP;
    if network == NetworkMode::None {
        flags |= UnshareFlags::NEWNET;
    }
    flags
}

/// runc's masked paths: hidden behind `/dev/null` (files) or an empty read-only tmpfs (dirs).
/// They leak host information (`/proc/kcore`, `/proc/keys`, `/proc/timer_list`) or reach
/// hardware (`/proc/acpi`, `/sys/firmware`, powercap's energy counters, a side channel).
pub(crate) const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// runc's read-only paths: kernel knobs a root step could otherwise turn for the whole host
/// (`/proc/sys/kernel/core_pattern` is a classic escape; `/proc/sysrq-trigger` reboots).
pub(crate) const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The inner init's running state.
struct Inner<'a> {
    spec: &'a StepSpec,
    root: PathBuf,
    env: Vec<String>,
    /// Capabilities the step keeps (bit n = capability n), decided by `security` and the user.
    keep: u64,
    /// Filled in as the steps run; reported just before exec.
    confinement: Confinement,
    /// The user namespace to enter, when the spec asks for one.
    userns: Option<std::os::fd::BorrowedFd<'a>>,
    /// The compiled seccomp filters (always `Some` in the real init).
    filters: Option<&'a crate::seccomp::Filters>,
}

/// Run [`INNER_STEPS`]. Returns `Ok` only when a recording `execve` "succeeds".
fn run_inner<'a>(
    sys: &impl Syscall,
    spec: &'a StepSpec,
    userns: Option<std::os::fd::BorrowedFd<'a>>,
    filters: Option<&'a crate::seccomp::Filters>,
) -> Result<(), InitError> {
    let keep = match spec.security {
        Security::Insecure => all_caps(),
        _ => caps::mask(DEFAULT_CAPS),
    };
    let mut st = Inner {
        spec,
        root: PathBuf::new(),
        env: spec.env.clone(),
        keep,
        confinement: Confinement {
            security: spec.security,
            network: spec.network,
            capabilities: Vec::new(),
            bounding: Vec::new(),
            landlock: None,
            no_new_privs: false,
            hardened_paths: Vec::new(),
            user_namespace: userns.and(spec.userns),
            seccomp: None,
        },
        userns,
        filters,
    };
    for step in INNER_STEPS {
        st.run(sys, *step)?;
    }
    Ok(())
}

impl Inner<'_> {
    fn run(&mut self, sys: &impl Syscall, step: Step) -> Result<(), InitError> {
        let spec = self.spec;
        match step {
            Step::MakeRootPrivate => sys
                .make_root_private()
                .map_err(|source| InitError::MakeRootPrivate { source }),
            Step::MountRootfs => {
                self.root = sys
                    .mount_rootfs(&spec.rootfs)
                    .map_err(|source| InitError::MountRootfs { source })?;
                Ok(())
            }
            Step::MountProc => sys
                .mount_in_root(&self.root, "/proc", &InRootFs::Proc)
                .map_err(|source| InitError::MountProc { source }),
            Step::MountDev => {
                for (target, fs) in [
                    ("/dev", InRootFs::Dev),
                    ("/dev/pts", InRootFs::Devpts),
                    ("/dev/shm", InRootFs::Shm),
                ] {
                    sys.mount_in_root(&self.root, target, &fs)
                        .map_err(|source| InitError::MountDev { source })?;
                }
                Ok(())
            }
            Step::MountSys => sys
                .mount_in_root(&self.root, "/sys", &InRootFs::Sysfs)
                .map_err(|source| InitError::MountSys { source }),
            Step::StepMounts => {
                for m in &spec.mounts {
                    let fs = match &m.kind {
                        MountKind::Bind { source, readonly } => InRootFs::Bind {
                            source: source.clone(),
                            readonly: *readonly,
                        },
                        MountKind::Tmpfs { size, mode } => InRootFs::Tmpfs {
                            size: *size,
                            mode: *mode,
                        },
                        MountKind::SecretFile {
                            data,
                            mode,
                            uid,
                            gid,
                            stage,
                        } => {
                            // In a user namespace the step's ids are a host range: the file
                            // is owned by the host id that the step sees as `uid`/`gid`.
                            let map = self.userns.and(spec.userns);
                            let (host_uid, host_gid) =
                                map.map_or((0, 0), |m| (m.host_uid, m.host_gid));
                            InRootFs::SecretFile {
                                data: data.clone(),
                                mode: *mode,
                                uid: uid.saturating_add(host_uid),
                                gid: gid.saturating_add(host_gid),
                                stage: stage.clone(),
                            }
                        }
                    };
                    sys.mount_in_root(&self.root, &m.target, &fs)
                        .map_err(|source| InitError::Mount {
                            target: m.target.clone(),
                            source,
                        })?;
                }
                Ok(())
            }
            Step::MakeCwd => sys
                .make_dir_in_root(&self.root, &spec.cwd)
                .map_err(|source| InitError::MakeCwd {
                    cwd: spec.cwd.clone(),
                    source,
                }),
            Step::IdmapRoot => match self.userns {
                Some(userns) => sys
                    .idmap_root(&self.root, userns)
                    .map_err(|source| InitError::IdmapRoot { source }),
                None => Ok(()),
            },
            Step::EnterUserNs => match self.userns {
                Some(userns) => sys
                    .enter_userns(userns)
                    .map_err(|source| InitError::EnterUserNs { source }),
                None => Ok(()),
            },
            Step::MaskPaths => {
                let paths = MASKED_PATHS
                    .iter()
                    .map(|p| (*p, Harden::Mask))
                    .chain(READONLY_PATHS.iter().map(|p| (*p, Harden::ReadOnlyBind)))
                    // Last: the masks above bind /dev/null from it.
                    .chain([("/dev", Harden::ReadOnlyMount)]);
                for (target, how) in paths {
                    let present = sys
                        .harden_in_root(&self.root, target, how)
                        .map_err(|source| InitError::MaskPath { target, source })?;
                    if present {
                        self.confinement.hardened_paths.push(target.to_owned());
                    }
                }
                Ok(())
            }
            Step::Loopback => match spec.network {
                NetworkMode::None => sys
                    .loopback_up()
                    .map_err(|source| InitError::Loopback { source }),
                NetworkMode::Host => Ok(()),
            },
            Step::Hostname => {
                let name = if spec.hostname.is_empty() {
                    "kiln"
                } else {
                    spec.hostname.as_str()
                };
                sys.sethostname(name)
                    .map_err(|source| InitError::Hostname { source })
            }
            Step::PivotRoot => sys
                .pivot_root(&self.root)
                .map_err(|source| InitError::PivotRoot { source }),
            Step::Chdir => {
                let chdir_err = |source| InitError::Chdir {
                    cwd: spec.cwd.clone(),
                    source,
                };
                sys.mkdir_all(Path::new(&spec.cwd)).map_err(chdir_err)?;
                sys.chdir(Path::new(&spec.cwd)).map_err(chdir_err)
            }
            Step::DropBounding => {
                let left = sys
                    .drop_bounding(self.keep)
                    .map_err(|source| InitError::DropBounding { source })?;
                self.confinement.bounding = caps::names(left);
                Ok(())
            }
            Step::SetUser => self.set_user(sys),
            Step::Capabilities => {
                let sets = CapSets {
                    effective: self.keep,
                    permitted: self.keep,
                    inheritable: 0,
                };
                let applied = sys
                    .set_caps(sets)
                    .map_err(|source| InitError::Capabilities { source })?;
                self.confinement.capabilities = caps::names(applied);
                Ok(())
            }
            Step::NoNewPrivs => {
                sys.set_no_new_privs()
                    .map_err(|source| InitError::NoNewPrivs { source })?;
                self.confinement.no_new_privs = true;
                Ok(())
            }
            Step::CloseFds => {
                // fd 0 was the host's /dev/null since the spec was read: the step gets its own.
                sys.stdin_from_dev_null()
                    .map_err(|source| InitError::CloseFds { source })?;
                sys.cloexec_fds_above_stdio()
                    .map_err(|source| InitError::CloseFds { source })
            }
            Step::Landlock => {
                // An insecure step may mount, which a landlocked process never can.
                if spec.security == Security::Sandboxed {
                    self.confinement.landlock = Some(
                        sys.landlock(spec.network)
                            .map_err(|source| InitError::Landlock { source })?,
                    );
                }
                Ok(())
            }
            Step::Exec => self.exec(sys),
            Step::Seccomp => {
                let Some(filters) = self.filters else {
                    return Err(InitError::Seccomp {
                        source: crate::seccomp::SeccompError::NoFilters,
                    });
                };
                sys.apply_seccomp(filters)
                    .map_err(|source| InitError::Seccomp { source })?;
                self.confinement.seccomp = Some(seccomp_profile(spec.security).name().to_owned());
                Ok(())
            }
            Step::ReadSpec
            | Step::CompileSeccomp
            | Step::JoinCgroup
            | Step::NewSession
            | Step::UserNs
            | Step::Unshare
            | Step::Fork => Ok(()),
        }
    }

    fn set_user(&mut self, sys: &impl Syscall) -> Result<(), InitError> {
        let read = |path: &'static str| {
            sys.read_file(Path::new(path))
                .map_err(|source| InitError::ReadUserDb { path, source })
        };
        let passwd = read("/etc/passwd")?;
        let group = read("/etc/group")?;
        let ExecUser {
            uid,
            gid,
            groups,
            home,
        } = user::resolve(&self.spec.user, passwd.as_deref(), group.as_deref())
            .map_err(|source| InitError::User { source })?;
        if !self.env.iter().any(|e| e.starts_with("HOME=")) {
            self.env.push(format!("HOME={home}"));
        }
        sys.setgroups(&groups)
            .map_err(|source| InitError::SetGroups { source })?;
        sys.setgid(gid)
            .map_err(|source| InitError::SetGid { source })?;
        sys.setuid(uid)
            .map_err(|source| InitError::SetUid { source })?;
        if uid != 0 {
            // As Docker: a non-root user has no capabilities (setuid already cleared them;
            // the Capabilities step states it explicitly).
            self.keep = 0;
        }
        Ok(())
    }

    fn exec(&self, sys: &impl Syscall) -> Result<(), InitError> {
        let Some(name) = self.spec.args.first() else {
            return Err(InitError::InvalidSpec {
                reason: "empty args".into(),
            });
        };
        let path = lookup(sys, name, &self.env)
            .ok_or_else(|| InitError::ExecNotFound { name: name.clone() })?;
        let nul = |s: &str| {
            CString::new(s).map_err(|_| InitError::InvalidSpec {
                reason: format!("NUL byte in {s:?}"),
            })
        };
        let cpath = nul(&path.to_string_lossy())?;
        let argv = self
            .spec
            .args
            .iter()
            .map(|a| nul(a))
            .collect::<Result<Vec<_>, _>>()?;
        let secret_names: Vec<String> = self
            .spec
            .secret_env
            .iter()
            .map(|(k, _)| format!("{k}="))
            .collect();
        let mut envp = self
            .env
            .iter()
            .filter(|e| !secret_names.iter().any(|k| e.starts_with(k.as_str())))
            .map(|e| nul(e))
            .collect::<Result<Vec<_>, _>>()?;
        // Secrets given as environment variables replace a variable of the same name.
        for (k, v) in &self.spec.secret_env {
            let mut kv = format!("{k}=").into_bytes();
            kv.extend_from_slice(v.expose());
            envp.push(CString::new(kv).map_err(|_| InitError::InvalidSpec {
                reason: format!("NUL byte in the secret for {k}"),
            })?);
        }
        sys.reset_signals()
            .map_err(|source| InitError::ResetSignals { source })?;
        sys.report(&Report::Confined(self.confinement.clone()));
        sys.execve(&cpath, &argv, &envp)
            .map_err(|source| InitError::Exec {
                path: path.to_string_lossy().into_owned(),
                source,
            })
    }
}

/// The seccomp profile a step's security mode selects.
fn seccomp_profile(security: Security) -> crate::seccomp::SeccompProfile {
    match security {
        Security::Insecure => crate::seccomp::SeccompProfile::Insecure,
        _ => crate::seccomp::SeccompProfile::Default,
    }
}

/// Every capability number the kernel may know (the bounding set's bits never exceed it).
fn all_caps() -> u64 {
    caps::mask(&(0..=40).map(caps::Cap).collect::<Vec<_>>())
}

/// `args[0]` as runc resolves it: a name with a `/` is used as is; otherwise the first
/// executable `dir/name` along the step env's `PATH` (or [`DEFAULT_PATH`]).
fn lookup(sys: &impl Syscall, name: &str, env: &[String]) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
        .find(|candidate| sys.is_executable(candidate))
}

/// The child's pid, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe; `pid` is our own unreaped child.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Outer init: forward termination signals to PID 1 and relay its exit status.
fn supervise(pid: rustix::process::Pid) -> i32 {
    CHILD.store(pid.as_raw_nonzero().get(), Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: `sa` is zero-initialised (a valid `sigaction`), its handler is an
        // `extern "C" fn(c_int)` that only loads an atomic and calls kill(2), both
        // async-signal-safe; no SA_SIGINFO, so the one-argument handler type is right.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return code;
                }
                if let Some(sig) = status.terminating_signal() {
                    return 128 + sig;
                }
            }
            Err(Errno::INTR) | Ok(None) => {}
            Err(_) => return SETUP_FAILED,
        }
    }
}

#[cfg(test)]
mod tests;
