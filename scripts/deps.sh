#!/usr/bin/env bash
# Installs what kiln's build, demo and tests need on Debian 12, if missing. Idempotent.
# KILN_DEPS_FULL=1 adds the interop tools the test suite uses (skopeo, umoci, docker.io).
set -euo pipefail
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
have_pkg busybox-static || need+=(busybox-static)
command -v cc >/dev/null || need+=(gcc)
if [ "${KILN_DEPS_FULL:-0}" = 1 ]; then
  for p in skopeo umoci docker.io python3-jsonschema; do have_pkg "$p" || need+=("$p"); done
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo (Rust >= 1.90) is required; install it with rustup: https://rustup.rs" >&2
  exit 1
fi
