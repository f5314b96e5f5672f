//! What creating a step's cgroups does, as data: the directories and the file writes, in
//! order. Pure, so the v1 and v2 layouts are both unit-tested on any host.

use std::path::PathBuf;

use super::hierarchy::{Controller, Hierarchies, Hierarchy, Version};
use super::{CgroupError, KILN_PARENT, Limits};

/// One operation of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Add `+controller` to a v2 `cgroup.subtree_control` unless it is listed already, so the
    /// children get the controller's files.
    Enable {
        file: PathBuf,
        controller: Controller,
    },
    /// `mkdir` where an existing directory is fine: the shared `kiln/` parent.
    EnsureDir(PathBuf),
    /// `mkdir` of the step's own cgroup. It existing already is an error: never reuse a live
    /// cgroup (another build's, or one a step escaped into).
    CreateDir(StepDir),
    /// Write `value` to `file`. `required: false` skips a file this kernel does not have
    /// (`memory.swap.max`, `memory.memsw.limit_in_bytes` without swap accounting).
    Write {
        file: PathBuf,
        value: String,
        required: bool,
    },
}

/// One directory of a step cgroup, in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StepDir {
    pub version: Version,
    pub path: PathBuf,
    /// The controllers this directory is there for (empty: only to track the processes).
    pub controllers: Vec<Controller>,
}

/// The operations that create `kiln/<name>` with `limits`, in order:
/// 1. the v2 hierarchy, when there is one, always (limits or not): it tracks every process of
///    the step, and its `cgroup.kill` kills them all at once;
/// 2. the hierarchy of each limited controller (v2 if its root offers it, else v1), a missing
///    one an error;
/// 3. v1 `freezer` when there is no v2 hierarchy (or `v1_freezer` asks for it): it stops a
///    fork bomb while it is killed;
/// 4. with none of these, one v1 hierarchy to track the processes in.
///
/// In each hierarchy: (v2) the controllers enabled in the root's and `kiln/`'s
/// `subtree_control`, `kiln/`'s own memory and pids limits (`aggregate`, best effort), then the
/// step's directory, then its limit files.
pub(crate) fn plan(
    h: &Hierarchies,
    name: &str,
    limits: &Limits,
    aggregate: &Limits,
    v1_freezer: bool,
) -> Result<Vec<Op>, CgroupError> {
    let mut dirs: Vec<(&Hierarchy, Vec<Controller>)> = Vec::new();
    if let Some(v2) = &h.v2 {
        add(&mut dirs, v2, None);
    }
    let wanted = [
        (Controller::Memory, limits.memory_bytes.is_some()),
        (Controller::Pids, limits.pids.is_some()),
        (Controller::Cpu, limits.cpu.is_some()),
    ];
    for (c, _) in wanted.iter().filter(|(_, w)| *w) {
        let hier = h
            .locate(*c)
            .ok_or(CgroupError::MissingController { controller: *c })?;
        add(&mut dirs, hier, Some(*c));
    }
    if h.v2.is_none() || v1_freezer {
        match h.locate(Controller::Freezer) {
            Some(f) => add(&mut dirs, f, Some(Controller::Freezer)),
            None if v1_freezer => {
                return Err(CgroupError::MissingController {
                    controller: Controller::Freezer,
                });
            }
            None => {}
        }
    }
    if dirs.is_empty() {
        let any = h.v1.first().ok_or(CgroupError::NoCgroupFs)?;
        dirs.push((any, Vec::new()));
    }

    let mut ops = Vec::new();
    for (hier, controllers) in dirs {
        let parent = hier.mount.join(KILN_PARENT);
        let path = parent.join(name);
        let limited = || controllers.iter().filter(|c| **c != Controller::Freezer);
        if hier.version == Version::V2 {
            // Root first, then kiln/: a controller is only offered to kiln/ once the root
            // enables it. kiln/ never holds a process, so enabling there never hits the "no
            // internal processes" rule; the root is exempt from it.
            for c in limited() {
                ops.push(Op::Enable {
                    file: hier.mount.join("cgroup.subtree_control"),
                    controller: *c,
                });
            }
            ops.push(Op::EnsureDir(parent.clone()));
            for c in limited() {
                ops.push(Op::Enable {
                    file: parent.join("cgroup.subtree_control"),
                    controller: *c,
                });
            }
        } else {
            ops.push(Op::EnsureDir(parent.clone()));
        }
        // All steps together stay below the host's size (parallel steps each default to half
        // the RAM). Best effort: another kiln may be writing the same values.
        for c in limited().filter(|c| matches!(c, Controller::Memory | Controller::Pids)) {
            for (file, value, _) in writes(hier.version, *c, aggregate) {
                ops.push(Op::Write {
                    file: parent.join(file),
                    value,
                    required: false,
                });
            }
        }
        ops.push(Op::CreateDir(StepDir {
            version: hier.version,
            path: path.clone(),
            controllers: controllers.clone(),
        }));
        for c in &controllers {
            for (file, value, required) in writes(hier.version, *c, limits) {
                ops.push(Op::Write {
                    file: path.join(file),
                    value,
                    required,
                });
            }
        }
    }
    Ok(ops)
}

/// Add controller `c` (or just the hierarchy, for tracking) to the directory in `hier`.
fn add<'h>(
    dirs: &mut Vec<(&'h Hierarchy, Vec<Controller>)>,
    hier: &'h Hierarchy,
    c: Option<Controller>,
) {
    match dirs.iter_mut().find(|(x, _)| x.mount == hier.mount) {
        Some((_, cs)) => cs.extend(c),
        None => dirs.push((hier, c.into_iter().collect())),
    }
}

/// The limit files of controller `c`, in the order they must be written.
fn writes(v: Version, c: Controller, l: &Limits) -> Vec<(&'static str, String, bool)> {
    match (v, c) {
        (Version::V2, Controller::Memory) => l.memory_bytes.map_or_else(Vec::new, |m| {
            // swap.max 0: otherwise the step could use all the host's swap on top of max.
            vec![
                ("memory.max", m.to_string(), true),
                ("memory.swap.max", "0".into(), false),
            ]
        }),
        (Version::V1, Controller::Memory) => l.memory_bytes.map_or_else(Vec::new, |m| {
            // memsw is memory+swap, and must stay ≥ limit_in_bytes: write it second, the same
            // value, so no swap is allowed on top of the limit.
            vec![
                ("memory.limit_in_bytes", m.to_string(), true),
                ("memory.memsw.limit_in_bytes", m.to_string(), false),
            ]
        }),
        (_, Controller::Pids) => l
            .pids
            .map_or_else(Vec::new, |p| vec![("pids.max", p.to_string(), true)]),
        (Version::V2, Controller::Cpu) => l.cpu.map_or_else(Vec::new, |cpu| {
            vec![(
                "cpu.max",
                format!("{} {}", cpu.quota_us, cpu.period_us),
                true,
            )]
        }),
        (Version::V1, Controller::Cpu) => l.cpu.map_or_else(Vec::new, |cpu| {
            // The period first, so the quota is checked against the period it is meant for.
            vec![
                ("cpu.cfs_period_us", cpu.period_us.to_string(), true),
                ("cpu.cfs_quota_us", cpu.quota_us.to_string(), true),
            ]
        }),
        (_, Controller::Freezer) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::hierarchy::tests::{HYBRID, V1, V2, v2_controllers};
    use super::*;
    use crate::cgroup::CpuLimit;

    fn limits() -> Limits {
        Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(100),
            cpu: Some(CpuLimit {
                quota_us: 150_000,
                period_us: 100_000,
            }),
        }
    }

    fn render(mountinfo: &str, limits: &Limits, freezer: bool) -> Result<Vec<String>, CgroupError> {
        let h = Hierarchies::from_mountinfo(mountinfo, v2_controllers);
        let aggregate = Limits {
            memory_bytes: Some(3 << 30),
            pids: Some(16384),
            cpu: None,
        };
        let ops = plan(&h, "s1", limits, &aggregate, freezer)?;
        Ok(ops
            .iter()
            .map(|op| match op {
                Op::Enable { file, controller } => format!("+{controller} {}", file.display()),
                Op::EnsureDir(p) => format!("mkdir -p {}", p.display()),
                Op::CreateDir(d) => format!("mkdir {}", d.path.display()),
                Op::Write {
                    file,
                    value,
                    required,
                } => format!(
                    "{}{} = {value}",
                    if *required { "" } else { "? " },
                    file.display()
                ),
            })
            .collect())
    }

    #[test]
    fn v2_enables_the_controllers_then_writes_max_swap_pids_and_cpu() -> Result<(), CgroupError> {
        assert_eq!(
            render(V2, &limits(), false)?,
            [
                "+memory /sys/fs/cgroup/cgroup.subtree_control",
                "+pids /sys/fs/cgroup/cgroup.subtree_control",
                "+cpu /sys/fs/cgroup/cgroup.subtree_control",
                "mkdir -p /sys/fs/cgroup/kiln",
                "+memory /sys/fs/cgroup/kiln/cgroup.subtree_control",
                "+pids /sys/fs/cgroup/kiln/cgroup.subtree_control",
                "+cpu /sys/fs/cgroup/kiln/cgroup.subtree_control",
                "? /sys/fs/cgroup/kiln/memory.max = 3221225472",
                "? /sys/fs/cgroup/kiln/memory.swap.max = 0",
                "? /sys/fs/cgroup/kiln/pids.max = 16384",
                "mkdir /sys/fs/cgroup/kiln/s1",
                "/sys/fs/cgroup/kiln/s1/memory.max = 67108864",
                "? /sys/fs/cgroup/kiln/s1/memory.swap.max = 0",
                "/sys/fs/cgroup/kiln/s1/pids.max = 100",
                "/sys/fs/cgroup/kiln/s1/cpu.max = 150000 100000",
            ]
        );
        Ok(())
    }

    #[test]
    fn a_hybrid_host_limits_in_v1_and_tracks_in_the_unified_hierarchy() -> Result<(), CgroupError> {
        assert_eq!(
            render(HYBRID, &limits(), false)?,
            [
                "mkdir -p /sys/fs/cgroup/unified/kiln",
                "mkdir /sys/fs/cgroup/unified/kiln/s1",
                "mkdir -p /sys/fs/cgroup/memory/kiln",
                "? /sys/fs/cgroup/memory/kiln/memory.limit_in_bytes = 3221225472",
                "? /sys/fs/cgroup/memory/kiln/memory.memsw.limit_in_bytes = 3221225472",
                "mkdir /sys/fs/cgroup/memory/kiln/s1",
                "/sys/fs/cgroup/memory/kiln/s1/memory.limit_in_bytes = 67108864",
                "? /sys/fs/cgroup/memory/kiln/s1/memory.memsw.limit_in_bytes = 67108864",
                "mkdir -p /sys/fs/cgroup/pids/kiln",
                "? /sys/fs/cgroup/pids/kiln/pids.max = 16384",
                "mkdir /sys/fs/cgroup/pids/kiln/s1",
                "/sys/fs/cgroup/pids/kiln/s1/pids.max = 100",
                "mkdir -p /sys/fs/cgroup/cpu/kiln",
                "mkdir /sys/fs/cgroup/cpu/kiln/s1",
                "/sys/fs/cgroup/cpu/kiln/s1/cpu.cfs_period_us = 100000",
                "/sys/fs/cgroup/cpu/kiln/s1/cpu.cfs_quota_us = 150000",
            ]
        );
        Ok(())
    }

    #[test]
    fn pure_v1_adds_the_freezer_to_kill_with() -> Result<(), CgroupError> {
        let l = Limits {
            memory_bytes: None,
            cpu: None,
            ..limits()
        };
        assert_eq!(
            render(V1, &l, false)?,
            [
                "mkdir -p /sys/fs/cgroup/pids/kiln",
                "? /sys/fs/cgroup/pids/kiln/pids.max = 16384",
                "mkdir /sys/fs/cgroup/pids/kiln/s1",
                "/sys/fs/cgroup/pids/kiln/s1/pids.max = 100",
                "mkdir -p /sys/fs/cgroup/freezer/kiln",
                "mkdir /sys/fs/cgroup/freezer/kiln/s1",
            ]
        );
        Ok(())
    }

    #[test]
    fn without_limits_the_processes_are_still_tracked() -> Result<(), CgroupError> {
        let none = Limits::unlimited();
        assert_eq!(
            render(HYBRID, &none, false)?,
            [
                "mkdir -p /sys/fs/cgroup/unified/kiln",
                "mkdir /sys/fs/cgroup/unified/kiln/s1"
            ]
        );
        assert_eq!(render(V2, &none, false)?.len(), 2);
        let no_freezer = "28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            render(no_freezer, &none, false)?,
            [
                "mkdir -p /sys/fs/cgroup/memory/kiln",
                "mkdir /sys/fs/cgroup/memory/kiln/s1"
            ]
        );
        assert!(matches!(
            render("", &none, false),
            Err(CgroupError::NoCgroupFs)
        ));
        Ok(())
    }

    #[test]
    fn a_limit_whose_controller_is_missing_is_an_error_naming_it() {
        let memory_only = "28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let err = render(memory_only, &limits(), false);
        assert!(
            matches!(
                err,
                Err(CgroupError::MissingController {
                    controller: Controller::Pids
                })
            ),
            "{err:?}"
        );
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("pids"), "{msg}");
        // No v1 freezer on pure v2: asking for it is refused, not ignored.
        assert!(render(V2, &Limits::unlimited(), true).is_err());
    }
}
