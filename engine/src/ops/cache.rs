//! `RUN --mount=type=cache`: the step's cache directories, taken from the store for the time
//! the step runs (see [`crate::store::cache_mounts`]).

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::graph::{CacheSeed, ExecMount};
use crate::store::cache_mounts::Seed;
use crate::store::{CacheLease, CacheMountError, NewCacheDir};

/// Takes every cache mount of a step, in a fixed order (by id) so two steps that lock the
/// same caches can not deadlock; returns one lease per mount index (`None` for other kinds).
/// The leases must live until the step has ended.
pub(super) fn acquire_all(
    ctx: &OpContext,
    mounts: &[ExecMount],
    inputs: &[Output],
) -> Result<Vec<Option<CacheLease>>, OpError> {
    let mut order: Vec<(usize, &str)> = mounts
        .iter()
        .enumerate()
        .filter_map(|(n, m)| match &m.kind {
            ExecMountKind::Cache { id, .. } => Some((n, id.as_str())),
            _ => None,
        })
        .collect();
    order.sort_by(|a, b| a.1.cmp(b.1));
    let mut leases: Vec<Option<CacheLease>> = mounts.iter().map(|_| None).collect();
    for (n, _) in order {
        let Some(ExecMountKind::Cache {
            id,
            sharing,
            mode,
            uid,
            gid,
            from,
            ..
        }) = mounts.get(n).map(|m| &m.kind)
        else {
            continue;
        };
        // In a user namespace (`--userns-remap`) the step's ids are a range of host ids and
        // the bind is not idmapped: a new directory gets the host ids of the step's `uid` and
        // `gid`, and the caches of each mapping are kept apart from the host-id ones (their
        // files' owners would mean something else).
        let (store_id, new) = match ctx.userns {
            None => (
                id.clone(),
                NewCacheDir {
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                },
            ),
            Some(map) => {
                let shift = |base: u32, v: u32| {
                    (v < map.size)
                        .then(|| base.checked_add(v))
                        .flatten()
                        .ok_or(OpError::CacheOwnerUnmapped { id: v })
                };
                (
                    format!(
                        "{id}\0userns={}:{}:{}",
                        map.host_uid, map.host_gid, map.size
                    ),
                    NewCacheDir {
                        mode: *mode,
                        uid: shift(map.host_uid, *uid)?,
                        gid: shift(map.host_gid, *gid)?,
                    },
                )
            }
        };
        let seed_fn = |dest: &Path| -> Result<(), OpError> {
            match from {
                Some(seed) => seed_from(ctx, seed, inputs, dest),
                None => Ok(()),
            }
        };
        let seed: Option<Seed<'_, OpError>> = match from {
            Some(_) => Some(&seed_fn),
            None => None,
        };
        let cancelled = || ctx.cancelled.load(Ordering::SeqCst);
        let lease = ctx
            .store
            .cache_mounts
            .acquire(&ctx.tenant, &store_id, *sharing, new, seed, &cancelled)
            .map_err(|e| match e {
                OpError::CacheMount(CacheMountError::Cancelled) => OpError::Cancelled,
                other => other,
            })?;
        if let Some(slot) = leases.get_mut(n) {
            *slot = Some(lease);
        }
    }
    Ok(leases)
}

/// Fills a new cache directory with a copy of the seed's source directory (`from`, `source`).
fn seed_from(
    ctx: &OpContext,
    seed: &CacheSeed,
    inputs: &[Output],
    dest: &Path,
) -> Result<(), OpError> {
    let out = inputs
        .get(seed.input)
        .ok_or_else(|| OpError::Internal(format!("cache mount input {} missing", seed.input)))?;
    let view = ctx.view(out)?;
    let root = view
        .resolve(&seed.source, true)?
        .and_then(|r| r.entry().map(|e| e.metadata().clone()))
        .filter(|m| matches!(m.kind, crate::fsview::FileKind::Dir))
        .ok_or_else(|| OpError::CacheSeed {
            path: seed.source.clone(),
        })?;
    exec::materialize(&view, &seed.source, dest)?;
    // The cache's root is the source directory itself (BuildKit: the `from` ref's source
    // path is the cache), so it takes that directory's owner and mode, through its fd.
    let fd = rustix::fs::open(
        dest,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .and_then(|fd| {
        rustix::fs::fchown(
            &fd,
            Some(rustix::process::Uid::from_raw(root.uid)),
            Some(rustix::process::Gid::from_raw(root.gid)),
        )?;
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(root.mode & 0o7777))?;
        Ok(fd)
    })
    .map_err(|e| {
        OpError::Store(StoreError::Io {
            op: "chown",
            path: dest.to_path_buf(),
            source: e.into(),
        })
    })?;
    drop(fd);
    if let Some(map) = ctx.userns {
        shift_owners(dest, map)?;
    }
    Ok(())
}

/// Moves the owners of a freshly seeded tree into the user-namespace range, so the step sees
/// the seed's owners (the bind is not idmapped). The tree is the engine's own copy, not yet
/// seen by any step; symlinks are never followed (`lchown`). Ids outside the range are left.
fn shift_owners(dir: &Path, map: sandbox::IdMap) -> Result<(), OpError> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![dir.to_path_buf()];
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| {
            OpError::Store(StoreError::Io {
                op: "chown",
                path,
                source,
            })
        }
    };
    let mut entries = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            if e.file_type().map_err(io(&d))?.is_dir() {
                stack.push(e.path());
            }
            entries.push(e.path());
        }
    }
    for p in entries {
        let md = fs::symlink_metadata(&p).map_err(io(&p))?;
        let uid = (md.uid() < map.size)
            .then(|| map.host_uid.checked_add(md.uid()))
            .flatten();
        let gid = (md.gid() < map.size)
            .then(|| map.host_gid.checked_add(md.gid()))
            .flatten();
        std::os::unix::fs::lchown(&p, uid, gid).map_err(io(&p))?;
    }
    Ok(())
}
