//! Exporters: OCI layout (tar or directory) and docker-archive, from blobs in a [`BlobSource`].
//!
//! Export runs in two phases, as BuildKit's does: [`assemble`] computes the config and
//! manifest bytes and every digest without writing anything (the caller stores the two blobs);
//! then an exporter reads every blob from the [`BlobSource`], verifying digest and size while it
//! copies, and writes the output under a temporary name renamed into place only when complete.
//! Tar outputs are deterministic: entries sorted by name, mtime = the export epoch, uid/gid 0,
//! mode 0644 (files) / 0755 (directories), ustar headers.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::blob::{AtomicFile, BlobError, BlobSource, VerifiedReader};
use super::media;
use super::types::{Descriptor, ImageConfig, Index, Manifest, TypesError, canonical_json};
use crate::digest::Digest;

/// Errors exporting an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A blob could not be read from the source.
    #[error("cannot read blob {digest}")]
    ReadBlob {
        /// The blob.
        digest: Digest,
        /// The cause.
        source: io::Error,
    },
    /// A blob's content does not match its descriptor.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Writing the output failed.
    #[error("cannot write {path}")]
    Write {
        /// The output path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A JSON document could not be produced or parsed.
    #[error(transparent)]
    Json(#[from] TypesError),
    /// The image config lists a different number of diff ids than there are layers.
    #[error("config lists {diff_ids} diff_ids but the manifest has {layers} layers")]
    LayerCount {
        /// Diff ids in the config.
        diff_ids: usize,
        /// Layers given.
        layers: usize,
    },
    /// The rest of a staged export never came (what it waited for failed); nothing is left
    /// at the destination.
    #[error("export of {path} abandoned: {reason}")]
    Abandoned {
        /// The output path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An image name is not a valid reference.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

type Result<T> = std::result::Result<T, ExportError>;

/// Config and manifest of an image, serialized canonically, with their descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledImage {
    /// Config bytes (store them under `config_descriptor.digest`).
    pub config: Vec<u8>,
    /// Descriptor of `config`.
    pub config_descriptor: Descriptor,
    /// Manifest bytes (store them under `manifest_descriptor.digest`).
    pub manifest: Vec<u8>,
    /// Descriptor of `manifest`.
    pub manifest_descriptor: Descriptor,
}

/// Phase one: serializes `config` and a manifest over `layers`; writes nothing.
pub fn assemble(
    config: &ImageConfig,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
) -> Result<AssembledImage> {
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(ExportError::LayerCount {
            diff_ids: config.rootfs.diff_ids.len(),
            layers: layers.len(),
        });
    }
    let config_bytes = canonical_json(config)?;
    let config_descriptor = Descriptor::of_bytes(media::OCI_CONFIG, &config_bytes);
    let mut manifest = Manifest::new(config_descriptor.clone(), layers);
    manifest.annotations = annotations;
    let manifest_bytes = canonical_json(&manifest)?;
    let mut manifest_descriptor = Descriptor::of_bytes(media::OCI_MANIFEST, &manifest_bytes);
    manifest_descriptor.platform = Some(super::types::Platform {
        architecture: config.architecture.clone(),
        os: config.os.clone(),
        os_version: config.os_version.clone(),
        os_features: Vec::new(),
        variant: config.variant.clone(),
    });
    Ok(AssembledImage {
        config: config_bytes,
        config_descriptor,
        manifest: manifest_bytes,
        manifest_descriptor,
    })
}

/// An image ready to export: its manifest, read and verified from the blob source, and names.
#[derive(Debug, Clone)]
pub struct ImageRef {
    descriptor: Descriptor,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    names: Vec<ImageName>,
    /// The index holding the image and its attestations, when it has any: what the layout's
    /// `index.json` then points at (the image manifest itself is unchanged).
    attached: Option<Attachments>,
}

/// An image index over the image manifest and its attestation manifests and referrers.
#[derive(Debug, Clone)]
struct Attachments {
    index: Descriptor,
    index_bytes: Vec<u8>,
    /// The other manifests and blobs the index reaches, all in the blob source.
    blobs: Vec<Descriptor>,
    /// Copies of some of `blobs` in memory (their maker hashed them): written from here
    /// rather than read back from the blob source.
    in_memory: Arc<BTreeMap<Digest, Vec<u8>>>,
}

impl ImageRef {
    /// Reads the manifest `descriptor` names from `source`, verifies it, and parses it.
    /// `names` are references like `registry.example/app:1.0` (tag defaults to `latest`).
    pub fn load(source: &dyn BlobSource, descriptor: Descriptor, names: &[String]) -> Result<Self> {
        let manifest_bytes = read_blob(source, &descriptor)?;
        let manifest = Manifest::from_slice(&manifest_bytes)?;
        let names = names
            .iter()
            .map(|n| ImageName::parse(n))
            .collect::<Result<_>>()?;
        Ok(Self {
            descriptor,
            manifest_bytes,
            manifest,
            names,
            attached: None,
        })
    }

    /// Makes the layout point at `index` (bytes `index_bytes`), an image index holding this
    /// image's manifest and its attestations; `blobs` are every other manifest and blob it
    /// reaches, all readable from the blob source.
    pub fn with_attachments(
        mut self,
        index: Descriptor,
        index_bytes: Vec<u8>,
        blobs: Vec<Descriptor>,
    ) -> Self {
        self.attached = Some(Attachments {
            index,
            index_bytes,
            blobs,
            in_memory: Arc::default(),
        });
        self
    }

    /// Copies in memory of blobs the attachments reach (each under the sha256 of its
    /// bytes), which the layout writers write instead of reading them back from the source.
    /// Without attachments it does nothing.
    pub fn with_attachment_bytes(mut self, bytes: Arc<BTreeMap<Digest, Vec<u8>>>) -> Self {
        if let Some(a) = self.attached.as_mut() {
            a.in_memory = bytes;
        }
        self
    }

    /// The manifest descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// What `index.json` points at: the attachments' index, else the image manifest.
    fn top(&self) -> &Descriptor {
        self.attached
            .as_ref()
            .map_or(&self.descriptor, |a| &a.index)
    }

    fn index_entries(&self) -> Vec<Descriptor> {
        if self.names.is_empty() {
            return vec![self.top().clone()];
        }
        self.names
            .iter()
            .map(|n| {
                let mut d = self.top().clone();
                d.annotations.insert(
                    media::ANNOTATION_CONTAINERD_IMAGE_NAME.into(),
                    n.full.clone(),
                );
                d.annotations
                    .insert(media::ANNOTATION_REF_NAME.into(), n.tag.clone());
                d
            })
            .collect()
    }

    /// Blobs other than the manifest and the attachments' index: config, layers, then what
    /// the attachments reach, without duplicates.
    fn blobs(&self) -> Vec<Descriptor> {
        let mut seen = BTreeSet::new();
        let attached = self.attached.iter().flat_map(|a| a.blobs.iter());
        std::iter::once(&self.manifest.config)
            .chain(&self.manifest.layers)
            .chain(attached)
            .filter(|d| d.digest != self.descriptor.digest && seen.insert(d.digest))
            .cloned()
            .collect()
    }

    /// The image's own blobs: config and layers, without duplicates.
    fn own_blobs(&self) -> Vec<Descriptor> {
        let mut seen = BTreeSet::new();
        std::iter::once(&self.manifest.config)
            .chain(&self.manifest.layers)
            .filter(|d| d.digest != self.descriptor.digest && seen.insert(d.digest))
            .cloned()
            .collect()
    }

    /// The bytes of blob `d` when the attachments hold them in memory (and their size is
    /// `d`'s).
    fn in_memory(&self, d: &Descriptor) -> Option<&[u8]> {
        self.attached
            .as_ref()
            .and_then(|a| a.in_memory.get(&d.digest))
            .map(Vec::as_slice)
            .filter(|b| b.len() as u64 == d.size)
    }

    /// The attachments' index as a blob to write, if any.
    fn index_blob(&self) -> Option<(&Digest, &[u8])> {
        self.attached
            .as_ref()
            .map(|a| (&a.index.digest, a.index_bytes.as_slice()))
    }
}

/// A parsed image name: `full` is normalized (`docker.io/library/x:latest`), `tag` the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageName {
    full: String,
    familiar: String,
    tag: String,
}

impl ImageName {
    fn parse(name: &str) -> Result<Self> {
        let bad = |reason| ExportError::InvalidName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("empty or contains whitespace"));
        }
        if name.contains('@') {
            return Err(bad("digest references cannot be tagged"));
        }
        let slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match name[slash..].rfind(':') {
            Some(i) => (&name[..slash + i], &name[slash + i + 1..]),
            None => (name, "latest"),
        };
        if repo.is_empty() || tag.is_empty() || repo.ends_with('/') || repo.starts_with('/') {
            return Err(bad("empty repository or tag"));
        }
        let first = repo.split('/').next().unwrap_or_default();
        let has_domain = repo.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let full_repo = if has_domain {
            repo.to_owned()
        } else if repo.contains('/') {
            format!("docker.io/{repo}")
        } else {
            format!("docker.io/library/{repo}")
        };
        let familiar_repo = full_repo
            .strip_prefix("docker.io/library/")
            .or_else(|| full_repo.strip_prefix("docker.io/"))
            .unwrap_or(&full_repo);
        Ok(Self {
            full: format!("{full_repo}:{tag}"),
            familiar: format!("{familiar_repo}:{tag}"),
            tag: tag.to_owned(),
        })
    }
}

/// Options shared by exporters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// mtime of every tar entry (`SOURCE_DATE_EPOCH`, 0 if unset).
    pub epoch: u64,
}

/// Writes `image` as an OCI image layout in a tar at `dest` (`type=oci`).
pub fn export_oci_tar(
    source: &dyn BlobSource,
    image: &ImageRef,
    dest: &Path,
    opts: &ExportOptions,
) -> Result<()> {
    write_layout_tar(source, image, dest, opts, TarKind::Oci)
}

/// [`export_oci_tar`] of an image whose attestations are made meanwhile: the image's own
/// blobs (manifest, config, layers) are written at once; then `rest` is called (it may wait
/// for the attestations) and gives the image to finish with, normally `image` with its
/// attachments, whose other blobs, index and `index.json` follow. Last, before the file
/// is put in place, `finish` is called (it may wait for the attestations to be stored). An
/// `Err` from `rest` or `finish` abandons the export: nothing is left at `dest`. The file is
/// the same as [`export_oci_tar`] of the finished image writes.
pub fn export_oci_tar_staged(
    source: &dyn BlobSource,
    image: &ImageRef,
    dest: &Path,
    opts: &ExportOptions,
    rest: impl FnOnce() -> std::result::Result<ImageRef, String>,
    finish: impl FnOnce() -> std::result::Result<(), String>,
) -> Result<()> {
    let abandoned = |reason| ExportError::Abandoned {
        path: dest.to_owned(),
        reason,
    };
    write_layout_tar_staged(
        source,
        image,
        dest,
        opts,
        TarKind::OciStaged,
        || rest().map_err(abandoned),
        || finish().map_err(abandoned),
    )
}

/// Writes `image` as a docker-archive at `dest` for `docker load` (`type=docker`): the legacy
/// `manifest.json` (read by docker 20.10, which decompresses gzip layers) plus an OCI layout
/// (`index.json`, `oci-layout`) over the same blobs, which newer docker reads.
pub fn export_docker_archive(
    source: &dyn BlobSource,
    image: &ImageRef,
    dest: &Path,
    opts: &ExportOptions,
) -> Result<()> {
    write_layout_tar(source, image, dest, opts, TarKind::Docker)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn blob_path(d: &Digest) -> String {
    format!("{}/{}", media::BLOBS_SHA256_DIR, d.hex())
}

fn layout_file() -> Result<Vec<u8>> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Layout {
        image_layout_version: &'static str,
    }
    Ok(canonical_json(&Layout {
        image_layout_version: media::IMAGE_LAYOUT_VERSION,
    })?)
}

enum Content {
    Dir,
    Bytes(Vec<u8>),
    Blob(Box<Descriptor>),
}

fn write_layout_tar(
    source: &dyn BlobSource,
    image: &ImageRef,
    dest: &Path,
    opts: &ExportOptions,
    kind: TarKind,
) -> Result<()> {
    write_layout_tar_staged(
        source,
        image,
        dest,
        opts,
        kind,
        || Ok(image.clone()),
        || Ok(()),
    )
}

/// What a layout tar is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TarKind {
    /// An OCI archive, written at once.
    Oci,
    /// An OCI archive whose attachments come later (`rest` waits for them): the image's own
    /// blobs are synced meanwhile.
    OciStaged,
    /// A docker-archive: also the legacy `manifest.json`.
    Docker,
}

/// The layout tar in two parts, each in path order: the directories and the image's own
/// blobs; then (from the image `rest` gives) the other blobs its attachments reach, their
/// index, and the layout files. Without attachments that is one sorted run of entries.
fn write_layout_tar_staged(
    source: &dyn BlobSource,
    image: &ImageRef,
    dest: &Path,
    opts: &ExportOptions,
    kind: TarKind,
    rest: impl FnOnce() -> Result<ImageRef>,
    finish: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let werr = |source| ExportError::Write {
        path: dest.to_owned(),
        source,
    };
    let mut first: BTreeMap<String, Content> = BTreeMap::new();
    first.insert("blobs/".into(), Content::Dir);
    first.insert(format!("{}/", media::BLOBS_SHA256_DIR), Content::Dir);
    first.insert(
        blob_path(&image.descriptor.digest),
        Content::Bytes(image.manifest_bytes.clone()),
    );
    for d in image.own_blobs() {
        first.insert(blob_path(&d.digest), Content::Blob(Box::new(d)));
    }

    let mut out = AtomicFile::create(dest).map_err(werr)?;
    {
        let file = out.file().map_err(werr)?;
        let mut tar = tar::Builder::new(io::BufWriter::new(&mut *file));
        let written: BTreeSet<String> = first.keys().cloned().collect();
        append_entries(&mut tar, first, source, opts, &werr)?;
        if kind == TarKind::OciStaged {
            // The image's own blobs (the bulk) on their way to the disk while `rest` waits
            // for the attestations: the final sync then has only their few KiB left, and
            // the content store's syncs of the attestations do not queue behind it.
            tar.get_mut().flush().map_err(werr)?;
            tar.get_ref().get_ref().sync_data().map_err(werr)?;
        }

        let image = rest()?;
        let mut entries: BTreeMap<String, Content> = BTreeMap::new();
        for d in image.blobs() {
            let path = blob_path(&d.digest);
            if !written.contains(&path) {
                let content = match image.in_memory(&d) {
                    Some(bytes) => Content::Bytes(bytes.to_vec()),
                    None => Content::Blob(Box::new(d)),
                };
                entries.insert(path, content);
            }
        }
        if let Some((digest, bytes)) = image.index_blob() {
            entries.insert(blob_path(digest), Content::Bytes(bytes.to_vec()));
        }
        append_entries(&mut tar, std::mem::take(&mut entries), source, opts, &werr)?;
        entries.insert(
            media::OCI_LAYOUT_FILE.into(),
            Content::Bytes(layout_file()?),
        );
        let index = Index::new(image.index_entries());
        entries.insert(
            media::INDEX_FILE.into(),
            Content::Bytes(canonical_json(&index)?),
        );
        if kind == TarKind::Docker {
            let m = [DockerManifestEntry {
                config: blob_path(&image.manifest.config.digest),
                repo_tags: image.names.iter().map(|n| n.familiar.clone()).collect(),
                layers: image
                    .manifest
                    .layers
                    .iter()
                    .map(|d| blob_path(&d.digest))
                    .collect(),
            }];
            let bytes = serde_json::to_vec(&m).map_err(|source| TypesError::Serialize {
                what: "docker manifest.json",
                source,
            })?;
            entries.insert(media::DOCKER_MANIFEST_FILE.into(), Content::Bytes(bytes));
        }
        append_entries(&mut tar, entries, source, opts, &werr)?;
        let mut buf = tar.into_inner().map_err(werr)?;
        buf.flush().map_err(werr)?;
    }
    // Durable before the wait: the archive's writeback overlaps whatever `finish` waits for
    // (the attestations' own syncs into the content store), and the file system can commit
    // both in one journal transaction.
    out.sync().map_err(werr)?;
    finish()?;
    out.commit().map_err(werr)
}

fn append_entries<W: Write>(
    tar: &mut tar::Builder<W>,
    entries: BTreeMap<String, Content>,
    source: &dyn BlobSource,
    opts: &ExportOptions,
    werr: &dyn Fn(io::Error) -> ExportError,
) -> Result<()> {
    for (path, content) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(&path).map_err(werr)?;
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(opts.epoch);
        h.set_device_major(0).map_err(werr)?;
        h.set_device_minor(0).map_err(werr)?;
        match content {
            Content::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_cksum();
                tar.append(&h, io::empty()).map_err(werr)?;
            }
            Content::Bytes(b) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(b.len() as u64);
                h.set_cksum();
                tar.append(&h, &b[..]).map_err(werr)?;
            }
            Content::Blob(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(d.size);
                h.set_cksum();
                let mut r = open_verified(source, &d)?;
                tar.append(&h, &mut r).map_err(|e| blob_or(e, werr))?;
            }
        }
    }
    Ok(())
}

fn open_verified(
    source: &dyn BlobSource,
    d: &Descriptor,
) -> Result<VerifiedReader<Box<dyn Read + Send>>> {
    let r = source
        .open_blob(&d.digest)
        .map_err(|source| ExportError::ReadBlob {
            digest: d.digest,
            source,
        })?;
    Ok(VerifiedReader::new(r, d.digest, Some(d.size)))
}

fn blob_or(e: io::Error, other: impl FnOnce(io::Error) -> ExportError) -> ExportError {
    match BlobError::from_io(&e) {
        Some(b) => ExportError::Blob(b),
        None => other(e),
    }
}

fn read_blob(source: &dyn BlobSource, d: &Descriptor) -> Result<Vec<u8>> {
    let mut r = open_verified(source, d)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| {
        blob_or(e, |source| ExportError::ReadBlob {
            digest: d.digest,
            source,
        })
    })?;
    Ok(out)
}

/// Writes `image` into the OCI image layout directory `dest` (`type=oci-dir`), creating it or
/// merging into an existing layout: blobs already present are kept, `index.json` entries with
/// the same `org.opencontainers.image.ref.name` are replaced. `index.json` is written last.
pub fn export_oci_dir(source: &dyn BlobSource, image: &ImageRef, dest: &Path) -> Result<()> {
    let blobs_dir = dest.join(media::BLOBS_SHA256_DIR);
    let werr = |path: &Path| {
        let path = path.to_owned();
        move |source| ExportError::Write { path, source }
    };
    fs::create_dir_all(&blobs_dir).map_err(werr(&blobs_dir))?;
    for d in image.blobs() {
        let path = blobs_dir.join(d.digest.hex());
        if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == d.size) {
            continue;
        }
        let mut f = AtomicFile::create(&path).map_err(werr(&path))?;
        let mut r = open_verified(source, &d)?;
        io::copy(&mut r, f.file().map_err(werr(&path))?).map_err(|e| blob_or(e, werr(&path)))?;
        f.commit().map_err(werr(&path))?;
    }
    let manifest_path = blobs_dir.join(image.descriptor.digest.hex());
    write_file(&manifest_path, &image.manifest_bytes)?;
    if let Some((digest, bytes)) = image.index_blob() {
        write_file(&blobs_dir.join(digest.hex()), bytes)?;
    }
    write_file(&dest.join(media::OCI_LAYOUT_FILE), &layout_file()?)?;

    let index_path = dest.join(media::INDEX_FILE);
    let mut manifests = match fs::read(&index_path) {
        Ok(bytes) => Index::from_slice(&bytes)?.manifests,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(werr(&index_path)(e)),
    };
    let ours = image.index_entries();
    let our_refs: BTreeSet<Option<&String>> = ours
        .iter()
        .map(|d| d.annotations.get(media::ANNOTATION_REF_NAME))
        .collect();
    manifests.retain(|d| !our_refs.contains(&d.annotations.get(media::ANNOTATION_REF_NAME)));
    manifests.extend(ours);
    write_file(&index_path, &canonical_json(&Index::new(manifests))?)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let werr = |source| ExportError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = AtomicFile::create(path).map_err(werr)?;
    f.file().map_err(werr)?.write_all(bytes).map_err(werr)?;
    f.commit().map_err(werr)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_like_buildkit() {
        let n = ImageName::parse("foo").unwrap();
        assert_eq!(
            (n.full.as_str(), n.familiar.as_str(), n.tag.as_str()),
            ("docker.io/library/foo:latest", "foo:latest", "latest")
        );
        let n = ImageName::parse("localhost:5000/a/b:v1").unwrap();
        assert_eq!(
            (n.full.as_str(), n.tag.as_str()),
            ("localhost:5000/a/b:v1", "v1")
        );
        let n = ImageName::parse("org/app:2").unwrap();
        assert_eq!(
            (n.full.as_str(), n.familiar.as_str()),
            ("docker.io/org/app:2", "org/app:2")
        );
        assert!(ImageName::parse("a b").is_err());
        assert!(ImageName::parse("x@sha256:00").is_err());
    }

    #[test]
    fn a_staged_export_writes_the_same_archive_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cs = crate::store::content::ContentStore::open(&dir.path().join("cs")).unwrap();
        let put = |media: &str, bytes: &[u8]| {
            Descriptor::new(media, cs.write_bytes(bytes).unwrap(), bytes.len() as u64)
        };
        let config = put(
            media::OCI_CONFIG,
            br#"{"architecture":"amd64","os":"linux"}"#,
        );
        let layer = put(media::OCI_LAYER_TAR, b"not really a tar");
        let manifest = Manifest::new(config.clone(), vec![layer.clone()]);
        let image = put(media::OCI_MANIFEST, &canonical_json(&manifest).unwrap());
        // What attestations add: a blob, and an index over the image.
        let extra = put("application/vnd.in-toto+json", b"{\"statement\":1}");
        let index = Index::new(vec![image.clone(), extra.clone()]);
        let index_bytes = canonical_json(&index).unwrap();
        let index_d = put(media::OCI_INDEX, &index_bytes);
        let names = ["kiln.test/app:1".to_owned()];
        let plain = ImageRef::load(&cs, image, &names).unwrap();
        let attached = plain
            .clone()
            .with_attachments(index_d, index_bytes, vec![extra.clone()]);
        let opts = ExportOptions { epoch: 7 };

        let whole = dir.path().join("whole.tar");
        export_oci_tar(&cs, &attached, &whole, &opts).unwrap();
        let staged = dir.path().join("staged.tar");
        export_oci_tar_staged(
            &cs,
            &plain,
            &staged,
            &opts,
            || Ok(attached.clone()),
            || Ok(()),
        )
        .unwrap();
        assert_eq!(fs::read(&whole).unwrap(), fs::read(&staged).unwrap());
        // Attachment blobs handed over in memory give the same archive, and are not read
        // from the source (removed from it here); a copy whose size is not the blob's is
        // not used.
        let extra_bytes = b"{\"statement\":1}".to_vec();
        let in_memory: BTreeMap<Digest, Vec<u8>> = [(extra.digest, extra_bytes.clone())].into();
        let from_memory = attached.clone().with_attachment_bytes(Arc::new(in_memory));
        let elsewhere = tempfile::tempdir().unwrap();
        let cs2 = crate::store::content::ContentStore::open(&elsewhere.path().join("cs")).unwrap();
        for d in [&config, &layer] {
            cs2.write_bytes(&cs.read_blob(&d.digest).unwrap()).unwrap();
        }
        cs2.write_bytes(&canonical_json(&manifest).unwrap())
            .unwrap();
        let memory = dir.path().join("memory.tar");
        export_oci_tar_staged(
            &cs2,
            &plain,
            &memory,
            &opts,
            || Ok(from_memory.clone()),
            || Ok(()),
        )
        .unwrap();
        assert_eq!(fs::read(&whole).unwrap(), fs::read(&memory).unwrap());
        let wrong: BTreeMap<Digest, Vec<u8>> = [(extra.digest, b"{}".to_vec())].into();
        let wrong = attached.clone().with_attachment_bytes(Arc::new(wrong));
        let from_source = dir.path().join("source.tar");
        export_oci_tar(&cs, &wrong, &from_source, &opts).unwrap();
        assert_eq!(fs::read(&whole).unwrap(), fs::read(&from_source).unwrap());
        assert!(export_oci_tar(&cs2, &wrong, &from_source, &opts).is_err());
        // Without attachments: one sorted run of entries, as always.
        let bare = dir.path().join("bare.tar");
        export_oci_tar(&cs, &plain, &bare, &opts).unwrap();
        let mut a = tar::Archive::new(fs::File::open(&bare).unwrap());
        let paths: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);

        let abandoned = dir.path().join("abandoned.tar");
        // Abandoned when the attestations are not made, or made but not stored: the whole
        // archive was written in the second case, and still nothing is left.
        let not_made = || Err("the attestations were not made".to_owned());
        let not_stored = || Err("the attestations were not stored".to_owned());
        for (made, stored) in [(false, true), (true, false)] {
            let err = export_oci_tar_staged(
                &cs,
                &plain,
                &abandoned,
                &opts,
                || {
                    if made {
                        Ok(attached.clone())
                    } else {
                        not_made()
                    }
                },
                || if stored { Ok(()) } else { not_stored() },
            )
            .unwrap_err();
            assert!(matches!(err, ExportError::Abandoned { .. }), "{err}");
            let left: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("abandoned"))
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }
}
