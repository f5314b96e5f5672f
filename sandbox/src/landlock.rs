//! The step's landlock domain, applied by the init after `pivot_root` and before seccomp.
//!
//! Best effort up to the kernel's ABI (the `landlock` crate's default compatibility): on an
//! older kernel the rights it lacks are simply not restricted, and the status that comes back
//! (fully / partially / not enforced, and the ABI used) is recorded in the step result, so the
//! provenance says what was really enforced.
//!
//! The rules:
//! - **File system**: every right the ABI knows is handled; all of them but `MAKE_BLOCK` are
//!   granted beneath `/`, which after `pivot_root` is the step's root and its mounts. Anything
//!   else — a host directory reached through an fd that leaked in, a path outside the new root —
//!   is outside the one rule, so denied. No build step needs to create a block device node.
//! - **Network** (ABI 4+): with network `none`, TCP bind and connect are handled and no port is
//!   granted, so both fail with `EACCES` even on the step's own loopback (`sendmsg` with
//!   `MSG_FASTOPEN` bypasses the connect hook, which in a namespace with only `lo` reaches
//!   nothing but the step itself).
//! - **Scoping** (ABI 6+): the step can not connect to abstract unix sockets created outside
//!   its domain (the host's, e.g. a D-Bus or containerd socket reachable under
//!   `--network=host`), nor signal processes outside it.

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use serde::{Deserialize, Serialize};

use crate::spec::NetworkMode;

/// The newest ABI kiln asks for; the kernel's own may be lower (best effort) or higher (its
/// newer rights are then not handled, which the record shows as the ABI used).
const TARGET_ABI: ABI = ABI::V7;

/// What landlock enforced for a step (goes into the step result and the provenance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockRecord {
    /// `full`, `partial` or `none`.
    pub enforced: Enforcement,
    /// The ABI the ruleset was built for: min(kernel's, kiln's target). 0 when unavailable.
    pub abi: u32,
    /// TCP bind/connect restricted (network `none`).
    pub tcp_restricted: bool,
}

/// How much of the requested ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    Full,
    Partial,
    None,
}

/// A landlock failure (a broken ruleset, not a missing kernel feature: that is best effort).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LandlockError(String);

/// Build and apply the step's ruleset to the calling (single-threaded) process.
pub(crate) fn restrict_self(network: NetworkMode) -> Result<LandlockRecord, LandlockError> {
    let err = |e: &dyn std::fmt::Display| LandlockError(e.to_string());
    let fs_all = AccessFs::from_all(TARGET_ABI);
    let fs_granted: BitFlags<AccessFs> = fs_all & !BitFlags::from(AccessFs::MakeBlock);
    let tcp = network == NetworkMode::None;
    let mut ruleset = Ruleset::default()
        .handle_access(fs_all)
        .map_err(|e| err(&e))?;
    if tcp {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(|e| err(&e))?;
    }
    let ruleset = ruleset
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(|e| err(&e))?;
    let root = PathFd::new("/").map_err(|e| err(&e))?;
    let status = ruleset
        .create()
        .map_err(|e| err(&e))?
        .add_rule(PathBeneath::new(root, fs_granted))
        .map_err(|e| err(&e))?
        .restrict_self()
        .map_err(|e| err(&e))?;
    let enforced = match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::None,
    };
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => {
            (effective_abi as u32).min(TARGET_ABI as u32)
        }
        LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => 0,
    };
    Ok(LandlockRecord {
        enforced,
        abi,
        tcp_restricted: tcp && abi >= 4 && enforced != Enforcement::None,
    })
}
