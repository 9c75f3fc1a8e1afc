//! The engine conformance suite: one set of properties that every engine
//! must pass, run against each engine (see `conformance!` at the bottom of
//! the shared part), then tests only the durable `local` engine can pass:
//! restart, retention, damaged files, crashes, a full disk.
//!
//! A new engine joins by adding a harness constructor and one line to the
//! `conformance!` invocation.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::engine::local::{Durability, LocalConfig, LocalEngine, Retention, STORE_FILE};
use herald::engine::memory::MemoryEngine;
use herald::engine::{Bounds, Engine, EngineError, Position, Sink, Stored};
use herald_protocol::Update;
use parking_lot::Mutex;
use tempfile::TempDir;

// === harness ===

/// A sink that records everything delivered, in delivery order.
#[derive(Debug, Default)]
struct RecordingSink {
    seen: Mutex<Vec<Arc<Stored>>>,
}

impl Sink for RecordingSink {
    fn deliver(&self, updates: &[Arc<Stored>]) {
        self.seen.lock().extend(updates.iter().cloned());
    }
}

impl RecordingSink {
    fn positions(&self) -> Vec<Position> {
        self.seen.lock().iter().map(|s| s.position).collect()
    }
    fn ids(&self) -> Vec<String> {
        self.seen
            .lock()
            .iter()
            .map(|s| s.update.id.clone())
            .collect()
    }
}

/// An engine under test, started with a recording sink.
struct Harness {
    engine: Arc<dyn Engine>,
    sink: Arc<RecordingSink>,
    _dir: Option<TempDir>,
}

impl Harness {
    fn new(engine: Arc<dyn Engine>, dir: Option<TempDir>) -> Self {
        let sink = Arc::new(RecordingSink::default());
        engine.start(sink.clone());
        Self {
            engine,
            sink,
            _dir: dir,
        }
    }
}

fn memory() -> Harness {
    Harness::new(Arc::new(MemoryEngine::new(1_000_000)), None)
}

fn local() -> Harness {
    let dir = TempDir::new().unwrap();
    let engine = LocalEngine::open(LocalConfig::new(dir.path().join("store"))).unwrap();
    Harness::new(Arc::new(engine), Some(dir))
}

fn local_async() -> Harness {
    let dir = TempDir::new().unwrap();
    let config = LocalConfig {
        durability: Durability::Async,
        ..LocalConfig::new(dir.path().join("store"))
    };
    Harness::new(Arc::new(LocalEngine::open(config).unwrap()), Some(dir))
}

fn update(id: &str) -> Update {
    Update {
        id: id.to_owned(),
        topics: vec![format!("https://example.com/items/{id}")],
        data: format!("data of {id}"),
        ..Update::default()
    }
}

fn updates(ids: &[&str]) -> Vec<Update> {
    ids.iter().map(|id| update(id)).collect()
}

/// Every retained update, read in pages of `page`.
async fn read_all(engine: &dyn Engine, page: usize) -> Vec<Arc<Stored>> {
    let mut out: Vec<Arc<Stored>> = Vec::new();
    loop {
        let after = out.last().map_or(0, |s| s.position);
        let got = engine.read_after(after, page).await.unwrap();
        assert!(got.len() <= page, "read_after returned more than its limit");
        let done = got.len() < page;
        out.extend(got);
        if done {
            return out;
        }
    }
}

/// Polls `check` until it holds or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === the properties every engine has ===

mod props {
    use super::*;

    /// Positions start at 1 and increase by one per update, across and
    /// within appends; `append` returns the stored updates with their frames.
    pub async fn positions_start_at_one_and_increase(h: &Harness) {
        let e = &h.engine;
        let one = e.append(updates(&["a"])).await.unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].position, 1);
        assert_eq!(one[0].update, update("a"));
        let three = e.append(updates(&["b", "c", "d"])).await.unwrap();
        let pos: Vec<_> = three.iter().map(|s| s.position).collect();
        assert_eq!(pos, [2, 3, 4]);
        let ids: Vec<_> = three.iter().map(|s| s.update.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "d"]);
        let frame = std::str::from_utf8(&three[0].frame).unwrap();
        assert!(
            frame.contains("id: b\n") || frame.contains("id:b\n"),
            "{frame:?}"
        );
        assert!(frame.contains("data of b"), "{frame:?}");
        assert!(e.append(Vec::new()).await.unwrap().is_empty());
        assert_eq!(e.append(updates(&["e"])).await.unwrap()[0].position, 5);
    }

    /// `read_after` returns at most `limit` updates after the position, in
    /// order, with every field as appended.
    pub async fn read_after_paginates(h: &Harness) {
        let e = &h.engine;
        let ids: Vec<String> = (1..=25).map(|i| format!("u{i}")).collect();
        for chunk in ids.chunks(4) {
            let batch = chunk.iter().map(|id| update(id)).collect();
            e.append(batch).await.unwrap();
        }
        let page = |after, limit| async move {
            let got = e.read_after(after, limit).await.unwrap();
            got.iter().map(|s| s.position).collect::<Vec<_>>()
        };
        assert_eq!(page(0, 10).await, (1..=10).collect::<Vec<_>>());
        assert_eq!(page(10, 10).await, (11..=20).collect::<Vec<_>>());
        assert_eq!(page(20, 10).await, (21..=25).collect::<Vec<_>>());
        assert_eq!(page(3, 1).await, [4]);
        assert!(page(25, 10).await.is_empty());
        assert!(page(1000, 10).await.is_empty());
        assert!(page(Position::MAX, 10).await.is_empty());
        assert!(page(0, 0).await.is_empty());
        assert_eq!(page(0, usize::MAX).await.len(), 25);
        let all = read_all(e.as_ref(), 7).await;
        assert_eq!(all.len(), 25);
        for (i, s) in all.iter().enumerate() {
            assert_eq!(s.position, i as u64 + 1);
            assert_eq!(s.update, update(&ids[i]));
        }
    }

    /// `resolve` maps an id to its position; unknown ids are `None`.
    pub async fn resolve_by_id(h: &Harness) {
        let e = &h.engine;
        e.append(updates(&["x", "y"])).await.unwrap();
        e.append(updates(&["urn:uuid:3a1c", "spaces and ünïcode"]))
            .await
            .unwrap();
        assert_eq!(e.resolve("x").await.unwrap(), Some(1));
        assert_eq!(e.resolve("y").await.unwrap(), Some(2));
        assert_eq!(e.resolve("urn:uuid:3a1c").await.unwrap(), Some(3));
        assert_eq!(e.resolve("spaces and ünïcode").await.unwrap(), Some(4));
        assert_eq!(e.resolve("nope").await.unwrap(), None);
        assert_eq!(e.resolve("").await.unwrap(), None);
    }

    /// A duplicate id, in history or within the request, refuses the whole
    /// request: nothing of it is stored, delivered or given a position.
    pub async fn duplicate_id_refused_without_partial_write(h: &Harness) {
        let e = &h.engine;
        e.append(updates(&["a"])).await.unwrap();
        match e.append(updates(&["b", "a"])).await {
            Err(EngineError::DuplicateId(id)) => assert_eq!(id, "a"),
            other => panic!("expected DuplicateId, got {other:?}"),
        }
        match e.append(updates(&["c", "c"])).await {
            Err(EngineError::DuplicateId(id)) => assert_eq!(id, "c"),
            other => panic!("expected DuplicateId, got {other:?}"),
        }
        assert_eq!(e.resolve("b").await.unwrap(), None);
        assert_eq!(e.resolve("c").await.unwrap(), None);
        assert_eq!(e.bounds().await.unwrap().last, 1);
        assert_eq!(e.read_after(0, 10).await.unwrap().len(), 1);
        assert_eq!(h.sink.ids(), ["a"]);
        // The refused ids are free to use, and positions have no gap.
        let ok = e.append(updates(&["b", "c"])).await.unwrap();
        assert_eq!(ok[0].position, 2);
        assert_eq!(ok[1].position, 3);
        assert_eq!(h.sink.positions(), [1, 2, 3]);
    }

    /// Concurrent appends of one id: exactly one wins; the others are
    /// refused, and unrelated appends alongside are unaffected.
    pub async fn concurrent_duplicates_one_wins(h: &Harness) {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let e = h.engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut unique = 0;
                let mut same = None;
                for i in 0..20 {
                    if i == 10 {
                        same = Some(e.append(updates(&["same"])).await);
                    }
                    e.append(vec![update(&format!("t{t}-{i}"))]).await.unwrap();
                    unique += 1;
                }
                (unique, same.unwrap())
            }));
        }
        let mut wins = 0;
        for task in tasks {
            let (unique, same) = task.await.unwrap();
            assert_eq!(unique, 20);
            match same {
                Ok(s) => {
                    assert_eq!(s[0].update.id, "same");
                    wins += 1;
                }
                Err(EngineError::DuplicateId(id)) => assert_eq!(id, "same"),
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        assert_eq!(wins, 1);
        let ids = h.sink.ids();
        assert_eq!(ids.len(), 8 * 20 + 1);
        assert_eq!(ids.iter().filter(|id| *id == "same").count(), 1);
        assert_eq!(h.sink.positions(), (1..=161).collect::<Vec<_>>());
    }

    /// The sink receives each committed update once, in position order,
    /// before `append` returns, and exactly what `append` returned.
    pub async fn sink_receives_every_update_in_order(h: &Harness) {
        let e = &h.engine;
        let mut returned = Vec::new();
        for i in 0..50 {
            let batch = if i % 5 == 0 {
                updates(&[&format!("m{i}a"), &format!("m{i}b"), &format!("m{i}c")])
            } else {
                vec![update(&format!("s{i}"))]
            };
            let stored = e.append(batch).await.unwrap();
            // Delivered before the append resolved.
            let last = stored.last().unwrap().position;
            assert_eq!(h.sink.positions().last(), Some(&last));
            returned.extend(stored);
        }
        let seen = h.sink.seen.lock().clone();
        assert_eq!(seen.len(), returned.len());
        for (a, b) in seen.iter().zip(&returned) {
            assert_eq!(a.position, b.position);
            assert_eq!(a.update, b.update);
            assert_eq!(a.frame, b.frame);
        }
        assert_eq!(h.sink.positions(), (1..=70).collect::<Vec<_>>());
    }

    /// 16 tasks × 500 appends (odd tasks append two updates at a time): the
    /// sink sees positions 1..=n with no gap or duplicate, in order, each
    /// task's updates in its own order, and history holds the same.
    pub async fn concurrent_appenders_keep_order(h: &Harness) {
        const TASKS: usize = 16;
        const APPENDS: usize = 500;
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let e = h.engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..APPENDS {
                    let batch = if t % 2 == 1 {
                        updates(&[&format!("t{t}-{i}-a"), &format!("t{t}-{i}-b")])
                    } else {
                        vec![update(&format!("t{t}-{i}"))]
                    };
                    let stored = e.append(batch).await.unwrap();
                    if stored.len() == 2 {
                        assert_eq!(stored[1].position, stored[0].position + 1);
                    }
                    mine.extend(stored.iter().map(|s| (s.update.id.clone(), s.position)));
                }
                mine
            }));
        }
        let mut returned = HashMap::new();
        for task in tasks {
            let mine = task.await.unwrap();
            assert!(
                mine.windows(2).all(|w| w[0].1 < w[1].1),
                "a task's updates out of order"
            );
            returned.extend(mine);
        }
        let total = TASKS / 2 * APPENDS + TASKS / 2 * APPENDS * 2;
        assert_eq!(returned.len(), total);
        let positions = h.sink.positions();
        assert_eq!(positions, (1..=total as u64).collect::<Vec<_>>());
        let seen = h.sink.seen.lock().clone();
        for s in &seen {
            assert_eq!(returned.get(&s.update.id), Some(&s.position));
        }
        let history = read_all(h.engine.as_ref(), 1000).await;
        assert_eq!(history.len(), total);
        for (a, b) in history.iter().zip(&seen) {
            assert_eq!((a.position, &a.update), (b.position, &b.update));
        }
        assert_eq!(
            h.engine.bounds().await.unwrap(),
            Bounds {
                first: Some(1),
                last: total as u64
            }
        );
    }

    /// A seeded random mix of appends (with frequent duplicate ids), reads,
    /// lookups and bounds, checked step by step against a plain model.
    pub async fn matches_a_simple_model(h: &Harness) {
        let e = &h.engine;
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut model: Vec<String> = Vec::new();
        for step in 0..400 {
            match next(10) {
                0..=5 => {
                    let ids: Vec<String> =
                        (0..=next(3)).map(|_| format!("id{}", next(300))).collect();
                    let mut seen = HashSet::new();
                    let dup = ids
                        .iter()
                        .find(|id| model.contains(id) || !seen.insert(id.as_str()))
                        .cloned();
                    let got = e.append(ids.iter().map(|id| update(id)).collect()).await;
                    match (got, dup) {
                        (Err(EngineError::DuplicateId(id)), Some(dup)) => assert_eq!(id, dup),
                        (Ok(stored), None) => {
                            for s in &stored {
                                model.push(s.update.id.clone());
                                assert_eq!(s.position, model.len() as u64, "step {step}");
                            }
                            let got: Vec<_> = stored.iter().map(|s| &s.update.id).collect();
                            assert_eq!(got, ids.iter().collect::<Vec<_>>());
                        }
                        (got, dup) => panic!("step {step}: got {got:?}, model says dup {dup:?}"),
                    }
                }
                6 | 7 => {
                    let after = next(model.len() as u64 + 3);
                    let limit = next(12) as usize;
                    let got = e.read_after(after, limit).await.unwrap();
                    let want: Vec<(u64, &String)> = model
                        .iter()
                        .enumerate()
                        .map(|(i, id)| (i as u64 + 1, id))
                        .skip(after as usize)
                        .take(limit)
                        .collect();
                    let got: Vec<(u64, &String)> =
                        got.iter().map(|s| (s.position, &s.update.id)).collect();
                    assert_eq!(got, want, "step {step}: read_after({after}, {limit})");
                }
                8 => {
                    let id = format!("id{}", next(300));
                    let want = model.iter().position(|m| *m == id).map(|i| i as u64 + 1);
                    assert_eq!(e.resolve(&id).await.unwrap(), want, "step {step}");
                }
                _ => {
                    let want = Bounds {
                        first: (!model.is_empty()).then_some(1),
                        last: model.len() as u64,
                    };
                    assert_eq!(e.bounds().await.unwrap(), want, "step {step}");
                }
            }
        }
        assert_eq!(h.sink.ids(), model);
    }

    /// `bounds` is empty at first, then spans the history.
    pub async fn bounds_track_history(h: &Harness) {
        let e = &h.engine;
        assert_eq!(
            e.bounds().await.unwrap(),
            Bounds {
                first: None,
                last: 0
            }
        );
        e.append(updates(&["a", "b", "c"])).await.unwrap();
        assert_eq!(
            e.bounds().await.unwrap(),
            Bounds {
                first: Some(1),
                last: 3
            }
        );
    }

    /// After `close`, appends fail with `Closed`; a second close is fine.
    /// Appends racing with close either commit (and were delivered) or fail
    /// with `Closed`, never anything else.
    pub async fn close_then_append_is_closed(h: &Harness) {
        let e = &h.engine;
        e.append(updates(&["before"])).await.unwrap();
        let mut racers = Vec::new();
        for t in 0..8 {
            let e = h.engine.clone();
            racers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..20_000 {
                    match e.append(vec![update(&format!("r{t}-{i}"))]).await {
                        Ok(s) => acked.push(s[0].update.id.clone()),
                        Err(EngineError::Closed) => return acked,
                        Err(other) => panic!("unexpected error while closing: {other:?}"),
                    }
                    // An engine whose append is immediately ready must not
                    // starve the task that closes it.
                    tokio::task::yield_now().await;
                }
                acked
            }));
        }
        // Close while the racers are appending.
        let racing = eventually(Duration::from_secs(10), || async {
            h.sink.seen.lock().len() > 50
        })
        .await;
        assert!(racing);
        e.close().await.unwrap();
        assert!(matches!(
            e.append(updates(&["after"])).await,
            Err(EngineError::Closed)
        ));
        e.close().await.unwrap();
        let delivered: HashSet<String> = h.sink.ids().into_iter().collect();
        for racer in racers {
            for id in racer.await.unwrap() {
                assert!(
                    delivered.contains(&id),
                    "{id} acknowledged but not delivered"
                );
            }
        }
    }
}

/// Runs every property against every engine: one test per (engine,
/// property), so a failure names both.
macro_rules! conformance {
    ($($engine:ident),+ ; $props:tt) => {
        $( conformance!(@engine $engine $props); )+
    };
    (@engine $engine:ident { $($prop:ident),* $(,)? }) => {
        mod $engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $prop() {
                    let h = super::$engine();
                    super::props::$prop(&h).await;
                    h.engine.close().await.unwrap();
                }
            )*
        }
    };
}

conformance!(memory, local, local_async; {
    positions_start_at_one_and_increase,
    read_after_paginates,
    resolve_by_id,
    duplicate_id_refused_without_partial_write,
    concurrent_duplicates_one_wins,
    sink_receives_every_update_in_order,
    concurrent_appenders_keep_order,
    bounds_track_history,
    close_then_append_is_closed,
    matches_a_simple_model,
});

// === the local engine only ===

mod local_only {
    use super::*;

    fn config(dir: &Path) -> LocalConfig {
        LocalConfig::new(dir.join("store"))
    }

    fn open(config: &LocalConfig) -> LocalEngine {
        LocalEngine::open(config.clone()).unwrap()
    }

    fn open_err(config: &LocalConfig) -> String {
        match LocalEngine::open(config.clone()) {
            Ok(_) => panic!("open of {} should fail", config.path.display()),
            Err(EngineError::Unavailable(reason)) => reason,
            Err(other) => panic!("expected Unavailable, got {other:?}"),
        }
    }

    /// Updates using every field, in every combination that matters.
    fn rich_updates() -> Vec<Update> {
        vec![
            Update {
                id: "urn:uuid:0001".into(),
                topics: vec!["https://example.com/books/1".into()],
                data: "plain".into(),
                ..Update::default()
            },
            Update {
                id: "two".into(),
                topics: vec![
                    "https://example.com/books/2".into(),
                    "https://example.com/users/dunglas/books/2".into(),
                    "urn:topic:ünïcödé".into(),
                ],
                data: "line 1\nline 2\r\n\nafter blank — ✓".into(),
                event_type: Some("book.updated".into()),
                retry: Some(2500),
                private: true,
            },
            Update {
                id: "three".into(),
                topics: vec!["t".into()],
                data: String::new(),
                event_type: Some(String::new()),
                retry: Some(0),
                private: false,
            },
            Update {
                id: "four".into(),
                topics: vec!["t".into()],
                data: "x".repeat(100_000),
                event_type: None,
                retry: Some(u64::MAX),
                private: true,
            },
        ]
    }

    async fn restart_keeps_everything_with(durability: Durability, close: bool) {
        let dir = TempDir::new().unwrap();
        let config = LocalConfig {
            durability,
            ..config(dir.path())
        };
        let rich = rich_updates();
        let before = {
            let engine = open(&config);
            engine.append(rich[..1].to_vec()).await.unwrap();
            engine.append(rich[1..].to_vec()).await.unwrap();
            engine.append(updates(&["last"])).await.unwrap();
            let before = engine.read_after(0, 100).await.unwrap();
            if close {
                engine.close().await.unwrap();
            }
            before
            // Dropped here; without close, Drop still flushes.
        };
        assert_eq!(before.len(), 5);
        let engine = open(&config);
        let after = engine.read_after(0, 100).await.unwrap();
        assert_eq!(after.len(), 5);
        for (a, b) in before.iter().zip(&after) {
            assert_eq!(a.position, b.position);
            assert_eq!(a.update, b.update);
            assert_eq!(a.frame, b.frame);
        }
        for (i, u) in rich.iter().enumerate() {
            assert_eq!(after[i].update, *u);
            assert_eq!(engine.resolve(&u.id).await.unwrap(), Some(i as u64 + 1));
        }
        assert_eq!(
            engine.bounds().await.unwrap(),
            Bounds {
                first: Some(1),
                last: 5
            }
        );
        // Ids stay taken, positions continue.
        assert!(matches!(
            engine.append(updates(&["two"])).await,
            Err(EngineError::DuplicateId(_))
        ));
        let next = engine.append(updates(&["next"])).await.unwrap();
        assert_eq!(next[0].position, 6);
        engine.close().await.unwrap();
        let engine = open(&config);
        assert_eq!(engine.bounds().await.unwrap().last, 6);
        assert_eq!(engine.resolve("next").await.unwrap(), Some(6));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_keeps_order_ids_and_fields() {
        restart_keeps_everything_with(Durability::Sync, true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_keeps_everything_with_async_durability() {
        restart_keeps_everything_with(Durability::Async, true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_after_drop_without_close() {
        restart_keeps_everything_with(Durability::Async, false).await;
    }

    /// A sink that panics on its first delivery.
    #[derive(Debug, Default)]
    struct PanickySink(std::sync::atomic::AtomicBool);

    impl Sink for PanickySink {
        fn deliver(&self, _: &[Arc<Stored>]) {
            if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("sink bug (expected by the test)");
            }
        }
    }

    /// A bug in the sink must not stop the writer: later appends work.
    #[tokio::test]
    async fn a_panicking_sink_does_not_stop_the_engine() {
        let dir = TempDir::new().unwrap();
        let engine = open(&config(dir.path()));
        engine.start(Arc::new(PanickySink::default()));
        engine.append(updates(&["a"])).await.unwrap();
        let b = engine.append(updates(&["b"])).await.unwrap();
        assert_eq!(b[0].position, 2);
        engine.close().await.unwrap();
    }

    async fn retained(engine: &LocalEngine) -> (Bounds, Vec<Position>) {
        let bounds = engine.bounds().await.unwrap();
        let history = read_all(engine, 1000).await;
        (bounds, history.iter().map(|s| s.position).collect())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_count() {
        let dir = TempDir::new().unwrap();
        let config = LocalConfig {
            retention: Retention {
                max_updates: Some(10),
                ..Retention::default()
            },
            ..config(dir.path())
        };
        let engine = open(&config);
        for i in 1..=25 {
            engine.append(vec![update(&format!("u{i}"))]).await.unwrap();
        }
        let moved = eventually(Duration::from_secs(10), || async {
            engine.bounds().await.unwrap().first == Some(16)
        })
        .await;
        assert!(moved, "bounds: {:?}", engine.bounds().await.unwrap());
        let (bounds, positions) = retained(&engine).await;
        assert_eq!(bounds.last, 25);
        assert_eq!(positions, (16..=25).collect::<Vec<_>>());
        assert_eq!(engine.resolve("u1").await.unwrap(), None);
        assert_eq!(engine.resolve("u15").await.unwrap(), None);
        assert_eq!(engine.resolve("u16").await.unwrap(), Some(16));
        // A removed id may be used again, and positions keep going.
        let again = engine.append(updates(&["u1"])).await.unwrap();
        assert_eq!(again[0].position, 26);
        engine.close().await.unwrap();
        drop(engine);
        // The clean-up is durable.
        let engine = open(&config);
        let (bounds, _) = retained(&engine).await;
        assert_eq!(bounds.last, 26);
        assert!(bounds.first.unwrap() >= 16);
        assert!(
            eventually(Duration::from_secs(10), || async {
                engine.bounds().await.unwrap().first == Some(17)
            })
            .await
        );
        assert_eq!(engine.resolve("u1").await.unwrap(), Some(26));
    }

    /// Age limit; also shows that positions continue after a restart even
    /// when retention removed every update.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_age() {
        let dir = TempDir::new().unwrap();
        let config = LocalConfig {
            retention: Retention {
                max_age: Some(Duration::from_millis(1500)),
                ..Retention::default()
            },
            ..config(dir.path())
        };
        let engine = open(&config);
        for i in 1..=5 {
            engine
                .append(vec![update(&format!("old{i}"))])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for i in 1..=5 {
            engine
                .append(vec![update(&format!("new{i}"))])
                .await
                .unwrap();
        }
        // The old ones go first, while the new ones are still young.
        let moved = eventually(Duration::from_secs(10), || async {
            engine.bounds().await.unwrap().first != Some(1)
        })
        .await;
        assert!(moved);
        let first = engine.bounds().await.unwrap().first;
        assert!(first.is_none() || first >= Some(6), "{first:?}");
        for i in 1..=5 {
            assert_eq!(engine.resolve(&format!("old{i}")).await.unwrap(), None);
        }
        // Then everything expires.
        let emptied = eventually(Duration::from_secs(10), || async {
            engine.bounds().await.unwrap().first.is_none()
        })
        .await;
        assert!(emptied);
        assert_eq!(
            engine.bounds().await.unwrap(),
            Bounds {
                first: None,
                last: 10
            }
        );
        assert!(engine.read_after(0, 100).await.unwrap().is_empty());
        assert_eq!(engine.resolve("new5").await.unwrap(), None);
        engine.close().await.unwrap();
        drop(engine);
        let engine = open(&config);
        assert_eq!(
            engine.bounds().await.unwrap(),
            Bounds {
                first: None,
                last: 10
            }
        );
        let next = engine.append(updates(&["after-restart"])).await.unwrap();
        assert_eq!(next[0].position, 11);
        assert_eq!(engine.bounds().await.unwrap().first, Some(11));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_bytes() {
        let dir = TempDir::new().unwrap();
        let config = LocalConfig {
            retention: Retention {
                max_bytes: Some(20_000),
                ..Retention::default()
            },
            ..config(dir.path())
        };
        let engine = open(&config);
        for i in 1..=100 {
            let u = Update {
                data: "d".repeat(1000),
                ..update(&format!("b{i}"))
            };
            engine.append(vec![u]).await.unwrap();
        }
        let within = eventually(Duration::from_secs(10), || async {
            let history = read_all(&engine, 1000).await;
            history.iter().map(|s| s.update.data.len()).sum::<usize>() <= 20_000
        })
        .await;
        assert!(within);
        let (bounds, positions) = retained(&engine).await;
        // About 1,070 bytes each counted: 18 fit in 20,000.
        assert!(
            (15..=19).contains(&positions.len()),
            "{} retained",
            positions.len()
        );
        assert_eq!(bounds.last, 100);
        assert_eq!(bounds.first, positions.first().copied());
        assert_eq!(positions.last(), Some(&100));
        assert_eq!(engine.resolve("b1").await.unwrap(), None);
        assert_eq!(engine.resolve("b100").await.unwrap(), Some(100));
    }

    /// A store with some history, closed.
    async fn filled_store(dir: &Path, n: usize) -> (LocalConfig, PathBuf) {
        let config = config(dir);
        let engine = open(&config);
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let batch = chunk
                .iter()
                .map(|i| Update {
                    data: format!("{i:0>500}"),
                    ..update(&format!("f{i}"))
                })
                .collect();
            engine.append(batch).await.unwrap();
        }
        engine.close().await.unwrap();
        let file = engine.file().to_path_buf();
        drop(engine);
        (config, file)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_middle_is_an_error_and_the_file_is_kept() {
        let dir = TempDir::new().unwrap();
        let (config, file) = filled_store(dir.path(), 3000).await;
        // Control: the intact file opens.
        drop(open(&config));
        let mut bytes = std::fs::read(&file).unwrap();
        let len = bytes.len();
        assert!(len > 1_000_000, "store is {len} bytes");
        for b in &mut bytes[len / 3..2 * len / 3] {
            *b = 0x5a;
        }
        std::fs::write(&file, &bytes).unwrap();
        let reason = open_err(&config);
        println!("damaged store: {reason}");
        assert!(reason.contains(&file.display().to_string()), "{reason}");
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "the file was changed");
        // And it stays an error: nothing was reset.
        let again = open_err(&config);
        assert!(again.contains(&file.display().to_string()), "{again}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncated_file_is_an_error_and_the_file_is_kept() {
        let dir = TempDir::new().unwrap();
        let (config, file) = filled_store(dir.path(), 2000).await;
        let bytes = std::fs::read(&file).unwrap();
        for keep in [bytes.len() / 2, 4096, 100, 0] {
            std::fs::write(&file, &bytes[..keep]).unwrap();
            let reason = open_err(&config);
            println!("truncated to {keep}: {reason}");
            assert!(reason.contains(&file.display().to_string()), "{reason}");
            assert_eq!(std::fs::metadata(&file).unwrap().len(), keep as u64);
        }
    }

    #[tokio::test]
    async fn foreign_file_is_an_error() {
        let dir = TempDir::new().unwrap();
        let config = config(dir.path());
        std::fs::create_dir_all(&config.path).unwrap();
        let file = config.path.join(STORE_FILE);
        let junk = b"this is not a database, but it is somebody's data\n".repeat(200);
        std::fs::write(&file, &junk).unwrap();
        let reason = open_err(&config);
        println!("foreign file: {reason}");
        assert!(reason.contains(&file.display().to_string()), "{reason}");
        assert_eq!(std::fs::read(&file).unwrap(), junk);
    }

    /// A path that cannot be a directory: works as root too.
    #[tokio::test]
    async fn unusable_directory_is_an_error() {
        let dir = TempDir::new().unwrap();
        let regular = dir.path().join("a-file");
        std::fs::write(&regular, b"x").unwrap();
        let config = LocalConfig::new(regular.join("store"));
        let reason = open_err(&config);
        println!("parent is a file: {reason}");
        assert!(reason.contains(&regular.display().to_string()), "{reason}");
    }

    /// A read-only directory. Root ignores permission bits, so as root the
    /// store directory is a read-only tmpfs mount instead, which stops root
    /// too.
    #[cfg(unix)]
    #[tokio::test]
    async fn read_only_directory_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o555)).unwrap();
        let writable = std::fs::write(store.join("probe"), b"x").is_ok();
        let _mount = if writable {
            let ro = dir.path().join("ro");
            std::fs::create_dir(&ro).unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
                .arg(&ro)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "running as root and cannot mount a read-only tmpfs");
            let unmount = Unmount(ro.clone());
            assert!(std::fs::write(ro.join("probe"), b"x").is_err());
            let reason = open_err(&LocalConfig::new(&ro));
            println!("read-only mount: {reason}");
            assert!(reason.contains(&ro.display().to_string()), "{reason}");
            Some(unmount)
        } else {
            let reason = open_err(&LocalConfig::new(&store));
            println!("read-only directory: {reason}");
            assert!(reason.contains(&store.display().to_string()), "{reason}");
            None
        };
    }

    /// Unmounts on drop.
    struct Unmount(std::path::PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[tokio::test]
    async fn second_open_of_the_same_store_is_refused() {
        let dir = TempDir::new().unwrap();
        let config = config(dir.path());
        let first = open(&config);
        let reason = open_err(&config);
        assert!(reason.contains("already open"), "{reason}");
        first.close().await.unwrap();
        // close() releases the file.
        let second = open(&config);
        second.close().await.unwrap();
    }

    // --- crash safety: a child process appends, the test kills it -9 ---

    const CHILD_DIR: &str = "HERALD_ENGINE_SUITE_CHILD_DIR";
    const CHILD_MODE: &str = "HERALD_ENGINE_SUITE_CHILD_MODE";
    const CHILD_PREFIX: &str = "HERALD_ENGINE_SUITE_CHILD_PREFIX";

    /// Not a test: the child process of the crash tests. Appends from 8
    /// tasks and prints `ack <id> <position>` for every acknowledged
    /// update, until killed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "child process of the crash tests"]
    async fn crash_child() {
        use std::io::Write;
        let Some(dir) = std::env::var_os(CHILD_DIR) else {
            return;
        };
        let mode = std::env::var(CHILD_MODE).unwrap_or_default();
        let prefix = std::env::var(CHILD_PREFIX).unwrap_or_default();
        let durability = if mode == "async" {
            Durability::Async
        } else {
            Durability::Sync
        };
        let engine: Arc<LocalEngine> = Arc::new(
            LocalEngine::open(LocalConfig {
                durability,
                ..LocalConfig::new(PathBuf::from(dir))
            })
            .unwrap(),
        );
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let ack = |out: &std::sync::Mutex<std::io::Stdout>, stored: &[Arc<Stored>]| {
            let mut out = out.lock().unwrap();
            for s in stored {
                writeln!(out, "ack {} {}", s.update.id, s.position).unwrap();
            }
            out.flush().unwrap();
        };
        if mode == "async" {
            // Acknowledge 100, say so, then stay idle until killed.
            for i in 0..100 {
                let id = format!("{prefix}a{i}");
                let s = engine.append(vec![update(&id)]).await.unwrap();
                ack(&out, &s);
            }
            writeln!(out.lock().unwrap(), "idle").unwrap();
            out.lock().unwrap().flush().unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let mut tasks = Vec::new();
        for t in 0..8 {
            let engine = engine.clone();
            let out = out.clone();
            let prefix = prefix.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let batch = vec![Update {
                        data: "y".repeat(100 + i % 300),
                        ..update(&format!("{prefix}c{t}-{i}"))
                    }];
                    let s = engine.append(batch).await.unwrap();
                    ack(&out, &s);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    /// Starts the child, reads acknowledgements until `enough` says stop,
    /// kills it with SIGKILL, returns the acknowledged (id, position).
    fn run_child_and_kill(
        dir: &Path,
        mode: &str,
        prefix: &str,
        mut enough: impl FnMut(&str, usize) -> bool,
    ) -> Vec<(String, Position)> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "local_only::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir)
            .env(CHILD_MODE, mode)
            .env(CHILD_PREFIX, prefix)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest may print "test ... " in front of the first line.
            if let Some(at) = line.find("ack ") {
                let rest = &line[at + 4..];
                let (id, pos) = rest.rsplit_once(' ').unwrap();
                acked.push((id.to_owned(), pos.parse().unwrap()));
            }
            if enough(&line, acked.len()) {
                break;
            }
        }
        // Child::kill sends SIGKILL: no destructor, no flush, no close.
        child.kill().unwrap();
        child.wait().unwrap();
        acked
    }

    async fn assert_all_acknowledged_present(dir: &Path, acked: &[(String, Position)]) {
        let engine = LocalEngine::open(LocalConfig::new(dir)).unwrap();
        for (id, pos) in acked {
            assert_eq!(engine.resolve(id).await.unwrap(), Some(*pos), "lost {id}");
        }
        let history = read_all(&engine, 1000).await;
        let max = acked.iter().map(|a| a.1).max().unwrap();
        assert!(history.len() as u64 >= max);
        for (i, s) in history.iter().enumerate() {
            assert_eq!(s.position, i as u64 + 1, "gap in history");
        }
        let bounds = engine.bounds().await.unwrap();
        let id = format!("after-crash-{}", acked.len());
        let next = engine.append(updates(&[&id])).await.unwrap();
        assert_eq!(next[0].position, bounds.last + 1);
        engine.close().await.unwrap();
    }

    /// After `kill -9` in the middle of a stream of appends, the store opens
    /// and holds every acknowledged update (Sync durability).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_9_keeps_every_acknowledged_update() {
        let dir = TempDir::new().unwrap();
        let store = dir.path().join("store");
        let mut acked = Vec::new();
        for round in 0..3 {
            let prefix = format!("r{round}-");
            let more = run_child_and_kill(&store, "sync", &prefix, |_, n| n >= 1500);
            assert!(
                more.len() >= 1500,
                "round {round}: child acknowledged {}",
                more.len()
            );
            acked.extend(more);
            assert_all_acknowledged_present(&store, &acked).await;
        }
    }

    /// With Async durability, acknowledged updates reach the disk within
    /// the flush interval even if nothing else happens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_durability_flushes_in_the_background() {
        let dir = TempDir::new().unwrap();
        let store = dir.path().join("store");
        let mut idle_at = None;
        let acked = run_child_and_kill(&store, "async", "", |line, _| {
            if line.ends_with("idle") {
                idle_at = Some(Instant::now());
                // Past FLUSH_INTERVAL plus one writer tick.
                std::thread::sleep(Duration::from_millis(2500));
                return true;
            }
            false
        });
        assert!(idle_at.is_some());
        assert_eq!(acked.len(), 100);
        assert_all_acknowledged_present(&store, &acked).await;
    }

    // --- a full disk ---

    /// A small tmpfs, unmounted on drop. Needs root (or CAP_SYS_ADMIN).
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        fn mount(at: &Path, size: &str) -> Option<Self> {
            std::fs::create_dir_all(at).ok()?;
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at)
                .stderr(std::process::Stdio::null())
                .status()
                .ok()?;
            status.success().then(|| Self(at.to_path_buf()))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// When the disk fills, appends fail with `Unavailable`, the engine
    /// keeps running, and once space is back appends succeed again with
    /// nothing acknowledged lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_disk_fails_appends_and_the_engine_recovers() {
        let dir = TempDir::new().unwrap();
        let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "8m") else {
            println!("skipped: cannot mount a small tmpfs (needs root)");
            return;
        };
        let config = LocalConfig::new(disk.0.join("store"));
        let engine = open(&config);
        let mut acked = Vec::new();
        let mut failure = None;
        for i in 0..10_000 {
            let u = Update {
                data: "z".repeat(2000),
                ..update(&format!("d{i}"))
            };
            match engine.append(vec![u]).await {
                Ok(s) => acked.push((s[0].update.id.clone(), s[0].position)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.expect("the disk never filled");
        println!("disk full after {} updates: {failure}", acked.len());
        assert!(
            matches!(failure, EngineError::Unavailable(_)),
            "{failure:?}"
        );
        // Still running: reads work, appends fail cleanly.
        assert_eq!(
            engine.resolve(&acked[0].0).await.ok().flatten(),
            Some(acked[0].1)
        );
        assert!(matches!(
            engine.append(updates(&["while-full"])).await,
            Err(EngineError::Unavailable(_))
        ));
        // Make room: a retention-like clean-up by hand is not possible from
        // outside, so grow the disk instead.
        let status = std::process::Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&disk.0)
            .status()
            .unwrap();
        assert!(status.success());
        let recovered = eventually(Duration::from_secs(20), || async {
            engine.append(updates(&["after-full"])).await.is_ok()
        })
        .await;
        assert!(recovered, "appends still failing after space came back");
        for (id, pos) in &acked {
            assert_eq!(engine.resolve(id).await.unwrap(), Some(*pos), "lost {id}");
        }
        let history = read_all(&engine, 1000).await;
        for (i, s) in history.iter().enumerate() {
            assert_eq!(s.position, i as u64 + 1, "gap in history");
        }
        assert_eq!(history.last().unwrap().update.id, "after-full");
        engine.close().await.unwrap();
        drop(engine);
        drop(disk);
    }
}
