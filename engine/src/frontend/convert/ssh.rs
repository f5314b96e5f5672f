//! `RUN --mount=type=ssh` (BuildKit's `convert_ssh.go`): the mount's id, target and options
//! become an [`ExecMountKind::Ssh`]; the agent and its keys are never part of the graph.

use super::dispatch::{abs_path, clean_abs};
use crate::frontend::instructions::MountFlag;
use crate::graph::ExecMountKind;

/// `RUN --mount=type=ssh` as BuildKit's `dispatchSSH`: the id defaults to `default`, the
/// target to `/run/buildkit/ssh_agent.N` (`n`: this mount's index among the RUN's ssh
/// mounts); mode `0600`, uid and gid 0 unless given.
pub(super) fn ssh_mount(
    m: &MountFlag,
    workdir: &str,
    n: usize,
) -> Result<(String, ExecMountKind), String> {
    let id = match &m.id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => "default".to_owned(),
    };
    let target = match &m.target {
        Some(t) if !t.is_empty() => clean_abs(&abs_path(workdir, t)),
        _ => format!("/run/buildkit/ssh_agent.{n}"),
    };
    let under = |dir: &str| target == dir || target.starts_with(&format!("{dir}/"));
    if target == "/" {
        return Err("RUN --mount=type=ssh cannot target /".into());
    }
    if under("/proc") || under("/sys") || under("/dev") {
        return Err(format!(
            "RUN --mount target {target} is under /proc, /sys or /dev, which the sandbox provides"
        ));
    }
    Ok((
        target,
        ExecMountKind::Ssh {
            id,
            required: m.required,
            mode: m.mode.unwrap_or(0o600),
            uid: m.uid.unwrap_or(0),
            gid: m.gid.unwrap_or(0),
        },
    ))
}
