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
//! # Reading URL patterns
//!
//! Patterns follow the URL Pattern standard, including its less obvious
//! parts: a component that a pattern string leaves out is a wildcard, so
//! `https://example.com/books/:id` also matches `https://example.com/books/1?x#y`
//! (write `https://example.com/books/:id?#` to pin an empty query and
//! fragment), and `https://example.com` matches every path on that host.
//! Topics that do not parse as URLs, even relative to the hub's URL, match
//! no URL pattern. Host names compare case-insensitively because URL
//! parsing lowercases them; every other component is case-sensitive.
//!
//! # Evaluation cost
//!
//! The spec requires a linear-time regular expression engine or a cost
//! limit, since URL Pattern compiles to regular expressions (sections "URL
//! Pattern" and "URL-Pattern Denial of Service"). Patterns are compiled by
//! the `urlpattern` crate (denoland/rust-urlpattern, the implementation in
//! Deno). Its default engine is the `regex` crate, and it is generic over
//! the engine, so herald plugs in [`LinearRegex`], a configured `regex`:
//!
//! - The `regex` crate never backtracks. `is_match` runs a lazy DFA, falling
//!   back to a PikeVM when the DFA's cache thrashes, so a match takes time
//!   linear in the input, times the size of the compiled pattern. We only
//!   ask whether a pattern matches, never for its groups: resolving groups
//!   runs the PikeVM on the whole input, measured two orders of magnitude
//!   slower than `is_match` on a hostile pattern.
//! - Byte-oriented and without Unicode classes: every URL component a
//!   pattern is matched against is ASCII after URL parsing (non-ASCII is
//!   percent-encoded, hosts are Punycode), and this makes `.` one state
//!   instead of a UTF-8 decoder, shrinking hostile programs.
//! - The compiled program is limited to [`REGEX_SIZE_LIMIT`] and patterns to
//!   [`MAX_MATCHER_LEN`] bytes: a counted repetition such as
//!   `(?:a{100}){100}` fits in a short pattern but not in the limit, and is
//!   refused.
//! - Topics longer than [`MAX_PATTERN_TOPIC_LEN`] bytes are treated as not
//!   matching any URL pattern without being evaluated: the per-evaluation
//!   cost limit the spec allows, for topics no real URL reaches.
//!
//! What "linear" still allows, measured on this project's 2-core machine
//! (release build): an ordinary pattern costs a microsecond or two per
//! topic, mostly URL parsing, and compiles in 0.1 to 1 ms. A deliberately
//! hostile pattern within the limits (a `.*a.{400}c` group, which makes the
//! DFA thrash) costs up to about 3 microseconds per topic byte on a topic it
//! has not seen: 13 ms at the 4 KiB evaluation cap. That bounds a hostile
//! subscriber without making one free: the hub should keep its caps on
//! matchers per request and connections per client, and may cap topic
//! length at publication.
//!
//! Consequences of the Rust engine, documented rather than hidden:
//!
//! - Custom regular expression groups (`/:id(\d+)`) use Rust `regex`
//!   syntax. ECMAScript features that need backtracking (backreferences,
//!   lookaround) are refused as invalid patterns: they are exactly what the
//!   spec's linear-time requirement excludes. Unicode property classes
//!   (`\p{L}`) are refused too; `\d`, `\w` and `\s` are ASCII, as in
//!   ECMAScript.
//! - Inline flags such as `(?i)` are refused, so a custom group cannot turn
//!   on the case-insensitivity the spec forbids (nor re-enable Unicode).
//!
//! # Subscription event topics
//!
//! [`subscription_topic`] builds the topic of a subscription event,
//! `/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`
//! (section "Subscription Events"), percent-encoding each variable once as a
//! whole, as RFC 6570 simple string expansion does.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::template::expand_simple;
use regex::bytes::{Regex, RegexBuilder};
use url::Url;
use urlpattern::regexp::RegExp;
use urlpattern::{
    RegexSyntax, UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions,
};

/// Longest matcher value, in bytes, of either type. The spec leaves the
/// figure to hubs ("implementation-defined maximums ... to the length of
/// each matcher's pattern"); this is draft-07's selector limit
/// ([`crate::selector::MAX_SELECTOR_LEN`]): room for any ordinary URL, and
/// a small bound on the size of the regular expressions a pattern becomes.
pub const MAX_MATCHER_LEN: usize = 2048;

/// Default cap on the topic matcher parameters of one subscribe request,
/// matching the hub's default `max_selectors`. The spec leaves the figure
/// to hubs; [`parse_subscribe_query`] takes the cap as an argument so that
/// the hub's configuration decides.
pub const MAX_MATCHERS: usize = 64;

/// Limit on each compiled regular expression of a URL pattern (see
/// [`RegexBuilder::size_limit`]). A pattern at [`MAX_MATCHER_LEN`] made of
/// ordinary segments and groups compiles to a few KiB; only counted
/// repetitions get near this. Matching cost grows with program size, so
/// this bounds the constant of the linear-time match.
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// Topics longer than this, in bytes, match no URL pattern and are not
/// evaluated: the cost limit of the module docs. Twice [`MAX_MATCHER_LEN`],
/// and about the longest URL that browsers, CDNs and search engines handle
/// reliably; a longer topic is no URL that a subscriber selects by pattern.
/// Exact matchers and `*` are not affected.
pub const MAX_PATTERN_TOPIC_LEN: usize = 4096;

/// Limit on the nesting depth of a custom regular expression group. The
/// patterns `urlpattern` generates nest four levels around a group.
const REGEX_NEST_LIMIT: u32 = 32;

/// The path under which the hub publishes subscription events.
pub const SUBSCRIPTIONS_PATH: &str = "/.well-known/mercure/subscriptions";

/// The path of the hub; topics under it are reserved (section
/// "Publication").
pub const HUB_PATH: &str = "/.well-known/mercure";

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

#[derive(Debug)]
struct CompiledPattern {
    pattern: UrlPattern<LinearRegex>,
    /// The hub's URL, to resolve relative topics.
    base: Url,
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
                MatchType::UrlPattern => Kind::Pattern(Arc::new(CompiledPattern {
                    pattern: compile_pattern(value, base)?,
                    base: base.clone(),
                })),
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
            Kind::Pattern(p) => {
                topic.len() <= MAX_PATTERN_TOPIC_LEN
                    && p.base
                        .join(topic)
                        .is_ok_and(|url| pattern_matches(&p.pattern, url))
            }
        }
    }

    /// Like [`Matcher::matches`], with the topic already resolved. The
    /// topic must have been resolved against the same hub URL as the
    /// matcher was parsed with.
    pub fn matches_topic(&self, topic: &Topic<'_>) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact => self.value == topic.raw,
            Kind::Pattern(p) => topic
                .url
                .as_ref()
                .is_some_and(|url| pattern_matches(&p.pattern, url.clone())),
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
        let url = if raw.len() <= MAX_PATTERN_TOPIC_LEN {
            base.join(raw).ok()
        } else {
            None
        };
        Self { raw, url }
    }

    pub fn as_str(&self) -> &'a str {
        self.raw
    }
}

/// Compiles a URL pattern string relative to `base`, never case-insensitive.
fn compile_pattern(value: &str, base: &Url) -> Result<UrlPattern<LinearRegex>, MatcherError> {
    if has_stray_closing_bracket(value) {
        return Err(MatcherError::InvalidPattern(
            "unbalanced ']' (escape it as '\\]')".to_owned(),
        ));
    }
    let parse = || -> Result<UrlPattern<LinearRegex>, urlpattern::Error> {
        let init =
            UrlPatternInit::parse_constructor_string::<LinearRegex>(value, Some(base.clone()))?;
        let options = UrlPatternOptions {
            regex_syntax: RegexSyntax::Rust,
            ignore_case: false,
        };
        UrlPattern::parse(init, options)
    };
    // The parser is third-party code fed untrusted input, and has internal
    // assertions; a bug there must refuse one pattern, not take down the
    // connection handling it.
    match catch_unwind(AssertUnwindSafe(parse)) {
        Ok(Ok(pattern)) => Ok(pattern),
        Ok(Err(e)) => Err(MatcherError::InvalidPattern(e.to_string())),
        Err(_) => Err(MatcherError::InvalidPattern(
            "pattern not supported".to_owned(),
        )),
    }
}

/// True when a `]` outside regular expression groups and escapes closes no
/// `[`. `urlpattern` 0.6 counts IPv6 brackets in the host with an unsigned
/// integer and underflows on such a `]` (found by `fuzz/`): a panic with
/// overflow checks, a silently wrong parse without. A stray `]` is not
/// valid in a URL host and rare elsewhere; `\]` still spells one.
fn has_stray_closing_bracket(pattern: &str) -> bool {
    let mut depth = 0usize;
    let mut group = 0usize;
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' => group += 1,
            ')' => group = group.saturating_sub(1),
            '[' if group == 0 => depth += 1,
            ']' if group == 0 => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            _ => {}
        }
    }
    false
}

fn pattern_matches(pattern: &UrlPattern<LinearRegex>, url: Url) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        pattern.test(UrlPatternMatchInput::Url(url))
    }))
    .is_ok_and(|r| r.unwrap_or(false))
}

/// The regular expression engine plugged into `urlpattern`: the `regex`
/// crate (linear time), with size limits, no inline flags and no
/// case-insensitivity. See the module docs.
#[derive(Debug)]
pub struct LinearRegex(Regex);

impl RegExp for LinearRegex {
    fn syntax() -> RegexSyntax {
        RegexSyntax::Rust
    }

    fn parse(pattern: &str, flags: &str, _force_eval: bool) -> Result<Self, ()> {
        // `urlpattern` passes `ui` when the ignoreCase option is set; herald
        // never sets it, and refuses it here too.
        if flags.contains('i') {
            return Err(());
        }
        if has_inline_flags(pattern) {
            return Err(());
        }
        RegexBuilder::new(pattern)
            .unicode(false)
            .size_limit(REGEX_SIZE_LIMIT)
            .nest_limit(REGEX_NEST_LIMIT)
            .build()
            .map(Self)
            .map_err(|_| ())
    }

    /// Reports a match without resolving groups (which nothing in herald
    /// reads): `urlpattern` pairs group names with what this returns and
    /// tolerates a short list. `is_match` runs only the DFA engines.
    fn matches<'a>(&self, text: &'a str) -> Option<Vec<Option<&'a str>>> {
        self.0.is_match(text.as_bytes()).then(Vec::new)
    }

    fn pattern_string(&self) -> &str {
        self.0.as_str()
    }
}

/// True when a regular expression sets flags inline (`(?i)`, `(?i:...)`),
/// or cannot be parsed (the regex compiler would refuse it anyway).
fn has_inline_flags(pattern: &str) -> bool {
    use regex_syntax::ast::{self, Ast, GroupKind, Visitor};

    struct FindFlags;
    impl Visitor for FindFlags {
        type Output = ();
        type Err = ();
        fn finish(self) -> Result<(), ()> {
            Ok(())
        }
        fn visit_pre(&mut self, ast: &Ast) -> Result<(), ()> {
            match ast {
                Ast::Flags(_) => Err(()),
                Ast::Group(g) => match &g.kind {
                    GroupKind::NonCapturing(flags) if !flags.items.is_empty() => Err(()),
                    _ => Ok(()),
                },
                _ => Ok(()),
            }
        }
    }

    let Ok(parsed) = ast::parse::ParserBuilder::new()
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .parse(pattern)
    else {
        return true;
    };
    // `visit` walks the tree on the heap, so depth cannot overflow the stack.
    ast::visit(&parsed, FindFlags).is_err()
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
            .any(|m| m.match_type == match_type && m.value == value)
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

/// The `{match_type}/{match}` part of a subscription event topic, each
/// variable percent-encoded once as RFC 6570 simple expansion does
/// (everything but `ALPHA DIGIT - . _ ~`, UTF-8 octets in upper-case hex;
/// an existing `%` is encoded too, section "Subscription Events").
pub fn subscription_matcher_path(match_type: MatchType, value: &str) -> String {
    format!("{}/{}", match_type.name(), expand_simple(value))
}

/// The topic of a subscription event:
/// `/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`.
/// Relative, as in the spec's examples; it is also the path of the
/// subscription in the subscription API.
pub fn subscription_topic(match_type: MatchType, value: &str, subscriber: &str) -> String {
    format!(
        "{SUBSCRIPTIONS_PATH}/{}/{}",
        subscription_matcher_path(match_type, value),
        expand_simple(subscriber)
    )
}

/// True when a published topic addresses the hub's reserved namespace: once
/// resolved against the hub's URL, its path is `/.well-known/mercure` or
/// below it, whatever its scheme and host (section "Publication"; the hub
/// answers 403). A topic that does not parse as a URL reference addresses
/// nothing.
pub fn is_reserved_topic(topic: &str, base: &Url) -> bool {
    base.join(topic).is_ok_and(|url| {
        let path = url.path();
        path == HUB_PATH
            || path
                .strip_prefix(HUB_PATH)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hub() -> Url {
        Url::parse("https://example.com/.well-known/mercure").unwrap()
    }

    fn exact(v: &str) -> Matcher {
        Matcher::new(MatchType::Exact, v, &hub()).unwrap()
    }

    fn pattern(v: &str) -> Matcher {
        Matcher::new(MatchType::UrlPattern, v, &hub()).unwrap()
    }

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
    fn url_pattern_basics() {
        let m = pattern("https://example.com/books/:id");
        assert!(m.matches("https://example.com/books/1"));
        // Hosts are case-insensitive through URL canonicalization.
        assert!(m.matches("https://EXAMPLE.com/books/1"));
        // Other components are case-sensitive.
        assert!(!m.matches("https://example.com/Books/1"));
        assert!(!m.matches("http://example.com/books/1"));
        assert!(!m.matches("https://example.org/books/1"));
        // Omitted search and hash are wildcards (URL Pattern standard).
        assert!(m.matches("https://example.com/books/1?x=1#h"));
        // ... unless pinned.
        let pinned = pattern("https://example.com/books/:id?#");
        assert!(pinned.matches("https://example.com/books/1"));
        assert!(!pinned.matches("https://example.com/books/1?x=1"));
        assert!(!pinned.matches("https://example.com/books/1#h"));

        let star = pattern("https://example.com/books/*");
        assert!(star.matches("https://example.com/books/1/chapters/2"));
        assert!(!star.matches("https://example.com/authors/1"));
        // Non-URL topics never match a URL pattern.
        assert!(!star.matches("http://[::1"));

        let group = pattern("https://example.com/books/:id(\\d+)");
        assert!(group.matches("https://example.com/books/42"));
        assert!(!group.matches("https://example.com/books/forty-two"));

        // Brackets: IPv6 hosts, classes in groups and escaped `]` are fine.
        assert!(pattern("https://[\\:\\:1]/:id").matches("https://[::1]/1"));
        assert!(pattern("https://example.com/:id([a-z]+)").matches("https://example.com/abc"));
        assert!(pattern("https://example.com/a\\]b").matches("https://example.com/a]b"));

        let optional = pattern("https://example.com/books/:id?");
        assert!(optional.matches("https://example.com/books"));
        assert!(optional.matches("https://example.com/books/1"));
    }

    #[test]
    fn relative_patterns_and_topics_use_the_hub_url() {
        // Section "URL Pattern": the spec's relative example.
        let m = pattern("/.well-known/mercure/subscriptions/exact/:topic/:subscriber");
        let topic = subscription_topic(
            MatchType::Exact,
            "https://example.com/a-topic",
            "urn:uuid:1",
        );
        assert!(m.matches(&topic));
        assert!(m.matches(&format!("https://example.com{topic}")));
        // Resolved against the hub's origin, not another one.
        assert!(!m.matches(&format!("https://other.example{topic}")));
        assert!(!m.matches(&subscription_topic(MatchType::UrlPattern, "x", "y")));

        // A relative path resolves against the hub URL's directory.
        let rel = pattern("books/:id");
        assert!(rel.matches("books/1"));
        assert!(rel.matches("https://example.com/.well-known/books/1"));
        assert!(!rel.matches("https://example.com/books/1"));

        // The same through a pre-resolved topic.
        let t = Topic::new("books/1", &hub());
        assert!(rel.matches_topic(&t));
        assert!(!exact("https://example.com/.well-known/books/1").matches_topic(&t));
        assert!(exact("books/1").matches_topic(&t));
        assert_eq!(t.as_str(), "books/1");
    }

    #[test]
    fn case_insensitivity_cannot_be_enabled() {
        // The ignoreCase option is never set, and a custom group cannot set
        // the flag inline.
        for p in [
            "https://example.com/:id((?i)abc)",
            "https://example.com/:id((?i:abc))",
            "https://example.com/(a(?i)b)",
            "https://example.com/:id((?x)a b)",
        ] {
            assert!(
                matches!(
                    Matcher::new(MatchType::UrlPattern, p, &hub()),
                    Err(MatcherError::InvalidPattern(_))
                ),
                "{p}"
            );
        }
        // Non-capturing groups without flags are fine.
        let m = pattern("https://example.com/:id(a(?:b|c))");
        assert!(m.matches("https://example.com/ab"));
        assert!(!m.matches("https://example.com/AB"));
        assert!(LinearRegex::parse("^a$", "ui", false).is_err());
        assert!(LinearRegex::parse("^a$", "u", false).is_ok());
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
        assert!(Matcher::new(MatchType::Exact, &"a".repeat(MAX_MATCHER_LEN), &hub).is_ok());
        for p in [
            "https://example.com/:id(",
            "https://example.com/:",
            "https://example.com/:id/:id",
            "https://example.com/(\\1)",
            "https://example.com/((?=a)a)",
            "https://example.com/{",
            "https://example.com/:id(\\p{L}+)",
            // Found by fuzz/: urlpattern's host bracket counter underflows.
            "https://ehttps]o/exaboom",
            "*ttps://exaAple.com6]/bar/:i~",
            "https://example.com/a]b",
        ] {
            assert!(
                matches!(
                    Matcher::new(MatchType::UrlPattern, p, &hub),
                    Err(MatcherError::InvalidPattern(_))
                ),
                "{p}"
            );
        }
        assert_eq!(
            Matcher::parse("Regex", "x", &hub).err(),
            Some(MatcherError::UnknownMatchType("Regex".into()))
        );
        assert!(Matcher::parse("URLPattern", "https://a/:b", &hub).is_ok());
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

    #[test]
    fn subscription_topics() {
        // Section "Subscription Events" and "Subscription API" examples.
        assert_eq!(
            subscription_topic(
                MatchType::UrlPattern,
                "https://example.com/:selector",
                "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6"
            ),
            "/.well-known/mercure/subscriptions/urlpattern/https%3A%2F%2Fexample.com%2F%3Aselector/urn%3Auuid%3Abb3de268-05b0-4c65-b44e-8f9acefc29d6"
        );
        assert_eq!(
            exact("https://example.com/a-topic").subscription_path(),
            "exact/https%3A%2F%2Fexample.com%2Fa-topic"
        );
        // Encoded exactly once: an existing escape is encoded again, as a
        // whole-string expansion requires; non-ASCII as UTF-8 octets.
        assert_eq!(
            subscription_matcher_path(MatchType::Exact, "a%20b/é~*"),
            "exact/a%2520b%2F%C3%A9~%2A"
        );
        assert_eq!(
            Matcher::new(MatchType::UrlPattern, "*", &hub())
                .unwrap()
                .subscription_path(),
            "urlpattern/%2A"
        );
    }

    #[test]
    fn reserved_namespace() {
        let hub = hub();
        for topic in [
            "/.well-known/mercure",
            "/.well-known/mercure/subscriptions/Exact/a/b",
            "https://example.com/.well-known/mercure/subscriptions/x",
            "https://other.example/.well-known/mercure/",
            "/.well-known/./mercure/x",
            "/a/../.well-known/mercure",
            // Relative to the hub URL's directory.
            "mercure",
            "mercure/subscriptions",
            "/.well-known/mercure?x",
        ] {
            assert!(is_reserved_topic(topic, &hub), "{topic}");
        }
        for topic in [
            "/.well-known/mercurey",
            "/.well-known/mercure-x/y",
            "/.WELL-KNOWN/mercure",
            "bar",
            "https://example.com/foo",
            "urn:uuid:1",
            "http://[::1",
        ] {
            assert!(!is_reserved_topic(topic, &hub), "{topic}");
        }
    }

    #[test]
    fn pathological_patterns_are_refused_or_cheap() {
        let hub = hub();
        // Counted repetitions that a short pattern can spell blow past the
        // compiled-size limit and are refused at parse time.
        for p in [
            "https://example.com/:a((?:a{100}){100})",
            "https://example.com/:a((?:[a-z]{100}){100})",
            "https://example.com/:a(.{1000}.{1000}.{1000})",
        ] {
            assert!(
                matches!(
                    Matcher::new(MatchType::UrlPattern, p, &hub),
                    Err(MatcherError::InvalidPattern(_))
                ),
                "{p}"
            );
        }
        // The classic backtracking killers, and a DFA-thrashing group, are
        // accepted: the engine has no backtracking, so one evaluation is
        // linear in the topic (see the module docs). Each runs once over
        // topics at the evaluation cap; a bounded-work check, not a timing
        // assertion.
        let nested = format!(
            "https://example.com/{}",
            (0..40)
                .map(|i| format!(":p{i}((?:a*)*)"))
                .collect::<String>()
        );
        let wild = format!("https://example.com/{}x", "*a".repeat(200));
        assert!(nested.len() <= MAX_MATCHER_LEN && wild.len() <= MAX_MATCHER_LEN);
        let path_len = MAX_PATTERN_TOPIC_LEN - "https://example.com/".len();
        for p in [
            "https://example.com/:a((?:a+)+)b".to_owned(),
            "https://example.com/:a((?:a|a)*)b".to_owned(),
            "https://example.com/:a((?:a|aa)+)b".to_owned(),
            "https://example.com/:a(.*a.{200})c".to_owned(),
            nested,
            wild,
        ] {
            let m = Matcher::new(MatchType::UrlPattern, &p, &hub).unwrap();
            let noise: String = (0..path_len - 1)
                .map(|i| if (i * 7919) % 13 < 6 { 'a' } else { 'b' })
                .collect();
            let _ = m.matches(&format!("https://example.com/{noise}a"));
            assert!(!m.matches(&format!(
                "https://example.com/{}!",
                "a".repeat(path_len - 1)
            )));
        }
        // Past the cap, URL patterns are not evaluated at all.
        let any_path = pattern("https://example.com/*");
        let at_cap = format!("https://example.com/{}", "a".repeat(path_len));
        let over = format!("{at_cap}a");
        assert!(any_path.matches(&at_cap));
        assert!(any_path.matches_topic(&Topic::new(&at_cap, &hub)));
        assert!(!any_path.matches(&over));
        assert!(!any_path.matches_topic(&Topic::new(&over, &hub)));
        assert!(exact(&"a".repeat(MAX_MATCHER_LEN)).matches(&"a".repeat(MAX_MATCHER_LEN)));
        assert!(Matcher::new(MatchType::UrlPattern, "*", &hub)
            .unwrap()
            .matches(&over));
        // Patterns near the length limit made of ordinary parts compile
        // within the size limit.
        let segments: String = (0..200).map(|i| format!("/:s{i}")).collect();
        let p = format!("https://example.com{segments}");
        assert!(p.len() <= MAX_MATCHER_LEN);
        let m = Matcher::new(MatchType::UrlPattern, &p, &hub).unwrap();
        let topic: String = (0..200).map(|i| format!("/{i}")).collect();
        assert!(m.matches(&format!("https://example.com{topic}")));
        let mixed: String = (0..60).map(|i| format!("/x{i}/:s{i}/*")).collect();
        assert!(Matcher::new(
            MatchType::UrlPattern,
            &format!("https://example.com{mixed}"),
            &hub
        )
        .is_ok());
        let groups: String = (0..100).map(|i| format!("/:g{i}([0-9]+)")).collect();
        assert!(Matcher::new(
            MatchType::UrlPattern,
            &format!("https://example.com{groups}"),
            &hub
        )
        .is_ok());
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
        fn pattern_syntax_heavy_never_panics(
            value in "[a-z0-9:/*?#(){}+.\\\\\\[\\]|^$@%=&-]{1,40}",
            topic in "[a-z0-9:/?#.%=&-]{0,30}",
        ) {
            for prefix in ["", "https://example.com/", "/"] {
                let v = format!("{prefix}{value}");
                if let Ok(m) = Matcher::new(MatchType::UrlPattern, &v, &hub()) {
                    let _ = m.matches(&topic);
                    let _ = m.matches(&format!("https://example.com/{topic}"));
                }
            }
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

        #[test]
        fn literal_pattern_matches_exactly_its_url(
            host in "[a-z][a-z0-9]{0,8}(\\.[a-z]{2,4})?",
            path in "(/[A-Za-z0-9._~=&-]{1,8}){0,4}",
            query in "[A-Za-z0-9._~=&/-]{0,10}",
            hash in "[A-Za-z0-9._~=&/-]{0,10}",
            other in prop::sample::select(vec![0usize, 1, 2, 3]),
            flip in "[A-Za-z0-9]",
        ) {
            // A pattern spelling every component and no wildcard matches
            // the URL it spells and no other.
            let url = format!("https://{host}{path}?{query}#{hash}");
            let m = Matcher::new(MatchType::UrlPattern, &url, &hub()).unwrap();
            prop_assert!(m.matches(&url));
            let mut parts = [path.clone(), query.clone(), hash.clone(), host.clone()];
            parts[other].push_str(&flip);
            let changed = format!("https://{}{}?{}#{}", parts[3], parts[0], parts[1], parts[2]);
            prop_assert_eq!(m.matches(&changed), changed == url);
            // The relative spelling of a path on the hub's host, too.
            if !path.is_empty() {
                let rel = format!("{path}?{query}#{hash}");
                let m = Matcher::new(MatchType::UrlPattern, &rel, &hub()).unwrap();
                let abs = format!("https://example.com{rel}");
                prop_assert!(m.matches(&rel));
                prop_assert!(m.matches(&abs));
                let moved = format!("https://example.org{rel}");
                prop_assert!(!m.matches(&moved));
            }
        }

        #[test]
        fn subscription_path_round_trips(value in any::<String>()) {
            let path = subscription_matcher_path(MatchType::UrlPattern, &value);
            let enc = path.strip_prefix("urlpattern/").unwrap();
            prop_assert!(enc.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
            let dec = percent_encoding::percent_decode_str(enc).decode_utf8().unwrap();
            prop_assert_eq!(dec, value.as_str());
        }
    }
}
