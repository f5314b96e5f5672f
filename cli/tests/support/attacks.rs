//! Host-side fixtures of the attack vectors (`vectors/attacks/*/case.json` `needs`).
//!
//! A fixture prepares something on the host before the build (a listener, a decoy key, a
//! process), hands its coordinates to the Dockerfile as build-args, registers secrets that must
//! never show up in the build log or outputs, and checks afterwards that the host is as it was.
//! Included by path from `attacks.rs` (`#[path = "support/attacks.rs"] mod fixtures;`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use crate::build::{Finished, R};

/// Every fixture name a case may list in `needs`.
pub const FIXTURES: &[&str] = &[
    "host-marker",
    "marker-symlink",
    "outside-secret",
    "evil-tar",
    "tcp-listener",
    "abstract-listener",
    "decoy-key",
    "signing-key",
    "core-pattern",
    "hostname",
    "clock",
    "host-sleep",
    "pgrp-canary",
    "block-device",
    "tty",
    "concurrent",
    "context-unchanged",
];

type Check = Box<dyn FnOnce(&Finished) -> Vec<String>>;

/// The host-side state of one case run.
pub struct Env {
    /// Random per run; also passed as the `TOKEN` build-arg.
    pub token: String,
    pub build_args: Vec<(String, String)>,
    /// (what, bytes) that must appear in neither the log nor the outputs.
    pub secrets: Vec<(String, Vec<u8>)>,
    checks: Vec<Check>,
    /// Run kiln under `script` so the build has a controlling terminal.
    pub tty: bool,
    /// Start a canary process in kiln's process group.
    pub pgrp_canary: bool,
    /// Extra `kiln build` flags a fixture needs (`--sign-key`).
    pub kiln_args: Vec<String>,
}

impl Env {
    fn arg(&mut self, k: &str, v: impl Into<String>) {
        self.build_args.push((k.to_owned(), v.into()));
    }

    fn check(&mut self, f: impl FnOnce(&Finished) -> Vec<String> + 'static) {
        self.checks.push(Box::new(f));
    }

    /// Runs every fixture's after-build check (also the clean-up: listeners close, host
    /// processes are killed, a changed core_pattern is restored).
    pub fn finish(self, done: &Finished) -> Vec<String> {
        self.checks.into_iter().flat_map(|c| c(done)).collect()
    }
}

/// Random hex from the kernel.
pub fn random_hex(bytes: usize) -> R<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn io<T>(what: &str, r: std::io::Result<T>) -> R<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Sets up `needs` for one run. `tmp` is the run's private directory (the context is
/// `tmp/ctx`), `store` the kiln store the build uses.
pub fn prepare(needs: &[String], tmp: &Path, ctx: &Path, store: &Path) -> R<Env> {
    let token = random_hex(8)?;
    let mut env = Env {
        token: token.clone(),
        build_args: vec![("TOKEN".into(), token.clone())],
        secrets: Vec::new(),
        checks: Vec::new(),
        tty: false,
        pgrp_canary: false,
        kiln_args: Vec::new(),
    };
    // The host's /etc/shadow is a secret for every case.
    if let Ok(shadow) = fs::read("/etc/shadow") {
        for line in shadow.split(|b| *b == b'\n').filter(|l| l.len() >= 16) {
            env.secrets
                .push(("a line of the host's /etc/shadow".into(), line.to_vec()));
        }
    }
    let host_dir = std::env::temp_dir().join(format!("kiln-attack-host-{token}"));
    for need in needs {
        if let Err(e) = add_fixture(&mut env, need, tmp, ctx, store, &host_dir) {
            // Undo what the fixtures set up so far (listeners, host processes, files).
            let _ = env.finish(&Finished::default());
            return Err(e);
        }
    }
    Ok(env)
}

/// Sets up one fixture.
fn add_fixture(
    env: &mut Env,
    need: &str,
    tmp: &Path,
    ctx: &Path,
    store: &Path,
    host_dir: &Path,
) -> R<()> {
    match need {
        "host-marker" => host_marker(env, host_dir)?,
        "marker-symlink" => {
            let marker = host_dir.join("marker");
            for link in [ctx.join("marker"), ctx.join("links/marker")] {
                if let Some(dir) = link.parent() {
                    io("mkdir links", fs::create_dir_all(dir))?;
                }
                io(
                    "symlink to the host marker",
                    std::os::unix::fs::symlink(&marker, &link),
                )?;
            }
        }
        "outside-secret" => {
            // Beside the context directory: what `../outside-secret` names from inside it.
            let secret = format!("kiln-attack-outside-{}", random_hex(16)?);
            io(
                "outside-secret",
                fs::write(tmp.join("outside-secret"), &secret),
            )?;
            env.secrets
                .push(("the file beside the context".into(), secret.into_bytes()));
        }
        "evil-tar" => evil_tar(env, ctx, host_dir)?,
        "tcp-listener" => tcp_listener(env)?,
        "abstract-listener" => abstract_listener(env)?,
        "decoy-key" => decoy_key(env, store)?,
        "signing-key" => signing_key(env)?,
        "core-pattern" => core_pattern(env)?,
        "hostname" => hostname(env)?,
        "clock" => clock(env),
        "host-sleep" => host_sleep(env)?,
        "pgrp-canary" => env.pgrp_canary = true,
        "block-device" => block_device(env)?,
        "tty" => {
            // The build runs under `script`, which gives it a controlling terminal.
            if Command::new("script").arg("--version").output().is_err() {
                return Err("the tty fixture needs `script` (util-linux) on PATH".into());
            }
            env.tty = true;
        }
        "concurrent" => env.check(concurrent_check),
        "context-unchanged" => context_unchanged(env, ctx)?,
        other => return Err(format!("unknown fixture {other:?}")),
    }
    Ok(())
}

/// A directory on the host with one secret file; afterwards it must hold exactly that file,
/// unchanged (archives, mount targets and WORKDIRs that try to write through it fail this).
fn host_marker(env: &mut Env, dir: &Path) -> R<()> {
    io("host marker dir", fs::create_dir_all(dir))?;
    let secret = format!("kiln-attack-host-secret-{}", random_hex(16)?);
    let marker = dir.join("marker");
    io("host marker", fs::write(&marker, &secret))?;
    env.arg("HOST_DIR", dir.to_string_lossy());
    env.arg("HOST_MARKER", marker.to_string_lossy());
    env.secrets
        .push(("the host marker file".into(), secret.clone().into_bytes()));
    let dir = dir.to_owned();
    env.check(move |_| {
        let mut errs = Vec::new();
        let names: Vec<String> = fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if names != ["marker"] {
            errs.push(format!(
                "the host directory {} now holds {names:?} (only \"marker\" was there): the build wrote outside its root",
                dir.display()
            ));
        }
        if fs::read_to_string(marker).ok().as_deref() != Some(secret.as_str()) {
            errs.push("the host marker file was changed".into());
        }
        let _ = fs::remove_dir_all(&dir);
        errs
    });
    Ok(())
}

/// One ustar header block plus data, written by hand: the `tar` crate refuses `..` in names,
/// which is exactly what this archive needs.
fn ustar(name: &str, kind: u8, link: &str, data: &[u8]) -> R<Vec<u8>> {
    if name.len() > 100 || link.len() > 100 {
        return Err(format!("tar name too long: {name} / {link}"));
    }
    let mut h = [0u8; 512];
    let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", data.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, &[kind]);
    put(157, link.as_bytes());
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    Ok(out)
}

/// Names of the file entries the evil archives try to place outside the destination.
const TAR_PROBES: &[&str] = &[
    "tar-dotdot",
    "tar-absolute",
    "tar-through-symlink",
    "tar-through-relative-symlink",
    "tar-hardlink-abs",
    "tar-hardlink-dotdot",
];

/// `ctx/evil-<variant>.tar`, one escape technique each (the first refused entry would hide
/// the rest): `dotdot` (`../…/HOST_DIR/x`), `absolute` (`/HOST_DIR/x`), `symlink` and
/// `symlink-rel` (a symlink to HOST_DIR, then an entry through it), `hardlink` (a hard link
/// to `/HOST_DIR/marker`, with a decoy of that path inside the archive), `hardlink-dotdot`.
/// The `host-marker` check proves nothing reached the host; this one that whatever was
/// unpacked stayed under the ADD destination `/unpacked`.
fn evil_tar(env: &mut Env, ctx: &Path, host_dir: &Path) -> R<()> {
    let rel = host_dir
        .to_string_lossy()
        .trim_start_matches('/')
        .to_owned();
    let up = "../".repeat(12);
    let ok = ustar("ok-file", b'0', "", b"inside the image\n")?;
    let file = |name: &str| ustar(name, b'0', "", b"kiln attack entry\n");
    let variants: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("dotdot", vec![file(&format!("{up}{rel}/tar-dotdot"))?]),
        ("absolute", vec![file(&format!("/{rel}/tar-absolute"))?]),
        (
            "symlink",
            vec![
                ustar("tar-link", b'2', &format!("/{rel}"), b"")?,
                file("tar-link/tar-through-symlink")?,
            ],
        ),
        (
            "symlink-rel",
            vec![
                ustar("tar-rel-link", b'2', &format!("{up}{rel}"), b"")?,
                file("tar-rel-link/tar-through-relative-symlink")?,
            ],
        ),
        (
            "hardlink",
            vec![
                ustar(
                    &format!("{rel}/marker"),
                    b'0',
                    "",
                    b"decoy inside the archive\n",
                )?,
                ustar("tar-hardlink-abs", b'1', &format!("/{rel}/marker"), b"")?,
            ],
        ),
        (
            "hardlink-dotdot",
            vec![ustar(
                "tar-hardlink-dotdot",
                b'1',
                &format!("{up}{rel}/marker"),
                b"",
            )?],
        ),
    ];
    for (name, entries) in variants {
        let mut tar = ok.clone();
        tar.extend(entries.concat());
        tar.extend([0u8; 1024]);
        io(
            "evil tar",
            fs::write(ctx.join(format!("evil-{name}.tar")), tar),
        )?;
    }
    env.check(|done| {
        let Some(local) = &done.local else {
            return Vec::new();
        };
        let mut errs = Vec::new();
        let mut stack = vec![local.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p.clone());
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if TAR_PROBES.contains(&name.as_str()) && !p.starts_with(local.join("unpacked")) {
                    errs.push(format!(
                        "archive entry {name} landed at /{} in the image, outside the ADD destination /unpacked",
                        p.strip_prefix(local).unwrap_or(&p).display()
                    ));
                }
            }
        }
        errs
    });
    Ok(())
}

/// A TCP listener on all of the host's addresses; the step gets its port and the host's
/// loopback and primary address. Afterwards: nothing connected.
fn tcp_listener(env: &mut Env) -> R<()> {
    let l = io("tcp listener", TcpListener::bind("0.0.0.0:0"))?;
    io("nonblocking", l.set_nonblocking(true))?;
    let port = io("local addr", l.local_addr())?.port();
    // The address a packet to the outside would leave from (connect on UDP sends nothing).
    let ip = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into());
    env.arg("HOST_PORT", port.to_string());
    env.arg("HOST_IP", ip);
    env.check(move |_| match l.accept() {
        Ok((_, peer)) => vec![format!(
            "the host's TCP listener on port {port} accepted a connection from {peer}"
        )],
        Err(_) => Vec::new(),
    });
    Ok(())
}

/// An abstract unix socket on the host (abstract names belong to the network namespace).
fn abstract_listener(env: &mut Env) -> R<()> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("kiln-attack-{}", env.token);
    let addr = io(
        "abstract name",
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
    )?;
    let l = io("abstract listener", UnixListener::bind_addr(&addr))?;
    io("nonblocking", l.set_nonblocking(true))?;
    env.arg("ABSTRACT_SOCKET", name.clone());
    env.check(move |_| match l.accept() {
        Ok(_) => vec![format!(
            "the host's abstract socket @{name} accepted a connection"
        )],
        Err(_) => Vec::new(),
    });
    Ok(())
}

/// A decoy `signing.key` beside the store directory, with a random secret in it.
fn decoy_key(env: &mut Env, store: &Path) -> R<()> {
    let key = PathBuf::from(format!("{}-signing.key", store.display()));
    let secret = format!("kiln-attack-signing-key-{}", random_hex(16)?);
    io("decoy key", fs::write(&key, &secret))?;
    io(
        "decoy key mode",
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)),
    )?;
    env.arg("STORE", store.to_string_lossy());
    env.arg("SIGNING_KEY", key.to_string_lossy());
    env.secrets
        .push(("the decoy signing key".into(), secret.into_bytes()));
    env.check(move |_| {
        let _ = fs::remove_file(&key);
        Vec::new()
    });
    Ok(())
}

/// A real signing key, made by `kiln key generate` where the daemon keeps its keys
/// (`/etc/kiln/keys/`), used by the build (`--sign-key`): no step may read it, its PEM must be
/// in no log or output, and the build's attestations must verify with its public key (so the
/// key was really in kiln's hands while the steps ran).
fn signing_key(env: &mut Env) -> R<()> {
    let dir = PathBuf::from("/etc/kiln/keys");
    let made_dirs: Vec<PathBuf> = [PathBuf::from("/etc/kiln"), dir.clone()]
        .into_iter()
        .filter(|d| !d.exists())
        .collect();
    io("key directory", fs::create_dir_all(&dir))?;
    let prefix = dir.join(format!("attack-{}", env.token));
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["key", "generate", "--out"])
        .arg(&prefix)
        .env_remove("KILN_KEY_PASSPHRASE")
        .output()
        .map_err(|e| format!("kiln key generate: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kiln key generate: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let key = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    let pem = io("signing key", fs::read_to_string(&key))?;
    for line in pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
    {
        env.secrets
            .push(("the signing key's PEM".into(), line.as_bytes().to_vec()));
    }
    env.arg("SIGNING_KEY", key.to_string_lossy());
    env.arg("KEY_DIR", dir.to_string_lossy());
    env.kiln_args.push(format!("--sign-key={}", key.display()));
    env.check(move |done| {
        let mut errs = Vec::new();
        match &done.oci {
            Some(oci) => {
                let v = Command::new(env!("CARGO_BIN_EXE_kiln"))
                    .arg("verify")
                    .arg(format!("oci-archive:{}", oci.display()))
                    .arg("--key")
                    .arg(&public)
                    .output();
                match v {
                    Ok(v) if v.status.success() => {}
                    Ok(v) => errs.push(format!(
                        "the build's attestations do not verify with the key it was given: {}",
                        String::from_utf8_lossy(&v.stderr)
                    )),
                    Err(e) => errs.push(format!("kiln verify: {e}")),
                }
            }
            None => errs.push("no OCI output to verify the signature of".into()),
        }
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(&public);
        for d in made_dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        errs
    });
    Ok(())
}

/// The host's `kernel.core_pattern` must be unchanged (it is global: a step that sets it to
/// `|/path` runs that path as root on the host at the next crash). Restored if it changed.
fn core_pattern(env: &mut Env) -> R<()> {
    const PATH: &str = "/proc/sys/kernel/core_pattern";
    let before = io(PATH, fs::read(PATH))?;
    env.check(move |_| {
        let after = fs::read(PATH).unwrap_or_default();
        if after == before {
            return Vec::new();
        }
        let _ = fs::write(PATH, &before);
        vec![format!(
            "the host's core_pattern changed to {:?} (restored)",
            String::from_utf8_lossy(&after).trim()
        )]
    });
    Ok(())
}

fn hostname(env: &mut Env) -> R<()> {
    let read = || {
        ["hostname", "domainname"]
            .map(|f| fs::read_to_string(format!("/proc/sys/kernel/{f}")).unwrap_or_default())
    };
    let before = read();
    env.check(move |_| {
        let after = read();
        if after == before {
            Vec::new()
        } else {
            vec![format!(
                "the host's hostname/domainname changed: {before:?} -> {after:?}"
            )]
        }
    });
    Ok(())
}

/// The wall clock moved as much as the monotonic clock did (within 2 s).
fn clock(env: &mut Env) {
    let (wall, mono) = (SystemTime::now(), Instant::now());
    env.check(move |_| {
        let mono = mono.elapsed().as_secs_f64();
        let wall = match SystemTime::now().duration_since(wall) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        if (wall - mono).abs() > 2.0 {
            vec![format!(
                "the host's clock moved: {wall:.3}s of wall time passed in {mono:.3}s"
            )]
        } else {
            Vec::new()
        }
    });
}

/// A `sleep` on the host (own process group); the step gets its pid. It must survive.
fn host_sleep(env: &mut Env) -> R<()> {
    let mut child = io(
        "host sleep",
        Command::new("sleep")
            .arg("300")
            .process_group(0)
            .stdin(Stdio::null())
            .spawn(),
    )?;
    env.arg("HOST_PID", child.id().to_string());
    env.check(move |_| {
        let alive = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        if alive {
            Vec::new()
        } else {
            vec!["the host process the step tried to kill is gone".into()]
        }
    });
    Ok(())
}

/// `MAJ:MIN` of the block device holding `/` (of the first disk if `/` is not on one).
fn block_device(env: &mut Env) -> R<()> {
    let dev = io("stat /", fs::metadata("/"))?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let spec = if major != 0 {
        format!("{major}:{minor}")
    } else {
        let parts = io("/proc/partitions", fs::read_to_string("/proc/partitions"))?;
        parts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4 && f[0].parse::<u32>().is_ok()).then(|| format!("{}:{}", f[0], f[1]))
            })
            .next()
            .unwrap_or_else(|| "8:0".into())
    };
    env.arg("BLOCK_DEV", spec);
    Ok(())
}

/// Stages `a` and `b` overlapped: `a` wrote `/a-start` and `/a-end` (`/proc/uptime`), `b`
/// searched at `/b-at`; all three end up in the final image.
fn concurrent_check(done: &Finished) -> Vec<String> {
    let Some(local) = &done.local else {
        return Vec::new(); // the build failed; that is reported elsewhere
    };
    let up = |f: &str| -> Option<f64> {
        fs::read_to_string(local.join(f))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    match (up("a-start"), up("b-at"), up("a-end")) {
        (Some(s), Some(b), Some(e)) if s < b && b < e => Vec::new(),
        t => vec![format!(
            "stages a and b did not overlap (a-start, b-at, a-end = {t:?}): the case proved nothing"
        )],
    }
}

/// Every file of the context is the same after the build (a rw bind mount is a copy).
fn context_unchanged(env: &mut Env, ctx: &Path) -> R<()> {
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(t) if t.is_file() => {
                        out.insert(p.clone(), fs::read(&p).unwrap_or_default());
                    }
                    _ => {
                        out.insert(p, Vec::new());
                    }
                }
            }
        }
        out
    }
    let before = snapshot(ctx);
    let ctx = ctx.to_owned();
    env.check(move |_| {
        let after = snapshot(&ctx);
        if after == before {
            return Vec::new();
        }
        let changed: Vec<String> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| k.display().to_string())
            .collect();
        vec![format!("the build changed the host's context: {changed:?}")]
    });
    Ok(())
}
