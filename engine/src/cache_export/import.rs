//! `--cache-from`: remote caches the solver consults on a local miss.
//!
//! Before solving, each cache's manifest and config are fetched and verified (cheap: the
//! config lists keys and layer descriptors). During the solve, a step whose key the local store
//! does not have is looked up in them ([`RemoteCaches::lookup`]): only then are the layers of
//! that one record fetched, verified, unpacked and staged, so a build whose early steps changed
//! downloads nothing for the later ones.
//!
//! Trust: the cache is untrusted input. The manifest is verified against its digest, the
//! config against the manifest, each layer blob against its descriptor while it streams into
//! the content store, and the uncompressed tar against the recorded diff id while it is
//! unpacked. Anything that fails is a warning and the lookup misses, so the step runs. (Digests
//! prove the bytes are the ones the cache's writer published; they do not make a malicious
//! writer honest: see SECURITY.md.)

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use super::remote::Remote;
use super::{CACHE_CONFIG_VERSION, CacheConfig, CacheError, CacheSpec, CacheStats};
use crate::Digest;
use crate::digest::Hasher;
use crate::oci::import::MAX_JSON_SIZE;
use crate::oci::types::Manifest;
use crate::progress::{Event, Progress};
use crate::registry::{Client, RegistryOptions};
use crate::store::{CacheRecord, LayerBlob, LayerRecord, SnapshotId, StagedRecords, Store};

/// One opened cache.
struct Source {
    remote: Remote,
    config: CacheConfig,
    /// Cache key (hex) → index into `config.records`.
    records: HashMap<String, usize>,
}

#[derive(Default)]
struct State {
    /// (source, layer) → its layer directory, or `None` when it failed.
    resolved: HashMap<(usize, usize), Option<SnapshotId>>,
    /// Per source.
    stats: Vec<CacheStats>,
    warnings: Vec<String>,
}

/// The `--cache-from` caches of one build.
pub struct RemoteCaches {
    sources: Vec<Source>,
    progress: Progress,
    state: Mutex<State>,
}

impl std::fmt::Debug for RemoteCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCaches")
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl RemoteCaches {
    /// Opens every spec: fetches and verifies its manifest and config. A cache that can not be
    /// read is a warning (on `progress`, and from [`RemoteCaches::finish`]).
    pub fn open(
        store: &Store,
        client: Option<&Arc<Client>>,
        opts: &RegistryOptions,
        specs: &[CacheSpec],
        progress: Progress,
    ) -> Self {
        let mut state = State::default();
        let mut sources = Vec::new();
        for spec in specs {
            let mut stats = CacheStats::default();
            let opened = Remote::open(spec, client, opts)
                .and_then(|remote| Ok((read_config(store, &remote, &mut stats)?, remote)));
            match opened {
                Ok((config, remote)) => {
                    let mut records = HashMap::new();
                    for (n, r) in config.records.iter().enumerate() {
                        if !super::is_cache_key(&r.key)
                            || r.chain.iter().any(|&i| i >= config.layers.len())
                        {
                            state.warnings.push(format!(
                                "cache {}: malformed record {:?} ignored",
                                spec.describe(),
                                r.key
                            ));
                            continue;
                        }
                        records.entry(r.key.clone()).or_insert(n);
                    }
                    sources.push(Source {
                        remote,
                        config,
                        records,
                    });
                    state.stats.push(stats);
                }
                Err(e) => state.warnings.push(format!(
                    "cache import from {} skipped: {e}; its steps will be built",
                    spec.describe()
                )),
            }
        }
        for w in &state.warnings {
            progress.send(Event::Phase {
                name: format!("WARNING: {w}"),
            });
        }
        Self {
            sources,
            progress,
            state: Mutex::new(state),
        }
    }

    /// The layer chain a remote cache holds for `key` (hex), its layers unpacked and staged
    /// (with the record) in `staged`; `None` when no cache has it or it failed verification.
    pub fn lookup(
        &self,
        store: &Store,
        key: &str,
        staged: &Mutex<StagedRecords>,
    ) -> Option<Vec<SnapshotId>> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (s, src) in self.sources.iter().enumerate() {
            let Some(&n) = src.records.get(key) else {
                continue;
            };
            let Some(rec) = src.config.records.get(n) else {
                continue;
            };
            let mut chain = Vec::with_capacity(rec.chain.len());
            for &i in &rec.chain {
                let got = match state.resolved.get(&(s, i)) {
                    Some(r) => r.clone(),
                    None => {
                        let mut stats = state.stats.get(s).cloned().unwrap_or_default();
                        let r = layer(store, &src.remote, &src.config, i, staged, &mut stats);
                        if let Some(slot) = state.stats.get_mut(s) {
                            *slot = stats;
                        }
                        let r = match r {
                            Ok(id) => Some(id),
                            Err(e) => {
                                let w = format!(
                                    "cache {}: {e}; the steps that need this layer will be rebuilt",
                                    src.remote.target()
                                );
                                self.progress.send(Event::Phase {
                                    name: format!("WARNING: {w}"),
                                });
                                state.warnings.push(w);
                                None
                            }
                        };
                        state.resolved.insert((s, i), r.clone());
                        r
                    }
                };
                match got {
                    Some(id) => chain.push(id),
                    None => break,
                }
            }
            if chain.len() == rec.chain.len() {
                let mut st = staged
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                st.cache.insert(
                    key.to_owned(),
                    CacheRecord {
                        layers: chain.clone(),
                        last_used: crate::store::meta::unix_now(),
                        tenant: String::new(),
                    },
                );
                if let Some(x) = state.stats.get_mut(s) {
                    x.records += 1;
                }
                return Some(chain);
            }
        }
        None
    }

    /// Reports what each cache gave (on `progress`) and returns the warnings.
    pub fn finish(&self) -> Vec<String> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (src, s) in self.sources.iter().zip(&state.stats) {
            self.progress.send(Event::Phase {
                name: format!(
                    "importing cache from {}: {} records, {} layer blobs, {} bytes fetched",
                    src.remote.target(),
                    s.records,
                    s.blobs,
                    s.bytes
                ),
            });
        }
        state.warnings.clone()
    }
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
/// verified and unpacked; its records are staged in `staged`.
fn layer(
    store: &Store,
    remote: &Remote,
    config: &CacheConfig,
    i: usize,
    staged: &Mutex<StagedRecords>,
    stats: &mut CacheStats,
) -> Result<SnapshotId, CacheError> {
    let lock = || {
        staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let target = remote.target().to_owned();
    let l = config.layers.get(i).ok_or_else(|| CacheError::Invalid {
        target: target.clone(),
        message: format!("no layer {i}"),
    })?;
    let Some(blob) = &l.blob else {
        let pending = store.snapshots.create()?;
        let id = store.snapshots.commit(pending)?;
        lock().layers.insert(
            id.clone(),
            LayerRecord {
                diff_id: l.diff_id,
                empty: true,
                blobs: Vec::new(),
            },
        );
        return Ok(id);
    };
    let known = match lock().unpacked.get(&blob.digest).cloned() {
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
    let mut st = lock();
    st.unpacked.insert(blob.digest, id.clone());
    st.layers.insert(
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
