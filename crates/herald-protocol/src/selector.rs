//! Topic selectors: what a subscription listens to, in either revision.
//!
//! A draft-07 selector is `*` (every topic), or a string that is compared
//! to the topic exactly and, when it contains RFC 6570 expressions, also
//! matched as a URI template. A selector with braces that do not form a
//! valid template is refused, so a typo fails loudly instead of matching
//! nothing.
//!
//! A draft-08 topic matcher ([`crate::matcher`]) becomes a selector too:
//! `*` is [`Selector::Any`], an exact matcher [`Selector::Exact`], and a URL
//! pattern [`Selector::Pattern`]. So one topic index serves subscribers of
//! both revisions side by side.

use crate::matcher::{MatchType, Matcher};
use crate::template::{TemplateError, UriTemplate};

/// A parsed topic selector.
#[derive(Debug, Clone)]
pub enum Selector {
    /// `*`: matches every topic.
    Any,
    /// A plain topic string, compared byte for byte.
    Exact(String),
    /// A URI template; also matches the template string itself exactly.
    Template(UriTemplate),
    /// A draft-08 URL pattern (never `*`, which is [`Selector::Any`]).
    Pattern(Matcher),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("empty topic selector")]
    Empty,
    #[error("topic selector contains a control character")]
    ControlCharacter,
    #[error("topic selector longer than {0} bytes")]
    TooLong(usize),
    #[error("invalid URI template: {0}")]
    Template(#[from] TemplateError),
}

/// Selectors longer than this are refused: they come from the network.
pub const MAX_SELECTOR_LEN: usize = 2048;

impl Selector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        if s.is_empty() {
            return Err(SelectorError::Empty);
        }
        if s.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong(MAX_SELECTOR_LEN));
        }
        if s.chars().any(char::is_control) {
            return Err(SelectorError::ControlCharacter);
        }
        if s == "*" {
            return Ok(Self::Any);
        }
        if !s.contains(['{', '}']) {
            return Ok(Self::Exact(s.to_owned()));
        }
        let t = UriTemplate::parse(s)?;
        if t.has_expressions() {
            Ok(Self::Template(t))
        } else {
            Ok(Self::Exact(s.to_owned()))
        }
    }

    /// The selector for a draft-08 topic matcher.
    pub fn from_matcher(m: &Matcher) -> Self {
        if m.is_wildcard() {
            Self::Any
        } else {
            match m.match_type() {
                MatchType::Exact => Self::Exact(m.as_str().to_owned()),
                MatchType::UrlPattern => Self::Pattern(m.clone()),
            }
        }
    }

    /// The selector as the subscriber wrote it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Any => "*",
            Self::Exact(s) => s,
            Self::Template(t) => t.as_str(),
            Self::Pattern(m) => m.as_str(),
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(s) => s == topic,
            Self::Template(t) => t.as_str() == topic || t.matches(topic),
            Self::Pattern(m) => m.matches(topic),
        }
    }

    /// True for the selectors that are evaluated rather than looked up
    /// (URI templates and URL patterns): the topic index matches them once
    /// per topic string and caches the result.
    pub fn is_evaluated(&self) -> bool {
        matches!(self, Self::Template(_) | Self::Pattern(_))
    }

    /// A key that tells evaluated selectors apart: a URI template and a URL
    /// pattern with the same text select different topics. Control
    /// characters never occur in selectors, so the prefix cannot collide.
    pub fn index_key(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Pattern(m) => format!("\u{1}{}", m.as_str()).into(),
            other => other.as_str().into(),
        }
    }
}

/// True when any selector matches any of the topics.
pub fn any_matches<'a>(
    selectors: impl IntoIterator<Item = &'a Selector> + Clone,
    topics: &[String],
) -> bool {
    selectors
        .into_iter()
        .any(|s| topics.iter().any(|t| s.matches(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert!(matches!(Selector::parse("*"), Ok(Selector::Any)));
        assert!(matches!(
            Selector::parse("https://a/b"),
            Ok(Selector::Exact(_))
        ));
        assert!(matches!(
            Selector::parse("https://a/{id}"),
            Ok(Selector::Template(_))
        ));
        assert!(Selector::parse("https://a/{id").is_err());
        assert!(Selector::parse("").is_err());
        assert!(Selector::parse("a\nb").is_err());
    }

    #[test]
    fn template_matches_itself_and_expansions() {
        let s = Selector::parse("https://example.com/books/{id}").unwrap();
        assert!(s.matches("https://example.com/books/{id}"));
        assert!(s.matches("https://example.com/books/1"));
        assert!(!s.matches("https://example.com/books/1/2"));
    }
}
