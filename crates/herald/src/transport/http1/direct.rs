//! Event streams served straight on the socket, below hyper.
//!
//! A hub spends most of its connections on subscribers that wait. hyper
//! keeps read and write buffers for every connection and sends each frame
//! of a streamed body as its own chunk; tens of thousands of mostly idle
//! event streams pay for that on each of them. So the server reads the
//! first request head itself ([`super::head`]). A subscription (`GET
//! /.well-known/mercure` over HTTP/1.1) is answered here: once the head is
//! parsed no buffer is kept. A task sends the first flush and the history;
//! then the stream is parked ([`super::parked`]): a waiting subscriber is
//! its socket and its subscriber record, with no task, and the hub's
//! flusher writes all frames queued for it as one chunk with one vectored
//! write. The rules of the stream (headers, CORS, errors, stalls, stray
//! bytes) are the stream policy's ([`crate::http::policy`]).

use std::future::Future as _;
use std::sync::Arc;
use std::task::Poll;

use crate::hub::admission::StreamPermit;
use axum::http::HeaderMap;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower_http::cors::CorsLayer;

use super::chunk;
use super::parked::Flusher;
use crate::http::conn::ConnContext;
use crate::http::error::HttpError;
use crate::http::events::{prepare, Prepared};
use crate::http::policy::{cors_headers, discard_input, Input, WRITE_STALL};
use crate::hub::feed::Feed;
use crate::hub::handle::Hub;

/// An event stream whose response head is sent, until it is parked.
#[derive(Debug)]
pub struct Live {
    stream: TcpStream,
    feed: Feed,
    /// The connection's place under the connection limit.
    permit: Option<StreamPermit>,
}

/// Answers a subscription request: an error response (and `None`), or the
/// response head, leaving a [`Live`] stream to run. The request's memory is
/// freed before it returns, so the long-lived task never carries it.
pub async fn open(
    mut stream: TcpStream,
    hub: Hub,
    headers: HeaderMap,
    query: Option<String>,
    ctx: ConnContext,
    cors: Option<&CorsLayer>,
) -> Option<Live> {
    let cors = match cors {
        Some(layer) => cors_headers(layer, &headers).await,
        None => HeaderMap::new(),
    };
    let Prepared {
        mut feed,
        headers: extra,
    } = match prepare(&hub, &headers, query.as_deref(), None, Some(ctx)).await {
        Ok(p) => p,
        Err(e) => {
            let _ = stream.write_all(&error_response(&e, &cors)).await;
            let _ = stream.shutdown().await;
            return None;
        }
    };
    let mut out = Vec::with_capacity(256);
    // The connection ends with the stream (its socket is the stream's, and
    // is closed once the last chunk is out): said in the head, so a client
    // never pools it and sends its next request on a closing socket.
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n",
    );
    for (name, value) in &extra {
        push_header(&mut out, name, value.as_bytes());
    }
    for (name, value) in &cors {
        push_header(&mut out, name.as_str(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    // The first flush (a comment, or the `retry` field) goes out with the
    // head, one write for both: the feed's start never waits.
    let mut first = Vec::new();
    if feed.next(&mut first).await {
        chunk::append(&mut out, &first);
    }
    stream.write_all(&out).await.ok()?;
    Some(Live {
        stream,
        feed,
        permit: None,
    })
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

impl Live {
    /// Holds `permit` for as long as the stream runs.
    pub fn with_permit(mut self, permit: StreamPermit) -> Self {
        self.permit = Some(permit);
        self
    }

    /// Streams the first flush and any history, then parks the stream;
    /// streams on if it cannot be parked, until the feed ends (shutdown,
    /// token expiry, queue overflow) or the client goes away.
    /// `flusher` is `None` when streams are not to be parked.
    pub async fn run(self, flusher: Option<Arc<Flusher>>) {
        let Live {
            mut stream,
            mut feed,
            permit,
        } = self;
        let mut out: Vec<Bytes> = Vec::new();
        feed.set_parking(true);
        loop {
            // Live with nothing left to write: the connection waits parked,
            // without this task (see `super::parked`).
            if feed.is_live() && feed.parking() {
                if let Some(flusher) = flusher.as_ref().filter(|f| f.available()) {
                    flusher.park(feed, stream, permit);
                    return;
                }
                feed.set_parking(false);
            }
            // The write happens outside the select, so the task's size is
            // the larger of the two states, not their sum.
            let more = {
                let next = feed.next(&mut out);
                tokio::pin!(next);
                // Readiness of the socket is polled in place (no waiter
                // future): it tells when the client closed its side. Stray
                // bytes are discarded without dropping `next`, so a replay in
                // progress is never restarted.
                let event = std::future::poll_fn(|cx| {
                    if let Poll::Ready(more) = next.as_mut().poll(cx) {
                        return Poll::Ready(Some(more));
                    }
                    for _ in 0..16 {
                        match stream.poll_read_ready(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(_)) => return Poll::Ready(None),
                            Poll::Ready(Ok(())) => match discard_input(|b| stream.try_read(b)) {
                                Input::Closed => return Poll::Ready(None),
                                // Readiness cleared: poll it again to wait.
                                Input::Drained => {}
                            },
                        }
                    }
                    // A client that keeps sending: let others run first.
                    cx.waker().wake_by_ref();
                    Poll::Pending
                })
                .await;
                match event {
                    Some(more) => more,
                    None => return,
                }
            };
            if !more {
                break;
            }
            if out.is_empty() {
                continue;
            }
            // Boxed: one small allocation per write keeps the writing state
            // out of every idle connection's task.
            let closed = feed.closed();
            let shutdown = feed.shutdown_token();
            let written = Box::pin(async {
                tokio::select! {
                    r = tokio::time::timeout(WRITE_STALL, chunk::write(&mut stream, &out)) => {
                        matches!(r, Ok(Ok(())))
                    }
                    // Overflowed while the client was not reading.
                    () = closed => false,
                    () = shutdown.cancelled() => false,
                }
            });
            if !written.await {
                return;
            }
            out.clear();
            if out.capacity() > 64 {
                out = Vec::new();
            }
        }
        // The last chunk, so the response ends cleanly, if the socket takes
        // it now: a client that stopped reading gets no more waiting.
        let _ = stream.try_write(chunk::LAST_CHUNK);
    }
}

/// A complete error response that closes the connection: the same status,
/// headers and body as the router's (see [`HttpError`]), with `extra`
/// headers (CORS).
pub(crate) fn error_response(e: &HttpError, extra: &HeaderMap) -> Vec<u8> {
    let body = e.body();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        e.status.as_u16(),
        e.status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    for (name, value) in e.headers().iter().map(|(n, v)| (n, v)).chain(extra) {
        push_header(&mut out, name.as_str(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn error_responses_are_complete() {
        let e = HttpError::new(StatusCode::UNAUTHORIZED, "no token");
        let r = String::from_utf8(error_response(&e, &HeaderMap::new())).unwrap();
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{r}");
        assert!(r.contains("content-length: 9\r\n"));
        assert!(r.contains("www-authenticate: Bearer\r\n"));
        assert!(r.contains("content-type: text/plain; charset=utf-8\r\n"));
        assert!(r.ends_with("\r\n\r\nno token\n"));
    }
}
