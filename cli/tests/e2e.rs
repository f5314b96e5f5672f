//! End-to-end vectors: every `vectors/e2e/<case>/` is built with the real `kiln` binary (base
//! image `kiln-test/busybox` from a store built once for this process) and its `expect.json`
//! checked against both the image (OCI tar, layers applied with whiteouts) and the
//! `-o type=local` tree.
//!
//! `expect.json`:
//! ```json
//! {
//!   "files": { "/path": { "type": "file|dir|symlink", "content": "…", "contains": "…",
//!                         "mode": "0644", "uid": 0, "gid": 0, "target": "…", "size": 1 } },
//!   "absent": ["/path"],
//!   "config": { "Env": […], "Cmd": null, … },      // exact; null = unset or empty
//!   "image": { "author": "…" },                     // top-level fields of the config blob
//!   "pre": { "dir": "parent", "tag": "name", "files": …, "absent": …, "config": … }
//! }
//! ```
//! `pre` is built (from `<case>/<dir>`, tagged `tag`) before the case itself, which is built
//! without that directory. `args` holds extra build flags, one per line. Set `KILN_E2E_CASE`
//! to a substring to run only matching cases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::kiln::{Kiln, Kind, OciImage, Tree, copy_tree, root_or_skip, walk_dir};

fn vectors() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/e2e"))
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn check_fields(what: &str, expected: &Value, actual: &Value, errs: &mut Vec<String>) {
    let Some(exp) = expected.as_object() else {
        return;
    };
    for (k, want) in exp {
        let got = actual.get(k).unwrap_or(&Value::Null);
        let ok = if want.is_null() {
            is_empty(got)
        } else {
            want == got
        };
        if !ok {
            errs.push(format!("{what}.{k}: expected {want}, got {got}"));
        }
    }
}

fn check_tree(which: &str, tree: &Tree, expect: &Value, check_owner: bool, errs: &mut Vec<String>) {
    if let Some(files) = expect.get("files").and_then(Value::as_object) {
        for (path, want) in files {
            let Some(e) = tree.get(path) else {
                errs.push(format!("{which}: {path} missing"));
                continue;
            };
            if let Some(t) = want.get("type").and_then(Value::as_str)
                && t != e.kind_name()
            {
                errs.push(format!(
                    "{which}: {path} is a {}, expected {t}",
                    e.kind_name()
                ));
                continue;
            }
            let text = match &e.kind {
                Kind::File(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            };
            if let Some(c) = want.get("content").and_then(Value::as_str)
                && text.as_deref() != Some(c)
            {
                errs.push(format!("{which}: {path} content {text:?}, expected {c:?}"));
            }
            if let Some(c) = want.get("contains").and_then(Value::as_str)
                && !text.as_deref().is_some_and(|t| t.contains(c))
            {
                errs.push(format!(
                    "{which}: {path} content {text:?} does not contain {c:?}"
                ));
            }
            if let Some(n) = want.get("size").and_then(Value::as_u64)
                && !matches!(&e.kind, Kind::File(b) if b.len() as u64 == n)
            {
                let got = match &e.kind {
                    Kind::File(b) => b.len().to_string(),
                    _ => "-".into(),
                };
                errs.push(format!("{which}: {path} size {got}, expected {n}"));
            }
            if let Some(t) = want.get("target").and_then(Value::as_str)
                && e.kind != Kind::Symlink(t.to_owned())
            {
                errs.push(format!(
                    "{which}: {path} is {:?}, expected symlink to {t:?}",
                    e.kind
                ));
            }
            if let Some(m) = want.get("mode").and_then(Value::as_str) {
                let m = u32::from_str_radix(m, 8).unwrap();
                if e.mode != m {
                    errs.push(format!(
                        "{which}: {path} mode {:04o}, expected {m:04o}",
                        e.mode
                    ));
                }
            }
            if check_owner {
                for (key, got) in [("uid", e.uid), ("gid", e.gid)] {
                    if let Some(w) = want.get(key).and_then(Value::as_u64)
                        && w != got
                    {
                        errs.push(format!("{which}: {path} {key} {got}, expected {w}"));
                    }
                }
            }
        }
    }
    if let Some(absent) = expect.get("absent").and_then(Value::as_array) {
        for p in absent.iter().filter_map(Value::as_str) {
            if let Some(e) = tree.get(p) {
                errs.push(format!(
                    "{which}: {p} exists ({}), expected absent",
                    e.kind_name()
                ));
            }
        }
    }
}

/// The image's layers and `-o type=local` hold the same paths, kinds, contents and modes
/// (owners are not compared: the local export may give files to the caller).
fn compare_trees(image: &Tree, local: &Tree) -> Vec<String> {
    let mut errs = Vec::new();
    for (p, e) in image {
        match local.get(p) {
            None => errs.push(format!("{p} in the image but not in -o type=local")),
            Some(l) if (&l.kind, l.mode) != (&e.kind, e.mode) => errs.push(format!(
                "{p} differs: image {} {:04o}, local {} {:04o}",
                e.kind_name(),
                e.mode,
                l.kind_name(),
                l.mode
            )),
            Some(_) => {}
        }
    }
    for p in local.keys().filter(|p| !image.contains_key(*p)) {
        errs.push(format!("{p} in -o type=local but not in the image"));
    }
    errs.truncate(10);
    errs
}

fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    let hex = String::from_utf8_lossy(&out.stdout);
    format!(
        "sha256:{}",
        hex.split_whitespace().next().unwrap_or_default()
    )
}

/// Manifest, config and layers agree: one diff_id per layer (the digest of its uncompressed
/// tar), one non-empty history entry per layer, blob digests and sizes match.
fn check_image_consistency(img: &OciImage) -> Vec<String> {
    let mut errs = Vec::new();
    let diff_ids: Vec<String> = img.config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let uncompressed: Vec<String> = img
        .layers
        .iter()
        .map(|(d, mt)| sha256(&img.layer_tar(d, mt)))
        .collect();
    if diff_ids != uncompressed {
        errs.push(format!(
            "config rootfs.diff_ids {diff_ids:?} != uncompressed layer digests {uncompressed:?}"
        ));
    }
    let history = img.config["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let non_empty = history.iter().filter(|h| h["empty_layer"] != true).count();
    if !history.is_empty() && non_empty != img.layers.len() {
        errs.push(format!(
            "{non_empty} non-empty history entries for {} layers",
            img.layers.len()
        ));
    }
    for l in img.manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain([&img.manifest["config"]])
    {
        let d = l["digest"].as_str().unwrap_or_default();
        let blob = img.blob(d);
        if sha256(blob) != d {
            errs.push(format!("blob {d} does not hash to its digest"));
        }
        if l["size"].as_u64() != Some(blob.len() as u64) {
            errs.push(format!(
                "blob {d} size {} != descriptor size {}",
                blob.len(),
                l["size"]
            ));
        }
    }
    errs
}

/// Builds `ctx` with `args` into `k`, writing OCI and local outputs under `out`, and checks
/// `expect` against both. Returns the problems found.
fn build_and_check(
    k: &Kiln,
    ctx: &Path,
    args: &[String],
    out: &Path,
    expect: &Value,
) -> Vec<String> {
    let mut errs = Vec::new();
    let oci = out.join("image.tar");
    let local = out.join("rootfs");
    let mut all: Vec<String> = vec!["--progress=plain".into()];
    all.extend(args.iter().cloned());
    all.push(format!("--output=type=oci,dest={}", oci.display()));
    all.push(format!("--output=type=local,dest={}", local.display()));
    let r = k.build_with(ctx, &all, |_| {});
    if r.code != 0 {
        let tail: Vec<&str> = r.stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        errs.push(format!(
            "build exited {}:\n    {}",
            r.code,
            tail.join("\n    ")
        ));
        return errs;
    }
    if !oci.is_file() {
        errs.push("no OCI tar written".into());
        return errs;
    }
    let img = OciImage::read(&oci);
    if r.digest() != img.manifest_digest {
        errs.push(format!(
            "printed digest {:?} != index.json manifest {}",
            r.digest(),
            img.manifest_digest
        ));
    }
    let rootfs = img.rootfs();
    check_tree("image", &rootfs, expect, true, &mut errs);
    if local.is_dir() {
        let local = walk_dir(&local);
        check_tree("local", &local, expect, false, &mut errs);
        errs.extend(compare_trees(&rootfs, &local));
    } else {
        errs.push("no -o type=local directory written".into());
    }
    errs.extend(check_image_consistency(&img));
    if let Some(c) = expect.get("config") {
        check_fields("config", c, &img.config["config"], &mut errs);
    }
    if let Some(c) = expect.get("image") {
        check_fields("image", c, &img.config, &mut errs);
    }
    errs
}

fn run_case(dir: &Path) -> Vec<String> {
    let expect: Value = serde_json::from_slice(&fs::read(dir.join("expect.json")).unwrap())
        .unwrap_or_else(|e| panic!("{}/expect.json: {e}", dir.display()));
    let args: Vec<String> = fs::read_to_string(dir.join("args"))
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let k = Kiln::with_base();
    let tmp = tempfile::tempdir().unwrap();
    let pre = expect.get("pre");
    let pre_dir = pre.and_then(|p| p["dir"].as_str()).map(|d| dir.join(d));
    let mut errs = Vec::new();
    if let (Some(pre), Some(pre_dir)) = (pre, &pre_dir) {
        let ctx = tmp.path().join("pre-ctx");
        copy_tree(pre_dir, &ctx, &|_| false);
        let out = tmp.path().join("pre-out");
        fs::create_dir_all(&out).unwrap();
        let tag = pre["tag"].as_str().expect("pre.tag");
        let e = build_and_check(&k, &ctx, &["-t".into(), tag.into()], &out, pre);
        errs.extend(e.into_iter().map(|e| format!("[pre-build {tag}] {e}")));
        if !errs.is_empty() {
            return errs;
        }
    }
    let ctx = tmp.path().join("ctx");
    let skip = |p: &Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        (p.parent() == Some(dir) && (name == "expect.json" || name == "args"))
            || pre_dir.as_deref() == Some(p)
    };
    copy_tree(dir, &ctx, &skip);
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    errs.extend(build_and_check(&k, &ctx, &args, &out, &expect));
    errs
}

#[test]
fn e2e_vectors() {
    if !root_or_skip() {
        return;
    }
    let filter = std::env::var("KILN_E2E_CASE").unwrap_or_default();
    let mut cases: Vec<PathBuf> = fs::read_dir(vectors())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("expect.json").is_file())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 25,
        "expected at least 25 e2e vectors, found {}",
        cases.len()
    );
    let mut failed = Vec::new();
    let mut ran = 0;
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !name.contains(&filter) {
            continue;
        }
        ran += 1;
        let errs = run_case(dir);
        if errs.is_empty() {
            println!("ok {name}");
        } else {
            println!("FAIL {name}:\n  {}", errs.join("\n  "));
            failed.push(name);
        }
    }
    assert!(ran > 0, "no case matches KILN_E2E_CASE={filter:?}");
    assert!(
        failed.is_empty(),
        "{} of {ran} e2e cases failed: {}",
        failed.len(),
        failed.join(", ")
    );
}
