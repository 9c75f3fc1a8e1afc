//! [`Matcher`], a parsed topic matcher, and [`Topic`], a topic resolved
//! once to be matched against many. A matcher matches `Exact` values and
//! the wildcard [`WILDCARD`] itself, and hands URL patterns to
//! `url_pattern.rs`.

use std::sync::Arc;

use url::Url;

use super::kind::{MatchType, MatcherError, MAX_MATCHER_LEN};
use super::namespace::subscription_matcher_path;
use super::url_pattern::{resolve_topic, CompiledPattern};

/// The reserved wildcard matcher value.
pub const WILDCARD: &str = "*";

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
    ///
    /// [`MAX_PATTERN_TOPIC_LEN`]: super::url_pattern::MAX_PATTERN_TOPIC_LEN
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::fixtures::{exact, hub};
    use crate::matcher::is_reserved_topic;
    use proptest::prelude::*;

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
