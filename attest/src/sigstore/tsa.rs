//! RFC 3161 timestamps (CMS SignedData over a TSTInfo), verified against the trusted root's
//! timestamp authorities.
//!
//! Checked: the token is a SignedData whose encapsulated content is a TSTInfo; its
//! `messageImprint` is the SHA-256/384/512 of the bytes the caller names (the bundle's
//! signature); the signer info's `messageDigest` attribute equals the digest of the TSTInfo
//! and its signature over the signed attributes (or the TSTInfo when there are none) verifies
//! with the key of a trusted timestamp authority's leaf certificate, that authority being
//! valid (`validFor`) at `genTime`, its leaf valid at `genTime` and, when the authority lists
//! a chain, chaining (rustls-webpki, id-kp-timeStamping) to the chain's last certificate at
//! `genTime`. Certificates embedded in the token are not used (only the trusted root's).
//! Not checked: the `sid` (every trusted authority's key is tried), the nonce, the policy OID,
//! the `accuracy` field.

use sha2::Digest as _;

use super::cert::{
    self, CertError, Hash, PublicKey, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE, Tlv, expect,
    read_tlv,
};
use super::trust::{Timestamp, TrustedRoot};

/// Why a timestamp does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TsaError {
    /// Not a CMS SignedData over a TSTInfo, or a field is malformed.
    #[error("malformed RFC 3161 timestamp: {0}")]
    Malformed(&'static str),
    /// A digest algorithm other than SHA-256/384/512.
    #[error("unsupported digest algorithm in RFC 3161 timestamp")]
    UnsupportedDigest,
    /// The messageImprint is not the digest of the signature.
    #[error(
        "RFC 3161 timestamp is over other data (messageImprint {imprint}, expected {expected})"
    )]
    ImprintMismatch {
        /// Found, hex.
        imprint: String,
        /// Expected, hex.
        expected: String,
    },
    /// The signed attributes' messageDigest is not the TSTInfo's digest.
    #[error("RFC 3161 timestamp's messageDigest attribute does not match its TSTInfo")]
    ContentDigestMismatch,
    /// No trusted timestamp authority vouches for it at its genTime.
    #[error(
        "RFC 3161 timestamp (genTime {gen_time}) is not signed by a timestamp authority trusted then: {detail}"
    )]
    Untrusted {
        /// genTime, unix seconds.
        gen_time: i64,
        /// Per authority.
        detail: String,
    },
}

impl From<CertError> for TsaError {
    fn from(_: CertError) -> TsaError {
        TsaError::Malformed("DER")
    }
}

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_TST_INFO: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x04,
];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

fn hash_of(alg: &Tlv<'_>) -> Result<Hash, TsaError> {
    let (oid, _) = expect(alg.content, TAG_OID, "digest algorithm")?;
    match oid.content {
        OID_SHA256 => Ok(Hash::Sha256),
        OID_SHA384 => Ok(Hash::Sha384),
        OID_SHA512 => Ok(Hash::Sha512),
        _ => Err(TsaError::UnsupportedDigest),
    }
}

fn digest(hash: Hash, data: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
    }
}

/// Verifies an RFC 3161 timestamp token over `signed` (the bundle's signature bytes); returns
/// its genTime (unix seconds).
pub fn verify(token: &[u8], signed: &[u8], root: &TrustedRoot) -> Result<i64, TsaError> {
    let m = TsaError::Malformed;
    // A TimeStampResp (status, then the token) or the token (a ContentInfo) alone.
    let (outer, _) = expect(token, TAG_SEQUENCE, "ContentInfo").map_err(|_| m("ContentInfo"))?;
    let ci = match read_tlv(outer.content)? {
        (status, rest) if status.tag == TAG_SEQUENCE => {
            let (code, _) = expect(status.content, 0x02, "PKIStatus")?;
            // granted (0) or grantedWithMods (1).
            if !matches!(code.content, [0] | [1]) {
                return Err(m("TimeStampResp status is not granted"));
            }
            expect(rest, TAG_SEQUENCE, "TimeStampToken")?.0
        }
        _ => outer,
    };
    let (ct, r) = expect(ci.content, TAG_OID, "contentType")?;
    if ct.content != OID_SIGNED_DATA {
        return Err(m("not a SignedData"));
    }
    let (explicit, _) = expect(r, 0xa0, "content")?;
    let (sd, _) = expect(explicit.content, TAG_SEQUENCE, "SignedData")?;
    let (_version, r) = expect(sd.content, 0x02, "version")?;
    let (_digest_algs, r) = expect(r, 0x31, "digestAlgorithms")?;
    let (encap, mut r) = expect(r, TAG_SEQUENCE, "encapContentInfo")?;
    let (ect, er) = expect(encap.content, TAG_OID, "eContentType")?;
    if ect.content != OID_TST_INFO {
        return Err(m("encapsulated content is not a TSTInfo"));
    }
    let (econtent, _) = expect(er, 0xa0, "eContent")?;
    let (tst_octets, _) = expect(econtent.content, TAG_OCTET_STRING, "eContent")?;
    let tst_der = tst_octets.content;
    // Skip certificates [0] and crls [1].
    let signer_infos = loop {
        let (tlv, rest) = read_tlv(r)?;
        r = rest;
        match tlv.tag {
            0xa0 | 0xa1 => continue,
            0x31 => break tlv,
            _ => return Err(m("signerInfos")),
        }
    };
    let (si, rest) = expect(signer_infos.content, TAG_SEQUENCE, "SignerInfo")?;
    if !rest.is_empty() {
        return Err(m("more than one SignerInfo"));
    }

    // TSTInfo: version, policy, messageImprint, serialNumber, genTime.
    let (tst, _) = expect(tst_der, TAG_SEQUENCE, "TSTInfo")?;
    let (_v, t) = expect(tst.content, 0x02, "TSTInfo version")?;
    let (_policy, t) = expect(t, TAG_OID, "TSTInfo policy")?;
    let (imprint, t) = expect(t, TAG_SEQUENCE, "messageImprint")?;
    let (_serial, t) = expect(t, 0x02, "TSTInfo serialNumber")?;
    let (gen_time, _) = expect(t, 0x18, "genTime")?;
    let gen_time = cert::parse_time(&gen_time).map_err(|_| m("genTime"))?;
    let (imprint_alg, ir) = expect(imprint.content, TAG_SEQUENCE, "messageImprint algorithm")?;
    let (imprint_hash, _) = expect(ir, TAG_OCTET_STRING, "messageImprint hash")?;
    let expected = digest(hash_of(&imprint_alg)?, signed);
    if imprint_hash.content != expected.as_slice() {
        return Err(TsaError::ImprintMismatch {
            imprint: hex::encode(imprint_hash.content),
            expected: hex::encode(expected),
        });
    }

    // SignerInfo: version, sid, digestAlgorithm, [0] signedAttrs, signatureAlgorithm, signature.
    let (_v, s) = expect(si.content, 0x02, "SignerInfo version")?;
    let (_sid, s) = read_tlv(s)?;
    let (digest_alg, s) = expect(s, TAG_SEQUENCE, "SignerInfo digestAlgorithm")?;
    let hash = hash_of(&digest_alg)?;
    let (next, s) = read_tlv(s)?;
    let (signed_message, s) = if next.tag == 0xa0 {
        // The messageDigest attribute must be the TSTInfo's digest.
        let want = digest(hash, tst_der);
        let mut attrs = next.content;
        let mut found = false;
        while !attrs.is_empty() {
            let (attr, rest) = expect(attrs, TAG_SEQUENCE, "attribute")?;
            attrs = rest;
            let (oid, values) = expect(attr.content, TAG_OID, "attribute type")?;
            if oid.content == OID_MESSAGE_DIGEST {
                let (set, _) = expect(values, 0x31, "attribute values")?;
                let (value, _) = expect(set.content, TAG_OCTET_STRING, "messageDigest")?;
                if value.content != want.as_slice() {
                    return Err(TsaError::ContentDigestMismatch);
                }
                found = true;
            }
        }
        if !found {
            return Err(m("signed attributes have no messageDigest"));
        }
        // Signed as a SET OF (tag 0x31), not as the [0] IMPLICIT in the token.
        let mut msg = next.whole.to_vec();
        if let Some(first) = msg.first_mut() {
            *first = 0x31;
        }
        let (_sig_alg, s) = expect(s, TAG_SEQUENCE, "signatureAlgorithm")?;
        (msg, s)
    } else if next.tag == TAG_SEQUENCE {
        (tst_der.to_vec(), s)
    } else {
        return Err(m("SignerInfo"));
    };
    let (signature, _) = expect(s, TAG_OCTET_STRING, "signature")?;

    // A trusted authority valid at genTime whose leaf key verifies the signature.
    let mut reasons = Vec::new();
    for ca in &root.timestamp_authorities {
        let name = if ca.uri.is_empty() {
            ca.subject.common_name.clone()
        } else {
            ca.uri.clone()
        };
        match check_authority(ca, gen_time, hash, &signed_message, signature.content) {
            Ok(()) => return Ok(gen_time),
            Err(e) => reasons.push(format!("{name}: {e}")),
        }
    }
    if reasons.is_empty() {
        reasons.push("trusted root has no timestamp authorities".into());
    }
    Err(TsaError::Untrusted {
        gen_time,
        detail: reasons.join("; "),
    })
}

fn check_authority(
    ca: &super::trust::CertificateAuthority,
    gen_time: i64,
    hash: Hash,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    if !ca.valid_for.contains(Timestamp::from_secs(gen_time)) {
        return Err("authority not valid then".into());
    }
    let Some((leaf, rest)) = ca.cert_chain.split_first() else {
        return Err("empty chain".into());
    };
    let info = cert::parse(leaf).map_err(|e| e.to_string())?;
    if gen_time < info.not_before || gen_time > info.not_after {
        return Err("leaf certificate not valid then".into());
    }
    PublicKey::from_spki(&info.spki)
        .map_err(|e| e.to_string())?
        .verify_with(hash, message, signature)
        .map_err(|e| e.to_string())?;
    if let Some((anchor, intermediates)) = rest.split_last() {
        let leaf_der = pki_types::CertificateDer::from(leaf.as_slice());
        let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| e.to_string())?;
        cert::webpki_verify(
            &ee,
            anchor,
            intermediates,
            cert::unix_time(gen_time),
            cert::OID_TIME_STAMPING,
        )?;
    }
    Ok(())
}
