#!/usr/bin/env bash
# kiln's main job on a fresh Debian 12 machine, as root: install what is missing, build kiln,
# build a busybox base image FROM scratch with kiln from the host's static busybox, build a
# multi-stage example app on it with signed SLSA provenance and SPDX/CycloneDX SBOMs under the
# example build policy, export it as an OCI archive, print the image digest, and verify the
# attestations with `kiln verify` under the example deploy policy, writing a signed VSA.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cargo build --release --locked -p kiln
KILN=$PWD/target/release/kiln
export KILN_ROOT=${KILN_ROOT:-/var/lib/kiln}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/base"
cp "$(command -v busybox)" "$work/base/busybox"
cp examples/busybox-base/Dockerfile examples/busybox-base/passwd examples/busybox-base/group "$work/base/"
echo "== building the busybox base image (FROM scratch)"
"$KILN" build --progress plain -t kiln-demo/busybox:latest "$work/base"

echo "== a builder signing key and a verifier signing key (fresh ones for this demo)"
"$KILN" key generate --out "$work/builder"
"$KILN" key generate --out "$work/verifier"

echo "== the example policies' own tests"
"$KILN" policy test examples/policy/build
"$KILN" policy test examples/policy/deploy

echo "== building the multi-stage example app under the build policy, with signed provenance and SBOMs"
digest=$("$KILN" build --progress plain -t kiln-demo/app:latest --policy examples/policy/build \
  --sign-key "$work/builder.key" --builder-id https://example.invalid/kiln/builders/demo \
  -o type=oci,dest="$work/app.tar" examples/app)
echo "== image digest: $digest"
"$KILN" images

echo "== verifying the image's attestations under the deploy policy, as a deploy pipeline would"
"$KILN" verify "oci-archive:$work/app.tar" --key "$work/builder.pub" \
  --builder-id https://example.invalid/kiln/builders/demo \
  --policy examples/policy/deploy --vsa "$work/vsa.json" --vsa-key "$work/verifier.key"
echo "== the verification summary (VSA) verifies with the verifier's key"
"$KILN" verify "oci-archive:$work/app.tar" --key "$work/verifier.pub" --bundle "$work/vsa.json" \
  --predicate-type https://slsa.dev/verification_summary/v1
"$KILN" inspect "oci-archive:$work/app.tar"
