#!/usr/bin/env python3
"""The log-tail pattern, measured: rows inserted into a PostgreSQL outbox
table reach an event-stream subscriber through `herald bridge postgres`.

Starts a hub (`herald serve`, memory engine) and an outbox bridge on a
fresh table, subscribes to the table's topic, then inserts ROWS rows at
RATE per second through one `psql` session. Each row's payload is the
database's clock at insert (`clock_timestamp()`, same machine), so the
delay is insert -> received by the subscriber. Prints p50/p99/max and
the rows per second the bridge sustained when the rows come in one burst.

Usage: python3 benches/bridge-latency.py [--pg URL] [--rows N] [--rate R]
       [--bin target/release/herald]
Needs psql and a PostgreSQL that accepts the URL (default: the machine's,
postgres://postgres@127.0.0.1:5432/postgres). Everything it starts is
stopped at the end; the table is dropped.
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

SECRET = "bridge-latency-secret-bridge-latency"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("the hub did not start")


def subscribe(port, topic, got, ready):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/.well-known/mercure?topic=" + topic)
    r = c.getresponse()
    ready.set()
    data = None
    while True:
        line = r.fp.readline()
        if not line:
            return
        now = time.time() * 1000
        line = line.decode().rstrip("\n")
        if line.startswith("data:"):
            data = line[5:]
        elif line == "" and data is not None:
            got.append((data, now))
            data = None


def run(args, rows, rate):
    port = free_port()
    table = "latency_" + uuid.uuid4().hex[:12]
    topic = "https://example.com/log/app"
    procs = []
    try:
        procs.append(subprocess.Popen(
            [args.bin, "serve", "--engine", "memory", "--addr", f"127.0.0.1:{port}",
             "--publisher-jwt", SECRET, "--log", "warn"], stderr=subprocess.DEVNULL))
        wait_http(port)
        token = subprocess.run(
            [args.bin, "token", "--key", SECRET, "--publish", "*"],
            capture_output=True, text=True, check=True).stdout.strip()
        bridge = subprocess.Popen(
            [args.bin, "bridge", "postgres", "--postgres", args.pg, "--outbox", table,
             "--hub", f"http://127.0.0.1:{port}", "--token", token,
             "--topic", "https://example.com/log/{channel}", "--log", "warn"])
        procs.append(bridge)
        got, ready = [], threading.Event()
        threading.Thread(target=subscribe, args=(port, topic, got, ready), daemon=True).start()
        ready.wait(5)
        # The bridge creates the table: wait for it.
        for _ in range(200):
            q = subprocess.run(["psql", args.pg, "-tAc", f"SELECT to_regclass('{table}')"],
                               capture_output=True, text=True)
            if q.stdout.strip() == table:
                break
            time.sleep(0.05)
        psql = subprocess.Popen(["psql", args.pg, "-q"], stdin=subprocess.PIPE, text=True,
                                stdout=subprocess.DEVNULL)
        insert = (f"INSERT INTO {table} (channel, payload) VALUES "
                  "('app', (extract(epoch from clock_timestamp()) * 1000)::text);\n")
        start = time.time()
        for i in range(rows):
            if rate:
                wait = start + i / rate - time.time()
                if wait > 0:
                    time.sleep(wait)
            psql.stdin.write(insert)
            psql.stdin.flush()
        psql.stdin.close()
        psql.wait()
        end = time.time() + 30
        while len(got) < rows and time.time() < end:
            time.sleep(0.01)
        if len(got) < rows:
            sys.exit(f"only {len(got)} of {rows} rows arrived")
        delays = sorted(now - float(d) for d, now in got)
        span = (got[-1][1] - got[0][1]) / 1000
        subprocess.run(["psql", args.pg, "-qc",
                        f"DROP TABLE {table}; DROP FUNCTION {table}_notify()"],
                       capture_output=True)
        return delays, span
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", default=os.environ.get(
        "HERALD_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--bin", default="target/release/herald")
    args = ap.parse_args()
    pick = lambda d, q: d[min(len(d) - 1, int(q * len(d)))]
    delays, _ = run(args, args.rows, args.rate)
    print(json.dumps({"rows": args.rows, "rate": args.rate,
                      "p50_ms": round(pick(delays, 0.5), 1),
                      "p99_ms": round(pick(delays, 0.99), 1),
                      "max_ms": round(delays[-1], 1)}))
    burst, span = run(args, args.rows, 0)
    print(json.dumps({"rows": args.rows, "burst": True,
                      "rows_per_s": round(args.rows / span) if span > 0 else None,
                      "p99_ms": round(pick(burst, 0.99), 1)}))


if __name__ == "__main__":
    main()
