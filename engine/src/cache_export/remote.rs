//! Where a cache lives: a registry repository or an OCI layout directory. Both move blobs
//! between it and the content store, verified by digest on the way in.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{CacheError, CacheSpec};
use crate::Digest;
use crate::oci::import::MAX_JSON_SIZE;
use crate::oci::media;
use crate::oci::types::{Descriptor, Index, canonical_json};
use crate::registry::{Client, Reference, RegistryError, RegistryOptions, pull, push};
use crate::store::Store;

/// An opened cache location.
pub(super) enum Remote {
    Registry {
        client: Arc<Client>,
        reference: Reference,
        target: String,
    },
    Local {
        dir: PathBuf,
        target: String,
    },
}

impl Remote {
    pub(super) fn open(
        spec: &CacheSpec,
        client: Option<&Arc<Client>>,
        opts: &RegistryOptions,
    ) -> Result<Self, CacheError> {
        let target = spec.describe();
        match spec {
            CacheSpec::Registry { reference, .. } => {
                let reg = |source| CacheError::Registry {
                    target: target.clone(),
                    source: Box::new(source),
                };
                let reference = Reference::parse(reference).map_err(reg)?;
                let client = match client {
                    Some(c) => c.clone(),
                    None => Client::new(opts.clone()).map_err(reg)?,
                };
                Ok(Self::Registry {
                    client,
                    reference,
                    target,
                })
            }
            CacheSpec::Local { dir, .. } => Ok(Self::Local {
                dir: dir.clone(),
                target,
            }),
        }
    }

    pub(super) fn target(&self) -> &str {
        match self {
            Self::Registry { target, .. } | Self::Local { target, .. } => target,
        }
    }

    fn reg_err(&self, source: RegistryError) -> CacheError {
        CacheError::Registry {
            target: self.target().to_owned(),
            source: Box::new(source),
        }
    }

    fn local_err(&self, what: &str, path: &Path, e: impl std::fmt::Display) -> CacheError {
        CacheError::Local {
            target: self.target().to_owned(),
            message: format!("{what} {}: {e}", path.display()),
        }
    }

    fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
        dir.join(media::BLOBS_SHA256_DIR).join(d.hex())
    }

    /// Copies `desc` from the content store to the cache unless it is there. Returns the
    /// bytes sent.
    pub(super) fn put_blob(&self, store: &Store, desc: &Descriptor) -> Result<u64, CacheError> {
        match self {
            Self::Registry {
                client, reference, ..
            } => {
                let mut stats = push::PushStats::default();
                push::push_blob(client, store, reference, desc, &[], &mut stats)
                    .map_err(|e| self.reg_err(e))?;
                Ok(stats.bytes)
            }
            Self::Local { dir, .. } => {
                let dest = Self::blob_path(dir, &desc.digest);
                if dest.is_file() {
                    return Ok(0);
                }
                let parent = dir.join(media::BLOBS_SHA256_DIR);
                std::fs::create_dir_all(&parent)
                    .map_err(|e| self.local_err("create", &parent, e))?;
                let tmp = parent.join(format!(".tmp-{}", crate::store::content::random_hex()));
                let mut src = store.content.open_blob(&desc.digest)?;
                let r = (|| -> std::io::Result<()> {
                    let mut f = std::fs::File::options()
                        .write(true)
                        .create_new(true)
                        .open(&tmp)?;
                    std::io::copy(&mut src, &mut f)?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &dest)
                })();
                if let Err(e) = r {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(self.local_err("write", &dest, e));
                }
                Ok(desc.size)
            }
        }
    }

    /// Publishes the cache manifest (its blobs are already there).
    pub(super) fn put_manifest(&self, bytes: &[u8]) -> Result<(), CacheError> {
        match self {
            Self::Registry {
                client, reference, ..
            } => {
                push::put_manifest(client, reference, media::OCI_MANIFEST, bytes)
                    .map_err(|e| self.reg_err(e))?;
                Ok(())
            }
            Self::Local { dir, .. } => {
                let desc = Descriptor::of_bytes(media::OCI_MANIFEST, bytes);
                let parent = dir.join(media::BLOBS_SHA256_DIR);
                std::fs::create_dir_all(&parent)
                    .map_err(|e| self.local_err("create", &parent, e))?;
                let write = |name: &Path, data: &[u8]| -> Result<(), CacheError> {
                    let tmp =
                        name.with_extension(format!("tmp-{}", crate::store::content::random_hex()));
                    std::fs::write(&tmp, data)
                        .and_then(|()| std::fs::rename(&tmp, name))
                        .map_err(|e| self.local_err("write", name, e))
                };
                write(&Self::blob_path(dir, &desc.digest), bytes)?;
                let layout =
                    serde_json::json!({ "imageLayoutVersion": media::IMAGE_LAYOUT_VERSION });
                write(
                    &dir.join(media::OCI_LAYOUT_FILE),
                    layout.to_string().as_bytes(),
                )?;
                let mut d = desc;
                d.annotations.insert(
                    media::ANNOTATION_REF_NAME.to_owned(),
                    "kiln-cache".to_owned(),
                );
                let index =
                    canonical_json(&Index::new(vec![d])).map_err(|e| CacheError::Invalid {
                        target: self.target().to_owned(),
                        message: e.to_string(),
                    })?;
                write(&dir.join(media::INDEX_FILE), &index)
            }
        }
    }

    /// The cache manifest's bytes, verified (registry: against `Docker-Content-Digest`;
    /// directory: against `index.json`'s descriptor).
    pub(super) fn get_manifest(&self) -> Result<Vec<u8>, CacheError> {
        match self {
            Self::Registry {
                client, reference, ..
            } => Ok(pull::fetch_manifest(client, reference)
                .map_err(|e| self.reg_err(e))?
                .bytes),
            Self::Local { dir, .. } => {
                let p = dir.join(media::INDEX_FILE);
                let bytes =
                    read_limited(&p, MAX_JSON_SIZE).map_err(|e| self.local_err("read", &p, e))?;
                let index = Index::from_slice(&bytes).map_err(|e| CacheError::Invalid {
                    target: self.target().to_owned(),
                    message: format!("index.json: {e}"),
                })?;
                let desc = index
                    .manifests
                    .iter()
                    .find(|d| d.media_type == media::OCI_MANIFEST)
                    .ok_or_else(|| CacheError::Invalid {
                        target: self.target().to_owned(),
                        message: "index.json names no manifest".into(),
                    })?;
                let mp = Self::blob_path(dir, &desc.digest);
                let m = read_limited(&mp, crate::registry::MAX_MANIFEST_SIZE)
                    .map_err(|e| self.local_err("read", &mp, e))?;
                let actual = Digest::of(&m);
                if actual != desc.digest {
                    return Err(CacheError::Invalid {
                        target: self.target().to_owned(),
                        message: format!(
                            "manifest failed verification: expected {}, got {actual}",
                            desc.digest
                        ),
                    });
                }
                Ok(m)
            }
        }
    }

    /// Fetches `desc` into the content store (verified; nothing stored on a mismatch).
    /// Returns the bytes read.
    pub(super) fn get_blob(&self, store: &Store, desc: &Descriptor) -> Result<u64, CacheError> {
        match self {
            Self::Registry {
                client, reference, ..
            } => pull::fetch_blob(client, store, reference, desc).map_err(|e| self.reg_err(e)),
            Self::Local { dir, .. } => {
                if store.content.contains(&desc.digest) {
                    return Ok(0);
                }
                let p = Self::blob_path(dir, &desc.digest);
                let f = std::fs::File::open(&p).map_err(|e| self.local_err("open", &p, e))?;
                let mut limited = f.take(desc.size.saturating_add(1));
                match store.content.ingest(&mut limited, Some(desc.digest)) {
                    Ok(_) => Ok(desc.size),
                    Err(crate::store::StoreError::DigestMismatch {
                        expected, actual, ..
                    }) => Err(CacheError::Invalid {
                        target: self.target().to_owned(),
                        message: format!(
                            "blob {expected} failed verification: its content hashes to {actual}"
                        ),
                    }),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

fn read_limited(p: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(p)?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than the {limit}-byte limit"
        )));
    }
    Ok(buf)
}
