//! Blob access shared by exporters and importers: the [`BlobSource`] seam, a reader that
//! verifies digest and size as it is read, and atomic file creation.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};

/// Where exporters read blobs from (the content store implements this).
pub trait BlobSource {
    /// Opens the blob named `digest`. The caller verifies what it reads.
    fn open_blob(&self, digest: &Digest) -> io::Result<Box<dyn Read + Send>>;
}

/// A blob's content did not match its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The bytes hash to something else.
    #[error("blob {expected} has digest {actual}")]
    Digest {
        /// The name the blob was read under.
        expected: Digest,
        /// What its content hashes to.
        actual: Digest,
    },
    /// The blob is shorter or longer than its descriptor says.
    #[error("blob {digest} is {actual}{more} bytes, expected {expected}", more = if *.actual > *.expected { "+" } else { "" })]
    Size {
        /// The blob.
        digest: Digest,
        /// The size its descriptor declares.
        expected: u64,
        /// Bytes actually read (stops counting one past `expected`).
        actual: u64,
    },
}

impl BlobError {
    /// Extracts a `BlobError` carried inside an `io::Error` by [`VerifiedReader`].
    pub fn from_io(e: &io::Error) -> Option<Self> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<BlobError>())
            .cloned()
    }
}

/// Reads a blob and verifies it: the final read returns an error instead of end-of-file when
/// the digest or size is wrong, so a consumer that commits only after a successful read to
/// end-of-file never commits bad content.
pub struct VerifiedReader<R> {
    inner: R,
    hasher: Hasher,
    expected: Digest,
    size: Option<u64>,
    verified: bool,
}

impl<R: Read> VerifiedReader<R> {
    /// Verifies `inner` against `expected` and, when known, `size`.
    pub fn new(inner: R, expected: Digest, size: Option<u64>) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
            expected,
            size,
            verified: false,
        }
    }

    /// True once end-of-file was reached and the content matched.
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    fn fail(&self, e: BlobError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        let read = self.hasher.len();
        if let Some(size) = self.size
            && read > size
        {
            return Err(self.fail(BlobError::Size {
                digest: self.expected,
                expected: size,
                actual: read,
            }));
        }
        if n == 0 {
            if let Some(size) = self.size
                && read != size
            {
                return Err(self.fail(BlobError::Size {
                    digest: self.expected,
                    expected: size,
                    actual: read,
                }));
            }
            let actual = self.hasher.clone().finish();
            if actual != self.expected {
                return Err(self.fail(BlobError::Digest {
                    expected: self.expected,
                    actual,
                }));
            }
            self.verified = true;
        }
        Ok(n)
    }
}

/// A file written under a temporary name and renamed into place by [`AtomicFile::commit`];
/// dropped uncommitted, it is removed.
pub(crate) struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    /// Synced by [`AtomicFile::sync`] and not written since: `commit` need not sync again.
    synced: bool,
}

impl AtomicFile {
    pub(crate) fn create(dest: &Path) -> io::Result<Self> {
        let name = dest.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "destination has no file name")
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        // Unique per write: two outputs of one build may be written at once, even to one path.
        tmp_name.push(format!(
            ".kiln-tmp-{}-{}",
            std::process::id(),
            crate::store::content::random_hex()
        ));
        let tmp = dest.with_file_name(tmp_name);
        let _ = fs::remove_file(&tmp);
        let file = File::options().write(true).create_new(true).open(&tmp)?;
        Ok(Self {
            file: Some(file),
            tmp,
            dest: dest.to_owned(),
            synced: false,
        })
    }

    pub(crate) fn file(&mut self) -> io::Result<&mut File> {
        self.synced = false;
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("atomic file already committed"))
    }

    /// Makes what was written so far durable, still under the temporary name: a caller that
    /// must wait for something else before [`AtomicFile::commit`] syncs meanwhile, and the
    /// commit then only renames.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.as_ref() {
            f.sync_all()?;
            self.synced = true;
        }
        Ok(())
    }

    pub(crate) fn commit(mut self) -> io::Result<()> {
        if let Some(f) = self.file.take()
            && !self.synced
        {
            f.sync_all()?;
        }
        fs::rename(&self.tmp, &self.dest)?;
        if let Some(parent) = self.dest.parent() {
            let dir = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            File::open(dir)?.sync_all()?;
        }
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn verified_reader_errors_instead_of_eof_on_mismatch() {
        let good = Digest::of(b"hello");
        let mut out = Vec::new();
        let mut r = VerifiedReader::new(&b"hello"[..], good, Some(5));
        r.read_to_end(&mut out).unwrap();
        assert!(r.is_verified());

        let e = VerifiedReader::new(&b"hellO"[..], good, Some(5))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(matches!(
            BlobError::from_io(&e),
            Some(BlobError::Digest { .. })
        ));
        let e = VerifiedReader::new(&b"hello!"[..], good, Some(5))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(matches!(
            BlobError::from_io(&e),
            Some(BlobError::Size { .. })
        ));
        let e = VerifiedReader::new(&b"hell"[..], good, Some(5))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(matches!(
            BlobError::from_io(&e),
            Some(BlobError::Size { actual: 4, .. })
        ));
    }
}
