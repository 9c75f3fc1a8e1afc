//! The engine conformance suite, as a library: the checks every [`Engine`]
//! must pass, for engines in this crate and in others.
//!
//! Compiled only with the `testkit` feature. An engine joins by writing an
//! [`EngineFactory`] that builds a fresh instance (and, for an engine that
//! keeps history across a restart, a [`DurableEngineFactory`] that opens it
//! again), then one line of [`engine_conformance!`](crate::engine_conformance)
//! per configuration, in an integration test:
//!
//! ```ignore
//! // tests/conformance.rs of a crate with `herald = { features = ["testkit"] }`
//! // among its dev-dependencies.
//! use std::sync::Arc;
//! use herald::engine::testkit::{DurableEngineFactory, EngineFactory};
//! use herald::engine::Engine;
//!
//! struct Fresh; // whatever a fresh engine needs: a temporary directory, a URL...
//!
//! impl EngineFactory for Fresh {
//!     async fn fresh(&mut self) -> Arc<dyn Engine> {
//!         Arc::new(MyEngine::connect("...").await.unwrap())
//!     }
//! }
//!
//! herald::engine_conformance!(my_engine, Fresh);
//! // With `durable`, the restart checks run too (needs DurableEngineFactory):
//! // herald::engine_conformance!(my_engine, Fresh, durable);
//! ```
//!
//! The macro expands to a module `my_engine` holding one `#[test]` per
//! check (each on its own multi-threaded tokio runtime, see [`run`]), so a
//! failure names the engine and the property. The factory expression is
//! evaluated once per test, inside that module (which imports the caller's
//! items with `use super::*`), so each check gets its own factory and its
//! own engine. The checks are also plain `async fn`s taking a factory, to
//! call by hand.
//!
//! Every check starts the engine with a [`RecordingSink`] (as the hub
//! would, before the first append), runs against it, and closes it. The
//! helpers ([`update`], [`read_all`], [`eventually`], [`Harness`]) are
//! public too, for an engine's own tests beyond the contract.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::Update;
use parking_lot::Mutex;

use super::{Bounds, Engine, EngineError, Position, Sink, Stored};

// The harness.

/// Builds engines for the checks.
pub trait EngineFactory {
    /// A new engine with empty history, not yet started. Called once per
    /// check.
    fn fresh(&mut self) -> impl Future<Output = Arc<dyn Engine>> + Send;
}

/// An engine whose history survives a restart: the restart checks
/// ([`restart_keeps_history`]) need one.
pub trait DurableEngineFactory: EngineFactory {
    /// The engine [`EngineFactory::fresh`] built, opened again as after a
    /// process restart. Called only once the previous instance was closed
    /// (or, for [`restart_after_drop_keeps_history`], dropped) and every
    /// handle on it released.
    fn reopen(&mut self) -> impl Future<Output = Arc<dyn Engine>> + Send;
}

/// Runs a check the way `#[tokio::test(flavor = "multi_thread",
/// worker_threads = 4)]` would: on a new multi-threaded runtime with every
/// driver, blocking until it ends. What [`engine_conformance!`] expands to;
/// the calling crate needs no tokio macros of its own.
///
/// [`engine_conformance!`]: crate::engine_conformance
pub fn run<T>(check: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime for the engine check")
        .block_on(check)
}

/// A sink that records everything delivered, in delivery order.
#[derive(Debug, Default)]
pub struct RecordingSink {
    seen: Mutex<Vec<Arc<Stored>>>,
    /// Each gap with how many updates were delivered before it.
    gaps: Mutex<Vec<(usize, String)>>,
}

impl Sink for RecordingSink {
    fn deliver(&self, updates: &[Arc<Stored>]) {
        self.seen.lock().extend(updates.iter().cloned());
    }

    fn gap(&self, reason: &str) {
        let delivered = self.seen.lock().len();
        self.gaps.lock().push((delivered, reason.to_owned()));
    }
}

impl RecordingSink {
    /// The reasons of the gaps signalled so far.
    pub fn gaps(&self) -> Vec<String> {
        self.gaps.lock().iter().map(|(_, r)| r.clone()).collect()
    }

    /// For each gap, how many updates had been delivered before it: where
    /// in the delivery order it was signalled.
    pub fn gap_points(&self) -> Vec<usize> {
        self.gaps.lock().iter().map(|(n, _)| *n).collect()
    }

    /// Everything delivered so far, in delivery order.
    pub fn seen(&self) -> Vec<Arc<Stored>> {
        self.seen.lock().clone()
    }
    /// How many updates were delivered so far.
    pub fn len(&self) -> usize {
        self.seen.lock().len()
    }
    /// Whether nothing was delivered yet.
    pub fn is_empty(&self) -> bool {
        self.seen.lock().is_empty()
    }
    /// The positions delivered so far, in delivery order.
    pub fn positions(&self) -> Vec<Position> {
        self.seen.lock().iter().map(|s| s.position).collect()
    }
    /// The ids delivered so far, in delivery order.
    pub fn ids(&self) -> Vec<String> {
        self.seen
            .lock()
            .iter()
            .map(|s| s.update.id.clone())
            .collect()
    }
}

/// An engine under test, started with a recording sink.
pub struct Harness {
    pub engine: Arc<dyn Engine>,
    pub sink: Arc<RecordingSink>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("engine", &self.engine.name())
            .field("delivered", &self.sink.len())
            .finish()
    }
}

impl Harness {
    /// Starts `engine` with a new [`RecordingSink`].
    pub fn start(engine: Arc<dyn Engine>) -> Self {
        let sink = Arc::new(RecordingSink::default());
        engine.start(sink.clone());
        Self { engine, sink }
    }

    /// A fresh engine from `factory`, started.
    pub async fn fresh<F: EngineFactory>(factory: &mut F) -> Self {
        Self::start(factory.fresh().await)
    }

    /// The engine from `factory` reopened, started.
    pub async fn reopen<F: DurableEngineFactory>(factory: &mut F) -> Self {
        Self::start(factory.reopen().await)
    }
}

/// An update with one topic and some data, all derived from `id`.
pub fn update(id: &str) -> Update {
    Update {
        id: id.to_owned(),
        topics: vec![format!("https://example.com/items/{id}")],
        data: format!("data of {id}"),
        ..Update::default()
    }
}

/// [`update`] for each id.
pub fn updates(ids: &[&str]) -> Vec<Update> {
    ids.iter().map(|id| update(id)).collect()
}

/// Every retained update, read in pages of `page`. Panics if a read fails
/// or returns more than `page`.
pub async fn read_all(engine: &dyn Engine, page: usize) -> Vec<Arc<Stored>> {
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
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
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

// The properties every engine has.

/// Positions start at 1 and increase by one per update, across and
/// within appends; `append` returns the stored updates with their frames.
pub async fn positions_start_at_one_and_increase<F: EngineFactory>(mut factory: F) {
    let h = &Harness::fresh(&mut factory).await;
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
    h.engine.close().await.unwrap();
}

/// `read_after` returns at most `limit` updates after the position, in
/// order, with every field as appended.
pub async fn read_after_paginates<F: EngineFactory>(mut factory: F) {
    let h = &Harness::fresh(&mut factory).await;
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
    h.engine.close().await.unwrap();
}

/// `resolve` maps an id to its position; unknown ids are `None`.
pub async fn resolve_by_id<F: EngineFactory>(mut factory: F) {
    let h = &Harness::fresh(&mut factory).await;
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
    h.engine.close().await.unwrap();
}

/// A duplicate id, in history or within the request, refuses the whole
/// request: nothing of it is stored, delivered or given a position.
pub async fn duplicate_id_refused_without_partial_write<F: EngineFactory>(mut factory: F) {
    let h = &Harness::fresh(&mut factory).await;
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
    h.engine.close().await.unwrap();
}

/// Concurrent appends of one id: exactly one wins; the others are
/// refused, and unrelated appends alongside are unaffected.
pub async fn concurrent_duplicates_one_wins<F: EngineFactory>(mut factory: F) {
    let h = &Harness::fresh(&mut factory).await;
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
    h.engine.close().await.unwrap();
}

/// The sink receives each committed update once, in position order,
/// before `append` returns, and exactly what `append` returned.
pub async fn sink_receives_every_update_in_order<F: EngineFactory>(mut factory: F) {
    let h = &Harness::fresh(&mut factory).await;
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
    h.engine.close().await.unwrap();
}

/// 16 tasks × 500 appends (odd tasks append two updates at a time): the
/// sink sees positions 1..=n with no gap or duplicate, in order, each
/// task's updates in its own order, and history holds the same.
pub async fn concurrent_appenders_keep_order<F: EngineFactory>(mut factory: F) {
    let h = &Harness::fresh(&mut factory).await;
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
    h.engine.close().await.unwrap();
}

/// A seeded random mix of appends (with frequent duplicate ids), reads,
/// lookups and bounds, checked step by step against a plain model.
pub async fn matches_a_simple_model<F: EngineFactory>(mut factory: F) {
    let h = &Harness::fresh(&mut factory).await;
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
                let ids: Vec<String> = (0..=next(3)).map(|_| format!("id{}", next(300))).collect();
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
    h.engine.close().await.unwrap();
}

/// The subscriptions directory of an engine shared by several nodes
/// ([`Engine::directory`]): every node sees the others' entries, never its
/// own; a node that stops refreshing drops out of the listings within
/// `liveness`, and exactly one surviving node reaps its entries, once.
/// `node` connects one more node to the same shared log. Not part of
/// [`engine_conformance!`](crate::engine_conformance): an engine of one
/// node has no directory.
pub async fn directory_lists_other_nodes_and_reaps_dead_ones_once<F, Fut>(
    mut node: F,
    liveness: Duration,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let a = Harness::start(node().await);
    let b = Harness::start(node().await);
    let c = Harness::start(node().await);
    let (da, db, dc) = (
        a.engine
            .directory()
            .expect("a shared engine has a directory"),
        b.engine
            .directory()
            .expect("a shared engine has a directory"),
        c.engine
            .directory()
            .expect("a shared engine has a directory"),
    );
    da.put(1, "a1".into());
    da.put(2, "a2".into());
    db.put(1, "b1".into());
    da.remove(2);
    let listed = || async {
        let mut v = dc.others().await.unwrap();
        v.sort();
        v
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            listed().await == ["a1", "b1"]
        })
        .await
    );
    assert_eq!(db.others().await.unwrap(), ["a1"]);
    // Nothing is dead yet, and a node does not list itself.
    assert!(db.reap().await.unwrap().is_empty());
    // A dies without leaving (its tasks stop, nothing removes its entries).
    drop(da);
    drop(a);
    assert!(
        eventually(liveness + Duration::from_secs(5), || async {
            listed().await == ["b1"]
        })
        .await,
        "a dead node leaves the listings within its liveness"
    );
    // One reaper gets A's entries, once.
    let mut reaped = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reaped.is_empty() && std::time::Instant::now() < deadline {
        reaped.extend(db.reap().await.unwrap());
        reaped.extend(dc.reap().await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reaped, ["a1"]);
    assert!(db.reap().await.unwrap().is_empty() && dc.reap().await.unwrap().is_empty());
    assert_eq!(dc.others().await.unwrap(), ["b1"]);
}

/// Leases of an engine shared by several nodes ([`Engine::lease`]): one
/// holder at a time, even when two nodes ask together; the holder renews;
/// another takes the lease once the holder stops renewing for the ttl,
/// not before; a holder that gives it back frees it at once. `node`
/// connects one more node to the same shared log. Not
/// part of [`engine_conformance!`](crate::engine_conformance): an engine
/// of one node grants every lease.
pub async fn leases_have_one_holder_and_pass_on_when_it_stops<F, Fut>(mut node: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let a = node().await;
    let b = node().await;
    let ttl = Duration::from_millis(1500);
    let name = format!("test:{}", uuid::Uuid::new_v4().simple());
    // Asked together: exactly one wins.
    let (x, y) = tokio::join!(a.lease(&name, "a", ttl), b.lease(&name, "b", ttl));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x ^ y, "one holder of two asking together (a {x}, b {y})");
    let (holder, other, h, o) = if x {
        (&a, &b, "a", "b")
    } else {
        (&b, &a, "b", "a")
    };
    // The holder renews it, within the ttl, for longer than one ttl.
    let until = Instant::now() + ttl * 2;
    let mut stopped = Instant::now();
    while Instant::now() < until {
        let asked = Instant::now();
        assert!(holder.lease(&name, h, ttl).await.unwrap(), "renewed");
        stopped = asked;
        assert!(
            !other.lease(&name, o, ttl).await.unwrap(),
            "held by the other"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    // The holder stops (its last renewal was asked at `stopped`): the
    // lease passes after the ttl.
    assert!(
        eventually(ttl * 3, || async {
            other.lease(&name, o, ttl).await.unwrap()
        })
        .await,
        "the lease passes on"
    );
    assert!(
        stopped.elapsed() >= ttl - Duration::from_millis(300),
        "not before the ttl: after {:?}",
        stopped.elapsed()
    );
    assert!(
        !holder.lease(&name, h, ttl).await.unwrap(),
        "the old holder lost it"
    );
    // Given back by another than its holder: still held.
    holder.release(&name, h).await.unwrap();
    assert!(
        !holder.lease(&name, h, ttl).await.unwrap(),
        "a lease is given back by its holder only"
    );
    // Given back by its holder: the next to ask takes it at once.
    other.release(&name, o).await.unwrap();
    assert!(
        holder.lease(&name, h, ttl).await.unwrap(),
        "a lease given back is free at once"
    );
    assert!(
        !other.lease(&name, o, ttl).await.unwrap(),
        "and held by the one that took it"
    );
}

/// `bounds` is empty at first, then spans the history.
pub async fn bounds_track_history<F: EngineFactory>(mut factory: F) {
    let h = &Harness::fresh(&mut factory).await;
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
    h.engine.close().await.unwrap();
}

/// After `close`, appends fail with `Closed`; a second close is fine.
/// Appends racing with close either commit (and were delivered) or fail
/// with `Closed`, never anything else.
pub async fn close_then_append_is_closed<F: EngineFactory>(mut factory: F) {
    let h = &Harness::fresh(&mut factory).await;
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
    h.engine.close().await.unwrap();
}

// The properties of an engine whose history survives a restart.

/// After a close and a restart, history is as it was: every update with
/// every field (in every combination that matters), its position and its
/// frame; ids stay taken and positions continue.
pub async fn restart_keeps_history<F: DurableEngineFactory>(factory: F) {
    restart_keeps_history_with(factory, true).await;
}

/// [`restart_keeps_history`] when the first instance is dropped without
/// [`Engine::close`]. Not part of the contract (an engine may need `close`
/// to flush, and [`engine_conformance!`](crate::engine_conformance) does
/// not run it), but an engine whose `Drop` promises to flush should pass it.
pub async fn restart_after_drop_keeps_history<F: DurableEngineFactory>(factory: F) {
    restart_keeps_history_with(factory, false).await;
}

async fn restart_keeps_history_with<F: DurableEngineFactory>(mut factory: F, close: bool) {
    let rich = rich_updates();
    let before = {
        let h = Harness::fresh(&mut factory).await;
        let engine = &h.engine;
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
    let h = Harness::reopen(&mut factory).await;
    let engine = &h.engine;
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
    drop(h);
    let h = Harness::reopen(&mut factory).await;
    assert_eq!(h.engine.bounds().await.unwrap().last, 6);
    assert_eq!(h.engine.resolve("next").await.unwrap(), Some(6));
    h.engine.close().await.unwrap();
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

/// Runs the engine conformance suite against an engine: one `#[test]` per
/// check of [`engine::testkit`](crate::engine::testkit), in a module named
/// `$name`, so a failure names the engine and the property.
///
/// `$factory` is an expression of a type implementing
/// [`EngineFactory`](crate::engine::testkit::EngineFactory), evaluated anew
/// in each test, inside the generated module (which has `use super::*`).
/// With `durable` as a third argument the restart checks run too, and the
/// factory must implement
/// [`DurableEngineFactory`](crate::engine::testkit::DurableEngineFactory).
///
/// A last argument `if GUARD` (a `bool` expression) runs each check only
/// when it is true: for an engine that needs a server, the guard says
/// whether one was given and prints why the check is skipped otherwise.
///
/// ```ignore
/// herald::engine_conformance!(memory, MemoryFactory);
/// herald::engine_conformance!(local, LocalFactory::new(), durable);
/// herald::engine_conformance!(redis, RedisFactory::new(), durable, if redis_url().is_some());
/// ```
#[macro_export]
macro_rules! engine_conformance {
    (@checks $factory:expr, $guard:expr; $($check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $check() {
                if !$guard {
                    return;
                }
                $crate::engine::testkit::run($crate::engine::testkit::$check($factory));
            }
        )+
    };
    (@common $factory:expr, $guard:expr) => {
        $crate::engine_conformance!(@checks $factory, $guard;
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
        );
    };
    ($name:ident, $factory:expr, durable, if $guard:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::engine_conformance!(@common $factory, $guard);
            $crate::engine_conformance!(@checks $factory, $guard; restart_keeps_history);
        }
    };
    ($name:ident, $factory:expr, if $guard:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::engine_conformance!(@common $factory, $guard);
        }
    };
    ($name:ident, $factory:expr, durable $(,)?) => {
        $crate::engine_conformance!($name, $factory, durable, if true);
    };
    ($name:ident, $factory:expr $(,)?) => {
        $crate::engine_conformance!($name, $factory, if true);
    };
}
