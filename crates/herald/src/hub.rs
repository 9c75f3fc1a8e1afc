//! The hub: engine, topic index, authorization and counters in one handle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herald_protocol::Update;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::config::HubConfig;
use crate::engine::{Engine, EngineError, Stored};
use crate::registry::Registry;
use crate::subscriber::Subscriber;

/// Counters the hub keeps; read them with [`Hub::stats`].
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_total: AtomicU64,
    pub connections_current: AtomicU64,
    pub updates_published: AtomicU64,
    pub slow_disconnects: AtomicU64,
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
    registry: Arc<Registry>,
    publisher: Option<Verifier>,
    subscriber: Option<Verifier>,
    next_subscriber: AtomicU64,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
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
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Hub {
    /// Builds a hub over an engine and starts delivery from it.
    ///
    /// # Errors
    /// An invalid setting, such as a key that does not parse.
    pub fn new(config: HubConfig, engine: Arc<dyn Engine>) -> Result<Self, String> {
        config.validate()?;
        let publisher = config
            .publisher_jwt
            .as_ref()
            .map(Verifier::new)
            .transpose()?;
        let subscriber = config.subscriber_key().map(Verifier::new).transpose()?;
        let stats = Arc::new(Stats::default());
        let overflow_stats = stats.clone();
        let registry = Arc::new(Registry::new(Box::new(move |sub: &Subscriber| {
            overflow_stats
                .slow_disconnects
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                subscriber = sub.id,
                "slow subscriber disconnected: queue full"
            );
        })));
        engine.start(registry.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                engine,
                registry,
                publisher,
                subscriber,
                next_subscriber: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                stats,
            }),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.inner.engine
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub(crate) fn publisher_verifier(&self) -> Option<&Verifier> {
        self.inner.publisher.as_ref()
    }

    pub(crate) fn subscriber_verifier(&self) -> Option<&Verifier> {
        self.inner.subscriber.as_ref()
    }

    pub(crate) fn next_subscriber_id(&self) -> u64 {
        self.inner.next_subscriber.fetch_add(1, Ordering::Relaxed)
    }

    /// Cancelled when the hub shuts down; streams end on it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
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
        for u in &mut updates {
            if u.id.is_empty() {
                u.id = generate_id();
            }
            u.validate(self.inner.config.max_topics_per_update)?;
        }
        let n = updates.len() as u64;
        let stored = self.inner.engine.append(updates).await?;
        self.inner
            .stats
            .updates_published
            .fetch_add(n, Ordering::Relaxed);
        Ok(stored)
    }

    /// Ends every stream and closes the engine.
    pub async fn close(&self) -> Result<(), EngineError> {
        self.inner.shutdown.cancel();
        self.inner.engine.close().await
    }
}

/// A fresh update id: a random UUID as an IRI, unique across restarts.
pub fn generate_id() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}
