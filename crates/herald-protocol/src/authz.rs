//! Mercure draft-08 authorization details.
//!
//! A draft-08 (Mercure 1.0) access token is an RFC 9068 JWT whose
//! `authorization_details` claim (RFC 9396) lists what its holder may do.
//! This module turns that claim into an [`Authorization`]; checking the
//! token's signature, `typ`, `exp`, `aud` and so on is the hub's job, before
//! it calls in here.
//!
//! The shape, as Mercure 1.0 defines it:
//!
//! - The detail type is `https://mercure.rocks/authorization-detail`
//!   ([`DETAIL_TYPE`]; the IETF draft text's short name `mercure` is
//!   accepted too). Entries of other types are ignored, as RFC 9396 lets
//!   each type define its own members; they must still be objects with a
//!   string `type`, which RFC 9396 requires of every entry.
//! - A Mercure detail has `actions`, a non-empty array of `publish` and
//!   `subscribe`; `topics`, a non-empty array of `{"match": ...,
//!   "match_type": ...}` objects (`match_type` is `exact` or `urlpattern`,
//!   `exact` when absent; the draft text's `matchType` with `Exact` or
//!   `URLPattern` is accepted too); and optionally `payload`, any JSON
//!   value, meaningful for `subscribe`.
//! - A token grants an action on a topic when one of its Mercure details
//!   lists the action and has a matcher selecting the topic. No Mercure
//!   detail, no rights.
//! - One invalid Mercure detail invalidates the whole token: partial
//!   acceptance would silently change what the token grants. So any error
//!   here maps to a 401 `invalid_token`.
//!
//! Strictness beyond the letter of the spec, failing closed:
//!
//! - Members of a Mercure detail or topic matcher other than those above
//!   are refused, including RFC 9396's common `locations`, `datatypes`,
//!   `identifier` and `privileges`: they would narrow the grant, and herald
//!   does not implement them, so ignoring them would widen it. A misspelled
//!   `matchtype` is refused instead of silently meaning `exact`, and so is a
//!   matcher carrying both `match_type` and `matchType`.
//! - `actions` and `topics` must hold strings and objects only. A repeated
//!   action is accepted: it changes nothing. A `null` payload is no payload.
//!
//! The number of Mercure details and of topic matchers is limited
//! ([`MAX_DETAILS`], [`MAX_TOPICS`]) before anything is compiled, as the spec
//! recommends, because every URL pattern costs a compilation.

use serde_json::{Map, Value};
use url::Url;

use crate::matcher::{MatchType, Matcher, MatcherError, Topic};

/// The name of the JWT claim.
pub const CLAIM: &str = "authorization_details";

/// The authorization detail type defined by Mercure 1.0.
pub const DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";

/// The same type as the IETF draft text spells it; accepted on input.
pub const DETAIL_TYPE_DRAFT: &str = "mercure";

/// Most `mercure` details in one token. The spec leaves the figure to hubs;
/// real tokens carry a handful, and the reference hub allows 100 in all.
pub const MAX_DETAILS: usize = 64;

/// Most topic matchers in one token, summed across its `mercure` details
/// (so also the most in one `topics` array). Twice the default subscribe
/// query cap ([`crate::matcher::MAX_MATCHERS`]): a token is parsed once per
/// connection, like a query, and bounding the sum rather than each array
/// bounds the compilation work however the matchers are split.
pub const MAX_TOPICS: usize = 128;

/// An action a `mercure` detail can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Subscribe,
}

impl Action {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
        }
    }

    /// Parses an action name; case-sensitive.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "publish" => Some(Self::Publish),
            "subscribe" => Some(Self::Subscribe),
            _ => None,
        }
    }
}

/// Why an `authorization_details` claim was refused. Every variant means
/// the token is invalid (401 `invalid_token`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("claims are not a JSON object")]
    ClaimsNotObject,
    #[error("authorization_details is not an array")]
    NotArray,
    #[error("authorization_details[{0}] is not an object")]
    DetailNotObject(usize),
    #[error("authorization_details[{0}] has no string type")]
    MissingType(usize),
    #[error("authorization_details[{detail}].{member}: {problem}")]
    Invalid {
        detail: usize,
        /// Where in the detail: `actions`, `topics[2].matchType`, ...
        member: String,
        problem: &'static str,
    },
    #[error("authorization_details[{detail}].actions: unknown action {action:?}")]
    UnknownAction { detail: usize, action: String },
    #[error("authorization_details[{detail}].topics[{topic}]: {source}")]
    Matcher {
        detail: usize,
        topic: usize,
        source: MatcherError,
    },
    #[error("too many mercure authorization details (at most {0})")]
    TooManyDetails(usize),
    #[error("too many topic matchers (at most {0})")]
    TooManyTopics(usize),
}

/// One validated `mercure` authorization detail.
#[derive(Debug, Clone)]
pub struct Detail {
    publish: bool,
    subscribe: bool,
    topics: Vec<Matcher>,
    payload: Option<Value>,
}

impl Detail {
    /// True when the detail lists `action`.
    pub fn allows(&self, action: Action) -> bool {
        match action {
            Action::Publish => self.publish,
            Action::Subscribe => self.subscribe,
        }
    }

    /// The topic matchers, in token order; never empty.
    pub fn topics(&self) -> &[Matcher] {
        &self.topics
    }

    /// The `payload`, if the detail has one.
    pub fn payload(&self) -> Option<&Value> {
        self.payload.as_ref()
    }

    /// True when one of the detail's matchers selects `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.topics.iter().any(|m| m.matches(topic))
    }
}

/// What a token lets its holder do: its `mercure` authorization details.
/// The default grants nothing.
#[derive(Debug, Clone, Default)]
pub struct Authorization {
    details: Vec<Detail>,
}

impl Authorization {
    /// Reads the `authorization_details` claim from a token's claims object.
    /// A token without the claim grants nothing, which is not an error.
    /// `base` is the hub's URL, for relative URL patterns.
    pub fn from_claims(claims: &Value, base: &Url) -> Result<Self, AuthzError> {
        let claims = claims.as_object().ok_or(AuthzError::ClaimsNotObject)?;
        match claims.get(CLAIM) {
            None => Ok(Self::default()),
            Some(details) => Self::from_details(details, base),
        }
    }

    /// Parses the value of the `authorization_details` claim, given as JSON
    /// text.
    pub fn from_json(details: &str, base: &Url) -> Result<Self, AuthzError> {
        // serde_json limits nesting depth, so hostile text cannot overflow
        // the stack.
        let value: Value =
            serde_json::from_str(details).map_err(|e| AuthzError::Json(e.to_string()))?;
        Self::from_details(&value, base)
    }

    /// Parses the value of the `authorization_details` claim.
    pub fn from_details(details: &Value, base: &Url) -> Result<Self, AuthzError> {
        let entries = details.as_array().ok_or(AuthzError::NotArray)?;
        let mut mercure = Vec::new();
        let mut topic_count = 0usize;
        // Shape and limits first, so that no pattern is compiled for a token
        // that will be refused anyway.
        for (i, entry) in entries.iter().enumerate() {
            let object = entry.as_object().ok_or(AuthzError::DetailNotObject(i))?;
            let kind = object
                .get("type")
                .and_then(Value::as_str)
                .ok_or(AuthzError::MissingType(i))?;
            if kind != DETAIL_TYPE && kind != DETAIL_TYPE_DRAFT {
                continue;
            }
            if mercure.len() == MAX_DETAILS {
                return Err(AuthzError::TooManyDetails(MAX_DETAILS));
            }
            if let Some(topics) = object.get("topics").and_then(Value::as_array) {
                topic_count = topic_count.saturating_add(topics.len());
                if topic_count > MAX_TOPICS {
                    return Err(AuthzError::TooManyTopics(MAX_TOPICS));
                }
            }
            mercure.push((i, object));
        }
        let details = mercure
            .into_iter()
            .map(|(i, object)| parse_detail(i, object, base))
            .collect::<Result<_, _>>()?;
        Ok(Self { details })
    }

    /// The `mercure` details, in token order.
    pub fn details(&self) -> &[Detail] {
        &self.details
    }

    /// True when the token grants nothing.
    pub fn is_empty(&self) -> bool {
        self.details.is_empty()
    }

    /// True when the token grants `action` on `topic`.
    pub fn allows(&self, action: Action, topic: &str) -> bool {
        self.details
            .iter()
            .any(|d| d.allows(action) && d.matches(topic))
    }

    /// Like [`Authorization::allows`], with the topic resolved once (see
    /// [`Topic`]); for checking one update against many tokens.
    pub fn allows_topic(&self, action: Action, topic: &Topic<'_>) -> bool {
        self.details
            .iter()
            .any(|d| d.allows(action) && d.topics.iter().any(|m| m.matches_topic(topic)))
    }

    /// True when the token grants `subscribe` on `topic`: its holder may
    /// receive private updates of that topic.
    pub fn can_subscribe(&self, topic: &str) -> bool {
        self.allows(Action::Subscribe, topic)
    }

    /// True when the token grants `publish` on `topic`.
    pub fn can_publish(&self, topic: &str) -> bool {
        self.allows(Action::Publish, topic)
    }

    /// The payload to attach to a subscription whose own matcher value is
    /// `subscription_match` (section "Payloads"): that of the first
    /// `subscribe` detail one of whose matchers selects the matcher value
    /// taken as a topic. `None` when no such detail exists, or when the
    /// first one has no payload: the first matching detail decides, and a
    /// later one is not consulted.
    pub fn payload_for(&self, subscription_match: &str) -> Option<&Value> {
        self.details
            .iter()
            .find(|d| d.subscribe && d.matches(subscription_match))
            .and_then(Detail::payload)
    }
}

fn invalid(detail: usize, member: impl Into<String>, problem: &'static str) -> AuthzError {
    AuthzError::Invalid {
        detail,
        member: member.into(),
        problem,
    }
}

fn parse_detail(i: usize, object: &Map<String, Value>, base: &Url) -> Result<Detail, AuthzError> {
    if let Some(member) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "actions" | "topics" | "payload"))
    {
        return Err(invalid(i, member.clone(), "unsupported member"));
    }

    let actions = match object.get("actions") {
        None => return Err(invalid(i, "actions", "missing")),
        Some(Value::Array(a)) if a.is_empty() => return Err(invalid(i, "actions", "empty")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid(i, "actions", "not an array")),
    };
    let (mut publish, mut subscribe) = (false, false);
    for action in actions {
        let name = action
            .as_str()
            .ok_or_else(|| invalid(i, "actions", "not an array of strings"))?;
        match Action::from_name(name) {
            Some(Action::Publish) => publish = true,
            Some(Action::Subscribe) => subscribe = true,
            None => {
                return Err(AuthzError::UnknownAction {
                    detail: i,
                    action: name.to_owned(),
                })
            }
        }
    }

    let entries = match object.get("topics") {
        None => return Err(invalid(i, "topics", "missing")),
        Some(Value::Array(t)) if t.is_empty() => return Err(invalid(i, "topics", "empty")),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(invalid(i, "topics", "not an array")),
    };
    let topics = entries
        .iter()
        .enumerate()
        .map(|(j, entry)| parse_topic(i, j, entry, base))
        .collect::<Result<_, _>>()?;

    let payload = object.get("payload").filter(|p| !p.is_null()).cloned();

    Ok(Detail {
        publish,
        subscribe,
        topics,
        payload,
    })
}

fn parse_topic(i: usize, j: usize, entry: &Value, base: &Url) -> Result<Matcher, AuthzError> {
    let object = entry
        .as_object()
        .ok_or_else(|| invalid(i, format!("topics[{j}]"), "not an object"))?;
    if let Some(member) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "match" | "match_type" | "matchType"))
    {
        return Err(invalid(
            i,
            format!("topics[{j}].{member}"),
            "unsupported member",
        ));
    }
    let value = match object.get("match") {
        None => return Err(invalid(i, format!("topics[{j}].match"), "missing")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid(i, format!("topics[{j}].match"), "not a string")),
    };
    let (member, raw_type) = match (object.get("match_type"), object.get("matchType")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                i,
                format!("topics[{j}].matchType"),
                "given with match_type",
            ))
        }
        (Some(t), None) => ("match_type", Some(t)),
        (None, t) => ("matchType", t),
    };
    let match_type = match raw_type {
        None => MatchType::Exact,
        Some(Value::String(s)) => MatchType::from_name(s).ok_or_else(|| AuthzError::Matcher {
            detail: i,
            topic: j,
            source: MatcherError::UnknownMatchType(s.clone()),
        })?,
        Some(_) => return Err(invalid(i, format!("topics[{j}].{member}"), "not a string")),
    };
    Matcher::new(match_type, value, base).map_err(|source| AuthzError::Matcher {
        detail: i,
        topic: j,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn hub() -> Url {
        Url::parse("https://example.com/.well-known/mercure").unwrap()
    }

    fn parse(v: Value) -> Result<Authorization, AuthzError> {
        Authorization::from_details(&v, &hub())
    }

    #[test]
    fn spec_subscribers_example() {
        // Section "Subscribers".
        let claims = json!({
          "authorization_details": [
            {
              "type": DETAIL_TYPE,
              "actions": ["subscribe"],
              "topics": [
                {"match": "https://example.com/books/1", "match_type": "exact"},
                {"match": "https://example.com/books/7", "match_type": "exact"}
              ]
            }
          ]
        });
        let a = Authorization::from_claims(&claims, &hub()).unwrap();
        assert!(a.can_subscribe("https://example.com/books/1"));
        assert!(a.can_subscribe("https://example.com/books/7"));
        assert!(!a.can_subscribe("https://example.com/books/2"));
        assert!(!a.can_publish("https://example.com/books/1"));
        assert_eq!(a.details().len(), 1);
        assert_eq!(a.details()[0].topics().len(), 2);
        let t = Topic::new("https://example.com/books/1", &hub());
        assert!(a.allows_topic(Action::Subscribe, &t));
        assert!(!a.allows_topic(Action::Publish, &t));
    }

    #[test]
    fn draft_text_spelling_is_accepted() {
        let a = parse(json!([
            {"type": "mercure", "actions": ["subscribe"],
             "topics": [{"match": "https://example.com/books/:id", "matchType": "URLPattern"}]},
            {"type": "https://example.com/other", "whatever": 1}
        ]))
        .unwrap();
        assert_eq!(a.details().len(), 1);
        assert!(a.can_subscribe("https://example.com/books/1"));
        assert!(!a.can_subscribe("https://example.com/authors/1"));
    }

    #[test]
    fn spec_payloads_example() {
        // Section "Payloads": the first matching subscribe detail wins, `*`
        // serves as the default, and a subscription's matcher string is
        // matched as if it were a topic.
        let text = r#"[
            {
                "type": "https://mercure.rocks/authorization-detail",
                "actions": ["subscribe"],
                "topics": [{"match": "https://example.com/foo"}],
                "payload": {"custom1": "data only available for this topic"}
            },
            {
                "type": "https://mercure.rocks/authorization-detail",
                "actions": ["subscribe"],
                "topics": [{"match": "https://example.com/bar/:id", "match_type": "urlpattern"}],
                "payload": {"custom2": "data available for matching subscriptions"}
            },
            {
                "type": "https://mercure.rocks/authorization-detail",
                "actions": ["subscribe"],
                "topics": [{"match": "*"}],
                "payload": {"custom3": "default data for all other subscriptions"}
            }
        ]"#;
        let a = Authorization::from_json(text, &hub()).unwrap();
        let key = |m: &str| {
            a.payload_for(m)
                .and_then(|p| p.as_object().and_then(|o| o.keys().next().cloned()))
                .unwrap()
        };
        assert_eq!(key("https://example.com/foo"), "custom1");
        assert_eq!(key("https://example.com/bar/1"), "custom2");
        // The URL pattern string itself, as a subscription's matcher, is a
        // URL the pattern matches (`:id` is a segment).
        assert_eq!(key("https://example.com/bar/:id"), "custom2");
        assert_eq!(key("https://example.com/baz"), "custom3");
        assert_eq!(key("*"), "custom3");
        assert!(a.can_subscribe("anything at all"));
        assert!(!a.can_publish("https://example.com/foo"));
    }

    #[test]
    fn first_matching_detail_decides_the_payload() {
        let a = parse(json!([
            {"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "*"}],
             "payload": {"publisher": true}},
            {"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "a"}]},
            {"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "*"}],
             "payload": {"default": true}}
        ]))
        .unwrap();
        // The publish-only detail is skipped; the first subscribe detail
        // matching "a" has no payload, and decides.
        assert_eq!(a.payload_for("a"), None);
        assert!(a.payload_for("b").unwrap().get("default").is_some());
        assert!(a.can_publish("x") && a.can_subscribe("x"));
    }

    #[test]
    fn other_types_are_ignored_and_no_detail_grants_nothing() {
        let a = parse(json!([
            {"type": "payment_initiation", "actions": ["initiate"], "topics": "whatever",
             "instructedAmount": {"currency": "EUR", "amount": "123.50"}},
            {"type": "https://example.com/other"}
        ]))
        .unwrap();
        assert!(a.is_empty());
        assert!(!a.can_subscribe("*") && !a.can_publish("x"));
        let none = Authorization::from_claims(&json!({"sub": "x"}), &hub()).unwrap();
        assert!(none.is_empty());
        assert!(parse(json!([])).unwrap().is_empty());
        assert!(Authorization::default().is_empty());
    }

    #[test]
    fn relative_url_patterns_cover_subscription_events() {
        // Section "Subscription API": one matcher covers the events and the
        // API resources.
        let a = parse(json!([{
            "type": DETAIL_TYPE,
            "actions": ["subscribe"],
            "topics": [{"match": "/.well-known/mercure/subscriptions{/*}?", "match_type": "urlpattern"}]
        }]))
        .unwrap();
        assert!(a.can_subscribe("/.well-known/mercure/subscriptions"));
        assert!(a.can_subscribe("/.well-known/mercure/subscriptions/Exact/a%2Fb/urn%3Ax"));
        assert!(a.can_subscribe("https://example.com/.well-known/mercure/subscriptions/Exact/a"));
        assert!(!a.can_subscribe("https://example.com/books/1"));
    }

    #[test]
    fn invalid_claims() {
        let detail = |extra: Value| {
            let mut d =
                json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "a"}]});
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() && k != "payload" {
                    d.as_object_mut().unwrap().remove(k);
                } else {
                    d[k] = v.clone();
                }
            }
            Authorization::from_details(&json!([d]), &hub()).err()
        };
        let inv = |member: &str, problem: &'static str| {
            Some(AuthzError::Invalid {
                detail: 0,
                member: member.into(),
                problem,
            })
        };
        assert_eq!(detail(json!({})), None);
        assert_eq!(detail(json!({"actions": null})), inv("actions", "missing"));
        assert_eq!(detail(json!({"actions": []})), inv("actions", "empty"));
        assert_eq!(
            detail(json!({"actions": "publish"})),
            inv("actions", "not an array")
        );
        assert_eq!(
            detail(json!({"actions": [1]})),
            inv("actions", "not an array of strings")
        );
        assert_eq!(
            detail(json!({"actions": ["publish", "Subscribe"]})),
            Some(AuthzError::UnknownAction {
                detail: 0,
                action: "Subscribe".into()
            })
        );
        assert_eq!(detail(json!({"actions": ["subscribe", "subscribe"]})), None);
        assert_eq!(detail(json!({"topics": null})), inv("topics", "missing"));
        assert_eq!(detail(json!({"topics": []})), inv("topics", "empty"));
        assert_eq!(
            detail(json!({"topics": {"match": "a"}})),
            inv("topics", "not an array")
        );
        // Draft-07 style bare strings are refused.
        assert_eq!(
            detail(json!({"topics": ["a"]})),
            inv("topics[0]", "not an object")
        );
        assert_eq!(
            detail(json!({"topics": [null]})),
            inv("topics[0]", "not an object")
        );
        assert_eq!(
            detail(json!({"topics": [{}]})),
            inv("topics[0].match", "missing")
        );
        assert_eq!(
            detail(json!({"topics": [{"match": 1}]})),
            inv("topics[0].match", "not a string")
        );
        assert_eq!(
            detail(json!({"topics": [{"match": "a", "match_type": null}]})),
            inv("topics[0].match_type", "not a string")
        );
        assert_eq!(
            detail(json!({"topics": [{"match": "a", "matchType": null}]})),
            inv("topics[0].matchType", "not a string")
        );
        assert_eq!(
            detail(
                json!({"topics": [{"match": "a", "match_type": "exact", "matchType": "Exact"}]})
            ),
            inv("topics[0].matchType", "given with match_type")
        );
        assert_eq!(
            detail(json!({"topics": [{"match": "a", "matchtype": "urlpattern"}]})),
            inv("topics[0].matchtype", "unsupported member")
        );
        assert_eq!(
            detail(json!({"topics": [{"match": "a", "match_type": "Urlpattern"}]})),
            Some(AuthzError::Matcher {
                detail: 0,
                topic: 0,
                source: MatcherError::UnknownMatchType("Urlpattern".into())
            })
        );
        assert_eq!(
            detail(
                json!({"topics": [{"match": "a"}, {"match": "https://a/:", "match_type": "urlpattern"}]})
            ),
            Some(AuthzError::Matcher {
                detail: 0,
                topic: 1,
                source: MatcherError::InvalidPattern(
                    Matcher::new(MatchType::UrlPattern, "https://a/:", &hub())
                        .err()
                        .map(|e| match e {
                            MatcherError::InvalidPattern(m) => m,
                            _ => unreachable!(),
                        })
                        .unwrap()
                )
            })
        );
        assert_eq!(
            detail(json!({"topics": [{"match": ""}]})),
            Some(AuthzError::Matcher {
                detail: 0,
                topic: 0,
                source: MatcherError::Empty
            })
        );
        assert_eq!(
            detail(json!({"topics": [{"match": "a\u{0}"}]})),
            Some(AuthzError::Matcher {
                detail: 0,
                topic: 0,
                source: MatcherError::ControlCharacter
            })
        );
        // Any JSON value is a payload; `null` is none.
        assert_eq!(detail(json!({"payload": null})), None);
        assert_eq!(detail(json!({"payload": "x"})), None);
        assert_eq!(detail(json!({"payload": {"a": [1, {"b": null}]}})), None);
        assert_eq!(
            detail(json!({"locations": ["https://example.com"]})),
            inv("locations", "unsupported member")
        );

        // Entry and claim shapes.
        assert_eq!(
            parse(json!({"type": DETAIL_TYPE})).err(),
            Some(AuthzError::NotArray)
        );
        assert_eq!(
            parse(json!([1])).err(),
            Some(AuthzError::DetailNotObject(0))
        );
        assert_eq!(
            parse(json!([{"actions": []}])).err(),
            Some(AuthzError::MissingType(0))
        );
        assert_eq!(
            parse(json!([{"type": 1}])).err(),
            Some(AuthzError::MissingType(0))
        );
        assert_eq!(
            Authorization::from_claims(&json!([]), &hub()).err(),
            Some(AuthzError::ClaimsNotObject)
        );
        assert!(matches!(
            Authorization::from_json("[{", &hub()),
            Err(AuthzError::Json(_))
        ));
    }

    #[test]
    fn one_bad_detail_rejects_the_token() {
        let r = parse(json!([
            {"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "*"}]},
            {"type": DETAIL_TYPE, "actions": ["delete"], "topics": [{"match": "a"}]}
        ]));
        assert_eq!(
            r.err(),
            Some(AuthzError::UnknownAction {
                detail: 1,
                action: "delete".into()
            })
        );
    }

    #[test]
    fn limits() {
        let d = json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "a"}]});
        let other = json!({"type": "other"});
        let mut many = vec![d.clone(); MAX_DETAILS];
        many.push(other.clone());
        assert!(parse(Value::Array(many.clone())).is_ok());
        many.push(d.clone());
        assert_eq!(
            parse(Value::Array(many)).err(),
            Some(AuthzError::TooManyDetails(MAX_DETAILS))
        );

        let topics = |n: usize| {
            Value::Array(
                (0..n)
                    .map(|i| json!({"match": format!("https://a/{i}/:x"), "match_type": "urlpattern"}))
                    .collect(),
            )
        };
        let half = json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": topics(MAX_TOPICS / 2)});
        assert!(parse(json!([half.clone(), half.clone()])).is_ok());
        // Over the limit: refused before any of the patterns is compiled,
        // even when the excess is in a detail that is valid otherwise and
        // an earlier detail is invalid.
        let bad = json!({"type": DETAIL_TYPE, "actions": ["bogus"], "topics": [{"match": "a"}]});
        assert_eq!(
            parse(json!([bad, half.clone(), half, d])).err(),
            Some(AuthzError::TooManyTopics(MAX_TOPICS))
        );
        let huge = json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": topics(10_000)});
        assert_eq!(
            parse(json!([huge])).err(),
            Some(AuthzError::TooManyTopics(MAX_TOPICS))
        );
    }

    #[test]
    fn actions_round_trip() {
        for a in [Action::Publish, Action::Subscribe] {
            assert_eq!(Action::from_name(a.name()), Some(a));
        }
        assert_eq!(Action::from_name("PUBLISH"), None);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            prop::sample::select(vec![
                "mercure",
                "subscribe",
                "publish",
                "*",
                "https://mercure.rocks/authorization-detail",
                "exact",
                "urlpattern",
                "Exact",
                "URLPattern",
                "https://example.com/:id",
                "/.well-known/mercure/*",
                "type",
            ])
            .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop::sample::select(vec![
                            "type",
                            "actions",
                            "topics",
                            "payload",
                            "match",
                            "matchType",
                            "match_type",
                            "x",
                        ]),
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_text(text in any::<String>(), topic in any::<String>()) {
            if let Ok(a) = Authorization::from_json(&text, &hub()) {
                let _ = a.can_subscribe(&topic);
                let _ = a.payload_for(&topic);
            }
        }

        #[test]
        fn never_panics_on_json_ish_text(
            text in "[\\[\\]{}\",: a-zA-Z0-9*/.:\\\\-]{0,120}",
        ) {
            let _ = Authorization::from_json(&text, &hub());
        }

        #[test]
        fn never_panics_on_structured_values(v in json_value(), topic in "[a-z:/.*]{0,20}") {
            for value in [v.clone(), Value::Array(vec![v.clone()]), json!({"authorization_details": v})] {
                if let Ok(a) = Authorization::from_details(&value, &hub()) {
                    let _ = a.can_publish(&topic);
                    let _ = a.can_subscribe(&topic);
                    let _ = a.payload_for(&topic);
                }
                let _ = Authorization::from_claims(&value, &hub());
                let _ = Authorization::from_json(&value.to_string(), &hub());
            }
        }

        #[test]
        fn exact_grants_exactly(topic in "[a-z0-9:/.]{1,20}", other in "[a-z0-9:/.]{1,20}") {
            prop_assume!(topic != "*");
            let a = parse(json!([{"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": topic}]}])).unwrap();
            prop_assert!(a.can_publish(&topic));
            prop_assert_eq!(a.can_publish(&other), other == topic);
            prop_assert!(!a.can_subscribe(&topic));
        }
    }
}
