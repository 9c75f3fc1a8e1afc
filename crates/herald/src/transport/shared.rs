//! What the transports of one server share: the state every connection
//! holds a reference to, the limits they apply, and the answer of a full
//! hub. The TCP server ([`super::server`]) and HTTP/3 both use it.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower_http::cors::CorsLayer;

use super::http1::parked::Flusher;
use super::tls::Tls;
use crate::http::error::HttpError;
use crate::hub::handle::Hub;

/// Time a connection has to send a complete request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent streams one HTTP/2 connection (and requests one HTTP/3
/// connection) may carry: a browser puts every `EventSource` of an origin
/// on one connection.
pub const H2_MAX_STREAMS: u32 = 1024;

/// What every connection of one server shares (one `Arc` per connection).
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) hub: Hub,
    pub(super) app: axum::Router,
    /// The router's CORS rules, for streams on the fast path.
    pub(super) cors: Option<CorsLayer>,
    /// Writes parked streams; `None` when streams keep their tasks.
    pub(super) flusher: Option<Arc<Flusher>>,
    /// Connections of every other kind (as many as `max_connections`;
    /// event streams take the hub's own permits).
    pub(super) requests: Arc<Semaphore>,
    /// The listener speaks TLS.
    pub(super) tls: Option<Tls>,
    /// `Alt-Svc` of responses over TLS when HTTP/3 is served too.
    pub(super) alt_svc: Option<HeaderValue>,
    /// The connections' tasks, which the server waits for as it shuts
    /// down. An HTTP/2 connection moves to a task of its own, sized to
    /// what it keeps for its lifetime (see [`super::server`]).
    pub(super) tracker: TaskTracker,
}

/// The `503` of a hub with no room for one more connection.
pub(super) fn full() -> HttpError {
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the hub is at its limit of connections; retry shortly",
    )
}
