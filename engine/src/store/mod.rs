//! The store under kiln's root directory (`--root`, `KILN_ROOT`, default `/var/lib/kiln`):
//!
//! ```text
//! ROOT/content/blobs/sha256/<hex>   content store: immutable blobs named by their digest
//! ROOT/content/ingest/              temp files being written (fsync → rename into blobs/)
//! ROOT/snapshots/<id>/              one immutable layer directory per step result (overlay format)
//! ROOT/snapshots/.tmp/              layer directories being written by running steps
//! ROOT/cache-mounts/<t>/<i>/<n>/   RUN --mount=type=cache directories: t = sha256(tenant),
//!                                   i = sha256(id), n = instance (see `cache_mounts`)
//! ROOT/meta.redb                    metadata: cache records, layers, images (one ACID database)
//! ROOT/lock                         exclusive lock: one kiln process uses a root at a time
//! ROOT/secret-mac.key               32 random bytes (0600), made the first time a step mounts
//!                                   a secret: the key of the secrets' MACs in cache keys
//!                                   (`ops::secrets`)
//! ```
//!
//! Invariant: a committed metadata record points only at blobs and snapshot directories that
//! are already durable. Everything a build writes is staged and committed in one transaction
//! when the build succeeds; a failed or interrupted build leaves committed records unchanged
//! and at most unreferenced files behind, which `kiln prune` removes.

pub mod cache_mounts;
pub mod content;
pub mod fsck;
pub mod meta;
pub mod snapshot;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

pub use cache_mounts::{CacheLease, CacheMountError, CacheMounts, NewCacheDir};
pub use content::ContentStore;
pub use meta::{
    CacheRecord, CopyReuse, ImageRecord, LayerBlob, LayerRecord, MetaStore, StagedRecords,
};
pub use snapshot::{SnapshotId, Snapshots};

/// Errors opening or using the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system operation on the store failed.
    #[error("store: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The metadata database failed.
    #[error("store metadata: {0}")]
    Db(#[from] Box<redb::Error>),
    /// A metadata record could not be decoded.
    #[error("store metadata record {key:?} is corrupt: {source}")]
    Corrupt {
        /// The record key.
        key: String,
        /// The decode error.
        source: serde_json::Error,
    },
    /// Data did not match its expected digest.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The expected digest.
        expected: crate::Digest,
        /// The computed digest.
        actual: crate::Digest,
    },
    /// A blob is missing from the content store.
    #[error("blob {0} not found in the content store")]
    BlobNotFound(crate::Digest),
    /// Another kiln process holds the store.
    #[error("store {0} is in use by another kiln process")]
    Locked(PathBuf),
    /// The directory is neither empty nor a kiln store.
    #[error("{0} is not empty and not a kiln store; choose an empty or new directory for --root")]
    NotAStore(PathBuf),
    /// The cache-mount directories failed.
    #[error(transparent)]
    CacheMount(#[from] CacheMountError),
    /// The store directory belongs to another user.
    #[error("store {0} is not owned by the user running kiln; refusing to use it")]
    NotOwned(PathBuf),
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        Self::Db(Box::new(e))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { Self::Db(Box::new(e.into())) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Adds path context to an io::Error.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The whole store: content, snapshots and metadata under one root.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Blobs by digest.
    pub content: ContentStore,
    /// Layer directories.
    pub snapshots: Snapshots,
    /// Metadata database.
    pub meta: MetaStore,
    /// `RUN --mount=type=cache` directories.
    pub cache_mounts: CacheMounts,
    _lock: File,
}

impl Store {
    /// The default root when neither `--root` nor `KILN_ROOT` is given.
    pub const DEFAULT_ROOT: &'static str = "/var/lib/kiln";

    /// Whether the content store and the layer directories are on one file system, so that
    /// [`Snapshots::sync`] (a `syncfs`) makes content store writes durable too.
    pub(crate) fn content_beside_layers(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (
            fs::metadata(self.content.blobs_dir()),
            fs::metadata(self.snapshots.dir()),
        ) {
            (Ok(a), Ok(b)) => a.dev() == b.dev(),
            _ => false,
        }
    }

    /// Opens (creating if needed) the store at `root`, taking its exclusive lock.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(root).map_err(io_err("create", root))?;
        // Layers hold untrusted content as root wrote it (setuid files, device nodes, 1777
        // directories): no other user may reach them. The root is owner-only whatever the
        // umask, and must belong to whoever runs kiln.
        // Never take over (and chmod) a directory that is something else, such as /tmp or $HOME.
        let is_store = root.join("meta.redb").exists();
        let is_empty = fs::read_dir(root)
            .map_err(io_err("read", root))?
            .next()
            .is_none();
        if !is_store && !is_empty {
            return Err(StoreError::NotAStore(root.into()));
        }
        let md = fs::metadata(root).map_err(io_err("stat", root))?;
        if std::os::unix::fs::MetadataExt::uid(&md) != rustix::process::geteuid().as_raw() {
            return Err(StoreError::NotOwned(root.into()));
        }
        fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_err("chmod", root))?;
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(StoreError::Locked(root.into())),
            Err(e) => return Err(io_err("lock", &lock_path)(e.into())),
        }
        let content = ContentStore::open(&root.join("content"))?;
        let snapshots = Snapshots::open(&root.join("snapshots"))?;
        let meta = MetaStore::open(&root.join("meta.redb"))?;
        let cache_mounts = CacheMounts::open(&root.join("cache-mounts"))?;
        Ok(Self {
            root: root.to_path_buf(),
            content,
            snapshots,
            meta,
            cache_mounts,
            _lock: lock,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Total size in bytes of the regular files under `path` (not following symlinks).
pub fn tree_size(path: &Path) -> u64 {
    tree_size_once(path, &mut std::collections::HashSet::new())
}

/// [`tree_size`], counting a file with several links only if its inode is not in `seen`
/// (which it joins): the size on disk of trees that share inodes, such as layers a COPY
/// hard-linked files between.
pub fn tree_size_once(path: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            let Ok(md) = entry.metadata() else { continue };
            if md.is_dir() {
                stack.push(entry.path());
            } else if md.is_file() && (md.nlink() <= 1 || seen.insert((md.dev(), md.ino()))) {
                total += md.len();
            }
        }
    }
    total
}
