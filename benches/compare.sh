#!/usr/bin/env bash
# Measures herald against its peers in one run, with the same load generator
# (`herald bench`): herald (memory engine), the naive axum baseline
# (benches/naive-axum), nginx + Nchan and Pushpin (Debian packages nginx,
# libnginx-mod-nchan, pushpin; configs in benches/peers/).
#
# Each server runs pinned to core 0, the generator to core 1. Every run gets
# a freshly started server, and every server this script starts is stopped
# (by pid) when the run ends, and on exit whatever happens.
#
# Usage: benches/compare.sh [options] SCENARIO...
#   scenarios:
#     smoke       100 subscribers, 1 topic, 100 updates/s (plumbing check)
#     idle        N idle subscribers (default 10,000; --subscribers 19000):
#                 the hub's RSS per connection
#     fanout      1,000 subscribers on one topic, 4 publishers flat out
#     latency5    10,000 subscribers on one topic, 5 updates/s
#     latency100  10,000 subscribers on one topic, 100 updates/s
#                 (both with 4 publishers: one request in flight each, so
#                 a server that answers a publication only once it has
#                 fanned it out is not held back by a lone
#                 publisher waiting for each answer)
#     publish     1 subscriber, 64 keep-alive publishers flat out, one
#                 update per request
#     topics10    10 topics with one subscriber each, 10,000 updates/s
#                 over them (16 publishers); the hub's CPU per update
#     topics      the same over 18,900 topics, one subscriber each (the
#                 most connections one process may hold here); compare
#                 its CPU per update with topics10's
#     churn       latency5 while 10,000 new subscriptions per second
#                 open and close (anonymous, as every server takes them)
#     slow100     latency100 with 10 % of the subscribers never reading
#   options:
#     --runs N          runs of each scenario and server (default 1)
#     --duration S      measured seconds per run (default 10)
#     --baseline PATH   another herald binary, run as the server `baseline`
#                       (port 18081): an earlier build measured in the same
#                       run as this one, e.g. before and after a change
#     --servers LIST    comma-separated, of herald,baseline,naive,nchan,pushpin,floor
#                       (default the first four; floor is the write floor
#                       in benches/naive-axum/src/bin/write-floor.rs: one
#                       write per subscriber per update and nothing else,
#                       the kernel's share of any server's cost)
#     --subscribers N   override the scenario's subscriber count
#     --streams-per-connection N
#                       over http2, N streams share each connection
#                       (`herald bench`'s default: 100); e.g. 1 for the
#                       browser with one EventSource
#     --transports LIST comma-separated, of http1,http2,websocket (default
#                       http1): how the subscribers connect (`herald bench`
#                       without a flag, --http2 or --websocket); each
#                       scenario runs once per transport. http2 and
#                       websocket run on herald and baseline only (the
#                       peers are measured over http1); their results are
#                       named <scenario>-<server>+<transport>-<run> and
#                       appear in the summary as server+transport
#     --nice N          run servers and generator at this niceness, e.g. -10
#                       on a machine shared with builds (root only below
#                       0); default: unchanged
#     --no-build        use the release binaries already built
#     --out DIR         results directory (default
#                       target/bench-results/<date>-<time>)
#
# Results: one `herald bench --json` file per run (<scenario>-<server>-<run>.json)
# and its text report (.txt) in the results directory, the servers' logs
# under logs/, runs.jsonl (which pids were measured), then a summary table
# (summary.txt) with each peer's figures as ratios to herald's.
#
# What --pid measures: herald and naive, their one process; nginx, its one
# worker (the master only supervises); Pushpin, the sum of condure, zurl,
# pushpin-proxy and pushpin-handler (not the `pushpin` runner, which only
# supervises, nor the GRIP origin, which only answers subscriptions and runs
# on the generator's core).
#
# Needs free loopback ports 18080 (herald), 18081 (baseline), 8090 (naive), 8096 (floor), 8092 (nginx),
# 8093-8095 (Pushpin, its control API, the origin), taskset, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=$ROOT/benches/peers
KEY=benchsecretbenchsecret
HUB_CORE=0
GEN_CORE=1

runs=1
duration=10
baseline=
servers=herald,naive,nchan,pushpin
subscribers=
per_connection=
transports=http1
build=1
out=
nice=
scenarios=()
while (($#)); do
    case $1 in
    --runs) runs=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    --subscribers) subscribers=$2; shift 2 ;;
    --streams-per-connection) per_connection=$2; shift 2 ;;
    --transports) transports=$2; shift 2 ;;
    --nice) nice=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    smoke | idle | fanout | latency5 | latency100 | publish | topics10 | topics | churn | slow100)
        scenarios+=("$1")
        shift
        ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ((${#scenarios[@]} == 0)); then
    echo "compare.sh: name at least one scenario: smoke idle fanout latency5 latency100 publish topics10 topics churn slow100" >&2
    exit 2
fi
IFS=, read -r -a server_list <<<"$servers"
for s in "${server_list[@]}"; do
    case $s in herald | baseline | naive | nchan | pushpin | floor) ;; *) echo "compare.sh: unknown server $s" >&2; exit 2 ;; esac
    if [[ $s == baseline && ! -x $baseline ]]; then
        echo "compare.sh: the server baseline needs --baseline PATH (an executable herald)" >&2
        exit 2
    fi
done
IFS=, read -r -a transport_list <<<"$transports"
for t in "${transport_list[@]}"; do
    case $t in http1 | http2 | websocket) ;; *) echo "compare.sh: unknown transport $t" >&2; exit 2 ;; esac
done
for tool in taskset python3; do
    command -v "$tool" >/dev/null || { echo "compare.sh: $tool is missing" >&2; exit 1; }
done
if [[ " ${server_list[*]} " == *" nchan "* ]] && ! [[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]]; then
    echo "compare.sh: nginx + Nchan missing: apt-get install nginx libnginx-mod-nchan" >&2
    exit 1
fi
if [[ " ${server_list[*]} " == *" pushpin "* ]] && ! command -v pushpin >/dev/null; then
    echo "compare.sh: Pushpin missing: apt-get install pushpin" >&2
    exit 1
fi

cd "$ROOT"
if ((build)); then
    cargo build --release -p herald-cli -p naive-axum
fi
HERALD=$ROOT/target/release/herald
NAIVE=$ROOT/target/release/naive-axum
FLOOR=$ROOT/target/release/write-floor
out=${out:-$ROOT/target/bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
scratch=$(mktemp -d /tmp/herald-compare.XXXXXX)

# Pids this script started and must stop, and the children its
# supervisors (nginx master, pushpin runner) started, checked after them.
started=()
adopted=()
# What `herald bench --pid` gets for the current server.
measure=
# What the bench is pointed at for the current server.
bench_args=()

log() { echo "compare.sh: $*" >&2; }

# Command prefixes pinning to the hub's and the generator's core (at
# --nice's niceness, if given). Each execs the next: $! is the server's pid.
hub_core=(taskset -c $HUB_CORE)
gen_core=(taskset -c $GEN_CORE)
if [[ -n $nice ]]; then
    hub_core=(nice -n "$nice" "${hub_core[@]}")
    gen_core=(nice -n "$nice" "${gen_core[@]}")
fi

stop_servers() {
    local pid i
    # Newest first: a supervisor stops its children itself.
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        pid=${started[i]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${started[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM for 5 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    # A supervisor stops its children; if one outlived it, stop it too.
    for pid in "${adopted[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid outlived its supervisor: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    started=()
    adopted=()
}

cleanup() {
    stop_servers
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until something accepts connections on 127.0.0.1:$1.
wait_port() {
    local port=$1
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "nothing listens on 127.0.0.1:$port after 10 s"
    return 1
}

server_ports() {
    case $1 in
    herald) echo 18080 ;;
    baseline) echo 18081 ;;
    naive) echo 8090 ;;
    nchan) echo 8092 ;;
    floor) echo 8096 ;;
    pushpin) echo 8093 8094 8095 ;;
    esac
}

# Children of $1 (pids), one per line, once there are at least $2.
children() {
    local list
    for _ in $(seq 100); do
        list=$(ps -o pid= --ppid "$1" | tr -d ' ')
        if (($(grep -c . <<<"$list") >= $2)); then
            echo "$list"
            return 0
        fi
        sleep 0.1
    done
    log "pid $1 has not started $2 processes after 10 s"
    return 1
}

start_server() {
    local name=$1 dir=$scratch/$1 port
    # A server already there would be measured in place of ours.
    for port in $(server_ports "$name"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            log "$name: something already listens on 127.0.0.1:$port"
            return 1
        fi
    done
    rm -rf "$dir"
    mkdir -p "$dir"
    case $name in
    herald)
        "${hub_core[@]}" "$HERALD" serve --engine memory --addr 127.0.0.1:18080 \
            --publisher-jwt "$KEY" --log warn >"$dir/out.log" 2>&1 &
        started+=($!)
        measure=$!
        wait_port 18080
        bench_args=(--hub http://127.0.0.1:18080/.well-known/mercure --key "$KEY")
        ;;
    baseline)
        "${hub_core[@]}" "$baseline" serve --engine memory --addr 127.0.0.1:18081 \
            --publisher-jwt "$KEY" --log warn >"$dir/out.log" 2>&1 &
        started+=($!)
        measure=$!
        wait_port 18081
        bench_args=(--hub http://127.0.0.1:18081/.well-known/mercure --key "$KEY")
        ;;
    naive)
        "${hub_core[@]}" "$NAIVE" --addr 127.0.0.1:8090 >"$dir/out.log" 2>&1 &
        started+=($!)
        measure=$!
        wait_port 8090
        # It ignores the token; sending one keeps the requests herald's.
        bench_args=(--hub http://127.0.0.1:8090/.well-known/mercure --key "$KEY")
        ;;
    floor)
        "${hub_core[@]}" "$FLOOR" --addr 127.0.0.1:8096 >"$dir/out.log" 2>&1 &
        started+=($!)
        measure=$!
        wait_port 8096
        bench_args=(--hub http://127.0.0.1:8096/.well-known/mercure --key "$KEY")
        ;;
    nchan)
        mkdir -p "$dir/tmp"
        "${hub_core[@]}" nginx -p "$dir/" -e "$dir/error.log" -c "$PEERS/nginx.conf" \
            >"$dir/out.log" 2>&1 &
        local master=$!
        started+=("$master")
        wait_port 8092
        measure=$(children "$master" 1 | head -n 1)
        adopted+=("$measure")
        bench_args=(--flavor nchan --hub http://127.0.0.1:8092/.well-known/mercure
            --publish-url http://127.0.0.1:8092/pub)
        ;;
    pushpin)
        mkdir -p "$dir/run" "$dir/log"
        sed "s|@RUNDIR@|$dir|g" "$PEERS/pushpin.conf" >"$dir/pushpin.conf"
        # The origin only answers subscriptions: on the generator's core.
        "${gen_core[@]}" python3 "$PEERS/grip-origin.py" 8095 >"$dir/origin.log" 2>&1 &
        started+=($!)
        wait_port 8095
        "${hub_core[@]}" pushpin --config "$dir/pushpin.conf" \
            --route "* 127.0.0.1:8095" >"$dir/out.log" 2>&1 &
        local runner=$!
        started+=("$runner")
        wait_port 8093
        wait_port 8094
        measure=$(children "$runner" 4 | paste -sd, -)
        adopted+=(${measure//,/ })
        bench_args=(--flavor pushpin --hub http://127.0.0.1:8093/.well-known/mercure
            --publish-url http://127.0.0.1:8094/publish/)
        ;;
    esac
    if [[ -z $measure ]]; then
        log "$name: no process to measure"
        return 1
    fi
    local p names=()
    for p in ${measure//,/ }; do names+=("$(ps -o comm= -p "$p")($p)"); done
    log "$name up; measuring ${names[*]}"
    # Let it settle before the RSS baseline is read.
    sleep 1
}

scenario_args() {
    case $1 in
    smoke) echo "--subscribers ${subscribers:-100} --rate 100" ;;
    idle) echo "--idle --subscribers ${subscribers:-10000}" ;;
    fanout) echo "--subscribers ${subscribers:-1000} --publishers 4 --rate 0" ;;
    latency5) echo "--subscribers ${subscribers:-10000} --publishers 4 --rate 5" ;;
    latency100) echo "--subscribers ${subscribers:-10000} --publishers 4 --rate 100" ;;
    publish) echo "--subscribers ${subscribers:-1} --publishers 64 --rate 0" ;;
    topics10) echo "--subscribers 10 --topics 10 --publishers 16 --rate 10000" ;;
    topics) echo "--subscribers ${subscribers:-18900} --topics ${subscribers:-18900} --publishers 16 --rate 10000" ;;
    churn) echo "--subscribers ${subscribers:-10000} --publishers 4 --rate 5 --churn 10000" ;;
    slow100) echo "--subscribers ${subscribers:-10000} --publishers 4 --rate 100 --slow 10" ;;
    esac
}

# The `herald bench` flag of a transport.
transport_args() {
    case $1 in
    http1) ;;
    http2) echo "--http2${per_connection:+ --streams-per-connection $per_connection}" ;;
    websocket) echo "--websocket" ;;
    esac
}

meta=$out/runs.jsonl
for scenario in "${scenarios[@]}"; do
    for ((run = 1; run <= runs; run++)); do
        for transport in "${transport_list[@]}"; do
            for server in "${server_list[@]}"; do
                label=$server
                if [[ $transport != http1 ]]; then
                    case $server in herald | baseline) ;; *) continue ;; esac
                    label=$server+$transport
                fi
                base=$out/$scenario-$label-$run
                log "=== $scenario, $label, run $run/$runs"
                start_server "$server"
                # shellcheck disable=SC2046 # the scenario's flags are words
                if "${gen_core[@]}" "$HERALD" bench "${bench_args[@]}" $(transport_args "$transport") \
                    $(scenario_args "$scenario") --duration "$duration" --payload-size 100 \
                    --pid "$measure" --quiet --json "$base.json" >"$base.txt" 2>&1; then
                    status=ok
                else
                    status=failed
                    log "$scenario/$label run $run failed:"
                fi
                cat "$base.txt"
                printf '{"scenario":"%s","server":"%s","transport":"%s","run":%d,"status":"%s","pids":"%s","nice":"%s","json":"%s"}\n' \
                    "$scenario" "$label" "$transport" "$run" "$status" "$measure" "$nice" "$(basename "$base.json")" >>"$meta"
                stop_servers
                # Keep the server's logs (nginx's error.log, Pushpin's logs...).
                mkdir -p "$out/logs/$scenario-$label-$run"
                find "$scratch/$server" -name '*.log' -exec cp {} "$out/logs/$scenario-$label-$run/" \;
                sleep 1
            done
        done
    done
done

# Summary: medians over the runs, each peer as a ratio to herald.
python3 - "$out" <<'EOF' | tee "$out/summary.txt"
import json, os, statistics, sys

out = sys.argv[1]
runs = [json.loads(l) for l in open(os.path.join(out, "runs.jsonl"))]

def load(r):
    p = os.path.join(out, r["json"])
    return json.load(open(p)) if r["status"] == "ok" and os.path.exists(p) else None

def get(d, *path):
    if path == ("cpu_us_per_update",):
        cpu = get(d, "hub_process", "cpu_percent")
        rate = get(d, "publish", "achieved_rate")
        return cpu / 100 / rate * 1e6 if cpu is not None and rate else None
    for k in path:
        if d is None:
            return None
        d = d.get(k)
    return d

MEASURES = {
    "idle": [("RSS/conn B", ("hub_process", "rss_per_connection_bytes"), "low"),
             ("connected", ("connections", "ok"), None),
             ("hub CPU %", ("hub_process", "cpu_percent"), "low")],
    "smoke": [("deliv/s", ("deliveries", "per_second"), "high"),
              ("p50 ms", ("latency_ms", "p50"), "low"),
              ("p99 ms", ("latency_ms", "p99"), "low"),
              ("losses", ("deliveries", "losses"), None)],
}
MEASURES["fanout"] = [("deliv/s", ("deliveries", "per_second"), "high"),
                      ("pub/s", ("publish", "achieved_rate"), None),
                      ("hub CPU %", ("hub_process", "cpu_percent"), None),
                      ("losses", ("deliveries", "losses"), None)]
MEASURES["latency5"] = MEASURES["latency100"] = [
    ("p50 ms", ("latency_ms", "p50"), "low"),
    ("p99 ms", ("latency_ms", "p99"), "low"),
    ("deliv/s", ("deliveries", "per_second"), None),
    ("hub CPU %", ("hub_process", "cpu_percent"), None),
    ("losses", ("deliveries", "losses"), None)]
MEASURES["slow100"] = MEASURES["latency100"] + [
    ("RSS end KiB", ("hub_process", "rss_end_kib"), "low")]
MEASURES["publish"] = [("pub/s", ("publish", "achieved_rate"), "high"),
                       ("ack p99 ms", ("publish", "ack_ms", "p99"), "low"),
                       ("hub CPU %", ("hub_process", "cpu_percent"), None),
                       ("losses", ("deliveries", "losses"), None)]
MEASURES["topics10"] = MEASURES["topics"] = [
    ("CPU us/upd", ("cpu_us_per_update",), "low"),
    ("pub/s", ("publish", "achieved_rate"), None),
    ("connected", ("connections", "ok"), None),
    ("losses", ("deliveries", "losses"), None)]
MEASURES["churn"] = [("conn/s", ("churn", "per_second"), "high"),
                     ("churn fail", ("churn", "failed"), None),
                     ("p50 ms", ("latency_ms", "p50"), "low"),
                     ("p99 ms", ("latency_ms", "p99"), "low"),
                     ("losses", ("deliveries", "losses"), None)]

by = {}
for r in runs:
    by.setdefault((r["scenario"], r["server"]), []).append(load(r))
for scenario in dict.fromkeys(r["scenario"] for r in runs):
    servers = list(dict.fromkeys(r["server"] for r in runs if r["scenario"] == scenario))
    print(f"\n{scenario} (median of runs; ratio = peer / herald)")
    cols = MEASURES[scenario]
    width = max([9] + [len(s) + 1 for s in servers])
    print(f"{'server':<{width}}" + "".join(f"{c[0]:>14}" for c in cols) + "   ratios to herald")
    med = {}
    for s in servers:
        vals = []
        for _, path, _ in cols:
            xs = [get(j, *path) for j in by[(scenario, s)] if j is not None]
            xs = [x for x in xs if x is not None]
            vals.append(statistics.median(xs) if xs else None)
        med[s] = vals
    for s in servers:
        cells = "".join(f"{'-' if v is None else f'{v:,.1f}':>14}" for v in med[s])
        base = med.get("herald")
        ratio = ", ".join(
            f"{c[0]} {v / b:.2f}x"
            for c, v, b in zip(cols, med[s], base or [])
            if c[2] and s != "herald" and v is not None and b)
        failed = sum(j is None for j in by[(scenario, s)])
        print(f"{s:<{width}}{cells}   {ratio}" + (f"  ({failed} run(s) failed)" if failed else ""))
EOF
log "results in $out"
