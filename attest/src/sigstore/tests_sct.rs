//! Embedded SCTs ([`super::sct`]) against real Fulcio leaves from sigstore-conformance
//! (`$KILN_SHARED_VECTORS/sigstore-conformance`, else `../shared/vectors` beside the checkout),
//! and damaged copies of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bundle;
use super::cert::{self, TAG_SEQUENCE, read_tlv, write_tlv};
use super::sct::{self, Reason, Rejected, Sct, SctError};
use super::trust::{self, Timestamp, TrustedRoot};
use super::verify::{Artifact, Check, Identity, verify_bundle};

fn suite() -> PathBuf {
    std::env::var_os("KILN_SHARED_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"))
        .join("sigstore-conformance")
}

/// A case's leaf certificate, its trusted root, a time the leaf chains at, and the issuer's
/// SubjectPublicKeyInfo.
struct Leaf {
    der: Vec<u8>,
    root: TrustedRoot,
    time: i64,
    issuer_spki: Vec<u8>,
}

fn leaf(case: &str) -> Leaf {
    let dir = suite().join(case);
    let root_bytes = std::fs::read(dir.join("trusted_root.json"))
        .unwrap_or_else(|_| std::fs::read(suite().join("public-good-trusted_root.json")).unwrap());
    let root = trust::parse(&root_bytes).unwrap();
    let b = bundle::parse(&std::fs::read(dir.join("bundle.sigstore.json")).unwrap()).unwrap();
    let der = b
        .verification_material
        .signer
        .leaf_certificate()
        .unwrap()
        .to_vec();
    let info = cert::parse(&der).unwrap();
    let time = info.not_before;
    let authority = cert::verify_chain_to(&der, &root, time).unwrap();
    let issuer_spki = authority
        .cert_chain
        .iter()
        .map(|c| cert::parse(c).unwrap())
        .find(|c| c.subject == info.issuer)
        .unwrap()
        .spki;
    Leaf {
        der,
        root,
        time,
        issuer_spki,
    }
}

/// The precertificate TBS, the SCT list extension's value and its issuer key hash.
fn parts(l: &Leaf) -> (Vec<u8>, Vec<u8>, [u8; 32]) {
    let (tbs, value) = sct::precert_tbs(&l.der).unwrap();
    (tbs, value.to_vec(), Sha256::digest(&l.issuer_spki).into())
}

/// The TLS-encoded list inside the extension value.
fn tls_list(value: &[u8]) -> &[u8] {
    let (inner, rest) = read_tlv(value).unwrap();
    assert!(rest.is_empty());
    inner.content
}

fn reasons(result: Result<Vec<sct::VerifiedSct>, SctError>) -> Vec<Reason> {
    match result {
        Err(SctError::NoneVerified { rejected }) => {
            rejected.into_iter().map(|r| r.reason).collect()
        }
        other => panic!("expected NoneVerified, got {other:?}"),
    }
}

const CERT_CASES: &[&str] = &[
    "bundle-with-sct-with-extensions",
    "happy-path-v0.3",
    "happy-path-intoto-in-dsse-v3",
    "rekor2-happy-path",
];

#[test]
fn real_fulcio_leaves_carry_an_sct_from_a_trusted_log() {
    for case in CERT_CASES {
        let l = leaf(case);
        let verified = sct::verify_embedded(&l.der, &l.root, &[l.time])
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(!verified.is_empty(), "{case}");
        for v in &verified {
            assert!(l.root.ctlogs.iter().any(|c| c.log_id == v.log_id), "{case}");
        }
        // The same through the lower-level entry point, with the issuer given.
        assert_eq!(
            sct::verify(&l.der, &l.issuer_spki, &l.root.ctlogs).unwrap(),
            verified
        );
    }
}

#[test]
fn sct_extensions_are_signed_data() {
    let l = leaf("bundle-with-sct-with-extensions");
    let (tbs, value, hash) = parts(&l);
    let scts = sct::parse_extension(&value).unwrap();
    assert!(scts.iter().any(|s| !s.extensions.is_empty()));
    assert!(sct::check(&scts, &tbs, &hash, &l.root.ctlogs).is_ok());
    for s in scts.iter().filter(|s| !s.extensions.is_empty()) {
        let mut ext = s.extensions.to_vec();
        ext[0] ^= 1;
        let damaged = Sct {
            extensions: &ext,
            ..s.clone()
        };
        assert!(matches!(
            reasons(sct::check(&[damaged], &tbs, &hash, &l.root.ctlogs))[..],
            [Reason::BadSignature(_)]
        ));
    }
}

#[test]
fn bundle_whose_sct_log_is_not_trusted_fails_only_the_sct_check() {
    let dir = suite().join("invalid-ct-key_fail");
    let root = trust::parse(&std::fs::read(dir.join("trusted_root.json")).unwrap()).unwrap();
    let failures = verify_bundle(
        &std::fs::read(dir.join("bundle.sigstore.json")).unwrap(),
        Artifact::Bytes(&std::fs::read(suite().join("a.txt")).unwrap()),
        &root,
        Identity::Cert {
            identity: "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main",
            issuer: "https://token.actions.githubusercontent.com",
        },
    )
    .unwrap_err();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].check, Check::Sct);
    // The message names the SCT's log id and why it was not accepted.
    let l = leaf("invalid-ct-key_fail");
    let (_, value, _) = parts(&l);
    let scts = sct::parse_extension(&value).unwrap();
    for s in &scts {
        assert!(
            failures[0].detail.contains(&hex::encode(s.log_id)),
            "{}",
            failures[0].detail
        );
    }
    assert!(
        failures[0]
            .detail
            .contains("no trusted CT log has this log id")
    );
    assert!(
        reasons(sct::verify_embedded(&l.der, &l.root, &[l.time]))
            .iter()
            .all(|r| *r == Reason::UnknownLog)
    );
}

#[test]
fn public_key_bundles_need_no_sct() {
    let dir = suite().join("managed-key-and-trusted-root");
    let root = trust::parse(&std::fs::read(dir.join("trusted_root.json")).unwrap()).unwrap();
    let pem = std::fs::read_to_string(dir.join("key.pub")).unwrap();
    let key = crate::keys::PublicKey::from_pem(&pem)
        .unwrap()
        .to_spki_der();
    let verified = verify_bundle(
        &std::fs::read(dir.join("bundle.sigstore.json")).unwrap(),
        Artifact::Bytes(&std::fs::read(suite().join("a.txt")).unwrap()),
        &root,
        Identity::KeyPub(&key),
    )
    .unwrap();
    assert!(verified.scts.is_empty());
}

#[test]
fn unknown_logs_are_skipped_but_one_trusted_sct_is_required() {
    let l = leaf("happy-path-v0.3");
    let (tbs, value, hash) = parts(&l);
    let scts = sct::parse_extension(&value).unwrap();
    let mut unknown = scts[0].clone();
    unknown.log_id[0] ^= 1;
    // An unknown log next to a trusted one: accepted, on the trusted one.
    let both = [unknown.clone(), scts[0].clone()];
    let verified = sct::check(&both, &tbs, &hash, &l.root.ctlogs).unwrap();
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].log_id, scts[0].log_id);
    // Only unknown logs: rejected, naming the log.
    let err = sct::check(std::slice::from_ref(&unknown), &tbs, &hash, &l.root.ctlogs).unwrap_err();
    assert!(
        err.to_string().contains(&hex::encode(unknown.log_id)),
        "{err}"
    );
    assert_eq!(
        err,
        SctError::NoneVerified {
            rejected: vec![Rejected {
                log_id: unknown.log_id,
                timestamp_ms: unknown.timestamp_ms,
                reason: Reason::UnknownLog,
            }]
        }
    );
    // A trusted root without CT logs trusts no SCT.
    let mut root = l.root.clone();
    root.ctlogs.clear();
    assert_eq!(
        reasons(sct::verify_embedded(&l.der, &root, &[l.time])),
        vec![Reason::UnknownLog; scts.len()]
    );
}

#[test]
fn every_flipped_signature_byte_fails() {
    let l = leaf("happy-path-v0.3");
    let (tbs, value, hash) = parts(&l);
    let scts = sct::parse_extension(&value).unwrap();
    let s = &scts[0];
    for i in 0..s.signature.len() {
        let mut sig = s.signature.to_vec();
        sig[i] ^= 0x01;
        let damaged = Sct {
            signature: &sig,
            ..s.clone()
        };
        assert!(
            matches!(
                reasons(sct::check(&[damaged], &tbs, &hash, &l.root.ctlogs))[..],
                [Reason::BadSignature("ECDSA P-256")]
            ),
            "byte {i}"
        );
    }
    // The signature covers the timestamp, the issuer and the precertificate.
    let later = Sct {
        timestamp_ms: s.timestamp_ms + 1,
        ..s.clone()
    };
    let mut other_issuer = hash;
    other_issuer[31] ^= 1;
    let mut other_tbs = tbs.clone();
    let last = other_tbs.len() - 1;
    other_tbs[last] ^= 1;
    for (tbs, hash, s) in [
        (&tbs, &hash, &later),
        (&tbs, &other_issuer, s),
        (&other_tbs, &hash, s),
    ] {
        assert!(matches!(
            reasons(sct::check(
                std::slice::from_ref(s),
                tbs,
                hash,
                &l.root.ctlogs
            ))[..],
            [Reason::BadSignature(_)]
        ));
    }
}

#[test]
fn wrong_or_unusable_log_key_fails() {
    let l = leaf("happy-path-v0.3");
    let (tbs, value, hash) = parts(&l);
    let scts = sct::parse_extension(&value).unwrap();
    let s = std::slice::from_ref(&scts[0]);
    let index = l
        .root
        .ctlogs
        .iter()
        .position(|c| c.log_id == scts[0].log_id)
        .unwrap();
    let with_key = |key: &[u8], details: &str| {
        let mut logs = l.root.ctlogs.clone();
        logs[index].public_key = key.to_vec();
        logs[index].key_details = details.to_owned();
        reasons(sct::check(s, &tbs, &hash, &logs))
    };
    // Another P-256 key (Rekor's).
    let other = l.root.tlogs[0].public_key.clone();
    assert_eq!(
        with_key(&other, "PKIX_ECDSA_P256_SHA_256"),
        vec![Reason::BadSignature("ECDSA P-256")]
    );
    assert!(matches!(
        with_key(b"not a key", "PKIX_ECDSA_P256_SHA_256")[..],
        [Reason::Key(_)]
    ));
    // An RSA key (a PKCS#1 key from a trusted root) cannot check an ECDSA signature.
    let rsa_root = leaf("invalid-ct-key_fail").root;
    let rsa = rsa_root
        .ctlogs
        .iter()
        .find(|c| c.key_details == "PKCS1_RSA_PKCS1V5")
        .unwrap();
    assert_eq!(
        with_key(&rsa.public_key, &rsa.key_details),
        vec![Reason::Algorithm {
            hash: 4,
            signature: 3,
            key: "RSA"
        }]
    );
    // An algorithm pair this verifier does not take.
    let md5 = Sct {
        hash_algorithm: 1,
        ..scts[0].clone()
    };
    assert!(matches!(
        reasons(sct::check(&[md5], &tbs, &hash, &l.root.ctlogs))[..],
        [Reason::Algorithm { hash: 1, .. }]
    ));
}

#[test]
fn log_key_validity_is_a_closed_interval_around_the_sct_timestamp() {
    let l = leaf("happy-path-v0.3");
    let (tbs, value, hash) = parts(&l);
    let scts = sct::parse_extension(&value).unwrap();
    let s = std::slice::from_ref(&scts[0]);
    let index = l
        .root
        .ctlogs
        .iter()
        .position(|c| c.log_id == scts[0].log_id)
        .unwrap();
    let ms = scts[0].timestamp_ms;
    let at = |ms: u64, nanos_delta: i64| {
        let t = i64::try_from(ms).unwrap() * 1_000_000 + nanos_delta;
        Some(Timestamp {
            secs: t.div_euclid(1_000_000_000),
            nanos: u32::try_from(t.rem_euclid(1_000_000_000)).unwrap(),
        })
    };
    let result = |start, end| {
        let mut logs = l.root.ctlogs.clone();
        logs[index].valid_for = trust::ValidFor { start, end };
        sct::check(s, &tbs, &hash, &logs)
    };
    assert!(result(at(ms, 0), at(ms, 0)).is_ok());
    assert!(result(at(ms, 0), None).is_ok());
    for (start, end) in [
        (at(ms, 1), None),
        (at(ms, -10), at(ms, -1)),
        (None, None),
        (None, at(ms, 1)),
    ] {
        assert!(matches!(
            reasons(result(start, end))[..],
            [Reason::OutsideValidity { .. }]
        ));
    }
}

#[test]
fn truncated_or_padded_lists_are_malformed_at_every_length() {
    let l = leaf("bundle-with-sct-with-extensions");
    let (_, value, _) = parts(&l);
    let tls = tls_list(&value);
    assert!(sct::parse_list(tls).is_ok());
    for n in 0..tls.len() {
        assert!(
            matches!(sct::parse_list(&tls[..n]), Err(SctError::Malformed(_))),
            "{n}"
        );
    }
    for n in 0..value.len() {
        assert!(
            matches!(
                sct::parse_extension(&value[..n]),
                Err(SctError::Malformed(_))
            ),
            "{n}"
        );
    }
    let mut padded = tls.to_vec();
    padded.push(0);
    assert_eq!(
        sct::parse_list(&padded),
        Err(SctError::Malformed("data after the list"))
    );
}

/// A TLS-encoded v`version` SCT with the given extensions and signature.
fn sct_bytes(version: u8, extensions: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = vec![version];
    out.extend([7u8; 32]);
    out.extend(1_700_000_000_000u64.to_be_bytes());
    out.extend(u16::try_from(extensions.len()).unwrap().to_be_bytes());
    out.extend(extensions);
    out.extend([4, 3]);
    out.extend(u16::try_from(signature.len()).unwrap().to_be_bytes());
    out.extend(signature);
    out
}

/// A TLS list of the given serialized SCTs.
fn list(items: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for i in items {
        body.extend(u16::try_from(i.len()).unwrap().to_be_bytes());
        body.extend(i);
    }
    let mut out = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend(body);
    out
}

#[test]
fn list_encoding_is_strict() {
    let good = sct_bytes(0, b"ext", b"sig");
    let one = list(std::slice::from_ref(&good));
    let parsed = sct::parse_list(&one).unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].log_id, [7; 32]);
    assert_eq!(parsed[0].timestamp_ms, 1_700_000_000_000);
    assert_eq!(parsed[0].extensions, b"ext");
    assert_eq!(
        (parsed[0].hash_algorithm, parsed[0].signature_algorithm),
        (4, 3)
    );
    assert_eq!(parsed[0].signature, b"sig");

    let malformed = |bytes: &[u8]| match sct::parse_list(bytes) {
        Err(SctError::Malformed(why)) => why,
        other => panic!("expected Malformed, got {other:?}"),
    };
    assert_eq!(
        malformed(&list(&[sct_bytes(1, b"", b"sig")])),
        "SCT version is not v1"
    );
    assert_eq!(malformed(&list(&[])), "empty list");
    let mut long = good.clone();
    long.push(0);
    assert_eq!(malformed(&list(&[long])), "data after an SCT");
    assert_eq!(
        malformed(&list(&vec![good.clone(); sct::MAX_SCTS + 1])),
        "more SCTs than MAX_SCTS"
    );
    assert_eq!(
        sct::parse_list(&list(&vec![good.clone(); sct::MAX_SCTS]))
            .unwrap()
            .len(),
        sct::MAX_SCTS
    );
    // An inner length pointing past the SCT.
    let mut overlong = list(&[good]);
    let sig_len_at = overlong.len() - 5;
    overlong[sig_len_at] = 0xff;
    assert!(sct::parse_list(&overlong).is_err());
}

#[test]
fn damaged_leaves_do_not_panic_and_damaged_lists_never_verify() {
    let l = leaf("bundle-with-sct-with-extensions");
    let (_, value, _) = parts(&l);
    let tls = tls_list(&value);
    let start = l
        .der
        .windows(tls.len())
        .position(|w| w == tls)
        .expect("the list is inside the leaf");
    for n in 0..l.der.len() {
        assert!(sct::verify(&l.der[..n], &l.issuer_spki, &l.root.ctlogs).is_err());
        let mut flipped = l.der.clone();
        flipped[n] ^= 0xff;
        let result = sct::verify(&flipped, &l.issuer_spki, &l.root.ctlogs);
        if (start..start + tls.len()).contains(&n) {
            assert!(result.is_err(), "byte {n} of the leaf (in the list)");
        }
        let _ = sct::verify_embedded(&flipped, &l.root, &[l.time]);
    }
    for n in 0..tls.len() {
        for bit in [0x01, 0x80] {
            let mut flipped = tls.to_vec();
            flipped[n] ^= bit;
            let _ = sct::parse_list(&flipped);
        }
    }
}

#[test]
fn precertificate_is_the_leaf_without_its_sct_list() {
    for case in CERT_CASES {
        let l = leaf(case);
        let (tbs, value, _) = parts(&l);
        // The precertificate re-wrapped as a certificate reads like the leaf, minus the SCTs.
        let mut wrapped = Vec::new();
        write_tlv(TAG_SEQUENCE, &tbs, &mut wrapped);
        let leaf_info = cert::parse(&l.der).unwrap();
        let pre_info = cert::parse(&wrapped).unwrap();
        assert!(leaf_info.has_sct_list);
        assert!(!pre_info.has_sct_list);
        assert_eq!(
            pre_info,
            cert::CertInfo {
                has_sct_list: false,
                ..leaf_info
            },
            "{case}"
        );
        // And it is shorter by exactly the extension (OID, OCTET STRING, SEQUENCE headers)
        // plus any shrinking of the enclosing length fields.
        let (outer, _) = read_tlv(&l.der).unwrap();
        let (leaf_tbs, _) = read_tlv(outer.content).unwrap();
        let removed = leaf_tbs.whole.len() - tbs.len();
        assert!(removed > value.len(), "{case}");
        assert!(removed <= value.len() + 2 + 12 + 4 + 6, "{case}");
        assert!(sct::precert_tbs(&wrapped).is_err_and(|e| e == SctError::NoSctList));
    }
}

#[test]
fn der_lengths_are_written_in_the_shortest_form() {
    for (len, header) in [
        (0usize, vec![0x04, 0x00]),
        (0x7f, vec![0x04, 0x7f]),
        (0x80, vec![0x04, 0x81, 0x80]),
        (0xff, vec![0x04, 0x81, 0xff]),
        (0x100, vec![0x04, 0x82, 0x01, 0x00]),
        (0x1_0000, vec![0x04, 0x83, 0x01, 0x00, 0x00]),
    ] {
        let content = vec![0xab; len];
        let mut out = Vec::new();
        write_tlv(0x04, &content, &mut out);
        assert_eq!(out[..header.len()], header[..], "{len}");
        let (tlv, rest) = read_tlv(&out).unwrap();
        assert!(rest.is_empty());
        assert_eq!(tlv.content, &content[..]);
    }
}

#[test]
fn rsa_pkcs1_log_keys_verify_rsa_scts() {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};

    let l = leaf("happy-path-v0.3");
    let (tbs, _, hash) = parts(&l);
    let key = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let unsigned = Sct {
        log_id: [9; 32],
        timestamp_ms: 1_700_000_000_123,
        extensions: b"",
        hash_algorithm: 4,
        signature_algorithm: 1,
        signature: b"",
    };
    let message = sct::signed_data(&unsigned, &hash, &tbs).unwrap();
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        &message,
        &mut signature,
    )
    .unwrap();
    let signed = Sct {
        signature: &signature,
        ..unsigned
    };
    let log = trust::TransparencyLog {
        base_url: "https://ct.example".into(),
        hash_algorithm: "SHA2_256".into(),
        public_key: key.public_key().as_ref().to_vec(),
        key_details: "PKCS1_RSA_PKCS1V5".into(),
        valid_for: trust::ValidFor {
            start: Some(Timestamp::from_secs(1_600_000_000)),
            end: None,
        },
        log_id: vec![9; 32],
    };
    let logs = [log];
    let verified = sct::check(std::slice::from_ref(&signed), &tbs, &hash, &logs).unwrap();
    assert_eq!(verified[0].timestamp_ms, 1_700_000_000_123);
    // Declared as ECDSA, the same SCT does not fit the RSA key.
    let as_ecdsa = Sct {
        signature_algorithm: 3,
        ..signed.clone()
    };
    assert_eq!(
        reasons(sct::check(&[as_ecdsa], &tbs, &hash, &logs)),
        vec![Reason::Algorithm {
            hash: 4,
            signature: 3,
            key: "RSA"
        }]
    );
    // Over another precertificate, it does not verify.
    assert_eq!(
        reasons(sct::check(&[signed], &tbs[1..], &hash, &logs)),
        vec![Reason::BadSignature("RSA")]
    );
}

#[test]
fn issuer_is_found_without_a_verified_signing_time() {
    let l = leaf("happy-path-v0.3");
    // No signing time, or times the chain fails at: the leaf's notBefore finds the issuer.
    assert!(sct::verify_embedded(&l.der, &l.root, &[]).is_ok());
    assert!(sct::verify_embedded(&l.der, &l.root, &[0, i64::MAX]).is_ok());
    let mut root = l.root.clone();
    root.certificate_authorities.clear();
    assert!(matches!(
        sct::verify_embedded(&l.der, &root, &[l.time]),
        Err(SctError::NoIssuer(_))
    ));
}
