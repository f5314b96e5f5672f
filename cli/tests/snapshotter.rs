//! The copying snapshotter (for kernels without overlayfs) gives the same images as overlayfs.
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
