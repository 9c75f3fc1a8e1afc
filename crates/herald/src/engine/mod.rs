//! Engines store updates and deliver them to this node.
//!
//! An engine has three jobs, whatever it runs on:
//!
//! 1. **append**: give each update its place in one total order (its
//!    [`Position`]) and make it durable as the engine promises, then answer;
//! 2. **deliver**: hand every committed update to the node's [`Sink`] exactly
//!    once and in position order (for a single-node engine that happens inside
//!    `append`; a cluster engine delivers what other nodes appended too);
//! 3. **read history**: updates after a position, and the position of an id.
//!
//! The hub above never knows which engine runs. Every engine passes the
//! shared suite in `tests/engine_suite.rs`.

pub mod local;
pub mod memory;

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

/// Receives every committed update, in position order.
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

/// Engine failures, mapped to HTTP statuses by the hub.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("an update with id {0:?} already exists")]
    DuplicateId(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("engine is shut down")]
    Closed,
}

/// The storage and replication contract. See the module documentation.
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs (`memory`, `local`, ...).
    fn name(&self) -> &'static str;

    /// Registers the sink that receives committed updates. Called once,
    /// before the first append.
    fn start(&self, sink: Arc<dyn Sink>);

    /// Appends updates in the given order. Every update already has its id.
    /// Returns once they are committed and delivered to the sink.
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
    fn close(&self) -> BoxFuture<'_, Result<(), EngineError>>;
}
