//! kiln-engine: the build engine.
//!
//! Dockerfile → [`frontend`] (parser → typed instructions → graph) → [`solver`] (parallel,
//! cached) → [`store`] (content store, metadata, snapshots) → [`image`] (assemble) →
//! [`output`] (exporters). Steps that run commands go through `kiln-sandbox`; file steps run
//! here, never following a path out of their root ([`fsview`], [`fileop`]). [`builder`] runs
//! one build end to end.
#![forbid(unsafe_code)]

pub mod attest;
pub mod builder;
pub mod cache_export;
pub mod copydiff;
pub mod digest;
pub mod fileop;
pub mod frontend;
pub mod fsview;
pub mod gate;
pub mod gc;
pub mod graph;
pub mod image;
pub mod import;
pub mod oci;
pub mod ops;
pub mod output;
pub mod progress;
pub mod registry;
pub mod solver;
pub mod store;
pub mod tenant;

pub use digest::Digest;
pub use tenant::TenantId;

/// The CPUs this process may use, read once (`available_parallelism` reads the cgroup's CPU
/// quota files on every call; layer writers and COPY ask per layer and per directory).
pub(crate) fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
