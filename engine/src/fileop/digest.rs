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

/// Remembers the hashes of files by what identifies their content without reading it: device,
/// inode, size, modification and status-change times. The status-change time cannot be set
/// by users and changes with every write (and with file capabilities), so a hit is a file
/// whose bytes did not change.
pub trait FileHashCache: Sync {
    /// Remembered hashes.
    fn get(&self, key: &FileKey) -> Option<FileHash>;
    /// Remembers hashes.
    fn put(&self, key: FileKey, hash: FileHash);
}

/// What the file-hash cache remembers of a regular file, all from one read of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHash {
    /// What a COPY's cache key hashes for the file: the SHA-256 of its content, then of its
    /// file capabilities when it has some (they are copied too).
    pub key: Digest,
    /// The SHA-256 of the content alone.
    pub sha256: Digest,
    /// The SHA-1 of the content alone: the SBOM's SPDX file checksum, so the catalog need
    /// not read a copied file again.
    pub sha1: [u8; 20],
}

impl FileHash {
    /// Bytes in [`FileHash::to_bytes`].
    pub const LEN: usize = 84;

    /// The hashes as bytes (for storage): key, SHA-256, SHA-1.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(self.key.as_bytes());
        out[32..64].copy_from_slice(self.sha256.as_bytes());
        out[64..].copy_from_slice(&self.sha1);
        out
    }

    /// The hashes from their bytes; `None` unless exactly [`FileHash::LEN`] of them.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::LEN] = b.try_into().ok()?;
        let (key, rest) = b.split_first_chunk::<32>()?;
        let (sha256, sha1) = rest.split_first_chunk::<32>()?;
        Some(Self {
            key: Digest::from_bytes(*key),
            sha256: Digest::from_bytes(*sha256),
            sha1: sha1.try_into().ok()?,
        })
    }

    /// Reads `f` to its end once, hashing its content with SHA-256 and SHA-1, then its file
    /// capabilities into the key. `buf` is the read buffer (any length above zero).
    fn of_file(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<Self> {
        use io::Read;
        use sha1::Digest as _;
        let mut sha256 = Hasher::new();
        let mut sha1 = sha1::Sha1::new();
        loop {
            let n = match f.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let chunk = buf.get(..n).unwrap_or_default();
            sha256.update(chunk);
            sha1.update(chunk);
        }
        let content = sha256.clone().finish();
        // File capabilities are copied too (and changing them changes the ctime, so the cached
        // value stays right).
        let mut cap = [0u8; 256];
        let key = match rustix::fs::fgetxattr(&*f, "security.capability", &mut cap[..]) {
            Ok(n) => {
                sha256.update(b"\0security.capability\0");
                sha256.update(cap.get(..n).unwrap_or_default());
                sha256.finish()
            }
            Err(_) => content,
        };
        Ok(Self {
            key,
            sha256: content,
            sha1: sha1.finalize().into(),
        })
    }
}

/// The cache key of a file: `(dev, ino, size, mtime s, mtime ns, ctime s, ctime ns)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey(pub [u64; 7]);

impl FileKey {
    /// The key of a file with metadata `m`.
    pub(crate) fn of(m: &crate::fsview::Metadata) -> Self {
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
    let threads = crate::cpus().min(4);
    Ok(walk_digest(view, paths, cache, (threads, PARALLEL_BUFFER_MAX), &req)?.0)
}

/// [`content_digest_cached`] walking on up to `threads` threads, each buffering at most
/// `buffer_max` bytes; also how many directories had their entries hashed on several.
fn walk_digest(
    view: &LayerView,
    paths: &[String],
    cache: Option<&dyn FileHashCache>,
    (threads, buffer_max): (usize, usize),
    req: &CopyRequest,
) -> Result<(Digest, usize), FileOpError> {
    let mut h = Hasher::new();
    let mut walk = Walk {
        view,
        cache,
        links: std::collections::HashMap::new(),
        threads: threads.max(1),
        buffer_max,
        parallel_dirs: 0,
        read_buf: None,
    };
    field(&mut h, b"kiln content digest v2");
    for p in paths {
        field(&mut h, b"source");
        field(&mut h, p.as_bytes());
        for (base, e) in select(view, p, req)? {
            walk.entry(&mut h, &base, &e, None)?;
        }
    }
    Ok((h.finish(), walk.parallel_dirs))
}

/// A directory with at least this many entries has them hashed on several threads (when it
/// also holds a directory: a flat directory of a few files is not worth the threads).
const PARALLEL_DIR_ENTRIES: usize = 16;

/// The most bytes of digest fields one thread of a parallel walk buffers (about 100,000
/// files): a larger run gives up, and the directory is walked on one thread.
const PARALLEL_BUFFER_MAX: usize = 16 << 20;

/// Where [`Walk::entry`] writes its fields: the digest's hasher, or a buffer of the same bytes
/// that is hashed, in walk order, once the threads that filled it are done.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
    /// The sink took all it may: the walk stops (its result is dropped).
    fn full(&self) -> bool;
}

impl Sink for Hasher {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
    fn full(&self) -> bool {
        false
    }
}

/// A parallel walk's buffer, at most `max` bytes.
struct Buffer {
    bytes: Vec<u8>,
    max: usize,
    over: bool,
}

impl Sink for Buffer {
    fn put(&mut self, bytes: &[u8]) {
        if self.over {
            return;
        }
        if self.bytes.len() + bytes.len() > self.max {
            self.over = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(bytes);
    }
    fn full(&self) -> bool {
        self.over
    }
}

/// One walk of the selected files.
struct Walk<'a> {
    view: &'a LayerView,
    cache: Option<&'a dyn FileHashCache>,
    /// The first name of each hard-linked inode seen, in walk order.
    links: std::collections::HashMap<(u64, u64), String>,
    /// Threads a large directory's entries may be hashed on (1: this walk is one of them).
    threads: usize,
    /// The most bytes each of those threads buffers.
    buffer_max: usize,
    /// Directories whose entries were hashed on several threads.
    parallel_dirs: usize,
    /// The buffer files are read through, made on the first file read.
    read_buf: Option<Vec<u8>>,
}

/// Bytes of [`Walk::read_buf`].
const READ_BUF: usize = 64 * 1024;

impl Walk<'_> {
    /// Hashes the children of a directory on [`Walk::threads`] threads, each a contiguous
    /// run of them into a buffer, then the buffers in order: the same bytes as one walk, as
    /// long as no inode is met by two runs, or by a run and the walk before (which of its
    /// names comes first is a property of the whole walk), and each run fits its buffer.
    /// `Ok(false)` when not: nothing was written, walk sequentially.
    fn children_in_parallel(
        &mut self,
        h: &mut impl Sink,
        rel: &str,
        dir: &DirHandle,
        children: &[Entry],
    ) -> Result<bool, FileOpError> {
        let chunk = children.len().div_ceil(self.threads);
        let (view, cache, buffer_max) = (self.view, self.cache, self.buffer_max);
        let parts = std::thread::scope(|scope| {
            let workers: Vec<_> = children
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut w = Walk {
                            view,
                            cache,
                            links: std::collections::HashMap::new(),
                            threads: 1,
                            buffer_max,
                            parallel_dirs: 0,
                            read_buf: None,
                        };
                        let mut buf = Buffer {
                            bytes: Vec::new(),
                            max: buffer_max,
                            over: false,
                        };
                        for child in part {
                            if buf.full() {
                                break;
                            }
                            w.entry(&mut buf, &child_rel(rel, child), child, Some(dir))?;
                        }
                        Ok::<_, FileOpError>((buf, w.links))
                    })
                })
                .collect();
            workers
                .into_iter()
                // A worker's panic is a bug: passed on as it is.
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        if parts.iter().any(|(buf, _)| buf.full()) {
            return Ok(false);
        }
        // The first name of each inode met must be the one a single walk meets first: no run
        // may meet an inode the walk or an earlier run met already. (An inode whose other
        // names are outside the walk, such as a layer's file hard-linked from an earlier
        // layer, is met once.)
        let mut firsts = std::collections::HashSet::new();
        for (_, links) in &parts {
            for ino in links.keys() {
                if self.links.contains_key(ino) || !firsts.insert(*ino) {
                    return Ok(false);
                }
            }
        }
        for (buf, links) in parts {
            h.put(&buf.bytes);
            self.links.extend(links);
        }
        Ok(true)
    }

    fn entry(
        &mut self,
        h: &mut impl Sink,
        rel: &str,
        e: &Entry,
        parent: Option<&DirHandle>,
    ) -> Result<(), FileOpError> {
        let view = self.view;
        let cache = self.cache;
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
                    match self.links.get(&m.dev_ino) {
                        Some(first) => {
                            field(h, b"hardlink");
                            field(h, first.as_bytes());
                        }
                        None => {
                            self.links.insert(m.dev_ino, rel.to_owned());
                        }
                    }
                }
                let key = FileKey::of(m);
                let cached = cache.and_then(|c| c.get(&key));
                let digest = match cached {
                    Some(d) => d,
                    None => {
                        let mut f = match parent {
                            Some(p) => view.open_entry_in(p, e)?,
                            None => view.open_entry(e)?,
                        };
                        let buf = self.read_buf.get_or_insert_with(|| vec![0; READ_BUF]);
                        let d = FileHash::of_file(&mut f, buf).map_err(|source| {
                            FileOpError::ReadSource {
                                path: e.path(),
                                source,
                            }
                        })?;
                        if let Some(c) = cache {
                            c.put(key, d);
                        }
                        d
                    }
                };
                field(h, digest.key.as_bytes());
            }
            FileKind::Symlink => field(h, view.read_link_entry(e)?.as_bytes()),
            FileKind::CharDevice | FileKind::BlockDevice => field(h, &m.rdev.to_le_bytes()),
            FileKind::Dir => {
                let dir = match parent {
                    Some(p) => view.child_dir(p, e)?,
                    None => view.open_dir(e)?,
                };
                let children = view.read_dir_handle(&dir)?;
                let parallel = self.threads > 1
                    && children.len() >= PARALLEL_DIR_ENTRIES
                    && children.iter().any(|c| c.metadata().kind == FileKind::Dir);
                let done = parallel && self.children_in_parallel(h, rel, &dir, &children)?;
                if done {
                    self.parallel_dirs += 1;
                } else {
                    if parallel {
                        // A file below has a name in two runs, or the tree is too large to buffer:
                        // the rest of the walk stays on this thread (every further try would
                        // walk its subtree twice).
                        self.threads = 1;
                    }
                    for child in &children {
                        if h.full() {
                            break;
                        }
                        self.entry(h, &child_rel(rel, child), child, Some(&dir))?;
                    }
                }
                field(h, b"end");
            }
            _ => {}
        }
        Ok(())
    }
}

/// A length-prefixed field, so that concatenations cannot collide.
fn field(h: &mut impl Sink, bytes: &[u8]) {
    h.put(&(bytes.len() as u64).to_le_bytes());
    h.put(bytes);
}

/// A child's path relative to the selected source.
fn child_rel(rel: &str, child: &Entry) -> String {
    if rel.is_empty() {
        child.name().to_owned()
    } else {
        format!("{rel}/{}", child.name())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn walk_with(dir: &std::path::Path, threads: usize) -> (Digest, usize) {
        walk_buffering(dir, threads, PARALLEL_BUFFER_MAX)
    }

    fn walk_buffering(dir: &std::path::Path, threads: usize, max: usize) -> (Digest, usize) {
        let req = CopyRequest {
            allow_wildcard: true,
            allow_empty_wildcard: true,
            ..CopyRequest::default()
        };
        let v = LayerView::plain(dir);
        walk_digest(&v, &["/".to_owned()], None, (threads, max), &req).unwrap()
    }

    /// The walk on several threads gives the digest of the walk on one, hashing large
    /// directories in parallel; a hard link between two runs of entries (which name is first
    /// is a property of the whole walk) sends it back to one thread, same digest again.
    #[test]
    fn a_parallel_walk_gives_the_sequential_digest() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("src");
        for i in 0..24 {
            let sub = top.join(format!("d{i:02}"));
            std::fs::create_dir_all(sub.join("deeper")).unwrap();
            for j in 0..5 {
                std::fs::write(sub.join(format!("f{j}")), format!("{i}/{j}")).unwrap();
            }
            std::fs::write(sub.join("deeper/x"), format!("x{i}")).unwrap();
            std::os::unix::fs::symlink("../d00/f0", sub.join("link")).unwrap();
        }
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch").unwrap();
        let (one, none) = walk_with(d.path(), 1);
        assert_eq!(none, 0);
        for threads in [2, 3, 4] {
            let (many, dirs) = walk_with(d.path(), threads);
            assert_eq!(many, one, "{threads} threads");
            assert!(
                dirs >= 1,
                "{threads} threads: no directory was hashed in parallel"
            );
        }
        // Runs larger than a thread may buffer: one thread, same digest.
        let (small, dirs) = walk_buffering(d.path(), 2, 2048);
        assert_eq!(small, one);
        assert_eq!(dirs, 0, "no run fitted 2 KiB");
        // Hard links within one run of entries, and to a name outside the walk: still in
        // parallel, same digest as one walk, and not that of the tree without them.
        std::fs::hard_link(top.join("d01/f1"), top.join("d01/deeper/linked")).unwrap();
        std::fs::write(d.path().join("outside"), "out").unwrap();
        std::fs::hard_link(d.path().join("outside"), top.join("d20/f-out")).unwrap();
        let walk = |threads| {
            let req = CopyRequest {
                allow_wildcard: true,
                allow_empty_wildcard: true,
                ..CopyRequest::default()
            };
            let v = LayerView::plain(d.path());
            walk_digest(
                &v,
                &["/src".to_owned()],
                None,
                (threads, PARALLEL_BUFFER_MAX),
                &req,
            )
            .unwrap()
        };
        let (one, _) = walk(1);
        let (many, dirs) = walk(2);
        assert_eq!(many, one);
        assert!(dirs >= 1, "hard links within a run keep the walk parallel");
        std::fs::remove_file(top.join("d01/deeper/linked")).unwrap();
        std::fs::copy(top.join("d01/f1"), top.join("d01/deeper/linked")).unwrap();
        assert_ne!(walk(1).0, one, "the link is part of the digest");
        std::fs::remove_file(top.join("d01/deeper/linked")).unwrap();
        std::fs::hard_link(top.join("d01/f1"), top.join("d01/deeper/linked")).unwrap();
        // A hard link from the first run of entries to the last.
        std::fs::hard_link(top.join("d00/f1"), top.join("d23/linked")).unwrap();
        let (one, _) = walk(1);
        let (many, dirs) = walk(2);
        assert_eq!(many, one);
        assert_eq!(
            dirs, 0,
            "a walk with a hard link across runs stays on one thread"
        );
    }
}
