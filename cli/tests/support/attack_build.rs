//! Running one attack build: compiling the probe, running `kiln build` so that a step that
//! misbehaves can not take the test harness with it, and looking for what a build left behind
//! (processes, secrets in its outputs). Included by path from `attacks.rs`.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::fixtures::Env;

pub type R<T> = Result<T, String>;

fn io<T>(what: &str, r: std::io::Result<T>) -> R<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// How long one build may take before it is killed (process group and all).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

/// What a finished build left for the checks.
#[derive(Default)]
pub struct Finished {
    /// Exit code, if kiln exited.
    pub code: Option<i32>,
    /// The signal that killed kiln, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// stdout then stderr.
    pub log: String,
    /// The `-o type=local` tree, when the case asked for outputs.
    pub local: Option<PathBuf>,
    /// The `-o type=oci` tar.
    pub oci: Option<PathBuf>,
    /// Problems found while running (the process-group canary).
    pub errors: Vec<String>,
}

#[path = "../../../sandbox/probe/compile.rs"]
mod compile;

/// The probe, compiled once per test process. `$RUSTC` or `rustc`.
pub fn probe() -> R<&'static Path> {
    static PROBE: OnceLock<R<PathBuf>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            compile::compile_probe(
                &Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-attack-probe"),
            )
        })
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(Clone::clone)
}

/// Quotes one word for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs a prepared `kiln build` command in its own process group (a step that signals its
/// process group can then reach kiln, but never this test), under `script` when `env.tty`,
/// with a canary in kiln's group when `env.pgrp_canary`, killed after [`BUILD_TIMEOUT`].
pub fn run_build(cmd: Command, env: &Env) -> Finished {
    let mut done = Finished::default();
    let mut cmd = if env.tty { under_script(&cmd) } else { cmd };
    let spawned = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            done.errors.push(format!("spawning kiln: {e}"));
            return done;
        }
    };
    let pgid = child.id();
    let mut canary = None;
    if env.pgrp_canary {
        match Command::new("sleep")
            .arg("300")
            .process_group(i32::try_from(pgid).unwrap_or(0))
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(c) => canary = Some(c),
            Err(e) => done
                .errors
                .push(format!("could not start the canary in kiln's group: {e}")),
        }
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() > deadline => {
                done.timed_out = true;
                kill_group(pgid);
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                done.errors.push(format!("waiting for kiln: {e}"));
                kill_group(pgid);
                break None;
            }
        }
    };
    done.code = status.and_then(|s| s.code());
    done.signal = status.and_then(|s| s.signal());
    if let Some(mut c) = canary {
        if !matches!(c.try_wait(), Ok(None)) {
            done.errors.push(
                "a process in kiln's process group (outside the step's PID namespace) was killed: \
                 the step signalled processes outside its sandbox"
                    .into(),
            );
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    // Anything of the build still in its process group is a leak; kill it so it can not
    // disturb the next case (or keep the output pipes open).
    let strays = group_members(pgid);
    if !strays.is_empty() {
        done.errors
            .push(format!("processes of the build outlived it: {strays:?}"));
        kill_group(pgid);
    }
    let (out, out_closed) = out.collect(Duration::from_secs(10));
    let (err, err_closed) = err.collect(Duration::from_secs(10));
    if !(out_closed && err_closed) {
        done.errors
            .push("a process of the build still holds kiln's output open".into());
    }
    done.log = format!("{out}{err}").replace('\r', "");
    done
}

/// `cmd` as a `script` command line, so it runs with a pty as its controlling terminal.
fn under_script(cmd: &Command) -> Command {
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| sh_quote(&a.to_string_lossy()))
        .collect();
    let mut s = Command::new("script");
    s.args(["-qefc", &line.join(" "), "/dev/null"]);
    if let Some(dir) = cmd.get_current_dir() {
        s.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    s
}

/// A pipe read to its end by a thread.
struct Drain {
    buf: Arc<Mutex<Vec<u8>>>,
    closed: mpsc::Receiver<()>,
}

impl Drain {
    /// What was read, and whether the pipe reached its end within `wait`.
    fn collect(self, wait: Duration) -> (String, bool) {
        let closed = self.closed.recv_timeout(wait).is_ok();
        let text = self
            .buf
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        (text, closed)
    }
}

fn drain<T: Read + Send + 'static>(pipe: Option<T>) -> Drain {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let (tx, closed) = mpsc::channel();
    let shared = Arc::clone(&buf);
    std::thread::spawn(move || {
        if let Some(mut p) = pipe {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = p.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = shared.lock() {
                    b.extend_from_slice(&chunk[..n]);
                }
            }
        }
        let _ = tx.send(());
    });
    Drain { buf, closed }
}

fn kill_group(pgid: u32) {
    if let Some(pid) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Live processes whose process group is `pgid`, as "pid comm".
fn group_members(pgid: u32) -> Vec<String> {
    procs()
        .into_iter()
        .filter(|(_, stat)| {
            // stat: "pid (comm) state ppid pgrp …"; comm may contain spaces and parens.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|g| g.parse::<u32>().ok())
                == Some(pgid)
                && !stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .map(|(pid, stat)| format!("{pid} {}", stat.split(')').next().unwrap_or_default()))
        .collect()
}

/// Live processes whose environment holds `needle` (the run's token: every RUN of a stage that
/// declares `ARG TOKEN` has `TOKEN=<token>` in its environment).
pub fn processes_with_env(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    procs()
        .into_iter()
        .filter(|(pid, _)| *pid != me)
        .filter(|(pid, _)| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| contains(&env, needle.as_bytes()))
        })
        .map(|(pid, stat)| format!("{pid} {}", stat.split(')').next().unwrap_or_default()))
        .collect()
}

fn procs() -> Vec<(String, String)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, stat))
        })
        .collect()
}

/// Byte-string search.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every byte the outputs hold, file by file: the local tree's regular files, and the OCI
/// tar's entries with compressed layers expanded. (name, bytes).
pub fn output_blobs(done: &Finished) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Some(dir) = &done.local {
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(e.path()),
                    Ok(t) if t.is_file() => {
                        if let Ok(b) = fs::read(e.path()) {
                            out.push((format!("local:{}", e.path().display()), b));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(tar) = &done.oci
        && let Ok(f) = fs::File::open(tar)
    {
        let mut a = tar::Archive::new(f);
        for mut e in a.entries().into_iter().flatten().flatten() {
            let name = e
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let mut raw = Vec::new();
            if e.read_to_end(&mut raw).is_err() {
                continue;
            }
            let mut plain = Vec::new();
            if raw.starts_with(&[0x1f, 0x8b]) {
                let _ = flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut plain);
            } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                plain = zstd::stream::decode_all(&raw[..]).unwrap_or_default();
            }
            out.push((format!("oci:{name}"), raw));
            if !plain.is_empty() {
                out.push((format!("oci:{name} (uncompressed)"), plain));
            }
        }
    }
    out
}

/// Writes `data` to `path` (a small helper for the probe's self-test).
pub fn write_file(path: &Path, data: &[u8]) -> R<()> {
    io(
        &path.display().to_string(),
        fs::File::create(path).and_then(|mut f| f.write_all(data)),
    )
}

/// Runs a host command, returns (exit code, stdout).
pub fn host_output(cmd: &mut Command) -> R<(i32, String)> {
    let o = io("running a host command", cmd.output())?;
    Ok((
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    ))
}
