//! Images in kiln's store: loading a base image, assembling the built image (config, layers,
//! manifest) and naming images in the local image store.

use std::path::PathBuf;

use crate::Digest;
use crate::frontend::convert::ImageState;
use crate::oci::compress::{BlobWriter, BlockCache, BlockRef, BlockReuse, Compression};
use crate::oci::layer::{LayerOptions, write_layer_unhashed};
use crate::oci::media;
use crate::oci::types::{
    ContainerConfig, Descriptor, Empty, History, ImageConfig, Manifest, Platform, RootFs,
    canonical_json, rfc3339_from_epoch,
};
use crate::store::{LayerBlob, LayerRecord, SnapshotId, StagedRecords, Store, StoreError};

/// Errors loading or assembling an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest or config did not parse.
    #[error("{what} {digest}: {message}")]
    Malformed {
        /// Which document.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// Why.
        message: String,
    },
    /// Writing a layer failed.
    #[error("writing layer {id}: {message}")]
    Layer {
        /// Layer directory.
        id: SnapshotId,
        /// Why.
        message: String,
    },
    /// History and layers disagree.
    #[error("image history has {history} layer entries but the file system has {layers} layers")]
    HistoryMismatch {
        /// Layer-producing history entries.
        history: usize,
        /// Layers.
        layers: usize,
    },
}

/// A manifest and config read from the content store.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// Manifest digest.
    pub digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// The config.
    pub config: ImageConfig,
}

/// Reads an image's manifest and config from the content store (digests verified).
pub fn load(store: &Store, manifest: &Digest) -> Result<LoadedImage, ImageError> {
    let bytes = store.content.read_blob(manifest)?;
    let m = Manifest::from_slice(&bytes).map_err(|e| ImageError::Malformed {
        what: "manifest",
        digest: *manifest,
        message: e.to_string(),
    })?;
    let cbytes = store.content.read_blob(&m.config.digest)?;
    let config = ImageConfig::from_slice(&cbytes).map_err(|e| ImageError::Malformed {
        what: "config",
        digest: m.config.digest,
        message: e.to_string(),
    })?;
    Ok(LoadedImage {
        digest: *manifest,
        manifest: m,
        config,
    })
}

/// The built image, assembled in the content store.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// Manifest descriptor (digest, size, media type).
    pub manifest_descriptor: Descriptor,
    /// The manifest.
    pub manifest: Manifest,
    /// Config digest.
    pub config_digest: Digest,
    /// The config.
    pub config: ImageConfig,
    /// The layer directories of the image's file system, bottom first (empty ones included).
    pub chain: Vec<SnapshotId>,
    /// gzip blocks of the new layer blobs: (copied from earlier blobs, all).
    pub gzip_blocks_reused: (usize, usize),
}

/// How to assemble.
#[derive(Debug, Clone)]
pub struct AssembleOptions {
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
    /// Layer compression for new layers.
    pub compression: Compression,
    /// Threads for compressing layers.
    pub parallelism: usize,
    /// Namespace of the gzip blocks this build may reuse and records (the cache namespace:
    /// tenants that do not share cache records do not share blocks either).
    pub block_namespace: String,
}

/// Assembles the image for `chain` with metadata `state`: writes missing layer blobs, the
/// config and the manifest into the content store; stages layer records.
pub fn assemble(
    store: &Store,
    chain: &[SnapshotId],
    state: &ImageState,
    opts: &AssembleOptions,
    staged: &mut StagedRecords,
) -> Result<Assembled, ImageError> {
    // 1. A blob for every layer (existing ones reused), in parallel.
    let mut records: Vec<LayerRecord> = Vec::with_capacity(chain.len());
    for id in chain {
        let rec = match staged.layers.get(id) {
            Some(r) => r.clone(),
            None => store.meta.layer(id)?.unwrap_or_default(),
        };
        records.push(rec);
    }
    let media_type = opts.compression.media_type();
    let epoch = Some(opts.epoch);
    // A blob is reused only if it is really in the content store (prune may have removed it)
    // and was written with this compression and epoch.
    let reusable = |b: &LayerBlob| {
        b.media_type == media_type && b.epoch == epoch && store.content.contains(&b.digest)
    };
    let base_blob = |i: usize| {
        state
            .base_blobs
            .get(i)
            .filter(|d| store.content.contains(&d.digest))
    };
    let needed: Vec<usize> = (0..chain.len())
        .filter(|&i| {
            let r = &records[i];
            if i < state.base_layers {
                // Base layers keep the base image's own blobs.
                return base_blob(i).is_none()
                    && !r.blobs.iter().any(|b| store.content.contains(&b.digest));
            }
            !r.empty && !r.blobs.iter().any(reusable)
        })
        .collect();
    let results = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..opts.parallelism.clamp(1, needed.len().max(1)) {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(&i) = needed.get(n) else { break };
                    let r = write_blob(store, &chain[i], opts);
                    if let Ok(mut v) = results.lock() {
                        v.push((i, r));
                    }
                }
            });
        }
    });
    let results = results.into_inner().map_err(|_| ImageError::Layer {
        id: SnapshotId::new_random(),
        message: "layer writer panicked".into(),
    })?;
    let mut gzip_blocks_reused = (0, 0);
    for (i, r) in results {
        let WrittenBlob {
            diff_id,
            blob,
            empty,
            blocks,
            reused,
        } = r?;
        gzip_blocks_reused.0 += reused;
        gzip_blocks_reused.1 += blocks.len();
        staged.gzip_blocks.extend(blocks);
        let rec = &mut records[i];
        rec.diff_id = Some(diff_id);
        rec.empty = empty;
        rec.blobs
            .retain(|b| !(b.media_type == blob.media_type && b.epoch == blob.epoch));
        rec.blobs.push(blob);
        staged.layers.insert(chain[i].clone(), rec.clone());
    }

    // 2. Align history with layers; drop our empty layers.
    let mut history: Vec<History> = Vec::new();
    let layer_items = state.history.iter().filter(|h| !h.empty_layer).count();
    let created = rfc3339_from_epoch(opts.epoch);
    let mut pad = chain.len().saturating_sub(layer_items);
    if layer_items > chain.len() {
        return Err(ImageError::HistoryMismatch {
            history: layer_items,
            layers: chain.len(),
        });
    }
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    // Blob → layer directory, so a later `FROM` this image reuses the directories.
    let mut unpacked: Vec<(Digest, SnapshotId)> = Vec::new();
    let mut li = 0usize;
    let push_layer = |li: usize,
                      h: &mut History,
                      layers: &mut Vec<Descriptor>,
                      diff_ids: &mut Vec<Digest>,
                      unpacked: &mut Vec<(Digest, SnapshotId)>|
     -> Result<(), ImageError> {
        let rec = &records[li];
        let base = li < state.base_layers;
        if rec.empty && !base {
            h.empty_layer = true;
            return Ok(());
        }
        let descriptor = if base {
            base_blob(li).cloned().or_else(|| {
                rec.blobs
                    .iter()
                    .find(|b| store.content.contains(&b.digest))
                    .map(|b| Descriptor::new(b.media_type.clone(), b.digest, b.size))
            })
        } else {
            rec.blobs
                .iter()
                .find(|b| reusable(b))
                .map(|b| Descriptor::new(b.media_type.clone(), b.digest, b.size))
        };
        let (Some(blob), Some(diff_id)) = (descriptor, rec.diff_id) else {
            return Err(ImageError::Layer {
                id: chain[li].clone(),
                message: "layer has no blob or diff id".into(),
            });
        };
        layers.push(Descriptor::new(
            blob.media_type.clone(),
            blob.digest,
            blob.size,
        ));
        diff_ids.push(diff_id);
        unpacked.push((blob.digest, chain[li].clone()));
        Ok(())
    };
    while pad > 0 {
        let mut h = History {
            created: Some(created.clone()),
            created_by: Some("(layer without history)".into()),
            ..Default::default()
        };
        push_layer(li, &mut h, &mut layers, &mut diff_ids, &mut unpacked)?;
        history.push(h);
        li += 1;
        pad -= 1;
    }
    for item in &state.history {
        let mut h = History {
            created: Some(item.created.clone().unwrap_or_else(|| created.clone())),
            created_by: Some(item.created_by.clone()),
            comment: item.comment.clone(),
            empty_layer: item.empty_layer,
            ..Default::default()
        };
        if !item.empty_layer {
            push_layer(li, &mut h, &mut layers, &mut diff_ids, &mut unpacked)?;
            li += 1;
        }
        history.push(h);
    }

    for (blob, id) in unpacked {
        if store.meta.unpacked(&blob)?.is_none() {
            staged.unpacked.entry(blob).or_insert(id);
        }
    }

    // 3. Config and manifest.
    let platform = Platform::host();
    let config = ImageConfig {
        created: Some(created),
        author: state.author.clone(),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        config: Some(container_config(state)),
        rootfs: RootFs {
            diff_ids,
            ..Default::default()
        },
        history,
        ..Default::default()
    };
    let config_bytes = canonical_json(&config).map_err(|e| ImageError::Malformed {
        what: "config",
        digest: Digest::of(b""),
        message: e.to_string(),
    })?;
    let config_digest = store.content.write_bytes(&config_bytes)?;
    let manifest = Manifest::new(
        Descriptor::new(media::OCI_CONFIG, config_digest, config_bytes.len() as u64),
        layers,
    );
    let mbytes = canonical_json(&manifest).map_err(|e| ImageError::Malformed {
        what: "manifest",
        digest: config_digest,
        message: e.to_string(),
    })?;
    let mdigest = store.content.write_bytes(&mbytes)?;
    let mut manifest_descriptor =
        Descriptor::new(media::OCI_MANIFEST, mdigest, mbytes.len() as u64);
    manifest_descriptor.platform = Some(platform);
    Ok(Assembled {
        manifest_descriptor,
        manifest,
        config_digest,
        config,
        chain: chain.to_vec(),
        gzip_blocks_reused,
    })
}

fn container_config(s: &ImageState) -> ContainerConfig {
    ContainerConfig {
        user: (!s.user.is_empty()).then(|| s.user.clone()),
        exposed_ports: s
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), Empty {}))
            .collect(),
        env: s.env_strings(),
        entrypoint: s.entrypoint.clone(),
        cmd: s.cmd.clone(),
        volumes: s.volumes.iter().map(|p| (p.clone(), Empty {})).collect(),
        working_dir: (!s.workdir.is_empty()).then(|| s.workdir.clone()),
        labels: s.labels.clone(),
        stop_signal: s.stop_signal.clone(),
        healthcheck: s.healthcheck.clone(),
        on_build: s.onbuild.clone(),
        shell: s.shell.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// The store's gzip blocks, for [`BlobWriter::with_reuse`]: the index says which blob holds a
/// block, the bytes are read from that blob (the writer checks them before use).
struct StoreBlocks {
    index: crate::store::meta::GzipBlocks,
    content: crate::store::content::ContentStore,
}

impl BlockCache for StoreBlocks {
    fn get(&self, key: &crate::oci::compress::BlockKey) -> Option<(Vec<u8>, u32)> {
        use std::os::unix::fs::FileExt;
        let loc = self.index.get(key)?;
        // A block's deflate bytes are never much larger than the block.
        let max = 2 * crate::oci::compress::GZIP_BLOCK_MAX as u64;
        if loc.len > max {
            return None;
        }
        let f = std::fs::File::open(self.content.path(&loc.blob)).ok()?;
        let mut buf = vec![0; usize::try_from(loc.len).ok()?];
        f.read_exact_at(&mut buf, loc.offset).ok()?;
        Some((buf, loc.crc32))
    }
}

/// A layer blob [`write_blob`] wrote.
#[derive(Debug)]
pub(crate) struct WrittenBlob {
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// The blob.
    pub blob: LayerBlob,
    /// The layer has no entries.
    pub empty: bool,
    /// gzip block index entries to record (key → where this blob holds the block).
    pub blocks: Vec<(crate::oci::compress::BlockKey, crate::store::meta::BlockLoc)>,
    /// gzip blocks copied from earlier blobs rather than compressed.
    pub reused: usize,
}

/// Writes one layer directory as a compressed blob.
pub(crate) fn write_blob(
    store: &Store,
    id: &SnapshotId,
    opts: &AssembleOptions,
) -> Result<WrittenBlob, ImageError> {
    let err = |m: String| ImageError::Layer {
        id: id.clone(),
        message: m,
    };
    let dir: PathBuf = store.snapshots.path(id);
    let sink = store.content.writer()?;
    let reuse = BlockReuse {
        cache: std::sync::Arc::new(StoreBlocks {
            index: store.meta.gzip_blocks(),
            content: store.content.clone(),
        }),
        namespace: std::sync::Arc::from(opts.block_namespace.as_bytes()),
    };
    // The store's writer hashes the compressed bytes it stores; the blob writer takes the
    // digest from it rather than hashing them again.
    let mut bw = BlobWriter::into_sink(sink, opts.compression, Some(reuse))
        .map_err(|e| err(e.to_string()))?;
    let entries = write_layer_unhashed(&dir, &mut bw, &LayerOptions { epoch: opts.epoch })
        .map_err(|e| err(e.to_string()))?;
    let (sink, info) = bw.finish_sink().map_err(|e| err(e.to_string()))?;
    // `info.digest` came from this writer's own hasher: comparing the two would check nothing.
    let digest = sink.commit(None)?;
    let blocks = info
        .blocks
        .iter()
        .map(|r: &BlockRef| {
            let loc = crate::store::meta::BlockLoc {
                blob: digest,
                offset: r.offset,
                len: r.len,
                crc32: r.crc32,
            };
            (r.key, loc)
        })
        .collect();
    Ok(WrittenBlob {
        diff_id: info.diff_id,
        blob: LayerBlob {
            media_type: info.media_type.to_owned(),
            digest,
            size: info.size,
            epoch: Some(opts.epoch),
        },
        empty: entries == 0,
        blocks,
        reused: info.reused_blocks,
    })
}

/// Normalises an image name for the local store: `busybox` → `busybox:latest`,
/// `docker.io/library/x:1` → `x:1`.
pub fn normalize_name(name: &str) -> String {
    let n = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("index.docker.io/library/"))
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    let last = n.rsplit('/').next().unwrap_or(n);
    if n.contains('@') || last.contains(':') {
        n.to_owned()
    } else {
        format!("{n}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer directory of `files` files of 5,000 pseudo-random text bytes each.
    #[allow(clippy::unwrap_used)]
    fn layer_of(store: &Store, files: usize, changed: Option<(usize, &[u8])>) -> SnapshotId {
        let pending = store.snapshots.create().unwrap();
        let mut x: u32 = 99;
        for i in 0..files {
            let random: Vec<u8> = (0..5000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    b'a' + (x % 26) as u8
                })
                .collect();
            let data = match changed {
                Some((j, d)) if i == j => d.to_vec(),
                _ => random,
            };
            std::fs::write(pending.dir.join(format!("f{i:04}")), data).unwrap();
        }
        store.snapshots.commit(pending).unwrap()
    }

    fn opts() -> AssembleOptions {
        AssembleOptions {
            epoch: 0,
            compression: Compression::Gzip,
            parallelism: 2,
            block_namespace: "tenant".into(),
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_changed_file_reuses_the_other_blocks_and_gc_forgets_them_with_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = write_blob(&store, &layer_of(&store, 1200, None), &opts()).unwrap();
        assert_eq!(first.reused, 0);
        assert!(first.blocks.len() >= 4, "{} blocks", first.blocks.len());
        let mut staged = StagedRecords::default();
        staged.gzip_blocks.extend(first.blocks.iter().cloned());
        store.meta.commit(&staged).unwrap();

        let changed = layer_of(&store, 1200, Some((600, b"one changed file")));
        let warm = write_blob(&store, &changed, &opts()).unwrap();
        assert!(
            warm.reused + 2 >= warm.blocks.len(),
            "{} of {} blocks reused",
            warm.reused,
            warm.blocks.len()
        );
        // A store that never saw the first layer writes the same bytes.
        let cold_dir = tempfile::tempdir().unwrap();
        let cold_store = Store::open(cold_dir.path()).unwrap();
        let cold_layer = layer_of(&cold_store, 1200, Some((600, b"one changed file")));
        let cold = write_blob(&cold_store, &cold_layer, &opts()).unwrap();
        assert_eq!(cold.reused, 0);
        assert_eq!(warm.blob.digest, cold.blob.digest);
        assert_eq!(warm.diff_id, cold.diff_id);

        // Another namespace (tenant) reuses nothing.
        let other = AssembleOptions {
            block_namespace: "other".into(),
            ..opts()
        };
        let apart = write_blob(&store, &changed, &other).unwrap();
        assert_eq!((apart.reused, apart.blob.digest), (0, cold.blob.digest));

        // GC removes the unreferenced blobs, and the index entries that point into them.
        let index = store.meta.gzip_blocks();
        assert!(index.get(&first.blocks[0].0).is_some());
        crate::gc::prune(&store, true).unwrap();
        assert!(!store.content.contains(&first.blob.digest));
        assert!(index.get(&first.blocks[0].0).is_none());
    }

    #[test]
    fn names_normalise_like_docker() {
        assert_eq!(normalize_name("busybox"), "busybox:latest");
        assert_eq!(normalize_name("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(
            normalize_name("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(normalize_name("a/b:c"), "a/b:c");
    }
}
