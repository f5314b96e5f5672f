//! `File` ops: COPY/ADD, WORKDIR mkdir, heredoc files.

#[allow(clippy::wildcard_imports)]
use super::*;

fn mkfiles(
    ctx: &OpContext,
    files: &[(String, String)],
    mode: u32,
    key: &Digest,
) -> Result<Output, OpError> {
    let pending = ctx.store.snapshots.create()?;
    for (name, content) in files {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(OpError::Internal(format!(
                "invalid heredoc file name {name:?}"
            )));
        }
        let p = pending.dir.join(name);
        std::fs::write(&p, content).map_err(|source| StoreError::Io {
            op: "write",
            path: p.clone(),
            source,
        })?;
        std::fs::set_permissions(
            &p,
            std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
        )
        .map_err(|source| StoreError::Io {
            op: "chmod",
            path: p.clone(),
            source,
        })?;
    }
    let id = commit_layer(ctx, pending)?;
    finish(ctx, key, vec![id])
}

pub(super) fn file(
    ctx: &OpContext,
    vertex: VertexIdx,
    f: &FileOp,
    inputs: &[Output],
    key: &Digest,
) -> Result<Output, OpError> {
    match f {
        FileOp::Mkfiles { files, mode } => mkfiles(ctx, files, mode.unwrap_or(0o644), key),
        FileOp::Copy(c) => copy(ctx, vertex, c, inputs, key),
        FileOp::Mkdir { path, owner } => {
            let base = chain_of(inputs.first())?;
            let view = LayerView::new(ctx.layer_dirs(&base));
            let owner = match owner {
                Some(u) if !u.is_empty() => Some(fileop::resolve_user(&view, u)?),
                _ => None,
            };
            let pending = ctx.store.snapshots.create()?;
            fileop::mkdir(path, "/", owner, &view, &pending.dir)?;
            let id = commit_layer(ctx, pending)?;
            let mut chain = base.as_ref().clone();
            chain.push(id);
            finish(ctx, key, chain)
        }
    }
}

fn copy(
    ctx: &OpContext,
    vertex: VertexIdx,
    c: &CopyOp,
    inputs: &[Output],
    key: &Digest,
) -> Result<Output, OpError> {
    let src_out = inputs
        .get(c.src)
        .ok_or_else(|| OpError::Internal("copy source input missing".into()))?;
    let src = ctx.view(src_out)?;
    let base = match c.dest {
        Some(d) => chain_of(inputs.get(d))?,
        None => Arc::default(),
    };
    let dest = LayerView::new(ctx.layer_dirs(&base));
    let chown = match &c.chown {
        Some(u) if !u.is_empty() => Some(fileop::resolve_user(&dest, u)?),
        _ => None,
    };
    let req = CopyRequest {
        sources: c.sources.clone(),
        dest: c.dest_path.clone(),
        workdir: c.workdir.clone(),
        chown,
        chmod: c.chmod,
        keep_owner: c.keep_owner,
        parents: c.parents,
        excludes: c.excludes.clone(),
        unpack: c.unpack,
        allow_wildcard: true,
        allow_empty_wildcard: true,
    };
    let pending = ctx.store.snapshots.create()?;
    // From a client context, the files' content digests are mostly known: the cache key's
    // walk just hashed them (or found them in the store's file hashes).
    let hashes: Option<&dyn fileop::FileHashCache> = match src_out {
        Output::Context(_) => Some(&ctx.file_hashes),
        Output::Layers(_) => None,
    };
    // The files the last COPY of this kind wrote, to hard-link where they are what this one
    // would write (a store that cannot be read only means nothing is reused; `--no-cache`
    // reuses nothing but still records).
    let sig = match src_out {
        Output::Context(name) if hashes.is_some() && !c.unpack => reuse_signature(ctx, name, c),
        _ => None,
    };
    let reuse = sig
        .as_deref()
        .filter(|_| !ctx.no_cache)
        .and_then(|s| ctx.store.meta.copy_reuse(s).ok().flatten())
        .and_then(|(layer, files)| fileop::Reuse::open(&ctx.store.snapshots.path(&layer), files));
    let stats = fileop::copy_reusing(&req, &src, &dest, &pending.dir, hashes, reuse.as_ref())?;
    drop(reuse);
    if stats.linked > 0 {
        ctx.progress.send(Event::Log {
            vertex,
            stream: 2,
            data: format!(
                "{} of {} files hard-linked from the layer of the last such COPY (same source \
                 file, content, mode, owner and time)\n",
                stats.linked, stats.files
            ),
        });
    }
    let id = commit_layer(ctx, pending)?;
    if !stats.known.is_empty() {
        let mut known = std::collections::BTreeMap::new();
        for (path, digest) in stats.known {
            match digest {
                Some(d) => known.insert(path, d),
                None => known.remove(&path),
            };
        }
        if let Some(sig) = sig {
            let files = known.iter().map(|(p, k)| (p.clone(), k.source)).collect();
            let record = crate::store::CopyReuse {
                layer: id.clone(),
                files,
            };
            ctx.staged()?.copy_reuse.insert(sig, record);
        }
        if let Ok(mut m) = ctx.copied_digests.lock() {
            m.insert(id.clone(), Arc::new(known));
        }
    }
    let mut chain = base.as_ref().clone();
    chain.push(id);
    finish(ctx, key, chain)
}

/// What names a COPY from client context `name`'s kind: the tenant, the context and the whole
/// op (sources, destination, flags), not the files' content. The next COPY of the kind
/// hard-links what it can from this one's layer; each file is checked there, so a signature
/// only picks the layer to look in.
fn reuse_signature(ctx: &OpContext, name: &str, c: &CopyOp) -> Option<String> {
    let op = serde_json::to_vec(c).ok()?;
    let mut h = crate::digest::Hasher::new();
    for part in [
        &b"kiln copy reuse v1"[..],
        ctx.tenant.as_str().as_bytes(),
        name.as_bytes(),
        &op,
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Some(h.finish().hex())
}
