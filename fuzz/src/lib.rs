//! What kiln's sigstore fuzz targets share: a fixed trusted root and the artifact, identity and
//! key that `seeds/bundle.sigstore.json` verifies against, so the fuzzer starts from a bundle
//! that passes every check and mutates it from there.
//!
//! The seed material was made once with Python's `cryptography` (throwaway keys, private
//! halves not kept): a P-256 transparency-log key, a P-256 CT log key, a self-signed CA and a
//! leaf it issued (SAN [`FUZZ_IDENTITY`], OIDC issuer extension [`FUZZ_ISSUER`], code signing,
//! one embedded SCT), all valid from 2026-01-01; the bundle's entry is a `hashedrekord` 0.0.1
//! with a signed entry timestamp at 1790000000 (2026-09-21), an inclusion proof (leaf 0 of 2)
//! and a signed checkpoint.

use std::sync::LazyLock;

use kiln_attest::sigstore::cert;
use kiln_attest::sigstore::trust::{self, TrustedRoot};

/// The trusted root every target verifies against: one transparency log, one CT log, one
/// certificate authority, no timestamp authority.
pub const TRUSTED_ROOT_JSON: &[u8] = include_bytes!("../seeds/trusted_root.json");
/// The seed bundle's leaf certificate (DER).
pub const LEAF_DER: &[u8] = include_bytes!("../seeds/leaf.der");
/// What the seed bundle signs.
pub const ARTIFACT: &[u8] = b"kiln fuzz artifact\n";
/// The seed leaf's SAN.
pub const FUZZ_IDENTITY: &str = "https://example.invalid/fuzz";
/// The seed leaf's OIDC issuer.
pub const FUZZ_ISSUER: &str = "https://issuer.example.invalid";

/// [`TRUSTED_ROOT_JSON`], parsed once.
pub static TRUSTED_ROOT: LazyLock<TrustedRoot> = LazyLock::new(|| {
    trust::parse(TRUSTED_ROOT_JSON).unwrap_or_else(|e| panic!("fuzz trusted root: {e}"))
});

/// The seed leaf's SubjectPublicKeyInfo (DER): the key a `publicKey`-signed bundle is checked
/// against.
pub static LEAF_SPKI: LazyLock<Vec<u8>> = LazyLock::new(|| {
    cert::parse(LEAF_DER)
        .unwrap_or_else(|e| panic!("fuzz leaf certificate: {e}"))
        .spki
});
