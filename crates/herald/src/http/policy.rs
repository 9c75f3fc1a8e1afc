//! The stream policy: the rules every event stream follows, whichever path
//! carries it (the axum route, an embedder's app mounting
//! [`super::router`], or the HTTP/1.1 fast path of [`crate::serve`], direct
//! or parked).
//!
//! - **Headers**: [`stream_headers`]: `text/event-stream`, `no-cache`,
//!   `X-Accel-Buffering: no`, `Accept-Query`, and the resume point in the
//!   revision's header.
//! - **CORS**: one [`CorsLayer`] built by [`cors_layer`]; the router wraps
//!   its routes in it, and the fast path asks the same layer for a stream's
//!   headers ([`cors_headers`]).
//! - **Error bodies**: [`HttpError`](super::error::HttpError)'s status,
//!   headers and one-line body, written by both.
//! - **The first flush, history, heartbeats and token expiry**: the feed
//!   ([`crate::hub::feed::Feed`]) every path streams, and the hub's
//!   ticker and expiry timer.
//! - **A client that stops reading**: a write waits at most
//!   [`WRITE_STALL`], then the connection goes (the parked flusher and the
//!   direct task; under hyper, a queue overflow cancels the connection).
//! - **Stray bytes**: a client has nothing to say on an event stream.
//!   What it sends anyway is read and dropped ([`discard_input`]); more than
//!   [`MAX_DISCARD`] at once, or its end of the connection, ends the stream
//!   (on the fast path at once, through the socket watcher; under hyper,
//!   which does not read while it streams a response, at a failed write).

use std::io;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::hub::feed::Revision;

/// The hub's well-known path.
pub const MERCURE_PATH: &str = "/.well-known/mercure";

/// The value of the `Accept-Query` header: subscriptions also come as
/// `QUERY` requests with a form body.
pub const ACCEPT_QUERY: &str = "application/x-www-form-urlencoded";

/// Response headers cross-origin clients may read: the resume points of
/// both revisions, the subscriptions API's `Link`, `Accept-Query`, and the
/// challenge of an authorization failure.
pub const EXPOSED_HEADERS: &str =
    "last-event-id, mercure-last-event-id, link, accept-query, www-authenticate";

/// Longest wait for a client to take one write: one that stopped reading
/// gives its connection back after this.
pub const WRITE_STALL: Duration = Duration::from_secs(60);

/// Bytes a client may send on an event stream at once before it is taken
/// for misbehaving and disconnected.
pub const MAX_DISCARD: usize = 64 * 1024;

/// The response headers of an event stream, CORS aside: `resumed_from` is
/// the id the replay starts after, named in the revision's header (left
/// out if it cannot be a header value).
pub fn stream_headers(
    revision: Revision,
    resumed_from: Option<String>,
) -> Vec<(&'static str, HeaderValue)> {
    let mut out = vec![
        (
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        ),
        ("cache-control", HeaderValue::from_static("no-cache")),
        ("x-accel-buffering", HeaderValue::from_static("no")),
        ("accept-query", HeaderValue::from_static(ACCEPT_QUERY)),
    ];
    if let Some(id) = resumed_from.and_then(|id| HeaderValue::from_str(&id).ok()) {
        let name = match revision {
            Revision::Draft07 => "last-event-id",
            Revision::Draft08 => "mercure-last-event-id",
        };
        out.push((name, id));
    }
    out
}

/// The hub's CORS rules, when origins are configured: credentialed
/// requests from the listed origins (`*` mirrors any origin, since a
/// literal `*` forbids credentials), the methods and headers Mercure
/// clients send, and [`EXPOSED_HEADERS`].
pub fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_credentials(true)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::OPTIONS,
                Method::from_bytes(b"QUERY").expect("a valid method"),
            ])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CACHE_CONTROL,
                axum::http::header::CONTENT_TYPE,
                axum::http::header::IF_NONE_MATCH,
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers(
                EXPOSED_HEADERS
                    .split(", ")
                    .map(HeaderName::from_static)
                    .collect::<Vec<_>>(),
            ),
    )
}

/// The CORS headers `layer` adds to the answer of a `GET` with these
/// request headers: the fast path asks the router's own rules rather than
/// keeping a copy of them.
pub async fn cors_headers(layer: &CorsLayer, request: &HeaderMap) -> HeaderMap {
    let mut req = axum::http::Request::new(());
    *req.headers_mut() = request.clone();
    let inner = tower::service_fn(|_req: axum::http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(axum::http::Response::new(()))
    });
    match layer.layer(inner).oneshot(req).await {
        Ok(res) => res.into_parts().0.headers,
        Err(never) => match never {},
    }
}

/// What reading a readable event-stream socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The client closed its side, the socket failed, or it sent more than
    /// [`MAX_DISCARD`] at once: the stream ends.
    Closed,
    /// Nothing more to read now; the stream goes on.
    Drained,
}

/// Reads and drops what a client sent on an event stream, with `read` a
/// non-blocking read of its socket.
pub fn discard_input(mut read: impl FnMut(&mut [u8]) -> io::Result<usize>) -> Input {
    let mut sink = [0u8; 512];
    let mut total = 0;
    loop {
        match read(&mut sink) {
            Ok(0) => return Input::Closed,
            Ok(n) => {
                total += n;
                if total > MAX_DISCARD {
                    return Input::Closed;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Input::Drained,
            Err(_) => return Input::Closed,
        }
    }
}
