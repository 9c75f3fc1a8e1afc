//! Mercure draft-07 topic selectors.
//!
//! A selector is `*` (every topic), or a string that is compared to the
//! topic exactly and, when it contains RFC 6570 expressions, also matched as
//! a URI template. A selector with braces that do not form a valid template
//! is refused, so a typo fails loudly instead of matching nothing.

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

    /// The selector as the subscriber wrote it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Any => "*",
            Self::Exact(s) => s,
            Self::Template(t) => t.as_str(),
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(s) => s == topic,
            Self::Template(t) => t.as_str() == topic || t.matches(topic),
        }
    }

    pub fn is_template(&self) -> bool {
        matches!(self, Self::Template(_))
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
