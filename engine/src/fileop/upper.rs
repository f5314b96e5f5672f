//! Writing into a step's fresh upper directory, the way overlayfs copy-up would.
//!
//! The upper directory starts empty and holds only what this module creates. Every access is
//! `openat`/`mkdirat`/`symlinkat`/`linkat`/`mknodat`/`unlinkat` relative to a directory fd,
//! with a single-component name and `O_NOFOLLOW` (or `AT_SYMLINK_NOFOLLOW`), walking down from
//! the upper root: a symlink we created is therefore never followed, only replaced.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::FileOpError;
use crate::fsview::{FileKind, LayerView, Metadata, join_abs};

/// Ownership and mode for a directory this step creates from nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewDir {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The metadata to give one written entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Option<(i64, i64)>,
}

/// A fresh upper directory over a destination view.
pub(crate) struct Upper<'a> {
    root: OwnedFd,
    dest: &'a LayerView,
}

pub(crate) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl<'a> Upper<'a> {
    /// Opens the upper directory.
    pub fn open(path: &Path, dest: &'a LayerView) -> Result<Self, FileOpError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root =
            rustix::fs::open(path, flags, Mode::empty()).map_err(|e| FileOpError::Upper {
                path: "/".into(),
                source: e.into(),
            })?;
        Ok(Self { root, dest })
    }

    /// The destination view this upper directory sits on.
    pub fn dest(&self) -> &'a LayerView {
        self.dest
    }

    /// What upper holds at `comps`, if anything (parents walked without following links).
    pub fn kind_at(&self, comps: &[String]) -> Option<FileKind> {
        let (last, parents) = comps.split_last()?;
        let (parent, _) = self.walk(parents).ok()?;
        Self::existing(&parent, last)
    }

    /// Opens the directory `comps` in upper, creating every missing component: copied up
    /// (mode, owner, mtime, xattrs) when the destination view has a directory there, created
    /// from `new` otherwise (missing, whited out, or a non-directory that the new directory
    /// hides). Returns the fd and whether anything was created.
    pub fn dir(&self, comps: &[String], new: NewDir) -> Result<(OwnedFd, bool), FileOpError> {
        let mut cur = rustix::io::dup(&self.root).map_err(|e| upper_err(&[], e))?;
        let mut created = false;
        for i in 0..comps.len() {
            let name = comps[i].as_str();
            match rustix::fs::openat(&cur, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => {
                    cur = fd;
                    continue;
                }
                Err(Errno::NOENT) => {}
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    return Err(FileOpError::UpperNotADirectory {
                        path: join_abs(&comps[..=i]),
                    });
                }
                Err(e) => return Err(upper_err(&comps[..=i], e)),
            }
            let lower = self.dest.lookup(&join_abs(&comps[..=i]))?;
            let fd = match lower {
                Some(e) if e.metadata().kind == FileKind::Dir => {
                    let fd = self.mkdir_child(&cur, &comps[..=i])?;
                    let m = e.metadata();
                    for (k, v) in self.dest.xattrs(&e)? {
                        // Best effort like overlayfs: security.* may be refused unprivileged.
                        let _ = rustix::fs::fsetxattr(
                            &fd,
                            k.as_str(),
                            &v,
                            rustix::fs::XattrFlags::empty(),
                        );
                    }
                    let attrs = Attrs {
                        mode: m.mode,
                        uid: m.uid,
                        gid: m.gid,
                        mtime: Some((m.mtime_sec, m.mtime_nsec)),
                    };
                    set_attrs_fd(&fd, attrs).map_err(|e| upper_err(&comps[..=i], e))?;
                    fd
                }
                _ => {
                    let fd = self.mkdir_child(&cur, &comps[..=i])?;
                    let attrs = Attrs {
                        mode: new.mode,
                        uid: new.uid,
                        gid: new.gid,
                        mtime: None,
                    };
                    set_attrs_fd(&fd, attrs).map_err(|e| upper_err(&comps[..=i], e))?;
                    fd
                }
            };
            created = true;
            cur = fd;
        }
        Ok((cur, created))
    }

    fn mkdir_child(&self, parent: &OwnedFd, comps: &[String]) -> Result<OwnedFd, FileOpError> {
        let name = comps.last().map_or("", String::as_str);
        rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
            .map_err(|e| upper_err(comps, e))?;
        rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()).map_err(|e| upper_err(comps, e))
    }

    /// What upper already holds at `name` in `parent` (created earlier in this step).
    pub fn existing(parent: &OwnedFd, name: &str) -> Option<FileKind> {
        let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some(Metadata::kind_of_mode(st.st_mode))
    }

    /// Opens or creates the directory child `comps` of `parent`: an upper directory from
    /// earlier in this step is reused; a destination-view directory is copied up keeping its
    /// metadata (BuildKit keeps an existing target directory's metadata); otherwise a new
    /// directory gets `attrs`. Returns the fd and whether it is new (`attrs` applied).
    pub fn child_dir(
        &self,
        parent: &OwnedFd,
        comps: &[String],
        attrs: Attrs,
    ) -> Result<(OwnedFd, bool), FileOpError> {
        let name = comps.last().map_or("", String::as_str);
        match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => return Ok((fd, false)),
            Err(Errno::NOENT) => {}
            Err(Errno::NOTDIR | Errno::LOOP) => {
                return Err(FileOpError::CannotCopyToNonDirectory {
                    path: join_abs(comps),
                });
            }
            Err(e) => return Err(upper_err(comps, e)),
        }
        match self.dest.lookup(&join_abs(comps))? {
            Some(e) if e.metadata().kind == FileKind::Dir => {
                let new = NewDir {
                    mode: attrs.mode,
                    uid: attrs.uid,
                    gid: attrs.gid,
                };
                Ok((self.dir(comps, new)?.0, false))
            }
            Some(_) => Err(FileOpError::CannotCopyToNonDirectory {
                path: join_abs(comps),
            }),
            None => {
                let fd = self.mkdir_child(parent, comps)?;
                set_attrs_fd(&fd, attrs).map_err(|e| upper_err(comps, e))?;
                Ok((fd, true))
            }
        }
    }

    /// Removes a non-directory created earlier in this step at `name`, so it can be replaced.
    pub fn clear(parent: &OwnedFd, comps: &[String]) -> Result<(), FileOpError> {
        let name = comps.last().map_or("", String::as_str);
        match Self::existing(parent, name) {
            None => Ok(()),
            Some(FileKind::Dir) => Err(FileOpError::CannotOverwriteDirectory {
                path: join_abs(comps),
            }),
            Some(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(|e| upper_err(comps, e)),
        }
    }

    /// Creates a regular file (replacing a non-directory from this step) and returns it open
    /// for writing.
    pub fn create_file(parent: &OwnedFd, comps: &[String]) -> Result<File, FileOpError> {
        Self::create_file_mode(parent, comps, 0o600)
    }

    /// [`Upper::create_file`] with `mode` (less the umask) instead of 0600.
    pub fn create_file_mode(
        parent: &OwnedFd,
        comps: &[String],
        mode: u32,
    ) -> Result<File, FileOpError> {
        let name = comps.last().map_or("", String::as_str);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let create = || rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(mode));
        // Mostly nothing is there yet: create first, and clear only what is in the way.
        let fd = match create() {
            Err(Errno::EXIST) => {
                Self::clear(parent, comps)?;
                create()
            }
            other => other,
        }
        .map_err(|e| upper_err(comps, e))?;
        Ok(File::from(fd))
    }

    /// Creates a symlink with `target` (never interpreted here).
    pub fn create_symlink(
        parent: &OwnedFd,
        comps: &[String],
        target: &str,
        attrs: Attrs,
    ) -> Result<(), FileOpError> {
        Self::clear(parent, comps)?;
        let name = comps.last().map_or("", String::as_str);
        rustix::fs::symlinkat(target, parent, name).map_err(|e| upper_err(comps, e))?;
        set_attrs_at(parent, name, attrs, true).map_err(|e| upper_err(comps, e))
    }

    /// Creates a device node or fifo.
    pub fn create_node(
        parent: &OwnedFd,
        comps: &[String],
        kind: FileKind,
        rdev: u64,
        attrs: Attrs,
    ) -> Result<(), FileOpError> {
        Self::clear(parent, comps)?;
        let name = comps.last().map_or("", String::as_str);
        let ft = match kind {
            FileKind::CharDevice => rustix::fs::FileType::CharacterDevice,
            FileKind::BlockDevice => rustix::fs::FileType::BlockDevice,
            _ => rustix::fs::FileType::Fifo,
        };
        rustix::fs::mknodat(parent, name, ft, Mode::from_raw_mode(0o600), rdev)
            .map_err(|e| upper_err(comps, e))?;
        set_attrs_at(parent, name, attrs, false).map_err(|e| upper_err(comps, e))
    }

    /// Hard-links `comps` to the upper entry at `target` (both in upper, walked without
    /// following symlinks).
    pub fn link(&self, target: &[String], comps: &[String]) -> Result<(), FileOpError> {
        let (tparent, _) = self.walk(&target[..target.len().saturating_sub(1)])?;
        let (parent, _) = self.walk(&comps[..comps.len().saturating_sub(1)])?;
        Self::clear(&parent, comps)?;
        let tname = target.last().map_or("", String::as_str);
        let name = comps.last().map_or("", String::as_str);
        rustix::fs::linkat(&tparent, tname, &parent, name, AtFlags::empty())
            .map_err(|e| upper_err(comps, e))
    }

    /// Opens an existing upper directory without creating anything.
    pub fn walk(&self, comps: &[String]) -> Result<(OwnedFd, ()), FileOpError> {
        let fd = open_dirs(&self.root, comps).map_err(|(i, e)| upper_err(&comps[..i], e))?;
        Ok((fd, ()))
    }
}

/// Opens the directory `comps` below `root` one component at a time, following no symlink;
/// on failure, how many components it got to (the failing one included) and why.
pub(crate) fn open_dirs(root: &OwnedFd, comps: &[String]) -> Result<OwnedFd, (usize, Errno)> {
    let mut cur = rustix::io::dup(root).map_err(|e| (0, e))?;
    for (i, c) in comps.iter().enumerate() {
        cur = rustix::fs::openat(&cur, c.as_str(), DIR_FLAGS, Mode::empty())
            .map_err(|e| (i + 1, e))?;
    }
    Ok(cur)
}

/// Sets owner, then mode (chown clears setuid bits), then mtime, on an open fd.
pub(crate) fn set_attrs_fd(fd: &OwnedFd, a: Attrs) -> Result<(), Errno> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(a.uid)),
        Some(rustix::fs::Gid::from_raw(a.gid)),
    )?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(a.mode & 0o7777))?;
    if let Some(t) = a.mtime {
        rustix::fs::futimens(fd, &times(t))?;
    }
    Ok(())
}

/// What a file that kiln creates in a directory gets unasked: its owner, and the umask that
/// narrows the mode it is created with. A file created with its final owner and mode needs
/// neither `fchown` nor `fchmod` (two of the calls a small file's copy costs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Created {
    /// The owner a new file gets, when known: kiln's effective uid, and the directory's gid
    /// if it is set-group-ID, else kiln's effective gid.
    owner: Option<(u32, u32)>,
    /// What narrows the mode a new file is created with: the process umask, when known and
    /// when the directory has no default ACL (which replaces the umask).
    umask: Option<u32>,
}

impl Created {
    /// For files created in the directory `dir`.
    pub(crate) fn in_dir(dir: &OwnedFd) -> Self {
        let owner = rustix::fs::fstat(dir).ok().map(|st| {
            let gid = if st.st_mode & 0o2000 != 0 {
                st.st_gid
            } else {
                rustix::process::getegid().as_raw()
            };
            (rustix::process::geteuid().as_raw(), gid)
        });
        // A default ACL (a copied-up lower directory keeps its xattrs) decides a new file's
        // permission bits instead of the umask: then the mode is always set explicitly.
        let acl = match rustix::fs::fgetxattr_query(dir, "system.posix_acl_default") {
            Err(Errno::NODATA | Errno::NOTSUP) => false,
            Ok(_) | Err(_) => true,
        };
        Self {
            owner,
            umask: if acl { None } else { umask() },
        }
    }

    /// The mode to create a file with for `a`, and whether it is already `a`'s: permission
    /// bits only (set-ID and sticky bits need `fchmod`), none of them masked by the umask.
    pub(crate) fn mode_for(&self, a: &Attrs) -> (u32, bool) {
        let perm = a.mode & 0o7777;
        match self.umask {
            Some(mask) if perm & 0o7000 == 0 && perm & mask == 0 => (perm, true),
            _ => (0o600, false),
        }
    }

    /// Sets on a file just created (by [`Upper::create_file_mode`] with
    /// [`Created::mode_for`]) what it does not have yet of `a`: owner, then mode (chown clears
    /// set-ID bits), then mtime.
    pub(crate) fn finish(&self, fd: &OwnedFd, a: Attrs, mode_set: bool) -> Result<(), Errno> {
        if self.owner != Some((a.uid, a.gid)) {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(a.uid)),
                Some(rustix::fs::Gid::from_raw(a.gid)),
            )?;
        }
        if !mode_set {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(a.mode & 0o7777))?;
        }
        if let Some(t) = a.mtime {
            rustix::fs::futimens(fd, &times(t))?;
        }
        Ok(())
    }
}

/// The process umask, from `/proc/self/status` (reading it with `umask(2)` would change it
/// for a moment under the other threads); `None` if unreadable. kiln never changes it.
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// Sets owner, mode (not for symlinks) and mtime on `name` in `parent`, not following it.
pub(crate) fn set_attrs_at(
    parent: &OwnedFd,
    name: &str,
    a: Attrs,
    symlink: bool,
) -> Result<(), Errno> {
    rustix::fs::chownat(
        parent,
        name,
        Some(rustix::fs::Uid::from_raw(a.uid)),
        Some(rustix::fs::Gid::from_raw(a.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if !symlink {
        rustix::fs::chmodat(
            parent,
            name,
            Mode::from_raw_mode(a.mode & 0o7777),
            AtFlags::empty(),
        )?;
    }
    if let Some(t) = a.mtime {
        rustix::fs::utimensat(parent, name, &times(t), AtFlags::SYMLINK_NOFOLLOW)?;
    }
    Ok(())
}

pub(crate) fn times((sec, nsec): (i64, i64)) -> Timestamps {
    let ts = Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

pub(crate) fn upper_err(comps: &[String], e: Errno) -> FileOpError {
    FileOpError::Upper {
        path: join_abs(comps),
        source: io::Error::from(e),
    }
}
