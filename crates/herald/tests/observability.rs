//! `/metrics`, `/readyz` and the dashboard's stats stream after a known
//! workload.

mod common;

use std::time::Duration;

use common::*;
use herald::config::MetricsAccess;
use herald::HubConfig;

#[tokio::test]
async fn metrics_move_by_the_right_amounts() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let before = scrape(&hub).await;
    assert_eq!(value(&before, "herald_updates_published_total"), 0.0);

    let mut a = Subscription::topics(&hub, &["t"]).await;
    let mut b = Subscription::topics(&hub, &["t", "u"]).await;
    for i in 0..5 {
        publish_ok(&c, &hub, &[("topic", "t"), ("data", &i.to_string())]).await;
    }
    assert_eq!(a.drain_events(SHORT).await.len(), 5);
    assert_eq!(b.drain_events(SHORT).await.len(), 5);
    // One refused publish (no token) and one refused subscriber token.
    let r = c
        .post(hub.hub_url())
        .form(&[("topic", "t")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let s = Subscription::open(&hub, &[("topic", "t")], &[("Authorization", "Bearer nope")]).await;
    assert_eq!(s.status, 401);
    // Replay from history.
    let mut r = Subscription::open(&hub, &[("topic", "t"), ("lastEventID", "earliest")], &[]).await;
    assert_eq!(r.drain_events(SHORT).await.len(), 5);

    let m = scrape(&hub).await;
    assert_eq!(value(&m, "herald_updates_published_total"), 5.0);
    assert_eq!(value(&m, "herald_updates_delivered_total"), 10.0);
    assert_eq!(value(&m, "herald_updates_replayed_total"), 5.0);
    assert_eq!(value(&m, "herald_connections"), 3.0);
    assert_eq!(value(&m, "herald_connections_total"), 3.0);
    assert_eq!(value(&m, "herald_subscriptions"), 4.0);
    assert_eq!(
        value(&m, "herald_engine_append_duration_seconds_count"),
        5.0
    );
    assert_eq!(value(&m, "herald_publish_duration_seconds_count"), 5.0);
    assert!(
        m.contains(r#"herald_authorization_failures_total{action="publish",reason="missing"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(
            r#"herald_authorization_failures_total{action="subscribe",reason="invalid_token"} 1"#
        ),
        "{m}"
    );
    assert_eq!(value(&m, "herald_slow_subscriber_disconnects_total"), 0.0);

    drop((a, b, r));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = scrape(&hub).await;
    assert_eq!(value(&m, "herald_connections"), 0.0);
    assert_eq!(value(&m, "herald_subscriptions"), 0.0);
}

#[tokio::test]
async fn metrics_access_settings() {
    let off = TestHub::start(HubConfig {
        metrics: MetricsAccess::Off,
        ..config()
    })
    .await;
    assert_eq!(
        client()
            .get(off.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let tok = TestHub::start(HubConfig {
        metrics: MetricsAccess::Token("s3cret".into()),
        ..config()
    })
    .await;
    assert_eq!(
        client()
            .get(tok.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = client()
        .get(tok.url("/metrics"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn readyz_answers_when_the_engine_does() {
    let hub = TestHub::start(config()).await;
    let r = client().get(hub.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready\n");
}

#[tokio::test]
async fn stats_stream_needs_a_token_outside_dev_mode() {
    let hub = TestHub::start(config()).await;
    let s = Subscription::open_path(&hub, "/.well-known/herald/stats", &[], &[]).await;
    assert_eq!(s.status, 401);
    let t = publisher_token();
    let mut s = Subscription::open_path(
        &hub,
        "/.well-known/herald/stats",
        &[("authorization", &t)],
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    let first = s.next_event(LONG).await.unwrap();
    assert_eq!(first.event, "history");
    let next = s.next_event(Duration::from_secs(3)).await.unwrap();
    assert_eq!(next.event, "stats");
    let v: serde_json::Value = serde_json::from_str(&next.data).unwrap();
    assert_eq!(v["engine"], "memory");
    assert!(v["connections"].as_i64().is_some());

    let dev = TestHub::start(HubConfig {
        dev_mode: true,
        ..config()
    })
    .await;
    let s = Subscription::open_path(&dev, "/.well-known/herald/stats", &[], &[]).await;
    assert_eq!(s.status, 200);
}
