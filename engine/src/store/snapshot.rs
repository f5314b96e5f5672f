//! Layer directories: `ROOT/snapshots/<id>` holds one layer in overlayfs format (whiteouts are
//! 0/0 character devices, opaque directories carry `trusted.overlay.opaque=y`). A running step
//! writes into `ROOT/snapshots/.tmp/<id>`; [`Snapshots::commit`] renames it into place, after
//! which it is never modified; [`Snapshots::sync`] makes committed layers durable before any
//! record points at them.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{StoreError, io_err};

/// The id of a layer directory (32 hex characters, random).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// A fresh random id.
    pub fn new_random() -> Self {
        Self(super::content::random_hex())
    }

    /// Parses an id read from the store; only hex ids are accepted so an id can never name a
    /// path outside the snapshots directory.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(s.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.0)
    }
}

/// A layer directory being written; becomes immutable on [`Snapshots::commit`]. Dropped
/// without being committed (a failed or cancelled step), it is removed.
#[derive(Debug)]
pub struct PendingSnapshot {
    /// The id it will have.
    pub id: SnapshotId,
    /// Directory to write the layer's files into.
    pub dir: PathBuf,
    /// Scratch space next to it (overlay workdir, mountpoint).
    pub scratch: PathBuf,
    base: PathBuf,
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        // After a commit `base` only holds what was left of the scratch space.
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// The snapshot directories.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Snapshots {
    /// Opens (creating) the snapshot area.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let tmp = dir.join(".tmp");
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tmp,
        })
    }

    /// The directory of a committed layer.
    pub fn path(&self, id: &SnapshotId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    /// Starts a new layer directory.
    pub fn create(&self) -> Result<PendingSnapshot, StoreError> {
        let id = SnapshotId::new_random();
        let base = self.tmp.join(id.as_str());
        let dir = base.join("fs");
        let scratch = base.join("scratch");
        for d in [&dir, &scratch] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        Ok(PendingSnapshot {
            id,
            dir,
            scratch,
            base,
        })
    }

    /// Makes a pending layer durable and immutable at its final path.
    pub fn commit(&self, pending: PendingSnapshot) -> Result<SnapshotId, StoreError> {
        let dest = self.path(&pending.id);
        // Scratch held the overlay workdir; it must not outlive the step.
        let _ = fs::remove_dir_all(&pending.scratch);
        fs::rename(&pending.dir, &dest).map_err(io_err("rename", &dest))?;
        Ok(pending.id.clone())
    }

    /// The directory of the layer directories.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes every committed layer directory durable: one `syncfs` for the whole file system,
    /// done once per build before its records are committed (cheaper than syncing each step,
    /// and the record-after-data order is what crash safety needs).
    pub fn sync(&self) -> Result<(), StoreError> {
        let f = fs::File::open(&self.dir).map_err(io_err("open", &self.dir))?;
        rustix::fs::syncfs(&f).map_err(|e| io_err("syncfs", &self.dir)(e.into()))
    }

    /// Ids of every committed layer directory.
    pub fn list(&self) -> Result<Vec<SnapshotId>, StoreError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err("read", &self.dir))? {
            let e = e.map_err(io_err("read", &self.dir))?;
            if let Some(id) = e.file_name().to_str().and_then(SnapshotId::parse) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a layer directory (prune).
    pub fn remove(&self, id: &SnapshotId) -> Result<(), StoreError> {
        let p = self.path(id);
        fs::remove_dir_all(&p).map_err(io_err("remove", &p))
    }

    /// Removes every unfinished layer directory left by interrupted builds.
    pub fn clean_tmp(&self) -> Result<u64, StoreError> {
        let size = super::tree_size(&self.tmp);
        for e in fs::read_dir(&self.tmp)
            .map_err(io_err("read", &self.tmp))?
            .flatten()
        {
            let _ = fs::remove_dir_all(e.path());
        }
        Ok(size)
    }
}
