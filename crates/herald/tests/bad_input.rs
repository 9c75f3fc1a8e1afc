//! Bad input gets a precise 4xx with a short reason; the hub keeps serving.

mod common;

use common::*;
use herald::HubConfig;

async fn post_raw(hub: &TestHub, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let r = client()
        .post(hub.hub_url())
        .bearer_auth(publisher_token())
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn publish_refusals() {
    let hub = TestHub::start(HubConfig {
        max_body_bytes: 1000,
        max_topics_per_update: 3,
        ..config()
    })
    .await;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "missing topic",
            FORM,
            b"data=x".to_vec(),
            400,
            "missing topic",
        ),
        (
            "empty topic",
            FORM,
            b"topic=&data=x".to_vec(),
            400,
            "empty topic",
        ),
        (
            "bad retry",
            FORM,
            b"topic=t&retry=abc".to_vec(),
            400,
            "retry",
        ),
        (
            "negative retry",
            FORM,
            b"topic=t&retry=-1".to_vec(),
            400,
            "retry",
        ),
        ("id with LF", FORM, b"topic=t&id=a%0Ab".to_vec(), 400, "id"),
        ("id with CR", FORM, b"topic=t&id=a%0Db".to_vec(), 400, "id"),
        ("id with NUL", FORM, b"topic=t&id=a%00b".to_vec(), 400, "id"),
        (
            "type with LF",
            FORM,
            b"topic=t&type=a%0Ab".to_vec(),
            400,
            "type",
        ),
        (
            "reserved id",
            FORM,
            b"topic=t&id=earliest".to_vec(),
            400,
            "reserved",
        ),
        (
            "too many topics",
            FORM,
            b"topic=a&topic=b&topic=c&topic=d".to_vec(),
            400,
            "too many topics",
        ),
        (
            "malformed body",
            FORM,
            b"topic=%ZZ\xff".to_vec(),
            400,
            "malformed",
        ),
        (
            "too large",
            FORM,
            [b"topic=t&data=".as_slice(), &[b'x'; 2000]].concat(),
            413,
            "larger",
        ),
        (
            "wrong content type",
            "text/plain",
            b"topic=t".to_vec(),
            415,
            "Content-Type",
        ),
    ];
    for (name, ct, body, status, reason) in cases {
        let (got, text) = post_raw(&hub, ct, body).await;
        assert_eq!(got, status, "{name}: {text}");
        assert!(
            text.contains(reason),
            "{name}: reason {text:?} lacks {reason:?}"
        );
    }
    // Still serving.
    let (got, _) = post_raw(&hub, FORM, b"topic=t&data=fine".to_vec()).await;
    assert_eq!(got, 200);
}

#[tokio::test]
async fn duplicate_id_is_a_conflict() {
    let hub = TestHub::start(config()).await;
    let c = client();
    publish_ok(&c, &hub, &[("topic", "t"), ("id", "same")]).await;
    let (status, text) = publish(&c, &hub, &[("topic", "t"), ("id", "same")]).await;
    assert_eq!(status, 409, "{text}");
}

#[tokio::test]
async fn subscribe_refusals() {
    let hub = TestHub::start(HubConfig {
        max_selectors: 2,
        ..config()
    })
    .await;
    let s = Subscription::open(&hub, &[], &[]).await;
    assert_eq!(s.status, 400, "missing topic");
    let s = Subscription::open(&hub, &[("topic", "a"), ("topic", "b"), ("topic", "c")], &[]).await;
    assert_eq!(s.status, 400, "too many selectors");
    for bad in [
        "https://example.com/{id",
        "https://example.com/{}",
        "https://example.com/{i d}",
        "a}b",
    ] {
        let s = Subscription::open(&hub, &[("topic", bad)], &[]).await;
        assert_eq!(s.status, 400, "invalid template {bad:?}");
    }
    let s = Subscription::open(&hub, &[("topic", "")], &[]).await;
    assert_eq!(s.status, 400, "empty selector");
    let s = Subscription::open(&hub, &[("topic", "ok")], &[]).await;
    assert_eq!(s.status, 200);
}
