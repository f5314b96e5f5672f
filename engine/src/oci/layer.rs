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
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

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
    w.dir(upper, b"")?;
    let entries = w.entries;
    let sink = w
        .tar
        .into_inner()
        .map_err(|source| LayerError::Write { source })?;
    Ok((sink, entries))
}

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

impl<W: Write> Walker<W> {
    fn dir(&mut self, abs: &Path, rel: &[u8]) -> Result<(), LayerError> {
        let read = |source| LayerError::Read {
            path: abs.to_owned(),
            source,
        };
        let mut names: Vec<Vec<u8>> = fs::read_dir(abs)
            .map_err(read)?
            .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(read)?;
        names.sort();
        for name in names {
            let child = abs.join(std::ffi::OsStr::from_bytes(&name));
            let mut child_rel = rel.to_vec();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(&name);
            self.entry(&child, child_rel, &name)?;
        }
        Ok(())
    }

    fn entry(&mut self, abs: &Path, rel: Vec<u8>, name: &[u8]) -> Result<(), LayerError> {
        let read = |source| LayerError::Read {
            path: abs.to_owned(),
            source,
        };
        let md = fs::symlink_metadata(abs).map_err(read)?;
        let ft = md.file_type();
        // One listing per entry; most entries have no xattrs, and then none is read.
        let xattrs = XattrNames::of(abs).map_err(read)?;
        let read_xattr = |path: &Path, name: &str| -> io::Result<Option<Vec<u8>>> {
            if xattrs.has(name) {
                get_xattr(path, name)
            } else {
                Ok(None)
            }
        };
        for xattr in [media::XATTR_OVERLAY_REDIRECT, media::XATTR_OVERLAY_METACOPY] {
            if read_xattr(abs, xattr).map_err(read)?.is_some() {
                return Err(LayerError::UnsupportedOverlay {
                    path: abs.to_owned(),
                    xattr,
                });
            }
        }
        let mtime = u64::try_from(md.mtime()).unwrap_or(0).min(self.epoch);
        let mut meta = Meta {
            path: rel.clone(),
            kind: tar::EntryType::Regular,
            mode: md.mode() & 0o7777,
            uid: u64::from(md.uid()),
            gid: u64::from(md.gid()),
            mtime,
            size: 0,
            link: None,
            dev: None,
            capability: None,
        };
        let is_whiteout = (ft.is_char_device() && md.rdev() == 0)
            || (ft.is_file()
                && md.len() == 0
                && read_xattr(abs, media::XATTR_OVERLAY_WHITEOUT)
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
        if ft.is_socket() {
            return Ok(());
        }
        if !ft.is_symlink() {
            meta.capability = read_xattr(abs, media::XATTR_SECURITY_CAPABILITY).map_err(read)?;
        }
        if ft.is_dir() {
            meta.kind = tar::EntryType::Directory;
            meta.path.push(b'/');
            let opaque = xattrs.has(media::XATTR_OVERLAY_OPAQUE) && is_opaque(abs).map_err(read)?;
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
            return self.dir(abs, &rel);
        }
        if md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                meta.kind = tar::EntryType::Link;
                meta.link = Some(first.clone());
                meta.capability = None;
                return self.emit(meta, None);
            }
            self.links.insert((md.dev(), md.ino()), rel.clone());
        }
        if ft.is_symlink() {
            meta.kind = tar::EntryType::Symlink;
            meta.link = Some(
                fs::read_link(abs)
                    .map_err(read)?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            );
            return self.emit(meta, None);
        }
        if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            meta.kind = if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            if !ft.is_fifo() {
                let dev = md.rdev();
                meta.dev = Some((rustix::fs::major(dev), rustix::fs::minor(dev)));
            }
            return self.emit(meta, None);
        }
        // A regular file: open without following a symlink swapped in since the lstat, and
        // archive exactly the size the header announces.
        let fd = rustix::fs::open(
            abs,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| read(e.into()))?;
        let file = File::from(fd);
        let fmd = file.metadata().map_err(read)?;
        if !fmd.is_file() || fmd.ino() != md.ino() {
            return Err(LayerError::Changed {
                path: abs.to_owned(),
            });
        }
        meta.size = fmd.len();
        self.emit(meta, Some((file, abs)))
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

fn is_opaque(abs: &Path) -> io::Result<bool> {
    // Only the `trusted.*` names: kiln mounts overlayfs in that mode, and a step can set
    // `user.overlay.*` xattrs itself, which the kernel does not honour — neither may we.
    for name in [media::XATTR_OVERLAY_OPAQUE] {
        if get_xattr(abs, name)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The names of the xattrs of an entry (not following a symlink), NUL-separated as
/// `llistxattr` gives them; empty where xattrs are unsupported.
struct XattrNames(Vec<u8>);

impl XattrNames {
    fn of(path: &Path) -> io::Result<Self> {
        let mut buf = vec![0u8; 256];
        loop {
            match rustix::fs::llistxattr(path, &mut buf[..]) {
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
    let mut buf = vec![0u8; 4096];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
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
