//! Webhooks: herald tells the application when a subscriber connects,
//! subscribes and disconnects, so an app that reads no subscription events
//! still knows who is there (presence).
//!
//! Each event is one `POST` of JSON to `webhook_url`:
//!
//! ```json
//! {"type":"connect","subscriber":17,"topics":["https://example.com/a"],"address":"203.0.113.7","time":1733470000123}
//! ```
//!
//! `type` is `connect`, `subscribe` (one per selector, after `connect`) or
//! `disconnect`; `time` is in ms since the Unix epoch. With a
//! `webhook_secret` the request carries `Herald-Signature: t=<ms>,v1=<hex>`,
//! where `v1` is HMAC-SHA256 of `<t>.<body>` under the secret (the time in
//! the signed text stops replays).
//!
//! Delivery never waits for the application: events go into a bounded
//! queue ([`QUEUE`]), a full queue drops the newest (counted in
//! `herald_webhooks_dropped_total`), and one task sends them in order,
//! retrying a failure (a network error or a non-2xx answer) with backoff
//! from 100 ms to 5 s, [`TRIES`] times in all.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events waiting to be sent, at most.
pub const QUEUE: usize = 4096;
/// Tries per event.
pub const TRIES: u32 = 6;

/// One webhook event.
#[derive(Debug, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub subscriber: u64,
    pub topics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub time: u64,
}

#[derive(Debug)]
pub(crate) struct Webhooks {
    tx: mpsc::Sender<Event>,
    dropped: Counter,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `Herald-Signature` for `body` sent at `t`.
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

impl Webhooks {
    /// Starts the sender on the current runtime; it stops at `stop`.
    pub fn start(
        url: url::Url,
        secret: Option<String>,
        dropped: Counter,
        stop: CancellationToken,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    e = rx.recv() => match e { Some(e) => e, None => return },
                    () = stop.cancelled() => return,
                };
                let body = serde_json::to_vec(&event).unwrap_or_default();
                let mut backoff = Duration::from_millis(100);
                for attempt in 1..=TRIES {
                    let mut req = http
                        .post(url.clone())
                        .header("content-type", "application/json")
                        .body(body.clone());
                    if let Some(secret) = &secret {
                        req = req.header("herald-signature", signature(secret, now_ms(), &body));
                    }
                    match req.send().await {
                        Ok(res) if res.status().is_success() => break,
                        outcome => {
                            let why = match outcome {
                                Ok(res) => format!("answered {}", res.status()),
                                Err(e) => e.to_string(),
                            };
                            if attempt == TRIES {
                                tracing::warn!(kind = event.kind, "webhook not delivered: {why}");
                                break;
                            }
                            tracing::debug!(attempt, "webhook failed, retrying: {why}");
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        });
        Self { tx, dropped }
    }

    /// Queues an event; never waits.
    pub fn send(
        &self,
        kind: &'static str,
        subscriber: u64,
        topics: Vec<String>,
        address: Option<String>,
    ) {
        let event = Event {
            kind,
            subscriber,
            topics,
            address,
            time: now_ms(),
        };
        if self.tx.try_send(event).is_err() {
            self.dropped.inc();
        }
    }
}
