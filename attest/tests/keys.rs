//! Key round trips, encrypted keys, and the key-pair files on disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;

use kiln_attest::dsse;
use kiln_attest::keys::{Algorithm, KeyError, PublicKey, SigningKey, write_keypair};

const BOTH: [Algorithm; 2] = [Algorithm::EcdsaP256, Algorithm::Ed25519];

#[test]
fn private_and_public_pem_round_trip_for_both_algorithms() {
    for alg in BOTH {
        let key = SigningKey::generate(alg);
        let pem = key.to_pkcs8_pem(None).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{alg}");
        let back = SigningKey::from_pkcs8_pem(&pem, None).unwrap();
        assert_eq!(back.algorithm(), alg);
        assert_eq!(back.public_key(), key.public_key());

        let pub_pem = key.public_key().to_pem();
        assert!(
            pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"),
            "{pub_pem}"
        );
        let public = PublicKey::from_pem(&pub_pem).unwrap();
        assert_eq!(public, key.public_key());
        assert_eq!(public.algorithm(), alg);
        assert_eq!(public.key_id(), key.public_key().key_id());

        // A signature by the restored key verifies with the original public key.
        let env = dsse::sign("application/x", b"data", &back).expect("sign");
        dsse::verify(&env, &key.public_key()).unwrap();
    }
}

/// Under a wrong passphrase the CBC padding checks out by chance about once in 256 tries;
/// the garbage inside must still be reported as a wrong passphrase (it once surfaced as an
/// ASN.1 error, failing the test below about once in a hundred runs). 256 tries (each a key
/// derivation, ~80 ms in a debug build) meet that case in about 63 % of runs: this catches
/// the regression often, not always.
#[test]
fn every_wrong_passphrase_is_named_as_such() {
    let key = SigningKey::generate(BOTH[0]);
    let pem = key.to_pkcs8_pem(Some(b"correct horse")).unwrap();
    for i in 0..256 {
        let wrong = format!("wrong {i}");
        let err = SigningKey::from_pkcs8_pem(&pem, Some(wrong.as_bytes())).unwrap_err();
        assert!(
            matches!(err, KeyError::WrongPassphrase),
            "{wrong:?}: {err:?}"
        );
    }
}

#[test]
fn encrypted_key_round_trips_and_names_a_missing_or_wrong_passphrase() {
    for alg in BOTH {
        let key = SigningKey::generate(alg);
        let pem = key.to_pkcs8_pem(Some(b"correct horse")).unwrap();
        assert!(
            pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"),
            "{alg}"
        );
        let back = SigningKey::from_pkcs8_pem(&pem, Some(b"correct horse")).unwrap();
        assert_eq!(back.public_key(), key.public_key());

        let missing = SigningKey::from_pkcs8_pem(&pem, None).unwrap_err();
        assert!(matches!(missing, KeyError::PassphraseNeeded), "{missing:?}");
        assert_eq!(
            missing.to_string(),
            "key is encrypted: a passphrase is needed"
        );

        let wrong = SigningKey::from_pkcs8_pem(&pem, Some(b"battery staple")).unwrap_err();
        assert!(matches!(wrong, KeyError::WrongPassphrase), "{wrong:?}");
        assert_eq!(wrong.to_string(), "wrong passphrase");
    }
}

#[test]
fn a_public_key_is_not_a_private_key_and_vice_versa() {
    let key = SigningKey::generate(Algorithm::EcdsaP256);
    let err = SigningKey::from_pkcs8_pem(&key.public_key().to_pem(), None).unwrap_err();
    assert!(matches!(err, KeyError::WrongLabel { .. }), "{err:?}");
    let err = PublicKey::from_pem(&key.to_pkcs8_pem(None).unwrap()).unwrap_err();
    assert!(matches!(err, KeyError::WrongLabel { .. }), "{err:?}");
    assert!(matches!(
        PublicKey::from_pem("garbage"),
        Err(KeyError::NotPem { .. })
    ));
}

#[test]
fn write_keypair_creates_a_0600_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("cosign");
    let (key_path, pub_path) = write_keypair(&prefix, Algorithm::EcdsaP256, Some(b"pass")).unwrap();
    assert_eq!(key_path, dir.path().join("cosign.key"));
    assert_eq!(pub_path, dir.path().join("cosign.pub"));
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");

    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    let pub_pem = std::fs::read_to_string(&pub_path).unwrap();
    let key = SigningKey::from_pkcs8_pem(&key_pem, Some(b"pass")).unwrap();
    assert_eq!(PublicKey::from_pem(&pub_pem).unwrap(), key.public_key());

    let again = write_keypair(&prefix, Algorithm::Ed25519, None).unwrap_err();
    assert!(matches!(again, KeyError::Exists { .. }), "{again:?}");
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        key_pem,
        "key was overwritten"
    );
    assert_eq!(
        std::fs::read_to_string(&pub_path).unwrap(),
        pub_pem,
        "pub was overwritten"
    );

    // Only the key file existing (no .pub) is refused as well, and left alone.
    std::fs::remove_file(&pub_path).unwrap();
    let again = write_keypair(&prefix, Algorithm::Ed25519, None).unwrap_err();
    assert!(matches!(again, KeyError::Exists { .. }), "{again:?}");
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key_pem);
    assert!(!pub_path.exists());
}
