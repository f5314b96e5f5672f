//! COPY / ADD of local files: source selection, destination rules, the recursive copy.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use super::unpack;
use super::upper::{Attrs, Created, DIR_FLAGS, NewDir, Upper, set_attrs_fd, upper_err};
use super::{CopyRequest, CopyStats, FileHashCache, FileKey, FileOpError, absolute_path};
use crate::frontend::dockerignore::{DockerIgnore, contains_wildcards, glob_match};
use crate::fsview::FsViewError;
use crate::fsview::{DirHandle, Entry, FileKind, LayerView, join_abs, lexical_clean, split};

/// Copies `req.sources` from `src` to `req.dest` of `dest`, writing only into `upper`.
///
/// Rules (BuildKit's): several sources, or a wildcard matching several paths, need a
/// destination ending in `/`; a directory source copies its contents; a top-level symlink
/// source is followed inside the source root, deeper ones are copied as links; `..` cannot
/// leave the source root; the destination is resolved inside the destination root and its
/// missing parents are created 0755 (owned by `chown`, else 0:0) while existing ones are
/// copied up with their metadata.
pub fn copy(
    req: &CopyRequest,
    src: &LayerView,
    dest: &LayerView,
    upper: &Path,
) -> Result<CopyStats, FileOpError> {
    copy_knowing(req, src, dest, upper, None)
}

/// [`copy`], also listing in [`CopyStats::known`] each regular file copied whose content
/// digest `hashes` knows by the source's identity ([`FileKey`]). The digest is the one the
/// cache key was computed with; the solver's check after the step (the context digested again)
/// fails the step if a source changed meanwhile, so a listed digest is what was copied.
pub fn copy_knowing(
    req: &CopyRequest,
    src: &LayerView,
    dest: &LayerView,
    upper: &Path,
    hashes: Option<&dyn FileHashCache>,
) -> Result<CopyStats, FileOpError> {
    copy_reusing(req, src, dest, upper, hashes, None)
}

/// Files an earlier COPY wrote into a committed layer, which a copy may hard-link instead of
/// writing them again ([`copy_reusing`]): by path in that layer, the identity ([`FileKey`])
/// of the source file each was copied from.
#[derive(Debug)]
pub struct Reuse {
    root: OwnedFd,
    files: HashMap<String, FileKey>,
    /// The earlier layer's directories opened so far, by path (`None`: not there).
    dirs: std::sync::Mutex<HashMap<Vec<String>, Option<Arc<OwnedFd>>>>,
}

impl Reuse {
    /// The files of the layer directory `layer` listed in `files`; `None` if the directory
    /// cannot be opened (a layer collected since).
    pub fn open(layer: &Path, files: HashMap<String, FileKey>) -> Option<Self> {
        let root = rustix::fs::open(layer, DIR_FLAGS, rustix::fs::Mode::empty()).ok()?;
        Some(Self {
            root,
            files,
            dirs: std::sync::Mutex::default(),
        })
    }

    /// The earlier layer's directory `comps`, opened component by component without
    /// following symlinks.
    fn dir(&self, comps: &[String]) -> Option<Arc<OwnedFd>> {
        let mut dirs = self.dirs.lock().ok()?;
        if let Some(d) = dirs.get(comps) {
            return d.clone();
        }
        let d = super::upper::open_dirs(&self.root, comps)
            .ok()
            .map(Arc::new);
        dirs.insert(comps.to_vec(), d.clone());
        d
    }

    /// Hard-links the earlier layer's copy of `f` into place when it is exactly what copying
    /// `f` would write: its source has the identity recorded for the path, the file-hash cache
    /// knows that identity (so it is settled: the file was not changed within a clock tick of
    /// being hashed), and the earlier file is a regular file of the same size, mode, owner
    /// and modification time. The identity covers content, mode, owner, times and xattrs (a
    /// change to any of them changes the status-change time). A source with file capabilities
    /// is always copied. `None`: copy it.
    fn link(&self, hashes: Option<&dyn FileHashCache>, f: &PlainFile) -> Option<u64> {
        let m = f.entry.metadata();
        let key = FileKey::of(m);
        if self.files.get(&join_abs(&f.target)) != Some(&key) {
            return None;
        }
        // A source with file capabilities is copied: whether an earlier copy could set them
        // depended on its privileges.
        let known = hashes?.get(&key)?;
        if known.key != known.sha256 {
            return None;
        }
        let mtime = f.attrs.mtime?;
        let (name, parent) = f.target.split_last()?;
        let dir = self.dir(parent)?;
        let st =
            rustix::fs::statat(&*dir, name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let same = rustix::fs::FileType::from_raw_mode(st.st_mode)
            == rustix::fs::FileType::RegularFile
            && u64::try_from(st.st_size).ok() == Some(m.size)
            && st.st_mode & 0o7777 == f.attrs.mode & 0o7777
            && (st.st_uid, st.st_gid) == (f.attrs.uid, f.attrs.gid)
            && (st.st_mtime, i64::try_from(st.st_mtime_nsec).ok()?) == mtime;
        if !same {
            return None;
        }
        // A name already there (an earlier source of this copy wrote it) fails the link: the
        // copy replaces it.
        rustix::fs::linkat(
            &*dir,
            name.as_str(),
            &f.dest_dir.0,
            name.as_str(),
            rustix::fs::AtFlags::empty(),
        )
        .ok()?;
        Some(m.size)
    }
}

/// [`copy_knowing`], hard-linking from `reuse` the files it holds exactly as this copy
/// would write them ([`CopyStats::linked`] counts them). Layers are never written once
/// committed, so the shared inodes never change.
pub fn copy_reusing(
    req: &CopyRequest,
    src: &LayerView,
    dest: &LayerView,
    upper: &Path,
    hashes: Option<&dyn FileHashCache>,
    reuse: Option<&Reuse>,
) -> Result<CopyStats, FileOpError> {
    // ADD's archive extraction writes files this does not list, possibly over listed ones.
    let hashes = hashes.filter(|_| !req.unpack);
    if req.sources.is_empty() {
        return Err(FileOpError::NoSources);
    }
    let dest_is_dir = req.dest.is_empty()
        || req.dest.ends_with('/')
        || req.dest == "."
        || req.dest.ends_with("/.");
    if req.sources.len() > 1 && !dest_is_dir {
        return Err(FileOpError::DestMustBeDirectory {
            dest: req.dest.clone(),
        });
    }
    let resolved = dest.resolve_for_write(&absolute_path(&req.dest, &req.workdir))?;
    let (uid, gid) = req.chown.unwrap_or((0, 0));
    let mut c = Copier {
        req,
        src,
        up: Upper::open(upper, dest)?,
        excludes: DockerIgnore::parse(&req.excludes.join("\n"))?,
        stats: CopyStats::default(),
        links: HashMap::new(),
        pending_links: std::collections::HashSet::new(),
        new_dir: NewDir {
            mode: 0o755,
            uid,
            gid,
        },
        dest_comps: resolved.components().to_vec(),
        dest_kind: resolved.entry().map(|e| e.metadata().kind),
        dest_is_dir,
        hashes,
        reuse,
        pending: Vec::new(),
        pending_fds: 0,
        dirs_after: Vec::new(),
    };
    if req.parents {
        for source in &req.sources {
            c.copy_parents(source)?;
        }
    } else {
        for source in &req.sources {
            let selected = select(src, source, req)?;
            if selected.len() > 1 && !dest_is_dir && c.dest_kind != Some(FileKind::Dir) {
                return Err(FileOpError::DestMustBeDirectory {
                    dest: req.dest.clone(),
                });
            }
            for (base, entry) in selected {
                c.copy_top(&base, &entry)?;
            }
        }
    }
    Ok(c.stats)
}

/// The entries a source selects: `(name at the destination, entry with a top-level symlink
/// followed)`, in sorted order.
pub(crate) fn select(
    src: &LayerView,
    source: &str,
    req: &CopyRequest,
) -> Result<Vec<(String, Entry)>, FileOpError> {
    // BuildKit: path.Join("/", src) — `..` is clamped at the source root.
    let clean = lexical_clean(source);
    let not_found = || FileOpError::SourceNotFound {
        path: source.to_owned(),
    };
    if !(req.allow_wildcard && contains_wildcards(&clean)) {
        let entry = src.resolve(&clean, true)?.and_then(|r| r.entry().cloned());
        let entry = entry.ok_or_else(not_found)?;
        let base = split(&clean).pop().unwrap_or_default();
        return Ok(vec![(base, entry)]);
    }
    let mut paths: Vec<Vec<String>> = vec![Vec::new()];
    for comp in split(&clean) {
        let mut next = Vec::new();
        for p in paths {
            if !contains_wildcards(&comp) {
                let mut q = p;
                q.push(comp.clone());
                next.push(q);
                continue;
            }
            let dir = src.resolve(&join_abs(&p), true)?;
            let Some(dir) = dir.and_then(|d| d.entry().cloned()) else {
                continue;
            };
            if dir.metadata().kind != FileKind::Dir {
                continue;
            }
            for e in src.read_dir(&dir.path())? {
                if glob_match(&comp, e.name())? {
                    let mut q = p.clone();
                    q.push(e.name().to_owned());
                    next.push(q);
                }
            }
        }
        paths = next;
    }
    let mut out = Vec::new();
    for p in paths {
        // A wildcard that matched a file followed by more components (`a/*/c` with `a/x`
        // a file) simply does not match.
        let resolved = match src.resolve(&join_abs(&p), true) {
            Err(FsViewError::NotADirectory { .. }) => None,
            r => r?,
        };
        if let Some(e) = resolved.and_then(|r| r.entry().cloned()) {
            out.push((p.last().cloned().unwrap_or_default(), e));
        }
    }
    if out.is_empty() && !req.allow_empty_wildcard {
        return Err(not_found());
    }
    Ok(out)
}

/// At least this many plain files waiting are copied on several threads.
const PARALLEL_COPY_MIN_FILES: usize = 64;

/// Plain files wait for the copy threads until this many are listed (or until the copy of
/// a source ends)...
const BATCH_FILES: usize = 4096;
/// ...or until their directories hold this many fds open (the destination's, and one per
/// layer of the source's merged view).
const BATCH_FDS: usize = 256;

/// A copy thread takes the files of one directory at a time, at most this many: creating a
/// file locks its directory, so two threads filling one directory mostly wait on each other.
const BATCH_GRAIN: usize = 256;

/// Files up to this size (as the walk saw them) are copied with `read` and `write`: two calls
/// and an end-of-file `read` per small file, where `io::copy` makes two `statx` and two
/// `copy_file_range` calls (and on a file system without reflinks copies the same bytes, in
/// the kernel, more slowly for small files: measured on tmpfs). Larger files go through
/// `io::copy`, which shares extents where the file system can.
const SMALL_FILE: u64 = 16 << 10;

/// Which side of a copy failed.
enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `input` into `out` through a buffer on the stack: to its end, or only `size` bytes
/// when that is what the walk saw (the end-of-file `read` is skipped). A file that grew since
/// the walk is caught as any change is: a context is walked again after the step, and a layer
/// never changes.
fn copy_small(
    input: &mut impl io::Read,
    out: &mut impl io::Write,
    size: u64,
) -> Result<u64, Failed> {
    let mut buf = [0u8; SMALL_FILE as usize];
    let mut total = 0u64;
    loop {
        if total == size && size > 0 {
            return Ok(total);
        }
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failed::Read(e)),
        };
        out.write_all(buf.get(..n).unwrap_or_default())
            .map_err(Failed::Write)?;
        total += n as u64;
    }
}

/// Copies the regular file `e` (in `src_parent`, if open) to `target` in the upper directory
/// `parent` with `attrs` and the source's xattrs: the bytes copied. `created` tells what a
/// new file in `parent` has without being told (see [`Created`]).
fn copy_file(
    src: &LayerView,
    src_parent: Option<&DirHandle>,
    e: &Entry,
    (parent, created): (&OwnedFd, &Created),
    target: &[String],
    attrs: Attrs,
) -> Result<u64, FileOpError> {
    let mut input = match src_parent {
        Some(p) => src.open_entry_in(p, e)?,
        None => src.open_entry(e)?,
    };
    let (mode, mode_set) = created.mode_for(&attrs);
    let mut out = Upper::create_file_mode(parent, target, mode)?;
    let read_err = |err| FileOpError::ReadSource {
        path: e.path(),
        source: err,
    };
    let n = if e.metadata().size <= SMALL_FILE {
        copy_small(&mut input, &mut out, e.metadata().size).map_err(|f| match f {
            Failed::Read(err) => read_err(err),
            Failed::Write(err) => FileOpError::Upper {
                path: join_abs(target),
                source: err,
            },
        })?
    } else {
        io::copy(&mut input, &mut out).map_err(read_err)?
    };
    let fd = OwnedFd::from(out);
    created
        .finish(&fd, attrs, mode_set)
        .map_err(|err| upper_err(target, err))?;
    // After the chown: the kernel drops `security.capability` on chown.
    for (k, v) in src.xattrs_of(e, &input)? {
        // Best effort, like fsutil: some namespaces need privileges.
        let _ = rustix::fs::fsetxattr(&fd, k.as_str(), &v, rustix::fs::XattrFlags::empty());
    }
    Ok(n)
}

/// One entry of [`CopyStats::known`].
type Known = (String, Option<super::KnownContent>);
/// A file copied on a worker: its bytes, its entry of [`CopyStats::known`], whether it was
/// hard-linked from [`Reuse`].
type Copied = (u64, Option<Known>, bool);

/// A destination directory being filled: its fd, and what a file created in it gets.
type DestDir = Arc<(OwnedFd, Created)>;

/// A plain file (a regular file, the first of its names met: see [`Copier::plain`]) waiting
/// for the copy threads: its source directory and entry, its destination directory and path,
/// its metadata.
struct PlainFile {
    src_dir: Arc<DirHandle>,
    entry: Entry,
    dest_dir: DestDir,
    target: Vec<String>,
    attrs: Attrs,
}

struct Copier<'a> {
    req: &'a CopyRequest,
    src: &'a LayerView,
    up: Upper<'a>,
    excludes: DockerIgnore,
    stats: CopyStats,
    /// Source hard links already written: (layer, dev, ino) → upper path.
    links: HashMap<(usize, u64, u64), Vec<String>>,
    /// Those of `links` whose first name is in `pending` (not written yet).
    pending_links: std::collections::HashSet<(usize, u64, u64)>,
    new_dir: NewDir,
    dest_comps: Vec<String>,
    dest_kind: Option<FileKind>,
    dest_is_dir: bool,
    /// Known content digests of source files, for [`CopyStats::known`].
    hashes: Option<&'a dyn FileHashCache>,
    /// An earlier layer's files to hard-link where they are what would be written.
    reuse: Option<&'a Reuse>,
    /// Plain files listed and not yet copied, in listing order ([`Copier::flush`]).
    pending: Vec<PlainFile>,
    /// How many fds the directories of `pending` and `dirs_after` hold open (about).
    pending_fds: usize,
    /// Directories whose metadata is set once their pending files are copied (a directory's
    /// time changes with every file created in it), children before parents.
    dirs_after: Vec<(DestDir, Vec<String>, Attrs)>,
}

/// What [`CopyStats::known`] lists for a regular file just copied (`copied` bytes) from `e`
/// to `target`: nothing without `hashes`, else the path with the sha256 and size when
/// `hashes` knows the source's content.
fn known_digest(
    hashes: Option<&dyn FileHashCache>,
    e: &Entry,
    target: &[String],
    copied: u64,
) -> Option<Known> {
    let m = e.metadata();
    let d = hashes?
        .get(&FileKey::of(m))
        .filter(|_| copied == m.size)
        .map(|h| super::KnownContent {
            source: FileKey::of(m),
            sha256: h.sha256,
            sha1: h.sha1,
            size: copied,
        });
    Some((join_abs(target), d))
}

impl Copier<'_> {
    fn attrs(&self, e: &Entry) -> Attrs {
        let m = e.metadata();
        let (uid, gid) = match (self.req.chown, self.req.keep_owner) {
            (Some(ids), _) => ids,
            (None, true) => (m.uid, m.gid),
            (None, false) => (0, 0),
        };
        Attrs {
            mode: self.req.chmod.unwrap_or(m.mode),
            uid,
            gid,
            mtime: Some((m.mtime_sec, m.mtime_nsec)),
        }
    }

    /// Metadata of a destination directory the copy itself creates.
    fn created_dir(&self) -> Attrs {
        Attrs {
            mode: self.new_dir.mode,
            uid: self.new_dir.uid,
            gid: self.new_dir.gid,
            mtime: None,
        }
    }

    fn copy_top(&mut self, base: &str, e: &Entry) -> Result<(), FileOpError> {
        let kind = e.metadata().kind;
        if kind != FileKind::Dir && !base.is_empty() && self.excludes.is_excluded(base) {
            return Ok(());
        }
        if kind == FileKind::File
            && self.req.unpack
            && let Some(format) = unpack::detect(self.src, e)?
        {
            // The destination is a directory for an archive, created if missing.
            self.up.dir(&self.dest_comps, self.new_dir)?;
            let ids = self.req.chown;
            unpack::extract(
                &self.up,
                self.src,
                e,
                format,
                &self.dest_comps,
                (ids, self.new_dir),
                &mut self.stats,
            )?;
            self.stats.archives += 1;
            return Ok(());
        }
        let into_dir = self.dest_is_dir || self.dest_kind == Some(FileKind::Dir);
        if kind == FileKind::Dir {
            if matches!(self.dest_kind, Some(k) if k != FileKind::Dir) {
                return Err(FileOpError::CannotCopyToNonDirectory {
                    path: join_abs(&self.dest_comps),
                });
            }
            let dest_comps = self.dest_comps.clone();
            let handle = Arc::new(self.src.open_dir(e)?);
            let (fd, fresh) = if into_dir || dest_comps.is_empty() {
                (self.up.dir(&dest_comps, self.new_dir)?.0, false)
            } else {
                let (parent, _) = self
                    .up
                    .dir(&dest_comps[..dest_comps.len() - 1], self.new_dir)?;
                let fd = self
                    .up
                    .child_dir(&parent, &dest_comps, self.created_dir())?;
                (fd.0, fd.1)
            };
            let created = Created::in_dir(&fd);
            let dest: DestDir = Arc::new((fd, created));
            self.copy_contents(&handle, &dest, &dest_comps, "")?;
            // A destination directory the copy creates is made like `mkdir -p` (0755, the
            // --chown owner or root), not with the source directory's metadata: BuildKit.
            if fresh {
                self.dirs_after.push((dest, dest_comps, self.created_dir()));
            }
            return self.flush();
        }
        let (parent_comps, target) = if into_dir {
            let mut t = self.dest_comps.clone();
            t.push(base.to_owned());
            (self.dest_comps.clone(), t)
        } else {
            let n = self.dest_comps.len().saturating_sub(1);
            (self.dest_comps[..n].to_vec(), self.dest_comps.clone())
        };
        let (parent, _) = self.up.dir(&parent_comps, self.new_dir)?;
        self.write(e, None, &parent, &target, base)?;
        self.flush()
    }

    /// Copies the children of an open source directory into the upper directory `dest`:
    /// plain files are listed for the copy threads ([`Copier::flush`]), everything else is
    /// written in order, here.
    fn copy_contents(
        &mut self,
        dir: &Arc<DirHandle>,
        dest: &DestDir,
        comps: &[String],
        rel: &str,
    ) -> Result<(), FileOpError> {
        let mut listed = false;
        for child in self.src.read_dir_handle(dir)? {
            let child_rel = if rel.is_empty() {
                child.name().to_owned()
            } else {
                format!("{rel}/{}", child.name())
            };
            let is_dir = child.metadata().kind == FileKind::Dir;
            if self.excludes.is_excluded(&child_rel)
                && !(is_dir && self.excludes.may_contain_included(&child_rel))
            {
                continue;
            }
            let mut target = comps.to_vec();
            target.push(child.name().to_owned());
            if child.metadata().kind == FileKind::File && self.plain(&child, &target)? {
                let attrs = self.attrs(&child);
                self.pending.push(PlainFile {
                    src_dir: Arc::clone(dir),
                    entry: child,
                    dest_dir: Arc::clone(dest),
                    target,
                    attrs,
                });
                if !listed {
                    listed = true;
                    self.pending_fds += 1 + dir.open_fds();
                }
                continue;
            }
            self.write(&child, Some(dir), &dest.0, &target, &child_rel)?;
        }
        if self.pending.len() >= BATCH_FILES || self.pending_fds >= BATCH_FDS {
            self.flush()?;
        }
        Ok(())
    }

    /// Whether the regular file `e`, to be written at `target`, is copied as a plain file (by
    /// the copy threads): any name of an inode met first. Its later names are hard links to
    /// it ([`Copier::write`]); the first is written before one is made. An inode with names
    /// outside the source (a layer's file hard-linked from an earlier layer, as
    /// [`copy_reusing`] makes them) is thus copied as plain as a file with one name.
    fn plain(&mut self, e: &Entry, target: &[String]) -> Result<bool, FileOpError> {
        let m = e.metadata();
        if m.nlink <= 1 {
            return Ok(true);
        }
        let key = (e.layer(), m.dev_ino.0, m.dev_ino.1);
        if let std::collections::hash_map::Entry::Vacant(v) = self.links.entry(key) {
            v.insert(target.to_vec());
            self.pending_links.insert(key);
            return Ok(true);
        }
        if self.pending_links.contains(&key) {
            self.flush()?;
        }
        Ok(false)
    }

    /// Copies the plain files listed so far, on several threads when there are enough of
    /// them (many small files cost mostly system calls, which run in parallel, also across
    /// directories), then sets the metadata of the directories they completed.
    fn flush(&mut self) -> Result<(), FileOpError> {
        let plain = std::mem::take(&mut self.pending);
        self.pending_fds = 0;
        self.pending_links.clear();
        let (src, hashes, reuse) = (self.src, self.hashes, self.reuse);
        let copy_one = |f: &PlainFile| {
            if let Some(n) = reuse.and_then(|r| r.link(hashes, f)) {
                return Ok((n, known_digest(hashes, &f.entry, &f.target, n), true));
            }
            let dest = (&f.dest_dir.0, &f.dest_dir.1);
            let n = copy_file(src, Some(&f.src_dir), &f.entry, dest, &f.target, f.attrs)?;
            Ok::<_, FileOpError>((n, known_digest(hashes, &f.entry, &f.target, n), false))
        };
        let threads = crate::cpus().min(4);
        let copied: Vec<Copied> = if threads < 2 || plain.len() < PARALLEL_COPY_MIN_FILES {
            plain.iter().map(copy_one).collect::<Result<_, _>>()?
        } else {
            // The files of one directory (up to BATCH_GRAIN) at a time, the next as a thread
            // is done: a large file does not hold up the files listed after it.
            let mut runs: Vec<(usize, usize)> = Vec::new();
            for (i, f) in plain.iter().enumerate() {
                match runs.last_mut() {
                    Some((start, end))
                        if *end - *start < BATCH_GRAIN
                            && Arc::ptr_eq(&plain[*start].dest_dir, &f.dest_dir) =>
                    {
                        *end = i + 1;
                    }
                    _ => runs.push((i, i + 1)),
                }
            }
            let next = std::sync::atomic::AtomicUsize::new(0);
            // The first error stops the other threads at their next directory.
            let failed = std::sync::atomic::AtomicBool::new(false);
            let mut parts: Vec<(usize, Vec<Copied>)> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut done = Vec::new();
                            loop {
                                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                                    return Ok(done);
                                }
                                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(&(start, end)) = runs.get(n) else {
                                    return Ok(done);
                                };
                                let copied = plain[start..end]
                                    .iter()
                                    .map(copy_one)
                                    .collect::<Result<_, _>>()
                                    .inspect_err(|_| {
                                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                    })?;
                                done.push((start, copied));
                            }
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for w in workers {
                    // A worker's panic is a bug: passed on as it is.
                    let done: Result<Vec<_>, FileOpError> =
                        w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                    all.extend(done?);
                }
                Ok::<_, FileOpError>(all)
            })?;
            // In listing order, for [`CopyStats::known`].
            parts.sort_unstable_by_key(|(at, _)| *at);
            parts.into_iter().flat_map(|(_, c)| c).collect()
        };
        drop(plain);
        self.stats.files += copied.len() as u64;
        for (n, known, linked) in copied {
            self.stats.bytes += n;
            self.stats.linked += u64::from(linked);
            self.stats.known.extend(known);
        }
        for (dir, target, attrs) in std::mem::take(&mut self.dirs_after) {
            set_attrs_fd(&dir.0, attrs).map_err(|err| upper_err(&target, err))?;
        }
        Ok(())
    }

    /// Writes one source entry at `target` (whose parent is open as `parent`); directories
    /// recursively. `rel` is the entry's path relative to the copied source (for excludes).
    fn write(
        &mut self,
        e: &Entry,
        src_parent: Option<&DirHandle>,
        parent: &OwnedFd,
        target: &[String],
        rel: &str,
    ) -> Result<(), FileOpError> {
        let m = e.metadata().clone();
        let attrs = self.attrs(e);
        match m.kind {
            FileKind::Dir => {
                let handle = Arc::new(match src_parent {
                    Some(p) => self.src.child_dir(p, e)?,
                    None => self.src.open_dir(e)?,
                });
                let (fd, fresh) = self.up.child_dir(parent, target, attrs)?;
                if fresh {
                    self.stats.dirs += 1;
                }
                let created = Created::in_dir(&fd);
                let dest: DestDir = Arc::new((fd, created));
                self.copy_contents(&handle, &dest, target, rel)?;
                // A directory inside the copied tree takes the source's metadata even when
                // it already existed in the destination (BuildKit overwrites it too): once
                // its files are copied.
                self.dirs_after.push((dest, target.to_vec(), attrs));
                self.pending_fds += 1;
                if self.pending_fds >= BATCH_FDS {
                    self.flush()?;
                }
            }
            FileKind::File => {
                let key = (e.layer(), m.dev_ino.0, m.dev_ino.1);
                if m.nlink > 1
                    && let Some(first) = self.links.get(&key)
                {
                    self.up.link(first, target)?;
                    self.stats.hardlinks += 1;
                    if self.hashes.is_some() {
                        self.stats.known.push((join_abs(target), None));
                    }
                    return Ok(());
                }
                let created = Created::in_dir(parent);
                let n = copy_file(self.src, src_parent, e, (parent, &created), target, attrs)?;
                self.stats.files += 1;
                self.stats.bytes += n;
                self.stats
                    .known
                    .extend(known_digest(self.hashes, e, target, n));
                if m.nlink > 1 {
                    self.links.insert(key, target.to_vec());
                }
            }
            FileKind::Symlink => {
                let link = self.src.read_link_entry(e)?;
                Upper::create_symlink(parent, target, &link, attrs)?;
                self.stats.symlinks += 1;
            }
            FileKind::CharDevice | FileKind::BlockDevice | FileKind::Fifo => {
                Upper::create_node(parent, target, m.kind, m.rdev, attrs)?;
                self.stats.nodes += 1;
            }
            // Sockets are not copied (as in fsutil).
            _ => {}
        }
        Ok(())
    }

    /// `--parents`: copy what the pattern selects below its pivot (`a/./b` pivots at `a`,
    /// no marker pivots at the root), keeping the path below the pivot.
    fn copy_parents(&mut self, source: &str) -> Result<(), FileOpError> {
        let (root, pattern) = source.split_once("/./").unwrap_or(("/", source));
        let pattern = lexical_clean(pattern).trim_start_matches('/').to_owned();
        let not_found = || FileOpError::SourceNotFound {
            path: source.to_owned(),
        };
        let root = self.src.resolve(&lexical_clean(root), true)?;
        let root = root
            .and_then(|r| r.entry().cloned())
            .ok_or_else(not_found)?;
        if root.metadata().kind != FileKind::Dir {
            return Err(not_found());
        }
        let include = if pattern.is_empty() {
            DockerIgnore::default()
        } else {
            DockerIgnore::parse(&format!("**\n!{}", pattern))?
        };
        let handle = Arc::new(self.src.open_dir(&root)?);
        let mut matched = false;
        self.walk_parents(&handle, &include, &mut Vec::new(), &mut matched)?;
        self.flush()?;
        let wildcard = self.req.allow_wildcard && contains_wildcards(&pattern);
        if !(matched || (wildcard && self.req.allow_empty_wildcard)) {
            return Err(not_found());
        }
        Ok(())
    }

    fn walk_parents(
        &mut self,
        dir: &Arc<DirHandle>,
        include: &DockerIgnore,
        ancestors: &mut Vec<Entry>,
        matched: &mut bool,
    ) -> Result<(), FileOpError> {
        for child in self.src.read_dir_handle(dir)? {
            let mut rel_comps: Vec<String> =
                ancestors.iter().map(|a| a.name().to_owned()).collect();
            rel_comps.push(child.name().to_owned());
            let rel = rel_comps.join("/");
            let is_dir = child.metadata().kind == FileKind::Dir;
            if self.excludes.is_excluded(&rel)
                && !(is_dir && self.excludes.may_contain_included(&rel))
            {
                continue;
            }
            if !include.is_excluded(&rel) {
                *matched = true;
                // Create the kept parent directories with their source metadata.
                let mut comps = self.dest_comps.clone();
                let (mut fd, _) = self.up.dir(&comps, self.new_dir)?;
                for a in ancestors.iter() {
                    comps.push(a.name().to_owned());
                    fd = self.up.child_dir(&fd, &comps, self.attrs(a))?.0;
                }
                comps.push(child.name().to_owned());
                self.write(&child, Some(dir), &fd, &comps, &rel)?;
            } else if is_dir && include.may_contain_included(&rel) {
                let handle = Arc::new(self.src.child_dir(dir, &child)?);
                ancestors.push(child);
                self.walk_parents(&handle, include, ancestors, matched)?;
                ancestors.pop();
            }
        }
        Ok(())
    }
}
