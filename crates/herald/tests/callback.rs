//! The authorization callback against a real HTTP application: a request
//! without a token is decided by the app, from the cookies herald passes
//! on; its answer (token claims) grants private updates and publishing,
//! a refusal is `403`, answers are cached, and a failing app is handled by
//! the failure policy.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Json;
use common::{client, config, publish_ok, Subscription, TestHub};
use herald::auth::callback::{CallbackConfig, CallbackFailure};

async fn start_app(calls: Arc<AtomicUsize>) -> url::Url {
    let router = axum::Router::new().route(
        "/auth",
        post(
            move |headers: HeaderMap, Json(body): Json<serde_json::Value>| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    assert!(headers.get("x-not-forwarded").is_none());
                    assert!(body["action"] == "subscribe" || body["action"] == "publish");
                    let cookie = headers
                        .get("cookie")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    let user = cookie.strip_prefix("session=").unwrap_or("");
                    match user {
                        "" => (StatusCode::UNAUTHORIZED, Json(serde_json::json!({}))),
                        "mallory" => (StatusCode::FORBIDDEN, Json(serde_json::json!({}))),
                        "down" => (StatusCode::BAD_GATEWAY, Json(serde_json::json!({}))),
                        user => {
                            let mine = format!("https://example.com/users/{user}/{{x}}");
                            (
                                StatusCode::OK,
                                Json(serde_json::json!({
                                    "mercure": {"subscribe": [mine], "publish": [mine]}
                                })),
                            )
                        }
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/auth").parse().unwrap()
}

fn callback(url: url::Url, failure: CallbackFailure) -> CallbackConfig {
    CallbackConfig {
        url,
        forward: vec!["cookie".into()],
        cache: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
        failure,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_decides_for_requests_without_a_token() {
    let calls = Arc::new(AtomicUsize::new(0));
    let url = start_app(calls.clone()).await;
    let mut cfg = config();
    cfg.auth_callback = Some(callback(url, CallbackFailure::Deny));
    cfg.publish_origins = vec!["https://app.example.com".into()];
    let hub = TestHub::start(cfg).await;
    let http = client();
    let inbox = "https://example.com/users/alice/inbox";
    let alice = [("Cookie", "session=alice"), ("X-Not-Forwarded", "1")];

    // Alice subscribes with her session cookie and gets her private
    // updates.
    let mut s = Subscription::open(&hub, &[("topic", inbox)], &alice).await;
    assert_eq!(s.status, 200);
    let id = publish_ok(
        &http,
        &hub,
        &[("topic", inbox), ("data", "hi"), ("private", "on")],
    )
    .await;
    assert_eq!(s.next_event(Duration::from_secs(2)).await.unwrap().id, id);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The same question again within the cache's time: not asked again.
    let again = Subscription::open(&hub, &[("topic", inbox)], &alice).await;
    assert_eq!(again.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Refused by the app: 403. No cookie: the app says 401, herald 403 too
    // (it is the app's refusal).
    let mallory =
        Subscription::open(&hub, &[("topic", inbox)], &[("Cookie", "session=mallory")]).await;
    assert_eq!(mallory.status, 403);
    let nobody = Subscription::open(&hub, &[("topic", inbox)], &[]).await;
    assert_eq!(nobody.status, 403);

    // Publishing without a token: on her topics only, and (decided on
    // cookies) from an allowed origin only.
    let post = |topic: &str, origin: &str| {
        http.post(hub.hub_url())
            .header("Cookie", "session=alice")
            .header("Origin", origin)
            .form(&[("topic", topic), ("data", "from alice")])
            .send()
    };
    let app = "https://app.example.com";
    let outbox = "https://example.com/users/alice/outbox";
    assert_eq!(post(outbox, app).await.unwrap().status(), 200);
    assert_eq!(
        post("https://example.com/users/bob/inbox", app)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post(outbox, "https://evil.example").await.unwrap().status(),
        403
    );

    // The app fails: `deny` answers 503 with Retry-After.
    let down = Subscription::open(&hub, &[("topic", inbox)], &[("Cookie", "session=down")]).await;
    assert_eq!(down.status, 503);
    assert_eq!(down.headers["retry-after"], "1");

    // A token still works as ever, without asking the app.
    let before = calls.load(Ordering::SeqCst);
    let t = common::token(common::SUB_KEY, None, Some(&["*"]));
    let with_token = Subscription::open(
        &hub,
        &[("topic", inbox)],
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(with_token.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_application_can_mean_anonymous() {
    let calls = Arc::new(AtomicUsize::new(0));
    let url = start_app(calls).await;
    let mut cfg = config();
    cfg.auth_callback = Some(callback(url, CallbackFailure::Anonymous));
    cfg.publish_origins = vec!["*".into()];
    let hub = TestHub::start(cfg).await;
    let http = client();
    let inbox = "https://example.com/users/alice/inbox";
    let mut s = Subscription::open(&hub, &[("topic", inbox)], &[("Cookie", "session=down")]).await;
    assert_eq!(s.status, 200);
    // Public updates only.
    publish_ok(
        &http,
        &hub,
        &[("topic", inbox), ("data", "secret"), ("private", "on")],
    )
    .await;
    let public = publish_ok(&http, &hub, &[("topic", inbox), ("data", "public")]).await;
    let e = s.next_event(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        (e.id.as_str(), e.data.as_str()),
        (public.as_str(), "public")
    );
    // Publishing without credentials stays refused.
    let res = http
        .post(hub.hub_url())
        .header("Cookie", "session=down")
        .header("Origin", "https://app.example.com")
        .form(&[("topic", inbox), ("data", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}
