//! What a matcher is before it is compiled: its type
//! ([`MatchType`]), the length limit on its value ([`MAX_MATCHER_LEN`]) and
//! why one is refused ([`MatcherError`]). Every other matcher module builds
//! on these.

/// Longest matcher value, in bytes, of either type. The spec leaves the
/// figure to hubs ("implementation-defined maximums ... to the length of
/// each matcher's pattern"); this is draft-07's selector limit
/// ([`crate::selector::MAX_SELECTOR_LEN`]): room for any ordinary URL, and
/// a small bound on the size of the regular expressions a pattern becomes.
pub const MAX_MATCHER_LEN: usize = 2048;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
