//! Seccomp for build steps: two allow-list profiles, written as data and compiled with
//! `seccompiler`.
//!
//! # Profiles
//! - [`SeccompProfile::Default`] (`default.json`): every build step.
//! - [`SeccompProfile::Insecure`] (`insecure.json`): `RUN --security=insecure`, and only when
//!   the build holds the explicitly dangerous `security.insecure` entitlement (the caller does
//!   that gating; this module only enforces). It is the default allow-list plus what a
//!   privileged step needs (mounting in its own mount namespace, nested namespaces, ptrace,
//!   keyrings, host name, block device nodes); everything else the default profile refuses stays
//!   refused, notably the calls that wreck the host: `kexec_*`, `*_module`, `reboot`,
//!   `swapon`/`swapoff`, setting the clock, `syslog`, `acct`, `iopl`/`ioperm`, plus `bpf`,
//!   `perf_event_open`, `open_by_handle_at`, `userfaultfd` and io_uring.
//!
//! The JSON is embedded with `include_str!` and parsed, validated and compiled by `compile`
//! (pure: no kernel call), which the init calls once per step, before `apply`.
//!
//! # An allow-list, never a deny-list
//! Everything not allowed fails with the profile's `default_errno` (EPERM, as in Docker). On
//! x86_64 the kernel also accepts x32-ABI syscalls: the x86_64 number with bit 30 set
//! (`__X32_SYSCALL_BIT`, 0x40000000), under the *same* audit architecture
//! (`AUDIT_ARCH_X86_64`), on kernels built with `CONFIG_X86_X32_ABI`. `seccompiler`, unlike
//! libseccomp, adds no guard for that bit, so a deny-list keyed on x86_64 numbers would let
//! `mount | 0x40000000` through. An allow-list keyed on exact x86_64 numbers matches no
//! 0x40000000+ number, so every x32 call is refused without further rules. i386 calls
//! (`int 0x80`) carry `AUDIT_ARCH_I386`; every filter starts with `seccompiler`'s architecture
//! check, which kills the process for any architecture but the target's.
//!
//! # Stacked filters and errnos
//! A `seccompiler` filter has one match action and one mismatch action. So `compile` emits:
//! 1. the allow-list: match → ALLOW, mismatch → ERRNO(`default_errno`);
//! 2. one filter per errno for the refusals the allow-list cannot express (calls refused with
//!    another errno, such as ENOSYS, and refusals that depend on arguments, `when`): match →
//!    ERRNO(that errno), mismatch → ALLOW.
//!
//! The kernel runs every installed filter and takes the action of highest precedence
//! (KILL > TRAP > ERRNO > USER_NOTIF > TRACE > LOG > ALLOW); between equal actions, the value
//! of the most recently installed filter wins. `apply` therefore installs the allow-list
//! first: an errno filter installed after it overrides its EPERM with, say, ENOSYS for
//! `clone3` (installed the other way round, `clone3` would get EPERM and glibc's
//! `pthread_create` would fail), and an argument-dependent refusal (`when`) wins over the
//! allow-list's ALLOW. Denied entries whose errno is the default and that have no `when` are
//! not compiled at all: the allow-list already refuses them. `seccomp` and `prctl` must be
//! allowed so the second and later filters can be installed (checked at load).
//!
//! Errnos: EPERM by default, which is what a missing capability gives, so callers already
//! handle it. ENOSYS where callers probe for a feature and fall back when the kernel lacks it:
//! `clone3` (glibc, Go and Rust fall back to `clone`, whose flags seccomp can read), io_uring
//! (libuv/node, tokio, liburing fall back to epoll), the NUMA calls (libnuma, hwloc, JVMs treat
//! the machine as non-NUMA), `name_to_handle_at`, the `lsm_*` calls. EAFNOSUPPORT for socket
//! families outside the list, as on a kernel without them.
//!
//! # Where kiln differs from Docker's default profile
//! Docker's profile (moby `profiles/seccomp/default.json`) grants more when the container has
//! extra capabilities (the mount family with CAP_SYS_ADMIN, `bpf` with CAP_BPF, …); kiln's steps
//! never get those capabilities, so kiln lists those calls as denied outright. Beyond that:
//! - kiln refuses `ptrace` and `process_vm_readv`/`writev`, which Docker allows on kernels
//!   ≥ 4.8: a step has no reason to inspect other processes. Cost: strace, gdb and
//!   LeakSanitizer's leak check inside a step (use `ASAN_OPTIONS=detect_leaks=0`, or the
//!   insecure profile).
//! - kiln allows only AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK sockets (Docker refuses only
//!   AF_VSOCK): other families auto-load protocol code with a long record of privilege
//!   escalations (packet, TIPC, RDS, CAN, ALG, …) and no build uses them.
//! - kiln refuses block device nodes in `mknod`/`mknodat` (Docker relies on the device cgroup
//!   alone), `adjtimex` and `clock_adjtime` (Docker allows their read-only form),
//!   `name_to_handle_at`, and `fanotify_mark` (useless without `fanotify_init`).
//! - kiln answers ENOSYS where Docker answers EPERM for io_uring, the NUMA family,
//!   `name_to_handle_at` and `lsm_*`, so that probing callers fall back.
//! - kiln allows `unshare` without namespace flags (`CLONE_FILES`, `CLONE_FS`,
//!   `CLONE_SYSVSEM`: the caller's own state); Docker refuses `unshare` altogether without
//!   CAP_SYS_ADMIN.
//!
//! Otherwise it follows Docker: `clone` only without namespace flags, `clone3` answered ENOSYS,
//! Docker's `personality` values, io_uring refused (Docker since 2023, moby#46762), the calls
//! of kernels up to 6.13 (`cachestat`, `statmount`, `listmount`, `mseal`, `*xattrat`, …).
//!
//! # Data format
//! `arches` lists the architectures the data was written for (the running one must be there,
//! and kiln must have its syscall table); `default_errno` is the allow-list's answer.
//! `allowed` entries have `reason`, `names`, optional `arches` (names that exist only there) and
//! optional `rules`: OR-ed rules, each a list of AND-ed conditions; no rules means any
//! arguments. `denied` entries have `reason`, `names`, `errno`, optional `arches`, and either
//! nothing (always refused), `when` (refused when these AND-ed conditions hold; compiled into
//! an errno filter) or `outside_allowed_rules` (refused by the allow-list for arguments its rules
//! reject; errno must be the default). `probe_args` are the arguments the generated tests pass:
//! they must be harmless even if the filter were broken (null or invalid pointers, `-1`
//! descriptors), must satisfy `when`, and must not match the allow rules for
//! `outside_allowed_rules` (checked at load). A condition is
//! `{"arg": 0-5, "op": "eq|ne|lt|le|gt|ge|masked_eq", "value": v, "mask": m, "width": "dword|qword"}`
//! (`mask` only with `masked_eq`; `width` defaults to `dword`, the low 32 bits, right for `int`
//! and flag arguments). Values are numbers or strings of `|`-joined names from [`SYMBOLS`] and
//! `0x` hex. An extending profile (`"extends": "default"`) adds `allowed` entries (each name
//! it allows drops the base's rules and refusals for that name) and may add `denied` ones.
//!
//! # Adding a syscall
//! Add its name to an `allowed` entry whose reason covers it, or a new entry with its own
//! reason (what in an ordinary build needs it, and why that is safe). To refuse one explicitly,
//! add a `denied` entry: the reason, EPERM unless callers probe for it (then ENOSYS), and
//! `probe_args` if all-zero arguments could do anything unfiltered. Then run the unit tests as
//! root: they compile both profiles, check the data, and run every denied call in a forked
//! child, with the filter and without.
//!
//! Cost: `compile` takes about 0.26 ms in a release build, three quarters of it parsing and
//! validating (the ignored test `compile_time` prints it). The allow-list is about 1 600 BPF
//! instructions (the kernel's limit is 4 096), the errno filters under 100 each. The kernel
//! caches ALLOW for syscalls whose verdict does not depend on arguments, so most calls of a
//! step skip the filters; only the argument-checked ones (`clone`, `unshare`, `socket`,
//! `socketpair`, `mknodat`, `personality`) run them every time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

/// Which seccomp profile a step runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SeccompProfile {
    /// Every build step.
    Default,
    /// DANGER: `RUN --security=insecure`; only for a build holding the `security.insecure`
    /// entitlement. Allows mounting, namespaces, ptrace and keyrings inside the step.
    Insecure,
}

impl SeccompProfile {
    /// The profile's name (its data file is `<name>.json`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Insecure => "insecure",
        }
    }

    fn data(self) -> &'static str {
        match self {
            Self::Default => include_str!("default.json"),
            Self::Insecure => include_str!("insecure.json"),
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Default, Self::Insecure]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// A failure to load, compile or install a profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeccompError {
    /// The profile file is not JSON of the expected shape.
    #[error("seccomp profile {profile}: malformed data: {source}")]
    Parse {
        profile: &'static str,
        source: serde_json::Error,
    },
    /// The data is well-formed but wrong; `at` names the entry (`default.json denied[3]`).
    #[error("seccomp profile {profile}, {at}: {problem}")]
    BadData {
        profile: &'static str,
        at: String,
        problem: DataProblem,
    },
    /// A syscall name with no number on this architecture (and no `arches` saying why).
    #[error(
        "seccomp profile {profile}, {at}: unknown syscall {name:?} on {arch} (give the entry \"arches\" if the call exists only elsewhere)"
    )]
    UnknownSyscall {
        profile: &'static str,
        at: String,
        name: String,
        arch: String,
    },
    /// A syscall both allowed (for some arguments or all) and always denied.
    #[error(
        "seccomp profile {profile}: {name} is both allowed ({allowed_at}) and denied ({denied_at})"
    )]
    Overlap {
        profile: &'static str,
        name: String,
        allowed_at: String,
        denied_at: String,
    },
    /// The running architecture is not in the data's `arches`, or kiln has no syscall table
    /// for it.
    #[error("seccomp profile {profile} does not support {arch} (the data lists {supported:?})")]
    UnsupportedArch {
        profile: &'static str,
        arch: String,
        supported: Vec<String>,
    },
    /// `seccompiler` refused a filter (e.g. too many instructions).
    #[error("seccomp profile {profile}: compiling the {filter} filter: {source}")]
    Compile {
        profile: &'static str,
        filter: String,
        source: BackendError,
    },
    /// The init reached its seccomp step without compiled filters (never fail open).
    #[error("no compiled seccomp filters to install")]
    NoFilters,
    /// `apply` was called before `no_new_privs` was set.
    #[error("no_new_privs is not set: set it before installing seccomp filters")]
    NoNewPrivs,
    /// The kernel refused a filter; filters before `index` are already installed.
    #[error("seccomp profile {profile}: installing filter {index} of {count}: {source}")]
    Apply {
        profile: &'static str,
        index: usize,
        count: usize,
        source: seccompiler::Error,
    },
}

/// What is wrong with an entry of the profile data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataProblem {
    #[error("the reason is empty")]
    EmptyReason,
    #[error("no names")]
    NoNames,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{0} may only be set in the base profile")]
    NotInExtension(&'static str),
    #[error("unknown base profile {0:?}")]
    UnknownBase(String),
    #[error("a profile extending another may not itself be extended")]
    NestedExtends,
    #[error("unknown errno {0:?}")]
    UnknownErrno(String),
    #[error("unknown constant {0:?}")]
    UnknownConstant(String),
    #[error("argument index {0} (a syscall has arguments 0 to 5)")]
    ArgIndex(u8),
    #[error("masked_eq needs a mask")]
    MaskMissing,
    #[error("a mask is only meaningful with masked_eq")]
    MaskWithoutMaskedEq,
    #[error("value {0:#x} does not fit a dword condition")]
    TooWide(u64),
    #[error("a rule with no conditions")]
    EmptyRule,
    #[error("{0} probe arguments (at most 6)")]
    TooManyProbeArgs(usize),
    #[error("{0} is listed twice")]
    Duplicate(String),
    #[error("both `when` and `outside_allowed_rules`")]
    WhenAndOutside,
    #[error("{0}: outside_allowed_rules, but no allow rule restricts its arguments")]
    NoAllowRules(String),
    #[error("{0}: outside_allowed_rules refusals get the default errno")]
    NotDefaultErrno(String),
    #[error("{0}: the probe arguments are allowed by an allow rule")]
    ProbeAllowed(String),
    #[error("{0}: the probe arguments do not satisfy `when`")]
    ProbeNotRefused(String),
    #[error("{0} must be allowed for any arguments: {1}")]
    Required(&'static str, &'static str),
}

/// A syscall a profile refuses, as the generated tests need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedSyscall {
    pub name: String,
    /// Its number on the running architecture.
    pub nr: i64,
    /// The errno a caller gets.
    pub errno: i32,
    pub reason: String,
    /// Arguments the filter refuses and that are harmless even unfiltered (zeros unless the
    /// data says otherwise; negative values sign-extended, as in a register).
    pub probe_args: [u64; 6],
}

/// The syscalls `profile` refuses (each once), sorted by name.
pub fn denied_syscalls(profile: SeccompProfile) -> Result<Vec<DeniedSyscall>, SeccompError> {
    let mut denied: Vec<_> = Model::load(profile)?
        .denied
        .into_iter()
        .map(|d| DeniedSyscall {
            name: d.name,
            nr: d.nr,
            errno: d.errno,
            reason: d.reason,
            probe_args: d.probe_args,
        })
        .collect();
    denied.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(denied)
}

/// The syscalls `profile` allows for at least some arguments, sorted.
pub fn allowed_syscalls(profile: SeccompProfile) -> Result<Vec<String>, SeccompError> {
    let mut names: Vec<_> = Model::load(profile)?
        .allowed
        .into_values()
        .map(|a| a.name)
        .collect();
    names.sort();
    Ok(names)
}

/// A profile's compiled BPF programs, in the order [`apply`] installs them: the allow-list,
/// then the errno filters.
pub(crate) struct Filters {
    profile: &'static str,
    programs: Vec<BpfProgram>,
}

impl fmt::Debug for Filters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lens: Vec<_> = self.programs.iter().map(Vec::len).collect();
        write!(f, "Filters({}: {lens:?} instructions)", self.profile)
    }
}

/// Parse, validate and compile `profile` for the running architecture. Pure: no kernel call.
pub(crate) fn compile(profile: SeccompProfile) -> Result<Filters, SeccompError> {
    Model::load(profile)?.compile()
}

/// Install `filters` on the calling thread, allow-list first (see the module docs for why the
/// order matters). The init is single-threaded; other threads would stay unfiltered.
///
/// Requires `no_new_privs` (the init's `NoNewPrivs` step); refuses to run without it rather
/// than set it behind the caller's back. Call it as the last step before `execve`: every call
/// after it must be allowed (`execve`, and `write`/`exit_group` to report a failed exec).
pub(crate) fn apply(filters: &Filters) -> Result<(), SeccompError> {
    // SAFETY: PR_GET_NO_NEW_PRIVS only reads a flag of the calling thread; the other
    // arguments must be zero and no memory is passed.
    let no_new_privs = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    if no_new_privs != 1 {
        return Err(SeccompError::NoNewPrivs);
    }
    let count = filters.programs.len();
    for (index, program) in filters.programs.iter().enumerate() {
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Apply {
            profile: filters.profile,
            index,
            count,
            source,
        })?;
    }
    Ok(())
}

/// Syscalls kiln itself makes under the filters: each must be allowed for any arguments.
const REQUIRED: &[(&str, &str)] = &[
    ("seccomp", "it installs the filters after the first"),
    ("prctl", "seccompiler sets no_new_privs before each filter"),
    ("execve", "the init execs the step"),
    ("write", "the init reports a failed exec on its error pipe"),
    ("exit_group", "the init exits after a failed exec"),
];

// ---------------------------------------------------------------------------------------------
// The data as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default, rename = "comment")]
    _comment: Option<String>,
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    default_errno: Option<String>,
    #[serde(default)]
    allowed: Vec<RawAllow>,
    #[serde(default)]
    denied: Vec<RawDeny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    reason: String,
    names: Vec<String>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    rules: Vec<Vec<RawCond>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    reason: String,
    names: Vec<String>,
    errno: String,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    when: Vec<RawCond>,
    #[serde(default)]
    outside_allowed_rules: bool,
    #[serde(default)]
    probe_args: Vec<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCond {
    arg: u8,
    #[serde(default)]
    width: Width,
    op: Op,
    value: RawValue,
    #[serde(default)]
    mask: Option<RawValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawValue {
    Unsigned(u64),
    Signed(i64),
    Symbolic(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Width {
    /// The low 32 bits: `int`, `unsigned int` and flag words.
    #[default]
    Dword,
    /// All 64 bits: pointers, `long`, `size_t`.
    Qword,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
}

// ---------------------------------------------------------------------------------------------
// The data resolved for one architecture.

/// One argument comparison, with `seccompiler`'s semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cond {
    arg: u8,
    width: Width,
    op: Op,
    value: u64,
    mask: u64,
}

impl Cond {
    fn parse(raw: &RawCond) -> Result<Self, DataProblem> {
        if raw.arg > 5 {
            return Err(DataProblem::ArgIndex(raw.arg));
        }
        let value = value(&raw.value)?;
        let mask = match (raw.op, &raw.mask) {
            (Op::MaskedEq, Some(mask)) => self::value(mask)?,
            (Op::MaskedEq, None) => return Err(DataProblem::MaskMissing),
            (_, Some(_)) => return Err(DataProblem::MaskWithoutMaskedEq),
            (_, None) => 0,
        };
        if raw.width == Width::Dword {
            // A dword condition sees only the low half; an `int` of -1 arrives sign-extended.
            for v in [value, mask] {
                if v >> 32 != 0 && v >> 32 != 0xffff_ffff {
                    return Err(DataProblem::TooWide(v));
                }
            }
        }
        Ok(Self {
            arg: raw.arg,
            width: raw.width,
            op: raw.op,
            value,
            mask,
        })
    }

    /// Whether the filter would find this condition true for `args`.
    fn matches(&self, args: &[u64; 6]) -> bool {
        let low = |v: u64| v & 0xffff_ffff;
        let (a, v, m) = match self.width {
            Width::Dword => (
                low(args[usize::from(self.arg)]),
                low(self.value),
                low(self.mask),
            ),
            Width::Qword => (args[usize::from(self.arg)], self.value, self.mask),
        };
        match self.op {
            Op::Eq => a == v,
            Op::Ne => a != v,
            Op::Lt => a < v,
            Op::Le => a <= v,
            Op::Gt => a > v,
            Op::Ge => a >= v,
            Op::MaskedEq => a & m == v & m,
        }
    }

    fn to_seccompiler(self) -> Result<SeccompCondition, BackendError> {
        let width = match self.width {
            Width::Dword => SeccompCmpArgLen::Dword,
            Width::Qword => SeccompCmpArgLen::Qword,
        };
        let op = match self.op {
            Op::Eq => SeccompCmpOp::Eq,
            Op::Ne => SeccompCmpOp::Ne,
            Op::Lt => SeccompCmpOp::Lt,
            Op::Le => SeccompCmpOp::Le,
            Op::Gt => SeccompCmpOp::Gt,
            Op::Ge => SeccompCmpOp::Ge,
            Op::MaskedEq => SeccompCmpOp::MaskedEq(self.mask),
        };
        SeccompCondition::new(self.arg, width, op, self.value)
    }
}

/// An allowed syscall: any arguments (`rules: None`) or those some rule matches.
#[derive(Debug)]
struct Allowed {
    name: String,
    /// The data file (profile name) and entry that last granted it.
    file: &'static str,
    at: String,
    rules: Option<Vec<Vec<Cond>>>,
}

/// How a denied syscall is refused.
#[derive(Debug, Clone)]
enum Refusal {
    /// For any arguments.
    Always,
    /// When all these conditions hold (an errno filter).
    When(Vec<Cond>),
    /// For the arguments the allow-list's rules reject.
    OutsideAllowedRules,
}

#[derive(Debug)]
struct Denial {
    name: String,
    nr: i64,
    errno: i32,
    reason: String,
    at: String,
    refusal: Refusal,
    probe_args: [u64; 6],
}

impl Denial {
    /// Whether an errno filter carries it (otherwise the allow-list refuses it).
    fn in_errno_filter(&self, default_errno: i32) -> bool {
        match self.refusal {
            Refusal::Always => self.errno != default_errno,
            Refusal::When(_) => true,
            Refusal::OutsideAllowedRules => false,
        }
    }
}

/// A profile's data, merged with its base, validated and resolved for one architecture.
#[derive(Debug)]
struct Model {
    profile: &'static str,
    arch: TargetArch,
    default_errno: i32,
    allowed: BTreeMap<i64, Allowed>,
    denied: Vec<Denial>,
}

impl Model {
    fn load(profile: SeccompProfile) -> Result<Self, SeccompError> {
        Self::from_json(profile.name(), profile.data(), std::env::consts::ARCH)
    }

    /// `text` is the profile's JSON; an `extends` names an embedded profile.
    fn from_json(profile: &'static str, text: &str, arch: &str) -> Result<Self, SeccompError> {
        let parse = |text: &str| {
            serde_json::from_str::<RawProfile>(text)
                .map_err(|source| SeccompError::Parse { profile, source })
        };
        let bad = |at: &str, problem| SeccompError::BadData {
            profile,
            at: at.to_owned(),
            problem,
        };
        let top = parse(text)?;
        // (data file, its data, whether another profile extends it)
        let layers = match &top.extends {
            None => vec![(profile, top, false)],
            Some(name) => {
                let base = SeccompProfile::from_name(name)
                    .ok_or_else(|| bad("extends", DataProblem::UnknownBase(name.clone())))?;
                let base_data = parse(base.data())?;
                if base_data.extends.is_some() {
                    return Err(bad("extends", DataProblem::NestedExtends));
                }
                if !top.arches.is_empty() {
                    return Err(bad("arches", DataProblem::NotInExtension("arches")));
                }
                if top.default_errno.is_some() {
                    return Err(bad(
                        "default_errno",
                        DataProblem::NotInExtension("default_errno"),
                    ));
                }
                vec![(base.name(), base_data, true), (profile, top, false)]
            }
        };
        let base = &layers[0].1;
        let unsupported = || SeccompError::UnsupportedArch {
            profile,
            arch: arch.to_owned(),
            supported: base.arches.clone(),
        };
        if !base.arches.iter().any(|a| a == arch) {
            return Err(unsupported());
        }
        let table = syscall_table(arch).ok_or_else(unsupported)?;
        let target = TargetArch::try_from(arch).map_err(|_| unsupported())?;
        let default_errno = base
            .default_errno
            .as_deref()
            .ok_or_else(|| bad("default_errno", DataProblem::Missing("default_errno")))
            .and_then(|e| errno(e).map_err(|p| bad("default_errno", p)))?;

        let resolve = |at: &str, name: &str| {
            table
                .get(name)
                .copied()
                .ok_or_else(|| SeccompError::UnknownSyscall {
                    profile,
                    at: at.to_owned(),
                    name: name.to_owned(),
                    arch: arch.to_owned(),
                })
        };
        let here = |arches: &Option<Vec<String>>| {
            arches.as_ref().is_none_or(|a| a.iter().any(|x| x == arch))
        };

        // Allowed: the base's entries, then the extension's.
        let mut allowed: BTreeMap<i64, Allowed> = BTreeMap::new();
        let mut overridden: HashSet<String> = HashSet::new();
        for (file, data, is_base) in &layers {
            for (i, entry) in data.allowed.iter().enumerate() {
                let at = format!("{file}.json allowed[{i}]");
                check_entry(&entry.reason, &entry.names).map_err(|p| bad(&at, p))?;
                let rules = entry
                    .rules
                    .iter()
                    .map(|rule| {
                        if rule.is_empty() {
                            return Err(DataProblem::EmptyRule);
                        }
                        rule.iter().map(Cond::parse).collect()
                    })
                    .collect::<Result<Vec<Vec<Cond>>, _>>()
                    .map_err(|p| bad(&at, p))?;
                if !here(&entry.arches) {
                    continue;
                }
                for name in &entry.names {
                    let nr = resolve(&at, name)?;
                    if !is_base && layers.len() > 1 {
                        overridden.insert(name.clone());
                    }
                    let Some(existing) = allowed.get_mut(&nr) else {
                        allowed.insert(
                            nr,
                            Allowed {
                                name: name.clone(),
                                file,
                                at: at.clone(),
                                rules: (!rules.is_empty()).then(|| rules.clone()),
                            },
                        );
                        continue;
                    };
                    let same_file = existing.file == *file;
                    match (&mut existing.rules, rules.is_empty()) {
                        // More rules for a rule-restricted call (personality's values).
                        (Some(existing_rules), false) => existing_rules.extend(rules.clone()),
                        // The extension lifts the base's restriction (or repeats its grant).
                        (_, true) if !same_file => existing.rules = None,
                        (None, false) if !same_file => {}
                        _ => return Err(bad(&at, DataProblem::Duplicate(name.clone()))),
                    }
                    existing.file = file;
                    existing.at.clone_from(&at);
                }
            }
        }

        // Denied: the base's entries minus what the extension allows, then the extension's.
        let mut denied = Vec::new();
        for (file, data, is_base) in &layers {
            for (i, entry) in data.denied.iter().enumerate() {
                let at = format!("{file}.json denied[{i}]");
                let denial = parse_denial(entry).map_err(|p| bad(&at, p))?;
                if !here(&entry.arches) {
                    continue;
                }
                for name in &entry.names {
                    if *is_base && overridden.contains(name) {
                        continue;
                    }
                    let (errno, refusal, probe_args) = denial.clone();
                    denied.push(Denial {
                        name: name.clone(),
                        nr: resolve(&at, name)?,
                        errno,
                        reason: entry.reason.clone(),
                        at: at.clone(),
                        refusal,
                        probe_args,
                    });
                }
            }
        }

        let model = Self {
            profile,
            arch: target,
            default_errno,
            allowed,
            denied,
        };
        model.check(&table)?;
        Ok(model)
    }

    /// Checks across entries: overlaps, conditional refusals, calls kiln needs.
    fn check(&self, table: &HashMap<&'static str, i64>) -> Result<(), SeccompError> {
        let bad = |at: &str, problem| SeccompError::BadData {
            profile: self.profile,
            at: at.to_owned(),
            problem,
        };
        let mut seen = HashSet::new();
        for d in &self.denied {
            if !seen.insert(d.nr) {
                return Err(bad(&d.at, DataProblem::Duplicate(d.name.clone())));
            }
            let allowed = self.allowed.get(&d.nr);
            match (&d.refusal, allowed) {
                (Refusal::Always, Some(a)) => {
                    return Err(SeccompError::Overlap {
                        profile: self.profile,
                        name: d.name.clone(),
                        allowed_at: a.at.clone(),
                        denied_at: d.at.clone(),
                    });
                }
                (Refusal::Always, None) => {}
                (
                    Refusal::OutsideAllowedRules,
                    Some(Allowed {
                        rules: Some(rules), ..
                    }),
                ) => {
                    if d.errno != self.default_errno {
                        return Err(bad(&d.at, DataProblem::NotDefaultErrno(d.name.clone())));
                    }
                    if rules
                        .iter()
                        .any(|r| r.iter().all(|c| c.matches(&d.probe_args)))
                    {
                        return Err(bad(&d.at, DataProblem::ProbeAllowed(d.name.clone())));
                    }
                }
                (Refusal::OutsideAllowedRules, _) => {
                    return Err(bad(&d.at, DataProblem::NoAllowRules(d.name.clone())));
                }
                (Refusal::When(when), _) => {
                    if !when.iter().all(|c| c.matches(&d.probe_args)) {
                        return Err(bad(&d.at, DataProblem::ProbeNotRefused(d.name.clone())));
                    }
                }
            }
        }
        for &(name, why) in REQUIRED {
            let refused = || bad("allowed", DataProblem::Required(name, why));
            let nr = table.get(name).ok_or_else(refused)?;
            let unconditional = self.allowed.get(nr).is_some_and(|a| a.rules.is_none());
            let overridden = self
                .denied
                .iter()
                .any(|d| d.nr == *nr && d.in_errno_filter(self.default_errno));
            if !unconditional || overridden {
                return Err(refused());
            }
        }
        Ok(())
    }

    fn compile(&self) -> Result<Filters, SeccompError> {
        let compile_err = |filter: &str| {
            let filter = filter.to_owned();
            move |source| SeccompError::Compile {
                profile: self.profile,
                filter,
                source,
            }
        };
        let mut allow_rules = BTreeMap::new();
        for (nr, a) in &self.allowed {
            let rules = match &a.rules {
                None => Vec::new(),
                Some(rules) => rules
                    .iter()
                    .map(|r| rule(r))
                    .collect::<Result<_, _>>()
                    .map_err(compile_err("allow-list"))?,
            };
            allow_rules.insert(*nr, rules);
        }
        let mut programs = vec![
            program(
                allow_rules,
                SeccompAction::Errno(self.default_errno.unsigned_abs()),
                SeccompAction::Allow,
                self.arch,
            )
            .map_err(compile_err("allow-list"))?,
        ];

        let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
        for d in self
            .denied
            .iter()
            .filter(|d| d.in_errno_filter(self.default_errno))
        {
            let rules = by_errno
                .entry(d.errno)
                .or_default()
                .entry(d.nr)
                .or_default();
            if let Refusal::When(when) = &d.refusal {
                rules.push(rule(when).map_err(compile_err(&d.name))?);
            }
        }
        for (errno, rules) in by_errno {
            let name = format!("errno {errno}");
            programs.push(
                program(
                    rules,
                    SeccompAction::Allow,
                    SeccompAction::Errno(errno.unsigned_abs()),
                    self.arch,
                )
                .map_err(compile_err(&name))?,
            );
        }
        Ok(Filters {
            profile: self.profile,
            programs,
        })
    }
}

/// The parts of a denied entry shared by its names: errno, refusal, probe arguments.
fn parse_denial(entry: &RawDeny) -> Result<(i32, Refusal, [u64; 6]), DataProblem> {
    check_entry(&entry.reason, &entry.names)?;
    let errno = errno(&entry.errno)?;
    let when = entry
        .when
        .iter()
        .map(Cond::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let refusal = match (when.is_empty(), entry.outside_allowed_rules) {
        (true, false) => Refusal::Always,
        (true, true) => Refusal::OutsideAllowedRules,
        (false, false) => Refusal::When(when),
        (false, true) => return Err(DataProblem::WhenAndOutside),
    };
    if entry.probe_args.len() > 6 {
        return Err(DataProblem::TooManyProbeArgs(entry.probe_args.len()));
    }
    let mut probe_args = [0; 6];
    for (slot, raw) in probe_args.iter_mut().zip(&entry.probe_args) {
        *slot = value(raw)?;
    }
    Ok((errno, refusal, probe_args))
}

fn check_entry(reason: &str, names: &[String]) -> Result<(), DataProblem> {
    if reason.trim().is_empty() {
        return Err(DataProblem::EmptyReason);
    }
    if names.is_empty() {
        return Err(DataProblem::NoNames);
    }
    let mut seen = HashSet::new();
    match names.iter().find(|n| !seen.insert(*n)) {
        Some(dup) => Err(DataProblem::Duplicate(dup.clone())),
        None => Ok(()),
    }
}

fn rule(conds: &[Cond]) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(
        conds
            .iter()
            .map(|c| c.to_seccompiler())
            .collect::<Result<_, _>>()?,
    )
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    on_match: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, BackendError> {
    SeccompFilter::new(rules, mismatch, on_match, arch)?.try_into()
}

// ---------------------------------------------------------------------------------------------
// Names: values, errnos, syscalls.

/// A number, or `|`-joined names from [`SYMBOLS`] and `0x` hex numbers.
fn value(raw: &RawValue) -> Result<u64, DataProblem> {
    match raw {
        RawValue::Unsigned(v) => Ok(*v),
        // Two's complement, as a negative `int` or `long` sits in a register.
        RawValue::Signed(v) => Ok(*v as u64),
        RawValue::Symbolic(s) => s.split('|').try_fold(0, |acc, token| {
            let token = token.trim();
            let v = match token.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => SYMBOLS.iter().find(|(n, _)| *n == token).map(|(_, v)| *v),
            };
            v.map(|v| acc | v)
                .ok_or_else(|| DataProblem::UnknownConstant(token.to_owned()))
        }),
    }
}

/// Names the data may use in values (the kernel's, from its UAPI headers).
pub const SYMBOLS: &[(&str, u64)] = &[
    ("CLONE_NEWNS", libc::CLONE_NEWNS as u64),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS as u64),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC as u64),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER as u64),
    ("CLONE_NEWPID", libc::CLONE_NEWPID as u64),
    ("CLONE_NEWNET", libc::CLONE_NEWNET as u64),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP as u64),
    ("CLONE_NEWTIME", libc::CLONE_NEWTIME as u64),
    ("CLONE_FILES", libc::CLONE_FILES as u64),
    ("CLONE_FS", libc::CLONE_FS as u64),
    ("CLONE_SYSVSEM", libc::CLONE_SYSVSEM as u64),
    ("SIGCHLD", libc::SIGCHLD as u64),
    ("AF_UNIX", libc::AF_UNIX as u64),
    ("AF_INET", libc::AF_INET as u64),
    ("AF_INET6", libc::AF_INET6 as u64),
    ("AF_NETLINK", libc::AF_NETLINK as u64),
    ("AF_PACKET", libc::AF_PACKET as u64),
    ("AF_VSOCK", libc::AF_VSOCK as u64),
    ("SOCK_STREAM", libc::SOCK_STREAM as u64),
    ("SOCK_DGRAM", libc::SOCK_DGRAM as u64),
    ("S_IFMT", libc::S_IFMT as u64),
    ("S_IFBLK", libc::S_IFBLK as u64),
    ("S_IFCHR", libc::S_IFCHR as u64),
    ("PTRACE_ATTACH", libc::PTRACE_ATTACH as u64),
    // <linux/personality.h>
    ("PER_LINUX", 0x0000),
    ("PER_LINUX32", 0x0008),
    ("UNAME26", libc::UNAME26 as u64),
    ("ADDR_NO_RANDOMIZE", libc::ADDR_NO_RANDOMIZE as u64),
];

/// The errnos a profile may answer with.
fn errno(name: &str) -> Result<i32, DataProblem> {
    const ERRNOS: &[(&str, i32)] = &[
        ("EPERM", libc::EPERM),
        ("EACCES", libc::EACCES),
        ("ENOSYS", libc::ENOSYS),
        ("EAFNOSUPPORT", libc::EAFNOSUPPORT),
        ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ];
    ERRNOS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, e)| *e)
        .ok_or_else(|| DataProblem::UnknownErrno(name.to_owned()))
}

/// Syscall names to numbers for `arch`, if kiln has its table (only for the architecture it
/// was built for: the numbers come from `libc`'s constants for the target).
fn syscall_table(arch: &str) -> Option<HashMap<&'static str, i64>> {
    #[cfg(target_arch = "x86_64")]
    if arch == "x86_64" {
        let libc_names = X86_64_LIBC
            .iter()
            .map(|&(name, nr)| (name.strip_prefix("SYS_").unwrap_or(name), nr));
        return Some(libc_names.chain(X86_64_EXTRA.iter().copied()).collect());
    }
    let _ = arch;
    None
}

macro_rules! libc_syscalls {
    ($($sys:ident)*) => { &[$((stringify!($sys), libc::$sys)),*] };
}

/// Every x86_64 syscall the `libc` crate has a `SYS_*` constant for.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
static X86_64_LIBC: &[(&str, i64)] = libc_syscalls![
    SYS_read SYS_write SYS_open SYS_close SYS_stat SYS_fstat SYS_lstat SYS_poll SYS_lseek SYS_mmap
    SYS_mprotect SYS_munmap SYS_brk SYS_rt_sigaction SYS_rt_sigprocmask SYS_rt_sigreturn SYS_ioctl
    SYS_pread64 SYS_pwrite64 SYS_readv SYS_writev SYS_access SYS_pipe SYS_select SYS_sched_yield
    SYS_mremap SYS_msync SYS_mincore SYS_madvise SYS_shmget SYS_shmat SYS_shmctl SYS_dup SYS_dup2
    SYS_pause SYS_nanosleep SYS_getitimer SYS_alarm SYS_setitimer SYS_getpid SYS_sendfile SYS_socket
    SYS_connect SYS_accept SYS_sendto SYS_recvfrom SYS_sendmsg SYS_recvmsg SYS_shutdown SYS_bind
    SYS_listen SYS_getsockname SYS_getpeername SYS_socketpair SYS_setsockopt SYS_getsockopt
    SYS_clone SYS_fork SYS_vfork SYS_execve SYS_exit SYS_wait4 SYS_kill SYS_uname SYS_semget
    SYS_semop SYS_semctl SYS_shmdt SYS_msgget SYS_msgsnd SYS_msgrcv SYS_msgctl SYS_fcntl SYS_flock
    SYS_fsync SYS_fdatasync SYS_truncate SYS_ftruncate SYS_getdents SYS_getcwd SYS_chdir SYS_fchdir
    SYS_rename SYS_mkdir SYS_rmdir SYS_creat SYS_link SYS_unlink SYS_symlink SYS_readlink SYS_chmod
    SYS_fchmod SYS_chown SYS_fchown SYS_lchown SYS_umask SYS_gettimeofday SYS_getrlimit
    SYS_getrusage SYS_sysinfo SYS_times SYS_ptrace SYS_getuid SYS_syslog SYS_getgid SYS_setuid
    SYS_setgid SYS_geteuid SYS_getegid SYS_setpgid SYS_getppid SYS_getpgrp SYS_setsid SYS_setreuid
    SYS_setregid SYS_getgroups SYS_setgroups SYS_setresuid SYS_getresuid SYS_setresgid
    SYS_getresgid SYS_getpgid SYS_setfsuid SYS_setfsgid SYS_getsid SYS_capget SYS_capset
    SYS_rt_sigpending SYS_rt_sigtimedwait SYS_rt_sigqueueinfo SYS_rt_sigsuspend SYS_sigaltstack
    SYS_utime SYS_mknod SYS_uselib SYS_personality SYS_ustat SYS_statfs SYS_fstatfs SYS_sysfs
    SYS_getpriority SYS_setpriority SYS_sched_setparam SYS_sched_getparam SYS_sched_setscheduler
    SYS_sched_getscheduler SYS_sched_get_priority_max SYS_sched_get_priority_min
    SYS_sched_rr_get_interval SYS_mlock SYS_munlock SYS_mlockall SYS_munlockall SYS_vhangup
    SYS_modify_ldt SYS_pivot_root SYS__sysctl SYS_prctl SYS_arch_prctl SYS_adjtimex SYS_setrlimit
    SYS_chroot SYS_sync SYS_acct SYS_settimeofday SYS_mount SYS_umount2 SYS_swapon SYS_swapoff
    SYS_reboot SYS_sethostname SYS_setdomainname SYS_iopl SYS_ioperm SYS_init_module
    SYS_delete_module SYS_quotactl SYS_nfsservctl SYS_getpmsg SYS_putpmsg SYS_afs_syscall
    SYS_tuxcall SYS_security SYS_gettid SYS_readahead SYS_setxattr SYS_lsetxattr SYS_fsetxattr
    SYS_getxattr SYS_lgetxattr SYS_fgetxattr SYS_listxattr SYS_llistxattr SYS_flistxattr
    SYS_removexattr SYS_lremovexattr SYS_fremovexattr SYS_tkill SYS_time SYS_futex
    SYS_sched_setaffinity SYS_sched_getaffinity SYS_set_thread_area SYS_io_setup SYS_io_destroy
    SYS_io_getevents SYS_io_submit SYS_io_cancel SYS_get_thread_area SYS_lookup_dcookie
    SYS_epoll_create SYS_epoll_ctl_old SYS_epoll_wait_old SYS_remap_file_pages SYS_getdents64
    SYS_set_tid_address SYS_restart_syscall SYS_semtimedop SYS_fadvise64 SYS_timer_create
    SYS_timer_settime SYS_timer_gettime SYS_timer_getoverrun SYS_timer_delete SYS_clock_settime
    SYS_clock_gettime SYS_clock_getres SYS_clock_nanosleep SYS_exit_group SYS_epoll_wait
    SYS_epoll_ctl SYS_tgkill SYS_utimes SYS_vserver SYS_mbind SYS_set_mempolicy SYS_get_mempolicy
    SYS_mq_open SYS_mq_unlink SYS_mq_timedsend SYS_mq_timedreceive SYS_mq_notify SYS_mq_getsetattr
    SYS_kexec_load SYS_waitid SYS_add_key SYS_request_key SYS_keyctl SYS_ioprio_set SYS_ioprio_get
    SYS_inotify_init SYS_inotify_add_watch SYS_inotify_rm_watch SYS_migrate_pages SYS_openat
    SYS_mkdirat SYS_mknodat SYS_fchownat SYS_futimesat SYS_newfstatat SYS_unlinkat SYS_renameat
    SYS_linkat SYS_symlinkat SYS_readlinkat SYS_fchmodat SYS_faccessat SYS_pselect6 SYS_ppoll
    SYS_unshare SYS_set_robust_list SYS_get_robust_list SYS_splice SYS_tee SYS_sync_file_range
    SYS_vmsplice SYS_move_pages SYS_utimensat SYS_epoll_pwait SYS_signalfd SYS_timerfd_create
    SYS_eventfd SYS_fallocate SYS_timerfd_settime SYS_timerfd_gettime SYS_accept4 SYS_signalfd4
    SYS_eventfd2 SYS_epoll_create1 SYS_dup3 SYS_pipe2 SYS_inotify_init1 SYS_preadv SYS_pwritev
    SYS_rt_tgsigqueueinfo SYS_perf_event_open SYS_recvmmsg SYS_fanotify_init SYS_fanotify_mark
    SYS_prlimit64 SYS_name_to_handle_at SYS_open_by_handle_at SYS_clock_adjtime SYS_syncfs
    SYS_sendmmsg SYS_setns SYS_getcpu SYS_process_vm_readv SYS_process_vm_writev SYS_kcmp
    SYS_finit_module SYS_sched_setattr SYS_sched_getattr SYS_renameat2 SYS_seccomp SYS_getrandom
    SYS_memfd_create SYS_kexec_file_load SYS_bpf SYS_execveat SYS_userfaultfd SYS_membarrier
    SYS_mlock2 SYS_copy_file_range SYS_preadv2 SYS_pwritev2 SYS_pkey_mprotect SYS_pkey_alloc
    SYS_pkey_free SYS_statx SYS_rseq SYS_pidfd_send_signal SYS_io_uring_setup SYS_io_uring_enter
    SYS_io_uring_register SYS_open_tree SYS_move_mount SYS_fsopen SYS_fsconfig SYS_fsmount
    SYS_fspick SYS_pidfd_open SYS_clone3 SYS_close_range SYS_openat2 SYS_pidfd_getfd SYS_faccessat2
    SYS_process_madvise SYS_epoll_pwait2 SYS_mount_setattr SYS_quotactl_fd
    SYS_landlock_create_ruleset SYS_landlock_add_rule SYS_landlock_restrict_self SYS_memfd_secret
    SYS_process_mrelease SYS_futex_waitv SYS_set_mempolicy_home_node SYS_fchmodat2 SYS_mseal
];

/// x86_64 syscalls the `libc` crate has no constant for, numbered as in the kernel's
/// `arch/x86/entry/syscalls/syscall_64.tbl` (syscall numbers never change).
#[cfg(target_arch = "x86_64")]
static X86_64_EXTRA: &[(&str, i64)] = &[
    ("create_module", 174),
    ("get_kernel_syms", 177),
    ("query_module", 178),
    ("io_pgetevents", 333),
    ("uretprobe", 335),
    ("cachestat", 451),
    ("map_shadow_stack", 453),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
    ("statmount", 457),
    ("listmount", 458),
    ("lsm_get_self_attr", 459),
    ("lsm_set_self_attr", 460),
    ("lsm_list_modules", 461),
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
    ("open_tree_attr", 467),
    ("file_getattr", 468),
    ("file_setattr", 469),
    ("listns", 470),
];

#[cfg(test)]
mod tests {
    use std::ffi::{CString, c_int};
    use std::ptr::{null, null_mut};
    use std::sync::{Mutex, MutexGuard};
    use std::time::Instant;

    use seccompiler::sock_filter;

    use super::SeccompProfile::{Default, Insecure};
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
        let other_arch =
            load_test(&profile_json("", "").replace(r#"["x86_64"]"#, r#"["riscv64"]"#));
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
                && (libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || apply(filters).is_err())
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
                let filtered =
                    in_child(ISOLATE, Some(&filters), || raw_syscall(d.nr, d.probe_args))?;
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
        assert!(
            matches!(probe("clone", [sigchld, 0, 0, 0, 0, 0])?, Outcome::Returned(pid) if pid > 0)
        );
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
}
