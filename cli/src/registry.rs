//! Registry and shared-cache flags of `kiln build`: `--pull`, `--insecure-registry`,
//! `--registry-ca`, `--cache-to`, `--cache-from` (`-o type=registry` is an output).

use std::path::PathBuf;

use clap::Args;
use kiln_engine::builder::BuildRequest;
use kiln_engine::cache_export::CacheSpec;

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Refresh `FROM` tags from their registry even when the local image store has them
    /// (digest references never need it).
    #[arg(long)]
    pull: bool,
    /// DANGEROUS: talk plain HTTP (no TLS) to this registry, HOST:PORT (repeatable). Only
    /// loopback registries (127.0.0.0/8, [::1], localhost) are allowed; others are refused.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// Extra CA certificates (PEM) to trust for registries, besides the system's.
    #[arg(long = "registry-ca", value_name = "FILE", env = "KILN_REGISTRY_CA")]
    registry_ca: Option<PathBuf>,
    /// Export the build cache: type=registry,ref=REG/NAME:TAG[,mode=min|max] or
    /// type=local,dest=DIR[,mode=min|max] (repeatable; min: the final image's steps, the
    /// default; max: every step).
    #[arg(long = "cache-to", value_name = "SPEC", value_parser = parse_cache_to)]
    cache_to: Vec<CacheSpec>,
    /// Import a build cache: type=registry,ref=REG/NAME:TAG or type=local,src=DIR
    /// (repeatable). Every blob is verified by digest; what fails verification is rebuilt.
    #[arg(long = "cache-from", value_name = "SPEC", value_parser = parse_cache_from)]
    cache_from: Vec<CacheSpec>,
}

fn parse_cache_to(s: &str) -> Result<CacheSpec, String> {
    CacheSpec::parse_to(s).map_err(|e| e.reason)
}

fn parse_cache_from(s: &str) -> Result<CacheSpec, String> {
    CacheSpec::parse_from(s).map_err(|e| e.reason)
}

/// Puts the flags into the request.
pub fn apply(a: &RegistryArgs, req: &mut BuildRequest) {
    req.pull = a.pull;
    req.registry.insecure = a.insecure_registry.clone();
    req.registry.ca_file = a.registry_ca.clone();
    req.cache_to = a.cache_to.clone();
    req.cache_from = a.cache_from.clone();
}

/// The flags given that a build through kilnd cannot honour yet (registry access is the
/// daemon's).
pub fn remote_unsupported(a: &RegistryArgs) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.pull {
        out.push("--pull");
    }
    if !a.insecure_registry.is_empty() || a.registry_ca.is_some() {
        out.push("--insecure-registry/--registry-ca");
    }
    if !a.cache_to.is_empty() || !a.cache_from.is_empty() {
        out.push("--cache-to/--cache-from");
    }
    out
}
