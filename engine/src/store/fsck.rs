//! The store's integrity check (`kiln admin fsck` through kilnd, or in-process on an idle
//! store): does every record point only at what is there, and is what is there intact?
//!
//! Checked, in this order:
//! 1. every blob under `content/blobs/sha256/` hashes to its name (read in a stream: memory
//!    stays bounded whatever the blob's size);
//! 2. every committed layer directory `snapshots/<id>` is a directory (the rename out of
//!    `snapshots/.tmp/` is what marks a layer complete, so a directory at its final name is a
//!    complete one);
//! 3. every metadata record points only at blobs and layer directories that exist: cache
//!    records (their layer chains), layer records (the layer and its compressed blobs), images
//!    (manifest, config, the manifest's layer blobs, the attestations' index and what it
//!    lists, the image's layer directories) and unpacked-blob records (the layer directory).
//!
//! What is *not* an error: leftovers of interrupted work (`content/ingest/` temp files,
//! `snapshots/.tmp/` layer directories) and blobs or layer directories no record names. They
//! are reported as reclaimable (`kiln prune` removes them); the crash-consistency rule ("a
//! record points only at blobs already durable") allows exactly these.
//!
//! Read-only: nothing is created, changed or removed. Runs beside builds: a build writes its
//! files before its records, so what it has not committed yet shows as reclaimable, never as
//! a problem. (Pruning at the same time could make a removed file look missing: do not.)

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::{SnapshotId, Store, StoreError, io_err};
use crate::Digest;

/// Manifests and indexes larger than this are not parsed (they are still hashed): nothing
/// kiln writes comes near it, and it bounds what one record makes fsck hold in memory.
const MAX_DOCUMENT: u64 = 4 << 20;

/// Something wrong with the store: a record that points at nothing, or damaged data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A blob's content does not hash to its name.
    CorruptBlob {
        /// The name.
        digest: Digest,
        /// What it hashes to.
        actual: Digest,
    },
    /// A blob could not be read.
    UnreadableBlob {
        /// The name.
        digest: Digest,
        /// Why.
        error: String,
    },
    /// A record names a blob the content store does not have.
    MissingBlob {
        /// The blob.
        digest: Digest,
        /// The record naming it (`table key`).
        referrer: String,
    },
    /// A record names a layer directory that is not there (or is not a directory).
    MissingSnapshot {
        /// The layer.
        id: String,
        /// The record naming it (`table key`).
        referrer: String,
    },
    /// `snapshots/<id>` exists but is not a directory.
    SnapshotNotADirectory {
        /// The layer.
        id: SnapshotId,
    },
    /// A table of the metadata database could not be read or decoded.
    BadRecords {
        /// The table.
        table: &'static str,
        /// Why.
        error: String,
    },
    /// A manifest or index an image names is not a valid one.
    BadDocument {
        /// The blob.
        digest: Digest,
        /// The record naming it.
        referrer: String,
        /// Why.
        error: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CorruptBlob { digest, actual } => {
                write!(
                    f,
                    "blob {digest} is corrupt: its content hashes to {actual}"
                )
            }
            Self::UnreadableBlob { digest, error } => {
                write!(f, "blob {digest} can not be read: {error}")
            }
            Self::MissingBlob { digest, referrer } => {
                write!(f, "{referrer} names blob {digest}, which is missing")
            }
            Self::MissingSnapshot { id, referrer } => {
                write!(f, "{referrer} names layer directory {id}, which is missing")
            }
            Self::SnapshotNotADirectory { id } => {
                write!(f, "layer {id} is not a directory")
            }
            Self::BadRecords { table, error } => {
                write!(f, "metadata table {table} can not be read: {error}")
            }
            Self::BadDocument {
                digest,
                referrer,
                error,
            } => write!(f, "{referrer} names {digest}, which is not valid: {error}"),
        }
    }
}

/// Something no record needs: safe to remove (`kiln prune` does), never an error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reclaimable {
    /// A blob being written when its writer stopped (`content/ingest/`).
    IngestTemp(PathBuf),
    /// A layer directory of a step that never finished (`snapshots/.tmp/`).
    PendingSnapshot(PathBuf),
    /// A file or directory whose name is not one the store makes.
    Unknown(PathBuf),
    /// A blob no record names.
    UnreferencedBlob(Digest),
    /// A layer directory no record names.
    UnreferencedSnapshot(SnapshotId),
}

impl fmt::Display for Reclaimable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IngestTemp(p) => write!(f, "unfinished blob {}", p.display()),
            Self::PendingSnapshot(p) => write!(f, "unfinished layer {}", p.display()),
            Self::Unknown(p) => write!(f, "unknown entry {}", p.display()),
            Self::UnreferencedBlob(d) => write!(f, "unreferenced blob {d}"),
            Self::UnreferencedSnapshot(id) => write!(f, "unreferenced layer {id}"),
        }
    }
}

/// What [`fsck`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Blobs hashed.
    pub blobs: usize,
    /// Bytes hashed.
    pub blob_bytes: u64,
    /// Committed layer directories seen.
    pub snapshots: usize,
    /// Metadata records checked.
    pub records: usize,
    /// What is wrong; empty for a sound store.
    pub problems: Vec<Problem>,
    /// What could be removed.
    pub reclaimable: Vec<Reclaimable>,
}

impl FsckReport {
    /// True when nothing is wrong (reclaimable leftovers are not wrong).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the store; see the module documentation. `Err` only when the store's directories
/// can not be listed at all; everything found wrong inside is a [`Problem`] in the report.
pub fn fsck(store: &Store) -> Result<FsckReport, StoreError> {
    let mut r = FsckReport::default();
    let blobs = check_blobs(store, &mut r)?;
    let snapshots = check_snapshots(store, &mut r)?;
    let mut refs = Refs {
        blobs: &blobs,
        snapshots: &snapshots,
        used_blobs: BTreeSet::new(),
        used_snapshots: BTreeSet::new(),
    };
    check_records(store, &mut refs, &mut r);
    let (used_blobs, used_snapshots) = (refs.used_blobs, refs.used_snapshots);
    r.reclaimable.extend(
        blobs
            .iter()
            .filter(|d| !used_blobs.contains(d))
            .map(|d| Reclaimable::UnreferencedBlob(*d)),
    );
    r.reclaimable.extend(
        snapshots
            .iter()
            .filter(|s| !used_snapshots.contains(s.as_str()))
            .map(|s| Reclaimable::UnreferencedSnapshot(s.clone())),
    );
    Ok(r)
}

/// Hashes every blob; returns the names of the sound ones.
fn check_blobs(store: &Store, r: &mut FsckReport) -> Result<BTreeSet<Digest>, StoreError> {
    let mut ok = BTreeSet::new();
    let dir = store.root().join("content/blobs/sha256");
    for e in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
        let e = e.map_err(io_err("read", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let digest = match format!("sha256:{name}").parse::<Digest>() {
            Ok(d) if e.file_type().is_ok_and(|t| t.is_file()) => d,
            _ => {
                r.reclaimable.push(Reclaimable::Unknown(e.path()));
                continue;
            }
        };
        r.blobs += 1;
        match hash_file(&e.path()) {
            Ok((actual, len)) => {
                r.blob_bytes += len;
                if actual == digest {
                    ok.insert(digest);
                } else {
                    r.problems.push(Problem::CorruptBlob { digest, actual });
                }
            }
            Err(err) => r.problems.push(Problem::UnreadableBlob {
                digest,
                error: err.to_string(),
            }),
        }
    }
    let ingest = store.root().join("content/ingest");
    for e in fs::read_dir(&ingest).map_err(io_err("read", &ingest))? {
        let e = e.map_err(io_err("read", &ingest))?;
        r.reclaimable.push(Reclaimable::IngestTemp(e.path()));
    }
    Ok(ok)
}

fn hash_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let len = f.metadata()?.len();
    Ok((Digest::of_reader(std::io::BufReader::new(f))?, len))
}

/// Lists the layer directories; returns the ids of the sound ones.
fn check_snapshots(store: &Store, r: &mut FsckReport) -> Result<BTreeSet<SnapshotId>, StoreError> {
    let mut ok = BTreeSet::new();
    let dir = store.root().join("snapshots");
    for e in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
        let e = e.map_err(io_err("read", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".tmp" {
            let tmp = e.path();
            for p in fs::read_dir(&tmp).map_err(io_err("read", &tmp))? {
                let p = p.map_err(io_err("read", &tmp))?;
                r.reclaimable.push(Reclaimable::PendingSnapshot(p.path()));
            }
            continue;
        }
        let Some(id) = SnapshotId::parse(&name) else {
            r.reclaimable.push(Reclaimable::Unknown(e.path()));
            continue;
        };
        r.snapshots += 1;
        // `file_type` does not follow a symlink: a symlink here is not a layer.
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            ok.insert(id);
        } else {
            r.problems.push(Problem::SnapshotNotADirectory { id });
        }
    }
    Ok(ok)
}

/// What exists, and what the records name.
struct Refs<'a> {
    blobs: &'a BTreeSet<Digest>,
    snapshots: &'a BTreeSet<SnapshotId>,
    used_blobs: BTreeSet<Digest>,
    used_snapshots: BTreeSet<String>,
}

impl Refs<'_> {
    /// Notes a reference to a blob; a problem if it is missing (a corrupt blob is already one).
    fn blob(&mut self, r: &mut FsckReport, digest: Digest, referrer: &str) -> bool {
        self.used_blobs.insert(digest);
        if self.blobs.contains(&digest) {
            return true;
        }
        if !r
            .problems
            .iter()
            .any(|p| matches!(p, Problem::CorruptBlob { digest: d, .. } | Problem::UnreadableBlob { digest: d, .. } if *d == digest))
        {
            r.problems.push(Problem::MissingBlob {
                digest,
                referrer: referrer.to_owned(),
            });
        }
        false
    }

    fn snapshot(&mut self, r: &mut FsckReport, id: &SnapshotId, referrer: &str) {
        self.used_snapshots.insert(id.as_str().to_owned());
        if !self.snapshots.contains(id)
            && !r
                .problems
                .iter()
                .any(|p| matches!(p, Problem::SnapshotNotADirectory { id: i } if i == id))
        {
            r.problems.push(Problem::MissingSnapshot {
                id: id.to_string(),
                referrer: referrer.to_owned(),
            });
        }
    }
}

fn table<T>(r: &mut FsckReport, table: &'static str, rows: Result<Vec<T>, StoreError>) -> Vec<T> {
    match rows {
        Ok(rows) => {
            r.records += rows.len();
            rows
        }
        Err(e) => {
            r.problems.push(Problem::BadRecords {
                table,
                error: e.to_string(),
            });
            Vec::new()
        }
    }
}

fn check_records(store: &Store, refs: &mut Refs<'_>, r: &mut FsckReport) {
    for (key, rec) in table(r, "cache", store.meta.cache_records()) {
        let referrer = format!("cache record {key}");
        for id in &rec.layers {
            refs.snapshot(r, id, &referrer);
        }
    }
    for (key, rec) in table(r, "layers", store.meta.layer_records()) {
        let referrer = format!("layer record {key}");
        match SnapshotId::parse(&key) {
            Some(id) => refs.snapshot(r, &id, &referrer),
            None => r.problems.push(Problem::MissingSnapshot {
                id: key.clone(),
                referrer: referrer.clone(),
            }),
        }
        for b in &rec.blobs {
            refs.blob(r, b.digest, &referrer);
        }
    }
    for (name, img) in table(r, "images", store.meta.images()) {
        let referrer = format!("image {name}");
        refs.blob(r, img.config, &referrer);
        if refs.blob(r, img.manifest, &referrer)
            && let Some(m) = document(store, r, img.manifest, &referrer, |b| {
                crate::oci::types::Manifest::from_slice(b).map_err(|e| e.to_string())
            })
        {
            for l in &m.layers {
                refs.blob(r, l.digest, &referrer);
            }
        }
        for id in &img.layers {
            refs.snapshot(r, id, &referrer);
        }
        if let Some(index) = img.index
            && refs.blob(r, index, &referrer)
            && let Some(i) = document(store, r, index, &referrer, |b| {
                crate::oci::types::Index::from_slice(b).map_err(|e| e.to_string())
            })
        {
            for d in &i.manifests {
                if refs.blob(r, d.digest, &referrer)
                    && let Some(m) = document(store, r, d.digest, &referrer, |b| {
                        crate::oci::types::Manifest::from_slice(b).map_err(|e| e.to_string())
                    })
                {
                    refs.blob(r, m.config.digest, &referrer);
                    for l in &m.layers {
                        refs.blob(r, l.digest, &referrer);
                    }
                }
            }
        }
    }
    for (blob, id) in table(r, "unpacked", store.meta.unpacked_records()) {
        // The key is only the lookup: the layer directory is what a build uses.
        refs.snapshot(r, &id, &format!("unpacked record {blob}"));
    }
}

/// Reads and parses a manifest or index blob (already known to be sound).
fn document<T>(
    store: &Store,
    r: &mut FsckReport,
    digest: Digest,
    referrer: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Option<T> {
    let bad = |error: String| Problem::BadDocument {
        digest,
        referrer: referrer.to_owned(),
        error,
    };
    match store.content.size(&digest) {
        Ok(n) if n > MAX_DOCUMENT => {
            r.problems.push(bad(format!(
                "{n} bytes, over the {MAX_DOCUMENT}-byte limit"
            )));
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            r.problems.push(bad(e.to_string()));
            return None;
        }
    }
    match store.content.read_blob(&digest).map_err(|e| e.to_string()) {
        Ok(bytes) => match parse(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                r.problems.push(bad(e));
                None
            }
        },
        Err(e) => {
            r.problems.push(bad(e));
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{CacheRecord, ImageRecord, LayerBlob, LayerRecord, StagedRecords};

    /// A small sound store: one layer with a blob, a cache record, an image.
    fn sample() -> (tempfile::TempDir, Store, Digest, SnapshotId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        let layer_blob = store.content.write_bytes(b"layer bytes").unwrap();
        let config = store.content.write_bytes(b"{}").unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config.to_string(), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_blob.to_string(), "size": 11}],
        });
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let manifest = store.content.write_bytes(&manifest_bytes).unwrap();
        let pending = store.snapshots.create().unwrap();
        fs::write(pending.dir.join("f"), b"x").unwrap();
        let id = store.snapshots.commit(pending).unwrap();
        let mut s = StagedRecords::default();
        s.cache.insert(
            "k".into(),
            CacheRecord {
                layers: vec![id.clone()],
                last_used: 0,
                tenant: String::new(),
            },
        );
        s.layers.insert(
            id.clone(),
            LayerRecord {
                diff_id: None,
                empty: false,
                blobs: vec![LayerBlob {
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    digest: layer_blob,
                    size: 11,
                    epoch: None,
                }],
            },
        );
        s.images.insert(
            "app".into(),
            ImageRecord {
                manifest,
                config,
                size: manifest_bytes.len() as u64,
                layers: vec![id.clone()],
                index: None,
            },
        );
        store.meta.commit(&s).unwrap();
        (dir, store, layer_blob, id)
    }

    #[test]
    fn a_sound_store_is_clean_and_leftovers_are_only_reclaimable() {
        let (_dir, store, _, _) = sample();
        let r = fsck(&store).unwrap();
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!((r.blobs, r.snapshots, r.records), (3, 1, 3));
        assert!(r.reclaimable.is_empty(), "{:?}", r.reclaimable);

        // What a killed build leaves: an ingest temp file, a pending layer, a committed layer
        // and a blob no record names yet.
        fs::write(store.root().join("content/ingest/abc.tmp"), b"half").unwrap();
        let pending = store.snapshots.create().unwrap();
        std::mem::forget(pending);
        let orphan = store
            .snapshots
            .commit(store.snapshots.create().unwrap())
            .unwrap();
        let blob = store.content.write_bytes(b"not yet named").unwrap();
        let r = fsck(&store).unwrap();
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!(r.reclaimable.len(), 4, "{:?}", r.reclaimable);
        assert!(r.reclaimable.contains(&Reclaimable::UnreferencedBlob(blob)));
        assert!(
            r.reclaimable
                .contains(&Reclaimable::UnreferencedSnapshot(orphan))
        );
        assert!(
            r.reclaimable
                .iter()
                .any(|x| matches!(x, Reclaimable::IngestTemp(_)))
        );
        assert!(
            r.reclaimable
                .iter()
                .any(|x| matches!(x, Reclaimable::PendingSnapshot(_)))
        );
    }

    #[test]
    fn a_corrupt_blob_is_found() {
        let (_dir, store, layer_blob, _) = sample();
        fs::write(store.content.path(&layer_blob), b"layer bytez").unwrap();
        let r = fsck(&store).unwrap();
        assert_eq!(
            r.problems,
            vec![Problem::CorruptBlob {
                digest: layer_blob,
                actual: Digest::of(b"layer bytez"),
            }]
        );
        assert!(r.problems[0].to_string().contains("is corrupt"));
    }

    #[test]
    fn a_deleted_referenced_blob_is_found_with_who_names_it() {
        let (_dir, store, layer_blob, id) = sample();
        fs::remove_file(store.content.path(&layer_blob)).unwrap();
        let r = fsck(&store).unwrap();
        assert!(!r.is_clean());
        // Named by the layer record and by the image's manifest.
        let referrers: Vec<&str> = r
            .problems
            .iter()
            .map(|p| match p {
                Problem::MissingBlob { digest, referrer } if *digest == layer_blob => {
                    referrer.as_str()
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            referrers,
            vec![format!("layer record {id}").as_str(), "image app"]
        );
    }

    #[test]
    fn a_deleted_referenced_layer_directory_is_found() {
        let (_dir, store, _, id) = sample();
        fs::remove_dir_all(store.snapshots.path(&id)).unwrap();
        let r = fsck(&store).unwrap();
        let missing: Vec<&str> = r
            .problems
            .iter()
            .filter_map(|p| match p {
                Problem::MissingSnapshot { referrer, .. } => Some(referrer.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(missing.len(), 3, "{:?}", r.problems);
        assert!(missing.contains(&"cache record k"));
        assert!(missing.contains(&"image app"));

        // A file where a layer directory should be is a problem too, reported once.
        fs::write(store.snapshots.path(&id), b"").unwrap();
        let r = fsck(&store).unwrap();
        assert_eq!(r.problems, vec![Problem::SnapshotNotADirectory { id }]);
    }

    #[test]
    fn fsck_changes_nothing() {
        let (dir, store, _, _) = sample();
        fs::write(store.root().join("content/ingest/abc.tmp"), b"half").unwrap();
        let before = crate::store::tree_size(dir.path());
        let listing = |p: &Path| {
            let mut v: Vec<_> = walk(p);
            v.sort();
            v
        };
        let names = listing(&store.root().join("content"));
        fsck(&store).unwrap();
        assert_eq!(crate::store::tree_size(dir.path()), before);
        assert_eq!(listing(&store.root().join("content")), names);
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(p).unwrap().flatten() {
            out.push(e.path());
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
        out
    }
}
