//! Webhooks against a real HTTP application: `connect`, `subscribe` and
//! `disconnect` arrive signed and in order, a failing endpoint is retried,
//! and an endpoint that hangs never slows delivery.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{client, config, publish_ok, Subscription, TestHub};

#[derive(Default)]
struct App {
    /// Requests received: the signature header and the body.
    got: Mutex<Vec<(String, serde_json::Value)>>,
    /// Answer 500 to this many requests first.
    fail_first: Mutex<usize>,
    /// Hang this long before answering.
    hang: Duration,
}

async fn start_app(app: Arc<App>) -> String {
    let router = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let app = app.clone();
            async move {
                tokio::time::sleep(app.hang).await;
                {
                    let mut fail = app.fail_first.lock().unwrap();
                    if *fail > 0 {
                        *fail -= 1;
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                }
                let sig = headers
                    .get("herald-signature")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                // The signature covers the body as sent.
                let t: u64 = sig
                    .strip_prefix("t=")
                    .and_then(|s| s.split(',').next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                assert_eq!(
                    sig,
                    herald::hub::webhooks::signature("s3cret", t, body.as_bytes())
                );
                app.got.lock().unwrap().push((sig, v));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_subscribe_and_disconnect_arrive_signed_and_retried() {
    let app = Arc::new(App {
        fail_first: Mutex::new(2),
        ..App::default()
    });
    let url = start_app(app.clone()).await;
    let mut cfg = config();
    cfg.anonymous = true;
    cfg.webhook_url = Some(url.parse().unwrap());
    cfg.webhook_secret = Some("s3cret".into());
    let hub = TestHub::start(cfg).await;
    let s = Subscription::topics(&hub, &["https://example.com/a", "b"]).await;
    let kinds = |app: &App| -> Vec<String> {
        app.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v["type"].as_str().unwrap().to_owned())
            .collect()
    };
    // The first event is answered 500 twice, then taken (backoff 100 ms,
    // then 200 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    while kinds(&app).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kinds(&app), ["connect", "subscribe", "subscribe"]);
    {
        let got = app.got.lock().unwrap();
        let connect = &got[0].1;
        assert_eq!(
            connect["topics"],
            serde_json::json!(["https://example.com/a", "b"])
        );
        assert_eq!(connect["address"], "127.0.0.1");
        assert_eq!(
            got[1].1["topics"],
            serde_json::json!(["https://example.com/a"])
        );
        assert_eq!(got[2].1["topics"], serde_json::json!(["b"]));
        assert_eq!(connect["subscriber"], got[2].1["subscriber"]);
    }
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while kinds(&app).len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kinds(&app)[3], "disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_never_slows_delivery() {
    let app = Arc::new(App {
        hang: Duration::from_secs(30),
        ..App::default()
    });
    let url = start_app(app).await;
    let mut cfg = config();
    cfg.anonymous = true;
    cfg.webhook_url = Some(url.parse().unwrap());
    let hub = TestHub::start(cfg).await;
    let http = client();
    let mut subs = Vec::new();
    for _ in 0..20 {
        subs.push(Subscription::topics(&hub, &["a"]).await);
    }
    let started = Instant::now();
    let id = publish_ok(&http, &hub, &[("topic", "a"), ("data", "x")]).await;
    for s in &mut subs {
        assert_eq!(s.next_event(Duration::from_secs(2)).await.unwrap().id, id);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "delivery waited for the webhook endpoint: {:?}",
        started.elapsed()
    );
}
