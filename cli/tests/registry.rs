//! Registries and the shared cache, against a real `docker-registry` (distribution 2.8) on
//! loopback: push and read back with skopeo, pull by digest into an empty store, basic auth
//! over TLS with a test CA, and `--cache-to`/`--cache-from` (registry and local) from one
//! store to an empty one, `mode=min|max`, and tampered caches. Needs root (RUN steps).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/registry.rs"]
mod reg;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use reg::{PASSWORD, Registry, USER, sha256};
use support::kiln::{BASE, Kiln, OciImage, Run, root_or_skip};

fn context(dir: &Path, name: &str, dockerfile: &str) -> PathBuf {
    let c = dir.join(name);
    fs::create_dir_all(&c).unwrap();
    fs::write(c.join("Dockerfile"), dockerfile).unwrap();
    fs::write(c.join("a.txt"), "alpha\n").unwrap();
    c
}

fn build(k: &Kiln, ctx: &Path, args: &[String], docker_config: Option<&Path>) -> Run {
    let mut a = vec!["--progress=json".to_owned()];
    a.extend(args.iter().cloned());
    k.build_with(ctx, &a, |c| {
        match docker_config {
            Some(d) => c.env("DOCKER_CONFIG", d),
            None => c.env("DOCKER_CONFIG", "/nonexistent-kiln-docker-config"),
        };
        c.env_remove("KILN_REGISTRY_CA");
    })
}

/// Names of the vertices that ran (`started`) and that hit the cache (`cached`).
fn steps(r: &Run) -> (Vec<String>, Vec<String>) {
    let mut ran = Vec::new();
    let mut cached = Vec::new();
    for e in r.events() {
        let name = e["name"].as_str().unwrap_or("").to_owned();
        match e["event"].as_str() {
            Some("started") => ran.push(name),
            Some("cached") => cached.push(name),
            _ => {}
        }
    }
    (ran, cached)
}

fn phases(r: &Run) -> Vec<String> {
    r.events()
        .iter()
        .filter(|e| e["event"] == "phase")
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect()
}

/// Pushes a small image built on the busybox base to `reg` as `NAME:1`; returns its digest.
fn push_base(reg: &Registry, k: &Kiln, dir: &Path, name: &str, extra: &[String]) -> String {
    let ctx = context(
        dir,
        &format!("push-{name}"),
        &format!("FROM {BASE}\nRUN echo base > /base.txt\n"),
    );
    // The image alone: the tag then names its manifest, whose digest skopeo must report.
    // (With attestations the tag names an index over it: cli/tests/attest.rs.)
    let mut args = vec![
        format!("-o=type=registry,ref={}/{name}:1", reg.addr),
        "--attest=none".to_owned(),
    ];
    args.extend(extra.iter().cloned());
    let r = build(k, &ctx, &args, None).ok();
    r.digest()
}

fn insecure(reg: &Registry) -> Vec<String> {
    vec![format!("--insecure-registry={}", reg.addr)]
}

#[test]
fn pushed_image_reads_back_with_skopeo_and_builds_from_its_digest_in_an_empty_store() {
    if !root_or_skip() {
        return;
    }
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let a = Kiln::with_base();
    let digest = push_base(&reg, &a, dir.path(), "app", &insecure(&reg));
    assert!(digest.starts_with("sha256:"), "{digest}");

    // skopeo reads the same manifest bytes, and copies the image with the same digest.
    let raw = reg.raw_manifest("app:1");
    assert_eq!(sha256(&raw), digest);
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/app:1", reg.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["Digest"], digest);
    let layout = dir.path().join("copy");
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/app:1", reg.addr))
        .arg(format!("oci:{}:app", layout.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest);

    // Pushing again uploads nothing.
    let again = push_base(&reg, &a, dir.path(), "app", &insecure(&reg));
    assert_eq!(again, digest);

    // An empty store builds FROM it by digest.
    let b = Kiln::empty();
    let ctx = context(
        dir.path(),
        "from-digest",
        &format!(
            "FROM {}/app@{digest}\nRUN cat /base.txt > /copy.txt\n",
            reg.addr
        ),
    );
    // …and pushes the result to another repository: the base layers are mounted, not sent.
    let mut args = insecure(&reg);
    args.push(format!("-o=type=registry,ref={}/derived:1", reg.addr));
    args.push("--attest=none".into());
    let r = build(&b, &ctx, &args, None).ok();
    assert!(r.digest().starts_with("sha256:"));
    let pushed = phases(&r)
        .into_iter()
        .find(|p| p.starts_with("pushed "))
        .unwrap();
    let app: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let n = app["layers"].as_array().unwrap().len();
    assert!(pushed.contains(&format!(" {n} mounted")), "{pushed}");
    assert_eq!(sha256(&reg.raw_manifest("derived:1")), r.digest());

    // By tag: pulled once, then kept in the local image store; --pull asks the registry again.
    let d = Kiln::empty();
    let ctx_tag = context(
        dir.path(),
        "from-tag",
        &format!(
            "FROM {}/app:1
RUN cat /base.txt > /copy.txt
",
            reg.addr
        ),
    );
    let first = build(&d, &ctx_tag, &insecure(&reg), None).ok();
    assert!(
        d.images().contains(&format!("{}/app:1", reg.addr)),
        "{}",
        d.images()
    );
    let mut pull = insecure(&reg);
    pull.push("--pull".into());
    let again = build(&d, &ctx_tag, &pull, None).ok();
    assert_eq!(first.digest(), again.digest());
    assert_eq!(first.digest(), r.digest());

    // Without --insecure-registry the plain-HTTP registry is not used.
    let c = Kiln::empty();
    let r = build(&c, &ctx, &[], None);
    assert_ne!(r.code, 0);
}

#[test]
fn tls_registry_with_basic_auth_needs_the_right_password_and_a_trusted_ca() {
    if !root_or_skip() {
        return;
    }
    let reg = Registry::tls_auth();
    let dir = tempfile::tempdir().unwrap();
    let good = reg.docker_config(USER, PASSWORD);
    let bad = reg.docker_config(USER, "wrong-password");
    let ca = format!("--registry-ca={}", reg.ca.as_ref().unwrap().display());

    // Push with the CA and the right credentials; skopeo reads the same digest.
    let a = Kiln::with_base();
    let ctx = context(
        dir.path(),
        "app",
        &format!("FROM {BASE}\nRUN echo tls > /tls.txt\n"),
    );
    let push = format!("-o=type=image,name={}/team/app:1,push=true", reg.addr);
    let r = build(
        &a,
        &ctx,
        &[push.clone(), ca.clone(), "--attest=none".into()],
        Some(&good),
    )
    .ok();
    let digest = r.digest();
    assert!(!r.stderr.contains(PASSWORD), "the password was printed");
    assert_eq!(sha256(&reg.raw_manifest("team/app:1")), digest);

    let from = context(
        dir.path(),
        "from",
        &format!("FROM {}/team/app@{digest}\nRUN cat /tls.txt\n", reg.addr),
    );
    // Wrong password: a clear error naming the registry, nothing written to the store.
    let b = Kiln::empty();
    let r = build(&b, &from, std::slice::from_ref(&ca), Some(&bad));
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(&reg.addr) && r.stderr.contains("authentication failed"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("wrong-password"));
    let blobs = b.root().join("content/blobs/sha256");
    let n = fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "blobs were stored after a failed login");
    assert!(
        !b.images().contains("team/app"),
        "an image record was written"
    );

    // Untrusted CA: refused, with a hint.
    let r = build(&b, &from, &[], Some(&good));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not trusted"), "{}", r.stderr);

    // Both right: it builds.
    build(&b, &from, std::slice::from_ref(&ca), Some(&good)).ok();
}

/// Five steps whose outputs depend only on their inputs (`ls -a`, not `ls -l`: a listing
/// with mtimes differs when a rebuild runs in another minute, and the digests must match).
const FIVE_STEPS: &str = "RUN echo one > /one
COPY a.txt /a.txt
RUN cat /a.txt /one > /two
WORKDIR /work
RUN echo five > five && ls -a /work > /listing
";

/// Machine A exports, machine B (an empty store) imports: every step a hit, same digest.
fn shared_cache_round_trip(kind: &str) {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let a = Kiln::with_base();
    let base = push_base(&reg, &a, dir.path(), "base", &insecure(&reg));
    let df = format!("FROM {}/base@{base}\n{FIVE_STEPS}", reg.addr);
    let ctx = context(dir.path(), "five", &df);
    let local = dir.path().join("cache-dir");
    let (to, from) = match kind {
        "registry" => (
            format!(
                "--cache-to=type=registry,ref={}/cache:five,mode=max",
                reg.addr
            ),
            format!("--cache-from=type=registry,ref={}/cache:five", reg.addr),
        ),
        _ => (
            format!("--cache-to=type=local,dest={},mode=max", local.display()),
            format!("--cache-from=type=local,src={}", local.display()),
        ),
    };
    let mut args = insecure(&reg);
    args.push(to);
    let ra = build(&a, &ctx, &args, None).ok();
    let (ran_a, _) = steps(&ra);
    assert!(
        ran_a.iter().filter(|n| n.contains("RUN")).count() == 3,
        "{ran_a:?}"
    );

    let b = Kiln::empty();
    let mut args = insecure(&reg);
    args.push(from);
    let rb = build(&b, &ctx, &args, None).ok();
    let (ran_b, cached_b) = steps(&rb);
    assert!(
        ran_b
            .iter()
            .all(|n| !n.contains("RUN") && !n.contains("COPY")),
        "steps ran on machine B: {ran_b:?}\n{}",
        rb.stderr
    );
    assert!(
        cached_b.iter().filter(|n| n.contains("RUN")).count() == 3,
        "{cached_b:?}"
    );
    assert!(cached_b.iter().any(|n| n.contains("COPY")), "{cached_b:?}");
    assert_eq!(
        rb.digest(),
        ra.digest(),
        "the image differs across machines"
    );
}

#[test]
fn registry_cache_max_makes_a_cold_store_hit_every_step_with_the_same_digest() {
    if !root_or_skip() {
        return;
    }
    shared_cache_round_trip("registry");
}

#[test]
fn local_cache_max_makes_a_cold_store_hit_every_step_with_the_same_digest() {
    if !root_or_skip() {
        return;
    }
    shared_cache_round_trip("local");
}

fn cache_layers(dir: &Path) -> Vec<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"][0]["digest"].as_str().unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(
            dir.join("blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.kiln.cache.config.v1+json"
    );
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn cache_mode_min_exports_only_the_final_image_layers_and_max_the_build_stage_too() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = Kiln::with_base();
    let ctx = context(
        dir.path(),
        "multi",
        &format!(
            "FROM {BASE} AS build\nRUN echo artifact > /artifact && echo junk > /junk\n\
             FROM {BASE}\nCOPY --from=build /artifact /artifact\nRUN cat /artifact > /used\n"
        ),
    );
    let min = dir.path().join("min");
    let max = dir.path().join("max");
    let img = dir.path().join("img.tar");
    build(
        &k,
        &ctx,
        &[
            format!("--cache-to=type=local,dest={},mode=min", min.display()),
            format!("--cache-to=type=local,dest={},mode=max", max.display()),
            format!("-o=type=oci,dest={}", img.display()),
        ],
        None,
    )
    .ok();
    let image: Vec<String> = OciImage::read(&img)
        .layers
        .iter()
        .map(|(d, _)| d.clone())
        .collect();
    let min_layers = cache_layers(&min);
    let max_layers = cache_layers(&max);
    assert!(!min_layers.is_empty());
    for l in &min_layers {
        assert!(
            image.contains(l),
            "min exported {l}, not a layer of the image"
        );
    }
    assert!(
        max_layers.iter().any(|l| !image.contains(l)),
        "max exported no layer of the build stage"
    );
    for l in &min_layers {
        assert!(max_layers.contains(l));
    }
}

#[test]
fn tampered_cache_blob_or_manifest_is_rejected_and_the_steps_rebuild() {
    if !root_or_skip() {
        return;
    }
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let a = Kiln::with_base();
    let base = push_base(&reg, &a, dir.path(), "base", &insecure(&reg));
    let ctx = context(
        dir.path(),
        "five",
        &format!("FROM {}/base@{base}\n{FIVE_STEPS}", reg.addr),
    );
    let mut args = insecure(&reg);
    args.push(format!(
        "--cache-to=type=registry,ref={}/cache:t,mode=max",
        reg.addr
    ));
    let ra = build(&a, &ctx, &args, None).ok();
    let from = format!("--cache-from=type=registry,ref={}/cache:t", reg.addr);

    // 1. The last layer blob (the final RUN's) is replaced by other bytes of the same size.
    let raw = reg.raw_manifest("cache:t");
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let layers = m["layers"].as_array().unwrap();
    let last = layers.last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let f = reg.blob_file(&last);
    let mut bytes = fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&f, &bytes).unwrap();
    let b = Kiln::empty();
    let mut args = insecure(&reg);
    args.push(from.clone());
    let rb = build(&b, &ctx, &args, None).ok();
    let warn = phases(&rb).join("\n");
    assert!(
        warn.contains("failed verification") && warn.contains(&last),
        "{warn}"
    );
    let (ran, _) = steps(&rb);
    assert!(
        ran.iter().any(|n| n.contains("RUN")),
        "nothing rebuilt: {ran:?}"
    );
    assert_eq!(rb.digest(), ra.digest());

    // 2. The cache manifest itself is altered in storage: the whole cache is refused.
    let mf = reg.blob_file(&sha256(&raw));
    let mut text = fs::read(&mf).unwrap();
    text.push(b'\n');
    fs::write(&mf, &text).unwrap();
    let c = Kiln::empty();
    let rc = build(&c, &ctx, &args, None).ok();
    let warn = phases(&rc).join("\n");
    assert!(warn.contains("failed verification"), "{warn}");
    let (ran, _) = steps(&rc);
    assert_eq!(
        ran.iter().filter(|n| n.contains("RUN")).count(),
        3,
        "{ran:?}"
    );
    assert_eq!(rc.digest(), ra.digest());
}

/// `PUT`s an OCI index for `entries` (digest, architecture) under `REG/REPO:TAG` (python3, to
/// keep the test free of another HTTP client).
fn put_index(reg: &Registry, repo_tag: &str, entries: &[(String, &str, usize)]) {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(d, arch, size)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d, "size": size,
                "platform": {"os": "linux", "architecture": arch},
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let (repo, tag) = repo_tag.split_once(':').unwrap();
    let url = format!("http://{}/v2/{repo}/manifests/{tag}", reg.addr);
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, urllib.request as u\n\
             r = u.Request(sys.argv[1], data=sys.argv[2].encode(), method='PUT', \
             headers={'Content-Type': 'application/vnd.oci.image.index.v1+json'})\n\
             print(u.urlopen(r).status)",
            &url,
            &index.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_index_resolves_to_the_build_platform_manifest() {
    if !root_or_skip() {
        return;
    }
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let a = Kiln::with_base();
    let amd = push_base(&reg, &a, dir.path(), "multi", &insecure(&reg));
    let amd_size = reg.raw_manifest("multi:1").len();
    // Another image in the same repository stands in for the arm64 variant.
    let ctx = context(
        dir.path(),
        "arm",
        &format!("FROM {BASE}\nRUN echo arm > /arm.txt\n"),
    );
    let mut args = insecure(&reg);
    args.push(format!("-o=type=registry,ref={}/multi:arm", reg.addr));
    let arm = build(&a, &ctx, &args, None).ok().digest();
    let arm_size = reg.raw_manifest("multi:arm").len();
    put_index(
        &reg,
        "multi:both",
        &[(arm, "arm64", arm_size), (amd.clone(), "amd64", amd_size)],
    );
    let b = Kiln::empty();
    let ctx = context(
        dir.path(),
        "from-index",
        &format!(
            "FROM {}/multi:both\nRUN test -f /base.txt && test ! -e /arm.txt\n",
            reg.addr
        ),
    );
    build(&b, &ctx, &insecure(&reg), None).ok();
    // The tag is recorded with the platform manifest's digest.
    assert!(
        b.images().contains(&amd[7..19]) || b.images().contains(&amd),
        "{}",
        b.images()
    );
}

#[test]
fn cache_import_fetches_only_the_records_a_build_asks_for() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), "five", &format!("FROM {BASE}\n{FIVE_STEPS}"));
    let cache = dir.path().join("cache");
    let a = Kiln::with_base();
    build(
        &a,
        &ctx,
        &[format!(
            "--cache-to=type=local,dest={},mode=max",
            cache.display()
        )],
        None,
    )
    .ok();
    // The COPY's input changed: only the first RUN can come from the cache, and only its layer
    // is fetched (the base layers are local); nothing is fetched for the steps after the COPY.
    fs::write(ctx.join("a.txt"), "changed\n").unwrap();
    let b = Kiln::with_base();
    let r = build(
        &b,
        &ctx,
        &[format!("--cache-from=type=local,src={}", cache.display())],
        None,
    )
    .ok();
    let (ran, cached) = steps(&r);
    assert_eq!(
        cached.iter().filter(|n| n.contains("RUN")).count(),
        1,
        "{cached:?}"
    );
    assert_eq!(
        ran.iter().filter(|n| n.contains("RUN")).count(),
        2,
        "{ran:?}"
    );
    let import = phases(&r)
        .into_iter()
        .find(|p| p.starts_with("importing cache from"))
        .unwrap();
    assert!(import.contains(": 1 records, 1 layer blobs,"), "{import}");
}

#[test]
fn tampered_local_cache_blob_is_rejected_and_the_step_rebuilds() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), "five", &format!("FROM {BASE}\n{FIVE_STEPS}"));
    let cache = dir.path().join("cache");
    let a = Kiln::with_base();
    let ra = build(
        &a,
        &ctx,
        &[format!(
            "--cache-to=type=local,dest={},mode=max",
            cache.display()
        )],
        None,
    )
    .ok();
    // Flip a byte in the last layer blob the cache lists (the final RUN's).
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(cache.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap();
    let blobs = cache.join("blobs/sha256");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&md[7..])).unwrap()).unwrap();
    let last = m["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let f = blobs.join(&last[7..]);
    let mut bytes = fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    fs::write(&f, &bytes).unwrap();

    let b = Kiln::with_base();
    let rb = build(
        &b,
        &ctx,
        &[format!("--cache-from=type=local,src={}", cache.display())],
        None,
    )
    .ok();
    let warn = phases(&rb).join("\n");
    assert!(
        warn.contains("failed verification") && warn.contains(&last),
        "{warn}"
    );
    let (ran, _) = steps(&rb);
    assert!(
        ran.iter().any(|n| n.contains("RUN")),
        "nothing rebuilt: {ran:?}"
    );
    assert_eq!(rb.digest(), ra.digest());
    // Nothing of the tampered blob entered the store.
    assert!(
        !b.root()
            .join("content/blobs/sha256")
            .join(&last[7..])
            .exists()
            || {
                // …unless the rebuilt step produced the genuine blob itself.
                let stored =
                    fs::read(b.root().join("content/blobs/sha256").join(&last[7..])).unwrap();
                reg::sha256(&stored) == last
            }
    );
}
