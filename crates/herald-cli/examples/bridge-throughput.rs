//! Bridge throughput per source: for each at-least-once source, a release
//! `herald serve` with one `[[bridge]]` section (memory engine), a
//! subscriber on the bridge's topic, and `--events` events written into
//! the source as fast as its client takes them. The figure is events per
//! second from the first write to the subscriber's last event (each
//! appended, delivered, and acknowledged to its source on the way).
//!
//! ```sh
//! cargo build --release -p herald-cli
//! cargo run --release -p herald-cli --example bridge-throughput -- --events 20000 --runs 3
//! ```
//!
//! The sources are the machine's (HERALD_TEST_POSTGRES_URL, _REDIS_URL,
//! _NATS_URL, _MQTT_URL, _AMQP_URL, _KAFKA_URL, with the loopback
//! defaults; `bash .ci/kafka-broker 9092` starts a Kafka-protocol broker
//! there); the hub
//! is HERALD_BIN (default target/release/herald). Everything it makes
//! (tables, streams, queues) is named afresh and removed after.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use herald_protocol::sse::{Item, Parser};

const TOPIC: &str = "https://example.com/bench";

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A hub process, killed on drop.
struct Hub(Child, String);

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a hub running `bridge` (a `[[bridge]]` section's keys) and
/// waits for its health check.
async fn hub(dir: &std::path::Path, bridge: &str) -> Hub {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "addr = \"127.0.0.1:{port}\"\nengine = \"memory\"\nlog = \"warn\"\n\
             queue_frames = 1000000\nqueue_bytes = 1000000000\n\
             [[bridge]]\n{bridge}topic = \"{TOPIC}\"\n"
        ),
    )
    .unwrap();
    let bin = env(
        "HERALD_BIN",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/herald"),
    );
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("HERALD_BIN (build it: cargo build --release -p herald-cli)");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{url}/healthz")).await.is_err() {
        assert!(Instant::now() < deadline, "the hub did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The source connects after the listener: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Hub(child, url)
}

/// Counts the events on the bench topic (into `progress`); resolves with
/// the instant the `n`-th came.
async fn subscriber(
    url: &str,
    n: usize,
    progress: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Instant> {
    let res = reqwest::Client::new()
        .get(format!("{url}/.well-known/mercure"))
        .query(&[("topic", TOPIC)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut parser = Parser::new();
        let mut seen = 0;
        while let Some(Ok(chunk)) = body.next().await {
            for item in parser.feed(&chunk) {
                if let Item::Event(_) = item {
                    seen += 1;
                    progress.store(seen, Ordering::Relaxed);
                    if seen == n {
                        return Instant::now();
                    }
                }
            }
        }
        panic!("the stream ended after {seen} of {n} events");
    })
}

/// One run for one source: events per second.
async fn run(source: &str, n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    match source {
        "postgres" => {
            let pg = env(
                "HERALD_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            );
            let table = unique("bench_outbox");
            let hub = hub(
                dir.path(),
                &format!("source = \"postgres\"\npostgres = \"{pg}\"\noutbox = \"{table}\"\n"),
            )
            .await;
            let (db, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let progress = Arc::new(AtomicUsize::new(0));
            let done = subscriber(&hub.1, n, progress.clone()).await;
            let started = Instant::now();
            db.execute(
                format!(
                    "INSERT INTO {table} (channel, payload) \
                     SELECT 'bench', 'event ' || i FROM generate_series(1, $1::int) i"
                )
                .as_str(),
                &[&(n as i32)],
            )
            .await
            .unwrap();
            let ended = done.await.unwrap();
            drop(hub);
            db.batch_execute(&format!(
                "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
            ))
            .await
            .unwrap();
            n as f64 / (ended - started).as_secs_f64()
        }
        "redis" => {
            let url = env("HERALD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0");
            let stream = unique("bench_stream");
            let hub = hub(
                dir.path(),
                &format!(
                    "source = \"redis\"\nredis = \"{url}\"\nstream = \"{stream}\"\ngroup = \"bench\"\n"
                ),
            )
            .await;
            let mut conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let progress = Arc::new(AtomicUsize::new(0));
            let done = subscriber(&hub.1, n, progress.clone()).await;
            let started = Instant::now();
            for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
                let mut pipe = redis::pipe();
                for i in chunk {
                    pipe.cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("payload")
                        .arg(format!("event {i}"))
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn).await.unwrap();
            }
            let ended = done.await.unwrap();
            drop(hub);
            redis::cmd("DEL")
                .arg(&stream)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
            n as f64 / (ended - started).as_secs_f64()
        }
        "nats" => {
            let url = env("HERALD_TEST_NATS_URL", "nats://127.0.0.1:4222");
            let name = unique("BENCH");
            let client = async_nats::connect(url.as_str()).await.unwrap();
            let js = async_nats::jetstream::new(client);
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{name}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
            let hub = hub(
                dir.path(),
                &format!(
                    "source = \"nats\"\nnats = \"{url}\"\nstream = \"{name}\"\ndurable = \"bench\"\n"
                ),
            )
            .await;
            let progress = Arc::new(AtomicUsize::new(0));
            let done = subscriber(&hub.1, n, progress.clone()).await;
            let started = Instant::now();
            let mut acks = Vec::with_capacity(n);
            for i in 0..n {
                acks.push(
                    js.publish(format!("{name}.events"), format!("event {i}").into())
                        .await
                        .unwrap(),
                );
            }
            for a in acks {
                a.await.unwrap();
            }
            let ended = done.await.unwrap();
            drop(hub);
            js.delete_stream(&name).await.unwrap();
            n as f64 / (ended - started).as_secs_f64()
        }
        "mqtt" => {
            let url =
                url::Url::parse(&env("HERALD_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")).unwrap();
            let (host, port) = (
                url.host_str().unwrap().to_owned(),
                url.port().unwrap_or(1883),
            );
            let prefix = unique("bench");
            let hub = hub(
                dir.path(),
                &format!("source = \"mqtt\"\nmqtt = \"mqtt://{host}:{port}\"\nsubscribe = [\"{prefix}/#\"]\n"),
            )
            .await;
            let mut options = rumqttc::MqttOptions::new(unique("bench"), host, port);
            options.set_inflight(1000);
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10_000);
            let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let progress = Arc::new(AtomicUsize::new(0));
            let done = subscriber(&hub.1, n, progress.clone()).await;
            let started = Instant::now();
            for i in 0..n {
                // Mosquitto holds at most 1,000 messages for a client that
                // has not acknowledged them (max_queued_messages) and drops
                // the rest: keep within it.
                while i - progress.load(Ordering::Relaxed).min(i) >= 900 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                client
                    .publish(
                        format!("{prefix}/events"),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        format!("event {i}"),
                    )
                    .await
                    .unwrap();
            }
            let ended = done.await.unwrap();
            drop(hub);
            driver.abort();
            n as f64 / (ended - started).as_secs_f64()
        }
        "amqp" => {
            let url = env(
                "HERALD_TEST_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            );
            let queue = unique("bench");
            let hub = hub(
                dir.path(),
                &format!("source = \"amqp\"\namqp = \"{url}\"\nqueue = \"{queue}\"\n"),
            )
            .await;
            let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                .await
                .unwrap();
            let channel = conn.create_channel().await.unwrap();
            let progress = Arc::new(AtomicUsize::new(0));
            let done = subscriber(&hub.1, n, progress.clone()).await;
            let started = Instant::now();
            for i in 0..n {
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        lapin::options::BasicPublishOptions::default(),
                        format!("event {i}").as_bytes(),
                        lapin::BasicProperties::default().with_message_id(i.to_string().into()),
                    )
                    .await
                    .unwrap();
            }
            let ended = done.await.unwrap();
            drop(hub);
            channel
                .queue_delete(
                    queue.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await
                .unwrap();
            n as f64 / (ended - started).as_secs_f64()
        }
        "kafka" => {
            let url = env("HERALD_TEST_KAFKA_URL", "kafka://127.0.0.1:9092");
            let brokers = url.trim_start_matches("kafka://");
            let topic = unique("bench");
            let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
                rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create()
                    .unwrap();
            let created = admin
                .create_topics(
                    &[rdkafka::admin::NewTopic::new(
                        &topic,
                        1,
                        rdkafka::admin::TopicReplication::Fixed(1),
                    )],
                    &rdkafka::admin::AdminOptions::new(),
                )
                .await
                .unwrap();
            assert!(created.iter().all(Result::is_ok), "{created:?}");
            let hub = hub(
                dir.path(),
                &format!(
                    "source = \"kafka\"\nkafka = \"{url}\"\nsubscribe = [\"{topic}\"]\n\
                     group = \"bench\"\nfrom = \"earliest\"\n"
                ),
            )
            .await;
            let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .unwrap();
            let send = |payload: String| {
                producer
                    .send_result(
                        rdkafka::producer::FutureRecord::<(), String>::to(&topic).payload(&payload),
                    )
                    .map_err(|(e, _)| e)
                    .unwrap()
            };
            // One record first, timed out of the run: the group's join
            // (the topic made, the partition assigned) is not throughput.
            let progress = Arc::new(AtomicUsize::new(0));
            let done = subscriber(&hub.1, n + 1, progress.clone()).await;
            send("warm-up".into()).await.unwrap().unwrap();
            while progress.load(Ordering::Relaxed) < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let started = Instant::now();
            let sent: Vec<_> = (0..n).map(|i| send(format!("event {i}"))).collect();
            for delivery in sent {
                delivery.await.unwrap().unwrap();
            }
            let ended = done.await.unwrap();
            drop(hub);
            n as f64 / (ended - started).as_secs_f64()
        }
        other => panic!("unknown source {other}"),
    }
}

#[tokio::main]
async fn main() {
    let mut events = 20_000;
    let mut runs = 3;
    let mut sources = vec!["postgres", "redis", "nats", "mqtt", "amqp", "kafka"];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().expect("a value after each flag");
        match a.as_str() {
            "--events" => events = value.parse().expect("--events N"),
            "--runs" => runs = value.parse().expect("--runs N"),
            "--sources" => sources = value.split(',').map(|s| &*s.to_owned().leak()).collect(),
            other => panic!("unknown flag {other} (--events, --runs, --sources)"),
        }
    }
    println!("| source | events/s (median of {runs} runs of {events}) | runs |");
    println!("|---|---|---|");
    for source in sources {
        let mut rates = Vec::new();
        for _ in 0..runs {
            rates.push(run(source, events).await);
        }
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "| {source} | {:.0} | {} |",
            sorted[sorted.len() / 2],
            all.join(", ")
        );
    }
}
