//! Importing images from an OCI image layout (directory or tar) and from `docker save` archives.
//!
//! Blobs go to the caller through an `ingest` callback so the content store stays decoupled.
//! The callback receives the blob's descriptor and a reader that verifies digest and size as it
//! is read: on a mismatch its final read returns an error instead of end-of-file, so a store
//! that commits only after reading to end-of-file without error can never commit bad bytes.
//! After the callback returns `Ok`, the importer checks the reader was read to its verified
//! end, and fails with [`ImportError::NotConsumed`] otherwise. Blobs are ingested layers first,
//! then config, then manifest, so a record never points at a blob not yet stored.
//! Small JSON documents are capped at [`MAX_JSON_SIZE`] bytes.

use std::error::Error as StdError;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::blob::{BlobError, VerifiedReader};
use super::compress;
use super::media;
use super::types::{
    Descriptor, ImageConfig, Index, Manifest, Platform, TypesError, canonical_json,
};
use crate::digest::{Digest, Hasher};

mod layout;
use layout::Layout;

/// Largest manifest, index, config or `manifest.json` accepted.
pub const MAX_JSON_SIZE: u64 = 16 << 20;

/// What an ingest callback may fail with (the store's own error, boxed).
pub type IngestError = Box<dyn StdError + Send + Sync>;

/// The callback that stores one blob. Read `blob` to end-of-file and commit only if that
/// succeeded; the descriptor carries the expected digest, size and media type.
pub type Ingest<'a> =
    dyn FnMut(&Descriptor, &mut dyn Read) -> std::result::Result<(), IngestError> + 'a;

/// Errors importing an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The input could not be opened or read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file the format requires is missing.
    #[error("{path} not found in {input}")]
    Missing {
        /// The file inside the layout or archive.
        path: String,
        /// The input.
        input: PathBuf,
    },
    /// The input is not in the expected format.
    #[error("{input} is not a valid image layout or archive: {reason}")]
    Format {
        /// The input.
        input: PathBuf,
        /// Why.
        reason: String,
    },
    /// A blob failed verification.
    #[error("blob {path} failed verification")]
    Blob {
        /// The file inside the layout or archive.
        path: String,
        /// The mismatch.
        source: BlobError,
    },
    /// A JSON document is malformed.
    #[error(transparent)]
    Json(#[from] TypesError),
    /// The selected digest is not in the layout.
    #[error("manifest {digest} not found in the layout's index")]
    NotFound {
        /// The digest asked for.
        digest: Digest,
    },
    /// No manifest for the wanted platform.
    #[error("no manifest for {os}/{architecture}")]
    NoPlatform {
        /// The OS wanted.
        os: String,
        /// The architecture wanted.
        architecture: String,
    },
    /// The config lists a different number of diff ids than the manifest has layers.
    #[error("config lists {diff_ids} diff_ids but the manifest has {layers} layers")]
    LayerCount {
        /// Diff ids in the config.
        diff_ids: usize,
        /// Layers in the manifest.
        layers: usize,
    },
    /// A layer of a docker archive does not decompress to its config diff id.
    #[error("layer {path} has diff id {actual}, config says {expected}")]
    DiffId {
        /// The layer file.
        path: String,
        /// The config's diff id.
        expected: Digest,
        /// What the layer hashes to.
        actual: Digest,
    },
    /// A layer has a media type kiln does not import.
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    MediaType {
        /// The layer.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// The ingest callback failed.
    #[error("storing blob {digest} failed")]
    Ingest {
        /// The blob.
        digest: Digest,
        /// The store's error.
        source: IngestError,
    },
    /// The ingest callback returned `Ok` without reading the blob to its verified end.
    #[error("ingest of {digest} returned before reading the blob to the end")]
    NotConsumed {
        /// The blob.
        digest: Digest,
    },
}

pub(crate) type Result<T> = std::result::Result<T, ImportError>;

/// An imported image; every blob it names has been ingested and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// The manifest.
    pub manifest: Manifest,
    /// Digest of the manifest bytes.
    pub manifest_digest: Digest,
    /// The image config.
    pub config: ImageConfig,
    /// Digest of the config bytes.
    pub config_digest: Digest,
    /// Layer descriptors, base first (as in the manifest).
    pub layers: Vec<Descriptor>,
}

/// Imports from an OCI image layout: a directory, or a tar of one (`oci-archive`).
///
/// `selector` picks a manifest (or index) by digest; without it the layout's only manifest is
/// taken, or the first for `linux/amd64`, descending into an index.
pub fn import_oci_layout(
    path: &Path,
    selector: Option<&Digest>,
    ingest: &mut Ingest<'_>,
) -> Result<ImportedImage> {
    let layout = Layout::load(path)?;
    import_from_layout(&layout, selector, ingest)
}

/// Imports a `docker save` archive (legacy `manifest.json` + `<id>/layer.tar`, or the OCI
/// layout newer docker writes inside it, which is preferred when present).
pub fn import_docker_archive(path: &Path, ingest: &mut Ingest<'_>) -> Result<ImportedImage> {
    let layout = Layout::load(path)?;
    if layout.size(media::INDEX_FILE).is_some() && layout.size(media::OCI_LAYOUT_FILE).is_some() {
        return import_from_layout(&layout, None, ingest);
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        layers: Vec<String>,
    }
    let bytes = layout.read_small(media::DOCKER_MANIFEST_FILE)?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&bytes).map_err(|source| TypesError::Parse {
            what: "docker manifest.json",
            source,
        })?;
    let [entry] = <[Entry; 1]>::try_from(entries).map_err(|e| {
        layout.format(format!(
            "manifest.json lists {} images; kiln imports exactly one",
            e.len()
        ))
    })?;
    let config_bytes = layout.read_small(&entry.config)?;
    let config_digest = Digest::of(&config_bytes);
    if let Some(named) = digest_in_name(&entry.config)
        && named != config_digest
    {
        return Err(ImportError::Blob {
            path: entry.config.clone(),
            source: BlobError::Digest {
                expected: named,
                actual: config_digest,
            },
        });
    }
    let config = ImageConfig::from_slice(&config_bytes)?;
    check_count(&config, entry.layers.len())?;
    let mut layers = Vec::new();
    for (path, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
        let size = layout.size(path).ok_or_else(|| layout.missing(path))?;
        // Pre-pass: the blob digest, and the diff id of its decompressed content.
        let mut blob_hash = Hasher::new();
        let mut prefix = [0u8; 4];
        let mut diff = Hasher::new();
        {
            let tee = Tee {
                inner: layout.open(path)?,
                hasher: &mut blob_hash,
            };
            let mut plain = compress::decompress(tee).map_err(|e| layout.read_err(e))?;
            io::copy(&mut plain, &mut diff).map_err(|e| layout.read_err(e))?;
        }
        layout
            .open(path)?
            .read(&mut prefix)
            .map_err(|e| layout.read_err(e))?;
        let digest = blob_hash.finish();
        let actual = diff.finish();
        if actual != *diff_id {
            return Err(ImportError::DiffId {
                path: path.clone(),
                expected: *diff_id,
                actual,
            });
        }
        if let Some(named) = digest_in_name(path)
            && named != digest
        {
            return Err(ImportError::Blob {
                path: path.clone(),
                source: BlobError::Digest {
                    expected: named,
                    actual: digest,
                },
            });
        }
        let media_type = compress::detect(&prefix).media_type();
        let d = Descriptor::new(media_type, digest, size);
        ingest_one(&d, path, layout.open(path)?, ingest)?;
        layers.push(d);
    }
    let config_descriptor =
        Descriptor::new(media::OCI_CONFIG, config_digest, config_bytes.len() as u64);
    ingest_one(&config_descriptor, &entry.config, &config_bytes[..], ingest)?;
    let manifest = Manifest::new(config_descriptor, layers.clone());
    let manifest_bytes = canonical_json(&manifest)?;
    let manifest_descriptor = Descriptor::of_bytes(media::OCI_MANIFEST, &manifest_bytes);
    ingest_one(
        &manifest_descriptor,
        "manifest",
        &manifest_bytes[..],
        ingest,
    )?;
    Ok(ImportedImage {
        manifest,
        manifest_digest: manifest_descriptor.digest,
        config,
        config_digest,
        layers,
    })
}

fn import_from_layout(
    layout: &Layout,
    selector: Option<&Digest>,
    ingest: &mut Ingest<'_>,
) -> Result<ImportedImage> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct OciLayout {
        image_layout_version: String,
    }
    let l: OciLayout = serde_json::from_slice(&layout.read_small(media::OCI_LAYOUT_FILE)?)
        .map_err(|source| TypesError::Parse {
            what: "oci-layout",
            source,
        })?;
    if l.image_layout_version != media::IMAGE_LAYOUT_VERSION {
        return Err(layout.format(format!(
            "unsupported imageLayoutVersion {:?}",
            l.image_layout_version
        )));
    }
    let index = Index::from_slice(&layout.read_small(media::INDEX_FILE)?)?;
    let chosen = select(layout, &index, selector, 0)?;
    let manifest_bytes = layout.read_blob_small(&chosen)?;
    let manifest = Manifest::from_slice(&manifest_bytes)?;
    let config_bytes = layout.read_blob_small(&manifest.config)?;
    let config = ImageConfig::from_slice(&config_bytes)?;
    check_count(&config, manifest.layers.len())?;
    for d in &manifest.layers {
        match d.media_type.as_str() {
            media::OCI_LAYER_TAR
            | media::OCI_LAYER_TAR_GZIP
            | media::OCI_LAYER_TAR_ZSTD
            | media::DOCKER_LAYER_TAR
            | media::DOCKER_LAYER_TAR_GZIP => {}
            other => {
                return Err(ImportError::MediaType {
                    digest: d.digest,
                    media_type: other.to_owned(),
                });
            }
        }
        let path = blob_path(&d.digest);
        ingest_one(d, &path, layout.open(&path)?, ingest)?;
    }
    ingest_one(&manifest.config, "config", &config_bytes[..], ingest)?;
    ingest_one(&chosen, "manifest", &manifest_bytes[..], ingest)?;
    Ok(ImportedImage {
        manifest_digest: chosen.digest,
        config_digest: manifest.config.digest,
        layers: manifest.layers.clone(),
        manifest,
        config,
    })
}

/// Picks the manifest descriptor: by digest, the only one, or the host platform's.
fn select(
    layout: &Layout,
    index: &Index,
    selector: Option<&Digest>,
    depth: u8,
) -> Result<Descriptor> {
    if depth > 2 {
        return Err(layout.format("indexes nested too deeply".into()));
    }
    let host = Platform::host();
    let is_index = |d: &Descriptor| {
        d.media_type == media::OCI_INDEX || d.media_type == media::DOCKER_MANIFEST_LIST
    };
    let descend = |d: &Descriptor, sel: Option<&Digest>| -> Result<Descriptor> {
        let child = Index::from_slice(&layout.read_blob_small(d)?)?;
        select(layout, &child, sel, depth + 1)
    };
    if let Some(want) = selector {
        if let Some(d) = index.manifests.iter().find(|d| d.digest == *want) {
            return if is_index(d) {
                descend(d, None)
            } else {
                Ok(d.clone())
            };
        }
        for d in index.manifests.iter().filter(|d| is_index(d)) {
            if let Ok(found) = descend(d, Some(want)) {
                return Ok(found);
            }
        }
        return Err(ImportError::NotFound { digest: *want });
    }
    if let [only] = index.manifests.as_slice() {
        return if is_index(only) {
            descend(only, None)
        } else {
            Ok(only.clone())
        };
    }
    let matches = |d: &Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == host.os && p.architecture == host.architecture)
    };
    if let Some(d) = index.manifests.iter().find(|d| !is_index(d) && matches(d)) {
        return Ok(d.clone());
    }
    if let Some(d) = index.manifests.iter().find(|d| is_index(d)) {
        return descend(d, None);
    }
    Err(ImportError::NoPlatform {
        os: host.os,
        architecture: host.architecture,
    })
}

fn check_count(config: &ImageConfig, layers: usize) -> Result<()> {
    if config.rootfs.diff_ids.len() == layers {
        Ok(())
    } else {
        Err(ImportError::LayerCount {
            diff_ids: config.rootfs.diff_ids.len(),
            layers,
        })
    }
}

fn ingest_one(
    d: &Descriptor,
    path: &str,
    reader: impl Read,
    ingest: &mut Ingest<'_>,
) -> Result<()> {
    let mut r = VerifiedReader::new(reader, d.digest, Some(d.size));
    if let Err(source) = ingest(d, &mut r) {
        if let Some(b) = source
            .downcast_ref::<io::Error>()
            .and_then(BlobError::from_io)
        {
            return Err(ImportError::Blob {
                path: path.to_owned(),
                source: b,
            });
        }
        return Err(ImportError::Ingest {
            digest: d.digest,
            source,
        });
    }
    if r.is_verified() {
        Ok(())
    } else {
        Err(ImportError::NotConsumed { digest: d.digest })
    }
}

pub(crate) fn blob_path(d: &Digest) -> String {
    format!("{}/{}", media::BLOBS_SHA256_DIR, d.hex())
}

/// The digest a docker-archive file name encodes (`<hex>.json`, `blobs/sha256/<hex>`).
fn digest_in_name(path: &str) -> Option<Digest> {
    let base = path.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    format!("sha256:{hex}").parse().ok()
}

struct Tee<'h, R> {
    inner: R,
    hasher: &'h mut Hasher,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_read_from_docker_archive_names() {
        let d = Digest::of(b"x");
        assert_eq!(digest_in_name(&format!("{}.json", d.hex())), Some(d));
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{}", d.hex())),
            Some(d)
        );
        assert_eq!(digest_in_name("abc/layer.tar"), None);
    }
}
