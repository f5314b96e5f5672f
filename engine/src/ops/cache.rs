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
        let new = NewCacheDir {
            mode: *mode,
            uid: *uid,
            gid: *gid,
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
            .acquire(&ctx.tenant, id, *sharing, new, seed, &cancelled)
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
    let is_dir = view
        .resolve(&seed.source, true)?
        .and_then(|r| r.entry().map(|e| e.metadata().kind))
        .is_some_and(|k| matches!(k, crate::fsview::FileKind::Dir));
    if !is_dir {
        return Err(OpError::CacheSeed {
            path: seed.source.clone(),
        });
    }
    exec::materialize(&view, &seed.source, dest)?;
    Ok(())
}
