#!/usr/bin/env bash
# Measures herald on one Redis, one PostgreSQL and one NATS with 1 and 3
# nodes against the local engine, in one run, with the same load generator
# (`herald bench`).
#
# Every run gets freshly started servers: a throwaway redis-server of its
# own (port 16390, append-only file with `appendfsync everysec`, Redis's
# usual production setting) and herald nodes on ports 18101-18103, or one
# herald on the local engine (`durability = sync`, a fresh data directory)
# on 18101. The PostgreSQL setups use the machine's server
# ($HERALD_BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres)
# with a fresh namespace (schema) per run, dropped when the run ends. The
# NATS setups start a throwaway `nats-server -js` (port 14222, JetStream's
# file store in a fresh directory, its default flushing). Each is stopped by pid when the run ends, and on exit whatever
# happens. Nothing is pinned: on this 2-core machine Redis, the nodes and
# the generator share both cores, as they would on one small host.
#
# Usage: benches/cluster.sh [--runs N] [--duration S] [--no-build] [--out DIR]
#                           [--setups "local redis1 redis3 pg1 pg3 nats1 nats3"] SCENARIO...
#   publish   1 subscriber, 64 publishers flat out, one update per request,
#             spread round-robin over the nodes
#   batch     1 subscriber, 64 publishers flat out, 50 updates per request
#   fanout    1,000 subscribers on node 1, 4 publishers flat out (on node 1)
#   latency   100 subscribers on node 1, 1,000 updates/s published on the
#             other nodes (on node 1 when it is alone): publish on one
#             node, delivery on another
#
# Results: one `herald bench --json` file per run under the results
# directory (default target/bench-results/cluster-<date>-<time>), Redis's
# CPU seconds during each run (<run>.redis-cpu), and a summary
# (summary.txt) of each setup's medians, with Redis's CPU per acknowledged
# update: what bounds one namespace (one stream, one Redis core).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=1
DURATION=5
BUILD=1
OUT=""
SCENARIOS=()
SETUPS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --setups) SETUPS="$2"; shift 2 ;;
    publish|batch|fanout|latency) SCENARIOS+=("$1"); shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || { echo "name at least one scenario: publish batch fanout latency" >&2; exit 2; }
OUT="${OUT:-target/bench-results/cluster-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT/logs"
if [ "$BUILD" = 1 ]; then
  cargo build --release -p herald-cli
fi
BIN="$PWD/target/release/herald"
KEY="bench-cluster-secret-0123456789abcdef0123456789"
M=/.well-known/mercure
REDIS_PORT=16390
NATS_PORT=14222
NATS_BIN="$(command -v nats-server || echo /usr/sbin/nats-server)"
PG_URL="${HERALD_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_NS=""
PIDS=()

stop_all() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
  PIDS=()
  if [ -n "$PG_NS" ]; then
    psql -q "$PG_URL" -c "DROP SCHEMA IF EXISTS \"$PG_NS\" CASCADE" >/dev/null 2>&1 || true
    PG_NS=""
  fi
}
trap stop_all EXIT

wait_ready() { # URL
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1/readyz" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "no answer from $1" >&2
  return 1
}

# start SETUP LOGTAG: SETUP is local, redisN (N nodes on one Redis), pgN
# (N nodes on one PostgreSQL) or natsN (N nodes on one NATS).
start() {
  local setup="$1" tag="$2" work
  work="$(mktemp -d)"
  if [ "$setup" = local ]; then
    "$BIN" serve --engine local --data-dir "$work/data" --addr 127.0.0.1:18101 \
      --publisher-jwt "$KEY" --log warn >"$OUT/logs/$tag-herald.log" 2>&1 &
    PIDS+=($!)
    wait_ready http://127.0.0.1:18101
    return
  fi
  if [ "${setup#pg}" != "$setup" ]; then
    local nodes="${setup#pg}"
    PG_NS="bench_$$_$RANDOM"
    for i in $(seq 1 "$nodes"); do
      "$BIN" serve --engine "$PG_URL" --namespace "$PG_NS" --addr "127.0.0.1:1810$i" \
        --publisher-jwt "$KEY" --log warn >"$OUT/logs/$tag-node$i.log" 2>&1 &
      PIDS+=($!)
      # The first node creates the schema before the others start.
      [ "$i" = 1 ] && wait_ready "http://127.0.0.1:18101"
    done
    for i in $(seq 1 "$nodes"); do wait_ready "http://127.0.0.1:1810$i"; done
    return
  fi
  if [ "${setup#nats}" != "$setup" ]; then
    local nodes="${setup#nats}"
    "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$work/nats" >"$OUT/logs/$tag-nats.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
      timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT && head -1 <&3" 2>/dev/null | grep -q jetstream && break
      sleep 0.05
    done
    for i in $(seq 1 "$nodes"); do
      "$BIN" serve --engine "nats://127.0.0.1:$NATS_PORT" --addr "127.0.0.1:1810$i" \
        --publisher-jwt "$KEY" --log warn >"$OUT/logs/$tag-node$i.log" 2>&1 &
      PIDS+=($!)
      # The first node creates the streams before the others start.
      [ "$i" = 1 ] && wait_ready "http://127.0.0.1:18101"
    done
    for i in $(seq 1 "$nodes"); do wait_ready "http://127.0.0.1:1810$i"; done
    return
  fi
  local nodes="${setup#redis}"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work" --save "" \
    --appendonly yes --appendfsync everysec >"$OUT/logs/$tag-redis.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  for i in $(seq 1 "$nodes"); do
    "$BIN" serve --engine "redis://127.0.0.1:$REDIS_PORT/0" --addr "127.0.0.1:1810$i" \
      --publisher-jwt "$KEY" --log warn >"$OUT/logs/$tag-node$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in $(seq 1 "$nodes"); do wait_ready "http://127.0.0.1:1810$i"; done
}

# The herald pids of the setup (the nodes, not Redis), comma-separated.
hub_pids() {
  local out=""
  for p in "${PIDS[@]}"; do
    if [ "$(cat /proc/"$p"/comm 2>/dev/null)" = herald ]; then out="$out${out:+,}$p"; fi
  done
  echo "$out"
}

redis_cpu() { # seconds of CPU the Redis server used so far
  redis-cli -p "$REDIS_PORT" info cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {print s}'
}

publish_urls() { # NODES FROM: node FROM..NODES
  local n="$1" from="$2" out=""
  for i in $(seq "$from" "$n"); do out="$out${out:+,}http://127.0.0.1:1810$i$M"; done
  echo "$out"
}

run() { # SCENARIO SETUP RUN
  local scenario="$1" setup="$2" r="$3" nodes=1 args=()
  case "$setup" in
    redis*) nodes="${setup#redis}" ;;
    pg*) nodes="${setup#pg}" ;;
    nats*) nodes="${setup#nats}" ;;
  esac
  case "$scenario" in
    publish) args=(--subscribers 1 --publishers 64 --rate 0 --publish-url "$(publish_urls "$nodes" 1)") ;;
    batch) args=(--subscribers 1 --publishers 64 --batch 50 --rate 0 --publish-url "$(publish_urls "$nodes" 1)") ;;
    fanout) args=(--subscribers 1000 --publishers 4 --rate 0) ;;
    latency)
      local from=2
      [ "$nodes" = 1 ] && from=1
      args=(--subscribers 100 --publishers 4 --rate 1000 --publish-url "$(publish_urls "$nodes" "$from")") ;;
  esac
  local tag="$scenario-$setup-$r" cpu0=""
  start "$setup" "$tag"
  case "$setup" in redis*) cpu0="$(redis_cpu)" ;; esac
  "$BIN" bench --hub "http://127.0.0.1:18101" --key "$KEY" --duration "$DURATION" \
    --pid "$(hub_pids)" --json "$OUT/$tag.json" "${args[@]}" >"$OUT/$tag.txt" 2>"$OUT/logs/$tag-bench.log"
  # Redis's own CPU over the whole bench (warm-up included), in seconds.
  case "$setup" in redis*) echo "$(redis_cpu) - $cpu0" | bc >"$OUT/$tag.redis-cpu" ;; esac
  stop_all
}

setups_of() {
  case "$1" in
    publish|batch|fanout|latency) echo "${SETUPS:-local redis1 redis3 pg1 pg3 nats1 nats3}" ;;
  esac
}

for scenario in "${SCENARIOS[@]}"; do
  for r in $(seq 1 "$RUNS"); do
    for setup in $(setups_of "$scenario"); do
      echo "== $scenario $setup run $r" >&2
      run "$scenario" "$setup" "$r"
    done
  done
done

python3 - "$OUT" "${SCENARIOS[@]}" <<'EOF' | tee "$OUT/summary.txt"
import json, statistics, sys, glob, os
out, scenarios = sys.argv[1], sys.argv[2:]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
for sc in scenarios:
    print(f"\n{sc}")
    print(f"  {'setup':8} {'acked/s':>10} {'deliveries/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'lost':>6} {'errors':>7} {'redis µs/upd':>12} runs")
    setups = sorted({os.path.basename(f).split('-')[1] for f in glob.glob(f"{out}/{sc}-*.json")},
                    key=lambda s: (s != 'local', not s.startswith('redis'), not s.startswith('pg'), s))
    for st in setups:
        docs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{sc}-{st}-*.json"))]
        acked = med([d['publish']['achieved_rate'] for d in docs if d.get('publish')])
        deliv = med([d['deliveries']['per_second'] for d in docs if d.get('deliveries')])
        p50 = med([d['latency_ms']['p50'] for d in docs])
        p99 = med([d['latency_ms']['p99'] for d in docs])
        lost = sum(d['deliveries']['losses'] for d in docs if d.get('deliveries'))
        errs = sum(d['publish']['errors'] for d in docs if d.get('publish'))
        per = []
        for fj in sorted(glob.glob(f"{out}/{sc}-{st}-*.json")):
            cpu = fj[:-5] + '.redis-cpu'
            d = json.load(open(fj))
            if os.path.exists(cpu) and d.get('publish') and d['publish']['acknowledged']:
                per.append(float(open(cpu).read()) * 1e6 / d['publish']['acknowledged'])
        redis_us = med(per)
        f = lambda x, n=0: '-' if x is None else f"{x:,.{n}f}"
        print(f"  {st:8} {f(acked):>10} {f(deliv):>13} {f(p50,2):>8} {f(p99,2):>8} {lost:>6} {errs:>7} {f(redis_us,1):>12} {len(docs)}")
EOF
