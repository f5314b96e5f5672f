//! Shared helpers for the CLI integration tests. Each test binary declares `mod support;`.
//! (`dockerd.rs` and `tree.rs` are added on another branch; the lead merges the declarations.)

pub mod kiln;
