//! `RUN`: command line, heredocs, mounts and network of a step.

use super::dispatch::{St, abs_path, clean_abs, from_vertex};
use super::state::Scope;
use super::{ConvertError, Converter};
use crate::frontend::instructions::{
    CacheSharing, CommandLine, Instruction, Located, MountFlag, MountType, NetworkMode,
    SecurityMode, parse_mount,
};
use crate::graph::{
    CacheSeed, CacheSharing as GraphSharing, ExecMount, ExecMountKind, ExecOp, FileOp, Network, Op,
    Security,
};

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    c: &mut Converter<'_>,
    st: &mut St,
    ins: &Located<Instruction>,
    name: String,
    command: &CommandLine,
    heredocs: &[crate::frontend::parser::Heredoc],
    mounts: &[MountFlag],
    network: Option<NetworkMode>,
    security: Option<SecurityMode>,
) -> Result<(), ConvertError> {
    let at = |m: String| ConvertError::at(ins.line, ins.column, m);
    let mut heredoc_file = None;
    let args = match command {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(s) => {
            let mut a = st.image.shell();
            // `RUN <<EOF` alone: the heredoc is the script.
            let script = match heredocs {
                [h] if is_only_heredoc(s, &h.name) && h.content.starts_with("#!") => {
                    // A script with a shebang is a file, run directly (BuildKit mounts it at
                    // /dev/pipes/NAME).
                    let file = c.graph.add(
                        Op::File(FileOp::Mkfiles {
                            files: vec![(h.name.clone(), h.content.clone())],
                            mode: Some(0o755),
                        }),
                        vec![],
                        format!("{name} (heredoc)"),
                    );
                    heredoc_file = Some(file);
                    String::new()
                }
                [h] if is_only_heredoc(s, &h.name) => h.content.clone(),
                [] => s.clone(),
                hs => {
                    let mut full = s.clone();
                    for h in hs {
                        full.push('\n');
                        full.push_str(&h.content);
                        full.push_str(&h.name);
                    }
                    full
                }
            };
            match (&heredoc_file, heredocs.first()) {
                (Some(_), Some(h)) => vec![format!("/dev/pipes/{}", h.name)],
                _ => {
                    a.push(script);
                    a
                }
            }
        }
    };
    let network = match network {
        None | Some(NetworkMode::None) | Some(NetworkMode::Default) => Network::None,
        Some(NetworkMode::Host) if c.opts.allow_host_network => Network::Host,
        Some(NetworkMode::Host) => {
            return Err(at(
                "RUN --network=host needs the network.host entitlement (kiln build --allow network.host); \
                 it gives the step the host's network"
                    .into(),
            ));
        }
    };
    let security = match security {
        None | Some(SecurityMode::Sandbox) => Security::Sandbox,
        Some(SecurityMode::Insecure) if c.opts.allow_insecure => Security::Insecure,
        Some(SecurityMode::Insecure) => {
            return Err(at(
                "RUN --security=insecure needs the security.insecure entitlement (kiln build --allow security.insecure); \
                 it runs the step with every capability and without the seccomp allow-list or landlock"
                    .into(),
            ));
        }
    };
    let mut inputs = vec![st.vertex];
    let mut exec_mounts = Vec::new();
    if let Some(file) = heredoc_file {
        inputs.push(file);
        exec_mounts.push(ExecMount {
            target: "/dev/pipes".into(),
            kind: ExecMountKind::Bind {
                input: inputs.len() - 1,
                source: "/".into(),
                readwrite: false,
            },
        });
    }
    let mut cache_ids = std::collections::BTreeSet::new();
    let mut ssh_mounts = 0usize;
    for raw in mounts {
        // Mount options are expanded now, with the stage's ARG/ENV, then checked again.
        let scope = st.scope();
        let lexer = &c.lexer;
        let expander = |w: &str| lexer.process_word(w, &Scope(&scope));
        let m = parse_mount(&raw.raw, Some(&expander)).map_err(|e| at(e.to_string()))?;
        if m.mount_type == MountType::Secret {
            let (target, kind) = super::secrets::secret_mount(&m, &st.image.workdir).map_err(at)?;
            exec_mounts.push(ExecMount { target, kind });
            continue;
        }
        if m.mount_type == MountType::Ssh {
            let (target, kind) =
                super::ssh::ssh_mount(&m, &st.image.workdir, ssh_mounts).map_err(at)?;
            ssh_mounts += 1;
            exec_mounts.push(ExecMount { target, kind });
            continue;
        }
        if !matches!(
            m.mount_type,
            MountType::Bind | MountType::Tmpfs | MountType::Cache
        ) {
            return Err(at(format!(
                "RUN --mount=type={} is parsed but not executed by this kiln version",
                format!("{:?}", m.mount_type).to_ascii_lowercase()
            )));
        }
        let target = m
            .target
            .clone()
            .ok_or_else(|| at("mount target is required".into()))?;
        let target = clean_abs(&abs_path(&st.image.workdir, &target));
        // The sandbox owns /proc, /sys and /dev (it checks the resolved path again, since a
        // symlink in the image can point there); say so here with the line and column.
        let under = |dir: &str| target == dir || target.starts_with(&format!("{dir}/"));
        let tmpfs_on_shm = target == "/dev/shm" && m.mount_type == MountType::Tmpfs;
        if (under("/proc") || under("/sys") || under("/dev")) && !tmpfs_on_shm {
            return Err(at(format!(
                "RUN --mount target {target} is under /proc, /sys or /dev, which the sandbox provides"
            )));
        }
        let kind = match m.mount_type {
            MountType::Bind => {
                let src_vertex = match &m.from {
                    None => c.context_vertex(),
                    Some(f) => from_vertex(c, st, f, ins.line)?,
                };
                inputs.push(src_vertex);
                ExecMountKind::Bind {
                    input: inputs.len() - 1,
                    source: clean_abs(&format!("/{}", m.source.clone().unwrap_or_default())),
                    readwrite: !m.readonly,
                }
            }
            MountType::Tmpfs => ExecMountKind::Tmpfs { size: m.size },
            MountType::Cache => {
                let (kind, seed) = cache_mount(c, st, &m, &target, ins.line, inputs.len())?;
                if let Some(v) = seed {
                    inputs.push(v);
                }
                if let ExecMountKind::Cache { id, .. } = &kind
                    && !cache_ids.insert(id.clone())
                {
                    return Err(at(format!(
                        "cache id {id:?} is mounted twice in one RUN; use one mount"
                    )));
                }
                kind
            }
            other => {
                return Err(at(format!(
                    "RUN --mount=type={} is parsed but not executed by this kiln version",
                    format!("{other:?}").to_ascii_lowercase()
                )));
            }
        };
        exec_mounts.push(ExecMount { target, kind });
    }
    // The step's environment: the build-time env (ENV and ARG in order), like BuildKit.
    let mut env = st.image.run_env_strings();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    let op = ExecOp {
        args: args.clone(),
        env,
        cwd: if st.image.workdir.is_empty() {
            "/".into()
        } else {
            st.image.workdir.clone()
        },
        user: st.image.user.clone(),
        network,
        mounts: exec_mounts,
        security,
    };
    st.vertex = c.graph.add(Op::Exec(op), inputs, name);
    st.image.layer(format!("RUN {}", args.join(" ")));
    Ok(())
}

/// A `type=cache` mount as BuildKit's `dockerfile2llb` makes it: the id defaults to the
/// target as written, cleaned (Go's `path.Clean`, not made absolute); a new cache directory
/// is empty with `mode` (0755), `uid` and `gid` (0), unless `from` names a stage, image or
/// context whose `source` directory it starts as a copy of (then the three are ignored, as in
/// BuildKit). Returns the seed's vertex, which the caller pushes as the next input.
fn cache_mount(
    c: &mut Converter<'_>,
    st: &St,
    m: &MountFlag,
    target: &str,
    line: usize,
    next_input: usize,
) -> Result<(ExecMountKind, Option<usize>), ConvertError> {
    // Conversion has checked that the target is set; `target` is it made absolute.
    let written = m.target.as_deref().unwrap_or(target);
    let id = match m.id.as_deref() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => crate::frontend::dockerignore::clean(written),
    };
    let seed = match &m.from {
        None => None,
        Some(f) => Some(from_vertex(c, st, f, line)?),
    };
    let kind = ExecMountKind::Cache {
        id,
        sharing: match m.sharing {
            None | Some(CacheSharing::Shared) => GraphSharing::Shared,
            Some(CacheSharing::Private) => GraphSharing::Private,
            Some(CacheSharing::Locked) => GraphSharing::Locked,
        },
        readonly: m.readonly,
        mode: m.mode.unwrap_or(0o755),
        uid: m.uid.unwrap_or(0),
        gid: m.gid.unwrap_or(0),
        // The caller pushes the seed's vertex as the next input.
        from: seed.map(|_| CacheSeed {
            input: next_input,
            source: clean_abs(&format!("/{}", m.source.clone().unwrap_or_default())),
        }),
    };
    Ok((kind, seed))
}

/// The PATH a step gets when the image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn is_only_heredoc(cmd: &str, name: &str) -> bool {
    let t = cmd.trim();
    let rest = t.strip_prefix("<<").unwrap_or("");
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let rest = rest.trim_matches(|c| c == '"' || c == '\'');
    rest == name
}
