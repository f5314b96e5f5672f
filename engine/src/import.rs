//! `--build-context NAME=oci-layout://…` and `docker-archive://…`: images from files, imported
//! into the content store blob by blob (each verified against its digest) so a `FROM NAME` can
//! use them like any other image.

use std::io::{self, Read};
use std::path::Path;

use crate::Digest;
use crate::frontend::convert::ResolvedImage;
use crate::oci::import::{ImportError, IngestError, import_docker_archive, import_oci_layout};
use crate::oci::types::Descriptor;
use crate::store::Store;

fn ingest_into(
    store: &Store,
) -> impl FnMut(&Descriptor, &mut dyn Read) -> Result<(), IngestError> + '_ {
    move |desc, reader| {
        if store.content.contains(&desc.digest) {
            // Already stored (and named by its digest); the importer still verifies the
            // stream, so read it to the end.
            io::copy(reader, &mut io::sink())?;
            return Ok(());
        }
        store
            .content
            .ingest(reader, Some(desc.digest))
            .map(|_| ())
            .map_err(|e| Box::new(e) as IngestError)
    }
}

fn resolved(img: crate::oci::import::ImportedImage) -> ResolvedImage {
    ResolvedImage {
        manifest: img.manifest_digest,
        config: img.config,
        layers: img.layers,
    }
}

/// Imports an OCI image layout (directory or tar), optionally selecting a manifest by digest.
pub fn oci_layout(
    store: &Store,
    path: &Path,
    digest: Option<&Digest>,
) -> Result<ResolvedImage, ImportError> {
    let mut ingest = ingest_into(store);
    import_oci_layout(path, digest, &mut ingest).map(resolved)
}

/// Imports a `docker save` archive.
pub fn docker_archive(store: &Store, path: &Path) -> Result<ResolvedImage, ImportError> {
    let mut ingest = ingest_into(store);
    import_docker_archive(path, &mut ingest).map(resolved)
}
