//! The step spec: everything the init needs to run one `RUN` command.
//!
//! The engine builds a [`StepSpec`], [`crate::Sandbox::spawn`] serialises it as JSON onto the
//! init's stdin, and the init parses it once ("parse, don't validate") before touching the
//! kernel. New fields (capabilities, seccomp profile, landlock rules, cgroup limits) are added
//! here; the struct is `#[non_exhaustive]` so adding them is not a breaking change: build one
//! with [`StepSpec::new`] and assign the public fields.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroup::Limits;

/// One build step to run in a fresh sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepSpec {
    /// argv. `args[0]` is absolute, or resolved inside the new root with the `PATH` from
    /// [`StepSpec::env`] (a default `PATH` when it has none), as runc does.
    pub args: Vec<String>,
    /// The step's whole environment, `K=V` strings. Nothing of the daemon's leaks in.
    /// `HOME` is added from the user's passwd entry when absent (as Docker does).
    pub env: Vec<String>,
    /// Working directory, absolute inside the root; created (as root) when missing.
    pub cwd: String,
    /// Dockerfile `USER` syntax: `name|uid[:group|gid]`, resolved inside the new root from its
    /// `/etc/passwd` and `/etc/group`. Empty means root.
    pub user: String,
    /// Host name in the step's UTS namespace. Empty means `kiln`.
    pub hostname: String,
    /// Network namespace choice.
    pub network: NetworkMode,
    /// The root file system.
    pub rootfs: Rootfs,
    /// Extra mounts, applied in order after `/proc`, `/dev` and `/sys`.
    pub mounts: Vec<Mount>,
    /// The confinement: [`Security::Sandboxed`] unless the build holds the dangerous
    /// `security.insecure` entitlement and the step asked for it.
    pub security: Security,
    /// Kill the whole step when it runs longer than this; `None` waits for ever.
    pub timeout: Option<std::time::Duration>,
    /// Memory, pids and CPU limits of the step's own cgroup ([`Limits::defaults`] unless set).
    pub limits: Limits,
    /// Run the step in a user namespace with this mapping, so root in the step is an
    /// unprivileged id range on the host. Needs a [`Rootfs::Dir`] root (an overlay mount can
    /// not be idmapped); `None` (default): the initial user namespace.
    pub userns: Option<IdMap>,
    /// Secrets exposed as environment variables (`RUN --mount=type=secret,env=VAR`): added to
    /// [`StepSpec::env`] by the init just before exec, so the value is never in a string
    /// anything prints. Left out of the encoding when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<(String, SecretBytes)>,
}

/// A user namespace mapping: ids `0..size` in the step are `host_uid..host_uid+size` and
/// `host_gid..host_gid+size` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// First host uid (step uid 0).
    pub host_uid: u32,
    /// First host gid (step gid 0).
    pub host_gid: u32,
    /// How many ids are mapped (65536 covers every id images use).
    pub size: u32,
}

impl IdMap {
    /// dockerd's `--userns-remap=default` range: 100000, 65536 ids.
    pub const DEFAULT: IdMap = IdMap {
        host_uid: 100_000,
        host_gid: 100_000,
        size: 65_536,
    };
}

impl StepSpec {
    /// A spec running `args` as root in `/`, no network, no extra mounts.
    pub fn new(args: Vec<String>, rootfs: Rootfs) -> Self {
        Self {
            args,
            env: vec![format!("PATH={DEFAULT_PATH}")],
            cwd: "/".to_owned(),
            user: String::new(),
            hostname: String::new(),
            network: NetworkMode::None,
            rootfs,
            mounts: Vec::new(),
            security: Security::Sandboxed,
            timeout: None,
            limits: Limits::defaults(),
            userns: None,
            secret_env: Vec::new(),
        }
    }
}

/// `PATH` used to find `args[0]` when the step env has none (the value Docker and runc use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which network the step sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NetworkMode {
    /// A new network namespace with only `lo`, brought up.
    None,
    /// The host's network namespace (the policy decides whether a step may have it).
    Host,
}

/// How tightly a step is confined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Security {
    /// The default: Docker's default capabilities (minus `NET_RAW`) for root and none for
    /// other users, the default seccomp allow-list, the landlock domain, masked and read-only
    /// kernel paths.
    #[default]
    Sandboxed,
    /// DANGEROUS (`RUN --security=insecure` with the `security.insecure` entitlement): every
    /// capability, the insecure seccomp profile (mount, namespaces, ptrace allowed) and no
    /// landlock domain. A root step can then undo the masks and mount host devices: it is root
    /// on the host, like `docker run --privileged`. `no_new_privs`, the cgroup limits and the
    /// seccomp refusals of kexec, modules, reboot, swap and the clock stay.
    Insecure,
}

/// The step's root file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rootfs {
    /// An overlay mounted by the init at `mountpoint` (inside the step's mount namespace only).
    Overlay {
        /// Read-only layers, top first. May be empty (an empty directory is used).
        lowers: Vec<PathBuf>,
        /// Where the step's writes land.
        upper: PathBuf,
        /// Overlay work directory, on the same file system as `upper`.
        work: PathBuf,
        /// An existing empty directory to mount the overlay on.
        mountpoint: PathBuf,
    },
    /// A plain read-write directory (the copying fallback when overlayfs is unavailable).
    Dir {
        /// The directory; it is bind-mounted onto itself so it can be `pivot_root`ed into.
        path: PathBuf,
    },
}

/// One extra mount inside the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the root. Resolved with `RESOLVE_IN_ROOT`: a symlink in it can not
    /// lead outside the root. Missing directories are created.
    pub target: String,
    /// What to mount.
    pub kind: MountKind,
}

/// What a [`Mount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MountKind {
    /// A bind mount (recursive) of a host path chosen by the engine.
    Bind {
        /// Host path (trusted: chosen by the engine, never by the Dockerfile).
        source: PathBuf,
        /// Mount it read-only.
        readonly: bool,
    },
    /// A fresh tmpfs, `nosuid,nodev`.
    Tmpfs {
        /// Size limit in bytes; the kernel default (half of RAM) when `None`.
        size: Option<u64>,
        /// Mode of the tmpfs root directory, e.g. `0o1777`.
        mode: u32,
    },
    /// A secret file (`RUN --mount=type=secret`): one read-only file holding `data`, on a
    /// fresh tmpfs of its own that exists only in the step's mount namespace. The init mounts
    /// that tmpfs on `stage` (in its namespace only), writes the file, binds the file alone
    /// onto the target and detaches the tmpfs from `stage` again; the value never touches a
    /// disk and the step sees nothing of the tmpfs but the file.
    SecretFile {
        /// The value.
        data: SecretBytes,
        /// File mode (BuildKit's default `0400`).
        mode: u32,
        /// Owner inside the step.
        uid: u32,
        /// Group inside the step.
        gid: u32,
        /// An empty host directory chosen by the engine (trusted), used as described above;
        /// it stays empty on the host.
        stage: PathBuf,
    },
}

/// A secret value. `Debug` prints `****`, and the buffer is overwritten with zeros when it is
/// dropped (best effort: copies the serialiser made on the way are not).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps `value`.
    pub fn new(value: Vec<u8>) -> Self {
        Self(value)
    }

    /// The value.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference into the vector's buffer;
            // the volatile write keeps the compiler from eliding the zeroing of a buffer that
            // is about to be freed.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_json() -> Result<(), serde_json::Error> {
        let mut spec = StepSpec::new(
            vec!["sh".into(), "-c".into(), "true".into()],
            Rootfs::Overlay {
                lowers: vec!["/l1".into(), "/l0".into()],
                upper: "/u".into(),
                work: "/w".into(),
                mountpoint: "/m".into(),
            },
        );
        spec.mounts.push(Mount {
            target: "/tmp".into(),
            kind: MountKind::Tmpfs {
                size: Some(1 << 20),
                mode: 0o1777,
            },
        });
        let json = serde_json::to_vec(&spec)?;
        let back: StepSpec = serde_json::from_slice(&json)?;
        assert_eq!(back, spec);
        Ok(())
    }

    #[test]
    fn a_secret_is_never_printed_by_debug() {
        let mut spec = StepSpec::new(vec!["true".into()], Rootfs::Dir { path: "/r".into() });
        spec.mounts.push(Mount {
            target: "/run/secrets/a".into(),
            kind: MountKind::SecretFile {
                data: SecretBytes::new(b"hunter2-canary".to_vec()),
                mode: 0o400,
                uid: 0,
                gid: 0,
                stage: "/s".into(),
            },
        });
        spec.secret_env
            .push(("TOKEN".into(), SecretBytes::new(b"hunter2-canary".to_vec())));
        let shown = format!("{spec:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("****"));
    }
}
