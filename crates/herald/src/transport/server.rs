//! Runs the hub's routes on a listener.
//!
//! The library takes an already-bound listener and a shutdown future, so
//! tests and embedders bind port 0 and stop the hub at will. Every
//! HTTP/1.1 connection served by hyper gets a cancellation token that the
//! dispatcher fires when the subscriber's queue overflows (an HTTP/2
//! stream that overflows ends alone: its connection carries others), and
//! shutdown drains with a deadline.
//!
//! **Admission.** A full hub still answers. Connections are always
//! accepted; the limit is applied once the first request head shows what
//! the connection is for:
//!
//! - an event stream takes one of the hub's `max_connections` stream
//!   permits (a stream served by hyper and the router too, on a kept-alive
//!   connection that began with another request);
//! - anything else (publishing, health checks, the API, the dashboard)
//!   takes a permit of a pool of its own, of the same size, so publishers
//!   and probes get through while subscribers are at their limit.
//!
//! Without a permit the connection gets `503` with `Retry-After` at once
//! and is closed. A request head must arrive within [`HEAD_TIMEOUT`], so a
//! client that sends half a head and stalls (slowloris) holds a socket for
//! that long and no permit at all.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::http1::direct::{self, error_response};
use super::http1::head::{self, Head};
use super::http1::parked::Flusher;
use super::http1::rewind::Rewind;
use super::http1::socket;
use super::shared::{full, Shared};
pub use super::shared::{H2_MAX_STREAMS, HEAD_TIMEOUT};
use super::tls::Tls;
use crate::http::conn::ConnContext;
use crate::http::error::HttpError;
use crate::http::policy::cors_layer;
use crate::http::router::router;
use crate::hub::handle::Hub;

/// Binds a listener with a backlog large enough for bursts of reconnecting
/// browsers (the operating system's default of 128 drops them), and with
/// `SO_REUSEADDR` so a restarted hub can bind at once.
///
/// # Errors
/// The address cannot be bound.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Unsent bytes a connection's socket may hold before writes to it wait
/// (`TCP_NOTSENT_LOWAT`). The kernel grows a socket's send buffer up to
/// `tcp_wmem`'s maximum (4 MiB by default, and reached at once on
/// loopback), so a subscriber that stopped reading would otherwise take
/// every update into kernel memory for minutes: a system call and a copy
/// each, for nothing, and megabytes per stalled client, while the hub
/// never sees it fall behind. Past this bound the socket reports full, the
/// stream stops writing to it, and new frames wait in the subscriber's
/// bounded queue (pointers to shared updates) until it drains or
/// overflows. Bytes in flight to a reading client do not count, so a fast
/// client on a long path is not held back.
#[cfg(target_os = "linux")]
const UNSENT_LIMIT: u32 = 64 * 1024;

/// Answers `503` with `Retry-After` on a connection the hub has no room
/// for, and closes it.
async fn refuse(mut stream: TcpStream, e: HttpError) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream
            .write_all(&error_response(&e, &HeaderMap::new()))
            .await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// One accepted connection: its first request head decides whether it is
/// an event stream served directly (see [`super::http1::direct`]) or a
/// connection for hyper and the router.
async fn connection(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    if let Some(tls) = shared.tls.clone() {
        return tls_connection(stream, peer, shared, tls).await;
    }
    let stop = shared.hub.shutdown_token().clone();
    let mut buf = Vec::new();
    let complete = tokio::select! {
        r = tokio::time::timeout(HEAD_TIMEOUT, head::read_head(&mut stream, &mut buf)) => {
            matches!(r, Ok(Ok(true)))
        }
        () = stop.cancelled() => false,
    };
    if !complete {
        return;
    }
    let head = head::classify(&buf);
    if let Head::WebSocket { headers, query } = head {
        drop(buf);
        // The socket takes its place among the streams as it opens.
        let ctx = ConnContext { cancel: None, peer };
        let (hub, flusher) = (shared.hub.clone(), shared.flusher.clone());
        socket::open(
            stream,
            hub,
            headers,
            query,
            ctx,
            shared.cors.as_ref(),
            flusher,
        )
        .await;
        return;
    }
    if let Head::Subscribe { headers, query } = head {
        drop(buf);
        let ip = shared.hub.client_ip(peer.ip(), &headers);
        let permit = match shared.hub.admit_stream(Some(ip)) {
            Ok(p) => p,
            Err(r) => {
                refuse(stream, HttpError::refused(&r)).await;
                return;
            }
        };
        // No cancellation token: a direct stream watches its subscriber.
        let ctx = ConnContext { cancel: None, peer };
        let hub = shared.hub.clone();
        let Some(live) = direct::open(stream, hub, headers, query, ctx, shared.cors.as_ref()).await
        else {
            return;
        };
        // Sends the first flush and any history here, then parks the
        // stream: a waiting subscriber keeps no task.
        live.with_permit(permit).run(shared.flusher.clone()).await;
        return;
    }
    let Ok(permit) = shared.requests.clone().try_acquire_owned() else {
        shared.hub.metrics().refused("requests");
        refuse(stream, full()).await;
        return;
    };
    // HTTP/2 with prior knowledge (h2c) begins with its preface.
    let protocol = if buf.starts_with(H2_PREFACE) {
        Protocol::H2c
    } else {
        Protocol::Http1
    };
    let io = TokioIo::new(Rewind::new(buf, stream));
    serve_conn(io, peer, &shared, protocol, Some(permit)).await;
}

/// The start of HTTP/2's connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// How a connection speaks, for `herald_connections_accepted_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    H2c,
    Http1Tls,
    H2Tls,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::Http1Tls => "http1-tls",
            Protocol::H2Tls => "h2",
        }
    }

    fn is_h2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::H2Tls)
    }
}

/// A TLS connection: the handshake (within [`HEAD_TIMEOUT`]), then HTTP/2
/// or HTTP/1.1 as ALPN chose.
async fn tls_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, tls: Tls) {
    let stop = shared.hub.shutdown_token().clone();
    let accepted = tokio::select! {
        r = tokio::time::timeout(HEAD_TIMEOUT, tls.acceptor().accept(stream)) => r,
        () = stop.cancelled() => return,
    };
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not done within {HEAD_TIMEOUT:?}");
            return;
        }
    };
    let protocol = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        Protocol::H2Tls
    } else {
        Protocol::Http1Tls
    };
    // Without a place the connection is still served, to answer `503`.
    let permit = shared.requests.clone().try_acquire_owned().ok();
    if permit.is_none() {
        shared.hub.metrics().refused("requests");
    }
    serve_conn(TokioIo::new(stream), peer, &shared, protocol, permit).await;
}

/// Serves one connection that is not an event stream on the fast path:
/// HTTP/2 on h2 directly ([`super::h2`]), HTTP/1.1 with hyper and the
/// router, until it ends, is cancelled (its HTTP/1.1 subscriber
/// overflowed) or the hub shuts down (then gracefully: HTTP/2 sends
/// `GOAWAY`). Without a `permit` every request is answered `503`.
async fn serve_conn<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    protocol: Protocol,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    shared.hub.metrics().connection_accepted(protocol.label());
    // Clients over TLS learn that HTTP/3 is on the same port.
    let alt_svc = shared
        .alt_svc
        .clone()
        .filter(|_| matches!(protocol, Protocol::Http1Tls | Protocol::H2Tls));
    if protocol.is_h2() {
        // An HTTP/2 connection lives as long as its streams, often for
        // hours: it goes on in a task that holds h2's connection alone,
        // not in this one, which is as large as the largest of every
        // kind of connection it could have served (HTTP/1.1 through
        // hyper, TLS, a WebSocket), about 13 KB.
        // The connection's future is the task's, not wrapped in another:
        // moved into a wrapper to be awaited, it took its room twice
        // (once as the captured value, once as the future awaited).
        let served = super::h2::serve(io.into_inner(), peer, shared.clone(), permit, alt_svc);
        shared.tracker.spawn(served);
        return;
    }
    let stop = shared.hub.shutdown_token().clone();
    let cancel = CancellationToken::new();
    let ctx = ConnContext {
        cancel: Some(cancel.clone()),
        peer,
    };
    let app = shared.app.clone();
    let admitted = permit.is_some();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ctx.clone());
        let app = app.clone();
        let alt_svc = alt_svc.clone();
        async move {
            let mut res = if admitted {
                app.oneshot(req).await?
            } else {
                full().into_response()
            };
            if let Some(v) = alt_svc {
                res.headers_mut().insert(header::ALT_SVC, v);
            }
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let _permit = permit;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    builder.header_read_timeout(HEAD_TIMEOUT);
    // Upgrades: a WebSocket leaves the connection to its own task.
    let mut conn = std::pin::pin!(builder.serve_connection(io, svc).with_upgrades());
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        }
        () = cancel.cancelled() => {
            tracing::debug!(%peer, "connection cancelled");
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Serves `hub` on `listener` until `shutdown` resolves, then ends every
/// stream, waits up to the configured grace period for connections to
/// finish, and closes the engine. Waiting event streams are parked (see
/// [`Server::parking`]).
///
/// # Errors
/// Closing the engine failed (its data may not be flushed).
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    Server::new(hub).serve(listener, shutdown).await
}

/// A server of one hub, for the settings [`serve`] takes as they are.
#[derive(Debug)]
pub struct Server {
    hub: Hub,
    parking: bool,
    tls: Option<Tls>,
    /// HTTP/3 next to TLS (on unless turned off).
    #[cfg(feature = "http3")]
    http3: bool,
}

impl Server {
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            parking: true,
            tls: None,
            #[cfg(feature = "http3")]
            http3: true,
        }
    }

    /// Serves over TLS (see [`super::tls`]): HTTP/2 or HTTP/1.1 as each
    /// client's ALPN chooses, and HTTP/3 on the same port over UDP (with
    /// the `http3` feature, unless [`Server::http3`] turns it off).
    /// Without it the listener speaks plain HTTP/1.1 and HTTP/2 with prior
    /// knowledge (h2c).
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether a server with TLS also serves HTTP/3 (QUIC) on its port
    /// over UDP and advertises it with `Alt-Svc` (the default). Without
    /// TLS there is no HTTP/3 either way.
    #[cfg(feature = "http3")]
    #[must_use]
    pub fn http3(mut self, on: bool) -> Self {
        self.http3 = on;
        self
    }

    /// Whether event streams on the fast path are parked once they wait
    /// (the default): a waiting subscriber then keeps no task. Off, each
    /// keeps its task, as it does where parking is not available.
    #[must_use]
    pub fn parking(mut self, parking: bool) -> Self {
        self.parking = parking;
        self
    }

    /// Serves until `shutdown` resolves: see [`serve`].
    ///
    /// # Errors
    /// Closing the engine failed (its data may not be flushed).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let hub = self.hub;
        let flusher = self.parking.then(|| {
            Flusher::start(
                hub.index(),
                hub.metrics().clone(),
                socket::resume,
                vec![super::h2::flush_parked],
            )
        });
        // One transport parks a hub's streams: a second server of the same
        // hub keeps its streams' tasks.
        let flusher = flusher.filter(|f| {
            let registered = hub.index().set_waker(f.clone());
            std::ptr::addr_eq(Arc::as_ptr(registered), Arc::as_ptr(f))
        });
        // HTTP/3 on the listener's address, over UDP: bound before any
        // connection is served, so a port taken is an error at start.
        #[cfg(feature = "http3")]
        let quic = match &self.tls {
            Some(tls) if self.http3 => {
                let addr = listener.local_addr()?;
                let endpoint = super::h3::bind(addr, tls)?;
                let udp = endpoint.local_addr()?;
                tracing::info!(%udp, "HTTP/3 on udp://{udp}");
                Some(endpoint)
            }
            _ => None,
        };
        #[cfg(feature = "http3")]
        let alt_svc = quic
            .as_ref()
            .and_then(|e| e.local_addr().ok())
            .map(|a| super::h3::alt_svc(a.port()));
        #[cfg(not(feature = "http3"))]
        let alt_svc = None;
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            app: router(hub.clone()),
            cors: cors_layer(&hub.config().cors_origins),
            hub: hub.clone(),
            flusher: flusher.clone(),
            requests: Arc::new(Semaphore::new(hub.config().max_connections)),
            tls: self.tls.clone(),
            alt_svc,
            tracker: tracker.clone(),
        });
        if let Some(tls) = &self.tls {
            tls.watch(hub.shutdown_token().clone());
        }
        let stop = hub.shutdown_token().clone();
        if let Some(oauth) = hub.oauth() {
            // JWKS documents fetched by URL: now, then every five minutes.
            oauth.start_refresh(std::time::Duration::from_secs(300), stop.clone());
        }
        #[cfg(feature = "http3")]
        if let Some(endpoint) = &quic {
            tracker.spawn(super::h3::serve(
                endpoint.clone(),
                shared.clone(),
                tracker.clone(),
            ));
        }
        tokio::pin!(shutdown);

        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and similar: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            #[cfg(target_os = "linux")]
            if let Err(e) = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_LIMIT) {
                tracing::debug!(%peer, "cannot bound unsent bytes: {e}");
            }
            tracker.spawn(connection(stream, peer, shared.clone()));
        }

        drop(listener);
        tracing::info!("shutting down: ending streams");
        stop.cancel();
        tracker.close();
        // Parked streams have no task: the flusher ends them. Upgraded
        // connections (WebSocket) run in tasks of their own: they are
        // done once every stream has given its place back.
        let drained = async {
            tracker.wait().await;
            while flusher.as_ref().is_some_and(|f| f.parked() > 0) || hub.open_streams() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(hub.config().shutdown_grace, drained)
            .await
            .is_err()
        {
            tracing::warn!("grace period over: dropping remaining connections");
        }
        #[cfg(feature = "http3")]
        if let Some(endpoint) = quic {
            super::h3::close(endpoint).await;
        }
        hub.close().await?;
        tracing::info!("hub stopped");
        Ok(())
    }
}
