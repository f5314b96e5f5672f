//! Read access to an image layout directory or an uncompressed tar of one (or of a
//! `docker save` archive): files by name, symlinks inside the archive resolved.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{ImportError, MAX_JSON_SIZE, Result, blob_path};
use crate::oci::blob::{BlobError, VerifiedReader};
use crate::oci::compress::{self, Compression};
use crate::oci::types::Descriptor;

/// Read access to a layout directory or an (uncompressed) tar.
pub(super) enum Layout {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        file: File,
        /// name -> (data offset, size), symlinks resolved.
        entries: HashMap<String, (u64, u64)>,
    },
}

impl Layout {
    pub(super) fn load(path: &Path) -> Result<Self> {
        let rerr = |source| ImportError::Read {
            path: path.to_owned(),
            source,
        };
        let md = std::fs::metadata(path).map_err(rerr)?;
        if md.is_dir() {
            return Ok(Self::Dir(path.to_owned()));
        }
        let mut file = File::open(path).map_err(rerr)?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(rerr)?;
        if compress::detect(&magic[..n]) != Compression::Uncompressed {
            return Err(ImportError::Format {
                input: path.to_owned(),
                reason: "compressed archive: decompress it first".into(),
            });
        }
        file.seek(SeekFrom::Start(0)).map_err(rerr)?;
        let mut entries = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        {
            let mut archive = tar::Archive::new(&file);
            for e in archive.entries_with_seek().map_err(rerr)? {
                let e = e.map_err(rerr)?;
                let name = normalize(&String::from_utf8_lossy(&e.path_bytes()));
                let kind = e.header().entry_type();
                if kind.is_file() {
                    entries.insert(name, (e.raw_file_position(), e.size()));
                } else if kind.is_symlink()
                    && let Some(target) = e.link_name_bytes()
                {
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    links.insert(name.clone(), join(dir, &String::from_utf8_lossy(&target)));
                }
            }
        }
        for (name, first) in &links {
            let mut target = first.clone();
            for _ in 0..8 {
                if let Some(loc) = entries.get(&target).copied() {
                    entries.insert(name.clone(), loc);
                    break;
                }
                match links.get(&target) {
                    Some(next) => target = next.clone(),
                    None => break,
                }
            }
        }
        Ok(Self::Tar {
            path: path.to_owned(),
            file,
            entries,
        })
    }

    fn input(&self) -> &Path {
        match self {
            Self::Dir(p) | Self::Tar { path: p, .. } => p,
        }
    }

    pub(super) fn format(&self, reason: String) -> ImportError {
        ImportError::Format {
            input: self.input().to_owned(),
            reason,
        }
    }

    pub(super) fn missing(&self, path: &str) -> ImportError {
        ImportError::Missing {
            path: path.to_owned(),
            input: self.input().to_owned(),
        }
    }

    pub(super) fn read_err(&self, source: io::Error) -> ImportError {
        ImportError::Read {
            path: self.input().to_owned(),
            source,
        }
    }

    pub(super) fn size(&self, name: &str) -> Option<u64> {
        match self {
            Self::Dir(root) => {
                let md = std::fs::symlink_metadata(root.join(normalize(name))).ok()?;
                md.is_file().then_some(md.len())
            }
            Self::Tar { entries, .. } => entries.get(&normalize(name)).map(|e| e.1),
        }
    }

    pub(super) fn open(&self, name: &str) -> Result<Box<dyn Read + Send + '_>> {
        let name = normalize(name);
        if name.split('/').any(|c| c == "..") {
            return Err(self.format(format!("path {name:?} leaves the layout")));
        }
        match self {
            Self::Dir(root) => {
                // Names come from the (untrusted) layout's JSON: resolve them beneath the
                // layout directory with no symlink anywhere on the way, and read only regular
                // files (a fifo or a device must not hang or flood the import).
                let dir = rustix::fs::open(
                    root,
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| self.read_err(e.into()))?;
                let fd = rustix::fs::openat2(
                    &dir,
                    name.as_str(),
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::NONBLOCK
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                    rustix::fs::ResolveFlags::BENEATH
                        | rustix::fs::ResolveFlags::NO_SYMLINKS
                        | rustix::fs::ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(|e| match e {
                    rustix::io::Errno::NOENT => self.missing(&name),
                    e => self.read_err(e.into()),
                })?;
                let st = rustix::fs::fstat(&fd).map_err(|e| self.read_err(e.into()))?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    != rustix::fs::FileType::RegularFile
                {
                    return Err(self.format(format!("{name:?} is not a regular file")));
                }
                Ok(Box::new(File::from(fd)))
            }
            Self::Tar { file, entries, .. } => {
                let (offset, size) = *entries.get(&name).ok_or_else(|| self.missing(&name))?;
                let mut f = file.try_clone().map_err(|e| self.read_err(e))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| self.read_err(e))?;
                Ok(Box::new(f.take(size)))
            }
        }
    }

    pub(super) fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open(name)?
            .take(MAX_JSON_SIZE + 1)
            .read_to_end(&mut out)
            .map_err(|e| self.read_err(e))?;
        if out.len() as u64 > MAX_JSON_SIZE {
            return Err(self.format(format!("{name} is larger than {MAX_JSON_SIZE} bytes")));
        }
        Ok(out)
    }

    /// Reads a small blob by descriptor, verifying digest and size.
    pub(super) fn read_blob_small(&self, d: &Descriptor) -> Result<Vec<u8>> {
        let path = blob_path(&d.digest);
        if d.size > MAX_JSON_SIZE {
            return Err(self.format(format!("{path} is larger than {MAX_JSON_SIZE} bytes")));
        }
        let mut out = Vec::new();
        VerifiedReader::new(self.open(&path)?, d.digest, Some(d.size))
            .read_to_end(&mut out)
            .map_err(|e| match BlobError::from_io(&e) {
                Some(source) => ImportError::Blob {
                    path: path.clone(),
                    source,
                },
                None => self.read_err(e),
            })?;
        Ok(out)
    }
}

/// `./a//b/` -> `a/b`.
fn normalize(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Resolves a symlink target relative to `dir` inside the archive (`..` clamped at the root).
fn join(dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|c| !c.is_empty()).collect()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_symlinks_resolve_inside_the_archive() {
        assert_eq!(join("abc", "../def/layer.tar"), "def/layer.tar");
        assert_eq!(join("abc", "../../../x"), "x");
        assert_eq!(normalize("./a//b/"), "a/b");
    }
}
