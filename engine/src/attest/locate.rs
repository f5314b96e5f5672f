//! Finding an image and its attestations where a verifier names it, as skopeo names images:
//! `oci-archive:PATH.tar[:REF]`, `oci:DIR[:REF]`, `docker://REGISTRY/NAME[:TAG|@DIGEST]`, or a
//! name in kiln's local image store.
//! Every blob read is checked against its digest; sizes are bounded before reading.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_attest::media as amedia;

use crate::Digest;
use crate::oci::media;
use crate::oci::types::{Descriptor, Index, Manifest};
use crate::store::Store;

/// Largest manifest, index or attestation blob read (SBOMs of big images are large).
pub const MAX_BLOB: u64 = 64 << 20;

/// Where an image is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageLocation {
    /// `oci-archive:PATH[:REF]`.
    OciArchive {
        /// The tar.
        path: PathBuf,
        /// `org.opencontainers.image.ref.name` to pick, if several.
        reference: Option<String>,
    },
    /// `oci:DIR[:REF]`.
    OciDir {
        /// The layout.
        path: PathBuf,
        /// Ref name.
        reference: Option<String>,
    },
    /// `docker://REGISTRY/NAME[:TAG|@DIGEST]`.
    Registry(String),
    /// A name in the local image store.
    Local(String),
}

impl ImageLocation {
    /// Parses skopeo's transport syntax; anything without a known transport is a local name.
    pub fn parse(s: &str) -> Self {
        let split = |rest: &str| -> (PathBuf, Option<String>) {
            // PATH[:REF]; a REF never contains '/', a path may contain ':'.
            match rest.rsplit_once(':') {
                Some((p, r)) if !r.is_empty() && !r.contains('/') && !p.is_empty() => {
                    (PathBuf::from(p), Some(r.to_owned()))
                }
                _ => (PathBuf::from(rest), None),
            }
        };
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, reference) = if Path::new(rest).is_file() {
                (PathBuf::from(rest), None)
            } else {
                split(rest)
            };
            Self::OciArchive { path, reference }
        } else if let Some(rest) = s.strip_prefix("oci:") {
            let (path, reference) = if Path::new(rest).is_dir() {
                (PathBuf::from(rest), None)
            } else {
                split(rest)
            };
            Self::OciDir { path, reference }
        } else if let Some(rest) = s.strip_prefix("docker://") {
            Self::Registry(rest.to_owned())
        } else {
            Self::Local(s.to_owned())
        }
    }
}

/// Errors finding an image or its attestations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocateError {
    /// Reading failed.
    #[error("reading {path}: {source}")]
    Io {
        /// What.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The layout or store does not hold what it should.
    #[error("{0}")]
    Invalid(String),
    /// A blob did not match its digest.
    #[error("blob {expected} has digest {actual}: the image was altered")]
    Digest {
        /// Named.
        expected: Digest,
        /// Found.
        actual: Digest,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// An image and what is attached to it.
#[derive(Debug, Clone)]
pub struct Located {
    /// The image manifest's descriptor.
    pub image: Descriptor,
    /// Signed bundles found as referrers of the image: (predicate type annotation, bytes).
    pub bundles: Vec<(Option<String>, Vec<u8>)>,
    /// Unsigned statements of the BuildKit-style attestation manifest: (predicate type, bytes).
    pub statements: Vec<(Option<String>, Vec<u8>)>,
    /// The image's config blob (digest-checked), for `kiln verify --policy`.
    pub config: Option<Vec<u8>>,
}

/// The config blob of an image manifest.
fn image_config(blobs: &dyn Blobs, image: &Descriptor) -> Result<Vec<u8>, LocateError> {
    let bytes = blobs.get(image)?;
    let m = Manifest::from_slice(&bytes).map_err(|e| LocateError::Invalid(e.to_string()))?;
    blobs.get(&m.config)
}

trait Blobs {
    fn get(&self, d: &Descriptor) -> Result<Vec<u8>, LocateError>;
}

fn check(d: &Descriptor, bytes: Vec<u8>) -> Result<Vec<u8>, LocateError> {
    let actual = Digest::of(&bytes);
    if actual != d.digest {
        return Err(LocateError::Digest {
            expected: d.digest,
            actual,
        });
    }
    Ok(bytes)
}

fn too_big(d: &Descriptor) -> LocateError {
    LocateError::Invalid(format!(
        "blob {} is {} bytes, more than the {MAX_BLOB} kiln reads for attestations",
        d.digest, d.size
    ))
}

struct DirBlobs(PathBuf);

impl Blobs for DirBlobs {
    fn get(&self, d: &Descriptor) -> Result<Vec<u8>, LocateError> {
        if d.size > MAX_BLOB {
            return Err(too_big(d));
        }
        let p = self.0.join(media::BLOBS_SHA256_DIR).join(d.digest.hex());
        let f = fs::File::open(&p).map_err(|source| LocateError::Io {
            path: p.clone(),
            source,
        })?;
        let mut buf = Vec::new();
        f.take(MAX_BLOB + 1)
            .read_to_end(&mut buf)
            .map_err(|source| LocateError::Io { path: p, source })?;
        check(d, buf)
    }
}

/// An OCI tar's regular files, by path: where each one's bytes are in the archive. One pass
/// over the headers (seeking over the data); a blob is read only when asked for, so verifying
/// an image never loads its layers.
struct TarBlobs {
    path: PathBuf,
    files: HashMap<String, (u64, u64)>,
}

impl TarBlobs {
    fn read(path: &Path) -> Result<Self, LocateError> {
        let ioerr = |source| LocateError::Io {
            path: path.to_owned(),
            source,
        };
        let f = fs::File::open(path).map_err(ioerr)?;
        let mut tar = tar::Archive::new(f);
        let mut files = HashMap::new();
        for entry in tar.entries_with_seek().map_err(ioerr)? {
            let entry = entry.map_err(ioerr)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry
                .path()
                .map_err(ioerr)?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            files.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Self {
            path: path.to_owned(),
            files,
        })
    }

    /// The bytes of `name`, at most [`MAX_BLOB`] of them.
    fn file(&self, name: &str) -> Result<Vec<u8>, LocateError> {
        use std::io::{Seek, SeekFrom};
        let &(offset, size) = self
            .files
            .get(name)
            .ok_or_else(|| LocateError::Invalid(format!("the archive has no {name}")))?;
        if size > MAX_BLOB {
            return Err(LocateError::Invalid(format!(
                "{name} is {size} bytes, more than the {MAX_BLOB} kiln reads for attestations"
            )));
        }
        let ioerr = |source| LocateError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = fs::File::open(&self.path).map_err(ioerr)?;
        f.seek(SeekFrom::Start(offset)).map_err(ioerr)?;
        let mut buf = Vec::new();
        f.take(size).read_to_end(&mut buf).map_err(ioerr)?;
        Ok(buf)
    }
}

impl Blobs for TarBlobs {
    fn get(&self, d: &Descriptor) -> Result<Vec<u8>, LocateError> {
        if d.size > MAX_BLOB {
            return Err(too_big(d));
        }
        let name = format!("{}/{}", media::BLOBS_SHA256_DIR, d.digest.hex());
        check(d, self.file(&name)?)
    }
}

struct StoreBlobs<'a>(&'a Store);

impl Blobs for StoreBlobs<'_> {
    fn get(&self, d: &Descriptor) -> Result<Vec<u8>, LocateError> {
        if d.size > MAX_BLOB {
            return Err(too_big(d));
        }
        Ok(self.0.content.read_blob(&d.digest)?)
    }
}

/// Blobs and manifests of one repository, fetched into memory and checked against their
/// digests (verification needs no store).
struct RegistryBlobs<'a> {
    client: &'a crate::registry::Client,
    reference: crate::registry::Reference,
}

impl Blobs for RegistryBlobs<'_> {
    fn get(&self, d: &Descriptor) -> Result<Vec<u8>, LocateError> {
        if d.size > MAX_BLOB {
            return Err(too_big(d));
        }
        let r = crate::registry::Reference {
            tag: None,
            digest: Some(d.digest),
            ..self.reference.clone()
        };
        if d.media_type == media::OCI_MANIFEST
            || d.media_type == media::OCI_INDEX
            || d.media_type == media::DOCKER_MANIFEST
            || d.media_type == media::DOCKER_MANIFEST_LIST
        {
            // Verified against the digest asked for by the client.
            return Ok(crate::registry::pull::fetch_manifest(self.client, &r)?.bytes);
        }
        let resp = self.client.request(
            &r,
            "pull",
            &[],
            ureq::http::Method::GET,
            &format!("blobs/{}", d.digest),
            &[],
            ureq::SendBody::none(),
        )?;
        if resp.status() != 200 {
            return Err(crate::registry::client::status_error(
                &r,
                format!("GET blob {}", d.digest),
                resp,
            )
            .into());
        }
        let mut buf = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_BLOB + 1)
            .read_to_end(&mut buf)
            .map_err(|source| LocateError::Io {
                path: PathBuf::from(format!("{}", d.digest)),
                source,
            })?;
        check(d, buf)
    }
}

/// Finds the image at `location` and its attestations. `store` is needed for local names,
/// `registry` (options) for `docker://` references.
pub fn locate_with(
    location: &ImageLocation,
    store: Option<&Store>,
    registry: &crate::registry::RegistryOptions,
) -> Result<Located, LocateError> {
    let ImageLocation::Registry(name) = location else {
        return locate(location, store);
    };
    let reference = crate::registry::Reference::parse(name)?;
    let client = crate::registry::Client::new(registry.clone())?;
    let top = crate::registry::pull::fetch_manifest(&client, &reference)?;
    let blobs = RegistryBlobs {
        client: &client,
        reference: reference.clone(),
    };
    let entry = Descriptor::new(top.media_type.clone(), top.digest, top.bytes.len() as u64);
    let index = serde_json::to_vec(&Index::new(vec![entry]))
        .map_err(|e| LocateError::Invalid(e.to_string()))?;
    let mut located = from_layout(&blobs, &index, None)?;
    // Referrers the index does not list: the referrers API, else the referrers tag.
    let referrers = referrers(&client, &reference, &located.image.digest)?;
    let more = attachments(&blobs, located.image.clone(), &referrers)?;
    for b in more.bundles {
        if !located.bundles.contains(&b) {
            located.bundles.push(b);
        }
    }
    Ok(located)
}

/// The referrers of `image` as the registry lists them (OCI 1.1 API, else the `sha256-<hex>`
/// tag); empty when it lists none.
fn referrers(
    client: &crate::registry::Client,
    r: &crate::registry::Reference,
    image: &Digest,
) -> Result<Vec<Descriptor>, LocateError> {
    let resp = client.request(
        r,
        "pull",
        &[],
        ureq::http::Method::GET,
        &format!("referrers/{image}"),
        &[("Accept", media::OCI_INDEX)],
        ureq::SendBody::none(),
    )?;
    let bytes = if resp.status() == 200 {
        let mut buf = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_BLOB)
            .read_to_end(&mut buf)
            .map_err(|source| LocateError::Io {
                path: PathBuf::from("referrers"),
                source,
            })?;
        buf
    } else {
        let tagged = crate::registry::Reference {
            tag: Some(format!("sha256-{}", image.hex())),
            digest: None,
            ..r.clone()
        };
        match crate::registry::pull::fetch_manifest(client, &tagged) {
            Ok(m) => m.bytes,
            Err(_) => return Ok(Vec::new()),
        }
    };
    Ok(Index::from_slice(&bytes)
        .map(|i| i.manifests)
        .unwrap_or_default())
}

/// Finds the image at `location` and its attestations. `store` is needed for local names.
pub fn locate(location: &ImageLocation, store: Option<&Store>) -> Result<Located, LocateError> {
    match location {
        ImageLocation::OciArchive { path, reference } => {
            let blobs = TarBlobs::read(path)?;
            let index = blobs.file(media::INDEX_FILE)?;
            from_layout(&blobs, &index, reference.as_deref())
        }
        ImageLocation::OciDir { path, reference } => {
            let p = path.join(media::INDEX_FILE);
            let mut index = Vec::new();
            fs::File::open(&p)
                .and_then(|f| f.take(MAX_BLOB).read_to_end(&mut index))
                .map_err(|source| LocateError::Io { path: p, source })?;
            from_layout(&DirBlobs(path.clone()), &index, reference.as_deref())
        }
        ImageLocation::Registry(_) => locate_with(
            location,
            store,
            &crate::registry::RegistryOptions::default(),
        ),
        ImageLocation::Local(name) => {
            let store = store.ok_or_else(|| {
                LocateError::Invalid(format!("{name}: no local image store to look in"))
            })?;
            let full = crate::image::normalize_name(name);
            let rec = store.meta.image(&full)?.ok_or_else(|| {
                LocateError::Invalid(format!(
                    "{name}: no such image in kiln's local image store (or name it as \
                     oci-archive:PATH, oci:DIR or docker://REF)"
                ))
            })?;
            let blobs = StoreBlobs(store);
            let size = store.content.size(&rec.manifest)?;
            let image = Descriptor::new(media::OCI_MANIFEST, rec.manifest, size);
            match rec.index {
                Some(i) => {
                    let d = Descriptor::new(media::OCI_INDEX, i, store.content.size(&i)?);
                    let bytes = blobs.get(&d)?;
                    let index = Index::from_slice(&bytes)
                        .map_err(|e| LocateError::Invalid(e.to_string()))?;
                    attachments(&blobs, image, &index.manifests)
                }
                None => Ok(Located {
                    config: Some(image_config(&blobs, &image)?),
                    image,
                    bundles: Vec::new(),
                    statements: Vec::new(),
                }),
            }
        }
    }
}

fn from_layout(
    blobs: &dyn Blobs,
    index_json: &[u8],
    reference: Option<&str>,
) -> Result<Located, LocateError> {
    let top = Index::from_slice(index_json).map_err(|e| LocateError::Invalid(e.to_string()))?;
    // Entries that refer to another manifest (referrers at the top of the layout, as oras
    // writes them) are not candidates for "the image".
    let candidates: Vec<&Descriptor> = top
        .manifests
        .iter()
        .filter(|d| {
            reference.is_none_or(|r| {
                d.annotations
                    .get(media::ANNOTATION_REF_NAME)
                    .map(String::as_str)
                    == Some(r)
            })
        })
        .filter(|d| d.artifact_type.is_none())
        .collect();
    let entry = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(LocateError::Invalid(match reference {
                Some(r) => format!("the layout has no image named {r:?}"),
                None => "the layout's index.json lists no image".into(),
            }));
        }
        _ => {
            return Err(LocateError::Invalid(
                "the layout holds several images: name one as PATH:REF".into(),
            ));
        }
    };
    let mut siblings: Vec<Descriptor> = top.manifests.clone();
    let image = if entry.media_type == media::OCI_INDEX
        || entry.media_type == media::DOCKER_MANIFEST_LIST
    {
        let bytes = blobs.get(&entry)?;
        let index = Index::from_slice(&bytes).map_err(|e| LocateError::Invalid(e.to_string()))?;
        let images: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| is_image_entry(d))
            .collect();
        let image = match images.as_slice() {
            [one] => (*one).clone(),
            _ => {
                return Err(LocateError::Invalid(format!(
                    "index {} holds {} images; kiln verifies single-platform images",
                    entry.digest,
                    images.len()
                )));
            }
        };
        siblings.extend(index.manifests.iter().cloned());
        image
    } else {
        entry
    };
    attachments(blobs, image, &siblings)
}

/// An index entry that is an image (not an attestation manifest or an artifact).
fn is_image_entry(d: &Descriptor) -> bool {
    d.artifact_type.is_none()
        && !d.annotations.contains_key(amedia::DOCKER_REFERENCE_TYPE)
        && d.platform
            .as_ref()
            .is_none_or(|p| p.os != "unknown" && p.architecture != "unknown")
}

fn attachments(
    blobs: &dyn Blobs,
    image: Descriptor,
    entries: &[Descriptor],
) -> Result<Located, LocateError> {
    let mut bundles = Vec::new();
    let mut statements = Vec::new();
    for d in entries {
        if d.digest == image.digest || d.media_type != media::OCI_MANIFEST {
            continue;
        }
        let is_attestation = d
            .annotations
            .get(amedia::DOCKER_REFERENCE_TYPE)
            .map(String::as_str)
            == Some(amedia::ATTESTATION_MANIFEST);
        let bytes = blobs.get(d)?;
        let m = Manifest::from_slice(&bytes).map_err(|e| LocateError::Invalid(e.to_string()))?;
        if is_attestation {
            if d.annotations.get(amedia::DOCKER_REFERENCE_DIGEST) != Some(&image.digest.to_string())
            {
                continue;
            }
            for l in &m.layers {
                if l.media_type == amedia::INTOTO_LAYER {
                    let pt = l
                        .annotations
                        .get(amedia::ANNOTATION_PREDICATE_TYPE)
                        .cloned();
                    statements.push((pt, blobs.get(l)?));
                }
            }
        } else if m.subject.as_ref().is_some_and(|s| s.digest == image.digest)
            && m.artifact_type.as_deref() == Some(amedia::SIGSTORE_BUNDLE_V03)
        {
            let pt = m
                .annotations
                .get(super::attach::ANNOTATION_BUNDLE_PREDICATE_TYPE)
                .cloned();
            for l in &m.layers {
                if l.media_type == amedia::SIGSTORE_BUNDLE_V03 {
                    bundles.push((pt.clone(), blobs.get(l)?));
                }
            }
        }
    }
    Ok(Located {
        config: Some(image_config(blobs, &image)?),
        image,
        bundles,
        statements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_as_skopeo_names_them() {
        assert_eq!(
            ImageLocation::parse("oci-archive:/x/app.tar:v1"),
            ImageLocation::OciArchive {
                path: "/x/app.tar".into(),
                reference: Some("v1".into())
            }
        );
        assert_eq!(
            ImageLocation::parse("oci:/no/such/dir"),
            ImageLocation::OciDir {
                path: "/no/such/dir".into(),
                reference: None
            }
        );
        assert_eq!(
            ImageLocation::parse("docker://127.0.0.1:5000/app@sha256:00"),
            ImageLocation::Registry("127.0.0.1:5000/app@sha256:00".into())
        );
        assert_eq!(
            ImageLocation::parse("app:1"),
            ImageLocation::Local("app:1".into())
        );
    }
}
