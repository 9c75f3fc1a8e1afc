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
use herald_protocol::update::EARLIEST;
use herald_protocol::Selector;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ConnContext, HttpError};
use crate::auth::{self, AuthError, Claims};
use crate::engine::Position;
use crate::hub::{Hub, Opened};
use crate::subscriber::{Drain, Subscriber};
use crate::subscriptions::Subscription;

/// Longest accepted `Last-Event-ID`.
const MAX_LAST_EVENT_ID: usize = 1024;

struct Request {
    selectors: Vec<Selector>,
    last_event_id: Option<String>,
    query_token: Option<String>,
}

fn parse_request(
    hub: &Hub,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Request, HttpError> {
    let pairs = herald_protocol::form::parse(query.unwrap_or("").as_bytes())
        .map_err(|e| HttpError::bad_request(format!("malformed query string: {e}")))?;
    let mut raw_selectors = Vec::new();
    let mut query_last_id = None;
    let mut query_token = None;
    for (k, v) in pairs {
        match k.as_str() {
            "topic" => raw_selectors.push(v),
            "lastEventID" | "Last-Event-ID" => query_last_id = Some(v),
            "authorization" => query_token = Some(v),
            _ => {}
        }
    }
    if raw_selectors.is_empty() {
        return Err(HttpError::bad_request("missing topic"));
    }
    let max = hub.config().max_selectors;
    if raw_selectors.len() > max {
        return Err(HttpError::bad_request(format!(
            "too many topic selectors (at most {max})"
        )));
    }
    let mut selectors = Vec::with_capacity(raw_selectors.len());
    for s in &raw_selectors {
        let sel =
            Selector::parse(s).map_err(|e| HttpError::bad_request(format!("topic {s:?}: {e}")))?;
        if !selectors
            .iter()
            .any(|x: &Selector| x.as_str() == sel.as_str())
        {
            selectors.push(sel);
        }
    }
    // The header wins over the query parameter, as browsers send the
    // header on reconnection with the newest id.
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| HttpError::bad_request("malformed Last-Event-ID"))?
                .to_owned(),
        ),
        None => query_last_id,
    }
    .filter(|id| !id.is_empty());
    if let Some(id) = &last_event_id {
        if id.len() > MAX_LAST_EVENT_ID || id.chars().any(char::is_control) {
            return Err(HttpError::bad_request("malformed Last-Event-ID"));
        }
    }
    Ok(Request {
        selectors,
        last_event_id,
        query_token,
    })
}

fn authorize(
    hub: &Hub,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Claims>, AuthError> {
    let found = auth::extract_token(headers, query_token, &hub.config().cookie_name)?;
    match found {
        Some((token, _)) => {
            let verifier = hub.subscriber_verifier().ok_or(AuthError::NoKey)?;
            Ok(Some(verifier.verify(&token)?))
        }
        None if hub.config().anonymous => Ok(None),
        None => Err(AuthError::Missing),
    }
}

/// A subscription that passed every check: registered for live updates,
/// with its resume point looked up.
pub(crate) struct Prepared {
    pub feed: Feed,
    /// Value of the `Last-Event-ID` response header, when one is due.
    pub header_id: Option<String>,
}

/// Validates, authorizes and registers a subscription request. Shared by
/// the axum route and the direct connection path of [`crate::server`].
pub(crate) async fn prepare(
    hub: &Hub,
    headers: &HeaderMap,
    query: Option<&str>,
    conn: Option<ConnContext>,
) -> Result<Prepared, HttpError> {
    let req = parse_request(hub, headers, query)?;
    let claims = authorize(hub, headers, req.query_token.as_deref()).map_err(|e| {
        hub.metrics().auth_failed("subscribe", &e);
        HttpError::from(e)
    })?;
    let allowed = claims
        .as_ref()
        .and_then(|c| c.mercure.subscribe.as_deref())
        .map(auth::compile_selectors);
    let expires = claims.as_ref().and_then(|c| c.exp).map(deadline);

    let (cancel, peer) = match conn {
        Some(c) => (c.cancel, Some(c.peer)),
        None => (None, None),
    };
    let cfg = hub.config();
    let sub = Arc::new(Subscriber::new(
        hub.next_subscriber_id(),
        req.selectors,
        allowed,
        req.last_event_id.is_some(),
        cfg.queue_frames,
        cfg.queue_bytes,
        cancel,
    ));
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
        let topics = sub
            .selectors
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        let payload = claims.as_ref().and_then(|c| c.mercure.payload.clone());
        guard.opened = hub.open_subscription(sub.id, Arc::new(Subscription::new(topics, payload)));
    }

    hub.metrics().subscriber_connected(
        sub.id,
        peer,
        sub.selectors.len(),
        req.last_event_id.as_deref(),
    );
    guard.counted = true;
    Ok(Prepared {
        feed: Feed::new(guard, cursor, expires),
        header_id,
    })
}

pub(super) async fn subscribe(
    State(hub): State<Hub>,
    conn: Option<Extension<ConnContext>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let Prepared {
        mut feed,
        header_id,
    } = prepare(&hub, &headers, query.as_deref(), conn.map(|Extension(c)| c)).await?;
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
    if let Some(id) = header_id {
        if let Ok(v) = HeaderValue::from_str(&id) {
            h.insert("last-event-id", v);
        }
    }
    Ok(res)
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
        self.sub.close();
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
}

impl Feed {
    fn new(reg: Registration, cursor: Option<Position>, expires: Option<Instant>) -> Self {
        Self {
            reg,
            phase: Phase::Start,
            resume: cursor.is_some(),
            last: cursor.unwrap_or(0),
            expiry: expires.map(|at| Box::pin(tokio::time::sleep_until(at))),
        }
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
                for (pos, frame, at) in frames {
                    if pos > self.last {
                        self.last = pos;
                        // Sampled: one update in 16 per subscriber.
                        if pos % 16 == 0 {
                            metrics.delivery_seconds.observe(at.elapsed().as_secs_f64());
                        }
                        out.push(frame);
                    }
                }
                self.reg.sent += (out.len() - before) as u64;
                out.len() > before
            }
        }
    }
}
