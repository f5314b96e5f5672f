//! Build secrets (`RUN --mount=type=secret`): the values a build was given, the keyed MAC that
//! stands for a value in cache keys, and the redaction of values from step output.
//!
//! A value lives in kiln's memory ([`Secrets`]), in the step's spec on the init's stdin pipe,
//! and in the step's private tmpfs; never in the graph, a cache key, a record or a log. The
//! cache key of a step that mounts a secret carries `HMAC-SHA256(K, value)`, where `K` is 32
//! random bytes made once per store (`ROOT/secret-mac.key`, mode 0600, in the owner-only
//! store root): a changed value re-runs the step, while the store alone holds nothing a
//! guessed value could be checked against without `K`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use kiln_sandbox::SecretBytes;
use sha2::{Digest as _, Sha256};

use super::OpError;
use crate::graph::{ExecMountKind, Op};
use crate::store::{StoreError, io_err};

/// The file in the store root holding the per-store MAC key.
pub const MAC_KEY_FILE: &str = "secret-mac.key";

/// Domain separation for the MAC input.
const MAC_CONTEXT: &[u8] = b"kiln.secret.v1\0";

/// The secrets of one build, by id (`kiln build --secret`). `Debug` never shows a value.
#[derive(Clone, Debug, Default)]
pub struct Secrets(BTreeMap<String, SecretBytes>);

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the secret `id`.
    pub fn insert(&mut self, id: impl Into<String>, value: Vec<u8>) {
        self.0.insert(id.into(), SecretBytes::new(value));
    }

    /// The value of `id`.
    pub fn get(&self, id: &str) -> Option<&SecretBytes> {
        self.0.get(id)
    }

    /// The ids given (never the values).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Every value (for redaction).
    pub fn values(&self) -> impl Iterator<Item = &SecretBytes> {
        self.0.values()
    }

    /// True when no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize();
    k.fill(0);
    outer.into()
}

/// The store's MAC key: read from `root/secret-mac.key`, or made from 32 bytes of
/// `getrandom` and written there (mode 0600, temp file → fsync → rename without replacing).
pub fn load_or_create_mac_key(root: &Path) -> Result<SecretBytes, StoreError> {
    let path = root.join(MAC_KEY_FILE);
    if let Some(k) = read_key(&path)? {
        return Ok(k);
    }
    let mut key = vec![0u8; 32];
    let mut filled = 0;
    while filled < key.len() {
        let n = rustix::rand::getrandom(&mut key[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| io_err("getrandom", &path)(e.into()))?;
        filled += n;
    }
    let key = SecretBytes::new(key);
    let tmp = root.join(format!("{MAC_KEY_FILE}.tmp-{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(key.expose()).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(f);
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        &tmp,
        rustix::fs::CWD,
        &path,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(key),
        Err(rustix::io::Errno::EXIST) => {
            let _ = fs::remove_file(&tmp);
            read_key(&path)?.ok_or_else(|| StoreError::Io {
                op: "read",
                path: path.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            })
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(io_err("rename", &path)(e.into()))
        }
    }
}

fn read_key(path: &Path) -> Result<Option<SecretBytes>, StoreError> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let mut key = Vec::with_capacity(32);
    f.read_to_end(&mut key).map_err(io_err("read", path))?;
    let key = SecretBytes::new(key);
    if key.expose().len() != 32 {
        return Err(StoreError::Io {
            op: "read (the MAC key must be 32 bytes)",
            path: path.to_path_buf(),
            source: std::io::ErrorKind::InvalidData.into(),
        });
    }
    Ok(Some(key))
}

/// What the secrets of `op` add to its cache key: per secret mount, its id, whether it was
/// given and, if so, the MAC of its value under the store's key. `None` for an op that mounts
/// no secret (its key is as before). Fails, naming the id, when a required secret is missing:
/// before the step could run.
pub(super) fn cache_input(
    op: &Op,
    secrets: &Secrets,
    mac_key: &dyn Fn() -> Result<SecretBytes, StoreError>,
) -> Result<Option<Vec<u8>>, OpError> {
    let Op::Exec(e) = op else { return Ok(None) };
    let mut enc = Vec::new();
    let mut key: Option<SecretBytes> = None;
    for m in &e.mounts {
        let ExecMountKind::Secret { id, required, .. } = &m.kind else {
            continue;
        };
        if enc.is_empty() {
            enc.extend_from_slice(b"kiln.secrets.v1\0");
        }
        enc.extend_from_slice(id.as_bytes());
        enc.push(0);
        match secrets.get(id) {
            Some(v) => {
                let k = match &key {
                    Some(k) => k,
                    None => key.insert(mac_key()?),
                };
                let mut msg = MAC_CONTEXT.to_vec();
                msg.extend_from_slice(v.expose());
                let mac = hmac_sha256(k.expose(), &msg);
                msg.fill(0);
                enc.push(1);
                enc.extend_from_slice(&mac);
            }
            None if *required => return Err(OpError::SecretRequired { id: id.clone() }),
            None => enc.push(0),
        }
    }
    Ok((!enc.is_empty()).then_some(enc))
}

/// Replaces every occurrence of a secret value in a byte stream by `****`, also when a value
/// is split across two reads: the last `longest - 1` bytes of each chunk are held back until
/// the next chunk (or the end) shows whether they start a value.
pub struct Redactor {
    values: Vec<Vec<u8>>,
    keep: usize,
    pending: Vec<u8>,
}

impl Redactor {
    /// A redactor for `values` (empty values are ignored).
    pub fn new<'a>(values: impl Iterator<Item = &'a SecretBytes>) -> Self {
        let mut values: Vec<Vec<u8>> = values
            .map(|v| v.expose().to_vec())
            .filter(|v| !v.is_empty())
            .collect();
        // Longest first, so a value containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let keep = values.first().map_or(0, |v| v.len().saturating_sub(1));
        Self {
            values,
            keep,
            pending: Vec::new(),
        }
    }

    /// Feeds `chunk`; returns the output that is now safe to show.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        if self.values.is_empty() {
            return std::mem::take(&mut self.pending);
        }
        let (out, rest) = self.scan(false);
        self.pending = rest;
        out
    }

    /// The end of the stream: whatever is held back, redacted.
    pub fn finish(&mut self) -> Vec<u8> {
        let (out, _) = self.scan(true);
        self.pending.clear();
        out
    }

    /// Redacts `pending`; unless `end`, keeps back the tail that could be the start of a value.
    fn scan(&self, end: bool) -> (Vec<u8>, Vec<u8>) {
        let buf = &self.pending;
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        let limit = if end {
            buf.len()
        } else {
            buf.len().saturating_sub(self.keep)
        };
        while i < limit {
            if let Some(v) = self.values.iter().find(|v| buf[i..].starts_with(v)) {
                out.extend_from_slice(b"****");
                i += v.len();
            } else {
                out.push(buf[i]);
                i += 1;
            }
        }
        (out, buf.get(i..).unwrap_or_default().to_vec())
    }
}

impl Drop for Redactor {
    fn drop(&mut self) {
        for v in &mut self.values {
            v.fill(0);
        }
        self.pending.fill(0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 4231 test cases 1–4, 6 and 7 (case 5 is a truncated MAC).
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, msg, want) in cases {
            assert_eq!(hex::encode(hmac_sha256(&key, &msg)), want);
        }
    }

    fn redact_in_chunks(values: &[&[u8]], input: &[u8], chunk: usize) -> Vec<u8> {
        let secrets: Vec<SecretBytes> = values
            .iter()
            .map(|v| SecretBytes::new(v.to_vec()))
            .collect();
        let mut r = Redactor::new(secrets.iter());
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            out.extend(r.push(c));
        }
        out.extend(r.finish());
        out
    }

    #[test]
    fn a_value_split_across_reads_is_still_redacted() {
        let input = b"token=s3cr3t-value; again s3cr3t-value and s3cr3t- (partial)";
        let want = b"token=****; again **** and s3cr3t- (partial)".to_vec();
        for chunk in 1..input.len() + 1 {
            assert_eq!(
                redact_in_chunks(&[b"s3cr3t-value"], input, chunk),
                want,
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn without_secrets_output_passes_unchanged_and_unheld() {
        let mut r = Redactor::new(std::iter::empty());
        assert_eq!(r.push(b"abc"), b"abc");
        assert_eq!(r.finish(), b"");
    }

    #[test]
    fn the_longest_of_overlapping_values_wins() {
        assert_eq!(
            redact_in_chunks(&[b"abc", b"abcdef"], b"xabcdefyabcz", 3),
            b"x****y****z"
        );
    }

    #[test]
    fn the_mac_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_mac_key(dir.path()).unwrap();
        let b = load_or_create_mac_key(dir.path()).unwrap();
        assert_eq!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 32);
        let md = fs::metadata(dir.path().join(MAC_KEY_FILE)).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
    }
}
