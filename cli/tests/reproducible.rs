//! Reproducibility: the same Dockerfile and context, built in different directories, into
//! different stores, at different times, with different parallelism, give the same manifest
//! and layer digests; `SOURCE_DATE_EPOCH` sets `created`; changing one context file changes
//! the digest and re-runs only the steps that depend on it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use support::kiln::{BASE, Kiln, OciImage, Run, root_or_skip, write_base_context};

const APP_DOCKERFILE: &str = r#"FROM kiln-test/busybox AS build
COPY src/ /src/
RUN mkdir -p /out && cat /src/a.txt /src/b.txt > /out/all && echo generated > /out/gen && ln -s all /out/link

FROM kiln-test/busybox AS other
RUN echo independent > /independent && mkdir -p /var/other && touch /var/other/stamp

FROM kiln-test/busybox
RUN echo early > /early
COPY --from=other /independent /independent
COPY --from=build /out /out
ADD data.txt /data.txt
COPY <<EOF /etc/heredoc
content
EOF
RUN touch /final-marker && mkdir -p /var/cache/app && echo done > /var/cache/app/state
"#;

fn write_app_context(dir: &Path) {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(dir.join("Dockerfile"), APP_DOCKERFILE).unwrap();
    fs::write(dir.join("src/a.txt"), "a\n").unwrap();
    fs::write(dir.join("src/b.txt"), "b\n").unwrap();
    fs::write(dir.join("data.txt"), "data\n").unwrap();
}

/// Gives every file under `dir` the current time as mtime/atime.
fn touch_all(dir: &Path) {
    let st = Command::new("sh")
        .arg("-c")
        .arg("find \"$1\" -exec touch {} +")
        .arg("sh")
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
}

struct Built {
    digest: String,
    image: OciImage,
}

fn build(k: &Kiln, ctx: &Path, extra: &[&str], epoch: Option<&str>) -> Built {
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("img.tar");
    let mut args: Vec<String> = vec!["--progress=plain".into()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(format!("--output=type=oci,dest={}", tar.display()));
    let r: Run = k
        .build_with(ctx, &args, |c| {
            if let Some(e) = epoch {
                c.env("SOURCE_DATE_EPOCH", e);
            }
        })
        .ok();
    let image = OciImage::read(&tar);
    assert_eq!(
        r.digest(),
        image.manifest_digest,
        "printed digest is the exported manifest"
    );
    Built {
        digest: r.digest(),
        image,
    }
}

fn layer_digests(b: &Built) -> Vec<String> {
    b.image.layers.iter().map(|(d, _)| d.clone()).collect()
}

/// A fresh store with the base image built into it now (not copied from the seed store).
fn fresh_store_with_base(dir: &Path, epoch: Option<&str>) -> (Kiln, String) {
    let k = Kiln::empty();
    write_base_context(dir);
    touch_all(dir);
    let b = build(&k, dir, &["-t", BASE], epoch);
    (k, b.digest)
}

#[test]
fn same_input_different_dirs_stores_times_parallelism_same_digests() {
    if !root_or_skip() {
        return;
    }
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (k1, base1) = fresh_store_with_base(&a.path().join("base"), None);
    write_app_context(&a.path().join("app"));
    let one = build(&k1, &a.path().join("app"), &["--max-parallelism=1"], None);

    sleep(Duration::from_millis(1100));
    let (k2, base2) = fresh_store_with_base(&b.path().join("nested/base"), None);
    assert_eq!(
        base1, base2,
        "the base image is reproducible across stores and times"
    );
    let app2 = b.path().join("nested/elsewhere/app");
    write_app_context(&app2);
    touch_all(&app2);
    let two = build(&k2, &app2, &["--max-parallelism=4"], None);

    assert_eq!(
        layer_digests(&one),
        layer_digests(&two),
        "layer digests differ"
    );
    assert_eq!(
        one.image.manifest["config"], two.image.manifest["config"],
        "config descriptors differ"
    );
    assert_eq!(one.digest, two.digest, "manifest digests differ");

    // --no-cache in the first store, later again: still the same image.
    sleep(Duration::from_millis(1100));
    touch_all(&a.path().join("app"));
    let three = build(
        &k1,
        &a.path().join("app"),
        &["--no-cache", "--max-parallelism=2"],
        None,
    );
    assert_eq!(
        one.digest, three.digest,
        "a --no-cache rebuild gives a different image"
    );
}

#[test]
fn source_date_epoch_is_reproducible_and_sets_created() {
    if !root_or_skip() {
        return;
    }
    const EPOCH: &str = "1700000000";
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let k1 = Kiln::with_base();
    write_app_context(a.path());
    let one = build(&k1, a.path(), &["--max-parallelism=1"], Some(EPOCH));
    sleep(Duration::from_millis(1100));
    let k2 = Kiln::with_base();
    write_app_context(b.path());
    touch_all(b.path());
    let two = build(&k2, b.path(), &["--max-parallelism=3"], Some(EPOCH));
    assert_eq!(
        layer_digests(&one),
        layer_digests(&two),
        "layer digests differ"
    );
    assert_eq!(one.digest, two.digest, "manifest digests differ");
    assert_eq!(
        one.image.config["created"], "2023-11-14T22:13:20Z",
        "config created: {}",
        one.image.config["created"]
    );
    // No file in any layer is newer than SOURCE_DATE_EPOCH.
    let epoch: u64 = EPOCH.parse().unwrap();
    for (d, mt) in &one.image.layers {
        let data = one.image.layer_tar(d, mt);
        let mut ar = tar::Archive::new(&data[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let m = e.header().mtime().unwrap();
            assert!(
                m <= epoch,
                "{} in layer {d} has mtime {m} > SOURCE_DATE_EPOCH",
                e.path().unwrap().display()
            );
        }
    }
}

/// For each step (found by a unique fragment of its name): "started", "cached" or "none".
fn step_states(events: &[serde_json::Value], fragments: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for f in fragments {
        let mut started = false;
        let mut cached = false;
        for e in events {
            let name = e["name"].as_str().unwrap_or_default();
            if !name.contains(f) {
                continue;
            }
            match e["event"].as_str() {
                Some("started") => started = true,
                Some("cached") => cached = true,
                _ => {}
            }
        }
        let state = match (started, cached) {
            (true, false) => "started",
            (false, true) => "cached",
            (true, true) => "started+cached",
            (false, false) => "none",
        };
        out.insert((*f).to_owned(), state.to_owned());
    }
    out
}

#[test]
fn changing_one_file_reruns_only_dependent_steps() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = tempfile::tempdir().unwrap();
    write_app_context(ctx.path());
    let json = |k: &Kiln| {
        k.build_with(ctx.path(), &["--progress=json".into()], |_| {})
            .ok()
    };
    let first = json(&k);
    let d1 = first.digest();
    assert!(
        first.events().iter().any(|e| e["event"] == "started"),
        "--progress json reports started events:\n{}",
        first.stderr
    );

    const INDEPENDENT: [&str; 3] = ["echo early", "COPY --from=other", "echo independent"];
    const DEPENDENT: [&str; 5] = [
        "COPY src/",
        "mkdir -p /out",
        "COPY --from=build",
        "ADD data.txt",
        "touch /final-marker",
    ];
    let all: Vec<&str> = INDEPENDENT
        .iter()
        .chain(DEPENDENT.iter())
        .copied()
        .collect();

    // Unchanged: everything cached (mtimes alone do not invalidate).
    sleep(Duration::from_millis(1100));
    touch_all(ctx.path());
    let again = json(&k);
    assert_eq!(
        again.digest(),
        d1,
        "an unchanged rebuild gives the same image"
    );
    let states = step_states(&again.events(), &all);
    for f in &all {
        assert_eq!(
            states[*f], "cached",
            "unchanged rebuild, step {f:?}: {states:?}"
        );
    }

    // Change one file used by the build stage's COPY.
    fs::write(ctx.path().join("src/b.txt"), "b changed\n").unwrap();
    let changed = json(&k);
    assert_ne!(
        changed.digest(),
        d1,
        "changing a context file changes the image"
    );
    let states = step_states(&changed.events(), &all);
    for f in INDEPENDENT {
        assert_eq!(
            states[f], "cached",
            "step {f:?} does not depend on src/b.txt: {states:?}"
        );
    }
    for f in DEPENDENT {
        assert_eq!(
            states[f], "started",
            "step {f:?} depends on src/b.txt: {states:?}"
        );
    }

    // The cached rebuild gives the same image as a fresh build of the changed context.
    let k2 = Kiln::with_base();
    let fresh = k2
        .build_with(ctx.path(), &["--progress=plain".into()], |_| {})
        .ok();
    assert_eq!(
        fresh.digest(),
        changed.digest(),
        "cache-assisted and fresh builds differ"
    );
}

#[test]
fn ignored_and_untouched_files_do_not_invalidate_the_cache() {
    if !root_or_skip() {
        return;
    }
    let k = Kiln::with_base();
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    fs::write(
        c.join("Dockerfile"),
        "FROM kiln-test/busybox\nRUN echo first > /first\nCOPY . /ctx/\nRUN ls -a /ctx > /listing\n",
    )
    .unwrap();
    fs::write(c.join(".dockerignore"), "ignored.txt\nlogs/\n").unwrap();
    fs::write(c.join("kept.txt"), "kept\n").unwrap();
    fs::write(c.join("ignored.txt"), "v1\n").unwrap();
    fs::create_dir_all(c.join("logs")).unwrap();
    fs::write(c.join("logs/a.log"), "1\n").unwrap();
    let json = || k.build_with(c, &["--progress=json".into()], |_| {}).ok();
    let first = json();
    // Change only ignored files (content and new files) and mtimes of everything.
    sleep(Duration::from_millis(1100));
    fs::write(c.join("ignored.txt"), "v2, much longer than before\n").unwrap();
    fs::write(c.join("logs/b.log"), "2\n").unwrap();
    touch_all(c);
    let again = json();
    assert_eq!(
        first.digest(),
        again.digest(),
        "ignored files changed the image"
    );
    let states = step_states(
        &again.events(),
        &["echo first", "COPY . /ctx/", "ls -a /ctx"],
    );
    assert!(states.values().all(|s| s == "cached"), "{states:?}");
    // A new file that is not ignored does invalidate the COPY and what follows.
    fs::write(c.join("new.txt"), "new\n").unwrap();
    let changed = json();
    assert_ne!(changed.digest(), first.digest());
    let states = step_states(
        &changed.events(),
        &["echo first", "COPY . /ctx/", "ls -a /ctx"],
    );
    assert_eq!(states["echo first"], "cached", "{states:?}");
    assert_eq!(states["COPY . /ctx/"], "started", "{states:?}");
    assert_eq!(states["ls -a /ctx"], "started", "{states:?}");
}

/// Found in review: a layer blob written for one `SOURCE_DATE_EPOCH` must not be reused for
/// another (tars clamp mtimes to the epoch), and an image built `FROM` a base keeps the base
/// manifest's own layer blobs, whatever else the store holds. Both must give the digest a
/// fresh store gives.
#[test]
fn store_history_never_changes_a_digest() {
    if !support::kiln::root_or_skip() {
        return;
    }
    use support::kiln::{BASE, Kiln};
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("f"), "file").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {BASE}\nCOPY f /f\nRUN echo x > /x\n"),
    )
    .unwrap();
    let epoch = |k: &Kiln, e: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec!["--progress=plain".into(), "-q".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        k.build_with(ctx.path(), &args, |c| {
            c.env("SOURCE_DATE_EPOCH", e);
        })
        .ok()
        .digest()
    };
    // An epoch in the past clamps every mtime, so builds at different times agree; the file
    // `f` (written now) lands with mtime 0 under epoch 0 and 1700000000 under this one.
    let fresh = Kiln::with_base();
    let want = epoch(&fresh, "1700000000", &[]);
    let used = Kiln::with_base();
    epoch(&used, "0", &[]);
    assert_eq!(
        epoch(&used, "1700000000", &[]),
        want,
        "a blob of another epoch was reused"
    );

    // The base re-tagged with zstd layers, then pruned: builds FROM it use its zstd blobs.
    let base_ctx = tempfile::tempdir().unwrap();
    support::kiln::write_base_context(base_ctx.path());
    let a = Kiln::with_base();
    a.build(base_ctx.path(), &["-t", BASE, "--compression", "zstd"])
        .ok();
    a.run(a.root(), ["prune"]).ok();
    let b = Kiln::empty();
    b.build(base_ctx.path(), &["-t", BASE, "--compression", "zstd"])
        .ok();
    let out = tempfile::tempdir().unwrap();
    let oci = |k: &Kiln| {
        let dest = out
            .path()
            .join(format!("{}.tar", k.root().display().to_string().len()));
        let d = k
            .build(
                ctx.path(),
                &["-o", &format!("type=oci,dest={}", dest.display())],
            )
            .ok()
            .digest();
        (d, dest.exists())
    };
    let (da, ea) = oci(&a);
    let (db, eb) = oci(&b);
    assert!(ea && eb, "the OCI export failed");
    assert_eq!(da, db, "the digest depends on what the store built before");
}
