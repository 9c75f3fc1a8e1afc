//! Engines store updates and deliver them to this node.
//!
//! The hub above never knows which engine runs: it appends, reads history
//! and receives what was committed through the [`Engine`] trait, whose
//! contract follows. Every engine passes the conformance suite in
//! [`testkit`] (feature `testkit`), which checks that contract.
//!
//! Engines of this crate: [`memory`] (a bounded ring, nothing survives a
//! restart), `local` (durable, in one redb file; the default feature
//! `local`), `redis` (one Redis or Valkey shared by several nodes; the
//! feature `redis`) and `postgres` (one PostgreSQL shared by several
//! nodes; the feature `postgres`) and `nats` (one NATS JetStream shared by
//! several nodes; the feature `nats`).
//!
//! # The contract
//!
//! **Positions.** Every committed update has a [`Position`]: one total
//! order over the whole engine, assigned by the engine (never by the
//! caller), starting at 1 and increasing by exactly one per committed
//! update, with no gap and no reuse, also across restarts of a durable
//! engine. 0 means "before everything". The updates of one `append` get
//! consecutive positions in the order given; the positions of concurrent
//! appends interleave as the engine commits them, but each caller's own
//! appends keep their order.
//!
//! **Starting.** Opening or connecting an engine is async and can fail
//! with a clear error (each engine's constructor: a file that cannot be
//! opened, a server that cannot be reached). [`Engine::start`] then
//! registers the node's [`Sink`] and starts delivery from the position the
//! log had when the engine was opened. The hub calls it once, before the
//! first append.
//!
//! **[`Engine::append`]** takes updates that already have their ids and
//! returns their [`Stored`] form (position, update, encoded SSE frame) in
//! the order given. It returns `Ok` only once the updates are **committed**
//! (as durable as the engine promises: the `local` engine with
//! `Durability::Sync` has fsynced them) **and delivered** to the sink. A
//! request is all or nothing: when it fails, none of its updates was
//! stored, delivered or given a position. An empty request returns an
//! empty list.
//!
//! **Delivery.** The sink receives every committed update exactly once,
//! in position order, through [`Sink::deliver`] (possibly several updates
//! per call, possibly those of several appends), and exactly what `append`
//! returned for it. A single-node engine delivers inside `append`; an
//! engine shared by several nodes also delivers what other nodes appended,
//! following the shared log from its last delivered position. A panicking
//! sink must not stop the engine.
//!
//! **The gap signal.** A shared engine can lose history it has not
//! delivered yet: entries trimmed while this node was cut off, a failover
//! to a replica without the tail, a flush of the server. It then calls
//! [`Sink::gap`] *before* delivering anything that follows the hole, and
//! goes on from the log's current end. The hub ends every open stream
//! cleanly; each client reconnects with its `Last-Event-ID`, which either
//! resolves in the history that exists now or gets the `earliest` answer.
//! A hub never tells a client it has everything when it does not: without
//! the signal, an engine must deliver every position, in order.
//!
//! **The log's identity (epoch).** A shared log carries an identity made
//! when it is created. A node compares it (and the update it delivered
//! last) with the server's each time it reconnects and while it waits: a
//! log replaced under it (flushed and recreated, failed over to a replica
//! that lacks the tail) is a gap, never a continuation. Ids resolve only
//! in the history that exists now, so a resume id from a history that no
//! longer exists is unknown and gets `earliest`. The `local` and `memory`
//! logs live and die with their file and process: their epoch changes
//! only across a restart, when no stream is open, and they never signal a
//! gap.
//!
//! **[`Engine::read_after`]** returns up to `limit` *retained* updates with
//! a position greater than `after`, in position order, each as it was
//! appended. `limit == 0`, `after >= last` and `after == Position::MAX`
//! give an empty list. History is contiguous: retention only ever removes
//! the oldest updates, so what is retained is `first..=last` of
//! [`Engine::bounds`], and a page shorter than `limit` means the end.
//!
//! **[`Engine::resolve`]** maps the id of a retained update to its
//! position, `None` when the id is unknown or its update was removed. It
//! is one indexed lookup, never a scan of history (a reconnecting
//! subscriber's `Last-Event-ID` runs through it).
//!
//! **[`Engine::bounds`]** gives the oldest retained position (`None` when
//! nothing is retained) and the last position ever committed (0 when none
//! was; it does not go back when retention empties history).
//!
//! **Ids.** Ids are unique among retained updates. An `append` carrying an
//! id that a retained update already has, or the same id twice, fails as
//! a whole with [`EngineError::DuplicateId`] naming that id (the hub
//! answers `409 Conflict`). Of concurrent appends of one id, exactly one
//! succeeds. Once retention removed an update, its id may be used again.
//!
//! **Errors.** [`EngineError::DuplicateId`] is a refusal: the request is
//! wrong, retrying it will fail again. [`EngineError::Unavailable`] means
//! the engine could not do it now (storage full or failing, store being
//! reopened, a damaged file at open, a server that does not answer within
//! the engine's timeout): nothing of the request was acknowledged, the
//! engine keeps running, and the same request may be retried (the hub
//! answers `503 Service Unavailable` with `Retry-After`, and `/readyz`
//! turns 503 while [`Engine::bounds`] fails). An `Unavailable` append may
//! still have been stored when the server took it but this node could not
//! see it delivered: a retry with the same id then gets `409`, never a
//! second copy. A failed read is `Unavailable` too. No call waits longer
//! than the engine's timeout.
//!
//! **[`Engine::close`]** makes everything acknowledged durable, releases
//! the engine's resources (a durable engine's files can be opened again
//! afterwards), and ends it: later appends fail with
//! [`EngineError::Closed`] (the hub answers 503), and reads may too. Appends
//! racing with `close` either commit (and were delivered) or fail with
//! `Closed`. A second `close` returns `Ok`.
//!
//! # Testing an engine
//!
//! With the `testkit` feature, [`testkit`] holds the checks of the
//! contract above as `async fn`s taking a factory, and
//! [`engine_conformance!`](crate::engine_conformance) turns them into one
//! test each. An engine in another crate adds `herald = { ..., features =
//! ["testkit"] }` to its dev-dependencies and writes, in a test file:
//!
//! ```ignore
//! use std::sync::Arc;
//! use herald::engine::{testkit::EngineFactory, Engine};
//!
//! struct Fresh;
//!
//! impl EngineFactory for Fresh {
//!     async fn fresh(&mut self) -> Arc<dyn Engine> {
//!         Arc::new(my_crate::MyEngine::new())
//!     }
//! }
//!
//! herald::engine_conformance!(my_engine, Fresh);
//! ```
//!
//! A durable engine also implements
//! [`testkit::DurableEngineFactory::reopen`] and passes `durable` as a
//! third argument, which adds the restart checks.

#[cfg(feature = "local")]
pub mod local;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "local", feature = "redis", feature = "nats"))]
pub(crate) mod records;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
pub(crate) mod retry;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
pub(crate) mod waiters;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_protocol::sse::{self, EventFields};
use herald_protocol::Update;

/// A place in the engine's total order. Positions start at 1; 0 means
/// "before everything".
pub type Position = u64;

/// An update the engine committed, with its SSE frame encoded once and
/// shared by every receiver.
#[derive(Debug)]
pub struct Stored {
    pub position: Position,
    pub update: Update,
    /// The complete `text/event-stream` frame for this update.
    pub frame: Bytes,
    /// When this node built it: the start of publish-to-delivery latency.
    pub at: std::time::Instant,
    /// The update as the WebSocket transport sends it, encoded by the
    /// first socket that sends it and shared by the others, as `frame` is.
    pub(crate) ws: std::sync::OnceLock<SocketEncoding>,
}

/// An update as the WebSocket transport sends it (see [`Stored::ws`]):
/// plain bytes, which the transport lays out.
#[derive(Debug)]
pub(crate) struct SocketEncoding {
    /// Its `update` message's JSON after the subscription's name.
    pub rest: Bytes,
    /// A binary payload's bytes: the message is then a binary frame (the
    /// JSON head, a newline, these bytes).
    pub binary: Option<Bytes>,
    /// The whole frame of the message for the subscription named in the
    /// URL, which most sockets carry: written to each of them as it is.
    pub url_frame: Bytes,
}

impl Stored {
    pub fn new(position: Position, update: Update) -> Self {
        let frame = sse::encode(&EventFields {
            id: Some(&update.id),
            event: update.event_type.as_deref(),
            data: &update.data,
            retry: update.retry,
        });
        Self {
            position,
            update,
            frame,
            at: std::time::Instant::now(),
            ws: std::sync::OnceLock::new(),
        }
    }
}

/// Receives every committed update, exactly once, in position order (see
/// the module documentation).
pub trait Sink: Send + Sync + std::fmt::Debug + 'static {
    fn deliver(&self, updates: &[Arc<Stored>]);

    /// History this node had not delivered was lost (see "The gap signal"
    /// in the module documentation): every open stream must end, so its
    /// client resumes from what exists now.
    fn gap(&self, reason: &str);
}

/// What history holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bounds {
    /// Position of the oldest retained update, if any.
    pub first: Option<Position>,
    /// Position of the newest committed update (0 when none ever was).
    pub last: Position,
}

/// Engine failures, mapped to HTTP statuses by the hub. See "Errors" in the
/// module documentation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// Refused: a retained update already has this id, or the request
    /// carries it twice. Nothing of the request was stored (HTTP 409).
    #[error("an update with id {0:?} already exists")]
    DuplicateId(String),
    /// Not possible right now; nothing was acknowledged, the engine keeps
    /// running, and a retry may succeed (HTTP 503).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// [`Engine::close`] was called.
    #[error("engine is shut down")]
    Closed,
}

/// The storage and replication contract: see "The contract" in the module
/// documentation, which each method below summarizes.
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs (`memory`, `local`, ...).
    fn name(&self) -> &'static str;

    /// Registers the sink that receives committed updates. Called once,
    /// before the first append.
    fn start(&self, sink: Arc<dyn Sink>);

    /// Appends updates in the given order, all or nothing, giving them the
    /// next positions. Every update already has its id. Returns once they
    /// are committed and delivered to the sink.
    fn append(&self, updates: Vec<Update>) -> BoxFuture<'_, Result<Vec<Arc<Stored>>, EngineError>>;

    /// Up to `limit` retained updates with a position greater than `after`,
    /// in order.
    fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Stored>>, EngineError>>;

    /// The position of a retained update with this id. An indexed lookup,
    /// never a scan of history.
    fn resolve(&self, id: &str) -> BoxFuture<'_, Result<Option<Position>, EngineError>>;

    /// The current bounds of history.
    fn bounds(&self) -> BoxFuture<'_, Result<Bounds, EngineError>>;

    /// Flushes and closes; later appends fail with [`EngineError::Closed`].
    /// Closing twice is fine.
    fn close(&self) -> BoxFuture<'_, Result<(), EngineError>>;

    /// Where nodes sharing this engine see each other's subscriptions;
    /// `None` for an engine of one node.
    fn directory(&self) -> Option<Arc<dyn Directory>> {
        None
    }

    /// Takes the lease `name` for `holder`, or renews it, for `ttl`; true
    /// when `holder` holds it once this returns. Among nodes sharing the
    /// engine at most one holds a lease at a time, so something that must
    /// run once (a broadcast bridge) runs on its holder; when the holder
    /// stops renewing, the lease passes to the next node that asks after
    /// `ttl`. An engine of one node grants every lease.
    ///
    /// A holder that stops gives its leases back with
    /// [`release`](Engine::release), so the next node need not wait the
    /// ttl out.
    fn lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        let _ = (name, holder, ttl);
        Box::pin(async { Ok(true) })
    }

    /// Gives the lease `name` back when `holder` holds it (a lease held by
    /// another is left alone): the next node that asks takes it at once.
    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        let _ = (name, holder);
        Box::pin(async { Ok(()) })
    }
}

/// The subscriptions of every node sharing an engine, for the
/// subscriptions API and for the `active: false` events of a node that
/// died. Entries are opaque text (the hub's encoding of one connection's
/// subscriptions), keyed by a number unique within the node.
pub trait Directory: Send + Sync + 'static {
    /// Records (or replaces) one of this node's entries. Never waits for
    /// the server: written in the background, and written again after the
    /// server comes back.
    fn put(&self, key: u64, entry: String);

    /// Forgets one of this node's entries (in the background too).
    fn remove(&self, key: u64);

    /// The entries of every other live node.
    fn others(&self) -> BoxFuture<'_, Result<Vec<String>, EngineError>>;

    /// The entries of nodes that stopped, each handed to exactly one
    /// caller across all nodes, and forgotten.
    fn reap(&self) -> BoxFuture<'_, Result<Vec<String>, EngineError>>;
}
