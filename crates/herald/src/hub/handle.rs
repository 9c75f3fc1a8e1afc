//! The hub handle: engine, topic index, authorization and counters in one
//! cheaply cloneable value, and the native publishing API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use herald_protocol::Update;
use tokio_util::sync::CancellationToken;

use super::active::{ActiveSubscriptions, Subscription};
use super::heartbeat::Expiries;
use super::index::TopicIndex;
use super::stats::StatsFeed;
use super::subscriber::Subscriber;
use crate::auth::oauth::OAuthVerifier;
use crate::auth::{AuthError, Grants, Role, TokenSource, Verifier};
use crate::config::{ConfigError, HubConfig};
use crate::engine::{Engine, EngineError, Stored};
use crate::telemetry::traces;
use crate::telemetry::Metrics;

/// How often a node looks for dead nodes' subscriptions.
pub const REAP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Resolves once a subscription's `active: true` events are appended (or
/// failed to be).
pub(crate) type Opened = Shared<BoxFuture<'static, ()>>;

/// Tokens already verified, by role and text: keep-alive publishers and
/// reconnecting subscribers present the same token again and again, and
/// checking a signature and compiling selectors each time showed in
/// publish profiles. Only the exact same bytes hit, and a hit is still
/// checked against `exp` and `nbf`. Bounded: it starts over when full.
#[derive(Debug, Default)]
struct TokenCache {
    /// Token text -> what it grants with the publisher and subscriber keys.
    map: std::collections::HashMap<Box<str>, [Option<Grants>; 2], foldhash::fast::RandomState>,
}

impl TokenCache {
    /// Most tokens kept.
    const LIMIT: usize = 1024;
    /// Longer tokens are verified every time.
    const MAX_TOKEN: usize = 4096;

    fn get(&self, role: Role, token: &str) -> Option<Grants> {
        self.map.get(token)?[role as usize].clone()
    }

    fn insert(&mut self, role: Role, token: &str, grants: Grants) {
        if token.len() > Self::MAX_TOKEN {
            return;
        }
        if self.map.len() >= Self::LIMIT && !self.map.contains_key(token) {
            self.map.clear();
        }
        self.map.entry(Box::from(token)).or_default()[role as usize] = Some(grants);
    }
}

/// A cheaply cloneable handle to one hub.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: HubConfig,
    engine: Arc<dyn Engine>,
    index: Arc<TopicIndex>,
    publisher: Option<Verifier>,
    subscriber: Option<Verifier>,
    /// Verifies draft-08 access tokens; `None` without trusted issuers.
    oauth: Option<OAuthVerifier>,
    /// Tokens verified recently, by role and text.
    tokens: parking_lot::Mutex<TokenCache>,
    next_subscriber: AtomicU64,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    stats_feed: std::sync::OnceLock<Arc<StatsFeed>>,
    started: std::time::Instant,
    /// The active subscriptions, when subscription events are on.
    subscriptions: Option<ActiveSubscriptions>,
    /// Set once the heartbeat ticker and the expiry timer run.
    ticker: std::sync::OnceLock<()>,
    /// The authorization callback, when configured.
    callback: Option<crate::auth::callback::Callback>,
    /// The webhook sender, started with the first event.
    webhooks: std::sync::OnceLock<super::webhooks::Webhooks>,
    /// Token deadlines of open streams.
    expiries: Arc<Expiries>,
    /// Subscription events being published, awaited before the engine
    /// closes so the last `active: false` events are kept.
    events: tokio_util::task::TaskTracker,
    /// Event streams open now, on every transport, and publish rates.
    admission: super::admission::Admission,
}

impl std::fmt::Debug for dyn Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({})", self.name())
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Invalid(#[from] herald_protocol::UpdateError),
    /// Update `.0` of several is invalid (nothing was appended).
    #[error("update {0}: {1}")]
    InvalidAt(usize, herald_protocol::UpdateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Hub {
    /// Builds a hub over an engine and starts delivery from it.
    ///
    /// # Errors
    /// An invalid setting, such as a key that does not parse.
    pub fn new(config: HubConfig, engine: Arc<dyn Engine>) -> Result<Self, ConfigError> {
        config.validate()?;
        let callback_config = config.auth_callback.clone();
        let admission = super::admission::Admission::new(&config);
        let publisher = config
            .publisher_jwt
            .as_ref()
            .map(Verifier::new)
            .transpose()?;
        let subscriber = config.subscriber_key().map(Verifier::new).transpose()?;
        let oauth = if config.issuers.is_empty() {
            None
        } else {
            Some(OAuthVerifier::new(
                config.resource_identifier(),
                config.public_url.clone(),
                config.issuers.clone(),
            )?)
        };
        let metrics = Arc::new(Metrics::new());
        let overflow_metrics = metrics.clone();
        let index = Arc::new(TopicIndex::new(
            Box::new(move |sub: &Subscriber| overflow_metrics.slow_subscriber(sub.id)),
            metrics.clone(),
        ));
        engine.start(index.clone());
        let subscriptions = config
            .subscriptions
            .then(|| ActiveSubscriptions::new(engine.directory()));
        let hub = Self {
            inner: Arc::new(Inner {
                config,
                engine,
                index,
                publisher,
                subscriber,
                oauth,
                tokens: parking_lot::Mutex::new(TokenCache::default()),
                next_subscriber: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                metrics,
                stats_feed: std::sync::OnceLock::new(),
                started: std::time::Instant::now(),
                subscriptions,
                ticker: std::sync::OnceLock::new(),
                expiries: Arc::default(),
                events: tokio_util::task::TaskTracker::new(),
                admission,
                webhooks: std::sync::OnceLock::new(),
                callback: callback_config.map(crate::auth::callback::Callback::new),
            }),
        };
        hub.start_reaper();
        Ok(hub)
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.inner.engine
    }

    /// The topic index: which subscribers an update reaches.
    pub fn index(&self) -> &Arc<TopicIndex> {
        &self.inner.index
    }

    /// Takes or renews the lease `name` for `holder` in the engine (see
    /// [`Engine::lease`]): among hubs sharing an engine, one at a time
    /// holds it, so something that must run once runs there. A hub of one
    /// node always holds it.
    ///
    /// # Errors
    /// The engine cannot answer now.
    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, EngineError> {
        self.inner.engine.lease(name, holder, ttl).await
    }

    /// Gives the lease `name` back if `holder` holds it (see
    /// [`Engine::release`]), so another hub takes it at once.
    ///
    /// # Errors
    /// The engine cannot answer now (the lease then runs out by itself).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), EngineError> {
        self.inner.engine.release(name, holder).await
    }

    /// The hub's metrics (Prometheus exposition at `/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// How long this hub has been running.
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// The once-a-second samples behind the dashboard, started on first use.
    pub(crate) fn stats_feed(&self) -> Arc<StatsFeed> {
        self.inner
            .stats_feed
            .get_or_init(|| {
                StatsFeed::start(super::stats::Source {
                    metrics: self.inner.metrics.clone(),
                    index: self.inner.index.clone(),
                    engine: self.inner.engine.name(),
                    started: self.inner.started,
                    stop: self.inner.shutdown.clone(),
                })
            })
            .clone()
    }

    /// Starts (once) the hub's timers: the heartbeat ticker and the token
    /// expiry timer (see [`super::heartbeat`]).
    pub(crate) fn start_ticker(&self) {
        self.inner.ticker.get_or_init(|| {
            super::heartbeat::start_ticker(
                self.inner.index.clone(),
                self.inner.shutdown.clone(),
                self.inner.config.heartbeat,
            );
            self.inner.expiries.start(
                Arc::downgrade(&self.inner.index),
                self.inner.shutdown.clone(),
            );
        });
    }

    /// Token deadlines of open streams.
    pub(crate) fn expiries(&self) -> &Expiries {
        &self.inner.expiries
    }

    pub(crate) fn publisher_verifier(&self) -> Option<&Verifier> {
        self.inner.publisher.as_ref()
    }

    pub(crate) fn subscriber_verifier(&self) -> Option<&Verifier> {
        self.inner.subscriber.as_ref()
    }

    /// The draft-08 access token verifier, when issuers are configured.
    pub fn oauth(&self) -> Option<&OAuthVerifier> {
        self.inner.oauth.as_ref()
    }

    /// Verifies a token of either revision: a `typ: at+jwt` access token
    /// against the trusted issuers, anything else as a draft-07 token with
    /// the key of `role`.
    ///
    /// # Errors
    /// An invalid token, or no key for its kind.
    pub fn verify_token(&self, token: &str, role: Role) -> Result<Grants, AuthError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(g) = self.inner.tokens.lock().get(role, token) {
            if g.valid_at(now) {
                return Ok(g);
            }
        }
        let grants = self.verify_uncached(token, role)?;
        self.inner.tokens.lock().insert(role, token, grants.clone());
        Ok(grants)
    }

    fn verify_uncached(&self, token: &str, role: Role) -> Result<Grants, AuthError> {
        if crate::auth::oauth::is_access_token(token) {
            let verifier = self.oauth().ok_or(AuthError::NoKey)?;
            return verifier.verify(token).map(Grants::Access).map_err(|e| {
                tracing::debug!(reason = e.reason(), "access token refused: {e}");
                AuthError::InvalidToken(e.reason().to_owned())
            });
        }
        let verifier = match role {
            Role::Publisher => self.publisher_verifier(),
            Role::Subscriber => self.subscriber_verifier(),
        }
        .ok_or(AuthError::NoKey)?;
        verifier
            .verify(token)
            .map(|c| Grants::Claim(Arc::new(crate::auth::ClaimGrants::new(c))))
    }

    /// Finds and verifies the token of a request. `query_token` is the
    /// draft-07 `authorization` query parameter, when the request may use
    /// one. `Ok(None)` when the request carries no token.
    ///
    /// # Errors
    /// A malformed presentation or an invalid token.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        query_token: Option<&str>,
        role: Role,
    ) -> Result<Option<(Grants, TokenSource)>, AuthError> {
        let cfg = self.config();
        let cookies = [cfg.access_token_cookie.as_str(), cfg.cookie_name.as_str()];
        match crate::auth::extract_token(headers, query_token, &cookies)? {
            // Access tokens never travel in URLs, where logs keep them.
            Some((token, TokenSource::Query)) if crate::auth::oauth::is_access_token(&token) => {
                Err(AuthError::TokenInQuery)
            }
            Some((token, source)) => Ok(Some((self.verify_token(&token, role)?, source))),
            None => Ok(None),
        }
    }

    pub(crate) fn next_subscriber_id(&self) -> u64 {
        self.inner.next_subscriber.fetch_add(1, Ordering::Relaxed)
    }

    /// Cancelled when the hub shuts down; streams end on it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// A place for one more event stream from `ip`, held for as long as
    /// the stream lasts; refused (and counted in
    /// `herald_admission_refused_total`) at `max_connections` or
    /// `max_streams_per_ip`. Pacing comes later, in [`Hub::subscribe`],
    /// once the request is known to be valid.
    pub(crate) fn admit_stream(
        &self,
        ip: Option<std::net::IpAddr>,
    ) -> Result<super::admission::StreamPermit, super::admission::Refused> {
        self.inner
            .admission
            .stream(ip)
            .inspect_err(|r| self.inner.metrics.refused(r.kind()))
    }

    /// Event streams and sockets holding a place in `max_connections`.
    pub(crate) fn open_streams(&self) -> usize {
        self.inner.admission.open_streams()
    }

    /// Waits for this new stream's turn under `stream_admission_rate`.
    pub(crate) async fn pace_stream(&self) -> Result<(), super::admission::Refused> {
        let wait = self
            .inner
            .admission
            .pace()
            .inspect_err(|r| self.inner.metrics.refused(r.kind()))?;
        if !wait.is_zero() {
            self.inner.metrics.paced.inc();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.inner.shutdown.cancelled() => {}
            }
        }
        Ok(())
    }

    /// Whether any per-token limit is set (else tokens are not counted).
    pub(crate) fn limits_tokens(&self) -> bool {
        let cfg = &self.inner.config;
        cfg.max_streams_per_token > 0 || cfg.max_subscriptions_per_token > 0
    }

    /// One more stream of the token `key`, holding `selectors` selectors,
    /// within `max_streams_per_token` and `max_subscriptions_per_token`.
    pub(crate) fn admit_token(
        &self,
        key: u64,
        selectors: usize,
    ) -> Result<super::admission::TokenHold, super::admission::Refused> {
        self.inner
            .admission
            .token(key, selectors)
            .inspect_err(|r| self.inner.metrics.refused(r.kind()))
    }

    /// What the per-token limits know a request's token by: a hash of
    /// its text (`None` without a token).
    pub(crate) fn token_key(
        &self,
        headers: &http::HeaderMap,
        query_token: Option<&str>,
    ) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let cfg = self.config();
        let cookies = [cfg.access_token_cookie.as_str(), cfg.cookie_name.as_str()];
        let (token, _) = crate::auth::extract_token(headers, query_token, &cookies).ok()??;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        token.hash(&mut h);
        Some(h.finish())
    }

    /// The authorization callback, when configured.
    pub(crate) fn callback(&self) -> Option<&crate::auth::callback::Callback> {
        self.inner.callback.as_ref()
    }

    /// Queues a webhook event when `webhook_url` is set (never waits).
    pub(crate) fn webhook(
        &self,
        kind: &'static str,
        subscriber: u64,
        topics: Vec<String>,
        peer: Option<std::net::SocketAddr>,
    ) {
        let Some(url) = &self.inner.config.webhook_url else {
            return;
        };
        let hooks = self.inner.webhooks.get_or_init(|| {
            super::webhooks::Webhooks::start(
                url.clone(),
                self.inner.config.webhook_secret.clone(),
                self.inner.metrics.webhooks_dropped.clone(),
                self.inner.shutdown.clone(),
            )
        });
        hooks.send(kind, subscriber, topics, peer.map(|p| p.ip().to_string()));
    }

    /// Takes `n` updates from the publish rates of `ip` and `token`.
    pub(crate) fn admit_publish(
        &self,
        ip: Option<std::net::IpAddr>,
        token: Option<u64>,
        n: usize,
    ) -> Result<(), super::admission::Refused> {
        self.inner.admission.publish(ip, token, n).inspect_err(|r| {
            self.inner.metrics.refused(r.kind());
        })
    }

    /// The client's address of a connection from `peer` (see
    /// [`super::admission`]).
    pub(crate) fn client_ip(
        &self,
        peer: std::net::IpAddr,
        headers: &http::HeaderMap,
    ) -> std::net::IpAddr {
        self.inner.admission.client_ip(peer, headers)
    }

    /// Validates updates, gives an id to those without one, appends them in
    /// order and returns them once the engine committed and delivered them.
    /// This is the native Rust publishing API.
    ///
    /// # Errors
    /// An invalid update (nothing is appended) or an engine failure.
    pub async fn publish(
        &self,
        mut updates: Vec<Update>,
    ) -> Result<Vec<Arc<Stored>>, PublishError> {
        let several = updates.len() > 1;
        for (i, u) in updates.iter_mut().enumerate() {
            if u.id.is_empty() {
                u.id = generate_id();
            }
            u.validate(self.inner.config.max_topics_per_update)
                .map_err(|e| {
                    if several {
                        PublishError::InvalidAt(i, e)
                    } else {
                        PublishError::Invalid(e)
                    }
                })?;
        }
        let n = updates.len() as u64;
        let started = std::time::Instant::now();
        // In a sampled trace (the caller's context): an `append` span,
        // with a `deliver` span per update as this node fans it out.
        let parent = opentelemetry::Context::current();
        let append = traces::append_span(&parent, self.inner.engine.name(), updates.len());
        let watching = append.as_ref().map(|cx| {
            use opentelemetry::trace::TraceContextExt;
            let ids = updates.iter().map(|u| u.id.clone()).collect();
            self.inner
                .index
                .traced()
                .watch(ids, cx.span().span_context())
        });
        let result = self.inner.engine.append(updates).await;
        drop(watching);
        if let Some(cx) = &append {
            traces::end_append(cx, result.as_ref().err().map(|e| e as _));
        }
        let stored = result.inspect_err(|e| {
            self.inner.metrics.engine_error("append", e);
        })?;
        self.inner.metrics.published(n, started.elapsed());
        Ok(stored)
    }

    /// Publishes subscription events, retrying for a few seconds while the
    /// engine is unavailable. The ids are fixed before the first try, so
    /// a try that was stored but not acknowledged makes the next one a
    /// duplicate (`409`), which counts as done: never a second copy.
    async fn publish_event(&self, mut updates: Vec<Update>) -> Result<(), PublishError> {
        for u in &mut updates {
            if u.id.is_empty() {
                u.id = generate_id();
            }
        }
        let mut pause = std::time::Duration::from_millis(100);
        for attempt in 0.. {
            match self.publish(updates.clone()).await {
                Ok(_) | Err(PublishError::Engine(EngineError::DuplicateId(_))) if attempt > 0 => {
                    return Ok(())
                }
                Ok(_) => return Ok(()),
                Err(PublishError::Engine(EngineError::Unavailable(_))) if attempt < 5 => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The active subscriptions; `None` when subscription events are off.
    pub fn subscriptions(&self) -> Option<&ActiveSubscriptions> {
        self.inner.subscriptions.as_ref()
    }

    /// Records a subscriber connection and publishes its `active: true`
    /// events in the background (a connect never waits for a commit). The
    /// returned future resolves once they are appended.
    pub(crate) fn open_subscription(
        &self,
        connection: u64,
        sub: Arc<Subscription>,
    ) -> Option<Opened> {
        let table = self.inner.subscriptions.as_ref()?;
        table.insert(connection, sub.clone());
        let hub = self.clone();
        let task = self.inner.events.spawn(async move {
            if let Err(e) = hub.publish_event(sub.events(true)).await {
                tracing::warn!(subscriber = %sub.subscriber, "subscription event not published: {e}");
            }
        });
        Some(task.map(|_| ()).boxed().shared())
    }

    /// Forgets a subscriber connection and publishes its `active: false`
    /// events, after its `active: true` ones.
    pub(crate) fn close_subscription(&self, connection: u64, opened: Option<Opened>) {
        let Some(sub) = self
            .inner
            .subscriptions
            .as_ref()
            .and_then(|t| t.remove(connection))
        else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let hub = self.clone();
        self.inner.events.spawn(async move {
            if let Some(o) = opened {
                o.await;
            }
            if let Err(e) = hub.publish_event(sub.events(false)).await {
                // At shutdown the engine may already be closed.
                tracing::debug!(subscriber = %sub.subscriber, "subscription end not published: {e}");
            }
        });
    }

    /// Ends every stream, lets the subscription events still being
    /// published finish (for up to the shutdown grace period), and closes
    /// the engine.
    /// On a shared engine with subscription events on, publishes every
    /// [`REAP_INTERVAL`] the `active: false` events of the subscriptions of
    /// nodes that died (each dead node's are handed to one node only).
    fn start_reaper(&self) {
        let Some(table) = self.subscriptions() else {
            return;
        };
        if !table.is_shared() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let hub = Arc::downgrade(&self.inner);
        let stop = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            // Claimed but not yet published (the engine failed): retried
            // at the next tick; bounded, the oldest dropped first.
            let mut pending: std::collections::VecDeque<super::active::Subscription> =
                std::collections::VecDeque::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(inner) = hub.upgrade() else { return };
                let hub = Hub { inner };
                let Some(table) = hub.subscriptions() else {
                    return;
                };
                match table.reap().await {
                    Ok(dead) => pending.extend(dead),
                    Err(e) => tracing::debug!("dead nodes not reaped: {e}"),
                }
                while pending.len() > 100_000 {
                    pending.pop_front();
                }
                while let Some(sub) = pending.pop_front() {
                    if let Err(e) = hub.publish_event(sub.events(false)).await {
                        tracing::warn!(subscriber = %sub.subscriber, "end of a dead node's subscription not published yet: {e}");
                        pending.push_front(sub);
                        break;
                    }
                }
            }
        });
    }

    pub async fn close(&self) -> Result<(), EngineError> {
        self.inner.shutdown.cancel();
        self.inner.events.close();
        let grace = self.inner.config.shutdown_grace;
        if tokio::time::timeout(grace, self.inner.events.wait())
            .await
            .is_err()
        {
            tracing::warn!("subscription events still pending at shutdown");
        }
        self.inner.engine.close().await
    }
}

/// A fresh update id: a UUIDv7 as an IRI, unique across restarts. Time-ordered
/// ids keep the local engine's id index append-mostly, which roughly doubles
/// durable publish throughput over random UUIDs.
pub fn generate_id() -> String {
    format!("urn:uuid:{}", uuid::Uuid::now_v7())
}
