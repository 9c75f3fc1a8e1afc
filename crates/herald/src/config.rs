//! The hub's runtime settings.
//!
//! Names follow Mercure's directives (`publisher_jwt`, `subscriber_jwt`,
//! `anonymous`, `cors_origins`, `publish_origins`, `heartbeat`) so Mercure
//! operators feel at home. The CLI fills this from flags, `HERALD_*`
//! variables and a TOML file; embedders build it in code.

use std::time::Duration;

use crate::auth::oauth::{IssuerConfig, IssuerError};
use crate::auth::{KeyConfig, KeyError};

/// The public URL used when none is configured.
pub const DEFAULT_PUBLIC_URL: &str = "http://localhost/.well-known/mercure";

/// The default name of the draft-08 access token cookie (Mercure 1.0's).
pub const DEFAULT_ACCESS_TOKEN_COOKIE: &str = "__Secure-mercure_access_token";

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
    /// Spreads reconnections: each stream's `retry:` is drawn at random
    /// from `retry` (3 s, browsers' own default, when unset) to `retry`
    /// plus this, so clients cut off together (a restart) come back apart.
    /// Zero: every stream gets `retry` as it is.
    pub retry_jitter: Duration,
    /// Largest accepted publish body, in bytes (`413` beyond); in a
    /// streaming publish (`application/x-ndjson`), the largest line.
    pub max_body_bytes: usize,
    /// A streaming publish that sends nothing for this long is ended.
    /// Zero: no limit.
    pub publish_stream_idle: Duration,
    /// Most updates one streaming publish may carry, refused ones
    /// counting.
    pub publish_stream_updates: usize,
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
    /// The authorization callback for requests without a token (see
    /// [`crate::auth::callback`]); `None`: JWTs only.
    pub auth_callback: Option<crate::auth::callback::CallbackConfig>,
    /// Where herald posts `connect`, `subscribe` and `disconnect` events
    /// (see [`crate::hub::webhooks`]); `None`: no webhooks.
    pub webhook_url: Option<url::Url>,
    /// The key of the webhook requests' `Herald-Signature`.
    pub webhook_secret: Option<String>,
    /// The longest an event stream lasts: each stream is closed after 80
    /// to 100 % of it, drawn at random, so clients that connected together
    /// (after a deploy) leave, and spread over other nodes, apart. The
    /// client resumes with `Last-Event-ID`. `None`: streams last.
    pub max_stream_lifetime: Option<Duration>,
    /// Most event streams open at once from one client address (`429`
    /// beyond); 0 for no limit.
    pub max_streams_per_ip: usize,
    /// Most event streams open at once with one token (`429` beyond); 0
    /// for no limit.
    pub max_streams_per_token: usize,
    /// Most selectors (topics, URL patterns) the open streams of one token
    /// hold together (`429` beyond); 0 for no limit.
    pub max_subscriptions_per_token: usize,
    /// New event streams started per second, in bursts of as many; those
    /// past it wait for their turn (up to 30 s, `503` with `Retry-After`
    /// beyond). 0: no pacing.
    pub stream_admission_rate: u32,
    /// Proxies whose `X-Forwarded-For` names the client (see
    /// [`crate::hub::admission`]).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Updates per second one client address may publish (a burst of as
    /// many); 0 for no limit.
    pub publish_rate_per_ip: u32,
    /// Updates per second one token may publish (a burst of as many); 0
    /// for no limit.
    pub publish_rate_per_token: u32,
    /// Most simultaneous event streams. Other connections (publishing,
    /// health checks, the API) have a pool of their own, as large, so they
    /// get through while subscribers are at their limit. A connection
    /// past a limit is answered `503` with `Retry-After` at once.
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
    /// The hub's public URL: its `/.well-known/mercure` endpoint as clients
    /// reach it. Relative URL patterns and topics resolve against it, the
    /// reserved namespace is checked against it, and the protected resource
    /// metadata names it.
    pub public_url: url::Url,
    /// The OAuth resource identifier that draft-08 access tokens must carry
    /// in `aud`; the public URL when unset.
    pub resource: Option<String>,
    /// Issuers trusted for draft-08 access tokens, each with its own keys.
    pub issuers: Vec<IssuerConfig>,
    /// Name of the draft-08 access token cookie.
    pub access_token_cookie: String,
    /// Issuer identifiers of OAuth authorization servers to advertise in
    /// the protected resource metadata (each must also be a trusted
    /// issuer). Empty when tokens are self-issued.
    pub authorization_servers: Vec<String>,
}

/// The well-known metadata path for a resource URL (RFC 9728, section 3).
fn metadata_path(resource: &url::Url) -> String {
    match resource.path() {
        "/" | "" => "/.well-known/oauth-protected-resource".to_owned(),
        path => format!("/.well-known/oauth-protected-resource{path}"),
    }
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
            retry_jitter: Duration::ZERO,
            max_body_bytes: 1024 * 1024,
            publish_stream_idle: Duration::from_secs(30),
            publish_stream_updates: 1_000_000,
            max_topics_per_update: 64,
            max_selectors: 64,
            queue_frames: 4096,
            queue_bytes: 4 * 1024 * 1024,
            cookie_name: "mercureAuthorization".to_owned(),
            max_connections: 19_000,
            max_streams_per_ip: 0,
            max_streams_per_token: 0,
            max_subscriptions_per_token: 0,
            stream_admission_rate: 0,
            max_stream_lifetime: None,
            auth_callback: None,
            webhook_url: None,
            webhook_secret: None,
            trusted_proxies: Vec::new(),
            publish_rate_per_ip: 0,
            publish_rate_per_token: 0,
            shutdown_grace: Duration::from_secs(5),
            replay_batch: 1024,
            metrics: MetricsAccess::Open,
            dev_mode: false,
            subscriptions: false,
            public_url: url::Url::parse(DEFAULT_PUBLIC_URL).expect("valid default URL"),
            resource: None,
            issuers: Vec::new(),
            access_token_cookie: DEFAULT_ACCESS_TOKEN_COOKIE.to_owned(),
            authorization_servers: Vec::new(),
        }
    }
}

impl HubConfig {
    /// The key that verifies subscribers.
    pub fn subscriber_key(&self) -> Option<&KeyConfig> {
        self.subscriber_jwt.as_ref().or(self.publisher_jwt.as_ref())
    }

    /// The resource identifier draft-08 tokens must name in `aud`.
    pub fn resource_identifier(&self) -> String {
        self.resource
            .clone()
            .unwrap_or_else(|| self.public_url.to_string())
    }

    /// URL of the protected resource metadata (RFC 9728): the well-known
    /// prefix inserted between the resource identifier's host and path.
    pub fn resource_metadata_url(&self) -> String {
        let mut url = self.resource_url();
        url.set_path(&metadata_path(&url));
        url.set_query(None);
        url.set_fragment(None);
        url.to_string()
    }

    /// The path at which the hub serves its protected resource metadata,
    /// derived from the resource identifier's path as RFC 9728 says.
    pub fn resource_metadata_path(&self) -> String {
        metadata_path(&self.resource_url())
    }

    /// The resource identifier as a URL ([`HubConfig::validate`] checks
    /// that it is one).
    fn resource_url(&self) -> url::Url {
        self.resource
            .as_deref()
            .and_then(|r| url::Url::parse(r).ok())
            .unwrap_or_else(|| self.public_url.clone())
    }

    /// Checks values that would make the hub misbehave.
    ///
    /// # Errors
    /// The first bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.publish_stream_updates == 0 {
            return Err(ConfigError::NotPositive("publish_stream_updates"));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::NotPositive("max_body_bytes"));
        }
        if self.queue_frames == 0 || self.queue_bytes == 0 {
            return Err(ConfigError::NotPositive("queue_frames and queue_bytes"));
        }
        if self.max_selectors == 0 || self.max_topics_per_update == 0 {
            return Err(ConfigError::NotPositive(
                "max_selectors and max_topics_per_update",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::NotPositive("max_connections"));
        }
        if self.stream_admission_rate > 1_000_000 {
            return Err(ConfigError::TooLarge("stream_admission_rate", 1_000_000));
        }
        if self.max_stream_lifetime.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::NotPositive("max_stream_lifetime"));
        }
        if !matches!(self.public_url.scheme(), "http" | "https") {
            return Err(ConfigError::PublicUrlScheme);
        }
        if let Some(r) = &self.resource {
            // RFC 9728: the resource identifier is a URL, and clients
            // derive the metadata's location from it.
            let url = url::Url::parse(r).map_err(|error| ConfigError::ResourceNotUrl {
                resource: r.clone(),
                error,
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.fragment().is_some() {
                return Err(ConfigError::ResourceNotHttp {
                    resource: r.clone(),
                });
            }
        }
        if self.access_token_cookie.is_empty() || self.cookie_name.is_empty() {
            return Err(ConfigError::EmptyCookieName);
        }
        if let Some(s) = self
            .authorization_servers
            .iter()
            .find(|s| !self.issuers.iter().any(|i| &i.issuer == *s))
        {
            return Err(ConfigError::UntrustedAuthorizationServer(s.clone()));
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

/// A setting that would make the hub misbehave, found by
/// [`HubConfig::validate`] or when [`crate::Hub::new`] loads the keys. Each
/// message is one line, shown to the operator as it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A limit that must be positive is zero (the names of the settings).
    #[error("{0} must be positive")]
    NotPositive(&'static str),
    /// A limit above what herald can apply (the setting, the most).
    #[error("{0} must be at most {1}")]
    TooLarge(&'static str, u64),
    #[error("public_url must be an http or https URL")]
    PublicUrlScheme,
    #[error("resource {resource:?} is not a URL: {error}")]
    ResourceNotUrl {
        resource: String,
        error: url::ParseError,
    },
    #[error("resource {resource:?} must be an http(s) URL without a fragment")]
    ResourceNotHttp { resource: String },
    #[error("cookie names must not be empty")]
    EmptyCookieName,
    /// An `authorization_servers` entry that is not a trusted issuer.
    #[error("authorization server {0:?} is not a trusted issuer")]
    UntrustedAuthorizationServer(String),
    /// `publisher_jwt` or `subscriber_jwt` does not parse.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A trusted issuer cannot be set up.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
}
