#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, integration and end-to-end tests (as root,
# with the interop tools installed here). Prints cargo's own summary lines.
set -euo pipefail
cd "$(dirname "$0")/.."
export KILN_DEPS_FULL=1
source scripts/deps.sh
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
