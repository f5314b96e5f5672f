//! Incremental build-context transfer.
//!
//! The client lists its context (after `.dockerignore`) as [`FileMeta`] entries: directories
//! before what they hold, no entry under a symlink. The daemon keeps one copy of each
//! context per tenant and client context key ([`Mirror`]); it compares the list with what the
//! copy holds (kind, mode, size, mtime, link target) and asks only for the files that differ.
//! A rebuild after one file changed sends that file.
//!
//! Everything the client sends is untrusted: paths are checked (relative, normalized, at
//! most 4096 bytes, parents listed before children as directories), and every file is
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` under the copy's root, so no
//! entry can write outside it, through a symlink or otherwise.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use serde::{Deserialize, Serialize};

use crate::proto::FileMeta;
use crate::proto::file_meta::Kind;

/// The most entries one context may list.
pub const MAX_ENTRIES: usize = 1_000_000;

/// Why a context cannot be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The client's list is not acceptable.
    #[error("context entry {index} ({path:?}): {reason}")]
    BadEntry {
        /// Index in the manifest.
        index: usize,
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The client sent something out of protocol.
    #[error("context transfer: {0}")]
    Protocol(String),
    /// The daemon's copy could not be written.
    #[error("context copy {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn io(path: &str) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the copy records of each entry: enough to tell whether it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    kind: i32,
    mode: u32,
    size: u64,
    mtime_ns: i64,
    link: String,
}

impl Recorded {
    fn of(m: &FileMeta) -> Self {
        Self {
            kind: m.kind,
            mode: m.mode & 0o7777,
            size: m.size,
            mtime_ns: m.mtime_ns,
            link: m.link_target.clone(),
        }
    }
}

/// Checks a manifest: paths, kinds, parents before children, no entry under a symlink.
pub fn check_manifest(files: &[FileMeta]) -> Result<(), SyncError> {
    if files.len() > MAX_ENTRIES {
        return Err(SyncError::Protocol(format!(
            "{} entries, over the limit of {MAX_ENTRIES}",
            files.len()
        )));
    }
    let mut dirs: HashSet<&str> = HashSet::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (index, f) in files.iter().enumerate() {
        let bad = |reason: &str| SyncError::BadEntry {
            index,
            path: f.path.clone(),
            reason: reason.to_owned(),
        };
        let p = f.path.as_str();
        if p.is_empty()
            || p.len() > 4096
            || p.starts_with('/')
            || p.contains('\0')
            || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("not a relative, normalized path"));
        }
        if !seen.insert(p) {
            return Err(bad("listed twice"));
        }
        if let Some((parent, _)) = p.rsplit_once('/')
            && !dirs.contains(parent)
        {
            return Err(bad("its parent directory is not listed before it"));
        }
        match Kind::try_from(f.kind) {
            Ok(Kind::Dir) => {
                dirs.insert(p);
            }
            Ok(Kind::File) => {}
            Ok(Kind::Symlink) => {
                if f.link_target.is_empty() || f.link_target.contains('\0') {
                    return Err(bad("symlink without a target"));
                }
            }
            Err(_) => return Err(bad("unknown kind")),
        }
    }
    Ok(())
}

/// The daemon's copy of one client context.
#[derive(Debug)]
pub struct Mirror {
    dir: PathBuf,
    tree: PathBuf,
    root: OwnedFd,
    index: BTreeMap<String, Recorded>,
    /// The manifest being synced.
    files: Vec<FileMeta>,
    /// The file being received: (index, open file, bytes so far).
    receiving: Option<(usize, File, u64)>,
    /// Indexes still expected, in order.
    pending: std::collections::VecDeque<usize>,
    /// Whether this sync changed the copy (an entry forgotten, removed, created or written):
    /// an unchanged copy needs neither its directories' times reset nor its index saved.
    changed: bool,
}

impl Mirror {
    /// Opens (creating) the copy in `dir`.
    pub fn open(dir: &Path) -> Result<Mirror, SyncError> {
        let tree = dir.join("tree");
        std::fs::create_dir_all(&tree).map_err(io("tree"))?;
        let index = std::fs::read(dir.join("index.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let root = rustix::fs::open(
            &tree,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SyncError::Io {
            path: "tree".into(),
            source: e.into(),
        })?;
        Ok(Mirror {
            dir: dir.to_owned(),
            tree,
            root,
            index,
            files: Vec::new(),
            receiving: None,
            pending: Default::default(),
            changed: false,
        })
    }

    /// Whether the copy already is exactly `files` (a valid manifest whose every entry the
    /// index records as is, and nothing more): a build can read it without a sync.
    pub fn is_current(&self, files: &[FileMeta]) -> bool {
        files.len() == self.index.len()
            && check_manifest(files).is_ok()
            && files
                .iter()
                .all(|f| self.index.get(&f.path) == Some(&Recorded::of(f)))
    }

    /// The directory a build reads (the context).
    pub fn tree(&self) -> &Path {
        &self.tree
    }

    fn save_index(&self) -> Result<(), SyncError> {
        let tmp = self.dir.join("index.json.tmp");
        let bytes = serde_json::to_vec(&self.index).map_err(|e| SyncError::Io {
            path: "index.json".into(),
            source: e.into(),
        })?;
        let mut f = File::create(&tmp).map_err(io("index.json"))?;
        f.write_all(&bytes).map_err(io("index.json"))?;
        f.sync_data().map_err(io("index.json"))?;
        std::fs::rename(&tmp, self.dir.join("index.json")).map_err(io("index.json"))
    }

    fn open_beneath(&self, path: &str, flags: OFlags, mode: u32) -> Result<OwnedFd, SyncError> {
        rustix::fs::openat2(
            &self.root,
            path,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(mode),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| SyncError::Io {
            path: path.to_owned(),
            source: e.into(),
        })
    }

    /// The parent directory of `path` (opened beneath the root) and `path`'s last name.
    fn parent<'p>(&self, path: &'p str) -> Result<(OwnedFd, &'p str), SyncError> {
        match path.rsplit_once('/') {
            Some((parent, name)) => Ok((
                self.open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY, 0)?,
                name,
            )),
            None => Ok((
                rustix::io::dup(&self.root).map_err(|e| SyncError::Io {
                    path: ".".into(),
                    source: e.into(),
                })?,
                path,
            )),
        }
    }

    /// Starts a sync: checks the manifest, removes what changed or went away, creates
    /// directories, symlinks and empty files, and returns the indexes of the files whose
    /// content must be sent (and the bytes of unchanged files reused).
    pub fn plan(&mut self, files: Vec<FileMeta>) -> Result<(Vec<u32>, u64), SyncError> {
        check_manifest(&files)?;
        let wanted: BTreeMap<&str, Recorded> = files
            .iter()
            .map(|f| (f.path.as_str(), Recorded::of(f)))
            .collect();
        // Forget (and later replace) every entry that changed; the index saved now claims
        // only entries that are already right, so a crash mid-sync leaves a correct index.
        let mut unchanged = BTreeMap::new();
        let before = self.index.len();
        for (path, rec) in std::mem::take(&mut self.index) {
            if wanted.get(path.as_str()) == Some(&rec) {
                unchanged.insert(path, rec);
            }
        }
        self.index = unchanged;
        // A no-op rebuild forgets nothing: no write, no fsync.
        self.changed = self.index.len() != before;
        if self.changed {
            self.save_index()?;
        }
        if self.remove_unknown(&wanted)? {
            self.changed = true;
        }

        let mut need = Vec::new();
        let mut reused = 0u64;
        for (i, f) in files.iter().enumerate() {
            if self.index.contains_key(&f.path) {
                if f.kind == Kind::File as i32 {
                    reused += f.size;
                }
                continue;
            }
            self.changed = true;
            match Kind::try_from(f.kind) {
                Ok(Kind::Dir) => {
                    let (parent, name) = self.parent(&f.path)?;
                    match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => {
                            return Err(SyncError::Io {
                                path: f.path.clone(),
                                source: e.into(),
                            });
                        }
                    }
                }
                Ok(Kind::Symlink) => {
                    let (parent, name) = self.parent(&f.path)?;
                    rustix::fs::symlinkat(f.link_target.as_str(), &parent, name).map_err(|e| {
                        SyncError::Io {
                            path: f.path.clone(),
                            source: e.into(),
                        }
                    })?;
                    let ts = timestamps(f.mtime_ns);
                    let _ = rustix::fs::utimensat(
                        &parent,
                        name,
                        &ts,
                        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                    );
                    self.index.insert(f.path.clone(), Recorded::of(f));
                }
                Ok(Kind::File) if f.size == 0 => {
                    let fd = self.open_beneath(
                        &f.path,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
                        0o600,
                    )?;
                    finish_file(&fd, f)?;
                    self.index.insert(f.path.clone(), Recorded::of(f));
                }
                Ok(Kind::File) => need.push(u32::try_from(i).unwrap_or(u32::MAX)),
                Err(_) => {}
            }
        }
        self.pending = need.iter().map(|&i| i as usize).collect();
        self.files = files;
        if self.pending.is_empty() {
            self.finish()?;
        }
        Ok((need, reused))
    }

    /// Removes every entry of the copy that is not in `wanted` with the same record; returns
    /// whether it removed anything.
    fn remove_unknown(&self, wanted: &BTreeMap<&str, Recorded>) -> Result<bool, SyncError> {
        let mut removed = false;
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                self.tree.clone()
            } else {
                self.tree.join(&rel)
            };
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&rel)(e)),
            };
            for e in entries {
                let e = e.map_err(io(&rel))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let ft = e.file_type().map_err(io(&path))?;
                let keep = match wanted.get(path.as_str()) {
                    Some(rec) if rec.kind == Kind::Dir as i32 => ft.is_dir(),
                    Some(rec) if rec.kind == Kind::Symlink as i32 => {
                        ft.is_symlink() && self.index.contains_key(&path)
                    }
                    Some(_) => ft.is_file() && self.index.contains_key(&path),
                    None => false,
                };
                if keep {
                    if ft.is_dir() {
                        stack.push(path);
                    }
                } else if ft.is_dir() {
                    std::fs::remove_dir_all(e.path()).map_err(io(&path))?;
                    removed = true;
                } else {
                    std::fs::remove_file(e.path()).map_err(io(&path))?;
                    removed = true;
                }
            }
        }
        Ok(removed)
    }

    /// Takes one chunk of file content. Files arrive whole, in the order asked for.
    pub fn write_chunk(&mut self, index: u32, data: &[u8], eof: bool) -> Result<(), SyncError> {
        let index = index as usize;
        if self.receiving.as_ref().is_none_or(|(i, ..)| *i != index) {
            if self.receiving.is_some() || self.pending.front() != Some(&index) {
                return Err(SyncError::Protocol(format!(
                    "file {index} sent out of order (expected {:?})",
                    self.receiving
                        .as_ref()
                        .map(|r| r.0)
                        .or(self.pending.front().copied())
                )));
            }
            self.pending.pop_front();
            let path = self.files[index].path.clone();
            let fd = self.open_beneath(
                &path,
                OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
                0o600,
            )?;
            self.receiving = Some((index, File::from(fd), 0));
        }
        let meta = &self.files[index];
        let Some((_, file, written)) = self.receiving.as_mut() else {
            return Err(SyncError::Protocol("no file open".into()));
        };
        *written += data.len() as u64;
        if *written > meta.size {
            return Err(SyncError::Protocol(format!(
                "{:?}: more than the {} bytes listed (did it change while it was sent?)",
                meta.path, meta.size
            )));
        }
        file.write_all(data).map_err(io(&meta.path))?;
        if eof {
            if *written != meta.size {
                return Err(SyncError::Protocol(format!(
                    "{:?}: {} bytes sent, {} listed (did it change while it was sent?)",
                    meta.path, written, meta.size
                )));
            }
            let Some((_, file, _)) = self.receiving.take() else {
                return Err(SyncError::Protocol("no file open".into()));
            };
            let fd = OwnedFd::from(file);
            let meta = self.files[index].clone();
            finish_file(&fd, &meta)?;
            self.index.insert(meta.path.clone(), Recorded::of(&meta));
            if self.pending.is_empty() {
                self.finish()?;
            }
        }
        Ok(())
    }

    /// Whether every asked-for file arrived.
    pub fn complete(&self) -> bool {
        self.pending.is_empty() && self.receiving.is_none()
    }

    /// Sets directory modes and times (children first), makes the copy durable and saves the
    /// index, unless the sync changed nothing (then every directory is already as listed and
    /// recorded).
    ///
    /// The index vouches for the copy: an entry it records is reused by later builds without
    /// being sent again. So the files written by this sync reach the disk (one `syncfs` of
    /// the copy's file system, not one `fsync` per file) before the index that records them
    /// does. Without it, a power loss after the index's rename could leave a recorded file
    /// empty or short (ext4 allocates delayed blocks after the metadata commit), and every
    /// later build would read it as is.
    fn finish(&mut self) -> Result<(), SyncError> {
        if !self.changed {
            return Ok(());
        }
        for f in self.files.iter().rev() {
            if f.kind != Kind::Dir as i32 {
                continue;
            }
            let fd = self.open_beneath(&f.path, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
            finish_file(&fd, f)?;
            self.index.insert(f.path.clone(), Recorded::of(f));
        }
        rustix::fs::syncfs(&self.root).map_err(|e| SyncError::Io {
            path: "tree".into(),
            source: e.into(),
        })?;
        self.save_index()
    }
}

fn timestamps(mtime_ns: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Mode and mtime, as listed.
fn finish_file(fd: &OwnedFd, meta: &FileMeta) -> Result<(), SyncError> {
    let err = |e: rustix::io::Errno| SyncError::Io {
        path: meta.path.clone(),
        source: e.into(),
    };
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777)).map_err(err)?;
    rustix::fs::futimens(fd, &timestamps(meta.mtime_ns)).map_err(err)
}

/// The client's side: the context's entries after `.dockerignore`, directories before their
/// contents, sorted by name, with the absolute path of each.
pub fn scan(
    context: &Path,
    ignore: &kiln_engine::frontend::dockerignore::DockerIgnore,
) -> std::io::Result<Vec<(FileMeta, PathBuf)>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack: Vec<(String, PathBuf)> = vec![(String::new(), context.to_owned())];
    while let Some((rel, dir)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let md = std::fs::symlink_metadata(e.path())?;
            let ft = md.file_type();
            let excluded = ignore.is_excluded(&path);
            if ft.is_dir() {
                if excluded && !ignore.may_contain_included(&path) {
                    continue;
                }
            } else if excluded {
                continue;
            }
            let (kind, link_target) = if ft.is_dir() {
                (Kind::Dir, String::new())
            } else if ft.is_symlink() {
                (
                    Kind::Symlink,
                    std::fs::read_link(e.path())?.to_string_lossy().into_owned(),
                )
            } else if ft.is_file() {
                (Kind::File, String::new())
            } else {
                continue; // sockets, fifos, devices are not context
            };
            let meta = FileMeta {
                path: path.clone(),
                kind: kind as i32,
                mode: md.mode() & 0o7777,
                size: if kind == Kind::File { md.len() } else { 0 },
                mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                link_target,
            };
            out.push((meta, e.path()));
            if ft.is_dir() {
                subdirs.push((path, e.path()));
            }
        }
        // Depth first, in name order: push in reverse so the first pops first.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn meta(path: &str, kind: Kind, size: u64, mtime: i64) -> FileMeta {
        FileMeta {
            path: path.into(),
            kind: kind as i32,
            mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
            size,
            mtime_ns: mtime,
            link_target: if kind == Kind::Symlink {
                "target".into()
            } else {
                String::new()
            },
        }
    }

    fn sync(m: &mut Mirror, files: Vec<FileMeta>, content: &dyn Fn(&str) -> Vec<u8>) -> Vec<u32> {
        let (need, _) = m.plan(files.clone()).unwrap();
        for &i in &need {
            let data = content(&files[i as usize].path);
            m.write_chunk(i, &data, true).unwrap();
        }
        assert!(m.complete());
        need
    }

    #[test]
    fn a_rebuild_asks_only_for_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mirror::open(dir.path()).unwrap();
        let files = vec![
            meta("a", Kind::File, 1, 1),
            meta("d", Kind::Dir, 0, 2),
            meta("d/b", Kind::File, 2, 3),
            meta("d/l", Kind::Symlink, 0, 4),
            meta("e", Kind::File, 0, 5),
        ];
        let content = |p: &str| match p {
            "a" => b"A".to_vec(),
            "d/b" => b"BB".to_vec(),
            _ => Vec::new(),
        };
        assert_eq!(sync(&mut m, files.clone(), &content), vec![0, 2]);
        assert_eq!(std::fs::read(m.tree().join("d/b")).unwrap(), b"BB");
        assert_eq!(
            std::fs::read_link(m.tree().join("d/l")).unwrap(),
            Path::new("target")
        );
        // Reopened: nothing changed, nothing asked.
        let mut m = Mirror::open(dir.path()).unwrap();
        assert!(m.is_current(&files));
        let mut touched = files.clone();
        touched[2].mtime_ns += 1;
        assert!(!m.is_current(&touched));
        assert!(!m.is_current(&files[..4]));
        assert!(sync(&mut m, files.clone(), &content).is_empty());
        // One file changed, one gone, one new.
        let mut changed = files.clone();
        changed[0].mtime_ns = 9;
        changed.remove(4);
        changed.push(meta("f", Kind::File, 1, 6));
        let need = sync(&mut m, changed, &|p| {
            if p == "f" {
                b"F".to_vec()
            } else {
                b"a".to_vec()
            }
        });
        assert_eq!(need, vec![0, 4]);
        assert!(!m.tree().join("e").exists());
        assert_eq!(std::fs::read(m.tree().join("a")).unwrap(), b"a");
    }

    #[test]
    fn a_sync_interrupted_by_a_crash_leaves_a_copy_that_resyncs_correctly() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mirror::open(dir.path()).unwrap();
        let files = vec![
            meta("a", Kind::File, 3, 1),
            meta("d", Kind::Dir, 0, 2),
            meta("d/b", Kind::File, 3, 3),
        ];
        sync(&mut m, files.clone(), &|p| p.as_bytes()[..1].repeat(3));
        // The next sync changes both files; the daemon is killed after the first arrived
        // whole and the second only in part (no Drop runs after SIGKILL: forget the copy).
        let mut changed = files.clone();
        changed[0].mtime_ns = 10;
        changed[2].mtime_ns = 30;
        changed[2].size = 6;
        let (need, _) = m.plan(changed.clone()).unwrap();
        assert_eq!(need, vec![0, 2]);
        m.write_chunk(0, b"NEW", true).unwrap();
        m.write_chunk(2, b"HAL", false).unwrap();
        std::mem::forget(m);

        // Restarted: the saved index claims neither changed file, so both are asked again
        // (the one that arrived whole too: nothing saved says it did), and the copy ends
        // right.
        let mut m = Mirror::open(dir.path()).unwrap();
        let need = sync(&mut m, changed.clone(), &|p| match p {
            "a" => b"NEW".to_vec(),
            _ => b"WHOLE!".to_vec(),
        });
        assert_eq!(need, vec![0, 2]);
        assert_eq!(std::fs::read(m.tree().join("a")).unwrap(), b"NEW");
        assert_eq!(std::fs::read(m.tree().join("d/b")).unwrap(), b"WHOLE!");
        // And a client that went back to the old files gets them back whole.
        let mut m = Mirror::open(dir.path()).unwrap();
        let need = sync(&mut m, files, &|p| p.as_bytes()[..1].repeat(3));
        assert_eq!(need, vec![0, 2]);
        assert_eq!(std::fs::read(m.tree().join("d/b")).unwrap(), b"ddd");
    }

    #[test]
    fn a_no_op_sync_writes_nothing() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            meta("d", Kind::Dir, 0, 2),
            meta("d/b", Kind::File, 2, 3),
            meta("e", Kind::File, 0, 5),
        ];
        let mut m = Mirror::open(dir.path()).unwrap();
        sync(&mut m, files.clone(), &|_| b"BB".to_vec());
        let index = dir.path().join("index.json");
        let ino = std::fs::metadata(&index).unwrap().ino();
        // Nothing changed: the index is not rewritten (it is replaced by rename when it is).
        let mut m = Mirror::open(dir.path()).unwrap();
        assert!(sync(&mut m, files.clone(), &|_| Vec::new()).is_empty());
        assert_eq!(std::fs::metadata(&index).unwrap().ino(), ino);
        // A stray file in the copy is removed, and the sync then counts as a change.
        std::fs::write(m.tree().join("stray"), b"x").unwrap();
        assert!(sync(&mut m, files.clone(), &|_| Vec::new()).is_empty());
        assert!(!m.tree().join("stray").exists());
        assert_ne!(std::fs::metadata(&index).unwrap().ino(), ino);
        // One entry gone: forgotten, and the saved index says so.
        let mut fewer = files.clone();
        fewer.pop();
        sync(&mut m, fewer, &|_| Vec::new());
        let saved: BTreeMap<String, Recorded> =
            serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
        assert!(!saved.contains_key("e") && saved.contains_key("d/b"));
        assert!(!m.tree().join("e").exists());
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let bad = |files: Vec<FileMeta>| check_manifest(&files).unwrap_err().to_string();
        assert!(bad(vec![meta("../x", Kind::File, 0, 0)]).contains("normalized"));
        assert!(bad(vec![meta("/etc/passwd", Kind::File, 0, 0)]).contains("normalized"));
        assert!(bad(vec![meta("a//b", Kind::File, 0, 0)]).contains("normalized"));
        assert!(bad(vec![meta("d/x", Kind::File, 0, 0)]).contains("parent"));
        // A file under a symlink: the symlink is not a listed directory.
        assert!(
            bad(vec![
                meta("l", Kind::Symlink, 0, 0),
                meta("l/x", Kind::File, 0, 0)
            ])
            .contains("parent")
        );
        assert!(
            bad(vec![
                meta("a", Kind::File, 0, 0),
                meta("a", Kind::File, 0, 0)
            ])
            .contains("twice")
        );
    }

    #[test]
    fn a_symlink_planted_in_the_copy_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut m = Mirror::open(dir.path()).unwrap();
        // Something (a crash, an operator) left a symlink where a directory will be listed.
        std::os::unix::fs::symlink(outside.path(), m.tree().join("d")).unwrap();
        let files = vec![meta("d", Kind::Dir, 0, 0), meta("d/x", Kind::File, 1, 0)];
        sync(&mut m, files, &|_| b"x".to_vec());
        assert!(m.tree().join("d").symlink_metadata().unwrap().is_dir());
        assert!(!outside.path().join("x").exists());
    }

    #[test]
    fn wrong_sizes_and_order_are_protocol_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mirror::open(dir.path()).unwrap();
        let files = vec![meta("a", Kind::File, 2, 0), meta("b", Kind::File, 1, 0)];
        let (need, _) = m.plan(files).unwrap();
        assert_eq!(need, vec![0, 1]);
        assert!(m.write_chunk(1, b"x", true).is_err(), "out of order");
        assert!(m.write_chunk(0, b"abc", true).is_err(), "too long");
    }
}
