//! The first request head of a connection, read by the server itself:
//! a subscription (`GET /.well-known/mercure` over HTTP/1.1) is served on
//! the fast path, anything else goes to hyper with the bytes already read.

use std::io;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::direct::error_response;
use crate::http::error::HttpError;
use crate::http::policy::MERCURE_PATH;

/// Largest subscription request head read before giving up (`431`).
/// Other requests go to hyper as soon as their request line shows what
/// they are, under hyper's own limits.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a subscription request answered here; more go to hyper.
const MAX_HEADERS: usize = 64;

/// What the first request head asks for.
#[derive(Debug)]
pub enum Head {
    /// An event stream this module serves.
    Subscribe {
        headers: HeaderMap,
        query: Option<String>,
    },
    /// A WebSocket opening (`Upgrade: websocket`), served below hyper too
    /// ([`super::socket`]).
    WebSocket {
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
            let e = HttpError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            );
            let _ = stream
                .write_all(&error_response(&e, &HeaderMap::new()))
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
    let mut websocket = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            // Another protocol (h2c's upgrade): hyper's.
            if !h.value.eq_ignore_ascii_case(b"websocket") {
                return Head::Other;
            }
            websocket = true;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Head::Other;
        };
        map.append(name, value);
    }
    if websocket {
        return Head::WebSocket {
            headers: map,
            query,
        };
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
        let ws = b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n";
        match classify(ws) {
            Head::WebSocket { headers, query } => {
                assert_eq!(query.as_deref(), Some("topic=a"));
                assert_eq!(headers["connection"], "Upgrade");
            }
            h => panic!("{h:?}"),
        }
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
            b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"GET /.well-known/mercure?topic=a HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
        ] {
            assert!(matches!(classify(other), Head::Other), "{other:?}");
        }
    }
}
