//! RFC 6570 URI templates, compiled into linear-time matchers.
//!
//! Mercure draft-07 lets a subscriber select topics with a URI template: the
//! selector matches a topic when some assignment of values to the template's
//! variables expands it to exactly that topic. This module answers that
//! question for all four levels of RFC 6570 (every operator, several
//! variables per expression, prefix `:n` and explode `*` modifiers).
//!
//! # Why a regex
//!
//! Selectors come from the network, so matching must not be a place where a
//! crafted selector can burn CPU. A template is compiled once into a
//! [`regex::bytes::Regex`] anchored at both ends (bytes rather than `str` only
//! so that a prefix can count a raw non-ASCII character cheaply). The `regex`
//! crate has no backtracking: matching takes time linear in the topic length
//! whatever the pattern, so the cost of a selector is paid at compile time.
//!
//! "Linear" hides a factor: the number of pattern states alive at once. It
//! stays small for ordinary templates, but a prefix modifier compiles to a
//! counted repetition (`{a:n}` is `n` copies of the character pattern), and
//! adjacent ones (`{a:500}{b:500}`) keep hundreds of copies alive per byte,
//! slowing every match of that selector by orders of magnitude. So the sum of the
//! prefix lengths in a template, the pattern text and the compiled program
//! all have limits, and a template over any of them is refused with
//! [`TemplateError::TooComplex`]: matching any accepted selector stays cheap
//! and compiling one takes at most a few milliseconds.
//!
//! # What an expression matches
//!
//! Each expression matches what its expansion could produce:
//!
//! - `{var}`, `{.var}`, `{/var}`, `{;var}`, `{?var}`, `{&var}` expand values
//!   to unreserved characters and pct-encoded triplets, plus the operator's
//!   own punctuation (`,` between list members, `=` in `name=value`, the
//!   separator between exploded members).
//! - `{+var}` and `{#var}` may also produce every reserved character.
//! - Non-ASCII characters are accepted wherever a pct-encoded triplet is,
//!   because topics are often IRIs (`https://example.com/bücher/1`).
//! - `%XX` triplets are accepted in either case and the topic is never
//!   decoded: matching is on the raw string.
//! - Variables may be undefined, in which case they and their separator are
//!   omitted: `{?x,y}` matches `""`, `?x=1`, `?y=2` and `?x=1&y=2`, and
//!   `{/a,b}` matches `""`, `/1` and `/1/2`, but never out of order.
//! - `{var:n}` matches at most `n` characters, counting a raw character or
//!   a `%XX` triplet as one. A pct-encoded non-ASCII character therefore
//!   counts once per octet (`{var:1}` matches `é` but not `%C3%A9`), which
//!   keeps the per-character pattern, repeated `n` times, small.
//!
//! # Deliberate departures from pure RFC 6570 expansion
//!
//! - A `{var}` or `{+var}` expression must expand to something: at least one
//!   of its variables is defined. Otherwise `/books/{id}` would match the
//!   collection `/books/`, which no subscriber asking for "a book" wants.
//!   Operators with a leading character (`#./;?&`) keep optional variables,
//!   since their absence is visible and the author opted into it.
//! - For unnamed operators (`{var}`, `{+var}`, `{#var}`, `{.var}`, `{/var}`),
//!   an empty value counts as undefined: `/books{/id}` matches `/books` and
//!   `/books/1` but not `/books/`, and `{x,y}` does not match `1,`. Named
//!   operators keep RFC behaviour for empty values (`{;x}` matches `;x`,
//!   `{?x}` matches `?x=`), which are meaningful there.
//! - Exploded associative-array keys are assumed to be encoded like values
//!   (as common implementations do), not copied like literals; otherwise
//!   `{?params*}` would match almost anything after the `?`.
//! - The prefix lengths of one template may add up to at most 256 (see
//!   above): `{var:9999}` is valid RFC 6570 but refused as too complex.
//! - Template literals are matched verbatim and may contain any character
//!   but `{` and `}`; RFC 6570's literal character restrictions are not
//!   enforced, since a selector is compared to topics, not expanded.

use percent_encoding::{utf8_percent_encode, AsciiSet, PercentEncode, NON_ALPHANUMERIC};
use regex::bytes::{Regex, RegexBuilder};

/// Longest regex source a template may compile to. An expression of several
/// variables without a leading operator character (`{x,y,...}`,
/// `{?x,y,...}`) compiles to a pattern quadratic in the number of variables;
/// this stops a hostile one before the string is even built. A typical
/// selector needs a few KiB.
const MAX_PATTERN_LEN: usize = 16 * 1024;

/// What RFC 6570 simple string expansion leaves as it is: ALPHA, DIGIT and
/// `-._~`; everything else is percent-encoded (as UTF-8).
const SIMPLE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A value as RFC 6570 simple string expansion (`{var}`) writes it, e.g.
/// the `{topic}` and `{subscriber}` of subscription event topics.
pub fn expand_simple(value: &str) -> PercentEncode<'_> {
    utf8_percent_encode(value, SIMPLE)
}

/// Limit on the compiled program (see [`RegexBuilder::size_limit`]). Only a
/// backstop: [`MAX_PATTERN_LEN`] and [`MAX_PREFIX_TOTAL`] keep templates well
/// under it.
const REGEX_SIZE_LIMIT: usize = 2 * 1024 * 1024;

/// Largest sum of prefix lengths in one template (see the module docs for
/// why). Real selectors use prefixes of a few characters, if any.
const MAX_PREFIX_TOTAL: u32 = 256;

/// Largest prefix modifier allowed by RFC 6570 (`max-length` is 1 to 4
/// digits). Templates using one this long are valid but exceed
/// [`MAX_PREFIX_TOTAL`].
const MAX_PREFIX: u16 = 9999;

/// Unreserved characters, as the inside of a regex character class.
const UNRESERVED: &str = r"\-.0-9A-Z_a-z~";

/// [`UNRESERVED`] plus the RFC 3986 reserved characters.
const UNRESERVED_RESERVED: &str = r"\-.0-9A-Z_a-z~:/?#\[\]@!$&'()*+,;=";

/// Every non-ASCII scalar value (IRIs), inside a character class.
const NON_ASCII: &str = r"\x{80}-\x{10FFFF}";

/// One raw non-ASCII character, for counting against a prefix. A lead byte
/// and its continuation bytes: exact on UTF-8 input, since no other part of
/// a pattern accepts a lone continuation byte, and a few states where the
/// equivalent Unicode class needs a dozen, for every repetition.
const NON_ASCII_CHAR: &str = r"(?-u:[\xC0-\xFF][\x80-\xBF]*)";

/// One pct-encoded octet.
const PCT: &str = "%[0-9A-Fa-f]{2}";

/// A compiled RFC 6570 URI template.
#[derive(Debug, Clone)]
pub struct UriTemplate {
    source: String,
    regex: Regex,
    has_expressions: bool,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed expression")]
    UnclosedExpression,
    #[error("unmatched closing brace")]
    UnmatchedClosingBrace,
    #[error("nested brace")]
    NestedBrace,
    #[error("empty expression")]
    EmptyExpression,
    #[error("unsupported operator")]
    UnsupportedOperator,
    #[error("invalid variable name")]
    InvalidVariableName,
    #[error("prefix length must be 1 to 9999")]
    InvalidPrefix,
    #[error("invalid modifier")]
    InvalidModifier,
    #[error("template too complex")]
    TooComplex,
}

impl UriTemplate {
    /// Parses and compiles a template.
    ///
    /// Refuses unbalanced or nested braces, empty expressions, variable names
    /// outside RFC 6570's `varname` rule, the reserved operators
    /// `= , ! @ |`, prefixes outside `1..=9999`, junk after a modifier, and
    /// templates whose matcher would exceed the size limits.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut pattern = String::from(r"\A");
        let mut has_expressions = false;
        let mut prefix_total = 0;
        let mut rest = template;
        while !rest.is_empty() {
            let Some(open) = rest.find(['{', '}']) else {
                pattern.push_str(&regex::escape(rest));
                break;
            };
            pattern.push_str(&regex::escape(&rest[..open]));
            if rest[open..].starts_with('}') {
                return Err(TemplateError::UnmatchedClosingBrace);
            }
            let after = &rest[open + 1..];
            let close = after
                .find(['{', '}'])
                .ok_or(TemplateError::UnclosedExpression)?;
            if after[close..].starts_with('{') {
                return Err(TemplateError::NestedBrace);
            }
            compile_expression(&after[..close], &mut prefix_total, &mut pattern)?;
            has_expressions = true;
            rest = &after[close + 1..];
            if pattern.len() > MAX_PATTERN_LEN {
                return Err(TemplateError::TooComplex);
            }
        }
        pattern.push_str(r"\z");
        let regex = RegexBuilder::new(&pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            // The pattern is built from escaped literals and fixed fragments,
            // so the only way to fail is exceeding the size limit.
            .map_err(|_| TemplateError::TooComplex)?;
        Ok(Self {
            source: template.to_owned(),
            regex,
            has_expressions,
        })
    }

    /// True when the template has at least one expression; without one it
    /// only matches itself.
    pub fn has_expressions(&self) -> bool {
        self.has_expressions
    }

    /// True when some assignment of values to the variables expands the
    /// template to exactly `topic` (see the module documentation for the
    /// precise rules). Linear in `topic.len()`.
    pub fn matches(&self, topic: &str) -> bool {
        self.regex.is_match(topic.as_bytes())
    }

    /// The template as given to [`UriTemplate::parse`].
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// An RFC 6570 expression operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Simple,
    Reserved,
    Fragment,
    Label,
    Path,
    Param,
    Query,
    Continuation,
}

impl Operator {
    /// What is written before the first defined variable (RFC 6570 appendix A).
    fn first(self) -> &'static str {
        match self {
            Self::Simple | Self::Reserved => "",
            Self::Fragment => "#",
            Self::Label => ".",
            Self::Path => "/",
            Self::Param => ";",
            Self::Query => "?",
            Self::Continuation => "&",
        }
    }

    /// What is written between defined variables and exploded members.
    fn sep(self) -> &'static str {
        match self {
            Self::Simple | Self::Reserved | Self::Fragment => ",",
            Self::Label => ".",
            Self::Path => "/",
            Self::Param => ";",
            Self::Query | Self::Continuation => "&",
        }
    }

    /// Whether values are written as `name=value`.
    fn named(self) -> bool {
        matches!(self, Self::Param | Self::Query | Self::Continuation)
    }

    /// Whether reserved characters pass through unencoded.
    fn allows_reserved(self) -> bool {
        matches!(self, Self::Reserved | Self::Fragment)
    }

    /// The ASCII characters a value may expand to unencoded, as the inside
    /// of a regex character class.
    fn ascii_class(self) -> &'static str {
        if self.allows_reserved() {
            UNRESERVED_RESERVED
        } else {
            UNRESERVED
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modifier {
    None,
    Prefix(u16),
    Explode,
}

/// Parses the inside of `{...}` and appends its pattern to `out`, adding its
/// prefix lengths to `prefix_total`.
fn compile_expression(
    body: &str,
    prefix_total: &mut u32,
    out: &mut String,
) -> Result<(), TemplateError> {
    let (op, vars) = match body.chars().next() {
        None => return Err(TemplateError::EmptyExpression),
        Some('=' | ',' | '!' | '@' | '|') => return Err(TemplateError::UnsupportedOperator),
        Some('+') => (Operator::Reserved, &body[1..]),
        Some('#') => (Operator::Fragment, &body[1..]),
        Some('.') => (Operator::Label, &body[1..]),
        Some('/') => (Operator::Path, &body[1..]),
        Some(';') => (Operator::Param, &body[1..]),
        Some('?') => (Operator::Query, &body[1..]),
        Some('&') => (Operator::Continuation, &body[1..]),
        Some(_) => (Operator::Simple, body),
    };
    if vars.is_empty() {
        return Err(TemplateError::EmptyExpression);
    }
    let patterns = vars
        .split(',')
        .map(|spec| {
            let (name, modifier) = parse_varspec(spec)?;
            if let Modifier::Prefix(n) = modifier {
                *prefix_total += u32::from(n);
                if *prefix_total > MAX_PREFIX_TOTAL {
                    return Err(TemplateError::TooComplex);
                }
            }
            Ok(variable_pattern(op, name, modifier))
        })
        .collect::<Result<Vec<_>, _>>()?;
    join_variables(op, &patterns, out)
}

/// Splits a `varspec` into its name and modifier, validating both.
fn parse_varspec(spec: &str) -> Result<(&str, Modifier), TemplateError> {
    let name_end = spec.find([':', '*']).unwrap_or(spec.len());
    let (name, modifier) = spec.split_at(name_end);
    if !is_varname(name) {
        return Err(TemplateError::InvalidVariableName);
    }
    let modifier = match modifier.as_bytes() {
        [] => Modifier::None,
        [b'*'] => Modifier::Explode,
        [b':', digits @ ..] => {
            let valid = matches!(digits, [b'1'..=b'9', ..])
                && digits.len() <= 4
                && digits.iter().all(u8::is_ascii_digit);
            if !valid {
                return Err(TemplateError::InvalidPrefix);
            }
            // 1 to 4 ASCII digits, the first nonzero: always fits in 1..=9999.
            let n = digits
                .iter()
                .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
            debug_assert!((1..=MAX_PREFIX).contains(&n));
            Modifier::Prefix(n)
        }
        _ => return Err(TemplateError::InvalidModifier),
    };
    Ok((name, modifier))
}

/// RFC 6570 `varname = varchar *( ["."] varchar )`, where `varchar` is
/// `ALPHA / DIGIT / "_" / pct-encoded`.
fn is_varname(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut i = 0;
    // Whether the previous token was a varchar (a '.' needs one on each side).
    let mut after_varchar = false;
    while i < bytes.len() {
        match bytes[i] {
            b if b.is_ascii_alphanumeric() || b == b'_' => i += 1,
            b'%' if bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit) =>
            {
                i += 3
            }
            b'.' if after_varchar => {
                i += 1;
                after_varchar = false;
                continue;
            }
            _ => return false,
        }
        after_varchar = true;
    }
    after_varchar
}

/// The pattern for what one *defined* variable contributes to its
/// expression's expansion, without the leading `first`/`sep` string.
fn variable_pattern(op: Operator, name: &str, modifier: Modifier) -> String {
    let ascii = op.ascii_class();
    // One expanded character, for unbounded repetition.
    let v = format!("(?:[{ascii}{NON_ASCII}]|{PCT})");
    // One expanded character, for counting against a prefix.
    let counted = format!("(?:[{ascii}]|{NON_ASCII_CHAR}|{PCT})");
    // Unexploded lists and maps are joined with ',' whatever the operator.
    let member = format!("(?:[{ascii}{NON_ASCII},]|{PCT})");
    let sep = regex::escape(op.sep());
    let name = regex::escape(name);

    match (op.named(), op, modifier) {
        // Unnamed: the value itself, never empty (see the module docs).
        (false, _, Modifier::Prefix(n)) => format!("{counted}{{1,{n}}}"),
        (false, _, Modifier::None) => format!("{v}+(?:,{v}+)*"),
        (false, _, Modifier::Explode) if op.allows_reserved() => {
            // '=' and the separator are already in the class.
            format!("{v}+(?:{sep}{v}+)*")
        }
        (false, _, Modifier::Explode) => {
            // A list's members, or a map's `key=value` pairs.
            format!("(?:{v}+(?:{sep}{v}+)*|{v}+={v}+(?:{sep}{v}+={v}+)*)")
        }
        // Named, `;`: an empty value is written as the bare name.
        (true, Operator::Param, Modifier::Prefix(n)) => {
            format!("{name}(?:={counted}{{1,{n}}})?")
        }
        (true, Operator::Param, Modifier::None) => format!("{name}(?:={member}+)?"),
        (true, Operator::Param, Modifier::Explode) => {
            let item = format!("{v}+(?:={v}+)?");
            format!("{item}(?:{sep}{item})*")
        }
        // Named, `?` and `&`: an empty value is written as `name=`.
        (true, _, Modifier::Prefix(n)) => format!("{name}={counted}{{0,{n}}}"),
        (true, _, Modifier::None) => format!("{name}={member}*"),
        (true, _, Modifier::Explode) => {
            // `name=member` for a list, `key=value` for a map.
            let item = format!("{v}+={v}*");
            format!("{item}(?:{sep}{item})*")
        }
    }
}

/// Appends the pattern of a whole expression: any in-order subsequence of
/// its variables (the others being undefined), `first` before the first one
/// and `sep` between them.
fn join_variables(op: Operator, vars: &[String], out: &mut String) -> Result<(), TemplateError> {
    let first = regex::escape(op.first());
    let sep = regex::escape(op.sep());
    if first == sep {
        // `.`, `/`, `;`, `&`: every defined variable is preceded by the same
        // string, so each one is simply optional. Linear in the variables.
        for var in vars {
            out.push_str(&format!("(?:{sep}{var})?"));
        }
        return Ok(());
    }
    // `first` differs from `sep`, so the pattern must know which variable
    // is the first defined one: one alternative per choice, each followed by
    // the optional later ones. Quadratic in the number of variables, which
    // MAX_PATTERN_LEN bounds.
    out.push_str("(?:");
    out.push_str(&first);
    out.push_str("(?:");
    for (i, var) in vars.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        out.push_str(var);
        for later in &vars[i + 1..] {
            out.push_str(&format!("(?:{sep}{later})?"));
        }
        if out.len() > MAX_PATTERN_LEN {
            return Err(TemplateError::TooComplex);
        }
    }
    out.push_str("))");
    if matches!(op, Operator::Fragment | Operator::Query) {
        // All variables may be undefined; `{var}` and `{+var}` must expand
        // to something (see the module docs).
        out.push('?');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(template: &str) -> UriTemplate {
        UriTemplate::parse(template).unwrap_or_else(|e| panic!("{template:?}: {e}"))
    }

    #[track_caller]
    fn yes(template: &str, topic: &str) {
        assert!(
            t(template).matches(topic),
            "{template:?} should match {topic:?}"
        );
    }

    #[track_caller]
    fn no(template: &str, topic: &str) {
        assert!(
            !t(template).matches(topic),
            "{template:?} should not match {topic:?}"
        );
    }

    #[test]
    fn simple() {
        let books = "https://example.com/books/{id}";
        yes(books, "https://example.com/books/1");
        yes(books, "https://example.com/books/foo-bar");
        no(books, "https://example.com/books/1/2");
        no(books, "https://example.com/books/");
        no(books, "https://example.com/authors/1");
        no(books, "https://example.com/books/1?x");
        no(books, "https://example.com/books/{id}");
        yes(
            "https://example.com/users/{id}/books/{bookId}",
            "https://example.com/users/kevin/books/42",
        );
        yes("/foo/{bar}", "/foo/baz");
        yes(
            "https://example.com/{id}.json",
            "https://example.com/5.json",
        );
        no("https://example.com/{id}.json", "https://example.com/5.xml");
        yes("https://example.com/{x,y}", "https://example.com/1,2");
        yes("https://example.com/{x,y}", "https://example.com/1");
        no("https://example.com/{x,y}", "https://example.com/1,");
        no("https://example.com/{x,y}", "https://example.com/,");
    }

    #[test]
    fn prefix() {
        yes("{var:3}", "abc");
        yes("{var:3}", "ab");
        no("{var:3}", "abcd");
        no("{var:3}", "");
        yes("{var:1}", "%41");
        yes("{var:1}", "%e6");
        yes("{var:1}", "é");
        yes("{var:1}", "日");
        yes("{var:1}", "😀");
        yes("{var:2}", "%C3%A9");
        yes("{var:3}", "日a😀");
        no("{var:1}", "%41%42");
        no("{var:1}", "%C3%A9");
        no("{var:1}", "éé");
        no("{var:2}", "日a😀");
        // Continuation bytes belong to their character, whatever follows.
        no("{a:1}{b}", "é");
        yes("{a:1}{b}", "éx");
        yes("{var:256}", &"a".repeat(256));
        no("{var:256}", &"a".repeat(257));
    }

    #[test]
    fn reserved_and_fragment() {
        yes(
            "https://example.com/{+path}",
            "https://example.com/a/b/c?x=1",
        );
        no("https://example.com/{+path}", "https://example.com/");
        no("https://example.com/{+path}", "https://example.com/a b");
        yes("https://example.com/x{#frag}", "https://example.com/x#a/b");
        yes("https://example.com/x{#frag}", "https://example.com/x");
        no("https://example.com/x{#frag}", "https://example.com/x#");
        no("https://example.com/x{frag}", "https://example.com/x#a/b");
    }

    #[test]
    fn optional_variables() {
        let path = "https://example.com/books{/id}";
        yes(path, "https://example.com/books");
        yes(path, "https://example.com/books/1");
        no(path, "https://example.com/books/");
        no(path, "https://example.com/books/1/2");
        yes("{/a,b}", "");
        yes("{/a,b}", "/1");
        yes("{/a,b}", "/1/2");
        no("{/a,b}", "/1/2/3");

        let search = "https://example.com/search{?q,lang}";
        yes(search, "https://example.com/search?q=a&lang=fr");
        yes(search, "https://example.com/search?q=a");
        yes(search, "https://example.com/search?lang=fr");
        yes(search, "https://example.com/search?q=");
        yes(search, "https://example.com/search");
        no(search, "https://example.com/search?");
        no(search, "https://example.com/search?lang=fr&q=a");
        no(search, "https://example.com/search?q=a&q=b");
        no(search, "https://example.com/search?x=a");
        no(search, "https://example.com/search&q=a");
        yes("{?x,y}", "");
        yes("{?x,y}", "?x=1");
        yes("{?x,y}", "?y=2");
        yes("{?x,y}", "?x=1&y=2");
    }

    #[test]
    fn iris_and_encoding() {
        yes(
            "https://example.com/bücher/{id}",
            "https://example.com/bücher/1",
        );
        yes(
            "https://example.com/books/{id}",
            "https://example.com/books/ü",
        );
        yes(
            "https://example.com/books/{id}",
            "https://example.com/books/%C3%BC",
        );
        yes(
            "https://example.com/books/{id}",
            "https://example.com/books/%c3%bc",
        );
        no(
            "https://example.com/books/{id}",
            "https://example.com/books/%C",
        );
        no(
            "https://example.com/books/{id}",
            "https://example.com/books/%",
        );
        no(
            "https://example.com/books/{id}",
            "https://example.com/books/a b",
        );
        // Literals are compared as written, regex metacharacters included.
        yes("a.b+c(d)[e]{x}", "a.b+c(d)[e]1");
        no("a.b+c(d)[e]{x}", "aXb+c(d)[e]1");
    }

    /// The examples of RFC 6570 §3.2, minus those with empty values for
    /// unnamed operators or fully undefined `{var}` (see the module docs).
    #[test]
    fn rfc_6570_examples() {
        let cases = [
            ("{count}", "one,two,three"),
            ("{count*}", "one,two,three"),
            ("{/count}", "/one,two,three"),
            ("{/count*}", "/one/two/three"),
            ("{;count}", ";count=one,two,three"),
            ("{;count*}", ";count=one;count=two;count=three"),
            ("{?count}", "?count=one,two,three"),
            ("{?count*}", "?count=one&count=two&count=three"),
            ("{&count*}", "&count=one&count=two&count=three"),
            ("{var}", "value"),
            ("{hello}", "Hello%20World%21"),
            ("{half}", "50%25"),
            ("{x,y}", "1024,768"),
            ("{x,hello,y}", "1024,Hello%20World%21,768"),
            ("?{x,undef}", "?1024"),
            ("?{undef,y}", "?768"),
            ("{var:3}", "val"),
            ("{var:30}", "value"),
            ("{list}", "red,green,blue"),
            ("{list*}", "red,green,blue"),
            ("{keys}", "semi,%3B,dot,.,comma,%2C"),
            ("{keys*}", "semi=%3B,dot=.,comma=%2C"),
            ("{+var}", "value"),
            ("{+hello}", "Hello%20World!"),
            ("{+half}", "50%25"),
            ("{base}index", "http%3A%2F%2Fexample.com%2Fhome%2Findex"),
            ("{+base}index", "http://example.com/home/index"),
            ("{+path}/here", "/foo/bar/here"),
            ("here?ref={+path}", "here?ref=/foo/bar"),
            ("up{+path}{var}/here", "up/foo/barvalue/here"),
            ("{+x,hello,y}", "1024,Hello%20World!,768"),
            ("{+path,x}/here", "/foo/bar,1024/here"),
            ("{+path:6}/here", "/foo/b/here"),
            ("{+list}", "red,green,blue"),
            ("{+list*}", "red,green,blue"),
            ("{+keys}", "semi,;,dot,.,comma,,"),
            ("{+keys*}", "semi=;,dot=.,comma=,"),
            ("{#var}", "#value"),
            ("{#hello}", "#Hello%20World!"),
            ("{#half}", "#50%25"),
            ("foo{#undef}", "foo"),
            ("{#x,hello,y}", "#1024,Hello%20World!,768"),
            ("{#path,x}/here", "#/foo/bar,1024/here"),
            ("{#path:6}/here", "#/foo/b/here"),
            ("{#list}", "#red,green,blue"),
            ("{#list*}", "#red,green,blue"),
            ("{#keys}", "#semi,;,dot,.,comma,,"),
            ("{#keys*}", "#semi=;,dot=.,comma=,"),
            ("{.who}", ".fred"),
            ("{.who,who}", ".fred.fred"),
            ("{.half,who}", ".50%25.fred"),
            ("www{.dom*}", "www.example.com"),
            ("X{.var}", "X.value"),
            ("X{.undef}", "X"),
            ("X{.var:3}", "X.val"),
            ("X{.list}", "X.red,green,blue"),
            ("X{.list*}", "X.red.green.blue"),
            ("X{.keys}", "X.semi,%3B,dot,.,comma,%2C"),
            ("X{.keys*}", "X.semi=%3B.dot=..comma=%2C"),
            ("X{.empty_keys}", "X"),
            ("X{.empty_keys*}", "X"),
            ("{/who}", "/fred"),
            ("{/who,who}", "/fred/fred"),
            ("{/half,who}", "/50%25/fred"),
            ("{/who,dub}", "/fred/me%2Ftoo"),
            ("{/var}", "/value"),
            ("{/var,undef}", "/value"),
            ("{/var,x}/here", "/value/1024/here"),
            ("{/var:1,var}", "/v/value"),
            ("{/list}", "/red,green,blue"),
            ("{/list*}", "/red/green/blue"),
            ("{/list*,path:4}", "/red/green/blue/%2Ffoo"),
            ("{/keys}", "/semi,%3B,dot,.,comma,%2C"),
            ("{/keys*}", "/semi=%3B/dot=./comma=%2C"),
            ("{;who}", ";who=fred"),
            ("{;half}", ";half=50%25"),
            ("{;empty}", ";empty"),
            ("{;v,empty,who}", ";v=6;empty;who=fred"),
            ("{;v,bar,who}", ";v=6;who=fred"),
            ("{;x,y}", ";x=1024;y=768"),
            ("{;x,y,empty}", ";x=1024;y=768;empty"),
            ("{;x,y,undef}", ";x=1024;y=768"),
            ("{;hello:5}", ";hello=Hello"),
            ("{;list}", ";list=red,green,blue"),
            ("{;list*}", ";list=red;list=green;list=blue"),
            ("{;keys}", ";keys=semi,%3B,dot,.,comma,%2C"),
            ("{;keys*}", ";semi=%3B;dot=.;comma=%2C"),
            ("{?who}", "?who=fred"),
            ("{?half}", "?half=50%25"),
            ("{?x,y}", "?x=1024&y=768"),
            ("{?x,y,empty}", "?x=1024&y=768&empty="),
            ("{?x,y,undef}", "?x=1024&y=768"),
            ("{?var:3}", "?var=val"),
            ("{?list}", "?list=red,green,blue"),
            ("{?list*}", "?list=red&list=green&list=blue"),
            ("{?keys}", "?keys=semi,%3B,dot,.,comma,%2C"),
            ("{?keys*}", "?semi=%3B&dot=.&comma=%2C"),
            ("{&who}", "&who=fred"),
            ("{&half}", "&half=50%25"),
            ("?fixed=yes{&x}", "?fixed=yes&x=1024"),
            ("{&x,y,empty}", "&x=1024&y=768&empty="),
            ("{&var:3}", "&var=val"),
            ("{&list}", "&list=red,green,blue"),
            ("{&list*}", "&list=red&list=green&list=blue"),
            ("{&keys}", "&keys=semi,%3B,dot,.,comma,%2C"),
            ("{&keys*}", "&semi=%3B&dot=.&comma=%2C"),
        ];
        for (template, topic) in cases {
            yes(template, topic);
        }
    }

    #[test]
    fn non_matches_by_operator() {
        no("{/var}", "/a/b");
        no("{.var}", ".a/b");
        no("{;x}", ";y=1");
        no("{;x}", ";x=a;b");
        no("{?x}", "?x");
        no("{?x}", "?x=a&b");
        no("{&x}", "?x=1");
        no("{var:3}", "a/b");
        no("{+var:3}", "a/bc");
        no("{keys*}", "a=b=c");
        no("X{.var:3}", "X.valu");
    }

    #[test]
    fn parse_errors() {
        use TemplateError::*;
        let cases = [
            ("https://example.com/{id", UnclosedExpression),
            ("https://example.com/{}", EmptyExpression),
            ("https://example.com/{i d}", InvalidVariableName),
            ("https://example.com/{=x}", UnsupportedOperator),
            ("https://example.com/id}", UnmatchedClosingBrace),
            ("{var:0}", InvalidPrefix),
            ("{var:10000}", InvalidPrefix),
            ("{var:01}", InvalidPrefix),
            ("{var:}", InvalidPrefix),
            ("{var:3*}", InvalidPrefix),
            ("{var*:3}", InvalidModifier),
            ("{var**}", InvalidModifier),
            ("{a{b}", NestedBrace),
            ("{+}", EmptyExpression),
            ("{,x}", UnsupportedOperator),
            ("{!x}", UnsupportedOperator),
            ("{@x}", UnsupportedOperator),
            ("{|x}", UnsupportedOperator),
            ("{x,}", InvalidVariableName),
            ("{.a.}", InvalidVariableName),
            ("{a..b}", InvalidVariableName),
            ("{%4}", InvalidVariableName),
            ("{bücher}", InvalidVariableName),
            ("{-x}", InvalidVariableName),
        ];
        for (template, err) in cases {
            assert_eq!(
                UriTemplate::parse(template).err(),
                Some(err),
                "{template:?}"
            );
        }
        for ok in ["{a.b}", "{a_1,%41b}", "{var:256}", "{var:1}", "{/a*,b:2}"] {
            assert!(UriTemplate::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn has_expressions_and_as_str() {
        let tpl = t("https://example.com/books/{id}");
        assert!(tpl.has_expressions());
        assert_eq!(tpl.as_str(), "https://example.com/books/{id}");
        let plain = t("https://example.com/books/1");
        assert!(!plain.has_expressions());
        assert!(plain.matches("https://example.com/books/1"));
        assert!(!plain.matches("https://example.com/books/12"));
        assert!(t("").matches(""));
    }

    #[test]
    fn complexity_is_bounded() {
        let many = (0..1000).map(|i| format!("v{i}")).collect::<Vec<_>>();
        let huge = format!("{{?{}}}", many.join(","));
        assert_eq!(
            UriTemplate::parse(&huge).err(),
            Some(TemplateError::TooComplex)
        );
        // Valid syntax, but over the prefix budget.
        for template in ["{var:9999}", "{var:257}", "{a:128}{b:129}", "{a:200,b:57}"] {
            assert_eq!(
                UriTemplate::parse(template).err(),
                Some(TemplateError::TooComplex),
                "{template:?}"
            );
        }
        t("{a:128}{b:128}");
        // A realistic large selector still compiles.
        t("https://example.com/{a}/{b}/{c}{/d,e,f}{?g,h,i,j,k,l,m,n}{#frag}");
    }

    /// RFC 6570 expansion of string values, to check that the matcher
    /// accepts what an expander produces. With `iri`, non-ASCII characters
    /// are written raw instead of pct-encoded.
    fn expand(op: char, vars: &[(&str, Modifier, Option<String>)], iri: bool) -> String {
        let (first, sep, named, ifemp, reserved) = match op {
            '+' => ("", ",", false, "", true),
            '#' => ("#", ",", false, "", true),
            '.' => (".", ".", false, "", false),
            '/' => ("/", "/", false, "", false),
            ';' => (";", ";", true, "", false),
            '?' => ("?", "&", true, "=", false),
            '&' => ("&", "&", true, "=", false),
            _ => ("", ",", false, "", false),
        };
        let mut out = String::new();
        let mut any = false;
        for (name, modifier, value) in vars {
            let Some(value) = value else { continue };
            out.push_str(if any { sep } else { first });
            any = true;
            if named {
                out.push_str(name);
                if value.is_empty() {
                    out.push_str(ifemp);
                    continue;
                }
                out.push('=');
            }
            let value: String = match modifier {
                Modifier::Prefix(n) => value.chars().take(usize::from(*n)).collect(),
                _ => value.clone(),
            };
            encode(&value, reserved, iri, &mut out);
        }
        out
    }

    /// The longest start of `value` that the matcher accepts for a prefix
    /// of `n`: RFC 6570 keeps `n` characters, but the matcher counts a
    /// pct-encoded non-ASCII character once per octet (see the module docs).
    fn fit_prefix(value: &str, n: u16, iri: bool) -> String {
        let mut left = usize::from(n);
        let mut kept = String::new();
        for c in value.chars() {
            let units = if c.is_ascii() || iri { 1 } else { c.len_utf8() };
            if units > left {
                break;
            }
            left -= units;
            kept.push(c);
        }
        kept
    }

    fn encode(value: &str, reserved: bool, iri: bool, out: &mut String) {
        let bytes = value.as_bytes();
        let mut i = 0;
        for c in value.chars() {
            let pct_triplet = c == '%'
                && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if c.is_ascii_alphanumeric()
                || "-._~".contains(c)
                || (iri && !c.is_ascii())
                || (reserved && (":/?#[]@!$&'()*+,;=".contains(c) || pct_triplet))
            {
                out.push(c);
            } else {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            i += c.len_utf8();
        }
    }

    fn op_strategy() -> impl Strategy<Value = char> {
        prop::sample::select(vec![' ', '+', '#', '.', '/', ';', '?', '&'])
    }

    fn modifier_strategy() -> impl Strategy<Value = Modifier> {
        prop_oneof![
            Just(Modifier::None),
            Just(Modifier::Explode),
            (1u16..6).prop_map(Modifier::Prefix),
        ]
    }

    fn value_strategy() -> impl Strategy<Value = Option<String>> {
        prop::option::of("[a-z0-9 %/?#=&,;.:é日😀_~-]{0,6}")
    }

    proptest! {
        #[test]
        fn parse_and_match_never_panic(template in any::<String>(), topic in any::<String>()) {
            if let Ok(tpl) = UriTemplate::parse(&template) {
                let _ = tpl.matches(&topic);
            }
        }

        #[test]
        fn brace_heavy_templates_never_panic(
            template in "[{}a-z0-9,:*+#./;?&=!@|%-]{0,30}",
            topic in "[a-z0-9,=/;?&#.%-]{0,20}",
        ) {
            if let Ok(tpl) = UriTemplate::parse(&template) {
                let _ = tpl.matches(&topic);
            }
        }

        #[test]
        fn id_matches_one_unreserved_segment(
            prefix in "[A-Za-z0-9/]{0,20}",
            id in "[A-Za-z0-9._~-]{1,20}",
            before in "[A-Za-z0-9._~-]{0,5}",
            after in "[A-Za-z0-9._~/-]{0,5}",
        ) {
            let tpl = t(&format!("{prefix}{{id}}"));
            let topic = format!("{prefix}{id}");
            prop_assert!(tpl.matches(&topic));
            let slashed = format!("{prefix}{before}/{after}");
            prop_assert!(!tpl.matches(&slashed));
        }

        #[test]
        fn plain_template_matches_only_itself(
            s in "[A-Za-z0-9:/?#\\[\\]@!$&'()*+,;=._~%-]{0,30}",
            other in "[A-Za-z0-9:/?#\\[\\]@!$&'()*+,;=._~%-]{0,30}",
        ) {
            let tpl = t(&s);
            prop_assert!(!tpl.has_expressions());
            prop_assert!(tpl.matches(&s));
            prop_assert_eq!(tpl.matches(&other), other == s);
            let longer = format!("{s}x");
            prop_assert!(!tpl.matches(&longer));
        }

        #[test]
        fn any_brace_free_template_matches_itself(s in any::<String>()) {
            let s: String = s.chars().filter(|c| !matches!(c, '{' | '}')).collect();
            let tpl = t(&s);
            prop_assert!(tpl.matches(&s));
        }

        #[test]
        fn expansions_match(
            literal in "[a-z:/.]{0,5}",
            op in op_strategy(),
            specs in prop::collection::vec((modifier_strategy(), value_strategy()), 1..4),
            tail in "[a-z/]{0,3}",
            iri in any::<bool>(),
        ) {
            let op_str = if op == ' ' { String::new() } else { op.to_string() };
            let mut vars: Vec<(String, Modifier, Option<String>)> = specs
                .into_iter()
                .enumerate()
                .map(|(i, (m, v))| (format!("v{i}"), m, v))
                .collect();
            for (_, m, v) in &mut vars {
                if let (Modifier::Prefix(n), Some(value)) = (*m, v.as_mut()) {
                    *value = fit_prefix(value, n, iri);
                }
            }
            let named = matches!(op, ';' | '?' | '&');
            if !named {
                // Documented departure: empty values count as undefined.
                for (_, _, v) in &mut vars {
                    if v.as_deref() == Some("") {
                        *v = None;
                    }
                }
            }
            if matches!(op, ' ' | '+') && vars.iter().all(|(_, _, v)| v.is_none()) {
                // Documented departure: `{var}` and `{+var}` expand to something.
                vars[0].2 = Some("x".to_owned());
            }
            let specs_text = vars
                .iter()
                .map(|(name, m, _)| match m {
                    Modifier::None => name.clone(),
                    Modifier::Explode => format!("{name}*"),
                    Modifier::Prefix(n) => format!("{name}:{n}"),
                })
                .collect::<Vec<_>>()
                .join(",");
            let template = format!("{literal}{{{op_str}{specs_text}}}{tail}");
            let borrowed: Vec<(&str, Modifier, Option<String>)> = vars
                .iter()
                .map(|(n, m, v)| (n.as_str(), *m, v.clone()))
                .collect();
            let topic = format!("{literal}{}{tail}", expand(op, &borrowed, iri));
            prop_assert!(t(&template).matches(&topic), "{} should match {}", template, topic);
        }
    }
}
