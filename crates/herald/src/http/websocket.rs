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

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::{BoxFuture, FutureExt as _};
use futures_util::stream::{SelectAll, Stream, StreamExt as _};
use futures_util::SinkExt as _;
use herald_protocol::Update;
use tokio_util::sync::CancellationToken;

use super::conn::ConnContext;
use super::error::HttpError;
use super::wsframe;
use crate::auth::{self, AuthError, Grants, Role, TokenSource};
use crate::engine::{SocketEncoding, Stored};
use crate::hub::admission::StreamPermit;
use crate::hub::feed::{Feed, FeedSink, Revision, SubscribeError, SubscribeRequest};
use crate::hub::Hub;

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
/// Most messages gathered for one write.
const MAX_BATCH: usize = 256;
/// Most bytes of messages gathered for one write.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// The socket's read buffer, allocated when it opens: client messages
/// are small, and an idle socket should stay small (tungstenite's default
/// is 128 KiB). A larger message takes more reads.
const READ_BUFFER: usize = 1024;

/// The beginning of every `update` message of the subscription the URL
/// opens.
const URL_PREFIX: &str = "{\"op\":\"update\",\"sub\":\"default\",";

/// The beginning of every `update` message of subscription `name`:
/// `{"op":"update","sub":NAME,`.
fn update_prefix(name: &str) -> String {
    format!(
        "{{\"op\":\"update\",\"sub\":{},",
        serde_json::Value::from(name)
    )
}

/// An update encoded for sockets, once, kept in [`Stored`] and shared by
/// every socket that sends it.
fn encode(stored: &Stored) -> SocketEncoding {
    let u = &stored.update;
    let binary = decode_data_url(&u.data);
    let mut head = serde_json::json!({
        "id": u.id,
        "type": u.event_type.as_deref().unwrap_or("message"),
        "topic": u.topics.first(),
        "topics": u.topics,
        "private": u.private,
    });
    match &binary {
        Some((media_type, _)) => head["media_type"] = serde_json::Value::from(media_type.as_str()),
        None => head["data"] = serde_json::Value::from(u.data.as_str()),
    }
    let mut rest = head.to_string();
    // Everything after the opening brace: each subscription writes its own
    // beginning.
    rest.remove(0);
    let bytes = binary.map(|(_, bytes)| bytes);
    let len = URL_PREFIX.len() + rest.len() + bytes.as_ref().map_or(0, |b| 1 + b.len());
    let opcode = if bytes.is_some() {
        wsframe::BINARY
    } else {
        wsframe::TEXT
    };
    // One buffer: the URL subscription's whole frame, of which the
    // message's rest and the binary payload are slices.
    let frame_head = wsframe::Head::new(opcode, len);
    let start = frame_head.as_bytes().len() + URL_PREFIX.len();
    let mut url_frame = BytesMut::with_capacity(frame_head.as_bytes().len() + len);
    url_frame.put_slice(frame_head.as_bytes());
    url_frame.put_slice(URL_PREFIX.as_bytes());
    url_frame.put_slice(rest.as_bytes());
    if let Some(b) = &bytes {
        url_frame.put_u8(b'\n');
        url_frame.put_slice(b);
    }
    let url_frame = url_frame.freeze();
    let end = start + rest.len();
    SocketEncoding {
        rest: url_frame.slice(start..end),
        binary: bytes.map(|_| url_frame.slice(end + 1..)),
        url_frame,
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
pub(crate) struct Opening {
    hub: Hub,
    // Boxed, like what follows: a parked socket keeps all this, and most
    // sockets have no publish rights and no subscription left to open.
    subscriber: Option<Box<Grants>>,
    publisher: Option<Box<Grants>>,
    /// The per-token limits' key of its token.
    token: Option<u64>,
    /// Its token's key for the per-token publish rate.
    publish_token: Option<u64>,
    /// No token: the application's callback authorized the URL's topics,
    /// and only those (it is not asked again per message).
    by_callback: bool,
    ip: Option<std::net::IpAddr>,
    peer: Option<std::net::SocketAddr>,
    /// The subscription the URL asked for.
    first: Option<Box<Subscribe>>,
    /// Its place among the hub's streams, for as long as it lives.
    _permit: StreamPermit,
}

/// `GET /.well-known/mercure` with `Upgrade: websocket`, through axum:
/// checks the origin, the token and the URL's selectors, then upgrades.
async fn upgrade(
    hub: Hub,
    ws: WebSocketUpgrade,
    conn: Option<ConnContext>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    let opening = open(hub, conn, query, headers).await?;
    let max_message = max_message(&opening.hub);
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| run(socket, opening)))
}

/// The largest message a client may send: a publish of `max_body_bytes`,
/// and room for its JSON.
pub(crate) fn max_message(hub: &Hub) -> usize {
    hub.config().max_body_bytes.saturating_add(64 * 1024)
}

/// Checks a socket's opening request (origin, token, the URL's
/// selectors) and takes its place among the hub's streams: what the
/// socket then runs with, or the answer to refuse it with.
pub(crate) async fn open(
    hub: Hub,
    conn: Option<ConnContext>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Opening, HttpError> {
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
            name: Name::Borrowed(URL_SUBSCRIPTION),
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
    let publish_token = publisher
        .as_ref()
        .and_then(|_| hub.token_key(headers, query_token.as_deref()));
    let by_callback =
        hub.callback().is_some() && hub.token_key(headers, query_token.as_deref()).is_none();
    let permit = hub.admit_stream(ip).map_err(|r| HttpError::refused(&r))?;
    hub.metrics().connection_accepted("websocket");
    Ok(Opening {
        subscriber: subscriber.map(Box::new),
        publisher: publisher.map(Box::new),
        token,
        publish_token,
        by_callback,
        ip,
        peer: conn.map(|c| c.peer),
        first: first.map(Box::new),
        _permit: permit,
        hub: hub.clone(),
    })
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
    name: Name,
    revision: Revision,
    selectors: Vec<herald_protocol::Selector>,
    matchers: Vec<herald_protocol::matcher::Matcher>,
    last_event_id: Option<String>,
}

/// What a subscription's stream yields to its socket.
enum Event {
    /// It opened: `subscribed`, with where its replay starts.
    Opened(Option<String>),
    /// It did not open: the `error` answer.
    Failed(HttpError),
    /// Updates it found queued at once, in order.
    Updates(Vec<Arc<Stored>>),
    /// It sent its history and waits for live updates.
    Live,
    /// It ended by itself.
    Ended,
}

/// A subscription of a socket: opening it, then its feed's updates, as a
/// stream the socket's task polls with the others (no task of its own).
/// Once live it holds its feed and nothing else, so a socket with one
/// live subscription can be parked with it (see [`Wire::park`]).
struct SubStream {
    key: u64,
    state: SubState,
    abort: Arc<Abort>,
}

/// Ends a subscription's stream from outside (`unsubscribe`): it then
/// yields nothing more, and leaves the socket's streams.
#[derive(Default)]
struct Abort {
    aborted: std::sync::atomic::AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl Abort {
    fn abort(&self) {
        self.aborted
            .store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }
}

enum SubState {
    Opening(BoxFuture<'static, Result<(Feed, Option<String>), SubscribeError>>),
    /// The history: one [`Feed::next`] at a time.
    Reading(BoxFuture<'static, (Box<Feed>, Updates, bool)>),
    /// Live: the subscriber is polled in place.
    Live(Box<Feed>),
    /// The feed ended: say so, once.
    Ending,
    Done,
}

impl SubState {
    fn reading(mut feed: Box<Feed>) -> Self {
        SubState::Reading(Box::pin(async move {
            let mut updates = Updates(Vec::new());
            let more = feed.next(&mut updates).await;
            (feed, updates, more)
        }))
    }
}

impl Stream for SubStream {
    type Item = (u64, Event);

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let key = this.key;
        this.abort.waker.register(cx.waker());
        if this
            .abort
            .aborted
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Poll::Ready(None);
        }
        loop {
            let updates = match &mut this.state {
                SubState::Opening(opening) => {
                    let opened = std::task::ready!(opening.as_mut().poll(cx));
                    return Poll::Ready(Some(match opened {
                        Ok((mut feed, from)) => {
                            // `next` returns once live with nothing queued.
                            feed.set_parking(true);
                            this.state = SubState::reading(Box::new(feed));
                            (key, Event::Opened(from))
                        }
                        Err(e) => {
                            this.state = SubState::Done;
                            let e = match e {
                                SubscribeError::Refused(r) => HttpError::refused(&r),
                                e => HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                            };
                            (key, Event::Failed(e))
                        }
                    }));
                }
                SubState::Reading(next) => {
                    let (feed, updates, more) = std::task::ready!(next.as_mut().poll(cx));
                    let live = more && feed.is_live();
                    this.state = if !more {
                        SubState::Ending
                    } else if live {
                        SubState::Live(feed)
                    } else {
                        SubState::reading(feed)
                    };
                    // Caught up: the socket may park now.
                    if live && updates.0.is_empty() {
                        return Poll::Ready(Some((key, Event::Live)));
                    }
                    updates
                }
                SubState::Live(feed) => {
                    let mut updates = Updates(Vec::new());
                    if !std::task::ready!(feed.poll_live(cx, &mut updates)) {
                        this.state = SubState::Ending;
                    }
                    updates
                }
                SubState::Ending => {
                    this.state = SubState::Done;
                    return Poll::Ready(Some((key, Event::Ended)));
                }
                SubState::Done => return Poll::Ready(None),
            };
            if !updates.0.is_empty() {
                return Poll::Ready(Some((key, Event::Updates(updates.0))));
            }
        }
    }
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

/// The subscriptions of a socket.
#[derive(Default)]
struct Subscriptions {
    open: Vec<Sub>,
    /// Their streams, polled together by the socket's task.
    streams: SelectAll<SubStream>,
    next_key: u64,
}

/// A subscription's name: the URL's (no allocation) or the client's.
type Name = std::borrow::Cow<'static, str>;

/// One open subscription.
struct Sub {
    name: Name,
    key: u64,
    /// Its `update` messages' beginning (see [`update_prefix`]).
    prefix: String,
    abort: Arc<Abort>,
}

impl Subscriptions {
    /// Adds a subscription in `state`.
    fn push(&mut self, name: Name, state: SubState) {
        let key = self.next_key;
        self.next_key += 1;
        let abort = Arc::new(Abort::default());
        self.streams.push(SubStream {
            key,
            state,
            abort: abort.clone(),
        });
        self.open.push(Sub {
            prefix: update_prefix(&name),
            name,
            key,
            abort,
        });
    }

    fn by_key(&self, key: u64) -> Option<&Sub> {
        self.open.iter().find(|s| s.key == key)
    }

    fn remove_key(&mut self, key: u64) -> Option<Sub> {
        let i = self.open.iter().position(|s| s.key == key)?;
        Some(self.open.swap_remove(i))
    }

    fn remove_name(&mut self, name: &str) -> Option<Sub> {
        let i = self.open.iter().position(|s| s.name == name)?;
        let sub = self.open.swap_remove(i);
        sub.abort.abort();
        Some(sub)
    }

    /// The one subscription's name and feed, when the socket holds one
    /// subscription and it is live: the socket may then be parked.
    fn take_only_live(&mut self) -> Option<(Name, Box<Feed>)> {
        if self.open.len() != 1 || self.streams.len() != 1 {
            return None;
        }
        let stream = self.streams.iter_mut().next()?;
        // A feed closed meanwhile ends here, with its reason.
        if !matches!(&stream.state, SubState::Live(feed)
            if !feed.is_done() && !feed.subscriber().is_closed())
        {
            return None;
        }
        let SubState::Live(feed) = std::mem::replace(&mut stream.state, SubState::Done) else {
            return None;
        };
        self.streams = SelectAll::new();
        let sub = self.open.pop()?;
        Some((sub.name, feed))
    }
}

/// The connection under a socket. axum's `WebSocket` (tungstenite) serves
/// it wherever the router is mounted; herald's own server serves the
/// sockets of its plain listener itself (`transport::http1::socket`), and
/// parks them while they wait.
pub(crate) trait Wire:
    Stream<Item = Result<Message, axum::Error>>
    + futures_util::Sink<Message, Error = axum::Error>
    + Unpin
    + Send
    + Sized
    + 'static
{
    /// Whether [`Wire::park`] would take the socket now: nothing read and
    /// not yet handled, nothing left to write.
    fn can_park(&mut self) -> bool {
        false
    }

    /// Hands over a socket whose one subscription is live: it keeps no
    /// task until its client speaks (its transport then calls [`resume`])
    /// or its stream ends (the transport closes it, see [`Idle`]).
    fn park(self, idle: Idle) {
        drop((self, idle));
    }
}

impl Wire for WebSocket {}

/// What a socket's task holds besides its subscriptions.
struct Session {
    opening: Opening,
    /// Fired when a subscription's queue overflows.
    overflow: CancellationToken,
    /// When its token expires.
    expires: Option<Instant>,
    /// When the client last sent anything (a pong included).
    last_heard: Instant,
    /// The first ping sent while parked that the client has not answered
    /// yet (parked sockets are pinged only when quiet, so `last_heard`
    /// alone would say nothing of a busy topic's sockets).
    ping_sent: Option<Instant>,
}

impl Session {
    /// The token has expired (or is about to: the hub's timer and the
    /// socket's may fire a moment apart).
    fn expired(&self) -> bool {
        self.expires
            .is_some_and(|at| at <= Instant::now() + Duration::from_millis(100))
    }
}

/// A parked socket: one live subscription and nothing to do. Its
/// transport holds it without a task, writes its updates as frames
/// ([`Idle::take_frames`]), and hands it back to [`resume`] when the
/// client speaks or the stream ends (the task then closes it with the
/// reason's code).
pub(crate) struct Idle {
    session: Session,
    name: Name,
    /// The subscription's `update` prefix, shared by its frames.
    prefix: Bytes,
    feed: Feed,
}

/// What [`Idle::take_frames`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Nothing to send.
    Nothing,
    /// Frames to write.
    Frames,
    /// A ping is due, and the client answered none for two heartbeats:
    /// close the socket with [`Idle::no_pong`].
    NoPong,
}

impl Idle {
    pub(crate) fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Moves the frames of the updates queued now (and a ping, when a
    /// heartbeat is due) into `out`.
    pub(crate) fn take_frames(&mut self, out: &mut Vec<Bytes>) -> Taken {
        let mut frames = Frames {
            prefix: &self.prefix,
            url: self.name == URL_SUBSCRIPTION,
            out,
            ping: false,
        };
        if !self.feed.take_live(&mut frames) {
            return Taken::Nothing;
        }
        if frames.ping {
            // A ping goes out a heartbeat after the last one while the
            // client stays silent: the third finds the first unanswered
            // for two heartbeats (less a quarter, the ticker's step).
            let heartbeat = self.session.opening.hub.config().heartbeat;
            match self.session.ping_sent {
                Some(at) if at.elapsed() >= heartbeat * 7 / 4 => return Taken::NoPong,
                Some(_) => {}
                None => self.session.ping_sent = Some(Instant::now()),
            }
        }
        Taken::Frames
    }

    /// The close frame of a socket that answered no ping.
    pub(crate) fn no_pong() -> Bytes {
        wsframe::close_frame(CLOSE_NO_PONG, NO_PONG)
    }
}

/// The frames of a parked socket's updates.
struct Frames<'a> {
    prefix: &'a Bytes,
    /// The subscription is the URL's: its frames are shared whole.
    url: bool,
    out: &'a mut Vec<Bytes>,
    ping: bool,
}

impl FeedSink for Frames<'_> {
    fn open(&mut self, _retry: Option<u64>) {}

    fn gap(&mut self, _asked: &str) {}

    fn update(&mut self, stored: &Arc<Stored>) {
        let enc = stored.ws.get_or_init(|| encode(stored));
        if self.url {
            self.out.push(enc.url_frame.clone());
            return;
        }
        let len =
            self.prefix.len() + enc.rest.len() + enc.binary.as_ref().map_or(0, |b| 1 + b.len());
        let opcode = if enc.binary.is_some() {
            wsframe::BINARY
        } else {
            wsframe::TEXT
        };
        self.out.push(Bytes::copy_from_slice(
            wsframe::Head::new(opcode, len).as_bytes(),
        ));
        self.out.push(self.prefix.clone());
        self.out.push(enc.rest.clone());
        if let Some(b) = &enc.binary {
            self.out.push(Bytes::from_static(b"\n"));
            self.out.push(b.clone());
        }
    }

    fn heartbeat(&mut self) {
        self.out.push(Bytes::from_static(wsframe::PING_FRAME));
        self.ping = true;
    }
}

/// Why a socket closes.
struct Closing(u16, &'static str);

/// Runs a socket from its opening: the URL's subscription, then the
/// client's messages and the subscriptions' updates, until it closes or
/// is parked.
pub(crate) async fn run<W: Wire>(socket: W, mut opening: Opening) {
    let first = opening.first.take();
    let expires = opening
        .subscriber
        .as_ref()
        .and_then(|g| g.exp())
        .and_then(crate::hub::feed::deadline);
    let session = Box::new(Session {
        opening,
        overflow: CancellationToken::new(),
        expires,
        last_heard: Instant::now(),
        ping_sent: None,
    });
    let mut subs = Subscriptions::default();
    if let Some(first) = first {
        session.context().subscribe(&mut subs, *first);
    }
    serve(socket, session, subs).await;
}

/// Takes back a parked socket whose client spoke (or whose transport
/// could not keep it parked), and runs it as [`run`] does.
pub(crate) async fn resume<W: Wire>(socket: W, idle: Idle) {
    let Idle {
        session,
        name,
        prefix: _,
        feed,
    } = idle;
    let mut subs = Subscriptions::default();
    subs.push(name, SubState::Live(Box::new(feed)));
    serve(socket, Box::new(session), subs).await;
}

impl Session {
    fn context(&self) -> Context<'_> {
        Context {
            opening: &self.opening,
            overflow: &self.overflow,
        }
    }
}

async fn serve<W: Wire>(mut socket: W, mut session: Box<Session>, mut subs: Subscriptions) {
    let hub = session.opening.hub.clone();
    let heartbeat = hub.config().heartbeat;
    let stop = hub.shutdown_token().clone();
    let overflow = session.overflow.clone();
    let expires = session.expires;
    // `heartbeat = 0` turns heartbeats off: no pings, no pong deadline.
    let mut ping = (!heartbeat.is_zero()).then(|| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    // A write the client does not take within this is a client too slow.
    let write_within = if heartbeat.is_zero() {
        Duration::from_secs(30)
    } else {
        heartbeat * 2
    };
    let expiry = async {
        match expires {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let closing = loop {
        // One live subscription, nothing read, nothing to write: the
        // socket waits parked, without this task, if its transport can.
        if socket.can_park() && !stop.is_cancelled() && !overflow.is_cancelled() {
            if let Some((name, feed)) = subs.take_only_live() {
                let prefix = if name == URL_SUBSCRIPTION {
                    Bytes::from_static(URL_PREFIX.as_bytes())
                } else {
                    Bytes::from(update_prefix(&name))
                };
                socket.park(Idle {
                    session: *session,
                    name,
                    prefix,
                    feed: *feed,
                });
                return;
            }
        }
        let step = tokio::select! {
            biased;
            () = stop.cancelled() => break Closing(1001, SHUTTING_DOWN),
            () = overflow.cancelled() => break Closing(CLOSE_TOO_SLOW, TOO_SLOW),
            () = &mut expiry => break Closing(CLOSE_TOKEN_EXPIRED, TOKEN_EXPIRED),
            // The client's messages and the pings before the updates: a
            // busy topic must never keep a pong, an `unsubscribe` or a
            // close unread (they are rarely ready, so this costs nothing).
            msg = socket.next() => match msg {
                Some(Ok(m)) => Step::In(m),
                // Gone, or a protocol error the wire already answered.
                _ => return,
            },
            _ = async {
                match ping.as_mut() {
                    Some(p) => { p.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => Step::Ping,
            Some(event) = subs.streams.next(), if !subs.streams.is_empty() => Step::Sub(event),
        };
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut early = None;
        // After a client message the wire is flushed even with nothing to
        // say: a pong it answered, or what it had not written when parked.
        let flush = matches!(step, Step::In(_));
        match step {
            Step::Sub(first) => {
                let mut event = Some(first);
                // Everything the subscriptions have ready now goes out in
                // one flush. (Polling with a no-op waker is safe: the loop
                // polls them again with its own before it waits.)
                while let Some((key, e)) = event
                    .take()
                    .or_else(|| subs.streams.next().now_or_never().flatten())
                {
                    match e {
                        Event::Opened(resumed_from) => {
                            if let Some(sub) = subs.by_key(key) {
                                batch.push(json(&serde_json::json!({
                                    "op": "subscribed",
                                    "sub": sub.name,
                                    "resumed_from": resumed_from,
                                })));
                            }
                        }
                        Event::Failed(e) => {
                            if let Some(sub) = subs.remove_key(key) {
                                batch.push(error(Some(&sub.name), None, e.status, &e.reason));
                            }
                        }
                        Event::Updates(updates) => {
                            let Some(sub) = subs.by_key(key) else {
                                continue;
                            };
                            for s in &updates {
                                let m = message(&sub.prefix, s);
                                batch_bytes += size(&m);
                                batch.push(m);
                                // A replay hands over up to `replay_batch`
                                // updates at once: what is gathered goes
                                // out before their copies pile up.
                                if batch_bytes >= MAX_BATCH_BYTES {
                                    match write(
                                        &mut socket,
                                        std::mem::take(&mut batch),
                                        write_within,
                                        &overflow,
                                        &stop,
                                    )
                                    .await
                                    {
                                        Wrote::Done => batch_bytes = 0,
                                        other => {
                                            early = Some(other);
                                            break;
                                        }
                                    }
                                }
                            }
                            if early.is_some() {
                                break;
                            }
                        }
                        Event::Live => {}
                        Event::Ended => {
                            // An overflow, the shutdown or the token's
                            // expiry ends every subscription: the socket
                            // closes for that reason, just below.
                            let explained =
                                overflow.is_cancelled() || stop.is_cancelled() || session.expired();
                            if subs.remove_key(key).is_some() && !explained {
                                batch.push(close_message(1001, SUBSCRIPTION_ENDED));
                                break;
                            }
                        }
                    }
                    if batch.len() >= MAX_BATCH || batch_bytes >= MAX_BATCH_BYTES {
                        break;
                    }
                }
            }
            Step::In(m) => {
                session.last_heard = Instant::now();
                session.ping_sent = None;
                let ctx = session.context();
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
                    Message::Close(frame) => {
                        // The client's code, echoed (RFC 6455, 5.5.1).
                        let echo = frame.map(|f| CloseFrame {
                            code: f.code,
                            reason: Utf8Bytes::from_static(""),
                        });
                        let _ = socket.send(Message::Close(echo)).await;
                        return;
                    }
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            Step::Ping => {
                if session.last_heard.elapsed() > heartbeat * 2 {
                    break Closing(CLOSE_NO_PONG, NO_PONG);
                }
                batch.push(Message::Ping(Bytes::new()));
            }
        }
        let closes = batch.iter().any(|m| matches!(m, Message::Close(_)));
        let wrote = match early {
            Some(w) => w,
            None if batch.is_empty() && !flush => continue,
            None => write(&mut socket, batch, write_within, &overflow, &stop).await,
        };
        match wrote {
            Wrote::Done if closes => return,
            Wrote::Done => {}
            Wrote::TooSlow => break Closing(CLOSE_TOO_SLOW, TOO_SLOW),
            Wrote::Stopping => break Closing(1001, SHUTTING_DOWN),
            Wrote::Gone => return,
        }
    };
    drop(subs);
    let Closing(code, reason) = closing;
    tracing::debug!(peer = ?session.opening.peer, code, "closing WebSocket: {reason}");
    // A few seconds: the client of a full socket may be about to read.
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        socket.send(close_message(code, reason)),
    )
    .await;
}

enum Step {
    Sub((u64, Event)),
    In(Message),
    Ping,
}

fn close_message(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// How a write went.
enum Wrote {
    Done,
    /// The socket's queue overflowed, or the client took nothing for a
    /// while: it is too slow.
    TooSlow,
    /// The hub is shutting down.
    Stopping,
    /// The connection failed.
    Gone,
}

/// The reason of a [`CLOSE_TOO_SLOW`] close.
const TOO_SLOW: &str = "too slow: the socket's queue overflowed; reconnect and resume";
const SHUTTING_DOWN: &str = "the hub is shutting down";
const TOKEN_EXPIRED: &str = "the token expired";
const NO_PONG: &str = "no pong: the socket answered no ping for two heartbeats";
const SUBSCRIPTION_ENDED: &str = "a subscription ended: reconnect and resume";

/// Writes `batch` and flushes, unless the socket's queue overflows, the
/// client takes nothing for `within`, or the hub shuts down first (a
/// client that stopped reading never lets a write finish).
async fn write<W: Wire>(
    socket: &mut W,
    batch: Vec<Message>,
    within: Duration,
    overflow: &CancellationToken,
    stop: &CancellationToken,
) -> Wrote {
    use futures_util::SinkExt;
    let send = async {
        for m in batch {
            socket.feed(m).await?;
        }
        socket.flush().await
    };
    tokio::select! {
        r = tokio::time::timeout(within, send) => match r {
            Ok(Ok(())) => Wrote::Done,
            Ok(Err(_)) => Wrote::Gone,
            Err(_) => Wrote::TooSlow,
        },
        () = overflow.cancelled() => Wrote::TooSlow,
        () = stop.cancelled() => Wrote::Stopping,
    }
}

/// The bytes of a message's payload.
fn size(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 2,
    }
}

/// What a socket's messages act with.
struct Context<'a> {
    opening: &'a Opening,
    overflow: &'a CancellationToken,
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
            Request::Unsubscribe { sub } => match subs.remove_name(&sub) {
                Some(_) => Some(json(&serde_json::json!({"op": "unsubscribed", "sub": sub}))),
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
        if self.opening.by_callback {
            return refuse(
                StatusCode::FORBIDDEN,
                "the application authorized this socket for the topics in its URL only: \
                 open another socket, or present a token",
            );
        }
        if name.is_empty() || name.len() > MAX_NAME {
            return refuse(
                StatusCode::BAD_REQUEST,
                "sub must name the subscription in 1 to 128 bytes",
            );
        }
        if subs.open.iter().any(|s| s.name == name) {
            return refuse(
                StatusCode::CONFLICT,
                "a subscription of this name is open on this socket",
            );
        }
        if subs.open.len() >= MAX_SUBSCRIPTIONS {
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
                name: name.into(),
                revision: Revision::Draft07,
                selectors,
                matchers: Vec::new(),
                last_event_id,
            },
        );
        None
    }

    /// Opens a subscription: its stream acknowledges with `subscribed`
    /// (or an `error`), then yields its updates in order.
    fn subscribe(&self, subs: &mut Subscriptions, req: Subscribe) {
        let o = self.opening;
        let request = SubscribeRequest {
            revision: req.revision,
            selectors: req.selectors,
            matchers: req.matchers,
            grants: o.subscriber.as_deref().cloned(),
            last_event_id: req.last_event_id,
            gap_event: false,
            peer: o.peer,
            cancel: Some(self.overflow.clone()),
            token: o.token,
        };
        let hub = o.hub.clone();
        // Boxed: opening takes far more room than streaming.
        let opening = Box::pin(async move { hub.subscribe(request).await });
        subs.push(req.name, SubState::Opening(opening));
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
                let url = data_url(media_type, &bytes);
                // The same bound as a `POST` carrying this update.
                if url.len() > hub.config().max_body_bytes {
                    return fail(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the payload, as its data: URL, is larger than max_body_bytes",
                    );
                }
                url
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
        if let Err(e) = super::publish_rules::check_rules(hub, &update, grants.is_access_token()) {
            return fail(e.status, &e.reason);
        }
        if let Err(e) = super::publish_rules::check_topics(grants, &update) {
            hub.metrics().auth_failed("publish", &e);
            let e = HttpError::auth(hub, &e);
            return fail(e.status, &e.reason);
        }
        if let Err(r) = hub.admit_publish(self.opening.ip, self.opening.publish_token, 1) {
            let e = HttpError::refused(&r);
            return fail(e.status, &e.reason);
        }
        match hub.publish(vec![update]).await {
            Ok(stored) => json(&serde_json::json!({
                "op": "published",
                "ref": reference,
                "id": stored.first().map(|s| s.update.id.as_str()),
            })),
            Err(e) => {
                let e = super::publish_rules::publish_error(e);
                fail(e.status, &e.reason)
            }
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
    let enc = stored.ws.get_or_init(|| encode(stored));
    let rest = &enc.rest;
    match &enc.binary {
        None => {
            let mut text = String::with_capacity(prefix.len() + rest.len());
            text.push_str(prefix);
            // It was encoded from a `String`.
            text.push_str(std::str::from_utf8(rest).unwrap_or_default());
            Message::Text(Utf8Bytes::from(text))
        }
        Some(bytes) => {
            let mut b = BytesMut::with_capacity(prefix.len() + rest.len() + 1 + bytes.len());
            b.put_slice(prefix.as_bytes());
            b.put_slice(rest);
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
