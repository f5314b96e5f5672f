//! Metadata in one redb database: cache records, layer records, images, unpacked base layers.
//!
//! Values are JSON documents (small, versionable, debuggable); keys are strings. Writes from a
//! build are gathered in [`StagedRecords`] and committed in one ACID transaction.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{SnapshotId, StoreError};
use crate::Digest;

const CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("cache");
const LAYERS: TableDefinition<&str, &[u8]> = TableDefinition::new("layers");
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const UNPACKED: TableDefinition<&str, &[u8]> = TableDefinition::new("unpacked");
/// Client file hashes ([`crate::fileop::FileHash`]), by [`crate::fileop::FileKey`].
const FILE_HASHES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("file_hashes_v3");
/// What the last COPY from a client context of each kind wrote ([`CopyReuse`]), by the
/// kind's signature.
const COPY_REUSE: TableDefinition<&str, &[u8]> = TableDefinition::new("copy_reuse_v1");
/// Earlier forms, deleted at open: v2 held only the key digest (no content SHA-1).
const FILE_HASHES_OLD: TableDefinition<&[u8], &[u8]> = TableDefinition::new("file_hashes_v2");
/// The SBOM catalog of a final file system (JSON), by the digest of its layer chain.
const SBOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("sbom_catalogs_v1");
/// Where a gzip block's deflate bytes lie in a layer blob, by the block's key
/// ([`crate::oci::compress::block_key`]): 32 bytes of blob digest, offset and length (u64 LE),
/// the deflate bytes' CRC-32 (u32 LE).
const GZIP_BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("gzip_blocks_v3");
/// Earlier forms of the index, deleted at open: v1 recorded no check of the deflate bytes
/// (reused blocks were inflated to check them), v2 their SHA-256.
const GZIP_BLOCKS_OLD: [TableDefinition<&[u8], &[u8]>; 2] = [
    TableDefinition::new("gzip_blocks_v1"),
    TableDefinition::new("gzip_blocks_v2"),
];

/// Where one reusable gzip block lies: in blob `blob`, `len` bytes at `offset`, and their
/// CRC-32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLoc {
    /// The layer blob holding the block.
    pub blob: Digest,
    /// Offset of the block's deflate bytes in the blob.
    pub offset: u64,
    /// Length of the block's deflate bytes.
    pub len: u64,
    /// CRC-32 of the block's deflate bytes, recorded when they were compressed.
    pub crc32: u32,
}

impl BlockLoc {
    fn encode(&self) -> [u8; 52] {
        let mut v = [0u8; 52];
        v[..32].copy_from_slice(self.blob.as_bytes());
        v[32..40].copy_from_slice(&self.offset.to_le_bytes());
        v[40..48].copy_from_slice(&self.len.to_le_bytes());
        v[48..].copy_from_slice(&self.crc32.to_le_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Self> {
        let v: &[u8; 52] = v.try_into().ok()?;
        let (blob, rest) = v.split_at(32);
        let (offset, rest) = rest.split_at(8);
        let (len, crc32) = rest.split_at(8);
        Some(Self {
            blob: Digest::from_bytes(blob.try_into().ok()?),
            offset: u64::from_le_bytes(offset.try_into().ok()?),
            len: u64::from_le_bytes(len.try_into().ok()?),
            crc32: u32::from_le_bytes(crc32.try_into().ok()?),
        })
    }
}

/// A cached step result: the full chain of layers (bottom → top) of its file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// Layer directories, bottom first.
    pub layers: Vec<SnapshotId>,
    /// When a build last made or used it (unix seconds; 0: before kiln kept this), for GC.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_used: u64,
    /// The tenant whose build made it (its cache key includes the tenant too), for per-tenant
    /// GC quotas.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Seconds since the Unix epoch, now (cache records' `last_used`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A cache record is marked used again at most this often (seconds): a no-op rebuild does
/// not write the database each time.
pub const TOUCH_INTERVAL: u64 = 3600;

/// A compressed, exported form of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlob {
    /// OCI media type of the blob.
    pub media_type: String,
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// `SOURCE_DATE_EPOCH` the layer tar was written with (`None`: a base image's original
    /// blob). Tars clamp mtimes to it, so a blob is reused only for the same epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// What is known about one layer directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the uncompressed layer tar, once computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    /// True when the layer has no entries (dropped from images, like BuildKit).
    #[serde(default)]
    pub empty: bool,
    /// Compressed blobs made from it, one per compression.
    #[serde(default)]
    pub blobs: Vec<LayerBlob>,
}

/// An image in the local image store (`-t NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Digest of the image manifest blob.
    pub manifest: Digest,
    /// Digest of the image config blob.
    pub config: Digest,
    /// Manifest size.
    pub size: u64,
    /// For images built by kiln: the layer directories of the image, bottom first, so a build
    /// `FROM` this image needs no unpacking.
    #[serde(default)]
    pub layers: Vec<SnapshotId>,
    /// The image index holding this image's manifest and its attestations (attestation
    /// manifest, signed referrers), when the build attested it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
}

/// What a COPY from a client context wrote, for the next COPY of its kind to hard-link from
/// ([`crate::fileop::Reuse`]): its layer, and by path in it the identity of the source file
/// each regular file was copied from (only files whose content the file-hash cache knew).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReuse {
    /// The layer the COPY wrote.
    pub layer: SnapshotId,
    /// Path in the layer → source identity.
    pub files: BTreeMap<String, crate::fileop::FileKey>,
}

/// A decoded [`CopyReuse`]: the layer, and the source identities by path.
pub type ReusableFiles = (SnapshotId, HashMap<String, crate::fileop::FileKey>);

impl CopyReuse {
    /// Bytes: the layer id (u16 LE length, then the id), then per file a u32 LE length, the
    /// path and the 56 bytes of its key.
    fn encode(&self) -> Vec<u8> {
        let id = self.layer.as_str().as_bytes();
        let mut out = Vec::with_capacity(
            2 + id.len() + self.files.keys().map(|p| 4 + p.len() + 56).sum::<usize>(),
        );
        out.extend_from_slice(&u16::try_from(id.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(id);
        for (path, key) in &self.files {
            out.extend_from_slice(&u32::try_from(path.len()).unwrap_or(0).to_le_bytes());
            out.extend_from_slice(path.as_bytes());
            out.extend_from_slice(&key.to_bytes());
        }
        out
    }

    /// The layer of an encoded record.
    fn decode_layer(b: &[u8]) -> Option<(SnapshotId, &[u8])> {
        let (len, rest) = b.split_first_chunk::<2>()?;
        let (id, rest) = rest.split_at_checked(usize::from(u16::from_le_bytes(*len)))?;
        Some((SnapshotId::parse(std::str::from_utf8(id).ok()?)?, rest))
    }

    /// The record of [`CopyReuse::encode`]d bytes; `None` if malformed.
    fn decode(b: &[u8]) -> Option<ReusableFiles> {
        let (layer, mut rest) = Self::decode_layer(b)?;
        let mut files = HashMap::new();
        while !rest.is_empty() {
            let (len, r) = rest.split_first_chunk::<4>()?;
            let (path, r) = r.split_at_checked(usize::try_from(u32::from_le_bytes(*len)).ok()?)?;
            let (key, r) = r.split_at_checked(56)?;
            files.insert(
                std::str::from_utf8(path).ok()?.to_owned(),
                crate::fileop::FileKey::from_bytes(key)?,
            );
            rest = r;
        }
        Some((layer, files))
    }
}

/// Records a build wants to commit, held in memory until the build succeeds.
#[derive(Debug, Default, Clone)]
pub struct StagedRecords {
    /// Cache key (hex) → record.
    pub cache: BTreeMap<String, CacheRecord>,
    /// Layer id → record.
    pub layers: BTreeMap<SnapshotId, LayerRecord>,
    /// Image name → record.
    pub images: BTreeMap<String, ImageRecord>,
    /// Compressed blob digest → the layer directory it was unpacked into.
    pub unpacked: BTreeMap<Digest, SnapshotId>,
    /// Client file identity → content digest (see [`crate::fileop::FileHashCache`]).
    pub file_hashes: BTreeMap<crate::fileop::FileKey, crate::fileop::FileHash>,
    /// Layer chain key → the SBOM catalog of that file system (JSON).
    pub sboms: BTreeMap<String, Vec<u8>>,
    /// gzip block key → where a new blob holds it.
    pub gzip_blocks: BTreeMap<crate::oci::compress::BlockKey, BlockLoc>,
    /// COPY signature → what that COPY wrote.
    pub copy_reuse: BTreeMap<String, CopyReuse>,
}

impl StagedRecords {
    /// True when there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
            && self.layers.is_empty()
            && self.images.is_empty()
            && self.unpacked.is_empty()
            && self.file_hashes.is_empty()
            && self.sboms.is_empty()
            && self.gzip_blocks.is_empty()
            && self.copy_reuse.is_empty()
    }
}

/// The metadata database.
#[derive(Debug)]
pub struct MetaStore {
    db: std::sync::Arc<Database>,
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

impl MetaStore {
    /// Opens or creates the database and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = std::sync::Arc::new(Database::create(path)?);
        let tx = db.begin_write()?;
        for t in [CACHE, LAYERS, IMAGES, UNPACKED] {
            tx.open_table(t)?;
        }
        tx.open_table(FILE_HASHES)?;
        tx.open_table(SBOMS)?;
        tx.open_table(GZIP_BLOCKS)?;
        tx.open_table(COPY_REUSE)?;
        for old in GZIP_BLOCKS_OLD {
            tx.delete_table(old)?;
        }
        tx.delete_table(FILE_HASHES_OLD)?;
        tx.commit()?;
        Ok(Self { db })
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        match t.get(key)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// A cached step result.
    pub fn cache(&self, key: &str) -> Result<Option<CacheRecord>, StoreError> {
        self.get(CACHE, key)
    }

    /// A layer record.
    pub fn layer(&self, id: &SnapshotId) -> Result<Option<LayerRecord>, StoreError> {
        self.get(LAYERS, id.as_str())
    }

    /// An image by name.
    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.get(IMAGES, name)
    }

    /// Every image, sorted by name.
    pub fn images(&self) -> Result<Vec<(String, ImageRecord)>, StoreError> {
        self.all(IMAGES)
    }

    /// Every cache record.
    pub fn cache_records(&self) -> Result<Vec<(String, CacheRecord)>, StoreError> {
        self.all(CACHE)
    }

    /// Every layer record.
    pub fn layer_records(&self) -> Result<Vec<(String, LayerRecord)>, StoreError> {
        self.all(LAYERS)
    }

    /// The layer directory a compressed blob was unpacked into.
    pub fn unpacked(&self, blob: &Digest) -> Result<Option<SnapshotId>, StoreError> {
        self.get(UNPACKED, &blob.to_string())
    }

    /// Every unpacked-blob record.
    pub fn unpacked_records(&self) -> Result<Vec<(String, SnapshotId)>, StoreError> {
        self.all(UNPACKED)
    }

    /// Every remembered client file hash.
    pub fn file_hashes(
        &self,
    ) -> Result<
        std::collections::HashMap<crate::fileop::FileKey, crate::fileop::FileHash>,
        StoreError,
    > {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FILE_HASHES)?;
        let mut out = std::collections::HashMap::with_capacity(
            usize::try_from(redb::ReadableTableMetadata::len(&t)?).unwrap_or(0),
        );
        for item in t.iter()? {
            let (k, v) = item?;
            let (Some(key), Some(h)) = (
                crate::fileop::FileKey::from_bytes(k.value()),
                crate::fileop::FileHash::from_bytes(v.value()),
            ) else {
                continue; // a malformed entry is only a cache miss
            };
            out.insert(key, h);
        }
        Ok(out)
    }

    /// Forgets every client file hash and cached SBOM catalog (prune).
    pub fn clear_file_hashes(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.delete_table(FILE_HASHES)?;
        tx.open_table(FILE_HASHES)?;
        tx.delete_table(SBOMS)?;
        tx.open_table(SBOMS)?;
        tx.commit()?;
        Ok(())
    }

    /// The cached SBOM catalog (JSON) of the layer chain `key`.
    pub fn sbom(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SBOMS)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// [`MetaStore::sbom`] of each of `keys`, in one read transaction.
    pub fn sboms(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SBOMS)?;
        keys.iter()
            .map(|k| Ok(t.get(k.as_str())?.map(|v| v.value().to_vec())))
            .collect()
    }

    /// A handle on the gzip block index that worker threads can own.
    pub fn gzip_blocks(&self) -> GzipBlocks {
        GzipBlocks {
            db: self.db.clone(),
        }
    }

    /// What the last COPY of signature `sig` wrote: its layer and the source identity of each
    /// file by path; `None` when there is no (readable) record.
    pub fn copy_reuse(&self, sig: &str) -> Result<Option<ReusableFiles>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(COPY_REUSE)?;
        Ok(t.get(sig)?.and_then(|v| CopyReuse::decode(v.value())))
    }

    /// Drops the COPY records whose layer `keep` rejects (GC, after layers went).
    pub fn retain_copy_reuse(&self, keep: impl Fn(&SnapshotId) -> bool) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(COPY_REUSE)?;
            t.retain(|_, v| CopyReuse::decode_layer(v).is_some_and(|(id, _)| keep(&id)))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the gzip block entries whose blob `keep` rejects (GC, after blobs went).
    pub fn retain_gzip_blocks(&self, keep: impl Fn(&Digest) -> bool) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(GZIP_BLOCKS)?;
            t.retain(|_, v| BlockLoc::decode(v).is_some_and(|l| keep(&l.blob)))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Commits staged records in one transaction. Callers make every referenced file durable
    /// first.
    pub fn commit(&self, staged: &StagedRecords) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(CACHE)?;
            for (k, v) in &staged.cache {
                t.insert(k.as_str(), encode(k, v)?.as_slice())?;
            }
            let mut t = tx.open_table(LAYERS)?;
            for (k, v) in &staged.layers {
                // Merge with what is there: another build may have added a compression.
                let mut rec: LayerRecord = match t.get(k.as_str())? {
                    Some(old) => decode(k.as_str(), old.value())?,
                    None => LayerRecord::default(),
                };
                rec.diff_id = v.diff_id.or(rec.diff_id);
                rec.empty = v.empty || rec.empty;
                for b in &v.blobs {
                    rec.blobs
                        .retain(|x| !(x.media_type == b.media_type && x.epoch == b.epoch));
                    rec.blobs.push(b.clone());
                }
                t.insert(k.as_str(), encode(k.as_str(), &rec)?.as_slice())?;
            }
            let mut t = tx.open_table(IMAGES)?;
            for (k, v) in &staged.images {
                t.insert(k.as_str(), encode(k, v)?.as_slice())?;
            }
            let mut t = tx.open_table(UNPACKED)?;
            for (k, v) in &staged.unpacked {
                let key = k.to_string();
                t.insert(key.as_str(), encode(&key, v)?.as_slice())?;
            }
            let mut t = tx.open_table(FILE_HASHES)?;
            for (k, v) in &staged.file_hashes {
                t.insert(k.to_bytes().as_slice(), v.to_bytes().as_slice())?;
            }
            let mut t = tx.open_table(SBOMS)?;
            for (k, v) in &staged.sboms {
                t.insert(k.as_str(), v.as_slice())?;
            }
            let mut t = tx.open_table(GZIP_BLOCKS)?;
            for (k, v) in &staged.gzip_blocks {
                t.insert(k.as_bytes().as_slice(), v.encode().as_slice())?;
            }
            let mut t = tx.open_table(COPY_REUSE)?;
            for (k, v) in &staged.copy_reuse {
                t.insert(k.as_str(), v.encode().as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes records (prune). Each list names keys of one table.
    pub fn remove(
        &self,
        cache: &[String],
        layers: &[String],
        images: &[String],
        unpacked: &[String],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            for (def, keys) in [
                (CACHE, cache),
                (LAYERS, layers),
                (IMAGES, images),
                (UNPACKED, unpacked),
            ] {
                let mut t = tx.open_table(def)?;
                for k in keys {
                    t.remove(k.as_str())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// The gzip block index, shareable with threads ([`MetaStore::gzip_blocks`]).
#[derive(Clone)]
pub struct GzipBlocks {
    db: std::sync::Arc<Database>,
}

impl std::fmt::Debug for GzipBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GzipBlocks")
    }
}

impl GzipBlocks {
    /// Where the block with `key` lies, if an earlier blob holds it.
    pub fn get(&self, key: &crate::oci::compress::BlockKey) -> Option<BlockLoc> {
        let tx = self.db.begin_read().ok()?;
        let t = tx.open_table(GZIP_BLOCKS).ok()?;
        let v = t.get(key.as_bytes().as_slice()).ok()??;
        BlockLoc::decode(v.value())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A store written with an earlier form of the index (v1: no check of the deflate bytes,
    /// v2: their SHA-256): its entries are dropped at open (they would be misses), and new
    /// entries round-trip.
    #[test]
    fn old_gzip_block_indexes_are_dropped_and_new_entries_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            for (old, len) in GZIP_BLOCKS_OLD.into_iter().zip([48, 80]) {
                tx.open_table(old)
                    .unwrap()
                    .insert(&[1u8; 32][..], &vec![2u8; len][..])
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let m = MetaStore::open(&path).unwrap();
        {
            let tx = m.db.begin_read().unwrap();
            for old in GZIP_BLOCKS_OLD {
                assert!(
                    tx.open_table(old).is_err(),
                    "{} deleted",
                    redb::TableHandle::name(&old)
                );
            }
        }
        let key = crate::oci::compress::BlockKey([7; 32]);
        let loc = BlockLoc {
            blob: Digest::of(b"blob"),
            offset: 7,
            len: 9,
            crc32: 0xdead_beef,
        };
        let mut s = StagedRecords::default();
        s.gzip_blocks.insert(key, loc);
        m.commit(&s).unwrap();
        assert_eq!(m.gzip_blocks().get(&key), Some(loc));
        for len in [48, 80] {
            assert_eq!(
                BlockLoc::decode(&vec![2u8; len]),
                None,
                "an old value is not read"
            );
        }
    }

    #[test]
    fn old_file_hashes_are_dropped_and_new_entries_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let key = crate::fileop::FileKey([1, 2, 3, 4, 5, 6, 7]);
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(FILE_HASHES_OLD)
                .unwrap()
                .insert(&key.to_bytes()[..], &[2u8; 32][..])
                .unwrap();
            tx.commit().unwrap();
        }
        let m = MetaStore::open(&path).unwrap();
        {
            let tx = m.db.begin_read().unwrap();
            assert!(tx.open_table(FILE_HASHES_OLD).is_err(), "v2 deleted");
        }
        assert!(m.file_hashes().unwrap().is_empty());
        let hash = crate::fileop::FileHash {
            key: Digest::of(b"content and capabilities"),
            sha256: Digest::of(b"content"),
            sha1: [9; 20],
        };
        let mut s = StagedRecords::default();
        s.file_hashes.insert(key, hash);
        m.commit(&s).unwrap();
        assert_eq!(m.file_hashes().unwrap().get(&key), Some(&hash));
        assert_eq!(
            crate::fileop::FileHash::from_bytes(&[2u8; 32]),
            None,
            "an old value is not read"
        );
    }

    #[test]
    fn copy_records_round_trip_and_go_with_their_layer() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let (kept, gone) = (SnapshotId::new_random(), SnapshotId::new_random());
        let files: BTreeMap<String, crate::fileop::FileKey> = [
            (
                "/ctx/a".to_owned(),
                crate::fileop::FileKey([1, 2, 3, 4, 5, 6, 7]),
            ),
            ("/ctx/é b".to_owned(), crate::fileop::FileKey([7; 7])),
        ]
        .into();
        let mut s = StagedRecords::default();
        for (sig, layer) in [("one", &kept), ("two", &gone)] {
            s.copy_reuse.insert(
                sig.to_owned(),
                CopyReuse {
                    layer: layer.clone(),
                    files: files.clone(),
                },
            );
        }
        m.commit(&s).unwrap();
        let (layer, read) = m.copy_reuse("one").unwrap().unwrap();
        assert_eq!(layer, kept);
        assert_eq!(read, files.clone().into_iter().collect());
        assert_eq!(m.copy_reuse("three").unwrap(), None);
        m.retain_copy_reuse(|id| *id == kept).unwrap();
        assert!(m.copy_reuse("one").unwrap().is_some());
        assert_eq!(m.copy_reuse("two").unwrap(), None);
        // A cut record is no record.
        let bytes = s.copy_reuse["one"].encode();
        assert_eq!(CopyReuse::decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn staged_records_commit_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let mut s = StagedRecords::default();
        let id = SnapshotId::new_random();
        s.cache.insert(
            "k".into(),
            CacheRecord {
                layers: vec![id.clone()],
                last_used: 0,
                tenant: String::new(),
            },
        );
        s.layers.insert(
            id.clone(),
            LayerRecord {
                empty: true,
                ..Default::default()
            },
        );
        m.commit(&s).unwrap();
        assert_eq!(m.cache("k").unwrap().unwrap().layers, vec![id.clone()]);
        assert!(m.layer(&id).unwrap().unwrap().empty);
        assert!(m.cache("other").unwrap().is_none());
    }
}
