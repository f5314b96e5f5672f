//! Attestations end to end with the real `kiln` binary: signed provenance and SBOMs attached
//! to the image, `kiln verify` on every way of naming it, the tamper vectors of
//! `vectors/attest/` rejected by `kiln verify` for their reason, reproducible attestations, and
//! the image digest unchanged by attaching them. (The step-cannot-read-the-key case is in
//! `vectors/attacks/build-signing-key`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/registry.rs"]
mod reg;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use support::kiln::{BASE, Kiln, Run, root_or_skip, which};

const PROVENANCE: &str = "https://slsa.dev/provenance/v1";
const SPDX: &str = "https://spdx.dev/Document";
const CYCLONEDX: &str = "https://cyclonedx.org/bom";

fn vectors() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/attest"))
}

fn app_context(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {BASE} AS build\nRUN echo built > /built.txt\n\
             FROM {BASE}\nCOPY app.sh /srv/bin/app.sh\nCOPY --from=build /built.txt /srv/\n\
             RUN chmod 0755 /srv/bin/app.sh\nENTRYPOINT [\"/srv/bin/app.sh\"]\n"
        ),
    )
    .unwrap();
    fs::write(dir.join("app.sh"), "#!/bin/sh\necho hello\n").unwrap();
}

fn keypair(dir: &Path, k: &Kiln) -> (PathBuf, PathBuf) {
    let prefix = dir.join("builder");
    k.run(dir, ["key", "generate", "--out", prefix.to_str().unwrap()])
        .ok();
    (prefix.with_extension("key"), prefix.with_extension("pub"))
}

fn verify(k: &Kiln, image: &str, key: &Path, extra: &[&str]) -> (Run, Value) {
    let mut args = vec![
        "verify",
        image,
        "--key",
        key.to_str().unwrap(),
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    let r = k.run(k.root(), args);
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("verify --output json: {e}\n{}\n{}", r.stdout, r.stderr));
    (r, v)
}

#[test]
fn signed_attestations_verify_wherever_the_image_is_named() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("app");
    app_context(&ctx);
    let (key, public) = keypair(tmp.path(), &k);
    let tar = tmp.path().join("app.tar");
    let dir = tmp.path().join("layout");
    let dest = tmp.path().join("attestations");
    let extra = tmp.path().join("extra");
    fs::create_dir_all(&extra).unwrap();
    fs::write(extra.join("notes.txt"), "named context\n").unwrap();
    let built = k
        .build(
            &ctx,
            &[
                "--build-context",
                &format!("extra={}", extra.display()),
                "-t",
                "app:1",
                "--sign-key",
                key.to_str().unwrap(),
                "--builder-id",
                "https://ci.example/kiln",
                "--attest",
                "provenance=mode=max",
                "--attest-dest",
                dest.to_str().unwrap(),
                "-o",
                &format!("type=oci,dest={}", tar.display()),
                "-o",
                &format!("type=oci-dir,dest={}", dir.display()),
            ],
        )
        .ok();
    assert!(
        built.stderr.contains("signed and attached"),
        "{}",
        built.stderr
    );
    let digest = built.digest();
    for image in [
        format!("oci-archive:{}", tar.display()),
        format!("oci:{}", dir.display()),
        "app:1".to_owned(),
    ] {
        let (r, v) = verify(
            &k,
            &image,
            &public,
            &["--builder-id", "https://ci.example/kiln"],
        );
        assert_eq!(r.code, 0, "{image}: {}\n{}", r.stdout, r.stderr);
        assert_eq!(v["image"], digest.as_str(), "{image}");
        let types: Vec<&str> = v["attestations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["predicateType"].as_str().unwrap())
            .collect();
        assert_eq!(types, [PROVENANCE, SPDX, CYCLONEDX], "{image}");
        // Only provenance, by type.
        let (r, v) = verify(&k, &image, &public, &["--predicate-type", PROVENANCE]);
        assert_eq!(r.code, 0, "{image}: {}", r.stderr);
        assert_eq!(v["attestations"].as_array().unwrap().len(), 1);
    }
    // The wrong builder, the wrong key: exit 1 with the reason.
    let image = format!("oci:{}", dir.display());
    let (r, v) = verify(
        &k,
        &image,
        &public,
        &["--builder-id", "https://evil.example/"],
    );
    assert_eq!(r.code, 1);
    assert!(
        v["errors"].to_string().contains("builder"),
        "{}",
        v["errors"]
    );
    let other = tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let (_, other_pub) = keypair(&other, &k);
    let (r, v) = verify(&k, &image, &other_pub, &[]);
    assert_eq!(r.code, 1, "another key must not verify: {v}");
    let kinds = v["rejected"].to_string();
    assert!(
        kinds.contains("KeyMismatch") && kinds.contains("BadSignature"),
        "{kinds}"
    );

    // --attest-dest: statements, bundles and DSSE envelopes as files; the bundle is the same
    // bytes as the attached one.
    for stem in ["provenance", "sbom.spdx", "sbom.cdx"] {
        for ext in ["statement.json", "sigstore.json", "intoto.jsonl"] {
            let p = dest.join(format!("{stem}.{ext}"));
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    // The provenance names the base image by digest, the context, the Dockerfile; in max
    // mode every RUN step with how the sandbox confined it.
    let st: Value =
        serde_json::from_slice(&fs::read(dest.join("provenance.statement.json")).unwrap()).unwrap();
    assert_eq!(
        st["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );
    let p = &st["predicate"];
    assert_eq!(p["runDetails"]["builder"]["id"], "https://ci.example/kiln");
    let deps = p["buildDefinition"]["resolvedDependencies"].to_string();
    assert!(deps.contains("pkg:docker/kiln-test/busybox"), "{deps}");
    assert!(deps.contains("\"context\""), "{deps}");
    assert!(deps.contains("\"context:extra\""), "{deps}");
    assert_eq!(
        p["buildDefinition"]["externalParameters"]["namedContexts"]["extra"],
        format!("dir:{}", extra.display())
    );
    assert_eq!(
        p["buildDefinition"]["externalParameters"]["configSource"]["uri"],
        "Dockerfile"
    );
    let steps = p["buildDefinition"]["internalParameters"]["steps"]
        .as_array()
        .expect("max mode lists the steps");
    assert_eq!(steps.len(), 2, "{steps:?}");
    for s in steps {
        assert_eq!(s["network"], "none");
        assert_eq!(s["confinement"]["no_new_privs"], true, "{s}");
        assert!(s["confinement"]["seccomp"].is_string(), "{s}");
    }
    // The SBOM lists the base (busybox) and the app's files with their digests.
    let spdx: Value =
        serde_json::from_slice(&fs::read(dest.join("sbom.spdx.statement.json")).unwrap()).unwrap();
    let doc = spdx["predicate"].to_string();
    assert!(
        doc.contains("/srv/bin/app.sh"),
        "app file missing from the SBOM"
    );
    let busybox = spdx["predicate"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "busybox")
        .unwrap_or_else(|| panic!("the busybox base is not a package of the SBOM: {doc}"));
    assert!(
        busybox["externalRefs"]
            .to_string()
            .contains("pkg:generic/busybox@1."),
        "{busybox}"
    );
    let cdx: Value =
        serde_json::from_slice(&fs::read(dest.join("sbom.cdx.statement.json")).unwrap()).unwrap();
    assert!(
        cdx["predicate"]["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["purl"]
                .as_str()
                .is_some_and(|p| p.starts_with("pkg:generic/busybox@1."))),
        "the busybox base is not a CycloneDX component"
    );
    let app_sha = hex(&Sha256::digest(b"#!/bin/sh\necho hello\n"));
    assert!(
        doc.contains(&app_sha),
        "app.sh's sha256 missing from the SBOM"
    );

    // The real build's SBOMs pass the third-party validators (pyspdxtools, cyclonedx-python-lib).
    let spdx_doc = tmp.path().join("image.spdx.json");
    fs::write(&spdx_doc, serde_json::to_vec(&spdx["predicate"]).unwrap()).unwrap();
    let out = std::process::Command::new("pyspdxtools")
        .arg("-i")
        .arg(&spdx_doc)
        .output()
        .expect("pyspdxtools (spdx-tools): run KILN_DEPS_FULL=1 scripts/deps.sh");
    assert!(
        out.status.success(),
        "pyspdxtools: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cdx_doc = tmp.path().join("image.cdx.json");
    fs::write(&cdx_doc, serde_json::to_vec(&cdx["predicate"]).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../attest/tests/py/sbom_validate_cyclonedx.py"
        ))
        .arg(&cdx_doc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cyclonedx-python-lib: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kiln inspect summarises all three.
    let r = k
        .run(k.root(), ["inspect", "app:1", "--format", "json"])
        .ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["attestations"].as_array().unwrap().len(), 3, "{v}");
    assert!(
        v["attestations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["signed"] == true)
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn unsigned_builds_say_so_and_verify_refuses_them() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("app");
    app_context(&ctx);
    let (_, public) = keypair(tmp.path(), &k);
    let dir = tmp.path().join("layout");
    let r = k
        .build(
            &ctx,
            &["-o", &format!("type=oci-dir,dest={}", dir.display())],
        )
        .ok();
    assert!(r.stderr.contains("UNSIGNED"), "{}", r.stderr);
    let (r, v) = verify(&k, &format!("oci:{}", dir.display()), &public, &[]);
    assert_eq!(r.code, 1);
    assert!(v["errors"].to_string().contains("not signed"), "{v}");
    // kiln inspect still shows the (unsigned) statements.
    let r = k
        .run(
            k.root(),
            [
                "inspect",
                &format!("oci:{}", dir.display()),
                "--format",
                "json",
            ],
        )
        .ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["attestations"].as_array().unwrap().len(), 3, "{v}");
}

#[test]
fn an_archive_started_beside_failed_attestations_is_not_left_behind() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("app");
    app_context(&ctx);
    // The OCI archive is written while the attestations are made; writing them to
    // --attest-dest fails (a file where the directory should be), so the build fails.
    fs::write(tmp.path().join("file"), b"").unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let r = k.build(
        &ctx,
        &[
            "--attest-dest",
            tmp.path().join("file/sub").to_str().unwrap(),
            "-o",
            &format!("type=oci,dest={}", out.join("image.tar").display()),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("writing attestation"), "{}", r.stderr);
    let left: Vec<_> = fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // The same build with attestations that can be written gives the archive.
    let ok = k.build(
        &ctx,
        &[
            "-o",
            &format!("type=oci,dest={}", out.join("image.tar").display()),
        ],
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(out.join("image.tar").is_file());
}

/// The PEM of a key file with `a`'s secret and `b`'s public key: RustCrypto's PKCS#8 ends
/// with the SEC1 public key, the uncompressed point's X and Y its last 64 bytes.
fn key_with_anothers_public_key(a: &Path, b: &Path) -> String {
    use base64::Engine as _;
    let der = |p: &Path| {
        let pem = fs::read_to_string(p).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    let (mut a, b) = (der(a), der(b));
    assert_eq!(a.len(), b.len());
    let n = a.len();
    a[n - 64..].copy_from_slice(&b[n - 64..]);
    let body = base64::engine::general_purpose::STANDARD.encode(&a);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

#[test]
fn a_key_whose_public_key_is_not_its_secrets_signs_nothing_and_fails_the_build() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("app");
    app_context(&ctx);
    let (a, _) = keypair(tmp.path(), &k);
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    let (b, _) = keypair(&other, &k);
    let damaged = tmp.path().join("damaged.key");
    fs::write(&damaged, key_with_anothers_public_key(&a, &b)).unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let r = k.build(
        &ctx,
        &[
            "--sign-key",
            damaged.to_str().unwrap(),
            "-t",
            "damaged-key:latest",
            "-o",
            &format!("type=oci,dest={}", out.join("image.tar").display()),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("signing the") && r.stderr.contains("not its secret's"),
        "{}",
        r.stderr
    );
    let left: Vec<_> = fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let images = k.run(k.root(), ["images"]);
    assert!(!images.stdout.contains("damaged-key"), "{}", images.stdout);
    // The key it was made from signs the same build.
    let ok = k.build(&ctx, &["--sign-key", a.to_str().unwrap()]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
}

#[test]
fn attaching_attestations_leaves_the_image_digest_unchanged() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("app");
    app_context(&ctx);
    let (key, _) = keypair(tmp.path(), &k);
    let plain = tmp.path().join("plain");
    let signed = tmp.path().join("signed");
    let a = k
        .build(
            &ctx,
            &[
                "--attest",
                "none",
                "-o",
                &format!("type=oci-dir,dest={}", plain.display()),
            ],
        )
        .ok();
    let b = k
        .build(
            &ctx,
            &[
                "--sign-key",
                key.to_str().unwrap(),
                "-o",
                &format!("type=oci-dir,dest={}", signed.display()),
            ],
        )
        .ok();
    assert_eq!(a.digest(), b.digest());
    let top = |d: &Path| -> Value {
        serde_json::from_slice::<Value>(&fs::read(d.join("index.json")).unwrap()).unwrap()
            ["manifests"][0]
            .clone()
    };
    assert_eq!(top(&plain)["digest"], a.digest().as_str());
    let t = top(&signed);
    assert_eq!(t["mediaType"], "application/vnd.oci.image.index.v1+json");
    let index: Value = serde_json::from_slice(
        &fs::read(
            signed
                .join("blobs/sha256")
                .join(t["digest"].as_str().unwrap().trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let m = index["manifests"].as_array().unwrap();
    // The image, BuildKit's attestation manifest, one referrer per signed statement.
    assert_eq!(m.len(), 5, "{index}");
    assert_eq!(m[0]["digest"], a.digest().as_str());
    assert_eq!(m[1]["platform"]["os"], "unknown");
    assert_eq!(
        m[1]["annotations"]["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    assert_eq!(
        m[1]["annotations"]["vnd.docker.reference.digest"],
        a.digest().as_str()
    );
    for r in &m[2..] {
        assert_eq!(
            r["artifactType"],
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        );
        let bytes = fs::read(
            signed
                .join("blobs/sha256")
                .join(r["digest"].as_str().unwrap().trim_start_matches("sha256:")),
        )
        .unwrap();
        let referrer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(referrer["subject"]["digest"], a.digest().as_str());
    }
    // skopeo picks the image for this platform out of the index.
    if which("skopeo") {
        let out = std::process::Command::new("skopeo")
            .args(["inspect", &format!("oci:{}", signed.display())])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], t["digest"], "skopeo names the index");
        assert_eq!(v["Architecture"], "amd64");
    } else {
        panic!("skopeo is not installed: run scripts/deps.sh with KILN_DEPS_FULL=1");
    }
}

/// Everything but `invocationId`, `startedOn` and `finishedOn`.
fn without_run_metadata(mut v: Value) -> Value {
    let m = &mut v["predicate"]["runDetails"]["metadata"];
    if let Some(o) = m.as_object_mut() {
        o.remove("invocationId");
        o.remove("startedOn");
        o.remove("finishedOn");
    }
    v
}

#[test]
fn identical_builds_give_identical_attestations_but_for_three_fields() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut got = Vec::new();
    for n in 0..2 {
        let k = Kiln::with_base();
        let ctx = tmp.path().join(format!("ctx{n}/nested/app"));
        app_context(&ctx);
        let dest = tmp.path().join(format!("dest{n}"));
        let r = k
            .build(
                &ctx,
                &[
                    "--attest",
                    "provenance=mode=max",
                    "--attest-dest",
                    dest.to_str().unwrap(),
                ],
            )
            .ok();
        let read = |name: &str| -> Vec<u8> { fs::read(dest.join(name)).unwrap() };
        got.push((
            r.digest(),
            read("provenance.statement.json"),
            read("sbom.spdx.statement.json"),
            read("sbom.cdx.statement.json"),
        ));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // A no-change rebuild (every step cached: the catalog and the SBOM statements come from
    // the store's cache) says the same.
    {
        let k = Kiln::with_base();
        let ctx = tmp.path().join("ctx9/app");
        app_context(&ctx);
        let dest = tmp.path().join("dest9");
        for _ in 0..2 {
            k.build(
                &ctx,
                &[
                    "--attest",
                    "provenance=mode=max",
                    "--attest-dest",
                    dest.to_str().unwrap(),
                ],
            )
            .ok();
        }
        for (i, name) in ["sbom.spdx.statement.json", "sbom.cdx.statement.json"]
            .iter()
            .enumerate()
        {
            let again = fs::read(dest.join(name)).unwrap();
            let first = if i == 0 { &got[0].2 } else { &got[0].3 };
            assert_eq!(&again, first, "{name} differs on a cached rebuild");
        }
    }
    let (a, b) = (&got[0], &got[1]);
    assert_eq!(a.0, b.0, "image digests differ");
    assert_eq!(a.2, b.2, "SPDX SBOMs differ");
    assert_eq!(a.3, b.3, "CycloneDX SBOMs differ");
    let pa: Value = serde_json::from_slice(&a.1).unwrap();
    let pb: Value = serde_json::from_slice(&b.1).unwrap();
    assert_ne!(
        pa["predicate"]["runDetails"]["metadata"]["invocationId"],
        pb["predicate"]["runDetails"]["metadata"]["invocationId"]
    );
    assert_eq!(without_run_metadata(pa), without_run_metadata(pb));
}

/// A no-op rebuild takes its SBOM statements from the store's cache without cataloguing the
/// file system. When a cached statement's blob is damaged, the build catalogs after all and
/// makes the same statement instead of failing or leaving the SBOM out.
#[test]
fn a_no_op_rebuild_remakes_an_sbom_statement_it_cannot_read_back() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let k = Kiln::with_base();
    let ctx = tmp.path().join("app");
    app_context(&ctx);
    let dest = |n: u32| tmp.path().join(format!("dest{n}"));
    let build = |n: u32| {
        k.build(&ctx, &["--attest-dest", dest(n).to_str().unwrap()])
            .ok()
            .digest()
    };
    let first = build(1);
    let spdx = fs::read(dest(1).join("sbom.spdx.statement.json")).unwrap();
    let cdx = fs::read(dest(1).join("sbom.cdx.statement.json")).unwrap();
    assert_eq!(build(2), first);
    assert_eq!(
        fs::read(dest(2).join("sbom.spdx.statement.json")).unwrap(),
        spdx
    );

    // Damage the SPDX statement's blob in the content store.
    let blob = k
        .root()
        .join("content/blobs/sha256")
        .join(hex(&Sha256::digest(&spdx)));
    assert!(blob.is_file(), "the statement is a blob of the store");
    fs::write(&blob, b"damaged").unwrap();
    assert_eq!(build(3), first);
    assert_eq!(
        fs::read(dest(3).join("sbom.spdx.statement.json")).unwrap(),
        spdx
    );
    assert_eq!(
        fs::read(dest(3).join("sbom.cdx.statement.json")).unwrap(),
        cdx
    );
}

#[test]
fn a_rebuild_with_one_file_changed_has_the_sbom_of_a_cold_build() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    // Enough files in one directory for the parallel copy, an executable and a hard link.
    for i in 0..100 {
        let p = ctx.join("src").join(format!("f{i:03}.txt"));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("file {i}\n").repeat(i + 1)).unwrap();
    }
    fs::write(ctx.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(
        ctx.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fs::hard_link(ctx.join("src/f001.txt"), ctx.join("src/same-inode.txt")).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {BASE}\nCOPY . /ctx/\n"),
    )
    .unwrap();
    let dest = |name: &str| tmp.path().join(name);
    let build_run = |k: &Kiln, name: &str| {
        k.build(&ctx, &["--attest-dest", dest(name).to_str().unwrap()])
            .ok()
    };
    let build = |k: &Kiln, name: &str| build_run(k, name).digest();
    let k = Kiln::with_base();
    build(&k, "first");
    // A client file's digest is remembered (and a COPY knows it) once its status is older
    // than two seconds, counted in whole seconds: after three, every file's is.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    fs::write(ctx.join("src/f042.txt"), "changed\n").unwrap();
    let run = build_run(&k, "rebuilt");
    assert!(!run.stderr.contains("hard-linked"), "{}", run.stderr);
    let rebuilt = run.digest();
    // Now the COPY's files are known: the next one hard-links the unchanged ones from its
    // layer, the first name of the hard-linked pair included (its second name is a link to
    // it, as in any copy). Not f043 (changed now), nor f042 (changed too shortly before the
    // last build for its identity to be remembered).
    fs::write(ctx.join("src/f043.txt"), "changed too\n").unwrap();
    let run = build_run(&k, "again");
    assert!(
        run.stderr.contains("100 of 102 files hard-linked"),
        "{}",
        run.stderr
    );
    let again = run.digest();
    // `--no-cache` links nothing (and gives the same image).
    let run = k.build(&ctx, &["--no-cache"]).ok();
    assert!(!run.stderr.contains("hard-linked"), "{}", run.stderr);
    assert_eq!(run.digest(), again);

    // The same contexts built cold, each in a store of its own, with every file's status
    // just changed (so not remembered: a COPY knows no digest and the catalog reads every
    // file).
    let cold = |name: &str| {
        for e in fs::read_dir(ctx.join("src")).unwrap() {
            let p = e.unwrap().path();
            fs::set_permissions(&p, fs::metadata(&p).unwrap().permissions()).unwrap();
        }
        let fresh = Kiln::with_base();
        build(&fresh, name)
    };
    fs::write(
        ctx.join("src/f043.txt"),
        format!("file {}\n", 43).repeat(44),
    )
    .unwrap();
    assert_eq!(cold("cold-rebuilt"), rebuilt);
    fs::write(ctx.join("src/f043.txt"), "changed too\n").unwrap();
    assert_eq!(cold("cold-again"), again);
    for (warm, cold) in [("rebuilt", "cold-rebuilt"), ("again", "cold-again")] {
        for file in ["sbom.spdx.statement.json", "sbom.cdx.statement.json"] {
            assert_eq!(
                fs::read(dest(warm).join(file)).unwrap(),
                fs::read(dest(cold).join(file)).unwrap(),
                "{warm}/{file}"
            );
        }
    }
}

/// Each bundle of `vectors/attest/` attached, as cosign attaches bundles, to the layout of the
/// image the vectors are about (`image-manifest.json`): `kiln verify` rejects every tampered
/// one with the reasons `expected.json` names, and passes the valid one.
#[test]
fn kiln_verify_rejects_each_tamper_vector_for_its_reason() {
    let dir = vectors();
    let expected: BTreeMap<String, Vec<String>> =
        serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let policy: Value =
        serde_json::from_slice(&fs::read(dir.join("policy.json")).unwrap()).unwrap();
    let manifest = fs::read(dir.join("image-manifest.json")).unwrap();
    let config = fs::read(dir.join("image-config.json")).unwrap();
    let subject = format!("sha256:{}", hex(&Sha256::digest(&manifest)));
    assert_eq!(policy["subject_digest"], subject.as_str());
    let k = Kiln::empty();
    let mut cases: Vec<(String, Vec<u8>, Vec<String>)> = expected
        .iter()
        .map(|(name, kinds)| {
            (
                name.clone(),
                fs::read(dir.join(name)).unwrap(),
                kinds.clone(),
            )
        })
        .collect();
    // Oversized: the valid bundle padded past the 16 MiB limit.
    let mut big = fs::read(dir.join("valid.sigstore.json")).unwrap();
    big.resize(16 * 1024 * 1024 + 1, b' ');
    cases.push(("oversized".into(), big, vec!["TooLarge".into()]));
    assert!(cases.len() >= 15, "{} vectors", cases.len());
    for (name, bundle, kinds) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path();
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| -> (String, usize) {
            let h = hex(&Sha256::digest(bytes));
            fs::write(blobs.join(&h), bytes).unwrap();
            (format!("sha256:{h}"), bytes.len())
        };
        put(&config);
        put(&manifest);
        let (empty, empty_size) = put(b"{}");
        let (layer, layer_size) = put(&bundle);
        let referrer = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": empty_size},
            "layers": [{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "digest": layer, "size": layer_size}],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": manifest.len()},
        }))
        .unwrap();
        let (rd, rs) = put(&referrer);
        fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": manifest.len()},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": rd, "size": rs,
                 "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json"},
            ],
        });
        fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        let (r, v) = verify(
            &k,
            &format!("oci:{}", layout.display()),
            &dir.join("test.pub"),
            &[
                "--builder-id",
                policy["builder_id"].as_str().unwrap(),
                "--source-uri",
                policy["source_uri"].as_str().unwrap(),
                "--predicate-type",
                policy["predicate_type"].as_str().unwrap(),
            ],
        );
        let got: Vec<String> = v["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| f["reasons"].as_array().unwrap().iter())
            .map(|r| r["kind"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, kinds, "{name}: {v}");
        assert_eq!(r.code, if kinds.is_empty() { 0 } else { 1 }, "{name}: {v}");
        if !kinds.is_empty() {
            assert!(
                !v["errors"].as_array().unwrap().is_empty(),
                "{name}: no reason given: {v}"
            );
        }
    }
}

#[test]
fn an_altered_attestation_blob_is_caught_by_its_digest() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("app");
    app_context(&ctx);
    let (key, public) = keypair(tmp.path(), &k);
    let dir = tmp.path().join("layout");
    k.build(
        &ctx,
        &[
            "--sign-key",
            key.to_str().unwrap(),
            "-o",
            &format!("type=oci-dir,dest={}", dir.display()),
        ],
    )
    .ok();
    // Rewrite every bundle blob in place with a changed payload byte.
    let mut changed = 0;
    for e in fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        let bytes = fs::read(&p).unwrap();
        if bytes.windows(12).any(|w| w == b"dsseEnvelope") {
            let mut b = bytes.clone();
            let i = b.iter().position(|c| *c == b'e').unwrap();
            b[i] = b'f';
            fs::write(&p, b).unwrap();
            changed += 1;
        }
    }
    assert_eq!(changed, 3, "three bundles in the layout");
    let r = k.run(
        k.root(),
        [
            "verify",
            &format!("oci:{}", dir.display()),
            "--key",
            public.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("altered"), "{}", r.stderr);
}

/// `-o type=registry` pushes the attestations with the image, as BuildKit does (the tag names
/// the index) plus the referrers-tag fallback (Debian's docker-registry 2.8 has no referrers
/// API); `kiln verify docker://…` finds and checks them there.
#[test]
fn pushed_attestations_verify_from_the_registry() {
    if !root_or_skip() {
        return;
    }
    let registry = reg::Registry::plain();
    let k = Kiln::with_base();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("app");
    app_context(&ctx);
    let (key, public) = keypair(tmp.path(), &k);
    let insecure = format!("--insecure-registry={}", registry.addr);
    let image = format!("{}/team/app:1", registry.addr);
    let built = k
        .build(
            &ctx,
            &[
                &insecure,
                "--sign-key",
                key.to_str().unwrap(),
                "-o",
                &format!("type=registry,ref={image}"),
            ],
        )
        .ok();
    let digest = built.digest();
    let (r, v) = verify(&k, &format!("docker://{image}"), &public, &[&insecure]);
    assert_eq!(r.code, 0, "{v}\n{}", r.stderr);
    assert_eq!(v["image"], digest.as_str());
    assert_eq!(v["attestations"].as_array().unwrap().len(), 3, "{v}");
    // By digest too.
    let by_digest = format!("docker://{}/team/app@{digest}", registry.addr);
    let (r, v) = verify(&k, &by_digest, &public, &[&insecure]);
    assert_eq!(r.code, 0, "{v}");
    // The tag names the index; the image inside it is kiln's.
    let raw: Value = serde_json::from_slice(&registry.raw_manifest("team/app:1")).unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(raw["manifests"][0]["digest"], digest.as_str());
    // The referrers tag lists one bundle referrer per statement.
    let hex = digest.trim_start_matches("sha256:");
    let tagged: Value =
        serde_json::from_slice(&registry.raw_manifest(&format!("team/app:sha256-{hex}"))).unwrap();
    let refs = tagged["manifests"].as_array().unwrap();
    assert_eq!(refs.len(), 3, "{tagged}");
    assert!(
        refs.iter()
            .all(|d| d["artifactType"] == "application/vnd.dev.sigstore.bundle.v0.3+json")
    );
    // skopeo picks kiln's image for this platform out of the index.
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["Architecture"], "amd64");
    let img: Value =
        serde_json::from_slice(&registry.raw_manifest(&format!("team/app@{digest}"))).unwrap();
    assert_eq!(
        j["Layers"],
        json!(
            img["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].clone())
                .collect::<Vec<_>>()
        )
    );
    // Another key does not verify.
    let other = tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let (_, other_pub) = keypair(&other, &k);
    let (r, _) = verify(&k, &format!("docker://{image}"), &other_pub, &[&insecure]);
    assert_eq!(r.code, 1);
}
