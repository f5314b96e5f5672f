//! Which cgroup hierarchies this host has, from `/proc/self/mountinfo`.

use std::fmt;
use std::path::{Path, PathBuf};

use super::CgroupError;

/// A controller kiln uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
    /// v1 only (v2 has `cgroup.freeze` in every cgroup); used to kill, never to limit.
    Freezer,
}

impl Controller {
    /// The kernel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::Cpu => "cpu",
            Self::Freezer => "freezer",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// cgroup v1 or v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    pub version: Version,
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory` or `/sys/fs/cgroup`.
    pub mount: PathBuf,
    /// v1: the controllers bound to it (mount options); v2: those its root offers
    /// (`cgroup.controllers`), i.e. the ones not bound to a v1 hierarchy.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    pub fn has(&self, c: Controller) -> bool {
        self.controllers.iter().any(|n| n == c.name())
    }
}

/// The hierarchies kiln can use: at most one v2, and the v1 ones with a controller kiln knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Hierarchies {
    pub v2: Option<Hierarchy>,
    pub v1: Vec<Hierarchy>,
}

const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Where distributions mount cgroups; a mount there wins over the same hierarchy elsewhere.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Hierarchies {
    /// The hierarchies mounted in this mount namespace.
    pub fn detect() -> Result<Self, CgroupError> {
        let mountinfo =
            std::fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Mounts {
                path: MOUNTINFO.into(),
                source,
            })?;
        Ok(Self::from_mountinfo(&mountinfo, |mount| {
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
        }))
    }

    /// Parse `mountinfo`; `controllers` returns a v2 mount's `cgroup.controllers`.
    pub fn from_mountinfo(mountinfo: &str, controllers: impl Fn(&Path) -> String) -> Self {
        let mut mounts: Vec<(PathBuf, &str, &str)> =
            mountinfo.lines().filter_map(parse_line).collect();
        // Prefer the conventional mount point when a hierarchy is mounted twice (a bind mount
        // elsewhere, a container's view); stable, so mount order decides among the rest.
        mounts.sort_by_key(|(point, _, _)| !point.starts_with(CGROUP_ROOT));
        let mut found = Self::default();
        for (mount, fstype, super_opts) in mounts {
            match fstype {
                "cgroup2" if found.v2.is_none() => {
                    let list = controllers(&mount);
                    found.v2 = Some(Hierarchy {
                        version: Version::V2,
                        controllers: list.split_whitespace().map(str::to_owned).collect(),
                        mount,
                    });
                }
                "cgroup" => {
                    let controllers: Vec<String> = super_opts
                        .split(',')
                        .filter(|o| KNOWN.iter().any(|c| c.name() == *o))
                        .map(str::to_owned)
                        .collect();
                    let seen = |c: &String| found.v1.iter().any(|h| h.controllers.contains(c));
                    if !controllers.is_empty() && !controllers.iter().any(seen) {
                        found.v1.push(Hierarchy {
                            version: Version::V1,
                            mount,
                            controllers,
                        });
                    }
                }
                _ => {}
            }
        }
        found
    }

    /// The hierarchy that holds `c`: v2 when its root offers it, else the v1 one bound to it.
    pub fn locate(&self, c: Controller) -> Option<&Hierarchy> {
        // A v2 root never lists `freezer` (v2's freezer is core, `cgroup.freeze`).
        self.all().find(|h| h.has(c))
    }

    /// Every hierarchy, v2 first.
    pub fn all(&self) -> impl Iterator<Item = &Hierarchy> {
        self.v2.iter().chain(&self.v1)
    }
}

/// The v1 controllers kiln cares about; a v1 hierarchy with none of them (cpuset, devices,
/// `name=systemd`, …) is left alone.
const KNOWN: [Controller; 4] = [
    Controller::Memory,
    Controller::Pids,
    Controller::Cpu,
    Controller::Freezer,
];

/// `(mount point, fstype, super options)` of one mountinfo line:
/// `id parent maj:min root mountpoint opts [optional…] - fstype source superopts`.
fn parse_line(line: &str) -> Option<(PathBuf, &str, &str)> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let super_opts = right.nth(1)?;
    Some((PathBuf::from(unescape(mount_point)), fstype, super_opts))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// This machine: v1 controllers each on its own mount, cgroup2 at `unified` with none.
    pub(crate) const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// Pure v1 with `cpu,cpuacct` co-mounted and no cgroup2.
    pub(crate) const V1: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids rw,nosuid shared:11 - cgroup cgroup rw,pids
30 25 0:27 / /sys/fs/cgroup/freezer rw,nosuid shared:12 - cgroup cgroup rw,freezer
";

    /// Pure v2, plus a second view of it elsewhere.
    pub(crate) const V2: &str = "\
20 1 0:30 /x /mnt/other\\040cg rw - cgroup2 cgroup2 rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    pub(crate) fn v2_controllers(mount: &Path) -> String {
        if mount == Path::new("/sys/fs/cgroup") {
            "cpuset cpu io memory hugetlb pids rdma misc\n".into()
        } else if mount == Path::new("/sys/fs/cgroup/unified") {
            "\n".into()
        } else {
            "cpu\n".into()
        }
    }

    #[test]
    fn a_hybrid_host_uses_v1_for_memory_pids_cpu_and_has_a_v2_hierarchy_without_them() {
        let h = Hierarchies::from_mountinfo(HYBRID, v2_controllers);
        let v2 =
            h.v2.as_ref()
                .map(|h| (h.mount.clone(), h.controllers.len()));
        assert_eq!(v2, Some(("/sys/fs/cgroup/unified".into(), 0)));
        let at = |c| h.locate(c).map(|h| (h.version, h.mount.clone()));
        assert_eq!(
            at(Controller::Memory),
            Some((Version::V1, "/sys/fs/cgroup/memory".into()))
        );
        assert_eq!(
            at(Controller::Cpu),
            Some((Version::V1, "/sys/fs/cgroup/cpu".into()))
        );
        assert_eq!(
            at(Controller::Pids),
            Some((Version::V1, "/sys/fs/cgroup/pids".into()))
        );
        assert_eq!(
            at(Controller::Freezer),
            Some((Version::V1, "/sys/fs/cgroup/freezer".into()))
        );
        // cpuacct, cpuset and name=systemd are not kiln's business.
        assert_eq!(h.v1.len(), 4);
    }

    #[test]
    fn co_mounted_v1_controllers_share_one_hierarchy() {
        let h = Hierarchies::from_mountinfo(V1, v2_controllers);
        assert!(h.v2.is_none());
        let cpu = h.locate(Controller::Cpu).map(|h| h.mount.clone());
        assert_eq!(cpu, Some("/sys/fs/cgroup/cpu,cpuacct".into()));
        assert_eq!(
            h.locate(Controller::Cpu).map(|h| h.controllers.clone()),
            Some(vec!["cpu".to_owned()])
        );
    }

    #[test]
    fn pure_v2_is_preferred_at_sys_fs_cgroup_and_offers_every_limit() {
        let h = Hierarchies::from_mountinfo(V2, v2_controllers);
        assert!(h.v1.is_empty());
        for c in [Controller::Memory, Controller::Pids, Controller::Cpu] {
            let at = h.locate(c).map(|h| (h.version, h.mount.clone()));
            assert_eq!(at, Some((Version::V2, "/sys/fs/cgroup".into())), "{c}");
        }
        assert!(h.locate(Controller::Freezer).is_none());
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        assert_eq!(unescape(r"/mnt/a\040b\134c\011"), "/mnt/a b\\c\t");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn this_host_is_readable() -> Result<(), CgroupError> {
        // Whatever the host has; detection itself must not fail where /proc is mounted.
        let h = Hierarchies::detect()?;
        for x in h.all() {
            assert!(x.mount.is_absolute());
        }
        Ok(())
    }
}
