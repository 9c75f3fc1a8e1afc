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
use std::net::{IpAddr, SocketAddr};

use super::dial::{io_error, tcp_connect};

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
    /// Subscribers: indices past them (`--churn`) open their own connection.
    subscribers: usize,
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
            subscribers,
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
    pub async fn open(
        &self,
        addr: SocketAddr,
        sources: &[IpAddr],
        index: usize,
    ) -> Result<RecvStream, String> {
        let group = index / self.per_connection;
        let shared = self
            .connections
            .get(group)
            .filter(|_| index < self.subscribers);
        let send = match shared {
            Some(cell) => cell
                .get_or_init(|| connect(addr, sources, group, self.per_connection))
                .await
                .clone()?,
            None => connect(addr, sources, group, 1).await?,
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
async fn connect(
    addr: SocketAddr,
    sources: &[IpAddr],
    group: usize,
    streams: usize,
) -> Result<SendRequest<Bytes>, String> {
    let tcp = tcp_connect(addr, sources, group, false).await?;
    // Every stream of the connection may hold a full window unread (a
    // slow one never releases it): the connection's window covers them
    // all, so one stalled stream cannot stop the others.
    let connection_window = (u64::from(STREAM_WINDOW) * (streams as u64 + 1)).min(MAX_WINDOW);
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(connection_window as u32)
        // h2 closes a connection (`ENHANCE_YOUR_CALM`) once its unread
        // DATA frames under 256 bytes add up past this budget of framing
        // overhead (by default 25,600: about 240 event frames). This
        // client lets every stream hold a window unread, so the budget
        // covers that much: a generator that falls behind a fast hub
        // counts the updates it reads late, rather than cutting its own
        // connections.
        .data_frame_budget(connection_window as usize * 2)
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
        Some(r) if e.is_go_away() && e.is_remote() => format!("HTTP/2 GOAWAY from the hub ({r:?})"),
        Some(r) if e.is_go_away() => format!("HTTP/2 GOAWAY sent by this client's h2 ({r:?})"),
        Some(r) if e.is_reset() => format!("HTTP/2 stream reset ({r:?})"),
        Some(r) => format!("HTTP/2 error ({r:?})"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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

    /// An h2c server answering each stream by its topic: `ok` with one
    /// event, `reset` with RST_STREAM, anything else 404. Returns its
    /// address and the number of connections it accepted.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let query = request.uri().query().unwrap_or_default().to_owned();
                        if query.ends_with("topic=reset") {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let flood = query.ends_with("topic=flood");
                        let status = if query.ends_with("topic=ok") || flood {
                            200
                        } else {
                            404
                        };
                        let response = http::Response::builder().status(status).body(()).unwrap();
                        let mut body = respond.send_response(response, false).unwrap();
                        let _ = body.send_data(Bytes::from_static(b"data: hello\n\n"), false);
                        if flood {
                            // Queued; sent as flow control allows.
                            let _ = body.send_data(Bytes::from(vec![b':'; FLOOD]), false);
                        }
                        // Keep the stream open.
                        std::mem::forget(body);
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// Bytes a `flood` stream sends after its event: several windows.
    const FLOOD: usize = 4 * STREAM_WINDOW as usize;

    fn target_at(addr: SocketAddr) -> Target {
        Target {
            addr,
            host: addr.to_string(),
            path: "/.well-known/mercure".into(),
            query: None,
        }
    }

    #[tokio::test]
    async fn streams_open_on_shared_connections_and_report_failures() {
        let (addr, accepted) = server().await;
        let t = target_at(addr);
        let ok = vec![t.subscribe_target(["ok"])];
        // Five streams, two per connection: three connections.
        let pool = Pool::new(&t, &ok, None, 5, 2).unwrap();
        let mut bodies = Vec::new();
        for index in 0..5 {
            bodies.push(pool.open(t.addr, &[], index).await.unwrap());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        for body in &mut bodies {
            let data = body.data().await.unwrap().unwrap();
            assert_eq!(&data[..], b"data: hello\n\n");
        }
        // Past the subscribers (--churn): a connection of its own.
        let _churn = pool.open(t.addr, &[], 5).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 4);

        let reset = vec![t.subscribe_target(["reset"])];
        let pool = Pool::new(&t, &reset, None, 1, 1).unwrap();
        let e = pool.open(t.addr, &[], 0).await.unwrap_err();
        assert_eq!(e, "HTTP/2 stream reset (REFUSED_STREAM)");

        let missing = vec![t.subscribe_target(["missing"])];
        let pool = Pool::new(&t, &missing, None, 1, 1).unwrap();
        assert_eq!(pool.open(t.addr, &[], 0).await.unwrap_err(), "HTTP 404");

        // Nothing listens: every stream of the connection fails alike.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let t = target_at(closed.local_addr().unwrap());
        drop(closed);
        let pool = Pool::new(&t, &ok, None, 2, 2).unwrap();
        assert_eq!(
            pool.open(t.addr, &[], 0).await.unwrap_err(),
            "connection refused"
        );
        assert_eq!(
            pool.open(t.addr, &[], 1).await.unwrap_err(),
            "connection refused"
        );
    }

    #[tokio::test]
    async fn a_stream_never_read_does_not_stop_its_neighbours() {
        let (addr, _) = server().await;
        let t = target_at(addr);
        let flood = vec![t.subscribe_target(["flood"])];
        let pool = Pool::new(&t, &flood, None, 2, 2).unwrap();
        // Stream 0 is never read (--slow): it holds a full window.
        let _stalled = pool.open(t.addr, &[], 0).await.unwrap();
        let mut body = pool.open(t.addr, &[], 1).await.unwrap();
        let mut read = 0;
        let all = b"data: hello\n\n".len() + FLOOD;
        let reading = async {
            while read < all {
                let data = body.data().await.unwrap().unwrap();
                read += data.len();
                let _ = body.flow_control().release_capacity(data.len());
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), reading)
            .await
            .expect("the read stream got all its data");
        assert_eq!(read, all);
    }
}
