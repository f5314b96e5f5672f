//! Fulcio certificates: a small DER reader for what the policy needs from the leaf (validity,
//! SubjectPublicKeyInfo, subject alternative names, Fulcio extensions), chain verification to
//! the trusted root's certificate authorities with `rustls-webpki`, and signature verification
//! with `aws-lc-rs`.
//!
//! The reader only reads: every length is checked against its input, no panics, no recursion
//! beyond the fixed structure of a certificate.

use std::time::Duration;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use pki_types::{CertificateDer, UnixTime};

use super::trust::{self, CertificateAuthority, Timestamp, TrustedRoot};

/// Why a certificate or a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The DER does not parse as an X.509 certificate (or a field of one).
    #[error("malformed certificate: {0}")]
    Malformed(&'static str),
    /// No trusted certificate authority valid at `time` issued the certificate.
    #[error("certificate does not chain to a certificate authority trusted at {time}: {detail}")]
    Chain {
        /// The signing time (unix seconds).
        time: i64,
        /// What rustls-webpki (or the validity windows) said, per authority.
        detail: String,
    },
    /// A public key type this verifier does not support.
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
    /// The signature does not verify with the key.
    #[error("signature does not verify with the {0} key")]
    BadSignature(&'static str),
}

/// One DER element.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tlv<'a> {
    pub(super) tag: u8,
    pub(super) content: &'a [u8],
    /// Tag, length and content.
    pub(super) whole: &'a [u8],
}

/// Reads one element from the front of `input`; returns it and the rest. Only single-byte
/// tags and definite lengths up to 2^32 (DER).
pub(super) fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), CertError> {
    let bad = CertError::Malformed("truncated or invalid DER");
    let (&tag, rest) = input.split_first().ok_or(bad.clone())?;
    if tag & 0x1f == 0x1f {
        return Err(CertError::Malformed("multi-byte DER tag"));
    }
    let (&first, mut rest) = rest.split_first().ok_or(bad.clone())?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad);
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(bad);
    }
    let header = input.len() - rest.len();
    let (content, after) = rest.split_at(len);
    Ok((
        Tlv {
            tag,
            content,
            whole: &input[..header + len],
        },
        after,
    ))
}

/// Appends one DER element (`tag`, definite length in the shortest form, `content`) to `out`.
pub(super) fn write_tlv(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    // The big-endian length without its leading zero bytes.
    let bytes = content.len().to_be_bytes();
    let significant = &bytes[bytes.iter().take_while(|&&b| b == 0).count()..];
    match significant {
        [] => out.push(0),
        [short] if *short < 0x80 => out.push(*short),
        long => {
            // 1..=8 bytes (a `usize`), so the cast is exact.
            out.push(0x80 | long.len() as u8);
            out.extend_from_slice(long);
        }
    }
    out.extend_from_slice(content);
}

/// Reads an element with the given tag.
pub(super) fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(Tlv<'a>, &'a [u8]), CertError> {
    let (tlv, rest) = read_tlv(input)?;
    if tlv.tag != tag {
        return Err(CertError::Malformed(what));
    }
    Ok((tlv, rest))
}

pub(super) const TAG_SEQUENCE: u8 = 0x30;
pub(super) const TAG_OID: u8 = 0x06;
const TAG_BOOLEAN: u8 = 0x01;
pub(super) const TAG_OCTET_STRING: u8 = 0x04;
const TAG_BIT_STRING: u8 = 0x03;

/// OID 2.5.29.17 subjectAltName.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// OID 1.3.6.1.4.1.57264.1 (Fulcio's arc), without the last arc.
const OID_FULCIO_ARC: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xbf, 0x30, 0x01];
/// OID 1.3.6.1.4.1.11129.2.4.2: embedded SCT list.
pub const OID_SCT_LIST: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0xd6, 0x79, 0x02, 0x04, 0x02];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-kp-codeSigning, 1.3.6.1.5.5.7.3.3.
const OID_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// The dotted form of a DER OID body (`None` if malformed).
pub fn oid_to_string(oid: &[u8]) -> Option<String> {
    let (&first, rest) = oid.split_first()?;
    if first >= 0x80 {
        return None;
    }
    let mut out = format!("{}.{}", first / 40, first % 40);
    let mut acc: u64 = 0;
    let mut pending = false;
    for &b in rest {
        if acc > (u64::MAX >> 7) {
            return None;
        }
        acc = (acc << 7) | u64::from(b & 0x7f);
        pending = true;
        if b & 0x80 == 0 {
            out.push_str(&format!(".{acc}"));
            acc = 0;
            pending = false;
        }
    }
    if pending { None } else { Some(out) }
}

/// One Fulcio extension (OID 1.3.6.1.4.1.57264.1.N).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FulcioExtension {
    /// The last arc, `N` (1 = issuer v1, 8 = issuer v2, 9 = build signer URI, ...).
    pub arc: u32,
    /// The value as text: raw bytes for arcs 1-6 (v1 extensions), the DER string's content
    /// for the others. `None` when it is not UTF-8 (or not a DER string for arc >= 8).
    pub value: Option<String>,
}

/// What the verifier reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// `notBefore` (unix seconds).
    pub not_before: i64,
    /// `notAfter` (unix seconds).
    pub not_after: i64,
    /// DER of the subject Name.
    pub subject: Vec<u8>,
    /// DER of the issuer Name.
    pub issuer: Vec<u8>,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// SAN URIs.
    pub san_uris: Vec<String>,
    /// SAN rfc822 names (emails).
    pub san_emails: Vec<String>,
    /// Fulcio extensions, in certificate order.
    pub fulcio: Vec<FulcioExtension>,
    /// Whether it carries an embedded SCT list extension.
    pub has_sct_list: bool,
}

impl CertInfo {
    /// A Fulcio extension's value by its last arc.
    pub fn fulcio(&self, arc: u32) -> Option<&str> {
        self.fulcio
            .iter()
            .find(|e| e.arc == arc)
            .and_then(|e| e.value.as_deref())
    }

    /// The OIDC issuer: extension 1.8 (v2), else 1.1 (v1).
    pub fn oidc_issuer(&self) -> Option<&str> {
        self.fulcio(8).or_else(|| self.fulcio(1))
    }

    /// Whether issuer and subject names are equal (a self-issued, e.g. root, certificate).
    pub fn self_issued(&self) -> bool {
        self.subject == self.issuer
    }

    /// The subject's common name (OID 2.5.4.3; the first one, when it is a UTF-8, printable
    /// or IA5 string), e.g. a client certificate's name when it has no SAN URI.
    pub fn subject_common_name(&self) -> Option<String> {
        const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
        let (name, _) = expect(&self.subject, TAG_SEQUENCE, "subject").ok()?;
        let mut rdns = name.content;
        while !rdns.is_empty() {
            let (set, after) = read_tlv(rdns).ok()?;
            rdns = after;
            let mut atvs = set.content;
            while !atvs.is_empty() {
                let (atv, after) = read_tlv(atvs).ok()?;
                atvs = after;
                let (oid, value) = expect(atv.content, 0x06, "attribute type").ok()?;
                let (value, _) = read_tlv(value).ok()?;
                if oid.content == OID_CN && matches!(value.tag, 0x0c | 0x13 | 0x16) {
                    return String::from_utf8(value.content.to_vec()).ok();
                }
            }
        }
        None
    }
}

/// Parses an X.509 time (UTCTime or GeneralizedTime, `Z` form only) to unix seconds.
pub(super) fn parse_time(tlv: &Tlv<'_>) -> Result<i64, CertError> {
    let bad = CertError::Malformed("validity time");
    let s = std::str::from_utf8(tlv.content).map_err(|_| bad.clone())?;
    if !s.is_ascii() {
        return Err(bad);
    }
    let full = match (tlv.tag, s.len()) {
        (0x17, 13) => {
            let yy: u32 = s.get(..2).and_then(|y| y.parse().ok()).ok_or(bad.clone())?;
            let century = if yy >= 50 { "19" } else { "20" };
            format!("{century}{s}")
        }
        (0x18, 15) => s.to_owned(),
        // GeneralizedTime with fractional seconds (RFC 3161 genTime): truncated to the second.
        (0x18, n) if n > 16 && s.as_bytes().get(14) == Some(&b'.') => {
            let frac = &s[15..n - 1];
            if !s.ends_with('Z') || frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad);
            }
            format!("{}Z", &s[..14])
        }
        _ => return Err(bad),
    };
    if !full.ends_with('Z') || !full[..14].bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &full[0..4],
        &full[4..6],
        &full[6..8],
        &full[8..10],
        &full[10..12],
        &full[12..14]
    );
    trust::parse_rfc3339(&rfc3339).map(|t| t.secs).ok_or(bad)
}

/// Reads what the verifier needs from a DER certificate.
pub fn parse(der: &[u8]) -> Result<CertInfo, CertError> {
    let (cert, rest) = expect(der, TAG_SEQUENCE, "certificate is not a SEQUENCE")?;
    if !rest.is_empty() {
        return Err(CertError::Malformed("trailing data after certificate"));
    }
    let (tbs, _) = expect(cert.content, TAG_SEQUENCE, "tbsCertificate")?;
    let mut r = tbs.content;
    let (first, after) = read_tlv(r)?;
    if first.tag == 0xa0 {
        r = after;
    }
    let (_serial, r) = expect(r, 0x02, "serialNumber")?;
    let (_alg, r) = expect(r, TAG_SEQUENCE, "signature algorithm")?;
    let (issuer, r) = expect(r, TAG_SEQUENCE, "issuer")?;
    let (validity, r) = expect(r, TAG_SEQUENCE, "validity")?;
    let (subject, r) = expect(r, TAG_SEQUENCE, "subject")?;
    let (spki, mut r) = expect(r, TAG_SEQUENCE, "subjectPublicKeyInfo")?;
    let (nb, v) = read_tlv(validity.content)?;
    let (na, _) = read_tlv(v)?;
    let mut info = CertInfo {
        not_before: parse_time(&nb)?,
        not_after: parse_time(&na)?,
        subject: subject.whole.to_vec(),
        issuer: issuer.whole.to_vec(),
        spki: spki.whole.to_vec(),
        san_uris: Vec::new(),
        san_emails: Vec::new(),
        fulcio: Vec::new(),
        has_sct_list: false,
    };
    while !r.is_empty() {
        let (field, after) = read_tlv(r)?;
        r = after;
        if field.tag != 0xa3 {
            continue;
        }
        let (exts, _) = expect(field.content, TAG_SEQUENCE, "extensions")?;
        let mut e = exts.content;
        while !e.is_empty() {
            let (ext, after) = expect(e, TAG_SEQUENCE, "extension")?;
            e = after;
            let (oid, x) = expect(ext.content, TAG_OID, "extension OID")?;
            let (mut value, x) = read_tlv(x)?;
            if value.tag == TAG_BOOLEAN {
                value = expect(x, TAG_OCTET_STRING, "extension value")?.0;
            } else if value.tag != TAG_OCTET_STRING {
                return Err(CertError::Malformed("extension value"));
            }
            read_extension(&mut info, oid.content, value.content)?;
        }
    }
    Ok(info)
}

fn read_extension(info: &mut CertInfo, oid: &[u8], value: &[u8]) -> Result<(), CertError> {
    if oid == OID_SAN {
        let (names, _) = expect(value, TAG_SEQUENCE, "subjectAltName")?;
        let mut n = names.content;
        while !n.is_empty() {
            let (name, after) = read_tlv(n)?;
            n = after;
            let text = || String::from_utf8(name.content.to_vec()).ok();
            match name.tag {
                0x81 => info.san_emails.extend(text()),
                0x86 => info.san_uris.extend(text()),
                _ => {}
            }
        }
    } else if oid == OID_SCT_LIST {
        info.has_sct_list = true;
    } else if let Some(last) = oid.strip_prefix(OID_FULCIO_ARC)
        && let [arc] = last
        && *arc < 0x80
    {
        let arc = u32::from(*arc);
        let value = if arc <= 6 {
            String::from_utf8(value.to_vec()).ok()
        } else {
            read_tlv(value)
                .ok()
                .filter(|(t, rest)| rest.is_empty() && matches!(t.tag, 0x0c | 0x13 | 0x16))
                .and_then(|(t, _)| String::from_utf8(t.content.to_vec()).ok())
        };
        info.fulcio.push(FulcioExtension { arc, value });
    }
    Ok(())
}

/// Verifies that `leaf` chains to one of the trusted root's certificate authorities that is
/// valid (its `validFor`) at `time`, with rustls-webpki: the authority's last certificate is
/// the trust anchor, the others intermediates; the leaf must be valid at `time` and carry the
/// code-signing extended key usage. The bundle's own intermediates are not used.
pub fn verify_chain(leaf: &[u8], root: &TrustedRoot, time: i64) -> Result<(), CertError> {
    verify_chain_to(leaf, root, time).map(|_| ())
}

/// [`verify_chain`], returning the certificate authority the leaf chains to (the first one,
/// in trusted-root order, that is valid at `time` and accepts it).
pub fn verify_chain_to<'r>(
    leaf: &[u8],
    root: &'r TrustedRoot,
    time: i64,
) -> Result<&'r CertificateAuthority, CertError> {
    let chain_err = |detail: String| CertError::Chain { time, detail };
    let when = unix_time(time);
    let leaf_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| chain_err(format!("leaf not accepted: {e}")))?;
    let mut reasons = Vec::new();
    for ca in &root.certificate_authorities {
        let name = if ca.uri.is_empty() {
            ca.subject.common_name.as_str()
        } else {
            ca.uri.as_str()
        };
        if !ca.valid_for.contains(Timestamp::from_secs(time)) {
            reasons.push(format!("{name}: authority not valid then"));
            continue;
        }
        let Some((anchor_der, intermediates)) = ca.cert_chain.split_last() else {
            reasons.push(format!("{name}: empty chain"));
            continue;
        };
        match webpki_verify(&ee, anchor_der, intermediates, when, OID_CODE_SIGNING) {
            Ok(()) => return Ok(ca),
            Err(e) => reasons.push(format!("{name}: {e}")),
        }
    }
    if reasons.is_empty() {
        reasons.push("trusted root has no certificate authorities".into());
    }
    Err(chain_err(reasons.join("; ")))
}

/// id-kp-timeStamping, 1.3.6.1.5.5.7.3.8.
pub(super) const OID_TIME_STAMPING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];

/// A unix time for webpki.
pub(super) fn unix_time(time: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(time).unwrap_or(0)))
}

/// rustls-webpki path building from `ee` to the self-signed `anchor` through
/// `intermediates`, at `when`, requiring the extended key usage `eku`.
pub(super) fn webpki_verify(
    ee: &webpki::EndEntityCert<'_>,
    anchor: &[u8],
    intermediates: &[Vec<u8>],
    when: UnixTime,
    eku: &'static [u8],
) -> Result<(), String> {
    let anchor_der = CertificateDer::from(anchor);
    let anchor =
        webpki::anchor_from_trusted_cert(&anchor_der).map_err(|e| format!("root unusable: {e}"))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &intermediates,
        when,
        webpki::KeyUsage::required(eku),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// A hash a signature scheme uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    P256,
    P384,
    Ed25519,
    Rsa,
}

/// A public key ready to verify signatures.
#[derive(Debug, Clone)]
pub struct PublicKey {
    kind: KeyKind,
    /// The key as aws-lc-rs takes it (the BIT STRING content).
    key: Vec<u8>,
}

impl PublicKey {
    /// A key from DER SubjectPublicKeyInfo: ECDSA P-256, P-384, Ed25519, RSA (PKCS#1 v1.5).
    pub fn from_spki(spki: &[u8]) -> Result<PublicKey, CertError> {
        let (seq, _) = expect(spki, TAG_SEQUENCE, "subjectPublicKeyInfo")?;
        let (alg, r) = expect(seq.content, TAG_SEQUENCE, "key algorithm")?;
        let (bits, _) = expect(r, TAG_BIT_STRING, "public key bits")?;
        let key = match bits.content.split_first() {
            Some((0, key)) => key.to_vec(),
            _ => return Err(CertError::Malformed("public key bits")),
        };
        let (oid, params) = expect(alg.content, TAG_OID, "key algorithm OID")?;
        let curve = read_tlv(params)
            .ok()
            .filter(|(t, _)| t.tag == TAG_OID)
            .map(|(t, _)| t.content);
        let kind = match (oid.content, curve) {
            (OID_EC_PUBLIC_KEY, Some(OID_P256)) => KeyKind::P256,
            (OID_EC_PUBLIC_KEY, Some(OID_P384)) => KeyKind::P384,
            (OID_ED25519, _) => KeyKind::Ed25519,
            (OID_RSA, _) => KeyKind::Rsa,
            (o, _) => {
                return Err(CertError::UnsupportedKey(
                    oid_to_string(o).unwrap_or_else(|| hex::encode(o)),
                ));
            }
        };
        Ok(PublicKey { kind, key })
    }

    /// An RSA key from a DER PKCS#1 RSAPublicKey (trusted roots' `PKCS1_RSA_PKCS1V5` keys).
    /// Only the outer SEQUENCE is checked here; aws-lc-rs checks the rest when it verifies.
    pub fn from_pkcs1_rsa(der: &[u8]) -> Result<PublicKey, CertError> {
        match expect(der, TAG_SEQUENCE, "RSAPublicKey")? {
            (_, []) => Ok(PublicKey {
                kind: KeyKind::Rsa,
                key: der.to_vec(),
            }),
            _ => Err(CertError::Malformed("trailing data after RSAPublicKey")),
        }
    }

    /// Whether it is an ECDSA (P-256 or P-384) key.
    pub fn is_ecdsa(&self) -> bool {
        matches!(self.kind, KeyKind::P256 | KeyKind::P384)
    }

    /// Whether it is an RSA key.
    pub fn is_rsa(&self) -> bool {
        self.kind == KeyKind::Rsa
    }

    /// The key type, for messages.
    pub fn name(&self) -> &'static str {
        match self.kind {
            KeyKind::P256 => "ECDSA P-256",
            KeyKind::P384 => "ECDSA P-384",
            KeyKind::Ed25519 => "Ed25519",
            KeyKind::Rsa => "RSA",
        }
    }

    /// The hash the key's sigstore signing scheme uses by default.
    fn default_hash(&self) -> Hash {
        match self.kind {
            KeyKind::P384 => Hash::Sha384,
            _ => Hash::Sha256,
        }
    }

    fn algorithm(&self, hash: Hash) -> &'static dyn VerificationAlgorithm {
        match (self.kind, hash) {
            (KeyKind::P256, Hash::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
            (KeyKind::P256, _) => &signature::ECDSA_P256_SHA384_ASN1,
            (KeyKind::P384, Hash::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
            (KeyKind::P384, _) => &signature::ECDSA_P384_SHA384_ASN1,
            (KeyKind::Ed25519, _) => &signature::ED25519,
            (KeyKind::Rsa, Hash::Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (KeyKind::Rsa, Hash::Sha384) => &signature::RSA_PKCS1_2048_8192_SHA384,
            (KeyKind::Rsa, Hash::Sha512) => &signature::RSA_PKCS1_2048_8192_SHA512,
        }
    }

    /// Verifies `signature` over `message` with the key's default scheme (ECDSA P-256 and
    /// RSA with SHA-256, P-384 with SHA-384, Ed25519).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CertError> {
        self.verify_with(self.default_hash(), message, signature)
    }

    /// Verifies `signature` over `message` hashed with `hash` (ignored for Ed25519; P-256
    /// with SHA-512 is not supported and is verified as SHA-384, which fails).
    pub fn verify_with(&self, hash: Hash, message: &[u8], sig: &[u8]) -> Result<(), CertError> {
        UnparsedPublicKey::new(self.algorithm(hash), &self.key)
            .verify(message, sig)
            .map_err(|_| CertError::BadSignature(self.name()))
    }

    /// Verifies `signature` over a message known only by its SHA-256 `digest` (ECDSA P-256,
    /// RSA).
    pub fn verify_sha256_prehashed(
        &self,
        digest: &[u8; 32],
        signature: &[u8],
    ) -> Result<(), CertError> {
        if !matches!(self.kind, KeyKind::P256 | KeyKind::Rsa) {
            return Err(CertError::UnsupportedKey(format!(
                "{} cannot verify a SHA-256 digest-only signature",
                self.name()
            )));
        }
        let digest =
            aws_lc_rs::digest::Digest::import_less_safe(digest, &aws_lc_rs::digest::SHA256)
                .map_err(|_| CertError::BadSignature(self.name()))?;
        UnparsedPublicKey::new(self.algorithm(Hash::Sha256), &self.key)
            .verify_digest(&digest, signature)
            .map_err(|_| CertError::BadSignature(self.name()))
    }
}
