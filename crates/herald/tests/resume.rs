//! Resuming with `Last-Event-ID`: history replay, then live, with no gap
//! and no duplicate.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn earliest_replays_all_history_then_continues_live() {
    let hub = TestHub::start(config()).await;
    let c = client();
    for i in 0..5 {
        publish_ok(&c, &hub, &[("topic", "t"), ("data", &i.to_string())]).await;
    }
    publish_ok(&c, &hub, &[("topic", "other"), ("data", "x")]).await;
    let mut s = Subscription::open(&hub, &[("topic", "t"), ("lastEventID", "earliest")], &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["last-event-id"], "earliest");
    publish_ok(&c, &hub, &[("topic", "t"), ("data", "live")]).await;
    let got: Vec<_> = s
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, ["0", "1", "2", "3", "4", "live"]);
}

#[tokio::test]
async fn header_resumes_after_the_given_id_and_wins_over_query() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish_ok(&c, &hub, &[("topic", "t"), ("data", &i.to_string())]).await);
    }
    let mut s = Subscription::open(
        &hub,
        &[("topic", "t"), ("lastEventID", &ids[0])],
        &[("Last-Event-ID", &ids[2])],
    )
    .await;
    assert_eq!(s.headers["last-event-id"], ids[2].as_str());
    let got: Vec<_> = s
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, ["3", "4"]);
}

#[tokio::test]
async fn query_parameter_resumes() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let first = publish_ok(&c, &hub, &[("topic", "t"), ("data", "a")]).await;
    publish_ok(&c, &hub, &[("topic", "t"), ("data", "b")]).await;
    let mut s = Subscription::open(&hub, &[("topic", "t"), ("lastEventID", &first)], &[]).await;
    let got: Vec<_> = s
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, ["b"]);
}

#[tokio::test]
async fn unknown_id_replays_everything_and_says_earliest() {
    let hub = TestHub::start(config()).await;
    let c = client();
    publish_ok(&c, &hub, &[("topic", "t"), ("data", "a")]).await;
    let mut s = Subscription::open(
        &hub,
        &[("topic", "t")],
        &[("Last-Event-ID", "urn:never:seen")],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["last-event-id"], "earliest");
    let got: Vec<_> = s
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, ["a"]);
}

/// With `gap_event=1`, a client whose resume id is not in history learns
/// it inside the stream: a named `herald-gap` event (which `onmessage`
/// never sees) before the replay. Without it, or with a known id, or with
/// `earliest` asked for, there is none.
#[tokio::test]
async fn an_unknown_id_opens_the_stream_with_a_gap_event_when_asked() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let known = publish_ok(&c, &hub, &[("topic", "t"), ("data", "a")]).await;
    publish_ok(&c, &hub, &[("topic", "t"), ("data", "b")]).await;
    let mut s = Subscription::open(
        &hub,
        &[("topic", "t"), ("gap_event", "1")],
        &[("Last-Event-ID", "urn:never:seen")],
    )
    .await;
    assert_eq!(s.status, 200);
    let got = s.drain_events(SHORT).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].event, "herald-gap");
    let gap: serde_json::Value = serde_json::from_str(&got[0].data).unwrap();
    assert_eq!(gap["last_event_id"], "urn:never:seen");
    assert_eq!(gap["resumed_from"], "earliest");
    // No id on the gap event (a fresh parser's last id stays empty): a
    // browser keeps the id it resumed with until the replay moves it.
    assert_eq!(got[0].id, "");
    let rest: Vec<(&str, &str)> = got[1..]
        .iter()
        .map(|e| (e.event.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(rest, [("message", "a"), ("message", "b")]);

    for (query, last) in [
        (vec![("topic", "t")], "urn:never:seen"),
        (vec![("topic", "t"), ("gap_event", "1")], known.as_str()),
        (vec![("topic", "t"), ("gap_event", "1")], "earliest"),
    ] {
        let mut s = Subscription::open(&hub, &query, &[("Last-Event-ID", last)]).await;
        let got = s.drain_events(SHORT).await;
        assert!(
            got.iter().all(|e| e.event == "message") && !got.is_empty(),
            "{query:?} {last}: {got:?}"
        );
    }
}

#[tokio::test]
async fn malformed_last_event_id_is_refused() {
    let hub = TestHub::start(config()).await;
    let long = "x".repeat(5000);
    let s = Subscription::open(&hub, &[("topic", "t"), ("lastEventID", &long)], &[]).await;
    assert_eq!(s.status, 400);
    let s = Subscription::open(&hub, &[("topic", "t"), ("lastEventID", "a\u{7}b")], &[]).await;
    assert_eq!(s.status, 400);
}

/// A publisher sends thousands of updates while subscribers connect with
/// `Last-Event-ID` at random moments: each sees every update after its
/// resume point exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_during_busy_publishing_has_no_gap_and_no_duplicate() {
    const N: usize = 3000;
    let hub = TestHub::start(config()).await;
    let c = client();
    let first = publish_ok(&c, &hub, &[("topic", "t"), ("data", "0")]).await;

    let publisher = {
        let c = c.clone();
        let url = hub.hub_url();
        tokio::spawn(async move {
            let token = publisher_token();
            let mut ids = Vec::with_capacity(N);
            for i in 1..=N {
                let r = c
                    .post(&url)
                    .bearer_auth(&token)
                    .form(&[("topic", "t"), ("data", &i.to_string())])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                ids.push(r.text().await.unwrap());
            }
            ids
        })
    };

    // Subscribers join while the publisher runs.
    let mut subs = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        subs.push(Subscription::open(&hub, &[("topic", "t")], &[("Last-Event-ID", &first)]).await);
    }
    let ids = publisher.await.unwrap();
    assert_eq!(ids.len(), N);
    for (k, mut s) in subs.into_iter().enumerate() {
        assert_eq!(s.status, 200);
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            match s.next_event(LONG).await {
                Some(e) => got.push(e.data.parse::<usize>().unwrap()),
                None => break,
            }
        }
        let expected: Vec<usize> = (1..=N).collect();
        assert_eq!(got.len(), N, "subscriber {k} got {} events", got.len());
        assert_eq!(got, expected, "subscriber {k}: gap, duplicate or reorder");
        assert!(
            s.drain_events(SHORT).await.is_empty(),
            "subscriber {k}: extra events"
        );
    }
}

/// Bytes a client sends on an event stream are discarded without
/// disturbing it: a replay in progress (history read off the thread pool,
/// as the `local` engine does) goes on to the end.
#[cfg(feature = "local")]
#[tokio::test]
async fn stray_client_bytes_do_not_disturb_a_replay() {
    use herald::engine::local::{LocalConfig, LocalEngine};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let engine = LocalEngine::open(LocalConfig::new(dir.path().join("store"))).unwrap();
    let hub = TestHub::start_with(
        herald::HubConfig {
            replay_batch: 7,
            ..config()
        },
        std::sync::Arc::new(engine),
    )
    .await;
    let updates: Vec<herald_protocol::Update> = (0..2000)
        .map(|i| herald_protocol::Update {
            topics: vec!["https://ex/r".into()],
            data: format!("n{i}"),
            ..Default::default()
        })
        .collect();
    hub.hub.publish(updates).await.unwrap();

    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    tcp.write_all(
        b"GET /.well-known/mercure?topic=https%3A%2F%2Fex%2Fr HTTP/1.1\r\nHost: x\r\nLast-Event-ID: earliest\r\n\r\n",
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    // Junk for as long as the replay runs.
    let junk = tokio::spawn(async move {
        while wr.write_all(b"junk junk junk\r\n").await.is_ok() {
            tokio::task::yield_now().await;
        }
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + LONG;
    while !String::from_utf8_lossy(&got).contains("data:n1999\n") {
        let n = tokio::time::timeout_at(deadline, rd.read(&mut buf))
            .await
            .expect("the replay did not finish")
            .unwrap();
        assert!(n > 0, "the hub closed the stream");
        got.extend_from_slice(&buf[..n]);
    }
    junk.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:.200}");
    assert_eq!(text.matches("\ndata:n").count(), 2000);
}
