#!/usr/bin/env bash
# What attestations cost: the example app (examples/app) built from an empty cache with
# `--attest none`, and with the default attestations (provenance, SPDX, CycloneDX) signed
# with a P-256 key, interleaved, N runs each; medians and the overhead in one table.
# Also the same on a larger image (busybox + 2,000 small files) where the SBOM has more to
# hash. Run as root:
#
#   bench/attest.sh                  # 11 runs each
#   BENCH_RUNS=5 bench/attest.sh
#   BENCH_TMPFS=1 bench/attest.sh    # store in memory (no disk writeback in the numbers)
#   BENCH_RUNS=1001 BENCH_BIG_RUNS=61 bench/attest.sh   # a tight interval on the example
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${BENCH_RUNS:-11}
[[ $(id -u) == 0 ]] || { echo "bench/attest.sh: run as root" >&2; exit 2; }
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  cargo build --release --locked -p kiln >&2
fi
KILN=${KILN_BIN:-$REPO/target/release/kiln}
W=$(mktemp -d /tmp/kiln-bench-attest.XXXXXX)
if [[ ${BENCH_TMPFS:-0} == 1 ]]; then
  # Store and contexts in memory: takes the disk's writeback (and fsync latency) out of the
  # numbers, leaving CPU and syscalls.
  mount -t tmpfs -o size="${BENCH_TMPFS_SIZE:-4g}" kiln-bench-attest "$W"
  trap 'umount "$W"; rmdir "$W"' EXIT
else
  trap 'rm -rf "$W"' EXIT
fi
export KILN_ROOT=$W/root

mkdir -p "$W/base"
cp "$(command -v busybox)" "$W/base/busybox"
cp examples/busybox-base/{Dockerfile,passwd,group} "$W/base/"
"$KILN" build -q -t kiln-demo/busybox:latest "$W/base" >/dev/null
"$KILN" key generate --out "$W/builder" >/dev/null 2>&1

# A larger image: the example plus 2,000 files of 4 KiB in one COPY.
mkdir -p "$W/big/files"
cp examples/app/* "$W/big/"
for i in $(seq 1 2000); do head -c 4096 /dev/urandom > "$W/big/files/f$i"; done
sed -i 's|^USER app|COPY files /srv/files\nUSER app|' "$W/big/Dockerfile"

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

run() { # context, flags... -> prints ms
  local ctx=$1; shift
  local t0 t1
  t0=$(now)
  "$KILN" build -q --no-cache "$@" -o type=oci,dest="$W/out.tar" "$ctx" >/dev/null
  t1=$(now)
  # Milliseconds with one decimal: the example's overhead is a few tenths of its 30 ms.
  awk -v ns=$(( t1 - t0 )) 'BEGIN {printf "%.1f\n", ns / 1e6}'

}

# The difference of the means and its 95 % confidence interval (normal approximation), in
# percent of the unattested mean: one build varies by several ms from run to run here, so
# the median alone can move by more than the overhead between two sittings.
mean_ci() { # none-file signed-file -> "overhead% ± ci%"
  awk 'FNR == NR {a += $1; aa += $1 * $1; na++; next} {b += $1; bb += $1 * $1; nb++}
       END {
         ma = a / na; mb = b / nb
         va = (aa - na * ma * ma) / (na - 1); vb = (bb - nb * mb * mb) / (nb - 1)
         se = sqrt(va / na + vb / nb)
         printf "%.1f%% ± %.1f%%", (mb - ma) * 100 / ma, 1.96 * se * 100 / ma
       }' "$1" "$2"
}

printf '%-34s %10s %10s %9s  %s\n' "workload" "none (ms)" "signed (ms)" "overhead" "of the means (95% CI)"
for ctx in examples/app "$W/big"; do
  n=$RUNS
  [[ $ctx == examples/app ]] || n=${BENCH_BIG_RUNS:-$RUNS}
  : > "$W/none"; : > "$W/signed"
  run "$ctx" --attest none >/dev/null   # warm the page cache
  for _ in $(seq 1 "$n"); do
    run "$ctx" --attest none >> "$W/none"
    run "$ctx" --sign-key "$W/builder.key" >> "$W/signed"
  done
  a=$(median < "$W/none"); b=$(median < "$W/signed")
  name=$( [[ $ctx == examples/app ]] && echo "example app" || echo "example app + 2,000 files (8 MiB)")
  printf '%-34s %10s %10s %8.1f%%  %s\n' "$name" "$a" "$b" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN {print (b - a) * 100 / a}')" "$(mean_ci "$W/none" "$W/signed")"
done
echo "(medians of $RUNS interleaved runs (the larger image: ${BENCH_BIG_RUNS:-$RUNS}), --no-cache, -o type=oci;"
echo " signed = provenance mode=min + SPDX + CycloneDX, ECDSA P-256)"
