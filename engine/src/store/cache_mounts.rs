//! Persistent cache directories for `RUN --mount=type=cache`.
//!
//! ```text
//! ROOT/cache-mounts/<sha256(tenant)>/<sha256(id)>/0        the cache (shared and locked users)
//! ROOT/cache-mounts/<sha256(tenant)>/<sha256(id)>/0.lock   its lock file (flock)
//! ROOT/cache-mounts/<sha256(tenant)>/<sha256(id)>/1, 1.lock, …   further private instances
//! ROOT/cache-mounts/<…>/<…>/<n>.new                         a directory being created (seeded)
//! ```
//!
//! Neither the tenant name nor the cache id (user input) is ever a path component; every
//! component is created by the engine and opened relative to its parent with `O_NOFOLLOW`, and
//! a build step only ever sees the inside of `<n>` (it is the bind source, not a path in it),
//! so nothing a step plants in a cache can redirect where a later build's cache is mounted
//! from (BuildKit CVE-2024-23651). A new directory's mode and owner are set with `fchmod` and
//! `fchown` on its descriptor.
//!
//! Users hold a `flock` on the instance's lock file for as long as the step runs: shared users
//! a shared lock, locked and private users an exclusive one. A private user that finds an
//! instance locked tries the next one (instances are kept and reused, like BuildKit's); prune
//! removes only instances it can lock exclusively, so a cache in use is never removed. Locks
//! are per open file, so this works between steps of one build, between builds of one engine,
//! and between processes (which the store's own lock does not allow on one root today).
//! There are no metadata records: the directory tree is the record.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::Digest;
use crate::TenantId;
use crate::graph::CacheSharing;

/// How long a waiting user sleeps between tries (it checks for cancellation in between).
const POLL: Duration = Duration::from_millis(50);
/// Private instances of one cache id at most (one per concurrent user).
const MAX_INSTANCES: usize = 1024;

/// Errors of the cache-mount store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheMountError {
    /// A file system operation failed.
    #[error("cache mount: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A name in the store is not a directory (or is a symlink) where one is expected.
    #[error("cache mount: {0} is not a directory of kiln's; refusing to use it")]
    NotADirectory(PathBuf),
    /// More private instances are in use than kiln allows.
    #[error("cache mount: {MAX_INSTANCES} private instances of one cache are in use")]
    TooManyInstances,
    /// The build was cancelled while waiting for the cache.
    #[error("cancelled while waiting for a cache mount")]
    Cancelled,
}

/// What a new cache directory looks like when nothing seeds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewCacheDir {
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Fills a new cache directory (given its path) before it is renamed into place.
pub type Seed<'a, E> = &'a dyn Fn(&Path) -> Result<(), E>;

/// A cache directory held for one step: the lock is released when this is dropped.
#[derive(Debug)]
pub struct CacheLease {
    path: PathBuf,
    _lock: OwnedFd,
}

impl CacheLease {
    /// The directory to bind-mount.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What prune removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrunedCaches {
    /// Cache ids removed entirely.
    pub caches: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// The cache-mount directories of a store.
#[derive(Debug)]
pub struct CacheMounts {
    dir: PathBuf,
}

enum Locked {
    Held(OwnedFd),
    Busy,
    /// The lock file was removed (pruned) between open and lock: try again.
    Stale,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> CacheMountError + 'a {
    move |e| CacheMountError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens (creating if needed, mode 0700) the directory `name` beneath `parent`, never
/// following a symlink.
fn subdir(parent: &OwnedFd, name: &str, path: &Path) -> Result<OwnedFd, CacheMountError> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io_err("create", path)(e)),
    }
    open_dir(parent, name, path)?.ok_or_else(|| CacheMountError::NotADirectory(path.into()))
}

/// Opens the existing directory `name` beneath `parent` without following a symlink;
/// `None` if it does not exist.
fn open_dir(parent: &OwnedFd, name: &str, path: &Path) -> Result<Option<OwnedFd>, CacheMountError> {
    match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::NOTDIR | Errno::LOOP) => Err(CacheMountError::NotADirectory(path.into())),
        Err(e) => Err(io_err("open", path)(e)),
    }
}

fn hex_name(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl CacheMounts {
    /// Opens (creating) `dir`.
    pub fn open(dir: &Path) -> Result<Self, CacheMountError> {
        fs::create_dir_all(dir).map_err(|source| CacheMountError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn root_fd(&self) -> Result<OwnedFd, CacheMountError> {
        rustix::fs::open(&self.dir, DIR_FLAGS, Mode::empty()).map_err(io_err("open", &self.dir))
    }

    /// The directory of one cache id of one tenant: names are digests of the tenant and of
    /// the id, never the user's strings.
    fn id_dir(&self, tenant: &TenantId, id: &str) -> (String, String) {
        let t = Digest::of(format!("kiln-tenant\0{}", tenant.as_str()).as_bytes()).hex();
        let i = Digest::of(id.as_bytes()).hex();
        (t, i)
    }

    /// Takes the cache `id` of `tenant` for one step, creating it when it does not exist yet
    /// (`seed` fills a new directory; without one it gets `new`'s mode and owner). Waits
    /// (polling, so `cancelled` is honoured) while the cache is held in a conflicting way.
    pub fn acquire<E: From<CacheMountError>>(
        &self,
        tenant: &TenantId,
        id: &str,
        sharing: CacheSharing,
        new: NewCacheDir,
        seed: Option<Seed<'_, E>>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<CacheLease, E> {
        let (t, i) = self.id_dir(tenant, id);
        let root = self.root_fd()?;
        let tdir = self.dir.join(&t);
        let tfd = subdir(&root, &t, &tdir)?;
        let idir = tdir.join(&i);
        let ifd = subdir(&tfd, &i, &idir)?;
        let mut n = 0usize;
        loop {
            if cancelled() {
                return Err(CacheMountError::Cancelled.into());
            }
            let exclusive = sharing != CacheSharing::Shared;
            match lock_instance(&ifd, &idir, n, exclusive)? {
                Locked::Stale => continue,
                Locked::Busy if sharing == CacheSharing::Private => {
                    n += 1;
                    if n >= MAX_INSTANCES {
                        return Err(CacheMountError::TooManyInstances.into());
                    }
                    continue;
                }
                Locked::Busy => {
                    std::thread::sleep(POLL);
                    continue;
                }
                Locked::Held(lock) => {
                    let name = n.to_string();
                    let path = idir.join(&name);
                    if open_dir(&ifd, &name, &path)?.is_some() {
                        return Ok(CacheLease { path, _lock: lock });
                    }
                    if !exclusive {
                        // Created under an exclusive lock only: take it, create, start over.
                        drop(lock);
                        match lock_instance(&ifd, &idir, n, true)? {
                            Locked::Held(ex) => {
                                create(&ifd, &idir, n, new, seed)?;
                                drop(ex);
                            }
                            Locked::Busy => std::thread::sleep(POLL),
                            Locked::Stale => {}
                        }
                        continue;
                    }
                    create(&ifd, &idir, n, new, seed)?;
                    return Ok(CacheLease { path, _lock: lock });
                }
            }
        }
    }

    /// Number of cache ids (all tenants) and their size in bytes.
    pub fn usage(&self) -> (usize, u64) {
        self.usage_for(None)
    }

    /// Number of cache ids of one tenant (all when `None`) and their size in bytes.
    pub fn usage_for(&self, tenant: Option<&TenantId>) -> (usize, u64) {
        let mut count = 0;
        let mut bytes = 0;
        for (_, ids) in self.tenant_dirs_for(tenant) {
            for id in ids {
                count += 1;
                bytes += super::tree_size(&id);
            }
        }
        (count, bytes)
    }

    fn tenant_dirs_for(&self, tenant: Option<&TenantId>) -> Vec<(PathBuf, Vec<PathBuf>)> {
        let want = tenant.map(|t| self.id_dir(t, "").0);
        self.tenant_dirs()
            .into_iter()
            .filter(|(dir, _)| want.as_ref().is_none_or(|w| file_name(dir) == *w))
            .collect()
    }

    fn tenant_dirs(&self) -> Vec<(PathBuf, Vec<PathBuf>)> {
        let list = |d: &Path| -> Vec<PathBuf> {
            let Ok(rd) = fs::read_dir(d) else {
                return Vec::new();
            };
            let mut v: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter(|e| hex_name(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect();
            v.sort();
            v
        };
        list(&self.dir)
            .into_iter()
            .map(|t| {
                let ids = list(&t);
                (t, ids)
            })
            .collect()
    }

    /// Removes every cache instance that no step holds; returns how many cache ids are gone
    /// entirely and the bytes freed.
    pub fn prune(&self) -> Result<PrunedCaches, CacheMountError> {
        self.prune_for(None)
    }

    /// [`Self::prune`] for one tenant's caches only (all when `None`).
    pub fn prune_for(&self, tenant: Option<&TenantId>) -> Result<PrunedCaches, CacheMountError> {
        let mut p = PrunedCaches::default();
        let root = self.root_fd()?;
        for (tdir, ids) in self.tenant_dirs_for(tenant) {
            let tname = file_name(&tdir);
            let Some(tfd) = open_dir(&root, &tname, &tdir)? else {
                continue;
            };
            for idir in ids {
                let iname = file_name(&idir);
                let Some(ifd) = open_dir(&tfd, &iname, &idir)? else {
                    continue;
                };
                let mut instances: Vec<usize> = fs::read_dir(&idir)
                    .map_err(|source| CacheMountError::Io {
                        op: "read",
                        path: idir.clone(),
                        source,
                    })?
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let n = name.split('.').next().unwrap_or_default().to_owned();
                        n.parse().ok()
                    })
                    .collect();
                instances.sort_unstable();
                instances.dedup();
                for n in instances {
                    let Locked::Held(lock) = lock_instance(&ifd, &idir, n, true)? else {
                        continue; // in use
                    };
                    for name in [n.to_string(), format!("{n}.new")] {
                        let path = idir.join(&name);
                        if open_dir(&ifd, &name, &path)?.is_some() {
                            p.bytes += super::tree_size(&path);
                            fs::remove_dir_all(&path).map_err(|source| CacheMountError::Io {
                                op: "remove",
                                path: path.clone(),
                                source,
                            })?;
                        }
                    }
                    // Unlinked while held: a user that opened it before re-checks it (Stale).
                    let lname = format!("{n}.lock");
                    rustix::fs::unlinkat(&ifd, lname.as_str(), AtFlags::empty())
                        .map_err(io_err("remove", &idir.join(&lname)))?;
                    drop(lock);
                }
                if rustix::fs::unlinkat(&tfd, iname.as_str(), AtFlags::REMOVEDIR).is_ok() {
                    p.caches += 1;
                }
            }
            let _ = rustix::fs::unlinkat(&root, tname.as_str(), AtFlags::REMOVEDIR);
        }
        Ok(p)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Tries to lock instance `n`'s lock file without blocking.
fn lock_instance(
    ifd: &OwnedFd,
    idir: &Path,
    n: usize,
    exclusive: bool,
) -> Result<Locked, CacheMountError> {
    let name = format!("{n}.lock");
    let path = idir.join(&name);
    let fd = rustix::fs::openat(
        ifd,
        name.as_str(),
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(io_err("open", &path))?;
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    match rustix::fs::flock(&fd, op) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => return Ok(Locked::Busy),
        Err(e) => return Err(io_err("lock", &path)(e)),
    }
    let held = rustix::fs::fstat(&fd).map_err(io_err("stat", &path))?;
    match rustix::fs::statat(ifd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(now) if now.st_ino == held.st_ino && now.st_dev == held.st_dev => Ok(Locked::Held(fd)),
        Ok(_) | Err(Errno::NOENT) => Ok(Locked::Stale),
        Err(e) => Err(io_err("stat", &path)(e)),
    }
}

/// Makes instance `n` (caller holds its exclusive lock): `<n>.new` is filled, given its mode
/// and owner through its descriptor, and renamed into place without replacing anything.
fn create<E: From<CacheMountError>>(
    ifd: &OwnedFd,
    idir: &Path,
    n: usize,
    new: NewCacheDir,
    seed: Option<Seed<'_, E>>,
) -> Result<(), E> {
    let tmp = format!("{n}.new");
    let tmp_path = idir.join(&tmp);
    // A crash while seeding leaves `<n>.new` behind; it is ours (we hold the lock).
    if open_dir(ifd, &tmp, &tmp_path)?.is_some() {
        fs::remove_dir_all(&tmp_path).map_err(|source| CacheMountError::Io {
            op: "remove",
            path: tmp_path.clone(),
            source,
        })?;
    }
    rustix::fs::mkdirat(ifd, tmp.as_str(), Mode::from_raw_mode(0o700))
        .map_err(io_err("create", &tmp_path))?;
    let fd = open_dir(ifd, &tmp, &tmp_path)?
        .ok_or_else(|| CacheMountError::NotADirectory(tmp_path.clone()))?;
    match seed {
        Some(fill) => fill(&tmp_path)?,
        None => {
            rustix::fs::fchown(
                &fd,
                Some(rustix::process::Uid::from_raw(new.uid)),
                Some(rustix::process::Gid::from_raw(new.gid)),
            )
            .map_err(io_err("chown", &tmp_path))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(new.mode & 0o7777))
                .map_err(io_err("chmod", &tmp_path))?;
        }
    }
    let name = n.to_string();
    rustix::fs::renameat_with(
        ifd,
        tmp.as_str(),
        ifd,
        name.as_str(),
        RenameFlags::NOREPLACE,
    )
    .map_err(io_err("rename", &idir.join(&name)))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type R<T> = Result<T, CacheMountError>;

    fn never() -> bool {
        false
    }

    const NEW: NewCacheDir = NewCacheDir {
        mode: 0o750,
        uid: 0,
        gid: 0,
    };

    fn take(c: &CacheMounts, t: &TenantId, id: &str, s: CacheSharing) -> CacheLease {
        c.acquire::<CacheMountError>(t, id, s, NEW, None, &never)
            .unwrap()
    }

    #[test]
    fn ids_and_tenants_are_hashed_never_path_components() {
        let d = tempfile::tempdir().unwrap();
        let c = CacheMounts::open(d.path()).unwrap();
        let t = TenantId::local();
        let l = take(&c, &t, "../../etc", CacheSharing::Shared);
        assert!(l.path().starts_with(d.path()));
        let rel = l.path().strip_prefix(d.path()).unwrap();
        let comps: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        assert_eq!(comps.len(), 3);
        assert!(hex_name(&comps[0]) && hex_name(&comps[1]));
        assert_eq!(comps[2], "0");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(l.path()).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
    }

    #[test]
    fn shared_users_share_private_users_get_their_own() {
        let d = tempfile::tempdir().unwrap();
        let c = CacheMounts::open(d.path()).unwrap();
        let t = TenantId::local();
        let a = take(&c, &t, "x", CacheSharing::Shared);
        let b = take(&c, &t, "x", CacheSharing::Shared);
        assert_eq!(a.path(), b.path());
        let p = take(&c, &t, "x", CacheSharing::Private);
        assert_ne!(p.path(), a.path());
        let q = take(&c, &t, "x", CacheSharing::Private);
        assert_ne!(q.path(), p.path());
        drop(q);
        // A released private instance is reused.
        let r = take(&c, &t, "x", CacheSharing::Private);
        assert_eq!(r.path().file_name().unwrap(), "2");
    }

    #[test]
    fn a_locked_user_waits_and_can_be_cancelled() {
        let d = tempfile::tempdir().unwrap();
        let c = CacheMounts::open(d.path()).unwrap();
        let t = TenantId::local();
        let held = take(&c, &t, "x", CacheSharing::Locked);
        let cancel = || true;
        let r: R<CacheLease> = c.acquire(&t, "x", CacheSharing::Locked, NEW, None, &cancel);
        assert!(matches!(r, Err(CacheMountError::Cancelled)));
        let r: R<CacheLease> = c.acquire(&t, "x", CacheSharing::Shared, NEW, None, &cancel);
        assert!(matches!(r, Err(CacheMountError::Cancelled)));
        drop(held);
        let _ = take(&c, &t, "x", CacheSharing::Locked);
    }

    #[test]
    fn prune_keeps_what_is_in_use_and_removes_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let c = CacheMounts::open(d.path()).unwrap();
        let t = TenantId::local();
        let used = take(&c, &t, "used", CacheSharing::Shared);
        let free = take(&c, &t, "free", CacheSharing::Shared);
        fs::write(free.path().join("f"), "12345").unwrap();
        fs::write(used.path().join("f"), "1").unwrap();
        let free_path = free.path().to_path_buf();
        drop(free);
        assert_eq!(c.usage().0, 2);
        let p = c.prune().unwrap();
        assert_eq!((p.caches, p.bytes), (1, 5));
        assert!(!free_path.exists());
        assert!(used.path().join("f").exists());
        drop(used);
        assert_eq!(c.prune().unwrap().caches, 1);
        assert_eq!(c.usage(), (0, 0));
    }

    #[test]
    fn tenants_get_different_directories() {
        let d = tempfile::tempdir().unwrap();
        let c = CacheMounts::open(d.path()).unwrap();
        let a = take(&c, &TenantId::new("a").unwrap(), "x", CacheSharing::Shared);
        let b = take(&c, &TenantId::new("b").unwrap(), "x", CacheSharing::Shared);
        assert_ne!(a.path(), b.path());
    }

    #[test]
    fn a_symlink_planted_in_the_store_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = CacheMounts::open(d.path()).unwrap();
        let t = TenantId::local();
        let l = take(&c, &t, "x", CacheSharing::Shared);
        let inst = l.path().to_path_buf();
        drop(l);
        fs::remove_dir(&inst).unwrap();
        std::os::unix::fs::symlink("/", &inst).unwrap();
        let r: R<CacheLease> = c.acquire(&t, "x", CacheSharing::Shared, NEW, None, &never);
        assert!(matches!(r, Err(CacheMountError::NotADirectory(_))), "{r:?}");
    }
}
