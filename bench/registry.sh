#!/usr/bin/env bash
# Shared-cache benchmark: for the engine benchmark's workloads (bench/run.sh scenarios a, b, c),
# a cold build versus the same build on a cold store that imports the registry cache
# (`--cache-from type=registry`), and the registry traffic of a no-change rebuild with
# `--cache-from`. A private Debian `docker-registry` on loopback holds the cache. Run as root:
#
#   bench/registry.sh                       # a b c, 5 runs each
#   BENCH_RUNS=3 BENCH_SCENARIOS="a b" bench/registry.sh
#
# Same variables as bench/run.sh (BENCH_RUNS, BENCH_SCENARIOS, BENCH_SKIP_BUILD, KILN_BIN,
# BENCH_KEEP). See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${BENCH_RUNS:-5}
SCENARIOS=${BENCH_SCENARIOS:-"a b c"}

if [[ $(id -u) != 0 ]]; then echo "bench/registry.sh: run as root" >&2; exit 2; fi
command -v docker-registry >/dev/null || { echo "docker-registry is not installed (KILN_DEPS_FULL=1 scripts/deps.sh)" >&2; exit 2; }
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  echo "== cargo build --release -p kiln" >&2
  cargo build --release --locked -p kiln >&2
fi
KILN=${KILN_BIN:-$REPO/target/release/kiln}
[[ -x $KILN ]] || { echo "no kiln binary at $KILN" >&2; exit 1; }

W=$(mktemp -d /tmp/kiln-bench-registry.XXXXXX)
LOG=$W/bench.log
REG_PID=
cleanup() {
  [[ -n $REG_PID ]] && kill "$REG_PID" 2>/dev/null || true
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
echo "== work dir $W (log: $LOG)" >&2

# The registry: plain HTTP on a free loopback port, storage in the work dir.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
cat >"$W/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: $REG
YML
docker-registry serve "$W/registry.yml" >>"$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

timed() { # timed VAR CMD...: wall time in µs; the command's output is in $W/last.log
  local __var=$1; shift
  echo "+ $*" >>"$LOG"
  local t0 t1
  t0=${EPOCHREALTIME/./}
  if ! "$@" >"$W/last.log" 2>&1; then
    cat "$W/last.log" >>"$LOG"; echo "FAILED: $*" >&2; tail -n 30 "$W/last.log" >&2; exit 1
  fi
  t1=${EPOCHREALTIME/./}
  cat "$W/last.log" >>"$LOG"
  printf -v "$__var" '%d' $((10#$t1 - 10#$t0))
}
median() {
  local -a s; mapfile -t s < <(printf '%s\n' "$@" | sort -n)
  local n=${#s[@]}
  if ((n % 2)); then echo "${s[n / 2]}"; else echo $(((s[n / 2 - 1] + s[n / 2]) / 2)); fi
}
fmt() {
  local us=$1
  if ((us >= 1000000)); then printf '%d.%03d s' $((us / 1000000)) $((us % 1000000 / 1000))
  else printf '%d.%01d ms' $((us / 1000)) $((us % 1000 / 100)); fi
}
fetched() { # bytes the last build's cache import fetched
  sed -n 's/.*importing cache from .*, \([0-9]*\) bytes fetched.*/\1/p' "$W/last.log" | tail -n 1
}
digest() { tail -n 1 "$W/last.log"; }

echo "== base image kiln-busybox" >&2
mkdir -p "$W/base"
cp /bin/busybox "$W/base/busybox"
cp examples/busybox-base/Dockerfile examples/busybox-base/passwd examples/busybox-base/group "$W/base/"
TEMPLATE=$W/template-store
"$KILN" --root "$TEMPLATE" build --progress plain -t kiln-busybox:latest "$W/base" >>"$LOG" 2>&1 \
  || { tail -n 30 "$LOG" >&2; exit 1; }
fresh_store() { rm -rf "$1"; cp -a "$TEMPLATE" "$1"; }
kbuild() { local root=$1 ctx=$2; shift 2; "$KILN" --root "$root" build --progress plain "$@" "$ctx"; }

declare -a ROWS
workload() { # workload NAME DIR
  local name=$1 d=$2 ref=$REG/cache-$1:1
  local -a cold imp noop
  local t export_us digest_cold digest_imp bytes_imp bytes_noop
  echo "== ($name) export: cold build with --cache-to mode=max" >&2
  fresh_store "$W/root-a"
  timed export_us kbuild "$W/root-a" "$d" --insecure-registry "$REG" --cache-to "type=registry,ref=$ref,mode=max"
  echo "== ($name) $RUNS × cold, $RUNS × cold store + --cache-from, $RUNS × no-change rebuild + --cache-from" >&2
  for _ in $(seq "$RUNS"); do
    fresh_store "$W/root-b"
    timed t kbuild "$W/root-b" "$d"; cold+=("$t"); digest_cold=$(digest)
  done
  for _ in $(seq "$RUNS"); do
    fresh_store "$W/root-b"
    timed t kbuild "$W/root-b" "$d" --insecure-registry "$REG" --cache-from "type=registry,ref=$ref"
    imp+=("$t"); digest_imp=$(digest); bytes_imp=$(fetched)
  done
  for _ in $(seq "$RUNS"); do
    timed t kbuild "$W/root-b" "$d" --insecure-registry "$REG" --cache-from "type=registry,ref=$ref"
    noop+=("$t"); bytes_noop=$(fetched)
  done
  [[ $digest_cold == "$digest_imp" ]] || { echo "($name): digest differs: $digest_cold vs $digest_imp" >&2; exit 1; }
  echo "   raw µs ($name): cold ${cold[*]} | import ${imp[*]} | no-change ${noop[*]}" >>"$LOG"
  ROWS+=("| ($name) | $(fmt "$(median "${cold[@]}")") | $(fmt "$export_us") | $(fmt "$(median "${imp[@]}")") | $bytes_imp | $(fmt "$(median "${noop[@]}")") | $bytes_noop |")
}

for s in $SCENARIOS; do
  case $s in
    a)
      mkdir -p "$W/a"
      { for i in 1 2 3 4; do printf 'FROM kiln-busybox AS s%d\nRUN sleep 1 && echo %d > /out\n\n' "$i" "$i"; done
        echo 'FROM kiln-busybox'
        for i in 1 2 3 4; do printf 'COPY --from=s%d /out /o%d\n' "$i" "$i"; done; } >"$W/a/Dockerfile"
      workload a "$W/a" ;;
    b)
      mkdir -p "$W/b"
      { echo 'FROM kiln-busybox'; for i in $(seq 30); do printf 'RUN echo step %d > /s%d\n' "$i" "$i"; done; } >"$W/b/Dockerfile"
      workload b "$W/b" ;;
    c)
      mkdir -p "$W/c"
      echo "== (c) generating 20,000 files / 100 MB" >&2
      python3 - "$W/c" <<'PY'
import base64, os, random, sys
root = sys.argv[1]
rng = random.Random(20000)
for d in range(100):
    dd = os.path.join(root, "src", f"d{d:02}")
    os.makedirs(dd, exist_ok=True)
    blob = base64.encodebytes(rng.randbytes(200 * 3800))
    for f in range(200):
        with open(os.path.join(dd, f"f{d * 200 + f:05}.txt"), "wb") as fh:
            fh.write(blob[f * 5000:(f + 1) * 5000])
PY
      printf 'FROM kiln-busybox\nCOPY . /ctx\n' >"$W/c/Dockerfile"
      workload c "$W/c" ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done

echo
echo "kiln $("$KILN" --version | awk '{print $2}'), $RUNS runs each (medians), registry: docker-registry $(docker-registry --version | awk '{print $3}') on loopback, plain HTTP"
echo
echo "| workload | cold build | cold + --cache-to (once) | cold store + --cache-from | bytes pulled | no-change rebuild + --cache-from | bytes pulled |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
