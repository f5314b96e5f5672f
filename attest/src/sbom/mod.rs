//! Software bill of materials: catalogers over the final file system, SPDX 2.3 and CycloneDX 1.6
//! output.
//!
//! The file system comes in as a [`FileTree`]: the engine implements it over the image's layers
//! (without mounting anything), the tests over a plain directory.

use std::io;

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
}
