//! Crash safety of the `local` engine, with a real `SIGKILL`.
//!
//! Each round starts `herald serve --engine local --durability sync`, runs 16
//! sequential publishers and one live subscriber, kills the process at a
//! random moment while publishing is in full swing, restarts it on the same
//! data directory and checks that:
//!
//! * every acknowledged update is in the history exactly once, with its id
//!   and data, and each publisher's updates are in its publishing order;
//!   updates in flight at the kill may be there at most once, nothing else;
//! * the live subscriber resumes with `Last-Event-ID` without a gap or a
//!   duplicate: what it saw before plus what it gets after is the history;
//! * publishing continues after the restart: new updates come after the old
//!   ones and their generated ids are new.
//!
//! The kill delays come from a seed printed at the start; rerun a failure
//! with `HERALD_CRASH_SEED=<seed>`.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::auth::{sign, Claims, KeyConfig, MercureClaim};
use herald_protocol::sse::{Item, Parser};

const BIN: &str = env!("CARGO_BIN_EXE_herald");
const SECRET: &str = "crash-test-secret-with-enough-bytes-for-hs256!";
const PUBLISHERS: usize = 16;
const ROUNDS: usize = 3;
const POST_RESTART: usize = 5;
/// A history read ends after this long without a byte.
const QUIET: Duration = Duration::from_secs(1);

/// splitmix64: small, seedable, good enough to pick kill delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn token() -> String {
    let claims = Claims {
        mercure: MercureClaim {
            publish: Some(vec!["*".into()]),
            subscribe: Some(vec!["*".into()]),
            payload: None,
        },
        ..Default::default()
    };
    sign(&claims, &KeyConfig::hmac(SECRET)).unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A `herald serve` child, killed (SIGKILL) on drop.
struct Hub {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hub {
    /// Starts the hub on a free port of 127.0.0.1 and waits for /healthz,
    /// trying other ports if the one picked was taken meanwhile.
    async fn start(data_dir: &Path) -> Hub {
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let mut child = Command::new(BIN)
                .args(["serve", "--addr", &addr, "--engine", "local"])
                .args(["--durability", "sync", "--log", "warn"])
                .arg("--data-dir")
                .arg(data_dir)
                .args(["--publisher-jwt", SECRET])
                .env_remove("HERALD_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stderr = Arc::new(Mutex::new(String::new()));
            let mut pipe = child.stderr.take().unwrap();
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            let mut hub = Hub {
                child,
                addr,
                stderr,
            };
            match hub.wait_ready().await {
                Ok(()) => return hub,
                Err(e) => last_err = e,
            }
        }
        panic!("the hub did not start: {last_err}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = client();
        let url = format!("http://{}/healthz", self.addr);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}: {}", self.stderr()));
            }
            let probe = http.get(&url).timeout(Duration::from_millis(500)).send();
            if let Ok(res) = probe.await {
                if res.status() == reqwest::StatusCode::OK {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!("no /healthz within 15 s: {}", self.stderr()))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn hub_url(&self) -> String {
        format!("http://{}/.well-known/mercure", self.addr)
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "killed hub exited with {status}");
    }
}

/// One event as a subscriber saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    id: String,
    data: String,
}

/// Opens a stream on every topic, resuming after `last_event_id`.
async fn subscribe(hub_url: &str, last_event_id: &str) -> reqwest::Response {
    let res = client()
        .get(hub_url)
        .query(&[("topic", "*")])
        .header("Last-Event-ID", last_event_id)
        .bearer_auth(token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    res
}

/// Reads events until `done` says so, the stream ends, no byte came for
/// `QUIET`, or `deadline`.
async fn read_events(
    res: reqwest::Response,
    deadline: Instant,
    mut done: impl FnMut(&[Seen]) -> bool,
) -> Vec<Seen> {
    let mut stream = res.bytes_stream();
    let mut parser = Parser::new();
    let mut seen = Vec::new();
    loop {
        if done(&seen) {
            return seen;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return seen;
        }
        match tokio::time::timeout(left.min(QUIET), stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                for item in parser.feed(&chunk) {
                    if let Item::Event(e) = item {
                        assert_eq!(e.event, "message");
                        seen.push(Seen {
                            id: e.id,
                            data: e.data,
                        });
                    }
                }
            }
            Ok(Some(Err(_))) | Ok(None) | Err(_) => return seen,
        }
    }
}

/// What one publisher did before the kill.
#[derive(Debug, Default)]
struct PublisherLog {
    /// Acknowledged (id, data), in publishing order; seq = index.
    acked: Vec<(String, String)>,
    /// The publish that failed (in flight at the kill), if any.
    in_flight: Option<String>,
    /// A failure before the kill: a test failure.
    early_error: Option<String>,
}

async fn publisher(p: usize, hub_url: String, killed: Arc<AtomicBool>) -> PublisherLog {
    // One client per publisher: its own keep-alive connection.
    let http = client();
    let token = token();
    let mut log = PublisherLog::default();
    for seq in 0.. {
        let data = format!("{p}:{seq}");
        let topic = format!("https://example.com/crash/{p}");
        let result = async {
            let res = http
                .post(&hub_url)
                .bearer_auth(&token)
                .form(&[("topic", topic.as_str()), ("data", data.as_str())])
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = res.status();
            let body = res.text().await.map_err(|e| format!("body: {e}"))?;
            if status != reqwest::StatusCode::OK {
                return Err(format!("status {status}: {body}"));
            }
            Ok(body)
        }
        .await;
        match result {
            Ok(id) => {
                assert!(id.starts_with("urn:uuid:"), "generated id {id:?}");
                log.acked.push((id, data));
            }
            Err(e) => {
                if !killed.load(Ordering::SeqCst) {
                    log.early_error = Some(format!("publisher {p} seq {seq}: {e}"));
                }
                log.in_flight = Some(data);
                return log;
            }
        }
    }
    unreachable!()
}

#[derive(Debug)]
struct RoundReport {
    delay_ms: u64,
    acked: usize,
    recovered: usize,
    in_flight_recovered: usize,
    live_seen: usize,
    resumed: usize,
}

async fn round(round: usize, delay_ms: u64) -> RoundReport {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut hub = Hub::start(&data_dir).await;
    let url = hub.hub_url();

    // The live subscriber, from earliest, connected before publishing.
    let live_res = subscribe(&url, "earliest").await;
    let live = tokio::spawn(read_events(
        live_res,
        Instant::now() + Duration::from_secs(20),
        |_| false,
    ));

    let killed = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| tokio::spawn(publisher(p, url.clone(), killed.clone())))
        .collect();

    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    killed.store(true, Ordering::SeqCst);
    hub.kill();
    let stderr_before = hub.stderr();

    let mut logs = Vec::new();
    for (p, task) in publishers.into_iter().enumerate() {
        let log = tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .unwrap_or_else(|_| panic!("publisher {p} still running after the kill"))
            .unwrap();
        if let Some(e) = &log.early_error {
            panic!("round {round}: publish failed before the kill: {e}\n{stderr_before}");
        }
        logs.push(log);
    }
    let live_before = tokio::time::timeout(Duration::from_secs(15), live)
        .await
        .expect("the live stream did not end after the kill")
        .unwrap();
    let acked: usize = logs.iter().map(|l| l.acked.len()).sum();
    assert!(
        acked > 0,
        "round {round}: nothing acknowledged in {delay_ms} ms"
    );

    // Restart on the same store.
    drop(hub);
    let hub = Hub::start(&data_dir).await;
    let url = hub.hub_url();

    // The full history, and the live subscriber resuming, side by side.
    let resume_from = live_before
        .last()
        .map(|s| s.id.clone())
        .unwrap_or_else(|| "earliest".into());
    let resume_res = subscribe(&url, &resume_from).await;
    let echoed = resume_res
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(
        echoed.as_deref(),
        Some(resume_from.as_str()),
        "round {round}: the hub did not know the last id the live subscriber saw"
    );
    let full_res = subscribe(&url, "earliest").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (history, resumed) = tokio::join!(
        read_events(full_res, deadline, |_| false),
        read_events(resume_res, deadline, |_| false),
    );
    let ctx = format!("round {round} (delay {delay_ms} ms)");

    // Every id once; every acknowledged update present with its data.
    let position: HashMap<&str, usize> = history
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    assert_eq!(position.len(), history.len(), "{ctx}: an id repeats");
    let datas: HashSet<&str> = history.iter().map(|s| s.data.as_str()).collect();
    assert_eq!(datas.len(), history.len(), "{ctx}: a data repeats");
    for log in &logs {
        for (id, data) in &log.acked {
            let i = *position
                .get(id.as_str())
                .unwrap_or_else(|| panic!("{ctx}: acknowledged {data} ({id}) lost"));
            assert_eq!(&history[i].data, data, "{ctx}: data of {id}");
        }
    }

    // Nothing unknown; per publisher, seqs in publishing order.
    let mut last_seq: Vec<Option<usize>> = vec![None; PUBLISHERS];
    let mut in_flight_recovered = 0;
    for s in &history {
        let (p, seq) = s
            .data
            .split_once(':')
            .and_then(|(p, q)| Some((p.parse::<usize>().ok()?, q.parse::<usize>().ok()?)))
            .unwrap_or_else(|| panic!("{ctx}: unexpected update {s:?}"));
        assert!(p < PUBLISHERS, "{ctx}: unexpected update {s:?}");
        let log = &logs[p];
        if seq >= log.acked.len() {
            assert_eq!(
                log.in_flight.as_deref(),
                Some(s.data.as_str()),
                "{ctx}: update never published or never in flight: {s:?}"
            );
            in_flight_recovered += 1;
        }
        if let Some(prev) = last_seq[p] {
            assert!(prev < seq, "{ctx}: publisher {p}: {seq} after {prev}");
        }
        last_seq[p] = Some(seq);
    }
    assert_eq!(history.len(), acked + in_flight_recovered, "{ctx}");

    // The live subscriber: before + after the restart = the history.
    let mut joined = live_before.clone();
    joined.extend(resumed.iter().cloned());
    if joined != history {
        let n = joined
            .iter()
            .zip(&history)
            .take_while(|(a, b)| a == b)
            .count();
        panic!(
            "{ctx}: resumed stream differs from the history at {n}: live saw {}, resumed {}, \
             history {}; got {:?}, expected {:?}",
            live_before.len(),
            resumed.len(),
            history.len(),
            joined.get(n),
            history.get(n)
        );
    }

    // Publishing continues after the restart, after the old updates.
    let http = client();
    let token = token();
    let mut post = Vec::new();
    for i in 0..POST_RESTART {
        let data = format!("post:{i}");
        let res = http
            .post(&url)
            .bearer_auth(&token)
            .form(&[
                ("topic", "https://example.com/crash/post"),
                ("data", data.as_str()),
            ])
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::OK, "{ctx}: post publish");
        let id = res.text().await.unwrap();
        assert!(
            !position.contains_key(id.as_str()),
            "{ctx}: generated id {id} repeats an old one"
        );
        post.push(Seen { id, data });
    }
    let all_ids: HashSet<&str> = post.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(all_ids.len(), POST_RESTART, "{ctx}: new ids repeat");

    let want = history.len() + POST_RESTART;
    let deadline = Instant::now() + Duration::from_secs(15);
    let again = read_events(subscribe(&url, "earliest").await, deadline, |s| {
        s.len() >= want
    })
    .await;
    assert_eq!(again.len(), want, "{ctx}: history after new publishes");
    assert_eq!(again[..history.len()], history[..], "{ctx}: old history");
    assert_eq!(again[history.len()..], post[..], "{ctx}: new updates");

    let stderr_after = hub.stderr();
    if !stderr_before.trim().is_empty() || !stderr_after.trim().is_empty() {
        println!("round {round}: hub stderr before kill:\n{stderr_before}\nafter restart:\n{stderr_after}");
    }
    drop(hub);
    RoundReport {
        delay_ms,
        acked,
        recovered: history.len(),
        in_flight_recovered,
        live_seen: live_before.len(),
        resumed: resumed.len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_update() {
    let seed = match std::env::var("HERALD_CRASH_SEED") {
        Ok(s) => s.trim().parse::<u64>().expect("HERALD_CRASH_SEED: a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    println!("crash test seed {seed} (rerun with HERALD_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let started = Instant::now();
    for r in 0..ROUNDS {
        let delay_ms = rng.between(200, 1500);
        println!("round {r}: kill {delay_ms} ms after publishing starts");
        let report = tokio::time::timeout(Duration::from_secs(40), round(r, delay_ms))
            .await
            .unwrap_or_else(|_| panic!("round {r} (seed {seed}) took over 40 s"));
        println!(
            "round {r}: delay {} ms: {} acknowledged, {} recovered ({} in flight at the kill \
             and kept), live saw {} before, {} after resuming",
            report.delay_ms,
            report.acked,
            report.recovered,
            report.in_flight_recovered,
            report.live_seen,
            report.resumed
        );
    }
    let took = started.elapsed();
    println!("crash test took {took:?}");
    assert!(took < Duration::from_secs(55), "too slow: {took:?}");
}
