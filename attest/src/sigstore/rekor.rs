//! Rekor entry bodies (`canonicalizedBody`) and whether an entry is about the bundle at hand.
//!
//! Kinds read: Rekor v1 `hashedrekord` 0.0.1, `dsse` 0.0.1 and `intoto` 0.0.2; Rekor v2
//! `hashedrekord` 0.0.2 and `dsse` 0.0.2. What must match the bundle, per kind:
//!
//! | kind | bundle content | checked |
//! | --- | --- | --- |
//! | hashedrekord 0.0.1 / 0.0.2 | messageSignature | signature bytes; digest = SHA-256 of the artifact; verifier (certificate or public key) |
//! | hashedrekord 0.0.2 | dsseEnvelope | one envelope signature = entry signature; digest = SHA-256(PAE(payloadType, payload)); verifier |
//! | dsse 0.0.1 / 0.0.2 | dsseEnvelope | payload hash = SHA-256(payload); every envelope signature is an entry signature with our verifier, same count |
//! | intoto 0.0.2 | dsseEnvelope | payload hash; payloadType and payload when logged; every envelope signature (base64 text, as Rekor stores it) with our verifier, same count |
//!
//! Not checked: `dsse` `envelopeHash` and `intoto` `hash` (hashes of the envelope JSON as the
//! log re-serialised it; sigstore clients do not recompute them either).

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::bundle::{Content, DsseEnvelope, MAX_ITEMS, TlogEntry};
use super::json::{FieldError, Obj, as_obj, b64, b64_encode, path};
use crate::dsse::pae;

/// Why an entry body is unreadable, or is not about this bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RekorError {
    /// The body is not JSON.
    #[error("log entry body is not JSON: {reason}")]
    Json {
        /// What the parser said.
        reason: String,
    },
    /// A body field is missing or malformed.
    #[error("log entry body: {0}")]
    Field(#[from] FieldError),
    /// The body's kind/apiVersion is not the entry's `kindVersion`.
    #[error("log entry body is {body}, but kindVersion says {entry}")]
    KindVersionMismatch {
        /// `kind apiVersion` from the body.
        body: String,
        /// `kind version` from the entry.
        entry: String,
    },
    /// A kind/version kiln does not read.
    #[error("unsupported log entry kind {kind} {version}")]
    UnsupportedKind {
        /// Kind.
        kind: String,
        /// Version.
        version: String,
    },
    /// A hash algorithm other than SHA-256.
    #[error("log entry uses unsupported hash algorithm {algorithm:?}")]
    UnsupportedAlgorithm {
        /// As named in the body.
        algorithm: String,
    },
    /// This kind cannot record this bundle content.
    #[error("a {kind} {version} entry cannot record a {content}")]
    ContentKindMismatch {
        /// Entry kind.
        kind: String,
        /// Entry version.
        version: String,
        /// `messageSignature` or `dsseEnvelope`.
        content: &'static str,
    },
    /// The entry is about something else: `field` differs.
    #[error("log entry does not match the bundle: {field} differs{detail}")]
    Mismatch {
        /// Which field of the entry.
        field: &'static str,
        /// Extra detail (may be empty).
        detail: String,
    },
    /// A message signature was given without the artifact's digest.
    #[error("the artifact's SHA-256 digest is needed to match a message signature entry")]
    NoArtifactDigest,
}

fn mismatch(field: &'static str) -> RekorError {
    RekorError::Mismatch {
        field,
        detail: String::new(),
    }
}

/// The key material an entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verifier {
    /// An X.509 certificate, DER.
    Certificate(Vec<u8>),
    /// A public key, DER SubjectPublicKeyInfo.
    PublicKey(Vec<u8>),
}

/// A `hashedrekord` entry: a signature over a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedRekord {
    /// The signed digest (SHA-256).
    pub digest: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
    /// Who signed.
    pub verifier: Verifier,
}

/// A `dsse` or `intoto` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeEntry {
    /// SHA-256 of the payload.
    pub payload_hash: Vec<u8>,
    /// `payloadType`, when the entry records it (intoto).
    pub payload_type: Option<String>,
    /// The payload, when the entry records it (intoto).
    pub payload: Option<Vec<u8>>,
    /// Signatures and their verifiers. For intoto 0.0.2 the signature is the envelope's base64
    /// text, as Rekor stores it.
    pub signatures: Vec<(Vec<u8>, Verifier)>,
}

/// A parsed entry body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `hashedrekord` 0.0.1 (Rekor v1).
    HashedRekordV001(HashedRekord),
    /// `hashedrekord` 0.0.2 (Rekor v2).
    HashedRekordV002(HashedRekord),
    /// `dsse` 0.0.1 (Rekor v1) or 0.0.2 (Rekor v2).
    Dsse(EnvelopeEntry),
    /// `intoto` 0.0.2 (Rekor v1).
    IntotoV002(EnvelopeEntry),
}

/// What the bundle says was signed and by whom, for [`check_body`].
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The bundle's signature content.
    pub content: &'a Content,
    /// The signer: the leaf certificate or the verification public key.
    pub verifier: VerifierRef<'a>,
    /// SHA-256 of the artifact (message signatures; unused for DSSE).
    pub artifact_sha256: Option<&'a [u8; 32]>,
}

/// Borrowed [`Verifier`].
#[derive(Debug, Clone, Copy)]
pub enum VerifierRef<'a> {
    /// Leaf certificate, DER.
    Certificate(&'a [u8]),
    /// Public key, DER SubjectPublicKeyInfo.
    PublicKey(&'a [u8]),
}

impl Verifier {
    fn matches(&self, expected: VerifierRef<'_>) -> bool {
        match (self, expected) {
            (Verifier::Certificate(a), VerifierRef::Certificate(b)) => a.as_slice() == b,
            (Verifier::PublicKey(a), VerifierRef::PublicKey(b)) => {
                a.as_slice() == b || reencode(a).is_some_and(|a| reencode(b) == Some(a))
            }
            _ => false,
        }
    }
}

/// Canonical DER of a public key (PEM keys may carry equivalent encodings).
fn reencode(spki: &[u8]) -> Option<Vec<u8>> {
    crate::keys::PublicKey::from_spki_der(spki)
        .ok()
        .map(|k| k.to_spki_der())
}

/// Parses a PEM certificate or public key (Rekor v1 verifiers are base64 of PEM).
fn pem_verifier(field: &str, pem: &[u8]) -> Result<Verifier, FieldError> {
    let invalid = |reason: String| FieldError::Invalid {
        field: field.to_owned(),
        reason,
    };
    let (label, der) = decode_pem(pem).map_err(|e| invalid(format!("not PEM: {e}")))?;
    match label.as_str() {
        "CERTIFICATE" => Ok(Verifier::Certificate(der)),
        "PUBLIC KEY" => Ok(Verifier::PublicKey(der)),
        other => Err(invalid(format!("unexpected PEM label {other:.40?}"))),
    }
}

/// A lenient PEM reader: one `-----BEGIN X-----` / `-----END X-----` block, base64 body with
/// any line length and whitespace (Rekor stores PEM as clients wrote it, not always with
/// RFC 7468's 64-column lines).
fn decode_pem(pem: &[u8]) -> Result<(String, Vec<u8>), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not UTF-8".to_owned())?;
    let text = text.trim();
    let rest = text.strip_prefix("-----BEGIN ").ok_or("no BEGIN line")?;
    let (label, rest) = rest.split_once("-----").ok_or("malformed BEGIN line")?;
    let end = format!("-----END {label}-----");
    let body = rest
        .strip_suffix(end.as_str())
        .ok_or("no matching END line")?;
    if body.contains("-----") || body.contains(':') {
        return Err("more than one block, or PEM headers".into());
    }
    let b64text: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = b64("PEM body", &b64text).map_err(|e| e.to_string())?;
    Ok((label.to_owned(), der))
}

fn sha256_hex(field: &str, o: Obj<'_>) -> Result<Vec<u8>, RekorError> {
    let algorithm = o.req_str("algorithm")?;
    if algorithm != "sha256" {
        return Err(RekorError::UnsupportedAlgorithm {
            algorithm: algorithm.to_owned(),
        });
    }
    let value = o.req_str("value")?;
    let digest = hex::decode(value).map_err(|e| FieldError::Invalid {
        field: path(field, "value"),
        reason: format!("not hex: {e}"),
    })?;
    if digest.len() != 32 {
        return Err(FieldError::Invalid {
            field: path(field, "value"),
            reason: format!("{} bytes, not a SHA-256 digest", digest.len()),
        }
        .into());
    }
    Ok(digest)
}

fn sub<'a>(o: Obj<'a>, key: &str, p: &'a mut String) -> Result<Obj<'a>, FieldError> {
    *p = path(o.path, key);
    as_obj(o.req(key)?, p)
}

/// Parses an entry's canonicalized body, checking it is the kind and version the entry says.
pub fn parse_body(entry: &TlogEntry) -> Result<Body, RekorError> {
    let value: Value =
        serde_json::from_slice(&entry.canonicalized_body).map_err(|e| RekorError::Json {
            reason: e.to_string(),
        })?;
    let root = as_obj(&value, "body")?;
    let kind = root.req_str("kind")?;
    let version = root.req_str("apiVersion")?;
    if kind != entry.kind || version != entry.version {
        return Err(RekorError::KindVersionMismatch {
            body: format!("{kind} {version}"),
            entry: format!("{} {}", entry.kind, entry.version),
        });
    }
    let mut sp = String::new();
    let spec = sub(root, "spec", &mut sp)?;
    match (kind, version) {
        ("hashedrekord", "0.0.1") => Ok(Body::HashedRekordV001(hashedrekord_v001(spec)?)),
        ("hashedrekord", "0.0.2") => {
            let mut p = String::new();
            Ok(Body::HashedRekordV002(hashedrekord_v002(sub(
                spec,
                "hashedRekordV002",
                &mut p,
            )?)?))
        }
        ("dsse", "0.0.1") => Ok(Body::Dsse(dsse_v001(spec)?)),
        ("dsse", "0.0.2") => {
            let mut p = String::new();
            Ok(Body::Dsse(dsse_v002(sub(spec, "dsseV002", &mut p)?)?))
        }
        ("intoto", "0.0.2") => Ok(Body::IntotoV002(intoto_v002(spec)?)),
        _ => Err(RekorError::UnsupportedKind {
            kind: kind.to_owned(),
            version: version.to_owned(),
        }),
    }
}

fn hashedrekord_v001(spec: Obj<'_>) -> Result<HashedRekord, RekorError> {
    let (mut p1, mut p2, mut p3, mut p4) = Default::default();
    let data = sub(spec, "data", &mut p1)?;
    let hash = sub(data, "hash", &mut p2)?;
    let digest = sha256_hex(hash.path, hash)?;
    let sig = sub(spec, "signature", &mut p3)?;
    let signature = sig.req_bytes("content")?;
    let pk = sub(sig, "publicKey", &mut p4)?;
    let pem = pk.req_bytes("content")?;
    let verifier = pem_verifier(&path(pk.path, "content"), &pem)?;
    Ok(HashedRekord {
        digest,
        signature,
        verifier,
    })
}

/// Rekor v2 verifier: `{keyDetails, x509Certificate{rawBytes} | publicKey{rawBytes}}`.
fn v2_verifier(v: Obj<'_>) -> Result<Verifier, FieldError> {
    let mut p = String::new();
    match (v.opt("x509Certificate"), v.opt("publicKey")) {
        (Some(_), None) => Ok(Verifier::Certificate(
            sub(v, "x509Certificate", &mut p)?.req_bytes("rawBytes")?,
        )),
        (None, Some(_)) => Ok(Verifier::PublicKey(
            sub(v, "publicKey", &mut p)?.req_bytes("rawBytes")?,
        )),
        _ => Err(FieldError::Invalid {
            field: v.path.to_owned(),
            reason: "needs exactly one of x509Certificate, publicKey".into(),
        }),
    }
}

fn v2_digest(data: Obj<'_>) -> Result<Vec<u8>, RekorError> {
    let algorithm = data.req_str("algorithm")?;
    if algorithm != "SHA2_256" {
        return Err(RekorError::UnsupportedAlgorithm {
            algorithm: algorithm.to_owned(),
        });
    }
    let digest = data.req_bytes("digest")?;
    if digest.len() != 32 {
        return Err(FieldError::Invalid {
            field: path(data.path, "digest"),
            reason: format!("{} bytes, not a SHA-256 digest", digest.len()),
        }
        .into());
    }
    Ok(digest)
}

fn hashedrekord_v002(spec: Obj<'_>) -> Result<HashedRekord, RekorError> {
    let (mut p1, mut p2, mut p3) = Default::default();
    let digest = v2_digest(sub(spec, "data", &mut p1)?)?;
    let sig = sub(spec, "signature", &mut p2)?;
    Ok(HashedRekord {
        digest,
        signature: sig.req_bytes("content")?,
        verifier: v2_verifier(sub(sig, "verifier", &mut p3)?)?,
    })
}

fn dsse_v001(spec: Obj<'_>) -> Result<EnvelopeEntry, RekorError> {
    let mut p1 = String::new();
    let payload_hash = sha256_hex(
        &path(spec.path, "payloadHash"),
        sub(spec, "payloadHash", &mut p1)?,
    )?;
    let mut signatures = Vec::new();
    for (i, s) in spec.arr("signatures", MAX_ITEMS)?.iter().enumerate() {
        let p = format!("{}.signatures[{i}]", spec.path);
        let s = as_obj(s, &p)?;
        let pem = s.req_bytes("verifier")?;
        signatures.push((
            s.req_bytes("signature")?,
            pem_verifier(&path(&p, "verifier"), &pem)?,
        ));
    }
    Ok(EnvelopeEntry {
        payload_hash,
        payload_type: None,
        payload: None,
        signatures,
    })
}

fn dsse_v002(spec: Obj<'_>) -> Result<EnvelopeEntry, RekorError> {
    let mut p1 = String::new();
    let payload_hash = v2_digest(sub(spec, "payloadHash", &mut p1)?)?;
    let mut signatures = Vec::new();
    for (i, s) in spec.arr("signatures", MAX_ITEMS)?.iter().enumerate() {
        let p = format!("{}.signatures[{i}]", spec.path);
        let s = as_obj(s, &p)?;
        let mut vp = String::new();
        signatures.push((
            s.req_bytes("content")?,
            v2_verifier(sub(s, "verifier", &mut vp)?)?,
        ));
    }
    Ok(EnvelopeEntry {
        payload_hash,
        payload_type: None,
        payload: None,
        signatures,
    })
}

fn intoto_v002(spec: Obj<'_>) -> Result<EnvelopeEntry, RekorError> {
    let (mut p1, mut p2, mut p3) = Default::default();
    let content = sub(spec, "content", &mut p1)?;
    let payload_hash = sha256_hex(
        &path(content.path, "payloadHash"),
        sub(content, "payloadHash", &mut p2)?,
    )?;
    let env = sub(content, "envelope", &mut p3)?;
    let payload_type = env.opt_str("payloadType")?.map(str::to_owned);
    // Rekor stores the envelope's base64 payload text, base64-encoded again.
    let payload = match env.opt_bytes("payload")? {
        None => None,
        Some(text) => Some(b64(
            &path(env.path, "payload"),
            std::str::from_utf8(&text).unwrap_or("!"),
        )?),
    };
    let mut signatures = Vec::new();
    for (i, s) in env.arr("signatures", MAX_ITEMS)?.iter().enumerate() {
        let p = format!("{}.signatures[{i}]", env.path);
        let s = as_obj(s, &p)?;
        let pem = s.req_bytes("publicKey")?;
        signatures.push((
            s.req_bytes("sig")?,
            pem_verifier(&path(&p, "publicKey"), &pem)?,
        ));
    }
    Ok(EnvelopeEntry {
        payload_hash,
        payload_type,
        payload,
        signatures,
    })
}

/// Checks that the entry records the bundle's signature: see the module doc for what is
/// compared per kind. Returns the parsed body.
pub fn check_body(entry: &TlogEntry, expected: &Expected<'_>) -> Result<Body, RekorError> {
    let body = parse_body(entry)?;
    let content_kind = |content: &'static str| RekorError::ContentKindMismatch {
        kind: entry.kind.clone(),
        version: entry.version.clone(),
        content,
    };
    match (&body, expected.content) {
        (
            Body::HashedRekordV001(h) | Body::HashedRekordV002(h),
            Content::MessageSignature { signature, .. },
        ) => {
            let digest = expected
                .artifact_sha256
                .ok_or(RekorError::NoArtifactDigest)?;
            if h.digest != digest[..] {
                return Err(RekorError::Mismatch {
                    field: "artifact digest",
                    detail: format!(
                        " (entry {}, artifact {})",
                        hex::encode(&h.digest),
                        hex::encode(digest)
                    ),
                });
            }
            if h.signature != *signature {
                return Err(mismatch("signature"));
            }
            if !h.verifier.matches(expected.verifier) {
                return Err(mismatch("verifier (certificate or public key)"));
            }
        }
        (Body::HashedRekordV002(h), Content::DsseEnvelope(env)) => {
            let [(_, sig)] = env.signatures.as_slice() else {
                return Err(mismatch("signature count (hashedrekord records one)"));
            };
            if h.signature != *sig {
                return Err(mismatch("signature"));
            }
            let digest: [u8; 32] = Sha256::digest(pae(&env.payload_type, &env.payload)).into();
            if h.digest != digest {
                return Err(mismatch("digest of the DSSE PAE"));
            }
            if !h.verifier.matches(expected.verifier) {
                return Err(mismatch("verifier (certificate or public key)"));
            }
        }
        (Body::Dsse(d), Content::DsseEnvelope(env)) => {
            check_envelope(d, env, expected.verifier, |sig| sig.to_vec())?;
        }
        (Body::IntotoV002(d), Content::DsseEnvelope(env)) => {
            if d.payload_type
                .as_deref()
                .is_some_and(|t| t != env.payload_type)
            {
                return Err(mismatch("payloadType"));
            }
            if d.payload.as_deref().is_some_and(|p| p != env.payload) {
                return Err(mismatch("payload"));
            }
            check_envelope(d, env, expected.verifier, |sig| {
                b64_encode(sig).into_bytes()
            })?;
        }
        (Body::HashedRekordV001(_), Content::DsseEnvelope(_)) => {
            return Err(content_kind("dsseEnvelope"));
        }
        (Body::Dsse(_) | Body::IntotoV002(_), Content::MessageSignature { .. }) => {
            return Err(content_kind("messageSignature"));
        }
    }
    Ok(body)
}

fn check_envelope(
    d: &EnvelopeEntry,
    env: &DsseEnvelope,
    verifier: VerifierRef<'_>,
    as_logged: impl Fn(&[u8]) -> Vec<u8>,
) -> Result<(), RekorError> {
    let payload_hash: [u8; 32] = Sha256::digest(&env.payload).into();
    if d.payload_hash != payload_hash {
        return Err(mismatch("payload hash"));
    }
    if d.signatures.len() != env.signatures.len() {
        return Err(RekorError::Mismatch {
            field: "signature count",
            detail: format!(
                " (entry {}, envelope {})",
                d.signatures.len(),
                env.signatures.len()
            ),
        });
    }
    for (_, sig) in &env.signatures {
        let logged = as_logged(sig);
        match d.signatures.iter().find(|(s, _)| *s == logged) {
            None => return Err(mismatch("signature")),
            Some((_, v)) if !v.matches(verifier) => {
                return Err(mismatch("verifier (certificate or public key)"));
            }
            Some(_) => {}
        }
    }
    Ok(())
}
