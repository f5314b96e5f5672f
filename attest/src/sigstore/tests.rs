//! The transparency-log checks against sigstore-conformance's `bundle-verify` cases
//! (`../shared/vectors/sigstore-conformance` beside the checkout, or
//! `$KILN_SHARED_VECTORS/sigstore-conformance`; read at test time).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bundle::{
    self, Bundle, BundleError, BundleVersion, Content, DsseEnvelope, Signer, TlogEntry,
};
use super::checkpoint::{self, CheckpointError};
use super::json::FieldError;
use super::merkle::{self, MerkleError};
use super::rekor::{self, Expected, RekorError, VerifierRef};
use super::set::{self, SetError};
use super::trust::{self, TrustError, TrustedRoot};
use super::{TlogError, check_message_digest, verify_tlog_entries};
use crate::keys::PublicKey;

fn suite() -> PathBuf {
    // As the other conformance tests: `$KILN_SHARED_VECTORS`, else `../shared/vectors` beside
    // the checkout.
    std::env::var_os("KILN_SHARED_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"))
        .join("sigstore-conformance")
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

fn parsed(name: &str) -> (Case, Bundle) {
    let case = load(name);
    let b = bundle::parse(&case.bundle).unwrap_or_else(|e| panic!("{name}: {e}"));
    (case, b)
}

/// Runs `check` on every parsed case's first log entry; returns the cases it rejects.
fn rejected_by(
    check: impl Fn(&str, &Case, &Bundle, &TlogEntry) -> Option<Result<(), String>>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in cases() {
        let case = load(&name);
        let Ok(b) = bundle::parse(&case.bundle) else {
            continue;
        };
        let entry = &b.verification_material.tlog_entries[0];
        if let Some(Err(e)) = check(&name, &case, &b, entry) {
            out.insert(name, e);
        }
    }
    out
}

fn names(m: &BTreeMap<String, String>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

#[test]
fn every_bundle_parses_but_the_malformed_ones() {
    let mut failed = Vec::new();
    let mut versions = BTreeMap::new();
    for name in cases() {
        match bundle::parse(&load(&name).bundle) {
            Ok(b) => *versions.entry(format!("{:?}", b.version)).or_insert(0) += 1,
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    assert_eq!(failed.len(), 3, "{failed:#?}");
    assert_eq!(
        failed[0],
        "bundle-empty-certificate-chain_fail: malformed bundle: \
         verificationMaterial.x509CertificateChain.certificates: empty certificate chain"
    );
    assert!(failed[1].starts_with(
        "bundle-malformed-json_fail: bundle is not valid JSON: EOF while parsing a string"
    ));
    assert_eq!(
        failed[2],
        "bundle-negative-log-index_fail: malformed bundle: \
         verificationMaterial.tlogEntries[0].logIndex: negative value -1"
    );
    // All three versions, and both v0.3 spellings, are in the suite.
    assert_eq!(versions.len(), 3, "{versions:?}");
}

#[test]
fn bundle_fields_are_read() {
    let (_, b) = parsed("happy-path-v0.3");
    assert_eq!(b.version, BundleVersion::V03);
    assert!(matches!(
        b.verification_material.signer,
        Signer::Certificate(_)
    ));
    let e = &b.verification_material.tlog_entries[0];
    assert_eq!(
        (e.log_index, e.integrated_time),
        (79_571_823, Some(1_710_869_186))
    );
    assert_eq!(
        (e.kind.as_str(), e.version.as_str()),
        ("hashedrekord", "0.0.1")
    );
    assert_eq!(hex::encode(&e.log_id[..4]), "c0d23d6a");
    let p = e.inclusion_proof.as_ref().unwrap();
    assert_eq!(
        (p.log_index, p.tree_size, p.hashes.len()),
        (75_408_392, 75_408_393, 11)
    );
    assert!(
        p.checkpoint
            .as_deref()
            .unwrap()
            .starts_with("rekor.sigstore.dev - ")
    );
    assert_eq!(e.signed_entry_timestamp.as_ref().map(Vec::len), Some(72));
    let Content::MessageSignature { digest, signature } = &b.content else {
        panic!("not a message signature")
    };
    assert_eq!(digest.as_ref().unwrap().0, "SHA2_256");
    assert_eq!(signature.len(), 71);

    let (_, b) = parsed("rekor2-happy-path");
    assert_eq!(b.version, BundleVersion::V03);
    let e = &b.verification_material.tlog_entries[0];
    assert_eq!(
        (e.integrated_time, e.signed_entry_timestamp.as_ref()),
        (None, None)
    );
    assert_eq!(b.verification_material.rfc3161_timestamps.len(), 1);

    let (_, b) = parsed("happy-path-v0.2");
    assert_eq!(b.version, BundleVersion::V02);
    let (_, b) = parsed("managed-key-happy-path");
    assert!(matches!(
        b.verification_material.signer,
        Signer::PublicKeyHint(_)
    ));
    let (_, b) = parsed("happy-path-intoto-in-dsse-v3");
    let Content::DsseEnvelope(env) = &b.content else {
        panic!("not DSSE")
    };
    assert_eq!(env.payload_type, "application/vnd.in-toto+json");
    assert_eq!(env.signatures.len(), 1);
}

/// Edits the happy-path v0.3 bundle's JSON and parses it.
fn parse_edited(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Bundle, BundleError> {
    let mut v: serde_json::Value = serde_json::from_slice(&load("happy-path-v0.3").bundle).unwrap();
    edit(&mut v);
    bundle::parse(&serde_json::to_vec(&v).unwrap())
}

#[test]
fn int64_fields_and_encodings() {
    use serde_json::json;
    let set = |ptr: &'static str, value: serde_json::Value| {
        parse_edited(move |v| *v.pointer_mut(ptr).unwrap() = value)
    };
    const IDX: &str = "/verificationMaterial/tlogEntries/0/logIndex";
    assert_eq!(
        set(IDX, json!(79_571_823))
            .unwrap()
            .verification_material
            .tlog_entries[0]
            .log_index,
        79_571_823
    );
    for (value, want) in [
        (json!(-1), "negative value -1"),
        (json!("-7"), "negative value -7"),
        (json!("+7"), "not an int64"),
        (json!("1.5"), "not an int64"),
        (json!(1.5), "not an int64"),
        (json!(""), "not an int64"),
        (json!("99999999999999999999"), "not an int64"),
        (json!(true), "expected an int64"),
        (json!(null), "missing"),
    ] {
        let err = set(IDX, value.clone()).unwrap_err().to_string();
        assert!(
            err.contains("tlogEntries[0].logIndex") && err.contains(want),
            "{value}: {err}"
        );
    }
    let err = set(
        "/verificationMaterial/tlogEntries/0/canonicalizedBody",
        json!("not base64!"),
    )
    .unwrap_err();
    assert!(
        matches!(err, BundleError::Field(FieldError::Base64 { ref field, .. })
        if field == "verificationMaterial.tlogEntries[0].canonicalizedBody")
    );
    let err = set("/verificationMaterial/tlogEntries", json!({})).unwrap_err();
    assert!(err.to_string().contains("expected an array"), "{err}");
    let err = set(
        "/mediaType",
        json!("application/vnd.dev.sigstore.bundle+json;version=0.4"),
    )
    .unwrap_err();
    assert!(matches!(err, BundleError::UnknownMediaType { .. }));
    for spelling in [
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    ] {
        set("/mediaType", json!(spelling)).unwrap();
    }
    let hashes = vec![json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="); 65];
    let err = set(
        "/verificationMaterial/tlogEntries/0/inclusionProof/hashes",
        json!(hashes),
    )
    .unwrap_err();
    assert!(err.to_string().contains("over the limit of 64"), "{err}");
    assert!(matches!(
        bundle::parse(&vec![b' '; bundle::MAX_BUNDLE_SIZE + 1]),
        Err(BundleError::TooLarge { .. })
    ));
    for junk in [
        &b""[..],
        b"[]",
        b"{}",
        b"null",
        b"{\"mediaType\":1}",
        &[0xff, 0xfe],
    ] {
        assert!(bundle::parse(junk).is_err());
    }
}

/// Issue 9's named malformed inputs (truncated bundle, huge inclusion proof, bad base64, wrong
/// JSON types) are rejected with an error that names the field and the fault.
#[test]
fn malformed_bundles_are_rejected_with_a_clear_error() {
    use serde_json::json;
    const PROOF: &str = "/verificationMaterial/tlogEntries/0/inclusionProof";
    const HASHES: &str = "verificationMaterial.tlogEntries[0].inclusionProof.hashes";
    let set = |ptr: String, value: serde_json::Value| {
        parse_edited(move |v| *v.pointer_mut(&ptr).unwrap() = value)
    };

    // Truncated anywhere before its closing brace: not JSON, and the message says so.
    let original = load("happy-path-v0.3").bundle;
    let end = original.iter().rposition(|&b| b == b'}').unwrap();
    for cut in (0..end).step_by(61).chain([end - 1]) {
        let err = bundle::parse(&original[..cut]).unwrap_err();
        assert!(matches!(err, BundleError::Json { .. }), "cut {cut}: {err}");
        assert!(
            err.to_string()
                .starts_with("bundle is not valid JSON: EOF while parsing"),
            "cut {cut}: {err}"
        );
    }

    // A multi-MB inclusion proof (200,000 hashes, about 9 MB): refused by count, not decoded.
    let hashes = vec![json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="); 200_000];
    let err = set(format!("{PROOF}/hashes"), json!(hashes)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("malformed bundle: {HASHES}: 200000 items, over the limit of 64")
    );
    // One multi-MB hash parses (the size is bounded by MAX_BUNDLE_SIZE) and fails the proof.
    let huge = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        vec![0u8; 3 << 20],
    );
    let b = set(format!("{PROOF}/hashes/0"), json!(huge)).unwrap();
    let case = load("happy-path-v0.3");
    let err = verify_tlog_entries(&b, &case.root, &expected(&b, &case).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "proof hash 0 is 3145728 bytes, expected 32"
    );

    // Bad base64 in a proof hash and in the signature.
    let err = set(format!("{PROOF}/hashes/0"), json!("not base64!")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("malformed bundle: {HASHES}[0]: not base64: ")),
        "{err}"
    );
    let err = set("/messageSignature/signature".into(), json!("@@@@")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("malformed bundle: messageSignature.signature: not base64: "),
        "{err}"
    );

    // Wrong JSON types.
    for (ptr, value, want) in [
        (format!("{PROOF}/hashes/0"), json!(7), format!("{HASHES}[0]: expected a string")),
        (format!("{PROOF}/hashes"), json!("AAAA"), format!("{HASHES}: expected an array")),
        (
            format!("{PROOF}/treeSize"),
            json!([1]),
            "verificationMaterial.tlogEntries[0].inclusionProof.treeSize: expected an int64 (string or number)"
                .into(),
        ),
        (
            "/verificationMaterial".into(),
            json!("x"),
            "verificationMaterial: expected an object".into(),
        ),
        (
            "/messageSignature/signature".into(),
            json!(null),
            "messageSignature.signature: missing".into(),
        ),
    ] {
        let err = set(ptr.clone(), value).unwrap_err();
        assert_eq!(err.to_string(), format!("malformed bundle: {want}"), "{ptr}");
    }
    let err = bundle::parse(b"[]").unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed bundle: (top level): expected an object"
    );
}

#[test]
fn trusted_roots_and_log_lookup() {
    let mut roots = vec![suite().join("public-good-trusted_root.json")];
    for name in cases() {
        let p = suite().join(&name).join("trusted_root.json");
        if p.is_file() {
            roots.push(p);
        }
    }
    for p in &roots {
        let root = trust::parse(&std::fs::read(p).unwrap()).unwrap();
        assert!(!root.tlogs.is_empty() && !root.certificate_authorities.is_empty());
        // The note key hint of every Rekor key is the first 4 bytes of its log id, which is
        // how sigstore computes log ids (SHA-256 of the SPKI for ECDSA, of the note key for
        // Ed25519 with the host as origin).
        for log in &root.tlogs {
            let origin = log.base_url.split_once("://").map_or("", |(_, host)| host);
            let hint = checkpoint::log_key_hint(log, origin).unwrap();
            assert_eq!(
                hint[..],
                log.log_id[..4],
                "{}: {}",
                p.display(),
                log.base_url
            );
        }
    }
    let root = load("happy-path-v0.3").root;
    assert_eq!(root.tlogs.len(), 2);
    assert_eq!(root.timestamp_authorities.len(), 1);
    let v1 = b64("wNI9atQGlz+VWfO6LRygH4QUfY/8W4RFwiT5i5WRgB0=");
    assert_eq!(
        root.tlog(&v1).unwrap().base_url,
        "https://rekor.sigstore.dev"
    );
    assert!(root.tlog_at(&v1, 1_710_869_186).is_ok());
    assert!(matches!(
        root.tlog_at(&v1, 1_610_452_406),
        Err(TrustError::OutsideValidity { .. })
    ));
    assert!(matches!(
        root.tlog(&[0; 32]),
        Err(TrustError::UnknownLog { .. })
    ));

    // End inclusive: the integrated time is exactly the end.
    let root = load("trust-root-tlog-validity-end-inclusive").root;
    assert!(root.tlog_at(&v1, 1_689_177_396).is_ok());
    assert!(root.tlog_at(&v1, 1_689_177_397).is_err());
    // A missing start is a malformed trust root for that log, at any time.
    let root = load("trust-root-tlog-missing-validity-start_fail").root;
    let v2 = b64("8w1amZ2S5mJIQkQmPxdMuOrL/oJkvFg9MnQXmeOCXck=");
    assert!(matches!(
        root.tlog(&v2),
        Err(TrustError::MissingValidityStart { .. })
    ));
    assert!(matches!(
        root.tlog_at(&v2, 1_800_000_000),
        Err(TrustError::MissingValidityStart { .. })
    ));
    for bad in [&b"{}"[..], b"{\"mediaType\":\"x\"}", b"[", b"{\"mediaType\":\"application/vnd.dev.sigstore.trustedroot+json;version=0.1\",\"tlogs\":[{}]}"] {
        assert!(trust::parse(bad).is_err());
    }
}

fn dsse(b: &mut Bundle) -> &mut DsseEnvelope {
    match &mut b.content {
        Content::DsseEnvelope(env) => env,
        Content::MessageSignature { .. } => panic!("not DSSE"),
    }
}

fn b64(s: &str) -> Vec<u8> {
    super::json::b64("test", s).unwrap()
}

#[test]
fn inclusion_proofs() {
    let rejected = rejected_by(|_, _, _, e| {
        let p = e.inclusion_proof.as_ref()?;
        Some(
            merkle::verify_inclusion(
                p.log_index,
                p.tree_size,
                &e.canonicalized_body,
                &p.hashes,
                &p.root_hash,
            )
            .map_err(|e| e.to_string()),
        )
    });
    // (incorrect-public-key_fail edits the body after logging: its leaf changed too.)
    assert_eq!(
        names(&rejected),
        [
            "inclusion-proof-corrupted-hash_fail",
            "incorrect-public-key_fail"
        ]
    );
    let msg = &rejected["inclusion-proof-corrupted-hash_fail"];
    // Both hashes are named.
    assert!(msg.contains("recomputes root") && msg.matches(char::is_alphanumeric).count() > 128);

    // One flipped bit in a happy-path body breaks its proof.
    let (_, mut b) = parsed("rekor2-happy-path");
    let e = &mut b.verification_material.tlog_entries[0];
    e.canonicalized_body[10] ^= 1;
    let p = e.inclusion_proof.as_ref().unwrap();
    assert!(matches!(
        merkle::verify_inclusion(
            p.log_index,
            p.tree_size,
            &e.canonicalized_body,
            &p.hashes,
            &p.root_hash
        ),
        Err(MerkleError::RootMismatch { .. })
    ));
}

#[test]
fn checkpoints() {
    let rejected = rejected_by(|_, case, _, e| {
        let p = e.inclusion_proof.as_ref()?;
        let envelope = p.checkpoint.as_ref()?;
        let log = case.root.tlog(&e.log_id).ok()?;
        Some(
            checkpoint::verify(envelope, log, p)
                .map(|_| ())
                .map_err(|e| format!("{e:?}")),
        )
    });
    let want = [
        (
            "checkpoint-wrong-roothash_fail",
            "ProofMismatch { field: \"root hash\"",
        ),
        ("invalid-checkpoint-signature_fail", "InvalidSignature"),
        (
            "rekor2-checkpoint-missing-log-signature_fail",
            "MalformedNote { reason: \"no signature lines\"",
        ),
        (
            "rekor2-checkpoint-missing-origin_fail",
            "MalformedCheckpoint { reason: \"tree size line is not a decimal number",
        ),
        (
            "rekor2-checkpoint-missing-size_fail",
            "MalformedCheckpoint { reason: \"tree size line is not a decimal number",
        ),
    ];
    assert_eq!(names(&rejected), want.map(|(n, _)| n), "{rejected:#?}");
    for (name, reason) in want {
        assert!(
            rejected[name].starts_with(reason),
            "{name}: {}",
            rejected[name]
        );
    }

    // The cosigned cases pass: the log's line is found whether first or not, and the
    // witness lines (and a second, unknown key with the log's name) are ignored.
    for name in [
        "rekor2-checkpoint-multiple-cosigs",
        "rekor2-checkpoint-origin-not-first",
        "rekor2-checkpoint-two-sigs-cosigned",
    ] {
        let (case, b) = parsed(name);
        let e = &b.verification_material.tlog_entries[0];
        let p = e.inclusion_proof.as_ref().unwrap();
        let cp = checkpoint::verify(
            p.checkpoint.as_ref().unwrap(),
            case.root.tlog(&e.log_id).unwrap(),
            p,
        )
        .unwrap();
        assert!(cp.signatures.len() >= 2, "{name}");
    }

    // Only witness signatures: no log signature.
    let (case, b) = parsed("rekor2-checkpoint-origin-not-first");
    let e = &b.verification_material.tlog_entries[0];
    let p = e.inclusion_proof.as_ref().unwrap();
    let envelope = p.checkpoint.as_ref().unwrap();
    let witness_only: String = envelope
        .lines()
        .filter(|l| !l.starts_with("\u{2014} log2025"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(matches!(
        checkpoint::verify(&witness_only, case.root.tlog(&e.log_id).unwrap(), p),
        Err(CheckpointError::NoLogSignature { .. })
    ));
    // A changed text (extension line added) no longer verifies.
    let extended = envelope.replacen("=\n\n", "=\nextra\n\n", 1);
    assert!(matches!(
        checkpoint::verify(&extended, case.root.tlog(&e.log_id).unwrap(), p),
        Err(CheckpointError::InvalidSignature { .. })
    ));
    // An extension line in a signed checkpoint is kept (intoto-log-entry-mismatch_fail's
    // log writes a Timestamp line).
    let (case, b) = parsed("intoto-log-entry-mismatch_fail");
    let e = &b.verification_material.tlog_entries[0];
    let p = e.inclusion_proof.as_ref().unwrap();
    let cp = checkpoint::verify(
        p.checkpoint.as_ref().unwrap(),
        case.root.tlog(&e.log_id).unwrap(),
        p,
    )
    .unwrap();
    assert_eq!(cp.extensions, ["Timestamp: 1675209600000000000"]);
}

#[test]
fn signed_entry_timestamps() {
    let rejected = rejected_by(|_, case, _, e| {
        e.signed_entry_timestamp.as_ref()?;
        let log = case.root.tlog(&e.log_id).ok()?;
        Some(set::verify(e, log).map_err(|e| format!("{e:?}")))
    });
    // (incorrect-public-key_fail edits the body after logging, so its promise no longer
    // verifies either.)
    assert_eq!(
        names(&rejected),
        ["incorrect-public-key_fail", "set-invalid-signature_fail"],
        "{rejected:#?}"
    );
    let (case, mut b) = parsed("happy-path-v0.3");
    let log = case
        .root
        .tlog(&b.verification_material.tlog_entries[0].log_id)
        .unwrap()
        .clone();
    let e = &mut b.verification_material.tlog_entries[0];
    set::verify(e, &log).unwrap();
    e.integrated_time = e.integrated_time.map(|t| t + 1);
    assert!(matches!(
        set::verify(e, &log),
        Err(SetError::InvalidSignature { .. })
    ));
    e.integrated_time = None;
    assert_eq!(set::verify(e, &log), Err(SetError::NoIntegratedTime));
}

#[test]
fn bodies() {
    let rejected = rejected_by(|_, case, b, e| {
        let expected = expected(b, case).ok()?;
        Some(
            rekor::check_body(e, &expected)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        )
    });
    assert_eq!(
        names(&rejected),
        [
            "dsse-invalid-sig_fail",
            "dsse-mismatch-sig_fail",
            "incorrect-public-key_fail",
            "intoto-log-entry-mismatch_fail",
            "rekor2-dsse-invalid-sig_fail",
            "rekor2-dsse-mismatch-sig_fail",
            "wrong-hashedrekord-artifact_fail",
            "wrong-hashedrekord-cert-and-sig_fail",
            "wrong-material_fail",
        ],
        "{rejected:#?}"
    );

    // Each kind read from the suite, with what must match.
    let kinds: Vec<(&str, &str)> = vec![
        ("happy-path-v0.3", "HashedRekordV001"),
        ("rekor2-happy-path", "HashedRekordV002"),
        ("rekor2-dsse-happy-path", "HashedRekordV002"),
        ("happy-path-intoto-in-dsse-v3", "Dsse"),
        ("intoto-expired-certificate_fail", "IntotoV002"),
    ];
    for (name, kind) in kinds {
        let (case, b) = parsed(name);
        let body = rekor::check_body(
            &b.verification_material.tlog_entries[0],
            &expected(&b, &case).unwrap(),
        )
        .unwrap();
        assert!(format!("{body:?}").starts_with(kind), "{name}");
    }

    // Tampering with the bundle side is detected field by field.
    let field_of = |name: &str, edit: &dyn Fn(&mut Bundle)| -> String {
        let (case, mut b) = parsed(name);
        edit(&mut b);
        let e = b.verification_material.tlog_entries[0].clone();
        match rekor::check_body(&e, &expected(&b, &case).unwrap()) {
            Err(RekorError::Mismatch { field, .. }) => field.to_owned(),
            other => format!("{other:?}"),
        }
    };
    assert_eq!(
        field_of("happy-path-intoto-in-dsse-v3", &|b| dsse(b)
            .payload
            .push(b' ')),
        "payload hash"
    );
    assert_eq!(
        field_of("rekor2-dsse-happy-path", &|b| dsse(b)
            .payload_type
            .push('x')),
        "digest of the DSSE PAE"
    );
    assert_eq!(
        field_of("intoto-expired-certificate_fail", &|b| dsse(b)
            .payload_type
            .push('x')),
        "payloadType"
    );
    assert_eq!(
        field_of("intoto-expired-certificate_fail", &|b| {
            let sig = dsse(b).signatures[0].clone();
            dsse(b).signatures.push(sig);
        }),
        "signature count"
    );
    assert_eq!(
        field_of("happy-path-v0.3", &|b| {
            if let Content::MessageSignature { signature, .. } = &mut b.content {
                signature[8] ^= 1;
            }
        }),
        "signature"
    );
    assert_eq!(
        field_of("rekor2-happy-path", &|b| {
            b.verification_material.signer = Signer::Certificate(vec![0x30, 0]);
        }),
        "verifier (certificate or public key)"
    );
    // A certificate where the log recorded a public key, and another public key.
    let (case, b) = parsed("managed-key-happy-path");
    let e = &b.verification_material.tlog_entries[0];
    let mut want = expected(&b, &case).unwrap();
    rekor::check_body(e, &want).unwrap();
    let other_key = crate::keys::SigningKey::generate(crate::keys::Algorithm::EcdsaP256)
        .public_key()
        .to_spki_der();
    for verifier in [
        VerifierRef::Certificate(&[0x30, 0]),
        VerifierRef::PublicKey(&other_key),
    ] {
        want.verifier = verifier;
        assert!(matches!(
            rekor::check_body(e, &want),
            Err(RekorError::Mismatch {
                field: "verifier (certificate or public key)",
                ..
            })
        ));
    }
    // The body's kind must be the entry's kindVersion.
    let (case, mut b) = parsed("happy-path-v0.3");
    b.verification_material.tlog_entries[0].version = "0.0.2".into();
    assert!(matches!(
        rekor::check_body(
            &b.verification_material.tlog_entries[0],
            &expected(&b, &case).unwrap()
        ),
        Err(RekorError::KindVersionMismatch { .. })
    ));
}

/// Truncated and bit-flipped inputs are errors or verdicts, never panics.
#[test]
fn damaged_inputs_do_not_panic() {
    for name in [
        "happy-path-v0.3",
        "rekor2-dsse-happy-path",
        "intoto-expired-certificate_fail",
    ] {
        let case = load(name);
        let original = case.bundle.clone();
        let run = |bytes: &[u8]| {
            if let Ok(b) = bundle::parse(bytes)
                && let Ok(expected) = expected(&b, &case)
            {
                let _ = verify_tlog_entries(&b, &case.root, &expected);
                for e in &b.verification_material.tlog_entries {
                    let _ = rekor::parse_body(e);
                    if let Some(cp) = e
                        .inclusion_proof
                        .as_ref()
                        .and_then(|p| p.checkpoint.as_ref())
                    {
                        let _ = checkpoint::parse(cp);
                    }
                }
            }
        };
        for cut in (0..original.len()).step_by(97) {
            run(&original[..cut]);
        }
        for i in (0..original.len()).step_by(13) {
            let mut damaged = original.clone();
            damaged[i] ^= 0x01;
            run(&damaged);
            damaged[i] = b'"';
            run(&damaged);
        }
        // Damage inside the decoded body and checkpoint, where the JSON stays valid.
        let b = bundle::parse(&original).unwrap();
        let e = &b.verification_material.tlog_entries[0];
        for i in (0..e.canonicalized_body.len()).step_by(7) {
            let mut e = e.clone();
            e.canonicalized_body[i] ^= 0x20;
            let _ = rekor::parse_body(&e);
            let _ = super::verify_tlog_entry(&b, &e, &case.root, &expected(&b, &case).unwrap());
        }
        let cp = e
            .inclusion_proof
            .as_ref()
            .unwrap()
            .checkpoint
            .clone()
            .unwrap();
        for cut in 0..cp.len() {
            if cp.is_char_boundary(cut) {
                let _ = checkpoint::parse(&cp[..cut]);
                let _ = checkpoint::parse(&format!("{}\n{}", &cp[..cut], &cp[cut..]));
            }
        }
    }
}

#[test]
fn pipeline_rules() {
    let (case, b) = parsed("happy-path-v0.3");
    let want = expected(&b, &case).unwrap();
    let ok = super::verify_tlog_entry(
        &b,
        &b.verification_material.tlog_entries[0],
        &case.root,
        &want,
    )
    .unwrap();
    assert_eq!(ok.integrated_time, Some(1_710_869_186));
    assert!(ok.set_verified && ok.checkpoint.is_some());

    // A signed integrated time outside the log key's validity: rejected before anything else.
    let mut e = b.verification_material.tlog_entries[0].clone();
    e.integrated_time = Some(1_000_000_000);
    assert!(matches!(
        super::verify_tlog_entry(&b, &e, &case.root, &want),
        Err(TlogError::Trust(TrustError::OutsideValidity { .. }))
    ));
    // Without a promise the integrated time is not the log's word: not used, not returned.
    e.signed_entry_timestamp = None;
    let r = super::verify_tlog_entry(&b, &e, &case.root, &want).unwrap();
    assert_eq!((r.integrated_time, r.set_verified), (None, false));
    // v0.2+ needs an inclusion proof; a checkpoint-less proof needs a v0.1 bundle and a SET.
    let mut e = b.verification_material.tlog_entries[0].clone();
    e.inclusion_proof = None;
    assert!(matches!(
        super::verify_tlog_entry(&b, &e, &case.root, &want),
        Err(TlogError::NoInclusionProof)
    ));
    let mut e = b.verification_material.tlog_entries[0].clone();
    if let Some(p) = e.inclusion_proof.as_mut() {
        p.checkpoint = None;
    }
    assert!(matches!(
        super::verify_tlog_entry(&b, &e, &case.root, &want),
        Err(TlogError::NoCheckpoint)
    ));
    let mut v01 = b.clone();
    v01.version = BundleVersion::V01;
    assert!(super::verify_tlog_entry(&v01, &e, &case.root, &want).is_ok());
    e.inclusion_proof = None;
    e.signed_entry_timestamp = None;
    assert!(matches!(
        super::verify_tlog_entry(&v01, &e, &case.root, &want),
        Err(TlogError::NoProof)
    ));
    let mut none = b.clone();
    none.verification_material.tlog_entries.clear();
    assert!(matches!(
        verify_tlog_entries(&none, &case.root, &want),
        Err(TlogError::NoEntries)
    ));
}
