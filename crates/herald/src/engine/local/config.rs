//! How the `local` engine is configured: where the store lives
//! ([`LocalConfig`]), when an append is acknowledged ([`Durability`]) and how
//! much history is kept ([`Retention`]).
//!
//! Plain data with no I/O, so the CLI can build and print it (and parse
//! `--durability`) without touching the store.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where and how the `local` engine stores updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// The store directory, created if missing. The data lives in
    /// [`STORE_FILE`](super::STORE_FILE) inside it.
    pub path: PathBuf,
    pub durability: Durability,
    pub retention: Retention,
}

impl LocalConfig {
    /// A store in `path` with [`Durability::Sync`] and no retention limit.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::default(),
            retention: Retention::default(),
        }
    }
}

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the commit reached the disk (fsync): an acknowledged update
    /// survives a crash or a power cut. Concurrent appends share fsyncs.
    #[default]
    Sync,
    /// After the commit, before the disk: faster, but a crash (or an I/O
    /// error that makes the engine reopen the store) may lose up to
    /// [`FLUSH_INTERVAL`](super::FLUSH_INTERVAL) of acknowledged updates.
    /// The store itself stays consistent.
    Async,
}

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    /// Parses `sync` or `async` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("sync") {
            Ok(Self::Sync)
        } else if s.eq_ignore_ascii_case("async") {
            Ok(Self::Async)
        } else {
            Err(ParseDurabilityError(s.to_owned()))
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sync => "sync",
            Self::Async => "async",
        })
    }
}

/// A durability that is neither `sync` nor `async`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown durability {0:?} (expected \"sync\" or \"async\")")]
pub struct ParseDurabilityError(String);

/// How much history to keep. Every limit that is set applies; the default
/// keeps everything. Enforced in the background, so history may exceed a
/// limit for a moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep at most this many updates.
    pub max_updates: Option<u64>,
    /// Remove updates committed longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many bytes of records (the encoded updates plus a
    /// small fixed overhead each; not the file size, which redb grows and
    /// reuses but does not shrink).
    pub max_bytes: Option<u64>,
}

impl Retention {
    pub(super) fn is_unlimited(&self) -> bool {
        self.max_updates.is_none() && self.max_age.is_none() && self.max_bytes.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses() {
        assert_eq!("sync".parse::<Durability>().unwrap(), Durability::Sync);
        assert_eq!("ASYNC".parse::<Durability>().unwrap(), Durability::Async);
        assert!("fast".parse::<Durability>().is_err());
        assert_eq!(Durability::default(), Durability::Sync);
    }
}
