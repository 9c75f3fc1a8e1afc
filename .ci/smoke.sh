#!/usr/bin/env bash
# The README's first command, verbatim, as a new user types it: start the
# hub, subscribe, publish with the token it printed, see the event arrive,
# stop it. Fails if the README stops saying what this runs.
set -euo pipefail
cd "$(dirname "$0")/.."

CMD='cargo run --release -- serve'
grep -qxF "$CMD" README.md || { echo "smoke: README no longer says '$CMD'" >&2; exit 1; }

work=$(mktemp -d /tmp/herald-smoke.XXXXXX)
hub_pid=
sub_pid=
cleanup() {
    [ -n "$sub_pid" ] && kill "$sub_pid" 2>/dev/null || true
    [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -p herald-cli
# `cargo run` replaces itself with the hub on Unix, so this pid is the hub's.
$CMD >"$work/hub.out" 2>"$work/hub.err" &
hub_pid=$!

for _ in $(seq 1 600); do
    grep -q "herald listening" "$work/hub.err" && break
    kill -0 "$hub_pid" 2>/dev/null || { cat "$work/hub.err" >&2; echo "smoke: the hub exited" >&2; exit 1; }
    sleep 0.1
done
grep -q "herald listening" "$work/hub.err" || { cat "$work/hub.err" >&2; echo "smoke: the hub never listened" >&2; exit 1; }
token=$(grep -A2 '^Publisher token' "$work/hub.err" | grep -oE 'eyJ[A-Za-z0-9._-]+' | head -1)
[ -n "$token" ] || { cat "$work/hub.err" >&2; echo "smoke: no token printed" >&2; exit 1; }

curl -sN --max-time 20 'http://127.0.0.1:8080/.well-known/mercure?topic=*' >"$work/events" &
sub_pid=$!
sleep 1
id=$(curl -sf -d topic=https://example.com/books/1 -d 'data={"title":"Dune"}' \
    -H "Authorization: Bearer $token" http://127.0.0.1:8080/.well-known/mercure)
for _ in $(seq 1 100); do
    grep -q '^data:{"title":"Dune"}$' "$work/events" && break
    sleep 0.1
done
grep -q "^id:$id\$" "$work/events" || { cat "$work/events" >&2; echo "smoke: event $id not received" >&2; exit 1; }
grep -q '^data:{"title":"Dune"}$' "$work/events"

kill -TERM "$hub_pid"
for _ in $(seq 1 100); do
    kill -0 "$hub_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$hub_pid" 2>/dev/null; then echo "smoke: the hub did not stop on SIGTERM" >&2; exit 1; fi
wait "$hub_pid" || { echo "smoke: the hub exited with an error" >&2; cat "$work/hub.err" >&2; exit 1; }
hub_pid=
echo "smoke: started, published $id, received it, stopped"
