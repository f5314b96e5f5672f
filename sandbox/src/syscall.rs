//! The kernel calls the init makes, behind one small trait (youki's pattern).
//!
//! [`LinuxSyscall`](crate::linux::LinuxSyscall) is the real thing; [`tests::Recording`] records
//! the calls so the ORDER of the set-up is unit-tested without root. The operations are as
//! coarse as the order needs: "mount this file system at this path inside the root" is one
//! call, whose `openat2(RESOLVE_IN_ROOT)` walk is tested end to end.

use std::ffi::CString;
use std::fmt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::thread::UnshareFlags;

use crate::caps::CapSets;
use crate::landlock::{LandlockError, LandlockRecord};
use crate::spec::{IdMap, NetworkMode, Rootfs};

/// A failed kernel call inside a compound operation: which call, and its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpError {
    /// The call that failed (`"openat2"`, `"move_mount"`, …).
    pub op: &'static str,
    pub errno: Errno,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.errno)
    }
}

impl std::error::Error for OpError {}

/// `map_err` helper: tag an errno with the call that returned it.
pub(crate) fn op(op: &'static str) -> impl FnOnce(Errno) -> OpError {
    move |errno| OpError { op, errno }
}

/// Result of [`Syscall::fork`].
#[derive(Debug)]
pub(crate) enum Forked {
    /// In the outer init: the child's pid and the write end of its lifeline pipe (kept open
    /// until the outer init exits, so the child can tell whether its parent is still alive).
    Parent {
        pid: rustix::process::Pid,
        _lifeline: std::os::fd::OwnedFd,
    },
    /// In the child, PID 1 of the new PID namespace.
    Child,
}

/// A file system the init mounts inside the new root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InRootFs {
    /// `proc`, `nosuid,nodev,noexec`, of the new PID namespace.
    Proc,
    /// A small tmpfs populated with device nodes and the `/proc/self/fd` symlinks.
    Dev,
    /// A new `devpts` instance, `ptmxmode=0666`.
    Devpts,
    /// `/dev/shm`, tmpfs `1777`.
    Shm,
    /// `sysfs`, read-only.
    Sysfs,
    /// A recursive bind of a host path.
    Bind { source: PathBuf, readonly: bool },
    /// A fresh tmpfs.
    Tmpfs { size: Option<u64>, mode: u32 },
    /// One read-only secret file on a private tmpfs (see [`crate::MountKind::SecretFile`]);
    /// `uid`/`gid` are host ids (already mapped through the user namespace, if any).
    SecretFile {
        data: crate::SecretBytes,
        mode: u32,
        uid: u32,
        gid: u32,
        stage: PathBuf,
    },
}

/// How a kernel path inside the root is hidden or frozen (runc's masked and read-only paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Harden {
    /// Hide: `/dev/null` bound over a file, an empty read-only tmpfs over a directory.
    Mask,
    /// Bind the path onto itself read-only (recursive, `nosuid,nodev,noexec`).
    ReadOnlyBind,
    /// Make the mount already at the path read-only (not its submounts).
    ReadOnlyMount,
}

/// The kernel calls of the init, in the granularity its step order needs.
pub(crate) trait Syscall {
    /// Be in the step's cgroup: checked in `/proc/self/cgroup` (the parent moved the init
    /// there before sending the spec), joined (`0` into each `cgroup.procs`) if not.
    fn join_cgroup(&self, procs: &[PathBuf]) -> Result<(), crate::cgroup::CgroupError>;
    /// A new user namespace with `map` written by this (host-privileged) process, held by the
    /// returned fd (`/proc/<helper>/ns/user`; the helper that made it has exited).
    fn create_userns(&self, map: &IdMap) -> Result<std::os::fd::OwnedFd, OpError>;
    /// `setsid(2)`.
    fn setsid(&self) -> Result<(), Errno>;
    /// `unshare(2)`.
    fn unshare(&self, flags: UnshareFlags) -> Result<(), Errno>;
    /// `fork(2)`; the child gets `PR_SET_PDEATHSIG(SIGKILL)` and checks its lifeline.
    fn fork(&self) -> Result<Forked, Errno>;
    /// `mount(NULL, "/", NULL, MS_REC|MS_PRIVATE)`.
    fn make_root_private(&self) -> Result<(), Errno>;
    /// Mount the rootfs; returns the directory to pivot into.
    fn mount_rootfs(&self, rootfs: &Rootfs) -> Result<PathBuf, OpError>;
    /// Mount `fs` at `target` inside `root`, creating the target, never leaving `root`.
    fn mount_in_root(&self, root: &Path, target: &str, fs: &InRootFs) -> Result<(), OpError>;
    /// Apply `how` to `target` inside `root`; a target that does not exist is skipped
    /// (`Ok(false)`). Never creates anything and never follows a symlink.
    fn harden_in_root(&self, root: &Path, target: &str, how: Harden) -> Result<bool, OpError>;
    /// Create the directory `path` (and its parents) inside `root`, never leaving it.
    fn make_dir_in_root(&self, root: &Path, path: &str) -> Result<(), OpError>;
    /// Stack an idmapped clone of the mount tree at `root` onto `root` (only its top mount is
    /// idmapped: proc, sysfs and devpts can not be).
    fn idmap_root(&self, root: &Path, userns: std::os::fd::BorrowedFd<'_>) -> Result<(), OpError>;
    /// `setns(fd, CLONE_NEWUSER)`: all capabilities in that namespace, none outside.
    fn enter_userns(&self, userns: std::os::fd::BorrowedFd<'_>) -> Result<(), Errno>;
    /// Bring up `lo` in the current network namespace.
    fn loopback_up(&self) -> Result<(), Errno>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> Result<(), Errno>;
    /// `chdir(root)`, `pivot_root(".", ".")`, `umount2(".", MNT_DETACH)`, `chdir("/")`.
    fn pivot_root(&self, root: &Path) -> Result<(), OpError>;
    /// `mkdir -p`.
    fn mkdir_all(&self, path: &Path) -> Result<(), Errno>;
    /// `chdir(2)`.
    fn chdir(&self, path: &Path) -> Result<(), Errno>;
    /// Read a small text file; `None` when it does not exist.
    fn read_file(&self, path: &Path) -> Result<Option<String>, Errno>;
    /// `setgroups(2)`.
    fn setgroups(&self, groups: &[u32]) -> Result<(), Errno>;
    /// `setgid(2)` (real, effective and saved).
    fn setgid(&self, gid: u32) -> Result<(), Errno>;
    /// `setuid(2)` (real, effective and saved).
    fn setuid(&self, uid: u32) -> Result<(), Errno>;
    /// `PR_CAPBSET_DROP` every capability whose bit is not set in `keep`; returns the bounding
    /// set read back afterwards.
    fn drop_bounding(&self, keep: u64) -> Result<u64, Errno>;
    /// Clear the ambient set, then `capset` effective, permitted and inheritable, each limited
    /// to what the process has (a host may withhold some from root). Returns the permitted set
    /// applied.
    fn set_caps(&self, sets: CapSets) -> Result<u64, Errno>;
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    fn set_no_new_privs(&self) -> Result<(), Errno>;
    /// Build and apply the step's landlock ruleset (see [`crate::landlock`]).
    fn landlock(&self, network: NetworkMode) -> Result<LandlockRecord, LandlockError>;
    /// Install the compiled seccomp filters on this (single) thread.
    fn apply_seccomp(
        &self,
        filters: &crate::seccomp::Filters,
    ) -> Result<(), crate::seccomp::SeccompError>;
    /// Put the (new root's) `/dev/null` on fd 0.
    fn stdin_from_dev_null(&self) -> Result<(), Errno>;
    /// Mark every fd above 2 close-on-exec (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`).
    fn cloexec_fds_above_stdio(&self) -> Result<(), Errno>;
    /// Every signal back to `SIG_DFL` and an empty signal mask: exec keeps ignored signals
    /// ignored, and the init's runtime ignores SIGPIPE (Rust) or inherited others.
    fn reset_signals(&self) -> Result<(), Errno>;
    /// Is `path` a regular file with an execute bit (`exec.LookPath`'s test)?
    fn is_executable(&self, path: &Path) -> bool;
    /// Write one report line to the report pipe (best effort: a lost report only loses the
    /// record, the step still runs).
    fn report(&self, report: &crate::init::Report);
    /// `execve(2)`. Returns only on failure (`Ok` only from a recording implementation).
    fn execve(&self, path: &CString, argv: &[CString], envp: &[CString]) -> Result<(), Errno>;
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Records each call as a short line; every call succeeds.
    #[derive(Default)]
    pub(crate) struct Recording {
        pub calls: RefCell<Vec<String>>,
        /// Paths [`Syscall::is_executable`] says yes to.
        pub executables: Vec<PathBuf>,
        /// Contents [`Syscall::read_file`] returns.
        pub files: Vec<(PathBuf, String)>,
    }

    impl Recording {
        fn log(&self, line: String) {
            self.calls.borrow_mut().push(line);
        }
        /// The recorded calls' names (the text before the first `(`).
        pub(crate) fn names(&self) -> Vec<String> {
            self.calls
                .borrow()
                .iter()
                .map(|c| c.split('(').next().unwrap_or_default().to_owned())
                .collect()
        }
    }

    impl Syscall for Recording {
        fn join_cgroup(&self, procs: &[PathBuf]) -> Result<(), crate::cgroup::CgroupError> {
            self.log(format!("join_cgroup({procs:?})"));
            Ok(())
        }
        fn create_userns(&self, map: &IdMap) -> Result<std::os::fd::OwnedFd, OpError> {
            self.log(format!("create_userns({map:?})"));
            std::fs::File::open("/dev/null")
                .map(std::os::fd::OwnedFd::from)
                .map_err(|_| OpError {
                    op: "open",
                    errno: Errno::NOENT,
                })
        }
        fn setsid(&self) -> Result<(), Errno> {
            self.log("setsid()".into());
            Ok(())
        }
        fn unshare(&self, flags: UnshareFlags) -> Result<(), Errno> {
            self.log(format!("unshare({flags:?})"));
            Ok(())
        }
        fn fork(&self) -> Result<Forked, Errno> {
            self.log("fork()".into());
            Ok(Forked::Child)
        }
        fn make_root_private(&self) -> Result<(), Errno> {
            self.log("make_root_private()".into());
            Ok(())
        }
        fn mount_rootfs(&self, rootfs: &Rootfs) -> Result<PathBuf, OpError> {
            self.log(format!("mount_rootfs({rootfs:?})"));
            Ok(PathBuf::from("/newroot"))
        }
        fn mount_in_root(&self, root: &Path, target: &str, fs: &InRootFs) -> Result<(), OpError> {
            self.log(format!(
                "mount_in_root({}, {target}, {fs:?})",
                root.display()
            ));
            Ok(())
        }
        fn harden_in_root(&self, root: &Path, target: &str, how: Harden) -> Result<bool, OpError> {
            self.log(format!(
                "harden_in_root({}, {target}, {how:?})",
                root.display()
            ));
            Ok(true)
        }
        fn make_dir_in_root(&self, root: &Path, path: &str) -> Result<(), OpError> {
            self.log(format!("make_dir_in_root({}, {path})", root.display()));
            Ok(())
        }
        fn idmap_root(
            &self,
            root: &Path,
            _userns: std::os::fd::BorrowedFd<'_>,
        ) -> Result<(), OpError> {
            self.log(format!("idmap_root({})", root.display()));
            Ok(())
        }
        fn enter_userns(&self, _userns: std::os::fd::BorrowedFd<'_>) -> Result<(), Errno> {
            self.log("enter_userns()".into());
            Ok(())
        }
        fn loopback_up(&self) -> Result<(), Errno> {
            self.log("loopback_up()".into());
            Ok(())
        }
        fn sethostname(&self, name: &str) -> Result<(), Errno> {
            self.log(format!("sethostname({name})"));
            Ok(())
        }
        fn pivot_root(&self, root: &Path) -> Result<(), OpError> {
            self.log(format!("pivot_root({})", root.display()));
            Ok(())
        }
        fn mkdir_all(&self, path: &Path) -> Result<(), Errno> {
            self.log(format!("mkdir_all({})", path.display()));
            Ok(())
        }
        fn chdir(&self, path: &Path) -> Result<(), Errno> {
            self.log(format!("chdir({})", path.display()));
            Ok(())
        }
        fn read_file(&self, path: &Path) -> Result<Option<String>, Errno> {
            self.log(format!("read_file({})", path.display()));
            Ok(self
                .files
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, c)| c.clone()))
        }
        fn setgroups(&self, groups: &[u32]) -> Result<(), Errno> {
            self.log(format!("setgroups({groups:?})"));
            Ok(())
        }
        fn setgid(&self, gid: u32) -> Result<(), Errno> {
            self.log(format!("setgid({gid})"));
            Ok(())
        }
        fn setuid(&self, uid: u32) -> Result<(), Errno> {
            self.log(format!("setuid({uid})"));
            Ok(())
        }
        fn drop_bounding(&self, keep: u64) -> Result<u64, Errno> {
            self.log(format!("drop_bounding({keep:#x})"));
            Ok(keep & ((1 << 41) - 1))
        }
        fn set_caps(&self, sets: CapSets) -> Result<u64, Errno> {
            self.log(format!(
                "set_caps(e={:#x}, p={:#x}, i={:#x})",
                sets.effective, sets.permitted, sets.inheritable
            ));
            Ok(sets.permitted)
        }
        fn set_no_new_privs(&self) -> Result<(), Errno> {
            self.log("set_no_new_privs()".into());
            Ok(())
        }
        fn landlock(&self, network: NetworkMode) -> Result<LandlockRecord, LandlockError> {
            self.log(format!("landlock({network:?})"));
            Ok(LandlockRecord {
                enforced: crate::landlock::Enforcement::Full,
                abi: 7,
                tcp_restricted: network == NetworkMode::None,
            })
        }
        fn stdin_from_dev_null(&self) -> Result<(), Errno> {
            self.log("stdin_from_dev_null()".into());
            Ok(())
        }
        fn cloexec_fds_above_stdio(&self) -> Result<(), Errno> {
            self.log("cloexec_fds_above_stdio()".into());
            Ok(())
        }
        fn reset_signals(&self) -> Result<(), Errno> {
            self.log("reset_signals()".into());
            Ok(())
        }
        fn is_executable(&self, path: &Path) -> bool {
            self.executables.iter().any(|p| p == path)
        }
        fn apply_seccomp(
            &self,
            filters: &crate::seccomp::Filters,
        ) -> Result<(), crate::seccomp::SeccompError> {
            self.log(format!("apply_seccomp({filters:?})"));
            Ok(())
        }
        fn report(&self, report: &crate::init::Report) {
            self.log(format!(
                "report({})",
                String::from_utf8_lossy(&report.to_line()).trim()
            ));
        }
        fn execve(&self, path: &CString, argv: &[CString], envp: &[CString]) -> Result<(), Errno> {
            self.log(format!("execve({path:?}, {argv:?}, {envp:?})"));
            Ok(())
        }
    }
}
