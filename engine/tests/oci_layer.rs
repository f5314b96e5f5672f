//! Layer tars: determinism, overlay whiteout conversion, apply round trips and containment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use kiln_engine::oci::apply::{ApplyError, ApplyMode, apply_layer};
use kiln_engine::oci::compress::{BlobWriter, Compression, decompress};
use kiln_engine::oci::layer::{LayerOptions, LayerStats, write_layer};
use rustix::fs::{FileType, Mode, Timespec, Timestamps, XattrFlags};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn set_mtime(p: &Path, secs: i64) {
    let t = Timestamps {
        last_access: Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        last_modification: Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &t,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn layer(dir: &Path, epoch: u64) -> (Vec<u8>, LayerStats) {
    let mut out = Vec::new();
    let stats = write_layer(dir, &mut out, &LayerOptions { epoch }).unwrap();
    (out, stats)
}

/// (path, type byte, size, mode, mtime) of every entry.
fn listing(tar_bytes: &[u8]) -> Vec<(String, u8, u64, u32, u64)> {
    let mut a = tar::Archive::new(tar_bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                h.entry_type().as_byte(),
                h.size().unwrap(),
                h.mode().unwrap(),
                h.mtime().unwrap(),
            )
        })
        .collect()
}

fn populate(root: &Path, reverse: bool, mtime: i64) {
    let mut steps: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| fs::create_dir_all(root.join("usr/bin")).unwrap()),
        Box::new(|| fs::write(root.join("b.txt"), b"bee").unwrap()),
        Box::new(|| fs::write(root.join("a.txt"), b"ay").unwrap()),
        Box::new(|| fs::create_dir_all(root.join("a")).unwrap()),
    ];
    if reverse {
        steps.reverse();
    }
    for s in &steps {
        s();
    }
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    symlink("tool", root.join("usr/bin/link")).unwrap();
    let long = root.join("a").join("d".repeat(120)).join("e".repeat(120));
    fs::create_dir_all(&long).unwrap();
    fs::write(long.join("f".repeat(200)), b"deep").unwrap();
    for e in walk(root) {
        set_mtime(&e, mtime);
    }
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn layer_is_byte_identical_regardless_of_mtimes_above_epoch_and_creation_order() {
    let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    populate(x.path(), false, 1_900_000_000);
    populate(y.path(), true, 2_000_000_000);
    let (tx, sx) = layer(x.path(), 1_700_000_000);
    let (ty, sy) = layer(y.path(), 1_700_000_000);
    assert_eq!(sx, sy);
    assert!(tx == ty, "layer bytes differ");
    let l = listing(&tx);
    let names: Vec<&str> = l.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names[0], "a/");
    assert!(names.iter().position(|n| *n == "a.txt") > names.iter().position(|n| *n == "a/"));
    assert!(l.iter().all(|e| e.4 == 1_700_000_000), "mtimes clamped");
    let tool = l.iter().find(|e| e.0 == "usr/bin/tool").unwrap();
    assert_eq!(tool.3, 0o4755, "setuid kept");
    let tool2 = l.iter().find(|e| e.0 == "usr/bin/tool2").unwrap();
    assert_eq!(tool2.1, b'1', "second name of an inode is a hard link");
    assert!(
        names.iter().any(|n| n.ends_with(&"f".repeat(200))),
        "long name via PAX"
    );
    // Older mtimes are kept; epoch 0 clamps everything to 0.
    let (t0, _) = layer(x.path(), 0);
    assert!(listing(&t0).iter().all(|e| e.4 == 0));
}

#[test]
fn compressed_layers_are_deterministic_and_diff_id_matches() {
    let x = tempfile::tempdir().unwrap();
    populate(x.path(), false, 5);
    for c in [
        Compression::Gzip,
        Compression::Zstd,
        Compression::Uncompressed,
    ] {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut w = BlobWriter::new(Vec::new(), c).unwrap();
            let stats = write_layer(x.path(), &mut w, &LayerOptions { epoch: 10 }).unwrap();
            let (blob, info) = w.finish().unwrap();
            assert_eq!(info.diff_id, stats.diff_id);
            let mut plain = Vec::new();
            decompress(&blob[..])
                .unwrap()
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(kiln_engine::Digest::of(&plain), stats.diff_id);
            runs.push(info);
        }
        assert_eq!(runs[0], runs[1]);
    }
}

fn overlay_upper(root: &Path) {
    fs::create_dir(root.join("etc")).unwrap();
    fs::write(root.join("etc/new"), b"n").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("etc/gone"),
        FileType::CharacterDevice,
        Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .unwrap();
    fs::create_dir(root.join("opq")).unwrap();
    rustix::fs::lsetxattr(
        root.join("opq"),
        "trusted.overlay.opaque",
        b"y",
        XattrFlags::empty(),
    )
    .unwrap();
    fs::write(root.join("opq/-keep"), b"k").unwrap();
    fs::write(root.join("xw"), b"").unwrap();
    rustix::fs::lsetxattr(
        root.join("xw"),
        "trusted.overlay.whiteout",
        b"",
        XattrFlags::empty(),
    )
    .unwrap();
    // A step can set `user.overlay.*` itself; the kernel overlay (trusted mode) ignores it, so
    // the layer writer must too: this stays an ordinary empty file.
    fs::write(root.join("uw"), b"").unwrap();
    rustix::fs::lsetxattr(
        root.join("uw"),
        "user.overlay.whiteout",
        b"",
        XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        rustix::fs::makedev(0, 0),
    )
    .unwrap();
    fs::write(root.join("ping"), b"elf").unwrap();
    // security.capability v2 blob for cap_net_raw+ep.
    let cap = [
        0u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    rustix::fs::lsetxattr(
        root.join("ping"),
        "security.capability",
        &cap,
        XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(root.join("ping"), "user.dropped", b"x", XattrFlags::empty()).unwrap();
    std::os::unix::fs::chown(root.join("etc/new"), Some(1234), Some(5678)).unwrap();
}

#[test]
fn overlay_whiteouts_and_opaque_dirs_become_oci_markers() {
    if !is_root() {
        println!("skipped: needs root for mknod");
        return;
    }
    let up = tempfile::tempdir().unwrap();
    overlay_upper(up.path());
    let (t, _) = layer(up.path(), 0);
    let l = listing(&t);
    let names: Vec<&str> = l.iter().map(|e| e.0.as_str()).collect();
    assert!(names.contains(&"etc/.wh.gone"), "{names:?}");
    assert!(names.contains(&".wh.xw"), "{names:?}");
    assert!(!names.contains(&"etc/gone") && !names.contains(&"xw"));
    assert!(
        names.contains(&"uw") && !names.contains(&".wh.uw"),
        "a user.overlay.whiteout xattr made a whiteout: {names:?}"
    );
    let opq = names.iter().position(|n| *n == "opq/").unwrap();
    assert_eq!(
        names[opq + 1],
        "opq/.wh..wh..opq",
        "marker before the dir's children"
    );
    let wh = l.iter().find(|e| e.0 == "etc/.wh.gone").unwrap();
    assert_eq!((wh.1, wh.2), (b'0', 0), "whiteout is an empty regular file");
    let mut a = tar::Archive::new(&t[..]);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let keys: Vec<String> = e
            .pax_extensions()
            .unwrap()
            .map(|x| x.map(|x| x.unwrap().key().unwrap().to_owned()).collect())
            .unwrap_or_default();
        if name == "ping" {
            assert_eq!(keys, vec!["SCHILY.xattr.security.capability"]);
        } else {
            assert!(keys.is_empty(), "{name}: {keys:?}");
        }
    }
}

#[test]
fn apply_overlay_then_write_again_gives_the_same_diff_id() {
    if !is_root() {
        println!("skipped: needs root for mknod");
        return;
    }
    let up = tempfile::tempdir().unwrap();
    overlay_upper(up.path());
    populate(&up.path().join("tree"), false, 3);
    let (t1, s1) = layer(up.path(), 100);
    let snap = tempfile::tempdir().unwrap();
    apply_layer(&t1[..], snap.path(), ApplyMode::Overlay).unwrap();
    let gone = fs::symlink_metadata(snap.path().join("etc/gone")).unwrap();
    assert_eq!(gone.rdev(), 0);
    let new = fs::metadata(snap.path().join("etc/new")).unwrap();
    assert_eq!((new.uid(), new.gid()), (1234, 5678));
    assert_eq!(
        fs::metadata(snap.path().join("tree/usr/bin/tool"))
            .unwrap()
            .mode()
            & 0o7777,
        0o4755
    );
    let (t2, s2) = layer(snap.path(), 100);
    assert_eq!(s1, s2);
    assert!(t1 == t2);
}

#[test]
fn flatten_applies_whiteouts_and_opaque_dirs_to_lower_content() {
    let lower = tempfile::tempdir().unwrap();
    let l = lower.path();
    fs::create_dir_all(l.join("etc/sub")).unwrap();
    fs::write(l.join("etc/gone"), b"old").unwrap();
    fs::write(l.join("etc/keep"), b"old").unwrap();
    fs::create_dir_all(l.join("opq/deep")).unwrap();
    fs::write(l.join("opq/old"), b"old").unwrap();
    fs::write(l.join("opq/deep/old"), b"old").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    raw(&mut b, b"etc/", tar::EntryType::Directory, None, b"");
    raw(&mut b, b"etc/.wh.gone", tar::EntryType::Regular, None, b"");
    raw(&mut b, b"etc/.wh.sub", tar::EntryType::Regular, None, b"");
    raw(&mut b, b"opq/", tar::EntryType::Directory, None, b"");
    raw(&mut b, b"opq/deep/", tar::EntryType::Directory, None, b"");
    raw(&mut b, b"opq/new", tar::EntryType::Regular, None, b"new");
    // Marker after its siblings: it must still spare what this layer wrote.
    raw(
        &mut b,
        b"opq/.wh..wh..opq",
        tar::EntryType::Regular,
        None,
        b"",
    );
    let t = b.into_inner().unwrap();
    let stats = apply_layer(&t[..], l, ApplyMode::Flatten).unwrap();
    assert_eq!(stats.whiteouts, 3);
    assert!(!l.join("etc/gone").exists() && !l.join("etc/sub").exists());
    assert!(l.join("etc/keep").exists());
    assert!(!l.join("opq/old").exists() && !l.join("opq/deep/old").exists());
    assert!(l.join("opq/deep").is_dir());
    assert_eq!(fs::read(l.join("opq/new")).unwrap(), b"new");
}

type RawEntry<'a> = (&'a [u8], tar::EntryType, Option<&'a [u8]>);

/// Appends an entry with exactly `name` (no sanitising, unlike `tar::Header::set_path`).
fn raw(
    b: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: tar::EntryType,
    link: Option<&[u8]>,
    data: &[u8],
) {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    if let Some(link) = link {
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn apply_raw(entries: &[RawEntry<'_>]) -> (tempfile::TempDir, Result<(), ApplyError>) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        raw(
            &mut b,
            name,
            *kind,
            *link,
            if *kind == tar::EntryType::Regular {
                b"pwned"
            } else {
                b""
            },
        );
    }
    let t = b.into_inner().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let r = apply_layer(&t[..], dest.path(), ApplyMode::Flatten).map(|_| ());
    (dest, r)
}

#[test]
fn apply_refuses_dotdot_entries() {
    let (_d, r) = apply_raw(&[(b"../x", tar::EntryType::Regular, None)]);
    assert!(matches!(r, Err(ApplyError::UnsafePath { .. })), "{r:?}");
    let (_d, r) = apply_raw(&[(b"a/../../x", tar::EntryType::Regular, None)]);
    assert!(matches!(r, Err(ApplyError::UnsafePath { .. })), "{r:?}");
}

#[test]
fn apply_treats_absolute_names_as_relative() {
    let (d, r) = apply_raw(&[(b"/abs/file", tar::EntryType::Regular, None)]);
    r.unwrap();
    assert_eq!(fs::read(d.path().join("abs/file")).unwrap(), b"pwned");
}

#[test]
fn apply_refuses_to_write_through_a_symlinked_parent() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().as_os_str().as_encoded_bytes().to_vec();
    let (_d, r) = apply_raw(&[
        (b"a", tar::EntryType::Symlink, Some(&target)),
        (b"a/pwned", tar::EntryType::Regular, None),
    ]);
    assert!(
        matches!(r, Err(ApplyError::ParentNotDirectory { .. })),
        "{r:?}"
    );
    assert!(!outside.path().join("pwned").exists());
    // A relative symlink climbing out is refused the same way.
    let (_d, r) = apply_raw(&[
        (
            b"b",
            tar::EntryType::Symlink,
            Some(b"../../../../../../tmp"),
        ),
        (b"b/pwned", tar::EntryType::Regular, None),
    ]);
    assert!(
        matches!(r, Err(ApplyError::ParentNotDirectory { .. })),
        "{r:?}"
    );
}

#[test]
fn apply_refuses_hard_links_to_outside() {
    let (_d, r) = apply_raw(&[(b"h", tar::EntryType::Link, Some(b"../../../../etc/passwd"))]);
    assert!(matches!(r, Err(ApplyError::UnsafePath { .. })), "{r:?}");
    let (_d, r) = apply_raw(&[
        (b"l", tar::EntryType::Symlink, Some(b"/etc")),
        (b"h", tar::EntryType::Link, Some(b"l/passwd")),
    ]);
    assert!(
        matches!(r, Err(ApplyError::ParentNotDirectory { .. })),
        "{r:?}"
    );
    // An absolute target is inside the root: /etc/passwd means <dest>/etc/passwd.
    let (d, r) = apply_raw(&[
        (b"etc/passwd", tar::EntryType::Regular, None),
        (b"h", tar::EntryType::Link, Some(b"/etc/passwd")),
    ]);
    r.unwrap();
    let (a, b) = (
        fs::metadata(d.path().join("h")).unwrap(),
        fs::metadata(d.path().join("etc/passwd")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn gnu_tar_reads_our_pax_and_ustar_prefix_names() {
    let has_tar = std::process::Command::new("tar")
        .arg("--version")
        .output()
        .is_ok();
    if !has_tar {
        println!("skipped: tar not installed");
        return;
    }
    let x = tempfile::tempdir().unwrap();
    populate(x.path(), false, 5);
    let (t, _) = layer(x.path(), 10);
    let file = x.path().join("layer.tar");
    fs::write(&file, &t).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    let ours: Vec<String> = listing_names(&t);
    let theirs: Vec<&str> = listing.lines().collect();
    assert_eq!(ours, theirs);
}

fn listing_names(t: &[u8]) -> Vec<String> {
    listing(t).into_iter().map(|e| e.0).collect()
}
