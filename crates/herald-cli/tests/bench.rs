//! `herald bench` end to end against a real `herald serve`.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_herald");
const KEY: &str = "bench-test-secret-bench-test-secret";

/// A `herald serve --engine memory` child, killed on drop.
struct Hub {
    child: Child,
    addr: String,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hub {
    /// Starts the hub on a port it picks itself (see
    /// [`common::listening_addr`]).
    fn start() -> Hub {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(BIN)
            .args(["serve", "--engine", "memory", "--addr", "127.0.0.1:0"])
            .args(["--publisher-jwt", KEY, "--log", "info"])
            .env_remove("HERALD_PUBLISHER_JWT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Keep draining once the test stops listening, so the
                // child never blocks on a full pipe.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the hub did not start: {seen:#?}"));
            if let Some(addr) = common::listening_addr(&line) {
                break addr;
            }
            seen.push(line);
        };
        let hub = Hub { child, addr };
        assert!(
            TcpStream::connect(&hub.addr).is_ok(),
            "the hub does not listen on {}",
            hub.addr
        );
        hub
    }
}

impl Hub {
    /// Runs `herald bench` against this hub with `args` (plus the key,
    /// `--quiet` and `--json`); asserts it succeeded and returns its text
    /// report and its JSON report.
    fn bench(&self, args: &[&str]) -> (String, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("bench.json");
        let out = Command::new(BIN)
            .args(["bench", "--hub", &format!("http://{}", self.addr)])
            .args(["--key", KEY, "--quiet", "--json"])
            .arg(&json)
            .args(args)
            .env_remove("HERALD_TOKEN")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
        let v = serde_json::from_str(&std::fs::read_to_string(&json).unwrap())
            .expect("the JSON report parses");
        (stdout, v)
    }
}

#[test]
fn bench_counts_every_delivery_of_a_real_hub() {
    let hub = Hub::start();
    let pid = hub.child.id().to_string();
    let (stdout, v) = hub.bench(&[
        "--subscribers",
        "20",
        "--rate",
        "50",
        "--duration",
        "2",
        "--pid",
        &pid,
    ]);
    assert!(
        stdout.contains("latency, scheduled send to receive"),
        "{stdout}"
    );

    assert_eq!(v["mode"], "load");
    assert_eq!(v["connections"]["ok"], 20, "{v:#}");
    assert_eq!(v["connections"]["failed"], 0, "{v:#}");
    assert_eq!(v["connections"]["dropped"], 0, "{v:#}");

    let acked = v["publish"]["acknowledged"].as_u64().unwrap();
    // 50/s through 1 s of warm-up and 2 s measured: about 150.
    assert!((100..=160).contains(&acked), "{v:#}");
    assert_eq!(v["publish"]["errors"], 0, "{v:#}");

    let d = &v["deliveries"];
    assert_eq!(d["losses"], 0, "{v:#}");
    assert_eq!(d["duplicates"], 0, "{v:#}");
    assert_eq!(d["total"].as_u64().unwrap(), acked * 20, "{v:#}");
    assert_eq!(d["expected"].as_u64().unwrap(), acked * 20, "{v:#}");
    assert!(d["per_second"].as_f64().unwrap() > 0.0, "{v:#}");

    let lat = &v["latency_ms"];
    assert!(lat["samples"].as_u64().unwrap() > 0, "{v:#}");
    for field in ["p50", "p90", "p99", "p999", "max", "mean"] {
        assert!(lat[field].as_f64().is_some(), "latency_ms.{field}: {v:#}");
    }
    assert!(lat["p50"].as_f64() <= lat["max"].as_f64());

    let h = &v["hub_process"];
    assert!(h["rss_idle_kib"].as_u64().unwrap() > 0, "{v:#}");
    assert!(h["cpu_percent"].as_f64().is_some(), "{v:#}");
    assert!(v["generator"]["cpu_percent"].as_f64().is_some(), "{v:#}");
}

/// Runs `herald bench` with `args` against a port nothing listens on,
/// with no token in the environment; asserts it failed and returns its
/// stderr.
fn bench_refused(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["bench", "--hub", "http://127.0.0.1:9"])
        .args(args)
        .env_remove("HERALD_TOKEN")
        .env_remove("HERALD_PUBLISHER_JWT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bench_refuses_to_publish_without_a_token() {
    let stderr = bench_refused(&["--subscribers", "1"]);
    assert!(stderr.contains("publishing needs a token"), "{stderr}");
}

#[test]
fn bench_batches_reach_every_subscriber_once() {
    let hub = Hub::start();
    let (_, v) = hub.bench(&[
        "--subscribers",
        "10",
        "--topics",
        "3",
        "--batch",
        "25",
        "--rate",
        "500",
        "--duration",
        "2",
    ]);
    let acked = v["publish"]["acknowledged"].as_u64().unwrap();
    // 500/s in requests of 25 through 1 s of warm-up and 2 s measured.
    assert!((1000..=1525).contains(&acked), "{v:#}");
    assert_eq!(acked % 25, 0, "{v:#}");
    assert_eq!(v["publish"]["errors"], 0, "{v:#}");
    let d = &v["deliveries"];
    assert_eq!(d["losses"], 0, "{v:#}");
    assert_eq!(d["duplicates"], 0, "{v:#}");
    // 10 subscribers over 3 topics (4, 3, 3), updates over the topics in
    // turn: every subscriber gets the updates of its topic.
    assert!(d["total"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(d["total"], d["expected"], "{v:#}");
}

#[test]
fn bench_leaves_never_reading_subscribers_out_of_the_deliveries() {
    let hub = Hub::start();
    let (stdout, v) = hub.bench(&[
        "--subscribers",
        "20",
        "--slow",
        "10",
        "--rate",
        "50",
        "--duration",
        "2",
    ]);
    assert!(stdout.contains("never reading (--slow)"), "{stdout}");
    // 10 % of 20: two never read.
    assert_eq!(v["connections"]["slow"], 2, "{v:#}");
    assert_eq!(v["connections"]["ok"], 20, "{v:#}");
    let acked = v["publish"]["acknowledged"].as_u64().unwrap();
    let d = &v["deliveries"];
    assert_eq!(d["losses"], 0, "{v:#}");
    // Only the eighteen that read are counted.
    assert_eq!(d["expected"].as_u64().unwrap(), acked * 18, "{v:#}");
    assert_eq!(d["total"].as_u64().unwrap(), acked * 18, "{v:#}");
}

#[test]
fn bench_churn_opens_and_closes_subscriptions_while_measuring() {
    let hub = Hub::start();
    let (stdout, v) = hub.bench(&[
        "--subscribers",
        "10",
        "--rate",
        "50",
        "--duration",
        "2",
        "--churn",
        "100",
    ]);
    assert!(stdout.contains("churn (--churn)"), "{stdout}");
    let c = &v["churn"];
    let ok = c["ok"].as_u64().unwrap();
    // About 100/s over the warm-up and the measured window (3 s), all
    // answered by the hub.
    assert!((200..=400).contains(&ok), "{v:#}");
    assert_eq!(c["failed"], 0, "{v:#}");
    assert_eq!(c["attempted"].as_u64().unwrap(), ok, "{v:#}");
    // The churn does not disturb the measured subscribers' deliveries.
    assert_eq!(v["deliveries"]["losses"], 0, "{v:#}");
    assert_eq!(v["connections"]["ok"], 10, "{v:#}");
}

#[test]
fn bench_shares_more_topics_than_subscribers_out_one_subscriber_each() {
    let hub = Hub::start();
    let (stdout, v) = hub.bench(&[
        "--subscribers",
        "10",
        "--topics",
        "35",
        "--rate",
        "200",
        "--duration",
        "2",
    ]);
    // 35 topics over 10 subscribers: 4 for the first five, 3 for the rest.
    assert!(
        stdout.contains("10 subscribers on 35 topic(s) (3 or 4 per subscriber)"),
        "{stdout}"
    );
    assert_eq!(v["config"]["topics_per_subscriber"], 4, "{v:#}");
    assert_eq!(v["connections"]["ok"], 10, "{v:#}");
    let acked = v["publish"]["acknowledged"].as_u64().unwrap();
    assert!(acked > 0, "{v:#}");
    let d = &v["deliveries"];
    assert_eq!(d["losses"], 0, "{v:#}");
    assert_eq!(d["duplicates"], 0, "{v:#}");
    assert_eq!(d["foreign"], 0, "{v:#}");
    // Every topic has exactly one subscriber: one delivery per update.
    assert_eq!(d["expected"].as_u64().unwrap(), acked, "{v:#}");
    assert_eq!(d["total"].as_u64().unwrap(), acked, "{v:#}");
}

#[test]
fn bench_refuses_several_topics_per_subscription_outside_mercure() {
    let stderr = bench_refused(&[
        "--flavor",
        "nchan",
        "--publish-url",
        "http://127.0.0.1:9/pub",
        "--subscribers",
        "2",
        "--topics",
        "5",
    ]);
    assert!(stderr.contains("only a Mercure hub takes"), "{stderr}");
}

#[test]
fn bench_refuses_subscription_requests_too_large_for_the_hub() {
    let stderr = bench_refused(&["--idle", "--subscribers", "1", "--topics", "5000"]);
    assert!(
        stderr.contains("more than the 64 KiB request head"),
        "{stderr}"
    );
}

/// Runs `herald bench` over `transport` (its flags) with 50 subscribers,
/// 5 of them never reading, and a little churn; checks every reading
/// subscriber got every update once, and the report names the transport.
fn bench_over(transport: &[&str], name: &str) -> serde_json::Value {
    let hub = Hub::start();
    let mut args = vec![
        "--subscribers",
        "50",
        "--slow",
        "10",
        "--rate",
        "50",
        "--duration",
        "2",
        "--churn",
        "20",
    ];
    args.extend_from_slice(transport);
    let (stdout, v) = hub.bench(&args);
    assert!(
        stdout.contains(&format!("transport                 {name}")),
        "{stdout}"
    );
    assert_eq!(v["config"]["transport"], name, "{v:#}");
    assert_eq!(v["connections"]["ok"], 50, "{v:#}");
    assert_eq!(v["connections"]["failed"], 0, "{v:#}");
    assert_eq!(v["connections"]["dropped"], 0, "{v:#}");
    assert_eq!(v["connections"]["slow"], 5, "{v:#}");
    assert_eq!(v["churn"]["failed"], 0, "{v:#}");
    assert!(v["churn"]["ok"].as_u64().unwrap() > 0, "{v:#}");
    let acked = v["publish"]["acknowledged"].as_u64().unwrap();
    assert!(acked > 0, "{v:#}");
    let d = &v["deliveries"];
    assert_eq!(d["losses"], 0, "{v:#}");
    assert_eq!(d["duplicates"], 0, "{v:#}");
    assert_eq!(d["foreign"], 0, "{v:#}");
    assert_eq!(d["expected"].as_u64().unwrap(), acked * 45, "{v:#}");
    assert_eq!(d["total"].as_u64().unwrap(), acked * 45, "{v:#}");
    assert!(v["latency_ms"]["samples"].as_u64().unwrap() > 0, "{v:#}");
    v
}

#[test]
fn bench_over_http2_streams_counts_every_delivery() {
    // 50 streams, 20 per connection: three connections.
    let v = bench_over(&["--http2", "--streams-per-connection", "20"], "http2");
    assert_eq!(v["config"]["streams_per_connection"], 20, "{v:#}");
    assert_eq!(v["config"]["subscriber_connections"], 3, "{v:#}");
}

#[test]
fn bench_over_websockets_counts_every_delivery() {
    let v = bench_over(&["--websocket"], "websocket");
    assert_eq!(v["config"]["subscriber_connections"], 50, "{v:#}");
}

#[test]
fn bench_refuses_other_transports_outside_mercure() {
    for transport in ["--http2", "--websocket"] {
        let stderr = bench_refused(&[
            transport,
            "--flavor",
            "nchan",
            "--publish-url",
            "http://127.0.0.1:9/pub",
        ]);
        assert!(stderr.contains("it needs --flavor mercure"), "{stderr}");
    }
    let stderr = bench_refused(&["--http2", "--websocket"]);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
