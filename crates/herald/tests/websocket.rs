//! WebSocket on the hub's URL, with a real WebSocket client
//! (tokio-tungstenite) over real TCP: subscriptions from the URL and on
//! the open socket, publishing, resume, binary frames, heartbeats, the
//! slow-consumer and token-expiry closes, and the origin check.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use herald::auth::{sign, Claims, KeyConfig, MercureClaim};
use herald::HubConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The publishers' key, for subscribers too: one token does both.
const KEY: &str = PUB_KEY;
const TOPIC: &str = "https://example.com/books/1";

/// One key for publishers and subscribers, so one token does both.
fn one_key() -> HubConfig {
    HubConfig {
        publisher_jwt: Some(KeyConfig::hmac(KEY)),
        subscriber_jwt: Some(KeyConfig::hmac(KEY)),
        ..HubConfig::default()
    }
}

fn both(exp: Option<u64>) -> String {
    let claims = Claims {
        mercure: MercureClaim {
            publish: Some(vec!["*".into()]),
            subscribe: Some(vec!["*".into()]),
            payload: None,
        },
        exp,
        ..Claims::default()
    };
    sign(&claims, &KeyConfig::hmac(KEY)).unwrap()
}

fn ws_url(hub: &TestHub, query: &str) -> String {
    format!("ws://{}/.well-known/mercure{query}", hub.addr)
}

async fn connect(hub: &TestHub, query: &str, token: Option<&str>) -> Socket {
    connect_with(hub, query, token, None).await.unwrap()
}

async fn connect_with(
    hub: &TestHub,
    query: &str,
    token: Option<&str>,
    origin: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut req = ws_url(hub, query).into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the handshake within 5 s")
    .map(|(s, _)| s)
}

/// The next JSON message (pings and pongs skipped).
async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("the socket open")
            .expect("a message");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The close code the socket ends with, within `within`.
async fn close_code(ws: &mut Socket, within: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the socket still open after {within:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return None,
        }
    }
}

#[tokio::test]
async fn the_url_subscribes_and_the_socket_receives_and_publishes() {
    let hub = TestHub::start(one_key()).await;
    let token = both(None);
    let mut ws = connect(&hub, &format!("?topic={TOPIC}"), Some(&token)).await;
    let ack = next_json(&mut ws).await;
    assert_eq!(
        ack,
        json!({"op": "subscribed", "sub": "default", "resumed_from": null})
    );
    let mut sse = Subscription::topics(&hub, &[TOPIC]).await;

    // Published over HTTP: the socket gets it as an `update`.
    let c = client();
    let c = &c;
    let (status, _) = c
        .post(hub.hub_url())
        .bearer_auth(&token)
        .form(&[
            ("topic", TOPIC),
            ("data", "over http"),
            ("id", "u1"),
            ("type", "note"),
        ])
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        next_json(&mut ws).await,
        json!({
            "op": "update", "sub": "default", "id": "u1", "type": "note",
            "topic": TOPIC, "topics": [TOPIC], "data": "over http", "private": false,
        })
    );

    // Published over the socket: acknowledged with its id, and delivered
    // to the socket and to event streams alike.
    send(
        &mut ws,
        json!({"op": "publish", "ref": "p1", "topics": [TOPIC], "data": "over ws", "private": false}),
    )
    .await;
    let mut published = None;
    let mut update = None;
    for _ in 0..2 {
        let m = next_json(&mut ws).await;
        match m["op"].as_str() {
            Some("published") => published = Some(m),
            Some("update") => update = Some(m),
            _ => panic!("unexpected {m}"),
        }
    }
    let published = published.unwrap();
    assert_eq!(published["ref"], "p1");
    let id = published["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("urn:uuid:"), "{id}");
    let update = update.unwrap();
    assert_eq!(update["id"], id.as_str());
    assert_eq!(update["data"], "over ws");
    assert_eq!(update["type"], "message");
    let data = sse.drain_data(Duration::from_millis(300)).await;
    assert_eq!(data, vec!["over http", "over ws"]);
    drop(ws);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn an_open_socket_subscribes_and_unsubscribes_more_selectors() {
    let hub = TestHub::start(one_key()).await;
    let token = both(None);
    let mut ws = connect(&hub, "", Some(&token)).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "sub": "a", "topics": ["https://example.com/a/{id}"]}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    send(
        &mut ws,
        json!({"op": "subscribe", "sub": "b", "topics": ["https://example.com/b"]}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op": "subscribed", "sub": "b", "resumed_from": null})
    );
    let c = client();
    publish_ok(
        &c,
        &hub,
        &[("topic", "https://example.com/a/1"), ("data", "a1")],
    )
    .await;
    publish_ok(
        &c,
        &hub,
        &[("topic", "https://example.com/b"), ("data", "b1")],
    )
    .await;
    let m1 = next_json(&mut ws).await;
    let m2 = next_json(&mut ws).await;
    assert_eq!(
        (m1["sub"].as_str(), m1["data"].as_str()),
        (Some("a"), Some("a1"))
    );
    assert_eq!(
        (m2["sub"].as_str(), m2["data"].as_str()),
        (Some("b"), Some("b1"))
    );

    // Errors answer the message and leave the socket open.
    send(
        &mut ws,
        json!({"op": "subscribe", "sub": "a", "topics": ["x"]}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["op"].as_str(), e["status"].as_u64(), e["sub"].as_str()),
        (Some("error"), Some(409), Some("a"))
    );
    send(
        &mut ws,
        json!({"op": "subscribe", "sub": "c", "topics": []}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["status"], 400);
    send(
        &mut ws,
        json!({"op": "subscribe", "sub": "c", "topics": ["https://e.com/{"]}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["status"], 400);
    send(&mut ws, json!({"op": "unsubscribe", "sub": "nope"})).await;
    assert_eq!(next_json(&mut ws).await["status"], 404);
    send(&mut ws, json!({"op": "dance"})).await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["status"], 400, "{e}");
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["status"], 400);

    send(&mut ws, json!({"op": "unsubscribe", "sub": "a"})).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op": "unsubscribed", "sub": "a"})
    );
    publish_ok(
        &c,
        &hub,
        &[("topic", "https://example.com/a/2"), ("data", "a2")],
    )
    .await;
    publish_ok(
        &c,
        &hub,
        &[("topic", "https://example.com/b"), ("data", "b2")],
    )
    .await;
    // Only b's update: a is gone.
    let m = next_json(&mut ws).await;
    assert_eq!(
        (m["sub"].as_str(), m["data"].as_str()),
        (Some("b"), Some("b2"))
    );
    // The name is free again.
    send(
        &mut ws,
        json!({"op": "subscribe", "sub": "a", "topics": ["https://example.com/a/{id}"]}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_subscription_resumes_from_an_id() {
    let hub = TestHub::start(one_key()).await;
    let c = client();
    for i in 1..=3 {
        publish_ok(
            &c,
            &hub,
            &[
                ("topic", TOPIC),
                ("data", &format!("d{i}")),
                ("id", &format!("id{i}")),
            ],
        )
        .await;
    }
    let token = both(None);
    // In the URL, as an event stream would.
    let mut ws = connect(
        &hub,
        &format!("?topic={TOPIC}&lastEventID=id1"),
        Some(&token),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op": "subscribed", "sub": "default", "resumed_from": "id1"})
    );
    assert_eq!(next_json(&mut ws).await["id"], "id2");
    assert_eq!(next_json(&mut ws).await["id"], "id3");
    // On the open socket.
    send(
        &mut ws,
        json!({"op": "subscribe", "sub": "again", "topics": [TOPIC], "last_event_id": "id2"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["resumed_from"], "id2");
    let m = next_json(&mut ws).await;
    assert_eq!(
        (m["sub"].as_str(), m["id"].as_str()),
        (Some("again"), Some("id3"))
    );
    // An id not in history: everything retained, and `earliest` says so.
    send(
        &mut ws,
        json!({"op": "subscribe", "sub": "lost", "topics": [TOPIC], "last_event_id": "never"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["resumed_from"], "earliest");
    for want in ["id1", "id2", "id3"] {
        assert_eq!(next_json(&mut ws).await["id"], want);
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn binary_payloads_travel_as_binary_frames() {
    let hub = TestHub::start(one_key()).await;
    let token = both(None);
    let mut ws = connect(&hub, &format!("?topic={TOPIC}"), Some(&token)).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let mut sse = Subscription::topics(&hub, &[TOPIC]).await;
    let payload: Vec<u8> = (0..=255u8).chain([0, 10, 13, 0xff]).collect();
    let mut frame =
        json!({"op": "publish", "ref": "bin", "topics": [TOPIC], "media_type": "image/png"})
            .to_string()
            .into_bytes();
    frame.push(b'\n');
    frame.extend_from_slice(&payload);
    ws.send(Message::binary(frame)).await.unwrap();
    let mut got = None;
    let mut ack = None;
    while got.is_none() || ack.is_none() {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Binary(b) => got = Some(b),
            Message::Text(t) => ack = Some(serde_json::from_str::<Value>(t.as_str()).unwrap()),
            _ => {}
        }
    }
    let ack = ack.unwrap();
    assert_eq!(ack["op"], "published", "{ack}");
    let got = got.unwrap();
    let nl = got.iter().position(|b| *b == b'\n').unwrap();
    let head: Value = serde_json::from_slice(&got[..nl]).unwrap();
    assert_eq!(head["op"], "update");
    assert_eq!(head["media_type"], "image/png");
    assert_eq!(head["id"], ack["id"]);
    assert!(head.get("data").is_none(), "{head}");
    assert_eq!(&got[nl + 1..], &payload[..]);
    // Event streams get the same update as a data: URL.
    use base64::Engine as _;
    let want = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&payload)
    );
    assert_eq!(sse.drain_data(Duration::from_millis(300)).await, vec![want]);

    // A binary frame without its head, or with data as well, is refused.
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut ws).await["status"], 400);
    let mut bad = json!({"op": "publish", "topics": [TOPIC], "data": "x"})
        .to_string()
        .into_bytes();
    bad.extend_from_slice(b"\nbytes");
    ws.send(Message::binary(bad)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["status"], 400);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn publishing_needs_a_publish_right() {
    let hub = TestHub::start(one_key()).await;
    let claims = Claims {
        mercure: MercureClaim {
            publish: Some(vec!["https://example.com/mine".into()]),
            subscribe: Some(vec!["*".into()]),
            payload: None,
        },
        ..Claims::default()
    };
    let mine = sign(&claims, &KeyConfig::hmac(KEY)).unwrap();
    let mut ws = connect(&hub, "", Some(&mine)).await;
    send(
        &mut ws,
        json!({"op": "publish", "ref": "x", "topics": [TOPIC], "data": "no"}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["status"].as_u64(), e["ref"].as_str()),
        (Some(403), Some("x")),
        "{e}"
    );
    send(
        &mut ws,
        json!({"op": "publish", "ref": "y", "topics": ["https://example.com/mine"], "data": "yes"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["op"], "published");
    // The hub's reserved namespace stays the hub's.
    send(
        &mut ws,
        json!({"op": "publish", "topics": ["*"], "data": "no"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["status"], 400);

    // A subscriber-only token may not publish at all.
    let sub_only = sign(
        &Claims {
            mercure: MercureClaim {
                publish: None,
                subscribe: Some(vec!["*".into()]),
                payload: None,
            },
            ..Claims::default()
        },
        &KeyConfig::hmac(KEY),
    )
    .unwrap();
    let mut ws = connect(&hub, "", Some(&sub_only)).await;
    send(
        &mut ws,
        json!({"op": "publish", "topics": ["https://example.com/mine"], "data": "no"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["status"], 403);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn no_token_no_socket_unless_anonymous() {
    let hub = TestHub::start(HubConfig {
        anonymous: false,
        ..one_key()
    })
    .await;
    let e = connect_with(&hub, &format!("?topic={TOPIC}"), None, None)
        .await
        .unwrap_err();
    match e {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 401),
        e => panic!("expected 401, got {e}"),
    }
    // The draft-07 query parameter presents a token too.
    let token = both(None);
    let mut ws = connect(&hub, &format!("?topic={TOPIC}&authorization={token}"), None).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_page_from_another_site_is_refused() {
    let cfg = HubConfig {
        cors_origins: vec!["https://app.example".into()],
        ..one_key()
    };
    let hub = TestHub::start(cfg).await;
    let token = both(None);
    let q = format!("?topic={TOPIC}");
    match connect_with(&hub, &q, Some(&token), Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("a cross-site page opened a socket"),
    }
    for origin in [
        Some("https://app.example"),
        None,
        Some(&*format!("http://{}", hub.addr)),
    ] {
        let mut ws = connect_with(&hub, &q, Some(&token), origin).await.unwrap();
        assert_eq!(next_json(&mut ws).await["op"], "subscribed", "{origin:?}");
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn the_token_expiry_closes_the_socket() {
    let hub = TestHub::start(one_key()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = both(Some(now + 2));
    let mut ws = connect(&hub, &format!("?topic={TOPIC}"), Some(&token)).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4001)
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn the_hub_pings_and_closes_a_socket_that_never_answers() {
    let cfg = HubConfig {
        heartbeat: Duration::from_millis(500),
        anonymous: true,
        ..one_key()
    };
    let hub = TestHub::start(cfg).await;
    // A reading client answers the pings (tungstenite does) and stays.
    let mut ws = connect(&hub, &format!("?topic={TOPIC}"), None).await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(2700);
    while let Ok(m) = tokio::time::timeout_at(until, ws.next()).await {
        match m.unwrap().unwrap() {
            Message::Ping(_) => pings += 1,
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    assert!(pings >= 3, "{pings} pings in 2.7 s at a 500 ms heartbeat");

    // A client that never answers: a raw handshake, then silence.
    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let head = format!(
        "GET /.well-known/mercure?topic={TOPIC} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        hub.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let close_4002 = [0x88, 0x00, 0x0f, 0xa2];
    let found = tokio::time::timeout(Duration::from_secs(8), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            if n == 0 {
                return false;
            }
            got.extend_from_slice(&buf[..n]);
            // A close frame: 0x88, its length, then the code 4002.
            if got
                .windows(4)
                .any(|w| w[0] == close_4002[0] && w[2..] == close_4002[2..])
            {
                return true;
            }
        }
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "no close 4002 in {:?}",
        String::from_utf8_lossy(&got)
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_socket_that_does_not_read_is_closed_as_too_slow() {
    let cfg = HubConfig {
        queue_frames: 16,
        anonymous: true,
        ..one_key()
    };
    let hub = TestHub::start(cfg).await;
    let mut ws = connect(&hub, &format!("?topic={TOPIC}"), None).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    // Big updates until the socket's buffers and queue are full.
    let c = client();
    let data = "x".repeat(64 * 1024);
    let before = value(
        &scrape(&hub).await,
        "herald_slow_subscriber_disconnects_total",
    );
    let mut overflowed = false;
    for _ in 0..400 {
        let (status, _) = publish(&c, &hub, &[("topic", TOPIC), ("data", &data)]).await;
        assert_eq!(status, 200);
        if value(
            &scrape(&hub).await,
            "herald_slow_subscriber_disconnects_total",
        ) > before
        {
            overflowed = true;
            break;
        }
    }
    assert!(overflowed, "the queue never overflowed");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(10)).await,
        Some(4008)
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let cfg = HubConfig {
        anonymous: true,
        ..one_key()
    };
    let hub = TestHub::start(cfg).await;
    let mut ws = connect(&hub, &format!("?topic={TOPIC}"), None).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let stopping = tokio::spawn(hub.stop());
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(1001)
    );
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn without_heartbeats_a_socket_gets_no_pings_and_still_works() {
    let cfg = HubConfig {
        heartbeat: Duration::ZERO,
        anonymous: true,
        ..one_key()
    };
    let hub = TestHub::start(cfg).await;
    let mut ws = connect(&hub, &format!("?topic={TOPIC}"), None).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let c = client();
    publish_ok(&c, &hub, &[("topic", TOPIC), ("data", "quiet")]).await;
    let quiet = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut data = Vec::new();
    while let Ok(m) = tokio::time::timeout_at(quiet, ws.next()).await {
        match m.unwrap().unwrap() {
            Message::Text(t) => {
                data.push(serde_json::from_str::<Value>(t.as_str()).unwrap()["data"].clone())
            }
            other => panic!("no heartbeats, yet {other:?}"),
        }
    }
    assert_eq!(data, vec![json!("quiet")]);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_socket_holds_at_most_64_subscriptions() {
    let hub = TestHub::start(HubConfig {
        anonymous: true,
        ..one_key()
    })
    .await;
    let mut ws = connect(&hub, "", None).await;
    for i in 0..64 {
        send(&mut ws, json!({"op": "subscribe", "sub": format!("s{i}"), "topics": [format!("https://example.com/{i}")]})).await;
    }
    for _ in 0..64 {
        assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    }
    send(
        &mut ws,
        json!({"op": "subscribe", "sub": "one-too-many", "topics": [TOPIC]}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["status"].as_u64(), e["sub"].as_str()),
        (Some(429), Some("one-too-many")),
        "{e}"
    );
    // Room again once one goes.
    send(&mut ws, json!({"op": "unsubscribe", "sub": "s0"})).await;
    assert_eq!(next_json(&mut ws).await["op"], "unsubscribed");
    send(
        &mut ws,
        json!({"op": "subscribe", "sub": "one-too-many", "topics": [TOPIC]}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_busy_topic_never_keeps_the_clients_messages_waiting() {
    let hub = TestHub::start(HubConfig {
        anonymous: true,
        // The client reads nothing for 300 ms while four publishers go
        // flat out. With the default bound (4,096 frames), a machine that
        // publishes fast enough overflows the socket's queue, and the hub
        // rightly closes the socket as too slow: not what this test is
        // about. No machine publishes a million updates in its few seconds.
        queue_frames: 1_000_000,
        queue_bytes: 1 << 30,
        ..one_key()
    })
    .await;
    let mut ws = connect(&hub, &format!("?topic={TOPIC}"), None).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    // Publishers flat out on the socket's topic, in the background.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for _ in 0..4 {
        let (c, url, stop) = (client(), hub.hub_url(), stop.clone());
        publishers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c
                    .post(&url)
                    .bearer_auth(publisher_token())
                    .form(&[("topic", TOPIC), ("data", "busy")])
                    .send()
                    .await;
            }
        }));
    }
    // Under that stream of updates, an unsubscribe is answered promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut ws, json!({"op": "unsubscribe", "sub": "default"})).await;
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = next_json(&mut ws).await;
            if m["op"] == "unsubscribed" {
                return;
            }
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    assert!(
        answered.is_ok(),
        "the unsubscribe waited behind the updates"
    );
    hub.stop().await.unwrap();
}

/// Waits until `herald_parked_streams` is `want`.
async fn parked_becomes(hub: &TestHub, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = parked_gauge(hub).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} parked, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_waiting_socket_is_parked_and_comes_back_when_its_client_speaks() {
    let cfg = HubConfig {
        heartbeat: Duration::from_millis(400),
        ..one_key()
    };
    let hub = TestHub::start(cfg).await;
    let token = both(None);
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&hub, &format!("?topic={TOPIC}"), Some(&token)).await;
        assert_eq!(next_json(&mut ws).await["op"], "subscribed");
        sockets.push(ws);
    }
    // One live subscription each, nothing to say: no task.
    parked_becomes(&hub, 3).await;

    // Updates reach parked sockets (the hub's flusher writes them).
    let c = client();
    for i in 0..3 {
        let data = format!("parked {i}");
        publish(&c, &hub, &[("topic", TOPIC), ("data", &data)]).await;
    }
    for ws in &mut sockets {
        for i in 0..3 {
            let m = next_json(ws).await;
            assert_eq!(m["op"], "update");
            assert_eq!(m["sub"], "default");
            assert_eq!(m["data"], format!("parked {i}"));
        }
    }
    assert_eq!(parked_gauge(&hub).await, 3, "still parked after updates");

    // A client that speaks gets its socket back in a task: a second
    // subscription keeps it there, ending it parks the socket again.
    let ws = &mut sockets[0];
    send(
        ws,
        json!({"op": "subscribe", "sub": "more", "topics": ["https://example.com/other"]}),
    )
    .await;
    assert_eq!(next_json(ws).await["op"], "subscribed");
    parked_becomes(&hub, 2).await;
    publish(
        &c,
        &hub,
        &[("topic", "https://example.com/other"), ("data", "o")],
    )
    .await;
    let m = next_json(ws).await;
    assert_eq!(
        (m["sub"].as_str(), m["data"].as_str()),
        (Some("more"), Some("o"))
    );
    send(ws, json!({"op": "unsubscribe", "sub": "more"})).await;
    assert_eq!(next_json(ws).await["op"], "unsubscribed");
    parked_becomes(&hub, 3).await;

    // Parked sockets are pinged when quiet; answering (tungstenite's
    // pong, sent as its client reads) wakes the socket for a moment, and
    // it parks again.
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let pings = futures_util::future::join_all(sockets.iter_mut().map(|ws| async move {
        let mut pings = 0;
        while let Ok(m) = tokio::time::timeout_at(until, ws.next()).await {
            match m.unwrap().unwrap() {
                Message::Ping(_) => pings += 1,
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
        pings
    }))
    .await;
    assert!(
        pings.iter().all(|&p| p >= 2),
        "{pings:?} pings in 1.5 s at a 400 ms heartbeat"
    );
    parked_becomes(&hub, 3).await;

    // A parked socket's client closes: its subscription ends.
    let mut gone = sockets.pop().unwrap();
    gone.close(None).await.unwrap();
    parked_becomes(&hub, 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while value(&scrape(&hub).await, "herald_connections") != 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.stop().await.unwrap();
}

/// An application serving herald's router itself (axum's upgrade, with
/// tungstenite) gets the same sockets.
#[tokio::test]
async fn sockets_work_in_an_application_serving_the_router() {
    let cfg = HubConfig {
        heartbeat: Duration::from_millis(400),
        ..one_key()
    };
    let hub = TestHub::start_serving(
        cfg,
        std::sync::Arc::new(herald::engine::memory::MemoryEngine::new(1000)),
        |listener, hub, stop| {
            Box::pin(async move {
                let app = axum::Router::new().merge(herald::http::router(hub.clone()));
                // Closing the hub closes its sockets, so the graceful
                // shutdown can finish.
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        stop.await;
                        let _ = hub.close().await;
                    })
                    .await?;
                Ok(())
            })
        },
    )
    .await;
    let token = both(None);
    let mut ws = connect(&hub, &format!("?topic={TOPIC}"), Some(&token)).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let c = client();
    publish(&c, &hub, &[("topic", TOPIC), ("data", "via the router")]).await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["data"], "via the router");
    send(
        &mut ws,
        json!({"op": "publish", "ref": "r", "topics": [TOPIC], "data": "back"}),
    )
    .await;
    let mut ops = Vec::new();
    for _ in 0..2 {
        ops.push(next_json(&mut ws).await["op"].as_str().unwrap().to_owned());
    }
    ops.sort();
    assert_eq!(ops, ["published", "update"]);
    // Pings, answered by the client.
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    let mut pings = 0;
    while let Ok(m) = tokio::time::timeout_at(until, ws.next()).await {
        if let Message::Ping(_) = m.unwrap().unwrap() {
            pings += 1;
        }
    }
    assert!(pings >= 2, "{pings} pings");
    assert_eq!(
        parked_gauge(&hub).await,
        0,
        "the router's sockets keep their task"
    );
    drop(ws);
    hub.stop().await.unwrap();
}

/// A parked socket on a busy topic is not pinged (its updates keep the
/// connection alive); when the topic goes quiet the first ping must not
/// find it "silent for two heartbeats" and close it.
#[tokio::test]
async fn a_busy_spell_never_counts_as_silence() {
    let cfg = HubConfig {
        heartbeat: Duration::from_millis(300),
        anonymous: true,
        ..one_key()
    };
    let hub = TestHub::start(cfg).await;
    let mut ws = connect(&hub, &format!("?topic={TOPIC}"), None).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    parked_becomes(&hub, 1).await;
    let c = client();
    let busy = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut sent = 0;
    while tokio::time::Instant::now() < busy {
        publish(&c, &hub, &[("topic", TOPIC), ("data", "busy")]).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Quiet now: pings come, the client (reading) answers them, and the
    // socket stays open.
    let (mut updates, mut pings) = (0, 0);
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(m) = tokio::time::timeout_at(until, ws.next()).await {
        match m.unwrap().unwrap() {
            Message::Text(_) => updates += 1,
            Message::Ping(_) => pings += 1,
            Message::Close(c) => panic!("closed after a busy spell: {c:?}"),
            _ => {}
        }
    }
    assert_eq!(updates, sent);
    assert!(pings >= 2, "{pings} pings");
    hub.stop().await.unwrap();
}
