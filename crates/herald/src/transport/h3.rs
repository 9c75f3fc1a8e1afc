//! HTTP/3: QUIC (quinn) on the TLS listener's port, over UDP, with h3.
//!
//! A server with TLS binds a QUIC endpoint on the address of its TCP
//! listener; TCP responses advertise it with `Alt-Svc`, so a browser that
//! first came over HTTP/2 or HTTP/1.1 moves to HTTP/3 on its own. The TLS
//! is the listener's: the same certificate resolver (reloads included),
//! TLS 1.3 and ALPN `h3`.
//!
//! Every request goes through the same router as over TCP, with the same
//! [`ConnContext`] (the QUIC peer's address; no cancellation token, as
//! over HTTP/2: a stream whose queue overflows ends alone, the connection
//! carries others), so the routes, limits, heartbeats and resume are the
//! same. Each QUIC connection takes a place in the pool of non-stream
//! connections, like a TCP connection; without one its requests are
//! answered `503`. Event streams take their own places as they open, and
//! one connection carries at most [`H2_MAX_STREAMS`] requests at once.
//!
//! Response bodies are sent frame by frame as the router yields them: an
//! event stream is an endless body, and each event leaves as it comes.
//! At shutdown each connection gets `GOAWAY`, its streams end as the hub
//! ends their feeds, and the endpoint closes once they are done (or the
//! grace period is over).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Response};
use axum::response::IntoResponse;
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::shared::{full, Shared, H2_MAX_STREAMS, HEAD_TIMEOUT};
use super::tls::Tls;
use crate::http::conn::ConnContext;

type SendHalf = ::h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = ::h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// HTTP/3's `H3_NO_ERROR`: the code of a connection closed on purpose.
const H3_NO_ERROR: u32 = 0x100;

/// How often an open connection is pinged: a QUIC connection with no
/// packet for the idle timeout (30 s) is gone, and an event stream may be
/// silent longer than that (heartbeats off or rare).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The longest a closing endpoint waits for its closes to reach clients.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long a connection whose streams are done after `GOAWAY` waits for
/// the client to close it before closing it itself: closing a QUIC
/// connection drops what is still unacknowledged, so the last bytes of its
/// streams get a few round trips to arrive, while a client that keeps its
/// idle connection open (as browsers do) does not hold shutdown long.
fn linger(conn: &quinn::Connection) -> Duration {
    (conn.rtt() * 4).clamp(Duration::from_millis(50), CLOSE_WAIT)
}

/// Binds the QUIC endpoint on `addr` (UDP), serving `tls`'s certificate.
///
/// # Errors
/// The UDP address cannot be bound.
pub(super) fn bind(addr: SocketAddr, tls: &Tls) -> anyhow::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.quic_config())
        .context("the TLS configuration does not suit QUIC")?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(H2_MAX_STREAMS))
        .keep_alive_interval(Some(KEEP_ALIVE));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr)
        .with_context(|| format!("cannot listen for HTTP/3 on UDP {addr}"))
}

/// The `Alt-Svc` value TCP responses carry: HTTP/3 on `port`, for a day.
pub(super) fn alt_svc(port: u16) -> HeaderValue {
    HeaderValue::try_from(format!("h3=\":{port}\"; ma=86400"))
        .expect("a port number makes a valid header value")
}

/// Accepts QUIC connections until the hub shuts down; each is served in a
/// task of `tracker`, so shutdown waits for them.
pub(super) async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>, tracker: TaskTracker) {
    let stop = shared.hub.shutdown_token().clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        tracker.spawn(connection(incoming, shared.clone()));
    }
}

/// Closes the endpoint once its connections are done, and waits (briefly)
/// for the closes to reach the clients.
pub(super) async fn close(endpoint: quinn::Endpoint) {
    endpoint.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"hub stopped");
    let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
}

/// One QUIC connection: the handshake (within [`HEAD_TIMEOUT`]), then its
/// requests, each in a task, until the client closes it or the hub shuts
/// down.
async fn connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let peer = incoming.remote_address();
    let stop = shared.hub.shutdown_token().clone();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, "QUIC connection not accepted: {e}");
            return;
        }
    };
    let conn = tokio::select! {
        r = tokio::time::timeout(HEAD_TIMEOUT, connecting) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "QUIC handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "QUIC handshake not done within {HEAD_TIMEOUT:?}");
                return;
            }
        },
        () = stop.cancelled() => return,
    };
    shared.hub.metrics().connection_accepted("h3");
    // Without a place the connection is still served, to answer `503`.
    let permit = shared.requests.clone().try_acquire_owned().ok();
    if permit.is_none() {
        shared.hub.metrics().refused("requests");
    }
    let mut h3 = match ::h3::server::builder()
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(%peer, "HTTP/3 connection not set up: {e}");
            return;
        }
    };
    let ctx = ConnContext { cancel: None, peer };
    let admitted = permit.is_some();
    let requests = TaskTracker::new();
    let spawn = |resolver: ::h3::server::RequestResolver<h3_quinn::Connection, Bytes>| {
        requests.spawn(request(
            resolver,
            shared.clone(),
            ctx.clone(),
            admitted,
            conn.clone(),
        ));
    };
    let stopping = loop {
        tokio::select! {
            r = h3.accept() => match r {
                Ok(Some(resolver)) => {
                    spawn(resolver);
                    // A connection without a place gets its `503`, then
                    // `GOAWAY` and the close: refused connections do not
                    // pile up (QUIC's keep-alive would hold them open).
                    if !admitted {
                        break true;
                    }
                }
                Ok(None) => break false,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(%peer, "HTTP/3 connection ended: {e}");
                    }
                    break false;
                }
            },
            () = stop.cancelled() => break true,
        }
    };
    requests.close();
    if stopping {
        // GOAWAY: no new request on this connection; those open end as
        // the hub ends their feeds. The connection is still read from
        // meanwhile (its control stream, requests already on their way).
        if let Err(e) = h3.shutdown(0).await {
            tracing::debug!(%peer, "HTTP/3 GOAWAY not sent: {e}");
        }
        let mut open = true;
        let drained = requests.wait();
        tokio::pin!(drained);
        loop {
            tokio::select! {
                () = &mut drained => break,
                r = h3.accept(), if open => match r {
                    Ok(Some(resolver)) => spawn(resolver),
                    Ok(None) | Err(_) => open = false,
                },
            }
        }
        // Let the client take the last bytes and close.
        let _ = tokio::time::timeout(linger(&conn), conn.closed()).await;
    } else {
        requests.wait().await;
    }
    drop(permit);
    // Dropping the h3 connection closes the QUIC connection (H3_NO_ERROR).
    drop(h3);
}

/// One request: its head, then the router's response, streamed.
async fn request(
    resolver: ::h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    shared: Arc<Shared>,
    ctx: ConnContext,
    admitted: bool,
    conn: quinn::Connection,
) {
    let peer = ctx.peer;
    let (req, stream) = match tokio::time::timeout(HEAD_TIMEOUT, resolver.resolve_request()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "HTTP/3 request not read: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "HTTP/3 request head not sent within {HEAD_TIMEOUT:?}");
            return;
        }
    };
    let (send, recv) = stream.split();
    let (back, unread) = oneshot::channel();
    let mut req = req.map(|()| request_body(recv, back));
    req.extensions_mut().insert(ctx);
    let res = if admitted {
        match shared.app.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        }
    } else {
        drop(req);
        full().into_response()
    };
    tokio::join!(
        respond(send, res, &conn, peer),
        settle(unread, linger(&conn))
    );
}

/// The reading half of a request stream inside the request's body. A
/// route that drops the body before its end (most do not read one) hands
/// the half back to the request's task, which [`settle`]s it.
struct BodyRecv {
    recv: Option<RecvHalf>,
    back: Option<oneshot::Sender<RecvHalf>>,
}

impl Drop for BodyRecv {
    fn drop(&mut self) {
        if let (Some(recv), Some(back)) = (self.recv.take(), self.back.take()) {
            let _ = back.send(recv);
        }
    }
}

/// The request body, read from the stream as the route consumes it.
fn request_body(recv: RecvHalf, back: oneshot::Sender<RecvHalf>) -> Body {
    let state = BodyRecv {
        recv: Some(recv),
        back: Some(back),
    };
    let chunks = futures_util::stream::unfold(state, |mut state| async move {
        let recv = state.recv.as_mut()?;
        let next = match recv.recv_data().await {
            Ok(Some(mut data)) => Ok(Some(data.copy_to_bytes(data.remaining()))),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match next {
            Ok(Some(chunk)) => Some((Ok(chunk), state)),
            // Read to its end (or failed): nothing to hand back.
            Ok(None) => {
                drop(state.recv.take());
                None
            }
            Err(e) => {
                state.recv = None;
                Some((Err(e), state))
            }
        }
    });
    Body::from_stream(chunks)
}

/// Ends the reading half of a request whose route left its body unread:
/// the client's end of the request (a `GET`'s comes right after its head)
/// is awaited for a few round trips, then the client is asked to stop
/// sending with `H3_NO_ERROR` (RFC 9114, 4.1). Dropping the half at once
/// would stop the stream with code 0 while the client may still be
/// finishing its request, and fail the request on the client's side.
async fn settle(back: oneshot::Receiver<RecvHalf>, within: Duration) {
    let Ok(mut recv) = back.await else {
        return;
    };
    let to_end = async {
        loop {
            match recv.recv_data().await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    };
    if !matches!(tokio::time::timeout(within, to_end).await, Ok(true)) {
        recv.stop_sending(::h3::error::Code::H3_NO_ERROR);
    }
}

/// Sends `res`: its head, then each body frame as it comes, then the end
/// of the stream. Stops when the connection is gone.
async fn respond(
    mut send: SendHalf,
    res: Response<Body>,
    conn: &quinn::Connection,
    peer: SocketAddr,
) {
    let (mut parts, body) = res.into_parts();
    // HTTP/3 has no connection-level headers (RFC 9114, 4.2).
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        parts.headers.remove(name);
    }
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        tracing::debug!(%peer, "HTTP/3 response not sent: {e}");
        return;
    }
    let mut body = std::pin::pin!(body);
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = conn.closed() => return,
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!(%peer, "HTTP/3 response body failed: {e}");
                send.stop_stream(::h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        let sent = match frame.into_data() {
            Ok(data) if data.is_empty() => continue,
            Ok(data) => {
                tokio::select! {
                    r = send.send_data(data) => r,
                    _ = conn.closed() => return,
                }
            }
            Err(frame) => match frame.into_trailers() {
                // Trailers end the stream.
                Ok(trailers) => {
                    if let Err(e) = send.send_trailers(trailers).await {
                        tracing::debug!(%peer, "HTTP/3 trailers not sent: {e}");
                    }
                    return;
                }
                Err(_) => continue,
            },
        };
        if let Err(e) = sent {
            // The client cancelled the request or went away.
            tracing::debug!(%peer, "HTTP/3 response ended: {e}");
            return;
        }
    }
    if let Err(e) = send.finish().await {
        tracing::debug!(%peer, "HTTP/3 response not finished: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn alt_svc_names_the_port() {
        assert_eq!(super::alt_svc(8443), "h3=\":8443\"; ma=86400");
    }
}
