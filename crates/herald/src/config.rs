//! The hub's runtime settings.
//!
//! Names follow Mercure's directives (`publisher_jwt`, `subscriber_jwt`,
//! `anonymous`, `cors_origins`, `publish_origins`, `heartbeat`) so Mercure
//! operators feel at home. The CLI fills this from flags, `HERALD_*`
//! variables and a TOML file; embedders build it in code.

use std::time::Duration;

use crate::auth::KeyConfig;

/// Settings of one hub. [`HubConfig::default`] is a safe development setup:
/// no keys (publishing refused), anonymous subscribers allowed.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Key that verifies publisher tokens.
    pub publisher_jwt: Option<KeyConfig>,
    /// Key that verifies subscriber tokens; the publisher key when unset.
    pub subscriber_jwt: Option<KeyConfig>,
    /// Allow subscribers without a token (they receive public updates only).
    pub anonymous: bool,
    /// Origins allowed by CORS (`*` for any).
    pub cors_origins: Vec<String>,
    /// Origins allowed to publish with cookie authorization (`*` for any).
    pub publish_origins: Vec<String>,
    /// Idle time after which a heartbeat comment is sent (one hub-wide
    /// ticker sends it after between 3/4 of this and all of it); zero
    /// disables it.
    pub heartbeat: Duration,
    /// `retry:` sent at the start of every stream, in milliseconds.
    pub retry: Option<u64>,
    /// Largest accepted publish body, in bytes (`413` beyond).
    pub max_body_bytes: usize,
    /// Most topics in one update.
    pub max_topics_per_update: usize,
    /// Most selectors in one subscription request.
    pub max_selectors: usize,
    /// Per-connection queue bound, in frames. A subscriber whose queue is
    /// full is disconnected and resumes from history.
    pub queue_frames: usize,
    /// Per-connection queue bound, in bytes.
    pub queue_bytes: usize,
    /// Name of the authorization cookie.
    pub cookie_name: String,
    /// Most simultaneous connections (a permit is taken before `accept`).
    pub max_connections: usize,
    /// How long shutdown waits for connections to end.
    pub shutdown_grace: Duration,
    /// Updates per history read while replaying.
    pub replay_batch: usize,
    /// Who may read `/metrics`.
    pub metrics: MetricsAccess,
    /// Development mode: the dashboard's admin data needs no token.
    pub dev_mode: bool,
    /// Subscription events and the subscriptions API (Mercure's "active
    /// subscriptions"): each connect and disconnect is published as a
    /// private update, and `/.well-known/mercure/subscriptions` lists them.
    pub subscriptions: bool,
}

/// Access to `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MetricsAccess {
    /// Not served (`404`).
    Off,
    /// Served to anyone (the usual setup behind a private network).
    #[default]
    Open,
    /// Served with `Authorization: Bearer <token>` only.
    Token(String),
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            publisher_jwt: None,
            subscriber_jwt: None,
            anonymous: true,
            cors_origins: Vec::new(),
            publish_origins: Vec::new(),
            heartbeat: Duration::from_secs(25),
            retry: None,
            max_body_bytes: 1024 * 1024,
            max_topics_per_update: 64,
            max_selectors: 64,
            queue_frames: 4096,
            queue_bytes: 4 * 1024 * 1024,
            cookie_name: "mercureAuthorization".to_owned(),
            max_connections: 19_000,
            shutdown_grace: Duration::from_secs(5),
            replay_batch: 1024,
            metrics: MetricsAccess::Open,
            dev_mode: false,
            subscriptions: false,
        }
    }
}

impl HubConfig {
    /// The key that verifies subscribers.
    pub fn subscriber_key(&self) -> Option<&KeyConfig> {
        self.subscriber_jwt.as_ref().or(self.publisher_jwt.as_ref())
    }

    /// Checks values that would make the hub misbehave.
    ///
    /// # Errors
    /// A one-line description of the first bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes must be positive".into());
        }
        if self.queue_frames == 0 || self.queue_bytes == 0 {
            return Err("queue_frames and queue_bytes must be positive".into());
        }
        if self.max_selectors == 0 || self.max_topics_per_update == 0 {
            return Err("max_selectors and max_topics_per_update must be positive".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be positive".into());
        }
        for k in [&self.publisher_jwt, &self.subscriber_jwt]
            .into_iter()
            .flatten()
        {
            crate::auth::Verifier::new(k)?;
        }
        Ok(())
    }
}
