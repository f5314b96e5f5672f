//! The copying snapshotter (for kernels without overlayfs) gives the same images as overlayfs,
//! and so does running the steps in a user namespace (`--userns-remap`, which uses it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::kiln::{BASE, Kiln, root_or_skip};

const DOCKERFILE: &str = "FROM BASE AS files
RUN mkdir -p /data/sub /gone/deep && echo a > /data/a && echo b > /data/sub/b \\
 && echo x > /gone/deep/x && ln -s /data/a /data/link && ln /data/a /data/hard
FROM files
RUN rm -rf /gone && rm /data/sub/b && chmod 0700 /data && chown 1000:1000 /data/a \\
 && echo changed > /data/a && rm /data/link && mkdir /data/link && echo new > /data/link/f
WORKDIR /work
RUN --mount=type=tmpfs,target=/scratch echo tmp > /scratch/t && echo kept > kept
";

#[test]
fn copy_and_overlay_snapshotters_build_identical_images() {
    if !root_or_skip() {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        DOCKERFILE.replace("BASE", BASE),
    )
    .unwrap();
    let mut digests = Vec::new();
    for snapshotter in ["overlay", "copy"] {
        let k = Kiln::with_base();
        let run = k.build(ctx.path(), &["--snapshotter", snapshotter]).ok();
        digests.push((snapshotter, run.digest()));
    }
    assert_eq!(digests[0].1, digests[1].1, "{digests:?}");
    assert!(digests[0].1.starts_with("sha256:"));
}

#[test]
fn steps_in_a_user_namespace_give_the_same_image_and_run_unprivileged() {
    if !root_or_skip() {
        return;
    }
    if std::fs::read_to_string("/proc/sys/user/max_user_namespaces").is_ok_and(|n| n.trim() == "0")
    {
        eprintln!("skipped: user namespaces are disabled on this kernel");
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        DOCKERFILE.replace("BASE", BASE),
    )
    .unwrap();
    let plain = Kiln::with_base()
        .build(ctx.path(), &["--snapshotter", "copy"])
        .ok()
        .digest();
    let k = Kiln::with_base();
    let args = ["--progress=json", "--userns-remap", "default"].map(String::from);
    let remapped = k.build_with(ctx.path(), &args, |_| {}).ok();
    assert_eq!(
        remapped.digest(),
        plain,
        "ownership on disk must be the image's"
    );
    // Each step's confinement record names the mapping.
    let confined: Vec<_> = remapped
        .events()
        .into_iter()
        .filter(|e| e["event"] == "confined")
        .collect();
    assert!(!confined.is_empty(), "{}", remapped.stderr);
    for e in confined {
        let text = e.to_string();
        assert!(text.contains("\"host_uid\":100000"), "{text}");
    }
    // And the mapping is visible from inside the step.
    let probe = tempfile::tempdir().unwrap();
    std::fs::write(
        probe.path().join("Dockerfile"),
        format!("FROM {BASE}\nRUN tr -s ' ' < /proc/self/uid_map && test \"$(tr -s ' ' < /proc/self/uid_map)\" = ' 0 100000 65536'\n"),
    )
    .unwrap();
    k.build(probe.path(), &["--userns-remap", "100000:100000:65536"])
        .ok();
    let refused = k.build(
        probe.path(),
        &["--userns-remap", "default", "--snapshotter", "overlay"],
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("copying snapshotter"),
        "{}",
        refused.stderr
    );
}

/// A step that writes to files a COPY hard-linked from an earlier build's layer changes its
/// own copy of them, never the layers that share the inode, with either snapshotter; and the
/// image is the one a cold build gives.
#[test]
fn steps_never_write_through_to_files_layers_share() {
    if !root_or_skip() {
        return;
    }
    for snapshotter in ["overlay", "copy"] {
        let ctx = tempfile::tempdir().unwrap();
        let dir = ctx.path();
        std::fs::write(
            dir.join("Dockerfile"),
            format!(
                "FROM {BASE}\nCOPY . /ctx/\n\
                 RUN echo more >> /ctx/a.txt && chmod 600 /ctx/b.txt && cat /ctx/a.txt\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("a.txt"), "alpha\n").unwrap();
        std::fs::write(dir.join("b.txt"), "bravo\n").unwrap();
        std::fs::write(dir.join("c.txt"), "one\n").unwrap();
        let k = Kiln::with_base();
        let build = || k.build(dir, &["--snapshotter", snapshotter]).ok();
        build();
        // Remembered once their status is three seconds old (whole seconds, two of margin).
        std::thread::sleep(std::time::Duration::from_millis(3100));
        std::fs::write(dir.join("c.txt"), "two\n").unwrap();
        build();
        std::fs::write(dir.join("c.txt"), "three\n").unwrap();
        let run = build();
        assert!(
            run.stderr.contains("3 of 4 files hard-linked"),
            "{snapshotter}: {}",
            run.stderr
        );
        // Every layer's a.txt and b.txt: the COPY layers' (two names of one inode) as copied,
        // the RUN layers' as the step left them.
        let mut copied = std::collections::BTreeSet::new();
        let mut stepped = 0;
        for e in std::fs::read_dir(k.root().join("snapshots")).unwrap() {
            let layer = e.unwrap().path().join("ctx");
            let (Ok(a), Ok(b)) = (
                std::fs::symlink_metadata(layer.join("a.txt")),
                std::fs::symlink_metadata(layer.join("b.txt")),
            ) else {
                continue;
            };
            use std::os::unix::fs::MetadataExt;
            let text = std::fs::read_to_string(layer.join("a.txt")).unwrap();
            if text == "alpha\n" {
                assert_eq!(b.mode() & 0o777, 0o644, "{snapshotter}: {layer:?}");
                copied.insert(a.ino());
            } else {
                assert_eq!(text, "alpha\nmore\n", "{snapshotter}: {layer:?}");
                assert_eq!(b.mode() & 0o777, 0o600, "{snapshotter}: {layer:?}");
                stepped += 1;
            }
        }
        assert_eq!(
            copied.len(),
            2,
            "{snapshotter}: the first build's and the shared one"
        );
        assert_eq!(stepped, 3, "{snapshotter}: one RUN layer per build");
        let cold = Kiln::with_base()
            .build(dir, &["--snapshotter", snapshotter])
            .ok();
        assert_eq!(cold.digest(), run.digest(), "{snapshotter}");
    }
}
