//! kiln-attest: what kiln says about an image, and how a verifier checks it.
//!
//! Plain data in, plain data out: this crate knows no engine type. The engine hands it a
//! build record and a view of the final file system ([`sbom::FileTree`]); it returns in-toto
//! statements (SLSA provenance, SPDX and CycloneDX SBOMs), DSSE envelopes and sigstore bundles,
//! and verifies them.
//!
//! Modules, bottom up: [`media`] (spec URIs), [`statement`] (in-toto Statement v1), [`slsa`]
//! (SLSA Provenance v1 predicate), [`keys`] (P-256/Ed25519 keys, PKCS#8, key ids), [`dsse`]
//! (DSSE envelopes, PAE), [`bundle`] (sigstore bundle v0.3, `.intoto.jsonl`), [`verify`] (a
//! bundle against a policy, every failure reason reported), [`sigstore`] (offline verification
//! of public-good sigstore bundles: the transparency-log half so far).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
mod canonical;
pub mod dsse;
pub mod keys;
pub mod media;
mod p256_fixed;
pub mod sbom;
pub mod sigstore;
pub mod slsa;
pub mod statement;
pub mod verify;
pub mod vsa;

/// Any error of this crate, for callers that do not care which module failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement did not parse.
    #[error(transparent)]
    Statement(#[from] statement::StatementError),
    /// A key could not be read, written or made.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// A DSSE envelope did not parse or verify.
    #[error(transparent)]
    Dsse(#[from] dsse::DsseError),
    /// A bundle could not be read.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
}
