//! Active subscriptions: subscription events on connect and disconnect, and
//! the subscriptions API, over real TCP with the real SSE parser.

mod common;

use common::*;
use herald::auth::{sign, Claims, KeyConfig, MercureClaim};
use herald::HubConfig;
use serde_json::{json, Value};

const EVENTS: &str = "/.well-known/mercure/subscriptions/{topic}/{subscriber}";
const BOOKS: &str = "https://example.com/books/{id}";
const A: &str = "https://example.com/a";

fn on() -> HubConfig {
    HubConfig {
        subscriptions: true,
        ..config()
    }
}

fn sub_token(subscribe: &[&str], payload: Option<Value>) -> String {
    let claims = Claims {
        mercure: MercureClaim {
            publish: None,
            subscribe: Some(subscribe.iter().map(|s| s.to_string()).collect()),
            payload,
        },
        ..Claims::default()
    };
    sign(&claims, &KeyConfig::hmac(SUB_KEY)).unwrap()
}

fn enc(s: &str) -> String {
    herald_protocol::template::expand_simple(s).to_string()
}

async fn open_with_token(hub: &TestHub, topics: &[&str], token: &str) -> Subscription {
    let q: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
    let auth = format!("Bearer {token}");
    let s = Subscription::open(hub, &q, &[("authorization", &auth)]).await;
    assert_eq!(s.status, 200);
    s
}

/// The next subscription document, parsed.
async fn next_doc(s: &mut Subscription) -> (String, Value) {
    let e = s.next_event(LONG).await.expect("a subscription event");
    (
        e.id.clone(),
        serde_json::from_str(&e.data).expect("JSON data"),
    )
}

async fn get(hub: &TestHub, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(hub.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn connect_and_disconnect_publish_private_events_with_the_payload() {
    let hub = TestHub::start(on()).await;
    let mut watcher = open_with_token(&hub, &[EVENTS], &sub_token(&[EVENTS], None)).await;
    // Anonymous subscribers never see subscription events: they are private.
    let mut anonymous = Subscription::topics(&hub, &[EVENTS]).await;
    // The watcher sees its own subscription and the anonymous one.
    let (_, own) = next_doc(&mut watcher).await;
    let (_, anon) = next_doc(&mut watcher).await;
    for doc in [&own, &anon] {
        assert_eq!(doc["topic"], EVENTS);
        assert_eq!(doc["active"], true);
        assert!(doc.get("payload").is_none());
    }
    assert_ne!(own["subscriber"], anon["subscriber"]);

    let alice = sub_token(&[BOOKS], Some(json!({"user": "alice"})));
    let mut b = open_with_token(&hub, &[BOOKS, A], &alice).await;
    let mut opened = [next_doc(&mut watcher).await, next_doc(&mut watcher).await];
    opened.sort_by(|x, y| x.1["topic"].as_str().cmp(&y.1["topic"].as_str()));
    let subscriber = opened[0].1["subscriber"].as_str().unwrap().to_owned();
    assert!(subscriber.starts_with("urn:uuid:"), "{subscriber}");
    for ((_, doc), topic) in opened.iter().zip([A, BOOKS]) {
        let id = format!(
            "/.well-known/mercure/subscriptions/{}/{}",
            enc(topic),
            enc(&subscriber)
        );
        assert_eq!(
            doc,
            &json!({
                "@context": "https://mercure.rocks/",
                "id": id,
                "type": "Subscription",
                "topic": topic,
                "subscriber": subscriber,
                "active": true,
                "payload": {"user": "alice"},
            })
        );
    }

    // b's stream is live: it receives an update, then leaves.
    publish_ok(
        &client(),
        &hub,
        &[("topic", "https://example.com/books/1"), ("data", "x")],
    )
    .await;
    assert_eq!(b.next_event(LONG).await.unwrap().data, "x");
    drop(b);
    let mut closed = [next_doc(&mut watcher).await, next_doc(&mut watcher).await];
    closed.sort_by(|x, y| x.1["topic"].as_str().cmp(&y.1["topic"].as_str()));
    for ((_, doc), topic) in closed.iter().zip([A, BOOKS]) {
        assert_eq!(doc["topic"], topic);
        assert_eq!(doc["subscriber"], subscriber.as_str());
        assert_eq!(doc["active"], false);
        assert_eq!(doc["payload"], json!({"user": "alice"}));
    }

    assert!(anonymous.drain_events(SHORT).await.is_empty());
}

#[tokio::test]
async fn the_api_lists_active_subscriptions_as_json_ld() {
    let hub = TestHub::start(on()).await;
    let reader = sub_token(
        &["/.well-known/mercure/subscriptions{/topic}{/subscriber}"],
        None,
    );
    let alice = sub_token(&[BOOKS], Some(json!({"user": "alice"})));
    let bob = sub_token(&[A], None);
    let _a = open_with_token(&hub, &[BOOKS, A], &alice).await;
    let _b = open_with_token(&hub, &[A], &bob).await;
    // The events are appended in the background; wait for all three.
    let mut last_id = String::new();
    for _ in 0..100 {
        let res = get(&hub, "/.well-known/mercure/subscriptions", Some(&reader)).await;
        let body: Value = res.json().await.unwrap();
        last_id = body["lastEventID"].as_str().unwrap().to_owned();
        if last_id != "earliest" && hub.hub.engine().bounds().await.unwrap().last == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let res = get(&hub, "/.well-known/mercure/subscriptions", Some(&reader)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/ld+json");
    assert_eq!(res.headers()["cache-control"], "must-revalidate");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["@context"], "https://mercure.rocks/");
    assert_eq!(body["id"], "/.well-known/mercure/subscriptions");
    assert_eq!(body["type"], "Subscriptions");
    let subs = body["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 3, "{body}");
    // lastEventID is the id of the newest update: the last subscription event.
    let newest = hub.hub.engine().read_after(2, 1).await.unwrap();
    assert_eq!(body["lastEventID"], newest[0].update.id.as_str());
    assert_eq!(last_id, newest[0].update.id);

    // By topic selector.
    let path = format!("/.well-known/mercure/subscriptions/{}", enc(A));
    let body: Value = get(&hub, &path, Some(&reader)).await.json().await.unwrap();
    assert_eq!(body["id"], path.as_str());
    let subs = body["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    assert!(subs.iter().all(|s| s["topic"] == A && s["active"] == true));

    // One subscription, with the payload of its token.
    let one = body["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["payload"] == json!({"user": "alice"}))
        .unwrap()
        .clone();
    let id = one["id"].as_str().unwrap();
    let res = get(&hub, id, Some(&reader)).await;
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["@context"], "https://mercure.rocks/");
    assert_eq!(doc["type"], "Subscription");
    assert_eq!(doc["topic"], A);
    assert_eq!(doc["subscriber"], one["subscriber"]);
    assert_eq!(doc["lastEventID"], newest[0].update.id.as_str());

    // An unknown subscriber is 404.
    let missing = format!("{}/{}", path, enc("urn:uuid:nobody"));
    assert_eq!(get(&hub, &missing, Some(&reader)).await.status(), 404);
}

#[tokio::test]
async fn the_api_is_authorized_by_the_requested_path() {
    let hub = TestHub::start(on()).await;
    let _a = open_with_token(&hub, &[A], &sub_token(&[A], None)).await;
    let all = "/.well-known/mercure/subscriptions";
    let by_topic = format!("{all}/{}", enc(A));

    let res = get(&hub, all, None).await;
    assert_eq!(res.status(), 401);
    // An RFC 6750 challenge without an error code, naming the metadata.
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer resource_metadata=\"http://localhost/.well-known/oauth-protected-resource/.well-known/mercure\""
    );
    assert_eq!(get(&hub, all, Some("not-a-jwt")).await.status(), 401);
    // A token for other topics: 403.
    assert_eq!(
        get(&hub, all, Some(&sub_token(&[A], None))).await.status(),
        403
    );
    // A token for exactly one collection reads that one only.
    let narrow = sub_token(&[&by_topic], None);
    assert_eq!(get(&hub, &by_topic, Some(&narrow)).await.status(), 200);
    assert_eq!(get(&hub, all, Some(&narrow)).await.status(), 403);
    // `*` reads everything.
    assert_eq!(
        get(&hub, all, Some(&sub_token(&["*"], None)))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn off_by_default_no_events_and_no_api() {
    let hub = TestHub::start(config()).await;
    let mut s = open_with_token(&hub, &["*"], &sub_token(&["*"], None)).await;
    let res = get(
        &hub,
        "/.well-known/mercure/subscriptions",
        Some(&sub_token(&["*"], None)),
    )
    .await;
    assert_eq!(res.status(), 404);
    assert!(s.drain_events(SHORT).await.is_empty());
    assert_eq!(hub.hub.engine().bounds().await.unwrap().last, 0);
}

#[tokio::test]
async fn events_are_in_history_for_resume_from_the_api_last_event_id() {
    let hub = TestHub::start(on()).await;
    let reader = sub_token(&["*"], None);
    let first = open_with_token(&hub, &[A], &sub_token(&[A], None)).await;
    // Wait until the first event is in history.
    for _ in 0..100 {
        if hub.hub.engine().bounds().await.unwrap().last >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let body: Value = get(&hub, "/.well-known/mercure/subscriptions", Some(&reader))
        .await
        .json()
        .await
        .unwrap();
    let last = body["lastEventID"].as_str().unwrap().to_owned();
    assert_ne!(last, "earliest");
    assert_eq!(body["subscriptions"].as_array().unwrap().len(), 1);

    // Between reading the list and subscribing to the events, the first
    // subscriber leaves: resuming from lastEventID still shows it.
    drop(first);
    for _ in 0..100 {
        if hub.hub.engine().bounds().await.unwrap().last >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let auth = format!("Bearer {reader}");
    let mut watcher = Subscription::open(
        &hub,
        &[("topic", EVENTS), ("lastEventID", &last)],
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(watcher.status, 200);
    let (_, gone) = next_doc(&mut watcher).await;
    assert_eq!(gone["topic"], A);
    assert_eq!(gone["active"], false);
}

#[tokio::test]
async fn a_graceful_shutdown_keeps_the_last_active_false_events() {
    let hub = TestHub::start(on()).await;
    let handle = hub.hub.clone();
    let _s = open_with_token(&hub, &[A], &sub_token(&[A], None)).await;
    for _ in 0..100 {
        if handle.engine().bounds().await.unwrap().last >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    hub.stop().await.unwrap();
    // The memory engine still answers reads after close.
    let history = handle.engine().read_after(0, 10).await.unwrap();
    let docs: Vec<Value> = history
        .iter()
        .map(|s| serde_json::from_str(&s.update.data).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert_eq!(docs[0]["active"], true);
    assert_eq!(docs[1]["active"], false);
    assert_eq!(docs[0]["subscriber"], docs[1]["subscriber"]);
}
