//! `GET /.well-known/mercure`: the event stream.
//!
//! A subscription registers for live updates *before* it reads history,
//! then drops queued live updates whose position it already replayed: no
//! gap and no duplicate, however busy the publishers are during the connect.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use herald_protocol::matcher::{parse_subscribe_query, Matcher};
use herald_protocol::update::EARLIEST;
use herald_protocol::Selector;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ConnContext, HttpError};
use crate::auth::{AuthError, Grants, Role};
use crate::engine::Position;
use crate::hub::{Hub, Opened};
use crate::subscriber::{Drain, Subscriber};
use crate::subscriptions::Subscription;

/// Longest accepted `Last-Event-ID`.
const MAX_LAST_EVENT_ID: usize = 1024;

/// The value of the `Accept-Query` header: subscriptions also come as
/// `QUERY` requests with a form body.
pub(crate) const ACCEPT_QUERY: &str = "application/x-www-form-urlencoded";

/// The protocol revision a subscribe request speaks: draft-07 names topics
/// with `topic`, draft-08 (Mercure 1.0) with `match` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revision {
    Draft07,
    Draft08,
}

struct Request {
    revision: Revision,
    selectors: Vec<Selector>,
    /// Draft-08: the matchers as requested, for subscription events.
    matchers: Vec<Matcher>,
    last_event_id: Option<String>,
    query_token: Option<String>,
}

fn parse_request(
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
    for (k, v) in pairs {
        match k.as_str() {
            "topic" => raw_selectors.push(v),
            "last_event_id" => v8_last_id = Some(v),
            "lastEventID" | "Last-Event-ID" => v7_last_id = Some(v),
            "authorization" => query_token = Some(v),
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
    })
}

fn authorize(
    hub: &Hub,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Grants>, AuthError> {
    match hub.authenticate(headers, query_token, Role::Subscriber)? {
        Some((grants, _)) => Ok(Some(grants)),
        None if hub.config().anonymous => Ok(None),
        None => Err(AuthError::Missing),
    }
}

/// A subscription that passed every check: registered for live updates,
/// with its resume point looked up.
pub(crate) struct Prepared {
    pub feed: Feed,
    /// Extra response headers: the resume point's `Last-Event-ID`
    /// (draft-07) or `Mercure-Last-Event-ID` (draft-08), `Accept-Query`.
    pub headers: Vec<(&'static str, String)>,
}

/// Validates, authorizes and registers a subscription request. Shared by
/// the axum route and the direct connection path of [`crate::server`].
/// `body` holds the form fields of a `QUERY` request.
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
    let grants = authorize(hub, headers, req.query_token.as_deref()).map_err(|e| {
        hub.metrics().auth_failed("subscribe", &e);
        HttpError::auth(hub, &e)
    })?;
    let allowed = grants.as_ref().and_then(Grants::subscribe_rule);
    let expires = grants.as_ref().and_then(Grants::exp).map(deadline);

    let (cancel, peer) = match conn {
        Some(c) => (c.cancel, Some(c.peer)),
        None => (None, None),
    };
    let cfg = hub.config();
    let sub = Arc::new(
        Subscriber::new(
            hub.next_subscriber_id(),
            req.selectors,
            allowed,
            req.last_event_id.is_some(),
            cfg.queue_frames,
            cfg.queue_bytes,
            cancel,
        )
        .with_draft08(req.revision == Revision::Draft08),
    );
    // Register first, then look up the resume point: see the module docs.
    hub.start_ticker();
    hub.registry().insert(sub.clone());
    let mut guard = Registration {
        hub: hub.clone(),
        sub: sub.clone(),
        sent: 0,
        opened: None,
        counted: false,
    };
    // The ticker closes every subscriber when shutdown begins; one that
    // registered after that would never be closed.
    if hub.shutdown_token().is_cancelled() {
        return Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub is shutting down",
        ));
    }

    let (cursor, header_id) = match &req.last_event_id {
        None => (None, None),
        Some(id) if id == EARLIEST => (Some(0), Some(EARLIEST.to_owned())),
        Some(id) => match hub.engine().resolve(id).await {
            // The id of a private update the token may not read is treated
            // as unknown: answering with it would confirm that it exists.
            Ok(Some(pos)) if !visible_at(hub, &sub, pos).await => {
                (Some(0), Some(EARLIEST.to_owned()))
            }
            Ok(Some(pos)) => (Some(pos), Some(id.clone())),
            // Unknown or already removed by retention: replay everything
            // retained and say so with `earliest`, never a silent gap.
            Ok(None) => (Some(0), Some(EARLIEST.to_owned())),
            Err(e) => {
                return Err(HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.to_string(),
                ))
            }
        },
    };

    if hub.subscriptions().is_some() {
        let subscription = match req.revision {
            Revision::Draft07 => {
                let payload = |selector: &str| match &grants {
                    Some(Grants::Claim(c)) => c.claims.mercure.payload.clone(),
                    Some(Grants::Access(a)) => a.authorization.payload_for(selector).cloned(),
                    None => None,
                };
                Subscription::draft07(
                    sub.selectors
                        .iter()
                        .map(|s| (s.as_str().to_owned(), payload(s.as_str())))
                        .collect(),
                )
            }
            Revision::Draft08 => Subscription::draft08(
                req.matchers
                    .iter()
                    .map(|m| {
                        let payload = match &grants {
                            Some(Grants::Access(a)) => {
                                a.authorization.payload_for(m.as_str()).cloned()
                            }
                            Some(Grants::Claim(c)) => c.claims.mercure.payload.clone(),
                            None => None,
                        };
                        (m.match_type(), m.as_str().to_owned(), payload)
                    })
                    .collect(),
            ),
        };
        guard.opened = hub.open_subscription(sub.id, Arc::new(subscription));
    }

    hub.metrics().subscriber_connected(
        sub.id,
        peer,
        sub.selectors.len(),
        req.last_event_id.as_deref(),
    );
    guard.counted = true;
    let mut extra = vec![("accept-query", ACCEPT_QUERY.to_owned())];
    if let Some(id) = header_id {
        let name = match req.revision {
            Revision::Draft07 => "last-event-id",
            Revision::Draft08 => "mercure-last-event-id",
        };
        extra.push((name, id));
    }
    Ok(Prepared {
        feed: Feed::new(guard, cursor, expires),
        headers: extra,
    })
}

pub(super) async fn subscribe(
    State(hub): State<Hub>,
    conn: Option<Extension<ConnContext>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let prepared = prepare(
        &hub,
        &headers,
        query.as_deref(),
        None,
        conn.map(|Extension(c)| c),
    )
    .await?;
    Ok(event_stream(prepared))
}

/// `QUERY /.well-known/mercure`: a subscription whose parameters come in a
/// form body (for matcher lists too long for a URL), added to those of the
/// query string.
pub(super) async fn subscribe_query(
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
    let bytes = super::read_body(body, hub.config().max_body_bytes).await?;
    let prepared = prepare(&hub, &headers, query.as_deref(), Some(&bytes), conn).await?;
    Ok(event_stream(prepared))
}

fn event_stream(prepared: Prepared) -> Response {
    let Prepared {
        mut feed,
        headers: extra,
    } = prepared;
    let stream = async_stream::stream! {
        let mut out = Vec::new();
        while feed.next(&mut out).await {
            for frame in out.drain(..) {
                yield Ok::<_, Infallible>(frame);
            }
        }
    };
    let mut res = Response::new(Body::from_stream(stream));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    res
}

/// True when the subscriber may read the update at `pos` (an update
/// already removed counts as visible: its id is then just a position).
async fn visible_at(hub: &Hub, sub: &Subscriber, pos: Position) -> bool {
    match hub.engine().read_after(pos.saturating_sub(1), 1).await {
        Ok(found) => found
            .first()
            .filter(|s| s.position == pos)
            .is_none_or(|s| sub.may_see(s)),
        Err(_) => true,
    }
}

/// Unregisters the subscriber when its stream is dropped.
struct Registration {
    hub: Hub,
    sub: Arc<Subscriber>,
    sent: u64,
    /// With subscription events on: resolves when `active: true` is out.
    opened: Option<Opened>,
    /// Counted as connected (the gauges move back only then).
    counted: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Its connection is ending here: no flusher to wake.
        let _ = self.sub.close();
        self.hub.registry().remove(&self.sub);
        if self.hub.subscriptions().is_some() {
            self.hub.close_subscription(self.sub.id, self.opened.take());
        }
        if self.counted {
            self.hub.metrics().subscriber_disconnected(
                self.sub.id,
                self.sub.selectors.len(),
                self.sent,
            );
        }
    }
}

fn deadline(exp: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Instant::now() + Duration::from_secs(exp.saturating_sub(now))
}

/// Where a feed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing sent yet: the first bytes flush the headers through proxies.
    Start,
    /// Reading history after `last`.
    Replay,
    /// Forwarding live updates from the queue.
    Live,
    Done,
}

/// The frames of one subscription, in order: a first flush, then history
/// from the resume point, then live updates, with heartbeats when idle.
/// It ends at shutdown, at token expiry, and when the subscriber is closed
/// (disconnect or queue overflow).
///
/// [`Feed::next`] is cancel-safe: its state changes only after an await
/// has completed, so a caller may race it against other events.
pub(crate) struct Feed {
    reg: Registration,
    phase: Phase,
    /// Replay history after the first flush.
    resume: bool,
    /// Position of the last update handled in order.
    last: Position,
    /// Token expiry, when the token has one.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// [`Feed::next`] returns when it reaches the live phase with nothing
    /// queued, so the caller can park the connection.
    parking: bool,
}

impl Feed {
    fn new(reg: Registration, cursor: Option<Position>, expires: Option<Instant>) -> Self {
        Self {
            reg,
            phase: Phase::Start,
            resume: cursor.is_some(),
            last: cursor.unwrap_or(0),
            expiry: expires.map(|at| Box::pin(tokio::time::sleep_until(at))),
            parking: false,
        }
    }

    /// Makes [`Feed::next`] return instead of waiting in the live phase
    /// (see [`super::parked`]).
    pub fn set_parking(&mut self, parking: bool) {
        self.parking = parking;
    }

    /// Whether [`Feed::set_parking`] is on.
    pub fn parking(&self) -> bool {
        self.parking
    }

    /// Forwarding live updates: the history is sent.
    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// The feed has ended.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn hub(&self) -> &Hub {
        &self.reg.hub
    }

    pub fn subscriber(&self) -> &Arc<Subscriber> {
        &self.reg.sub
    }

    /// Removes the token's expiry timer and returns its deadline, for a
    /// parked connection whose expiry the hub-wide timer watches.
    pub fn take_deadline(&mut self) -> Option<std::time::Instant> {
        self.expiry.take().map(|sleep| sleep.deadline().into_std())
    }

    /// The live frames queued now, without waiting; `false` when there
    /// are none or the feed ended ([`Feed::is_done`]).
    pub fn take_live(&mut self, out: &mut Vec<Bytes>) -> bool {
        self.phase == Phase::Live && self.take_queued(out)
    }

    /// Resolves once the subscriber is closed (queue overflow, shutdown):
    /// the connection must go.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.reg.sub.poll_closed(cx))
    }

    /// Fired when the hub shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        self.reg.hub.shutdown_token()
    }

    /// Appends the next frames to `out`; `false` when the feed has ended.
    pub async fn next(&mut self, out: &mut Vec<Bytes>) -> bool {
        let hub = self.reg.hub.clone();
        loop {
            match self.phase {
                Phase::Done => return false,
                Phase::Start => {
                    out.push(match hub.config().retry {
                        Some(ms) => Bytes::from(format!("retry:{ms}\n\n")),
                        None => Bytes::from_static(b":\n\n"),
                    });
                    self.phase = if self.resume {
                        Phase::Replay
                    } else {
                        Phase::Live
                    };
                    return true;
                }
                Phase::Replay => {
                    if hub.shutdown_token().is_cancelled() {
                        self.phase = Phase::Done;
                        return false;
                    }
                    let read_started = std::time::Instant::now();
                    let batch = match hub
                        .engine()
                        .read_after(self.last, hub.config().replay_batch)
                        .await
                    {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(
                                subscriber = self.reg.sub.id,
                                "history read failed: {e}"
                            );
                            self.phase = Phase::Done;
                            return false;
                        }
                    };
                    if batch.is_empty() {
                        if self.reg.sub.finish_replay() {
                            self.phase = Phase::Live;
                        }
                        continue;
                    }
                    let took = read_started.elapsed();
                    let before = out.len();
                    for s in &batch {
                        self.last = s.position;
                        if self.reg.sub.wants(s) {
                            out.push(s.frame.clone());
                        }
                    }
                    let replayed = (out.len() - before) as u64;
                    self.reg.sent += replayed;
                    hub.metrics().replayed(replayed, took);
                    if replayed > 0 {
                        return true;
                    }
                }
                Phase::Live => {
                    // Checked first, so an expired token stops a stream that
                    // always has frames queued, too.
                    if self.expiry.as_ref().is_some_and(|e| e.is_elapsed()) {
                        tracing::debug!(
                            subscriber = self.reg.sub.id,
                            "token expired: closing stream"
                        );
                        self.phase = Phase::Done;
                        return false;
                    }
                    if self.take_queued(out) {
                        return true;
                    }
                    if self.phase == Phase::Done {
                        return false;
                    }
                    if self.parking {
                        return true;
                    }
                    let sub = &self.reg.sub;
                    let expiry = &mut self.expiry;
                    let expired = std::future::poll_fn(|cx| {
                        if sub.poll_ready(cx).is_ready() {
                            return std::task::Poll::Ready(false);
                        }
                        match expiry.as_mut().map(|e| e.as_mut().poll(cx)) {
                            Some(std::task::Poll::Ready(())) => std::task::Poll::Ready(true),
                            _ => std::task::Poll::Pending,
                        }
                    })
                    .await;
                    if expired {
                        tracing::debug!(subscriber = sub.id, "token expired: closing stream");
                        self.phase = Phase::Done;
                        return false;
                    }
                }
            }
        }
    }

    /// Moves the queued live frames not yet sent to `out`.
    fn take_queued(&mut self, out: &mut Vec<Bytes>) -> bool {
        match self.reg.sub.drain() {
            Drain::Closed => {
                self.phase = Phase::Done;
                false
            }
            Drain::Empty => false,
            Drain::Heartbeat => {
                out.push(Bytes::from_static(b":\n\n"));
                true
            }
            Drain::Frames(frames) => {
                let metrics = self.reg.hub.metrics();
                let before = out.len();
                for stored in frames {
                    let pos = stored.position;
                    if pos > self.last {
                        self.last = pos;
                        // Sampled: one update in 16 per subscriber.
                        if pos % 16 == 0 {
                            metrics
                                .delivery_seconds
                                .observe(stored.at.elapsed().as_secs_f64());
                        }
                        out.push(stored.frame.clone());
                    }
                }
                self.reg.sent += (out.len() - before) as u64;
                out.len() > before
            }
        }
    }
}
