//! kiln-engine: the build engine.
//!
//! Dockerfile → [`frontend`] (parser → typed instructions → graph) → [`solver`] (parallel,
//! cached) → [`store`] (content store, metadata, snapshots) → [`oci`] (layers, images,
//! exporters). Steps that run commands go through `kiln-sandbox`; file steps run here, never
//! following a path out of their root ([`fsview`], [`fileop`]).
#![forbid(unsafe_code)]

pub mod digest;
pub mod fileop;
pub mod frontend;
pub mod fsview;
pub mod oci;

pub use digest::Digest;
