//! Verifying a sigstore bundle against a policy: a known public key, the image digest, and
//! optionally the predicate type, builder and source.
//!
//! Every reason that can be determined is reported, not only the first: a bad signature and a
//! subject mismatch in the same bundle are both listed, so a user sees the whole picture. The
//! payload of an unverified envelope is read only to *add* reasons; a pass needs exactly one
//! signature that verifies with the policy's key over the exact PAE bytes, and no reason at
//! all.
//!
//! Checks, in order:
//! 1. size ([`MAX_DOCUMENT_SIZE`], before parsing), JSON shape, `mediaType` — each of these
//!    ends verification (nothing further can be read);
//! 2. exactly one signature; its key id and the bundle's public-key hint, when present, equal
//!    [`PublicKey::key_id`] of the policy key; the signature verifies;
//! 3. `payloadType` is [`DSSE_PAYLOAD_TYPE`]; the payload is an in-toto Statement v1;
//! 4. a subject carries the policy's digest;
//! 5. the predicate type (the policy's, or SLSA Provenance v1 when the policy names a builder
//!    or a source);
//! 6. for provenance: `runDetails.builder.id` equals the policy's builder id;
//! 7. for provenance: the policy's source URI matches one of the provenance's source URIs —
//!    `buildDefinition.resolvedDependencies[].uri`,
//!    `buildDefinition.externalParameters.configSource.uri` and the values of
//!    `buildDefinition.externalParameters.namedContexts`. A URI matches when it equals the
//!    policy's, or starts with it followed by `@`, `#` or `?` (a ref, fragment or query:
//!    `git+https://example.invalid/repo` matches `git+https://example.invalid/repo@refs/heads/main`
//!    but not `git+https://example.invalid/repo-fork`).

use std::fmt;

use serde_json::Value;

use crate::bundle::{Bundle, BundleError, MAX_DOCUMENT_SIZE};
use crate::dsse::pae;
use crate::keys::PublicKey;
use crate::media::{DSSE_PAYLOAD_TYPE, SLSA_PROVENANCE_V1};
use crate::statement::{Statement, is_valid_digest};

/// What a bundle must satisfy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The key the envelope must be signed with.
    pub key: PublicKey,
    /// The image digest a subject must carry: `sha256:<hex>`.
    pub subject_digest: String,
    /// Required predicate type, if any.
    pub predicate_type: Option<String>,
    /// Required `runDetails.builder.id` (implies SLSA Provenance v1).
    pub builder_id: Option<String>,
    /// Required source URI (implies SLSA Provenance v1); see the module docs for the match.
    pub source_uri: Option<String>,
}

impl Policy {
    /// What the statement must claim, without the key.
    pub fn claims(&self) -> Claims<'_> {
        Claims {
            subject_digest: &self.subject_digest,
            predicate_type: self.predicate_type.as_deref(),
            builder_id: self.builder_id.as_deref(),
            source_uri: self.source_uri.as_deref(),
        }
    }
}

/// What a statement must claim (checks 4 to 7 of the module docs), whoever signed it.
#[derive(Debug, Clone, Copy)]
pub struct Claims<'a> {
    /// The digest a subject must carry: `sha256:<hex>`.
    pub subject_digest: &'a str,
    /// Required predicate type, if any.
    pub predicate_type: Option<&'a str>,
    /// Required `runDetails.builder.id` (implies SLSA Provenance v1).
    pub builder_id: Option<&'a str>,
    /// Required source URI (implies SLSA Provenance v1).
    pub source_uri: Option<&'a str>,
}

/// A bundle that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The signed statement.
    pub statement: Statement,
    /// Key id of the key that verified it.
    pub key_id: String,
}

/// Why a bundle fails the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Over the size limit; not parsed.
    TooLarge {
        /// Input size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a well-formed bundle, envelope or statement (truncated JSON lands here).
    Malformed {
        /// What is malformed, and how.
        what: String,
    },
    /// The bundle's `mediaType` is not sigstore bundle v0.3.
    UnknownMediaType {
        /// The mediaType found.
        found: String,
    },
    /// The envelope has no signature.
    NoSignatures,
    /// More than one signature (kiln requires exactly one).
    MultipleSignatures {
        /// How many.
        count: usize,
    },
    /// The bundle's public-key hint or the signature's key id names another key.
    KeyMismatch {
        /// `publicKey.hint` or `signature keyid`.
        field: &'static str,
        /// The id found.
        found: String,
        /// The policy key's id.
        expected: String,
    },
    /// The signature does not verify with the policy's key.
    BadSignature {
        /// The policy key's id.
        key_id: String,
    },
    /// The envelope's `payloadType` is not an in-toto statement.
    WrongPayloadType {
        /// The payloadType found.
        found: String,
    },
    /// No subject carries the expected digest.
    SubjectMismatch {
        /// `sha256:<hex>` required.
        expected: String,
        /// Digests found (`alg:hex`).
        found: Vec<String>,
    },
    /// The predicate type differs.
    PredicateTypeMismatch {
        /// Required.
        expected: String,
        /// Found.
        found: String,
    },
    /// The provenance's builder id differs (or is absent).
    BuilderIdMismatch {
        /// Required.
        expected: String,
        /// Found.
        found: Option<String>,
    },
    /// No source URI of the provenance matches.
    SourceUriMismatch {
        /// Required.
        expected: String,
        /// Source URIs found.
        found: Vec<String>,
    },
    /// A sigstore check failed (`kiln verify` with a trusted root: certificate chain,
    /// identity, transparency log, timestamps, signature).
    Sigstore(crate::sigstore::Failure),
    /// The policy itself is unusable (a subject digest that is not `sha256:<hex>`).
    InvalidPolicy {
        /// What is wrong.
        what: String,
    },
}

impl Reason {
    /// A stable name of the variant (`BadSignature`), for tests and machine-readable output.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::TooLarge { .. } => "TooLarge",
            Reason::Malformed { .. } => "Malformed",
            Reason::UnknownMediaType { .. } => "UnknownMediaType",
            Reason::NoSignatures => "NoSignatures",
            Reason::MultipleSignatures { .. } => "MultipleSignatures",
            Reason::KeyMismatch { .. } => "KeyMismatch",
            Reason::BadSignature { .. } => "BadSignature",
            Reason::WrongPayloadType { .. } => "WrongPayloadType",
            Reason::SubjectMismatch { .. } => "SubjectMismatch",
            Reason::PredicateTypeMismatch { .. } => "PredicateTypeMismatch",
            Reason::BuilderIdMismatch { .. } => "BuilderIdMismatch",
            Reason::SourceUriMismatch { .. } => "SourceUriMismatch",
            Reason::Sigstore(f) => f.check.name(),
            Reason::InvalidPolicy { .. } => "InvalidPolicy",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::TooLarge { size, limit } => {
                write!(
                    f,
                    "bundle is {size} bytes, over the {limit}-byte limit; not parsed"
                )
            }
            Reason::Malformed { what } => write!(f, "malformed: {what}"),
            Reason::UnknownMediaType { found } => write!(
                f,
                "unknown bundle mediaType {found:?}; kiln verifies {:?}",
                crate::media::SIGSTORE_BUNDLE_V03
            ),
            Reason::NoSignatures => f.write_str("the envelope has no signatures"),
            Reason::MultipleSignatures { count } => {
                write!(
                    f,
                    "the envelope has {count} signatures; kiln requires exactly one"
                )
            }
            Reason::KeyMismatch {
                field,
                found,
                expected,
            } => write!(
                f,
                "{field} names key {found}, but the verification key is {expected}"
            ),
            Reason::BadSignature { key_id } => {
                write!(f, "the signature does not verify with key {key_id}")
            }
            Reason::WrongPayloadType { found } => {
                write!(
                    f,
                    "payloadType is {found:?}, expected {DSSE_PAYLOAD_TYPE:?}"
                )
            }
            Reason::SubjectMismatch { expected, found } => write!(
                f,
                "no subject has digest {expected} (subjects: {})",
                found.join(", ")
            ),
            Reason::PredicateTypeMismatch { expected, found } => {
                write!(f, "predicateType is {found:?}, expected {expected:?}")
            }
            Reason::BuilderIdMismatch {
                expected,
                found: Some(found),
            } => {
                write!(f, "builder id is {found:?}, expected {expected:?}")
            }
            Reason::BuilderIdMismatch {
                expected,
                found: None,
            } => {
                write!(
                    f,
                    "provenance has no runDetails.builder.id, expected {expected:?}"
                )
            }
            Reason::SourceUriMismatch { expected, found } => write!(
                f,
                "no source URI matches {expected:?} (provenance sources: {})",
                if found.is_empty() {
                    "none".to_owned()
                } else {
                    found.join(", ")
                }
            ),
            Reason::Sigstore(failure) => write!(f, "sigstore {failure}"),
            Reason::InvalidPolicy { what } => write!(f, "invalid policy: {what}"),
        }
    }
}

/// Verifies a bundle against `policy`; see the module docs for the checks. On failure, every
/// reason found.
pub fn verify_bundle(bytes: &[u8], policy: &Policy) -> Result<Verified, Vec<Reason>> {
    verify_bundle_with_limit(bytes, policy, MAX_DOCUMENT_SIZE)
}

/// [`verify_bundle`] with another size limit.
pub fn verify_bundle_with_limit(
    bytes: &[u8],
    policy: &Policy,
    limit: usize,
) -> Result<Verified, Vec<Reason>> {
    let bundle = Bundle::from_json_with_limit(bytes, limit).map_err(|e| vec![bundle_reason(e)])?;
    let mut reasons = Vec::new();
    let expected_key = policy.key.key_id();

    // 2. Signature: exactly one, naming no other key, verifying over the PAE.
    let env = &bundle.envelope;
    let mut signature_ok = false;
    match env.signatures.as_slice() {
        [] => reasons.push(Reason::NoSignatures),
        [sig] => {
            let mut named: Vec<(&'static str, &str)> = Vec::new();
            if let Some(hint) = bundle.public_key_hint.as_deref().filter(|h| !h.is_empty()) {
                named.push(("publicKey.hint", hint));
            }
            if !sig.keyid.is_empty() && named.iter().all(|(_, n)| *n != sig.keyid) {
                named.push(("signature keyid", &sig.keyid));
            }
            for (field, found) in named {
                if found != expected_key {
                    reasons.push(Reason::KeyMismatch {
                        field,
                        found: found.to_owned(),
                        expected: expected_key.clone(),
                    });
                }
            }
            signature_ok = policy
                .key
                .verify(&pae(&env.payload_type, &env.payload), &sig.sig);
            if !signature_ok {
                reasons.push(Reason::BadSignature {
                    key_id: expected_key.clone(),
                });
            }
        }
        many => reasons.push(Reason::MultipleSignatures { count: many.len() }),
    }

    // 3. Payload. Read even when the signature failed, to report more reasons; never to pass.
    if env.payload_type != DSSE_PAYLOAD_TYPE {
        reasons.push(Reason::WrongPayloadType {
            found: env.payload_type.clone(),
        });
        return Err(reasons);
    }
    let statement = match Statement::from_json(&env.payload) {
        Ok(s) => s,
        Err(e) => {
            reasons.push(Reason::Malformed {
                what: format!("payload: {e}"),
            });
            return Err(reasons);
        }
    };
    check_statement(&statement, &policy.claims(), &mut reasons);

    if signature_ok && reasons.is_empty() {
        Ok(Verified {
            statement,
            key_id: expected_key,
        })
    } else {
        Err(reasons)
    }
}

/// What [`verify_sigstore_bundle`] established.
#[derive(Debug, Clone)]
pub struct SigstoreVerified {
    /// The signed in-toto statement (DSSE bundles); `None` for a message signature, which
    /// signs the subject digest itself.
    pub statement: Option<Statement>,
    /// sha256 of the signer's SubjectPublicKeyInfo (the key's, or the certificate's).
    pub key_id: String,
    /// The certificate identity (SAN, issuer, Fulcio extensions) for certificate-signed
    /// bundles: [`crate::sigstore::identity::summary`].
    pub identity: Option<Value>,
    /// Everything the sigstore verification established.
    pub sigstore: crate::sigstore::Verified,
}

/// Verifies a sigstore bundle (any version, any content, with its transparency-log entries
/// and timestamps: [`crate::sigstore::verify_bundle`]) whose artifact is `claims`'
/// subject digest (SHA-256 only), then, for a DSSE bundle, checks 4 to 7 of the module docs
/// on its in-toto statement. A message signature passes when it signs the subject digest and
/// nothing in `claims` needs a statement (a predicate type, builder or source).
pub fn verify_sigstore_bundle(
    bytes: &[u8],
    claims: &Claims<'_>,
    root: &crate::sigstore::trust::TrustedRoot,
    identity: crate::sigstore::Identity<'_>,
) -> Result<SigstoreVerified, Vec<Reason>> {
    use sha2::Digest as _;

    let digest: [u8; 32] = match claims
        .subject_digest
        .strip_prefix("sha256:")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
    {
        Some(d) => d,
        None => {
            return Err(vec![Reason::InvalidPolicy {
                what: format!(
                    "subject digest {:?} is not sha256:<64 hex>",
                    claims.subject_digest
                ),
            }]);
        }
    };
    let verified = crate::sigstore::verify_bundle(
        bytes,
        crate::sigstore::Artifact::Sha256(&digest),
        root,
        identity,
    )
    .map_err(|fs| fs.into_iter().map(Reason::Sigstore).collect::<Vec<_>>())?;
    let spki: Vec<u8> = match (&verified.certificate, identity) {
        (Some(info), _) => info.spki.clone(),
        (None, crate::sigstore::Identity::KeyPub(spki)) => spki.to_vec(),
        (None, _) => Vec::new(),
    };
    let mut reasons = Vec::new();
    let statement = match &verified.bundle.content {
        crate::sigstore::bundle::Content::DsseEnvelope(env) => {
            match Statement::from_json(&env.payload) {
                Ok(statement) => {
                    check_statement(&statement, claims, &mut reasons);
                    Some(statement)
                }
                Err(e) => {
                    reasons.push(Reason::Malformed {
                        what: format!("payload: {e}"),
                    });
                    None
                }
            }
        }
        crate::sigstore::bundle::Content::MessageSignature { .. } => {
            let needs = claims
                .predicate_type
                .or(claims.builder_id.map(|_| SLSA_PROVENANCE_V1))
                .or(claims.source_uri.map(|_| SLSA_PROVENANCE_V1));
            if let Some(expected) = needs {
                reasons.push(Reason::PredicateTypeMismatch {
                    expected: expected.to_owned(),
                    found: "(a message signature: no statement)".into(),
                });
            }
            None
        }
    };
    if !reasons.is_empty() {
        return Err(reasons);
    }
    Ok(SigstoreVerified {
        statement,
        key_id: hex::encode(sha2::Sha256::digest(&spki)),
        identity: verified
            .certificate
            .as_ref()
            .map(crate::sigstore::identity::summary),
        sigstore: verified,
    })
}

fn bundle_reason(e: BundleError) -> Reason {
    match e {
        BundleError::TooLarge { size, limit } => Reason::TooLarge { size, limit },
        BundleError::UnknownMediaType { found } => Reason::UnknownMediaType { found },
        BundleError::Malformed { reason } => Reason::Malformed {
            what: format!("bundle: {reason}"),
        },
        BundleError::NoEnvelope => Reason::Malformed {
            what: "bundle has no dsseEnvelope".into(),
        },
    }
}

fn check_statement(statement: &Statement, policy: &Claims<'_>, reasons: &mut Vec<Reason>) {
    // 4. Subject.
    match policy.subject_digest.split_once(':') {
        Some((alg, hex)) if is_valid_digest(alg, hex) => {
            let has = statement
                .subject
                .iter()
                .any(|s| s.digest.get(alg).is_some_and(|d| d == hex));
            if !has {
                let found = statement
                    .subject
                    .iter()
                    .flat_map(|s| s.digest.iter().map(|(a, d)| format!("{a}:{d}")))
                    .collect();
                reasons.push(Reason::SubjectMismatch {
                    expected: policy.subject_digest.to_owned(),
                    found,
                });
            }
        }
        _ => reasons.push(Reason::InvalidPolicy {
            what: format!(
                "subject digest {:?} is not <algorithm>:<lowercase hex>",
                policy.subject_digest
            ),
        }),
    }

    // 5. Predicate type.
    let needs_provenance = policy.builder_id.is_some() || policy.source_uri.is_some();
    let expected_type = policy
        .predicate_type
        .map(str::to_owned)
        .or_else(|| needs_provenance.then(|| SLSA_PROVENANCE_V1.to_owned()));
    if let Some(expected) = expected_type
        && statement.predicate_type != expected
    {
        reasons.push(Reason::PredicateTypeMismatch {
            expected,
            found: statement.predicate_type.clone(),
        });
        return;
    }
    if !needs_provenance || statement.predicate_type != SLSA_PROVENANCE_V1 {
        return;
    }
    let p = &statement.predicate;

    // 6. Builder.
    if let Some(expected) = policy.builder_id {
        let found = p.pointer("/runDetails/builder/id").and_then(Value::as_str);
        if found != Some(expected) {
            reasons.push(Reason::BuilderIdMismatch {
                expected: expected.to_owned(),
                found: found.map(str::to_owned),
            });
        }
    }

    // 7. Source.
    if let Some(expected) = policy.source_uri {
        let found = source_uris(p);
        if !found.iter().any(|uri| uri_matches(uri, expected)) {
            reasons.push(Reason::SourceUriMismatch {
                expected: expected.to_owned(),
                found,
            });
        }
    }
}

/// The provenance's source URIs (see the module docs).
fn source_uris(predicate: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(deps) = predicate
        .pointer("/buildDefinition/resolvedDependencies")
        .and_then(Value::as_array)
    {
        out.extend(
            deps.iter()
                .filter_map(|d| d.get("uri")?.as_str().map(str::to_owned)),
        );
    }
    let ext = predicate.pointer("/buildDefinition/externalParameters");
    if let Some(uri) = ext
        .and_then(|e| e.pointer("/configSource/uri"))
        .and_then(Value::as_str)
    {
        out.push(uri.to_owned());
    }
    if let Some(named) = ext
        .and_then(|e| e.get("namedContexts"))
        .and_then(Value::as_object)
    {
        out.extend(named.values().filter_map(|v| v.as_str().map(str::to_owned)));
    }
    out
}

fn uri_matches(uri: &str, expected: &str) -> bool {
    match uri.strip_prefix(expected) {
        Some("") => !expected.is_empty(),
        Some(rest) => rest.starts_with(['@', '#', '?']),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn source_uri_match_is_exact_or_followed_by_a_ref() {
        let repo = "git+https://example.invalid/repo";
        assert!(uri_matches(repo, repo));
        assert!(uri_matches(
            "git+https://example.invalid/repo@refs/heads/main",
            repo
        ));
        assert!(uri_matches("git+https://example.invalid/repo#v1", repo));
        assert!(!uri_matches("git+https://example.invalid/repo-fork", repo));
        assert!(!uri_matches("git+https://example.invalid/repo/sub", repo));
        assert!(!uri_matches("anything", ""));
    }
}
