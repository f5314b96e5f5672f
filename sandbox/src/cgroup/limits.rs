//! What a step may use: [`Limits`], [`CpuLimit`], and the defaults.

use serde::{Deserialize, Serialize};

use super::CgroupError;

/// Per-step resource limits. `None` is "no limit" for that resource.
///
/// [`Default`] is [`Limits::defaults`] (a pids and a memory limit), not "unlimited", so that
/// `Limits { cpu: …, ..Default::default() }` can never drop a limit by accident; "no limits at
/// all" is spelled [`Limits::unlimited`]. Likewise in JSON (config files, flags), a missing
/// field takes its default and only an explicit `null` removes a limit:
/// `{"cpu": {"quota_us": 150000, "period_us": 100000}}` keeps the default memory and pids limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Memory (RAM; swap is not allowed on top: see the module docs). At least
    /// [`Limits::MIN_MEMORY_BYTES`].
    pub memory_bytes: Option<u64>,
    /// Tasks: processes and threads, the sandbox's own init processes included. At least 1.
    pub pids: Option<u64>,
    /// CPU bandwidth.
    pub cpu: Option<CpuLimit>,
}

impl Default for Limits {
    /// The same as [`Limits::defaults`] (reads `/proc/meminfo`).
    fn default() -> Self {
        Self::defaults()
    }
}

impl Limits {
    /// The default pids limit: far above any sane build (`make -j`, a JVM or `rustc` with a
    /// few hundred threads), far below the host's pid space (`kernel.pid_max` is at least
    /// 32768), so a fork bomb stops at 4096 tasks while the host can still fork.
    pub const DEFAULT_PIDS: u64 = 4096;
    /// The default memory limit when `/proc/meminfo` can not be read (fail closed: a limit
    /// that may be too small, never none).
    pub const FALLBACK_MEMORY_BYTES: u64 = 1 << 30;
    /// The smallest memory limit accepted (Docker's minimum too): below that even the
    /// sandbox's init and a shell are OOM-killed before the step does anything.
    pub const MIN_MEMORY_BYTES: u64 = 6 << 20;

    /// Sane limits for a build step on this machine:
    /// - pids: [`Limits::DEFAULT_PIDS`];
    /// - memory: half of `MemTotal` (rounded down to a MiB, swap not allowed on top), so a
    ///   memory hog is OOM-killed inside its cgroup while the other half stays for the host,
    ///   kiln and the page cache. Steps live beside kiln's own cgroup, not under it (see the
    ///   module docs), so kiln's own limits do not bound them: this default does;
    /// - CPU: none. A CPU hog can not take the host down (the scheduler still shares the CPUs
    ///   fairly between the step and everything else), while a quota would slow down the
    ///   builds that legitimately use every core, for no safety gain.
    pub fn defaults() -> Self {
        Self::defaults_for(mem_total().unwrap_or(2 * Self::FALLBACK_MEMORY_BYTES))
    }

    /// [`Limits::defaults`] for a machine with `mem_total` bytes of RAM.
    pub fn defaults_for(mem_total: u64) -> Self {
        let half = (mem_total / 2) & !((1 << 20) - 1);
        Self {
            memory_bytes: Some(half.max(Self::MIN_MEMORY_BYTES)),
            pids: Some(Self::DEFAULT_PIDS),
            cpu: None,
        }
    }

    /// The limits of the shared `kiln/` parent cgroup, which caps all steps of all builds
    /// together (each step's own default is half the RAM, and builds run steps in parallel):
    /// three quarters of the RAM and half of the kernel's `pid_max`.
    pub fn aggregate() -> Self {
        let mem = mem_total().unwrap_or(2 * Self::FALLBACK_MEMORY_BYTES);
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(32_768);
        Self {
            memory_bytes: Some(((mem / 4) * 3) & !((1 << 20) - 1)),
            pids: Some((pid_max / 2).max(Self::DEFAULT_PIDS)),
            cpu: None,
        }
    }

    /// No limit at all: a fork bomb or a memory hog in the step can take the host down. For
    /// callers that enforce limits some other way.
    pub fn unlimited() -> Self {
        Self {
            memory_bytes: None,
            pids: None,
            cpu: None,
        }
    }

    /// Refuse values the kernel would accept but that make no step runnable (0 pids, a few
    /// bytes of memory) or that it would reject with a less helpful `EINVAL`.
    pub fn validate(&self) -> Result<(), CgroupError> {
        if let Some(m) = self.memory_bytes
            && m < Self::MIN_MEMORY_BYTES
        {
            return Err(CgroupError::InvalidLimit {
                limit: "memory",
                reason: format!(
                    "{m} bytes is below the minimum of {}",
                    Self::MIN_MEMORY_BYTES
                ),
            });
        }
        if self.pids == Some(0) {
            return Err(CgroupError::InvalidLimit {
                limit: "pids",
                reason: "0 (use no limit rather than a limit of 0)".into(),
            });
        }
        if let Some(cpu) = self.cpu {
            cpu.validate()?;
        }
        Ok(())
    }
}

/// CPU bandwidth: at most `quota_us` of CPU time every `period_us` (so `quota/period` CPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuLimit {
    /// 1 ms ≤ quota (the kernel's minimum).
    pub quota_us: u64,
    /// 1 ms ≤ period ≤ 1 s (the kernel's range).
    pub period_us: u64,
}

impl CpuLimit {
    /// The period [`CpuLimit::from_cpus`] uses (the kernel's default, 100 ms).
    pub const DEFAULT_PERIOD_US: u64 = 100_000;
    const MIN_US: u64 = 1_000;
    const MAX_PERIOD_US: u64 = 1_000_000;
    /// More CPUs than any machine kiln runs on; beyond it a quota is no limit.
    const MAX_CPUS: f64 = 16_384.0;

    /// `cpus` CPUs with the default period: 1.5 is 150000/100000. At least 0.01 CPU.
    pub fn from_cpus(cpus: f64) -> Result<Self, CgroupError> {
        let invalid = |reason: &str| CgroupError::InvalidLimit {
            limit: "cpu",
            reason: format!("{cpus} CPUs: {reason}"),
        };
        if !cpus.is_finite() || cpus <= 0.0 {
            return Err(invalid("not a positive number"));
        }
        if cpus > Self::MAX_CPUS {
            return Err(invalid("too many"));
        }
        let quota = (cpus * Self::DEFAULT_PERIOD_US as f64).round();
        if quota < Self::MIN_US as f64 {
            return Err(invalid("below 0.01 CPU"));
        }
        // In range: 1000 ≤ quota ≤ 16384 * 100000, checked above, so the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let quota_us = quota as u64;
        Ok(Self {
            quota_us,
            period_us: Self::DEFAULT_PERIOD_US,
        })
    }

    /// The number of CPUs this is (`quota / period`).
    #[allow(clippy::cast_precision_loss)] // microsecond values far below 2^52
    pub fn cpus(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }

    fn validate(&self) -> Result<(), CgroupError> {
        let invalid = |reason: String| {
            Err(CgroupError::InvalidLimit {
                limit: "cpu",
                reason,
            })
        };
        if !(Self::MIN_US..=Self::MAX_PERIOD_US).contains(&self.period_us) {
            return invalid(format!(
                "period {} µs is outside 1000..=1000000",
                self.period_us
            ));
        }
        if self.quota_us < Self::MIN_US {
            return invalid(format!("quota {} µs is below 1000", self.quota_us));
        }
        Ok(())
    }
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn mem_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&meminfo)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_limit_pids_and_half_the_memory_but_not_the_cpu() {
        let l = Limits::defaults_for(24_684_096 * 1024);
        assert_eq!(l.pids, Some(4096));
        assert_eq!(l.memory_bytes, Some(12_052 << 20));
        assert_eq!(l.cpu, None);
        assert_eq!(
            Limits::defaults_for(1 << 20).memory_bytes,
            Some(Limits::MIN_MEMORY_BYTES)
        );
        // On this machine, whatever its size: some memory limit, never none.
        assert!(Limits::defaults().memory_bytes.is_some());
        assert_eq!(Limits::default(), Limits::defaults());
    }

    #[test]
    fn mem_total_is_read_in_kib() {
        let meminfo = "MemTotal:       24684096 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24_684_096 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn cpus_become_a_quota_over_a_100ms_period() -> Result<(), CgroupError> {
        let c = CpuLimit::from_cpus(1.5)?;
        assert_eq!(
            c,
            CpuLimit {
                quota_us: 150_000,
                period_us: 100_000
            }
        );
        assert!((c.cpus() - 1.5).abs() < 1e-9);
        assert_eq!(CpuLimit::from_cpus(0.01)?.quota_us, 1_000);
        for bad in [0.0, -1.0, 0.001, f64::NAN, f64::INFINITY, 1e9] {
            assert!(CpuLimit::from_cpus(bad).is_err(), "{bad} accepted");
        }
        Ok(())
    }

    #[test]
    fn limits_that_would_make_no_step_runnable_are_refused() {
        let with = |f: fn(&mut Limits)| {
            let mut l = Limits::unlimited();
            f(&mut l);
            l.validate()
        };
        assert!(with(|_| {}).is_ok());
        assert!(with(|l| l.pids = Some(0)).is_err());
        assert!(with(|l| l.pids = Some(1)).is_ok());
        assert!(with(|l| l.memory_bytes = Some(4096)).is_err());
        assert!(with(|l| l.memory_bytes = Some(32 << 20)).is_ok());
        fn cpu(quota_us: u64, period_us: u64) -> CpuLimit {
            CpuLimit {
                quota_us,
                period_us,
            }
        }
        assert!(with(|l| l.cpu = Some(cpu(500, 100_000))).is_err());
        assert!(with(|l| l.cpu = Some(cpu(50_000, 999))).is_err());
        assert!(with(|l| l.cpu = Some(cpu(50_000, 2_000_000))).is_err());
        assert!(with(|l| l.cpu = Some(cpu(250_000, 100_000))).is_ok());
    }

    #[test]
    fn a_missing_field_keeps_its_default_and_only_null_removes_a_limit()
    -> Result<(), serde_json::Error> {
        let l: Limits =
            serde_json::from_str(r#"{"cpu": {"quota_us": 50000, "period_us": 100000}}"#)?;
        assert_eq!(l.pids, Some(Limits::DEFAULT_PIDS));
        assert!(l.memory_bytes.is_some());
        assert_eq!(l.cpu.map(|c| c.quota_us), Some(50_000));
        let l: Limits = serde_json::from_str(r#"{"pids": null, "memory_bytes": null}"#)?;
        assert_eq!(l, Limits::unlimited());
        assert!(serde_json::from_str::<Limits>(r#"{"memroy_bytes": 1}"#).is_err());
        let back: Limits = serde_json::from_str(&serde_json::to_string(&Limits::defaults())?)?;
        assert_eq!(back, Limits::defaults());
        Ok(())
    }
}
