//! Malformed input never panics: every truncation and a bit flip at every byte of a valid
//! bundle go through the parsers and `verify_bundle`. A mutated bundle may still pass only when
//! the mutation hit an unauthenticated, ignored part (a field name, the hint) and the verified
//! statement is the original one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln_attest::bundle::Bundle;
use kiln_attest::dsse::Envelope;
use kiln_attest::keys::{PublicKey, SigningKey};
use kiln_attest::statement::Statement;
use kiln_attest::verify::{Policy, verify_bundle};

fn setup() -> (Vec<u8>, Policy, Statement) {
    let dir = common::attest_vectors();
    let bytes = std::fs::read(dir.join("valid.sigstore.json")).unwrap();
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("policy.json")).unwrap()).unwrap();
    let key = PublicKey::from_pem(&std::fs::read_to_string(dir.join("test.pub")).unwrap()).unwrap();
    let policy = Policy {
        key,
        subject_digest: p["subject_digest"].as_str().unwrap().into(),
        predicate_type: p["predicate_type"].as_str().map(Into::into),
        builder_id: p["builder_id"].as_str().map(Into::into),
        source_uri: p["source_uri"].as_str().map(Into::into),
    };
    let statement = verify_bundle(&bytes, &policy).unwrap().statement;
    (bytes, policy, statement)
}

fn exercise(bytes: &[u8], policy: &Policy, original: &Statement) -> bool {
    let _ = Bundle::from_json(bytes);
    let _ = Envelope::from_json(bytes);
    let _ = Statement::from_json(bytes);
    match verify_bundle(bytes, policy) {
        Ok(v) => {
            assert_eq!(
                &v.statement, original,
                "a mutated bundle verified a different statement"
            );
            true
        }
        Err(reasons) => {
            assert!(!reasons.is_empty(), "failure without a reason");
            for r in &reasons {
                assert!(!r.to_string().is_empty());
            }
            false
        }
    }
}

#[test]
fn every_truncation_fails_without_panicking() {
    let (bytes, policy, original) = setup();
    // The file ends in "}\n": every cut before the closing brace is invalid JSON.
    let end = bytes.iter().rposition(|b| *b == b'}').unwrap();
    for len in 0..=end {
        assert!(
            !exercise(&bytes[..len], &policy, &original),
            "truncated to {len} passed"
        );
    }
}

#[test]
fn bit_flips_never_panic_and_never_change_what_verifies() {
    let (bytes, policy, original) = setup();
    let mut passed = 0;
    for i in 0..bytes.len() {
        for bit in [i % 8, 7 - i % 8] {
            let mut m = bytes.clone();
            m[i] ^= 1 << bit;
            passed += usize::from(exercise(&m, &policy, &original));
        }
    }
    // Most flips break JSON, base64, the signature or the statement.
    assert!(
        passed < bytes.len() / 4,
        "{passed} of {} mutations still verified",
        bytes.len() * 2
    );
}

#[test]
fn payload_and_statement_fuzzing_never_panics() {
    let (_, policy, original) = setup();
    let statement = original.to_json();
    for len in 0..statement.len() {
        assert!(Statement::from_json(&statement[..len]).is_err());
    }
    for i in 0..statement.len() {
        let mut m = statement.clone();
        m[i] ^= 0x20;
        let _ = Statement::from_json(&m);
    }
    // Garbage PEM in every key reader.
    let key = std::fs::read_to_string(common::attest_vectors().join("test.key")).unwrap();
    for len in (0..key.len()).step_by(7) {
        let cut = &key[..len];
        let _ = SigningKey::from_pkcs8_pem(cut, None);
        let _ = SigningKey::from_pkcs8_pem(cut, Some(b"x"));
        let _ = PublicKey::from_pem(cut);
    }
    // Hostile nesting is bounded by serde_json's recursion limit, not the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(verify_bundle(deep.as_bytes(), &policy).is_err());
    let deep_payload = format!(
        r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"x","predicate":{}}}"#,
        "[".repeat(100_000)
    );
    assert!(Statement::from_json(deep_payload.as_bytes()).is_err());
}
