//! Shared helpers for the CLI integration tests that declare `mod support;` (e2e, reproducible,
//! bad_input, interop). `dockerd.rs` and `tree.rs` are std-only and included by path
//! (`#[path = "support/tree.rs"] mod tree;`) by the tests that use them.

pub mod kiln;
