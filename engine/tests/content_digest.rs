//! The content digest of client files (part of COPY's cache key) changes whenever what COPY
//! would copy changes, including hard-link structure and file capabilities.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln_engine::fileop::content_digest;
use kiln_engine::fsview::LayerView;

fn digest(dir: &std::path::Path) -> kiln_engine::Digest {
    content_digest(&LayerView::plain(dir), &["/".to_owned()]).unwrap()
}

#[test]
fn hard_link_structure_is_part_of_the_digest() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f"), "same").unwrap();
    std::fs::write(d.path().join("g"), "same").unwrap();
    let separate = digest(d.path());
    std::fs::remove_file(d.path().join("g")).unwrap();
    std::fs::hard_link(d.path().join("f"), d.path().join("g")).unwrap();
    assert_ne!(
        digest(d.path()),
        separate,
        "COPY would now write a hard link"
    );
}

#[test]
fn file_capabilities_are_part_of_the_digest() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: needs root to set security.capability");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("tool");
    std::fs::write(&f, "binary").unwrap();
    let plain = digest(d.path());
    // VFS_CAP_REVISION_2 with CAP_NET_BIND_SERVICE permitted and effective.
    let cap: [u8; 20] = [0, 0, 0, 2, 0, 4, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let file = std::fs::File::open(&f).unwrap();
    rustix::fs::fsetxattr(
        &file,
        "security.capability",
        &cap,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    assert_ne!(digest(d.path()), plain, "COPY keeps security.capability");
}
