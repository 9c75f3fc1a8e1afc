//! The `postgres` engine against a real PostgreSQL: the shared
//! conformance suite, then what only a shared engine does (two nodes on
//! one log, the gap when the log is dropped), what only PostgreSQL does
//! (publishing inside an application's transaction: a rollback publishes
//! nothing, a commit reaches every node), and the schema's version check.
//!
//! Runs when `HERALD_TEST_POSTGRES_URL` is set (`.ci/run` sets it), and
//! says it skipped otherwise. Each check uses a namespace (a PostgreSQL
//! schema) of its own, dropped when it ends.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::Duration;

use herald::engine::postgres::{PostgresConfig, PostgresEngine};
use herald::engine::testkit::{eventually, updates, DurableEngineFactory, EngineFactory, Harness};
use herald::engine::{Engine, EngineError};

fn pg_url() -> Option<String> {
    match std::env::var("HERALD_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => None,
    }
}

fn with_pg() -> bool {
    let on = pg_url().is_some();
    if !on {
        eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    }
    on
}

fn config(url: &str, namespace: &str) -> PostgresConfig {
    PostgresConfig {
        namespace: namespace.to_owned(),
        ..PostgresConfig::new(url)
    }
}

fn namespace() -> String {
    format!("herald_test_{}", uuid::Uuid::new_v4().simple())
}

/// Drops a namespace's schema (on a runtime of its own).
fn drop_namespace(cfg: PostgresConfig) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(e) = PostgresEngine::connect(cfg).await {
                let _ = e.destroy_namespace().await;
            }
        });
    })
    .join()
    .unwrap();
}

struct Pg {
    namespace: String,
    cleanup: Option<PostgresConfig>,
}

impl Pg {
    fn new() -> Self {
        Self {
            namespace: namespace(),
            cleanup: None,
        }
    }

    async fn connect(&mut self) -> Arc<dyn Engine> {
        let cfg = config(&pg_url().unwrap(), &self.namespace);
        self.cleanup = Some(cfg.clone());
        Arc::new(PostgresEngine::connect(cfg).await.unwrap())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(cfg) = self.cleanup.take() {
            drop_namespace(cfg);
        }
    }
}

impl EngineFactory for Pg {
    async fn fresh(&mut self) -> Arc<dyn Engine> {
        self.connect().await
    }
}

impl DurableEngineFactory for Pg {
    async fn reopen(&mut self) -> Arc<dyn Engine> {
        self.connect().await
    }
}

herald::engine_conformance!(shared_suite, Pg::new(), durable, if with_pg());

struct Namespace(PostgresConfig);

impl Namespace {
    fn new(url: &str) -> Self {
        Self(config(url, &namespace()))
    }

    async fn engine(&self) -> Arc<dyn Engine> {
        Arc::new(PostgresEngine::connect(self.0.clone()).await.unwrap())
    }

    async fn node(&self) -> Harness {
        Harness::start(self.engine().await)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        drop_namespace(self.0.clone());
    }
}

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_others_appends_in_one_order() {
    let Some(url) = pg_url() else {
        return assert!(!with_pg());
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
            a.sink.len() == 200 && b.sink.len() == 200
        })
        .await
    );
    assert_eq!(a.sink.positions(), (1..=200).collect::<Vec<_>>());
    assert_eq!(a.sink.ids(), b.sink.ids());
    match b.engine.append(updates(&["n0-0-0"])).await {
        Err(EngineError::DuplicateId(id)) => assert_eq!(id, "n0-0-0"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
}

/// An application publishes inside its own transaction: a rollback
/// publishes nothing, a commit reaches every node, in order with the
/// nodes' own appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_publish_commits_with_the_application_transaction() {
    let Some(url) = pg_url() else {
        return assert!(!with_pg());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    let b = ns.node().await;
    a.engine.append(updates(&["first"])).await.unwrap();
    let mut app = raw(&url).await;
    let call = format!(
        "SELECT \"{}\".herald_publish(ARRAY['https://example.com/orders/1'], 'paid', $1)",
        ns.0.namespace
    );
    let tx = app.transaction().await.unwrap();
    tx.execute("CREATE TEMP TABLE orders (id int)", &[])
        .await
        .unwrap();
    tx.query_one(&call, &[&"rolled-back"]).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = app.transaction().await.unwrap();
    let id: String = tx.query_one(&call, &[&"committed"]).await.unwrap().get(0);
    assert_eq!(id, "committed");
    tx.commit().await.unwrap();
    // A generated id when none is given.
    let generated: String = app
        .query_one(
            &format!(
                "SELECT \"{}\".herald_publish(ARRAY['https://example.com/t'], 'x')",
                ns.0.namespace
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(generated.starts_with("urn:uuid:"), "{generated}");
    for node in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(5), || async { node.sink.len() == 3 }).await,
            "{:?}",
            node.sink.ids()
        );
        assert_eq!(node.sink.ids(), ["first", "committed", generated.as_str()]);
        assert_eq!(node.sink.positions(), [1, 2, 3]);
        let s = &node.sink.seen()[1];
        assert_eq!(s.update.topics, ["https://example.com/orders/1"]);
        assert_eq!(s.update.data, "paid");
    }
    assert_eq!(a.engine.resolve("rolled-back").await.unwrap(), None);
    // The same id again is refused, in SQL as in herald.
    let again = app.query_one(&call, &[&"committed"]).await;
    assert!(again.is_err());
    match a.engine.append(updates(&["committed"])).await {
        Err(EngineError::DuplicateId(id)) => assert_eq!(id, "committed"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
}

/// A dropped schema is a gap on every node; the nodes go on with a new log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_log_is_a_gap_and_a_new_epoch() {
    let Some(url) = pg_url() else {
        return assert!(!with_pg());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    let b = ns.node().await;
    a.engine.append(updates(&["old"])).await.unwrap();
    raw(&url)
        .await
        .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", ns.0.namespace))
        .await
        .unwrap();
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

/// Retention by count removes the oldest rows and their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_trims_history_and_ids() {
    let Some(url) = pg_url() else {
        return assert!(!with_pg());
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
    assert_eq!(a.engine.resolve("u3").await.unwrap(), None);
    assert_eq!(a.engine.resolve("u20").await.unwrap(), Some(21));
    assert_eq!(a.engine.bounds().await.unwrap().last, 25);
}

/// A schema written by a newer herald is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let Some(url) = pg_url() else {
        return assert!(!with_pg());
    };
    let ns = Namespace::new(&url);
    let _a = ns.node().await;
    raw(&url)
        .await
        .batch_execute(&format!(
            "UPDATE \"{}\".meta SET version = 99",
            ns.0.namespace
        ))
        .await
        .unwrap();
    match PostgresEngine::connect(ns.0.clone()).await {
        Err(EngineError::Unavailable(reason)) => {
            assert!(
                reason.contains("version 99") && reason.contains("upgrade herald"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    raw(&url)
        .await
        .batch_execute(&format!(
            "UPDATE \"{}\".meta SET version = 1",
            ns.0.namespace
        ))
        .await
        .unwrap();
}

/// The directory check of the testkit, on three nodes of one namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_lists_other_nodes_and_reaps_dead_ones_once() {
    let Some(url) = pg_url() else {
        return assert!(!with_pg());
    };
    let ns = Namespace::new(&url);
    herald::engine::testkit::directory_lists_other_nodes_and_reaps_dead_ones_once(
        || async { ns.engine().await },
        herald::engine::postgres::presence::LIVENESS,
    )
    .await;
}

/// Appends written together in one group: the one PostgreSQL refuses (a
/// NUL byte in its data, a duplicate id) fails alone, the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_append_fails_alone_in_its_group() {
    let Some(url) = pg_url() else {
        return assert!(!with_pg());
    };
    let ns = Namespace::new(&url);
    let a = ns.node().await;
    a.engine.append(updates(&["taken"])).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let engine = a.engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut u = updates(&[&format!("g{i}")]);
            if i == 7 {
                u[0].data = "bad\0data".into();
            }
            if i == 13 {
                u[0].id = "taken".into();
            }
            (i, engine.append(u).await)
        }));
    }
    for t in tasks {
        let (i, result) = t.await.unwrap();
        match i {
            7 => assert!(
                matches!(result, Err(EngineError::Unavailable(_))),
                "{result:?}"
            ),
            13 => assert!(
                matches!(result, Err(EngineError::DuplicateId(ref id)) if id == "taken"),
                "{result:?}"
            ),
            _ => assert!(result.is_ok(), "append {i}: {result:?}"),
        }
    }
    assert!(eventually(Duration::from_secs(5), || async { a.sink.len() == 39 }).await);
    let positions = a.sink.positions();
    assert_eq!(positions, (1..=39).collect::<Vec<_>>());
}

/// The lease check of the testkit, on two nodes of one namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_have_one_holder_and_pass_on() {
    let Some(url) = pg_url() else {
        return assert!(!with_pg());
    };
    let ns = Namespace::new(&url);
    herald::engine::testkit::leases_have_one_holder_and_pass_on_when_it_stops(|| async {
        ns.engine().await
    })
    .await;
}
