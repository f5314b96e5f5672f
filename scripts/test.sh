#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, integration and end-to-end tests (as root,
# with the interop tools installed here), then a bounded fuzzing run (scripts/fuzz.sh). Prints
# cargo's own summary lines.
set -euo pipefail
cd "$(dirname "$0")/.."
export KILN_DEPS_FULL=1
source scripts/deps.sh
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
# Coverage-guided fuzzing of the sigstore parsers, bounded (60 s per target by default).
scripts/fuzz.sh
