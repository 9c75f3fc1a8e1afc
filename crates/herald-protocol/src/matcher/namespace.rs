//! The hub's own namespace, `/.well-known/mercure`: the topics of the
//! subscription events the hub publishes, and the reserved-topic check
//! that keeps publishers out of it (sections "Subscription Events" and
//! "Publication").
//!
//! Both are spelled out by the spec down to the byte, and the hub needs
//! them in several places (publishing, subscription events, the
//! subscription API), so they live here, next to the matcher types whose
//! names and values they encode.
//!
//! [`subscription_topic`] builds the topic of a subscription event,
//! `/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`,
//! percent-encoding each variable once as a whole, as RFC 6570 simple
//! string expansion does.

use url::Url;

use super::kind::MatchType;
use crate::template::expand_simple;

/// The path under which the hub publishes subscription events.
pub const SUBSCRIPTIONS_PATH: &str = "/.well-known/mercure/subscriptions";

/// The path of the hub; topics under it are reserved (section
/// "Publication").
pub const HUB_PATH: &str = "/.well-known/mercure";

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
    use crate::matcher::fixtures::{exact, hub};
    use crate::matcher::Matcher;
    use proptest::prelude::*;

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

    proptest! {
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
