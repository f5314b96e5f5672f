//! Sigstore bundles v0.1, v0.2 and v0.3 (protobuf-specs `dev.sigstore.bundle.v1.Bundle` in
//! protobuf JSON), parsed into typed values. Parsing checks structure only: nothing here is
//! verified.

use serde_json::Value;

use super::json::{FieldError, Obj, as_obj, path};

/// Largest bundle [`parse`] reads, in bytes.
pub const MAX_BUNDLE_SIZE: usize = 16 * 1024 * 1024;
/// Most transparency-log entries a bundle may carry.
pub const MAX_TLOG_ENTRIES: usize = 32;
/// Most hashes an inclusion proof may carry (a tree of 2^64 leaves needs 64).
pub const MAX_PROOF_HASHES: usize = 64;
/// Most certificates in a chain, RFC 3161 timestamps, or DSSE signatures.
pub const MAX_ITEMS: usize = 32;

/// Why bytes are not a sigstore bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Larger than [`MAX_BUNDLE_SIZE`]; not parsed.
    #[error("bundle is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON (including truncated input).
    #[error("bundle is not valid JSON: {reason}")]
    Json {
        /// What the parser said.
        reason: String,
    },
    /// A `mediaType` that is not a sigstore bundle v0.1, v0.2 or v0.3.
    #[error("unknown bundle mediaType {found:?}")]
    UnknownMediaType {
        /// The mediaType found.
        found: String,
    },
    /// A field is missing, mistyped or malformed.
    #[error("malformed bundle: {0}")]
    Field(#[from] FieldError),
}

/// Bundle format version, from the `mediaType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BundleVersion {
    /// `application/vnd.dev.sigstore.bundle+json;version=0.1`.
    V01,
    /// `application/vnd.dev.sigstore.bundle+json;version=0.2`.
    V02,
    /// `...;version=0.3` or `application/vnd.dev.sigstore.bundle.v0.3+json`.
    V03,
}

impl BundleVersion {
    /// The version for a bundle `mediaType`, in any spelling sigstore clients write.
    pub fn from_media_type(media_type: &str) -> Option<BundleVersion> {
        match media_type {
            "application/vnd.dev.sigstore.bundle+json;version=0.1" => Some(BundleVersion::V01),
            "application/vnd.dev.sigstore.bundle+json;version=0.2" => Some(BundleVersion::V02),
            "application/vnd.dev.sigstore.bundle+json;version=0.3"
            | "application/vnd.dev.sigstore.bundle.v0.3+json" => Some(BundleVersion::V03),
            _ => None,
        }
    }
}

/// A parsed bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Format version.
    pub version: BundleVersion,
    /// Key or certificates, log entries, timestamps.
    pub verification_material: VerificationMaterial,
    /// What was signed and the signature.
    pub content: Content,
}

/// `verificationMaterial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationMaterial {
    /// Who signed.
    pub signer: Signer,
    /// `tlogEntries`.
    pub tlog_entries: Vec<TlogEntry>,
    /// `timestampVerificationData.rfc3161Timestamps[].signedTimestamp` (DER, unverified).
    pub rfc3161_timestamps: Vec<Vec<u8>>,
}

/// The signer as the bundle names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// `publicKey.hint`: the verifier must already hold the key (possibly empty).
    PublicKeyHint(String),
    /// `x509CertificateChain.certificates[].rawBytes` (DER, leaf first, never empty).
    CertificateChain(Vec<Vec<u8>>),
    /// `certificate.rawBytes` (DER; v0.3).
    Certificate(Vec<u8>),
}

impl Signer {
    /// The leaf certificate (DER), if the signer is a certificate.
    pub fn leaf_certificate(&self) -> Option<&[u8]> {
        match self {
            Signer::PublicKeyHint(_) => None,
            Signer::CertificateChain(chain) => chain.first().map(Vec::as_slice),
            Signer::Certificate(der) => Some(der),
        }
    }
}

/// One `tlogEntries[]` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogEntry {
    /// `logIndex` (global index across log shards).
    pub log_index: u64,
    /// `logId.keyId`: identifies the log in the trusted root.
    pub log_id: Vec<u8>,
    /// `kindVersion.kind`, e.g. `hashedrekord`.
    pub kind: String,
    /// `kindVersion.version`, e.g. `0.0.1`.
    pub version: String,
    /// `integratedTime` (unix seconds; Rekor v1 only, `None` when absent or 0).
    pub integrated_time: Option<u64>,
    /// `inclusionPromise.signedEntryTimestamp` (Rekor v1).
    pub signed_entry_timestamp: Option<Vec<u8>>,
    /// `inclusionProof`.
    pub inclusion_proof: Option<InclusionProof>,
    /// `canonicalizedBody`: the entry as the log stored it.
    pub canonicalized_body: Vec<u8>,
}

/// `inclusionProof`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// `logIndex` (index within this log shard's tree).
    pub log_index: u64,
    /// `rootHash`.
    pub root_hash: Vec<u8>,
    /// `treeSize`.
    pub tree_size: u64,
    /// `hashes`, leaf to root.
    pub hashes: Vec<Vec<u8>>,
    /// `checkpoint.envelope`: the signed note, as text.
    pub checkpoint: Option<String>,
}

/// `content`: the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// `messageSignature`: a signature over an artifact's bytes.
    MessageSignature {
        /// `messageDigest` (a hint, not authenticated): algorithm name and digest.
        digest: Option<(String, Vec<u8>)>,
        /// `signature`.
        signature: Vec<u8>,
    },
    /// `dsseEnvelope`.
    DsseEnvelope(DsseEnvelope),
}

/// A DSSE envelope as a bundle carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsseEnvelope {
    /// `payloadType`.
    pub payload_type: String,
    /// `payload` (decoded).
    pub payload: Vec<u8>,
    /// `signatures[]`: `(keyid, sig)`.
    pub signatures: Vec<(String, Vec<u8>)>,
}

/// Parses a bundle. Checks sizes, types and encodings; verifies nothing.
pub fn parse(bytes: &[u8]) -> Result<Bundle, BundleError> {
    if bytes.len() > MAX_BUNDLE_SIZE {
        return Err(BundleError::TooLarge {
            size: bytes.len(),
            limit: MAX_BUNDLE_SIZE,
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| BundleError::Json {
        reason: e.to_string(),
    })?;
    // Top-level fields are named bare ("mediaType"), so the top level's own path is empty:
    // name it in this one error.
    let root = as_obj(&value, "").map_err(|_| FieldError::WrongType {
        field: "(top level)".into(),
        expected: "an object",
    })?;
    let media_type = root.req_str("mediaType")?;
    let version = BundleVersion::from_media_type(media_type).ok_or_else(|| {
        BundleError::UnknownMediaType {
            found: media_type.chars().take(200).collect(),
        }
    })?;
    let verification_material = parse_material(as_obj(
        root.req("verificationMaterial")?,
        "verificationMaterial",
    )?)?;
    let content = match (root.opt("messageSignature"), root.opt("dsseEnvelope")) {
        (Some(m), None) => parse_message_signature(as_obj(m, "messageSignature")?)?,
        (None, Some(d)) => Content::DsseEnvelope(parse_dsse(as_obj(d, "dsseEnvelope")?)?),
        (None, None) => {
            return Err(FieldError::Missing {
                field: "messageSignature|dsseEnvelope".into(),
            }
            .into());
        }
        (Some(_), Some(_)) => {
            return Err(FieldError::Invalid {
                field: "content".into(),
                reason: "both messageSignature and dsseEnvelope".into(),
            }
            .into());
        }
    };
    Ok(Bundle {
        version,
        verification_material,
        content,
    })
}

fn parse_material(m: Obj<'_>) -> Result<VerificationMaterial, FieldError> {
    let signer = match (
        m.opt("publicKey"),
        m.opt("x509CertificateChain"),
        m.opt("certificate"),
    ) {
        (Some(pk), None, None) => {
            let p = path(m.path, "publicKey");
            let pk = as_obj(pk, &p)?;
            Signer::PublicKeyHint(pk.opt_str("hint")?.unwrap_or_default().to_owned())
        }
        (None, Some(chain), None) => {
            let p = path(m.path, "x509CertificateChain");
            let chain = as_obj(chain, &p)?;
            let certs = chain.arr("certificates", MAX_ITEMS)?;
            if certs.is_empty() {
                return Err(FieldError::Invalid {
                    field: path(&p, "certificates"),
                    reason: "empty certificate chain".into(),
                });
            }
            let mut out = Vec::with_capacity(certs.len());
            for (i, c) in certs.iter().enumerate() {
                let cp = format!("{p}.certificates[{i}]");
                out.push(as_obj(c, &cp)?.req_bytes("rawBytes")?);
            }
            Signer::CertificateChain(out)
        }
        (None, None, Some(cert)) => {
            let p = path(m.path, "certificate");
            Signer::Certificate(as_obj(cert, &p)?.req_bytes("rawBytes")?)
        }
        (None, None, None) => {
            return Err(FieldError::Missing {
                field: path(m.path, "publicKey|x509CertificateChain|certificate"),
            });
        }
        _ => {
            return Err(FieldError::Invalid {
                field: m.path.to_owned(),
                reason: "more than one of publicKey, x509CertificateChain, certificate".into(),
            });
        }
    };
    let mut tlog_entries = Vec::new();
    for (i, e) in m.arr("tlogEntries", MAX_TLOG_ENTRIES)?.iter().enumerate() {
        let p = format!("{}.tlogEntries[{i}]", m.path);
        tlog_entries.push(parse_tlog_entry(as_obj(e, &p)?)?);
    }
    let mut rfc3161_timestamps = Vec::new();
    if let Some(tvd) = m.opt("timestampVerificationData") {
        let p = path(m.path, "timestampVerificationData");
        let tvd = as_obj(tvd, &p)?;
        for (i, t) in tvd.arr("rfc3161Timestamps", MAX_ITEMS)?.iter().enumerate() {
            let tp = format!("{p}.rfc3161Timestamps[{i}]");
            rfc3161_timestamps.push(as_obj(t, &tp)?.req_bytes("signedTimestamp")?);
        }
    }
    Ok(VerificationMaterial {
        signer,
        tlog_entries,
        rfc3161_timestamps,
    })
}

fn parse_tlog_entry(e: Obj<'_>) -> Result<TlogEntry, FieldError> {
    let log_index = e.req_u63("logIndex")?;
    let lp = path(e.path, "logId");
    let log_id = as_obj(e.req("logId")?, &lp)?.req_bytes("keyId")?;
    let kp = path(e.path, "kindVersion");
    let kv = as_obj(e.req("kindVersion")?, &kp)?;
    let kind = kv.req_str("kind")?.to_owned();
    let version = kv.req_str("version")?.to_owned();
    let integrated_time = e.opt_u63("integratedTime")?.filter(|t| *t != 0);
    let signed_entry_timestamp = match e.opt("inclusionPromise") {
        None => None,
        Some(p) => {
            let pp = path(e.path, "inclusionPromise");
            Some(as_obj(p, &pp)?.req_bytes("signedEntryTimestamp")?)
        }
    };
    let inclusion_proof = match e.opt("inclusionProof") {
        None => None,
        Some(p) => {
            let pp = path(e.path, "inclusionProof");
            Some(parse_inclusion_proof(as_obj(p, &pp)?)?)
        }
    };
    let canonicalized_body = e.req_bytes("canonicalizedBody")?;
    Ok(TlogEntry {
        log_index,
        log_id,
        kind,
        version,
        integrated_time,
        signed_entry_timestamp,
        inclusion_proof,
        canonicalized_body,
    })
}

fn parse_inclusion_proof(p: Obj<'_>) -> Result<InclusionProof, FieldError> {
    let log_index = p.req_u63("logIndex")?;
    let root_hash = p.req_bytes("rootHash")?;
    let tree_size = p.req_u63("treeSize")?;
    let mut hashes = Vec::new();
    for (i, h) in p.arr("hashes", MAX_PROOF_HASHES)?.iter().enumerate() {
        let field = format!("{}.hashes[{i}]", p.path);
        match h {
            Value::String(s) => hashes.push(super::json::b64(&field, s)?),
            _ => {
                return Err(FieldError::WrongType {
                    field,
                    expected: "a string",
                });
            }
        }
    }
    let checkpoint = match p.opt("checkpoint") {
        None => None,
        Some(c) => {
            let cp = path(p.path, "checkpoint");
            Some(as_obj(c, &cp)?.req_str("envelope")?.to_owned())
        }
    };
    Ok(InclusionProof {
        log_index,
        root_hash,
        tree_size,
        hashes,
        checkpoint,
    })
}

fn parse_message_signature(m: Obj<'_>) -> Result<Content, FieldError> {
    let digest = match m.opt("messageDigest") {
        None => None,
        Some(d) => {
            let dp = path(m.path, "messageDigest");
            let d = as_obj(d, &dp)?;
            Some((
                d.opt_str("algorithm")?.unwrap_or_default().to_owned(),
                d.req_bytes("digest")?,
            ))
        }
    };
    Ok(Content::MessageSignature {
        digest,
        signature: m.req_bytes("signature")?,
    })
}

fn parse_dsse(d: Obj<'_>) -> Result<DsseEnvelope, FieldError> {
    let payload_type = d.req_str("payloadType")?.to_owned();
    let payload = d.req_bytes("payload")?;
    let mut signatures = Vec::new();
    for (i, s) in d.arr("signatures", MAX_ITEMS)?.iter().enumerate() {
        let sp = format!("{}.signatures[{i}]", d.path);
        let s = as_obj(s, &sp)?;
        signatures.push((
            s.opt_str("keyid")?.unwrap_or_default().to_owned(),
            s.req_bytes("sig")?,
        ));
    }
    if signatures.is_empty() {
        return Err(FieldError::Missing {
            field: path(d.path, "signatures"),
        });
    }
    Ok(DsseEnvelope {
        payload_type,
        payload,
        signatures,
    })
}
