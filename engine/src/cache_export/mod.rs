//! Sharing the build cache: `--cache-to` / `--cache-from`, through a registry or a directory.
//!
//! The format (`docs/cache-format.md`): one OCI image manifest whose config is a
//! [`CacheConfig`] blob ([`media::KILN_CACHE_CONFIG`]) and whose layers are the layer blobs
//! the cached results are made of. In a registry it is pushed under `ref`; in a directory it is
//! an OCI image layout whose `index.json` names it.
//!
//! - [`export`]: after a build, the records of the steps the mode selects (`min`: those whose
//!   result is a prefix of the final image's layers; `max`: every step) and their layers.
//! - [`RemoteCaches`]: before solving, each cache's manifest and config; during the solve, on
//!   a local miss, the one record asked for: its layers fetched, verified by digest (and by
//!   diff id while unpacking), unpacked into layer directories and staged with the record, so
//!   the step is a hit like a local one. A blob or manifest that fails verification is a
//!   warning, and the steps that need it run.

mod export;
mod import;
mod remote;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use export::export;
pub use import::RemoteCaches;

use crate::Digest;
use crate::builder::SpecError;
use crate::oci::media;
use crate::oci::types::Descriptor;

/// Version of the [`CacheConfig`] format.
pub const CACHE_CONFIG_VERSION: u32 = 1;

/// Which results `--cache-to` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Only the steps whose results are layers of the final image (BuildKit's default).
    #[default]
    Min,
    /// Every step of the build, intermediate stages included.
    Max,
}

/// Where a cache goes to or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheSpec {
    /// A registry reference (`type=registry,ref=REG/NAME:TAG`).
    Registry {
        /// The reference.
        reference: String,
        /// Export mode (ignored for import).
        mode: CacheMode,
    },
    /// An OCI layout directory (`type=local,dest=DIR` / `src=DIR`).
    Local {
        /// The directory.
        dir: PathBuf,
        /// Export mode (ignored for import).
        mode: CacheMode,
    },
}

impl CacheSpec {
    /// Parses a `--cache-to` value.
    pub fn parse_to(s: &str) -> Result<Self, SpecError> {
        Self::parse(s, "--cache-to", "dest")
    }

    /// Parses a `--cache-from` value.
    pub fn parse_from(s: &str) -> Result<Self, SpecError> {
        Self::parse(s, "--cache-from", "src")
    }

    fn parse(s: &str, what: &'static str, dir_key: &str) -> Result<Self, SpecError> {
        let err = |reason: String| SpecError {
            what,
            value: s.to_owned(),
            reason,
        };
        let mut kind = None;
        let mut reference = None;
        let mut dir = None;
        let mut mode = CacheMode::Min;
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| err(format!("{part:?} is not key=value")))?;
            match k.trim() {
                "type" => kind = Some(v.trim().to_owned()),
                "ref" => reference = Some(v.trim().to_owned()),
                k if k == dir_key => dir = Some(PathBuf::from(v.trim())),
                "mode" if what == "--cache-to" => {
                    mode = match v.trim() {
                        "min" => CacheMode::Min,
                        "max" => CacheMode::Max,
                        other => return Err(err(format!("mode={other}: expected min or max"))),
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown attribute {other:?} (known: type, ref, {dir_key}{})",
                        if what == "--cache-to" { ", mode" } else { "" }
                    )));
                }
            }
        }
        match kind.as_deref() {
            Some("registry") => {
                let reference = reference
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| err("type=registry needs ref=REGISTRY/NAME:TAG".into()))?;
                crate::registry::Reference::parse(&reference).map_err(|e| err(e.to_string()))?;
                Ok(Self::Registry { reference, mode })
            }
            Some("local") => {
                let dir = dir
                    .filter(|d| !d.as_os_str().is_empty())
                    .ok_or_else(|| err(format!("type=local needs {dir_key}=DIR")))?;
                Ok(Self::Local { dir, mode })
            }
            Some(other) => Err(err(format!(
                "unknown cache type {other:?} (known: registry, local)"
            ))),
            None => Err(err("missing type=".into())),
        }
    }

    /// Export mode.
    pub fn mode(&self) -> CacheMode {
        match self {
            Self::Registry { mode, .. } | Self::Local { mode, .. } => *mode,
        }
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Registry { reference, .. } => reference.clone(),
            Self::Local { dir, .. } => dir.display().to_string(),
        }
    }
}

/// The cache config blob: the layers, and the cache keys whose results are chains of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    /// [`CACHE_CONFIG_VERSION`].
    pub version: u32,
    /// Every layer a record uses.
    pub layers: Vec<CacheLayer>,
    /// Cache key → layer chain.
    pub records: Vec<CacheEntry>,
}

/// One layer of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheLayer {
    /// The compressed layer blob (also listed in the manifest's layers); `None` for a layer
    /// with no entries.
    #[serde(default)]
    pub blob: Option<Descriptor>,
    /// Digest of the uncompressed tar, checked while unpacking.
    #[serde(default)]
    pub diff_id: Option<Digest>,
    /// `SOURCE_DATE_EPOCH` the blob was written with (`None`: a base image's own blob).
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// One cached step result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheEntry {
    /// The step's cache key (64 hex digits).
    pub key: String,
    /// Indexes into [`CacheConfig::layers`], bottom first.
    pub chain: Vec<usize>,
}

/// Errors exporting a cache (importing only warns).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The registry failed.
    #[error("cache {target}: {source}")]
    Registry {
        /// The cache.
        target: String,
        /// The cause.
        source: Box<crate::registry::RegistryError>,
    },
    /// Reading or writing the cache directory failed.
    #[error("cache {target}: {message}")]
    Local {
        /// The cache.
        target: String,
        /// The cause.
        message: String,
    },
    /// The cache is malformed.
    #[error("cache {target}: {message}")]
    Invalid {
        /// The cache.
        target: String,
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Writing a layer blob failed.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}

/// What an import or export moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Records exported or imported.
    pub records: usize,
    /// Layer blobs exported (uploaded or written) or imported (fetched).
    pub blobs: usize,
    /// Bytes moved.
    pub bytes: u64,
}

/// Exports one `--cache-to`, reporting it on `progress`.
#[allow(clippy::too_many_arguments)]
pub fn export_one(
    store: &crate::store::Store,
    client: Option<&std::sync::Arc<crate::registry::Client>>,
    opts: &crate::registry::RegistryOptions,
    spec: &CacheSpec,
    graph: &crate::graph::Graph,
    solved: &crate::solver::Solved,
    final_chain: &[crate::store::SnapshotId],
    assemble: &crate::image::AssembleOptions,
    staged: &mut crate::store::StagedRecords,
    progress: &crate::progress::Progress,
) -> Result<CacheStats, CacheError> {
    let start = std::time::Instant::now();
    let s = export(
        store,
        client,
        opts,
        spec,
        graph,
        solved,
        final_chain,
        assemble,
        staged,
    )?;
    progress.send(crate::progress::Event::Phase {
        name: format!(
            "exporting cache to {} (mode={}): {} records, {} layer blobs, {} bytes sent ({:.1}s)",
            spec.describe(),
            match spec.mode() {
                CacheMode::Min => "min",
                CacheMode::Max => "max",
            },
            s.records,
            s.blobs,
            s.bytes,
            start.elapsed().as_secs_f64()
        ),
    });
    Ok(s)
}

fn is_cache_key(k: &str) -> bool {
    k.len() == 64
        && k.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The media type check of a cache manifest's config.
fn check_config_type(desc: &Descriptor) -> bool {
    desc.media_type == media::KILN_CACHE_CONFIG
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cache_specs_parse_like_buildx() {
        assert_eq!(
            CacheSpec::parse_to("type=registry,ref=127.0.0.1:5000/c:x,mode=max").unwrap(),
            CacheSpec::Registry {
                reference: "127.0.0.1:5000/c:x".into(),
                mode: CacheMode::Max
            }
        );
        assert_eq!(
            CacheSpec::parse_from("type=local,src=/tmp/c").unwrap(),
            CacheSpec::Local {
                dir: "/tmp/c".into(),
                mode: CacheMode::Min
            }
        );
        assert!(CacheSpec::parse_from("type=local,dest=/tmp/c").is_err());
        assert!(CacheSpec::parse_to("type=registry").is_err());
        assert!(CacheSpec::parse_to("type=registry,ref=x:1,mode=all").is_err());
        assert!(CacheSpec::parse_to("type=s3,ref=x").is_err());
    }
}
