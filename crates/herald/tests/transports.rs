//! HTTP/2 and TLS, with real clients (reqwest over hyper's HTTP/2).
//!
//! - A plain listener takes HTTP/2 with prior knowledge (h2c): 300 event
//!   streams and a publish share one TCP connection, and every stream
//!   gets the update.
//! - A TLS listener offers `h2` and `http/1.1` by ALPN: an HTTP/2 client
//!   and an HTTP/1.1 client both subscribe, publish and resume.
//! - A new certificate written over the files is served to new
//!   connections within seconds, while a stream opened before keeps
//!   receiving; a broken one is refused and the current one kept.
//! - Shutdown ends HTTP/2 streams promptly (`GOAWAY`, then each stream's
//!   end).
//! - HTTP/2 streams take places in `max_connections` one by one (`503`
//!   past it, the others on the connection unharmed) and get heartbeats,
//!   parked or keeping their tasks.
//! - 199 streams requested at once on one connection all open, and a
//!   900 KiB request body on that connection arrives whole.
//! - A reqwest client 2,000 updates behind keeps its HTTP/2 connection
//!   and gets them all.
//! - Waiting HTTP/2 streams are parked; one whose client reads nothing
//!   (the h2 crate as client, with a small window) is reset once its
//!   queue overflows while the stream beside it on the same connection
//!   gets every update, and one the client resets gives its place back.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{config, publisher_token, tls_client, value, Subscription, TestHub};
use herald::engine::memory::MemoryEngine;
use herald::transport::tls::{Tls, TlsConfig};
use herald::Server;

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (cert.cert.pem(), cert.key_pair.serialize_pem())
}

fn write_pair(dir: &Path, (cert, key): &(String, String)) -> TlsConfig {
    let cfg = TlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&cfg.key, key).unwrap();
    std::fs::write(&cfg.cert, cert).unwrap();
    cfg
}

fn tls_url(hub: &TestHub, path: &str) -> String {
    format!("https://localhost:{}{path}", hub.addr.port())
}

async fn start_tls(tls: TlsConfig) -> TestHub {
    let tls = Tls::new(tls).unwrap();
    TestHub::start_serving(
        config(),
        std::sync::Arc::new(MemoryEngine::new(1000)),
        move |listener, hub, stop| Box::pin(Server::new(hub).tls(tls).serve(listener, stop)),
    )
    .await
}

async fn publish(c: &reqwest::Client, url: &str, data: &str) -> String {
    let res = c
        .post(url)
        .bearer_auth(publisher_token())
        .form(&[("topic", "https://t"), ("data", data)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

async fn subscribe(c: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Subscription {
    let mut req = c.get(url).query(&[("topic", "https://t")]);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    Subscription::from_response(res)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_carries_hundreds_of_streams_on_one_connection() {
    let hub = TestHub::start(config()).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let mut subs = Vec::new();
    for _ in 0..300 {
        let res = h2
            .get(hub.hub_url())
            .query(&[("topic", "https://t")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        subs.push(Subscription::from_response(res));
    }
    publish(&h2, &hub.hub_url(), "to all 300").await;
    every_one_gets(&mut subs, "to all 300").await;
    let metrics = one_h2c_connection(&hub).await;
    assert_eq!(value(&metrics, "herald_connections"), 300.0);
    // Waiting, they are parked: no task each.
    let parked = wait_metric(&hub, "herald_parked_streams", 300.0).await;
    assert_eq!(parked, 300.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_at_once_and_a_large_body_share_one_connection() {
    let hub = TestHub::start(config()).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let open = |topic: &'static str| {
        let req = h2.get(hub.hub_url()).query(&[("topic", topic)]);
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200);
            Subscription::from_response(res)
        }
    };
    // One stream opens the connection; 199 more are sent at once, their
    // requests read by the hub a few at a time.
    let mut big = open("https://big").await;
    let mut subs = futures_util::future::join_all((0..199).map(|_| open("https://t"))).await;
    assert_eq!(
        wait_metric(&hub, "herald_parked_streams", 200.0).await,
        200.0
    );

    // A body of 900 KiB on the same connection, read in growing bites.
    let data = "0123456789abcdef".repeat(900 * 64);
    let res = h2
        .post(hub.hub_url())
        .bearer_auth(publisher_token())
        .form(&[("topic", "https://big"), ("data", data.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let e = big
        .next_event(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(e.data.len(), data.len());
    assert!(e.data == data, "the large update arrived whole");

    publish(&h2, &hub.hub_url(), "to the 199").await;
    every_one_gets(&mut subs, "to the 199").await;
    one_h2c_connection(&hub).await;
}

/// Each subscription's next event is `data`.
async fn every_one_gets(subs: &mut [Subscription], data: &str) {
    for s in subs {
        let e = s
            .next_event(Duration::from_secs(10))
            .await
            .expect("an event");
        assert_eq!(e.data, data);
    }
}

/// Checks that the hub took exactly one h2c connection; its metrics.
async fn one_h2c_connection(hub: &TestHub) -> String {
    let metrics = common::scrape(hub).await;
    assert_eq!(
        value(
            &metrics,
            r#"herald_transport_connections_total{protocol="h2c"}"#
        ),
        1.0,
        "{metrics}"
    );
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reqwest_client_that_lags_keeps_its_http2_connection() {
    // h2 closes a connection (ENHANCE_YOUR_CALM) on which too many small
    // DATA frames wait unread, and each update is one; with the defaults
    // of hyper's HTTP/2 client (reqwest), a service that falls 2,000
    // updates behind keeps its connection and gets every update.
    let mut cfg = config();
    cfg.queue_frames = 10_000;
    let hub = TestHub::start(cfg).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let res = h2
        .get(hub.hub_url())
        .query(&[("topic", "https://t")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let mut sub = Subscription::from_response(res);
    let publisher = reqwest::Client::new();
    for n in 0..2000 {
        publish(&publisher, &hub.hub_url(), &format!("update {n}")).await;
    }
    for n in 0..2000 {
        let e = sub
            .next_event(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("update {n} did not arrive"));
        assert_eq!(e.data, format!("update {n}"));
    }
    let metrics = common::scrape(&hub).await;
    assert_eq!(value(&metrics, "herald_connections"), 1.0, "{metrics}");
}

/// Polls the hub's metrics until `name` reads `want` (within 5 s); the
/// last value read.
async fn wait_metric(hub: &TestHub, name: &str, want: f64) -> f64 {
    let started = Instant::now();
    loop {
        let v = value(&common::scrape(hub).await, name);
        if v == want || started.elapsed() > Duration::from_secs(5) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An event stream opened with the h2 crate on `client`.
async fn h2_stream(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    hub: &TestHub,
) -> h2::RecvStream {
    let req = http::Request::get(format!(
        "http://{}/.well-known/mercure?topic=https://t",
        hub.addr
    ))
    .body(())
    .unwrap();
    let ready = client.clone().ready().await.unwrap();
    *client = ready;
    let (res, _) = client.send_request(req, true).unwrap();
    let res = res.await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body()
}

/// Reads a stream until what it read (in `text`) holds `n` events (`data`
/// lines), giving the window back as it reads; the events read.
async fn read_events(body: &mut h2::RecvStream, text: &mut String, n: usize) -> usize {
    while text.matches("\ndata:").count() < n {
        let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(10), body.data()).await
        else {
            break;
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.matches("\ndata:").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_not_read_ends_alone() {
    let mut cfg = config();
    cfg.queue_frames = 32;
    let hub = TestHub::start(cfg).await;
    let tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let (mut client, conn) = h2::client::Builder::new()
        .initial_window_size(4096)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut stalled = h2_stream(&mut client, &hub).await;
    let mut reader = h2_stream(&mut client, &hub).await;
    assert_eq!(wait_metric(&hub, "herald_parked_streams", 2.0).await, 2.0);

    // 100 updates of 1 KiB (25 times the window of the stream not read,
    // three times its queue), each read by the other stream before the
    // next is published.
    let c = reqwest::Client::new();
    let data = "x".repeat(1024);
    let mut text = String::new();
    for n in 1..=100 {
        publish(&c, &hub.hub_url(), &data).await;
        assert_eq!(
            read_events(&mut reader, &mut text, n).await,
            n,
            "the stream read got every update"
        );
    }
    // The other one was reset once its queue overflowed: what the window
    // let through, then the reset.
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.data()).await {
            Ok(Some(Ok(chunk))) => {
                let _ = stalled.flow_control().release_capacity(chunk.len());
            }
            Ok(other) => break other.map(|r| r.map(|_| ())),
            Err(_) => panic!("the stream not read was not ended"),
        }
    };
    let reason = end.and_then(Result::err).and_then(|e| e.reason());
    assert_eq!(reason, Some(h2::Reason::CANCEL), "{reason:?}");
    assert_eq!(wait_metric(&hub, "herald_connections", 1.0).await, 1.0);

    // A parked stream its client resets gives its place back.
    drop(reader);
    assert_eq!(wait_metric(&hub, "herald_connections", 0.0).await, 0.0);
    assert_eq!(wait_metric(&hub, "herald_parked_streams", 0.0).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_offers_h2_and_http1_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = certificate();
    let cfg = write_pair(dir.path(), &first);
    let hub = start_tls(cfg.clone()).await;
    let url = tls_url(&hub, "/.well-known/mercure");

    // HTTP/2 by ALPN: subscribe, publish, resume.
    let h2 = tls_client(&hub, &first.0, false);
    let health = h2.get(tls_url(&hub, "/healthz")).send().await.unwrap();
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    let mut live = subscribe(&h2, &url, None).await;
    let one = publish(&h2, &url, "one").await;
    assert_eq!(
        live.next_event(Duration::from_secs(5)).await.unwrap().data,
        "one"
    );
    // HTTP/1.1 by ALPN, on the same port.
    let h1 = tls_client(&hub, &first.0, true);
    let res = h1.get(tls_url(&hub, "/healthz")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    let mut h1_sub = subscribe(&h1, &url, Some(&one)).await;
    publish(&h1, &url, "two").await;
    assert_eq!(
        h1_sub
            .next_event(Duration::from_secs(5))
            .await
            .unwrap()
            .data,
        "two"
    );
    assert_eq!(
        live.next_event(Duration::from_secs(5)).await.unwrap().data,
        "two"
    );
    let mut resumed = subscribe(&h2, &url, Some(&one)).await;
    assert_eq!(
        resumed
            .next_event(Duration::from_secs(5))
            .await
            .unwrap()
            .data,
        "two"
    );

    // A new certificate on disk: new connections get it within seconds.
    let second = certificate();
    write_pair(dir.path(), &second);
    let started = Instant::now();
    loop {
        let fresh = tls_client(&hub, &second.0, false);
        if fresh.get(tls_url(&hub, "/healthz")).send().await.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("new certificate served after {:?}", started.elapsed());
    // A client trusting only the first one no longer connects...
    let stale = tls_client(&hub, &first.0, false);
    assert!(stale.get(tls_url(&hub, "/healthz")).send().await.is_err());
    // ...while the stream opened before goes on.
    let fresh = tls_client(&hub, &second.0, false);
    publish(&fresh, &url, "three").await;
    assert_eq!(
        live.next_event(Duration::from_secs(5)).await.unwrap().data,
        "three"
    );

    // A broken certificate is refused: the current one stays.
    std::fs::write(&cfg.cert, "not a certificate").unwrap();
    tokio::time::sleep(herald::transport::tls::RELOAD_CHECK * 2).await;
    let fresh = tls_client(&hub, &second.0, false);
    let res = fresh.get(tls_url(&hub, "/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // Shutdown ends the HTTP/2 streams at once.
    let started = Instant::now();
    hub.stop().await.unwrap();
    assert!(
        live.wait_end(Duration::from_secs(5)).await,
        "the stream was not ended"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_certificate_that_does_not_load_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = certificate();
    let (_, other_key) = certificate();
    let cfg = write_pair(dir.path(), &(cert, other_key));
    let e = Tls::new(cfg).unwrap_err().to_string();
    assert!(e.contains("do not go together"), "{e}");
    let missing = TlsConfig {
        cert: dir.path().join("nope.pem"),
        key: dir.path().join("key.pem"),
    };
    let e = Tls::new(missing).unwrap_err().to_string();
    assert!(e.contains("cannot read the certificate"), "{e}");
}

/// Over HTTP/2 the limits and heartbeats are those of HTTP/1.1: each
/// stream takes a place in `max_connections` (the one past it is answered
/// `503` with `Retry-After` while the others on the same connection go
/// on), and an idle stream gets heartbeat comments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_have_the_same_limits_and_heartbeats() {
    limits_and_heartbeats(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_keeping_their_tasks_have_the_same_limits_and_heartbeats() {
    limits_and_heartbeats(false).await;
}

async fn limits_and_heartbeats(parking: bool) {
    let mut cfg = config();
    cfg.max_connections = 5;
    cfg.heartbeat = Duration::from_millis(300);
    let hub = TestHub::start_serving(
        cfg,
        std::sync::Arc::new(MemoryEngine::new(1000)),
        move |listener, hub, stop| {
            Box::pin(Server::new(hub).parking(parking).serve(listener, stop))
        },
    )
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let mut subs = Vec::new();
    for _ in 0..5 {
        subs.push(subscribe(&h2, &hub.hub_url(), None).await);
    }
    let refused = h2
        .get(hub.hub_url())
        .query(&[("topic", "https://t")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    // The five go on: after the opening comment (the first flush), a
    // heartbeat, then an update.
    let opening = subs[0].next_item(Duration::from_secs(3)).await;
    assert!(
        matches!(opening, Some(herald_protocol::sse::Item::Comment(_))),
        "{opening:?}"
    );
    let started = std::time::Instant::now();
    let beat = subs[0].next_item(Duration::from_secs(3)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "not a heartbeat: {beat:?}"
    );
    assert!(
        matches!(beat, Some(herald_protocol::sse::Item::Comment(_))),
        "{beat:?}"
    );
    publish(&h2, &hub.hub_url(), "still here").await;
    for s in &mut subs {
        assert_eq!(
            s.next_event(Duration::from_secs(5)).await.unwrap().data,
            "still here"
        );
    }
    // A stream that ends gives its place back.
    drop(subs.pop());
    let mut again = 0;
    for _ in 0..50 {
        let res = h2
            .get(hub.hub_url())
            .query(&[("topic", "https://t")])
            .send()
            .await
            .unwrap();
        again = res.status().as_u16();
        if again == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, 200);
}
