//! herald's batch publish extension: a JSON array of updates in one
//! `POST /.well-known/mercure`, all or nothing.

mod common;

use common::*;
use serde_json::json;

async fn post_json(hub: &TestHub, token: &str, body: &str) -> (u16, String, String) {
    let res = client()
        .post(hub.hub_url())
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, res.text().await.unwrap())
}

async fn last_position(hub: &TestHub) -> u64 {
    hub.hub.engine().bounds().await.unwrap().last
}

#[tokio::test]
async fn a_batch_is_appended_in_order_and_answered_with_its_ids() {
    let hub = TestHub::start(config()).await;
    let sub_token = token(SUB_KEY, None, Some(&["https://ex/b"]));
    let auth = format!("Bearer {sub_token}");
    let mut s = Subscription::open(
        &hub,
        &[("topic", "https://ex/a"), ("topic", "https://ex/b")],
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(s.status, 200);
    let body = json!([
        {"topics": ["https://ex/a"], "data": "one", "id": "u-1"},
        {"topics": ["https://ex/b", "https://ex/alt"], "data": "two\nlines", "type": "note", "retry": 1500},
        {"topics": ["https://ex/b"], "data": "three", "private": true},
        {"topics": ["https://ex/a"]},
    ]);
    let (status, ct, text) = post_json(&hub, &publisher_token(), &body.to_string()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ct, "application/json");
    let ids: Vec<String> = serde_json::from_str(&text).unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[0], "u-1");
    assert!(ids[1..].iter().all(|i| i.starts_with("urn:uuid:")));

    let events = s.drain_events(SHORT).await;
    let got: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| (e.id.as_str(), e.data.as_str(), e.event.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("u-1", "one", "message"),
            (ids[1].as_str(), "two\nlines", "note"),
            (ids[2].as_str(), "three", "message"),
            (ids[3].as_str(), "", "message"),
        ]
    );
    assert_eq!(events[1].retry, Some(1500));

    // An anonymous subscriber does not get the private one.
    let mut anon = Subscription::open(
        &hub,
        &[("topic", "https://ex/b"), ("lastEventID", "earliest")],
        &[],
    )
    .await;
    let seen: Vec<String> = anon
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(seen, vec!["two\nlines"]);
}

#[tokio::test]
async fn a_bad_batch_appends_nothing_and_says_which_update() {
    let hub = TestHub::start(config()).await;
    let t = publisher_token();
    let cases: &[(&str, u16, &str)] = &[
        ("[]", 400, "empty batch"),
        ("{", 400, "malformed JSON"),
        (r#"{"topics":["a"]}"#, 400, "malformed JSON"),
        (r#"[{"topics":["a"],"privat":true}]"#, 400, "unknown field"),
        (
            r#"[{"topics":["a"]},{"topics":[]}]"#,
            400,
            "update 1: missing topic",
        ),
        (r#"[{"topics":["a"]},{"data":"x"}]"#, 400, "missing field"),
        (
            r#"[{"topics":["a"]},{"topics":["b"],"id":"bad\nid"}]"#,
            400,
            "update 1:",
        ),
        (
            r#"[{"topics":["a"]},{"topics":["b"],"retry":-1}]"#,
            400,
            "malformed JSON",
        ),
    ];
    for (body, status, reason) in cases {
        let (got, _, text) = post_json(&hub, &t, body).await;
        assert_eq!(got, *status, "{body}: {text}");
        assert!(text.contains(reason), "{body}: {text}");
    }
    assert_eq!(last_position(&hub).await, 0);

    // One topic the token may not publish to: 403, nothing appended.
    let narrow = token(PUB_KEY, Some(&["https://ex/a"]), None);
    let body = r#"[{"topics":["https://ex/a"]},{"topics":["https://ex/b"]}]"#;
    assert_eq!(post_json(&hub, &narrow, body).await.0, 403);
    assert_eq!(last_position(&hub).await, 0);

    // An id already in history: 409, and the rest of the batch is not kept.
    publish_ok(
        &client(),
        &hub,
        &[("topic", "https://ex/a"), ("id", "taken")],
    )
    .await;
    let body =
        r#"[{"topics":["https://ex/a"],"id":"fresh"},{"topics":["https://ex/a"],"id":"taken"}]"#;
    assert_eq!(post_json(&hub, &t, body).await.0, 409);
    assert_eq!(last_position(&hub).await, 1);
    assert_eq!(hub.hub.engine().resolve("fresh").await.unwrap(), None);

    // More updates than half a subscriber's queue: 413, nothing appended.
    let big: Vec<_> = (0..2049)
        .map(|_| json!({"topics": ["https://ex/a"]}))
        .collect();
    let (status, _, text) = post_json(&hub, &t, &json!(big).to_string()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("at most 2048"), "{text}");
    assert_eq!(last_position(&hub).await, 1);

    // Another content type is refused.
    let res = client()
        .post(hub.hub_url())
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
}
