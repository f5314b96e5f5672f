//! kiln-attest: what kiln says about an image, and how a verifier checks it.
//!
//! Plain data in, plain data out: this crate knows no engine type. The engine hands it a
//! build record and a view of the final file system ([`sbom::FileTree`]); it returns in-toto
//! statements (SLSA provenance, SPDX and CycloneDX SBOMs), DSSE envelopes and sigstore bundles,
//! and verifies them.
#![forbid(unsafe_code)]

pub mod sbom;
