//! The content digest of exactly the files a COPY selects, for the solver's cache key.

use std::io;

use super::copy::select;
use super::{CopyRequest, FileOpError};
use crate::digest::{Digest, Hasher};
use crate::fsview::{DirHandle, Entry, FileKind, LayerView};

/// A stable digest of what `paths` select in `view` (wildcards expanded, a top-level symlink
/// followed, directories walked in sorted order): for each entry its path relative to the
/// selected source, kind, mode, uid/gid, device number, symlink target and content sha256 —
/// never timestamps. A missing non-wildcard path is an error, like the copy itself.
pub fn content_digest(view: &LayerView, paths: &[String]) -> Result<Digest, FileOpError> {
    content_digest_cached(view, paths, None)
}

/// Remembers the sha256 of files by what identifies their content without reading it: device,
/// inode, size, modification and status-change times. The status-change time cannot be set
/// by users and changes with every write, so a hit is a file whose bytes did not change.
pub trait FileHashCache: Sync {
    /// A remembered digest.
    fn get(&self, key: &FileKey) -> Option<Digest>;
    /// Remembers a digest.
    fn put(&self, key: FileKey, digest: Digest);
}

/// The cache key of a file: `(dev, ino, size, mtime s, mtime ns, ctime s, ctime ns)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey(pub [u64; 7]);

impl FileKey {
    fn of(m: &crate::fsview::Metadata) -> Self {
        // Times are stored bit for bit; they are only compared for equality.
        Self([
            m.dev_ino.0,
            m.dev_ino.1,
            m.size,
            m.mtime_sec as u64,
            m.mtime_nsec as u64,
            m.ctime.0 as u64,
            m.ctime.1 as u64,
        ])
    }

    /// The key as bytes (for storage).
    pub fn to_bytes(&self) -> [u8; 56] {
        let mut out = [0u8; 56];
        for (i, v) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The key from its bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 56 {
            return None;
        }
        let mut v = [0u64; 7];
        for (i, x) in v.iter_mut().enumerate() {
            *x = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().ok()?);
        }
        Some(Self(v))
    }
}

/// [`content_digest`] with a cache of file hashes (for client contexts, which are hashed on
/// every build, cached or not).
pub fn content_digest_cached(
    view: &LayerView,
    paths: &[String],
    cache: Option<&dyn FileHashCache>,
) -> Result<Digest, FileOpError> {
    let req = CopyRequest {
        allow_wildcard: true,
        allow_empty_wildcard: true,
        ..CopyRequest::default()
    };
    let mut h = Hasher::new();
    let mut links = std::collections::HashMap::new();
    field(&mut h, b"kiln content digest v2");
    for p in paths {
        field(&mut h, b"source");
        field(&mut h, p.as_bytes());
        for (base, e) in select(view, p, &req)? {
            entry(view, &mut h, &base, &e, None, cache, &mut links)?;
        }
    }
    Ok(h.finish())
}

fn entry(
    view: &LayerView,
    h: &mut Hasher,
    rel: &str,
    e: &Entry,
    parent: Option<&DirHandle>,
    cache: Option<&dyn FileHashCache>,
    links: &mut std::collections::HashMap<(u64, u64), String>,
) -> Result<(), FileOpError> {
    let m = e.metadata();
    field(h, b"entry");
    field(h, rel.as_bytes());
    field(h, format!("{:?}", m.kind).as_bytes());
    field(h, &m.mode.to_le_bytes());
    field(h, &m.uid.to_le_bytes());
    field(h, &m.gid.to_le_bytes());
    match m.kind {
        FileKind::File => {
            // COPY recreates hard links between the files it copies: their structure is part
            // of what is copied (the first name of each linked inode, in walk order).
            if m.nlink > 1 {
                match links.get(&m.dev_ino) {
                    Some(first) => {
                        field(h, b"hardlink");
                        field(h, first.as_bytes());
                    }
                    None => {
                        links.insert(m.dev_ino, rel.to_owned());
                    }
                }
            }
            let key = FileKey::of(m);
            let cached = cache.and_then(|c| c.get(&key));
            let digest = match cached {
                Some(d) => d,
                None => {
                    let mut content = Hasher::new();
                    let mut f = match parent {
                        Some(p) => view.open_entry_in(p, e)?,
                        None => view.open_entry(e)?,
                    };
                    io::copy(&mut f, &mut content).map_err(|source| FileOpError::ReadSource {
                        path: e.path(),
                        source,
                    })?;
                    // File capabilities are copied too (and changing them changes the ctime,
                    // so the cached value stays right).
                    let mut cap = vec![0u8; 256];
                    if let Ok(n) = rustix::fs::fgetxattr(&f, "security.capability", &mut cap[..]) {
                        content.update(b"\0security.capability\0");
                        content.update(cap.get(..n).unwrap_or_default());
                    }
                    let d = content.finish();
                    if let Some(c) = cache {
                        c.put(key, d);
                    }
                    d
                }
            };
            field(h, digest.as_bytes());
        }
        FileKind::Symlink => field(h, view.read_link_entry(e)?.as_bytes()),
        FileKind::CharDevice | FileKind::BlockDevice => field(h, &m.rdev.to_le_bytes()),
        FileKind::Dir => {
            let dir = match parent {
                Some(p) => view.child_dir(p, e)?,
                None => view.open_dir(e)?,
            };
            for child in view.read_dir_handle(&dir)? {
                let child_rel = if rel.is_empty() {
                    child.name().to_owned()
                } else {
                    format!("{rel}/{}", child.name())
                };
                entry(view, h, &child_rel, &child, Some(&dir), cache, links)?;
            }
            field(h, b"end");
        }
        _ => {}
    }
    Ok(())
}

/// A length-prefixed field, so that concatenations cannot collide.
fn field(h: &mut Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}
