//! `herald serve` settings: flags and `HERALD_*` variables over a TOML file
//! over defaults. Every setting is checked before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// The TOML file. Names follow Mercure's directives; unknown keys are
/// refused so a typo never silently does nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub addr: Option<SocketAddr>,
    pub publisher_jwt: Option<String>,
    pub publisher_jwt_alg: Option<String>,
    pub subscriber_jwt: Option<String>,
    pub subscriber_jwt_alg: Option<String>,
    pub anonymous: Option<bool>,
    pub cors_origins: Option<Vec<String>>,
    pub publish_origins: Option<Vec<String>>,
    pub heartbeat: Option<String>,
    pub retry: Option<u64>,
    pub engine: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub durability: Option<String>,
    pub history_size: Option<usize>,
    pub retention_max_updates: Option<u64>,
    pub retention_max_age: Option<String>,
    pub retention_max_bytes: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_selectors: Option<usize>,
    pub max_topics_per_update: Option<usize>,
    pub queue_frames: Option<usize>,
    pub queue_bytes: Option<usize>,
    pub shutdown_grace: Option<String>,
    pub cookie_name: Option<String>,
    pub dev: Option<bool>,
    pub subscriptions: Option<bool>,
    pub metrics: Option<String>,
    pub metrics_token: Option<String>,
    pub log: Option<String>,
    pub log_format: Option<String>,
    pub public_url: Option<String>,
    pub resource: Option<String>,
    pub access_token_cookie: Option<String>,
    pub authorization_servers: Option<Vec<String>>,
    pub issuers: Option<Vec<FileIssuer>>,
}

/// One `[[issuers]]` table: an issuer trusted for draft-08 access tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIssuer {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// `secret:TEXT`, `pem:PATH`, `jwks:PATH` or `jwks:URL`.
    pub key: String,
    /// Accepted algorithms [default: from the key].
    #[serde(default)]
    pub algorithms: Vec<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "invalid config file {}: {}",
                path.display(),
                e.message().trim()
            )
        })
    }
}

/// Parses `500ms`, `25s`, `5m`, `2h`, `7d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}: expected e.g. 25s, 500ms, 5m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => bail!("invalid duration {s:?}: unknown unit {unit:?} (ms, s, m, h, d)"),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("25").unwrap(), Duration::from_secs(25));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<FileConfig>("publisher_jwt = 'x'\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
