//! Per-step cgroups: memory, pids and CPU limits, OOM and fork-bomb reporting, and killing
//! every process of a step.
//!
//! # Layout
//!
//! Each step gets `kiln/<name>` in every hierarchy it needs, created by [`StepCgroup::create`]
//! and removed by [`StepCgroup::remove`] (or its `Drop`); `kiln/` itself is shared by all
//! builds and stays. kiln's own process never joins anything under `kiln/`. The hierarchies
//! come from `/proc/self/mountinfo` (a mount under `/sys/fs/cgroup` wins over another view):
//!
//! - **v2** (`/sys/fs/cgroup` is `cgroup2`): one directory, `/sys/fs/cgroup/kiln/<name>`.
//!   The controllers it needs are first enabled (`+memory`, `+pids`, `+cpu`) in the root's
//!   and then `kiln/`'s `cgroup.subtree_control`. v2 allows no process in an inner cgroup
//!   whose children have controllers; the root is exempt, and `kiln/` never holds one.
//!   Files: `memory.max`, `memory.swap.max` = 0, `pids.max`, `cpu.max` = `"quota period"`.
//! - **v1** (each controller in its own hierarchy): one directory per controller,
//!   `/sys/fs/cgroup/memory/kiln/<name>` (`memory.limit_in_bytes`, then
//!   `memory.memsw.limit_in_bytes` with the same value), `/sys/fs/cgroup/pids/kiln/<name>`
//!   (`pids.max`), `/sys/fs/cgroup/cpu,cpuacct/kiln/<name>` or `cpu/…`
//!   (`cpu.cfs_period_us`, then `cpu.cfs_quota_us`), and `/sys/fs/cgroup/freezer/kiln/<name>`
//!   to kill with.
//! - **Hybrid** (v1 controllers plus cgroup2 at `/sys/fs/cgroup/unified`, as on CI): each
//!   controller is used where it is: in v2 if the v2 root offers it (`cgroup.controllers`),
//!   else in its v1 hierarchy. The v2 hierarchy is always used too, even without controllers:
//!   it tracks every process of the step and its `cgroup.kill` kills them; the v1 freezer is
//!   then not needed. On CI that is `unified/kiln/<name>` + `memory/`, `pids/`, `cpu/`.
//!
//! A limit whose controller is in no hierarchy is an error naming the controller
//! ([`CgroupError::MissingController`]): kiln fails closed rather than run a step without the
//! limit it was asked for. The files a kernel may lack (`memory.swap.max`,
//! `memory.memsw.limit_in_bytes`: no swap accounting) are skipped; there is then nothing to
//! charge swap to, and the memory limit still holds for RAM.
//!
//! Why memsw and swap.max: `memory.max`/`memory.limit_in_bytes` bound RAM only. On a host with
//! swap a memory hog would page out and go on until the swap is full, slowing the whole host
//! to a crawl; with swap capped (v2: `memory.swap.max` 0; v1: memory+swap equal to memory)
//! it is OOM-killed at the limit instead.
//!
//! The step cgroups are beside kiln's own cgroup, not below it (as Docker's and runc's are
//! beside dockerd's): v2 would not let kiln's cgroup both hold kiln and have controllers for
//! its children. So kiln's own limits (a systemd `MemoryMax=`) do not bound its steps; the
//! per-step limits and their [defaults](Limits::defaults) do.
//!
//! # Joining
//!
//! The step's processes join through [`StepCgroup::procs_files`]: the sandbox init writes
//! `0` to each with [`join_cgroups`] before it unshares its cgroup namespace (so the
//! namespace is rooted at the step's own cgroup and the step sees itself at `/`) and before
//! it forks (so every process of the step is in it from its first instruction).
//!
//! # Killing
//!
//! [`StepCgroup::kill_all`] loops until no process is left in any of the directories (nor in
//! any cgroup a step made below them), at most [`KILL_TIMEOUT`]:
//! - v2: `cgroup.kill` (Linux 5.14): the kernel SIGKILLs the whole subtree, and a fork that
//!   races with it fails; before 5.14, `cgroup.freeze` then signals as below;
//! - v1: the freezer: freeze, SIGKILL every process in `cgroup.procs`, thaw; frozen processes
//!   can not fork, so no fork bomb outruns it;
//! - no freezer at all: SIGKILL every listed process, round after round.
//!
//! Signals go through a pidfd opened before the membership is re-read, so a pid recycled by a
//! host process after the step's process exited is never signalled.
//!
//! # Reporting
//!
//! [`StepCgroup::outcome`]: an OOM kill from `oom_kill` in `memory.events` (v2) or
//! `memory.oom_control` (v1); a fork refused by the pids limit from `max` in `pids.events`
//! (v1 and v2); the peak memory from `memory.peak` (v2, Linux 5.19) or
//! `memory.max_usage_in_bytes` (v1).

mod hierarchy;
mod kill;
mod limits;
mod plan;

use std::collections::{BTreeMap, HashSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use hierarchy::Controller;
pub use kill::KILL_TIMEOUT;
pub use limits::{CpuLimit, Limits};

use hierarchy::{Hierarchies, Version};
use kill::{KillVia, keyed, read};
use plan::{Op, StepDir, plan};

/// The directory, in each hierarchy, that holds the step cgroups.
pub const KILN_PARENT: &str = "kiln";
/// The longest step cgroup name.
pub const MAX_NAME_LEN: usize = 128;
/// How long [`StepCgroup::remove`] retries an `rmdir` the kernel calls busy.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(2);

/// A cgroup failure: which operation, on which file, and the kernel's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    #[error("cgroup name {name:?} is invalid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid {limit} limit: {reason}")]
    InvalidLimit { limit: &'static str, reason: String },
    #[error("reading the mount table {path}: {source}")]
    Mounts {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cgroup file system is mounted")]
    NoCgroupFs,
    #[error("the {controller} cgroup controller is not available on this host")]
    MissingController { controller: Controller },
    #[error("cgroup {path} already exists (never reused)")]
    Exists { path: PathBuf },
    #[error("creating cgroup {path}: {source}")]
    Mkdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("enabling the {controller} controller in {path}: {source}")]
    EnableController {
        controller: Controller,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("joining the cgroup through {path}: {source}")]
    Join {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("killing pid {pid}: {source}")]
    Signal { pid: i32, source: std::io::Error },
    #[error("{path} still has {remaining} process(es) after {waited:?} of killing")]
    KillTimeout {
        path: PathBuf,
        remaining: usize,
        waited: Duration,
    },
    #[error("removing cgroup {path}: {source}")]
    Rmdir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the cgroup saw of a step. Read it after the step ended and before
/// [`StepCgroup::remove`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Outcome {
    /// The kernel OOM-killed a process of the step at its memory limit.
    pub oom_killed: bool,
    /// A fork or clone of the step failed because of its pids limit.
    pub pids_limit_hit: bool,
    /// The most memory the step used, when the kernel reports it and memory was limited.
    pub memory_peak_bytes: Option<u64>,
}

/// One step's cgroups (one directory per hierarchy). Dropping it kills what is left in them
/// and removes them, best effort; [`StepCgroup::remove`] does the same and says what failed.
#[derive(Debug)]
pub struct StepCgroup {
    name: String,
    dirs: Vec<StepDir>,
    kill: KillVia,
}

impl StepCgroup {
    /// Create `kiln/<name>` with `limits` in every hierarchy needed (see the module docs).
    /// `name`: 1 to [`MAX_NAME_LEN`] of `[A-Za-z0-9._-]`, starting with a letter or digit.
    /// An existing cgroup of that name is an error, never reused. On error nothing is left.
    pub fn create(name: &str, limits: &Limits) -> Result<Self, CgroupError> {
        // Refuse bad input before looking at the host.
        validate_name(name)?;
        limits.validate()?;
        Self::create_with(&Hierarchies::detect()?, name, limits, KillVia::Auto)
    }

    pub(crate) fn create_with(
        h: &Hierarchies,
        name: &str,
        limits: &Limits,
        kill: KillVia,
    ) -> Result<Self, CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let ops = plan(
            h,
            name,
            limits,
            &Limits::aggregate(),
            kill == KillVia::V1Freezer,
        )?;
        // On an error below, dropping `cg` removes the directories made so far (empty).
        let mut cg = Self {
            name: name.to_owned(),
            dirs: Vec::new(),
            kill,
        };
        for op in ops {
            cg.apply(op)?;
        }
        Ok(cg)
    }

    fn apply(&mut self, op: Op) -> Result<(), CgroupError> {
        match op {
            Op::Enable { file, controller } => {
                let enabled = read(&file)?;
                if !enabled.split_whitespace().any(|c| c == controller.name()) {
                    kill::write(&file, &format!("+{controller}")).map_err(|e| match e {
                        CgroupError::Write { path, source, .. } => CgroupError::EnableController {
                            controller,
                            path,
                            source,
                        },
                        other => other,
                    })?;
                }
            }
            Op::EnsureDir(path) => match std::fs::create_dir(&path) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Mkdir { path, source: e });
                }
                _ => {}
            },
            Op::CreateDir(dir) => match std::fs::create_dir(&dir.path) {
                Ok(()) => self.dirs.push(dir),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(if dir.path.is_dir() {
                        CgroupError::Exists { path: dir.path }
                    } else {
                        CgroupError::InvalidName {
                            name: self.name.clone(),
                            reason: "it is the name of a cgroup control file",
                        }
                    });
                }
                Err(source) => {
                    return Err(CgroupError::Mkdir {
                        path: dir.path,
                        source,
                    });
                }
            },
            Op::Write {
                file,
                value,
                required,
            } => {
                if required || file.exists() {
                    kill::write(&file, &value)?;
                }
            }
        }
        Ok(())
    }

    /// The step's name (`kiln/<name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step's cgroup directories, one per hierarchy (v2 first).
    pub fn paths(&self) -> Vec<&Path> {
        self.dirs.iter().map(|d| d.path.as_path()).collect()
    }

    /// The `cgroup.procs` files a process writes `0` to (with [`join_cgroups`]) to join the
    /// step, one per hierarchy. They go to the init in the step spec.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    /// The pids (in kiln's PID namespace) of every process in the step's cgroups.
    pub fn processes(&self) -> Result<Vec<i32>, CgroupError> {
        Ok(kill::live_pids(&self.dirs)?.into_iter().collect())
    }

    /// Kill every process of the step and wait until they are gone (at most
    /// [`KILL_TIMEOUT`]). Any thread may call it, e.g. to cancel a step.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        kill::kill_all(&self.dirs, self.kill)
    }

    /// The CPU time (user and system) the step's processes have used so far, when the kernel
    /// accounts it for the step: `usage_usec` in the v2 directory's `cpu.stat` (every v2
    /// cgroup has it, with or without the cpu controller), else `cpuacct.usage` in a v1
    /// directory that has one (`cpu,cpuacct` mounted together). `None` when neither is there.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.dirs.iter().find_map(|d| match d.version {
            Version::V2 => std::fs::read_to_string(d.path.join("cpu.stat"))
                .ok()
                .and_then(|t| keyed(&t, "usage_usec"))
                .map(Duration::from_micros),
            Version::V1 => std::fs::read_to_string(d.path.join("cpuacct.usage"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .map(Duration::from_nanos),
        })
    }

    /// What the step ran into. A counter the kernel does not have reads as not hit.
    pub fn outcome(&self) -> Outcome {
        let mut o = Outcome::default();
        let with = |c| self.dirs.iter().find(|d| d.controllers.contains(&c));
        let text = |d: &StepDir, file| std::fs::read_to_string(d.path.join(file)).ok();
        if let Some(d) = with(Controller::Memory) {
            let (events, peak) = match d.version {
                Version::V2 => ("memory.events", "memory.peak"),
                Version::V1 => ("memory.oom_control", "memory.max_usage_in_bytes"),
            };
            o.oom_killed = text(d, events)
                .and_then(|t| keyed(&t, "oom_kill"))
                .is_some_and(|n| n > 0);
            o.memory_peak_bytes = text(d, peak).and_then(|t| t.trim().parse().ok());
        }
        if let Some(d) = with(Controller::Pids) {
            o.pids_limit_hit = text(d, "pids.events")
                .and_then(|t| keyed(&t, "max"))
                .is_some_and(|n| n > 0);
        }
        o
    }

    /// Kill what is left (see [`StepCgroup::kill_all`]), then remove every directory. Takes
    /// a few milliseconds once the step's processes have exited. Whatever the result, the
    /// value is consumed and its `Drop` does nothing more; a failure leaves the directories
    /// for [`remove_stale_cgroups`].
    pub fn remove(mut self) -> Result<(), CgroupError> {
        let result = self.cleanup();
        self.dirs.clear();
        result
    }

    fn cleanup(&mut self) -> Result<(), CgroupError> {
        self.kill_all()?;
        let mut first_err = None;
        while let Some(d) = self.dirs.pop() {
            if let Err(e) = rmdir_tree(&d.path) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        if !self.dirs.is_empty() {
            let _ = self.cleanup();
        }
    }
}

/// Join the cgroups behind `procs_files` (from [`StepCgroup::procs_files`]): write `0`, the
/// calling process, to each. Call it in the process that becomes the step, before it forks
/// and before `unshare(CLONE_NEWCGROUP)`. It allocates nothing unless it fails (paths under
/// 256 bytes), so it may run between `fork` and `exec`.
pub fn join_cgroups(procs_files: &[PathBuf]) -> Result<(), CgroupError> {
    move_into_cgroups(procs_files, 0)
}

/// Move process `pid` (`0`: the caller) into every cgroup whose `cgroup.procs` is listed.
/// The first migration of a burst can wait for an RCU grace period (the kernel's
/// `cgroup_threadgroup_rwsem`), milliseconds; [`crate::Sandbox::spawn`] therefore moves the
/// init from the parent while the init is still starting up.
pub fn move_into_cgroups(procs_files: &[PathBuf], pid: u32) -> Result<(), CgroupError> {
    use rustix::fs::{Mode, OFlags};
    let pid = pid.to_string();
    for path in procs_files {
        let joined = rustix::fs::open(
            path.as_path(),
            OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .and_then(|fd| rustix::io::write(&fd, pid.as_bytes()));
        if let Err(e) = joined {
            return Err(CgroupError::Join {
                path: path.clone(),
                source: e.into(),
            });
        }
    }
    Ok(())
}

/// Make sure the caller is in every cgroup listed (their `cgroup.procs` files, all of one
/// step cgroup, i.e. one directory name): `/proc/self/cgroup` is checked, and only when a
/// hierarchy is missing is `0` written to every file. Used by the init after the parent moved
/// it, so a failed or skipped move can never let a step run outside its limits.
pub fn ensure_in_cgroups(procs_files: &[PathBuf]) -> Result<(), CgroupError> {
    let names: HashSet<&std::ffi::OsStr> = procs_files
        .iter()
        .filter_map(|p| p.parent().and_then(Path::file_name))
        .collect();
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let joined = membership
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .filter(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|n| names.contains(n))
        })
        .count();
    if names.len() == 1 && joined >= procs_files.len() {
        return Ok(());
    }
    join_cgroups(procs_files)
}

/// Every `kiln/<name>` directory in every hierarchy kiln uses (the no-leak check of tests).
pub fn kiln_cgroups() -> Vec<PathBuf> {
    let Ok(h) = Hierarchies::detect() else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = h
        .all()
        .flat_map(|x| children(&x.mount.join(KILN_PARENT)))
        .collect();
    out.sort();
    out
}

/// Kill the processes of, and remove, every `kiln/<name>` whose name starts with `prefix`:
/// the leftovers of a kiln that died before it could clean up. Returns the directories
/// removed. Call it only when no live build can own such a name (e.g. at start-up, holding
/// the store's lock, with a per-store prefix): it can not tell a dead build from a live one.
/// An empty prefix matches every kiln step cgroup on the host.
pub fn remove_stale_cgroups(prefix: &str) -> Result<Vec<PathBuf>, CgroupError> {
    if let Some(reason) = name_chars_error(prefix) {
        return Err(CgroupError::InvalidName {
            name: prefix.to_owned(),
            reason,
        });
    }
    remove_cgroups_where(&Hierarchies::detect()?, |name| name.starts_with(prefix))
}

/// Kill the processes of, and remove, the step cgroups of kiln processes that are gone:
/// every `kiln/step-<pid>-…` (the names the sandbox gives) whose `<pid>` is no live process.
/// A kiln or kilnd killed with SIGKILL leaves its steps running, reparented, with nothing to
/// time them out; kilnd calls this at start. Safe beside live builds of other kiln processes:
/// a live pid keeps its cgroups, even one recycled by an unrelated program (they then stay,
/// the safe way round). Returns the directories removed.
pub fn remove_orphaned_cgroups() -> Result<Vec<PathBuf>, CgroupError> {
    remove_cgroups_where(&Hierarchies::detect()?, |name| {
        step_owner(name).is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
    })
}

/// The pid in a step cgroup name `step-<pid>-<tag>-<n>`.
pub(crate) fn step_owner(name: &str) -> Option<u32> {
    name.strip_prefix("step-")?
        .split('-')
        .next()?
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

/// Kill the processes of, and remove, every `kiln/<name>` for which `matches(name)`.
fn remove_cgroups_where(
    h: &Hierarchies,
    matches: impl Fn(&str) -> bool,
) -> Result<Vec<PathBuf>, CgroupError> {
    let mut by_name: BTreeMap<String, Vec<StepDir>> = BTreeMap::new();
    for hier in h.all() {
        for path in children(&hier.mount.join(KILN_PARENT)) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if matches(name) {
                let freezer = hier.version == Version::V1 && hier.has(Controller::Freezer);
                by_name.entry(name.to_owned()).or_default().push(StepDir {
                    version: hier.version,
                    controllers: freezer.then_some(Controller::Freezer).into_iter().collect(),
                    path,
                });
            }
        }
    }
    let mut removed = Vec::new();
    let mut first_err = None;
    for (name, dirs) in by_name {
        let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path.clone()).collect();
        let cg = StepCgroup {
            name,
            dirs,
            kill: KillVia::Auto,
        };
        match cg.remove() {
            Ok(()) => removed.extend(paths),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(removed), Err)
}

/// The subdirectories of `dir` (none when it does not exist).
fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// `rmdir` `dir` and any cgroup below it, children first, retrying while the kernel says
/// busy (a process that was just killed is still leaving).
fn rmdir_tree(dir: &Path) -> Result<(), CgroupError> {
    for d in kill::subtree(dir)? {
        let start = Instant::now();
        loop {
            match std::fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < RMDIR_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => return Err(CgroupError::Rmdir { path: d, source }),
            }
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), CgroupError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 128 bytes")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        // Rules out `.`, `..`, hidden names and anything that looks like an option.
        Some("does not start with a letter or digit")
    } else {
        name_chars_error(name)
    };
    reason.map_or(Ok(()), |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    })
}

/// Only `[A-Za-z0-9._-]`: no `/`, so a name is one path component.
fn name_chars_error(name: &str) -> Option<&'static str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    (!name.chars().all(ok)).then_some("has a character outside [A-Za-z0-9._-]")
}

#[cfg(test)]
mod tests;
