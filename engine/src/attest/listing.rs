//! One layer directory's own entries, whiteouts and opaque directories included, and their
//! merge into the file system a stack of layers shows: what [`crate::fsview::LayerView`]
//! reads through every layer, path by path, computed from per-layer listings instead.
//!
//! A layer directory never changes once written, so the listing of a layer the store keeps
//! is made once and kept (`listing:<layer id>` in the store's SBOM table, cleared by prune
//! with the catalogs): the SBOM catalog of an image then lists only the layers it has not seen,
//! and a base image's thousands of entries are not walked again through every layer above them.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::fsview::{self, FileKind, FsViewError, Metadata};

/// What an entry of one layer is, as the merge needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    #[serde(rename = "f")]
    File,
    /// A directory, merged with the same directory of the layers below.
    #[serde(rename = "d")]
    Dir,
    /// An opaque directory (`trusted.overlay.opaque=y`): hides what the layers below hold
    /// under it.
    #[serde(rename = "o")]
    OpaqueDir,
    /// A symbolic link.
    #[serde(rename = "l")]
    Symlink,
    /// A device, fifo or socket.
    #[serde(rename = "x")]
    Other,
    /// A whiteout: the path is deleted, with everything the layers below hold under it.
    #[serde(rename = "w")]
    Whiteout,
}

/// One entry of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// Absolute path inside the layer (`/etc/passwd`).
    #[serde(rename = "p")]
    pub path: String,
    /// What it is.
    #[serde(rename = "k")]
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    #[serde(rename = "m")]
    pub mode: u32,
    /// Size in bytes (regular files; 0 otherwise).
    #[serde(rename = "s")]
    pub size: u64,
}

/// A layer directory's own entries, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The layer's root is opaque: nothing of the layers below shows.
    #[serde(rename = "r", default)]
    pub opaque_root: bool,
    /// Every entry below the root.
    #[serde(rename = "e")]
    pub entries: Vec<Listed>,
}

/// The store key of a layer's listing.
pub fn listing_key(layer_id: &str) -> String {
    format!("listing:{layer_id}")
}

const DIR_NOFOLLOW: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Lists the layer directory `root` (a path the engine chose): every entry below it, no
/// symlink followed, whiteouts and opaque directories marked as [`crate::fsview::LayerView`]
/// recognises them.
pub fn list(root: &Path) -> Result<Listing, FsViewError> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FsViewError::OpenLayer {
        layer: root.to_owned(),
        source: e.into(),
    })?;
    let opaque_root = fsview::is_opaque(&fd);
    let mut entries = Vec::new();
    walk(root, &fd, "", &mut entries)?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Listing {
        opaque_root,
        entries,
    })
}

fn walk(
    layer: &Path,
    dir: &OwnedFd,
    prefix: &str,
    out: &mut Vec<Listed>,
) -> Result<(), FsViewError> {
    let err = |path: String, e: Errno| FsViewError::Read {
        path,
        layer: layer.to_owned(),
        source: e.into(),
    };
    let here = if prefix.is_empty() { "/" } else { prefix };
    let mut names = Vec::new();
    for item in rustix::fs::Dir::read_from(dir).map_err(|e| err(here.to_owned(), e))? {
        let item = item.map_err(|e| err(here.to_owned(), e))?;
        let raw = item.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let name = std::str::from_utf8(raw).map_err(|_| FsViewError::NonUtf8Name {
            dir: here.to_owned(),
        })?;
        names.push(name.to_owned());
    }
    for name in names {
        let path = format!("{prefix}/{name}");
        let st = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| err(path.clone(), e))?;
        let meta = Metadata::from_stat(&st);
        if fsview::is_whiteout(dir, &name, &meta) {
            out.push(Listed {
                path,
                kind: Kind::Whiteout,
                mode: meta.mode,
                size: 0,
            });
            continue;
        }
        let (kind, sub) = match meta.kind {
            FileKind::File => (Kind::File, None),
            FileKind::Dir => {
                let sub = rustix::fs::openat(dir, name.as_str(), DIR_NOFOLLOW, Mode::empty())
                    .map_err(|e| err(path.clone(), e))?;
                let kind = if fsview::is_opaque(&sub) {
                    Kind::OpaqueDir
                } else {
                    Kind::Dir
                };
                (kind, Some(sub))
            }
            FileKind::Symlink => (Kind::Symlink, None),
            _ => (Kind::Other, None),
        };
        out.push(Listed {
            path: path.clone(),
            kind,
            mode: meta.mode,
            size: if kind == Kind::File { meta.size } else { 0 },
        });
        if let Some(sub) = sub {
            walk(layer, &sub, &path, out)?;
        }
    }
    Ok(())
}

/// The file system `listings` (bottom first) make, path by path: each visible entry and the
/// index of the layer it comes from (the topmost that has it). The overlay rules, as
/// [`crate::fsview::LayerView`] applies them: an entry of a layer hides the same path below
/// it, and a non-directory also hides everything below it under that path; directories merge
/// (the topmost one's metadata); a whiteout deletes the path and everything under it; an
/// opaque directory hides what the layers below hold under it; an opaque root hides the
/// layers below entirely.
pub fn merge(listings: &[&Listing]) -> BTreeMap<String, (Listed, usize)> {
    let mut merged: BTreeMap<String, (Listed, usize)> = BTreeMap::new();
    for (index, listing) in listings.iter().enumerate() {
        if listing.opaque_root {
            merged.clear();
        }
        // Sorted by path: a directory comes before what it holds.
        for e in &listing.entries {
            match e.kind {
                Kind::Dir => {}
                Kind::Whiteout => {
                    merged.remove(&e.path);
                    remove_below(&mut merged, &e.path);
                    continue;
                }
                Kind::OpaqueDir | Kind::File | Kind::Symlink | Kind::Other => {
                    remove_below(&mut merged, &e.path);
                }
            }
            merged.insert(e.path.clone(), (e.clone(), index));
        }
    }
    merged
}

/// Removes every path strictly under `dir`.
fn remove_below(merged: &mut BTreeMap<String, (Listed, usize)>, dir: &str) {
    let from = format!("{dir}/");
    // `0` follows `/` in ASCII: [dir/, dir0) is exactly the paths under dir.
    let to = format!("{dir}0");
    let under: Vec<String> = merged.range(from..to).map(|(k, _)| k.clone()).collect();
    for k in under {
        merged.remove(&k);
    }
}
