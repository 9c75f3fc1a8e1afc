//! Streaming publish (`application/x-ndjson`) against a real hub over
//! real TCP: each line is published and answered while the request is
//! still open, a bad line is answered for itself, and the limits (line
//! size, idle time, updates per request) end what they must.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use herald::HubConfig;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const TOPIC: &str = "https://example.com/tokens";

/// A streaming publish in progress: lines go in as the test sends them,
/// answers come out as the hub writes them.
struct Stream {
    lines: Option<mpsc::Sender<Result<String, std::io::Error>>>,
    answers:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    pending: String,
    status: u16,
}

impl Stream {
    async fn open(hub: &TestHub, token: Option<&str>) -> Stream {
        let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(16);
        let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
        let mut req = client()
            .post(hub.hub_url())
            .header("content-type", "application/x-ndjson")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        // The first line goes out before the answer's head is awaited:
        // the hub answers once the request's head is in.
        let res = tokio::time::timeout(Duration::from_secs(5), req.send())
            .await
            .expect("the answer's head within 5 s")
            .unwrap();
        let status = res.status().as_u16();
        Stream {
            lines: Some(tx),
            answers: Box::pin(res.bytes_stream()),
            pending: String::new(),
            status,
        }
    }

    /// Sends bytes as they are (part of a line).
    async fn send_raw(&mut self, bytes: &str) {
        self.lines
            .as_ref()
            .unwrap()
            .send(Ok(bytes.to_owned()))
            .await
            .unwrap();
    }

    async fn send(&mut self, line: &str) {
        self.lines
            .as_ref()
            .unwrap()
            .send(Ok(format!("{line}\n")))
            .await
            .unwrap();
    }

    /// Ends the request body.
    fn finish(&mut self) {
        self.lines = None;
    }

    /// The next answer line, within 5 s; `None` once the answer ended.
    async fn answer(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.pending.find('\n') {
                let line: String = self.pending.drain(..=i).collect();
                return Some(serde_json::from_str(line.trim()).unwrap());
            }
            let next = tokio::time::timeout(Duration::from_secs(5), self.answers.next())
                .await
                .expect("an answer within 5 s");
            match next {
                Some(Ok(b)) => self.pending.push_str(std::str::from_utf8(&b).unwrap()),
                Some(Err(e)) => panic!("answer failed: {e}"),
                None => return None,
            }
        }
    }
}

/// The receiver as a stream of request body chunks.
fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
    async_stream::stream! {
        while let Some(item) = rx.recv().await {
            yield item;
        }
    }
}

fn update(data: &str) -> String {
    json!({"topics": [TOPIC], "data": data}).to_string()
}

#[tokio::test]
async fn each_line_is_published_and_answered_as_it_arrives() {
    let hub = TestHub::start(config()).await;
    let mut sub = Subscription::topics(&hub, &[TOPIC]).await;
    let token = token(PUB_KEY, Some(&[TOPIC]), None);
    let mut s = Stream::open(&hub, Some(&token)).await;
    assert_eq!(s.status, 200);

    // Line by line, with the request still open: the subscriber has each
    // update, and the publisher its id, before the next line is sent.
    for i in 0..3 {
        let data = format!("token {i}");
        s.send(&update(&data)).await;
        let a = s.answer().await.unwrap();
        assert_eq!(a["line"], i + 1);
        let id = a["id"].as_str().expect("an id").to_owned();
        let e = sub.next_event(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (e.data.as_str(), e.id.as_str()),
            (data.as_str(), id.as_str())
        );
    }

    // Bad lines are answered for themselves; the stream goes on.
    s.send("not json").await;
    let a = s.answer().await.unwrap();
    assert_eq!(a["line"], 4);
    assert_eq!(a["status"], 400);
    assert!(a["error"].as_str().unwrap().contains("malformed"), "{a}");
    s.send("").await;
    s.send(&json!({"topics": ["https://example.com/elsewhere"], "data": "x"}).to_string())
        .await;
    let a = s.answer().await.unwrap();
    assert_eq!(
        (a["line"].as_u64(), a["status"].as_u64()),
        (Some(6), Some(403))
    );
    s.send(&json!({"topics": [TOPIC], "data": "y", "typo": true}).to_string())
        .await;
    assert_eq!(s.answer().await.unwrap()["status"], 400);
    s.send(&json!({"topics": [TOPIC], "data": "dup", "id": "same"}).to_string())
        .await;
    assert_eq!(s.answer().await.unwrap()["id"], "same");
    s.send(&json!({"topics": [TOPIC], "data": "dup again", "id": "same"}).to_string())
        .await;
    assert_eq!(s.answer().await.unwrap()["status"], 409);
    s.send(&update("last")).await;
    assert_eq!(s.answer().await.unwrap()["line"], 10);
    s.finish();
    assert_eq!(s.answer().await, None, "the answer ends with the request");

    let rest = sub.drain_data(Duration::from_millis(300)).await;
    assert_eq!(rest, vec!["dup", "last"]);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn the_limits_end_what_they_must() {
    let cfg = HubConfig {
        max_body_bytes: 256,
        publish_stream_idle: Duration::from_millis(400),
        publish_stream_updates: 7,
        ..config()
    };
    let hub = TestHub::start(cfg).await;
    let token = publisher_token();

    // A line too long is answered 413; its bytes are skipped to its end.
    let mut s = Stream::open(&hub, Some(&token)).await;
    s.send(&update(&"x".repeat(300))).await;
    let a = s.answer().await.unwrap();
    assert_eq!(
        (a["line"].as_u64(), a["status"].as_u64()),
        (Some(1), Some(413))
    );
    s.send(&update("fits")).await;
    let a = s.answer().await.unwrap();
    assert_eq!(a["line"], 2);
    assert!(a["id"].is_string(), "{a}");
    // Also when it comes in pieces, answered before its end.
    s.send_raw(&"y".repeat(200)).await;
    s.send_raw(&"y".repeat(200)).await;
    let a = s.answer().await.unwrap();
    assert_eq!(
        (a["line"].as_u64(), a["status"].as_u64()),
        (Some(3), Some(413))
    );
    s.send_raw(&format!("{}\n", "y".repeat(200))).await;

    // The limit is on the line without its ending: 256 bytes and `\r\n`
    // fit, also when the `\r` comes before the `\n` does; 257 do not, and
    // are answered as soon as they are there.
    let sized = |n: usize| {
        let line = update(&"z".repeat(n - update("").len()));
        assert_eq!(line.len(), n);
        line
    };
    s.send_raw(&format!("{}\r", sized(256))).await;
    s.send_raw("\n").await;
    let a = s.answer().await.unwrap();
    assert_eq!(a["line"], 4);
    assert!(a["id"].is_string(), "{a}");
    s.send_raw(&sized(257)).await;
    let a = s.answer().await.unwrap();
    assert_eq!(
        (a["line"].as_u64(), a["status"].as_u64()),
        (Some(5), Some(413))
    );
    s.send_raw("\r\n").await;

    // At most 7 updates, each line answered counting, refused ones too:
    // the eighth ends the stream.
    s.send(&update("two")).await;
    s.send(&update("three")).await;
    assert!(s.answer().await.unwrap()["id"].is_string());
    assert!(s.answer().await.unwrap()["id"].is_string());
    s.send(&update("four")).await;
    let a = s.answer().await.unwrap();
    assert_eq!(
        (a["line"].as_u64(), a["status"].as_u64()),
        (Some(8), Some(413))
    );
    assert_eq!(s.answer().await, None);

    // Nothing for 400 ms: a 408 line, and the answer ends.
    let mut s = Stream::open(&hub, Some(&token)).await;
    s.send(&update("one")).await;
    assert!(s.answer().await.unwrap()["id"].is_string());
    let started = std::time::Instant::now();
    let a = s.answer().await.unwrap();
    assert_eq!(a["status"], 408, "{a}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.answer().await, None);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn the_whole_request_is_refused_before_any_line() {
    let hub = TestHub::start(config()).await;
    let s = Stream::open(&hub, None).await;
    assert_eq!(s.status, 401);
    let subscriber_only = token(PUB_KEY, None, Some(&["*"]));
    let s = Stream::open(&hub, Some(&subscriber_only)).await;
    assert_eq!(s.status, 403);
    hub.stop().await.unwrap();
}
