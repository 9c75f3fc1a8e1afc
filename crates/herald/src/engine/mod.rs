//! Engines store updates and deliver them to this node.
//!
//! The hub above never knows which engine runs: it appends, reads history
//! and receives what was committed through the [`Engine`] trait, whose
//! contract follows. Every engine passes the conformance suite in
//! [`testkit`] (feature `testkit`), which checks that contract.
//!
//! Engines of this crate: [`memory`] (a bounded ring, nothing survives a
//! restart) and `local` (durable, in one redb file; the default feature
//! `local`).
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
//! **[`Engine::start`]** registers the node's [`Sink`]. The hub calls it
//! once, before the first append.
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
//! engine shared by several nodes also delivers what other nodes appended.
//! A panicking sink must not stop the engine.
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
//! reopened, a damaged file at open): nothing of the request was
//! acknowledged, the engine keeps running, and the same request may be
//! retried (the hub answers `503 Service Unavailable`). A failed read is
//! `Unavailable` too.
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
#[cfg(feature = "testkit")]
pub mod testkit;

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
        }
    }
}

/// Receives every committed update, exactly once, in position order (see
/// the module documentation).
pub trait Sink: Send + Sync + std::fmt::Debug + 'static {
    fn deliver(&self, updates: &[Arc<Stored>]);
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
#[derive(Debug, thiserror::Error)]
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
}
