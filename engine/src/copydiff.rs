//! A copying fallback for overlayfs: materialise a [`LayerView`] into a plain directory, let
//! a step run on it, then compute the step's diff as an overlay-format upper directory.
//!
//! Where overlayfs cannot be mounted a step runs on a plain copy of its parent layers
//! ([`materialize`]); afterwards [`diff`] compares that directory with the parent view and
//! writes into a fresh upper directory what overlayfs would have left there, as far as the
//! resulting OCI layer ([`crate::oci::layer::write_layer`]) is concerned:
//! - new or changed entries, with their parent directories copied up carrying the after-tree's
//!   metadata;
//! - a whiteout (char device 0/0) for every parent entry that is gone (one for a whole
//!   deleted directory, none for its children);
//! - a directory replacing a non-directory is opaque (`trusted.overlay.opaque=y`), as overlayfs
//!   makes a directory created over a whiteout.
//!
//! "Changed" follows containerd's double-walking differ (used by BuildKit): kind, permission
//! bits, owner, mtime (seconds and nanoseconds), and per kind the size (and
//! `security.capability`) of a regular file, a symlink's target, a device's number. A regular
//! file whose metadata is identical is unchanged; its content is not read.
//!
//! # Known differences from overlayfs
//! - A directory deleted and recreated by the step is diffed against the parent's directory
//!   (its surviving children are compared entry by entry); overlayfs would store it as an opaque
//!   directory holding all its children. The applied result is the same file system.
//! - Overlayfs without `index=on` breaks a parent's hard link when one of its names is
//!   modified. To give the same layers, the parents' hard links are materialised as separate
//!   copies (a step sees `nlink == 1` for them, unlike on overlay); links the step itself makes
//!   are kept, and every name of such an inode is written as soon as one of them changed.
//! - Whiteouts get their parent directory's after-tree mtime (overlayfs: the deletion time), so
//!   that the diff of two trees is deterministic.
//! - Sockets are not recorded (OCI layers cannot carry them either). A char device 0/0 created
//!   by the step is indistinguishable from a whiteout, as on overlayfs.
//!
//! # Host paths are never followed
//! The parent is only read through [`LayerView`] (see [`crate::fsview`]). The after-tree, the
//! materialised tree and the upper directory are only accessed relative to directory fds with
//! single-component names: `openat(O_NOFOLLOW)` (`O_DIRECTORY` for directories),
//! `statat(AT_SYMLINK_NOFOLLOW)`, `readlinkat`, `mkdirat`, `mknodat`, `symlinkat`, `linkat`
//! without `AT_SYMLINK_FOLLOW`. A symlink the step planted (even to a host path such as
//! `/etc/shadow`, or to a directory) is copied as a link and never traversed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, XattrFlags};
use rustix::io::Errno;
use thiserror::Error;

use crate::fileop::upper::times;
use crate::fsview::{DirHandle, Entry, FileKind, FsViewError, LayerView, Metadata, join_abs};

/// The xattr carrying file capabilities (compared and kept).
const XATTR_CAPABILITY: &str = "security.capability";
/// The xattr making an upper directory opaque.
const XATTR_OPAQUE: &str = "trusted.overlay.opaque";

/// Errors materialising a view or computing a diff.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CopyDiffError {
    /// Reading the parent view failed.
    #[error(transparent)]
    View(#[from] FsViewError),
    /// A target directory (materialise destination, upper) could not be opened.
    #[error("cannot open directory {dir}")]
    Open {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A target directory must be empty and is not.
    #[error("{dir} is not empty")]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// Reading an entry of the after-tree failed.
    #[error("cannot read {path} in the step's root")]
    Read {
        /// Path inside the tree.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// Writing an entry into the destination failed.
    #[error("cannot write {path}")]
    Write {
        /// Path inside the destination.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// A whiteout (char device 0/0) could not be created for lack of privilege (kernels
    /// before 5.8 require `CAP_MKNOD` even for a whiteout).
    #[error("not permitted to create the whiteout for deleted {path}: run as root (CAP_MKNOD)")]
    WhiteoutNeedsPrivilege {
        /// The deleted path.
        path: String,
    },
    /// A file name in the after-tree is not UTF-8 (paths in views are strings).
    #[error("non-UTF-8 file name under {dir}")]
    NonUtf8Name {
        /// The directory holding it.
        dir: String,
    },
}

/// What [`diff`] wrote into the upper directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries absent from the parent, written (directories included, copy-ups not).
    pub added: u64,
    /// Entries present in the parent and changed (a type change counts here).
    pub modified: u64,
    /// Whiteouts written for deleted entries.
    pub deleted: u64,
    /// Unchanged parent directories written only as parents of changes (copy-up).
    pub copied_up: u64,
    /// Opaque directories written (a directory replacing a non-directory).
    pub opaque: u64,
    /// Names written as hard links to an already written inode.
    pub hardlinks: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

/// Whether names of one inode in a parent layer are materialised as hard links. They are not:
/// overlayfs (without `index=on`, as kiln mounts it) breaks such a link as soon as the step
/// writes to one name, and the copying snapshotter must give the same layers as overlayfs.
/// Each name is an independent copy, so writing one leaves the other unchanged, as on overlay.
const PRESERVE_PARENT_HARDLINKS: bool = false;

/// Writes the merged view `view` into the empty directory `dest` as a plain tree: regular
/// files, directories, symlinks, hard links (names of one inode in one layer), devices and
/// fifos, with permission bits (setuid included), owner, mtime (nanoseconds) and xattrs
/// (`security.capability` included; overlayfs' own are not copied). Whiteouts and opaque
/// directories are applied: hidden entries simply do not appear. Sockets are skipped. The
/// root of `dest` takes the view root's metadata.
pub fn materialize(view: &LayerView, dest: &Path) -> Result<(), CopyDiffError> {
    let mut out = Target::open(dest)?;
    let (handle, root) = view.root()?;
    let root_fd = dup(&out.root, &[])?;
    apply_dir_attrs(&root_fd, &[], root.metadata(), &[])?;
    out.dirs.push((Vec::new(), mtime_of(root.metadata())));
    let mut links: HashMap<(usize, u64, u64), Vec<String>> = HashMap::new();
    materialize_dir(view, &handle, &root_fd, &[], &mut out, &mut links)?;
    out.fix_dir_mtimes()
}

fn materialize_dir(
    view: &LayerView,
    handle: &DirHandle,
    fd: &OwnedFd,
    comps: &[String],
    out: &mut Target,
    links: &mut HashMap<(usize, u64, u64), Vec<String>>,
) -> Result<(), CopyDiffError> {
    for child in view.read_dir_handle(handle)? {
        let mut c = comps.to_vec();
        c.push(child.name().to_owned());
        let m = child.metadata();
        match m.kind {
            FileKind::Dir => {
                let xattrs = view.xattrs(&child)?;
                let sub = out.mkdir(fd, &c, m, &xattrs, false)?;
                let sub_handle = view.child_dir(handle, &child)?;
                materialize_dir(view, &sub_handle, &sub, &c, out, links)?;
            }
            FileKind::Socket => {}
            kind => {
                let key = (child.layer(), m.dev_ino.0, m.dev_ino.1);
                if PRESERVE_PARENT_HARDLINKS
                    && m.nlink > 1
                    && let Some(first) = links.get(&key)
                {
                    out.link(first, fd, &c)?;
                    continue;
                }
                match kind {
                    FileKind::File => {
                        let mut input = view.open_entry(&child)?;
                        let xattrs = view.xattrs(&child)?;
                        write_file(fd, &c, m, &mut input, &xattrs)?;
                    }
                    FileKind::Symlink => {
                        let target = view.read_link_entry(&child)?;
                        write_symlink(fd, &c, m, &target)?;
                    }
                    _ => write_node(fd, &c, m)?,
                }
                if m.nlink > 1 {
                    links.insert(key, c);
                }
            }
        }
    }
    Ok(())
}

/// Writes into the empty directory `upper` the diff of the plain directory `after` (a step's
/// root after it ran) against its parent view `lower`, in overlayfs upper format (see the
/// [module documentation](self) for the rules and the known differences from overlayfs).
/// Creating a whiteout needs `CAP_MKNOD` on kernels before 5.8 (later ones let anyone create a
/// char device 0/0); when refused a deletion fails with
/// [`CopyDiffError::WhiteoutNeedsPrivilege`]. Writing other owners than the caller's needs
/// `CAP_CHOWN`: the fallback is meant to run as root, like the overlay path. The root of `upper` takes the after-tree root's
/// owner, mode and mtime (what the merged root would show).
pub fn diff(lower: &LayerView, after: &Path, upper: &Path) -> Result<DiffStats, CopyDiffError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let after_root =
        rustix::fs::open(after, flags, Mode::empty()).map_err(|e| CopyDiffError::Open {
            dir: after.to_owned(),
            source: e.into(),
        })?;
    let out = Target::open(upper)?;
    let root_meta = meta_of(&rustix::fs::fstat(&after_root).map_err(|e| read_err(&[], e))?);
    let root_xattrs = list_xattrs(&after_root).map_err(|e| read_err(&[], e))?;
    let upper_root = dup(&out.root, &[])?;
    apply_dir_attrs(&upper_root, &[], &root_meta, &root_xattrs)?;
    let mut d = Differ {
        lower,
        after_root,
        out,
        stats: DiffStats::default(),
        written: HashMap::new(),
        deferred: HashMap::new(),
    };
    d.out.dirs.push((Vec::new(), mtime_of(&root_meta)));
    let (handle, _) = lower.root()?;
    let after_fd = dup(&d.after_root, &[])?;
    d.dir(&after_fd, &root_meta, Some(&handle), &[])?;
    d.out.fix_dir_mtimes()?;
    Ok(d.stats)
}

struct Differ<'a> {
    lower: &'a LayerView,
    after_root: OwnedFd,
    out: Target,
    stats: DiffStats,
    /// After-tree inodes with several names already written: inode → first upper path.
    written: HashMap<(u64, u64), Vec<String>>,
    /// Unchanged names of hard-linked inodes, written only if another name gets written.
    deferred: HashMap<(u64, u64), Vec<Vec<String>>>,
}

impl Differ<'_> {
    /// Diffs the after-tree directory `fd` (at `comps`, with metadata `meta`) against the
    /// parent directory `lower` (`None`: nothing of the parent is visible there).
    fn dir(
        &mut self,
        fd: &OwnedFd,
        meta: &Metadata,
        lower: Option<&DirHandle>,
        comps: &[String],
    ) -> Result<(), CopyDiffError> {
        let mut lower_children: BTreeMap<String, Entry> = BTreeMap::new();
        if let Some(h) = lower {
            for e in self.lower.read_dir_handle(h)? {
                lower_children.insert(e.name().to_owned(), e);
            }
        }
        for name in read_names(fd, comps)? {
            let mut c = comps.to_vec();
            c.push(name.clone());
            let st = rustix::fs::statat(fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| read_err(&c, e))?;
            let a = meta_of(&st);
            let l = lower_children.remove(&name);
            match a.kind {
                // Not representable in a layer: neither recorded nor whiting anything out.
                FileKind::Socket => {}
                FileKind::Dir => {
                    let sub = rustix::fs::openat(fd, name.as_str(), DIR_FLAGS, Mode::empty())
                        .map_err(|e| read_err(&c, e))?;
                    match &l {
                        Some(le) if le.metadata().kind == FileKind::Dir => {
                            if dir_changed(le.metadata(), &a) {
                                let parent = self.out.ensure_dir(
                                    &self.after_root,
                                    comps,
                                    &mut self.stats,
                                )?;
                                let xattrs = list_xattrs(&sub).map_err(|e| read_err(&c, e))?;
                                self.out.mkdir(&parent, &c, &a, &xattrs, false)?;
                                self.stats.modified += 1;
                            }
                            let h = match lower {
                                Some(parent) => Some(self.lower.child_dir(parent, le)?),
                                None => None,
                            };
                            self.dir(&sub, &a, h.as_ref(), &c)?;
                        }
                        other => {
                            let opaque = other.is_some();
                            let parent =
                                self.out
                                    .ensure_dir(&self.after_root, comps, &mut self.stats)?;
                            let xattrs = list_xattrs(&sub).map_err(|e| read_err(&c, e))?;
                            self.out.mkdir(&parent, &c, &a, &xattrs, opaque)?;
                            if opaque {
                                self.stats.opaque += 1;
                                self.stats.modified += 1;
                            } else {
                                self.stats.added += 1;
                            }
                            self.dir(&sub, &a, None, &c)?;
                        }
                    }
                }
                _ => {
                    let changed = match &l {
                        None => true,
                        Some(le) => self.changed(le, &a, fd, &c)?,
                    };
                    if a.nlink > 1 {
                        self.linked(fd, &c, &a, changed, l.is_some())?;
                    } else if changed {
                        self.write(fd, &c, &a, l.is_some())?;
                    }
                }
            }
        }
        // Whatever the parent has here and the after-tree does not was deleted.
        for (name, _) in lower_children {
            let mut c = comps.to_vec();
            c.push(name);
            let parent = self
                .out
                .ensure_dir(&self.after_root, comps, &mut self.stats)?;
            write_whiteout(&parent, &c, mtime_of(meta))?;
            self.stats.deleted += 1;
        }
        Ok(())
    }

    /// Whether the non-directory `a` at `comps` (in the after-tree directory `fd`) differs
    /// from the parent's entry `le`.
    fn changed(
        &self,
        le: &Entry,
        a: &Metadata,
        fd: &OwnedFd,
        comps: &[String],
    ) -> Result<bool, CopyDiffError> {
        let l = le.metadata();
        if l.kind != a.kind
            || l.mode != a.mode
            || l.uid != a.uid
            || l.gid != a.gid
            || l.mtime_sec != a.mtime_sec
            || l.mtime_nsec != a.mtime_nsec
        {
            return Ok(true);
        }
        match a.kind {
            FileKind::File => {
                if l.size != a.size {
                    return Ok(true);
                }
                let lower_cap = self
                    .lower
                    .xattrs(le)?
                    .into_iter()
                    .find(|(k, _)| k == XATTR_CAPABILITY)
                    .map(|(_, v)| v);
                let file = open_file(fd, comps)?;
                let after_cap =
                    get_xattr(&file, XATTR_CAPABILITY).map_err(|e| read_err(comps, e))?;
                Ok(lower_cap != after_cap)
            }
            FileKind::Symlink => {
                let target = read_link(fd, comps)?;
                Ok(self.lower.read_link_entry(le)? != target)
            }
            FileKind::CharDevice | FileKind::BlockDevice => Ok(l.rdev != a.rdev),
            _ => Ok(false),
        }
    }

    /// A name of an inode with several names: written (as a hard link once the inode has been
    /// written) when any of its names changed; unchanged names wait for a changed one.
    fn linked(
        &mut self,
        fd: &OwnedFd,
        c: &[String],
        a: &Metadata,
        changed: bool,
        existed: bool,
    ) -> Result<(), CopyDiffError> {
        let key = a.dev_ino;
        if let Some(first) = self.written.get(&key).cloned() {
            let parent =
                self.out
                    .ensure_dir(&self.after_root, &c[..c.len() - 1], &mut self.stats)?;
            self.out.link(&first, &parent, c)?;
            self.count(existed);
            self.stats.hardlinks += 1;
            return Ok(());
        }
        if !changed {
            self.deferred.entry(key).or_default().push(c.to_vec());
            return Ok(());
        }
        self.write(fd, c, a, existed)?;
        self.written.insert(key, c.to_vec());
        for other in self.deferred.remove(&key).unwrap_or_default() {
            let parent = self.out.ensure_dir(
                &self.after_root,
                &other[..other.len() - 1],
                &mut self.stats,
            )?;
            self.out.link(c, &parent, &other)?;
            self.stats.modified += 1;
            self.stats.hardlinks += 1;
        }
        Ok(())
    }

    fn count(&mut self, existed: bool) {
        if existed {
            self.stats.modified += 1;
        } else {
            self.stats.added += 1;
        }
    }

    /// Copies the non-directory at `c` (in the after-tree directory `fd`) into upper.
    fn write(
        &mut self,
        fd: &OwnedFd,
        c: &[String],
        a: &Metadata,
        existed: bool,
    ) -> Result<(), CopyDiffError> {
        let parent = self
            .out
            .ensure_dir(&self.after_root, &c[..c.len() - 1], &mut self.stats)?;
        match a.kind {
            FileKind::File => {
                let mut input = open_file(fd, c)?;
                let xattrs = list_xattrs(&input).map_err(|e| read_err(c, e))?;
                self.stats.bytes += write_file(&parent, c, a, &mut input, &xattrs)?;
            }
            FileKind::Symlink => {
                let target = read_link(fd, c)?;
                write_symlink(&parent, c, a, &target)?;
            }
            _ => write_node(&parent, c, a)?,
        }
        self.count(existed);
        Ok(())
    }
}

/// A directory's own metadata changed (its contents are diffed separately).
fn dir_changed(l: &Metadata, a: &Metadata) -> bool {
    l.mode != a.mode
        || l.uid != a.uid
        || l.gid != a.gid
        || l.mtime_sec != a.mtime_sec
        || l.mtime_nsec != a.mtime_nsec
}

/// A directory being written into: the materialise destination or the upper directory.
struct Target {
    root: OwnedFd,
    /// Directories created (and the root), with the mtime to give them once all is written.
    dirs: Vec<(Vec<String>, (i64, i64))>,
    /// The directory written into last: consecutive writes mostly share it.
    cache: Option<(Vec<String>, OwnedFd)>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Target {
    /// Opens `dir` (a path the engine chose), which must be an empty directory.
    fn open(dir: &Path) -> Result<Self, CopyDiffError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root =
            rustix::fs::open(dir, flags, Mode::empty()).map_err(|e| CopyDiffError::Open {
                dir: dir.to_owned(),
                source: e.into(),
            })?;
        let names = read_names(&root, &[])?;
        if !names.is_empty() {
            return Err(CopyDiffError::NotEmpty {
                dir: dir.to_owned(),
            });
        }
        Ok(Self {
            root,
            dirs: Vec::new(),
            cache: None,
        })
    }

    /// Opens the existing directory `comps` (walked from the root without following links).
    fn walk(&self, comps: &[String]) -> Result<OwnedFd, CopyDiffError> {
        let mut cur = dup(&self.root, &[])?;
        for i in 0..comps.len() {
            cur = rustix::fs::openat(&cur, comps[i].as_str(), DIR_FLAGS, Mode::empty())
                .map_err(|e| write_err(&comps[..=i], e))?;
        }
        Ok(cur)
    }

    /// Opens the directory `comps` of upper, creating (copying up) every missing component
    /// with the metadata and xattrs of the after-tree's directory there.
    fn ensure_dir(
        &mut self,
        after_root: &OwnedFd,
        comps: &[String],
        stats: &mut DiffStats,
    ) -> Result<OwnedFd, CopyDiffError> {
        if let Some((p, fd)) = &self.cache
            && p == comps
        {
            return dup(fd, comps);
        }
        let mut cur = dup(&self.root, &[])?;
        let mut after = dup(after_root, &[])?;
        for i in 0..comps.len() {
            let name = comps[i].as_str();
            let c = &comps[..=i];
            after = rustix::fs::openat(&after, name, DIR_FLAGS, Mode::empty())
                .map_err(|e| read_err(c, e))?;
            match rustix::fs::openat(&cur, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => cur = fd,
                Err(Errno::NOENT) => {
                    let st = rustix::fs::fstat(&after).map_err(|e| read_err(c, e))?;
                    let xattrs = list_xattrs(&after).map_err(|e| read_err(c, e))?;
                    cur = self.mkdir(&cur, c, &meta_of(&st), &xattrs, false)?;
                    stats.copied_up += 1;
                }
                Err(e) => return Err(write_err(c, e)),
            }
        }
        self.cache = Some((comps.to_vec(), dup(&cur, comps)?));
        Ok(cur)
    }

    /// Creates the directory `comps` in `parent` with `m`'s owner and mode and `xattrs`
    /// (plus the opaque marker when `opaque`); its mtime is set by [`Self::fix_dir_mtimes`].
    fn mkdir(
        &mut self,
        parent: &OwnedFd,
        comps: &[String],
        m: &Metadata,
        xattrs: &[(String, Vec<u8>)],
        opaque: bool,
    ) -> Result<OwnedFd, CopyDiffError> {
        let name = last(comps);
        rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
            .map_err(|e| write_err(comps, e))?;
        let fd = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| write_err(comps, e))?;
        apply_dir_attrs(&fd, comps, m, xattrs)?;
        if opaque {
            rustix::fs::fsetxattr(&fd, XATTR_OPAQUE, b"y", XattrFlags::empty())
                .map_err(|e| write_err(comps, e))?;
        }
        self.dirs.push((comps.to_vec(), mtime_of(m)));
        Ok(fd)
    }

    /// Makes `comps` (in `parent`) a hard link to the already written `first`.
    fn link(
        &self,
        first: &[String],
        parent: &OwnedFd,
        comps: &[String],
    ) -> Result<(), CopyDiffError> {
        let first_parent = self.walk(&first[..first.len().saturating_sub(1)])?;
        rustix::fs::linkat(
            &first_parent,
            last(first),
            parent,
            last(comps),
            AtFlags::empty(),
        )
        .map_err(|e| write_err(comps, e))
    }

    /// Gives every created directory its mtime, once nothing more is created inside.
    fn fix_dir_mtimes(&mut self) -> Result<(), CopyDiffError> {
        self.cache = None;
        for (comps, mtime) in self.dirs.iter().rev() {
            let fd = self.walk(comps)?;
            rustix::fs::futimens(&fd, &times(*mtime)).map_err(|e| write_err(comps, e))?;
        }
        Ok(())
    }
}

/// Owner, then mode (chown clears setuid bits), then xattrs, on a directory.
fn apply_dir_attrs(
    fd: &OwnedFd,
    comps: &[String],
    m: &Metadata,
    xattrs: &[(String, Vec<u8>)],
) -> Result<(), CopyDiffError> {
    chown_chmod(fd, m).map_err(|e| write_err(comps, e))?;
    set_xattrs(fd, comps, xattrs)
}

fn chown_chmod(fd: &OwnedFd, m: &Metadata) -> Result<(), Errno> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(m.uid)),
        Some(rustix::fs::Gid::from_raw(m.gid)),
    )?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(m.mode & 0o7777))
}

/// Sets xattrs; `security.capability` must succeed, other namespaces are best effort (as
/// overlayfs copy-up and fsutil do).
fn set_xattrs(
    fd: &OwnedFd,
    comps: &[String],
    xattrs: &[(String, Vec<u8>)],
) -> Result<(), CopyDiffError> {
    for (k, v) in xattrs {
        if is_overlay_xattr(k) {
            continue;
        }
        match rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty()) {
            Ok(()) => {}
            Err(e) if k == XATTR_CAPABILITY => return Err(write_err(comps, e)),
            Err(_) => {}
        }
    }
    Ok(())
}

/// Creates the regular file `comps` in `parent` with `input`'s content; returns the bytes.
fn write_file(
    parent: &OwnedFd,
    comps: &[String],
    m: &Metadata,
    input: &mut File,
    xattrs: &[(String, Vec<u8>)],
) -> Result<u64, CopyDiffError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(parent, last(comps), flags, Mode::from_raw_mode(0o600))
        .map_err(|e| write_err(comps, e))?;
    let mut out = File::from(fd);
    let n = io::copy(input, &mut out).map_err(|source| CopyDiffError::Write {
        path: join_abs(comps),
        source,
    })?;
    let fd = OwnedFd::from(out);
    // chown drops setuid bits and security.capability: owner first, then mode and xattrs.
    chown_chmod(&fd, m).map_err(|e| write_err(comps, e))?;
    set_xattrs(&fd, comps, xattrs)?;
    rustix::fs::futimens(&fd, &times(mtime_of(m))).map_err(|e| write_err(comps, e))?;
    Ok(n)
}

fn write_symlink(
    parent: &OwnedFd,
    comps: &[String],
    m: &Metadata,
    target: &str,
) -> Result<(), CopyDiffError> {
    let name = last(comps);
    rustix::fs::symlinkat(target, parent, name).map_err(|e| write_err(comps, e))?;
    chown_times_at(parent, name, m, None).map_err(|e| write_err(comps, e))
}

/// Creates a device node or fifo (sockets never get here).
fn write_node(parent: &OwnedFd, comps: &[String], m: &Metadata) -> Result<(), CopyDiffError> {
    let name = last(comps);
    let ft = match m.kind {
        FileKind::CharDevice => FileType::CharacterDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        _ => FileType::Fifo,
    };
    rustix::fs::mknodat(parent, name, ft, Mode::from_raw_mode(0o600), m.rdev)
        .map_err(|e| write_err(comps, e))?;
    chown_times_at(parent, name, m, Some(m.mode)).map_err(|e| write_err(comps, e))
}

/// A whiteout for the deleted `comps`: char device 0/0, mode 0, root-owned (as overlayfs).
fn write_whiteout(
    parent: &OwnedFd,
    comps: &[String],
    mtime: (i64, i64),
) -> Result<(), CopyDiffError> {
    let name = last(comps);
    match rustix::fs::mknodat(parent, name, FileType::CharacterDevice, Mode::empty(), 0) {
        Ok(()) => {}
        Err(Errno::PERM | Errno::ACCESS) => {
            return Err(CopyDiffError::WhiteoutNeedsPrivilege {
                path: join_abs(comps),
            });
        }
        Err(e) => return Err(write_err(comps, e)),
    }
    rustix::fs::utimensat(parent, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| write_err(comps, e))
}

/// Owner, mode (unless `None`: symlinks have none) and mtime of `name` in `parent`, not
/// following it (the node was just created by us in a directory only we write).
fn chown_times_at(
    parent: &OwnedFd,
    name: &str,
    m: &Metadata,
    mode: Option<u32>,
) -> Result<(), Errno> {
    let attrs = crate::fileop::upper::Attrs {
        mode: mode.unwrap_or(0),
        uid: m.uid,
        gid: m.gid,
        mtime: Some(mtime_of(m)),
    };
    crate::fileop::upper::set_attrs_at(parent, name, attrs, mode.is_none())
}

/// The sorted names in a directory, `.` and `..` excluded.
fn read_names(fd: &OwnedFd, comps: &[String]) -> Result<Vec<String>, CopyDiffError> {
    let mut names = Vec::new();
    let dir = rustix::fs::Dir::read_from(fd).map_err(|e| read_err(comps, e))?;
    for item in dir {
        let item = item.map_err(|e| read_err(comps, e))?;
        let raw = item.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let name = std::str::from_utf8(raw).map_err(|_| CopyDiffError::NonUtf8Name {
            dir: join_abs(comps),
        })?;
        names.push(name.to_owned());
    }
    names.sort();
    Ok(names)
}

/// Opens the regular file `comps` (in the directory `parent`) for reading, never following a
/// symlink and never blocking on a fifo swapped in.
fn open_file(parent: &OwnedFd, comps: &[String]) -> Result<File, CopyDiffError> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(parent, last(comps), flags, Mode::empty())
        .map_err(|e| read_err(comps, e))?;
    // What was stat'ed as a regular file must still be one (not a device swapped in).
    let st = rustix::fs::fstat(&fd).map_err(|e| read_err(comps, e))?;
    if Metadata::kind_of_mode(st.st_mode) != FileKind::File {
        return Err(read_err(comps, Errno::INVAL));
    }
    Ok(File::from(fd))
}

fn read_link(parent: &OwnedFd, comps: &[String]) -> Result<String, CopyDiffError> {
    let target =
        rustix::fs::readlinkat(parent, last(comps), Vec::new()).map_err(|e| read_err(comps, e))?;
    target
        .into_string()
        .map_err(|_| CopyDiffError::NonUtf8Name {
            dir: join_abs(comps),
        })
}

/// All xattrs of an open file or directory except overlayfs' own, sorted.
fn list_xattrs(fd: impl std::os::fd::AsFd) -> Result<Vec<(String, Vec<u8>)>, Errno> {
    let fd = fd.as_fd();
    let size = match rustix::fs::flistxattr_query(fd) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = vec![0u8; size];
    let n = rustix::fs::flistxattr(fd, &mut names[..])?;
    let mut out = Vec::new();
    for raw in names[..n.min(size)].split(|b| *b == 0) {
        let Ok(name) = std::str::from_utf8(raw) else {
            continue;
        };
        if name.is_empty() || is_overlay_xattr(name) {
            continue;
        }
        if let Some(v) = get_xattr(fd, name)? {
            out.push((name.to_owned(), v));
        }
    }
    out.sort();
    Ok(out)
}

fn get_xattr(fd: impl std::os::fd::AsFd, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    let fd = fd.as_fd();
    let size = match rustix::fs::fgetxattr_query(fd, name) {
        Ok(n) => n,
        Err(Errno::NODATA | Errno::NOTSUP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; size];
    let n = match rustix::fs::fgetxattr(fd, name, &mut buf[..]) {
        Ok(n) => n,
        Err(Errno::NODATA) => return Ok(None),
        Err(e) => return Err(e),
    };
    buf.truncate(n);
    Ok(Some(buf))
}

fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}

fn meta_of(st: &Stat) -> Metadata {
    Metadata::from_stat(st)
}

fn mtime_of(m: &Metadata) -> (i64, i64) {
    (m.mtime_sec, m.mtime_nsec)
}

fn last(comps: &[String]) -> &str {
    comps.last().map_or(".", String::as_str)
}

fn dup(fd: &OwnedFd, comps: &[String]) -> Result<OwnedFd, CopyDiffError> {
    rustix::io::dup(fd).map_err(|e| write_err(comps, e))
}

fn read_err(comps: &[String], e: Errno) -> CopyDiffError {
    CopyDiffError::Read {
        path: join_abs(comps),
        source: e.into(),
    }
}

fn write_err(comps: &[String], e: Errno) -> CopyDiffError {
    CopyDiffError::Write {
        path: join_abs(comps),
        source: e.into(),
    }
}
