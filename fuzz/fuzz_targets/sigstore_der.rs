//! The binary and text readers under a bundle, on every input: `cert::parse` (the leaf
//! certificate) and its embedded SCTs (`sct::verify_embedded`), `PublicKey::from_spki`, `tsa::verify` (RFC 3161 responses and tokens) and,
//! when the bytes are UTF-8, `checkpoint::parse` (signed notes). Beyond "no panic", asserts
//! what each reader promises about its output.

#![no_main]

use kiln_attest::sigstore::cert::{self, PublicKey};
use kiln_attest::sigstore::{checkpoint, sct, tsa};
use kiln_fuzz::TRUSTED_ROOT;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = cert::parse(data) {
        // Names and key are slices of the input, never more.
        assert!(info.spki.len() <= data.len());
        assert!(info.subject.len() <= data.len() && info.issuer.len() <= data.len());
        let _ = PublicKey::from_spki(&info.spki);
        let _ = (info.oidc_issuer(), info.self_issued());
        // At the seed bundle's signing time; verified means at least one SCT verified.
        if let Ok(scts) = sct::verify_embedded(data, &TRUSTED_ROOT, &[1_790_000_000]) {
            assert!(!scts.is_empty());
        }
    }
    let _ = PublicKey::from_spki(data);
    // The fuzz trusted root has no timestamp authority: no token can verify against it.
    assert!(tsa::verify(data, b"signature", &TRUSTED_ROOT).is_err());
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cp) = checkpoint::parse(text)
    {
        assert!(text.len() <= checkpoint::MAX_CHECKPOINT_SIZE);
        assert!(text.starts_with(&cp.text) && cp.text.ends_with('\n'));
        assert!(!cp.origin.is_empty() && cp.root_hash.len() == 32);
        assert!(!cp.signatures.is_empty() && cp.signatures.len() <= checkpoint::MAX_SIGNATURES);
        assert!(cp.signatures.iter().all(|s| !s.name.is_empty()));
    }
});
