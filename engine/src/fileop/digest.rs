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
    let req = CopyRequest {
        allow_wildcard: true,
        allow_empty_wildcard: true,
        ..CopyRequest::default()
    };
    let mut h = Hasher::new();
    field(&mut h, b"kiln content digest v1");
    for p in paths {
        field(&mut h, b"source");
        field(&mut h, p.as_bytes());
        for (base, e) in select(view, p, &req)? {
            entry(view, &mut h, &base, &e, None)?;
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
            let mut content = Hasher::new();
            let mut f = view.open_entry(e)?;
            io::copy(&mut f, &mut content).map_err(|source| FileOpError::ReadSource {
                path: e.path(),
                source,
            })?;
            field(h, content.finish().as_bytes());
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
                entry(view, h, &child_rel, &child, Some(&dir))?;
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
