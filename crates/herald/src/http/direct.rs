//! Event streams served straight on the socket, below hyper.
//!
//! A hub spends most of its connections on subscribers that wait. hyper
//! keeps read and write buffers for every connection and sends each frame
//! of a streamed body as its own chunk; tens of thousands of mostly idle
//! event streams pay for that on each of them. So [`crate::server`] reads
//! the first request head itself. A subscription (`GET
//! /.well-known/mercure` over HTTP/1.1) is answered here: once the head is
//! parsed no buffer is kept. A task sends the first flush and the history;
//! then the stream is parked ([`super::parked`]): a waiting subscriber is
//! its socket and its subscriber record, with no task, and the hub's
//! flusher writes all frames queued for it as one chunk with one vectored
//! write. Anything else (publishing, the APIs, the
//! dashboard, HTTP/1.0, upgrades) goes to hyper with the bytes already
//! read, through [`Rewind`].

use std::future::Future as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::subscribe::{prepare, Feed, Prepared};
use super::{ConnContext, MERCURE_PATH};
use crate::hub::Hub;

/// Largest subscription request head read before giving up (`431`).
/// Other requests go to hyper as soon as their request line shows what
/// they are, under hyper's own limits.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a subscription request answered here; more go to hyper.
const MAX_HEADERS: usize = 64;
/// Frames in one chunk (so a chunk's buffers stay below every platform's
/// `IOV_MAX`).
const MAX_IOV: usize = 512;
/// Longest wait for a client to take one write: one that stopped reading
/// gives its connection back after this.
const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// What the first request head asks for.
#[derive(Debug)]
pub enum Head {
    /// An event stream this module serves.
    Subscribe {
        headers: HeaderMap,
        query: Option<String>,
    },
    /// Anything else, for hyper.
    Other,
    /// More bytes are needed.
    Partial,
}

/// Reads into `buf` until it holds a complete request head. `Ok(false)`
/// when the client closed first or the head is too large.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    use tokio::io::AsyncReadExt;
    loop {
        if !matches!(classify(buf), Head::Partial) {
            return Ok(true);
        }
        if buf.len() >= MAX_HEAD {
            let _ = stream
                .write_all(&error_response(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                    &[],
                ))
                .await;
            return Ok(false);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(512));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(false);
        }
    }
}

/// Sorts a request head: ours, hyper's, or not complete yet.
pub fn classify(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            // Once the request line is in, anything but a subscription
            // goes to hyper without waiting for the rest of its head.
            return match buf.windows(2).position(|w| w == b"\r\n") {
                Some(end) if !is_subscription_line(&buf[..end]) => Head::Other,
                _ => Head::Partial,
            };
        }
        // Malformed or too many headers: hyper answers with the right error.
        Err(_) => return Head::Other,
    };
    let (Some("GET"), Some(1), Some(target)) = (req.method, req.version, req.path) else {
        return Head::Other;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    // Pipelined bytes after a GET mean a client that expects another
    // answer on this connection: hyper handles that.
    if path != MERCURE_PATH || len != buf.len() {
        return Head::Other;
    }
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            return Head::Other;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Head::Other;
        };
        map.append(name, value);
    }
    Head::Subscribe {
        headers: map,
        query,
    }
}

/// Whether a request line may be a subscription this module serves.
fn is_subscription_line(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"GET ") else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(MERCURE_PATH.as_bytes()) else {
        return false;
    };
    matches!(rest.first(), Some(b' ' | b'?'))
}

/// An event stream whose response head is sent, until it is parked.
pub struct Live {
    stream: TcpStream,
    feed: Feed,
    /// The connection's place under the connection limit.
    permit: Option<OwnedSemaphorePermit>,
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
) -> Option<Live> {
    let cors = cors_headers(&hub, &headers);
    let Prepared {
        mut feed,
        headers: extra,
    } = match prepare(&hub, &headers, query.as_deref(), None, Some(ctx)).await {
        Ok(p) => p,
        Err(e) => {
            let mut head = cors;
            if let Some(c) = e.challenge {
                head.push(("www-authenticate", c));
            }
            let _ = stream
                .write_all(&error_response(e.status, &e.reason, &head))
                .await;
            let _ = stream.shutdown().await;
            return None;
        }
    };
    let mut head = String::with_capacity(256);
    head.push_str(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\ntransfer-encoding: chunked\r\n",
    );
    for (name, value) in &extra {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    for (name, value) in &cors {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    // The first flush (a comment, or the `retry` field) goes out with the
    // head, one write for both: the feed's start never waits.
    let mut first = Vec::new();
    let mut out = head.into_bytes();
    if feed.next(&mut first).await {
        let heads = chunk_heads(&first);
        for slice in chunk_slices(&first, &heads) {
            out.extend_from_slice(&slice);
        }
    }
    stream.write_all(&out).await.ok()?;
    Some(Live {
        stream,
        feed,
        permit: None,
    })
}

impl Live {
    /// Holds `permit` for as long as the stream runs.
    pub fn with_permit(mut self, permit: OwnedSemaphorePermit) -> Self {
        self.permit = Some(permit);
        self
    }

    /// Streams the first flush and any history, then parks the stream;
    /// streams on if it cannot be parked, until the feed ends (shutdown,
    /// token expiry, queue overflow) or the client goes away.
    pub async fn run(self) {
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
                if super::parked::available(feed.hub()) {
                    super::parked::park(feed, stream, permit);
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
                            Poll::Ready(Ok(())) => match discard_input(&stream) {
                                Input::Closed => return Poll::Ready(None),
                                // Readiness cleared: poll it again to wait.
                                Input::Drained => {}
                                Input::More => {}
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
                    r = tokio::time::timeout(WRITE_STALL, write_chunk(&mut stream, &out)) => {
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
        let _ = stream.try_write(b"0\r\n\r\n");
    }
}

/// What reading a readable socket found.
enum Input {
    /// The client closed its side (or the socket failed).
    Closed,
    /// Nothing more to read now.
    Drained,
    /// Bytes were discarded and more may follow.
    More,
}

/// A client has nothing to send on an event stream: bytes it sends anyway
/// are discarded. Tells whether it closed.
fn discard_input(stream: &TcpStream) -> Input {
    let mut sink = [0u8; 512];
    match stream.try_read(&mut sink) {
        Ok(0) => Input::Closed,
        Ok(_) => Input::More,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Input::Drained,
        Err(_) => Input::Closed,
    }
}

/// The head (`<size in hex>\r\n`) of one HTTP/1.1 chunk, on the stack.
pub(super) struct ChunkHead {
    buf: [u8; 18],
    len: usize,
}

impl ChunkHead {
    fn new(size: usize) -> Self {
        use std::io::Write as _;
        let mut buf = [0u8; 18];
        let mut cursor = io::Cursor::new(&mut buf[..]);
        // 16 hex digits and CRLF always fit.
        let _ = write!(cursor, "{size:x}\r\n");
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        Self { buf, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Frames as HTTP/1.1 chunks of at most `MAX_IOV` frames each: the chunk
/// heads, which [`chunk_slices`] then lays out with the frames. A chunk
/// of no bytes is left out, since an empty chunk ends the body.
pub(super) fn chunk_heads(frames: &[Bytes]) -> Vec<Option<ChunkHead>> {
    frames
        .chunks(MAX_IOV)
        .map(|group| {
            let size: usize = group.iter().map(Bytes::len).sum();
            (size > 0).then(|| ChunkHead::new(size))
        })
        .collect()
}

/// The buffers of one vectored write of `frames` as chunks.
pub(super) fn chunk_slices<'a>(
    frames: &'a [Bytes],
    heads: &'a [Option<ChunkHead>],
) -> Vec<IoSlice<'a>> {
    let mut slices = Vec::with_capacity(frames.len() + 2 * heads.len());
    for (group, head) in frames.chunks(MAX_IOV).zip(heads) {
        if let Some(head) = head {
            slices.push(IoSlice::new(head.as_bytes()));
            slices.extend(group.iter().map(|f| IoSlice::new(f)));
            slices.push(IoSlice::new(b"\r\n"));
        }
    }
    slices
}

/// Writes frames as HTTP/1.1 chunks, with vectored writes.
async fn write_chunk(stream: &mut TcpStream, frames: &[Bytes]) -> io::Result<()> {
    let heads = chunk_heads(frames);
    let mut slices = chunk_slices(frames, &heads);
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = match stream.try_write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.writable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// A complete short text response that closes the connection.
fn error_response(status: StatusCode, reason: &str, extra: &[(&str, String)]) -> Vec<u8> {
    let body = format!("{reason}\n");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if status == StatusCode::UNAUTHORIZED && !extra.iter().any(|(n, _)| *n == "www-authenticate") {
        out.push_str("www-authenticate: Bearer\r\n");
    }
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// The CORS headers of a simple `GET`, as the router's CORS layer sends
/// them: the request's origin mirrored when it is allowed, credentials
/// allowed, the resume headers exposed.
fn cors_headers(hub: &Hub, headers: &HeaderMap) -> Vec<(&'static str, String)> {
    let origins = &hub.config().cors_origins;
    let mut out = Vec::new();
    if origins.is_empty() {
        return out;
    }
    out.push((
        "vary",
        "origin, access-control-request-method, access-control-request-headers".to_owned(),
    ));
    let Some(origin) = headers.get("origin").and_then(|o| o.to_str().ok()) else {
        return out;
    };
    if origins.iter().any(|o| o == "*" || o == origin) {
        out.push(("access-control-allow-origin", origin.to_owned()));
        out.push(("access-control-allow-credentials", "true".to_owned()));
        out.push((
            "access-control-expose-headers",
            super::EXPOSED_HEADERS.to_owned(),
        ));
    }
    out
}

/// A stream that first yields bytes already read from it, so hyper sees
/// the request from its first byte.
#[derive(Debug)]
pub struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    pub fn new(prefix: Vec<u8>, inner: TcpStream) -> Self {
        Self {
            prefix: Bytes::from(prefix),
            inner,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_recognised_and_the_rest_goes_to_hyper() {
        let sub =
            b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 5\r\n\r\n";
        match classify(sub) {
            Head::Subscribe { headers, query } => {
                assert_eq!(query.as_deref(), Some("topic=a"));
                assert_eq!(headers["last-event-id"], "5");
                assert_eq!(headers["host"], "x");
            }
            h => panic!("{h:?}"),
        }
        assert!(matches!(classify(&sub[..20]), Head::Partial));
        // Another request line goes to hyper before its head is complete.
        assert!(matches!(
            classify(b"POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\nCookie: "),
            Head::Other
        ));
        assert!(matches!(
            classify(b"GET /.well-known/mercure/subscriptions HTTP/1.1\r\nHost"),
            Head::Other
        ));
        assert!(matches!(
            classify(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost"),
            Head::Partial
        ));
        for other in [
            &b"POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /.well-known/mercure?topic=a HTTP/1.0\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n\r\n",
            b"GET /.well-known/mercure/subscriptions HTTP/1.1\r\n\r\n",
            b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /.well-known/mercure?topic=a HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
        ] {
            assert!(matches!(classify(other), Head::Other), "{other:?}");
        }
    }

    #[test]
    fn error_responses_are_complete() {
        let r =
            String::from_utf8(error_response(StatusCode::UNAUTHORIZED, "no token", &[])).unwrap();
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{r}");
        assert!(r.contains("content-length: 9\r\n"));
        assert!(r.contains("www-authenticate: Bearer\r\n"));
        assert!(r.ends_with("\r\n\r\nno token\n"));
    }
}
