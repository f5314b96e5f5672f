//! The real [`Syscall`] implementation.
//!
//! Only the init calls these, in a single-threaded process (see `init_main_if_requested`).
//! Mounts use the new mount API (`fsopen`/`fsmount`/`open_tree`/`move_mount`) so every mount
//! lands on an fd obtained by `openat2(RESOLVE_IN_ROOT)`, never on a path string that a
//! symlink in the (untrusted) image could redirect out of the root.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{
    self as rmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags,
    MoveMountFlags, OpenTreeFlags, UnmountFlags,
};
use rustix::thread::UnshareFlags;

use crate::spec::Rootfs;
use crate::syscall::{Forked, InRootFs, OpError, Syscall, op};

/// The kernel, for real.
#[derive(Debug, Default)]
pub(crate) struct LinuxSyscall;

/// Symlinks followed while walking a mount target before giving up (the kernel's limit).
const MAX_SYMLINKS: u32 = 40;

impl Syscall for LinuxSyscall {
    fn unshare(&self, flags: UnshareFlags) -> Result<(), Errno> {
        // SAFETY: `unshare_unsafe` is unsafe only for `CLONE_FILES`, which could let threads
        // observe fds from an unshared table. `flags` never contains FILES (the init builds
        // them from namespace flags only) and the init process is single-threaded.
        unsafe { rustix::thread::unshare_unsafe(flags) }
    }

    fn fork(&self) -> Result<Forked, Errno> {
        let (lifeline_r, lifeline_w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        // SAFETY: the init is single-threaded (init_main_if_requested runs first in `main`,
        // before any thread starts), so the child's copy of the address space has no lock held
        // by a vanished thread and may allocate and run ordinary Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Errno::from_raw_os_error(
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            ));
        }
        if pid > 0 {
            drop(lifeline_r);
            let pid = rustix::process::Pid::from_raw(pid).ok_or(Errno::INVAL)?;
            return Ok(Forked::Parent {
                pid,
                _lifeline: lifeline_w,
            });
        }
        drop(lifeline_w);
        // Die with the outer init (the engine's Killer SIGKILLs it). If it already died
        // between fork and here, the lifeline's write end is gone: read returns EOF.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        let mut byte = [0u8; 1];
        match rustix::io::read(&lifeline_r, &mut byte) {
            Err(Errno::AGAIN) => Ok(Forked::Child),
            _ => Err(Errno::SRCH),
        }
    }

    fn make_root_private(&self) -> Result<(), Errno> {
        rmount::mount_change(
            "/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        )
    }

    fn mount_rootfs(&self, rootfs: &Rootfs) -> Result<PathBuf, OpError> {
        match rootfs {
            Rootfs::Overlay {
                lowers,
                upper,
                work,
                mountpoint,
            } => {
                let mut lowers = lowers.clone();
                if lowers.is_empty() {
                    // Overlay needs a lower: an empty directory on a tmpfs under the mountpoint
                    // (the overlay then covers it; overlay keeps its own clone of the layer).
                    rmount::mount(
                        "tmpfs",
                        mountpoint,
                        "tmpfs",
                        MountFlags::NOSUID | MountFlags::NODEV,
                        c"mode=0755",
                    )
                    .map_err(op("mount tmpfs for the empty lower"))?;
                    let empty = mountpoint.join("empty");
                    rfs::mkdir(&empty, Mode::from_raw_mode(0o755))
                        .map_err(op("mkdir empty lower"))?;
                    lowers.push(empty);
                }
                mount_overlay(&lowers, upper, work, mountpoint)?;
                Ok(mountpoint.clone())
            }
            Rootfs::Dir { path } => {
                rmount::mount_bind_recursive(path, path).map_err(op("bind rootfs onto itself"))?;
                Ok(path.clone())
            }
        }
    }

    fn mount_in_root(&self, root: &Path, target: &str, fs: &InRootFs) -> Result<(), OpError> {
        let root_fd = rfs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(op("open root"))?;
        let want_dir = match fs {
            InRootFs::Bind { source, .. } => {
                rfs::stat(source).map_err(op("stat bind source"))?.st_mode & libc::S_IFMT
                    == libc::S_IFDIR
            }
            _ => true,
        };
        let mnt = detached_mount(fs)?;
        let (resolved, target_fd) = open_in_root(root_fd.as_fd(), target, want_dir)?;
        rmount::move_mount(
            &mnt,
            "",
            &target_fd,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(op("move_mount"))?;
        if *fs == InRootFs::Dev {
            let dev = rfs::openat2(
                &root_fd,
                &resolved,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS,
            )
            .map_err(op("reopen /dev"))?;
            populate_dev(dev.as_fd())?;
        }
        Ok(())
    }

    fn loopback_up(&self) -> Result<(), Errno> {
        // SAFETY: socket(2) takes no pointers; the returned fd is owned by `owned` below.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(last_errno());
        }
        // SAFETY: `sock` is a freshly created fd that nothing else owns.
        let _owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
        // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: `sock` is an open socket owned above; `req` is a valid, writable `ifreq`
        // whose name is NUL-terminated; SIOCGIFFLAGS writes only `ifr_ifru.ifru_flags`.
        if unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(last_errno());
        }
        // SAFETY: SIOCGIFFLAGS just initialised the `ifru_flags` member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above; SIOCSIFFLAGS reads the name and flags of the valid `ifreq`.
        if unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(last_errno());
        }
        Ok(())
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        rustix::system::sethostname(name.as_bytes())
    }

    fn pivot_root(&self, root: &Path) -> Result<(), OpError> {
        rustix::process::chdir(root).map_err(op("chdir to the new root"))?;
        rustix::process::pivot_root(".", ".").map_err(op("pivot_root"))?;
        // The old root is now stacked on "."; detach it so nothing of the host stays reachable.
        rmount::unmount(".", UnmountFlags::DETACH).map_err(op("umount2 old root"))?;
        rustix::process::chdir("/").map_err(op("chdir /"))
    }

    fn mkdir_all(&self, path: &Path) -> Result<(), Errno> {
        std::fs::create_dir_all(path).map_err(|e| io_errno(&e))
    }

    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        rustix::process::chdir(path)
    }

    fn read_file(&self, path: &Path) -> Result<Option<String>, Errno> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_errno(&e)),
        }
    }

    fn setgroups(&self, groups: &[u32]) -> Result<(), Errno> {
        let gids: Vec<rustix::process::Gid> = groups
            .iter()
            .map(|g| rustix::process::Gid::from_raw(*g))
            .collect();
        // Per-thread syscall; the init has one thread.
        rustix::thread::set_thread_groups(&gids)
    }

    fn setgid(&self, gid: u32) -> Result<(), Errno> {
        rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(gid))
    }

    fn setuid(&self, uid: u32) -> Result<(), Errno> {
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))
    }

    fn set_no_new_privs(&self) -> Result<(), Errno> {
        rustix::thread::set_no_new_privs(true)
    }

    fn cloexec_fds_above_stdio(&self) -> Result<(), Errno> {
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only sets FD_CLOEXEC
        // on fds 3.., which the init does not rely on surviving exec.
        let r = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if r < 0 { Err(last_errno()) } else { Ok(()) }
    }

    fn is_executable(&self, path: &Path) -> bool {
        rfs::stat(path).is_ok_and(|st| {
            FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_mode & 0o111 != 0
        })
    }

    fn execve(&self, path: &CString, argv: &[CString], envp: &[CString]) -> Result<(), Errno> {
        let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_p.push(std::ptr::null());
        let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
        envp_p.push(std::ptr::null());
        // SAFETY: `path` and every element are NUL-terminated C strings borrowed for the call;
        // both arrays are NULL-terminated and outlive the call (execve returns only on error).
        unsafe { libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
        Err(last_errno())
    }
}

fn last_errno() -> Errno {
    Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Overlay with the new mount API, one `lowerdir+` per layer (no 4 KiB option limit);
/// falls back to `mount(2)` with an escaped `lowerdir=a:b` string on kernels without it.
fn mount_overlay(
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
        let mnt = rmount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
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
        MountFlags::empty(),
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
fn detached_mount(fs: &InRootFs) -> Result<OwnedFd, OpError> {
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
            set_mount_attrs(tree.as_fd(), set)?;
            Ok(tree)
        }
    }
}

fn new_fs(fstype: &str, opts: &[(&str, &str)], attrs: MountAttrFlags) -> Result<OwnedFd, OpError> {
    let fs = rmount::fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(op("fsopen"))?;
    for (k, v) in opts {
        rmount::fsconfig_set_string(&fs, *k, *v).map_err(op("fsconfig"))?;
    }
    rmount::fsconfig_create(&fs).map_err(op("fsconfig create"))?;
    rmount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(op("fsmount"))
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH|AT_RECURSIVE, {attr_set})` (not wrapped by rustix 1.1).
fn set_mount_attrs(tree: BorrowedFd<'_>, attr_set: u64) -> Result<(), OpError> {
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `tree` is an open mount fd; the path is a static NUL-terminated empty string;
    // `attr` is a valid `mount_attr` whose exact size is passed, read-only for the kernel.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            std::os::fd::AsRawFd::as_raw_fd(&tree),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        Err(OpError {
            op: "mount_setattr",
            errno: last_errno(),
        })
    } else {
        Ok(())
    }
}

/// Open (creating what is missing) `target` inside `root`, following symlinks as if `root`
/// were `/` (runc's securejoin idea, done by the kernel's `RESOLVE_IN_ROOT`). Returns the
/// resolved symlink-free path relative to `root` and an `O_PATH` fd of it.
fn open_in_root(
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
fn populate_dev(dev: BorrowedFd<'_>) -> Result<(), OpError> {
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
