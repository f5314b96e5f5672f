//! File steps (COPY, ADD of local files, WORKDIR's mkdir) done by the engine in userspace.
//!
//! A step reads a source [`LayerView`] and the destination's current merged view, and writes
//! only into a fresh, empty upper directory that becomes the step's diff layer: exactly what
//! overlayfs copy-up would have produced had the step run on a mount. Nothing here follows a
//! symlink on the host: views resolve links inside their root ([`crate::fsview`]) and the upper
//! directory is walked with `O_NOFOLLOW` ([`upper`]).
//!
//! The COPY semantics follow BuildKit's Dockerfile frontend and fsutil's copier
//! (`CopyDirContentsOnly`, `AllowWildcard`, `AllowEmptyWildcard`, `CreateDestPath`,
//! `FollowSymlinks` for the top-level source, `AttemptUnpack` for ADD).

mod copy;
mod digest;
mod unpack;
pub(crate) mod upper;
mod user;

use std::io;
use std::path::Path;

use thiserror::Error;

pub use copy::{Reuse, copy, copy_knowing, copy_reusing};
pub use digest::{FileHash, FileHashCache, FileKey, content_digest, content_digest_cached};
pub use user::resolve_user;

use crate::frontend::dockerignore::DockerIgnoreError;
use crate::fsview::{FileKind, FsViewError, LayerView, lexical_clean};
use upper::{NewDir, Upper};

/// One COPY/ADD of local files, with its words already variable-expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyRequest {
    /// Source paths in the source view; may contain wildcards when `allow_wildcard`.
    pub sources: Vec<String>,
    /// Destination: absolute, or relative to `workdir`. A trailing `/` makes it a directory.
    pub dest: String,
    /// The stage's working directory.
    pub workdir: String,
    /// `--chown`, already resolved to ids ([`resolve_user`]).
    pub chown: Option<(u32, u32)>,
    /// `--chmod` permission bits.
    pub chmod: Option<u32>,
    /// Keep the sources' uid/gid (COPY `--from` another stage); context files get 0:0.
    pub keep_owner: bool,
    /// `--parents`: keep the source's parent directories (a `/./` marks the pivot).
    pub parents: bool,
    /// `--exclude` patterns (`.dockerignore` syntax), relative to each copied source.
    pub excludes: Vec<String>,
    /// ADD of a local archive: extract tar (plain, gzip, zstd) sources into `dest`.
    pub unpack: bool,
    /// Expand `*`, `?`, `[...]` per path component (Go `filepath.Match`).
    pub allow_wildcard: bool,
    /// A wildcard matching nothing is not an error.
    pub allow_empty_wildcard: bool,
}

/// What a file step wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files written.
    pub files: u64,
    /// Of those, files hard-linked from an earlier layer ([`copy_reusing`]).
    pub linked: u64,
    /// Directories created (not counting copied-up parents).
    pub dirs: u64,
    /// Symlinks written.
    pub symlinks: u64,
    /// Hard links made instead of copies.
    pub hardlinks: u64,
    /// Device nodes and fifos.
    pub nodes: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Archives extracted.
    pub archives: u64,
    /// With a [`FileHashCache`] ([`copy_knowing`]): every regular file written (copied or
    /// hard-linked), in the order written, as `(path in the destination, content)` when the
    /// cache knew the source's content, else `(path, None)`. The last entry of a path is what
    /// the path holds. Empty without a cache.
    pub known: Vec<(String, Option<KnownContent>)>,
}

/// The content of a file a COPY wrote, as the file-hash cache knew it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownContent {
    /// The identity of the source file it was copied from.
    pub source: FileKey,
    /// SHA-256 of the content.
    pub sha256: crate::digest::Digest,
    /// SHA-1 of the content.
    pub sha1: [u8; 20],
    /// Bytes of content.
    pub size: u64,
}

/// Errors of file steps.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FileOpError {
    /// Reading a view failed.
    #[error(transparent)]
    View(#[from] FsViewError),
    /// An `--exclude` pattern or wildcard is malformed.
    #[error("invalid pattern: {source}")]
    Pattern {
        /// The pattern error.
        #[from]
        source: DockerIgnoreError,
    },
    /// COPY without sources.
    #[error("COPY requires at least one source")]
    NoSources,
    /// Several sources (or wildcard matches) into a destination without a trailing `/`.
    #[error(
        "When using COPY with more than one source file, the destination must be a directory and end with a / (destination {dest:?})"
    )]
    DestMustBeDirectory {
        /// The destination as written.
        dest: String,
    },
    /// A source path does not exist in the source view.
    #[error(
        "failed to compute cache key: failed to calculate checksum of ref: {path:?}: not found"
    )]
    SourceNotFound {
        /// The source as written.
        path: String,
    },
    /// A directory would be copied onto an existing non-directory.
    #[error("cannot copy to non-directory: {path}")]
    CannotCopyToNonDirectory {
        /// The destination path.
        path: String,
    },
    /// A non-directory would replace a directory written earlier in this step.
    #[error("cannot overwrite directory {path} with a non-directory")]
    CannotOverwriteDirectory {
        /// The destination path.
        path: String,
    },
    /// A parent needed in upper is a non-directory written earlier in this step.
    #[error("{path} is not a directory")]
    UpperNotADirectory {
        /// The path inside the destination.
        path: String,
    },
    /// Writing the upper directory failed.
    #[error("writing {path} in the upper directory: {source}")]
    Upper {
        /// The path inside the destination.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// Reading a source file's content failed.
    #[error("reading source {path}: {source}")]
    ReadSource {
        /// The source path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// An archive entry would land outside the destination.
    #[error("archive {archive}: entry {entry:?} escapes the destination ({reason})")]
    ArchiveEscape {
        /// The archive's source path.
        archive: String,
        /// The entry name.
        entry: String,
        /// How.
        reason: &'static str,
    },
    /// An archive could not be read.
    #[error("archive {archive}: malformed or unreadable")]
    Archive {
        /// The archive's source path.
        archive: String,
        /// The error.
        source: io::Error,
    },
    /// An archive compression kiln does not decode.
    #[error("archive {archive}: {format} compression is not supported")]
    UnsupportedArchive {
        /// The archive's source path.
        archive: String,
        /// The compression.
        format: &'static str,
    },
    /// `--chown`/`USER` names a user absent from `/etc/passwd`.
    #[error("unable to find user {name}: no matching entries in passwd file")]
    UnknownUser {
        /// The user name.
        name: String,
    },
    /// `--chown`/`USER` names a group absent from `/etc/group`.
    #[error("unable to find group {name}: no matching entries in group file")]
    UnknownGroup {
        /// The group name.
        name: String,
    },
    /// An empty or malformed `user[:group]`.
    #[error("invalid user specification {spec:?}")]
    BadUserSpec {
        /// The specification.
        spec: String,
    },
    /// WORKDIR names an existing non-directory.
    #[error("mkdir {path}: not a directory")]
    NotADirectory {
        /// The resolved path.
        path: String,
    },
}

/// `path` made absolute against `workdir` (`path.Join("/", workdir, path)`), lexically clean.
pub fn absolute_path(path: &str, workdir: &str) -> String {
    if path.starts_with('/') {
        lexical_clean(path)
    } else {
        lexical_clean(&format!("/{workdir}/{path}"))
    }
}

/// `mkdir -p` for WORKDIR: creates `path` (absolute or relative to `workdir`) with copy-up of
/// existing parents, missing directories 0755 owned by `owner` (else 0:0). Symlinks in the
/// destination view are followed inside its root. Returns whether anything was written.
pub fn mkdir(
    path: &str,
    workdir: &str,
    owner: Option<(u32, u32)>,
    dest: &LayerView,
    upper: &Path,
) -> Result<bool, FileOpError> {
    let resolved = dest.resolve_for_write(&absolute_path(path, workdir))?;
    match resolved.entry().map(|e| e.metadata().kind) {
        Some(FileKind::Dir) => return Ok(false),
        Some(_) => {
            return Err(FileOpError::NotADirectory {
                path: resolved.path(),
            });
        }
        None => {}
    }
    let up = Upper::open(upper, dest)?;
    let (uid, gid) = owner.unwrap_or((0, 0));
    let (_, created) = up.dir(
        resolved.components(),
        NewDir {
            mode: 0o755,
            uid,
            gid,
        },
    )?;
    Ok(created)
}
