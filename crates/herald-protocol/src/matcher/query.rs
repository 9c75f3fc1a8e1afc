//! The topic matchers of a draft-08 subscribe query: the `match`,
//! `match_exact` and `match_urlpattern` parameters (section
//! "Subscription").
//!
//! The query is where matchers arrive from the network in bulk, so this is
//! where their number is capped, before anything is compiled, and where
//! the whole `match` parameter namespace is reserved: a misspelled
//! parameter is refused instead of silently matching nothing. Parsing one
//! matcher is [`Matcher::new`]'s business; this module decides
//! which parameters are matchers, of which type, and how many.

use url::Url;

use super::kind::{MatchType, MatcherError};
use super::topic_matcher::Matcher;

/// Default cap on the topic matcher parameters of one subscribe request,
/// matching the hub's default `max_selectors`. The spec leaves the figure
/// to hubs; [`parse_subscribe_query`] takes the cap as an argument so that
/// the hub's configuration decides.
pub const MAX_MATCHERS: usize = 64;

impl MatchType {
    /// Classifies a subscribe query parameter name.
    ///
    /// `match` and `match_exact` select exact matching, `match_urlpattern`
    /// URL patterns (Mercure 1.0); the IETF draft text's `matchExact` and
    /// `matchURLPattern` are accepted as the same. Returns `Ok(None)` for
    /// names outside the reserved `match` namespace (`last_event_id`,
    /// `topic`, ...), and an error for names inside it (equal to `match` or
    /// starting with it, ignoring ASCII case) that name no matcher type, such
    /// as `match_regex` or `Match`: the whole prefix is reserved so that a
    /// misspelling fails loudly instead of silently matching nothing.
    pub fn from_query_param(name: &str) -> Result<Option<Self>, MatcherError> {
        let reserved = name
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("match"));
        if !reserved {
            return Ok(None);
        }
        match name {
            "match" | "match_exact" | "matchExact" => Ok(Some(Self::Exact)),
            "match_urlpattern" | "matchURLPattern" => Ok(Some(Self::UrlPattern)),
            _ => Err(MatcherError::UnknownMatchType(name.to_owned())),
        }
    }

    /// The subscribe query parameter that selects this type.
    pub const fn query_param(self) -> &'static str {
        match self {
            Self::Exact => "match",
            Self::UrlPattern => "match_urlpattern",
        }
    }
}

/// Why a subscribe query was refused. Every variant is a 400 "Bad Request"
/// (section "Subscription").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("too many topic matchers (at most {0})")]
    TooMany(usize),
    #[error("{0}")]
    UnknownParameter(MatcherError),
    #[error("{param} #{index}: {source}")]
    Invalid {
        /// The parameter name (`match`, `matchURLPattern`, ...).
        param: String,
        /// Position among the request's matcher parameters, from 0.
        index: usize,
        source: MatcherError,
    },
}

/// Parses the topic matchers of a draft-08 subscribe query.
///
/// `pairs` are the decoded query parameters in order (see
/// [`crate::form::parse`]); those outside the `match` namespace are
/// ignored. Refuses unknown names in the namespace, more than
/// `max_matchers` matcher parameters (counted before anything is compiled)
/// and invalid matchers. Matchers with the same type and value are kept
/// once, as the spec allows. The result may be empty: whether a request
/// without matchers is valid is the hub's decision.
pub fn parse_subscribe_query<I, K, V>(
    pairs: I,
    base: &Url,
    max_matchers: usize,
) -> Result<Vec<Matcher>, QueryError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut raw = Vec::new();
    for (name, value) in pairs {
        let name = name.as_ref();
        let Some(match_type) =
            MatchType::from_query_param(name).map_err(QueryError::UnknownParameter)?
        else {
            continue;
        };
        if raw.len() == max_matchers {
            return Err(QueryError::TooMany(max_matchers));
        }
        raw.push((name.to_owned(), match_type, value));
    }
    let mut matchers: Vec<Matcher> = Vec::with_capacity(raw.len());
    for (index, (param, match_type, value)) in raw.into_iter().enumerate() {
        let value = value.as_ref();
        if matchers
            .iter()
            .any(|m| m.match_type() == match_type && m.as_str() == value)
        {
            continue;
        }
        let matcher =
            Matcher::new(match_type, value, base).map_err(|source| QueryError::Invalid {
                param,
                index,
                source,
            })?;
        matchers.push(matcher);
    }
    Ok(matchers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::fixtures::hub;

    #[test]
    fn query_param_namespace() {
        // Bare `match` is exact; the 1.0 names and the draft text's names.
        let ok = [
            ("match", MatchType::Exact),
            ("match_exact", MatchType::Exact),
            ("match_urlpattern", MatchType::UrlPattern),
            ("matchExact", MatchType::Exact),
            ("matchURLPattern", MatchType::UrlPattern),
        ];
        for (name, t) in ok {
            assert_eq!(MatchType::from_query_param(name), Ok(Some(t)), "{name}");
        }
        for name in [
            "topic",
            "last_event_id",
            "lastEventID",
            "access_token",
            "matc",
            "",
            "m",
        ] {
            assert_eq!(MatchType::from_query_param(name), Ok(None), "{name}");
        }
        // The whole prefix is reserved, ignoring case.
        for name in [
            "Match",
            "MATCH",
            "matchexact",
            "matchUrlPattern",
            "matchURLPATTERN",
            "matchRegex",
            "matches",
            "MatchExact",
            "match_Exact",
            "match_urlPattern",
            "match_regex",
            "match_",
            "matché",
        ] {
            assert_eq!(
                MatchType::from_query_param(name),
                Err(MatcherError::UnknownMatchType(name.to_owned())),
                "{name}"
            );
        }
    }

    #[test]
    fn spec_subscription_example() {
        // Section "Subscription", the JavaScript example.
        let pairs = [
            ("match", "https://example.com/foo"),
            ("match", "bar"),
            ("matchURLPattern", "https://example.com/bar/:id"),
        ];
        let ms = parse_subscribe_query(pairs, &hub(), MAX_MATCHERS).unwrap();
        assert_eq!(ms.len(), 3);
        let any = |t: &str| ms.iter().any(|m| m.matches(t));
        assert!(any("https://example.com/foo"));
        assert!(any("bar"));
        assert!(any("https://example.com/bar/1"));
        assert!(any("https://example.com/bar/abc?x=1"));
        assert!(!any("https://example.com/bar/1/2"));
        assert!(!any("https://example.com/bar/"));
        assert!(!any("https://example.com/baz"));
        assert!(!any("https://example.com/foo/1"));
    }

    #[test]
    fn subscribe_query_errors_and_dedup() {
        let hub = hub();
        let unknown = parse_subscribe_query([("matchRegex", ".*")], &hub, 8);
        assert_eq!(
            unknown.err(),
            Some(QueryError::UnknownParameter(
                MatcherError::UnknownMatchType("matchRegex".into())
            ))
        );
        let many: Vec<_> = (0..9).map(|i| ("match", format!("t{i}"))).collect();
        assert_eq!(
            parse_subscribe_query(many.clone(), &hub, 8).err(),
            Some(QueryError::TooMany(8))
        );
        assert_eq!(parse_subscribe_query(many, &hub, 9).unwrap().len(), 9);
        let bad = parse_subscribe_query(
            [
                ("lastEventID", "x"),
                ("match", "a"),
                ("matchURLPattern", "https://a/:"),
            ],
            &hub,
            8,
        );
        assert!(matches!(
            bad,
            Err(QueryError::Invalid { ref param, index: 1, source: MatcherError::InvalidPattern(_) })
                if param == "matchURLPattern"
        ));
        let dup = parse_subscribe_query(
            [
                ("match", "a"),
                ("matchExact", "a"),
                ("matchURLPattern", "a"),
                ("topic", "ignored"),
            ],
            &hub,
            8,
        )
        .unwrap();
        assert_eq!(dup.len(), 2);
        assert!(
            parse_subscribe_query(Vec::<(String, String)>::new(), &hub, 8)
                .unwrap()
                .is_empty()
        );
    }
}
