//! Layer views (whiteouts, opaque dirs, resolution), the filtered context, ADD unpacking,
//! WORKDIR mkdir, `--chown` resolution and the content digest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use kiln_engine::fileop::{CopyRequest, FileOpError, content_digest, copy, mkdir, resolve_user};
use kiln_engine::frontend::dockerignore::DockerIgnore;
use kiln_engine::fsview::{FsViewError, LayerView, context_view};
use tempfile::TempDir;

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn names(view: &LayerView, dir: &str) -> Vec<String> {
    view.read_dir(dir)
        .unwrap()
        .iter()
        .map(|e| e.name().to_owned())
        .collect()
}

#[test]
fn merged_read_dir_is_sorted_and_upper_wins() {
    let (l0, l1) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    write(l0.path(), "etc/b", "lower");
    write(l0.path(), "etc/c", "C");
    write(l1.path(), "etc/a", "A");
    write(l1.path(), "etc/b", "upper");
    let v = LayerView::new(vec![l0.path().into(), l1.path().into()]);
    assert_eq!(names(&v, "/etc"), ["a", "b", "c"]);
    let mut s = String::new();
    std::io::Read::read_to_string(&mut v.open("/etc/b").unwrap(), &mut s).unwrap();
    assert_eq!(s, "upper");
    assert_eq!(v.lookup("/etc/b").unwrap().unwrap().layer(), 1);
}

#[test]
fn whiteout_in_an_upper_layer_hides_a_lower_file() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let (l0, l1) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    write(l0.path(), "etc/gone", "x");
    write(l0.path(), "etc/xgone", "x");
    write(l0.path(), "etc/kept", "x");
    fs::create_dir(l1.path().join("etc")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        l1.path().join("etc/gone"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(0, 0),
    )
    .unwrap();
    let xw = l1.path().join("etc/xgone");
    fs::write(&xw, "").unwrap();
    let xattr_ok = rustix::fs::setxattr(
        &xw,
        "trusted.overlay.whiteout",
        b"",
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok();
    let v = LayerView::new(vec![l0.path().into(), l1.path().into()]);
    assert!(v.lookup("/etc/gone").unwrap().is_none());
    assert!(v.resolve("/etc/gone", true).unwrap().is_none());
    if xattr_ok {
        assert!(v.lookup("/etc/xgone").unwrap().is_none());
        assert_eq!(names(&v, "/etc"), ["kept"]);
    } else {
        println!("skipped xattr whiteout: trusted xattrs unsupported here");
    }
}

#[test]
fn opaque_directory_hides_lower_contents() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let (l0, l1) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    write(l0.path(), "d/old", "x");
    write(l1.path(), "d/new", "y");
    let set = rustix::fs::setxattr(
        l1.path().join("d"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    );
    if set.is_err() {
        println!("skipped: trusted xattrs unsupported here");
        return;
    }
    let v = LayerView::new(vec![l0.path().into(), l1.path().into()]);
    assert_eq!(names(&v, "/d"), ["new"]);
    assert!(v.lookup("/d/old").unwrap().is_none());
}

#[test]
fn resolution_stays_in_the_root_and_detects_loops() {
    let root = TempDir::new().unwrap();
    write(root.path(), "srv/app/f", "F");
    symlink("/srv/app", root.path().join("app")).unwrap();
    symlink("../../../../srv", root.path().join("up")).unwrap();
    symlink("b", root.path().join("a")).unwrap();
    symlink("a", root.path().join("b")).unwrap();
    let v = LayerView::plain(root.path());
    let r = v.resolve("/app/f", true).unwrap().unwrap();
    assert_eq!(r.path(), "/srv/app/f");
    assert_eq!(
        v.resolve("/up/app", true).unwrap().unwrap().path(),
        "/srv/app"
    );
    assert_eq!(
        v.resolve("/../../app", false).unwrap().unwrap().path(),
        "/app"
    );
    assert!(matches!(
        v.resolve("/a", true),
        Err(FsViewError::SymlinkLoop { .. })
    ));
    assert_eq!(v.read_link("/app").unwrap(), "/srv/app");
    assert!(v.resolve("/missing/x", true).unwrap().is_none());
    let w = v.resolve_for_write("/app/new/x").unwrap();
    assert_eq!(w.path(), "/srv/app/new/x");
    assert!(w.entry().is_none());
}

#[test]
fn context_view_hides_dockerignored_paths() {
    let ctx = TempDir::new().unwrap();
    for f in [
        "src/a.rs",
        "README.md",
        "docs/x.md",
        "node_modules/m/i.js",
        "keep/me/k",
    ] {
        write(ctx.path(), f, "x");
    }
    write(ctx.path(), "keep/other", "x");
    let ignore = DockerIgnore::parse("node_modules\n*.md\n!README.md\nkeep\n!keep/me").unwrap();
    let v = context_view(ctx.path(), &ignore);
    assert_eq!(names(&v, "/"), ["README.md", "docs", "keep", "src"]);
    assert!(v.lookup("/node_modules/m/i.js").unwrap().is_none());
    assert_eq!(names(&v, "/keep"), ["me"]);
    let (upper, lower) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let dest = LayerView::new(vec![lower.path().into()]);
    let r = CopyRequest {
        sources: vec![".".into()],
        dest: "/app/".into(),
        workdir: "/".into(),
        ..CopyRequest::default()
    };
    copy(&r, &v, &dest, upper.path()).unwrap();
    assert!(upper.path().join("app/README.md").exists());
    assert!(upper.path().join("app/keep/me/k").exists());
    assert!(!upper.path().join("app/keep/other").exists());
    assert!(!upper.path().join("app/node_modules").exists());
}

/// (raw name, kind, content, link target)
type TarEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], Option<&'a str>);

fn tar_bytes(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn add(ctx: &Path, lower: &Path, dest: &str) -> (TempDir, Result<(), FileOpError>) {
    let upper = TempDir::new().unwrap();
    let r = CopyRequest {
        sources: vec!["archive".into()],
        dest: dest.into(),
        workdir: "/".into(),
        unpack: true,
        ..CopyRequest::default()
    };
    let res = copy(
        &r,
        &LayerView::plain(ctx),
        &LayerView::new(vec![lower.into()]),
        upper.path(),
    );
    (upper, res.map(|_| ()))
}

#[test]
fn add_unpacks_a_gzip_tar_and_a_zstd_tar() {
    let tar = tar_bytes(&[
        (b"dir/", tar::EntryType::Directory, b"", None),
        (b"dir/f.txt", tar::EntryType::Regular, b"hello", None),
        (b"/abs.txt", tar::EntryType::Regular, b"abs", None),
    ]);
    let ctx = TempDir::new().unwrap();
    let lower = TempDir::new().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    fs::write(ctx.path().join("archive"), gz.finish().unwrap()).unwrap();
    let (upper, res) = add(ctx.path(), lower.path(), "/x");
    res.unwrap();
    assert_eq!(
        fs::read_to_string(upper.path().join("x/dir/f.txt")).unwrap(),
        "hello"
    );
    assert_eq!(
        fs::read_to_string(upper.path().join("x/abs.txt")).unwrap(),
        "abs"
    );

    fs::write(
        ctx.path().join("archive"),
        zstd::encode_all(&tar[..], 1).unwrap(),
    )
    .unwrap();
    let (upper, res) = add(ctx.path(), lower.path(), "/z/");
    res.unwrap();
    assert!(upper.path().join("z/dir/f.txt").exists());

    // A compressed file that is not a tar is copied as it is.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"not a tar").unwrap();
    fs::write(ctx.path().join("archive"), gz.finish().unwrap()).unwrap();
    let (upper, res) = add(ctx.path(), lower.path(), "/plain/");
    res.unwrap();
    assert!(upper.path().join("plain/archive").is_file());
}

#[test]
fn add_refuses_an_entry_climbing_out_with_dotdot() {
    let tar = tar_bytes(&[(b"a/../../evil", tar::EntryType::Regular, b"x", None)]);
    let ctx = TempDir::new().unwrap();
    fs::write(ctx.path().join("archive"), tar).unwrap();
    let lower = TempDir::new().unwrap();
    let (upper, res) = add(ctx.path(), lower.path(), "/x/");
    assert!(
        matches!(res, Err(FileOpError::ArchiveEscape { .. })),
        "{res:?}"
    );
    assert!(!upper.path().join("evil").exists());
}

#[test]
fn add_refuses_writing_through_a_symlink_parent() {
    let tar = tar_bytes(&[
        (b"l", tar::EntryType::Symlink, b"", Some("/etc")),
        (b"l/passwd", tar::EntryType::Regular, b"pwned", None),
    ]);
    let ctx = TempDir::new().unwrap();
    fs::write(ctx.path().join("archive"), tar).unwrap();
    let lower = TempDir::new().unwrap();
    let (upper, res) = add(ctx.path(), lower.path(), "/x/");
    assert!(
        matches!(res, Err(FileOpError::ArchiveEscape { .. })),
        "{res:?}"
    );
    assert!(!upper.path().join("etc").exists());

    // A destination-view symlink leading out of the destination is refused too…
    let tar = tar_bytes(&[(b"lnk/x", tar::EntryType::Regular, b"x", None)]);
    fs::write(ctx.path().join("archive"), tar).unwrap();
    fs::create_dir_all(lower.path().join("x")).unwrap();
    symlink("/etc", lower.path().join("x/lnk")).unwrap();
    let (_, res) = add(ctx.path(), lower.path(), "/x/");
    assert!(
        matches!(res, Err(FileOpError::ArchiveEscape { .. })),
        "{res:?}"
    );

    // …while one staying inside it (usrmerge's /lib -> usr/lib) is followed.
    let tar = tar_bytes(&[(b"lib/y", tar::EntryType::Regular, b"y", None)]);
    fs::write(ctx.path().join("archive"), tar).unwrap();
    fs::create_dir_all(lower.path().join("usr/lib")).unwrap();
    symlink("usr/lib", lower.path().join("lib")).unwrap();
    let (upper, res) = add(ctx.path(), lower.path(), "/");
    res.unwrap();
    assert!(upper.path().join("usr/lib/y").is_file());
}

#[test]
fn workdir_mkdir_copies_up_parents_and_reports_noop() {
    let lower = TempDir::new().unwrap();
    fs::create_dir(lower.path().join("srv")).unwrap();
    fs::set_permissions(lower.path().join("srv"), fs::Permissions::from_mode(0o700)).unwrap();
    let view = LayerView::new(vec![lower.path().into()]);
    let upper = TempDir::new().unwrap();
    assert!(mkdir("app/x", "/srv", Some((7, 8)), &view, upper.path()).unwrap());
    let srv = fs::metadata(upper.path().join("srv")).unwrap();
    assert_eq!(srv.mode() & 0o7777, 0o700);
    let x = fs::metadata(upper.path().join("srv/app/x")).unwrap();
    assert_eq!((x.mode() & 0o7777, x.uid(), x.gid()), (0o755, 7, 8));
    let again = TempDir::new().unwrap();
    assert!(!mkdir("/srv", "/", None, &view, again.path()).unwrap());
    assert_eq!(fs::read_dir(again.path()).unwrap().count(), 0);
}

#[test]
fn chown_names_resolve_through_passwd_and_group() {
    let root = TempDir::new().unwrap();
    write(
        root.path(),
        "etc/passwd",
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
    );
    write(root.path(), "etc/group", "root:x:0:\nstaff:x:50:app\n");
    let v = LayerView::plain(root.path());
    assert_eq!(resolve_user(&v, "1000").unwrap(), (1000, 1000));
    assert_eq!(resolve_user(&v, "app").unwrap(), (1000, 1001));
    assert_eq!(resolve_user(&v, "app:staff").unwrap(), (1000, 50));
    assert_eq!(resolve_user(&v, "0:staff").unwrap(), (0, 50));
    assert_eq!(resolve_user(&v, "app:7").unwrap(), (1000, 7));
    let err = resolve_user(&v, "nobody").unwrap_err();
    assert!(err.to_string().contains("nobody"));
    assert!(matches!(
        resolve_user(&v, "app:nogroup"),
        Err(FileOpError::UnknownGroup { .. })
    ));
    assert!(resolve_user(&v, ":1").is_err());
}

#[test]
fn content_digest_ignores_mtimes_but_not_content_or_mode() {
    let ctx = TempDir::new().unwrap();
    write(ctx.path(), "dir/a", "A");
    write(ctx.path(), "dir/b", "B");
    write(ctx.path(), "other", "O");
    let v = LayerView::plain(ctx.path());
    let sel = vec!["dir".to_owned()];
    let d0 = content_digest(&v, &sel).unwrap();
    let f = fs::File::options()
        .write(true)
        .open(ctx.path().join("dir/a"))
        .unwrap();
    f.set_modified(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(content_digest(&v, &sel).unwrap(), d0);
    write(ctx.path(), "other", "changed");
    assert_eq!(
        content_digest(&v, &sel).unwrap(),
        d0,
        "unselected files do not count"
    );
    write(ctx.path(), "dir/a", "A2");
    let d1 = content_digest(&v, &sel).unwrap();
    assert_ne!(d1, d0);
    fs::set_permissions(ctx.path().join("dir/a"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_ne!(content_digest(&v, &sel).unwrap(), d1);
    assert!(content_digest(&v, &["missing".to_owned()]).is_err());
}
