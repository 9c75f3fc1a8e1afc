#!/usr/bin/env bash
# A soak: one herald (release build, the local engine with sync durability
# and retention, so the store stays bounded; stream pacing, retry jitter
# and per-address counting on, so their state is soaked too) under steady publishing and
# connection churn for a long time, sampling the hub's memory (RSS), open
# file descriptors and runtime tasks every 10 s.
#
# The load is `herald bench`: --subscribers long-lived subscribers (a
# share of them, --slow percent, never read and are cut off when their
# queue fills), --publishers publishing --rate updates/s, and --churn new
# subscriptions a second, each closed once answered. It stops by itself
# after --minutes.
#
# Verdict: after the first --warmup minutes (5: the store reaches its
# retention of 20,000 updates after 100 s, and caches fill), each measure must stay flat:
# the median of the last tenth of the samples may exceed the median of the
# first tenth after warm-up by at most 10 % plus a small allowance (8 MiB
# of RSS, 16 descriptors, 16 tasks). The script exits non-zero otherwise.
#
# Usage: benches/soak.sh [--minutes N] [--warmup N] [--subscribers N]
#                        [--rate R] [--churn R] [--slow PERCENT]
#                        [--no-build] [--out DIR]
# Results under --out (default target/bench-results/soak-<date>-<time>):
# samples.csv (seconds, rss_kib, fds, tasks, connections), bench.txt (the
# generator's report), hub.log and summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=30
WARMUP=5
SUBSCRIBERS=2000
RATE=200
CHURN=50
SLOW=1
BUILD=1
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --subscribers) SUBSCRIBERS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --churn) CHURN="$2"; shift 2 ;;
    --slow) SLOW="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-target/bench-results/soak-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [ "$BUILD" = 1 ]; then
  cargo build --release -p herald-cli
fi
# A copy: a rebuild meanwhile does not touch the binary under test.
cp target/release/herald "$OUT/herald"
BIN="$OUT/herald"
KEY="soak-secret-0123456789abcdef0123456789abcdef"
PORT="${HERALD_SOAK_PORT:-18201}"
DATA="$OUT/data"

HUB_PID=""
BENCH_PID=""
cleanup() {
  [ -n "$BENCH_PID" ] && kill "$BENCH_PID" 2>/dev/null || true
  [ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

"$BIN" serve --addr "127.0.0.1:$PORT" --engine local --data-dir "$DATA" \
  --durability sync --retention-max-updates 20000 \
  --stream-admission-rate 500 --retry-jitter 5s --max-streams-per-ip 19000 \
  --publisher-jwt "$KEY" --log warn >"$OUT/hub.log" 2>&1 &
HUB_PID=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null

SECONDS_TOTAL=$((MINUTES * 60))
"$BIN" bench --hub "http://127.0.0.1:$PORT" --key "$KEY" \
  --subscribers "$SUBSCRIBERS" --publishers 4 --rate "$RATE" --churn "$CHURN" \
  --slow "$SLOW" --topics 50 --warmup 0 --duration "${SECONDS_TOTAL}s" \
  --pid "$HUB_PID" --quiet >"$OUT/bench.txt" 2>&1 &
BENCH_PID=$!

echo "seconds,rss_kib,fds,tasks,connections" >"$OUT/samples.csv"
start=$(date +%s)
echo "soak: $MINUTES min, $SUBSCRIBERS subscribers ($SLOW % never read), $RATE updates/s, $CHURN new connections/s; samples in $OUT/samples.csv"
while kill -0 "$BENCH_PID" 2>/dev/null; do
  now=$(($(date +%s) - start))
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$HUB_PID/status")
  fds=$(find "/proc/$HUB_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  metrics=$(curl -fsS --max-time 5 "http://127.0.0.1:$PORT/metrics" || true)
  tasks=$(awk '/^herald_runtime_tasks / {print $2}' <<<"$metrics")
  conns=$(awk '/^herald_connections / {print $2}' <<<"$metrics")
  echo "$now,$rss,$fds,${tasks:-},${conns:-}" >>"$OUT/samples.csv"
  if [ $((now % 300)) -lt 10 ]; then
    echo "soak: ${now}s rss ${rss} KiB, ${fds} fds, ${tasks:-?} tasks, ${conns:-?} streams"
  fi
  sleep 10
done
BENCH_STATUS=0
wait "$BENCH_PID" || BENCH_STATUS=$?
BENCH_PID=""

VERDICT=0
python3 - "$OUT" "$WARMUP" "$BENCH_STATUS" >"$OUT/summary.txt" <<'EOF' || VERDICT=$?
import csv, statistics, sys
out, warmup, bench_status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [r for r in csv.DictReader(open(f"{out}/samples.csv")) if r["tasks"]]
rows = [r for r in rows if int(r["seconds"]) >= warmup * 60]
if len(rows) < 10:
    print("too few samples after warm-up"); sys.exit(1)
tenth = max(1, len(rows) // 10)
ok = bench_status == 0
allow = {"rss_kib": 8192, "fds": 16, "tasks": 16}
print(f"samples after {warmup} min of warm-up: {len(rows)} (every 10 s)")
for key, unit in (("rss_kib", "KiB"), ("fds", ""), ("tasks", ""), ("connections", "")):
    vals = [int(float(r[key])) for r in rows]
    first = statistics.median(vals[:tenth])
    last = statistics.median(vals[-tenth:])
    line = f"{key}: first {first:.0f} last {last:.0f} min {min(vals)} max {max(vals)} {unit}".rstrip()
    if key in allow:
        flat = last <= first * 1.10 + allow[key]
        ok = ok and flat
        line += "  flat" if flat else "  GROWING"
    print(line)
print("verdict:", "flat" if ok else "NOT flat (or the generator failed)")
sys.exit(0 if ok else 1)
EOF
echo "generator report:"
cat "$OUT/bench.txt"
echo
cat "$OUT/summary.txt"
exit "$VERDICT"
