//! Layer compression with one-pass hashing, and decompression by magic bytes.
//!
//! [`BlobWriter`] hashes the uncompressed stream (the layer's `diff_id`) and the compressed
//! stream (the blob digest and size) while writing, so a layer is read once. Settings are fixed
//! for reproducibility: gzip level 6 (Go's default, as BuildKit uses), header mtime 0, no file
//! name, OS byte 255 ("unknown", as Go writes it); zstd level 3, single-threaded, with the frame
//! checksum (deterministic).
//!
//! gzip is compressed in parallel like `pigz --independent`: the stream is cut into fixed
//! 1 MiB blocks, each deflated on its own (ending in a sync flush, the last one finishing the
//! stream) on as many threads as there are CPUs, and the pieces are written in order into one
//! gzip member. The bytes depend only on the block size and level, never on the thread count,
//! so they are as reproducible as a single-threaded stream (and any gzip reader reads them). Compressed bytes still depend on the compressor implementation
//! (zlib-rs, libzstd 1.5.x): a compressor upgrade can change blob digests, never `diff_id`s.

use std::io::{self, Read, Write};

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
pub(crate) struct HashingWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: Hasher,
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
    Gzip(ParallelGzip<HashingWriter<W>>),
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
            Compression::Gzip => Encoder::Gzip(ParallelGzip::new(hw)?),
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

/// Size of the independently deflated gzip blocks (fixed: it shapes the output bytes).
pub const GZIP_BLOCK: usize = 1 << 20;

/// A gzip writer that deflates fixed-size blocks in parallel (see the module docs).
struct ParallelGzip<W: Write> {
    inner: W,
    /// Full blocks waiting to be compressed, plus the block being filled (last).
    pending: Vec<Vec<u8>>,
    crc: flate2::Crc,
    threads: usize,
}

impl<W: Write> ParallelGzip<W> {
    fn new(mut inner: W) -> io::Result<Self> {
        // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=unknown.
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, GZIP_OS_UNKNOWN])?;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 16);
        Ok(Self {
            inner,
            pending: vec![Vec::with_capacity(GZIP_BLOCK)],
            crc: flate2::Crc::new(),
            threads,
        })
    }

    /// Compresses and writes every full block.
    fn drain_full(&mut self) -> io::Result<()> {
        let full = self.pending.len() - 1;
        if full == 0 {
            return Ok(());
        }
        let blocks: Vec<Vec<u8>> = self.pending.drain(..full).collect();
        let compressed = deflate_all(&blocks, false, self.threads)?;
        for c in compressed {
            self.inner.write_all(&c)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.drain_full()?;
        let last = self.pending.pop().unwrap_or_default();
        let tail = deflate_block(&last, true)?;
        self.inner.write_all(&tail)?;
        self.inner.write_all(&self.crc.sum().to_le_bytes())?;
        self.inner.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let cur = self
            .pending
            .last_mut()
            .ok_or_else(|| io::Error::other("gzip writer finished"))?;
        let n = buf.len().min(GZIP_BLOCK - cur.len());
        cur.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        if cur.len() == GZIP_BLOCK {
            self.pending.push(Vec::with_capacity(GZIP_BLOCK));
            if self.pending.len() > self.threads {
                self.drain_full()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Deflates blocks on up to `threads` threads, results in input order.
fn deflate_all(blocks: &[Vec<u8>], last: bool, threads: usize) -> io::Result<Vec<Vec<u8>>> {
    if threads <= 1 || blocks.len() <= 1 {
        return blocks.iter().map(|b| deflate_block(b, last)).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = blocks
            .iter()
            .map(|b| s.spawn(move || deflate_block(b, last)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| io::Error::other("gzip worker panicked"))?
            })
            .collect()
    })
}

/// Raw-deflates one block: a sync flush at its end (byte-aligned, not final), or, for the
/// last block, the end of the stream.
fn deflate_block(data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    use flate2::{Compress, FlushCompress, Status};
    let mut c = Compress::new(flate2::Compression::new(GZIP_LEVEL), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = usize::try_from(c.total_in()).map_err(io::Error::other)?;
        let rest = data.get(consumed..).unwrap_or_default();
        let status = c
            .compress_vec(rest, &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = usize::try_from(c.total_in()).map_err(io::Error::other)? == data.len();
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete once it returns with output space left.
            _ if !last && all_in && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    Ok(out)
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

    /// 3.5 blocks of mildly compressible bytes.
    fn multi_block_data() -> Vec<u8> {
        let mut x: u32 = 7;
        (0..GZIP_BLOCK * 7 / 2)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                if i % 3 == 0 {
                    (x >> 24) as u8
                } else {
                    b'a' + (i % 7) as u8
                }
            })
            .collect()
    }

    #[test]
    fn parallel_gzip_is_one_valid_member_and_independent_of_threads() {
        let data = multi_block_data();
        let mut w = BlobWriter::new(Vec::new(), Compression::Gzip).unwrap();
        // Odd write sizes cross block boundaries.
        for chunk in data.chunks(123_457) {
            w.write_all(chunk).unwrap();
        }
        let (blob, info) = w.finish().unwrap();
        assert_eq!(info.diff_id, Digest::of(&data));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // The same blocks deflated on one thread give the same bytes.
        let blocks: Vec<Vec<u8>> = data.chunks(GZIP_BLOCK).map(<[u8]>::to_vec).collect();
        let (full, last) = blocks.split_at(blocks.len() - 1);
        let mut one = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        for b in deflate_all(full, false, 1).unwrap() {
            one.extend(b);
        }
        one.extend(deflate_block(&last[0], true).unwrap());
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        one.extend(crc.sum().to_le_bytes());
        one.extend(crc.amount().to_le_bytes());
        assert_eq!(one, blob);
        // An independent reader (GNU gzip) agrees.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.gz");
        std::fs::write(&path, &blob).unwrap();
        match std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
        {
            Ok(out) => {
                assert!(out.status.success(), "gzip -d rejected the blob");
                assert_eq!(out.stdout, data);
            }
            Err(_) => println!("skipped: gzip not installed (GNU gzip cross-check)"),
        }
    }

    #[test]
    fn an_empty_gzip_layer_is_valid() {
        let w = BlobWriter::new(Vec::new(), Compression::Gzip).unwrap();
        let (blob, _) = w.finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }

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
