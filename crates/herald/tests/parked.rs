//! Parked event streams: a waiting subscriber has no task of its own.
//! (A file of its own: these tests push megabytes through the hub, and
//! `lifecycle.rs` measures the RSS of its process.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use herald::HubConfig;
use tokio::io::AsyncWriteExt;

/// A waiting event stream is parked, with no task of its own: bytes its
/// client sends are dropped and the stream goes on, and a client that
/// closes is noticed at once (not at the next heartbeat or update).
#[tokio::test]
async fn parked_streams_ignore_stray_bytes_and_notice_closes() {
    let hub = TestHub::start(HubConfig {
        heartbeat: Duration::from_secs(3600),
        ..config()
    })
    .await;
    let c = client();
    async fn open(hub: &TestHub) -> (tokio::net::TcpStream, String) {
        let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
        tcp.write_all(b"GET /.well-known/mercure?topic=t HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut tcp, ":\n\n").await;
        (tcp, got)
    }
    let (mut a, head) = open(&hub).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let (b, _) = open(&hub).await;
    assert_eq!(hub.hub.index().len(), 2);
    // Give both time to park after their first flush.
    tokio::time::sleep(SHORT).await;

    a.write_all(b"stray bytes\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(SHORT).await;
    publish_ok(&c, &hub, &[("topic", "t"), ("data", "one")]).await;
    read_until(&mut a, "data:one\n\n").await;

    drop(b);
    let deadline = Instant::now() + LONG;
    while hub.hub.index().len() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        hub.hub.index().len(),
        1,
        "the closed client is still registered"
    );
    publish_ok(&c, &hub, &[("topic", "t"), ("data", "two")]).await;
    read_until(&mut a, "data:two\n\n").await;
}

/// A parked stream whose client reads slowly fills its socket: the rest
/// waits, and every update arrives in order once the client reads again
/// (the socket draining must wake the stream).
#[tokio::test]
async fn a_parked_stream_resumes_after_its_socket_fills() {
    use tokio::io::AsyncReadExt;
    // No heartbeat ticks to rescue a stream that missed its wakeup, and a
    // queue that holds more than the kernel's socket buffers can.
    let hub = TestHub::start(HubConfig {
        heartbeat: Duration::from_secs(3600),
        queue_bytes: 64 * 1024 * 1024,
        ..config()
    })
    .await;
    let c = client();
    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    tcp.write_all(b"GET /.well-known/mercure?topic=t HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = read_until(&mut tcp, ":\n\n").await.into_bytes();
    let mut buf = vec![0u8; 65536];
    tokio::time::sleep(SHORT).await;

    // 16 MB for a client that does not read meanwhile: more than the
    // sockets on both sides hold, less than the queue's bounds.
    let payload = "y".repeat(8 * 1024);
    for i in 0..2000 {
        publish_ok(
            &c,
            &hub,
            &[("topic", "t"), ("id", &format!("u{i}")), ("data", &payload)],
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + LONG;
    let last = b"id:u1999\n";
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .expect("the stream stalled after its socket filled")
            .unwrap();
        assert!(n > 0, "the hub closed the stream");
        got.extend_from_slice(&buf[..n]);
        // Only the newly read bytes (and a needle's length before them).
        let tail = &got[got.len().saturating_sub(n + last.len())..];
        if tail.windows(last.len()).any(|w| w == last) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    let ids: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("id:")).collect();
    let want: Vec<String> = (0..2000).map(|i| format!("u{i}")).collect();
    assert_eq!(ids, want);
    assert_eq!(hub.hub.metrics().slow_disconnects.get(), 0);
}

/// A client that stopped reading stops taking the hub's writes after a
/// bounded number of unsent bytes, not after the megabytes the kernel
/// would let its send buffer grow to: from then on new updates wait in
/// its bounded queue (cheap pointers), and it is disconnected when that
/// overflows. Here 1 KiB updates and a 16-frame queue: the stuck client
/// is let go after about a hundred updates (64 KiB unsent, its own small
/// receive buffer, 16 queued), where an unbounded socket would have
/// taken thousands.
#[tokio::test]
async fn a_client_that_stops_reading_holds_bounded_kernel_buffers() {
    let hub = TestHub::start(HubConfig {
        heartbeat: Duration::from_secs(3600),
        queue_frames: 16,
        ..config()
    })
    .await;
    let c = client();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(hub.addr).await.unwrap();
    stuck
        .write_all(b"GET /.well-known/mercure?topic=t HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read the head and first flush, then never again.
    read_until(&mut stuck, ":\n\n").await;
    tokio::time::sleep(SHORT).await;

    let payload = "z".repeat(1024);
    let mut sent = 0;
    while hub.hub.metrics().slow_disconnects.get() == 0 && sent < 2000 {
        publish_ok(&c, &hub, &[("topic", "t"), ("data", &payload)]).await;
        sent += 1;
        // Let the flusher write before the next update is queued.
        tokio::task::yield_now().await;
    }
    assert_eq!(
        hub.hub.metrics().slow_disconnects.get(),
        1,
        "the stuck client took {sent} updates of 1 KiB without being let go"
    );
    assert!(
        sent < 400,
        "the stuck client was let go only after {sent} updates of 1 KiB"
    );
}

/// Waits until the gauge reads `want`, and returns what it read last.
async fn gauge_reaches(hub: &TestHub, want: i64) -> i64 {
    let deadline = Instant::now() + LONG;
    loop {
        let got = parked_gauge(hub).await;
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Idle streams park, and `/metrics` shows it; streams that resume park
/// once their history is sent; closed ones leave the count; with parking
/// off, none does.
#[tokio::test]
async fn idle_streams_park_and_the_gauge_shows_it() {
    let hub = TestHub::start(config()).await;
    let c = client();
    publish_ok(&c, &hub, &[("topic", "t"), ("data", "old")]).await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(Subscription::topics(&hub, &["t"]).await);
    }
    let mut resumed =
        Subscription::open(&hub, &[("topic", "t"), ("lastEventID", "earliest")], &[]).await;
    assert_eq!(resumed.next_event(LONG).await.unwrap().data, "old");
    assert_eq!(gauge_reaches(&hub, 6).await, 6);
    // Parked streams still get their updates.
    publish_ok(&c, &hub, &[("topic", "t"), ("data", "new")]).await;
    for s in idle.iter_mut().chain([&mut resumed]) {
        assert_eq!(s.next_event(LONG).await.unwrap().data, "new");
    }
    assert_eq!(gauge_reaches(&hub, 6).await, 6);
    drop(idle);
    assert_eq!(gauge_reaches(&hub, 1).await, 1);
    hub.stop().await.unwrap();

    let unparked = TestHub::start_serving(
        config(),
        std::sync::Arc::new(herald::engine::memory::MemoryEngine::new(100)),
        |listener, hub, stop| {
            Box::pin(
                herald::Server::new(hub)
                    .parking(false)
                    .serve(listener, stop),
            )
        },
    )
    .await;
    let mut s = Subscription::topics(&unparked, &["t"]).await;
    publish_ok(&c, &unparked, &[("topic", "t"), ("data", "x")]).await;
    assert_eq!(s.next_event(LONG).await.unwrap().data, "x");
    assert_eq!(parked_gauge(&unparked).await, 0);
    assert_eq!(unparked.hub.index().len(), 1);
    unparked.stop().await.unwrap();
}
