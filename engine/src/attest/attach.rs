//! Attaching attestations to an image, both ways verifiers look for them:
//!
//! - **As BuildKit does**: an *attestation manifest* in the image's index, next to the image
//!   manifest, with platform `unknown/unknown` and the annotations
//!   `vnd.docker.reference.type: attestation-manifest` and
//!   `vnd.docker.reference.digest: <image manifest digest>`; its layers are the in-toto
//!   statements (`application/vnd.in-toto+json`, annotated with `in-toto.io/predicate-type`),
//!   unsigned, exactly as BuildKit stores them.
//! - **As an OCI 1.1 referrer** (what cosign v3 writes): one artifact manifest per signed
//!   statement, `artifactType` = the sigstore bundle v0.3 media type, the empty config, one
//!   layer holding the bundle, and `subject` = the image manifest.
//!
//! The image manifest itself is untouched: its digest is the same with or without
//! attestations. What changes is the entry the layout or registry tag points at: an index
//! (`application/vnd.oci.image.index.v1+json`) holding the image manifest, the attestation
//! manifest and the referrers. Referrers sit in that index because an image layout has no
//! referrers API; a registry push sends them as manifests of their own.

use std::collections::BTreeMap;

use kiln_attest::media as amedia;
use serde::Serialize;

use super::AttestError;
use crate::Digest;
use crate::oci::media;
use crate::oci::types::{Descriptor, Index, Manifest, Platform, canonical_json};
use crate::store::Store;
use crate::store::content::StagedBatch;

/// Annotation cosign puts on a bundle referrer: what the bundle holds.
pub const ANNOTATION_BUNDLE_CONTENT: &str = "dev.sigstore.bundle.content";
/// Annotation cosign puts on a bundle referrer: the statement's predicate type.
pub const ANNOTATION_BUNDLE_PREDICATE_TYPE: &str = "dev.sigstore.bundle.predicateType";
/// The empty JSON object, the config of an artifact manifest.
const EMPTY_JSON: &[u8] = b"{}";

/// One attestation of the image: its statement, and the signed bundle when there is a key.
#[derive(Debug, Clone)]
pub struct Attestation {
    /// The statement's predicate type.
    pub predicate_type: String,
    /// The in-toto statement (canonical JSON).
    pub statement: Vec<u8>,
    /// The sigstore bundle holding the signed DSSE envelope of `statement`.
    pub bundle: Option<Vec<u8>>,
    /// sha256 of `statement` and of `bundle` ([`Attestation::new`] computes them; SBOM
    /// documents are megabytes, so they are hashed once).
    digests: (Digest, Option<Digest>),
}

impl Attestation {
    /// An attestation of `statement` (and its signed `bundle`).
    pub fn new(predicate_type: String, statement: Vec<u8>, bundle: Option<Vec<u8>>) -> Self {
        let digests = (Digest::of(&statement), bundle.as_deref().map(Digest::of));
        Self {
            predicate_type,
            statement,
            bundle,
            digests,
        }
    }

    /// An attestation whose statement and bundle blobs the content store holds under
    /// `digests` (checked by the content store's digest-named files; `fsck` verifies them).
    pub(crate) fn stored(
        predicate_type: String,
        statement: Vec<u8>,
        bundle: Option<Vec<u8>>,
        digests: (Digest, Option<Digest>),
    ) -> Self {
        Self {
            predicate_type,
            statement,
            bundle,
            digests,
        }
    }

    /// sha256 of the statement and of the bundle.
    pub fn digests(&self) -> (Digest, Option<Digest>) {
        self.digests
    }
}

/// The image's index with its attestations, every blob of it already in the content store.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Descriptor of the index (what `index.json` or a tag points at).
    pub index: Descriptor,
    /// The index bytes.
    pub index_bytes: Vec<u8>,
    /// Every manifest in the index other than the image's (attestation manifest, referrers).
    pub manifests: Vec<Descriptor>,
    /// Every other blob they reference (configs, statement and bundle layers).
    pub blobs: Vec<Descriptor>,
    /// The bytes of every blob above, of the manifests and of the index, by digest (what
    /// [`store`] writes into the content store): outputs write these instead of reading
    /// them back.
    pub blob_bytes: std::sync::Arc<BTreeMap<Digest, Vec<u8>>>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<Digest>,
}

/// The config of BuildKit's attestation manifests: an image config for platform
/// `unknown/unknown` whose "layers" are the statements.
#[derive(Serialize)]
struct AttestationConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    config: BTreeMap<String, String>,
    rootfs: RootFs<'a>,
}

/// Blobs to store, written together by [`store`] ([`crate::store::content::ContentStore::stage_batch`]).
#[derive(Default)]
struct Pending(Vec<(Vec<u8>, Digest)>);

impl Pending {
    fn put(&mut self, media_type: &str, bytes: Vec<u8>) -> Descriptor {
        let digest = Digest::of(&bytes);
        self.put_hashed(media_type, bytes, digest)
    }

    /// [`Pending::put`] of bytes whose sha256 is `digest`.
    fn put_hashed(&mut self, media_type: &str, bytes: Vec<u8>, digest: Digest) -> Descriptor {
        let d = Descriptor::new(media_type, digest, bytes.len() as u64);
        self.0.push((bytes, digest));
        d
    }
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, AttestError> {
    Ok(canonical_json(v)?)
}

/// Writes the attestation manifest, the referrers and the index for `image` (the image
/// manifest's descriptor, with its platform) into the store: [`prepare`], then [`store`].
pub fn attach(
    store: &Store,
    image: &Descriptor,
    attestations: &[Attestation],
) -> Result<Attached, AttestError> {
    let attached = prepare(image, attestations)?;
    self::store(store, &attached)?;
    Ok(attached)
}

/// Writes every blob of `attached` ([`Attached::blob_bytes`]) into the content store, made
/// durable.
pub fn store(store: &Store, attached: &Attached) -> Result<(), AttestError> {
    stage(store, attached)?.publish(false)?;
    Ok(())
}

/// The first half of [`store`]: the blobs written to temp files in the content store, not yet
/// durable nor visible; [`StagedBatch::publish`] finishes it.
pub(crate) fn stage(store: &Store, attached: &Attached) -> Result<StagedBatch, AttestError> {
    let refs: Vec<(&[u8], Digest)> = attached
        .blob_bytes
        .iter()
        .map(|(d, b)| (b.as_slice(), *d))
        .collect();
    Ok(store.content.stage_batch(&refs)?)
}

/// The attestation manifest, the referrers and the index for `image` (the image manifest's
/// descriptor, with its platform), in memory: nothing is in the content store until
/// [`store`] writes it.
pub fn prepare(image: &Descriptor, attestations: &[Attestation]) -> Result<Attached, AttestError> {
    let mut manifests = Vec::new();
    let mut blobs = Vec::new();
    let mut pending = Pending::default();
    let subject = Descriptor::new(image.media_type.clone(), image.digest, image.size);

    if !attestations.is_empty() {
        let mut layers = Vec::new();
        for a in attestations {
            let mut d = pending.put_hashed(amedia::INTOTO_LAYER, a.statement.clone(), a.digests.0);
            d.annotations.insert(
                amedia::ANNOTATION_PREDICATE_TYPE.into(),
                a.predicate_type.clone(),
            );
            layers.push(d);
        }
        let config = AttestationConfig {
            architecture: "unknown",
            os: "unknown",
            config: BTreeMap::new(),
            rootfs: RootFs {
                kind: "layers",
                diff_ids: layers.iter().map(|l| l.digest).collect(),
            },
        };
        let config = pending.put(media::OCI_CONFIG, json(&config)?);
        blobs.push(config.clone());
        blobs.extend(layers.iter().cloned());
        let manifest = Manifest::new(config, layers);
        let mut d = pending.put(media::OCI_MANIFEST, json(&manifest)?);
        d.platform = Some(Platform {
            architecture: "unknown".into(),
            os: "unknown".into(),
            os_version: None,
            os_features: Vec::new(),
            variant: None,
        });
        d.annotations.insert(
            amedia::DOCKER_REFERENCE_TYPE.into(),
            amedia::ATTESTATION_MANIFEST.into(),
        );
        d.annotations.insert(
            amedia::DOCKER_REFERENCE_DIGEST.into(),
            image.digest.to_string(),
        );
        manifests.push(d);
    }

    let signed: Vec<&Attestation> = attestations.iter().filter(|a| a.bundle.is_some()).collect();
    if !signed.is_empty() {
        let empty = pending.put(media::OCI_EMPTY_JSON, EMPTY_JSON.to_vec());
        blobs.push(empty.clone());
        for a in signed {
            let (Some(bundle), Some(digest)) = (&a.bundle, a.digests.1) else {
                continue;
            };
            let layer = pending.put_hashed(amedia::SIGSTORE_BUNDLE_V03, bundle.clone(), digest);
            blobs.push(layer.clone());
            let mut m = Manifest::new(empty.clone(), vec![layer]);
            m.artifact_type = Some(amedia::SIGSTORE_BUNDLE_V03.into());
            m.subject = Some(subject.clone());
            m.annotations
                .insert(ANNOTATION_BUNDLE_CONTENT.into(), "dsse-envelope".into());
            m.annotations.insert(
                ANNOTATION_BUNDLE_PREDICATE_TYPE.into(),
                a.predicate_type.clone(),
            );
            let mut d = pending.put(media::OCI_MANIFEST, json(&m)?);
            d.artifact_type = Some(amedia::SIGSTORE_BUNDLE_V03.into());
            d.annotations = m.annotations.clone();
            manifests.push(d);
        }
    }

    let mut all = vec![image.clone()];
    all.extend(manifests.iter().cloned());
    let index = Index::new(all);
    let index_bytes = json(&index)?;
    let index_d = pending.put(media::OCI_INDEX, index_bytes.clone());
    blobs.sort_by_key(|d| d.digest);
    blobs.dedup_by(|a, b| a.digest == b.digest);
    let blob_bytes = pending.0.into_iter().map(|(b, d)| (d, b)).collect();
    Ok(Attached {
        index: index_d,
        index_bytes,
        manifests,
        blobs,
        blob_bytes: std::sync::Arc::new(blob_bytes),
    })
}
