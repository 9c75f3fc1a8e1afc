//! What a transport tells the routes about the connection a request came on.

use tokio_util::sync::CancellationToken;

/// Per-connection context a transport puts into each request's extensions.
/// An embedder's own server puts none: the routes work without it.
#[derive(Clone, Debug)]
pub struct ConnContext {
    /// Cancelling it drops the connection at once (a subscriber whose queue
    /// overflowed, since a client that stopped reading never lets its
    /// response end).
    pub cancel: Option<CancellationToken>,
    /// The client's address.
    pub peer: std::net::SocketAddr,
}
