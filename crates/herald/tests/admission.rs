//! Admission: a hub at its limits still answers.
//!
//! 60 clients each send half a request head and stall (slowloris) against
//! a hub whose limit is 50 event streams; then 50 subscribers fill that
//! limit. The hub still answers `/healthz` and a publish at once, refuses
//! the 51st subscriber with `503` and `Retry-After` (never leaving it
//! waiting) on a new connection and on one kept alive from another
//! request, counts them in `/metrics`, and delivers to the 50.

mod common;

use std::time::{Duration, Instant};

use common::{client, config, publish_ok, Subscription, TestHub};
use tokio::io::AsyncWriteExt;

/// The longest an answer may take here. The point is "answered, not
/// stuck": before this change these requests were never answered.
const PROMPT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hub_answers_probes_publishers_and_refused_subscribers() {
    let mut cfg = config();
    cfg.max_connections = 50;
    cfg.anonymous = true;
    let hub = TestHub::start(cfg).await;
    let http = client();

    let mut stalled = Vec::new();
    for _ in 0..60 {
        let mut s = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
        s.write_all(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    let started = Instant::now();
    let health = tokio::time::timeout(PROMPT, http.get(hub.url("/healthz")).send())
        .await
        .expect("/healthz answered while heads stall")
        .unwrap();
    assert_eq!(health.status(), 200);
    eprintln!(
        "healthz answered in {:?} with 60 stalled heads",
        started.elapsed()
    );

    let mut subs = Vec::new();
    for _ in 0..50 {
        subs.push(Subscription::topics(&hub, &["a"]).await);
    }
    // The 51st subscriber: refused at once, told when to come back.
    let started = Instant::now();
    let refused = tokio::time::timeout(
        PROMPT,
        http.get(hub.hub_url()).query(&[("topic", "a")]).send(),
    )
    .await
    .expect("the 51st subscriber is answered")
    .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("limit of event streams"));
    eprintln!("51st subscriber refused in {:?}", started.elapsed());
    // The same on a new connection (the request above went over the
    // connection `/healthz` kept alive, to hyper and the router; a new one
    // is served on the fast path).
    let fresh = Subscription::open(&hub, &[("topic", "a")], &[]).await;
    assert_eq!(fresh.status, 503);
    assert_eq!(fresh.headers["retry-after"], "1");

    // Probes and publishers get through while subscribers are at their
    // limit.
    let started = Instant::now();
    let health = tokio::time::timeout(PROMPT, http.get(hub.url("/healthz")).send())
        .await
        .expect("/healthz answered at the stream limit")
        .unwrap();
    assert_eq!(health.status(), 200);
    let id = tokio::time::timeout(
        PROMPT,
        publish_ok(&http, &hub, &[("topic", "a"), ("data", "still here")]),
    )
    .await
    .expect("a publish answered at the stream limit");
    eprintln!(
        "healthz and a publish answered in {:?} at the limit",
        started.elapsed()
    );
    for s in &mut subs {
        let e = s
            .next_event(Duration::from_secs(5))
            .await
            .expect("delivered");
        assert_eq!(
            (e.id.as_str(), e.data.as_str()),
            (id.as_str(), "still here")
        );
    }
    let metrics = http
        .get(hub.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_connections_refused_total{kind=\"streams\"} 2")),
        "{metrics}"
    );
    // A stream that ends frees its place.
    drop(subs.pop());
    let mut back = None;
    for _ in 0..50 {
        let res = http
            .get(hub.hub_url())
            .query(&[("topic", "a")])
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            back = Some(res);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back.is_some(), "a freed place is taken again");
    drop(stalled);
}
