//! Subscribing and publishing over real TCP, read with a real SSE parser.

mod common;

use std::time::Duration;

use common::*;
use herald::HubConfig;

#[tokio::test]
async fn stream_headers_and_first_bytes_arrive_at_once() {
    let hub = TestHub::start(config()).await;
    let mut s = Subscription::topics(&hub, &["https://example.com/a"]).await;
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["cache-control"], "no-cache");
    assert_eq!(s.headers["x-accel-buffering"], "no");
    // The opening comment flushes the headers through proxies.
    assert!(matches!(
        s.next_item(LONG).await,
        Some(herald_protocol::sse::Item::Comment(_))
    ));
}

#[tokio::test]
async fn published_update_reaches_subscriber_with_all_fields() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let mut s = Subscription::topics(&hub, &["https://example.com/books/1"]).await;
    let id = publish_ok(
        &c,
        &hub,
        &[
            ("topic", "https://example.com/books/1"),
            ("data", "{\"title\":\"x\"}"),
            ("id", "urn:test:1"),
            ("type", "book"),
            ("retry", "1500"),
        ],
    )
    .await;
    assert_eq!(id, "urn:test:1");
    let e = s.next_event(LONG).await.expect("event");
    assert_eq!(e.id, "urn:test:1");
    assert_eq!(e.event, "book");
    assert_eq!(e.data, "{\"title\":\"x\"}");
    assert_eq!(e.retry, Some(1500));
}

#[tokio::test]
async fn generated_ids_are_unique_iris() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let a = publish_ok(&c, &hub, &[("topic", "t"), ("data", "1")]).await;
    let b = publish_ok(&c, &hub, &[("topic", "t"), ("data", "2")]).await;
    assert!(a.starts_with("urn:uuid:"), "{a}");
    assert_ne!(a, b);
}

#[tokio::test]
async fn uri_templates_match_and_do_not_match() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let mut s = Subscription::topics(&hub, &["https://example.com/books/{id}"]).await;
    for (topic, data) in [
        ("https://example.com/books/1", "yes-1"),
        ("https://example.com/books/1/reviews", "no-1"),
        ("https://example.com/authors/1", "no-2"),
        ("https://example.com/books/abc", "yes-2"),
    ] {
        publish_ok(&c, &hub, &[("topic", topic), ("data", data)]).await;
    }
    let got: Vec<String> = s
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, ["yes-1", "yes-2"]);
}

#[tokio::test]
async fn wildcard_and_exact_selectors() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let mut all = Subscription::topics(&hub, &["*"]).await;
    let mut one = Subscription::topics(&hub, &["a"]).await;
    publish_ok(&c, &hub, &[("topic", "a"), ("data", "1")]).await;
    publish_ok(&c, &hub, &[("topic", "b"), ("data", "2")]).await;
    let all_got: Vec<_> = all
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    let one_got: Vec<_> = one
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(all_got, ["1", "2"]);
    assert_eq!(one_got, ["1"]);
}

#[tokio::test]
async fn update_with_several_matching_topics_arrives_once() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let mut s = Subscription::topics(&hub, &["a", "b", "https://x/{id}", "*"]).await;
    publish_ok(
        &c,
        &hub,
        &[
            ("topic", "a"),
            ("topic", "b"),
            ("topic", "https://x/1"),
            ("data", "once"),
        ],
    )
    .await;
    let got = s.drain_events(SHORT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].data, "once");
}

#[tokio::test]
async fn multiline_cr_crlf_and_unicode_payloads_round_trip() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let mut s = Subscription::topics(&hub, &["t"]).await;
    let payloads = [
        "line1\nline2",
        "cr\rsplit",
        "crlf\r\nsplit",
        " leading space",
        "trailing\n",
        "\n\nblank lines\n\n",
        "héllo wörld — 日本語 — 🎉",
        "",
    ];
    for p in payloads {
        publish_ok(&c, &hub, &[("topic", "t"), ("data", p)]).await;
    }
    let got: Vec<String> = s
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    let expected: Vec<String> = payloads
        .iter()
        .map(|p| p.replace("\r\n", "\n").replace('\r', "\n"))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn heartbeat_comment_after_idle_time() {
    let hub = TestHub::start(HubConfig {
        heartbeat: Duration::from_millis(200),
        ..config()
    })
    .await;
    let mut s = Subscription::topics(&hub, &["t"]).await;
    let _opening = s.next_item(LONG).await;
    let start = std::time::Instant::now();
    match s.next_item(LONG).await {
        Some(herald_protocol::sse::Item::Comment(_)) => {}
        other => panic!("expected a heartbeat comment, got {other:?}"),
    }
    // Sent after between 3/4 of the heartbeat period and all of it.
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited <= Duration::from_secs(1), "{waited:?}");
}

#[tokio::test]
async fn retry_is_sent_when_configured() {
    let hub = TestHub::start(HubConfig {
        retry: Some(2500),
        ..config()
    })
    .await;
    let c = client();
    let mut s = Subscription::topics(&hub, &["t"]).await;
    publish_ok(&c, &hub, &[("topic", "t"), ("data", "x")]).await;
    let e = s.next_event(LONG).await.unwrap();
    assert_eq!(e.retry, Some(2500));
}

#[tokio::test]
async fn healthz_and_page() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let r = c.get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(hub.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let body = r.text().await.unwrap();
    assert!(body.contains("/.well-known/mercure"));
}
