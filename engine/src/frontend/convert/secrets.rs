//! `RUN --mount=type=secret` (BuildKit's `convert_secrets.go`): the mount's id, target and
//! options become an [`ExecMountKind::Secret`]; the value is never part of the graph.

use super::dispatch::{abs_path, clean_abs};
use crate::frontend::instructions::MountFlag;
use crate::graph::ExecMountKind;

/// `RUN --mount=type=secret` as BuildKit's `dispatchSecret`: the id is `id=` (or `source=`),
/// else the target's base name; the target defaults to `/run/secrets/<id>`; with `env=` and
/// no target the secret is only an environment variable. Mode `0400`, uid and gid 0 unless
/// given.
pub(super) fn secret_mount(
    m: &MountFlag,
    workdir: &str,
) -> Result<(String, ExecMountKind), String> {
    let base = |p: &str| {
        p.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let id = match (&m.source, &m.id, &m.target) {
        (Some(s), _, _) | (None, Some(s), _) if !s.is_empty() => s.clone(),
        (_, _, Some(t)) if !t.is_empty() => base(t),
        _ => return Err("one of source, target required".into()),
    };
    let file = m.target.is_some() || m.env.is_none();
    let target = match &m.target {
        Some(t) => clean_abs(&abs_path(workdir, t)),
        None => format!("/run/secrets/{}", base(&id)),
    };
    let under = |dir: &str| target == dir || target.starts_with(&format!("{dir}/"));
    if file && (under("/proc") || under("/sys") || under("/dev")) {
        return Err(format!(
            "RUN --mount target {target} is under /proc, /sys or /dev, which the sandbox provides"
        ));
    }
    if let Some(env) = &m.env
        && (env.is_empty() || env.contains('=') || env.contains('\0'))
    {
        return Err(format!("invalid secret environment variable name {env:?}"));
    }
    Ok((
        target,
        ExecMountKind::Secret {
            id,
            file,
            env: m.env.clone(),
            required: m.required,
            mode: m.mode.unwrap_or(0o400),
            uid: m.uid.unwrap_or(0),
            gid: m.gid.unwrap_or(0),
        },
    ))
}
