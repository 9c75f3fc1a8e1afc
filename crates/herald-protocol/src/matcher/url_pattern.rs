//! Mercure draft-08 `URLPattern` matchers: a WHATWG URL Pattern compiled
//! into linear-time regular expressions, and topics resolved against the
//! hub's URL to be matched against it.
//!
//! URL patterns are the one matcher type that runs third-party parsing and
//! regular expressions on what a subscriber sends, so everything that
//! bounds that cost and contains that code's failures lives here: the
//! engine plugged into `urlpattern`, the size and length limits, and the
//! guards around the parser (section "URL-Pattern Denial of Service").
//! [`Matcher`](super::topic_matcher::Matcher) holds a [`CompiledPattern`]
//! and knows nothing of how it matches.
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
//! [`MAX_MATCHER_LEN`]: super::kind::MAX_MATCHER_LEN

use std::panic::{catch_unwind, AssertUnwindSafe};

use regex::bytes::{Regex, RegexBuilder};
use url::Url;
use urlpattern::regexp::RegExp;
use urlpattern::{
    RegexSyntax, UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions,
};

use super::kind::MatcherError;

/// Limit on each compiled regular expression of a URL pattern (see
/// [`RegexBuilder::size_limit`]). A pattern at [`MAX_MATCHER_LEN`] made of
/// ordinary segments and groups compiles to a few KiB; only counted
/// repetitions get near this. Matching cost grows with program size, so
/// this bounds the constant of the linear-time match.
///
/// [`MAX_MATCHER_LEN`]: super::kind::MAX_MATCHER_LEN
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// Topics longer than this, in bytes, match no URL pattern and are not
/// evaluated: the cost limit of the module docs. Twice [`MAX_MATCHER_LEN`],
/// and about the longest URL that browsers, CDNs and search engines handle
/// reliably; a longer topic is no URL that a subscriber selects by pattern.
/// Exact matchers and `*` are not affected.
///
/// [`MAX_MATCHER_LEN`]: super::kind::MAX_MATCHER_LEN
pub const MAX_PATTERN_TOPIC_LEN: usize = 4096;

/// Limit on the nesting depth of a custom regular expression group. The
/// patterns `urlpattern` generates nest four levels around a group.
const REGEX_NEST_LIMIT: u32 = 32;

/// A URL pattern compiled relative to the hub's URL.
#[derive(Debug)]
pub(super) struct CompiledPattern {
    pattern: UrlPattern<LinearRegex>,
    /// The hub's URL, to resolve relative topics.
    base: Url,
}

impl CompiledPattern {
    /// Compiles `value`, resolving a relative pattern against `base` (the
    /// hub's URL).
    pub(super) fn new(value: &str, base: &Url) -> Result<Self, MatcherError> {
        Ok(Self {
            pattern: compile_pattern(value, base)?,
            base: base.clone(),
        })
    }

    /// True when the pattern matches `topic`, resolved against the hub's
    /// URL. A topic over [`MAX_PATTERN_TOPIC_LEN`] or that does not parse
    /// as a URL reference matches nothing.
    pub(super) fn matches(&self, topic: &str) -> bool {
        resolve_topic(topic, &self.base).is_some_and(|url| pattern_matches(&self.pattern, url))
    }

    /// True when the pattern matches a topic already resolved with
    /// [`resolve_topic`] against the same hub URL.
    pub(super) fn matches_url(&self, url: &Url) -> bool {
        pattern_matches(&self.pattern, url.clone())
    }
}

/// Resolves a topic against `base` (the hub's URL) for URL pattern
/// matching: `None` when it is longer than [`MAX_PATTERN_TOPIC_LEN`] (the
/// evaluation cost limit) or does not parse as a URL reference.
pub(super) fn resolve_topic(topic: &str, base: &Url) -> Option<Url> {
    if topic.len() <= MAX_PATTERN_TOPIC_LEN {
        base.join(topic).ok()
    } else {
        None
    }
}

/// Compiles a URL pattern string relative to `base`, never case-insensitive.
fn compile_pattern(value: &str, base: &Url) -> Result<UrlPattern<LinearRegex>, MatcherError> {
    if has_stray_closing_bracket(value) {
        return Err(MatcherError::InvalidPattern(
            "unbalanced ']' (each ']', escaped or not, must close a '[')".to_owned(),
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

/// True when a `]` closes no `[`. `urlpattern` 0.6 counts IPv6 brackets
/// in the host with an unsigned integer and underflows on such a `]`
/// (found by `fuzz/`): a panic with overflow checks, a silently wrong
/// parse without. It counts escaped brackets (`\[`, `\]`) too, so they
/// count here as well; a stray `]` is not valid in a URL host and rare
/// elsewhere.
fn has_stray_closing_bracket(pattern: &str) -> bool {
    // Counted inside groups too: an unclosed `(` leaves the rest to the
    // host's bracket count (found by `fuzz/` with `(](`), and escaped ones
    // (found with `…e****?P<\\\1^\]`).
    let mut depth = 0usize;
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        // An escape hides everything but a bracket.
        let c = match c {
            '\\' => match chars.next() {
                Some(b @ ('[' | ']')) => b,
                _ => continue,
            },
            c => c,
        };
        match c {
            '[' => depth += 1,
            ']' => match depth.checked_sub(1) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::fixtures::{exact, hub, pattern};
    use crate::matcher::{subscription_topic, MatchType, Matcher, Topic, MAX_MATCHER_LEN};
    use proptest::prelude::*;

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

        // Brackets: IPv6 hosts and classes in groups are fine; a `]` that
        // closes no `[` is refused, escaped too (urlpattern counts escaped
        // brackets in the host, and underflows: found by `fuzz/`).
        assert!(pattern("https://[\\:\\:1]/:id").matches("https://[::1]/1"));
        assert!(pattern("https://example.com/:id([a-z]+)").matches("https://example.com/abc"));
        assert!(compile_pattern("https://example.com/a\\]b", &hub()).is_err());
        assert!(compile_pattern("https://e\\]/x", &hub()).is_err());

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
    fn invalid_patterns() {
        let hub = hub();
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
    }
}
