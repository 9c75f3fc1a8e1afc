//! The `redis` engine against a real Redis: the shared conformance suite,
//! then what only a shared engine does: two nodes on one log, the gap
//! signal when the log is flushed or trimmed past a node (signalled before
//! anything after the hole), retention by count and age, and the
//! subscriptions directory with the reaping of a dead node. Redis going
//! away and coming back is `crates/herald-cli/tests/cluster.rs`, on real
//! nodes and a throwaway `redis-server`.
//!
//! Runs when `HERALD_TEST_REDIS_URL` is set (`.ci/run` sets it), and says
//! it skipped otherwise. Each check uses a namespace of its own, removed
//! when it ends.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use herald::engine::redis::{RedisConfig, RedisEngine};
use herald::engine::testkit::{
    eventually, read_all, updates, DurableEngineFactory, EngineFactory, Harness,
};
use herald::engine::{Engine, EngineError};

/// The Redis to test against, if any.
fn redis_url() -> Option<String> {
    match std::env::var("HERALD_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => None,
    }
}

/// True when Redis tests run; prints why not otherwise.
fn with_redis() -> bool {
    let on = redis_url().is_some();
    if !on {
        eprintln!("skipped: HERALD_TEST_REDIS_URL is not set");
    }
    on
}

fn config(url: &str, namespace: &str) -> RedisConfig {
    RedisConfig {
        namespace: namespace.to_owned(),
        ..RedisConfig::new(url)
    }
}

fn namespace() -> String {
    format!("herald-test-{}", uuid::Uuid::new_v4().simple())
}

/// Engines on one fresh namespace, removed when the factory is dropped.
struct Redis {
    namespace: String,
    cleanup: Option<RedisConfig>,
}

impl Redis {
    fn new() -> Self {
        Self {
            namespace: namespace(),
            cleanup: None,
        }
    }

    async fn connect(&mut self) -> Arc<dyn Engine> {
        let cfg = config(&redis_url().unwrap(), &self.namespace);
        self.cleanup = Some(cfg.clone());
        Arc::new(RedisEngine::connect(cfg).await.unwrap())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(cfg) = self.cleanup.take() {
            remove_namespace(cfg);
        }
    }
}

/// Removes a namespace's keys (from any context, on a runtime of its own).
fn remove_namespace(cfg: RedisConfig) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(e) = RedisEngine::connect(cfg).await {
                let _ = e.destroy_namespace().await;
            }
        });
    })
    .join()
    .unwrap();
}

impl EngineFactory for Redis {
    async fn fresh(&mut self) -> Arc<dyn Engine> {
        self.connect().await
    }
}

impl DurableEngineFactory for Redis {
    async fn reopen(&mut self) -> Arc<dyn Engine> {
        self.connect().await
    }
}

herald::engine_conformance!(shared_suite, Redis::new(), durable, if with_redis());

/// A namespace for one test, removed at the end.
struct Namespace(RedisConfig);

impl Namespace {
    fn new(url: &str) -> Self {
        Self(config(url, &namespace()))
    }

    async fn engine(&self) -> Arc<dyn Engine> {
        Arc::new(RedisEngine::connect(self.0.clone()).await.unwrap())
    }

    async fn node(&self) -> Harness {
        Harness::start(self.engine().await)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        remove_namespace(self.0.clone());
    }
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every node delivers every update, whoever appended it, in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_others_appends_in_one_order() {
    let Some(url) = redis_url() else {
        return assert!(!with_redis());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    let b = ns.node().await;
    let mut tasks = Vec::new();
    for (n, node) in [&a, &b].into_iter().enumerate() {
        for k in 0..4 {
            let engine = node.engine.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    engine
                        .append(updates(&[&format!("n{n}-{k}-{i}")]))
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.sink.len() == 200 && a.sink.len() == 200
        })
        .await
    );
    assert_eq!(a.sink.positions(), (1..=200).collect::<Vec<_>>());
    assert_eq!(a.sink.ids(), b.sink.ids());
    // Ids are unique across nodes.
    match b.engine.append(updates(&["n0-0-0"])).await {
        Err(EngineError::DuplicateId(id)) => assert_eq!(id, "n0-0-0"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
}

/// A flushed log is a gap on every node, and the nodes go on with the new
/// log; an id of the old history no longer resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_log_is_a_gap_and_a_new_epoch() {
    let Some(url) = redis_url() else {
        return assert!(!with_redis());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    let b = ns.node().await;
    a.engine.append(updates(&["old"])).await.unwrap();
    let mut conn = raw(&url).await;
    let mut del = redis::cmd("DEL");
    for k in ["meta", "log", "ids", "order", "clock"] {
        del.arg(format!("{{{}}}:{k}", ns.0.namespace));
    }
    del.query_async::<()>(&mut conn).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !a.sink.gaps().is_empty() && !b.sink.gaps().is_empty()
        })
        .await,
        "both nodes signal the gap"
    );
    assert_eq!(a.engine.resolve("old").await.unwrap(), None);
    // Appends work again on the new log (the first may race the adoption).
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.engine.append(updates(&["new"])).await.is_ok()
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.sink.ids().contains(&"new".to_owned())
        })
        .await
    );
    assert_eq!(b.engine.resolve("new").await.unwrap(), Some(1));
}

/// Retention by count: old updates leave history and the id index, and a
/// removed id may be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_trims_history_and_ids() {
    let Some(url) = redis_url() else {
        return assert!(!with_redis());
    };
    let mut ns = Namespace::new(&url);
    ns.0.max_updates = Some(10);
    let a = ns.node().await;
    for i in 0..25 {
        a.engine.append(updates(&[&format!("u{i}")])).await.unwrap();
    }
    let b = a.engine.bounds().await.unwrap();
    assert_eq!((b.first, b.last), (Some(16), 25));
    let all = read_all(&*a.engine, 7).await;
    assert_eq!(
        all.iter().map(|s| s.position).collect::<Vec<_>>(),
        (16..=25).collect::<Vec<_>>()
    );
    assert_eq!(a.engine.resolve("u3").await.unwrap(), None);
    assert_eq!(a.engine.resolve("u20").await.unwrap(), Some(21));
    a.engine.append(updates(&["u3"])).await.unwrap();
}

/// Retention by age runs even when nobody appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_trims_while_idle() {
    let Some(url) = redis_url() else {
        return assert!(!with_redis());
    };
    let mut ns = Namespace::new(&url);
    ns.0.max_age = Some(Duration::from_secs(1));
    let a = ns.node().await;
    a.engine.append(updates(&["x", "y"])).await.unwrap();
    assert!(
        eventually(Duration::from_secs(6), || async {
            a.engine.bounds().await.unwrap().first.is_none()
        })
        .await,
        "history empties once older than max_age"
    );
    assert_eq!(a.engine.resolve("x").await.unwrap(), None);
    assert_eq!(a.engine.bounds().await.unwrap().last, 2);
    // What is new stays (until it is a second older than max_age).
    a.engine.append(updates(&["z"])).await.unwrap();
    assert_eq!(a.engine.resolve("z").await.unwrap(), Some(3));
    assert_eq!(a.engine.bounds().await.unwrap().first, Some(3));
}

/// A node cut off while the log was trimmed past it signals a gap before
/// delivering what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_past_a_node_is_a_gap() {
    let Some(url) = redis_url() else {
        return assert!(!with_redis());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    a.engine.append(updates(&["a1"])).await.unwrap();
    // What the log looks like after another node appended 2..=4 and
    // trimmed exactly to 4 while this one was away, written in one
    // transaction so the tail cannot read 2 or 3 first. Entry 4's record
    // is one the engine wrote (for "a4", in a namespace of its own).
    let mut conn = raw(&url).await;
    let key = |k: &str| format!("{{{}}}:{k}", ns.0.namespace);
    let other = Namespace::new(&url);
    let o = other.node().await;
    o.engine.append(updates(&["a4"])).await.unwrap();
    let record = field_of_entry(&mut conn, &format!("{{{}}}:log", other.0.namespace), "r").await;
    let epoch: String = redis::cmd("HGET")
        .arg(key("meta"))
        .arg("epoch")
        .query_async(&mut conn)
        .await
        .unwrap();
    redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(key("meta"))
        .arg("seq")
        .arg(4)
        .arg("first")
        .arg(4)
        .ignore()
        .cmd("XADD")
        .arg(key("log"))
        .arg("4-0")
        .arg("e")
        .arg(&epoch)
        .arg("r")
        .arg(record)
        .ignore()
        .cmd("XTRIM")
        .arg(key("log"))
        .arg("MINID")
        .arg("4-0")
        .ignore()
        .cmd("HDEL")
        .arg(key("ids"))
        .arg("a1")
        .ignore()
        .cmd("HSET")
        .arg(key("ids"))
        .arg("a4")
        .arg(4)
        .ignore()
        .cmd("DEL")
        .arg(key("order"))
        .ignore()
        .cmd("RPUSH")
        .arg(key("order"))
        .arg("a4")
        .ignore()
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || async { a.sink.len() == 2 }).await);
    assert_eq!(a.sink.positions(), vec![1, 4]);
    assert_eq!(
        a.sink.gap_points(),
        vec![1],
        "one gap, after 1 and before 4"
    );
    // The log is consistent again: the checks of the next seconds find
    // nothing more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(a.sink.gap_points(), vec![1]);
    a.engine.append(updates(&["a5"])).await.unwrap();
    assert_eq!(a.sink.positions(), vec![1, 4, 5]);
}

/// A field of the first entry of a stream.
async fn field_of_entry(
    conn: &mut redis::aio::MultiplexedConnection,
    log: &str,
    name: &str,
) -> Vec<u8> {
    let found: redis::Value = redis::cmd("XRANGE")
        .arg(log)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .unwrap();
    let redis::Value::Array(entries) = found else {
        panic!("{found:?}")
    };
    let redis::Value::Array(entry) = &entries[0] else {
        panic!()
    };
    let redis::Value::Array(fields) = &entry[1] else {
        panic!()
    };
    fields
        .chunks(2)
        .find(|kv| matches!(&kv[0], redis::Value::BulkString(k) if k == name.as_bytes()))
        .and_then(|kv| match &kv[1] {
            redis::Value::BulkString(v) => Some(v.clone()),
            _ => None,
        })
        .unwrap()
}

/// The directory check of the testkit, on three nodes of one namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_lists_other_nodes_and_reaps_dead_ones_once() {
    let Some(url) = redis_url() else {
        return assert!(!with_redis());
    };
    let ns = Namespace::new(&url);
    herald::engine::testkit::directory_lists_other_nodes_and_reaps_dead_ones_once(
        || async { ns.engine().await },
        herald::engine::redis::presence::LIVENESS,
    )
    .await;
}

/// With `wait_replicas` and no replica to confirm, a publish is not
/// acknowledged (within the timeout), and a retry of the same id answers
/// that it is stored: never a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_missing_replicas_is_unavailable_then_a_duplicate() {
    let Some(url) = redis_url() else {
        return assert!(!with_redis());
    };
    let mut ns = Namespace::new(&url);
    ns.0.wait_replicas = 1;
    ns.0.timeout = Duration::from_millis(500);
    let a = ns.node().await;
    let started = std::time::Instant::now();
    match a.engine.append(updates(&["w"])).await {
        Err(EngineError::Unavailable(reason)) => assert!(reason.contains("replicas"), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    match a.engine.append(updates(&["w"])).await {
        Err(EngineError::DuplicateId(id)) => assert_eq!(id, "w"),
        other => panic!("expected DuplicateId, got {other:?}"),
    }
    // Reads do not queue behind WAIT.
    assert_eq!(a.engine.resolve("w").await.unwrap(), Some(1));
}

/// The lease check of the testkit, on two nodes of one namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_have_one_holder_and_pass_on() {
    let Some(url) = redis_url() else {
        return assert!(!with_redis());
    };
    let ns = Namespace::new(&url);
    herald::engine::testkit::leases_have_one_holder_and_pass_on_when_it_stops(|| async {
        ns.engine().await
    })
    .await;
}
