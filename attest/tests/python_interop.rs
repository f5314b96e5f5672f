//! Interoperability with Python's securesystemslib and in-toto: an envelope kiln signs verifies
//! there, and an envelope securesystemslib signs verifies in kiln (both algorithms each way).
//!
//! Needs python3 with `securesystemslib[crypto]` and `in-toto`; this test FAILS (it does not
//! skip) when they are missing: install them with `KILN_DEPS_FULL=1 scripts/deps.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_attest::bundle::Bundle;
use kiln_attest::dsse::{self, Envelope};
use kiln_attest::keys::{Algorithm, PublicKey, SigningKey};
use kiln_attest::media;
use kiln_attest::statement::{Statement, Subject};
use kiln_attest::verify::{Policy, verify_bundle};

const SUBJECT_HEX: &str = "aa11bb22cc33dd44ee55ff6600117722883399aabbccddeeff00112233445566";

fn py_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py"))
}

fn require_python_modules() {
    let probe = Command::new("python3")
        .args(["-c", "import securesystemslib.dsse, securesystemslib.signer, cryptography, in_toto.models.metadata"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 lacks securesystemslib[crypto]/in-toto ({}); install them with \
             `KILN_DEPS_FULL=1 scripts/deps.sh`",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => panic!("python3 not runnable ({e}); run `KILN_DEPS_FULL=1 scripts/deps.sh`"),
    }
}

fn statement_bytes() -> Vec<u8> {
    let digest = [("sha256".to_string(), SUBJECT_HEX.to_string())]
        .into_iter()
        .collect();
    Statement::new(
        vec![Subject {
            name: "example.invalid/app".into(),
            digest,
        }],
        media::SLSA_PROVENANCE_V1,
        serde_json::json!({"buildDefinition": {"buildType": media::BUILD_TYPE}}),
    )
    .to_json()
}

fn run_py(script: &str, args: &[&Path]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(py_dir().join(script))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn kiln_signed_envelope_verifies_with_securesystemslib_and_in_toto() {
    require_python_modules();
    for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(alg);
        let env = dsse::sign(media::DSSE_PAYLOAD_TYPE, &statement_bytes(), &key).expect("sign");
        let pub_path = dir.path().join("key.pub");
        let env_path = dir.path().join("envelope.json");
        let keyid_path = PathBuf::from(key.public_key().key_id());
        std::fs::write(&pub_path, key.public_key().to_pem()).unwrap();
        std::fs::write(&env_path, env.to_json()).unwrap();
        let (ok, text) = run_py("verify_envelope.py", &[&pub_path, &keyid_path, &env_path]);
        assert!(ok, "{alg}: python rejected kiln's envelope:\n{text}");
        assert!(
            text.contains("ok securesystemslib") && text.contains("ok in-toto"),
            "{text}"
        );

        // The same check fails on a tampered envelope: the Python side really verifies.
        let mut tampered = env.clone();
        tampered.payload.push(b' ');
        std::fs::write(&env_path, tampered.to_json()).unwrap();
        let (ok, text) = run_py("verify_envelope.py", &[&pub_path, &keyid_path, &env_path]);
        assert!(
            !ok && text.contains("FAIL securesystemslib"),
            "{alg}: tampered passed:\n{text}"
        );
    }
}

#[test]
fn securesystemslib_signed_envelope_verifies_in_kiln() {
    require_python_modules();
    for alg in ["ecdsa-p256", "ed25519"] {
        let dir = tempfile::tempdir().unwrap();
        let statement_path = dir.path().join("statement.json");
        std::fs::write(&statement_path, statement_bytes()).unwrap();
        let out = Command::new("python3")
            .arg(py_dir().join("sign_envelope.py"))
            .arg(alg)
            .arg(&statement_path)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{alg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let python_keyid = String::from_utf8(out.stdout).unwrap().trim().to_owned();

        let public =
            PublicKey::from_pem(&std::fs::read_to_string(dir.path().join("key.pub")).unwrap())
                .unwrap();
        assert_eq!(public.algorithm().to_string(), alg);
        assert_eq!(public.key_id(), python_keyid, "key id definitions differ");
        let env =
            Envelope::from_json(&std::fs::read(dir.path().join("envelope.json")).unwrap()).unwrap();
        dsse::verify(&env, &public).unwrap();

        // Through the whole policy check too.
        let bundle = Bundle::new(env.clone()).to_json();
        let policy = Policy {
            key: public.clone(),
            subject_digest: format!("sha256:{SUBJECT_HEX}"),
            predicate_type: Some(media::SLSA_PROVENANCE_V1.into()),
            builder_id: None,
            source_uri: None,
        };
        let verified = verify_bundle(&bundle, &policy).unwrap();
        assert_eq!(verified.key_id, python_keyid);

        let mut tampered = env;
        tampered.payload_type = "application/json".into();
        assert!(dsse::verify(&tampered, &public).is_err());
    }
}

#[test]
fn kiln_private_keys_plain_and_encrypted_load_in_python_cryptography() {
    require_python_modules();
    for alg in [Algorithm::EcdsaP256, Algorithm::Ed25519] {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(alg);
        let plain = dir.path().join("plain.key");
        let encrypted = dir.path().join("encrypted.key");
        std::fs::write(&plain, key.to_pkcs8_pem(None).unwrap().as_bytes()).unwrap();
        std::fs::write(
            &encrypted,
            key.to_pkcs8_pem(Some(b"s3cret")).unwrap().as_bytes(),
        )
        .unwrap();
        let key_id = key.public_key().key_id();
        let pass = PathBuf::from("s3cret");
        let wrong = PathBuf::from("wrong");
        for args in [
            vec![plain.as_path()],
            vec![encrypted.as_path(), pass.as_path()],
        ] {
            let (ok, text) = run_py("load_private_key.py", &args);
            assert!(ok, "{alg} {args:?}: {text}");
            assert_eq!(text.trim(), key_id, "{alg} {args:?}");
        }
        let (ok, text) = run_py("load_private_key.py", &[&encrypted, &wrong]);
        assert!(
            !ok && text.contains("FAIL load"),
            "{alg}: wrong passphrase accepted: {text}"
        );
    }
}
