//! Typed reading of a merged setting: the one place each type is parsed,
//! whichever source (flag, variable, file, default) the text came from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use herald::engine::local::Durability;
use jsonwebtoken::Algorithm;

use super::{Engine, ENGINE_SCHEMES};

/// A type a setting's text reads as. Errors are one line, without the
/// setting's name (the caller adds it and where the value came from).
pub trait Read: Sized {
    fn read(text: &str) -> Result<Self, String>;
}

impl Read for String {
    fn read(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

impl Read for PathBuf {
    fn read(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
}

impl Read for bool {
    fn read(text: &str) -> Result<Self, String> {
        match text {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("expected true or false, not {text:?}")),
        }
    }
}

/// Counts and sizes (bytes, milliseconds): a whole number.
fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("expected a whole number, not {text:?}"))
}

impl Read for u64 {
    fn read(text: &str) -> Result<Self, String> {
        number(text)
    }
}

impl Read for u32 {
    fn read(text: &str) -> Result<Self, String> {
        number(text)
    }
}

impl Read for usize {
    fn read(text: &str) -> Result<Self, String> {
        number(text)
    }
}

/// A share (`otlp_sample_ratio`): a number from 0 to 1.
impl Read for f64 {
    fn read(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .ok()
            .filter(|r: &f64| (0.0..=1.0).contains(r))
            .ok_or_else(|| format!("expected a number from 0 to 1, not {text:?}"))
    }
}

impl Read for Duration {
    fn read(text: &str) -> Result<Self, String> {
        parse_duration(text).map_err(|e| e.to_string())
    }
}

impl Read for SocketAddr {
    fn read(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("expected an address like 127.0.0.1:8080, not {text:?}"))
    }
}

impl Read for url::Url {
    fn read(text: &str) -> Result<Self, String> {
        url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))
    }
}

impl Read for Algorithm {
    fn read(text: &str) -> Result<Self, String> {
        herald::auth::parse_algorithm(text).map_err(|e| e.to_string())
    }
}

impl Read for Durability {
    fn read(text: &str) -> Result<Self, String> {
        text.parse().map_err(|e| format!("{e}"))
    }
}

impl Read for Engine {
    /// `local`, `memory`, or a URL naming an engine by its scheme. The URL
    /// itself is never echoed: it may carry a password.
    fn read(text: &str) -> Result<Self, String> {
        match text {
            "local" => return Ok(Engine::Local),
            "memory" => return Ok(Engine::Memory),
            _ => {}
        }
        let scheme = url::Url::parse(text).ok().map(|u| u.scheme().to_owned());
        let named = ENGINE_SCHEMES
            .iter()
            .find(|(s, _)| Some(*s) == scheme.as_deref());
        match named {
            Some((_, "redis")) => return Ok(Engine::Redis(text.to_owned())),
            Some((_, "postgres")) => return Ok(Engine::Postgres(text.to_owned())),
            Some((_, "nats")) => return Ok(Engine::Nats(text.to_owned())),
            Some((_, engine)) => {
                return Err(format!(
                    "the {engine} engine is not available in this build"
                ))
            }
            None => {}
        }
        let schemes: Vec<String> = ENGINE_SCHEMES
            .iter()
            .map(|(s, _)| format!("{s}://"))
            .collect();
        let what = match &scheme {
            Some(s) => format!("unknown engine URL scheme {s:?}"),
            None => format!("unknown engine {text:?}"),
        };
        Err(format!(
            "{what}: expected local, memory, or a URL starting with {}",
            schemes.join(", ")
        ))
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
    fn engines_by_name_or_url_scheme() {
        assert_eq!(Engine::read("local"), Ok(Engine::Local));
        assert_eq!(Engine::read("memory"), Ok(Engine::Memory));
        for url in [
            "redis://localhost:6379/0",
            "rediss://:secret@cache.example.com",
        ] {
            assert_eq!(Engine::read(url), Ok(Engine::Redis(url.to_owned())));
        }
        for url in ["postgres://herald@db/herald", "postgresql://db/herald"] {
            assert_eq!(Engine::read(url), Ok(Engine::Postgres(url.to_owned())));
        }
        assert_eq!(
            Engine::read("nats://nats.example.com:4222"),
            Ok(Engine::Nats("nats://nats.example.com:4222".to_owned()))
        );
        let e = Engine::read("mysql://root:hunter2@db").unwrap_err();
        assert!(e.contains("\"mysql\"") && !e.contains("hunter2"), "{e}");
        let e = Engine::read("bogus").unwrap_err();
        assert!(e.contains("\"bogus\""), "{e}");
        for accepted in [
            "local",
            "memory",
            "redis://",
            "rediss://",
            "postgres://",
            "postgresql://",
            "nats://",
        ] {
            assert!(e.contains(accepted), "{e}");
        }
    }

    #[test]
    fn numbers_and_booleans() {
        assert_eq!(usize::read("64"), Ok(64));
        assert!(u64::read("-1").is_err());
        assert!(usize::read("1e3").is_err());
        assert_eq!(bool::read("false"), Ok(false));
        assert!(bool::read("yes").is_err());
    }
}
