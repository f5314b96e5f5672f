//! Linux capabilities of a step.
//!
//! A step that runs as root keeps only Docker's default set ([`DEFAULT_CAPS`], without
//! `NET_RAW`, as the hardened-sandbox issue asks); a step that runs as any other user keeps
//! none. The set is applied in two places because of how the kernel guards each part:
//! - the **bounding set** is shrunk before the user change ([`crate::init::Step::DropBounding`]),
//!   because `PR_CAPBSET_DROP` needs `CAP_SETPCAP` in the effective set, which a non-root
//!   user loses at `setuid`;
//! - after the user change ([`crate::init::Step::Capabilities`]) the ambient set is cleared,
//!   and effective = permitted = the kept set (empty for a non-root user), inheritable empty
//!   (moby's fix for CVE-2022-24769: a non-empty inheritable set lets file capabilities of a
//!   binary the step runs raise its permitted set).
//!
//! With `no_new_privs` (always set) and an empty ambient set, `execve` can not add to this:
//! setuid bits and file capabilities are ignored, and for root the new permitted set is the
//! bounding set, i.e. [`DEFAULT_CAPS`].

use serde::{Deserialize, Serialize};

/// One capability, by its kernel number (`linux/capability.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cap(pub u32);

macro_rules! caps {
    ($($name:ident = $nr:expr),* $(,)?) => {
        impl Cap {
            $(pub const $name: Cap = Cap($nr);)*
            /// The `CAP_*` name, e.g. `CAP_CHOWN`; `None` for a number this table lacks.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($nr => Some(concat!("CAP_", stringify!($name))),)*
                    _ => None,
                }
            }
        }
    };
}

caps! {
    CHOWN = 0, DAC_OVERRIDE = 1, DAC_READ_SEARCH = 2, FOWNER = 3, FSETID = 4, KILL = 5,
    SETGID = 6, SETUID = 7, SETPCAP = 8, LINUX_IMMUTABLE = 9, NET_BIND_SERVICE = 10,
    NET_BROADCAST = 11, NET_ADMIN = 12, NET_RAW = 13, IPC_LOCK = 14, IPC_OWNER = 15,
    SYS_MODULE = 16, SYS_RAWIO = 17, SYS_CHROOT = 18, SYS_PTRACE = 19, SYS_PACCT = 20,
    SYS_ADMIN = 21, SYS_BOOT = 22, SYS_NICE = 23, SYS_RESOURCE = 24, SYS_TIME = 25,
    SYS_TTY_CONFIG = 26, MKNOD = 27, LEASE = 28, AUDIT_WRITE = 29, AUDIT_CONTROL = 30,
    SETFCAP = 31, MAC_OVERRIDE = 32, MAC_ADMIN = 33, SYSLOG = 34, WAKE_ALARM = 35,
    BLOCK_SUSPEND = 36, AUDIT_READ = 37, PERFMON = 38, BPF = 39, CHECKPOINT_RESTORE = 40,
}

/// What a root step keeps: Docker's default set minus `NET_RAW` (a build step has no use for
/// raw sockets, and they are the classic ARP/ICMP spoofing tool).
pub const DEFAULT_CAPS: &[Cap] = &[
    Cap::CHOWN,
    Cap::DAC_OVERRIDE,
    Cap::FOWNER,
    Cap::FSETID,
    Cap::KILL,
    Cap::SETGID,
    Cap::SETUID,
    Cap::SETPCAP,
    Cap::NET_BIND_SERVICE,
    Cap::SYS_CHROOT,
    Cap::MKNOD,
    Cap::AUDIT_WRITE,
    Cap::SETFCAP,
];

/// The kept set as a 64-bit mask (bit n = capability n).
pub(crate) fn mask(caps: &[Cap]) -> u64 {
    caps.iter()
        .filter(|c| c.0 < 64)
        .fold(0, |m, c| m | (1u64 << c.0))
}

/// The capabilities in `mask`, by name (unknown numbers as `CAP_<n>`), for the step record.
pub fn names(mask: u64) -> Vec<String> {
    (0..64u32)
        .filter(|n| mask & (1u64 << n) != 0)
        .map(|n| {
            Cap(n)
                .name()
                .map_or_else(|| format!("CAP_{n}"), str::to_owned)
        })
        .collect()
}

/// Effective, permitted and inheritable sets, each a 64-bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_is_dockers_without_net_raw() {
        let names = names(mask(DEFAULT_CAPS));
        assert_eq!(
            names,
            [
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FOWNER",
                "CAP_FSETID",
                "CAP_KILL",
                "CAP_SETGID",
                "CAP_SETUID",
                "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE",
                "CAP_SYS_CHROOT",
                "CAP_MKNOD",
                "CAP_AUDIT_WRITE",
                "CAP_SETFCAP",
            ]
        );
        assert_eq!(mask(DEFAULT_CAPS) & (1 << Cap::NET_RAW.0), 0);
        assert_eq!(mask(DEFAULT_CAPS) & (1 << Cap::SYS_ADMIN.0), 0);
    }
}
