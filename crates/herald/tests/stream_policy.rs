//! One stream policy on every path: the same behaviour test runs against
//! each way an event stream reaches a client:
//!
//! - `Parked`: `herald::serve`'s HTTP/1.1 fast path, the stream parked once
//!   it waits (the default);
//! - `Task`: the same fast path with parking off, the stream keeping its
//!   task;
//! - `Hyper`: `herald::serve` handing the request to hyper and the router
//!   (a `QUERY` subscription);
//! - `Embedded`: an axum app that mounts `herald::http::router` and is
//!   served by `axum::serve`, as the README's embedding example does.
//!
//! Each checks the headers, CORS, the first flush, heartbeats, delivery,
//! token expiry, error bodies, stray bytes and a client that goes away.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herald::auth::{sign, Claims, KeyConfig, MercureClaim};
use herald::engine::memory::MemoryEngine;
use herald::HubConfig;
use herald_protocol::sse::Item;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Parked,
    Task,
    Hyper,
    Embedded,
}

const PATHS: [Path; 4] = [Path::Parked, Path::Task, Path::Hyper, Path::Embedded];

const ORIGIN: &str = "https://app.example.com";

async fn start(path: Path, config: HubConfig) -> TestHub {
    let engine = Arc::new(MemoryEngine::new(1000));
    TestHub::start_serving(config, engine, move |listener, hub, stop| match path {
        Path::Parked | Path::Hyper => Box::pin(herald::serve(listener, hub, stop)),
        Path::Task => Box::pin(
            herald::Server::new(hub)
                .parking(false)
                .serve(listener, stop),
        ),
        Path::Embedded => Box::pin(async move {
            let app = axum::Router::new().merge(herald::http::router(hub.clone()));
            // Closing the hub ends its streams, so axum's graceful
            // shutdown, which waits for every response, can finish.
            let closing = hub.clone();
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    stop.await;
                    let _ = closing.close().await;
                })
                .await
                .map_err(anyhow::Error::from)
        }),
    })
    .await
}

fn policy_config() -> HubConfig {
    HubConfig {
        cors_origins: vec![ORIGIN.to_owned()],
        heartbeat: Duration::from_millis(400),
        ..config()
    }
}

/// The subscription request `path` receives: `GET` with a query string, or
/// (hyper) `QUERY` with the same pairs as a form body.
fn request(
    path: Path,
    hub: &TestHub,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let c = reqwest::Client::new();
    let mut req = if path == Path::Hyper {
        c.request(
            reqwest::Method::from_bytes(b"QUERY").unwrap(),
            hub.hub_url(),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(query).unwrap())
    } else {
        c.get(hub.hub_url()).query(query)
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req
}

/// Opens a subscription the way `path` receives it.
async fn open(
    path: Path,
    hub: &TestHub,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Subscription {
    Subscription::from_response(request(path, hub, query, headers).send().await.unwrap())
}

/// The raw request that opens a subscription to `topic` on `path`.
fn raw_request(path: Path, topic: &str) -> String {
    if path == Path::Hyper {
        let body = format!("topic={topic}");
        format!(
            "QUERY /.well-known/mercure HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        format!("GET /.well-known/mercure?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n")
    }
}

#[tokio::test]
async fn headers_cors_first_flush_heartbeats_and_delivery() {
    for path in PATHS {
        let hub = start(path, policy_config()).await;
        let mut s = open(path, &hub, &[("topic", "t")], &[("origin", ORIGIN)]).await;
        assert_eq!(s.status, 200, "{path:?}");
        let h = &s.headers;
        assert_eq!(h["content-type"], "text/event-stream", "{path:?}");
        assert_eq!(h["cache-control"], "no-cache", "{path:?}");
        assert_eq!(h["x-accel-buffering"], "no", "{path:?}");
        assert_eq!(
            h["accept-query"], "application/x-www-form-urlencoded",
            "{path:?}"
        );
        // The fast path closes the connection when the stream ends, and
        // says so; hyper's keeps it for the next request.
        if matches!(path, Path::Parked | Path::Task) {
            assert_eq!(h["connection"], "close", "{path:?}");
        }
        assert_eq!(h["access-control-allow-origin"], ORIGIN, "{path:?}");
        assert_eq!(h["access-control-allow-credentials"], "true", "{path:?}");
        assert!(
            h["access-control-expose-headers"]
                .to_str()
                .unwrap()
                .contains("last-event-id"),
            "{path:?}"
        );
        // The first flush: a comment, at once.
        assert_eq!(
            s.next_item(LONG).await,
            Some(Item::Comment(String::new())),
            "{path:?}"
        );
        // Idle: a heartbeat comment within the heartbeat period.
        let started = std::time::Instant::now();
        assert_eq!(
            s.next_item(LONG).await,
            Some(Item::Comment(String::new())),
            "{path:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{path:?}: {:?}",
            started.elapsed()
        );
        // Parked or not, as the path says.
        let parked = if path == Path::Parked { 1 } else { 0 };
        assert_eq!(parked_gauge(&hub).await, parked, "{path:?}");

        let c = client();
        let id = publish_ok(&c, &hub, &[("topic", "t"), ("data", "hello")]).await;
        let e = s
            .next_event(LONG)
            .await
            .unwrap_or_else(|| panic!("{path:?}: no event"));
        assert_eq!(
            (e.id.as_str(), e.data.as_str()),
            (id.as_str(), "hello"),
            "{path:?}"
        );

        // Resuming names the resume point in the revision's header.
        let r = open(path, &hub, &[("topic", "t"), ("lastEventID", &id)], &[]).await;
        assert_eq!(r.headers["last-event-id"], id.as_str(), "{path:?}");
        hub.stop().await.unwrap();
    }
}

#[tokio::test]
async fn retry_is_the_first_flush_when_configured() {
    for path in PATHS {
        let hub = start(
            path,
            HubConfig {
                retry: Some(1500),
                ..config()
            },
        )
        .await;
        let mut s = open(path, &hub, &[("topic", "t")], &[]).await;
        let publish = async {
            tokio::time::sleep(SHORT).await;
            publish_ok(&client(), &hub, &[("topic", "t"), ("data", "x")]).await
        };
        let (first, _) = tokio::join!(s.next_event(LONG), publish);
        let first = first.unwrap_or_else(|| panic!("{path:?}: no event"));
        // The stream opened with `retry:` (the update carries none of its
        // own): the parser holds it when the first event arrives.
        assert_eq!(first.data, "x", "{path:?}");
        assert_eq!(first.retry, Some(1500), "{path:?}");
        hub.stop().await.unwrap();
    }
}

#[tokio::test]
async fn an_expiring_token_ends_the_stream_on_time() {
    for path in PATHS {
        let hub = start(path, config()).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = Claims {
            mercure: MercureClaim {
                subscribe: Some(vec!["*".into()]),
                ..MercureClaim::default()
            },
            exp: Some(now + 2),
            ..Claims::default()
        };
        let token = sign(&claims, &KeyConfig::hmac(SUB_KEY)).unwrap();
        let auth = format!("Bearer {token}");
        let mut s = open(path, &hub, &[("topic", "t")], &[("authorization", &auth)]).await;
        assert_eq!(s.status, 200, "{path:?}");
        let started = std::time::Instant::now();
        assert!(
            s.wait_end(Duration::from_secs(6)).await,
            "{path:?}: still open"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{path:?}: ended at once"
        );
        hub.stop().await.unwrap();
    }
}

#[tokio::test]
async fn errors_have_the_same_status_headers_and_body() {
    for path in PATHS {
        let hub = start(
            path,
            HubConfig {
                anonymous: false,
                ..policy_config()
            },
        )
        .await;
        let res = request(path, &hub, &[("nothing", "x")], &[("origin", ORIGIN)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{path:?}");
        let h = res.headers();
        assert_eq!(h["content-type"], "text/plain; charset=utf-8", "{path:?}");
        assert_eq!(h["access-control-allow-origin"], ORIGIN, "{path:?}");
        assert_eq!(
            res.text().await.unwrap(),
            "missing match (or draft-07 topic) parameter\n",
            "{path:?}"
        );

        let s = open(path, &hub, &[("topic", "t")], &[]).await;
        assert_eq!(s.status, 401, "{path:?}");
        let challenge = s.headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer resource_metadata="),
            "{path:?}: {challenge}"
        );
        hub.stop().await.unwrap();
    }
}

#[tokio::test]
async fn stray_bytes_are_dropped_and_a_client_that_leaves_is_forgotten() {
    for path in PATHS {
        let hub = start(
            path,
            HubConfig {
                heartbeat: Duration::from_secs(3600),
                ..config()
            },
        )
        .await;
        let c = client();
        let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
        tcp.write_all(raw_request(path, "t").as_bytes())
            .await
            .unwrap();
        let head = read_until(&mut tcp, ":\n\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{path:?}: {head}");
        tokio::time::sleep(SHORT).await;

        tcp.write_all(b"stray bytes\r\n").await.unwrap();
        tokio::time::sleep(SHORT).await;
        publish_ok(&c, &hub, &[("topic", "t"), ("data", "after-stray")]).await;
        read_until(&mut tcp, "data:after-stray\n").await;
        assert_eq!(hub.hub.index().len(), 1, "{path:?}");

        drop(tcp);
        // The fast path's watcher notices at once; hyper, which does not
        // read while it streams a response, when a write fails (the
        // kernel reports the reset on the write after the first one the
        // closed peer refused): keep publishing until it has.
        let deadline = tokio::time::Instant::now() + LONG;
        while !hub.hub.index().is_empty() && tokio::time::Instant::now() < deadline {
            publish_ok(&c, &hub, &[("topic", "t"), ("data", "to-nobody")]).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(hub.hub.index().len(), 0, "{path:?}: subscriber kept");
        hub.stop().await.unwrap();
    }
}
