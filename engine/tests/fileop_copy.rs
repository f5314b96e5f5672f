//! COPY semantics of `kiln_engine::fileop::copy`, checked on real directories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use kiln_engine::Digest;
use kiln_engine::fileop::{
    CopyRequest, FileHash, FileHashCache, FileKey, FileOpError, KnownContent, Reuse,
    content_digest_cached, copy, copy_knowing, copy_reusing,
};
use kiln_engine::fsview::LayerView;
use tempfile::TempDir;

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn req(sources: &[&str], dest: &str) -> CopyRequest {
    CopyRequest {
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.to_owned(),
        workdir: "/".to_owned(),
        allow_wildcard: true,
        ..CopyRequest::default()
    }
}

/// A source context, a destination (one lower layer) and a fresh upper.
struct Fx {
    ctx: TempDir,
    lower: TempDir,
    upper: TempDir,
}

impl Fx {
    fn new() -> Self {
        Self {
            ctx: TempDir::new().unwrap(),
            lower: TempDir::new().unwrap(),
            upper: TempDir::new().unwrap(),
        }
    }
    fn run(&self, r: &CopyRequest) -> Result<kiln_engine::fileop::CopyStats, FileOpError> {
        let src = LayerView::plain(self.ctx.path());
        let dest = LayerView::new(vec![self.lower.path().to_owned()]);
        copy(r, &src, &dest, self.upper.path())
    }
    fn up(&self, rel: &str) -> std::path::PathBuf {
        self.upper.path().join(rel)
    }
    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.up(rel)).unwrap()
    }
}

#[test]
fn file_into_directory_with_trailing_slash() {
    let fx = Fx::new();
    write(fx.ctx.path(), "a.txt", "A");
    fx.run(&req(&["a.txt"], "/app/")).unwrap();
    assert_eq!(fx.read("app/a.txt"), "A");
    let m = fs::metadata(fx.up("app")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!((m.uid(), m.gid()), (0, 0));
}

#[test]
fn file_into_existing_directory_without_slash() {
    let fx = Fx::new();
    write(fx.ctx.path(), "a.txt", "A");
    fs::create_dir(fx.lower.path().join("app")).unwrap();
    fx.run(&req(&["a.txt"], "/app")).unwrap();
    assert_eq!(fx.read("app/a.txt"), "A");
}

#[test]
fn file_to_missing_path_is_renamed_and_relative_dest_uses_workdir() {
    let fx = Fx::new();
    write(fx.ctx.path(), "a.txt", "A");
    let mut r = req(&["a.txt"], "b.txt");
    r.workdir = "/work".into();
    fx.run(&r).unwrap();
    assert_eq!(fx.read("work/b.txt"), "A");
}

#[test]
fn directory_source_copies_its_contents() {
    let fx = Fx::new();
    write(fx.ctx.path(), "dir/x", "X");
    write(fx.ctx.path(), "dir/sub/y", "Y");
    fx.run(&req(&["dir"], "/out")).unwrap();
    assert_eq!(fx.read("out/x"), "X");
    assert_eq!(fx.read("out/sub/y"), "Y");
    assert!(!fx.up("out/dir").exists());
}

#[test]
fn wildcard_selects_matching_files_into_directory() {
    let fx = Fx::new();
    for f in ["a.txt", "b.txt", "c.md"] {
        write(fx.ctx.path(), f, f);
    }
    fx.run(&req(&["*.txt"], "/out/")).unwrap();
    assert!(fx.up("out/a.txt").exists());
    assert!(fx.up("out/b.txt").exists());
    assert!(!fx.up("out/c.md").exists());
}

#[test]
fn several_sources_need_a_trailing_slash() {
    let fx = Fx::new();
    write(fx.ctx.path(), "a.txt", "A");
    write(fx.ctx.path(), "b.txt", "B");
    let err = fx.run(&req(&["a.txt", "b.txt"], "/out")).unwrap_err();
    assert!(err.to_string().contains(
        "When using COPY with more than one source file, the destination must be a directory and end with a /"
    ));
    let err = fx.run(&req(&["*.txt"], "/out")).unwrap_err();
    assert!(matches!(err, FileOpError::DestMustBeDirectory { .. }));
    fx.run(&req(&["a.txt", "b.txt"], "/out/")).unwrap();
}

#[test]
fn missing_source_is_an_error_naming_it() {
    let fx = Fx::new();
    let err = fx.run(&req(&["nope.txt"], "/out/")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("not found") && msg.contains("nope.txt"),
        "{msg}"
    );
    assert!(fx.run(&req(&["*.none"], "/out/")).is_err());
    let mut r = req(&["*.none"], "/out/");
    r.allow_empty_wildcard = true;
    fx.run(&r).unwrap();
}

#[test]
fn top_level_symlink_is_followed_inside_the_source_root() {
    let fx = Fx::new();
    write(fx.ctx.path(), "real.txt", "R");
    symlink("/real.txt", fx.ctx.path().join("abs")).unwrap();
    symlink("../../../real.txt", fx.ctx.path().join("rel")).unwrap();
    fx.run(&req(&["abs", "rel"], "/out/")).unwrap();
    for name in ["abs", "rel"] {
        let m = fs::symlink_metadata(fx.up(&format!("out/{name}"))).unwrap();
        assert!(m.is_file(), "{name}");
        assert_eq!(fx.read(&format!("out/{name}")), "R");
    }
}

#[test]
fn nested_symlink_is_copied_as_a_link() {
    let fx = Fx::new();
    write(fx.ctx.path(), "dir/x", "X");
    symlink("../elsewhere", fx.ctx.path().join("dir/l")).unwrap();
    fx.run(&req(&["dir"], "/out/")).unwrap();
    let target = fs::read_link(fx.up("out/l")).unwrap();
    assert_eq!(target.to_str(), Some("../elsewhere"));
}

#[test]
fn dest_through_a_lower_symlink_writes_to_the_link_target() {
    let fx = Fx::new();
    write(fx.ctx.path(), "a.txt", "A");
    fs::create_dir_all(fx.lower.path().join("srv/app")).unwrap();
    symlink("/srv/app", fx.lower.path().join("app")).unwrap();
    fx.run(&req(&["a.txt"], "/app/")).unwrap();
    assert_eq!(fx.read("srv/app/a.txt"), "A");
    assert!(fs::symlink_metadata(fx.up("app")).is_err());
}

#[test]
fn dotdot_in_a_source_is_clamped_at_the_root() {
    let fx = Fx::new();
    write(fx.ctx.path(), "a.txt", "A");
    fx.run(&req(&["../../a.txt"], "/out/")).unwrap();
    assert_eq!(fx.read("out/a.txt"), "A");
}

#[test]
fn chown_and_chmod_apply_to_files_and_created_parents() {
    let fx = Fx::new();
    write(fx.ctx.path(), "a.txt", "A");
    let mut r = req(&["a.txt"], "/deep/er/");
    r.chown = Some((1000, 1001));
    r.chmod = Some(0o640);
    fx.run(&r).unwrap();
    let f = fs::metadata(fx.up("deep/er/a.txt")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (1000, 1001, 0o640));
    for d in ["deep", "deep/er"] {
        let m = fs::metadata(fx.up(d)).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o755));
    }
}

#[test]
fn context_files_get_root_ownership_unless_keep_owner() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: needs root");
        return;
    }
    let fx = Fx::new();
    write(fx.ctx.path(), "a.txt", "A");
    let p = fx.ctx.path().join("a.txt");
    std::os::unix::fs::chown(&p, Some(123), Some(456)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    fx.run(&req(&["a.txt"], "/ctx/")).unwrap();
    let m = fs::metadata(fx.up("ctx/a.txt")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o4751));
    let mut r = req(&["a.txt"], "/stage/");
    r.keep_owner = true;
    fx.run(&r).unwrap();
    let m = fs::metadata(fx.up("stage/a.txt")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (123, 456, 0o4751));
}

#[test]
fn mtime_is_preserved() {
    let fx = Fx::new();
    write(fx.ctx.path(), "a.txt", "A");
    let f = fs::File::options()
        .write(true)
        .open(fx.ctx.path().join("a.txt"))
        .unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    f.set_modified(t).unwrap();
    fx.run(&req(&["a.txt"], "/out/")).unwrap();
    assert_eq!(fs::metadata(fx.up("out/a.txt")).unwrap().mtime(), 1_000_000);
}

#[test]
fn parents_keeps_the_source_directory_structure() {
    let fx = Fx::new();
    write(fx.ctx.path(), "a/b/c.txt", "C");
    write(fx.ctx.path(), "a/b/d.md", "D");
    write(fx.ctx.path(), "x/y.txt", "Y");
    let mut r = req(&["a/b/*.txt"], "/out/");
    r.parents = true;
    fx.run(&r).unwrap();
    assert_eq!(fx.read("out/a/b/c.txt"), "C");
    assert!(!fx.up("out/a/b/d.md").exists());
    assert!(!fx.up("out/x").exists());

    let mut r = req(&["a/./b/c.txt", "x"], "/pivot/");
    r.parents = true;
    fx.run(&r).unwrap();
    assert_eq!(fx.read("pivot/b/c.txt"), "C");
    assert_eq!(fx.read("pivot/x/y.txt"), "Y");
}

#[test]
fn exclude_skips_matching_paths() {
    let fx = Fx::new();
    write(fx.ctx.path(), "dir/keep.txt", "K");
    write(fx.ctx.path(), "dir/skip.md", "S");
    write(fx.ctx.path(), "dir/sub/deep.md", "D");
    write(fx.ctx.path(), "top.md", "T");
    let mut r = req(&["dir", "*.md"], "/out/");
    r.excludes = vec!["**/*.md".into()];
    fx.run(&r).unwrap();
    assert!(fx.up("out/keep.txt").exists());
    assert!(!fx.up("out/skip.md").exists());
    assert!(!fx.up("out/sub/deep.md").exists());
    assert!(!fx.up("out/top.md").exists());
}

#[test]
fn hardlinks_within_one_copy_are_preserved() {
    let fx = Fx::new();
    write(fx.ctx.path(), "dir/a", "A");
    fs::hard_link(fx.ctx.path().join("dir/a"), fx.ctx.path().join("dir/b")).unwrap();
    let stats = fx.run(&req(&["dir"], "/out/")).unwrap();
    let (a, b) = (
        fs::metadata(fx.up("out/a")).unwrap(),
        fs::metadata(fx.up("out/b")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(stats.hardlinks, 1);
}

#[test]
fn hardlinks_across_directories_are_kept_and_names_outside_the_source_are_not() {
    let fx = Fx::new();
    let src = fx.ctx.path().join("src");
    // Enough files for the copy threads, so the first names wait in a batch when the second
    // names are met.
    for d in ["a", "b", "c"] {
        for i in 0..40 {
            write(&src, &format!("{d}/f{i:02}"), &format!("{d} {i}"));
        }
    }
    fs::hard_link(src.join("a/f03"), src.join("b/x-linked")).unwrap();
    fs::hard_link(src.join("c/f05"), src.join("c/f06-linked")).unwrap();
    // A name outside what is copied: the file is copied as a file of its own.
    write(fx.ctx.path(), "outside/keep", "kept apart");
    fs::hard_link(fx.ctx.path().join("outside/keep"), src.join("a/only-here")).unwrap();
    let stats = fx.run(&req(&["src"], "/out/")).unwrap();
    let ino = |rel: &str| fs::metadata(fx.up(rel)).unwrap().ino();
    assert_eq!(ino("out/a/f03"), ino("out/b/x-linked"));
    assert_eq!(ino("out/c/f05"), ino("out/c/f06-linked"));
    assert_ne!(ino("out/a/f03"), ino("out/c/f05"));
    assert_eq!(fx.read("out/b/x-linked"), "a 3");
    assert_eq!(fs::metadata(fx.up("out/a/only-here")).unwrap().nlink(), 1);
    assert_eq!(fx.read("out/a/only-here"), "kept apart");
    assert_eq!(stats.hardlinks, 2);
    assert_eq!(stats.files, 121);
    for d in ["a", "b", "c"] {
        for i in 0..40 {
            assert_eq!(fx.read(&format!("out/{d}/f{i:02}")), format!("{d} {i}"));
        }
    }
}

#[test]
fn existing_lower_parent_is_copied_up_with_its_metadata() {
    let fx = Fx::new();
    write(fx.ctx.path(), "a.txt", "A");
    let data = fx.lower.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&data, Some(5), Some(6)).unwrap();
    }
    fx.run(&req(&["a.txt"], "/data/")).unwrap();
    let m = fs::metadata(fx.up("data")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o700);
    if rustix::process::geteuid().is_root() {
        assert_eq!((m.uid(), m.gid()), (5, 6));
    }
}

/// A copy creates files with their final mode and skips `fchown` where the new file already
/// has the owner: neither may leak what the directory or the umask would give instead.
#[test]
fn a_set_group_id_directory_or_the_umask_never_shows_in_copied_files() {
    let fx = Fx::new();
    // Enough files for the parallel copy, with modes the umask (022 here) masks or not, and
    // set-ID bits.
    let modes = [
        0o644, 0o755, 0o777, 0o666, 0o4755, 0o2711, 0o1777, 0o600, 0o640,
    ];
    for i in 0..90 {
        let rel = format!("d/f{i:02}");
        write(fx.ctx.path(), &rel, "x");
        fs::set_permissions(
            fx.ctx.path().join(&rel),
            fs::Permissions::from_mode(modes[i % modes.len()]),
        )
        .unwrap();
    }
    // The destination is a set-group-ID directory of group 6 in the lower layer: files
    // created in its copy-up inherit gid 6 unless kiln sets the owner.
    let sg = fx.lower.path().join("sg");
    fs::create_dir(&sg).unwrap();
    let root = rustix::process::geteuid().is_root();
    if root {
        std::os::unix::fs::chown(&sg, Some(0), Some(6)).unwrap();
    }
    fs::set_permissions(&sg, fs::Permissions::from_mode(0o2775)).unwrap();
    fx.run(&req(&["d"], "/sg/")).unwrap();
    for i in 0..90 {
        let m = fs::metadata(fx.up(&format!("sg/f{i:02}"))).unwrap();
        assert_eq!(m.mode() & 0o7777, modes[i % modes.len()], "f{i:02}");
        if root {
            assert_eq!((m.uid(), m.gid()), (0, 0), "f{i:02}");
        }
    }
    if !root {
        println!("skipped the owner checks: not root (the copy cannot chown)");
    }
}

/// A destination directory with a default ACL: its entries, not the umask, narrow a new
/// file's mode, so the copy must still set each mode itself.
#[test]
fn a_default_acl_never_shows_in_copied_files() {
    let fx = Fx::new();
    let modes = [0o644, 0o755, 0o600, 0o666];
    for (i, mode) in modes.iter().enumerate() {
        let rel = format!("f{i}");
        write(fx.ctx.path(), &rel, "x");
        fs::set_permissions(fx.ctx.path().join(&rel), fs::Permissions::from_mode(*mode)).unwrap();
    }
    // The lower /acl has a default ACL user::rwx group::r-x other::--- (the xattr's binary
    // form: version 2, then tag, permissions, id per entry); its copy-up keeps it.
    let dir = fx.lower.path().join("acl");
    fs::create_dir(&dir).unwrap();
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 0)] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(u32::MAX.to_le_bytes());
    }
    if let Err(e) = rustix::fs::setxattr(
        &dir,
        "system.posix_acl_default",
        &acl,
        rustix::fs::XattrFlags::empty(),
    ) {
        println!("skipped: this file system takes no default ACL ({e})");
        return;
    }
    fx.run(&req(&["f0", "f1", "f2", "f3"], "/acl/")).unwrap();
    for (i, mode) in modes.iter().enumerate() {
        let m = fs::metadata(fx.up(&format!("acl/f{i}"))).unwrap();
        assert_eq!(m.mode() & 0o7777, *mode, "f{i}");
    }
}

#[test]
fn directory_merges_into_lower_directory_without_opaque_and_upper_wins_for_files() {
    let fx = Fx::new();
    write(fx.ctx.path(), "dir/new.txt", "N");
    write(fx.ctx.path(), "dir/same.txt", "upper");
    write(fx.lower.path(), "out/old.txt", "O");
    write(fx.lower.path(), "out/same.txt", "lower");
    fx.run(&req(&["dir"], "/out")).unwrap();
    assert_eq!(fx.read("out/new.txt"), "N");
    assert_eq!(fx.read("out/same.txt"), "upper");
    assert!(
        !fx.up("out/old.txt").exists(),
        "lower files are not copied up"
    );
    let opaque = rustix::fs::getxattr(fx.up("out"), "trusted.overlay.opaque", &mut [0u8; 8][..]);
    assert!(opaque.is_err());
}

#[test]
fn directory_onto_a_lower_file_is_refused() {
    let fx = Fx::new();
    write(fx.ctx.path(), "dir/x", "X");
    write(fx.lower.path(), "etc/passwd", "root");
    let err = fx.run(&req(&["dir"], "/etc/passwd")).unwrap_err();
    assert!(
        matches!(err, FileOpError::CannotCopyToNonDirectory { .. }),
        "{err}"
    );
}

#[test]
fn symlinks_never_reach_the_host() {
    let fx = Fx::new();
    let host = TempDir::new().unwrap();
    write(host.path(), "secret", "S");
    symlink(host.path(), fx.ctx.path().join("out_abs")).unwrap();
    symlink("../../../../../../..", fx.ctx.path().join("out_rel")).unwrap();
    let err = fx.run(&req(&["out_abs/secret"], "/x/")).unwrap_err();
    assert!(matches!(err, FileOpError::SourceNotFound { .. }), "{err}");
    let via_rel = format!("out_rel{}/secret", host.path().display());
    assert!(fx.run(&req(&[&via_rel], "/x/")).is_err());
    // A destination symlink climbing out lands inside the upper directory.
    write(fx.ctx.path(), "a.txt", "A");
    symlink(
        "../../../../../../tmp/kiln-escape",
        fx.lower.path().join("d"),
    )
    .unwrap();
    fx.run(&req(&["a.txt"], "/d/")).unwrap();
    assert_eq!(fx.read("tmp/kiln-escape/a.txt"), "A");
    assert!(!Path::new("/tmp/kiln-escape").exists());
}

#[test]
fn a_large_directory_is_copied_whole_with_each_files_metadata() {
    // Enough plain files in one directory to be copied on several threads, mixed with a
    // hard-linked pair, a symlink, a subdirectory and an excluded file, which are not.
    let fx = Fx::new();
    let dir = fx.ctx.path().join("big");
    fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..300 {
        let p = dir.join(format!("f{i:03}"));
        fs::write(&p, format!("content {i}").repeat(i % 7 + 1)).unwrap();
        fs::set_permissions(
            &p,
            fs::Permissions::from_mode(0o600 + (i as u32 % 3) * 0o11),
        )
        .unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i as u64);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    fs::hard_link(dir.join("f000"), dir.join("link-to-f000")).unwrap();
    symlink("f001", dir.join("sym")).unwrap();
    write(&dir, "sub/inner", "inner");
    write(&dir, "skip.log", "excluded");
    let mut r = req(&["big"], "/dst/");
    r.chown = Some((1000, 1000));
    r.excludes = vec!["*.log".into()];
    let stats = fx.run(&r).unwrap();
    assert_eq!(
        stats.files,
        299 + 1 + 1,
        "299 plain, one of the linked pair, sub/inner"
    );
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.symlinks, 1);
    for i in 0..300 {
        let rel = format!("dst/f{i:03}");
        assert_eq!(fx.read(&rel), format!("content {i}").repeat(i % 7 + 1));
        let m = fs::symlink_metadata(fx.up(&rel)).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600 + (i as u32 % 3) * 0o11, "{rel}");
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "{rel}");
        assert_eq!(m.mtime(), 1_000_000 + i as i64, "{rel}");
    }
    assert_eq!(
        fs::metadata(fx.up("dst/f000")).unwrap().ino(),
        fs::metadata(fx.up("dst/link-to-f000")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(fx.up("dst/sym")).unwrap().to_str(),
        Some("f001")
    );
    assert_eq!(fx.read("dst/sub/inner"), "inner");
    assert!(!fx.up("dst/skip.log").exists());
}

/// Gives the file at `p` capabilities (needs root).
fn set_cap(p: &Path) {
    // VFS_CAP_REVISION_2 with CAP_NET_BIND_SERVICE permitted and effective.
    let cap: [u8; 20] = [0, 0, 0, 2, 0, 4, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let file = fs::File::open(p).unwrap();
    rustix::fs::fsetxattr(
        &file,
        "security.capability",
        &cap,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

/// File hashes remembered in memory, as the store's are by a build.
#[derive(Default)]
struct Hashes(std::sync::Mutex<std::collections::HashMap<FileKey, FileHash>>);

impl FileHashCache for Hashes {
    fn get(&self, key: &FileKey) -> Option<FileHash> {
        self.0.lock().unwrap().get(key).copied()
    }
    fn put(&self, key: FileKey, hash: FileHash) {
        self.0.lock().unwrap().insert(key, hash);
    }
}

/// The identity of the file at `p`, as the file-hash cache keys it.
fn key_of(p: &Path) -> FileKey {
    let m = fs::symlink_metadata(p).unwrap();
    FileKey([
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.ctime() as u64,
        m.ctime_nsec() as u64,
    ])
}

/// What a COPY should list for a file of content `bytes` copied from `source`.
fn content_of(source: &Path, bytes: &[u8]) -> Option<KnownContent> {
    use sha1::Digest as _;
    Some(KnownContent {
        source: key_of(source),
        sha256: Digest::of(bytes),
        sha1: sha1::Sha1::digest(bytes).into(),
        size: bytes.len() as u64,
    })
}

#[test]
fn a_copy_lists_the_known_digest_of_each_file_it_wrote() {
    let fx = Fx::new();
    // Enough files in one directory for the parallel copy, and a hard-linked pair.
    for i in 0..80 {
        write(
            fx.ctx.path(),
            &format!("src/f{i:02}.txt"),
            &format!("file {i}"),
        );
    }
    write(fx.ctx.path(), "src/linked", "one inode, two names");
    fs::hard_link(
        fx.ctx.path().join("src/linked"),
        fx.ctx.path().join("src/linked2"),
    )
    .unwrap();
    // A file with capabilities: the cache key hashes them too, the listed SHA-256 is the
    // content's alone.
    let with_cap = rustix::process::geteuid().is_root();
    if with_cap {
        set_cap(&fx.ctx.path().join("src/f03.txt"));
    } else {
        println!("not checked: a file with capabilities (needs root to set them)");
    }
    let src = LayerView::plain(fx.ctx.path());
    let dest = LayerView::new(vec![fx.lower.path().to_owned()]);
    // The cache key's walk learns every file's digest; then one file changes (a new identity
    // the cache does not know).
    let hashes = Hashes::default();
    content_digest_cached(&src, &[".".to_owned()], Some(&hashes)).unwrap();
    assert_eq!(hashes.0.lock().unwrap().len(), 81);
    let keyed_apart = hashes
        .0
        .lock()
        .unwrap()
        .values()
        .filter(|h| h.key != h.sha256)
        .count();
    assert_eq!(
        keyed_apart,
        usize::from(with_cap),
        "only a file with capabilities"
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::remove_file(fx.ctx.path().join("src/f07.txt")).unwrap();
    write(fx.ctx.path(), "src/f07.txt", "changed");
    let src = LayerView::plain(fx.ctx.path());

    let stats = copy_knowing(
        &req(&["."], "/ctx/"),
        &src,
        &dest,
        fx.upper.path(),
        Some(&hashes),
    )
    .unwrap();
    assert_eq!(
        stats.known.len(),
        82,
        "every regular file written is listed"
    );
    let mut known = std::collections::BTreeMap::new();
    for (path, d) in &stats.known {
        known.insert(path.clone(), *d);
    }
    for (path, d) in &known {
        let bytes = fs::read(fx.upper.path().join(path.trim_start_matches('/'))).unwrap();
        match path.as_str() {
            // Not known: the changed file, and the second name of a hard link (a link, not a
            // copy).
            "/ctx/src/f07.txt" | "/ctx/src/linked2" => assert_eq!(*d, None, "{path}"),
            _ => {
                let source = fx.ctx.path().join(path.trim_start_matches("/ctx/"));
                assert_eq!(*d, content_of(&source, &bytes), "{path}")
            }
        }
    }
    assert!(known.contains_key("/ctx/src/f00.txt"));
    assert!(known.contains_key("/ctx/src/linked"));

    // Without a cache nothing is listed; nor for ADD, whose archives it does not follow.
    let fx2 = Fx::new();
    write(fx2.ctx.path(), "a.txt", "A");
    assert!(fx2.run(&req(&["a.txt"], "/x/")).unwrap().known.is_empty());
    let src2 = LayerView::plain(fx2.ctx.path());
    content_digest_cached(&src2, &[".".to_owned()], Some(&hashes)).unwrap();
    let mut add = req(&["a.txt"], "/y/");
    add.unpack = true;
    let dest2 = LayerView::new(vec![fx2.lower.path().to_owned()]);
    let stats = copy_knowing(&add, &src2, &dest2, fx2.upper.path(), Some(&hashes)).unwrap();
    assert!(stats.known.is_empty());
    let stats = copy_knowing(
        &req(&["a.txt"], "/z/"),
        &src2,
        &dest2,
        fx2.upper.path(),
        Some(&hashes),
    )
    .unwrap();
    assert_eq!(
        stats.known,
        [(
            "/z/a.txt".to_owned(),
            content_of(&fx2.ctx.path().join("a.txt"), b"A")
        )]
    );
}

/// A regular file's inode, mode, owner, mtime and content.
type FileState = (u64, u32, (u32, u32), (i64, i64), Vec<u8>);

/// Every regular file under `root` by path.
fn files_of(root: &Path) -> std::collections::BTreeMap<String, FileState> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                let attrs = (
                    m.ino(),
                    m.mode() & 0o7777,
                    (m.uid(), m.gid()),
                    (m.mtime(), m.mtime_nsec()),
                    fs::read(&p).unwrap(),
                );
                out.insert(rel, attrs);
            }
        }
    }
    out
}

#[test]
fn a_copy_hard_links_only_what_an_earlier_layer_holds_exactly_as_it_would_write_it() {
    let fx = Fx::new();
    for i in 0..80 {
        write(
            fx.ctx.path(),
            &format!("src/d{}/f{i:02}.txt", i % 4),
            &format!("file {i}"),
        );
    }
    // A file with capabilities is always copied.
    let with_cap = rustix::process::geteuid().is_root();
    if with_cap {
        set_cap(&fx.ctx.path().join("src/d2/f06.txt"));
    } else {
        println!("not checked: a file with capabilities (needs root to set them)");
    }
    let dest = LayerView::new(vec![fx.lower.path().to_owned()]);
    let hashes = Hashes::default();
    let src = LayerView::plain(fx.ctx.path());
    content_digest_cached(&src, &[".".to_owned()], Some(&hashes)).unwrap();
    let earlier = TempDir::new().unwrap();
    let first = copy_knowing(
        &req(&["."], "/ctx/"),
        &src,
        &dest,
        earlier.path(),
        Some(&hashes),
    )
    .unwrap();
    assert_eq!(first.linked, 0);
    let record: std::collections::HashMap<String, FileKey> = first
        .known
        .iter()
        .map(|(p, k)| (p.clone(), k.unwrap().source))
        .collect();
    assert_eq!(record.len(), 80);

    // Since: one file's content changed, one file's mode changed (same content), and the
    // earlier layer's copy of a third no longer has the time a copy gives it.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(fx.ctx.path().join("src/d3/f07.txt"), "changed").unwrap();
    fs::set_permissions(
        fx.ctx.path().join("src/d0/f08.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let touched = earlier.path().join("ctx/src/d1/f09.txt");
    fs::File::options()
        .write(true)
        .open(&touched)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    // An unknown file, and a source whose identity is not in the cache (never hashed).
    write(fx.ctx.path(), "src/d2/new.txt", "new");
    let src = LayerView::plain(fx.ctx.path());
    content_digest_cached(
        &src,
        &[
            "src/d0".to_owned(),
            "src/d1".to_owned(),
            "src/d3".to_owned(),
        ],
        Some(&hashes),
    )
    .unwrap();

    let reuse = Reuse::open(earlier.path(), record.clone()).unwrap();
    let second = copy_reusing(
        &req(&["."], "/ctx/"),
        &src,
        &dest,
        fx.upper.path(),
        Some(&hashes),
        Some(&reuse),
    )
    .unwrap();
    // Not linked: f07 (content), f08 (mode), f09 (the earlier copy's time), new.txt (in
    // neither the record nor the cache).
    let now = files_of(fx.upper.path());
    let before = files_of(earlier.path());
    // The same files as a copy without reuse, bit for bit and attribute for attribute.
    let plain = TempDir::new().unwrap();
    copy(&req(&["."], "/ctx/"), &src, &dest, plain.path()).unwrap();
    let fresh = files_of(plain.path());
    assert_eq!(now.len(), 81);
    for (path, (ino, mode, owner, mtime, bytes)) in &now {
        let (_, f_mode, f_owner, f_mtime, f_bytes) = &fresh[path];
        assert_eq!(
            (mode, owner, mtime, bytes),
            (f_mode, f_owner, f_mtime, f_bytes),
            "{path}"
        );
        let shared = before.get(path).is_some_and(|b| b.0 == *ino);
        let copied = matches!(
            path.as_str(),
            "ctx/src/d3/f07.txt"
                | "ctx/src/d0/f08.txt"
                | "ctx/src/d1/f09.txt"
                | "ctx/src/d2/new.txt"
        ) || (with_cap && path == "ctx/src/d2/f06.txt");
        let expect_shared = !copied;
        assert_eq!(shared, expect_shared, "{path}");
    }
    assert_eq!(second.linked, 77 - u64::from(with_cap));
    assert_eq!(second.files, 81);
    // What a copy lists for the SBOM is the same with or without links.
    let known: std::collections::BTreeMap<_, _> = second.known.iter().cloned().collect();
    assert_eq!(
        known["/ctx/src/d2/f02.txt"],
        content_of(&fx.ctx.path().join("src/d2/f02.txt"), b"file 2")
    );

    // Another --chmod: nothing is what it would write.
    let mut chmod = req(&["."], "/ctx/");
    chmod.chmod = Some(0o640);
    let third = TempDir::new().unwrap();
    let stats = copy_reusing(
        &chmod,
        &src,
        &dest,
        third.path(),
        Some(&hashes),
        Some(&reuse),
    )
    .unwrap();
    assert_eq!(stats.linked, 0);
    assert!(files_of(third.path()).values().all(|f| f.1 == 0o640));
    // Without the file-hash cache's word on the identities, nothing is linked either.
    let fourth = TempDir::new().unwrap();
    let stats = copy_reusing(
        &req(&["."], "/ctx/"),
        &src,
        &dest,
        fourth.path(),
        Some(&Hashes::default()),
        Some(&reuse),
    )
    .unwrap();
    assert_eq!(stats.linked, 0);
}

#[test]
fn a_wide_and_deep_tree_keeps_every_directorys_and_files_metadata() {
    // More files and directories than the copy threads take in one batch (files wait for
    // them across directories), directories holding only directories, and two sources
    // writing the same paths: the later source's files win, as if copied one by one.
    let fx = Fx::new();
    let set_mtime = |p: &Path, secs: u64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let f = fs::File::open(p).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(t)).unwrap();
    };
    let a = fx.ctx.path().join("a");
    let mut dirs = Vec::new();
    for d in 0..300 {
        // d/NNN/deep/er: the middle directories hold no file.
        let dir = a.join(format!("d{d:03}/deep/er"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..(d % 40) {
            let p = dir.join(format!("f{f:02}"));
            fs::write(&p, format!("{d}/{f}")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o640 + (f as u32 % 2))).unwrap();
            set_mtime(&p, 2_000_000 + f as u64);
        }
        dirs.push(format!("d{d:03}"));
        dirs.push(format!("d{d:03}/deep"));
        dirs.push(format!("d{d:03}/deep/er"));
    }
    write(&a, "same", "from a");
    let b = fx.ctx.path().join("b");
    write(&b, "same", "from b");
    write(&b, "d007/deep/er/f00", "from b too");
    // Directory metadata last: creating entries changes a directory's time.
    for (i, d) in dirs.iter().enumerate() {
        let p = a.join(d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700 + (i as u32 % 3) * 0o5)).unwrap();
        set_mtime(&p, 3_000_000 + i as u64);
    }
    let stats = fx.run(&req(&["a", "b"], "/dst/")).unwrap();
    let files: u64 = (0..300).map(|d| d % 40).sum();
    assert_eq!(stats.files, files + 1 + 2, "a's files, a/same, b's two");
    assert!(files > 4096, "{files} files fit in one batch");
    for (i, d) in dirs.iter().enumerate() {
        if d.starts_with("d007") {
            continue; // b has them too: they take b's metadata, copied after a's
        }
        let m = fs::symlink_metadata(fx.up(&format!("dst/{d}"))).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o700 + (i as u32 % 3) * 0o5, "{d}");
        assert_eq!(m.mtime(), 3_000_000 + i as i64, "{d}: time");
    }
    for d in 0..300 {
        for f in 0..(d % 40) {
            let rel = format!("dst/d{d:03}/deep/er/f{f:02}");
            let want = if d == 7 && f == 0 {
                "from b too".to_owned()
            } else {
                format!("{d}/{f}")
            };
            assert_eq!(fx.read(&rel), want, "{rel}");
            let m = fs::symlink_metadata(fx.up(&rel)).unwrap();
            if d != 7 || f != 0 {
                assert_eq!(m.mode() & 0o7777, 0o640 + (f as u32 % 2), "{rel}");
                assert_eq!(m.mtime(), 2_000_000 + f as i64, "{rel}");
            }
        }
    }
    assert_eq!(fx.read("dst/same"), "from b");
}
