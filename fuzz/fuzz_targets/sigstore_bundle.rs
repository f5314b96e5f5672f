//! Sigstore JSON documents: `bundle::parse` and, when a bundle parses, the readers of its parts
//! and `verify_bundle` end to end against a fixed trusted root; `trust::parse` on the same
//! bytes. Beyond "no panic", asserts the parsers' documented bounds and the verifier's contract.

#![no_main]

use kiln_attest::sigstore::bundle::{self, Content, Signer};
use kiln_attest::sigstore::{Artifact, Check, Identity, checkpoint, merkle, rekor, trust};
use kiln_fuzz::{ARTIFACT, FUZZ_IDENTITY, FUZZ_ISSUER, LEAF_SPKI, TRUSTED_ROOT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = &*TRUSTED_ROOT;
    let parsed = bundle::parse(data);
    if let Ok(b) = &parsed {
        let m = &b.verification_material;
        assert!(m.tlog_entries.len() <= bundle::MAX_TLOG_ENTRIES);
        assert!(m.rfc3161_timestamps.len() <= bundle::MAX_ITEMS);
        if let Signer::CertificateChain(chain) = &m.signer {
            assert!(!chain.is_empty() && chain.len() <= bundle::MAX_ITEMS);
        }
        if let Content::DsseEnvelope(env) = &b.content {
            assert!(!env.signatures.is_empty() && env.signatures.len() <= bundle::MAX_ITEMS);
        }
        for e in &m.tlog_entries {
            let _ = rekor::parse_body(e);
            if let Some(p) = &e.inclusion_proof {
                assert!(p.hashes.len() <= bundle::MAX_PROOF_HASHES);
                let leaf = merkle::leaf_hash(&e.canonicalized_body);
                if let Ok(r) = merkle::root_from_proof(p.log_index, p.tree_size, &leaf, &p.hashes) {
                    // A recomputed root is what verify_inclusion compares with.
                    let ok = merkle::verify_inclusion(
                        p.log_index,
                        p.tree_size,
                        &e.canonicalized_body,
                        &p.hashes,
                        &r,
                    );
                    assert!(ok.is_ok(), "{ok:?}");
                }
                if let Some(cp) = &p.checkpoint {
                    check_checkpoint(cp);
                }
            }
        }
    }

    let policy = match parsed.as_ref().map(|b| &b.verification_material.signer) {
        Ok(Signer::PublicKeyHint(_)) => Identity::KeyPub(&LEAF_SPKI),
        _ => Identity::Cert {
            identity: FUZZ_IDENTITY,
            issuer: FUZZ_ISSUER,
        },
    };
    let verdict =
        kiln_attest::sigstore::verify_bundle(data, Artifact::Bytes(ARTIFACT), root, policy);
    if std::env::var_os("KILN_FUZZ_VERBOSE").is_some() {
        // For looking at one input: `KILN_FUZZ_VERBOSE=1 <target binary> <file>`.
        eprintln!(
            "verify_bundle: {:?}",
            verdict.as_ref().map(|v| &v.signing_times)
        );
    }
    match verdict {
        Ok(v) => {
            // Verified means at least one log entry and one verified signing time.
            assert!(parsed.is_ok());
            assert!(!v.tlog.is_empty() && !v.signing_times.is_empty());
            if matches!(policy, Identity::Cert { .. }) {
                assert!(v.certificate.is_some());
            }
        }
        Err(failures) => {
            assert!(!failures.is_empty());
            if parsed.is_err() {
                assert!(failures.len() == 1 && failures[0].check == Check::Bundle);
            }
        }
    }

    if let Ok(r) = trust::parse(data) {
        for list in [&r.tlogs, &r.ctlogs] {
            assert!(list.len() <= trust::MAX_ENTRIES);
        }
        for list in [&r.certificate_authorities, &r.timestamp_authorities] {
            assert!(list.len() <= trust::MAX_ENTRIES);
        }
    }
});

fn check_checkpoint(envelope: &str) {
    if let Ok(cp) = checkpoint::parse(envelope) {
        assert!(envelope.len() <= checkpoint::MAX_CHECKPOINT_SIZE);
        assert!(envelope.starts_with(&cp.text) && cp.text.ends_with('\n'));
        assert!(!cp.origin.is_empty() && cp.root_hash.len() == 32);
        assert!(!cp.signatures.is_empty() && cp.signatures.len() <= checkpoint::MAX_SIGNATURES);
    }
}
