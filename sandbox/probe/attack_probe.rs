//! kiln's attack probe: one escape attempt per invocation, with a verdict a test can trust.
//!
//! Not a cargo target. `cli/tests/attacks.rs` compiles it with
//! `rustc --edition=2024 -O -C target-feature=+crt-static sandbox/probe/attack_probe.rs` (a
//! static-pie, std only, no libc crate) and copies it into each attack case's build context, so a
//! Dockerfile can `COPY probe /probe` and run it inside a build step. It lives under `sandbox/`
//! because it needs `unsafe` FFI, which only the sandbox crate may contain.
//!
//! Usage: `probe expect=ERRNO[,ERRNO…] ATTACK [ARGS…]`, or `probe ssh-identities` (not an
//! attack: an SSH agent client for `RUN --mount=type=ssh` tests, see [`ssh_identities`]).
//!
//! It makes one attempt and prints exactly one verdict line on stdout:
//! - `kiln-probe: <attack args>: blocked <NAME>` (exit 0): the attempt failed with one of the
//!   expected errnos (or pseudo-outcomes, below);
//! - `kiln-probe: <attack args>: ESCAPED: <what happened>` (exit 1): the attempt worked;
//! - `kiln-probe: <attack args>: unexpected errno <NAME> (<text>); expected …` (exit 1): it
//!   failed, but not the way a refusal by the sandbox fails (e.g. `EFAULT` from a privileged
//!   call means the kernel got past its permission check and only tripped on the null args).
//!
//! Pseudo-outcomes (names that are not errnos): `MASKED` (the path opened, but it is the null
//! device bind-mounted over the real file, as runc masks paths), `EMPTY` (the path opened but
//! reads as empty, e.g. an empty tmpfs over a directory), `CONTAINED` (the working directory
//! leads back to the process's own root), `NOTFOUND` (a searched-for marker does not exist).
//!
//! Raw syscalls pass harmless arguments (null pointers, zero lengths, no-op values), so that on
//! a machine where the attempt *succeeds* (an unhardened sandbox, or the host in the probe's
//! self-test) nothing is damaged: e.g. the clock is set to the time it already has.
//! Syscall numbers are x86_64's.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CString, c_char, c_int, c_long};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::process::ExitCode;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the syscall numbers below are x86_64's; add a table for this architecture");

// Declared here because a rustc-only build has no libc crate; called only through `raw`.
unsafe extern "C" {
    /// glibc's `syscall(2)` wrapper: returns -1 and sets errno on failure.
    fn syscall(n: c_long, ...) -> c_long;
}

/// What one attempt came to.
enum Outcome {
    /// The attempt failed with this errno.
    Errno(i32),
    /// The attempt failed in a way that has no errno (see the pseudo-outcomes above).
    Refused(&'static str),
    /// The attempt worked; what it reached.
    Escaped(String),
    /// The attempt failed, but for a reason that says nothing about the sandbox (a tool that
    /// failed without naming an errno).
    Unexplained(String),
    /// The probe was called wrongly.
    Usage(String),
}
use Outcome::{Errno, Escaped, Refused, Unexplained, Usage};

type Attack = fn(&[String]) -> Outcome;

/// The attacks: name, arguments, what it tries, and the function.
#[rustfmt::skip]
static ATTACKS: &[(&str, &str, &str, Attack)] = &[
    ("syscall", "NAME", "a raw syscall from SYSCALLS with harmless args", attack_syscall),
    ("raw", "NR A0 A1 A2 A3 A4 A5", "a raw syscall by number (args decimal or 0x hex)", attack_raw),
    ("open-ro", "PATH", "open PATH read-only and read from it", attack_open_ro),
    ("read-dir", "PATH", "list a directory", attack_read_dir),
    ("write-file", "PATH DATA", "open an existing PATH write-only and write DATA", attack_write_file),
    ("create-file", "PATH", "create a new regular file", attack_create_file),
    ("mknod-open", "PATH b|c MAJ:MIN", "make a device node, open it and read", attack_mknod_open),
    ("mount", "FSTYPE SOURCE TARGET [bind|remount-rw|data=OPTS]", "mount(2)", attack_mount),
    ("umount", "PATH", "umount2(PATH, MNT_DETACH)", attack_umount),
    ("fsopen", "FSTYPE", "new mount API: fsopen", attack_fsopen),
    ("open-tree", "PATH", "new mount API: open_tree(OPEN_TREE_CLONE)", attack_open_tree),
    ("mount-setattr-rw", "PATH", "clear MOUNT_ATTR_RDONLY on a mount", attack_mount_setattr_rw),
    ("ptrace-attach", "PID", "PTRACE_ATTACH to another process", attack_ptrace_attach),
    ("process-vm-read", "PID", "read 8 bytes of another process", attack_process_vm_read),
    ("unshare", "user|mount|net|pid|uts|ipc|cgroup|time", "unshare(2) one namespace", attack_unshare),
    ("clone-newuser", "", "clone(CLONE_NEWUSER) a child", attack_clone_newuser),
    ("clone3-newuser", "", "clone3 with CLONE_NEWUSER", attack_clone3_newuser),
    ("setns", "NSFILE", "setns(2) into the namespace file", attack_setns),
    ("bpf-map-create", "", "create a BPF array map", attack_bpf_map),
    ("perf-event-open", "", "a CPU-clock perf event that profiles the kernel too", attack_perf),
    ("keyctl-session", "", "find the session keyring (shared with the host)", attack_keyctl_session),
    ("add-key", "", "add a key to the process keyring", attack_add_key),
    ("request-key", "", "request a user key", attack_request_key),
    ("syslog-read", "", "read the kernel log (dmesg)", attack_syslog_read),
    ("clock-settime-now", "", "set CLOCK_REALTIME (to the time it already has)", attack_clock_settime),
    ("adjtimex-maxerror", "", "adjtimex(ADJ_MAXERROR) with the current value", attack_adjtimex),
    ("name-to-handle", "PATH", "name_to_handle_at(PATH)", attack_name_to_handle),
    ("open-by-handle", "MOUNTPOINT", "shocker: open the root inode of MOUNTPOINT's file system", attack_open_by_handle),
    ("socket", "packet-raw|packet-dgram|inet-raw|inet6-raw", "open a raw socket", attack_socket),
    ("connect", "HOST:PORT", "TCP connect", attack_connect),
    ("connect-abstract", "NAME", "connect to an abstract unix socket", attack_connect_abstract),
    ("kill", "PID SIGNAL", "kill(2)", attack_kill),
    ("setuid-root", "", "check euid after exec (setuid bit), then setuid(0)", attack_setuid_root),
    ("chroot-escape", "HOSTPATH", "chroot + fchdir out + chroot(\".\"), then open HOSTPATH", attack_chroot_escape),
    ("cwd-in-root", "[DIR]", "chdir DIR; is the cwd beneath /? (runc CVE-2024-21626)", attack_cwd_in_root),
    ("leaked-fds", "", "any inherited fd above stdio", attack_leaked_fds),
    ("find-marker", "NAME-PART ROOT…", "search ROOTs (`/proc/*/…` expanded) for a file", attack_find_marker),
    ("alloc-touch", "MIB", "allocate and touch MIB MiB", attack_alloc_touch),
    ("threads", "N", "start N threads", attack_threads),
    ("tiocsti", "TTY", "push a byte into a terminal's input (TIOCSTI)", attack_tiocsti),
    ("run", "CMD ARGS…", "run a tool; refused if it fails saying an expected errno", attack_run),
];

/// Syscalls tried by `syscall NAME`: number and six arguments, chosen so that reaching the
/// kernel's real work is harmless (and visible: a different errno or success).
static SYSCALLS: &[(&str, c_long, [c_long; 6])] = &[
    ("getpid", 39, [0; 6]), // for the self-test: always succeeds
    ("kexec_load", 246, [0; 6]),
    ("kexec_file_load", 320, [-1, -1, 0, 0, 0, 0]),
    ("init_module", 175, [0; 6]),
    ("finit_module", 313, [-1, 0, 0, 0, 0, 0]),
    ("delete_module", 176, [0; 6]),
    ("userfaultfd", 323, [0o2000000, 0, 0, 0, 0, 0]), // O_CLOEXEC
    ("reboot", 169, [0; 6]), // bad magic: EINVAL once past the capability check
    ("swapon", 167, [0; 6]),
    ("swapoff", 168, [0; 6]),
    ("acct", 163, [0; 6]),         // turns accounting off (per PID namespace)
    ("settimeofday", 164, [0; 6]), // NULL, NULL: no change, but needs CAP_SYS_TIME
    ("iopl", 172, [3, 0, 0, 0, 0, 0]),
    ("ioperm", 173, [0x80, 1, 1, 0, 0, 0]),
    ("pivot_root", 155, [0; 6]),
    ("mount", 165, [0; 6]),
    ("umount2", 166, [0; 6]),
    ("open_by_handle_at", 304, [-100, 0, 0, 0, 0, 0]),
    ("move_mount", 429, [-1, 0, -1, 0, 0, 0]),
    ("fsmount", 432, [-1, 0, 0, 0, 0, 0]),
    ("quotactl", 179, [0; 6]),
    ("lookup_dcookie", 212, [0; 6]),
    ("io_uring_setup", 425, [1, 0, 0, 0, 0, 0]),
    ("process_vm_writev", 311, [1, 0, 0, 0, 0, 0]), // PID 1, no iovecs
    ("clone3", 435, [0; 6]),
];

/// Errno names this probe understands (x86_64 / generic Linux numbers).
static ERRNOS: &[(&str, i32)] = &[
    ("EPERM", 1),
    ("ENOENT", 2),
    ("ESRCH", 3),
    ("EINTR", 4),
    ("EIO", 5),
    ("ENXIO", 6),
    ("ENOEXEC", 8),
    ("EBADF", 9),
    ("ECHILD", 10),
    ("EAGAIN", 11),
    ("ENOMEM", 12),
    ("EACCES", 13),
    ("EFAULT", 14),
    ("EBUSY", 16),
    ("EEXIST", 17),
    ("EXDEV", 18),
    ("ENODEV", 19),
    ("ENOTDIR", 20),
    ("EISDIR", 21),
    ("EINVAL", 22),
    ("EMFILE", 24),
    ("ENOTTY", 25),
    ("ETXTBSY", 26),
    ("ENOSPC", 28),
    ("EROFS", 30),
    ("EPIPE", 32),
    ("ENOSYS", 38),
    ("ELOOP", 40),
    ("EPROTONOSUPPORT", 93),
    ("ESOCKTNOSUPPORT", 94),
    ("EOPNOTSUPP", 95),
    ("EAFNOSUPPORT", 97),
    ("EADDRNOTAVAIL", 99),
    ("ENETUNREACH", 101),
    ("ECONNRESET", 104),
    ("ETIMEDOUT", 110),
    ("ECONNREFUSED", 111),
    ("EHOSTUNREACH", 113),
    ("ESTALE", 116),
    ("ENOKEY", 126),
];

/// Pseudo-outcomes `expect=` may name besides errnos.
static PSEUDO: &[&str] = &["MASKED", "EMPTY", "CONTAINED", "NOTFOUND"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("ssh-identities") {
        return ssh_identities();
    }
    let (expect, attack, rest) = match args.as_slice() {
        [e, a, rest @ ..] if e.starts_with("expect=") => (&e["expect=".len()..], a, rest),
        _ => return usage("the first argument must be expect=ERRNO[,ERRNO…], then an attack"),
    };
    let mut expected = Vec::new();
    for name in expect.split(',') {
        if errno_number(name).is_none() && !PSEUDO.contains(&name) {
            return usage(&format!("unknown errno name {name:?} in expect="));
        }
        expected.push(name);
    }
    let Some((_, _, _, run)) = ATTACKS.iter().find(|(n, ..)| n == attack) else {
        return usage(&format!("unknown attack {attack:?}"));
    };
    let label = std::iter::once(attack.as_str())
        .chain(rest.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let (line, code) = match run(rest) {
        Escaped(what) => (format!("ESCAPED: {what}"), 1),
        Unexplained(what) => (format!("unexpected outcome: {what}; expected {expect}"), 1),
        Usage(msg) => return usage(&msg),
        Refused(name) if expected.contains(&name) => (format!("blocked {name}"), 0),
        Refused(name) => (format!("unexpected outcome {name}; expected {expect}"), 1),
        Errno(e) => {
            let name = errno_name(e);
            if expected.contains(&name.as_str()) {
                (format!("blocked {name}"), 0)
            } else {
                (
                    format!(
                        "unexpected errno {name} ({}); expected {expect}",
                        strerror(e)
                    ),
                    1,
                )
            }
        }
    };
    println!("kiln-probe: {label}: {line}");
    let _ = std::io::stdout().flush();
    ExitCode::from(code)
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("kiln-probe: usage error: {msg}");
    eprintln!("usage: probe expect=ERRNO[,ERRNO…] ATTACK [ARGS…]; attacks:");
    for (name, args, what, _) in ATTACKS {
        eprintln!("  {name} {args}: {what}");
    }
    let names: Vec<&str> = SYSCALLS.iter().map(|s| s.0).collect();
    eprintln!("syscalls: {}", names.join(" "));
    ExitCode::from(2)
}

fn errno_number(name: &str) -> Option<i32> {
    ERRNOS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn errno_name(e: i32) -> String {
    ERRNOS
        .iter()
        .find(|(_, v)| *v == e)
        .map_or_else(|| format!("errno{e}"), |(n, _)| (*n).to_owned())
}

/// The C library's message for `e`, e.g. "Operation not permitted".
fn strerror(e: i32) -> String {
    let s = std::io::Error::from_raw_os_error(e).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn io_errno(e: &std::io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(n) => Errno(n),
        None => Usage(format!("error without errno: {e}")),
    }
}

/// A raw syscall: `Ok(return value)` or `Err(errno)`.
///
/// # Safety
/// Every argument the kernel treats as a pointer is null or points to live memory of at least
/// the size the call is told, writable where the kernel writes. The call must not start a
/// thread or process sharing this memory (no `CLONE_VM`).
unsafe fn raw(nr: c_long, a: [c_long; 6]) -> Result<c_long, i32> {
    // SAFETY: glibc's variadic `syscall` reads exactly the six `long`s passed; the caller
    // upholds the contract above for what the kernel does with them.
    let r = unsafe { syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r == -1 { Err(last_errno()) } else { Ok(r) }
}

/// [`raw`] for calls whose arguments are all plain numbers (fds, pids, flags) or null
/// pointers, used with syscalls that do not share memory with a new thread (`clone` here is
/// a fork: no `CLONE_VM`, null stack).
fn sys(nr: c_long, a: [c_long; 6]) -> Result<c_long, i32> {
    // SAFETY: no argument points into this process, so the kernel reads and writes none of
    // its memory; the callers never pass CLONE_VM (checked in the `SYSCALLS` table, at the
    // two clone call sites and in `attack_raw`).
    unsafe { raw(nr, a) }
}

/// The address of a buffer or string, as a syscall argument.
fn ptr<T>(p: *const T) -> c_long {
    p as usize as c_long
}

fn cstr(s: &str) -> Result<CString, Outcome> {
    CString::new(s).map_err(|_| Usage(format!("NUL byte in {s:?}")))
}

/// `Errno(e)` for `Err(e)`, `Escaped(what(v))` for `Ok(v)`.
fn verdict(r: Result<c_long, i32>, what: impl FnOnce(c_long) -> String) -> Outcome {
    match r {
        Ok(v) => Escaped(what(v)),
        Err(e) => Errno(e),
    }
}

fn close(fd: c_long) {
    let _ = sys(3, [fd, 0, 0, 0, 0, 0]);
}

fn one_arg<'a>(args: &'a [String], what: &str) -> Result<&'a str, Outcome> {
    match args {
        [a] => Ok(a),
        _ => Err(Usage(format!("expected one argument: {what}"))),
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(o) => return o,
        }
    };
}

// ---- attacks -------------------------------------------------------------------------------

fn attack_syscall(args: &[String]) -> Outcome {
    let name = tri!(one_arg(args, "NAME"));
    let Some((_, nr, a)) = SYSCALLS.iter().find(|(n, ..)| *n == name) else {
        return Usage(format!("unknown syscall {name:?}"));
    };
    verdict(sys(*nr, *a), |v| format!("{name} returned {v}"))
}

/// True if `f` is the null device (char 1:3): a path masked the way runc masks it.
fn is_null_device(f: &fs::File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    f.metadata()
        .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0x103)
}

/// For tests generated from the seccomp profile data, which carries numbers and probe args.
fn attack_raw(args: &[String]) -> Outcome {
    let parse = |s: &String| -> Option<c_long> {
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok().map(|v| v as c_long),
            None => s.parse::<u64>().ok().map(|v| v as c_long),
        }
    };
    let nums: Option<Vec<c_long>> = args.iter().map(parse).collect();
    match nums.as_deref() {
        Some([nr, a0, a1, a2, a3, a4, a5]) => {
            let nr = *nr;
            // `sys` must never share this address space with a child (see its SAFETY note):
            // no vfork, no clone3 (flags in memory), no clone with CLONE_VM.
            const CLONE: c_long = 56;
            const VFORK: c_long = 58;
            const CLONE3: c_long = 435;
            const CLONE_VM: c_long = 0x100;
            if nr == VFORK || nr == CLONE3 || (nr == CLONE && a0 & CLONE_VM != 0) {
                return Usage(format!("raw syscall {nr} with these arguments is not probed"));
            }
            verdict(sys(nr, [*a0, *a1, *a2, *a3, *a4, *a5]), |v| {
                format!("syscall {nr} returned {v}")
            })
        }
        _ => Usage("expected NR and six numeric arguments".into()),
    }
}

fn attack_open_ro(args: &[String]) -> Outcome {
    let path = tri!(one_arg(args, "PATH"));
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return io_errno(&e),
    };
    if is_null_device(&f) && !path.starts_with("/dev/") {
        return Refused("MASKED");
    }
    let mut buf = [0u8; 512];
    match f.read(&mut buf) {
        Ok(0) => Refused("EMPTY"),
        Ok(n) => Escaped(format!("opened {path} and read {n} bytes")),
        Err(e) => io_errno(&e),
    }
}

fn attack_read_dir(args: &[String]) -> Outcome {
    let path = tri!(one_arg(args, "PATH"));
    match fs::read_dir(path) {
        Err(e) => io_errno(&e),
        Ok(rd) => {
            let names: Vec<String> = rd
                .flatten()
                .take(5)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if names.is_empty() {
                Refused("EMPTY")
            } else {
                Escaped(format!("{path} lists {}", names.join(" ")))
            }
        }
    }
}

fn attack_write_file(args: &[String]) -> Outcome {
    let [path, data] = args else {
        return Usage("expected PATH DATA".into());
    };
    let mut f = match fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) => return io_errno(&e),
    };
    if is_null_device(&f) {
        return Refused("MASKED");
    }
    match f.write_all(data.as_bytes()) {
        Ok(()) => Escaped(format!("wrote {data:?} to {path}")),
        Err(e) => io_errno(&e),
    }
}

fn attack_create_file(args: &[String]) -> Outcome {
    let path = tri!(one_arg(args, "PATH"));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Escaped(format!("created {path}")),
        Err(e) => io_errno(&e),
    }
}

fn attack_mknod_open(args: &[String]) -> Outcome {
    let [path, kind, dev] = args else {
        return Usage("expected PATH b|c MAJ:MIN".into());
    };
    let fmt: c_long = match kind.as_str() {
        "b" => 0o060000,
        "c" => 0o020000,
        _ => return Usage(format!("device kind {kind:?} is not b or c")),
    };
    let Some((maj, min)) = dev
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
    else {
        return Usage(format!("{dev:?} is not MAJ:MIN"));
    };
    // The kernel's new_encode_dev / glibc's makedev.
    let rdev = ((maj & 0xfffff000) << 32)
        | ((maj & 0xfff) << 8)
        | ((min & 0xffffff00) << 12)
        | (min & 0xff);
    let c = tri!(cstr(path));
    let _ = fs::remove_file(path);
    // mknodat(AT_FDCWD, path, mode, dev)
    // SAFETY: `c` is a NUL-terminated path that outlives the call; the kernel only reads it.
    if let Err(e) = unsafe {
        raw(
            259,
            [-100, ptr(c.as_ptr()), fmt | 0o600, rdev as c_long, 0, 0],
        )
    } {
        return Errno(e);
    }
    // The node exists (CAP_MKNOD is in the default set); nodev must make it useless.
    let out = match fs::File::open(path) {
        Err(e) => io_errno(&e),
        Ok(mut f) => {
            let mut buf = [0u8; 512];
            match f.read(&mut buf) {
                Ok(n) => Escaped(format!("opened device {dev} at {path} and read {n} bytes")),
                Err(e) => Escaped(format!("opened device {dev} at {path} (read: {e})")),
            }
        }
    };
    let _ = fs::remove_file(path);
    out
}

const MS_REMOUNT: c_long = 32;
const MS_BIND: c_long = 4096;

fn attack_mount(args: &[String]) -> Outcome {
    let (fstype, source, target, mode) = match args {
        [f, s, t] => (f, s, t, ""),
        [f, s, t, m] => (f, s, t, m.as_str()),
        _ => return Usage("expected FSTYPE SOURCE TARGET [bind|remount-rw|data=OPTS]".into()),
    };
    let (flags, data) = match mode {
        "" => (0, ""),
        "bind" => (MS_BIND, ""),
        // Remount a read-only mount read-write (bind remount: per-mount flags only).
        "remount-rw" => (MS_REMOUNT | MS_BIND, ""),
        _ => match mode.strip_prefix("data=") {
            Some(d) => (0, d),
            None => return Usage(format!("unknown mount mode {mode:?}")),
        },
    };
    if mode != "remount-rw" {
        let _ = fs::create_dir_all(target);
    }
    let (f, s, t, d) = (
        tri!(cstr(fstype)),
        tri!(cstr(source)),
        tri!(cstr(target)),
        tri!(cstr(data)),
    );
    let fptr = if fstype == "none" { 0 } else { ptr(f.as_ptr()) };
    let dptr = if data.is_empty() { 0 } else { ptr(d.as_ptr()) };
    // SAFETY: `s`, `t`, `f`, `d` are NUL-terminated strings (or null) that outlive the call; the kernel only reads them.
    let r = unsafe {
        raw(
            165,
            [ptr(s.as_ptr()), ptr(t.as_ptr()), fptr, flags, dptr, 0],
        )
    };
    verdict(r, |_| {
        format!("mounted {source} ({fstype}) on {target} {mode}")
    })
}

fn attack_umount(args: &[String]) -> Outcome {
    let path = tri!(one_arg(args, "PATH"));
    let c = tri!(cstr(path));
    // SAFETY: `c` is a NUL-terminated path that outlives the call; the kernel only reads it.
    verdict(
        unsafe { raw(166, [ptr(c.as_ptr()), 2, 0, 0, 0, 0]) },
        |_| format!("unmounted {path}"),
    )
}

fn attack_fsopen(args: &[String]) -> Outcome {
    let fstype = tri!(one_arg(args, "FSTYPE"));
    let c = tri!(cstr(fstype));
    // SAFETY: `c` is a NUL-terminated file system name that outlives the call; the kernel only reads it.
    verdict(
        unsafe { raw(430, [ptr(c.as_ptr()), 1, 0, 0, 0, 0]) },
        |fd| {
            close(fd);
            format!("fsopen({fstype}) gave a file system context")
        },
    )
}

fn attack_open_tree(args: &[String]) -> Outcome {
    let path = tri!(one_arg(args, "PATH"));
    let c = tri!(cstr(path));
    // OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
    let flags = 1 | 0o2000000 | 0x8000;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; the kernel only reads it.
    verdict(
        unsafe { raw(428, [-100, ptr(c.as_ptr()), flags, 0, 0, 0]) },
        |fd| {
            close(fd);
            format!("open_tree cloned the mount at {path}")
        },
    )
}

fn attack_mount_setattr_rw(args: &[String]) -> Outcome {
    let path = tri!(one_arg(args, "PATH"));
    let c = tri!(cstr(path));
    // struct mount_attr { attr_set, attr_clr, propagation, userns_fd }: clear MOUNT_ATTR_RDONLY.
    let attr: [u64; 4] = [0, 1, 0, 0];
    // SAFETY: `c` is a NUL-terminated path; `attr` is a 32-byte `struct mount_attr` and 32 is the size passed; the kernel only reads both.
    let r = unsafe { raw(442, [-100, ptr(c.as_ptr()), 0, ptr(attr.as_ptr()), 32, 0]) };
    verdict(r, |_| format!("made {path} read-write"))
}

fn pid_arg(args: &[String]) -> Result<c_long, Outcome> {
    let p = one_arg(args, "PID")?;
    p.parse().map_err(|_| Usage(format!("{p:?} is not a pid")))
}

fn attack_ptrace_attach(args: &[String]) -> Outcome {
    let pid = tri!(pid_arg(args));
    // PTRACE_ATTACH = 16, PTRACE_DETACH = 17
    let r = sys(101, [16, pid, 0, 0, 0, 0]);
    if r.is_ok() {
        let _ = sys(101, [17, pid, 0, 0, 0, 0]);
    }
    verdict(r, |_| format!("attached to pid {pid}"))
}

fn attack_process_vm_read(args: &[String]) -> Outcome {
    let pid = tri!(pid_arg(args));
    // A readable address of the target, from its maps (readable by us only if allowed).
    let maps = match fs::read_to_string(format!("/proc/{pid}/maps")) {
        Ok(m) => m,
        Err(e) => return io_errno(&e),
    };
    let Some(addr) = maps
        .lines()
        .find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.starts_with('r'))
        })
        .and_then(|l| l.split('-').next())
        .and_then(|a| u64::from_str_radix(a, 16).ok())
    else {
        return Refused("EMPTY");
    };
    let mut buf = [0u8; 8];
    let local: [usize; 2] = [buf.as_mut_ptr() as usize, buf.len()];
    let remote: [usize; 2] = [addr as usize, buf.len()];
    // SAFETY: `local` describes `buf`, 8 writable bytes that outlive the call; `remote` names memory of the other process, which the kernel checks; one iovec each, as passed.
    let r = unsafe {
        raw(
            310,
            [pid, ptr(local.as_ptr()), 1, ptr(remote.as_ptr()), 1, 0],
        )
    };
    verdict(r, |n| format!("read {n} bytes of pid {pid} at {addr:#x}"))
}

fn ns_flag(name: &str) -> Option<c_long> {
    Some(match name {
        "user" => 0x1000_0000,
        "mount" => 0x0002_0000,
        "net" => 0x4000_0000,
        "pid" => 0x2000_0000,
        "uts" => 0x0400_0000,
        "ipc" => 0x0800_0000,
        "cgroup" => 0x0200_0000,
        "time" => 0x80,
        _ => return None,
    })
}

fn attack_unshare(args: &[String]) -> Outcome {
    let name = tri!(one_arg(args, "NAMESPACE"));
    let Some(flag) = ns_flag(name) else {
        return Usage(format!("unknown namespace {name:?}"));
    };
    verdict(sys(272, [flag, 0, 0, 0, 0, 0]), |_| {
        format!("unshared a new {name} namespace")
    })
}

/// Reap a child created by a raw clone.
fn reap(pid: c_long) {
    let mut status: c_int = 0;
    // SAFETY: `status` is a live `c_int` the kernel writes once.
    let _ = unsafe { raw(61, [pid, ptr(&mut status as *mut c_int), 0, 0, 0, 0]) };
}

fn attack_clone_newuser(_: &[String]) -> Outcome {
    const SIGCHLD: c_long = 17;
    // clone(flags, stack = NULL (fork-like: the child runs on a copy of our stack), …)
    match sys(56, [0x1000_0000 | SIGCHLD, 0, 0, 0, 0, 0]) {
        Ok(0) => {
            // The child: leave at once, touching nothing (exit, not exit_group).
            let _ = sys(60, [0; 6]);
            Usage("the clone child did not exit".into())
        }
        Ok(pid) => {
            reap(pid);
            Escaped(format!("cloned pid {pid} into a new user namespace"))
        }
        Err(e) => Errno(e),
    }
}

fn attack_clone3_newuser(_: &[String]) -> Outcome {
    // struct clone_args (CLONE_ARGS_SIZE_VER0 = 64 bytes): flags, pidfd, child_tid, parent_tid,
    // exit_signal, stack, stack_size, tls.
    let args: [u64; 8] = [0x1000_0000, 0, 0, 0, 17, 0, 0, 0];
    // SAFETY: `args` is a 64-byte `struct clone_args` and 64 is the size passed; without CLONE_VM a child gets a copy of this memory (and exits at once, below).
    match unsafe { raw(435, [ptr(args.as_ptr()), 64, 0, 0, 0, 0]) } {
        Ok(0) => {
            let _ = sys(60, [0; 6]);
            Usage("the clone3 child did not exit".into())
        }
        Ok(pid) => {
            reap(pid);
            Escaped(format!("clone3 made pid {pid} in a new user namespace"))
        }
        Err(e) => Errno(e),
    }
}

fn attack_setns(args: &[String]) -> Outcome {
    use std::os::fd::AsRawFd;
    let path = tri!(one_arg(args, "NSFILE"));
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return io_errno(&e),
    };
    // nstype 0: any namespace type.
    verdict(
        sys(308, [c_long::from(f.as_raw_fd()), 0, 0, 0, 0, 0]),
        |_| format!("joined the namespace of {path}"),
    )
}

fn attack_bpf_map(_: &[String]) -> Outcome {
    // union bpf_attr for BPF_MAP_CREATE: map_type = ARRAY (2), key_size 4, value_size 4,
    // max_entries 1; the rest zero.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[2, 4, 4, 1]);
    // SAFETY: `attr` is 128 readable bytes and 128 is the size passed; the kernel only reads it.
    let r = unsafe { raw(321, [0, ptr(attr.as_ptr()), 128, 0, 0, 0]) };
    verdict(r, |fd| {
        close(fd);
        "created a BPF map".into()
    })
}

fn attack_perf(_: &[String]) -> Outcome {
    // struct perf_event_attr (PERF_ATTR_SIZE_VER8 = 136 bytes): type SOFTWARE (1),
    // size, config CPU_CLOCK (0), flags: disabled only (kernel samples not excluded).
    let mut attr = [0u64; 17];
    attr[0] = 1 | (136 << 32);
    attr[5] = 1;
    // SAFETY: `attr` is 136 readable bytes and its size field says 136; the kernel only reads it.
    let r = unsafe { raw(298, [ptr(attr.as_ptr()), 0, -1, -1, 0, 0]) };
    verdict(r, |fd| {
        close(fd);
        "opened a perf event that counts kernel time".into()
    })
}

fn attack_keyctl_session(_: &[String]) -> Outcome {
    // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create = 0)
    verdict(sys(250, [0, -3, 0, 0, 0, 0]), |id| {
        format!("session keyring {id} is reachable")
    })
}

fn attack_add_key(_: &[String]) -> Outcome {
    let (t, d) = (c"user", c"kiln-probe");
    let payload = b"x";
    // add_key(type, desc, payload, plen, KEY_SPEC_PROCESS_KEYRING)
    // SAFETY: `t` and `d` are NUL-terminated, `payload` holds the 1 byte passed; the kernel only reads them.
    let r = unsafe {
        raw(
            248,
            [
                ptr(t.as_ptr()),
                ptr(d.as_ptr()),
                ptr(payload.as_ptr()),
                1,
                -2,
                0,
            ],
        )
    };
    verdict(r, |id| format!("added key {id}"))
}

fn attack_request_key(_: &[String]) -> Outcome {
    let (t, d) = (c"user", c"kiln-probe-missing");
    // SAFETY: `t` and `d` are NUL-terminated and outlive the call; the kernel only reads them.
    let r = unsafe { raw(249, [ptr(t.as_ptr()), ptr(d.as_ptr()), 0, 0, 0, 0]) };
    verdict(r, |id| format!("found key {id}"))
}

fn attack_syslog_read(_: &[String]) -> Outcome {
    let mut buf = vec![0u8; 4096];
    // SYSLOG_ACTION_READ_ALL = 3 (non-destructive read)
    // SAFETY: `buf` has 4096 writable bytes, the length passed.
    let r = unsafe { raw(103, [3, ptr(buf.as_mut_ptr()), 4096, 0, 0, 0]) };
    verdict(r, |n| format!("read {n} bytes of the kernel log"))
}

fn attack_clock_settime(_: &[String]) -> Outcome {
    let mut ts = [0i64; 2];
    // SAFETY: `ts` is a writable 16-byte `struct timespec`.
    if let Err(e) = unsafe { raw(228, [0, ptr(ts.as_mut_ptr()), 0, 0, 0, 0]) } {
        return Errno(e);
    }
    // SAFETY: `ts` is a 16-byte `struct timespec`; the kernel only reads it.
    verdict(
        unsafe { raw(227, [0, ptr(ts.as_ptr()), 0, 0, 0, 0]) },
        |_| "set CLOCK_REALTIME".into(),
    )
}

fn attack_adjtimex(_: &[String]) -> Outcome {
    // struct timex is 208 bytes on x86_64: modes (u32 + padding) then longs; maxerror is the
    // fourth 8-byte word. Read first (modes = 0), then write the same maxerror back.
    let mut tx = [0i64; 26];
    // SAFETY: `tx` is 208 writable bytes, the size of `struct timex` on x86_64.
    if let Err(e) = unsafe { raw(159, [ptr(tx.as_mut_ptr()), 0, 0, 0, 0, 0]) } {
        return Errno(e);
    }
    tx[0] = 0x0004; // ADJ_MAXERROR
    // SAFETY: `tx` is 208 writable bytes, the size of `struct timex` on x86_64.
    verdict(
        unsafe { raw(159, [ptr(tx.as_mut_ptr()), 0, 0, 0, 0, 0]) },
        |_| "adjusted the kernel clock (ADJ_MAXERROR)".into(),
    )
}

/// `struct file_handle` with room for the largest handle (MAX_HANDLE_SZ = 128).
#[repr(C)]
struct FileHandle {
    bytes: u32,
    kind: i32,
    data: [u8; 128],
}

fn name_to_handle(path: &str) -> Result<FileHandle, Outcome> {
    let c = cstr(path)?;
    let mut h = FileHandle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id: c_int = 0;
    // SAFETY: `c` is NUL-terminated; `h` is a `file_handle` whose `bytes` (128) is the size of its data array, and `mount_id` a live `c_int`: the kernel writes within those.
    let r = unsafe {
        raw(
            303,
            [
                -100,
                ptr(c.as_ptr()),
                ptr(&mut h as *mut FileHandle),
                ptr(&mut mount_id as *mut c_int),
                0,
                0,
            ],
        )
    };
    r.map(|_| h).map_err(Errno)
}

fn attack_name_to_handle(args: &[String]) -> Outcome {
    let path = tri!(one_arg(args, "PATH"));
    match name_to_handle(path) {
        Ok(h) => Escaped(format!("got a type {} file handle for {path}", h.kind)),
        Err(o) => o,
    }
}

fn attack_open_by_handle(args: &[String]) -> Outcome {
    use std::os::fd::AsRawFd;
    let mnt = tri!(one_arg(args, "MOUNTPOINT"));
    let dir = match fs::File::open(mnt) {
        Ok(f) => f,
        Err(e) => return io_errno(&e),
    };
    // Shocker (2014): forge a handle for the root directory of the file system behind `mnt`.
    // ext4/xfs: FILEID_INO32_GEN (1) with inode 2, generation 0. If the file system hands out
    // another handle type for `mnt` itself, use that one (the root's inode differs, but a
    // successful open of any handle proves the point).
    let mut h = FileHandle {
        bytes: 8,
        kind: 1,
        data: [0; 128],
    };
    h.data[..4].copy_from_slice(&2u32.to_ne_bytes());
    if let Ok(real) = name_to_handle(mnt)
        && real.kind != 1
    {
        h = real;
    }
    // open_by_handle_at(mount_fd, handle, O_RDONLY | O_DIRECTORY)
    let flags: c_long = 0o200000;
    // SAFETY: `h` is a `file_handle` with at most 128 data bytes, as its `bytes` says; the kernel only reads it.
    let r = unsafe {
        raw(
            304,
            [
                c_long::from(dir.as_raw_fd()),
                ptr(&h as *const FileHandle),
                flags,
                0,
                0,
                0,
            ],
        )
    };
    verdict(r, |fd| {
        let names = fs::read_dir(format!("/proc/self/fd/{fd}"))
            .map(|rd| {
                rd.flatten()
                    .take(8)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        close(fd);
        format!("opened a forged handle on {mnt}'s file system: {names}")
    })
}

fn attack_socket(args: &[String]) -> Outcome {
    let kind = tri!(one_arg(args, "KIND"));
    // (domain, type, protocol): AF_PACKET = 17, AF_INET = 2, AF_INET6 = 10; SOCK_RAW = 3,
    // SOCK_DGRAM = 2; htons(ETH_P_ALL) = 0x0300; IPPROTO_RAW = 255.
    let (d, t, p) = match kind {
        "packet-raw" => (17, 3, 0x0300),
        "packet-dgram" => (17, 2, 0x0300),
        "inet-raw" => (2, 3, 255),
        "inet6-raw" => (10, 3, 255),
        _ => return Usage(format!("unknown socket kind {kind:?}")),
    };
    verdict(sys(41, [d, t, p, 0, 0, 0]), |fd| {
        close(fd);
        format!("opened a {kind} socket")
    })
}

fn attack_connect(args: &[String]) -> Outcome {
    let addr = tri!(one_arg(args, "HOST:PORT"));
    let Ok(sa) = addr.parse::<std::net::SocketAddr>() else {
        return Usage(format!("{addr:?} is not HOST:PORT"));
    };
    match std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_secs(3)) {
        Ok(_) => Escaped(format!("connected to {addr}")),
        Err(e) => io_errno(&e),
    }
}

fn attack_connect_abstract(args: &[String]) -> Outcome {
    use std::os::linux::net::SocketAddrExt;
    let name = tri!(one_arg(args, "NAME"));
    let sa = match std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) {
        Ok(sa) => sa,
        Err(e) => return Usage(format!("abstract name {name:?}: {e}")),
    };
    match std::os::unix::net::UnixStream::connect_addr(&sa) {
        Ok(_) => Escaped(format!("connected to @{name}")),
        Err(e) => io_errno(&e),
    }
}

fn attack_kill(args: &[String]) -> Outcome {
    let [pid, sig] = args else {
        return Usage("expected PID SIGNAL".into());
    };
    let (Ok(p), Ok(s)) = (pid.parse::<c_long>(), sig.parse::<c_long>()) else {
        return Usage("PID and SIGNAL must be numbers".into());
    };
    verdict(sys(62, [p, s, 0, 0, 0, 0]), |_| {
        format!("sent signal {s} to pid {p}")
    })
}

fn attack_setuid_root(_: &[String]) -> Outcome {
    let euid = sys(107, [0; 6]).unwrap_or(-1);
    if euid == 0 {
        return Escaped("running with euid 0".into());
    }
    verdict(sys(105, [0; 6]), |_| {
        format!("setuid(0) worked from euid {euid}")
    })
}

fn attack_chroot_escape(args: &[String]) -> Outcome {
    use std::os::fd::AsRawFd;
    let host_path = tri!(one_arg(args, "HOSTPATH"));
    let jail = "/kiln-probe-jail";
    let _ = fs::create_dir_all(jail);
    let here = match fs::File::open("/") {
        Ok(f) => f,
        Err(e) => return io_errno(&e),
    };
    if let Err(e) = std::os::unix::fs::chroot(jail) {
        return io_errno(&e);
    }
    // The classic: our cwd/fd is now outside the chroot; walk up from it and chroot there.
    let _ = sys(81, [c_long::from(here.as_raw_fd()), 0, 0, 0, 0, 0]);
    for _ in 0..256 {
        let _ = std::env::set_current_dir("..");
    }
    if let Err(e) = std::os::unix::fs::chroot(".") {
        return io_errno(&e);
    }
    match fs::File::open(host_path) {
        Ok(_) => Escaped(format!(
            "reached the host's {host_path} after leaving a chroot"
        )),
        Err(e) => io_errno(&e),
    }
}

/// Walk `..` from `start` up to a fixed point: `Ok(true)` if that is our `/`.
fn reaches_root(start: &str) -> Result<bool, i32> {
    let root = fs::metadata("/").map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let mut path = start.to_owned();
    for _ in 0..4096 {
        let here = fs::metadata(&path).map_err(|e| e.raw_os_error().unwrap_or(0))?;
        if (here.dev(), here.ino()) == (root.dev(), root.ino()) {
            return Ok(true);
        }
        let up = fs::metadata(format!("{path}/..")).map_err(|e| e.raw_os_error().unwrap_or(0))?;
        if (up.dev(), up.ino()) == (here.dev(), here.ino()) {
            return Ok(false); // a root that is not ours
        }
        path.push_str("/..");
    }
    Ok(false)
}

fn attack_cwd_in_root(args: &[String]) -> Outcome {
    match args {
        [] => {}
        [dir] => {
            if let Err(e) = std::env::set_current_dir(dir) {
                return io_errno(&e);
            }
        }
        _ => return Usage("expected at most one DIR".into()),
    }
    // getcwd(2) says "(unreachable)…" (or fails) for a cwd outside the process's root.
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` has 4096 writable bytes, the size passed.
    let cwd = match unsafe { raw(79, [ptr(buf.as_mut_ptr()), 4096, 0, 0, 0, 0]) } {
        Ok(_) => {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        }
        Err(e) => format!("(getcwd failed: {})", strerror(e)),
    };
    if !cwd.starts_with('/') {
        return Escaped(format!("working directory is outside the root: {cwd}"));
    }
    match reaches_root(".") {
        Ok(true) => Refused("CONTAINED"),
        Ok(false) => Escaped(format!("working directory {cwd} does not lead back to /")),
        Err(e) => Errno(e),
    }
}

fn attack_leaked_fds(_: &[String]) -> Outcome {
    let mut leaks = Vec::new();
    for fd in 3..1024 {
        // fcntl(fd, F_GETFD)
        if sys(72, [fd, 1, 0, 0, 0, 0]).is_ok() {
            let target = fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|e| format!("? ({e})"));
            let outside = match reaches_root(&format!("/proc/self/fd/{fd}")) {
                Ok(false) => " (a directory outside the root)",
                _ => "",
            };
            leaks.push(format!("fd {fd} -> {target}{outside}"));
        }
    }
    if leaks.is_empty() {
        Errno(9) // EBADF: nothing above stdio is open
    } else {
        Escaped(format!("inherited {}", leaks.join(", ")))
    }
}

fn attack_find_marker(args: &[String]) -> Outcome {
    let [needle, roots @ ..] = args else {
        return Usage("expected NAME-PART ROOT…".into());
    };
    if roots.is_empty() {
        return Usage("expected at least one ROOT".into());
    }
    let mut expanded = Vec::new();
    for r in roots {
        match r.strip_prefix("/proc/*/") {
            Some(rest) => {
                for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.chars().all(|c| c.is_ascii_digit()) {
                        expanded.push(format!("/proc/{name}/{rest}"));
                    }
                }
            }
            None => expanded.push(r.clone()),
        }
    }
    let mut budget = 200_000usize;
    for root in &expanded {
        if let Some(found) = find(root, needle, 0, &mut budget) {
            return Escaped(format!("found {found}"));
        }
    }
    Refused("NOTFOUND")
}

fn find(dir: &str, needle: &str, depth: u32, budget: &mut usize) -> Option<String> {
    if depth > 16 {
        return None;
    }
    for e in fs::read_dir(dir).ok()?.flatten() {
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = format!("{}/{name}", dir.trim_end_matches('/'));
        if name.contains(needle) {
            return Some(path);
        }
        // Pseudo file systems are huge and hold no files of other steps (and /proc/*/root is
        // searched explicitly).
        if depth == 0 && matches!(name.as_str(), "proc" | "sys" | "dev") {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Some(f) = find(&path, needle, depth + 1, budget)
        {
            return Some(f);
        }
    }
    None
}

fn attack_alloc_touch(args: &[String]) -> Outcome {
    let mib = tri!(one_arg(args, "MIB"));
    let Ok(mib) = mib.parse::<usize>() else {
        return Usage(format!("{mib:?} is not a number"));
    };
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        // Every page written, so the memory is really charged.
        chunks.push(vec![(i % 251) as u8 + 1; 1 << 20]);
    }
    let total: usize = chunks.iter().map(Vec::len).sum();
    Escaped(format!("allocated and touched {} MiB", total >> 20))
}

fn attack_threads(args: &[String]) -> Outcome {
    let n = tri!(one_arg(args, "N"));
    let Ok(n) = n.parse::<usize>() else {
        return Usage(format!("{n:?} is not a number"));
    };
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let mut handles = Vec::new();
    let mut failed = None;
    for _ in 0..n {
        let rx = std::sync::Arc::clone(&rx);
        let spawned = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                // Park until the sender is dropped.
                let _ = rx.lock().map(|r| r.recv());
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let started = handles.len();
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    match failed {
        Some(e) => {
            println!("  | started {started} threads before failing");
            io_errno(&e)
        }
        None => Escaped(format!("started all {started} threads")),
    }
}

fn attack_tiocsti(args: &[String]) -> Outcome {
    use std::os::fd::AsRawFd;
    let tty = tri!(one_arg(args, "TTY"));
    // O_RDWR | O_NOCTTY
    let f = match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(0o400)
        .open(tty)
    {
        Ok(f) => f,
        Err(e) => return io_errno(&e),
    };
    let byte: c_char = b' ' as c_char;
    // ioctl(fd, TIOCSTI, &byte)
    // SAFETY: `byte` is one live byte; TIOCSTI only reads it.
    let r = unsafe {
        raw(
            16,
            [
                c_long::from(f.as_raw_fd()),
                0x5412,
                ptr(&byte as *const c_char),
                0,
                0,
                0,
            ],
        )
    };
    verdict(r, |_| format!("pushed a byte into the input of {tty}"))
}

fn attack_run(args: &[String]) -> Outcome {
    let [cmd, rest @ ..] = args else {
        return Usage("expected CMD ARGS…".into());
    };
    let out = match std::process::Command::new(cmd).args(rest).output() {
        Ok(o) => o,
        Err(e) => return io_errno(&e),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The tool's own output, indented so it can never pass for a verdict line.
    for line in text.lines() {
        println!("  | {line}");
    }
    if out.status.success() {
        return Escaped(format!("{cmd} succeeded"));
    }
    // Which errno did the tool report? The first whose message it printed.
    for (_, e) in ERRNOS {
        if text.contains(&strerror(*e)) {
            return Errno(*e);
        }
    }
    // busybox's own wording for EPERM (libbb's `bb_msg_perm_denied_are_you_root`, printed by
    // mount and others exactly when the call failed with EPERM).
    if text.contains("permission denied (are you root?)") {
        return Errno(1);
    }
    Unexplained(format!(
        "{cmd} failed ({}) without naming an errno",
        out.status
    ))
}

/// `probe ssh-identities`: asks the agent at `$SSH_AUTH_SOCK` for its keys
/// (`SSH2_AGENTC_REQUEST_IDENTITIES`, 11) and prints one line per key of the answer
/// (`SSH2_AGENT_IDENTITIES_ANSWER`, 12): `kiln-probe: ssh key <blob hex> <comment>`. Exit 1 with
/// a `kiln-probe: ssh: …` line when the agent cannot be reached or answers otherwise.
fn ssh_identities() -> ExitCode {
    match ssh_identities_inner() {
        Ok(keys) => {
            for (blob, comment) in keys {
                let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
                println!("kiln-probe: ssh key {hex} {comment}");
            }
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("kiln-probe: ssh: {e}");
            let _ = std::io::stdout().flush();
            ExitCode::from(1)
        }
    }
}

fn ssh_identities_inner() -> Result<Vec<(Vec<u8>, String)>, String> {
    let path = std::env::var("SSH_AUTH_SOCK").map_err(|_| "SSH_AUTH_SOCK is not set".to_owned())?;
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| format!("connect {path}: {e}"))?;
    s.write_all(&[0, 0, 0, 1, 11]).map_err(|e| format!("write: {e}"))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| format!("read: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > 256 * 1024 {
        return Err(format!("bad answer length {len}"));
    }
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).map_err(|e| format!("read: {e}"))?;
    if msg[0] != 12 {
        return Err(format!("answer type {} (want 12)", msg[0]));
    }
    let mut at = 1;
    let u32_at = |at: &mut usize| -> Result<usize, String> {
        let b = msg.get(*at..*at + 4).ok_or("truncated answer")?;
        *at += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(&mut at)?;
    let mut lens = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..n {
        let bl = u32_at(&mut at)?;
        let blob_at = at;
        at += bl;
        let cl = u32_at(&mut at)?;
        let comment_at = at;
        at += cl;
        lens.push((blob_at, bl, comment_at, cl));
    }
    for (blob_at, bl, comment_at, cl) in lens {
        let blob = msg.get(blob_at..blob_at + bl).ok_or("truncated key")?.to_vec();
        let comment = msg.get(comment_at..comment_at + cl).ok_or("truncated comment")?;
        keys.push((blob, String::from_utf8_lossy(comment).into_owned()));
    }
    Ok(keys)
}
