//! HTTP/3, with a real client (h3 over quinn) on real UDP, on loopback.
//!
//! - A hub with TLS serves HTTP/3 on its port: a client subscribes,
//!   publishes and resumes with `Last-Event-ID` over QUIC alone, and gets
//!   exactly the updates it missed.
//! - Responses over TLS (HTTP/2 and HTTP/1.1) carry `Alt-Svc` naming the
//!   port; with HTTP/3 turned off, or without TLS, there is none and no
//!   QUIC endpoint.
//! - A QUIC connection takes a place in the pool of non-stream
//!   connections: past `max_connections` its requests get `503`.
//! - Shutdown with an open HTTP/3 event stream ends it and returns.
//! - A reloaded certificate serves QUIC handshakes too.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::{
    config, publisher_token, tls_client, value, BodyError, Subscription, TestHub, LONG, SHORT,
};
use futures_util::StreamExt;
use herald::engine::memory::MemoryEngine;
use herald::transport::tls::{Tls, TlsConfig};
use herald::{HubConfig, Server};
use rustls_pki_types::pem::PemObject;

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (cert.cert.pem(), cert.key_pair.serialize_pem())
}

/// A hub over TLS (with its certificate's PEM and the folder of its
/// files), HTTP/3 on or off.
async fn start_tls(cfg: HubConfig, http3: bool) -> (TestHub, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate();
    let files = TlsConfig {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    std::fs::write(&files.cert, &cert).unwrap();
    std::fs::write(&files.key, &key).unwrap();
    let tls = Tls::new(files).unwrap();
    let hub = TestHub::start_serving(
        cfg,
        Arc::new(MemoryEngine::new(1000)),
        move |listener, hub, stop| {
            Box::pin(Server::new(hub).tls(tls).http3(http3).serve(listener, stop))
        },
    )
    .await;
    (hub, cert, dir)
}

/// A QUIC endpoint that trusts `cert` only and speaks `h3`, with a short
/// idle timeout so a hub that does not answer fails a connect quickly.
fn endpoint(cert: &str) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(3).try_into().unwrap()));
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    endpoint
}

/// One HTTP/3 connection to the hub.
struct H3 {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    port: u16,
    /// Ends with the connection's error once it is closed.
    driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

type ReqStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

impl H3 {
    async fn connect(addr: SocketAddr, cert: &str) -> anyhow::Result<H3> {
        let endpoint = endpoint(cert);
        let conn = tokio::time::timeout(LONG, endpoint.connect(addr, "localhost")?)
            .await
            .map_err(|_| anyhow::anyhow!("no QUIC handshake within {LONG:?}"))??;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
        let driver = tokio::spawn(async move { driver.wait_idle().await });
        Ok(H3 {
            send,
            port: addr.port(),
            driver,
            conn,
            _endpoint: endpoint,
        })
    }

    /// Closes the connection, as a client that is done does.
    fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0x100), b"done");
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// Sends a request (with `body`, if any) and reads its response head.
    async fn request(
        &mut self,
        req: http::Request<()>,
        body: Option<&str>,
    ) -> (http::Response<()>, ReqStream) {
        let mut stream = tokio::time::timeout(LONG, self.send.send_request(req))
            .await
            .expect("request sent in time")
            .unwrap();
        if let Some(body) = body {
            stream
                .send_data(Bytes::copy_from_slice(body.as_bytes()))
                .await
                .unwrap();
        }
        stream.finish().await.unwrap();
        let res = tokio::time::timeout(LONG, stream.recv_response())
            .await
            .expect("response head in time")
            .unwrap();
        assert_eq!(res.version(), http::Version::HTTP_3);
        (res, stream)
    }

    /// A whole response: its status, headers and body.
    async fn fetch(
        &mut self,
        req: http::Request<()>,
        body: Option<&str>,
    ) -> (u16, http::HeaderMap, String) {
        let (res, mut stream) = self.request(req, body).await;
        let mut text = Vec::new();
        while let Some(mut chunk) = tokio::time::timeout(LONG, stream.recv_data())
            .await
            .expect("body in time")
            .unwrap()
        {
            text.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        (
            res.status().as_u16(),
            res.headers().clone(),
            String::from_utf8(text).unwrap(),
        )
    }

    async fn get(&mut self, path: &str) -> (u16, http::HeaderMap, String) {
        let req = http::Request::get(self.url(path)).body(()).unwrap();
        self.fetch(req, None).await
    }

    /// Publishes `data` to `https://t`; returns the update's id.
    async fn publish(&mut self, data: &str) -> String {
        let req = http::Request::post(self.url("/.well-known/mercure"))
            .header("authorization", format!("Bearer {}", publisher_token()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(())
            .unwrap();
        let form = serde_urlencoded::to_string([("topic", "https://t"), ("data", data)]).unwrap();
        let (status, _, body) = self.fetch(req, Some(&form)).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Subscribes to `https://t`, resuming after `last_event_id` if given.
    async fn subscribe(&mut self, last_event_id: Option<&str>) -> Subscription {
        let mut req = http::Request::get(self.url("/.well-known/mercure?topic=https%3A%2F%2Ft"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let (res, stream) = self.request(req.body(()).unwrap(), None).await;
        let body = futures_util::stream::unfold(stream, |mut s| async move {
            match s.recv_data().await {
                Ok(Some(mut b)) => Some((Ok(b.copy_to_bytes(b.remaining())), s)),
                Ok(None) => None,
                Err(e) => Some((Err(BodyError::from(e)), s)),
            }
        });
        Subscription::from_parts(res.status().as_u16(), res.headers().clone(), body.boxed())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_subscribes_publishes_and_resumes() {
    let (hub, cert, _dir) = start_tls(config(), true).await;
    let mut h3 = H3::connect(hub.addr, &cert).await.unwrap();

    let (status, _, body) = h3.get("/healthz").await;
    assert_eq!(status, 200, "{body}");

    let mut live = h3.subscribe(None).await;
    assert_eq!(live.status, 200);
    assert_eq!(live.headers["content-type"], "text/event-stream");
    let one = h3.publish("one").await;
    let e = live.next_event(LONG).await.expect("the update over HTTP/3");
    assert_eq!(e.data, "one");
    assert_eq!(e.id, one);

    // Two more while a second subscriber is away; it resumes after `one`.
    h3.publish("two").await;
    h3.publish("three").await;
    let mut resumed = h3.subscribe(Some(&one)).await;
    assert_eq!(resumed.status, 200);
    // The first within LONG (a loaded machine), the rest right after it.
    assert_eq!(resumed.next_event(LONG).await.unwrap().data, "two");
    assert_eq!(resumed.drain_data(SHORT).await, ["three"]);
    assert_eq!(live.drain_data(SHORT).await, ["two", "three"]);
    // Both streams go on.
    h3.publish("four").await;
    assert_eq!(resumed.next_event(LONG).await.unwrap().data, "four");
    assert_eq!(live.next_event(LONG).await.unwrap().data, "four");

    // All of it on one QUIC connection, counted as `h3`.
    let (_, _, metrics) = h3.get("/metrics").await;
    assert_eq!(
        value(
            &metrics,
            r#"herald_transport_connections_total{protocol="h3"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(value(&metrics, "herald_connections"), 2.0, "{metrics}");
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_responses_advertise_http3_on_the_same_port() {
    let (hub, cert, _dir) = start_tls(config(), true).await;
    let url = format!("https://localhost:{}/healthz", hub.addr.port());
    let expected = format!("h3=\":{}\"; ma=86400", hub.addr.port());
    for (http1, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let res = tls_client(&hub, &cert, http1)
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(res.version(), version);
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["alt-svc"], expected.as_str(), "{version:?}");
    }
    // An event stream's head carries it too.
    let res = tls_client(&hub, &cert, false)
        .get(format!(
            "https://localhost:{}/.well-known/mercure",
            hub.addr.port()
        ))
        .query(&[("topic", "https://t")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["alt-svc"], expected.as_str());
    // And the port it names answers HTTP/3.
    let mut h3 = H3::connect(hub.addr, &cert).await.unwrap();
    assert_eq!(h3.get("/healthz").await.0, 200);
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_http3_there_is_no_alt_svc_and_no_quic() {
    let (hub, cert, _dir) = start_tls(config(), false).await;
    let url = format!("https://localhost:{}/healthz", hub.addr.port());
    let res = tls_client(&hub, &cert, false)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("alt-svc").is_none(),
        "{:?}",
        res.headers()
    );
    assert!(
        H3::connect(hub.addr, &cert).await.is_err(),
        "a QUIC handshake succeeded with HTTP/3 off"
    );
    hub.stop().await.unwrap();

    // A plain listener neither.
    let plain = TestHub::start(config()).await;
    let res = common::client()
        .get(plain.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("alt-svc").is_none());
}

/// Each QUIC connection takes one place among the non-stream connections,
/// as a TCP connection does: past `max_connections` the next connection's
/// requests are answered `503`, and a closed one gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connections_take_places_like_tcp_connections() {
    let mut cfg = config();
    cfg.max_connections = 1;
    let (hub, cert, _dir) = start_tls(cfg, true).await;
    let mut first = H3::connect(hub.addr, &cert).await.unwrap();
    assert_eq!(first.get("/healthz").await.0, 200);
    let mut second = H3::connect(hub.addr, &cert).await.unwrap();
    let (status, headers, _) = second.get("/healthz").await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "1");
    second.close();
    // The first one's place comes back once it is closed.
    first.close();
    let started = Instant::now();
    loop {
        let mut next = H3::connect(hub.addr, &cert).await.unwrap();
        if next.get("/healthz").await.0 == 200 {
            break;
        }
        next.close();
        assert!(
            started.elapsed() < LONG,
            "a closed QUIC connection kept its place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("place given back within {:?}", started.elapsed());
    // A connection that was refused holds no request open: shutdown does
    // not wait out the grace period (5 s) for it.
    let stopping = Instant::now();
    hub.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_http3_streams_and_returns() {
    let (hub, cert, _dir) = start_tls(config(), true).await;
    let mut h3 = H3::connect(hub.addr, &cert).await.unwrap();
    let mut live = h3.subscribe(None).await;
    assert_eq!(live.status, 200);
    h3.publish("before").await;
    assert_eq!(live.next_event(LONG).await.unwrap().data, "before");

    let started = Instant::now();
    tokio::time::timeout(LONG, hub.stop())
        .await
        .expect("the hub did not stop with an HTTP/3 stream open")
        .unwrap();
    let stopped = started.elapsed();
    assert!(live.wait_end(LONG).await, "the HTTP/3 stream was not ended");
    // The grace period (5 s) was not needed: the stream ended at once.
    assert!(stopped < Duration::from_secs(3), "{stopped:?}");
    eprintln!("hub with an open HTTP/3 stream stopped in {stopped:?}");
    // The server closed the connection.
    let closed = tokio::time::timeout(LONG, &mut h3.driver)
        .await
        .expect("the QUIC connection was not closed")
        .unwrap();
    eprintln!("connection closed: {closed}");
}

/// QUIC handshakes use the listener's certificate resolver: a new
/// certificate written over the files is served over HTTP/3 too, while a
/// connection opened before goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_serves_http3_too() {
    let (hub, first, dir) = start_tls(config(), true).await;
    let mut before = H3::connect(hub.addr, &first).await.unwrap();
    let mut live = before.subscribe(None).await;
    let (cert, key) = certificate();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    let started = Instant::now();
    let mut fresh = loop {
        if let Ok(c) = H3::connect(hub.addr, &cert).await {
            break c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate was not served over QUIC"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "new certificate served over QUIC after {:?}",
        started.elapsed()
    );
    assert!(
        H3::connect(hub.addr, &first).await.is_err(),
        "the old certificate is still served"
    );
    fresh.publish("after the reload").await;
    assert_eq!(
        live.next_event(LONG).await.unwrap().data,
        "after the reload"
    );
    assert_eq!(before.get("/healthz").await.0, 200);
    hub.stop().await.unwrap();
}
