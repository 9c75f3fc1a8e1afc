//! Mercure draft-08 topic matchers.
//!
//! Draft-08 (Mercure 1.0) replaces draft-07's `topic` selectors with typed
//! *topic matchers*. The same matchers select topics in two places: the
//! subscribe query (`match`, `match_exact` and `match_urlpattern`
//! parameters) and the `topics` of Mercure authorization details
//! (`{"match": ..., "match_type": ...}`, parsed by [`crate::authz`]).
//!
//! Names follow Mercure 1.0 as the reference hub and client libraries
//! speak it (`match_urlpattern`, `match_type: "urlpattern"`). The IETF
//! draft text spells the same things `matchURLPattern` and `matchType:
//! "URLPattern"`; those spellings are accepted on input as well, and herald
//! writes the 1.0 ones. Section names below refer to the draft text.
//!
//! - `Exact` (the default): a case-sensitive, byte-for-byte comparison. The
//!   value is never resolved against a base URL nor normalized (section
//!   "Exact Matching").
//! - `URLPattern`: a WHATWG URL Pattern. Relative patterns, and relative
//!   topics when matching, are resolved against the hub's URL, so that a
//!   subscriber can match the hub's own relative topics such as subscription
//!   events. The `ignoreCase` option is never enabled (section "URL
//!   Pattern").
//! - `*` is the reserved wildcard: it matches every topic whatever the
//!   matcher type, because it is recognized before the type is resolved.
//!
//! # Layout
//!
//! This module only declares and re-exports; the code is split by concern
//! into files that each use only those listed before it, so that no two
//! import each other:
//!
//! - `kind.rs`: what every matcher is before it is compiled: its type
//!   ([`MatchType`]), its value's limit ([`MAX_MATCHER_LEN`]) and why one is
//!   refused ([`MatcherError`]).
//! - `url_pattern.rs`: compiling and evaluating URL patterns in linear
//!   time, and why their cost is bounded (constants [`REGEX_SIZE_LIMIT`],
//!   [`MAX_PATTERN_TOPIC_LEN`], the engine [`LinearRegex`]).
//! - `namespace.rs`: the hub's reserved `/.well-known/mercure` namespace,
//!   subscription event topics ([`subscription_topic`]) and
//!   [`is_reserved_topic`].
//! - `topic_matcher.rs`: [`Matcher`] itself, which matches `Exact` and the
//!   [`WILDCARD`] directly and hands URL patterns to `url_pattern.rs`, and
//!   [`Topic`], a topic resolved once for many matchers.
//! - `query.rs`: the subscribe query's `match*` parameters
//!   ([`parse_subscribe_query`], [`MAX_MATCHERS`]).

mod kind;
mod namespace;
mod query;
mod topic_matcher;
mod url_pattern;

pub use kind::{MatchType, MatcherError, MAX_MATCHER_LEN};
pub use namespace::{
    is_reserved_topic, subscription_matcher_path, subscription_topic, HUB_PATH, SUBSCRIPTIONS_PATH,
};
pub use query::{parse_subscribe_query, QueryError, MAX_MATCHERS};
pub use topic_matcher::{Matcher, Topic, WILDCARD};
pub use url_pattern::{LinearRegex, MAX_PATTERN_TOPIC_LEN, REGEX_SIZE_LIMIT};

/// Matchers and a hub URL shared by the tests of this module's files.
#[cfg(test)]
mod fixtures {
    use super::{MatchType, Matcher};
    use url::Url;

    pub(super) fn hub() -> Url {
        Url::parse("https://example.com/.well-known/mercure").unwrap()
    }

    pub(super) fn exact(v: &str) -> Matcher {
        Matcher::new(MatchType::Exact, v, &hub()).unwrap()
    }

    pub(super) fn pattern(v: &str) -> Matcher {
        Matcher::new(MatchType::UrlPattern, v, &hub()).unwrap()
    }
}
