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
use herald::engine::nats::{NatsConfig, NatsEngine};
use herald::engine::postgres::{PostgresConfig, PostgresEngine};
use herald::engine::redis::{RedisConfig, RedisEngine};
use herald::engine::Engine;
use herald::telemetry::otlp::OtlpConfig;
use herald::transport::tls::{Tls, TlsConfig};
use herald::{Hub, HubConfig};
use jsonwebtoken::Algorithm;

use crate::settings::{self, Raw, Settings};

/// Run the hub. Its arguments are derived from the declarations in
/// `settings.rs`.
pub type Args = settings::Args;

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
    /// Traces exported over OTLP, when configured.
    otlp: Option<OtlpConfig>,
    /// The listener's certificate, when it speaks TLS.
    tls: Option<TlsConfig>,
    /// HTTP/3 on the same port (UDP) when there is TLS.
    http3: bool,
    /// The bridges the hub runs.
    bridges: Vec<crate::bridge::Configured>,
}

enum EngineChoice {
    Memory { capacity: usize },
    Local(LocalConfig),
    Redis(RedisConfig),
    Postgres(PostgresConfig),
    Nats(NatsConfig),
}

/// The `namespace` setting, checked: it names Redis keys (inside braces)
/// and a PostgreSQL schema.
fn namespace(s: &Settings) -> anyhow::Result<String> {
    let namespace: String = s.value("namespace")?;
    if namespace.is_empty()
        || namespace.len() > 56
        || !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        bail!(
            "namespace ({namespace:?}): 1 to 56 characters among letters, digits, `_`, `-` and `.`"
        );
    }
    Ok(namespace)
}

/// A trusted proxy: an address or a CIDR range.
fn proxy(text: &str) -> anyhow::Result<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            anyhow::anyhow!(
                "trusted_proxies: {text:?} is neither an address nor a CIDR range (such as 10.0.0.0/8)"
            )
        })
}

/// An engine URL without its password, for messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(an invalid URL)".to_owned(),
    }
}

/// The key of `{what}_jwt`, read from its PEM file when it names one.
fn key(key: Option<String>, alg: Algorithm, what: &str) -> anyhow::Result<Option<KeyConfig>> {
    let Some(key) = key else { return Ok(None) };
    let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
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

/// Reads every setting the chosen engine uses; the declarations in
/// `settings.rs` give the names, sources and defaults.
fn plan(args: Args) -> anyhow::Result<Plan> {
    let s = Settings::load(args)?;
    let publisher_jwt = key(
        s.get("publisher_jwt")?,
        s.value("publisher_jwt_alg")?,
        "publisher",
    )?;
    let generated_key = publisher_jwt.is_none();
    let publisher_jwt = publisher_jwt.unwrap_or_else(|| {
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        KeyConfig::hmac(secret)
    });
    let metrics = match s.value::<String>("metrics")?.as_str() {
        "open" => MetricsAccess::Open,
        "off" => MetricsAccess::Off,
        "token" => MetricsAccess::Token(
            s.get("metrics_token")?
                .ok_or_else(|| anyhow::anyhow!("metrics = \"token\" needs metrics_token"))?,
        ),
        other => bail!("unknown metrics setting {other:?} (expected open, off or token)"),
    };
    let issuers = match s.raw("issuers") {
        Some(Raw::List(flags)) => flags
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_issuer(s))
            .collect::<anyhow::Result<_>>()?,
        Some(Raw::Issuers(file)) => file
            .iter()
            .map(|i| issuer_config(&i.issuer, &i.key, i.algorithms.clone()))
            .collect::<anyhow::Result<_>>()?,
        Some(Raw::One(_) | Raw::Bridges(_)) | None => Vec::new(),
    };
    let bridges = match s.raw("bridge") {
        Some(Raw::List(flags)) => flags
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|spec| {
                let what = format!("--bridge {spec:?}");
                let argv = shlex::split(spec)
                    .ok_or_else(|| anyhow::anyhow!("{what}: unbalanced quotes"))?;
                crate::bridge::configured(&argv, &what)
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        Some(Raw::Bridges(tables)) => tables
            .iter()
            .enumerate()
            .map(|(i, table)| {
                let what = format!("[[bridge]] number {}", i + 1);
                let argv =
                    crate::bridge::table_argv(table).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
                crate::bridge::configured(&argv, &what)
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        Some(Raw::One(_) | Raw::Issuers(_)) | None => Vec::new(),
    };
    let mut names = std::collections::HashSet::new();
    if let Some(twice) = bridges.iter().find(|b| !names.insert(b.name.as_str())) {
        bail!(
            "two bridges are named {:?}: give each its own `name` (ids, metrics and leases go by it)",
            twice.name
        );
    }
    let public_url: Option<url::Url> = s.get("public_url")?;
    let public_url_given = public_url.is_some();
    let hub = HubConfig {
        publisher_jwt: Some(publisher_jwt),
        subscriber_jwt: key(
            s.get("subscriber_jwt")?,
            s.value("subscriber_jwt_alg")?,
            "subscriber",
        )?,
        anonymous: s.value("anonymous")?,
        cors_origins: s.list("cors_origins").unwrap_or_default(),
        publish_origins: s.list("publish_origins").unwrap_or_default(),
        heartbeat: s.value("heartbeat")?,
        retry: s.get("retry")?,
        retry_jitter: s.value("retry_jitter")?,
        max_body_bytes: s.value("max_body_bytes")?,
        publish_stream_idle: s.value("publish_stream_idle")?,
        publish_stream_updates: s.value("publish_stream_updates")?,
        max_connections: s.value("max_connections")?,
        max_streams_per_ip: s.value("max_streams_per_ip")?,
        max_streams_per_token: s.value("max_streams_per_token")?,
        max_subscriptions_per_token: s.value("max_subscriptions_per_token")?,
        stream_admission_rate: s.value("stream_admission_rate")?,
        max_stream_lifetime: s.get("max_stream_lifetime")?,
        auth_callback: match s.get::<url::Url>("auth_callback_url")? {
            None => None,
            Some(url) => Some(herald::auth::callback::CallbackConfig {
                url,
                forward: s
                    .list("auth_callback_forward")
                    .unwrap_or_else(|| vec!["cookie".to_owned()]),
                cache: s.value("auth_callback_cache")?,
                timeout: s.value("auth_callback_timeout")?,
                failure: match s.value::<String>("auth_callback_failure")?.as_str() {
                    "deny" => herald::auth::callback::CallbackFailure::Deny,
                    "anonymous" => herald::auth::callback::CallbackFailure::Anonymous,
                    other => {
                        bail!("auth_callback_failure: {other:?} is neither deny nor anonymous")
                    }
                },
            }),
        },
        webhook_url: s.get("webhook_url")?,
        webhook_secret: s.get("webhook_secret")?,
        trusted_proxies: s
            .list("trusted_proxies")
            .unwrap_or_default()
            .iter()
            .map(|p| proxy(p))
            .collect::<anyhow::Result<_>>()?,
        publish_rate_per_ip: s.value("publish_rate_per_ip")?,
        publish_rate_per_token: s.value("publish_rate_per_token")?,
        max_selectors: s.value("max_selectors")?,
        max_topics_per_update: s.value("max_topics_per_update")?,
        queue_frames: s.value("queue_frames")?,
        queue_bytes: s.value("queue_bytes")?,
        shutdown_grace: s.value("shutdown_grace")?,
        cookie_name: s.value("cookie_name")?,
        dev_mode: s.get("dev")?.unwrap_or(generated_key),
        subscriptions: s.value("subscriptions")?,
        metrics,
        resource: s.get("resource")?,
        access_token_cookie: s.value("access_token_cookie")?,
        authorization_servers: s.list("authorization_servers").unwrap_or_default(),
        issuers,
        // Without a public URL it follows the bound address (see `run`).
        public_url: public_url.unwrap_or_else(|| HubConfig::default().public_url),
        ..HubConfig::default()
    };
    hub.validate().map_err(|e| anyhow::anyhow!("{e}"))?;

    let engine = match s.engine()? {
        settings::Engine::Memory => EngineChoice::Memory {
            capacity: s.value("history_size")?,
        },
        settings::Engine::Local => {
            let mut local = LocalConfig::new(s.value::<PathBuf>("data_dir")?);
            local.durability = s.value("durability")?;
            local.retention = Retention {
                max_updates: s.get("retention_max_updates")?,
                max_age: s.get("retention_max_age")?,
                max_bytes: s.get("retention_max_bytes")?,
            };
            EngineChoice::Local(local)
        }
        settings::Engine::Postgres(url) => {
            let namespace = namespace(&s)?;
            let timeout: std::time::Duration = s.value("postgres_timeout")?;
            let poll_interval: std::time::Duration = s.value("postgres_poll_interval")?;
            if timeout.is_zero() || poll_interval.is_zero() {
                bail!("postgres_timeout and postgres_poll_interval must be more than 0");
            }
            EngineChoice::Postgres(PostgresConfig {
                namespace,
                max_updates: s.get("retention_max_updates")?,
                max_age: s.get("retention_max_age")?,
                max_bytes: s.get("retention_max_bytes")?,
                timeout,
                poll_interval,
                ..PostgresConfig::new(url)
            })
        }
        settings::Engine::Nats(url) => {
            let namespace = namespace(&s)?;
            let timeout: std::time::Duration = s.value("nats_timeout")?;
            if timeout.is_zero() {
                bail!("nats_timeout: must be more than 0");
            }
            EngineChoice::Nats(NatsConfig {
                namespace,
                max_updates: s.get("retention_max_updates")?,
                max_age: s.get("retention_max_age")?,
                max_bytes: s.get("retention_max_bytes")?,
                timeout,
                ..NatsConfig::new(url)
            })
        }
        settings::Engine::Redis(url) => {
            let namespace = namespace(&s)?;
            let timeout: std::time::Duration = s.value("redis_timeout")?;
            if timeout.is_zero() {
                bail!("redis_timeout: must be more than 0");
            }
            EngineChoice::Redis(RedisConfig {
                namespace,
                max_updates: s.get("retention_max_updates")?,
                max_age: s.get("retention_max_age")?,
                wait_replicas: s.value("redis_wait_replicas")?,
                timeout,
                ..RedisConfig::new(url)
            })
        }
    };
    let log_json = match s.value::<String>("log_format")?.as_str() {
        "text" => false,
        "json" => true,
        other => bail!("unknown log_format {other:?} (expected text or json)"),
    };
    let tls = match (s.get::<PathBuf>("tls_cert")?, s.get::<PathBuf>("tls_key")?) {
        (Some(cert), Some(key)) => Some(TlsConfig { cert, key }),
        (None, None) => None,
        _ => bail!("tls_cert and tls_key go together: give both, or neither"),
    };
    let otlp = match s.get::<url::Url>("otlp_endpoint")? {
        None => None,
        Some(endpoint) => Some(OtlpConfig {
            endpoint,
            sample_ratio: s.value("otlp_sample_ratio")?,
            service_name: s.value("otlp_service_name")?,
        }),
    };
    Ok(Plan {
        otlp,
        tls,
        http3: s.value("http3")?,
        public_url_given,
        addr: s.value("addr")?,
        hub,
        engine,
        generated_key,
        log: s.value("log")?,
        log_json,
        bridges,
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut plan = plan(args)?;
    crate::logs::init(&plan.log, plan.log_json)?;
    let engine: Arc<dyn Engine> = match plan.engine {
        EngineChoice::Memory { capacity } => Arc::new(MemoryEngine::new(capacity)),
        EngineChoice::Local(cfg) => {
            let dir = cfg.path.clone();
            let engine = tokio::task::spawn_blocking(move || LocalEngine::open(cfg))
                .await?
                .with_context(|| format!("cannot open the local store in {}", dir.display()))?;
            Arc::new(engine)
        }
        EngineChoice::Postgres(cfg) => {
            let shown = redacted(&cfg.url);
            let engine = PostgresEngine::connect(cfg)
                .await
                .with_context(|| format!("cannot use PostgreSQL at {shown}"))?;
            Arc::new(engine)
        }
        EngineChoice::Nats(cfg) => {
            let shown = redacted(&cfg.url);
            let engine = NatsEngine::connect(cfg)
                .await
                .with_context(|| format!("cannot use NATS at {shown}"))?;
            Arc::new(engine)
        }
        EngineChoice::Redis(cfg) => {
            let shown = redacted(&cfg.url);
            let engine = RedisEngine::connect(cfg)
                .await
                .with_context(|| format!("cannot use Redis at {shown}"))?;
            Arc::new(engine)
        }
    };
    let engine_name = engine.name();
    let listener = herald::transport::server::bind(plan.addr)
        .with_context(|| format!("cannot listen on {}", plan.addr))?;
    let addr = listener.local_addr()?;
    if !plan.public_url_given {
        let scheme = if plan.tls.is_some() { "https" } else { "http" };
        plan.hub.public_url = url::Url::parse(&format!("{scheme}://{addr}/.well-known/mercure"))
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
    let tls = plan.tls.map(Tls::new).transpose()?;
    let http3 = plan.http3;
    let hub = Hub::new(plan.hub, engine).map_err(|e| anyhow::anyhow!("{e}"))?;
    let otlp = match &plan.otlp {
        Some(cfg) => {
            let otlp = herald::telemetry::otlp::install(cfg)?;
            tracing::info!(endpoint = %cfg.endpoint, "exporting traces over OTLP");
            Some(otlp)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, engine = engine_name, "herald listening on {scheme}://{addr}");
    let bridges = crate::bridge::spawn(&hub, plan.bridges);
    let mut server = herald::Server::new(hub);
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    // With TLS, the server logs the UDP address of HTTP/3 once bound.
    #[cfg(feature = "http3")]
    {
        server = server.http3(http3);
    }
    #[cfg(not(feature = "http3"))]
    if http3 && scheme == "https" {
        tracing::info!("HTTP/3 is not built into this herald (the `http3` feature)");
    }
    // The bridges stop first, and give their leases back, while the
    // engine still takes their last appends.
    let shutdown = async move {
        shutdown_signal().await;
        bridges.stop().await;
    };
    let served = server.serve(listener, shutdown).await;
    if let Some(otlp) = otlp {
        otlp.shutdown().await;
    }
    served
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    fn plan_of(flags: &[&str]) -> anyhow::Result<Plan> {
        let cmd = <Args as clap::Args>::augment_args(clap::Command::new("serve"));
        let m = cmd
            .try_get_matches_from(std::iter::once("serve").chain(flags.iter().copied()))
            .unwrap();
        plan(Args::from_arg_matches(&m).unwrap())
    }

    /// The declared defaults (README's) are the library's, and every
    /// setting `plan` reads is declared and reads its default.
    #[test]
    fn declared_defaults_are_the_library_defaults() {
        let plan = plan_of(&[]).unwrap();
        let (got, lib) = (&plan.hub, HubConfig::default());
        assert_eq!(got.anonymous, lib.anonymous);
        assert_eq!(got.heartbeat, lib.heartbeat);
        assert_eq!(got.retry, lib.retry);
        assert_eq!(got.max_body_bytes, lib.max_body_bytes);
        assert_eq!(got.publish_stream_idle, lib.publish_stream_idle);
        assert_eq!(got.publish_stream_updates, lib.publish_stream_updates);
        assert_eq!(got.max_connections, lib.max_connections);
        assert_eq!(got.max_selectors, lib.max_selectors);
        assert_eq!(got.max_topics_per_update, lib.max_topics_per_update);
        assert_eq!(got.queue_frames, lib.queue_frames);
        assert_eq!(got.queue_bytes, lib.queue_bytes);
        assert_eq!(got.shutdown_grace, lib.shutdown_grace);
        assert_eq!(got.cookie_name, lib.cookie_name);
        assert_eq!(got.access_token_cookie, lib.access_token_cookie);
        assert_eq!(got.metrics, lib.metrics);
        assert_eq!(got.subscriptions, lib.subscriptions);
        assert!(plan.generated_key && got.dev_mode);
        let EngineChoice::Local(local) = plan.engine else {
            panic!("local is the default engine")
        };
        let lib = LocalConfig::new("herald-data");
        assert_eq!(local.durability, lib.durability);
        assert_eq!(local.retention, lib.retention);
        assert_eq!(local.path, PathBuf::from("./herald-data"));

        let plan = plan_of(&["--engine", "memory"]).unwrap();
        assert!(matches!(
            plan.engine,
            EngineChoice::Memory { capacity: 100_000 }
        ));
    }

    #[test]
    fn every_setting_reaches_the_plan() {
        let plan = plan_of(&[
            "--engine=local",
            "--data-dir=/tmp/d",
            "--durability=async",
            "--retention-max-updates=5",
            "--retention-max-age=7d",
            "--retention-max-bytes=6",
            "--publisher-jwt=p-p-p-p-p-p-p-p-p-p-p-p-p-p-p-p",
            "--anonymous=false",
            "--cors-origins=https://a.example,https://b.example",
            "--heartbeat=0",
            "--retry=1500",
            "--dev=false",
            "--subscriptions",
            "--metrics=token",
            "--metrics-token=t",
            "--log-format=json",
            "--public-url=https://hub.example.com/.well-known/mercure",
        ])
        .unwrap();
        let hub = &plan.hub;
        assert!(!plan.generated_key && !hub.dev_mode && !hub.anonymous && hub.subscriptions);
        assert_eq!(hub.cors_origins, ["https://a.example", "https://b.example"]);
        assert_eq!(hub.heartbeat, std::time::Duration::ZERO);
        assert_eq!(hub.retry, Some(1500));
        assert_eq!(hub.metrics, MetricsAccess::Token("t".into()));
        assert!(plan.log_json && plan.public_url_given);
        let EngineChoice::Local(local) = plan.engine else {
            panic!("local engine")
        };
        assert_eq!(local.path, PathBuf::from("/tmp/d"));
        assert_eq!(local.durability.to_string(), "async");
        assert_eq!(local.retention.max_updates, Some(5));
        assert_eq!(local.retention.max_bytes, Some(6));
        assert_eq!(
            local.retention.max_age,
            Some(std::time::Duration::from_secs(7 * 86400))
        );
    }
}
