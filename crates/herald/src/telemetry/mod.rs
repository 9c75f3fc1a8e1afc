//! Telemetry as named events: each function here is one thing that happens
//! in the hub, and emits both its log line and its metrics, so the two never
//! disagree. No label takes unbounded values: no topic names, no subscriber
//! ids on metrics (they go to logs only).

#[cfg(feature = "otlp")]
pub mod otlp;
pub mod traces;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Reason label of authorization failures (a fixed set, see
/// [`crate::auth::AuthError::reason`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// What a refused connection wanted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub kind: &'static str,
}

/// How a connection speaks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

/// Action label of authorization failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub action: &'static str,
    pub reason: &'static str,
}

/// A bridge (its configured name) and what became of one of its events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeLabels {
    pub bridge: String,
    pub outcome: &'static str,
}

/// Every metric of one hub.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub connections_total: Counter,
    /// Event streams parked now: waiting with no task of their own.
    pub parked_streams: Gauge,
    pub subscriptions: Gauge,
    pub published: Counter,
    pub delivered: Counter,
    pub replayed: Counter,
    pub slow_disconnects: Counter,
    /// Times the engine lost history this node had not delivered.
    pub engine_gaps: Counter,
    pub publish_seconds: Histogram,
    pub delivery_seconds: Histogram,
    pub append_seconds: Histogram,
    pub replay_seconds: Histogram,
    pub auth_failures: Family<AuthLabels, Counter>,
    /// Webhook events dropped because the queue was full.
    pub webhooks_dropped: Counter,
    /// New event streams that waited for their turn (`stream_admission_rate`).
    pub paced: Counter,
    /// Connections served by hyper (and by h3), by protocol (`http1`,
    /// `h2c`, `http1-tls`, `h2`, `h3`); event streams on the HTTP/1.1 fast path are
    /// counted in `connections_total`.
    pub accepted: Family<ProtocolLabel, Counter>,
    /// Tasks alive in the runtime serving `/metrics`, read at each scrape
    /// (parked streams hold none): flat over a soak, or something leaks.
    pub tasks: Gauge,
    /// Requests refused at a limit (see [`crate::hub::admission`]).
    pub refused: Family<RefusedLabels, Counter>,
    /// Bridges' events and failures, by bridge and outcome.
    pub bridges: Family<BridgeLabels, Counter>,
    /// Plain mirrors for the dashboard (cheap to read).
    pub published_count: AtomicU64,
    pub delivered_count: AtomicU64,
}

/// Latency buckets from 50 µs to about 13 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 19)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let m = Self {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            parked_streams: Gauge::default(),
            subscriptions: Gauge::default(),
            published: Counter::default(),
            delivered: Counter::default(),
            replayed: Counter::default(),
            slow_disconnects: Counter::default(),
            engine_gaps: Counter::default(),
            publish_seconds: Histogram::new(latency_buckets()),
            delivery_seconds: Histogram::new(latency_buckets()),
            append_seconds: Histogram::new(latency_buckets()),
            replay_seconds: Histogram::new(latency_buckets()),
            auth_failures: Family::default(),
            refused: Family::default(),
            bridges: Family::default(),
            webhooks_dropped: Counter::default(),
            paced: Counter::default(),
            tasks: Gauge::default(),
            accepted: Family::default(),
            published_count: AtomicU64::new(0),
            delivered_count: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open subscriber connections",
            m.connections.clone(),
        );
        registry.register(
            "connections",
            "Subscriber connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "parked_streams",
            "Event streams waiting parked, with no task of their own",
            m.parked_streams.clone(),
        );
        registry.register(
            "subscriptions",
            "Active topic selectors over all subscribers",
            m.subscriptions.clone(),
        );
        registry.register(
            "updates_published",
            "Updates published",
            m.published.clone(),
        );
        registry.register(
            "updates_delivered",
            "Updates queued to live subscribers",
            m.delivered.clone(),
        );
        registry.register(
            "engine_gaps",
            "Times the engine lost history this node had not delivered, ending every stream",
            m.engine_gaps.clone(),
        );
        registry.register(
            "updates_replayed",
            "Updates sent from history on resume",
            m.replayed.clone(),
        );
        registry.register(
            "slow_subscriber_disconnects",
            "Subscribers disconnected because their queue was full",
            m.slow_disconnects.clone(),
        );
        registry.register(
            "publish_duration_seconds",
            "Publish requests, from arrival to answer",
            m.publish_seconds.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Commit to write into a subscriber's stream (sampled)",
            m.delivery_seconds.clone(),
        );
        registry.register(
            "engine_append_duration_seconds",
            "Engine appends, including durable commit",
            m.append_seconds.clone(),
        );
        registry.register(
            "engine_replay_duration_seconds",
            "Engine history reads while replaying",
            m.replay_seconds.clone(),
        );
        registry.register(
            "authorization_failures",
            "Refused tokens and rights, by action and reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "webhooks_dropped",
            "Webhook events dropped because the application fell behind (queue full)",
            m.webhooks_dropped.clone(),
        );
        registry.register(
            "admission_refused",
            "Requests refused at a limit, by kind: streams (503 at max_connections), requests (503, other connections), stream_pacing (503, a turn too far away), streams_per_ip, streams_per_token, subscriptions_per_token, publish_rate_per_ip, publish_rate_per_token (429)",
            m.refused.clone(),
        );
        registry.register(
            "transport_connections",
            "Connections served by the router, by protocol: http1, h2c (HTTP/2 with prior knowledge), http1-tls, h2 (HTTP/2 over TLS), h3 (HTTP/3 over QUIC)",
            m.accepted.clone(),
        );
        registry.register(
            "runtime_tasks",
            "Tasks alive in the hub's async runtime (waiting event streams are parked and hold none)",
            m.tasks.clone(),
        );
        registry.register(
            "admission_paced",
            "New event streams that waited for their turn under stream_admission_rate",
            m.paced.clone(),
        );
        registry.register(
            "bridge_events",
            "Bridges' source events and failures, by bridge and outcome: published, duplicate (a redelivery the hub already held), dead_letter (a bad payload, logged with its reason), source_failure (the source down or refusing the bridge; retried), hub_failure (the hub could not append; retried)",
            m.bridges.clone(),
        );
        Self { registry, ..m }
    }

    /// The Prometheus / OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tasks
                .set(i64::try_from(rt.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    // Named events: each emits its log line and its metrics together.

    pub fn subscriber_connected(
        &self,
        id: u64,
        peer: Option<std::net::SocketAddr>,
        selectors: usize,
        resume: Option<&str>,
    ) {
        self.connections.inc();
        self.connections_total.inc();
        self.subscriptions.inc_by(selectors as i64);
        tracing::info!(subscriber = id, peer = ?peer, selectors, resume, "subscriber connected");
    }

    pub fn subscriber_disconnected(&self, id: u64, selectors: usize, delivered: u64) {
        self.connections.dec();
        self.subscriptions.dec_by(selectors as i64);
        tracing::info!(subscriber = id, delivered, "subscriber disconnected");
    }

    pub fn slow_subscriber(&self, id: u64) {
        self.slow_disconnects.inc();
        tracing::warn!(subscriber = id, "slow subscriber disconnected: queue full");
    }

    /// One event of a bridge, or one failure, by outcome (see
    /// `herald_bridge_events_total`). Bridge names are the operator's,
    /// few and fixed, so the label stays bounded.
    pub fn bridge_event(&self, bridge: &str, outcome: &'static str) {
        self.bridges
            .get_or_create(&BridgeLabels {
                bridge: bridge.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn published(&self, n: u64, took: Duration) {
        self.published.inc_by(n);
        self.published_count.fetch_add(n, Ordering::Relaxed);
        self.append_seconds.observe(took.as_secs_f64());
    }

    pub fn publish_request(&self, took: Duration) {
        self.publish_seconds.observe(took.as_secs_f64());
    }

    pub fn delivered(&self, n: u64) {
        if n > 0 {
            self.delivered.inc_by(n);
            self.delivered_count.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn replayed(&self, n: u64, took: Duration) {
        self.replayed.inc_by(n);
        self.replay_seconds.observe(took.as_secs_f64());
    }

    pub fn auth_failed(&self, action: &'static str, err: &crate::auth::AuthError) {
        self.auth_failures
            .get_or_create(&AuthLabels {
                action,
                reason: err.reason(),
            })
            .inc();
        tracing::info!(action, reason = err.reason(), "authorization failed: {err}");
    }

    pub fn engine_error(&self, what: &'static str, err: &crate::engine::EngineError) {
        tracing::error!(what, "engine error: {err}");
    }

    /// A connection is served by hyper, speaking `protocol`.
    pub fn connection_accepted(&self, protocol: &'static str) {
        self.accepted
            .get_or_create(&ProtocolLabel { protocol })
            .inc();
    }

    /// A request was refused at a limit (`kind`: see
    /// [`crate::hub::admission::Refused::kind`], or `requests`).
    pub fn refused(&self, kind: &'static str) {
        self.refused.get_or_create(&RefusedLabels { kind }).inc();
    }

    /// The engine signalled a gap (the index logs it with its reason).
    pub fn engine_gap(&self) {
        self.engine_gaps.inc();
    }
}
