//! Kernel facts, for provenance and `kiln info`.

use serde::Serialize;

/// What this kernel offers the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Features {
    /// `overlay` is listed in `/proc/filesystems`.
    pub overlay: bool,
    /// User namespaces can be created (`/proc/sys/user/max_user_namespaces` > 0).
    pub user_namespaces: bool,
    /// The cgroup hierarchy layout.
    pub cgroup: CgroupMode,
    /// Landlock ABI version; 0 when unsupported or disabled.
    pub landlock_abi: u32,
}

/// Which cgroup hierarchy the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CgroupMode {
    /// v1 controllers only.
    V1,
    /// v1 controllers plus cgroup2 at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// cgroup2 at `/sys/fs/cgroup`.
    V2,
    /// No cgroup file system found.
    None,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// Probe the running kernel. Cheap; reads a few `/proc` and `/sys` files.
pub fn probe() -> Features {
    let overlay = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    });
    let user_namespaces = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    Features {
        overlay,
        user_namespaces,
        cgroup: cgroup_mode(),
        landlock_abi: landlock_abi(),
    }
}

fn fs_magic(path: &str) -> Option<i64> {
    #[allow(clippy::useless_conversion)] // f_type's width differs between targets
    rustix::fs::statfs(path).ok().map(|s| i64::from(s.f_type))
}

fn cgroup_mode() -> CgroupMode {
    match fs_magic("/sys/fs/cgroup") {
        Some(CGROUP2_SUPER_MAGIC) => CgroupMode::V2,
        Some(TMPFS_MAGIC) if fs_magic("/sys/fs/cgroup/unified") == Some(CGROUP2_SUPER_MAGIC) => {
            CgroupMode::Hybrid
        }
        Some(TMPFS_MAGIC) => CgroupMode::V1,
        _ => CgroupMode::None,
    }
}

fn landlock_abi() -> u32 {
    // SAFETY: with LANDLOCK_CREATE_RULESET_VERSION the kernel requires attr == NULL and
    // size == 0, reads no memory, and returns the ABI version (or -1 with errno).
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(r).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_does_not_fail_and_reports_a_cgroup_mode() {
        let f = probe();
        assert!(matches!(
            f.cgroup,
            CgroupMode::V1 | CgroupMode::Hybrid | CgroupMode::V2 | CgroupMode::None
        ));
    }
}
