//! The tamper vectors in `vectors/attest/`: every bundle goes through `verify_bundle` and must
//! fail with exactly the reason kinds `expected.json` lists (an empty list: it must pass).
//!
//! The vectors were written once by `generate_tamper_vectors` (ignored; see
//! `vectors/attest/README.md`). The oversized case is made here, at test time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use kiln_attest::bundle::{Bundle, MAX_DOCUMENT_SIZE};
use kiln_attest::dsse::{self, Signature};
use kiln_attest::keys::{Algorithm, PublicKey, SigningKey};
use kiln_attest::media;
use kiln_attest::slsa::{self, Mode, ProvenanceInput, ResourceDescriptor, SandboxFacts};
use kiln_attest::statement::{Statement, Subject};
use kiln_attest::verify::{Policy, Reason, verify_bundle};
use serde_json::{Value, json};

/// sha256 of `vectors/attest/image-manifest.json`: the vectors are about that (empty) image, so
/// `cli/tests/attest.rs` can attach each one to a real layout and run `kiln verify` on it.
const SUBJECT_HEX: &str = "d1613493061800cce483032096af9a53246c09093a97c82e9469382b0b074f07";
const BUILDER_ID: &str = "https://example.invalid/kiln/builders/test@v1";
const SOURCE_URI: &str = "git+https://example.invalid/kiln/app";

fn policy(dir: &Path) -> Policy {
    let p: Value =
        serde_json::from_slice(&std::fs::read(dir.join("policy.json")).unwrap()).unwrap();
    let key = PublicKey::from_pem(&std::fs::read_to_string(dir.join("test.pub")).unwrap()).unwrap();
    let opt = |k: &str| p[k].as_str().map(str::to_owned);
    Policy {
        key,
        subject_digest: p["subject_digest"].as_str().unwrap().to_owned(),
        predicate_type: opt("predicate_type"),
        builder_id: opt("builder_id"),
        source_uri: opt("source_uri"),
    }
}

fn kinds(result: &Result<kiln_attest::verify::Verified, Vec<Reason>>) -> Vec<String> {
    match result {
        Ok(_) => Vec::new(),
        Err(reasons) => reasons.iter().map(|r| r.kind().to_owned()).collect(),
    }
}

#[test]
fn every_tamper_vector_fails_with_exactly_its_expected_reasons() {
    let dir = common::attest_vectors();
    let policy = policy(&dir);
    let expected: BTreeMap<String, Vec<String>> =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    // Every bundle on disk is listed, and every listed bundle is on disk.
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sigstore.json"))
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, expected.keys().cloned().collect::<Vec<_>>());
    assert!(expected.len() >= 10, "vectors missing");

    for (file, want) in &expected {
        let result = verify_bundle(&std::fs::read(dir.join(file)).unwrap(), &policy);
        let got = kinds(&result);
        let text: Vec<String> = match &result {
            Ok(_) => vec![],
            Err(r) => r.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(&got, want, "{file}: {text:?}");
        if let Ok(v) = &result {
            assert_eq!(v.key_id, policy.key.key_id());
            assert_eq!(v.statement.predicate_type, media::SLSA_PROVENANCE_V1);
        }
    }
}

#[test]
fn oversized_bundle_is_rejected_before_parsing() {
    let dir = common::attest_vectors();
    let policy = policy(&dir);
    let mut bytes = std::fs::read(dir.join("valid.sigstore.json")).unwrap();
    // Trailing whitespace keeps the JSON valid: only the size can make it fail.
    bytes.resize(MAX_DOCUMENT_SIZE, b' ');
    assert!(
        verify_bundle(&bytes, &policy).is_ok(),
        "a bundle of exactly the limit passes"
    );
    bytes.push(b' ');
    let reasons = verify_bundle(&bytes, &policy).unwrap_err();
    assert_eq!(
        reasons,
        vec![Reason::TooLarge {
            size: MAX_DOCUMENT_SIZE + 1,
            limit: MAX_DOCUMENT_SIZE
        }]
    );
}

#[test]
fn reasons_are_collected_and_named_specifically() {
    let dir = common::attest_vectors();
    let mut policy = policy(&dir);
    // A wrong subject in the policy on a tampered payload: both reported.
    policy.subject_digest = format!("sha256:{}", "00".repeat(32));
    let bytes = std::fs::read(dir.join("changed-payload.sigstore.json")).unwrap();
    let reasons = verify_bundle(&bytes, &policy).unwrap_err();
    let got: Vec<&str> = reasons.iter().map(Reason::kind).collect();
    assert_eq!(got, ["BadSignature", "SubjectMismatch"]);
    let text = reasons[1].to_string();
    assert!(
        text.contains(&"00".repeat(32)) && text.contains(SUBJECT_HEX),
        "{text}"
    );

    let bytes = std::fs::read(dir.join("two-signatures.sigstore.json")).unwrap();
    let text = verify_bundle(&bytes, &policy).unwrap_err()[0].to_string();
    assert_eq!(
        text,
        "the envelope has 2 signatures; kiln requires exactly one"
    );
}

// ---- generator -------------------------------------------------------------------------

fn input(builder_id: &str, source: &str) -> ProvenanceInput {
    let sha = |hex: &str| {
        [("sha256".to_string(), hex.to_string())]
            .into_iter()
            .collect()
    };
    ProvenanceInput {
        builder_id: builder_id.into(),
        invocation_id: "vector-invocation-1".into(),
        started_on: "2026-11-28T19:00:00Z".into(),
        finished_on: "2026-11-28T19:00:42Z".into(),
        frontend: "dockerfile.v0".into(),
        dockerfile: ResourceDescriptor {
            uri: "Dockerfile".into(),
            digest: sha(&"1a".repeat(32)),
            name: Some("Dockerfile".into()),
            ..Default::default()
        },
        build_args: [("VERSION".to_string(), "1.0.0".to_string())]
            .into_iter()
            .collect(),
        target: None,
        platforms: vec!["linux/amd64".into()],
        secret_ids: vec![],
        ssh_ids: vec![],
        named_contexts: BTreeMap::new(),
        kiln_version: "0.1.0".into(),
        sandbox: SandboxFacts {
            snapshotter: "overlay".into(),
            ..Default::default()
        },
        steps: vec![],
        policy_decisions: vec![],
        resolved_dependencies: vec![
            ResourceDescriptor {
                uri: format!("{source}@refs/heads/main"),
                digest: [("gitCommit".to_string(), "2b".repeat(20))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
            ResourceDescriptor {
                uri: "docker-image://docker.io/library/alpine:3.20".into(),
                digest: sha(&"3c".repeat(32)),
                ..Default::default()
            },
        ],
        byproducts: vec![],
    }
}

fn statement(subject_hex: &str, predicate_type: &str, builder: &str, source: &str) -> Vec<u8> {
    let digest = [("sha256".to_string(), subject_hex.to_string())]
        .into_iter()
        .collect();
    Statement::new(
        vec![Subject {
            name: "example.invalid/kiln/app".into(),
            digest,
        }],
        predicate_type,
        slsa::predicate(&input(builder, source), Mode::Max),
    )
    .to_json()
}

fn bundle(payload: &[u8], key: &SigningKey) -> Bundle {
    Bundle::new(dsse::sign(media::DSSE_PAYLOAD_TYPE, payload, key).expect("sign"))
}

fn pretty(bundle: &Bundle) -> Vec<u8> {
    let v: Value = serde_json::from_slice(&bundle.to_json()).unwrap();
    let mut out = serde_json::to_vec_pretty(&v).unwrap();
    out.push(b'\n');
    out
}

/// Writes `vectors/attest/` in place. Run by hand when the vectors change:
/// `cargo test -p kiln-attest --test tamper_vectors -- --ignored generate_tamper_vectors`.
/// CI checks the committed files against the generator instead
/// (`committed_vectors_are_what_the_generator_makes`).
#[test]
#[ignore = "rewrites files in the source tree (vectors/attest); CI runs the generator into a temp dir"]
fn generate_tamper_vectors() {
    let dir = common::attest_vectors();
    generate(&dir, &dir);
}

/// Files whose bytes depend on the "other" key, which is fresh on every run.
const OTHER_KEY_FILES: &[&str] = &[
    "other.pub",
    "wrong-key.sigstore.json",
    "wrong-hint.sigstore.json",
    "two-signatures.sigstore.json",
];

/// The generator, run into a temp dir with the committed `test.key`, gives byte for byte the
/// committed vectors (all but those signed by the throwaway "other" key), so the files in
/// `vectors/attest/` are what this code makes and `expected.json` is what it says.
#[test]
fn committed_vectors_are_what_the_generator_makes() {
    let committed = common::attest_vectors();
    let tmp = tempfile::tempdir().unwrap();
    generate(tmp.path(), &committed);
    let mut compared = 0;
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if OTHER_KEY_FILES.contains(&name.as_str()) {
            continue;
        }
        let made = std::fs::read(tmp.path().join(&name)).unwrap();
        let kept = std::fs::read(committed.join(&name))
            .unwrap_or_else(|e| panic!("{name} is not committed: {e}"));
        assert!(made == kept, "{name} differs from what the generator makes");
        compared += 1;
    }
    assert!(compared >= 14, "only {compared} files compared");
}

/// Writes the vectors into `dir`, signing with `key_dir/test.key` (made there if missing).
/// ECDSA signatures are deterministic (RFC 6979), so the test-key bundles come out
/// byte-identical on every run.
fn generate(dir: &std::path::Path, key_dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let key = match std::fs::read_to_string(key_dir.join("test.key")) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem, None).unwrap(),
        Err(_) => {
            let k = SigningKey::generate(Algorithm::EcdsaP256);
            std::fs::write(
                dir.join("test.key"),
                k.to_pkcs8_pem(None).unwrap().as_bytes(),
            )
            .unwrap();
            k
        }
    };
    let other = SigningKey::generate(Algorithm::EcdsaP256);
    std::fs::write(dir.join("test.pub"), key.public_key().to_pem()).unwrap();
    std::fs::write(dir.join("other.pub"), other.public_key().to_pem()).unwrap();
    let policy = json!({
        "subject_digest": format!("sha256:{SUBJECT_HEX}"),
        "predicate_type": media::SLSA_PROVENANCE_V1,
        "builder_id": BUILDER_ID,
        "source_uri": SOURCE_URI,
    });
    std::fs::write(
        dir.join("policy.json"),
        serde_json::to_vec_pretty(&policy).unwrap(),
    )
    .unwrap();

    let good = statement(
        SUBJECT_HEX,
        media::SLSA_PROVENANCE_V1,
        BUILDER_ID,
        SOURCE_URI,
    );
    let valid = bundle(&good, &key);
    let mut files: Vec<(&str, Vec<u8>, Vec<&str>)> = Vec::new();
    files.push(("valid.sigstore.json", pretty(&valid), vec![]));

    let mut b = valid.clone();
    let text = String::from_utf8(b.envelope.payload.clone()).unwrap();
    b.envelope.payload = text
        .replace("vector-invocation-1", "vector-invocation-2")
        .into_bytes();
    files.push((
        "changed-payload.sigstore.json",
        pretty(&b),
        vec!["BadSignature"],
    ));

    let mut b = valid.clone();
    let sig = &mut b.envelope.signatures[0].sig;
    let last = sig.len() - 1;
    sig[last] ^= 0x01;
    files.push((
        "changed-signature.sigstore.json",
        pretty(&b),
        vec!["BadSignature"],
    ));

    files.push((
        "wrong-key.sigstore.json",
        pretty(&bundle(&good, &other)),
        vec!["KeyMismatch", "BadSignature"],
    ));

    let mut b = valid.clone();
    b.public_key_hint = Some(other.public_key().key_id());
    files.push(("wrong-hint.sigstore.json", pretty(&b), vec!["KeyMismatch"]));

    let wrong_subject = "9".repeat(64);
    let payload = statement(
        &wrong_subject,
        media::SLSA_PROVENANCE_V1,
        BUILDER_ID,
        SOURCE_URI,
    );
    files.push((
        "subject-mismatch.sigstore.json",
        pretty(&bundle(&payload, &key)),
        vec!["SubjectMismatch"],
    ));

    let payload = statement(SUBJECT_HEX, media::SPDX_DOCUMENT, BUILDER_ID, SOURCE_URI);
    files.push((
        "wrong-predicate-type.sigstore.json",
        pretty(&bundle(&payload, &key)),
        vec!["PredicateTypeMismatch"],
    ));

    let payload = statement(
        SUBJECT_HEX,
        media::SLSA_PROVENANCE_V1,
        "https://example.invalid/other-builder",
        SOURCE_URI,
    );
    files.push((
        "builder-mismatch.sigstore.json",
        pretty(&bundle(&payload, &key)),
        vec!["BuilderIdMismatch"],
    ));

    let payload = statement(
        SUBJECT_HEX,
        media::SLSA_PROVENANCE_V1,
        BUILDER_ID,
        "git+https://example.invalid/kiln/app-fork",
    );
    files.push((
        "source-mismatch.sigstore.json",
        pretty(&bundle(&payload, &key)),
        vec!["SourceUriMismatch"],
    ));

    let payload_type = "application/json";
    let b = Bundle::new(dsse::sign(payload_type, &good, &key).expect("sign"));
    files.push((
        "wrong-payload-type.sigstore.json",
        pretty(&b),
        vec!["WrongPayloadType"],
    ));

    let mut b = valid.clone();
    b.envelope.signatures.clear();
    files.push((
        "zero-signatures.sigstore.json",
        pretty(&b),
        vec!["NoSignatures"],
    ));

    let mut b = valid.clone();
    let second = dsse::sign(media::DSSE_PAYLOAD_TYPE, &good, &other)
        .expect("sign")
        .signatures[0]
        .clone();
    b.envelope.signatures.push(Signature {
        keyid: second.keyid,
        sig: second.sig,
    });
    files.push((
        "two-signatures.sigstore.json",
        pretty(&b),
        vec!["MultipleSignatures"],
    ));

    let full = pretty(&valid);
    files.push((
        "truncated-json.sigstore.json",
        full[..full.len() / 2].to_vec(),
        vec!["Malformed"],
    ));

    let mut v: Value = serde_json::from_slice(&valid.to_json()).unwrap();
    v["mediaType"] = json!("application/vnd.dev.sigstore.bundle+json;version=0.2");
    let mut bytes = serde_json::to_vec_pretty(&v).unwrap();
    bytes.push(b'\n');
    files.push((
        "unknown-media-type.sigstore.json",
        bytes,
        vec!["UnknownMediaType"],
    ));

    let mut expected = serde_json::Map::new();
    for (name, bytes, kinds) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
        expected.insert(name.into(), json!(kinds));
    }
    let mut out = serde_json::to_vec_pretty(&Value::Object(expected)).unwrap();
    out.push(b'\n');
    std::fs::write(dir.join("expected.json"), out).unwrap();
}
