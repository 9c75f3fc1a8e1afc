//! How the `nats` engine reaches and uses its server.

use std::time::Duration;

/// The namespace used when none is set.
pub const DEFAULT_NAMESPACE: &str = "herald";

/// How the `nats` engine reaches and uses its server.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `nats://[user:password@]host[:port]` (TLS is not in this build: use
    /// it on a trusted network or through a local tunnel).
    pub url: String,
    /// Several hubs share one NATS account under different namespaces:
    /// each has its own streams.
    pub namespace: String,
    /// Keep at most this many updates (whole append groups are kept, so a
    /// few more may stay; see the module documentation).
    pub max_updates: Option<u64>,
    /// Remove updates older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many bytes in the log stream (its `MaxBytes`).
    pub max_bytes: Option<u64>,
    /// The longest any call waits for NATS.
    pub timeout: Duration,
    /// This node's name in the subscriptions directory (default: random).
    pub node: Option<String>,
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            max_updates: None,
            max_age: None,
            max_bytes: None,
            timeout: Duration::from_secs(2),
            node: None,
        }
    }
}
