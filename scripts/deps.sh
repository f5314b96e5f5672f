#!/usr/bin/env bash
# Installs what kiln's build, demo and tests need on Debian 12, if missing. Idempotent.
# KILN_DEPS_FULL=1 adds the interop tools the test suite uses (skopeo, umoci, docker.io,
# openssh-client for the ssh-agent tests, docker-registry + apache2-utils + openssl for the
# registry tests).
set -euo pipefail
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
have_pkg busybox-static || need+=(busybox-static)
command -v cc >/dev/null || need+=(gcc)
if [ "${KILN_DEPS_FULL:-0}" = 1 ]; then
  for p in skopeo umoci docker.io openssh-client docker-registry apache2-utils openssl; do have_pkg "$p" || need+=("$p"); done
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
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
# The OCI schema tests run scripts/validate_oci_schemas.py: python3 with jsonschema >= 4.18
# (it brings `referencing`).
if [ "${KILN_DEPS_FULL:-0}" = 1 ] && ! python3 -c 'import jsonschema, referencing' 2>/dev/null; then
  echo "installing: jsonschema (pip)" >&2
  python3 -m pip install -q 'jsonschema>=4.18' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'jsonschema>=4.18'
fi
