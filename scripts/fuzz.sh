#!/usr/bin/env bash
# Runs kiln's coverage-guided fuzz targets (fuzz/, cargo-fuzz layout) for a bounded time each:
#   scripts/fuzz.sh [SECONDS]      seconds per target (default $KILN_FUZZ_SECONDS, else 60)
# Exits non-zero when a target crashes (a panic, a failed invariant, an AddressSanitizer report,
# an input over -timeout or -rss_limit_mb), after printing the crash input's path and the
# command that reproduces it.
#
# Toolchain: the machine's stable rustc. cargo-fuzz passes nightly-only flags (-Zsanitizer,
# -Cllvm-args for sancov); RUSTC_BOOTSTRAP=1 lets the stable compiler accept them, for this
# build only. AddressSanitizer: its runtime ships with stable's rust-std on x86_64 Linux.
#
# Corpus: fuzz/corpus/<target> (git-ignored; it grows across local runs), seeded at run time
# from fuzz/seeds (committed, hand-made) and, when present, sigstore-conformance's bundles,
# trusted roots, certificates, timestamps and checkpoints ($KILN_SHARED_VECTORS, else
# ../shared/vectors beside the checkout; read, never copied into the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-${KILN_FUZZ_SECONDS:-60}}"
targets=(sigstore_bundle sigstore_der sbom_rpmdb)
cargo_fuzz_version=0.13.1
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
  echo "installing: cargo-fuzz $cargo_fuzz_version" >&2
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --quiet
fi
# cargo-fuzz has no --locked: fail here if fuzz/Cargo.lock is not up to date.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null
cargo fuzz build --sanitizer address

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
for t in "${targets[@]}"; do mkdir -p "$seeds/$t" "fuzz/corpus/$t"; done
cp fuzz/seeds/bundle.sigstore.json fuzz/seeds/trusted_root.json "$seeds/sigstore_bundle/"
cp fuzz/seeds/leaf.der fuzz/seeds/checkpoint.txt "$seeds/sigstore_der/"
# A real rpm database (rpm 4.18, 512-byte pages: interior, leaf and overflow pages).
cp vectors/sbom/rpmdb-512.sqlite "$seeds/sbom_rpmdb/"
suite="${KILN_SHARED_VECTORS:-$PWD/../shared/vectors}/sigstore-conformance"
if [ -d "$suite" ]; then
  for f in "$suite"/*.json "$suite"/*/bundle.sigstore.json "$suite"/*/trusted_root.json; do
    [ -f "$f" ] || continue
    rel="${f#"$suite"/}"
    cp "$f" "$seeds/sigstore_bundle/${rel//\//_}"
  done
  # The DER and text inside the bundles: certificates, RFC 3161 timestamps, checkpoints.
  python3 - "$suite" "$seeds/sigstore_der" <<'PY' || echo "warning: no DER seeds from $suite" >&2
import base64, glob, hashlib, json, os, sys
suite, out = sys.argv[1], sys.argv[2]
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k in ("rawBytes", "signedTimestamp") and isinstance(x, str):
                yield base64.b64decode(x)
            elif k == "envelope" and isinstance(x, str):
                yield x.encode()
            else:
                yield from walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from walk(x)
for f in glob.glob(os.path.join(suite, "**", "*.json"), recursive=True):
    try:
        doc = json.load(open(f, "rb"))
    except ValueError:
        continue
    for blob in walk(doc):
        with open(os.path.join(out, hashlib.sha256(blob).hexdigest()[:16]), "wb") as o:
            o.write(blob)
PY
else
  echo "note: $suite absent; seeding from fuzz/seeds only" >&2
fi

for t in "${targets[@]}"; do
  log="fuzz/artifacts/$t.log"
  mkdir -p fuzz/artifacts
  echo "fuzz $t: ${seconds}s, $(ls "$seeds/$t" | wc -l) seeds" >&2
  if ! cargo fuzz run --sanitizer address "$t" "fuzz/corpus/$t" "$seeds/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "error: fuzz target $t failed; crash input: ${crash:-none written (see $log)}" >&2
    [ -n "$crash" ] && echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer address $t $crash" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)|^Done ' "$log" \
    | sed "s/^/fuzz $t: /" >&2
done
