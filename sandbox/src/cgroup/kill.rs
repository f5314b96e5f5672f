//! Killing every process of a step cgroup, and reading who is in it.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};

use super::CgroupError;
use super::hierarchy::{Controller, Version};
use super::plan::StepDir;

/// How long [`StepCgroup::kill_all`](super::StepCgroup::kill_all) waits for the processes to be gone. Exiting frees the process's
/// memory, which takes a while for a big one; a process stuck in uninterruptible sleep (a
/// dead NFS server, a FUSE daemon that never answers) may never go.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a freeze to complete before killing anyway.
const FREEZE_WAIT: Duration = Duration::from_millis(100);
/// The longest pause between two checks.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// How to kill: [`KillVia::Auto`] in production; the others force a path so each is tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillVia {
    /// v2 `cgroup.kill`, else v2 `cgroup.freeze`, else the v1 freezer, else signals.
    Auto,
    /// The v1 freezer (the plan then creates a freezer directory even beside v2).
    V1Freezer,
    /// SIGKILL each listed process, round after round. (`Auto` falls back to this method
    /// itself; only tests ask for it by name.)
    #[cfg_attr(not(test), allow(dead_code))]
    Signals,
}

enum Method<'a> {
    /// v2 `cgroup.kill` (Linux 5.14): the kernel kills the whole subtree, and a fork racing
    /// with it fails, so one write suffices.
    CgroupKill(&'a Path),
    /// Freeze, SIGKILL every listed process, thaw: frozen processes can not fork, so each
    /// round kills a fixed set.
    Freeze(&'a StepDir),
    /// Without a freezer a fork bomb can fork between the read and the kill; each round
    /// still kills every process it saw, so the bomb dies out within a few rounds.
    Signals,
}

fn method(dirs: &[StepDir], via: KillVia) -> Method<'_> {
    let v1_freezer = || {
        dirs.iter()
            .find(|d| d.version == Version::V1 && d.controllers.contains(&Controller::Freezer))
    };
    let v2 = dirs.iter().find(|d| d.version == Version::V2);
    match via {
        KillVia::Signals => Method::Signals,
        KillVia::V1Freezer => v1_freezer().map_or(Method::Signals, Method::Freeze),
        KillVia::Auto => match v2 {
            Some(d) if d.path.join("cgroup.kill").exists() => Method::CgroupKill(&d.path),
            Some(d) if d.path.join("cgroup.freeze").exists() => Method::Freeze(d),
            _ => v1_freezer().map_or(Method::Signals, Method::Freeze),
        },
    }
}

/// Kill every process in `dirs` (and in any cgroup below them) and wait until none is left.
pub(crate) fn kill_all(dirs: &[StepDir], via: KillVia) -> Result<(), CgroupError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut round = 0;
    loop {
        let live = live_pids(dirs)?;
        if live.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= KILL_TIMEOUT {
            let path = first_populated(dirs)?
                .or_else(|| dirs.first().map(|d| d.path.clone()))
                .unwrap_or_default();
            return Err(CgroupError::KillTimeout {
                path,
                remaining: live.len(),
                waited: start.elapsed(),
            });
        }
        match method(dirs, via) {
            Method::CgroupKill(dir) => {
                write(&dir.join("cgroup.kill"), "1")?;
                // A process listed in a v1 hierarchy but no longer in the v2 one (a step that
                // could move itself) is not covered by cgroup.kill: signal what is left.
                if round > 0 {
                    signal(dirs, &live)?;
                }
            }
            Method::Freeze(dir) => frozen(dir, || signal(dirs, &live))?,
            Method::Signals => signal(dirs, &live)?,
        }
        round += 1;
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Run `f` with `dir` frozen; thaw whatever `f` returned.
fn frozen(dir: &StepDir, f: impl FnOnce() -> Result<(), CgroupError>) -> Result<(), CgroupError> {
    let (file, freeze, thaw) = match dir.version {
        Version::V1 => (dir.path.join("freezer.state"), "FROZEN", "THAWED"),
        Version::V2 => (dir.path.join("cgroup.freeze"), "1", "0"),
    };
    write(&file, freeze)?;
    let start = Instant::now();
    // FREEZING can last (a task in an uninterruptible sleep); kill anyway after a while:
    // SIGKILL reaches frozen tasks, they die once thawed.
    while !is_frozen(dir)? && start.elapsed() < FREEZE_WAIT {
        std::thread::sleep(Duration::from_millis(1));
    }
    let result = f();
    let thawed = write(&file, thaw);
    result.and(thawed)
}

fn is_frozen(dir: &StepDir) -> Result<bool, CgroupError> {
    Ok(match dir.version {
        Version::V1 => read(&dir.path.join("freezer.state"))?.trim() == "FROZEN",
        Version::V2 => keyed(&read(&dir.path.join("cgroup.events"))?, "frozen") == Some(1),
    })
}

/// How many pidfds [`signal`] holds at once: well below the usual 1024 open files, whatever
/// the pids limit.
const PIDFD_BATCH: usize = 256;

/// SIGKILL each of `pids` that is still in one of `dirs`, never a recycled pid: a pidfd is
/// opened first, then the membership re-read. A pid listed after its pidfd was opened names
/// a process of the cgroup, and the pidfd names that process or one that has exited since
/// (then the signal goes nowhere); never a host process that got the pid later.
fn signal(dirs: &[StepDir], pids: &BTreeSet<i32>) -> Result<(), CgroupError> {
    let pids: Vec<Pid> = pids.iter().filter_map(|p| Pid::from_raw(*p)).collect();
    for batch in pids.chunks(PIDFD_BATCH) {
        let mut opened: Vec<(Pid, Option<OwnedFd>)> = Vec::with_capacity(batch.len());
        for &pid in batch {
            match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
                Ok(fd) => opened.push((pid, Some(fd))),
                Err(Errno::SRCH) => {}
                // Before Linux 5.3 there are no pidfds: kill(2) by pid, with the usual small
                // race (the re-read below narrows it to the time between it and the kill).
                Err(Errno::NOSYS) => opened.push((pid, None)),
                Err(e) => return Err(signal_error(pid, e)),
            }
        }
        let still = live_pids(dirs)?;
        for (pid, fd) in opened {
            if !still.contains(&pid.as_raw_nonzero().get()) {
                continue;
            }
            let sent = match &fd {
                Some(fd) => rustix::process::pidfd_send_signal(fd, Signal::KILL),
                None => rustix::process::kill_process(pid, Signal::KILL),
            };
            match sent {
                Ok(()) | Err(Errno::SRCH) => {}
                Err(e) => return Err(signal_error(pid, e)),
            }
        }
    }
    Ok(())
}

fn signal_error(pid: Pid, e: Errno) -> CgroupError {
    CgroupError::Signal {
        pid: pid.as_raw_nonzero().get(),
        source: e.into(),
    }
}

/// Every process in `dirs` and the cgroups below them, by pid in kiln's PID namespace.
pub(crate) fn live_pids(dirs: &[StepDir]) -> Result<BTreeSet<i32>, CgroupError> {
    let mut pids = BTreeSet::new();
    for d in dirs {
        for dir in subtree(&d.path)? {
            pids.extend(procs(&dir)?);
        }
    }
    Ok(pids)
}

fn first_populated(dirs: &[StepDir]) -> Result<Option<PathBuf>, CgroupError> {
    for d in dirs {
        for dir in subtree(&d.path)? {
            if !procs(&dir)?.is_empty() {
                return Ok(Some(dir));
            }
        }
    }
    Ok(None)
}

/// The pids in `dir`'s `cgroup.procs`; none when `dir` is gone.
fn procs(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|p| *p > 0)
            .collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Read { path, source }),
    }
}

/// `dir` and every cgroup below it, children before their parent (the order `rmdir` needs).
/// Normally just `dir`: a step has no cgroup file system to make children with, but a step
/// that got one must not leave them behind, nor processes in them.
pub(crate) fn subtree(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_owned(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(subtree(&entry.path())?);
        }
    }
    out.push(dir.to_owned());
    Ok(out)
}

/// Write `value` to an existing cgroup file, in one `write(2)` (the kernel takes one value
/// per write).
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let err = |source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err)?;
    std::io::Write::write_all(&mut f, value.as_bytes()).map_err(err)
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The number after `key` in a flat-keyed file (`memory.events`, `pids.events`,
/// `memory.oom_control`, `cgroup.events`).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files_are_read_by_key() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom_control, "oom_kill"), Some(3));
        assert_eq!(keyed(oom_control, "oom"), None);
        assert_eq!(keyed("max 0\n", "max"), Some(0));
        assert_eq!(keyed("populated 1\nfrozen 0\n", "frozen"), Some(0));
    }

    #[test]
    fn the_subtree_lists_children_before_parents() -> Result<(), Box<dyn std::error::Error>> {
        let t = tempfile::tempdir()?;
        std::fs::create_dir_all(t.path().join("a/b"))?;
        std::fs::write(t.path().join("a/cgroup.procs"), "")?;
        let got = subtree(t.path())?;
        assert_eq!(
            got,
            [
                t.path().join("a/b"),
                t.path().join("a"),
                t.path().to_owned()
            ]
        );
        assert!(subtree(&t.path().join("gone"))?.is_empty());
        Ok(())
    }
}
