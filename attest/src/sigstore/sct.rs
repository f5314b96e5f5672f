//! Signed certificate timestamps embedded in a Fulcio leaf certificate (RFC 6962 §3.3),
//! verified against the trusted root's CT logs (`ctlogs`).
//!
//! The leaf's SCT list extension (1.3.6.1.4.1.11129.2.4.2) holds a DER OCTET STRING whose
//! content is a TLS-encoded `SignedCertificateTimestampList`. It is parsed strictly: every TLS
//! length is checked against the bytes that remain, every element must be consumed exactly,
//! only `v1` SCTs, at most [`MAX_SCTS`]. Each SCT signs (RFC 6962 §3.2) a `precert_entry`:
//! the SHA-256 of the issuer's SubjectPublicKeyInfo and the precertificate TBSCertificate,
//! which is the leaf's TBSCertificate without the SCT list extension, re-encoded in DER.
//!
//! Policy, as sigstore-go and sigstore-python: at least one SCT must verify with the key of a
//! trusted CT log, matched by `logId.keyId`, whose `validFor` (closed interval) contains the
//! SCT's timestamp. An SCT from a log the trusted root does not know is skipped; when none
//! verifies, the error names every SCT's log id and what was wrong with it.

use sha2::{Digest, Sha256};

use super::cert::{
    self, CertError, Hash, OID_SCT_LIST, PublicKey, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE,
    expect, read_tlv, write_tlv,
};
use super::trust::{Timestamp, TransparencyLog, TrustedRoot};

/// Most SCTs read from one certificate (a Fulcio certificate carries one or two).
pub const MAX_SCTS: usize = 64;

/// `Version.v1` (RFC 6962 §3.2).
const SCT_VERSION_V1: u8 = 0;
/// `SignatureType.certificate_timestamp`.
const SIGNATURE_TYPE_CERTIFICATE_TIMESTAMP: u8 = 0;
/// `LogEntryType.precert_entry`, a `uint16`.
const ENTRY_TYPE_PRECERT: [u8; 2] = [0, 1];
/// `HashAlgorithm` values (RFC 5246 §7.4.1.4.1).
const HASH_SHA256: u8 = 4;
const HASH_SHA384: u8 = 5;
const HASH_SHA512: u8 = 6;
/// `SignatureAlgorithm` values (RFC 5246 §7.4.1.4.1).
const SIGNATURE_RSA: u8 = 1;
const SIGNATURE_ECDSA: u8 = 3;
/// TBSCertificate's `extensions [3] EXPLICIT`.
const TAG_EXTENSIONS: u8 = 0xa3;
const TAG_BOOLEAN: u8 = 0x01;

/// Why the embedded SCTs do not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SctError {
    /// The leaf certificate does not parse far enough to find its extensions.
    #[error("leaf certificate: {0}")]
    Certificate(#[from] CertError),
    /// The leaf has no SCT list extension.
    #[error("certificate has no embedded SCT list (extension 1.3.6.1.4.1.11129.2.4.2)")]
    NoSctList,
    /// The SCT list extension (or the extensions around it) does not parse.
    #[error("malformed embedded SCT list: {0}")]
    Malformed(&'static str),
    /// The issuer whose key the SCTs are bound to is unknown: the leaf does not chain to a
    /// trusted certificate authority, or that authority has no certificate with the leaf's
    /// issuer name.
    #[error("cannot find the leaf's issuer for its SCTs: {0}")]
    NoIssuer(&'static str),
    /// No SCT verifies against a trusted CT log.
    #[error("no embedded SCT verifies against a trusted CT log: {}", describe(.rejected))]
    NoneVerified {
        /// Every SCT of the list, with why it was not accepted.
        rejected: Vec<Rejected>,
    },
}

/// One SCT that was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The SCT's log id.
    pub log_id: [u8; 32],
    /// The SCT's timestamp (unix milliseconds).
    pub timestamp_ms: u64,
    /// Why.
    pub reason: Reason,
}

/// Why one SCT was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// No CT log of the trusted root has the SCT's log id (the SCT is skipped).
    #[error("no trusted CT log has this log id")]
    UnknownLog,
    /// The log's key was not valid at the SCT's timestamp.
    #[error("CT log key not valid at the SCT's timestamp (valid {window})")]
    OutsideValidity {
        /// The log key's validity, for the message.
        window: String,
    },
    /// The log's key does not parse or is of an unsupported type.
    #[error("CT log key unusable: {0}")]
    Key(CertError),
    /// The SCT's hash / signature algorithm pair is unsupported or does not fit the log's key.
    #[error("signature algorithm (hash {hash}, signature {signature}) unsupported for a {key} key")]
    Algorithm {
        /// The `HashAlgorithm` byte.
        hash: u8,
        /// The `SignatureAlgorithm` byte.
        signature: u8,
        /// The log key's type.
        key: &'static str,
    },
    /// The precertificate is longer than a `uint24`, or the SCT's extensions than a `uint16`:
    /// the signed data cannot be encoded.
    #[error("precertificate or SCT extensions too long to encode")]
    TooLong,
    /// The signature does not verify with the log's key.
    #[error("signature does not verify with the {0} key")]
    BadSignature(&'static str),
}

fn describe(rejected: &[Rejected]) -> String {
    if rejected.is_empty() {
        return "the list is empty".into();
    }
    rejected
        .iter()
        .map(|r| {
            format!(
                "log {} at {} ms: {}",
                hex::encode(r.log_id),
                r.timestamp_ms,
                r.reason
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One parsed SCT (RFC 6962 §3.2 `SignedCertificateTimestamp`, v1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sct<'a> {
    /// `id`: SHA-256 of the log's key.
    pub log_id: [u8; 32],
    /// `timestamp`: unix milliseconds.
    pub timestamp_ms: u64,
    /// `extensions` (opaque; Static CT logs put the leaf index here).
    pub extensions: &'a [u8],
    /// `signature.algorithm.hash`.
    pub hash_algorithm: u8,
    /// `signature.algorithm.signature`.
    pub signature_algorithm: u8,
    /// `signature.signature`.
    pub signature: &'a [u8],
}

/// An SCT that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedSct {
    /// The CT log's id.
    pub log_id: [u8; 32],
    /// The timestamp the log signed (unix milliseconds).
    pub timestamp_ms: u64,
}

/// Verifies the SCTs embedded in `leaf` against `root.ctlogs`. The issuer is the certificate,
/// in the chain of the trusted certificate authority the leaf chains to, whose subject is the
/// leaf's issuer name. That authority is the one the leaf chains to at the first of `times`
/// (the verified signing times, unix seconds) where it does, else at the leaf's `notBefore`:
/// the SCTs are then still checked, and reported, on their own when the chain fails at the
/// signing times (which the chain check reports).
pub fn verify_embedded(
    leaf: &[u8],
    root: &TrustedRoot,
    times: &[i64],
) -> Result<Vec<VerifiedSct>, SctError> {
    let info = cert::parse(leaf)?;
    let authority = times
        .iter()
        .chain(std::iter::once(&info.not_before))
        .find_map(|&t| cert::verify_chain_to(leaf, root, t).ok())
        .ok_or(SctError::NoIssuer(
            "the leaf does not chain to a trusted certificate authority at any signing time or \
             at its notBefore",
        ))?;
    let issuer = authority
        .cert_chain
        .iter()
        .filter_map(|der| cert::parse(der).ok())
        .find(|c| c.subject == info.issuer)
        .ok_or(SctError::NoIssuer(
            "the certificate authority's chain has no certificate named as the leaf's issuer",
        ))?;
    verify(leaf, &issuer.spki, &root.ctlogs)
}

/// Verifies the SCTs embedded in `leaf`, issued by the holder of `issuer_spki` (DER
/// SubjectPublicKeyInfo), against `ctlogs`.
pub fn verify(
    leaf: &[u8],
    issuer_spki: &[u8],
    ctlogs: &[TransparencyLog],
) -> Result<Vec<VerifiedSct>, SctError> {
    let (tbs, extension) = precert_tbs(leaf)?;
    let scts = parse_extension(extension)?;
    let issuer_key_hash: [u8; 32] = Sha256::digest(issuer_spki).into();
    check(&scts, &tbs, &issuer_key_hash, ctlogs)
}

/// Applies the policy to parsed SCTs over `precert_tbs`: every SCT from a known log is
/// checked; at least one must verify.
pub fn check(
    scts: &[Sct<'_>],
    precert_tbs: &[u8],
    issuer_key_hash: &[u8; 32],
    ctlogs: &[TransparencyLog],
) -> Result<Vec<VerifiedSct>, SctError> {
    let mut verified = Vec::new();
    let mut rejected = Vec::new();
    for sct in scts {
        match check_one(sct, precert_tbs, issuer_key_hash, ctlogs) {
            Ok(()) => verified.push(VerifiedSct {
                log_id: sct.log_id,
                timestamp_ms: sct.timestamp_ms,
            }),
            Err(reason) => rejected.push(Rejected {
                log_id: sct.log_id,
                timestamp_ms: sct.timestamp_ms,
                reason,
            }),
        }
    }
    if verified.is_empty() {
        return Err(SctError::NoneVerified { rejected });
    }
    Ok(verified)
}

/// One SCT against every trusted CT log with its log id (a log may be listed more than once,
/// with different validity windows); the first log's reason when none accepts it.
fn check_one(
    sct: &Sct<'_>,
    precert_tbs: &[u8],
    issuer_key_hash: &[u8; 32],
    ctlogs: &[TransparencyLog],
) -> Result<(), Reason> {
    let message = signed_data(sct, issuer_key_hash, precert_tbs).ok_or(Reason::TooLong)?;
    let mut first_reason = None;
    for log in ctlogs.iter().filter(|l| l.log_id == sct.log_id) {
        match check_with_log(sct, &message, log) {
            Ok(()) => return Ok(()),
            Err(reason) => {
                first_reason.get_or_insert(reason);
            }
        }
    }
    Err(first_reason.unwrap_or(Reason::UnknownLog))
}

fn check_with_log(sct: &Sct<'_>, message: &[u8], log: &TransparencyLog) -> Result<(), Reason> {
    if !log.valid_for.contains(timestamp(sct.timestamp_ms)) {
        return Err(Reason::OutsideValidity {
            window: format!("{:?}", log.valid_for),
        });
    }
    let key = if log.key_details.starts_with("PKCS1_RSA") {
        PublicKey::from_pkcs1_rsa(&log.public_key)
    } else {
        PublicKey::from_spki(&log.public_key)
    }
    .map_err(Reason::Key)?;
    let hash = match (sct.hash_algorithm, sct.signature_algorithm) {
        (HASH_SHA256, SIGNATURE_ECDSA) if key.is_ecdsa() => Hash::Sha256,
        (HASH_SHA384, SIGNATURE_ECDSA) if key.is_ecdsa() => Hash::Sha384,
        (HASH_SHA256, SIGNATURE_RSA) if key.is_rsa() => Hash::Sha256,
        (HASH_SHA384, SIGNATURE_RSA) if key.is_rsa() => Hash::Sha384,
        (HASH_SHA512, SIGNATURE_RSA) if key.is_rsa() => Hash::Sha512,
        (hash, signature) => {
            return Err(Reason::Algorithm {
                hash,
                signature,
                key: key.name(),
            });
        }
    };
    key.verify_with(hash, message, sct.signature)
        .map_err(|_| Reason::BadSignature(key.name()))
}

/// Unix milliseconds as a [`Timestamp`].
fn timestamp(ms: u64) -> Timestamp {
    Timestamp {
        secs: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: u32::try_from(ms % 1000).map_or(0, |m| m * 1_000_000),
    }
}

/// The bytes an SCT signs for a precertificate (RFC 6962 §3.2 `digitally-signed struct`);
/// `None` when the TBSCertificate is longer than a `uint24` (or the extensions than a
/// `uint16`).
pub fn signed_data(
    sct: &Sct<'_>,
    issuer_key_hash: &[u8; 32],
    precert_tbs: &[u8],
) -> Option<Vec<u8>> {
    let tbs_len = u32::try_from(precert_tbs.len())
        .ok()
        .filter(|&n| n < 1 << 24)?
        .to_be_bytes();
    let ext_len = u16::try_from(sct.extensions.len()).ok()?.to_be_bytes();
    let mut out =
        Vec::with_capacity(2 + 8 + 2 + 32 + 3 + precert_tbs.len() + 2 + sct.extensions.len());
    out.push(SCT_VERSION_V1);
    out.push(SIGNATURE_TYPE_CERTIFICATE_TIMESTAMP);
    out.extend_from_slice(&sct.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&ENTRY_TYPE_PRECERT);
    out.extend_from_slice(issuer_key_hash);
    out.extend_from_slice(&tbs_len[1..]);
    out.extend_from_slice(precert_tbs);
    out.extend_from_slice(&ext_len);
    out.extend_from_slice(sct.extensions);
    Some(out)
}

/// Splits a DER certificate into the precertificate TBSCertificate (its TBSCertificate
/// without the SCT list extension; the extensions field dropped if nothing else is left in
/// it) and the SCT list extension's `extnValue` content.
pub fn precert_tbs(leaf: &[u8]) -> Result<(Vec<u8>, &[u8]), SctError> {
    let (certificate, rest) = expect(leaf, TAG_SEQUENCE, "certificate is not a SEQUENCE")?;
    if !rest.is_empty() {
        return Err(CertError::Malformed("trailing data after certificate").into());
    }
    let (tbs, _) = expect(certificate.content, TAG_SEQUENCE, "tbsCertificate")?;
    let mut fields = Vec::with_capacity(tbs.content.len());
    let mut sct_list = None;
    let mut seen_extensions = false;
    let mut r = tbs.content;
    while !r.is_empty() {
        let (field, after) = read_tlv(r)?;
        r = after;
        if field.tag != TAG_EXTENSIONS {
            fields.extend_from_slice(field.whole);
            continue;
        }
        if seen_extensions {
            return Err(SctError::Malformed("two extensions fields"));
        }
        seen_extensions = true;
        let (extensions, trailing) = expect(field.content, TAG_SEQUENCE, "extensions")?;
        if !trailing.is_empty() {
            return Err(SctError::Malformed("trailing data after extensions"));
        }
        let mut kept = Vec::with_capacity(extensions.content.len());
        let mut e = extensions.content;
        while !e.is_empty() {
            let (extension, after) = expect(e, TAG_SEQUENCE, "extension")?;
            e = after;
            match sct_list_value(extension.content)? {
                Some(value) if sct_list.is_none() => sct_list = Some(value),
                Some(_) => return Err(SctError::Malformed("two SCT list extensions")),
                None => kept.extend_from_slice(extension.whole),
            }
        }
        if !kept.is_empty() {
            let mut sequence = Vec::with_capacity(kept.len() + 6);
            write_tlv(TAG_SEQUENCE, &kept, &mut sequence);
            write_tlv(TAG_EXTENSIONS, &sequence, &mut fields);
        }
    }
    let sct_list = sct_list.ok_or(SctError::NoSctList)?;
    let mut precert = Vec::with_capacity(fields.len() + 6);
    write_tlv(TAG_SEQUENCE, &fields, &mut precert);
    Ok((precert, sct_list))
}

/// The `extnValue` content of an Extension's content when it is the SCT list extension.
fn sct_list_value(extension: &[u8]) -> Result<Option<&[u8]>, SctError> {
    let (oid, rest) = expect(extension, TAG_OID, "extension OID")?;
    if oid.content != OID_SCT_LIST {
        return Ok(None);
    }
    let (mut value, mut rest) = read_tlv(rest)?;
    if value.tag == TAG_BOOLEAN {
        (value, rest) = read_tlv(rest)?;
    }
    if value.tag != TAG_OCTET_STRING || !rest.is_empty() {
        return Err(SctError::Malformed("SCT list extension value"));
    }
    Ok(Some(value.content))
}

/// Parses the SCT list extension's `extnValue` content: a DER OCTET STRING holding the
/// TLS-encoded list.
pub fn parse_extension(value: &[u8]) -> Result<Vec<Sct<'_>>, SctError> {
    let (inner, rest) =
        read_tlv(value).map_err(|_| SctError::Malformed("not a DER OCTET STRING"))?;
    if inner.tag != TAG_OCTET_STRING || !rest.is_empty() {
        return Err(SctError::Malformed("not a DER OCTET STRING"));
    }
    parse_list(inner.content)
}

/// Parses a TLS-encoded `SignedCertificateTimestampList` (RFC 6962 §3.3): at least one and
/// at most [`MAX_SCTS`] `v1` SCTs, every byte accounted for.
pub fn parse_list(tls: &[u8]) -> Result<Vec<Sct<'_>>, SctError> {
    let mut outer = Reader(tls);
    let mut list = Reader(outer.vec16("list length")?);
    outer.end("data after the list")?;
    if list.0.is_empty() {
        return Err(SctError::Malformed("empty list"));
    }
    let mut scts = Vec::new();
    while !list.0.is_empty() {
        if scts.len() == MAX_SCTS {
            return Err(SctError::Malformed("more SCTs than MAX_SCTS"));
        }
        let mut item = Reader(list.vec16("SCT length")?);
        scts.push(parse_sct(&mut item)?);
        item.end("data after an SCT")?;
    }
    Ok(scts)
}

fn parse_sct<'a>(r: &mut Reader<'a>) -> Result<Sct<'a>, SctError> {
    if r.take(1, "SCT version")? != [SCT_VERSION_V1] {
        return Err(SctError::Malformed("SCT version is not v1"));
    }
    let mut log_id = [0u8; 32];
    log_id.copy_from_slice(r.take(32, "log id")?);
    let mut time = [0u8; 8];
    time.copy_from_slice(r.take(8, "timestamp")?);
    let extensions = r.vec16("extensions")?;
    let algorithm = r.take(2, "signature algorithm")?;
    let (hash_algorithm, signature_algorithm) = match algorithm {
        [h, s] => (*h, *s),
        _ => return Err(SctError::Malformed("signature algorithm")),
    };
    let signature = r.vec16("signature")?;
    Ok(Sct {
        log_id,
        timestamp_ms: u64::from_be_bytes(time),
        extensions,
        hash_algorithm,
        signature_algorithm,
        signature,
    })
}

/// A bounded reader over TLS-encoded bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SctError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(SctError::Malformed(what))?;
        self.0 = rest;
        Ok(head)
    }

    /// `opaque <0..2^16-1>`: a `uint16` length, then that many bytes.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], SctError> {
        let len = match self.take(2, what)? {
            [hi, lo] => usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => return Err(SctError::Malformed(what)),
        };
        self.take(len, what)
    }

    fn end(&self, what: &'static str) -> Result<(), SctError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SctError::Malformed(what))
        }
    }
}
