//! How the `postgres` engine reaches and uses its server.

use std::time::Duration;

/// The namespace used when none is set.
pub const DEFAULT_NAMESPACE: &str = "herald";

/// How the `postgres` engine reaches and uses its server.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user[:password]@host[:port]/db` (TLS is not in this
    /// build: use it on a trusted network or through a local tunnel).
    pub url: String,
    /// The PostgreSQL schema herald's tables live in: several hubs share
    /// one database under different namespaces.
    pub namespace: String,
    /// Keep at most this many updates.
    pub max_updates: Option<u64>,
    /// Remove updates older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many bytes of update data.
    pub max_bytes: Option<u64>,
    /// The longest any call waits for PostgreSQL.
    pub timeout: Duration,
    /// How often a node reads the log when no notification woke it.
    pub poll_interval: Duration,
    /// This node's name in the subscriptions directory (default: random).
    pub node: Option<String>,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            max_updates: None,
            max_age: None,
            max_bytes: None,
            timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(100),
            node: None,
        }
    }
}
