//! Registries: an OCI distribution client (pull by tag or digest, push), over `ureq`.
//!
//! - [`reference`]: `REGISTRY/NAME[:TAG][@DIGEST]` parsed once at the boundary.
//! - [`auth`]: credentials from `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`),
//!   never printed (their `Debug` redacts).
//! - [`client`]: HTTP with TLS (system roots plus an optional extra CA), the
//!   `WWW-Authenticate` challenge (anonymous, Basic, Bearer token), plain HTTP only for
//!   registries named with `--insecure-registry` *and* on loopback.
//! - [`pull`]: manifests (indexes resolved to the build platform) and blobs into the content
//!   store, every byte digest-verified while streaming; size limits on JSON documents.
//! - [`push`]: blobs (skipped when present, cross-repo mounted when possible), config,
//!   manifest.

pub mod auth;
pub mod client;
pub mod pull;
pub mod push;
pub mod reference;
pub mod resolve;

#[cfg(test)]
mod fake_tests;

pub use client::{Client, RegistryOptions};
pub use reference::Reference;

use crate::Digest;

/// Largest manifest or index accepted from a registry.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// The `Accept` header for manifests: every manifest and index type kiln reads.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Registry errors; each names the registry (never a credential).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference {
        /// What was given.
        reference: String,
        /// Why it is wrong.
        reason: String,
    },
    /// Plain HTTP was asked for a registry that is not on loopback.
    #[error(
        "registry {host}: --insecure-registry is only allowed for loopback registries \
         (127.0.0.0/8, [::1], localhost); refusing plain HTTP"
    )]
    InsecureNotLoopback {
        /// The registry.
        host: String,
    },
    /// The registry refused the credentials (or asked for some and none were configured).
    #[error("registry {host}: authentication failed ({status}){hint}")]
    Unauthorized {
        /// The registry.
        host: String,
        /// HTTP status.
        status: u16,
        /// What to do about it.
        hint: String,
    },
    /// Connecting, TLS or the transfer failed.
    #[error("registry {host}: {message}")]
    Transport {
        /// The registry.
        host: String,
        /// What went wrong.
        message: String,
    },
    /// The registry answered with an unexpected status.
    #[error("registry {host}: {what}: HTTP {status}{body}")]
    Status {
        /// The registry.
        host: String,
        /// The request.
        what: String,
        /// HTTP status.
        status: u16,
        /// The start of the error body, if any.
        body: String,
    },
    /// Content did not hash to the digest it is named by.
    #[error("registry {host}: {what} failed verification: expected {expected}, got {actual}")]
    Digest {
        /// The registry.
        host: String,
        /// What was checked.
        what: String,
        /// The expected digest.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A document is malformed, too large or of a type kiln does not read.
    #[error("registry {host}: {what}: {reason}")]
    Invalid {
        /// The registry.
        host: String,
        /// The document.
        what: String,
        /// Why.
        reason: String,
    },
    /// Configuration (CA file, docker config) could not be read.
    #[error("{what} {path}: {reason}")]
    Config {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}
