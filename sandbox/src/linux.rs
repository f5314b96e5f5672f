//! The real [`Syscall`] implementation.
//!
//! Only the init calls these, in a single-threaded process (see `init_main_if_requested`).
//! Mounts use the new mount API (`fsopen`/`fsmount`/`open_tree`/`move_mount`) so every mount
//! lands on an fd obtained by `openat2(RESOLVE_IN_ROOT)`, never on a path string that a
//! symlink in the (untrusted) image could redirect out of the root.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, CWD, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{
    self as rmount, MountFlags, MountPropagationFlags, MoveMountFlags, UnmountFlags,
};
use rustix::thread::UnshareFlags;

use crate::caps::CapSets;
use crate::landlock::{LandlockError, LandlockRecord};
use crate::mounts::{
    detached_mount, harden_in_root, mount_overlay, open_in_root, populate_dev, set_mount_attrs,
};
use crate::spec::{IdMap, NetworkMode, Rootfs};
use crate::syscall::{Forked, Harden, InRootFs, OpError, Syscall, op};

/// The kernel, for real.
#[derive(Debug, Default)]
pub(crate) struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn join_cgroup(&self, procs: &[PathBuf]) -> Result<(), crate::cgroup::CgroupError> {
        crate::cgroup::ensure_in_cgroups(procs)
    }

    fn create_userns(&self, map: &IdMap) -> Result<OwnedFd, OpError> {
        use rustix::pipe::{PipeFlags, pipe_with};
        let (ready_r, ready_w) = pipe_with(PipeFlags::CLOEXEC).map_err(op("pipe"))?;
        let (done_r, done_w) = pipe_with(PipeFlags::CLOEXEC).map_err(op("pipe"))?;
        // SAFETY: the init is single-threaded (see `fork` above); the helper only unshares,
        // writes one byte, waits for EOF and `_exit`s.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(OpError {
                op: "fork userns helper",
                errno: last_errno(),
            });
        }
        if pid == 0 {
            drop(ready_r);
            drop(done_w);
            // SAFETY: CLONE_NEWUSER takes no pointers; this helper process is single-threaded.
            let ok = unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0;
            let _ = rustix::io::write(&ready_w, &[u8::from(ok)]);
            let mut b = [0u8; 1];
            let _ = rustix::io::read(&done_r, &mut b);
            // SAFETY: `_exit` ends the helper without running the parent's atexit handlers or
            // flushing its copied stdio buffers.
            unsafe { libc::_exit(0) };
        }
        drop(ready_w);
        drop(done_r);
        let helper = rustix::process::Pid::from_raw(pid).ok_or(OpError {
            op: "fork userns helper",
            errno: Errno::INVAL,
        })?;
        let result = (|| {
            let mut b = [0u8; 1];
            match rustix::io::read(&ready_r, &mut b) {
                Ok(1) if b[0] == 1 => {}
                _ => {
                    return Err(OpError {
                        op: "unshare(CLONE_NEWUSER)",
                        errno: Errno::PERM,
                    });
                }
            }
            let proc = format!("/proc/{pid}");
            let write = |file: &str, line: String, what: &'static str| {
                std::fs::write(format!("{proc}/{file}"), line).map_err(|e| OpError {
                    op: what,
                    errno: io_errno(&e),
                })
            };
            write(
                "uid_map",
                format!("0 {} {}\n", map.host_uid, map.size),
                "write uid_map",
            )?;
            write(
                "gid_map",
                format!("0 {} {}\n", map.host_gid, map.size),
                "write gid_map",
            )?;
            rfs::open(
                format!("{proc}/ns/user"),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(op("open ns/user"))
        })();
        drop(done_w);
        let _ = rustix::process::waitpid(Some(helper), rustix::process::WaitOptions::empty());
        result
    }

    fn setsid(&self) -> Result<(), Errno> {
        rustix::process::setsid().map(drop)
    }

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
            return Err(last_errno());
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
                // As the overlay: a device node the step makes can not be opened.
                let fd = rfs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                    .map_err(op("open rootfs"))?;
                set_mount_attrs(fd.as_fd(), libc::MOUNT_ATTR_NODEV, true)?;
                Ok(path.clone())
            }
        }
    }

    fn mount_in_root(&self, root: &Path, target: &str, fs: &InRootFs) -> Result<(), OpError> {
        let root_fd = open_root(root)?;
        let want_dir = match fs {
            InRootFs::Bind { source, .. } => {
                rfs::stat(source).map_err(op("stat bind source"))?.st_mode & libc::S_IFMT
                    == libc::S_IFDIR
            }
            InRootFs::SecretFile { .. } => false,
            _ => true,
        };
        let mnt = detached_mount(fs)?;
        let (resolved, target_fd) = open_in_root(root_fd.as_fd(), target, want_dir)?;
        check_target(fs, target, &resolved)?;
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

    fn harden_in_root(&self, root: &Path, target: &str, how: Harden) -> Result<bool, OpError> {
        let root_fd = open_root(root)?;
        harden_in_root(root_fd.as_fd(), target, how)
    }

    fn make_dir_in_root(&self, root: &Path, path: &str) -> Result<(), OpError> {
        if path.split('/').all(|c| c.is_empty() || c == ".") {
            return Ok(()); // the root itself
        }
        let root_fd = open_root(root)?;
        open_in_root(root_fd.as_fd(), path, true).map(drop)
    }

    fn idmap_root(&self, root: &Path, userns: std::os::fd::BorrowedFd<'_>) -> Result<(), OpError> {
        let tree = rmount::open_tree(
            CWD,
            root,
            rmount::OpenTreeFlags::OPEN_TREE_CLONE
                | rmount::OpenTreeFlags::OPEN_TREE_CLOEXEC
                | rmount::OpenTreeFlags::AT_RECURSIVE,
        )
        .map_err(op("open_tree root"))?;
        crate::mounts::idmap_mount(tree.as_fd(), userns)?;
        rmount::move_mount(
            &tree,
            "",
            CWD,
            root,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(op("move_mount idmapped root"))
    }

    fn enter_userns(&self, userns: std::os::fd::BorrowedFd<'_>) -> Result<(), Errno> {
        // SAFETY: `userns` is an open user-namespace fd; the init is single-threaded (setns
        // into a user namespace refuses a multithreaded caller anyway).
        let r = unsafe {
            libc::setns(
                std::os::fd::AsRawFd::as_raw_fd(&userns),
                libc::CLONE_NEWUSER,
            )
        };
        if r < 0 { Err(last_errno()) } else { Ok(()) }
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
        // As Docker (since 20.10): unprivileged ICMP echo sockets for every group, so `ping`
        // works without CAP_NET_RAW, which a step never has. A net sysctl acts on the writer's
        // network namespace: this is the step's own, never the host's.
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
            .map_err(|e| io_errno(&e))?;
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
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        // The image chose this file: it may be a fifo (would block), a device such as
        // /dev/zero (endless), or huge. Only a regular file is read, and only its first 4 MiB.
        const MAX: u64 = 4 << 20;
        let f = match std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_errno(&e)),
        };
        let md = f.metadata().map_err(|e| io_errno(&e))?;
        if !md.is_file() {
            return Err(Errno::INVAL);
        }
        let mut bytes = Vec::new();
        f.take(MAX)
            .read_to_end(&mut bytes)
            .map_err(|e| io_errno(&e))?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
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
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))?;
        // The kernel clears the parent-death signal when credentials change (setgid/setuid):
        // arm it again so killing the outer init still kills the step. A step running as root
        // can disarm it itself; killing the whole step reliably (cgroup.kill) comes with the
        // hardened sandbox.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    }

    fn drop_bounding(&self, keep: u64) -> Result<u64, Errno> {
        // Every capability the kernel knows, asked of the kernel itself (PR_CAPBSET_READ is
        // EINVAL past the last one), never of a file the image could shadow.
        let known = |cap: u32| {
            // SAFETY: PR_CAPBSET_READ takes integer arguments only.
            unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) }
        };
        let mut left = 0u64;
        for cap in (0..64u32).take_while(|c| known(*c) >= 0) {
            if keep & (1u64 << cap) == 0 {
                // SAFETY: PR_CAPBSET_DROP takes integer arguments only.
                let r = unsafe {
                    libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0)
                };
                if r < 0 {
                    return Err(last_errno());
                }
            }
            if known(cap) == 1 {
                left |= 1u64 << cap;
            }
        }
        Ok(left)
    }

    fn set_caps(&self, sets: CapSets) -> Result<u64, Errno> {
        // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        if r < 0 {
            return Err(last_errno());
        }
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let mut header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut current = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        // SAFETY: `header` is a valid v3 header (pid 0 = this thread); `current` has room for
        // the two `__user_cap_data_struct`s version 3 writes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_capget,
                &mut header as *mut Header,
                current.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(last_errno());
        }
        let have = u64::from(current[0].permitted) | (u64::from(current[1].permitted) << 32);
        let sets = CapSets {
            effective: sets.effective & have,
            permitted: sets.permitted & have,
            inheritable: sets.inheritable & have,
        };
        let split = |m: u64| (m as u32, (m >> 32) as u32);
        let (e0, e1) = split(sets.effective);
        let (p0, p1) = split(sets.permitted);
        let (i0, i1) = split(sets.inheritable);
        let data = [
            Data {
                effective: e0,
                permitted: p0,
                inheritable: i0,
            },
            Data {
                effective: e1,
                permitted: p1,
                inheritable: i1,
            },
        ];
        // SAFETY: `header` is a valid v3 `__user_cap_header_struct` (pid 0 = this thread),
        // `data` the two `__user_cap_data_struct`s version 3 requires; the kernel reads both
        // (and may write the preferred version into `header`, which is writable).
        let r =
            unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
        if r < 0 {
            Err(last_errno())
        } else {
            Ok(sets.permitted)
        }
    }

    fn landlock(&self, network: NetworkMode) -> Result<LandlockRecord, LandlockError> {
        crate::landlock::restrict_self(network)
    }

    fn apply_seccomp(
        &self,
        filters: &crate::seccomp::Filters,
    ) -> Result<(), crate::seccomp::SeccompError> {
        crate::seccomp::apply(filters)
    }

    fn set_no_new_privs(&self) -> Result<(), Errno> {
        rustix::thread::set_no_new_privs(true)
    }

    fn stdin_from_dev_null(&self) -> Result<(), Errno> {
        let null = rfs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        // SAFETY: `null` is open; dup2 atomically replaces fd 0, which no Rust object of the
        // init owns (the spec was read from it long ago); the copy on fd 0 has no CLOEXEC.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) } < 0 {
            return Err(last_errno());
        }
        Ok(())
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

    fn reset_signals(&self) -> Result<(), Errno> {
        for sig in 1..=SIGRTMAX {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            set_default_disposition(sig)?;
        }
        // SAFETY: `empty` is a valid sigset_t initialised by sigemptyset before use; the old
        // mask is not requested (NULL).
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0 {
                return Err(last_errno());
            }
        }
        Ok(())
    }

    fn is_executable(&self, path: &Path) -> bool {
        rfs::stat(path).is_ok_and(|st| {
            FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_mode & 0o111 != 0
        })
    }

    fn report(&self, report: &crate::init::Report) {
        let line = report.to_line();
        // SAFETY: ERROR_FD is the report pipe inherited from the outer init (close-on-exec,
        // still open until execve); `line` is a valid buffer of `line.len()` bytes. A short or
        // failed write only loses the record.
        let _ = unsafe { libc::write(crate::init::ERROR_FD, line.as_ptr().cast(), line.len()) };
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

/// An `O_PATH` fd of the new root directory.
fn open_root(root: &Path) -> Result<OwnedFd, OpError> {
    rfs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(op("open root"))
}

/// Where a file system may land. The kernel's own (`/proc`, `/dev`, `/sys`, …) go exactly at
/// their path: an image whose `/proc` is a symlink would otherwise move proc somewhere the
/// masks (which never follow symlinks) do not reach. A step's mounts never go on or under
/// `/proc`, `/sys` or `/dev` (but a tmpfs may replace `/dev/shm`, and the engine binds heredoc
/// files read-only at `/dev/pipes`): they could cover the masks
/// or hand the init a file where it expects the kernel's (runc's `checkProcMount` idea).
fn check_target(fs: &InRootFs, target: &str, resolved: &str) -> Result<(), OpError> {
    let kernel_fs = matches!(
        fs,
        InRootFs::Proc | InRootFs::Dev | InRootFs::Devpts | InRootFs::Shm | InRootFs::Sysfs
    );
    if kernel_fs {
        return if resolved == target.trim_start_matches('/') {
            Ok(())
        } else {
            Err(OpError {
                op: "kernel file system target is a symlink in the image",
                errno: Errno::LOOP,
            })
        };
    }
    let under = |dir: &str| resolved == dir || resolved.starts_with(&format!("{dir}/"));
    let tmpfs_on_shm = resolved == "dev/shm" && matches!(fs, InRootFs::Tmpfs { .. });
    // The engine's heredoc files (BuildKit's `/dev/pipes/<name>`), read-only.
    let heredocs = resolved == "dev/pipes" && matches!(fs, InRootFs::Bind { readonly: true, .. });
    if (under("proc") || under("sys") || under("dev")) && !tmpfs_on_shm && !heredocs {
        return Err(OpError {
            op: "mount target under /proc, /sys or /dev",
            errno: Errno::PERM,
        });
    }
    Ok(())
}

/// Highest signal number on Linux.
const SIGRTMAX: i32 = 64;

/// The kernel's `struct sigaction` (asm-generic layout with `sa_restorer`, as on x86_64 and
/// arm64). The raw syscall is used because glibc refuses to touch signals 32 and 33.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn set_default_disposition(sig: i32) -> Result<(), Errno> {
    let act = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: `act` is a valid kernel `struct sigaction` for this architecture (layout above),
    // read-only for the kernel; no old action is requested (NULL); the sigset size passed is
    // the kernel's (8 bytes, matching `mask`).
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &act as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            std::mem::size_of::<u64>(),
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn set_default_disposition(sig: i32) -> Result<(), Errno> {
    // SAFETY: SIG_DFL is a valid disposition for any signal; glibc refuses 32 and 33 with
    // EINVAL, which is ignored here (the raw-syscall version above covers them).
    if unsafe { libc::signal(sig, libc::SIG_DFL) } == libc::SIG_ERR && sig != 32 && sig != 33 {
        return Err(last_errno());
    }
    Ok(())
}

pub(crate) fn last_errno() -> Errno {
    Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO))
}
