//! End-to-end offline verification of a sigstore bundle: [`verify_bundle`].
//!
//! Every check that can run does, and every failure is reported ([`Failure`]: which check,
//! what value), so a caller sees all that is wrong with a bundle, not the first thing.

use sha2::{Digest, Sha256};

use super::bundle::{self, Bundle, Content, Signer};
use super::cert::{self, CertInfo, PublicKey};
use super::identity::Matcher;
use super::rekor::{Expected, VerifierRef};
use super::sct::{self, VerifiedSct};
use super::trust::TrustedRoot;
use super::tsa;
use super::{TlogVerified, check_message_digest, verify_tlog_entry};

/// What was signed, as the verifier knows it.
#[derive(Debug, Clone, Copy)]
pub enum Artifact<'a> {
    /// The artifact's bytes.
    Bytes(&'a [u8]),
    /// Only its SHA-256 digest (message signatures are then checked as prehashed).
    Sha256(&'a [u8; 32]),
}

/// Who must have signed.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// A key the verifier holds (DER SubjectPublicKeyInfo); the bundle must name a key, not a
    /// certificate.
    KeyPub(&'a [u8]),
    /// A Fulcio certificate whose SAN (URI or email) equals `identity` exactly and whose OIDC
    /// issuer extension (1.3.6.1.4.1.57264.1.8, else .1.1) equals `issuer` exactly.
    Cert {
        /// The expected SAN.
        identity: &'a str,
        /// The expected OIDC issuer.
        issuer: &'a str,
    },
    /// A Fulcio certificate whose SAN (URI or email) and OIDC issuer satisfy these matchers
    /// (exact strings or anchored regular expressions).
    CertMatching {
        /// The SAN's matcher.
        identity: &'a Matcher,
        /// The OIDC issuer's matcher.
        issuer: &'a Matcher,
    },
}

impl Identity<'_> {
    fn wants_certificate(&self) -> bool {
        !matches!(self, Identity::KeyPub(_))
    }
}

/// Which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Check {
    /// The bundle does not parse.
    Bundle,
    /// The signer material (certificate / key) is unusable or not what the policy expects.
    Signer,
    /// The certificate chain or its validity at the signing time.
    Chain,
    /// The certificate's embedded SCTs: missing, malformed, or none verifies against a
    /// trusted CT log.
    Sct,
    /// The certificate's SAN.
    Identity,
    /// The certificate's OIDC issuer.
    Issuer,
    /// The signature over the artifact / DSSE PAE.
    Signature,
    /// The artifact's digest (messageDigest hint, in-toto subject).
    ArtifactDigest,
    /// A transparency-log entry.
    Tlog,
    /// The signing time: no verified time source, or one this verifier cannot verify yet.
    Timestamp,
}

impl Check {
    /// A stable name (`"Chain"`), for machine-readable output.
    pub fn name(self) -> &'static str {
        match self {
            Check::Bundle => "Bundle",
            Check::Signer => "Signer",
            Check::Chain => "Chain",
            Check::Identity => "Identity",
            Check::Issuer => "Issuer",
            Check::Signature => "Signature",
            Check::ArtifactDigest => "ArtifactDigest",
            Check::Tlog => "Tlog",
            Check::Timestamp => "Timestamp",
            Check::Sct => "Sct",
        }
    }
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which check.
    pub check: Check,
    /// What was wrong, with the values involved.
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.check, self.detail)
    }
}

/// What a successful verification established.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The parsed bundle.
    pub bundle: Bundle,
    /// The leaf certificate's contents, for certificate-signed bundles.
    pub certificate: Option<CertInfo>,
    /// The verified transparency-log entries.
    pub tlog: Vec<TlogVerified>,
    /// The verified signing times (unix seconds), one per time source.
    pub signing_times: Vec<i64>,
    /// The certificate's embedded SCTs that verified (none for public-key bundles).
    pub scts: Vec<VerifiedSct>,
}

/// Verifies a sigstore bundle offline. See the module documentation of
/// [`super`] for what is and is not checked.
pub fn verify_bundle(
    bundle_bytes: &[u8],
    artifact: Artifact<'_>,
    root: &TrustedRoot,
    policy: Identity<'_>,
) -> Result<Verified, Vec<Failure>> {
    let mut failures = Vec::new();

    let bundle = match bundle::parse(bundle_bytes) {
        Ok(b) => b,
        Err(e) => {
            push(&mut failures, Check::Bundle, e.to_string());
            return Err(failures);
        }
    };
    let artifact_sha256: [u8; 32] = match artifact {
        Artifact::Bytes(b) => Sha256::digest(b).into(),
        Artifact::Sha256(d) => *d,
    };

    // The signer: the policy's key, or the bundle's leaf certificate.
    let signer = &bundle.verification_material.signer;
    let mut certificate = None;
    let exact;
    let matchers: Option<(&Matcher, &Matcher)> = match policy {
        Identity::KeyPub(_) => None,
        Identity::Cert { identity, issuer } => {
            exact = (
                Matcher::Exact(identity.to_owned()),
                Matcher::Exact(issuer.to_owned()),
            );
            Some((&exact.0, &exact.1))
        }
        Identity::CertMatching { identity, issuer } => Some((identity, issuer)),
    };
    let (verifier, spki): (Option<VerifierRef<'_>>, Option<Vec<u8>>) =
        match (policy, matchers, signer) {
            (Identity::KeyPub(key), _, Signer::PublicKeyHint(_)) => {
                (Some(VerifierRef::PublicKey(key)), Some(key.to_vec()))
            }
            (Identity::KeyPub(_), _, _) => {
                push(
                    &mut failures,
                    Check::Signer,
                    "policy expects a public key, bundle carries a certificate".into(),
                );
                (None, None)
            }
            (_, _, Signer::PublicKeyHint(hint)) => {
                push(
                    &mut failures,
                    Check::Signer,
                    format!(
                        "policy expects a certificate, bundle names a public key (hint {hint:?})"
                    ),
                );
                (None, None)
            }
            (_, None, _) => (None, None),
            (_, Some((identity, issuer)), _) => {
                let chain: &[Vec<u8>] = match signer {
                    Signer::CertificateChain(c) => c,
                    Signer::Certificate(c) => std::slice::from_ref(c),
                    Signer::PublicKeyHint(_) => &[],
                };
                for (i, der) in chain.iter().enumerate() {
                    match cert::parse(der) {
                        Ok(info) if i > 0 && info.self_issued() => push(
                            &mut failures,
                            Check::Signer,
                            format!("bundle certificate chain carries a root (certificate {i})"),
                        ),
                        Ok(info) if i == 0 => certificate = Some(info),
                        Ok(_) => {}
                        Err(e) => push(
                            &mut failures,
                            Check::Signer,
                            format!("certificate {i}: {e}"),
                        ),
                    }
                }
                if let Some(info) = &certificate {
                    if !info
                        .san_uris
                        .iter()
                        .chain(&info.san_emails)
                        .any(|s| identity.matches(s))
                    {
                        push(
                            &mut failures,
                            Check::Identity,
                            format!(
                                "certificate SAN {:?} {identity}",
                                info.san_uris
                                    .iter()
                                    .chain(&info.san_emails)
                                    .collect::<Vec<_>>()
                            ),
                        );
                    }
                    match info.oidc_issuer() {
                        Some(i) if issuer.matches(i) => {}
                        found => push(
                            &mut failures,
                            Check::Issuer,
                            format!("certificate OIDC issuer {found:?} {issuer}"),
                        ),
                    }
                }
                match (chain.first(), &certificate) {
                    (Some(leaf), Some(info)) => (
                        Some(VerifierRef::Certificate(leaf)),
                        Some(info.spki.clone()),
                    ),
                    _ => (None, None),
                }
            }
        };

    // The signature, with the key.
    if let Some(spki) = &spki {
        match PublicKey::from_spki(spki) {
            Err(e) => push(&mut failures, Check::Signer, e.to_string()),
            Ok(key) => check_signature(&bundle.content, &key, artifact, &mut failures),
        }
    }
    check_artifact_digest(&bundle.content, &artifact_sha256, &mut failures);

    // The transparency log.
    let mut tlog = Vec::new();
    if let Some(verifier) = verifier {
        let expected = Expected {
            content: &bundle.content,
            verifier,
            artifact_sha256: Some(&artifact_sha256),
        };
        let entries = &bundle.verification_material.tlog_entries;
        if entries.is_empty() {
            push(
                &mut failures,
                Check::Tlog,
                "bundle has no transparency-log entry".into(),
            );
        }
        for (i, entry) in entries.iter().enumerate() {
            match verify_tlog_entry(&bundle, entry, root, &expected) {
                Ok(v) => tlog.push(v),
                Err(e) => push(
                    &mut failures,
                    Check::Tlog,
                    format!("entry {i} (log index {}): {e}", entry.log_index),
                ),
            }
        }
    }

    // The signing times: integrated times the log signed for, and RFC 3161 timestamps over
    // the signature.
    let mut signing_times: Vec<i64> = tlog
        .iter()
        .filter_map(|v| v.integrated_time)
        .map(|t| i64::try_from(t).unwrap_or(i64::MAX))
        .collect();
    let signed: &[u8] = match &bundle.content {
        Content::MessageSignature { signature, .. } => signature,
        Content::DsseEnvelope(env) => env.signatures.first().map_or(&[], |(_, s)| s),
    };
    let mut tsa_times = Vec::new();
    for (i, token) in bundle
        .verification_material
        .rfc3161_timestamps
        .iter()
        .enumerate()
    {
        match tsa::verify(token, signed, root) {
            Ok(t) => tsa_times.push(t),
            Err(e) => push(
                &mut failures,
                Check::Timestamp,
                format!("timestamp {i}: {e}"),
            ),
        }
    }
    // Log entries without a signed integrated time (Rekor v2): their log key must be valid
    // at the times the timestamps prove.
    for (i, entry) in bundle.verification_material.tlog_entries.iter().enumerate() {
        if entry.signed_entry_timestamp.is_some() && entry.integrated_time.is_some() {
            continue;
        }
        for &t in &tsa_times {
            if let Err(e) = root.tlog_at(&entry.log_id, t) {
                push(
                    &mut failures,
                    Check::Tlog,
                    format!("entry {i} at timestamp {t}: {e}"),
                );
            }
        }
    }
    signing_times.extend(&tsa_times);
    if signing_times.is_empty() {
        push(
            &mut failures,
            Check::Timestamp,
            "no verified time source (no verified signed entry timestamp or RFC 3161 timestamp)"
                .into(),
        );
    }

    // The certificate at every signing time.
    if let (true, Some(leaf)) = (policy.wants_certificate(), signer.leaf_certificate())
        && certificate.is_some()
    {
        for &t in &signing_times {
            if let Err(e) = cert::verify_chain(leaf, root, t) {
                push(&mut failures, Check::Chain, e.to_string());
            }
        }
    }

    // Certificate transparency: at least one embedded SCT from a trusted CT log, bound to the
    // issuer the chain verified to.
    let mut scts = Vec::new();
    if let (true, Some(leaf)) = (policy.wants_certificate(), signer.leaf_certificate())
        && certificate.is_some()
    {
        match sct::verify_embedded(leaf, root, &signing_times) {
            Ok(verified) => scts = verified,
            Err(e) => push(&mut failures, Check::Sct, e.to_string()),
        }
    }

    if failures.is_empty() {
        Ok(Verified {
            bundle,
            certificate,
            tlog,
            signing_times,
            scts,
        })
    } else {
        Err(failures)
    }
}

fn push(failures: &mut Vec<Failure>, check: Check, detail: String) {
    failures.push(Failure { check, detail });
}

fn check_signature(
    content: &Content,
    key: &PublicKey,
    artifact: Artifact<'_>,
    failures: &mut Vec<Failure>,
) {
    match content {
        Content::MessageSignature { signature, .. } => {
            let result = match artifact {
                Artifact::Bytes(b) => key.verify(b, signature),
                Artifact::Sha256(d) => key.verify_sha256_prehashed(d, signature),
            };
            if let Err(e) = result {
                push(
                    failures,
                    Check::Signature,
                    format!("message signature: {e}"),
                );
            }
        }
        Content::DsseEnvelope(env) => {
            if env.signatures.len() != 1 {
                push(
                    failures,
                    Check::Signature,
                    format!(
                        "DSSE envelope has {} signatures, expected exactly one",
                        env.signatures.len()
                    ),
                );
            }
            let pae = crate::dsse::pae(&env.payload_type, &env.payload);
            for (i, (_, sig)) in env.signatures.iter().enumerate() {
                if let Err(e) = key.verify(&pae, sig) {
                    push(
                        failures,
                        Check::Signature,
                        format!("DSSE signature {i}: {e}"),
                    );
                }
            }
        }
    }
}

/// The artifact's digest against the bundle: the `messageDigest` hint, or the in-toto
/// statement's subjects.
fn check_artifact_digest(
    content: &Content,
    artifact_sha256: &[u8; 32],
    failures: &mut Vec<Failure>,
) {
    match content {
        Content::MessageSignature { .. } => {
            if let Err(e) = check_message_digest(content, artifact_sha256) {
                push(failures, Check::ArtifactDigest, e.to_string());
            }
        }
        Content::DsseEnvelope(env) => {
            if env.payload_type != "application/vnd.in-toto+json" {
                push(
                    failures,
                    Check::ArtifactDigest,
                    format!(
                        "DSSE payload type {:?} is not an in-toto statement; the artifact \
                         cannot be matched",
                        env.payload_type
                    ),
                );
                return;
            }
            let want = hex::encode(artifact_sha256);
            let statement: serde_json::Value = match serde_json::from_slice(&env.payload) {
                Ok(v) => v,
                Err(e) => {
                    push(
                        failures,
                        Check::ArtifactDigest,
                        format!("in-toto statement is not JSON: {e}"),
                    );
                    return;
                }
            };
            let subjects = statement
                .get("subject")
                .and_then(|s| s.as_array())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let found = subjects.iter().any(|s| {
                s.get("digest")
                    .and_then(|d| d.get("sha256"))
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| d.eq_ignore_ascii_case(&want))
            });
            if !found {
                push(
                    failures,
                    Check::ArtifactDigest,
                    format!("no in-toto subject has sha256 {want}"),
                );
            }
        }
    }
}
