//! `Exec`: one RUN step in the sandbox, on an overlay (or copied) root.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn exec(
    ctx: &OpContext,
    vertex: VertexIdx,
    e: &ExecOp,
    inputs: &[Output],
    key: &Digest,
) -> Result<Output, OpError> {
    let base = chain_of(inputs.first())?;
    let pending = ctx.store.snapshots.create()?;
    let mut lowers = ctx.layer_dirs(&base);
    lowers.reverse(); // overlay wants the top layer first
    let work = pending.scratch.join("work");
    let mountpoint = pending.scratch.join("root");
    for d in [&work, &mountpoint] {
        fs::create_dir_all(d).map_err(|source| StoreError::Io {
            op: "create",
            path: d.clone(),
            source,
        })?;
    }
    // Mount points the sandbox has to create are removed again after the step if they are
    // still empty (BuildKit's mount stub cleaner): a mount never leaves a trace in a layer.
    let lower_view = LayerView::new(ctx.layer_dirs(&base));
    let mut stubs: Vec<String> = Vec::new();
    // A secret's or an agent socket's file mount point is an empty file: removed too (see
    // `remove_empty_file_stub`).
    let mut file_stubs: Vec<String> = Vec::new();
    for m in &e.mounts {
        let secret_file = match &m.kind {
            ExecMountKind::Secret { id, file, .. } => {
                if !file || ctx.secrets.get(id).is_none() {
                    continue; // nothing mounted (env only, or an optional secret not given)
                }
                true
            }
            // An agent's socket is a file mount point too (when the agent was given).
            ExecMountKind::Ssh { id, .. } => {
                if ctx.ssh.get(id).is_none() {
                    continue;
                }
                true
            }
            _ => false,
        };
        let mut p = crate::fileop::absolute_path(&m.target, "/");
        // Where the sandbox will put it: symlinks of the image resolved inside the root (a
        // target under `/run -> /var/run` leaves its stubs under `/var/run`).
        if let Ok(r) = lower_view.resolve_for_write(&p) {
            p = r.path();
        }
        let mut leaf = secret_file;
        while p != "/" && !p.is_empty() {
            if lower_view.lookup(&p)?.is_some() {
                break;
            }
            if leaf {
                leaf = false;
                file_stubs.push(p.clone());
            } else if !stubs.contains(&p) {
                stubs.push(p.clone());
            }
            p = match p.rfind('/') {
                Some(0) | None => "/".to_owned(),
                Some(i) => p[..i].to_owned(),
            };
        }
    }
    // Deepest first, so a parent is tried after its children.
    stubs.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    // Held until the step has ended (dropped at the end of this function).
    let leases = super::cache::acquire_all(ctx, &e.mounts, inputs)?;
    let mut mounts = Vec::new();
    let mut secret_env = Vec::new();
    // Agent proxies, held until the step has ended: dropped on every return below, which
    // stops them and removes their directories.
    let mut ssh_proxies: Vec<super::ssh::SshProxy> = Vec::new();
    let mut ssh_auth_sock: Option<String> = None;
    for (n, m) in e.mounts.iter().enumerate() {
        let kind = match &m.kind {
            ExecMountKind::Ssh {
                id,
                required,
                mode,
                uid,
                gid,
            } => {
                let Some(agent) = ctx.ssh.get(id) else {
                    if *required {
                        return Err(OpError::SshRequired { id: id.clone() });
                    }
                    continue; // optional and not given: not mounted (BuildKit)
                };
                // In a user namespace the step's ids are a range of host ids.
                let (uid, gid) = match ctx.userns {
                    None => (*uid, *gid),
                    Some(map) => {
                        let shift = |base: u32, v: u32| {
                            (v < map.size)
                                .then(|| base.checked_add(v))
                                .flatten()
                                .ok_or(super::ssh::SshError::OwnerUnmapped { id: v })
                        };
                        (shift(map.host_uid, *uid)?, shift(map.host_gid, *gid)?)
                    }
                };
                let proxy = super::ssh::SshProxy::start(agent, *mode, uid, gid)?;
                let source = proxy.socket().to_path_buf();
                ssh_proxies.push(proxy);
                // The first ssh mount is the step's agent (BuildKit).
                if ssh_auth_sock.is_none() {
                    ssh_auth_sock = Some(m.target.clone());
                }
                sandbox::MountKind::Bind {
                    source,
                    readonly: false,
                }
            }
            ExecMountKind::Secret {
                id,
                file,
                env,
                required,
                mode,
                uid,
                gid,
            } => {
                let Some(value) = ctx.secrets.get(id) else {
                    if *required {
                        return Err(OpError::SecretRequired { id: id.clone() });
                    }
                    continue; // optional and not given: not mounted (BuildKit)
                };
                if let Some(var) = env {
                    secret_env.push((var.clone(), value.clone()));
                }
                if !file {
                    continue;
                }
                let stage = pending.scratch.join(format!("secret{n}"));
                fs::create_dir_all(&stage).map_err(|source| StoreError::Io {
                    op: "create",
                    path: stage.clone(),
                    source,
                })?;
                sandbox::MountKind::SecretFile {
                    data: value.clone(),
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                    stage,
                }
            }
            ExecMountKind::Bind {
                input,
                source,
                readwrite,
            } => {
                // The bind source is materialised as a private copy in the step's scratch
                // space: the step never sees a store directory or a client path directly.
                let src_out = inputs.get(*input).ok_or_else(|| {
                    OpError::Internal(format!("bind mount input {input} missing"))
                })?;
                let view = ctx.view(src_out)?;
                let dest = pending.scratch.join(format!("bind{n}"));
                fs::create_dir_all(&dest).map_err(|source| StoreError::Io {
                    op: "create",
                    path: dest.clone(),
                    source,
                })?;
                let path = materialize(&view, source, &dest)?;
                sandbox::MountKind::Bind {
                    source: path,
                    readonly: !readwrite,
                }
            }
            ExecMountKind::Tmpfs { size } => sandbox::MountKind::Tmpfs {
                size: *size,
                mode: 0o1777,
            },
            // The cache directory itself is the bind source (never a path inside it), so
            // nothing the cache holds decides what is mounted.
            ExecMountKind::Cache { readonly, .. } => {
                let lease = leases
                    .get(n)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| OpError::Internal(format!("cache mount {n} not taken")))?;
                sandbox::MountKind::Bind {
                    source: lease.path().to_path_buf(),
                    readonly: *readonly,
                }
            }
        };
        mounts.push(sandbox::Mount {
            target: m.target.clone(),
            kind,
        });
    }
    let rootfs = match ctx.snapshotter {
        Snapshotter::Overlay | Snapshotter::Auto => sandbox::Rootfs::Overlay {
            lowers,
            upper: pending.dir.clone(),
            work,
            mountpoint: mountpoint.clone(),
        },
        Snapshotter::Copy => {
            // No overlayfs: the step runs on a private copy of its parents' merged view and
            // its diff is computed afterwards (see `copydiff`).
            crate::copydiff::materialize(&lower_view, &mountpoint)?;
            sandbox::Rootfs::Dir {
                path: mountpoint.clone(),
            }
        }
    };
    let mut spec = sandbox::StepSpec::new(e.args.clone(), rootfs);
    spec.env = e.env.clone();
    if let Some(sock) = ssh_auth_sock {
        // In the step's environment only, never in the image's config.
        spec.env.retain(|v| !v.starts_with("SSH_AUTH_SOCK="));
        spec.env.push(format!("SSH_AUTH_SOCK={sock}"));
    }
    spec.cwd = e.cwd.clone();
    spec.user = e.user.clone();
    spec.hostname = "kiln".into();
    spec.network = match e.network {
        Network::None => sandbox::NetworkMode::None,
        Network::Host => sandbox::NetworkMode::Host,
    };
    spec.mounts = mounts;
    spec.security = match e.security {
        crate::graph::Security::Sandbox => sandbox::Security::Sandboxed,
        crate::graph::Security::Insecure => sandbox::Security::Insecure,
    };
    spec.timeout = ctx.step_timeout;
    spec.limits = ctx.step_limits.clone();
    spec.userns = ctx.userns;
    spec.secret_env = secret_env;
    ctx.check_cancelled()?;
    let mut step = ctx.sandbox.spawn(&spec)?;
    let killer = step.killer();
    ctx.killers
        .lock()
        .map_err(|e| OpError::Internal(e.to_string()))?
        .push((vertex, killer));
    // A cancel that raced the registration above still has to stop this step.
    if ctx.cancelled.load(Ordering::SeqCst) {
        step.killer().kill();
    }
    let mut readers = Vec::new();
    for (stream, r) in [
        (
            1u8,
            step.take_stdout()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        ),
        (
            2u8,
            step.take_stderr()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(mut r) = r else { continue };
        let progress = ctx.progress.clone();
        // Every secret of the build is redacted from the step's output, not only its own.
        let mut redactor = super::secrets::Redactor::new(ctx.secrets.values());
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            let send = |data: Vec<u8>| {
                if !data.is_empty() {
                    progress.send(Event::Log {
                        vertex,
                        stream,
                        data: String::from_utf8_lossy(&data).into_owned(),
                    });
                }
            };
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => send(redactor.push(buf.get(..n).unwrap_or_default())),
                }
            }
            send(redactor.finish());
            buf.fill(0);
        }));
    }
    let exit = step.wait();
    // The step is gone: drop its killer (and the pidfd it holds).
    if let Ok(mut k) = ctx.killers.lock() {
        k.retain(|(v, _)| *v != vertex);
    }
    for r in readers {
        let _ = r.join();
    }
    let exit = exit?;
    ctx.check_cancelled()?;
    if let Some(c) = &exit.confinement {
        if let Ok(mut m) = ctx.confinements.lock() {
            m.insert(vertex, c.clone());
        }
        ctx.progress.send(Event::Confined {
            vertex,
            confinement: c.clone(),
        });
    }
    if exit.timed_out {
        return Err(OpError::TimedOut {
            cmd: shown_command(&e.args),
            after: ctx.step_timeout.unwrap_or_default(),
        });
    }
    if exit.resources.oom_killed && exit.code != 0 {
        return Err(OpError::OutOfMemory {
            cmd: shown_command(&e.args),
            limit: ctx.step_limits.memory_bytes,
        });
    }
    if exit.resources.pids_limit_hit && exit.code != 0 {
        return Err(OpError::PidsLimit {
            cmd: shown_command(&e.args),
            code: exit.code,
            limit: ctx.step_limits.pids,
        });
    }
    if exit.code != 0 {
        return Err(OpError::ExitCode {
            cmd: shown_command(&e.args),
            code: exit.code,
        });
    }
    if ctx.snapshotter == Snapshotter::Copy {
        crate::copydiff::diff(&lower_view, &mountpoint, &pending.dir)?;
    }
    for stub in &file_stubs {
        remove_empty_file_stub(&pending.dir, stub);
    }
    for stub in &stubs {
        remove_empty_stub(&pending.dir, stub);
    }
    // The step is over: stop the agent proxies before committing.
    drop(ssh_proxies);
    let id = commit_layer(ctx, pending)?;
    let mut chain = base.as_ref().clone();
    chain.push(id);
    finish(ctx, key, chain)
}

/// The command as BuildKit shows it: `/bin/sh -c echo hi` for shell form.
fn shown_command(args: &[String]) -> String {
    args.join(" ")
}

/// Copies `source` of `view` into `dest` (a private directory) for a bind mount; returns the
/// path to mount (the directory, or the file inside it when the source is a file).
pub(super) fn materialize(view: &LayerView, source: &str, dest: &Path) -> Result<PathBuf, OpError> {
    let resolved = view
        .resolve(source, true)?
        .and_then(|r| r.entry().map(|e| e.metadata().kind))
        .ok_or_else(|| OpError::Internal(format!("bind mount source {source:?} not found")))?;
    let empty = LayerView::new(Vec::new());
    let is_dir = matches!(resolved, crate::fsview::FileKind::Dir);
    let req = CopyRequest {
        sources: vec![source.to_owned()],
        dest: if is_dir {
            "/".to_owned()
        } else {
            "/file".to_owned()
        },
        workdir: "/".to_owned(),
        keep_owner: true,
        allow_wildcard: false,
        ..CopyRequest::default()
    };
    fileop::copy(&req, view, &empty, dest)?;
    Ok(if is_dir {
        dest.to_path_buf()
    } else {
        dest.join("file")
    })
}

/// Removes the file mount point `stub` (a secret's or an agent socket's) from the step's upper directory if it is
/// an empty regular file, with the same never-follow walk as [`remove_empty_stub`].
fn remove_empty_file_stub(upper: &Path, stub: &str) {
    use rustix::fs::{AtFlags, FileType, statat, unlinkat};
    let Some((dir, name)) = open_stub_parent(upper, stub) else {
        return;
    };
    let Ok(st) = statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return;
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_size == 0 {
        let _ = unlinkat(&dir, name, AtFlags::empty());
    }
}

/// Removes the mount point `stub` from the step's upper directory if it is an empty directory.
fn remove_empty_stub(upper: &Path, stub: &str) {
    if let Some((dir, name)) = open_stub_parent(upper, stub) {
        let _ = rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::REMOVEDIR);
    }
}

/// The directory holding the mount point `stub` in the step's upper directory, and its name.
///
/// The upper was written by the step, so no path in it may be resolved by the kernel: a step
/// can replace a parent of the stub by a symlink to a host directory. Each component is opened
/// relative to the previous one with `O_NOFOLLOW`, and the walk stops at anything that is not a
/// real directory.
fn open_stub_parent<'a>(upper: &Path, stub: &'a str) -> Option<(std::os::fd::OwnedFd, &'a str)> {
    use rustix::fs::{Mode, OFlags, openat};
    let comps: Vec<&str> = stub.split('/').filter(|c| !c.is_empty()).collect();
    let (name, parents) = comps.split_last()?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = openat(rustix::fs::CWD, upper, flags, Mode::empty()).ok()?;
    for c in parents {
        if *c == ".." || *c == "." {
            return None;
        }
        // Missing, or not a real directory (a symlink fails here).
        dir = openat(&dir, *c, flags, Mode::empty()).ok()?;
    }
    Some((dir, name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stub_cleanup_never_follows_a_symlink_the_step_planted() {
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir(host.path().join("victim")).unwrap();
        let upper = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path(), upper.path().join("a")).unwrap();
        remove_empty_stub(upper.path(), "/a/victim");
        remove_empty_stub(upper.path(), "/a");
        assert!(
            host.path().join("victim").is_dir(),
            "a host directory was removed"
        );
        assert!(upper.path().join("a").is_symlink());
    }

    #[test]
    fn empty_stubs_are_removed_and_others_kept() {
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(upper.path().join("m/empty")).unwrap();
        std::fs::create_dir_all(upper.path().join("m/full")).unwrap();
        std::fs::write(upper.path().join("m/full/f"), "x").unwrap();
        remove_empty_stub(upper.path(), "/m/empty");
        remove_empty_stub(upper.path(), "/m/full");
        assert!(!upper.path().join("m/empty").exists());
        assert!(upper.path().join("m/full/f").exists());
    }
}
