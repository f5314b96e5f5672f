//! Deterministic layer tars from an overlay upper directory.
//!
//! [`write_layer`] walks the upper directory of one step (its diff) and writes an uncompressed
//! tar whose bytes depend only on the tree's content and [`LayerOptions::epoch`]:
//! - entries in depth-first order with each directory's names sorted by bytes (as Go's
//!   `filepath.Walk`, which BuildKit uses), a parent always before its children, and an opaque
//!   marker right after its directory, before any sibling it applies to;
//! - ustar headers, mtime = min(mtime, epoch), numeric uid/gid with empty user/group names, no
//!   atime/ctime; a PAX header only when needed (long path or link, ids or size too big for
//!   ustar, `security.capability`) with sorted records;
//! - a file met twice (same device and inode) becomes a hard-link entry to its first path;
//! - only `security.capability` of all xattrs is kept;
//! - overlay whiteouts (char device 0/0, or a file with `*.overlay.whiteout`) become OCI
//!   `.wh.<name>` files; an opaque directory (`*.overlay.opaque=y`) gets `<dir>/.wh..wh..opq`.
//!
//! Sockets are skipped (as Docker does). Upper dirs using overlay `redirect_dir` or `metacopy`
//! are refused: their diff is not self-contained.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use super::media;
use crate::digest::{Digest, Hasher};

/// Errors writing a layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// A file in the upper directory could not be inspected or read.
    #[error("cannot read {path} in the upper directory")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file changed while it was being archived.
    #[error("{path} changed while it was archived")]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// The upper directory uses an overlay feature whose diff is not self-contained.
    #[error("{path} carries {xattr}: mount overlays with redirect_dir=off and metacopy=off")]
    UnsupportedOverlay {
        /// The file.
        path: PathBuf,
        /// The xattr found.
        xattr: &'static str,
    },
    /// Writing the tar failed.
    #[error("cannot write the layer tar")]
    Write {
        /// The cause.
        source: io::Error,
    },
}

/// Options for [`write_layer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerOptions {
    /// `SOURCE_DATE_EPOCH` (0 if unset): mtimes later than this are clamped to it.
    pub epoch: u64,
}

/// What [`write_layer`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Number of entries (PAX headers not counted).
    pub entries: u64,
}

const USTAR_MAX_ID: u64 = 0o7_777_777;
const USTAR_MAX_SIZE: u64 = 0o77_777_777_777;

/// Writes the upper directory `upper` as a deterministic uncompressed tar into `out`.
///
/// Wrap `out` in a [`super::compress::BlobWriter`] to compress and hash in the same pass (or
/// use [`write_layer_unhashed`], as the blob writer hashes the tar itself).
pub fn write_layer(
    upper: &Path,
    out: impl Write,
    opts: &LayerOptions,
) -> Result<LayerStats, LayerError> {
    let sink = super::compress::HashingWriter {
        inner: out,
        hasher: Hasher::new(),
    };
    let (sink, entries) = walk(upper, sink, opts)?;
    Ok(LayerStats {
        diff_id: sink.hasher.finish(),
        entries,
    })
}

/// [`write_layer`] into a writer that hashes the tar itself (a
/// [`super::compress::BlobWriter`]: its `diff_id` is the layer's): the number of entries.
pub fn write_layer_unhashed(
    upper: &Path,
    out: impl Write,
    opts: &LayerOptions,
) -> Result<u64, LayerError> {
    Ok(walk(upper, out, opts)?.1)
}

fn walk<W: Write>(upper: &Path, sink: W, opts: &LayerOptions) -> Result<(W, u64), LayerError> {
    let mut w = Walker {
        tar: tar::Builder::new(sink),
        epoch: opts.epoch,
        links: HashMap::new(),
        entries: 0,
    };
    let root = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LayerError::Read {
        path: upper.to_owned(),
        source: e.into(),
    })?;
    w.dir(&root, upper, b"")?;
    let entries = w.entries;
    let sink = w
        .tar
        .into_inner()
        .map_err(|source| LayerError::Write { source })?;
    Ok((sink, entries))
}

/// The walk goes through directory fds with single-component names (`openat`, `statat`,
/// `flistxattr`), so a file costs one name lookup instead of a walk of its whole path per
/// call; only symlinks, devices and fifos, which cannot be opened safely, have their xattrs
/// read by path.
struct Walker<W: Write> {
    tar: tar::Builder<W>,
    epoch: u64,
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
}

/// One header's worth of metadata, before it is encoded.
struct Meta {
    path: Vec<u8>,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: Option<Vec<u8>>,
    dev: Option<(u32, u32)>,
    capability: Option<Vec<u8>>,
}

/// An entry's xattrs: listed once, read through its fd when it has one.
struct Xattrs<'a> {
    names: XattrNames,
    fd: Option<BorrowedFd<'a>>,
    path: &'a Path,
}

impl Xattrs<'_> {
    fn get(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        if !self.names.has(name) {
            return Ok(None);
        }
        match self.fd {
            Some(fd) => fget_xattr(fd, name),
            None => get_xattr(self.path, name),
        }
    }
}

impl<W: Write> Walker<W> {
    fn dir(&mut self, fd: &OwnedFd, abs: &Path, rel: &[u8]) -> Result<(), LayerError> {
        let read = |e: rustix::io::Errno| LayerError::Read {
            path: abs.to_owned(),
            source: e.into(),
        };
        let mut names: Vec<(Vec<u8>, FileType)> = Vec::new();
        for item in rustix::fs::Dir::read_from(fd).map_err(read)? {
            let item = item.map_err(read)?;
            let name = item.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push((name.to_vec(), item.file_type()));
            }
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in names {
            let child = abs.join(std::ffi::OsStr::from_bytes(&name));
            let mut child_rel = rel.to_vec();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(&name);
            self.entry(fd, &child, child_rel, &name, kind)?;
        }
        Ok(())
    }

    /// Opens a regular file of `dir` without following a symlink, and without blocking or
    /// taking a terminal if something else was swapped in since the listing: the file and its
    /// metadata, or `None` when it is no longer a regular file.
    fn open_regular(dir: &OwnedFd, name: &[u8]) -> io::Result<Option<(OwnedFd, Stat)>> {
        let fd = match rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NXIO) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        Ok(Some((fd, st)))
    }

    fn entry(
        &mut self,
        dir: &OwnedFd,
        abs: &Path,
        rel: Vec<u8>,
        name: &[u8],
        listed: FileType,
    ) -> Result<(), LayerError> {
        let read = |source: io::Error| LayerError::Read {
            path: abs.to_owned(),
            source,
        };
        // A regular file (most entries) is opened first: its metadata comes from the fd.
        let mut opened = if listed == FileType::RegularFile {
            Self::open_regular(dir, name).map_err(read)?
        } else {
            None
        };
        let md = match &opened {
            Some((_, st)) => *st,
            None => rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| read(e.into()))?,
        };
        let ft = FileType::from_raw_mode(md.st_mode);
        if ft == FileType::RegularFile && opened.is_none() {
            opened = Self::open_regular(dir, name).map_err(read)?;
            match &opened {
                Some((_, st)) if st.st_ino == md.st_ino => {}
                _ => {
                    return Err(LayerError::Changed {
                        path: abs.to_owned(),
                    });
                }
            }
        }
        let dir_fd = if ft == FileType::Directory {
            Some(
                rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| read(e.into()))?,
            )
        } else {
            None
        };
        let own_fd = opened
            .as_ref()
            .map(|(fd, _)| fd.as_fd())
            .or(dir_fd.as_ref().map(AsFd::as_fd));
        // One listing per entry; most entries have no xattrs, and then none is read.
        let xattrs = Xattrs {
            names: match own_fd {
                Some(fd) => XattrNames::of_fd(fd),
                None => XattrNames::of(abs),
            }
            .map_err(read)?,
            fd: own_fd,
            path: abs,
        };
        for xattr in [media::XATTR_OVERLAY_REDIRECT, media::XATTR_OVERLAY_METACOPY] {
            if xattrs.get(xattr).map_err(read)?.is_some() {
                return Err(LayerError::UnsupportedOverlay {
                    path: abs.to_owned(),
                    xattr,
                });
            }
        }
        let mtime = u64::try_from(md.st_mtime).unwrap_or(0).min(self.epoch);
        let mut meta = Meta {
            path: rel.clone(),
            kind: tar::EntryType::Regular,
            mode: md.st_mode & 0o7777,
            uid: u64::from(md.st_uid),
            gid: u64::from(md.st_gid),
            mtime,
            size: 0,
            link: None,
            dev: None,
            capability: None,
        };
        let is_whiteout = (ft == FileType::CharacterDevice && md.st_rdev == 0)
            || (ft == FileType::RegularFile
                && md.st_size == 0
                && xattrs
                    .get(media::XATTR_OVERLAY_WHITEOUT)
                    .map_err(read)?
                    .is_some());
        if is_whiteout {
            let mut path = rel[..rel.len() - name.len()].to_vec();
            path.extend_from_slice(media::WHITEOUT_PREFIX.as_bytes());
            path.extend_from_slice(name);
            meta.path = path;
            meta.mode = 0o600;
            return self.emit(meta, None);
        }
        if ft == FileType::Socket {
            return Ok(());
        }
        if ft != FileType::Symlink {
            meta.capability = xattrs.get(media::XATTR_SECURITY_CAPABILITY).map_err(read)?;
        }
        if let Some(sub) = &dir_fd {
            meta.kind = tar::EntryType::Directory;
            meta.path.push(b'/');
            // Only the `trusted.*` name: kiln mounts overlayfs in that mode, and a step can set
            // `user.overlay.*` xattrs itself, which the kernel does not honour — neither may we.
            let opaque = xattrs
                .get(media::XATTR_OVERLAY_OPAQUE)
                .map_err(read)?
                .as_deref()
                == Some(b"y");
            let (mode, uid, gid) = (meta.mode, meta.uid, meta.gid);
            self.emit(meta, None)?;
            if opaque {
                let mut path = rel.clone();
                path.push(b'/');
                path.extend_from_slice(media::WHITEOUT_OPAQUE.as_bytes());
                let marker = Meta {
                    path,
                    kind: tar::EntryType::Regular,
                    mode: mode & 0o777,
                    uid,
                    gid,
                    mtime,
                    size: 0,
                    link: None,
                    dev: None,
                    capability: None,
                };
                self.emit(marker, None)?;
            }
            return self.dir(sub, abs, &rel);
        }
        if md.st_nlink > 1 {
            let id = (md.st_dev, md.st_ino);
            if let Some(first) = self.links.get(&id) {
                meta.kind = tar::EntryType::Link;
                meta.link = Some(first.clone());
                meta.capability = None;
                return self.emit(meta, None);
            }
            self.links.insert(id, rel.clone());
        }
        if ft == FileType::Symlink {
            meta.kind = tar::EntryType::Symlink;
            meta.link = Some(
                rustix::fs::readlinkat(dir, name, Vec::new())
                    .map_err(|e| read(e.into()))?
                    .into_bytes(),
            );
            return self.emit(meta, None);
        }
        let Some((fd, _)) = opened else {
            meta.kind = match ft {
                FileType::Fifo => tar::EntryType::Fifo,
                FileType::CharacterDevice => tar::EntryType::Char,
                FileType::BlockDevice => tar::EntryType::Block,
                _ => {
                    return Err(LayerError::Changed {
                        path: abs.to_owned(),
                    });
                }
            };
            if ft != FileType::Fifo {
                let dev = md.st_rdev;
                meta.dev = Some((rustix::fs::major(dev), rustix::fs::minor(dev)));
            }
            return self.emit(meta, None);
        };
        // A regular file: archive exactly the size the header announces.
        meta.size = u64::try_from(md.st_size).unwrap_or(0);
        self.emit(meta, Some((File::from(fd), abs)))
    }

    fn emit(&mut self, meta: Meta, data: Option<(File, &Path)>) -> Result<(), LayerError> {
        let mut pax: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut h = tar::Header::new_ustar();
        set_name(&mut h, &meta.path, &mut pax);
        if let Some(link) = &meta.link {
            if link.len() <= 100 {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            } else {
                pax.insert("linkpath".into(), link.clone());
                h.as_old_mut().linkname.copy_from_slice(&link[..100]);
            }
        }
        h.set_entry_type(meta.kind);
        h.set_mode(meta.mode);
        h.set_mtime(meta.mtime);
        for (key, id) in [("uid", meta.uid), ("gid", meta.gid)] {
            if id > USTAR_MAX_ID {
                pax.insert(key.into(), id.to_string().into_bytes());
            }
        }
        h.set_uid(meta.uid.min(USTAR_MAX_ID));
        h.set_gid(meta.gid.min(USTAR_MAX_ID));
        if meta.size > USTAR_MAX_SIZE {
            pax.insert("size".into(), meta.size.to_string().into_bytes());
            h.set_size(0);
        } else {
            h.set_size(meta.size);
        }
        let dev = meta.dev.unwrap_or((0, 0));
        h.set_device_major(dev.0)
            .map_err(|source| LayerError::Write { source })?;
        h.set_device_minor(dev.1)
            .map_err(|source| LayerError::Write { source })?;
        if let Some(cap) = meta.capability {
            pax.insert(
                format!(
                    "{}{}",
                    media::PAX_XATTR_PREFIX,
                    media::XATTR_SECURITY_CAPABILITY
                ),
                cap,
            );
        }
        h.set_cksum();
        let write = |source| LayerError::Write { source };
        if !pax.is_empty() {
            let body = pax_records(&pax);
            let mut ph = tar::Header::new_ustar();
            ph.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            ph.set_entry_type(tar::EntryType::XHeader);
            ph.set_mode(0o644);
            ph.set_mtime(0);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_device_major(0).map_err(write)?;
            ph.set_device_minor(0).map_err(write)?;
            ph.set_size(body.len() as u64);
            ph.set_cksum();
            self.tar.append(&ph, &body[..]).map_err(write)?;
        }
        match data {
            None => self.tar.append(&h, io::empty()).map_err(write)?,
            Some((file, path)) => {
                let mut counted = Counted {
                    inner: file.take(meta.size),
                    n: 0,
                };
                self.tar.append(&h, &mut counted).map_err(write)?;
                if counted.n != meta.size {
                    return Err(LayerError::Changed {
                        path: path.to_owned(),
                    });
                }
            }
        }
        self.entries += 1;
        Ok(())
    }
}

struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Stores `path` in the ustar name (and prefix) fields, or in a PAX `path` record.
fn set_name(h: &mut tar::Header, path: &[u8], pax: &mut BTreeMap<String, Vec<u8>>) {
    if path.len() <= 100 {
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        return;
    }
    // ustar: prefix (<= 155) + '/' + name (<= 100), split at a slash.
    let split = path
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'/' && i <= 155 && path.len() - i - 1 <= 100 && i + 1 < path.len())
        .map(|(i, _)| i)
        .next();
    if let (Some(i), Some(ustar)) = (split, h.as_ustar_mut()) {
        ustar.prefix[..i].copy_from_slice(&path[..i]);
        ustar.name[..path.len() - i - 1].copy_from_slice(&path[i + 1..]);
        return;
    }
    pax.insert("path".into(), path.to_vec());
    h.as_old_mut().name.copy_from_slice(&path[..100]);
}

/// Encodes PAX records (`"<len> <key>=<value>\n"`, the length counting itself), keys sorted.
fn pax_records(records: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let base = k.len() + v.len() + 3;
        let mut len = base + base.to_string().len();
        if len.to_string().len() > base.to_string().len() {
            len += 1;
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// The names of the xattrs of an entry (not following a symlink), NUL-separated as
/// `llistxattr` gives them; empty where xattrs are unsupported.
struct XattrNames(Vec<u8>);

impl XattrNames {
    fn of(path: &Path) -> io::Result<Self> {
        Self::listed(|buf| rustix::fs::llistxattr(path, buf))
    }

    /// [`XattrNames::of`] through an open fd.
    fn of_fd(fd: BorrowedFd<'_>) -> io::Result<Self> {
        Self::listed(|buf| rustix::fs::flistxattr(fd, buf))
    }

    /// The list `list` fills in, in a buffer grown until it fits.
    fn listed(list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>) -> io::Result<Self> {
        let mut buf = vec![0u8; 256];
        loop {
            match list(&mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Self(buf));
                }
                Err(rustix::io::Errno::RANGE) if buf.len() < (1 << 20) => {
                    let len = buf.len() * 4;
                    buf.resize(len, 0);
                }
                Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM) => {
                    return Ok(Self(Vec::new()));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0.split(|&b| b == 0).any(|n| n == name.as_bytes())
    }
}

/// Reads xattr `name` of `path` without following a symlink; `None` when absent or unsupported.
pub(crate) fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    read_xattr(|buf| rustix::fs::lgetxattr(path, name, buf))
}

/// [`get_xattr`] through an open fd.
fn fget_xattr(fd: BorrowedFd<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
    read_xattr(|buf| rustix::fs::fgetxattr(fd, name, buf))
}

/// The value `get` reads, in a buffer grown until it fits; `None` when absent or unsupported.
fn read_xattr(get: impl Fn(&mut [u8]) -> rustix::io::Result<usize>) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match get(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < (1 << 16) => buf.resize(1 << 16, 0),
            Err(
                rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM,
            ) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut m = BTreeMap::new();
        m.insert("path".to_owned(), vec![b'a'; 5]);
        assert_eq!(pax_records(&m), b"14 path=aaaaa\n");
        m.clear();
        // 3 + 4 + 90 = 97 -> 99 -> "99" has 2 digits: total 99.
        m.insert("path".to_owned(), vec![b'a'; 90]);
        assert_eq!(pax_records(&m).len(), 99);
        m.insert("path".to_owned(), vec![b'a'; 92]);
        let r = pax_records(&m);
        assert_eq!(r.len(), 102);
        assert!(r.starts_with(b"102 "));
    }

    #[test]
    fn long_paths_use_ustar_prefix_then_pax() {
        let mut pax = BTreeMap::new();
        let mut h = tar::Header::new_ustar();
        let p = format!("{}/{}", "d".repeat(120), "f".repeat(50));
        set_name(&mut h, p.as_bytes(), &mut pax);
        assert!(pax.is_empty());
        assert_eq!(h.path_bytes().as_ref(), p.as_bytes());
        let long = "x".repeat(300);
        set_name(&mut tar::Header::new_ustar(), long.as_bytes(), &mut pax);
        assert_eq!(pax.get("path").unwrap(), long.as_bytes());
    }
}
