//! `GET /.well-known/mercure` (and `QUERY`): opening an event stream.
//!
//! Parses a subscription request of either revision, authorizes it, and
//! hands it to [`Hub::subscribe`]; the transport then streams the feed
//! under the stream policy ([`super::policy`]).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use herald_protocol::matcher::{parse_subscribe_query, Matcher};
use herald_protocol::Selector;

use super::conn::ConnContext;
use super::error::HttpError;
use crate::auth::{AuthError, Grants, Role};
use crate::hub::admission::StreamPermit;
use crate::hub::feed::{Feed, Revision, SubscribeError, SubscribeRequest};
use crate::hub::handle::Hub;

/// Longest accepted `Last-Event-ID`.
const MAX_LAST_EVENT_ID: usize = 1024;

/// The value of the `Accept-Query` header: subscriptions also come as
/// `QUERY` requests with a form body.
pub(crate) const ACCEPT_QUERY: &str = "application/x-www-form-urlencoded";

pub(crate) struct Request {
    pub revision: Revision,
    pub selectors: Vec<Selector>,
    /// Draft-08: the matchers as requested, for subscription events.
    pub matchers: Vec<Matcher>,
    pub last_event_id: Option<String>,
    query_token: Option<String>,
    /// `gap_event=1`: an in-stream event when the resume id is not in
    /// history.
    gap_event: bool,
}

pub(crate) fn parse_request(
    hub: &Hub,
    headers: &HeaderMap,
    pairs: Vec<(String, String)>,
) -> Result<Request, HttpError> {
    let cfg = hub.config();
    let max = cfg.max_selectors;
    let matchers = parse_subscribe_query(pairs.iter().map(|(k, v)| (k, v)), &cfg.public_url, max)
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    let mut raw_selectors = Vec::new();
    let (mut v8_last_id, mut v7_last_id) = (None, None);
    let mut query_token = None;
    let mut access_token_param = false;
    let mut gap_event = false;
    for (k, v) in pairs {
        match k.as_str() {
            "topic" => raw_selectors.push(v),
            "last_event_id" => v8_last_id = Some(v),
            "lastEventID" | "Last-Event-ID" => v7_last_id = Some(v),
            "authorization" => query_token = Some(v),
            "gap_event" => gap_event = matches!(v.as_str(), "1" | "true" | ""),
            "access_token" => access_token_param = true,
            _ => {}
        }
    }
    let revision = match (raw_selectors.is_empty(), matchers.is_empty()) {
        (false, true) => Revision::Draft07,
        (true, false) => Revision::Draft08,
        (false, false) => {
            return Err(HttpError::bad_request(
                "use either topic (draft-07) or match parameters (draft-08), not both",
            ))
        }
        (true, true) => {
            return Err(HttpError::bad_request(
                "missing match (or draft-07 topic) parameter",
            ))
        }
    };
    let selectors = match revision {
        Revision::Draft07 => {
            if raw_selectors.len() > max {
                return Err(HttpError::bad_request(format!(
                    "too many topic selectors (at most {max})"
                )));
            }
            let mut selectors: Vec<Selector> = Vec::with_capacity(raw_selectors.len());
            for s in &raw_selectors {
                let sel = Selector::parse(s)
                    .map_err(|e| HttpError::bad_request(format!("topic {s:?}: {e}")))?;
                if !selectors.iter().any(|x| x.as_str() == sel.as_str()) {
                    selectors.push(sel);
                }
            }
            selectors
        }
        Revision::Draft08 => {
            // Draft-08 keeps tokens out of URLs, where logs keep them.
            if query_token.is_some() || access_token_param {
                return Err(HttpError::auth(hub, &AuthError::TokenInQuery));
            }
            matchers.iter().map(Selector::from_matcher).collect()
        }
    };
    // The header wins over the query parameters, as browsers send the
    // header on reconnection with the newest id; an empty one says nothing.
    let header_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| HttpError::bad_request("malformed Last-Event-ID"))?
                .to_owned(),
        ),
        None => None,
    }
    .filter(|id| !id.is_empty());
    let last_event_id = header_id
        .or(v8_last_id)
        .or(v7_last_id)
        .filter(|id| !id.is_empty());
    if let Some(id) = &last_event_id {
        if id.len() > MAX_LAST_EVENT_ID || id.chars().any(char::is_control) {
            return Err(HttpError::bad_request("malformed Last-Event-ID"));
        }
    }
    Ok(Request {
        revision,
        selectors,
        matchers,
        last_event_id,
        query_token,
        gap_event,
    })
}

fn authorize(
    hub: &Hub,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Grants>, AuthError> {
    match hub.authenticate(headers, query_token, Role::Subscriber)? {
        Some((grants, _)) => Ok(Some(grants)),
        None if hub.config().anonymous && hub.callback().is_none() => Ok(None),
        None => Err(AuthError::Missing),
    }
}

/// Asks the application's authorization callback (see
/// [`crate::auth::callback`]) about a request without a token. `Ok(None)`:
/// go on without credentials.
pub(crate) async fn ask_callback(
    hub: &Hub,
    headers: &HeaderMap,
    action: &'static str,
    topics: &[String],
    ip: Option<std::net::IpAddr>,
) -> Result<Option<Grants>, HttpError> {
    use crate::auth::callback::{CallbackFailure, Decision};
    let Some(cb) = hub.callback() else {
        return Ok(None);
    };
    match cb.ask(headers, action, topics, ip).await {
        Decision::Granted(g) => Ok(Some(g)),
        Decision::Refused => {
            let e = AuthError::CallbackRefused;
            hub.metrics().auth_failed(action, &e);
            Err(HttpError::auth(hub, &e))
        }
        Decision::Failed(why) => {
            tracing::warn!(action, "{why}");
            match cb.failure() {
                CallbackFailure::Deny => Err(HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the authorization service did not answer; retry shortly",
                )),
                CallbackFailure::Anonymous => Ok(None),
            }
        }
    }
}

/// A subscription that passed every check: registered for live updates,
/// with its resume point looked up.
pub(crate) struct Prepared {
    pub feed: Feed,
    /// The response headers of the stream (see [`super::policy`]), CORS
    /// aside.
    pub headers: Vec<(&'static str, HeaderValue)>,
}

/// Validates, authorizes and registers a subscription request. Shared by
/// every transport that serves `GET /.well-known/mercure`: the axum route
/// and the HTTP/1.1 fast path. `body` holds the form fields of a `QUERY`
/// request.
pub(crate) async fn prepare(
    hub: &Hub,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Option<&[u8]>,
    conn: Option<ConnContext>,
) -> Result<Prepared, HttpError> {
    let mut pairs = herald_protocol::form::parse(query.unwrap_or("").as_bytes())
        .map_err(|e| HttpError::bad_request(format!("malformed query string: {e}")))?;
    if let Some(body) = body {
        pairs.extend(
            herald_protocol::form::parse(body)
                .map_err(|e| HttpError::bad_request(format!("malformed form body: {e}")))?,
        );
    }
    let req = parse_request(hub, headers, pairs)?;
    let grants = match authorize(hub, headers, req.query_token.as_deref()) {
        Ok(g) => g,
        // No token: the application's callback decides, when there is one.
        Err(AuthError::Missing) if hub.callback().is_some() => {
            let topics: Vec<String> = match req.revision {
                Revision::Draft07 => req
                    .selectors
                    .iter()
                    .map(|s| s.as_str().to_owned())
                    .collect(),
                Revision::Draft08 => req.matchers.iter().map(|m| m.as_str().to_owned()).collect(),
            };
            let ip = conn.as_ref().map(|c| hub.client_ip(c.peer.ip(), headers));
            ask_callback(hub, headers, "subscribe", &topics, ip).await?
        }
        Err(e) => {
            hub.metrics().auth_failed("subscribe", &e);
            return Err(HttpError::auth(hub, &e));
        }
    };
    let (cancel, peer) = match conn {
        Some(c) => (c.cancel, Some(c.peer)),
        None => (None, None),
    };
    // The per-token limits count streams that came with a token.
    let token = grants
        .as_ref()
        .filter(|_| hub.limits_tokens())
        .and_then(|_| hub.token_key(headers, req.query_token.as_deref()));
    let revision = req.revision;
    let (feed, resumed_from) = hub
        .subscribe(SubscribeRequest {
            revision,
            selectors: req.selectors,
            matchers: req.matchers,
            grants,
            last_event_id: req.last_event_id,
            gap_event: req.gap_event,
            peer,
            cancel,
            token,
        })
        .await
        .map_err(|e| match e {
            SubscribeError::Refused(r) => HttpError::refused(&r),
            e => HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        })?;
    Ok(Prepared {
        feed,
        headers: super::policy::stream_headers(revision, resumed_from),
    })
}

pub(crate) async fn subscribe(
    State(hub): State<Hub>,
    conn: Option<Extension<ConnContext>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let conn = conn.map(|Extension(c)| c);
    let permit = stream_permit(&hub, conn.as_ref(), &headers)?;
    let prepared = prepare(&hub, &headers, query.as_deref(), None, conn).await?;
    Ok(event_stream(prepared, permit))
}

/// A place for one more event stream, or the refusal's answer.
fn stream_permit(
    hub: &Hub,
    conn: Option<&ConnContext>,
    headers: &HeaderMap,
) -> Result<StreamPermit, HttpError> {
    let ip = conn.map(|c| hub.client_ip(c.peer.ip(), headers));
    hub.admit_stream(ip).map_err(|r| HttpError::refused(&r))
}

/// `QUERY /.well-known/mercure`: a subscription whose parameters come in a
/// form body (for matcher lists too long for a URL), added to those of the
/// query string.
pub(crate) async fn subscribe_query(
    hub: Hub,
    conn: Option<ConnContext>,
    query: Option<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, HttpError> {
    let accept_query = |mut e: HttpError| {
        e.reason
            .push_str(" (QUERY takes application/x-www-form-urlencoded)");
        e
    };
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(accept_query(HttpError::bad_request("missing Content-Type")));
    };
    let mime = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if !mime.eq_ignore_ascii_case(ACCEPT_QUERY) {
        return Err(accept_query(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported Content-Type",
        )));
    }
    let bytes = super::error::read_body(body, hub.config().max_body_bytes).await?;
    let permit = stream_permit(&hub, conn.as_ref(), &headers)?;
    let prepared = prepare(&hub, &headers, query.as_deref(), Some(&bytes), conn).await?;
    Ok(event_stream(prepared, permit))
}

/// Most bytes of queued frames joined into one body chunk.
const MAX_JOINED: usize = 64 * 1024;

/// Frames queued together as one chunk (over HTTP/2 one DATA frame, and
/// one poll of the stream, per batch rather than per update); `None` for
/// a lone frame or a large batch (a replay's), which goes frame by frame,
/// as each frame is shared with every other stream.
pub(crate) fn joined(out: &[Bytes]) -> Option<Bytes> {
    if out.len() < 2 {
        return None;
    }
    let total: usize = out.iter().map(Bytes::len).sum();
    if total > MAX_JOINED {
        return None;
    }
    let mut joined = bytes::BytesMut::with_capacity(total);
    for frame in out {
        joined.extend_from_slice(frame);
    }
    Some(joined.freeze())
}

/// The axum response of an event stream: the feed's frames as the body,
/// with the stream policy's headers (CORS is the router's layer's), holding
/// its place among the hub's streams.
fn event_stream(prepared: Prepared, permit: StreamPermit) -> Response {
    let Prepared {
        mut feed,
        headers: extra,
    } = prepared;
    // `next` returns once live with nothing queued: the body then polls
    // the subscriber itself, with no future held per stream.
    feed.set_parking(true);
    let body = EventBody {
        state: BodyState::reading(feed),
        queued: std::collections::VecDeque::new(),
        _permit: permit,
    };
    let mut res = Response::new(Body::new(body));
    let h = res.headers_mut();
    for (name, value) in extra {
        h.insert(name, value);
    }
    res
}

/// The body of an event stream served by the router (HTTP/1.1 on a
/// connection that began with another request, a `QUERY` subscription,
/// an application that mounts the router, HTTP/3). Written out rather than
/// generated: a waiting stream holds its feed and nothing else (no
/// generator, no channel), which over HTTP/3 is most of what each of a
/// connection's many streams costs.
struct EventBody {
    state: BodyState,
    /// Frames of a large batch (a replay's), sent one by one: they are
    /// shared with every other stream, a joined copy would not be.
    queued: std::collections::VecDeque<Bytes>,
    /// The stream's place in `max_connections`, until it ends.
    _permit: StreamPermit,
}

enum BodyState {
    /// The first flush and the history: one [`Feed::next`] at a time.
    Reading(futures_util::future::BoxFuture<'static, (Feed, Vec<Bytes>, bool)>),
    /// Live: the subscriber is polled in place.
    Live(Feed),
    Done,
}

impl BodyState {
    fn reading(mut feed: Feed) -> Self {
        BodyState::Reading(Box::pin(async move {
            let mut out = Vec::new();
            let more = feed.next(&mut out).await;
            (feed, out, more)
        }))
    }
}

impl EventBody {
    /// The next body chunk from `out`: everything queued at once as one
    /// chunk, or a large batch frame by frame (see [`joined`]).
    fn chunk(&mut self, out: Vec<Bytes>) -> Option<Bytes> {
        if let Some(one) = joined(&out) {
            return Some(one);
        }
        self.queued.extend(out);
        self.queued.pop_front()
    }
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(frame) = this.queued.pop_front() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(frame))));
        }
        loop {
            let out = match &mut this.state {
                BodyState::Reading(next) => {
                    let (feed, out, more) = std::task::ready!(next.as_mut().poll(cx));
                    this.state = if !more {
                        BodyState::Done
                    } else if feed.is_live() {
                        BodyState::Live(feed)
                    } else {
                        BodyState::reading(feed)
                    };
                    out
                }
                BodyState::Live(feed) => {
                    let mut out = Vec::new();
                    if !std::task::ready!(feed.poll_live(cx, &mut out)) {
                        this.state = BodyState::Done;
                    }
                    out
                }
                BodyState::Done => return Poll::Ready(None),
            };
            if let Some(chunk) = this.chunk(out) {
                return Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done) && self.queued.is_empty()
    }
}
