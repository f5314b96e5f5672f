//! Disk usage and pruning of the store (`kiln du`, `kiln prune`).
//!
//! Images in the local image store are roots: their manifests, configs, layer blobs and layer
//! directories are kept. Everything else (cached step results, their layers and blobs, the
//! leftovers of interrupted builds, `RUN --mount=type=cache` directories not in use) is build
//! cache, removable at any time.

use std::collections::BTreeSet;
use std::fs;

use crate::Digest;
use crate::store::{SnapshotId, Store, StoreError};

/// What `kiln du` reports.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    /// Layer directories.
    pub snapshots: usize,
    /// Their size.
    pub snapshot_bytes: u64,
    /// Blobs.
    pub blobs: usize,
    /// Their size.
    pub blob_bytes: u64,
    /// Cache records.
    pub cache_records: usize,
    /// Images.
    pub images: usize,
    /// `RUN --mount=type=cache` directories (cache ids, all tenants).
    pub cache_mounts: usize,
    /// Their size.
    pub cache_mount_bytes: u64,
    /// Bytes `kiln prune` would free.
    pub reclaimable_bytes: u64,
}

/// What `kiln prune` removed.
#[derive(Debug, Default, Clone)]
pub struct Pruned {
    /// Cache records removed.
    pub cache_records: usize,
    /// Layer directories removed.
    pub snapshots: usize,
    /// Blobs removed.
    pub blobs: usize,
    /// Cache mounts (cache ids) removed.
    pub cache_mounts: usize,
    /// Bytes freed.
    pub bytes: u64,
}

struct Roots {
    blobs: BTreeSet<Digest>,
    snapshots: BTreeSet<SnapshotId>,
}

fn roots(store: &Store, include_images: bool) -> Result<Roots, StoreError> {
    roots_keeping(store, include_images, &[])
}

/// [`roots`] plus the layer directories of cache records that stay (and the blobs of those
/// layers).
fn roots_keeping(
    store: &Store,
    include_images: bool,
    kept: &[SnapshotId],
) -> Result<Roots, StoreError> {
    let mut r = Roots {
        blobs: BTreeSet::new(),
        snapshots: kept.iter().cloned().collect(),
    };
    if !include_images {
        return Ok(r);
    }
    for (_, img) in store.meta.images()? {
        r.blobs.insert(img.manifest);
        r.blobs.insert(img.config);
        r.snapshots.extend(img.layers.iter().cloned());
        if let Ok(bytes) = store.content.read_blob(&img.manifest)
            && let Ok(m) = crate::oci::types::Manifest::from_slice(&bytes)
        {
            r.blobs.extend(m.layers.iter().map(|l| l.digest));
        }
        // The attestations' index and everything it reaches (attestation manifest,
        // referrers, their configs and layers).
        if let Some(index) = img.index {
            r.blobs.insert(index);
            if let Ok(bytes) = store.content.read_blob(&index)
                && let Ok(i) = crate::oci::types::Index::from_slice(&bytes)
            {
                for d in &i.manifests {
                    r.blobs.insert(d.digest);
                    if let Ok(bytes) = store.content.read_blob(&d.digest)
                        && let Ok(m) = crate::oci::types::Manifest::from_slice(&bytes)
                    {
                        r.blobs.insert(m.config.digest);
                        r.blobs.extend(m.layers.iter().map(|l| l.digest));
                    }
                }
            }
        }
    }
    // Layer directories unpacked from a kept blob are kept with it.
    for (blob, id) in store.meta.unpacked_records()? {
        if let Ok(d) = blob.parse::<Digest>()
            && r.blobs.contains(&d)
        {
            r.snapshots.insert(id);
        }
    }
    // Blobs a kept layer's record lists are kept too, so no record points at a removed blob.
    for (id, rec) in store.meta.layer_records()? {
        if SnapshotId::parse(&id).is_some_and(|s| r.snapshots.contains(&s)) {
            r.blobs.extend(rec.blobs.iter().map(|b| b.digest));
        }
    }
    Ok(r)
}

fn blob_list(store: &Store) -> Vec<(Digest, u64)> {
    let dir = store.content.path(&Digest::of(b""));
    let Some(dir) = dir.parent() else {
        return Vec::new();
    };
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let d: Digest = format!("sha256:{}", e.file_name().to_string_lossy())
                .parse()
                .ok()?;
            let size = e.metadata().ok()?.len();
            Some((d, size))
        })
        .collect()
}

/// Disk usage.
pub fn usage(store: &Store) -> Result<Usage, StoreError> {
    let keep = roots(store, true)?;
    let mut u = Usage::default();
    // Layers share the inodes of files a COPY hard-linked from an earlier layer: each counts
    // once, and as reclaimable only if no kept layer has it.
    let mut seen = std::collections::HashSet::new();
    let (kept, other): (Vec<SnapshotId>, Vec<SnapshotId>) = store
        .snapshots
        .list()?
        .into_iter()
        .partition(|id| keep.snapshots.contains(id));
    for (ids, reclaimable) in [(kept, false), (other, true)] {
        for id in ids {
            let size = crate::store::tree_size_once(&store.snapshots.path(&id), &mut seen);
            u.snapshots += 1;
            u.snapshot_bytes += size;
            if reclaimable {
                u.reclaimable_bytes += size;
            }
        }
    }
    for (d, size) in blob_list(store) {
        u.blobs += 1;
        u.blob_bytes += size;
        if !keep.blobs.contains(&d) {
            u.reclaimable_bytes += size;
        }
    }
    u.cache_records = store.meta.cache_records()?.len();
    u.images = store.meta.images()?.len();
    (u.cache_mounts, u.cache_mount_bytes) = store.cache_mounts.usage();
    u.reclaimable_bytes += u.cache_mount_bytes;
    Ok(u)
}

/// Removes the build cache (and with `all`, the images too).
pub fn prune(store: &Store, all: bool) -> Result<Pruned, StoreError> {
    let mut p = Pruned::default();
    let images: Vec<String> = if all {
        store.meta.images()?.into_iter().map(|(k, _)| k).collect()
    } else {
        Vec::new()
    };
    let cache: Vec<String> = store
        .meta
        .cache_records()?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    p.cache_records = cache.len();
    // Records go first (one transaction), so no record ever points at a removed file.
    store.meta.remove(&cache, &[], &images, &[])?;
    store.meta.clear_file_hashes()?;
    sweep(store, &[], &mut p)?;
    // Cache mounts are build cache too; one a running step holds is kept.
    let caches = store.cache_mounts.prune()?;
    p.cache_mounts = caches.caches;
    p.bytes += caches.bytes;
    Ok(p)
}

/// Removes every layer directory, layer record and blob that neither an image nor a cache
/// record in `kept` (their layer directories) reaches.
fn sweep(store: &Store, kept: &[SnapshotId], p: &mut Pruned) -> Result<(), StoreError> {
    let keep = roots_keeping(store, true, kept)?;
    let mut gone_layers = Vec::new();
    let mut gone_unpacked = Vec::new();
    for (blob, id) in store.meta.unpacked_records()? {
        if !keep.snapshots.contains(&id) {
            gone_unpacked.push(blob);
        }
    }
    for (id, _) in store.meta.layer_records()? {
        if SnapshotId::parse(&id).is_none_or(|s| !keep.snapshots.contains(&s)) {
            gone_layers.push(id);
        }
    }
    store.meta.remove(&[], &gone_layers, &[], &gone_unpacked)?;
    for id in store.snapshots.list()? {
        if !keep.snapshots.contains(&id) {
            p.bytes += crate::store::tree_size(&store.snapshots.path(&id));
            store.snapshots.remove(&id)?;
            p.snapshots += 1;
        }
    }
    for (d, size) in blob_list(store) {
        if !keep.blobs.contains(&d) {
            let path = store.content.path(&d);
            fs::remove_file(&path).map_err(crate::store::io_err("remove", &path))?;
            p.blobs += 1;
            p.bytes += size;
        }
    }
    // Reusable gzip blocks live in blobs: forget those of the blobs that went.
    store.meta.retain_gzip_blocks(|b| keep.blobs.contains(b))?;
    // Nor may a COPY hard-link from a layer that went.
    store
        .meta
        .retain_copy_reuse(|id| keep.snapshots.contains(id))?;
    p.bytes += store.snapshots.clean_tmp()?;
    Ok(())
}

/// What the build cache may keep ([`collect`]); `None` is no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcPolicy {
    /// Cache records not used for longer than this (seconds) go.
    pub keep_duration: Option<u64>,
    /// The cache's layers may take this many bytes in all; the least recently used go first.
    pub keep_bytes: Option<u64>,
    /// Each tenant's cache records may take this many bytes; its least recently used go
    /// first.
    pub tenant_bytes: Option<u64>,
}

/// Garbage collection by policy: drops the cache records the policy does not keep (least
/// recently used first; a layer's size counts for the record that made it), then removes
/// every layer and blob nothing kept reaches. Images and cache mounts are not touched. The
/// caller makes sure no build runs meanwhile (a running build's staged layers are reachable
/// from nothing yet).
pub fn collect(store: &Store, policy: &GcPolicy, now: u64) -> Result<Pruned, StoreError> {
    let mut by_age = store.meta.cache_records()?;
    // Newest first.
    by_age.sort_by(|a, b| (b.1.last_used, &b.0).cmp(&(a.1.last_used, &a.0)));
    // A layer's size counts for the record that made it; a file layers share (a COPY
    // hard-linked it from an earlier layer) counts in the newest layer that has it, since
    // dropping an older one frees nothing of it.
    let mut seen = std::collections::HashSet::new();
    let mut sizes: std::collections::HashMap<SnapshotId, u64> = Default::default();
    let recs: Vec<(String, crate::store::meta::CacheRecord, u64)> = by_age
        .into_iter()
        .map(|(k, r)| {
            let size = r.layers.last().map_or(0, |id| {
                *sizes.entry(id.clone()).or_insert_with(|| {
                    crate::store::tree_size_once(&store.snapshots.path(id), &mut seen)
                })
            });
            (k, r, size)
        })
        .collect();
    let mut drop = BTreeSet::new();
    if let Some(d) = policy.keep_duration {
        for (k, r, _) in &recs {
            if now.saturating_sub(r.last_used) > d {
                drop.insert(k.clone());
            }
        }
    }
    if let Some(quota) = policy.tenant_bytes {
        let mut used: std::collections::BTreeMap<&str, u64> = Default::default();
        for (k, r, size) in &recs {
            if drop.contains(k) {
                continue;
            }
            let u = used.entry(r.tenant.as_str()).or_default();
            *u += size;
            if *u > quota {
                drop.insert(k.clone());
            }
        }
    }
    if let Some(limit) = policy.keep_bytes {
        let mut total = 0u64;
        let mut counted = BTreeSet::new();
        for (k, r, size) in &recs {
            if drop.contains(k) {
                continue;
            }
            if r.layers.last().is_some_and(|id| counted.insert(id.clone())) {
                total += size;
            }
            if total > limit {
                drop.insert(k.clone());
            }
        }
    }
    let gone: Vec<String> = drop.into_iter().collect();
    let mut p = Pruned {
        cache_records: gone.len(),
        ..Pruned::default()
    };
    store.meta.remove(&gone, &[], &[], &[])?;
    let kept: Vec<SnapshotId> = recs
        .iter()
        .filter(|(k, ..)| gone.binary_search(k).is_err())
        .flat_map(|(_, r, _)| r.layers.iter().cloned())
        .collect();
    sweep(store, &kept, &mut p)?;
    Ok(p)
}

/// Removes what interrupted builds left in the store's temp areas (`content/ingest/` blobs
/// being written, `snapshots/.tmp/` layers of unfinished steps); returns the bytes freed.
/// No record names these. Only for a store no build is using (kilnd calls it at start,
/// before it serves); removal is best effort, as a step orphaned by a killed daemon may still
/// be writing into its layer.
pub fn reclaim_interrupted(store: &Store) -> Result<u64, StoreError> {
    let ingest = store.root().join("content/ingest");
    let mut bytes = crate::store::tree_size(&ingest);
    for e in fs::read_dir(&ingest)
        .map_err(crate::store::io_err("read", &ingest))?
        .flatten()
    {
        let _ = fs::remove_file(e.path());
    }
    bytes += store.snapshots.clean_tmp()?;
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{CacheRecord, StagedRecords};

    /// A store with one cache record per (tenant, last_used, bytes), each with its own layer.
    fn store_with(records: &[(&str, u64, usize)]) -> (tempfile::TempDir, Store, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut staged = StagedRecords::default();
        let mut keys = Vec::new();
        for (i, (tenant, last_used, bytes)) in records.iter().enumerate() {
            let pending = store.snapshots.create().unwrap();
            fs::write(pending.dir.join("f"), vec![0u8; *bytes]).unwrap();
            let id = store.snapshots.commit(pending).unwrap();
            let key = format!("{i:064x}");
            staged.cache.insert(
                key.clone(),
                CacheRecord {
                    layers: vec![id],
                    last_used: *last_used,
                    tenant: (*tenant).to_owned(),
                },
            );
            keys.push(key);
        }
        store.meta.commit(&staged).unwrap();
        (dir, store, keys)
    }

    fn left(store: &Store) -> Vec<String> {
        let mut k: Vec<String> = store
            .meta
            .cache_records()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        k.sort();
        k
    }

    #[test]
    fn usage_counts_a_file_layers_share_once_and_as_reclaimable_only_if_no_kept_layer_has_it() {
        let (_d, store, _) = store_with(&[("a", 1000, 10)]);
        let kept = store.snapshots.list().unwrap().remove(0);
        // An image keeps the layer (the build cache is reclaimable).
        let mut staged = StagedRecords::default();
        staged.images.insert(
            "app:latest".to_owned(),
            crate::store::ImageRecord {
                manifest: Digest::of(b"manifest"),
                config: Digest::of(b"config"),
                size: 8,
                layers: vec![kept.clone()],
                index: None,
            },
        );
        store.meta.commit(&staged).unwrap();
        let before = usage(&store).unwrap();
        assert_eq!((before.snapshot_bytes, before.reclaimable_bytes), (10, 0));
        // Two layers no record reaches: one links the kept layer's file and has a file of its
        // own, the other links that one.
        let pending = store.snapshots.create().unwrap();
        fs::hard_link(store.snapshots.path(&kept).join("f"), pending.dir.join("f")).unwrap();
        fs::write(pending.dir.join("g"), [0u8; 5]).unwrap();
        let orphan = store.snapshots.commit(pending).unwrap();
        let pending = store.snapshots.create().unwrap();
        fs::hard_link(
            store.snapshots.path(&orphan).join("g"),
            pending.dir.join("g"),
        )
        .unwrap();
        store.snapshots.commit(pending).unwrap();
        let u = usage(&store).unwrap();
        assert_eq!(u.snapshots, 3);
        assert_eq!(u.snapshot_bytes, 15, "each inode once");
        assert_eq!(u.reclaimable_bytes, 5, "f stays with the kept layer");
    }

    #[test]
    fn a_file_layers_share_counts_for_the_newest_record_that_has_it() {
        let (_d, store, keys) = store_with(&[("a", 900, 10), ("a", 1000, 5)]);
        let layer = |key: &str| {
            store
                .meta
                .cache_records()
                .unwrap()
                .into_iter()
                .find(|(k, _)| k == key)
                .unwrap()
                .1
                .layers[0]
                .clone()
        };
        // The newer layer holds the older one's file too, hard-linked (as a COPY links it).
        fs::hard_link(
            store.snapshots.path(&layer(&keys[0])).join("f"),
            store.snapshots.path(&layer(&keys[1])).join("old"),
        )
        .unwrap();
        // 15 bytes on disk in all: both records fit 16.
        let p = collect(
            &store,
            &GcPolicy {
                keep_bytes: Some(16),
                ..GcPolicy::default()
            },
            1000,
        )
        .unwrap();
        assert_eq!(p.cache_records, 0);
        assert_eq!(left(&store).len(), 2);
        // Under 15 both go: the newer record alone counts 15 bytes (the shared file counts
        // there), and the older one is beyond the bound after it.
        let p = collect(
            &store,
            &GcPolicy {
                keep_bytes: Some(14),
                ..GcPolicy::default()
            },
            1000,
        )
        .unwrap();
        assert_eq!(p.cache_records, 2);
    }

    #[test]
    fn collect_drops_what_the_policy_does_not_keep_least_recently_used_first() {
        // keep_duration: records unused for more than 100 s go, with their layers.
        let (_d, store, keys) = store_with(&[("a", 1000, 10), ("a", 850, 10), ("b", 950, 10)]);
        let p = collect(
            &store,
            &GcPolicy {
                keep_duration: Some(100),
                ..GcPolicy::default()
            },
            1000,
        )
        .unwrap();
        assert_eq!(p.cache_records, 1);
        assert_eq!(p.snapshots, 1);
        assert_eq!(left(&store), vec![keys[0].clone(), keys[2].clone()]);
        assert_eq!(store.snapshots.list().unwrap().len(), 2);

        // keep_bytes: the newest 25 bytes' worth stays.
        let (_d, store, keys) = store_with(&[("a", 3, 10), ("a", 1, 10), ("b", 2, 10)]);
        collect(
            &store,
            &GcPolicy {
                keep_bytes: Some(25),
                ..GcPolicy::default()
            },
            10,
        )
        .unwrap();
        assert_eq!(left(&store), vec![keys[0].clone(), keys[2].clone()]);

        // tenant_bytes: each tenant keeps its newest 15 bytes; another tenant's use does not
        // count against it.
        let (_d, store, keys) =
            store_with(&[("a", 3, 10), ("a", 2, 10), ("b", 1, 10), ("b", 0, 4)]);
        collect(
            &store,
            &GcPolicy {
                tenant_bytes: Some(15),
                ..GcPolicy::default()
            },
            10,
        )
        .unwrap();
        assert_eq!(
            left(&store),
            vec![keys[0].clone(), keys[2].clone(), keys[3].clone()]
        );

        // No bound: nothing goes.
        let (_d, store, _) = store_with(&[("a", 0, 10)]);
        let p = collect(&store, &GcPolicy::default(), 1 << 40).unwrap();
        assert_eq!(p.cache_records, 0);
        assert_eq!(p.snapshots, 0);
    }
}
