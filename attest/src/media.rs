//! Spec URIs and media types: every string kiln's attestations share with a specification
//! lives here, once.

/// in-toto Statement v1 `_type`.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// SLSA Provenance v1 `predicateType`.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// SPDX document `predicateType` (in-toto attestation predicate for SPDX).
pub const SPDX_DOCUMENT: &str = "https://spdx.dev/Document";
/// CycloneDX BOM `predicateType`.
pub const CYCLONEDX_BOM: &str = "https://cyclonedx.org/bom";
/// DSSE `payloadType` of an in-toto statement.
pub const DSSE_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Sigstore bundle v0.3 `mediaType`.
pub const SIGSTORE_BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// OCI layer media type of an in-toto attestation in a BuildKit attestation manifest.
pub const INTOTO_LAYER: &str = "application/vnd.in-toto+json";
/// Layer annotation naming the predicate type of an in-toto layer (BuildKit).
pub const ANNOTATION_PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
/// Index-entry annotation marking an attestation manifest (BuildKit/Docker).
pub const DOCKER_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// Index-entry annotation naming the image manifest an attestation manifest is about.
pub const DOCKER_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
/// Value of [`DOCKER_REFERENCE_TYPE`] for an attestation manifest.
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";
/// kiln's SLSA `buildType`: a Dockerfile build. The meaning of every parameter is in
/// `docs/provenance.md`.
pub const BUILD_TYPE: &str = "https://example.invalid/kiln/build-types/dockerfile/v1";
