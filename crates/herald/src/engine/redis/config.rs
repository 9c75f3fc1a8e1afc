//! How the `redis` engine reaches and uses its server.

use std::time::Duration;

/// The namespace used when none is set.
pub const DEFAULT_NAMESPACE: &str = "herald";

/// How the `redis` engine reaches and uses its server.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://` (TLS).
    pub url: String,
    /// Several hubs share one Redis under different namespaces.
    pub namespace: String,
    /// Keep at most this many updates (trimmed at each append).
    pub max_updates: Option<u64>,
    /// Remove updates older than this (at each append, and every second).
    pub max_age: Option<Duration>,
    /// Replicas that must confirm each append (`WAIT`) before it is
    /// acknowledged; 0 does not wait.
    pub wait_replicas: u32,
    /// The longest any call waits for Redis.
    pub timeout: Duration,
    /// This node's name in the subscriptions directory (default: random).
    pub node: Option<String>,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            max_updates: None,
            max_age: None,
            wait_replicas: 0,
            timeout: Duration::from_secs(2),
            node: None,
        }
    }
}
