#!/usr/bin/env bash
# Installs what kiln's build, demo and tests need on Debian 12, if missing. Idempotent.
# KILN_DEPS_FULL=1 adds the interop tools the test suite uses (skopeo, umoci, docker.io,
# openssh-client for the ssh-agent tests, docker-registry + apache2-utils + openssl for the
# registry tests, rpm for the rpm database interop test).
set -euo pipefail
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
have_pkg busybox-static || need+=(busybox-static)
command -v cc >/dev/null || need+=(gcc)
if [ "${KILN_DEPS_FULL:-0}" = 1 ]; then
  for p in skopeo umoci docker.io openssh-client docker-registry apache2-utils openssl rpm; do have_pkg "$p" || need+=("$p"); done
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
# The attestation interop tests (attest/tests/python_interop.rs) verify kiln's DSSE envelopes with
# python3's securesystemslib and in-toto, and sign envelopes with securesystemslib.
if [ "${KILN_DEPS_FULL:-0}" = 1 ] \
  && ! python3 -c 'import securesystemslib.signer, securesystemslib.dsse, cryptography, in_toto' 2>/dev/null; then
  echo "installing: securesystemslib[crypto] in-toto (pip)" >&2
  python3 -m pip install -q 'securesystemslib[crypto]' in-toto 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'securesystemslib[crypto]' in-toto
fi
# The policy tests (cli/tests/policy.rs) validate kiln's Verification Summary Attestations with
# in-toto's own Python bindings (Statement v1 checks, the VSA v1 protobuf).
if [ "${KILN_DEPS_FULL:-0}" = 1 ] \
  && ! python3 -c 'import in_toto_attestation.predicates.vsa.v1.vsa_pb2' 2>/dev/null; then
  echo "installing: in-toto-attestation (pip)" >&2
  python3 -m pip install -q 'in-toto-attestation>=0.9' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'in-toto-attestation>=0.9'
fi
# The SBOM tests (attest/tests/sbom_python.rs) validate kiln's SPDX and CycloneDX output with
# third-party tools: pyspdxtools (spdx-tools) and cyclonedx-python-lib's strict JSON validator.
if [ "${KILN_DEPS_FULL:-0}" = 1 ] && ! { command -v pyspdxtools >/dev/null 2>&1 \
    && python3 -c 'import cyclonedx.validation.json, jsonschema' 2>/dev/null; }; then
  echo "installing: spdx-tools, cyclonedx-python-lib[json-validation] (pip)" >&2
  python3 -m pip install -q 'spdx-tools>=0.8' 'cyclonedx-python-lib[json-validation]>=8' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'spdx-tools>=0.8' 'cyclonedx-python-lib[json-validation]>=8'
fi
