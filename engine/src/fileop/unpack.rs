//! ADD of a local archive: detect a tar (plain, gzip, zstd) by its magic and extract it into
//! the destination directory, refusing any entry that would land outside it.

use std::io::{self, Read};
use std::os::fd::OwnedFd;

use super::CopyStats;
use super::FileOpError;
use super::upper::{Attrs, NewDir, Upper, set_attrs_fd, upper_err};
use crate::fsview::{Entry, FileKind, LayerView, join_abs};

/// A recognised archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Tar,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const BZIP2_MAGIC: &[u8] = b"BZh";
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// Whether the file entry `e` is an archive ADD extracts. A compressed file that does not
/// hold a tar is copied as it is (like BuildKit).
pub(crate) fn detect(src: &LayerView, e: &Entry) -> Result<Option<Format>, FileOpError> {
    let archive = e.path();
    let head = read_head(src.open_entry(e)?, &archive)?;
    let format = if head.starts_with(GZIP_MAGIC) {
        Format::Gzip
    } else if head.starts_with(ZSTD_MAGIC) {
        Format::Zstd
    } else if head.starts_with(BZIP2_MAGIC) || head.starts_with(XZ_MAGIC) {
        let format = if head.starts_with(XZ_MAGIC) {
            "xz"
        } else {
            "bzip2"
        };
        return Err(FileOpError::UnsupportedArchive { archive, format });
    } else {
        return Ok(is_tar_header(&head).then_some(Format::Tar));
    };
    let inner = read_head(decoder(src, e, format)?, &archive).unwrap_or_default();
    Ok(is_tar_header(&inner).then_some(format))
}

fn read_head(r: impl Read, archive: &str) -> Result<Vec<u8>, FileOpError> {
    let mut head = Vec::with_capacity(512);
    r.take(512)
        .read_to_end(&mut head)
        .map_err(|source| FileOpError::Archive {
            archive: archive.to_owned(),
            source,
        })?;
    Ok(head)
}

/// A 512-byte block that is a tar header: `ustar` magic, or a valid v7 checksum.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 || block.iter().all(|b| *b == 0) {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = String::from_utf8_lossy(&block[148..156]);
    let field = field.trim_matches(|c: char| c == '\0' || c == ' ');
    let Ok(want) = u64::from_str_radix(field, 8) else {
        return false;
    };
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    sum == want
}

fn decoder(src: &LayerView, e: &Entry, format: Format) -> Result<Box<dyn Read>, FileOpError> {
    let file = src.open_entry(e)?;
    Ok(match format {
        Format::Tar => Box::new(file),
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(|source| {
            FileOpError::Archive {
                archive: e.path(),
                source,
            }
        })?),
    })
}

/// Extracts the archive `e` into the upper directory `dest` (open fd and its components).
/// Entry names are cleaned as relative paths (a leading `/` is dropped); a name that still
/// climbs out with `..`, a hard link pointing outside, or a parent that is a symlink written
/// by this archive (or one in the destination view resolving outside `dest`) is an error.
pub(crate) fn extract(
    up: &Upper<'_>,
    src: &LayerView,
    e: &Entry,
    format: Format,
    dest: &[String],
    (chown, new_dir): (Option<(u32, u32)>, NewDir),
    stats: &mut CopyStats,
) -> Result<(), FileOpError> {
    let archive = e.path();
    let bad = |source: io::Error| FileOpError::Archive {
        archive: archive.clone(),
        source,
    };
    let mut ar = tar::Archive::new(decoder(src, e, format)?);
    for item in ar.entries().map_err(bad)? {
        let mut item = item.map_err(bad)?;
        let raw = String::from_utf8_lossy(&item.path_bytes()).into_owned();
        let escape = |reason| FileOpError::ArchiveEscape {
            archive: archive.clone(),
            entry: raw.clone(),
            reason,
        };
        let rel = clean_relative(&raw).ok_or_else(|| escape("`..` leaves the destination"))?;
        let Some((name, parents)) = rel.split_last() else {
            continue;
        };
        let parent = resolve_parent(up, dest, parents).map_err(|r| match r {
            Ok(reason) => escape(reason),
            Err(err) => err,
        })?;
        let (pfd, _) = up.dir(&parent, new_dir)?;
        let mut target = parent.clone();
        target.push(name.clone());
        let h = item.header();
        let (uid, gid) = match chown {
            Some(ids) => ids,
            None => (
                // Like Go's archive/tar, an empty numeric field reads as 0.
                u32::try_from(h.uid().unwrap_or(0)).unwrap_or(0),
                u32::try_from(h.gid().unwrap_or(0)).unwrap_or(0),
            ),
        };
        let attrs = Attrs {
            mode: h.mode().map_err(bad)? & 0o7777,
            uid,
            gid,
            mtime: Some((i64::try_from(h.mtime().unwrap_or(0)).unwrap_or(0), 0)),
        };
        let kind = h.entry_type();
        if kind.is_dir() {
            let (fd, fresh) = up.child_dir(&pfd, &target, attrs)?;
            if !fresh {
                set_attrs_fd(&fd, attrs).map_err(|err| upper_err(&target, err))?;
            }
            stats.dirs += 1;
        } else if kind.is_symlink() {
            let link = item
                .link_name_bytes()
                .ok_or_else(|| escape("symlink without target"))?;
            Upper::create_symlink(&pfd, &target, &String::from_utf8_lossy(&link), attrs)?;
            stats.symlinks += 1;
        } else if kind.is_hard_link() {
            let link = item
                .link_name_bytes()
                .ok_or_else(|| escape("link without target"))?;
            let to = clean_relative(&String::from_utf8_lossy(&link))
                .ok_or_else(|| escape("hard link leaves the destination"))?;
            let mut to_comps = dest.to_vec();
            to_comps.extend(to);
            up.link(&to_comps, &target)?;
            stats.hardlinks += 1;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let (major, minor) = (
                h.device_major().map_err(bad)?.unwrap_or(0),
                h.device_minor().map_err(bad)?.unwrap_or(0),
            );
            let fk = if kind.is_character_special() {
                FileKind::CharDevice
            } else if kind.is_block_special() {
                FileKind::BlockDevice
            } else {
                FileKind::Fifo
            };
            let rdev = rustix::fs::makedev(major, minor);
            Upper::create_node(&pfd, &target, fk, rdev, attrs)?;
            stats.nodes += 1;
        } else if kind.is_file() || kind.is_contiguous() {
            let mut out = Upper::create_file(&pfd, &target)?;
            let n = io::copy(&mut item, &mut out).map_err(bad)?;
            set_attrs_fd(&OwnedFd::from(out), attrs).map_err(|err| upper_err(&target, err))?;
            stats.files += 1;
            stats.bytes += n;
        }
        // PAX/GNU metadata entries are consumed by the tar reader; other kinds are skipped.
    }
    Ok(())
}

/// Cleans an archive name as a path relative to the destination; `None` if it climbs out.
fn clean_relative(name: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c.to_owned()),
        }
    }
    Some(out)
}

/// Where the parent directory of an entry is, following destination-view symlinks only while
/// they stay under `dest`. `Err(Ok(reason))` is an escape, `Err(Err(e))` a failure.
fn resolve_parent(
    up: &Upper<'_>,
    dest: &[String],
    parents: &[String],
) -> Result<Vec<String>, Result<&'static str, FileOpError>> {
    let mut cur = dest.to_vec();
    for c in parents {
        let mut cand = cur.clone();
        cand.push(c.clone());
        match up.kind_at(&cand) {
            Some(FileKind::Dir) => {
                cur = cand;
                continue;
            }
            Some(FileKind::Symlink) => return Err(Ok("a parent is a symlink in the archive")),
            Some(_) => return Err(Ok("a parent is not a directory")),
            None => {}
        }
        let view = up.dest();
        let lower = view.lookup(&join_abs(&cand)).map_err(|e| Err(e.into()))?;
        if lower.is_some_and(|l| l.metadata().kind == FileKind::Symlink) {
            let r = view
                .resolve_for_write(&join_abs(&cand))
                .map_err(|e| Err(e.into()))?;
            let inside = r.components().starts_with(dest);
            let is_dir = r
                .entry()
                .is_some_and(|x| x.metadata().kind == FileKind::Dir);
            if !inside || !is_dir {
                return Err(Ok("a parent symlink points outside the destination"));
            }
            cur = r.components().to_vec();
            continue;
        }
        cur = cand;
    }
    Ok(cur)
}
