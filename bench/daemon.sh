#!/usr/bin/env bash
# kilnd's benchmark: builds through the daemon (mutual TLS on loopback) next to the same
# builds embedded, one markdown table at the end. Run as root from anywhere:
#
#   bench/daemon.sh                    # 21 no-op runs each
#   BENCH_RUNS=41 bench/daemon.sh
#   BENCH_SKIP_BUILD=1 KILN_BIN=... KILND_BIN=... bench/daemon.sh
#
# Measures (see bench/README.md, "Daemon"):
#   1. a no-op rebuild of bench workload (a) through kilnd (`kiln build --addr … -q`) and
#      embedded (`kiln build -q`), median and p90 of BENCH_RUNS runs (hyperfine if installed,
#      else a timing loop);
#   2. a cold upload of a 100 MiB context (100 files × 1 MiB random) with a build that is
#      cheap by itself, then the same build again (the daemon's copy is reused);
#   3. a rebuild after one file of a 20,000-file context changed (bytes sent, time).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

RUNS=${BENCH_RUNS:-21}

if [[ $(id -u) != 0 ]]; then
  echo "bench/daemon.sh: run as root (kilnd and kiln's sandbox need it)" >&2
  exit 2
fi
if ((BASH_VERSINFO[0] < 5)); then
  echo "bench/daemon.sh: needs bash >= 5 (EPOCHREALTIME)" >&2
  exit 2
fi

# ---------------------------------------------------------------------------------------------
# Setup: release binaries, work dir, cleanup.

TARGET=${CARGO_TARGET_DIR:-$REPO/target}
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  echo "== cargo build --release -p kiln" >&2
  cargo build --release --locked -p kiln >&2
fi
KILN=${KILN_BIN:-$TARGET/release/kiln}
KILND=${KILND_BIN:-$TARGET/release/kilnd}
[[ -x $KILN ]] || { echo "no kiln binary at $KILN" >&2; exit 1; }
[[ -x $KILND ]] || { echo "no kilnd binary at $KILND" >&2; exit 1; }

W=$(mktemp -d /tmp/kiln-dbench.XXXXXX)
LOG=$W/bench.log
KILND_PID=
cleanup() {
  if [[ -n $KILND_PID ]]; then
    kill -TERM "$KILND_PID" 2>/dev/null || true
    wait "$KILND_PID" 2>/dev/null || true
  fi
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
echo "== work dir $W (log: $LOG)" >&2

usecs() { local t=${EPOCHREALTIME/./}; echo $((10#$t)); }

# timed VAR ERRFILE CMD...: runs CMD (stdout to the log, stderr to ERRFILE and the log), stores
# its wall time in µs in VAR.
timed() {
  local __var=$1 err=$2; shift 2
  echo "+ $*" >>"$LOG"
  local __t0 __t1
  __t0=${EPOCHREALTIME/./}
  if ! "$@" >>"$LOG" 2>"$err"; then
    cat "$err" >>"$LOG"
    echo "FAILED: $*  (tail of $LOG:)" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  __t1=${EPOCHREALTIME/./}
  cat "$err" >>"$LOG"
  printf -v "$__var" "%d" $((10#$__t1 - 10#$__t0))
}

# µs → human string
fmt() {
  local us=$1
  if [[ $us == - || -z $us ]]; then echo "-"; return; fi
  if ((us >= 1000000)); then printf '%d.%03d s' $((us / 1000000)) $((us % 1000000 / 1000))
  else printf '%d.%01d ms' $((us / 1000)) $((us % 1000 / 100)); fi
}

# stats FILE: "median p90" (µs) of the integers in FILE, one a line. p90 is nearest-rank.
stats() {
  python3 - "$1" <<'EOF'
import math, sys
xs = sorted(int(l) for l in open(sys.argv[1]) if l.strip())
n = len(xs)
med = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) // 2
p90 = xs[max(0, math.ceil(0.9 * n) - 1)]
print(med, p90)
EOF
}

# sent ERRFILE: "N M" from the client's `context: sent N of M bytes (…)` line.
sent() { sed -n 's/^context: sent \([0-9]*\) of \([0-9]*\) bytes.*/\1 \2/p' "$1" | tail -n 1; }

# MB/s (10^6 bytes) of BYTES in µs, one decimal.
mbps() { python3 -c "import sys; print(f'{int(sys.argv[1]) / int(sys.argv[2]):.1f}')" "$1" "$2"; }

# ---------------------------------------------------------------------------------------------
# The base image (as bench/run.sh makes it), in kilnd's store; the embedded builds get a copy.

echo "== base image kiln-busybox" >&2
mkdir -p "$W/base" "$W/state"
cp /bin/busybox "$W/base/busybox"
cp examples/busybox-base/Dockerfile examples/busybox-base/passwd examples/busybox-base/group "$W/base/"
"$KILN" --root "$W/state/store" build --progress plain -t kiln-busybox:latest "$W/base" \
  >>"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; exit 1; }
cp -a "$W/state/store" "$W/embedded-store"

# ---------------------------------------------------------------------------------------------
# A development PKI and kilnd on loopback (127.0.0.1, a free port).

echo "== kiln pki init/issue; kilnd" >&2
PKI=$W/pki
"$KILN" pki init --dir "$PKI" >>"$LOG" 2>&1
"$KILN" pki issue --dir "$PKI" server --name kilnd >>"$LOG" 2>&1
"$KILN" pki issue --dir "$PKI" client --name bench --uri spiffe://kiln.bench/tenant/bench >>"$LOG" 2>&1
cat >"$W/kilnd.toml" <<EOF
listen = "127.0.0.1:0"
state_dir = "$W/state"
[tls]
cert = "$PKI/kilnd.pem"
key = "$PKI/kilnd.key"
client_ca = ["$PKI/ca.pem"]
[[tenant]]
name = "bench"
identities = ["spiffe://kiln.bench/tenant/bench"]
EOF
KILND_LOG=${KILND_LOG:-info} "$KILND" --config "$W/kilnd.toml" </dev/null 2>"$W/kilnd.log" &
KILND_PID=$!
ADDR=
for _ in $(seq 300); do
  ADDR=$(sed -n 's/.*kilnd listening.*addr=\([^ ]*\).*/\1/p' "$W/kilnd.log" | head -n 1)
  [[ -n $ADDR ]] && break
  kill -0 "$KILND_PID" 2>/dev/null || { cat "$W/kilnd.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n $ADDR ]] || { echo "kilnd did not start:" >&2; cat "$W/kilnd.log" >&2; exit 1; }
export KILN_ADDR=https://$ADDR KILN_TLS_CA=$PKI/ca.pem KILN_TLS_CERT=$PKI/bench.pem \
  KILN_TLS_KEY=$PKI/bench.key
echo "   kilnd $KILN_ADDR (pid $KILND_PID)" >&2

remote() { "$KILN" build --addr "$KILN_ADDR" "$@"; }            # the client reads KILN_TLS_*
# KILN_ADDR is exported: without `env -u` kiln would build through kilnd.
embedded() { env -u KILN_ADDR "$KILN" --root "$W/embedded-store" build "$@"; }

# settle CONTEXT: the engine's file-hash cache does not remember a file whose status changed
# less than 2 s ago ("racy git"), and kilnd's copy of a context was written just now: wait,
# then one untimed build through kilnd and one embedded, so the timed rebuilds show the
# steady state (the first rebuild within 2 s of an upload hashes the files again).
settle() {
  sleep 3
  remote -q "$1" >/dev/null 2>&1
  embedded -q "$1" >/dev/null 2>&1
}

declare -a ROWS
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); }

# ---------------------------------------------------------------------------------------------
# 1. No-op rebuild of workload (a): 4 stages sleeping 1 s, a final stage copying from all four.

A=$W/a
mkdir -p "$A"
{
  for i in 1 2 3 4; do
    printf 'FROM kiln-busybox AS s%d\nRUN sleep 1 && echo %d > /out\n\n' "$i" "$i"
  done
  echo 'FROM kiln-busybox'
  for i in 1 2 3 4; do printf 'COPY --from=s%d /out /o%d\n' "$i" "$i"; done
} >"$A/Dockerfile"

echo "== 1. workload (a): cold builds (untimed), then $RUNS no-op rebuilds each" >&2
timed ignored "$W/err" remote "$A"
timed ignored "$W/err" embedded "$A"
if command -v hyperfine >/dev/null; then
  TIMER="hyperfine $(hyperfine --version | cut -d' ' -f2)"
  hyperfine -N --warmup 2 --runs "$RUNS" --export-json "$W/a.json" \
    -n kilnd "$KILN build --addr $KILN_ADDR -q $A" \
    -n embedded "env -u KILN_ADDR $KILN --root $W/embedded-store build -q $A" >>"$LOG" 2>&1 \
    || { tail -n 30 "$LOG" >&2; exit 1; }
  python3 - "$W/a.json" "$W" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    with open(f"{sys.argv[2]}/a-{r['command']}.us", "w") as f:
        f.writelines(f"{round(t * 1e6)}\n" for t in r["times"])
EOF
else
  TIMER="a bash timing loop (EPOCHREALTIME)"
  for _ in 1 2; do remote -q "$A" >/dev/null; embedded -q "$A" >/dev/null; done
  : >"$W/a-kilnd.us"; : >"$W/a-embedded.us"
  for _ in $(seq "$RUNS"); do
    timed t "$W/err" remote -q "$A"; echo "$t" >>"$W/a-kilnd.us"
    timed t "$W/err" embedded -q "$A"; echo "$t" >>"$W/a-embedded.us"
  done
fi
read -r dmed dp90 < <(stats "$W/a-kilnd.us")
read -r emed ep90 < <(stats "$W/a-embedded.us")
echo "   raw µs: kilnd $(paste -sd' ' "$W/a-kilnd.us") | embedded $(paste -sd' ' "$W/a-embedded.us")" >>"$LOG"
row "(a) no-op rebuild, median of $RUNS (target < 200 ms)" "$(fmt "$dmed")" "$(fmt "$emed")" \
  "$( ((dmed < 200000)) && echo pass || echo FAIL)"
row "(a) no-op rebuild, p90 of $RUNS" "$(fmt "$dp90")" "$(fmt "$ep90")" "-"

# ---------------------------------------------------------------------------------------------
# 2. Cold upload of 100 MiB: 100 files × 1 MiB of random bytes; the build copies only the
# Dockerfile, so the time is the transfer and the daemon's bookkeeping.

echo "== 2. 100 × 1 MiB context: cold upload, then unchanged" >&2
U=$W/upload
mkdir -p "$U/data"
for i in $(seq -w 100); do head -c 1048576 /dev/urandom >"$U/data/f$i.bin"; done
printf 'FROM kiln-busybox\nCOPY Dockerfile /Dockerfile\n' >"$U/Dockerfile"
timed tcold "$W/err" remote --progress plain "$U"
read -r bcold ctx < <(sent "$W/err")
settle "$U"
timed twarm "$W/err" remote --progress plain "$U"
read -r bwarm _ < <(sent "$W/err")
timed temb "$W/err" embedded --progress plain "$U"
row "100 MiB context (100 × 1 MiB), cold upload: $bcold of $ctx bytes sent" \
  "$(fmt "$tcold") ($(mbps "$bcold" "$tcold") MB/s over the whole build)" "-" "-"
row "same, rebuild, nothing changed: $bwarm bytes sent" "$(fmt "$twarm")" "$(fmt "$temb")" "-"
row "cold upload minus the unchanged build (≈ transfer alone)" \
  "$(fmt $((tcold - twarm))) ($(mbps "$bcold" $((tcold - twarm))) MB/s)" "-" "-"

# ---------------------------------------------------------------------------------------------
# 3. One file changed in a 20,000-file context (bench/run.sh's (c) data: 100 dirs × 200
# files × 5,000 bytes), again with a build that copies only the Dockerfile.

echo "== 3. 20,000-file context: cold, unchanged, one file changed" >&2
C=$W/c
mkdir -p "$C"
python3 - "$C" <<'EOF'
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
EOF
printf 'FROM kiln-busybox\nCOPY Dockerfile /Dockerfile\n' >"$C/Dockerfile"
timed tc "$W/err" remote --progress plain "$C"
read -r bc cctx < <(sent "$W/err")
settle "$C"
timed tn "$W/err" remote --progress plain "$C"
read -r bn _ < <(sent "$W/err")
timed tne "$W/err" embedded --progress plain "$C"
printf 'changed at %s\n' "$(date +%s%N)" >"$C/src/d42/f08442.txt"
timed t1 "$W/err" remote --progress plain "$C"
read -r b1 _ < <(sent "$W/err")
timed t1e "$W/err" embedded --progress plain "$C"
row "20,000 files / $cctx bytes, cold upload: $bc bytes sent" \
  "$(fmt "$tc") ($(mbps "$bc" "$tc") MB/s)" "-" "-"
row "same, rebuild, nothing changed: $bn bytes sent" "$(fmt "$tn")" "$(fmt "$tne")" "-"
row "same, one file changed: $b1 bytes sent" "$(fmt "$t1")" "$(fmt "$t1e")" "-"

# ---------------------------------------------------------------------------------------------

echo "== done; kilnd log: $W/kilnd.log" >&2

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
fs=$(findmnt -n -o FSTYPE --target "$W" || echo "?")
echo
echo "Machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r), work dir on $fs; load average $(cut -d' ' -f1-3 /proc/loadavg); timing: $TIMER."
echo
echo "| measurement | through kilnd | embedded | target |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
