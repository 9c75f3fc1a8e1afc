//! WebSocket served straight on the socket, below hyper.
//!
//! A socket opened on the plain listener (`GET /.well-known/mercure` with
//! `Upgrade: websocket`, the connection's first request) is answered here:
//! the handshake, then the socket's messages (`http::websocket`) over
//! herald's own framing ([`crate::http::wsframe`]). What that buys is
//! parking: a socket whose one subscription is live and whose client is
//! quiet keeps no task and no buffer. Its socket and subscription wait in
//! the subscriber record like a parked event stream's
//! ([`super::parked`]): the flusher writes its updates as frames (one
//! shared frame per update for the URL's subscription, the same bytes on
//! every socket) and its pings when the hub has been quiet for a
//! heartbeat; the watcher hands the socket back to a task as soon as the
//! client sends anything (a pong, a message, a close).
//!
//! Sockets over TLS, and those on a connection that began with another
//! request, are served by axum's upgrade inside the router (tungstenite)
//! and keep their task.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use axum::http::{header, HeaderMap};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use sha1::Digest as _;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tower_http::cors::CorsLayer;

use super::direct::error_response;
use super::parked::Flusher;
use crate::http::conn::ConnContext;
use crate::http::error::HttpError;
use crate::http::policy::cors_headers;
use crate::http::websocket::{self, Idle, Wire};
use crate::http::wsframe::{self, Invalid};
use crate::hub::handle::Hub;

/// Bytes read from the socket at a time; a socket's read buffer exists
/// only while its task runs.
const READ_CHUNK: usize = 1024;
/// Buffers in one vectored write.
const MAX_IOV: usize = 64;

/// Answers an `Upgrade: websocket` request (the handshake, or an error
/// response), then runs the socket until it closes or is parked.
pub async fn open(
    mut stream: TcpStream,
    hub: Hub,
    headers: HeaderMap,
    query: Option<String>,
    ctx: ConnContext,
    cors: Option<&CorsLayer>,
    flusher: Option<Arc<Flusher>>,
) {
    let opened = match accept_key(&headers) {
        Ok(key) => websocket::open(hub.clone(), Some(ctx), query.as_deref(), &headers)
            .await
            .map(|opening| (key, opening)),
        Err(e) => Err(e),
    };
    let (key, opening) = match opened {
        Ok(o) => o,
        Err(e) => {
            let cors = match cors {
                Some(layer) => cors_headers(layer, &headers).await,
                None => HeaderMap::new(),
            };
            let _ = stream.write_all(&error_response(&e, &cors)).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    drop(headers);
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {key}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let socket = RawSocket::new(stream, websocket::max_message(&hub), flusher);
    websocket::run(socket, opening).await;
}

/// Takes a parked socket back to a task: its client sent something.
/// `pending` is what the socket had not yet taken of a frame.
pub(crate) fn resume(
    stream: std::net::TcpStream,
    pending: Option<Bytes>,
    idle: Idle,
    flusher: Arc<Flusher>,
) {
    let max = websocket::max_message(idle.feed().hub());
    let stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("cannot resume a parked socket: {e}");
            return;
        }
    };
    let mut socket = RawSocket::new(stream, max, Some(flusher));
    if let Some(rest) = pending {
        socket.out.push_back(rest);
        socket.front_started = true;
    }
    tokio::spawn(websocket::resume(socket, idle));
}

/// The handshake's answer to the client's `Sec-WebSocket-Key` (RFC 6455,
/// section 4.2.2), once the request is a valid opening handshake.
fn accept_key(headers: &HeaderMap) -> Result<String, HttpError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(HttpError::bad_request(
            "Connection header did not include 'upgrade'",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(HttpError::bad_request(
            "WebSocket version not supported: Sec-WebSocket-Version must be 13",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(HttpError::bad_request("missing Sec-WebSocket-Key"));
    };
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    Ok(base64::engine::general_purpose::STANDARD.encode(sha.finalize()))
}

/// A socket's connection while its task runs: client frames in, messages
/// out as frames, with no buffer kept past what is in flight.
pub struct RawSocket {
    stream: TcpStream,
    /// Bytes read and not yet a whole frame.
    read: BytesMut,
    /// A fragmented message begun: text or binary, its bytes so far.
    partial: Option<(bool, BytesMut)>,
    /// Frames not yet written, in order, one buffer each.
    out: VecDeque<Bytes>,
    /// The first of `out` is partly written: a close frame must wait for
    /// its end.
    front_started: bool,
    max_message: usize,
    /// Parks the socket once it waits; `None` when streams are not parked.
    flusher: Option<Arc<Flusher>>,
    /// The client may have sent bytes not read yet (the socket was not
    /// found empty since it opened or came back from parking).
    unread: bool,
}

impl RawSocket {
    fn new(stream: TcpStream, max_message: usize, flusher: Option<Arc<Flusher>>) -> Self {
        Self {
            stream,
            read: BytesMut::new(),
            partial: None,
            out: VecDeque::new(),
            front_started: false,
            max_message,
            flusher,
            unread: true,
        }
    }

    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let head = wsframe::Head::new(opcode, payload.len());
        let mut frame = BytesMut::with_capacity(head.as_bytes().len() + payload.len());
        frame.extend_from_slice(head.as_bytes());
        frame.extend_from_slice(payload);
        self.out.push_back(frame.freeze());
    }

    /// Writes what the socket takes now, without waiting.
    fn write_now(&mut self) {
        let waker = futures_util::task::noop_waker();
        let _ = self.poll_write_out(&mut Context::from_waker(&waker));
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .out
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            let mut n =
                std::task::ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while n > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    self.out.pop_front();
                    self.front_started = false;
                } else {
                    let _ = front.split_to(n);
                    self.front_started = true;
                    n = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Answers a protocol failure with its close frame (if the socket
    /// takes it now): the socket then ends.
    fn fail(&mut self, invalid: Invalid) -> axum::Error {
        // A frame begun goes out whole first; the others are dropped.
        let begun = self.out.pop_front().filter(|_| self.front_started);
        self.out.clear();
        self.out.extend(begun);
        self.out
            .push_back(wsframe::close_frame(invalid.0, invalid.1));
        self.write_now();
        axum::Error::new(invalid)
    }

    /// The message a frame completes, if any.
    fn message(&mut self, frame: wsframe::Frame) -> Result<Option<Message>, Invalid> {
        let whole = |text: bool, payload: Bytes| {
            if text {
                Utf8Bytes::try_from(payload)
                    .map(Message::Text)
                    .map_err(|_| Invalid(wsframe::INVALID_DATA, "text messages are UTF-8"))
            } else {
                Ok(Message::Binary(payload))
            }
        };
        match frame.opcode {
            wsframe::PING => {
                self.queue(wsframe::PONG, &frame.payload);
                self.write_now();
                Ok(Some(Message::Ping(frame.payload)))
            }
            wsframe::PONG => Ok(Some(Message::Pong(frame.payload))),
            wsframe::CLOSE => {
                let p = frame.payload;
                let close = match p.len() {
                    0 => None,
                    1 => return Err(Invalid(wsframe::PROTOCOL_ERROR, "malformed close frame")),
                    _ if !wsframe::valid_close_code(u16::from_be_bytes([p[0], p[1]])) => {
                        return Err(Invalid(wsframe::PROTOCOL_ERROR, "invalid close code"));
                    }
                    _ => Some(CloseFrame {
                        code: u16::from_be_bytes([p[0], p[1]]),
                        reason: Utf8Bytes::try_from(p.slice(2..)).map_err(|_| {
                            Invalid(wsframe::INVALID_DATA, "close reasons are UTF-8")
                        })?,
                    }),
                };
                Ok(Some(Message::Close(close)))
            }
            wsframe::TEXT | wsframe::BINARY => {
                if self.partial.is_some() {
                    return Err(Invalid(
                        wsframe::PROTOCOL_ERROR,
                        "a message began before the last one ended",
                    ));
                }
                let text = frame.opcode == wsframe::TEXT;
                if frame.fin {
                    return whole(text, frame.payload).map(Some);
                }
                self.partial = Some((text, BytesMut::from(&frame.payload[..])));
                Ok(None)
            }
            _ => {
                let Some((text, mut buf)) = self.partial.take() else {
                    return Err(Invalid(
                        wsframe::PROTOCOL_ERROR,
                        "a continuation frame with no message begun",
                    ));
                };
                if buf.len() + frame.payload.len() > self.max_message {
                    return Err(Invalid(wsframe::TOO_BIG, "message too large"));
                }
                buf.extend_from_slice(&frame.payload);
                if frame.fin {
                    return whole(text, buf.freeze()).map(Some);
                }
                self.partial = Some((text, buf));
                Ok(None)
            }
        }
    }
}

impl Stream for RawSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match wsframe::parse(&mut this.read, this.max_message) {
                Ok(Some(frame)) => match this.message(frame) {
                    Ok(Some(m)) => return Poll::Ready(Some(Ok(m))),
                    Ok(None) => continue,
                    Err(invalid) => return Poll::Ready(Some(Err(this.fail(invalid)))),
                },
                Ok(None) => {}
                Err(invalid) => return Poll::Ready(Some(Err(this.fail(invalid)))),
            }
            if this.read.capacity() - this.read.len() < READ_CHUNK / 4 {
                this.read.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.stream), cx, &mut this.read) {
                Poll::Pending => {
                    this.unread = false;
                    // Nothing pending: a waiting socket keeps no buffer.
                    if this.read.is_empty() && this.read.capacity() > READ_CHUNK {
                        this.read = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(axum::Error::new(e)))),
            }
        }
    }
}

impl Sink<Message> for RawSocket {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, m: Message) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let (opcode, payload) = match m {
            Message::Text(t) => (wsframe::TEXT, Bytes::from(t)),
            Message::Binary(b) => (wsframe::BINARY, b),
            Message::Ping(b) => (wsframe::PING, b),
            Message::Pong(b) => (wsframe::PONG, b),
            Message::Close(close) => {
                let frame = match close {
                    Some(c) => wsframe::close_frame(c.code, c.reason.as_str()),
                    None => Bytes::from_static(&[0x80 | wsframe::CLOSE, 0]),
                };
                this.out.push_back(frame);
                return Ok(());
            }
        };
        this.queue(opcode, &payload);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_write_out(cx).map_err(axum::Error::new)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_write_out(cx)).map_err(axum::Error::new)?;
        Pin::new(&mut this.stream)
            .poll_shutdown(cx)
            .map_err(axum::Error::new)
    }
}

impl Wire for RawSocket {
    fn can_park(&mut self) -> bool {
        if !(self.read.is_empty()
            && self.partial.is_none()
            && self.out.is_empty()
            && self.flusher.as_ref().is_some_and(|f| f.available()))
        {
            return false;
        }
        if self.unread {
            // What the client sent is read before the socket parks: the
            // watcher would hand it straight back otherwise. Read from
            // the socket itself: a socket just taken back from parking is
            // new to tokio, which has not yet seen it readable.
            use std::io::Read as _;
            let mut chunk = [0u8; 512];
            match (&*socket2::SockRef::from(&self.stream)).read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.unread = false,
                Ok(n) if n > 0 => {
                    self.read.extend_from_slice(&chunk[..n]);
                    return false;
                }
                // Closed or failed: the task reads that too.
                _ => return false,
            }
        }
        true
    }

    fn park(self, idle: Idle) {
        if let Some(flusher) = &self.flusher {
            flusher.park_socket(self.stream, idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // The example of RFC 6455, section 1.3.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        assert_eq!(accept_key(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        h.insert(header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
        assert_eq!(accept_key(&h).unwrap_err().status, StatusCode::BAD_REQUEST);
        h.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        assert_eq!(accept_key(&h).unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
