//! Differential conformance with BuildKit.
//!
//! Each case under `vectors/differential/<case>/` (a `Dockerfile`, context files, optional
//! `.dockerignore`, optional `args` with one `--target X` / `--build-arg K=V` a line, optional
//! `expect-fail` marker, optional `expect/`) is built by dockerd's embedded BuildKit (Debian
//! `docker.io` 20.10, `DOCKER_BUILDKIT=1`, a private daemon started here) and by kiln, both
//! from the same base: a busybox root file system that this test makes, packs as a docker
//! archive (`docker save` format) and hands byte-identical to both (`docker load` / kiln's
//! `--build-context kiln-busybox=docker-archive://...`).
//!
//! Compared: the final trees (type, permission bits, owner, content, link target; not times)
//! of the owner-preserving `-o type=tar` exports, the `-o type=local` trees, and the image
//! configs (Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Volumes, Labels, StopSignal;
//! BuildKit's from `docker save`, kiln's from its OCI archive). Where BuildKit fails, kiln must
//! fail too. Cases with an `expect/` directory use syntax that dockerd 20.10's BuildKit
//! predates (heredocs, `--link`, `--parents`, `--exclude`): kiln's output is checked against
//! `expect/tree` (tree lines as `tree.rs` prints them; `text:` content allowed; the subtrees
//! rooted at the listed entries must match exactly) and `expect/config.json` instead.
//!
//! Skips (printed) when not root or when dockerd cannot run (then only the kiln half and the
//! reference checks run), and the kiln half when the kiln binary is not functional yet
//! (`KILN_DIFF_REQUIRE_KILN=1` makes that a failure). `KILN_DIFF_CASES=a,b` runs a subset;
//! `KILN_DIFF_KEEP=1` keeps the work directory; `KILN_DIFF_BIN=PATH` tests another kiln binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/dockerd.rs"]
mod dockerd;
#[path = "support/tree.rs"]
mod tree;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use dockerd::{Dockerd, run_output};
use tree::{Compare, Tree};

const BASE: &str = "kiln-busybox";
const CONFIG_FIELDS: [&str; 9] = [
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
];
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vectors/differential")
}

#[derive(Debug)]
struct Case {
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    expect_fail: bool,
    /// Reference-semantics case (`expect/`): kiln only.
    reference: bool,
}

fn load_cases() -> Vec<Case> {
    let only: Option<Vec<String>> = std::env::var("KILN_DIFF_CASES")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let mut cases = Vec::new();
    let mut names: Vec<_> = fs::read_dir(cases_dir())
        .expect("vectors/differential")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let dir = cases_dir().join(&name);
        if !dir.join("Dockerfile").is_file() {
            continue;
        }
        if let Some(only) = &only
            && !only.contains(&name)
        {
            continue;
        }
        let args = fs::read_to_string(dir.join("args"))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .flat_map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .collect();
        cases.push(Case {
            expect_fail: dir.join("expect-fail").exists(),
            reference: dir.join("expect").is_dir(),
            name,
            dir: dir.canonicalize().unwrap(),
            args,
        });
    }
    cases
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Output {
    run_output(cmd.stdin(Stdio::null()))
}

fn must(cmd: &mut Command) {
    let desc = format!("{cmd:?}");
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{desc}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n    ")
}

/// Makes the shared base: a busybox root file system packed as a one-layer docker archive
/// tagged `kiln-busybox:latest`. Returns the archive's path.
fn make_base(work: &Path) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("busybox (Debian busybox-static) is needed");
    let root = work.join("base-rootfs");
    for d in [
        "bin", "dev", "proc", "sys", "etc", "tmp", "root", "home/app",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    let list = run(Command::new(busybox).arg("--list"));
    assert!(list.status.success(), "busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    for (p, m) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("proc", 0o755),
        ("sys", 0o755),
        ("etc", 0o755),
        ("etc/passwd", 0o644),
        ("etc/group", 0o644),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
        ("home/app", 0o755),
    ] {
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(m)).unwrap();
    }
    must(
        Command::new("chown")
            .arg("1000:1000")
            .arg(root.join("home/app")),
    );

    let arch_dir = work.join("base-archive");
    fs::create_dir_all(&arch_dir).unwrap();
    let layer = work.join("layer.tar");
    let mut top: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    must(
        Command::new("tar")
            .args([
                "--sort=name",
                "--mtime=@0",
                "--numeric-owner",
                "--format=gnu",
                "-C",
            ])
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .args(&top),
    );
    let layer_hex = tree::sha256_file(&layer).unwrap();
    fs::create_dir_all(arch_dir.join(&layer_hex)).unwrap();
    fs::rename(&layer, arch_dir.join(&layer_hex).join("layer.tar")).unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": { "Env": [PATH_ENV] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_hex}")] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "kiln differential base" }],
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_hex = tree::sha256_hex(&config_bytes);
    fs::write(arch_dir.join(format!("{config_hex}.json")), &config_bytes).unwrap();
    let manifest = json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [format!("{BASE}:latest")],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }]);
    fs::write(
        arch_dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    fs::write(
        arch_dir.join("repositories"),
        serde_json::to_vec(&json!({ BASE: { "latest": layer_hex } })).unwrap(),
    )
    .unwrap();
    let out = work.join("kiln-busybox.docker.tar");
    must(
        Command::new("tar")
            .args(["--sort=name", "--mtime=@0", "--numeric-owner", "-C"])
            .arg(&arch_dir)
            .arg("-cf")
            .arg(&out)
            .arg("."),
    );
    out
}

/// Extracts a tar (as root: owners and modes kept) into a new directory and walks it.
fn tar_tree(tar: &Path, dest: &Path) -> Result<Tree, String> {
    fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    let o = run(Command::new("tar")
        .args(["--numeric-owner", "--same-owner", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(dest));
    if !o.status.success() {
        return Err(format!(
            "extract {}: {}",
            tar.display(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    tree::walk(dest).map_err(|e| format!("walk {}: {e}", dest.display()))
}

/// The `config` object of the image in a `docker save` archive.
fn docker_archive_config(archive: &Path, scratch: &Path) -> Result<Value, String> {
    fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
    let o = run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(scratch));
    if !o.status.success() {
        return Err(format!("extract docker archive: {}", tail(&o.stderr, 3)));
    }
    let manifest: Value = read_json(&scratch.join("manifest.json"))?;
    let cfg = manifest[0]["Config"]
        .as_str()
        .ok_or("manifest.json has no Config")?;
    let v = read_json(&scratch.join(cfg))?;
    Ok(v.get("config").cloned().unwrap_or(Value::Null))
}

/// The `config` object of the (first) image in an OCI layout archive.
fn oci_archive_config(archive: &Path, scratch: &Path) -> Result<Value, String> {
    fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
    let o = run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(scratch));
    if !o.status.success() {
        return Err(format!("extract OCI archive: {}", tail(&o.stderr, 3)));
    }
    let blob = |digest: &str| -> Result<Value, String> {
        let (alg, hex) = digest.split_once(':').ok_or("bad digest")?;
        read_json(&scratch.join("blobs").join(alg).join(hex))
    };
    let mut node = read_json(&scratch.join("index.json"))?;
    for _ in 0..4 {
        if let Some(cfg) = node.get("config") {
            let d = cfg["digest"].as_str().ok_or("config without digest")?;
            let v = blob(d)?;
            return Ok(v.get("config").cloned().unwrap_or(Value::Null));
        }
        let d = node["manifests"][0]["digest"]
            .as_str()
            .ok_or("index without manifests")?
            .to_string();
        node = blob(&d)?;
    }
    Err("OCI archive: no image manifest found".into())
}

fn read_json(p: &Path) -> Result<Value, String> {
    let b = fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?;
    serde_json::from_slice(&b).map_err(|e| format!("parse {}: {e}", p.display()))
}

/// Null, "", [] and {} all mean "unset".
fn norm(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if s.is_empty() => Value::Null,
        Some(Value::Array(a)) if a.is_empty() => Value::Null,
        Some(Value::Object(o)) if o.is_empty() => Value::Null,
        Some(v) => v.clone(),
    }
}

fn config_diff(
    fields: &[&str],
    want_name: &str,
    want: &Value,
    got_name: &str,
    got: &Value,
) -> Vec<String> {
    let mut out = Vec::new();
    for f in fields {
        let (w, g) = (norm(want.get(*f)), norm(got.get(*f)));
        if w != g {
            out.push(format!("config {f}: {want_name} {w} vs {got_name} {g}"));
        }
    }
    out
}

/// The kiln binary and its state directory.
struct Kiln {
    bin: PathBuf,
    root: PathBuf,
    base: PathBuf,
}

impl Kiln {
    /// `Err` explains why the binary cannot be used yet.
    fn probe(&self) -> Result<(), String> {
        let o = run(Command::new(&self.bin).args(["build", "--help"]));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if !o.status.success() || !text.contains("--build-context") {
            return Err(format!(
                "`kiln build --help` exited {} without documenting --build-context (binary not \
                 integrated yet?)",
                o.status
            ));
        }
        Ok(())
    }

    fn build(&self, case: &Case, outputs: &[String]) -> Output {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(&self.root)
            .args(["build", "--progress", "plain"])
            .arg("--build-context")
            .arg(format!("{BASE}=docker-archive://{}", self.base.display()));
        for o in outputs {
            c.arg("-o").arg(o);
        }
        c.args(&case.args).arg(&case.dir);
        run(&mut c)
    }
}

/// What one builder produced for a case.
struct Result_ {
    tar_tree: Tree,
    local_tree: Tree,
    config: Value,
}

fn buildkit_case(d: &Dockerd, case: &Case, w: &Path) -> Result<Option<Result_>, String> {
    let tar = w.join("bk.tar");
    let mut args = case.args.clone();
    args.extend(["-o".into(), format!("type=tar,dest={}", tar.display())]);
    let o = d.build(&args, &case.dir);
    if !o.status.success() {
        if case.expect_fail {
            return Ok(None);
        }
        return Err(format!(
            "BuildKit failed a case not marked expect-fail:\n    {}",
            tail(&o.stderr, 12)
        ));
    }
    if case.expect_fail {
        return Err("BuildKit succeeded but the case is marked expect-fail".into());
    }
    let tar_tree = tar_tree(&tar, &w.join("bk-tar"))?;
    let mut args = case.args.clone();
    args.extend([
        "-o".into(),
        format!("type=local,dest={}", w.join("bk-local").display()),
    ]);
    let o = d.build(&args, &case.dir);
    if !o.status.success() {
        return Err(format!("BuildKit local export: {}", tail(&o.stderr, 8)));
    }
    let local_tree = tree::walk(&w.join("bk-local")).map_err(|e| e.to_string())?;
    let tag = format!("kiln-diff-{}:latest", case.name);
    let mut args = case.args.clone();
    args.extend(["-t".into(), tag.clone()]);
    let o = d.build(&args, &case.dir);
    if !o.status.success() {
        return Err(format!("BuildKit -t build: {}", tail(&o.stderr, 8)));
    }
    let saved = w.join("bk-image.tar");
    let o = d.run(&["save", "-o", &saved.to_string_lossy(), &tag]);
    if !o.status.success() {
        return Err(format!("docker save: {}", tail(&o.stderr, 4)));
    }
    let config = docker_archive_config(&saved, &w.join("bk-image"))?;
    Ok(Some(Result_ {
        tar_tree,
        local_tree,
        config,
    }))
}

fn kiln_case(k: &Kiln, case: &Case, w: &Path) -> Result<Option<Result_>, String> {
    let local = w.join("k-local");
    let oci = w.join("k-oci.tar");
    let o = k.build(
        case,
        &[
            format!("type=local,dest={}", local.display()),
            format!("type=oci,dest={}", oci.display()),
        ],
    );
    let code = o.status.code();
    if !o.status.success() {
        if case.expect_fail {
            if code == Some(1) {
                return Ok(None);
            }
            return Err(format!(
                "kiln failed as expected but with {} (want exit 1):\n    {}",
                o.status,
                tail(&o.stderr, 6)
            ));
        }
        return Err(format!(
            "kiln failed ({}) where it should succeed:\n    {}",
            o.status,
            tail(&o.stderr, 12)
        ));
    }
    if case.expect_fail {
        return Err("kiln succeeded where the build must fail".into());
    }
    let local_tree = tree::walk(&local).map_err(|e| format!("kiln -o type=local: {e}"))?;
    let config = oci_archive_config(&oci, &w.join("k-oci"))?;
    let tar = w.join("k.tar");
    let o = k.build(case, &[format!("type=tar,dest={}", tar.display())]);
    if !o.status.success() {
        return Err(format!(
            "kiln -o type=tar failed ({}):\n    {}",
            o.status,
            tail(&o.stderr, 8)
        ));
    }
    let tar_tree = tar_tree(&tar, &w.join("k-tar"))?;
    Ok(Some(Result_ {
        tar_tree,
        local_tree,
        config,
    }))
}

/// Checks kiln's result against `expect/tree` and `expect/config.json`.
fn reference_check(case: &Case, got: &Result_) -> Vec<String> {
    let mut out = Vec::new();
    let exp = case.dir.join("expect");
    match fs::read_to_string(exp.join("tree"))
        .map_err(|e| e.to_string())
        .and_then(|t| tree::parse(&t))
    {
        Ok(want) => {
            // Roots: expected entries whose parent is not itself expected.
            let roots: Vec<String> = want
                .keys()
                .filter(|p| {
                    let parent = Path::new(p.as_str())
                        .parent()
                        .map(|x| x.to_string_lossy().into_owned());
                    !parent.is_some_and(|par| want.contains_key(&par))
                })
                .cloned()
                .collect();
            let have = tree::restrict(&got.tar_tree, &roots);
            out.extend(tree::diff(
                "expected",
                &want,
                "kiln",
                &have,
                Compare::default(),
            ));
        }
        Err(e) => out.push(format!("expect/tree: {e}")),
    }
    if exp.join("config.json").is_file() {
        match read_json(&exp.join("config.json")) {
            Ok(want) => {
                let fields: Vec<&str> = want
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                out.extend(config_diff(&fields, "expected", &want, "kiln", &got.config));
            }
            Err(e) => out.push(e),
        }
    }
    out
}

#[test]
fn differential_buildkit() {
    if !is_root() {
        println!("skipped: differential: not root (dockerd, owners and kiln's sandbox need root)");
        return;
    }
    let cases = load_cases();
    assert!(!cases.is_empty(), "no cases under vectors/differential");
    let work = tempfile::Builder::new()
        .prefix("kiln-diff")
        .tempdir()
        .unwrap();
    let base = make_base(work.path());

    let dockerd = match Dockerd::start() {
        Ok(d) => match d.load(&base) {
            Ok(()) => Some(d),
            Err(e) => {
                println!("skipped: BuildKit half: cannot load the base image: {e}");
                None
            }
        },
        Err(reason) => {
            println!("skipped: BuildKit half: {reason}");
            None
        }
    };
    let kiln = Kiln {
        bin: std::env::var_os("KILN_DIFF_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln"))),
        root: work.path().join("kiln-root"),
        base: base.clone(),
    };
    let kiln_ok = match kiln.probe() {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var("KILN_DIFF_REQUIRE_KILN").is_ok_and(|v| v == "1") {
                panic!("kiln binary not functional: {reason}");
            }
            println!("skipped: kiln half: kiln binary not functional: {reason}");
            false
        }
    };

    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut failures = Vec::new();
    for case in &cases {
        let w = work.path().join("cases").join(&case.name);
        fs::create_dir_all(&w).unwrap();
        let mut problems: Vec<String> = Vec::new();
        let mut ran = false;

        let bk = if case.reference {
            None
        } else if let Some(d) = &dockerd {
            ran = true;
            match buildkit_case(d, case, &w) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(e);
                    None
                }
            }
        } else {
            None
        };

        if kiln_ok && problems.is_empty() {
            ran = true;
            match kiln_case(&kiln, case, &w) {
                Ok(Some(k)) => {
                    if case.reference {
                        problems.extend(reference_check(case, &k));
                    } else if let Some(b) = &bk {
                        problems.extend(tree::diff(
                            "buildkit",
                            &b.tar_tree,
                            "kiln",
                            &k.tar_tree,
                            Compare::default(),
                        ));
                        problems.extend(
                            tree::diff(
                                "buildkit",
                                &b.local_tree,
                                "kiln",
                                &k.local_tree,
                                // BuildKit's local exporter (through the docker CLI) gives
                                // every file to the caller; owners are compared on the tar
                                // exports instead.
                                Compare {
                                    owner: false,
                                    mode: true,
                                },
                            )
                            .into_iter()
                            .map(|l| format!("(-o type=local) {l}")),
                        );
                        problems.extend(config_diff(
                            &CONFIG_FIELDS,
                            "buildkit",
                            &b.config,
                            "kiln",
                            &k.config,
                        ));
                    }
                }
                Ok(None) => {}
                Err(e) => problems.push(e),
            }
        }

        let kind = if case.reference {
            " (reference semantics)"
        } else if kiln_ok {
            ""
        } else {
            " (BuildKit half only)"
        };
        if !ran {
            skipped += 1;
            println!("skip {}{kind}", case.name);
        } else if problems.is_empty() {
            passed += 1;
            println!("ok {}{kind}", case.name);
        } else {
            failed += 1;
            let mut shown: Vec<String> = problems.iter().take(40).cloned().collect();
            if problems.len() > 40 {
                shown.push(format!("... {} more", problems.len() - 40));
            }
            let msg = format!("FAIL {}{kind}: {}", case.name, shown.join("\n    "));
            println!("{msg}");
            failures.push(msg);
        }
    }
    println!("differential: {passed} passed, {failed} failed, {skipped} skipped");
    drop(dockerd);
    if std::env::var("KILN_DIFF_KEEP").is_ok_and(|v| v == "1") {
        println!("kept work directory {}", work.keep().display());
    }
    assert!(failures.is_empty(), "{} case(s) failed", failures.len());
}
