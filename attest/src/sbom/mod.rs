//! Software bill of materials: catalogers over the final file system, SPDX 2.3 and CycloneDX 1.6
//! output.
//!
//! The file system comes in as a [`FileTree`]: the engine implements it over the image's layers
//! (without mounting anything), the tests and `kiln sbom DIR` over a plain directory
//! ([`DirTree`]).
//!
//! Two phases, as for export: [`catalog`] reads the tree once into a format-neutral [`Sbom`]
//! (every list sorted, so the same tree gives the same value); [`spdx_json`] and
//! [`cyclonedx_json`] render it as canonical JSON bytes with a [`DocumentInfo`] and no clock or
//! randomness, so the same inputs give the same bytes ([`to_spdx`] and [`to_cyclonedx`] give
//! the same documents as `serde_json` values). [`validate_spdx`] and [`validate_cyclonedx`] check a document
//! against the official JSON schemas, read from a directory at run time.
//!
//! Everything in the tree is untrusted: catalogers cap what they read
//! ([`limits`]), never follow a symlink, and turn malformed package data into
//! [`Sbom::notes`] rather than errors or panics.

use std::io;

mod catalog;
mod cyclonedx;
mod dir;
mod license;
mod model;
mod purl;
mod spdx;
mod summary;
#[cfg(feature = "schema-validation")]
mod validate;

pub use catalog::{FactsCache, FileFacts, catalog, catalog_with, limits};
pub use cyclonedx::{CYCLONEDX_SPEC_VERSION, cyclonedx_json, to_cyclonedx};
pub use dir::DirTree;
pub use license::is_spdx_license_id;
pub use model::{Distro, DocumentInfo, FileDigest, Package, PackageKind, Sbom, rfc3339};
pub use spdx::{NAMESPACE_PREFIX as SPDX_NAMESPACE_PREFIX, SPDX_VERSION, spdx_json, to_spdx};
pub use summary::{Summary, SummaryPackage};
#[cfg(feature = "schema-validation")]
pub use validate::{CYCLONEDX_1_6_SCHEMA, validate_cyclonedx, validate_spdx};

/// Why a file system could not be catalogued. Malformed package data is not an error: the
/// package is skipped and a note recorded in [`Sbom::notes`]; these are failures to read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SbomError {
    /// The tree's entries could not be listed.
    #[error("listing the file system: {source}")]
    Entries {
        /// The underlying error.
        source: io::Error,
    },
    /// A regular file listed by the tree could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// Path in the image.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// What kind of entry a [`FileEntry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A device, fifo or socket.
    Other,
}

/// One entry of the final file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Absolute path inside the image, `/`-separated, no `.` or `..` (`/usr/bin/busybox`).
    pub path: String,
    /// Kind.
    pub kind: EntryKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes (regular files).
    pub size: u64,
}

/// A read-only view of an image's final file system. Implementations never follow a symlink
/// out of the view's root.
pub trait FileTree {
    /// Every entry (files, directories, symlinks, others), sorted by path.
    fn entries(&self) -> io::Result<Vec<FileEntry>>;
    /// The content of the regular file at `path` (an absolute path as in [`FileEntry::path`]),
    /// streamed. A symlink is not followed; a missing file is `ErrorKind::NotFound`.
    fn open(&self, path: &str) -> io::Result<Box<dyn io::Read + '_>>;
    /// The target of the symlink at `path`, as stored (relative or absolute), without
    /// following anything. Used to attribute files listed under a symlinked directory (a
    /// usrmerged `/lib` → `usr/lib`) to their package; resolution stays inside the tree. The
    /// default says `ErrorKind::Unsupported`, and files are then matched by literal path only.
    fn read_link(&self, path: &str) -> io::Result<String> {
        let _ = path;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}
