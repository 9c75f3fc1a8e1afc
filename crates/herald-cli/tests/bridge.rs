//! Bridges against the machine's PostgreSQL, Redis, NATS, Mosquitto and
//! RabbitMQ, and a Kafka-protocol broker (HERALD_TEST_POSTGRES_URL,
//! _REDIS_URL, _NATS_URL, _MQTT_URL, _AMQP_URL, _KAFKA_URL; each test says
//! it was skipped without its variable) and a
//! real `herald serve`, read with a real SSE parser: `herald bridge` in
//! the foreground and `[[bridge]]` sections run by the hub; payloads
//! mapped to topics, bad ones to the dead-letter log and `/metrics`; for
//! every at-least-once source, a hub killed mid-stream and restarted
//! that loses and repeats nothing; and two nodes sharing one consumer
//! group.

mod common;

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use herald::auth::{sign, Claims, KeyConfig, MercureClaim};
use herald_protocol::sse::{Item, Parser};

const BIN: &str = env!("CARGO_BIN_EXE_herald");
const SECRET: &str = "bridge-test-secret-bridge-test-secret";

fn pg_url() -> Option<String> {
    let url = std::env::var("HERALD_TEST_POSTGRES_URL").ok();
    if url.is_none() {
        eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    }
    url
}

fn publisher_token() -> String {
    let claims = Claims {
        mercure: MercureClaim {
            publish: Some(vec!["*".into()]),
            ..MercureClaim::default()
        },
        ..Claims::default()
    };
    sign(&claims, &KeyConfig::hmac(SECRET)).unwrap()
}

/// A child process killed on drop, its stderr kept.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
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
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push_str(&text);
            }
        });
        Proc { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops it as a service manager does (SIGTERM), and waits until it
    /// has exited.
    fn terminate(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "{exit}: {}", self.stderr());
        self.stderr()
    }

    /// Waits until stderr holds `needle`.
    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within 15 s: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hub on a free port: its process and its URL.
async fn hub() -> (Proc, String) {
    let p = Proc::spawn(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--engine",
        "memory",
        "--publisher-jwt",
        SECRET,
        "--log",
        "info",
    ]);
    p.wait_for("herald listening on").await;
    let addr = p.stderr().lines().find_map(common::listening_addr).unwrap();
    (p, format!("http://{addr}/.well-known/mercure"))
}

/// A hub on a free port run with `config` (TOML, `addr` and the key
/// added): its process and its URL.
async fn hub_with(dir: &std::path::Path, config: &str) -> (Proc, String) {
    let path = dir.join("herald.toml");
    std::fs::write(
        &path,
        format!("addr = \"127.0.0.1:0\"\npublisher_jwt = \"{SECRET}\"\n{config}"),
    )
    .unwrap();
    let p = Proc::spawn(&["serve", "--config", path.to_str().unwrap()]);
    p.wait_for("herald listening on").await;
    let addr = p.stderr().lines().find_map(common::listening_addr).unwrap();
    (p, format!("http://{addr}/.well-known/mercure"))
}

/// Waits until `/metrics` counts `want` events of `outcome` for `bridge`
/// (an event is counted just after the hub appended it, so a subscriber
/// may see it first), and fails if it counts another number for 10 s.
async fn wait_metric(hub: &str, bridge: &str, outcome: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = bridge_metric(hub, bridge, outcome).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "herald_bridge_events_total{{bridge={bridge:?},outcome={outcome:?}}} is {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/metrics`' value of `herald_bridge_events_total` for a bridge and
/// outcome (0 when absent).
async fn bridge_metric(hub: &str, bridge: &str, outcome: &str) -> u64 {
    let text = reqwest::get(hub.replace("/.well-known/mercure", "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series =
        format!("herald_bridge_events_total{{bridge=\"{bridge}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// The (id, data) of the events on `topic`, as they come.
async fn subscribe(
    hub: &str,
    topic: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
    subscribe_from(hub, topic, None).await
}

/// As [`subscribe`], resuming after `last` (`earliest`: all history).
async fn subscribe_from(
    hub: &str,
    topic: &str,
    last: Option<&str>,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
    let mut query = vec![("topic", topic)];
    if let Some(last) = last {
        query.push(("lastEventID", last));
    }
    let res = reqwest::Client::new()
        .get(hub)
        .query(&query)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut parser = Parser::new();
        while let Some(Ok(chunk)) = body.next().await {
            for item in parser.feed(&chunk) {
                if let Item::Event(e) = item {
                    let _ = tx.send((e.id, e.data));
                }
            }
        }
    });
    rx
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("the stream open")
}

async fn postgres(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn notify_payloads_become_updates_and_bad_ones_dead_letters() {
    let Some(pg) = pg_url() else { return };
    let (_hub, url) = hub().await;
    let channel = unique("orders");
    let token = publisher_token();
    let bridge = Proc::spawn(&[
        "bridge",
        "postgres",
        "--postgres",
        &pg,
        "--channel",
        &channel,
        "--hub",
        &url,
        "--token",
        &token,
        "--payload",
        "json",
        "--topic",
        "https://example.com/orders/{order}",
        "--type",
        "order",
    ]);
    bridge.wait_for("source listening").await;
    let mut events = subscribe(&url, "https://example.com/orders/{order}").await;
    let db = postgres(&pg).await;
    let notify = |payload: &str| format!("NOTIFY {channel}, '{payload}'");
    db.batch_execute(&notify(r#"{"order": 7, "data": "shipped"}"#))
        .await
        .unwrap();
    assert_eq!(next(&mut events).await.1, "shipped");
    db.batch_execute(&notify("not json")).await.unwrap();
    db.batch_execute(&notify(r#"{"data": "no order for the topic"}"#))
        .await
        .unwrap();
    db.batch_execute(&notify(r#"{"order": 8, "data": {"total": 3}}"#))
        .await
        .unwrap();
    assert_eq!(next(&mut events).await.1, r#"{"total":3}"#);
    bridge.wait_for("herald::dead_letter").await;
    bridge.wait_for("not JSON").await;
    bridge.wait_for("no order for the topic template").await;

    // A token the hub refuses: nothing will pass, so the bridge exits.
    let mut refused = Proc::spawn(&[
        "bridge",
        "postgres",
        "--postgres",
        &pg,
        "--channel",
        &channel,
        "--hub",
        &url,
        "--token",
        "not-a-token",
        "--topic",
        "https://example.com/x",
    ]);
    refused.wait_for("source listening").await;
    db.batch_execute(&notify("hello")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = refused.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running: {}",
            refused.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(1));
    assert!(
        refused.stderr().contains("refused the bridge's token"),
        "{}",
        refused.stderr()
    );
}

#[tokio::test]
async fn an_outbox_is_published_once_across_a_killed_bridge() {
    let Some(pg) = pg_url() else { return };
    let (_hub, url) = hub().await;
    let table = unique("outbox");
    let token = publisher_token();
    let args = |table: &str| -> Vec<String> {
        [
            "bridge",
            "postgres",
            "--postgres",
            &pg,
            "--outbox",
            table,
            "--hub",
            &url,
            "--token",
            &token,
            "--topic",
            "https://example.com/log/{channel}",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let spawn = |table: &str| {
        let a = args(table);
        Proc::spawn(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut events = subscribe(&url, "https://example.com/log/app").await;
    let db = postgres(&pg).await;

    let bridge = spawn(&table);
    bridge.wait_for("reading the outbox").await;
    // Rows keep coming, every 10 ms, while the bridge is killed
    // (SIGKILL: no goodbye) after the fifth is out, and while it is down.
    let insert = format!("INSERT INTO {table} (channel, payload) VALUES ('app', $1)");
    let writer = {
        let (pg, insert) = (pg.clone(), insert.clone());
        tokio::spawn(async move {
            let db = postgres(&pg).await;
            for i in 0..40 {
                db.execute(insert.as_str(), &[&format!("row {i}")])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next(&mut events).await);
    }
    drop(bridge);
    writer.await.unwrap();
    // One more row, whose update the hub already holds: published just
    // before a crash, and not yet deleted.
    let row = db
        .query_one(
            format!("INSERT INTO {table} (channel, payload) VALUES ('app', 'row 40') RETURNING id")
                .as_str(),
            &[],
        )
        .await
        .unwrap();
    let id: i64 = row.get(0);
    let early = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .json(&serde_json::json!([{
            "topics": ["https://example.com/log/app"], "data": "row 40", "id": format!("postgres:{table}:{id}")
        }]))
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 200);

    let bridge = spawn(&table);
    bridge.wait_for("reading the outbox").await;
    while seen.len() < 41 {
        seen.push(next(&mut events).await);
    }
    let data: Vec<&str> = seen.iter().map(|(_, d)| d.as_str()).collect();
    let want: Vec<String> = (0..41).map(|i| format!("row {i}")).collect();
    // Row 40 went out before the others that were waiting: order holds
    // for the bridge's own publishes.
    let mut sorted = data.clone();
    sorted.sort_by_key(|d| d[4..].parse::<u32>().unwrap());
    assert_eq!(sorted, want, "every row once");
    let ids: std::collections::HashSet<&str> = seen.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids.len(), 41, "no update twice");
    // Nothing more comes, and the table is empty.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.recv())
            .await
            .is_err(),
        "an update came twice"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: i64 = db
            .query_one(format!("SELECT count(*) FROM {table}").as_str(), &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} rows left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(bridge);
    db.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = Command::new(BIN)
        .args([
            "bridge",
            "postgres",
            "--postgres",
            "nonsense://x",
            "--channel",
            "c",
            "--token",
            "t",
            "--topic",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid connection string"), "{err}");
    let out = Command::new(BIN)
        .args([
            "bridge",
            "postgres",
            "--postgres",
            "postgres://x",
            "--outbox",
            "Bad-Name",
            "--token",
            "t",
            "--topic",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a table name is"), "{err}");
    let out = Command::new(BIN)
        .args([
            "bridge",
            "kafka",
            "--kafka",
            "no-port",
            "--subscribe",
            "t",
            "--group",
            "g",
            "--token",
            "t",
            "--topic",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected HOST:PORT"), "{err}");
}

#[tokio::test]
async fn a_bridge_section_runs_inside_the_hub_with_its_rights_and_metrics() {
    let Some(pg) = pg_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let table = unique("orders_outbox");
    let (hub, url) = hub_with(
        dir.path(),
        &format!(
            "engine = \"memory\"\n\
             [[bridge]]\nsource = \"postgres\"\nname = \"orders\"\npostgres = \"{pg}\"\n\
             outbox = \"{table}\"\npayload = \"json\"\n\
             topic = \"https://example.com/orders/{{order}}\"\n\
             publish = [\"https://example.com/orders/{{id}}\"]\n"
        ),
    )
    .await;
    hub.wait_for("reading the outbox").await;
    let mut events = subscribe(&url, "https://example.com/orders/{order}").await;
    let db = postgres(&pg).await;
    let insert = format!("INSERT INTO {table} (payload) VALUES ($1)");
    for payload in [
        r#"{"order": 1, "data": "first"}"#,
        "not json",
        // Outside the bridge's `publish` rights: refused as a publisher
        // holding them would be (403), so dead-lettered.
        r#"{"topic": "https://example.com/secret", "data": "x"}"#,
        // The hub's own namespace: refused by the publishing rules.
        r#"{"topic": "/.well-known/mercure/subscriptions/x", "data": "x"}"#,
        r#"{"order": 2, "data": "second"}"#,
    ] {
        db.execute(insert.as_str(), &[&payload]).await.unwrap();
    }
    assert_eq!(next(&mut events).await.1, "first");
    assert_eq!(next(&mut events).await.1, "second");
    wait_metric(&url, "orders", "published", 2).await;
    wait_metric(&url, "orders", "dead_letter", 3).await;
    // The log is read from the hub's stderr as it comes: a line may
    // arrive after the counter that counts its event.
    hub.wait_for("herald::dead_letter").await;
    hub.wait_for("not JSON").await;
    hub.wait_for("403").await;
    drop(hub);
    db.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}

/// The hub, and its bridge with it, killed (SIGKILL) mid-stream and
/// started again on its durable store: `produce(i)` is called for rows
/// 0 to 39, every 10 ms, while the hub is killed after the fifth arrives,
/// and each must be in the history of `https://example.com/log/app`
/// exactly once, in order. `bridge` is the `[[bridge]]` section, `ready`
/// the log line that says its source is read.
async fn survives_a_killed_hub<F, Fut>(bridge: &str, ready: &str, produce: F)
where
    F: Fn(u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    survives_a_killed_hub_with(bridge, ready, produce, true).await;
}

/// As [`survives_a_killed_hub`]; without `exactly_once`, a row may be
/// in the history twice (but in order of its first time there).
async fn survives_a_killed_hub_with<F, Fut>(
    bridge: &str,
    ready: &str,
    produce: F,
    exactly_once: bool,
) where
    F: Fn(u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "engine = \"local\"\ndata_dir = \"{}\"\n[[bridge]]\n{bridge}",
        dir.path().join("data").display()
    );
    let (hub, url) = hub_with(dir.path(), &config).await;
    hub.wait_for(ready).await;
    let mut events = subscribe(&url, "https://example.com/log/app").await;
    let writer = tokio::spawn(async move {
        for i in 0..40 {
            produce(i).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut before = Vec::new();
    for _ in 0..5 {
        before.push(next(&mut events).await);
    }
    drop(hub);
    writer.await.unwrap();
    let (hub, url) = hub_with(dir.path(), &config).await;
    hub.wait_for(ready).await;
    let mut history = subscribe_from(&url, "https://example.com/log/app", Some("earliest")).await;
    let mut seen: Vec<String> = Vec::new();
    let mut twice = 0;
    while seen.len() < 40 {
        let Ok(Some((_, data))) =
            tokio::time::timeout(Duration::from_secs(10), history.recv()).await
        else {
            panic!(
                "rows missing after the restart; seen {seen:?}\nbefore the kill: {before:?}\nthe restarted hub said:\n{}",
                hub.stderr()
            );
        };
        if exactly_once || !seen.contains(&data) {
            seen.push(data);
        } else {
            twice += 1;
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), history.recv())
            .await
            .is_err(),
        "a row is in the history twice"
    );
    let want: Vec<String> = (0..40).map(|i| format!("row {i}")).collect();
    assert_eq!(seen, want, "every row once, in order");
    if twice > 0 {
        eprintln!("{twice} rows were redelivered and shown twice");
    }
}

#[tokio::test]
async fn a_hub_killed_mid_outbox_loses_and_repeats_nothing() {
    let Some(pg) = pg_url() else { return };
    let table = unique("log_outbox");
    let bridge = format!(
        "source = \"postgres\"\npostgres = \"{pg}\"\noutbox = \"{table}\"\n\
         topic = \"https://example.com/log/{{channel}}\"\n"
    );
    let db = Arc::new(postgres(&pg).await);
    let insert = format!("INSERT INTO {table} (channel, payload) VALUES ('app', $1)");
    let writer = db.clone();
    survives_a_killed_hub(&bridge, "reading the outbox", move |i| {
        let (db, insert) = (writer.clone(), insert.clone());
        async move {
            db.execute(insert.as_str(), &[&format!("row {i}")])
                .await
                .unwrap();
        }
    })
    .await;
    let left: i64 = db
        .query_one(format!("SELECT count(*) FROM {table}").as_str(), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "every row deleted once published");
    db.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}

fn redis_url() -> Option<String> {
    let url = std::env::var("HERALD_TEST_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("skipped: HERALD_TEST_REDIS_URL is not set");
    }
    url
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_pubsub_channels_and_patterns_become_updates() {
    let Some(redis_url) = redis_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (channel, prefix) = (unique("news"), unique("metrics"));
    let (hub, url) = hub_with(
        dir.path(),
        &format!(
            "engine = \"memory\"\n[[bridge]]\nsource = \"redis\"\nname = \"feeds\"\n\
             redis = \"{redis_url}\"\nchannel = [\"{channel}\"]\npattern = [\"{prefix}.*\"]\n\
             topic = \"https://example.com/feeds/{{channel}}\"\ntype = \"feed\"\n"
        ),
    )
    .await;
    hub.wait_for("source listening").await;
    let mut news = subscribe(&url, &format!("https://example.com/feeds/{channel}")).await;
    let mut cpu = subscribe(&url, &format!("https://example.com/feeds/{prefix}.cpu")).await;
    let mut conn = redis_conn(&redis_url).await;
    let _: i64 = redis::AsyncCommands::publish(&mut conn, &channel, "extra!")
        .await
        .unwrap();
    let _: i64 = redis::AsyncCommands::publish(&mut conn, format!("{prefix}.cpu"), "42")
        .await
        .unwrap();
    assert_eq!(next(&mut news).await.1, "extra!");
    assert_eq!(next(&mut cpu).await.1, "42");
    wait_metric(&url, "feeds", "published", 2).await;
}

#[tokio::test]
async fn a_hub_killed_mid_redis_stream_loses_and_repeats_nothing() {
    let Some(redis_url) = redis_url() else { return };
    let stream = unique("herald_test_log");
    let bridge = format!(
        "source = \"redis\"\nredis = \"{redis_url}\"\nstream = \"{stream}\"\ngroup = \"hubs\"\n\
         topic = \"https://example.com/log/{{app}}\"\npayload = \"json\"\n"
    );
    let conn = redis_conn(&redis_url).await;
    let writer = (conn.clone(), stream.clone());
    survives_a_killed_hub(&bridge, "reading the stream", move |i| {
        let (mut conn, stream) = writer.clone();
        async move {
            let payload = format!(r#"{{"app": "app", "data": "row {i}"}}"#);
            let _: String =
                redis::AsyncCommands::xadd(&mut conn, &stream, "*", &[("payload", payload)])
                    .await
                    .unwrap();
        }
    })
    .await;
    let mut conn = conn;
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("hubs")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(summary) = pending else {
        panic!("XPENDING: {pending:?}")
    };
    assert_eq!(summary[0], redis::Value::Int(0), "every entry acknowledged");
    let _: i64 = redis::AsyncCommands::del(&mut conn, &stream).await.unwrap();
}

#[tokio::test]
async fn a_bridge_the_hub_cannot_run_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (config, says) in [
        (
            "[[bridge]]\nsource = \"postgres\"\npostgres = \"postgres://x\"\noutbox = \"Bad-Name\"\ntopic = \"x\"\n",
            "a table name is",
        ),
        ("[[bridge]]\ntopic = \"x\"\n", "`source` is missing"),
        (
            "[[bridge]]\nsource = \"postgres\"\npostgres = \"postgres://x\"\nchannel = [\"c\"]\ntopic = \"x\"\ncolour = \"red\"\n",
            "--colour",
        ),
    ] {
        std::fs::write(&path, config).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--engine", "memory", "--config"])
            .arg(&path)
            .env_remove("HERALD_BRIDGE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("[[bridge]] number 1"), "{err}");
        assert!(err.contains(says), "{says}: {err}");
    }
    let out = Command::new(BIN)
        .args([
            "serve",
            "--engine",
            "memory",
            "--bridge",
            "pigeon --topic x",
        ])
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--bridge \"pigeon --topic x\""), "{err}");
    assert!(err.contains("unrecognized subcommand"), "{err}");
}

/// Two hubs sharing one Redis engine, each running the same stream
/// bridge in one consumer group: every entry is published once, and the
/// entries a killed node left unacknowledged are claimed by the other.
#[tokio::test]
async fn nodes_share_a_redis_stream_and_claim_what_a_dead_one_left() {
    let Some(redis_url) = redis_url() else { return };
    let stream = unique("herald_test_shared");
    let namespace = unique("bridge_cluster");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let config = |consumer: &str| {
        format!(
            "engine = \"{redis_url}\"\nnamespace = \"{namespace}\"\n\
             [[bridge]]\nsource = \"redis\"\nredis = \"{redis_url}\"\nstream = \"{stream}\"\n\
             group = \"hubs\"\nconsumer = \"{consumer}\"\nclaim_idle = \"1s\"\n\
             topic = \"https://example.com/log/app\"\n"
        )
    };
    let (a, url) = hub_with(dirs[0].path(), &config("a")).await;
    let (b, _) = hub_with(dirs[1].path(), &config("b")).await;
    a.wait_for("reading the stream").await;
    b.wait_for("reading the stream").await;
    let mut history = subscribe(&url, "https://example.com/log/app").await;
    let mut conn = redis_conn(&redis_url).await;
    let mut b = Some(b);
    for i in 0..40 {
        if i == 21 {
            drop(b.take());
            tokio::time::sleep(Duration::from_millis(100)).await;
            left_pending_by_b(&mut conn, &stream, "row 21").await;
        } else {
            let _: String = redis::AsyncCommands::xadd(
                &mut conn,
                &stream,
                "*",
                &[("payload", format!("row {i}"))],
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    each_row_once(&mut history, Vec::new(), 40).await;
    assert!(
        a.stderr()
            .contains("claimed entries another consumer left pending"),
        "{}",
        a.stderr()
    );
    drop(a);
    let _: i64 = redis::AsyncCommands::del(&mut conn, &stream).await.unwrap();
    remove_redis_namespace(&redis_url, &namespace).await;
}

/// Reads `history` (after the rows already `seen`) until it holds `n`
/// rows, then checks that nothing more comes and that they are `row 0` to
/// `row n-1`, each once, in any order (rows from two nodes interleave).
async fn each_row_once(
    history: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    mut seen: Vec<String>,
    n: u32,
) {
    while seen.len() < n as usize {
        seen.push(next(history).await.1);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), history.recv())
            .await
            .is_err(),
        "a row was published twice"
    );
    seen.sort_by_key(|d| d[4..].parse::<u32>().unwrap());
    let want: Vec<String> = (0..n).map(|i| format!("row {i}")).collect();
    assert_eq!(seen, want, "every row once");
}

/// Adds an entry and reads it as b in one transaction (so a cannot read
/// it first), as if b had read it and died before acknowledging it: a's
/// claim must take it over.
async fn left_pending_by_b(conn: &mut redis::aio::MultiplexedConnection, stream: &str, data: &str) {
    let _: redis::Value = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("payload")
        .arg(data)
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg("hubs")
        .arg("b")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
}

/// Removes every key of a namespace from the machine's Redis.
async fn remove_redis_namespace(url: &str, namespace: &str) {
    let mut conn = redis_conn(url).await;
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

fn nats_url() -> Option<String> {
    let url = std::env::var("HERALD_TEST_NATS_URL").ok();
    if url.is_none() {
        eprintln!("skipped: HERALD_TEST_NATS_URL is not set");
    }
    url
}

#[tokio::test]
async fn nats_core_subjects_become_updates() {
    let Some(nats_url) = nats_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("sensors");
    let (hub, url) = hub_with(
        dir.path(),
        &format!(
            "engine = \"memory\"\n[[bridge]]\nsource = \"nats\"\nname = \"sensors\"\n\
             nats = \"{nats_url}\"\nsubject = [\"{prefix}.*.temperature\"]\npayload = \"json\"\n\
             topic = \"https://example.com/{{channel}}\"\n"
        ),
    )
    .await;
    hub.wait_for("source listening").await;
    let topic = format!("https://example.com/{prefix}.kitchen.temperature");
    let mut events = subscribe(&url, &topic).await;
    let client = async_nats::connect(nats_url.as_str()).await.unwrap();
    for payload in [r#"{"data": "21.5", "type": "reading"}"#, "not json"] {
        client
            .publish(format!("{prefix}.kitchen.temperature"), payload.into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    assert_eq!(next(&mut events).await.1, "21.5");
    wait_metric(&url, "sensors", "published", 1).await;
    wait_metric(&url, "sensors", "dead_letter", 1).await;
}

#[tokio::test]
async fn a_hub_killed_mid_jetstream_loses_and_repeats_nothing() {
    let Some(nats_url) = nats_url() else { return };
    let name = unique("HERALD_TEST_LOG");
    let client = async_nats::connect(nats_url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let bridge = format!(
        "source = \"nats\"\nnats = \"{nats_url}\"\nstream = \"{name}\"\ndurable = \"hubs\"\n\
         ack_wait = \"1s\"\ntopic = \"https://example.com/log/app\"\n"
    );
    let writer = (js.clone(), name.clone());
    survives_a_killed_hub(&bridge, "reading the stream", move |i| {
        let (js, name) = writer.clone();
        async move {
            js.publish(format!("{name}.app"), format!("row {i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    })
    .await;
    js.delete_stream(&name).await.unwrap();
}

fn mqtt_url() -> Option<String> {
    let url = std::env::var("HERALD_TEST_MQTT_URL").ok();
    if url.is_none() {
        eprintln!("skipped: HERALD_TEST_MQTT_URL is not set");
    }
    url
}

/// An MQTT client publishing at QoS 1, its connection driven in a task.
async fn mqtt_publisher(url: &str) -> rumqttc::AsyncClient {
    let url = url::Url::parse(url).unwrap();
    let options = rumqttc::MqttOptions::new(
        unique("test"),
        url.host_str().unwrap(),
        url.port().unwrap_or(1883),
    );
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

#[tokio::test]
async fn mqtt_topic_filters_with_wildcards_become_updates() {
    let Some(mqtt) = mqtt_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let home = unique("home");
    let (hub, url) = hub_with(
        dir.path(),
        &format!(
            "engine = \"memory\"\n[[bridge]]\nsource = \"mqtt\"\nname = \"iot\"\nmqtt = \"{mqtt}\"\n\
             subscribe = [\"{home}/+/temperature\", \"{home}/logs/#\"]\n\
             topic = \"https://example.com/{{channel}}\"\n"
        ),
    )
    .await;
    hub.wait_for("source listening").await;
    let mut kitchen = subscribe(
        &url,
        &format!("https://example.com/{home}/kitchen/temperature"),
    )
    .await;
    let mut logs = subscribe(&url, &format!("https://example.com/{home}/logs/app/1")).await;
    // The bridge subscribes once connected: publish until it has.
    let client = mqtt_publisher(&mqtt).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while bridge_metric(&url, "iot", "published").await == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing bridged: {}",
            hub.stderr()
        );
        client
            .publish(
                format!("{home}/kitchen/temperature"),
                rumqttc::QoS::AtLeastOnce,
                false,
                "21.5",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(next(&mut kitchen).await.1, "21.5");
    client
        .publish(
            format!("{home}/logs/app/1"),
            rumqttc::QoS::AtLeastOnce,
            false,
            "started",
        )
        .await
        .unwrap();
    client
        .publish(
            format!("{home}/other/temperature/x"),
            rumqttc::QoS::AtLeastOnce,
            false,
            "no",
        )
        .await
        .unwrap();
    assert_eq!(next(&mut logs).await.1, "started");
}

/// With a client id of its own the broker keeps the bridge's session
/// while the hub is down: nothing published meanwhile is lost (MQTT
/// gives a message no identity, so one redelivered may show twice).
#[tokio::test]
async fn a_hub_killed_mid_mqtt_stream_loses_nothing() {
    let Some(mqtt) = mqtt_url() else { return };
    let prefix = unique("plant");
    let bridge = format!(
        "source = \"mqtt\"\nmqtt = \"{mqtt}\"\nsubscribe = [\"{prefix}/#\"]\n\
         client_id = \"{}\"\ntopic = \"https://example.com/log/app\"\n",
        unique("herald")
    );
    let client = mqtt_publisher(&mqtt).await;
    survives_a_killed_hub_with(
        &bridge,
        "source listening",
        move |i| {
            let client = client.clone();
            let topic = format!("{prefix}/line/{i}");
            async move {
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, format!("row {i}"))
                    .await
                    .unwrap();
            }
        },
        false,
    )
    .await;
}

fn amqp_url() -> Option<String> {
    let url = std::env::var("HERALD_TEST_AMQP_URL").ok();
    if url.is_none() {
        eprintln!("skipped: HERALD_TEST_AMQP_URL is not set");
    }
    url
}

/// Publishes one message to RabbitMQ, with a message id when given.
async fn amqp_publish(
    channel: &lapin::Channel,
    exchange: &str,
    key: &str,
    payload: &str,
    id: Option<&str>,
) {
    let mut props = lapin::BasicProperties::default();
    if let Some(id) = id {
        props = props.with_message_id(id.into());
    }
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            lapin::options::BasicPublishOptions::default(),
            payload.as_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn amqp_channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}

#[tokio::test]
async fn rabbitmq_exchange_bindings_become_updates() {
    let Some(amqp) = amqp_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("shop");
    let (hub, url) = hub_with(
        dir.path(),
        &format!(
            "engine = \"memory\"\n[[bridge]]\nsource = \"rabbitmq\"\nname = \"shop\"\namqp = \"{amqp}\"\n\
             exchange = \"amq.topic\"\nbinding = [\"{prefix}.orders.*\"]\n\
             topic = \"https://example.com/{{channel}}\"\n"
        ),
    )
    .await;
    hub.wait_for("source listening").await;
    let mut created = subscribe(
        &url,
        &format!("https://example.com/{prefix}.orders.created"),
    )
    .await;
    let (_conn, channel) = amqp_channel(&amqp).await;
    amqp_publish(
        &channel,
        "amq.topic",
        &format!("{prefix}.users.created"),
        "no",
        None,
    )
    .await;
    amqp_publish(
        &channel,
        "amq.topic",
        &format!("{prefix}.orders.created"),
        "order 7",
        None,
    )
    .await;
    assert_eq!(next(&mut created).await.1, "order 7");
    wait_metric(&url, "shop", "published", 1).await;
}

#[tokio::test]
async fn a_hub_killed_mid_rabbitmq_queue_loses_and_repeats_nothing() {
    let Some(amqp) = amqp_url() else { return };
    let queue = unique("herald_test_log");
    let bridge = format!(
        "source = \"amqp\"\namqp = \"{amqp}\"\nqueue = \"{queue}\"\n\
         topic = \"https://example.com/log/app\"\n"
    );
    let (_conn, channel) = amqp_channel(&amqp).await;
    let writer = (channel.clone(), queue.clone());
    survives_a_killed_hub(&bridge, "source listening", move |i| {
        let (channel, queue) = writer.clone();
        async move {
            // The default exchange routes by queue name; the id drops a
            // redelivery.
            amqp_publish(
                &channel,
                "",
                &queue,
                &format!("row {i}"),
                Some(&format!("row-{i}")),
            )
            .await;
        }
    })
    .await;
    channel
        .queue_delete(
            queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
}

/// A source that is down is retried with backoff and counted, and the
/// hub serves meanwhile.
#[tokio::test]
async fn a_source_that_is_down_is_counted_and_the_hub_serves_on() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let (hub, url) = hub_with(
        dir.path(),
        &format!(
            "engine = \"memory\"\n[[bridge]]\nsource = \"redis\"\nname = \"gone\"\n\
             redis = \"redis://127.0.0.1:{port}\"\nchannel = [\"c\"]\ntopic = \"x\"\n\
             [[bridge]]\nsource = \"kafka\"\nname = \"gone_kafka\"\n\
             kafka = \"127.0.0.1:{port}\"\nsubscribe = [\"t\"]\ngroup = \"g\"\ntopic = \"x\"\n"
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    for bridge in ["gone", "gone_kafka"] {
        while bridge_metric(&url, bridge, "source_failure").await < 2 {
            assert!(Instant::now() < deadline, "{}", hub.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            hub.stderr().contains(&format!("bridge {bridge}: source")),
            "{}",
            hub.stderr()
        );
    }
    let mut events = subscribe(&url, "https://example.com/still").await;
    let res = reqwest::Client::new()
        .post(&url)
        .bearer_auth(publisher_token())
        .form(&[("topic", "https://example.com/still"), ("data", "serving")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(next(&mut events).await.1, "serving");
}

/// Two hubs sharing one Redis engine, each with the same Redis Pub/Sub
/// bridge: `a` runs it under its lease, `b` (at `url`) stands by.
struct Broadcast {
    a: Proc,
    b: Proc,
    url: String,
    channel: String,
    namespace: String,
}

async fn broadcast_on_two_hubs(
    redis_url: &str,
    lease_ttl: &str,
    dirs: &[tempfile::TempDir; 2],
) -> Broadcast {
    let channel = unique("herald_test_broadcast");
    let namespace = unique("bridge_lease");
    let config = format!(
        "engine = \"{redis_url}\"\nnamespace = \"{namespace}\"\n\
         [[bridge]]\nsource = \"redis\"\nredis = \"{redis_url}\"\nchannel = [\"{channel}\"]\n\
         lease_ttl = \"{lease_ttl}\"\ntopic = \"https://example.com/log/app\"\n"
    );
    let (a, _) = hub_with(dirs[0].path(), &config).await;
    a.wait_for("source listening").await;
    let (b, url) = hub_with(dirs[1].path(), &config).await;
    b.wait_for("another hub runs this bridge: standing by")
        .await;
    Broadcast {
        a,
        b,
        url,
        channel,
        namespace,
    }
}

/// A broadcast source (Redis Pub/Sub) on two hubs sharing one engine runs
/// on one of them at a time, under a lease: each message is published
/// once, and when the running hub dies the other takes over.
#[tokio::test]
async fn a_broadcast_bridge_runs_on_one_node_and_moves_when_it_dies() {
    let Some(redis_url) = redis_url() else { return };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let Broadcast {
        a,
        b,
        url,
        channel,
        namespace,
    } = broadcast_on_two_hubs(&redis_url, "1s", &dirs).await;
    let mut events = subscribe(&url, "https://example.com/log/app").await;
    let mut conn = redis_conn(&redis_url).await;
    let publish = |conn: &mut redis::aio::MultiplexedConnection, i: u32| {
        let mut conn = conn.clone();
        let channel = channel.clone();
        async move {
            let _: i64 = redis::AsyncCommands::publish(&mut conn, &channel, format!("row {i}"))
                .await
                .unwrap();
        }
    };
    for i in 0..10 {
        publish(&mut conn, i).await;
    }
    for i in 0..10 {
        assert_eq!(next(&mut events).await.1, format!("row {i}"));
    }
    drop(a);
    b.wait_for("this hub holds the bridge's lease").await;
    b.wait_for("source listening").await;
    for i in 10..20 {
        publish(&mut conn, i).await;
    }
    for i in 10..20 {
        assert_eq!(next(&mut events).await.1, format!("row {i}"));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.recv())
            .await
            .is_err(),
        "a message was published twice"
    );
    drop(b);
    remove_redis_namespace(&redis_url, &namespace).await;
}

fn kafka_url() -> Option<String> {
    let url = std::env::var("HERALD_TEST_KAFKA_URL").ok();
    if url.is_none() {
        eprintln!("skipped: HERALD_TEST_KAFKA_URL is not set");
    }
    url
}

/// A new topic of `partitions` partitions on the broker at `url`
/// (`kafka://HOST:PORT`), and a producer to write to it.
async fn kafka_topic(url: &str, partitions: i32) -> (String, rdkafka::producer::FutureProducer) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let brokers = url.trim_start_matches("kafka://");
    let name = unique("herald_test");
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let producer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (name, producer)
}

/// Writes one record to a partition of `topic`, and waits until the
/// broker has it.
async fn kafka_send(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    payload: &str,
) {
    producer
        .send(
            rdkafka::producer::FutureRecord::<(), str>::to(topic)
                .partition(partition)
                .payload(payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn kafka_records_become_updates_and_bad_ones_dead_letters() {
    let Some(kafka) = kafka_url() else { return };
    let (topic, producer) = kafka_topic(&kafka, 1).await;
    let group = unique("hubs");
    let dir = tempfile::tempdir().unwrap();
    let (hub, url) = hub_with(
        dir.path(),
        &format!(
            "engine = \"memory\"\n[[bridge]]\nsource = \"kafka\"\nname = \"clicks\"\n\
             kafka = \"{kafka}\"\nsubscribe = [\"{topic}\"]\ngroup = \"{group}\"\nfrom = \"earliest\"\n\
             payload = \"json\"\ntopic = \"https://example.com/{{channel}}\"\n"
        ),
    )
    .await;
    hub.wait_for("reading the topics").await;
    let mut events = subscribe(&url, &format!("https://example.com/{topic}")).await;
    for payload in [r#"{"data": "home", "type": "click"}"#, "not json"] {
        kafka_send(&producer, &topic, 0, payload).await;
    }
    let (id, data) = next(&mut events).await;
    assert_eq!(data, "home");
    assert_eq!(
        id,
        format!("clicks:{topic}:0:0"),
        "NAME:TOPIC:PARTITION:OFFSET"
    );
    wait_metric(&url, "clicks", "published", 1).await;
    wait_metric(&url, "clicks", "dead_letter", 1).await;
    assert!(hub.stderr().contains("not JSON"), "{}", hub.stderr());
}

#[tokio::test]
async fn a_hub_killed_mid_kafka_topic_loses_and_repeats_nothing() {
    let Some(kafka) = kafka_url() else { return };
    let (topic, producer) = kafka_topic(&kafka, 1).await;
    let group = unique("hubs");
    let bridge = format!(
        "source = \"kafka\"\nkafka = \"{kafka}\"\nsubscribe = [\"{topic}\"]\ngroup = \"{group}\"\n\
         from = \"earliest\"\nsession_timeout = \"2s\"\ntopic = \"https://example.com/log/app\"\n"
    );
    let producer = Arc::new(producer);
    survives_a_killed_hub(&bridge, "reading the topics", move |i| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            kafka_send(&producer, &topic, 0, &format!("row {i}")).await;
        }
    })
    .await;
}

/// Two hubs sharing one Redis engine, each running the same Kafka bridge
/// in one consumer group: the group gives each a partition, every record
/// is published once, and when one hub is killed the other takes its
/// partition over from its last committed offset (what it had appended
/// but not yet committed is read again and dropped as a duplicate).
#[tokio::test]
async fn nodes_share_kafka_partitions_and_take_over_a_dead_ones() {
    let (Some(kafka), Some(redis_url)) = (kafka_url(), redis_url()) else {
        return;
    };
    let (topic, producer) = kafka_topic(&kafka, 2).await;
    let group = unique("hubs");
    let namespace = unique("bridge_kafka");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let config = format!(
        "engine = \"{redis_url}\"\nnamespace = \"{namespace}\"\n\
         [[bridge]]\nsource = \"kafka\"\nname = \"log\"\nkafka = \"{kafka}\"\n\
         subscribe = [\"{topic}\"]\ngroup = \"{group}\"\nfrom = \"earliest\"\n\
         session_timeout = \"2s\"\ntopic = \"https://example.com/log/app\"\n"
    );
    let (a, url) = hub_with(dirs[0].path(), &config).await;
    a.wait_for("reading the topics").await;
    let (b, b_url) = hub_with(dirs[1].path(), &config).await;
    // b has its partition once the group has rebalanced: a has given up
    // the other by then.
    b.wait_for(&format!("{topic}:")).await;
    let mut history = subscribe(&url, "https://example.com/log/app").await;
    for i in 0..20 {
        kafka_send(&producer, &topic, i % 2, &format!("row {i}")).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        seen.push(next(&mut history).await.1);
    }
    // A partition each.
    wait_metric(&url, "log", "published", 10).await;
    wait_metric(&b_url, "log", "published", 10).await;
    drop(b);
    for i in 20..40 {
        kafka_send(&producer, &topic, i % 2, &format!("row {i}")).await;
    }
    each_row_once(&mut history, seen, 40).await;
    drop(a);
    remove_redis_namespace(&redis_url, &namespace).await;
}

/// A hub stopped with SIGTERM stops its bridges and gives their leases
/// back: the other hub takes a broadcast bridge over at once, not once
/// the lease (10 s here) runs out.
#[tokio::test]
async fn a_hub_that_stops_hands_its_broadcast_bridge_over_at_once() {
    let Some(redis_url) = redis_url() else { return };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let Broadcast {
        a,
        b,
        url,
        channel,
        namespace,
    } = broadcast_on_two_hubs(&redis_url, "10s", &dirs).await;
    let stopped = Instant::now();
    a.terminate();
    // b asks every third of the ttl: within 3.4 s of the lease given back.
    b.wait_for("this hub holds the bridge's lease").await;
    assert!(
        stopped.elapsed() < Duration::from_secs(6),
        "taken over after {:?}, not at once",
        stopped.elapsed()
    );
    b.wait_for("source listening").await;
    let mut events = subscribe(&url, "https://example.com/log/app").await;
    let mut conn = redis_conn(&redis_url).await;
    let _: i64 = redis::AsyncCommands::publish(&mut conn, &channel, "after")
        .await
        .unwrap();
    assert_eq!(next(&mut events).await.1, "after");
    drop(b);
    remove_redis_namespace(&redis_url, &namespace).await;
}
