//! The `nats` engine against a real NATS server with JetStream: the
//! shared conformance suite, then what only a shared engine does (two
//! nodes on one log, ids unique across nodes, the gap when the log is
//! deleted or loses updates a node had not delivered), retention by count
//! and age, reservations left by a writer that died, and the
//! subscriptions directory.
//!
//! Runs when `HERALD_TEST_NATS_URL` is set (`.ci/run` sets it), and says
//! it skipped otherwise. Each check uses a namespace (three streams) of
//! its own, deleted when it ends.
#![cfg(feature = "nats")]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::Publish;
use base64::Engine as _;
use herald::engine::nats::{NatsConfig, NatsEngine};
use herald::engine::testkit::{
    eventually, read_all, updates, DurableEngineFactory, EngineFactory, Harness,
};
use herald::engine::{Engine, EngineError};

fn nats_url() -> Option<String> {
    match std::env::var("HERALD_TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => None,
    }
}

fn with_nats() -> bool {
    let on = nats_url().is_some();
    if !on {
        eprintln!("skipped: HERALD_TEST_NATS_URL is not set");
    }
    on
}

fn config(url: &str, namespace: &str) -> NatsConfig {
    NatsConfig {
        namespace: namespace.to_owned(),
        ..NatsConfig::new(url)
    }
}

fn namespace() -> String {
    format!("herald_test_{}", uuid::Uuid::new_v4().simple())
}

/// Deletes a namespace's streams (on a runtime of its own).
fn drop_namespace(cfg: NatsConfig) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(e) = NatsEngine::connect(cfg).await {
                let _ = e.destroy_namespace().await;
            }
        });
    })
    .join()
    .unwrap();
}

struct Nats {
    namespace: String,
    cleanup: Option<NatsConfig>,
}

impl Nats {
    fn new() -> Self {
        Self {
            namespace: namespace(),
            cleanup: None,
        }
    }

    async fn connect(&mut self) -> Arc<dyn Engine> {
        let cfg = config(&nats_url().unwrap(), &self.namespace);
        self.cleanup = Some(cfg.clone());
        Arc::new(NatsEngine::connect(cfg).await.unwrap())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(cfg) = self.cleanup.take() {
            drop_namespace(cfg);
        }
    }
}

impl EngineFactory for Nats {
    async fn fresh(&mut self) -> Arc<dyn Engine> {
        self.connect().await
    }
}

impl DurableEngineFactory for Nats {
    async fn reopen(&mut self) -> Arc<dyn Engine> {
        self.connect().await
    }
}

herald::engine_conformance!(shared_suite, Nats::new(), durable, if with_nats());

struct Namespace(NatsConfig);

impl Namespace {
    fn new(url: &str) -> Self {
        Self(config(url, &namespace()))
    }

    async fn engine(&self) -> Arc<dyn Engine> {
        Arc::new(NatsEngine::connect(self.0.clone()).await.unwrap())
    }

    async fn node(&self) -> Harness {
        Harness::start(self.engine().await)
    }

    fn log(&self) -> String {
        format!("HERALD_{}_LOG", self.0.namespace)
    }

    fn log_subject(&self) -> String {
        format!("herald.{}.log", self.0.namespace)
    }

    fn id_subject(&self, id: &str) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        format!("herald.{}.ids.i{enc}", self.0.namespace)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        drop_namespace(self.0.clone());
    }
}

async fn raw(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_others_appends_in_one_order() {
    let Some(url) = nats_url() else {
        return assert!(!with_nats());
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
                    let ids = if i % 5 == 0 {
                        vec![format!("n{n}-{k}-{i}"), format!("n{n}-{k}-{i}b")]
                    } else {
                        vec![format!("n{n}-{k}-{i}")]
                    };
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    engine.append(updates(&ids)).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.sink.len() == 240 && b.sink.len() == 240
        })
        .await
    );
    assert_eq!(a.sink.positions(), (1..=240).collect::<Vec<_>>());
    assert_eq!(a.sink.ids(), b.sink.ids());
    // A batch's updates are consecutive, whoever appended in between.
    let ids = a.sink.ids();
    for (i, id) in ids.iter().enumerate() {
        if let Some(first) = id.strip_suffix('b') {
            assert_eq!(ids[i - 1], first);
        }
    }
    match b.engine.append(updates(&["n0-0-0"])).await {
        Err(EngineError::DuplicateId(id)) => assert_eq!(id, "n0-0-0"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let at = ids.iter().position(|id| id == "n1-3-24").unwrap() as u64 + 1;
    assert_eq!(b.engine.resolve("n1-3-24").await.unwrap(), Some(at));
}

/// Two nodes appending the same ids at once: each id is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_on_two_nodes_is_stored_once() {
    let Some(url) = nats_url() else {
        return assert!(!with_nats());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    let b = ns.node().await;
    let mut tasks = Vec::new();
    for node in [&a, &b] {
        for k in 0..3 {
            let engine = node.engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut won = 0;
                for i in 0..40 {
                    match engine.append(updates(&[&format!("id-{i}")])).await {
                        Ok(_) => won += 1,
                        Err(EngineError::DuplicateId(_)) => {}
                        Err(e) => panic!("append {k}/{i}: {e}"),
                    }
                }
                won
            }));
        }
    }
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap();
    }
    assert_eq!(won, 40, "each id once");
    assert!(eventually(Duration::from_secs(5), || async { b.sink.len() == 40 }).await);
    let mut ids = b.sink.ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    assert_eq!(a.sink.positions(), (1..=40).collect::<Vec<_>>());
}

/// A writer that died between its reservation and its log message leaves
/// a reservation naming a message never written: the id stays free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_left_by_a_dead_writer_does_not_hold_the_id() {
    let Some(url) = nats_url() else {
        return assert!(!with_nats());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    a.engine.append(updates(&["one"])).await.unwrap();
    let js = raw(&url).await;
    let mut log = js.get_stream(ns.log()).await.unwrap();
    let info = log.info().await.unwrap().clone();
    let epoch = info.created.unix_timestamp_nanos().to_string();
    let next = info.state.last_sequence + 1;
    for (id, names) in [("pending", next), ("stale", 1)] {
        js.send_publish(
            ns.id_subject(id),
            Publish::build().payload(format!("{epoch}\n{names}").into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    assert_eq!(a.engine.resolve("pending").await.unwrap(), None);
    let stored = a.engine.append(updates(&["pending"])).await.unwrap();
    assert_eq!(stored[0].position, 2);
    let stored = a.engine.append(updates(&["stale"])).await.unwrap();
    assert_eq!(stored[0].position, 3);
    assert_eq!(a.engine.resolve("pending").await.unwrap(), Some(2));
    assert_eq!(a.engine.resolve("stale").await.unwrap(), Some(3));
    assert!(matches!(
        a.engine.append(updates(&["pending"])).await,
        Err(EngineError::DuplicateId(_))
    ));
}

/// A deleted log is a gap on every node; the nodes go on with a new log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_log_is_a_gap_and_a_new_epoch() {
    let Some(url) = nats_url() else {
        return assert!(!with_nats());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    let b = ns.node().await;
    a.engine.append(updates(&["old"])).await.unwrap();
    raw(&url).await.delete_stream(ns.log()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !a.sink.gaps().is_empty() && !b.sink.gaps().is_empty()
        })
        .await,
        "both nodes signal the gap"
    );
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
    let new_at = b.sink.ids().iter().position(|id| id == "new").unwrap();
    assert!(b.sink.gap_points()[0] <= new_at);
    assert_eq!(b.engine.resolve("old").await.unwrap(), None);
}

/// Updates removed before a node delivered them (here: a log message
/// whose first position skips two) are a gap before what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_in_positions_is_a_gap() {
    let Some(url) = nats_url() else {
        return assert!(!with_nats());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    a.engine.append(updates(&["a1"])).await.unwrap();
    // A log message the engine wrote (for "a4", in a namespace of its
    // own), placed after a hole.
    let other = Namespace::new(&url);
    let o = other.node().await;
    o.engine.append(updates(&["a4"])).await.unwrap();
    let js = raw(&url).await;
    let written = js
        .get_stream(other.log())
        .await
        .unwrap()
        .direct_get(1)
        .await
        .unwrap();
    js.send_publish(
        ns.log_subject(),
        Publish::build()
            .payload(written.payload)
            .header("Herald-First", "4")
            .header("Herald-Count", "1"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert!(eventually(Duration::from_secs(5), || async { a.sink.len() == 2 }).await);
    assert_eq!(a.sink.positions(), [1, 4]);
    assert_eq!(a.sink.gap_points(), [1]);
    // Positions go on after the hole.
    let s = a.engine.append(updates(&["a5"])).await.unwrap();
    assert_eq!(s[0].position, 5);
}

/// Messages another client publishes on the log's subject (without
/// herald's headers, or with positions no herald writes) are passed over:
/// the log goes on, every node delivers what herald wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_on_the_log_are_passed_over() {
    let Some(url) = nats_url() else {
        return assert!(!with_nats());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    a.engine.append(updates(&["one"])).await.unwrap();
    let js = raw(&url).await;
    js.publish(ns.log_subject(), "not herald's".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.send_publish(
        ns.log_subject(),
        Publish::build()
            .payload("x".into())
            .header("Herald-First", u64::MAX.to_string())
            .header("Herald-Count", u64::MAX.to_string()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let b = ns.node().await;
    let s = a.engine.append(updates(&["two"])).await.unwrap();
    assert_eq!(s[0].position, 2);
    assert!(eventually(Duration::from_secs(5), || async { b.sink.len() == 1 }).await);
    assert_eq!(a.sink.ids(), ["one", "two"]);
    assert_eq!(b.sink.positions(), [2]);
    assert!(a.sink.gaps().is_empty());
    let all = read_all(&*b.engine, 1).await;
    assert_eq!(all.iter().map(|s| s.position).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(b.engine.resolve("two").await.unwrap(), Some(2));
    assert_eq!(b.engine.bounds().await.unwrap().last, 2);
}

/// Retention by count removes the oldest messages and frees their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_trims_history_and_ids() {
    let Some(url) = nats_url() else {
        return assert!(!with_nats());
    };
    let mut ns = Namespace::new(&url);
    ns.0.max_updates = Some(10);
    let a = ns.node().await;
    for i in 0..25 {
        a.engine.append(updates(&[&format!("u{i}")])).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.engine.bounds().await.unwrap().first == Some(16)
        })
        .await
    );
    let all = read_all(&*a.engine, 7).await;
    assert_eq!(
        all.iter().map(|s| s.position).collect::<Vec<_>>(),
        (16..=25).collect::<Vec<_>>()
    );
    assert_eq!(a.engine.resolve("u3").await.unwrap(), None);
    assert_eq!(a.engine.resolve("u20").await.unwrap(), Some(21));
    assert_eq!(a.engine.bounds().await.unwrap().last, 25);
    a.engine.append(updates(&["u3"])).await.unwrap();
}

/// Retention by age runs while idle, and positions go on after history
/// emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_trims_while_idle() {
    let Some(url) = nats_url() else {
        return assert!(!with_nats());
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
    let s = a.engine.append(updates(&["z"])).await.unwrap();
    assert_eq!(s[0].position, 3);
    assert_eq!(a.engine.resolve("z").await.unwrap(), Some(3));
    assert_eq!(a.engine.bounds().await.unwrap().first, Some(3));
    assert_eq!(a.sink.positions(), [1, 2, 3]);
    assert!(a.sink.gaps().is_empty());
}

/// The directory check of the testkit, on three nodes of one namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_lists_other_nodes_and_reaps_dead_ones_once() {
    let Some(url) = nats_url() else {
        return assert!(!with_nats());
    };
    let ns = Namespace::new(&url);
    herald::engine::testkit::directory_lists_other_nodes_and_reaps_dead_ones_once(
        || async { ns.engine().await },
        herald::engine::nats::presence::LIVENESS,
    )
    .await;
}

/// The lease check of the testkit, on two nodes of one namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_have_one_holder_and_pass_on() {
    let Some(url) = nats_url() else {
        return assert!(!with_nats());
    };
    let ns = Namespace::new(&url);
    herald::engine::testkit::leases_have_one_holder_and_pass_on_when_it_stops(|| async {
        ns.engine().await
    })
    .await;
}
