//! The content store: blobs named by their sha256, written temp → fsync → rename.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{StoreError, io_err};
use crate::digest::{Digest, Hasher};

/// Blobs by digest under `ROOT/content`.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the content store at `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let blobs = dir.join("blobs/sha256");
        let ingest = dir.join("ingest");
        for d in [&blobs, &ingest] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        Ok(Self { blobs, ingest })
    }

    /// The directory of the blobs.
    pub(crate) fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// The path of a blob (which may not exist).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        File::open(self.path(digest)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::BlobNotFound(*digest)
            } else {
                io_err("open", &self.path(digest))(e)
            }
        })
    }

    /// Size of a stored blob.
    pub fn size(&self, digest: &Digest) -> Result<u64, StoreError> {
        let p = self.path(digest);
        Ok(fs::metadata(&p).map_err(io_err("stat", &p))?.len())
    }

    /// Reads a whole blob into memory (for manifests and configs).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::new();
        let p = self.path(digest);
        self.open_blob(digest)?
            .read_to_end(&mut buf)
            .map_err(io_err("read", &p))?;
        let actual = Digest::of(&buf);
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                what: format!("blob {}", p.display()),
                expected: *digest,
                actual,
            });
        }
        Ok(buf)
    }

    /// Stores bytes, returning their digest.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        self.ingest(&mut &bytes[..], None)
    }

    /// Stores several small blobs with one directory sync in all instead of one each: every one
    /// is written to a temp file and `fdatasync`ed, then each is renamed into place and the
    /// directory is synced once. (Not `syncfs`: that would also wait for every other dirty file
    /// of the file system, such as the layers the build just wrote.) A blob the store has is
    /// not written again. Returns the digests in order.
    pub fn write_batch(&self, blobs: &[&[u8]]) -> Result<Vec<Digest>, StoreError> {
        let hashed: Vec<(&[u8], Digest)> = blobs.iter().map(|b| (*b, Digest::of(b))).collect();
        self.stage_batch(&hashed)?.publish(false)?;
        Ok(hashed.into_iter().map(|(_, d)| d).collect())
    }

    /// The first half of [`ContentStore::write_batch`], for blobs whose sha256 the caller
    /// computed from the same bytes (large attestation documents are hashed once): writes
    /// each blob the store lacks to a temp file, nothing synced and nothing visible under a
    /// blob name yet. [`StagedBatch::publish`] makes them durable and puts them in place;
    /// dropped unpublished, the temp files are removed.
    pub(crate) fn stage_batch(&self, blobs: &[(&[u8], Digest)]) -> Result<StagedBatch, StoreError> {
        let mut batch = StagedBatch {
            blobs: self.blobs.clone(),
            pending: Vec::new(),
        };
        for &(bytes, digest) in blobs {
            let dest = self.path(&digest);
            if self.contains(&digest) || batch.pending.iter().any(|p| p.dest == dest) {
                continue;
            }
            let tmp = self.ingest.join(format!("{}.tmp", random_hex()));
            let mut file = File::options()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            let written = file.write_all(bytes).map_err(io_err("write", &tmp));
            batch.pending.push(StagedBlob { tmp, dest, file });
            written?;
        }
        Ok(batch)
    }

    /// Starts a streaming write; call [`BlobWriter::commit`] to make it durable.
    pub fn writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = self.ingest.join(format!("{}.tmp", random_hex()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
            hasher: Hasher::new(),
        })
    }

    /// Copies `reader` into the store. With `expected`, the content must hash to it or nothing
    /// is stored.
    pub fn ingest(
        &self,
        reader: &mut dyn Read,
        expected: Option<Digest>,
    ) -> Result<Digest, StoreError> {
        if let Some(d) = expected
            && self.contains(&d)
        {
            // Drain nothing: the caller's stream is simply not needed.
            return Ok(d);
        }
        let mut w = self.writer()?;
        let tmp = w.tmp.clone();
        io::copy(reader, &mut w).map_err(io_err("write", &tmp))?;
        w.commit(expected)
    }
}

impl crate::oci::blob::BlobSource for ContentStore {
    fn open_blob(&self, digest: &Digest) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(self.path(digest))?))
    }
}

/// Blobs written to temp files by [`ContentStore::stage_batch`], not yet durable nor visible.
#[derive(Debug)]
pub(crate) struct StagedBatch {
    /// The store's blob directory (synced once after the renames).
    blobs: PathBuf,
    pending: Vec<StagedBlob>,
}

#[derive(Debug)]
struct StagedBlob {
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
}

impl StagedBatch {
    /// Makes the blobs durable and visible, with one directory sync in all: every temp file
    /// is made durable, then each is renamed into place and the directory is synced. On error
    /// the temp files not yet renamed are removed.
    ///
    /// With `whole_fs`, for a caller that syncs the content store's file system again (with
    /// `syncfs`) before any durable record names these blobs, as the commit of a build that
    /// made layers does: one `syncfs` makes the temp files durable instead of one
    /// `fdatasync` each, and the renames are left for that later sync instead of a directory
    /// sync here. (A `syncfs` also waits for every other dirty file of the file system, such
    /// as the layers the build just wrote, which that later sync would wait for anyway.) A
    /// blob is still never visible under its name before its bytes are durable; until the
    /// later sync, a crash may lose the names, which nothing durable refers to yet.
    pub(crate) fn publish(mut self, whole_fs: bool) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if whole_fs {
            let dir = File::open(&self.blobs).map_err(io_err("open", &self.blobs))?;
            rustix::fs::syncfs(&dir).map_err(|e| io_err("syncfs", &self.blobs)(e.into()))?;
        } else {
            let files: Vec<(&File, &Path)> = self
                .pending
                .iter()
                .map(|b| (&b.file, b.tmp.as_path()))
                .collect();
            sync_data_all(&files)?;
        }
        while let Some(b) = self.pending.pop() {
            if let Err(e) = fs::rename(&b.tmp, &b.dest) {
                let _ = fs::remove_file(&b.tmp);
                return Err(io_err("rename", &b.dest)(e));
            }
        }
        if whole_fs {
            return Ok(());
        }
        sync_dir(&self.blobs)
    }
}

impl Drop for StagedBatch {
    fn drop(&mut self) {
        for b in self.pending.drain(..) {
            let _ = fs::remove_file(&b.tmp);
        }
    }
}

/// A blob being written. Dropped without commit, its temp file is removed. It owns what it
/// needs of the store, so a layer's compressor can write it from its own thread.
pub struct BlobWriter {
    store: ContentStore,
    tmp: PathBuf,
    file: Option<io::BufWriter<File>>,
    hasher: Hasher,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("tmp", &self.tmp)
            .finish()
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already committed"))?;
        let n = f.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl crate::oci::compress::HashedSink for BlobWriter {
    fn digest(&self) -> Digest {
        self.hasher.clone().finish()
    }
    fn written(&self) -> u64 {
        self.hasher.len()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// fsyncs and renames the blob into place; checks `expected` first.
    pub fn commit(mut self, expected: Option<Digest>) -> Result<Digest, StoreError> {
        let digest = std::mem::take(&mut self.hasher).finish();
        let file = self.file.take();
        if let Some(exp) = expected
            && exp != digest
        {
            return Err(StoreError::DigestMismatch {
                what: "ingested blob".into(),
                expected: exp,
                actual: digest,
            });
        }
        if let Some(bw) = file {
            let f = bw
                .into_inner()
                .map_err(|e| io_err("flush", &self.tmp)(e.into_error()))?;
            f.sync_all().map_err(io_err("fsync", &self.tmp))?;
        }
        let dest = self.store.path(&digest);
        fs::rename(&self.tmp, &dest).map_err(io_err("rename", &dest))?;
        sync_dir(&self.store.blobs)?;
        Ok(digest)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() || self.tmp.exists() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `fdatasync`s every file. The first is synced here; if that took the disk's time (not a
/// tmpfs' nothing), the rest are synced at once, one thread each (they wait on the disk, not
/// the CPU), so the file system commits them together (ext4 and XFS batch concurrent syncs
/// into one journal commit) instead of one commit and device flush after another. Every file
/// is synced before this returns: the same guarantee as syncing them in turn.
fn sync_data_all(files: &[(&File, &Path)]) -> Result<(), StoreError> {
    /// Below this a sync did no I/O worth a thread.
    const CHEAP: std::time::Duration = std::time::Duration::from_micros(200);
    sync_data_all_after(files, CHEAP)
}

/// [`sync_data_all`], with threads when the first sync took at least `cheap`.
fn sync_data_all_after(
    files: &[(&File, &Path)],
    cheap: std::time::Duration,
) -> Result<(), StoreError> {
    let Some(((first, path), rest)) = files.split_first() else {
        return Ok(());
    };
    let start = std::time::Instant::now();
    first.sync_data().map_err(io_err("fdatasync", path))?;
    if rest.len() < 2 || start.elapsed() < cheap {
        for (f, path) in rest {
            f.sync_data().map_err(io_err("fdatasync", path))?;
        }
        return Ok(());
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = rest
            .iter()
            .map(|(f, path)| scope.spawn(move || f.sync_data().map_err(io_err("fdatasync", path))))
            .collect();
        // Every thread is joined before the first error is returned.
        let results: Vec<Result<(), StoreError>> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StoreError::Io {
                        op: "fdatasync",
                        path: PathBuf::new(),
                        source: io::Error::other("a sync thread panicked"),
                    })
                })
            })
            .collect();
        results.into_iter().collect()
    })
}

/// fsyncs a directory so a rename inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// 16 random bytes as hex, for temp names and snapshot ids.
pub(crate) fn random_hex() -> String {
    let mut buf = [0u8; 16];
    // getrandom(2) never fails for 16 bytes once the pool is initialised; fall back to
    // time-and-pid entropy if it ever does (names only need to be unique, not secret).
    if rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty()).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        buf = Digest::of(format!("{t}-{}", std::process::id()).as_bytes()).as_bytes()[..16]
            .try_into()
            .unwrap_or([0; 16]);
    }
    hex::encode(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_stored_whole_whether_synced_in_turn_or_at_once() {
        for cheap in [std::time::Duration::MAX, std::time::Duration::ZERO] {
            let dir = tempfile::tempdir().unwrap();
            let cs = ContentStore::open(dir.path()).unwrap();
            let had = cs.write_bytes(b"already here").unwrap();
            let blobs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
            let mut paths = Vec::new();
            let mut files = Vec::new();
            for (i, b) in blobs.iter().enumerate() {
                let p = dir.path().join(format!("f{i}"));
                fs::write(&p, b).unwrap();
                files.push(File::open(&p).unwrap());
                paths.push(p);
            }
            let pairs: Vec<(&File, &Path)> = files
                .iter()
                .zip(paths.iter().map(PathBuf::as_path))
                .collect();
            sync_data_all_after(&pairs, cheap).unwrap();

            let mut batch: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
            batch.push(b"already here");
            batch.push(&blobs[2]);
            let digests = cs.write_batch(&batch).unwrap();
            assert_eq!(digests[6], had);
            assert_eq!(digests[7], digests[2]);
            for (b, d) in blobs.iter().zip(&digests) {
                assert_eq!(cs.read_blob(d).unwrap(), *b);
            }
            assert_eq!(
                fs::read_dir(&cs.ingest).unwrap().count(),
                0,
                "no temp file left"
            );
        }
    }

    #[test]
    fn a_staged_batch_is_invisible_until_published_and_leaves_nothing_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let had = cs.write_bytes(b"already here").unwrap();
        let (a, b) = (b"first".as_slice(), b"second".as_slice());
        let blobs = [
            (a, Digest::of(a)),
            (b, Digest::of(b)),
            (a, Digest::of(a)),
            (b"already here".as_slice(), had),
        ];
        let temps = || fs::read_dir(&cs.ingest).unwrap().count();
        let staged = cs.stage_batch(&blobs).unwrap();
        assert_eq!(temps(), 2, "one temp file per new blob");
        assert!(!cs.contains(&blobs[0].1) && !cs.contains(&blobs[1].1));
        drop(staged);
        assert_eq!(temps(), 0, "dropped unpublished: nothing left");
        assert!(!cs.contains(&blobs[0].1) && !cs.contains(&blobs[1].1));

        cs.stage_batch(&blobs).unwrap().publish(false).unwrap();
        let c = (b"third".as_slice(), Digest::of(b"third"));
        cs.stage_batch(&[c]).unwrap().publish(true).unwrap();
        assert_eq!(cs.read_blob(&c.1).unwrap(), c.0);
        assert_eq!(temps(), 0);
        assert_eq!(cs.read_blob(&blobs[0].1).unwrap(), a);
        assert_eq!(cs.read_blob(&blobs[1].1).unwrap(), b);
        assert_eq!(cs.read_blob(&had).unwrap(), b"already here");
    }

    #[test]
    fn blobs_are_named_by_digest_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = cs.write_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(cs.read_blob(&d).unwrap(), b"hello");
        let wrong = Digest::of(b"other");
        let err = cs.ingest(&mut &b"hello!"[..], Some(wrong)).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }));
        assert!(!cs.contains(&wrong));
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }
}
