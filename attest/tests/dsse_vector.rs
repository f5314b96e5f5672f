//! The DSSE specification's own test vector (ECDSA P-256, "hello world").
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln_attest::dsse::{self, Envelope};
use kiln_attest::keys::{PublicKey, SigningKey};
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};

struct Vector {
    payload_type: String,
    payload: Vec<u8>,
    pae: Vec<u8>,
    public: PublicKey,
    d: [u8; 32],
    envelope: Envelope,
}

fn load() -> Option<Vector> {
    let Some(dir) = common::shared_vectors() else {
        println!("skipped: shared vectors folder absent (set KILN_SHARED_VECTORS)");
        return None;
    };
    let path = dir.join("dsse/p256-hello-world.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("skipped: {} absent", path.display());
        return None;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let x = common::decimal_to_be32(v["key"]["x_decimal"].as_str().unwrap());
    let y = common::decimal_to_be32(v["key"]["y_decimal"].as_str().unwrap());
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    // Through PEM, so kiln's SPKI reader is part of what is tested.
    let pem = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
        .unwrap()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    Some(Vector {
        payload_type: v["payloadType"].as_str().unwrap().to_owned(),
        payload: v["payload_utf8"].as_str().unwrap().as_bytes().to_vec(),
        pae: v["pae_utf8"].as_str().unwrap().as_bytes().to_vec(),
        public: PublicKey::from_pem(&pem).unwrap(),
        d: common::decimal_to_be32(v["key"]["d_decimal"].as_str().unwrap()),
        envelope: Envelope::from_json(&serde_json::to_vec(&v["envelope"]).unwrap()).unwrap(),
    })
}

#[test]
fn pae_is_byte_equal_to_the_spec_vector() {
    let Some(v) = load() else { return };
    assert_eq!(dsse::pae(&v.payload_type, &v.payload), v.pae);
    assert_eq!(v.envelope.payload, v.payload);
    assert_eq!(v.envelope.payload_type, v.payload_type);
}

#[test]
fn spec_envelope_verifies_with_its_public_key_and_not_when_changed() {
    let Some(v) = load() else { return };
    assert_eq!(
        v.envelope.signatures[0].sig.len(),
        64,
        "the vector's signature is raw r||s"
    );
    dsse::verify(&v.envelope, &v.public).unwrap();
    let mut changed = v.envelope.clone();
    changed.payload = b"hello worle".to_vec();
    assert!(dsse::verify(&changed, &v.public).is_err());
}

#[test]
fn rfc6979_signing_with_d_reproduces_the_spec_signature() {
    let Some(v) = load() else { return };
    let secret = p256::SecretKey::from_bytes(&v.d.into()).unwrap();
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
    let key = SigningKey::from_pkcs8_pem(&pem, None).unwrap();
    assert_eq!(key.public_key(), v.public, "d does not match (x, y)");
    let env = dsse::sign(&v.payload_type, &v.payload, &key).expect("sign");
    // kiln emits DER; the vector holds r||s. Same (r, s) means the same deterministic nonce.
    let der = &env.signatures[0].sig;
    let raw = p256::ecdsa::Signature::from_der(der).unwrap().to_bytes();
    assert_eq!(raw.as_slice(), v.envelope.signatures[0].sig.as_slice());
    dsse::verify(&env, &v.public).unwrap();
}

#[test]
fn decimal_conversion_is_right() {
    let mut expected = [0u8; 32];
    expected[30] = 0x01;
    expected[31] = 0x00;
    assert_eq!(common::decimal_to_be32("256"), expected);
    assert_eq!(common::decimal_to_be32("0"), [0u8; 32]);
}
