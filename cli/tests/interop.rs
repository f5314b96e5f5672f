//! Interop: other tools read what `kiln build` writes. skopeo inspects the `-o type=oci` tar
//! (digest equal to the one kiln printed), umoci unpacks it to the same files as
//! `-o type=local`, and every oci-layout/index/manifest/config kiln writes validates against
//! the OCI image-spec JSON schemas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::kiln::{Kiln, Kind, OciImage, Tree, root_or_skip, walk_dir, which};

const DOCKERFILE: &str = r#"FROM kiln-test/busybox AS build
RUN mkdir -p /out && echo built > /out/artifact && ln -s artifact /out/link
FROM kiln-test/busybox
COPY --from=build /out /opt/out
COPY --chmod=0750 --chown=1000:1000 hello.txt /home/app/hello.txt
COPY noise.txt /srv/noise.txt
RUN rm /etc/group && mkdir -p /srv/data && echo state > /srv/data/state && chmod 0700 /srv/data
LABEL org.opencontainers.image.title=interop
ENV APP=1
EXPOSE 8080
CMD ["/bin/sh", "-c", "cat /home/app/hello.txt"]
"#;

const TAG: &str = "kiln-test/interop:1.0";

struct Outputs {
    _dir: tempfile::TempDir,
    digest: String,
    oci_tar: PathBuf,
    oci_dir: PathBuf,
    local: PathBuf,
}

fn build_outputs(k: &Kiln, extra: &[&str]) -> Outputs {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(ctx.join("hello.txt"), "hello from kiln\n").unwrap();
    fs::write(ctx.join("noise.txt"), noise()).unwrap();
    let oci_tar = dir.path().join("image.tar");
    let oci_dir = dir.path().join("layout");
    let local = dir.path().join("rootfs");
    let mut args: Vec<String> = vec!["--progress=plain".into(), "-t".into(), TAG.into()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(format!("--output=type=oci,dest={}", oci_tar.display()));
    args.push(format!("--output=type=oci-dir,dest={}", oci_dir.display()));
    args.push(format!("--output=type=local,dest={}", local.display()));
    let r = k.build_with(&ctx, &args, |_| {}).ok();
    Outputs {
        digest: r.digest(),
        _dir: dir,
        oci_tar,
        oci_dir,
        local,
    }
}

/// 1.5 MiB of random base64-alphabet text in lines of 76: string matching finds nothing in it,
/// so its layer's gzip blocks are deflated with literals and runs only, not by libdeflate
/// (`oci::compress::deflate_block`), and the readers below read those too.
fn noise() -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x853c_49e6_748f_ea9b;
    (0..3 << 19)
        .map(|i| {
            if i % 77 == 76 {
                return b'\n';
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x >> 58) as usize]
        })
        .collect()
}

/// Unpacks a tar into `dest` (an OCI layout from `-o type=oci`).
fn untar(tar_path: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    tar::Archive::new(fs::File::open(tar_path).unwrap())
        .unpack(dest)
        .unwrap();
}

/// The `org.opencontainers.image.ref.name` of a layout's first manifest.
fn ref_name(layout: &Path) -> Option<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .map(str::to_owned)
}

/// Paths, kinds, contents and modes (not owners: the local exporter may map them).
fn comparable(t: &Tree) -> Vec<(String, String, u32)> {
    t.iter()
        .map(|(p, e)| {
            let what = match &e.kind {
                Kind::File(b) => format!("file {}", String::from_utf8_lossy(b).len()),
                Kind::Symlink(s) => format!("symlink {s}"),
                Kind::Dir => "dir".into(),
                Kind::Other => "other".into(),
            };
            let content_hash = match &e.kind {
                Kind::File(b) => format!(" {:x}", fnv(b)),
                _ => String::new(),
            };
            (p.clone(), what + &content_hash, e.mode)
        })
        .collect()
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn skopeo_inspects_the_oci_tar() {
    if !root_or_skip() {
        return;
    }
    if !which("skopeo") {
        println!("skipped: skopeo not installed");
        return;
    }
    let k = Kiln::with_base();
    // The image alone: skopeo's digest is kiln's image digest.
    let o = build_outputs(&k, &["--attest", "none"]);
    let target = format!("oci-archive:{}", o.oci_tar.display());
    let out = Command::new("skopeo")
        .args(["inspect", &target])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["Digest"],
        o.digest.as_str(),
        "skopeo's digest vs kiln's: {v}"
    );
    assert_eq!(v["Labels"]["org.opencontainers.image.title"], "interop");
    assert!(
        v["Env"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x == "APP=1")),
        "Env: {}",
        v["Env"]
    );
    let img = OciImage::read(&o.oci_tar);
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(img.layers.len()));
    // --raw returns the manifest bytes: they must be the blob kiln wrote.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", &target])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        out.stdout,
        img.blob(&o.digest),
        "skopeo --raw vs the manifest blob"
    );
    // The oci-dir output is the same image.
    let out = Command::new("skopeo")
        .args(["inspect", &format!("oci:{}", o.oci_dir.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect oci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Digest"], o.digest.as_str());

    // With attestations (the default) the layout names an index over the image, its
    // attestation manifest and referrers: skopeo picks the image for this platform out of it.
    let o = build_outputs(&k, &[]);
    for target in [
        format!("oci-archive:{}", o.oci_tar.display()),
        format!("oci:{}", o.oci_dir.display()),
    ] {
        let out = Command::new("skopeo")
            .args(["inspect", &target])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let img = OciImage::read(&o.oci_tar);
        assert_eq!(img.manifest_digest, o.digest, "the image inside the index");
        assert_eq!(v["Digest"], img.index["manifests"][0]["digest"], "{target}");
        assert_eq!(v["Labels"]["org.opencontainers.image.title"], "interop");
        let layers: Vec<&str> = v["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        let ours: Vec<&str> = img.layers.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(layers, ours, "{target}: skopeo read other layers");
    }
}

#[test]
fn umoci_unpacks_the_same_files_as_the_local_output() {
    if !root_or_skip() {
        return;
    }
    if !which("umoci") {
        println!("skipped: umoci not installed");
        return;
    }
    let k = Kiln::with_base();
    for compression in ["gzip", "zstd"] {
        // umoci 0.4.7 walks every manifest an index reaches and calls a tag with an
        // attestation manifest beside the image "ambiguous" (BuildKit's attested layouts too):
        // it gets the image without attestations (docs/attestations.md).
        let o = build_outputs(
            &k,
            &[&format!("--compression={compression}"), "--attest", "none"],
        );
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        untar(&o.oci_tar, &layout);
        let tag = ref_name(&layout)
            .expect("index.json names the image (org.opencontainers.image.ref.name)");
        let bundle = tmp.path().join("bundle");
        let out = Command::new("umoci")
            .args(["unpack", "--image", &format!("{}:{tag}", layout.display())])
            .arg(&bundle)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if compression == "zstd" && !out.status.success() && stderr.contains("tar+zstd") {
            println!(
                "skipped: this umoci does not support zstd layers ({})",
                stderr.trim()
            );
            continue;
        }
        assert!(
            out.status.success(),
            "umoci unpack ({compression}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let unpacked = walk_dir(&bundle.join("rootfs"));
        let local = walk_dir(&o.local);
        let (a, b) = (comparable(&unpacked), comparable(&local));
        let only_umoci: Vec<_> = a.iter().filter(|x| !b.contains(x)).collect();
        let only_local: Vec<_> = b.iter().filter(|x| !a.contains(x)).collect();
        assert!(
            only_umoci.is_empty() && only_local.is_empty(),
            "{compression}: umoci rootfs and -o type=local differ:\n only umoci: {only_umoci:?}\n only local: {only_local:?}"
        );
        // umoci (as root) keeps owners: check the chowned file and the image's files.
        let hello = &unpacked["/home/app/hello.txt"];
        assert_eq!((hello.uid, hello.gid, hello.mode), (1000, 1000, 0o750));
        assert!(
            !unpacked.contains_key("/etc/group"),
            "whiteout applied by umoci"
        );
        assert_eq!(
            unpacked["/opt/out/link"].kind,
            Kind::Symlink("artifact".into())
        );
        // And the layers kiln exported give the same tree as umoci's unpack, owners included.
        let img = OciImage::read(&o.oci_tar);
        let from_layers = img.rootfs();
        for (p, e) in &unpacked {
            let l = from_layers
                .get(p)
                .unwrap_or_else(|| panic!("{p} not in the layers"));
            assert_eq!(
                (&l.kind, l.mode, l.uid, l.gid),
                (&e.kind, e.mode, e.uid, e.gid),
                "{p}"
            );
        }
    }
}

fn schema_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_SHARED_VECTORS")
        .map(|v| PathBuf::from(v).join("oci-image-spec"))
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/vectors/oci-image-spec"
            ))
        });
    dir.is_dir().then_some(dir)
}

/// The schema validator both schema tests run (Python `jsonschema`).
const VALIDATE_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/validate_oci_schemas.py"
);

/// Runs the validator; `None` when python3 or jsonschema is missing.
fn validate(dir: &Path, pairs: &[(&str, PathBuf)]) -> Option<Result<(), String>> {
    let mut args = vec![dir.to_string_lossy().into_owned()];
    for (schema, doc) in pairs {
        args.push((*schema).to_owned());
        args.push(doc.to_string_lossy().into_owned());
    }
    let Ok(out) = Command::new("python3")
        .arg(VALIDATE_PY)
        .args(&args)
        .output()
    else {
        println!("skipped: python3 not installed");
        return None;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named") {
        println!("skipped: python jsonschema not installed");
        return None;
    }
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)))
    })
}

/// Every document of an OCI layout: oci-layout, index.json, each manifest and config.
fn layout_documents(layout: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut pairs = vec![
        ("image-layout-schema.json", layout.join("oci-layout")),
        ("image-index-schema.json", layout.join("index.json")),
    ];
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs").join(d.replacen(':', "/", 1));
    // Walk indexes (the attestations' index) down to every manifest, its config when it is an
    // image config, and every descriptor (a referrer's `subject` included).
    let mut todo: Vec<serde_json::Value> = index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .clone();
    while let Some(m) = todo.pop() {
        let d = m["digest"].as_str().unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&fs::read(blob(d)).unwrap()).unwrap();
        if m["mediaType"] == "application/vnd.oci.image.index.v1+json" {
            pairs.push(("image-index-schema.json", blob(d)));
            todo.extend(doc["manifests"].as_array().unwrap().iter().cloned());
            continue;
        }
        pairs.push(("image-manifest-schema.json", blob(d)));
        if doc["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json" {
            pairs.push((
                "config-schema.json",
                blob(doc["config"]["digest"].as_str().unwrap()),
            ));
        }
    }
    pairs.sort();
    pairs.dedup();
    pairs
}

#[test]
fn every_document_kiln_writes_validates_against_the_oci_schemas() {
    if !root_or_skip() {
        return;
    }
    let Some(schemas) = schema_dir() else {
        println!("skipped: oci-image-spec schemas not found");
        return;
    };
    let k = Kiln::with_base();
    let mut pairs = Vec::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut keep = Vec::new();
    for (i, compression) in ["gzip", "zstd"].iter().enumerate() {
        let o = build_outputs(&k, &[&format!("--compression={compression}")]);
        let layout = tmp.path().join(format!("from-tar-{i}"));
        untar(&o.oci_tar, &layout);
        pairs.extend(layout_documents(&layout));
        pairs.extend(layout_documents(&o.oci_dir));
        keep.push(o);
    }
    let Some(result) = validate(&schemas, &pairs) else {
        return;
    };
    if let Err(e) = result {
        panic!("schema validation failed:\n{e}");
    }
    // The validator is not vacuous: a manifest with a bad config digest is rejected.
    let (_, manifest_path) = pairs
        .iter()
        .find(|(s, _)| *s == "image-manifest-schema.json")
        .unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(manifest_path).unwrap()).unwrap();
    m["config"]["digest"] = "no digest here".into();
    let bad = tmp.path().join("bad.json");
    fs::write(&bad, serde_json::to_vec(&m).unwrap()).unwrap();
    let r = validate(&schemas, &[("image-manifest-schema.json", bad)]).unwrap();
    assert!(r.is_err(), "a bad digest must fail validation");
}

/// An image kiln exported (OCI layout dir, docker archive) is a base image for a build in an
/// empty store via `--build-context NAME=oci-layout://…` / `docker-archive://…`.
#[test]
fn exported_images_are_build_contexts_for_an_empty_store() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let tmp = tempfile::tempdir().unwrap();
    let docker = tmp.path().join("docker.tar");
    let o = build_outputs(
        &k,
        &[&format!("--output=type=docker,dest={}", docker.display())],
    );
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM app\nRUN cat /home/app/hello.txt /opt/out/artifact > /copied\n",
    )
    .unwrap();
    let sources = [
        format!("app=oci-layout://{}", o.oci_dir.display()),
        format!("app=oci-layout://{}@{}", o.oci_dir.display(), o.digest),
        format!("app=docker-archive://{}", docker.display()),
    ];
    for (i, src) in sources.iter().enumerate() {
        let empty = Kiln::empty();
        let local = tmp.path().join(format!("rootfs-{i}"));
        let args = vec![
            "--progress=plain".to_owned(),
            format!("--build-context={src}"),
            format!("--output=type=local,dest={}", local.display()),
        ];
        let r = empty.build_with(&ctx, &args, |_| {});
        assert_eq!(r.code, 0, "{src}: {}", r.stderr);
        assert_eq!(
            fs::read_to_string(local.join("copied")).unwrap(),
            "hello from kiln\nbuilt\n",
            "{src}"
        );
    }
}
