//! Offline verification of sigstore bundles (kiln issue 9): [`verify_bundle`] end to end,
//! built on the transparency-log checks, the certificate checks and RFC 3161 timestamps.
//!
//! Pure functions over bytes already in memory: no I/O, no clock (callers pass times), no
//! panics on any input, and every input bounded ([`bundle::MAX_BUNDLE_SIZE`] 16 MiB, inclusion
//! proofs of at most [`bundle::MAX_PROOF_HASHES`] 64 hashes, checkpoints of at most
//! [`checkpoint::MAX_CHECKPOINT_SIZE`] 64 KiB, trusted roots of at most
//! [`trust::MAX_TRUSTED_ROOT_SIZE`] 4 MiB).
//!
//! # Verified here
//!
//! - [`bundle`]: bundles v0.1, v0.2, v0.3 in every `mediaType` spelling parse into typed values;
//!   int64 fields as strings or numbers, negatives rejected; an empty certificate chain is
//!   rejected.
//! - [`trust`]: trusted roots v0.1/v0.2; a transparency log is looked up by `logId.keyId`; its
//!   key must have a `validFor.start` and, when the entry has an integrated time vouched for by
//!   a signed entry timestamp, be valid at it (closed interval). RFC 3339 parsing without a date
//!   library.
//! - [`merkle`]: RFC 6962/9162 inclusion proofs of the entry's canonicalized body.
//! - [`checkpoint`]: signed-note checkpoints: parsed strictly; at least one signature by the
//!   log's key (ECDSA P-256 for Rekor v1, Ed25519 for Rekor v2) over the note text; witness
//!   cosignatures ignored; size and root hash equal to the proof's.
//! - [`set`]: Rekor v1 signed entry timestamps.
//! - [`rekor`]: entry bodies (`hashedrekord` 0.0.1/0.0.2, `dsse` 0.0.1/0.0.2, `intoto` 0.0.2)
//!   match the bundle's signature, artifact digest / payload and verifier.
//! - [`verify_tlog_entry`] runs all of that for one entry; [`check_message_digest`] compares the
//!   bundle's `messageDigest` hint with the artifact.
//! - [`cert`]: a bounded DER reader for the leaf (validity, SubjectPublicKeyInfo, SAN URI /
//!   email, Fulcio extensions 1.3.6.1.4.1.57264.1.N: v1 raw strings, v2 DER strings); the chain
//!   to a trusted root certificate authority valid (`validFor`) at the signing time, by
//!   rustls-webpki with id-kp-codeSigning, the leaf valid at that time (the bundle's own
//!   intermediates are not used; a self-issued certificate in the bundle's chain is rejected);
//!   signatures with aws-lc-rs (ECDSA P-256/SHA-256, P-384/SHA-384, Ed25519, RSA PKCS#1 v1.5).
//! - [`sct`]: the SCTs embedded in the leaf (RFC 6962, extension 1.3.6.1.4.1.11129.2.4.2),
//!   parsed strictly (v1 only, every TLS length checked, at most [`sct::MAX_SCTS`]); each
//!   signs the precertificate (the leaf's TBSCertificate without that extension, re-encoded)
//!   and the SHA-256 of the issuer's SubjectPublicKeyInfo, the issuer being the certificate
//!   with the leaf's issuer name in the trusted authority the leaf chains to (at a signing
//!   time, else at its `notBefore`); the log is looked up in `ctlogs` by `logId.keyId` and its
//!   key must be valid (`validFor`, closed) at the SCT's timestamp; ECDSA and RSA PKCS#1 v1.5
//!   with SHA-256/384 (SHA-512 for RSA). At least one SCT must verify; SCTs from unknown logs
//!   are skipped.
//! - [`tsa`]: RFC 3161 timestamps (a TimeStampResp or a bare token): CMS SignedData over a
//!   TSTInfo, `messageImprint` = digest of the bundle's signature, the signed attributes'
//!   `messageDigest`, the signature by the leaf of a trusted timestamp authority valid at
//!   `genTime`, that leaf valid at `genTime` and chaining (rustls-webpki, id-kp-timeStamping)
//!   to the authority's root. Certificates embedded in the token are ignored.
//! - [`verify_bundle`]: all of the above for one bundle against an [`Artifact`] (bytes or
//!   SHA-256) and an [`Identity`] policy (a public key, or a certificate SAN and OIDC issuer,
//!   each exact or an anchored regular expression, [`Matcher`]): the signature over the artifact (prehashed when only the digest is known) or
//!   over the DSSE PAE (exactly one DSSE signature); the in-toto statement has a subject with
//!   the artifact's SHA-256; every transparency-log entry verifies (at least one); the signing
//!   times are the verified integrated times (signed entry timestamps) and the verified RFC
//!   3161 `genTime`s (at least one); the certificate chains and is valid at every one of them;
//!   at least one of its embedded SCTs verifies; Rekor v2 log keys are valid at the
//!   timestamps' times. Every failed check is reported ([`Failure`]).
//!
//! # Not verified here (yet)
//!
//! - SCTs delivered outside the certificate (TLS extension, OCSP), SCTs as a threshold (more
//!   than one), and SCT timestamps against the certificate's or the log entry's times.
//! - Policy on the other Fulcio extensions: they are read ([`cert::CertInfo::fulcio`]) and
//!   handed to the caller ([`identity::summary`], the `kiln.verify` policy input).
//! - RFC 3161: the signer info's `sid`, nonce, policy OID and `accuracy`; RSA-PSS signatures.
//! - `dsse` `envelopeHash` / `intoto` `hash` (hashes of the log's re-serialised envelope).
//! - Consistency proofs between checkpoints, witness cosignatures, and more than one log
//!   entry / timestamp as a policy threshold (one of each kind present must verify; every
//!   present one must).
//! - `dsse` 0.0.2 (Rekor v2) has no conformance vector; its field names follow the Rekor v2
//!   protobufs (`dsseV002.payloadHash`, `signatures[].content`/`verifier`).

pub mod bundle;
pub mod cert;
pub mod checkpoint;
pub mod identity;
mod json;
pub mod merkle;
pub mod rekor;
pub mod sct;
pub mod set;
pub mod trust;
pub mod tsa;
pub mod verify;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_e2e;
#[cfg(test)]
mod tests_sct;

pub use identity::Matcher;
pub use json::FieldError;

/// The sigstore public-good instance's `trusted_root.json` as kiln ships it, for offline use
/// when no `--trusted-root` is given: Fulcio's CAs, Rekor v1 and v2 logs, the CT logs and the
/// timestamp authority, with their validity windows (from sigstore-conformance's
/// `public-good-trusted_root.json`; the authoritative copy is distributed by sigstore's TUF
/// repository, and deployments that must follow key rotations should pass a fresh one).
pub const PUBLIC_GOOD_TRUSTED_ROOT: &[u8] =
    include_bytes!("../../trust/public-good-trusted_root.json");
pub use verify::{Artifact, Check, Failure, Identity, Verified, verify_bundle};

use bundle::{Bundle, BundleVersion, Content, TlogEntry};
use checkpoint::{Checkpoint, CheckpointError};
use merkle::MerkleError;
use rekor::{Body, Expected, RekorError};
use set::SetError;
use trust::{TrustError, TrustedRoot};

/// Why a transparency-log entry does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlogError {
    /// The log is not trusted (unknown, malformed validity, or key not valid then).
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The entry's body is unreadable or about something else.
    #[error(transparent)]
    Body(#[from] RekorError),
    /// The inclusion proof does not verify.
    #[error(transparent)]
    Inclusion(#[from] MerkleError),
    /// The checkpoint is malformed, unsigned by the log, or for another tree.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The signed entry timestamp does not verify.
    #[error(transparent)]
    Set(#[from] SetError),
    /// Bundles v0.2 and later must carry an inclusion proof.
    #[error("a v0.2+ bundle's log entry must carry an inclusion proof")]
    NoInclusionProof,
    /// An inclusion proof without a checkpoint and without a signed entry timestamp: nothing
    /// signed by the log vouches for its root hash.
    #[error("inclusion proof has no checkpoint (and no signed entry timestamp vouches for it)")]
    NoCheckpoint,
    /// Neither an inclusion proof nor a signed entry timestamp.
    #[error("log entry has neither an inclusion proof nor a signed entry timestamp")]
    NoProof,
    /// The bundle has no transparency-log entry.
    #[error("bundle has no transparency-log entry")]
    NoEntries,
}

/// What [`verify_tlog_entry`] established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogVerified {
    /// The entry's parsed body.
    pub body: Body,
    /// The verified checkpoint, when the entry has one.
    pub checkpoint: Option<Checkpoint>,
    /// Whether a signed entry timestamp was verified.
    pub set_verified: bool,
    /// The integrated time vouched for by the verified signed entry timestamp (Rekor v1).
    pub integrated_time: Option<u64>,
}

/// Verifies one transparency-log entry of `bundle` against `root`: trusted log (its key valid
/// at the integrated time when a signed entry timestamp vouches for one), body matches
/// `expected`, inclusion proof and signed checkpoint, signed entry timestamp when present.
///
/// Entries without a verified integrated time (Rekor v2, or v1 entries with a proof only) get
/// no time check here: the caller checks the log key's `validFor` at the time an RFC 3161
/// timestamp proves ([`trust::TrustedRoot::tlog_at`]).
pub fn verify_tlog_entry(
    bundle: &Bundle,
    entry: &TlogEntry,
    root: &TrustedRoot,
    expected: &Expected<'_>,
) -> Result<TlogVerified, TlogError> {
    let set_present = entry.signed_entry_timestamp.is_some();
    // The integrated time is the log's word only when its signed entry timestamp verifies
    // (checked below, with this log's key); without one it is unauthenticated and not used.
    let log = match entry.integrated_time.filter(|_| set_present) {
        Some(t) => root.tlog_at(&entry.log_id, i64::try_from(t).unwrap_or(i64::MAX))?,
        None => root.tlog(&entry.log_id)?,
    };
    let body = rekor::check_body(entry, expected)?;
    let mut checkpoint = None;
    match &entry.inclusion_proof {
        Some(proof) => {
            merkle::verify_inclusion(
                proof.log_index,
                proof.tree_size,
                &entry.canonicalized_body,
                &proof.hashes,
                &proof.root_hash,
            )?;
            match &proof.checkpoint {
                Some(envelope) => {
                    checkpoint = Some(checkpoint::verify(envelope, log, proof)?);
                }
                None if set_present && bundle.version == BundleVersion::V01 => {}
                None => return Err(TlogError::NoCheckpoint),
            }
        }
        None if bundle.version >= BundleVersion::V02 => return Err(TlogError::NoInclusionProof),
        None if !set_present => return Err(TlogError::NoProof),
        None => {}
    }
    if set_present {
        set::verify(entry, log)?;
    }
    Ok(TlogVerified {
        body,
        checkpoint,
        set_verified: set_present,
        integrated_time: entry.integrated_time.filter(|_| set_present),
    })
}

/// [`verify_tlog_entry`] for every entry of the bundle (at least one).
pub fn verify_tlog_entries(
    bundle: &Bundle,
    root: &TrustedRoot,
    expected: &Expected<'_>,
) -> Result<Vec<TlogVerified>, TlogError> {
    let entries = &bundle.verification_material.tlog_entries;
    if entries.is_empty() {
        return Err(TlogError::NoEntries);
    }
    entries
        .iter()
        .map(|e| verify_tlog_entry(bundle, e, root, expected))
        .collect()
}

/// Compares a message signature's `messageDigest` (an unauthenticated hint) with the
/// artifact's SHA-256, when the bundle gives a SHA-256 digest.
pub fn check_message_digest(
    content: &Content,
    artifact_sha256: &[u8; 32],
) -> Result<(), RekorError> {
    if let Content::MessageSignature {
        digest: Some((algorithm, digest)),
        ..
    } = content
        && algorithm == "SHA2_256"
        && digest[..] != artifact_sha256[..]
    {
        return Err(RekorError::Mismatch {
            field: "bundle messageDigest",
            detail: format!(
                " (bundle {}, artifact {})",
                hex::encode(digest),
                hex::encode(artifact_sha256)
            ),
        });
    }
    Ok(())
}
