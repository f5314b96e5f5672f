//! The SBOM catalog of a file system whose rpm database (`rpmdb.sqlite`) is the input: the
//! SQLite table reader and the rpm header parser under it, on every input. Beyond "no panic",
//! asserts that what it lists comes from that database.

#![no_main]

use std::io;

use kiln_attest::sbom::{EntryKind, FileEntry, FileTree, PackageKind, catalog};
use libfuzzer_sys::fuzz_target;

const DB: &str = "/usr/lib/sysimage/rpm/rpmdb.sqlite";
const OS_RELEASE: &[u8] = b"ID=fedora\nVERSION_ID=40\n";

/// A file system of two files: an os-release and the database.
struct Tree<'a>(&'a [u8]);

impl FileTree for Tree<'_> {
    fn entries(&self) -> io::Result<Vec<FileEntry>> {
        let dir = |path: &str| FileEntry {
            path: path.to_owned(),
            kind: EntryKind::Directory,
            mode: 0o755,
            size: 0,
        };
        let file = |path: &str, size: usize| FileEntry {
            path: path.to_owned(),
            kind: EntryKind::Regular,
            mode: 0o644,
            size: size as u64,
        };
        Ok(vec![
            dir("/etc"),
            file("/etc/os-release", OS_RELEASE.len()),
            dir("/usr"),
            dir("/usr/lib"),
            dir("/usr/lib/sysimage"),
            dir("/usr/lib/sysimage/rpm"),
            file(DB, self.0.len()),
        ])
    }
    fn open(&self, path: &str) -> io::Result<Box<dyn io::Read + '_>> {
        match path {
            DB => Ok(Box::new(self.0)),
            "/etc/os-release" => Ok(Box::new(OS_RELEASE)),
            _ => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let sbom = catalog(&Tree(data)).expect("a malformed database is a note, not an error");
    for p in &sbom.packages {
        assert_eq!(p.kind, PackageKind::Rpm);
        assert_eq!(p.found_in, DB);
        assert!(p.purl.starts_with("pkg:rpm/fedora/"), "{}", p.purl);
        assert!(!p.name.is_empty() && !p.version.is_empty());
        // The tree has no file a package could own.
        assert!(p.files.is_empty());
    }
});
