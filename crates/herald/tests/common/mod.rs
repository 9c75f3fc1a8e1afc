//! Test support: a real hub on a real TCP port, and a real SSE client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald::auth::{sign, Claims, KeyConfig, MercureClaim};
use herald::engine::memory::MemoryEngine;
use herald::engine::Engine;
use herald::{Hub, HubConfig};
use herald_protocol::sse::{Event, Item, Parser};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PUB_KEY: &str = "publisher-secret-publisher-secret!";
pub const SUB_KEY: &str = "subscriber-secret-subscriber-secret";

/// A config with separate publisher and subscriber HMAC keys.
pub fn config() -> HubConfig {
    HubConfig {
        publisher_jwt: Some(KeyConfig::hmac(PUB_KEY)),
        subscriber_jwt: Some(KeyConfig::hmac(SUB_KEY)),
        ..HubConfig::default()
    }
}

pub struct TestHub {
    pub addr: SocketAddr,
    pub hub: Hub,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestHub {
    pub async fn start(config: HubConfig) -> Self {
        Self::start_with(config, Arc::new(MemoryEngine::new(100_000))).await
    }

    pub async fn start_with(config: HubConfig, engine: Arc<dyn Engine>) -> Self {
        Self::start_serving(config, engine, |listener, hub, stop| {
            Box::pin(herald::serve(listener, hub, stop))
        })
        .await
    }

    /// A hub served by `serve` (given the listener, the hub and the
    /// shutdown future), for the other ways of serving one.
    pub async fn start_serving(
        config: HubConfig,
        engine: Arc<dyn Engine>,
        serve: impl FnOnce(
            tokio::net::TcpListener,
            Hub,
            futures_util::future::BoxFuture<'static, ()>,
        ) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Hub::new(config, engine).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let stop = Box::pin(async move {
            let _ = rx.await;
        });
        let task = tokio::spawn(serve(listener, hub.clone(), stop));
        Self {
            addr,
            hub,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn hub_url(&self) -> String {
        self.url("/.well-known/mercure")
    }

    /// Stops the hub and waits for the server to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.unwrap(),
            None => Ok(()),
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn token(key: &str, publish: Option<&[&str]>, subscribe: Option<&[&str]>) -> String {
    let claims = Claims {
        mercure: MercureClaim {
            publish: publish.map(|p| p.iter().map(|s| s.to_string()).collect()),
            subscribe: subscribe.map(|p| p.iter().map(|s| s.to_string()).collect()),
            payload: None,
        },
        ..Claims::default()
    };
    sign(&claims, &KeyConfig::hmac(key)).unwrap()
}

pub fn publisher_token() -> String {
    token(PUB_KEY, Some(&["*"]), None)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// Publishes form fields with the all-topics publisher token; returns the
/// status and body.
pub async fn publish(c: &reqwest::Client, hub: &TestHub, fields: &[(&str, &str)]) -> (u16, String) {
    let res = c
        .post(hub.hub_url())
        .bearer_auth(publisher_token())
        .form(fields)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

/// Publishes and asserts `200`; returns the id.
pub async fn publish_ok(c: &reqwest::Client, hub: &TestHub, fields: &[(&str, &str)]) -> String {
    let (status, body) = publish(c, hub, fields).await;
    assert_eq!(status, 200, "publish failed: {body}");
    body
}

/// Why a response body stopped short.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// An event-stream subscription read with the real SSE parser.
pub struct Subscription {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    stream: Option<futures_util::stream::BoxStream<'static, Result<bytes::Bytes, BodyError>>>,
    parser: Parser,
    pending: std::collections::VecDeque<Item>,
    pub ended: bool,
}

impl Subscription {
    /// Opens `GET` on the hub with the given query pairs and headers.
    pub async fn open(
        hub: &TestHub,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Subscription {
        Self::open_path(hub, "/.well-known/mercure", query, headers).await
    }

    /// Opens `GET` on any path of the hub.
    pub async fn open_path(
        hub: &TestHub,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Subscription {
        let c = reqwest::Client::new();
        let mut req = c.get(hub.url(path)).query(query);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::from_response(req.send().await.unwrap())
    }

    /// Reads an event stream already requested (for instance with `QUERY`).
    pub fn from_response(res: reqwest::Response) -> Subscription {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.bytes_stream().map(|r| r.map_err(BodyError::from));
        Self::from_parts(status, headers, body.boxed())
    }

    /// Reads an event stream whose body comes from another client (HTTP/3).
    pub fn from_parts(
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, BodyError>>,
    ) -> Subscription {
        Subscription {
            status,
            headers,
            stream: Some(body),
            parser: Parser::new(),
            pending: Default::default(),
            ended: false,
        }
    }

    /// Opens and asserts `200`.
    pub async fn topics(hub: &TestHub, topics: &[&str]) -> Subscription {
        let q: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
        let s = Self::open(hub, &q, &[]).await;
        assert_eq!(s.status, 200);
        s
    }

    /// Opens with topic selectors and returns only the status.
    pub async fn topics_status(hub: &TestHub, topics: &[&str]) -> u16 {
        let q: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
        Self::open(hub, &q, &[]).await.status
    }

    /// The next item (event or comment) within `within`, `None` on timeout
    /// or end of stream.
    pub async fn next_item(&mut self, within: Duration) -> Option<Item> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.pending.pop_front() {
                return Some(i);
            }
            let stream = self.stream.as_mut()?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => {
                    self.ended = true;
                    self.stream = None;
                    return None;
                }
                Ok(Some(Ok(chunk))) => self.pending.extend(self.parser.feed(&chunk)),
            }
        }
    }

    /// The next event, skipping comments.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await? {
                Item::Event(e) => return Some(e),
                Item::Comment(_) => continue,
            }
        }
    }

    /// Events until none arrives for `quiet`.
    pub async fn drain_events(&mut self, quiet: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.next_event(quiet).await {
            out.push(e);
        }
        out
    }

    /// The data of the events until none arrives for `quiet`.
    pub async fn drain_data(&mut self, quiet: Duration) -> Vec<String> {
        self.drain_events(quiet)
            .await
            .into_iter()
            .map(|e| e.data)
            .collect()
    }

    /// Waits for the stream to end; true if it ended within `within`.
    pub async fn wait_end(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.ended {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.next_item(left).await;
        }
        true
    }
}

pub const SHORT: Duration = Duration::from_millis(300);
pub const LONG: Duration = Duration::from_secs(5);

/// Reads from `tcp` until what was read contains `needle`; returns all of it.
pub async fn read_until(tcp: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + LONG;
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&got)))
            .unwrap();
        assert!(n > 0, "the hub closed the stream");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The value of a sample line `name{labels} value` or `name value`.
pub fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// The `/metrics` text.
pub async fn scrape(hub: &TestHub) -> String {
    client()
        .get(hub.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `herald_parked_streams` from `/metrics`.
pub async fn parked_gauge(hub: &TestHub) -> i64 {
    value(&scrape(hub).await, "herald_parked_streams") as i64
}

/// A client that trusts `cert` only and reaches `localhost` at the hub.
pub fn tls_client(hub: &TestHub, cert: &str, http1: bool) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).unwrap())
        .resolve("localhost", hub.addr)
        .no_proxy();
    let b = if http1 { b.http1_only() } else { b };
    b.build().unwrap()
}
