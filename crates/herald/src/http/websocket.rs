//! WebSocket on the hub's URL: `GET /.well-known/mercure` with
//! `Upgrade: websocket` opens a socket that carries the same topics as
//! the event streams, with the same tokens, limits and resume, for the
//! features that truly are bidirectional.
//!
//! The socket is served by axum's upgrade inside the router, so it works
//! wherever the router is mounted (herald's own server over HTTP/1.1, with
//! or without TLS, or an embedder's axum app).
//!
//! # Messages
//!
//! Every message is one JSON object with an `op`; the README documents
//! them ("Transports: WebSocket"). A client sends `subscribe`,
//! `unsubscribe` and `publish`; the hub sends `subscribed`,
//! `unsubscribed`, `update`, `published` and `error`. Selectors given in
//! the URL (`topic`, `match*`) open a subscription named `default` as the
//! socket opens.
//!
//! An update whose data is a base64 `data:` URL (what a binary frame
//! publishes) travels as a binary frame: its JSON head, a newline, then
//! the raw bytes. Event-stream subscribers get the `data:` URL itself.
//!
//! # Liveness and limits
//!
//! - The hub pings every `heartbeat` and closes a socket that has sent
//!   nothing (a pong included) for two of them.
//! - Each subscription is an ordinary subscriber of the hub, with the same
//!   bounded queue: a socket too slow to take its updates is closed with
//!   [`CLOSE_TOO_SLOW`]; it reconnects and resumes.
//! - The socket closes with [`CLOSE_TOKEN_EXPIRED`] when its token
//!   expires, and with `1001` when the hub shuts down or a subscription
//!   ends (its stream lifetime, or lost history): reconnect and resume.
//! - A socket takes one place among the hub's streams (`max_connections`,
//!   `max_streams_per_ip`); its subscriptions count against the per-token
//!   limits like streams; it holds at most [`MAX_SUBSCRIPTIONS`].
//! - A page from another site is refused: the `Origin` must be the hub's
//!   own or one of `cors_origins`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use herald_protocol::Update;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::ConnContext;
use super::error::HttpError;
use crate::auth::{self, AuthError, Grants, Role, TokenSource};
use crate::engine::{EngineError, Stored};
use crate::hub::admission::StreamPermit;
use crate::hub::feed::{FeedSink, Revision, SubscribeError, SubscribeRequest};
use crate::hub::{Hub, PublishError};

/// Close code of a socket whose queue overflowed: it did not read its
/// updates fast enough. Reconnect and resume from the last id.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code of a socket whose token expired.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code of a socket that answered no ping for two heartbeats.
pub const CLOSE_NO_PONG: u16 = 4002;
/// Most subscriptions one socket holds at once.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// The name of the subscription opened by selectors in the URL.
pub const URL_SUBSCRIPTION: &str = "default";

/// Longest subscription name or publish `ref`, in bytes.
const MAX_NAME: usize = 128;
/// Bytes of messages gathered before a write to the socket: a burst of
/// updates goes out in a few writes, not one per update (every batch is
/// flushed at its end whatever its size).
const WRITE_BUFFER: usize = 16 * 1024;
/// Messages waiting for the socket, from all its subscriptions.
const OUT_QUEUE: usize = 64;
/// The socket's read buffer, allocated when it opens: client messages
/// are small, and an idle socket should stay small (tungstenite's default
/// is 128 KiB). A larger message takes more reads.
const READ_BUFFER: usize = 1024;

/// An update encoded for sockets: the rest of its JSON object after
/// `"sub":…,` (a binary update's head), and a binary update's bytes. Kept
/// in [`Stored`], shared by every socket that sends it.
fn encode(stored: &Stored) -> (String, Option<Bytes>) {
    {
        let u = &stored.update;
        let binary = decode_data_url(&u.data);
        let head = serde_json::json!({
            "id": u.id,
            "type": u.event_type.as_deref().unwrap_or("message"),
            "topic": u.topics.first(),
            "topics": u.topics,
            "private": u.private,
        });
        let mut head = match &binary {
            Some((media_type, _)) => {
                let mut h = head;
                h["media_type"] = serde_json::Value::from(media_type.as_str());
                h
            }
            None => {
                let mut h = head;
                h["data"] = serde_json::Value::from(u.data.as_str());
                h
            }
        }
        .to_string();
        // Everything after the opening brace: the socket writes its own.
        head.remove(0);
        (head, binary.map(|(_, bytes)| Bytes::from(bytes)))
    }
}

/// The media type and bytes of a base64 `data:` URL.
fn decode_data_url(data: &str) -> Option<(String, Vec<u8>)> {
    let rest = data.strip_prefix("data:")?;
    let (meta, payload) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    if media_type.contains([',', '"', '\\']) {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()?;
    let media_type = if media_type.is_empty() {
        "application/octet-stream"
    } else {
        media_type
    };
    Some((media_type.to_owned(), bytes))
}

/// The `data:` URL holding a binary payload.
fn data_url(media_type: &str, bytes: &[u8]) -> String {
    format!(
        "data:{media_type};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// `GET /.well-known/mercure`: an event stream, or with `Upgrade:
/// websocket` a socket.
pub(crate) async fn subscribe(
    State(hub): State<Hub>,
    conn: Option<Extension<ConnContext>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    match ws {
        Ok(ws) => {
            let conn = conn.map(|Extension(c)| c);
            upgrade(hub, ws, conn, query.as_deref(), &headers).await
        }
        Err(e) if wants_websocket(&headers) => Err(HttpError::new(e.status(), e.body_text())),
        Err(_) => super::events::subscribe(State(hub), conn, RawQuery(query), headers).await,
    }
}

/// An `Upgrade: websocket` request, valid or not.
fn wants_websocket(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.eq_ignore_ascii_case("websocket"))
    })
}

/// What the socket learned at its upgrade.
struct Opening {
    hub: Hub,
    subscriber: Option<Grants>,
    publisher: Option<Grants>,
    /// The per-token limits' key of its token.
    token: Option<u64>,
    ip: Option<std::net::IpAddr>,
    peer: Option<std::net::SocketAddr>,
    /// The subscription the URL asked for.
    first: Option<Subscribe>,
    permit: StreamPermit,
}

/// `GET /.well-known/mercure` with `Upgrade: websocket`: checks the
/// origin, the token and the URL's selectors, then upgrades.
async fn upgrade(
    hub: Hub,
    ws: WebSocketUpgrade,
    conn: Option<ConnContext>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    check_origin(&hub, headers)?;
    let pairs = herald_protocol::form::parse(query.unwrap_or("").as_bytes())
        .map_err(|e| HttpError::bad_request(format!("malformed query string: {e}")))?;
    let query_token = pairs
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone());
    let has_selectors = pairs
        .iter()
        .any(|(k, _)| k == "topic" || k.starts_with("match"));
    let first = if has_selectors {
        let req = super::events::parse_request(&hub, headers, pairs)?;
        Some(Subscribe {
            name: URL_SUBSCRIPTION.to_owned(),
            revision: req.revision,
            selectors: req.selectors,
            matchers: req.matchers,
            last_event_id: req.last_event_id,
        })
    } else {
        None
    };
    let ip = conn.as_ref().map(|c| hub.client_ip(c.peer.ip(), headers));
    let subscriber = match hub.authenticate(headers, query_token.as_deref(), Role::Subscriber) {
        Ok(Some((g, _))) => Some(g),
        Ok(None) if hub.config().anonymous && hub.callback().is_none() => None,
        Ok(None) if hub.callback().is_some() => {
            let topics: Vec<String> = first
                .iter()
                .flat_map(|f| f.selectors.iter().map(|s| s.as_str().to_owned()))
                .collect();
            super::events::ask_callback(&hub, headers, "subscribe", &topics, ip).await?
        }
        Ok(None) => {
            let e = AuthError::Missing;
            hub.metrics().auth_failed("subscribe", &e);
            return Err(HttpError::auth(&hub, &e));
        }
        Err(e) => {
            hub.metrics().auth_failed("subscribe", &e);
            return Err(HttpError::auth(&hub, &e));
        }
    };
    // The same token may publish, when it says so; a cookie only from an
    // allowed publish origin, as over HTTP.
    let publisher = match hub.authenticate(headers, query_token.as_deref(), Role::Publisher) {
        Ok(Some((g, TokenSource::Cookie))) => {
            auth::check_publish_origin(headers, &hub.config().publish_origins)
                .ok()
                .map(|()| g)
        }
        Ok(Some((g, _))) => Some(g),
        _ => None,
    }
    .filter(Grants::may_publish_somewhere);
    let token = subscriber
        .as_ref()
        .filter(|_| hub.limits_tokens())
        .and_then(|_| hub.token_key(headers, query_token.as_deref()));
    let permit = hub.admit_stream(ip).map_err(|r| HttpError::refused(&r))?;
    hub.metrics().connection_accepted("websocket");
    let opening = Opening {
        subscriber,
        publisher,
        token,
        ip,
        peer: conn.map(|c| c.peer),
        first,
        permit,
        hub: hub.clone(),
    };
    let max_message = hub.config().max_body_bytes.saturating_add(64 * 1024);
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| run(socket, opening)))
}

/// A browser page may open a socket from the hub's own origin, or from
/// one of `cors_origins`; clients that send no `Origin` are not pages.
fn check_origin(hub: &Hub, headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let allowed = &hub.config().cors_origins;
    if allowed.iter().any(|a| a == "*" || a == origin) {
        return Ok(());
    }
    let own = |host: &str| {
        origin
            .split_once("://")
            .is_some_and(|(_, h)| h.eq_ignore_ascii_case(host))
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let public = hub
        .config()
        .public_url
        .host_str()
        .map(|h| match hub.config().public_url.port() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_owned(),
        });
    if host.is_some_and(own) || public.as_deref().is_some_and(own) {
        return Ok(());
    }
    Err(HttpError::new(
        StatusCode::FORBIDDEN,
        format!("origin {origin:?} may not open a WebSocket here (cors_origins)"),
    ))
}

/// A subscription to open.
struct Subscribe {
    name: String,
    revision: Revision,
    selectors: Vec<herald_protocol::Selector>,
    matchers: Vec<herald_protocol::matcher::Matcher>,
    last_event_id: Option<String>,
}

/// What a subscription's task hands the socket.
enum Out {
    /// A message of subscription `key` (dropped if it was unsubscribed).
    Message(u64, Message),
    /// The updates subscription `key` found queued at once, in order.
    Updates(u64, Vec<Message>),
    /// Subscription `key` could not open.
    Failed(u64),
    /// Subscription `key` ended by itself.
    Ended(u64),
}

/// A client's message.
#[derive(serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    Subscribe {
        sub: String,
        topics: Vec<String>,
        #[serde(default)]
        last_event_id: Option<String>,
    },
    Unsubscribe {
        sub: String,
    },
    Publish(PublishRequest),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    topics: Vec<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    retry: Option<u64>,
    #[serde(default)]
    private: bool,
    /// A binary frame's media type (its data is the frame's bytes).
    #[serde(default)]
    media_type: Option<String>,
}

/// The subscriptions of a socket, by name.
struct Subscriptions {
    by_name: HashMap<String, (u64, tokio::task::JoinHandle<()>)>,
    next_key: u64,
}

impl Subscriptions {
    fn is_live(&self, key: u64) -> bool {
        self.by_name.values().any(|(k, _)| *k == key)
    }

    fn remove_key(&mut self, key: u64) -> Option<String> {
        let name = self
            .by_name
            .iter()
            .find(|(_, (k, _))| *k == key)
            .map(|(n, _)| n.clone())?;
        self.by_name.remove(&name);
        Some(name)
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for (_, task) in self.by_name.values() {
            task.abort();
        }
    }
}

/// Why a socket closes.
struct Closing(u16, &'static str);

async fn run(mut socket: WebSocket, mut opening: Opening) {
    let first = opening.first.take();
    let hub = opening.hub.clone();
    let _permit = &opening.permit;
    let heartbeat = hub.config().heartbeat;
    let stop = hub.shutdown_token().clone();
    let overflow = CancellationToken::new();
    let expires = opening
        .subscriber
        .as_ref()
        .and_then(Grants::exp)
        .and_then(crate::hub::feed::deadline);
    let (tx, mut rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let mut subs = Subscriptions {
        by_name: HashMap::new(),
        next_key: 0,
    };
    let ctx = Context {
        opening: &opening,
        overflow: &overflow,
        tx: &tx,
    };
    if let Some(first) = first {
        ctx.subscribe(&mut subs, first);
    }
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let expiry = async {
        match expires {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let closing = loop {
        let step = tokio::select! {
            biased;
            () = stop.cancelled() => break Closing(1001, "the hub is shutting down"),
            () = overflow.cancelled() => break Closing(CLOSE_TOO_SLOW, "too slow: the socket's queue overflowed; reconnect and resume"),
            () = &mut expiry => break Closing(CLOSE_TOKEN_EXPIRED, "the token expired"),
            out = rx.recv() => {
                let Some(out) = out else { break Closing(1011, "internal error") };
                Step::Out(out)
            }
            msg = socket.recv() => match msg {
                Some(Ok(m)) => Step::In(m),
                // Gone, or a protocol error tungstenite already answered.
                _ => return,
            },
            _ = ping.tick() => Step::Ping,
        };
        let mut batch = Vec::new();
        match step {
            Step::Out(out) => {
                let mut out = Some(out);
                // Everything already waiting goes out in one flush.
                while let Some(o) = out.take().or_else(|| rx.try_recv().ok()) {
                    match o {
                        Out::Message(key, m) if subs.is_live(key) => batch.push(m),
                        Out::Updates(key, ms) if subs.is_live(key) => batch.extend(ms),
                        Out::Message(..) | Out::Updates(..) => {}
                        Out::Failed(key) => {
                            subs.remove_key(key);
                        }
                        Out::Ended(key) => {
                            // An overflow, the shutdown or the token's
                            // expiry ends every subscription: the socket
                            // closes for that reason, just below.
                            let explained = overflow.is_cancelled()
                                || stop.is_cancelled()
                                || expires.is_some_and(|at| {
                                    at <= Instant::now() + Duration::from_millis(100)
                                });
                            if subs.remove_key(key).is_some() && !explained {
                                batch.push(close_message(
                                    1001,
                                    "a subscription ended: reconnect and resume",
                                ));
                                break;
                            }
                        }
                    }
                    if batch.len() >= OUT_QUEUE {
                        break;
                    }
                }
            }
            Step::In(m) => {
                last_heard = Instant::now();
                match m {
                    Message::Text(text) => {
                        batch.extend(ctx.handle(&mut subs, text.as_bytes(), None).await);
                    }
                    Message::Binary(bytes) => {
                        let (head, body) = match bytes.iter().position(|b| *b == b'\n') {
                            Some(i) => (&bytes[..i], Some(bytes.slice(i + 1..))),
                            None => (&bytes[..], None),
                        };
                        match body {
                            Some(body) => {
                                batch.extend(ctx.handle(&mut subs, head, Some(body)).await)
                            }
                            None => batch.push(error(
                                None,
                                None,
                                StatusCode::BAD_REQUEST,
                                "a binary frame is a JSON head, a newline, then the bytes",
                            )),
                        }
                    }
                    Message::Close(_) => {
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            Step::Ping => {
                if last_heard.elapsed() > heartbeat * 2 {
                    break Closing(
                        CLOSE_NO_PONG,
                        "no pong: the socket answered no ping for two heartbeats",
                    );
                }
                batch.push(Message::Ping(Bytes::new()));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let closes = batch.iter().any(|m| matches!(m, Message::Close(_)));
        if !write(&mut socket, batch, &overflow, &stop).await {
            if overflow.is_cancelled() {
                break Closing(
                    CLOSE_TOO_SLOW,
                    "too slow: the socket's queue overflowed; reconnect and resume",
                );
            }
            return;
        }
        if closes {
            return;
        }
    };
    drop(subs);
    let Closing(code, reason) = closing;
    tracing::debug!(peer = ?opening.peer, code, "closing WebSocket: {reason}");
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(close_message(code, reason)),
    )
    .await;
}

enum Step {
    Out(Out),
    In(Message),
    Ping,
}

fn close_message(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// Writes `batch` and flushes, unless the socket's queue overflows or the
/// hub shuts down first (a client that stopped reading never lets a
/// write finish). `false` when the socket is done.
async fn write(
    socket: &mut WebSocket,
    batch: Vec<Message>,
    overflow: &CancellationToken,
    stop: &CancellationToken,
) -> bool {
    use futures_util::SinkExt;
    let send = async {
        for m in batch {
            socket.feed(m).await?;
        }
        socket.flush().await
    };
    tokio::select! {
        r = send => r.is_ok(),
        () = overflow.cancelled() => false,
        () = stop.cancelled() => false,
    }
}

/// What a socket's messages act with.
struct Context<'a> {
    opening: &'a Opening,
    overflow: &'a CancellationToken,
    tx: &'a mpsc::Sender<Out>,
}

impl Context<'_> {
    /// Handles one client message; `body` holds a binary frame's bytes.
    async fn handle(
        &self,
        subs: &mut Subscriptions,
        head: &[u8],
        body: Option<Bytes>,
    ) -> Option<Message> {
        let req: Request = match serde_json::from_slice(head) {
            Ok(r) => r,
            Err(e) => {
                return Some(error(
                    None,
                    None,
                    StatusCode::BAD_REQUEST,
                    &format!("malformed message: {e}"),
                ))
            }
        };
        match req {
            Request::Subscribe {
                sub,
                topics,
                last_event_id,
            } => self.subscribe_request(subs, sub, topics, last_event_id),
            Request::Unsubscribe { sub } => match subs.by_name.remove(&sub) {
                Some((_, task)) => {
                    task.abort();
                    Some(json(&serde_json::json!({"op": "unsubscribed", "sub": sub})))
                }
                None => Some(error(
                    Some(&sub),
                    None,
                    StatusCode::NOT_FOUND,
                    "no such subscription on this socket",
                )),
            },
            Request::Publish(p) => Some(self.publish(p, body).await),
        }
    }

    fn subscribe_request(
        &self,
        subs: &mut Subscriptions,
        name: String,
        topics: Vec<String>,
        last_event_id: Option<String>,
    ) -> Option<Message> {
        let hub = &self.opening.hub;
        let refuse = |status, reason: &str| Some(error(Some(&name), None, status, reason));
        if name.is_empty() || name.len() > MAX_NAME {
            return refuse(
                StatusCode::BAD_REQUEST,
                "sub must name the subscription in 1 to 128 bytes",
            );
        }
        if subs.by_name.contains_key(&name) {
            return refuse(
                StatusCode::CONFLICT,
                "a subscription of this name is open on this socket",
            );
        }
        if subs.by_name.len() >= MAX_SUBSCRIPTIONS {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "this socket holds the most subscriptions it may (64)",
            );
        }
        let max = hub.config().max_selectors;
        if topics.is_empty() || topics.len() > max {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("topics must hold 1 to {max} selectors"),
            );
        }
        let mut selectors: Vec<herald_protocol::Selector> = Vec::with_capacity(topics.len());
        for t in &topics {
            match herald_protocol::Selector::parse(t) {
                Ok(s) => {
                    if !selectors.iter().any(|x| x.as_str() == s.as_str()) {
                        selectors.push(s);
                    }
                }
                Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("topic {t:?}: {e}")),
            }
        }
        let last_event_id = last_event_id.filter(|id| !id.is_empty());
        if last_event_id
            .as_ref()
            .is_some_and(|id| id.len() > 1024 || id.chars().any(char::is_control))
        {
            return refuse(StatusCode::BAD_REQUEST, "malformed last_event_id");
        }
        self.subscribe(
            subs,
            Subscribe {
                name,
                revision: Revision::Draft07,
                selectors,
                matchers: Vec::new(),
                last_event_id,
            },
        );
        None
    }

    /// Opens a subscription in a task of its own: it acknowledges with
    /// `subscribed` (or an `error`), then forwards its updates in order.
    fn subscribe(&self, subs: &mut Subscriptions, req: Subscribe) {
        let key = subs.next_key;
        subs.next_key += 1;
        let o = self.opening;
        let hub = o.hub.clone();
        let tx = self.tx.clone();
        let request = SubscribeRequest {
            revision: req.revision,
            selectors: req.selectors,
            matchers: req.matchers,
            grants: o.subscriber.clone(),
            last_event_id: req.last_event_id,
            gap_event: false,
            peer: o.peer,
            cancel: Some(self.overflow.clone()),
            token: o.token,
        };
        let name = req.name.clone();
        let task = tokio::spawn(async move {
            // Boxed: opening takes far more room than streaming, and the
            // task would keep that room for as long as it lives.
            let (mut feed, resumed_from) = match Box::pin(hub.subscribe(request)).await {
                Ok(x) => x,
                Err(e) => {
                    let e = match e {
                        SubscribeError::Refused(r) => HttpError::refused(&r),
                        e => HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                    };
                    let m = error(Some(&name), None, e.status, &e.reason);
                    let _ = tx.send(Out::Message(key, m)).await;
                    let _ = tx.send(Out::Failed(key)).await;
                    return;
                }
            };
            let ack = json(&serde_json::json!({
                "op": "subscribed",
                "sub": name,
                "resumed_from": resumed_from,
            }));
            if tx.send(Out::Message(key, ack)).await.is_err() {
                return;
            }
            let prefix = format!(
                "{{\"op\":\"update\",\"sub\":{},",
                serde_json::Value::from(name.as_str())
            );
            let mut updates = Updates(Vec::new());
            loop {
                let more = tokio::select! {
                    more = feed.next(&mut updates) => more,
                    () = tx.closed() => return,
                };
                // One hand-over per batch, not per update.
                let batch: Vec<Message> =
                    updates.0.drain(..).map(|s| message(&prefix, &s)).collect();
                if !batch.is_empty() && tx.send(Out::Updates(key, batch)).await.is_err() {
                    return;
                }
                if !more {
                    let _ = tx.send(Out::Ended(key)).await;
                    return;
                }
            }
        });
        subs.by_name.insert(req.name, (key, task));
    }

    async fn publish(&self, p: PublishRequest, body: Option<Bytes>) -> Message {
        let hub = &self.opening.hub;
        let reference = p.reference.clone();
        let fail =
            |status: StatusCode, reason: &str| error(None, reference.as_deref(), status, reason);
        if reference.as_ref().is_some_and(|r| r.len() > MAX_NAME) {
            return fail(StatusCode::BAD_REQUEST, "ref longer than 128 bytes");
        }
        let data = match (body, p.data, &p.media_type) {
            (Some(bytes), None, media_type) => {
                let media_type = media_type.as_deref().unwrap_or("application/octet-stream");
                if media_type.is_empty()
                    || media_type.len() > 255
                    || media_type
                        .chars()
                        .any(|c| c.is_control() || matches!(c, ',' | ';' | '"' | '\\' | ' '))
                {
                    return fail(StatusCode::BAD_REQUEST, "malformed media_type");
                }
                data_url(media_type, &bytes)
            }
            (Some(_), Some(_), _) => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "a binary frame's data is its bytes: no data field",
                )
            }
            (None, _, Some(_)) => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "media_type goes with a binary frame",
                )
            }
            (None, data, None) => data.unwrap_or_default(),
        };
        let Some(grants) = &self.opening.publisher else {
            let e = AuthError::NoPublishClaim;
            hub.metrics().auth_failed("publish", &e);
            let e = HttpError::auth(hub, &e);
            return fail(e.status, &e.reason);
        };
        if p.topics.is_empty() {
            return fail(StatusCode::BAD_REQUEST, "missing topic");
        }
        let update = Update {
            id: p.id.unwrap_or_default(),
            topics: p.topics,
            data,
            event_type: p.event_type.filter(|t| !t.is_empty()),
            retry: p.retry,
            private: p.private,
        };
        if let Err(e) = super::publish::check_rules(hub, &update, grants.is_access_token()) {
            return fail(e.status, &e.reason);
        }
        if let Err(e) = super::publish::check_topics(grants, &update) {
            hub.metrics().auth_failed("publish", &e);
            let e = HttpError::auth(hub, &e);
            return fail(e.status, &e.reason);
        }
        if let Err(r) = hub.admit_publish(self.opening.ip, self.opening.token, 1) {
            let e = HttpError::refused(&r);
            return fail(e.status, &e.reason);
        }
        match hub.publish(vec![update]).await {
            Ok(stored) => json(&serde_json::json!({
                "op": "published",
                "ref": reference,
                "id": stored.first().map(|s| s.update.id.as_str()),
            })),
            Err(PublishError::Invalid(e) | PublishError::InvalidAt(_, e)) => {
                fail(StatusCode::BAD_REQUEST, &e.to_string())
            }
            Err(PublishError::Engine(e @ EngineError::DuplicateId(_))) => {
                fail(StatusCode::CONFLICT, &e.to_string())
            }
            Err(PublishError::Engine(e)) => fail(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }
}

/// The updates of a feed, for a socket (the socket sends its own
/// heartbeats, and `subscribed` says where a resume started).
struct Updates(Vec<Arc<Stored>>);

impl FeedSink for Updates {
    fn open(&mut self, _retry: Option<u64>) {}

    fn gap(&mut self, _asked: &str) {}

    fn update(&mut self, stored: &Arc<Stored>) {
        self.0.push(stored.clone());
    }

    fn heartbeat(&mut self) {}
}

/// The `update` message of `stored` for the subscription whose message
/// prefix is `prefix`.
fn message(prefix: &str, stored: &Stored) -> Message {
    match stored.ws.get_or_init(|| encode(stored)) {
        (rest, None) => {
            let mut text = String::with_capacity(prefix.len() + rest.len());
            text.push_str(prefix);
            text.push_str(rest);
            Message::Text(Utf8Bytes::from(text))
        }
        (rest, Some(bytes)) => {
            let mut b = BytesMut::with_capacity(prefix.len() + rest.len() + 1 + bytes.len());
            b.put_slice(prefix.as_bytes());
            b.put_slice(rest.as_bytes());
            b.put_u8(b'\n');
            b.put_slice(bytes);
            Message::Binary(b.freeze())
        }
    }
}

fn json(v: &serde_json::Value) -> Message {
    Message::Text(Utf8Bytes::from(v.to_string()))
}

/// An `error` message, about subscription `sub` or publish `reference`.
fn error(sub: Option<&str>, reference: Option<&str>, status: StatusCode, reason: &str) -> Message {
    let mut v = serde_json::json!({
        "op": "error",
        "status": status.as_u16(),
        "reason": reason,
    });
    if let Some(s) = sub {
        v["sub"] = serde_json::Value::from(s);
    }
    if let Some(r) = reference {
        v["ref"] = serde_json::Value::from(r);
    }
    json(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_decode_to_their_bytes() {
        let url = data_url("image/png", &[0, 159, 146, 150]);
        assert_eq!(url, "data:image/png;base64,AJ+Slg==");
        assert_eq!(
            decode_data_url(&url),
            Some(("image/png".to_owned(), vec![0, 159, 146, 150]))
        );
        assert_eq!(
            decode_data_url("data:;base64,AA=="),
            Some(("application/octet-stream".to_owned(), vec![0]))
        );
        // Not base64, or not a data URL: text.
        assert_eq!(decode_data_url("data:text/plain,hello"), None);
        assert_eq!(decode_data_url("data:x;base64,***"), None);
        assert_eq!(decode_data_url("hello"), None);
    }

    #[test]
    fn an_update_message_is_one_json_object() {
        let stored = Stored::new(
            7,
            Update {
                id: "a\"b".into(),
                topics: vec!["https://e.com/1".into(), "https://e.com/2".into()],
                data: "x\ny".into(),
                event_type: None,
                retry: None,
                private: true,
            },
        );
        let prefix = "{\"op\":\"update\",\"sub\":\"s\\\"1\",";
        let Message::Text(t) = message(prefix, &stored) else {
            panic!("a text message")
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "op": "update", "sub": "s\"1", "id": "a\"b", "type": "message",
                "topic": "https://e.com/1", "topics": ["https://e.com/1", "https://e.com/2"],
                "data": "x\ny", "private": true,
            })
        );
    }
}
