#!/usr/bin/env bash
# kiln's benchmark: three scenarios, kiln and (when dockerd runs here) BuildKit side by side,
# medians of N runs, one table at the end. Run as root from anywhere:
#
#   bench/run.sh                       # everything, 5 runs each
#   BENCH_RUNS=3 BENCH_SCENARIOS="a b" bench/run.sh
#   BENCH_BUILDKIT=0 bench/run.sh      # kiln only
#
# See bench/README.md for what each scenario measures and how.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

RUNS=${BENCH_RUNS:-5}
SCENARIOS=${BENCH_SCENARIOS:-"a b c"}
WANT_BUILDKIT=${BENCH_BUILDKIT:-1}
DOCKER_CLI=${KILN_DOCKER_CLI:-/usr/bin/docker}
[[ -x $DOCKER_CLI ]] || DOCKER_CLI=$(command -v docker || true)

if [[ $(id -u) != 0 ]]; then
  echo "bench/run.sh: run as root (kiln's sandbox and dockerd need it)" >&2
  exit 2
fi
if ((BASH_VERSINFO[0] < 5)); then
  echo "bench/run.sh: needs bash >= 5 (EPOCHREALTIME)" >&2
  exit 2
fi

# ---------------------------------------------------------------------------------------------
# Setup: kiln release build, work dir, cleanup.

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  echo "== cargo build --release -p kiln" >&2
  cargo build --release --locked -p kiln >&2
fi
KILN=${KILN_BIN:-$REPO/target/release/kiln}
[[ -x $KILN ]] || { echo "no kiln binary at $KILN" >&2; exit 1; }

W=$(mktemp -d /tmp/kiln-bench.XXXXXX)
if [[ ${BENCH_TMPFS:-0} == 1 ]]; then
  # Everything (contexts, kiln's stores, dockerd's data root) in memory: takes the disk and
  # the file system's inode allocator out of the numbers.
  mount -t tmpfs -o size="${BENCH_TMPFS_SIZE:-8g}" kiln-bench "$W"
fi
LOG=$W/bench.log
DOCKERD_PID=
cleanup() {
  if [[ -n $DOCKERD_PID ]]; then
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null || true
    if [[ -f $W/dd/exec/containerd/containerd.pid ]]; then
      kill -KILL "$(cat "$W/dd/exec/containerd/containerd.pid")" 2>/dev/null || true
    fi
    umount -R -l "$W/dd/data" 2>/dev/null || true
  fi
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then
    echo "kept $W" >&2
  else
    if [[ ${BENCH_TMPFS:-0} == 1 ]]; then umount "$W" && rmdir "$W"; else rm -rf "$W"; fi
  fi
}
trap cleanup EXIT
echo "== work dir $W (log: $LOG)" >&2

# ---------------------------------------------------------------------------------------------
# Timing helpers. Times are integer microseconds from bash's EPOCHREALTIME (no fork in the
# timed region other than the command itself).

usecs() { local t=${EPOCHREALTIME/./}; echo $((10#$t)); }

# timed VAR CMD...: runs CMD (output to the log), stores its wall time in µs in VAR.
timed() {
  local __var=$1; shift
  echo "+ $*" >>"$LOG"
  local t0 t1
  t0=${EPOCHREALTIME/./}
  if ! "$@" >>"$LOG" 2>&1; then
    echo "FAILED: $*  (tail of $LOG:)" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  t1=${EPOCHREALTIME/./}
  printf -v "$__var" '%d' $((10#$t1 - 10#$t0))
}

# median of integers (µs) given as arguments.
median() {
  local -a s
  mapfile -t s < <(printf '%s\n' "$@" | sort -n)
  local n=${#s[@]}
  if ((n % 2)); then echo "${s[n / 2]}"; else echo $(((s[n / 2 - 1] + s[n / 2]) / 2)); fi
}

# µs → human string
fmt() {
  local us=$1
  if [[ $us == - || -z $us ]]; then echo "-"; return; fi
  if ((us < 0)); then echo "-$(fmt $((-us)))"; return; fi
  if ((us >= 1000000)); then printf '%d.%03d s' $((us / 1000000)) $((us % 1000000 / 1000))
  else printf '%d.%01d ms' $((us / 1000)) $((us % 1000 / 100)); fi
}

# Results: one row per measurement.
declare -a ROW_NAME ROW_KILN ROW_BK ROW_TARGET ROW_KIND ROW_RAW
add_row() { # name kiln_us bk_us kind target   (kind: abs = kiln < target µs, rel = kiln <= bk/4, info)
  ROW_NAME+=("$1"); ROW_KILN+=("$2"); ROW_BK+=("$3"); ROW_KIND+=("$4"); ROW_TARGET+=("$5")
}

# ---------------------------------------------------------------------------------------------
# The base image: busybox FROM scratch, built with kiln into a template store; its root file
# system is exported too, for `docker import`.

echo "== base image kiln-busybox (built once, outside every timed region)" >&2
mkdir -p "$W/base"
cp /bin/busybox "$W/base/busybox"
cp examples/busybox-base/Dockerfile examples/busybox-base/passwd examples/busybox-base/group "$W/base/"
TEMPLATE=$W/template-store
"$KILN" --root "$TEMPLATE" build --progress plain -t kiln-busybox:latest \
  -o type=local,dest="$W/base-rootfs" "$W/base" >>"$LOG" 2>&1 \
  || { tail -n 30 "$LOG" >&2; exit 1; }
tar -C "$W/base-rootfs" --numeric-owner -cf "$W/base-rootfs.tar" .

fresh_store() { # fresh_store DIR: a store holding only the base image
  rm -rf "$1"
  cp -a "$TEMPLATE" "$1"
}

kbuild() { # kbuild ROOT TAG CONTEXT [extra args...]
  local root=$1 tag=$2 ctx=$3; shift 3
  "$KILN" --root "$root" build --progress plain -t "$tag" "$@" "$ctx"
}

# ---------------------------------------------------------------------------------------------
# BuildKit: dockerd's embedded BuildKit on a private socket, data root and exec root.

BK_REASON=
bk_start() {
  if [[ $WANT_BUILDKIT != 1 ]]; then BK_REASON="disabled (BENCH_BUILDKIT=0)"; return 1; fi
  local dockerd
  dockerd=$(command -v dockerd || true)
  [[ -n $dockerd ]] || { BK_REASON="dockerd not installed (apt-get install docker.io)"; return 1; }
  [[ -n $DOCKER_CLI && -x $DOCKER_CLI ]] || { BK_REASON="docker CLI not installed"; return 1; }
  mkdir -p "$W/dd/cli"
  echo '{}' >"$W/dd/daemon.json"
  # No bridge, no iptables; registry access goes to a closed loopback port.
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
    http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 NO_PROXY= no_proxy= \
    "$dockerd" --host="unix://$W/dd/docker.sock" --data-root="$W/dd/data" \
    --exec-root="$W/dd/exec" --pidfile="$W/dd/dockerd.pid" --config-file="$W/dd/daemon.json" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
    --userland-proxy=false --log-level=warn </dev/null >"$W/dd/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  local i
  for i in $(seq 300); do
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
      DOCKERD_PID=
      BK_REASON="dockerd exited: $(tail -n 1 "$W/dd/dockerd.log")"
      return 1
    fi
    if [[ -S $W/dd/docker.sock ]] && dk version >/dev/null 2>&1; then break; fi
    sleep 0.2
  done
  if ! dk version >/dev/null 2>&1; then
    BK_REASON="dockerd not ready after 60 s: $(tail -n 1 "$W/dd/dockerd.log")"
    return 1
  fi
  if ! dk import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/sh"]' "$W/base-rootfs.tar" kiln-busybox:latest >>"$LOG" 2>&1; then
    BK_REASON="docker import of the base failed"
    return 1
  fi
  # A smoke build: BuildKit must actually work here (overlay, runc, ...).
  mkdir -p "$W/smoke"
  printf 'FROM kiln-busybox\nRUN echo ok > /ok\n' >"$W/smoke/Dockerfile"
  if ! dkbuild smoke "$W/smoke" >>"$LOG" 2>&1; then
    BK_REASON="a smoke build fails: $(grep -m1 -i error "$LOG" | cut -c1-120)"
    return 1
  fi
  return 0
}

dk() {
  env -u DOCKER_HOST -u DOCKER_CONTEXT DOCKER_BUILDKIT=1 DOCKER_CONFIG="$W/dd/cli" \
    BUILDKIT_PROGRESS=plain "$DOCKER_CLI" -H "unix://$W/dd/docker.sock" "$@"
}
dkbuild() { # dkbuild TAG CONTEXT [extra args...]
  local tag=$1 ctx=$2; shift 2
  dk build --network=none --progress plain -t "$tag" "$@" "$ctx" </dev/null
}
bk_cold_reset() { # forget every cache and the result image; keep the base image
  dk rmi -f "$1" >/dev/null 2>&1 || true
  dk builder prune -af >/dev/null 2>&1
}

HAVE_BK=0
echo "== BuildKit (dockerd's embedded BuildKit, DOCKER_BUILDKIT=1)" >&2
if bk_start; then
  HAVE_BK=1
  echo "   dockerd $(dk version --format '{{.Server.Version}}' 2>/dev/null) on $W/dd/docker.sock" >&2
else
  echo "   BuildKit: not available ($BK_REASON)" >&2
fi

# ---------------------------------------------------------------------------------------------
# Scenario (a): 4 independent stages each sleeping 1 s, a final stage copying from all four.

scenario_a() {
  local d=$W/a
  mkdir -p "$d"
  {
    for i in 1 2 3 4; do
      # Distinct commands: identical ones would be deduplicated into one step.
      printf 'FROM kiln-busybox AS s%d\nRUN sleep 1 && echo %d > /out\n\n' "$i" "$i"
    done
    echo 'FROM kiln-busybox'
    for i in 1 2 3 4; do printf 'COPY --from=s%d /out /o%d\n' "$i" "$i"; done
  } >"$d/Dockerfile"

  local -a kc kw kcp bc bw
  local i t
  echo "== (a) kiln: $RUNS cold (fresh store) + $RUNS cached" >&2
  for i in $(seq "$RUNS"); do
    fresh_store "$W/root-a"
    timed t kbuild "$W/root-a" bench-a "$d"; kc+=("$t")
  done
  for i in $(seq "$RUNS"); do timed t kbuild "$W/root-a" bench-a "$d"; kw+=("$t"); done
  echo "== (a) kiln --max-parallelism 4: $RUNS cold" >&2
  for i in $(seq "$RUNS"); do
    fresh_store "$W/root-a"
    timed t kbuild "$W/root-a" bench-a "$d" --max-parallelism 4; kcp+=("$t")
  done
  if ((HAVE_BK)); then
    echo "== (a) BuildKit: $RUNS cold (cache pruned) + $RUNS cached" >&2
    for i in $(seq "$RUNS"); do
      bk_cold_reset bench-a
      timed t dkbuild bench-a "$d"; bc+=("$t")
    done
    for i in $(seq "$RUNS"); do timed t dkbuild bench-a "$d"; bw+=("$t"); done
  fi
  echo "   raw µs: kiln cold ${kc[*]} | cached ${kw[*]} | -j4 cold ${kcp[*]} | bk cold ${bc[*]:-} | bk cached ${bw[*]:-}" >>"$LOG"
  add_row "(a) 4x sleep 1 fan-in, cold" "$(median "${kc[@]}")" "$( ((HAVE_BK)) && median "${bc[@]}" || echo -)" abs 1250000
  add_row "(a) same, --max-parallelism 4, cold" "$(median "${kcp[@]}")" "-" abs 1250000
  add_row "(a) fully cached rebuild" "$(median "${kw[@]}")" "$( ((HAVE_BK)) && median "${bw[@]}" || echo -)" abs 40000
}

# ---------------------------------------------------------------------------------------------
# Scenario (b): 30 sequential small RUN steps; per-step overhead from a 1-step build.

scenario_b() {
  local d30=$W/b30 d1=$W/b1
  mkdir -p "$d30" "$d1"
  {
    echo 'FROM kiln-busybox'
    for i in $(seq 30); do printf 'RUN echo step %d > /s%d\n' "$i" "$i"; done
  } >"$d30/Dockerfile"
  printf 'FROM kiln-busybox\nRUN echo step 1 > /s1\n' >"$d1/Dockerfile"

  local -a k30 k1 kw b30 b1 bw
  local i t
  echo "== (b) kiln: $RUNS × (cold 1-step, cold 30-step) + $RUNS cached 30-step" >&2
  for i in $(seq "$RUNS"); do
    fresh_store "$W/root-b"
    timed t kbuild "$W/root-b" bench-b1 "$d1"; k1+=("$t")
    fresh_store "$W/root-b"
    timed t kbuild "$W/root-b" bench-b30 "$d30"; k30+=("$t")
  done
  for i in $(seq "$RUNS"); do timed t kbuild "$W/root-b" bench-b30 "$d30"; kw+=("$t"); done
  if ((HAVE_BK)); then
    echo "== (b) BuildKit: same" >&2
    for i in $(seq "$RUNS"); do
      bk_cold_reset bench-b1
      timed t dkbuild bench-b1 "$d1"; b1+=("$t")
      bk_cold_reset bench-b30
      timed t dkbuild bench-b30 "$d30"; b30+=("$t")
    done
    for i in $(seq "$RUNS"); do timed t dkbuild bench-b30 "$d30"; bw+=("$t"); done
  fi
  echo "   raw µs: kiln 1-step ${k1[*]} | 30-step ${k30[*]} | cached ${kw[*]} | bk 1-step ${b1[*]:-} | 30-step ${b30[*]:-} | cached ${bw[*]:-}" >>"$LOG"
  local km1 km30 kov bm1=- bm30=- bov=- bmw=-
  km1=$(median "${k1[@]}"); km30=$(median "${k30[@]}"); kov=$(((km30 - km1) / 29))
  if ((HAVE_BK)); then
    bm1=$(median "${b1[@]}"); bm30=$(median "${b30[@]}"); bov=$(((bm30 - bm1) / 29))
    bmw=$(median "${bw[@]}")
  fi
  add_row "(b) 1-step build, cold" "$km1" "$bm1" info -
  add_row "(b) 30-step build, cold" "$km30" "$bm30" info -
  add_row "(b) per-step overhead (30-1)/29" "$kov" "$bov" abs 15000
  add_row "(b) 30-step cached rebuild" "$(median "${kw[@]}")" "$bmw" info -
}

# ---------------------------------------------------------------------------------------------
# Scenario (c): a 20,000-file / 100 MB context, `COPY . /ctx`: cold, no-op, one file changed.

gen_context() { # gen_context DIR: 100 dirs × 200 files × 5,000 bytes, deterministic
  python3 - "$1" <<'EOF'
import base64, os, random, sys
root = sys.argv[1]
rng = random.Random(20000)
# Printable pseudo-random text (base64 alphabet, lines of 76): compresses to ~75 %, like
# a mix of source and data rather than all-text or all-random.
for d in range(100):
    dd = os.path.join(root, "src", f"d{d:02}")
    os.makedirs(dd, exist_ok=True)
    blob = base64.encodebytes(rng.randbytes(200 * 3800))
    for f in range(200):
        chunk = blob[f * 5000:(f + 1) * 5000]
        assert len(chunk) == 5000
        with open(os.path.join(dd, f"f{d * 200 + f:05}.txt"), "wb") as fh:
            fh.write(chunk)
EOF
}

scenario_c() {
  local d=$W/c
  mkdir -p "$d"
  echo "== (c) generating 20,000 files / 100 MB" >&2
  gen_context "$d"
  printf 'FROM kiln-busybox\nCOPY . /ctx\n' >"$d/Dockerfile"
  local n bytes
  n=$(find "$d/src" -type f | wc -l)
  bytes=$(find "$d/src" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
  echo "   $n files, $bytes bytes" >&2
  local victim=$d/src/d42/f08442.txt

  local -a kc kn k1 bc bn b1
  local i t
  echo "== (c) kiln: $RUNS × (cold, no-op, one file changed)" >&2
  for i in $(seq "$RUNS"); do
    fresh_store "$W/root-c"
    timed t kbuild "$W/root-c" bench-c "$d"; kc+=("$t")
    timed t kbuild "$W/root-c" bench-c "$d"; kn+=("$t")
    printf 'kiln run %d\n' "$i" >"$victim"
    timed t kbuild "$W/root-c" bench-c "$d"; k1+=("$t")
  done
  if ((HAVE_BK)); then
    echo "== (c) BuildKit: same" >&2
    for i in $(seq "$RUNS"); do
      bk_cold_reset bench-c
      timed t dkbuild bench-c "$d"; bc+=("$t")
      timed t dkbuild bench-c "$d"; bn+=("$t")
      printf 'buildkit run %d\n' "$i" >"$victim"
      timed t dkbuild bench-c "$d"; b1+=("$t")
    done
  fi
  echo "   raw µs: kiln cold ${kc[*]} | no-op ${kn[*]} | one ${k1[*]} | bk cold ${bc[*]:-} | no-op ${bn[*]:-} | one ${b1[*]:-}" >>"$LOG"
  local bmc=- bmn=- bm1=-
  if ((HAVE_BK)); then bmc=$(median "${bc[@]}"); bmn=$(median "${bn[@]}"); bm1=$(median "${b1[@]}"); fi
  add_row "(c) 20k files/100 MB COPY, cold" "$(median "${kc[@]}")" "$bmc" rel -
  add_row "(c) no-op rebuild" "$(median "${kn[@]}")" "$bmn" rel -
  add_row "(c) one file changed" "$(median "${k1[@]}")" "$bm1" rel -
}

# (d) informational: the measurement that used to be an #[ignore]d engine test: a no-op
# rebuild over 20,000 tiny files (the context digest dominates).
scenario_d() {
  local d=$W/d
  mkdir -p "$d"
  local i
  for i in $(seq 0 99); do mkdir -p "$d/d$i"; done
  for i in $(seq 0 19999); do echo "some content" >"$d/d$((i % 100))/f$i"; done
  printf 'FROM kiln-busybox\nCOPY . /ctx\n' >"$d/Dockerfile"
  local -a kn bn
  local t
  fresh_store "$W/root-d"
  kbuild "$W/root-d" bench-d "$d" >>"$LOG" 2>&1
  echo "== (d) kiln: $RUNS no-op rebuilds over 20,000 tiny files" >&2
  for i in $(seq "$RUNS"); do timed t kbuild "$W/root-d" bench-d "$d"; kn+=("$t"); done
  if ((HAVE_BK)); then
    dkbuild bench-d "$d" >>"$LOG" 2>&1
    for i in $(seq "$RUNS"); do timed t dkbuild bench-d "$d"; bn+=("$t"); done
  fi
  add_row "(d) 20k tiny files, no-op rebuild" "$(median "${kn[@]}")" "$( ((HAVE_BK)) && median "${bn[@]}" || echo -)" info -
}

for s in $SCENARIOS; do
  case $s in
    a) scenario_a ;; b) scenario_b ;; c) scenario_c ;; d) scenario_d ;;
    *) echo "unknown scenario $s (a b c d)" >&2; exit 2 ;;
  esac
done

# ---------------------------------------------------------------------------------------------
# The table.

bkcol() { if ((HAVE_BK)); then fmt "$1"; else echo "not available"; fi; }
echo
echo "kiln $("$KILN" --version | awk '{print $2}') ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo ?)), $(nproc) CPUs, medians of $RUNS, wall time of the whole build command, work dir on $(df --output=fstype "$W" | tail -n 1)"
((HAVE_BK)) || echo "BuildKit: not available ($BK_REASON)"
printf '| %-38s | %11s | %15s | %7s | %-16s | %-4s |\n' scenario "kiln median" "BuildKit median" ratio target pass
printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "$(printf -- '-%.0s' {1..13})" \
  "$(printf -- '-%.0s' {1..17})" "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..18})" "$(printf -- '-%.0s' {1..6})"
FAILS=0
for i in "${!ROW_NAME[@]}"; do
  k=${ROW_KILN[i]} b=${ROW_BK[i]} kind=${ROW_KIND[i]} tgt=${ROW_TARGET[i]}
  ratio=- target=- pass=-
  if [[ $b != - && $b -gt 0 ]]; then ratio=$(awk -v k="$k" -v b="$b" 'BEGIN {printf "%.2f", k / b}'); fi
  case $kind in
    abs)
      target="< $(fmt "$tgt")"
      if ((k < tgt)); then pass=pass; else pass=FAIL; FAILS=$((FAILS + 1)); fi ;;
    rel)
      target="<= 1/4 BuildKit"
      if [[ $b == - ]]; then pass="n/a"
      elif ((k * 4 <= b)); then pass=pass; else pass=FAIL; FAILS=$((FAILS + 1)); fi ;;
  esac
  bcell=$b
  [[ $b == - ]] && { ((HAVE_BK)) && bcell=- || bcell="n/a"; }
  [[ $bcell != - && $bcell != n/a ]] && bcell=$(fmt "$b")
  printf '| %-38s | %11s | %15s | %7s | %-16s | %-4s |\n' "${ROW_NAME[i]}" "$(fmt "$k")" "$bcell" "$ratio" "$target" "$pass"
done
echo
echo "raw timings and build logs: $LOG$([[ ${BENCH_KEEP:-0} == 1 ]] || echo ' (removed; BENCH_KEEP=1 keeps it)')"
grep '^   raw' "$LOG" || true
