//! `--cache-from`: stage the records of a shared cache so the solver hits them.
//!
//! Trust: the cache is untrusted input. The manifest is verified against its digest, the
//! config against the manifest, each layer blob against its descriptor while it streams into
//! the content store, and the uncompressed tar against the recorded diff id while it is
//! unpacked. Anything that fails is reported as a warning and the records that need it are
//! not staged, so those steps run. (Digests prove the bytes are the ones the cache's writer
//! published; they do not make a malicious writer honest: see SECURITY.md.)

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use super::remote::Remote;
use super::{CACHE_CONFIG_VERSION, CacheConfig, CacheError, CacheSpec, CacheStats};
use crate::Digest;
use crate::digest::Hasher;
use crate::oci::import::MAX_JSON_SIZE;
use crate::oci::types::Manifest;
use crate::registry::{Client, RegistryOptions};
use crate::store::{CacheRecord, LayerBlob, LayerRecord, SnapshotId, StagedRecords, Store};

/// Imports `spec` into `staged`. Failures become `warnings`; the build goes on without them.
pub fn import(
    store: &Store,
    client: Option<&Arc<Client>>,
    opts: &RegistryOptions,
    spec: &CacheSpec,
    staged: &mut StagedRecords,
    warnings: &mut Vec<String>,
) -> CacheStats {
    let mut stats = CacheStats::default();
    let target = spec.describe();
    let remote = match Remote::open(spec, client, opts) {
        Ok(r) => r,
        Err(e) => {
            warnings.push(format!("cache import skipped: {e}"));
            return stats;
        }
    };
    let config = match read_config(store, &remote, &mut stats) {
        Ok(c) => c,
        Err(e) => {
            warnings.push(format!(
                "cache import from {target} skipped: {e}; every step will be built"
            ));
            return stats;
        }
    };
    // Records the store already has need nothing.
    let mut wanted = Vec::new();
    for r in &config.records {
        if !super::is_cache_key(&r.key) || r.chain.iter().any(|&i| i >= config.layers.len()) {
            warnings.push(format!(
                "cache {target}: malformed record {:?} ignored",
                r.key
            ));
            continue;
        }
        let local = match staged.cache.get(&r.key).cloned() {
            Some(c) => Some(c),
            None => store.meta.cache(&r.key).ok().flatten(),
        };
        if local.is_some_and(|c| c.layers.iter().all(|id| store.snapshots.path(id).is_dir())) {
            continue;
        }
        wanted.push(r);
    }
    let mut resolved: BTreeMap<usize, Option<SnapshotId>> = BTreeMap::new();
    for r in &wanted {
        for &i in &r.chain {
            if resolved.contains_key(&i) {
                continue;
            }
            let got = match layer(store, &remote, &config, i, staged, &mut stats) {
                Ok(id) => Some(id),
                Err(e) => {
                    warnings.push(format!(
                        "cache {target}: {e}; the steps that need this layer will be rebuilt"
                    ));
                    None
                }
            };
            resolved.insert(i, got);
        }
        let chain: Option<Vec<SnapshotId>> = r
            .chain
            .iter()
            .map(|i| resolved.get(i).cloned().flatten())
            .collect();
        if let Some(layers) = chain {
            staged.cache.insert(r.key.clone(), CacheRecord { layers });
            stats.records += 1;
        }
    }
    stats
}

fn read_config(
    store: &Store,
    remote: &Remote,
    stats: &mut CacheStats,
) -> Result<CacheConfig, CacheError> {
    let invalid = |message: String| CacheError::Invalid {
        target: remote.target().to_owned(),
        message,
    };
    let mbytes = remote.get_manifest()?;
    stats.bytes += mbytes.len() as u64;
    let m = Manifest::from_slice(&mbytes).map_err(|e| invalid(format!("manifest: {e}")))?;
    if !super::check_config_type(&m.config) {
        return Err(invalid(format!(
            "not a kiln cache (config media type {:?})",
            m.config.media_type
        )));
    }
    if m.config.size > MAX_JSON_SIZE {
        return Err(invalid("cache config too large".into()));
    }
    stats.bytes += remote.get_blob(store, &m.config)?;
    let cbytes = store.content.read_blob(&m.config.digest)?;
    let config: CacheConfig =
        serde_json::from_slice(&cbytes).map_err(|e| invalid(format!("cache config: {e}")))?;
    if config.version != CACHE_CONFIG_VERSION {
        return Err(invalid(format!(
            "cache config version {} (kiln reads {CACHE_CONFIG_VERSION})",
            config.version
        )));
    }
    Ok(config)
}

/// One layer: reused if a local directory was unpacked from the same blob, else fetched,
/// verified and unpacked; staged with its records.
fn layer(
    store: &Store,
    remote: &Remote,
    config: &CacheConfig,
    i: usize,
    staged: &mut StagedRecords,
    stats: &mut CacheStats,
) -> Result<SnapshotId, CacheError> {
    let target = remote.target().to_owned();
    let l = config.layers.get(i).ok_or_else(|| CacheError::Invalid {
        target: target.clone(),
        message: format!("no layer {i}"),
    })?;
    let Some(blob) = &l.blob else {
        let pending = store.snapshots.create()?;
        let id = store.snapshots.commit(pending)?;
        staged.layers.insert(
            id.clone(),
            LayerRecord {
                diff_id: l.diff_id,
                empty: true,
                blobs: Vec::new(),
            },
        );
        return Ok(id);
    };
    let known = match staged.unpacked.get(&blob.digest).cloned() {
        Some(id) => Some(id),
        None => store.meta.unpacked(&blob.digest)?,
    };
    if let Some(id) = known
        && store.snapshots.path(&id).is_dir()
    {
        return Ok(id);
    }
    let n = remote.get_blob(store, blob)?;
    if n > 0 {
        stats.blobs += 1;
        stats.bytes += n;
    }
    let unpack_err = |message: String| CacheError::Invalid {
        target: target.clone(),
        message: format!("layer {}: {message}", blob.digest),
    };
    let pending = store.snapshots.create()?;
    let file = store.content.open_blob(&blob.digest)?;
    let reader = crate::oci::compress::decompress(std::io::BufReader::new(file))
        .map_err(|e| unpack_err(e.to_string()))?;
    let mut hashing = HashingReader {
        inner: reader,
        hasher: Hasher::new(),
    };
    crate::oci::apply::apply_layer(
        &mut hashing,
        &pending.dir,
        crate::oci::apply::ApplyMode::Overlay,
    )
    .map_err(|e| unpack_err(e.to_string()))?;
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| unpack_err(e.to_string()))?;
    let diff_id: Digest = hashing.hasher.finish();
    if let Some(want) = l.diff_id
        && want != diff_id
    {
        return Err(unpack_err(format!(
            "uncompressed content failed verification: diff id {diff_id}, the cache says {want}"
        )));
    }
    let empty = std::fs::read_dir(&pending.dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    let id = store.snapshots.commit(pending)?;
    staged.unpacked.insert(blob.digest, id.clone());
    staged.layers.insert(
        id.clone(),
        LayerRecord {
            diff_id: Some(diff_id),
            empty,
            blobs: vec![LayerBlob {
                media_type: blob.media_type.clone(),
                digest: blob.digest,
                size: blob.size,
                epoch: l.epoch,
            }],
        },
    );
    Ok(id)
}

struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}
