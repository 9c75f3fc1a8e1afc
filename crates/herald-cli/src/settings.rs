//! `herald serve` settings, each declared once below.
//!
//! A declaration gives a setting's name, kind, default and help; the rest
//! follows from it: the flag is `--` + the name with `_` → `-`, the
//! variable `HERALD_` + the name in capitals, the TOML key the name. From
//! the declarations [`sources`] builds the clap arguments, checks the TOML
//! keys and merges flags > `HERALD_*` variables > the TOML file > defaults;
//! [`read`] turns a merged value into a typed one; a test derives README's
//! table from them, so the documentation cannot drift from the code.
//!
//! Settings are grouped by component: the hub's apply whatever the engine,
//! an engine's only with that engine, and giving one to another engine is
//! an error rather than a setting silently ignored.

mod read;
#[cfg(test)]
mod readme;
mod sources;

pub use read::{parse_duration, Read};
pub use sources::{Args, Raw, Settings};

use Fallback::{Unset, Value};

/// The hub's settings: they apply whatever the engine.
#[rustfmt::skip]
const HUB: &[Setting] = &[
    text("addr", Value("127.0.0.1:8080"), "listen address"),
    text("tls_cert", Unset("none"),
        "certificate chain (PEM file) to serve TLS with: HTTP/2 or HTTP/1.1 by ALPN; reloaded on SIGHUP or when the file changes. Without it the listener speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c)"),
    text("tls_key", Unset("none"), "private key of `tls_cert` (PEM file)"),
    switch("http3", Value("true"),
        "with TLS, also serve HTTP/3 (QUIC) on the same port over UDP, advertised to TCP clients with `Alt-Svc`; `false` turns it off"),
    text("publisher_jwt", Unset("generated"),
        "key verifying publisher tokens: an HMAC secret, or a PEM public key (text or file path) for RSA/EC/EdDSA").secret(),
    text("publisher_jwt_alg", Value("HS256"),
        "the one accepted algorithm: HS256/384/512, RS256/384/512, ES256/384, EdDSA"),
    text("subscriber_jwt", Unset("the publisher key"), "key verifying subscriber tokens").secret(),
    text("subscriber_jwt_alg", Value("HS256"), "algorithm of subscriber tokens, as above"),
    switch("anonymous", Value("true"), "allow subscribers without a token (public updates only)"),
    list("cors_origins", Unset("none"), "origins allowed by CORS, comma-separated; `*` mirrors any origin"),
    list("publish_origins", Unset("none"),
        "origins allowed to publish with cookie authorization, comma-separated"),
    text("heartbeat", Value("25s"),
        "longest silence before a heartbeat comment (sent after 3/4 of it to all of it); `0` disables"),
    text("retry", Unset("none"), "`retry:` (ms) sent at the start of every stream"),
    text("retry_jitter", Value("0"),
        "spread reconnections: each stream's `retry:` is drawn from `retry` (3 s when unset) to `retry` plus this, e.g. `10s`; `0`: off"),
    text("engine", Value("local"),
        "`local`: durable store on disk; `memory`: a bounded ring, lost on restart; `redis://HOST:PORT/DB` \
         or `rediss://…`: nodes share one Redis or Valkey; `postgres://USER@HOST:PORT/DB` (or \
         `postgresql://`): nodes share one PostgreSQL; `nats://HOST:PORT`: nodes share one NATS with JetStream"),
    text("max_body_bytes", Value("1048576"),
        "largest publish body in bytes (`413` beyond); in a streaming publish (`application/x-ndjson`), the largest line"),
    text("publish_stream_idle", Value("30s"),
        "a streaming publish that sends nothing for this long is ended (a `408` line); `0`: no limit"),
    text("publish_stream_updates", Value("1000000"),
        "most updates one streaming publish may carry (the line past them is answered `413` and the stream ends)"),
    text("auth_callback_url", Unset("none"),
        "the application's URL herald asks whether a request without a token may subscribe or publish (it answers with token claims)"),
    list("auth_callback_forward", Unset("`cookie`"),
        "request headers passed on to the authorization callback, comma-separated"),
    text("auth_callback_cache", Value("10s"), "how long the callback's answers are kept; `0` asks every time"),
    text("auth_callback_timeout", Value("2s"), "how long the callback may take"),
    text("auth_callback_failure", Value("deny"),
        "when the callback fails: `deny` answers `503` with `Retry-After`; `anonymous` goes on without credentials"),
    text("webhook_url", Unset("none"),
        "where herald posts `connect`, `subscribe` and `disconnect` events as JSON (presence for apps that read no subscription events)"),
    text("webhook_secret", Unset("none"),
        "key of the webhook requests' `Herald-Signature` (HMAC-SHA256 of `<t>.<body>`)").secret(),
    text("max_stream_lifetime", Unset("none"),
        "longest an event stream lasts (each 80-100 % of it, at random, so clients that came together leave apart; they resume with Last-Event-ID), e.g. `30m`"),
    text("max_streams_per_ip", Value("0"),
        "event streams one client address may hold at once (`429` beyond); `0`: no limit"),
    text("max_streams_per_token", Value("0"),
        "event streams one token may hold at once (`429` beyond); `0`: no limit"),
    text("max_subscriptions_per_token", Value("0"),
        "selectors (topics, URL patterns) the open streams of one token may hold together (`429` beyond); `0`: no limit"),
    text("stream_admission_rate", Value("0"),
        "new event streams started per second, in bursts of as many; the others wait for their turn (up to 30 s, then `503` with `Retry-After`); `0`: no pacing"),
    list("trusted_proxies", Unset("none"),
        "proxies (addresses or CIDR ranges, comma-separated) whose `X-Forwarded-For` names the client"),
    text("publish_rate_per_ip", Value("0"),
        "updates per second one client address may publish, in bursts of as many (`429` with `Retry-After` beyond); `0`: no limit"),
    text("publish_rate_per_token", Value("0"),
        "updates per second one token may publish, as above; `0`: no limit"),
    text("max_connections", Value("19000"),
        "simultaneous event streams (`503` beyond); other connections (publishing, health, the API) have as many of their own"),
    text("max_selectors", Value("64"), "selectors per subscription"),
    text("max_topics_per_update", Value("64"), "topics per update"),
    text("queue_frames", Value("4096"), "per-subscriber queue bound, in events"),
    text("queue_bytes", Value("4194304"), "per-subscriber queue bound, in bytes"),
    text("shutdown_grace", Value("5s"), "how long shutdown waits for connections"),
    text("cookie_name", Value("mercureAuthorization"), "draft-07 authorization cookie"),
    text("public_url", Unset("`http://<addr>/.well-known/mercure`"),
        "the hub's URL as clients reach it: relative URL patterns and topics resolve against it, \
         and the reserved namespace is checked against it"),
    text("resource", Unset("`public_url`"),
        "OAuth resource identifier that draft-08 access tokens must carry in `aud`"),
    Setting { flag: Some("issuer"), kind: Kind::Issuers, ..text("issuers", Unset("none"),
        "issuers trusted for draft-08 access tokens: `[[issuers]]` tables, or \
         `--issuer \"ISSUER KEY [ALGS]\"` per issuer (`;` between issuers in the variable)").secret() },
    Setting { flag: Some("bridge"), kind: Kind::Bridges, ..text("bridge", Unset("none"),
        "bridges run by the hub: `[[bridge]]` tables (`source` and the arguments of `herald bridge SOURCE` as keys, plus `name` and `publish`), or \
         `--bridge \"SOURCE ARGS\"` per bridge (`;` between bridges in the variable); see \"Bridges\"") },
    text("access_token_cookie", Value("__Secure-mercure_access_token"), "draft-08 access token cookie"),
    list("authorization_servers", Unset("none"),
        "trusted issuers to advertise as OAuth authorization servers in the protected resource \
         metadata, comma-separated"),
    switch("dev", Unset("on when the key was generated"),
        "development mode: the dashboard's admin data needs no token"),
    switch("subscriptions", Value("false"), "subscription events and the subscriptions API"),
    text("metrics", Value("open"), "`/metrics`: `open`, `off`, or `token`"),
    text("metrics_token", Unset("none"),
        "bearer token `/metrics` requires when `metrics = \"token\"`").secret(),
    text("otlp_endpoint", Unset("none"),
        "OpenTelemetry collector (OTLP/HTTP) to send traces to, e.g. `http://127.0.0.1:4318`: spans publish → append → deliver, continuing a publisher's `traceparent`"),
    text("otlp_sample_ratio", Value("1"),
        "share of the traces started here that are recorded (0 to 1); a publisher's sampled `traceparent` is always followed"),
    text("otlp_service_name", Value("herald"), "`service.name` of the spans"),
    text("log", Value("info"), "log filter (`debug`, `herald=debug,info`, ...)"),
    text("log_format", Value("text"), "`text` or `json`"),
];

/// Retention by count and age: the `local`, `redis`, `postgres` and
/// `nats` engines apply it.
#[rustfmt::skip]
const RETENTION: &[Setting] = &[
    text("retention_max_updates", Unset("unlimited"), "updates kept"),
    text("retention_max_age", Unset("unlimited"), "age after which updates are removed, e.g. `7d`"),
];

/// Retention by size: the `local`, `postgres` and `nats` engines apply it.
#[rustfmt::skip]
const RETENTION_BYTES: &[Setting] = &[
    text("retention_max_bytes", Unset("unlimited"), "bytes of updates kept"),
];

/// Settings of the engines shared by several nodes.
#[rustfmt::skip]
const SHARED: &[Setting] = &[
    text("namespace", Value("herald"),
        "what herald's keys (Redis), schema (PostgreSQL) or streams (NATS) are named after: hubs with different namespaces share one server without seeing each other"),
];

/// The `local` engine's settings.
#[rustfmt::skip]
const LOCAL: &[Setting] = &[
    text("data_dir", Value("./herald-data"), "directory of the store"),
    text("durability", Value("sync"),
        "`sync`: a publish is acknowledged once on disk; `async`: once committed, the disk flushed within a second"),
];

/// The `memory` engine's settings.
#[rustfmt::skip]
const MEMORY: &[Setting] = &[
    text("history_size", Value("100000"), "updates kept"),
];

/// The `redis` engine's settings.
#[rustfmt::skip]
const REDIS: &[Setting] = &[
    text("redis_timeout", Value("2s"),
        "the longest a publish, a read or a check waits for Redis before answering `503`"),
    text("redis_wait_replicas", Value("0"),
        "replicas that must confirm each publish (`WAIT`) before it is acknowledged; `0` does not wait"),
];

/// Every setting, by component, in `--help` and README order. A new
/// engine adds its group here and its variant to [`Engine`].
pub const GROUPS: &[Group] = &[
    Group {
        engines: &[],
        settings: HUB,
    },
    Group {
        engines: &["local", "redis", "postgres", "nats"],
        settings: RETENTION,
    },
    Group {
        engines: &["local", "postgres", "nats"],
        settings: RETENTION_BYTES,
    },
    Group {
        engines: &["local"],
        settings: LOCAL,
    },
    Group {
        engines: &["memory"],
        settings: MEMORY,
    },
    Group {
        engines: &["redis", "postgres", "nats"],
        settings: SHARED,
    },
    Group {
        engines: &["redis"],
        settings: REDIS,
    },
    Group {
        engines: &["postgres"],
        settings: POSTGRES,
    },
    Group {
        engines: &["nats"],
        settings: NATS,
    },
];

/// The `nats` engine's settings.
#[rustfmt::skip]
const NATS: &[Setting] = &[
    text("nats_timeout", Value("2s"),
        "the longest a publish, a read or a check waits for NATS before answering `503`"),
];

/// The `postgres` engine's settings.
#[rustfmt::skip]
const POSTGRES: &[Setting] = &[
    text("postgres_timeout", Value("2s"),
        "the longest a publish, a read or a check waits for PostgreSQL before answering `503`"),
    text("postgres_poll_interval", Value("100ms"),
        "how often a node reads the log when no NOTIFY woke it (all it has behind PgBouncer in transaction mode)"),
];

/// One setting of `herald serve`.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The TOML key; the flag and variable derive from it.
    pub name: &'static str,
    /// The flag without `--`, when it is not derived from the name.
    pub flag: Option<&'static str>,
    pub kind: Kind,
    pub default: Fallback,
    /// One line for `--help` and README's table.
    pub help: &'static str,
    /// A key or a token: its variable's value stays out of `--help`.
    pub secret: bool,
}

/// How a setting is written in each source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One value: `--name VALUE`, a TOML string, number or boolean.
    One,
    /// A boolean: `--name` alone means `true`.
    Switch,
    /// Comma-separated on the command line, an array of strings in TOML.
    List,
    /// Repeated `--issuer`, `;`-separated in the variable, `[[issuers]]`
    /// tables in TOML.
    Issuers,
    /// Repeated `--bridge`, `;`-separated in the variable, `[[bridge]]`
    /// tables in TOML.
    Bridges,
}

/// What a setting is when no source gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// This value, read like a given one.
    Value(&'static str),
    /// Unset; the text says what that means (for `--help` and README).
    Unset(&'static str),
}

/// The settings of one component.
#[derive(Debug)]
pub struct Group {
    /// The engines they belong to; none for the hub's.
    pub engines: &'static [&'static str],
    pub settings: &'static [Setting],
}

const fn setting(name: &'static str, kind: Kind, default: Fallback, help: &'static str) -> Setting {
    Setting {
        name,
        flag: None,
        kind,
        default,
        help,
        secret: false,
    }
}

const fn text(name: &'static str, default: Fallback, help: &'static str) -> Setting {
    setting(name, Kind::One, default, help)
}

const fn switch(name: &'static str, default: Fallback, help: &'static str) -> Setting {
    setting(name, Kind::Switch, default, help)
}

const fn list(name: &'static str, default: Fallback, help: &'static str) -> Setting {
    setting(name, Kind::List, default, help)
}

impl Setting {
    const fn secret(self) -> Self {
        Setting {
            secret: true,
            ..self
        }
    }

    /// `--flag` without the dashes.
    pub fn flag(&self) -> String {
        match self.flag {
            Some(flag) => flag.to_owned(),
            None => self.name.replace('_', "-"),
        }
    }

    /// `HERALD_NAME`.
    pub fn variable(&self) -> String {
        format!("HERALD_{}", self.name.to_ascii_uppercase())
    }
}

/// Every setting with the engines it belongs to (none: the hub's).
pub fn all() -> impl Iterator<Item = (&'static [&'static str], &'static Setting)> {
    GROUPS
        .iter()
        .flat_map(|g| g.settings.iter().map(move |s| (g.engines, s)))
}

/// The declaration named `name`, with its engine.
pub fn find(name: &str) -> Option<(&'static [&'static str], &'static Setting)> {
    all().find(|(_, s)| s.name == name)
}

/// The `engine` setting: a built-in engine's name, or a URL whose scheme
/// names an engine. The next engine adds its variant here (carrying its
/// URL), its schemes to [`ENGINE_SCHEMES`] and its group to [`GROUPS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    Local,
    Memory,
    /// A `redis://` or `rediss://` URL.
    Redis(String),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
    /// A `nats://` URL.
    Nats(String),
}

/// URL schemes and the engine each names.
pub const ENGINE_SCHEMES: &[(&str, &str)] = &[
    ("redis", "redis"),
    ("rediss", "redis"),
    ("postgres", "postgres"),
    ("postgresql", "postgres"),
    ("nats", "nats"),
];

impl Engine {
    /// The name its settings are grouped under in [`GROUPS`].
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Local => "local",
            Engine::Memory => "memory",
            Engine::Redis(_) => "redis",
            Engine::Postgres(_) => "postgres",
            Engine::Nats(_) => "nats",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_engines_known() {
        let mut names: Vec<_> = all().map(|(_, s)| s.name).collect();
        names.push("config");
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a setting is declared twice");
        for (engines, s) in all() {
            for engine in engines {
                let text = match *engine {
                    "redis" => "redis://h",
                    "postgres" => "postgres://h/db",
                    "nats" => "nats://h:4222",
                    other => other,
                };
                let parsed = Engine::read(text).unwrap();
                assert_eq!(parsed.name(), *engine, "{}", s.name);
            }
            // Lower case, words joined by `_`, digits inside (`http3`).
            assert!(
                s.name.starts_with(|c: char| c.is_ascii_lowercase())
                    && s.name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                s.name
            );
        }
    }
}
