#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, integration and end-to-end tests (as root,
# with the interop tools installed here), then a bounded fuzzing run (scripts/fuzz.sh). Prints
# cargo's own summary lines.
set -euo pipefail
cd "$(dirname "$0")/.."
export KILN_DEPS_FULL=1
source scripts/deps.sh
export CARGO_TERM_COLOR=never
# The suite builds once, from clean: no incremental state, and no debug info (a failing
# test's panic still names its file:line; backtraces keep function names). This keeps the
# target directory near 2 GB instead of 6.3 GB, so the suite also runs where disk is short.
# Set either variable to keep cargo's default.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-false}"
# What the run has to work with, for a failure that is about space.
df -h --output=target,avail,size . "${TMPDIR:-/tmp}" | sed 's/^/disk: /' >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
# Coverage-guided fuzzing of the sigstore parsers, bounded (60 s per target by default).
scripts/fuzz.sh
