//! The `redis` engine against a real Redis: the shared conformance suite,
//! then what only a shared engine does: two nodes on one log, the gap
//! signal when the log is flushed or trimmed past a node, retention, the
//! subscriptions directory, and Redis going away and coming back.
//!
//! Runs when `HERALD_TEST_REDIS_URL` is set (`.ci/run` sets it), and says
//! it skipped otherwise. Each check uses a namespace of its own, removed
//! when it ends. The checks that stop Redis start a throwaway
//! `redis-server` of their own on a free port.
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

    async fn node(&self) -> Harness {
        Harness::start(Arc::new(
            RedisEngine::connect(self.0.clone()).await.unwrap(),
        ))
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
    // trimmed exactly to 4 while this one was away: written in one
    // transaction, so the tail cannot read 2 or 3 first. Entry 4 carries
    // a copy of entry 1's record.
    let mut conn = raw(&url).await;
    let log = format!("{{{}}}:log", ns.0.namespace);
    let meta = format!("{{{}}}:meta", ns.0.namespace);
    let first: redis::Value = redis::cmd("XRANGE")
        .arg(&log)
        .arg("1-0")
        .arg("1-0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let record = match first {
        redis::Value::Array(entries) => match &entries[0] {
            redis::Value::Array(e) => match &e[1] {
                redis::Value::Array(fields) => match &fields[1] {
                    redis::Value::BulkString(b) => b.clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(&meta)
        .arg("seq")
        .arg(4)
        .arg("first")
        .arg(4)
        .ignore()
        .cmd("XADD")
        .arg(&log)
        .arg("4-0")
        .arg("r")
        .arg(record)
        .ignore()
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || async { a.sink.len() == 2 }).await);
    assert_eq!(a.sink.gaps().len(), 1, "one gap, before position 4");
    assert_eq!(a.sink.positions(), vec![1, 4]);
}
