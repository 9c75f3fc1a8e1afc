//! Active subscriptions (Mercure draft-07, "Active Subscriptions").
//!
//! When switched on (`HubConfig::subscriptions`), every subscriber gets an
//! IRI (`urn:uuid:…`), and for each topic selector of its request the hub
//! publishes a private update on
//! `/.well-known/mercure/subscriptions/{topic}/{subscriber}` when it
//! connects (`"active": true`) and when it leaves (`"active": false`), with
//! the `mercure.payload` of its token. The same documents are served by the
//! subscriptions API (`http::subscriptions`).
//!
//! The events go through the engine like any update, so they are in history
//! and a client can pass the API's `lastEventID` back when it subscribes to
//! them: the list it read plus the events after it miss nothing.
//!
//! The table of active subscriptions lives here, apart from the topic
//! index, so a hub with the feature off spends nothing on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_protocol::template::expand_simple;
use herald_protocol::Update;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// Path of the subscriptions collection, and prefix of the event topics.
pub use herald_protocol::matcher::SUBSCRIPTIONS_PATH;

/// The JSON-LD context every document names.
pub const CONTEXT: &str = "https://mercure.rocks/";

/// One subscriber connection, as the subscriptions feature sees it.
#[derive(Debug)]
pub struct Subscription {
    /// The subscriber's IRI, shared by all its topic selectors.
    pub subscriber: String,
    /// The topic selectors of its request, as written.
    pub topics: Vec<String>,
    /// `mercure.payload` from its token.
    pub payload: Option<Value>,
}

impl Subscription {
    pub fn new(topics: Vec<String>, payload: Option<Value>) -> Self {
        Self {
            subscriber: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            topics,
            payload,
        }
    }

    /// The events announcing this subscription (`active: true`) or its end.
    pub fn events(&self, active: bool) -> Vec<Update> {
        self.topics
            .iter()
            .map(|topic| {
                let id = subscription_topic(topic, &self.subscriber);
                let mut doc = document(topic, &self.subscriber, active, self.payload.as_ref());
                doc["@context"] = json!(CONTEXT);
                Update {
                    topics: vec![id],
                    data: doc.to_string(),
                    private: true,
                    ..Update::default()
                }
            })
            .collect()
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

/// The subscription document (without `@context`, which a collection gives
/// once at its root).
pub fn document(topic: &str, subscriber: &str, active: bool, payload: Option<&Value>) -> Value {
    let mut doc = json!({
        "id": subscription_topic(topic, subscriber),
        "type": "Subscription",
        "topic": topic,
        "subscriber": subscriber,
        "active": active,
    });
    if let Some(p) = payload {
        doc["payload"] = p.clone();
    }
    doc
}

/// The table of active subscriptions, by connection.
#[derive(Debug, Default)]
pub struct ActiveSubscriptions {
    by_connection: Mutex<BTreeMap<u64, Arc<Subscription>>>,
}

impl ActiveSubscriptions {
    pub fn insert(&self, connection: u64, sub: Arc<Subscription>) {
        self.by_connection.lock().insert(connection, sub);
    }

    pub fn remove(&self, connection: u64) -> Option<Arc<Subscription>> {
        self.by_connection.lock().remove(&connection)
    }

    /// Documents of the active subscriptions, optionally only those of one
    /// topic selector and one subscriber, sorted by topic then subscriber.
    pub fn documents(&self, topic: Option<&str>, subscriber: Option<&str>) -> Vec<Value> {
        let mut found: Vec<(String, String, Option<Value>)> = Vec::new();
        for sub in self.by_connection.lock().values() {
            if subscriber.is_some_and(|s| s != sub.subscriber) {
                continue;
            }
            for t in &sub.topics {
                if topic.is_none_or(|want| want == t) {
                    found.push((t.clone(), sub.subscriber.clone(), sub.payload.clone()));
                }
            }
        }
        found.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        found
            .iter()
            .map(|(t, s, p)| document(t, s, true, p.as_ref()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_connection.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        let sub = Subscription::new(
            vec!["https://example.com/{id}".into(), "*".into()],
            Some(json!({"user": 7})),
        );
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
    fn the_table_filters_by_topic_and_subscriber() {
        let table = ActiveSubscriptions::default();
        let a = Arc::new(Subscription::new(vec!["t1".into(), "t2".into()], None));
        let b = Arc::new(Subscription::new(vec!["t1".into()], Some(json!(1))));
        table.insert(1, a.clone());
        table.insert(2, b.clone());
        assert_eq!(table.documents(None, None).len(), 3);
        assert_eq!(table.documents(Some("t1"), None).len(), 2);
        assert_eq!(table.documents(Some("t2"), None).len(), 1);
        assert_eq!(table.documents(Some("t1"), Some(&b.subscriber)).len(), 1);
        assert!(table.documents(Some("t2"), Some(&b.subscriber)).is_empty());
        table.remove(1);
        assert_eq!(table.documents(None, None).len(), 1);
        assert_eq!(table.len(), 1);
    }
}
