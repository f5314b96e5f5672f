//! Layer compression with one-pass hashing, and decompression by magic bytes.
//!
//! [`BlobWriter`] hashes the uncompressed stream (the layer's `diff_id`) and the compressed
//! stream (the blob digest and size) while writing, so a layer is read once. Settings are fixed
//! for reproducibility: gzip level 6 (Go's default, as BuildKit uses), header mtime 0, no file
//! name, OS byte 255 ("unknown", as Go writes it); zstd level 3, single-threaded, with the frame
//! checksum (deterministic). Compressed bytes still depend on the compressor implementation
//! (zlib-rs, libzstd 1.5.x): a compressor upgrade can change blob digests, never `diff_id`s.

use std::io::{self, Read, Write};

use flate2::write::GzEncoder;

use super::media;
use crate::digest::{Digest, Hasher};

/// gzip level used for every layer.
pub const GZIP_LEVEL: u32 = 6;
/// zstd level used for every layer.
pub const ZSTD_LEVEL: i32 = 3;
/// gzip OS header byte (255 = unknown, as Go's `compress/gzip` writes).
const GZIP_OS_UNKNOWN: u8 = 255;

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// gzip (`tar+gzip`), the most compatible.
    #[default]
    Gzip,
    /// zstd (`tar+zstd`).
    Zstd,
    /// No compression (`tar`).
    Uncompressed,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Gzip => media::OCI_LAYER_TAR_GZIP,
            Self::Zstd => media::OCI_LAYER_TAR_ZSTD,
            Self::Uncompressed => media::OCI_LAYER_TAR,
        }
    }
}

/// The digests of a finished blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// sha256 of the uncompressed tar (goes into the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// sha256 of the bytes written (the layer descriptor's digest).
    pub digest: Digest,
    /// Number of bytes written.
    pub size: u64,
    /// Media type of the blob.
    pub media_type: &'static str,
}

/// A writer that hashes everything passed through to `inner`.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    Gzip(GzEncoder<HashingWriter<W>>),
    Zstd(zstd::Encoder<'static, HashingWriter<W>>),
    Plain(HashingWriter<W>),
}

/// Compresses a layer tar into `inner`, hashing both sides in one pass.
pub struct BlobWriter<W: Write> {
    uncompressed: Hasher,
    encoder: Encoder<W>,
    compression: Compression,
}

impl<W: Write> BlobWriter<W> {
    /// Starts a blob written to `inner` with `compression`.
    pub fn new(inner: W, compression: Compression) -> io::Result<Self> {
        let hw = HashingWriter {
            inner,
            hasher: Hasher::new(),
        };
        let encoder = match compression {
            Compression::Gzip => Encoder::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(GZIP_OS_UNKNOWN)
                    .write(hw, flate2::Compression::new(GZIP_LEVEL)),
            ),
            Compression::Zstd => {
                let mut enc = zstd::Encoder::new(hw, ZSTD_LEVEL)?;
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
            Compression::Uncompressed => Encoder::Plain(hw),
        };
        Ok(Self {
            uncompressed: Hasher::new(),
            encoder,
            compression,
        })
    }

    /// Finishes compression and returns the inner writer and the blob's digests.
    pub fn finish(self) -> io::Result<(W, BlobInfo)> {
        let mut hw = match self.encoder {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Zstd(e) => e.finish()?,
            Encoder::Plain(w) => w,
        };
        hw.flush()?;
        let size = hw.hasher.len();
        let info = BlobInfo {
            diff_id: self.uncompressed.finish(),
            digest: hw.hasher.finish(),
            size,
            media_type: self.compression.media_type(),
        };
        Ok((hw.inner, info))
    }
}

impl<W: Write> Write for BlobWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.encoder {
            Encoder::Gzip(e) => e.write(buf)?,
            Encoder::Zstd(e) => e.write(buf)?,
            Encoder::Plain(w) => w.write(buf)?,
        };
        self.uncompressed.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.encoder {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Plain(w) => w.flush(),
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Detects the compression of a layer stream from its first bytes.
pub fn detect(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if prefix.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::Uncompressed
    }
}

/// Wraps `reader` in the decompressor its magic bytes call for (gzip, zstd, or none).
pub fn decompress<'a, R: Read + Send + 'a>(mut reader: R) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let prefix = magic[..got].to_vec();
    let kind = detect(&prefix);
    let stream = io::Cursor::new(prefix).chain(reader);
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(zstd::Decoder::new(stream)?),
        Compression::Uncompressed => Box::new(stream),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn roundtrip(c: Compression) -> BlobInfo {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut w = BlobWriter::new(Vec::new(), c).unwrap();
        w.write_all(&data).unwrap();
        let (blob, info) = w.finish().unwrap();
        assert_eq!(info.diff_id, Digest::of(&data));
        assert_eq!(info.digest, Digest::of(&blob));
        assert_eq!(info.size, blob.len() as u64);
        let mut back = Vec::new();
        decompress(&blob[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        info
    }

    #[test]
    fn every_compression_round_trips_and_is_deterministic() {
        for c in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Uncompressed,
        ] {
            assert_eq!(roundtrip(c), roundtrip(c));
        }
    }

    #[test]
    fn gzip_header_has_no_timestamp_or_name() {
        let mut w = BlobWriter::new(Vec::new(), Compression::Gzip).unwrap();
        w.write_all(b"x").unwrap();
        let (blob, _) = w.finish().unwrap();
        assert_eq!(&blob[..4], &[0x1f, 0x8b, 8, 0], "no FNAME flag");
        assert_eq!(&blob[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(blob[9], 255, "OS unknown");
    }

    #[test]
    fn short_inputs_are_passed_through() {
        let mut back = Vec::new();
        decompress(&b"ab"[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, b"ab");
    }
}
