//! [`FileTree`] over a plain directory (tests, `kiln sbom DIR`), never following a symlink.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

use super::{EntryKind, FileEntry, FileTree};

/// The deepest directory nesting [`DirTree::entries`] walks; deeper trees are an error
/// rather than a stack overflow.
const MAX_DEPTH: usize = 256;
/// How every directory below the root is opened: a symlink is an error (`ELOOP`/`ENOTDIR`).
const DIR_NOFOLLOW: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A [`FileTree`] over a directory on the host. Listing and opening both walk from the root
/// one directory at a time with `openat(O_NOFOLLOW)` (listing `lstat`s entries relative to
/// the open directory), so a symlink anywhere in a path — planted by whoever wrote the
/// directory, even while kiln reads it — fails the operation instead of being followed.
#[derive(Debug, Clone)]
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    /// A tree rooted at `root` (which itself may be reached through symlinks: it is trusted).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Lists the directory open at `dir` (reached with `O_NOFOLLOW` at every step), `lstat`ing
    /// each entry relative to it, and descends into subdirectories the same way: a directory
    /// swapped for a symlink while the walk runs makes the walk fail, not follow it.
    fn walk(dir: &OwnedFd, prefix: &str, depth: usize, out: &mut Vec<FileEntry>) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "{prefix}: deeper than {MAX_DEPTH} directories"
            )));
        }
        let mut names = Vec::new();
        let mut reader = Dir::read_from(dir)?;
        while let Some(entry) = reader.read() {
            let name = entry?.file_name().to_owned();
            if name.as_bytes() != b"." && name.as_bytes() != b".." {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let Ok(name_str) = name.to_str() else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{prefix}/{}: name is not UTF-8", name.to_string_lossy()),
                ));
            };
            let path = format!("{prefix}/{name_str}");
            let stat = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
            let kind = match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => EntryKind::Regular,
                FileType::Directory => EntryKind::Directory,
                FileType::Symlink => EntryKind::Symlink,
                // fifo, socket, block or character device
                _ => EntryKind::Other,
            };
            let size = if kind == EntryKind::Regular {
                u64::try_from(stat.st_size).unwrap_or(0)
            } else {
                0
            };
            out.push(FileEntry {
                path: path.clone(),
                kind,
                mode: stat.st_mode & 0o7777,
                size,
            });
            if kind == EntryKind::Directory {
                let child = rustix::fs::openat(dir, name.as_c_str(), DIR_NOFOLLOW, Mode::empty())?;
                Self::walk(&child, &path, depth + 1, out)?;
            }
        }
        Ok(())
    }

    /// The root directory, opened (the root itself is trusted: it may be reached through
    /// symlinks on the host).
    fn open_root(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }
}

impl DirTree {
    /// Opens the directory holding `path`, one component at a time with `O_NOFOLLOW`, and
    /// returns it with the last component.
    fn parent_dir<'p>(&self, path: &'p str) -> io::Result<(OwnedFd, &'p str)> {
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        if components.iter().any(|c| *c == "." || *c == "..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: not a normalised absolute path"),
            ));
        }
        let Some((last, parents)) = components.split_last() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?}: empty path"),
            ));
        };
        let mut fd = self.open_root()?;
        for comp in parents {
            fd = rustix::fs::openat(&fd, *comp, DIR_NOFOLLOW, Mode::empty())?;
        }
        Ok((fd, last))
    }
}

impl FileTree for DirTree {
    fn entries(&self) -> io::Result<Vec<FileEntry>> {
        let mut out = Vec::new();
        Self::walk(&self.open_root()?, "", 0, &mut out)?;
        // Sorted per directory is not sorted by full path (`a/b` vs `a.b`): sort the whole.
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn open(&self, path: &str) -> io::Result<Box<dyn io::Read + '_>> {
        let (fd, last) = self.parent_dir(path)?;
        // NONBLOCK so that a fifo does not hang the open; it is refused just below.
        let file = rustix::fs::openat(
            &fd,
            last,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&file)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: not a regular file"),
            ));
        }
        Ok(Box::new(File::from(file)))
    }

    fn read_link(&self, path: &str) -> io::Result<String> {
        let (fd, last) = self.parent_dir(path)?;
        let target = rustix::fs::readlinkat(&fd, last, Vec::new())?;
        target.into_string().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path}: link target is not UTF-8"),
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn symlinks_are_listed_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host secret").unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/real"), b"inside").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("etc/link"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        let tree = DirTree::new(dir.path());
        let entries = tree.entries().unwrap();
        let kinds: Vec<(&str, EntryKind)> =
            entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("/etc", EntryKind::Directory),
                ("/etc/link", EntryKind::Symlink),
                ("/etc/real", EntryKind::Regular),
                ("/out", EntryKind::Symlink),
            ]
        );
        let mut s = String::new();
        tree.open("/etc/real")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "inside");
        assert!(tree.open("/etc/link").is_err(), "final symlink followed");
        assert!(
            tree.open("/out/secret").is_err(),
            "directory symlink followed"
        );
        assert!(tree.open("/etc/../etc/real").is_err());
        assert!(tree.open("/etc").is_err());
        assert_eq!(
            tree.read_link("/out").unwrap(),
            outside.path().to_str().unwrap()
        );
        assert!(tree.read_link("/etc/real").is_err());
        assert_eq!(
            tree.open("/etc/missing").err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
    }
}
