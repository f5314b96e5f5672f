//! Layer compression with one-pass hashing, and decompression by magic bytes.
//!
//! [`BlobWriter`] hashes the uncompressed stream (the layer's `diff_id`) and the compressed
//! stream (the blob digest and size) while writing, so a layer is read once. Settings are fixed
//! for reproducibility: gzip level 6 (Go's default, as BuildKit uses), header mtime 0, no file
//! name, OS byte 255 ("unknown", as Go writes it); zstd level 3, single-threaded, with the frame
//! checksum (deterministic).
//!
//! gzip is compressed in parallel, like BGZF or eStargz, while the layer is still being
//! written: the stream is cut into content-defined blocks (a gear hash picks the cuts; blocks
//! are 256 KiB to 2 MiB, about 768 KiB on average), each compressed on its own by a worker
//! thread into a complete gzip member (RFC 1952 §2.2: "a gzip file consists of a series of
//! members"), and the members are written in order. Every gzip reader reads such a blob as
//! one stream: Go's `compress/gzip` (containerd, docker, skopeo, umoci), GNU gzip, pigz,
//! Python's `gzip`. The bytes depend only on the data, the cut rule and the level, never on
//! the thread count or on timing, so they are as reproducible as a single-threaded stream.
//! Compressed bytes still depend on the compressor implementation (libdeflate, libzstd
//! 1.5.x): a compressor upgrade can change blob digests, never `diff_id`s.
//!
//! Deflate is libdeflate's (level 6), not zlib's: it compresses a whole buffer at once, which
//! is what a block is, about twice as fast as zlib-rs at the same level with a slightly
//! better ratio. A block where string matching gains under 3 % (random-looking text,
//! compressed files) is deflated by kiln's run-only encoder instead (`deflate_block`,
//! `oci::deflate`), several times faster at about the same size. Until 2026-11-30 the
//! blocks were zlib-rs raw deflate streams ending in a sync flush, joined into one member;
//! members cost 18 bytes per block more and need no stream-wide CRC.
//!
//! Because each block is compressed alone and its cuts depend only on nearby bytes, a block
//! with the same bytes as a block of an earlier layer has the same member bytes. With a
//! [`BlockCache`] ([`BlobWriter::with_reuse`]) those are copied from the earlier blob instead
//! of compressed again, after checking that they are the bytes recorded for the block (their
//! CRC-32, taken when they were first compressed): a layer with one changed file costs the
//! compression of one or two blocks. The result is byte-identical to a cold compression.

use std::io::{self, Read, Write};

use super::{deflate, media};
use crate::digest::{Digest, Hasher};

/// gzip level used for every layer.
pub const GZIP_LEVEL: u32 = 6;
/// zstd level used for every layer.
pub const ZSTD_LEVEL: i32 = 3;
/// gzip OS header byte (255 = unknown, as Go's `compress/gzip` writes).
const GZIP_OS_UNKNOWN: u8 = 255;
/// The header of every gzip member kiln writes: ID1 ID2, CM=deflate, FLG=0 (no name, no
/// comment, no extra), MTIME=0, XFL=0, OS=unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, GZIP_OS_UNKNOWN];

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
    /// The gzip blocks of the blob that a [`BlockCache`] can reuse (with
    /// [`BlobWriter::with_reuse`] only).
    pub blocks: Vec<BlockRef>,
    /// How many of those were copied from the [`BlockCache`] rather than compressed.
    pub reused_blocks: usize,
}

/// Where a [`BlobWriter`] writes the compressed blob: a writer that hashes the bytes it is
/// given itself, so the blob writer takes the blob's digest and size from it instead of
/// hashing the compressed stream a second time (the content store's writer hashes what it
/// stores anyway).
///
/// It is written from the compressor's own thread (gzip), hence `Send + 'static`.
pub trait HashedSink: Write + Send + 'static {
    /// SHA-256 of everything written so far.
    fn digest(&self) -> Digest;
    /// Bytes written so far.
    fn written(&self) -> u64;
}

/// A writer that hashes everything passed through to `inner`.
pub struct HashingWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: Hasher,
}

impl<W> HashingWriter<W> {
    /// Starts hashing what is written to `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }
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

impl<W: Write + Send + 'static> HashedSink for HashingWriter<W> {
    fn digest(&self) -> Digest {
        self.hasher.clone().finish()
    }
    fn written(&self) -> u64 {
        self.hasher.len()
    }
}

enum Encoder<S: HashedSink> {
    Gzip(ParallelGzip<S>),
    Zstd(zstd::Encoder<'static, S>),
    Plain(S),
}

/// Compresses a layer tar into a [`HashedSink`], hashing both sides in one pass.
pub struct BlobWriter<S: HashedSink> {
    /// The `diff_id` being hashed, on the caller's thread (gzip hashes it on its writer
    /// thread instead).
    uncompressed: Hasher,
    encoder: Encoder<S>,
    compression: Compression,
}

impl<W: Write + Send + 'static> BlobWriter<HashingWriter<W>> {
    /// Starts a blob written to `inner` with `compression`.
    pub fn new(inner: W, compression: Compression) -> io::Result<Self> {
        Self::with_reuse(inner, compression, None)
    }

    /// [`BlobWriter::new`], reusing gzip blocks from `reuse` and listing the blob's blocks in
    /// [`BlobInfo::blocks`] (other compressions ignore it).
    pub fn with_reuse(
        inner: W,
        compression: Compression,
        reuse: Option<BlockReuse>,
    ) -> io::Result<Self> {
        Self::into_sink(HashingWriter::new(inner), compression, reuse)
    }

    /// Finishes compression and returns the inner writer and the blob's digests.
    pub fn finish(self) -> io::Result<(W, BlobInfo)> {
        let (hw, info) = self.finish_sink()?;
        Ok((hw.inner, info))
    }
}

impl<S: HashedSink> BlobWriter<S> {
    /// [`BlobWriter::with_reuse`] into a sink that hashes what it is given.
    pub fn into_sink(
        sink: S,
        compression: Compression,
        reuse: Option<BlockReuse>,
    ) -> io::Result<Self> {
        let encoder = match compression {
            Compression::Gzip => Encoder::Gzip(ParallelGzip::new(sink, reuse)?),
            Compression::Zstd => {
                let mut enc = zstd::Encoder::new(sink, ZSTD_LEVEL)?;
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
            Compression::Uncompressed => Encoder::Plain(sink),
        };
        Ok(Self {
            uncompressed: Hasher::new(),
            encoder,
            compression,
        })
    }

    /// Finishes compression and returns the sink and the blob's digests.
    pub fn finish_sink(self) -> io::Result<(S, BlobInfo)> {
        let (mut sink, diff_id, blocks, reused_blocks) = match self.encoder {
            Encoder::Gzip(e) => {
                let w = e.finish()?;
                (w.inner, w.diff_id, w.blocks, w.reused)
            }
            Encoder::Zstd(e) => (e.finish()?, self.uncompressed.finish(), Vec::new(), 0),
            Encoder::Plain(w) => (w, self.uncompressed.finish(), Vec::new(), 0),
        };
        sink.flush()?;
        let info = BlobInfo {
            diff_id,
            digest: sink.digest(),
            size: sink.written(),
            media_type: self.compression.media_type(),
            blocks,
            reused_blocks,
        };
        Ok((sink, info))
    }
}

impl<S: HashedSink> Write for BlobWriter<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.encoder {
            Encoder::Gzip(e) => return e.write(buf),
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

/// Smallest gzip block (bytes of tar) before a content-defined cut may end it.
pub const GZIP_BLOCK_MIN: usize = 256 << 10;
/// Largest gzip block: a block is cut here if no content-defined cut came first.
pub const GZIP_BLOCK_MAX: usize = 2 << 20;
/// A cut falls where the gear hash of the last 64 bytes has this many leading zero bits:
/// on average every 2^19 bytes (512 KiB) after [`GZIP_BLOCK_MIN`].
const GZIP_CUT_BITS: u32 = 19;
/// Blocks shorter than this are never recorded for reuse (not worth an index entry).
const GZIP_BLOCK_RECORD_MIN: usize = 64 << 10;

/// The gear table of the content-defined cuts: 256 pseudo-random words from splitmix64 with
/// a fixed seed. It shapes the output bytes (where blocks end), so it never changes.
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut x: u64 = 0x6b69_6c6e_677a_6970; // "kilngzip"
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

/// Where a block ends: content-defined, like FastCDC's gear hash. Bytes before
/// `GZIP_BLOCK_MIN - 64` of a block are not hashed; from then on the hash depends only on the
/// last 64 bytes (each step shifts one bit out), so a cut depends on the bytes around it and
/// on the block being at least [`GZIP_BLOCK_MIN`] long, never on where the stream began. An
/// insertion or deletion earlier in a layer moves the cuts after it only until the next
/// content-defined cut, so most blocks of a slightly changed layer have the same bytes as
/// before.
#[derive(Debug, Default)]
struct Chunker {
    hash: u64,
}

impl Chunker {
    /// How many bytes of `data` to take into a block that holds `len` bytes already before it
    /// must end; `None` when all of `data` fits and the block goes on.
    fn cut(&mut self, len: usize, data: &[u8]) -> Option<usize> {
        let room = GZIP_BLOCK_MAX - len;
        let end = data.len().min(room);
        let from = (GZIP_BLOCK_MIN - 64).saturating_sub(len).min(end);
        let threshold = 1u64 << (64 - GZIP_CUT_BITS);
        let mut h = self.hash;
        for (i, &b) in data[from..end].iter().enumerate() {
            h = (h << 1).wrapping_add(GEAR[usize::from(b)]);
            if h < threshold && len + from + i + 1 >= GZIP_BLOCK_MIN {
                self.hash = 0;
                return Some(from + i + 1);
            }
        }
        if end == room {
            self.hash = 0;
            return Some(end);
        }
        self.hash = h;
        None
    }
}

/// Deflated blocks kept from earlier layers, by [`block_key`]: a block of a new layer whose
/// bytes were compressed before is copied instead of compressed again. The bytes handed back
/// are checked against the CRC-32 recorded when they were compressed ([`BlockRef::crc32`])
/// before they are used, so damaged bytes cost a compression. The check is against damage:
/// the cache's records and the blobs they point into are the store's, trusted as its other
/// records are (a forged record is a wrong block, as a forged cache record is a wrong layer).
/// What must resist a forgery is the key, a BLAKE3 hash of content a build controls.
pub trait BlockCache: Send + Sync {
    /// The gzip member of the block with this key, if known, and the CRC-32 recorded for its
    /// bytes.
    fn get(&self, key: &BlockKey) -> Option<(Vec<u8>, u32)>;
}

/// The cache key of a block ([`block_key`]): 32 bytes of BLAKE3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey(pub [u8; 32]);

impl BlockKey {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Where one block of a finished gzip blob lies, for a [`BlockCache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRef {
    /// [`block_key`] of the block's uncompressed bytes.
    pub key: BlockKey,
    /// Offset of its gzip member in the blob.
    pub offset: u64,
    /// Length of its gzip member.
    pub len: u64,
    /// CRC-32 of its gzip member, checked when a later blob reuses it.
    pub crc32: u32,
}

/// A fingerprint of the deflate implementation, level and choice: the compression of the two
/// [`tag_probes`], one that libdeflate deflates and one that goes to the run-only encoder
/// ([`deflate_block`]; a test holds both). It is part of every block key, so blocks deflated
/// by another compressor (a kiln built with another libdeflate, another level or rule) are
/// never mixed into a blob: a cached block must be the exact bytes this compressor would
/// write, or a warm store would give other digests than a cold one.
///
/// A change to `oci::deflate` or to [`deflate_block`]'s rule that these probes might not show
/// must also change the version string here.
fn compressor_tag() -> &'static Digest {
    static TAG: std::sync::OnceLock<Digest> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let (text, letters) = tag_probes();
        let mut h = Hasher::new();
        h.update(b"kiln gzip member v3\0");
        h.update(&GZIP_LEVEL.to_le_bytes());
        h.update(&gzip_member(&text).unwrap_or_default());
        h.update(&gzip_member(&letters).unwrap_or_default());
        h.finish()
    })
}

/// The probes of [`compressor_tag`]: 96 KiB of text with repeats (matching, lazy evaluation,
/// dynamic trees: libdeflate), and 160 KiB of random letters with runs of zeros (nothing for
/// matching to find but the runs: the run-only encoder, over more than one of its blocks).
fn tag_probes() -> (Vec<u8>, Vec<u8>) {
    let mut x: u32 = 0x2545_f491;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let text: Vec<u8> = (0..96 * 1024)
        .map(|i| {
            let x = next();
            if i % 5 == 0 {
                (x >> 24) as u8
            } else {
                b"kiln layer "[i % 11]
            }
        })
        .collect();
    let letters: Vec<u8> = (0..160 * 1024)
        .map(|i| {
            let x = next();
            if i % 1000 < 40 {
                0
            } else {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    [(x >> 26) as usize]
            }
        })
        .collect();
    (text, letters)
}

/// The cache key of a block: its bytes, the compressor's fingerprint and a namespace (kilnd
/// keeps tenants' blocks apart, as it keeps their cache records apart). BLAKE3, a
/// cryptographic hash (a build controls the bytes, and a collision would put another block's
/// bytes in its layer) that hashes about twice as fast as SHA-256 here: every byte of every
/// gzip layer goes through it.
pub fn block_key(namespace: &[u8], data: &[u8]) -> BlockKey {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln gzip block key v1\0");
    h.update(compressor_tag().as_bytes());
    h.update(&(namespace.len() as u64).to_le_bytes());
    h.update(namespace);
    h.update(data);
    BlockKey(*h.finalize().as_bytes())
}

/// What [`ParallelGzip`] reuses blocks from, and records them for.
#[derive(Clone)]
pub struct BlockReuse {
    /// Where known blocks are looked up.
    pub cache: std::sync::Arc<dyn BlockCache>,
    /// The namespace of the keys (see [`block_key`]).
    pub namespace: std::sync::Arc<[u8]>,
}

/// One compressed block, as a worker hands it back.
struct Piece {
    key: Option<BlockKey>,
    /// CRC-32 of `bytes` (when `key` is set).
    crc32: Option<u32>,
    /// The bytes came from the cache.
    reused: bool,
    raw_len: usize,
    bytes: Vec<u8>,
    /// The block's uncompressed bytes, hashed into the `diff_id` by the writer thread, whose
    /// buffer then goes back to be filled again.
    spare: Vec<u8>,
}

/// A block being compressed by its worker.
type PieceJob = std::thread::JoinHandle<io::Result<Piece>>;

/// What [`ParallelGzip`]'s writer thread hands back at the end of the stream.
struct Written<W> {
    inner: W,
    /// sha256 of the uncompressed stream.
    diff_id: Digest,
    blocks: Vec<BlockRef>,
    reused: usize,
}

/// A gzip writer that cuts its input into content-defined blocks and compresses each into a
/// gzip member in parallel, while the caller goes on writing (see the module docs).
///
/// The caller's thread only fills blocks. Each block goes to a worker thread; a writer thread
/// takes the finished members in stream order, hashes the uncompressed blocks (the
/// `diff_id`) and writes the members to the sink (which hashes them): on a layer whose blocks
/// are mostly reused, those two hashes and the write were most of the caller's work.
struct ParallelGzip<W: Write + Send + 'static> {
    /// The block being filled.
    cur: Vec<u8>,
    chunker: Chunker,
    reuse: Option<BlockReuse>,
    /// Blocks being compressed, in stream order, to the writer thread; bounded, so at most
    /// about two blocks per CPU are in flight (one per CPU left the tar thread waiting on
    /// the writer a quarter of the time when most blocks are reused).
    queue: Option<std::sync::mpsc::SyncSender<PieceJob>>,
    /// Block buffers the writer thread hands back, to fill again (fresh 2 MiB buffers cost
    /// page faults).
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    writer: Option<std::thread::JoinHandle<io::Result<Written<W>>>>,
}

impl<W: Write + Send + 'static> ParallelGzip<W> {
    fn new(inner: W, reuse: Option<BlockReuse>) -> io::Result<Self> {
        let threads = crate::cpus().clamp(1, 16);
        let (queue, jobs) = std::sync::mpsc::sync_channel(2 * threads);
        let (give, spare) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("kiln-gzip-out".into())
            .spawn(move || write_pieces(inner, &jobs, &give))?;
        Ok(Self {
            cur: Vec::with_capacity(GZIP_BLOCK_MAX),
            chunker: Chunker::default(),
            reuse,
            queue: Some(queue),
            spare,
            writer: Some(writer),
        })
    }

    /// Hands the current block to a worker, and the worker to the writer thread (waiting
    /// while too many blocks are in flight).
    fn submit(&mut self) -> io::Result<()> {
        if self.cur.is_empty() {
            return Ok(());
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(GZIP_BLOCK_MAX));
        let data = std::mem::replace(&mut self.cur, next);
        let reuse = self.reuse.clone();
        let job = move || compress_piece(data, reuse.as_ref());
        let handle = std::thread::Builder::new()
            .name("kiln-gzip".into())
            .spawn(job)?;
        let sent = match &self.queue {
            Some(q) => q.send(handle).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The writer thread stopped early: its error says why.
            Err(self
                .stop()
                .err()
                .unwrap_or_else(|| io::Error::other("gzip writer stopped")))
        }
    }

    /// Ends the stream and waits for the writer thread.
    fn stop(&mut self) -> io::Result<Written<W>> {
        drop(self.queue.take());
        let writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))?;
        writer
            .join()
            .map_err(|_| io::Error::other("gzip writer panicked"))?
    }

    fn finish(mut self) -> io::Result<Written<W>> {
        self.submit()?;
        self.stop()
    }
}

impl<W: Write + Send + 'static> Drop for ParallelGzip<W> {
    /// Abandoned (an error while writing the layer): the writer thread finishes with what it
    /// has and drops the sink here, before the caller goes on.
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.stop();
        }
    }
}

/// The writer thread: members in stream order into `inner`, the `diff_id` over their blocks.
fn write_pieces<W: Write>(
    mut inner: W,
    jobs: &std::sync::mpsc::Receiver<PieceJob>,
    spare: &std::sync::mpsc::Sender<Vec<u8>>,
) -> io::Result<Written<W>> {
    let mut diff = Hasher::new();
    let (mut written, mut blocks, mut reused) = (0u64, Vec::new(), 0);
    for job in jobs {
        let piece = job
            .join()
            .map_err(|_| io::Error::other("gzip worker panicked"))??;
        // `spare` is the block's uncompressed bytes, handed back by the worker.
        diff.update(&piece.spare);
        inner.write_all(&piece.bytes)?;
        reused += usize::from(piece.reused);
        if let (Some(key), Some(crc32)) = (piece.key, piece.crc32)
            && piece.raw_len >= GZIP_BLOCK_RECORD_MIN
        {
            blocks.push(BlockRef {
                key,
                crc32,
                offset: written,
                len: piece.bytes.len() as u64,
            });
        }
        written += piece.bytes.len() as u64;
        let mut buf = piece.spare;
        buf.clear();
        // The caller may be gone (it stopped on an error): the buffer is then dropped.
        let _ = spare.send(buf);
    }
    if written == 0 {
        // An empty layer is one empty member: a gzip file has at least one.
        inner.write_all(&gzip_member(&[])?)?;
    }
    Ok(Written {
        inner,
        diff_id: diff.finish(),
        blocks,
        reused,
    })
}

impl<W: Write + Send + 'static> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            match self.chunker.cut(self.cur.len(), rest) {
                Some(n) => {
                    self.cur.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    self.submit()?;
                }
                None => {
                    self.cur.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        Ok(buf.len())
    }

    /// The sink is the writer thread's; it is flushed when the stream finishes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A worker's job: the block's gzip member, from the cache when it is there and checks out,
/// else compressed.
fn compress_piece(data: Vec<u8>, reuse: Option<&BlockReuse>) -> io::Result<Piece> {
    let key = reuse.map(|r| block_key(&r.namespace, &data));
    if let (Some(r), Some(k)) = (reuse, &key)
        && let Some((bytes, crc32)) = r.cache.get(k)
        && libdeflater::crc32(&bytes) == crc32
    {
        return Ok(Piece {
            key,
            crc32: Some(crc32),
            reused: true,
            raw_len: data.len(),
            bytes,
            spare: data,
        });
    }
    let bytes = gzip_member(&data)?;
    Ok(Piece {
        key,
        // Only blocks that may be recorded for reuse need it.
        crc32: key.map(|_| libdeflater::crc32(&bytes)),
        reused: false,
        raw_len: data.len(),
        bytes,
        spare: data,
    })
}

/// One block as a complete gzip member: [`GZIP_HEADER`], the raw deflate of `data` (see
/// [`deflate_block`]), CRC-32 and length.
fn gzip_member(data: &[u8]) -> io::Result<Vec<u8>> {
    let isize = u32::try_from(data.len()).map_err(|_| io::Error::other("gzip block over 4 GiB"))?;
    let mut out = Vec::with_capacity(GZIP_HEADER.len() + data.len() / 2 + 64);
    out.extend_from_slice(&GZIP_HEADER);
    deflate_block(data, &mut out)?;
    out.extend_from_slice(&libdeflater::crc32(data).to_le_bytes());
    out.extend_from_slice(&isize.to_le_bytes());
    Ok(out)
}

/// Bytes in each sample [`deflate_block`] compresses both ways.
const PROBE_LEN: usize = 16 * 1024;
/// Samples per block, spread evenly from its first byte to its last.
const PROBES: usize = 4;
/// Runs alone must make the samples more than this many per mille larger than libdeflate
/// does (matching saves about 3 % or more) for the block to go to libdeflate.
const MATCH_GAIN_PER_MILLE: u64 = 30;

/// The raw deflate of one block, appended to `out`: libdeflate's at [`GZIP_LEVEL`], unless
/// string matching would gain almost nothing on it, which samples tell. Then the block is
/// deflated with literals and runs only ([`deflate::deflate_rle`]), several times faster: on
/// random-looking text (base64, hex dumps) or already-compressed files, libdeflate's match
/// finder spends most of its time finding nothing.
///
/// The samples are [`PROBES`] slices of [`PROBE_LEN`] bytes, each deflated alone both ways.
/// The block goes to libdeflate as soon as the samples so far come out over
/// [`MATCH_GAIN_PER_MILLE`] larger without matching, so text and binaries pay one sample
/// (about 2 % of a block's compression). The choice depends on the block's bytes only.
fn deflate_block(data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let level = libdeflater::CompressionLvl::new(GZIP_LEVEL as i32)
        .map_err(|e| io::Error::other(format!("gzip level {GZIP_LEVEL}: {e:?}")))?;
    let mut c = libdeflater::Compressor::new(level);
    let mut lz = |data: &[u8], out: &mut Vec<u8>| -> io::Result<usize> {
        let start = out.len();
        let bound = c.deflate_compress_bound(data.len());
        out.resize(start + bound, 0);
        let n = c
            .deflate_compress(data, &mut out[start..])
            .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
        out.truncate(start + n);
        Ok(n)
    };
    if data.len() >= PROBES * PROBE_LEN {
        let mut scratch = Vec::with_capacity(PROBE_LEN + PROBE_LEN / 8);
        let (mut matched, mut runs) = (0u64, 0u64);
        let mut matching_pays = false;
        for k in 0..PROBES {
            let at = k * (data.len() - PROBE_LEN) / (PROBES - 1);
            let sample = &data[at..at + PROBE_LEN];
            scratch.clear();
            matched += lz(sample, &mut scratch)? as u64;
            scratch.clear();
            deflate::deflate_rle(sample, &mut scratch);
            runs += scratch.len() as u64;
            if runs * 1000 > matched * (1000 + MATCH_GAIN_PER_MILLE) {
                matching_pays = true;
                break;
            }
        }
        if !matching_pays {
            deflate::deflate_rle(data, out);
            return Ok(());
        }
    }
    lz(data, out)?;
    Ok(())
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

    /// About 6 MiB of mildly compressible bytes (several content-defined blocks).
    fn multi_block_data() -> Vec<u8> {
        let mut x: u32 = 7;
        (0..6 * (1 << 20))
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

    fn gzip(data: &[u8], reuse: Option<BlockReuse>) -> (Vec<u8>, BlobInfo) {
        let mut w = BlobWriter::with_reuse(Vec::new(), Compression::Gzip, reuse).unwrap();
        // Odd write sizes cross block boundaries.
        for chunk in data.chunks(123_457) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap()
    }

    /// The blocks the chunker cuts `data` into, cut sequentially in one call per byte run.
    fn blocks_of(data: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut c = Chunker::default();
        let (mut start, mut len) = (0, 0);
        let mut pos = 0;
        while pos < data.len() {
            match c.cut(len, &data[pos..]) {
                Some(n) => {
                    out.push(&data[start..pos + n]);
                    pos += n;
                    start = pos;
                    len = 0;
                }
                None => {
                    len += data.len() - pos;
                    pos = data.len();
                }
            }
        }
        if start < data.len() {
            out.push(&data[start..]);
        }
        out
    }

    #[test]
    fn parallel_gzip_is_valid_gzip_and_independent_of_threads() {
        let data = multi_block_data();
        let (blob, info) = gzip(&data, None);
        assert_eq!(info.diff_id, Digest::of(&data));
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // The same blocks compressed one after another on this thread give the same bytes.
        let blocks = blocks_of(&data);
        assert!(blocks.len() >= 4, "{} blocks", blocks.len());
        assert!(
            blocks
                .iter()
                .all(|b| b.len() <= GZIP_BLOCK_MAX && !b.is_empty())
        );
        let mut one = Vec::new();
        for b in &blocks {
            // Each member alone is a gzip file of its block (another inflater: zlib-rs).
            let member = gzip_member(b).unwrap();
            let mut alone = Vec::new();
            flate2::read::GzDecoder::new(&member[..])
                .read_to_end(&mut alone)
                .unwrap();
            assert_eq!(&alone[..], *b);
            one.extend(member);
        }
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
    fn cuts_depend_on_nearby_bytes_only() {
        let data = multi_block_data();
        // 1,000 bytes inserted near the start move every byte after them.
        let mut changed = data[..100_000].to_vec();
        changed.extend(std::iter::repeat_n(b'#', 1000));
        changed.extend_from_slice(&data[100_000..]);
        let a: std::collections::HashSet<&[u8]> = blocks_of(&data).into_iter().collect();
        let b = blocks_of(&changed);
        let shared = b.iter().filter(|x| a.contains(*x)).count();
        assert!(
            shared + 2 >= b.len(),
            "only {shared} of {} blocks survive an insertion",
            b.len()
        );
    }

    /// An in-memory block cache that counts hits.
    #[derive(Default)]
    struct Memory {
        blocks: std::sync::Mutex<std::collections::HashMap<BlockKey, (Vec<u8>, u32)>>,
        hits: std::sync::atomic::AtomicUsize,
    }

    impl BlockCache for Memory {
        fn get(&self, key: &BlockKey) -> Option<(Vec<u8>, u32)> {
            let b = self.blocks.lock().unwrap().get(key).cloned();
            if b.is_some() {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            b
        }
    }

    impl Memory {
        fn learn(&self, blob: &[u8], info: &BlobInfo) {
            for r in &info.blocks {
                let range = r.offset as usize..(r.offset + r.len) as usize;
                self.blocks
                    .lock()
                    .unwrap()
                    .insert(r.key, (blob[range].to_vec(), r.crc32));
            }
        }
        fn hits(&self) -> usize {
            self.hits.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn reused_blocks_give_the_same_bytes_as_a_cold_compression() {
        let data = multi_block_data();
        let mem = std::sync::Arc::new(Memory::default());
        let reuse = BlockReuse {
            cache: mem.clone(),
            namespace: std::sync::Arc::from(&b"tenant-a"[..]),
        };
        let (first, info) = gzip(&data, Some(reuse.clone()));
        assert_eq!(first, gzip(&data, None).0, "recording changes nothing");
        assert!(info.blocks.len() >= 4);
        mem.learn(&first, &info);

        // One "file" in the middle changes size.
        let mut changed = data[..3_000_000].to_vec();
        changed.extend_from_slice(b"a changed file");
        changed.extend_from_slice(&data[3_000_100..]);
        let (warm, winfo) = gzip(&changed, Some(reuse.clone()));
        let cold = gzip(&changed, None).0;
        assert_eq!(
            warm, cold,
            "a warm store must write the same bytes as a cold one"
        );
        assert_eq!(winfo.reused_blocks, mem.hits());
        assert!(
            mem.hits() + 2 >= winfo.blocks.len(),
            "{} of {} blocks reused",
            mem.hits(),
            winfo.blocks.len()
        );

        // Another namespace shares nothing.
        let before = mem.hits();
        let other = BlockReuse {
            cache: mem.clone(),
            namespace: std::sync::Arc::from(&b"tenant-b"[..]),
        };
        assert_eq!(gzip(&data, Some(other)).0, first);
        assert_eq!(mem.hits(), before, "namespaces keep blocks apart");
    }

    #[test]
    fn a_damaged_cache_entry_is_compressed_again() {
        let data = multi_block_data();
        let mem = std::sync::Arc::new(Memory::default());
        let reuse = BlockReuse {
            cache: mem.clone(),
            namespace: std::sync::Arc::from(&b""[..]),
        };
        let (first, info) = gzip(&data, Some(reuse.clone()));
        mem.learn(&first, &info);
        // Damage every entry a different way: a flipped byte, a truncation, the bytes of
        // another block, a valid member of other bytes, and the recorded CRC-32 instead of
        // the bytes.
        let keys: Vec<BlockKey> = info.blocks.iter().map(|b| b.key).collect();
        assert!(keys.len() >= 5, "{} blocks", keys.len());
        {
            let mut m = mem.blocks.lock().unwrap();
            let other = m[&keys[1]].0.clone();
            for (i, k) in keys.iter().enumerate() {
                let (bytes, crc32) = m.get_mut(k).unwrap();
                match i % 5 {
                    0 => {
                        let mid = bytes.len() / 2;
                        bytes[mid] ^= 0x40;
                    }
                    1 => bytes.truncate(bytes.len() / 2),
                    2 => *bytes = other.clone(),
                    3 => *bytes = gzip_member(&data[..1000]).unwrap(),
                    _ => *crc32 ^= 1,
                }
            }
        }
        let before = mem.hits();
        let (again, info) = gzip(&data, Some(reuse));
        assert_eq!(mem.hits() - before, keys.len(), "every block was looked up");
        assert_eq!(info.reused_blocks, 0, "no damaged entry was used");
        assert_eq!(again, first);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&again[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
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

    /// Random base64-alphabet text in lines of 76, with a run of zeros every 64 KiB (as tar
    /// padding gives).
    fn random_text(len: usize) -> Vec<u8> {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut x: u32 = 99;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                match (i % (64 << 10), i % 77) {
                    (0..500, _) => 0,
                    (_, 76) => b'\n',
                    _ => alphabet[(x >> 26) as usize],
                }
            })
            .collect()
    }

    fn inflate(member: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(member)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    #[test]
    fn blocks_matching_cannot_shrink_are_deflated_with_runs_only() {
        let lz = |data: &[u8]| {
            let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
            let mut out = vec![0u8; c.deflate_compress_bound(data.len())];
            let n = c.deflate_compress(data, &mut out).unwrap();
            out.truncate(n);
            out
        };
        let rle = |data: &[u8]| {
            let mut out = Vec::new();
            deflate::deflate_rle(data, &mut out);
            out
        };
        let body = |member: &[u8]| member[GZIP_HEADER.len()..member.len() - 8].to_vec();

        // Random text: libdeflate's matching gains under 3 %, so the runs-only encoder writes it.
        let text = random_text(900 << 10);
        let member = gzip_member(&text).unwrap();
        assert!(body(&member) == rle(&text), "not the runs-only encoder's");
        assert!(inflate(&member) == text);
        let (m, r) = (lz(&text).len(), rle(&text).len());
        assert!(r * 1000 <= m * 1030, "runs only {r} bytes, libdeflate {m}");

        // Text with repeats, and random text with one 60-byte phrase every 300 bytes: libdeflate.
        for data in [multi_block_data()[..900 << 10].to_vec(), {
            let mut d = random_text(900 << 10);
            let phrase = d[1000..1060].to_vec();
            for i in (0..d.len() - 60).step_by(300) {
                d[i..i + 60].copy_from_slice(&phrase);
            }
            d
        }] {
            let member = gzip_member(&data).unwrap();
            assert!(body(&member) == lz(&data), "not libdeflate's");
            assert!(inflate(&member) == data);
        }

        // The compressor fingerprint's probes take one path each.
        let (text, letters) = tag_probes();
        assert!(body(&gzip_member(&text).unwrap()) == lz(&text));
        assert!(body(&gzip_member(&letters).unwrap()) == rle(&letters));
        assert!(letters.len() > deflate::BLOCK_INPUT);

        // Too short to sample: libdeflate.
        let short = random_text(PROBES * PROBE_LEN - 1);
        assert!(body(&gzip_member(&short).unwrap()) == lz(&short));

        // A blob of such blocks is still one gzip stream.
        let data = random_text(5 << 20);
        let (blob, info) = gzip(&data, None);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
        assert_eq!(info.diff_id, Digest::of(&data));
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
