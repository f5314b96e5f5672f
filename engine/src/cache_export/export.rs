//! `--cache-to`: assemble the cache (config, manifest, missing layer blobs) in the content
//! store, then copy it out: blobs first, the manifest last.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::remote::Remote;
use super::{
    CACHE_CONFIG_VERSION, CacheConfig, CacheEntry, CacheError, CacheLayer, CacheMode, CacheSpec,
    CacheStats,
};
use crate::graph::{Graph, Op, SourceOp};
use crate::image::AssembleOptions;
use crate::oci::media;
use crate::oci::types::{Descriptor, Manifest, canonical_json};
use crate::ops::Output;
use crate::registry::{Client, RegistryOptions};
use crate::solver::Solved;
use crate::store::{LayerRecord, SnapshotId, StagedRecords, Store};

/// Exports the cache of a solved build to `spec`. `final_chain` is the image's layer chain
/// (for `mode=min`). Layer blobs written for intermediate results are staged as layer
/// records.
#[allow(clippy::too_many_arguments)]
pub fn export(
    store: &Store,
    client: Option<&Arc<Client>>,
    opts: &RegistryOptions,
    spec: &CacheSpec,
    graph: &Graph,
    solved: &Solved,
    final_chain: &[SnapshotId],
    assemble: &AssembleOptions,
    staged: &mut StagedRecords,
) -> Result<CacheStats, CacheError> {
    let remote = Remote::open(spec, client, opts)?;
    let target = remote.target().to_owned();
    let invalid = |message: String| CacheError::Invalid {
        target: target.clone(),
        message,
    };

    // 1. Which records.
    let mut selected: Vec<(String, Vec<SnapshotId>)> = Vec::new();
    let mut vertices: Vec<_> = solved.outputs.iter().collect();
    vertices.sort_by_key(|(i, _)| **i);
    for (i, out) in vertices {
        let Some(v) = graph.get(*i) else { continue };
        if !crate::ops::announces(&v.op) || matches!(v.op, Op::Source(SourceOp::Image { .. })) {
            continue;
        }
        let Output::Layers(chain) = out else { continue };
        let Some(key) = solved.keys.get(i) else {
            continue;
        };
        let in_image = chain.len() <= final_chain.len()
            && final_chain.get(..chain.len()) == Some(chain.as_slice());
        if spec.mode() == CacheMode::Min && !in_image {
            continue;
        }
        selected.push((key.hex(), chain.as_ref().clone()));
    }

    // 2. A blob for every layer they use.
    let mut index: BTreeMap<SnapshotId, usize> = BTreeMap::new();
    let mut layers: Vec<CacheLayer> = Vec::new();
    let mut records = Vec::new();
    let media_type = assemble.compression.media_type();
    for (key, chain) in &selected {
        let mut idx = Vec::with_capacity(chain.len());
        for id in chain {
            if let Some(n) = index.get(id) {
                idx.push(*n);
                continue;
            }
            let rec = match staged.layers.get(id) {
                Some(r) => r.clone(),
                None => store.meta.layer(id)?.unwrap_or_default(),
            };
            let present: Vec<_> = rec
                .blobs
                .iter()
                .filter(|b| store.content.contains(&b.digest))
                .collect();
            let pick = present
                .iter()
                .find(|b| b.media_type == media_type && b.epoch == Some(assemble.epoch))
                .or_else(|| present.first())
                .map(|b| (*b).clone());
            let layer = match pick {
                Some(b) => CacheLayer {
                    blob: Some(Descriptor::new(b.media_type.clone(), b.digest, b.size)),
                    diff_id: rec.diff_id,
                    epoch: b.epoch,
                },
                None if rec.empty => CacheLayer {
                    blob: None,
                    diff_id: rec.diff_id,
                    epoch: None,
                },
                None => {
                    let crate::image::WrittenBlob {
                        diff_id,
                        blob,
                        empty,
                        blocks,
                        ..
                    } = crate::image::write_blob(store, id, assemble)?;
                    staged.gzip_blocks.extend(blocks);
                    let mut rec: LayerRecord = rec.clone();
                    rec.diff_id = Some(diff_id);
                    rec.empty = empty;
                    rec.blobs.push(blob.clone());
                    staged.layers.insert(id.clone(), rec);
                    if empty {
                        CacheLayer {
                            blob: None,
                            diff_id: Some(diff_id),
                            epoch: None,
                        }
                    } else {
                        CacheLayer {
                            blob: Some(Descriptor::new(
                                blob.media_type.clone(),
                                blob.digest,
                                blob.size,
                            )),
                            diff_id: Some(diff_id),
                            epoch: blob.epoch,
                        }
                    }
                }
            };
            let n = layers.len();
            layers.push(layer);
            index.insert(id.clone(), n);
            idx.push(n);
        }
        records.push(CacheEntry {
            key: key.clone(),
            chain: idx,
        });
    }
    let config = CacheConfig {
        version: CACHE_CONFIG_VERSION,
        layers,
        records,
    };
    let cbytes = canonical_json(&config).map_err(|e| invalid(e.to_string()))?;
    let cdesc = Descriptor::of_bytes(media::KILN_CACHE_CONFIG, &cbytes);
    store.content.write_bytes(&cbytes)?;
    let mut blobs: Vec<Descriptor> = Vec::new();
    for l in &config.layers {
        if let Some(b) = &l.blob
            && !blobs.iter().any(|x| x.digest == b.digest)
        {
            blobs.push(b.clone());
        }
    }
    let manifest = Manifest::new(cdesc.clone(), blobs.clone());
    let mbytes = canonical_json(&manifest).map_err(|e| invalid(e.to_string()))?;

    // 3. Emit: blobs, config, manifest.
    let mut stats = CacheStats {
        records: config.records.len(),
        ..Default::default()
    };
    for b in &blobs {
        let n = remote.put_blob(store, b)?;
        if n > 0 {
            stats.blobs += 1;
            stats.bytes += n;
        }
    }
    stats.bytes += remote.put_blob(store, &cdesc)?;
    remote.put_manifest(&mbytes)?;
    stats.bytes += mbytes.len() as u64;
    Ok(stats)
}
