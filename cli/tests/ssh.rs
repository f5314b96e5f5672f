//! SSH agent forwarding (`RUN --mount=type=ssh`, `kiln build --ssh`) through the real binary,
//! with the real OpenSSH `ssh-agent`: inside the step an agent client lists the host's key
//! through the forwarded socket and the private key is in no layer, output or store file
//! (issue 4, acceptance 2); a missing required agent fails before the step runs and commits
//! nothing (5); the mount options are honoured, the socket leaves nothing in the layer and no
//! proxy is left after the build. Needs root and `ssh-agent`; otherwise each test prints why
//! it skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/scan.rs"]
mod scan;
mod support;

#[path = "../../sandbox/probe/compile.rs"]
mod compile;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use scan::{base64 as base64_encode, scan, scan_tree, unhex};
use support::kiln::{BASE, Kiln, Run, root_or_skip, which};

/// A real `ssh-agent` listening on a socket in a private directory, holding one fresh
/// ed25519 key; killed when dropped.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Option<Self> {
        for tool in ["ssh-agent", "ssh-add", "ssh-keygen"] {
            if !which(tool) {
                println!("skipped: {tool} is not installed (Debian openssh-client)");
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Self { child, dir };
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "ssh-agent did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let key = agent.key();
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test-key", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success(), "ssh-keygen");
        let st = Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &sock)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "ssh-add");
        Some(agent)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("id")
    }

    /// The public key blob (the base64 field of `id.pub`), decoded.
    fn public_blob(&self) -> Vec<u8> {
        let pubkey = fs::read_to_string(self.dir.path().join("id.pub")).unwrap();
        base64_decode(pubkey.split_whitespace().nth(1).unwrap())
    }

    /// `ssh-keygen -lf id.pub -E sha256`: `SHA256:…`.
    fn fingerprint(&self) -> String {
        let o = Command::new("ssh-keygen")
            .args(["-E", "sha256", "-lf"])
            .arg(self.dir.path().join("id.pub"))
            .output()
            .unwrap();
        String::from_utf8(o.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let mut c = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), s.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "base64 -d");
    o.stdout
}

/// OpenSSH's fingerprint of a key blob: `SHA256:` and the unpadded base64 of its SHA-256.
fn fingerprint(blob: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), blob).unwrap();
    let o = c.wait_with_output().unwrap();
    let hex = String::from_utf8(o.stdout).unwrap();
    let digest = unhex(hex.split_whitespace().next().unwrap());
    format!("SHA256:{}", base64_encode(&digest).trim_end_matches('='))
}

/// `(blob, comment)` per `kiln-probe: ssh key HEX COMMENT` line.
fn listed_keys(out: &str) -> Vec<(Vec<u8>, String)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("kiln-probe: ssh key "))
        .map(|l| {
            let (hex, comment) = l.split_once(' ').unwrap_or((l, ""));
            (unhex(hex), comment.to_owned())
        })
        .collect()
}

/// The probe (`sandbox/probe/attack_probe.rs`, whose `ssh-identities` mode is an agent
/// client), compiled static once per test process.
fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        compile::compile_probe(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-ssh-probe"))
            .unwrap()
    })
}

/// A build context with `Dockerfile` and the agent-client probe as `probe`.
fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    fs::copy(probe(), dir.path().join("probe")).unwrap();
    dir
}

/// `kiln build ARGS… CONTEXT` with `SSH_AUTH_SOCK` set to `sock` (or unset) and `TMPDIR` set
/// to `tmp` (where the engine makes its proxy directories).
fn build(k: &Kiln, ctx: &Path, args: &[String], sock: Option<&Path>, tmp: &Path) -> Run {
    k.build_with(ctx, args, |c| {
        c.env_remove("SSH_AUTH_SOCK").env("TMPDIR", tmp);
        if let Some(s) = sock {
            c.env("SSH_AUTH_SOCK", s);
        }
    })
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

fn assert_no_proxy_left(tmp: &Path) {
    let left: Vec<_> = fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the temporary directory: {left:?}");
}

#[test]
fn the_step_lists_the_agents_key_and_the_private_key_reaches_no_output() {
    if !root_or_skip() {
        return;
    }
    let Some(agent) = Agent::start() else { return };
    let k = Kiln::with_base();
    let ctx = context(&format!(
        "FROM {BASE}\n\
         COPY probe /probe\n\
         RUN --mount=type=ssh sh -c '/probe ssh-identities > /keys; echo \"$SSH_AUTH_SOCK\" > /sock'\n"
    ));
    let out = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let o = out.path();
    let mut args = s(&["--progress=plain", "--ssh", "default", "-t", "ssh/keys"]);
    for (t, dest) in [("oci", "image.oci.tar"), ("local", "local")] {
        args.push("-o".into());
        args.push(format!("type={t},dest={}", o.join(dest).display()));
    }
    let run = build(&k, ctx.path(), &args, Some(&agent.socket()), tmp.path()).ok();
    let local = o.join("local");
    let keys = fs::read_to_string(local.join("keys")).unwrap();
    let listed = listed_keys(&keys);
    assert_eq!(listed.len(), 1, "{keys}\n{}", run.stderr);
    assert_eq!(listed[0].0, agent.public_blob());
    assert_eq!(listed[0].1, "kiln-test-key");
    assert_eq!(fingerprint(&listed[0].0), agent.fingerprint());
    assert_eq!(
        fs::read_to_string(local.join("sock")).unwrap().trim(),
        "/run/buildkit/ssh_agent.0"
    );
    assert!(
        !local.join("run").exists(),
        "the socket's target left in the image"
    );
    // SSH_AUTH_SOCK is the step's, not the image's.
    let oci = support::kiln::OciImage::read(&o.join("image.oci.tar"));
    let env = oci.config["config"]["Env"].to_string();
    assert!(!env.contains("SSH_AUTH_SOCK"), "{env}");
    assert_no_proxy_left(tmp.path());

    // The private key: the file, each base64 line of its body, and the body decoded.
    let private = fs::read_to_string(agent.key()).unwrap();
    let body: Vec<&str> = private
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    let mut needles = vec![
        ("private key file".to_owned(), private.as_bytes().to_vec()),
        (
            "private key (decoded)".to_owned(),
            base64_decode(&body.concat()),
        ),
    ];
    for (i, l) in body.iter().enumerate() {
        needles.push((
            format!("private key base64 line {i}"),
            l.as_bytes().to_vec(),
        ));
    }
    let mut hits = Vec::new();
    let store_files = scan_tree(k.root(), &needles, &mut hits);
    let output_files = scan_tree(o, &needles, &mut hits);
    scan("stdout", run.stdout.as_bytes(), &needles, &mut hits);
    scan("stderr", run.stderr.as_bytes(), &needles, &mut hits);
    assert!(store_files > 10 && output_files > 3, "nothing scanned?");
    // The scanner finds the key where it is.
    let mut found = Vec::new();
    scan("self-check", private.as_bytes(), &needles, &mut found);
    assert_eq!(found.len(), needles.len() - 1, "{found:?}");
    assert!(
        hits.is_empty(),
        "the private key leaked:\n{}",
        hits.join("\n")
    );
}

#[test]
fn ssh_mount_options_are_honoured_and_leave_nothing_in_the_layer() {
    if !root_or_skip() {
        return;
    }
    let Some(agent) = Agent::start() else { return };
    let k = Kiln::with_base();
    let ctx = context(&format!(
        "FROM {BASE}\n\
         COPY probe /probe\n\
         RUN --mount=type=ssh sh -c \"stat -c '%a %u %g' \\$SSH_AUTH_SOCK > /defaults; grep -c kiln-ssh- /proc/self/mountinfo > /mountinfo\"\n\
         RUN --mount=type=ssh,id=other,target=/tmp/o.sock,mode=0660,uid=1000,gid=1000 sh -c \"echo \\$SSH_AUTH_SOCK > /sock2; stat -c '%a %u %g' /tmp/o.sock > /opts; /probe ssh-identities > /keys2\"\n\
         RUN --mount=type=ssh,id=other,target=/a.sock --mount=type=ssh,target=/b.sock sh -c 'echo $SSH_AUTH_SOCK > /first; test -S /b.sock && echo yes > /second'\n\
         RUN --mount=type=ssh,id=absent sh -c 'echo \"[$SSH_AUTH_SOCK]\" > /absent; test -e /run/buildkit/ssh_agent.0 && echo present >> /absent || echo none >> /absent'\n"
    ));
    let sock = agent.socket();
    for extra in [
        &[][..],
        &[
            "--snapshotter",
            "copy",
            "--userns-remap",
            "default",
            "--no-cache",
        ][..],
    ] {
        let out = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut args = s(&["--progress=plain", "--ssh", "default", "--ssh"]);
        args.push(format!("other={}", sock.display()));
        args.extend(s(extra));
        args.push("-o".into());
        args.push(format!("type=local,dest={}", out.path().display()));
        build(&k, ctx.path(), &args, Some(&sock), tmp.path()).ok();
        let read = |p: &str| fs::read_to_string(out.path().join(p)).unwrap();
        assert_eq!(read("defaults").trim(), "600 0 0", "{extra:?}");
        // The proxy's directory was in the build's TMPDIR (so the check below means something).
        assert_eq!(read("mountinfo").trim(), "1", "{extra:?}");
        assert_eq!(read("opts").trim(), "660 1000 1000", "{extra:?}");
        assert_eq!(read("sock2").trim(), "/tmp/o.sock", "{extra:?}");
        assert_eq!(listed_keys(&read("keys2")).len(), 1, "{extra:?}");
        assert_eq!(read("first").trim(), "/a.sock", "{extra:?}");
        assert_eq!(read("second").trim(), "yes", "{extra:?}");
        assert_eq!(
            read("absent").split_whitespace().collect::<Vec<_>>(),
            ["[]", "none"],
            "{extra:?}"
        );
        for p in ["run/buildkit", "tmp/o.sock", "a.sock", "b.sock"] {
            assert!(
                !out.path().join(p).exists(),
                "{extra:?}: {p} left in the image"
            );
        }
        assert_no_proxy_left(tmp.path());
    }

    // A step that fails leaves no proxy either.
    let failing = context(&format!(
        "FROM {BASE}\nRUN --mount=type=ssh sh -c 'test -S \"$SSH_AUTH_SOCK\" && exit 3'\n"
    ));
    let tmp = tempfile::tempdir().unwrap();
    let run = build(
        &k,
        failing.path(),
        &s(&["--progress=plain", "--ssh", "default"]),
        Some(&sock),
        tmp.path(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("exit code: 3"), "{}", run.stderr);
    assert_no_proxy_left(tmp.path());
}

#[test]
fn a_missing_required_agent_fails_before_the_step_runs_and_commits_nothing() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = context(&format!(
        "FROM {BASE}\n\
         RUN --mount=type=ssh,required touch /ran\n\
         RUN echo after > /after\n"
    ));
    let tmp = tempfile::tempdir().unwrap();
    let du = k.du();
    let images = k.images();
    let run = build(
        &k,
        ctx.path(),
        &s(&["--progress=plain", "-t", "ssh/req"]),
        None,
        tmp.path(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            r#"ssh agent "default" is required but was not provided (kiln build --ssh default)"#
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("touch /ran\n#"),
        "the step ran:\n{}",
        run.stderr
    );
    assert_eq!(k.du(), du, "the store changed");
    assert_eq!(k.images(), images);
    assert_no_proxy_left(tmp.path());

    // `--ssh default` without SSH_AUTH_SOCK, a missing socket and a key file are usage errors.
    let key = tmp.path().join("id_ed25519");
    fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    for (flag, want) in [
        ("default".to_owned(), "SSH_AUTH_SOCK is not set"),
        (
            "default=/nonexistent/kiln.sock".to_owned(),
            "/nonexistent/kiln.sock",
        ),
        (
            format!("default={}", key.display()),
            "--ssh ID=KEYFILE is not supported yet",
        ),
    ] {
        let run = build(&k, ctx.path(), &s(&["--ssh", &flag]), None, tmp.path());
        assert_eq!(run.code, 2, "--ssh {flag}: {}", run.stderr);
        assert!(run.stderr.contains(want), "--ssh {flag}: {}", run.stderr);
    }
    assert_eq!(k.du(), du, "the store changed");
}
