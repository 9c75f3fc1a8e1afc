//! Topic matchers: parsing a matcher of either type from arbitrary text,
//! matching arbitrary topics against it, the subscribe query helper and the
//! subscription topic encoder must never panic, and `Exact` must be string
//! equality.
//!
//! Input layout: a selector byte, then the matcher value and the topic
//! separated by the first NUL byte (a NUL cannot occur in a valid matcher,
//! so nothing interesting is lost).

#![no_main]

use herald_protocol::matcher::{
    is_reserved_topic, parse_subscribe_query, subscription_matcher_path, MatchType, Matcher, Topic,
};
use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (value, topic) = text.split_once('\0').unwrap_or((text, ""));
    let hub = Url::parse("https://example.com/.well-known/mercure").unwrap();
    let match_type = if selector & 1 == 0 {
        MatchType::Exact
    } else {
        MatchType::UrlPattern
    };

    if let Ok(m) = Matcher::new(match_type, value, &hub) {
        let direct = m.matches(topic);
        let resolved = m.matches_topic(&Topic::new(topic, &hub));
        assert_eq!(direct, resolved, "matches and matches_topic disagree");
        if match_type == MatchType::Exact && value != "*" {
            assert_eq!(direct, value == topic, "Exact is not string equality");
        }
        let _ = m.matches(value);
        let _ = m.subscription_path();
    }
    let _ = subscription_matcher_path(match_type, value);
    let _ = is_reserved_topic(topic, &hub);
    // The same text as query parameter names, to exercise the namespace.
    let pairs = [(topic, value), ("match_urlpattern", topic), ("match", value)];
    if let Ok(ms) = parse_subscribe_query(pairs, &hub, 8) {
        for m in ms {
            let _ = m.matches(topic);
        }
    }
});
