//! Active subscriptions, in both protocol revisions.
//!
//! When switched on (`HubConfig::subscriptions`), every subscriber
//! connection gets an IRI (`urn:uuid:…`, random, shared by all its
//! selectors and never derived from the token, so it cannot be forged or
//! leak the token's `sub`), and the hub publishes a private update when it
//! connects (`"active": true`) and when it leaves (`"active": false`):
//!
//! - **draft-07** subscriptions, one per `topic` selector, on
//!   `/.well-known/mercure/subscriptions/{topic}/{subscriber}`, a JSON-LD
//!   document with the token's `mercure.payload`;
//! - **draft-08** (Mercure 1.0) subscriptions, one per `match*` matcher, on
//!   `/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`,
//!   as SSE events of type `mercure` whose data is a compact JSON object
//!   (`id`, `type: "subscription"`, `subscriber`, `match`, `match_type`,
//!   `active`, and the `payload` of the first `subscribe` authorization
//!   detail matching the matcher).
//!
//! Each revision's subscriptions API (`http::subscriptions`) lists that
//! revision's subscriptions. The events go through the engine like any
//! update, so they are in history and a client can pass the API's last
//! event id back when it subscribes to them: the list it read plus the
//! events after it miss nothing.
//!
//! The table of active subscriptions lives here, apart from the topic
//! index, so a hub with the feature off spends nothing on it.
//!
//! On an engine shared by several nodes, each node also writes its
//! connections to the engine's [`Directory`]: the API lists the
//! subscriptions of every node, and when a node dies, one surviving node
//! publishes the `active: false` events of its subscriptions (see
//! [`ActiveSubscriptions::reap`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{Directory, EngineError};

use herald_protocol::matcher::{self, MatchType};
use herald_protocol::template::expand_simple;
use herald_protocol::Update;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// Path of the subscriptions collection, and prefix of the event topics.
pub use herald_protocol::matcher::SUBSCRIPTIONS_PATH;

/// The JSON-LD context every draft-07 document names.
pub const CONTEXT: &str = "https://mercure.rocks/";

/// The SSE event type of draft-08 subscription events; publishers may not
/// use it.
pub const EVENT_TYPE: &str = "mercure";

/// One subscription of a connection.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A draft-07 topic selector, as written.
    Topic(String),
    /// A draft-08 topic matcher.
    Matcher {
        match_type: MatchType,
        value: String,
    },
}

/// One subscriber connection, as the subscriptions feature sees it.
#[derive(Debug)]
pub struct Subscription {
    /// The subscriber's IRI, shared by all its subscriptions.
    pub subscriber: String,
    /// Its subscriptions, each with the payload the token attaches to it.
    pub entries: Vec<(Entry, Option<Value>)>,
}

impl Subscription {
    /// A draft-07 connection: its topic selectors, each with its payload
    /// (`mercure.payload` of a draft-07 token).
    pub fn draft07(topics: Vec<(String, Option<Value>)>) -> Self {
        Self {
            subscriber: new_subscriber_iri(),
            entries: topics
                .into_iter()
                .map(|(t, payload)| (Entry::Topic(t), payload))
                .collect(),
        }
    }

    /// A draft-08 connection: its matchers, each with its payload.
    pub fn draft08(matchers: Vec<(MatchType, String, Option<Value>)>) -> Self {
        Self {
            subscriber: new_subscriber_iri(),
            entries: matchers
                .into_iter()
                .map(|(match_type, value, payload)| (Entry::Matcher { match_type, value }, payload))
                .collect(),
        }
    }

    /// Its form in the engine's [`Directory`].
    pub fn encode(&self) -> String {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .map(|(entry, payload)| match entry {
                Entry::Topic(t) => json!({ "topic": t, "payload": payload }),
                Entry::Matcher { match_type, value } => json!({
                    "match_type": match_type.name(),
                    "match": value,
                    "payload": payload,
                }),
            })
            .collect();
        json!({ "subscriber": self.subscriber, "entries": entries }).to_string()
    }

    /// Reads what [`Subscription::encode`] wrote (on any node); `None` for
    /// anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        let subscriber = v.get("subscriber")?.as_str()?.to_owned();
        let entries = v
            .get("entries")?
            .as_array()?
            .iter()
            .map(|e| {
                let payload = e.get("payload").filter(|p| !p.is_null()).cloned();
                let entry = match e.get("topic") {
                    Some(t) => Entry::Topic(t.as_str()?.to_owned()),
                    None => Entry::Matcher {
                        match_type: MatchType::from_name(e.get("match_type")?.as_str()?)?,
                        value: e.get("match")?.as_str()?.to_owned(),
                    },
                };
                Some((entry, payload))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            subscriber,
            entries,
        })
    }

    /// The events announcing this subscription (`active: true`) or its end.
    pub fn events(&self, active: bool) -> Vec<Update> {
        self.entries
            .iter()
            .map(|(entry, payload)| {
                let doc = document(entry, &self.subscriber, active, payload.as_ref());
                match entry {
                    Entry::Topic(_) => {
                        let mut doc = doc;
                        doc["@context"] = json!(CONTEXT);
                        Update {
                            topics: vec![entry_topic(entry, &self.subscriber)],
                            data: doc.to_string(),
                            private: true,
                            ..Update::default()
                        }
                    }
                    Entry::Matcher { .. } => Update {
                        topics: vec![entry_topic(entry, &self.subscriber)],
                        data: doc.to_string(),
                        event_type: Some(EVENT_TYPE.to_owned()),
                        private: true,
                        ..Update::default()
                    },
                }
            })
            .collect()
    }
}

/// For a subscription event of the hub (its topic is under
/// `/.well-known/mercure/subscriptions/`, where publishers may not publish),
/// whether it is a draft-08 one (of type `mercure`); `None` for any other
/// update.
pub fn event_revision(update: &Update) -> Option<bool> {
    let topic = update.topics.first()?;
    let rest = topic.strip_prefix(SUBSCRIPTIONS_PATH)?;
    rest.starts_with('/')
        .then(|| update.event_type.as_deref() == Some(EVENT_TYPE))
}

fn new_subscriber_iri() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

/// The topic of a subscription's events, also its path in the API.
pub fn entry_topic(entry: &Entry, subscriber: &str) -> String {
    match entry {
        Entry::Topic(t) => subscription_topic(t, subscriber),
        Entry::Matcher { match_type, value } => {
            matcher::subscription_topic(*match_type, value, subscriber)
        }
    }
}

/// `/.well-known/mercure/subscriptions/{topic}/{subscriber}`, expanded.
pub fn subscription_topic(topic: &str, subscriber: &str) -> String {
    format!(
        "{SUBSCRIPTIONS_PATH}/{}/{}",
        expand_simple(topic),
        expand_simple(subscriber)
    )
}

/// `/.well-known/mercure/subscriptions/{topic}`, expanded.
pub fn topic_collection(topic: &str) -> String {
    format!("{SUBSCRIPTIONS_PATH}/{}", expand_simple(topic))
}

/// The document describing one subscription (a draft-07 one without
/// `@context`, which a collection gives once at its root).
pub fn document(entry: &Entry, subscriber: &str, active: bool, payload: Option<&Value>) -> Value {
    let id = entry_topic(entry, subscriber);
    let mut doc = match entry {
        Entry::Topic(topic) => json!({
            "id": id,
            "type": "Subscription",
            "topic": topic,
            "subscriber": subscriber,
            "active": active,
        }),
        Entry::Matcher { match_type, value } => json!({
            "id": id,
            "type": "subscription",
            "subscriber": subscriber,
            "match": value,
            "match_type": match_type.name(),
            "active": active,
        }),
    };
    if let Some(p) = payload {
        doc["payload"] = p.clone();
    }
    doc
}

/// Which subscriptions an API request lists.
#[derive(Debug, Clone, Copy)]
pub enum Filter<'a> {
    /// Draft-07 subscriptions, optionally of one selector.
    Topic(Option<&'a str>),
    /// Draft-08 subscriptions, optionally of one matcher.
    Matcher(Option<(MatchType, &'a str)>),
}

/// The table of active subscriptions, by connection: this node's, and on
/// a shared engine the directory of every node's.
#[derive(Default)]
pub struct ActiveSubscriptions {
    by_connection: Mutex<BTreeMap<u64, Arc<Subscription>>>,
    directory: Option<Arc<dyn Directory>>,
}

impl std::fmt::Debug for ActiveSubscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveSubscriptions")
            .field("local", &self.len())
            .field("shared", &self.directory.is_some())
            .finish()
    }
}

impl ActiveSubscriptions {
    /// A table that also writes to (and lists from) a shared directory.
    pub fn new(directory: Option<Arc<dyn Directory>>) -> Self {
        Self {
            by_connection: Mutex::default(),
            directory,
        }
    }

    pub fn insert(&self, connection: u64, sub: Arc<Subscription>) {
        if let Some(d) = &self.directory {
            d.put(connection, sub.encode());
        }
        self.by_connection.lock().insert(connection, sub);
    }

    pub fn remove(&self, connection: u64) -> Option<Arc<Subscription>> {
        let sub = self.by_connection.lock().remove(&connection);
        if let (Some(d), Some(_)) = (&self.directory, &sub) {
            d.remove(connection);
        }
        sub
    }

    /// Every active subscription: this node's, then every other live
    /// node's.
    ///
    /// # Errors
    /// The shared directory could not be read.
    pub async fn all(&self) -> Result<Vec<Arc<Subscription>>, EngineError> {
        let mut all: Vec<Arc<Subscription>> = self.by_connection.lock().values().cloned().collect();
        if let Some(d) = &self.directory {
            all.extend(
                d.others()
                    .await?
                    .iter()
                    .filter_map(|text| Subscription::decode(text))
                    .map(Arc::new),
            );
        }
        Ok(all)
    }

    /// The subscriptions of nodes that died, each handed to one node only:
    /// the caller publishes their `active: false` events.
    ///
    /// # Errors
    /// The shared directory could not be read.
    pub async fn reap(&self) -> Result<Vec<Subscription>, EngineError> {
        let Some(d) = &self.directory else {
            return Ok(Vec::new());
        };
        Ok(d.reap()
            .await?
            .iter()
            .filter_map(|text| Subscription::decode(text))
            .collect())
    }

    /// Whether the table is shared with other nodes.
    pub fn is_shared(&self) -> bool {
        self.directory.is_some()
    }

    pub fn len(&self) -> usize {
        self.by_connection.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Documents of the subscriptions that pass `filter` (and, when given,
/// belong to `subscriber`), sorted by their ids.
pub fn documents(
    subscriptions: &[Arc<Subscription>],
    filter: Filter<'_>,
    subscriber: Option<&str>,
) -> Vec<Value> {
    let mut found: Vec<Value> = Vec::new();
    for sub in subscriptions {
        if subscriber.is_some_and(|s| s != sub.subscriber) {
            continue;
        }
        for (entry, payload) in &sub.entries {
            let wanted = match (filter, entry) {
                (Filter::Topic(want), Entry::Topic(t)) => want.is_none_or(|w| w == t),
                (Filter::Matcher(want), Entry::Matcher { match_type, value }) => {
                    want.is_none_or(|(wt, wv)| wt == *match_type && wv == value)
                }
                _ => false,
            };
            if wanted {
                found.push(document(entry, &sub.subscriber, true, payload.as_ref()));
            }
        }
    }
    // Every document's `id` is its topic.
    found.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_expanded_as_rfc6570_simple_strings() {
        assert_eq!(
            subscription_topic(
                "https://example.com/{selector}",
                "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6"
            ),
            "/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2F%7Bselector%7D/urn%3Auuid%3Abb3de268-05b0-4c65-b44e-8f9acefc29d6"
        );
        assert_eq!(
            topic_collection("a b~c"),
            "/.well-known/mercure/subscriptions/a%20b~c"
        );
    }

    #[test]
    fn events_are_private_json_ld_with_the_payload() {
        let payload = Some(json!({"user": 7}));
        let sub = Subscription::draft07(vec![
            ("https://example.com/{id}".into(), payload.clone()),
            ("*".into(), payload),
        ]);
        let events = sub.events(true);
        assert_eq!(events.len(), 2);
        let e = &events[0];
        assert!(e.private);
        assert_eq!(
            e.topics,
            vec![subscription_topic(
                "https://example.com/{id}",
                &sub.subscriber
            )]
        );
        let doc: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(doc["@context"], CONTEXT);
        assert_eq!(doc["id"], e.topics[0].as_str());
        assert_eq!(doc["type"], "Subscription");
        assert_eq!(doc["topic"], "https://example.com/{id}");
        assert_eq!(doc["subscriber"], sub.subscriber.as_str());
        assert_eq!(doc["active"], true);
        assert_eq!(doc["payload"], json!({"user": 7}));
        let gone: Value = serde_json::from_str(&sub.events(false)[1].data).unwrap();
        assert_eq!(gone["active"], false);
        assert_eq!(gone["topic"], "*");
    }

    #[test]
    fn draft08_events_are_plain_json_of_type_mercure() {
        let sub = Subscription::draft08(vec![(
            MatchType::UrlPattern,
            "https://example.com/:selector".into(),
            Some(json!({"foo": "bar"})),
        )]);
        let e = &sub.events(true)[0];
        assert!(e.private);
        assert_eq!(e.event_type.as_deref(), Some("mercure"));
        let want = format!(
            "/.well-known/mercure/subscriptions/urlpattern/https%3A%2F%2Fexample.com%2F%3Aselector/{}",
            expand_simple(&sub.subscriber)
        );
        assert_eq!(e.topics, vec![want.clone()]);
        let doc: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(
            doc,
            json!({
                "id": want,
                "type": "subscription",
                "subscriber": sub.subscriber,
                "match": "https://example.com/:selector",
                "match_type": "urlpattern",
                "active": true,
                "payload": {"foo": "bar"},
            })
        );
        assert!(!e.data.contains('\n'));
    }

    #[test]
    fn the_table_filters_by_topic_and_subscriber() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let docs = |table: &ActiveSubscriptions, f, s: Option<&str>| {
            documents(&rt.block_on(table.all()).unwrap(), f, s)
        };
        let table = ActiveSubscriptions::default();
        let a = Arc::new(Subscription::draft07(vec![
            ("t1".into(), None),
            ("t2".into(), None),
        ]));
        let b = Arc::new(Subscription::draft07(vec![("t1".into(), Some(json!(1)))]));
        let c = Arc::new(Subscription::draft08(vec![
            (MatchType::Exact, "t1".into(), None),
            (MatchType::UrlPattern, "/t/:x".into(), Some(json!({"p": 1}))),
        ]));
        table.insert(1, a.clone());
        table.insert(2, b.clone());
        table.insert(3, c.clone());
        let topics = |t| Filter::Topic(t);
        assert_eq!(docs(&table, topics(None), None).len(), 3);
        assert_eq!(docs(&table, topics(Some("t1")), None).len(), 2);
        assert_eq!(docs(&table, topics(Some("t2")), None).len(), 1);
        assert_eq!(
            docs(&table, topics(Some("t1")), Some(&b.subscriber)).len(),
            1
        );
        assert!(docs(&table, topics(Some("t2")), Some(&b.subscriber)).is_empty());
        assert_eq!(docs(&table, Filter::Matcher(None), None).len(), 2);
        let one = docs(
            &table,
            Filter::Matcher(Some((MatchType::UrlPattern, "/t/:x"))),
            Some(&c.subscriber),
        );
        assert_eq!(one.len(), 1);
        assert_eq!(one[0]["match_type"], "urlpattern");
        assert_eq!(one[0]["payload"], json!({"p": 1}));
        assert!(docs(
            &table,
            Filter::Matcher(Some((MatchType::Exact, "/t/:x"))),
            None
        )
        .is_empty());
        table.remove(1);
        assert_eq!(docs(&table, topics(None), None).len(), 1);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn subscriptions_survive_the_directory_encoding() {
        let a = Subscription::draft07(vec![
            ("t1".into(), Some(json!({"k": [1]}))),
            ("t2".into(), None),
        ]);
        let b = Subscription::draft08(vec![(MatchType::UrlPattern, "/t/:x".into(), None)]);
        for sub in [a, b] {
            let back = Subscription::decode(&sub.encode()).unwrap();
            assert_eq!(back.subscriber, sub.subscriber);
            assert_eq!(format!("{:?}", back.entries), format!("{:?}", sub.entries));
        }
        assert!(Subscription::decode("{}").is_none());
        assert!(Subscription::decode("not json").is_none());
    }
}
