//! Helpers of the e2e test: a busybox rootfs fixture and a step runner.

use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use kiln_sandbox::{Rootfs, Sandbox, SandboxError, StepExit, StepSpec};

pub type CaseResult = Result<(), String>;

pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "ls", "hostname", "ip", "mount", "ping", "pwd", "rm", "touch",
    "sleep", "test", "wc", "grep", "stat", "mkdir", "head", "cut", "readlink",
];

pub fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".into());
    }
    if !kiln_sandbox::probe().overlay {
        return Some("overlayfs unavailable".into());
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("/bin/busybox missing".into());
    }
    if !Path::new("/proc/self/ns/pid").exists() {
        return Some("namespaces unavailable".into());
    }
    None
}

/// A busybox lower layer plus upper/work/mountpoint dirs in a temp dir.
pub struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(e)?;
        let f = Self { dir };
        let base = f.path("lower0");
        std::fs::create_dir_all(base.join("bin")).map_err(e)?;
        std::fs::create_dir_all(base.join("etc")).map_err(e)?;
        std::fs::copy("/bin/busybox", base.join("bin/busybox")).map_err(e)?;
        for applet in APPLETS {
            symlink("busybox", base.join("bin").join(applet)).map_err(e)?;
        }
        std::fs::write(
            base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .map_err(e)?;
        std::fs::write(base.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").map_err(e)?;
        for d in ["upper", "work", "mnt"] {
            std::fs::create_dir(f.path(d)).map_err(e)?;
        }
        Ok(f)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn rootfs(&self, lowers: &[&str]) -> Rootfs {
        Rootfs::Overlay {
            lowers: lowers.iter().map(|l| self.path(l)).collect(),
            upper: self.path("upper"),
            work: self.path("work"),
            mountpoint: self.path("mnt"),
        }
    }

    pub fn spec(&self, script: &str) -> StepSpec {
        StepSpec::new(sh(script), self.rootfs(&["lower0"]))
    }
}

pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

pub fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

pub struct Output {
    pub exit: StepExit,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(spec: &StepSpec) -> Result<Result<Output, SandboxError>, String> {
    let exe = std::env::current_exe().map_err(e)?;
    let mut step = match Sandbox::new(exe).spawn(spec) {
        Ok(step) => step,
        Err(err) => return Ok(Err(err)),
    };
    let out = step.take_stdout().ok_or("no stdout")?;
    let err = step.take_stderr().ok_or("no stderr")?;
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (out, err) = (read_all(Box::new(out)), read_all(Box::new(err)));
    let result = step.wait();
    let stdout = out.join().map_err(|_| "stdout reader panicked")?;
    let stderr = err.join().map_err(|_| "stderr reader panicked")?;
    Ok(result.map(|exit| Output {
        exit,
        stdout,
        stderr,
    }))
}

/// Run and require exit code 0.
pub fn run_ok(spec: &StepSpec) -> Result<String, String> {
    let out = run(spec)?.map_err(e)?;
    if out.exit.code != 0 {
        return Err(format!(
            "exit {}; stdout {:?}; stderr {:?}",
            out.exit.code, out.stdout, out.stderr
        ));
    }
    Ok(out.stdout)
}

pub fn expect_eq(got: &str, want: &str) -> CaseResult {
    if got == want {
        Ok(())
    } else {
        Err(format!("got {got:?}, want {want:?}"))
    }
}

#[path = "../../probe/compile.rs"]
mod compile;

/// The attack probe (`sandbox/probe/attack_probe.rs`), compiled static into this test's temp
/// dir, so it runs in a busybox root without a libc.
pub fn probe() -> Result<PathBuf, String> {
    compile::compile_probe(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-sandbox-probe"))
}
