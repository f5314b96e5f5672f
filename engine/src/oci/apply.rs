//! Applying a layer tar to a directory without ever writing outside it.
//!
//! [`apply_layer`] reads an uncompressed layer tar (wrap compressed streams in
//! [`super::compress::decompress`]) and writes it under `dest`:
//! - [`ApplyMode::Overlay`] unpacks into an empty snapshot directory in overlay format: `.wh.x`
//!   becomes a char device 0/0 named `x`, `.wh..wh..opq` becomes `trusted.overlay.opaque=y` on
//!   its directory (both need root).
//! - [`ApplyMode::Flatten`] applies onto an existing tree: `.wh.x` removes `x` recursively,
//!   `.wh..wh..opq` empties its directory, in both cases sparing what this layer itself wrote
//!   (whiteouts hide lower layers only).
//!
//! Containment: entry names are cleaned (`/a` is `a`, `.` components dropped) and any `..`
//! component is refused. Every parent directory is opened component by component from a file
//! descriptor on `dest` with `O_NOFOLLOW|O_DIRECTORY`, so a symlink in a parent component is
//! refused rather than followed, and every creation is an `*at` call relative to that parent
//! with no-follow semantics. Hard-link targets are resolved the same way. Only the
//! `security.capability` xattr is applied; a layer can never set `trusted.overlay.*`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::media;

/// Errors applying a layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The tar stream is malformed or could not be read.
    #[error("cannot read the layer tar")]
    Tar {
        /// The cause.
        source: io::Error,
    },
    /// The destination directory cannot be opened.
    #[error("cannot open the destination {path}")]
    Dest {
        /// The destination.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An entry name (or hard-link target) would leave the destination.
    #[error("refusing entry {path:?}: {reason}")]
    UnsafePath {
        /// The name as found in the tar.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A parent component of an entry is a symlink or not a directory.
    #[error(
        "refusing entry {path:?}: parent component {component:?} is a symlink or not a directory"
    )]
    ParentNotDirectory {
        /// The entry name.
        path: String,
        /// The offending component.
        component: String,
    },
    /// The entry type is not supported.
    #[error("entry {path:?} has unsupported tar type {kind:?}")]
    Unsupported {
        /// The entry name.
        path: String,
        /// The tar type byte.
        kind: char,
    },
    /// Creating a device node or setting a trusted xattr needs root.
    #[error("{op} for {path:?} needs root (CAP_MKNOD / CAP_SYS_ADMIN)")]
    NeedsPrivilege {
        /// The entry name.
        path: String,
        /// The operation.
        op: &'static str,
    },
    /// A file system operation failed.
    #[error("{op} failed for {path:?}")]
    Fs {
        /// The entry name.
        path: String,
        /// The operation.
        op: &'static str,
        /// The cause.
        source: io::Error,
    },
}

/// How [`apply_layer`] treats whiteouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyMode {
    /// Write a snapshot in overlay format (whiteouts stay, as overlay whiteouts).
    Overlay,
    /// Apply onto an existing tree (whiteouts delete).
    Flatten,
}

/// What [`apply_layer`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries written (files, dirs, links, devices).
    pub entries: u64,
    /// Whiteouts (including opaque markers) applied.
    pub whiteouts: u64,
}

type Result<T> = std::result::Result<T, ApplyError>;

/// Applies the uncompressed layer tar `reader` under `dest` (which must exist).
pub fn apply_layer(reader: impl Read, dest: &Path, mode: ApplyMode) -> Result<ApplyStats> {
    let root: OwnedFd = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ApplyError::Dest {
        path: dest.to_owned(),
        source: e.into(),
    })?;
    let mut archive = tar::Archive::new(reader);
    let mut stats = ApplyStats::default();
    let mut written: HashSet<Vec<u8>> = HashSet::new();
    let mut dir_times: Vec<(Vec<Vec<u8>>, u64)> = Vec::new();
    let tar_err = |source| ApplyError::Tar { source };
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean(&raw, &shown)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || comps.is_empty() {
            continue;
        }
        let (mut uid, mut gid) = (
            entry.header().uid().map_err(tar_err)?,
            entry.header().gid().map_err(tar_err)?,
        );
        let mut capability = None;
        if let Some(exts) = entry.pax_extensions().map_err(tar_err)? {
            for ext in exts {
                let ext = ext.map_err(tar_err)?;
                let value = ext.value_bytes();
                match ext.key_bytes() {
                    b"uid" => uid = parse_id(value, &shown)?,
                    b"gid" => gid = parse_id(value, &shown)?,
                    k if k.strip_prefix(media::PAX_XATTR_PREFIX.as_bytes())
                        == Some(media::XATTR_SECURITY_CAPABILITY.as_bytes()) =>
                    {
                        capability = Some(value.to_vec());
                    }
                    _ => {}
                }
            }
        }
        let h = entry.header();
        let meta = Meta {
            uid: u32::try_from(uid).map_err(|_| unsafe_path(&shown, "uid out of range"))?,
            gid: u32::try_from(gid).map_err(|_| unsafe_path(&shown, "gid out of range"))?,
            mode: h.mode().map_err(tar_err)? & 0o7777,
            mtime: h.mtime().map_err(tar_err)?,
            capability,
        };
        let (name, parents) = match comps.split_last() {
            Some(x) => x,
            None => continue,
        };
        let fs_err = |op: &'static str| {
            let shown = shown.clone();
            move |e: Errno| ApplyError::Fs {
                path: shown,
                op,
                source: e.into(),
            }
        };

        // Whiteouts.
        if name.as_slice() == media::WHITEOUT_OPAQUE.as_bytes() {
            stats.whiteouts += 1;
            let dir = open_dir(&root, parents, true, &shown)?;
            match mode {
                ApplyMode::Overlay => rustix::fs::fsetxattr(
                    &dir,
                    media::XATTR_OVERLAY_OPAQUE,
                    b"y",
                    XattrFlags::empty(),
                )
                .map_err(|e| privileged(e, &shown, "setting trusted.overlay.opaque"))?,
                ApplyMode::Flatten => {
                    empty_dir_except(&dir, &parents.join(&b'/'), &written)
                        .map_err(fs_err("emptying opaque directory"))?;
                }
            }
            continue;
        }
        if name.starts_with(media::WHITEOUT_META_PREFIX.as_bytes()) {
            continue;
        }
        if let Some(target) = name.strip_prefix(media::WHITEOUT_PREFIX.as_bytes()) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(unsafe_path(&shown, "whiteout of an invalid name"));
            }
            stats.whiteouts += 1;
            let dir = open_dir(&root, parents, matches!(mode, ApplyMode::Overlay), &shown)?;
            let mut full = parents.to_vec();
            full.push(target.to_vec());
            match mode {
                ApplyMode::Overlay => {
                    remove_all_at(&dir, target).map_err(fs_err("removing"))?;
                    rustix::fs::mknodat(
                        &dir,
                        OsStr::from_bytes(target),
                        FileType::CharacterDevice,
                        Mode::empty(),
                        rustix::fs::makedev(0, 0),
                    )
                    .map_err(|e| privileged(e, &shown, "mknod of an overlay whiteout"))?;
                    rustix::fs::chownat(
                        &dir,
                        OsStr::from_bytes(target),
                        Some(Uid::from_raw(meta.uid)),
                        Some(Gid::from_raw(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(fs_err("chown"))?;
                    written.insert(full.join(&b'/'));
                }
                ApplyMode::Flatten => {
                    if !written.contains(&full.join(&b'/')) {
                        remove_all_at(&dir, target).map_err(fs_err("removing"))?;
                    }
                }
            }
            continue;
        }

        let dir = open_dir(&root, parents, true, &shown)?;
        let name_os = OsStr::from_bytes(name);
        let is_dir = kind.is_dir();
        match rustix::fs::statat(&dir, name_os, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir && FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) => remove_all_at(&dir, name).map_err(fs_err("replacing"))?,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(fs_err("stat")(e)),
        }
        let times = Timestamps {
            last_access: ts(meta.mtime),
            last_modification: ts(meta.mtime),
        };
        if is_dir {
            match rustix::fs::mkdirat(&dir, name_os, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(fs_err("mkdir")(e)),
            }
            let fd = rustix::fs::openat(&dir, name_os, dir_flags(), Mode::empty())
                .map_err(fs_err("open dir"))?;
            set_owner_mode_caps(&fd, &meta, &shown)?;
            dir_times.push((comps.clone(), meta.mtime));
        } else if kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse() {
            let fd = rustix::fs::openat(
                &dir,
                name_os,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(fs_err("create"))?;
            let mut file = File::from(fd);
            io::copy(&mut entry, &mut file).map_err(tar_err)?;
            set_owner_mode_caps(&file, &meta, &shown)?;
            rustix::fs::futimens(&file, &times).map_err(fs_err("futimens"))?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| unsafe_path(&shown, "symlink without a target"))?;
            rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, name_os)
                .map_err(fs_err("symlink"))?;
            chown_at(&dir, name_os, &meta).map_err(fs_err("chown"))?;
            rustix::fs::utimensat(&dir, name_os, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(fs_err("utimensat"))?;
        } else if kind.is_hard_link() {
            let raw_target = entry
                .link_name_bytes()
                .ok_or_else(|| unsafe_path(&shown, "hard link without a target"))?;
            let tcomps = clean(&raw_target, &shown)?;
            let (tname, tparents) = tcomps
                .split_last()
                .ok_or_else(|| unsafe_path(&shown, "hard link to the root"))?;
            let tdir = open_dir(&root, tparents, false, &shown)?;
            rustix::fs::linkat(
                &tdir,
                OsStr::from_bytes(tname),
                &dir,
                name_os,
                AtFlags::empty(),
            )
            .map_err(fs_err("link"))?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let (ft, dev) = if kind.is_fifo() {
                (FileType::Fifo, rustix::fs::makedev(0, 0))
            } else {
                let h = entry.header();
                let major = h.device_major().map_err(tar_err)?.unwrap_or(0);
                let minor = h.device_minor().map_err(tar_err)?.unwrap_or(0);
                let ft = if kind.is_character_special() {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                (ft, rustix::fs::makedev(major, minor))
            };
            rustix::fs::mknodat(&dir, name_os, ft, Mode::from_raw_mode(0o600), dev)
                .map_err(|e| privileged(e, &shown, "mknod"))?;
            chown_at(&dir, name_os, &meta).map_err(fs_err("chown"))?;
            // The node was just created by mknodat, so it is not a symlink.
            rustix::fs::chmodat(
                &dir,
                name_os,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(fs_err("chmod"))?;
            rustix::fs::utimensat(&dir, name_os, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(fs_err("utimensat"))?;
        } else {
            return Err(ApplyError::Unsupported {
                path: shown,
                kind: char::from(kind.as_byte()),
            });
        }
        written.insert(comps.join(&b'/'));
        stats.entries += 1;
    }
    // Directory mtimes last: creating children changed them. Deepest first.
    dir_times.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
    for (comps, mtime) in dir_times {
        let shown = String::from_utf8_lossy(&comps.join(&b'/')).into_owned();
        let Some((name, parents)) = comps.split_last() else {
            continue;
        };
        let dir = open_dir(&root, parents, false, &shown)?;
        let times = Timestamps {
            last_access: ts(mtime),
            last_modification: ts(mtime),
        };
        rustix::fs::utimensat(
            &dir,
            OsStr::from_bytes(name),
            &times,
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ApplyError::Fs {
            path: shown,
            op: "utimensat",
            source: e.into(),
        })?;
    }
    Ok(stats)
}

struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
    capability: Option<Vec<u8>>,
}

fn ts(secs: u64) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
        tv_nsec: 0,
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn unsafe_path(path: &str, reason: &'static str) -> ApplyError {
    ApplyError::UnsafePath {
        path: path.to_owned(),
        reason,
    }
}

fn privileged(e: Errno, path: &str, op: &'static str) -> ApplyError {
    if e == Errno::PERM || e == Errno::ACCESS {
        ApplyError::NeedsPrivilege {
            path: path.to_owned(),
            op,
        }
    } else {
        ApplyError::Fs {
            path: path.to_owned(),
            op,
            source: e.into(),
        }
    }
}

fn parse_id(value: &[u8], shown: &str) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| unsafe_path(shown, "malformed PAX uid/gid"))
}

/// Splits an entry name into components: leading `/` and `.` components dropped, `..` refused.
fn clean(raw: &[u8], shown: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_path(shown, "`..` component")),
            c if c.contains(&0) => return Err(unsafe_path(shown, "NUL byte")),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// Opens the directory `comps` under `root`, one component at a time, never following a
/// symlink; missing directories are created (0755, root-owned) when `create` is set.
fn open_dir(root: &OwnedFd, comps: &[Vec<u8>], create: bool, shown: &str) -> Result<OwnedFd> {
    let mut cur = rustix::io::dup(root).map_err(|e| ApplyError::Fs {
        path: shown.to_owned(),
        op: "dup",
        source: e.into(),
    })?;
    for c in comps {
        let name = OsStr::from_bytes(c);
        let next = match rustix::fs::openat(&cur, name, dir_flags(), Mode::empty()) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(ApplyError::Fs {
                            path: shown.to_owned(),
                            op: "mkdir parent",
                            source: e.into(),
                        });
                    }
                }
                rustix::fs::openat(&cur, name, dir_flags(), Mode::empty())
            }
            other => other,
        };
        cur = next.map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => ApplyError::ParentNotDirectory {
                path: shown.to_owned(),
                component: String::from_utf8_lossy(c).into_owned(),
            },
            e => ApplyError::Fs {
                path: shown.to_owned(),
                op: "open parent",
                source: e.into(),
            },
        })?;
    }
    Ok(cur)
}

fn chown_at(dir: &OwnedFd, name: &OsStr, meta: &Meta) -> rustix::io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// chown, then chmod (chown clears set-id bits), then the capability (chown clears it too).
fn set_owner_mode_caps(fd: impl AsFd, meta: &Meta, shown: &str) -> Result<()> {
    let err = |op: &'static str| {
        move |e: Errno| ApplyError::Fs {
            path: shown.to_owned(),
            op,
            source: e.into(),
        }
    };
    rustix::fs::fchown(
        &fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(err("chown"))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode)).map_err(err("chmod"))?;
    if let Some(cap) = &meta.capability {
        rustix::fs::fsetxattr(
            &fd,
            media::XATTR_SECURITY_CAPABILITY,
            cap,
            XattrFlags::empty(),
        )
        .map_err(|e| privileged(e, shown, "setting security.capability"))?;
    }
    Ok(())
}

/// Removes `name` under `dir` recursively, never following symlinks; absent is fine.
fn remove_all_at(dir: &OwnedFd, name: &[u8]) -> rustix::io::Result<()> {
    let name_os = OsStr::from_bytes(name);
    let st = match rustix::fs::statat(dir, name_os, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = rustix::fs::openat(dir, name_os, dir_flags(), Mode::empty())?;
        for child in list_dir(&sub)? {
            remove_all_at(&sub, &child)?;
        }
        rustix::fs::unlinkat(dir, name_os, AtFlags::REMOVEDIR)
    } else {
        rustix::fs::unlinkat(dir, name_os, AtFlags::empty())
    }
}

fn list_dir(dir: &OwnedFd) -> rustix::io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut it = rustix::fs::Dir::read_from(dir)?;
    while let Some(e) = it.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// Empties `dir` (at relative path `rel`) except what this layer wrote, recursing into
/// directories this layer wrote so their lower content goes too.
fn empty_dir_except(
    dir: &OwnedFd,
    rel: &[u8],
    written: &HashSet<Vec<u8>>,
) -> rustix::io::Result<()> {
    for child in list_dir(dir)? {
        let mut child_rel = rel.to_vec();
        if !child_rel.is_empty() {
            child_rel.push(b'/');
        }
        child_rel.extend_from_slice(&child);
        if !written.contains(&child_rel) {
            remove_all_at(dir, &child)?;
            continue;
        }
        let child_os = OsStr::from_bytes(&child);
        let st = rustix::fs::statat(dir, child_os, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = rustix::fs::openat(dir, child_os, dir_flags(), Mode::empty())?;
            empty_dir_except(&sub, &child_rel, written)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn clean_drops_leading_slash_and_dots_and_refuses_dotdot() {
        assert_eq!(
            clean(b"/a/./b/", "").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(clean(b"./", "").unwrap().is_empty());
        assert!(matches!(
            clean(b"a/../../x", ""),
            Err(ApplyError::UnsafePath { .. })
        ));
    }
}
