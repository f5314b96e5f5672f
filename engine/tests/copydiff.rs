//! The copying fallback for overlayfs: materialise a view, change it, diff it; the diff must
//! be equivalent to what a real overlayfs mount leaves in its upper directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_engine::copydiff::{CopyDiffError, DiffStats, diff, materialize};
use kiln_engine::fsview::{FileKind, LayerView};
use kiln_engine::oci::layer::{LayerOptions, write_layer};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags};

/// A v2 `security.capability` value: effective, permitted = CAP_NET_BIND_SERVICE.
const CAP: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// The mtime every entry the step touches ends up with (in both trees).
const T: (i64, i64) = (1_700_000_000, 123_456_789);

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn set_mtime(p: &Path, (sec, nsec): (i64, i64)) {
    let ts = Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let t = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &t, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn file(p: &Path, content: &str, mode: u32, mtime: (i64, i64)) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(p, mtime);
}

fn dir(p: &Path, mode: u32, mtime: (i64, i64)) {
    fs::create_dir_all(p).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(p, mtime);
}

fn whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        FileType::CharacterDevice,
        Mode::empty(),
        0,
    )
    .unwrap();
}

/// Two layers: the bottom one with every kind of entry, the top one with a whiteout and an
/// opaque directory. Directory mtimes are set last (creating entries changes them).
fn lower_layers(root: &Path) -> Vec<PathBuf> {
    let l1 = root.join("l1");
    let l2 = root.join("l2");
    let m = (1_600_000_000, 111);
    file(
        &l1.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\n",
        0o644,
        m,
    );
    file(
        &l1.join("bin/tool"),
        "#!/bin/sh\n",
        0o4755,
        (1_600_000_001, 7),
    );
    rustix::fs::setxattr(
        l1.join("bin/tool"),
        "security.capability",
        &CAP,
        XattrFlags::empty(),
    )
    .unwrap();
    for name in ["keep", "mod", "chmod", "chown", "del"] {
        file(&l1.join(format!("data/{name}.txt")), name, 0o644, m);
    }
    file(&l1.join("tree/a/b/c.txt"), "c", 0o644, m);
    file(&l1.join("tree/x.txt"), "x", 0o644, m);
    file(&l1.join("f2d"), "file becoming a dir", 0o644, m);
    file(&l1.join("d2f/inner.txt"), "dir becoming a file", 0o644, m);
    file(&l1.join("hl/one"), "linked", 0o644, m);
    fs::hard_link(l1.join("hl/one"), l1.join("hl/two")).unwrap();
    fs::create_dir_all(l1.join("dev")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        l1.join("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        l1.join("dev/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::chownat(
        rustix::fs::CWD,
        l1.join("dev/fifo"),
        Some(rustix::fs::Uid::from_raw(7)),
        Some(rustix::fs::Gid::from_raw(8)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    file(
        &l1.join("opq/old.txt"),
        "hidden by the opaque dir",
        0o644,
        m,
    );
    file(&l1.join("gone.txt"), "whited out", 0o644, m);

    file(&l2.join("opq/new.txt"), "in the opaque dir", 0o600, m);
    rustix::fs::setxattr(
        l2.join("opq"),
        "trusted.overlay.opaque",
        b"y",
        XattrFlags::empty(),
    )
    .unwrap();
    whiteout(&l2.join("gone.txt"));
    file(&l2.join("data/layer2.txt"), "layer 2", 0o644, m);
    symlink("/etc/passwd", l2.join("lnk")).unwrap();

    for l in [&l1, &l2] {
        for d in [
            "etc", "bin", "data", "tree/a/b", "tree/a", "tree", "d2f", "hl", "dev", "opq",
        ] {
            if l.join(d).is_dir() {
                set_mtime(&l.join(d), (1_600_000_002, 999_999_999));
            }
        }
        dir(l, 0o755, (1_600_000_003, 5));
    }
    vec![l1, l2]
}

/// The step: the same operations run on the materialised tree and through an overlay mount.
/// Every entry it creates or modifies, and every directory it modifies, ends with mtime `T`.
fn step(root: &Path) {
    let r = |p: &str| root.join(p);
    fs::write(r("data/new.txt"), "new file").unwrap();
    fs::write(r("data/mod.txt"), "modified content").unwrap();
    fs::set_permissions(r("data/chmod.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(r("data/chown.txt"), Some(1000), Some(1000)).unwrap();
    fs::remove_file(r("data/del.txt")).unwrap();
    fs::remove_dir_all(r("tree")).unwrap();
    fs::remove_file(r("f2d")).unwrap();
    fs::create_dir(r("f2d")).unwrap();
    fs::write(r("f2d/child"), "child").unwrap();
    fs::remove_dir_all(r("d2f")).unwrap();
    fs::write(r("d2f"), "now a file").unwrap();
    // Planted links to host paths: must be recorded as links, never followed.
    symlink("/etc/shadow", r("data/shadow")).unwrap();
    symlink("/etc", r("data/etcdir")).unwrap();
    // A new hard-link pair, and a new name for an unchanged parent file.
    fs::write(r("data/hl-a"), "pair").unwrap();
    fs::hard_link(r("data/hl-a"), r("data/hl-b")).unwrap();
    fs::hard_link(r("etc/passwd"), r("etc/passwd.link")).unwrap();
    for p in [
        "data/new.txt",
        "data/mod.txt",
        "f2d/child",
        "f2d",
        "d2f",
        "data/shadow",
        "data/etcdir",
        "data/hl-a",
        "data",
        "etc",
        "",
    ] {
        set_mtime(&r(p), T);
    }
}

/// Everything observable about one entry of a view.
#[derive(Debug, PartialEq, Eq)]
struct Snap {
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    rdev: u64,
    content: Option<Vec<u8>>,
    link: Option<String>,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn snapshot(view: &LayerView) -> BTreeMap<String, Snap> {
    let mut out = BTreeMap::new();
    let mut stack = vec!["/".to_owned()];
    while let Some(d) = stack.pop() {
        for e in view.read_dir(&d).unwrap() {
            let m = e.metadata();
            let content = (m.kind == FileKind::File).then(|| {
                let mut buf = Vec::new();
                view.open_entry(&e).unwrap().read_to_end(&mut buf).unwrap();
                buf
            });
            let link = (m.kind == FileKind::Symlink).then(|| view.read_link_entry(&e).unwrap());
            if m.kind == FileKind::Dir {
                stack.push(e.path());
            }
            let snap = Snap {
                kind: m.kind,
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                mtime: (m.mtime_sec, m.mtime_nsec),
                rdev: m.rdev,
                content,
                link,
                xattrs: view.xattrs(&e).unwrap(),
            };
            out.insert(e.path(), snap);
        }
    }
    out
}

fn diff_id(upper: &Path, epoch: u64) -> String {
    let stats = write_layer(upper, std::io::sink(), &LayerOptions { epoch }).unwrap();
    stats.diff_id.to_string()
}

/// The tar's entry list, for readable failures.
fn tar_listing(upper: &Path) -> Vec<String> {
    let mut buf = Vec::new();
    let opts = LayerOptions { epoch: u64::MAX };
    write_layer(upper, &mut buf, &opts).unwrap();
    let mut ar = tar::Archive::new(&buf[..]);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            format!(
                "{} {:?} {:o} {}:{} {} {:?}",
                String::from_utf8_lossy(&e.path_bytes()),
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mtime().unwrap(),
                h.link_name().unwrap(),
            )
        })
        .collect()
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Runs `f` on an overlayfs mount of `layers` (bottom → top) with a fresh upper directory,
/// returned after unmounting. `None` when overlayfs cannot be mounted here.
fn overlay_upper(root: &Path, layers: &[PathBuf], f: impl FnOnce(&Path)) -> Option<PathBuf> {
    let (upper, work, merged) = (root.join("ov-upper"), root.join("ov-work"), root.join("ov"));
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let lowerdir: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let mount = Mount(merged.clone());
    f(&merged);
    drop(mount);
    Some(upper)
}

/// Whiteout mtimes are the deletion time on overlayfs; the differ uses the parent
/// directory's mtime (deterministic). Normalise overlay's to the same before comparing.
fn normalise_whiteouts(dir: &Path) {
    let parent_mtime = {
        let md = fs::symlink_metadata(dir).unwrap();
        (md.mtime(), md.mtime_nsec())
    };
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        let ft = md.file_type();
        if ft.is_dir() {
            normalise_whiteouts(&e.path());
        } else if std::os::unix::fs::FileTypeExt::is_char_device(&ft) && md.rdev() == 0 {
            set_mtime(&e.path(), parent_mtime);
        }
    }
    // Setting children's times does not change the directory's mtime.
}

#[test]
fn materialize_then_diff_matches_overlayfs() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layers = lower_layers(root);
    let lower = LayerView::new(layers.clone());

    // 1. Materialise: the plain tree equals the merged view, entry by entry.
    let after = root.join("after");
    fs::create_dir(&after).unwrap();
    materialize(&lower, &after).unwrap();
    let lower_snap = snapshot(&lower);
    assert_eq!(snapshot(&LayerView::plain(&after)), lower_snap);
    assert!(!lower_snap.contains_key("/gone.txt"));
    assert!(!lower_snap.contains_key("/opq/old.txt"));
    assert_eq!(lower_snap["/bin/tool"].mode, 0o4755);
    assert_eq!(lower_snap["/bin/tool"].mtime, (1_600_000_001, 7));
    assert_eq!(
        lower_snap["/bin/tool"].xattrs,
        vec![("security.capability".to_owned(), CAP.to_vec())]
    );
    assert_eq!(lower_snap["/dev/null"].rdev, rustix::fs::makedev(1, 3));
    assert_eq!(
        (lower_snap["/dev/fifo"].uid, lower_snap["/dev/fifo"].gid),
        (7, 8)
    );
    let one = fs::metadata(after.join("hl/one")).unwrap();
    let two = fs::metadata(after.join("hl/two")).unwrap();
    // A parent's hard links become separate copies: overlayfs (without index=on) breaks them
    // when the step writes one name, and the layers must match overlayfs' (checked below).
    assert_ne!(
        one.ino(),
        two.ino(),
        "parent hard links are materialised as copies"
    );
    assert_eq!(fs::metadata(&after).unwrap().mtime(), 1_600_000_003);

    // 2. The step, then the diff.
    step(&after);
    let upper = root.join("upper");
    fs::create_dir(&upper).unwrap();
    let stats = diff(&lower, &after, &upper).unwrap();
    assert_eq!(
        stats,
        DiffStats {
            // new.txt, shadow, etcdir, hl-a, hl-b, passwd.link, f2d/child
            added: 7,
            // mod, chmod, chown, d2f (dir → file), f2d (file → dir), data, etc, passwd
            modified: 8,
            // del.txt, tree
            deleted: 2,
            copied_up: 0,
            opaque: 1,
            // hl-b, and etc/passwd linked to etc/passwd.link
            hardlinks: 2,
            // mod, new, chmod, chown, child, hl-a, d2f, passwd.link
            bytes: 16 + 8 + 5 + 5 + 5 + 4 + 10 + 26,
        }
    );

    // The planted links are links in upper; their targets were never read.
    let shadow = fs::symlink_metadata(upper.join("data/shadow")).unwrap();
    assert!(shadow.file_type().is_symlink());
    assert_eq!(
        fs::read_link(upper.join("data/shadow")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert!(
        fs::symlink_metadata(upper.join("data/etcdir"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // One whiteout for the deleted tree, nothing below it; unchanged entries are absent.
    let tree = fs::symlink_metadata(upper.join("tree")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &tree.file_type()
    ));
    assert_eq!(tree.rdev(), 0);
    for absent in [
        "data/keep.txt",
        "bin",
        "hl",
        "dev",
        "opq",
        "lnk",
        "data/layer2.txt",
    ] {
        assert!(
            !upper.join(absent).exists(),
            "{absent} should not be in upper"
        );
    }
    let a = fs::metadata(upper.join("data/hl-a")).unwrap();
    let b = fs::metadata(upper.join("data/hl-b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        rustix::fs::getxattr(upper.join("f2d"), "trusted.overlay.opaque", &mut [0u8; 4]).unwrap(),
        1
    );

    // 3. lower + upper as a view equals the after-tree, entry by entry.
    let mut stacked = layers.clone();
    stacked.push(upper.clone());
    let after_snap = snapshot(&LayerView::plain(&after));
    let stacked_snap = snapshot(&LayerView::new(stacked));
    assert_eq!(
        stacked_snap.keys().collect::<Vec<_>>(),
        after_snap.keys().collect::<Vec<_>>()
    );
    for (path, snap) in &after_snap {
        assert_eq!(&stacked_snap[path], snap, "{path}");
    }

    // 4. The same step through a real overlayfs mount yields the same layer.
    let Some(ov_upper) = overlay_upper(root, &layers, step) else {
        println!("overlayfs comparison skipped: mount -t overlay failed");
        return;
    };
    // Epoch 0 clamps every mtime: compares everything but times, with no normalisation.
    assert_eq!(
        tar_listing(&upper).len(),
        tar_listing(&ov_upper).len(),
        "\ncopydiff: {:#?}\noverlay: {:#?}",
        tar_listing(&upper),
        tar_listing(&ov_upper)
    );
    assert_eq!(diff_id(&upper, 0), diff_id(&ov_upper, 0));
    normalise_whiteouts(&ov_upper);
    assert_eq!(
        tar_listing(&upper),
        tar_listing(&ov_upper),
        "tar entries differ (copydiff vs overlayfs)"
    );
    assert_eq!(diff_id(&upper, u64::MAX), diff_id(&ov_upper, u64::MAX));
}

/// A directory deleted and recreated: overlayfs stores it opaque with all its children, the
/// differ stores only what differs from the parent's directory. The layers differ but apply
/// to the same file system.
#[test]
fn recreated_directory_differs_from_overlayfs_only_by_opacity() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let l1 = root.join("l1");
    let m = (1_600_000_000, 0);
    file(&l1.join("d/same.txt"), "same", 0o644, m);
    file(&l1.join("d/gone.txt"), "gone", 0o644, m);
    dir(&l1.join("d"), 0o755, m);
    dir(&l1, 0o755, m);
    let layers = vec![l1];
    let lower = LayerView::new(layers.clone());
    let step = |r: &Path| {
        fs::remove_dir_all(r.join("d")).unwrap();
        fs::create_dir(r.join("d")).unwrap();
        file(&r.join("d/same.txt"), "same", 0o644, m);
        set_mtime(&r.join("d"), T);
        set_mtime(r, T);
    };
    let after = root.join("after");
    fs::create_dir(&after).unwrap();
    materialize(&lower, &after).unwrap();
    step(&after);
    let upper = root.join("upper");
    fs::create_dir(&upper).unwrap();
    diff(&lower, &after, &upper).unwrap();

    let mut stacked = layers.clone();
    stacked.push(upper.clone());
    assert_eq!(
        snapshot(&LayerView::new(stacked)),
        snapshot(&LayerView::plain(&after))
    );

    let Some(ov_upper) = overlay_upper(root, &layers, step) else {
        println!("overlayfs comparison skipped: mount -t overlay failed");
        return;
    };
    normalise_whiteouts(&ov_upper);
    let ours = tar_listing(&upper);
    let theirs = tar_listing(&ov_upper);
    // Overlayfs: `d/` opaque, with `same.txt` (recreated) and no whiteout for gone.txt.
    // copydiff: `d/` (mtime changed), a whiteout for gone.txt, same.txt unchanged.
    let names = |l: &[String]| {
        l.iter()
            .map(|e| e.split(' ').next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&ours), vec!["d/", "d/.wh.gone.txt"]);
    assert_eq!(names(&theirs), vec!["d/", "d/.wh..wh..opq", "d/same.txt"]);
    assert_eq!(
        ours[0], theirs[0],
        "the directory entry itself is identical"
    );
}

#[test]
fn targets_must_be_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dest = tmp.path().join("dest");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("x"), "").unwrap();
    let view = LayerView::plain(&src);
    assert!(matches!(
        materialize(&view, &dest),
        Err(CopyDiffError::NotEmpty { .. })
    ));
    assert!(matches!(
        diff(&view, &src, &dest),
        Err(CopyDiffError::NotEmpty { .. })
    ));
}

/// A deletion needs a whiteout: unprivileged `mknod` of char 0/0 is allowed since Linux 5.8;
/// on older kernels (or where it is refused) the error names the deleted path.
#[test]
fn deletion_writes_a_whiteout_or_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    let after = tmp.path().join("after");
    let upper = tmp.path().join("upper");
    fs::create_dir_all(lower.join("d")).unwrap();
    fs::write(lower.join("d/x"), "").unwrap();
    fs::create_dir_all(after.join("d")).unwrap();
    fs::create_dir(&upper).unwrap();
    match diff(&LayerView::new(vec![lower]), &after, &upper) {
        Ok(stats) => {
            assert_eq!(stats.deleted, 1);
            let md = fs::symlink_metadata(upper.join("d/x")).unwrap();
            assert!(std::os::unix::fs::FileTypeExt::is_char_device(
                &md.file_type()
            ));
            assert_eq!(md.rdev(), 0);
        }
        Err(CopyDiffError::WhiteoutNeedsPrivilege { path }) => {
            assert!(!is_root());
            assert_eq!(path, "/d/x");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}
