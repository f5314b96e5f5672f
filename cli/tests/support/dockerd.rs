//! A private dockerd for differential tests: started on its own socket, data root and exec
//! root inside a temporary directory, with no bridge, no iptables changes and a loopback-only
//! dead proxy (so any accidental registry access fails without leaving the machine), and
//! stopped (SIGTERM, then SIGKILL) when dropped.
//!
//! Self-contained (std + tempfile) so that any test crate can include it with
//! `#[path = "support/dockerd.rs"] mod dockerd;`.
//!
//! The Docker CLI used is Debian's `/usr/bin/docker` (20.10, which drives dockerd's embedded
//! BuildKit itself with `DOCKER_BUILDKIT=1`) unless `KILN_DOCKER_CLI` names another; a newer
//! CLI elsewhere on `PATH` would need the buildx plugin.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A running private dockerd.
#[derive(Debug)]
pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    sock: PathBuf,
    cli: PathBuf,
}

/// Why a dockerd could not be had; the text is printed as `skipped: ...`.
pub type SkipReason = String;

fn find_in_path(name: &str) -> Option<PathBuf> {
    for p in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let c = Path::new(p).join(name);
        if c.is_file() {
            return Some(c);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|c| c.is_file())
}

impl Dockerd {
    /// Starts dockerd and waits (up to 60 s) until it answers. `Err` is a reason to skip.
    pub fn start() -> Result<Dockerd, SkipReason> {
        let dockerd = find_in_path("dockerd").ok_or("dockerd not installed")?;
        let cli = match std::env::var_os("KILN_DOCKER_CLI") {
            Some(c) => PathBuf::from(c),
            None if Path::new("/usr/bin/docker").is_file() => PathBuf::from("/usr/bin/docker"),
            None => find_in_path("docker").ok_or("docker CLI not installed")?,
        };
        // Short path: the socket path must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("kdd")
            .tempdir_in("/tmp")
            .map_err(|e| format!("tempdir: {e}"))?;
        let d = dir.path();
        let sock = d.join("docker.sock");
        let config = d.join("daemon.json");
        fs::write(&config, "{}\n").map_err(|e| format!("write daemon.json: {e}"))?;
        fs::create_dir_all(d.join("cli")).map_err(|e| format!("mkdir: {e}"))?;
        let log = fs::File::create(d.join("dockerd.log")).map_err(|e| format!("log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let mut cmd = Command::new(&dockerd);
        cmd.arg(format!("--host=unix://{}", sock.display()))
            .arg(format!("--data-root={}", d.join("data").display()))
            .arg(format!("--exec-root={}", d.join("exec").display()))
            .arg(format!("--pidfile={}", d.join("dockerd.pid").display()))
            .arg(format!("--config-file={}", config.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--userland-proxy=false",
                "--log-level=warn",
            ])
            // Any registry access goes to a closed loopback port and fails there.
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("http_proxy", "http://127.0.0.1:9")
            .env("https_proxy", "http://127.0.0.1:9")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd
            .spawn()
            .map_err(|e| format!("dockerd cannot start: spawn {}: {e}", dockerd.display()))?;
        let mut me = Dockerd {
            dir,
            child: Some(child),
            sock,
            cli,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = me.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                me.child = None;
                return Err(format!(
                    "dockerd cannot start: exited with {status}: {}",
                    me.log_tail(15)
                ));
            }
            if me.sock.exists() {
                let out = me.docker().arg("version").output();
                if matches!(&out, Ok(o) if o.status.success()) {
                    return Ok(me);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "dockerd cannot start: not ready after 60 s: {}",
                    me.log_tail(15)
                ));
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// The last `n` lines of dockerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A scratch directory that lives as long as this dockerd.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `docker` command against this daemon, with BuildKit on and a private CLI config.
    pub fn docker(&self) -> Command {
        let mut c = Command::new(&self.cli);
        c.arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .env("DOCKER_BUILDKIT", "1")
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .env("BUILDKIT_PROGRESS", "plain")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .stdin(Stdio::null());
        c
    }

    /// Runs `docker <args>` and returns its output (never fails: spawn errors become a failed
    /// output with the error on stderr).
    pub fn run(&self, args: &[&str]) -> Output {
        run_output(self.docker().args(args))
    }

    /// `docker load -i <archive>`.
    pub fn load(&self, archive: &Path) -> Result<(), String> {
        let o = run_output(self.docker().arg("load").arg("-i").arg(archive));
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "docker load: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }

    /// `docker build --network=none --progress plain <args> <context>` with BuildKit.
    /// RUN steps get no network (the daemon has no bridge anyway).
    pub fn build(&self, args: &[String], context: &Path) -> Output {
        run_output(
            self.docker()
                .args(["build", "--network=none", "--progress", "plain"])
                .args(args)
                .arg(context),
        )
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        // dockerd's own containerd would outlive a killed dockerd: end it by its pid file.
        let pidfile = self.dir.path().join("exec/containerd/containerd.pid");
        if let Ok(pid) = fs::read_to_string(pidfile) {
            let pid = pid.trim();
            if !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        // Leftover mounts under the data root would make the temp dir unremovable.
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.path().join("data"))
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion; a spawn error becomes a failed `Output`.
pub fn run_output(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            use std::os::unix::process::ExitStatusExt;
            Output {
                status: std::process::ExitStatus::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("cannot run {cmd:?}: {e}").into_bytes(),
            }
        }
    }
}
