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

    /// The profile's JSON data as embedded in kiln (its sha256 is what provenance records).
    pub fn data(self) -> &'static str {
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

mod table;
#[cfg(test)]
mod tests;

pub use table::SYMBOLS;
use table::{errno, syscall_table, value};
