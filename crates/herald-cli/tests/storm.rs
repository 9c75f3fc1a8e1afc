//! A reconnect storm: 10,000 subscribers on one `herald serve`, which is
//! killed (SIGKILL) and restarted on the same port and data directory, so
//! every client comes back at once.
//!
//! The hub runs with `--retry 500 --retry-jitter 4s` (each stream's
//! `retry:` is drawn from 0.5 to 4.5 s) and `--stream-admission-rate 1000`
//! (streams past 1,000 a second wait for their turn). Each client behaves
//! as a browser's `EventSource` does: it waits the `retry:` it was given,
//! reconnects with `Last-Event-ID`, tries again after the same wait when
//! the hub is not up yet, and gives up for good on any answer but `200`.
//! A publisher publishes 20 numbered updates a second throughout (an
//! update refused while the hub is down is retried with the same id), and
//! a probe asks `/healthz` every 20 ms. The test checks that:
//!
//! - no client was ever answered anything but `200`;
//! - every client received every update, in order, once: 0, 1, 2, … up to
//!   the last one, across the restart (no gap, no duplicate);
//! - while the clients came back, every health probe and every publish
//!   was answered, none slower than [`RESPONSIVE`].
//!
//! It prints the figures BENCHMARKS.md records: how long the storm lasted,
//! the health and publish latencies during it, how many streams waited
//! for their turn. `HERALD_STORM_CLIENTS` sets the number of clients
//! (10,000 by default; the test process and the hub each hold one socket
//! per client, under this machine's 20,000 files per process), and
//! `HERALD_STORM_SPREAD=0` runs the hub with neither jitter nor pacing, to
//! compare. `HERALD_STORM_BIN` runs another `herald` binary as the hub
//! (a release build, for figures).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::auth::{sign, Claims, KeyConfig, MercureClaim};
use herald_protocol::sse::{Item, Parser};

const BIN: &str = env!("CARGO_BIN_EXE_herald");
const SECRET: &str = "storm-test-secret-with-enough-bytes-for-hs256!";
/// The slowest a health probe or a publish may be answered during the
/// storm. Generous (the hub under test is a debug build sharing two
/// cores with 10,000 clients); the point is that nothing stalls.
const RESPONSIVE: Duration = Duration::from_secs(3);
/// Updates per second during the test.
const RATE: u64 = 20;

fn clients() -> usize {
    std::env::var("HERALD_STORM_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn spread() -> bool {
    std::env::var("HERALD_STORM_SPREAD").map_or(true, |v| v != "0")
}

fn publisher_token() -> String {
    let claims = Claims {
        mercure: MercureClaim {
            publish: Some(vec!["*".into()]),
            subscribe: None,
            payload: None,
        },
        ..Default::default()
    };
    sign(&claims, &KeyConfig::hmac(SECRET)).unwrap()
}

/// A `herald serve` child, killed on drop.
struct Hub {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hub {
    /// Starts the hub on `addr` (`127.0.0.1:0` for any port) and returns
    /// it with the address it listens on.
    fn spawn(addr: &str, data_dir: &Path) -> (Hub, String) {
        let bin = std::env::var("HERALD_STORM_BIN").unwrap_or_else(|_| BIN.to_owned());
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--addr", addr, "--engine", "local"])
            .args(["--durability", "sync", "--log", "info"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--publisher-jwt", SECRET, "--retry", "500"])
            .args(["--max-connections", "19000", "--heartbeat", "5s"]);
        if spread() {
            cmd.args(["--retry-jitter", "4s", "--stream-admission-rate", "1000"]);
        }
        let mut child = cmd
            .env_remove("HERALD_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut tx = Some(tx);
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut text = sink.lock().unwrap();
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                if tx.is_some() {
                    if let Some(at) = text.lines().find_map(common::listening_addr) {
                        let _ = tx.take().map(|tx| tx.send(at));
                    }
                }
            }
        });
        let hub = Hub { child, stderr };
        let at = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the hub did not start: {}", hub.stderr()));
        (hub, at)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    /// The data of every event received, in order (update numbers).
    seqs: Vec<u64>,
    /// Answers other than `200` (after which an `EventSource` gives up).
    refused: Vec<u16>,
}

/// Shared between the clients, the publisher and the test.
struct Shared {
    url: String,
    /// Clients holding a stream opened before the kill.
    connected: AtomicUsize,
    /// Clients whose stream reopened after the kill.
    resumed: AtomicUsize,
    /// Set once the hub was killed: a stream opened after it counts as
    /// resumed.
    killed: AtomicU64,
}

/// One `EventSource`-like client: see the module documentation.
async fn client(http: reqwest::Client, shared: Arc<Shared>) -> ClientLog {
    let mut log = ClientLog::default();
    let mut last_id = String::new();
    let mut retry = Duration::from_secs(3);
    let mut counted = false;
    let mut back = false;
    loop {
        let mut req = http.get(&shared.url).query(&[("topic", "storm")]);
        if !last_id.is_empty() {
            req = req.header("Last-Event-ID", &last_id);
        }
        let res = match req.send().await {
            Ok(res) => res,
            // Not up yet: try again after the same wait.
            Err(_) => {
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        if res.status() != reqwest::StatusCode::OK {
            log.refused.push(res.status().as_u16());
            return log;
        }
        if shared.killed.load(Ordering::SeqCst) == 1 {
            if !back {
                back = true;
                shared.resumed.fetch_add(1, Ordering::SeqCst);
            }
        } else if !counted {
            counted = true;
            shared.connected.fetch_add(1, Ordering::SeqCst);
        }
        let mut parser = Parser::new();
        let mut body = res.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            for item in parser.feed(&chunk) {
                if let Item::Event(e) = item {
                    // The update after the last one says so.
                    if e.data == "end" {
                        return log;
                    }
                    log.seqs.push(e.data.parse().expect("numbered data"));
                    last_id = e.id;
                }
            }
            if let Some(ms) = parser.retry() {
                retry = Duration::from_millis(ms);
            }
        }
        // Cut off (the kill): reconnect after `retry`, as a browser does.
        tokio::time::sleep(retry).await;
    }
}

/// When something was answered, and how fast.
type Timings = Arc<Mutex<Vec<(Instant, Option<Duration>)>>>;

/// Publishes update 0, 1, 2, … at [`RATE`] a second until `stop`, each
/// retried with its id until stored; records each answer's latency.
async fn publisher(url: String, stop: Arc<AtomicU64>, timings: Timings) -> u64 {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let token = publisher_token();
    let mut seq = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    while stop.load(Ordering::SeqCst) == 0 {
        tick.tick().await;
        loop {
            let id = format!("urn:storm:{seq}");
            let data = seq.to_string();
            let started = Instant::now();
            let res = http
                .post(&url)
                .bearer_auth(&token)
                .form(&[("topic", "storm"), ("id", &id), ("data", &data)])
                .send()
                .await;
            let took = started.elapsed();
            match res.map(|r| r.status().as_u16()) {
                // 409: an earlier try was stored.
                Ok(200 | 409) => {
                    timings.lock().unwrap().push((started, Some(took)));
                    break;
                }
                _ => {
                    timings.lock().unwrap().push((started, None));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        seq += 1;
    }
    seq - 1
}

/// Asks `/healthz` every 20 ms until `stop`.
async fn prober(url: String, stop: Arc<AtomicU64>, timings: Timings) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    while stop.load(Ordering::SeqCst) == 0 {
        let started = Instant::now();
        let ok = matches!(http.get(&url).send().await, Ok(r) if r.status() == 200);
        timings
            .lock()
            .unwrap()
            .push((started, ok.then(|| started.elapsed())));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The answers between `from` and `to`: every one answered? and their
/// latency percentiles.
fn window(timings: &Timings, from: Instant, to: Instant) -> (usize, usize, Vec<Duration>) {
    let t = timings.lock().unwrap();
    let inside: Vec<_> = t
        .iter()
        .filter(|(at, _)| *at >= from && *at <= to)
        .collect();
    let mut ok: Vec<Duration> = inside.iter().filter_map(|(_, d)| *d).collect();
    ok.sort();
    (inside.len(), inside.len() - ok.len(), ok)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_clients_resume_after_a_restart_with_no_gap() {
    let n = clients();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let (hub, addr) = Hub::spawn("127.0.0.1:0", dir.path());
    let base = format!("http://{addr}");
    eprintln!(
        "storm: {n} clients, hub {addr}, jitter and pacing {}",
        if spread() { "on" } else { "off" }
    );
    let shared = Arc::new(Shared {
        url: format!("{base}/.well-known/mercure"),
        connected: AtomicUsize::new(0),
        resumed: AtomicUsize::new(0),
        killed: AtomicU64::new(0),
    });

    // The clients, from 8 loopback addresses (plenty of ports for two
    // rounds of connections), opened 200 at a time.
    let https: Vec<reqwest::Client> = (1..=8u8)
        .map(|k| {
            reqwest::Client::builder()
                .no_proxy()
                .http1_only()
                .pool_max_idle_per_host(0)
                .connect_timeout(Duration::from_secs(2))
                .local_address(std::net::IpAddr::from([127, 0, 0, k]))
                .build()
                .unwrap()
        })
        .collect();
    let mut tasks = Vec::with_capacity(n);
    let opened = Instant::now();
    for i in 0..n {
        while i - shared.connected.load(Ordering::SeqCst) >= 200 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            assert!(
                opened.elapsed() < Duration::from_secs(120),
                "clients do not connect"
            );
        }
        tasks.push(tokio::spawn(client(https[i % 8].clone(), shared.clone())));
    }
    while shared.connected.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            opened.elapsed() < Duration::from_secs(120),
            "clients do not connect"
        );
    }
    eprintln!(
        "storm: {n} streams open after {:.1} s, hub RSS {:.0} MiB",
        opened.elapsed().as_secs_f64(),
        rss_mib(hub.pid())
    );

    let stop = Arc::new(AtomicU64::new(0));
    let publishes: Timings = Arc::default();
    let probes: Timings = Arc::default();
    let pub_task = tokio::spawn(publisher(
        shared.url.clone(),
        stop.clone(),
        publishes.clone(),
    ));
    let probe_task = tokio::spawn(prober(
        format!("{base}/healthz"),
        stop.clone(),
        probes.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Kill and restart on the same address.
    shared.killed.store(1, Ordering::SeqCst);
    drop(hub);
    let killed = Instant::now();
    let hub = loop {
        // The port is free again at once (SO_REUSEADDR); retry briefly in
        // case something else took it meanwhile.
        let started = std::panic::catch_unwind(|| Hub::spawn(&addr, dir.path()));
        match started {
            Ok((hub, at)) => {
                assert_eq!(at, addr);
                break hub;
            }
            Err(_) if killed.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => std::panic::resume_unwind(e),
        }
    };
    let up = Instant::now();
    eprintln!(
        "storm: hub restarted {:.0} ms after the kill",
        (up - killed).as_secs_f64() * 1e3
    );
    while shared.resumed.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "{} of {n} clients resumed within 90 s: {}",
            shared.resumed.load(Ordering::SeqCst),
            hub.stderr()
        );
    }
    let all_back = Instant::now();
    let rss = rss_mib(hub.pid());
    // Publish a little longer, then stop and let every client catch up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(1, Ordering::SeqCst);
    let last = pub_task.await.unwrap();
    probe_task.await.unwrap();
    // One more update tells the clients that was all.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let end = plain
        .post(&shared.url)
        .bearer_auth(publisher_token())
        .form(&[("topic", "storm"), ("data", "end")])
        .send()
        .await
        .unwrap();
    assert_eq!(end.status(), 200);
    let mut logs = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(60);
    for t in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, t).await {
            Ok(log) => logs.push(log.unwrap()),
            Err(_) => panic!("a client did not receive update {last} within 60 s"),
        }
    }

    let (probe_n, probe_failed, probe_lat) = window(&probes, up, all_back);
    let (pub_n, pub_failed, pub_lat) = window(&publishes, up, all_back);
    let metrics = plain
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let paced = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_admission_paced_total "))
        .unwrap_or("0")
        .to_owned();
    eprintln!(
        "storm: every client back {:.2} s after the restart; {paced} streams waited for their turn; hub RSS {rss:.0} MiB",
        (all_back - up).as_secs_f64(),
    );
    eprintln!(
        "storm: during it /healthz p50 {:?} p99 {:?} max {:?} ({probe_n} probes, {probe_failed} unanswered); publish p50 {:?} p99 {:?} max {:?} ({pub_n} publishes, {pub_failed} failed)",
        pct(&probe_lat, 0.5),
        pct(&probe_lat, 0.99),
        pct(&probe_lat, 1.0),
        pct(&pub_lat, 0.5),
        pct(&pub_lat, 0.99),
        pct(&pub_lat, 1.0),
    );

    let refused: Vec<u16> = logs.iter().flat_map(|l| l.refused.clone()).collect();
    assert!(refused.is_empty(), "clients refused: {refused:?}");
    let want: Vec<u64> = (0..=last).collect();
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(log.seqs, want, "client {i} saw a gap or a duplicate");
    }
    assert_eq!(
        probe_failed, 0,
        "health probes went unanswered during the storm"
    );
    assert_eq!(pub_failed, 0, "publishes failed during the storm");
    assert!(pct(&probe_lat, 1.0) < RESPONSIVE, "a health probe was slow");
    assert!(pct(&pub_lat, 1.0) < RESPONSIVE, "a publish was slow");
    drop(hub);
}
