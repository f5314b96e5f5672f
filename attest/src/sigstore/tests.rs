//! The transparency-log checks against sigstore-conformance's `bundle-verify` cases
//! (`/work/shared/vectors/sigstore-conformance`, read at test time).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bundle::{self, Bundle, BundleError};
use super::checkpoint::CheckpointError;
use super::json::FieldError;
use super::merkle::MerkleError;
use super::rekor::{Expected, RekorError, VerifierRef};
use super::set::SetError;
use super::trust::{self, TrustError, TrustedRoot};
use super::{TlogError, check_message_digest, verify_tlog_entries};
use crate::keys::PublicKey;

fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/sigstore-conformance")
}

fn cases() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(suite())
        .expect("conformance suite directory")
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("bundle.sigstore.json").is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    out.sort();
    assert!(out.len() >= 45, "suite has only {} cases", out.len());
    out
}

struct Case {
    bundle: Vec<u8>,
    root: TrustedRoot,
    artifact_sha256: [u8; 32],
    /// `key.pub` as DER SPKI; `Err` when the file is not a usable key.
    key: Option<Result<Vec<u8>, String>>,
}

fn load(name: &str) -> Case {
    let dir = suite().join(name);
    let read = |f: &str| std::fs::read(dir.join(f)).ok();
    let root_bytes = read("trusted_root.json")
        .unwrap_or_else(|| std::fs::read(suite().join("public-good-trusted_root.json")).unwrap());
    let artifact =
        read("artifact").unwrap_or_else(|| std::fs::read(suite().join("a.txt")).unwrap());
    let key = read("key.pub").map(|pem| {
        PublicKey::from_pem(std::str::from_utf8(&pem).unwrap())
            .map(|k| k.to_spki_der())
            .map_err(|e| e.to_string())
    });
    Case {
        bundle: read("bundle.sigstore.json").unwrap(),
        root: trust::parse(&root_bytes).unwrap(),
        artifact_sha256: Sha256::digest(&artifact).into(),
        key,
    }
}

fn expected<'a>(b: &'a Bundle, case: &'a Case) -> Result<Expected<'a>, String> {
    let verifier = match (&case.key, b.verification_material.signer.leaf_certificate()) {
        (Some(Ok(key)), _) => VerifierRef::PublicKey(key),
        (Some(Err(e)), _) => return Err(format!("key: {e}")),
        (None, Some(cert)) => VerifierRef::Certificate(cert),
        (None, None) => return Err("key: none".into()),
    };
    Ok(Expected {
        content: &b.content,
        verifier,
        artifact_sha256: Some(&case.artifact_sha256),
    })
}

/// A short, stable name for a failure, to compare with the expected reason.
fn code(e: &TlogError) -> String {
    match e {
        TlogError::Trust(TrustError::UnknownLog { .. }) => "trust: unknown log".into(),
        TlogError::Trust(TrustError::MissingValidityStart { .. }) => {
            "trust: missing validity start".into()
        }
        TlogError::Trust(TrustError::OutsideValidity { .. }) => "trust: outside validity".into(),
        TlogError::Body(RekorError::Mismatch { field, .. }) => format!("body: {field}"),
        TlogError::Inclusion(MerkleError::RootMismatch { .. }) => "inclusion: root".into(),
        TlogError::Checkpoint(CheckpointError::InvalidSignature { .. }) => {
            "checkpoint: invalid signature".into()
        }
        TlogError::Checkpoint(CheckpointError::NoLogSignature { .. }) => {
            "checkpoint: no log signature".into()
        }
        TlogError::Checkpoint(CheckpointError::MalformedNote { .. }) => {
            "checkpoint: malformed note".into()
        }
        TlogError::Checkpoint(CheckpointError::MalformedCheckpoint { .. }) => {
            "checkpoint: malformed text".into()
        }
        TlogError::Checkpoint(CheckpointError::ProofMismatch { field, .. }) => {
            format!("checkpoint: {field}")
        }
        TlogError::Set(SetError::InvalidSignature { .. }) => "set: invalid signature".into(),
        other => format!("other: {other}"),
    }
}

/// This module's verdict on a case: `ok`, or why it fails.
fn outcome(name: &str) -> String {
    let case = load(name);
    let b = match bundle::parse(&case.bundle) {
        Ok(b) => b,
        Err(BundleError::Json { .. }) => return "parse: json".into(),
        Err(BundleError::Field(FieldError::Negative { field, .. })) => {
            return format!("parse: negative {field}");
        }
        Err(BundleError::Field(FieldError::Invalid { field, .. })) => {
            return format!("parse: invalid {field}");
        }
        Err(e) => return format!("parse: {e}"),
    };
    let expected = match expected(&b, &case) {
        Ok(e) => e,
        Err(e) => return e.split(':').next().unwrap_or_default().to_owned() + ": unusable",
    };
    if let Err(e) = verify_tlog_entries(&b, &case.root, &expected) {
        return code(&e);
    }
    if let Err(RekorError::Mismatch { field, .. }) =
        check_message_digest(&b.content, &case.artifact_sha256)
    {
        return format!("digest: {field}");
    }
    "ok".into()
}

/// Every case, with the verdict of the transparency-log checks. Cases whose failure is
/// another module's business (certificates, SCTs, TSA timestamps, the signature itself) pass
/// here; the table names each case this module must reject and why.
#[test]
fn conformance_verdicts() {
    let must_fail: BTreeMap<&str, &str> = [
        ("bundle-malformed-json_fail", "parse: json"),
        (
            "bundle-negative-log-index_fail",
            "parse: negative verificationMaterial.tlogEntries[0].logIndex",
        ),
        (
            "bundle-empty-certificate-chain_fail",
            "parse: invalid verificationMaterial.x509CertificateChain.certificates",
        ),
        ("bundle-from-wrong-instance_fail", "trust: unknown log"),
        ("checkpoint-wrong-roothash_fail", "checkpoint: root hash"),
        ("inclusion-proof-corrupted-hash_fail", "inclusion: root"),
        (
            "incorrect-public-key_fail",
            "body: verifier (certificate or public key)",
        ),
        ("intoto-log-entry-mismatch_fail", "body: signature"),
        (
            "invalid-checkpoint-signature_fail",
            "checkpoint: invalid signature",
        ),
        ("set-invalid-signature_fail", "set: invalid signature"),
        (
            "rekor2-checkpoint-missing-log-signature_fail",
            "checkpoint: malformed note",
        ),
        (
            "rekor2-checkpoint-missing-origin_fail",
            "checkpoint: malformed text",
        ),
        (
            "rekor2-checkpoint-missing-size_fail",
            "checkpoint: malformed text",
        ),
        ("rekor2-dsse-invalid-sig_fail", "body: signature"),
        ("rekor2-dsse-mismatch-sig_fail", "body: signature"),
        ("dsse-invalid-sig_fail", "body: signature"),
        ("dsse-mismatch-sig_fail", "body: signature"),
        (
            "trust-root-tlog-missing-validity-start_fail",
            "trust: missing validity start",
        ),
        ("wrong-hashedrekord-artifact_fail", "body: artifact digest"),
        ("wrong-hashedrekord-cert-and-sig_fail", "body: signature"),
        ("wrong-material_fail", "body: artifact digest"),
        (
            "message-digest-mismatch_fail",
            "digest: bundle messageDigest",
        ),
        // Its key.pub is not a key at all (corrupted base64): the verifier never gets to the log.
        ("managed-key-wrong-key_fail", "key: unusable"),
    ]
    .into_iter()
    .collect();
    let mut wrong = Vec::new();
    for name in cases() {
        let want = must_fail.get(name.as_str()).copied().unwrap_or("ok");
        let got = outcome(&name);
        if got != want {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
