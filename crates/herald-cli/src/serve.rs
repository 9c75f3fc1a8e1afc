//! `herald serve`: run the hub.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use herald::auth::oauth::{self, IssuerConfig};
use herald::auth::{self, Claims, KeyConfig, MercureClaim};
use herald::config::MetricsAccess;
use herald::engine::local::{LocalConfig, LocalEngine, Retention};
use herald::engine::memory::MemoryEngine;
use herald::engine::Engine;
use herald::{Hub, HubConfig};

use crate::settings::{parse_duration, FileConfig};

/// Run the hub. Each flag can also be set with its `HERALD_*` variable or in
/// the TOML file given by `--config`; flags and variables win over the file.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "HERALD_ADDR")]
    addr: Option<SocketAddr>,
    /// Key verifying publisher JWTs (HMAC secret, or a PEM public key / its path).
    #[arg(long, env = "HERALD_PUBLISHER_JWT", hide_env_values = true)]
    publisher_jwt: Option<String>,
    /// Algorithm of publisher JWTs [default: HS256].
    #[arg(long, env = "HERALD_PUBLISHER_JWT_ALG")]
    publisher_jwt_alg: Option<String>,
    /// Key verifying subscriber JWTs [default: the publisher key].
    #[arg(long, env = "HERALD_SUBSCRIBER_JWT", hide_env_values = true)]
    subscriber_jwt: Option<String>,
    /// Algorithm of subscriber JWTs [default: HS256].
    #[arg(long, env = "HERALD_SUBSCRIBER_JWT_ALG")]
    subscriber_jwt_alg: Option<String>,
    /// Allow subscribers without a token (public updates only) [default: true].
    #[arg(long, env = "HERALD_ANONYMOUS", num_args = 0..=1, default_missing_value = "true")]
    anonymous: Option<bool>,
    /// Origins allowed by CORS, comma-separated (`*` for any).
    #[arg(long, env = "HERALD_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Option<Vec<String>>,
    /// Origins allowed to publish with cookie authorization, comma-separated.
    #[arg(long, env = "HERALD_PUBLISH_ORIGINS", value_delimiter = ',')]
    publish_origins: Option<Vec<String>>,
    /// Idle time before a heartbeat comment, e.g. 25s; 0 disables [default: 25s].
    #[arg(long, env = "HERALD_HEARTBEAT")]
    heartbeat: Option<String>,
    /// `retry:` sent to every subscriber, in milliseconds.
    #[arg(long, env = "HERALD_RETRY")]
    retry: Option<u64>,
    /// Storage engine: `local` (durable, on disk) or `memory` [default: local].
    #[arg(long, env = "HERALD_ENGINE")]
    engine: Option<String>,
    /// Directory of the `local` engine's store [default: ./herald-data].
    #[arg(long, env = "HERALD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `sync`: acknowledge a publish once it is on disk; `async`: once it is
    /// committed, flushing within a second [default: sync].
    #[arg(long, env = "HERALD_DURABILITY")]
    durability: Option<String>,
    /// Keep at most this many updates in the local store.
    #[arg(long, env = "HERALD_RETENTION_MAX_UPDATES")]
    retention_max_updates: Option<u64>,
    /// Remove updates older than this from the local store, e.g. 7d.
    #[arg(long, env = "HERALD_RETENTION_MAX_AGE")]
    retention_max_age: Option<String>,
    /// Keep at most this many bytes of updates in the local store.
    #[arg(long, env = "HERALD_RETENTION_MAX_BYTES")]
    retention_max_bytes: Option<u64>,
    /// Updates kept by the memory engine [default: 100000].
    #[arg(long, env = "HERALD_HISTORY_SIZE")]
    history_size: Option<usize>,
    /// Largest publish body in bytes [default: 1048576].
    #[arg(long, env = "HERALD_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Most simultaneous connections [default: 19000].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most selectors per subscription [default: 64].
    #[arg(long, env = "HERALD_MAX_SELECTORS")]
    max_selectors: Option<usize>,
    /// Most topics per update [default: 64].
    #[arg(long, env = "HERALD_MAX_TOPICS_PER_UPDATE")]
    max_topics_per_update: Option<usize>,
    /// Per-subscriber queue bound in frames [default: 4096].
    #[arg(long, env = "HERALD_QUEUE_FRAMES")]
    queue_frames: Option<usize>,
    /// Per-subscriber queue bound in bytes [default: 4194304].
    #[arg(long, env = "HERALD_QUEUE_BYTES")]
    queue_bytes: Option<usize>,
    /// How long shutdown waits for connections, e.g. 5s [default: 5s].
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE")]
    shutdown_grace: Option<String>,
    /// Name of the authorization cookie [default: mercureAuthorization].
    #[arg(long, env = "HERALD_COOKIE_NAME")]
    cookie_name: Option<String>,
    /// Development mode: the dashboard's admin data needs no token
    /// [default: on when the key was generated].
    #[arg(long, env = "HERALD_DEV", num_args = 0..=1, default_missing_value = "true")]
    dev: Option<bool>,
    /// Subscription events and the subscriptions API: each subscriber's
    /// connect and disconnect is published as a private update on
    /// `/.well-known/mercure/subscriptions/{topic}/{subscriber}`, and
    /// `GET /.well-known/mercure/subscriptions` lists them [default: off].
    #[arg(long, env = "HERALD_SUBSCRIPTIONS", num_args = 0..=1, default_missing_value = "true")]
    subscriptions: Option<bool>,
    /// `/metrics`: `open`, `off`, or `token` (needs --metrics-token) [default: open].
    #[arg(long, env = "HERALD_METRICS")]
    metrics: Option<String>,
    /// Bearer token required by `/metrics` when `metrics = "token"`.
    #[arg(long, env = "HERALD_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Log filter, e.g. `info` or `herald=debug` [default: info].
    #[arg(long, env = "HERALD_LOG")]
    log: Option<String>,
    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "HERALD_LOG_FORMAT")]
    log_format: Option<String>,
    /// The hub's public URL, as clients reach it: relative URL patterns and
    /// topics resolve against it [default: http://ADDR/.well-known/mercure].
    #[arg(long, env = "HERALD_PUBLIC_URL")]
    public_url: Option<String>,
    /// OAuth resource identifier that draft-08 access tokens must carry in
    /// `aud` [default: the public URL].
    #[arg(long, env = "HERALD_RESOURCE")]
    resource: Option<String>,
    /// An issuer trusted for draft-08 access tokens: `ISSUER KEY [ALGS]`,
    /// space-separated; KEY is `secret:TEXT`, `pem:PATH`, `jwks:PATH` or
    /// `jwks:URL`; ALGS a comma-separated allow-list [default: from the
    /// key]. Repeat the flag (or separate with `;` in the variable).
    #[arg(
        long = "issuer",
        env = "HERALD_ISSUERS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    issuers: Option<Vec<String>>,
    /// Name of the draft-08 access token cookie
    /// [default: __Secure-mercure_access_token].
    #[arg(long, env = "HERALD_ACCESS_TOKEN_COOKIE")]
    access_token_cookie: Option<String>,
    /// Trusted issuers to advertise as OAuth authorization servers in the
    /// protected resource metadata, comma-separated.
    #[arg(long, env = "HERALD_AUTHORIZATION_SERVERS", value_delimiter = ',')]
    authorization_servers: Option<Vec<String>>,
}

/// Parses `--issuer "ISSUER KEY [ALG,ALG]"`.
fn parse_issuer(s: &str) -> anyhow::Result<IssuerConfig> {
    let fields: Vec<&str> = s.split_whitespace().collect();
    let (issuer, key, algs) = match fields.as_slice() {
        [i, k] => (*i, *k, ""),
        [i, k, a] => (*i, *k, *a),
        _ => bail!("--issuer {s:?}: expected \"ISSUER KEY [ALGORITHMS]\""),
    };
    issuer_config(
        issuer,
        key,
        algs.split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

fn issuer_config(issuer: &str, key: &str, algs: Vec<String>) -> anyhow::Result<IssuerConfig> {
    let keys =
        oauth::parse_key_source(key).map_err(|e| anyhow::anyhow!("issuer {issuer:?}: {e}"))?;
    let algorithms = algs
        .iter()
        .map(|a| auth::parse_algorithm(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("issuer {issuer:?}: {e}"))?;
    Ok(IssuerConfig {
        issuer: issuer.to_owned(),
        keys,
        algorithms,
    })
}

/// Everything `serve` needs, checked.
struct Plan {
    addr: SocketAddr,
    /// `public_url` was configured (else it follows the bound address).
    public_url_given: bool,
    hub: HubConfig,
    engine: EngineChoice,
    generated_key: bool,
    log: String,
    log_json: bool,
}

enum EngineChoice {
    Memory { capacity: usize },
    Local(LocalConfig),
}

fn key(key: Option<String>, alg: Option<String>, what: &str) -> anyhow::Result<Option<KeyConfig>> {
    let alg = auth::parse_algorithm(alg.as_deref().unwrap_or("HS256"))
        .map_err(|e| anyhow::anyhow!("{what}_jwt_alg: {e}"))?;
    let Some(key) = key else { return Ok(None) };
    let hmac = matches!(
        alg,
        jsonwebtoken::Algorithm::HS256
            | jsonwebtoken::Algorithm::HS384
            | jsonwebtoken::Algorithm::HS512
    );
    let key = if !hmac && !key.trim_start().starts_with("-----BEGIN") {
        std::fs::read_to_string(&key)
            .with_context(|| format!("{what}_jwt: cannot read PEM key file {key:?}"))?
    } else {
        key
    };
    Ok(Some(KeyConfig {
        key,
        algorithm: alg,
    }))
}

fn plan(a: Args) -> anyhow::Result<Plan> {
    let f = match &a.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let mut hub = HubConfig::default();
    let d = |x: Option<String>, what: &str| -> anyhow::Result<Option<std::time::Duration>> {
        x.map(|s| parse_duration(&s).with_context(|| what.to_owned()))
            .transpose()
    };
    hub.publisher_jwt = key(
        a.publisher_jwt.or(f.publisher_jwt),
        a.publisher_jwt_alg.or(f.publisher_jwt_alg),
        "publisher",
    )?;
    hub.subscriber_jwt = key(
        a.subscriber_jwt.or(f.subscriber_jwt),
        a.subscriber_jwt_alg.or(f.subscriber_jwt_alg),
        "subscriber",
    )?;
    let generated_key = hub.publisher_jwt.is_none();
    if generated_key {
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        hub.publisher_jwt = Some(KeyConfig::hmac(secret));
    }
    if let Some(v) = a.anonymous.or(f.anonymous) {
        hub.anonymous = v;
    }
    if let Some(v) = a.cors_origins.or(f.cors_origins) {
        hub.cors_origins = v.into_iter().filter(|s| !s.is_empty()).collect();
    }
    if let Some(v) = a.publish_origins.or(f.publish_origins) {
        hub.publish_origins = v.into_iter().filter(|s| !s.is_empty()).collect();
    }
    if let Some(v) = d(a.heartbeat.or(f.heartbeat), "heartbeat")? {
        hub.heartbeat = v;
    }
    hub.retry = a.retry.or(f.retry).or(hub.retry);
    if let Some(v) = a.max_body_bytes.or(f.max_body_bytes) {
        hub.max_body_bytes = v;
    }
    if let Some(v) = a.max_connections.or(f.max_connections) {
        hub.max_connections = v;
    }
    if let Some(v) = a.max_selectors.or(f.max_selectors) {
        hub.max_selectors = v;
    }
    if let Some(v) = a.max_topics_per_update.or(f.max_topics_per_update) {
        hub.max_topics_per_update = v;
    }
    if let Some(v) = a.queue_frames.or(f.queue_frames) {
        hub.queue_frames = v;
    }
    if let Some(v) = a.queue_bytes.or(f.queue_bytes) {
        hub.queue_bytes = v;
    }
    if let Some(v) = d(a.shutdown_grace.or(f.shutdown_grace), "shutdown_grace")? {
        hub.shutdown_grace = v;
    }
    if let Some(v) = a.cookie_name.or(f.cookie_name) {
        hub.cookie_name = v;
    }
    hub.dev_mode = a.dev.or(f.dev).unwrap_or(generated_key);
    hub.subscriptions = a.subscriptions.or(f.subscriptions).unwrap_or(false);
    let metrics_token = a.metrics_token.or(f.metrics_token);
    hub.metrics = match a.metrics.or(f.metrics).as_deref().unwrap_or("open") {
        "open" => MetricsAccess::Open,
        "off" => MetricsAccess::Off,
        "token" => MetricsAccess::Token(
            metrics_token
                .ok_or_else(|| anyhow::anyhow!("metrics = \"token\" needs metrics_token"))?,
        ),
        other => bail!("unknown metrics setting {other:?} (expected open, off or token)"),
    };
    let public_url = a.public_url.or(f.public_url);
    let public_url_given = public_url.is_some();
    if let Some(u) = public_url {
        hub.public_url =
            url::Url::parse(&u).with_context(|| format!("public_url {u:?} is not a URL"))?;
    }
    hub.resource = a.resource.or(f.resource);
    if let Some(v) = a.access_token_cookie.or(f.access_token_cookie) {
        hub.access_token_cookie = v;
    }
    if let Some(v) = a.authorization_servers.or(f.authorization_servers) {
        hub.authorization_servers = v.into_iter().filter(|s| !s.is_empty()).collect();
    }
    hub.issuers = match (a.issuers, f.issuers) {
        (Some(flags), _) => flags
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_issuer(s))
            .collect::<anyhow::Result<_>>()?,
        (None, Some(file)) => file
            .into_iter()
            .map(|i| issuer_config(&i.issuer, &i.key, i.algorithms))
            .collect::<anyhow::Result<_>>()?,
        (None, None) => Vec::new(),
    };
    hub.validate().map_err(|e| anyhow::anyhow!("{e}"))?;

    let engine = match a.engine.or(f.engine).as_deref().unwrap_or("local") {
        "memory" => EngineChoice::Memory {
            capacity: a.history_size.or(f.history_size).unwrap_or(100_000),
        },
        "local" => {
            let mut local = LocalConfig::new(
                a.data_dir
                    .or(f.data_dir)
                    .unwrap_or_else(|| PathBuf::from("herald-data")),
            );
            if let Some(v) = a.durability.or(f.durability) {
                local.durability = v.parse().map_err(|e| anyhow::anyhow!("durability: {e}"))?;
            }
            local.retention = Retention {
                max_updates: a.retention_max_updates.or(f.retention_max_updates),
                max_age: d(
                    a.retention_max_age.or(f.retention_max_age),
                    "retention_max_age",
                )?,
                max_bytes: a.retention_max_bytes.or(f.retention_max_bytes),
            };
            EngineChoice::Local(local)
        }
        other => bail!("unknown engine {other:?} (expected local or memory)"),
    };
    let log_format = a
        .log_format
        .or(f.log_format)
        .unwrap_or_else(|| "text".into());
    let log_json = match log_format.as_str() {
        "text" => false,
        "json" => true,
        other => bail!("unknown log_format {other:?} (expected text or json)"),
    };
    Ok(Plan {
        public_url_given,
        addr: a
            .addr
            .or(f.addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        hub,
        engine,
        generated_key,
        log: a.log.or(f.log).unwrap_or_else(|| "info".into()),
        log_json,
    })
}

fn init_logs(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut plan = plan(args)?;
    init_logs(&plan.log, plan.log_json)?;
    let engine: Arc<dyn Engine> = match plan.engine {
        EngineChoice::Memory { capacity } => Arc::new(MemoryEngine::new(capacity)),
        EngineChoice::Local(cfg) => {
            let dir = cfg.path.clone();
            let engine = tokio::task::spawn_blocking(move || LocalEngine::open(cfg))
                .await?
                .with_context(|| format!("cannot open the local store in {}", dir.display()))?;
            Arc::new(engine)
        }
    };
    let engine_name = engine.name();
    let listener = herald::transport::server::bind(plan.addr)
        .with_context(|| format!("cannot listen on {}", plan.addr))?;
    let addr = listener.local_addr()?;
    if !plan.public_url_given {
        plan.hub.public_url = url::Url::parse(&format!("http://{addr}/.well-known/mercure"))
            .context("public URL from the bound address")?;
        if !plan.hub.issuers.is_empty() && plan.hub.resource.is_none() {
            tracing::warn!(
                "issuers are configured but public_url is not: access tokens must carry \
                 aud = {:?}; set --public-url (or --resource) to the URL clients use",
                plan.hub.public_url.as_str()
            );
        }
    }
    if plan.generated_key {
        print_quickstart(&plan.hub, addr)?;
    }
    let hub = Hub::new(plan.hub, engine).map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(%addr, engine = engine_name, "herald listening on http://{addr}");
    herald::serve(listener, hub, shutdown_signal()).await
}

/// With no key configured the hub generated one: print a ready publisher
/// token and a `curl` walkthrough so a first run works in one minute.
fn print_quickstart(cfg: &HubConfig, addr: SocketAddr) -> anyhow::Result<()> {
    let Some(key) = &cfg.publisher_jwt else {
        return Ok(());
    };
    let claims = Claims {
        mercure: MercureClaim {
            publish: Some(vec!["*".into()]),
            subscribe: Some(vec!["*".into()]),
            payload: None,
        },
        ..Claims::default()
    };
    let token = auth::sign(&claims, key).map_err(|e| anyhow::anyhow!(e))?;
    eprintln!(
        "No publisher key configured: generated one for this run.\n\
         Publisher token (publish and subscribe to every topic):\n\n  {token}\n\n\
         Try it:\n  curl -N 'http://{addr}/.well-known/mercure?topic=*'\n  \
         curl -d topic=https://example.com/greeting -d data=hello \\\n    \
         -H 'Authorization: Bearer {token}' http://{addr}/.well-known/mercure\n\
         Open http://{addr}/ for the debugging page.\n"
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("signal received: shutting down");
}
