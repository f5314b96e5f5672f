//! The engine's side: start the init, hand it the spec, collect the result.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::Arc;

use crate::INIT_ARG;
use crate::cgroup::{CgroupError, Outcome, StepCgroup};
use crate::init::{Confinement, ERROR_FD, InitFailure, InitSpec, Report};
use crate::spec::StepSpec;

/// A failure to run a step (not the step's own nonzero exit, which is a [`StepExit`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    #[error("sandbox: encoding the step spec: {source}")]
    EncodeSpec { source: serde_json::Error },
    #[error("sandbox: creating the error pipe: {source}")]
    ErrorPipe { source: std::io::Error },
    #[error("sandbox: starting the init {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("sandbox: sending the spec to the init: {source}")]
    SendSpec { source: std::io::Error },
    #[error("sandbox: waiting for the init: {source}")]
    Wait { source: std::io::Error },
    #[error("sandbox: reading the init's error report: {source}")]
    ReadReport { source: std::io::Error },
    #[error("sandbox: unreadable error report from the init: {source}")]
    BadReport { source: serde_json::Error },
    /// The step's cgroup could not be made, limited or removed.
    #[error("sandbox: step cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    /// The init reported a set-up failure: which step, and why.
    #[error("sandbox: {0}")]
    Init(InitFailure),
}

/// How the step's command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepExit {
    /// Exit code; 128+signal when the command was killed by a signal.
    pub code: i32,
    /// The step ran longer than [`StepSpec::timeout`] and was killed.
    pub timed_out: bool,
    /// What the step's cgroup saw: an OOM kill, the pids limit reached, peak memory.
    pub resources: Outcome,
    /// How the init confined the command (what the kernel enforced), for the provenance.
    /// `None` only if the report was lost (the init always sends it before exec).
    pub confinement: Option<Confinement>,
}

/// Starts steps by re-executing `init_exe` in init mode.
#[derive(Debug, Clone)]
pub struct Sandbox {
    init_exe: PathBuf,
}

impl Sandbox {
    /// `init_exe` must call [`crate::init_main_if_requested`] first thing in `main`
    /// (usually `std::env::current_exe()`).
    pub fn new(init_exe: PathBuf) -> Self {
        Self { init_exe }
    }

    /// Start one step. Blocking (call it from `spawn_blocking` in async code).
    pub fn spawn(&self, spec: &StepSpec) -> Result<RunningStep, SandboxError> {
        // The step's own cgroup, limited before anything runs in it; the init is moved into
        // it below, before it reads its spec.
        let cgroup = Arc::new(StepCgroup::create(&next_cgroup_name(), &spec.limits)?);
        let init_spec = InitSpec {
            spec: spec.clone(),
            cgroup: cgroup.procs_files(),
        };
        // Zeroed when dropped, on every path: the spec may hold secret values.
        let json = crate::SecretBytes::new(
            serde_json::to_vec(&init_spec).map_err(|source| SandboxError::EncodeSpec { source })?,
        );
        let (report_r, report_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| SandboxError::ErrorPipe { source: e.into() })?;
        // Above the stdio fds, so the child's stdio set-up can not clobber it.
        let report_w = rustix::io::fcntl_dupfd_cloexec(&report_w, ERROR_FD)
            .map_err(|e| SandboxError::ErrorPipe { source: e.into() })?;
        let raw_w = report_w.as_raw_fd();
        let mut cmd = Command::new(&self.init_exe);
        cmd.arg(INIT_ARG)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and calls only dup2 and
        // fcntl, which are async-signal-safe and allocate nothing. `raw_w` is open in the
        // child (fork copies the table; it is CLOEXEC, so only closed at exec). dup2 onto
        // ERROR_FD gives a copy without FD_CLOEXEC; when raw_w already is ERROR_FD, dup2 is a
        // no-op and FD_CLOEXEC is cleared explicitly.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if raw_w == ERROR_FD {
                    if libc::fcntl(ERROR_FD, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw_w, ERROR_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            exe: self.init_exe.clone(),
            source,
        })?;
        drop(report_w);
        // Open the pidfd before anything can reap the child, so it names this process forever.
        let pidfd = rustix::process::Pid::from_child(&child);
        let pidfd = match rustix::process::pidfd_open(pidfd, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SandboxError::Spawn {
                    exe: self.init_exe.clone(),
                    source: e.into(),
                });
            }
        };
        // Into the step's cgroup from here, while the init is still loading: the move can wait
        // for an RCU grace period, and the init does nothing before it has read the spec
        // below (it then checks its membership and joins itself if needed).
        if let Err(e) = crate::cgroup::move_into_cgroups(&cgroup.procs_files(), child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.into());
        }
        if let Some(mut stdin) = child.stdin.take() {
            // A broken pipe means the init died early; `wait` reports why.
            match stdin.write_all(json.expose()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SandboxError::SendSpec { source: e });
                }
                _ => {}
            }
        }
        Ok(RunningStep {
            child,
            report: report_r,
            killer: Killer {
                pidfd,
                cgroup: Arc::downgrade(&cgroup),
            },
            cgroup,
            timeout: spec.timeout,
        })
    }
}

/// A step that is running.
#[derive(Debug)]
pub struct RunningStep {
    child: Child,
    report: OwnedFd,
    killer: Killer,
    cgroup: Arc<StepCgroup>,
    timeout: Option<std::time::Duration>,
}

impl RunningStep {
    /// The step's stdout (once). Read it on another thread than the one that calls `wait`;
    /// an untaken pipe is closed by `wait`.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The step's stderr (once); as [`RunningStep::take_stdout`].
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// The init's pid (outside the step's PID namespace). SIGTERM, SIGINT, SIGHUP and SIGQUIT
    /// sent to it are forwarded to the step's PID 1.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// A handle that kills the step from any thread.
    pub fn killer(&self) -> Killer {
        self.killer.clone()
    }

    /// Wait for the step. `Ok` with the command's exit code (zero or not); `Err` when the
    /// sandbox could not be set up.
    pub fn wait(mut self) -> Result<StepExit, SandboxError> {
        drop(self.child.stdout.take());
        drop(self.child.stderr.take());
        // The watchdog: kills the step when its time is up, unless told it ended first.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = self.timeout.map(|limit| {
            let killer = self.killer.clone();
            std::thread::spawn(move || match done_rx.recv_timeout(limit) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    killer.kill();
                    true
                }
                _ => false,
            })
        });
        let status = self.child.wait();
        drop(done_tx);
        let timed_out = watchdog.is_some_and(|w| w.join().unwrap_or(false));
        // Read the counters, then make sure nothing of the step is left (a root step could
        // have disarmed its parent-death signal and outlived the init), then remove the cgroup.
        let resources = self.cgroup.outcome();
        let cleanup = match Arc::try_unwrap(self.cgroup) {
            Ok(cgroup) => cgroup.remove(),
            // A Killer is killing right now; the last reference's Drop removes it.
            Err(shared) => shared.kill_all(),
        };
        let status = status.map_err(|source| SandboxError::Wait { source })?;
        cleanup?;
        // Every writer of the report pipe is gone now: the init exited, its PID 1 child with it
        // (or earlier: the copy closes at exec).
        let mut report = Vec::new();
        std::fs::File::from(self.report)
            .read_to_end(&mut report)
            .map_err(|source| SandboxError::ReadReport { source })?;
        let mut confinement = None;
        for line in report.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice(line)
                .map_err(|source| SandboxError::BadReport { source })?
            {
                Report::Confined(c) => confinement = Some(c),
                Report::Failed(failure) => return Err(SandboxError::Init(failure)),
            }
        }
        let code = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => crate::init::SETUP_FAILED,
        };
        Ok(StepExit {
            code,
            timed_out,
            resources,
            confinement,
        })
    }
}

/// Kills a running step: SIGKILL to the init (through a pidfd, so never a recycled pid),
/// whose PID-1 child dies with it (`PR_SET_PDEATHSIG`), and with that the whole PID namespace;
/// then every process left in the step's cgroup (a root step can disarm the death signal).
#[derive(Debug, Clone)]
pub struct Killer {
    pidfd: Arc<OwnedFd>,
    cgroup: std::sync::Weak<StepCgroup>,
}

impl Killer {
    /// Send SIGKILL. Killing a step that already ended is not an error.
    pub fn kill(&self) {
        let _ = rustix::process::pidfd_send_signal(&*self.pidfd, rustix::process::Signal::KILL);
        if let Some(cgroup) = self.cgroup.upgrade() {
            let _ = cgroup.kill_all();
        }
    }

    /// The CPU time the step has used so far ([`StepCgroup::cpu_time`]); `None` once the
    /// step's cgroup is gone or when the kernel does not account it.
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        self.cgroup.upgrade().and_then(|c| c.cpu_time())
    }
}

/// A cgroup name unique on this host: this process's pid, a random tag (a recycled pid of a
/// dead kiln whose cgroups were left behind can not collide) and a counter.
pub(crate) fn next_cgroup_name() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TAG: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tag = *TAG.get_or_init(|| {
        let mut b = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
        u32::from_le_bytes(b)
    });
    format!(
        "step-{}-{tag:08x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
