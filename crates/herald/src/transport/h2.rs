//! HTTP/2 served on the h2 crate directly: h2c with prior knowledge on a
//! plain listener, `h2` over TLS.
//!
//! One HTTP/2 connection carries hundreds of event streams. Served through
//! hyper, each kept a task and a boxed response body for as long as it
//! lived. Here a connection has one task, which reads the client's frames
//! and writes what its streams send, and an event stream is parked once
//! its history is out, as HTTP/1.1 streams are ([`super::http1::parked`]):
//! a waiting stream is its h2 send half, its feed and its place under the
//! connection limit, kept in its subscriber, with no task. The hub's
//! flusher hands its frames to h2 when the core wakes it (frames queued, a
//! heartbeat due, the subscriber closed), and h2 wakes it when the client
//! resets it or the connection goes.
//!
//! Every other request (publishing, the API, the dashboard, a stream
//! refused) goes to the router in a task of its own, its body read from
//! and its response written to its HTTP/2 stream.
//!
//! **Flow control.** h2 sends a stream's data only within the client's
//! window. A stream hands h2 its next batch of frames once the window
//! covers everything it handed over before and h2 has written it out (see
//! [`SEND_BUFFER`]); until then new frames wait in the subscriber's
//! bounded queue, so a client that stops reading overflows it and loses
//! its stream (or is reset after [`WRITE_STALL`]). A client that takes no
//! bytes of the connection at all for as long loses the connection (see
//! [`Paced`]).

use std::future::{poll_fn, Future as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use axum::response::IntoResponse;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tower::ServiceExt;

use super::http1::head::MAX_HEAD;
use super::http1::parked::Flusher;
use super::shared::{full, Shared, H2_MAX_STREAMS, HEAD_TIMEOUT};
use crate::http::conn::ConnContext;
use crate::http::error::HttpError;
use crate::http::events::{joined, prepare, Prepared};
use crate::http::policy::{cors_headers, MERCURE_PATH, WRITE_STALL};
use crate::hub::admission::StreamPermit;
use crate::hub::feed::Feed;
use crate::hub::subscriber::{ParkedState, Subscriber};

/// Flow-control window the hub opens to a client, per stream and for the
/// connection: request bodies (streamed publishing) are not held back by
/// HTTP/2's default of 64 KiB.
const WINDOW: u32 = 1024 * 1024;

/// Bytes h2 may hold for one stream before it reports no room
/// (`max_send_buffer_size`, 400 KiB by default): one byte, so a stream
/// has one batch of frames in h2 at a time. h2 counts a batch until its
/// connection has written it, then wakes the stream, which sends all that
/// was queued meanwhile as the next batch: under load a stream's frames
/// go out in few large DATA frames rather than many small ones, h2's
/// queues stay short, and a stream whose client does not keep up waits
/// in its bounded queue, as an HTTP/1.1 stream waits past its socket's
/// unsent bytes.
const SEND_BUFFER: usize = 1;

/// The first bite of the client's bytes h2 reads while streams are
/// opening (see [`Paced`]).
const FIRST_BITE: usize = 256;

/// A bite this large is no bite: reads take all h2 has room for.
const FULL_BITE: usize = 16 * 1024;

/// What the streams of one connection share.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The connection's place under the limit, held while the connection
    /// or any of its requests lasts; without one every request is
    /// answered `503`.
    permit: Option<OwnedSemaphorePermit>,
    /// `Alt-Svc` of every response (HTTP/3 next to TLS).
    alt_svc: Option<HeaderValue>,
}

/// Serves one HTTP/2 connection (its preface not yet read) until the
/// client closes it or the hub shuts down: then `GOAWAY`, and the
/// connection ends once its streams have.
pub(super) async fn serve<T>(
    io: T,
    peer: SocketAddr,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
    alt_svc: Option<HeaderValue>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop = shared.hub.shutdown_token().clone();
    let gate = Arc::new(AtomicUsize::new(OPEN));
    // On the heap while it lasts: inline, the handshake (h2's codec, a
    // timer) would take room in the connection's task for as long as the
    // connection lives.
    let handshake = Box::pin(
        h2::server::Builder::new()
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(MAX_HEAD as u32)
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .max_send_buffer_size(SEND_BUFFER)
            .handshake::<_, Bytes>(Paced::new(io, gate.clone())),
    );
    let mut conn = tokio::select! {
        r = tokio::time::timeout(HEAD_TIMEOUT, handshake) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "HTTP/2 handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "HTTP/2 handshake not done within {HEAD_TIMEOUT:?}");
                return;
            }
        },
        () = stop.cancelled() => return,
    };
    let this = Arc::new(Conn {
        shared,
        peer,
        permit,
        alt_svc,
    });
    let mut stopping = false;
    let mut bite = FIRST_BITE;
    loop {
        // What lives across an await here lives as long as the
        // connection, in its task: the request accepted is turned into
        // its (boxed) future before the next await, not kept beside it.
        let mut served = tokio::select! {
            r = accept(&mut conn, &gate, &mut bite) => match r {
                Some(Ok((req, respond))) => Box::pin(request(this.clone(), req, respond)),
                Some(Err(e)) => {
                    // Dropping the connection tells its parked streams.
                    tracing::debug!(peer = %this.peer, "connection ended: {e}");
                    return;
                }
                None => break,
            },
            () = stop.cancelled(), if !stopping => {
                // No new streams; the open ones end as the hub ends them.
                conn.graceful_shutdown();
                stopping = true;
                continue;
            }
        };
        // Most requests are done in one poll: a stream whose token checks
        // out and whose history is in memory is open and parked at once.
        // Those are served here, with no task, and their memory is free
        // before the next request is read: hundreds of streams opened
        // together would otherwise each hold a task's worth of memory at
        // once, and the small records they keep would be carved out of
        // the freed room, which the next ones could then not reuse.
        if poll_fn(|cx| Poll::Ready(served.as_mut().poll(cx).is_pending())).await {
            tokio::spawn(served);
        }
    }
    if let Err(e) = poll_fn(|cx| conn.poll_closed(cx)).await {
        tracing::debug!(peer = %this.peer, "connection ended: {e}");
    }
}

/// The connection's next request. Requests h2 has already read are taken
/// first; h2 reads more of the client's bytes only when none is left, and
/// then one bite at a time while streams are opening (see [`Paced`]).
async fn accept<T>(
    conn: &mut h2::server::Connection<Paced<T>, Bytes>,
    gate: &AtomicUsize,
    bite: &mut usize,
) -> Option<Result<(Request<RecvStream>, SendResponse<Bytes>), h2::Error>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    poll_fn(|cx| {
        gate.store(SHUT, Ordering::Relaxed);
        let ready = conn.poll_accept(cx);
        if ready.is_ready() {
            gate.store(OPEN, Ordering::Relaxed);
            return ready;
        }
        let allowed = if *bite >= FULL_BITE { OPEN } else { *bite };
        gate.store(allowed, Ordering::Relaxed);
        let ready = conn.poll_accept(cx);
        // The bite was read, and h2 asked for more.
        let bitten = allowed != OPEN && gate.load(Ordering::Relaxed) == SHUT;
        gate.store(OPEN, Ordering::Relaxed);
        match &ready {
            // Streams are opening: bites stay small.
            Poll::Ready(Some(Ok(_))) => *bite = FIRST_BITE,
            Poll::Ready(_) => {}
            Poll::Pending => {
                if bitten {
                    // Bytes that open no stream (a request's body): the
                    // next bite is larger, up to whole reads.
                    *bite = (*bite * 2).min(FULL_BITE);
                    cx.waker().wake_by_ref();
                }
            }
        }
        ready
    })
    .await
}

/// [`Paced::gate`]: reads pass freely.
const OPEN: usize = usize::MAX;
/// [`Paced::gate`]: no read passes (the accept loop polls again).
const SHUT: usize = 0;

/// An HTTP/2 connection's socket as h2 uses it: reads paced by the accept
/// loop, writes given up on once the client has taken nothing for
/// [`WRITE_STALL`].
///
/// h2 decodes every frame it can read before it hands over the first new
/// request, and keeps each request until it is accepted in a table that
/// never shrinks. A client that opens a hundred streams at once (a page
/// full of `EventSource`s, a service subscribing to many topics) would
/// leave a hundred entries of it (about 17 KB) for as long as the
/// connection lives. Read a bite at a time, h2 holds only the few requests
/// a bite carries: the loop accepts them before the next bite.
///
/// A client that stops reading its socket holds its streams back until
/// each is reset (see [`Stream::flush`]), but h2 would keep the
/// connection itself, its buffers and its place under the limit, for as
/// long as the client keeps it open: a write that waits fails the
/// connection once it has waited [`WRITE_STALL`].
struct Paced<T> {
    io: T,
    /// How much the next read may take: [`OPEN`], [`SHUT`], or one read of
    /// at most this many bytes, after which the gate shuts.
    gate: Arc<AtomicUsize>,
    /// Set while a write waits for the client: when it gives up.
    stall: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Paced<T> {
    fn new(io: T, gate: Arc<AtomicUsize>) -> Self {
        Self {
            io,
            gate,
            stall: None,
        }
    }

    /// What a write returned, or an error once writes have waited
    /// [`WRITE_STALL`] without the client taking a byte.
    fn progress<R>(
        &mut self,
        cx: &mut Context<'_>,
        wrote: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if wrote.is_ready() {
            self.stall = None;
            return wrote;
        }
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        if stall.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took no bytes for {WRITE_STALL:?}"),
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Paced<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let allowed = this.gate.load(Ordering::Relaxed);
        if allowed == SHUT {
            // No waker is kept: the accept loop polls again at once with
            // the gate open (see [`accept`]).
            return Poll::Pending;
        }
        if allowed == OPEN || allowed >= buf.remaining() {
            std::task::ready!(std::pin::Pin::new(&mut this.io).poll_read(cx, buf))?;
        } else {
            let mut bite = ReadBuf::new(buf.initialize_unfilled_to(allowed));
            std::task::ready!(std::pin::Pin::new(&mut this.io).poll_read(cx, &mut bite))?;
            let read = bite.filled().len();
            buf.advance(read);
        }
        if allowed != OPEN {
            this.gate.store(SHUT, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Paced<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let wrote = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(cx, wrote)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let wrote = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(cx, wrote)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.progress(cx, flushed)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let closed = std::pin::Pin::new(&mut this.io).poll_shutdown(cx);
        this.progress(cx, closed)
    }
}

/// One request: an event stream served here, anything else by the router.
async fn request(conn: Arc<Conn>, req: Request<RecvStream>, respond: SendResponse<Bytes>) {
    let ctx = ConnContext {
        cancel: None,
        peer: conn.peer,
    };
    if conn.permit.is_none() {
        return respond_with(&conn, full().into_response(), respond).await;
    }
    if req.method() == Method::GET && req.uri().path() == MERCURE_PATH {
        return event_stream(&conn, req, respond, ctx).await;
    }
    let (parts, body) = req.into_parts();
    let mut req = Request::from_parts(parts, axum::body::Body::new(RecvBody(body)));
    req.extensions_mut().insert(ctx);
    let res = match conn.shared.app.clone().oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    respond_with(&conn, res, respond).await;
}

/// `GET /.well-known/mercure`: the subscription's checks, its head, its
/// history, then the stream parks (or, where streams are not parked,
/// streams on in this task).
async fn event_stream(
    conn: &Conn,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    ctx: ConnContext,
) {
    let hub = &conn.shared.hub;
    let (parts, _empty) = req.into_parts();
    let query = parts.uri.query().map(str::to_owned);
    let headers = parts.headers;
    let cors = match &conn.shared.cors {
        Some(layer) => cors_headers(layer, &headers).await,
        None => HeaderMap::new(),
    };
    let ip = hub.client_ip(conn.peer.ip(), &headers);
    let opened = match hub.admit_stream(Some(ip)) {
        Ok(permit) => prepare(hub, &headers, query.as_deref(), None, Some(ctx))
            .await
            .map(|p| (p, permit)),
        Err(r) => Err(HttpError::refused(&r)),
    };
    // The request's memory goes before the stream starts waiting.
    drop((headers, query));
    let (
        Prepared {
            feed,
            headers: extra,
        },
        permit,
    ) = match opened {
        Ok(x) => x,
        Err(e) => {
            let mut res = e.into_response();
            res.headers_mut().extend(cors);
            return respond_with(conn, res, respond).await;
        }
    };
    let mut head = Response::new(());
    let h = head.headers_mut();
    for (name, value) in extra {
        h.insert(name, value);
    }
    h.extend(cors);
    if let Some(v) = &conn.alt_svc {
        h.insert(header::ALT_SVC, v.clone());
    }
    let Ok(send) = respond.send_response(head, false) else {
        return;
    };
    let stream = Stream {
        send,
        feed,
        _permit: permit,
        waker: None,
        blocked_since: None,
    };
    stream.run(conn.shared.flusher.clone()).await;
}

/// An event stream on an HTTP/2 connection, while it sends its history in
/// a task and once parked.
struct Stream {
    send: SendStream<Bytes>,
    feed: Feed,
    /// The stream's place under the connection limit.
    _permit: StreamPermit,
    /// Schedules the stream on the flusher (set as it parks): h2 calls it
    /// when the client resets the stream, the connection goes, or the
    /// window the stream waits for opens.
    waker: Option<Waker>,
    /// Since when the client's window has held the stream back.
    blocked_since: Option<Instant>,
}

impl Stream {
    /// Sends the first flush and the history, then parks the stream;
    /// streams on if it cannot be parked, until the feed ends (shutdown,
    /// token expiry, queue overflow) or the client resets the stream.
    async fn run(mut self, flusher: Option<Arc<Flusher>>) {
        let mut out: Vec<Bytes> = Vec::new();
        self.feed.set_parking(true);
        loop {
            if self.feed.is_live() && self.feed.parking() {
                if let Some(flusher) = &flusher {
                    let sub = self.feed.subscriber().clone();
                    self.waker = Some(Waker::from(Arc::new(StreamWaker {
                        sub: Arc::downgrade(&sub),
                        flusher: Arc::downgrade(flusher),
                    })));
                    flusher.park_stream(&sub, Box::new(self));
                    return;
                }
                self.feed.set_parking(false);
            }
            let room = tokio::select! {
                r = tokio::time::timeout(WRITE_STALL, poll_fn(|cx| poll_room(&mut self.send, cx))) => {
                    matches!(r, Ok(true))
                }
                // Overflowed while the client was not reading.
                () = self.feed.closed() => false,
            };
            if !room {
                self.send.send_reset(Reason::CANCEL);
                return;
            }
            let more = tokio::select! {
                more = self.feed.next(&mut out) => more,
                _ = poll_fn(|cx| self.send.poll_reset(cx)) => return,
            };
            if !more {
                let _ = self.send.send_data(Bytes::new(), true);
                return;
            }
            if !send_frames(&mut self.send, &mut out) {
                return;
            }
        }
    }

    /// Registers the stream's waker with h2 (see [`Stream::waker`]);
    /// `false` when the stream is already reset or its connection gone.
    fn listen(&mut self) -> bool {
        let Some(waker) = &self.waker else {
            return false;
        };
        self.send
            .poll_reset(&mut Context::from_waker(waker))
            .is_pending()
    }
}

/// Writes a parked HTTP/2 stream (the flusher's
/// [`super::http1::parked::FlushParked`] for HTTP/2).
pub(super) fn flush_parked(state: &mut ParkedState, sub: &Arc<Subscriber>) -> Option<bool> {
    Some(state.downcast_mut::<Stream>()?.flush(sub))
}

impl Stream {
    /// Writes what a parked stream has queued, or ends it: `false` when
    /// it is over.
    fn flush(&mut self, sub: &Arc<Subscriber>) -> bool {
        // Checked with a waker that does nothing: what h2 notifies while
        // this runs (the capacity this flush reserves) must not schedule
        // the stream again. Its own waker is registered before it waits.
        let mut room = poll_room(&mut self.send, &mut Context::from_waker(Waker::noop()));
        if room.is_pending() {
            // Checked again with the stream's waker: the window may have
            // opened in between, and told the waker that does nothing.
            let Some(waker) = self.waker.clone() else {
                return false;
            };
            room = poll_room(&mut self.send, &mut Context::from_waker(&waker));
        }
        match room {
            Poll::Ready(false) => return false,
            Poll::Ready(true) => {
                if self.blocked_since.take().is_some() {
                    sub.set_blocked(false);
                }
            }
            Poll::Pending => {
                // New frames wait in the bounded queue; h2 wakes the stream
                // once the window opens, the hub's ticker to check for a
                // stall.
                let since = *self.blocked_since.get_or_insert_with(Instant::now);
                if sub.is_closed() || since.elapsed() >= WRITE_STALL {
                    tracing::debug!(subscriber = sub.id, "client stopped reading: resetting");
                    self.send.send_reset(Reason::CANCEL);
                    return false;
                }
                sub.set_blocked(true);
                return true;
            }
        }
        let mut out = Vec::new();
        if !self.feed.take_live(&mut out) {
            if self.feed.is_done() {
                let _ = self.send.send_data(Bytes::new(), true);
                return false;
            }
            return self.listen();
        }
        send_frames(&mut self.send, &mut out) && self.listen()
    }
}

/// Schedules a parked HTTP/2 stream on the hub's flusher when h2 has news
/// of it. Weak references: h2 keeps the waker inside the stream, which the
/// subscriber keeps.
struct StreamWaker {
    sub: Weak<Subscriber>,
    flusher: Weak<Flusher>,
}

impl std::task::Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let (Some(sub), Some(flusher)) = (self.sub.upgrade(), self.flusher.upgrade()) {
            flusher.schedule(&sub);
        }
    }
}

/// Ready with `true` once the client's window covers everything the
/// stream sent (so the next batch is sent at once), `false` when the
/// stream was reset or its connection is gone.
fn poll_room(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<bool> {
    if send.poll_reset(cx).is_ready() {
        return Poll::Ready(false);
    }
    // Capacity beyond what is buffered: one byte is enough to know.
    send.reserve_capacity(1);
    loop {
        if send.capacity() > 0 {
            return Poll::Ready(true);
        }
        match send.poll_capacity(cx) {
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(false),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Hands frames to h2: as one DATA frame, or a large batch (a replay's)
/// frame by frame (see [`joined`]). `false` when the stream is gone.
fn send_frames(send: &mut SendStream<Bytes>, out: &mut Vec<Bytes>) -> bool {
    let sent = match joined(out) {
        Some(one) => send.send_data(one, false).is_ok(),
        None => out
            .drain(..)
            .filter(|f| !f.is_empty())
            .all(|f| send.send_data(f, false).is_ok()),
    };
    out.clear();
    sent
}

/// Headers of HTTP/1.1 that HTTP/2 forbids.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Sends a router's response on its stream, its body as the client's
/// window allows.
async fn respond_with(
    conn: &Conn,
    res: axum::response::Response,
    mut respond: SendResponse<Bytes>,
) {
    let (mut parts, body) = res.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    if let Some(v) = &conn.alt_svc {
        parts.headers.insert(header::ALT_SVC, v.clone());
    }
    let bodiless = parts.status.is_informational()
        || parts.status == axum::http::StatusCode::NO_CONTENT
        || parts.status == axum::http::StatusCode::NOT_MODIFIED;
    if !bodiless && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(len) = body.size_hint().exact() {
            parts.headers.insert(header::CONTENT_LENGTH, len.into());
        }
    }
    let end = body.is_end_stream();
    let Ok(send) = respond.send_response(Response::from_parts(parts, ()), end) else {
        return;
    };
    if !end {
        pipe(body, send).await;
    }
}

/// Streams a response body, frame by frame as the client's window allows,
/// until it ends or the client resets the stream.
async fn pipe(mut body: axum::body::Body, mut send: SendStream<Bytes>) {
    use http_body_util::BodyExt;
    loop {
        let room = tokio::time::timeout(WRITE_STALL, poll_fn(|cx| poll_room(&mut send, cx))).await;
        if !matches!(room, Ok(true)) {
            send.send_reset(Reason::CANCEL);
            return;
        }
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        let frame = match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!("response body failed: {e}");
                send.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
        };
        match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                if data.is_empty() && !end {
                    continue;
                }
                if send.send_data(data, end).is_err() || end {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = send.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}

/// A request's body as the router reads it: the stream's DATA frames, the
/// window given back as they are read.
struct RecvBody(RecvStream);

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        let recv = &mut self.0;
        match std::task::ready!(recv.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = recv.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(http_body::Frame::data(data))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => match std::task::ready!(recv.poll_trailers(cx)) {
                Ok(Some(trailers)) => Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers)))),
                Ok(None) => Poll::Ready(None),
                Err(e) => Poll::Ready(Some(Err(e))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{Paced, OPEN, WRITE_STALL};

    #[tokio::test(start_paused = true)]
    async fn writes_fail_once_the_client_has_taken_nothing_for_the_stall() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut paced = Paced::new(near, Arc::new(AtomicUsize::new(OPEN)));
        // A client that takes bytes, however slowly, keeps the connection:
        // each byte it takes starts the wait again.
        paced.write_all(&[1; 64]).await.unwrap();
        for _ in 0..3 {
            let taking = async {
                tokio::time::sleep(WRITE_STALL - std::time::Duration::from_secs(1)).await;
                far.read_exact(&mut [0; 64]).await.unwrap();
            };
            let (wrote, ()) = tokio::join!(paced.write_all(&[2; 64]), taking);
            wrote.unwrap();
        }
        // One that takes nothing more fails it once the stall has passed.
        let started = tokio::time::Instant::now();
        let e = tokio::time::timeout(WRITE_STALL * 2, paced.write_all(&[3; 64]))
            .await
            .expect("the write gave up")
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert_eq!(started.elapsed(), WRITE_STALL);
    }
}
