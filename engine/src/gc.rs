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
    let mut r = Roots {
        blobs: BTreeSet::new(),
        snapshots: BTreeSet::new(),
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
    for id in store.snapshots.list()? {
        let size = crate::store::tree_size(&store.snapshots.path(&id));
        u.snapshots += 1;
        u.snapshot_bytes += size;
        if !keep.snapshots.contains(&id) {
            u.reclaimable_bytes += size;
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
    let keep = roots(store, true)?;
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
    p.bytes += store.snapshots.clean_tmp()?;
    // Cache mounts are build cache too; one a running step holds is kept.
    let caches = store.cache_mounts.prune()?;
    p.cache_mounts = caches.caches;
    p.bytes += caches.bytes;
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
