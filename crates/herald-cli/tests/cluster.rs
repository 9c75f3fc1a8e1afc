//! Three real `herald serve` nodes on one engine server, with failures.
//!
//! `three_nodes_survive_a_killed_node_and_a_redis_restart` starts a
//! throwaway `redis-server` of its own (append-only file, `appendfsync
//! always`) so it can kill it, and three nodes on it;
//! `three_nodes_survive_a_killed_node_and_a_postgres_restart` does the
//! same on a throwaway PostgreSQL cluster (`initdb`, then `postgres` as the
//! `postgres` user; killed with every process, restarted through crash
//! recovery). Six publishers
//! publish round-robin over the nodes (each update with an id of its own,
//! retried on another node after a failure: a `409` then means an earlier
//! try was stored), and two resuming subscribers per node listen to every
//! topic, reconnecting to the next node with `Last-Event-ID` when their
//! stream ends. Mid-stream the test kills one node with SIGKILL, then
//! kills Redis with SIGKILL and restarts it. It checks:
//!
//! - while the server is down, a publish answers `503` with `Retry-After`
//!   within the timeout (never a hang, never a `200`), `/readyz` answers
//!   `503`, and the subscribers of the live nodes stay connected
//!   (heartbeats arrive, no reconnect);
//! - once Redis is back, `/readyz` answers `200` and publishing goes on;
//! - while it hangs (SIGSTOP), a publish still answers `503` within
//!   the timeout;
//! - every subscriber received exactly the history replayed from
//!   `earliest` (no gap, no duplicate), and every acknowledged update is
//!   in it once.
//!
//! `lost_history_ends_streams_and_resumes_with_earliest` deletes the log
//! under a node: its streams end, a client resuming with an id of the lost
//! history is told `earliest` and gets the new log, and
//! `herald_engine_gaps_total` counts it.
//!
//! `a_killed_nodes_subscriptions_end_on_the_other_nodes`: the subscriptions
//! API of one node lists another node's subscriber, and forgets it within
//! the documented 10 s once that node is killed, when a surviving node
//! publishes its `active: false` event.
//!
//! `a_subscriber_behind_nginx_gets_what_any_node_takes` runs the nginx
//! configuration shipped in `deploy/nginx/herald.conf` in front of three
//! nodes: subscribers connect through nginx (no sticky sessions), updates
//! are published straight to each node.
//!
//! `three_nodes_survive_a_killed_node_and_a_nats_restart` runs the same on
//! a throwaway `nats-server -js` with a store directory of its own.
//!
//! The Redis tests run when `HERALD_TEST_REDIS_URL` is set, the PostgreSQL
//! ones when `HERALD_TEST_POSTGRES_URL` is, the NATS ones when
//! `HERALD_TEST_NATS_URL` is (`.ci/run` sets all three and installs
//! `redis-server`, `nats-server` and nginx); they say they skipped
//! otherwise.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use herald::auth::{sign, Claims, KeyConfig, MercureClaim};
use herald_protocol::sse::{Item, Parser};

const BIN: &str = env!("CARGO_BIN_EXE_herald");
const SECRET: &str = "cluster-test-secret-with-enough-bytes-for-hs256";

fn postgres_enabled() -> bool {
    let on = std::env::var("HERALD_TEST_POSTGRES_URL").is_ok_and(|v| !v.is_empty());
    if !on {
        eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    }
    on
}

fn nats_enabled() -> bool {
    let on = std::env::var("HERALD_TEST_NATS_URL").is_ok_and(|v| !v.is_empty());
    if !on {
        eprintln!("skipped: HERALD_TEST_NATS_URL is not set");
    }
    on
}

fn enabled() -> bool {
    let on = std::env::var("HERALD_TEST_REDIS_URL").is_ok_and(|v| !v.is_empty());
    if !on {
        eprintln!("skipped: HERALD_TEST_REDIS_URL is not set");
    }
    on
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
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (SIGKILL) on drop, with its stderr kept.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
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
        Proc { child, stderr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throwaway Redis with an append-only file fsynced at every write.
struct Redis {
    proc: Proc,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    async fn start(dir: &Path, port: u16) -> Redis {
        let proc = Proc::spawn(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--save", "", "--protected-mode", "no"])
                .arg("--dir")
                .arg(dir),
        );
        let redis = Redis {
            proc,
            port,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && matches!(s.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"+PONG"))
                {
                    return redis;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start: {}", redis.proc.stderr());
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn restart(&mut self) {
        self.proc.kill();
        *self = Redis::start(&self.dir.clone(), self.port).await;
    }
}

/// A throwaway PostgreSQL cluster (`initdb`, then `postgres` as the
/// `postgres` user), durable as PostgreSQL is by default (fsync,
/// synchronous commit).
struct Postgres {
    proc: Proc,
    port: u16,
    data: PathBuf,
}

impl Postgres {
    /// The server binaries of the newest PostgreSQL installed.
    fn bin(name: &str) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .collect();
        dirs.sort();
        dirs.pop().expect("a PostgreSQL version").join(name)
    }

    fn ids() -> (u32, u32) {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        (id("-u"), id("-g"))
    }

    async fn start(data: &Path, port: u16) -> Postgres {
        use std::os::unix::process::CommandExt;
        let (uid, gid) = Self::ids();
        if !data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(data).unwrap();
            std::os::unix::fs::chown(data, Some(uid), Some(gid)).unwrap();
            let ok = Command::new(Self::bin("initdb"))
                .arg("-D")
                .arg(data)
                .args(["-U", "postgres", "--auth=trust", "-N"])
                .uid(uid)
                .gid(gid)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "initdb failed");
        }
        let mut last = String::new();
        for _ in 0..50 {
            let mut proc = Proc::spawn(
                Command::new(Self::bin("postgres"))
                    .arg("-D")
                    .arg(data)
                    .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                    .arg("-k")
                    .arg(data)
                    .uid(uid)
                    .gid(gid),
            );
            let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = proc.child.try_wait() {
                    break;
                }
                if tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .is_ok()
                {
                    return Postgres {
                        proc,
                        port,
                        data: data.to_owned(),
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last = proc.stderr();
            proc.kill();
            // The killed server's processes may still hold its memory.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("postgres did not start: {last}");
    }

    /// The postmaster and its processes.
    fn pids(&self) -> Vec<u32> {
        let pid = self.proc.child.id();
        let out = Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .unwrap();
        let mut pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        pids.push(pid);
        pids
    }
}

/// A throwaway NATS server with JetStream and a store directory of its own.
struct Nats {
    proc: Proc,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    async fn start(dir: &Path, port: u16) -> Nats {
        // Debian installs it in /usr/sbin, not always on a user's PATH.
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let proc = Proc::spawn(
            Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir),
        );
        let nats = Nats {
            proc,
            port,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                {
                    if String::from_utf8_lossy(&buf[..n]).contains("\"jetstream\":true") {
                        return nats;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not start: {}", nats.proc.stderr());
    }

    async fn restart(&mut self) {
        self.proc.kill();
        *self = Nats::start(&self.dir.clone(), self.port).await;
    }
}

/// The engine server a cluster shares, started, killed and restarted by
/// the test.
enum Backend {
    Redis(Redis),
    Postgres(Postgres),
    Nats(Nats),
}

impl Backend {
    fn url(&self) -> String {
        match self {
            Backend::Redis(r) => r.url(),
            Backend::Postgres(p) => format!("postgres://postgres@127.0.0.1:{}/postgres", p.port),
            Backend::Nats(n) => format!("nats://127.0.0.1:{}", n.port),
        }
    }

    /// SIGKILL (every process of the server).
    fn kill(&mut self) {
        match self {
            Backend::Redis(r) => r.proc.kill(),
            Backend::Nats(n) => n.proc.kill(),
            Backend::Postgres(p) => {
                // Some of its processes may end before their turn.
                for pid in p.pids() {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                p.proc.kill();
            }
        }
    }

    async fn restart(&mut self) {
        match self {
            Backend::Redis(r) => r.restart().await,
            Backend::Nats(n) => n.restart().await,
            Backend::Postgres(p) => {
                p.proc.kill();
                *p = Postgres::start(&p.data.clone(), p.port).await;
            }
        }
    }

    /// Hangs the server (SIGSTOP) or resumes it (SIGCONT).
    fn freeze(&self, on: bool) {
        let sig = if on { "-STOP" } else { "-CONT" };
        let pids = match self {
            Backend::Redis(r) => vec![r.proc.child.id()],
            Backend::Nats(n) => vec![n.proc.child.id()],
            Backend::Postgres(p) => p.pids(),
        };
        for pid in pids {
            signal(pid, sig);
        }
    }
}

/// Removes every key of a namespace from the machine's Redis.
async fn remove_redis_namespace(url: &str, namespace: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{namespace}}}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

/// Sends a signal to a process this test started (it may have ended).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// One `herald serve` node.
struct Node {
    proc: Proc,
    addr: String,
}

impl Node {
    async fn start(redis_url: &str, namespace: &str) -> Node {
        Node::start_with(redis_url, namespace, &[]).await
    }

    async fn start_with(redis_url: &str, namespace: &str, extra: &[&str]) -> Node {
        let mut last = String::new();
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let proc = Proc::spawn(
                Command::new(BIN)
                    .args(["serve", "--addr", &addr, "--engine", redis_url])
                    .args(["--namespace", namespace])
                    .args(if redis_url.starts_with("redis") {
                        ["--redis-timeout", "1s"]
                    } else if redis_url.starts_with("nats") {
                        ["--nats-timeout", "1s"]
                    } else {
                        ["--postgres-timeout", "1s"]
                    })
                    .args(["--heartbeat", "1s", "--log", "warn"])
                    .args(["--publisher-jwt", SECRET, "--anonymous", "false"])
                    .args(extra)
                    .env_remove("HERALD_CONFIG"),
            );
            let mut node = Node { proc, addr };
            match node.wait_ready().await {
                Ok(()) => return node,
                Err(e) => last = e,
            }
        }
        panic!("a node did not start: {last}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = client();
        let url = format!("http://{}/readyz", self.addr);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return Err(format!("exited with {status}: {}", self.proc.stderr()));
            }
            let probe = http.get(&url).timeout(Duration::from_millis(500)).send();
            if let Ok(res) = probe.await {
                if res.status() == reqwest::StatusCode::OK {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!("not ready within 15 s: {}", self.proc.stderr()))
    }

    fn hub_url(&self) -> String {
        format!("http://{}/.well-known/mercure", self.addr)
    }
}

/// What one resuming subscriber saw.
#[derive(Debug, Default)]
struct Watch {
    /// (id, data) in the order received, over every connection.
    seen: Vec<(String, String)>,
    /// When each stream after the first was opened.
    reconnects: Vec<Instant>,
    /// When each heartbeat comment arrived.
    heartbeats: Vec<Instant>,
}

/// Subscribes to every topic on `urls[first]`, and after each end of
/// stream on the next URL, resuming with the last id seen, until `stop`.
async fn resuming_subscriber(
    urls: Vec<String>,
    first: usize,
    stop: Arc<AtomicBool>,
    watch: Arc<Mutex<Watch>>,
    connected: Arc<AtomicUsize>,
) {
    let http = client();
    let token = token();
    let mut at = first;
    let mut opened = 0usize;
    while !stop.load(Ordering::Acquire) {
        let url = &urls[at % urls.len()];
        let last = watch.lock().unwrap().seen.last().map(|(id, _)| id.clone());
        let mut req = http.get(url).query(&[("topic", "*")]).bearer_auth(&token);
        if let Some(id) = &last {
            req = req.header("Last-Event-ID", id);
        }
        let res = match req.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => r,
            _ => {
                at += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if opened == 0 {
            connected.fetch_add(1, Ordering::AcqRel);
        } else {
            watch.lock().unwrap().reconnects.push(Instant::now());
        }
        opened += 1;
        let mut stream = res.bytes_stream();
        let mut parser = Parser::new();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
            match next {
                Err(_) if stop.load(Ordering::Acquire) => return,
                Err(_) => continue,
                Ok(Some(Ok(chunk))) => {
                    let mut w = watch.lock().unwrap();
                    for item in parser.feed(&chunk) {
                        match item {
                            Item::Event(e) => w.seen.push((e.id, e.data)),
                            Item::Comment(_) => w.heartbeats.push(Instant::now()),
                        }
                    }
                }
                Ok(Some(Err(_)) | None) => break,
            }
        }
        at += 1;
    }
}

/// What one publisher got acknowledged.
#[derive(Debug, Default)]
struct Acks {
    acked: Vec<String>,
}

/// Publishes `p:0`, `p:1`, … round-robin over the nodes until `stop`,
/// retrying an update on the next node until it is acknowledged (`200`, or
/// `409`: an earlier try was stored).
async fn publisher(p: usize, urls: Vec<String>, stop: Arc<AtomicBool>) -> Acks {
    let http = client();
    let token = token();
    let mut acks = Acks::default();
    let mut at = p;
    for seq in 0.. {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let id = format!("urn:cluster:{p}:{seq}");
        loop {
            let url = &urls[at % urls.len()];
            at += 1;
            let res = http
                .post(url)
                .bearer_auth(&token)
                .form(&[
                    ("topic", format!("https://example.com/p/{p}").as_str()),
                    ("id", id.as_str()),
                    ("data", &format!("{p}:{seq}")),
                ])
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match res.map(|r| r.status().as_u16()) {
                Ok(200 | 409) => {
                    acks.acked.push(id.clone());
                    break;
                }
                _ if stop.load(Ordering::Acquire) => return acks,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acks
}

/// Everything retained, replayed from `earliest` until 1.5 s pass without
/// an event (heartbeats do not count).
async fn history(hub_url: &str) -> Vec<(String, String)> {
    let res = client()
        .get(hub_url)
        .query(&[("topic", "*")])
        .header("Last-Event-ID", "earliest")
        .bearer_auth(token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let mut stream = res.bytes_stream();
    let mut parser = Parser::new();
    let mut out = Vec::new();
    let mut last_event = Instant::now();
    while last_event.elapsed() < Duration::from_millis(1500) {
        let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_millis(1500), stream.next()).await
        else {
            break;
        };
        for item in parser.feed(&chunk) {
            if let Item::Event(e) = item {
                out.push((e.id, e.data));
                last_event = Instant::now();
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_a_killed_node_and_a_redis_restart() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), free_port()).await;
    three_nodes_survive(Backend::Redis(redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_a_killed_node_and_a_postgres_restart() {
    if !postgres_enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("data"), free_port()).await;
    three_nodes_survive(Backend::Postgres(pg)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_a_killed_node_and_a_nats_restart() {
    if !nats_enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), free_port()).await;
    three_nodes_survive(Backend::Nats(nats)).await;
}

/// The same run on any engine server: see the module documentation.
async fn three_nodes_survive(mut server: Backend) {
    let namespace = "cluster";
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(&server.url(), namespace).await);
    }
    let urls: Vec<String> = nodes.iter().map(Node::hub_url).collect();

    let stop_subs = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut watches = Vec::new();
    let mut sub_tasks = Vec::new();
    for i in 0..6 {
        let watch = Arc::new(Mutex::new(Watch::default()));
        watches.push((i % 3, watch.clone()));
        sub_tasks.push(tokio::spawn(resuming_subscriber(
            urls.clone(),
            i % 3,
            stop_subs.clone(),
            watch,
            connected.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected.load(Ordering::Acquire) < 6 {
        assert!(Instant::now() < deadline, "subscribers did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stop_pubs = Arc::new(AtomicBool::new(false));
    let pub_tasks: Vec<_> = (0..6)
        .map(|p| tokio::spawn(publisher(p, urls.clone(), stop_pubs.clone())))
        .collect();

    // A node dies mid-stream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[2].proc.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The engine's server dies mid-stream.
    server.kill();
    let down_at = Instant::now();
    let http = client();
    let started = Instant::now();
    let res = http
        .post(&urls[0])
        .bearer_auth(token())
        .form(&[("topic", "https://example.com/probe"), ("data", "x")])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(res.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert!(
        took < Duration::from_secs(4),
        "a publish took {took:?} to fail"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = http
            .get(format!("http://{}/readyz", nodes[1].addr))
            .send()
            .await
            .unwrap();
        if ready.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {}",
            ready.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.restart().await;
    let up_at = Instant::now();
    for n in &mut nodes[..2] {
        n.wait_ready().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The server hangs (SIGSTOP): nothing refuses the connection, and a publish
    // still answers 503 within the timeout (1 s) and a little.
    server.freeze(true);
    let started = Instant::now();
    let res = http
        .post(&urls[1])
        .bearer_auth(token())
        .form(&[("topic", "https://example.com/probe"), ("data", "x")])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    server.freeze(false);
    assert_eq!(res.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert!(
        took < Duration::from_millis(2500),
        "a publish to a hung Redis took {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop_pubs.store(true, Ordering::Release);
    let mut acked = Vec::new();
    for t in pub_tasks {
        acked.extend(t.await.unwrap().acked);
    }
    assert!(
        acked.len() > 100,
        "only {} updates acknowledged",
        acked.len()
    );

    let full = history(&urls[0]).await;
    let ids: Vec<&str> = full.iter().map(|(id, _)| id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "the history holds a duplicate");
    for id in &acked {
        assert!(
            unique.contains(id.as_str()),
            "acknowledged {id} is not in the history"
        );
    }
    // Each publisher's updates are in its publishing order.
    let mut next: HashMap<&str, u64> = HashMap::new();
    for (_, data) in &full {
        if let Some((p, seq)) = data.split_once(':') {
            let seq: u64 = seq.parse().unwrap();
            let expected = next.entry(p).or_insert(0);
            assert!(seq >= *expected, "publisher {p}: {seq} after {expected}");
            *expected = seq + 1;
        }
    }

    // Every subscriber ends with exactly that history.
    let deadline = Instant::now() + Duration::from_secs(15);
    for (_, w) in &watches {
        while w.lock().unwrap().seen.len() < full.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop_subs.store(true, Ordering::Release);
    for t in sub_tasks {
        t.await.unwrap();
    }
    for (i, (home, w)) in watches.iter().enumerate() {
        let w = w.lock().unwrap();
        assert_eq!(
            w.seen.len(),
            full.len(),
            "subscriber {i} (node {home}) saw {} of {} updates",
            w.seen.len(),
            full.len()
        );
        assert!(
            w.seen == full,
            "subscriber {i} saw another sequence than the history"
        );
        if *home != 2 {
            // The live nodes kept their streams through the Redis outage,
            // with heartbeats.
            assert!(
                w.reconnects.iter().all(|t| *t < down_at || *t > up_at),
                "subscriber {i} reconnected while the server was down"
            );
            assert!(
                w.heartbeats.iter().any(|t| *t > down_at && *t < up_at),
                "subscriber {i} got no heartbeat while the server was down"
            );
        } else {
            assert!(
                !w.reconnects.is_empty(),
                "subscriber {i} of the killed node never moved"
            );
        }
    }
    eprintln!(
        "{} updates acknowledged, {} in history, 6 subscribers saw all of them",
        acked.len(),
        full.len()
    );
}

/// The shipped nginx configuration, pointed at these nodes and this port.
fn nginx_config(nodes: &[Node], port: u16, prefix: &Path) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/herald.conf");
    let mut conf = std::fs::read_to_string(&shipped).unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let placeholder = format!("127.0.0.1:{}", 8081 + i);
        assert!(
            conf.contains(&placeholder),
            "{placeholder} not in {shipped:?}"
        );
        conf = conf.replace(&placeholder, &n.addr);
    }
    assert!(conf.contains("listen 8080;"));
    conf = conf.replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
    let main = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
         error_log {p}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
         {conf}\n}}\n",
        p = prefix.display()
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_behind_nginx_gets_what_any_node_takes() {
    if !enabled() {
        return;
    }
    let url = std::env::var("HERALD_TEST_REDIS_URL").unwrap();
    let namespace = format!("nginx-test-{}", std::process::id());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(&url, &namespace).await);
    }
    let prefix = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = nginx_config(&nodes, port, prefix.path());
    let nginx = Proc::spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf),
    );
    let front = format!("http://127.0.0.1:{port}/.well-known/mercure");
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await;
        if up.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            nginx.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Three subscribers through nginx: round-robin puts them on different
    // nodes, with no affinity.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let res = http
            .get(&front)
            .query(&[("topic", "*")])
            .bearer_auth(token())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        streams.push((res.bytes_stream(), Parser::new(), Vec::<String>::new()));
    }
    // One update published straight to each node.
    for (i, n) in nodes.iter().enumerate() {
        let res = http
            .post(n.hub_url())
            .bearer_auth(token())
            .form(&[
                ("topic", "https://example.com/n"),
                ("data", &format!("via node {i}")),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::OK);
    }
    for (stream, parser, got) in &mut streams {
        while got.len() < 3 {
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("an update did not come through nginx in time")
                .unwrap()
                .unwrap();
            for item in parser.feed(&chunk) {
                if let Item::Event(e) = item {
                    got.push(e.data);
                }
            }
        }
        assert_eq!(got, &["via node 0", "via node 1", "via node 2"]);
    }
    // The test's namespace leaves nothing behind in the machine's Redis.
    drop(streams);
    drop(nginx);
    drop(nodes);
    remove_redis_namespace(&url, &namespace).await;
}

/// The subscriptions API of one node lists another node's subscribers;
/// when that node is killed, its subscriptions leave the listing within
/// the documented 10 s (plus a reaper's tick) and a surviving node
/// publishes their `active: false` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_subscriptions_end_on_the_other_nodes() {
    if !enabled() {
        return;
    }
    let url = std::env::var("HERALD_TEST_REDIS_URL").unwrap();
    let namespace = format!("subs-test-{}", std::process::id());
    killed_nodes_subscriptions_end(&url, &namespace).await;
    remove_redis_namespace(&url, &namespace).await;
}

/// The same on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_subscriptions_end_on_the_other_nodes_postgres() {
    if !postgres_enabled() {
        return;
    }
    let url = std::env::var("HERALD_TEST_POSTGRES_URL").unwrap();
    let namespace = format!("subs_test_{}", std::process::id());
    killed_nodes_subscriptions_end(&url, &namespace).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{namespace}\" CASCADE"))
        .await
        .unwrap();
}

/// The same on NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_subscriptions_end_on_the_other_nodes_nats() {
    if !nats_enabled() {
        return;
    }
    let url = std::env::var("HERALD_TEST_NATS_URL").unwrap();
    let namespace = format!("subs_test_{}", std::process::id());
    killed_nodes_subscriptions_end(&url, &namespace).await;
    let config = herald::engine::nats::NatsConfig {
        namespace,
        ..herald::engine::nats::NatsConfig::new(url)
    };
    let engine = herald::engine::nats::NatsEngine::connect(config)
        .await
        .unwrap();
    engine.destroy_namespace().await.unwrap();
}

async fn killed_nodes_subscriptions_end(url: &str, namespace: &str) {
    let (url, namespace) = (url.to_owned(), namespace.to_owned());
    let mut a = Node::start_with(&url, &namespace, &["--subscriptions"]).await;
    let b = Node::start_with(&url, &namespace, &["--subscriptions"]).await;
    let http = client();
    // B watches the subscription events of topic t.
    let events = http
        .get(b.hub_url())
        .query(&[("topic", "/.well-known/mercure/subscriptions/t/{subscriber}")])
        .bearer_auth(token())
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), reqwest::StatusCode::OK);
    let mut events = events.bytes_stream();
    // A subscriber of t on A.
    let on_a = http
        .get(a.hub_url())
        .query(&[("topic", "t")])
        .bearer_auth(token())
        .send()
        .await
        .unwrap();
    assert_eq!(on_a.status(), reqwest::StatusCode::OK);
    let listed = |hub: String| {
        let http = http.clone();
        async move {
            let v: serde_json::Value = http
                .get(format!("{hub}/subscriptions/t"))
                .bearer_auth(token())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["subscriptions"].as_array().unwrap().len()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while listed(b.hub_url()).await != 1 {
        assert!(Instant::now() < deadline, "B never listed A's subscriber");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A's active: true event is out before A dies (A publishes it in the
    // background, and may retry it while the engine is slow).
    let mut parser = Parser::new();
    let mut states = Vec::new();
    while !states.contains(&true) {
        let chunk = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("no active: true event within 20 s")
            .unwrap()
            .unwrap();
        for item in parser.feed(&chunk) {
            if let Item::Event(e) = item {
                let doc: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                states.push(doc["active"].as_bool().unwrap());
            }
        }
    }
    a.proc.kill();
    let killed = Instant::now();
    // Out of the listing within LIVENESS (10 s), give or take a refresh.
    while listed(b.hub_url()).await != 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(13),
            "still listed after 13 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And B (the only survivor) publishes its active: false event.
    while !states.contains(&false) {
        let chunk = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("no active: false event within 20 s")
            .unwrap()
            .unwrap();
        for item in parser.feed(&chunk) {
            if let Item::Event(e) = item {
                let doc: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                states.push(doc["active"].as_bool().unwrap());
            }
        }
    }
    assert_eq!(states, [true, false]);
    drop(on_a);
    drop(b);
}

/// History lost under a node (here: the namespace's keys deleted, as a
/// flush would) ends its streams cleanly; a client resuming with its last
/// id is told `earliest`, and gets what the new log holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_history_ends_streams_and_resumes_with_earliest() {
    if !enabled() {
        return;
    }
    let url = std::env::var("HERALD_TEST_REDIS_URL").unwrap();
    let namespace = format!("gap-test-{}", std::process::id());
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{{{namespace}}}:*");
    let lose = move || {
        let (mut conn, pattern) = (conn.clone(), pattern.clone());
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
        .boxed()
    };
    lost_history_resumes_with_earliest(&url, &namespace, lose).await;
    remove_redis_namespace(&url, &namespace).await;
}

/// The same on NATS: the namespace's streams are deleted under the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_history_ends_streams_and_resumes_with_earliest_nats() {
    if !nats_enabled() {
        return;
    }
    use herald::engine::nats::{NatsConfig, NatsEngine};
    let url = std::env::var("HERALD_TEST_NATS_URL").unwrap();
    let namespace = format!("gap_test_{}", std::process::id());
    let config = NatsConfig {
        namespace: namespace.clone(),
        ..NatsConfig::new(url.clone())
    };
    let lose = move || {
        let config = config.clone();
        async move {
            let other = NatsEngine::connect(config).await.unwrap();
            other.destroy_namespace().await.unwrap();
        }
        .boxed()
    };
    lost_history_resumes_with_earliest(&url, &namespace, lose.clone()).await;
    lose().await;
}

/// A node's log is lost while a subscriber listens (`lose`): the stream
/// ends, publishing goes on in a new log, and a client resuming with an id
/// of the lost history is told `earliest`.
async fn lost_history_resumes_with_earliest(
    url: &str,
    namespace: &str,
    lose: impl Fn() -> futures_util::future::BoxFuture<'static, ()>,
) {
    let node = Node::start(url, namespace).await;
    let http = client();
    let publish = |data: &'static str| {
        let http = http.clone();
        let hub = node.hub_url();
        async move {
            let res = http
                .post(hub)
                .bearer_auth(token())
                .form(&[("topic", "https://example.com/g"), ("data", data)])
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), reqwest::StatusCode::OK);
            res.text().await.unwrap()
        }
    };
    let stream = http
        .get(node.hub_url())
        .query(&[("topic", "*")])
        .bearer_auth(token())
        .send()
        .await
        .unwrap();
    let old_id = publish("before").await;
    let mut body = stream.bytes_stream();
    let mut parser = Parser::new();
    let mut seen = Vec::new();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), body.next()).await {
            Ok(Some(Ok(chunk))) => {
                for item in parser.feed(&chunk) {
                    if let Item::Event(e) = item {
                        seen.push(e.data);
                        // The log disappears under the node.
                        lose().await;
                    }
                }
            }
            Ok(None) => break true,
            Ok(Some(Err(_))) => break true,
            Err(_) => break false,
        }
    };
    assert_eq!(seen, ["before"]);
    assert!(ended, "the stream did not end after the history was lost");
    // Publishing works on the new log.
    let mut new_id = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while new_id.is_none() {
        assert!(
            Instant::now() < deadline,
            "no publish accepted on the new log"
        );
        // On a new connection: the ended stream's said `connection:
        // close`, so the client never pooled it.
        let res = http
            .post(node.hub_url())
            .bearer_auth(token())
            .form(&[("topic", "https://example.com/g"), ("data", "after")])
            .send()
            .await
            .unwrap();
        if res.status() == reqwest::StatusCode::OK {
            new_id = Some(res.text().await.unwrap());
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Resuming with the id from the lost history: told `earliest`, given
    // the new log.
    let res = http
        .get(node.hub_url())
        .query(&[("topic", "*")])
        .header("Last-Event-ID", &old_id)
        .bearer_auth(token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["last-event-id"], "earliest");
    let mut body = res.bytes_stream();
    let mut parser = Parser::new();
    let mut got = Vec::new();
    while got.is_empty() {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for item in parser.feed(&chunk) {
            if let Item::Event(e) = item {
                got.push((e.id, e.data));
            }
        }
    }
    assert_eq!(got, [(new_id.unwrap(), "after".to_owned())]);
    let gaps = http
        .get(format!("http://{}/metrics", node.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        gaps.lines()
            .any(|l| l.starts_with("herald_engine_gaps_total 1")),
        "{gaps}"
    );
    drop(node);
}
