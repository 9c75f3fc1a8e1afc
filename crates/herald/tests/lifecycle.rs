//! Slow subscribers and graceful shutdown.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use herald::engine::memory::MemoryEngine;
use herald::HubConfig;
use tokio::io::AsyncWriteExt;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A client that never reads: its queue fills, the hub disconnects it,
/// memory stays bounded, and a reading subscriber sees every update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_disconnected() {
    let hub = TestHub::start_with(
        HubConfig {
            queue_bytes: 1024 * 1024,
            ..config()
        },
        Arc::new(MemoryEngine::new(16)),
    )
    .await;
    let c = client();

    // The stuck client: sends the request, never reads a byte.
    let mut stuck = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    stuck
        .write_all(b"GET /.well-known/mercure?topic=t HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut good = Subscription::topics(&hub, &["t"]).await;
    // Wait until both are registered.
    let deadline = Instant::now() + LONG;
    while hub.hub.index().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hub.hub.index().len(), 2);

    // Publish in step with the reading subscriber: each update must reach
    // it promptly although the stuck client's queue fills and overflows.
    let before = rss_bytes();
    let payload = "x".repeat(64 * 1024);
    let mut slowest = Duration::ZERO;
    for i in 0..400 {
        let sent = Instant::now();
        publish_ok(&c, &hub, &[("topic", "t"), ("data", &payload)]).await;
        let e = good
            .next_event(LONG)
            .await
            .unwrap_or_else(|| panic!("update {i} did not reach the reading subscriber"));
        assert_eq!(e.data.len(), payload.len());
        slowest = slowest.max(sent.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest delivery took {slowest:?}"
    );
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(hub.hub.metrics().slow_disconnects.get(), 1);
    let deadline = Instant::now() + LONG;
    while hub.hub.index().len() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        hub.hub.index().len(),
        1,
        "stuck subscriber still registered"
    );
    // 25 MiB went to the stuck client's topic; its queue is bounded at 1 MiB.
    assert!(grown < 20 * 1024 * 1024, "RSS grew by {grown} bytes");
    drop(stuck);
}

#[tokio::test]
async fn shutdown_ends_streams_and_returns() {
    let hub = TestHub::start(HubConfig {
        shutdown_grace: Duration::from_secs(3),
        ..config()
    })
    .await;
    let mut s = Subscription::topics(&hub, &["t"]).await;
    let _ = s.next_item(LONG).await;
    let started = Instant::now();
    let stopping = tokio::spawn(hub.stop());
    assert!(s.wait_end(LONG).await, "stream did not end on shutdown");
    stopping.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited for the grace period"
    );
}
