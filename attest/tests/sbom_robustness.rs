//! Hostile or broken file systems: the catalogers skip and note, never panic, never follow a
//! symlink out of the tree, and respect their read limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use kiln_attest::sbom::{DirTree, EntryKind, FileEntry, FileTree, SbomError, catalog, limits};

/// Deterministic pseudo-random bytes (xorshift), no dependency.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

const DATABASES: &[&str] = &[
    "/etc/os-release",
    "/var/lib/dpkg/status",
    "/var/lib/dpkg/info/a.list",
    "/usr/share/doc/a/copyright",
    "/lib/apk/db/installed",
    "/usr/lib/python3/site-packages/a-1.dist-info/METADATA",
    "/usr/lib/python3/site-packages/a-1.dist-info/RECORD",
    "/usr/lib/python3/site-packages/b.egg-info",
    "/app/node_modules/a/package.json",
    "/app/package-lock.json",
    "/src/Cargo.lock",
];

fn write(root: &Path, path: &str, bytes: &[u8]) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

#[test]
fn garbage_databases_never_panic() {
    for seed in 1..40u64 {
        let dir = tempfile::tempdir().unwrap();
        for (i, path) in DATABASES.iter().enumerate() {
            let mut bytes = noise(seed * 100 + i as u64, 2048);
            // Half the runs: garbage that looks like the format (field names, separators).
            if seed % 2 == 0 {
                let words: &[&[u8]] = &[
                    b"Package: ",
                    b"Status: install ok installed\n",
                    b"Version:",
                    b"\n\n",
                    b"P:",
                    b"V:",
                    b"R:",
                    b"F:",
                    b"[[package]]\n",
                    b"name = \"",
                    b"{\"packages\":{\"node_modules/x\":",
                    b"Name: ",
                    b"\"version\":",
                ];
                for (j, w) in words.iter().enumerate() {
                    let at = (j * 131 + usize::try_from(seed).unwrap()) % bytes.len();
                    bytes.splice(at..at, w.iter().copied());
                }
            }
            write(dir.path(), path, &bytes);
        }
        let elf = [b"\x7fELF".as_slice(), &noise(seed, 4096)].concat();
        write(dir.path(), "/bin/x", &elf);
        std::fs::set_permissions(
            dir.path().join("bin/x"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        catalog(&DirTree::new(dir.path())).unwrap();
    }
}

#[test]
fn a_symlinked_database_is_noted_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("status"),
        "Package: leaked\nStatus: install ok installed\nVersion: 1\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("var/lib/dpkg")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("status"),
        dir.path().join("var/lib/dpkg/status"),
    )
    .unwrap();
    let sbom = catalog(&DirTree::new(dir.path())).unwrap();
    assert!(sbom.packages.is_empty(), "{:?}", sbom.packages);
    assert_eq!(
        sbom.notes,
        ["/var/lib/dpkg/status: skipped, a Symlink and not a regular file"]
    );
}

/// A tree that claims sizes it does not have, to exercise the limits cheaply.
struct Claimed(BTreeMap<String, (u64, Vec<u8>)>);

impl FileTree for Claimed {
    fn entries(&self) -> io::Result<Vec<FileEntry>> {
        Ok(self
            .0
            .iter()
            .map(|(p, (size, _))| FileEntry {
                path: p.clone(),
                kind: EntryKind::Regular,
                mode: 0o644,
                size: *size,
            })
            .collect())
    }
    fn open(&self, path: &str) -> io::Result<Box<dyn io::Read + '_>> {
        match self.0.get(path) {
            Some((_, bytes)) => Ok(Box::new(bytes.as_slice())),
            None => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
        }
    }
}

#[test]
fn an_oversized_database_is_skipped_with_a_note() {
    let status = b"Package: a\nStatus: install ok installed\nVersion: 1\n".to_vec();
    let tree = Claimed(BTreeMap::from([(
        "/var/lib/dpkg/status".to_owned(),
        (limits::DATABASE_BYTES + 1, status),
    )]));
    let sbom = catalog(&tree).unwrap();
    assert!(sbom.packages.is_empty());
    assert_eq!(sbom.notes.len(), 1);
    assert!(
        sbom.notes[0].contains("over the 67108864-byte limit"),
        "{:?}",
        sbom.notes
    );
}

/// A tree whose listed file cannot be opened.
struct Unreadable;

impl FileTree for Unreadable {
    fn entries(&self) -> io::Result<Vec<FileEntry>> {
        Ok(vec![FileEntry {
            path: "/etc/shadow".into(),
            kind: EntryKind::Regular,
            mode: 0o600,
            size: 1,
        }])
    }
    fn open(&self, _: &str) -> io::Result<Box<dyn io::Read + '_>> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
}

#[test]
fn an_unreadable_file_is_a_typed_error() {
    match catalog(&Unreadable) {
        Err(SbomError::Read { path, source }) => {
            assert_eq!(path, "/etc/shadow");
            assert_eq!(source.kind(), io::ErrorKind::PermissionDenied);
        }
        other => panic!("expected SbomError::Read, got {other:?}"),
    }
}

#[test]
fn symlink_loops_and_escapes_in_listed_paths_stay_inside_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("f"), "host").unwrap();
    write(
        dir.path(),
        "/var/lib/dpkg/status",
        b"Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n",
    );
    write(
        dir.path(),
        "/var/lib/dpkg/info/a.list",
        b"/loop/x\n/up/f\n/abs/f\n/in/f\n",
    );
    write(dir.path(), "/real/f", b"inside");
    std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
    std::os::unix::fs::symlink("../../../..", dir.path().join("up")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("abs")).unwrap();
    std::os::unix::fs::symlink("real", dir.path().join("in")).unwrap();
    let sbom = catalog(&DirTree::new(dir.path())).unwrap();
    assert_eq!(sbom.packages.len(), 1);
    assert_eq!(sbom.packages[0].files, ["/real/f"]);
}
