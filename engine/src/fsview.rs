//! A userspace overlay: a read-only view of a stack of layer directories in overlayfs format,
//! resolved without mounts and without ever following a symlink on the host.
//!
//! A layer may hold whiteouts (a char device 0/0, or a file with the xattr
//! `trusted.overlay.whiteout`) hiding lower entries, and opaque directories
//! (`trusted.overlay.opaque=y`) hiding lower contents. Only the `trusted.*` names count, as in
//! the kernel's overlay as kiln mounts it (a step can set `user.overlay.*` itself). A single plain directory (the build context, a bind source) is a view with one layer and
//! no whiteouts; [`context_view`] additionally hides what `.dockerignore` excludes.
//!
//! # Why no host symlink is ever followed
//!
//! Every host file system access goes through one of these, and nothing else:
//! 1. opening a layer's root directory, a path the engine itself chose (not build input);
//! 2. `openat(dirfd, name, O_NOFOLLOW | ...)`, `statat(dirfd, name, AT_SYMLINK_NOFOLLOW)` or
//!    `readlinkat(dirfd, name)` where `dirfd` was obtained the same way and `name` is a single
//!    path component: it never contains `/` and is never `.` or `..` (paths are split into
//!    components here, and `.`/`..` are interpreted by [`LayerView::resolve`] itself against the
//!    view's root, exactly like `openat2(RESOLVE_IN_ROOT)`).
//!
//! `O_NOFOLLOW` makes the kernel refuse (`ELOOP`/`ENOTDIR` with `O_DIRECTORY`) to traverse a
//! symlink in the last — and here only — component, so a symlink in a layer is only ever read
//! with `readlinkat` and interpreted inside the view.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use thiserror::Error;

use crate::frontend::dockerignore::DockerIgnore;

/// Maximum number of symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINKS: usize = 40;

/// Errors reading a [`LayerView`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FsViewError {
    /// A layer directory could not be opened.
    #[error("cannot open layer {layer}")]
    OpenLayer {
        /// The layer directory.
        layer: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An entry could not be read.
    #[error("cannot read {path:?} in layer {layer}")]
    Read {
        /// Path inside the view.
        path: String,
        /// The layer directory.
        layer: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Resolving followed more than [`MAX_SYMLINKS`] symlinks.
    #[error("too many levels of symbolic links resolving {path:?}")]
    SymlinkLoop {
        /// The path being resolved.
        path: String,
    },
    /// A path component that must be a directory is not one.
    #[error("{path:?} is not a directory")]
    NotADirectory {
        /// The offending path inside the view.
        path: String,
    },
    /// The path does not exist in the view.
    #[error("{path:?} not found")]
    NotFound {
        /// The path inside the view.
        path: String,
    },
    /// The entry is not of the kind the operation needs (e.g. `open` of a directory).
    #[error("{path:?} is a {found:?}, expected a {expected:?}")]
    WrongKind {
        /// The path inside the view.
        path: String,
        /// What it is.
        found: FileKind,
        /// What was needed.
        expected: FileKind,
    },
    /// A file name in a layer is not UTF-8 (Dockerfile paths are strings).
    #[error("non-UTF-8 file name under {dir:?}")]
    NonUtf8Name {
        /// The directory holding it.
        dir: String,
    },
}

/// The kind of a file system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
}

/// What `lstat` says about an entry, reduced to what file steps need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The kind.
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: i64,
    /// Device number (devices only).
    pub rdev: u64,
    /// Link count.
    pub nlink: u64,
    /// Host device and inode (hard link detection within one layer).
    pub dev_ino: (u64, u64),
    /// Status change time (seconds, nanoseconds): changes whenever content or metadata does,
    /// and cannot be set by users, so it keys the file-hash cache.
    pub ctime: (i64, i64),
}

impl Metadata {
    /// The kind encoded in a raw `st_mode`.
    pub(crate) fn kind_of_mode(mode: u32) -> FileKind {
        match FileType::from_raw_mode(mode) {
            FileType::Directory => FileKind::Dir,
            FileType::Symlink => FileKind::Symlink,
            FileType::CharacterDevice => FileKind::CharDevice,
            FileType::BlockDevice => FileKind::BlockDevice,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
            _ => FileKind::File,
        }
    }

    /// Metadata of an entry not read from disk: owned by root, times and ids zero.
    pub(crate) fn synthetic(kind: FileKind, mode: u32, size: u64) -> Self {
        Self {
            kind,
            mode,
            uid: 0,
            gid: 0,
            size,
            mtime_sec: 0,
            mtime_nsec: 0,
            rdev: 0,
            nlink: 1,
            dev_ino: (0, 0),
            ctime: (0, 0),
        }
    }

    // `Stat` field types differ between architectures; the conversions are no-ops on some.
    #[allow(clippy::useless_conversion)]
    pub(crate) fn from_stat(st: &Stat) -> Self {
        Self {
            kind: Self::kind_of_mode(st.st_mode),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_sec: i64::try_from(st.st_mtime).unwrap_or(0),
            mtime_nsec: i64::try_from(st.st_mtime_nsec).unwrap_or(0),
            rdev: st.st_rdev,
            nlink: u64::try_from(st.st_nlink).unwrap_or(1),
            dev_ino: (st.st_dev, st.st_ino),
            ctime: (
                i64::try_from(st.st_ctime).unwrap_or(0),
                i64::try_from(st.st_ctime_nsec).unwrap_or(0),
            ),
        }
    }
}

/// One entry of the merged view.
#[derive(Debug, Clone)]
pub struct Entry {
    components: Vec<String>,
    layer: usize,
    meta: Metadata,
    /// For directories: the layers contributing to it, top → bottom.
    dir_layers: Vec<usize>,
}

/// The directory [`LayerView::open_entry_reusing`] opened last: its layer, its components and
/// the open directory (walked without following a symlink, like every walk here).
#[derive(Debug)]
pub(crate) struct LastParent {
    layer: usize,
    components: Vec<String>,
    fd: OwnedFd,
}

impl Entry {
    /// The absolute path inside the view (`/` for the root).
    pub fn path(&self) -> String {
        join_abs(&self.components)
    }
    /// The path's components.
    pub fn components(&self) -> &[String] {
        &self.components
    }
    /// The entry's file name (empty for the root).
    pub fn name(&self) -> &str {
        self.components.last().map_or("", String::as_str)
    }
    /// Its metadata (of the entry itself, not of a symlink's target).
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }
    /// Index (bottom = 0) of the layer the entry comes from.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// The regular file at `path` (absolute) of layer `layer`, as a merge of per-layer
    /// listings found it (only what opening it needs: kind, size and mode).
    pub(crate) fn file_in_layer(path: &str, layer: usize, size: u64, mode: u32) -> Entry {
        Entry {
            components: split(path),
            layer,
            meta: Metadata::synthetic(FileKind::File, mode, size),
            dir_layers: Vec::new(),
        }
    }
}

/// The result of [`LayerView::resolve`]: where a path leads once symlinks are followed inside
/// the root.
#[derive(Debug, Clone)]
pub struct ResolvedPath {
    components: Vec<String>,
    entry: Option<Entry>,
}

impl ResolvedPath {
    /// The resolved absolute path inside the view.
    pub fn path(&self) -> String {
        join_abs(&self.components)
    }
    /// The resolved components.
    pub fn components(&self) -> &[String] {
        &self.components
    }
    /// The entry there; `None` only from [`LayerView::resolve_for_write`] when it is missing.
    pub fn entry(&self) -> Option<&Entry> {
        self.entry.as_ref()
    }
}

/// An open directory of the merged view: one fd per contributing layer, top → bottom.
pub(crate) struct DirHandle {
    components: Vec<String>,
    fds: Vec<(usize, OwnedFd)>,
}

impl DirHandle {
    /// How many fds it holds open.
    pub(crate) fn open_fds(&self) -> usize {
        self.fds.len()
    }
}

/// A read-only, userspace-merged view of layer directories (bottom → top).
#[derive(Debug, Clone)]
pub struct LayerView {
    layers: Vec<PathBuf>,
    overlay: bool,
    filter: Option<DockerIgnore>,
}

/// The build context at `dir`, with every path `ignore` excludes absent from the view (an
/// excluded directory stays visible only as the parent of a re-included entry).
pub fn context_view(dir: impl Into<PathBuf>, ignore: &DockerIgnore) -> LayerView {
    LayerView {
        layers: vec![dir.into()],
        overlay: false,
        filter: (!ignore.is_empty()).then(|| ignore.clone()),
    }
}

impl LayerView {
    /// A view of overlayfs-format layers, bottom → top.
    pub fn new(layers: Vec<PathBuf>) -> Self {
        Self {
            layers,
            overlay: true,
            filter: None,
        }
    }

    /// One plain directory: no whiteouts, no filter.
    pub fn plain(dir: impl Into<PathBuf>) -> Self {
        Self {
            layers: vec![dir.into()],
            overlay: false,
            filter: None,
        }
    }

    /// The layer directories, bottom → top.
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    /// The entry at `path` without following any symlink (an intermediate symlink or file
    /// means "not found"); `..` is clamped lexically at the root.
    pub fn lookup(&self, path: &str) -> Result<Option<Entry>, FsViewError> {
        let (mut dir, mut entry) = self.root()?;
        let comps = split(&lexical_clean(path));
        for (i, name) in comps.iter().enumerate() {
            let Some(child) = self.child(&dir, name)? else {
                return Ok(None);
            };
            if i + 1 < comps.len() {
                if child.meta.kind != FileKind::Dir {
                    return Ok(None);
                }
                dir = self.child_dir(&dir, &child)?;
            }
            entry = child;
        }
        Ok(Some(entry))
    }

    /// Resolves `path` like `openat2(RESOLVE_IN_ROOT)`: absolute symlink targets start at the
    /// view's root, `..` never leaves it. The last component is followed when `follow_last`.
    /// `Ok(None)` when something on the way does not exist.
    pub fn resolve(
        &self,
        path: &str,
        follow_last: bool,
    ) -> Result<Option<ResolvedPath>, FsViewError> {
        let r = self.resolve_inner(path, follow_last, false)?;
        Ok(r.entry.is_some().then_some(r))
    }

    /// Like [`resolve`](Self::resolve), but a missing tail is kept literally (for a path about
    /// to be created): the result has no entry when the target does not exist.
    pub fn resolve_for_write(&self, path: &str) -> Result<ResolvedPath, FsViewError> {
        self.resolve_inner(path, true, true)
    }

    /// `stat`: metadata of what `path` leads to, symlinks followed inside the root.
    pub fn metadata(&self, path: &str) -> Result<Metadata, FsViewError> {
        self.must(path, true).map(|e| e.meta)
    }

    /// `lstat`: metadata of the entry itself.
    pub fn symlink_metadata(&self, path: &str) -> Result<Metadata, FsViewError> {
        self.must(path, false).map(|e| e.meta)
    }

    /// Opens the regular file `path` leads to for reading.
    pub fn open(&self, path: &str) -> Result<File, FsViewError> {
        let e = self.must(path, true)?;
        self.open_entry(&e)
    }

    /// The target of the symlink at `path` (the last component is not followed).
    pub fn read_link(&self, path: &str) -> Result<String, FsViewError> {
        let e = self.must(path, false)?;
        self.read_link_entry(&e)
    }

    /// The merged, sorted entries of the directory `path` leads to.
    pub fn read_dir(&self, path: &str) -> Result<Vec<Entry>, FsViewError> {
        let e = self.must(path, true)?;
        let dir = self.open_dir(&e)?;
        self.read_dir_handle(&dir)
    }

    /// Opens a regular file entry for reading.
    pub fn open_entry(&self, e: &Entry) -> Result<File, FsViewError> {
        if e.meta.kind != FileKind::File {
            return Err(wrong_kind(e, FileKind::File));
        }
        let parent = self.open_parent(e)?;
        // NONBLOCK: a fifo swapped in for a regular file must not hang the engine.
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = rustix::fs::openat(&parent, e.name(), flags, Mode::empty())
            .map_err(|err| self.read_err(e, err))?;
        Ok(File::from(fd))
    }

    /// [`LayerView::open_entry`], reusing the parent directory the previous call opened when
    /// `e` is in the same directory of the same layer: files read in path order mostly share
    /// their parent, and a walk from the layer's root costs an `openat` and a `close` per
    /// path component. `last` is the caller's, one per sequence of calls.
    pub(crate) fn open_entry_reusing(
        &self,
        e: &Entry,
        last: &mut Option<LastParent>,
    ) -> Result<File, FsViewError> {
        if e.meta.kind != FileKind::File {
            return Err(wrong_kind(e, FileKind::File));
        }
        let n = e.components.len().saturating_sub(1);
        let parent = &e.components[..n];
        let reusable = last
            .as_ref()
            .is_some_and(|l| l.layer == e.layer && l.components == parent);
        if !reusable {
            *last = Some(LastParent {
                layer: e.layer,
                components: parent.to_vec(),
                fd: self.walk_layer(e.layer, parent)?,
            });
        }
        let Some(l) = last.as_ref() else {
            return self.open_entry(e);
        };
        // NONBLOCK: a fifo swapped in for a regular file must not hang the engine.
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = rustix::fs::openat(&l.fd, e.name(), flags, Mode::empty())
            .map_err(|err| self.read_err(e, err))?;
        Ok(File::from(fd))
    }

    /// Opens a regular file entry read by a directory walk, relative to its open parent
    /// directory (no walk from the root).
    pub(crate) fn open_entry_in(&self, parent: &DirHandle, e: &Entry) -> Result<File, FsViewError> {
        if e.meta.kind != FileKind::File {
            return Err(wrong_kind(e, FileKind::File));
        }
        let Some((_, dir)) = parent.fds.iter().find(|(l, _)| *l == e.layer) else {
            return self.open_entry(e);
        };
        // NONBLOCK: a fifo swapped in for a regular file must not hang the engine.
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = rustix::fs::openat(dir, e.name(), flags, Mode::empty())
            .map_err(|err| self.read_err(e, err))?;
        Ok(File::from(fd))
    }

    /// Reads a symlink entry's target.
    pub fn read_link_entry(&self, e: &Entry) -> Result<String, FsViewError> {
        if e.meta.kind != FileKind::Symlink {
            return Err(wrong_kind(e, FileKind::Symlink));
        }
        let parent = self.open_parent(e)?;
        let target = rustix::fs::readlinkat(&parent, e.name(), Vec::new())
            .map_err(|err| self.read_err(e, err))?;
        target
            .into_string()
            .map_err(|_| FsViewError::NonUtf8Name { dir: e.path() })
    }

    /// The extended attributes of a file or directory entry, except overlayfs' own.
    pub fn xattrs(&self, e: &Entry) -> Result<Vec<(String, Vec<u8>)>, FsViewError> {
        let fd = match e.meta.kind {
            FileKind::Dir => self.open_dir_fd(e, e.layer)?,
            FileKind::File => OwnedFd::from(self.open_entry(e)?),
            _ => return Ok(Vec::new()),
        };
        self.xattrs_of(e, &fd)
    }

    /// The extended attributes of an entry already open as `fd`, except overlayfs' own.
    pub(crate) fn xattrs_of(
        &self,
        e: &Entry,
        fd: &impl AsFd,
    ) -> Result<Vec<(String, Vec<u8>)>, FsViewError> {
        let fd = fd.as_fd();
        let size = match rustix::fs::flistxattr_query(fd) {
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(err) => return Err(self.read_err(e, err)),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut names = vec![0u8; size];
        let n = rustix::fs::flistxattr(fd, &mut names[..]).map_err(|err| self.read_err(e, err))?;
        let mut out = Vec::new();
        for raw in names[..n.min(size)].split(|b| *b == 0) {
            let Ok(name) = std::str::from_utf8(raw) else {
                continue;
            };
            if name.is_empty() || is_overlay_xattr(name) {
                continue;
            }
            if let Some(value) = get_xattr(fd, name) {
                out.push((name.to_owned(), value));
            }
        }
        out.sort();
        Ok(out)
    }

    // ---- internals -------------------------------------------------------------------------

    fn must(&self, path: &str, follow: bool) -> Result<Entry, FsViewError> {
        self.resolve(path, follow)?
            .and_then(|r| r.entry)
            .ok_or_else(|| FsViewError::NotFound {
                path: path.to_owned(),
            })
    }

    fn resolve_inner(
        &self,
        path: &str,
        follow_last: bool,
        lenient: bool,
    ) -> Result<ResolvedPath, FsViewError> {
        let (root_dir, root_entry) = self.root()?;
        // Stack of resolved directories (entry, handle); empty = at the root.
        let mut stack: Vec<(Entry, DirHandle)> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        let mut queue: std::collections::VecDeque<String> = split(path).into();
        let mut links = 0usize;
        let mut last: Option<Entry> = None;
        while let Some(name) = queue.pop_front() {
            last = None;
            if name == ".." {
                if missing.pop().is_none() {
                    stack.pop();
                }
                continue;
            }
            if !missing.is_empty() {
                missing.push(name);
                continue;
            }
            let dir = stack.last().map_or(&root_dir, |(_, d)| d);
            let Some(child) = self.child(dir, &name)? else {
                if !lenient {
                    return Ok(ResolvedPath {
                        components: Vec::new(),
                        entry: None,
                    });
                }
                missing.push(name);
                continue;
            };
            let is_last = queue.is_empty();
            match child.meta.kind {
                FileKind::Symlink if !is_last || follow_last => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(FsViewError::SymlinkLoop {
                            path: path.to_owned(),
                        });
                    }
                    let target = self.read_link_entry(&child)?;
                    if target.starts_with('/') {
                        stack.clear();
                    }
                    for comp in split(&target).into_iter().rev() {
                        queue.push_front(comp);
                    }
                }
                FileKind::Dir => {
                    let handle = self.child_dir(dir, &child)?;
                    stack.push((child, handle));
                }
                _ if is_last => last = Some(child),
                _ => {
                    return Err(FsViewError::NotADirectory { path: child.path() });
                }
            }
        }
        let mut components: Vec<String> = match stack.last() {
            Some((e, _)) => e.components.clone(),
            None => Vec::new(),
        };
        let entry = if !missing.is_empty() {
            components.extend(missing);
            None
        } else if let Some(e) = last {
            components = e.components.clone();
            Some(e)
        } else {
            Some(stack.pop().map_or(root_entry, |(e, _)| e))
        };
        Ok(ResolvedPath { components, entry })
    }

    /// The root directory handle and entry.
    pub(crate) fn root(&self) -> Result<(DirHandle, Entry), FsViewError> {
        let mut fds = Vec::new();
        let mut meta = None;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let fd = self.open_root(i)?;
            if meta.is_none() {
                let st = rustix::fs::fstat(&fd).map_err(|e| open_err(layer, e))?;
                meta = Some((i, Metadata::from_stat(&st)));
            }
            let opaque = self.overlay && is_opaque(&fd);
            fds.push((i, fd));
            if opaque {
                break;
            }
        }
        // An empty view (scratch) is an empty root directory, like an image with no layers.
        let (layer, meta) = meta.unwrap_or((0, Metadata::synthetic(FileKind::Dir, 0o755, 0)));
        let entry = Entry {
            components: Vec::new(),
            layer,
            meta,
            dir_layers: fds.iter().map(|(i, _)| *i).collect(),
        };
        Ok((
            DirHandle {
                components: Vec::new(),
                fds,
            },
            entry,
        ))
    }

    /// The child `name` of an open directory, honouring whiteouts, opaque dirs and the filter.
    pub(crate) fn child(&self, dir: &DirHandle, name: &str) -> Result<Option<Entry>, FsViewError> {
        let mut found: Option<Entry> = None;
        for (layer, fd) in &dir.fds {
            let st = match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(err) => {
                    let path = format!("{}/{name}", join_abs(&dir.components));
                    return Err(self.layer_err(*layer, path, err));
                }
            };
            let meta = Metadata::from_stat(&st);
            if self.overlay && is_whiteout(fd, name, &meta) {
                break;
            }
            let opaque = self.overlay && meta.kind == FileKind::Dir && dir_is_opaque(fd, name);
            match &mut found {
                None => {
                    let is_dir = meta.kind == FileKind::Dir;
                    let mut components = dir.components.clone();
                    components.push(name.to_owned());
                    found = Some(Entry {
                        components,
                        layer: *layer,
                        meta,
                        dir_layers: if is_dir { vec![*layer] } else { Vec::new() },
                    });
                    if !is_dir {
                        break;
                    }
                }
                Some(upper) if meta.kind == FileKind::Dir => upper.dir_layers.push(*layer),
                Some(_) => break,
            }
            if opaque {
                break;
            }
        }
        match (found, &self.filter) {
            (Some(e), Some(_)) if !self.visible(&e)? => Ok(None),
            (found, _) => Ok(found),
        }
    }

    /// Opens a directory entry of the merged view (a child of `parent`).
    pub(crate) fn child_dir(
        &self,
        parent: &DirHandle,
        e: &Entry,
    ) -> Result<DirHandle, FsViewError> {
        let mut fds = Vec::new();
        for layer in &e.dir_layers {
            let Some((_, pfd)) = parent.fds.iter().find(|(l, _)| l == layer) else {
                continue;
            };
            let fd = rustix::fs::openat(pfd, e.name(), DIR_NOFOLLOW, Mode::empty())
                .map_err(|err| self.read_err(e, err))?;
            fds.push((*layer, fd));
        }
        Ok(DirHandle {
            components: e.components.clone(),
            fds,
        })
    }

    /// Opens a directory entry by walking down from the root of each contributing layer.
    pub(crate) fn open_dir(&self, e: &Entry) -> Result<DirHandle, FsViewError> {
        if e.meta.kind != FileKind::Dir {
            return Err(wrong_kind(e, FileKind::Dir));
        }
        let mut fds = Vec::new();
        for layer in &e.dir_layers {
            fds.push((*layer, self.open_dir_fd(e, *layer)?));
        }
        Ok(DirHandle {
            components: e.components.clone(),
            fds,
        })
    }

    /// The merged, sorted, visible children of an open directory.
    pub(crate) fn read_dir_handle(&self, dir: &DirHandle) -> Result<Vec<Entry>, FsViewError> {
        let mut names = BTreeSet::new();
        for (layer, fd) in &dir.fds {
            let err = |e| self.layer_err(*layer, join_abs(&dir.components), e);
            for item in rustix::fs::Dir::read_from(fd).map_err(err)? {
                let item = item.map_err(err)?;
                let raw = item.file_name().to_bytes();
                if raw == b"." || raw == b".." {
                    continue;
                }
                let name = std::str::from_utf8(raw).map_err(|_| FsViewError::NonUtf8Name {
                    dir: join_abs(&dir.components),
                })?;
                names.insert(name.to_owned());
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(e) = self.child(dir, &name)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn visible(&self, e: &Entry) -> Result<bool, FsViewError> {
        let Some(filter) = &self.filter else {
            return Ok(true);
        };
        let rel = e.components.join("/");
        if !filter.is_excluded(&rel) {
            return Ok(true);
        }
        if e.meta.kind != FileKind::Dir || !filter.may_contain_included(&rel) {
            return Ok(false);
        }
        let dir = self.open_dir(e)?;
        Ok(!self.read_dir_handle(&dir)?.is_empty())
    }

    /// Walks `components[..depth]` down from `layer`'s root with `O_NOFOLLOW | O_DIRECTORY`.
    fn walk_layer(&self, layer: usize, components: &[String]) -> Result<OwnedFd, FsViewError> {
        let mut fd = self.open_root(layer)?;
        for (i, name) in components.iter().enumerate() {
            fd = rustix::fs::openat(&fd, name.as_str(), DIR_NOFOLLOW, Mode::empty())
                .map_err(|e| self.layer_err(layer, join_abs(&components[..=i]), e))?;
        }
        Ok(fd)
    }

    /// Opens a layer's root directory: a path the engine chose, not build input.
    fn open_root(&self, layer: usize) -> Result<OwnedFd, FsViewError> {
        let root = &self.layers[layer];
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        rustix::fs::open(root, flags, Mode::empty()).map_err(|e| open_err(root, e))
    }

    fn layer_err(&self, layer: usize, path: String, err: Errno) -> FsViewError {
        FsViewError::Read {
            path,
            layer: self.layers.get(layer).cloned().unwrap_or_default(),
            source: err.into(),
        }
    }

    fn open_dir_fd(&self, e: &Entry, layer: usize) -> Result<OwnedFd, FsViewError> {
        self.walk_layer(layer, &e.components)
    }

    fn open_parent(&self, e: &Entry) -> Result<OwnedFd, FsViewError> {
        let n = e.components.len().saturating_sub(1);
        self.walk_layer(e.layer, &e.components[..n])
    }

    fn read_err(&self, e: &Entry, err: Errno) -> FsViewError {
        self.layer_err(e.layer, e.path(), err)
    }
}

const DIR_NOFOLLOW: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn open_err(layer: &Path, e: Errno) -> FsViewError {
    FsViewError::OpenLayer {
        layer: layer.to_owned(),
        source: e.into(),
    }
}

fn wrong_kind(e: &Entry, expected: FileKind) -> FsViewError {
    FsViewError::WrongKind {
        path: e.path(),
        found: e.meta.kind,
        expected,
    }
}

fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}

fn get_xattr(fd: BorrowedFd<'_>, name: &str) -> Option<Vec<u8>> {
    let size = rustix::fs::fgetxattr_query(fd, name).ok()?;
    let mut buf = vec![0u8; size];
    let n = rustix::fs::fgetxattr(fd, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

pub(crate) fn is_opaque(fd: &OwnedFd) -> bool {
    ["trusted.overlay.opaque"]
        .iter()
        .any(|n| get_xattr(fd.as_fd(), n).is_some_and(|v| v == b"y"))
}

fn dir_is_opaque(parent: &OwnedFd, name: &str) -> bool {
    rustix::fs::openat(parent, name, DIR_NOFOLLOW, Mode::empty()).is_ok_and(|fd| is_opaque(&fd))
}

/// A char device 0/0, or an empty regular file carrying the overlay whiteout xattr.
pub(crate) fn is_whiteout(parent: &OwnedFd, name: &str, meta: &Metadata) -> bool {
    match meta.kind {
        FileKind::CharDevice => meta.rdev == 0,
        FileKind::File if meta.size == 0 => {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            rustix::fs::openat(parent, name, flags, Mode::empty()).is_ok_and(|fd| {
                ["trusted.overlay.whiteout"]
                    .iter()
                    .any(|n| rustix::fs::fgetxattr_query(&fd, *n).is_ok())
            })
        }
        _ => false,
    }
}

/// Splits a path into its components, dropping empty ones and `.` (keeps `..`).
pub(crate) fn split(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
        .collect()
}

/// Lexically cleans a path against a root: `..` at the root stays at the root.
pub(crate) fn lexical_clean(path: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in split(path) {
        if c == ".." {
            out.pop();
        } else {
            out.push(c);
        }
    }
    join_abs(&out)
}

pub(crate) fn join_abs(components: &[String]) -> String {
    format!("/{}", components.join("/"))
}
