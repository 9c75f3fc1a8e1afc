//! Admission: a hub at its limits still answers.
//!
//! 60 clients each send half a request head and stall (slowloris) against
//! a hub whose limit is 50 event streams; then 50 subscribers fill that
//! limit. The hub still answers `/healthz` and a publish at once, refuses
//! the 51st subscriber with `503` and `Retry-After` (never leaving it
//! waiting) on a new connection and on one kept alive from another
//! request, counts them in `/metrics`, and delivers to the 50.

mod common;

use std::time::{Duration, Instant};

use common::{client, config, publish_ok, Subscription, TestHub};
use tokio::io::AsyncWriteExt;

/// The longest an answer may take here. The point is "answered, not
/// stuck": before this change these requests were never answered.
const PROMPT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hub_answers_probes_publishers_and_refused_subscribers() {
    let mut cfg = config();
    cfg.max_connections = 50;
    cfg.anonymous = true;
    let hub = TestHub::start(cfg).await;
    let http = client();

    let mut stalled = Vec::new();
    for _ in 0..60 {
        let mut s = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
        s.write_all(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    let started = Instant::now();
    let health = tokio::time::timeout(PROMPT, http.get(hub.url("/healthz")).send())
        .await
        .expect("/healthz answered while heads stall")
        .unwrap();
    assert_eq!(health.status(), 200);
    eprintln!(
        "healthz answered in {:?} with 60 stalled heads",
        started.elapsed()
    );

    let mut subs = Vec::new();
    for _ in 0..50 {
        subs.push(Subscription::topics(&hub, &["a"]).await);
    }
    // The 51st subscriber: refused at once, told when to come back.
    let started = Instant::now();
    let refused = tokio::time::timeout(
        PROMPT,
        http.get(hub.hub_url()).query(&[("topic", "a")]).send(),
    )
    .await
    .expect("the 51st subscriber is answered")
    .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("limit of event streams"));
    eprintln!("51st subscriber refused in {:?}", started.elapsed());
    // The same on a new connection (the request above went over the
    // connection `/healthz` kept alive, to hyper and the router; a new one
    // is served on the fast path).
    let fresh = Subscription::open(&hub, &[("topic", "a")], &[]).await;
    assert_eq!(fresh.status, 503);
    assert_eq!(fresh.headers["retry-after"], "1");

    // Probes and publishers get through while subscribers are at their
    // limit.
    let started = Instant::now();
    let health = tokio::time::timeout(PROMPT, http.get(hub.url("/healthz")).send())
        .await
        .expect("/healthz answered at the stream limit")
        .unwrap();
    assert_eq!(health.status(), 200);
    let id = tokio::time::timeout(
        PROMPT,
        publish_ok(&http, &hub, &[("topic", "a"), ("data", "still here")]),
    )
    .await
    .expect("a publish answered at the stream limit");
    eprintln!(
        "healthz and a publish answered in {:?} at the limit",
        started.elapsed()
    );
    for s in &mut subs {
        let e = s
            .next_event(Duration::from_secs(5))
            .await
            .expect("delivered");
        assert_eq!(
            (e.id.as_str(), e.data.as_str()),
            (id.as_str(), "still here")
        );
    }
    let metrics = http
        .get(hub.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_admission_refused_total{kind=\"streams\"} 2")),
        "{metrics}"
    );
    // A stream that ends frees its place.
    drop(subs.pop());
    let mut back = None;
    for _ in 0..50 {
        let res = http
            .get(hub.hub_url())
            .query(&[("topic", "a")])
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            back = Some(res);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back.is_some(), "a freed place is taken again");
    drop(stalled);
}

/// Event streams per client address, the address read from
/// `X-Forwarded-For` only behind a trusted proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_limited_per_client_address() {
    let mut cfg = config();
    cfg.anonymous = true;
    cfg.max_streams_per_ip = 2;
    cfg.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let hub = TestHub::start(cfg.clone()).await;
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    let a1 = Subscription::open(&hub, &[("topic", "a")], &from("203.0.113.7")).await;
    let a2 = Subscription::open(&hub, &[("topic", "a")], &from("198.51.100.9, 203.0.113.7")).await;
    assert_eq!((a1.status, a2.status), (200, 200));
    let a3 = Subscription::open(&hub, &[("topic", "a")], &from("203.0.113.7")).await;
    assert_eq!(a3.status, 429);
    assert_eq!(a3.headers["retry-after"], "1");
    // Over hyper too (a connection kept alive from another request).
    let http = client();
    http.get(hub.url("/healthz")).send().await.unwrap();
    let res = http
        .get(hub.hub_url())
        .query(&[("topic", "a")])
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let b = Subscription::open(&hub, &[("topic", "a")], &from("203.0.113.8")).await;
    assert_eq!(b.status, 200);
    // A stream that ends gives its address its place back.
    drop(a1);
    let mut again = 0;
    for _ in 0..50 {
        again = Subscription::open(&hub, &[("topic", "a")], &from("203.0.113.7"))
            .await
            .status;
        if again == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, 200);

    // Without trusted proxies the header proves nothing: the peer counts.
    cfg.trusted_proxies.clear();
    let hub = TestHub::start(cfg).await;
    let mut statuses = Vec::new();
    let mut open = Vec::new();
    for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        let s = Subscription::open(&hub, &[("topic", "a")], &from(ip)).await;
        statuses.push(s.status);
        open.push(s);
    }
    assert_eq!(statuses, [200, 200, 429]);
}

/// Publish rates per token and per client address: `429` with
/// `Retry-After` beyond, other tokens and addresses unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_is_limited_per_token_and_per_address() {
    let mut cfg = config();
    cfg.publish_rate_per_token = 5;
    cfg.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let hub = TestHub::start(cfg.clone()).await;
    let http = client();
    let one = common::token(common::PUB_KEY, Some(&["*"]), None);
    let other = common::token(common::PUB_KEY, Some(&["*", "https://example.com/x"]), None);
    let post = |token: &str, ip: &str| {
        http.post(hub.hub_url())
            .bearer_auth(token)
            .header("X-Forwarded-For", ip)
            .form(&[("topic", "a"), ("data", "x")])
            .send()
    };
    for i in 0..5 {
        assert_eq!(
            post(&one, "192.0.2.1").await.unwrap().status(),
            200,
            "publish {i}"
        );
    }
    let res = post(&one, "192.0.2.2").await.unwrap();
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert!(res.text().await.unwrap().contains("publish_rate_per_token"));
    assert_eq!(post(&other, "192.0.2.1").await.unwrap().status(), 200);
    // The bucket refills: one more after a fifth of a second.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(post(&one, "192.0.2.1").await.unwrap().status(), 200);

    cfg.publish_rate_per_token = 0;
    cfg.publish_rate_per_ip = 3;
    let hub2 = TestHub::start(cfg).await;
    let post = |ip: &'static str, n: usize| {
        let updates: Vec<_> = (0..n)
            .map(|_| serde_json::json!({"topics": ["a"], "data": "x"}))
            .collect();
        http.post(hub2.hub_url())
            .bearer_auth(&one)
            .header("X-Forwarded-For", ip)
            .json(&updates)
            .send()
    };
    assert_eq!(post("198.51.100.1", 3).await.unwrap().status(), 200);
    assert_eq!(post("198.51.100.1", 1).await.unwrap().status(), 429);
    assert_eq!(post("198.51.100.2", 1).await.unwrap().status(), 200);
    // A batch larger than the rate allows at once can never pass.
    let res = post("198.51.100.3", 4).await.unwrap();
    assert_eq!(res.status(), 413);
    assert!(res.headers().get("retry-after").is_none());
    assert!(res.text().await.unwrap().contains("at once"));
    let metrics = http
        .get(hub2.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("herald_admission_refused_total{kind=\"publish_rate_per_ip\"} 2")
        ),
        "{metrics}"
    );
}

/// `max_stream_lifetime`: a stream ends after 80 to 100 % of it, and its
/// client resumes with no update lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_at_their_lifetime_and_resume_without_loss() {
    let mut cfg = config();
    cfg.anonymous = true;
    cfg.max_stream_lifetime = Some(Duration::from_secs(1));
    let hub = TestHub::start(cfg).await;
    let http = client();
    let started = Instant::now();
    let mut s = Subscription::topics(&hub, &["a"]).await;
    let id = publish_ok(&http, &hub, &[("topic", "a"), ("data", "one")]).await;
    assert_eq!(s.next_event(Duration::from_secs(2)).await.unwrap().id, id);
    assert!(
        s.wait_end(Duration::from_secs(3)).await,
        "the stream outlived its lifetime"
    );
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_millis(790),
        "ended after {lasted:?}"
    );
    let missed = publish_ok(&http, &hub, &[("topic", "a"), ("data", "two")]).await;
    let mut back = Subscription::open(&hub, &[("topic", "a")], &[("Last-Event-ID", &id)]).await;
    let e = back.next_event(Duration::from_secs(2)).await.unwrap();
    assert_eq!((e.id.as_str(), e.data.as_str()), (missed.as_str(), "two"));
}

/// Per-token limits: the streams of one token, and the selectors they hold
/// together. Past either, `429`; another token, or an anonymous client, is
/// not affected; a stream that ends gives its token its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_selectors_are_limited_per_token() {
    let mut cfg = config();
    cfg.anonymous = true;
    cfg.max_streams_per_token = 2;
    cfg.max_subscriptions_per_token = 3;
    let hub = TestHub::start(cfg).await;
    let alice = common::token(common::SUB_KEY, None, Some(&["*"]));
    let bob = common::token(common::SUB_KEY, None, Some(&["https://x/{id}"]));
    let bearer = |t: &str| format!("Bearer {t}");
    let open = |token: String, topics: &'static [&'static str]| {
        let hub = &hub;
        async move {
            let q: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
            if token.is_empty() {
                Subscription::open(hub, &q, &[]).await
            } else {
                Subscription::open(hub, &q, &[("Authorization", &token)]).await
            }
        }
    };
    let a1 = open(bearer(&alice), &["a"]).await;
    let a2 = open(bearer(&alice), &["b"]).await;
    assert_eq!((a1.status, a2.status), (200, 200));
    // A third stream of the same token.
    let a3 = open(bearer(&alice), &["c"]).await;
    assert_eq!(a3.status, 429);
    assert_eq!(a3.headers["retry-after"], "1");
    // The same token in the query string is the same token.
    let q = Subscription::open(
        &hub,
        &[("topic", "c"), ("authorization", alice.as_str())],
        &[],
    )
    .await;
    assert_eq!(q.status, 429);
    // Other clients are unaffected.
    let b1 = open(bearer(&bob), &["https://x/1", "https://x/2"]).await;
    let anon = open(String::new(), &["a"]).await;
    assert_eq!((b1.status, anon.status), (200, 200));
    // Selectors: bob holds 2 of 3; a stream asking 2 more is refused, one
    // asking 1 is not.
    let b2 = open(bearer(&bob), &["https://x/3", "https://x/4"]).await;
    assert_eq!(b2.status, 429);
    let b3 = open(bearer(&bob), &["https://x/3"]).await;
    assert_eq!(b3.status, 200);
    // More selectors in one request than a token may ever hold: 400, no
    // Retry-After (retrying cannot pass).
    let carol = common::token(common::SUB_KEY, None, Some(&["*", "carol"]));
    let b4 = open(bearer(&carol), &["a", "b", "c", "d"]).await;
    assert_eq!(b4.status, 400);
    assert!(!b4.headers.contains_key("retry-after"));
    // Each refusal is counted (read now: the retries below add to it).
    let metrics = common::scrape(&hub).await;
    assert_eq!(
        common::value(
            &metrics,
            r#"herald_admission_refused_total{kind="streams_per_token"}"#
        ),
        2.0
    );
    assert_eq!(
        common::value(
            &metrics,
            r#"herald_admission_refused_total{kind="subscriptions_per_token"}"#
        ),
        2.0
    );
    // A stream that ends gives its share back.
    drop(a1);
    let mut again = 0;
    for _ in 0..50 {
        again = open(bearer(&alice), &["c"]).await.status;
        if again == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, 200);
}

/// `stream_admission_rate`: when more streams start at once than the rate
/// allows, the extra ones wait for their turn (one interval apart) and are
/// all answered `200`: a browser's `EventSource` would give up on a `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_wait_for_their_turn_instead_of_being_refused() {
    let mut cfg = config();
    cfg.anonymous = true;
    cfg.stream_admission_rate = 10;
    let hub = TestHub::start(cfg).await;
    let started = Instant::now();
    let opens = (0..30).map(|_| {
        let addr = hub.addr;
        tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let head = common::read_until(&mut tcp, "\r\n\r\n").await;
            (head, started.elapsed(), tcp)
        })
    });
    let mut answers = Vec::new();
    for o in opens {
        answers.push(o.await.unwrap());
    }
    // The health check is not paced.
    let t = Instant::now();
    let health = client().get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(t.elapsed() < PROMPT);
    for (head, _, _) in &answers {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let mut times: Vec<Duration> = answers.iter().map(|(_, t, _)| *t).collect();
    times.sort();
    // A burst of 10 at once, then one every 100 ms: the 30th after ~2 s.
    eprintln!(
        "first answered after {:?}, 10th {:?}, 30th {:?}",
        times[0], times[9], times[29]
    );
    assert!(times[9] < Duration::from_millis(900), "{times:?}");
    assert!(times[29] >= Duration::from_millis(1800), "{times:?}");
    let metrics = common::scrape(&hub).await;
    assert!(common::value(&metrics, "herald_admission_paced_total") >= 19.0);
}

/// `retry_jitter`: each stream's `retry:` is drawn from `retry` to `retry`
/// plus the jitter, so clients cut off together come back apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stream_gets_its_own_retry_within_the_jitter() {
    let mut cfg = config();
    cfg.anonymous = true;
    cfg.retry = Some(1000);
    cfg.retry_jitter = Duration::from_secs(4);
    let hub = TestHub::start(cfg).await;
    let mut retries = Vec::new();
    for _ in 0..20 {
        let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
        tcp.write_all(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // The first frame, after the head: `retry:<ms>` and a blank line.
        let got = common::read_until(&mut tcp, "\n\n").await;
        let at = got.find("retry:").expect("a retry field") + "retry:".len();
        let ms: u64 = got[at..].lines().next().unwrap().parse().unwrap();
        retries.push(ms);
    }
    assert!(
        retries.iter().all(|r| (1000..=5000).contains(r)),
        "{retries:?}"
    );
    let mut distinct = retries.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 10, "{retries:?}");
}
