//! The replay→live feed of one subscription.
//!
//! A subscription registers for live updates *before* it reads history,
//! then drops queued live updates whose position it already replayed: no
//! gap and no duplicate, however busy the publishers are during the
//! connect. [`Hub::subscribe`] does the registering and looks up the resume
//! point; the [`Feed`] it returns yields the stream's frames in order: the
//! first flush, history, then live updates and heartbeats, until shutdown,
//! token expiry, a disconnect or a queue overflow ends it.
//!
//! Every transport streams a `Feed`, so these rules hold the same on each:
//! it knows no socket and no HTTP, only frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_protocol::matcher::Matcher;
use herald_protocol::update::EARLIEST;
use herald_protocol::Selector;
use tokio_util::sync::CancellationToken;

use super::active::Subscription;
use super::handle::{Hub, Opened};
use super::subscriber::{Drain, Subscriber};
use crate::auth::Grants;
use crate::engine::{EngineError, Position, Stored};

/// The protocol revision a subscription speaks: draft-07 names topics with
/// `topic`, draft-08 (Mercure 1.0) with `match` parameters. Each revision's
/// subscribers receive its own subscription events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    Draft07,
    Draft08,
}

/// A subscription as its transport parsed and authorized it.
#[derive(Debug)]
pub struct SubscribeRequest {
    pub revision: Revision,
    /// What it listens to (at least one).
    pub selectors: Vec<Selector>,
    /// Draft-08: the matchers as requested, for subscription events.
    pub matchers: Vec<Matcher>,
    /// What the subscriber's token grants; `None` for anonymous.
    pub grants: Option<Grants>,
    /// The id to resume after (`earliest` for all retained history).
    pub last_event_id: Option<String>,
    /// The client asked (`gap_event=1`) to learn inside the stream when
    /// its `last_event_id` is not in history: the stream then opens with
    /// a [`GAP_EVENT`] event, which `onmessage` handlers never see.
    pub gap_event: bool,
    /// The client's address, for the logs.
    pub peer: Option<SocketAddr>,
    /// Cancelled when the subscriber's queue overflows, for a transport
    /// that cannot otherwise drop its connection at once.
    pub cancel: Option<CancellationToken>,
    /// What the per-token limits know its token by (see
    /// [`super::admission`]); `None` without a token.
    pub token: Option<u64>,
}

/// Why a subscription was not opened.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("the hub is shutting down")]
    ShuttingDown,
    /// Past `max_streams_per_token` or `max_subscriptions_per_token`.
    #[error("refused: {}", .0.kind())]
    Refused(super::admission::Refused),
    /// The resume point could not be looked up.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Hub {
    /// Registers a subscription for live updates, then looks up its resume
    /// point, and returns its feed with the id the replay starts after
    /// (`earliest` when the id is unknown, already removed, or names a
    /// private update the subscriber may not read: never a silent gap).
    ///
    /// # Errors
    /// The hub is shutting down, or the engine cannot resolve the id.
    pub async fn subscribe(
        &self,
        req: SubscribeRequest,
    ) -> Result<(Feed, Option<String>), SubscribeError> {
        let cfg = self.config();
        let hold = match req.token {
            Some(key) => Some(Box::new(
                self.admit_token(key, req.selectors.len())
                    .map_err(SubscribeError::Refused)?,
            )),
            None => None,
        };
        // Only a request that passed every check waits for its turn, so
        // refused ones never hold back the others.
        self.pace_stream().await.map_err(SubscribeError::Refused)?;
        let allowed = req.grants.as_ref().and_then(Grants::subscribe_rule);
        // The stream ends when its token expires, or at its lifetime.
        let lifetime = cfg.max_stream_lifetime.and_then(|max| {
            std::time::Instant::now().checked_add(max.mul_f64(0.8 + 0.2 * rand::random::<f64>()))
        });
        let expires = req
            .grants
            .as_ref()
            .and_then(Grants::exp)
            .and_then(deadline)
            .into_iter()
            .chain(lifetime)
            .min();
        let sub = Arc::new(
            Subscriber::new(
                self.next_subscriber_id(),
                req.selectors,
                allowed,
                req.last_event_id.is_some(),
                cfg.queue_frames,
                cfg.queue_bytes,
                req.cancel,
            )
            .with_draft08(req.revision == Revision::Draft08),
        );
        // Register first, then look up the resume point: see the module docs.
        self.start_ticker();
        self.index().insert(sub.clone());
        if let Some(at) = expires {
            self.expiries().insert(at, sub.id);
        }
        let mut guard = Registration {
            hub: self.clone(),
            sub: sub.clone(),
            sent: 0,
            opened: None,
            counted: false,
            expires,
            _hold: hold,
        };
        // The ticker closes every subscriber when shutdown begins; one that
        // registered after that would never be closed.
        if self.shutdown_token().is_cancelled() {
            return Err(SubscribeError::ShuttingDown);
        }

        let (cursor, resumed_from) = match &req.last_event_id {
            None => (None, None),
            Some(id) if id == EARLIEST => (Some(0), Some(EARLIEST.to_owned())),
            Some(id) => match self.engine().resolve(id).await? {
                // The id of a private update the token may not read is
                // treated as unknown: answering with it would confirm that
                // it exists.
                Some(pos) if !visible_at(self, &sub, pos).await => {
                    (Some(0), Some(EARLIEST.to_owned()))
                }
                Some(pos) => (Some(pos), Some(id.clone())),
                // Unknown or already removed by retention: replay
                // everything retained and say so with `earliest`.
                None => (Some(0), Some(EARLIEST.to_owned())),
            },
        };

        if self.subscriptions().is_some() {
            let subscription = match req.revision {
                Revision::Draft07 => Subscription::draft07(
                    sub.selectors
                        .iter()
                        .map(|s| {
                            let payload = payload_for(req.grants.as_ref(), s.as_str());
                            (s.as_str().to_owned(), payload)
                        })
                        .collect(),
                ),
                Revision::Draft08 => Subscription::draft08(
                    req.matchers
                        .iter()
                        .map(|m| {
                            let payload = payload_for(req.grants.as_ref(), m.as_str());
                            (m.match_type(), m.as_str().to_owned(), payload)
                        })
                        .collect(),
                ),
            };
            guard.opened = self.open_subscription(sub.id, Arc::new(subscription));
        }

        self.metrics().subscriber_connected(
            sub.id,
            req.peer,
            sub.selectors.len(),
            req.last_event_id.as_deref(),
        );
        guard.counted = true;
        if cfg.webhook_url.is_some() {
            let topics: Vec<String> = sub
                .selectors
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect();
            self.webhook("connect", sub.id, topics.clone(), req.peer);
            for t in topics {
                self.webhook("subscribe", sub.id, vec![t], req.peer);
            }
        }
        let mut feed = Feed::new(guard, cursor);
        if req.gap_event && resumed_from.as_deref() == Some(EARLIEST) {
            if let Some(asked) = req.last_event_id.filter(|id| id != EARLIEST) {
                feed.gap = Some(asked);
            }
        }
        Ok((feed, resumed_from))
    }
}

/// The type of the event that opens a stream whose resume id was not in
/// history (for a client that asked with `gap_event=1`). A named event:
/// `EventSource.onmessage` never sees it; `addEventListener` does.
pub const GAP_EVENT: &str = "herald-gap";

/// The gap event for a resume from `asked`: no `id` field, so the client's
/// last event id stays what it was until the replay moves it.
fn gap_frame(asked: &str) -> Bytes {
    let data = serde_json::json!({
        "last_event_id": asked,
        "resumed_from": EARLIEST,
        "reason": "this id is not in history (never published here, or removed by retention or a lost engine log): updates after it may have been missed; all retained history follows",
    })
    .to_string();
    herald_protocol::sse::encode(&herald_protocol::sse::EventFields {
        id: None,
        event: Some(GAP_EVENT),
        data: &data,
        retry: None,
    })
}

/// The payload a subscription event carries for one selector: the
/// draft-07 token's `mercure.payload`, or that of the first draft-08
/// `subscribe` detail covering the selector.
fn payload_for(grants: Option<&Grants>, selector: &str) -> Option<serde_json::Value> {
    match grants {
        Some(Grants::Claim(c)) => c.claims.mercure.payload.clone(),
        Some(Grants::Access(a)) => a.authorization.payload_for(selector).cloned(),
        None => None,
    }
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
    /// The token's expiry, as the hub's expiry timer has it.
    expires: Option<std::time::Instant>,
    /// Its share of its token's limits (boxed: a stream without limits
    /// carries one word).
    _hold: Option<Box<super::admission::TokenHold>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Its connection is ending here: no flusher to wake.
        let _ = self.sub.close();
        self.hub.index().remove(&self.sub);
        if let Some(at) = self.expires {
            self.hub.expiries().remove(at, self.sub.id);
        }
        if self.hub.subscriptions().is_some() {
            self.hub.close_subscription(self.sub.id, self.opened.take());
        }
        if self.counted && self.hub.config().webhook_url.is_some() {
            let topics = self
                .sub
                .selectors
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect();
            self.hub.webhook("disconnect", self.sub.id, topics, None);
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

/// The moment a token whose `exp` is `exp` (seconds since the epoch)
/// expires.
pub(crate) fn deadline(exp: u64) -> Option<std::time::Instant> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // An `exp` beyond what the clock counts (centuries away) is never.
    std::time::Instant::now().checked_add(Duration::from_secs(exp.saturating_sub(now)))
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

/// A stream's `retry:`: the configured one, or with `retry_jitter` one drawn
/// at random above it (from 3 s when none is configured, browsers' own
/// default), so clients cut off together reconnect apart.
fn retry(cfg: &crate::config::HubConfig) -> Option<u64> {
    let jitter = u64::try_from(cfg.retry_jitter.as_millis()).unwrap_or(u64::MAX);
    if jitter == 0 {
        return cfg.retry;
    }
    let base = cfg.retry.unwrap_or(3000);
    Some(base.saturating_add(rand::Rng::gen_range(&mut rand::thread_rng(), 0..=jitter)))
}

/// What a [`Feed`] hands its transport. An event-stream transport takes
/// the encoded frames (`Vec<Bytes>`, SSE); a transport with a message
/// format of its own (WebSocket) takes the updates themselves.
pub trait FeedSink {
    /// The stream opens, with the `retry` it should tell its client.
    fn open(&mut self, retry: Option<u64>);
    /// The client asked to be told when its resume id `asked` is not in
    /// history (`gap_event=1`), and it is not: all retained history follows.
    fn gap(&mut self, asked: &str);
    /// An update, in position order.
    fn update(&mut self, stored: &Arc<Stored>);
    /// Nothing was sent for a while: a comment keeps proxies from timing
    /// the stream out.
    fn heartbeat(&mut self);
}

/// The `text/event-stream` frames of a feed.
impl FeedSink for Vec<Bytes> {
    fn open(&mut self, retry: Option<u64>) {
        self.push(match retry {
            Some(ms) => Bytes::from(format!("retry:{ms}\n\n")),
            None => Bytes::from_static(b":\n\n"),
        });
    }

    fn gap(&mut self, asked: &str) {
        self.push(gap_frame(asked));
    }

    fn update(&mut self, stored: &Arc<Stored>) {
        self.push(stored.frame.clone());
    }

    fn heartbeat(&mut self) {
        self.push(Bytes::from_static(b":\n\n"));
    }
}

/// The frames of one subscription, in order: a first flush, then history
/// from the resume point, then live updates, with heartbeats when idle.
/// It ends when its subscriber is closed: at shutdown (the ticker), at
/// token expiry (the expiry timer), on a disconnect or a queue overflow.
///
/// [`Feed::next`] is cancel-safe: its state changes only after an await
/// has completed, so a caller may race it against other events.
pub struct Feed {
    reg: Registration,
    phase: Phase,
    /// Replay history after the first flush.
    resume: bool,
    /// Position of the last update handled in order.
    last: Position,
    /// [`Feed::next`] returns when it reaches the live phase with nothing
    /// queued, so the caller can park the connection.
    parking: bool,
    /// The resume id that was not in history, when the client asked to
    /// be told (see [`FeedSink::gap`]).
    gap: Option<String>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("subscriber", &self.reg.sub.id)
            .field("phase", &self.phase)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Feed {
    fn new(reg: Registration, cursor: Option<Position>) -> Self {
        Self {
            reg,
            phase: Phase::Start,
            resume: cursor.is_some(),
            last: cursor.unwrap_or(0),
            parking: false,
            gap: None,
        }
    }

    /// Makes [`Feed::next`] return instead of waiting in the live phase
    /// (so that its transport can park the stream, see [`super::wake`]).
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

    /// The live frames queued now, without waiting; `false` when there
    /// are none or the feed ended ([`Feed::is_done`]).
    pub fn take_live<S: FeedSink>(&mut self, out: &mut S) -> bool {
        self.phase == Phase::Live && self.take_queued(out)
    }

    /// Polls for live frames (the history is sent, [`Feed::is_live`]):
    /// `Ready(true)` with frames handed to `out` (or a heartbeat, which a
    /// sink may ignore), `Ready(false)` once the feed ended; otherwise the
    /// task is woken when there is more. A transport that polls its
    /// streams itself (a socket carrying several) calls this rather than
    /// holding a [`Feed::next`] future per stream.
    pub fn poll_live<S: FeedSink>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        out: &mut S,
    ) -> std::task::Poll<bool> {
        loop {
            if self.phase != Phase::Live {
                return std::task::Poll::Ready(false);
            }
            if self.take_queued(out) {
                return std::task::Poll::Ready(true);
            }
            if self.phase == Phase::Done {
                return std::task::Poll::Ready(false);
            }
            std::task::ready!(self.reg.sub.poll_ready(cx));
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

    /// Hands the next frames to `out` (the encoded frames, for a
    /// `Vec<Bytes>`); `false` when the feed has ended.
    pub async fn next<S: FeedSink>(&mut self, out: &mut S) -> bool {
        let hub = self.reg.hub.clone();
        loop {
            match self.phase {
                Phase::Done => return false,
                Phase::Start => {
                    out.open(retry(hub.config()));
                    if let Some(asked) = self.gap.take() {
                        out.gap(&asked);
                    }
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
                    let mut replayed = 0;
                    for s in &batch {
                        self.last = s.position;
                        if self.reg.sub.wants(s) {
                            out.update(s);
                            replayed += 1;
                        }
                    }
                    self.reg.sent += replayed;
                    hub.metrics().replayed(replayed, took);
                    if replayed > 0 {
                        return true;
                    }
                }
                Phase::Live => {
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
                    std::future::poll_fn(|cx| sub.poll_ready(cx)).await;
                }
            }
        }
    }

    /// Moves the queued live frames not yet sent to `out`.
    fn take_queued<S: FeedSink>(&mut self, out: &mut S) -> bool {
        match self.reg.sub.drain() {
            Drain::Closed => {
                self.phase = Phase::Done;
                false
            }
            Drain::Empty => false,
            Drain::Heartbeat => {
                out.heartbeat();
                true
            }
            Drain::Frames(frames) => {
                let metrics = self.reg.hub.metrics();
                let mut sent = 0;
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
                        out.update(&stored);
                        sent += 1;
                    }
                }
                self.reg.sent += sent;
                sent > 0
            }
        }
    }
}
