//! `FROM` resolution against the local image store and registries.
//!
//! 1. The local image store: a tag kiln has (built with `-t`, or pulled before), or a digest
//!    whose manifest and layers the content store holds (skipped for tags with `--pull`).
//! 2. Otherwise, when the reference names its registry (`HOST[:PORT]/NAME…`, `localhost/…`,
//!    `docker.io/…`), a pull. A short name (`busybox`) never goes to the network: builds stay
//!    hermetic unless the Dockerfile says where an image comes from.
//!
//! Pulled tags are recorded in the local image store (after their blobs are durable), so the
//! next build uses them without a network round trip until `--pull`. Every resolved image is
//! remembered as (reference, manifest digest) for provenance.

use std::sync::{Arc, Mutex, OnceLock};

use super::{Client, Reference, RegistryOptions, pull};
use crate::Digest;
use crate::frontend::convert::ResolvedImage;
use crate::store::{ImageRecord, StagedRecords, Store};

/// Resolves image references for one plan.
#[derive(Debug)]
pub struct ImageResolver<'a> {
    store: &'a Store,
    opts: RegistryOptions,
    pull: bool,
    platform: String,
    client: OnceLock<Arc<Client>>,
    seen: Mutex<Vec<(String, Digest)>>,
}

impl<'a> ImageResolver<'a> {
    /// A resolver; `pull` refreshes tags from their registry.
    pub fn new(store: &'a Store, opts: RegistryOptions, pull: bool, platform: String) -> Self {
        Self {
            store,
            opts,
            pull,
            platform,
            client: OnceLock::new(),
            seen: Mutex::default(),
        }
    }

    /// Every image resolved so far: (reference as written, manifest digest).
    pub fn seen(&self) -> Vec<(String, Digest)> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The client, once one was needed.
    pub fn client(&self) -> Option<Arc<Client>> {
        self.client.get().cloned()
    }

    fn remember(&self, reference: &str, img: &ResolvedImage) {
        let mut s = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = (reference.to_owned(), img.manifest);
        if !s.contains(&entry) {
            s.push(entry);
        }
    }

    /// Finds `reference` locally or in its registry; `Ok(None)`: unknown locally and not a
    /// registry reference.
    pub fn resolve(&self, reference: &str) -> Result<Option<ResolvedImage>, String> {
        let name = crate::image::normalize_name(reference);
        let parsed = Reference::parse(reference).ok();
        let remote = parsed.clone().filter(|r| r.explicit_registry);
        let refresh = self.pull && remote.as_ref().is_some_and(|r| r.digest.is_none());
        if !refresh {
            if let Some(rec) = self.store.meta.image(&name).map_err(|e| e.to_string())? {
                let img = self.local(&rec.manifest)?;
                self.remember(reference, &img);
                return Ok(Some(img));
            }
            // Pinned by digest (`base@sha256:…`, as a policy's source rewrite writes it): any
            // complete copy of that manifest in the store is the image.
            if let Some(d) = parsed.as_ref().and_then(|r| r.digest)
                && let Some(img) = self.local_complete(&d)
            {
                self.remember(reference, &img);
                return Ok(Some(img));
            }
        }
        let Some(r) = remote else { return Ok(None) };
        let client = match self.client.get() {
            Some(c) => c.clone(),
            None => {
                let c = Client::new(self.opts.clone()).map_err(|e| e.to_string())?;
                self.client.get_or_init(|| c).clone()
            }
        };
        let pulled = pull::pull(&client, self.store, &r, &self.platform)
            .map_err(|e| format!("pulling: {e}"))?;
        if r.digest.is_none() {
            let size = self
                .store
                .content
                .size(&pulled.image.manifest)
                .map_err(|e| e.to_string())?;
            let mut staged = StagedRecords::default();
            staged.images.insert(
                name,
                ImageRecord {
                    manifest: pulled.image.manifest,
                    config: pulled.config_digest,
                    size,
                    layers: Vec::new(),
                    index: None,
                },
            );
            self.store.meta.commit(&staged).map_err(|e| e.to_string())?;
        }
        self.remember(reference, &pulled.image);
        Ok(Some(pulled.image))
    }

    fn local(&self, manifest: &Digest) -> Result<ResolvedImage, String> {
        let loaded = crate::image::load(self.store, manifest).map_err(|e| e.to_string())?;
        Ok(ResolvedImage {
            manifest: loaded.digest,
            layers: loaded.manifest.layers.clone(),
            config: loaded.config,
        })
    }

    /// A manifest the content store has with every layer.
    fn local_complete(&self, manifest: &Digest) -> Option<ResolvedImage> {
        if !self.store.content.contains(manifest) {
            return None;
        }
        let img = self.local(manifest).ok()?;
        img.layers
            .iter()
            .all(|l| self.store.content.contains(&l.digest))
            .then_some(img)
    }
}
