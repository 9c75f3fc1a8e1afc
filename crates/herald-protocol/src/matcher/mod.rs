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
//! This module holds what every matcher is: its type, its value's limits,
//! the wildcard, and [`Matcher`] itself, which matches `Exact` and `*`
//! directly. The rest is split by concern, and re-exported here:
//!
//! - `url_pattern.rs`: compiling and evaluating URL patterns in linear
//!   time, and why their cost is bounded (constants [`REGEX_SIZE_LIMIT`],
//!   [`MAX_PATTERN_TOPIC_LEN`], the engine [`LinearRegex`]).
//! - `query.rs`: the subscribe query's `match*` parameters
//!   ([`parse_subscribe_query`], [`MAX_MATCHERS`]).
//! - `namespace.rs`: the hub's reserved `/.well-known/mercure` namespace,
//!   subscription event topics ([`subscription_topic`]) and
//!   [`is_reserved_topic`].

mod namespace;
mod query;
mod url_pattern;

use std::sync::Arc;

use url::Url;

pub use namespace::{
    is_reserved_topic, subscription_matcher_path, subscription_topic, HUB_PATH, SUBSCRIPTIONS_PATH,
};
pub use query::{parse_subscribe_query, QueryError, MAX_MATCHERS};
pub use url_pattern::{LinearRegex, MAX_PATTERN_TOPIC_LEN, REGEX_SIZE_LIMIT};

use url_pattern::{resolve_topic, CompiledPattern};

/// Longest matcher value, in bytes, of either type. The spec leaves the
/// figure to hubs ("implementation-defined maximums ... to the length of
/// each matcher's pattern"); this is draft-07's selector limit
/// ([`crate::selector::MAX_SELECTOR_LEN`]): room for any ordinary URL, and
/// a small bound on the size of the regular expressions a pattern becomes.
pub const MAX_MATCHER_LEN: usize = 2048;

/// The reserved wildcard matcher value.
pub const WILDCARD: &str = "*";

/// A topic matcher type (section "Matcher Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchType {
    /// Byte-for-byte comparison; the default.
    Exact,
    /// WHATWG URL Pattern, relative to the hub's URL.
    UrlPattern,
}

impl MatchType {
    /// The canonical name, as Mercure 1.0 spells it: the `match_type` value
    /// of authorization details and subscription events, the suffix of the
    /// `match_*` query parameter, and the `{match_type}` segment of
    /// subscription event topics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::UrlPattern => "urlpattern",
        }
    }

    /// Parses a `match_type` value. Case-sensitive. The spelling of the
    /// IETF draft text (`Exact`, `URLPattern`) is accepted too, so tokens
    /// minted from either text work; `Urlpattern` or `EXACT` are not types.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "exact" | "Exact" => Some(Self::Exact),
            "urlpattern" | "URLPattern" => Some(Self::UrlPattern),
            _ => None,
        }
    }
}

/// Why a matcher was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error("empty topic matcher")]
    Empty,
    #[error("topic matcher longer than {0} bytes")]
    TooLong(usize),
    #[error("topic matcher contains a control character")]
    ControlCharacter,
    #[error("unknown matcher type {0:?}")]
    UnknownMatchType(String),
    #[error("invalid URL pattern: {0}")]
    InvalidPattern(String),
}

/// A parsed topic matcher.
///
/// Cheap to clone: a compiled URL pattern is shared.
#[derive(Debug, Clone)]
pub struct Matcher {
    match_type: MatchType,
    value: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Any,
    Exact,
    Pattern(Arc<CompiledPattern>),
}

impl Matcher {
    /// Parses a matcher given its `match_type` name (`exact` or
    /// `urlpattern`, case-sensitive; see [`MatchType::from_name`]). `base` is the hub's URL.
    pub fn parse(kind: &str, value: &str, base: &Url) -> Result<Self, MatcherError> {
        let match_type = MatchType::from_name(kind)
            .ok_or_else(|| MatcherError::UnknownMatchType(kind.to_owned()))?;
        Self::new(match_type, value, base)
    }

    /// Parses a matcher of a known type. `base` is the hub's URL, against
    /// which relative URL patterns are resolved; it is not used otherwise.
    pub fn new(match_type: MatchType, value: &str, base: &Url) -> Result<Self, MatcherError> {
        if value.is_empty() {
            return Err(MatcherError::Empty);
        }
        if value.len() > MAX_MATCHER_LEN {
            return Err(MatcherError::TooLong(MAX_MATCHER_LEN));
        }
        // `char::is_control` is exactly C0, DEL and C1, the characters the
        // spec forbids in matcher values.
        if value.chars().any(char::is_control) {
            return Err(MatcherError::ControlCharacter);
        }
        let kind = if value == WILDCARD {
            Kind::Any
        } else {
            match match_type {
                MatchType::Exact => Kind::Exact,
                MatchType::UrlPattern => {
                    Kind::Pattern(Arc::new(CompiledPattern::new(value, base)?))
                }
            }
        };
        Ok(Self {
            match_type,
            value: value.to_owned(),
            kind,
        })
    }

    /// The matcher type, as requested (the wildcard keeps its type, which
    /// names its subscription).
    pub fn match_type(&self) -> MatchType {
        self.match_type
    }

    /// The matcher value as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// True for the reserved wildcard `*`.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.kind, Kind::Any)
    }

    /// True when the matcher selects `topic`.
    ///
    /// A URL pattern resolves the topic against the hub's URL on each call;
    /// to match one topic against many matchers, resolve it once with
    /// [`Topic::new`] and call [`Matcher::matches_topic`].
    pub fn matches(&self, topic: &str) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact => self.value == topic,
            Kind::Pattern(p) => p.matches(topic),
        }
    }

    /// Like [`Matcher::matches`], with the topic already resolved. The
    /// topic must have been resolved against the same hub URL as the
    /// matcher was parsed with.
    pub fn matches_topic(&self, topic: &Topic<'_>) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact => self.value == topic.raw,
            Kind::Pattern(p) => topic.url.as_ref().is_some_and(|url| p.matches_url(url)),
        }
    }

    /// The `{match_type}/{match}` part of this matcher's subscription event
    /// topics; see [`subscription_matcher_path`].
    pub fn subscription_path(&self) -> String {
        subscription_matcher_path(self.match_type, &self.value)
    }
}

/// A topic resolved once against the hub's URL, to be matched against many
/// matchers.
#[derive(Debug, Clone)]
pub struct Topic<'a> {
    raw: &'a str,
    url: Option<Url>,
}

impl<'a> Topic<'a> {
    /// Resolves `raw` against `base` (the hub's URL). A topic that does not
    /// parse as a URL reference, or is longer than
    /// [`MAX_PATTERN_TOPIC_LEN`], still matches `Exact` matchers and `*`.
    pub fn new(raw: &'a str, base: &Url) -> Self {
        Self {
            raw,
            url: resolve_topic(raw, base),
        }
    }

    pub fn as_str(&self) -> &'a str {
        self.raw
    }
}

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

#[cfg(test)]
mod tests {
    use super::fixtures::{exact, hub};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn match_type_names() {
        for t in [MatchType::Exact, MatchType::UrlPattern] {
            assert_eq!(MatchType::from_name(t.name()), Some(t));
        }
        assert_eq!(MatchType::from_name("Exact"), Some(MatchType::Exact));
        assert_eq!(
            MatchType::from_name("URLPattern"),
            Some(MatchType::UrlPattern)
        );
        assert_eq!(MatchType::from_name("UrlPattern"), None);
        assert_eq!(MatchType::from_name("EXACT"), None);
        assert_eq!(MatchType::from_name("url_pattern"), None);
    }

    #[test]
    fn exact_is_byte_for_byte() {
        // Section "Exact Matching": no resolution, no normalization.
        let m = exact("https://example.com/foo");
        assert!(m.matches("https://example.com/foo"));
        assert!(!m.matches("https://EXAMPLE.com/foo"));
        assert!(!m.matches("https://example.com/foo/"));
        assert!(!m.matches("https://example.com/%66oo"));
        let rel = exact("bar");
        assert!(rel.matches("bar"));
        assert!(!rel.matches("https://example.com/.well-known/bar"));
        // NFC and NFD forms of "é" differ.
        assert!(!exact("caf\u{e9}").matches("cafe\u{301}"));
        // A template is just a string here.
        assert!(exact("https://example.com/{id}").matches("https://example.com/{id}"));
        assert!(!exact("https://example.com/{id}").matches("https://example.com/1"));
    }

    #[test]
    fn wildcard_whatever_the_type() {
        // Section "Matcher Types": `*` is recognized before the type.
        for t in [MatchType::Exact, MatchType::UrlPattern] {
            let m = Matcher::new(t, "*", &hub()).unwrap();
            assert!(m.is_wildcard());
            assert_eq!(m.match_type(), t);
            for topic in [
                "*",
                "",
                "bar",
                "urn:uuid:1",
                "https://a/b",
                "not a url \u{1F600}",
            ] {
                assert!(m.matches(topic), "{topic:?}");
            }
        }
        assert!(!exact("**").is_wildcard());
        assert!(!exact("**").matches("x"));
    }

    #[test]
    fn invalid_matchers() {
        let hub = hub();
        let long = "a".repeat(MAX_MATCHER_LEN + 1);
        let cases: [(MatchType, &str, MatcherError); 6] = [
            (MatchType::Exact, "", MatcherError::Empty),
            (MatchType::UrlPattern, "", MatcherError::Empty),
            (
                MatchType::Exact,
                &long,
                MatcherError::TooLong(MAX_MATCHER_LEN),
            ),
            (MatchType::Exact, "a\nb", MatcherError::ControlCharacter),
            (MatchType::Exact, "a\u{7f}", MatcherError::ControlCharacter),
            (
                MatchType::UrlPattern,
                "a\u{85}",
                MatcherError::ControlCharacter,
            ),
        ];
        for (t, v, err) in cases {
            assert_eq!(Matcher::new(t, v, &hub).err(), Some(err), "{v:?}");
        }
        assert_eq!(
            Matcher::parse("Regex", "x", &hub).err(),
            Some(MatcherError::UnknownMatchType("Regex".into()))
        );
        assert!(Matcher::parse("URLPattern", "https://a/:b", &hub).is_ok());
    }

    proptest! {
        #[test]
        fn never_panics(kind in "[A-Za-z]{0,12}", value in any::<String>(), topic in any::<String>()) {
            for t in [MatchType::Exact, MatchType::UrlPattern] {
                if let Ok(m) = Matcher::new(t, &value, &hub()) {
                    let _ = m.matches(&topic);
                    let _ = m.matches(&value);
                    let _ = m.subscription_path();
                }
            }
            let _ = Matcher::parse(&kind, &value, &hub());
            let _ = MatchType::from_query_param(&kind);
            let _ = is_reserved_topic(&topic, &hub());
        }

        #[test]
        fn exact_equals_string_equality(value in any::<String>(), topic in any::<String>()) {
            if let Ok(m) = Matcher::new(MatchType::Exact, &value, &hub()) {
                if value == "*" {
                    prop_assert!(m.matches(&topic));
                } else {
                    prop_assert_eq!(m.matches(&topic), topic == value);
                    prop_assert!(m.matches(&value));
                }
            }
        }

    }
}
