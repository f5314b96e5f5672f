use std::ffi::{CString, c_int};
use std::ptr::{null, null_mut};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use seccompiler::sock_filter;

use super::SeccompProfile::{Default, Insecure};
use super::table::{X86_64_EXTRA, X86_64_LIBC};
use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PROFILES: [SeccompProfile; 2] = [Default, Insecure];

fn sym(name: &str) -> u64 {
    SYMBOLS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(u64::MAX, |(_, v)| *v)
}

fn nr(name: &str) -> Result<i64, String> {
    syscall_table(std::env::consts::ARCH)
        .and_then(|t| t.get(name).copied())
        .ok_or_else(|| format!("no syscall {name} here"))
}

// --- The data -------------------------------------------------------------------------

#[test]
fn both_profiles_load_and_compile_for_this_arch() -> TestResult {
    for profile in PROFILES {
        let filters = compile(profile)?;
        assert!(filters.programs.len() >= 2, "{filters:?}");
        assert!(filters.programs.iter().all(|p| !p.is_empty()));
        // Pure and deterministic: the same data gives the same programs.
        assert_eq!(compile(profile)?.programs, filters.programs);
    }
    Ok(())
}

#[test]
fn every_denied_syscall_has_a_reason_a_number_and_no_unconditional_allow() -> TestResult {
    for profile in PROFILES {
        let model = Model::load(profile)?;
        let denied = denied_syscalls(profile)?;
        assert!(
            denied.len() > 50,
            "{} denies only {}",
            profile.name(),
            denied.len()
        );
        for d in &denied {
            assert!(!d.reason.trim().is_empty(), "{}", d.name);
            assert_eq!(nr(&d.name)?, d.nr);
            assert!([libc::EPERM, libc::ENOSYS, libc::EAFNOSUPPORT].contains(&d.errno));
            if let Some(a) = model.allowed.get(&d.nr) {
                // Only argument-dependent refusals may share a name with the allow-list.
                let denial = model.denied.iter().find(|x| x.nr == d.nr);
                assert!(
                    matches!(
                        denial.map(|x| &x.refusal),
                        Some(Refusal::When(_) | Refusal::OutsideAllowedRules)
                    ),
                    "{} is allowed ({}) and always denied",
                    d.name,
                    a.at
                );
            }
        }
        for name in allowed_syscalls(profile)? {
            nr(&name)?;
        }
    }
    Ok(())
}

#[test]
fn every_syscall_the_issue_names_is_denied_by_default() -> TestResult {
    let denied: Vec<_> = denied_syscalls(Default)?
        .into_iter()
        .map(|d| d.name)
        .collect();
    let issue = [
        "mount",
        "umount2",
        "pivot_root",
        "move_mount",
        "open_tree",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "mount_setattr",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "request_key",
        "userfaultfd",
        "setns",
        "unshare",
        "clone",
        "reboot",
        "swapon",
        "swapoff",
        "syslog",
        "acct",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "adjtimex",
        "open_by_handle_at",
        "name_to_handle_at",
        "iopl",
        "ioperm",
        "lookup_dcookie",
        "quotactl",
        "quotactl_fd",
        "vhangup",
        "nfsservctl",
        "get_kernel_syms",
        "create_module",
        "query_module",
        "uselib",
        "_sysctl",
        "ustat",
        "sysfs",
        "kcmp",
        "mbind",
        "set_mempolicy",
        "move_pages",
        "fanotify_init",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "clone3",
    ];
    let missing: Vec<_> = issue
        .iter()
        .filter(|n| !denied.iter().any(|d| d == *n))
        .collect();
    assert!(missing.is_empty(), "not denied: {missing:?}");
    // A step may restrict itself further.
    let allowed = allowed_syscalls(Default)?;
    for name in [
        "seccomp",
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
    ] {
        assert!(allowed.iter().any(|a| a == name), "{name}");
    }
    Ok(())
}

#[test]
fn the_calls_the_init_makes_after_apply_are_allowed_for_any_arguments() -> TestResult {
    // After `apply` the init looks up the command (statx/newfstatat), allocates, resets
    // signal dispositions and the mask, execs; on failure it reports on the error pipe and
    // exits. The step's first instruction then runs under the same filters.
    let init = [
        "statx",
        "newfstatat",
        "brk",
        "mmap",
        "munmap",
        "rt_sigaction",
        "rt_sigprocmask",
        "close_range",
        "execve",
        "write",
        "exit_group",
        "close",
        "futex",
        "getrandom",
    ];
    for profile in PROFILES {
        let model = Model::load(profile)?;
        for name in init {
            let allowed = model.allowed.get(&nr(name)?);
            assert!(
                allowed.is_some_and(|a| a.rules.is_none()),
                "{}: {name} is not allowed for any arguments",
                profile.name()
            );
            assert!(!model.denied.iter().any(|d| d.name == name), "{name}");
        }
    }
    Ok(())
}

#[test]
fn insecure_allows_privileged_steps_but_still_denies_host_wrecking_calls() -> TestResult {
    let denied: Vec<_> = denied_syscalls(Insecure)?
        .into_iter()
        .map(|d| d.name)
        .collect();
    let allowed = allowed_syscalls(Insecure)?;
    for name in [
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
        "settimeofday",
        "clock_settime",
        "adjtimex",
        "clock_adjtime",
        "syslog",
        "acct",
        "iopl",
        "ioperm",
        "bpf",
        "open_by_handle_at",
        "userfaultfd",
        "io_uring_setup",
        "clone3",
    ] {
        assert!(
            denied.iter().any(|d| d == name),
            "insecure does not deny {name}"
        );
        assert!(!allowed.iter().any(|a| a == name), "insecure allows {name}");
    }
    for name in [
        "mount",
        "umount2",
        "pivot_root",
        "move_mount",
        "fsopen",
        "fsmount",
        "unshare",
        "setns",
        "clone",
        "ptrace",
        "process_vm_readv",
        "keyctl",
        "add_key",
        "request_key",
    ] {
        assert!(
            allowed.iter().any(|a| a == name),
            "insecure does not allow {name}"
        );
        assert!(
            !denied.iter().any(|d| d == name),
            "insecure still denies {name}"
        );
    }
    // Insecure is the default allow-list plus more, never less.
    let default_allowed = allowed_syscalls(Default)?;
    let lost: Vec<_> = default_allowed
        .iter()
        .filter(|a| !allowed.contains(a))
        .collect();
    assert!(lost.is_empty(), "{lost:?}");
    Ok(())
}

#[test]
fn the_syscall_table_names_each_call_and_number_once() -> TestResult {
    let (mut names, mut numbers) = (HashSet::new(), HashSet::new());
    for (name, nr) in X86_64_LIBC.iter().chain(X86_64_EXTRA) {
        assert!(
            names.insert(name.strip_prefix("SYS_").unwrap_or(name)),
            "{name}"
        );
        assert!(numbers.insert(*nr), "{name} = {nr}");
    }
    assert_eq!(nr("read")?, 0);
    assert_eq!(nr("mseal")?, 462);
    Ok(())
}

/// A minimal valid profile, with extra allowed and denied entries spliced in.
fn profile_json(allowed: &str, denied: &str) -> String {
    format!(
        r#"{{"arches": ["x86_64"], "default_errno": "EPERM",
                "allowed": [{{"reason": "r", "names": ["read", "write", "execve", "exit_group", "seccomp", "prctl"]}}{allowed}],
                "denied": [{denied}]}}"#
    )
}

fn load_test(json: &str) -> Result<Model, SeccompError> {
    Model::from_json("test", json, "x86_64")
}

fn problem(json: &str) -> Option<DataProblem> {
    match load_test(json) {
        Err(SeccompError::BadData { problem, .. }) => Some(problem),
        _ => None,
    }
}

#[test]
fn bad_data_is_refused_each_with_its_own_error() -> TestResult {
    load_test(&profile_json("", ""))?;
    // An arch-specific entry is skipped elsewhere, so its names need not exist here.
    load_test(&profile_json(
        r#", {"reason": "r", "names": ["no_such_call"], "arches": ["aarch64"]}"#,
        "",
    ))?;

    let overlap = load_test(&profile_json(
        "",
        r#"{"reason": "r", "errno": "EPERM", "names": ["read"]}"#,
    ));
    assert!(
        matches!(overlap, Err(SeccompError::Overlap { ref name, .. }) if name == "read"),
        "{overlap:?}"
    );
    let unknown = load_test(&profile_json(
        r#", {"reason": "r", "names": ["no_such_call"]}"#,
        "",
    ));
    assert!(
        matches!(unknown, Err(SeccompError::UnknownSyscall { ref name, .. }) if name == "no_such_call")
    );
    let arch = Model::from_json("test", &profile_json("", ""), "aarch64");
    assert!(
        matches!(arch, Err(SeccompError::UnsupportedArch { .. })),
        "{arch:?}"
    );
    let other_arch = load_test(&profile_json("", "").replace(r#"["x86_64"]"#, r#"["riscv64"]"#));
    assert!(matches!(
        other_arch,
        Err(SeccompError::UnsupportedArch { .. })
    ));
    let typo = load_test(&profile_json(
        "",
        r#"{"reasons": "r", "errno": "EPERM", "names": ["mount"]}"#,
    ));
    assert!(matches!(typo, Err(SeccompError::Parse { .. })), "{typo:?}");

    let cases: &[(&str, &str, DataProblem)] = &[
        (
            r#", {"reason": " ", "names": ["close"]}"#,
            "",
            DataProblem::EmptyReason,
        ),
        (
            r#", {"reason": "r", "names": []}"#,
            "",
            DataProblem::NoNames,
        ),
        (
            r#", {"reason": "r", "names": ["read"]}"#,
            "",
            DataProblem::Duplicate("read".into()),
        ),
        (
            "",
            r#"{"reason": "r", "errno": "EWHAT", "names": ["mount"]}"#,
            DataProblem::UnknownErrno("EWHAT".into()),
        ),
        (
            "",
            r#"{"reason": "r", "errno": "EPERM", "names": ["mount"]}, {"reason": "r", "errno": "ENOSYS", "names": ["mount"]}"#,
            DataProblem::Duplicate("mount".into()),
        ),
        (
            r#", {"reason": "r", "names": ["clone"], "rules": [[{"arg": 0, "op": "masked_eq", "value": 0}]]}"#,
            "",
            DataProblem::MaskMissing,
        ),
        (
            r#", {"reason": "r", "names": ["clone"], "rules": [[{"arg": 6, "op": "eq", "value": 0}]]}"#,
            "",
            DataProblem::ArgIndex(6),
        ),
        (
            r#", {"reason": "r", "names": ["clone"], "rules": [[{"arg": 0, "op": "eq", "value": "CLONE_NEWWHAT"}]]}"#,
            "",
            DataProblem::UnknownConstant("CLONE_NEWWHAT".into()),
        ),
        (
            "",
            r#"{"reason": "r", "errno": "EPERM", "names": ["read"], "outside_allowed_rules": true}"#,
            DataProblem::NoAllowRules("read".into()),
        ),
        (
            r#", {"reason": "r", "names": ["personality"], "rules": [[{"arg": 0, "op": "eq", "value": 0}]]}"#,
            r#"{"reason": "r", "errno": "EPERM", "names": ["personality"], "outside_allowed_rules": true}"#,
            DataProblem::ProbeAllowed("personality".into()),
        ),
        (
            "",
            r#"{"reason": "r", "errno": "EAFNOSUPPORT", "names": ["socket"], "when": [{"arg": 0, "op": "ne", "value": 1}], "probe_args": [1]}"#,
            DataProblem::ProbeNotRefused("socket".into()),
        ),
        (
            "",
            r#"{"reason": "r", "errno": "ENOSYS", "names": ["seccomp"], "when": [{"arg": 0, "op": "eq", "value": 9}], "probe_args": [9]}"#,
            DataProblem::Required("seccomp", "it installs the filters after the first"),
        ),
    ];
    for (allowed, denied, expected) in cases {
        let json = profile_json(allowed, denied);
        assert_eq!(problem(&json).as_ref(), Some(expected), "{json}");
    }
    let no_execve = profile_json("", "").replace(r#""execve", "#, "");
    assert!(matches!(
        problem(&no_execve),
        Some(DataProblem::Required("execve", _))
    ));
    let bad_base = r#"{"extends": "nonesuch", "allowed": []}"#;
    assert_eq!(
        problem(bad_base),
        Some(DataProblem::UnknownBase("nonesuch".into()))
    );
    Ok(())
}

#[test]
fn the_shipped_data_refuses_an_architecture_it_was_not_written_for() {
    let r = Model::from_json("default", Default.data(), "aarch64");
    assert!(
        matches!(r, Err(SeccompError::UnsupportedArch { .. })),
        "{:?}",
        r.err()
    );
}

// --- The compiled filters, run by a classic-BPF interpreter ----------------------------

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: i64 = 0x4000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

fn ret_errno(errno: i32) -> u32 {
    0x0005_0000 | errno.unsigned_abs()
}

/// Runs one program on `struct seccomp_data` (the opcodes seccompiler emits).
fn run_bpf(prog: &[sock_filter], nr: i64, arch: u32, args: &[u64; 6]) -> Result<u32, String> {
    let word = |off: u32| -> Result<u32, String> {
        match off {
            0 => Ok(nr as u32),
            4 => Ok(arch),
            16..=63 => {
                let a = args[((off - 16) / 8) as usize];
                Ok(if (off - 16) % 8 == 4 {
                    (a >> 32) as u32
                } else {
                    a as u32
                })
            }
            _ => Err(format!("load at {off}")),
        }
    };
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let ins = prog.get(pc).ok_or("ran off the end")?;
        pc += 1;
        let jump = |taken: bool| usize::from(if taken { ins.jt } else { ins.jf });
        match ins.code {
            0x20 => acc = word(ins.k)?,
            0x54 => acc &= ins.k,
            0x05 => pc += ins.k as usize,
            0x15 => pc += jump(acc == ins.k),
            0x25 => pc += jump(acc > ins.k),
            0x35 => pc += jump(acc >= ins.k),
            0x45 => pc += jump(acc & ins.k != 0),
            0x06 => return Ok(ins.k),
            code => return Err(format!("unexpected BPF opcode {code:#x}")),
        }
    }
}

/// What the kernel does with stacked filters: run each, newest first, keep the action of
/// highest precedence (lowest as signed), the newest one among equals.
fn verdict(filters: &Filters, nr: i64, arch: u32, args: [u64; 6]) -> Result<u32, String> {
    let action = |r: u32| (r & 0xffff_0000) as i32;
    let mut ret = RET_ALLOW;
    for prog in filters.programs.iter().rev() {
        let cur = run_bpf(prog, nr, arch, &args)?;
        if action(cur) < action(ret) {
            ret = cur;
        }
    }
    Ok(ret)
}

fn x86(filters: &Filters, name: &str, args: [u64; 6]) -> Result<u32, String> {
    verdict(filters, nr(name)?, AUDIT_ARCH_X86_64, args)
}

/// The verdict the data implies, computed from the model rather than the BPF.
fn expected(model: &Model, nr: i64, args: &[u64; 6]) -> u32 {
    let denial = model.denied.iter().find(|d| d.nr == nr);
    if let Some(d) = denial.filter(|d| d.in_errno_filter(model.default_errno)) {
        let refused = match &d.refusal {
            Refusal::When(when) => when.iter().all(|c| c.matches(args)),
            _ => true,
        };
        if refused {
            return ret_errno(d.errno);
        }
    }
    match model.allowed.get(&nr) {
        Some(Allowed { rules: None, .. }) => RET_ALLOW,
        Some(Allowed {
            rules: Some(rules), ..
        }) if rules.iter().any(|r| r.iter().all(|c| c.matches(args))) => RET_ALLOW,
        _ => ret_errno(model.default_errno),
    }
}

#[test]
fn the_compiled_filters_agree_with_the_data_for_every_syscall_number() -> TestResult {
    for profile in PROFILES {
        let model = Model::load(profile)?;
        let filters = model.compile()?;
        let mut probes: Vec<(i64, [u64; 6])> = (0..600).map(|nr| (nr, [0; 6])).collect();
        probes.extend(model.denied.iter().map(|d| (d.nr, d.probe_args)));
        probes.extend((0..600).map(|nr| (nr, [u64::MAX; 6])));
        for (nr, args) in probes {
            let got = verdict(&filters, nr, AUDIT_ARCH_X86_64, args)?;
            let want = expected(&model, nr, &args);
            assert_eq!(got, want, "{}: syscall {nr} {args:x?}", profile.name());
        }
        for d in &model.denied {
            let got = verdict(&filters, d.nr, AUDIT_ARCH_X86_64, d.probe_args)?;
            assert_eq!(got, ret_errno(d.errno), "{}: {}", profile.name(), d.name);
        }
    }
    Ok(())
}

#[test]
fn argument_rules_refuse_namespaces_odd_families_and_block_devices() -> TestResult {
    let f = compile(Default)?;
    let (eperm, enosys) = (ret_errno(libc::EPERM), ret_errno(libc::ENOSYS));
    let sigchld = sym("SIGCHLD");
    let thread = sym("CLONE_FILES") | sym("CLONE_FS") | 0x100 | 0x800 | 0x10000;
    assert_eq!(x86(&f, "clone", [sigchld, 0, 0, 0, 0, 0])?, RET_ALLOW);
    assert_eq!(x86(&f, "clone", [thread, 0, 0, 0, 0, 0])?, RET_ALLOW);
    // The kernel reads clone's flags as 32 bits; junk above them changes nothing.
    assert_eq!(
        x86(
            &f,
            "clone",
            [sigchld | 0xffff_0000_0000_0000, 0, 0, 0, 0, 0]
        )?,
        RET_ALLOW
    );
    for ns in [
        "CLONE_NEWNS",
        "CLONE_NEWUTS",
        "CLONE_NEWIPC",
        "CLONE_NEWUSER",
        "CLONE_NEWPID",
        "CLONE_NEWNET",
        "CLONE_NEWCGROUP",
    ] {
        assert_eq!(
            x86(&f, "clone", [sym(ns) | sigchld, 0, 0, 0, 0, 0])?,
            eperm,
            "clone {ns}"
        );
        assert_eq!(
            x86(&f, "unshare", [sym(ns), 0, 0, 0, 0, 0])?,
            eperm,
            "unshare {ns}"
        );
    }
    assert_eq!(
        x86(&f, "unshare", [sym("CLONE_NEWTIME"), 0, 0, 0, 0, 0])?,
        eperm
    );
    assert_eq!(
        x86(&f, "unshare", [sym("CLONE_FILES"), 0, 0, 0, 0, 0])?,
        RET_ALLOW
    );
    assert_eq!(x86(&f, "clone3", [0; 6])?, enosys);
    for family in ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"] {
        assert_eq!(
            x86(&f, "socket", [sym(family), 1, 0, 0, 0, 0])?,
            RET_ALLOW,
            "{family}"
        );
    }
    for family in [sym("AF_PACKET"), sym("AF_VSOCK"), 30, 38, 0] {
        assert_eq!(
            x86(&f, "socket", [family, 1, 0, 0, 0, 0])?,
            ret_errno(libc::EAFNOSUPPORT)
        );
        assert_eq!(
            x86(&f, "socketpair", [family, 1, 0, 0, 0, 0])?,
            ret_errno(libc::EAFNOSUPPORT)
        );
    }
    let (blk, chr, fifo) = (sym("S_IFBLK") | 0o600, sym("S_IFCHR") | 0o600, 0o010_600);
    assert_eq!(x86(&f, "mknodat", [u64::MAX, 0, blk, 0, 0, 0])?, eperm);
    assert_eq!(x86(&f, "mknod", [0, blk, 0, 0, 0, 0])?, eperm);
    assert_eq!(x86(&f, "mknodat", [u64::MAX, 0, chr, 0, 0, 0])?, RET_ALLOW);
    assert_eq!(x86(&f, "mknodat", [u64::MAX, 0, fifo, 0, 0, 0])?, RET_ALLOW);
    for persona in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
        assert_eq!(
            x86(&f, "personality", [persona, 0, 0, 0, 0, 0])?,
            RET_ALLOW,
            "{persona:#x}"
        );
    }
    assert_eq!(
        x86(&f, "personality", [sym("ADDR_NO_RANDOMIZE"), 0, 0, 0, 0, 0])?,
        eperm
    );
    assert_eq!(x86(&f, "io_uring_setup", [0; 6])?, enosys);
    assert_eq!(x86(&f, "mount", [0; 6])?, eperm);

    let f = compile(Insecure)?;
    assert_eq!(x86(&f, "mount", [0; 6])?, RET_ALLOW);
    assert_eq!(
        x86(&f, "clone", [sym("CLONE_NEWUSER") | sigchld, 0, 0, 0, 0, 0])?,
        RET_ALLOW
    );
    assert_eq!(
        x86(&f, "unshare", [sym("CLONE_NEWNS"), 0, 0, 0, 0, 0])?,
        RET_ALLOW
    );
    assert_eq!(x86(&f, "mknodat", [u64::MAX, 0, blk, 0, 0, 0])?, RET_ALLOW);
    assert_eq!(x86(&f, "clone3", [0; 6])?, enosys);
    assert_eq!(x86(&f, "kexec_load", [0; 6])?, eperm);
    assert_eq!(x86(&f, "reboot", [0; 6])?, eperm);
    assert_eq!(
        x86(&f, "socket", [sym("AF_PACKET"), 1, 0, 0, 0, 0])?,
        ret_errno(libc::EAFNOSUPPORT)
    );
    Ok(())
}

#[test]
fn x32_numbers_are_refused_and_i386_calls_kill() -> TestResult {
    for profile in PROFILES {
        let f = compile(profile)?;
        for name in ["getpid", "read", "mount", "execve", "kexec_load"] {
            let x32 = X32_SYSCALL_BIT | nr(name)?;
            assert_eq!(
                verdict(&f, x32, AUDIT_ARCH_X86_64, [0; 6])?,
                ret_errno(libc::EPERM),
                "x32 {name}"
            );
        }
        // The x32 numbers of their own (512-547) too.
        for n in 512..548 {
            assert_eq!(
                verdict(&f, X32_SYSCALL_BIT | n, AUDIT_ARCH_X86_64, [0; 6])?,
                ret_errno(libc::EPERM)
            );
        }
        for n in [1, 20, 21, 0x7f] {
            assert_eq!(verdict(&f, n, AUDIT_ARCH_I386, [0; 6])?, RET_KILL_PROCESS);
        }
    }
    Ok(())
}

// --- In the kernel: forked children, as root --------------------------------------------

/// What happened to a forked child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The body returned this (non-negative) value.
    Returned(i64),
    /// The body's call failed with this errno.
    Failed(i32),
    /// The child exited with this code without reporting (it exec'd, or set-up failed).
    Exited(i32),
    /// The child was killed by this signal.
    Killed(i32),
}

const ISOLATE_FAILED: i32 = 120;
const APPLY_FAILED: i32 = 121;
/// Namespaces a probe child gets, so that even a broken filter could not touch the host's
/// mounts, host name, IPC or network.
const ISOLATE: c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET;

/// The kernel tests fork; one at a time keeps pipes from leaking into each other's children.
static FORK: Mutex<()> = Mutex::new(());

fn fork_lock() -> MutexGuard<'static, ()> {
    FORK.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "{test}: SKIPPED: needs root (namespaces for isolation, and capabilities so that EPERM can only come from the filter)"
        );
    }
    root
}

fn errno_now() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Fork; in the child: new session, `ns` namespaces (`/` made private when a mount
/// namespace is new), a 60 s alarm, then no_new_privs and `filters` if given, then `body`,
/// whose result comes back through a pipe. A process the body creates leaves at once.
fn in_child(
    ns: c_int,
    filters: Option<&Filters>,
    body: impl FnOnce() -> (i64, i32),
) -> Result<Outcome, std::io::Error> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is an array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [rd, wr] = fds;
    // SAFETY: the child runs only raw system calls (the body's, `apply`'s prctl and seccomp,
    // which allocate nothing), write and _exit; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        child(ns, filters, body, rd, wr);
    }
    // SAFETY: `wr` is our open copy of the pipe's write end; the child has its own.
    unsafe { libc::close(wr) };
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of `buf`, which outlives the call.
        let n = unsafe { libc::read(rd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            1.. => got += n.unsigned_abs(),
            0 => break,
            _ if errno_now() == libc::EINTR => {}
            _ => break,
        }
    }
    // SAFETY: `rd` is open and ours; nothing uses it after this.
    unsafe { libc::close(rd) };
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid int to fill.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if errno_now() != libc::EINTR {
            return Err(std::io::Error::last_os_error());
        }
    }
    if got == buf.len() {
        let mut half = [0u8; 8];
        half.copy_from_slice(&buf[..8]);
        let ret = i64::from_ne_bytes(half);
        half.copy_from_slice(&buf[8..]);
        let errno = i32::try_from(i64::from_ne_bytes(half)).unwrap_or(-1);
        return Ok(if ret < 0 {
            Outcome::Failed(errno)
        } else {
            Outcome::Returned(ret)
        });
    }
    Ok(if libc::WIFSIGNALED(status) {
        Outcome::Killed(libc::WTERMSIG(status))
    } else {
        Outcome::Exited(libc::WEXITSTATUS(status))
    })
}

fn child(
    ns: c_int,
    filters: Option<&Filters>,
    body: impl FnOnce() -> (i64, i32),
    rd: c_int,
    wr: c_int,
) -> ! {
    // SAFETY: in the forked child, single-threaded: setsid, unshare, mount (with a static
    // NUL-terminated "/"), alarm, prctl, getpid, write (from a stack buffer) and _exit
    // are raw system calls on valid arguments; `apply` only calls prctl and seccomp.
    unsafe {
        libc::close(rd);
        libc::setsid();
        libc::alarm(60);
        if ns != 0 && libc::unshare(ns) != 0 {
            libc::_exit(ISOLATE_FAILED);
        }
        if ns & libc::CLONE_NEWNS != 0
            && libc::mount(
                null(),
                c"/".as_ptr(),
                null(),
                libc::MS_REC | libc::MS_PRIVATE,
                null(),
            ) != 0
        {
            libc::_exit(ISOLATE_FAILED);
        }
        if let Some(filters) = filters
            && (libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || apply(filters).is_err())
        {
            libc::_exit(APPLY_FAILED);
        }
        let me = libc::getpid();
        let (ret, errno) = body();
        if libc::getpid() != me {
            libc::_exit(0);
        }
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&ret.to_ne_bytes());
        buf[8..].copy_from_slice(&i64::from(errno).to_ne_bytes());
        libc::write(wr, buf.as_ptr().cast(), buf.len());
        libc::_exit(0)
    }
}

fn raw_syscall(nr: i64, a: [u64; 6]) -> (i64, i32) {
    // SAFETY: the arguments are a DeniedSyscall's probe_args (or a test's own): null or
    // invalid pointers, -1 descriptors and no-op values, chosen and documented in the data
    // so that the call cannot act even without the filter; the child is isolated anyway.
    let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    (ret, if ret < 0 { errno_now() } else { 0 })
}

#[test]
fn every_denied_syscall_fails_with_its_errno_in_the_kernel() -> TestResult {
    if !is_root("every_denied_syscall_fails_with_its_errno_in_the_kernel") {
        return Ok(());
    }
    let _lock = fork_lock();
    let mut failures = Vec::new();
    let mut unproven = Vec::new();
    let mut checked = 0;
    for profile in PROFILES {
        let filters = compile(profile)?;
        for d in denied_syscalls(profile)? {
            let what = format!("{} {}{:x?}", profile.name(), d.name, d.probe_args);
            let filtered = in_child(ISOLATE, Some(&filters), || raw_syscall(d.nr, d.probe_args))?;
            if filtered != Outcome::Failed(d.errno) {
                failures.push(format!(
                    "{what}: expected errno {} under the filter, got {filtered:?}",
                    d.errno
                ));
            }
            // The control: without the filter the kernel must answer differently, or the
            // errno above proves nothing.
            let control = in_child(ISOLATE, None, || raw_syscall(d.nr, d.probe_args))?;
            if matches!(control, Outcome::Exited(_)) {
                failures.push(format!("{what}: control run failed to set up: {control:?}"));
            } else if control == Outcome::Failed(d.errno) {
                // The kernel itself gives this errno here (feature compiled out, …); the
                // BPF interpreter's verdict is then the proof.
                let emulated = verdict(&filters, d.nr, AUDIT_ARCH_X86_64, d.probe_args)?;
                if emulated != ret_errno(d.errno) {
                    failures.push(format!("{what}: emulated verdict {emulated:#x}"));
                }
                unproven.push(what);
            }
            checked += 1;
        }
    }
    if !unproven.is_empty() {
        eprintln!(
            "denied syscalls the kernel refuses with the same errno even unfiltered (proven by the BPF interpreter instead): {unproven:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {checked}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// A shell script doing what build steps do; output goes to `$1/log`.
const BUILD_SCRIPT: &str = r#"
set -eu
exec >"$1/log" 2>&1
export PATH=/usr/local/bin:/usr/bin:/bin HOME="$1" LC_ALL=C
cd "$1"
have() { command -v "$1" >/dev/null 2>&1; }
printf '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n' > hello.c
printf 'hello: hello.c\n\tcc -O2 -o hello hello.c\n' > Makefile
if have make && have cc; then echo "== make, cc"; make -s; ./hello; fi
echo "== tar"; tar cf out.tar hello.c Makefile; tar tf out.tar >/dev/null
echo "== pipes, subshells, fifos"; mkfifo fifo; (echo x > fifo &) ; read -r line < fifo; echo a | cat | wc -c >/dev/null
if have git; then
  echo "== git"; git init -q repo; cp hello.c repo/; cd repo; git add hello.c
  git -c user.name=k -c user.email=k@k commit -qm msg; git log --oneline >/dev/null; cd ..
fi
if have python3; then
  echo "== python3"
  python3 - <<'PY'
import errno, os, socket, subprocess, tempfile, threading
t = threading.Thread(target=lambda: None); t.start(); t.join()
assert subprocess.run(["true"]).returncode == 0
a, b = socket.socketpair(); a.send(b"x"); assert b.recv(1) == b"x"
socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
    raise SystemExit("an AF_PACKET socket was allowed")
except OSError as e:
    assert e.errno == errno.EAFNOSUPPORT, e
with tempfile.TemporaryDirectory() as d:
    os.symlink("x", os.path.join(d, "l")); os.chmod(d, 0o700)
PY
fi
if have node; then
  echo "== node"
  node -e 'const fs = require("fs"); fs.readFileSync("hello.c"); require("child_process").execFileSync("true"); fs.promises.readFile("hello.c").then(() => {})'
fi
if have dpkg; then echo "== dpkg"; dpkg -s dpkg >/dev/null; fi
echo "== done"
"#;

#[test]
fn a_build_runs_under_the_default_filter() -> TestResult {
    if !is_root("a_build_runs_under_the_default_filter") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let filters = compile(Default)?;
    let sh = CString::new("/bin/sh")?;
    let argv_owned = [
        CString::new("sh")?,
        CString::new("-c")?,
        CString::new(BUILD_SCRIPT)?,
        CString::new("sh")?,
        CString::new(dir.path().as_os_str().as_encoded_bytes())?,
    ];
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(null());
    let envp: [*const libc::c_char; 1] = [null()];
    let _lock = fork_lock();
    let outcome = in_child(ISOLATE, Some(&filters), || {
        // SAFETY: `sh` and every argv string are NUL-terminated and outlive the call; both
        // arrays are NULL-terminated. execve returns only on failure.
        unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        (-1, errno_now())
    })?;
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert_eq!(outcome, Outcome::Exited(0), "build log:\n{log}");
    assert!(log.ends_with("== done\n"), "{log}");
    eprintln!(
        "build under the default filter ran:{}",
        log.lines()
            .filter(|l| l.starts_with("=="))
            .fold(String::new(), |s, l| s + " " + &l[3..])
    );
    Ok(())
}

extern "C" fn idle(_: *mut libc::c_void) -> *mut libc::c_void {
    null_mut()
}

#[test]
fn threads_start_although_clone3_answers_enosys() -> TestResult {
    if !is_root("threads_start_although_clone3_answers_enosys") {
        return Ok(());
    }
    let filters = compile(Default)?;
    let _lock = fork_lock();
    let outcome = in_child(ISOLATE, Some(&filters), || {
        let mut thread: libc::pthread_t = 0;
        // SAFETY: `thread` is written by pthread_create; `idle` has the signature it
        // expects and ignores its argument; the thread is joined before we go on.
        let r = unsafe { libc::pthread_create(&mut thread, null(), idle, null_mut()) };
        if r != 0 {
            return (-1, r);
        }
        // SAFETY: `thread` was created above and not yet joined or detached.
        let r = unsafe { libc::pthread_join(thread, null_mut()) };
        if r != 0 { (-1, r) } else { (0, 0) }
    })?;
    assert_eq!(outcome, Outcome::Returned(0));
    Ok(())
}

#[test]
fn clone_and_unshare_work_without_namespace_flags_only() -> TestResult {
    if !is_root("clone_and_unshare_work_without_namespace_flags_only") {
        return Ok(());
    }
    let filters = compile(Default)?;
    let sigchld = sym("SIGCHLD");
    let _lock = fork_lock();
    let probe = |name: &str, args: [u64; 6]| -> Result<Outcome, Box<dyn std::error::Error>> {
        let nr = nr(name)?;
        Ok(in_child(ISOLATE, Some(&filters), || raw_syscall(nr, args))?)
    };
    // fork as glibc does it: clone with SIGCHLD; the new process leaves at once.
    assert!(matches!(probe("clone", [sigchld, 0, 0, 0, 0, 0])?, Outcome::Returned(pid) if pid > 0));
    assert_eq!(
        probe("clone", [sym("CLONE_NEWUSER") | sigchld, 0, 0, 0, 0, 0])?,
        Outcome::Failed(libc::EPERM)
    );
    assert_eq!(
        probe("unshare", [sym("CLONE_FILES"), 0, 0, 0, 0, 0])?,
        Outcome::Returned(0)
    );
    assert_eq!(
        probe("unshare", [sym("CLONE_NEWNS"), 0, 0, 0, 0, 0])?,
        Outcome::Failed(libc::EPERM)
    );
    assert_eq!(
        probe("unshare", [sym("CLONE_NEWUSER"), 0, 0, 0, 0, 0])?,
        Outcome::Failed(libc::EPERM)
    );
    assert_eq!(probe("clone3", [0; 6])?, Outcome::Failed(libc::ENOSYS));
    Ok(())
}

#[test]
fn x32_syscalls_are_refused_by_the_kernel() -> TestResult {
    if !is_root("x32_syscalls_are_refused_by_the_kernel") {
        return Ok(());
    }
    let filters = compile(Default)?;
    let x32_getpid = X32_SYSCALL_BIT | nr("getpid")?;
    let _lock = fork_lock();
    let filtered = in_child(ISOLATE, Some(&filters), || raw_syscall(x32_getpid, [0; 6]))?;
    assert_eq!(filtered, Outcome::Failed(libc::EPERM));
    // Unfiltered it is the pid (kernel with x32) or ENOSYS (without): never EPERM.
    let control = in_child(ISOLATE, None, || raw_syscall(x32_getpid, [0; 6]))?;
    assert!(
        matches!(
            control,
            Outcome::Returned(_) | Outcome::Failed(libc::ENOSYS)
        ),
        "{control:?}"
    );
    Ok(())
}

fn int80_getpid() -> (i64, i32) {
    let ret: i64;
    // SAFETY: i386 getpid (20) through int 0x80: no arguments, no memory; the 32-bit entry
    // clobbers r8-r11, declared here. Without IA32 emulation it raises SIGSEGV instead.
    unsafe {
        std::arch::asm!(
            "int 0x80",
            inlateout("rax") 20i64 => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    (ret, 0)
}

#[test]
fn i386_syscalls_kill_the_process() -> TestResult {
    if !is_root("i386_syscalls_kill_the_process") {
        return Ok(());
    }
    let filters = compile(Default)?;
    let _lock = fork_lock();
    let filtered = in_child(ISOLATE, Some(&filters), int80_getpid)?;
    assert_eq!(filtered, Outcome::Killed(libc::SIGSYS));
    let control = in_child(ISOLATE, None, int80_getpid)?;
    assert_ne!(control, Outcome::Killed(libc::SIGSYS));
    Ok(())
}

#[test]
fn insecure_mounts_in_a_private_namespace_but_cannot_reboot() -> TestResult {
    if !is_root("insecure_mounts_in_a_private_namespace_but_cannot_reboot") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let target = CString::new(dir.path().as_os_str().as_encoded_bytes())?;
    let filters = compile(Insecure)?;
    let _lock = fork_lock();
    let mounted = in_child(libc::CLONE_NEWNS, Some(&filters), || {
        // SAFETY: all strings are NUL-terminated and outlive the calls; the mount is a
        // small tmpfs in this child's private mount namespace, undone before it exits.
        unsafe {
            if libc::mount(
                c"kiln-test".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=64k".as_ptr().cast(),
            ) != 0
            {
                return (-1, errno_now());
            }
            if libc::umount2(target.as_ptr(), 0) != 0 {
                return (-2, errno_now());
            }
        }
        (0, 0)
    })?;
    assert_eq!(mounted, Outcome::Returned(0));
    let default = compile(Default)?;
    let refused = in_child(libc::CLONE_NEWNS, Some(&default), || {
        // SAFETY: as above; refused by the default filter before the kernel looks.
        let r = unsafe {
            libc::mount(
                c"kiln-test".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                null(),
            )
        };
        (i64::from(r), errno_now())
    })?;
    assert_eq!(refused, Outcome::Failed(libc::EPERM));
    for name in ["kexec_load", "reboot", "init_module", "settimeofday"] {
        let d = denied_syscalls(Insecure)?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| format!("insecure does not deny {name}"))?;
        let got = in_child(ISOLATE, Some(&filters), || raw_syscall(d.nr, d.probe_args))?;
        assert_eq!(got, Outcome::Failed(libc::EPERM), "{name}");
    }
    Ok(())
}

#[test]
fn apply_refuses_to_run_without_no_new_privs() -> TestResult {
    // SAFETY: PR_GET_NO_NEW_PRIVS only reads a flag of this thread.
    if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1 {
        eprintln!(
            "apply_refuses_to_run_without_no_new_privs: SKIPPED: the test process already has no_new_privs"
        );
        return Ok(());
    }
    let filters = compile(Default)?;
    let _lock = fork_lock();
    let outcome = in_child(0, None, || match apply(&filters) {
        Err(SeccompError::NoNewPrivs) => (0, 0),
        Err(_) => (-1, 1),
        Ok(()) => (-1, 2),
    })?;
    assert_eq!(outcome, Outcome::Returned(0));
    Ok(())
}

#[test]
#[ignore = "a timing note, not a test: cargo test -p kiln-sandbox --lib --release -- --ignored compile_time --nocapture"]
fn compile_time() -> TestResult {
    const N: u32 = 500;
    for profile in PROFILES {
        let start = Instant::now();
        for _ in 0..N {
            std::hint::black_box(Model::load(profile)?);
        }
        let load = start.elapsed() / N;
        let start = Instant::now();
        for _ in 0..N {
            std::hint::black_box(compile(profile)?);
        }
        let total = start.elapsed() / N;
        eprintln!(
            "compile({}): {total:?} per call, of which parse+validate {load:?}; {:?}",
            profile.name(),
            compile(profile)?
        );
    }
    Ok(())
}
