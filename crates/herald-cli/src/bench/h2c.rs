//! `herald bench --http2`: subscribers as HTTP/2 streams over cleartext
//! TCP (h2c with prior knowledge), `--streams-per-connection` of them
//! sharing each connection.
//!
//! The h2 crate is used directly: one task per connection drives its I/O
//! (`h2::client::Connection`), and each subscriber task reads its own
//! stream's DATA frames and hands their flow-control capacity back as it
//! goes, so the body bytes reach the same [`Scanner`] and counting as an
//! HTTP/1.1 subscriber's. A stream that is never read (`--slow`) keeps its
//! capacity: the hub can send it one stream window and no more, as a
//! stalled browser tab's stream would be stopped.
//!
//! [`Scanner`]: super::sse::Scanner

use bytes::Bytes;
use h2::client::SendRequest;
use h2::RecvStream;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, USER_AGENT};
use http::{Request, Uri};
use tokio::sync::OnceCell;

use super::http::{user_agent, Target};
use super::subscriber::{self, io_error, Config};

/// Flow-control window of each stream: the HTTP/2 default.
const STREAM_WINDOW: u32 = 65_535;
/// Largest flow-control window HTTP/2 allows.
const MAX_WINDOW: u64 = (1 << 31) - 1;

/// The streams of a run and the connections they share.
#[derive(Debug)]
pub(super) struct Pool {
    /// Streams per connection: subscriber `index` uses connection
    /// `index / per_connection`.
    pub per_connection: usize,
    /// The URI each slot's stream requests.
    uris: Vec<Uri>,
    authorization: Option<HeaderValue>,
    /// Opened by the first of their streams; a failure is every stream's.
    connections: Vec<OnceCell<Result<SendRequest<Bytes>, String>>>,
}

impl Pool {
    /// A pool for `subscribers` streams, subscribing to `targets` (the
    /// request target of each slot) with `token`, if any.
    pub fn new(
        target: &Target,
        targets: &[String],
        token: Option<&str>,
        subscribers: usize,
        per_connection: usize,
    ) -> anyhow::Result<Self> {
        let per_connection = per_connection.max(1);
        let uris = targets
            .iter()
            .map(|t| format!("http://{}{t}", target.host).parse::<Uri>())
            .collect::<Result<_, _>>()?;
        let authorization = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()?;
        Ok(Self {
            per_connection,
            uris,
            authorization,
            connections: (0..subscribers.div_ceil(per_connection))
                .map(|_| OnceCell::new())
                .collect(),
        })
    }

    /// Opens subscriber `index`'s stream: on its shared connection (opened
    /// now if it is the first), or on a connection of its own past the
    /// subscribers (`--churn`). Returns the body once the hub answered 200.
    pub async fn open(&self, cfg: &Config, index: usize) -> Result<RecvStream, String> {
        let group = index / self.per_connection;
        let send = match self.connections.get(group) {
            Some(cell) => cell
                .get_or_init(|| connect(cfg, group, self.per_connection))
                .await
                .clone()?,
            None => connect(cfg, group, 1).await?,
        };
        let mut send = send.ready().await.map_err(|e| h2_error(&e))?;
        let mut request = Request::get(self.uris[index % self.uris.len()].clone())
            .header(ACCEPT, "text/event-stream")
            .header(USER_AGENT, user_agent());
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request.body(()).map_err(|e| e.to_string())?;
        let (response, _) = send.send_request(request, true).map_err(|e| h2_error(&e))?;
        let response = response.await.map_err(|e| h2_error(&e))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        Ok(response.into_body())
    }
}

/// Opens connection `group` (bound to the source address of that number)
/// and starts the task driving it.
async fn connect(cfg: &Config, group: usize, streams: usize) -> Result<SendRequest<Bytes>, String> {
    let tcp = subscriber::tcp_connect(cfg, group, false).await?;
    // Every stream of the connection may hold a full window unread (a
    // slow one never releases it): the connection's window covers them
    // all, so one stalled stream cannot stop the others.
    let connection_window = (u64::from(STREAM_WINDOW) * (streams as u64 + 1)).min(MAX_WINDOW);
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(connection_window as u32)
        .enable_push(false)
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| h2_error(&e))?;
    tokio::spawn(async move {
        // Its errors reach the streams.
        let _ = connection.await;
    });
    Ok(send)
}

/// A short, stable description of an HTTP/2 error.
pub(super) fn h2_error(e: &h2::Error) -> String {
    if let Some(io) = e.get_io() {
        return io_error(io);
    }
    match e.reason() {
        Some(r) if e.is_go_away() => format!("HTTP/2 GOAWAY ({r:?})"),
        Some(r) if e.is_reset() => format!("HTTP/2 stream reset ({r:?})"),
        Some(r) => format!("HTTP/2 error ({r:?})"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn target() -> Target {
        Target {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            host: "127.0.0.1:3000".into(),
            path: "/.well-known/mercure".into(),
            query: None,
        }
    }

    #[test]
    fn streams_share_connections_in_order() {
        let t = target();
        let targets = vec![t.subscribe_target(["https://bench.herald/t/0"])];
        let pool = Pool::new(&t, &targets, Some("abc"), 250, 100).unwrap();
        assert_eq!(pool.connections.len(), 3);
        assert_eq!(
            pool.uris[0].to_string(),
            "http://127.0.0.1:3000/.well-known/mercure?topic=https%3A%2F%2Fbench.herald%2Ft%2F0"
        );
        assert_eq!(pool.authorization.as_ref().unwrap(), "Bearer abc");
        let pool = Pool::new(&t, &targets, None, 100, 100).unwrap();
        assert_eq!(pool.connections.len(), 1);
        assert!(pool.authorization.is_none());
        let pool = Pool::new(&t, &targets, None, 1, 0).unwrap();
        assert_eq!((pool.connections.len(), pool.per_connection), (1, 1));
    }
}
