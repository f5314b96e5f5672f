//! kilnd's own landlock domain, and why it holds no file-system rule.
//!
//! The issue asks that the daemon restrict itself with landlock to its state dir, config and
//! sockets where the kernel allows. The kernel does not allow it for a process that runs
//! build steps:
//!
//! - a landlock domain is inherited by every child and survives `execve`; each step's init is
//!   kilnd's child (its own binary, re-executed), so it runs in kilnd's domain;
//! - a thread whose domain handles any file-system access right can not change the file
//!   system topology: `mount(2)`, `umount(2)`, `pivot_root(2)` and `move_mount(2)` fail with
//!   `EPERM` whatever the rules allow (kernel documentation, "Landlock: unprivileged access
//!   control", section "Filesystem topology modification"; `hook_sb_mount` and friends in
//!   `security/landlock/fs.c`);
//! - the init must mount the step's overlay root, `/proc`, `/dev`, its masks and `pivot_root`
//!   into it before it applies the step's own landlock domain
//!   (`sandbox/src/init.rs`, `Step::Landlock` comes after `PivotRoot`).
//!
//! So any file-system rule on kilnd (a state-dir-only domain included) makes every build
//! fail; the test `a_file_system_domain_stops_the_sandbox` below shows it on the running
//! kernel. A domain is per thread but inherited, and tokio's worker and blocking threads that
//! spawn inits are created by the thread that built the runtime, so no thread of kilnd can be
//! restricted on its own without its steps. Network rules are out too: kilnd connects to
//! registries on any port, and a TCP rule would be inherited by `--network=host` steps.
//!
//! What remains is **scoping** (landlock ABI 6, Linux 6.12): kilnd and everything it starts
//! can not signal a process outside kilnd's domain, nor connect to an abstract unix socket
//! created outside it; and, as with every landlock domain (ABI 1), can not `ptrace` (or read
//! `/proc/PID/mem` of) a process outside it. kilnd needs none of that: it signals only its
//! own steps (inside nested domains) and uses only path-named sockets. Steps already scope
//! themselves (`sandbox/src/landlock.rs`); for them this changes nothing, except that
//! `--allow security.insecure` steps (which skip the step domain) are scoped too. On an
//! older kernel the domain is not enforced (best effort) and kilnd says so in its log.
//!
//! The ruleset also sets `no_new_privs` on kilnd (the `landlock` crate's default): every step
//! gets it from the sandbox anyway, and kilnd never runs a setuid binary.

use landlock::{ABI, Access, LandlockStatus, Ruleset, RulesetAttr, RulesetStatus, Scope};

/// The newest ABI this domain uses (scoping).
const TARGET_ABI: ABI = ABI::V6;

/// Why kilnd could not restrict itself (a broken ruleset, not a missing kernel feature).
#[derive(Debug, thiserror::Error)]
#[error("landlock self-restriction: {0}")]
pub struct ConfineError(#[from] landlock::RulesetError);

/// What kilnd's domain enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    /// Signals and abstract unix sockets are scoped to kilnd's domain.
    pub scoped: bool,
    /// The kernel's landlock ABI (0: landlock unavailable).
    pub kernel_abi: u32,
}

/// Restricts the calling thread and every thread and process it creates afterwards to a
/// scope-only landlock domain (see the module documentation). Call it before any other
/// thread exists: a domain applies to the calling thread only.
pub fn restrict_self() -> Result<Confinement, ConfineError> {
    let status = Ruleset::default()
        .scope(Scope::from_all(TARGET_ABI))?
        .create()?
        .restrict_self()?;
    let kernel_abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as u32,
        LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => 0,
    };
    let confinement = Confinement {
        scoped: status.ruleset == RulesetStatus::FullyEnforced,
        kernel_abi,
    };
    if confinement.scoped {
        tracing::info!(
            kernel_abi,
            "landlock: kilnd's signals and abstract unix sockets are scoped to itself and its steps"
        );
    } else {
        tracing::warn!(
            kernel_abi,
            "landlock: scoping not enforced (needs landlock ABI 6, Linux 6.12)"
        );
    }
    Ok(confinement)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::process::{Child, Command, Stdio};

    use landlock::{AccessFs, PathBeneath, PathFd, RulesetCreatedAttr};

    use super::*;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Runs `f` on a new thread: a landlock domain applies to the calling thread only, so the
    /// test harness's other threads stay unrestricted.
    fn on_own_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    /// `unshare --mount`, then mount and unmount a tmpfs: the kind of thing a step's init
    /// does first, in a child of the calling thread.
    fn child_can_mount() -> bool {
        let dir = tempfile::tempdir().unwrap();
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs kiln-confine \"$1\" && umount \"$1\"")
            .arg("sh")
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().unwrap()
    }

    /// `kill -0 PID` from a child of the calling thread.
    fn can_signal(pid: u32) -> bool {
        Command::new("sh")
            .args(["-c", "kill -0 \"$1\"", "sh", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    #[test]
    fn kilnds_domain_still_lets_steps_mount() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let mounted = on_own_thread(|| {
            restrict_self().unwrap();
            child_can_mount()
        });
        assert!(mounted, "a child of the confined thread could not mount");
    }

    #[test]
    fn signals_stay_inside_kilnds_domain() {
        let (scoped, outside_ok, inside_ok, children) = on_own_thread(|| {
            let outside = sleeper();
            let c = restrict_self().unwrap();
            let inside = sleeper();
            let r = (c.scoped, can_signal(outside.id()), can_signal(inside.id()));
            (r.0, r.1, r.2, [outside, inside])
        });
        // Killed from this (unconfined) thread: the confined one may not signal `outside`.
        for mut p in children {
            let _ = p.kill();
            let _ = p.wait();
        }
        assert!(inside_ok, "kilnd must be able to signal its own children");
        if scoped {
            assert!(
                !outside_ok,
                "a process outside kilnd's domain was signalled"
            );
        } else {
            eprintln!("landlock scoping unavailable on this kernel: outside not checked");
        }
    }

    /// The finding of the module documentation, on the running kernel: a domain that handles
    /// file-system access, even one that grants every right beneath `/`, forbids the mounts
    /// a step's init needs. This is why kilnd's domain has no file-system rule.
    #[test]
    fn a_file_system_domain_stops_the_sandbox() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (enforced, mounted) = on_own_thread(|| {
            let all = AccessFs::from_all(ABI::V1);
            let status = Ruleset::default()
                .handle_access(all)
                .unwrap()
                .create()
                .unwrap()
                .add_rule(PathBeneath::new(PathFd::new("/").unwrap(), all))
                .unwrap()
                .restrict_self()
                .unwrap();
            (
                status.ruleset != RulesetStatus::NotEnforced,
                child_can_mount(),
            )
        });
        if enforced {
            assert!(
                !mounted,
                "mount succeeded under a file-system landlock domain"
            );
        } else {
            eprintln!("landlock unavailable on this kernel: not checked");
        }
    }
}
