//! Mount helpers of the init: the overlay rootfs, detached mounts of the new mount API, the
//! `RESOLVE_IN_ROOT` walk that creates and opens mount targets, and the `/dev` contents.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{
    self as rmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags,
    OpenTreeFlags,
};

use crate::linux::last_errno;
use crate::syscall::{Harden, InRootFs, OpError, op};

/// Symlinks followed while walking a mount target before giving up (the kernel's limit).
const MAX_SYMLINKS: u32 = 40;

/// Overlay with the new mount API, one `lowerdir+` per layer (no 4 KiB option limit);
/// falls back to `mount(2)` with an escaped `lowerdir=a:b` string on kernels without it.
pub(crate) fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), OpError> {
    let new_api = || -> Result<Option<OwnedFd>, OpError> {
        let Ok(fs) = rmount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) else {
            return Ok(None);
        };
        for (i, lower) in lowers.iter().enumerate() {
            match rmount::fsconfig_set_string(&fs, "lowerdir+", lower) {
                Ok(()) => {}
                Err(Errno::INVAL) if i == 0 => return Ok(None), // kernel < 6.8
                Err(e) => {
                    return Err(OpError {
                        op: "fsconfig lowerdir+",
                        errno: e,
                    });
                }
            }
        }
        rmount::fsconfig_set_string(&fs, "upperdir", upper).map_err(op("fsconfig upperdir"))?;
        rmount::fsconfig_set_string(&fs, "workdir", work).map_err(op("fsconfig workdir"))?;
        rmount::fsconfig_create(&fs).map_err(op("fsconfig create overlay"))?;
        // nodev: a device node the step makes in its root can never be opened (its /dev is a
        // separate, read-only tmpfs).
        let mnt = rmount::fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_NODEV,
        )
        .map_err(op("fsmount overlay"))?;
        Ok(Some(mnt))
    };
    if let Some(mnt) = new_api()? {
        return rmount::move_mount(
            &mnt,
            "",
            CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(op("move_mount overlay"));
    }
    let lowers: Vec<String> = lowers.iter().map(|l| escape_overlay_path(l)).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        escape_overlay_path(upper),
        escape_overlay_path(work)
    );
    let data = CString::new(data).map_err(|_| OpError {
        op: "overlay options",
        errno: Errno::INVAL,
    })?;
    rmount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(op("mount overlay"))
}

/// Backslash-escape the characters overlay's option parser splits on.
fn escape_overlay_path(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A detached mount of `fs`, ready for `move_mount`.
pub(crate) fn detached_mount(fs: &InRootFs) -> Result<OwnedFd, OpError> {
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    match fs {
        InRootFs::Proc => new_fs("proc", &[], attrs),
        InRootFs::Sysfs => new_fs("sysfs", &[], attrs | MountAttrFlags::MOUNT_ATTR_RDONLY),
        // Device nodes must work here: no `nodev`.
        InRootFs::Dev => new_fs(
            "tmpfs",
            &[("mode", "755"), ("size", "4m")],
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        ),
        InRootFs::Devpts => new_fs(
            "devpts",
            &[("ptmxmode", "0666"), ("mode", "0620")],
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        ),
        InRootFs::Shm => new_fs("tmpfs", &[("mode", "1777"), ("size", "64m")], attrs),
        InRootFs::Tmpfs { size, mode } => {
            let mode = format!("{mode:o}");
            let size = size.map(|s| s.to_string());
            let mut opts = vec![("mode", mode.as_str())];
            if let Some(size) = &size {
                opts.push(("size", size.as_str()));
            }
            new_fs(
                "tmpfs",
                &opts,
                MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
            )
        }
        InRootFs::SecretFile {
            data,
            mode,
            uid,
            gid,
            stage,
        } => secret_file(data.expose(), *mode, *uid, *gid, stage),
        InRootFs::Bind { source, readonly } => {
            let tree = rmount::open_tree(
                CWD,
                source,
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_RECURSIVE,
            )
            .map_err(op("open_tree"))?;
            let mut set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
            if *readonly {
                set |= libc::MOUNT_ATTR_RDONLY;
            }
            set_mount_attrs(tree.as_fd(), set, true)?;
            Ok(tree)
        }
    }
}

/// A detached, read-only bind of one file holding `data`, on a fresh tmpfs of its own.
///
/// The tmpfs (`nosuid,nodev,noexec`, root `0700`, sized to the value) is mounted on `stage`
/// only long enough to create the file; then the file alone is cloned (`open_tree`) and the
/// tmpfs is detached from `stage`. The clone keeps the tmpfs alive until the step's mount
/// namespace dies; no path but the bound file reaches it, and nothing is written to a disk.
fn secret_file(
    data: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
    stage: &Path,
) -> Result<OwnedFd, OpError> {
    const PAGE: u64 = 4096;
    let len = u64::try_from(data.len()).map_err(|_| OpError {
        op: "secret size",
        errno: Errno::FBIG,
    })?;
    // One page more than the value rounded up: room for the file whatever tmpfs rounds.
    let size = (len.div_ceil(PAGE) + 1) * PAGE;
    let size = size.to_string();
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let fs = new_fs("tmpfs", &[("mode", "700"), ("size", size.as_str())], attrs)?;
    rmount::move_mount(&fs, "", CWD, stage, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .map_err(op("move_mount secret tmpfs"))?;
    let made = write_secret(stage, data, mode, uid, gid);
    let cloned = made.and_then(|()| {
        rmount::open_tree(
            CWD,
            stage.join("secret"),
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(op("open_tree secret"))
    });
    // Detached from `stage` whatever happened: only the clone (if any) keeps the tmpfs.
    let detached =
        rmount::unmount(stage, rmount::UnmountFlags::DETACH).map_err(op("umount secret stage"));
    let tree = cloned?;
    detached?;
    set_mount_attrs(
        tree.as_fd(),
        libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC,
        false,
    )?;
    Ok(tree)
}

/// Creates `dir/secret` (exclusively, never following a link) with `data`, owner and mode.
fn write_secret(dir: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) -> Result<(), OpError> {
    let dir = rfs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(op("open secret stage"))?;
    let file = rfs::openat(
        &dir,
        "secret",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(op("create secret file"))?;
    let mut rest = data;
    while !rest.is_empty() {
        match rustix::io::write(&file, rest) {
            Ok(0) => {
                return Err(OpError {
                    op: "write secret file",
                    errno: Errno::NOSPC,
                });
            }
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(e) => {
                return Err(OpError {
                    op: "write secret file",
                    errno: e,
                });
            }
        }
    }
    rfs::fchown(
        &file,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(op("chown secret file"))?;
    rfs::fchmod(&file, Mode::from_raw_mode(mode & 0o7777)).map_err(op("chmod secret file"))
}

fn new_fs(fstype: &str, opts: &[(&str, &str)], attrs: MountAttrFlags) -> Result<OwnedFd, OpError> {
    let fs = rmount::fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(op("fsopen"))?;
    for (k, v) in opts {
        rmount::fsconfig_set_string(&fs, *k, *v).map_err(op("fsconfig"))?;
    }
    rmount::fsconfig_create(&fs).map_err(op("fsconfig create"))?;
    rmount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(op("fsmount"))
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH[|AT_RECURSIVE], {attr_set})` (not wrapped by rustix
/// 1.1).
pub(crate) fn set_mount_attrs(
    tree: BorrowedFd<'_>,
    attr_set: u64,
    recursive: bool,
) -> Result<(), OpError> {
    mount_setattr(tree, attr_set, None, recursive).map_err(|errno| OpError {
        op: "mount_setattr",
        errno,
    })
}

/// Make the detached mount `tree` (its top mount only) idmapped through `userns`: a file
/// owned by id `n` on disk is seen as the namespace's id `n`, and what the namespace writes as
/// `n` is stored as `n`.
pub(crate) fn idmap_mount(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> Result<(), OpError> {
    mount_setattr(tree, libc::MOUNT_ATTR_IDMAP, Some(userns), false).map_err(|errno| OpError {
        op: "mount_setattr idmap",
        errno,
    })
}

fn mount_setattr(
    tree: BorrowedFd<'_>,
    attr_set: u64,
    userns: Option<BorrowedFd<'_>>,
    recursive: bool,
) -> Result<(), Errno> {
    let flags = if recursive {
        libc::AT_EMPTY_PATH | libc::AT_RECURSIVE
    } else {
        libc::AT_EMPTY_PATH
    };
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| std::os::fd::AsRawFd::as_raw_fd(&fd) as u64),
    };
    // SAFETY: `tree` is an open mount fd; the path is a static NUL-terminated empty string;
    // `attr` is a valid `mount_attr` whose exact size is passed, read-only for the kernel;
    // `userns_fd`, when set, is an open user-namespace fd borrowed for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            std::os::fd::AsRawFd::as_raw_fd(&tree),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

/// Hide or freeze the kernel path `target` inside `root` (see [`Harden`]). The target is opened
/// with `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS` and never created: `Ok(false)` when missing.
pub(crate) fn harden_in_root(
    root: BorrowedFd<'_>,
    target: &str,
    how: Harden,
) -> Result<bool, OpError> {
    let rel = target.trim_start_matches('/');
    let fd = match rfs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(errno) => {
            return Err(OpError {
                op: "openat2 hardened path",
                errno,
            });
        }
    };
    let ro = libc::MOUNT_ATTR_RDONLY
        | libc::MOUNT_ATTR_NOSUID
        | libc::MOUNT_ATTR_NODEV
        | libc::MOUNT_ATTR_NOEXEC;
    let mnt = match how {
        Harden::ReadOnlyMount => {
            set_mount_attrs(fd.as_fd(), libc::MOUNT_ATTR_RDONLY, false)?;
            return Ok(true);
        }
        Harden::ReadOnlyBind => {
            let tree = rmount::open_tree(
                &fd,
                "",
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_RECURSIVE
                    | OpenTreeFlags::AT_EMPTY_PATH,
            )
            .map_err(op("open_tree read-only path"))?;
            set_mount_attrs(tree.as_fd(), ro, true)?;
            tree
        }
        Harden::Mask => {
            let is_dir = rfs::fstat(&fd).map_err(op("fstat masked path"))?.st_mode & libc::S_IFMT
                == libc::S_IFDIR;
            if is_dir {
                new_fs(
                    "tmpfs",
                    &[("size", "0"), ("mode", "0555")],
                    MountAttrFlags::MOUNT_ATTR_RDONLY
                        | MountAttrFlags::MOUNT_ATTR_NOSUID
                        | MountAttrFlags::MOUNT_ATTR_NODEV
                        | MountAttrFlags::MOUNT_ATTR_NOEXEC,
                )?
            } else {
                // The step's own /dev/null (mknod'ed by populate_dev), as runc does; opened
                // without following anything and checked to be the null device, never a
                // file some mount put there.
                let null_fd = rfs::openat2(
                    root,
                    "dev/null",
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(op("open /dev/null for masking"))?;
                let st = rfs::fstat(&null_fd).map_err(op("fstat /dev/null"))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::CharacterDevice
                    || st.st_rdev != rfs::makedev(1, 3)
                {
                    return Err(OpError {
                        op: "/dev/null is not the null device",
                        errno: Errno::PERM,
                    });
                }
                let null = rmount::open_tree(
                    &null_fd,
                    "",
                    OpenTreeFlags::OPEN_TREE_CLONE
                        | OpenTreeFlags::OPEN_TREE_CLOEXEC
                        | OpenTreeFlags::AT_EMPTY_PATH,
                )
                .map_err(op("open_tree /dev/null"))?;
                set_mount_attrs(
                    null.as_fd(),
                    libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC,
                    false,
                )?;
                null
            }
        }
    };
    rmount::move_mount(
        &mnt,
        "",
        &fd,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(op("move_mount hardened path"))?;
    Ok(true)
}

/// Open (creating what is missing) `target` inside `root`, following symlinks as if `root`
/// were `/` (runc's securejoin idea, done by the kernel's `RESOLVE_IN_ROOT`). Returns the
/// resolved symlink-free path relative to `root` and an `O_PATH` fd of it.
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    target: &str,
    want_dir: bool,
) -> Result<(String, OwnedFd), OpError> {
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let mut pending: VecDeque<String> = components(target).collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            done.pop(); // `..` of the root is the root
            continue;
        }
        let last = pending.is_empty();
        let path = join(&done, Some(&c));
        match rfs::openat2(
            root,
            &path,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => {
                let st = rfs::fstat(&fd).map_err(op("fstat"))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(OpError {
                            op: "resolve mount target",
                            errno: Errno::LOOP,
                        });
                    }
                    let link = rfs::readlinkat(&fd, "", Vec::new()).map_err(op("readlinkat"))?;
                    let link = link.to_string_lossy().into_owned();
                    if link.starts_with('/') {
                        done.clear();
                    }
                    for part in components(&link).collect::<Vec<_>>().into_iter().rev() {
                        pending.push_front(part);
                    }
                    continue;
                }
            }
            Err(Errno::NOENT) => {
                let parent = rfs::openat2(
                    root,
                    join(&done, None),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    resolve | ResolveFlags::NO_SYMLINKS,
                )
                .map_err(op("openat2 parent of mount target"))?;
                if !last || want_dir {
                    rfs::mkdirat(&parent, &c, Mode::from_raw_mode(0o755)).map_err(op("mkdirat"))?;
                } else {
                    rfs::openat(
                        &parent,
                        &c,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::WRONLY
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )
                    .map_err(op("create mount target file"))?;
                }
            }
            Err(e) => {
                return Err(OpError {
                    op: "openat2 mount target",
                    errno: e,
                });
            }
        }
        done.push(c);
    }
    let path = join(&done, None);
    if done.is_empty() {
        return Err(OpError {
            op: "mount target is the root",
            errno: Errno::INVAL,
        });
    }
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if want_dir {
        flags |= OFlags::DIRECTORY;
    }
    let fd = rfs::openat2(
        root,
        &path,
        flags,
        Mode::empty(),
        resolve | ResolveFlags::NO_SYMLINKS,
    )
    .map_err(op("openat2 mount target"))?;
    Ok((path, fd))
}

fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
}

fn join(done: &[String], next: Option<&str>) -> String {
    let mut parts: Vec<&str> = done.iter().map(String::as_str).collect();
    parts.extend(next);
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

/// Device nodes (char major/minor as in every Linux container) and the usual symlinks.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Fill the fresh `/dev` tmpfs: `mknod` each device (bind the host's node when `mknod` is
/// not permitted, e.g. in a user namespace), the symlinks, and the `pts`/`shm` mount points.
pub(crate) fn populate_dev(dev: BorrowedFd<'_>) -> Result<(), OpError> {
    for (name, major, minor) in DEVICES {
        match rfs::mknodat(
            dev,
            *name,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rfs::makedev(*major, *minor),
        ) {
            Ok(()) => rfs::chmodat(dev, *name, Mode::from_raw_mode(0o666), AtFlags::empty())
                .map_err(op("chmod device"))?,
            Err(Errno::PERM) => {
                let file = rfs::openat(
                    dev,
                    *name,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o666),
                )
                .map_err(op("create device bind target"))?;
                let host = rmount::open_tree(
                    CWD,
                    format!("/dev/{name}"),
                    OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
                )
                .map_err(op("open_tree host device"))?;
                rmount::move_mount(
                    &host,
                    "",
                    &file,
                    "",
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
                        | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
                )
                .map_err(op("bind host device"))?;
            }
            Err(e) => {
                return Err(OpError {
                    op: "mknod",
                    errno: e,
                });
            }
        }
    }
    for (name, to) in DEV_LINKS {
        rfs::symlinkat(*to, dev, *name).map_err(op("symlink in /dev"))?;
    }
    for dir in ["pts", "shm"] {
        rfs::mkdirat(dev, dir, Mode::from_raw_mode(0o755)).map_err(op("mkdir in /dev"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn root() -> Result<(tempfile::TempDir, OwnedFd), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let fd = rfs::open(
            dir.path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok((dir, fd))
    }

    #[test]
    fn missing_directories_are_created_inside_the_root() -> TestResult {
        let (dir, fd) = root()?;
        let (path, _) = open_in_root(fd.as_fd(), "/a/b/c", true)?;
        assert_eq!(path, "a/b/c");
        assert!(dir.path().join("a/b/c").is_dir());
        Ok(())
    }

    #[test]
    fn absolute_symlink_escaping_the_root_is_followed_inside_it() -> TestResult {
        let (dir, fd) = root()?;
        let outside = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("etc"))?;
        symlink(
            format!("/../../..{}", outside.path().display()),
            dir.path().join("etc/x"),
        )?;
        let (path, _) = open_in_root(fd.as_fd(), "/etc/x/sub", true)?;
        let inside = outside.path().strip_prefix("/")?.join("sub");
        assert_eq!(Path::new(&path), inside);
        assert!(dir.path().join(&inside).is_dir());
        assert!(
            !outside.path().join("sub").exists(),
            "created outside the root"
        );
        Ok(())
    }

    #[test]
    fn dot_dot_is_clamped_at_the_root() -> TestResult {
        let (dir, fd) = root()?;
        std::fs::create_dir(dir.path().join("a"))?;
        symlink("../../../../b", dir.path().join("a/up"))?;
        let (path, _) = open_in_root(fd.as_fd(), "/../a/up/c", true)?;
        assert_eq!(path, "b/c");
        Ok(())
    }

    #[test]
    fn file_targets_are_created_as_files() -> TestResult {
        let (dir, fd) = root()?;
        open_in_root(fd.as_fd(), "/run/secret", false)?;
        assert!(dir.path().join("run/secret").is_file());
        Ok(())
    }

    #[test]
    fn symlink_loops_and_the_root_itself_are_refused() -> TestResult {
        let (dir, fd) = root()?;
        symlink("/loop", dir.path().join("loop"))?;
        let err = open_in_root(fd.as_fd(), "/loop/x", true).err();
        assert_eq!(err.map(|e| e.errno), Some(Errno::LOOP));
        let err = open_in_root(fd.as_fd(), "/a/..", true).err();
        assert_eq!(err.map(|e| e.errno), Some(Errno::INVAL));
        Ok(())
    }

    #[test]
    fn overlay_fallback_escapes_separators() {
        assert_eq!(
            escape_overlay_path(Path::new("/a:b,c\\d")),
            "/a\\:b\\,c\\\\d"
        );
    }
}
