//! Bad input: every `vectors/negative/<case>/` fails with exit 1 and the expected
//! `Dockerfile:line:col: message`; malformed flags exit 2; a failing build leaves the store's
//! committed records (images, cache records) unchanged.
//!
//! `expect`: first line the location fragment (`:2:1`, checked as `Dockerfile:2:1:`) or `-`
//! for failures without a Dockerfile location (runtime failures, unknown target); every further
//! line a message fragment that must appear on stderr (case-insensitive). `args`: extra build
//! flags, one per line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::kiln::{BASE, Kiln, copy_tree, root_or_skip};

fn vectors() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/negative"))
}

/// The committed records of a store: `kiln images` output and the cache-record count.
fn records(k: &Kiln) -> (String, u64) {
    (k.images(), k.cache_records())
}

fn run_case(k: &Kiln, dir: &Path) -> Vec<String> {
    let expect = fs::read_to_string(dir.join("expect")).unwrap();
    let mut lines = expect.lines().map(str::trim).filter(|l| !l.is_empty());
    let loc = lines.next().expect("expect: location line");
    let fragments: Vec<&str> = lines.collect();
    assert!(
        !fragments.is_empty(),
        "{}: expect has no message fragment",
        dir.display()
    );
    let mut args: Vec<String> = vec!["--progress=plain".into()];
    if let Ok(a) = fs::read_to_string(dir.join("args")) {
        args.extend(
            a.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    copy_tree(dir, &ctx, &|p: &Path| {
        p.parent() == Some(dir)
            && matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("expect" | "args")
            )
    });
    let before = records(k);
    let r = k.build_with(&ctx, &args, |_| {});
    let mut errs = Vec::new();
    if r.code != 1 {
        errs.push(format!("exit code {}, expected 1", r.code));
    }
    let lower = r.stderr.to_lowercase();
    if loc != "-" {
        let want = format!("Dockerfile{loc}:");
        if !r.stderr.contains(&want) {
            errs.push(format!("no {want:?} on stderr"));
        }
    }
    for f in &fragments {
        if !lower.contains(&f.to_lowercase()) {
            errs.push(format!("no {f:?} on stderr"));
        }
    }
    let after = records(k);
    if before != after {
        errs.push(format!(
            "committed records changed by a failed build: {before:?} -> {after:?}"
        ));
    }
    if !errs.is_empty() {
        let tail: Vec<&str> = r.stderr.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        errs.push(format!("stderr tail:\n    {}", tail.join("\n    ")));
    }
    errs
}

#[test]
fn negative_vectors_fail_with_location_and_message() {
    let root = root_or_skip();
    // Cases that need the busybox base run only as root (building the base runs a step).
    let k = if root {
        Kiln::with_base()
    } else {
        Kiln::empty()
    };
    let mut cases: Vec<PathBuf> = fs::read_dir(vectors())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("expect").is_file())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 15,
        "expected at least 15 negative vectors, found {}",
        cases.len()
    );
    let mut failed = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let df = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        if !root && df.contains(BASE) {
            println!("skipped {name}: needs root");
            continue;
        }
        let errs = run_case(&k, dir);
        if errs.is_empty() {
            println!("ok {name}");
        } else {
            println!("FAIL {name}:\n  {}", errs.join("\n  "));
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "{} negative cases failed: {}",
        failed.len(),
        failed.join(", ")
    );
}

#[test]
fn malformed_flags_are_usage_errors() {
    let k = Kiln::empty();
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY Dockerfile /\n",
    )
    .unwrap();
    let dest = ctx.path().join("out.tar");
    let dest = dest.to_str().unwrap();
    let bad: Vec<Vec<String>> = vec![
        vec!["--build-arg".into(), "=x".into()],
        vec!["--build-arg=".into()],
        vec!["-o".into(), format!("type=nope,dest={dest}")],
        vec!["-o".into(), "type=oci".into()],
        vec!["-o".into(), format!("type=oci,dest={dest},color=red")],
        vec!["--build-context".into(), "x".into()],
        vec!["--build-context".into(), "x=foo://y".into()],
        vec!["--progress".into(), "rainbow".into()],
        vec!["--compression".into(), "lz4".into()],
        vec!["--max-parallelism".into(), "0".into()],
        vec!["--frobnicate".into()],
    ];
    let mut failed = Vec::new();
    for args in &bad {
        let r = k.build_with(ctx.path(), args, |_| {});
        if r.code == 2 && !r.stderr.trim().is_empty() {
            println!("ok {args:?}");
        } else {
            println!(
                "FAIL {args:?}: exit {} (expected 2), stderr: {}",
                r.code,
                r.stderr.trim()
            );
            failed.push(format!("{args:?}"));
        }
    }
    assert!(
        !Path::new(dest).exists(),
        "a rejected command line wrote an output"
    );
    // The context must exist.
    let r = k.run(ctx.path(), ["build", "/nonexistent/kiln-context"]);
    if r.code != 2 {
        failed.push(format!("missing context: exit {}", r.code));
    }
    assert!(failed.is_empty(), "not usage errors: {}", failed.join(", "));
}

#[test]
fn failed_build_leaves_committed_records_unchanged() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("a.txt"), "alpha\n").unwrap();
    // A successful build first, so the store has images and cache records of its own.
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM kiln-test/busybox\nRUN echo first > /first\nCOPY a.txt /a.txt\n",
    )
    .unwrap();
    k.build(ctx.path(), &["-t", "kiln-test/good"]).ok();
    let before = records(&k);
    assert!(
        before.0.contains("kiln-test/good"),
        "kiln images lists the tag:\n{}",
        before.0
    );
    assert!(before.1 > 0, "cache records exist after a build");
    // Steps that succeed (new cache keys) before one that fails.
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM kiln-test/busybox\nRUN echo new-step > /new\nCOPY a.txt /b.txt\nRUN echo more > /more\nRUN exit 3\n",
    )
    .unwrap();
    let r = k.build(ctx.path(), &["-t", "kiln-test/bad", "-t", "kiln-test/good"]);
    assert_eq!(r.code, 1, "stderr:\n{}", r.stderr);
    assert!(
        r.stderr.contains("exit 3"),
        "the failing step is named:\n{}",
        r.stderr
    );
    let after = records(&k);
    assert_eq!(before.0, after.0, "kiln images changed by a failed build");
    assert_eq!(before.1, after.1, "cache records changed by a failed build");
    // Same for a failure while exporting: an output path that cannot be written.
    let blocker = ctx.path().join("blocker");
    fs::write(&blocker, "a file, not a directory").unwrap();
    let dest = format!("type=local,dest={}/sub", blocker.display());
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM kiln-test/busybox\nRUN echo export-fails > /x\n",
    )
    .unwrap();
    let r = k.build(ctx.path(), &["-t", "kiln-test/bad2", "-o", &dest]);
    assert_eq!(r.code, 1, "unwritable output: stderr:\n{}", r.stderr);
    let after = records(&k);
    assert_eq!(
        before.0, after.0,
        "kiln images changed by a build whose export failed"
    );
    assert_eq!(
        before.1, after.1,
        "cache records changed by a build whose export failed"
    );
    // And the store is still usable: the first build is fully cached.
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM kiln-test/busybox\nRUN echo first > /first\nCOPY a.txt /a.txt\n",
    )
    .unwrap();
    let r = k.build(ctx.path(), &["-t", "kiln-test/good"]).ok();
    assert!(!r.stderr.is_empty());
}
