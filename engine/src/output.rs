//! `-o` outputs: where a built image goes besides the store.

use std::path::{Path, PathBuf};

use crate::builder::SpecError;
use crate::image::Assembled;
use crate::oci::apply::{ApplyMode, apply_layer};
use crate::oci::compress::decompress;
use crate::oci::export::{
    ExportOptions, ImageRef, export_docker_archive, export_oci_dir, export_oci_tar,
    export_oci_tar_staged,
};
use crate::oci::layer::{LayerOptions, write_layer};
use crate::store::Store;

/// An output (`-o type=…,dest=…`), shaped like `docker buildx build -o`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputSpec {
    /// OCI image layout in a tar file.
    Oci {
        /// Destination file.
        dest: PathBuf,
    },
    /// OCI image layout in a directory.
    OciDir {
        /// Destination directory.
        dest: PathBuf,
    },
    /// `docker load` tarball.
    Docker {
        /// Destination file.
        dest: PathBuf,
    },
    /// The final file system in a directory.
    Local {
        /// Destination directory.
        dest: PathBuf,
    },
    /// The final file system as a tar file.
    Tar {
        /// Destination file.
        dest: PathBuf,
    },
    /// Pushed to a registry (`type=registry,ref=REG/NAME:TAG`, or
    /// `type=image,name=REG/NAME:TAG,push=true`); see [`crate::registry::push`].
    Registry {
        /// Where to.
        reference: String,
    },
}

impl OutputSpec {
    /// Parses `type=oci,dest=out.tar` (or a bare directory, meaning `type=local,dest=DIR`).
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let err = |reason: String| SpecError {
            what: "--output",
            value: s.to_owned(),
            reason,
        };
        if !s.contains('=') {
            if s.is_empty() || s == "-" {
                return Err(err("expected type=TYPE,dest=PATH or a directory".into()));
            }
            return Ok(Self::Local { dest: s.into() });
        }
        let mut kind = None;
        let mut dest = None;
        let mut reference = None;
        let mut push = false;
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| err(format!("{part:?} is not key=value")))?;
            match k.trim() {
                "type" => kind = Some(v.trim().to_owned()),
                "dest" => dest = Some(PathBuf::from(v.trim())),
                "ref" | "name" => reference = Some(v.trim().to_owned()),
                "push" => push = v.trim() == "true",
                other => {
                    return Err(err(format!(
                        "unknown attribute {other:?} (known: type, dest, ref, name, push)"
                    )));
                }
            }
        }
        let kind = kind.ok_or_else(|| err("missing type=".into()))?;
        if kind == "registry" || kind == "image" {
            let reference = reference
                .filter(|r| !r.is_empty())
                .ok_or_else(|| err(format!("type={kind} needs ref=REGISTRY/NAME:TAG")))?;
            if kind == "image" && !push {
                return Err(err(
                    "type=image is supported with push=true only (it is type=registry)".into(),
                ));
            }
            crate::registry::Reference::parse(&reference).map_err(|e| err(e.to_string()))?;
            return Ok(Self::Registry { reference });
        }
        if !matches!(
            kind.as_str(),
            "oci" | "oci-dir" | "docker" | "local" | "tar"
        ) {
            return Err(err(format!(
                "unknown output type {kind:?} (known: oci, oci-dir, docker, local, tar, registry)"
            )));
        }
        let dest = dest
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| err(format!("type={kind} needs dest=PATH")))?;
        Ok(match kind.as_str() {
            "oci" => Self::Oci { dest },
            "oci-dir" => Self::OciDir { dest },
            "docker" => Self::Docker { dest },
            "local" => Self::Local { dest },
            "tar" => Self::Tar { dest },
            other => {
                return Err(err(format!(
                    "unknown output type {other:?} (known: oci, oci-dir, docker, local, tar)"
                )));
            }
        })
    }
}

/// Errors writing an output.
#[derive(Debug, thiserror::Error)]
#[error("writing output {dest}: {message}")]
pub struct OutputError {
    /// Destination.
    pub dest: PathBuf,
    /// What went wrong.
    pub message: String,
}

fn oerr(dest: &Path) -> impl Fn(String) -> OutputError + '_ {
    move |message| OutputError {
        dest: dest.to_path_buf(),
        message,
    }
}

impl OutputSpec {
    /// Checks an output before the build starts. A `local` destination must not exist or be an
    /// empty directory: layers carry whiteouts, and applying them onto a directory holding other
    /// files would delete those files.
    pub fn check(&self) -> Result<(), OutputError> {
        if let Self::Local { dest } = self {
            match std::fs::read_dir(dest) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        return Err(oerr(dest)(
                            "the directory is not empty; -o type=local writes a whole file system \
                             into an empty or new directory"
                                .into(),
                        ));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(oerr(dest)(e.to_string())),
            }
        }
        Ok(())
    }
}

/// Writes one output of an assembled image.
pub fn write(
    store: &Store,
    img: &Assembled,
    names: &[String],
    spec: &OutputSpec,
    epoch: u64,
    attached: Option<&crate::attest::Attached>,
) -> Result<(), OutputError> {
    let opts = ExportOptions { epoch };
    let image = |dest: &Path| {
        ImageRef::load(&store.content, img.manifest_descriptor.clone(), names)
            .map_err(|e| oerr(dest)(e.to_string()))
    };
    // OCI layouts carry the attestations (an index over the image and its attestation
    // manifest and referrers); a docker archive or a file system cannot.
    let attested = |dest: &Path| {
        let i = image(dest)?;
        Ok::<_, OutputError>(match attached {
            Some(a) => {
                let mut blobs = a.manifests.clone();
                blobs.extend(a.blobs.iter().cloned());
                i.with_attachments(a.index.clone(), a.index_bytes.clone(), blobs)
                    .with_attachment_bytes(a.blob_bytes.clone())
            }
            None => i,
        })
    };
    match spec {
        OutputSpec::Oci { dest } => export_oci_tar(&store.content, &attested(dest)?, dest, &opts)
            .map_err(|e| oerr(dest)(e.to_string())),
        OutputSpec::OciDir { dest } => export_oci_dir(&store.content, &attested(dest)?, dest)
            .map_err(|e| oerr(dest)(e.to_string())),
        OutputSpec::Docker { dest } => {
            export_docker_archive(&store.content, &image(dest)?, dest, &opts)
                .map_err(|e| oerr(dest)(e.to_string()))
        }
        OutputSpec::Local { dest } => flatten(store, img, dest),
        // Pushed by the builder, which holds the registry client.
        OutputSpec::Registry { reference } => Err(oerr(Path::new(reference))(
            "a registry output is pushed by the builder".into(),
        )),
        OutputSpec::Tar { dest } => {
            let parent = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = tempdir_in(parent).map_err(|e| oerr(dest)(e.to_string()))?;
            let r = (|| {
                flatten(store, img, &tmp)?;
                // A fresh name, created exclusively: never an existing file or a symlink
                // someone else put there.
                let part = dest.with_extension(format!(
                    "kiln-partial-{}",
                    crate::store::content::random_hex()
                ));
                let file = std::fs::File::options()
                    .write(true)
                    .create_new(true)
                    .open(&part)
                    .map_err(|e| oerr(dest)(e.to_string()))?;
                let mut w = std::io::BufWriter::new(file);
                write_layer(&tmp, &mut w, &LayerOptions { epoch })
                    .map_err(|e| oerr(dest)(e.to_string()))?;
                let f = w.into_inner().map_err(|e| oerr(dest)(e.to_string()))?;
                f.sync_all().map_err(|e| oerr(dest)(e.to_string()))?;
                std::fs::rename(&part, dest).map_err(|e| oerr(dest)(e.to_string()))
            })();
            let _ = std::fs::remove_dir_all(&tmp);
            r
        }
    }
}

/// Writes an OCI archive output (`type=oci`) of an image whose attestations are being made:
/// its own blobs now, the rest once `attached` gives the attachments, and it is put in place
/// once `stored` says they are in the content store (see
/// [`crate::oci::export::export_oci_tar_staged`]); an `Err` from either leaves nothing at
/// `dest`. The archive is the one [`write`] makes with the same attachments.
pub fn write_oci_staged(
    store: &Store,
    img: &Assembled,
    names: &[String],
    dest: &Path,
    epoch: u64,
    attached: impl FnOnce() -> Result<crate::attest::Attached, String>,
    stored: impl FnOnce() -> Result<(), String>,
) -> Result<(), OutputError> {
    let image = ImageRef::load(&store.content, img.manifest_descriptor.clone(), names)
        .map_err(|e| oerr(dest)(e.to_string()))?;
    let rest = {
        let image = image.clone();
        move || {
            let a = attached()?;
            let mut blobs = a.manifests.clone();
            blobs.extend(a.blobs.iter().cloned());
            Ok(image
                .with_attachments(a.index.clone(), a.index_bytes.clone(), blobs)
                .with_attachment_bytes(a.blob_bytes.clone()))
        }
    };
    export_oci_tar_staged(
        &store.content,
        &image,
        dest,
        &ExportOptions { epoch },
        rest,
        stored,
    )
    .map_err(|e| oerr(dest)(e.to_string()))
}

/// Applies the image's layers, bottom first, onto `dest` (whiteouts remove files).
fn flatten(store: &Store, img: &Assembled, dest: &Path) -> Result<(), OutputError> {
    OutputSpec::Local {
        dest: dest.to_path_buf(),
    }
    .check()?;
    std::fs::create_dir_all(dest).map_err(|e| oerr(dest)(e.to_string()))?;
    for layer in &img.manifest.layers {
        let blob = store
            .content
            .open_blob(&layer.digest)
            .map_err(|e| oerr(dest)(e.to_string()))?;
        let reader =
            decompress(std::io::BufReader::new(blob)).map_err(|e| oerr(dest)(e.to_string()))?;
        apply_layer(reader, dest, ApplyMode::Flatten).map_err(|e| oerr(dest)(e.to_string()))?;
    }
    Ok(())
}

fn tempdir_in(parent: &Path) -> std::io::Result<PathBuf> {
    // Random and created with mkdir (not `create_dir_all`): a leftover or a planted directory
    // or symlink of the same name makes this fail instead of being used.
    let p = parent.join(format!(".kiln-tar-{}", crate::store::content::random_hex()));
    std::fs::create_dir(&p)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs_parse_like_buildx() {
        assert_eq!(
            OutputSpec::parse("type=oci,dest=x.tar"),
            Ok(OutputSpec::Oci {
                dest: "x.tar".into()
            })
        );
        assert_eq!(
            OutputSpec::parse("out"),
            Ok(OutputSpec::Local { dest: "out".into() })
        );
        assert!(OutputSpec::parse("type=nope,dest=x").is_err());
        assert!(OutputSpec::parse("type=oci").is_err());
        assert!(OutputSpec::parse("type=oci,dest=x,color=red").is_err());
    }
}
